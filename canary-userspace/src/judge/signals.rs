//! One test per signal (error rate, mean and p95 latency, flow share), each returning a
//! [`SignalReport`], and the decision rule they share. Predictions have their own module.

use super::clusters::DesignEffect;
use super::report::{finite, Signal, SignalReport, SignalVerdict};
use super::sequential::{cs_z, pairs};
use super::stats::{moments_ms, newcombe, normal_sf, quantile_ms, ratio_upper, wilson, Interval};
use super::FlowCounts;
use crate::config::UpstreamConfig;
use crate::domain::Weight;
use crate::upstream::Histogram;

/// How much worse the canary may be on one signal: by `absolute` (canary minus stable), and,
/// when set, by the factor `ratio` (canary over stable). A canary must be within both.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Tolerance {
    pub absolute: f64,
    pub ratio: Option<f64>,
}

impl Tolerance {
    /// The allowed difference when stable's value is `stable`: the tighter of the two.
    pub(super) fn at(self, stable: f64) -> f64 {
        match self.ratio {
            Some(r) if stable.is_finite() => self.absolute.min((r - 1.0) * stable.max(0.0)),
            _ => self.absolute,
        }
    }
}

/// The levels and the sample size the bounds of one look are tuned to.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Look {
    /// One-sided level of the rollback test.
    pub rollback: f64,
    /// One-sided level of the promotion bound.
    pub promote: f64,
    /// `min_samples`: the confidence sequences are tightest near it.
    pub n_ref: f64,
}

/// The bounds of one signal, ready for [`decide`].
pub(super) struct Bounds {
    /// Canary minus stable.
    pub estimate: f64,
    /// Stable's value (for the relative tolerance).
    pub stable: f64,
    /// Lower bound of the difference at the rollback level.
    pub lower: f64,
    /// Upper bound of the difference at the promotion level.
    pub upper: f64,
    /// Upper bound of canary over stable at the promotion level.
    pub ratio_upper: f64,
}

/// The shared decision rule (see the module documentation of the judge).
pub(super) fn decide(report: &mut SignalReport, b: &Bounds, tolerance: Tolerance) {
    report.estimate = finite(b.estimate);
    report.lower = finite(b.lower);
    report.upper = finite(b.upper);
    report.threshold = tolerance.absolute;
    report.ratio_threshold = tolerance.ratio;
    if tolerance.ratio.is_some() {
        report.ratio_upper = Some(b.ratio_upper);
        if b.stable > 0.0 {
            report.ratio = finite((b.stable + b.estimate) / b.stable);
        }
    }
    let within_absolute = b.upper < tolerance.absolute;
    let within_ratio = tolerance.ratio.is_none_or(|r| b.ratio_upper < r);
    let allowed = tolerance.at(b.stable);
    report.verdict = if within_absolute && within_ratio {
        SignalVerdict::Pass
    } else if b.lower > 0.0 && b.estimate > allowed / 2.0 {
        SignalVerdict::Fail
    } else {
        SignalVerdict::Inconclusive
    };
}

/// Error rate: Newcombe score bounds on effective counts (divided by each group's design
/// effect), MOVER-R for the ratio.
pub(super) fn error_rate(
    stable: (u64, u64),
    canary: (u64, u64),
    deff: [DesignEffect; 2],
    tolerance: Tolerance,
    look: Look,
) -> SignalReport {
    let (n_s, x_s) = (stable.0 as f64, stable.1.min(stable.0) as f64);
    let (n_c, x_c) = (canary.0 as f64, canary.1.min(canary.0) as f64);
    let mut r = SignalReport::new(
        Signal::ErrorRate,
        "difference of proportions, Newcombe score confidence sequence on effective counts",
        stable.0,
        canary.0,
        tolerance.absolute,
    );
    if n_s == 0.0 || n_c == 0.0 {
        r.verdict = SignalVerdict::NoData;
        r.note = "no requests in a group".into();
        return r;
    }
    let (p_s, p_c) = (x_s / n_s, x_c / n_c);
    r.stable = Some(p_s);
    r.canary = Some(p_c);
    r.design_effect = Some(deff[0].value.max(deff[1].value));
    let pooled = (x_s + x_c) / (n_s + n_c);
    let se0 = (pooled * (1.0 - pooled) * (deff[0].value / n_s + deff[1].value / n_c)).sqrt();
    if se0 > 0.0 {
        let z = (p_c - p_s) / se0;
        r.statistic = Some(z);
        r.p_value = Some(normal_sf(z));
    }
    let m = pairs(n_s / deff[0].value, n_c / deff[1].value);
    let (z_r, z_p) = (
        cs_z(look.rollback, m, look.n_ref / 2.0),
        cs_z(look.promote, m, look.n_ref / 2.0),
    );
    // Effective counts at each bound: divided by the design effect's factor there.
    let effective = |z: f64| {
        let (f_s, f_c) = (deff[0].factor(z), deff[1].factor(z));
        ((x_s / f_s, n_s / f_s), (x_c / f_c, n_c / f_c))
    };
    let (es, ec) = effective(z_r);
    let (lower, _) = newcombe(ec.0, ec.1, es.0, es.1, z_r);
    let (es, ec) = effective(z_p);
    let (_, upper) = newcombe(ec.0, ec.1, es.0, es.1, z_p);
    let interval = |(x, n): (f64, f64)| -> Interval {
        let (l, u) = wilson(x, n, z_p);
        (x / n, l, u)
    };
    let bounds = Bounds {
        estimate: p_c - p_s,
        stable: p_s,
        lower,
        upper,
        ratio_upper: ratio_upper(interval(ec), interval(es)),
    };
    decide(&mut r, &bounds, tolerance);
    r
}

