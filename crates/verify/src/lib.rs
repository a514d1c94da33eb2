//! Runs a Google ViT `.npz` (google-research/vision_transformer or big_vision) and its conversion side by side on libtorch and reports how far their outputs are apart.
//!
//! - [`references`]: the flax model straight from the `.npz`, one module per source family
//!   (never the converter's mapping code).
//! - [`targets`]: the converted file read by its own keys, one module per layout.
//! - [`registry`]: which reference runs each source family (named by the converter's source registry) and which
//!   targets run each layout, as one of four routes (square pixels, two towers, NaFlex two towers, NaFlex image
//!   tower); [`verify`] dispatches through it, and its coverage test fails for any converting family x layout
//!   pair without a route or a declared reason.
//! - [`input`]: the shared pixels; [`compare`]: metrics and the pass rule.
//! - [`verify`] ties them together and returns a [`Report`]; a mismatch is a report with
//!   `pass: false`, while [`Error`] means the comparison could not run (bad input).
//!
//! A big_vision two-tower (SigLIP) source against a two-tower conversion (an hf `SiglipModel`
//! or an open_clip folder) compares three outputs, image embeddings, text embeddings (both
//! L2-normalised, as the models return them) and `logits_per_image`, on the same pixels and
//! token ids, and lists every declared setting that contradicts the source (text LayerNorm
//! eps, causal mask, pooling, GELU) as a failure of its own ([`TwoTowerReport::declared`]).
//! The same source against an image-tower-only conversion (timm, a `SiglipVisionModel`)
//! compares that tower's outputs before normalisation: the MAP head's output as the pooled
//! features and, where the tower has a `head`, its output as the logits, so a scale error
//! that normalisation would hide still shows.
//!
//! A SigLIP 2 NaFlex source runs on patch inputs instead of square pixels (`naflex`): each
//! image resized to its own patch grid, patchified and padded ([`input::naflex`]), against an hf
//! `Siglip2Model` folder (both towers) or a timm `NaFlexVit` (the image tower).

#![deny(missing_docs)]

pub mod compare;
mod error;
pub mod input;
mod naflex;
pub mod ops;
mod params;
pub mod references;
pub mod registry;
pub mod targets;

use std::path::PathBuf;
use std::time::Instant;

use tch::{Device, Kind, Tensor};

pub use compare::Metrics;
pub use error::{Error, Result};
pub use input::{InputSource, TextSource};
pub use targets::{InputNorm, Layout};

use crate::references::{Reference, SourceArch, SourceOptions};
use crate::registry::Route;
use crate::targets::FeatureKind;
use vitconv_convert::TowerChoice;

/// Default tolerance when the target runs in float32 and declares the source's semantics:
/// what is left is float rounding (the golden models differ by about 1e-6).
pub const F32_TOLERANCE: f64 = 1e-4;
/// Default tolerance of a two-tower comparison in float32: image and text embeddings are unit
/// vectors and the tiny golden models' logits are within a few units, so float rounding leaves
/// about 1e-7; 1e-5 keeps a hundredfold margin and still catches a LayerNorm eps of 1e-5.
pub const TWO_TOWER_F32_TOLERANCE: f64 = 1e-5;
/// Default tolerance for a float16 target forward (10 mantissa bits, about 1e-3 per operation).
pub const F16_TOLERANCE: f64 = 1e-2;
/// Default tolerance for a bfloat16 target forward (7 mantissa bits, about 4e-3 per operation,
/// accumulated over the blocks).
pub const BF16_TOLERANCE: f64 = 5e-2;

/// The precision of the target's forward (the reference always runs in float32).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// 32-bit IEEE 754 floats (`f32`, `float32`).
    F32,
    /// bfloat16 (`bf16`, `bfloat16`).
    Bf16,
    /// 16-bit IEEE 754 half precision (`f16`, `float16`, `half`).
    F16,
}

impl Precision {
    /// Reads a precision by any of its names (`f32`/`float32`, `bf16`/`bfloat16`, `f16`/`float16`/`half`); `None` for another.
    pub fn parse(name: &str) -> Option<Precision> {
        match name {
            "f32" | "float32" => Some(Precision::F32),
            "bf16" | "bfloat16" => Some(Precision::Bf16),
            "f16" | "float16" | "half" => Some(Precision::F16),
            _ => None,
        }
    }

