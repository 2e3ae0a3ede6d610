//! Judge quality by simulation: many seeded rollouts of a synthetic service through the real
//! [`Rollout`] state machine and judge, with a simulated clock.
//!
//! Traffic: Poisson arrivals per poll, split by the canary weight; each request fails with
//! the group's error rate, has a log-normal latency (plus the group's shift) recorded in a
//! Prometheus-style histogram, and predicts one of two classes. Polls are drawn as counts
//! (binomial/multinomial), not request by request, so thousands of rollouts take seconds.

use std::collections::BTreeMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Binomial, Distribution, Poisson, StandardNormal};
use serde::{Deserialize, Serialize};
use statrs::distribution::{ContinuousCDF, Normal};

use canary_userspace::config::{RolloutConfig, UpstreamConfig};
use canary_userspace::domain::Weight;
use canary_userspace::judge::{FlowCounts, Reason};
use canary_userspace::rollout::{DecisionAction, Event, Phase, Poll, Rollout};
use canary_userspace::upstream::{Histogram, Series, Window};

/// How the canary differs from stable.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(super) struct Scenario {
    pub name: String,
    /// Added to the base error rate (0.02 = +2 percentage points).
    pub error_increase: f64,
    /// Added to every canary request's latency.
    pub latency_increase_ms: f64,
    /// Canary share of the first class (stable uses [`SimParams::first_class_share`]).
    pub canary_first_class_share: Option<f64>,
}

impl Scenario {
    /// A/A, +2 and +5 percentage points of errors, +50 ms, 60/40 -> 80/20 predictions.
    pub(super) fn standard() -> Vec<Scenario> {
        let s = |name: &str, e, l, p| Scenario {
            name: name.to_string(),
            error_increase: e,
            latency_increase_ms: l,
            canary_first_class_share: p,
        };
        vec![
            s("A/A (identical)", 0.0, 0.0, None),
            s("errors +2pp", 0.02, 0.0, None),
            s("errors +5pp", 0.05, 0.0, None),
            s("latency +50ms", 0.0, 50.0, None),
            s("predictions 60/40 -> 80/20", 0.0, 0.0, Some(0.8)),
        ]
    }
}

/// The simulated service and its rollout settings.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(super) struct SimParams {
    /// Total requests per second over both groups (one request per new flow).
    pub requests_per_second: f64,
    pub base_error_rate: f64,
    pub latency_median_ms: f64,
    /// Shape of the log-normal latency (standard deviation of its logarithm).
    pub latency_sigma: f64,
    pub first_class_share: f64,
    /// Histogram bucket bounds, seconds.
    pub buckets: Vec<f64>,
    pub rollout: RolloutConfig,
    pub upstream: UpstreamConfig,
    /// A rollout still running after this long counts as unfinished.
    pub max_seconds: u64,
}

impl Default for SimParams {
    fn default() -> Self {
        SimParams {
            requests_per_second: 200.0,
            base_error_rate: 0.01,
            latency_median_ms: 100.0,
            latency_sigma: 0.5,
            first_class_share: 0.6,
            buckets: vec![
                0.01, 0.025, 0.05, 0.075, 0.1, 0.125, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0,
                2.5, 5.0,
            ],
            rollout: RolloutConfig::default(),
            upstream: UpstreamConfig::default(),
            max_seconds: 3600,
        }
    }
}

/// How one simulated rollout ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(super) struct RolloutResult {
    pub outcome: Phase,
    pub reason: Option<Reason>,
    /// Canary weight when it was rolled back (before the rollback).
    pub rolled_back_from: Option<Weight>,
    pub seconds: f64,
    pub canary_requests: u64,
    pub total_requests: u64,
}

/// Summary of a scenario over many rollouts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(super) struct ScenarioReport {
    pub scenario: String,
    pub rollouts: usize,
    pub promoted: usize,
    pub rolled_back: usize,
    pub unfinished: usize,
    /// Rolled back / rollouts (for A/A: the false-rollback rate).
    pub rollback_rate: f64,
    /// Rolled back while the canary weight was below 50 %.
    pub rolled_back_before_half_rate: f64,
    /// Canary requests served until the rollback: median and 90th percentile.
    pub canary_requests_to_rollback_median: Option<f64>,
    pub canary_requests_to_rollback_p90: Option<f64>,
    /// Seconds from the first step to 100 %: median and 90th percentile.
    pub seconds_to_promotion_median: Option<f64>,
    pub seconds_to_promotion_p90: Option<f64>,
    /// Rollbacks per reason.
    pub rollback_reasons: BTreeMap<String, usize>,
}

/// Per-group traffic model with precomputed bucket probabilities and moments.
struct GroupModel {
    error_rate: f64,
    first_class_share: f64,
    /// Probability of each bucket (last: `+Inf`), conditional on the previous ones not taken
    /// (for sequential binomial draws).
    conditional: Vec<f64>,
    /// Mean and standard deviation of latency (seconds) within each bucket.
    bucket_mean: Vec<f64>,
    bucket_sd: Vec<f64>,
}

