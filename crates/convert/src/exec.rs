//! The one interpreter of recipes: every output tensor's bytes, computed from the source as its recipe says.
//!
//! A plan is data (`plan.rs`); this module alone gives its recipes their meaning. The big ones (Dense and q/k/v
//! kernels, copies, convolution kernels) stream a band at a time into a `Sink`, so that memory does not grow
//! with the model. Position tables, resampled or computed, grow with the square of `--image-size` rather than
//! with the source, so they are streamed too, each band computed alone (`write_table`). The small ones whose
//! values depend on the whole tensor (a standardised kernel, a folded patch bias) are computed whole and,
//! where they are kernels, written through the same streaming code. The executor in `convert.rs` is one sink (bands handed to the file
//! writer); [`eval_bytes`] is another (the bytes in memory), so what a test evaluates is what a conversion
//! writes. The numeric kernels themselves live in `kernel.rs`.
//!
//! Band reads are positional on uncompressed sources. A deflated member cannot be read from the middle: one
//! stacked `[depth, ...]` is inflated once, front to back, each slice handed on as it comes out; an unstacked
//! one is inflated as it is read where the recipe reads it in file order (copies, convolution kernels, and
//! transposes done in one pass: up to `BANDS_PER_PASS` bands, a 16 MiB output at f32), and read whole
//! otherwise (a larger transpose, such as an in21k classifier head: memory is that tensor).

use std::ops::Range;

use vitconv_tensors::{ColumnBands, DType, TensorFile};

use crate::error::{Error, Result};
use crate::kernel::{
    self, encode_append, encode_append_f64, fold_bias, restandardise, transpose_encode_bytes,
    Sincos2d,
};
use crate::model::{Param, Stacked};
use crate::options::OutDType;
use crate::plan::{Fetch, Recipe};
use crate::resize::Resampler;

impl Fetch for TensorFile {
    fn fetch(&self, param: &Param) -> Result<Vec<f32>> {
        match param.stack {
            None => Ok(self.read_f32(&param.tensor)?),
            // A slice of a stacked tensor is read alone (and a deflated member streamed once, slice after
            // slice), never the whole stack once per block.
            Some(Stacked { index, count }) => {
                Ok(self.read_slice_f32(&param.tensor, index, count)?)
            }
        }
    }
}

/// Reads a parameter as `[rows, ...]` bytes in bands of columns (see `TensorFile::column_bands`).
fn bands<'f>(file: &'f TensorFile, param: &Param, rows: usize) -> Result<ColumnBands<'f>> {
    match param.stack {
        None => Ok(file.column_bands(&param.tensor, rows)?),
        Some(Stacked { index, count }) => {
            Ok(file.slice_bands(&param.tensor, index, count, rows)?)
        }
    }
}

/// Like [`bands`], for a reader that reads in file order (whole rows top to bottom, or bands of a single
/// row left to right): an unstacked deflated member is then inflated as it is read, not held whole.
fn sequential_bands<'f>(
    file: &'f TensorFile,
    param: &Param,
    rows: usize,
) -> Result<ColumnBands<'f>> {
    match param.stack {
        None => Ok(file.sequential_bands(&param.tensor, rows)?),
        Some(Stacked { index, count }) => {
            Ok(file.slice_bands(&param.tensor, index, count, rows)?)
        }
    }
}

/// Appends little-endian float bytes, decoded, to `out`, or refuses a type that is not a float.
fn decode_append(name: &str, dtype: DType, bytes: &[u8], out: &mut Vec<f32>) -> Result<()> {
    if kernel::decode_append(dtype, bytes, out) {
        Ok(())
    } else {
        Err(Error::NotFloat {
            name: name.to_string(),
            dtype: dtype.to_string(),
        })
    }
}

/// Where the interpreter puts an output tensor's bytes, a band at a time.
pub(crate) trait Sink {
    /// The largest band, in bytes, that the sink wants at once.
    fn band_bytes(&self) -> usize;
    /// A buffer to fill with the next band (its old contents may be anything; see [`sized`]).
    fn take(&mut self, name: &str) -> Result<Vec<u8>>;
    /// Passes the bytes of `buf` in `at` on, as the next bytes of tensor `name`.
    fn send(&mut self, name: &str, buf: Vec<u8>, at: Range<usize>) -> Result<()>;
}