    /// The short name the report uses (`f32`, `bf16`, `f16`).
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::F16 => "f16",
        }
    }

    fn kind(self) -> Kind {
        match self {
            Precision::F32 => Kind::Float,
            Precision::Bf16 => Kind::BFloat16,
            Precision::F16 => Kind::Half,
        }
    }

    /// The tolerance a comparison is judged against when none is given: for a forward in this precision of
    /// weights stored as `stored` (where the file says), and with `embeddings` set for comparisons of a SigLIP
    /// model's outputs (its embeddings, or its image tower alone), whose float32 bound is the tighter
    /// [`TWO_TOWER_F32_TOLERANCE`]. Weights written in a narrower type than the forward runs in lost precision
    /// already: the bound is then the looser of the two types'.
    pub fn tolerance_for(self, stored: Option<Precision>, embeddings: bool) -> f64 {
        match (self, stored) {
            (Precision::F32, None | Some(Precision::F32)) if embeddings => TWO_TOWER_F32_TOLERANCE,
            _ => stored
                .map_or(F32_TOLERANCE, Precision::default_tolerance)
                .max(self.default_tolerance()),
        }
    }

    /// The default tolerance for this precision.
    pub fn default_tolerance(self) -> f64 {
        match self {
            Precision::F32 => F32_TOLERANCE,
            Precision::Bf16 => BF16_TOLERANCE,
            Precision::F16 => F16_TOLERANCE,
        }
    }
}

/// What to verify and how.
#[derive(Debug, Clone)]
pub struct Options {
    /// The source checkpoint (`.npz`) the reference runs.
    pub source: PathBuf,
    /// The converted file or folder the target runs.
    pub converted: PathBuf,
    /// The layout to read the converted path as; `None` takes it from its metadata, config or keys.
    pub layout: Option<Layout>,
    /// `auto`, `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    /// The precision of the target's forward.
    pub precision: Precision,
    /// Where the pixels both forwards see come from.
    pub input: InputSource,
    /// Logits produced elsewhere (e.g. by the original JAX code) to hold the reference against.
    pub expect: Option<PathBuf>,
    /// The tolerance to judge against; `None` takes the default for the precisions involved.
    pub tolerance: Option<f64>,
    /// The source's resolution where its file cannot say it (a big_vision sincos2d model);
    /// without it the converted file's declared `image_size` is used.
    pub image_size: Option<usize>,
    /// The token ids of a two-tower comparison (ignored for a single tower).
    pub text: TextSource,
    /// NaFlex sources: the most patches per image (big_vision's `resize_to_sequence(P, N)`);
    /// `None` takes the source's position grid `G*G` (256 for the released models), or the
    /// given patches' own length.
    pub max_patches: Option<usize>,
}

/// What a two-tower comparison adds to the [`Report`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct TwoTowerReport {
    /// L2-normalised image embeddings, `[images, E]`.
    pub image_embeds: Option<Metrics>,
    /// L2-normalised text embeddings, `[texts, E]`.
    pub text_embeds: Option<Metrics>,
    /// `[images, texts]`; top-1 agreement is per image (the text each image scores highest).
    pub logits_per_image: Option<Metrics>,
    /// How many texts both text towers ran on.
    pub texts: usize,
    /// Token ids per text: the source text tower's context length.
    pub context: usize,
    /// Where the ids came from.
    pub text_ids: String,
    /// The reference's `t` and `b` and the target's stored `logit_scale` and `logit_bias`.
    pub reference_t: f64,
    /// The reference's bias `b` (0 where the source has none).
    pub reference_b: f64,
    /// The target's stored `logit_scale`, a log temperature like `t`.
    pub target_logit_scale: f64,
    /// The target's stored `logit_bias` (0 where the model has none).
    pub target_logit_bias: f64,
    /// Declared settings that contradict the source: each fails the comparison.
    pub declared: Vec<targets::two_tower::DeclaredMismatch>,
}

