//! The judge: canary against stable over one step's window, per signal, with an explanation.
//!
//! # Statistical method
//!
//! Each signal is a difference `canary - stable` with an absolute threshold `t` and, when set, a
//! ratio `r` (error rate; mean and p95 latency; for predictions the total variation distance):
//!
//! * error rate: Newcombe's hybrid score interval (Wilson per group) on effective counts;
//! * mean latency: Welch normal bounds, means from `_sum / _count`, variances from bucket
//!   midpoints;
//! * p95 latency: distribution-free order-statistic intervals per group, read through the
//!   bucket-interpolated quantile (as Prometheus estimates it), combined by MOVER;
//! * predictions: a sequential chi-square test over pooled classes and a bias-corrected
//!   bound on the total variation distance (`predictions.rs`);
//! * a ratio's upper bound: MOVER-R from the same per-group intervals.
//!
//! Every bound is a confidence sequence ([`sequential`]): valid at every sample size at once, so
//! the judge looks after every poll. Variances are multiplied by design effects estimated from
//! backend x poll-run units ([`clusters`]), so correlated requests widen the bounds.
//!
//! Budget, `a = 1 - confidence` per rollout: the rollback side gives [`sequential::SPIKE_SHARE`]
//! to the error spike ([`spike`]) and the rest to the step windows
//! ([`sequential::window_share`]), split over the signals that can roll back (Bonferroni): P(any
//! rollback of a canary that is no worse on every signal) <= `a`. Promotion needs every signal
//! to pass at level `a` (intersection-union): P(promoting a canary worse than a threshold) <=
//! `a`.
//!
//! Decision per signal: **pass** when the upper bound is below `t` (and the ratio's below `r`);
//! **fail** when the lower bound at the rollback level is above 0 and the estimate exceeds half
//! the allowed difference (`min(t, (r - 1) stable)`), and it does not pass. Any fail rolls back
//! (at any sample size, once each group had [`MIN_FLOWS`] new flows); all pass with
//! `min_samples` in each group promotes; otherwise hold. Missing metrics hold; a signal without
//! data holds with [`Reason::NoData`].

use serde::{Deserialize, Serialize};

use crate::config::{RolloutConfig, Thresholds, UpstreamConfig};
use crate::domain::Weight;
use crate::upstream::{Series, Window};

pub mod clusters;
mod predictions;
mod report;
pub mod sequential;
mod signals;
pub mod spike;
mod stats;
#[cfg(test)]
pub(crate) mod tests;

use clusters::{above, design_effect, errors_of, latency_of};
pub use clusters::{Batches, DesignEffect, Units};
use predictions::predictions;
pub use report::{Judgement, Reason, Signal, SignalReport, SignalVerdict, Verdict};
pub use sequential::{spike_level, Levels};
use signals::{enabled, error_rate, flow_share, latency_mean, latency_p95, Look, Tolerance};
pub use spike::{error_spike, PollErrors, SPIKE_POLLS};
use stats::moments_ms;

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
    /// Each group's units (backend x run of polls), for the design effects.
    pub units: Units<'a>,
    pub flows: FlowCounts,
    /// The configured canary weight over the window.
    pub weight: Weight,
    /// 1-based index of this step window among the rollout's windows.
    pub window: u32,
}

/// Steps below 100 %: the windows the budget is planned for.
pub fn judged_steps(rollout: &RolloutConfig) -> u32 {
    rollout
        .steps
        .iter()
        .filter(|w| **w < Weight::FULL)
        .count()
        .try_into()
        .unwrap_or(u32::MAX)
}

/// The tolerances of the error rate and of latency (mean and p95).
fn tolerances(t: &Thresholds) -> (Tolerance, Tolerance) {
    let ratio = |r: f64| (r > 0.0).then_some(r);
    (
        Tolerance {
            absolute: t.max_error_rate_increase,
            ratio: ratio(t.max_error_rate_ratio),
        },
        Tolerance {
            absolute: t.max_latency_increase_ms,
            ratio: ratio(t.max_latency_ratio),
        },
    )
}

/// Each group needs this many new flows in the window before the judge rolls back (when the
/// kernel counted flows): with fewer, the canary's numbers may be a few clients' own.
pub const MIN_FLOWS: u64 = 50;

/// Whether the window holds enough flows per group to tell the canary from its clients.
pub fn enough_flows(flows: FlowCounts) -> bool {
    (flows.stable == 0 && flows.canary == 0)
        || (flows.stable >= MIN_FLOWS && flows.canary >= MIN_FLOWS)
}

/// Design effects `[stable, canary]` of the error rate, their degrees of freedom capped by
/// each group's new flows.
pub fn error_design_effect(
    units: &Units<'_>,
    flows: FlowCounts,
    requests: [f64; 2],
) -> [DesignEffect; 2] {
    cap(
        design_effect(&units.segments(errors_of, |_, p| p * (1.0 - p))),
        flows,
        requests,
    )
}

/// The design effect of errors for the error spike test: stable's alone (its current and
/// previous window's units). Under the spike's null hypothesis the canary's errors behave as
/// stable's; the canary's own units hold the very change the test looks for (a canary that
/// starts failing mid-step has runs of polls before and after), which would read as clustering
/// and blunt the test exactly when it must act.
pub fn spike_design_effect(units: &Units<'_>, flows: FlowCounts, requests: f64) -> DesignEffect {
    let stable: Vec<_> = units
        .segments(errors_of, |_, p| p * (1.0 - p))
        .into_iter()
        .filter(|s| s.group == 0)
        .collect();
    design_effect(&stable)[0].capped_by_flows(flows.stable, requests)
}

