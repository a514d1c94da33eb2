//! The target forwards: a converted file run by its own key names with the semantics of the library it is for.
//!
//! One module per layout ([`timm`], [`hf`] and [`hf_siglip`], [`open_clip`], [`clip`]), and
//! [`two_tower`] for the two-tower (SigLIP) conversions of the hf and open_clip layouts; the
//! SigLIP 2 NaFlex conversions run on patch inputs: [`hf_siglip2`] (the image tower of an hf
//! `Siglip2Model`, inside [`two_tower`]) and [`timm_naflex`] (timm's `NaFlexVit`); each reads its
//! file's keys directly and never asks the converter how it mapped them. What they
//! share here is the declared configuration (`vitconv.config`), the pre-norm block
//! arithmetic on PyTorch-layout weights, and the outputs they hand back.

pub mod clip;
mod clip_style;
pub mod hf;
pub mod hf_siglip;
pub mod hf_siglip2;
pub mod open_clip;
pub mod timm;
pub mod timm_naflex;
pub mod two_tower;

use std::path::{Path, PathBuf};

use serde::Deserialize;
use tch::{Device, Kind, Tensor};
use vitconv_convert::record::{ConfigRecord, DeclaredGelu, DeclaredHead};

use crate::error::{Error, Result};
use crate::ops::{self, Gelu};
use crate::params::{dim, Params};

/// The converted layouts `verify` can run: the converter's one list of layouts and their names.
pub use vitconv_convert::Layout;

/// The input normalisation a target declares: it expects `((x + 1) / 2 - mean) / std` for
/// source pixels `x` in [-1, 1].
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
pub struct InputNorm {
    /// A label for the report: the declared norm's name, or where the values came from (`preprocessor_config`, ...).
    #[serde(default)]
    pub name: String,
    /// Per-channel (RGB) mean subtracted from [0, 1] pixels.
    pub mean: [f64; 3],
    /// Per-channel (RGB) standard deviation the centred pixels are divided by.
    pub std: [f64; 3],
}

impl InputNorm {
    /// The source's own space: mean 0.5, std 0.5 on [0, 1] pixels.
    pub fn unit() -> InputNorm {
        InputNorm {
            name: "unit".into(),
            mean: [0.5; 3],
            std: [0.5; 3],
        }
    }

    /// Maps NHWC source pixels in [-1, 1] to the NCHW input this target expects.
    pub fn apply(&self, nhwc: &Tensor) -> Result<Tensor> {
        let device = nhwc.device();
        let mean = Tensor::f_from_slice(&self.mean)?
            .f_to_kind(Kind::Float)?
            .f_to_device(device)?;
        let std = Tensor::f_from_slice(&self.std)?
            .f_to_kind(Kind::Float)?
            .f_to_device(device)?;
        let x = nhwc
            .f_add_scalar(1.0)?
            .f_mul_scalar(0.5)?
            .f_sub(&mean)?
            .f_div(&std)?;
        Ok(x.f_permute([0, 3, 1, 2])?.f_contiguous()?)
    }

    /// Maps NaFlex patches `[B, N, P*P*3]` of source pixels in [-1, 1], flattened (py, px, c), to
    /// the space this target expects, channel by channel.
    pub fn apply_patches(&self, patches: &Tensor) -> Result<Tensor> {
        let size = patches.size();
        let device = patches.device();
        let mean = Tensor::f_from_slice(&self.mean)?
            .f_to_kind(Kind::Float)?
            .f_to_device(device)?;
        let std = Tensor::f_from_slice(&self.std)?
            .f_to_kind(Kind::Float)?
            .f_to_device(device)?;
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
        let x = patches
            .f_reshape([b, n, -1, 3])?
            .f_add_scalar(1.0)?
            .f_mul_scalar(0.5)?
            .f_sub(&mean)?
            .f_div(&std)?;
        Ok(x.f_reshape(size.as_slice())?)
    }
}

