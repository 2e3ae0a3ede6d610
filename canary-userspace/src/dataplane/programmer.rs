//! The [`Programmer`]: the state of the maps as this process wrote them, and the planner that
//! diffs the desired services against it. Each placed service owns its tables and returns its
//! own changes (backend entries, changed Maglev slots, its `SERVICES` entry); the programmer
//! orders them so that no packet sees a half-built service, and keeps the backend indices.
//! Pure: no I/O, no clock.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;

use canary_common::{
    Backend, ServiceEntry, ServiceKey, VipKey, BACKEND_FLAG_UP, MAX_BACKENDS,
    MAX_BACKENDS_PER_GROUP, MAX_SERVICES, NO_BACKEND, SERVICE_FLAG_CLIENT_IP,
};

use super::keys::{service_key, vip_key};
use super::{maglev, DataPlane, DataPlaneError, MapWrite, ServiceSpec, WrittenState};
use crate::domain::{Affinity, Group, Protocol};

/// Why a desired state cannot be programmed. Nothing is written when planning fails.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("service name {0:?} is used twice; give every service a unique name")]
    DuplicateService(String),
    #[error("services {first:?} and {second:?} have the same VIP, port and protocol; each needs its own")]
    DuplicateServiceKey { first: String, second: String },
    #[error("backend name {backend:?} is used twice in service {service:?}; names must be unique within a service")]
    DuplicateBackend { service: String, backend: String },
    #[error("{count} services configured, the data plane holds at most {max}; remove some")]
    TooManyServices { count: usize, max: u32 },
    #[error("service {service:?} has {count} {group} backends, at most {max} per group keep the Maglev table balanced")]
    TooManyBackendsInGroup {
        service: String,
        group: &'static str,
        count: usize,
        max: u32,
    },
    #[error("{needed} backend slots needed, the data plane holds {max}; remove backends")]
    TooManyBackends { needed: usize, max: u32 },
}

/// A backend placed at an index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlacedBackend {
    pub name: String,
    pub index: u32,
    pub group: Group,
    pub mac: [u8; 6],
    pub up: bool,
}

impl PlacedBackend {
    fn entry(&self, service_index: u32) -> Backend {
        Backend {
            mac: self.mac,
            flags: if self.up { BACKEND_FLAG_UP } else { 0 },
            service_index,
            group: self.group.index(),
        }
    }
}

/// A service placed at an index, with what is known to be in its maps.
#[derive(Clone, Debug)]
pub struct PlacedService {
    pub name: String,
    pub index: u32,
    pub vip: SocketAddr,
    pub protocol: Protocol,
    pub affinity: Affinity,
    pub backends: Vec<PlacedBackend>,
    /// Per group, the table as written (backend indices), `None` when unknown.
    tables: [Option<Vec<u32>>; 2],
    /// The `SERVICES` entry as written (`None`: not written).
    written_entry: Option<(ServiceKey, ServiceEntry)>,
    /// False after a failed apply: the `SERVICES` and `BACKENDS` entries are rewritten.
    known: bool,
}

impl PlacedService {
    pub fn key(&self) -> ServiceKey {
        service_key(self.vip, self.protocol)
    }

    fn entry(&self) -> ServiceEntry {
        ServiceEntry {
            index: self.index,
            flags: match self.affinity {
                Affinity::Flow => 0,
                Affinity::ClientIp => SERVICE_FLAG_CLIENT_IP,
            },
        }
    }

    pub fn backend(&self, name: &str) -> Option<&PlacedBackend> {
        self.backends.iter().find(|b| b.name == name)
    }

    pub fn backend_by_index(&self, index: u32) -> Option<&PlacedBackend> {
        self.backends.iter().find(|b| b.index == index)
    }

