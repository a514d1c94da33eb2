//! The transformers SigLIP 2 NaFlex image tower: the `vision_model` of a `Siglip2Model` folder (config.json `model_type` `siglip2` + model.safetensors), or a `Siglip2VisionModel` folder (the tower alone, `model_type` `siglip2_vision_model`, its keys without the `vision_model.` prefix), run from its own keys and config on patch inputs.
//!
//! Semantics from transformers 5.24 (`models/siglip2/modeling_siglip2.py`,
//! `configuration_siglip2.py`): `Siglip2VisionEmbeddings.patch_embedding` is an `nn.Linear`
//! `[D, C*P*P]` on the already patchified pixels; `position_embedding.weight` `[num_patches, D]`
//! is viewed as a `(G, G, D)` grid, `G = sqrt(num_patches)`, and `resize_positional_embeddings`
//! builds, for each image's `spatial_shapes` row `(h, w)`, the row and column of every output
//! position `n` (row-major: `n // w`, `n % w`; positions `n >= h*w` take (0, 0)) and weights
//! them with `F.interpolate(mode="bilinear", align_corners=False, antialias=True)`'s triangle
//! kernel written out (centre `(index + 0.5) * G / size - 0.5`, support `max(G / size, 1)`, each
//! row normalised), in float32; the encoder (`Siglip2EncoderLayer`, as SigLIP's) attends under
//! `create_bidirectional_mask(pixel_attention_mask)`, a key-only padding mask; `post_layernorm`;
//! `Siglip2MultiheadAttentionPoolingHead` is SigLIP's head with the same key mask. The text tower,
//! logit scale and bias are SigLIP's and are read by [`super::two_tower`].

use std::path::Path;

use serde::Deserialize;
use tch::{Device, Kind, Tensor};
use vitconv_tensors::TensorFile;

use super::hf::{hidden_act, input_norm, read_json};
use super::hf_siglip::{blocks_hf, PoolingHead};
use super::{
    bad_shape, gelu_inexact, pair, shape2, Block, BlockSemantics, DeclaredConfig, Parts, TargetArch,
};
use crate::error::{Error, Result};
use crate::input::NaflexInputs;
use crate::ops;
use crate::params::{dim, Params};

/// `Siglip2VisionConfig`'s fields the forward reads, with the class's defaults.
#[derive(Debug, Deserialize)]
struct VisionConfig {
    #[serde(default = "defaults::hidden_size")]
    hidden_size: usize,
    #[serde(default = "defaults::intermediate_size")]
    intermediate_size: usize,
    #[serde(default = "defaults::layers")]
    num_hidden_layers: usize,
    #[serde(default = "defaults::heads")]
    num_attention_heads: usize,
    #[serde(default = "defaults::channels")]
    num_channels: usize,
    #[serde(default = "defaults::patch_size")]
    patch_size: usize,
    #[serde(default = "defaults::num_patches")]
    num_patches: usize,
    #[serde(default = "defaults::hidden_act")]
    hidden_act: String,
    #[serde(default = "defaults::layer_norm_eps")]
    layer_norm_eps: f64,
    #[serde(default = "defaults::vision_use_head")]
    vision_use_head: bool,
}

/// `Siglip2VisionConfig`'s defaults (configuration_siglip2.py).
mod defaults {
    pub fn hidden_size() -> usize {
        768
    }
    pub fn intermediate_size() -> usize {
        3072
    }
    pub fn layers() -> usize {
        12
    }
    pub fn heads() -> usize {
        12
    }
    pub fn channels() -> usize {
        3
    }
    pub fn patch_size() -> usize {
        16
    }
    pub fn num_patches() -> usize {
        256
    }
    pub fn hidden_act() -> String {
        "gelu_pytorch_tanh".into()
    }
    pub fn layer_norm_eps() -> f64 {
        1e-6
    }
    pub fn vision_use_head() -> bool {
        true
    }
}

/// Whether a config.json names transformers' SigLIP 2: `model_type` `siglip2` or the
/// `Siglip2Model` class.
pub fn is_siglip2(config: &serde_json::Value) -> bool {
    config.get("model_type").and_then(serde_json::Value::as_str) == Some("siglip2")
        || config
            .get("architectures")
            .and_then(serde_json::Value::as_array)
            .is_some_and(|a| a.iter().any(|v| v.as_str() == Some("Siglip2Model")))
}

/// Whether a folder's `config.json` is a `Siglip2VisionModel`'s (the NaFlex vision tower alone).
pub fn is_siglip2_vision(config: &serde_json::Value) -> bool {
    config.get("model_type").and_then(serde_json::Value::as_str) == Some(VISION_MODEL_TYPE)
        || config
            .get("architectures")
            .and_then(serde_json::Value::as_array)
            .is_some_and(|a| a.iter().any(|v| v.as_str() == Some("Siglip2VisionModel")))
}

