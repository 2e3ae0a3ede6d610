//! The daemon's Prometheus metrics (`canary_` prefix, base units, ratios 0..1).
//!
//! Kernel and backend counters are absolute values read from elsewhere; [`set_counter`] makes a
//! Prometheus counter follow such a value (and reset with it when the source restarts). The
//! upstream latency histogram is aggregated from the backends' own histograms, so it is served
//! by a small custom collector rather than by observing samples one by one.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use prometheus::core::{Collector, Desc};
use prometheus::proto::{Bucket, Histogram, LabelPair, Metric, MetricFamily, MetricType};
use prometheus::{GaugeVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

/// Phases exported by `canary_rollout_phase` (1 for the current one, 0 for the others).
pub const PHASES: [&str; 5] = ["idle", "pending", "stepping", "promoted", "rolled_back"];

/// All metric families of the daemon.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub weight_ratio: GaugeVec,
    pub rollout_phase: IntGaugeVec,
    pub rollout_step: IntGaugeVec,
    pub rollout_paused: IntGaugeVec,
    pub backend_packets: IntCounterVec,
    pub backend_bytes: IntCounterVec,
    pub backend_flows: IntCounterVec,
    pub backend_up: IntGaugeVec,
    pub measured_split: GaugeVec,
    pub upstream_requests: IntCounterVec,
    pub upstream_errors: IntCounterVec,
    /// Failed scrapes and unusable series, per backend and reason.
    pub upstream_scrape_errors: IntCounterVec,
    /// Requests a backend reports per new flow the kernel sent it (cross-check).
    pub upstream_flow_ratio: GaugeVec,
    pub decisions: IntCounterVec,
    /// 1 while a judged signal has no data (the judge holds for it).
    pub signal_without_data: IntGaugeVec,
    /// Verdicts of dry-run signals (judged, never acted on).
    pub dry_run_verdicts: IntCounterVec,
    pub notify_sent: IntCounterVec,
    pub notify_dropped: IntCounterVec,
    /// Consecutive hold decisions at the current weight (see [`Metrics::record_decision`]).
    pub held_intervals: IntGaugeVec,
    /// Wall-clock time of the last heartbeat written to the kernel, per service.
    pub heartbeat_timestamp: GaugeVec,
    /// `dataplane.heartbeat_timeout`, per service (the dead-man switch's limit).
    pub heartbeat_timeout: GaugeVec,
    pub upstream_predictions: IntCounterVec,
    /// Size of the (pinned) flow table, in entries.
    pub flow_table_entries_limit: IntGauge,
    pub xdp_packets: IntCounterVec,
    pub xdp_events: IntCounterVec,
    /// Open admin API connections.
    pub admin_connections: IntGauge,
    /// Admin API connections the daemon closed, by reason (cap, timeouts).
    pub admin_connections_closed: IntCounterVec,
    pub latency: UpstreamLatency,
}

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help)
}

