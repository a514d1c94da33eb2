//! The timm target: `timm.models.vision_transformer.VisionTransformer` (and its hybrid ResNetV2 stem) run from the state-dict keys.
//!
//! Semantics from timm 1.0.31 (`timm/models/vision_transformer.py`,
//! `vision_transformer_hybrid.py`, `resnetv2.py`, `layers/std_conv.py`): the class
//! token is concatenated before `pos_embed` is added; `Attention` reshapes the fused
//! qkv output to `(3, heads, head_dim)`; `norm` runs on all tokens before pooling
//! (`fc_norm` after it, when the file has one); `global_pool='avg'` averages the
//! tokens after the prefix. The hybrid stem is `ResNetV2(preact=False,
//! stem_type='same', conv_layer=StdConv2dSame(eps=1e-8))` with `GroupNormAct(32)`
//! at timm's eps 1e-5. GELU and LayerNorm eps come from `vitconv.config` (timm's own
//! defaults, exact GELU and eps 1e-6, when it declares none).

use tch::{Kind, Tensor};

use super::{
    bad_shape, gelu_inexact, grid_of, pair, shape2, split_qkv, tokens, Block, BlockSemantics,
    DeclaredConfig, FeatureKind, InputNorm, Parts, TargetArch, TargetOutputs,
};
use crate::error::{Error, Result};
use crate::ops::{self, Gelu};
use crate::params::{dim, Params};

/// `vision_transformer_hybrid._resnetv2` builds its convolutions with `StdConv2dSame(eps=1e-8)`.
const TIMM_STD_CONV_EPS: f64 = 1e-8;
/// `GroupNormAct`'s default eps, which `ResNetV2` does not override.
const TIMM_GROUP_NORM_EPS: f64 = 1e-5;
/// timm's ViT builds its norms with `partial(nn.LayerNorm, eps=1e-6)`.
const TIMM_LAYER_NORM_EPS: f64 = 1e-6;
const GROUPS: i64 = 32;

pub struct Timm {
    p: Params,
    semantics: BlockSemantics,
    blocks: Vec<Block>,
    arch: TargetArch,
    avg_pool: bool,
    stem: Option<Stem>,
}

/// The ResNetV2 stem's structure, read from the keys.
struct Stem {
    /// `patch_embed.backbone.stem.` for a full ResNetV2, `patch_embed.backbone.` for the root-only stem.
    root: String,
    /// Blocks per stage.
    stages: Vec<usize>,
}

