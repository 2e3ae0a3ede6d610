//! In-memory maps for tests (compiled for this crate's tests only). The kernel's choice for a
//! new flow is read from these maps with the kernel's own rule, [`canary_common::choose`].

use std::collections::HashMap;

use canary_common::{
    choose, maglev_index, Backend, BackendStats, Choice, FlowKey, GlobalConfig, Selection,
    ServiceControl, ServiceEntry, ServiceKey, ServiceStats, Tables, VipKey, GROUP_CANARY,
    MAGLEV_ENTRIES, MAGLEV_TABLE_SIZE, MAX_BACKENDS, MAX_SERVICES, NO_BACKEND,
    SERVICE_FLAG_CLIENT_IP,
};

use super::{Counters, DataPlane, DataPlaneError, MapWrite, WrittenState};

/// In-memory maps that record every write, for the controller's tests. Counters and stats are
/// plain fields that tests set.
#[derive(Clone, Debug)]
pub struct FakeDataPlane {
    /// Every write applied, in order.
    pub writes: Vec<MapWrite>,
    pub config: GlobalConfig,
    pub services: HashMap<ServiceKey, ServiceEntry>,
    pub vips: HashMap<VipKey, u32>,
    pub control: Vec<ServiceControl>,
    pub backends: Vec<Backend>,
    pub maglev: Vec<u32>,
    pub counters: Counters,
    pub backend_stats: Vec<BackendStats>,
    pub service_stats: Vec<ServiceStats>,
    /// When set, the next `apply` fails after applying this many writes.
    pub fail_apply_after: Option<usize>,
}

impl Default for FakeDataPlane {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeDataPlane {
    /// Maps as a freshly loaded program has them: arrays zeroed, hashes empty.
    pub fn new() -> Self {
        FakeDataPlane {
            writes: Vec::new(),
            config: GlobalConfig::default(),
            services: HashMap::new(),
            vips: HashMap::new(),
            control: vec![ServiceControl::default(); MAX_SERVICES as usize],
            backends: vec![Backend::default(); MAX_BACKENDS as usize],
            maglev: vec![0; MAGLEV_ENTRIES as usize],
            counters: Counters::default(),
            backend_stats: vec![BackendStats::default(); MAX_BACKENDS as usize],
            service_stats: vec![ServiceStats::default(); MAX_SERVICES as usize],
            fail_apply_after: None,
        }
    }

    /// Maglev slot writes recorded so far.
    pub fn maglev_slots_written(&self) -> usize {
        self.writes
            .iter()
            .map(|w| match w {
                MapWrite::MaglevSlots { slots, .. } => slots.len(),
                _ => 0,
            })
            .sum()
    }

    /// What the kernel would pick for a new flow, read from these maps by the kernel's rule,
    /// to check the programmer's writes against its own `route`: `(group index, backend index)`.
    pub fn kernel_choice(&self, key: &FlowKey, now_ns: u64) -> Option<(u32, u32)> {
        let choice = self.new_flow_choice(key, now_ns)?;
        choice.backend.map(|(index, _)| (choice.group, index))
    }

    /// The kernel's whole choice for a new flow (`None`: no service at the flow's destination).
    pub fn new_flow_choice(&self, key: &FlowKey, now_ns: u64) -> Option<Choice> {
        let skey = ServiceKey {
            addr: key.dst,
            port: key.dst_port,
            protocol: key.protocol,
            family: key.family,
        };
        let svc = self.services.get(&skey)?;
        let control = self.control.get(svc.index as usize)?;
        let sel = Selection::of(
            key,
            svc.flags & SERVICE_FLAG_CLIENT_IP != 0,
            self.config.hash_seed,
        );
        Some(choose(self, svc.index, sel, control, now_ns))
    }

    fn check(map: &'static str, index: u32, size: u32) -> Result<usize, DataPlaneError> {
        if index < size {
            Ok(index as usize)
        } else {
            Err(DataPlaneError::IndexOutOfRange { map, index, size })
        }
    }
}

impl Tables for FakeDataPlane {
    fn slot(&self, service_index: u32, group: u32, slot: u32) -> u32 {
        if service_index >= MAX_SERVICES || group > GROUP_CANARY || slot >= MAGLEV_TABLE_SIZE {
            return NO_BACKEND;
        }
        self.maglev[maglev_index(service_index, group, slot) as usize]
    }

