//! Rollout history: what the daemon observed during each rollout, kept in the state directory
//! (bounded, survives restarts) for `canary report`.
//!
//! One file per rollout, `state_dir/history/<service>/<rollout id>.json`, the id being the
//! rollout's start time in Unix milliseconds. Each poll adds a [`Sample`] (the step window's
//! figures per group, the configured and measured weight), each decision is kept with its
//! reasons. A rollout keeps at most [`MAX_SAMPLES`] samples (when full, every other one is
//! dropped, so the whole rollout stays covered at a coarser grain) and [`MAX_DECISIONS`]
//! decisions; a service keeps its last [`ROLLOUTS_KEPT`] rollouts. The file is written at
//! every decision and every poll while the rollout has few samples, then every `n / 100`
//! polls for `n` samples (so at most 1 % of the latest samples wait in memory, and a long
//! rollout is not rewritten every poll).

pub mod render;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::api::{GroupStatus, ServiceStatus};
use crate::rollout::write_durably;
use crate::rollout::Decision;

pub const MAX_SAMPLES: usize = 2000;
pub const MAX_DECISIONS: usize = 500;
pub const ROLLOUTS_KEPT: usize = 20;

/// One group at one poll: the step window so far.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GroupSample {
    pub requests: u64,
    pub errors: u64,
    pub error_rate: Option<f64>,
    pub latency_p95_ms: Option<f64>,
    pub predictions: BTreeMap<String, u64>,
}

impl From<&GroupStatus> for GroupSample {
    fn from(g: &GroupStatus) -> Self {
        GroupSample {
            requests: g.requests,
            errors: g.errors,
            error_rate: g.error_rate,
            latency_p95_ms: g.latency_p95_seconds.map(|s| s * 1000.0),
            predictions: g.predictions.clone(),
        }
    }
}

/// One poll of one service.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub at_ms: u64,
    pub phase: String,
    pub weight_percent: f64,
    /// Canary share of new flows over the last evaluation window, percent.
    pub measured_percent: Option<f64>,
    pub stable: GroupSample,
    pub canary: GroupSample,
}

impl Sample {
    pub fn of(at_ms: u64, s: &ServiceStatus) -> Sample {
        let group = |name: &str| {
            s.groups
                .iter()
                .find(|g| g.group == name)
                .map(GroupSample::from)
                .unwrap_or_default()
        };
        Sample {
            at_ms,
            phase: s.phase.clone(),
            weight_percent: s.weight_percent,
            measured_percent: s.measured_canary_share.map(|m| m * 100.0),
            stable: group("stable"),
            canary: group("canary"),
        }
    }
}

/// One rollout's history.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    pub service: String,
    /// The rollout's start, Unix milliseconds.
    pub rollout: u64,
    pub samples: Vec<Sample>,
    pub decisions: Vec<Decision>,
    /// Samples dropped to stay within [`MAX_SAMPLES`] (every other one, oldest first).
    pub thinned: u64,
}

impl History {
    pub fn push_sample(&mut self, sample: Sample) {
        if self.samples.len() >= MAX_SAMPLES {
            let mut keep = false;
            self.samples.retain(|_| {
                keep = !keep;
                keep
            });
            self.thinned += (MAX_SAMPLES - self.samples.len()) as u64;
        }
        self.samples.push(sample);
    }

    pub fn push_decision(&mut self, d: Decision) {
        if self.decisions.len() >= MAX_DECISIONS {
            self.decisions.remove(0);
        }
        self.decisions.push(d);
    }
}

/// Summary of a stored rollout (`GET /v1/history/{service}`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RolloutSummary {
    pub rollout: u64,
    pub samples: usize,
    pub decisions: usize,
    pub last_phase: String,
}

/// The history files under `state_dir/history`.
#[derive(Clone, Debug)]
pub struct HistoryStore {
    dir: PathBuf,
}

fn safe(service: &str) -> bool {
    !service.is_empty()
        && service
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !service.starts_with('.')
}

impl HistoryStore {
    pub fn new(state_dir: &Path) -> HistoryStore {
        HistoryStore {
            dir: state_dir.join("history"),
        }
    }