impl Metrics {
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let sgb = &["service", "group", "backend"];
        let m = Metrics {
            weight_ratio: GaugeVec::new(
                opts("canary_weight_ratio", "Canary weight programmed in the kernel, share of new flows (0..1)."),
                &["service"],
            )?,
            rollout_phase: IntGaugeVec::new(
                opts("canary_rollout_phase", "Rollout phase: 1 for the current phase."),
                &["service", "phase"],
            )?,
            rollout_step: IntGaugeVec::new(
                opts("canary_rollout_step", "Current rollout step (1-based; 0 before the first)."),
                &["service"],
            )?,
            rollout_paused: IntGaugeVec::new(
                opts("canary_rollout_paused", "1 when an operator paused the rollout."),
                &["service"],
            )?,
            backend_packets: IntCounterVec::new(
                opts("canary_backend_packets_total", "Packets the XDP program forwarded to the backend."),
                sgb,
            )?,
            backend_bytes: IntCounterVec::new(
                opts("canary_backend_bytes_total", "Bytes (whole frames) forwarded to the backend."),
                sgb,
            )?,
            backend_flows: IntCounterVec::new(
                opts("canary_backend_flows_total", "New flows the XDP program sent to the backend."),
                sgb,
            )?,
            backend_up: IntGaugeVec::new(
                opts("canary_backend_up", "1 when the backend is in its group's table (health checks pass)."),
                sgb,
            )?,
            measured_split: GaugeVec::new(
                opts("canary_measured_split_ratio", "Canary share of new flows counted by the kernel over the last window (0..1)."),
                &["service"],
            )?,
            upstream_requests: IntCounterVec::new(
                opts("canary_upstream_requests_total", "Requests the backends of the group report."),
                &["service", "group"],
            )?,
            upstream_errors: IntCounterVec::new(
                opts("canary_upstream_errors_total", "Failed requests the backends of the group report."),
                &["service", "group"],
            )?,
            upstream_scrape_errors: IntCounterVec::new(
                opts("canary_upstream_scrape_errors_total", "Polls in which a backend's metrics, or one of its series, could not be used, by reason (the series count as missing)."),
                &["service", "backend", "reason"],
            )?,
            upstream_flow_ratio: GaugeVec::new(
                opts("canary_upstream_requests_per_flow_ratio", "Requests the backend reports per new flow the kernel sent it (a dead exporter shows as 0)."),
                sgb,
            )?,
            decisions: IntCounterVec::new(
                opts("canary_decisions_total", "Decisions taken, by action and reason."),
                &["service", "action", "reason"],
            )?,
            signal_without_data: IntGaugeVec::new(
                opts("canary_signal_without_data", "1 while a judged signal has no data (no latency observations, no predictions, p95 in the +Inf bucket): the judge holds, and metrics_missing applies."),
                &["service", "signal"],
            )?,
            dry_run_verdicts: IntCounterVec::new(
                opts("canary_dry_run_verdicts_total", "Verdicts of dry-run signals (judged and reported, never holding or rolling back), by signal and verdict; verdict=\"fail\" counts what would have rolled back."),
                &["service", "signal", "verdict"],
            )?,
            notify_sent: IntCounterVec::new(
                opts("canary_notify_sent_total", "Notifications the sink's receiver accepted (2xx)."),
                &["notify"],
            )?,
            notify_dropped: IntCounterVec::new(
                opts("canary_notify_dropped_total", "Notifications dropped: reason=\"queue_full\" (the sink's queue was full), \"failed\" (every attempt failed), \"closed\"."),
                &["notify", "reason"],
            )?,
            held_intervals: IntGaugeVec::new(
                opts("canary_rollout_held_intervals", "Evaluations in a row that held the rollout at its weight (0 after any other decision)."),
                &["service"],
            )?,
            heartbeat_timestamp: GaugeVec::new(
                opts("canary_heartbeat_timestamp_seconds", "Unix time of the last heartbeat the daemon wrote for the service (the dead-man switch engages heartbeat_timeout later)."),
                &["service"],
            )?,
            heartbeat_timeout: GaugeVec::new(
                opts("canary_heartbeat_timeout_seconds", "Heartbeat age after which the kernel sends the service's new flows to stable only (dead-man switch)."),
                &["service"],
            )?,
            upstream_predictions: IntCounterVec::new(
                opts("canary_upstream_predictions_total", "Predictions the backends of the group report, by predicted class."),
                &["service", "group", "class"],
            )?,
            flow_table_entries_limit: IntGauge::with_opts(opts(
                "canary_flow_table_entries_limit",
                "Size of the flow table in entries (an LRU table: when full, the least recently used flow is evicted).",
            ))?,
            xdp_packets: IntCounterVec::new(
                opts("canary_xdp_packets_total", "Packets seen by the XDP program, by terminal outcome."),
                &["outcome"],
            )?,
            xdp_events: IntCounterVec::new(
                opts("canary_xdp_events_total", "Events on the XDP program's path (flow table hits, fallbacks, ...)."),
                &["event"],
            )?,
            admin_connections: IntGauge::with_opts(opts(
                "canary_admin_connections",
                "Open connections to the admin API (at most admin.max_connections).",
            ))?,
            admin_connections_closed: IntCounterVec::new(
                opts("canary_admin_connections_closed_total", "Admin API connections the daemon closed: evicted_at_cap (the oldest idle one, to make room at admin.max_connections), refused_at_cap (every one busy), header_timeout, idle_timeout."),
                &["reason"],
            )?,
            latency: UpstreamLatency::default(),
            registry,
        };
        m.registry.register(Box::new(m.weight_ratio.clone()))?;
        m.registry.register(Box::new(m.rollout_phase.clone()))?;
        m.registry.register(Box::new(m.rollout_step.clone()))?;
        m.registry.register(Box::new(m.rollout_paused.clone()))?;
        m.registry.register(Box::new(m.backend_packets.clone()))?;
        m.registry.register(Box::new(m.backend_bytes.clone()))?;
        m.registry.register(Box::new(m.backend_flows.clone()))?;
        m.registry.register(Box::new(m.backend_up.clone()))?;
        m.registry.register(Box::new(m.measured_split.clone()))?;
        m.registry.register(Box::new(m.upstream_requests.clone()))?;
        m.registry.register(Box::new(m.upstream_errors.clone()))?;
        m.registry
            .register(Box::new(m.upstream_scrape_errors.clone()))?;
        m.registry
            .register(Box::new(m.upstream_flow_ratio.clone()))?;
        m.registry.register(Box::new(m.decisions.clone()))?;
        m.registry
            .register(Box::new(m.signal_without_data.clone()))?;
        m.registry.register(Box::new(m.held_intervals.clone()))?;
        m.registry.register(Box::new(m.dry_run_verdicts.clone()))?;
        m.registry.register(Box::new(m.notify_sent.clone()))?;
        m.registry.register(Box::new(m.notify_dropped.clone()))?;
        m.registry
            .register(Box::new(m.heartbeat_timestamp.clone()))?;
        m.registry.register(Box::new(m.heartbeat_timeout.clone()))?;
        m.registry
            .register(Box::new(m.upstream_predictions.clone()))?;
        m.registry
            .register(Box::new(m.flow_table_entries_limit.clone()))?;
        m.registry.register(Box::new(m.xdp_packets.clone()))?;
        m.registry.register(Box::new(m.xdp_events.clone()))?;
        m.registry.register(Box::new(m.admin_connections.clone()))?;
        m.registry
            .register(Box::new(m.admin_connections_closed.clone()))?;
        m.registry.register(Box::new(m.latency.clone()))?;
        Ok(m)
    }

    /// Export a service's phase as one-hot gauges.
    pub fn set_phase(&self, service: &str, phase: &str) {
        for p in PHASES {
            self.rollout_phase
                .with_label_values(&[service, p])
                .set(i64::from(p == phase));
        }
    }

    /// Counts a decision (`canary_decisions_total`) and tracks how many evaluations in a row
    /// held the rollout: a hold adds one, any other decision starts again from zero.
    pub fn record_decision(&self, service: &str, action: &str, reason: &str) {
        self.decisions
            .with_label_values(&[service, action, reason])
            .inc();
        let held = self.held_intervals.with_label_values(&[service]);
        if action == "hold" {
            held.inc();
        } else {
            held.set(0);
        }
    }

    /// A heartbeat was written for `service` at `at_ms` (Unix milliseconds).
    pub fn record_heartbeat(&self, service: &str, at_ms: u64, timeout: std::time::Duration) {
        self.heartbeat_timestamp
            .with_label_values(&[service])
            .set(at_ms as f64 / 1000.0);
        self.heartbeat_timeout
            .with_label_values(&[service])
            .set(timeout.as_secs_f64());
    }
}

