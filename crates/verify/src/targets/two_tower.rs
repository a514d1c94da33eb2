//! The two-tower (SigLIP) targets: a transformers `SiglipModel` folder or an open_clip `CustomTextCLIP` folder, both towers run from their own keys and declared configs.
//!
//! - **hf** (transformers 5.24, `models/siglip/modeling_siglip.py`): `config.json` with
//!   `architectures: ["SiglipModel"]`, `text_config` and `vision_config`; `model.safetensors`
//!   with `vision_model.*` (run by [`super::hf_siglip`]: its `pooler_output` is the image
//!   embedding), `text_model.*` and `logit_scale`/`logit_bias` `[1]`. `SiglipTextModel`:
//!   `token_embedding` + `position_embedding` (rows `0..seq_len`), `SiglipEncoderLayer`s with
//!   NO causal mask (`create_bidirectional_mask`, no attention mask given), `final_layer_norm`
//!   at `text_config.layer_norm_eps`, `hidden_act` from the config, the LAST position
//!   (`last_hidden_state[:, -1]`), then `head` (`[projection_size, Dt]`). Logits:
//!   `normalise(img) @ normalise(txt).T * logit_scale.exp() + logit_bias`. A SigLIP 2
//!   NaFlex `Siglip2Model` folder (`model_type` `siglip2`) has the same text tower and scalars;
//!   its vision tower runs on patches ([`super::hf_siglip2`], [`TwoTowerTarget::image_features_naflex`]).
//! - **open_clip** (open_clip 3.3.0, `model.py` `CustomTextCLIP`, `transformer.py`
//!   `TextTransformer`, `timm_model.py` `TimmModel`): `open_clip_config.json`'s `model_cfg`;
//!   the image tower is `timm.create_model(vision_cfg.timm_model_name, num_classes=embed_dim
//!   if timm_proj == '' else 0, global_pool=timm_pool)`, read from the `local-dir:` folder's
//!   `config.json` `model_args` and run by [`super::timm`] on the `visual.trunk.` keys; the text
//!   tower follows what `text_cfg` DECLARES: the causal mask unless `no_causal_mask`,
//!   `norm_kwargs.eps` (nn.LayerNorm's 1e-5 otherwise), `nn.GELU(**act_kwargs)` (or QuickGELU
//!   with `quick_gelu`), `ln_final` on every token, then `pool_type` `first` / `last` /
//!   `argmax` (the highest id) / `eos` (the first `eos_id`), then `text_projection` (a Linear
//!   with `proj_bias`, a `[Dt, E]` matrix without, none with `proj_type: none`). Logits:
//!   `logit_scale.exp() * img @ txt.T + logit_bias` on normalised features, the two 0-dim
//!   scalars.
//!
//! Beside the numbers, [`TwoTowerTarget::declared`] lists every declared setting that differs
//! from the big_vision source's semantics (text LayerNorm eps 1e-6, no causal mask, last
//! position pooled, tanh GELU): a wrong declaration fails verification even where it moves
//! these tiny models by less than the tolerance.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use tch::{Device, Kind, Tensor};
use vitconv_tensors::TensorFile;

use super::hf::{hidden_act, input_norm, read_json};
use super::hf_siglip::{blocks_hf, HfSiglip};
use super::hf_siglip2::{is_siglip2, HfSiglip2};
use super::timm::Timm;
use super::{
    bad_shape, pair, shape2, split_qkv, Block, BlockSemantics, DeclaredConfig, InputNorm, Layout,
    TargetArch,
};
use crate::error::{Error, Result};
use crate::input::NaflexInputs;
use crate::ops::{self, Gelu};
use crate::params::{dim, Params};

/// The LayerNorm eps of the flax source (`nn.LayerNorm`'s default).
const SOURCE_EPS: f64 = 1e-6;
/// `nn.LayerNorm`'s default eps, which open_clip keeps unless `norm_kwargs` says otherwise.
const TORCH_LAYER_NORM_EPS: f64 = 1e-5;
/// open_clip's default image normalisation (`OPENAI_DATASET_MEAN`/`STD`) when `preprocess_cfg`
/// gives none.
const OPENAI_MEAN: [f64; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
const OPENAI_STD: [f64; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];

/// A declared setting that differs from what the source computes.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DeclaredMismatch {
    /// The config file that declares the setting (`config.json`, `open_clip_config.json`, ...).
    pub file: PathBuf,
    /// The field, as a path into the file (`text_config.layer_norm_eps`).
    pub field: String,
    /// What the source computes, in words.
    pub expected: String,
    /// What the file declares instead.
    pub found: String,
}

/// How a text tower pools its tokens after the final norm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TextPool {
    /// Token 0.
    First,
    /// The last position (big_vision, transformers).
    Last,
    /// The position of the highest id (OpenAI CLIP's EOT).
    Argmax,
    /// The first position holding the EOS id.
    Eos,
}

/// The text projection after the pool.
enum Proj {
    /// `nn.Linear`: `[E, Dt]` weight and an optional bias.
    Linear(Tensor, Option<Tensor>),
    /// A `[Dt, E]` parameter, `x @ P`.
    Matrix(Tensor),
    None,
}

/// The text tower's sizes as the target holds them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TextTargetArch {
    /// Rows of the token embedding: the vocabulary size.
    pub vocab: usize,
    /// Position-embedding rows: the longest text the tower takes.
    pub positions: usize,
    /// The text tower's token width.
    pub width: usize,
    /// The number of text encoder blocks.
    pub depth: usize,
    /// Attention heads per text block.
    pub heads: usize,
    /// The text MLP's hidden width.
    pub mlp: usize,
    /// The embedding width (the projection's output, or the width without one).
    pub embed: usize,
}

/// A text transformer in PyTorch layouts, with the switches its library's config sets.
struct TextModel {
    token: Tensor,
    pos: Tensor,
    blocks: Vec<Block>,
    final_norm: (Tensor, Tensor),
    proj: Proj,
    semantics: BlockSemantics,
    causal: bool,
    pool: TextPool,
    eos_id: i64,
    arch: TextTargetArch,
    kind: Kind,
}

