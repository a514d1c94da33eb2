//! Recognises a checkpoint family from its keys and shapes alone (never the file name) and reads the architecture off the shapes.
//!
//! The vit_jax family (google-research/vision_transformer `.npz`) is the conversion source and is checked
//! completely: every tensor must be accounted for and every shape must agree with the others. The other
//! families (timm, transformers, open_clip, OpenAI CLIP) are recognised for `inspect` only.
//! New sources (big_vision's `params/` prefix with depth-stacked blocks and a MAP head, two-tower SigLIP/LiT)
//! belong here as further [`Family`] variants with their own naming struct beside [`JaxNames`].

use std::collections::BTreeMap;

use vitconv_tensors::TensorInfo;

use crate::arch::{Arch, Classifier, PosEmbKind, ResNet};

/// A checkpoint family, i.e. a naming and storage convention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// google-research/vision_transformer `.npz` (flax, `/`-joined keys).
    VitJax,
    /// timm `VisionTransformer` state dict.
    Timm,
    /// Hugging Face transformers `ViTModel` / `ViTForImageClassification`.
    Transformers,
    /// open_clip `VisionTransformer` (`visual.*`), recognised by its missing `ln_pre`.
    OpenClip,
    /// OpenAI CLIP `model.visual` (`visual.*` with `ln_pre`; open_clip files with `ln_pre` look the same).
    OpenAiClip,
}

impl Family {
    pub fn as_str(self) -> &'static str {
        match self {
            Family::VitJax => "vit_jax",
            Family::Timm => "timm",
            Family::Transformers => "transformers",
            Family::OpenClip => "open_clip",
            Family::OpenAiClip => "openai_clip",
        }
    }
}

/// Recognises any known family and its architecture, for `inspect`.
pub fn summarize_family(tensors: &[TensorInfo]) -> Option<(Family, Arch, Vec<String>)> {
    detect_torch_family(tensors)
}

/// Recognises the PyTorch layouts (everything but the vit_jax source).
pub(crate) fn detect_torch_family(tensors: &[TensorInfo]) -> Option<(Family, Arch, Vec<String>)> {
    let shapes: BTreeMap<&str, &[usize]> = tensors
        .iter()
        .map(|t| (t.name.as_str(), t.shape.as_slice()))
        .collect();
    detect_timm(&shapes)
        .or_else(|| detect_hf(&shapes))
        .or_else(|| detect_clip(&shapes, "visual."))
        .or_else(|| detect_clip(&shapes, ""))
}

type Shapes<'a> = BTreeMap<&'a str, &'a [usize]>;

fn get<'a>(s: &Shapes<'a>, k: &str) -> Option<&'a [usize]> {
    s.get(k).copied()
}

fn count_blocks(s: &Shapes<'_>, f: impl Fn(usize) -> String) -> usize {
    (0..).take_while(|i| s.contains_key(f(*i).as_str())).count()
}

/// Grid side from position-embedding rows, given the number of prefix (class) rows.
fn grid_side(rows: usize, prefix: usize) -> Option<usize> {
    let cells = rows.checked_sub(prefix)?;
    let side = cells.isqrt();
    (side > 0 && side * side == cells).then_some(side)
}

fn detect_timm(s: &Shapes<'_>) -> Option<(Family, Arch, Vec<String>)> {
    let &[hidden, in_chans, patch, _] = get(s, "patch_embed.proj.weight")? else {
        return None;
    };
    let depth = count_blocks(s, |i| format!("blocks.{i}.attn.qkv.weight"));
    if depth == 0 {
        return None;
    }
    let &[mlp, _] = get(s, "blocks.0.mlp.fc1.weight")? else {
        return None;
    };
    let cls = s.contains_key("cls_token");
    let &[_, rows, _] = get(s, "pos_embed")? else {
        return None;
    };
    let side = grid_side(rows, usize::from(cls))?;
    let num_classes = get(s, "head.weight").and_then(|h| h.first().copied());
    let resnet = if s.contains_key("patch_embed.backbone.stem.conv.weight") {
        let width = get(s, "patch_embed.backbone.stem.conv.weight")?
            .first()
            .copied()?;
        let stages = (0..)
            .map(|st| {
                count_blocks(s, |b| {
                    format!("patch_embed.backbone.stages.{st}.blocks.{b}.conv1.weight")
                })
            })
            .take_while(|n| *n > 0)
            .collect();
        Some(ResNet { stages, width })
    } else {
        get(s, "patch_embed.backbone.conv.weight")
            .and_then(|w| w.first().copied())
            .map(|width| ResNet {
                stages: vec![],
                width,
            })
    };
    let arch = Arch {
        patch,
        in_chans,
        hidden,
        heads: None,
        mlp,
        depth,
        grid: Some((side, side)),
        posemb: PosEmbKind::Learned,
        class_pos: true,
        classifier: if cls {
            Classifier::Token
        } else {
            Classifier::Gap
        },
        num_classes,
        representation: None,
        resnet,
        stacked: false,
    };
    Some((Family::Timm, arch, vec![]))
}

