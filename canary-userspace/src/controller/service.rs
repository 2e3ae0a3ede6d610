//! One service as the controller holds it: its configuration, its rollout and the state of
//! each of its backends, together.

use std::collections::VecDeque;
use std::time::Duration;

use canary_common::{ServiceControl, ServiceStats, Tunnel};

use super::store::Applied;
use crate::config::{BackendConfig, ServiceConfig};
use crate::dataplane::{BackendSpec, ServiceSpec};
use crate::domain::{Forwarding, Group, RollbackMode, Weight};
use crate::judge::FlowCounts;
use crate::metrics::Metrics;
use crate::observe::{Health, WarmUp};
use crate::rollout::{BackendPoll, Decision, Event, Output, Poll, Rollout};
use crate::upstream::{self, ScrapeProblem, ScrapeReason, Snapshot, Window};

/// Decisions kept for `/status`.
const EVENTS_KEPT: usize = 50;

/// What the controller knows about one backend beyond its configuration.
#[derive(Clone, Debug, Default)]
pub(super) struct BackendState {
    pub(super) health: Health,
    pub(super) mac: Option<[u8; 6]>,
    /// Baseline of the backend's counters (advanced every poll).
    pub(super) baseline: Snapshot,
    /// Why its metrics, or some of its series, were missing in the latest poll.
    pub(super) metrics_problems: Vec<ScrapeProblem>,
    pub(super) reported_requests: Option<f64>,
}

impl BackendState {
    fn new(config: &BackendConfig) -> Self {
        BackendState {
            mac: config.mac,
            ..BackendState::default()
        }
    }

    /// In its group's table: healthy and its MAC known.
    pub(super) fn up(&self) -> bool {
        self.health.up == Some(true) && self.mac.is_some()
    }
}

/// A service: its configuration, its rollout, and one [`BackendState`] per configured backend
/// (`backends[i]` is the state of `config.backends[i]`).
pub(super) struct Service {
    pub(super) config: ServiceConfig,
    pub(super) rollout: Rollout,
    backends: Vec<BackendState>,
    pub(super) last_service_stats: Option<ServiceStats>,
    pub(super) events: VecDeque<Decision>,
    pub(super) warming: bool,
    pub(super) reset_epoch_ns: u64,
    pub(super) measured_share: Option<f64>,
    /// Cluster mode: the documents applied (the kernel's weight is theirs); `None` on one node
    /// (the kernel's weight is the rollout's).
    pub(super) applied: Option<Applied>,
    /// Reset rollbacks decided so far (a cluster document's `reset_epoch`).
    pub(super) reset_count: u64,
    /// The heartbeat last written to the kernel.
    pub(super) heartbeat_ns: u64,
}

impl Service {
    /// The service with its rollout restored (`stored`, read from `state_path`), or, when
    /// there is none and the data plane still holds a canary weight (`pinned`, after a
    /// restart), continued at that weight, or new; and what the rollout asks for now. Backends
    /// start "not probed yet".
    pub(super) fn restore(
        config: ServiceConfig,
        stored: Option<Rollout>,
        state_path: &std::path::Path,
        now_ms: u64,
        pinned: Option<Weight>,
    ) -> (Service, Output) {
        let fingerprint = config.canary_fingerprint();
        let (rollout, output) = match stored {
            None if pinned.is_some_and(|w| w > Weight::ZERO) && !fingerprint.is_empty() => {
                let weight = pinned.expect("checked above");
                Rollout::adopt(now_ms, fingerprint, weight, state_path)
            }
            Some(mut r) => {
                let out = r.on_event(
                    now_ms,
                    Event::CanaryChanged { fingerprint },
                    &config.rollout,
                    &config.upstream,
                );
                (r, out)
            }
            None => Rollout::new(now_ms, fingerprint, &config.rollout),
        };
        let mut service = Service {
            backends: config.backends.iter().map(BackendState::new).collect(),
            config,
            rollout,
            last_service_stats: None,
            events: VecDeque::new(),
            warming: false,
            reset_epoch_ns: 0,
            measured_share: None,
            applied: None,
            reset_count: 0,
            heartbeat_ns: 0,
        };
        // A restored rollout shows its last decision; a new one shows the decision it starts with.
        if output.decision.is_none() {
            if let Some(d) = service.rollout.last_decision() {
                service.events.push_back(d.clone());
            }
        }
        (service, output)
    }

