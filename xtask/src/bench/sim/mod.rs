//! Judge quality by simulation: many seeded rollouts of a synthetic service through the
//! daemon's real path from Prometheus text to decision, with a simulated clock.
//!
//! Every second, clients' flows send requests to backends ([`traffic`]); every backend keeps
//! cumulative counters and, at each poll, exposes them as Prometheus text. The text goes the
//! way the controller takes it: [`snapshot_of`] (the upstream parser) with the service's `[services.upstream]`,
//! [`Snapshot::delta_since`] the backend's baseline, [`Snapshot::advance`], the group sums of
//! [`aggregate`] and the per-backend windows, into the real [`Rollout`] and judge (a poll, then
//! an evaluation when due). Scrapes fail now and then (a missing snapshot: the next one covers
//! both polls); a backend may restart (its counters start again from zero, its scrape fails
//! once).

use std::collections::BTreeMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use canary_userspace::config::{RolloutConfig, UpstreamConfig};
use canary_userspace::domain::{Group, Weight};
use canary_userspace::judge::{FlowCounts, Reason};
use canary_userspace::rollout::{BackendPoll, DecisionAction, Event, Phase, Poll, Rollout};
use canary_userspace::upstream::{
    aggregate, snapshot_of, ScrapeProblem, ScrapeReason, Snapshot, Window,
};

mod traffic;

use traffic::{Behaviour, Classes, Service, TrafficModel};

/// Which predictions a scenario's model makes.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub(super) enum ClassModel {
    /// Two classes, 60/40.
    Two,
    /// Twenty classes with Zipf shares.
    Twenty,
}

/// One simulated situation: the service's traffic and how the canary differs.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(super) struct Scenario {
    pub name: String,
    pub base_error_rate: f64,
    /// Added to the canary's error rate (0.02 = +2 percentage points).
    pub error_increase: f64,
    /// Added to every canary request's latency.
    pub latency_increase_ms: f64,
    /// Total variation distance the canary's predictions move: with two classes toward the
    /// first (0.2: 60/40 -> 80/20), with twenty classes toward uniform.
    pub prediction_shift: f64,
    pub classes: ClassModel,
    /// Requests per flow (1: a new connection per request) and the intra-flow correlation.
    pub flow_requests: u32,
    pub flow_correlation: f64,
    /// A backend restarts once, at a random time in the first 100 s.
    pub restart: bool,
    /// The canary's fault starts only when its weight reaches this (percent).
    pub fault_from_percent: Option<f64>,
    /// `max_error_rate_ratio` for this scenario (0: the default, off).
    pub max_error_rate_ratio: f64,
}

impl Scenario {
    fn base(name: &str) -> Scenario {
        Scenario {
            name: name.to_string(),
            base_error_rate: 0.01,
            error_increase: 0.0,
            latency_increase_ms: 0.0,
            prediction_shift: 0.0,
            classes: ClassModel::Two,
            flow_requests: 1,
            flow_correlation: 0.0,
            restart: false,
            fault_from_percent: None,
            max_error_rate_ratio: 0.0,
        }
    }

    /// Identical versions (A/A): at several base error rates, with keep-alive flows whose
    /// requests are correlated, with a backend restart; and the relative threshold's cost at a
    /// low base rate.
    pub(super) fn identical() -> Vec<Scenario> {
        let mut out = Vec::new();
        for rate in [0.001, 0.01, 0.03, 0.05, 0.10] {
            out.push(Scenario {
                base_error_rate: rate,
                ..Scenario::base(&format!("A/A, {} % errors", rate * 100.0))
            });
        }
        for (m, rho) in [(20, 0.05), (20, 0.2), (50, 0.05), (50, 0.2)] {
            out.push(Scenario {
                flow_requests: m,
                flow_correlation: rho,
                ..Scenario::base(&format!(
                    "A/A, keep-alive flows of {m} requests, correlation {rho}"
                ))
            });
        }
        out.push(Scenario {
            restart: true,
            ..Scenario::base("A/A, a backend restarts mid-step")
        });
        out.push(Scenario {
            base_error_rate: 0.001,
            max_error_rate_ratio: 2.0,
            ..Scenario::base("A/A, 0.1 % errors, max_error_rate_ratio = 2")
        });
        out.push(Scenario {
            classes: ClassModel::Twenty,
            ..Scenario::base("A/A, 20 prediction classes")
        });
        out
    }