/// Fills a buffer of the sink with `fill`, which returns where in it the band's bytes are (a transposed band
/// starts on a cache line, see `LINE`), and passes them on.
fn emit(
    sink: &mut dyn Sink,
    name: &str,
    fill: impl FnOnce(&mut Vec<u8>) -> Result<Range<usize>>,
) -> Result<()> {
    let mut buf = sink.take(name)?;
    let at = fill(&mut buf)?;
    sink.send(name, buf, at)
}

/// A sink that keeps every byte, for [`eval_bytes`].
struct VecSink {
    out: Vec<u8>,
    band_bytes: usize,
}

impl Sink for VecSink {
    fn band_bytes(&self) -> usize {
        self.band_bytes
    }

    fn take(&mut self, _name: &str) -> Result<Vec<u8>> {
        Ok(Vec::new())
    }

    fn send(&mut self, _name: &str, buf: Vec<u8>, at: Range<usize>) -> Result<()> {
        self.out.extend_from_slice(buf.get(at).unwrap_or_default());
        Ok(())
    }
}

/// Largest band of output bytes (and of decoded source values) computed at once: the big matrices are written
/// in bands of this size, so peak memory does not grow with the model.
pub(crate) const BAND_BYTES: usize = 4 << 20;

/// One output tensor, `recipe` applied to `file`, encoded as `dtype`: the bytes a conversion writes for it.
pub fn eval_bytes(file: &TensorFile, recipe: &Recipe, dtype: OutDType) -> Result<Vec<u8>> {
    let mut sink = VecSink {
        out: Vec::new(),
        band_bytes: BAND_BYTES,
    };
    write_recipe(
        file,
        "(evaluated recipe)",
        recipe,
        dtype,
        &mut BandScratch::default(),
        &mut sink,
    )?;
    Ok(sink.out)
}

/// One output tensor's values as f32: [`eval_bytes`] in f32, decoded.
pub fn eval(file: &TensorFile, recipe: &Recipe) -> Result<Vec<f32>> {
    let bytes = eval_bytes(file, recipe, OutDType::F32)?;
    let mut out = Vec::with_capacity(bytes.len() / 4);
    decode_append("(evaluated recipe)", DType::F32, &bytes, &mut out)?;
    Ok(out)
}

/// Source rows read and transposed together (see `write_recipe`): a multiple of the transpose's block, and
/// few enough that a group of a band's rows stays in cache.
const GROUP_ROWS: usize = 32;

/// Bytes of padding after each staged source row: one cache line, a whole number of elements of every type.
///
/// Source rows are usually a power of two bytes wide, so unpadded they would all map to the same few cache
/// sets, and the transpose, which reads down the rows, would evict each row's line before using all of it.
/// Padding them made the transpose 8-18% faster (`examples/transpose_bench.rs`, BENCHMARKS.md).
const STAGE_PAD: usize = 64;

/// A cache line, in bytes: transposed bands start on one, so that the transpose kernel can write whole
/// lines of output straight to memory (`kernel`).
const LINE: usize = 64;

/// Grows `buf` to hold `len` bytes starting on a cache line (see `LINE`), and returns where they are.
fn line_aligned(buf: &mut Vec<u8>, len: usize) -> Range<usize> {
    if buf.capacity() < len + LINE {
        buf.reserve(len + LINE - buf.len());
    }
    let at = buf.as_ptr().align_offset(LINE).min(LINE);
    sized(buf, at + len);
    at..at + len
}

/// The first `len` bytes of `buf`, growing it if needed but never shrinking it: a buffer reused for bands of
/// different sizes is zeroed once, at its largest, instead of on every regrowth.
fn sized(buf: &mut Vec<u8>, len: usize) -> &mut [u8] {
    if buf.len() < len {
        buf.resize(len, 0);
    }
    buf.get_mut(..len).unwrap_or_default()
}

