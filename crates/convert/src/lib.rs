//! Reads Vision Transformer checkpoints from their keys and shapes into a neutral model and maps that model into
//! timm, transformers and CLIP-style layouts.
//!
//! - [`sources`]: one module per source family (`vit_jax`, `big_vision`, `siglip` with SigLIP 2,
//!   `siglip2_naflex`, `paligemma`), each turning a key/shape listing into a [`model::Model`] or refusing it with
//!   a one-line reason, and the registry that lists them (`sources::SOURCES`); `sources::flax_tree` is the one
//!   reader of flax encoder names (vit_jax's pre-Linen and Linen, big_vision's stacked or unrolled) that the
//!   families and `verify`'s references share.
//! - [`model`]: the neutral description between sources and layouts: towers, blocks and heads whose every
//!   parameter is a source tensor (with an index into a stacked axis where blocks are stacked), the sizes
//!   read off the shapes ([`arch::Arch`]), and what each tower computes beyond its weights
//!   ([`model::Semantics`]: LayerNorm eps, activation, causal mask; a text tower's pooling), which layouts
//!   declare and never re-decide.
//! - [`record`]: the typed, versioned `vitconv.config` record every layout writes and `verify` and `inspect`
//!   read back through the same type.
//! - [`layout`]: one module per target layout, each a table of target key and model role plus its refusals,
//!   config and side files, and the recogniser `inspect` and `verify` use (built from the same names); the
//!   registry [`layout::LAYOUTS`] lists them. `layout::prepared` holds what every layout shares (grid, head and
//!   input-norm decisions, weight and embedding recipes, the record), split by role.
//! - [`plan`]: the recipes each output tensor is computed by (transpose, q/k/v fusion, HWIO -> OIHW, bias
//!   and normalisation folding, position-embedding resizing via [`resize`], sincos2d), as data that knows how
//!   many values each makes.
//! - [`exec`]: the one interpreter of recipes, streaming the big ones a band at a time into a sink; a
//!   conversion and a test evaluate a recipe through the same code.
//! - [`kernel`]: the numeric kernels the interpreter calls (transposes, the one float decoding table,
//!   encoding, the fused transpose-and-convert, sincos2d); it imports nothing of the plan.
//! - [`convert`]: runs a plan, the interpreter's bands of one output tensor after another handed to an atomic
//!   writer.
//! - [`tokenizer`]: the SentencePiece model `--tokenizer` names, checked, told apart by kind (SigLIP, Gemma)
//!   and written as a tokenizer's files.
//!
//! The rule: a new source family is a new module under [`sources`] plus one line in `sources::SOURCES`; a new
//! target layout is a new module under [`layout`] plus one line in [`layout::LAYOUTS`] (and its name in
//! [`Layout`]); neither edits another family or layout.

// Every public item says what it is. The parsing and sizing code (every module but the four below) may not
// unwrap, index or do unchecked arithmetic outside tests: a lying header must give an error, never a panic or
// a wrapped size. The numeric kernels, the resampler, the interpreter and the executor work on buffers whose
// sizes were checked before they run, in loops where indexing is the clear form.
#![deny(missing_docs)]
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::indexing_slicing,
        clippy::arithmetic_side_effects
    )
)]

pub mod arch;
#[cfg_attr(
    not(test),
    allow(clippy::indexing_slicing, clippy::arithmetic_side_effects)
)]
pub mod convert;
pub mod error;
#[cfg_attr(
    not(test),
    allow(clippy::indexing_slicing, clippy::arithmetic_side_effects)
)]
pub mod exec;
pub mod folders;
#[cfg_attr(
    not(test),
    allow(clippy::indexing_slicing, clippy::arithmetic_side_effects)
)]
pub mod kernel;
pub mod layout;
pub mod meta;
pub mod model;
pub mod options;
pub mod plan;
pub mod record;
#[cfg_attr(
    not(test),
    allow(clippy::indexing_slicing, clippy::arithmetic_side_effects)
)]
pub mod resize;
pub mod sources;
pub mod tokenizer;

pub use convert::{prepare, python, write, write_in, Conversion, Target, Written};
pub use error::{Error, Part, Result};
pub use options::{
    Gelu, HeadChoice, InputNorm, Layout, Options, OutDType, ProjChoice, ResizeMethod, TowerChoice,
};

use vitconv_tensors::TensorInfo;

