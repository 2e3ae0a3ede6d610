//! The controller: turns what the backends and the kernel report into map writes, one poll at
//! a time, through the rollout state machine and the judge.
//!
//! Everything here is synchronous and clock-free (time is an argument): the daemon does the
//! HTTP calls and timers and hands the results in as [`Observation`]s, and the data plane is
//! the [`DataPlane`] trait, so the whole loop runs against a fake in tests.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use canary_common::{Counter, ServiceControl, ServiceStats, GROUP_CANARY, GROUP_STABLE};

use crate::admin::{OperatorCommand, OperatorReply};
use crate::config::{BackendConfig, Config, ServiceConfig};
use crate::dataplane::{self, BackendSpec, DataPlane, MapWrite, Programmer, ServiceSpec};
use crate::domain::{Group, RollbackMode, Weight};
use crate::judge::FlowCounts;
use crate::metrics::{set_counter, LatencyHistogram, Metrics};
use crate::observe::neighbour::Neighbours;
use crate::observe::{Health, Observation, Target, WarmUp};
use crate::rollout::{
    Action, BackendPoll, Decision, Event, Output, Phase, Poll, Rollout, StateStore,
};
use crate::status::{BackendStatus, GroupStatus, ServiceStatus, Status};
use crate::upstream::{self, Series, Snapshot, Window};

/// Decisions kept for `/status`.
const EVENTS_KEPT: usize = 50;

#[derive(Clone, Debug, Default)]
struct BackendRuntime {
    health: Health,
    mac: Option<[u8; 6]>,
    /// Baseline of the backend's counters (advanced every poll).
    baseline: Snapshot,
    metrics_error: Option<String>,
    reported_requests: Option<f64>,
}

struct ServiceRuntime {
    rollout: Rollout,
    backends: BTreeMap<String, BackendRuntime>,
    last_service_stats: Option<ServiceStats>,
    events: VecDeque<Decision>,
    warming: bool,
    reset_epoch_ns: u64,
    measured_share: Option<f64>,
}

