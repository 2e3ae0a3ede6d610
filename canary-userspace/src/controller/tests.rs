//! The controller against the fake data plane and simulated backends, with a controllable
//! clock: no sleeps, no network.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, RwLock};

use canary_common::{BACKEND_FLAG_UP, GROUP_CANARY, GROUP_STABLE};

use super::*;
use crate::api::{OperatorCommand, Status};
use crate::config::Config;
use crate::dataplane::fake::FakeDataPlane;
use crate::metrics::Metrics;
use crate::observe::probe::Probe;
use crate::rollout::{Phase, StateStore};

/// The balancer interface's MAC the tests' daemon found.
const LB_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];

const BOUNDS: [f64; 8] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];

/// A model server's counters, advanced by `serve`, exposed as Prometheus text.
#[derive(Clone, Debug, Default)]
struct FakeBackend {
    requests: u64,
    errors: u64,
    buckets: [u64; BOUNDS.len()],
    sum: f64,
    positive: u64,
    negative: u64,
    healthy: bool,
    metrics_up: bool,
    /// Whether served requests are observed in the latency histogram.
    records_latency: bool,
    /// Exported instead of the real request count (a lying or broken exporter).
    requests_text: Option<String>,
    /// How the scrape fails, instead of answering.
    scrape_failure: Option<crate::upstream::ScrapeProblem>,
}

/// How a version behaves.
#[derive(Clone, Copy, Debug)]
struct Behaviour {
    error_rate: f64,
    latency_s: f64,
    positive_share: f64,
}

const GOOD: Behaviour = Behaviour {
    error_rate: 0.01,
    latency_s: 0.02,
    positive_share: 0.6,
};

impl FakeBackend {
    fn new() -> Self {
        FakeBackend {
            healthy: true,
            metrics_up: true,
            records_latency: true,
            ..FakeBackend::default()
        }
    }

    /// Serves `n` requests deterministically (error and class counts by rounding).
    fn serve(&mut self, n: u64, b: Behaviour) {
        self.requests += n;
        self.errors += (n as f64 * b.error_rate).round() as u64;
        let positive = (n as f64 * b.positive_share).round() as u64;
        self.positive += positive;
        self.negative += n - positive;
        if !self.records_latency {
            return;
        }
        // Spread latencies over the bucket holding `latency_s` and the next one.
        let i = BOUNDS
            .iter()
            .position(|u| *u >= b.latency_s)
            .unwrap_or(BOUNDS.len() - 1);
        let half = n / 2;
        self.buckets[i] += half;
        self.buckets[(i + 1).min(BOUNDS.len() - 1)] += n - half;
        self.sum += n as f64 * b.latency_s;
    }

