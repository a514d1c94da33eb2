//! Detects Vision Transformer checkpoints from their keys and shapes and maps them into timm, transformers and CLIP-style layouts.
//!
//! - [`detect`]: recognises a family (vit_jax as the conversion source; timm, transformers, open_clip,
//!   OpenAI CLIP for `inspect`) and reads the architecture ([`arch::Arch`]) off the shapes.
//! - [`layout`]: one module per target layout, each a table of names plus the transforms it needs.
//! - [`plan`]: the transforms (transpose, q/k/v fusion, HWIO -> OIHW, bias and normalisation folding,
//!   position-embedding resizing via [`resize`]).
//! - [`convert`]: runs a plan, streaming one output tensor at a time into an atomic writer.

pub mod arch;
pub mod convert;
pub mod detect;
pub mod error;
pub mod kernel;
pub mod layout;
pub mod model;
pub mod options;
pub mod plan;
pub mod resize;
pub mod sources;

pub use convert::{prepare, write, Conversion, Written};
pub use error::{Error, Result};
pub use options::{
    Gelu, HeadChoice, InputNorm, Layout, Options, OutDType, ProjChoice, ResizeMethod,
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
}

/// Recognises the layout and architecture of a key/shape list, or `None` when it is not a known layout.
pub fn summarize(tensors: &[TensorInfo]) -> Option<Summary> {
    if let Ok(model) = sources::read(tensors) {
        let arch = &model.image.arch;
        let mut parts = arch.parts();
        parts.extend(model.notes.iter().cloned());
        return Some(Summary {
            family: model.family.to_string(),
            architecture: arch.describe(),
            parts,
        });
    }
    let (family, arch, notes) = detect::summarize_family(tensors)?;
    let mut parts = match family {
        detect::Family::OpenClip | detect::Family::OpenAiClip => {
            arch.parts_with(false, &format!("[{}] (class_embedding)", arch.hidden))
        }
        _ => arch.parts(),
    };
    parts.extend(notes);
    Some(Summary {
        family: family.as_str().to_string(),
        architecture: arch.describe(),
        parts,
    })
}
