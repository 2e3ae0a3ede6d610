//! The controller: turns what the backends and the kernel report into map writes, one poll at
//! a time, through the rollout state machine and the judge.
//!
//! Everything here is synchronous and clock-free (time is an argument): the daemon does the
//! HTTP calls and timers and hands the results in as [`Observation`]s, and the data plane is
//! the [`DataPlane`] trait, so the whole loop runs against a fake in tests.
//!
//! Each service is one [`service::Service`] (configuration, rollout, backend states). This
//! module holds the poll and the writes; operator verbs are in `operator`, reload in
//! `reload`, and `/status` with the metrics in `report`.

mod cluster;
#[cfg(test)]
mod cluster_tests;
mod operator;
mod reload;
mod report;
mod service;
pub mod store;
#[cfg(test)]
mod tests;

use std::sync::{Arc, RwLock};

use canary_common::{GlobalConfig, GROUP_CANARY, GROUP_STABLE};

use crate::api::Status;
use crate::config::{AdminConfig, Config, DataplaneConfig};
use crate::dataplane::{self, DataPlane, MapWrite, Programmer, ServiceSpec};
use crate::history::{HistoryStore, Recorder, Sample};
use crate::judge::FlowCounts;
use crate::metrics::Metrics;
use crate::notify::Notifier;
use crate::observe::neighbour::Neighbours;
use crate::observe::{Observation, Target, WarmUp};
use crate::rollout::{Event, Output, Phase, Rollout};
use crate::upstream::{self, Window};
use service::Service;
pub use store::DecisionStore;

