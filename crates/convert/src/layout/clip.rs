//! The OpenAI CLIP layout: the keys of `clip.model.VisionTransformer` (`model.visual`). Closest weights, never exact.
//!
//! Names and semantics follow openai-clip 1.0.1 `clip/model.py`: `VisionTransformer(input_resolution, patch_size,
//! width, layers, heads, output_dim)` always applies `ln_pre`, uses `QuickGELU`, LayerNorm eps 1e-5 and a 4x MLP,
//! and `build_model` assumes 64-wide heads. None of that can be switched off, so a Google ViT is never exact here:
//! vitconv writes the closest weights (`ln_pre` as weight 1, bias 0), says so, and `vitconv verify` measures the drift.

use serde_json::json;

use crate::detect::{BlockNorm, Proj};
use crate::error::{Error, Result};
use crate::layout::{name, Prepared};
use crate::options::ProjChoice;
use crate::plan::{Fetch, OutTensor, OutputKind, Plan, Recipe};

/// OpenAI CLIP state-dict names (`{i}` = block index).
pub mod names {
    pub const PREFIX: &str = "visual.";
    pub const CONV1: &str = "conv1.weight";
    pub const CLASS: &str = "class_embedding";
    pub const POS: &str = "positional_embedding";
    pub const LN_PRE_W: &str = "ln_pre.weight";
    pub const LN_PRE_B: &str = "ln_pre.bias";
    pub const LN1_W: &str = "transformer.resblocks.{i}.ln_1.weight";
    pub const LN1_B: &str = "transformer.resblocks.{i}.ln_1.bias";
    pub const IN_W: &str = "transformer.resblocks.{i}.attn.in_proj_weight";
    pub const IN_B: &str = "transformer.resblocks.{i}.attn.in_proj_bias";
    pub const OUT_W: &str = "transformer.resblocks.{i}.attn.out_proj.weight";
    pub const OUT_B: &str = "transformer.resblocks.{i}.attn.out_proj.bias";
    pub const LN2_W: &str = "transformer.resblocks.{i}.ln_2.weight";
    pub const LN2_B: &str = "transformer.resblocks.{i}.ln_2.bias";
    pub const FC_W: &str = "transformer.resblocks.{i}.mlp.c_fc.weight";
    pub const FC_B: &str = "transformer.resblocks.{i}.mlp.c_fc.bias";
    pub const PROJ_W: &str = "transformer.resblocks.{i}.mlp.c_proj.weight";
    pub const PROJ_B: &str = "transformer.resblocks.{i}.mlp.c_proj.bias";
    pub const LN_POST_W: &str = "ln_post.weight";
    pub const LN_POST_B: &str = "ln_post.bias";
    pub const PROJ: &str = "proj";
}

/// OpenAI CLIP's `LayerNorm` is `nn.LayerNorm` with its default eps.
const CLIP_LN_EPS: f64 = 1e-5;

/// What the output cannot reproduce, stated in the output and the metadata.
pub const NOT_EXACT: &str = "NOT EXACT: OpenAI CLIP's VisionTransformer always applies ln_pre (written as weight 1, bias 0, which still normalises), uses QuickGELU instead of the tanh GELU and LayerNorm eps 1e-5 instead of 1e-6; the outputs drift from the source (measure it with vitconv verify)";

