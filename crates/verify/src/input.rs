//! The pixels both sides see: seeded random images, an NHWC `.npy`, or decoded PNG/JPEG files, all in the source's [-1, 1] space; and, for a two-tower model, the token ids both text towers see.

use std::path::{Path, PathBuf};

use tch::{Kind, Tensor};
use vitconv_tensors::TensorFile;

use crate::error::{Error, Result};
use crate::params::{dim, to_i64_dims};

/// Most images `--images` decodes, so a large folder cannot exhaust memory by accident.
pub const MAX_IMAGES: usize = 256;
/// Most bytes of one `--images` file: a photo is a few megabytes; 64 MiB refuses a wrong file before it is
/// read whole.
pub const MAX_IMAGE_BYTES: u64 = 64 << 20;
/// Largest batch of random images.
pub const MAX_BATCH: usize = 4096;

/// Where the inputs come from.
#[derive(Debug, Clone)]
pub enum InputSource {
    /// `batch` images, uniform in [-1, 1], from a seeded generator independent of libtorch
    /// (so CPU and CUDA runs see the same pixels).
    Random {
        /// How many images to generate.
        batch: usize,
        /// The generator's seed.
        seed: u64,
    },
    /// An NHWC float array in [-1, 1], like the golden `input.npy`.
    Npy(PathBuf),
    /// Every PNG/JPEG in a directory (sorted by name), decoded, squashed to `size` x `size` with bilinear
    /// interpolation and no antialiasing (as big_vision and vit_jax resize), scaled to [-1, 1].
    Images {
        /// The directory the images are read from (not its subdirectories).
        dir: PathBuf,
        /// The `--image-size` given, as (width, height), which must be the model's square; `None` takes the model's.
        size: Option<(usize, usize)>,
    },
}

/// Builds the NHWC float32 batch at `image_size` x `image_size` on the CPU.
pub fn load(source: &InputSource, image_size: usize) -> Result<Tensor> {
    Ok(load_with_note(source, image_size)?.0)
}

/// [`load`], with what the report should say about the inputs: for images, how far the loaders' own
/// (antialiased) resize would put the pixels from the source's.
pub fn load_with_note(source: &InputSource, image_size: usize) -> Result<(Tensor, Option<String>)> {
    match source {
        InputSource::Random { batch, seed } => Ok((random(*batch, *seed, image_size)?, None)),
        InputSource::Npy(path) => Ok((npy(path, image_size)?, None)),
        InputSource::Images { dir, size } => images(dir, *size, image_size),
    }
}

/// Refuses a `--batch` of random images outside 1..=[`MAX_BATCH`].
fn check_batch(batch: usize) -> Result<()> {
    if batch == 0 || batch > MAX_BATCH {
        return Err(Error::CountOutOfRange {
            option: "--batch",
            value: batch,
            max: MAX_BATCH,
        });
    }
    Ok(())
}

fn random(batch: usize, seed: u64, s: usize) -> Result<Tensor> {
    check_batch(batch)?;
    let n = batch
        .checked_mul(s)
        .and_then(|v| v.checked_mul(s))
        .and_then(|v| v.checked_mul(3))
        .ok_or_else(|| Error::Overflow {
            what: "the random images [batch, size, size, 3]",
            dims: vec![batch, s, s, 3],
        })?;
    let values = uniform(n, seed);
    Ok(Tensor::f_from_slice(&values)?.f_reshape([dim(batch)?, dim(s)?, dim(s)?, 3])?)
}

fn npy(path: &Path, s: usize) -> Result<Tensor> {
    if !path.exists() {
        return Err(Error::NotFound {
            path: path.to_path_buf(),
        });
    }
    let file = TensorFile::open(path)?;
    let info = file
        .tensors()
        .first()
        .ok_or_else(|| Error::Unreadable {
            path: path.to_path_buf(),
            reason: "holds no array".into(),
        })?
        .clone();
    match info.shape.as_slice() {
        [b, h, w, 3] if *h == s && *w == s && *b > 0 => {}
        other => {
            return Err(Error::InputShape {
                option: "--input",
                path: path.to_path_buf(),
                expected: format!("NHWC [batch, {s}, {s}, 3], batch >= 1, pixels in [-1, 1]"),
                found: other.to_vec(),
            })
        }
    }
    let dims = to_i64_dims(&info.shape).ok_or_else(|| Error::Overflow {
        what: "the --input array's shape",
        dims: info.shape.clone(),
    })?;
    let values = file.read_f32(&info.name)?;
    Ok(Tensor::f_from_slice(&values)?
        .f_reshape(dims.as_slice())?
        .f_to_kind(Kind::Float)?)
}

