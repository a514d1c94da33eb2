//! The numeric kernels of a conversion: vectorised 4- and 2-byte transposes, f32 to f16 narrowing, and the
//! portable kernels around them (see the last paragraph).
//!
//! Nearly every byte of a ViT conversion goes through a transpose (Flax stores `Dense` kernels as
//! `[in, out]`, PyTorch's `Linear` as `[out, in]`), almost always f32 to f32, so this one loop sets the
//! speed of the whole conversion. The portable code moves one element at a time; with AVX, a tile of
//! 16 source rows by 8 columns is loaded as sixteen 8-wide vectors, transposed in registers with
//! unpack/shuffle/permute steps, and stored as eight 16-element output rows (one 64-byte cache line
//! each), straight to memory where they are aligned. 2-byte elements (bf16, f16) go through 8 x 8 tiles
//! in SSE2 registers, and f16 narrowing uses F16C. Optional features are detected at run time, so one
//! binary runs everywhere.
//!
//! Every load and store goes through a bounds-checked array reference (`get` then `try_from`), so the
//! only promise the `unsafe` blocks rely on beyond the type system is that the processor has the
//! instructions they use.
//!
//! The portable kernels live here too: the block transpose, the one table of how each float type's
//! little-endian bytes decode ([`decode_with`]), encoding to the output types, the fused
//! transpose-and-convert of [`transpose_encode_bytes`], and the HWIO -> OIHW and bias-folding
//! arithmetic. This module depends on no other module of the crate except the output types of
//! `options`: plans and the executor call into it, never the reverse.

use vitconv_tensors::DType;

use crate::options::OutDType;

/// Transposes a `[rows, cols]` matrix of 4-byte elements (source row `r` at element `r * stride` of
/// `src`) into `dst` (output row `c` at element `c * dst_stride`), bytes untouched.
pub fn transpose4(src: &[[u8; 4]], shape: [usize; 4], dst: &mut [[u8; 4]]) {
    transpose4_to(src, shape, dst, true);
}

/// [`transpose4`] into a destination that is read again at once, so kept in cache: never with streaming
/// stores.
pub fn transpose4_cached(src: &[[u8; 4]], shape: [usize; 4], dst: &mut [[u8; 4]]) {
    transpose4_to(src, shape, dst, false);
}

/// The body of [`transpose4`] and [`transpose4_cached`]; `stream` allows streaming stores.
fn transpose4_to(src: &[[u8; 4]], shape: [usize; 4], dst: &mut [[u8; 4]], stream: bool) {
    #[cfg(not(target_arch = "x86_64"))]
    let _ = stream;
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx") {
        with_edges(
            src,
            shape,
            [avx::ROWS, avx::COLS],
            dst,
            |src, corner, dst| {
                // SAFETY: the processor has AVX (checked just above), which is all `avx::tiles` needs beyond
                // what its signature states.
                unsafe { avx::tiles(src, corner, dst, stream) }
            },
        );
        return;
    }
    transpose_elems(src, shape, dst);
}

/// [`transpose4`] without the AVX path: the portable 32 x 32 block transpose every machine runs (for tests
/// and `examples/transpose_bench.rs`).
pub fn transpose4_portable(src: &[[u8; 4]], shape: [usize; 4], dst: &mut [[u8; 4]]) {
    transpose_elems(src, shape, dst);
}

/// Transposes a `[rows, cols]` matrix of 2-byte elements (bf16 or f16 kept as they are) like [`transpose4`]:
/// 8 x 8 tiles in SSE2 registers on x86-64 (every such processor has SSE2), the portable block transpose
/// elsewhere and for the ragged edges.
pub fn transpose2(src: &[[u8; 2]], shape: [usize; 4], dst: &mut [[u8; 2]]) {
    #[cfg(target_arch = "x86_64")]
    with_edges(src, shape, [8, 8], dst, |src, corner, dst| {
        // SAFETY: SSE2 is part of every x86-64 processor, and `sse2::tiles` needs nothing else beyond what
        // its signature states.
        unsafe { sse2::tiles(src, corner, dst) }
    });
    #[cfg(not(target_arch = "x86_64"))]
    transpose_elems(src, shape, dst);
}

