//! A conversion plan: the output tensors in write order, each with the recipe that computes it from the source.
//!
//! Layouts build plans out of these few transforms; the executor in `convert.rs` streams transposes and copies a
//! band at a time (with [`transpose_encode_bytes`]) and evaluates the small recipes whole ([`Recipe::eval`]).
//! Every recipe reads only the source tensors it names.

use std::collections::{BTreeMap, BTreeSet};

use vitconv_tensors::DType;

use crate::error::{Error, Result};
use crate::model::Param;
use crate::options::{OutDType, ResizeMethod};
use crate::resize::resize_grid;

/// Reads source parameters; implemented for `TensorFile` and, in tests, for in-memory maps.
pub trait Fetch {
    /// The parameter's values as f32, in C order (one slice of a stacked tensor where it has an index).
    fn fetch(&self, param: &Param) -> Result<Vec<f32>>;
}

/// How one output tensor is computed.
#[derive(Debug, Clone, PartialEq)]
pub enum Recipe {
    /// The source values unchanged (only the shape label may change, e.g. `(1,1,1,C)` -> `(C,)`).
    Copy(Param),
    /// A source matrix `[rows, cols]` written as `[cols, rows]` (Dense kernels; q/k/v kernels seen as `[D, H*Dh]`).
    Transpose {
        src: Param,
        rows: usize,
        cols: usize,
    },
    /// Several recipes written one after the other along the first axis (fused q, k, v).
    Concat(Vec<Recipe>),
    /// An HWIO convolution kernel written OIHW, each input channel multiplied by `in_scale[c]` when given.
    ConvKernel {
        src: Param,
        hwio: [usize; 4],
        in_scale: Option<Vec<f32>>,
    },
    /// A patch bias plus the kernel applied to a constant per-channel input offset (the folded normalisation).
    PatchBias {
        bias: Param,
        kernel: Param,
        hwio: [usize; 4],
        in_offset: Vec<f32>,
    },
    /// A position embedding `[.., prefix + grid, dim]`: prefix rows copied, grid resampled, `add_to_grid`
    /// (a `[dim]` vector, e.g. a folded patch bias) added to every grid row.
    PosEmbed {
        src: Param,
        prefix_rows: usize,
        from: (usize, usize),
        to: (usize, usize),
        dim: usize,
        method: ResizeMethod,
        add_to_grid: Option<Box<Recipe>>,
    },
    /// big_vision's `posemb_sincos_2d` for a `grid` of rows x columns and width `dim`, computed in f64 and
    /// rounded once to the output type; `add_to_grid` as for [`Recipe::PosEmbed`].
    Sincos2d {
        grid: (usize, usize),
        dim: usize,
        add_to_grid: Option<Box<Recipe>>,
    },
    /// `len` copies of one value (OpenAI CLIP's `ln_pre`, which the source does not have: weight 1, bias 0).
    Fill { value: f32, len: usize },
    /// An `n x n` identity (CLIP-style `proj` with `--proj none`).
    Identity(usize),
}

impl Recipe {
    /// The source tensors this recipe reads.
    pub fn sources(&self, out: &mut BTreeSet<String>) {
        match self {
            Recipe::Copy(s)
            | Recipe::Transpose { src: s, .. }
            | Recipe::ConvKernel { src: s, .. } => {
                out.insert(s.tensor.clone());
            }
            Recipe::Concat(parts) => parts.iter().for_each(|p| p.sources(out)),
            Recipe::PatchBias { bias, kernel, .. } => {
                out.insert(bias.tensor.clone());
                out.insert(kernel.tensor.clone());
            }
            Recipe::PosEmbed {
                src, add_to_grid, ..
            } => {
                out.insert(src.tensor.clone());
                if let Some(r) = add_to_grid {
                    r.sources(out);
                }
            }
            Recipe::Sincos2d { add_to_grid, .. } => {
                if let Some(r) = add_to_grid {
                    r.sources(out);
                }
            }
            Recipe::Fill { .. } | Recipe::Identity(_) => {}
        }
    }

    /// The single source tensor whose bytes are the output unchanged, if this is a plain copy.
    pub fn passthrough(&self) -> Option<&Param> {
        match self {
            Recipe::Copy(s) => Some(s),
            _ => None,
        }
    }