fn images(dir: &Path, size: Option<(usize, usize)>, s: usize) -> Result<(Tensor, Option<String>)> {
    if let Some((width, height)) = size {
        if width != height || width != s {
            return Err(Error::ImagesSize {
                width,
                height,
                model: s,
            });
        }
    }
    let side = dim(s)?;
    let mut squashed = Vec::new();
    // The largest difference, in [0, 1] pixel units, between the source's resize and an antialiased one.
    let mut aa_diff = 0f64;
    for img in decoded_images(dir)? {
        let x = img.f_permute([2, 0, 1])?.f_unsqueeze(0)?;
        // The whole image squashed to the model's size, bilinear with half-pixel centres and no antialiasing:
        // big_vision's and vit_jax's eval resize (`tf.image.resize` / `jax.image.resize`, bilinear).
        let plain = x.f_upsample_bilinear2d([side, side], false, None, None)?;
        let aa = x.f_internal_upsample_bilinear2d_aa([side, side], false, None, None)?;
        aa_diff = aa_diff.max(plain.f_sub(&aa)?.f_abs()?.f_max()?.f_double_value(&[])?);
        squashed.push(plain);
    }
    let batch = Tensor::f_cat(&squashed, 0)?
        .f_permute([0, 2, 3, 1])?
        .f_mul_scalar(2.0)?
        .f_sub_scalar(1.0)?
        .f_contiguous()?;
    // Upsampling antialiases nothing: the two agree there up to rounding, and nothing is said.
    let note = (aa_diff * 255.0 >= 0.05).then(|| {
        format!(
            "images: each squashed to {s}x{s} with bilinear interpolation and no antialiasing, as big_vision and vit_jax resize; timm, transformers and open_clip antialias when they shrink an image, which puts pixels up to {:.1}/255 from these on these images",
            aa_diff * 255.0
        )
    });
    Ok((batch, note))
}

/// Every PNG/JPEG in `dir` (sorted by name, at most [`MAX_IMAGES`]), decoded to RGB, as HWC float32 in
/// [0, 1] at its own size.
fn decoded_images(dir: &Path) -> Result<Vec<Tensor>> {
    if !dir.is_dir() {
        return Err(Error::NotFound {
            path: dir.to_path_buf(),
        });
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::Unreadable {
            path: dir.to_path_buf(),
            reason: e.to_string(),
        })?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg"))
        })
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(Error::NoImages {
            dir: dir.to_path_buf(),
        });
    }
    files.truncate(MAX_IMAGES);
    let mut out = Vec::with_capacity(files.len());
    for path in &files {
        // Read as every small file is (a regular file of bounded size: a FIFO named `x.png` would block
        // `image::open`, a link to /dev/zero read until memory ran out), then decoded from memory in the format
        // its extension names, as `image::open` would.
        let bytes = vitconv_tensors::read_regular_file(path, MAX_IMAGE_BYTES)?;
        let format = image::ImageFormat::from_path(path).map_err(|e| Error::Unreadable {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let img =
            image::load_from_memory_with_format(&bytes, format).map_err(|e| Error::Unreadable {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        let img = img.to_rgb8();
        let (w, h) = (dim(img.width() as usize)?, dim(img.height() as usize)?);
        let pixels: Vec<f32> = img.as_raw().iter().map(|&v| f32::from(v) / 255.0).collect();
        out.push(Tensor::f_from_slice(&pixels)?.f_reshape([h, w, 3])?);
    }
    Ok(out)
}

/// big_vision's EOS id (its SentencePiece vocabularies end every text with id 1, and SigLIP
/// pads to the context with it): the default last id of random texts.
pub const BIG_VISION_EOS_ID: i64 = 1;
/// Most texts `--text-batch` asks for.
pub const MAX_TEXTS: usize = 4096;

/// Where the token ids of a two-tower comparison come from.
#[derive(Debug, Clone)]
pub enum TextSource {
    /// `texts` random sequences from a seeded splitmix64 generator (independent of libtorch): text
    /// i has `k_i` content ids uniform in `2..vocab` (0 and 1 are big_vision's pad and EOS; the
    /// whole vocabulary where it has fewer than 3 ids), then `eos_id` up to the context, as SigLIP
    /// pads. `k_0 = context / 2` and the other `k_i` are uniform in `1..context`, so the first
    /// EOS is not the last position (the pool a wrong `pool_type` would take shows).
    Random {
        /// How many texts to generate.
        texts: usize,
        /// The generator's seed.
        seed: u64,
        /// The id every text ends with and is padded with up to the context.
        eos_id: i64,
    },
    /// An int32 or int64 `.npy` of shape `[texts, context]`, like the golden `text.npy`.
    Npy(PathBuf),
}

/// Builds the int64 ids `[texts, context]` on the CPU for a text tower of `vocab` ids and
/// `context` positions.
pub fn load_text(source: &TextSource, vocab: usize, context: usize) -> Result<Tensor> {
    match source {
        TextSource::Random {
            texts,
            seed,
            eos_id,
        } => random_text(*texts, *seed, *eos_id, vocab, context),
        TextSource::Npy(path) => text_npy(path),
    }
}

/// splitmix64's next value.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn random_text(
    texts: usize,
    seed: u64,
    eos_id: i64,
    vocab: usize,
    context: usize,
) -> Result<Tensor> {
    if texts == 0 || texts > MAX_TEXTS {
        return Err(Error::CountOutOfRange {
            option: "--text-batch",
            value: texts,
            max: MAX_TEXTS,
        });
    }
    if usize::try_from(eos_id).map_or(true, |e| e >= vocab) {
        return Err(Error::EosIdOutOfVocab { eos_id, vocab });
    }
    let (low, span) = if vocab >= 3 {
        (2, vocab - 2)
    } else {
        (0, vocab.max(1))
    };
    let mut state = seed;
    let mut ids = Vec::with_capacity(texts.saturating_mul(context));
    for i in 0..texts {
        let k = if i == 0 {
            context / 2
        } else {
            let r =
                usize::try_from(splitmix(&mut state) % (context.max(2) as u64 - 1)).unwrap_or(0);
            r.saturating_add(1)
        }
        .min(context.saturating_sub(1));
        for pos in 0..context {
            if pos < k {
                let r = usize::try_from(splitmix(&mut state) % span as u64).unwrap_or(0);
                ids.push(dim(low + r)?);
            } else {
                ids.push(eos_id);
            }
        }
    }
    Ok(Tensor::f_from_slice(&ids)?.f_reshape([dim(texts)?, dim(context)?])?)
}

fn text_npy(path: &Path) -> Result<Tensor> {
    if !path.exists() {
        return Err(Error::NotFound {
            path: path.to_path_buf(),
        });
    }
    let file = TensorFile::open(path)?;
    let info = file
        .tensors()
        .first()
        .ok_or_else(|| Error::Unreadable {
            path: path.to_path_buf(),
            reason: "holds no array".into(),
        })?
        .clone();
    let bad = |found: String| Error::TextIds {
        path: path.to_path_buf(),
        expected: "an int32 or int64 array [texts, context]".into(),
        found,
    };
    let (n, c) = match info.shape.as_slice() {
        [n, c] if *n > 0 && *c > 0 => (*n, *c),
        other => return Err(bad(format!("shape {other:?}"))),
    };
    let ids = read_ints(&file, &info).map_err(|dtype| bad(format!("dtype {dtype}")))?;
    Ok(Tensor::f_from_slice(&ids)?.f_reshape([dim(n)?, dim(c)?])?)
}

/// The values of an int32 or int64 array, widened to i64; `Err` names another dtype.
fn read_ints(
    file: &TensorFile,
    info: &vitconv_tensors::TensorInfo,
) -> std::result::Result<Vec<i64>, String> {
    let bytes = file.read(&info.name).map_err(|e| e.to_string())?;
    Ok(match info.dtype {
        vitconv_tensors::DType::I32 => bytes
            .chunks_exact(4)
            .map(|b| i64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]])))
            .collect(),
        vitconv_tensors::DType::I64 => bytes
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
            .collect(),
        other => return Err(other.as_str().to_string()),
    })
}

