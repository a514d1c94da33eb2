//! Resamples a position-embedding grid to a new size: vit_jax's scipy zoom, or PyTorch's bilinear and bicubic.
//!
//! All three are separable, so the grid is resampled along rows, then along columns, each output cell being a
//! weighted sum of source cells with weights computed once per axis. References:
//! vit_jax `checkpoint.interpolate_posembed` (scipy.ndimage.zoom order 1, `grid_mode=False`: output index `o`
//! reads input coordinate `o * (in - 1) / (out - 1)`), timm `layers/pos_embed.py::resample_abs_pos_embed` and
//! PyTorch `UpSample.h` (`area_pixel_compute_source_index`, cubic convolution with A = -0.75).

use crate::options::ResizeMethod;

/// For every output index along one axis: the source indices and their weights.
fn axis_weights(input: usize, output: usize, method: ResizeMethod) -> Vec<Vec<(usize, f64)>> {
    let last = input.saturating_sub(1);
    (0..output)
        .map(|o| match method {
            ResizeMethod::VitJax => {
                // scipy's zoom with grid_mode=False maps the corner samples onto each other.
                let x = if output > 1 {
                    o as f64 * last as f64 / (output - 1) as f64
                } else {
                    0.0
                };
                linear(x, last)
            }
            ResizeMethod::Bilinear => {
                let x = ((o as f64 + 0.5) * input as f64 / output as f64 - 0.5).max(0.0);
                linear(x, last)
            }
            ResizeMethod::Bicubic => {
                let x = (o as f64 + 0.5) * input as f64 / output as f64 - 0.5;
                cubic(x, last)
            }
        })
        .collect()
}

fn linear(x: f64, last: usize) -> Vec<(usize, f64)> {
    let i0 = (x.floor().max(0.0) as usize).min(last);
    let t = x - i0 as f64;
    let i1 = (i0 + 1).min(last);
    vec![(i0, 1.0 - t), (i1, t)]
}

fn cubic(x: f64, last: usize) -> Vec<(usize, f64)> {
    const A: f64 = -0.75;
    let f = x.floor();
    let t = x - f;
    let near = |d: f64| ((A + 2.0) * d - (A + 3.0)) * d * d + 1.0;
    let far = |d: f64| ((A * d - 5.0 * A) * d + 8.0 * A) * d - 4.0 * A;
    let w = [far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)];
    (0..4)
        .map(|k| {
            // Indices outside the grid repeat the border, as PyTorch's upsample_bicubic2d does.
            let idx = (f as i64 - 1 + k as i64).clamp(0, last as i64) as usize;
            (idx, w[k])
        })
        .collect()
}

/// Resamples a `[from.0, from.1, dim]` row-major grid to `[to.0, to.1, dim]`, whole.
///
/// This is the definition; a conversion resamples a band at a time with [`Resampler`], which gives the same
/// values bit for bit.
pub fn resize_grid(
    grid: &[f32],
    from: (usize, usize),
    to: (usize, usize),
    dim: usize,
    method: ResizeMethod,
) -> Vec<f32> {
    let rows = axis_weights(from.0, to.0, method);
    let cols = axis_weights(from.1, to.1, method);
    // Along rows first: [to.0, from.1, dim] in f64 to keep the two passes free of intermediate rounding.
    let mut tmp = vec![0f64; to.0 * from.1 * dim];
    for (r, ws) in rows.iter().enumerate() {
        for &(src_r, w) in ws {
            for c in 0..from.1 {
                let src = (src_r * from.1 + c) * dim;
                let dst = (r * from.1 + c) * dim;
                if let (Some(s), Some(d)) = (grid.get(src..src + dim), tmp.get_mut(dst..dst + dim))
                {
                    d.iter_mut()
                        .zip(s)
                        .for_each(|(d, s)| *d += w * f64::from(*s));
                }
            }
        }
    }
    let mut out = vec![0f64; to.0 * to.1 * dim];
    for r in 0..to.0 {
        for (c, ws) in cols.iter().enumerate() {
            for &(src_c, w) in ws {
                let src = (r * from.1 + src_c) * dim;
                let dst = (r * to.1 + c) * dim;
                if let (Some(s), Some(d)) = (tmp.get(src..src + dim), out.get_mut(dst..dst + dim)) {
                    d.iter_mut().zip(s).for_each(|(d, s)| *d += w * s);
                }
            }
        }
    }
    out.into_iter().map(|v| v as f32).collect()
}