/// What a NaFlex (SigLIP 2, `naflex_vit`) comparison adds to the [`Report`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct NaflexReport {
    /// The sequence length every image was padded to.
    pub max_patches: usize,
    /// Each image's patch grid, (rows, columns).
    pub grids: Vec<[usize; 2]>,
    /// The side of the source's stored position grid.
    pub pos_grid: usize,
    /// Declared settings of an image-tower-only conversion (timm `NaFlexVit` kwargs) that
    /// contradict the source: each fails the comparison (a two-tower one lists them in
    /// [`TwoTowerReport::declared`]).
    pub declared: Vec<targets::two_tower::DeclaredMismatch>,
}

/// The outcome of a comparison that ran.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    /// Every judged comparison within its bound (true when nothing was judged: see `judged`).
    pub pass: bool,
    /// False for a target that cannot be exact (the `clip` layout, a declared exact GELU)
    /// without `--tolerance`: its drift is reported, not judged.
    pub judged: bool,
    /// The layout the converted path was read as.
    pub layout: Layout,
    /// The device both forwards ran on (`cpu`, `cuda:N`).
    pub device: String,
    /// The precision the target's forward ran in (`f32`, `bf16`, `f16`).
    pub dtype: String,
    /// How many images both forwards ran on.
    pub batch: usize,
    /// The side of the square input images, in pixels (0 for NaFlex, whose images keep their
    /// own sizes: see `naflex`).
    pub image_size: usize,
    /// The tolerance the comparisons were judged against (given, or the default).
    pub tolerance: f64,
    /// The target's logits against the reference's; `None` where a side has no head, the shapes differ, or for two towers.
    pub logits: Option<Metrics>,
    /// The target's pooled features against the reference's; `None` where the shapes differ, or for two towers.
    pub features: Option<Metrics>,
    /// The reference against `--expect`.
    pub expect: Option<Metrics>,
    /// Mean wall time of one forward, after a warm-up forward.
    pub reference_ms: f64,
    /// Mean wall time of one target forward, in milliseconds, after a warm-up forward.
    pub target_ms: f64,
    /// The input normalisation the target applied to the shared pixels.
    pub input_norm: InputNorm,
    /// The source's architecture, as read from its shapes.
    pub source: SourceArch,
    /// The two-tower comparison, for a two-tower source and conversion.
    pub two_tower: Option<TwoTowerReport>,
    /// The NaFlex inputs and settings, for a SigLIP 2 NaFlex source.
    pub naflex: Option<NaflexReport>,
    /// What was assumed, read or left out on either side, one sentence each.
    pub notes: Vec<String>,
}

/// Resolves `auto | cpu | cuda | cuda:N`.
pub fn parse_device(name: &str) -> Result<Device> {
    let cuda = |index: usize| {
        let count = if tch::Cuda::is_available() {
            usize::try_from(tch::Cuda::device_count()).unwrap_or(0)
        } else {
            0
        };
        if index < count {
            Ok(Device::Cuda(index))
        } else {
            Err(Error::CudaUnavailable {
                device: name.to_string(),
                index,
                count,
            })
        }
    };
    match name {
        "auto" => Ok(if tch::Cuda::is_available() {
            Device::Cuda(0)
        } else {
            Device::Cpu
        }),
        "cpu" => Ok(Device::Cpu),
        "cuda" => cuda(0),
        other => {
            let index = other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse::<usize>().ok())
                .ok_or_else(|| Error::UnknownDevice {
                    device: other.to_string(),
                })?;
            cuda(index)
        }
    }
}