pub fn plan(mut prep: Prepared<'_>, fetch: &dyn Fetch, source_name: &str) -> Result<Plan> {
    let a = prep.arch().clone();
    if a.resnet.is_some() {
        return Err(prep.refuse(
            "a hybrid ResNet stem",
            "conv1 is a single patch convolution with no place for a stem; use --layout timm",
        ));
    }
    if !a.class_token() {
        return Err(prep.refuse(
            "a gap (no class token) model",
            "a class token is always prepended and attends to the patches, so the result would differ; use --layout timm",
        ));
    }
    if a.mlp != 4 * a.hidden {
        return Err(prep.refuse(
            format!("an MLP of {} for hidden {} (ratio {:.3})", a.mlp, a.hidden, a.mlp as f64 / a.hidden as f64),
            "OpenAI CLIP's ResidualAttentionBlock fixes the MLP at 4x the width; use --layout open_clip",
        ));
    }
    prep.check_input_norm()?;
    let proj = resolve_proj(&mut prep)?;
    let n = prep.src.names.clone();
    let (d, m) = (a.hidden, a.mlp);
    let t = |nm: &str, i: usize, shape: Vec<usize>, recipe: Recipe| OutTensor {
        name: format!("{}{}", names::PREFIX, name(nm, i)),
        shape,
        recipe,
    };
    let mut out = vec![
        t(names::CLASS, 0, vec![d], Recipe::Copy(n.cls())),
        t(
            names::POS,
            0,
            vec![prep.pos_rows(), d],
            prep.pos_embed(true),
        ),
        t(
            names::CONV1,
            0,
            vec![d, a.in_chans, a.patch, a.patch],
            prep.patch_kernel(),
        ),
        t(
            names::LN_PRE_W,
            0,
            vec![d],
            Recipe::Fill { value: 1.0, len: d },
        ),
        t(
            names::LN_PRE_B,
            0,
            vec![d],
            Recipe::Fill { value: 0.0, len: d },
        ),
    ];
    for i in 0..a.depth {
        out.push(t(
            names::LN1_W,
            i,
            vec![d],
            prep.block_norm(i, BlockNorm::Attention, "scale"),
        ));
        out.push(t(
            names::LN1_B,
            i,
            vec![d],
            prep.block_norm(i, BlockNorm::Attention, "bias"),
        ));
        out.push(t(names::IN_W, i, vec![3 * d, d], prep.qkv_weight(i)));
        out.push(t(names::IN_B, i, vec![3 * d], prep.qkv_bias(i)));
        out.push(t(
            names::OUT_W,
            i,
            vec![d, d],
            prep.proj_weight(i, Proj::Out),
        ));
        out.push(t(names::OUT_B, i, vec![d], prep.proj_bias(i, Proj::Out)));
        out.push(t(
            names::LN2_W,
            i,
            vec![d],
            prep.block_norm(i, BlockNorm::Mlp, "scale"),
        ));
        out.push(t(
            names::LN2_B,
            i,
            vec![d],
            prep.block_norm(i, BlockNorm::Mlp, "bias"),
        ));
        out.push(t(names::FC_W, i, vec![m, d], prep.mlp_weight(i, 0)));
        out.push(t(names::FC_B, i, vec![m], prep.mlp_bias(i, 0)));
        out.push(t(names::PROJ_W, i, vec![d, m], prep.mlp_weight(i, 1)));
        out.push(t(names::PROJ_B, i, vec![d], prep.mlp_bias(i, 1)));
    }
    out.push(t(
        names::LN_POST_W,
        0,
        vec![d],
        Recipe::Copy(n.encoder_norm("scale")),
    ));
    out.push(t(
        names::LN_POST_B,
        0,
        vec![d],
        Recipe::Copy(n.encoder_norm("bias")),
    ));
    let (output_dim, head_bias) = match proj {
        ProjChoice::Head => {
            let c = a.num_classes.unwrap_or(0);
            out.push(t(
                names::PROJ,
                0,
                vec![d, c],
                Recipe::Copy(n.head("kernel")),
            ));
            (c, Some(fetch.fetch(&n.head("bias"))?))
        }
        ProjChoice::None => {
            out.push(t(names::PROJ, 0, vec![d, d], Recipe::Identity(d)));
            (d, None)
        }
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
    let head = match proj {
        ProjChoice::Head => "proj",
        ProjChoice::None => "none",
    };
    let config = prep.config("quick", CLIP_LN_EPS, true, head, head_bias);
    let mut meta = prep.metadata(source_name, &config);
    meta.insert("vitconv.clip_kwargs".into(), kwargs.to_string());
    meta.insert("vitconv.exact".into(), "false".to_string());
    Ok(prep.finish(OutputKind::File, out, meta, python, vec![]))
}

/// Decides what `proj` holds and records it; refuses `pre_logits` (its tanh has no place before `proj`).
fn resolve_proj(prep: &mut Prepared<'_>) -> Result<ProjChoice> {
    let a = prep.arch().clone();
    let n = prep.src.names.clone();
    let has_head = prep.keep_head && a.num_classes.is_some();
    let choice = prep.opts.proj.unwrap_or(if has_head {
        ProjChoice::Head
    } else {
        ProjChoice::None
    });
    match choice {
        ProjChoice::Head if !has_head => Err(Error::BadOption {
            option: "--proj head",
            why: "there is no head to put in proj (the source has none or --drop-head was given)".to_string(),
        }),
        ProjChoice::Head if a.representation.is_some() => Err(prep.refuse(
            format!("pre_logits (dense {} -> {} + tanh) before the head", a.hidden, a.representation.unwrap_or(0)),
            "proj is one matrix with no bias or tanh; pass --drop-head (or --proj none) for the pooled features",
        )),
        ProjChoice::Head => {
            // The bias is not a tensor of the output: it goes into vitconv.config and the message.
            prep.dropped.push(n.head("bias"));
            prep.notes.push(format!(
                "proj = head kernel [{}, {}]: the model outputs logits minus the head bias (head_bias in vitconv.config)",
                a.hidden,
                a.num_classes.unwrap_or(0)
            ));
            Ok(ProjChoice::Head)
        }
        ProjChoice::None => {
            if has_head {
                prep.dropped.extend([n.head("kernel"), n.head("bias")]);
                prep.notes.push("head dropped by --proj none".to_string());
                if a.representation.is_some() {
                    prep.dropped.extend([n.pre_logits("kernel"), n.pre_logits("bias")]);
                    prep.notes.push("pre_logits (dense + tanh) dropped by --proj none".to_string());
                }
            }
            prep.notes.push("proj = identity: the model outputs the pooled, normed class token".to_string());
            Ok(ProjChoice::None)
        }
    }
}