/// Make `counter` equal an absolute value read from a source that only grows, except that it
/// starts again from zero when the source restarts.
pub fn set_counter(counter: &IntCounter, value: u64) {
    let current = counter.get();
    if value >= current {
        counter.inc_by(value - current);
    } else {
        counter.reset();
        counter.inc_by(value);
    }
}

/// Cumulative latency histogram of one (service, group), in seconds.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LatencyHistogram {
    /// (upper bound in seconds, cumulative count), ascending, `+Inf` excluded.
    pub buckets: Vec<(f64, u64)>,
    pub sum: f64,
    pub count: u64,
}

/// `canary_upstream_latency_seconds{service,group}`: the groups' aggregated histograms.
#[derive(Clone, Default)]
pub struct UpstreamLatency {
    inner: Arc<Mutex<BTreeMap<(String, String), LatencyHistogram>>>,
}

const LATENCY_NAME: &str = "canary_upstream_latency_seconds";
const LATENCY_HELP: &str =
    "Request latency the backends of the group report (their histograms, summed).";

impl UpstreamLatency {
    pub fn set(&self, service: &str, group: &str, histogram: LatencyHistogram) {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert((service.to_string(), group.to_string()), histogram);
    }
}

fn label(name: &str, value: &str) -> LabelPair {
    let mut l = LabelPair::default();
    l.set_name(name.to_string());
    l.set_value(value.to_string());
    l
}