    fn backend(&self, index: u32) -> Option<Backend> {
        self.backends.get(index as usize).copied()
    }
}

impl DataPlane for FakeDataPlane {
    fn apply(&mut self, writes: &[MapWrite]) -> Result<(), DataPlaneError> {
        use canary_common::maps;
        for (n, w) in writes.iter().enumerate() {
            if self.fail_apply_after == Some(n) {
                self.fail_apply_after = None;
                return Err(DataPlaneError::Map {
                    map: maps::MAGLEV,
                    operation: "update",
                    source: "injected failure".into(),
                });
            }
            match w {
                MapWrite::ResetServiceStats { index } => {
                    let i = Self::check(maps::SERVICE_STATS, *index, MAX_SERVICES)?;
                    self.service_stats[i] = ServiceStats::default();
                }
                MapWrite::ResetBackendStats { index } => {
                    let i = Self::check(maps::BACKEND_STATS, *index, MAX_BACKENDS)?;
                    self.backend_stats[i] = BackendStats::default();
                }
                MapWrite::Backend { index, backend } => {
                    let i = Self::check(maps::BACKENDS, *index, MAX_BACKENDS)?;
                    self.backends[i] = *backend;
                }
                MapWrite::MaglevSlots {
                    service_index,
                    group,
                    slots,
                } => {
                    Self::check(maps::CONTROL, *service_index, MAX_SERVICES)?;
                    for &(slot, backend) in slots {
                        Self::check(maps::MAGLEV, slot, MAGLEV_TABLE_SIZE)?;
                        self.maglev[maglev_index(*service_index, *group, slot) as usize] = backend;
                    }
                }
                MapWrite::Control { index, control } => {
                    let i = Self::check(maps::CONTROL, *index, MAX_SERVICES)?;
                    self.control[i] = *control;
                }
                MapWrite::ServiceInsert { key, entry } => {
                    self.services.insert(*key, *entry);
                }
                MapWrite::ServiceRemove { key } => {
                    self.services.remove(key);
                }
                MapWrite::VipSet { key, services } => {
                    self.vips.insert(*key, *services);
                }
                MapWrite::VipRemove { key } => {
                    self.vips.remove(key);
                }
            }
            self.writes.push(w.clone());
        }
        Ok(())
    }

    fn control(&self, service_index: u32) -> Result<ServiceControl, DataPlaneError> {
        let i = Self::check(canary_common::maps::CONTROL, service_index, MAX_SERVICES)?;
        Ok(self.control[i])
    }

    fn set_global_config(&mut self, config: &GlobalConfig) -> Result<(), DataPlaneError> {
        self.config = *config;
        Ok(())
    }

    fn global_config(&self) -> Result<GlobalConfig, DataPlaneError> {
        Ok(self.config)
    }

    fn counters(&self) -> Result<Counters, DataPlaneError> {
        Ok(self.counters)
    }

    fn backend_stats(&self, backend_index: u32) -> Result<BackendStats, DataPlaneError> {
        let i = Self::check(
            canary_common::maps::BACKEND_STATS,
            backend_index,
            MAX_BACKENDS,
        )?;
        Ok(self.backend_stats[i])
    }

    fn service_stats(&self, service_index: u32) -> Result<ServiceStats, DataPlaneError> {
        let i = Self::check(
            canary_common::maps::SERVICE_STATS,
            service_index,
            MAX_SERVICES,
        )?;
        Ok(self.service_stats[i])
    }

    fn written_state(&self) -> Result<WrittenState, DataPlaneError> {
        let mut services: Vec<_> = self.services.iter().map(|(k, v)| (*k, *v)).collect();
        services.sort_by_key(|(_, e)| e.index);
        Ok(WrittenState {
            services,
            vips: self.vips.iter().map(|(k, v)| (*k, *v)).collect(),
            backends: self
                .backends
                .iter()
                .enumerate()
                .filter(|(_, b)| **b != Backend::default())
                .map(|(i, b)| (i as u32, *b))
                .collect(),
        })
    }
}