fn detect_hf(s: &Shapes<'_>) -> Option<(Family, Arch, Vec<String>)> {
    let p = if s.contains_key("vit.embeddings.cls_token") {
        "vit."
    } else {
        ""
    };
    let &[hidden, in_chans, patch, _] = get(
        s,
        &format!("{p}embeddings.patch_embeddings.projection.weight"),
    )?
    else {
        return None;
    };
    let &[_, rows, _] = get(s, &format!("{p}embeddings.position_embeddings"))? else {
        return None;
    };
    let side = grid_side(rows, 1)?;
    // transformers 5 names blocks `layers.N.mlp.fc1`; earlier releases `encoder.layer.N.intermediate.dense`.
    let new = count_blocks(s, |i| format!("{p}layers.{i}.mlp.fc1.weight"));
    let old = count_blocks(s, |i| {
        format!("{p}encoder.layer.{i}.intermediate.dense.weight")
    });
    let (depth, fc1) = if new > 0 {
        (new, format!("{p}layers.0.mlp.fc1.weight"))
    } else {
        (old, format!("{p}encoder.layer.0.intermediate.dense.weight"))
    };
    if depth == 0 {
        return None;
    }
    let &[mlp, _] = get(s, &fc1)? else {
        return None;
    };
    let arch = Arch {
        patch,
        in_chans,
        hidden,
        heads: None,
        mlp,
        depth,
        grid: Some((side, side)),
        posemb: PosEmbKind::Learned,
        class_pos: true,
        classifier: Classifier::Token,
        num_classes: get(s, "classifier.weight").and_then(|h| h.first().copied()),
        representation: get(s, &format!("{p}pooler.dense.weight")).and_then(|h| h.first().copied()),
        resnet: None,
        stacked: false,
    };
    let mut notes = vec![];
    if arch.representation.is_some() {
        notes.push("the pooler (dense + tanh) plays the role of pre_logits".to_string());
    }
    Some((Family::Transformers, arch, notes))
}

fn detect_clip(s: &Shapes<'_>, p: &str) -> Option<(Family, Arch, Vec<String>)> {
    let &[hidden, in_chans, patch, _] = get(s, &format!("{p}conv1.weight"))? else {
        return None;
    };
    let &[rows, _] = get(s, &format!("{p}positional_embedding"))? else {
        return None;
    };
    get(s, &format!("{p}class_embedding"))?;
    let side = grid_side(rows, 1)?;
    let depth = count_blocks(s, |i| {
        format!("{p}transformer.resblocks.{i}.attn.in_proj_weight")
    });
    if depth == 0 {
        return None;
    }
    let &[mlp, _] = get(s, &format!("{p}transformer.resblocks.0.mlp.c_fc.weight"))? else {
        return None;
    };
    let family = if s.contains_key(format!("{p}ln_pre.weight").as_str()) {
        Family::OpenAiClip
    } else {
        Family::OpenClip
    };
    let mut notes = vec![];
    if let Some(&[_, out]) = get(s, &format!("{p}proj")) {
        notes.push(format!("projection: {hidden} -> {out} (proj, no bias)"));
    }
    if family == Family::OpenAiClip {
        notes.push(
            "ln_pre present: OpenAI CLIP's layout (open_clip models with ln_pre share it)"
                .to_string(),
        );
    }
    let arch = Arch {
        patch,
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
    Some((family, arch, notes))
}
