//! How far two outputs are apart: the metrics of the report and the pass rule.
//!
//! The pass rule has two parts. `max_abs_diff <= tolerance * max(1, max|reference|)`: an
//! absolute bound for outputs of order one (the golden models' logits are about 1.5),
//! relative for large ones, so a full-size model with logits in the tens is held to the
//! same number of correct digits. And `cosine >= 1 - tolerance` for every sample: a
//! scale-free check, so that outputs much smaller than one (a model whose norms shrink
//! everything) cannot slip a wrong mapping under the absolute bound.

/// The comparison of one output (logits or pooled features), target against reference.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Metrics {
    /// The largest `|t - r|` over all values (infinity where any difference is not finite).
    pub max_abs_diff: f64,
    /// `max|t - r| / max|r|`: relative to the reference's largest magnitude, so that a value
    /// near zero does not make it explode.
    pub max_rel_diff: f64,
    /// The mean of `|t - r|` over all values.
    pub mean_abs_diff: f64,
    /// Mean over the batch of the cosine between each sample's two vectors.
    pub cosine: f64,
    /// Fraction of samples whose argmax agrees.
    pub top1_agreement: f64,
    /// Mean fraction of the reference's top 5 that are in the target's top 5.
    pub top5_overlap: f64,
    /// The bound the max abs diff was held to.
    pub bound: f64,
    /// Whether the output passes: `max_abs_diff <= bound`, no sample's cosine below `1 - tolerance`, nothing non-finite.
    pub within: bool,
}

/// Compares `target` with `reference`, both `[batch, n]` row-major, against `tolerance`.
/// Returns `None` when the shapes differ.
pub fn compare(target: &[f64], reference: &[f64], batch: usize, tolerance: f64) -> Option<Metrics> {
    if target.len() != reference.len() || batch == 0 || !reference.len().is_multiple_of(batch) {
        return None;
    }
    let n = reference.len() / batch;
    if n == 0 {
        return None;
    }
    let mut max_abs = 0.0f64;
    let mut sum_abs = 0.0f64;
    let mut ref_max = 0.0f64;
    let mut nan = false;
    for (t, r) in target.iter().zip(reference) {
        let d = (t - r).abs();
        nan |= !d.is_finite();
        max_abs = max_abs.max(d);
        sum_abs += d;
        ref_max = ref_max.max(r.abs());
    }
    #[allow(clippy::cast_precision_loss)]
    let (count, rows) = (reference.len() as f64, batch as f64);
    let mut cos_sum = 0.0;
    let mut min_cos = f64::INFINITY;
    let mut top1 = 0usize;
    let mut top5 = 0.0;
    for (t, r) in target.chunks(n).zip(reference.chunks(n)) {
        let dot: f64 = t.iter().zip(r).map(|(a, b)| a * b).sum();
        let nt: f64 = t.iter().map(|a| a * a).sum::<f64>().sqrt();
        let nr: f64 = r.iter().map(|a| a * a).sum::<f64>().sqrt();
        let cos = if nt > 0.0 && nr > 0.0 {
            dot / (nt * nr)
        } else {
            f64::from(u8::from(nt == nr))
        };
        cos_sum += cos;
        min_cos = min_cos.min(cos);
        let (tt, rt) = (top_k(t, 5), top_k(r, 5));
        if tt.first() == rt.first() {
            top1 += 1;
        }
        let k = rt.len().max(1);
        #[allow(clippy::cast_precision_loss)]
        let overlap = rt.iter().filter(|i| tt.contains(i)).count() as f64 / k as f64;
        top5 += overlap;
    }
    let bound = tolerance * ref_max.max(1.0);
    #[allow(clippy::cast_precision_loss)]
    let top1_agreement = top1 as f64 / rows;
    Some(Metrics {
        max_abs_diff: if nan { f64::INFINITY } else { max_abs },
        max_rel_diff: if ref_max > 0.0 {
            max_abs / ref_max
        } else {
            max_abs
        },
        mean_abs_diff: sum_abs / count,
        cosine: cos_sum / rows,
        top1_agreement,
        top5_overlap: top5 / rows,
        bound,
        within: !nan && max_abs <= bound && min_cos >= 1.0 - tolerance,
    })
}

/// Indices of the `k` largest values, largest first (NaNs sort last).
fn top_k(values: &[f64], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..values.len()).collect();
    idx.sort_by(|&a, &b| {
        let (x, y) = (
            values.get(a).copied().unwrap_or(f64::NAN),
            values.get(b).copied().unwrap_or(f64::NAN),
        );
        y.partial_cmp(&x)
            .unwrap_or_else(|| x.is_nan().cmp(&y.is_nan()))
    });
    idx.truncate(k);
    idx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_outputs_pass_with_zero_diff() {
        let r = [0.1, -2.0, 3.0, 0.5, 1.0, 0.0];
        let m = compare(&r, &r, 2, 1e-4).expect("same shape");
        assert_eq!(m.max_abs_diff, 0.0);
        assert!((m.cosine - 1.0).abs() < 1e-12);
        assert_eq!(m.top1_agreement, 1.0);
        assert_eq!(m.top5_overlap, 1.0);
        assert!(m.within);
    }

    #[test]
    fn the_bound_scales_with_large_outputs_only() {
        let r = [10.0, 0.0];
        let t = [10.0005, 0.0];
        let m = compare(&t, &r, 1, 1e-4).expect("same shape");
        assert!((m.bound - 1e-3).abs() < 1e-12);
        assert!(m.within, "5e-4 is inside 1e-4 x 10");
        let m = compare(&[0.5005, 0.0], &[0.5, 0.0], 1, 1e-4).expect("same shape");
        assert!((m.bound - 1e-4).abs() < 1e-12);
        assert!(!m.within, "5e-4 is outside 1e-4 for outputs below 1");
    }

    #[test]
    fn a_swapped_argmax_shows_in_top1() {
        let m = compare(&[1.0, 2.0], &[2.0, 1.0], 1, 1e-4).expect("same shape");
        assert_eq!(m.top1_agreement, 0.0);
        assert!(!m.within);
        assert!(m.cosine < 0.9);
    }

    #[test]
    fn small_outputs_are_held_by_their_direction() {
        // Outputs of 1e-5 are under the absolute bound whatever they are; the cosine is not.
        let m = compare(&[1e-5, 0.0], &[0.0, 1e-5], 1, 1e-4).expect("same shape");
        assert!(m.max_abs_diff <= m.bound);
        assert!(!m.within);
    }

    #[test]
    fn nan_never_passes() {
        let m = compare(&[f64::NAN, 1.0], &[1.0, 1.0], 1, 1.0).expect("same shape");
        assert!(!m.within);
        assert!(m.max_abs_diff.is_infinite());
    }

    #[test]
    fn different_shapes_are_not_compared() {
        assert!(compare(&[1.0, 2.0, 3.0], &[1.0, 2.0], 1, 1e-4).is_none());
    }
}
