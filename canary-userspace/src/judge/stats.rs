//! The statistics the signals rest on: normal quantiles, Wilson and Newcombe intervals (on
//! effective counts), ratio bounds (MOVER-R), the conditional binomial tail, the folded normal
//! mean, histogram moments and quantiles with order-statistic intervals.

use statrs::distribution::{ContinuousCDF, Normal};
use statrs::function::beta::beta_reg;

use crate::upstream::Histogram;

pub(super) fn normal_sf(z: f64) -> f64 {
    Normal::standard().sf(z)
}

/// Wilson score interval `(low, high)` for `x` successes out of `n` at quantile `z`. The counts
/// may be fractional: effective counts (divided by a design effect) keep the interval's shape.
pub(super) fn wilson(x: f64, n: f64, z: f64) -> (f64, f64) {
    if n <= 0.0 {
        return (0.0, 1.0);
    }
    let p = (x / n).clamp(0.0, 1.0);
    let z2 = z * z;
    let denom = 1.0 + z2 / n;
    let centre = (p + z2 / (2.0 * n)) / denom;
    let half = z * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt() / denom;
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

/// Newcombe's hybrid score interval for `p1 - p2`: `(low, high)` at quantile `z` per side.
pub(super) fn newcombe(x1: f64, n1: f64, x2: f64, n2: f64, z: f64) -> (f64, f64) {
    let p1 = x1 / n1;
    let p2 = x2 / n2;
    let (l1, u1) = wilson(x1, n1, z);
    let (l2, u2) = wilson(x2, n2, z);
    let d = p1 - p2;
    let low = d - ((p1 - l1).powi(2) + (u2 - p2).powi(2)).sqrt();
    let high = d + ((u1 - p1).powi(2) + (p2 - l2).powi(2)).sqrt();
    (low, high)
}

/// An estimate with a two-sided interval `(estimate, low, high)`.
pub(super) type Interval = (f64, f64, f64);

/// Upper bound of the ratio `a / b` of two positive quantities from an interval for each
/// (MOVER-R, Donner and Zou 2012): infinite when `b`'s lower limit is 0.
pub(super) fn ratio_upper(a: Interval, b: Interval) -> f64 {
    let (p1, _, u1) = a;
    let (p2, l2, _) = b;
    if l2 <= 0.0 || p2 <= 0.0 {
        return f64::INFINITY;
    }
    let prod = p1 * p2;
    let disc = prod * prod - u1 * l2 * (2.0 * p1 - u1) * (2.0 * p2 - l2);
    if disc < 0.0 {
        return f64::INFINITY;
    }
    let den = l2 * (2.0 * p2 - l2);
    if den <= 0.0 {
        return f64::INFINITY;
    }
    (prod + disc.sqrt()) / den
}

/// `P(X >= x)` for `X ~ Binomial(m, p)`, continued to fractional `x` and `m` through the
/// regularised incomplete beta function (`I_p(x, m - x + 1)`); 1 for `x <= 0`.
pub(super) fn binomial_upper_tail(x: f64, m: f64, p: f64) -> f64 {
    if x <= 0.0 {
        return 1.0;
    }
    if x > m || p <= 0.0 {
        return 0.0;
    }
    if p >= 1.0 {
        return 1.0;
    }
    beta_reg(x, m - x + 1.0, p)
}

/// Mean of `|c + Z|` for a standard normal `Z`: the expected absolute value of an estimate
/// whose true value is `c` standard errors.
pub(super) fn folded_mean(c: f64) -> f64 {
    let n = Normal::standard();
    let c = c.abs();
    (2.0 / std::f64::consts::PI).sqrt() * (-c * c / 2.0).exp() + c * (1.0 - 2.0 * n.cdf(-c))
}

/// The `c >= 0` with `folded_mean(c) = m`; 0 when `m` is at most `folded_mean(0)`.
pub(super) fn folded_mean_inverse(m: f64) -> f64 {
    if m <= folded_mean(0.0) {
        return 0.0;
    }
    // folded_mean(c) lies between c and c + 0.8.
    let (mut lo, mut hi) = ((m - 1.0).max(0.0), m);
    for _ in 0..100 {
        let mid = 0.5 * (lo + hi);
        if folded_mean(mid) < m {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    hi
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

/// Quantile `q` of a histogram (ms) with an order-statistic interval at quantile `z`, the rank
/// variance `n q (1 - q)` multiplied by the design effect `deff`: `(estimate, low, high)`;
/// `None` parts are unbounded (in the `+Inf` bucket).
pub(super) fn quantile_ms(
    h: &Histogram,
    q: f64,
    z: f64,
    deff: f64,
) -> (Option<f64>, f64, Option<f64>) {
    let n = h.count;
    let half = z * (n * q * (1.0 - q) * deff.max(1.0)).sqrt();
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
