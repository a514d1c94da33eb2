//! The transformers SigLIP target: a `SiglipVisionModel` or `SiglipForImageClassification` directory, or the vision tower of a two-tower `SiglipModel` one (config.json + model.safetensors) run from its own keys and config.
//!
//! Semantics from transformers 5.24 (`models/siglip/modeling_siglip.py`,
//! `configuration_siglip.py`, `conversion_mapping.py`): `SiglipVisionEmbeddings` is a
//! VALID `patch_embedding` convolution plus `position_embedding.weight` (one row per
//! patch, no class token); each `SiglipEncoderLayer` is pre-norm (`layer_norm1`,
//! `self_attn.{q,k,v,out}_proj` with scale `head_dim**-0.5`, `layer_norm2`,
//! `mlp.fc1`/`fc2` with `ACT2FN[hidden_act]`), every LayerNorm at `layer_norm_eps`
//! (SiglipVisionConfig's default 1e-6, `hidden_act` default `gelu_pytorch_tanh`);
//! `post_layernorm` on every token. `SiglipVisionModel`'s `pooler_output` is
//! `SiglipMultiheadAttentionPoolingHead` (`vision_use_head`, default true): the
//! `probe` is the query of an `nn.MultiheadAttention` (`in_proj_weight` rows q, k, v)
//! over the tokens, then `x + mlp(layernorm(x))`, row 0. `SiglipForImageClassification`
//! averages the `post_layernorm` tokens and applies `classifier`; its vision tower sits
//! under `vision_model.`, and a `SiglipVisionModel` is read with or without that prefix
//! (5.x removes it on load). The input normalisation comes from `preprocessor_config.json`.

use std::path::Path;

use serde::Deserialize;
use tch::{Device, Kind, Tensor};
use vitconv_tensors::TensorFile;

use super::hf::{hidden_act, input_norm, read_json};
use super::{
    bad_shape, gelu_inexact, grid_of, pair, shape2, split_qkv, Block, BlockSemantics,
    DeclaredConfig, FeatureKind, Parts, TargetArch, TargetOutputs,
};
use crate::error::{Error, Result};
use crate::ops;
use crate::params::{dim, Params};

/// PaliGemma's projection of every image token to the LLM width, as `PaliGemmaForConditionalGeneration`
/// names it (transformers `PaliGemmaMultiModalProjector.linear`), written beside a headless `SiglipVisionModel`.
const PROJECTOR: &str = "multi_modal_projector.linear";
/// Its weight, `[LLM width, hidden]`.
const PROJECTOR_W: &str = "multi_modal_projector.linear.weight";

/// `SiglipVisionConfig`'s fields the forward reads, with the class's defaults.
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
    #[serde(default = "defaults::image_size")]
    image_size: usize,
    #[serde(default = "defaults::patch_size")]
    patch_size: usize,
    #[serde(default = "defaults::hidden_act")]
    hidden_act: String,
    #[serde(default = "defaults::layer_norm_eps")]
    layer_norm_eps: f64,
    #[serde(default = "defaults::vision_use_head")]
    vision_use_head: bool,
}