    fn service_dir(&self, service: &str) -> Option<PathBuf> {
        safe(service).then(|| self.dir.join(service))
    }

    /// Writes a rollout's history and removes the service's oldest beyond [`ROLLOUTS_KEPT`].
    pub fn save(&self, h: &History) -> io::Result<()> {
        let Some(dir) = self.service_dir(&h.service) else {
            return Err(io::Error::other("service name not usable as a file name"));
        };
        let bytes = serde_json::to_vec(h).map_err(io::Error::other)?;
        write_durably(&dir, &dir.join(format!("{}.json", h.rollout)), &bytes)?;
        let ids = self.rollouts(&h.service)?;
        if ids.len() > ROLLOUTS_KEPT {
            for id in &ids[..ids.len() - ROLLOUTS_KEPT] {
                let _ = std::fs::remove_file(dir.join(format!("{id}.json")));
            }
        }
        Ok(())
    }

    /// The stored rollouts of a service, oldest first.
    pub fn rollouts(&self, service: &str) -> io::Result<Vec<u64>> {
        let Some(dir) = self.service_dir(service) else {
            return Ok(Vec::new());
        };
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut ids: Vec<u64> = entries
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().to_str()?.strip_suffix(".json")?.parse().ok())
            .collect();
        ids.sort_unstable();
        Ok(ids)
    }

    /// One rollout's history; `None` when it is not stored.
    pub fn load(&self, service: &str, rollout: u64) -> io::Result<Option<History>> {
        let Some(dir) = self.service_dir(service) else {
            return Ok(None);
        };
        match std::fs::read(dir.join(format!("{rollout}.json"))) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(io::Error::other),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn summaries(&self, service: &str) -> io::Result<Vec<RolloutSummary>> {
        let mut out = Vec::new();
        for id in self.rollouts(service)? {
            if let Some(h) = self.load(service, id)? {
                out.push(RolloutSummary {
                    rollout: id,
                    samples: h.samples.len(),
                    decisions: h.decisions.len(),
                    last_phase: h
                        .samples
                        .last()
                        .map(|s| s.phase.clone())
                        .unwrap_or_default(),
                });
            }
        }
        Ok(out)
    }
}

/// The controller's recorder: the current rollout of each service, in memory, saved to the
/// store now and then. Recording never fails the controller: a write error is logged.
#[derive(Debug)]
pub struct Recorder {
    store: HistoryStore,
    current: BTreeMap<String, (History, usize)>,
}

impl Recorder {
    pub fn new(store: HistoryStore) -> Recorder {
        Recorder {
            store,
            current: BTreeMap::new(),
        }
    }

    /// The service's rollout `rollout`, from memory, else from the store (after a restart),
    /// else new.
    fn entry(&mut self, service: &str, rollout: u64) -> &mut (History, usize) {
        let stale = self
            .current
            .get(service)
            .is_some_and(|(h, _)| h.rollout != rollout);
        if stale || !self.current.contains_key(service) {
            let h = self
                .store
                .load(service, rollout)
                .ok()
                .flatten()
                .unwrap_or_else(|| History {
                    service: service.to_string(),
                    rollout,
                    ..History::default()
                });
            self.current.insert(service.to_string(), (h, 0));
        }
        self.current.get_mut(service).expect("inserted above")
    }

    fn save(&self, service: &str) {
        if let Some((h, _)) = self.current.get(service) {
            if let Err(e) = self.store.save(h) {
                tracing::warn!(service, error = %e, "cannot write the rollout history; `canary report` will miss part of it");
            }
        }
    }

    /// A poll's status of a service in rollout `rollout`.
    pub fn sample(&mut self, service: &str, rollout: u64, sample: Sample) {
        let (h, unsaved) = self.entry(service, rollout);
        h.push_sample(sample);
        *unsaved += 1;
        if *unsaved >= (h.samples.len() / 100).max(1) {
            *unsaved = 0;
            self.save(service);
        }
    }

    /// A decision of a service in rollout `rollout`.
    pub fn decision(&mut self, service: &str, rollout: u64, d: &Decision) {
        let (h, unsaved) = self.entry(service, rollout);
        h.push_decision(d.clone());
        *unsaved = 0;
        self.save(service);
    }
}