/// What a converted file declares, from its `vitconv.config` record ([`ConfigRecord`]), as the targets use it.
///
/// Every field is optional here so that a file from elsewhere, with no record, still runs with the library's
/// defaults; a file that has a record must carry the whole typed record, which [`ConfigRecord::from_json`]
/// checks field by field, so a renamed or missing field is an error, never a default.
#[derive(Debug, Clone, Default)]
pub struct DeclaredConfig {
    /// The resolution the output runs at, in pixels.
    pub image_size: Option<usize>,
    /// The patch side, in pixels.
    pub patch_size: Option<usize>,
    /// The token width.
    pub hidden: Option<usize>,
    /// The number of encoder blocks.
    pub depth: Option<usize>,
    /// Attention heads per block.
    pub heads: Option<usize>,
    /// The MLP's hidden width.
    pub mlp: Option<usize>,
    /// How the tokens are pooled (`token`, `gap`, `map`).
    pub classifier: Option<String>,
    /// The head's output width, where the output keeps a head.
    pub num_classes: Option<usize>,
    /// The `pre_logits` width, where the output keeps that layer.
    pub representation: Option<usize>,
    /// The GELU the output is declared with (`tanh`, `erf`, `quick`).
    pub gelu: Option<String>,
    /// The LayerNorm epsilon the output is declared with.
    pub layer_norm_eps: Option<f64>,
    /// Whether the output has an `ln_pre` LayerNorm before the blocks.
    pub ln_pre: Option<bool>,
    /// The pixel normalisation the output expects.
    pub input_norm: Option<InputNorm>,
    /// What the output's head is (`head`, `proj` for a CLIP-style projection, `none`, ...).
    pub head: Option<String>,
    /// The source head's bias, which a CLIP-style `proj` has no place for.
    pub head_bias: Option<Vec<f32>>,
    /// The element type the weights were written in (`f32`, `f16`, `bf16`).
    pub dtype: Option<String>,
    /// How the position embedding was resampled (`vit-jax`, `bilinear`, `bicubic`), when it was.
    pub resize: Option<String>,
}

impl DeclaredConfig {
    /// Reads `vitconv.config` from a file's metadata; absent means "nothing declared".
    pub fn from_metadata(
        path: &Path,
        metadata: &std::collections::BTreeMap<String, String>,
    ) -> Result<DeclaredConfig> {
        match metadata.get(vitconv_convert::meta::CONFIG) {
            Some(text) => ConfigRecord::from_json(text)
                .map(DeclaredConfig::from)
                .map_err(|source| Error::Record {
                    path: path.to_path_buf(),
                    source: Box::new(source),
                }),
            None => Ok(DeclaredConfig::default()),
        }
    }

    /// The resampling method of a resized position embedding, as `vitconv.config` declares it.
    pub fn resize_method(&self) -> Option<String> {
        self.resize.clone()
    }

    /// The declared GELU, or `default` when none is declared.
    pub fn gelu_or(&self, path: &Path, default: Gelu) -> Result<Gelu> {
        match &self.gelu {
            Some(name) => Gelu::from_config(name).ok_or_else(|| Error::Unreadable {
                path: path.to_path_buf(),
                reason: format!(
                    "vitconv.config declares gelu {name:?}; expected tanh, erf or quick"
                ),
            }),
            None => Ok(default),
        }
    }
}

impl From<ConfigRecord> for DeclaredConfig {
    fn from(r: ConfigRecord) -> DeclaredConfig {
        let gelu = match r.gelu {
            DeclaredGelu::Tanh => "tanh",
            DeclaredGelu::Erf => "erf",
            DeclaredGelu::Quick => "quick",
        };
        let head = match r.head {
            DeclaredHead::Head => "head",
            DeclaredHead::Proj => "proj",
            DeclaredHead::Map => "map",
            DeclaredHead::Projector => "projector",
            DeclaredHead::None => "none",
        };
        DeclaredConfig {
            image_size: r.image_size,
            patch_size: Some(r.patch_size),
            hidden: Some(r.hidden),
            depth: Some(r.depth),
            heads: r.heads,
            mlp: Some(r.mlp),
            classifier: Some(r.classifier.as_str().to_string()),
            num_classes: r.num_classes,
            representation: r.representation,
            gelu: Some(gelu.to_string()),
            layer_norm_eps: Some(r.layer_norm_eps),
            ln_pre: Some(r.ln_pre),
            input_norm: Some(InputNorm {
                name: r.input_norm.name,
                mean: r.input_norm.mean,
                std: r.input_norm.std,
            }),
            head: Some(head.to_string()),
            head_bias: r.head_bias,
            dtype: Some(r.dtype),
            resize: r.resize,
        }
    }
}

