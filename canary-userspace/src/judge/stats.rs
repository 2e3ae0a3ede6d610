//! The statistics the signals rest on: alpha spending, normal quantiles, Wilson and Newcombe
//! intervals, histogram moments and quantiles with order-statistic intervals.

use statrs::distribution::{ContinuousCDF, Normal};

use crate::upstream::Histogram;

/// Error probability spent at look `k` (1-based) out of a total `alpha`:
/// `alpha * 6 / (pi^2 k^2)`, which sums to `alpha` over all looks.
pub fn alpha_at_look(alpha: f64, look: u32) -> f64 {
    let k = f64::from(look.max(1));
    alpha * 6.0 / (std::f64::consts::PI.powi(2) * k * k)
}

/// One-sided normal quantile: `z` with `P(Z > z) = a`.
pub(super) fn z_upper(a: f64) -> f64 {
    -Normal::standard().inverse_cdf(a.clamp(1e-300, 0.5))
}

pub(super) fn normal_sf(z: f64) -> f64 {
    Normal::standard().sf(z)
}

/// Wilson score interval `(low, high)` for `x` successes out of `n` at quantile `z`.
pub(super) fn wilson(x: u64, n: u64, z: f64) -> (f64, f64) {
    let n_f = n as f64;
    let p = x as f64 / n_f;
    let z2 = z * z;
    let denom = 1.0 + z2 / n_f;
    let centre = (p + z2 / (2.0 * n_f)) / denom;
    let half = z * (p * (1.0 - p) / n_f + z2 / (4.0 * n_f * n_f)).sqrt() / denom;
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

/// Newcombe's hybrid score interval for `p1 - p2`: `(low, high)` at quantile `z` per side.
pub(super) fn newcombe(x1: u64, n1: u64, x2: u64, n2: u64, z: f64) -> (f64, f64) {
    let p1 = x1 as f64 / n1 as f64;
    let p2 = x2 as f64 / n2 as f64;
    let (l1, u1) = wilson(x1, n1, z);
    let (l2, u2) = wilson(x2, n2, z);
    let d = p1 - p2;
    let low = d - ((p1 - l1).powi(2) + (u2 - p2).powi(2)).sqrt();
    let high = d + ((u1 - p1).powi(2) + (p2 - l2).powi(2)).sqrt();
    (low, high)
}

/// Bucket midpoints (seconds) with counts, for moments; the `+Inf` bucket is placed at the
/// mean its share of `_sum` implies (at least the last bound).
pub(super) fn midpoints(h: &Histogram) -> Vec<(f64, f64)> {
    let counts = h.bucket_counts();
    let mut out = Vec::with_capacity(counts.len());
    let mut lo = 0.0;
    let mut finite_sum = 0.0;
    for (i, &hi) in h.bounds.iter().enumerate() {
        let m = f64::midpoint(lo, hi);
        out.push((m, counts[i]));
        finite_sum += m * counts[i];
        lo = hi;
    }
    let over = counts[counts.len() - 1];
    if over > 0.0 {
        let last = h.bounds.last().copied().unwrap_or(0.0);
        let implied = (h.sum - finite_sum) / over;
        out.push((implied.max(last), over));
    }
    out
}

/// Mean (ms, exact from `_sum`) and variance (ms^2, from bucket midpoints) of a histogram.
pub(super) fn moments_ms(h: &Histogram) -> Option<(f64, f64, u64)> {
    let n = h.count.round();
    if n < 2.0 {
        return None;
    }
    let mean = h.sum / h.count * 1000.0;
    let mids = midpoints(h);
    let total: f64 = mids.iter().map(|m| m.1).sum();
    let mid_mean: f64 = mids.iter().map(|(m, c)| m * c).sum::<f64>() / total;
    let var: f64 = mids
        .iter()
        .map(|(m, c)| c * (m - mid_mean).powi(2))
        .sum::<f64>()
        / (total - 1.0);
    Some((mean, var * 1e6, n as u64))
}

/// Quantile `q` of a histogram (ms) with an order-statistic interval at quantile `z`:
/// `(estimate, low, high)`; `None` parts are unbounded (in the `+Inf` bucket).
pub(super) fn quantile_ms(h: &Histogram, q: f64, z: f64) -> (Option<f64>, f64, Option<f64>) {
    let n = h.count;
    let half = z * (n * q * (1.0 - q)).sqrt();
    let est = h.value_at_rank(q * n).map(|v| v * 1000.0);
    let low = h.value_at_rank((q * n - half).floor()).map_or_else(
        || h.bounds.last().copied().unwrap_or(0.0) * 1000.0,
        |v| v * 1000.0,
    );
    let high = if q * n + half + 1.0 > n {
        None
    } else {
        h.value_at_rank((q * n + half).ceil() + 1.0)
            .map(|v| v * 1000.0)
    };
    (est, low, high)
}
