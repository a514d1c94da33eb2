//! The vectorised inner loops of a conversion: 4- and 2-byte transposes, and f32 to f16 narrowing.
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
    crate::plan::transpose_elems(src, shape, dst);
}

/// [`transpose4`] without the AVX path: the portable 32 x 32 block transpose every machine runs (for tests
/// and `examples/transpose_bench.rs`).
pub fn transpose4_portable(src: &[[u8; 4]], shape: [usize; 4], dst: &mut [[u8; 4]]) {
    crate::plan::transpose_elems(src, shape, dst);
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
    crate::plan::transpose_elems(src, shape, dst);
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
            crate::plan::transpose_elems(s, [rows, cols - full_cols, stride, dst_stride], d);
        }
    }
    if full_rows < rows {
        if let (Some(s), Some(d)) = (
            src.get(full_rows.saturating_mul(stride)..),
            dst.get_mut(full_rows..),
        ) {
            crate::plan::transpose_elems(s, [rows - full_rows, full_cols, stride, dst_stride], d);
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

#[cfg(test)]
mod tests {
    use super::{f32_to_f16_bytes, transpose4, transpose4_cached};

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

    #[test]
    fn f16_narrowing_matches_the_half_crate_bit_for_bit() {
        // Every sign and exponent, with mantissas that round down, up and to even, infinities, NaNs
        // (quiet and signalling), subnormals and zeros; lengths that leave remainders after eights.
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
        let values: Vec<f32> = bits.iter().map(|&b| f32::from_bits(b)).collect();
        for len in [values.len(), values.len() - 3, 7, 1, 0] {
            let want: Vec<u8> = values[..len]
                .iter()
                .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
                .collect();
            let mut got = vec![0xEE; len * 2 + 4];
            f32_to_f16_bytes(&values[..len], &mut got);
            assert_eq!(&got[..len * 2], &want[..], "{len} values");
            assert!(
                got[len * 2..].iter().all(|&b| b == 0xEE),
                "nothing past the end"
            );
        }
    }
    use crate::plan::transpose_elems;

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
}