/// What a target's pooled output corresponds to on the reference side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeatureKind {
    /// The normed token 0 or mean, before any `pre_logits` layer.
    Pooled,
    /// After the `pre_logits` dense + tanh (HF's pooler).
    Representation,
}

/// A target forward's results, in the target's dtype on its device.
pub struct TargetOutputs {
    /// The pooled features (before the head or projection).
    pub features: Tensor,
    /// Which reference output the features are compared with.
    pub features_kind: FeatureKind,
    /// The head's (or CLIP projection's) output, if the file has one.
    pub logits: Option<Tensor>,
}

/// The architecture a target file holds, for checking it against the source.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TargetArch {
    /// The token width.
    pub hidden: usize,
    /// The number of encoder blocks.
    pub depth: usize,
    /// Attention heads per block.
    pub heads: usize,
    /// The MLP's hidden width.
    pub mlp: usize,
    /// The patch side, in pixels.
    pub patch_size: usize,
    /// The side of the token grid, in patches.
    pub grid: usize,
    /// The resolution the target runs at, in pixels.
    pub image_size: usize,
    /// Whether a class token is prepended to the patches.
    pub class_token: bool,
}

/// A loaded target model.
pub struct Target {
    /// The layout the converted path was read as.
    pub layout: Layout,
    /// The architecture the file holds, for checking it against the source.
    pub arch: TargetArch,
    /// The input normalisation the target expects.
    pub norm: InputNorm,
    /// The head bias the file left out (CLIP-style `proj` = head kernel): subtract it from the
    /// reference's logits before comparing.
    pub logits_offset: Option<Vec<f32>>,
    /// What was assumed or read, one sentence each, for the report.
    pub notes: Vec<String>,
    /// Why the target cannot equal the source even when converted right (OpenAI CLIP's fixed
    /// semantics, a declared exact GELU): its drift is reported, judged only on request.
    pub inexact: Option<String>,
    /// What the file declares (`vitconv.config`, `vitconv.notes`).
    pub declared: DeclaredConfig,
    model: Model,
}

enum Model {
    Timm(timm::Timm),
    Hf(hf::Hf),
    HfSiglip(hf_siglip::HfSiglip),
    OpenClip(open_clip::OpenClip),
    Clip(clip::Clip),
}

impl Target {
    /// Runs the target on NCHW pixels already normalised its way.
    pub fn forward(&self, nchw: &Tensor) -> Result<TargetOutputs> {
        match &self.model {
            Model::Timm(m) => m.forward(nchw),
            Model::Hf(m) => m.forward(nchw),
            Model::HfSiglip(m) => m.forward(nchw),
            Model::OpenClip(m) => m.forward(nchw),
            Model::Clip(m) => m.forward(nchw),
        }
    }

    /// The dtype the weights were loaded in.
    pub fn kind(&self) -> Kind {
        match &self.model {
            Model::Timm(m) => m.kind(),
            Model::Hf(m) => m.kind(),
            Model::HfSiglip(m) => m.kind(),
            Model::OpenClip(m) => m.kind(),
            Model::Clip(m) => m.kind(),
        }
    }
}

