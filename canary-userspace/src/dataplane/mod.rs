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

pub mod aya;
#[cfg(test)]
pub mod fake;
mod interface;
mod keys;
pub mod maglev;
mod programmer;
mod route;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;

use canary_common::{
    Backend, BackendStats, Counter, GlobalConfig, ServiceControl, ServiceEntry, ServiceKey,
    ServiceStats, VipKey, COUNTERS,
};

use crate::domain::{Affinity, Group, Protocol};

pub use interface::interface_mac;
pub use keys::{flow_key, service_key, vip_key};
pub use programmer::{PlacedBackend, PlacedService, Plan, PlanError, ProgramError, Programmer};
pub use route::{Route, RouteError, RoutedBackend};

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
    /// Entries in the flow table and its capacity, when the data plane can tell.
    fn flow_table_fill(&self) -> Option<crate::cluster::nodes::FlowTableFill> {
        None
    }
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