/// Most bands of one tensor filled in one pass over its source rows.
///
/// A band is a run of the source's columns, so reading one skips the rest of every row; where the gap is
/// small, one read spans it anyway (`vitconv_tensors::MAX_SKIP`), and the skipped bytes are copied for
/// nothing. Filling four bands per pass reads a ViT-L MLP kernel (16 MB, four bands) in whole rows, which
/// cut the bytes read for ViT-L/32 by 40%; memory stays at `BAND_BUFFERS` bands. Bands of 4 MiB, four per
/// pass, were as fast as bands of 8 MiB, two per pass, and the memory grew less with the model.
pub(crate) const BANDS_PER_PASS: usize = 4;

/// A producer's reused buffers.
#[derive(Default)]
pub(crate) struct BandScratch {
    /// One group of source rows of a band (or a band of a copied tensor), as read.
    raw: Vec<u8>,
    /// The same band decoded.
    values: Vec<f32>,
    /// Source rows read packed, before they are decoded and scaled into `raw` (a scaled convolution kernel).
    packed: Vec<u8>,
}

/// The rows of a convolution kernel seen as `[(h w i), o]`: read from the file, or from values computed whole
/// (a standardised kernel), as little-endian f32.
enum KernelRows<'f> {
    File(ColumnBands<'f>),
    Computed { bytes: Vec<u8>, next: usize },
}

impl KernelRows<'_> {
    /// Fills `out` with its next `out.len() / pitch` rows of `width` bytes, `pitch` bytes apart.
    fn read_rows_pitched(&mut self, width: usize, pitch: usize, out: &mut [u8]) -> Result<()> {
        match self {
            KernelRows::File(bands) => Ok(bands.read_rows_pitched(width, pitch, out)?),
            KernelRows::Computed { bytes, next } => {
                for dst in out.chunks_mut(pitch.max(1)) {
                    let src = bytes.get(*next..next.saturating_add(width));
                    match (src, dst.get_mut(..width)) {
                        (Some(src), Some(dst)) => dst.copy_from_slice(src),
                        _ => {
                            return Err(Error::Length {
                                name: "(computed convolution kernel)".to_string(),
                                shape: vec![bytes.len() / width.max(1), width],
                                expected: next.saturating_add(width),
                                found: bytes.len(),
                            })
                        }
                    }
                    *next = next.saturating_add(width);
                }
                Ok(())
            }
        }
    }
}

