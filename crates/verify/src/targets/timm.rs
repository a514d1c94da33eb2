//! The timm target: `timm.models.vision_transformer.VisionTransformer` (and its hybrid ResNetV2 stem) run from the state-dict keys and the constructor kwargs the file declares.
//!
//! Semantics from timm 1.0.31 (`timm/models/vision_transformer.py`,
//! `layers/attention_pool.py`, `vision_transformer_hybrid.py`, `resnetv2.py`,
//! `layers/std_conv.py`), decided by `vitconv.timm_kwargs` as timm's constructor
//! decides them: `_pos_embed` concatenates the class token before `pos_embed` is added,
//! or, with `no_embed_class=True`, adds `pos_embed` (h*w rows) to the patches and
//! concatenates after; `Attention` reshapes the fused qkv output to
//! `(3, heads, head_dim)`; `fc_norm` defaults to `global_pool == 'avg'` and moves the
//! final norm after the pool (`norm` on all tokens otherwise); `global_pool='token'`
//! takes token 0, `'avg'` averages the tokens after the prefix, `'map'` runs
//! `AttentionPoolLatent` (no qk norm, pool type `token`) on the tokens after the
//! prefix: the `latent` query through `q`, keys and values from the fused `kv` (k rows
//! first), SDPA, `proj`, then `x + mlp(norm(x))`, latent 0 taken. Without
//! `vitconv.timm_kwargs` the pooling follows `vitconv.config` and the keys. A timm folder
//! (`config.json` + `model.safetensors`, what `create_model('local-dir:...')` reads) is
//! decided by its `model_args` instead. The hybrid stem is `ResNetV2(preact=False,
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

/// A timm `VisionTransformer` (with its ResNetV2 stem for a hybrid), ready to run.
pub struct Timm {
    p: Params,
    semantics: BlockSemantics,
    blocks: Vec<Block>,
    arch: TargetArch,
    kw: Kwargs,
    /// `AttentionPoolLatent`'s weights for `global_pool='map'`.
    attn_pool: Option<AttnPool>,
    stem: Option<Stem>,
}

/// `global_pool` values this target runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GlobalPool {
    Token,
    Avg,
    Map,
    /// `global_pool=''`: no pooling; `head` applies to every token (PaliGemma's image tower).
    None,
}

/// What the constructor kwargs decide for the forward.
#[derive(Debug, Clone, Copy)]
struct Kwargs {
    global_pool: GlobalPool,
    class_token: bool,
    no_embed_class: bool,
    /// `norm` on every token before the pool (`final_norm and not use_fc_norm`).
    norm: bool,
    /// `fc_norm` on the pooled vector (`final_norm and use_fc_norm`).
    fc_norm: bool,
    gelu: Gelu,
}

/// `AttentionPoolLatent` with `out_features = D`: `latent` `[1, L, D]`, `q`, fused `kv`, `proj`,
/// `norm`, `mlp`.
pub(crate) struct AttnPool {
    latent: Tensor,
    q: (Tensor, Tensor),
    k: (Tensor, Tensor),
    v: (Tensor, Tensor),
    proj: (Tensor, Tensor),
    norm: (Tensor, Tensor),
    fc1: (Tensor, Tensor),
    fc2: (Tensor, Tensor),
}

/// The ResNetV2 stem's structure, read from the keys.
struct Stem {
    /// `patch_embed.backbone.stem.` for a full ResNetV2, `patch_embed.backbone.` for the root-only stem.
    root: String,
    /// Blocks per stage.
    stages: Vec<usize>,
}

impl Timm {
    /// Opens a timm state dict whose kwargs are in its `vitconv.timm_kwargs` metadata.
    pub(crate) fn open(p: Params, config: &DeclaredConfig) -> Result<(Timm, Parts)> {
        let kwargs = timm_kwargs(&p)?;
        Timm::open_with(p, config, kwargs, None)
    }