/// What `vitconv inspect` prints about a file whose keys form a known layout.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Summary {
    /// The layout family: `vit_jax`, `timm`, `transformers`, `open_clip`, `openai_clip`.
    pub family: String,
    /// One line, e.g. `ViT-L/32: hidden 1024, 24 layers, 16 heads, mlp 4096, 384 px (12x12 grid + class token), 1000 classes, no pre_logits`.
    pub architecture: String,
    /// What the parts are, one sentence each (patch embedding, class token, position embedding, stem...).
    pub parts: Vec<String>,
    /// The wrapper the layout was found under (`state_dict.`, `model.`, DDP's `module.`), if any.
    pub wrapper: Option<String>,
    /// A two-tower source's logit scale `t` and, where there is one, bias `b`: the tensors whose values the
    /// summary line quotes (`inspect` reads them; the shapes alone cannot tell them).
    pub logit_tensors: Vec<String>,
}

/// Wrappers training checkpoints put around their weights: a dict entry, DDP's `module.`, or both.
const WRAPPERS: &[&str] = &[
    "state_dict.",
    "model.",
    "module.",
    "state_dict.module.",
    "model.module.",
    "model_ema.",
    "ema.",
];

/// [`summarize`] for a whole file: recognises a layout also under one wrapper key or a `module.` prefix
/// (and says which, and how many tensors lie outside it), and takes from `vitconv.config` metadata what the
/// shapes cannot tell (the head count of fused q/k/v layouts).
pub fn summarize_file(
    tensors: &[TensorInfo],
    metadata: &std::collections::BTreeMap<String, String>,
) -> Option<Summary> {
    // A record this build cannot read gives no head count; the shapes alone then decide what they can.
    let heads = metadata
        .get(crate::meta::CONFIG)
        .and_then(|c| crate::record::ConfigRecord::from_json(c).ok())
        .and_then(|r| r.heads);
    if let Some(s) = summarize_with(tensors, heads) {
        return Some(s);
    }
    WRAPPERS.iter().find_map(|w| {
        let inner: Vec<TensorInfo> = tensors
            .iter()
            .filter_map(|t| {
                t.name.strip_prefix(w).map(|n| TensorInfo {
                    name: n.to_string(),
                    ..t.clone()
                })
            })
            .collect();
        if inner.is_empty() {
            return None;
        }
        let mut s = summarize_with(&inner, heads)?;
        let outside = tensors.len().saturating_sub(inner.len());
        s.parts.push(if outside == 0 {
            format!("wrapped under {w}")
        } else {
            format!("wrapped under {w}; {outside} other tensors lie outside it (optimizer state and the like)")
        });
        s.wrapper = Some((*w).to_string());
        Some(s)
    })
}

/// Recognises the layout and architecture of a key/shape list, or `None` when it is not a known layout.
pub fn summarize(tensors: &[TensorInfo]) -> Option<Summary> {
    summarize_with(tensors, None)
}

/// The tensors of a source file that stack the blocks along their leading axis, with the depth of each, for
/// listings that fold them like numbered blocks; empty when the file is no source or stacks nothing.
pub fn stacked_tensors(tensors: &[TensorInfo]) -> std::collections::BTreeMap<String, usize> {
    let Ok(model) = sources::read(tensors) else {
        return Default::default();
    };
    model
        .image
        .blocks
        .iter()
        .chain(model.text.iter().flat_map(|t| t.blocks.iter()))
        .flat_map(|b| b.params())
        .filter_map(|p| p.stack.map(|s| (p.tensor.clone(), s.count)))
        .collect()
}

