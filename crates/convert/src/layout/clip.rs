//! The OpenAI CLIP layout: the keys of `clip.model.VisionTransformer` (`model.visual`). Closest weights, never exact.
//!
//! Names and semantics follow openai-clip 1.0.1 `clip/model.py`: `VisionTransformer(input_resolution, patch_size,
//! width, layers, heads, output_dim)` always applies `ln_pre`, uses `QuickGELU`, LayerNorm eps 1e-5 and a 4x MLP,
//! and `build_model` assumes 64-wide heads. None of that can be switched off, so a Google ViT is never exact here:
//! vitconv writes the closest weights (`ln_pre` as weight 1, bias 0), says so, and `vitconv verify` measures the drift.

use serde_json::json;

use crate::error::Result;
use crate::layout::clip_style::{self, names, names::LN_PRE_W, tensor as t};
use crate::layout::prepared::Prepared;
use crate::options::ProjChoice;
use crate::plan::{Fetch, OutputKind, Plan, Recipe};
use crate::record::DeclaredGelu;

/// OpenAI CLIP's own state-dict names; the rest are shared in [`clip_style::names`].
const LN_PRE_B: &str = "ln_pre.bias";

/// OpenAI CLIP's `LayerNorm` is `nn.LayerNorm` with its default eps.
const CLIP_LN_EPS: f64 = 1e-5;

/// What the output cannot reproduce, stated in the output and the metadata.
pub const NOT_EXACT: &str = "NOT EXACT: OpenAI CLIP's VisionTransformer always applies ln_pre (written as weight 1, bias 0, which still normalises), uses QuickGELU instead of the tanh GELU and LayerNorm eps 1e-5 instead of 1e-6; the outputs drift from the source (measure it with vitconv verify)";

/// The OpenAI CLIP visual tower (`clip.model.VisionTransformer`) plan for a prepared source.
pub fn plan(mut prep: Prepared<'_>, fetch: &dyn Fetch, source_name: &str) -> Result<Plan> {
    let a = prep.arch().clone();
    clip_style::check_tower(&prep)?;
    if Some(a.mlp) != a.hidden.checked_mul(4) {
        return Err(prep.refuse(
            crate::error::Part::MlpWidth {
                mlp: a.mlp,
                hidden: a.hidden,
            },
            "OpenAI CLIP's ResidualAttentionBlock fixes the MLP at 4x the width; use --layout open_clip",
        ));
    }
    prep.check_input_norm()?;
    let proj = clip_style::resolve_proj(&mut prep)?;
    let cls = clip_style::class_token(&prep)?;
    let d = a.hidden;
    let (pos_rows, pos) = prep.pos_table(true, true)?;
    let mut out = vec![
        t(names::CLASS, 0, vec![d], Recipe::Copy(cls)),
        t(names::POS, 0, vec![pos_rows, d], pos),
        t(
            names::CONV1,
            0,
            vec![d, a.in_chans, a.patch, a.patch],
            prep.patch_kernel(),
        ),
        t(LN_PRE_W, 0, vec![d], Recipe::Fill { value: 1.0, len: d }),
        t(LN_PRE_B, 0, vec![d], Recipe::Fill { value: 0.0, len: d }),
    ];
    clip_style::push_blocks_and_ln_post(&prep, &mut out);
    let output_dim = clip_style::push_proj(&prep, proj, &mut out);
    let head_bias = match proj {
        ProjChoice::Head => Some(clip_style::head_bias(&prep, fetch)?),
        ProjChoice::None => None,
    };
    prep.notes
        .push("conv1 has no bias: embedding/bias folded into positional_embedding[1:]".to_string());
    prep.notes
        .push("ln_pre (absent from the source) written as weight 1, bias 0".to_string());
    if a.head_dim() != Some(64) {
        prep.notes.push(format!(
            "heads: {} of width {}; clip.model.build_model would assume width // 64 heads, so build VisionTransformer directly with heads={}",
            a.heads.unwrap_or(0),
            a.head_dim().unwrap_or(0),
            a.heads.unwrap_or(0)
        ));
    }
    prep.notes.push(NOT_EXACT.to_string());
    let kwargs = json!({
        "input_resolution": prep.image_size,
        "patch_size": a.patch,
        "width": d,
        "layers": a.depth,
        "heads": a.heads,
        "output_dim": output_dim,
    });
    let python = format!(
        "from clip.model import VisionTransformer\nvisual = VisionTransformer(input_resolution={}, patch_size={}, width={d}, layers={}, heads={}, output_dim={output_dim})",
        prep.image_size,
        a.patch,
        a.depth,
        a.heads.unwrap_or(0)
    );
    let head = clip_style::head_kind(proj);
    let config = prep.config_as(DeclaredGelu::Quick, CLIP_LN_EPS, true, head, head_bias);
    let mut meta = prep.metadata(source_name, &config);
    meta.insert(crate::meta::CLIP_KWARGS.to_string(), kwargs.to_string());
    meta.insert(crate::meta::EXACT.to_string(), "false".to_string());
    Ok(prep.finish(OutputKind::File, out, meta, python, vec![]))
}

/// Recognises this layout's files for `inspect` (see `clip_style::recognise`).
pub fn recognise(
    s: &crate::layout::recognise::Shapes<'_>,
) -> Option<crate::layout::recognise::Recognised> {
    clip_style::recognise(s).filter(|r| r.family == "openai_clip")
}