impl TextModel {
    /// Embeddings, blocks, final norm, pool, projection on int64 ids `[n, L]`.
    fn forward(&self, path: &Path, ids: &Tensor) -> Result<Tensor> {
        let size = ids.size();
        let len = match size.as_slice() {
            [_, l] => *l,
            _ => 0,
        };
        if len <= 0 || len > dim(self.arch.positions)? {
            return Err(Error::TextIds {
                path: path.to_path_buf(),
                expected: format!(
                    "[n, L] ids with 1 <= L <= {} (the position-embedding rows)",
                    self.arch.positions
                ),
                found: format!("shape {size:?}"),
            });
        }
        let ids = ids
            .f_to_kind(Kind::Int64)?
            .f_to_device(self.token.device())?;
        let x = Tensor::f_embedding(&self.token, &ids, -1, false, false)?;
        let mut x = x.f_add(&self.pos.f_narrow(0, 0, len)?)?;
        for b in &self.blocks {
            x = b.forward_masked(&x, &self.semantics, self.causal)?;
        }
        let x = self.semantics.norm(&x, &self.final_norm)?;
        let n = x.size().first().copied().unwrap_or(0);
        let rows = Tensor::f_arange(n, (Kind::Int64, x.device()))?;
        let at = match self.pool {
            TextPool::First => Tensor::f_zeros([n], (Kind::Int64, x.device()))?,
            TextPool::Last => Tensor::f_full([n], len - 1, (Kind::Int64, x.device()))?,
            TextPool::Argmax => ids.f_argmax(-1, false)?,
            // `(text == eos_id).int().argmax(-1)`: the first EOS, or 0 where there is none.
            TextPool::Eos => ids
                .f_eq(self.eos_id)?
                .f_to_kind(Kind::Int)?
                .f_argmax(-1, false)?,
        };
        let pooled = x.f_index(&[Some(rows), Some(at)])?;
        Ok(match &self.proj {
            Proj::Linear(w, b) => ops::linear(&pooled, w, b.as_ref())?,
            Proj::Matrix(m) => pooled.f_matmul(m)?,
            Proj::None => pooled,
        })
    }
}

/// The image side of a two-tower target.
enum ImageModel {
    Hf(HfSiglip),
    /// A `Siglip2Model`'s NaFlex vision tower, which runs on patches.
    HfNaflex(HfSiglip2),
    Timm(Timm),
}

/// A loaded two-tower target.
pub struct TwoTowerTarget {
    /// The layout the folder was read as (`hf` or `open_clip`).
    pub layout: Layout,
    /// The image tower's architecture, for checking it against the source.
    pub arch: TargetArch,
    /// The text tower's architecture, for checking it against the source.
    pub text_arch: TextTargetArch,
    /// The input normalisation the image tower expects.
    pub norm: InputNorm,
    /// The stored log temperature (the models apply `exp`).
    pub logit_scale: f64,
    /// The stored bias (0 where the model has none).
    pub logit_bias: f64,
    /// Declared settings that differ from the source's semantics.
    pub declared: Vec<DeclaredMismatch>,
    /// What was assumed or read, one sentence each, for the report.
    pub notes: Vec<String>,
    /// The weights file the text tower was read from.
    pub weights: PathBuf,
    /// What the weights file declares (`vitconv.config`), for the stored dtype.
    pub declared_config: DeclaredConfig,
    /// Whether the image tower ends in a projection (open_clip: timm's `head`; transformers'
    /// `SiglipModel` has none, its `pooler_output` is the embedding).
    pub image_head: bool,
    image: ImageModel,
    text: TextModel,
}

impl TwoTowerTarget {
    /// Runs the image tower on NCHW pixels normalised its way; returns the unnormalised embedding.
    pub fn image_features(&self, nchw: &Tensor) -> Result<Tensor> {
        let out = match &self.image {
            ImageModel::Hf(m) => m.forward(nchw)?,
            ImageModel::Timm(m) => m.forward(nchw)?,
            ImageModel::HfNaflex(_) => return Err(self.naflex_only()),
        };
        Ok(out.logits.unwrap_or(out.features))
    }

    /// Whether the image tower is a NaFlex one, which runs on patches ([`Self::image_features_naflex`]).
    pub fn is_naflex(&self) -> bool {
        matches!(self.image, ImageModel::HfNaflex(_))
    }

    /// Runs a NaFlex image tower on patch inputs; returns the unnormalised embedding.
    pub fn image_features_naflex(&self, inputs: &NaflexInputs) -> Result<Tensor> {
        match &self.image {
            ImageModel::HfNaflex(m) => m.forward(inputs),
            _ => Err(Error::NotAModel {
                path: self.weights.clone(),
                reason: "the image tower runs on square pixels, not NaFlex patches".into(),
            }),
        }
    }

    fn naflex_only(&self) -> Error {
        Error::NotAModel {
            path: self.weights.clone(),
            reason: "the image tower is a NaFlex one (Siglip2Model): it runs on patches, not square pixels".into(),
        }
    }

    /// Runs the text tower on int64 ids `[n, L]`; returns the unnormalised embedding.
    pub fn text_features(&self, ids: &Tensor) -> Result<Tensor> {
        self.text.forward(&self.weights, ids)
    }

    /// The dtype the weights were loaded in.
    pub fn kind(&self) -> Kind {
        self.text.kind
    }

    /// `normalise(img) @ normalise(txt).T * exp(logit_scale) + logit_bias`, in float32.
    pub fn logits(&self, image: &Tensor, text: &Tensor) -> Result<Tensor> {
        let zi = crate::references::siglip::l2_normalise(&image.f_to_kind(Kind::Float)?)?;
        let zt = crate::references::siglip::l2_normalise(&text.f_to_kind(Kind::Float)?)?;
        crate::references::siglip::two_tower_logits(&zi, &zt, self.logit_scale, self.logit_bias)
    }
}

/// Which two-tower layout a directory holds, if any: open_clip's `open_clip_config.json`, or a
/// transformers `config.json` naming `SiglipModel` or SigLIP 2 (`Siglip2Model`, `model_type` `siglip2`).
pub fn detect(path: &Path) -> Result<Option<Layout>> {
    match super::folder_layout(path)? {
        Some(Layout::OpenClip) => Ok(Some(Layout::OpenClip)),
        Some(Layout::Hf) => {
            let top: serde_json::Value = read_json(&path.join("config.json"))?;
            let siglip_model = top
                .get("architectures")
                .and_then(serde_json::Value::as_array)
                .is_some_and(|a| a.iter().any(|v| v.as_str() == Some("SiglipModel")));
            Ok((siglip_model || is_siglip2(&top)).then_some(Layout::Hf))
        }
        _ => Ok(None),
    }
}

