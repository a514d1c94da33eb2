//! The open_clip layout: `visual.*` keys of open_clip's `VisionTransformer` plus an open_clip config that makes it exact.
//!
//! Names and semantics follow open_clip 3.3.0 `transformer.py` (`VisionTransformer`: `conv1` without bias,
//! `class_embedding`, `positional_embedding`, `ln_pre` unless `no_ln_pre`, `transformer.resblocks.N`, `ln_post`,
//! `proj`, pooling `tok`, `final_ln_after_pool`) and `model.py` (`CLIPVisionCfg`, `_build_vision_tower`:
//! `act_kwargs`, `norm_kwargs`, heads = width // head_width). The flax ViT maps exactly: `no_ln_pre`, token pooling
//! after `ln_post`, LayerNorm eps 1e-6, the source's GELU, and the patch bias folded into the position embedding.

use serde_json::json;

use crate::error::{Part, Result};
use crate::layout::clip_style::{self, names, tensor as t};
use crate::layout::prepared::{mlp_ratio, Prepared};
use crate::options::{Gelu, ProjChoice};
use crate::plan::CONFIG_JSON_TOKEN;
use crate::plan::{Fetch, OutputKind, Plan, Recipe, SideFile};

/// Suffix replacing OUTPUT's extension for the open_clip config.
pub const CONFIG_SUFFIX: &str = ".open_clip.json";

/// The open_clip visual tower plan, with its model config, for a prepared source.
pub fn plan(mut prep: Prepared<'_>, fetch: &dyn Fetch, source_name: &str) -> Result<Plan> {
    if let Some((_, grid)) = prep.naflex_grid() {
        return Err(prep.refuse(
            Part::NaflexTower {
                patch: prep.arch().patch,
                grid,
            },
            "open_clip 3.3.0 has no NaFlex model (no NaFlex config among its model_configs, and its image towers take fixed-size images); use --layout hf (Siglip2Model) or --layout timm --tower image (NaFlexVit)",
        ));
    }
    if prep.two_tower() {
        // Image-text models are open_clip's CustomTextCLIP, in a folder of their own.
        return super::open_clip_siglip::plan(prep, fetch, source_name);
    }
    let a = prep.arch().clone();
    clip_style::check_tower(&prep)?;
    prep.check_input_norm()?;
    let ratio = mlp_ratio(&prep)?;
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
    ];
    clip_style::push_blocks_and_ln_post(&prep, &mut out);
    let output_dim = clip_style::push_proj(&prep, proj, &mut out);
    let head_bias = match proj {
        ProjChoice::Head => Some(clip_style::head_bias(&prep, fetch)?),
        ProjChoice::None => None,
    };
    prep.notes.push(
        "conv1 has no bias: embedding/bias folded into positional_embedding[1:] (exact)"
            .to_string(),
    );

    let vision_cfg = json!({
        "image_size": prep.image_size,
        "layers": a.depth,
        "width": d,
        "head_width": a.head_dim(),
        "mlp_ratio": ratio,
        "patch_size": a.patch,
        "no_ln_pre": true,
        "pool_type": "tok",
        "final_ln_after_pool": false,
        "act_kwargs": match prep.gelu() { Gelu::Tanh => json!({"approximate": "tanh"}), Gelu::Erf => json!(null) },
        "norm_kwargs": {"eps": prep.semantics().norm_eps},
    });
    let model_cfg = json!({"embed_dim": output_dim, "quick_gelu": false, "vision_cfg": vision_cfg});
    let python = format!("import json, torch\nfrom open_clip.model import _build_vision_tower\ncfg = json.load(open({CONFIG_JSON_TOKEN}))\nvisual = _build_vision_tower(cfg['embed_dim'], cfg['vision_cfg'])");
    let head = clip_style::head_kind(proj);
    let config = prep.config(head, head_bias);
    let mut meta = prep.metadata(source_name, &config);
    meta.insert(
        crate::meta::OPEN_CLIP_CONFIG.to_string(),
        model_cfg.to_string(),
    );
    let mut text =
        serde_json::to_string_pretty(&model_cfg).unwrap_or_else(|_| model_cfg.to_string());
    text.push('\n');
    let side = vec![SideFile {
        name: CONFIG_SUFFIX.to_string(),
        contents: text,
    }];
    Ok(prep.finish(OutputKind::File, out, meta, python, side))
}

/// Recognises this layout's files for `inspect` (see `clip_style::recognise`).
pub fn recognise(
    s: &crate::layout::recognise::Shapes<'_>,
) -> Option<crate::layout::recognise::Recognised> {
    super::open_clip_siglip::recognise(s)
        .or_else(|| clip_style::recognise(s).filter(|r| r.family == "open_clip"))
}