    /// Appends the output, encoded as `dtype`, to `out`. For the small recipes (patch kernel, biases, position
    /// embedding, stem convolutions): the executor streams transposes and copies band by band instead.
    pub fn eval_bytes(&self, src: &dyn Fetch, dtype: OutDType, out: &mut Vec<u8>) -> Result<()> {
        match self {
            Recipe::Concat(parts) => {
                for p in parts {
                    p.eval_bytes(src, dtype, out)?;
                }
            }
            // Rounded once, from f64 to the output type, as the exactness asks.
            Recipe::Sincos2d {
                grid,
                dim,
                add_to_grid: None,
            } => encode_append_f64(&sincos2d(*grid, *dim), dtype, out),
            _ => encode_append(&self.eval(src)?, dtype, out),
        }
        Ok(())
    }

    /// Computes the output values.
    pub fn eval(&self, src: &dyn Fetch) -> Result<Vec<f32>> {
        match self {
            Recipe::Copy(s) => src.fetch(s),
            Recipe::Transpose { src: s, rows, cols } => {
                let v = fetch_len(src, s, &[*rows, *cols])?;
                Ok(transpose(&v, *rows, *cols))
            }
            Recipe::Concat(parts) => {
                let mut out = Vec::new();
                for p in parts {
                    out.extend(p.eval(src)?);
                }
                Ok(out)
            }
            Recipe::ConvKernel {
                src: s,
                hwio,
                in_scale,
            } => {
                let v = fetch_len(src, s, hwio)?;
                Ok(hwio_to_oihw(&v, *hwio, in_scale.as_deref()))
            }
            Recipe::PatchBias {
                bias,
                kernel,
                hwio,
                in_offset,
            } => {
                let b = fetch_len(src, bias, &[hwio[3]])?;
                let k = fetch_len(src, kernel, hwio)?;
                Ok(fold_bias(&b, &k, *hwio, in_offset))
            }
            Recipe::PosEmbed {
                src: s,
                prefix_rows,
                from,
                to,
                dim,
                method,
                add_to_grid,
            } => {
                let rows = from.0 * from.1 + prefix_rows;
                let v = fetch_len(src, s, &[rows, *dim])?;
                let split = prefix_rows * dim;
                let (prefix, grid) = v.split_at(split.min(v.len()));
                let mut out = prefix.to_vec();
                let mut grid = if from == to {
                    grid.to_vec()
                } else {
                    resize_grid(grid, *from, *to, *dim, *method)
                };
                if let Some(add) = add_to_grid {
                    let a = add.eval(src)?;
                    if a.len() != *dim {
                        return Err(Error::Length {
                            name: s.describe(),
                            shape: vec![*dim],
                            expected: *dim,
                            found: a.len(),
                        });
                    }
                    for row in grid.chunks_exact_mut(*dim) {
                        row.iter_mut().zip(&a).for_each(|(g, a)| *g += a);
                    }
                }
                out.append(&mut grid);
                Ok(out)
            }
            Recipe::Sincos2d {
                grid,
                dim,
                add_to_grid,
            } => {
                let mut v: Vec<f32> = sincos2d(*grid, *dim).iter().map(|x| *x as f32).collect();
                if let Some(add) = add_to_grid {
                    let a = add.eval(src)?;
                    if a.len() != *dim {
                        return Err(Error::Length {
                            name: "sincos2d position embedding".to_string(),
                            shape: vec![*dim],
                            expected: *dim,
                            found: a.len(),
                        });
                    }
                    for row in v.chunks_exact_mut((*dim).max(1)) {
                        row.iter_mut().zip(&a).for_each(|(g, a)| *g += a);
                    }
                }
                Ok(v)
            }
            Recipe::Fill { value, len } => Ok(vec![*value; *len]),
            Recipe::Identity(n) => {
                let mut v = vec![0f32; n * n];
                v.iter_mut().step_by(n + 1).for_each(|x| *x = 1.0);
                Ok(v)
            }
        }
    }
}

