//! The reference forwards: a source `.npz` run straight from its own keys, in the flax model's layouts and semantics, one module per source family.
//!
//! - [`vit_jax`]: google-research/vision_transformer files (`Transformer/posembed_input`,
//!   pre-Linen or Linen block names, hybrids).
//! - [`big_vision`]: google-research/big_vision files (`params/` root, Linen names,
//!   scan-stacked blocks, sincos2d or top-level learned position embeddings, `tok`, `gap`,
//!   `map` and `0` pooling), for a plain ViT or one tower of a two-tower model.
//! - [`siglip`]: a big_vision two-tower model (SigLIP): the image tower above under `img/`,
//!   the text tower under `txt/`, and `t`/`b` for the logits.
//! - [`naflex`]: a SigLIP 2 NaFlex two-tower model: big_vision's `naflex_vit` image tower
//!   (patch inputs, a position grid resized per image, padding masks) with the text tower of
//!   [`siglip`].
//!
//! [`Reference`] takes the family from the converter's source registry through [`crate::registry`] (which also
//! says how each family's image tower is read) and hands both forwards' results back
//! in one shape ([`RefOutputs`]), with the architecture read from the shapes
//! ([`SourceArch`]). What the converter lends is recognition only (which family a file is, where its tree
//! starts); nothing of its mapping to the targets is borrowed, so a mapping bug there cannot hide in both sides.

pub mod big_vision;
pub mod naflex;
pub mod siglip;
pub mod vit_jax;

use std::path::Path;

use tch::{Device, Tensor};
use vitconv_tensors::TensorFile;

use crate::error::{Error, Result};
use crate::registry::PixelReference;

/// flax's `nn.LayerNorm` default epsilon.
pub const FLAX_LAYER_NORM_EPS: f64 = 1e-6;
/// flax's `nn.GroupNorm` default epsilon.
pub const FLAX_GROUP_NORM_EPS: f64 = 1e-6;
/// `models_resnet.weight_standardize`'s epsilon, added to the standard deviation.
pub const STD_CONV_EPS: f64 = 1e-5;
/// flax's `nn.GroupNorm` default group count.
pub const GROUPS: i64 = 32;

/// The code base a source checkpoint was written by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    /// google-research/vision_transformer (`vit_jax`).
    VitJax,
    /// google-research/big_vision.
    BigVision,
}

/// How the sequence is pooled after `encoder_norm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Classifier {
    /// Token 0, the class token.
    Token,
    /// The mean over all tokens (no class token).
    Gap,
    /// big_vision's `MAPHead`: a learned probe attends over all tokens, then a LayerNorm + MLP residual.
    Map,
    /// big_vision's `pool_type='0'`: token 0 of a model without a class token (the first patch).
    First,
    /// big_vision's `pool_type='none'` (PaliGemma's image tower): no pooling, the head on every token; the
    /// "pooled" output is then every token after `encoder_norm`.
    None,
}

/// Where the position embedding comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PosEmb {
    /// A stored table.
    Learned,
    /// big_vision's `posemb_sincos_2d`, computed for the grid (nothing is stored).
    Sincos2d,
}

/// A ResNet stem's shape.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ResNetArch {
    /// Channels of `conv_root`.
    pub width: usize,
    /// Units per stage (`block1`, `block2`...); empty for a root-only stem.
    pub stages: Vec<usize>,
}

/// The architecture read from the source file's shapes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SourceArch {
    /// The code base that wrote the checkpoint.
    pub family: Family,
    /// The side of the square input image the source runs at, in pixels.
    pub image_size: usize,
    /// The patch embedding's kernel side, in pixels of its input (the stem's output for a hybrid).
    pub patch_size: usize,
    /// The side of the token grid, in patches.
    pub grid: usize,
    /// The token width.
    pub hidden: usize,
    /// The number of encoder blocks.
    pub depth: usize,
    /// Attention heads per block.
    pub heads: usize,
    /// The width of one attention head.
    pub head_dim: usize,
    /// The MLP's hidden width.
    pub mlp: usize,
    /// How the tokens are pooled after `encoder_norm`.
    pub classifier: Classifier,
    /// Where the position embedding comes from.
    pub posemb: PosEmb,
    /// Whether the class token has a row of the position embedding (vit_jax: yes; big_vision: no,
    /// it is concatenated after the embedding is added).
    pub class_pos: bool,
    /// Blocks stored stacked along a leading depth axis (big_vision's scan format).
    pub scan: bool,
    /// The `pre_logits` width, where the file has that layer.
    pub representation: Option<usize>,
    /// The head's output width, where the file has a head.
    pub num_classes: Option<usize>,
    /// The ResNet stem's shape, for a hybrid.
    pub resnet: Option<ResNetArch>,
    /// Channels entering the patch embedding (3, or the stem's output).
    pub embed_in: usize,
}

impl SourceArch {
    /// Whether the model prepends a class token.
    pub fn class_token(&self) -> bool {
        self.classifier == Classifier::Token
    }
}

/// Everything the reference computes, float32 on the device it ran on.
pub struct RefOutputs {
    /// `encoder_norm` output, `[B, N, D]`.
    pub tokens: Tensor,
    /// The pooled vector (token 0, the mean, or the MAP head's output), before `pre_logits`: `[B, D]`.
    pub pooled: Tensor,
    /// The `pre_logits` output (dense + tanh), or `pooled` when there is none.
    pub features: Tensor,
    /// The head's output, when the file has a head.
    pub logits: Option<Tensor>,
}

