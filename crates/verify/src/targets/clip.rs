//! The OpenAI CLIP target: `clip.model.VisionTransformer` (`model.visual`) run with the semantics that class fixes.
//!
//! Semantics from openai-clip 1.0.1 (`clip/model.py`): `conv1` without bias, the
//! class embedding prepended, `positional_embedding` added, `ln_pre` always,
//! `ResidualAttentionBlock`s with `nn.MultiheadAttention` and QuickGELU
//! (`x * sigmoid(1.702 x)`), its `LayerNorm` subclass computing in float32 with
//! `nn.LayerNorm`'s eps 1e-5, `ln_post` on token 0, then `@ proj`. None of this is
//! configurable in that class, so the declared GELU and eps are ignored here on
//! purpose: the point is to measure what users of the class really get. The head
//! count is a constructor argument: the declared `heads` when the file says it, else
//! `build_model`'s `width // 64`.

use tch::{Kind, Tensor};

use super::clip_style::{Switches, Tower, TowerSizes};
use super::{BlockSemantics, DeclaredConfig, InputNorm, Parts, TargetOutputs};
use crate::error::{Error, Result};
use crate::ops::Gelu;
use crate::params::Params;

/// `clip.model.LayerNorm` inherits `nn.LayerNorm`'s default eps.
const CLIP_LAYER_NORM_EPS: f64 = 1e-5;
/// `build_model` derives the head count as `vision_width // 64`.
const CLIP_HEAD_WIDTH: usize = 64;

/// An OpenAI CLIP `VisionTransformer` read from a converted file, ready to run.
pub struct Clip {
    tower: Tower,
}

impl Clip {
    pub(crate) fn open(p: Params, config: &DeclaredConfig) -> Result<(Clip, Parts)> {
        let path = p.path().to_path_buf();
        let sizes = TowerSizes::read(&p)?;
        let (pre, d) = (sizes.pre, sizes.d);
        if !p.has(&format!("{pre}ln_pre.weight")) {
            return Err(Error::NotAModel {
                path,
                reason: "no ln_pre: OpenAI CLIP's VisionTransformer always has one (an open_clip file? give --layout open_clip)".into(),
            });
        }
        let heads = config.heads.unwrap_or(d / CLIP_HEAD_WIDTH);
        if heads == 0 || !d.is_multiple_of(heads) {
            return Err(Error::NotAModel {
                path,
                reason: format!("{heads} heads do not divide width {d}"),
            });
        }
        let semantics = BlockSemantics {
            heads,
            gelu: Gelu::Quick,
            eps: CLIP_LAYER_NORM_EPS,
            ln_fp32: true,
        };
        let notes = vec![format!(
            "OpenAI CLIP semantics (fixed by the class): ln_pre, QuickGELU, float32 LayerNorm eps {CLIP_LAYER_NORM_EPS:e}, {heads} heads ({})",
            if config.heads.is_some() { "as declared" } else { "width // 64 as build_model does" }
        )];
        let norm = config.input_norm.clone().unwrap_or_else(InputNorm::unit);
        let logits_offset = config.head_bias.clone();
        let switches = Switches {
            // The class always applies ln_pre, and ln_post to token 0 after selecting it.
            ln_pre: true,
            avg_pool: false,
            final_ln_after_pool: true,
            proj_is_features: config.head.as_deref() == Some("none"),
        };
        let tower = Tower::load(p, &sizes, semantics, switches)?;
        let arch = tower.arch.clone();
        let m = Clip { tower };
        Ok((
            m,
            Parts {
                arch,
                norm,
                logits_offset,
                notes,
                inexact: Some("OpenAI CLIP's VisionTransformer cannot hold a Google ViT exactly (ln_pre, QuickGELU, LayerNorm eps 1e-5)".into()),
                declared: config.clone(),
            },
        ))
    }

    pub(crate) fn kind(&self) -> Kind {
        self.tower.kind()
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<TargetOutputs> {
        self.tower.forward(x)
    }
}
