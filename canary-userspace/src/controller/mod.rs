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

mod operator;
mod reload;
mod report;
mod service;
#[cfg(test)]
mod tests;

use std::sync::{Arc, RwLock};

use canary_common::{GROUP_CANARY, GROUP_STABLE};

use crate::api::Status;
use crate::config::{AdminConfig, Config, DataplaneConfig};
use crate::dataplane::{self, DataPlane, MapWrite, Programmer, ServiceSpec};
use crate::domain::Group;
use crate::judge::FlowCounts;
use crate::metrics::Metrics;
use crate::observe::neighbour::Neighbours;
use crate::observe::{Observation, Target, WarmUp};
use crate::rollout::{Event, Output, Phase, Poll, Rollout, StateStore};
use crate::upstream::{self, Window};
use service::Service;

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

/// The controller of all services.
pub struct Controller<D: DataPlane> {
    dataplane_config: DataplaneConfig,
    admin_config: AdminConfig,
    /// In configuration order.
    services: Vec<Service>,
    dp: D,
    programmer: Programmer,
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
        let Config {
            dataplane: dataplane_config,
            admin: admin_config,
            services,
        } = config;
        let mut c = Controller {
            dataplane_config,
            admin_config,
            services: Vec::with_capacity(services.len()),
            dp,
            programmer: Programmer::new(),
            store,
            metrics,
            status,
            hash_seed,
            dirty: true,
            pending_warmups: Vec::new(),
        };
        // Every state file is read and checked before anything is written.
        for config in &services {
            c.store
                .load(&config.name)
                .map_err(|message| ControllerError::State {
                    service: config.name.clone(),
                    message,
                })?;
        }
        let written = if recovered {
            Some(c.dp.written_state()?)
        } else {
            None
        };
        let mut global = c.dp.global_config()?;
        global.hash_seed = c.hash_seed;
        c.dp.set_global_config(&global)?;
        for config in services {
            let pinned = written
                .as_ref()
                .and_then(|w| pinned_weight(&c.dp, w, &config));
            let (mut service, output) = Service::restore(config, &c.store, now_ms, pinned)?;
            for (b, state) in service.backends_mut() {
                state.mac = b.mac.or_else(|| neighbours.mac(b.address));
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

    /// Every backend to probe and scrape this poll.
    pub fn targets(&self) -> Vec<Target> {
        self.services
            .iter()
            .flat_map(|s| {
                s.config.backends.iter().map(|b| Target {
                    service: s.config.name.clone(),
                    backend: b.name.clone(),
                    health_url: b.health_url.clone(),
                    metrics_url: b.metrics_url.clone(),
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
            let snapshot = upstream::snapshot_of(&obs.metrics, &self.services[i].config.upstream);
            for p in &snapshot.problems {
                self.metrics
                    .upstream_scrape_errors
                    .with_label_values(&[&obs.service, &obs.backend, p.reason.as_str()])
                    .inc();
            }
            let (bcfg, br) = self.services[i].backend_mut(j);
            if let crate::observe::probe::Probe::Unknown(why) = &obs.health {
                tracing::warn!(
                    service = %obs.service,
                    backend = %obs.backend,
                    "health probe not counted: {why}"
                );
            }
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
            br.metrics_error = (!snapshot.problems.is_empty()).then(|| {
                let all: Vec<String> = snapshot.problems.iter().map(ToString::to_string).collect();
                all.join("; ")
            });
            br.reported_requests = snapshot.requests.present().copied();
            let delta = snapshot.delta_since(&br.baseline);
            br.baseline.advance(&snapshot, delta.reset);
            deltas[i][j] = Some(delta.window);
        }

        if self.dirty {
            self.program(now_ns)?;
        }

        for (i, deltas) in deltas.iter().enumerate() {
            let flows = self.flow_counts(i)?;
            let s = &mut self.services[i];
            let poll = Poll {
                stable: s.window(Group::Stable, deltas),
                canary: s.window(Group::Canary, deltas),
                flows,
                backends: s.backend_polls(deltas),
            };
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
            self.metrics.record_heartbeat(
                self.services[i].name(),
                now_ms,
                self.dataplane_config.heartbeat_timeout,
            );
            self.persist(i);
        }
        self.refresh();
        Ok(())
    }

    /// New flows the kernel sent to each group of service `i` since the last poll.
    fn flow_counts(&mut self, i: usize) -> Result<FlowCounts, ControllerError> {
        let s = &mut self.services[i];
        let Some(index) = self.programmer.service_index(s.name()) else {
            return Ok(FlowCounts::default());
        };
        let stats = self.dp.service_stats(index)?;
        let flows = match s.last_service_stats {
            Some(last) => FlowCounts {
                stable: stats.new_flows[GROUP_STABLE as usize]
                    .saturating_sub(last.new_flows[GROUP_STABLE as usize]),
                canary: stats.new_flows[GROUP_CANARY as usize]
                    .saturating_sub(last.new_flows[GROUP_CANARY as usize]),
            },
            None => FlowCounts::default(),
        };
        s.last_service_stats = Some(stats);
        Ok(flows)
    }

    fn program(&mut self, now_ns: u64) -> Result<(), ControllerError> {
        let desired = self.desired(now_ns);
        self.programmer.program(&mut self.dp, &desired)?;
        self.dirty = false;
        Ok(())
    }

    /// Writes service `i`'s control entry (weight, epoch, heartbeat): every poll and after
    /// every decision. A newly placed service gets the same entry through its plan.
    fn write_control(&mut self, i: usize, now_ns: u64) -> Result<(), ControllerError> {
        let s = &self.services[i];
        let Some(index) = self.programmer.service_index(s.name()) else {
            return Ok(());
        };
        let control = s.control(self.dataplane_config.heartbeat_timeout, now_ns);
        self.dp.apply(&[MapWrite::Control { index, control }])?;
        Ok(())
    }

    fn persist(&self, i: usize) {
        let s = &self.services[i];
        if let Err(e) = self.store.save(s.name(), &s.rollout) {
            tracing::error!(service = s.name(), error = %e, "cannot persist rollout state; a restart would lose it");
        }
    }

    /// Applies a rollout output of service `i`: reset epoch, warm-up, decision log.
    fn apply_output(&mut self, i: usize, out: Output, now_ns: u64) {
        if let Some(warm_up) = self.services[i].apply(out, now_ns, &self.metrics) {
            self.pending_warmups.push(warm_up);
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