/// big_vision's `posemb_sincos_2d` (`models/vit.py`) for an `h x w` grid and width `dim`, in f64: rows in
/// row-major `(y, x)` order, `omega = 1 / 10000^(k / (dim/4 - 1))` for `k < dim/4`, and each row
/// `[sin(x omega), cos(x omega), sin(y omega), cos(y omega)]`. (timm's own helper divides by `dim/4`,
/// not `dim/4 - 1`: a different table.) The source module guarantees `dim % 4 == 0`.
pub fn sincos2d((h, w): (usize, usize), dim: usize) -> Vec<f64> {
    let quarter = dim / 4;
    let denom = quarter.saturating_sub(1).max(1) as f64;
    let omega: Vec<f64> = (0..quarter)
        .map(|k| 1.0 / 10_000f64.powf(k as f64 / denom))
        .collect();
    let mut out = Vec::with_capacity(h.saturating_mul(w).saturating_mul(dim));
    for y in 0..h {
        for x in 0..w {
            out.extend(omega.iter().map(|o| (x as f64 * o).sin()));
            out.extend(omega.iter().map(|o| (x as f64 * o).cos()));
            out.extend(omega.iter().map(|o| (y as f64 * o).sin()));
            out.extend(omega.iter().map(|o| (y as f64 * o).cos()));
        }
    }
    out
}

/// Appends f64 `values` rounded once to the little-endian `dtype`.
fn encode_append_f64(values: &[f64], dtype: OutDType, out: &mut Vec<u8>) {
    for v in values {
        match dtype {
            OutDType::F32 => out.extend((*v as f32).to_le_bytes()),
            OutDType::F16 => out.extend(half::f16::from_f64(*v).to_le_bytes()),
            OutDType::BF16 => out.extend(half::bf16::from_f64(*v).to_le_bytes()),
        }
    }
}

/// Fetches a tensor and checks it holds exactly the product of `shape` values.
fn fetch_len(src: &dyn Fetch, param: &Param, shape: &[usize]) -> Result<Vec<f32>> {
    let v = src.fetch(param)?;
    check_len(&param.describe(), shape, v.len())?;
    Ok(v)
}

/// Checks that `found` values fill `shape`.
fn check_len(name: &str, shape: &[usize], found: usize) -> Result<()> {
    let expected = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or(Error::Overflow {
            name: name.to_string(),
            what: "element count",
        })?;
    if found != expected {
        return Err(Error::Length {
            name: name.to_string(),
            shape: shape.to_vec(),
            expected,
            found,
        });
    }
    Ok(())
}

/// Side of the square blocks [`transpose`] moves through a local buffer.
const BLOCK: usize = 32;

/// Cache-friendly transpose of a row-major `[rows, cols]` matrix.
///
/// Each 32 x 32 block is copied into a local buffer row by row and written out column by column, so both the
/// reads and the writes touch whole cache lines; a plain strided loop is about 4x slower on the power-of-two
/// widths ViTs use (every row of a block would land in the same cache set).
pub fn transpose<T: Copy + Default>(v: &[T], rows: usize, cols: usize) -> Vec<T> {
    let mut out = vec![T::default(); v.len()];
    let mut buf = [[T::default(); BLOCK]; BLOCK];
    for r0 in (0..rows).step_by(BLOCK) {
        let rn = BLOCK.min(rows - r0);
        for c0 in (0..cols).step_by(BLOCK) {
            let cn = BLOCK.min(cols - c0);
            for (i, row) in buf.iter_mut().enumerate().take(rn) {
                let s = (r0 + i) * cols + c0;
                if let (Some(dst), Some(src)) = (row.get_mut(..cn), v.get(s..s + cn)) {
                    dst.copy_from_slice(src);
                }
            }
            for j in 0..cn {
                let d = (c0 + j) * rows + r0;
                if let Some(dst) = out.get_mut(d..d + rn) {
                    for (x, row) in dst.iter_mut().zip(buf.iter()) {
                        if let Some(val) = row.get(j) {
                            *x = *val;
                        }
                    }
                }
            }
        }
    }
    out
}

/// Appends `values` encoded as little-endian `dtype` to `out`.
pub fn encode_append(values: &[f32], dtype: OutDType, out: &mut Vec<u8>) {
    let start = out.len();
    out.resize(start + values.len() * dtype.dtype().size(), 0);
    if let Some(dst) = out.get_mut(start..) {
        encode_into(values, dtype, dst);
    }
}

