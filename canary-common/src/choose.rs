//! The new-flow choice, one pure function for the XDP program and for userspace.
//!
//! A new flow of a service goes: bucket -> group by the canary weight -> the dead-man switch
//! (a stale heartbeat sends every new flow to stable, and never into canary) -> the backend in
//! the group's Maglev slot, falling back to the next slots of the same group when that backend
//! cannot take it, and only then to the other group. The tables are read through [`Tables`], so
//! the kernel passes its maps and userspace its copies; nothing here allocates, loops without a
//! constant bound or reads a clock (time is an argument).

use crate::{
    group_for_bucket, Backend, Selection, ServiceControl, BACKEND_FLAG_UP, BUCKETS, GROUP_CANARY,
    GROUP_STABLE, MAGLEV_TABLE_SIZE, MAX_BACKENDS, NO_BACKEND,
};

/// Slots of a group's Maglev table tried, from the flow's own slot on, before the group is given
/// up. A slot can name a backend that cannot take new flows for as long as userspace takes to
/// rewrite the table (a backend just marked down, an index being reused); the next slots of a
/// Maglev table name other backends of the group, so a few probes keep the flow in its group.
pub const GROUP_PROBES: u32 = 8;

/// Read access to the tables the choice needs.
pub trait Tables {
    /// The backend index in `slot` of the Maglev table of (`service_index`, `group`):
    /// `NO_BACKEND` when the group has no backend (or the slot cannot be read).
    fn slot(&self, service_index: u32, group: u32, slot: u32) -> u32;
    /// The backend at a global index, `None` when the index is out of range.
    fn backend(&self, index: u32) -> Option<Backend>;
}

/// Where a new flow goes, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(
    clippy::struct_excessive_bools,
    reason = "independent facts about one choice, each counted on its own"
)]
pub struct Choice {
    /// The group the bucket rule picked (`GROUP_STABLE` or `GROUP_CANARY`).
    pub by_weight: u32,
    /// The group the flow ends in.
    pub group: u32,
    /// The backend's global index and entry; `None` when no allowed group has a usable backend
    /// (the packet is dropped).
    pub backend: Option<(u32, Backend)>,
    /// The heartbeat was stale: the dead-man switch allowed stable only.
    pub stale_heartbeat: bool,
    /// The bucket rule said canary and the dead-man switch sent the flow to stable instead
    /// (or, with stable unusable, dropped it: see [`Choice::deadman_drop`]).
    pub deadman_fallback: bool,
    /// The flow's group had no usable backend and the other group took it.
    pub group_fallback: bool,
    /// The backend came from a later slot of the group than the flow's own.
    pub slot_fallback: bool,
}

impl Choice {
    /// Dropped because the dead-man switch forbids canary and stable has no usable backend.
    #[inline(always)]
    pub const fn deadman_drop(&self) -> bool {
        self.stale_heartbeat && self.backend.is_none()
    }
}

/// Whether the daemon's heartbeat is stale: more than `heartbeat_timeout_ns` away from `now_ns`
/// in either direction (a heartbeat far in the future is as untrustworthy as an old one: it
/// would otherwise keep the switch off for good). A timeout of 0 disables the switch.
#[inline(always)]
pub const fn heartbeat_stale(control: &ServiceControl, now_ns: u64) -> bool {
    let timeout = control.heartbeat_timeout_ns;
    if timeout == 0 {
        return false;
    }
    now_ns.abs_diff(control.heartbeat_ns) > timeout
}

/// Whether `backend` may take a new flow of `service_index` in `group`: up, and really a
/// backend of that service and group (a slot naming anything else is stale).
#[inline(always)]
pub const fn usable(backend: &Backend, service_index: u32, group: u32) -> bool {
    backend.flags & BACKEND_FLAG_UP != 0
        && backend.service_index == service_index
        && backend.group == group
}