    /// Faulty canaries.
    pub(super) fn faults() -> Vec<Scenario> {
        vec![
            Scenario {
                error_increase: 0.02,
                ..Scenario::base("errors +2 pp (1 % -> 3 %)")
            },
            Scenario {
                error_increase: 0.05,
                ..Scenario::base("errors +5 pp (1 % -> 6 %)")
            },
            Scenario {
                base_error_rate: 0.001,
                error_increase: 0.009,
                max_error_rate_ratio: 2.0,
                ..Scenario::base("errors 10x at 0.1 % (max_error_rate_ratio = 2)")
            },
            Scenario {
                latency_increase_ms: 50.0,
                ..Scenario::base("latency +50 ms")
            },
            Scenario {
                prediction_shift: 0.2,
                ..Scenario::base("predictions 60/40 -> 80/20")
            },
            Scenario {
                classes: ClassModel::Twenty,
                prediction_shift: 0.2,
                ..Scenario::base("20 classes (Zipf), distance 0.2 toward uniform")
            },
            Scenario {
                error_increase: 0.05,
                fault_from_percent: Some(50.0),
                ..Scenario::base("errors +5 pp from 50 % on (late fault)")
            },
        ]
    }

    /// Detection against effect size: errors (percentage points over 1 %) and latency (ms).
    pub(super) fn power_curve() -> (Vec<Scenario>, Vec<Scenario>) {
        let errors = [0.005, 0.01, 0.015, 0.02, 0.03, 0.05]
            .iter()
            .map(|&e| Scenario {
                error_increase: e,
                ..Scenario::base(&format!("errors +{} pp", e * 100.0))
            })
            .collect();
        let latency = [10.0, 20.0, 30.0, 40.0, 50.0, 75.0]
            .iter()
            .map(|&l| Scenario {
                latency_increase_ms: l,
                ..Scenario::base(&format!("latency +{l} ms"))
            })
            .collect();
        (errors, latency)
    }

    fn classes(&self) -> Classes {
        match self.classes {
            ClassModel::Two => Classes::two(0.6),
            ClassModel::Twenty => Classes::zipf(20),
        }
    }

    /// The canary's departure from stable while the fault is on.
    fn fault(&self) -> Behaviour {
        let base = self.base_error_rate;
        // A mixture with the target: its distance is the mixing share times the distance
        // to the target.
        let classes = self.classes();
        let (class_shift, shifted_to) = match self.classes {
            _ if self.prediction_shift == 0.0 => (0.0, None),
            ClassModel::Two => (self.prediction_shift / (1.0 - classes.shares[0]), Some(0)),
            ClassModel::Twenty => (self.prediction_shift / classes.distance_to_uniform(), None),
        };
        Behaviour {
            extra_error: if self.error_increase > 0.0 {
                self.error_increase / (1.0 - base)
            } else {
                0.0
            },
            latency_shift_ms: self.latency_increase_ms,
            class_shift,
            shifted_to,
        }
    }
}

/// The simulated service and its rollout settings.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(super) struct SimParams {
    /// Total requests per second over both groups.
    pub requests_per_second: f64,
    pub latency_median_ms: f64,
    /// Shape of the log-normal latency (standard deviation of its logarithm).
    pub latency_sigma: f64,
    /// Requests a keep-alive flow sends per second.
    pub flow_rate: u32,
    /// Backends per group: `[stable, canary]`.
    pub backends: [usize; 2],
    /// Probability that one backend's scrape fails at one poll.
    pub scrape_failure: f64,
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
            latency_median_ms: 100.0,
            latency_sigma: 0.5,
            flow_rate: 10,
            backends: [4, 2],
            scrape_failure: 0.002,
            buckets: vec![
                0.01, 0.025, 0.05, 0.075, 0.1, 0.125, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0,
                2.5, 5.0,
            ],
            rollout: RolloutConfig::default(),
            upstream: UpstreamConfig::default(),
            max_seconds: 1800,
        }
    }
}

impl SimParams {
    /// The least time a healthy promotion can take at this traffic: per step below 100 %, the
    /// larger of `interval` and the time for both groups to reach `min_samples`.
    pub(super) fn least_promotion_seconds(&self) -> f64 {
        let interval = self.rollout.interval.as_secs_f64();
        self.rollout
            .steps
            .iter()
            .filter(|w| **w < Weight::FULL)
            .map(|w| {
                let share = w.ratio().min(1.0 - w.ratio());
                let samples = self.rollout.min_samples as f64 / (self.requests_per_second * share);
                interval.max(samples)
            })
            .sum()
    }
}

