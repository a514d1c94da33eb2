//! The timm NaFlex target: `timm.models.naflexvit.NaFlexVit` run on patch inputs from its state-dict keys and the constructor kwargs the file declares.
//!
//! Semantics from timm 1.0.31 (`timm/models/naflexvit.py`, `layers/attention_pool.py`), decided by
//! the kwargs as `NaFlexVitCfg` decides them (`vitconv.timm_kwargs` of a single file, or
//! `model_args` of a timm folder's `config.json`): `embeds.proj` is a Linear `[D, P*P*3]` on the
//! pre-patchified input; `embeds.pos_embed` `[1, G, G, D]` is resized per image, the grid
//! `(h, w)` being `max(patch_coord) + 1`, by `F.interpolate(size=(h, w),
//! mode=pos_embed_interp_mode, align_corners=pos_embed_align_corners,
//! antialias=pos_embed_antialias)` (defaults **bicubic**, False, True; skipped at `(G, G)`;
//! with `pos_embed_ar_preserving` at `(max, max)` and cropped), flattened row-major and added to
//! the first `h*w` tokens; blocks attend under `create_attention_mask(patch_valid)`, a
//! query-and-key mask (key only with `use_key_only_attn_mask`); `norm` (`final_norm` and not
//! `fc_norm`); `attn_pool` (`AttentionPoolLatent`) under a key-only mask; `fc_norm`; `head` where
//! `num_classes > 0`. `act_layer` defaults to `nn.GELU` (exact erf), LayerNorm eps to 1e-6.

use std::path::Path;

use tch::{Device, Kind, Tensor};
use vitconv_tensors::TensorFile;

use super::timm::{timm_blocks, timm_kwargs, AttnPool};
use super::two_tower::DeclaredMismatch;
use super::{
    bad_shape, pair, shape2, Block, BlockSemantics, DeclaredConfig, InputNorm, Parts, TargetArch,
};
use crate::error::{Error, Result};
use crate::input::NaflexInputs;
use crate::ops::{self, Gelu};
use crate::params::{dim, Params};

/// timm's `LayerNorm` default eps.
const TIMM_LAYER_NORM_EPS: f64 = 1e-6;
/// `NaFlexVitCfg`'s defaults the forward depends on.
const DEFAULT_HEADS: usize = 12;
const DEFAULT_INTERP: &str = "bicubic";

/// How `F.interpolate` resizes the position grid, as the kwargs declare it.
#[derive(Debug, Clone, PartialEq)]
struct PosResize {
    /// `pos_embed_interp_mode`: `bilinear` or `bicubic`.
    mode: String,
    /// `pos_embed_antialias`.
    antialias: bool,
    /// `pos_embed_align_corners`.
    align_corners: bool,
    /// `pos_embed_ar_preserving`.
    ar_preserving: bool,
}

/// A timm `NaFlexVit`, ready to run.
pub struct TimmNaflex {
    p: Params,
    semantics: BlockSemantics,
    blocks: Vec<Block>,
    attn_pool: AttnPool,
    resize: PosResize,
    key_only_mask: bool,
    norm: bool,
    fc_norm: bool,
    head: bool,
    hidden: usize,
    grid: usize,
    /// Declared settings that differ from the big_vision source's semantics.
    pub declared: Vec<DeclaredMismatch>,
}

/// Whether a converted path is a timm NaFlexVit: a file or folder whose weights hold `embeds.proj.weight`.
pub fn is_naflex(path: &Path) -> bool {
    let weights = if path.is_dir() {
        path.join("model.safetensors")
    } else {
        path.to_path_buf()
    };
    TensorFile::open(&weights).is_ok_and(|f| f.get("embeds.proj.weight").is_some())
}