/// Most patches per NaFlex image `--max-patches` takes (the released models run up to 1024).
pub const MAX_PATCHES: usize = 1 << 16;

/// The aspect ratios (height : width) of the random NaFlex images, cycled over the batch: a
/// landscape 2:3, a wide 1:4 and a tall 2:1, so that the patch grids differ in shape, the wide one
/// leaves padding, and the short sides of the wide and tall ones shrink the position grid.
pub const NAFLEX_ASPECTS: [(usize, usize); 3] = [(2, 3), (1, 4), (2, 1)];

/// The inputs of a NaFlex image tower (big_vision `naflex_vit.py`), on the CPU: every image resized
/// to its own patch grid, patchified and padded to one sequence length `N`.
pub struct NaflexInputs {
    /// `[B, N, P*P*3]` float32 patches flattened in (py, px, c) order, row-major over each
    /// image's grid, zero rows for padding.
    pub patches: Tensor,
    /// `[B, N]` bool, true for a patch and false for padding (big_vision's `type`).
    pub mask: Tensor,
    /// `[B, N]` int64 patch rows (0 for padding).
    pub yidx: Tensor,
    /// `[B, N]` int64 patch columns (0 for padding).
    pub xidx: Tensor,
    /// `[B, 2]` int64 (rows, columns) of each image's patch grid.
    pub spatial: Tensor,
    /// The same grids as numbers, for the report.
    pub grids: Vec<[usize; 2]>,
}

impl NaflexInputs {
    /// How many images.
    pub fn batch(&self) -> usize {
        self.grids.len()
    }

    /// The sequence length `N` every image is padded to.
    pub fn max_patches(&self) -> usize {
        self.patches
            .size()
            .get(1)
            .and_then(|&n| usize::try_from(n).ok())
            .unwrap_or(0)
    }

    /// The same inputs on `device`.
    pub fn to_device(&self, device: tch::Device) -> Result<NaflexInputs> {
        Ok(NaflexInputs {
            patches: self.patches.f_to_device(device)?,
            mask: self.mask.f_to_device(device)?,
            yidx: self.yidx.f_to_device(device)?,
            xidx: self.xidx.f_to_device(device)?,
            spatial: self.spatial.f_to_device(device)?,
            grids: self.grids.clone(),
        })
    }
}

