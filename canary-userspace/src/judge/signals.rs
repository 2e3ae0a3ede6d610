//! One test per signal (error rate, mean and p95 latency, predictions, flow share), each
//! returning a [`SignalReport`], and the decision rule they share.

use statrs::distribution::{ChiSquared, ContinuousCDF};

use std::collections::BTreeSet;

use super::report::{finite, Signal, SignalReport, SignalVerdict};
use super::stats::{moments_ms, newcombe, normal_sf, quantile_ms, z_upper};
use super::FlowCounts;
use crate::config::{Thresholds, UpstreamConfig};
use crate::domain::Weight;
use crate::upstream::Histogram;

/// The shared decision rule (see the module documentation).
pub(super) fn decide(
    report: &mut SignalReport,
    estimate: f64,
    lower_rollback: f64,
    upper_promote: f64,
    significant: bool,
) {
    let t = report.threshold;
    report.estimate = finite(estimate);
    report.lower = finite(lower_rollback);
    report.upper = finite(upper_promote);
    report.verdict = if upper_promote < t {
        SignalVerdict::Pass
    } else if significant && estimate > t / 2.0 {
        SignalVerdict::Fail
    } else {
        SignalVerdict::Inconclusive
    };
}

pub(super) fn error_rate(
    stable: (u64, u64),
    canary: (u64, u64),
    t: &Thresholds,
    z_r: f64,
    z_p: f64,
) -> SignalReport {
    let (n_s, x_s) = (stable.0, stable.1.min(stable.0));
    let (n_c, x_c) = (canary.0, canary.1.min(canary.0));
    let mut r = SignalReport::new(
        Signal::ErrorRate,
        "difference of proportions, Newcombe score bounds; pooled z test",
        n_s,
        n_c,
        t.max_error_rate_increase,
    );
    if n_s == 0 || n_c == 0 {
        r.verdict = SignalVerdict::Skipped;
        r.note = "no requests in a group".into();
        return r;
    }
    let p_s = x_s as f64 / n_s as f64;
    let p_c = x_c as f64 / n_c as f64;
    r.stable = Some(p_s);
    r.canary = Some(p_c);
    let pooled = (x_s + x_c) as f64 / (n_s + n_c) as f64;
    let se0 = (pooled * (1.0 - pooled) * (1.0 / n_s as f64 + 1.0 / n_c as f64)).sqrt();
    if se0 > 0.0 {
        let z = (p_c - p_s) / se0;
        r.statistic = Some(z);
        r.p_value = Some(normal_sf(z));
    }
    let (low, _) = newcombe(x_c, n_c, x_s, n_s, z_r);
    let (_, high) = newcombe(x_c, n_c, x_s, n_s, z_p);
    decide(&mut r, p_c - p_s, low, high, low > 0.0);
    r
}

pub(super) fn latency_mean(
    stable: &Histogram,
    canary: &Histogram,
    t: &Thresholds,
    z_r: f64,
    z_p: f64,
) -> SignalReport {
    let mut r = SignalReport::new(
        Signal::LatencyMean,
        "difference of means, Welch normal bounds (variance from buckets)",
        stable.count.round() as u64,
        canary.count.round() as u64,
        t.max_latency_increase_ms,
    );
    let (Some((m_s, v_s, n_s)), Some((m_c, v_c, n_c))) = (moments_ms(stable), moments_ms(canary))
    else {
        r.verdict = SignalVerdict::Skipped;
        r.note = "fewer than 2 observations in a group".into();
        return r;
    };
    r.stable = Some(m_s);
    r.canary = Some(m_c);
    let se = (v_s / n_s as f64 + v_c / n_c as f64).sqrt();
    let d = m_c - m_s;
    if se > 0.0 {
        r.statistic = Some(d / se);
        r.p_value = Some(normal_sf(d / se));
    }
    let low = d - z_r * se;
    decide(&mut r, d, low, d + z_p * se, low > 0.0);
    r
}