/// How one simulated rollout ended.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(super) struct RolloutResult {
    pub outcome: Phase,
    pub reason: Option<Reason>,
    /// Canary weight when it was rolled back (before the rollback).
    pub rolled_back_from: Option<Weight>,
    pub seconds: f64,
    pub canary_requests: u64,
}

/// A rate with its 95 % Wilson interval.
#[allow(clippy::struct_field_names)]
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub(super) struct Rate {
    pub count: usize,
    pub of: usize,
    pub rate: f64,
    pub low: f64,
    pub high: f64,
}

impl Rate {
    pub(super) fn new(count: usize, of: usize) -> Rate {
        let n = of.max(1) as f64;
        let p = count as f64 / n;
        let z: f64 = 1.959_964;
        let denom = 1.0 + z * z / n;
        let centre = (p + z * z / (2.0 * n)) / denom;
        let half = z * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt() / denom;
        Rate {
            count,
            of,
            rate: p,
            low: (centre - half).max(0.0),
            high: (centre + half).min(1.0),
        }
    }

    /// `0.4 % (0.1 - 1.0)`.
    pub(super) fn show(&self) -> String {
        let digits = usize::from(self.high < 0.1);
        format!(
            "{:.*} % ({:.*} - {:.*})",
            digits,
            100.0 * self.rate,
            digits,
            100.0 * self.low,
            digits,
            100.0 * self.high
        )
    }
}

/// Summary of a scenario over many rollouts.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(super) struct ScenarioReport {
    pub scenario: Scenario,
    pub rollouts: usize,
    pub promoted: usize,
    pub unfinished: usize,
    /// Rolled back at any step (for A/A: false rollbacks).
    pub rolled_back: Rate,
    /// Rolled back while the canary weight was below 50 %.
    pub rolled_back_before_half: Rate,
    /// Canary requests served until the rollback: median and 90th percentile.
    pub canary_requests_to_rollback_median: Option<f64>,
    pub canary_requests_to_rollback_p90: Option<f64>,
    /// Seconds from the first step to 100 %: median and 90th percentile.
    pub seconds_to_promotion_median: Option<f64>,
    pub seconds_to_promotion_p90: Option<f64>,
    /// Rollbacks per reason.
    pub rollback_reasons: BTreeMap<String, usize>,
}

/// The daemon's view of one backend: its counters' baseline.
struct Scraped {
    baseline: Snapshot,
}