impl TimmNaflex {
    /// Opens a single timm file (kwargs in `vitconv.timm_kwargs`) or a timm folder (`config.json`
    /// `model_args` + `model.safetensors`).
    pub(crate) fn open(path: &Path, device: Device, kind: Kind) -> Result<(TimmNaflex, Parts)> {
        if path.is_dir() {
            let config_path = path.join("config.json");
            let weights_path = path.join("model.safetensors");
            for needed in [&config_path, &weights_path] {
                if !needed.exists() {
                    return Err(Error::NotFound {
                        path: needed.clone(),
                    });
                }
            }
            let folder: serde_json::Value = super::hf::read_json(&config_path)?;
            let kwargs = match folder.get("model_args") {
                Some(serde_json::Value::Object(m)) => m.clone(),
                None => serde_json::Map::new(),
                Some(other) => {
                    return Err(Error::Declared {
                        path: config_path,
                        key: "model_args".into(),
                        expected: "a JSON object of NaFlexVit kwargs".into(),
                        found: other.to_string(),
                    })
                }
            };
            let cfg = folder.get("pretrained_cfg");
            let triple = |key: &str| -> Option<[f64; 3]> {
                serde_json::from_value(cfg?.get(key)?.clone()).ok()
            };
            let norm = match (triple("mean"), triple("std")) {
                (Some(mean), Some(std)) => Some(InputNorm {
                    name: "pretrained_cfg".into(),
                    mean,
                    std,
                }),
                _ => None,
            };
            let file = TensorFile::open(&weights_path)?;
            let p = Params::new(file, "", device, kind);
            TimmNaflex::open_with(p, &kwargs, &config_path, norm)
        } else {
            if !path.exists() {
                return Err(Error::NotFound {
                    path: path.to_path_buf(),
                });
            }
            let file = TensorFile::open(path)?;
            let p = Params::new(file, "", device, kind);
            let kwargs = timm_kwargs(&p)?.unwrap_or_default();
            TimmNaflex::open_with(p, &kwargs, path, None)
        }
    }