impl Timm {
    pub(crate) fn open(p: Params, config: &DeclaredConfig) -> Result<(Timm, Parts)> {
        let path = p.path().to_path_buf();
        let (d, patch_size) = match p.require_shape("patch_embed.proj.weight", "patch embedding")? {
            [d, _, ph, pw] if ph == pw => (*d, *ph),
            other => {
                return Err(bad_shape(
                    &path,
                    "patch_embed.proj.weight",
                    "[D, in, p, p]",
                    other,
                ))
            }
        };
        let class_token = p.has("cls_token");
        let [pos_rows, pos_d] = match p.require_shape("pos_embed", "position embedding")? {
            [1, n, pd] => [*n, *pd],
            other => return Err(bad_shape(&path, "pos_embed", "[1, N, D]", other)),
        };
        if pos_d != d {
            return Err(bad_shape(
                &path,
                "pos_embed",
                &format!("[1, N, {d}]"),
                &[1, pos_rows, pos_d],
            ));
        }
        let grid = grid_of(&path, "pos_embed", pos_rows, class_token)?;
        let mut depth = 0usize;
        while p.has(&format!("blocks.{depth}.attn.qkv.weight")) {
            depth = depth.saturating_add(1);
        }
        let [mlp, _] = shape2(&p, "blocks.0.mlp.fc1.weight")?;
        let heads = config
            .heads
            .or_else(|| timm_kwarg(&p, "num_heads"))
            .ok_or_else(|| Error::NotAModel {
                path: path.clone(),
                reason: "the head count is neither in vitconv.config nor in vitconv.timm_kwargs; timm needs num_heads".into(),
            })?;
        if heads == 0 || !d.is_multiple_of(heads) {
            return Err(Error::NotAModel {
                path: path.clone(),
                reason: format!("{heads} heads do not divide width {d}"),
            });
        }
        let gelu = config.gelu_or(&path, Gelu::Erf)?;
        let eps = config.layer_norm_eps.unwrap_or(TIMM_LAYER_NORM_EPS);
        let semantics = BlockSemantics {
            heads,
            gelu,
            eps,
            ln_fp32: false,
        };
        let mut blocks = Vec::with_capacity(depth);
        for i in 0..depth {
            let b = format!("blocks.{i}");
            let (qkv_w, qkv_b) = pair(
                &p,
                &format!("{b}.attn.qkv"),
                &[d.saturating_mul(3), d],
                &[d.saturating_mul(3)],
            )?;
            let [q, k, v] = split_qkv(&qkv_w, &qkv_b)?;
            blocks.push(Block {
                ln1: pair(&p, &format!("{b}.norm1"), &[d], &[d])?,
                q,
                k,
                v,
                proj: pair(&p, &format!("{b}.attn.proj"), &[d, d], &[d])?,
                ln2: pair(&p, &format!("{b}.norm2"), &[d], &[d])?,
                fc1: pair(&p, &format!("{b}.mlp.fc1"), &[mlp, d], &[mlp])?,
                fc2: pair(&p, &format!("{b}.mlp.fc2"), &[d, mlp], &[d])?,
            });
        }
        let avg_pool = match config.classifier.as_deref() {
            Some("gap") => true,
            Some(_) => false,
            None => !class_token,
        };
        let stem = if p.has("patch_embed.backbone.stem.conv.weight") {
            let mut stages = Vec::new();
            loop {
                let s = stages.len();
                let mut n = 0usize;
                while p.has(&format!(
                    "patch_embed.backbone.stages.{s}.blocks.{n}.conv1.weight"
                )) {
                    n = n.saturating_add(1);
                }
                if n == 0 {
                    break;
                }
                stages.push(n);
            }
            Some(Stem {
                root: "patch_embed.backbone.stem.".into(),
                stages,
            })
        } else if p.has("patch_embed.backbone.conv.weight") {
            Some(Stem {
                root: "patch_embed.backbone.".into(),
                stages: Vec::new(),
            })
        } else {
            None
        };
        let stem_stride = match &stem {
            Some(s) => 4usize << s.stages.len().saturating_sub(1).min(16),
            None => 1,
        };
        let image_size = grid.saturating_mul(patch_size).saturating_mul(stem_stride);
        let arch = TargetArch {
            hidden: d,
            depth,
            heads,
            mlp,
            patch_size,
            grid,
            image_size,
            class_token,
        };
        let mut notes = vec![format!(
            "timm semantics: {gelu:?} GELU, LayerNorm eps {eps:e}, {} pooling{}",
            if avg_pool { "average" } else { "class-token" },
            if p.has("fc_norm.weight") {
                " then fc_norm"
            } else {
                ""
            }
        )];
        if stem.is_some() {
            notes.push(format!(
                "timm hybrid stem: StdConv2dSame eps {TIMM_STD_CONV_EPS:e} (sqrt(var + eps)) and GroupNorm eps {TIMM_GROUP_NORM_EPS:e}, where flax uses std + 1e-5 and 1e-6"
            ));
        }
        let norm = config.input_norm.clone().unwrap_or_else(InputNorm::unit);
        let m = Timm {
            p,
            semantics,
            blocks,
            arch: arch.clone(),
            avg_pool,
            stem,
        };
        Ok((
            m,
            Parts {
                arch,
                norm,
                logits_offset: None,
                notes,
                inexact: gelu_inexact(gelu),
                declared: config.clone(),
            },
        ))
    }