/// The first usable backend of a group from `slot` on (at most [`GROUP_PROBES`] slots), and
/// whether it came from a later slot. A group whose own slot is `NO_BACKEND` is empty (userspace
/// fills every slot of a group that has a backend).
#[inline(always)]
fn in_group<T: Tables>(
    tables: &T,
    service_index: u32,
    group: u32,
    slot: u32,
) -> Option<(u32, Backend, bool)> {
    let mut probe = 0;
    while probe < GROUP_PROBES {
        let mut at = slot + probe;
        if at >= MAGLEV_TABLE_SIZE {
            at -= MAGLEV_TABLE_SIZE;
        }
        let index = tables.slot(service_index, group, at);
        if index == NO_BACKEND && probe == 0 {
            return None;
        }
        if index < MAX_BACKENDS {
            if let Some(backend) = tables.backend(index) {
                if usable(&backend, service_index, group) {
                    return Some((index, backend, probe != 0));
                }
            }
        }
        probe += 1;
    }
    None
}

/// The choice for a new flow of service `service_index` whose hash gave `selection`, under the
/// service's `control` entry at `now_ns` (`CLOCK_MONOTONIC`, the clock of the heartbeat).
#[inline(always)]
pub fn choose<T: Tables>(
    tables: &T,
    service_index: u32,
    selection: Selection,
    control: &ServiceControl,
    now_ns: u64,
) -> Choice {
    let weight = if control.canary_weight > BUCKETS {
        BUCKETS
    } else {
        control.canary_weight
    };
    let by_weight = group_for_bucket(selection.bucket, weight);
    let stale_heartbeat = heartbeat_stale(control, now_ns);
    let group = if stale_heartbeat {
        GROUP_STABLE
    } else {
        by_weight
    };
    let mut choice = Choice {
        by_weight,
        group,
        backend: None,
        stale_heartbeat,
        deadman_fallback: stale_heartbeat && by_weight == GROUP_CANARY,
        group_fallback: false,
        slot_fallback: false,
    };
    if let Some((index, backend, later)) = in_group(tables, service_index, group, selection.slot) {
        choice.backend = Some((index, backend));
        choice.slot_fallback = later;
        return choice;
    }
    // With a stale heartbeat nobody can roll a bad canary back: no new flow goes there, even
    // when stable has nothing usable (those flows are dropped, and counted).
    if stale_heartbeat {
        return choice;
    }
    let other = if group == GROUP_CANARY {
        GROUP_STABLE
    } else {
        GROUP_CANARY
    };
    if let Some((index, backend, later)) = in_group(tables, service_index, other, selection.slot) {
        choice.group = other;
        choice.backend = Some((index, backend));
        choice.group_fallback = true;
        choice.slot_fallback = later;
    }
    choice
}