    fn open_with(
        p: Params,
        kw: &serde_json::Map<String, serde_json::Value>,
        kwargs_file: &Path,
        folder_norm: Option<InputNorm>,
    ) -> Result<(TimmNaflex, Parts)> {
        let path = p.path().to_path_buf();
        let declared_config = DeclaredConfig::from_metadata(&path, p.file().metadata())?;
        let declared_err = |key: &str, expected: &str, found: &serde_json::Value| Error::Declared {
            path: kwargs_file.to_path_buf(),
            key: format!("NaFlexVit kwarg {key}"),
            expected: expected.to_owned(),
            found: found.to_string(),
        };
        let null = serde_json::Value::Null;
        let get = |key: &str| kw.get(key).unwrap_or(&null);
        let flag = |key: &str, default: bool| -> Result<bool> {
            match get(key) {
                serde_json::Value::Null => Ok(default),
                serde_json::Value::Bool(b) => Ok(*b),
                other => Err(declared_err(key, "true or false", other)),
            }
        };
        // Settings of NaFlexVit that no SigLIP 2 NaFlex model uses and this target does not run.
        for (key, default) in [
            ("class_token", serde_json::json!(false)),
            ("reg_tokens", serde_json::json!(0)),
            ("pos_embed", serde_json::json!("learned")),
            ("embed_proj_type", serde_json::json!("linear")),
            ("global_pool", serde_json::json!("map")),
            ("qk_norm", serde_json::json!(false)),
            ("pre_norm", serde_json::json!(false)),
            ("qkv_bias", serde_json::json!(true)),
            ("proj_bias", serde_json::json!(true)),
            ("init_values", serde_json::Value::Null),
            ("pool_include_prefix", serde_json::json!(false)),
            ("input_norm_layer", serde_json::Value::Null),
            ("embed_norm_layer", serde_json::Value::Null),
            ("pos_embed_use_grid_sample", serde_json::json!(false)),
            ("attn_type", serde_json::json!("standard")),
            ("swiglu_mlp", serde_json::json!(false)),
            ("scale_mlp_norm", serde_json::json!(false)),
            ("scale_attn_inner_norm", serde_json::json!(false)),
            ("attn_pool_num_heads", serde_json::Value::Null),
        ] {
            if let Some(v) = kw.get(key).filter(|v| **v != default) {
                return Err(declared_err(
                    key,
                    &format!(
                        "{default} (NaFlexVitCfg's default; the only value this verifier runs)"
                    ),
                    v,
                ));
            }
        }
        // A folder's registered architecture may set what its `model_args` leave out; the tokens
        // and layer scales it would add show in the weights, which timm's strict load matches.
        if let Some(t) = p.file().tensors().iter().find(|t| {
            t.name.starts_with("embeds.cls_token")
                || t.name.starts_with("embeds.reg_token")
                || t.name.contains(".ls1.")
                || t.name.contains(".ls2.")
        }) {
            return Err(Error::Declared {
                path: path.clone(),
                key: format!("tensor {:?}", t.name),
                expected:
                    "absent (no class or register tokens, no layer scale: SigLIP 2 NaFlex has none)"
                        .into(),
                found: "present".into(),
            });
        }
        let mode = match get("pos_embed_interp_mode") {
            serde_json::Value::Null => DEFAULT_INTERP.to_string(),
            v => match v.as_str() {
                Some(m @ ("bilinear" | "bicubic")) => m.to_string(),
                _ => {
                    return Err(declared_err(
                        "pos_embed_interp_mode",
                        "'bilinear' or 'bicubic'",
                        v,
                    ))
                }
            },
        };
        let resize = PosResize {
            mode,
            antialias: flag("pos_embed_antialias", true)?,
            align_corners: flag("pos_embed_align_corners", false)?,
            ar_preserving: flag("pos_embed_ar_preserving", false)?,
        };
        let gelu = match get("act_layer") {
            serde_json::Value::Null => Gelu::Erf,
            v => match v.as_str() {
                Some("gelu") => Gelu::Erf,
                Some("gelu_tanh") => Gelu::Tanh,
                Some("quick_gelu") => Gelu::Quick,
                _ => {
                    return Err(declared_err(
                        "act_layer",
                        "'gelu', 'gelu_tanh' or 'quick_gelu'",
                        v,
                    ))
                }
            },
        };
        let fc_norm_kw = match get("fc_norm") {
            serde_json::Value::Null => false,
            serde_json::Value::Bool(b) => *b,
            other => return Err(declared_err("fc_norm", "true, false or null", other)),
        };
        let final_norm = flag("final_norm", true)?;
        let (d, width) =
            match p.require_shape("embeds.proj.weight", "the NaFlex patch embedding")? {
                [d, w] => (*d, *w),
                other => return Err(bad_shape(&path, "embeds.proj.weight", "[D, P*P*3]", other)),
            };
        let patch = (width / 3).isqrt();
        if patch == 0 || patch.saturating_mul(patch).saturating_mul(3) != width {
            return Err(bad_shape(
                &path,
                "embeds.proj.weight",
                "[D, P*P*3] (square RGB patches)",
                &[d, width],
            ));
        }
        let side = u64::try_from(patch).ok();
        let same_patch = |v: &serde_json::Value| {
            v.as_u64() == side
                || v.as_array()
                    .is_some_and(|a| a.iter().all(|x| x.as_u64() == side))
        };
        if let Some(v) = kw.get("patch_size").filter(|v| !same_patch(v)) {
            return Err(declared_err(
                "patch_size",
                &format!("{patch} (the weights' patch)"),
                v,
            ));
        }
        let grid = match p.require_shape("embeds.pos_embed", "the learned position grid")? {
            [1, g, g2, pd] if g == g2 && *pd == d => *g,
            other => {
                return Err(bad_shape(
                    &path,
                    "embeds.pos_embed",
                    &format!("[1, G, G, {d}]"),
                    other,
                ))
            }
        };
        let heads = match get("num_heads") {
            serde_json::Value::Null => DEFAULT_HEADS,
            v => v
                .as_u64()
                .and_then(|h| usize::try_from(h).ok())
                .ok_or_else(|| declared_err("num_heads", "a positive integer", v))?,
        };
        if heads == 0 || !d.is_multiple_of(heads) {
            return Err(declared_err(
                "num_heads",
                &format!("a divisor of the width {d}"),
                get("num_heads"),
            ));
        }
        let mut depth = 0usize;
        while p.has(&format!("blocks.{depth}.attn.qkv.weight")) {
            depth = depth.saturating_add(1);
        }
        let [mlp, _] = shape2(&p, "blocks.0.mlp.fc1.weight")?;
        let blocks = timm_blocks(&p, depth, d, mlp)?;
        let ratio = get("mlp_ratio").as_f64().or(Some(4.0));
        let attn_pool = AttnPool::load(&p, d, ratio)?;
        let norm = final_norm && !fc_norm_kw;
        let fc_norm = final_norm && fc_norm_kw;
        for (key, built) in [("norm.weight", norm), ("fc_norm.weight", fc_norm)] {
            if built != p.has(key) {
                return Err(Error::Declared {
                    path: kwargs_file.to_path_buf(),
                    key: format!("tensor {key:?}"),
                    expected: format!(
                        "{} (NaFlexVit builds it from final_norm and fc_norm)",
                        if built { "present" } else { "absent" }
                    ),
                    found: if built { "absent" } else { "present" }.into(),
                });
            }
        }
        let head = p.has("head.weight");
        let mut declared = Vec::new();
        let mismatch = |field: &str, expected: &str, found: String| DeclaredMismatch {
            file: kwargs_file.to_path_buf(),
            field: field.into(),
            expected: expected.into(),
            found,
        };
        if resize.mode != "bilinear" {
            declared.push(mismatch(
                "pos_embed_interp_mode",
                "'bilinear' (big_vision resizes the position grid bilinearly)",
                format!("{:?}", resize.mode),
            ));
        }
        if !resize.antialias {
            declared.push(mismatch(
                "pos_embed_antialias",
                "true (big_vision antialiases where the grid shrinks)",
                "false".into(),
            ));
        }
        if resize.align_corners {
            declared.push(mismatch(
                "pos_embed_align_corners",
                "false (big_vision samples at half-pixel centres)",
                "true".into(),
            ));
        }
        if resize.ar_preserving {
            declared.push(mismatch(
                "pos_embed_ar_preserving",
                "false (big_vision resizes to each image's own grid)",
                "true".into(),
            ));
        }
        if gelu != Gelu::Tanh {
            declared.push(mismatch(
                "act_layer",
                "'gelu_tanh' (flax nn.gelu)",
                get("act_layer").to_string(),
            ));
        }
        let eps = declared_config
            .layer_norm_eps
            .unwrap_or(TIMM_LAYER_NORM_EPS);
        let arch = TargetArch {
            hidden: d,
            depth,
            heads,
            mlp,
            patch_size: patch,
            grid,
            image_size: grid.saturating_mul(patch),
            class_token: false,
        };
        let notes = vec![format!(
            "timm NaFlexVit semantics from {}: position grid {grid}x{grid} resized {} (antialias {}, align_corners {}), act_layer {}, {} self-attention mask, MAP pool under a key mask{}",
            kwargs_file.display(),
            resize.mode,
            resize.antialias,
            resize.align_corners,
            match gelu {
                Gelu::Tanh => "gelu_tanh",
                Gelu::Erf => "gelu (erf)",
                Gelu::Quick => "quick_gelu",
            },
            if flag("use_key_only_attn_mask", false)? { "key-only" } else { "query-and-key" },
            if head { ", then head" } else { "" }
        )];
        let norm_in = folder_norm
            .or_else(|| declared_config.input_norm.clone())
            .unwrap_or_else(InputNorm::unit);
        Ok((
            TimmNaflex {
                semantics: BlockSemantics {
                    heads,
                    gelu,
                    eps,
                    ln_fp32: false,
                },
                blocks,
                attn_pool,
                resize,
                key_only_mask: flag("use_key_only_attn_mask", false)?,
                norm,
                fc_norm,
                head,
                hidden: d,
                grid,
                declared,
                p,
            },
            Parts {
                arch,
                norm: norm_in,
                logits_offset: None,
                notes,
                inexact: None,
                declared: declared_config,
            },
        ))
    }