    fn exposition(&self) -> String {
        let mut t = String::new();
        let requests = self
            .requests_text
            .clone()
            .unwrap_or_else(|| self.requests.to_string());
        let _ = writeln!(
            t,
            "# TYPE requests_total counter\nrequests_total {requests}"
        );
        let _ = writeln!(
            t,
            "# TYPE request_errors_total counter\nrequest_errors_total {}",
            self.errors
        );
        let _ = writeln!(t, "# TYPE request_duration_seconds histogram");
        let mut cumulative = 0;
        for (bound, n) in BOUNDS.iter().zip(self.buckets) {
            cumulative += n;
            let _ = writeln!(
                t,
                "request_duration_seconds_bucket{{le=\"{bound}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            t,
            "request_duration_seconds_bucket{{le=\"+Inf\"}} {cumulative}"
        );
        let _ = writeln!(t, "request_duration_seconds_sum {}", self.sum);
        let _ = writeln!(t, "request_duration_seconds_count {cumulative}");
        let _ = writeln!(t, "# TYPE predictions_total counter");
        let _ = writeln!(
            t,
            "predictions_total{{class=\"positive\"}} {}",
            self.positive
        );
        let _ = writeln!(
            t,
            "predictions_total{{class=\"negative\"}} {}",
            self.negative
        );
        t
    }
}

pub(super) fn config_text(extra_rollout: &str) -> String {
    format!(
        r#"
[dataplane]
interface = "lo"
heartbeat_timeout = "30s"

[[services]]
name = "sentiment"
vip = "198.18.0.100:8080"

  [[services.backends]]
  name = "s0"
  group = "stable"
  address = "198.18.0.11"
  mac = "02:00:00:00:00:11"
  health_url = "http://198.18.0.11:8080/healthz"
  metrics_url = "http://198.18.0.11:8080/metrics"

  [[services.backends]]
  name = "s1"
  group = "stable"
  address = "198.18.0.12"
  mac = "02:00:00:00:00:12"
  health_url = "http://198.18.0.12:8080/healthz"
  metrics_url = "http://198.18.0.12:8080/metrics"

  [[services.backends]]
  name = "k0"
  group = "canary"
  address = "198.18.0.31"
  mac = "02:00:00:00:00:31"
  health_url = "http://198.18.0.31:8080/healthz"
  metrics_url = "http://198.18.0.31:8080/metrics"

  [services.rollout]
  steps = [10, 50, 100]
  interval = "10s"
  poll_interval = "1s"
  min_samples = 300
  warmup_requests = 5
{extra_rollout}
"#
    )
}

/// The controller, its backends and a clock in whole seconds.
struct Sim {
    c: Controller<FakeDataPlane>,
    backends: BTreeMap<String, FakeBackend>,
    stable: Behaviour,
    canary: Behaviour,
    t: u64,
    /// New requests (and flows) per second.
    rate: u64,
    store_dir: std::path::PathBuf,
}

fn store_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("canary-ctl-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

impl Sim {
    fn new(name: &str, extra_rollout: &str) -> Sim {
        let dir = store_dir(name);
        Sim::with_store(dir, FakeDataPlane::new(), false, extra_rollout)
    }

    fn with_store(
        dir: std::path::PathBuf,
        dp: FakeDataPlane,
        recovered: bool,
        extra_rollout: &str,
    ) -> Sim {
        let config = Config::from_toml_str(&config_text(extra_rollout)).expect("valid test config");
        let c = Controller::new(
            config,
            dp,
            recovered,
            StateStore::new(&dir),
            Metrics::new().unwrap(),
            Arc::new(RwLock::new(Status::default())),
            Some(LB_MAC),
            &BTreeMap::new(),
            0,
            1,
        )
        .expect("controller starts");
        let backends = ["s0", "s1", "k0"]
            .iter()
            .map(|n| ((*n).to_string(), FakeBackend::new()))
            .collect();
        Sim {
            c,
            backends,
            stable: GOOD,
            canary: GOOD,
            t: 0,
            rate: 400,
            store_dir: dir,
        }
    }

    fn weight_bp(&self) -> u32 {
        self.c.rollout("sentiment").unwrap().weight().basis_points()
    }

    fn phase(&self) -> Phase {
        self.c.phase("sentiment").unwrap()
    }

    /// One second: traffic split by the current weight, then a poll; warm-ups complete at once.
    fn tick(&mut self) {
        self.t += 1;
        let w = f64::from(self.weight_bp()) / 10_000.0;
        let canary_n = (self.rate as f64 * w).round() as u64;
        let stable_n = self.rate - canary_n;
        let (s, k) = (self.stable, self.canary);
        let healthy_stable: Vec<String> = ["s0", "s1"]
            .iter()
            .filter(|n| self.backends[**n].healthy)
            .map(|n| (*n).to_string())
            .collect();
        for name in &healthy_stable {
            let b = self.backends.get_mut(name).unwrap();
            b.serve(stable_n / healthy_stable.len() as u64, s);
        }
        if self.backends["k0"].healthy {
            self.backends.get_mut("k0").unwrap().serve(canary_n, k);
        }
        // The kernel's per-service new-flow counters.
        if let Some(index) = self.c.programmer.service_index("sentiment") {
            let stats = &mut self.c.dataplane_mut().service_stats[index as usize];
            stats.new_flows[GROUP_STABLE as usize] += stable_n;
            stats.new_flows[GROUP_CANARY as usize] += canary_n;
        }
        let observations: Vec<Observation> = self
            .backends
            .iter()
            .map(|(name, b)| Observation {
                service: "sentiment".into(),
                backend: name.clone(),
                health: if b.healthy {
                    Probe::Healthy
                } else {
                    Probe::Unhealthy("connection refused".into())
                },
                metrics: if let Some(failure) = &b.scrape_failure {
                    Err(failure.clone())
                } else if b.metrics_up {
                    Ok(b.exposition())
                } else {
                    Err(crate::upstream::ScrapeProblem {
                        reason: crate::upstream::ScrapeReason::HttpStatus,
                        message: "metrics endpoint answered 500".into(),
                    })
                },
            })
            .collect();
        let now_ms = self.t * 1000;
        let now_ns = self.t * 1_000_000_000;
        self.c
            .on_poll(now_ms, now_ns, &observations, &BTreeMap::new())
            .expect("poll");
        for w in self.c.take_warmups() {
            assert_eq!(w.urls, vec!["http://198.18.0.31:8080/healthz".to_string()]);
            self.c.warm_up_done(&w.service, now_ms, now_ns);
        }
    }

    /// Ticks until `pred` or `limit` seconds; returns the weights seen, in order, deduplicated.
    fn run_until(&mut self, limit: u64, pred: impl Fn(&Sim) -> bool) -> Vec<u32> {
        let mut seen = vec![self.weight_bp()];
        for _ in 0..limit {
            if pred(self) {
                break;
            }
            self.tick();
            let w = self.weight_bp();
            if seen.last() != Some(&w) {
                seen.push(w);
            }
        }
        seen
    }

    fn kernel_weight(&self) -> u32 {
        let i = self.c.programmer.service_index("sentiment").unwrap();
        self.c.dataplane().control[i as usize].canary_weight
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.store_dir);
    }
}

#[test]
fn healthy_canary_is_promoted_through_every_step() {
    let mut sim = Sim::new("promote", "");
    let seen = sim.run_until(200, |s| s.phase() == Phase::Promoted);
    assert_eq!(sim.phase(), Phase::Promoted, "weights seen {seen:?}");
    assert_eq!(seen, vec![0, 1000, 5000, 10_000]);
    assert_eq!(sim.kernel_weight(), 10_000);
    // Each step lasted at least the evaluation interval.
    assert!(sim.t >= 20, "promoted after {} s", sim.t);
    let status = sim.c.status.read().unwrap().clone();
    let svc = &status.services[0];
    assert_eq!(svc.phase, "promoted");
    assert!(
        svc.events.iter().any(|d| d.judgement.is_some()),
        "decisions carry evidence"
    );
}

#[test]
fn error_spike_rolls_back_within_one_poll() {
    let mut sim = Sim::new("spike", "");
    sim.run_until(100, |s| s.weight_bp() == 5000);
    assert_eq!(sim.weight_bp(), 5000);
    sim.canary.error_rate = 0.3;
    sim.tick();
    assert_eq!(
        sim.weight_bp(),
        0,
        "spike must roll back at the first poll that sees it"
    );
    assert_eq!(sim.phase(), Phase::RolledBack);
    assert_eq!(sim.kernel_weight(), 0);
    let d = sim
        .c
        .rollout("sentiment")
        .unwrap()
        .last_decision()
        .unwrap()
        .clone();
    assert_eq!(d.reason.as_str(), "error_spike", "{d}");
}

#[test]
fn slower_canary_is_rolled_back_by_the_judge() {
    let mut sim = Sim::new("slow", "");
    sim.canary.latency_s = 0.25;
    let seen = sim.run_until(200, |s| s.phase() == Phase::RolledBack);
    assert_eq!(sim.phase(), Phase::RolledBack, "weights {seen:?}");
    assert!(!seen.contains(&10_000), "never promoted: {seen:?}");
}

#[test]
fn restart_resumes_the_same_phase_step_and_weight() {
    let mut sim = Sim::new("restart", "");
    sim.run_until(100, |s| s.weight_bp() == 5000);
    let before = sim.c.rollout("sentiment").unwrap().clone();
    let dir = sim.store_dir.clone();
    // The daemon dies; the pinned maps (here: the fake) survive.
    let dp = std::mem::take(sim.c.dataplane_mut());
    sim.store_dir = std::env::temp_dir().join("canary-ctl-unused");
    drop(sim);
    let mut again = Sim::with_store(dir, dp, true, "");
    let after = again.c.rollout("sentiment").unwrap();
    assert_eq!(after.phase(), before.phase());
    assert_eq!(after.weight(), before.weight());
    // Indices were recovered from the maps, and the next poll keeps going to promotion.
    assert!(again.c.programmer.service_index("sentiment").is_some());
    again.run_until(200, |s| s.phase() == Phase::Promoted);
    assert_eq!(again.phase(), Phase::Promoted);
}

#[test]
fn failing_health_checks_take_a_backend_out_and_back_with_hysteresis() {
    let mut sim = Sim::new("health", "");
    sim.tick();
    let idx = sim.c.programmer.backend_index("sentiment", "s1").unwrap() as usize;
    assert_eq!(
        sim.c.dataplane().backends[idx].flags & BACKEND_FLAG_UP,
        BACKEND_FLAG_UP
    );
    sim.backends.get_mut("s1").unwrap().healthy = false;
    sim.tick();
    assert_eq!(
        sim.c.dataplane().backends[idx].flags & BACKEND_FLAG_UP,
        BACKEND_FLAG_UP,
        "one failure is not enough"
    );
    sim.tick();
    assert_eq!(
        sim.c.dataplane().backends[idx].flags & BACKEND_FLAG_UP,
        0,
        "two failures take it out"
    );
    sim.backends.get_mut("s1").unwrap().healthy = true;
    sim.tick();
    assert_eq!(
        sim.c.dataplane().backends[idx].flags & BACKEND_FLAG_UP,
        0,
        "one pass is not enough"
    );
    sim.tick();
    assert_eq!(
        sim.c.dataplane().backends[idx].flags & BACKEND_FLAG_UP,
        BACKEND_FLAG_UP
    );
}

#[test]
fn pause_holds_and_operator_rollback_is_immediate() {
    let mut sim = Sim::new("operator", "");
    sim.run_until(100, |s| s.weight_bp() == 1000);
    let reply = sim.c.on_operator(
        sim.t * 1000,
        sim.t * 1_000_000_000,
        None,
        &OperatorCommand::Pause,
    );
    assert!(reply.ok, "{}", reply.message);
    let seen = sim.run_until(60, |_| false);
    assert_eq!(seen, vec![1000], "paused rollout moved");
    let reply = sim.c.on_operator(
        sim.t * 1000,
        sim.t * 1_000_000_000,
        Some("sentiment"),
        &OperatorCommand::Rollback,
    );
    assert!(reply.ok, "{}", reply.message);
    assert_eq!(sim.kernel_weight(), 0);
    assert_eq!(sim.phase(), Phase::RolledBack);
    let reply = sim
        .c
        .on_operator(sim.t * 1000, 0, Some("nope"), &OperatorCommand::Pause);
    assert!(
        !reply.ok && reply.message.contains("sentiment"),
        "{}",
        reply.message
    );
}

#[test]
fn missing_metrics_hold_and_never_promote() {
    let mut sim = Sim::new("missing-hold", "");
    sim.run_until(100, |s| s.weight_bp() == 1000);
    sim.backends.get_mut("k0").unwrap().metrics_up = false;
    let seen = sim.run_until(120, |_| false);
    assert_eq!(seen, vec![1000], "moved without canary metrics: {seen:?}");
    assert_eq!(sim.phase(), Phase::Stepping);
}

#[test]
fn missing_metrics_roll_back_when_configured() {
    let mut sim = Sim::new(
        "missing-rollback",
        "  metrics_missing = \"rollback\"\n  metrics_missing_intervals = 2",
    );
    sim.run_until(100, |s| s.weight_bp() == 1000);
    sim.backends.get_mut("k0").unwrap().metrics_up = false;
    let seen = sim.run_until(120, |s| s.phase() == Phase::RolledBack);
    assert_eq!(sim.phase(), Phase::RolledBack, "weights {seen:?}");
    assert!(!seen.contains(&5000));
}

/// A canary whose latency histogram never observes anything: the hold names the signal in
/// `/status` and the metrics, and `metrics_missing = "rollback"` applies to it.
#[test]
fn a_signal_without_data_shows_in_status_and_metrics_and_rolls_back_when_configured() {
    let mut sim = Sim::new(
        "no-data",
        "  metrics_missing = \"rollback\"\n  metrics_missing_intervals = 3",
    );
    sim.run_until(100, |s| s.weight_bp() == 1000);
    sim.backends.get_mut("k0").unwrap().records_latency = false;
    sim.run_until(60, |s| {
        !s.c.status.read().unwrap().services[0]
            .signals_without_data
            .is_empty()
    });
    let status = sim.c.status.read().unwrap().clone();
    let names: Vec<&str> = status.services[0]
        .signals_without_data
        .iter()
        .map(|w| w.signal.as_str())
        .collect();
    assert_eq!(names, ["latency_mean", "latency_p95"], "{status:?}");
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&sim.c.metrics.registry.gather())
        .unwrap();
    for needle in [
        "canary_signal_without_data{service=\"sentiment\",signal=\"latency_mean\"} 1",
        "canary_signal_without_data{service=\"sentiment\",signal=\"error_rate\"} 0",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
    let seen = sim.run_until(120, |s| s.phase() == Phase::RolledBack);
    assert_eq!(sim.phase(), Phase::RolledBack, "weights {seen:?}");
    let d = sim
        .c
        .rollout("sentiment")
        .unwrap()
        .last_decision()
        .unwrap()
        .clone();
    assert_eq!(d.reason.as_str(), "no_data", "{d}");
    assert!(d.message.contains("latency_mean"), "{d}");
}

#[test]
fn reset_rollback_bumps_the_epoch_drain_does_not() {
    let mut drain = Sim::new("drain", "");
    drain.run_until(100, |s| s.weight_bp() == 1000);
    drain.c.on_operator(
        drain.t * 1000,
        5_000_000_000,
        None,
        &OperatorCommand::Rollback,
    );
    let i = drain.c.programmer.service_index("sentiment").unwrap() as usize;
    assert_eq!(drain.c.dataplane().control[i].reset_epoch_ns, 0);

    let mut reset = Sim::new("reset", "  rollback = \"reset\"");
    reset.run_until(100, |s| s.weight_bp() == 1000);
    reset.c.on_operator(
        reset.t * 1000,
        5_000_000_000,
        None,
        &OperatorCommand::Rollback,
    );
    let i = reset.c.programmer.service_index("sentiment").unwrap() as usize;
    assert_eq!(reset.c.dataplane().control[i].reset_epoch_ns, 5_000_000_000);
}

#[test]
fn heartbeat_is_written_every_poll() {
    let mut sim = Sim::new("heartbeat", "");
    sim.tick();
    sim.tick();
    let i = sim.c.programmer.service_index("sentiment").unwrap() as usize;
    let control = sim.c.dataplane().control[i];
    assert_eq!(control.heartbeat_ns, 2_000_000_000);
    assert_eq!(control.heartbeat_timeout_ns, 30_000_000_000);
}

#[test]
fn metrics_follow_the_rollout_the_kernel_and_the_backends() {
    let mut sim = Sim::new("metrics", "");
    sim.run_until(100, |s| s.weight_bp() == 1000);
    let idx = sim.c.programmer.backend_index("sentiment", "k0").unwrap() as usize;
    sim.c.dataplane_mut().backend_stats[idx].packets = 42;
    sim.c.dataplane_mut().backend_stats[idx].new_flows = 7;
    sim.tick();
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&sim.c.metrics.registry.gather())
        .unwrap();
    for needle in [
        "canary_weight_ratio{service=\"sentiment\"} 0.1",
        "canary_rollout_phase{phase=\"stepping\",service=\"sentiment\"} 1",
        "canary_rollout_step{service=\"sentiment\"} 1",
        "canary_backend_packets_total{backend=\"k0\",group=\"canary\",service=\"sentiment\"} 42",
        "canary_backend_flows_total{backend=\"k0\",group=\"canary\",service=\"sentiment\"} 7",
        "canary_backend_up{backend=\"s0\",group=\"stable\",service=\"sentiment\"} 1",
        "canary_upstream_requests_total{group=\"stable\",service=\"sentiment\"}",
        "canary_upstream_errors_total{group=\"canary\",service=\"sentiment\"}",
        "canary_upstream_latency_seconds_bucket{group=\"canary\",service=\"sentiment\",le=\"0.025\"}",
        "canary_decisions_total{action=\"step\",reason=",
        "canary_upstream_requests_per_flow_ratio{backend=\"k0\"",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
}

#[test]
fn operator_metrics_follow_holds_heartbeats_and_predictions() {
    let mut sim = Sim::new("operator-metrics", "");
    // 2 canary requests a second: every evaluation of the first step holds (min_samples 300).
    sim.rate = 20;
    sim.run_until(100, |s| s.weight_bp() == 1000);
    let stepped_at = sim.t;
    while sim.t < stepped_at + 31 {
        sim.tick();
    }
    let status = sim.c.status.read().unwrap().clone();
    let holds_in_a_row = status.services[0]
        .events
        .iter()
        .rev()
        .take_while(|d| d.action.as_str() == "hold")
        .count();
    assert_eq!(holds_in_a_row, 3, "{:?}", status.services[0].events);
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&sim.c.metrics.registry.gather())
        .unwrap();
    let b = &sim.backends;
    for needle in [
        "canary_rollout_held_intervals{service=\"sentiment\"} 3".to_string(),
        format!("canary_heartbeat_timestamp_seconds{{service=\"sentiment\"}} {}", sim.t),
        "canary_heartbeat_timeout_seconds{service=\"sentiment\"} 30".to_string(),
        format!(
            "canary_upstream_predictions_total{{class=\"positive\",group=\"stable\",service=\"sentiment\"}} {}",
            b["s0"].positive + b["s1"].positive
        ),
        format!(
            "canary_upstream_predictions_total{{class=\"negative\",group=\"canary\",service=\"sentiment\"}} {}",
            b["k0"].negative
        ),
    ] {
        assert!(text.contains(&needle), "missing {needle:?} in\n{text}");
    }