/// `Siglip2VisionConfig.model_type`.
const VISION_MODEL_TYPE: &str = "siglip2_vision_model";

/// A transformers `Siglip2Model`'s or `Siglip2VisionModel`'s vision tower, ready to run.
pub struct HfSiglip2 {
    p: Params,
    /// Where the tower's keys start: `vision_model.` in a `Siglip2Model`, nothing in a `Siglip2VisionModel`.
    prefix: &'static str,
    semantics: BlockSemantics,
    blocks: Vec<Block>,
    head: PoolingHead,
    /// The side `G` of the stored position grid.
    grid: usize,
    hidden: usize,
}

/// The vision tower's key prefix inside a `Siglip2Model`.
const PRE: &str = "vision_model.";

impl HfSiglip2 {
    /// Opens the vision tower of a `Siglip2Model` folder, or a `Siglip2VisionModel` folder.
    pub(crate) fn open(dir: &Path, device: Device, kind: Kind) -> Result<(HfSiglip2, Parts)> {
        let config_path = dir.join("config.json");
        let weights_path = dir.join("model.safetensors");
        let top: serde_json::Value = read_json(&config_path)?;
        // A Siglip2VisionModel's config is the vision config itself, and its keys have no prefix.
        let alone = is_siglip2_vision(&top);
        let v = match alone {
            true => top.clone(),
            false => top
                .get("vision_config")
                .cloned()
                .unwrap_or_else(|| serde_json::Value::Object(serde_json::Map::new())),
        };
        let prefix = if alone { "" } else { PRE };
        let vision: VisionConfig = serde_json::from_value(v).map_err(|e| Error::Unreadable {
            path: config_path.clone(),
            reason: format!("vision_config is not a Siglip2VisionConfig: {e}"),
        })?;
        let file = TensorFile::open(&weights_path)?;
        let declared = DeclaredConfig::from_metadata(&weights_path, file.metadata())?;
        let p = Params::new(file, "", device, kind);
        let d = vision.hidden_size;
        let heads = vision.num_attention_heads;
        if heads == 0 || !d.is_multiple_of(heads) {
            return Err(Error::Declared {
                path: config_path,
                key: "vision_config.num_attention_heads".into(),
                expected: format!("a divisor of vision_config.hidden_size {d}"),
                found: heads.to_string(),
            });
        }
        let patch = vision.patch_size;
        let width = vision
            .num_channels
            .saturating_mul(patch)
            .saturating_mul(patch);
        let name = format!("{prefix}embeddings.patch_embedding.weight");
        if p.require_shape(&name, "the patch embedding")? != [d, width] {
            let found = p.require_shape(&name, "the patch embedding")?.to_vec();
            return Err(bad_shape(
                &weights_path,
                &name,
                &format!("[{d}, {width}] (num_channels * patch_size**2 from config.json)"),
                &found,
            ));
        }
        let pos_name = format!("{prefix}embeddings.position_embedding.weight");
        let [rows, pd] = shape2(&p, &pos_name)?;
        let grid = rows.isqrt();
        if pd != d || rows != vision.num_patches || grid.saturating_mul(grid) != rows {
            return Err(bad_shape(
                &weights_path,
                &pos_name,
                &format!(
                    "[{}, {d}] (vision_config.num_patches, a square grid)",
                    vision.num_patches
                ),
                &[rows, pd],
            ));
        }
        if !vision.vision_use_head {
            return Err(Error::Declared {
                path: config_path,
                key: "vision_config.vision_use_head".into(),
                expected: "true: without its head the vision tower has no pooler_output to compare"
                    .into(),
                found: "false".into(),
            });
        }
        let gelu = hidden_act(&config_path, &vision.hidden_act)?;
        let eps = vision.layer_norm_eps;
        let m = vision.intermediate_size;
        let blocks = blocks_hf(&p, prefix, vision.num_hidden_layers, d, m)?;
        let head = PoolingHead::load(&p, &format!("{prefix}head"), d, m)?;
        let arch = TargetArch {
            hidden: d,
            depth: vision.num_hidden_layers,
            heads,
            mlp: m,
            patch_size: patch,
            grid,
            image_size: grid.saturating_mul(patch),
            class_token: false,
        };
        let mut notes = vec![format!(
            "transformers semantics from config.json: {} (patches through a Linear, its {grid}x{grid} position grid resized per image the Siglip2VisionEmbeddings way, key padding masks, pooler_output = the attention pooling head), hidden_act {:?}, layer_norm_eps {eps:e}",
            if alone { "Siglip2VisionModel" } else { "Siglip2Model's vision_model" },
            vision.hidden_act
        )];
        let norm = input_norm(dir, &declared, &mut notes)?;
        Ok((
            HfSiglip2 {
                p,
                prefix,
                semantics: BlockSemantics {
                    heads,
                    gelu,
                    eps,
                    ln_fp32: false,
                },
                blocks,
                head,
                grid,
                hidden: d,
            },
            Parts {
                arch,
                norm,
                logits_offset: None,
                notes,
                inexact: gelu_inexact(gelu),
                declared,
            },
        ))
    }