/// Whether a connection-opening SYN keeps the flow-table entry its 5-tuple already has: when
/// the entry was created less than `keep_ms` ago it most likely belongs to the same connection
/// (a retransmitted SYN) or the SYN is spoofed, and re-pinning would break the connection. An
/// older entry belongs to an earlier connection (a client reusing its port) and is replaced.
/// `keep_ms` 0: every SYN replaces.
#[inline(always)]
pub const fn syn_keeps_entry(created_ns: u64, now_ns: u64, keep_ms: u32) -> bool {
    let age = now_ns.saturating_sub(created_ns);
    age < keep_ms as u64 * 1_000_000
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::{vec, vec::Vec};

    use super::*;

    const SVC: u32 = 3;

    /// Tables of one service: a slot list per group and a backend array.
    struct Fake {
        groups: Vec<Vec<u32>>,
        backends: Vec<Backend>,
    }

    impl Tables for Fake {
        fn slot(&self, service_index: u32, group: u32, slot: u32) -> u32 {
            if service_index != SVC {
                return NO_BACKEND;
            }
            self.groups
                .get(group as usize)
                .and_then(|g| g.get(slot as usize))
                .copied()
                .unwrap_or(NO_BACKEND)
        }
        fn backend(&self, index: u32) -> Option<Backend> {
            self.backends.get(index as usize).copied()
        }
    }

    fn backend(group: u32) -> Backend {
        Backend {
            mac: [2, 0, 0, 0, 0, 1],
            flags: BACKEND_FLAG_UP,
            service_index: SVC,
            group,
        }
    }

    /// Stable backends 1 and 2, canary 3 and 4, tables round-robin (slot i -> i % 2).
    fn fake() -> Fake {
        let size = MAGLEV_TABLE_SIZE as usize;
        let mut backends = vec![Backend::default(); 16];
        backends[1] = backend(GROUP_STABLE);
        backends[2] = backend(GROUP_STABLE);
        backends[3] = backend(GROUP_CANARY);
        backends[4] = backend(GROUP_CANARY);
        Fake {
            groups: vec![
                (0..size).map(|s| 1 + (s % 2) as u32).collect(),
                (0..size).map(|s| 3 + (s % 2) as u32).collect(),
            ],
            backends,
        }
    }

    fn control(weight: u32) -> ServiceControl {
        ServiceControl {
            canary_weight: weight,
            heartbeat_ns: 1_000,
            heartbeat_timeout_ns: 0,
            ..ServiceControl::default()
        }
    }

    fn at(bucket: u32, slot: u32) -> Selection {
        Selection { bucket, slot }
    }

    fn picked(c: &Choice) -> Option<u32> {
        c.backend.map(|(i, _)| i)
    }

    #[test]
    fn bucket_below_weight_is_canary() {
        let f = fake();
        let c = choose(&f, SVC, at(99, 0), &control(100), 0);
        assert_eq!((c.by_weight, c.group, picked(&c)), (1, 1, Some(3)));
        let c = choose(&f, SVC, at(100, 1), &control(100), 0);
        assert_eq!((c.by_weight, c.group, picked(&c)), (0, 0, Some(2)));
        assert!(!c.group_fallback && !c.slot_fallback && !c.deadman_fallback);
        // A weight above BUCKETS is all canary.
        let c = choose(&f, SVC, at(BUCKETS - 1, 0), &control(u32::MAX), 0);
        assert_eq!(c.group, GROUP_CANARY);
    }

    #[test]
    fn down_backend_falls_back_inside_its_group() {
        let mut f = fake();
        f.backends[1].flags = 0;
        // Weight 0: a flow whose slot names the down stable backend stays in stable.
        let c = choose(&f, SVC, at(5_000, 0), &control(0), 0);
        assert_eq!((c.group, picked(&c)), (GROUP_STABLE, Some(2)));
        assert!(c.slot_fallback && !c.group_fallback);
        // The probe wraps around the end of the table: the last slot names down backend 2,
        // slot 0 names backend 1.
        let mut f = fake();
        f.backends[2].flags = 0;
        let last = MAGLEV_TABLE_SIZE - 1;
        f.groups[0][last as usize] = 2;
        let c = choose(&f, SVC, at(5_000, last), &control(0), 0);
        assert_eq!(picked(&c), Some(1));
        // GROUP_PROBES slots of unusable backends: the group is given up.
        let mut f = fake();
        for slot in 0..GROUP_PROBES as usize {
            f.groups[0][slot] = 1;
        }
        f.backends[1].flags = 0;
        let c = choose(&f, SVC, at(5_000, 0), &control(0), 0);
        assert!(c.group_fallback);
        assert_eq!(c.group, GROUP_CANARY);
    }

    #[test]
    fn backend_of_another_service_or_group_is_not_used() {
        let mut f = fake();
        f.backends[1].service_index = SVC + 1;
        let c = choose(&f, SVC, at(5_000, 0), &control(0), 0);
        assert_eq!(picked(&c), Some(2));
        assert!(c.slot_fallback);
        let mut f = fake();
        f.backends[1].group = GROUP_CANARY;
        let c = choose(&f, SVC, at(5_000, 0), &control(0), 0);
        assert_eq!((c.group, picked(&c)), (GROUP_STABLE, Some(2)));
        // A slot index beyond the backend array is skipped too.
        let mut f = fake();
        f.groups[0][0] = MAX_BACKENDS + 7;
        let c = choose(&f, SVC, at(5_000, 0), &control(0), 0);
        assert_eq!(picked(&c), Some(2));
    }

    #[test]
    fn a_group_without_usable_backend_falls_back_to_the_other() {
        let mut f = fake();
        f.groups[0] = vec![NO_BACKEND; MAGLEV_TABLE_SIZE as usize];
        let c = choose(&f, SVC, at(5_000, 0), &control(0), 0);
        assert_eq!((c.by_weight, c.group, picked(&c)), (0, 1, Some(3)));
        assert!(c.group_fallback);
        f.groups[1] = vec![NO_BACKEND; MAGLEV_TABLE_SIZE as usize];
        let c = choose(&f, SVC, at(5_000, 0), &control(0), 0);
        assert_eq!(c.backend, None);
        assert!(!c.deadman_drop());
    }

    #[test]
    fn syn_keeps_only_a_recent_entry() {
        assert!(syn_keeps_entry(1_000_000_000, 1_999_999_999, 1_000));
        assert!(!syn_keeps_entry(1_000_000_000, 2_000_000_000, 1_000));
        assert!(!syn_keeps_entry(5, 5, 0), "0 ms: every SYN replaces");
        assert!(
            syn_keeps_entry(10, 5, 1),
            "an entry stamped after now is young"
        );
        assert!(!syn_keeps_entry(0, u64::MAX, u32::MAX));
    }

    #[test]
    fn heartbeat_in_the_future_is_stale() {
        let mut ctl = control(0);
        ctl.heartbeat_timeout_ns = 30;
        ctl.heartbeat_ns = u64::MAX;
        assert!(heartbeat_stale(&ctl, 5));
        ctl.heartbeat_ns = 100;
        assert!(
            !heartbeat_stale(&ctl, 70),
            "30 ns ahead: within the timeout"
        );
        assert!(heartbeat_stale(&ctl, 69));
        assert!(!heartbeat_stale(&ctl, 130));
        assert!(heartbeat_stale(&ctl, 131));
        ctl.heartbeat_timeout_ns = 0;
        assert!(
            !heartbeat_stale(&ctl, u64::MAX),
            "timeout 0 disables the switch"
        );
    }

    #[test]
    fn stale_heartbeat_keeps_new_flows_off_the_canary() {
        let f = fake();
        let mut ctl = control(BUCKETS);
        ctl.heartbeat_timeout_ns = 1_000;
        let c = choose(&f, SVC, at(0, 0), &ctl, 1_000 + 1_001);
        assert!(c.stale_heartbeat && c.deadman_fallback);
        assert_eq!((c.by_weight, c.group, picked(&c)), (1, 0, Some(1)));
        // Exactly the timeout is still fresh.
        let c = choose(&f, SVC, at(0, 0), &ctl, 2_000);
        assert!(!c.stale_heartbeat);
        assert_eq!(c.group, GROUP_CANARY);

        // Stable without a usable backend: dropped, whatever the bucket said.
        let mut f = fake();
        f.groups[0] = vec![NO_BACKEND; MAGLEV_TABLE_SIZE as usize];
        for bucket in [0, BUCKETS - 1] {
            let c = choose(&f, SVC, at(bucket, 0), &ctl, 1_000_000);
            assert_eq!(c.backend, None, "bucket {bucket}");
            assert!(c.deadman_drop() && !c.group_fallback);
            assert_eq!(c.deadman_fallback, bucket < BUCKETS);
        }
        let mut weight_zero = ctl;
        weight_zero.canary_weight = 0;
        let c = choose(&f, SVC, at(5_000, 0), &weight_zero, 1_000_000);
        assert!(c.deadman_drop() && !c.deadman_fallback && !c.group_fallback);
    }
}