/// Transposes the largest top-left corner made of whole `[tile_rows, tile_cols]` tiles with `tiles`, then
/// the ragged edges with the portable transpose: the right-hand columns, every row of them, and the
/// bottom rows left of those columns.
#[cfg(target_arch = "x86_64")]
fn with_edges<const N: usize>(
    src: &[[u8; N]],
    [rows, cols, stride, dst_stride]: [usize; 4],
    [tile_rows, tile_cols]: [usize; 2],
    dst: &mut [[u8; N]],
    tiles: impl FnOnce(&[[u8; N]], [usize; 4], &mut [[u8; N]]),
) {
    let (full_rows, full_cols) = (rows - rows % tile_rows, cols - cols % tile_cols);
    tiles(src, [full_rows, full_cols, stride, dst_stride], dst);
    if full_cols < cols {
        if let (Some(s), Some(d)) = (
            src.get(full_cols..),
            dst.get_mut(full_cols.saturating_mul(dst_stride)..),
        ) {
            transpose_elems(s, [rows, cols - full_cols, stride, dst_stride], d);
        }
    }
    if full_rows < rows {
        if let (Some(s), Some(d)) = (
            src.get(full_rows.saturating_mul(stride)..),
            dst.get_mut(full_rows..),
        ) {
            transpose_elems(s, [rows - full_rows, full_cols, stride, dst_stride], d);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod sse2 {
    use std::arch::x86_64::{
        __m128i, _mm_loadu_si128, _mm_storeu_si128, _mm_unpackhi_epi16, _mm_unpackhi_epi32,
        _mm_unpackhi_epi64, _mm_unpacklo_epi16, _mm_unpacklo_epi32, _mm_unpacklo_epi64,
    };

    /// Transposes the `[rows, cols]` top-left corner, both multiples of 8, one 8 x 8 tile at a time, down a
    /// column of tiles first (see `avx::tiles`).
    #[target_feature(enable = "sse2")]
    pub fn tiles(
        src: &[[u8; 2]],
        [rows, cols, stride, dst_stride]: [usize; 4],
        dst: &mut [[u8; 2]],
    ) {
        for c0 in (0..cols).step_by(8) {
            for r0 in (0..rows).step_by(8) {
                let mut tile = [None; 8];
                for (i, row) in tile.iter_mut().enumerate() {
                    let s = (r0 + i) * stride + c0;
                    *row = src
                        .get(s..s + 8)
                        .and_then(|r| <&[[u8; 2]; 8]>::try_from(r).ok())
                        // SAFETY: the reference covers 8 readable elements (16 bytes); unaligned loads
                        // need no alignment, and SSE2 is part of every x86-64 processor.
                        .map(|r| unsafe { _mm_loadu_si128(r.as_ptr().cast()) });
                }
                let [Some(a0), Some(a1), Some(a2), Some(a3), Some(a4), Some(a5), Some(a6), Some(a7)] =
                    tile
                else {
                    continue;
                };
                for (j, column) in transpose8([a0, a1, a2, a3, a4, a5, a6, a7])
                    .into_iter()
                    .enumerate()
                {
                    let d = (c0 + j) * dst_stride + r0;
                    if let Some(out) = dst
                        .get_mut(d..d + 8)
                        .and_then(|o| <&mut [[u8; 2]; 8]>::try_from(o).ok())
                    {
                        // SAFETY: `out` is 8 writable elements (16 bytes); unaligned stores need no
                        // alignment.
                        unsafe { _mm_storeu_si128(out.as_mut_ptr().cast(), column) };
                    }
                }
            }
        }
    }

    /// The columns of an 8 x 8 matrix of 16-bit elements held as eight row vectors: interleave pairs of
    /// rows at 16, then 32, then 64 bits.
    #[target_feature(enable = "sse2")]
    fn transpose8([a0, a1, a2, a3, a4, a5, a6, a7]: [__m128i; 8]) -> [__m128i; 8] {
        let (b0, b1) = (_mm_unpacklo_epi16(a0, a1), _mm_unpackhi_epi16(a0, a1));
        let (b2, b3) = (_mm_unpacklo_epi16(a2, a3), _mm_unpackhi_epi16(a2, a3));
        let (b4, b5) = (_mm_unpacklo_epi16(a4, a5), _mm_unpackhi_epi16(a4, a5));
        let (b6, b7) = (_mm_unpacklo_epi16(a6, a7), _mm_unpackhi_epi16(a6, a7));
        let (c0, c1) = (_mm_unpacklo_epi32(b0, b2), _mm_unpackhi_epi32(b0, b2));
        let (c2, c3) = (_mm_unpacklo_epi32(b1, b3), _mm_unpackhi_epi32(b1, b3));
        let (c4, c5) = (_mm_unpacklo_epi32(b4, b6), _mm_unpackhi_epi32(b4, b6));
        let (c6, c7) = (_mm_unpacklo_epi32(b5, b7), _mm_unpackhi_epi32(b5, b7));
        [
            _mm_unpacklo_epi64(c0, c4),
            _mm_unpackhi_epi64(c0, c4),
            _mm_unpacklo_epi64(c1, c5),
            _mm_unpackhi_epi64(c1, c5),
            _mm_unpacklo_epi64(c2, c6),
            _mm_unpackhi_epi64(c2, c6),
            _mm_unpacklo_epi64(c3, c7),
            _mm_unpackhi_epi64(c3, c7),
        ]
    }
}

/// Writes `values` as little-endian f16 into `dst` (two bytes each; extra bytes of either are left alone),
/// rounding to nearest, ties to even: with F16C eight at a time where the processor has it, through the
/// `half` crate elsewhere, which gives the same bits. One `half` call per eight values cost as much as
/// the rest of an f32 to f16 conversion (BENCHMARKS.md).
pub fn f32_to_f16_bytes(values: &[f32], dst: &mut [u8]) {
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("f16c") && std::arch::is_x86_feature_detected!("avx") {
        // SAFETY: the processor has F16C and AVX (checked just above), all `f16c::narrow` needs beyond
        // what its signature states.
        done = unsafe { f16c::narrow(values, dst) };
    }
    let rest = values.get(done..).unwrap_or_default();
    let out = dst.get_mut(done * 2..).unwrap_or_default();
    for (pair, v) in out.as_chunks_mut::<2>().0.iter_mut().zip(rest) {
        *pair = half::f16::from_f32(*v).to_le_bytes();
    }
}

#[cfg(target_arch = "x86_64")]
mod f16c {
    use std::arch::x86_64::{
        _mm256_cvtps_ph, _mm256_loadu_ps, _mm_storeu_si128, _MM_FROUND_TO_NEAREST_INT,
    };

    /// Narrows whole groups of eight values into `dst` and returns how many values it wrote.
    #[target_feature(enable = "avx,f16c")]
    pub unsafe fn narrow(values: &[f32], dst: &mut [u8]) -> usize {
        let mut done = 0;
        for (eight, out) in values
            .as_chunks::<8>()
            .0
            .iter()
            .zip(dst.as_chunks_mut::<16>().0)
        {
            // SAFETY: `eight` is 8 readable f32 (32 bytes) and `out` 16 writable bytes; unaligned loads
            // and stores need no alignment.
            unsafe {
                let x = _mm256_loadu_ps(eight.as_ptr());
                let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(x);
                _mm_storeu_si128(out.as_mut_ptr().cast(), h);
            }
            done += 8;
        }
        done
    }
}

#[cfg(target_arch = "x86_64")]
mod avx {
    use std::arch::x86_64::{
        __m256, _mm256_loadu_ps, _mm256_permute2f128_ps, _mm256_shuffle_ps, _mm256_storeu_ps,
        _mm256_stream_ps, _mm256_unpackhi_ps, _mm256_unpacklo_ps, _mm_sfence,
    };

    /// Source rows per tile: two 8 x 8 transposes, so that each output row gets 16 elements (a whole
    /// 64-byte cache line of f32) in one go.
    pub const ROWS: usize = 16;
    /// Source columns per tile, one vector wide.
    pub const COLS: usize = 8;

    /// Transposes the `[rows, cols]` top-left corner, both multiples of the tile, tile by tile: down a
    /// column of tiles first, so that the output rows being written stay few and in cache.
    ///
    /// Where `stream` allows it and the output is 32-byte aligned, the rows are stored with streaming
    /// (non-temporal) stores, which write whole lines to memory without first reading them into the
    /// cache: the band is read
    /// next by the writer thread, on another core, not by this one. They made the whole conversion about
    /// 10% faster (BENCHMARKS.md). A store fence at the end orders them before whatever hands the band on.
    #[target_feature(enable = "avx")]
    pub unsafe fn tiles(
        src: &[[u8; 4]],
        [rows, cols, stride, dst_stride]: [usize; 4],
        dst: &mut [[u8; 4]],
        stream: bool,
    ) {
        for c0 in (0..cols).step_by(COLS) {
            for r0 in (0..rows).step_by(ROWS) {
                let (Some(top), Some(bottom)) = (
                    eight(src, r0 * stride + c0, stride),
                    eight(src, (r0 + 8) * stride + c0, stride),
                ) else {
                    continue;
                };
                let (top, bottom) = (transpose8(top), transpose8(bottom));
                for (j, (t, b)) in top.into_iter().zip(bottom).enumerate() {
                    let d = (c0 + j) * dst_stride + r0;
                    if let Some(out) = dst
                        .get_mut(d..d + ROWS)
                        .and_then(|o| <&mut [[u8; 4]; ROWS]>::try_from(o).ok())
                    {
                        let (left, right) = out.split_at_mut(8);
                        let (left, right) = (left.as_mut_ptr().cast(), right.as_mut_ptr().cast());
                        // SAFETY: each half is 8 valid, writable elements (32 bytes) of `dst`; the
                        // streaming stores are used only where they are aligned as they must be, and
                        // unaligned stores need no alignment.
                        unsafe {
                            if stream && (left as usize).is_multiple_of(32) {
                                _mm256_stream_ps(left, t);
                                _mm256_stream_ps(right, b);
                            } else {
                                _mm256_storeu_ps(left, t);
                                _mm256_storeu_ps(right, b);
                            }
                        }
                    }
                }
            }
        }
        _mm_sfence();
    }

    /// Eight 8-element rows of `src`, `stride` apart from element `at`, or `None` if any falls outside.
    #[target_feature(enable = "avx")]
    fn eight(src: &[[u8; 4]], at: usize, stride: usize) -> Option<[__m256; 8]> {
        let mut rows = [None; 8];
        for (i, row) in rows.iter_mut().enumerate() {
            let s = at + i * stride;
            *row = src
                .get(s..s + 8)
                .and_then(|r| <&[[u8; 4]; 8]>::try_from(r).ok())
                // SAFETY: the reference covers 8 readable elements (32 bytes); unaligned loads need no
                // alignment.
                .map(|r| unsafe { _mm256_loadu_ps(r.as_ptr().cast()) });
        }
        let [a, b, c, d, e, f, g, h] = rows;
        Some([a?, b?, c?, d?, e?, f?, g?, h?])
    }

    /// The transpose of an 8 x 8 matrix held as eight row vectors: interleave pairs of rows, then pairs
    /// of pairs, then swap 128-bit halves.
    #[target_feature(enable = "avx")]
    fn transpose8([r0, r1, r2, r3, r4, r5, r6, r7]: [__m256; 8]) -> [__m256; 8] {
        let (t0, t1) = (_mm256_unpacklo_ps(r0, r1), _mm256_unpackhi_ps(r0, r1));
        let (t2, t3) = (_mm256_unpacklo_ps(r2, r3), _mm256_unpackhi_ps(r2, r3));
        let (t4, t5) = (_mm256_unpacklo_ps(r4, r5), _mm256_unpackhi_ps(r4, r5));
        let (t6, t7) = (_mm256_unpacklo_ps(r6, r7), _mm256_unpackhi_ps(r6, r7));
        let (s0, s1) = (
            _mm256_shuffle_ps::<0x44>(t0, t2),
            _mm256_shuffle_ps::<0xEE>(t0, t2),
        );
        let (s2, s3) = (
            _mm256_shuffle_ps::<0x44>(t1, t3),
            _mm256_shuffle_ps::<0xEE>(t1, t3),
        );
        let (s4, s5) = (
            _mm256_shuffle_ps::<0x44>(t4, t6),
            _mm256_shuffle_ps::<0xEE>(t4, t6),
        );
        let (s6, s7) = (
            _mm256_shuffle_ps::<0x44>(t5, t7),
            _mm256_shuffle_ps::<0xEE>(t5, t7),
        );
        [
            _mm256_permute2f128_ps::<0x20>(s0, s4),
            _mm256_permute2f128_ps::<0x20>(s1, s5),
            _mm256_permute2f128_ps::<0x20>(s2, s6),
            _mm256_permute2f128_ps::<0x20>(s3, s7),
            _mm256_permute2f128_ps::<0x31>(s0, s4),
            _mm256_permute2f128_ps::<0x31>(s1, s5),
            _mm256_permute2f128_ps::<0x31>(s2, s6),
            _mm256_permute2f128_ps::<0x31>(s3, s7),
        ]
    }
}

/// Something to run with the decoder of one float type: [`decode_with`] picks the decoder, the
/// implementation does the work, monomorphised for the element size `N` and the decoder (so the decoding
/// inlines into the loop).
pub trait WithDecoder {
    /// What the work returns.
    type Output;

    /// Runs the work with `decode`, which turns one little-endian `N`-byte element into an f32.
    fn run<const N: usize>(self, decode: impl Fn([u8; N]) -> f32 + Copy) -> Self::Output;
}

/// The one table of how a float type's little-endian bytes decode to f32: f32 as it is, bf16 and f16
/// widened exactly, f64 rounded to nearest (f64 weights are rare; narrowing them to f32 is what every
/// target stores anyway). Runs `work` with the decoder of `dtype`, or returns `None` for a type that is
/// not a float.
pub fn decode_with<W: WithDecoder>(dtype: DType, work: W) -> Option<W::Output> {
    match dtype {
        DType::F32 => Some(work.run::<4>(f32::from_le_bytes)),
        DType::BF16 => Some(work.run::<2>(|b| half::bf16::from_le_bytes(b).to_f32())),
        DType::F16 => Some(work.run::<2>(|b| half::f16::from_le_bytes(b).to_f32())),
        DType::F64 => Some(work.run::<8>(|b| f64::from_le_bytes(b) as f32)),
        _ => None,
    }
}

/// Appends the values of little-endian `dtype` bytes, decoded through [`decode_with`], to `out` (a
/// trailing partial element is ignored). Returns `false`, appending nothing, when `dtype` is not a float.
pub fn decode_append(dtype: DType, bytes: &[u8], out: &mut Vec<f32>) -> bool {
    /// The arguments of the append, waiting for the decoder.
    struct Append<'a> {
        bytes: &'a [u8],
        out: &'a mut Vec<f32>,
    }
    impl WithDecoder for Append<'_> {
        type Output = ();

        fn run<const N: usize>(self, decode: impl Fn([u8; N]) -> f32 + Copy) {
            self.out
                .extend(self.bytes.as_chunks::<N>().0.iter().map(|b| decode(*b)));
        }
    }
    decode_with(dtype, Append { bytes, out }).is_some()
}

/// Appends f64 `values` rounded once to the little-endian `dtype`.
pub fn encode_append_f64(values: &[f64], dtype: OutDType, out: &mut Vec<u8>) {
    for v in values {
        match dtype {
            OutDType::F32 => out.extend((*v as f32).to_le_bytes()),
            OutDType::F16 => out.extend(half::f16::from_f64(*v).to_le_bytes()),
            OutDType::BF16 => out.extend(half::bf16::from_f64(*v).to_le_bytes()),
        }
    }
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
        OutDType::F16 => f32_to_f16_bytes(values, dst),
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
/// common case: f32 to f32). Otherwise each 32 x 32 block is decoded as it is loaded, through the same
/// table ([`decode_with`]) as the whole-tensor path, so the output bytes are
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
            4 => transpose4(raw.as_chunks().0, shape, dst.as_chunks_mut().0),
            2 => transpose2(raw.as_chunks().0, shape, dst.as_chunks_mut().0),
            _ => {}
        }
        return;
    }
    // Callers check the source is a float type first; other types have no values to give.
    let _ = decode_with(
        in_dtype,
        TransposeDecodeEncode {
            raw,
            shape,
            dtype,
            dst,
        },
    );
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
        transpose4_cached(from, [rows, width, stride, rows], &mut block);
        for (j, row) in block.chunks_exact(rows.max(1)).take(width).enumerate() {
            values
                .iter_mut()
                .zip(row)
                // f32 source bytes: the F32 row of `decode_with`, which is `from_le_bytes` itself.
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
            transpose4(&block, [rows, width, CHUNK, dst_stride], out);
        }
    }
}