    /// Opens a timm folder (`timm.create_model('local-dir:DIR')`): `config.json`'s `model_args`
    /// are the kwargs timm builds the model with, its `pretrained_cfg` mean and std the input
    /// normalisation timm's data config applies.
    pub(crate) fn open_folder(
        dir: &std::path::Path,
        device: tch::Device,
        kind: Kind,
    ) -> Result<(Timm, Parts)> {
        let config_path = dir.join("config.json");
        let weights_path = dir.join("model.safetensors");
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
                    expected: "a JSON object of VisionTransformer kwargs".into(),
                    found: other.to_string(),
                })
            }
        };
        let cfg = folder.get("pretrained_cfg");
        let triple =
            |key: &str| -> Option<[f64; 3]> { serde_json::from_value(cfg?.get(key)?.clone()).ok() };
        let norm = match (triple("mean"), triple("std")) {
            (Some(mean), Some(std)) => Some(InputNorm {
                name: "pretrained_cfg".into(),
                mean,
                std,
            }),
            _ => None,
        };
        let file = vitconv_tensors::TensorFile::open(&weights_path)?;
        let config = DeclaredConfig::from_metadata(&weights_path, file.metadata())?;
        let p = Params::new(file, "", device, kind);
        Timm::open_with(p, &config, Some(kwargs), norm)
    }

    pub(crate) fn open_with(
        p: Params,
        config: &DeclaredConfig,
        kwargs: Option<serde_json::Map<String, serde_json::Value>>,
        norm: Option<InputNorm>,
    ) -> Result<(Timm, Parts)> {
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
        let kw = Kwargs::read(&p, config, kwargs.as_ref())?;
        let class_token = kw.class_token;
        if class_token {
            p.require_shape("cls_token", "class_token=True")?;
        } else if p.has("cls_token") {
            return Err(unexpected(&path, "cls_token", "class_token=False"));
        }
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
        let grid = grid_of(
            &path,
            "pos_embed",
            pos_rows,
            class_token && !kw.no_embed_class,
        )?;
        let mut depth = 0usize;
        while p.has(&format!("blocks.{depth}.attn.qkv.weight")) {
            depth = depth.saturating_add(1);
        }
        let [mlp, _] = shape2(&p, "blocks.0.mlp.fc1.weight")?;
        let heads = config
            .heads
            .or_else(|| kwarg_usize(kwargs.as_ref(), "num_heads"))
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
        let gelu = kw.gelu;
        let eps = config.layer_norm_eps.unwrap_or(TIMM_LAYER_NORM_EPS);
        let semantics = BlockSemantics {
            heads,
            gelu,
            eps,
            ln_fp32: false,
        };
        let blocks = timm_blocks(&p, depth, d, mlp)?;
        for (key, built) in [("norm.weight", kw.norm), ("fc_norm.weight", kw.fc_norm)] {
            if built {
                p.require_shape(
                    key,
                    "the final norm timm builds from final_norm and fc_norm",
                )?;
            } else if p.has(key) {
                return Err(unexpected(
                    &path,
                    key,
                    "timm builds an Identity there for these global_pool and fc_norm",
                ));
            }
        }
        let attn_pool = if kw.global_pool == GlobalPool::Map {
            let ratio = kwargs
                .as_ref()
                .and_then(|m| m.get("mlp_ratio"))
                .and_then(serde_json::Value::as_f64);
            Some(AttnPool::load(&p, d, ratio)?)
        } else {
            if p.has("attn_pool.latent") {
                return Err(unexpected(
                    &path,
                    "attn_pool.latent",
                    "global_pool is not 'map'",
                ));
            }
            None
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
            "timm semantics: {gelu:?} GELU, LayerNorm eps {eps:e}, {} pooling{}{}",
            match kw.global_pool {
                GlobalPool::Token => "class-token",
                GlobalPool::Avg => "average",
                GlobalPool::Map => "attention (attn_pool)",
                GlobalPool::None => "no (every token through the head)",
            },
            if kw.fc_norm { " then fc_norm" } else { "" },
            if class_token && kw.no_embed_class {
                ", class token concatenated after pos_embed (no_embed_class)"
            } else {
                ""
            }
        )];
        if stem.is_some() {
            notes.push(format!(
                "timm hybrid stem: StdConv2dSame eps {TIMM_STD_CONV_EPS:e} (sqrt(var + eps)) and GroupNorm eps {TIMM_GROUP_NORM_EPS:e}, where flax uses std + 1e-5 and 1e-6"
            ));
        }
        let norm = norm
            .or_else(|| config.input_norm.clone())
            .unwrap_or_else(InputNorm::unit);
        let m = Timm {
            p,
            semantics,
            blocks,
            arch: arch.clone(),
            kw,
            attn_pool,
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
        let pos = p.load_any("pos_embed")?;
        let mut x = match (&cls, self.kw.no_embed_class) {
            // `no_embed_class`: pos_embed on the patches, then the class token in front.
            (Some(c), true) => {
                let patches = tokens(&y, None, &pos)?;
                let b = patches.size().first().copied().unwrap_or(0);
                let c = c.f_expand([b, 1, dim(a.hidden)?], false)?;
                Tensor::f_cat(&[c, patches], 1)?
            }
            _ => tokens(&y, cls.as_ref(), &pos)?,
        };
        for block in &self.blocks {
            x = block.forward(&x, &self.semantics)?;
        }
        if self.kw.norm {
            x = self.semantics.norm(
                &x,
                &(
                    p.load("norm.weight", &[a.hidden])?,
                    p.load("norm.bias", &[a.hidden])?,
                ),
            )?;
        }
        let prefix = i64::from(a.class_token);
        let n = x.size().get(1).copied().unwrap_or(0);
        let mut pooled = match (self.kw.global_pool, &self.attn_pool) {
            (GlobalPool::Token, _) => x.f_select(1, 0)?,
            (GlobalPool::None, _) => x.shallow_clone(),
            (GlobalPool::Avg, _) => {
                x.f_narrow(1, prefix, n - prefix)?
                    .f_mean_dim(1, false, None::<Kind>)?
            }
            (GlobalPool::Map, Some(pool)) => {
                pool.forward(&x.f_narrow(1, prefix, n - prefix)?, &self.semantics)?
            }
            (GlobalPool::Map, None) => {
                return Err(Error::MissingTensor {
                    path: p.path().to_path_buf(),
                    tensor: "attn_pool.latent".into(),
                    why: "global_pool='map'".into(),
                })
            }
        };
        if self.kw.fc_norm {
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
        let size = x.size();
        let c = match size.as_slice() {
            [_, c, ..] => usize::try_from(*c).ok(),
            _ => None,
        }
        .ok_or_else(|| Error::UnexpectedShape {
            what: "a GroupNorm's input",
            expected: "[B, C, H, W]",
            found: size.clone(),
        })?;
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

/// Loads timm `Block`s `blocks.{i}` (`norm1`, fused `attn.qkv`, `attn.proj`, `norm2`, `mlp.fc1`/`fc2`)
/// of width `d` and MLP width `mlp`.
pub(crate) fn timm_blocks(p: &Params, depth: usize, d: usize, mlp: usize) -> Result<Vec<Block>> {
    let mut blocks = Vec::with_capacity(depth);
    for i in 0..depth {
        let b = format!("blocks.{i}");
        let (qkv_w, qkv_b) = pair(
            p,
            &format!("{b}.attn.qkv"),
            &[d.saturating_mul(3), d],
            &[d.saturating_mul(3)],
        )?;
        let [q, k, v] = split_qkv(&qkv_w, &qkv_b)?;
        blocks.push(Block {
            ln1: pair(p, &format!("{b}.norm1"), &[d], &[d])?,
            q,
            k,
            v,
            proj: pair(p, &format!("{b}.attn.proj"), &[d, d], &[d])?,
            ln2: pair(p, &format!("{b}.norm2"), &[d], &[d])?,
            fc1: pair(p, &format!("{b}.mlp.fc1"), &[mlp, d], &[mlp])?,
            fc2: pair(p, &format!("{b}.mlp.fc2"), &[d, mlp], &[d])?,
        });
    }
    Ok(blocks)
}

/// The `vitconv.timm_kwargs` metadata JSON object, if the file has one.
pub(crate) fn timm_kwargs(
    p: &Params,
) -> Result<Option<serde_json::Map<String, serde_json::Value>>> {
    let Some(text) = p.file().metadata().get(vitconv_convert::meta::TIMM_KWARGS) else {
        return Ok(None);
    };
    match serde_json::from_str(text) {
        Ok(serde_json::Value::Object(map)) => Ok(Some(map)),
        _ => Err(Error::Declared {
            path: p.path().to_path_buf(),
            key: "metadata vitconv.timm_kwargs".into(),
            expected: "a JSON object of VisionTransformer kwargs".into(),
            found: text.clone(),
        }),
    }
}

/// An integer kwarg, if present.
fn kwarg_usize(
    kwargs: Option<&serde_json::Map<String, serde_json::Value>>,
    key: &str,
) -> Option<usize> {
    kwargs?
        .get(key)?
        .as_u64()
        .and_then(|v| usize::try_from(v).ok())
}

/// A tensor timm's strict `load_state_dict` would reject as unexpected for the declared kwargs.
fn unexpected(path: &std::path::Path, tensor: &str, why: &str) -> Error {
    Error::Declared {
        path: path.to_path_buf(),
        key: format!("tensor {tensor:?}"),
        expected: format!("absent ({why})"),
        found: "present".into(),
    }
}

impl Kwargs {
    /// Decides the forward from `vitconv.timm_kwargs` the way `VisionTransformer.__init__` does,
    /// or, for a file without them, from `vitconv.config` and the keys.
    fn read(
        p: &Params,
        config: &DeclaredConfig,
        kwargs: Option<&serde_json::Map<String, serde_json::Value>>,
    ) -> Result<Kwargs> {
        let path = p.path();
        let declared = |key: &str, expected: &str, found: &serde_json::Value| Error::Declared {
            path: path.to_path_buf(),
            key: format!("timm kwarg {key}"),
            expected: expected.to_owned(),
            found: found.to_string(),
        };
        let Some(kw) = kwargs else {
            let class_token = p.has("cls_token");
            let global_pool = match config.classifier.as_deref() {
                Some("gap") => GlobalPool::Avg,
                Some("map") => GlobalPool::Map,
                Some("none") => GlobalPool::None,
                Some(_) => GlobalPool::Token,
                None if p.has("attn_pool.latent") => GlobalPool::Map,
                None if class_token => GlobalPool::Token,
                None => GlobalPool::Avg,
            };
            return Ok(Kwargs {
                global_pool,
                class_token,
                no_embed_class: false,
                norm: p.has("norm.weight"),
                fc_norm: p.has("fc_norm.weight"),
                gelu: config.gelu_or(path, Gelu::Erf)?,
            });
        };
        let null = serde_json::Value::Null;
        let get = |key: &str| kw.get(key).unwrap_or(&null);
        let flag = |key: &str, default: bool| -> Result<bool> {
            match get(key) {
                serde_json::Value::Null => Ok(default),
                serde_json::Value::Bool(b) => Ok(*b),
                other => Err(declared(key, "true or false", other)),
            }
        };
        // Settings of timm's ViT that no Google checkpoint uses and this target does not run.
        for (key, default) in [
            ("reg_tokens", serde_json::json!(0)),
            ("qk_norm", serde_json::json!(false)),
            ("pre_norm", serde_json::json!(false)),
            ("qkv_bias", serde_json::json!(true)),
            ("proj_bias", serde_json::json!(true)),
            ("init_values", serde_json::Value::Null),
            ("pool_include_prefix", serde_json::json!(false)),
        ] {
            if let Some(v) = kw.get(key).filter(|v| **v != default) {
                return Err(declared(
                    key,
                    &format!("{default} (timm's default; the only value this verifier runs)"),
                    v,
                ));
            }
        }
        if let Some(v) = kw.get("pos_embed").filter(|v| v.as_str() != Some("learn")) {
            return Err(declared("pos_embed", "\"learn\"", v));
        }
        let class_token = flag("class_token", true)?;
        let global_pool = match get("global_pool") {
            serde_json::Value::Null => GlobalPool::Token,
            v => match v.as_str() {
                Some("token") => GlobalPool::Token,
                Some("avg") => GlobalPool::Avg,
                Some("map") => GlobalPool::Map,
                Some("") => GlobalPool::None,
                _ => return Err(declared("global_pool", "'token', 'avg', 'map' or ''", v)),
            },
        };
        if global_pool == GlobalPool::Token && !class_token {
            return Err(declared(
                "global_pool",
                "'avg' or 'map' (token pooling needs the class token)",
                get("global_pool"),
            ));
        }
        let use_fc_norm = match get("fc_norm") {
            serde_json::Value::Null => global_pool == GlobalPool::Avg,
            serde_json::Value::Bool(b) => *b,
            other => return Err(declared("fc_norm", "true, false or null", other)),
        };
        let final_norm = flag("final_norm", true)?;
        let gelu = match get("act_layer") {
            serde_json::Value::Null => config.gelu_or(path, Gelu::Erf)?,
            v => match v.as_str() {
                Some("gelu") => Gelu::Erf,
                Some("gelu_tanh") => Gelu::Tanh,
                Some("quick_gelu") => Gelu::Quick,
                _ => {
                    return Err(declared(
                        "act_layer",
                        "'gelu', 'gelu_tanh' or 'quick_gelu'",
                        v,
                    ))
                }
            },
        };
        Ok(Kwargs {
            global_pool,
            class_token,
            no_embed_class: flag("no_embed_class", false)?,
            norm: final_norm && !use_fc_norm,
            fc_norm: final_norm && use_fc_norm,
            gelu,
        })
    }
}

impl AttnPool {
    /// Loads `attn_pool.*` for width `d`; the MLP width must be `int(d * mlp_ratio)` when the
    /// kwargs give the ratio, as timm builds it.
    pub(crate) fn load(p: &Params, d: usize, mlp_ratio: Option<f64>) -> Result<AttnPool> {
        let path = p.path();
        match p.require_shape("attn_pool.latent", "global_pool='map'")? {
            [1, l, ld] if *ld == d && *l > 0 => {}
            other => {
                return Err(bad_shape(
                    path,
                    "attn_pool.latent",
                    &format!("[1, L, {d}]"),
                    other,
                ))
            }
        };
        let [mlp, _] = shape2(p, "attn_pool.mlp.fc1.weight")?;
        if let Some(ratio) = mlp_ratio {
            #[allow(
                clippy::cast_precision_loss,
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss
            )]
            let want = (d as f64 * ratio) as usize;
            if want != mlp {
                return Err(bad_shape(
                    path,
                    "attn_pool.mlp.fc1.weight",
                    &format!("[{want}, {d}] (int(embed_dim * mlp_ratio))"),
                    &[mlp, d],
                ));
            }
        }
        let (kv_w, kv_b) = pair(
            p,
            "attn_pool.kv",
            &[d.saturating_mul(2), d],
            &[d.saturating_mul(2)],
        )?;
        // `kv(x).reshape(B, N, 2, H, Dh)`: the first D output rows are the keys, the next D the values.
        let (k, v) = match (
            kv_w.f_chunk(2, 0)?.as_slice(),
            kv_b.f_chunk(2, 0)?.as_slice(),
        ) {
            ([wk, wv], [bk, bv]) => (
                (wk.shallow_clone(), bk.shallow_clone()),
                (wv.shallow_clone(), bv.shallow_clone()),
            ),
            _ => {
                return Err(bad_shape(
                    path,
                    "attn_pool.kv.weight",
                    &format!("[{}, {d}]", d.saturating_mul(2)),
                    &[],
                ))
            }
        };
        Ok(AttnPool {
            latent: p.load_any("attn_pool.latent")?,
            q: pair(p, "attn_pool.q", &[d, d], &[d])?,
            k,
            v,
            proj: pair(p, "attn_pool.proj", &[d, d], &[d])?,
            norm: pair(p, "attn_pool.norm", &[d], &[d])?,
            fc1: pair(p, "attn_pool.mlp.fc1", &[mlp, d], &[mlp])?,
            fc2: pair(p, "attn_pool.mlp.fc2", &[d, mlp], &[d])?,
        })
    }

    /// `AttentionPoolLatent.forward` on the tokens `[B, N, D]` (prefix already dropped).
    fn forward(&self, x: &Tensor, s: &BlockSemantics) -> Result<Tensor> {
        self.forward_masked(x, s, None)
    }

    /// [`AttnPool::forward`] with the key mask (`[B, 1, 1, N]` bool, true = a patch) NaFlexVit's
    /// `_pool` builds from `patch_valid`.
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
        let latent = self.latent.f_expand([b, -1, -1], false)?;
        let l = latent.size().get(1).copied().unwrap_or(1);
        let q = ops::linear(&latent, &self.q.0, Some(&self.q.1))?
            .f_reshape([b, l, h, dh])?
            .f_transpose(1, 2)?;
        let split = |wb: &(Tensor, Tensor)| -> Result<Tensor> {
            Ok(ops::linear(x, &wb.0, Some(&wb.1))?
                .f_reshape([b, n, h, dh])?
                .f_transpose(1, 2)?)
        };
        let (k, v) = (split(&self.k)?, split(&self.v)?);
        let o = match key_mask {
            Some(m) => ops::attention_sdpa_masked(&q, &k, &v, m)?,
            None => ops::attention_sdpa(&q, &k, &v)?,
        }
        .f_transpose(1, 2)?
        .f_reshape([b, l, d])?;
        let o = ops::linear(&o, &self.proj.0, Some(&self.proj.1))?;
        let y = s.norm(&o, &self.norm)?;
        let y = s
            .gelu
            .apply(&ops::linear(&y, &self.fc1.0, Some(&self.fc1.1))?)?;
        let o = o.f_add(&ops::linear(&y, &self.fc2.0, Some(&self.fc2.1))?)?;
        // pool_type 'token': latent 0.
        Ok(o.f_select(1, 0)?)
    }
}