    /// The dtype the weights were loaded in.
    pub fn kind(&self) -> Kind {
        self.p.kind()
    }

    /// `forward_head(forward_features(patches, patch_coord, patch_valid), pre_logits=True)` and,
    /// where the model has a head, its output.
    pub fn forward(&self, inputs: &NaflexInputs) -> Result<(Tensor, Option<Tensor>)> {
        let p = &self.p;
        let d = self.hidden;
        let device = p.device();
        let x = inputs.patches.f_to_device(device)?.f_to_kind(p.kind())?;
        let size = x.size();
        let (b, n) = match size.as_slice() {
            [b, n, _] => (*b, *n),
            other => {
                return Err(Error::UnexpectedShape {
                    what: "NaFlex patches",
                    expected: "[B, N, P*P*3]",
                    found: other.to_vec(),
                })
            }
        };
        let x = ops::linear(
            &x,
            &p.load_any("embeds.proj.weight")?,
            Some(&p.load("embeds.proj.bias", &[d])?),
        )?;
        let x = x.f_add(&self.posemb(inputs, n)?.f_to_kind(p.kind())?)?;
        let valid = inputs.mask.f_to_device(device)?.f_to_kind(Kind::Bool)?;
        let keys = valid.f_view([b, 1, 1, n])?;
        let self_mask = if self.key_only_mask {
            keys.shallow_clone()
        } else {
            valid.f_view([b, 1, n, 1])?.f_logical_and(&keys)?
        };
        let mut x = x;
        for block in &self.blocks {
            x = block.forward_padded(&x, &self.semantics, &self_mask)?;
        }
        if self.norm {
            x = self.semantics.norm(&x, &pair(p, "norm", &[d], &[d])?)?;
        }
        let mut pooled = self
            .attn_pool
            .forward_masked(&x, &self.semantics, Some(&keys))?;
        if self.fc_norm {
            pooled = self
                .semantics
                .norm(&pooled, &pair(p, "fc_norm", &[d], &[d])?)?;
        }
        let logits = if self.head {
            let [c, f] = shape2(p, "head.weight")?;
            if f != d {
                return Err(bad_shape(
                    p.path(),
                    "head.weight",
                    &format!("[classes, {d}]"),
                    &[c, f],
                ));
            }
            Some(ops::linear(
                &pooled,
                &p.load_any("head.weight")?,
                Some(&p.load("head.bias", &[c])?),
            )?)
        } else {
            None
        };
        Ok((pooled, logits))
    }