/// Opens a converted file or hf directory: the layout comes from `--layout`, else the file's
/// metadata or config, else the keys.
pub fn open(path: &Path, layout: Option<Layout>, device: Device, kind: Kind) -> Result<Target> {
    if !path.exists() {
        return Err(Error::NotFound {
            path: path.to_path_buf(),
        });
    }
    if path.is_dir() {
        let folder = folder_config(path)?;
        let timm_folder = folder_layout(path)? == Some(Layout::Timm);
        if let Some(l) = layout.filter(|l| *l != Layout::Hf && !(*l == Layout::Timm && timm_folder))
        {
            return Err(Error::LayoutMismatch {
                path: path.to_path_buf(),
                layout: l.as_str(),
                holds: "a directory is a transformers (hf) or timm folder conversion",
            });
        }
        if timm_folder && layout != Some(Layout::Hf) {
            let (m, parts) = timm::Timm::open_folder(path, device, kind)?;
            return Ok(Target::build(Layout::Timm, Model::Timm(m), parts));
        }
        if hf_siglip::is_siglip(folder.as_ref().and_then(|f| f.model_type.as_deref())) {
            let (m, parts) = hf_siglip::HfSiglip::open(path, device, kind)?;
            return Ok(Target::build(Layout::Hf, Model::HfSiglip(m), parts));
        }
        let (m, parts) = hf::Hf::open(path, device, kind)?;
        return Ok(Target::build(Layout::Hf, Model::Hf(m), parts));
    }
    let file = vitconv_tensors::TensorFile::open(path)?;
    let declared_layout = file.metadata().get(vitconv_convert::meta::LAYOUT).cloned();
    let layout = match (layout, declared_layout.as_deref()) {
        (Some(l), _) => l,
        (None, Some(name)) => Layout::parse(name).ok_or_else(|| Error::NotAModel {
            path: path.to_path_buf(),
            reason: format!("metadata vitconv.layout is {name:?}; give --layout timm|hf|open_clip|clip"),
        })?,
        (None, None) => guess_layout(&file).ok_or_else(|| Error::NotAModel {
            path: path.to_path_buf(),
            reason: "no vitconv.layout metadata and the keys are neither timm's nor CLIP's; give --layout".into(),
        })?,
    };
    let config = DeclaredConfig::from_metadata(path, file.metadata())?;
    let params = Params::new(file, "", device, kind);
    match layout {
        Layout::Timm => {
            let (m, parts) = timm::Timm::open(params, &config)?;
            Ok(Target::build(Layout::Timm, Model::Timm(m), parts))
        }
        Layout::OpenClip => {
            let (m, parts) = open_clip::OpenClip::open(params, &config)?;
            Ok(Target::build(Layout::OpenClip, Model::OpenClip(m), parts))
        }
        Layout::Clip => {
            let (m, parts) = clip::Clip::open(params, &config)?;
            Ok(Target::build(Layout::Clip, Model::Clip(m), parts))
        }
        Layout::Hf => Err(Error::LayoutMismatch {
            path: path.to_path_buf(),
            layout: Layout::Hf.as_str(),
            holds: "an hf conversion is a directory (config.json + model.safetensors), this is one file",
        }),
    }
}

/// The two fields of a folder's `config.json` that tell a timm folder (an `architecture`, no `model_type`) from
/// a transformers one.
#[derive(Deserialize)]
struct FolderConfig {
    model_type: Option<String>,
    architecture: Option<String>,
}

/// A folder's `config.json`, where it has one.
fn folder_config(path: &Path) -> Result<Option<FolderConfig>> {
    let config_path = path.join("config.json");
    if config_path.exists() {
        Ok(Some(hf::read_json(&config_path)?))
    } else {
        Ok(None)
    }
}

/// The layout a converted folder is in, from its files: an `open_clip_config.json` makes it open_clip's, a
/// `config.json` naming a timm `architecture` timm's, any other `config.json` transformers'; `None` for a
/// path that is not a folder or a folder with neither file.
pub fn folder_layout(path: &Path) -> Result<Option<Layout>> {
    if !path.is_dir() {
        return Ok(None);
    }
    if path.join("open_clip_config.json").exists() {
        return Ok(Some(Layout::OpenClip));
    }
    Ok(folder_config(path)?.map(|f| {
        if f.architecture.is_some() && f.model_type.is_none() {
            Layout::Timm
        } else {
            Layout::Hf
        }
    }))
}

/// Recognises a layout from its keys when no metadata says it, through the converter's layout registry (the
/// recogniser `inspect` uses).
fn guess_layout(file: &vitconv_tensors::TensorFile) -> Option<Layout> {
    vitconv_convert::layout::recognise_layout(file.tensors())
}

/// The reason a target that declares `gelu` cannot equal the tanh-GELU source, if any.
pub(crate) fn gelu_inexact(gelu: Gelu) -> Option<String> {
    match gelu {
        Gelu::Tanh => None,
        other => Some(format!(
            "the converted model declares {other:?} GELU where the flax source uses the tanh approximation (about 1e-4 apart)"
        )),
    }
}