/// Runs one rollout from the first step to its end (or `max_seconds`).
pub(super) fn simulate_rollout(
    scenario: &Scenario,
    params: &SimParams,
    seed: u64,
) -> RolloutResult {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut cfg = params.rollout.clone();
    cfg.thresholds.max_error_rate_ratio = scenario.max_error_rate_ratio;
    let upstream = &params.upstream;
    let classes = scenario.classes();
    let mut service = Service::new(
        TrafficModel {
            requests_per_second: params.requests_per_second,
            flow_requests: scenario.flow_requests,
            flow_rate: params.flow_rate,
            rho: scenario.flow_correlation,
            base_error_rate: scenario.base_error_rate,
            latency_median_ms: params.latency_median_ms,
            latency_sigma: params.latency_sigma,
            classes,
            buckets: params.buckets.clone(),
        },
        params.backends,
    );
    let names: [Vec<String>; 2] = [
        (0..params.backends[0])
            .map(|i| format!("stable-{i}"))
            .collect(),
        (0..params.backends[1])
            .map(|i| format!("canary-{i}"))
            .collect(),
    ];
    let mut scraped: [Vec<Scraped>; 2] = [0, 1].map(|g| {
        (0..params.backends[g])
            .map(|_| Scraped {
                baseline: Snapshot::missing(),
            })
            .collect()
    });
    let restart_at = scenario
        .restart
        .then(|| (rng.gen_range(5..100_u64), rng.gen_range(0..2_usize)));
    let restart_backend = restart_at.map(|(_, g)| (g, rng.gen_range(0..params.backends[g])));
    let fault = scenario.fault();
    let healthy = Behaviour::default();

    let poll_ms = cfg.poll_interval.as_millis() as u64;
    let (mut rollout, _) = Rollout::new(0, vec!["canary@sim".into()], &cfg);
    rollout.on_event(0, Event::WarmupDone, &cfg, upstream);
    let mut t = 0;
    let mut canary_requests = 0;
    // The controller's first poll only sets baselines.
    scrape_all(&service, &mut scraped, &mut rng, 0.0, None, upstream);
    while t < params.max_seconds * 1000 {
        t += poll_ms;
        let fault_on = scenario
            .fault_from_percent
            .is_none_or(|p| rollout.weight().percent() >= p);
        let behaviour = [
            healthy.clone(),
            if fault_on {
                fault.clone()
            } else {
                healthy.clone()
            },
        ];
        let mut new_flows = [0; 2];
        for _ in 0..(poll_ms / 1000).max(1) {
            let sec = service.second(&mut rng, rollout.weight().ratio(), &behaviour);
            new_flows[0] += sec.new_flows[0];
            new_flows[1] += sec.new_flows[1];
            canary_requests += sec.requests[1];
        }
        let mut failed = None;
        if let (Some((at, _)), Some((g, b))) = (restart_at, restart_backend) {
            if t == at * 1000 {
                service.restart(g, b);
                failed = Some((g, b));
            }
        }
        let windows = scrape_all(
            &service,
            &mut scraped,
            &mut rng,
            params.scrape_failure,
            failed,
            upstream,
        );
        let mut backends = Vec::new();
        for (g, group) in [Group::Stable, Group::Canary].into_iter().enumerate() {
            for (b, w) in windows[g].iter().enumerate() {
                backends.push(BackendPoll {
                    group,
                    backend: names[g][b].clone(),
                    window: w.clone(),
                });
            }
        }
        let poll = Poll {
            stable: aggregate(&windows[0]),
            canary: aggregate(&windows[1]),
            flows: FlowCounts {
                stable: new_flows[0],
                canary: new_flows[1],
            },
            backends,
            ..Poll::default()
        };
        let mut out = rollout.on_event(t, Event::Poll(poll), &cfg, upstream);
        if rollout.evaluation_due(t, &cfg) {
            out = rollout.on_event(t, Event::Evaluate, &cfg, upstream);
        }
        if matches!(rollout.phase(), Phase::Promoted | Phase::RolledBack) {
            let d = out.decision.expect("a phase change carries a decision");
            if std::env::var("SIM_DEBUG").is_ok() && d.action == DecisionAction::Rollback {
                let j = d.judgement.as_ref().unwrap();
                let sig = j
                    .signals
                    .iter()
                    .find(|s| s.verdict == canary_userspace::judge::SignalVerdict::Fail)
                    .unwrap();
                eprintln!(
                    "DBG {} polls {} t {} {}",
                    d.from,
                    rollout.window().polls,
                    t / 1000,
                    sig
                );
            }
            return RolloutResult {
                outcome: rollout.phase(),
                reason: Some(d.reason),
                rolled_back_from: (d.action == DecisionAction::Rollback).then_some(d.from),
                seconds: t as f64 / 1000.0,
                canary_requests,
            };
        }
    }
    RolloutResult {
        outcome: rollout.phase(),
        reason: None,
        rolled_back_from: None,
        seconds: t as f64 / 1000.0,
        canary_requests,
    }
}

/// Scrapes every backend as the controller does: the exposition text, parsed with the
/// service's series names (a failed scrape is a missing snapshot), the increase since the
/// backend's baseline, then the baseline moves forward.
fn scrape_all(
    service: &Service,
    scraped: &mut [Vec<Scraped>; 2],
    rng: &mut StdRng,
    failure: f64,
    forced_failure: Option<(usize, usize)>,
    upstream: &UpstreamConfig,
) -> [Vec<Window>; 2] {
    let model = service.model();
    [0, 1].map(|g| {
        scraped[g]
            .iter_mut()
            .enumerate()
            .map(|(b, s)| {
                let fails = forced_failure == Some((g, b)) || rng.gen::<f64>() < failure;
                let scrape = if fails {
                    Err(ScrapeProblem {
                        reason: ScrapeReason::Timeout,
                        message: "no answer within the poll".into(),
                    })
                } else {
                    Ok(service.backends[g][b].exposition(&model.buckets, &model.classes.names))
                };
                let snapshot = snapshot_of(&scrape, upstream);
                let delta = snapshot.delta_since(&s.baseline);
                s.baseline.advance(&snapshot, delta.reset);
                delta.window
            })
            .collect()
    })
}