impl Collector for UpstreamLatency {
    fn desc(&self) -> Vec<&Desc> {
        Vec::new()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let map = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if map.is_empty() {
            return Vec::new();
        }
        let mut family = MetricFamily::default();
        family.set_name(LATENCY_NAME.to_string());
        family.set_help(LATENCY_HELP.to_string());
        family.set_field_type(MetricType::HISTOGRAM);
        for ((service, group), h) in map.iter() {
            let mut hist = Histogram::default();
            hist.set_sample_count(h.count);
            hist.set_sample_sum(h.sum);
            let buckets = h
                .buckets
                .iter()
                .map(|(upper, cumulative)| {
                    let mut b = Bucket::default();
                    b.set_upper_bound(*upper);
                    b.set_cumulative_count(*cumulative);
                    b
                })
                .collect();
            hist.set_bucket(buckets);
            let mut metric = Metric::default();
            metric.set_label(vec![label("group", group), label("service", service)]);
            metric.set_histogram(hist);
            family.mut_metric().push(metric);
        }
        vec![family]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(registry: &Registry) -> String {
        prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .unwrap()
    }

    #[test]
    fn exports_required_families() {
        let m = Metrics::new().unwrap();
        m.weight_ratio.with_label_values(&["s"]).set(0.25);
        m.set_phase("s", "stepping");
        m.rollout_step.with_label_values(&["s"]).set(2);
        set_counter(
            &m.backend_packets.with_label_values(&["s", "canary", "b"]),
            10,
        );
        set_counter(&m.xdp_packets.with_label_values(&["tx"]), 3);
        m.latency.set(
            "s",
            "canary",
            LatencyHistogram {
                buckets: vec![(0.1, 5), (0.5, 9)],
                sum: 1.5,
                count: 10,
            },
        );
        let t = text(&m.registry);
        for needle in [
            "canary_weight_ratio{service=\"s\"} 0.25",
            "canary_rollout_phase{phase=\"stepping\",service=\"s\"} 1",
            "canary_rollout_phase{phase=\"promoted\",service=\"s\"} 0",
            "canary_rollout_step{service=\"s\"} 2",
            "canary_backend_packets_total{backend=\"b\",group=\"canary\",service=\"s\"} 10",
            "canary_xdp_packets_total{outcome=\"tx\"} 3",
            "canary_upstream_latency_seconds_bucket{group=\"canary\",service=\"s\",le=\"0.5\"} 9",
            "canary_upstream_latency_seconds_bucket{group=\"canary\",service=\"s\",le=\"+Inf\"} 10",
            "canary_upstream_latency_seconds_count{group=\"canary\",service=\"s\"} 10",
        ] {
            assert!(t.contains(needle), "missing {needle:?} in\n{t}");
        }
    }

    #[test]
    fn held_intervals_count_holds_in_a_row_and_reset_on_any_other_decision() {
        let m = Metrics::new().unwrap();
        let held = |s: &str| m.held_intervals.with_label_values(&[s]).get();
        m.record_decision("s", "step", "healthy");
        assert_eq!(held("s"), 0);
        for n in 1..=3 {
            m.record_decision("s", "hold", "inconclusive");
            assert_eq!(held("s"), n);
        }
        m.record_decision("t", "hold", "insufficient_samples");
        assert_eq!(held("t"), 1, "per service");
        assert_eq!(held("s"), 3);
        m.record_decision("s", "hold", "metrics_missing");
        assert_eq!(held("s"), 4, "any hold reason counts");
        m.record_decision("s", "rollback", "error_spike");
        assert_eq!(held("s"), 0);
        assert_eq!(
            m.decisions
                .with_label_values(&["s", "hold", "inconclusive"])
                .get(),
            3
        );
        let t = text(&m.registry);
        assert!(
            t.contains("canary_rollout_held_intervals{service=\"t\"} 1"),
            "{t}"
        );
    }

    #[test]
    fn heartbeat_gauges_give_the_dead_man_deadline() {
        let m = Metrics::new().unwrap();
        m.record_heartbeat("s", 1_700_000_000_250, std::time::Duration::from_secs(30));
        let t = text(&m.registry);
        for needle in [
            "canary_heartbeat_timestamp_seconds{service=\"s\"} 1700000000.25",
            "canary_heartbeat_timeout_seconds{service=\"s\"} 30",
        ] {
            assert!(t.contains(needle), "missing {needle:?} in\n{t}");
        }
    }

    #[test]
    fn counters_follow_absolute_values_and_resets() {
        let c = IntCounter::new("c", "c").unwrap();
        set_counter(&c, 5);
        set_counter(&c, 12);
        assert_eq!(c.get(), 12);
        set_counter(&c, 3);
        assert_eq!(c.get(), 3);
    }
}

#[cfg(test)]
mod readme {
    //! The README documents every metric, label value and configuration key the daemon has.

