//! The judge: canary against stable over one window, per signal, with an explanation.
//!
//! # Statistical method
//!
//! Each signal is a difference `canary - stable` with a threshold `t` (error rate, mean
//! latency, p95 latency; for predictions the total variation distance). At every look the
//! judge forms one-sided confidence bounds on that difference:
//!
//! * error rate: Newcombe's hybrid score interval for a difference of two proportions (Wilson
//!   intervals per group, good coverage near 0 % errors);
//! * mean latency: Welch normal interval, means from `_sum / _count`, variances from bucket
//!   midpoints (grouping only inflates them, so the bound is conservative);
//! * p95 latency: distribution-free order-statistic interval per group (binomial ranks around
//!   `0.95 n`, read through the bucket-interpolated quantile, as Prometheus estimates it),
//!   combined by Bonferroni;
//! * predictions: chi-square test of homogeneity (2 x classes table, `statrs`) and an upper
//!   bound on the total variation distance from simultaneous per-class intervals.
//!
//! Repeated looks are controlled by alpha spending with a convergent series: look `k`
//! (counted over the whole rollout, only looks that tested) spends `a_k = a * 6 / (pi^2 k^2)`
//! where `a = 1 - confidence`, so the sum over unboundedly many looks is `a` (union bound; no
//! fixed number of looks needed, and holds may repeat). Rollback tests are also split over
//! the active signals (Bonferroni), so P(any rollback of a canary that is no worse on every
//! signal) <= `a`. Promotion needs every signal to pass, an intersection-union test, so
//! P(promoting a canary worse by >= `t` on some signal) <= `a` without a split.
//!
//! Decision per signal: **pass** when the upper bound is below `t` (non-inferiority); **fail**
//! when the lower bound at the rollback level is above 0 (canary significantly worse) and the
//! estimate exceeds `t / 2` (the data favour "worse by `t`" over "as good": the likelihood
//! ratio of the two in a normal model) and the signal does not pass. A canary worse by `t`
//! or more is rolled back with high power once the bounds are tighter than `t / 2`; one worse
//! by less than `t` may go either way. Any fail rolls back; all pass promotes; otherwise
//! hold. Below `min_samples` in either group, or with metrics missing, the judge holds.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};
use statrs::distribution::{ChiSquared, ContinuousCDF, Normal};

use crate::config::{RolloutConfig, Thresholds, UpstreamConfig};
use crate::domain::Weight;
use crate::upstream::{Histogram, Series, Window};

/// Minimum canary errors in one poll for an error spike, so one unlucky request in a quiet
/// poll does not roll back.
pub const SPIKE_MIN_ERRORS: u64 = 5;

/// New flows the kernel sent to each group over the window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowCounts {
    pub stable: u64,
    pub canary: u64,
}

impl FlowCounts {
    pub fn add(&mut self, other: FlowCounts) {
        self.stable += other.stable;
        self.canary += other.canary;
    }
}

/// What the judge compares.
#[derive(Clone, Copy, Debug)]
pub struct JudgeInput<'a> {
    pub stable: &'a Window,
    pub canary: &'a Window,
    pub flows: FlowCounts,
    /// The configured canary weight over the window.
    pub weight: Weight,
    /// 1-based index of this look among the looks of the rollout that tested.
    pub look: u32,
}

/// Overall verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Promote,
    Rollback,
    Hold,
}