/// What every layout module hands back beside its model.
pub(crate) struct Parts {
    pub arch: TargetArch,
    pub norm: InputNorm,
    pub logits_offset: Option<Vec<f32>>,
    pub notes: Vec<String>,
    pub inexact: Option<String>,
    pub declared: DeclaredConfig,
}

impl Target {
    fn build(layout: Layout, model: Model, parts: Parts) -> Target {
        let Parts {
            arch,
            norm,
            logits_offset,
            notes,
            inexact,
            declared,
        } = parts;
        Target {
            layout,
            arch,
            norm,
            logits_offset,
            notes,
            inexact,
            declared,
            model,
        }
    }
}

/// A pre-norm transformer block in PyTorch layouts (`[out, in]` weights), q, k and v apart.
pub(crate) struct Block {
    pub ln1: (Tensor, Tensor),
    pub q: (Tensor, Tensor),
    pub k: (Tensor, Tensor),
    pub v: (Tensor, Tensor),
    pub proj: (Tensor, Tensor),
    pub ln2: (Tensor, Tensor),
    pub fc1: (Tensor, Tensor),
    pub fc2: (Tensor, Tensor),
}

/// How the blocks of one library compute.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BlockSemantics {
    pub heads: usize,
    pub gelu: Gelu,
    pub eps: f64,
    /// OpenAI CLIP's LayerNorm computes in float32 whatever the model's dtype.
    pub ln_fp32: bool,
}

impl BlockSemantics {
    pub(crate) fn norm(&self, x: &Tensor, wb: &(Tensor, Tensor)) -> Result<Tensor> {
        if self.ln_fp32 {
            ops::layer_norm_fp32(x, &wb.0, &wb.1, self.eps)
        } else {
            ops::layer_norm(x, &wb.0, &wb.1, self.eps)
        }
    }
}

impl Block {
    /// `x + attn(ln1(x))`, then `x + mlp(ln2(x))`, attention by libtorch's fused SDPA kernel.
    pub(crate) fn forward(&self, x: &Tensor, s: &BlockSemantics) -> Result<Tensor> {
        self.forward_masked(x, s, false)
    }

    /// [`Block::forward`] with a causal mask when `causal` (open_clip's text tower unless
    /// `no_causal_mask`: position i attends to positions 0..=i only).
    pub(crate) fn forward_masked(
        &self,
        x: &Tensor,
        s: &BlockSemantics,
        causal: bool,
    ) -> Result<Tensor> {
        self.forward_with(x, s, &|q, k, v| {
            if causal {
                ops::attention_sdpa_causal(q, k, v)
            } else {
                ops::attention_sdpa(q, k, v)
            }
        })
    }

    /// [`Block::forward`] with a padding mask: the boolean `mask` (broadcast to `[B, H, N, N]`,
    /// true = attend) as timm and transformers pass it to SDPA (see [`ops::attention_sdpa_masked`]).
    pub(crate) fn forward_padded(
        &self,
        x: &Tensor,
        s: &BlockSemantics,
        mask: &Tensor,
    ) -> Result<Tensor> {
        self.forward_with(x, s, &|q, k, v| ops::attention_sdpa_masked(q, k, v, mask))
    }