/// Mean latency: Welch normal bounds, variances from buckets times the design effect.
pub(super) fn latency_mean(
    stable: &Histogram,
    canary: &Histogram,
    deff: [DesignEffect; 2],
    tolerance: Tolerance,
    look: Look,
) -> SignalReport {
    let mut r = SignalReport::new(
        Signal::LatencyMean,
        "difference of means, Welch normal confidence sequence (variance from buckets x design effect)",
        stable.count.round() as u64,
        canary.count.round() as u64,
        tolerance.absolute,
    );
    let (Some((m_s, v_s, n_s)), Some((m_c, v_c, n_c))) = (moments_ms(stable), moments_ms(canary))
    else {
        r.verdict = SignalVerdict::NoData;
        r.note = "fewer than 2 latency observations in a group".into();
        return r;
    };
    r.stable = Some(m_s);
    r.canary = Some(m_c);
    r.design_effect = Some(deff[0].value.max(deff[1].value));
    let (n_s, n_c) = (n_s as f64, n_c as f64);
    let variances = |f_s: f64, f_c: f64| (v_s * f_s / n_s, v_c * f_c / n_c);
    let (var_s, var_c) = variances(deff[0].value, deff[1].value);
    let d = m_c - m_s;
    let se = (var_s + var_c).sqrt();
    if se > 0.0 {
        r.statistic = Some(d / se);
        r.p_value = Some(normal_sf(d / se));
    }
    let m = pairs(n_s / deff[0].value, n_c / deff[1].value);
    let (z_r, z_p) = (
        cs_z(look.rollback, m, look.n_ref / 2.0),
        cs_z(look.promote, m, look.n_ref / 2.0),
    );
    let (vr_s, vr_c) = variances(deff[0].factor(z_r), deff[1].factor(z_r));
    let (vp_s, vp_c) = variances(deff[0].factor(z_p), deff[1].factor(z_p));
    let interval = |mean: f64, var: f64| -> Interval {
        (mean, mean - z_p * var.sqrt(), mean + z_p * var.sqrt())
    };
    let bounds = Bounds {
        estimate: d,
        stable: m_s,
        lower: d - z_r * (vr_s + vr_c).sqrt(),
        upper: d + z_p * (vp_s + vp_c).sqrt(),
        ratio_upper: ratio_upper(interval(m_c, vp_c), interval(m_s, vp_s)),
    };
    decide(&mut r, &bounds, tolerance);
    r
}

