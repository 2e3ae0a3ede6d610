//! `/status` and the metrics, rebuilt from the controller's state after every change.

use std::collections::BTreeMap;

use canary_common::Counter;

use super::Controller;
use crate::api::{BackendStatus, GroupStatus, ServiceStatus, SignalWithoutData, Status};
use crate::dataplane::DataPlane;
use crate::domain::Group;
use crate::judge::Signal;
use crate::metrics::{set_counter, LatencyHistogram};
use crate::upstream::{self, Series, Window};

/// The signals `canary_signal_without_data` reports on.
const JUDGED_SIGNALS: [Signal; 4] = [
    Signal::ErrorRate,
    Signal::LatencyMean,
    Signal::LatencyP95,
    Signal::Predictions,
];

impl<D: DataPlane> Controller<D> {
    /// Rebuilds `/status` and the metrics from the current state.
    pub(super) fn refresh(&mut self) {
        let mut status = Status::default();
        if let Ok(counters) = self.dp.counters() {
            for c in Counter::ALL {
                status.xdp.insert(c.name().to_string(), counters.get(c));
                let family = if c.is_outcome() {
                    &self.metrics.xdp_packets
                } else {
                    &self.metrics.xdp_events
                };
                set_counter(&family.with_label_values(&[c.name()]), counters.get(c));
            }
        }
        for rt in &self.services {
            let svc = &rt.config;
            let name = svc.name.as_str();
            let weight = rt.kernel_weight();
            self.metrics
                .weight_ratio
                .with_label_values(&[name])
                .set(weight.ratio());
            self.metrics.set_phase(name, rt.rollout.phase().as_str());
            let step = rt.rollout.step(&svc.rollout);
            self.metrics
                .rollout_step
                .with_label_values(&[name])
                .set(step.map_or(0, |s| i64::try_from(s + 1).unwrap_or(i64::MAX)));
            self.metrics
                .rollout_paused
                .with_label_values(&[name])
                .set(i64::from(rt.rollout.paused()));
            if let Some(share) = rt.measured_share {
                self.metrics
                    .measured_split
                    .with_label_values(&[name])
                    .set(share);
            }
            let window = rt.rollout.window();
            let without_data = &window.without_data;
            for s in JUDGED_SIGNALS {
                self.metrics
                    .signal_without_data
                    .with_label_values(&[name, s.as_str()])
                    .set(i64::from(without_data.iter().any(|(w, _)| *w == s)));
            }
            let mut groups = Vec::new();
            for (g, w, flows) in [
                (Group::Stable, &window.stable, window.flows.stable),
                (Group::Canary, &window.canary, window.flows.canary),
            ] {
                groups.push(group_status(g.as_str(), w, flows));
                // The exported histogram is cumulative (Prometheus semantics): the sum of the
                // group's backends' own histograms, not the step window.
                let cumulative = rt
                    .backends()
                    .filter(|(b, _)| b.group == g)
                    .filter_map(|(_, state)| state.baseline.latency.present())
                    .fold(None::<upstream::Histogram>, |acc, h| {
                        Some(acc.map_or_else(|| h.clone(), |a| a.plus(h)))
                    });
                if let Some(h) = cumulative {
                    self.metrics
                        .latency
                        .set(name, g.as_str(), latency_histogram(&h));
                }
            }
            let mut backends = Vec::new();
            let mut reported: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
            for (b, br) in rt.backends() {
                let idx = self.programmer.backend_index(&svc.name, &b.name);
                let stats = idx
                    .and_then(|i| self.dp.backend_stats(i).ok())
                    .unwrap_or_default();
                let labels = [name, b.group.as_str(), b.name.as_str()];
                set_counter(
                    &self.metrics.backend_packets.with_label_values(&labels),
                    stats.packets,
                );
                set_counter(
                    &self.metrics.backend_bytes.with_label_values(&labels),
                    stats.bytes,
                );
                set_counter(
                    &self.metrics.backend_flows.with_label_values(&labels),
                    stats.new_flows,
                );
                let up = br.up();
                self.metrics
                    .backend_up
                    .with_label_values(&labels)
                    .set(i64::from(up));
                if let Some(r) = br.reported_requests {
                    let ratio = if stats.new_flows > 0 {
                        r / stats.new_flows as f64
                    } else {
                        0.0
                    };
                    self.metrics
                        .upstream_flow_ratio
                        .with_label_values(&labels)
                        .set(ratio);
                    let e = reported.entry(b.group.as_str()).or_default();
                    e.0 += r as u64;
                    e.1 += br.baseline.errors.present().copied().unwrap_or(0.0) as u64;
                }
                let down_reason = if br.mac.is_none() {
                    Some(format!(
                        "MAC of {} unknown: not in the neighbour table (is it on this L2 segment?) and no `mac` configured",
                        b.address
                    ))
                } else if br.health.up == Some(false) {
                    br.health.last_failure.clone()
                } else if br.health.up.is_none() {
                    Some("not probed yet".to_string())
                } else {
                    None
                };
                backends.push(BackendStatus {
                    name: b.name.clone(),
                    group: b.group.as_str().to_string(),
                    address: b.address.to_string(),
                    up,
                    down_reason,
                    packets: stats.packets,
                    bytes: stats.bytes,
                    new_flows: stats.new_flows,
                    reported_requests: br.reported_requests,
                    metrics_ok: br.metrics_problems.is_empty(),
                    metrics_problem: (!br.metrics_problems.is_empty()).then(|| {
                        let all: Vec<String> = br
                            .metrics_problems
                            .iter()
                            .map(ToString::to_string)
                            .collect();
                        all.join("; ")
                    }),
                    metrics_problem_reasons: {
                        let mut reasons: Vec<String> = br
                            .metrics_problems
                            .iter()
                            .map(|p| p.reason.as_str().to_string())
                            .collect();
                        reasons.dedup();
                        reasons
                    },
                    reported_versions: br.baseline.versions.clone(),
                });
            }
            for (g, (requests, errors)) in reported {
                set_counter(
                    &self.metrics.upstream_requests.with_label_values(&[name, g]),
                    requests,
                );
                set_counter(
                    &self.metrics.upstream_errors.with_label_values(&[name, g]),
                    errors,
                );
            }
            for g in [Group::Stable, Group::Canary] {
                let mut classes: BTreeMap<&str, f64> = BTreeMap::new();
                for (b, br) in rt.backends() {
                    if b.group != g {
                        continue;
                    }
                    for (class, n) in br.baseline.predictions.present().into_iter().flatten() {
                        *classes.entry(class).or_default() += n;
                    }
                }
                for (class, n) in classes {
                    let labels = [name, g.as_str(), class];
                    set_counter(
                        &self.metrics.upstream_predictions.with_label_values(&labels),
                        n as u64,
                    );
                }
            }
            status.services.push(ServiceStatus {
                name: svc.name.clone(),
                vip: svc.vip.to_string(),
                protocol: svc.protocol.as_str().to_string(),
                phase: rt.rollout.phase().as_str().to_string(),
                paused: rt.rollout.paused(),
                step,
                steps: svc.rollout.steps.iter().map(|w| w.percent()).collect(),
                weight_percent: weight.percent(),
                measured_canary_share: rt.measured_share,
                signals_without_data: without_data
                    .iter()
                    .map(|(s, why)| SignalWithoutData {
                        signal: s.as_str().to_string(),
                        why: why.clone(),
                    })
                    .collect(),
                groups,
                backends,
                last_decision: rt.rollout.last_decision().cloned(),
                events: rt.events.iter().cloned().collect(),
                dry_run: svc
                    .rollout
                    .dry_run
                    .iter()
                    .map(|s| s.as_str().to_string())
                    .collect(),
                cluster: rt
                    .applied
                    .as_ref()
                    .map(|a| crate::api::ServiceClusterStatus {
                        applied_version: a.version,
                        decided_by: a.decided_by.clone(),
                        refused: a.refused.clone(),
                    }),
            });
        }
        status.cluster = self.cluster_status();
        *self
            .status
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = status;
    }
}

