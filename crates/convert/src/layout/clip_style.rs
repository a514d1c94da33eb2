//! The key names and block mapping shared by the CLIP-style layouts (OpenAI CLIP and open_clip `visual.*`).
//!
//! Both libraries name their vision tower's state dict the same way: openai-clip 1.0.1 `clip/model.py`
//! (`VisionTransformer`, `ResidualAttentionBlock`) and open_clip 3.3.0 `transformer.py` (`VisionTransformer`,
//! `ResidualAttentionBlock`) share `transformer.resblocks.N.{ln_1, attn, ln_2, mlp.c_fc, mlp.c_proj}`, `ln_post`
//! and `proj`. What differs between them (`ln_pre`, the MLP ratio, the activation, the config) stays in each layout.

use crate::detect::{BlockNorm, Proj};
use crate::error::{Error, Result};
use crate::layout::{name, Prepared};
use crate::options::ProjChoice;
use crate::plan::{OutTensor, Recipe};

/// CLIP-style state-dict names shared by both layouts (`{i}` = block index).
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

/// Refuses what neither CLIP-style `VisionTransformer` can hold: a ResNet stem, or a model without a class token.
pub fn check_tower(prep: &Prepared<'_>) -> Result<()> {
    let a = prep.arch();
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
    Ok(())
}

/// One output tensor named `visual.` + the template with `{i}` replaced by the block index.
pub fn tensor(template: &str, i: usize, shape: Vec<usize>, recipe: Recipe) -> OutTensor {
    OutTensor {
        name: format!("{}{}", names::PREFIX, name(template, i)),
        shape,
        recipe,
    }
}

/// Pushes the tensors of every `transformer.resblocks.N`, then `ln_post`, in state-dict order.
pub fn push_blocks_and_ln_post(prep: &Prepared<'_>, out: &mut Vec<OutTensor>) {
    let a = prep.arch();
    let n = &prep.src.names;
    let (d, m) = (a.hidden, a.mlp);
    for i in 0..a.depth {
        out.extend([
            tensor(
                names::LN1_W,
                i,
                vec![d],
                prep.block_norm(i, BlockNorm::Attention, "scale"),
            ),
            tensor(
                names::LN1_B,
                i,
                vec![d],
                prep.block_norm(i, BlockNorm::Attention, "bias"),
            ),
            tensor(names::IN_W, i, vec![3 * d, d], prep.qkv_weight(i)),
            tensor(names::IN_B, i, vec![3 * d], prep.qkv_bias(i)),
            tensor(names::OUT_W, i, vec![d, d], prep.proj_weight(i, Proj::Out)),
            tensor(names::OUT_B, i, vec![d], prep.proj_bias(i, Proj::Out)),
            tensor(
                names::LN2_W,
                i,
                vec![d],
                prep.block_norm(i, BlockNorm::Mlp, "scale"),
            ),
            tensor(
                names::LN2_B,
                i,
                vec![d],
                prep.block_norm(i, BlockNorm::Mlp, "bias"),
            ),
            tensor(names::FC_W, i, vec![m, d], prep.mlp_weight(i, 0)),
            tensor(names::FC_B, i, vec![m], prep.mlp_bias(i, 0)),
            tensor(names::PROJ_W, i, vec![d, m], prep.mlp_weight(i, 1)),
            tensor(names::PROJ_B, i, vec![d], prep.mlp_bias(i, 1)),
        ]);
    }
    out.push(tensor(
        names::LN_POST_W,
        0,
        vec![d],
        Recipe::Copy(n.encoder_norm("scale")),
    ));
    out.push(tensor(
        names::LN_POST_B,
        0,
        vec![d],
        Recipe::Copy(n.encoder_norm("bias")),
    ));
}

/// Pushes `proj` (the head kernel, or the identity) and returns the model's output width.
pub fn push_proj(prep: &Prepared<'_>, proj: ProjChoice, out: &mut Vec<OutTensor>) -> usize {
    let d = prep.arch().hidden;
    match proj {
        ProjChoice::Head => {
            let c = prep.arch().num_classes.unwrap_or(0);
            out.push(tensor(
                names::PROJ,
                0,
                vec![d, c],
                Recipe::Copy(prep.src.names.head("kernel")),
            ));
            c
        }
        ProjChoice::None => {
            out.push(tensor(names::PROJ, 0, vec![d, d], Recipe::Identity(d)));
            d
        }
    }
}

/// The `head` value of `vitconv.config` for a `proj` choice.
pub fn head_kind(proj: ProjChoice) -> &'static str {
    match proj {
        ProjChoice::Head => "proj",
        ProjChoice::None => "none",
    }
}

/// Decides what `proj` holds and records it; refuses `pre_logits` (its tanh has no place before `proj`).
pub fn resolve_proj(prep: &mut Prepared<'_>) -> Result<ProjChoice> {
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