/// big_vision's `resize_to_sequence(P, N)` target size for an `h` x `w` image: a binary search,
/// in float32 as TensorFlow computes it, for the largest scale `r` in [1e-6, 100] (until the
/// interval is below 1e-5) whose `max(P * ceil(side * r / P), P)` sides hold at most `N` patches.
pub fn resize_to_sequence(h: usize, w: usize, patch: usize, max_patches: usize) -> (usize, usize) {
    #[allow(clippy::cast_precision_loss)]
    let (hf, wf, pf) = (h as f32, w as f32, patch as f32);
    let target = |r: f32| -> (usize, usize) {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let side = |s: f32| ((s * r / pf).ceil().max(1.0) as usize).saturating_mul(patch);
        (side(hf), side(wf))
    };
    let fits = |(th, tw): (usize, usize)| {
        (th / patch.max(1)).saturating_mul(tw / patch.max(1)) <= max_patches
    };
    let (mut lo, mut hi) = (1e-6f32, 100.0f32);
    while hi - lo > 1e-5 {
        let mid = (lo + hi) / 2.0;
        if fits(target(mid)) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    target(lo)
}

/// Builds NaFlex inputs for patch side `patch` and `max_patches` (else `default_max_patches`)
/// patches per image: random images
/// of the [`NAFLEX_ASPECTS`], an `.npy` (NHWC images, or patches `[B, N, P*P*3]` with `mask.npy`,
/// `yidx.npy` and `xidx.npy` beside it, like the golden files), or a folder of images, each at its
/// own size. Images go through big_vision's `resize_to_sequence(P, N)` (bilinear with antialias,
/// half-pixel centres), `patchify(P)` and `pad_to_shape(N)`. Also says what was built, for the report.
pub fn naflex(
    source: &InputSource,
    patch: usize,
    max_patches: Option<usize>,
    default_max_patches: usize,
) -> Result<(NaflexInputs, String)> {
    let given = max_patches;
    let max_patches = max_patches.unwrap_or(default_max_patches);
    if max_patches == 0 || max_patches > MAX_PATCHES {
        return Err(Error::CountOutOfRange {
            option: "--max-patches",
            value: max_patches,
            max: MAX_PATCHES,
        });
    }
    let images: Vec<Tensor> = match source {
        InputSource::Random { batch, seed } => {
            check_batch(*batch)?;
            // About the pixels of a square image of N patches, spread over the aspect ratio.
            let side = patch.saturating_mul(max_patches.isqrt().max(1));
            let mut out = Vec::with_capacity(*batch);
            for i in 0..*batch {
                let (ah, aw) = NAFLEX_ASPECTS
                    .get(i % NAFLEX_ASPECTS.len())
                    .copied()
                    .unwrap_or((1, 1));
                #[allow(
                    clippy::cast_precision_loss,
                    clippy::cast_possible_truncation,
                    clippy::cast_sign_loss
                )]
                let (h, w) = {
                    let ratio = (ah as f64 / aw as f64).sqrt();
                    (
                        ((side as f64 * ratio).round() as usize).max(1),
                        ((side as f64 / ratio).round() as usize).max(1),
                    )
                };
                let values = uniform(
                    h.saturating_mul(w).saturating_mul(3),
                    seed.wrapping_add(i as u64),
                );
                out.push(Tensor::f_from_slice(&values)?.f_reshape([dim(h)?, dim(w)?, 3])?);
            }
            out
        }
        InputSource::Npy(path) => {
            let file = open_npy(path)?;
            let info = first_array(&file, path)?;
            match info.shape.as_slice() {
                [_, _, _] => {
                    let inputs = golden_patches(path, &file, &info, patch, given)?;
                    let note = naflex_note(&inputs, &format!("the patches of {}", path.display()));
                    return Ok((inputs, note));
                }
                [_, _, _, 3] => {
                    let all = npy_any_size(path, &file, &info)?;
                    let n = all.size().first().copied().unwrap_or(0);
                    (0..n).map(|i| all.get(i)).collect()
                }
                other => {
                    return Err(Error::InputShape {
                        option: "--input",
                        path: path.to_path_buf(),
                        expected: format!(
                            "NHWC images [batch, h, w, 3] in [-1, 1], or NaFlex patches [batch, N, {}] with mask.npy, yidx.npy and xidx.npy beside it",
                            patch.saturating_mul(patch).saturating_mul(3)
                        ),
                        found: other.to_vec(),
                    })
                }
            }
        }
        InputSource::Images { dir, size } => {
            if size.is_some() {
                return Err(Error::NotApplicable {
                    option: "--image-size",
                    why: "a NaFlex model resizes each image to its own patch grid (see --max-patches)",
                });
            }
            // `value_range(-1, 1)` of the decoded [0, 1] pixels.
            decoded_images(dir)?
                .into_iter()
                .map(|x| -> Result<Tensor> { Ok(x.f_mul_scalar(2.0)?.f_sub_scalar(1.0)?) })
                .collect::<Result<Vec<_>>>()?
        }
    };
    let inputs = to_sequences(&images, patch, max_patches)?;
    let what = match source {
        InputSource::Random { seed, .. } => format!(
            "random images (seed {seed}) of aspect ratios {}",
            NAFLEX_ASPECTS
                .iter()
                .map(|(h, w)| format!("{h}:{w}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        InputSource::Npy(path) => format!("the images of {}", path.display()),
        InputSource::Images { dir, .. } => format!("the images in {}", dir.display()),
    };
    let note = naflex_note(
        &inputs,
        &format!("{what}, each through resize_to_sequence({patch}, {max_patches}) (bilinear, antialiased), patchify and padding"),
    );
    Ok((inputs, note))
}

/// One sentence on NaFlex inputs: where they came from and each image's patch grid.
fn naflex_note(inputs: &NaflexInputs, what: &str) -> String {
    let n = inputs.max_patches();
    let grids: Vec<String> = inputs
        .grids
        .iter()
        .map(|[h, w]| {
            let pad = n.saturating_sub(h.saturating_mul(*w));
            format!("{h}x{w} ({pad} padding)")
        })
        .collect();
    format!(
        "NaFlex inputs: {what}; {n} patches per image, patch grids {}",
        grids.join(", ")
    )
}

/// `n` values uniform in [-1, 1) from splitmix64 seeded with `seed` (the random images' generator).
fn uniform(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed;
    (0..n)
        .map(|_| {
            let z = splitmix(&mut state);
            #[allow(clippy::cast_precision_loss)]
            let unit = (z >> 40) as f32 / (1u64 << 24) as f32;
            unit * 2.0 - 1.0
        })
        .collect()
}

fn open_npy(path: &Path) -> Result<TensorFile> {
    if !path.exists() {
        return Err(Error::NotFound {
            path: path.to_path_buf(),
        });
    }
    Ok(TensorFile::open(path)?)
}

fn first_array(file: &TensorFile, path: &Path) -> Result<vitconv_tensors::TensorInfo> {
    Ok(file
        .tensors()
        .first()
        .ok_or_else(|| Error::Unreadable {
            path: path.to_path_buf(),
            reason: "holds no array".into(),
        })?
        .clone())
}

/// An NHWC float array of any height and width.
fn npy_any_size(
    path: &Path,
    file: &TensorFile,
    info: &vitconv_tensors::TensorInfo,
) -> Result<Tensor> {
    let dims = to_i64_dims(&info.shape).ok_or_else(|| Error::Overflow {
        what: "the --input array's shape",
        dims: info.shape.clone(),
    })?;
    let values = file.read_f32(&info.name).map_err(|e| Error::Unreadable {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    Ok(Tensor::f_from_slice(&values)?.f_reshape(dims.as_slice())?)
}

/// Golden-style patches `[B, N, P*P*3]` with `mask.npy`, `yidx.npy` and `xidx.npy` (int32 or int64
/// `[B, N]`) in the same folder; the grids are `max(idx) + 1` over each image's patches.
fn golden_patches(
    path: &Path,
    file: &TensorFile,
    info: &vitconv_tensors::TensorInfo,
    patch: usize,
    max_patches: Option<usize>,
) -> Result<NaflexInputs> {
    let width = patch.saturating_mul(patch).saturating_mul(3);
    let (b, n) = match info.shape.as_slice() {
        [b, n, c] if *b > 0 && *n > 0 && *c == width => (*b, *n),
        other => {
            return Err(Error::InputShape {
                option: "--input",
                path: path.to_path_buf(),
                expected: format!(
                    "NaFlex patches [batch, N, {width}] (patch {patch}, (py, px, c) order)"
                ),
                found: other.to_vec(),
            })
        }
    };
    if let Some(m) = max_patches.filter(|m| *m != n) {
        return Err(Error::InputShape {
            option: "--input",
            path: path.to_path_buf(),
            expected: format!("patches padded to --max-patches {m}"),
            found: info.shape.clone(),
        });
    }
    let patches = npy_any_size(path, file, info)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let side = |name: &str| -> Result<Vec<i64>> {
        let p = dir.join(name);
        let f = open_npy(&p)?;
        let i = first_array(&f, &p)?;
        if i.shape != [b, n] {
            return Err(Error::InputShape {
                option: "--input",
                path: p,
                expected: format!("[{b}, {n}] beside the patches {}", path.display()),
                found: i.shape,
            });
        }
        read_ints(&f, &i).map_err(|dtype| Error::InputShape {
            option: "--input",
            path: p.clone(),
            expected: format!("int32 or int64 [{b}, {n}], not {dtype}"),
            found: i.shape.clone(),
        })
    };
    let (mask, yidx, xidx) = (side("mask.npy")?, side("yidx.npy")?, side("xidx.npy")?);
    let mut grids = Vec::with_capacity(b);
    for i in 0..b {
        let row = |v: &[i64]| -> i64 {
            v.iter()
                .skip(i.saturating_mul(n))
                .take(n)
                .zip(mask.iter().skip(i.saturating_mul(n)))
                .filter(|(_, m)| **m != 0)
                .map(|(v, _)| *v)
                .max()
                .unwrap_or(-1)
                .saturating_add(1)
        };
        let (h, w) = (row(&yidx), row(&xidx));
        let (h, w) = (
            usize::try_from(h).unwrap_or(0),
            usize::try_from(w).unwrap_or(0),
        );
        if h == 0 || w == 0 || h.saturating_mul(w) > n {
            return Err(Error::InputShape {
                option: "--input",
                path: dir.join("mask.npy"),
                expected: format!(
                    "image {i}: at least one patch (mask 1), and a patch grid max(yidx)+1 x max(xidx)+1 of at most {n} patches"
                ),
                found: vec![h, w],
            });
        }
        grids.push([h, w]);
    }
    let ints = |v: &[i64]| -> Result<Tensor> {
        Ok(Tensor::f_from_slice(v)?.f_reshape([dim(b)?, dim(n)?])?)
    };
    let mut spatial = Vec::with_capacity(b.saturating_mul(2));
    for [h, w] in &grids {
        spatial.extend([dim(*h)?, dim(*w)?]);
    }
    Ok(NaflexInputs {
        patches,
        mask: ints(&mask)?.f_ne(0)?,
        yidx: ints(&yidx)?,
        xidx: ints(&xidx)?,
        spatial: Tensor::f_from_slice(&spatial)?.f_reshape([dim(b)?, 2])?,
        grids,
    })
}

/// Each HWC image in [-1, 1] through `resize_to_sequence`, `patchify` and `pad_to_shape`.
fn to_sequences(images: &[Tensor], patch: usize, max_patches: usize) -> Result<NaflexInputs> {
    let p = dim(patch)?;
    let n = dim(max_patches)?;
    let width = p.saturating_mul(p).saturating_mul(3);
    let (mut patches, mut mask, mut yidx, mut xidx, mut spatial, mut grids) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    for img in images {
        let size = img.size();
        let (h, w) = match size.as_slice() {
            [h, w, 3] => (*h, *w),
            other => {
                return Err(Error::UnexpectedShape {
                    what: "an image to patchify",
                    expected: "[h, w, 3]",
                    found: other.to_vec(),
                })
            }
        };
        let (th, tw) = resize_to_sequence(
            usize::try_from(h).unwrap_or(0),
            usize::try_from(w).unwrap_or(0),
            patch,
            max_patches,
        );
        let (th, tw) = (dim(th)?, dim(tw)?);
        let (gh, gw) = (th / p, tw / p);
        let resized = img
            .f_to_kind(Kind::Float)?
            .f_permute([2, 0, 1])?
            .f_unsqueeze(0)?
            .f_internal_upsample_bilinear2d_aa([th, tw], false, None, None)?;
        // [1, 3, gh*P, gw*P] -> [gh, gw, P, P, 3] -> [gh*gw, P*P*3]: (py, px, c) within a patch.
        let rows = resized
            .f_reshape([3, gh, p, gw, p])?
            .f_permute([1, 3, 2, 4, 0])?
            .f_reshape([gh.saturating_mul(gw), width])?;
        let count = gh.saturating_mul(gw);
        let pad = n.saturating_sub(count);
        patches.push(Tensor::f_cat(
            &[
                rows,
                Tensor::f_zeros([pad, width], (Kind::Float, tch::Device::Cpu))?,
            ],
            0,
        )?);
        let ys = Tensor::f_arange(count, (Kind::Int64, tch::Device::Cpu))?
            .f_div_scalar_mode(gw, "floor")?;
        let xs = Tensor::f_arange(count, (Kind::Int64, tch::Device::Cpu))?.f_remainder(gw)?;
        let zeros = Tensor::f_zeros([pad], (Kind::Int64, tch::Device::Cpu))?;
        yidx.push(Tensor::f_cat(&[ys, zeros.shallow_clone()], 0)?);
        xidx.push(Tensor::f_cat(&[xs, zeros], 0)?);
        mask.push(Tensor::f_arange(n, (Kind::Int64, tch::Device::Cpu))?.f_lt(count)?);
        spatial.push(Tensor::f_from_slice(&[gh, gw])?);
        grids.push([
            usize::try_from(gh).unwrap_or(0),
            usize::try_from(gw).unwrap_or(0),
        ]);
    }
    Ok(NaflexInputs {
        patches: Tensor::f_stack(&patches, 0)?,
        mask: Tensor::f_stack(&mask, 0)?,
        yidx: Tensor::f_stack(&yidx, 0)?,
        xidx: Tensor::f_stack(&xidx, 0)?,
        spatial: Tensor::f_stack(&spatial, 0)?,
        grids,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naflex_fixture(rel: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../fixtures/siglip2/siglip2-naflex-tiny")
            .join(rel)
    }

    fn npy_tensor(path: &Path) -> Tensor {
        let file = TensorFile::open(path).expect("opens");
        let info = file.tensors().first().expect("one array").clone();
        npy_any_size(path, &file, &info).expect("reads")
    }

    #[test]
    fn resize_to_sequence_gives_the_golden_sizes() {
        // fixtures/siglip2/siglip2-naflex-tiny/model.json: raw and resized (h, w) at P 8, N 24.
        for ((h, w), want) in [
            ((32, 48), (32, 48)),
            ((16, 60), (24, 64)),
            ((50, 25), (48, 24)),
        ] {
            assert_eq!(resize_to_sequence(h, w, 8, 24), want, "{h}x{w}");
        }
        // A side never goes below one patch, and the patches never exceed N.
        assert_eq!(resize_to_sequence(1, 1000, 16, 4), (16, 64));
        let (h, w) = resize_to_sequence(300, 200, 16, 256);
        assert!(
            (h / 16) * (w / 16) <= 256 && (h / 16) * (w / 16) > 200,
            "{h}x{w}"
        );
    }

    #[test]
    fn the_golden_images_become_the_golden_patches() {
        let images: Vec<Tensor> = (0..3)
            .map(|i| npy_tensor(&naflex_fixture(&format!("images/{i}.npy"))))
            .collect();
        let ours = to_sequences(&images, 8, 24).expect("patchifies");
        let (gold, _) = naflex(
            &InputSource::Npy(naflex_fixture("patches.npy")),
            8,
            None,
            16,
        )
        .expect("the golden patches load");
        assert_eq!(ours.grids, gold.grids);
        for (name, a, b) in [
            ("mask", &ours.mask, &gold.mask),
            ("yidx", &ours.yidx, &gold.yidx),
            ("xidx", &ours.xidx, &gold.xidx),
            ("spatial", &ours.spatial, &gold.spatial),
        ] {
            assert!(a.equal(b), "{name}: {a:?} vs {b:?}");
        }
        // libtorch's antialiased bilinear is the kernel jax.image.scale_and_translate ports from
        // TensorFlow: equal up to float rounding on pixels in [-1, 1].
        let diff = (&ours.patches - &gold.patches)
            .abs()
            .max()
            .double_value(&[]);
        eprintln!("golden images -> patches: max abs diff {diff:e}");
        assert!(diff <= 1e-5, "{diff}");
    }

    #[test]
    fn random_naflex_images_pad_stretch_and_shrink_the_grid() {
        let source = InputSource::Random { batch: 3, seed: 2 };
        let (a, note) = naflex(&source, 8, None, 16).expect("builds");
        let (b, _) = naflex(&source, 8, None, 16).expect("builds");
        assert!(a.patches.equal(&b.patches), "seeded");
        // 2:3, 1:4 and 2:1 images at 16 patches of a 4x4 position grid.
        assert_eq!(a.grids, vec![[3, 5], [2, 8], [5, 3]], "{note}");
        assert_eq!(a.max_patches(), 16);
        let valid = a.mask.sum(Kind::Int64).int64_value(&[]);
        assert_eq!(valid, 15 + 16 + 15);
        // Padding rows are zero and marked so.
        let pad = a.patches.get(0).get(15);
        assert_eq!(pad.abs().max().double_value(&[]), 0.0);
        assert!(
            note.contains("2:3, 1:4, 2:1") && note.contains("2x8 (0 padding)"),
            "{note}"
        );
        let Err(err) = naflex(&source, 8, Some(0), 16) else {
            panic!("0 patches were accepted");
        };
        assert!(err.to_string().contains("--max-patches"), "{err}");
        let Err(err) = naflex(
            &InputSource::Npy(naflex_fixture("patches.npy")),
            8,
            Some(16),
            16,
        ) else {
            panic!("24 golden patches were taken as 16");
        };
        assert!(matches!(err, Error::InputShape { .. }), "{err}");
    }

    #[test]
    fn a_fifo_among_the_images_is_refused_by_name_without_blocking() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fifo = dir.path().join("a.png");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("mkfifo runs");
        assert!(made.success());
        let source = InputSource::Images {
            dir: dir.path().to_path_buf(),
            size: None,
        };
        let err = load(&source, 8).expect_err("a FIFO is refused");
        let msg = err.to_string();
        assert!(msg.contains("named pipe (FIFO)"), "{msg}");
        assert!(msg.contains("a.png"), "{msg}");
    }

    #[test]
    fn random_texts_are_seeded_padded_with_eos_and_in_the_vocabulary() {
        let source = |seed| TextSource::Random {
            texts: 4,
            seed,
            eos_id: 1,
        };
        let a = load_text(&source(3), 100, 8).expect("builds");
        let b = load_text(&source(3), 100, 8).expect("builds");
        let c = load_text(&source(4), 100, 8).expect("builds");
        assert_eq!(a.size(), vec![4, 8]);
        assert!(a.equal(&b) && !a.equal(&c));
        let ids = Vec::<i64>::try_from(&a.reshape([-1])).expect("ids");
        for row in ids.chunks(8) {
            assert_eq!(row[7], 1, "every text ends in EOS: {row:?}");
            let first_eos = row.iter().position(|&v| v == 1).expect("has EOS");
            assert!(
                row[first_eos..].iter().all(|&v| v == 1),
                "EOS pads: {row:?}"
            );
            assert!(row[..first_eos].iter().all(|&v| (2..100).contains(&v)));
        }
        assert_eq!(
            ids[..8].iter().position(|&v| v == 1),
            Some(4),
            "text 0 is half content"
        );
        let Err(err) = load_text(
            &TextSource::Random {
                texts: 1,
                seed: 0,
                eos_id: 100,
            },
            100,
            8,
        ) else {
            panic!("an EOS id outside the vocabulary was accepted");
        };
        assert!(
            matches!(
                err,
                Error::EosIdOutOfVocab {
                    eos_id: 100,
                    vocab: 100
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn counts_outside_their_range_are_refused() {
        let Err(err) = load(&InputSource::Random { batch: 0, seed: 0 }, 8) else {
            panic!("an empty batch was accepted");
        };
        assert!(
            matches!(
                err,
                Error::CountOutOfRange {
                    option: "--batch",
                    value: 0,
                    max: MAX_BATCH
                }
            ),
            "{err}"
        );
        let random = |texts| TextSource::Random {
            texts,
            seed: 0,
            eos_id: 1,
        };
        let Err(err) = load_text(&random(MAX_TEXTS + 1), 100, 8) else {
            panic!("too many texts were accepted");
        };
        assert!(
            matches!(
                err,
                Error::CountOutOfRange {
                    option: "--text-batch",
                    value,
                    max: MAX_TEXTS
                } if value == MAX_TEXTS + 1
            ),
            "{err}"
        );
    }

    #[test]
    fn random_images_too_large_to_size_overflow() {
        let Err(err) = load(&InputSource::Random { batch: 2, seed: 0 }, usize::MAX) else {
            panic!("an image size that overflows was accepted");
        };
        assert!(
            matches!(&err, Error::Overflow { dims, .. } if dims == &[2, usize::MAX, usize::MAX, 3]),
            "{err}"
        );
    }

    #[test]
    fn an_input_array_of_another_resolution_is_refused() {
        let pixels =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/vit-token/input.npy");
        let Err(err) = load(&InputSource::Npy(pixels.clone()), 32) else {
            panic!("64x64 pixels were accepted for a 32x32 model");
        };
        assert!(
            matches!(
                &err,
                Error::InputShape { option: "--input", path, found, .. }
                    if path == &pixels && found == &[2, 64, 64, 3]
            ),
            "{err}"
        );
    }

    #[test]
    fn a_directory_without_images_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("notes.txt"), "not an image").expect("writes");
        let Err(err) = load(
            &InputSource::Images {
                dir: dir.path().to_path_buf(),
                size: None,
            },
            16,
        ) else {
            panic!("a directory without images was accepted");
        };
        assert!(
            matches!(&err, Error::NoImages { dir: d } if d == dir.path()),
            "{err}"
        );
    }

    #[test]
    fn text_ids_are_read_from_int_npy_files() {
        let gold = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../fixtures/big_vision/siglip-tiny/text.npy");
        let ids = load_text(&TextSource::Npy(gold), 100, 8).expect("reads int32");
        assert_eq!(ids.size(), vec![3, 8]);
        assert_eq!(ids.int64_value(&[0, 7]), 1);
        assert_eq!(ids.int64_value(&[0, 0]), 99);
        let pixels = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../fixtures/big_vision/siglip-tiny/input.npy");
        let Err(err) = load_text(&TextSource::Npy(pixels), 100, 8) else {
            panic!("a float array was read as ids");
        };
        assert!(matches!(err, Error::TextIds { .. }), "{err}");
    }

    #[test]
    fn random_inputs_are_seeded_and_in_range() {
        let a = load(&InputSource::Random { batch: 2, seed: 7 }, 8).expect("builds");
        let b = load(&InputSource::Random { batch: 2, seed: 7 }, 8).expect("builds");
        let c = load(&InputSource::Random { batch: 2, seed: 8 }, 8).expect("builds");
        assert_eq!(a.size(), vec![2, 8, 8, 3]);
        assert!(a.equal(&b));
        assert!(!a.equal(&c));
        assert!(a.max().double_value(&[]) <= 1.0 && a.min().double_value(&[]) >= -1.0);
        assert!(
            a.std(true).double_value(&[]) > 0.4,
            "uniform on [-1, 1] has std 0.58"
        );
    }

    #[test]
    fn a_non_square_image_size_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let request = InputSource::Images {
            dir: dir.path().to_path_buf(),
            size: Some((64, 48)),
        };
        let Err(err) = load(&request, 64) else {
            panic!("a non-square request was accepted");
        };
        assert!(
            matches!(
                err,
                Error::ImagesSize {
                    width: 64,
                    height: 48,
                    model: 64
                }
            ),
            "{err}"
        );
        let request = InputSource::Images {
            dir: dir.path().to_path_buf(),
            size: Some((48, 48)),
        };
        let Err(err) = load(&request, 64) else {
            panic!("a size the model does not run at was accepted");
        };
        assert!(
            matches!(
                err,
                Error::ImagesSize {
                    width: 48,
                    height: 48,
                    model: 64
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn images_shrunk_say_how_far_an_antialiased_resize_is_and_enlarged_ones_do_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A fine checkerboard: antialiasing averages it to grey where plain bilinear picks cells.
        let img = image::RgbImage::from_fn(64, 48, |x, y| {
            if (x + y) % 2 == 0 {
                image::Rgb([255, 255, 255])
            } else {
                image::Rgb([0, 0, 0])
            }
        });
        img.save(dir.path().join("a.png")).expect("saves");
        let source = InputSource::Images {
            dir: dir.path().to_path_buf(),
            size: None,
        };
        let (x, note) = load_with_note(&source, 8).expect("loads");
        assert_eq!(x.size(), vec![1, 8, 8, 3]);
        let note = note.expect("a shrunk image gets the note");
        assert!(
            note.contains("no antialiasing") && note.contains("/255"),
            "{note}"
        );
        let (_, note) = load_with_note(&source, 128).expect("loads");
        assert!(note.is_none(), "{note:?}");
    }

    #[test]
    fn images_are_decoded_squashed_and_scaled() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A 40x20 image: white left half, black right half; squashed, both halves stay.
        let img = image::RgbImage::from_fn(40, 20, |x, _| {
            if x < 20 {
                image::Rgb([255, 255, 255])
            } else {
                image::Rgb([0, 0, 0])
            }
        });
        img.save(dir.path().join("a.png")).expect("saves");
        let x = load(
            &InputSource::Images {
                dir: dir.path().to_path_buf(),
                size: None,
            },
            10,
        )
        .expect("loads");
        assert_eq!(x.size(), vec![1, 10, 10, 3]);
        assert!(
            (x.double_value(&[0, 5, 0, 0]) - 1.0).abs() < 1e-6,
            "left edge is white"
        );
        assert!(
            (x.double_value(&[0, 5, 9, 0]) + 1.0).abs() < 1e-6,
            "right edge is black"
        );
    }
}
