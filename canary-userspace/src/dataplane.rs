//! The data plane as the controller sees it: a small [`DataPlane`] trait over the maps, the pure
//! [`Programmer`] that turns the desired services into map writes, the `canary route` query,
//! and an in-memory [`FakeDataPlane`] for tests. Nothing here touches aya.
//!
//! # Indices
//! The kernel refers to services and backends by index (`CONTROL`, `BACKENDS`, `MAGLEV`, and
//! the flow table's `FlowEntry::backend`). Indices are assigned here and kept by name across
//! reloads, so an established flow stays on its backend when other backends come and go:
//! - A service keeps its index while a service of that name is configured. A removed service's
//!   index is free at once (its `SERVICES` entry is deleted first, so no packet reaches it).
//! - A backend (named within its service) keeps its index while configured, whether up or
//!   down. When removed, its `BACKENDS` entry is rewritten without `BACKEND_FLAG_UP` (flows
//!   pinned to it are re-chosen by the kernel) and the index is retired: new backends take
//!   never-used indices first and retired ones only when those run out, oldest first; a
//!   backend re-added under the same name gets its retired index back if still free.
//! - After a daemon restart the assignment is recovered from the maps themselves
//!   ([`Programmer::recover`]): services by key, backends by (service index, MAC), which is
//!   what the kernel forwards by, so no established flow moves.
//!
//! # Writes
//! Only changed Maglev slots are written (katran style); a table not known to be in the map
//! (new service, or after a restart) is written in full. Writes are ordered so that no packet
//! sees a half-built service: backends before the slots that name them, slots and control
//! before the `SERVICES` entry, and a backend is marked down only after the slots moved off it.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};

use canary_common::{
    group_for_bucket, maglev_index, Backend, BackendStats, Counter, FlowKey, GlobalConfig,
    Selection, ServiceControl, ServiceEntry, ServiceKey, ServiceStats, VipKey, BACKEND_FLAG_UP,
    BUCKETS, COUNTERS, FAMILY_IPV4, FAMILY_IPV6, GROUP_CANARY, GROUP_STABLE, MAGLEV_ENTRIES,
    MAGLEV_TABLE_SIZE, MAX_BACKENDS, MAX_BACKENDS_PER_GROUP, MAX_SERVICES, NO_BACKEND,
    SERVICE_FLAG_CLIENT_IP,
};

use crate::maglev;

use crate::domain::{Affinity, Group, Protocol};

/// A backend as the controller wants it now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendSpec {
    /// Unique within the service; the identity that keeps its index across reloads.
    pub name: String,
    pub group: Group,
    /// Destination MAC of forwarded frames.
    pub mac: [u8; 6],
    /// Healthy: in its group's Maglev table. Down backends keep their index; flows pinned to
    /// them are re-chosen by the kernel.
    pub up: bool,
}

/// A service as the controller wants it now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceSpec {
    /// Unique; the identity that keeps the service's index across reloads.
    pub name: String,
    pub vip: SocketAddr,
    pub protocol: Protocol,
    pub affinity: Affinity,
    pub backends: Vec<BackendSpec>,
    /// Written to `CONTROL` only when the service is newly placed at an index (never for a
    /// service that already exists or was recovered after a restart: its weight is kept).
    pub initial_control: ServiceControl,
}

/// One write to the maps, in the order the [`Programmer`] emitted them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MapWrite {
    /// Zero a service's per-CPU `SERVICE_STATS` entry (index newly taken).
    ResetServiceStats {
        index: u32,
    },
    /// Zero a backend's per-CPU `BACKEND_STATS` entry (index newly taken).
    ResetBackendStats {
        index: u32,
    },
    Backend {
        index: u32,
        backend: Backend,
    },
    /// `MAGLEV[maglev_index(service_index, group, slot)] = backend` for each pair.
    MaglevSlots {
        service_index: u32,
        group: u32,
        slots: Vec<(u32, u32)>,
    },
    Control {
        index: u32,
        control: ServiceControl,
    },
    ServiceInsert {
        key: ServiceKey,
        entry: ServiceEntry,
    },
    ServiceRemove {
        key: ServiceKey,
    },
    VipSet {
        key: VipKey,
        services: u32,
    },
    VipRemove {
        key: VipKey,
    },
}

/// What the maps hold, read back after a restart ([`Programmer::recover`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WrittenState {
    pub services: Vec<(ServiceKey, ServiceEntry)>,
    pub vips: Vec<(VipKey, u32)>,
    /// Entries of `BACKENDS` that are not all zero.
    pub backends: Vec<(u32, Backend)>,
}

/// The global counters summed over CPUs, indexed by `Counter as usize`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counters(pub [u64; COUNTERS as usize]);

impl Default for Counters {
    fn default() -> Self {
        Counters([0; COUNTERS as usize])
    }
}

impl Counters {
    pub fn get(&self, counter: Counter) -> u64 {
        self.0[counter as usize]
    }