/// Encodes `values` into `dst`, which holds exactly their encoded size.
///
/// Elements are stored as fixed-size arrays (`as_chunks_mut`), so each store is one register move; copying
/// through `copy_from_slice` on a runtime-sized chunk compiled to a `memcpy` call per element.
fn encode_into(values: &[f32], dtype: OutDType, dst: &mut [u8]) {
    match dtype {
        OutDType::F32 => dst
            .as_chunks_mut::<4>()
            .0
            .iter_mut()
            .zip(values)
            .for_each(|(d, v)| *d = v.to_le_bytes()),
        OutDType::F16 => crate::kernel::f32_to_f16_bytes(values, dst),
        OutDType::BF16 => dst
            .as_chunks_mut::<2>()
            .0
            .iter_mut()
            .zip(values)
            .for_each(|(d, v)| *d = half::bf16::from_f32(*v).to_le_bytes()),
    }
}

/// The transpose of a `[rows, cols]` matrix (see [`transpose`]), straight from the source's little-endian bytes
/// of `in_dtype` (a float type), encoded as `dtype`, into
/// `dst`. Source row `r` starts at element `r * stride` of `raw` (`stride >= cols`), and output row `c` at
/// element `c * dst_stride` of `dst` (`dst_stride >= rows`), so a band can be transposed a few columns, or
/// a few rows, at a time: a group of source rows lands in a column strip of the output.
///
/// Where the output keeps the source's type the elements are moved as they are, bytes untouched (the
/// common case: f32 to f32). Otherwise each 32 x 32 block is decoded as it is loaded, exactly as
/// [`crate::convert`]'s whole-tensor path decodes (`from_le_bytes`, then widening), so the output bytes are
/// identical to decoding first. No decoded copy of the matrix is held and the data is read once.
pub fn transpose_encode_bytes(
    raw: &[u8],
    in_dtype: DType,
    [rows, cols, stride]: [usize; 3],
    dtype: OutDType,
    dst: &mut [u8],
    dst_stride: usize,
) {
    let shape = [rows, cols, stride, dst_stride];
    if in_dtype == DType::F32 && dtype != OutDType::F32 {
        transpose_f32_narrow(raw.as_chunks().0, shape, dtype, dst);
        return;
    }
    if in_dtype == DType::BF16 && dtype == OutDType::F32 {
        transpose_bf16_widen(raw.as_chunks().0, shape, dst.as_chunks_mut().0);
        return;
    }
    if in_dtype == dtype.dtype() {
        match in_dtype.size() {
            4 => crate::kernel::transpose4(raw.as_chunks().0, shape, dst.as_chunks_mut().0),
            2 => crate::kernel::transpose2(raw.as_chunks().0, shape, dst.as_chunks_mut().0),
            _ => {}
        }
        return;
    }
    match in_dtype {
        DType::F32 => transpose_decode_encode::<4>(raw, shape, f32::from_le_bytes, dtype, dst),
        DType::BF16 => transpose_decode_encode::<2>(
            raw,
            shape,
            |b| half::bf16::from_le_bytes(b).to_f32(),
            dtype,
            dst,
        ),
        DType::F16 => transpose_decode_encode::<2>(
            raw,
            shape,
            |b| half::f16::from_le_bytes(b).to_f32(),
            dtype,
            dst,
        ),
        DType::F64 => {
            transpose_decode_encode::<8>(raw, shape, |b| f64::from_le_bytes(b) as f32, dtype, dst)
        }
        // Callers check the source is a float type first; other types have no values to give.
        _ => {}
    }
}