/// Why: also the `reason` label of `canary_decisions_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Every signal passed.
    Healthy,
    ErrorRate,
    LatencyMean,
    LatencyP95,
    PredictionShift,
    ErrorSpike,
    /// Fewer than `min_samples` requests in a group.
    InsufficientSamples,
    MetricsMissing,
    /// Neither pass nor fail on some signal yet.
    Inconclusive,
    /// An operator action.
    Operator,
    /// The canary group changed (new version): a new rollout starts.
    CanaryChanged,
    /// Warm-up finished: first step.
    WarmupDone,
    /// Rollout paused: no automatic step.
    Paused,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Healthy => "healthy",
            Reason::ErrorRate => "error_rate",
            Reason::LatencyMean => "latency_mean",
            Reason::LatencyP95 => "latency_p95",
            Reason::PredictionShift => "prediction_shift",
            Reason::ErrorSpike => "error_spike",
            Reason::InsufficientSamples => "insufficient_samples",
            Reason::MetricsMissing => "metrics_missing",
            Reason::Inconclusive => "inconclusive",
            Reason::Operator => "operator",
            Reason::CanaryChanged => "canary_changed",
            Reason::WarmupDone => "warmup_done",
            Reason::Paused => "paused",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A signal the judge looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Signal {
    Samples,
    ErrorRate,
    LatencyMean,
    LatencyP95,
    Predictions,
    FlowShare,
    ErrorSpike,
    Metrics,
}

impl Signal {
    pub fn as_str(self) -> &'static str {
        match self {
            Signal::Samples => "samples",
            Signal::ErrorRate => "error_rate",
            Signal::LatencyMean => "latency_mean",
            Signal::LatencyP95 => "latency_p95",
            Signal::Predictions => "predictions",
            Signal::FlowShare => "flow_share",
            Signal::ErrorSpike => "error_spike",
            Signal::Metrics => "metrics",
        }
    }

    fn reason(self) -> Reason {
        match self {
            Signal::ErrorRate => Reason::ErrorRate,
            Signal::LatencyMean => Reason::LatencyMean,
            Signal::LatencyP95 => Reason::LatencyP95,
            Signal::Predictions => Reason::PredictionShift,
            Signal::ErrorSpike => Reason::ErrorSpike,
            Signal::Metrics => Reason::MetricsMissing,
            Signal::Samples => Reason::InsufficientSamples,
            Signal::FlowShare => Reason::Inconclusive,
        }
    }

    /// Unit of the values of this signal, for display.
    fn unit(self) -> Unit {
        match self {
            Signal::ErrorRate | Signal::ErrorSpike | Signal::FlowShare => Unit::Percent,
            Signal::LatencyMean | Signal::LatencyP95 => Unit::Millis,
            Signal::Predictions => Unit::Ratio,
            Signal::Samples | Signal::Metrics => Unit::Count,
        }
    }
}

#[derive(Clone, Copy)]
enum Unit {
    Percent,
    Millis,
    Ratio,
    Count,
}

impl Unit {
    fn show(self, v: f64) -> String {
        match self {
            Unit::Percent => format!("{:.3}%", v * 100.0),
            Unit::Millis => format!("{v:.2}ms"),
            Unit::Ratio => format!("{v:.4}"),
            Unit::Count => format!("{v:.0}"),
        }
    }
}

/// The verdict on one signal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignalVerdict {
    /// Not worse by more than the threshold, at the configured confidence.
    Pass,
    /// Worse: rolls back.
    Fail,
    /// Not decided yet.
    Inconclusive,
    /// Informational finding worth a look (flow share far from the weight).
    Warn,
    /// Informational, fine.
    Ok,
    /// Switched off in the config or not computable (no observations).
    Skipped,
    Missing,
}

impl fmt::Display for SignalVerdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SignalVerdict::Pass => "PASS",
            SignalVerdict::Fail => "FAIL",
            SignalVerdict::Inconclusive => "inconclusive",
            SignalVerdict::Warn => "WARN",
            SignalVerdict::Ok => "ok",
            SignalVerdict::Skipped => "skipped",
            SignalVerdict::Missing => "MISSING",
        })
    }
}

/// One signal's test, numbers and verdict. Values are in base units: error rates and shares
/// as fractions, latency in milliseconds, predictions as a distance in 0..=1.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SignalReport {
    pub signal: Signal,
    /// Name of the test or bound.
    pub test: String,
    pub n_stable: u64,
    pub n_canary: u64,
    /// Measured value per group (error rate, mean, p95, share); `None` when not defined.
    pub stable: Option<f64>,
    pub canary: Option<f64>,
    /// Canary minus stable (distance for predictions).
    pub estimate: Option<f64>,
    pub statistic: Option<f64>,
    pub p_value: Option<f64>,
    /// Lower confidence bound at the rollback level.
    pub lower: Option<f64>,
    /// Upper confidence bound at the promotion level.
    pub upper: Option<f64>,
    pub threshold: f64,
    pub verdict: SignalVerdict,
    /// Anything else worth saying, in words.
    pub note: String,
}