/// Errors that stop the controller from starting or reloading.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("programming the data plane failed: {0}")]
    Program(#[from] dataplane::ProgramError),
    #[error("data plane: {0}")]
    DataPlane(#[from] dataplane::DataPlaneError),
    #[error("rollout state of service {service:?} is unreadable: {message}; fix or delete the file to start that rollout over")]
    State { service: String, message: String },
    #[error("reload refused: {0}")]
    Reload(String),
}

/// The controller of all services.
pub struct Controller<D: DataPlane> {
    config: Config,
    dp: D,
    programmer: Programmer,
    services: BTreeMap<String, ServiceRuntime>,
    store: StateStore,
    metrics: Metrics,
    status: Arc<RwLock<Status>>,
    hash_seed: u32,
    /// The backends' health changed since the last programming.
    dirty: bool,
    pending_warmups: Vec<WarmUp>,
}

impl<D: DataPlane> Controller<D> {
    /// Restores each service's rollout from the state store (or starts one), places every
    /// service in the data plane with its backends down until the first poll says otherwise
    /// (a recovered data plane keeps what it had: see [`Programmer::recover`]).
    #[allow(
        clippy::too_many_arguments,
        reason = "one call site, each argument distinct"
    )]
    pub fn new(
        config: Config,
        dp: D,
        recovered: bool,
        store: StateStore,
        metrics: Metrics,
        status: Arc<RwLock<Status>>,
        hash_seed: u32,
        neighbours: &dyn Neighbours,
        now_ms: u64,
        now_ns: u64,
    ) -> Result<Self, ControllerError> {
        let mut c = Controller {
            config,
            dp,
            programmer: Programmer::new(),
            services: BTreeMap::new(),
            store,
            metrics,
            status,
            hash_seed,
            dirty: true,
            pending_warmups: Vec::new(),
        };
        let mut global = c.dp.global_config()?;
        global.hash_seed = c.hash_seed;
        c.dp.set_global_config(&global)?;
        let services = c.config.services.clone();
        for svc in &services {
            c.add_service(svc, now_ms)?;
            let rt = c.services.get_mut(&svc.name).expect("just added");
            for b in &svc.backends {
                let mac = b.mac.or_else(|| neighbours.mac(b.address));
                rt.backends.get_mut(&b.name).expect("configured").mac = mac;
            }
        }
        if recovered {
            // Same indices as before the restart, so no established flow moves.
            let written = c.dp.written_state()?;
            c.programmer = Programmer::recover(&written, &c.desired(now_ns));
            for svc in &services {
                let epoch = c
                    .programmer
                    .service_index(&svc.name)
                    .and_then(|i| c.dp.control(i).ok())
                    .map_or(0, |ctl| ctl.reset_epoch_ns);
                c.services.get_mut(&svc.name).expect("added").reset_epoch_ns = epoch;
            }
        }
        // /status lists every service (backends "not probed yet") before the first poll.
        c.refresh();
        Ok(c)
    }

    fn add_service(&mut self, svc: &ServiceConfig, now_ms: u64) -> Result<(), ControllerError> {
        let fingerprint = svc.canary_fingerprint();
        let stored = self
            .store
            .load(&svc.name)
            .map_err(|message| ControllerError::State {
                service: svc.name.clone(),
                message,
            })?;
        let (rollout, output) = match stored {
            Some(mut r) => {
                let out = r.on_event(
                    now_ms,
                    Event::CanaryChanged { fingerprint },
                    &svc.rollout,
                    &svc.upstream,
                );
                (r, out)
            }
            None => Rollout::new(now_ms, fingerprint, &svc.rollout),
        };
        let mut rt = ServiceRuntime {
            rollout,
            backends: svc
                .backends
                .iter()
                .map(|b| {
                    (
                        b.name.clone(),
                        BackendRuntime {
                            mac: b.mac,
                            ..BackendRuntime::default()
                        },
                    )
                })
                .collect(),
            last_service_stats: None,
            events: VecDeque::new(),
            warming: false,
            reset_epoch_ns: 0,
            measured_share: None,
        };
        // A restored rollout shows its last decision; a new one shows the decision it starts with.
        if output.decision.is_none() {
            if let Some(d) = rt.rollout.last_decision() {
                rt.events.push_back(d.clone());
            }
        }
        self.services.insert(svc.name.clone(), rt);
        self.apply_output(&svc.name, output, 0);
        Ok(())
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The data plane (tests read what was written).
    pub fn dataplane(&self) -> &D {
        &self.dp
    }

    pub fn dataplane_mut(&mut self) -> &mut D {
        &mut self.dp
    }

    /// The rollout of a service.
    pub fn rollout(&self, service: &str) -> Option<&Rollout> {
        self.services.get(service).map(|s| &s.rollout)
    }

    /// Every backend to probe and scrape this poll.
    pub fn targets(&self) -> Vec<Target> {
        self.config
            .services
            .iter()
            .flat_map(|s| {
                s.backends.iter().map(|b| Target {
                    service: s.name.clone(),
                    backend: b.name.clone(),
                    health_url: b.health_url.clone(),
                    metrics_url: b.metrics_url.clone(),
                })
            })
            .collect()
    }

    /// Warm-ups the daemon must run now (each ends with [`Controller::warm_up_done`]).
    pub fn take_warmups(&mut self) -> Vec<WarmUp> {
        std::mem::take(&mut self.pending_warmups)
    }

    /// The shortest poll interval over all services: the daemon's tick.
    pub fn poll_interval(&self) -> std::time::Duration {
        self.config
            .services
            .iter()
            .map(|s| s.rollout.poll_interval)
            .min()
            .unwrap_or(std::time::Duration::from_secs(1))
    }

    fn desired(&self, now_ns: u64) -> Vec<ServiceSpec> {
        self.config
            .services
            .iter()
            .map(|svc| {
                let rt = &self.services[&svc.name];
                ServiceSpec {
                    name: svc.name.clone(),
                    vip: svc.vip,
                    protocol: svc.protocol,
                    affinity: svc.affinity,
                    backends: svc
                        .backends
                        .iter()
                        .map(|b| {
                            let br = &rt.backends[&b.name];
                            BackendSpec {
                                name: b.name.clone(),
                                group: b.group,
                                mac: br.mac.unwrap_or_default(),
                                up: br.health.up == Some(true) && br.mac.is_some(),
                            }
                        })
                        .collect(),
                    initial_control: self.control_for(svc, rt, now_ns),
                }
            })
            .collect()
    }

    fn control_for(&self, svc: &ServiceConfig, rt: &ServiceRuntime, now_ns: u64) -> ServiceControl {
        // A service without canary backends never sends anything to canary, whatever the state.
        let has_canary = svc.group(Group::Canary).next().is_some();
        ServiceControl {
            canary_weight: if has_canary {
                rt.rollout.weight().basis_points()
            } else {
                0
            },
            _pad: 0,
            reset_epoch_ns: rt.reset_epoch_ns,
            heartbeat_ns: now_ns,
            heartbeat_timeout_ns: self
                .config
                .dataplane
                .heartbeat_timeout
                .as_nanos()
                .try_into()
                .unwrap_or(u64::MAX),
        }
    }

    /// One poll: health, metrics, kernel counters -> rollout -> map writes, status, metrics.
    pub fn on_poll(
        &mut self,
        now_ms: u64,
        now_ns: u64,
        observations: &[Observation],
        neighbours: &dyn Neighbours,
    ) -> Result<(), ControllerError> {
        let mut deltas: BTreeMap<(String, String), Window> = BTreeMap::new();
        for obs in observations {
            // Borrowed, not cloned: this runs for every backend on every poll.
            let Some(svc) = self.config.service(&obs.service) else {
                continue;
            };
            let Some(bcfg) = svc.backends.iter().find(|b| b.name == obs.backend) else {
                continue;
            };
            let rt = self
                .services
                .get_mut(&obs.service)
                .expect("runtime per service");
            let br = rt.backends.entry(obs.backend.clone()).or_default();
            if br.health.observe(&obs.health) {
                self.dirty = true;
                tracing::info!(
                    service = %obs.service,
                    backend = %obs.backend,
                    up = br.health.up == Some(true),
                    reason = br.health.last_failure.as_deref().unwrap_or(""),
                    "backend health changed"
                );
            }
            let mac = bcfg.mac.or_else(|| neighbours.mac(bcfg.address));
            if mac != br.mac {
                br.mac = mac;
                self.dirty = true;
            }
            let snapshot = match &obs.metrics {
                Ok(text) => match upstream::parse_exposition(text, &svc.upstream) {
                    Ok(s) => {
                        br.metrics_error = (!s.problems.is_empty()).then(|| s.problems.join("; "));
                        s
                    }
                    Err(e) => {
                        br.metrics_error = Some(e.to_string());
                        Snapshot::missing()
                    }
                },
                Err(e) => {
                    br.metrics_error = Some(e.clone());
                    Snapshot::missing()
                }
            };
            br.reported_requests = snapshot.requests.present().copied();
            let delta = snapshot.delta_since(&br.baseline);
            br.baseline.advance(&snapshot);
            deltas.insert((obs.service.clone(), obs.backend.clone()), delta.window);
        }

        if self.dirty {
            self.program(now_ns)?;
        }

        let services = self.config.services.clone();
        for svc in &services {
            let flows = self.flow_counts(svc)?;
            let rt = &self.services[&svc.name];
            let window_of = |g: Group| {
                let windows: Vec<&Window> = svc
                    .group(g)
                    .filter(|b| rt.backends[&b.name].health.up == Some(true))
                    .filter_map(|b| deltas.get(&(svc.name.clone(), b.name.clone())))
                    .collect();
                upstream::aggregate(windows)
            };
            let mut backends = Vec::new();
            for g in Group::BOTH {
                for b in svc
                    .group(g)
                    .filter(|b| rt.backends[&b.name].health.up == Some(true))
                {
                    if let Some(window) = deltas.get(&(svc.name.clone(), b.name.clone())) {
                        backends.push(BackendPoll {
                            group: g,
                            backend: b.name.clone(),
                            window: window.clone(),
                        });
                    }
                }
            }
            let poll = Poll {
                stable: window_of(Group::Stable),
                canary: window_of(Group::Canary),
                flows,
                backends,
            };
            let rt = self
                .services
                .get_mut(&svc.name)
                .expect("runtime per service");
            let out = rt
                .rollout
                .on_event(now_ms, Event::Poll(poll), &svc.rollout, &svc.upstream);
            self.apply_output(&svc.name, out, now_ns);
            let rt = self
                .services
                .get_mut(&svc.name)
                .expect("runtime per service");
            if rt.rollout.evaluation_due(now_ms, &svc.rollout) {
                let w = rt.rollout.window();
                let total = w.flows.stable + w.flows.canary;
                rt.measured_share = (total > 0).then(|| w.flows.canary as f64 / total as f64);
                let out = rt
                    .rollout
                    .on_event(now_ms, Event::Evaluate, &svc.rollout, &svc.upstream);
                self.apply_output(&svc.name, out, now_ns);
            }
            self.write_control(svc, now_ns)?;
            self.persist(&svc.name);
        }
        self.refresh();
        Ok(())
    }

    fn flow_counts(&mut self, svc: &ServiceConfig) -> Result<FlowCounts, ControllerError> {
        let Some(index) = self.programmer.service_index(&svc.name) else {
            return Ok(FlowCounts::default());
        };
        let stats = self.dp.service_stats(index)?;
        let rt = self
            .services
            .get_mut(&svc.name)
            .expect("runtime per service");
        let flows = match rt.last_service_stats {
            Some(last) => FlowCounts {
                stable: stats.new_flows[GROUP_STABLE as usize]
                    .saturating_sub(last.new_flows[GROUP_STABLE as usize]),
                canary: stats.new_flows[GROUP_CANARY as usize]
                    .saturating_sub(last.new_flows[GROUP_CANARY as usize]),
            },
            None => FlowCounts::default(),
        };
        rt.last_service_stats = Some(stats);
        Ok(flows)
    }

    fn program(&mut self, now_ns: u64) -> Result<(), ControllerError> {
        let desired = self.desired(now_ns);
        self.programmer.program(&mut self.dp, &desired)?;
        self.dirty = false;
        Ok(())
    }

    fn write_control(&mut self, svc: &ServiceConfig, now_ns: u64) -> Result<(), ControllerError> {
        let Some(index) = self.programmer.service_index(&svc.name) else {
            return Ok(());
        };
        let control = self.control_for(svc, &self.services[&svc.name], now_ns);
        self.dp.apply(&[MapWrite::Control { index, control }])?;
        Ok(())
    }

    fn persist(&self, service: &str) {
        if let Some(rt) = self.services.get(service) {
            if let Err(e) = self.store.save(service, &rt.rollout) {
                tracing::error!(service, error = %e, "cannot persist rollout state; a restart would lose it");
            }
        }
    }

    /// Applies a rollout output: reset epoch, warm-up, decision log.
    fn apply_output(&mut self, service: &str, out: Output, now_ns: u64) {
        let Some(svc) = self.config.service(service).cloned() else {
            return;
        };
        let rt = self.services.get_mut(service).expect("runtime per service");
        if out.reset_epoch && svc.rollout.rollback == RollbackMode::Reset {
            rt.reset_epoch_ns = now_ns.max(1);
        }
        if out.warm_up && !rt.warming {
            rt.warming = true;
            let urls = svc
                .group(Group::Canary)
                .map(|b: &BackendConfig| {
                    svc.rollout.warmup_url.clone().map_or_else(
                        || b.health_url.clone(),
                        |u| u.replace("{address}", &b.address.to_string()),
                    )
                })
                .collect();
            self.pending_warmups.push(WarmUp {
                service: service.to_string(),
                urls,
                requests: svc.rollout.warmup_requests,
            });
        }
        if let Some(d) = out.decision {
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
            self.metrics
                .decisions
                .with_label_values(&[service, d.action.as_str(), d.reason.as_str()])
                .inc();
            rt.events.push_back(d);
            while rt.events.len() > EVENTS_KEPT {
                rt.events.pop_front();
            }
        }
    }

    /// Every canary backend of `service` got its warm-up requests.
    pub fn warm_up_done(&mut self, service: &str, now_ms: u64, now_ns: u64) {
        let Some(svc) = self.config.service(service).cloned() else {
            return;
        };
        let rt = self.services.get_mut(service).expect("runtime per service");
        rt.warming = false;
        let out = rt
            .rollout
            .on_event(now_ms, Event::WarmupDone, &svc.rollout, &svc.upstream);
        self.apply_output(service, out, now_ns);
        if let Err(e) = self.write_control(&svc, now_ns) {
            tracing::error!(service, error = %e, "cannot write the new weight");
        }
        self.persist(service);
        self.refresh();
    }

    /// An operator verb from the admin API.
    pub fn on_operator(
        &mut self,
        now_ms: u64,
        now_ns: u64,
        service: Option<&str>,
        command: &OperatorCommand,
    ) -> OperatorReply {
        let names: Vec<&str> = self
            .config
            .services
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        let index = match crate::status::select_service(names.into_iter(), service) {
            Ok(i) => i,
            Err(e) => return OperatorReply::refused(e),
        };
        let svc = self.config.services[index].clone();
        let action = match command {
            OperatorCommand::Start => Action::Start,
            OperatorCommand::Pause => Action::Pause,
            OperatorCommand::Resume => Action::Resume,
            OperatorCommand::Promote { full: false } => Action::Promote,
            OperatorCommand::Promote { full: true } => Action::PromoteFull,
            OperatorCommand::Rollback => Action::Rollback,
            OperatorCommand::SetWeight { percent } => match Weight::from_percent(*percent) {
                Ok(w) => Action::SetWeight(w),
                Err(e) => return OperatorReply::refused(format!("set-weight: {e}")),
            },
            OperatorCommand::Route { src, dst, protocol } => {
                return self.route(&svc, *src, *dst, protocol, now_ns)
            }
            OperatorCommand::Reload => {
                return OperatorReply::refused("reload is handled by the daemon, not a service")
            }
        };
        let rt = self
            .services
            .get_mut(&svc.name)
            .expect("runtime per service");
        match rt.rollout.on_action(now_ms, action, &svc.rollout) {
            Ok(out) => {
                let message = out
                    .decision
                    .as_ref()
                    .map_or_else(|| "nothing to do".to_string(), |d| d.message.clone());
                self.apply_output(&svc.name, out, now_ns);
                if let Err(e) = self.write_control(&svc, now_ns) {
                    return OperatorReply::refused(format!(
                        "the decision was taken but writing the weight failed: {e}"
                    ));
                }
                self.persist(&svc.name);
                self.refresh();
                let rt = &self.services[&svc.name];
                let mut reply = OperatorReply::ok(format!(
                    "{}: {message} (phase {}, weight {})",
                    svc.name,
                    rt.rollout.phase(),
                    rt.rollout.weight()
                ));
                reply.detail = rt
                    .rollout
                    .last_decision()
                    .and_then(|d| serde_json::to_value(d).ok());
                reply
            }
            Err(e) => OperatorReply::refused(format!("{}: {e}", svc.name)),
        }
    }

    fn route(
        &self,
        svc: &ServiceConfig,
        src: SocketAddr,
        dst: SocketAddr,
        proto: &str,
        now_ns: u64,
    ) -> OperatorReply {
        let protocol = match proto {
            "tcp" => crate::domain::Protocol::Tcp,
            "udp" => crate::domain::Protocol::Udp,
            other => return OperatorReply::refused(format!("--proto {other:?}: use tcp or udp")),
        };
        let control = self.control_for(svc, &self.services[&svc.name], now_ns);
        match self
            .programmer
            .route(src, dst, protocol, self.hash_seed, &control, now_ns)
        {
            Ok(route) => {
                let backend = route
                    .backend
                    .as_ref()
                    .map_or_else(|| "none (dropped)".to_string(), |b| b.name.clone());
                let mut text = format!(
                    "{src} -> {dst}/{proto}: service {}, bucket {} (weight {} bp) -> group {}, backend {backend}",
                    route.service,
                    route.bucket,
                    route.weight,
                    route.group.as_str()
                );
                if route.deadman_fallback {
                    text.push_str(" (dead-man fallback to stable)");
                }
                if route.group_fallback {
                    let _ = write!(
                        text,
                        " (group {} has no backend up)",
                        route.group_by_weight.as_str()
                    );
                }
                OperatorReply {
                    ok: true,
                    message: text,
                    detail: Some(serde_json::json!({
                        "service": route.service,
                        "bucket": route.bucket,
                        "slot": route.slot,
                        "weight_bp": route.weight,
                        "group": route.group.as_str(),
                        "backend": route.backend.as_ref().map(|b| b.name.clone()),
                    })),
                }
            }
            Err(e) => OperatorReply::refused(e.to_string()),
        }
    }

    /// Applies a new configuration: the data plane section must be unchanged; services and
    /// backends may come and go (minimal remapping), and a changed canary group starts a new
    /// rollout.
    pub fn reload(
        &mut self,
        new: Config,
        now_ms: u64,
        now_ns: u64,
    ) -> Result<String, ControllerError> {
        if new.dataplane != self.config.dataplane {
            return Err(ControllerError::Reload(
                "the [dataplane] section changed; it applies only at start: restart the daemon (traffic keeps flowing)".into(),
            ));
        }
        if new.admin != self.config.admin {
            return Err(ControllerError::Reload(
                "the [admin] section changed; it applies only at start: restart the daemon".into(),
            ));
        }
        let old = std::mem::replace(&mut self.config, new);
        let mut changes = Vec::new();
        let services = self.config.services.clone();
        for svc in &services {
            if self.services.contains_key(&svc.name) {
                let rt = self.services.get_mut(&svc.name).expect("present");
                for b in &svc.backends {
                    rt.backends
                        .entry(b.name.clone())
                        .or_insert_with(|| BackendRuntime {
                            mac: b.mac,
                            ..BackendRuntime::default()
                        });
                }
                rt.backends
                    .retain(|name, _| svc.backends.iter().any(|b| &b.name == name));
                for b in &svc.backends {
                    if let Some(m) = b.mac {
                        rt.backends.get_mut(&b.name).expect("inserted").mac = Some(m);
                    }
                }
                let out = rt.rollout.on_event(
                    now_ms,
                    Event::CanaryChanged {
                        fingerprint: svc.canary_fingerprint(),
                    },
                    &svc.rollout,
                    &svc.upstream,
                );
                if out.decision.is_some() {
                    changes.push(format!("{}: new canary group, rollout restarted", svc.name));
                }
                self.apply_output(&svc.name, out, now_ns);
            } else {
                if let Err(e) = self.add_service(svc, now_ms) {
                    self.config = old;
                    return Err(e);
                }
                changes.push(format!("{}: added", svc.name));
            }
        }
        let removed: Vec<String> = self
            .services
            .keys()
            .filter(|n| self.config.service(n).is_none())
            .cloned()
            .collect();
        for name in removed {
            self.services.remove(&name);
            changes.push(format!("{name}: removed"));
        }
        self.program(now_ns)?;
        for svc in &services {
            self.write_control(svc, now_ns)?;
            self.persist(&svc.name);
        }
        self.refresh();
        Ok(if changes.is_empty() {
            "configuration reloaded; backends updated".to_string()
        } else {
            format!("configuration reloaded: {}", changes.join("; "))
        })
    }

    /// Rebuilds `/status` and the metrics from the current state.
    fn refresh(&mut self) {
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
        for svc in &self.config.services {
            let rt = &self.services[&svc.name];
            let name = svc.name.as_str();
            let weight = rt.rollout.weight();
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
            let mut groups = Vec::new();
            for (g, w, flows) in [
                (Group::Stable, &window.stable, window.flows.stable),
                (Group::Canary, &window.canary, window.flows.canary),
            ] {
                groups.push(group_status(g.as_str(), w, flows));
                // The exported histogram is cumulative (Prometheus semantics): the sum of the
                // group's backends' own histograms, not the step window.
                let cumulative = svc
                    .group(g)
                    .filter_map(|b| rt.backends[&b.name].baseline.latency.present())
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
            for b in &svc.backends {
                let br = &rt.backends[&b.name];
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
                let up = br.health.up == Some(true) && br.mac.is_some();
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
                    metrics_ok: br.metrics_error.is_none(),
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
                groups,
                backends,
                last_decision: rt.rollout.last_decision().cloned(),
                events: rt.events.iter().cloned().collect(),
            });
        }
        *self
            .status
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = status;
    }

    /// Phase of a service (tests).
    pub fn phase(&self, service: &str) -> Option<Phase> {
        self.rollout(service).map(Rollout::phase)
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

#[cfg(test)]
#[path = "controller_tests.rs"]
mod tests;