/// Streams the bytes of one recipe into `em`: transposes, copies and kernels band by band, the small recipes
/// whole.
pub(crate) fn write_recipe(
    file: &TensorFile,
    name: &str,
    recipe: &Recipe,
    dtype: OutDType,
    scratch: &mut BandScratch,
    em: &mut dyn Sink,
) -> Result<()> {
    match recipe {
        Recipe::Transpose { src, rows, cols } => {
            let (rows, cols) = (*rows, *cols);
            let in_dtype = float_source_dtype(src)?;
            check_len(src, &[rows, cols], src.numel().unwrap_or(0))?;
            if rows == 0 || cols == 0 {
                return Ok(());
            }
            // Output rows per band: the band's encoded output stays within `BAND_BYTES`. Up to BANDS_PER_PASS
            // bands are filled in one pass over the source, read GROUP_ROWS source rows at a time into a small
            // staging buffer and transposed from there while it is still in cache; reading the whole band
            // first and transposing it afterwards ran at half speed.
            let (in_size, out_size) = (in_dtype.size(), dtype.dtype().size());
            // The bands share the columns evenly, so that a tensor a little over one band is not written
            // as a full band and a sliver: memory then follows the model's size less.
            let per_band = (em.band_bytes() / rows.saturating_mul(out_size)).max(1);
            let band_count = cols.div_ceil(per_band);
            let per_band = cols.div_ceil(band_count.max(1));
            // A tensor done in one pass is read in whole rows, top to bottom: in file order, so a deflated one
            // is inflated as it is read. One needing several passes reads each row's columns in several
            // pieces, which a deflated member can only serve from a copy of the whole tensor.
            let mut bands = if band_count <= BANDS_PER_PASS {
                sequential_bands(file, src, rows)?
            } else {
                bands(file, src, rows)?
            };
            let stage = &mut scratch.raw;
            let mut done = 0;
            while done < cols {
                let mut widths = Vec::with_capacity(BANDS_PER_PASS);
                let mut pass = 0;
                while widths.len() < BANDS_PER_PASS && done + pass < cols {
                    let n = per_band.min(cols - done - pass);
                    widths.push(n);
                    pass += n;
                }
                let mut outs = Vec::with_capacity(widths.len());
                for &n in &widths {
                    let mut buf = em.take(name)?;
                    let at = line_aligned(&mut buf, rows * n * out_size);
                    outs.push((buf, at));
                }
                // Staged rows sit a cache line further apart than their width (see `STAGE_PAD`).
                let pitch = pass * in_size + STAGE_PAD;
                let mut r0 = 0;
                while r0 < rows {
                    let g = GROUP_ROWS.min(rows - r0);
                    let group = sized(stage, g * pitch);
                    bands.read_rows_pitched(pass * in_size, pitch, group)?;
                    let mut c0 = 0;
                    for ((buf, at), &n) in outs.iter_mut().zip(&widths) {
                        let out = buf.get_mut(at.clone()).unwrap_or_default();
                        let strip = out.get_mut(r0 * out_size..).unwrap_or_default();
                        let src = group.get(c0 * in_size..).unwrap_or_default();
                        let shape = [g, n, pitch / in_size];
                        transpose_encode_bytes(src, in_dtype, shape, dtype, strip, rows);
                        c0 += n;
                    }
                    r0 += g;
                }
                for (buf, at) in outs {
                    em.send(name, buf, at)?;
                }
                done += pass;
            }
            Ok(())
        }
        Recipe::Concat(parts) => parts
            .iter()
            .try_for_each(|p| write_recipe(file, name, p, dtype, scratch, em)),
        Recipe::Copy(src) => {
            let in_dtype = src.dtype;
            let numel = src.numel().unwrap_or(0);
            if numel == 0 {
                return Ok(());
            }
            // One row: the bands are consecutive pieces of the tensor, each a whole number of elements.
            let mut bands = sequential_bands(file, src, 1)?;
            let piece = (em.band_bytes() / 4).max(1) * in_dtype.size();
            while bands.remaining() > 0 {
                let n = piece.min(bands.remaining());
                if in_dtype == dtype.dtype() {
                    // A copy in the output's own dtype goes through as the file's bytes.
                    emit(em, name, |buf| {
                        bands.read_rows(n, sized(buf, n))?;
                        Ok(0..n)
                    })?;
                } else {
                    let raw = sized(&mut scratch.raw, n);
                    bands.read_rows(n, raw)?;
                    scratch.values.clear();
                    decode_append(&src.describe(), in_dtype, raw, &mut scratch.values)?;
                    let values = &scratch.values;
                    emit(em, name, |buf| {
                        buf.clear();
                        encode_append(values, dtype, buf);
                        Ok(0..buf.len())
                    })?;
                }
            }
            Ok(())
        }
        Recipe::ConvKernel {
            src,
            hwio,
            in_scale,
        } => {
            let in_dtype = float_source_dtype(src)?;
            let [h, w, i, o] = *hwio;
            check_len(src, &[h, w, i, o], src.numel().unwrap_or(0))?;
            let rows = KernelRows::File(sequential_bands(file, src, (h * w * i).max(1))?);
            write_conv_kernel(
                name,
                rows,
                in_dtype,
                *hwio,
                in_scale.as_deref(),
                dtype,
                scratch,
                em,
            )
        }
        Recipe::StdConvKernel {
            src,
            hwio,
            source_eps,
            target_eps,
        } => {
            // Standardising needs each output channel's mean and variance over the whole kernel, so it is
            // computed whole (a stem convolution, a few MB at most), then written like any kernel.
            let v = fetch_len(file, src, hwio)?;
            let standardised = restandardise(&v, hwio[3], *source_eps, *target_eps);
            let bytes = standardised.iter().flat_map(|x| x.to_le_bytes()).collect();
            let rows = KernelRows::Computed { bytes, next: 0 };
            write_conv_kernel(name, rows, DType::F32, *hwio, None, dtype, scratch, em)
        }
        // Position tables grow with the square of `--image-size`, so they are computed a band at a time.
        Recipe::Sincos2d {
            grid,
            dim,
            add_to_grid,
        } => {
            let table = "sincos2d position embedding";
            let cells = grid.0.checked_mul(grid.1).ok_or(Error::Overflow {
                name: table.to_string(),
                what: "grid cells",
            })?;
            if dim % 4 != 0 {
                // The source module refuses such a width; the table would not fill its rows.
                return Err(Error::Length {
                    name: table.to_string(),
                    shape: vec![cells, *dim],
                    expected: cells.saturating_mul(*dim),
                    found: cells.saturating_mul(dim - dim % 4),
                });
            }
            let add = match add_to_grid {
                Some(add) => Some(grid_vector(file, add, *dim, table)?),
                None => None,
            };
            let values = GridValues::Sincos2d(Sincos2d::new(*grid, *dim));
            write_table(name, &[], (cells, *dim), &values, add.as_deref(), dtype, em)
        }
        Recipe::PosEmbed {
            src,
            prefix_rows,
            from,
            to,
            dim,
            method,
            add_to_grid,
        } => {
            let overflow = |what| Error::Overflow {
                name: src.describe(),
                what,
            };
            let from_cells = from.0.checked_mul(from.1).ok_or(overflow("grid cells"))?;
            let to_cells = to.0.checked_mul(to.1).ok_or(overflow("grid cells"))?;
            let rows = from_cells
                .checked_add(*prefix_rows)
                .ok_or(overflow("rows"))?;
            // The source table is the file's, read whole; only the output grid is computed in bands.
            let v = fetch_len(file, src, &[rows, *dim])?;
            let split = prefix_rows.saturating_mul(*dim).min(v.len());
            let (prefix, source) = v.split_at(split);
            let add = match add_to_grid {
                Some(add) => Some(grid_vector(file, add, *dim, &src.describe())?),
                None => None,
            };
            let values = if from == to {
                GridValues::Source(source)
            } else {
                GridValues::Resized(Resampler::new(*from, *to, *dim, *method), source)
            };
            write_table(
                name,
                prefix,
                (to_cells, *dim),
                &values,
                add.as_deref(),
                dtype,
                em,
            )
        }
        // The rest are small, and each output value depends on many source values.
        other => {
            let values = compute(file, other)?;
            emit(em, name, |buf| {
                buf.clear();
                encode_append(&values, dtype, buf);
                Ok(0..buf.len())
            })
        }
    }
}