/// Transposes a `[rows, cols]` matrix of `N`-byte elements (row `r` at `r * stride`) into `dst` (row `c` at
/// `c * dst_stride`) without looking at them.
///
/// Whole 32 x 32 blocks go through fixed-size arrays, which compile to straight vector loads and stores;
/// the ragged edges take a slower, element-by-element path.
pub(crate) fn transpose_elems<const N: usize>(
    src: &[[u8; N]],
    [rows, cols, stride, dst_stride]: [usize; 4],
    dst: &mut [[u8; N]],
) {
    let mut block = [[[0u8; N]; BLOCK]; BLOCK];
    for r0 in (0..rows).step_by(BLOCK) {
        let rn = BLOCK.min(rows - r0);
        for c0 in (0..cols).step_by(BLOCK) {
            let cn = BLOCK.min(cols - c0);
            if rn == BLOCK && cn == BLOCK {
                for (i, row) in block.iter_mut().enumerate() {
                    let s = (r0 + i) * stride + c0;
                    if let Some(src) = src
                        .get(s..s + BLOCK)
                        .and_then(|s| <&[_; BLOCK]>::try_from(s).ok())
                    {
                        *row = *src;
                    }
                }
                for j in 0..BLOCK {
                    let d = (c0 + j) * dst_stride + r0;
                    if let Some(out) = dst
                        .get_mut(d..d + BLOCK)
                        .and_then(|d| <&mut [_; BLOCK]>::try_from(d).ok())
                    {
                        for (o, row) in out.iter_mut().zip(&block) {
                            if let Some(v) = row.get(j) {
                                *o = *v;
                            }
                        }
                    }
                }
            } else {
                for j in 0..cn {
                    for i in 0..rn {
                        if let (Some(d), Some(s)) = (
                            dst.get_mut((c0 + j) * dst_stride + r0 + i),
                            src.get((r0 + i) * stride + c0 + j),
                        ) {
                            *d = *s;
                        }
                    }
                }
            }
        }
    }
}

/// The body of [`transpose_encode_bytes`] for f32 to f16 or bf16, the usual narrowing.
///
/// `CHUNK` source columns at a time are transposed as f32 by the 4-byte kernel into a small buffer that
/// stays in cache, and then each output row's run of `rows` values is narrowed at once (with F16C where
/// the processor has it). Element by element, this path took four times as long as an f32 to f32
/// conversion (BENCHMARKS.md). The values are the same: both round each one to nearest, ties to even.
fn transpose_f32_narrow(
    src: &[[u8; 4]],
    [rows, cols, stride, dst_stride]: [usize; 4],
    dtype: OutDType,
    dst: &mut [u8],
) {
    const CHUNK: usize = 64;
    let es = dtype.dtype().size();
    let mut block = vec![[0u8; 4]; CHUNK * rows];
    let mut values = vec![0f32; rows];
    for c0 in (0..cols).step_by(CHUNK) {
        let width = CHUNK.min(cols - c0);
        let Some(from) = src.get(c0..) else {
            return;
        };
        crate::kernel::transpose4_cached(from, [rows, width, stride, rows], &mut block);
        for (j, row) in block.chunks_exact(rows.max(1)).take(width).enumerate() {
            values
                .iter_mut()
                .zip(row)
                .for_each(|(v, b)| *v = f32::from_le_bytes(*b));
            let d = (c0 + j) * dst_stride * es;
            if let Some(out) = dst.get_mut(d..d + rows * es) {
                encode_into(&values, dtype, out);
            }
        }
    }
}

/// The body of [`transpose_encode_bytes`] for bf16 to f32 (bf16 checkpoints written as f32, the default).
///
/// A bf16 value is the top half of an f32, so widening is exact: `CHUNK` source columns at a time are
/// widened into a small block that stays in cache and transposed from there by the 4-byte kernel, which
/// element by element took half as long again as an f32 source (BENCHMARKS.md).
fn transpose_bf16_widen(
    src: &[[u8; 2]],
    [rows, cols, stride, dst_stride]: [usize; 4],
    dst: &mut [[u8; 4]],
) {
    const CHUNK: usize = 64;
    let mut block = vec![[0u8; 4]; rows * CHUNK];
    for c0 in (0..cols).step_by(CHUNK) {
        let width = CHUNK.min(cols - c0);
        for (r, wide) in block.chunks_exact_mut(CHUNK).enumerate() {
            let s = r * stride + c0;
            if let Some(narrow) = src.get(s..s + width) {
                for (w, [lo, hi]) in wide.iter_mut().zip(narrow) {
                    // Little-endian f32 bytes of the bf16's bits shifted up by 16.
                    *w = [0, 0, *lo, *hi];
                }
            }
        }
        if let Some(out) = dst.get_mut(c0 * dst_stride..) {
            crate::kernel::transpose4(&block, [rows, width, CHUNK, dst_stride], out);
        }
    }
}