    /// The backend index at `slot` of `group`'s table (`NO_BACKEND` for an empty group): what
    /// the kernel reads from `MAGLEV`.
    pub fn slot(&self, group: Group, slot: u32) -> u32 {
        let slot = slot as usize;
        match &self.tables[group.index() as usize] {
            Some(t) => t.get(slot).copied().unwrap_or(NO_BACKEND),
            None => self.table(group).get(slot).copied().unwrap_or(NO_BACKEND),
        }
    }

    /// The `BACKENDS` entry of one of this service's backends by global index: what the kernel
    /// reads for a slot.
    pub fn backend_entry(&self, index: u32) -> Option<Backend> {
        self.backend_by_index(index).map(|b| b.entry(self.index))
    }

    /// The Maglev table of a group as it should be now (backend indices per slot).
    pub fn table(&self, group: Group) -> Vec<u32> {
        let members: Vec<&PlacedBackend> = self
            .backends
            .iter()
            .filter(|b| b.up && b.group == group)
            .collect();
        let names: Vec<&str> = members.iter().map(|b| b.name.as_str()).collect();
        maglev::build_table(&names)
            .into_iter()
            .map(|p| members.get(p as usize).map_or(NO_BACKEND, |b| b.index))
            .collect()
    }

    /// A service newly placed at `index`, nothing written yet.
    fn new(spec: &ServiceSpec, index: u32) -> PlacedService {
        PlacedService {
            name: spec.name.clone(),
            index,
            vip: spec.vip,
            protocol: spec.protocol,
            affinity: spec.affinity,
            backends: Vec::new(),
            tables: [None, None],
            written_entry: None,
            known: true,
        }
    }

    /// Takes `spec`'s backends (keeping, adding or removing by name) and returns the writes
    /// that bring this service's `BACKENDS` entries and Maglev slots to it. Backends going
    /// down or removed are in `changes.lowered`, to be written after every table moved off
    /// them.
    fn update(&mut self, spec: &ServiceSpec, indices: &mut BackendIndices) -> ServiceChanges {
        self.vip = spec.vip;
        self.protocol = spec.protocol;
        self.affinity = spec.affinity;
        let mut changes = ServiceChanges::default();
        let mut backends = Vec::with_capacity(spec.backends.len());
        for b in &spec.backends {
            let old = self.backends.iter().find(|p| p.name == b.name);
            let (index, fresh, old_entry) = if let Some(p) = old {
                (p.index, false, self.known.then(|| p.entry(self.index)))
            } else {
                let (i, reused) = indices
                    .allocate(&self.name, &b.name)
                    .expect("capacity checked by the plan");
                (i, reused, None)
            };
            if fresh {
                changes.writes.push(MapWrite::ResetBackendStats { index });
            }
            let placed = PlacedBackend {
                name: b.name.clone(),
                index,
                group: b.group,
                mac: b.mac,
                up: b.up,
            };
            let entry = placed.entry(self.index);
            if old_entry != Some(entry) {
                let write = MapWrite::Backend {
                    index,
                    backend: entry,
                };
                // Going down: after the tables; anything else: before them.
                if old_entry.is_some_and(|o| o.flags & BACKEND_FLAG_UP != 0) && !b.up {
                    changes.lowered.push(write);
                } else {
                    changes.writes.push(write);
                }
            }
            backends.push(placed);
        }
        let removed: Vec<PlacedBackend> = self
            .backends
            .iter()
            .filter(|old| !backends.iter().any(|b| b.name == old.name))
            .cloned()
            .collect();
        for old in &removed {
            self.retire(old, indices, &mut changes.lowered);
        }
        self.backends = backends;
        changes.writes.extend(self.slot_changes());
        changes
    }

    /// Marks a backend of this service down (written after the tables) and retires its index.
    fn retire(&self, b: &PlacedBackend, indices: &mut BackendIndices, lowered: &mut Vec<MapWrite>) {
        lowered.push(MapWrite::Backend {
            index: b.index,
            backend: PlacedBackend {
                up: false,
                ..b.clone()
            }
            .entry(self.index),
        });
        indices.retire(Some(&self.name), Some(&b.name), b.index);
    }