/// Writes an HWIO convolution kernel OIHW, each input channel multiplied by `in_scale[c]` where given.
///
/// HWIO to OIHW is one transpose per input channel c: the kernel seen as a `[(h w), o]` matrix of the rows of
/// channel c, i rows apart, goes to the output's `[o, (h w)]` rows starting at `c * (h w)`, `i * (h w)` apart.
/// Done from the file's bytes by the transpose kernel, this took a ViT-L/32 patch kernel (12.6 MB) from 25-30
/// ms, through decoded copies, to about half, and the writer waits for it before anything else. A scaled
/// kernel (a folded input normalisation) has its rows decoded and multiplied in f32 first, then transposed as
/// f32: the product is rounded once, as the source's own arithmetic would.
#[allow(clippy::too_many_arguments)]
fn write_conv_kernel(
    name: &str,
    mut rows: KernelRows<'_>,
    in_dtype: DType,
    [h, w, i, o]: [usize; 4],
    in_scale: Option<&[f32]>,
    dtype: OutDType,
    scratch: &mut BandScratch,
    em: &mut dyn Sink,
) -> Result<()> {
    let hw = h.saturating_mul(w);
    if hw == 0 || i == 0 || o == 0 {
        return Ok(());
    }
    // What the transpose reads: the source's own bytes, or for a scaled kernel the scaled values as f32.
    let stage_dtype = if in_scale.is_some() {
        DType::F32
    } else {
        in_dtype
    };
    let (in_size, stage_size, out_size) =
        (in_dtype.size(), stage_dtype.size(), dtype.dtype().size());
    // Source rows are (position, channel) pairs of `o` values, read GROUP_ROWS positions (all their channels)
    // at a time into the padded stage.
    let pitch = o * stage_size + STAGE_PAD;
    let BandScratch {
        raw: stage,
        values,
        packed,
    } = scratch;
    emit(em, name, |buf| {
        let at = line_aligned(buf, o * i * hw * out_size);
        let out = buf.get_mut(at.clone()).unwrap_or_default();
        let mut p0 = 0;
        while p0 < hw {
            let g = GROUP_ROWS.min(hw - p0);
            let group = sized(stage, g * i * pitch);
            match in_scale {
                None => rows.read_rows_pitched(o * in_size, pitch, group)?,
                Some(scale) => {
                    let row_bytes = o * in_size;
                    let raw = sized(packed, g * i * row_bytes);
                    rows.read_rows_pitched(row_bytes, row_bytes, raw)?;
                    for (r, (src, dst)) in raw
                        .chunks(row_bytes)
                        .zip(group.chunks_mut(pitch))
                        .enumerate()
                    {
                        let factor = scale.get(r % i).copied().unwrap_or(1.0);
                        values.clear();
                        decode_append(name, in_dtype, src, values)?;
                        let dst = dst.get_mut(..o * 4).unwrap_or_default();
                        for (d, v) in dst.chunks_exact_mut(4).zip(values.iter()) {
                            d.copy_from_slice(&(v * factor).to_le_bytes());
                        }
                    }
                }
            }
            for c in 0..i {
                let from = group.get(c * pitch..).unwrap_or_default();
                let to = out.get_mut((c * hw + p0) * out_size..).unwrap_or_default();
                let shape = [g, o, i * pitch / stage_size];
                transpose_encode_bytes(from, stage_dtype, shape, dtype, to, i * hw);
            }
            p0 += g;
        }
        Ok(at)
    })
}