impl GroupModel {
    #[allow(
        clippy::many_single_char_names,
        reason = "p, k, z, v, b are the usual statistical names"
    )]
    fn new(p: &SimParams, error_rate: f64, shift_ms: f64, first_class_share: f64) -> GroupModel {
        // Moments per bucket from a fine deterministic quantile grid of the distribution.
        const GRID: usize = 20_000;
        let normal = Normal::standard();
        let k = p.buckets.len() + 1;
        let mut count = vec![0.0; k];
        let mut sum = vec![0.0; k];
        let mut sum2 = vec![0.0; k];
        for i in 0..GRID {
            let z = normal.inverse_cdf((i as f64 + 0.5) / GRID as f64);
            let v = (p.latency_median_ms * (p.latency_sigma * z).exp() + shift_ms) / 1000.0;
            let b = p
                .buckets
                .iter()
                .position(|bound| v <= *bound)
                .unwrap_or(k - 1);
            count[b] += 1.0;
            sum[b] += v;
            sum2[b] += v * v;
        }
        let mut conditional = Vec::with_capacity(k);
        let mut left = GRID as f64;
        for &c in &count {
            conditional.push(if left > 0.0 { (c / left).min(1.0) } else { 0.0 });
            left -= c;
        }
        let bucket_mean: Vec<f64> = (0..k)
            .map(|b| {
                if count[b] > 0.0 {
                    sum[b] / count[b]
                } else {
                    0.0
                }
            })
            .collect();
        let bucket_sd = (0..k)
            .map(|b| {
                if count[b] > 0.0 {
                    (sum2[b] / count[b] - bucket_mean[b].powi(2))
                        .max(0.0)
                        .sqrt()
                } else {
                    0.0
                }
            })
            .collect();
        GroupModel {
            error_rate,
            first_class_share,
            conditional,
            bucket_mean,
            bucket_sd,
        }
    }

    fn binomial(rng: &mut StdRng, n: u64, p: f64) -> u64 {
        if n == 0 || p <= 0.0 {
            0
        } else if p >= 1.0 {
            n
        } else {
            Binomial::new(n, p).expect("valid binomial").sample(rng)
        }
    }

    /// One poll's window for `n` requests.
    fn window(&self, rng: &mut StdRng, n: u64, bounds: &[f64]) -> Window {
        let errors = Self::binomial(rng, n, self.error_rate);
        let first = Self::binomial(rng, n, self.first_class_share);
        let mut left = n;
        let mut h = Histogram::empty(bounds.to_vec());
        let mut cumulative = 0u64;
        for (b, &p) in self.conditional.iter().enumerate() {
            let c = if b + 1 == self.conditional.len() {
                left
            } else {
                Self::binomial(rng, left, p)
            };
            left -= c;
            cumulative += c;
            if b < bounds.len() {
                h.cumulative[b] = cumulative as f64;
            }
            if c > 0 {
                let noise: f64 = rng.sample(StandardNormal);
                h.sum += (c as f64 * self.bucket_mean[b]
                    + (c as f64).sqrt() * self.bucket_sd[b] * noise)
                    .max(0.0);
            }
        }
        h.count = n as f64;
        Window {
            requests: Series::Present(n),
            errors: Series::Present(errors),
            latency: Series::Present(h),
            predictions: Series::Present(BTreeMap::from([
                ("first".to_string(), first),
                ("second".to_string(), n - first),
            ])),
        }
    }
}

fn poisson(rng: &mut StdRng, mean: f64) -> u64 {
    if mean <= 0.0 {
        0
    } else {
        Poisson::new(mean).expect("positive mean").sample(rng) as u64
    }
}

/// Runs one rollout from the first step to its end (or `max_seconds`).
#[cfg(test)]
pub(super) fn simulate_rollout(
    scenario: &Scenario,
    params: &SimParams,
    seed: u64,
) -> RolloutResult {
    let (stable, canary) = models(scenario, params);
    run_rollout(&stable, &canary, params, seed)
}

fn models(scenario: &Scenario, params: &SimParams) -> (GroupModel, GroupModel) {
    let stable = GroupModel::new(
        params,
        params.base_error_rate,
        0.0,
        params.first_class_share,
    );
    let canary = GroupModel::new(
        params,
        (params.base_error_rate + scenario.error_increase).min(1.0),
        scenario.latency_increase_ms,
        scenario
            .canary_first_class_share
            .unwrap_or(params.first_class_share),
    );
    (stable, canary)
}