/// Opens a two-tower folder of `layout`.
pub fn open(path: &Path, layout: Layout, device: Device, kind: Kind) -> Result<TwoTowerTarget> {
    match layout {
        Layout::Hf => open_hf(path, device, kind),
        Layout::OpenClip => open_open_clip(path, device, kind),
        other => Err(Error::LayoutMismatch {
            path: path.to_path_buf(),
            layout: other.as_str(),
            holds: "a two-tower folder is an hf (SiglipModel) or open_clip conversion",
        }),
    }
}

/// Reads one scalar tensor (`[1]` or 0-dim).
fn scalar(p: &Params, name: &str) -> Result<Option<f64>> {
    match p.shape(name) {
        None => Ok(None),
        Some(s) if s.iter().product::<usize>() == 1 => {
            Ok(p.file().read_f32(name)?.first().copied().map(f64::from))
        }
        Some(s) => Err(bad_shape(p.path(), name, "one scalar ([1] or [])", s)),
    }
}

/// The settings a transformers vision config declares that contradict the source (its LayerNorm eps, its
/// GELU): `vision` is a two-tower config's `vision_config` (fields named under `field_prefix`) or a vision
/// model's own config (no prefix); an absent field is the class's default.
pub(crate) fn vision_declared(
    config_path: &Path,
    vision: Option<&serde_json::Value>,
    field_prefix: &str,
) -> Result<Vec<DeclaredMismatch>> {
    let mut declared = Vec::new();
    let eps = vision
        .and_then(|v| v.get("layer_norm_eps"))
        .and_then(serde_json::Value::as_f64)
        .unwrap_or(SOURCE_EPS);
    check_eps(
        &mut declared,
        config_path,
        &format!("{field_prefix}layer_norm_eps"),
        eps,
    );
    let act = vision
        .and_then(|v| v.get("hidden_act"))
        .and_then(serde_json::Value::as_str)
        .unwrap_or("gelu_pytorch_tanh");
    check_gelu(
        &mut declared,
        config_path,
        &format!("{field_prefix}hidden_act"),
        hidden_act(config_path, act)?,
        act,
    );
    Ok(declared)
}

/// Compares a declared eps with the source's, recording a mismatch.
fn check_eps(out: &mut Vec<DeclaredMismatch>, file: &Path, field: &str, eps: f64) {
    if (eps - SOURCE_EPS).abs() > SOURCE_EPS * 1e-9 {
        out.push(DeclaredMismatch {
            file: file.to_path_buf(),
            field: field.into(),
            expected: format!("{SOURCE_EPS:e} (flax nn.LayerNorm)"),
            found: format!("{eps:e}"),
        });
    }
}

/// Records a GELU other than the source's tanh approximation.
fn check_gelu(out: &mut Vec<DeclaredMismatch>, file: &Path, field: &str, gelu: Gelu, found: &str) {
    if gelu != Gelu::Tanh {
        out.push(DeclaredMismatch {
            file: file.to_path_buf(),
            field: field.into(),
            expected: "the tanh GELU (flax nn.gelu)".into(),
            found: found.into(),
        });
    }
}

/// `SiglipTextConfig`'s fields the forward reads, with the class's defaults.
#[derive(Debug, Deserialize)]
struct HfTextConfig {
    #[serde(default = "hf_text_defaults::vocab_size")]
    vocab_size: usize,
    #[serde(default = "hf_text_defaults::hidden_size")]
    hidden_size: usize,
    #[serde(default = "hf_text_defaults::intermediate_size")]
    intermediate_size: usize,
    #[serde(default = "hf_text_defaults::layers")]
    num_hidden_layers: usize,
    #[serde(default = "hf_text_defaults::heads")]
    num_attention_heads: usize,
    #[serde(default = "hf_text_defaults::positions")]
    max_position_embeddings: usize,
    #[serde(default = "hf_text_defaults::hidden_act")]
    hidden_act: String,
    #[serde(default = "hf_text_defaults::layer_norm_eps")]
    layer_norm_eps: f64,
    projection_size: Option<usize>,
}

/// `SiglipTextConfig`'s defaults (configuration_siglip.py).
mod hf_text_defaults {
    pub fn vocab_size() -> usize {
        32000
    }
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
    pub fn positions() -> usize {
        64
    }
    pub fn hidden_act() -> String {
        "gelu_pytorch_tanh".into()
    }
    pub fn layer_norm_eps() -> f64 {
        1e-6
    }
}