/// `SiglipVisionConfig`'s defaults (configuration_siglip.py).
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
    pub fn image_size() -> usize {
        224
    }
    pub fn patch_size() -> usize {
        16
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

/// config.json as far as the class and its vision settings go.
#[derive(Debug, Deserialize)]
struct TopConfig {
    model_type: Option<String>,
    #[serde(default)]
    architectures: Vec<String>,
    vision_config: Option<serde_json::Value>,
    id2label: Option<serde_json::Map<String, serde_json::Value>>,
}

/// Whether a config.json `model_type` is one of transformers' SigLIP configs.
pub(crate) fn is_siglip(model_type: Option<&str>) -> bool {
    matches!(model_type, Some("siglip" | "siglip_vision_model"))
}

/// Loads `SiglipEncoderLayer`s `{pre}encoder.layers.{i}` of width `d` and MLP width `m`.
pub(crate) fn blocks_hf(
    p: &Params,
    pre: &str,
    depth: usize,
    d: usize,
    m: usize,
) -> Result<Vec<Block>> {
    let mut blocks = Vec::with_capacity(depth);
    for i in 0..depth {
        let b = format!("{pre}encoder.layers.{i}");
        blocks.push(Block {
            ln1: pair(p, &format!("{b}.layer_norm1"), &[d], &[d])?,
            q: pair(p, &format!("{b}.self_attn.q_proj"), &[d, d], &[d])?,
            k: pair(p, &format!("{b}.self_attn.k_proj"), &[d, d], &[d])?,
            v: pair(p, &format!("{b}.self_attn.v_proj"), &[d, d], &[d])?,
            proj: pair(p, &format!("{b}.self_attn.out_proj"), &[d, d], &[d])?,
            ln2: pair(p, &format!("{b}.layer_norm2"), &[d], &[d])?,
            fc1: pair(p, &format!("{b}.mlp.fc1"), &[m, d], &[m])?,
            fc2: pair(p, &format!("{b}.mlp.fc2"), &[d, m], &[d])?,
        });
    }
    Ok(blocks)
}

/// `SiglipMultiheadAttentionPoolingHead`'s weights (also `Siglip2MultiheadAttentionPoolingHead`'s).
pub(crate) struct PoolingHead {
    probe: Tensor,
    q: (Tensor, Tensor),
    k: (Tensor, Tensor),
    v: (Tensor, Tensor),
    out: (Tensor, Tensor),
    norm: (Tensor, Tensor),
    fc1: (Tensor, Tensor),
    fc2: (Tensor, Tensor),
}

/// A transformers SigLIP vision tower (`SiglipVisionModel`, `SiglipForImageClassification`, or a `SiglipModel`'s), ready to run.
pub struct HfSiglip {
    p: Params,
    /// `vision_model.` or empty.
    pre: String,
    semantics: BlockSemantics,
    blocks: Vec<Block>,
    arch: TargetArch,
    /// `SiglipForImageClassification` (mean pool, classifier) rather than `SiglipVisionModel`.
    classification: bool,
    head: Option<PoolingHead>,
    /// PaliGemma's `multi_modal_projector.linear` beside a `SiglipVisionModel` without a head: every token's
    /// projection to the LLM width.
    projector: Option<(Tensor, Tensor)>,
}

impl HfSiglip {
    pub(crate) fn open(dir: &Path, device: Device, kind: Kind) -> Result<(HfSiglip, Parts)> {
        let config_path = dir.join("config.json");
        let weights_path = dir.join("model.safetensors");
        for needed in [&config_path, &weights_path] {
            if !needed.exists() {
                return Err(Error::NotFound {
                    path: needed.clone(),
                });
            }
        }
        let top: TopConfig = read_json(&config_path)?;
        // A two-tower `SiglipModel` holds its vision tower under `vision_model.` with its settings
        // in `vision_config`, and pools with the attention head like `SiglipVisionModel`.
        let two_tower = top.architectures.iter().any(|a| a == "SiglipModel");
        let classification = !two_tower
            && (top.model_type.as_deref() == Some("siglip")
                || top
                    .architectures
                    .iter()
                    .any(|a| a == "SiglipForImageClassification"));
        let vision: VisionConfig = if classification || two_tower {
            let v = top
                .vision_config
                .clone()
                .unwrap_or_else(|| serde_json::Value::Object(serde_json::Map::new()));
            serde_json::from_value(v).map_err(|e| Error::Unreadable {
                path: config_path.clone(),
                reason: format!("vision_config is not a SiglipVisionConfig: {e}"),
            })?
        } else {
            read_json(&config_path)?
        };
        let file = TensorFile::open(&weights_path)?;
        let declared = DeclaredConfig::from_metadata(&weights_path, file.metadata())?;
        let pre = if file
            .get("vision_model.embeddings.patch_embedding.weight")
            .is_some()
        {
            "vision_model."
        } else {
            ""
        };
        let p = Params::new(file, "", device, kind);
        let path = weights_path.clone();
        let d = vision.hidden_size;
        let heads = vision.num_attention_heads;
        if heads == 0 || !d.is_multiple_of(heads) {
            return Err(Error::Declared {
                path: config_path,
                key: "num_attention_heads".into(),
                expected: format!("a divisor of hidden_size {d}"),
                found: heads.to_string(),
            });
        }
        let gelu = hidden_act(&config_path, &vision.hidden_act)?;
        let eps = vision.layer_norm_eps;
        let semantics = BlockSemantics {
            heads,
            gelu,
            eps,
            ln_fp32: false,
        };
        let emb = format!("{pre}embeddings");
        let patch_name = format!("{emb}.patch_embedding.weight");
        let patch_size = match p.require_shape(&patch_name, "patch embedding")? {
            [od, _, ph, pw] if ph == pw && *od == d => *ph,
            other => {
                return Err(bad_shape(
                    &path,
                    &patch_name,
                    &format!("[{d}, in, p, p]"),
                    other,
                ))
            }
        };
        let pos_name = format!("{emb}.position_embedding.weight");
        let [rows, pd] = shape2(&p, &pos_name)?;
        if pd != d {
            return Err(bad_shape(
                &path,
                &pos_name,
                &format!("[N, {d}]"),
                &[rows, pd],
            ));
        }
        let grid = grid_of(&path, &pos_name, rows, false)?;
        // transformers builds `(image_size // patch_size) ** 2` positions from the config; a file
        // with another count fails its strict load.
        let cfg_grid = vision.image_size / vision.patch_size.max(1);
        if vision.patch_size != patch_size || cfg_grid.checked_mul(cfg_grid) != Some(rows) {
            return Err(Error::Declared {
                path: config_path,
                key: "image_size / patch_size".into(),
                expected: format!(
                    "{} / {patch_size} (the weights' grid {grid}x{grid})",
                    grid.saturating_mul(patch_size)
                ),
                found: format!("{} / {}", vision.image_size, vision.patch_size),
            });
        }
        let m = vision.intermediate_size;
        let blocks = blocks_hf(&p, pre, vision.num_hidden_layers, d, m)?;
        let head_probe = format!("{pre}head.probe");
        let head = if vision.vision_use_head {
            Some(PoolingHead::load(&p, &format!("{pre}head"), d, m)?)
        } else {
            if p.has(&head_probe) {
                return Err(Error::Declared {
                    path: config_path,
                    key: "vision_use_head".into(),
                    expected: format!("true (the weights hold {head_probe})"),
                    found: "false".into(),
                });
            }
            None
        };
        let projector = match p.shape(PROJECTOR_W) {
            Some([w, _]) if head.is_none() && !classification => {
                let w = *w;
                Some(pair(&p, PROJECTOR, &[w, d], &[w])?)
            }
            _ => None,
        };
        if !classification && head.is_none() && projector.is_none() {
            return Err(Error::Declared {
                path: config_path,
                key: "vision_use_head".into(),
                expected:
                    "true: a SiglipVisionModel without its head has no pooler_output to compare"
                        .into(),
                found: "false".into(),
            });
        }
        if classification {
            if let (Some(labels), Some([c, _])) = (&top.id2label, p.shape("classifier.weight")) {
                if labels.len() != *c {
                    return Err(bad_shape(
                        &path,
                        "classifier.weight",
                        &format!("[{}, {d}] (num_labels from id2label)", labels.len()),
                        &[*c, d],
                    ));
                }
            }
        }
        let arch = TargetArch {
            hidden: d,
            depth: vision.num_hidden_layers,
            heads,
            mlp: m,
            patch_size,
            grid,
            image_size: grid.saturating_mul(patch_size),
            class_token: false,
        };
        let mut notes = vec![format!(
            "transformers semantics from config.json: {}, hidden_act {:?}, layer_norm_eps {eps:e}",
            if classification {
                "SiglipForImageClassification (mean of the post_layernorm tokens, then classifier)"
            } else if two_tower {
                "SiglipModel's vision_model (pooler_output = the attention pooling head)"
            } else if projector.is_some() {
                "SiglipVisionModel without a head (last_hidden_state, every token) and PaliGemma's multi_modal_projector.linear on every token"
            } else {
                "SiglipVisionModel (pooler_output = the attention pooling head)"
            },
            vision.hidden_act
        )];
        let norm = input_norm(dir, &declared, &mut notes)?;
        let m = HfSiglip {
            p,
            pre: pre.to_owned(),
            semantics,
            blocks,
            arch: arch.clone(),
            classification,
            head,
            projector,
        };
        Ok((
            m,
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

    pub(crate) fn kind(&self) -> Kind {
        self.p.kind()
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<TargetOutputs> {
        let p = &self.p;
        let a = &self.arch;
        let pre = &self.pre;
        let x = x.f_to_kind(p.kind())?;
        let emb = format!("{pre}embeddings");
        let w = p.load_any(&format!("{emb}.patch_embedding.weight"))?;
        let b = p.load(&format!("{emb}.patch_embedding.bias"), &[a.hidden])?;
        let y = ops::conv2d(&x, &w, Some(&b), dim(a.patch_size)?, 0)?;
        let pos = p.load_any(&format!("{emb}.position_embedding.weight"))?;
        let mut x = y.f_flatten(2, 3)?.f_transpose(1, 2)?.f_add(&pos)?;
        for block in &self.blocks {
            x = block.forward(&x, &self.semantics)?;
        }
        let ln = pair(p, &format!("{pre}post_layernorm"), &[a.hidden], &[a.hidden])?;
        let x = self.semantics.norm(&x, &ln)?;
        if self.classification {
            let pooled = x.f_mean_dim(1, false, None::<Kind>)?;
            let logits = if p.has("classifier.weight") {
                let [c, f] = shape2(p, "classifier.weight")?;
                if f != a.hidden {
                    return Err(bad_shape(
                        p.path(),
                        "classifier.weight",
                        &format!("[labels, {}]", a.hidden),
                        &[c, f],
                    ));
                }
                Some(ops::linear(
                    &pooled,
                    &p.load_any("classifier.weight")?,
                    Some(&p.load("classifier.bias", &[c])?),
                )?)
            } else {
                None
            };
            return Ok(TargetOutputs {
                features: pooled,
                features_kind: FeatureKind::Pooled,
                logits,
            });
        }
        if let (None, Some(proj)) = (&self.head, &self.projector) {
            let logits = ops::linear(&x, &proj.0, Some(&proj.1))?;
            return Ok(TargetOutputs {
                features: x,
                features_kind: FeatureKind::Pooled,
                logits: Some(logits),
            });
        }
        let head = self.head.as_ref().ok_or_else(|| Error::MissingTensor {
            path: p.path().to_path_buf(),
            tensor: format!("{pre}head.probe"),
            why: "SiglipVisionModel's pooler_output".into(),
        })?;
        Ok(TargetOutputs {
            features: head.forward(&x, &self.semantics)?,
            features_kind: FeatureKind::Pooled,
            logits: None,
        })
    }
}

impl PoolingHead {
    /// Loads the head under `h` (`vision_model.head`) of width `d` and MLP width `m`.
    pub(crate) fn load(p: &Params, h: &str, d: usize, m: usize) -> Result<PoolingHead> {
        let w = p.load(
            &format!("{h}.attention.in_proj_weight"),
            &[d.saturating_mul(3), d],
        )?;
        let b = p.load(
            &format!("{h}.attention.in_proj_bias"),
            &[d.saturating_mul(3)],
        )?;
        let [q, k, v] = split_qkv(&w, &b)?;
        Ok(PoolingHead {
            probe: p.load(&format!("{h}.probe"), &[1, 1, d])?,
            q,
            k,
            v,
            out: pair(p, &format!("{h}.attention.out_proj"), &[d, d], &[d])?,
            norm: pair(p, &format!("{h}.layernorm"), &[d], &[d])?,
            fc1: pair(p, &format!("{h}.mlp.fc1"), &[m, d], &[m])?,
            fc2: pair(p, &format!("{h}.mlp.fc2"), &[d, m], &[d])?,
        })
    }

    /// `SiglipMultiheadAttentionPoolingHead.forward`: `nn.MultiheadAttention(probe, x, x)`, then
    /// `x + mlp(layernorm(x))`, row 0.
    fn forward(&self, x: &Tensor, s: &BlockSemantics) -> Result<Tensor> {
        self.forward_masked(x, s, None)
    }

    /// [`PoolingHead::forward`] with a key mask (`[B, 1, 1, N]` bool, true = a patch), as
    /// `Siglip2MultiheadAttentionPoolingHead` passes the padding to `nn.MultiheadAttention`.
    pub(crate) fn forward_masked(
        &self,
        x: &Tensor,
        s: &BlockSemantics,
        key_mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let size = x.size();
        let (b, n, d) = match size.as_slice() {
            [b, n, d] => (*b, *n, *d),
            _ => (0, 0, 0),
        };
        let h = dim(s.heads)?;
        let dh = d / h.max(1);
        let probe = self.probe.f_expand([b, 1, d], false)?;
        let heads = |t: &Tensor, wb: &(Tensor, Tensor), len: i64| -> Result<Tensor> {
            Ok(ops::linear(t, &wb.0, Some(&wb.1))?
                .f_reshape([b, len, h, dh])?
                .f_transpose(1, 2)?)
        };
        let q = heads(&probe, &self.q, 1)?;
        let k = heads(x, &self.k, n)?;
        let v = heads(x, &self.v, n)?;
        let o = match key_mask {
            Some(m) => ops::attention_sdpa_masked(&q, &k, &v, m)?,
            None => ops::attention_sdpa(&q, &k, &v)?,
        }
        .f_transpose(1, 2)?
        .f_reshape([b, 1, d])?;
        let o = ops::linear(&o, &self.out.0, Some(&self.out.1))?;
        let y = s.norm(&o, &self.norm)?;
        let y = s
            .gelu
            .apply(&ops::linear(&y, &self.fc1.0, Some(&self.fc1.1))?)?;
        let o = o.f_add(&ops::linear(&y, &self.fc2.0, Some(&self.fc2.1))?)?;
        Ok(o.f_select(1, 0)?)
    }
}