/// The arguments of [`transpose_decode_encode`], waiting for the source type's decoder.
struct TransposeDecodeEncode<'a> {
    raw: &'a [u8],
    shape: [usize; 4],
    dtype: OutDType,
    dst: &'a mut [u8],
}

impl WithDecoder for TransposeDecodeEncode<'_> {
    type Output = ();

    fn run<const N: usize>(self, decode: impl Fn([u8; N]) -> f32 + Copy) {
        transpose_decode_encode(self.raw, self.shape, decode, self.dtype, self.dst);
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

/// The HWIO kernel `v` with `out` output channels (the last axis), each channel replaced by `a * T`: `T` is
/// the channel standardised as flax's `StdConv` does (`(w - mean) / (std + source_eps)`, population
/// statistics over `(h, w, in)`), and `a = sqrt(target_eps / (1 - var(T)))` makes a target that
/// standardises with `(w - mean) / sqrt(var + target_eps)` recover exactly `T`: `T` has mean 0, so the
/// target sees mean 0 and variance `a^2 var(T)`, and `a / sqrt(a^2 var(T) + target_eps) = 1`. Computed in
/// f64 and rounded once.
pub fn restandardise(v: &[f32], out: usize, source_eps: f64, target_eps: f64) -> Vec<f32> {
    let mut result = vec![0f32; v.len()];
    let n = v.len().checked_div(out).unwrap_or(0);
    if n == 0 {
        return result;
    }
    for o in 0..out {
        let channel = || v.iter().skip(o).step_by(out).map(|x| f64::from(*x));
        let mean = channel().sum::<f64>() / n as f64;
        let var = channel().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n as f64;
        let denom = var.sqrt() + source_eps;
        let t_var = var / (denom * denom);
        // var(T) < 1 whenever source_eps > 0; a channel of equal values has T = 0 whatever `a` is.
        let a = (target_eps / (1.0 - t_var).max(f64::MIN_POSITIVE)).sqrt();
        for (dst, x) in result.iter_mut().skip(o).step_by(out).zip(channel()) {
            *dst = (a * (x - mean) / denom) as f32;
        }
    }
    result
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

/// big_vision's `posemb_sincos_2d` (`models/vit.py`) for an `h x w` grid and width `dim`, in f64: rows in
/// row-major `(y, x)` order, `omega = 1 / 10000^(k / (dim/4 - 1))` for `k < dim/4`, and each row
/// `[sin(x omega), cos(x omega), sin(y omega), cos(y omega)]`. (timm's own helper divides by `dim/4`,
/// not `dim/4 - 1`: a different table.) The source module guarantees `dim % 4 == 0`.
///
/// This whole table is the definition; a conversion computes it a band at a time with [`Sincos2d`], which
/// gives the same values bit for bit.
pub fn sincos2d((h, w): (usize, usize), dim: usize) -> Vec<f64> {
    let omega = sincos_omega(dim);
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

/// The `dim / 4` frequencies of [`sincos2d`].
fn sincos_omega(dim: usize) -> Vec<f64> {
    let quarter = dim / 4;
    let denom = quarter.saturating_sub(1).max(1) as f64;
    (0..quarter)
        .map(|k| 1.0 / 10_000f64.powf(k as f64 / denom))
        .collect()
}

/// [`sincos2d`] computed a band at a time: any run of the flattened table's values, each computed by the
/// same expression as the whole table's, so the bands put together are that table bit for bit.
///
/// Every value depends only on its own position, so memory is the band's, whatever the grid: the whole table
/// of a large `--image-size` was gigabytes of f64 before a byte of it was written.
pub struct Sincos2d {
    /// Columns of the grid.
    w: usize,
    /// Width of each row of the table (a multiple of 4, which the source module guarantees).
    dim: usize,
    /// The frequencies, computed once for every band.
    omega: Vec<f64>,
}

impl Sincos2d {
    /// The table of an `h x w` grid (only the width matters here) and width `dim`.
    pub fn new((_, w): (usize, usize), dim: usize) -> Self {
        Sincos2d {
            w,
            dim,
            omega: sincos_omega(dim),
        }
    }

    /// Appends the values at `range` of the flattened `[h * w, dim]` table to `out`.
    pub fn append(&self, range: std::ops::Range<usize>, out: &mut Vec<f64>) {
        let quarter = self.omega.len();
        if quarter == 0 || self.w == 0 {
            return;
        }
        out.reserve(range.len());
        let mut e = range.start;
        while e < range.end {
            // The band's part of one grid cell: values k0..k1 of cell `cell`.
            let (cell, k0) = (e / self.dim, e % self.dim);
            let k1 = self.dim.min(k0 + (range.end - e));
            let (y, x) = ((cell / self.w) as f64, (cell % self.w) as f64);
            for k in k0..k1 {
                let o = self.omega[k % quarter];
                out.push(match k / quarter {
                    0 => (x * o).sin(),
                    1 => (x * o).cos(),
                    2 => (y * o).sin(),
                    _ => (y * o).cos(),
                });
            }
            e += k1 - k0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_byte_transposes_match_the_definition() {
        for (rows, cols) in [
            (8, 8),
            (32, 64),
            (17, 8),
            (8, 9),
            (35, 29),
            (3, 5),
            (1, 40),
            (40, 1),
            (0, 7),
        ] {
            for (pad, dst_pad) in [(0, 0), (8, 0), (0, 3), (5, 8)] {
                let (stride, dst_stride) = (cols + pad, rows + dst_pad);
                let src: Vec<[u8; 2]> = (0..rows * stride)
                    .map(|i| (i as u16).wrapping_mul(40_503).to_le_bytes())
                    .collect();
                let mut want = vec![[0xEEu8; 2]; cols * dst_stride];
                for r in 0..rows {
                    for c in 0..cols {
                        want[c * dst_stride + r] = src[r * stride + c];
                    }
                }
                let mut got = vec![[0xEEu8; 2]; cols * dst_stride];
                super::transpose2(&src, [rows, cols, stride, dst_stride], &mut got);
                assert_eq!(
                    got, want,
                    "rows {rows}, cols {cols}, pads {pad} and {dst_pad}"
                );
            }
        }
    }

    /// f32 bit patterns that probe every rounding case of f32 -> f16: every sign and exponent with
    /// mantissas that round down, up and to even, infinities, NaNs (quiet and signalling, with and without
    /// payload), subnormals and zeros; every exact tie between two neighbouring f16 values (normal,
    /// subnormal and the overflow threshold 65520), with the f32 values just below and above it; and a
    /// pseudo-random sweep of all bit patterns.
    fn narrowing_probes() -> Vec<u32> {
        let mut bits: Vec<u32> = Vec::new();
        for exp in 0..=255u32 {
            for mantissa in [
                0, 1, 0xFFF, 0x1000, 0x1001, 0x2000, 0x3000, 0x7F_E000, 0x40_0001, 0x7F_FFFF,
            ] {
                for sign in [0, 1u32 << 31] {
                    bits.push(sign | exp << 23 | mantissa);
                }
            }
        }
        for h in 0..0x7C00u16 {
            // `h` and `h + 1` are neighbouring finite f16 values (0x7C00 is infinity); their midpoint
            // needs 12 significant bits, so it is exact in f32.
            let (lo, hi) = (
                half::f16::from_bits(h).to_f32(),
                half::f16::from_bits(h + 1).to_f32(),
            );
            let mid = (lo + hi) / 2.0;
            for sign in [0, 1u32 << 31] {
                for b in [mid.to_bits() - 1, mid.to_bits(), mid.to_bits() + 1] {
                    bits.push(sign | b);
                }
            }
        }
        let mut x = 0x9E37_79B9u32;
        for _ in 0..200_000 {
            // xorshift32: a fixed, reproducible walk over the bit patterns.
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            bits.push(x);
        }
        bits
    }

    #[test]
    fn f16_narrowing_matches_software_rounding_bit_for_bit() {
        // `half::f16::from_f32` itself uses F16C on processors that have it, so the reference is the
        // crate's software conversion, `from_f32_const`: round to nearest, ties to even, NaNs quietened
        // with their top payload bits kept. Lengths leave remainders after the groups of eight.
        let values: Vec<f32> = narrowing_probes().into_iter().map(f32::from_bits).collect();
        for len in [values.len(), values.len() - 3, 7, 1, 0] {
            let want: Vec<u8> = values[..len]
                .iter()
                .flat_map(|&v| half::f16::from_f32_const(v).to_le_bytes())
                .collect();
            let mut got = vec![0xEE; len * 2 + 4];
            f32_to_f16_bytes(&values[..len], &mut got);
            if let Some(i) = (0..len).find(|&i| got[2 * i..2 * i + 2] != want[2 * i..2 * i + 2]) {
                panic!(
                    "{len} values: {:#010x} narrowed to {:02x?}, software gives {:02x?}",
                    values[i].to_bits(),
                    &got[2 * i..2 * i + 2],
                    &want[2 * i..2 * i + 2]
                );
            }
            assert!(
                got[len * 2..].iter().all(|&b| b == 0xEE),
                "nothing past the end"
            );
        }
    }

    /// The transpose, element by element, as the definition says.
    fn reference(
        src: &[[u8; 4]],
        [rows, cols, stride, dst_stride]: [usize; 4],
        dst: &mut [[u8; 4]],
    ) {
        for r in 0..rows {
            for c in 0..cols {
                dst[c * dst_stride + r] = src[r * stride + c];
            }
        }
    }

    #[test]
    fn every_shape_and_stride_matches_the_definition() {
        // Whole tiles, ragged edges on either side or both, fewer rows or columns than one tile, and
        // padded strides on either side; the padding of the output must stay untouched.
        for (rows, cols) in [
            (16, 8),
            (32, 64),
            (64, 48),
            (17, 8),
            (16, 9),
            (35, 29),
            (3, 5),
            (1, 40),
            (40, 1),
            (0, 7),
        ] {
            for (pad, dst_pad) in [(0, 0), (16, 0), (0, 3), (5, 16)] {
                let (stride, dst_stride) = (cols + pad, rows + dst_pad);
                let src: Vec<[u8; 4]> = (0..rows * stride)
                    .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes())
                    .collect();
                let mut want = vec![[0xEEu8; 4]; cols * dst_stride];
                let shape = [rows, cols, stride, dst_stride];
                reference(&src, shape, &mut want);
                // The dispatching kernel (AVX where this machine has it), from every offset in a 32-byte
                // line so that both its streaming and its unaligned stores run, and the portable one.
                let mut buf = vec![[0xEEu8; 4]; cols * dst_stride + 8];
                for offset in 0..8 {
                    buf.fill([0xEE; 4]);
                    let got = &mut buf[offset..offset + cols * dst_stride];
                    transpose4(&src, shape, got);
                    let mut cached = vec![[0xEEu8; 4]; cols * dst_stride];
                    transpose4_cached(&src, shape, &mut cached);
                    assert_eq!(cached, want, "cached: rows {rows}, cols {cols}");
                    assert_eq!(
                        got,
                        &want[..],
                        "rows {rows}, cols {cols}, pads {pad} and {dst_pad}, offset {offset}"
                    );
                    // Nothing written outside the destination.
                    let (before, rest) = buf.split_at(offset);
                    let after = &rest[cols * dst_stride..];
                    assert!(before.iter().chain(after).all(|e| *e == [0xEE; 4]));
                }
                let mut got = vec![[0xEEu8; 4]; cols * dst_stride];
                transpose_elems(&src, shape, &mut got);
                assert_eq!(
                    got, want,
                    "portable: rows {rows}, cols {cols}, pads {pad} and {dst_pad}"
                );
            }
        }
    }

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
            let mut decoded = Vec::new();
            assert!(decode_append(*in_dtype, raw, &mut decoded));
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

    /// Bands of any length, starting and ending anywhere (inside a row, across rows), put together give the
    /// whole table's f64 values bit for bit.
    #[test]
    fn sincos2d_bands_are_the_whole_table() {
        for (grid, dim) in [
            ((1, 1), 4),
            ((3, 5), 8),
            ((7, 2), 12),
            ((4, 4), 64),
            ((2, 9), 4),
        ] {
            let want = sincos2d(grid, dim);
            let table = Sincos2d::new(grid, dim);
            let total = grid.0 * grid.1 * dim;
            assert_eq!(want.len(), total);
            for band in [
                1,
                3,
                dim - 1,
                dim,
                dim + 1,
                2 * dim + 3,
                grid.1 * dim,
                total,
            ] {
                let band = band.max(1);
                let mut got = Vec::new();
                let mut start = 0;
                while start < total {
                    let end = (start + band).min(total);
                    table.append(start..end, &mut got);
                    start = end;
                }
                let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got), bits(&want), "{grid:?} x {dim}, bands of {band}");
            }
        }
    }
}