pub(super) fn latency_p95(
    stable: &Histogram,
    canary: &Histogram,
    t: &Thresholds,
    a_r: f64,
    a_p: f64,
) -> SignalReport {
    const Q: f64 = 0.95;
    let mut r = SignalReport::new(
        Signal::LatencyP95,
        "difference of p95 (bucket-interpolated), order-statistic bounds per group, Bonferroni",
        stable.count.round() as u64,
        canary.count.round() as u64,
        t.max_latency_increase_ms,
    );
    if stable.count < 1.0 || canary.count < 1.0 {
        r.verdict = SignalVerdict::Skipped;
        r.note = "no observations in a group".into();
        return r;
    }
    // Each group's interval at half the level, so the difference holds at the full level.
    let (z_r, z_p) = (z_upper(a_r / 2.0), z_upper(a_p / 2.0));
    let (est_s, _, high_s_r) = quantile_ms(stable, Q, z_r);
    let (est_c, low_c_r, _) = quantile_ms(canary, Q, z_r);
    let (_, low_s_p, _) = quantile_ms(stable, Q, z_p);
    let (_, _, high_c_p) = quantile_ms(canary, Q, z_p);
    r.stable = est_s;
    r.canary = est_c;
    let (Some(est_s), Some(est_c)) = (est_s, est_c) else {
        r.verdict = SignalVerdict::Inconclusive;
        r.note =
            "p95 lies in the +Inf bucket; add larger buckets to the backend's histogram".into();
        return r;
    };
    let low = high_s_r.map_or(f64::NEG_INFINITY, |h| low_c_r - h);
    let high = high_c_p.map_or(f64::INFINITY, |h| h - low_s_p);
    decide(&mut r, est_c - est_s, low, high, low > 0.0);
    if high.is_infinite() {
        r.note = "upper bound unknown (canary p95 near the +Inf bucket)".into();
    }
    r
}

pub(super) fn predictions(
    stable: &std::collections::BTreeMap<String, u64>,
    canary: &std::collections::BTreeMap<String, u64>,
    t: &Thresholds,
    a_r: f64,
    a_p: f64,
) -> SignalReport {
    let classes: BTreeSet<&String> = stable.keys().chain(canary.keys()).collect();
    let count =
        |m: &std::collections::BTreeMap<String, u64>, k: &String| m.get(k).copied().unwrap_or(0);
    let n_s: u64 = stable.values().sum();
    let n_c: u64 = canary.values().sum();
    let mut r = SignalReport::new(
        Signal::Predictions,
        "chi-square test of homogeneity; total variation distance with simultaneous bounds",
        n_s,
        n_c,
        t.max_prediction_shift,
    );
    let live: Vec<&String> = classes
        .into_iter()
        .filter(|k| count(stable, k) + count(canary, k) > 0)
        .collect();
    if n_s == 0 || n_c == 0 || live.len() < 2 {
        r.verdict = SignalVerdict::Skipped;
        r.note = if live.len() < 2 && n_s > 0 && n_c > 0 {
            "a single class was predicted in both groups: no shift".into()
        } else {
            "no predictions in a group".into()
        };
        if live.len() < 2 && n_s > 0 && n_c > 0 {
            r.verdict = SignalVerdict::Pass;
            r.estimate = Some(0.0);
        }
        return r;
    }
    let (nsf, ncf) = (n_s as f64, n_c as f64);
    let total = nsf + ncf;
    let mut chi2 = 0.0;
    let mut tvd = 0.0;
    let mut spread = 0.0;
    let k = live.len() as f64;
    // With two classes both rows are the same event; otherwise a two-sided interval per class.
    let z_p = if live.len() == 2 {
        z_upper(a_p / 2.0)
    } else {
        z_upper(a_p / (2.0 * k))
    };
    for class in &live {
        let (o_s, o_c) = (count(stable, class) as f64, count(canary, class) as f64);
        let col = o_s + o_c;
        let (e_s, e_c) = (nsf * col / total, ncf * col / total);
        chi2 += (o_s - e_s).powi(2) / e_s + (o_c - e_c).powi(2) / e_c;
        let (p_s, p_c) = (o_s / nsf, o_c / ncf);
        tvd += (p_c - p_s).abs();
        spread += (p_s * (1.0 - p_s) / nsf + p_c * (1.0 - p_c) / ncf).sqrt();
    }
    tvd /= 2.0;
    let upper = (tvd + z_p * spread / 2.0).min(1.0);
    let p = ChiSquared::new(k - 1.0).map_or(1.0, |d| d.sf(chi2));
    r.statistic = Some(chi2);
    r.p_value = Some(p);
    decide(&mut r, tvd, f64::NAN, upper, p < a_r);
    r.note = format!(
        "{} classes, {} degrees of freedom",
        live.len(),
        live.len() - 1
    );
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