fn finite(v: f64) -> Option<f64> {
    v.is_finite().then_some(v)
}

impl SignalReport {
    fn new(
        signal: Signal,
        test: &str,
        n_stable: u64,
        n_canary: u64,
        threshold: f64,
    ) -> SignalReport {
        SignalReport {
            signal,
            test: test.to_string(),
            n_stable,
            n_canary,
            stable: None,
            canary: None,
            estimate: None,
            statistic: None,
            p_value: None,
            lower: None,
            upper: None,
            threshold,
            verdict: SignalVerdict::Inconclusive,
            note: String::new(),
        }
    }
}

impl fmt::Display for SignalReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let u = self.signal.unit();
        let show = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| u.show(v));
        write!(
            f,
            "{:<13} {:<8} {}; n stable {} canary {}",
            self.signal.as_str(),
            self.verdict.to_string(),
            self.test,
            self.n_stable,
            self.n_canary
        )?;
        if self.stable.is_some() || self.canary.is_some() {
            write!(
                f,
                "; stable {} canary {}",
                show(self.stable),
                show(self.canary)
            )?;
        }
        if let Some(e) = self.estimate {
            write!(f, "; estimate {}", u.show(e))?;
        }
        if let Some(s) = self.statistic {
            write!(f, "; statistic {s:.3}")?;
        }
        if let Some(p) = self.p_value {
            write!(f, "; p {p:.3e}")?;
        }
        if self.lower.is_some() || self.upper.is_some() {
            write!(f, "; bounds [{}, {}]", show(self.lower), show(self.upper))?;
        }
        write!(f, "; threshold {}", u.show(self.threshold))?;
        if !self.note.is_empty() {
            write!(f, "; {}", self.note)?;
        }
        Ok(())
    }
}

/// The judge's finding over one window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Judgement {
    pub verdict: Verdict,
    pub reason: Reason,
    /// The look this judgement spent (`None` when it held without testing).
    pub look: Option<u32>,
    /// Error probability spent at this look (`a_k`); the rollback side splits it over
    /// `rollback_signals`.
    pub alpha: f64,
    pub rollback_signals: u32,
    pub signals: Vec<SignalReport>,
}

impl Judgement {
    /// The report of one signal, if computed.
    pub fn signal(&self, signal: Signal) -> Option<&SignalReport> {
        self.signals.iter().find(|s| s.signal == signal)
    }
}

impl fmt::Display for Judgement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = match self.verdict {
            Verdict::Promote => "promote",
            Verdict::Rollback => "rollback",
            Verdict::Hold => "hold",
        };
        write!(f, "{verdict} ({})", self.reason)?;
        if let Some(look) = self.look {
            write!(
                f,
                " at look {look} (alpha {:.2e}, rollback side split over {} signals)",
                self.alpha, self.rollback_signals
            )?;
        }
        for s in &self.signals {
            write!(f, "\n  {s}")?;
        }
        Ok(())
    }
}

/// Error probability spent at look `k` (1-based) out of a total `alpha`:
/// `alpha * 6 / (pi^2 k^2)`, which sums to `alpha` over all looks.
pub fn alpha_at_look(alpha: f64, look: u32) -> f64 {
    let k = f64::from(look.max(1));
    alpha * 6.0 / (std::f64::consts::PI.powi(2) * k * k)
}

/// One-sided normal quantile: `z` with `P(Z > z) = a`.
fn z_upper(a: f64) -> f64 {
    -Normal::standard().inverse_cdf(a.clamp(1e-300, 0.5))
}