    // A step (operator promotion here) starts the count again.
    sim.c.on_operator(
        sim.t * 1000,
        sim.t * 1_000_000_000,
        None,
        &OperatorCommand::Promote { full: false },
    );
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&sim.c.metrics.registry.gather())
        .unwrap();
    assert!(
        text.contains("canary_rollout_held_intervals{service=\"sentiment\"} 0"),
        "{text}"
    );
}

#[test]
fn a_new_rollout_logs_its_start_once() {
    let mut sim = Sim::new("events", "");
    sim.tick();
    let status = sim.c.status.read().unwrap().clone();
    let starts = status.services[0]
        .events
        .iter()
        .filter(|d| d.action.as_str() == "start")
        .count();
    assert_eq!(starts, 1, "{:?}", status.services[0].events);
}

#[test]
fn status_lists_services_before_the_first_poll() {
    let sim = Sim::new("early-status", "");
    let status = sim.c.status.read().unwrap().clone();
    assert_eq!(status.services.len(), 1);
    assert!(status.services[0]
        .backends
        .iter()
        .all(|b| !b.up && b.down_reason.as_deref() == Some("not probed yet")));
}

#[test]
fn reload_after_promotion_keeps_indices_and_goes_idle() {
    let mut sim = Sim::new("reload", "");
    sim.run_until(200, |s| s.phase() == Phase::Promoted);
    assert_eq!(sim.phase(), Phase::Promoted);
    let k0_index = sim.c.programmer.backend_index("sentiment", "k0").unwrap();
    let s0_index = sim.c.programmer.backend_index("sentiment", "s0").unwrap();
    // The operator makes the promoted version the stable group and drops the old one.
    let promoted = config_text("").replace("group = \"canary\"", "group = \"stable\"");
    let new = Config::from_toml_str(&promoted).unwrap();
    let msg = sim
        .c
        .reload(new, sim.t * 1000, sim.t * 1_000_000_000)
        .unwrap();
    assert!(msg.contains("reloaded"), "{msg}");
    assert_eq!(sim.phase(), Phase::Idle, "no canary group left");
    assert_eq!(sim.kernel_weight(), 0);
    // Backends keep their indices, so established flows stay where they are.
    assert_eq!(
        sim.c.programmer.backend_index("sentiment", "k0"),
        Some(k0_index)
    );
    assert_eq!(
        sim.c.programmer.backend_index("sentiment", "s0"),
        Some(s0_index)
    );
    let up = sim.c.dataplane().backends[k0_index as usize].flags & BACKEND_FLAG_UP;
    assert_eq!(up, BACKEND_FLAG_UP);
}

