//! The open_clip target: `open_clip.transformer.VisionTransformer` (`visual.*` keys) run with the semantics its model config gives it.
//!
//! Semantics from open_clip 3.3.0 (`open_clip/transformer.py`, `model.py`): `conv1`
//! has no bias; `class_embedding` is prepended, then `positional_embedding` (2-D,
//! `[N, D]`) is added; `ln_pre` unless `no_ln_pre`; `ResidualAttentionBlock`s with
//! `nn.MultiheadAttention` (`in_proj_weight` rows q, k, v); `ln_post` on all tokens
//! (`final_ln_after_pool=False`), then token 0 (`pool_type='tok'`) or the mean of
//! the others (`'avg'`); `x @ proj`. Heads are `width // head_width`; the activation
//! is QuickGELU when `quick_gelu`, else `nn.GELU(**act_kwargs)`; LayerNorm eps from
//! `norm_kwargs` (nn.LayerNorm's 1e-5 otherwise). These come from the model config
//! written beside the weights (`<name>.open_clip.json`), or from `vitconv.config`
//! when there is none.

use serde::Deserialize;
use tch::{Kind, Tensor};

use super::clip_style::{Switches, Tower, TowerSizes};
use super::{
    gelu_inexact, side_file, BlockSemantics, DeclaredConfig, InputNorm, Parts, TargetOutputs,
};
use crate::error::{Error, Result};
use crate::ops::Gelu;
use crate::params::Params;

/// `nn.LayerNorm`'s default eps, which open_clip keeps unless `norm_kwargs` says otherwise.
const TORCH_LAYER_NORM_EPS: f64 = 1e-5;
/// `CLIPVisionCfg.head_width`'s default.
const DEFAULT_HEAD_WIDTH: usize = 64;

/// The fields of open_clip's `CLIPVisionCfg` that change the arithmetic.
#[derive(Debug, Default, Deserialize)]
struct VisionCfg {
    width: Option<usize>,
    head_width: Option<usize>,
    no_ln_pre: Option<bool>,
    pool_type: Option<String>,
    final_ln_after_pool: Option<bool>,
    act_kwargs: Option<serde_json::Map<String, serde_json::Value>>,
    norm_kwargs: Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Debug, Default, Deserialize)]
struct ModelCfg {
    #[serde(default)]
    quick_gelu: Option<bool>,
    vision_cfg: Option<VisionCfg>,
}

/// An open_clip `VisionTransformer` read from a converted file, ready to run.
pub struct OpenClip {
    tower: Tower,
}

impl OpenClip {
    pub(crate) fn open(p: Params, config: &DeclaredConfig) -> Result<(OpenClip, Parts)> {
        let path = p.path().to_path_buf();
        let sizes = TowerSizes::read(&p)?;
        let (pre, d) = (sizes.pre, sizes.d);
        let sidecar = side_file(&path, ".open_clip.json");
        let mut notes = Vec::new();
        let model_cfg: Option<ModelCfg> = if sidecar.exists() {
            let cfg = super::hf::read_config(&sidecar, "an open_clip model config")?;
            notes.push(format!("open_clip semantics from {}", sidecar.display()));
            Some(cfg)
        } else {
            notes.push(
                "no .open_clip.json beside the weights: open_clip semantics from vitconv.config"
                    .into(),
            );
            None
        };
        let vision = model_cfg.as_ref().and_then(|m| m.vision_cfg.as_ref());
        let heads = match vision {
            Some(v) => {
                let width = v.width.unwrap_or(d);
                if width != d {
                    return Err(Error::NotAModel {
                        path: sidecar,
                        reason: format!("vision_cfg.width {width} but conv1 is {d} wide"),
                    });
                }
                d / v.head_width.unwrap_or(DEFAULT_HEAD_WIDTH).max(1)
            }
            None => config.heads.unwrap_or(d / DEFAULT_HEAD_WIDTH),
        };
        if heads == 0 || !d.is_multiple_of(heads) {
            return Err(Error::NotAModel {
                path,
                reason: format!("{heads} heads do not divide width {d}"),
            });
        }
        let gelu = match (model_cfg.as_ref(), vision) {
            (Some(m), _) if m.quick_gelu == Some(true) => Gelu::Quick,
            (Some(_), Some(v)) => match v
                .act_kwargs
                .as_ref()
                .and_then(|k| k.get("approximate"))
                .and_then(|a| a.as_str())
            {
                Some("tanh") => Gelu::Tanh,
                _ => Gelu::Erf,
            },
            (Some(_), None) => Gelu::Erf,
            (None, _) => config.gelu_or(&path, Gelu::Erf)?,
        };
        let eps = match vision {
            Some(v) => v
                .norm_kwargs
                .as_ref()
                .and_then(|k| k.get("eps"))
                .and_then(|e| e.as_f64())
                .unwrap_or(TORCH_LAYER_NORM_EPS),
            None => config.layer_norm_eps.unwrap_or(TORCH_LAYER_NORM_EPS),
        };
        let ln_pre_keys = p.has(&format!("{pre}ln_pre.weight"));
        let ln_pre = match vision.and_then(|v| v.no_ln_pre) {
            Some(no) => !no,
            None => config.ln_pre.unwrap_or(ln_pre_keys),
        };
        if ln_pre != ln_pre_keys {
            return Err(Error::NotAModel {
                path,
                reason: format!(
                    "the config {} ln_pre but the file {} it: open_clip's strict load would refuse it",
                    if ln_pre { "asks for" } else { "disables" },
                    if ln_pre_keys { "has" } else { "lacks" }
                ),
            });
        }
        let avg_pool = match vision.and_then(|v| v.pool_type.as_deref()) {
            Some("avg") => true,
            Some("tok") | None => false,
            Some(other) => {
                return Err(Error::NotAModel {
                    path,
                    reason: format!("pool_type {other:?} is not one a Google ViT maps to"),
                })
            }
        };
        let final_ln_after_pool = vision.and_then(|v| v.final_ln_after_pool).unwrap_or(false);
        let semantics = BlockSemantics {
            heads,
            gelu,
            eps,
            ln_fp32: false,
        };
        notes.push(format!(
            "open_clip semantics: {heads} heads, {gelu:?} GELU, LayerNorm eps {eps:e}, ln_pre {ln_pre}, {} pooling",
            if avg_pool { "average" } else { "token" }
        ));
        let norm = config.input_norm.clone().unwrap_or_else(InputNorm::unit);
        let logits_offset = config.head_bias.clone();
        let switches = Switches {
            ln_pre,
            avg_pool,
            final_ln_after_pool,
            proj_is_features: config.head.as_deref() == Some("none"),
        };
        let tower = Tower::load(p, &sizes, semantics, switches)?;
        let arch = tower.arch.clone();
        let m = OpenClip { tower };
        Ok((
            m,
            Parts {
                arch,
                norm,
                logits_offset,
                notes,
                inexact: gelu_inexact(gelu),
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