    /// `_apply_learned_naflex_pos_embed`: per image, the grid `max(coord) + 1`, the position grid
    /// interpolated to it (or taken as it is at its own size), flattened row-major into the first
    /// `h*w` positions; `[B, n, D]` in float32.
    fn posemb(&self, inputs: &NaflexInputs, n: i64) -> Result<Tensor> {
        let device = self.p.device();
        let g = dim(self.grid)?;
        let d = dim(self.hidden)?;
        let table = self
            .p
            .load_any("embeds.pos_embed")?
            .f_to_kind(Kind::Float)?
            .f_permute([0, 3, 1, 2])?;
        let yidx = inputs.yidx.f_to_device(device)?;
        let xidx = inputs.xidx.f_to_device(device)?;
        let batch = yidx.size().first().copied().unwrap_or(0);
        let r = &self.resize;
        let mut rows = Vec::new();
        for i in 0..batch {
            let h = yidx
                .f_select(0, i)?
                .f_max()?
                .f_int64_value(&[])?
                .saturating_add(1);
            let w = xidx
                .f_select(0, i)?
                .f_max()?
                .f_int64_value(&[])?
                .saturating_add(1);
            let flat = if h == g && w == g {
                table.shallow_clone()
            } else {
                let size = if r.ar_preserving {
                    [h.max(w), h.max(w)]
                } else {
                    [h, w]
                };
                let resized = match (r.mode.as_str(), r.antialias) {
                    ("bilinear", true) => table.f_internal_upsample_bilinear2d_aa(
                        size,
                        r.align_corners,
                        None,
                        None,
                    )?,
                    ("bilinear", false) => {
                        table.f_upsample_bilinear2d(size, r.align_corners, None, None)?
                    }
                    (_, true) => {
                        table.f_internal_upsample_bicubic2d_aa(size, r.align_corners, None, None)?
                    }
                    (_, false) => table.f_upsample_bicubic2d(size, r.align_corners, None, None)?,
                };
                resized.f_narrow(2, 0, h)?.f_narrow(3, 0, w)?
            };
            let flat = flat
                .f_flatten(2, 3)?
                .f_transpose(1, 2)?
                .f_reshape([-1, d])?;
            let take = flat.size().first().copied().unwrap_or(0).min(n);
            let rows_i = flat.f_narrow(0, 0, take)?;
            let pad = Tensor::f_zeros([n.saturating_sub(take), d], (Kind::Float, device))?;
            rows.push(Tensor::f_cat(&[rows_i, pad], 0)?);
        }
        Ok(Tensor::f_stack(&rows, 0)?)
    }
}