/// p95 latency: distribution-free order-statistic intervals per group (the rank variance
/// times the design effect), read through the bucket-interpolated quantile, combined for the
/// difference by MOVER (Zou and Donner: each side's distance to its limit, in quadrature), as
/// Newcombe's interval combines Wilson intervals.
pub(super) fn latency_p95(
    stable: &Histogram,
    canary: &Histogram,
    deff: [DesignEffect; 2],
    tolerance: Tolerance,
    look: Look,
) -> SignalReport {
    const Q: f64 = 0.95;
    let mut r = SignalReport::new(
        Signal::LatencyP95,
        "difference of p95 (bucket-interpolated), order-statistic intervals per group combined by MOVER, confidence sequence",
        stable.count.round() as u64,
        canary.count.round() as u64,
        tolerance.absolute,
    );
    if stable.count < 1.0 || canary.count < 1.0 {
        r.verdict = SignalVerdict::NoData;
        r.note = "no latency observations in a group".into();
        return r;
    }
    r.design_effect = Some(deff[0].value.max(deff[1].value));
    let m = pairs(stable.count / deff[0].value, canary.count / deff[1].value);
    let (z_r, z_p) = (
        cs_z(look.rollback, m, look.n_ref / 2.0),
        cs_z(look.promote, m, look.n_ref / 2.0),
    );
    let (est_s, low_s_p, high_s_r) = {
        let (estimate, _, high) = quantile_ms(stable, Q, z_r, deff[0].factor(z_r));
        let (_, low, _) = quantile_ms(stable, Q, z_p, deff[0].factor(z_p));
        (estimate, low, high)
    };
    let (est_c, low_c_r, high_c_p) = {
        let (estimate, low, _) = quantile_ms(canary, Q, z_r, deff[1].factor(z_r));
        let (_, _, high) = quantile_ms(canary, Q, z_p, deff[1].factor(z_p));
        (estimate, low, high)
    };
    r.stable = est_s;
    r.canary = est_c;
    let (Some(est_s), Some(est_c)) = (est_s, est_c) else {
        r.verdict = SignalVerdict::NoData;
        r.note =
            "p95 lies in the +Inf bucket; add larger buckets to the backend's histogram".into();
        return r;
    };
    let d = est_c - est_s;
    let lower = high_s_r.map_or(f64::NEG_INFINITY, |h| {
        d - ((est_c - low_c_r).powi(2) + (h - est_s).powi(2)).sqrt()
    });
    let upper = high_c_p.map_or(f64::INFINITY, |h| {
        d + ((h - est_c).powi(2) + (est_s - low_s_p).powi(2)).sqrt()
    });
    let ratio_up = match high_c_p {
        Some(h) => ratio_upper((est_c, low_c_r, h), (est_s, low_s_p, est_s)),
        None => f64::INFINITY,
    };
    let bounds = Bounds {
        estimate: d,
        stable: est_s,
        lower,
        upper,
        ratio_upper: ratio_up,
    };
    decide(&mut r, &bounds, tolerance);
    if upper.is_infinite() {
        r.note = "upper bound unknown (canary p95 near the +Inf bucket)".into();
    }
    r
}

#[allow(
    clippy::many_single_char_names,
    reason = "n, w, r, z, p are the usual statistical names"
)]
pub(super) fn flow_share(flows: FlowCounts, weight: Weight, alpha: f64) -> SignalReport {
    let n = flows.stable + flows.canary;
    let w = weight.ratio();
    let mut r = SignalReport::new(
        Signal::FlowShare,
        "canary share of new flows (kernel) against the weight, binomial z",
        flows.stable,
        flows.canary,
        w,
    );
    if n == 0 {
        r.verdict = SignalVerdict::Skipped;
        r.note = "no new flows counted".into();
        return r;
    }
    let share = flows.canary as f64 / n as f64;
    r.stable = Some(1.0 - share);
    r.canary = Some(share);
    r.estimate = Some(share - w);
    r.verdict = SignalVerdict::Ok;
    if w > 0.0 && w < 1.0 {
        let z = (share - w) / (w * (1.0 - w) / n as f64).sqrt();
        let p = 2.0 * normal_sf(z.abs());
        r.statistic = Some(z);
        r.p_value = Some(p);
        // Large: significant and off by more than a tenth of the weight plus a point.
        if p < alpha && (share - w).abs() > 0.1 * w + 0.01 {
            r.verdict = SignalVerdict::Warn;
            r.note = "measured share is far from the weight: check flow counts, affinity and backend health".into();
        }
    } else if (share - w).abs() > 0.01 {
        r.verdict = SignalVerdict::Warn;
        r.note = "flows went to a group the weight excludes (established flows or fallback)".into();
    }
    r
}

/// Which signals are configured (an empty series name switches one off).
pub(super) fn enabled(upstream: &UpstreamConfig) -> (bool, bool) {
    (
        !upstream.latency.is_empty(),
        !upstream.predictions.is_empty(),
    )
}