/// The body of [`transpose_encode_bytes`] for `N`-byte source elements that change type.
fn transpose_decode_encode<const N: usize>(
    raw: &[u8],
    [rows, cols, stride, dst_stride]: [usize; 4],
    decode: impl Fn([u8; N]) -> f32,
    dtype: OutDType,
    dst: &mut [u8],
) {
    let es = dtype.dtype().size();
    let src = raw.as_chunks::<N>().0;
    let mut block = [[0f32; BLOCK]; BLOCK];
    let mut column = [0f32; BLOCK];
    for r0 in (0..rows).step_by(BLOCK) {
        let rn = BLOCK.min(rows - r0);
        for c0 in (0..cols).step_by(BLOCK) {
            let cn = BLOCK.min(cols - c0);
            for (i, row) in block.iter_mut().enumerate().take(rn) {
                let s = (r0 + i) * stride + c0;
                if let Some(src) = src.get(s..s + cn) {
                    row.iter_mut().zip(src).for_each(|(d, b)| *d = decode(*b));
                }
            }
            for j in 0..cn {
                for (x, row) in column.iter_mut().zip(block.iter()).take(rn) {
                    *x = row.get(j).copied().unwrap_or(0.0);
                }
                let d = ((c0 + j) * dst_stride + r0) * es;
                if let (Some(dst), Some(src)) = (dst.get_mut(d..d + rn * es), column.get(..rn)) {
                    encode_into(src, dtype, dst);
                }
            }
        }
    }
}

/// HWIO -> OIHW, optionally scaling each input channel.
pub fn hwio_to_oihw(v: &[f32], [h, w, i, o]: [usize; 4], in_scale: Option<&[f32]>) -> Vec<f32> {
    // Seen as [(h, w, i), o], OIHW is its transpose [o, (h, w, i)] with the inner (h, w, i) reordered to (i, h, w).
    let t = transpose(v, h * w * i, o);
    let mut out = vec![0f32; v.len()];
    for oc in 0..o {
        for y in 0..h {
            for x in 0..w {
                for c in 0..i {
                    let scale = in_scale.and_then(|s| s.get(c)).copied().unwrap_or(1.0);
                    if let (Some(d), Some(s)) = (
                        out.get_mut(((oc * i + c) * h + y) * w + x),
                        t.get(oc * h * w * i + (y * w + x) * i + c),
                    ) {
                        *d = *s * scale;
                    }
                }
            }
        }
    }
    out
}

/// `b[o] + sum over (y, x, c) of K[y, x, c, o] * offset[c]`, accumulated in f64.
pub fn fold_bias(b: &[f32], k: &[f32], [h, w, i, o]: [usize; 4], offset: &[f32]) -> Vec<f32> {
    let mut acc: Vec<f64> = b.iter().map(|&x| f64::from(x)).collect();
    for pos in 0..h * w {
        for c in 0..i {
            let off = f64::from(offset.get(c).copied().unwrap_or(0.0));
            if off == 0.0 {
                continue;
            }
            let base = (pos * i + c) * o;
            if let Some(row) = k.get(base..base + o) {
                acc.iter_mut()
                    .zip(row)
                    .for_each(|(a, &kv)| *a += f64::from(kv) * off);
            }
        }
    }
    acc.into_iter().map(|x| x as f32).collect()
}

/// One tensor of the output.
#[derive(Debug, Clone, PartialEq)]
pub struct OutTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub recipe: Recipe,
}

/// Where the plan's files go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputKind {
    /// One weights file (`.pt` / `.safetensors`), plus any side files.
    File,
    /// A Hugging Face model directory: `model.safetensors` and JSON configs inside OUTPUT.
    HfDirectory,
    /// One weights file when OUTPUT has a weights extension; otherwise a self-contained folder holding
    /// `model.safetensors` and the side files, which `python` (the folder's own loader line) builds from.
    FileOrFolder { python: String },
}