    pub(super) fn name(&self) -> &str {
        &self.config.name
    }

    /// Each configured backend with its state.
    pub(super) fn backends(&self) -> impl Iterator<Item = (&BackendConfig, &BackendState)> {
        self.config.backends.iter().zip(&self.backends)
    }

    pub(super) fn backends_mut(
        &mut self,
    ) -> impl Iterator<Item = (&BackendConfig, &mut BackendState)> {
        self.config.backends.iter().zip(&mut self.backends)
    }

    /// Position of the backend called `name`.
    pub(super) fn backend_position(&self, name: &str) -> Option<usize> {
        self.config.backends.iter().position(|b| b.name == name)
    }

    pub(super) fn backend_mut(&mut self, position: usize) -> (&BackendConfig, &mut BackendState) {
        (
            &self.config.backends[position],
            &mut self.backends[position],
        )
    }

    /// A new configuration of the same service: backends keep their state by name (a
    /// configured MAC wins), new ones start "not probed yet".
    pub(super) fn reconfigure(&mut self, config: ServiceConfig) {
        let mut old: Vec<(String, BackendState)> = self
            .config
            .backends
            .iter()
            .map(|b| b.name.clone())
            .zip(std::mem::take(&mut self.backends))
            .collect();
        self.backends = config
            .backends
            .iter()
            .map(|b| {
                let mut state = match old.iter().position(|(name, _)| *name == b.name) {
                    Some(i) => old.swap_remove(i).1,
                    None => BackendState::new(b),
                };
                if b.mac.is_some() {
                    state.mac = b.mac;
                }
                state
            })
            .collect();
        self.config = config;
    }

    /// This poll for the rollout: each group's increases, the kernel's new flows, and why
    /// series of the backends in service are missing.
    pub(super) fn poll(&self, deltas: &[Option<Window>], flows: FlowCounts) -> Poll {
        let mut problems = Vec::new();
        let mut local_failure = false;
        for ((b, state), delta) in self.backends().zip(deltas) {
            if state.health.up != Some(true) || delta.is_none() {
                continue;
            }
            for p in &state.metrics_problems {
                local_failure |= p.reason == ScrapeReason::Local;
                problems.push(format!("{}: {} [{}]", b.name, p.message, p.reason.as_str()));
            }
        }
        Poll {
            stable: self.window(Group::Stable, deltas),
            canary: self.window(Group::Canary, deltas),
            flows,
            backends: self.backend_polls(deltas),
            problems,
            local_failure,
        }
    }

    /// The increases of a group's in-service backends over this poll, summed.
    pub(super) fn window(&self, group: Group, deltas: &[Option<Window>]) -> Window {
        let windows: Vec<&Window> = self
            .backends()
            .zip(deltas)
            .filter(|((b, state), _)| b.group == group && state.health.up == Some(true))
            .filter_map(|(_, delta)| delta.as_ref())
            .collect();
        upstream::aggregate(windows)
    }

    /// This poll's increase of every in-service backend (the judge's units).
    pub(super) fn backend_polls(&self, deltas: &[Option<Window>]) -> Vec<BackendPoll> {
        self.backends()
            .zip(deltas)
            .filter(|((_, state), _)| state.health.up == Some(true))
            .filter_map(|((b, _), delta)| {
                Some(BackendPoll {
                    group: b.group,
                    backend: b.name.clone(),
                    window: delta.clone()?,
                })
            })
            .collect()
    }

    /// The canary weight this node's kernel holds: the rollout's on one node, the applied
    /// document's in a cluster.
    pub(super) fn kernel_weight(&self) -> Weight {
        match &self.applied {
            None => self.rollout.weight(),
            Some(applied) => Weight::from_basis_points(applied.weight_bp),
        }
    }

    /// The weight a decision of this node's rollout means for the kernel.
    pub(super) fn decided_weight(&self) -> Weight {
        // A service without canary backends never sends anything to canary, whatever the state.
        if self.config.group(Group::Canary).next().is_some() {
            self.rollout.weight()
        } else {
            Weight::ZERO
        }
    }

