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
use prometheus::{GaugeVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry};

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
    /// Requests a backend reports per new flow the kernel sent it (cross-check).
    pub upstream_flow_ratio: GaugeVec,
    pub decisions: IntCounterVec,
    /// 1 while a judged signal has no data (the judge holds for it).
    pub signal_without_data: IntGaugeVec,
    pub xdp_packets: IntCounterVec,
    pub xdp_events: IntCounterVec,
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
            xdp_packets: IntCounterVec::new(
                opts("canary_xdp_packets_total", "Packets seen by the XDP program, by terminal outcome."),
                &["outcome"],
            )?,
            xdp_events: IntCounterVec::new(
                opts("canary_xdp_events_total", "Events on the XDP program's path (flow table hits, fallbacks, ...)."),
                &["event"],
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
            .register(Box::new(m.upstream_flow_ratio.clone()))?;
        m.registry.register(Box::new(m.decisions.clone()))?;
        m.registry
            .register(Box::new(m.signal_without_data.clone()))?;
        m.registry.register(Box::new(m.xdp_packets.clone()))?;
        m.registry.register(Box::new(m.xdp_events.clone()))?;
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
    fn counters_follow_absolute_values_and_resets() {
        let c = IntCounter::new("c", "c").unwrap();
        set_counter(&c, 5);
        set_counter(&c, 12);
        assert_eq!(c.get(), 12);
        set_counter(&c, 3);
        assert_eq!(c.get(), 3);
    }
}