#[test]
fn reload_refuses_dataplane_changes_and_keeps_the_running_config() {
    let mut sim = Sim::new("reload-refused", "");
    sim.tick();
    let changed =
        config_text("").replace("heartbeat_timeout = \"30s\"", "heartbeat_timeout = \"40s\"");
    let err = sim
        .c
        .reload(
            Config::from_toml_str(&changed).unwrap(),
            2000,
            2_000_000_000,
        )
        .unwrap_err();
    assert!(err.to_string().contains("[dataplane]"), "{err}");
    assert_eq!(
        sim.c.dataplane_config().heartbeat_timeout,
        std::time::Duration::from_secs(30)
    );
}

#[test]
fn a_count_beyond_2_53_is_a_missing_series_not_a_crash() {
    let mut sim = Sim::new("huge-count", "");
    sim.run_until(100, |s| s.weight_bp() == 1000);
    // Summed over polls and backends, this overflowed u64 (a panic in a debug build).
    for name in ["s0", "k0"] {
        sim.backends.get_mut(name).unwrap().requests_text = Some("1e30".into());
    }
    let seen = sim.run_until(30, |_| false);
    assert_eq!(
        seen,
        vec![1000],
        "judged on a count it cannot hold: {seen:?}"
    );
    let status = sim.c.status.read().unwrap().clone();
    let k0 = status.services[0]
        .backends
        .iter()
        .find(|b| b.name == "k0")
        .unwrap();
    assert!(!k0.metrics_ok);
    let problem = k0.metrics_problem.as_deref().unwrap_or_default();
    assert_eq!(
        problem,
        "requests (requests_total): requests_total = 1e30 is not a count (a whole number from 0 to 2^53)"
    );
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&sim.c.metrics.registry.gather())
        .unwrap();
    let needle = "canary_upstream_scrape_errors_total{backend=\"k0\",reason=\"not_a_count\",service=\"sentiment\"} 30";
    assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    // The exporter recovers: the rollout goes on.
    for name in ["s0", "k0"] {
        sim.backends.get_mut(name).unwrap().requests_text = None;
    }
    let seen = sim.run_until(100, |s| s.weight_bp() > 1000);
    assert!(sim.weight_bp() > 1000, "weights {seen:?}");
}