    /// The service's `CONTROL` entry with the heartbeat `heartbeat_ns`: the one computation of
    /// weight, epoch and heartbeat.
    pub(super) fn control(&self, heartbeat_timeout: Duration, heartbeat_ns: u64) -> ServiceControl {
        // A service without canary backends never sends anything to canary, whatever the state.
        let has_canary = self.config.group(Group::Canary).next().is_some();
        ServiceControl {
            canary_weight: if has_canary {
                self.kernel_weight().basis_points()
            } else {
                0
            },
            _pad: 0,
            reset_epoch_ns: self.reset_epoch_ns,
            heartbeat_ns,
            heartbeat_timeout_ns: heartbeat_timeout.as_nanos().try_into().unwrap_or(u64::MAX),
        }
    }

    /// A backend's outer addresses: for `ipip` services, from the tunnel source to the
    /// backend's address; none for `l2` services.
    fn tunnel(&self, b: &BackendConfig) -> Tunnel {
        match (self.config.forwarding, self.config.tunnel_source) {
            (Forwarding::Ipip, Some(source)) => Tunnel {
                dst: crate::dataplane::vip_key(b.address).addr,
                src: crate::dataplane::vip_key(source).addr,
            },
            _ => Tunnel::default(),
        }
    }

    /// The service as the data plane should hold it now.
    pub(super) fn spec(&self, heartbeat_timeout: Duration, now_ns: u64) -> ServiceSpec {
        ServiceSpec {
            name: self.config.name.clone(),
            vip: self.config.vip,
            protocol: self.config.protocol,
            affinity: self.config.affinity,
            forwarding: self.config.forwarding,
            backends: self
                .backends()
                .map(|(b, state)| BackendSpec {
                    name: b.name.clone(),
                    group: b.group,
                    mac: state.mac.unwrap_or_default(),
                    tunnel: self.tunnel(b),
                    up: state.up(),
                })
                .collect(),
            initial_control: self.control(heartbeat_timeout, now_ns),
        }
    }

    /// Applies a rollout output: reset epoch, decision log and metric; returns the warm-up
    /// the daemon must run, if one starts.
    pub(super) fn apply(&mut self, out: Output, now_ns: u64, metrics: &Metrics) -> Option<WarmUp> {
        let service = self.config.name.as_str();
        if out.reset_epoch && self.config.rollout.rollback == RollbackMode::Reset {
            self.reset_count += 1;
            // In a cluster each node sets its own epoch when it applies the document.
            if self.applied.is_none() {
                self.reset_epoch_ns = now_ns.max(1);
            }
        }
        let mut warm_up = None;
        if out.warm_up && !self.warming {
            self.warming = true;
            let rollout = &self.config.rollout;
            let urls = self
                .config
                .group(Group::Canary)
                .map(|b| {
                    rollout.warmup_url.as_ref().map_or_else(
                        || b.health_url.clone(),
                        |u| u.replace("{address}", &b.address.to_string()),
                    )
                })
                .collect();
            warm_up = Some(WarmUp {
                service: service.to_string(),
                urls,
                requests: rollout.warmup_requests,
                body: rollout.warmup_body.clone(),
            });
        }
        for r in &out.dry_run_failures {
            report_dry_run(service, r, metrics);
        }
        if let Some(d) = out.decision {
            for r in d.judgement.iter().flat_map(|j| &j.signals) {
                if r.dry_run {
                    report_dry_run(service, r, metrics);
                }
            }
            tracing::info!(
                target: "canary::decision",
                service,
                action = d.action.as_str(),
                reason = d.reason.as_str(),
                from = d.from.percent(),
                to = d.to.percent(),
                phase = d.phase.as_str(),
                "{d}"
            );
            metrics.record_decision(service, d.action.as_str(), d.reason.as_str());
            self.events.push_back(d);
            while self.events.len() > EVENTS_KEPT {
                self.events.pop_front();
            }
        }
        warm_up
    }
}

/// A dry-run signal's verdict: counted in `canary_dry_run_verdicts_total`; a failure is logged
/// as what would have rolled back.
fn report_dry_run(service: &str, r: &crate::judge::SignalReport, metrics: &Metrics) {
    let verdict = format!("{:?}", r.verdict).to_lowercase();
    metrics
        .dry_run_verdicts
        .with_label_values(&[service, r.signal.as_str(), &verdict])
        .inc();
    if r.verdict == crate::judge::SignalVerdict::Fail {
        tracing::warn!(
            target: "canary::decision",
            service,
            signal = r.signal.as_str(),
            dry_run = true,
            "dry-run signal {} failed (would have rolled back; dry_run keeps the rollout going): {r}",
            r.signal.as_str()
        );
    }
}