/// [`summarize`], with a head count from elsewhere for layouts whose shapes do not give one.
fn summarize_with(tensors: &[TensorInfo], heads: Option<usize>) -> Option<Summary> {
    if let Ok(model) = sources::read(tensors) {
        let arch = &model.image.arch;
        let mut parts = arch.parts();
        parts.extend(model.notes.iter().cloned());
        let architecture = model_line(&model);
        return Some(Summary {
            family: model.family.to_string(),
            architecture,
            parts,
            wrapper: None,
            logit_tensors: model
                .logit
                .iter()
                .flat_map(|l| std::iter::once(&l.scale).chain(l.bias.as_ref()))
                .map(|p| p.tensor.clone())
                .collect(),
        });
    }
    let mut r = layout::recognise(tensors)?;
    if r.arch.heads.is_none() {
        // Only a head count that divides the width is taken; the file's own record says it.
        r.arch.heads = heads.filter(|h| *h > 0 && r.arch.hidden.is_multiple_of(*h));
    }
    let class_shape = r
        .class_shape
        .clone()
        .unwrap_or_else(|| format!("[1, 1, {}]", r.arch.hidden));
    let mut parts = r.arch.parts_with(r.patch_bias, &class_shape);
    parts.extend(r.notes);
    let architecture = match &r.text {
        Some(text) => two_tower_line(&r.arch, text),
        None => r.arch.describe(),
    };
    Some(Summary {
        family: r.family.to_string(),
        architecture,
        parts,
        wrapper: None,
        // Converted files keep the scalars under each layout's own names. Only a tensor of one element is a
        // scalar to read: a `logit_scale` of a gigabyte must not be read whole to print one number.
        logit_tensors: ["logit_scale", "logit_bias"]
            .into_iter()
            .filter(|n| {
                r.text.is_some() && tensors.iter().any(|t| t.name == *n && t.numel() == Some(1))
            })
            .map(str::to_string)
            .collect(),
    })
}

/// The one-line description of a source's model: the architecture, or both towers of a two-tower model (whose
/// image projection is no classifier head).
pub(crate) fn model_line(model: &model::Model) -> String {
    if let Some(llm) = &model.llm {
        return vision_language_line(&model.image.arch, &llm.arch);
    }
    match &model.text {
        Some(text) => two_tower_line(&model.image.arch, &text.arch),
        None => model.image.arch.describe(),
    }
}

/// The summary of a two-tower model: `SigLIP: image ViT-B/16 224 px (14x14, MAP head), text 12 layers width
/// 768, vocab 32000, context 64, embedding 768` (the logit scale and bias are added by whoever reads them).
fn two_tower_line(image: &arch::Arch, text: &model::TextArch) -> String {
    let pool = match image.classifier {
        arch::Classifier::Map => "MAP head",
        arch::Classifier::Gap => "mean pooling",
        arch::Classifier::Token => "class token",
        arch::Classifier::None => "no pooling",
    };
    let resolution = match (image.grid, image.image_size()) {
        (Some((h, w)), Some(px)) => format!("{px} px ({h}x{w}, {pool})"),
        (Some((h, w)), None) if image.naflex() => format!(
            "no fixed resolution ({h}x{w} position grid resized to each image's patch grid, {pool})"
        ),
        _ => format!("sincos2d position embedding ({pool})"),
    };
    let embed = text.embed.unwrap_or(text.width);
    format!(
        "{}: image {} {resolution}, text {} layers width {}, vocab {}, context {}, embedding {embed}",
        if image.naflex() {
            "SigLIP 2 NaFlex"
        } else {
            "SigLIP"
        },
        image.name(),
        text.depth,
        text.width,
        text.vocab,
        text.context,
    )
}

/// The summary of a PaliGemma model: `PaliGemma 2: image ViT-So400m/14 224 px (16x16 = 256 tokens), width
/// 1152, 27 layers, 16 heads, mlp 4304, head 1152 -> 2304 per token; LLM Gemma 2 (not converted): width 2304,
/// 26 layers, 8 heads, 4 KV heads, head dim 256, mlp 9216, vocab 257152`.
fn vision_language_line(image: &arch::Arch, llm: &model::LanguageArch) -> String {
    let resolution = match (image.grid, image.image_size()) {
        (Some((h, w)), Some(px)) => format!("{px} px ({h}x{w} = {} tokens)", h.saturating_mul(w)),
        _ => "sincos2d position embedding".to_string(),
    };
    let heads = image
        .heads
        .map_or("heads not stored".to_string(), |h| format!("{h} heads"));
    let head = match image.num_classes {
        Some(c) => format!("head {} -> {c} per token", image.hidden),
        None => "no head".to_string(),
    };
    format!(
        "Pali{}: image {} {resolution}, width {}, {} layers, {heads}, mlp {}, {head}; LLM {} (not converted): width {}, {} layers, {} heads, {} KV heads, head dim {}, mlp {}, vocab {}",
        llm.name(),
        image.name(),
        image.hidden,
        image.depth,
        image.mlp,
        llm.name(),
        llm.width,
        llm.depth,
        llm.heads,
        llm.kv_heads,
        llm.head_dim,
        llm.mlp,
        llm.vocab
    )
}