/// Errors that stop the controller from starting or reloading.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("programming the data plane failed: {0}")]
    Program(#[from] dataplane::ProgramError),
    #[error("data plane: {0}")]
    DataPlane(#[from] dataplane::DataPlaneError),
    #[error("rollout state of service {service:?} is not usable: {message}; fix that field or delete the file (the rollout then continues at the weight the data plane holds, or starts over when there is none); nothing was changed")]
    State { service: String, message: String },
    #[error("reload refused: {0}")]
    Reload(String),
}

/// The canary weight the data plane holds for a service (found by its VIP and protocol in the
/// written maps), after a restart.
fn pinned_weight<D: DataPlane>(
    dp: &D,
    written: &dataplane::WrittenState,
    config: &crate::config::ServiceConfig,
) -> Option<crate::domain::Weight> {
    let key = dataplane::service_key(config.vip, config.protocol);
    let (_, entry) = written.services.iter().find(|(k, _)| *k == key)?;
    let control = dp.control(entry.index).ok()?;
    Some(crate::domain::Weight::from_basis_points(
        control.canary_weight,
    ))
}

/// The `CONFIG` entry for the `[dataplane]` section and the balancer's MAC (`lb_mac`: `None`
/// for an interface without one, then any unicast destination is taken as ours). Every field is
/// written at each start, so neither a restart nor an upgrade that kept the pinned map runs on
/// stale settings; `flags` (benchmark switches) are kept.
pub fn global_config(
    current: GlobalConfig,
    dataplane: &DataplaneConfig,
    lb_mac: Option<[u8; 6]>,
) -> GlobalConfig {
    GlobalConfig {
        hash_seed: dataplane.hash_seed,
        flags: current.flags,
        lb_mac: lb_mac.unwrap_or_default(),
        _pad: [0; 2],
        syn_replace_after_ms: u32::try_from(dataplane.syn_replace_after.as_millis())
            .unwrap_or(u32::MAX),
        flood_guard_rate: dataplane.flood_guard_rate,
        udp_idle_timeout_ms: u32::try_from(dataplane.udp_idle_timeout.as_millis())
            .unwrap_or(u32::MAX),
        _pad2: 0,
    }
}

/// The controller of all services.
pub struct Controller<D: DataPlane> {
    dataplane_config: DataplaneConfig,
    admin_config: AdminConfig,
    /// In configuration order.
    services: Vec<Service>,
    dp: D,
    programmer: Programmer,
    /// Where decisions go and where the kernel's weight comes from (one node or a cluster).
    store: DecisionStore,
    cluster_config: crate::cluster::config::ClusterConfig,
    metrics: Metrics,
    status: Arc<RwLock<Status>>,
    hash_seed: u32,
    /// The balancer interface's MAC as last written to `CONFIG`.
    lb_mac: Option<[u8; 6]>,
    /// The backends' health changed since the last programming.
    dirty: bool,
    pending_warmups: Vec<WarmUp>,
    /// Decision events to the `[[notify]]` webhooks.
    notifier: Notifier,
    /// Each rollout's observations and decisions, for `canary report`.
    history: Recorder,
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
        store: impl Into<DecisionStore>,
        metrics: Metrics,
        status: Arc<RwLock<Status>>,
        lb_mac: Option<[u8; 6]>,
        neighbours: &dyn Neighbours,
        now_ms: u64,
        now_ns: u64,
    ) -> Result<Self, ControllerError> {
        let Config {
            dataplane: dataplane_config,
            admin: admin_config,
            services,
            notify: _,
            cluster: cluster_config,
        } = config;
        let hash_seed = dataplane_config.hash_seed;
        let store: DecisionStore = store.into();
        // A rollout's history lives beside its state (the local store's directory).
        let history_dir = match &store {
            DecisionStore::Local(local) => local.dir().to_path_buf(),
            DecisionStore::Cluster(_) => dataplane_config.state_dir.clone(),
        };
        let mut c = Controller {
            dataplane_config,
            admin_config,
            services: Vec::with_capacity(services.len()),
            dp,
            programmer: Programmer::new(),
            store,
            cluster_config,
            metrics,
            status,
            hash_seed,
            lb_mac,
            dirty: true,
            pending_warmups: Vec::new(),
            notifier: Notifier::none(),
            history: Recorder::new(HistoryStore::new(&history_dir)),
        };
        // Every state file is read and checked before anything is written.
        for config in &services {
            c.stored_rollout(&config.name)?;
        }
        if let Some(side) = c.store.cluster_side_mut() {
            match store::ClusterMetrics::register(&c.metrics.registry) {
                Ok(m) => side.metrics = Some(m),
                Err(e) => tracing::warn!(error = %e, "cannot register the cluster metrics"),
            }
        }
        let written = if recovered {
            Some(c.dp.written_state()?)
        } else {
            None
        };
        let global = global_config(c.dp.global_config()?, &c.dataplane_config, lb_mac);
        c.dp.set_global_config(&global)?;
        for config in services {
            let pinned = written
                .as_ref()
                .and_then(|w| pinned_weight(&c.dp, w, &config));
            let stored = c.stored_rollout(&config.name)?;
            let state_path = c.state_path(&config.name);
            let clustered = c.store.cluster_side().is_some();
            // In a cluster the kernel keeps the weight it holds until a document is applied.
            let (mut service, output) = Service::restore(
                config,
                stored,
                &state_path,
                now_ms,
                if clustered { None } else { pinned },
            );
            if clustered {
                service.applied = Some(store::Applied {
                    weight_bp: pinned.map_or(0, crate::domain::Weight::basis_points),
                    ..store::Applied::default()
                });
            }
            service.heartbeat_ns = now_ns;
            let forwarding = service.config.forwarding;
            for (b, state) in service.backends_mut() {
                state.mac = backend_mac(forwarding, b, neighbours);
            }
            c.services.push(service);
            c.apply_output(c.services.len() - 1, output, 0);
        }
        if let Some(written) = written {
            // Same indices as before the restart, so no established flow moves.
            c.programmer = Programmer::recover(&written, &c.desired(now_ns));
            for s in &mut c.services {
                s.reset_epoch_ns = c
                    .programmer
                    .service_index(s.name())
                    .and_then(|i| c.dp.control(i).ok())
                    .map_or(0, |ctl| ctl.reset_epoch_ns);
            }
        }
        // /status lists every service (backends "not probed yet") before the first poll.
        c.refresh();
        Ok(c)
    }

    /// Sends every decision to `notifier`, starting with those taken since the controller
    /// was created.
    pub fn set_notifier(&mut self, mut notifier: Notifier) {
        notifier.take_over(std::mem::take(&mut self.notifier));
        self.notifier = notifier;
    }

    /// The balancer interface's MAC now (the daemon reads it every poll): a change (an
    /// operator set another address) is written to `CONFIG` at once, since otherwise every
    /// frame to the new address would pass as another host's. Returns whether it changed.
    pub fn update_lb_mac(&mut self, lb_mac: Option<[u8; 6]>) -> Result<bool, ControllerError> {
        if lb_mac == self.lb_mac {
            return Ok(false);
        }
        let global = global_config(self.dp.global_config()?, &self.dataplane_config, lb_mac);
        self.dp.set_global_config(&global)?;
        tracing::info!(
            from = ?self.lb_mac,
            to = ?lb_mac,
            "the balancer interface's MAC changed; written to the data plane"
        );
        self.lb_mac = lb_mac;
        Ok(true)
    }

    /// The rollout a service has in the local store (`None` in a cluster: the documents
    /// bring it).
    fn stored_rollout(&self, service: &str) -> Result<Option<Rollout>, ControllerError> {
        match &self.store {
            DecisionStore::Local(store) => {
                store
                    .load(service)
                    .map_err(|message| ControllerError::State {
                        service: service.to_string(),
                        message,
                    })
            }
            DecisionStore::Cluster(_) => Ok(None),
        }
    }

    fn state_path(&self, service: &str) -> std::path::PathBuf {
        match &self.store {
            DecisionStore::Local(store) => store.path(service),
            DecisionStore::Cluster(_) => {
                std::path::PathBuf::from(format!("the rollout document of {service} in etcd"))
            }
        }
    }

    /// The `[dataplane]` section in force.
    pub fn dataplane_config(&self) -> &DataplaneConfig {
        &self.dataplane_config
    }

    /// The data plane (tests read what was written).
    pub fn dataplane(&self) -> &D {
        &self.dp
    }

    pub fn dataplane_mut(&mut self) -> &mut D {
        &mut self.dp
    }

    fn service(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.name() == name)
    }

    /// The rollout of a service.
    pub fn rollout(&self, service: &str) -> Option<&Rollout> {
        self.service(service).map(|s| &s.rollout)
    }

    /// Phase of a service (tests).
    pub fn phase(&self, service: &str) -> Option<Phase> {
        self.rollout(service).map(Rollout::phase)
    }

    /// Every backend to probe and scrape this poll (a cluster node that does not lead probes
    /// only: its `metrics_url` is empty).
    pub fn targets(&self) -> Vec<Target> {
        let scrape = self.store.scrapes_upstream();
        self.services
            .iter()
            .flat_map(|s| {
                s.config.backends.iter().map(|b| Target {
                    service: s.config.name.clone(),
                    backend: b.name.clone(),
                    health_url: b.health_url.clone(),
                    metrics_url: if scrape {
                        b.metrics_url.clone()
                    } else {
                        String::new()
                    },
                    max_scrape_bytes: s.config.upstream.max_scrape_bytes,
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
        self.services
            .iter()
            .map(|s| s.config.rollout.poll_interval)
            .min()
            .unwrap_or(std::time::Duration::from_secs(1))
    }

    fn desired(&self, now_ns: u64) -> Vec<ServiceSpec> {
        self.services
            .iter()
            .map(|s| s.spec(self.dataplane_config.heartbeat_timeout, now_ns))
            .collect()
    }

    /// Counts backend `j` of service `i`'s health probe and follows its MAC in the neighbour
    /// table; either change marks the data plane for reprogramming.
    fn observe_health(
        &mut self,
        i: usize,
        j: usize,
        obs: &Observation,
        neighbours: &dyn Neighbours,
    ) {
        let forwarding = self.services[i].config.forwarding;
        let (bcfg, br) = self.services[i].backend_mut(j);
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
        let mac = backend_mac(forwarding, bcfg, neighbours);
        if mac != br.mac {
            br.mac = mac;
            self.dirty = true;
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
        // Per service, per backend (config order): this poll's increase, if observed.
        let mut deltas: Vec<Vec<Option<Window>>> = self
            .services
            .iter()
            .map(|s| vec![None; s.config.backends.len()])
            .collect();
        for obs in observations {
            let Some(i) = self.services.iter().position(|s| s.name() == obs.service) else {
                continue;
            };
            let Some(j) = self.services[i].backend_position(&obs.backend) else {
                continue;
            };
            self.observe_health(i, j, obs, neighbours);
            if !self.store.scrapes_upstream() {
                // Health only: the leader scrapes the metrics.
                continue;
            }
            if let crate::observe::probe::Probe::Unknown(why) = &obs.health {
                tracing::warn!(
                    service = %obs.service,
                    backend = %obs.backend,
                    "health probe not counted: {why}"
                );
            }
            let snapshot = upstream::snapshot_of(&obs.metrics, &self.services[i].config.upstream);
            for p in &snapshot.problems {
                self.metrics
                    .upstream_scrape_errors
                    .with_label_values(&[&obs.service, &obs.backend, p.reason.as_str()])
                    .inc();
            }
            let (_, br) = self.services[i].backend_mut(j);
            br.metrics_problems.clone_from(&snapshot.problems);
            br.reported_requests = snapshot.requests.present().copied();
            let delta = snapshot.delta_since(&br.baseline);
            br.baseline.advance(&snapshot, delta.reset);
            deltas[i][j] = Some(delta.window);
        }

        self.notify_deadman(now_ms, now_ns);
        if self.dirty {
            self.program(now_ns)?;
        }

        let decides = self.store.decides();
        for (i, deltas) in deltas.iter().enumerate() {
            let flows = self.flow_counts(i)?;
            if !decides {
                // A cluster node that does not lead (or cannot reach the store) only applies:
                // the rollout holds here.
                self.write_control(i, now_ns)?;
                self.record_heartbeat(i, now_ms);
                continue;
            }
            let s = &mut self.services[i];
            let poll = s.poll(deltas, flows);
            let out = s.rollout.on_event(
                now_ms,
                Event::Poll(poll),
                &s.config.rollout,
                &s.config.upstream,
            );
            self.apply_output(i, out, now_ns);
            let s = &mut self.services[i];
            if s.rollout.evaluation_due(now_ms, &s.config.rollout) {
                let w = s.rollout.window();
                let total = w.flows.stable + w.flows.canary;
                s.measured_share = (total > 0).then(|| w.flows.canary as f64 / total as f64);
                let out = s.rollout.on_event(
                    now_ms,
                    Event::Evaluate,
                    &s.config.rollout,
                    &s.config.upstream,
                );
                self.apply_output(i, out, now_ns);
            }
            self.write_control(i, now_ns)?;
            self.record_heartbeat(i, now_ms);
            self.persist(i);
        }
        self.refresh();
        self.record_samples(now_ms);
        Ok(())
    }

    fn record_heartbeat(&self, i: usize, now_ms: u64) {
        if self.store.heartbeat_ok() {
            self.metrics.record_heartbeat(
                self.services[i].name(),
                now_ms,
                self.dataplane_config.heartbeat_timeout,
            );
        }
    }

    /// Adds this poll's status of every service to its rollout's history.
    fn record_samples(&mut self, now_ms: u64) {
        let status = self
            .status
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (s, st) in self.services.iter().zip(&status.services) {
            self.history
                .sample(s.name(), s.rollout.started_at_ms(), Sample::of(now_ms, st));
        }
    }

    /// New flows the kernel sent to each group of service `i` since the last poll.
    fn flow_counts(&mut self, i: usize) -> Result<FlowCounts, ControllerError> {
        let s = &mut self.services[i];
        let Some(index) = self.programmer.service_index(s.name()) else {
            return Ok(FlowCounts::default());
        };
        let stats = self.dp.service_stats(index)?;
        let local = match s.last_service_stats {
            Some(last) => FlowCounts {
                stable: stats.new_flows[GROUP_STABLE as usize]
                    .saturating_sub(last.new_flows[GROUP_STABLE as usize]),
                canary: stats.new_flows[GROUP_CANARY as usize]
                    .saturating_sub(last.new_flows[GROUP_CANARY as usize]),
            },
            None => FlowCounts::default(),
        };
        s.last_service_stats = Some(stats);
        // In a cluster the leader judges the split summed over every node.
        Ok(match self.store.cluster_side_mut() {
            None => local,
            Some(side) => side.flows.remove(s.name()).unwrap_or_default(),
        })
    }

    fn program(&mut self, now_ns: u64) -> Result<(), ControllerError> {
        let desired = self.desired(now_ns);
        self.programmer.program(&mut self.dp, &desired)?;
        self.dirty = false;
        Ok(())
    }

    /// Writes service `i`'s control entry (weight, epoch, heartbeat): every poll and after
    /// every decision. A newly placed service gets the same entry through its plan.
    /// The heartbeat is refreshed only while the store allows it (see
    /// [`DecisionStore::heartbeat_ok`]); otherwise the last one stays.
    fn write_control(&mut self, i: usize, now_ns: u64) -> Result<(), ControllerError> {
        if self.store.heartbeat_ok() {
            self.services[i].heartbeat_ns = now_ns;
        }
        let s = &self.services[i];
        let Some(index) = self.programmer.service_index(s.name()) else {
            return Ok(());
        };
        let control = s.control(self.dataplane_config.heartbeat_timeout, s.heartbeat_ns);
        self.dp.apply(&[MapWrite::Control { index, control }])?;
        Ok(())
    }

    /// Keeps service `i`'s rollout: in `state_dir` on one node, as a document for the store in
    /// a cluster (leader only).
    fn persist(&mut self, i: usize) {
        let s = &self.services[i];
        match &mut self.store {
            DecisionStore::Local(store) => {
                if let Err(e) = store.save(s.name(), &s.rollout) {
                    tracing::error!(service = s.name(), error = %e, "cannot persist rollout state; a restart would lose it");
                }
            }
            DecisionStore::Cluster(side) => {
                if side.leading {
                    let document = cluster::document_of(s, &side.node, self.hash_seed);
                    side.queue(document);
                }
            }
        }
    }

    /// Applies a rollout output of service `i`: reset epoch, warm-up, decision log. A cluster
    /// node that does not decide has nothing to apply (its rollout holds).
    fn apply_output(&mut self, i: usize, out: Output, now_ns: u64) {
        if !self.store.decides() {
            return;
        }
        let decision = out.decision.clone();
        if let Some(warm_up) = self.services[i].apply(out, now_ns, &self.metrics) {
            self.pending_warmups.push(warm_up);
        }
        if let Some(d) = decision {
            let s = &self.services[i];
            self.history
                .decision(s.name(), s.rollout.started_at_ms(), &d);
            self.notifier.decision(s.name(), &d);
        }
    }

    /// Notifies services whose heartbeat in the kernel went stale since the last poll (the
    /// dead-man switch was active: the daemon was stopped or stuck).
    fn notify_deadman(&mut self, now_ms: u64, now_ns: u64) {
        for s in &self.services {
            let Some(index) = self.programmer.service_index(s.name()) else {
                continue;
            };
            let Ok(control) = self.dp.control(index) else {
                continue;
            };
            let age = now_ns.saturating_sub(control.heartbeat_ns);
            if control.heartbeat_ns > 0 && age > control.heartbeat_timeout_ns {
                self.notifier.deadman(
                    s.name(),
                    now_ms,
                    std::time::Duration::from_nanos(age),
                    s.rollout.phase(),
                    s.rollout.weight().percent(),
                );
            }
        }
    }

    /// Every canary backend of `service` got its warm-up requests.
    pub fn warm_up_done(&mut self, service: &str, now_ms: u64, now_ns: u64) {
        let Some(i) = self.services.iter().position(|s| s.name() == service) else {
            return;
        };
        let s = &mut self.services[i];
        s.warming = false;
        let out = s.rollout.on_event(
            now_ms,
            Event::WarmupDone,
            &s.config.rollout,
            &s.config.upstream,
        );
        self.apply_output(i, out, now_ns);
        if let Err(e) = self.write_control(i, now_ns) {
            tracing::error!(service, error = %e, "cannot write the new weight");
        }
        self.persist(i);
        self.refresh();
    }
}

/// The MAC a backend's frames go to: configured, or from the neighbour table (`l2`). An
/// `ipip` backend needs none (the kernel's FIB names the next hop): its MAC is known, and zero.
fn backend_mac(
    forwarding: crate::domain::Forwarding,
    b: &crate::config::BackendConfig,
    neighbours: &dyn Neighbours,
) -> Option<[u8; 6]> {
    match forwarding {
        crate::domain::Forwarding::Ipip => Some([0; 6]),
        crate::domain::Forwarding::L2 => b.mac.or_else(|| neighbours.mac(b.address)),
    }
}
