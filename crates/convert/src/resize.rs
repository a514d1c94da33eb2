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

/// Resamples a `[from.0, from.1, dim]` row-major grid to `[to.0, to.1, dim]`.
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
}