    /// Maglev: only the slots that differ from what is written (every slot of a table not
    /// known to be written); the tables are then known.
    fn slot_changes(&mut self) -> Vec<MapWrite> {
        let mut writes = Vec::new();
        for group in Group::BOTH {
            let table = self.table(group);
            let slots: Vec<(u32, u32)> = match &self.tables[group.index() as usize] {
                Some(old) => table
                    .iter()
                    .zip(old)
                    .enumerate()
                    .filter(|(_, (new, old))| new != old)
                    .map(|(slot, (new, _))| (slot as u32, *new))
                    .collect(),
                None => table
                    .iter()
                    .enumerate()
                    .map(|(slot, b)| (slot as u32, *b))
                    .collect(),
            };
            if !slots.is_empty() {
                writes.push(MapWrite::MaglevSlots {
                    service_index: self.index,
                    group: group.index(),
                    slots,
                });
            }
            self.tables[group.index() as usize] = Some(table);
        }
        writes
    }

    /// The `SERVICES` entry, when it differs from what is written (or that is unknown).
    fn entry_changes(&mut self) -> Vec<MapWrite> {
        let mut writes = Vec::new();
        let key = self.key();
        let entry = self.entry();
        if !self.known || self.written_entry != Some((key, entry)) {
            writes.push(MapWrite::ServiceInsert { key, entry });
            if let Some((old_key, _)) = self.written_entry {
                if old_key != key {
                    writes.push(MapWrite::ServiceRemove { key: old_key });
                }
            }
            self.written_entry = Some((key, entry));
        }
        self.known = true;
        writes
    }

    /// Every backend of a removed service goes down (after the tables) and is retired; the
    /// `SERVICES` entry is removed first.
    fn remove(
        self,
        indices: &mut BackendIndices,
        writes: &mut Vec<MapWrite>,
        lowered: &mut Vec<MapWrite>,
    ) {
        let key = self
            .written_entry
            .map_or_else(|| self.key(), |(key, _)| key);
        writes.push(MapWrite::ServiceRemove { key });
        for b in &self.backends {
            self.retire(b, indices, lowered);
        }
    }
}

/// What updating one service writes: before the `SERVICES` entry, and after every table.
#[derive(Default)]
struct ServiceChanges {
    writes: Vec<MapWrite>,
    lowered: Vec<MapWrite>,
}

#[derive(Clone, Debug)]
struct Retired {
    /// `None`: found in the maps after a restart, service and name unknown.
    service: Option<String>,
    name: Option<String>,
    index: u32,
}

/// Which `BACKENDS` indices are free: never used ones first, then retired ones, oldest first.
#[derive(Clone, Debug)]
pub(super) struct BackendIndices {
    /// Never used (lowest first).
    fresh: BTreeSet<u32>,
    /// Of removed backends, oldest first.
    retired: VecDeque<Retired>,
}

impl BackendIndices {
    fn new() -> Self {
        BackendIndices {
            fresh: (0..MAX_BACKENDS).collect(),
            retired: VecDeque::new(),
        }
    }

    fn available(&self) -> usize {
        self.fresh.len() + self.retired.len()
    }

    /// An index for backend `name` of `service`, and whether it is taken fresh (its stats must
    /// be zeroed). The same backend re-added gets its old index back: flows still pinned to it
    /// stay valid.
    fn allocate(&mut self, service: &str, name: &str) -> Option<(u32, bool)> {
        if let Some(pos) = self
            .retired
            .iter()
            .position(|r| r.service.as_deref() == Some(service) && r.name.as_deref() == Some(name))
        {
            let r = self.retired.remove(pos)?;
            return Some((r.index, false));
        }
        if let Some(i) = self.fresh.pop_first() {
            return Some((i, true));
        }
        self.retired.pop_front().map(|r| (r.index, true))
    }