fn quantile(values: &mut [f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let i = ((values.len() as f64 - 1.0) * q).round() as usize;
    Some(values[i])
}

/// Summarises the rollouts of one scenario.
pub(super) fn summarise(scenario: &Scenario, results: &[RolloutResult]) -> ScenarioReport {
    let rollouts = results.len();
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
    ScenarioReport {
        scenario: scenario.clone(),
        rollouts,
        promoted,
        unfinished: rollouts - promoted - rolled_back,
        rolled_back: Rate::new(rolled_back, rollouts),
        rolled_back_before_half: Rate::new(before_half, rollouts),
        canary_requests_to_rollback_median: quantile(&mut to_rollback, 0.5),
        canary_requests_to_rollback_p90: quantile(&mut to_rollback, 0.9),
        seconds_to_promotion_median: quantile(&mut to_promotion, 0.5),
        seconds_to_promotion_p90: quantile(&mut to_promotion, 0.9),
        rollback_reasons: reasons,
    }
}

/// Runs `rollouts` seeded rollouts of every scenario on `threads` threads and summarises each.
/// Rollout `i` of every scenario uses seed `seed + i`, so results are reproducible.
pub(super) fn simulate_all(
    scenarios: &[Scenario],
    params: &SimParams,
    rollouts: usize,
    seed: u64,
    threads: usize,
) -> Vec<ScenarioReport> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    const CHUNK: usize = 50;
    let chunks = rollouts.div_ceil(CHUNK);
    let jobs = scenarios.len() * chunks;
    let next = AtomicUsize::new(0);
    let started = std::time::Instant::now();
    let results: Mutex<Vec<Vec<Option<RolloutResult>>>> =
        Mutex::new(vec![vec![None; rollouts]; scenarios.len()]);
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| loop {
                let job = next.fetch_add(1, Ordering::Relaxed);
                if job >= jobs {
                    break;
                }
                let (si, ci) = (job / chunks, job % chunks);
                let range = ci * CHUNK..((ci + 1) * CHUNK).min(rollouts);
                let done: Vec<(usize, RolloutResult)> = range
                    .map(|i| {
                        let r =
                            simulate_rollout(&scenarios[si], params, seed.wrapping_add(i as u64));
                        (i, r)
                    })
                    .collect();
                let mut all = results.lock().expect("results lock");
                for (i, r) in done {
                    all[si][i] = Some(r);
                }
                if all[si].iter().all(Option::is_some) {
                    // Progress: a scenario is complete.
                    let rs: Vec<RolloutResult> = all[si].iter().flatten().cloned().collect();
                    let r = summarise(&scenarios[si], &rs);
                    eprintln!(
                        "judge: {:>5.0} s  {}: rolled back {}, before 50 % {}, promoted {}, unfinished {}",
                        started.elapsed().as_secs_f64(),
                        r.scenario.name,
                        r.rolled_back.show(),
                        r.rolled_back_before_half.show(),
                        r.promoted,
                        r.unfinished
                    );
                }
            });
        }
    });
    let all = results.into_inner().expect("results lock");
    scenarios
        .iter()
        .zip(all)
        .map(|(sc, rs)| {
            let rs: Vec<RolloutResult> = rs
                .into_iter()
                .map(|r| r.expect("every rollout ran"))
                .collect();
            summarise(sc, &rs)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aa_false_rollbacks_are_rare_and_promotion_is_quick() {
        let aa = &Scenario::identical()[1];
        let params = SimParams::default();
        let r = &simulate_all(std::slice::from_ref(aa), &params, 100, 7, 2)[0];
        assert!(r.rolled_back.count <= 2, "{r:?}");
        assert!(r.promoted >= 95, "{r:?}");
        let least = params.least_promotion_seconds();
        let median = r.seconds_to_promotion_median.unwrap();
        assert!(
            median >= least && median <= 1.3 * least,
            "{median} vs {least}"
        );
    }

    #[test]
    fn clear_faults_are_caught_before_half() {
        let params = SimParams::default();
        let faults: Vec<Scenario> = Scenario::faults()
            .into_iter()
            .filter(|s| s.fault_from_percent.is_none() && (s.base_error_rate - 0.01).abs() < 1e-12)
            .collect();
        for r in simulate_all(&faults, &params, 40, 11, 2) {
            assert!(r.rolled_back_before_half.rate >= 0.9, "{r:?}");
        }
    }

    #[test]
    fn simulation_is_reproducible() {
        let s = &Scenario::faults()[0];
        let p = SimParams::default();
        assert_eq!(simulate_rollout(s, &p, 3), simulate_rollout(s, &p, 3));
    }

    #[test]
    fn wilson_interval_of_a_rate() {
        let r = Rate::new(4, 1000);
        assert!((r.rate - 0.004).abs() < 1e-12);
        assert!(
            (r.low - 0.00156).abs() < 1e-4 && (r.high - 0.0102).abs() < 2e-4,
            "{r:?}"
        );
        assert!(Rate::new(0, 1000).low < 1e-12);
    }
}
