//! The open_clip layout: `visual.*` keys of open_clip's `VisionTransformer` plus an open_clip config that makes it exact.
//!
//! Names and semantics follow open_clip 3.3.0 `transformer.py` (`VisionTransformer`: `conv1` without bias,
//! `class_embedding`, `positional_embedding`, `ln_pre` unless `no_ln_pre`, `transformer.resblocks.N`, `ln_post`,
//! `proj`, pooling `tok`, `final_ln_after_pool`) and `model.py` (`CLIPVisionCfg`, `_build_vision_tower`:
//! `act_kwargs`, `norm_kwargs`, heads = width // head_width). The flax ViT maps exactly: `no_ln_pre`, token pooling
//! after `ln_post`, LayerNorm eps 1e-6, the source's GELU, and the patch bias folded into the position embedding.

use serde_json::json;

use crate::detect::{BlockNorm, Proj};
use crate::error::{Error, Result};
use crate::layout::{mlp_ratio, name, Prepared, FLAX_LN_EPS};
use crate::options::{Gelu, ProjChoice};
use crate::plan::{Fetch, OutTensor, OutputKind, Plan, Recipe, SideFile};

/// open_clip state-dict names (`{i}` = block index).
pub mod names {
    pub const PREFIX: &str = "visual.";
    pub const CONV1: &str = "conv1.weight";
    pub const CLASS: &str = "class_embedding";
    pub const POS: &str = "positional_embedding";
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

/// Suffix replacing OUTPUT's extension for the open_clip config.
pub const CONFIG_SUFFIX: &str = ".open_clip.json";

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
    prep.check_input_norm()?;
    let ratio = mlp_ratio(&prep)?;
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
            (c, Some(head_bias(&prep, fetch)?))
        }
        ProjChoice::None => {
            out.push(t(names::PROJ, 0, vec![d, d], Recipe::Identity(d)));
            (d, None)
        }
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
        "act_kwargs": match prep.opts.gelu { Gelu::Tanh => json!({"approximate": "tanh"}), Gelu::Erf => json!(null) },
        "norm_kwargs": {"eps": FLAX_LN_EPS},
    });
    let model_cfg = json!({"embed_dim": output_dim, "quick_gelu": false, "vision_cfg": vision_cfg});
    let python = "import json, torch\nfrom open_clip.model import _build_vision_tower\ncfg = json.load(open(CONFIG_JSON))\nvisual = _build_vision_tower(cfg['embed_dim'], cfg['vision_cfg'])".to_string();
    let head = match proj {
        ProjChoice::Head => "proj",
        ProjChoice::None => "none",
    };
    let config = prep.config(prep.opts.gelu.as_str(), FLAX_LN_EPS, false, head, head_bias);
    let mut meta = prep.metadata(source_name, &config);
    meta.insert("vitconv.open_clip_config".into(), model_cfg.to_string());
    let mut text =
        serde_json::to_string_pretty(&model_cfg).unwrap_or_else(|_| model_cfg.to_string());
    text.push('\n');
    let side = vec![SideFile {
        name: CONFIG_SUFFIX.to_string(),
        contents: text,
    }];
    Ok(prep.finish(OutputKind::File, out, meta, python, side))
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

/// The head bias values, for the metadata and the message.
fn head_bias(prep: &Prepared<'_>, fetch: &dyn Fetch) -> Result<Vec<f32>> {
    fetch.fetch(&prep.src.names.head("bias"))
}