/// [`resize_grid`] a band at a time: any run of the flattened `[to.0 * to.1, dim]` output, from the source
/// grid (which the file holds, so it is in memory anyway).
///
/// Each output value is the same f64 sum as in the whole resampling, term by term in the same order: the row
/// pass (`w_r * source`, summed over the row weights from zero) for each source column the band needs, then
/// the column pass over those sums. Only the output rows a band touches get a row pass, and only for the
/// source columns and widths it reads, so memory is the band plus at most one source row in f64 (whole, the
/// resampled table of a large `--image-size` was gigabytes).
pub struct Resampler {
    /// Source grid (rows, columns).
    from: (usize, usize),
    /// Columns of the output grid.
    to_cols: usize,
    /// Width of each cell.
    dim: usize,
    /// Per output row: source rows and weights.
    rows: Vec<Vec<(usize, f64)>>,
    /// Per output column: source columns and weights.
    cols: Vec<Vec<(usize, f64)>>,
}

impl Resampler {
    /// The resampling of a `[from.0, from.1, dim]` grid to `[to.0, to.1, dim]` by `method`.
    pub fn new(from: (usize, usize), to: (usize, usize), dim: usize, method: ResizeMethod) -> Self {
        Resampler {
            from,
            to_cols: to.1,
            dim,
            rows: axis_weights(from.0, to.0, method),
            cols: axis_weights(from.1, to.1, method),
        }
    }

