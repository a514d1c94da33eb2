//! Detects Vision Transformer checkpoints from their keys and shapes and maps them into timm, transformers and CLIP-style layouts.

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
pub fn summarize(_tensors: &[TensorInfo]) -> Option<Summary> {
    None
}