    /// Packets seen: the sum of the terminal outcomes.
    pub fn packets(&self) -> u64 {
        Counter::ALL
            .iter()
            .filter(|c| c.is_outcome())
            .map(|c| self.get(*c))
            .sum()
    }
}

/// Errors of a data plane implementation.
#[derive(Debug, thiserror::Error)]
pub enum DataPlaneError {
    /// A map operation failed in the kernel (or the fake was told to fail).
    #[error("{operation} on map {map} failed: {source}")]
    Map {
        map: &'static str,
        operation: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// An index beyond the map's size (a bug in the caller).
    #[error("index {index} is out of range for map {map} (size {size})")]
    IndexOutOfRange {
        map: &'static str,
        index: u32,
        size: u32,
    },
}

/// The maps of the loaded XDP program, as the controller uses them.
pub trait DataPlane {
    /// Applies the writes in order (from [`Programmer::plan`]). Stops at the first failure.
    fn apply(&mut self, writes: &[MapWrite]) -> Result<(), DataPlaneError>;
    /// Writes a service's whole control entry (weight, reset epoch, heartbeat, timeout).
    fn set_control(
        &mut self,
        service_index: u32,
        control: &ServiceControl,
    ) -> Result<(), DataPlaneError>;
    /// Reads a service's control entry back (after a restart: the weight in force).
    fn control(&self, service_index: u32) -> Result<ServiceControl, DataPlaneError>;
    /// Writes the global settings (hash seed, flags, source MAC).
    fn set_global_config(&mut self, config: &GlobalConfig) -> Result<(), DataPlaneError>;
    fn global_config(&self) -> Result<GlobalConfig, DataPlaneError>;
    /// The global counters, summed over CPUs.
    fn counters(&self) -> Result<Counters, DataPlaneError>;
    /// A backend's counters, summed over CPUs.
    fn backend_stats(&self, backend_index: u32) -> Result<BackendStats, DataPlaneError>;
    /// A service's counters, summed over CPUs.
    fn service_stats(&self, service_index: u32) -> Result<ServiceStats, DataPlaneError>;
    /// Services, VIPs and backends as the maps hold them (for [`Programmer::recover`]).
    fn written_state(&self) -> Result<WrittenState, DataPlaneError>;
}

/// `CLOCK_MONOTONIC` now, in ns: the clock of `bpf_ktime_get_ns`, for `ServiceControl`'s
/// heartbeat and reset epoch.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_MONOTONIC) failed");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn addr_bytes(ip: IpAddr) -> ([u8; 16], u8) {
    let mut addr = [0u8; 16];
    match ip {
        IpAddr::V4(v4) => {
            addr[..4].copy_from_slice(&v4.octets());
            (addr, FAMILY_IPV4)
        }
        IpAddr::V6(v6) => (v6.octets(), FAMILY_IPV6),
    }
}

/// `SERVICES` key of a VIP and protocol (address and port in network byte order).
pub fn service_key(vip: SocketAddr, protocol: Protocol) -> ServiceKey {
    let (addr, family) = addr_bytes(vip.ip());
    ServiceKey {
        addr,
        port: vip.port().to_be(),
        protocol: protocol.number(),
        family,
    }
}

/// `VIPS` key of an address.
pub fn vip_key(ip: IpAddr) -> VipKey {
    let (addr, family) = addr_bytes(ip);
    VipKey {
        addr,
        family,
        _pad: [0; 3],
    }
}

/// The flow key the kernel builds for a packet from `src` to `dst`. `None` when the families
/// differ (no such packet).
pub fn flow_key(src: SocketAddr, dst: SocketAddr, protocol: Protocol) -> Option<FlowKey> {
    let (src_addr, family) = addr_bytes(src.ip());
    let (dst_addr, dst_family) = addr_bytes(dst.ip());
    (family == dst_family).then_some(FlowKey {
        src: src_addr,
        dst: dst_addr,
        src_port: src.port().to_be(),
        dst_port: dst.port().to_be(),
        protocol: protocol.number(),
        family,
        _pad: [0; 2],
    })
}

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

/// Why `route` cannot answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("source {src} and destination {dst} are not of the same address family")]
    FamilyMismatch { src: SocketAddr, dst: SocketAddr },
    #[error("no service is configured at {dst}/{protocol:?}; check the VIP, port and --proto")]
    NoService { dst: SocketAddr, protocol: Protocol },
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
}

#[derive(Clone, Debug)]
struct Retired {
    service: String,
    /// `None`: found in the maps after a restart, name unknown.
    name: Option<String>,
    index: u32,
}