fn cap(d: [DesignEffect; 2], flows: FlowCounts, requests: [f64; 2]) -> [DesignEffect; 2] {
    [
        d[0].capped_by_flows(flows.stable, requests[0]),
        d[1].capped_by_flows(flows.canary, requests[1]),
    ]
}

fn latency_design_effects(
    units: &Units<'_>,
    flows: FlowCounts,
    stable: &crate::upstream::Histogram,
    canary: &crate::upstream::Histogram,
) -> ([DesignEffect; 2], [DesignEffect; 2]) {
    // Mean: residuals of the per-unit sums against the per-request variance from buckets.
    let var = [stable, canary].map(|h| moments_ms(h).map_or(0.0, |m| m.1));
    let mean = design_effect(&units.segments(latency_of, |g, _| var[g]));
    // p95: the share of requests above the bucket bound nearest stable's p95.
    let p95 = stable
        .value_at_rank(0.95 * stable.count)
        .and_then(|v| {
            stable
                .bounds
                .iter()
                .copied()
                .min_by(|a, b| (a - v).abs().total_cmp(&(b - v).abs()))
        })
        .map_or([DesignEffect::NONE; 2], |le| {
            design_effect(&units.segments(above(le), |_, q| q * (1.0 - q)))
        });
    let counts = [stable.count, canary.count];
    (cap(mean, flows, counts), cap(p95, flows, counts))
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
    let rollback_signals = 1 + 2 * u32::from(latency_on) + u32::from(predictions_on);
    let levels = Levels::new(alpha, input.window, judged_steps(rollout), rollback_signals);
    let judgement = |verdict, reason, signals| Judgement {
        verdict,
        reason,
        window: input.window,
        rollback_level: levels.rollback,
        promote_level: levels.promote,
        rollback_signals,
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
        return judgement(Verdict::Hold, Reason::MetricsMissing, signals);
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
    let enough = n_s >= rollout.min_samples && n_c >= rollout.min_samples;
    if enough {
        samples.verdict = SignalVerdict::Ok;
    } else {
        samples.verdict = SignalVerdict::Inconclusive;
        samples.note =
            "too few requests to promote yet; strong evidence of harm still rolls back".into();
    }
    signals.push(samples);
    if n_s == 0 || n_c == 0 {
        signals.push(flow_share(input.flows, input.weight, alpha));
        return judgement(Verdict::Hold, Reason::InsufficientSamples, signals);
    }

    let look = Look {
        rollback: levels.rollback,
        promote: levels.promote,
        n_ref: rollout.min_samples.max(1) as f64,
    };
    let (error_tolerance, latency_tolerance) = tolerances(t);
    signals.push(error_rate(
        (n_s, x_s),
        (n_c, x_c),
        error_design_effect(&input.units, input.flows, [n_s as f64, n_c as f64]),
        error_tolerance,
        look,
    ));
    if latency_on {
        let (Some(hs), Some(hc)) = (
            input.stable.latency.present(),
            input.canary.latency.present(),
        ) else {
            unreachable!("missing latency was handled above");
        };
        let (mean_deff, p95_deff) = latency_design_effects(&input.units, input.flows, hs, hc);
        signals.push(latency_mean(hs, hc, mean_deff, latency_tolerance, look));
        signals.push(latency_p95(hs, hc, p95_deff, latency_tolerance, look));
    }
    if predictions_on {
        let (Some(ps), Some(pc)) = (
            input.stable.predictions.present(),
            input.canary.predictions.present(),
        ) else {
            unreachable!("missing predictions were handled above");
        };
        signals.push(predictions(
            ps,
            pc,
            &input.units,
            [input.flows.stable, input.flows.canary],
            t.max_prediction_shift,
            look,
        ));
    }
    signals.push(flow_share(input.flows, input.weight, alpha));
    for s in &mut signals {
        s.dry_run = rollout.dry_run.contains(&s.signal);
    }

    // Dry-run signals are judged and reported but take no part in the verdict.
    let judged =
        |s: &&SignalReport| !matches!(s.signal, Signal::Samples | Signal::FlowShare) && !s.dry_run;
    let fail = signals
        .iter()
        .filter(judged)
        .find(|s| s.verdict == SignalVerdict::Fail);
    let independent = enough_flows(input.flows);
    if fail.is_some() && !independent {
        if let Some(samples) = signals.iter_mut().find(|s| s.signal == Signal::Samples) {
            samples.note = format!(
                "fewer than {MIN_FLOWS} new flows in a group: too few clients to tell the canary from its clients; no rollback yet"
            );
        }
    }
    let fail = signals
        .iter()
        .filter(judged)
        .find(|s| s.verdict == SignalVerdict::Fail)
        .filter(|_| independent);
    let (verdict, reason) = if let Some(fail) = fail {
        (Verdict::Rollback, fail.signal.reason())
    } else if !enough {
        (Verdict::Hold, Reason::InsufficientSamples)
    } else if signals
        .iter()
        .filter(judged)
        .any(|s| s.verdict == SignalVerdict::NoData)
    {
        (Verdict::Hold, Reason::NoData)
    } else if signals
        .iter()
        .filter(judged)
        .all(|s| s.verdict == SignalVerdict::Pass)
    {
        (Verdict::Promote, Reason::Healthy)
    } else {
        (Verdict::Hold, Reason::Inconclusive)
    };
    judgement(verdict, reason, signals)
}