    fn retire(&mut self, service: Option<&str>, name: Option<&str>, index: u32) {
        self.retired.push_back(Retired {
            service: service.map(str::to_owned),
            name: name.map(str::to_owned),
            index,
        });
    }
}

/// The state of the maps as this process wrote them, and the planner that diffs desired
/// services against it. Pure: no I/O, no clock.
#[derive(Clone, Debug)]
pub struct Programmer {
    services: BTreeMap<String, PlacedService>,
    indices: BackendIndices,
    /// `VIPS` as written: address -> number of services on it.
    vips: BTreeMap<([u8; 16], u8), u32>,
    /// Services found in the maps after a restart that are not configured: removed by the next
    /// plan.
    orphan_services: Vec<ServiceKey>,
    /// Backend entries found after a restart that match no configured backend: zeroed and
    /// retired by the next plan.
    orphan_backends: Vec<u32>,
}

impl Default for Programmer {
    fn default() -> Self {
        Self::new()
    }
}

/// The writes that take the maps from the programmer's state to the desired one, and the
/// resulting state. Adopt it with [`Programmer::commit`] once the writes are applied.
#[derive(Clone, Debug)]
pub struct Plan {
    pub writes: Vec<MapWrite>,
    next: Programmer,
}

impl Plan {
    /// Nothing to write.
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }
}

impl Programmer {
    /// Empty maps (a freshly loaded program).
    pub fn new() -> Self {
        Programmer {
            services: BTreeMap::new(),
            indices: BackendIndices::new(),
            vips: BTreeMap::new(),
            orphan_services: Vec::new(),
            orphan_backends: Vec::new(),
        }
    }

    /// Rebuilds the index assignment from maps written by an earlier process (re-attached
    /// after a restart), for the services about to be programmed: a configured service keeps
    /// the index its key has in `SERVICES`; a configured backend keeps the index of the
    /// `BACKENDS` entry with the same service index and MAC (what the kernel forwards by).
    /// Maglev tables are treated as unknown, so the next plan rewrites them in full (same
    /// values where nothing changed: no flow moves). Entries that match nothing are removed or
    /// marked down by the next plan.
    pub fn recover(state: &WrittenState, desired: &[ServiceSpec]) -> Programmer {
        let mut p = Programmer::new();
        let mut taken_services = BTreeSet::new();
        let mut claimed_backends = BTreeSet::new();
        for spec in desired {
            let key = service_key(spec.vip, spec.protocol);
            let Some((_, entry)) = state.services.iter().find(|(k, _)| *k == key) else {
                continue;
            };
            if entry.index >= MAX_SERVICES
                || !taken_services.insert(entry.index)
                || p.services.contains_key(&spec.name)
            {
                continue;
            }
            let mut placed = PlacedService::new(spec, entry.index);
            placed.written_entry = Some((key, *entry));
            for b in &spec.backends {
                let found = state.backends.iter().find(|(i, be)| {
                    be.service_index == entry.index
                        && be.mac == b.mac
                        && b.mac != [0; 6]
                        && !claimed_backends.contains(i)
                });
                if let Some((i, be)) = found {
                    claimed_backends.insert(*i);
                    placed.backends.push(PlacedBackend {
                        name: b.name.clone(),
                        index: *i,
                        group: Group::from_index(be.group).unwrap_or(b.group),
                        mac: be.mac,
                        up: be.flags & BACKEND_FLAG_UP != 0,
                    });
                }
            }
            p.services.insert(spec.name.clone(), placed);
        }
        for (key, entry) in &state.services {
            if !p
                .services
                .values()
                .any(|s| s.key() == *key && s.index == entry.index)
            {
                p.orphan_services.push(*key);
            }
        }
        // Every non-zero BACKENDS entry has been used; those not claimed by a configured
        // backend are zeroed and retired by the next plan.
        for (i, _) in &state.backends {
            if *i < MAX_BACKENDS && p.indices.fresh.remove(i) && !claimed_backends.contains(i) {
                p.orphan_backends.push(*i);
            }
        }
        for (key, count) in &state.vips {
            p.vips.insert((key.addr, key.family), *count);
        }
        p
    }