fn open_hf(dir: &Path, device: Device, kind: Kind) -> Result<TwoTowerTarget> {
    let config_path = dir.join("config.json");
    let weights_path = dir.join("model.safetensors");
    for needed in [&config_path, &weights_path] {
        if !needed.exists() {
            return Err(Error::NotFound {
                path: needed.clone(),
            });
        }
    }
    let top: serde_json::Value = read_json(&config_path)?;
    let text_value = top
        .get("text_config")
        .cloned()
        .unwrap_or_else(|| serde_json::Value::Object(serde_json::Map::new()));
    let tc: HfTextConfig = serde_json::from_value(text_value).map_err(|e| Error::Unreadable {
        path: config_path.clone(),
        reason: format!("text_config is not a SiglipTextConfig: {e}"),
    })?;
    let (image, parts) = if is_siglip2(&top) {
        let (m, parts) = HfSiglip2::open(dir, device, kind)?;
        (ImageModel::HfNaflex(m), parts)
    } else {
        let (m, parts) = HfSiglip::open(dir, device, kind)?;
        (ImageModel::Hf(m), parts)
    };
    let mut declared = vision_declared(&config_path, top.get("vision_config"), "vision_config.")?;

    let file = TensorFile::open(&weights_path)?;
    let declared_config = DeclaredConfig::from_metadata(&weights_path, file.metadata())?;
    let p = Params::new(file, "", device, kind);
    let d = tc.hidden_size;
    let heads = tc.num_attention_heads;
    if heads == 0 || !d.is_multiple_of(heads) {
        return Err(Error::Declared {
            path: config_path,
            key: "text_config.num_attention_heads".into(),
            expected: format!("a divisor of text_config.hidden_size {d}"),
            found: heads.to_string(),
        });
    }
    let gelu = hidden_act(&config_path, &tc.hidden_act)?;
    check_gelu(
        &mut declared,
        &config_path,
        "text_config.hidden_act",
        gelu,
        &tc.hidden_act,
    );
    check_eps(
        &mut declared,
        &config_path,
        "text_config.layer_norm_eps",
        tc.layer_norm_eps,
    );
    let pre = "text_model.";
    let token = p.load(
        &format!("{pre}embeddings.token_embedding.weight"),
        &[tc.vocab_size, d],
    )?;
    let pos = p.load(
        &format!("{pre}embeddings.position_embedding.weight"),
        &[tc.max_position_embeddings, d],
    )?;
    let m = tc.intermediate_size;
    let blocks = blocks_hf(&p, pre, tc.num_hidden_layers, d, m)?;
    let final_norm = pair(&p, &format!("{pre}final_layer_norm"), &[d], &[d])?;
    let e = tc.projection_size.unwrap_or(d);
    let head = pair(&p, &format!("{pre}head"), &[e, d], &[e])?;
    let logit_scale = scalar(&p, "logit_scale")?.ok_or_else(|| Error::MissingTensor {
        path: weights_path.clone(),
        tensor: "logit_scale".into(),
        why: "SiglipModel's logit scale".into(),
    })?;
    let logit_bias = scalar(&p, "logit_bias")?.ok_or_else(|| Error::MissingTensor {
        path: weights_path.clone(),
        tensor: "logit_bias".into(),
        why: "SiglipModel's logit bias".into(),
    })?;
    let mut notes = parts.notes;
    notes.push(format!(
        "transformers {} text tower from config.json: hidden_act {:?}, layer_norm_eps {:e}, no causal mask, last position pooled, head to {e}",
        if is_siglip2(&top) { "Siglip2Model" } else { "SiglipModel" },
        tc.hidden_act,
        tc.layer_norm_eps
    ));
    let text = TextModel {
        token,
        pos,
        blocks,
        final_norm,
        proj: Proj::Linear(head.0, Some(head.1)),
        semantics: BlockSemantics {
            heads,
            gelu,
            eps: tc.layer_norm_eps,
            ln_fp32: false,
        },
        causal: false,
        pool: TextPool::Last,
        eos_id: 1,
        arch: TextTargetArch {
            vocab: tc.vocab_size,
            positions: tc.max_position_embeddings,
            width: d,
            depth: tc.num_hidden_layers,
            heads,
            mlp: m,
            embed: e,
        },
        kind,
    };
    let norm = {
        let mut ignored = Vec::new();
        input_norm(dir, &declared_config, &mut ignored)?
    };
    Ok(TwoTowerTarget {
        layout: Layout::Hf,
        arch: parts.arch,
        text_arch: text.arch.clone(),
        norm,
        logit_scale,
        logit_bias,
        declared,
        notes,
        weights: weights_path,
        declared_config,
        image_head: false,
        image,
        text,
    })
}