fn normal_sf(z: f64) -> f64 {
    Normal::standard().sf(z)
}

/// Wilson score interval `(low, high)` for `x` successes out of `n` at quantile `z`.
fn wilson(x: u64, n: u64, z: f64) -> (f64, f64) {
    let n_f = n as f64;
    let p = x as f64 / n_f;
    let z2 = z * z;
    let denom = 1.0 + z2 / n_f;
    let centre = (p + z2 / (2.0 * n_f)) / denom;
    let half = z * (p * (1.0 - p) / n_f + z2 / (4.0 * n_f * n_f)).sqrt() / denom;
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

/// Newcombe's hybrid score interval for `p1 - p2`: `(low, high)` at quantile `z` per side.
fn newcombe(x1: u64, n1: u64, x2: u64, n2: u64, z: f64) -> (f64, f64) {
    let p1 = x1 as f64 / n1 as f64;
    let p2 = x2 as f64 / n2 as f64;
    let (l1, u1) = wilson(x1, n1, z);
    let (l2, u2) = wilson(x2, n2, z);
    let d = p1 - p2;
    let low = d - ((p1 - l1).powi(2) + (u2 - p2).powi(2)).sqrt();
    let high = d + ((u1 - p1).powi(2) + (p2 - l2).powi(2)).sqrt();
    (low, high)
}

/// The shared decision rule (see the module documentation).
fn decide(
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

fn error_rate(
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

/// Bucket midpoints (seconds) with counts, for moments; the `+Inf` bucket is placed at the
/// mean its share of `_sum` implies (at least the last bound).
fn midpoints(h: &Histogram) -> Vec<(f64, f64)> {
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
fn moments_ms(h: &Histogram) -> Option<(f64, f64, u64)> {
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

fn latency_mean(
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

/// Quantile `q` of a histogram (ms) with an order-statistic interval at quantile `z`:
/// `(estimate, low, high)`; `None` parts are unbounded (in the `+Inf` bucket).
fn quantile_ms(h: &Histogram, q: f64, z: f64) -> (Option<f64>, f64, Option<f64>) {
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

fn latency_p95(
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

fn predictions(
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
fn flow_share(flows: FlowCounts, weight: Weight, alpha: f64) -> SignalReport {
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
fn enabled(upstream: &UpstreamConfig) -> (bool, bool) {
    (
        !upstream.latency.is_empty(),
        !upstream.predictions.is_empty(),
    )
}

/// Judges one window. Pure: the same input gives the same judgement.
pub fn judge(
    input: &JudgeInput<'_>,
    rollout: &RolloutConfig,
    upstream: &UpstreamConfig,
) -> Judgement {
    let t = &rollout.thresholds;
    let alpha = 1.0 - t.confidence;
    let (latency_on, predictions_on) = enabled(upstream);
    let mut signals = Vec::new();
    let hold = |reason, signals| Judgement {
        verdict: Verdict::Hold,
        reason,
        look: None,
        alpha: 0.0,
        rollback_signals: 0,
        signals,
    };

    // Missing metrics: never judged, never promoted.
    let mut missing = Vec::new();
    for (group, w) in [("stable", input.stable), ("canary", input.canary)] {
        for name in w.missing_series() {
            let needed = match name {
                "latency" => latency_on,
                "predictions" => predictions_on,
                _ => true,
            };
            if needed {
                missing.push(format!("{group}.{name}"));
            }
        }
    }
    if !missing.is_empty() {
        let mut r = SignalReport::new(
            Signal::Metrics,
            "series present in the backends' expositions",
            0,
            0,
            0.0,
        );
        r.verdict = SignalVerdict::Missing;
        r.note = format!("missing: {}", missing.join(", "));
        signals.push(r);
        return hold(Reason::MetricsMissing, signals);
    }
    let get = |s: &Series<u64>| s.present().copied().unwrap_or(0);
    let (n_s, n_c) = (get(&input.stable.requests), get(&input.canary.requests));
    let (x_s, x_c) = (get(&input.stable.errors), get(&input.canary.errors));

    let mut samples = SignalReport::new(
        Signal::Samples,
        "requests per group against min_samples",
        n_s,
        n_c,
        rollout.min_samples as f64,
    );
    samples.stable = Some(n_s as f64);
    samples.canary = Some(n_c as f64);
    if n_s < rollout.min_samples || n_c < rollout.min_samples {
        samples.verdict = SignalVerdict::Inconclusive;
        samples.note = "too few requests to judge yet".into();
        signals.push(samples);
        signals.push(flow_share(input.flows, input.weight, alpha));
        return hold(Reason::InsufficientSamples, signals);
    }
    samples.verdict = SignalVerdict::Ok;
    signals.push(samples);

    let look = input.look.max(1);
    let a_k = alpha_at_look(alpha, look);
    let rollback_signals = 1 + 2 * u32::from(latency_on) + u32::from(predictions_on);
    let a_r = a_k / f64::from(rollback_signals);
    let (z_r, z_p) = (z_upper(a_r), z_upper(a_k));

    signals.push(error_rate((n_s, x_s), (n_c, x_c), t, z_r, z_p));
    if latency_on {
        let (Some(hs), Some(hc)) = (
            input.stable.latency.present(),
            input.canary.latency.present(),
        ) else {
            unreachable!("missing latency was handled above");
        };
        signals.push(latency_mean(hs, hc, t, z_r, z_p));
        signals.push(latency_p95(hs, hc, t, a_r, a_k));
    }
    if predictions_on {
        let (Some(ps), Some(pc)) = (
            input.stable.predictions.present(),
            input.canary.predictions.present(),
        ) else {
            unreachable!("missing predictions were handled above");
        };
        signals.push(predictions(ps, pc, t, a_r, a_k));
    }
    signals.push(flow_share(input.flows, input.weight, alpha));

    let judged = |s: &&SignalReport| !matches!(s.signal, Signal::Samples | Signal::FlowShare);
    let (verdict, reason) = if let Some(fail) = signals
        .iter()
        .filter(judged)
        .find(|s| s.verdict == SignalVerdict::Fail)
    {
        (Verdict::Rollback, fail.signal.reason())
    } else if signals
        .iter()
        .filter(judged)
        .all(|s| s.verdict == SignalVerdict::Pass)
    {
        (Verdict::Promote, Reason::Healthy)
    } else {
        (Verdict::Hold, Reason::Inconclusive)
    };
    Judgement {
        verdict,
        reason,
        look: Some(look),
        alpha: a_k,
        rollback_signals,
        signals,
    }
}

/// Error spike over one poll: canary error rate above `error_spike` with at least
/// [`SPIKE_MIN_ERRORS`] errors. `None` when the poll has no canary requests or errors are
/// missing.
pub fn error_spike(canary_poll: &Window, thresholds: &Thresholds) -> Option<SignalReport> {
    let n = *canary_poll.requests.present()?;
    let x = (*canary_poll.errors.present()?).min(n);
    if n == 0 {
        return None;
    }
    let rate = x as f64 / n as f64;
    let mut r = SignalReport::new(
        Signal::ErrorSpike,
        "canary error rate over one poll",
        0,
        n,
        thresholds.error_spike,
    );
    r.canary = Some(rate);
    r.estimate = Some(rate);
    r.verdict = if rate > thresholds.error_spike && x >= SPIKE_MIN_ERRORS {
        SignalVerdict::Fail
    } else {
        SignalVerdict::Ok
    };
    r.note =
        format!("{x} errors of {n} requests (a spike needs at least {SPIKE_MIN_ERRORS} errors)");
    Some(r)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// Latency buckets (seconds) used by the tests and the simulation.
    pub(crate) const BOUNDS: [f64; 14] = [
        0.01, 0.025, 0.05, 0.075, 0.1, 0.125, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 1.0, 2.5,
    ];

    /// Histogram of `n` deterministic log-normal latencies (median `median_ms`, shape
    /// `sigma`), shifted by `shift_ms`.
    pub(crate) fn lognormal_histogram(
        n: u64,
        median_ms: f64,
        sigma: f64,
        shift_ms: f64,
    ) -> Histogram {
        let normal = Normal::standard();
        let mut h = Histogram::empty(BOUNDS.to_vec());
        for i in 0..n {
            let z = normal.inverse_cdf((i as f64 + 0.5) / n as f64);
            let v = (median_ms * (sigma * z).exp() + shift_ms) / 1000.0;
            for (b, c) in h.bounds.iter().zip(h.cumulative.iter_mut()) {
                if v <= *b {
                    *c += 1.0;
                }
            }
            h.count += 1.0;
            h.sum += v;
        }
        h
    }

    pub(crate) fn window(n: u64, errors: u64, latency: Histogram, positive_share: f64) -> Window {
        let positive = (n as f64 * positive_share).round() as u64;
        Window {
            requests: Series::Present(n),
            errors: Series::Present(errors),
            latency: Series::Present(latency),
            predictions: Series::Present(BTreeMap::from([
                ("positive".to_string(), positive),
                ("negative".to_string(), n - positive),
            ])),
        }
    }

    fn healthy(n: u64) -> Window {
        window(n, n / 100, lognormal_histogram(n, 100.0, 0.5, 0.0), 0.6)
    }

    fn run(stable: &Window, canary: &Window, look: u32) -> Judgement {
        let flows = FlowCounts {
            stable: 9000,
            canary: 1000,
        };
        let input = JudgeInput {
            stable,
            canary,
            flows,
            weight: Weight::from_basis_points(1000),
            look,
        };
        judge(
            &input,
            &RolloutConfig::default(),
            &UpstreamConfig::default(),
        )
    }

    #[test]
    fn alpha_spending_sums_to_alpha() {
        let total: f64 = (1..=1_000_000).map(|k| alpha_at_look(0.01, k)).sum();
        assert!((total - 0.01).abs() < 1e-7, "{total}");
        assert!(alpha_at_look(0.01, 2) < alpha_at_look(0.01, 1));
    }

    #[test]
    fn newcombe_matches_the_published_example() {
        // Newcombe (1998), example (a): 56/70 - 48/80, 95% interval 0.0524 to 0.3339.
        let (low, high) = newcombe(56, 70, 48, 80, 1.959_964);
        assert!((low - 0.0524).abs() < 5e-4, "{low}");
        assert!((high - 0.3339).abs() < 5e-4, "{high}");
        let (l, h) = wilson(0, 100, 1.96);
        assert!(l == 0.0 && (h - 0.037).abs() < 1e-3, "{h}");
    }

    #[test]
    fn healthy_canary_is_promoted_with_every_signal_passing() {
        let j = run(&healthy(20_000), &healthy(4000), 1);
        assert_eq!(j.verdict, Verdict::Promote, "{j}");
        assert_eq!(j.reason, Reason::Healthy);
        assert_eq!(j.look, Some(1));
        assert_eq!(j.rollback_signals, 4);
        for s in [
            Signal::ErrorRate,
            Signal::LatencyMean,
            Signal::LatencyP95,
            Signal::Predictions,
        ] {
            assert_eq!(j.signal(s).unwrap().verdict, SignalVerdict::Pass, "{j}");
        }
        assert_eq!(
            j.signal(Signal::FlowShare).unwrap().verdict,
            SignalVerdict::Ok
        );
    }

    #[test]
    fn higher_error_rate_rolls_back() {
        let mut canary = healthy(4000);
        canary.errors = Series::Present(240); // 6% against 1%
        let j = run(&healthy(20_000), &canary, 1);
        assert_eq!(
            (j.verdict, j.reason),
            (Verdict::Rollback, Reason::ErrorRate),
            "{j}"
        );
        let e = j.signal(Signal::ErrorRate).unwrap();
        assert!(e.lower.unwrap() > 0.0 && e.p_value.unwrap() < 1e-6, "{e}");
        assert!((e.canary.unwrap() - 0.06).abs() < 1e-12);
    }

    #[test]
    fn slower_canary_rolls_back_on_latency() {
        let canary = window(4000, 40, lognormal_histogram(4000, 100.0, 0.5, 100.0), 0.6);
        let j = run(&healthy(20_000), &canary, 1);
        assert_eq!(j.verdict, Verdict::Rollback, "{j}");
        assert_eq!(j.reason, Reason::LatencyMean, "{j}");
        assert_eq!(
            j.signal(Signal::LatencyP95).unwrap().verdict,
            SignalVerdict::Fail,
            "{j}"
        );
    }

    #[test]
    fn heavier_tail_fails_p95() {
        // Same median, much wider spread: p95 grows by far more than 50 ms.
        let canary = window(4000, 40, lognormal_histogram(4000, 100.0, 0.9, 0.0), 0.6);
        let j = run(&healthy(20_000), &canary, 1);
        let p95 = j.signal(Signal::LatencyP95).unwrap();
        assert_eq!(p95.verdict, SignalVerdict::Fail, "{j}");
        assert!(p95.estimate.unwrap() > 100.0, "{p95}");
        assert_eq!(j.verdict, Verdict::Rollback);
    }

    #[test]
    fn prediction_shift_rolls_back() {
        let canary = window(4000, 40, lognormal_histogram(4000, 100.0, 0.5, 0.0), 0.8);
        let j = run(&healthy(20_000), &canary, 1);
        assert_eq!(
            (j.verdict, j.reason),
            (Verdict::Rollback, Reason::PredictionShift),
            "{j}"
        );
        let p = j.signal(Signal::Predictions).unwrap();
        assert!((p.estimate.unwrap() - 0.2).abs() < 1e-3, "{p}");
        assert!(
            p.statistic.unwrap() > 100.0 && p.p_value.unwrap() < 1e-10,
            "{p}"
        );
    }

    #[test]
    fn holds_below_min_samples_without_spending_a_look() {
        let j = run(&healthy(20_000), &healthy(999), 3);
        assert_eq!(
            (j.verdict, j.reason),
            (Verdict::Hold, Reason::InsufficientSamples),
            "{j}"
        );
        assert_eq!(j.look, None);
        // Even an obviously bad canary is not judged below min_samples (the spike guards it).
        let mut bad = healthy(999);
        bad.errors = Series::Present(500);
        assert_eq!(run(&healthy(20_000), &bad, 1).verdict, Verdict::Hold);
    }

    #[test]
    fn missing_metrics_hold_and_are_named() {
        let mut canary = healthy(4000);
        canary.latency = Series::Missing;
        let j = run(&healthy(20_000), &canary, 1);
        assert_eq!(
            (j.verdict, j.reason),
            (Verdict::Hold, Reason::MetricsMissing),
            "{j}"
        );
        assert_eq!(j.signals[0].note, "missing: canary.latency");
        // A switched-off signal is not required.
        let upstream = UpstreamConfig {
            latency: String::new(),
            ..UpstreamConfig::default()
        };
        let stable = healthy(20_000);
        let input = JudgeInput {
            stable: &stable,
            canary: &canary,
            flows: FlowCounts::default(),
            weight: Weight::from_basis_points(1000),
            look: 1,
        };
        let j = judge(&input, &RolloutConfig::default(), &upstream);
        assert_eq!(j.verdict, Verdict::Promote, "{j}");
        assert_eq!(j.rollback_signals, 2);
        assert!(j.signal(Signal::LatencyMean).is_none());
    }

    #[test]
    fn small_difference_with_little_data_is_inconclusive() {
        let mut canary = healthy(1000);
        canary.errors = Series::Present(19); // 1.9% against 1%: not yet clear either way
        let j = run(&healthy(9000), &canary, 1);
        assert_eq!(
            (j.verdict, j.reason),
            (Verdict::Hold, Reason::Inconclusive),
            "{j}"
        );
        assert_eq!(
            j.signal(Signal::ErrorRate).unwrap().verdict,
            SignalVerdict::Inconclusive
        );
    }

    #[test]
    fn later_looks_need_stronger_evidence() {
        let mut canary = healthy(1000);
        canary.errors = Series::Present(30);
        let early = run(&healthy(9000), &canary, 1);
        let late = run(&healthy(9000), &canary, 50);
        let (e, l) = (
            early.signal(Signal::ErrorRate).unwrap(),
            late.signal(Signal::ErrorRate).unwrap(),
        );
        assert!(l.lower.unwrap() < e.lower.unwrap() && l.upper.unwrap() > e.upper.unwrap());
        assert!(late.alpha < early.alpha / 1000.0);
    }

    #[test]
    fn flow_share_far_from_weight_is_flagged_not_decisive() {
        let (s, c) = (healthy(20_000), healthy(4000));
        let input = JudgeInput {
            stable: &s,
            canary: &c,
            flows: FlowCounts {
                stable: 5000,
                canary: 5000,
            },
            weight: Weight::from_basis_points(1000),
            look: 1,
        };
        let j = judge(
            &input,
            &RolloutConfig::default(),
            &UpstreamConfig::default(),
        );
        let f = j.signal(Signal::FlowShare).unwrap();
        assert_eq!(f.verdict, SignalVerdict::Warn, "{f}");
        assert!((f.canary.unwrap() - 0.5).abs() < 1e-12);
        assert_eq!(j.verdict, Verdict::Promote);
    }

    #[test]
    fn spike_needs_rate_and_a_minimum_count() {
        let t = Thresholds::default();
        let poll = |n, x| Window {
            requests: Series::Present(n),
            errors: Series::Present(x),
            ..Window::missing()
        };
        assert_eq!(
            error_spike(&poll(50, 10), &t).unwrap().verdict,
            SignalVerdict::Fail
        );
        assert_eq!(
            error_spike(&poll(10, 3), &t).unwrap().verdict,
            SignalVerdict::Ok,
            "3 errors are too few"
        );
        assert_eq!(
            error_spike(&poll(100, 9), &t).unwrap().verdict,
            SignalVerdict::Ok
        );
        assert!(error_spike(&poll(0, 0), &t).is_none());
        assert!(error_spike(&Window::missing(), &t).is_none());
    }

    #[test]
    fn judgement_serializes_and_displays() {
        let mut canary = healthy(4000);
        canary.errors = Series::Present(240);
        let j = run(&healthy(20_000), &canary, 2);
        let json = serde_json::to_string(&j).unwrap();
        let back: Judgement = serde_json::from_str(&json).unwrap();
        assert_eq!(
            (back.verdict, back.reason, back.look),
            (j.verdict, j.reason, j.look)
        );
        let verdicts = |j: &Judgement| {
            j.signals
                .iter()
                .map(|s| (s.signal, s.verdict))
                .collect::<Vec<_>>()
        };
        assert_eq!(verdicts(&back), verdicts(&j));
        let text = j.to_string();
        assert!(
            text.starts_with("rollback (error_rate) at look 2"),
            "{text}"
        );
        assert!(text.contains("error_rate    FAIL"), "{text}");
        assert!(json.contains("\"reason\":\"error_rate\""), "{json}");
    }

    #[test]
    fn quantile_interpolation_matches_prometheus() {
        let h = Histogram {
            bounds: vec![0.1, 0.2],
            cumulative: vec![50.0, 100.0],
            count: 100.0,
            sum: 10.0,
        };
        // rank 95 of 100 lies 90% into the (0.1, 0.2] bucket.
        assert!((h.value_at_rank(95.0).unwrap() - 0.19).abs() < 1e-12);
        assert!((h.value_at_rank(25.0).unwrap() - 0.05).abs() < 1e-12);
        let over = Histogram {
            bounds: vec![0.1],
            cumulative: vec![50.0],
            count: 100.0,
            sum: 10.0,
        };
        assert!(over.value_at_rank(95.0).is_none());
    }
}