    /// Only indices below `n` are free (tests of index exhaustion).
    #[cfg(test)]
    pub(super) fn limit_backend_indices_for_tests(&mut self, n: u32) {
        self.indices.fresh = (0..n).collect();
    }

    /// The placed services, by name.
    pub fn services(&self) -> impl Iterator<Item = &PlacedService> {
        self.services.values()
    }

    pub fn service(&self, name: &str) -> Option<&PlacedService> {
        self.services.get(name)
    }

    /// Index of a service (for `DataPlane::set_control`, `service_stats`).
    pub fn service_index(&self, name: &str) -> Option<u32> {
        self.services.get(name).map(|s| s.index)
    }

    /// Index of a backend (for `DataPlane::backend_stats`).
    pub fn backend_index(&self, service: &str, backend: &str) -> Option<u32> {
        self.services
            .get(service)?
            .backend(backend)
            .map(|b| b.index)
    }

    /// Forgets what the maps hold, so the next plan rewrites every entry of the configured
    /// services in full (after a failed apply left them in an unknown state).
    pub fn invalidate(&mut self) {
        for s in self.services.values_mut() {
            s.tables = [None, None];
            s.known = false;
        }
        // Unknown counts: every VIP is rewritten or removed.
        for count in self.vips.values_mut() {
            *count = u32::MAX;
        }
    }

    /// Adopts a plan whose writes were applied.
    pub fn commit(&mut self, plan: Plan) {
        *self = plan.next;
    }

    /// Plans, applies and commits. On a failed apply the plan is dropped and the maps are
    /// marked unknown: the next call plans the same indices again and rewrites everything.
    pub fn program(
        &mut self,
        dataplane: &mut dyn DataPlane,
        desired: &[ServiceSpec],
    ) -> Result<Vec<MapWrite>, ProgramError> {
        let plan = self.plan(desired)?;
        match dataplane.apply(&plan.writes) {
            Ok(()) => {
                let writes = plan.writes.clone();
                self.commit(plan);
                Ok(writes)
            }
            Err(e) => {
                self.invalidate();
                Err(ProgramError::Apply(e))
            }
        }
    }

    fn validate(desired: &[ServiceSpec]) -> Result<(), PlanError> {
        if desired.len() > MAX_SERVICES as usize {
            return Err(PlanError::TooManyServices {
                count: desired.len(),
                max: MAX_SERVICES,
            });
        }
        let mut names = BTreeSet::new();
        let mut keys: HashMap<ServiceKey, &str> = HashMap::new();
        for s in desired {
            if !names.insert(s.name.as_str()) {
                return Err(PlanError::DuplicateService(s.name.clone()));
            }
            if let Some(first) = keys.insert(service_key(s.vip, s.protocol), &s.name) {
                return Err(PlanError::DuplicateServiceKey {
                    first: first.to_owned(),
                    second: s.name.clone(),
                });
            }
            let mut backend_names = BTreeSet::new();
            for b in &s.backends {
                if !backend_names.insert(b.name.as_str()) {
                    return Err(PlanError::DuplicateBackend {
                        service: s.name.clone(),
                        backend: b.name.clone(),
                    });
                }
            }
            for group in Group::BOTH {
                let count = s.backends.iter().filter(|b| b.group == group).count();
                if count > MAX_BACKENDS_PER_GROUP as usize {
                    return Err(PlanError::TooManyBackendsInGroup {
                        service: s.name.clone(),
                        group: group.as_str(),
                        count,
                        max: MAX_BACKENDS_PER_GROUP,
                    });
                }
            }
        }
        Ok(())
    }