#[test]
fn a_state_file_with_an_impossible_weight_is_refused_naming_file_and_field() {
    let mut sim = Sim::new("bad-weight", "");
    sim.run_until(100, |s| s.weight_bp() == 2500);
    let dir = sim.store_dir.clone();
    let path = dir.join("rollout-sentiment.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    json["weight"] = 4_000_000_000u64.into();
    std::fs::write(&path, json.to_string()).unwrap();
    let dp = std::mem::take(sim.c.dataplane_mut());
    sim.store_dir = std::env::temp_dir().join("canary-ctl-unused");
    drop(sim);

    let config = Config::from_toml_str(&config_text("")).unwrap();
    let err = Controller::new(
        config,
        dp,
        true,
        StateStore::new(&dir),
        Metrics::new().unwrap(),
        Arc::new(RwLock::new(Status::default())),
        Some(LB_MAC),
        &BTreeMap::new(),
        0,
        1,
    )
    .err()
    .expect("an impossible weight is refused");
    let text = err.to_string();
    assert!(text.contains(&path.display().to_string()), "{text}");
    assert!(text.contains("`weight`"), "{text}");
    assert!(text.contains("4000000000"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_missing_state_file_adopts_the_weight_the_data_plane_holds() {
    let mut sim = Sim::new("adopt", "");
    sim.run_until(100, |s| s.weight_bp() == 5000);
    assert_eq!(sim.kernel_weight(), 5000);
    let dir = sim.store_dir.clone();
    std::fs::remove_file(dir.join("rollout-sentiment.json")).unwrap();
    let dp = std::mem::take(sim.c.dataplane_mut());
    sim.store_dir = std::env::temp_dir().join("canary-ctl-unused");
    drop(sim);

    let mut again = Sim::with_store(dir, dp, true, "");
    let r = again.c.rollout("sentiment").unwrap();
    assert_eq!(
        (r.phase(), r.weight().basis_points()),
        (Phase::Stepping, 5000)
    );
    let d = r.last_decision().unwrap();
    assert!(d.message.contains("is missing"), "{}", d.message);
    assert!(again.c.take_warmups().is_empty(), "no new warm-up");
    again.tick();
    assert_eq!(again.kernel_weight(), 5000, "not reset to 0 %");
    // It keeps going from there.
    again.run_until(200, |s| s.phase() == Phase::Promoted);
    assert_eq!(again.phase(), Phase::Promoted);
}

fn metrics_text(sim: &Sim) -> String {
    prometheus::TextEncoder::new()
        .encode_to_string(&sim.c.metrics.registry.gather())
        .unwrap()
}

#[test]
fn a_dry_run_signal_is_reported_but_never_holds_or_rolls_back() {
    // The same slower canary the judge rolls back, with latency in dry run: it is promoted,
    // and the latency failures show in the decisions, /status and the metrics.
    let mut sim = Sim::new("dryrun", "dry_run = [\"latency_mean\", \"latency_p95\"]");
    sim.canary.latency_s = 0.25;
    let seen = sim.run_until(200, |s| s.phase() == Phase::Promoted);
    assert_eq!(sim.phase(), Phase::Promoted, "weights {seen:?}");
    assert_eq!(seen, vec![0, 1000, 5000, 10_000]);
    let status = sim.c.status.read().unwrap().clone();
    let svc = &status.services[0];
    assert_eq!(svc.dry_run, vec!["latency_mean", "latency_p95"]);
    let failed: Vec<_> = svc
        .events
        .iter()
        .filter_map(|d| d.judgement.as_ref())
        .flat_map(|j| &j.signals)
        .filter(|r| r.dry_run && r.verdict == crate::judge::SignalVerdict::Fail)
        .collect();
    assert!(!failed.is_empty(), "dry-run failures are in the decisions");
    let text = metrics_text(&sim);
    assert!(
        text.contains(
            "canary_dry_run_verdicts_total{service=\"sentiment\",signal=\"latency_p95\",verdict=\"fail\"}"
        ),
        "{text}"
    );
}

#[test]
fn an_error_spike_in_dry_run_is_counted_not_rolled_back() {
    let mut sim = Sim::new("dryspike", "dry_run = [\"error_spike\"]");
    sim.run_until(100, |s| s.weight_bp() == 5000);
    assert_eq!(sim.weight_bp(), 5000);
    sim.canary.error_rate = 0.3;
    sim.tick();
    assert_eq!(sim.weight_bp(), 5000, "a dry-run spike changes nothing");
    assert_eq!(sim.phase(), Phase::Stepping);
    let text = metrics_text(&sim);
    assert!(
        text.contains(
            "canary_dry_run_verdicts_total{service=\"sentiment\",signal=\"error_spike\",verdict=\"fail\"} 1"
        ),
        "{text}"
    );
    // The error rate itself is not in dry run: the judge rolls back at the next evaluation.
    sim.run_until(30, |s| s.phase() == Phase::RolledBack);
    assert_eq!(sim.phase(), Phase::RolledBack);
    let d = sim
        .c
        .rollout("sentiment")
        .unwrap()
        .last_decision()
        .unwrap()
        .clone();
    assert_eq!(d.reason.as_str(), "error_rate", "{d}");
}

/// Runs a healthy rollout to promotion, then a second one that is rolled back, with the
/// notifier in place; returns the sim and the decisions it took that notify.
fn notified_rollout(
    name: &str,
    notifier: crate::notify::Notifier,
) -> (Sim, Vec<(String, f64, f64)>) {
    let mut sim = Sim::new(name, "");
    sim.c.set_notifier(notifier);
    let seen = sim.run_until(200, |s| s.phase() == Phase::Promoted);
    assert_eq!(seen, vec![0, 1000, 5000, 10_000]);
    let reply = sim.c.on_operator(
        sim.t * 1000,
        sim.t * 1_000_000_000,
        None,
        &OperatorCommand::Start,
    );
    assert!(reply.ok, "{}", reply.message);
    sim.canary.latency_s = 0.25;
    sim.run_until(200, |s| s.phase() == Phase::RolledBack);
    assert_eq!(sim.phase(), Phase::RolledBack);
    // Every decision, from the recorded history of both rollouts.
    let store = crate::history::HistoryStore::new(&sim.store_dir);
    let expected = store
        .rollouts("sentiment")
        .unwrap()
        .into_iter()
        .flat_map(|id| store.load("sentiment", id).unwrap().unwrap().decisions)
        .filter(|d| matches!(d.action.as_str(), "start" | "step" | "promote" | "rollback"))
        .map(|d| {
            (
                d.action.as_str().to_string(),
                d.from.percent(),
                d.to.percent(),
            )
        })
        .collect();
    (sim, expected)
}

#[test]
fn every_decision_reaches_a_real_receiver_once_in_order_and_a_dead_one_changes_nothing() {
    use crate::notify::tests::{dead_url, sink, Receiver};
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _guard = rt.enter();
    let receiver = rt.block_on(Receiver::start(0));
    let metrics = Metrics::new().unwrap();
    let notifier = crate::notify::start(&[sink(&receiver.url)], "lb-1".into(), &metrics).unwrap();
    let (live, expected) = notified_rollout("notify-live", notifier);
    // Start, 10, 50, promote; start, 10, rollback (the operator's start is a decision like
    // the others).
    assert!(expected.len() >= 6, "{expected:?}");
    receiver.wait_for(expected.len(), std::time::Duration::from_secs(20));
    std::thread::sleep(std::time::Duration::from_millis(300));
    let got_all = receiver.events();
    let arrived: Vec<(String, f64, f64)> = got_all
        .iter()
        .filter(|e| e.event.as_str() != "hold" && e.event.as_str() != "metrics_missing")
        .map(|e| (e.action.clone(), e.from_percent, e.to_percent))
        .collect();
    // Including the first start, taken in Controller::new before set_notifier.
    assert_eq!(arrived, expected, "every decision once, in order");
    let rollback = got_all.iter().find(|e| e.action == "rollback").unwrap();
    assert_eq!(rollback.service, "sentiment");
    assert_eq!(rollback.node, "lb-1");
    assert!(rollback.reason.starts_with("latency"), "{rollback:?}");
    assert!(rollback.signals.iter().any(|s| s.verdict == "fail"));
    assert!(rollback.text.contains("rollback"), "{}", rollback.text);

    // The same rollouts with nobody listening: the same decisions at the same times, and
    // only the drop counter moves.
    let dead_metrics = Metrics::new().unwrap();
    let notifier = crate::notify::start(
        &[crate::notify::NotifyConfig {
            retries: 0,
            ..sink(&dead_url())
        }],
        "lb-1".into(),
        &dead_metrics,
    )
    .unwrap();
    let (dead, dead_expected) = notified_rollout("notify-dead", notifier);
    assert_eq!(dead_expected, expected);
    assert_eq!(dead.t, live.t, "same timing");
    let events = |s: &Sim| {
        let st = s.c.status.read().unwrap().clone();
        st.services[0]
            .events
            .iter()
            .map(|d| (d.at_ms, d.action, d.to))
            .collect::<Vec<_>>()
    };
    assert_eq!(events(&dead), events(&live));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let dropped = || {
        dead_metrics
            .notify_dropped
            .with_label_values(&["chat", "failed"])
            .get()
    };
    while dropped() < got_all.len() as u64 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(dropped(), got_all.len() as u64);
}

#[test]
fn a_stale_heartbeat_is_notified_as_the_dead_man_switch() {
    use crate::notify::tests::{sink, Receiver};
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _guard = rt.enter();
    let receiver = rt.block_on(Receiver::start(0));
    let metrics = Metrics::new().unwrap();
    let notifier = crate::notify::start(&[sink(&receiver.url)], String::new(), &metrics).unwrap();
    let mut sim = Sim::new("deadman", "");
    sim.c.set_notifier(notifier);
    sim.run_until(100, |s| s.weight_bp() == 1000);
    let before = receiver
        .wait_for(1, std::time::Duration::from_secs(5))
        .len();
    // The daemon was away for 40 s (heartbeat_timeout is 30 s).
    sim.t += 40;
    sim.tick();
    let got = receiver.wait_for(before + 1, std::time::Duration::from_secs(20));
    let deadman: Vec<_> = got.iter().filter(|e| e.action == "deadman").collect();
    assert_eq!(deadman.len(), 1, "{got:?}");
    assert!(deadman[0].text.contains("dead-man"), "{}", deadman[0].text);
    // An ordinary poll interval is not one.
    sim.tick();
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(
        receiver
            .events()
            .iter()
            .filter(|e| e.action == "deadman")
            .count(),
        1
    );
}

#[test]
fn a_rollout_is_recorded_across_a_restart_and_drawn_with_every_series() {
    use crate::history::{render, HistoryStore};
    let mut sim = Sim::new("history", "");
    sim.run_until(100, |s| s.weight_bp() == 1000);
    sim.run_until(5, |_| false);
    // Still running when the daemon restarts (a slow canary now rolls back within a few polls,
    // so the canary slows down only after the restart).
    assert_eq!(sim.phase(), Phase::Stepping);
    let dir = sim.store_dir.clone();
    let store = HistoryStore::new(&dir);
    let id = sim.c.rollout("sentiment").unwrap().started_at_ms();
    let t = sim.t;
    // A restart: the history continues in the same file.
    let dp = std::mem::take(sim.c.dataplane_mut());
    sim.store_dir = std::env::temp_dir().join("canary-ctl-unused");
    drop(sim);
    let saved = store
        .load("sentiment", id)
        .unwrap()
        .expect("saved before the restart");
    assert!(!saved.samples.is_empty() && !saved.decisions.is_empty());
    let mut again = Sim::with_store(dir, dp, true, "");
    again.t = t;
    again.canary.latency_s = 0.25;
    again.run_until(200, |s| s.phase() == Phase::RolledBack);
    assert_eq!(again.phase(), Phase::RolledBack);
    assert_eq!(store.rollouts("sentiment").unwrap(), vec![id]);
    let h = store.load("sentiment", id).unwrap().unwrap();
    assert!(
        h.samples.len() > saved.samples.len(),
        "samples before and after the restart"
    );
    assert_eq!(h.samples[0], saved.samples[0]);
    let actions: Vec<&str> = h.decisions.iter().map(|d| d.action.as_str()).collect();
    assert_eq!(actions.first(), Some(&"start"), "{actions:?}");
    assert_eq!(actions.last(), Some(&"rollback"), "{actions:?}");
    assert!(h
        .samples
        .iter()
        .any(|s| (s.weight_percent - 10.0).abs() < 1e-9));
    assert!(h
        .samples
        .iter()
        .any(|s| s.canary.latency_p95_ms.is_some_and(|p| p > 200.0)));
    let svg = render::svg(&h).unwrap();
    for name in render::SERIES {
        assert!(svg.contains(name), "series {name:?} missing");
    }
    assert!(
        svg.contains("rollback 0% (latency_"),
        "the rollback is marked with its reason"
    );
    assert!(svg.contains("canary positive %"));
}

/// Every field of the `CONFIG` entry is written at start from `[dataplane]` and the interface's
/// MAC, over whatever an earlier run or another version left in the (pinned) map; benchmark
/// flags stay.
#[test]
fn start_writes_every_global_setting() {
    let text = config_text("").replace(
        "heartbeat_timeout = \"30s\"",
        "heartbeat_timeout = \"30s\"\nhash_seed = 99\nsyn_replace_after = \"2500ms\"\nflood_guard_rate = 20000\nudp_idle_timeout = \"90s\"",
    );
    let mut dp = FakeDataPlane::new();
    // What a run of an older version left: no MAC, no SYN threshold, no guard.
    dp.config = canary_common::GlobalConfig {
        hash_seed: 1,
        flags: canary_common::CONFIG_FLAG_NO_FLOW_TABLE,
        ..canary_common::GlobalConfig::default()
    };
    let dir = store_dir("global");
    let c = Controller::new(
        Config::from_toml_str(&text).unwrap(),
        dp,
        true,
        StateStore::new(&dir),
        Metrics::new().unwrap(),
        Arc::new(RwLock::new(Status::default())),
        Some(LB_MAC),
        &BTreeMap::new(),
        0,
        1,
    )
    .expect("controller starts");
    assert_eq!(
        c.dataplane().config,
        canary_common::GlobalConfig {
            hash_seed: 99,
            flags: canary_common::CONFIG_FLAG_NO_FLOW_TABLE,
            lb_mac: LB_MAC,
            _pad: [0; 2],
            syn_replace_after_ms: 2500,
            flood_guard_rate: 20_000,
            udp_idle_timeout_ms: 90_000,
            _pad2: 0,
        }
    );
    // Defaults: 5 s, guard off; an interface without a MAC leaves lb_mac zero.
    let c = Controller::new(
        Config::from_toml_str(&config_text("")).unwrap(),
        FakeDataPlane::new(),
        false,
        StateStore::new(&dir),
        Metrics::new().unwrap(),
        Arc::new(RwLock::new(Status::default())),
        None,
        &BTreeMap::new(),
        0,
        1,
    )
    .expect("controller starts");
    let g = c.dataplane().config;
    assert_eq!(
        (
            g.lb_mac,
            g.syn_replace_after_ms,
            g.flood_guard_rate,
            g.hash_seed,
            g.udp_idle_timeout_ms
        ),
        ([0; 6], 5000, 0, crate::config::DEFAULT_HASH_SEED, 30_000)
    );
    // The interface gets a MAC (or another one) while the daemon runs: written at once, the
    // other settings kept.
    let mut c = c;
    assert!(c.update_lb_mac(Some(LB_MAC)).unwrap());
    assert!(!c.update_lb_mac(Some(LB_MAC)).unwrap());
    let g = c.dataplane().config;
    assert_eq!((g.lb_mac, g.syn_replace_after_ms), (LB_MAC, 5000));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A canary scrape that fails because this node is out of descriptors is "unknown": named as
/// `local` in status and metrics, and it neither rolls back nor counts toward
/// `metrics_missing_intervals`, even with `metrics_missing = "rollback"` after one interval.
/// The same backend refusing the connection is its own failure, named `refused`, and rolls
/// back.
#[test]
fn a_scrape_failing_for_a_local_reason_is_told_apart_and_not_held_against_the_canary() {
    use crate::upstream::{ScrapeProblem, ScrapeReason};
    let mut sim = Sim::new(
        "local-scrape",
        "  metrics_missing = \"rollback\"\n  metrics_missing_intervals = 1",
    );
    sim.run_until(100, |s| s.weight_bp() == 1000);
    assert_eq!(sim.weight_bp(), 1000);
    sim.backends.get_mut("k0").unwrap().scrape_failure = Some(ScrapeProblem {
        reason: ScrapeReason::Local,
        message: "scrape not made, local failure on this node: Too many open files (os error 24)"
            .into(),
    });
    sim.run_until(35, |_| false);
    assert_eq!((sim.phase(), sim.weight_bp()), (Phase::Stepping, 1000));
    let status = sim.c.status.read().unwrap().clone();
    let service = &status.services[0];
    let k0 = service.backends.iter().find(|b| b.name == "k0").unwrap();
    assert!(!k0.metrics_ok);
    assert_eq!(k0.metrics_problem_reasons, ["local"]);
    let d = service.last_decision.as_ref().unwrap();
    assert_eq!(d.reason.as_str(), "metrics_unknown", "{d}");
    assert!(
        d.message.contains("k0: scrape not made, local failure"),
        "{d}"
    );
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&sim.c.metrics.registry.gather())
        .unwrap();
    let needle = "canary_upstream_scrape_errors_total{backend=\"k0\",reason=\"local\",service=\"sentiment\"} 35";
    assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    assert!(
        text.contains("canary_decisions_total{action=\"hold\",reason=\"metrics_unknown\",service=\"sentiment\"}"),
        "{text}"
    );

    sim.backends.get_mut("k0").unwrap().scrape_failure = Some(ScrapeProblem {
        reason: ScrapeReason::Refused,
        message: "connection refused: nothing listens on that port".into(),
    });
    sim.run_until(15, |s| s.phase() == Phase::RolledBack);
    assert_eq!(sim.phase(), Phase::RolledBack);
    let status = sim.c.status.read().unwrap().clone();
    let service = &status.services[0];
    let k0 = service.backends.iter().find(|b| b.name == "k0").unwrap();
    assert_eq!(k0.metrics_problem_reasons, ["refused"]);
    let d = service.last_decision.as_ref().unwrap();
    assert_eq!(d.reason.as_str(), "metrics_missing", "{d}");
    assert!(d.message.contains("k0: connection refused"), "{d}");
}

/// Every kernel counter (all of `COUNTERS`, the flood guard's and the SYN rules' included) is
/// in `/status` and exported, outcomes as `canary_xdp_packets_total{outcome}`, events as
/// `canary_xdp_events_total{event}`, each with its own value.
#[test]
fn every_kernel_counter_is_in_status_and_metrics() {
    let mut sim = Sim::new("counters", "");
    for (i, c) in canary_common::Counter::ALL.iter().enumerate() {
        sim.c.dataplane_mut().counters.0[*c as usize] = 1000 + i as u64;
    }
    sim.tick();
    let status = sim.c.status.read().unwrap().clone();
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&sim.c.metrics.registry.gather())
        .unwrap();
    assert_eq!(status.xdp.len(), canary_common::COUNTERS as usize);
    for (i, c) in canary_common::Counter::ALL.iter().enumerate() {
        let value = 1000 + i as u64;
        assert_eq!(status.xdp.get(c.name()), Some(&value), "{}", c.name());
        let line = if c.is_outcome() {
            format!(
                "canary_xdp_packets_total{{outcome=\"{}\"}} {value}",
                c.name()
            )
        } else {
            format!("canary_xdp_events_total{{event=\"{}\"}} {value}", c.name())
        };
        assert!(text.contains(&line), "missing {line:?}");
    }
}