/// Describes a device for the report.
pub fn device_name(device: Device) -> String {
    match device {
        Device::Cpu => "cpu".into(),
        Device::Cuda(i) => format!("cuda:{i}"),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// Keeps cuBLAS and cuDNN out of TF32 for the whole process. PyTorch leaves TF32 on for
/// cuDNN convolutions by default and tch exposes no switch for it; NVIDIA's libraries honour
/// this variable when they create their handles, which happens after this call. The
/// convolutions here also ask cuDNN for no TF32 explicitly (see [`ops::conv2d`]).
pub fn disable_tf32() {
    std::env::set_var("NVIDIA_TF32_OVERRIDE", "0");
}

/// Runs both forwards on the same pixels (and, for two towers, the same token ids) and compares them.
pub fn verify(opts: &Options) -> Result<Report> {
    disable_tf32();
    let device = parse_device(&opts.device)?;
    if !opts.source.exists() {
        return Err(Error::NotFound {
            path: opts.source.clone(),
        });
    }
    let family = registry::family_of(
        &opts.source,
        &vitconv_tensors::TensorFile::open(&opts.source)?,
    )?;
    let target_two_tower = targets::two_tower::detect(&opts.converted)?;
    // A conversion that is not a two-tower folder holds the image tower alone, where the family has two.
    let tower = match (target_two_tower, family.image_tower) {
        (None, Some(_)) => TowerChoice::Image,
        _ => TowerChoice::All,
    };
    match (family.route(tower), target_two_tower) {
        (Some(Route::NaflexTwoTower | Route::NaflexImage), _) => {
            naflex::verify(opts, device, family.family)
        }
        (Some(Route::TwoTower), Some(layout)) => {
            if let Some(asked) = opts.layout.filter(|l| *l != layout) {
                return Err(Error::LayoutMismatch {
                    path: opts.converted.clone(),
                    layout: asked.as_str(),
                    holds: match layout {
                        Layout::OpenClip => "it is a two-tower open_clip folder",
                        _ => "it is a two-tower hf folder (a transformers SiglipModel)",
                    },
                });
            }
            registry::check(&opts.source, family.family, layout, tower)?;
            verify_two_tower(opts, device, layout)
        }
        (Some(Route::Pixels), None) => verify_pixels(opts, device, family, tower),
        (Some(_), Some(_)) => Err(Error::ArchitectureMismatch {
            source_file: opts.source.clone(),
            converted: opts.converted.clone(),
            reason: "the conversion holds two towers (image and text), the source one image model"
                .into(),
        }),
        (route, layout) => Err(Error::NoVerifyPath {
            path: opts.source.clone(),
            family: family.family,
            layout: layout.or(opts.layout).map_or("any", Layout::as_str),
            tower: registry::tower_name(tower),
            why: match route {
                None => registry::Uncovered::NoRoute,
                Some(r) => registry::Uncovered::NoTarget { route: r.as_str() },
            },
        }),
    }
}

/// One image tower on square pixels ([`Route::Pixels`]): a one-tower source, or the image tower of a two-tower
/// or PaliGemma source against a conversion holding that tower alone.
fn verify_pixels(
    opts: &Options,
    device: Device,
    family: &'static registry::ReferenceDef,
    tower: TowerChoice,
) -> Result<Report> {
    let source_two_tower = family.whole == Some(Route::TwoTower);
    let target = targets::open(&opts.converted, opts.layout, device, opts.precision.kind())?;
    let source_opts = SourceOptions {
        image_size: opts.image_size.or(target.declared.image_size),
    };
    registry::check(&opts.source, family.family, target.layout, tower)?;
    let reference = Reference::open(&opts.source, device, &source_opts)?;
    let src = reference.arch().clone();
    let grid = check_architecture(opts, &src, &target)?;
    let image_size = target.arch.image_size;
    let mut notes = reference.notes();
    if source_two_tower {
        notes.push("the conversion holds the image tower only: compared are its outputs before normalisation (the MAP head's output as the pooled features, the image head's output as the logits where the tower has a head); the text tower and t/b are not part of it".into());
    }
    notes.extend(target.notes.iter().cloned());
    if grid != src.grid {
        notes.push(format!(
            "the converted model runs at {image_size} px ({grid}x{grid} tokens); {}",
            reference.resize_note(grid)
        ));
    }

    let (pixels, input_note) = input::load_with_note(&opts.input, image_size)?;
    notes.extend(input_note);
    let pixels = pixels.f_to_device(device)?;
    let batch = usize::try_from(pixels.size().first().copied().unwrap_or(0)).unwrap_or(0);
    let target_input = target.norm.apply(&pixels)?.f_to_kind(target.kind())?;

    let (out, reference_ms) = timed(device, || reference.forward(&pixels, grid))?;
    let (tout, target_ms) = timed(device, || target.forward(&target_input))?;

    let mut inexact = target.inexact.clone();
    if grid != src.grid {
        if let Some(method) = target.declared.resize_method().filter(|m| m != "vit-jax") {
            inexact = Some(format!(
                "the position embedding was resized with {method}, the reference resizes it the vit_jax way"
            ));
        }
    }
    let judged = opts.tolerance.is_some() || inexact.is_none();
    if let (false, Some(why)) = (judged, &inexact) {
        notes.push(format!(
            "{why}: drift reported, not judged; give --tolerance to judge it"
        ));
    }
    // A SigLIP image tower alone is held to the two-tower bound as well.
    let stored = target.declared.dtype.as_deref().and_then(Precision::parse);
    let tolerance = opts
        .tolerance
        .unwrap_or(opts.precision.tolerance_for(stored, source_two_tower));

    let ref_features = match tout.features_kind {
        FeatureKind::Pooled => &out.pooled,
        FeatureKind::Representation => &out.features,
    };
    let features = compare_tensors(&tout.features, ref_features, batch, tolerance)?;
    if features.is_none() {
        notes.push(format!(
            "features not comparable: target {:?} vs reference {:?}",
            tout.features.size(),
            ref_features.size()
        ));
    }
    let logits = match (&tout.logits, &out.logits) {
        (Some(t), Some(r)) => {
            let r = match &target.logits_offset {
                Some(bias) => {
                    notes.push("the target has no head bias (CLIP-style proj): compared with the reference's logits minus head_bias".into());
                    let b = Tensor::f_from_slice(bias)?.f_to_device(device)?;
                    if b.size().last() != r.size().last() {
                        return Err(Error::ArchitectureMismatch {
                            source_file: opts.source.clone(),
                            converted: opts.converted.clone(),
                            reason: format!(
                                "head_bias has {} values, the source head {:?}",
                                bias.len(),
                                r.size()
                            ),
                        });
                    }
                    r.f_sub(&b)?
                }
                None => r.shallow_clone(),
            };
            let m = compare_tensors(t, &r, batch, tolerance)?;
            if m.is_none() {
                notes.push(format!(
                    "logits not comparable: target {:?} vs reference {:?} (another head?)",
                    t.size(),
                    r.size()
                ));
            }
            m
        }
        (Some(_), None) => {
            notes.push("the source has no head: only the pooled features are compared".into());
            None
        }
        (None, _) => {
            notes.push(
                "the converted model has no head: only the pooled features are compared".into(),
            );
            None
        }
    };
    let expect = match &opts.expect {
        Some(path) => Some(compare_expect(
            path,
            out.logits.as_ref(),
            batch,
            opts.tolerance.unwrap_or(F32_TOLERANCE),
        )?),
        None => None,
    };
    if logits.is_none() && features.is_none() && expect.is_none() {
        return Err(Error::ArchitectureMismatch {
            source_file: opts.source.clone(),
            converted: opts.converted.clone(),
            reason: "neither logits nor pooled features have comparable shapes".into(),
        });
    }
    let within = [&logits, &features]
        .iter()
        .all(|m| m.as_ref().is_none_or(|m| m.within));
    let expect_ok = expect.as_ref().is_none_or(|m| m.within);
    let pass = expect_ok && (!judged || within);
    Ok(Report {
        pass,
        judged,
        layout: target.layout,
        device: device_name(device),
        dtype: opts.precision.as_str().into(),
        batch,
        image_size,
        tolerance,
        logits,
        features,
        expect,
        reference_ms,
        target_ms,
        input_norm: target.norm.clone(),
        source: src,
        two_tower: None,
        naflex: None,
        notes,
    })
}

/// The sizes a two-tower source and conversion must share beyond the image tower's, as (what, source,
/// converted): the text tower's, and the embedding width both towers meet in.
pub(crate) fn text_pairs(
    text: &references::siglip::TextArch,
    image_embed_width: usize,
    target: &targets::two_tower::TextTargetArch,
) -> [(&'static str, usize, usize); 7] {
    [
        ("text vocabulary", text.vocab, target.vocab),
        ("text width", text.width, target.width),
        ("text depth", text.depth, target.depth),
        ("text heads", text.heads, target.heads),
        ("text MLP width", text.mlp, target.mlp),
        (
            "text embedding width",
            text.embed.unwrap_or(text.width),
            target.embed,
        ),
        ("image embedding width", image_embed_width, target.embed),
    ]
}

/// A two-tower source against a two-tower conversion: both image towers on the same pixels,
/// both text towers on the same ids, embeddings and logits compared, declared settings checked.
fn verify_two_tower(opts: &Options, device: Device, layout: Layout) -> Result<Report> {
    let target = targets::two_tower::open(&opts.converted, layout, device, opts.precision.kind())?;
    let reference = references::siglip::TwoTower::open(
        &opts.source,
        device,
        opts.image_size.or(Some(target.arch.image_size)),
    )?;
    let src = reference.image().arch().clone();
    let text_arch = reference.text().arch().clone();
    let mismatch = |reason: String| Error::ArchitectureMismatch {
        source_file: opts.source.clone(),
        converted: opts.converted.clone(),
        reason,
    };
    let t = &target.arch;
    let image_pairs = [
        ("image width", src.hidden, t.hidden),
        ("image depth", src.depth, t.depth),
        ("image MLP width", src.mlp, t.mlp),
        ("patch size", src.patch_size, t.patch_size),
        ("image token grid", src.grid, t.grid),
    ];
    let text_pairs = text_pairs(&text_arch, reference.image_embed_width(), &target.text_arch);
    for (what, s, c) in image_pairs.iter().chain(text_pairs.iter()) {
        if s != c {
            return Err(mismatch(format!("{what}: source {s}, converted {c}")));
        }
    }
    if target.image_head != src.num_classes.is_some() {
        return Err(mismatch(format!(
            "image projection: the source's image tower {} a head, the converted one {}",
            if src.num_classes.is_some() {
                "has"
            } else {
                "has no"
            },
            if target.image_head {
                "has"
            } else if layout == Layout::Hf {
                "has none (transformers' SiglipModel holds no image projection)"
            } else {
                "has none"
            }
        )));
    }
    let tt = &target.text_arch;
    if tt.positions < text_arch.context {
        return Err(mismatch(format!(
            "text positions: source {}, converted {}",
            text_arch.context, tt.positions
        )));
    }
    let mut notes: Vec<String> = reference.notes().to_vec();
    notes.extend(target.notes.iter().cloned());
    let ids = input::load_text(&opts.text, text_arch.vocab, text_arch.context)?;
    let text_ids = match &opts.text {
        TextSource::Npy(path) => path.display().to_string(),
        TextSource::Random { seed, eos_id, .. } => {
            format!("random (seed {seed}, padded with EOS id {eos_id})")
        }
    };
    let texts = usize::try_from(ids.size().first().copied().unwrap_or(0)).unwrap_or(0);
    let (pixels, input_note) = input::load_with_note(&opts.input, src.image_size)?;
    notes.extend(input_note);
    let pixels = pixels.f_to_device(device)?;
    let batch = usize::try_from(pixels.size().first().copied().unwrap_or(0)).unwrap_or(0);
    let target_input = target.norm.apply(&pixels)?.f_to_kind(target.kind())?;
    let ids = ids.f_to_device(device)?;

    let (out, reference_ms) = timed(device, || reference.forward(&pixels, src.grid, &ids))?;
    let ((ti, tt_features), target_ms) = timed(device, || {
        Ok((
            target.image_features(&target_input)?,
            target.text_features(&ids)?,
        ))
    })?;
    let logits = target.logits(&ti, &tt_features)?;
    let zi = references::siglip::l2_normalise(&ti.f_to_kind(Kind::Float)?)?;
    let zt = references::siglip::l2_normalise(&tt_features.f_to_kind(Kind::Float)?)?;

    let stored = target
        .declared_config
        .dtype
        .as_deref()
        .and_then(Precision::parse);
    let tolerance = opts
        .tolerance
        .unwrap_or(opts.precision.tolerance_for(stored, true));
    let image_embeds = compare_tensors(&zi, &out.image_embeds, batch, tolerance)?;
    let text_embeds = compare_tensors(&zt, &out.text_embeds, texts, tolerance)?;
    let logits_per_image = compare_tensors(&logits, &out.logits_per_image, batch, tolerance)?;
    let expect = match &opts.expect {
        Some(path) => Some(compare_expect(
            path,
            Some(&out.logits_per_image),
            batch,
            opts.tolerance.unwrap_or(TWO_TOWER_F32_TOLERANCE),
        )?),
        None => None,
    };
    let declared = target.declared.clone();
    for d in &declared {
        notes.push(format!(
            "declared {} in {} is {}, the source computes {}",
            d.field,
            d.file.display(),
            d.found,
            d.expected
        ));
    }
    let within = [&image_embeds, &text_embeds, &logits_per_image]
        .iter()
        .all(|m| m.as_ref().is_some_and(|m| m.within));
    let pass = within && declared.is_empty() && expect.as_ref().is_none_or(|m| m.within);
    Ok(Report {
        pass,
        judged: true,
        layout: target.layout,
        device: device_name(device),
        dtype: opts.precision.as_str().into(),
        batch,
        image_size: src.image_size,
        tolerance,
        logits: None,
        features: None,
        expect,
        reference_ms,
        target_ms,
        input_norm: target.norm.clone(),
        source: src,
        two_tower: Some(TwoTowerReport {
            image_embeds,
            text_embeds,
            logits_per_image,
            texts,
            context: text_arch.context,
            text_ids,
            reference_t: reference.t,
            reference_b: reference.b,
            target_logit_scale: target.logit_scale,
            target_logit_bias: target.logit_bias,
            declared,
        }),
        naflex: None,
        notes,
    })
}

/// Checks that the converted file holds the source's architecture; returns the token grid to run at.
fn check_architecture(opts: &Options, src: &SourceArch, target: &targets::Target) -> Result<usize> {
    let t = &target.arch;
    let mismatch = |what: &str, s: String, c: String| Error::ArchitectureMismatch {
        source_file: opts.source.clone(),
        converted: opts.converted.clone(),
        reason: format!("{what}: source {s}, converted {c}"),
    };
    if t.hidden != src.hidden {
        return Err(mismatch(
            "width",
            src.hidden.to_string(),
            t.hidden.to_string(),
        ));
    }
    if t.depth != src.depth {
        return Err(mismatch(
            "depth",
            src.depth.to_string(),
            t.depth.to_string(),
        ));
    }
    if t.mlp != src.mlp {
        return Err(mismatch(
            "MLP width",
            src.mlp.to_string(),
            t.mlp.to_string(),
        ));
    }
    if t.patch_size != src.patch_size {
        return Err(mismatch(
            "patch size",
            src.patch_size.to_string(),
            t.patch_size.to_string(),
        ));
    }
    let src_token = src.class_token();
    if t.class_token != src_token {
        return Err(mismatch(
            "class token",
            src_token.to_string(),
            t.class_token.to_string(),
        ));
    }
    if t.grid != src.grid && src.resnet.is_some() {
        return Err(mismatch(
            "token grid of a hybrid",
            src.grid.to_string(),
            t.grid.to_string(),
        ));
    }
    Ok(t.grid)
}

/// Least wall time spent timing one forward, so that small models are timed over many runs.
const TIMING_MIN_MS: f64 = 200.0;
/// Most timed runs of one forward.
const TIMING_MAX_RUNS: u32 = 20;

/// Runs `f` once to warm up (first CUDA kernels, weight uploads), then times further runs until
/// [`TIMING_MIN_MS`] have passed or [`TIMING_MAX_RUNS`] were made; returns the last output and
/// the mean time of one run in milliseconds.
fn timed<T>(device: Device, f: impl Fn() -> Result<T>) -> Result<(T, f64)> {
    let _ = f()?;
    sync(device);
    let start = Instant::now();
    let mut runs = 0u32;
    loop {
        let out = f()?;
        sync(device);
        runs += 1;
        let total = start.elapsed().as_secs_f64() * 1e3;
        if total >= TIMING_MIN_MS || runs >= TIMING_MAX_RUNS {
            return Ok((out, total / f64::from(runs)));
        }
    }
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i64::try_from(i).unwrap_or(0));
    }
}

fn compare_tensors(
    t: &Tensor,
    r: &Tensor,
    batch: usize,
    tolerance: f64,
) -> Result<Option<Metrics>> {
    if t.size() != r.size() {
        return Ok(None);
    }
    Ok(compare::compare(
        &ops::flat(t)?,
        &ops::flat(r)?,
        batch,
        tolerance,
    ))
}

fn compare_expect(
    path: &std::path::Path,
    logits: Option<&Tensor>,
    batch: usize,
    tolerance: f64,
) -> Result<Metrics> {
    let logits = logits.ok_or(Error::NotApplicable {
        option: "--expect",
        why: "the source has no head, so it gives no logits to hold the expected ones against",
    })?;
    if !path.exists() {
        return Err(Error::NotFound {
            path: path.to_path_buf(),
        });
    }
    let file = vitconv_tensors::TensorFile::open(path)?;
    let info = file
        .tensors()
        .first()
        .ok_or_else(|| Error::Unreadable {
            path: path.to_path_buf(),
            reason: "holds no array".into(),
        })?
        .clone();
    let expected: Vec<f64> = file
        .read_f32(&info.name)?
        .into_iter()
        .map(f64::from)
        .collect();
    let got = ops::flat(logits)?;
    compare::compare(&got, &expected, batch, tolerance).ok_or_else(|| Error::InputShape {
        option: "--expect",
        path: path.to_path_buf(),
        expected: format!(
            "the reference's logits, {:?} (made from the same --input)",
            logits.size()
        ),
        found: info.shape.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_tolerance_is_the_looser_of_the_forward_and_the_stored_weights() {
        use Precision::{Bf16, F16, F32};
        assert_eq!(F32.tolerance_for(None, false), F32_TOLERANCE);
        assert_eq!(F32.tolerance_for(Some(F32), true), TWO_TOWER_F32_TOLERANCE);
        assert_eq!(F32.tolerance_for(Some(Bf16), true), BF16_TOLERANCE);
        assert_eq!(F32.tolerance_for(Some(F16), false), F16_TOLERANCE);
        assert_eq!(F16.tolerance_for(Some(F32), true), F16_TOLERANCE);
        assert_eq!(Bf16.tolerance_for(Some(F16), false), BF16_TOLERANCE);
    }

    #[test]
    fn a_device_name_verify_does_not_know_is_refused() {
        let Err(err) = parse_device("tpu") else {
            panic!("--device tpu was accepted");
        };
        assert!(
            matches!(&err, Error::UnknownDevice { device } if device == "tpu"),
            "{err}"
        );
    }

    #[test]
    fn a_cuda_device_libtorch_does_not_see_is_refused() {
        let Err(err) = parse_device("cuda:4096") else {
            panic!("--device cuda:4096 was accepted");
        };
        assert!(
            matches!(
                &err,
                Error::CudaUnavailable { device, index: 4096, count } if device == "cuda:4096" && *count < 4096
            ),
            "{err}"
        );
    }

    fn golden(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../fixtures/vit-token")
            .join(name)
    }

    #[test]
    fn expect_without_source_logits_does_not_apply() {
        let Err(err) = compare_expect(&golden("logits.npy"), None, 2, F32_TOLERANCE) else {
            panic!("--expect was compared with no logits");
        };
        assert!(
            matches!(
                err,
                Error::NotApplicable {
                    option: "--expect",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn expected_logits_of_another_shape_are_refused() {
        let logits = Tensor::zeros([2, 5], (Kind::Float, Device::Cpu));
        let path = golden("logits.npy");
        let Err(err) = compare_expect(&path, Some(&logits), 2, F32_TOLERANCE) else {
            panic!("[2, 10] expected logits were compared with [2, 5]");
        };
        assert!(
            matches!(
                &err,
                Error::InputShape { option: "--expect", path: p, found, .. } if p == &path && found == &[2, 10]
            ),
            "{err}"
        );
    }
}