    /// The writes that bring the maps from this state to `desired`, and the resulting state.
    pub fn plan(&self, desired: &[ServiceSpec]) -> Result<Plan, PlanError> {
        Self::validate(desired)?;
        let mut next = self.clone();
        let mut writes = Vec::new();
        // Marked down only after every table has moved off them.
        let mut lowered: Vec<MapWrite> = Vec::new();
        let desired_names: BTreeSet<&str> = desired.iter().map(|s| s.name.as_str()).collect();

        // Services no longer configured: stop new traffic first, then their backends go down.
        for key in std::mem::take(&mut next.orphan_services) {
            writes.push(MapWrite::ServiceRemove { key });
        }
        let removed: Vec<String> = next
            .services
            .keys()
            .filter(|n| !desired_names.contains(n.as_str()))
            .cloned()
            .collect();
        for name in removed {
            let s = next.services.remove(&name).expect("listed above");
            s.remove(&mut next.indices, &mut writes, &mut lowered);
        }
        for index in std::mem::take(&mut next.orphan_backends) {
            lowered.push(MapWrite::Backend {
                index,
                backend: Backend::default(),
            });
            next.indices.retire(None, None, index);
        }

        // Backend indices needed beyond those already held.
        let new_needed: usize = desired
            .iter()
            .map(|d| {
                let placed = next.services.get(&d.name);
                d.backends
                    .iter()
                    .filter(|b| placed.and_then(|p| p.backend(&b.name)).is_none())
                    .count()
            })
            .sum();
        if new_needed > next.indices.available() {
            return Err(PlanError::TooManyBackends {
                needed: new_needed,
                max: MAX_BACKENDS,
            });
        }

        let used_service_indices: BTreeSet<u32> = next.services.values().map(|s| s.index).collect();
        let mut free_service_indices =
            (0..MAX_SERVICES).filter(|i| !used_service_indices.contains(i));

        for spec in desired {
            let is_new = !next.services.contains_key(&spec.name);
            let mut s = if let Some(s) = next.services.remove(&spec.name) {
                s
            } else {
                let index = free_service_indices
                    .next()
                    .expect("validated: at most MAX_SERVICES services");
                writes.push(MapWrite::ResetServiceStats { index });
                PlacedService::new(spec, index)
            };
            let changes = s.update(spec, &mut next.indices);
            writes.extend(changes.writes);
            lowered.extend(changes.lowered);
            // A new service's control entry is written before its `SERVICES` entry, so no
            // packet sees the control of an earlier service at that index.
            if is_new {
                writes.push(MapWrite::Control {
                    index: s.index,
                    control: spec.initial_control,
                });
            }
            writes.extend(s.entry_changes());
            next.services.insert(s.name.clone(), s);
        }

        // VIPS: number of services per address.
        let mut vips: BTreeMap<([u8; 16], u8), u32> = BTreeMap::new();
        for s in next.services.values() {
            let k = vip_key(s.vip.ip());
            *vips.entry((k.addr, k.family)).or_default() += 1;
        }
        for (&(addr, family), &count) in &vips {
            if next.vips.get(&(addr, family)) != Some(&count) {
                writes.push(MapWrite::VipSet {
                    key: VipKey {
                        addr,
                        family,
                        _pad: [0; 3],
                    },
                    services: count,
                });
            }
        }
        for &(addr, family) in next.vips.keys() {
            if !vips.contains_key(&(addr, family)) {
                writes.push(MapWrite::VipRemove {
                    key: VipKey {
                        addr,
                        family,
                        _pad: [0; 3],
                    },
                });
            }
        }
        next.vips = vips;
        writes.extend(lowered);
        Ok(Plan { writes, next })
    }
}

/// A failed [`Programmer::program`].
#[derive(Debug, thiserror::Error)]
pub enum ProgramError {
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("writing the maps failed: {0}")]
    Apply(#[source] DataPlaneError),
}