fn run_rollout(
    stable: &GroupModel,
    canary: &GroupModel,
    params: &SimParams,
    seed: u64,
) -> RolloutResult {
    let mut rng = StdRng::seed_from_u64(seed);
    let cfg = &params.rollout;
    let poll_ms = cfg.poll_interval.as_millis() as u64;
    let (mut rollout, _) = Rollout::new(0, vec!["canary@sim".into()], cfg);
    rollout.on_event(0, Event::WarmupDone, cfg, &params.upstream);
    let mut t = 0;
    let (mut canary_requests, mut total_requests) = (0, 0);
    let per_poll = params.requests_per_second * poll_ms as f64 / 1000.0;
    while t < params.max_seconds * 1000 {
        t += poll_ms;
        let n = poisson(&mut rng, per_poll);
        let n_canary = GroupModel::binomial(&mut rng, n, rollout.weight().ratio());
        let n_stable = n - n_canary;
        canary_requests += n_canary;
        total_requests += n;
        let poll = Poll {
            stable: stable.window(&mut rng, n_stable, &params.buckets),
            canary: canary.window(&mut rng, n_canary, &params.buckets),
            flows: FlowCounts {
                stable: n_stable,
                canary: n_canary,
            },
            backends: Vec::new(),
        };
        let mut out = rollout.on_event(t, Event::Poll(poll), cfg, &params.upstream);
        if rollout.phase() == Phase::Stepping && rollout.evaluation_due(t, cfg) {
            out = rollout.on_event(t, Event::Evaluate, cfg, &params.upstream);
        }
        if matches!(rollout.phase(), Phase::Promoted | Phase::RolledBack) {
            let d = out.decision.expect("a phase change carries a decision");
            return RolloutResult {
                outcome: rollout.phase(),
                reason: Some(d.reason),
                rolled_back_from: (d.action == DecisionAction::Rollback).then_some(d.from),
                seconds: t as f64 / 1000.0,
                canary_requests,
                total_requests,
            };
        }
    }
    RolloutResult {
        outcome: rollout.phase(),
        reason: None,
        rolled_back_from: None,
        seconds: t as f64 / 1000.0,
        canary_requests,
        total_requests,
    }
}

fn quantile(values: &mut [f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let i = ((values.len() as f64 - 1.0) * q).round() as usize;
    Some(values[i])
}

/// Runs `rollouts` seeded rollouts of one scenario and summarises them. Rollout `i` uses
/// seed `seed + i`, so results are reproducible and scenarios share their traffic draws.
pub(super) fn simulate(
    scenario: &Scenario,
    params: &SimParams,
    rollouts: usize,
    seed: u64,
) -> ScenarioReport {
    let (stable, canary) = models(scenario, params);
    let results: Vec<RolloutResult> = (0..rollouts)
        .map(|i| run_rollout(&stable, &canary, params, seed.wrapping_add(i as u64)))
        .collect();
    let count = |phase| results.iter().filter(|r| r.outcome == phase).count();
    let (promoted, rolled_back) = (count(Phase::Promoted), count(Phase::RolledBack));
    let before_half = results
        .iter()
        .filter(|r| r.rolled_back_from.is_some_and(|w| w.basis_points() < 5000))
        .count();
    let mut to_rollback: Vec<f64> = results
        .iter()
        .filter(|r| r.outcome == Phase::RolledBack)
        .map(|r| r.canary_requests as f64)
        .collect();
    let mut to_promotion: Vec<f64> = results
        .iter()
        .filter(|r| r.outcome == Phase::Promoted)
        .map(|r| r.seconds)
        .collect();
    let mut reasons = BTreeMap::new();
    for r in results.iter().filter(|r| r.outcome == Phase::RolledBack) {
        *reasons
            .entry(r.reason.map_or("unknown", Reason::as_str).to_string())
            .or_insert(0) += 1;
    }
    let n = rollouts.max(1) as f64;
    ScenarioReport {
        scenario: scenario.name.clone(),
        rollouts,
        promoted,
        rolled_back,
        unfinished: rollouts - promoted - rolled_back,
        rollback_rate: rolled_back as f64 / n,
        rolled_back_before_half_rate: before_half as f64 / n,
        canary_requests_to_rollback_median: quantile(&mut to_rollback, 0.5),
        canary_requests_to_rollback_p90: quantile(&mut to_rollback, 0.9),
        seconds_to_promotion_median: quantile(&mut to_promotion, 0.5),
        seconds_to_promotion_p90: quantile(&mut to_promotion, 0.9),
        rollback_reasons: reasons,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aa_false_rollback_rate_is_low() {
        let aa = &Scenario::standard()[0];
        let r = simulate(aa, &SimParams::default(), 300, 7);
        assert!(r.rollback_rate <= 0.02, "{r:?}");
        assert!(r.promoted >= 290, "{r:?}");
        // Minimum possible: 4 judged steps of one 15 s interval each.
        assert!(r.seconds_to_promotion_median.unwrap() >= 60.0, "{r:?}");
    }

    #[test]
    fn clear_faults_are_caught_before_half() {
        let params = SimParams::default();
        for scenario in &Scenario::standard()[1..] {
            let r = simulate(scenario, &params, 100, 11);
            assert!(r.rolled_back_before_half_rate >= 0.9, "{r:?}");
        }
    }

    #[test]
    fn simulation_is_reproducible() {
        let s = &Scenario::standard()[1];
        let p = SimParams::default();
        assert_eq!(simulate_rollout(s, &p, 3), simulate_rollout(s, &p, 3));
    }
}