    /// Appends the values at `range` of the resampled, flattened `[to.0 * to.1, dim]` grid to `out`, as f64
    /// (the whole resampling rounds them to f32 next). `grid` is the source, `[from.0 * from.1, dim]`;
    /// `tmp` is scratch, reused between calls.
    pub fn append(
        &self,
        grid: &[f32],
        range: std::ops::Range<usize>,
        tmp: &mut Vec<f64>,
        out: &mut Vec<f64>,
    ) {
        let (dim, cols) = (self.dim, self.to_cols);
        if dim == 0 || cols == 0 {
            return;
        }
        out.reserve(range.len());
        let mut e = range.start;
        while e < range.end {
            // The band's part of output row `r`: cells c0..c1, values k0..k1 of each where the band starts or
            // ends inside one cell (bands of a wide table can be shorter than a cell).
            let cell = e / dim;
            let (r, c0) = (cell / cols, cell % cols);
            let row_end = (r + 1) * cols * dim;
            let stop = range.end.min(row_end);
            let c1 = (stop - 1) / dim % cols + 1;
            let (k_lo, k_hi) = if c1 - c0 == 1 {
                (e % dim, (stop - 1) % dim + 1)
            } else {
                (0, dim)
            };
            // The source columns those cells read.
            let needed = self.cols[c0..c1].iter().flatten().map(|&(sc, _)| sc);
            let (s_lo, s_hi) =
                needed.fold((usize::MAX, 0), |(lo, hi), sc| (lo.min(sc), hi.max(sc)));
            // Every output column has weights; were there none, the cells would sum nothing, as whole.
            let s_lo = s_lo.min(s_hi);
            // Row pass: tmp[sc - s_lo][k - k_lo] for the needed columns and widths.
            let width = k_hi - k_lo;
            tmp.clear();
            tmp.resize((s_hi - s_lo + 1) * width, 0.0);
            for &(sr, w) in &self.rows[r] {
                for sc in s_lo..=s_hi {
                    let src = (sr * self.from.1 + sc) * dim;
                    let dst = (sc - s_lo) * width;
                    if let (Some(s), Some(d)) = (
                        grid.get(src + k_lo..src + k_hi),
                        tmp.get_mut(dst..dst + width),
                    ) {
                        d.iter_mut()
                            .zip(s)
                            .for_each(|(d, s)| *d += w * f64::from(*s));
                    }
                }
            }
            // Column pass, cell by cell, each cell's part of the band summed from zero in weight order.
            for c in c0..c1 {
                let lo = if c == c0 { e % dim } else { 0 };
                let hi = if c == c1 - 1 {
                    (stop - 1) % dim + 1
                } else {
                    dim
                };
                let start = out.len();
                out.resize(start + (hi - lo), 0.0);
                let acc = &mut out[start..];
                for &(sc, w) in &self.cols[c] {
                    let from = (sc - s_lo) * width + (lo - k_lo);
                    if let Some(s) = tmp.get(from..from + (hi - lo)) {
                        acc.iter_mut().zip(s).for_each(|(d, s)| *d += w * s);
                    }
                }
            }
            e = stop;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_size_is_identity_for_every_method() {
        let grid: Vec<f32> = (0..3 * 3 * 2).map(|v| v as f32 * 0.37 - 1.0).collect();
        for m in [
            ResizeMethod::VitJax,
            ResizeMethod::Bilinear,
            ResizeMethod::Bicubic,
        ] {
            let out = resize_grid(&grid, (3, 3), (3, 3), 2, m);
            for (a, b) in out.iter().zip(&grid) {
                assert!((a - b).abs() < 1e-6, "{m:?}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn vit_jax_keeps_corners_and_interpolates_linearly() {
        // A linear ramp along rows stays a linear ramp, with the corner values kept (align_corners).
        let grid: Vec<f32> = (0..2).flat_map(|r| [r as f32 * 3.0; 2]).collect();
        let out = resize_grid(&grid, (2, 2), (4, 4), 1, ResizeMethod::VitJax);
        let col0: Vec<f32> = (0..4).map(|r| out[r * 4]).collect();
        assert_eq!(col0, vec![0.0, 1.0, 2.0, 3.0]);
    }

    #[test]
    fn bilinear_uses_half_pixel_centres() {
        // 2 -> 4 with align_corners=False: sources at -0.25 (clamped to 0), 0.25, 0.75, 1.25.
        let grid = vec![0.0f32, 4.0];
        let out = resize_grid(&grid, (1, 2), (1, 4), 1, ResizeMethod::Bilinear);
        assert_eq!(out, vec![0.0, 1.0, 3.0, 4.0]);
    }

    /// Bands of any length, starting and ending anywhere (inside a cell, across cells and rows), put together
    /// give the whole resampling bit for bit, for every method, growing and shrinking, square or not.
    #[test]
    fn bands_are_the_whole_resampling_bit_for_bit() {
        let cases = [
            ((3, 3), (5, 7), 4),
            ((4, 2), (2, 5), 3),
            ((2, 2), (9, 9), 1),
            ((5, 5), (3, 3), 8),
            ((1, 1), (4, 4), 2),
            ((7, 3), (7, 11), 5),
            ((6, 6), (1, 1), 2),
        ];
        for (from, to, dim) in cases {
            let grid: Vec<f32> = (0..from.0 * from.1 * dim)
                .map(|i| ((i as f32 * 0.618_034).fract() - 0.5) * (1.0 + i as f32 / 7.0))
                .collect();
            let total = to.0 * to.1 * dim;
            for m in [
                ResizeMethod::VitJax,
                ResizeMethod::Bilinear,
                ResizeMethod::Bicubic,
            ] {
                let want = resize_grid(&grid, from, to, dim, m);
                let resampler = Resampler::new(from, to, dim, m);
                for band in [1, 2, dim, dim + 1, to.1 * dim - 1, to.1 * dim + 3, total] {
                    let band = band.max(1);
                    let (mut tmp, mut wide) = (Vec::new(), Vec::new());
                    let mut start = 0;
                    while start < total {
                        let end = (start + band).min(total);
                        resampler.append(&grid, start..end, &mut tmp, &mut wide);
                        start = end;
                    }
                    let got: Vec<u32> = wide.iter().map(|x| (*x as f32).to_bits()).collect();
                    let want: Vec<u32> = want.iter().map(|x| x.to_bits()).collect();
                    assert_eq!(
                        got, want,
                        "{from:?} -> {to:?} x {dim}, {m:?}, bands of {band}"
                    );
                }
            }
        }
    }
}