    /// The dtype the weights were loaded in.
    pub(crate) fn kind(&self) -> Kind {
        self.p.kind()
    }

    /// `get_image_features(...).pooler_output` on NaFlex inputs (`pixel_values` = the patches,
    /// `pixel_attention_mask` = the mask, `spatial_shapes`).
    pub(crate) fn forward(&self, inputs: &NaflexInputs) -> Result<Tensor> {
        let p = &self.p;
        let d = self.hidden;
        let device = p.device();
        let x = inputs.patches.f_to_device(device)?.f_to_kind(p.kind())?;
        let n = x.size().get(1).copied().unwrap_or(0);
        let emb = format!("{}embeddings", self.prefix);
        let x = ops::linear(
            &x,
            &p.load_any(&format!("{emb}.patch_embedding.weight"))?,
            Some(&p.load(&format!("{emb}.patch_embedding.bias"), &[d])?),
        )?;
        let table = p.load_any(&format!("{emb}.position_embedding.weight"))?;
        let pos = resize_positional_embeddings(&table, self.grid, &inputs.spatial, n)?;
        let mut x = x.f_add(&pos.f_to_kind(p.kind())?)?;
        let mask = inputs.mask.f_to_device(device)?.f_to_kind(Kind::Bool)?;
        let b = mask.size().first().copied().unwrap_or(0);
        let key_mask = mask.f_view([b, 1, 1, n])?;
        for block in &self.blocks {
            x = block.forward_padded(&x, &self.semantics, &key_mask)?;
        }
        let ln = pair(p, &format!("{}post_layernorm", self.prefix), &[d], &[d])?;
        let x = self.semantics.norm(&x, &ln)?;
        self.head
            .forward_masked(&x, &self.semantics, Some(&key_mask))
    }
}

/// `Siglip2VisionEmbeddings.resize_positional_embeddings`: for each image `(h, w)` of `spatial`
/// (`[B, 2]`), the `[G*G, D]` table weighted, position by position, with the antialiased bilinear
/// kernel at that position's row and column, in float32; `[B, n, D]`.
fn resize_positional_embeddings(
    table: &Tensor,
    grid: usize,
    spatial: &Tensor,
    n: i64,
) -> Result<Tensor> {
    let device = table.device();
    let f = (Kind::Float, device);
    let g = dim(grid)?;
    // sizes [B, 1, 2], positions [1, n, 1].
    let sizes = spatial
        .f_to_device(device)?
        .f_to_kind(Kind::Float)?
        .f_unsqueeze(1)?;
    let positions = Tensor::f_arange(n, f)?.f_view([1, n, 1])?;
    let width = sizes.f_narrow(2, 1, 1)?;
    let rows = positions.f_div(&width)?.f_floor()?;
    let index = Tensor::f_cat(
        &[rows.shallow_clone(), positions.f_sub(&rows.f_mul(&width)?)?],
        -1,
    )?;
    let inside = positions.f_lt_tensor(&sizes.f_prod_dim_int(-1, true, Kind::Float)?)?;
    let index = index.f_mul(&inside.f_to_kind(Kind::Float)?)?;
    // scale [B, 1, 2]; centre [B, n, 2]; weights [B, n, 2, G].
    #[allow(clippy::cast_precision_loss)]
    let scale = sizes.f_reciprocal()?.f_mul_scalar(grid as f64)?;
    let support = scale.f_clamp_min(1.0)?;
    let centre = index.f_add_scalar(0.5)?.f_mul(&scale)?.f_sub_scalar(0.5)?;
    let source = Tensor::f_arange(g, f)?;
    let weights = source
        .f_sub(&centre.f_unsqueeze(-1)?)?
        .f_abs()?
        .f_div(&support.f_unsqueeze(-1)?)?
        .f_neg()?
        .f_add_scalar(1.0)?
        .f_clamp_min(0.0)?;
    let weights =
        weights.f_div(&weights.f_sum_dim_intlist([-1i64].as_slice(), true, Kind::Float)?)?;
    let wy = weights.f_select(2, 0)?.f_unsqueeze(-1)?;
    let wx = weights.f_select(2, 1)?.f_unsqueeze(-2)?;
    let combined = wy.f_mul(&wx)?.f_flatten(-2, -1)?;
    Ok(combined.f_matmul(&table.f_to_kind(Kind::Float)?)?)
}
