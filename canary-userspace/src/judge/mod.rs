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

use serde::{Deserialize, Serialize};

use crate::config::{RolloutConfig, Thresholds, UpstreamConfig};
use crate::domain::Weight;
use crate::upstream::{Series, Window};

mod report;
mod signals;
mod stats;
#[cfg(test)]
pub(crate) mod tests;

pub use report::{Judgement, Reason, Signal, SignalReport, SignalVerdict, Verdict};
use signals::{enabled, error_rate, flow_share, latency_mean, latency_p95, predictions};
pub use stats::alpha_at_look;
use stats::z_upper;

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
    for s in &mut signals {
        s.dry_run = rollout.dry_run.contains(&s.signal);
    }

    // Dry-run signals are judged and reported but take no part in the verdict.
    let judged =
        |s: &&SignalReport| !matches!(s.signal, Signal::Samples | Signal::FlowShare) && !s.dry_run;
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