/// The grid rows of a position table, computed a band at a time by [`write_table`].
enum GridValues<'a> {
    /// The source's own grid, unchanged.
    Source(&'a [f32]),
    /// The source's grid resampled to another size, rounded once from f64 to f32.
    Resized(Resampler, &'a [f32]),
    /// big_vision's sincos2d, in f64.
    Sincos2d(Sincos2d),
}

/// Writes a position table, `prefix` (rows copied from the source) then a grid of `cells` rows of `dim`
/// values with `add` (a `[dim]` vector) added to each grid row, in bands whose f64 values fit the sink's
/// band size.
///
/// Every value depends only on its own position (a resampled one on the source, which is in memory), so a
/// band is computed alone and memory stays at one band whatever the grid. The values are the whole
/// computation's bit for bit: a sincos2d table without a vector added is rounded once from f64 to the output
/// type; one with a vector is rounded to f32, the vector added in f32, then encoded, like a resampled grid.
fn write_table(
    name: &str,
    prefix: &[f32],
    (cells, dim): (usize, usize),
    values: &GridValues<'_>,
    add: Option<&[f32]>,
    dtype: OutDType,
    em: &mut dyn Sink,
) -> Result<()> {
    let total = cells
        .checked_mul(dim)
        .and_then(|n| n.checked_add(prefix.len()))
        .ok_or(Error::Overflow {
            name: name.to_string(),
            what: "position table values",
        })?;
    // Values per band: the band's f64 values, its largest buffer, stay within the band size.
    let per_band = (em.band_bytes() / std::mem::size_of::<f64>()).max(1);
    let (mut wide, mut narrow, mut tmp) = (Vec::new(), Vec::new(), Vec::new());
    let mut start = 0;
    while start < total {
        let end = start + per_band.min(total - start);
        emit(em, name, |buf| {
            buf.clear();
            if let Some(head) = prefix.get(start..end.min(prefix.len())) {
                encode_append(head, dtype, buf);
            }
            let grid = start.saturating_sub(prefix.len())..end.saturating_sub(prefix.len());
            if grid.is_empty() {
                return Ok(0..buf.len());
            }
            narrow.clear();
            match values {
                GridValues::Source(v) => {
                    narrow.extend_from_slice(v.get(grid.clone()).unwrap_or_default())
                }
                GridValues::Resized(resampler, v) => {
                    wide.clear();
                    resampler.append(v, grid.clone(), &mut tmp, &mut wide);
                    narrow.extend(wide.iter().map(|x| *x as f32));
                }
                GridValues::Sincos2d(table) => {
                    wide.clear();
                    table.append(grid.clone(), &mut wide);
                    if add.is_none() {
                        // Rounded once, from f64 to the output type.
                        encode_append_f64(&wide, dtype, buf);
                        return Ok(0..buf.len());
                    }
                    narrow.extend(wide.iter().map(|x| *x as f32));
                }
            }
            if let Some(a) = add {
                // `a` is `dim` wide (checked by `grid_vector`): the band's first value is at `grid.start % dim`.
                let cycle = a.iter().cycle().skip(grid.start % dim.max(1));
                narrow.iter_mut().zip(cycle).for_each(|(v, a)| *v += a);
            }
            encode_append(&narrow, dtype, buf);
            Ok(0..buf.len())
        })?;
        start = end;
    }
    Ok(())
}

/// The values of a small recipe computed whole: a folded patch bias, constants.
fn compute(file: &TensorFile, recipe: &Recipe) -> Result<Vec<f32>> {
    match recipe {
        Recipe::PatchBias {
            bias,
            kernel,
            hwio,
            in_offset,
        } => {
            let b = fetch_len(file, bias, &[hwio[3]])?;
            let k = fetch_len(file, kernel, hwio)?;
            Ok(fold_bias(&b, &k, *hwio, in_offset))
        }
        Recipe::Fill { value, len } => Ok(vec![*value; *len]),
        Recipe::Identity(n) => {
            let mut v = vec![0f32; n.saturating_mul(*n)];
            v.iter_mut()
                .step_by(n.saturating_add(1))
                .for_each(|x| *x = 1.0);
            Ok(v)
        }
        // Streamed by `write_recipe`, which never hands them here; evaluated through it all the same.
        Recipe::Copy(_)
        | Recipe::Transpose { .. }
        | Recipe::Concat(_)
        | Recipe::ConvKernel { .. }
        | Recipe::StdConvKernel { .. }
        | Recipe::PosEmbed { .. }
        | Recipe::Sincos2d { .. } => eval(file, recipe),
    }
}

/// The `[dim]` vector a position table adds to each grid row (a folded patch bias), through the interpreter.
fn grid_vector(file: &TensorFile, add: &Recipe, dim: usize, table: &str) -> Result<Vec<f32>> {
    let a = eval(file, add)?;
    if a.len() != dim {
        return Err(Error::Length {
            name: table.to_string(),
            shape: vec![dim],
            expected: dim,
            found: a.len(),
        });
    }
    Ok(a)
}

/// Fetches a parameter and checks it holds exactly the product of `shape` values.
fn fetch_len(file: &TensorFile, param: &Param, shape: &[usize]) -> Result<Vec<f32>> {
    let v = file.fetch(param)?;
    check_len(param, shape, v.len())?;
    Ok(v)
}

/// The stored element type of a planned source that is transposed, which must be a float type.
fn float_source_dtype(src: &Param) -> Result<DType> {
    if !src.dtype.is_float() {
        return Err(Error::NotFloat {
            name: src.describe(),
            dtype: src.dtype.to_string(),
        });
    }
    Ok(src.dtype)
}

/// Refuses `found` values of `src` where `shape` holds another count (or a count too large to hold).
fn check_len(src: &Param, shape: &[usize], found: usize) -> Result<()> {
    let expected = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or(Error::Overflow {
            name: src.describe(),
            what: "element count",
        })?;
    if found != expected {
        return Err(Error::Length {
            name: src.describe(),
            shape: shape.to_vec(),
            expected,
            found,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::sincos2d;
    use crate::options::ResizeMethod;
    use crate::resize::resize_grid;

    fn fixture() -> TensorFile {
        TensorFile::open(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../fixtures/vit-token/checkpoint.npz"),
        )
        .unwrap()
    }

    /// The bytes `write_recipe` gives in bands of `band_bytes`.
    fn banded(file: &TensorFile, recipe: &Recipe, dtype: OutDType, band_bytes: usize) -> Vec<u8> {
        let mut sink = VecSink {
            out: Vec::new(),
            band_bytes,
        };
        let mut scratch = BandScratch::default();
        write_recipe(file, "t", recipe, dtype, &mut scratch, &mut sink).unwrap();
        sink.out
    }

    /// The whole definition of a position table: the grid computed whole (`sincos2d`, `resize_grid`), the
    /// vector added to each grid row in f32, the prefix rows before it, encoded at once.
    fn whole_table(file: &TensorFile, recipe: &Recipe, dtype: OutDType) -> Vec<u8> {
        let add_rows = |rows: &mut [f32], add: &Option<Box<Recipe>>| {
            if let Some(add) = add {
                let a = eval(file, add).unwrap();
                for row in rows.chunks_exact_mut(a.len()) {
                    row.iter_mut().zip(&a).for_each(|(g, a)| *g += a);
                }
            }
        };
        let mut bytes = Vec::new();
        match recipe {
            Recipe::Sincos2d {
                grid,
                dim,
                add_to_grid: None,
            } => encode_append_f64(&sincos2d(*grid, *dim), dtype, &mut bytes),
            Recipe::Sincos2d {
                grid,
                dim,
                add_to_grid,
            } => {
                let mut v: Vec<f32> = sincos2d(*grid, *dim).iter().map(|x| *x as f32).collect();
                add_rows(&mut v, add_to_grid);
                encode_append(&v, dtype, &mut bytes);
            }
            Recipe::PosEmbed {
                src,
                prefix_rows,
                from,
                to,
                dim,
                method,
                add_to_grid,
            } => {
                let v = file.read_f32(&src.tensor).unwrap();
                let (prefix, grid) = v.split_at(prefix_rows * dim);
                let mut grid = if from == to {
                    grid.to_vec()
                } else {
                    resize_grid(grid, *from, *to, *dim, *method)
                };
                add_rows(&mut grid, add_to_grid);
                encode_append(prefix, dtype, &mut bytes);
                encode_append(&grid, dtype, &mut bytes);
            }
            other => unreachable!("not a position table: {other:?}"),
        }
        bytes
    }

    /// Position tables written in bands of any size (down to one value, inside a row, across rows, the class
    /// row and the grid in one band) are the whole computation's bytes, for every output type, resampled or
    /// not, with and without a vector added.
    #[test]
    fn position_tables_in_bands_are_the_whole_table() {
        let file = fixture();
        // The fixture's table: a class row and a 4 x 4 grid of width 64.
        let src = Param::whole(
            "Transformer/posembed_input/pos_embedding",
            DType::F32,
            &[1, 17, 64],
        );
        let add = || {
            Some(Box::new(Recipe::Copy(Param::whole(
                "embedding/bias",
                DType::F32,
                &[64],
            ))))
        };
        let mut recipes = Vec::new();
        for add_to_grid in [None, add()] {
            for (grid, dim) in [((3, 5), 8), ((4, 4), 64)] {
                recipes.push(Recipe::Sincos2d {
                    grid,
                    dim,
                    add_to_grid: add_to_grid.clone().filter(|_| dim == 64),
                });
            }
            for (to, method) in [
                ((4, 4), ResizeMethod::Bicubic),
                ((7, 5), ResizeMethod::Bicubic),
                ((6, 6), ResizeMethod::Bilinear),
                ((3, 3), ResizeMethod::VitJax),
            ] {
                recipes.push(Recipe::PosEmbed {
                    src: src.clone(),
                    prefix_rows: 1,
                    from: (4, 4),
                    to,
                    dim: 64,
                    method,
                    add_to_grid: add_to_grid.clone(),
                });
            }
        }
        for recipe in &recipes {
            for dtype in [OutDType::F32, OutDType::F16, OutDType::BF16] {
                let want = whole_table(&file, recipe, dtype);
                assert_eq!(Some(want.len() / dtype.dtype().size()), recipe.out_len());
                for band_bytes in [1, 6, 254, 256, 1000, 4096, BAND_BYTES] {
                    let got = banded(&file, recipe, dtype, band_bytes);
                    assert!(
                        got == want,
                        "{recipe:?} as {dtype:?} in bands of {band_bytes} bytes"
                    );
                }
            }
        }
    }

    #[test]
    fn identity_and_fill() {
        // They read nothing of the source, which may be any file.
        let file = fixture();
        assert_eq!(
            eval(&file, &Recipe::Identity(2)).ok(),
            Some(vec![1.0, 0.0, 0.0, 1.0])
        );
        assert_eq!(
            eval(&file, &Recipe::Fill { value: 1.0, len: 3 }).ok(),
            Some(vec![1.0; 3])
        );
    }
}