    pub(crate) fn kind(&self) -> Kind {
        self.p.kind()
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<TargetOutputs> {
        let p = &self.p;
        let a = &self.arch;
        let mut x = x.f_to_kind(p.kind())?;
        if let Some(stem) = &self.stem {
            x = self.backbone(&x, stem)?;
        }
        let w = p.load_any("patch_embed.proj.weight")?;
        let b = p.load("patch_embed.proj.bias", &[a.hidden])?;
        let y = ops::conv2d(&x, &w, Some(&b), dim(a.patch_size)?, 0)?;
        let cls = if a.class_token {
            Some(p.load("cls_token", &[1, 1, a.hidden])?)
        } else {
            None
        };
        let mut x = tokens(&y, cls.as_ref(), &p.load_any("pos_embed")?)?;
        for block in &self.blocks {
            x = block.forward(&x, &self.semantics)?;
        }
        if p.has("norm.weight") {
            x = self.semantics.norm(
                &x,
                &(
                    p.load("norm.weight", &[a.hidden])?,
                    p.load("norm.bias", &[a.hidden])?,
                ),
            )?;
        }
        let prefix = i64::from(a.class_token);
        let mut pooled = if self.avg_pool {
            let n = x.size().get(1).copied().unwrap_or(0);
            x.f_narrow(1, prefix, n - prefix)?
                .f_mean_dim(1, false, None::<Kind>)?
        } else {
            x.f_select(1, 0)?
        };
        if p.has("fc_norm.weight") {
            pooled = self.semantics.norm(
                &pooled,
                &(
                    p.load("fc_norm.weight", &[a.hidden])?,
                    p.load("fc_norm.bias", &[a.hidden])?,
                ),
            )?;
        }
        let logits = if p.has("head.weight") {
            let [c, f] = shape2(p, "head.weight")?;
            if f != a.hidden {
                return Err(bad_shape(
                    p.path(),
                    "head.weight",
                    &format!("[classes, {}]", a.hidden),
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
        Ok(TargetOutputs {
            features: pooled,
            features_kind: FeatureKind::Pooled,
            logits,
        })
    }

    /// `ResNetV2` with `preact=False`, `stem_type='same'`: stem conv, GroupNormAct, SAME max-pool,
    /// then non-pre-activation bottleneck stages (first stage stride 1, then 2).
    fn backbone(&self, x: &Tensor, stem: &Stem) -> Result<Tensor> {
        let x = self.std_conv(x, &format!("{}conv.weight", stem.root), 2)?;
        let x = self.gn(&x, &format!("{}norm", stem.root), true)?;
        let mut x = ops::max_pool_same(&x, 3, 2)?;
        for (s, &n) in stem.stages.iter().enumerate() {
            for bi in 0..n {
                let stride = if s > 0 && bi == 0 { 2 } else { 1 };
                let base = format!("patch_embed.backbone.stages.{s}.blocks.{bi}");
                let shortcut = if self.p.has(&format!("{base}.downsample.conv.weight")) {
                    let r = self.std_conv(&x, &format!("{base}.downsample.conv.weight"), stride)?;
                    self.gn(&r, &format!("{base}.downsample.norm"), false)?
                } else {
                    x.shallow_clone()
                };
                let y = self.std_conv(&x, &format!("{base}.conv1.weight"), 1)?;
                let y = self.gn(&y, &format!("{base}.norm1"), true)?;
                let y = self.std_conv(&y, &format!("{base}.conv2.weight"), stride)?;
                let y = self.gn(&y, &format!("{base}.norm2"), true)?;
                let y = self.std_conv(&y, &format!("{base}.conv3.weight"), 1)?;
                let y = self.gn(&y, &format!("{base}.norm3"), false)?;
                x = y.f_add(&shortcut)?.f_relu()?;
            }
        }
        Ok(x)
    }

    /// `StdConv2dSame`: the OIHW weight standardised per output channel with
    /// `F.batch_norm(training=True, eps)`, i.e. `(w - mean) / sqrt(var + eps)` (biased var).
    fn std_conv(&self, x: &Tensor, name: &str, stride: i64) -> Result<Tensor> {
        let shape = self.p.require_shape(name, "ResNetV2 stem")?.to_vec();
        let cin = x.size().get(1).copied().unwrap_or(0);
        if !matches!(shape.as_slice(), [_, i, kh, kw] if kh == kw && i64::try_from(*i).ok() == Some(cin))
        {
            return Err(bad_shape(
                self.p.path(),
                name,
                &format!("[out, {cin}, k, k]"),
                &shape,
            ));
        }
        let w = self.p.load_any(name)?.f_to_kind(Kind::Float)?;
        let dims = [1i64, 2, 3];
        let centred = w.f_sub(&w.f_mean_dim(dims.as_slice(), true, Kind::Float)?)?;
        let var = centred
            .f_square()?
            .f_mean_dim(dims.as_slice(), true, Kind::Float)?;
        let w = centred
            .f_div(&var.f_add_scalar(TIMM_STD_CONV_EPS)?.f_sqrt()?)?
            .f_to_kind(self.p.kind())?;
        ops::conv2d_same(x, &w, stride)
    }

    /// `GroupNormAct(32, eps=1e-5)`, with ReLU unless `apply_act=False` (norm3, downsample).
    fn gn(&self, x: &Tensor, base: &str, relu: bool) -> Result<Tensor> {
        let c = x.size().get(1).copied().unwrap_or(0);
        let c =
            usize::try_from(c).map_err(|_| Error::BadRequest("negative channel count".into()))?;
        let y = ops::group_norm(
            x,
            GROUPS,
            &self.p.load(&format!("{base}.weight"), &[c])?,
            &self.p.load(&format!("{base}.bias"), &[c])?,
            TIMM_GROUP_NORM_EPS,
        )?;
        Ok(if relu { y.f_relu()? } else { y })
    }
}

/// An integer from the `vitconv.timm_kwargs` metadata JSON, if present.
fn timm_kwarg(p: &Params, key: &str) -> Option<usize> {
    let text = p.file().metadata().get("vitconv.timm_kwargs")?;
    let value: serde_json::Value = serde_json::from_str(text).ok()?;
    value
        .get(key)?
        .as_u64()
        .and_then(|v| usize::try_from(v).ok())
}