/// open_clip's `CLIPTextCfg` fields, every one optional so that the library's defaults apply.
#[derive(Debug, Default, Deserialize)]
struct OcTextCfg {
    context_length: Option<usize>,
    vocab_size: Option<usize>,
    width: Option<usize>,
    heads: Option<usize>,
    layers: Option<usize>,
    mlp_ratio: Option<f64>,
    ls_init_value: Option<f64>,
    embed_cls: Option<bool>,
    eos_id: Option<i64>,
    no_causal_mask: Option<bool>,
    pool_type: Option<String>,
    proj_bias: Option<bool>,
    proj_type: Option<String>,
    act_kwargs: Option<serde_json::Map<String, serde_json::Value>>,
    norm_kwargs: Option<serde_json::Map<String, serde_json::Value>>,
    hf_model_name: Option<String>,
    block_type: Option<String>,
    qk_norm: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
struct OcVisionCfg {
    timm_model_name: Option<String>,
    timm_pool: Option<String>,
    timm_proj: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct OcModelCfg {
    embed_dim: Option<usize>,
    quick_gelu: Option<bool>,
    init_logit_bias: Option<f64>,
    vision_cfg: Option<OcVisionCfg>,
    text_cfg: Option<OcTextCfg>,
}

#[derive(Debug, Default, Deserialize)]
struct OcPreprocess {
    mean: Option<[f64; 3]>,
    std: Option<[f64; 3]>,
}

#[derive(Debug, Deserialize)]
struct OcConfig {
    model_cfg: OcModelCfg,
    #[serde(default)]
    preprocess_cfg: Option<OcPreprocess>,
}

fn open_open_clip(dir: &Path, device: Device, kind: Kind) -> Result<TwoTowerTarget> {
    let config_path = dir.join("open_clip_config.json");
    let weights_path = dir.join("open_clip_model.safetensors");
    for needed in [&config_path, &weights_path] {
        if !needed.exists() {
            return Err(Error::NotFound {
                path: needed.clone(),
            });
        }
    }
    let cfg: OcConfig = read_json(&config_path)?;
    let mc = &cfg.model_cfg;
    let declared_err = |key: &str, expected: &str, found: String| Error::Declared {
        path: config_path.clone(),
        key: format!("model_cfg.{key}"),
        expected: expected.into(),
        found,
    };
    let embed = mc
        .embed_dim
        .ok_or_else(|| declared_err("embed_dim", "the embedding width", "absent".into()))?;
    let vc = mc.vision_cfg.as_ref().ok_or_else(|| {
        declared_err(
            "vision_cfg",
            "a timm vision tower (timm_model_name)",
            "absent".into(),
        )
    })?;
    let tc = mc
        .text_cfg
        .as_ref()
        .ok_or_else(|| declared_err("text_cfg", "a custom text tower", "absent".into()))?;
    // Settings of open_clip's text tower that no big_vision model maps to: refused, not ignored.
    if let Some(name) = &tc.hf_model_name {
        return Err(declared_err(
            "text_cfg.hf_model_name",
            "absent (open_clip's own TextTransformer)",
            format!("{name:?}"),
        ));
    }
    if tc.embed_cls == Some(true) {
        return Err(declared_err("text_cfg.embed_cls", "false", "true".into()));
    }
    if let Some(v) = tc.ls_init_value {
        return Err(declared_err(
            "text_cfg.ls_init_value",
            "null",
            v.to_string(),
        ));
    }
    if tc.qk_norm == Some(true) {
        return Err(declared_err("text_cfg.qk_norm", "false", "true".into()));
    }
    if let Some(b) = tc.block_type.as_deref().filter(|b| *b != "default") {
        return Err(declared_err(
            "text_cfg.block_type",
            "null or \"default\"",
            format!("{b:?}"),
        ));
    }

    // The image tower: timm's local-dir folder, as TimmModel builds it; or a registered timm name, which
    // vitconv writes only for the registered tanh-GELU SigLIP towers and records with the VisionTransformer
    // kwargs that name builds (`vitconv.timm_kwargs`; tests/python/test_siglip.py checks the two against timm).
    let timm_name = vc.timm_model_name.as_deref().unwrap_or("");
    let (tower_config, folder_args) = match timm_name.strip_prefix("local-dir:") {
        Some(tower_dir) => {
            let t = PathBuf::from(tower_dir);
            let tower_dir = if t.is_absolute() { t } else { dir.join(t) };
            let tower_config = tower_dir.join("config.json");
            if !tower_config.exists() {
                return Err(Error::NotFound { path: tower_config });
            }
            let folder: serde_json::Value = read_json(&tower_config)?;
            let args = folder.get("model_args").cloned();
            (tower_config, args)
        }
        None => {
            let file = TensorFile::open(&weights_path)?;
            let recorded = file
                .metadata()
                .get(vitconv_convert::meta::TIMM_KWARGS)
                .and_then(|k| serde_json::from_str::<serde_json::Value>(k).ok());
            if timm_name.is_empty() || recorded.is_none() {
                return Err(declared_err(
                    "vision_cfg.timm_model_name",
                    "local-dir:<the image tower's timm folder>, or a registered name with vitconv.timm_kwargs recorded in the weights",
                    format!("{timm_name:?}"),
                ));
            }
            (weights_path.clone(), recorded)
        }
    };
    let mut kwargs = match folder_args {
        Some(serde_json::Value::Object(m)) => m,
        None => serde_json::Map::new(),
        Some(other) => {
            return Err(Error::Declared {
                path: tower_config,
                key: "model_args".into(),
                expected: "a JSON object of VisionTransformer kwargs".into(),
                found: other.to_string(),
            })
        }
    };
    let proj = vc.timm_proj.as_deref().unwrap_or("linear");
    let head = match proj {
        "" => true,
        "none" => false,
        other => {
            return Err(declared_err(
                "vision_cfg.timm_proj",
                "\"\" (timm's head is the projection) or \"none\"",
                format!("{other:?}"),
            ))
        }
    };
    // TimmModel: create_model(..., num_classes=embed_dim if proj == '' else 0, global_pool=pool).
    if let Some(pool) = &vc.timm_pool {
        kwargs.insert("global_pool".into(), serde_json::json!(pool));
    }
    kwargs.insert(
        "num_classes".into(),
        serde_json::json!(if head { embed } else { 0 }),
    );
    let mut declared = Vec::new();
    let act = kwargs
        .get("act_layer")
        .and_then(serde_json::Value::as_str)
        .unwrap_or("gelu")
        .to_owned();
    let image_gelu = match act.as_str() {
        "gelu_tanh" => Gelu::Tanh,
        "quick_gelu" => Gelu::Quick,
        _ => Gelu::Erf,
    };
    check_gelu(
        &mut declared,
        &tower_config,
        "model_args.act_layer",
        image_gelu,
        &act,
    );
    let file = TensorFile::open(&weights_path)?;
    let declared_config = DeclaredConfig::from_metadata(&weights_path, file.metadata())?;
    let image_params = Params::new(file, "visual.trunk.", device, kind);
    let has_head = image_params.has("head.weight");
    if has_head != head {
        return Err(declared_err(
            "vision_cfg.timm_proj",
            if has_head {
                "\"\" (the weights hold visual.trunk.head: timm's head is the projection)"
            } else {
                "\"none\" (the weights hold no visual.trunk.head)"
            },
            format!("{proj:?}"),
        ));
    }
    let norm = match cfg.preprocess_cfg.as_ref().map(|p| (p.mean, p.std)) {
        Some((Some(mean), Some(std))) => InputNorm {
            name: "preprocess_cfg".into(),
            mean,
            std,
        },
        _ => InputNorm {
            name: "openai (open_clip's default)".into(),
            mean: OPENAI_MEAN,
            std: OPENAI_STD,
        },
    };
    let (image, parts) = Timm::open_with(
        image_params,
        &declared_config,
        Some(kwargs),
        Some(norm.clone()),
    )?;

    // The text tower: what text_cfg declares, open_clip's defaults where it is silent.
    let p = Params::new(TensorFile::open(&weights_path)?, "", device, kind);
    let t = "text.";
    let [vocab, width] = shape2(&p, &format!("{t}token_embedding.weight"))?;
    // CLIPTextCfg's defaults where text_cfg is silent.
    let vocab_cfg = tc.vocab_size.unwrap_or(49408);
    let width_cfg = tc.width.unwrap_or(512);
    let context = tc.context_length.unwrap_or(77);
    if (vocab_cfg, width_cfg) != (vocab, width) {
        return Err(bad_shape(
            &weights_path,
            &format!("{t}token_embedding.weight"),
            &format!("[{vocab_cfg}, {width_cfg}] (text_cfg vocab_size, width)"),
            &[vocab, width],
        ));
    }
    let heads = tc.heads.unwrap_or(8);
    if heads == 0 || !width.is_multiple_of(heads) {
        return Err(declared_err(
            "text_cfg.heads",
            &format!("a divisor of width {width}"),
            heads.to_string(),
        ));
    }
    let layers = tc.layers.unwrap_or(12);
    #[allow(
        clippy::cast_precision_loss,
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss
    )]
    let mlp = (width as f64 * tc.mlp_ratio.unwrap_or(4.0)) as usize;
    let quick = mc.quick_gelu == Some(true);
    let approximate = tc
        .act_kwargs
        .as_ref()
        .and_then(|k| k.get("approximate"))
        .and_then(serde_json::Value::as_str)
        .unwrap_or("none")
        .to_owned();
    let gelu = match (quick, approximate.as_str()) {
        (true, _) => Gelu::Quick,
        (false, "tanh") => Gelu::Tanh,
        _ => Gelu::Erf,
    };
    check_gelu(
        &mut declared,
        &config_path,
        "model_cfg.text_cfg.act_kwargs.approximate",
        gelu,
        &if quick {
            "quick_gelu (model_cfg.quick_gelu)".to_owned()
        } else {
            format!("{approximate:?}")
        },
    );
    let eps = tc
        .norm_kwargs
        .as_ref()
        .and_then(|k| k.get("eps"))
        .and_then(serde_json::Value::as_f64)
        .unwrap_or(TORCH_LAYER_NORM_EPS);
    check_eps(
        &mut declared,
        &config_path,
        "model_cfg.text_cfg.norm_kwargs.eps",
        eps,
    );
    let causal = !tc.no_causal_mask.unwrap_or(false);
    if causal {
        declared.push(DeclaredMismatch {
            file: config_path.clone(),
            field: "model_cfg.text_cfg.no_causal_mask".into(),
            expected: "true (big_vision's text tower attends both ways)".into(),
            found: format!("{:?}", tc.no_causal_mask),
        });
    }
    let pool_name = tc.pool_type.clone().unwrap_or_else(|| "argmax".into());
    let pool = match pool_name.as_str() {
        "first" => TextPool::First,
        "last" => TextPool::Last,
        "argmax" => TextPool::Argmax,
        "eos" => TextPool::Eos,
        other => {
            return Err(declared_err(
                "text_cfg.pool_type",
                "first, last, argmax or eos",
                format!("{other:?}"),
            ))
        }
    };
    if pool != TextPool::Last {
        declared.push(DeclaredMismatch {
            file: config_path.clone(),
            field: "model_cfg.text_cfg.pool_type".into(),
            expected: "\"last\" (big_vision pools the last position)".into(),
            found: format!("{pool_name:?}"),
        });
    }
    let pos = p.load(&format!("{t}positional_embedding"), &[context, width])?;
    let mut blocks = Vec::with_capacity(layers);
    for i in 0..layers {
        let b = format!("{t}transformer.resblocks.{i}");
        let w = p.load(
            &format!("{b}.attn.in_proj_weight"),
            &[width.saturating_mul(3), width],
        )?;
        let bias = p.load(
            &format!("{b}.attn.in_proj_bias"),
            &[width.saturating_mul(3)],
        )?;
        let [q, k, v] = split_qkv(&w, &bias)?;
        blocks.push(Block {
            ln1: pair(&p, &format!("{b}.ln_1"), &[width], &[width])?,
            q,
            k,
            v,
            proj: pair(&p, &format!("{b}.attn.out_proj"), &[width, width], &[width])?,
            ln2: pair(&p, &format!("{b}.ln_2"), &[width], &[width])?,
            fc1: pair(&p, &format!("{b}.mlp.c_fc"), &[mlp, width], &[mlp])?,
            fc2: pair(&p, &format!("{b}.mlp.c_proj"), &[width, mlp], &[width])?,
        });
    }
    if p.has(&format!("{t}transformer.resblocks.{layers}.ln_1.weight")) {
        return Err(bad_shape(
            &weights_path,
            &format!("{t}transformer.resblocks.{layers}"),
            &format!("{layers} text blocks (text_cfg.layers)"),
            &[],
        ));
    }
    let final_norm = pair(&p, &format!("{t}ln_final"), &[width], &[width])?;
    let proj_none = tc.proj_type.as_deref() == Some("none");
    let proj = if proj_none {
        Proj::None
    } else if tc.proj_bias == Some(true) {
        Proj::Linear(
            p.load(&format!("{t}text_projection.weight"), &[embed, width])?,
            Some(p.load(&format!("{t}text_projection.bias"), &[embed])?),
        )
    } else {
        Proj::Matrix(p.load(&format!("{t}text_projection"), &[width, embed])?)
    };
    let logit_scale = scalar(&p, "logit_scale")?.ok_or_else(|| Error::MissingTensor {
        path: weights_path.clone(),
        tensor: "logit_scale".into(),
        why: "CustomTextCLIP's logit scale".into(),
    })?;
    let logit_bias = match (scalar(&p, "logit_bias")?, mc.init_logit_bias) {
        (Some(b), Some(_)) => b,
        (None, None) => 0.0,
        (Some(_), None) => {
            return Err(declared_err(
                "init_logit_bias",
                "a number (the weights hold logit_bias, which open_clip builds only then)",
                "null".into(),
            ))
        }
        (None, Some(_)) => {
            return Err(Error::MissingTensor {
                path: weights_path.clone(),
                tensor: "logit_bias".into(),
                why: "model_cfg.init_logit_bias is set".into(),
            })
        }
    };
    let mut notes = parts.notes;
    notes.push(format!(
        "open_clip text tower from {}: {gelu:?} GELU, LayerNorm eps {eps:e}, causal mask {}, pool_type {pool_name:?}, {} projection",
        config_path.display(),
        if causal { "on" } else { "off" },
        match proj {
            Proj::Linear(..) => "Linear",
            Proj::Matrix(_) => "matrix",
            Proj::None => "no",
        }
    ));
    let embed_out = if proj_none { width } else { embed };
    let text = TextModel {
        token: p.load(&format!("{t}token_embedding.weight"), &[vocab, width])?,
        pos,
        blocks,
        final_norm,
        proj,
        semantics: BlockSemantics {
            heads,
            gelu,
            eps,
            ln_fp32: false,
        },
        causal,
        pool,
        eos_id: tc.eos_id.unwrap_or(2),
        arch: TextTargetArch {
            vocab,
            positions: context,
            width,
            depth: layers,
            heads,
            mlp,
            embed: embed_out,
        },
        kind,
    };
    Ok(TwoTowerTarget {
        layout: Layout::OpenClip,
        arch: parts.arch,
        text_arch: text.arch.clone(),
        norm,
        logit_scale,
        logit_bias,
        declared,
        notes,
        weights: weights_path,
        declared_config,
        image_head: head,
        image: ImageModel::Timm(image),
        text,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{verify, InputSource, Options, Precision, Report, TextSource};
    use std::collections::BTreeMap;
    use vitconv_tensors::{DType, Format, TensorSpec, Writer};

    fn fixture(rel: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../fixtures/big_vision")
            .join(rel)
    }

    /// Builds `layout`'s folder of `case` with the real library (tests/siglip_targets.py, run by
    /// the venv's python that scripts/with-libtorch puts first on PATH); the helper itself checks
    /// that the library's forward gives the golden outputs.
    fn build(case: &str, layout: &str, out: &Path) {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/siglip_targets.py");
        let o = std::process::Command::new("python")
            .arg(&script)
            .arg(fixture(case))
            .arg(out)
            .arg(layout)
            .output()
            .expect("python runs (run the tests through scripts/with-libtorch)");
        assert!(
            o.status.success(),
            "{case} {layout}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }

    fn run(case: &str, folder: &Path, text: TextSource) -> Report {
        // The golden logits hold the reference itself to big_vision's output, on the golden ids.
        let expect = matches!(text, TextSource::Npy(_))
            .then(|| fixture(&format!("{case}/logits_per_image.npy")));
        verify(&Options {
            source: fixture(&format!("{case}/checkpoint.npz")),
            converted: folder.to_path_buf(),
            layout: None,
            device: "cpu".into(),
            precision: Precision::F32,
            input: InputSource::Npy(fixture(&format!("{case}/input.npy"))),
            expect,
            tolerance: None,
            image_size: None,
            text,
            max_patches: None,
        })
        .expect("verify runs")
    }

    fn golden_text(case: &str) -> TextSource {
        TextSource::Npy(fixture(&format!("{case}/text.npy")))
    }

    fn padded_text() -> TextSource {
        TextSource::Random {
            texts: 3,
            seed: 5,
            eos_id: 1,
        }
    }

    /// Asserts a pass with every two-tower output within 1e-5; returns the largest difference.
    fn assert_exact(what: &str, r: &Report) -> f64 {
        let tt = r.two_tower.as_ref().expect("a two-tower report");
        assert!(r.pass, "{what}: {r:?}");
        assert!(tt.declared.is_empty(), "{what}: {:?}", tt.declared);
        let mut worst = 0.0f64;
        for (name, m) in [
            ("image_embeds", &tt.image_embeds),
            ("text_embeds", &tt.text_embeds),
            ("logits_per_image", &tt.logits_per_image),
        ] {
            let m = m.as_ref().expect("compared");
            assert!(m.max_abs_diff <= 1e-5, "{what}: {name} {m:?}");
            assert_eq!(m.top1_agreement, 1.0, "{what}: {name}");
            eprintln!("{what}: {name} max abs diff {:e}", m.max_abs_diff);
            worst = worst.max(m.max_abs_diff);
        }
        assert!(
            r.expect.as_ref().is_some_and(|m| m.within),
            "{what}: reference vs golden"
        );
        worst
    }

    /// The declared fields a failing report names.
    fn declared_fields(r: &Report) -> Vec<String> {
        r.two_tower
            .as_ref()
            .map(|t| t.declared.iter().map(|d| d.field.clone()).collect())
            .unwrap_or_default()
    }

    /// Whether any compared two-tower output is beyond its bound.
    fn numerically_apart(r: &Report) -> bool {
        let tt = r.two_tower.as_ref().expect("a two-tower report");
        [&tt.image_embeds, &tt.text_embeds, &tt.logits_per_image]
            .iter()
            .any(|m| m.as_ref().is_some_and(|m| !m.within))
    }

    /// Copies a folder, rewriting `weights` (a safetensors) through `edit` (name, shape, values)
    /// and `config` (a JSON file name) through `json`.
    fn plant(
        from: &Path,
        to: &Path,
        weights: &str,
        edit: impl Fn(&str, &[usize], &mut Vec<f32>),
        config: &str,
        json: impl Fn(&mut serde_json::Value),
    ) {
        std::fs::create_dir_all(to).expect("creates");
        for entry in std::fs::read_dir(from).expect("lists") {
            let entry = entry.expect("entry");
            if entry.path().is_file() {
                std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copies");
            }
        }
        let file = TensorFile::open(from.join(weights)).expect("opens");
        let specs: Vec<TensorSpec> = file
            .tensors()
            .iter()
            .map(|t| TensorSpec {
                name: t.name.clone(),
                dtype: DType::F32,
                shape: t.shape.clone(),
            })
            .collect();
        let target = to.join(weights);
        std::fs::remove_file(&target).expect("removes the copy");
        let meta: BTreeMap<String, String> = file.metadata().clone();
        let mut w =
            Writer::create(&target, Format::Safetensors, specs, meta, false).expect("writer");
        for t in file.tensors() {
            let mut v = file.read_f32(&t.name).expect("reads");
            edit(&t.name, &t.shape, &mut v);
            let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            w.write_next(&bytes).expect("writes");
        }
        w.finish().expect("finishes");
        let path = to.join(config);
        let mut value: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("reads")).expect("JSON");
        json(&mut value);
        std::fs::write(&path, value.to_string()).expect("writes");
    }

    fn keep(_: &str, _: &[usize], _: &mut Vec<f32>) {}
    fn same(_: &mut serde_json::Value) {}

    /// Swaps the values of two scalar tensors.
    fn swap_scalars(
        a: &'static str,
        b: &'static str,
        va: f32,
        vb: f32,
    ) -> impl Fn(&str, &[usize], &mut Vec<f32>) {
        move |name, _, v| {
            if name == a {
                v[0] = vb;
            } else if name == b {
                v[0] = va;
            }
        }
    }

    /// Rolls a `[C, D]` table up by one row (row i gets row i+1), as an off-by-one slice would.
    fn shift_rows(target: &'static str) -> impl Fn(&str, &[usize], &mut Vec<f32>) {
        move |name, shape, v| {
            if name == target {
                let d = *shape.last().expect("2-D");
                v.rotate_left(d);
            }
        }
    }

    #[test]
    fn hf_siglip_model_matches_and_planted_bugs_are_caught() {
        let dir = tempfile::tempdir().expect("temp dir");
        let case = "siglip-nohead";
        let good = dir.path().join("hf");
        build(case, "hf", &good);
        let worst = assert_exact(
            "hf siglip-nohead (golden ids)",
            &run(case, &good, golden_text(case)),
        );
        eprintln!("hf siglip-nohead: worst {worst:e}");
        let r = run(case, &good, padded_text());
        let tt = r.two_tower.as_ref().expect("two-tower");
        assert!(r.pass && tt.texts == 3 && tt.context == 8, "{r:?}");

        let f = TensorFile::open(good.join("model.safetensors")).expect("opens");
        let t = f.read_f32("logit_scale").expect("reads")[0];
        let b = f.read_f32("logit_bias").expect("reads")[0];
        let bad = dir.path().join("hf-tb");
        plant(
            &good,
            &bad,
            "model.safetensors",
            swap_scalars("logit_scale", "logit_bias", t, b),
            "config.json",
            same,
        );
        let r = run(case, &bad, golden_text(case));
        assert!(!r.pass && numerically_apart(&r), "t and b swapped: {r:?}");

        let bad = dir.path().join("hf-pos");
        plant(
            &good,
            &bad,
            "model.safetensors",
            shift_rows("text_model.embeddings.position_embedding.weight"),
            "config.json",
            same,
        );
        let r = run(case, &bad, golden_text(case));
        assert!(
            !r.pass && numerically_apart(&r),
            "text positions shifted: {r:?}"
        );

        let bad = dir.path().join("hf-eps");
        plant(&good, &bad, "model.safetensors", keep, "config.json", |c| {
            c["text_config"]["layer_norm_eps"] = serde_json::json!(1e-5);
        });
        let r = run(case, &bad, golden_text(case));
        assert!(!r.pass, "{r:?}");
        assert_eq!(
            declared_fields(&r),
            vec!["text_config.layer_norm_eps".to_string()]
        );

        // siglip-tiny's image tower has a head that SiglipModel cannot hold.
        let err = verify(&Options {
            source: fixture("siglip-tiny/checkpoint.npz"),
            converted: good.clone(),
            layout: None,
            device: "cpu".into(),
            precision: Precision::F32,
            input: InputSource::Random { batch: 2, seed: 0 },
            expect: None,
            tolerance: None,
            image_size: None,
            text: golden_text("siglip-tiny"),
            max_patches: None,
        });
        let Err(err) = err else {
            panic!("an image head went uncompared");
        };
        assert!(err.to_string().contains("image projection"), "{err}");
    }

    #[test]
    fn open_clip_folders_match_and_planted_bugs_are_caught() {
        let dir = tempfile::tempdir().expect("temp dir");
        for case in ["siglip-tiny", "siglip-nohead"] {
            let good = dir.path().join(format!("{case}-oc"));
            build(case, "open_clip", &good);
            let worst = assert_exact(
                &format!("open_clip {case}"),
                &run(case, &good, golden_text(case)),
            );
            eprintln!("open_clip {case}: worst {worst:e}");
            assert!(run(case, &good, padded_text()).pass);
        }
        let case = "siglip-tiny";
        let good = dir.path().join("siglip-tiny-oc");
        let cfg = "open_clip_config.json";
        let w = "open_clip_model.safetensors";
        let text_cfg = |f: fn(&mut serde_json::Value)| {
            move |c: &mut serde_json::Value| f(&mut c["model_cfg"]["text_cfg"])
        };

        let f = TensorFile::open(good.join(w)).expect("opens");
        let t = f.read_f32("logit_scale").expect("reads")[0];
        let b = f.read_f32("logit_bias").expect("reads")[0];
        let bad = dir.path().join("oc-tb");
        plant(
            &good,
            &bad,
            w,
            swap_scalars("logit_scale", "logit_bias", t, b),
            cfg,
            same,
        );
        let r = run(case, &bad, golden_text(case));
        assert!(!r.pass && numerically_apart(&r), "t and b swapped: {r:?}");

        let bad = dir.path().join("oc-pos");
        plant(
            &good,
            &bad,
            w,
            shift_rows("text.positional_embedding"),
            cfg,
            same,
        );
        let r = run(case, &bad, golden_text(case));
        assert!(
            !r.pass && numerically_apart(&r),
            "text positions shifted: {r:?}"
        );

        // Declared settings: each is named, and each that changes the arithmetic on EOS-padded
        // ids also shows in the numbers.
        // (name, the text_cfg edit, the field named, whether the numbers show it too).
        type Plant = (&'static str, fn(&mut serde_json::Value), &'static str, bool);
        let plants: [Plant; 5] = [
            (
                "first",
                |t| t["pool_type"] = serde_json::json!("first"),
                "model_cfg.text_cfg.pool_type",
                true,
            ),
            (
                "eos",
                |t| {
                    t["pool_type"] = serde_json::json!("eos");
                    t["eos_id"] = serde_json::json!(1);
                },
                "model_cfg.text_cfg.pool_type",
                true,
            ),
            (
                "causal",
                |t| t["no_causal_mask"] = serde_json::json!(false),
                "model_cfg.text_cfg.no_causal_mask",
                true,
            ),
            (
                "eps",
                |t| t["norm_kwargs"]["eps"] = serde_json::json!(1e-5),
                "model_cfg.text_cfg.norm_kwargs.eps",
                false,
            ),
            (
                "erf",
                |t| t["act_kwargs"] = serde_json::json!({}),
                "model_cfg.text_cfg.act_kwargs.approximate",
                true,
            ),
        ];
        for (name, edit, field, numeric) in plants {
            let bad = dir.path().join(format!("oc-{name}"));
            plant(&good, &bad, w, keep, cfg, text_cfg(edit));
            let r = run(case, &bad, padded_text());
            assert!(!r.pass, "{name}: {r:?}");
            assert_eq!(declared_fields(&r), vec![field.to_string()], "{name}");
            if numeric {
                assert!(
                    numerically_apart(&r),
                    "{name}: the numbers do not show it: {r:?}"
                );
            }
        }
    }

    #[test]
    fn a_two_tower_folder_is_not_opened_as_a_single_tower_layout() {
        let dir = tempfile::tempdir().expect("tempdir");
        let Err(err) = open(dir.path(), Layout::Timm, Device::Cpu, Kind::Float) else {
            panic!("a two-tower folder was opened as timm");
        };
        assert!(
            matches!(&err, Error::LayoutMismatch { path, layout: "timm", .. } if path == dir.path()),
            "{err}"
        );
    }
}