    /// The block with `attend` computing attention on `[B, H, N, Dh]` queries, keys and values.
    fn forward_with(
        &self,
        x: &Tensor,
        s: &BlockSemantics,
        attend: &dyn Fn(&Tensor, &Tensor, &Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let size = x.size();
        let (b, n, d) = match size.as_slice() {
            [b, n, d] => (*b, *n, *d),
            other => {
                return Err(Error::UnexpectedShape {
                    what: "an encoder block's input",
                    expected: "[B, N, D]",
                    found: other.to_vec(),
                })
            }
        };
        let h = dim(s.heads)?;
        let dh = d / h.max(1);
        let y = s.norm(x, &self.ln1)?;
        let split = |wb: &(Tensor, Tensor)| -> Result<Tensor> {
            Ok(ops::linear(&y, &wb.0, Some(&wb.1))?
                .f_reshape([b, n, h, dh])?
                .f_transpose(1, 2)?)
        };
        let (q, k, v) = (split(&self.q)?, split(&self.k)?, split(&self.v)?);
        let o = attend(&q, &k, &v)?;
        let o = o.f_transpose(1, 2)?.f_reshape([b, n, d])?;
        let x = x.f_add(&ops::linear(&o, &self.proj.0, Some(&self.proj.1))?)?;
        let y = s.norm(&x, &self.ln2)?;
        let y = s
            .gelu
            .apply(&ops::linear(&y, &self.fc1.0, Some(&self.fc1.1))?)?;
        Ok(x.f_add(&ops::linear(&y, &self.fc2.0, Some(&self.fc2.1))?)?)
    }
}

/// Loads a `weight`/`bias` pair under `base`.
pub(crate) fn pair(p: &Params, base: &str, w: &[usize], b: &[usize]) -> Result<(Tensor, Tensor)> {
    Ok((
        p.load(&format!("{base}.weight"), w)?,
        p.load(&format!("{base}.bias"), b)?,
    ))
}

/// Splits a fused `[3D, D]` in-projection (and its `[3D]` bias) into q, k and v, in that
/// order, as timm's `Attention` (reshape to `(3, H, Dh)`) and `nn.MultiheadAttention`
/// (`in_proj_weight.chunk(3)`) both read it.
pub(crate) fn split_qkv(w: &Tensor, b: &Tensor) -> Result<[(Tensor, Tensor); 3]> {
    let ws = w.f_chunk(3, 0)?;
    let bs = b.f_chunk(3, 0)?;
    match (ws.as_slice(), bs.as_slice()) {
        ([wq, wk, wv], [bq, bk, bv]) => Ok([
            (wq.shallow_clone(), bq.shallow_clone()),
            (wk.shallow_clone(), bk.shallow_clone()),
            (wv.shallow_clone(), bv.shallow_clone()),
        ]),
        _ => Err(Error::UnexpectedShape {
            what: "a fused qkv in-projection split in three",
            expected: "[3D, D] and [3D]",
            found: w.size(),
        }),
    }
}

/// The token sequence of a ViT: the patch convolution's output `y` (`[B, D, h, w]`) as rows, the class token
/// (any tensor of `D` values) prepended where there is one, then the position embedding added.
pub(crate) fn tokens(y: &Tensor, class: Option<&Tensor>, pos: &Tensor) -> Result<Tensor> {
    let x = y.f_flatten(2, 3)?.f_transpose(1, 2)?;
    let x = match class {
        Some(c) => {
            let (batch, d) = match x.size().as_slice() {
                [b, _, d] => (*b, *d),
                _ => (1, -1),
            };
            let c = c.f_reshape([1, 1, d])?.f_expand([batch, 1, d], false)?;
            Tensor::f_cat(&[c, x], 1)?
        }
        None => x,
    };
    Ok(x.f_add(pos)?)
}

/// The token grid side of a position embedding with `rows` rows (after any class token).
pub(crate) fn grid_of(path: &Path, tensor: &str, rows: usize, class_token: bool) -> Result<usize> {
    let patches = rows.saturating_sub(usize::from(class_token));
    let g = crate::references::isqrt(patches);
    if g == 0 || g.checked_mul(g) != Some(patches) {
        return Err(Error::BadShape {
            path: path.to_path_buf(),
            tensor: tensor.to_owned(),
            expected: "a square token grid (plus the class token)".into(),
            found: vec![rows],
        });
    }
    Ok(g)
}

/// Converts a shape read from a file into the first dims, or a shape error.
pub(crate) fn shape2(p: &Params, name: &str) -> Result<[usize; 2]> {
    let s = p.require_shape(name, "needed by the forward")?;
    <[usize; 2]>::try_from(s).map_err(|_| bad_shape(p.path(), name, "2-D", s))
}

pub(crate) fn bad_shape(path: &Path, name: &str, expected: &str, found: &[usize]) -> Error {
    Error::BadShape {
        path: path.to_path_buf(),
        tensor: name.to_owned(),
        expected: expected.to_owned(),
        found: found.to_vec(),
    }
}

/// A side file beside a converted file: `<path minus extension><suffix>`.
pub(crate) fn side_file(path: &Path, suffix: &str) -> PathBuf {
    let stem = path.with_extension("");
    let mut s = stem.into_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_norm_maps_source_pixels_to_nchw_in_the_declared_space() {
        let clip = InputNorm {
            name: "clip".into(),
            mean: [0.48145466, 0.4578275, 0.40821073],
            std: [0.26862954, 0.26130258, 0.27577711],
        };
        // One 1x2 NHWC image: pixel 0 all -1 (black), pixel 1 all +1 (white).
        let x = Tensor::from_slice(&[-1.0f32, -1.0, -1.0, 1.0, 1.0, 1.0]).reshape([1, 1, 2, 3]);
        let y = clip.apply(&x).expect("applies");
        assert_eq!(y.size(), vec![1, 3, 1, 2]);
        for c in 0..3 {
            let black = y.double_value(&[0, c, 0, 0]);
            let white = y.double_value(&[0, c, 0, 1]);
            let (m, s) = (clip.mean[c as usize], clip.std[c as usize]);
            assert!((black - (0.0 - m) / s).abs() < 1e-5, "channel {c}: {black}");
            assert!((white - (1.0 - m) / s).abs() < 1e-5, "channel {c}: {white}");
        }
        let unit = InputNorm::unit().apply(&x).expect("applies");
        assert!(
            unit.permute([0, 2, 3, 1]).equal(&x),
            "unit norm is the source's own space"
        );
    }

    #[test]
    fn the_resize_method_comes_from_config() {
        let c = DeclaredConfig {
            resize: Some("bilinear".into()),
            ..DeclaredConfig::default()
        };
        assert_eq!(c.resize_method().as_deref(), Some("bilinear"));
        assert_eq!(DeclaredConfig::default().resize_method(), None);
    }

    #[test]
    fn layouts_parse_by_their_metadata_names() {
        for l in [Layout::Timm, Layout::Hf, Layout::OpenClip, Layout::Clip] {
            assert_eq!(Layout::parse(l.as_str()), Some(l));
        }
        assert_eq!(Layout::parse("keras"), None);
    }

    #[test]
    fn fused_qkv_splits_in_q_k_v_order() {
        let w = Tensor::arange(6 * 2, (Kind::Float, Device::Cpu)).reshape([6, 2]);
        let b = Tensor::arange(6, (Kind::Float, Device::Cpu));
        let [q, k, v] = split_qkv(&w, &b).expect("splits");
        assert_eq!(q.1.double_value(&[0]), 0.0);
        assert_eq!(k.1.double_value(&[0]), 2.0);
        assert_eq!(v.1.double_value(&[1]), 5.0);
        assert_eq!(k.0.double_value(&[0, 0]), 4.0);
    }

    #[test]
    fn a_fused_qkv_that_does_not_split_in_three_is_an_unexpected_shape() {
        let w = Tensor::zeros([2, 1], (Kind::Float, Device::Cpu));
        let b = Tensor::zeros([2], (Kind::Float, Device::Cpu));
        let Err(err) = split_qkv(&w, &b) else {
            panic!("two rows split in three");
        };
        assert!(
            matches!(&err, Error::UnexpectedShape { found, .. } if found == &[2, 1]),
            "{err}"
        );
    }

    #[test]
    fn a_layout_the_path_cannot_be_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let Err(err) = open(dir.path(), Some(Layout::OpenClip), Device::Cpu, Kind::Float) else {
            panic!("a directory was opened as an open_clip file");
        };
        assert!(
            matches!(
                &err,
                Error::LayoutMismatch { path, layout: "open_clip", .. } if path == dir.path()
            ),
            "{err}"
        );
        let file =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/vit-token/input.npy");
        let Err(err) = open(&file, Some(Layout::Hf), Device::Cpu, Kind::Float) else {
            panic!("a single file was opened as an hf directory");
        };
        assert!(
            matches!(&err, Error::LayoutMismatch { path, layout: "hf", .. } if path == &file),
            "{err}"
        );
    }
}