/// A side file written next to (or, for hf, inside) the output: e.g. `config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct SideFile {
    /// For `File` outputs: the suffix replacing OUTPUT's extension (`.open_clip.json`); for hf: the file name.
    pub name: String,
    pub contents: String,
}

/// Everything a layout decided: tensors, metadata, messages, side files.
#[derive(Debug, Clone)]
pub struct Plan {
    pub kind: OutputKind,
    pub tensors: Vec<OutTensor>,
    /// Source tensors deliberately left out, each with the option that asked for it (also in the notes).
    pub dropped: Vec<String>,
    pub metadata: BTreeMap<String, String>,
    /// What was mapped, folded or dropped, one sentence each (also in `vitconv.notes`).
    pub notes: Vec<String>,
    /// Python that builds the matching model and loads the output.
    pub python: String,
    pub side_files: Vec<SideFile>,
}

impl Plan {
    /// Checks that every source tensor is read by some output or listed as dropped.
    pub fn check_complete(
        &self,
        source: &BTreeMap<String, Vec<usize>>,
        recognised: &str,
    ) -> Result<()> {
        let mut used = BTreeSet::new();
        for t in &self.tensors {
            t.recipe.sources(&mut used);
        }
        used.extend(self.dropped.iter().cloned());
        match source.iter().find(|(k, _)| !used.contains(*k)) {
            Some((name, shape)) => Err(Error::Unmapped {
                name: name.clone(),
                shape: shape.clone(),
                recognised: recognised.to_string(),
            }),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose_matches_index_formula() {
        let (r, c) = (37, 70);
        let v: Vec<f32> = (0..r * c).map(|x| x as f32).collect();
        let t = transpose(&v, r, c);
        for i in 0..r {
            for j in 0..c {
                assert_eq!(t[j * r + i], v[i * c + j]);
            }
        }
    }

    #[test]
    fn transpose_from_bytes_equals_decode_then_transpose() {
        let (r, c) = (45, 70);
        let v: Vec<f32> = (0..r * c).map(|x| x as f32 * 0.37 - 100.0).collect();
        let sources: [(DType, Vec<u8>); 4] = [
            (DType::F32, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            (
                DType::BF16,
                v.iter()
                    .flat_map(|x| half::bf16::from_f32(*x).to_le_bytes())
                    .collect(),
            ),
            (
                DType::F16,
                v.iter()
                    .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
                    .collect(),
            ),
            (
                DType::F64,
                v.iter().flat_map(|x| f64::from(*x).to_le_bytes()).collect(),
            ),
        ];
        for (in_dtype, raw) in &sources {
            let decoded: Vec<f32> = raw
                .chunks_exact(in_dtype.size())
                .map(|b| match in_dtype {
                    DType::F32 => f32::from_le_bytes(b.try_into().unwrap()),
                    DType::BF16 => half::bf16::from_le_bytes(b.try_into().unwrap()).to_f32(),
                    DType::F16 => half::f16::from_le_bytes(b.try_into().unwrap()).to_f32(),
                    _ => f64::from_le_bytes(b.try_into().unwrap()) as f32,
                })
                .collect();
            for dtype in [OutDType::F32, OutDType::F16, OutDType::BF16] {
                // Stale bytes in the buffer must all be overwritten.
                let mut fused = vec![7u8; r * c * dtype.dtype().size()];
                transpose_encode_bytes(raw, *in_dtype, [r, c, c], dtype, &mut fused, r);
                let mut want = Vec::new();
                encode_append(&transpose(&decoded, r, c), dtype, &mut want);
                assert_eq!(fused, want, "{in_dtype:?} -> {dtype:?}");
            }
        }
    }

    #[test]
    fn same_type_transposes_keep_every_bit() {
        // A signalling NaN and a bf16 NaN payload would be altered by a decode/encode round trip.
        let (r, c) = (64, 33);
        let words: Vec<u32> = (0..(r * c) as u32)
            .map(|i| 0x7f80_0001 ^ i.wrapping_mul(2_654_435_761))
            .collect();
        let halves: Vec<u16> = words.iter().map(|w| (*w >> 16) as u16 | 0x7f81).collect();
        let le32 = |v: &[u32]| -> Vec<u8> { v.iter().flat_map(|w| w.to_le_bytes()).collect() };
        let le16 = |v: &[u16]| -> Vec<u8> { v.iter().flat_map(|h| h.to_le_bytes()).collect() };
        let cases = [
            (
                DType::F32,
                OutDType::F32,
                le32(&words),
                le32(&transpose(&words, r, c)),
            ),
            (
                DType::BF16,
                OutDType::BF16,
                le16(&halves),
                le16(&transpose(&halves, r, c)),
            ),
        ];
        for (in_dtype, dtype, raw, want) in cases {
            let mut out = vec![0u8; raw.len()];
            transpose_encode_bytes(&raw, in_dtype, [r, c, c], dtype, &mut out, r);
            assert_eq!(out, want, "{in_dtype:?}");
        }
    }

    #[test]
    fn runs_of_columns_and_groups_of_rows_transpose_into_place() {
        // A [45, 70] matrix. Columns 10..50, as a band reader hands them out, give the rows of the whole
        // transpose from 10 on; rows 0..32 and then 32..45, as the converter reads them together, fill the
        // whole transpose column strip by column strip.
        let (r, c, from, n) = (45, 70, 10, 40);
        let v: Vec<f32> = (0..r * c).map(|x| x as f32 * 0.37 - 100.0).collect();
        let raw: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        for dtype in [OutDType::F32, OutDType::BF16, OutDType::F16] {
            let es = dtype.dtype().size();
            let mut whole = Vec::new();
            encode_append(&transpose(&v, r, c), dtype, &mut whole);
            let mut part = vec![0u8; r * n * es];
            transpose_encode_bytes(&raw[from * 4..], DType::F32, [r, n, c], dtype, &mut part, r);
            assert_eq!(part, whole[from * r * es..(from + n) * r * es], "{dtype:?}");
            let mut strips = vec![0u8; r * c * es];
            for (r0, g) in [(0, 32), (32, 13)] {
                let group = &raw[r0 * c * 4..(r0 + g) * c * 4];
                let strip = &mut strips[r0 * es..];
                transpose_encode_bytes(group, DType::F32, [g, c, c], dtype, strip, r);
            }
            assert_eq!(strips, whole, "{dtype:?}");
        }
    }

    #[test]
    fn hwio_to_oihw_moves_every_element() {
        let hwio = [2, 3, 4, 5];
        let v: Vec<f32> = (0..120).map(|x| x as f32).collect();
        let out = hwio_to_oihw(&v, hwio, Some(&[1.0, 2.0, 1.0, 1.0]));
        for y in 0..2 {
            for x in 0..3 {
                for c in 0..4 {
                    for o in 0..5 {
                        let src = v[((y * 3 + x) * 4 + c) * 5 + o];
                        let scale = if c == 1 { 2.0 } else { 1.0 };
                        assert_eq!(out[((o * 4 + c) * 2 + y) * 3 + x], src * scale);
                    }
                }
            }
        }
    }

    #[test]
    fn folded_bias_equals_kernel_on_constant_input() {
        let hwio = [2, 2, 3, 2];
        let k: Vec<f32> = (0..24).map(|x| (x as f32 - 11.0) * 0.1).collect();
        let b = vec![0.5, -0.25];
        let off = [0.1, -0.2, 0.3];
        let got = fold_bias(&b, &k, hwio, &off);
        for o in 0..2 {
            let mut want = f64::from(b[o]);
            for p in 0..4 {
                for c in 0..3 {
                    want += f64::from(k[(p * 3 + c) * 2 + o]) * f64::from(off[c]);
                }
            }
            assert!((f64::from(got[o]) - want).abs() < 1e-6);
        }
    }

    #[test]
    fn identity_and_fill() {
        struct None_;
        impl Fetch for None_ {
            fn fetch(&self, param: &Param) -> Result<Vec<f32>> {
                Err(Error::BadOption {
                    option: "test",
                    why: param.describe(),
                })
            }
        }
        assert_eq!(
            Recipe::Identity(2).eval(&None_).ok(),
            Some(vec![1.0, 0.0, 0.0, 1.0])
        );
        assert_eq!(
            Recipe::Fill { value: 1.0, len: 3 }.eval(&None_).ok(),
            Some(vec![1.0; 3])
        );
    }
}
