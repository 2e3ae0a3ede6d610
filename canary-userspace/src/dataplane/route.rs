//! `canary route`: which group and backend a new flow would get now, by the kernel's own rule
//! ([`canary_common::choose`]: bucket -> group by the canary weight -> dead-man switch -> the
//! group's Maglev slot, later slots of the group, then the other group) read over the tables
//! as the [`Programmer`] wrote them.

use std::net::SocketAddr;

use canary_common::{choose, Backend, Selection, ServiceControl, Tables, BUCKETS, NO_BACKEND};

use super::keys::{flow_key, service_key};
use super::programmer::{PlacedService, Programmer};
use crate::domain::{Affinity, Group, Protocol};

/// One placed service's tables as the kernel reads them: its Maglev slots and, for the
/// backends it names, their `BACKENDS` entries.
struct PlacedTables<'a>(&'a PlacedService);

impl Tables for PlacedTables<'_> {
    fn slot(&self, service_index: u32, group: u32, slot: u32) -> u32 {
        match Group::from_index(group) {
            Some(g) if service_index == self.0.index => self.0.slot(g, slot),
            _ => NO_BACKEND,
        }
    }

    fn backend(&self, index: u32) -> Option<Backend> {
        self.0.backend_entry(index)
    }
}

/// Why `route` cannot answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("source {src} and destination {dst} are not of the same address family")]
    FamilyMismatch { src: SocketAddr, dst: SocketAddr },
    #[error("no service is configured at {dst}/{protocol:?}; check the VIP, port and --proto")]
    NoService { dst: SocketAddr, protocol: Protocol },
}

/// The answer to `canary route`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[allow(
    clippy::struct_excessive_bools,
    reason = "the independent facts of canary_common::Choice, each said on its own"
)]
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
    /// The heartbeat was stale: only stable may take new flows (dead-man switch).
    pub stale_heartbeat: bool,
    /// The bucket rule said canary and the dead-man switch sent the flow to stable instead
    /// (or dropped it, with stable unusable).
    pub deadman_fallback: bool,
    /// The picked group had no usable backend and the other group served.
    pub group_fallback: bool,
    /// The backend came from a later slot of the group than the flow's own (the slot's backend
    /// cannot take new flows).
    pub slot_fallback: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoutedBackend {
    pub name: String,
    pub index: u32,
}

impl Programmer {
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
            .services()
            .find(|s| s.key() == service_key)
            .ok_or(RouteError::NoService { dst, protocol })?;
        let selection = Selection::of(&key, s.affinity == Affinity::ClientIp, hash_seed);
        let choice = choose(&PlacedTables(s), s.index, selection, control, now_ns);
        let group = |index| Group::from_index(index).expect("the choice names a group");
        Ok(Route {
            service: s.name.clone(),
            service_index: s.index,
            bucket: selection.bucket,
            slot: selection.slot,
            weight: control.canary_weight.min(BUCKETS),
            group_by_weight: group(choice.by_weight),
            group: group(choice.group),
            backend: choice.backend.and_then(|(index, _)| {
                s.backend_by_index(index).map(|b| RoutedBackend {
                    name: b.name.clone(),
                    index,
                })
            }),
            stale_heartbeat: choice.stale_heartbeat,
            deadman_fallback: choice.deadman_fallback,
            group_fallback: choice.group_fallback,
            slot_fallback: choice.slot_fallback,
        })
    }
}