    use super::Metrics;

    const README: &str = include_str!("../../README.md");

    fn documented(name: &str) -> bool {
        README.contains(&format!("`{name}`"))
            || README.contains(&format!("`{name}{{"))
            || README.contains(&format!("{name} ="))
    }

    #[test]
    fn every_metric_and_label_value_is_in_the_readme() {
        let m = Metrics::new().unwrap();
        let mut missing: Vec<String> = m
            .registry
            .gather()
            .iter()
            .map(|f| f.name().to_string())
            .chain(
                [
                    "canary_upstream_latency_seconds",
                    "canary_admin_connections_closed_total",
                ]
                .map(String::from),
            )
            .filter(|n| !documented(n))
            .collect();
        let values = canary_common::Counter::ALL
            .iter()
            .map(|c| c.name())
            .chain(
                crate::upstream::ScrapeReason::ALL
                    .iter()
                    .map(|r| r.as_str()),
            )
            .chain(
                crate::admin_server::CloseReason::ALL
                    .iter()
                    .map(|r| r.as_str()),
            )
            .chain(["queue_full", "failed", "closed"])
            .chain(crate::notify::EventKind::ALL.iter().map(|k| k.as_str()))
            .chain(crate::judge::Signal::DECIDING.iter().map(|s| s.as_str()));
        missing.extend(values.filter(|v| !documented(v)).map(String::from));
        assert!(missing.is_empty(), "not in README.md: {missing:?}");
    }

    #[test]
    fn every_config_key_is_in_the_readme() {
        use crate::config::raw::*;
        let missing: Vec<&str> = ROOT_KEYS
            .iter()
            .chain(DATAPLANE_KEYS)
            .chain(ADMIN_KEYS)
            .chain(SERVICE_KEYS)
            .chain(BACKEND_KEYS)
            .chain(ROLLOUT_KEYS)
            .chain(THRESHOLD_KEYS)
            .chain(UPSTREAM_KEYS)
            .chain(NOTIFY_KEYS)
            .copied()
            .filter(|k| {
                !(README.contains(&format!("\n{k} ="))
                    || README.contains(&format!("  {k} ="))
                    || README.contains(&format!("[{k}]"))
                    || README.contains(&format!("[[{k}]]"))
                    || README.contains(&format!(".{k}]")))
            })
            .collect();
        assert!(
            missing.is_empty(),
            "config keys not in README.md: {missing:?}"
        );
    }
}