/// The state of the maps as this process wrote them, and the planner that diffs desired
/// services against it. Pure: no I/O, no clock.
#[derive(Clone, Debug)]
pub struct Programmer {
    services: BTreeMap<String, PlacedService>,
    /// Backend indices never used (lowest first).
    fresh_backends: BTreeSet<u32>,
    /// Backend indices of removed backends, oldest first.
    retired_backends: VecDeque<Retired>,
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
            fresh_backends: (0..MAX_BACKENDS).collect(),
            retired_backends: VecDeque::new(),
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
            let mut placed = PlacedService {
                name: spec.name.clone(),
                index: entry.index,
                vip: spec.vip,
                protocol: spec.protocol,
                affinity: spec.affinity,
                backends: Vec::new(),
                tables: [None, None],
                written_entry: Some((key, *entry)),
                known: true,
            };
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
            if *i < MAX_BACKENDS && p.fresh_backends.remove(i) && !claimed_backends.contains(i) {
                p.orphan_backends.push(*i);
            }
        }
        for (key, count) in &state.vips {
            p.vips.insert((key.addr, key.family), *count);
        }
        p
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

    fn allocate_backend(&mut self, service: &str, name: &str) -> Option<(u32, bool)> {
        // The same backend re-added: its old index, flows still pinned to it stay valid.
        if let Some(pos) = self
            .retired_backends
            .iter()
            .position(|r| r.service == service && r.name.as_deref() == Some(name))
        {
            let r = self.retired_backends.remove(pos)?;
            return Some((r.index, false));
        }
        if let Some(i) = self.fresh_backends.pop_first() {
            return Some((i, true));
        }
        self.retired_backends.pop_front().map(|r| (r.index, true))
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
            if let Some((key, _)) = s.written_entry {
                writes.push(MapWrite::ServiceRemove { key });
            } else {
                writes.push(MapWrite::ServiceRemove { key: s.key() });
            }
            for b in &s.backends {
                lowered.push(MapWrite::Backend {
                    index: b.index,
                    backend: PlacedBackend {
                        up: false,
                        ..b.clone()
                    }
                    .entry(s.index),
                });
                next.retired_backends.push_back(Retired {
                    service: s.name.clone(),
                    name: Some(b.name.clone()),
                    index: b.index,
                });
            }
        }
        for index in std::mem::take(&mut next.orphan_backends) {
            lowered.push(MapWrite::Backend {
                index,
                backend: Backend::default(),
            });
            next.retired_backends.push_back(Retired {
                service: String::new(),
                name: None,
                index,
            });
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
        let available = next.fresh_backends.len() + next.retired_backends.len();
        if new_needed > available {
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
            if is_new {
                let index = free_service_indices
                    .next()
                    .expect("validated: at most MAX_SERVICES services");
                writes.push(MapWrite::ResetServiceStats { index });
                next.services.insert(
                    spec.name.clone(),
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
                    },
                );
            }
            let mut s = next.services.remove(&spec.name).expect("inserted above");
            s.vip = spec.vip;
            s.protocol = spec.protocol;
            s.affinity = spec.affinity;

            // Backends: keep, add, or remove by name.
            let mut backends = Vec::with_capacity(spec.backends.len());
            for b in &spec.backends {
                let old = s.backends.iter().find(|p| p.name == b.name).cloned();
                let (index, fresh, old_entry) = if let Some(p) = old {
                    (p.index, false, s.known.then(|| p.entry(s.index)))
                } else {
                    let (i, reused) = next
                        .allocate_backend(&s.name, &b.name)
                        .expect("capacity checked above");
                    (i, reused, None)
                };
                if fresh {
                    writes.push(MapWrite::ResetBackendStats { index });
                }
                let placed = PlacedBackend {
                    name: b.name.clone(),
                    index,
                    group: b.group,
                    mac: b.mac,
                    up: b.up,
                };
                let entry = placed.entry(s.index);
                if old_entry != Some(entry) {
                    let write = MapWrite::Backend {
                        index,
                        backend: entry,
                    };
                    // Going down: after the tables; anything else: before them.
                    if old_entry.is_some_and(|o| o.flags & BACKEND_FLAG_UP != 0) && !b.up {
                        lowered.push(write);
                    } else {
                        writes.push(write);
                    }
                }
                backends.push(placed);
            }
            for old in &s.backends {
                if !backends.iter().any(|b| b.name == old.name) {
                    lowered.push(MapWrite::Backend {
                        index: old.index,
                        backend: PlacedBackend {
                            up: false,
                            ..old.clone()
                        }
                        .entry(s.index),
                    });
                    next.retired_backends.push_back(Retired {
                        service: s.name.clone(),
                        name: Some(old.name.clone()),
                        index: old.index,
                    });
                }
            }
            s.backends = backends;

            // Maglev: only the slots that differ from what is written.
            for group in Group::BOTH {
                let table = s.table(group);
                let slots: Vec<(u32, u32)> = match &s.tables[group.index() as usize] {
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
                        service_index: s.index,
                        group: group.index(),
                        slots,
                    });
                }
                s.tables[group.index() as usize] = Some(table);
            }

            if is_new {
                writes.push(MapWrite::Control {
                    index: s.index,
                    control: spec.initial_control,
                });
            }
            let key = s.key();
            let entry = s.entry();
            if !s.known || s.written_entry != Some((key, entry)) {
                writes.push(MapWrite::ServiceInsert { key, entry });
                if let Some((old_key, _)) = s.written_entry {
                    if old_key != key {
                        writes.push(MapWrite::ServiceRemove { key: old_key });
                    }
                }
                s.written_entry = Some((key, entry));
            }
            s.known = true;
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

    /// Which group and backend a new flow from `src` to `dst` would get now, by the kernel's
    /// rule (spec: bucket, weight, dead-man switch, group fallback), from the tables as
    /// programmed. `control` is the service's control entry in force; `now_ns` is
    /// `CLOCK_MONOTONIC` (for the dead-man switch).
    pub fn route(
        &self,
        src: SocketAddr,
        dst: SocketAddr,
        protocol: Protocol,
        hash_seed: u32,
        control: &ServiceControl,
        now_ns: u64,
    ) -> Result<Route, RouteError> {
        let key = flow_key(src, dst, protocol).ok_or(RouteError::FamilyMismatch { src, dst })?;
        let service_key = service_key(dst, protocol);
        let s = self
            .services
            .values()
            .find(|s| s.key() == service_key)
            .ok_or(RouteError::NoService { dst, protocol })?;
        let selection = Selection::of(&key, s.affinity == Affinity::ClientIp, hash_seed);
        let weight = control.canary_weight.min(BUCKETS);
        let by_weight = Group::from_index(group_for_bucket(selection.bucket, weight))
            .expect("the bucket rule returns a group");
        let mut group = by_weight;
        let deadman = control.heartbeat_timeout_ns != 0
            && now_ns.saturating_sub(control.heartbeat_ns) > control.heartbeat_timeout_ns
            && group == Group::Canary;
        if deadman {
            group = Group::Stable;
        }
        let lookup = |g: Group| -> Option<&PlacedBackend> {
            let index = match &s.tables[g.index() as usize] {
                Some(t) => t[selection.slot as usize],
                None => s.table(g)[selection.slot as usize],
            };
            s.backend_by_index(index).filter(|b| b.up)
        };
        let mut backend = lookup(group);
        let mut group_fallback = false;
        if backend.is_none() && !(deadman && group.other() == Group::Canary) {
            backend = lookup(group.other());
            if backend.is_some() {
                group_fallback = true;
                group = group.other();
            }
        }
        Ok(Route {
            service: s.name.clone(),
            service_index: s.index,
            bucket: selection.bucket,
            slot: selection.slot,
            weight,
            group_by_weight: by_weight,
            group,
            backend: backend.map(|b| RoutedBackend {
                name: b.name.clone(),
                index: b.index,
            }),
            deadman_fallback: deadman,
            group_fallback,
        })
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

/// The answer to `canary route`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub service: String,
    pub service_index: u32,
    /// `0..BUCKETS`; canary when below the weight.
    pub bucket: u32,
    /// Slot in the group's Maglev table.
    pub slot: u32,
    /// The weight applied (clamped to `BUCKETS`).
    pub weight: u32,
    /// The group the bucket rule picked.
    pub group_by_weight: Group,
    /// The group the flow ends in (after the dead-man switch and group fallback).
    pub group: Group,
    /// `None`: no backend up in any allowed group (the packet would be dropped).
    pub backend: Option<RoutedBackend>,
    /// The heartbeat was stale and the flow was sent to stable instead of canary.
    pub deadman_fallback: bool,
    /// The picked group had no backend at the slot and the other group served.
    pub group_fallback: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoutedBackend {
    pub name: String,
    pub index: u32,
}

/// In-memory maps that record every write, for the controller's tests. Counters and stats are
/// plain fields that tests set.
#[derive(Clone, Debug)]
pub struct FakeDataPlane {
    /// Every write applied, in order.
    pub writes: Vec<MapWrite>,
    /// Every `set_control` call, in order.
    pub control_writes: Vec<(u32, ServiceControl)>,
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
            control_writes: Vec::new(),
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

    /// What the kernel would pick for a new flow, read from these maps (the spec's steps 6-8),
    /// to check the programmer's writes against its own `route`.
    pub fn kernel_choice(&self, key: &FlowKey, now_ns: u64) -> Option<(u32, u32)> {
        let skey = ServiceKey {
            addr: key.dst,
            port: key.dst_port,
            protocol: key.protocol,
            family: key.family,
        };
        let svc = self.services.get(&skey)?;
        let control = self.control[svc.index as usize];
        let sel = Selection::of(
            key,
            svc.flags & SERVICE_FLAG_CLIENT_IP != 0,
            self.config.hash_seed,
        );
        let mut group = group_for_bucket(sel.bucket, control.canary_weight.min(BUCKETS));
        let deadman = control.heartbeat_timeout_ns != 0
            && now_ns.saturating_sub(control.heartbeat_ns) > control.heartbeat_timeout_ns
            && group == GROUP_CANARY;
        if deadman {
            group = GROUP_STABLE;
        }
        let pick = |g: u32| {
            let b = self.maglev[maglev_index(svc.index, g, sel.slot) as usize];
            (b < MAX_BACKENDS && self.backends[b as usize].flags & BACKEND_FLAG_UP != 0)
                .then_some(b)
        };
        if let Some(b) = pick(group) {
            return Some((group, b));
        }
        if deadman {
            return None;
        }
        let other = 1 - group;
        pick(other).map(|b| (other, b))
    }

    fn check(map: &'static str, index: u32, size: u32) -> Result<usize, DataPlaneError> {
        if index < size {
            Ok(index as usize)
        } else {
            Err(DataPlaneError::IndexOutOfRange { map, index, size })
        }
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

    fn set_control(
        &mut self,
        service_index: u32,
        control: &ServiceControl,
    ) -> Result<(), DataPlaneError> {
        let i = Self::check(canary_common::maps::CONTROL, service_index, MAX_SERVICES)?;
        self.control[i] = *control;
        self.control_writes.push((service_index, *control));
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

#[cfg(test)]
#[allow(
    clippy::many_single_char_names,
    reason = "short names for programmers and planes in tests"
)]
mod tests {
    use super::*;
    use canary_common::PROTO_UDP;

    const SEED: u32 = 0x5eed;

    fn backend(name: &str, group: Group, n: u8) -> BackendSpec {
        BackendSpec {
            name: name.to_owned(),
            group,
            mac: [2, 0, 0, 0, 0, n],
            up: true,
        }
    }

    fn service(name: &str, vip: &str, backends: Vec<BackendSpec>) -> ServiceSpec {
        ServiceSpec {
            name: name.to_owned(),
            vip: vip.parse().unwrap(),
            protocol: Protocol::Tcp,
            affinity: Affinity::Flow,
            backends,
            initial_control: ServiceControl {
                canary_weight: 0,
                heartbeat_timeout_ns: 30_000_000_000,
                ..ServiceControl::default()
            },
        }
    }

    fn sentiment() -> ServiceSpec {
        service(
            "sentiment",
            "198.18.0.100:8080",
            vec![
                backend("v1-a", Group::Stable, 1),
                backend("v1-b", Group::Stable, 2),
                backend("v2-a", Group::Canary, 3),
            ],
        )
    }

    fn programmed(desired: &[ServiceSpec]) -> (Programmer, FakeDataPlane) {
        let mut p = Programmer::new();
        let mut dp = FakeDataPlane::new();
        dp.config.hash_seed = SEED;
        p.program(&mut dp, desired).unwrap();
        (p, dp)
    }

    fn position(writes: &[MapWrite], pred: impl Fn(&MapWrite) -> bool) -> usize {
        writes.iter().position(pred).expect("write present")
    }

    fn flow(i: u32) -> SocketAddr {
        SocketAddr::new(
            IpAddr::V4(std::net::Ipv4Addr::new(198, 19, (i >> 8) as u8, i as u8)),
            (1024 + i % 60_000) as u16,
        )
    }

    /// The programmer's own route agrees with what the kernel rule reads from the written maps.
    fn assert_route_matches_maps(p: &Programmer, dp: &FakeDataPlane, spec: &ServiceSpec) {
        let index = p.service_index(&spec.name).unwrap();
        let control = dp.control[index as usize];
        for i in 0..3000 {
            let r = p
                .route(flow(i), spec.vip, spec.protocol, SEED, &control, 1)
                .unwrap();
            let key = flow_key(flow(i), spec.vip, spec.protocol).unwrap();
            let kernel = dp.kernel_choice(&key, 1);
            assert_eq!(
                kernel,
                r.backend.as_ref().map(|b| (r.group.index(), b.index)),
                "flow {i}: route {r:?}"
            );
        }
    }

    #[test]
    fn new_service_is_written_fully_and_in_a_safe_order() {
        let spec = sentiment();
        let (p, dp) = programmed(std::slice::from_ref(&spec));
        let w = &dp.writes;
        assert_eq!(dp.maglev_slots_written(), 2 * MAGLEV_TABLE_SIZE as usize);
        let idx = p.service_index("sentiment").unwrap();
        let first_maglev = position(w, |x| matches!(x, MapWrite::MaglevSlots { .. }));
        let last_backend = w
            .iter()
            .rposition(|x| matches!(x, MapWrite::Backend { .. }))
            .unwrap();
        let control = position(w, |x| matches!(x, MapWrite::Control { .. }));
        let insert = position(w, |x| matches!(x, MapWrite::ServiceInsert { .. }));
        assert!(
            last_backend < first_maglev,
            "backends before the slots naming them"
        );
        assert!(control < insert && first_maglev < insert);
        assert_eq!(dp.control[idx as usize], spec.initial_control);
        assert_eq!(dp.vips.get(&vip_key(spec.vip.ip())), Some(&1));
        // Every backend up, in its group, with the service's index.
        for b in &spec.backends {
            let i = p.backend_index("sentiment", &b.name).unwrap();
            let e = dp.backends[i as usize];
            assert_eq!(
                (e.mac, e.flags, e.service_index, e.group),
                (b.mac, BACKEND_FLAG_UP, idx, b.group.index())
            );
        }
        assert_route_matches_maps(&p, &dp, &spec);
    }

    #[test]
    fn unchanged_desired_state_writes_nothing() {
        let spec = sentiment();
        let (p, _) = programmed(std::slice::from_ref(&spec));
        assert!(p.plan(&[spec]).unwrap().is_empty());
    }

    #[test]
    fn adding_a_backend_keeps_indices_and_writes_only_changed_slots() {
        let mut spec = sentiment();
        let (mut p, mut dp) = programmed(std::slice::from_ref(&spec));
        let before: Vec<u32> = spec
            .backends
            .iter()
            .map(|b| p.backend_index("sentiment", &b.name).unwrap())
            .collect();
        dp.writes.clear();
        spec.backends.push(backend("v1-c", Group::Stable, 4));
        p.program(&mut dp, std::slice::from_ref(&spec)).unwrap();
        for (b, i) in spec.backends.iter().zip(&before) {
            assert_eq!(p.backend_index("sentiment", &b.name), Some(*i));
        }
        let share = MAGLEV_TABLE_SIZE as usize / 3;
        let written = dp.maglev_slots_written();
        assert!(
            written >= share && written * 2 <= share * 3,
            "{written} slots written for a share of {share}"
        );
        assert!(!dp
            .writes
            .iter()
            .any(|w| matches!(w, MapWrite::Control { .. } | MapWrite::ServiceInsert { .. })));
        let new_index = p.backend_index("sentiment", "v1-c").unwrap();
        let backend_write = position(
            &dp.writes,
            |w| matches!(w, MapWrite::Backend { index, .. } if *index == new_index),
        );
        let maglev = position(&dp.writes, |w| matches!(w, MapWrite::MaglevSlots { .. }));
        assert!(backend_write < maglev);
        assert_route_matches_maps(&p, &dp, &spec);
    }

    #[test]
    fn removed_backend_goes_down_after_the_slots_and_keeps_its_index_until_reused() {
        let mut spec = sentiment();
        let (mut p, mut dp) = programmed(std::slice::from_ref(&spec));
        let gone = p.backend_index("sentiment", "v1-b").unwrap();
        dp.writes.clear();
        spec.backends.retain(|b| b.name != "v1-b");
        p.program(&mut dp, std::slice::from_ref(&spec)).unwrap();
        let maglev = position(&dp.writes, |w| matches!(w, MapWrite::MaglevSlots { .. }));
        let down = position(
            &dp.writes,
            |w| matches!(w, MapWrite::Backend { index, backend } if *index == gone && backend.flags == 0),
        );
        assert!(maglev < down, "slots move off before the backend goes down");
        let stable = maglev_index(p.service_index("sentiment").unwrap(), GROUP_STABLE, 0) as usize;
        assert!(dp.maglev[stable..stable + MAGLEV_TABLE_SIZE as usize]
            .iter()
            .all(|&b| b != gone));
        // A new backend takes a never-used index; the removed one gets its own back.
        spec.backends.push(backend("v1-new", Group::Stable, 9));
        p.program(&mut dp, std::slice::from_ref(&spec)).unwrap();
        assert_ne!(p.backend_index("sentiment", "v1-new"), Some(gone));
        spec.backends.push(backend("v1-b", Group::Stable, 2));
        p.program(&mut dp, std::slice::from_ref(&spec)).unwrap();
        assert_eq!(p.backend_index("sentiment", "v1-b"), Some(gone));
        assert_route_matches_maps(&p, &dp, &spec);
    }

    #[test]
    fn retired_indices_are_reused_only_when_fresh_ones_run_out() {
        let mut p = Programmer::new();
        p.fresh_backends = [0, 1].into_iter().collect();
        let two = service(
            "s",
            "198.18.0.1:80",
            vec![
                backend("a", Group::Stable, 1),
                backend("b", Group::Stable, 2),
            ],
        );
        let plan = p.plan(std::slice::from_ref(&two)).unwrap();
        p.commit(plan);
        let one = service("s", "198.18.0.1:80", vec![backend("a", Group::Stable, 1)]);
        let plan = p.plan(&[one]).unwrap();
        p.commit(plan);
        let other = service(
            "s",
            "198.18.0.1:80",
            vec![
                backend("a", Group::Stable, 1),
                backend("c", Group::Stable, 3),
            ],
        );
        let plan = p.plan(&[other]).unwrap();
        assert!(plan
            .writes
            .contains(&MapWrite::ResetBackendStats { index: 1 }));
        p.commit(plan);
        assert_eq!(p.backend_index("s", "c"), Some(1));
        let three = service(
            "s",
            "198.18.0.1:80",
            vec![
                backend("a", Group::Stable, 1),
                backend("c", Group::Stable, 3),
                backend("d", Group::Stable, 4),
            ],
        );
        assert_eq!(
            p.plan(&[three]).unwrap_err(),
            PlanError::TooManyBackends {
                needed: 1,
                max: MAX_BACKENDS
            }
        );
    }

    #[test]
    fn backend_marked_down_leaves_the_table_but_keeps_its_index() {
        let mut spec = sentiment();
        let (mut p, mut dp) = programmed(std::slice::from_ref(&spec));
        let i = p.backend_index("sentiment", "v1-a").unwrap();
        dp.writes.clear();
        spec.backends[0].up = false;
        p.program(&mut dp, std::slice::from_ref(&spec)).unwrap();
        assert_eq!(p.backend_index("sentiment", "v1-a"), Some(i));
        assert_eq!(dp.backends[i as usize].flags, 0);
        assert!(matches!(dp.writes.last(), Some(MapWrite::Backend { index, .. }) if *index == i));
        assert_route_matches_maps(&p, &dp, &spec);
        // Up again: the flag goes up before the slots name it.
        dp.writes.clear();
        spec.backends[0].up = true;
        p.program(&mut dp, std::slice::from_ref(&spec)).unwrap();
        assert!(matches!(dp.writes.first(), Some(MapWrite::Backend { index, .. }) if *index == i));
        assert_route_matches_maps(&p, &dp, &spec);
    }

    #[test]
    fn route_follows_weight_deadman_and_group_fallback() {
        let spec = sentiment();
        let (p, mut dp) = programmed(std::slice::from_ref(&spec));
        let idx = p.service_index("sentiment").unwrap();
        let mut control = ServiceControl {
            canary_weight: 2500,
            heartbeat_ns: 1_000,
            heartbeat_timeout_ns: 1_000_000,
            ..ServiceControl::default()
        };
        dp.set_control(idx, &control).unwrap();
        let mut canary = 0;
        for i in 0..4000 {
            let r = p
                .route(flow(i), spec.vip, Protocol::Tcp, SEED, &control, 2_000)
                .unwrap();
            assert_eq!(r.group, r.group_by_weight);
            assert_eq!(r.group == Group::Canary, r.bucket < 2500);
            canary += u32::from(r.group == Group::Canary);
        }
        assert!((800..1200).contains(&canary), "canary share {canary}/4000");
        assert_route_matches_maps(&p, &dp, &spec);
        // Stale heartbeat: canary buckets go to stable.
        let now = 10_000_000;
        let stale: Vec<Route> = (0..4000)
            .map(|i| {
                p.route(flow(i), spec.vip, Protocol::Tcp, SEED, &control, now)
                    .unwrap()
            })
            .collect();
        assert!(stale.iter().all(|r| r.group == Group::Stable));
        assert!(stale.iter().any(|r| r.deadman_fallback));
        // Weight 10000 with no canary backend up: everything falls back to stable.
        let mut no_canary = spec.clone();
        no_canary.backends[2].up = false;
        let (p, _) = programmed(&[no_canary]);
        control.canary_weight = BUCKETS;
        let r = p
            .route(flow(7), spec.vip, Protocol::Tcp, SEED, &control, 2_000)
            .unwrap();
        assert_eq!(
            (r.group_by_weight, r.group, r.group_fallback),
            (Group::Canary, Group::Stable, true)
        );
        assert!(r.backend.is_some());
        assert_eq!(
            p.route(
                flow(7),
                "198.18.0.100:9999".parse().unwrap(),
                Protocol::Tcp,
                SEED,
                &control,
                0
            ),
            Err(RouteError::NoService {
                dst: "198.18.0.100:9999".parse().unwrap(),
                protocol: Protocol::Tcp
            })
        );
    }

    #[test]
    fn empty_group_table_is_no_backend() {
        let spec = service("s", "198.18.0.2:53", vec![backend("a", Group::Stable, 1)]);
        let (p, dp) = programmed(std::slice::from_ref(&spec));
        let base = maglev_index(p.service_index("s").unwrap(), GROUP_CANARY, 0) as usize;
        assert!(dp.maglev[base..base + MAGLEV_TABLE_SIZE as usize]
            .iter()
            .all(|&b| b == NO_BACKEND));
    }

    #[test]
    fn removed_service_stops_first_and_its_index_is_reused_with_fresh_stats() {
        let a = sentiment();
        let b = service(
            "other",
            "198.18.0.100:9090",
            vec![backend("x", Group::Stable, 7)],
        );
        let (mut p, mut dp) = programmed(&[a.clone(), b.clone()]);
        assert_eq!(dp.vips.get(&vip_key(a.vip.ip())), Some(&2));
        let a_index = p.service_index("sentiment").unwrap();
        dp.service_stats[a_index as usize].new_flows = [5, 5];
        dp.writes.clear();
        p.program(&mut dp, std::slice::from_ref(&b)).unwrap();
        assert!(
            matches!(dp.writes[0], MapWrite::ServiceRemove { key } if key == service_key(a.vip, Protocol::Tcp))
        );
        assert_eq!(dp.vips.get(&vip_key(a.vip.ip())), Some(&1));
        assert!(dp
            .backends
            .iter()
            .all(|e| e.service_index != a_index || e.flags == 0));
        let c = service(
            "third",
            "198.18.0.101:80",
            vec![backend("y", Group::Stable, 8)],
        );
        p.program(&mut dp, &[b.clone(), c]).unwrap();
        assert_eq!(p.service_index("third"), Some(a_index));
        assert_eq!(dp.service_stats[a_index as usize], ServiceStats::default());
        p.program(&mut dp, &[]).unwrap();
        assert!(dp.services.is_empty() && dp.vips.is_empty());
        assert!(dp.backends.iter().all(|e| e.flags == 0));
    }

    #[test]
    fn recovery_after_restart_keeps_indices_weight_and_every_slot() {
        let spec = sentiment();
        let extra = service(
            "gone",
            "198.18.0.50:80",
            vec![backend("z", Group::Stable, 9)],
        );
        let (p, mut dp) = programmed(&[extra.clone(), spec.clone()]);
        let idx = p.service_index("sentiment").unwrap();
        dp.set_control(
            idx,
            &ServiceControl {
                canary_weight: 2500,
                ..spec.initial_control
            },
        )
        .unwrap();
        let maglev_before = dp.maglev.clone();
        // The restarted daemon no longer has "gone" configured.
        let desired = [spec.clone()];
        let mut q = Programmer::recover(&dp.written_state().unwrap(), &desired);
        assert_eq!(q.service_index("sentiment"), Some(idx));
        for b in &spec.backends {
            assert_eq!(
                q.backend_index("sentiment", &b.name),
                p.backend_index("sentiment", &b.name)
            );
        }
        dp.writes.clear();
        q.program(&mut dp, &desired).unwrap();
        assert!(!dp
            .writes
            .iter()
            .any(|w| matches!(w, MapWrite::Control { .. })));
        assert_eq!(dp.control[idx as usize].canary_weight, 2500);
        let s = maglev_index(idx, 0, 0) as usize;
        let e = maglev_index(idx + 1, 0, 0) as usize;
        assert_eq!(
            dp.maglev[s..e],
            maglev_before[s..e],
            "no slot of the service changed"
        );
        assert!(!dp
            .services
            .contains_key(&service_key(extra.vip, Protocol::Tcp)));
        let z = p.backend_index("gone", "z").unwrap();
        assert_eq!(dp.backends[z as usize].flags & BACKEND_FLAG_UP, 0);
        assert!(q.plan(&desired).unwrap().is_empty());
        assert_route_matches_maps(&q, &dp, &spec);
    }

    #[test]
    fn failed_apply_rewrites_everything_next_time() {
        let spec = sentiment();
        let mut p = Programmer::new();
        let mut dp = FakeDataPlane::new();
        dp.config.hash_seed = SEED;
        dp.fail_apply_after = Some(3);
        assert!(matches!(
            p.program(&mut dp, std::slice::from_ref(&spec)),
            Err(ProgramError::Apply(_))
        ));
        p.program(&mut dp, std::slice::from_ref(&spec)).unwrap();
        assert_route_matches_maps(&p, &dp, &spec);
        assert!(dp
            .services
            .contains_key(&service_key(spec.vip, Protocol::Tcp)));
    }

    #[test]
    fn invalid_desired_states_are_rejected() {
        let p = Programmer::new();
        let s = sentiment();
        let mut dup = s.clone();
        dup.vip = "198.18.0.200:1".parse().unwrap();
        assert_eq!(
            p.plan(&[s.clone(), dup]).unwrap_err(),
            PlanError::DuplicateService("sentiment".into())
        );
        let mut same_key = s.clone();
        same_key.name = "copy".into();
        assert!(matches!(
            p.plan(&[s.clone(), same_key]),
            Err(PlanError::DuplicateServiceKey { .. })
        ));
        let mut dup_backend = s.clone();
        dup_backend.backends.push(backend("v1-a", Group::Canary, 5));
        assert!(matches!(
            p.plan(&[dup_backend]),
            Err(PlanError::DuplicateBackend { .. })
        ));
        let mut big = s;
        big.backends = (0..=MAX_BACKENDS_PER_GROUP)
            .map(|i| backend(&format!("b{i}"), Group::Canary, i as u8))
            .collect();
        assert!(matches!(
            p.plan(&[big]),
            Err(PlanError::TooManyBackendsInGroup { count: 164, .. })
        ));
    }

    #[test]
    fn keys_are_in_network_byte_order() {
        let k = service_key("198.18.0.100:8080".parse().unwrap(), Protocol::Udp);
        assert_eq!(&k.addr[..4], &[198, 18, 0, 100]);
        assert_eq!(k.addr[4..], [0; 12]);
        assert_eq!(k.port.to_ne_bytes(), 8080u16.to_be_bytes());
        assert_eq!((k.protocol, k.family), (PROTO_UDP, FAMILY_IPV4));
        let v6 = service_key("[2001:db8::1]:443".parse().unwrap(), Protocol::Tcp);
        assert_eq!(v6.family, FAMILY_IPV6);
        assert_eq!(v6.addr[0..2], [0x20, 0x01]);
        assert!(flow_key(
            "198.18.0.1:1".parse().unwrap(),
            "[::1]:2".parse().unwrap(),
            Protocol::Tcp
        )
        .is_none());
        assert!(monotonic_ns() > 0);
    }
}