/// What the caller knows that a source file cannot say.
#[derive(Debug, Clone, Default)]
pub struct SourceOptions {
    /// The resolution the model runs at: needed for a big_vision sincos2d file, whose grid is
    /// stored nowhere; ignored where a stored table gives the grid.
    pub image_size: Option<usize>,
}

/// A source model of either family, ready to run.
pub enum Reference {
    /// A google-research/vision_transformer checkpoint.
    VitJax(vit_jax::VitJax),
    /// A google-research/big_vision checkpoint (a plain ViT, or the image tower of a two-tower one).
    BigVision(big_vision::BigVision),
}

impl Reference {
    /// Opens a source checkpoint, picks its family from the keys and reads its architecture from the shapes.
    pub fn open(path: &Path, device: Device, opts: &SourceOptions) -> Result<Reference> {
        if !path.exists() {
            return Err(Error::NotFound {
                path: path.to_path_buf(),
            });
        }
        let file = TensorFile::open(path)?;
        // The family, and how its image tower is read, come from the registry.
        let family = crate::registry::family_of(path, &file)?;
        Ok(match family.pixels {
            Some(PixelReference::VitJax) => {
                Reference::VitJax(vit_jax::VitJax::from_file(file, device)?)
            }
            Some(PixelReference::BigVision { unpooled }) => {
                let tower = big_vision::image_tower(&file);
                Reference::BigVision(big_vision::BigVision::from_file(
                    file,
                    device,
                    tower,
                    &big_vision::Options {
                        image_size: opts.image_size,
                        pool: unpooled.then_some(Classifier::None),
                    },
                )?)
            }
            None => {
                return Err(Error::NoVerifyPath {
                    path: path.to_path_buf(),
                    family: family.family,
                    layout: "any",
                    tower: "all",
                    why: crate::error::Uncovered::NoRoute,
                })
            }
        })
    }

    /// The architecture read from the source's shapes.
    pub fn arch(&self) -> &SourceArch {
        match self {
            Reference::VitJax(m) => m.arch(),
            Reference::BigVision(m) => m.arch(),
        }
    }

    /// The source file the model was read from.
    pub fn path(&self) -> &Path {
        match self {
            Reference::VitJax(m) => m.path(),
            Reference::BigVision(m) => m.path(),
        }
    }

    /// What was read or left out of the source, one sentence each, for the report.
    pub fn notes(&self) -> Vec<String> {
        match self {
            Reference::VitJax(_) => Vec::new(),
            Reference::BigVision(m) => m.notes().to_vec(),
        }
    }

    /// How the reference adapts its position embedding when it runs at another grid than its own.
    pub fn resize_note(&self, grid: usize) -> String {
        let g = self.arch().grid;
        match (self, self.arch().posemb) {
            (_, PosEmb::Sincos2d) => format!(
                "the reference computed its sincos2d position embedding for the {grid}x{grid} grid (the source's own is {g}x{g}): exact at any grid"
            ),
            (Reference::VitJax(_), _) => format!(
                "the reference resized its position embedding from {g}x{g} the vit_jax way (scipy zoom order 1, class token kept)"
            ),
            (Reference::BigVision(_), _) => format!(
                "the reference resized its position embedding from {g}x{g} to {grid}x{grid} the vit_jax way (scipy zoom order 1; big_vision tables have no class row)"
            ),
        }
    }

    /// Runs the model on NHWC pixels in [-1, 1] at a `grid` x `grid` token grid.
    pub fn forward(&self, nhwc: &Tensor, grid: usize) -> Result<RefOutputs> {
        match self {
            Reference::VitJax(m) => m.forward(nhwc, grid),
            Reference::BigVision(m) => m.forward(nhwc, grid),
        }
    }
}

/// The code base whose module tree a source's image tower is read in: the family the converter's registry
/// claims the file for, through its verify entry. A file no family claims, or one without a square-pixel
/// reference, counts as big_vision's, whose reader then names what it lacks.
pub fn detect_family(file: &TensorFile) -> Family {
    let pixels = vitconv_convert::sources::SOURCES
        .iter()
        .find(|s| (s.claims)(file.tensors()))
        .and_then(|s| crate::registry::reference(s.name))
        .and_then(|r| r.pixels);
    match pixels {
        Some(PixelReference::VitJax) => Family::VitJax,
        _ => Family::BigVision,
    }
}

/// The integer square root (floor).
pub(crate) fn isqrt(n: usize) -> usize {
    n.isqrt()
}

/// Resizes a `[1, g*g, D]` grid of position-embedding rows to `[1, new*new, D]` the way
/// `vit_jax.checkpoint.interpolate_posembed` does: scipy's zoom with order 1 and
/// `grid_mode=False` maps corner to corner, which is bilinear interpolation with
/// `align_corners=True`.
pub(crate) fn zoom_rows(rows: &Tensor, g: i64, new: i64, d: i64) -> Result<Tensor> {
    let grid_img = rows.f_reshape([1, g, g, d])?.f_permute([0, 3, 1, 2])?;
    let resized = grid_img.f_upsample_bilinear2d([new, new], true, None, None)?;
    Ok(resized
        .f_permute([0, 2, 3, 1])?
        .f_reshape([1, new.saturating_mul(new), d])?)
}
