//! The new-flow rule, the one userspace implementation of what the kernel does for a flow it
//! has not seen: bucket -> group by the canary weight -> dead-man switch -> group fallback.
//! `canary route` ([`Programmer::route`]) and the fake data plane both call [`choose`].

use std::net::SocketAddr;

use canary_common::{group_for_bucket, Selection, ServiceControl, BUCKETS};

use super::keys::{flow_key, service_key};
use super::programmer::{PlacedBackend, Programmer};
use crate::domain::{Affinity, Group, Protocol};

/// What the rule picked for one new flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Choice<B> {
    /// The weight applied (clamped to `BUCKETS`).
    pub weight: u32,
    /// The group the bucket rule picked.
    pub group_by_weight: Group,
    /// The group the flow ends in (after the dead-man switch and group fallback).
    pub group: Group,
    /// `None`: no backend up in any allowed group (the packet is dropped).
    pub backend: Option<B>,
    /// The heartbeat was stale and the flow was sent to stable instead of canary.
    pub deadman_fallback: bool,
    /// The picked group had no backend at the slot and the other group served.
    pub group_fallback: bool,
}

/// The kernel's rule for a new flow in bucket `bucket` of a service whose control entry is
/// `control`, at `now_ns` (`CLOCK_MONOTONIC`). `pick(group)` reads the group's Maglev table at
/// the flow's slot and returns the backend there if it is up. A stale heartbeat sends canary
/// buckets to stable with no fallback back to canary; otherwise an empty slot falls back to
/// the other group.
pub fn choose<B>(
    bucket: u32,
    control: &ServiceControl,
    now_ns: u64,
    mut pick: impl FnMut(Group) -> Option<B>,
) -> Choice<B> {
    let weight = control.canary_weight.min(BUCKETS);
    let group_by_weight = Group::from_index(group_for_bucket(bucket, weight))
        .expect("the bucket rule returns a group");
    let deadman_fallback = group_by_weight == Group::Canary
        && control.heartbeat_timeout_ns != 0
        && now_ns.saturating_sub(control.heartbeat_ns) > control.heartbeat_timeout_ns;
    let group = if deadman_fallback {
        Group::Stable
    } else {
        group_by_weight
    };
    let mut choice = Choice {
        weight,
        group_by_weight,
        group,
        backend: pick(group),
        deadman_fallback,
        group_fallback: false,
    };
    if choice.backend.is_none() && !deadman_fallback {
        if let Some(b) = pick(group.other()) {
            choice.backend = Some(b);
            choice.group = group.other();
            choice.group_fallback = true;
        }
    }
    choice
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
        let choice = choose(selection.bucket, control, now_ns, |g| {
            s.backend_at(g, selection.slot)
                .map(|b: &PlacedBackend| RoutedBackend {
                    name: b.name.clone(),
                    index: b.index,
                })
        });
        Ok(Route {
            service: s.name.clone(),
            service_index: s.index,
            bucket: selection.bucket,
            slot: selection.slot,
            weight: choice.weight,
            group_by_weight: choice.group_by_weight,
            group: choice.group,
            backend: choice.backend,
            deadman_fallback: choice.deadman_fallback,
            group_fallback: choice.group_fallback,
        })
    }
}