fn group_status(name: &str, w: &Window, flows: u64) -> GroupStatus {
    let requests = w.requests.present().copied();
    let errors = w.errors.present().copied();
    let (mean, p95) = match &w.latency {
        // A p95 in the `+Inf` bucket shows as the last finite bound.
        Series::Present(h) if h.count > 0.0 => (
            Some(h.sum / h.count),
            h.value_at_rank(0.95 * h.count)
                .or_else(|| h.bounds.last().copied()),
        ),
        Series::Present(_) | Series::Missing => (None, None),
    };
    GroupStatus {
        group: name.to_string(),
        requests: requests.unwrap_or(0),
        errors: errors.unwrap_or(0),
        error_rate: match (requests, errors) {
            (Some(n), Some(e)) if n > 0 => Some(e as f64 / n as f64),
            _ => None,
        },
        latency_mean_seconds: mean,
        latency_p95_seconds: p95,
        predictions: w.predictions.present().cloned().unwrap_or_default(),
        new_flows: flows,
    }
}

fn latency_histogram(h: &upstream::Histogram) -> LatencyHistogram {
    LatencyHistogram {
        buckets: h
            .bounds
            .iter()
            .zip(&h.cumulative)
            .filter(|(b, _)| b.is_finite())
            .map(|(b, c)| (*b, c.round() as u64))
            .collect(),
        sum: h.sum,
        count: h.count.round() as u64,
    }
}
