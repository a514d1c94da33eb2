//! The key names and block mapping shared by the CLIP-style layouts (OpenAI CLIP and open_clip `visual.*`).
//!
//! Both libraries name their vision tower's state dict the same way: openai-clip 1.0.1 `clip/model.py`
//! (`VisionTransformer`, `ResidualAttentionBlock`) and open_clip 3.3.0 `transformer.py` (`VisionTransformer`,
//! `ResidualAttentionBlock`) share `transformer.resblocks.N.{ln_1, attn, ln_2, mlp.c_fc, mlp.c_proj}`, `ln_post`
//! and `proj`. What differs between them (`ln_pre`, the MLP ratio, the activation, the config) stays in each layout.

use crate::arch::{Arch, Classifier, PatchEmbedKind, PosEmbKind};
use crate::error::{Error, Part, Result};
use crate::layout::prepared::{name, norm_pair, BlockRole, BlockTable, Prepared};
use crate::layout::recognise::{count_blocks, get, grid_side, Recognised, Shapes};
use crate::model::{Param, Proj};
use crate::options::ProjChoice;
use crate::plan::{Fetch, OutTensor, Recipe};
use crate::record::DeclaredHead;

/// CLIP-style state-dict names shared by both layouts (`{i}` = block index).
pub mod names {
    pub const PREFIX: &str = "visual.";
    /// OpenAI CLIP's `ln_pre` weight, which open_clip's names lack: it tells the two apart.
    pub const LN_PRE_W: &str = "ln_pre.weight";
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

/// One `transformer.resblocks.{i}` (`ResidualAttentionBlock`: `ln_1`, fused `attn.in_proj`, `attn.out_proj`,
/// `ln_2`, `mlp.c_fc`, `mlp.c_proj`).
pub const BLOCK: &BlockTable = &[
    (names::LN1_W, BlockRole::Norm1Scale),
    (names::LN1_B, BlockRole::Norm1Bias),
    (names::IN_W, BlockRole::QkvWeight),
    (names::IN_B, BlockRole::QkvBias),
    (names::OUT_W, BlockRole::Weight(Proj::Out)),
    (names::OUT_B, BlockRole::Bias(Proj::Out)),
    (names::LN2_W, BlockRole::Norm2Scale),
    (names::LN2_B, BlockRole::Norm2Bias),
    (names::FC_W, BlockRole::Fc1Weight),
    (names::FC_B, BlockRole::Fc1Bias),
    (names::PROJ_W, BlockRole::Fc2Weight),
    (names::PROJ_B, BlockRole::Fc2Bias),
];

/// Recognises a CLIP-style `VisionTransformer` (with or without the `visual.` prefix) for `inspect`, from
/// [`names`]; `ln_pre` tells OpenAI CLIP's layout from open_clip's (open_clip models with `ln_pre` look the
/// same as OpenAI's).
pub fn recognise(s: &Shapes<'_>) -> Option<Recognised> {
    [names::PREFIX, ""]
        .iter()
        .find_map(|p| recognise_under(s, p))
}

fn recognise_under(s: &Shapes<'_>, p: &str) -> Option<Recognised> {
    let &[hidden, in_chans, patch, _] = get(s, &format!("{p}{}", names::CONV1))? else {
        return None;
    };
    let &[rows, _] = get(s, &format!("{p}{}", names::POS))? else {
        return None;
    };
    get(s, &format!("{p}{}", names::CLASS))?;
    let side = grid_side(rows, 1)?;
    let depth = count_blocks(s, p, names::IN_W);
    if depth == 0 {
        return None;
    }
    let &[mlp, _] = get(s, &format!("{p}{}", name(names::FC_W, 0)))? else {
        return None;
    };
    let openai = s.contains_key(format!("{p}{}", names::LN_PRE_W).as_str());
    let mut notes = vec![];
    if let Some(&[_, out]) = get(s, &format!("{p}{}", names::PROJ)) {
        notes.push(format!("projection: {hidden} -> {out} (proj, no bias)"));
    }
    if openai {
        notes.push(
            "ln_pre present: OpenAI CLIP's layout (open_clip models with ln_pre share it)"
                .to_string(),
        );
    }
    let arch = Arch {
        patch,
        patch_embed: PatchEmbedKind::Conv,
        in_chans,
        hidden,
        heads: None,
        mlp,
        depth,
        grid: Some((side, side)),
        posemb: PosEmbKind::Learned,
        class_pos: true,
        classifier: Classifier::Token,
        num_classes: None,
        representation: None,
        resnet: None,
        stacked: false,
    };
    Some(Recognised {
        family: if openai { "openai_clip" } else { "open_clip" },
        arch,
        class_shape: Some(format!("[{hidden}] (class_embedding)")),
        patch_bias: false,
        notes,
        text: None,
    })
}

/// The class token, which `class_embedding` holds as `[D]`; refused where there is none.
pub fn class_token(prep: &Prepared<'_>) -> Result<Param> {
    prep.tower().class_token.clone().ok_or_else(|| {
        prep.refuse(
            Part::NoClassToken,
            "a class token is always prepended and attends to the patches, so the result would differ; use --layout timm",
        )
    })
}

/// The head bias values, which `proj` has no place for: they go into the metadata and the message.
pub fn head_bias(prep: &Prepared<'_>, fetch: &dyn Fetch) -> Result<Vec<f32>> {
    match &prep.tower().head {
        Some(head) => fetch.fetch(&head.bias),
        None => Ok(Vec::new()),
    }
}

/// Refuses what neither CLIP-style `VisionTransformer` can hold: a NaFlex tower, a ResNet stem, or a model
/// without a class token.
pub fn check_tower(prep: &Prepared<'_>) -> Result<()> {
    let a = prep.arch();
    if let Some((_, grid)) = prep.naflex_grid() {
        return Err(prep.refuse(
            Part::NaflexTower {
                patch: a.patch,
                grid,
            },
            "a CLIP-style VisionTransformer embeds fixed-size images with a patch convolution and a fixed position table, and masks no padding; a NaFlex model converts with --layout hf (Siglip2Model) or --layout timm --tower image (NaFlexVit)",
        ));
    }
    if a.resnet.is_some() {
        return Err(prep.refuse(
            Part::HybridStem {
                width: prep.arch().resnet.as_ref().map_or(0, |r| r.width),
            },
            "conv1 is a single patch convolution with no place for a stem; use --layout timm",
        ));
    }
    match a.classifier {
        Classifier::Token => Ok(()),
        Classifier::Gap => Err(prep.refuse(
            Part::Pooling(Classifier::Gap),
            "a class token is always prepended and attends to the patches, so the result would differ; use --layout timm",
        )),
        Classifier::Map => Err(prep.refuse(
            Part::Pooling(Classifier::Map),
            "the tower pools the class token and has no place for the probe's attention and MLP; use --layout timm (global_pool='map') or --layout hf (SiglipVisionModel)",
        )),
        Classifier::None => Err(prep.refuse(
            Part::Pooling(Classifier::None),
            "the tower pools the class token into one vector and has no per-token projection; use --layout hf (SiglipVisionModel + multi_modal_projector) or --layout timm (global_pool='')",
        )),
    }
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
    let tower = prep.tower();
    let d = prep.arch().hidden;
    for (i, b) in tower.blocks.iter().enumerate() {
        out.extend(prep.block_tensors(BLOCK, names::PREFIX, i, b));
    }
    out.extend(norm_pair(
        &tower.final_norm,
        d,
        &format!("{}{}", names::PREFIX, names::LN_POST_W),
        &format!("{}{}", names::PREFIX, names::LN_POST_B),
    ));
}

/// Pushes `proj` (the head kernel, or the identity) and returns the model's output width.
pub fn push_proj(prep: &Prepared<'_>, proj: ProjChoice, out: &mut Vec<OutTensor>) -> usize {
    let d = prep.arch().hidden;
    match proj {
        ProjChoice::Head => {
            let c = prep.arch().num_classes.unwrap_or(0);
            if let Some(head) = &prep.tower().head {
                out.push(tensor(
                    names::PROJ,
                    0,
                    vec![d, c],
                    Recipe::Copy(head.kernel.clone()),
                ));
            }
            c
        }
        ProjChoice::None => {
            out.push(tensor(names::PROJ, 0, vec![d, d], Recipe::Identity(d)));
            d
        }
    }
}

/// The `head` value of `vitconv.config` for a `proj` choice.
pub fn head_kind(proj: ProjChoice) -> DeclaredHead {
    match proj {
        ProjChoice::Head => DeclaredHead::Proj,
        ProjChoice::None => DeclaredHead::None,
    }
}

/// Decides what `proj` holds and records it; refuses `pre_logits` (its tanh has no place before `proj`).
pub fn resolve_proj(prep: &mut Prepared<'_>) -> Result<ProjChoice> {
    let a = prep.arch().clone();
    let tower = prep.tower();
    let has_head = prep.keep_head && a.num_classes.is_some();
    let choice = prep.opts.proj.unwrap_or(if has_head {
        ProjChoice::Head
    } else {
        ProjChoice::None
    });
    match choice {
        ProjChoice::Head if !has_head => Err(Error::ProjWithoutHead),
        ProjChoice::Head if a.representation.is_some() => Err(prep.refuse(
            Part::PreLogits {
                hidden: a.hidden,
                representation: a.representation.unwrap_or(0),
            },
            "proj is one matrix with no bias or tanh; pass --drop-head (or --proj none) for the pooled features",
        )),
        ProjChoice::Head => {
            // The bias is not a tensor of the output: it goes into vitconv.config and the message.
            if let Some(head) = &tower.head {
                prep.dropped.push(head.bias.tensor.clone());
            }
            prep.notes.push(format!(
                "proj = head kernel [{}, {}]: the model outputs logits minus the head bias (head_bias in vitconv.config)",
                a.hidden,
                a.num_classes.unwrap_or(0)
            ));
            Ok(ProjChoice::Head)
        }
        ProjChoice::None => {
            if let (true, Some(head)) = (has_head, &tower.head) {
                prep.dropped.extend([head.kernel.tensor.clone(), head.bias.tensor.clone()]);
                prep.notes.push("head dropped by --proj none".to_string());
                if let Some(pre) = &tower.pre_logits {
                    prep.dropped.extend([pre.kernel.tensor.clone(), pre.bias.tensor.clone()]);
                    prep.notes.push("pre_logits (dense + tanh) dropped by --proj none".to_string());
                }
            }
            prep.notes.push("proj = identity: the model outputs the pooled, normed class token".to_string());
            Ok(ProjChoice::None)
        }
    }
}
