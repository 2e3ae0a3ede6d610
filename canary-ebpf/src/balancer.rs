//! Service lookup, flow table, group and backend choice, and the forwarding rewrite.

use core::{
    mem::{size_of, MaybeUninit},
    ptr::write_volatile,
};

use aya_ebpf::{
    bindings::xdp_action,
    helpers::{bpf_ktime_get_coarse_ns, bpf_ktime_get_ns},
};
use canary_common::{
    choose, maglev_index, syn_keeps_entry, udp_entry_idle, Backend, Choice, Counter, FlowEntry,
    FlowKey, GlobalConfig, Selection, ServiceControl, ServiceEntry, ServiceKey, Tables, VipKey,
    BACKEND_FLAG_UP, CONFIG_FLAG_NO_FLOW_TABLE, GROUP_CANARY, NO_BACKEND, SERVICE_FLAG_CLIENT_IP,
    SERVICE_FLAG_IPIP,
};

use crate::{
    maps::{self, count, BACKENDS, CONFIG, CONTROL, FLOWS, MAGLEV, SERVICES, VIPS},
    packet::{self, Packet, Segment},
    tunnel,
};

/// `BPF_ANY`: create or replace.
const BPF_ANY: u64 = 0;
/// `BPF_NOEXIST`: create only.
const BPF_NOEXIST: u64 = 1;

/// A flow key on an 8-byte aligned stack slot, zeroed by five 8-byte stores.
#[repr(C, align(8))]
struct AlignedFlowKey(FlowKey);

impl AlignedFlowKey {
    /// Zeroes `slot` in place and returns it as a key. `FlowKey::default()` compiles to a call
    /// of a byte-wise `memset` loop (LLVM's BPF backend does not inline it here); volatile
    /// stores cannot be merged into one.
    #[inline(always)]
    fn zeroed_in(slot: &mut MaybeUninit<AlignedFlowKey>) -> &mut FlowKey {
        let words = slot.as_mut_ptr().cast::<u64>();
        for i in 0..size_of::<AlignedFlowKey>() / 8 {
            // SAFETY: `i` words of 8 bytes stay inside the 8-aligned, 40-byte slot.
            unsafe { write_volatile(words.add(i), 0) };
        }
        // SAFETY: every byte is written, and all-zero is a valid FlowKey (integers only).
        unsafe { &mut slot.assume_init_mut().0 }
    }
}

const _: () = assert!(size_of::<AlignedFlowKey>() == size_of::<FlowKey>());

/// Forwards the packet (`Ok`, with its forwarding outcome, `Tx` or `TxFloodGuard`, and the XDP
/// action, `XDP_TX` or `XDP_REDIRECT`) or says which outcome it gets instead (`Err`): pass,
/// drop, or `TxIcmpTooBig` (answered, see `tunnel`).
#[inline(always)]
pub fn try_canary(pkt: &Packet) -> Result<(Counter, u32), Counter> {
    let mut slot = MaybeUninit::uninit();
    let key = AlignedFlowKey::zeroed_in(&mut slot);
    let transport = packet::parse(pkt, key)?;
    let key = &*key;
    let segment = match transport {
        Ok(segment) => segment,
        // Fragments, bad or unknown L4 headers matter only when addressed to us.
        Err(outcome) => {
            return Err(if is_vip(key) {
                outcome
            } else {
                Counter::PassNotService
            })
        }
    };
    // Every service's address is in VIPS, so a service match needs no VIPS lookup, and a miss
    // is PassNotService whether or not the address is a VIP.
    let service = service_of(key).ok_or(Counter::PassNotService)?;
    // Read in place, field by field (userspace replaces the entry whole). A one-entry array
    // always has its entry; without settings nothing could be balanced.
    let config = CONFIG.get(0).ok_or(Counter::PassNotService)?;
    let our_mac = addressed_to_us(pkt, config)?;
    let (backend_index, backend, outcome) = choose_backend(key, segment, &service, config)?;
    let action = if service.flags & SERVICE_FLAG_IPIP != 0 {
        tunnel::encapsulate(
            pkt,
            key.family,
            backend_index,
            segment != Segment::IcmpError,
        )?
    } else {
        rewrite_macs(pkt, &backend, our_mac)?;
        xdp_action::XDP_TX
    };
    maps::count_backend_packet(backend_index, pkt.len() as u64);
    if segment == Segment::IcmpError {
        count(Counter::IcmpErrorForwarded);
    }
    Ok((outcome, action))
}

#[inline(always)]
fn is_vip(key: &FlowKey) -> bool {
    let vip = VipKey {
        addr: key.dst,
        family: key.family,
        ..VipKey::default()
    };
    VIPS.get_ptr(vip).is_some()
}

#[inline(always)]
fn service_of(key: &FlowKey) -> Option<ServiceEntry> {
    let service = ServiceKey {
        addr: key.dst,
        port: key.dst_port,
        protocol: key.protocol,
        family: key.family,
    };
    // SAFETY: copied out at once; service entries are only replaced whole by userspace.
    unsafe { SERVICES.get(service) }.copied()
}

/// The backend of an established flow, or of a new one (recorded in the flow table), and the
/// forwarding outcome.
#[inline(always)]
fn choose_backend(
    key: &FlowKey,
    segment: Segment,
    service: &ServiceEntry,
    config: &GlobalConfig,
) -> Result<(u32, Backend, Counter), Counter> {
    // An index outside CONTROL is a userspace bug; such a service has no usable backend.
    let control = CONTROL.get(service.index).ok_or(Counter::DropNoBackend)?;
    let use_flow_table = config.flags & CONFIG_FLAG_NO_FLOW_TABLE == 0;
    let mut fresh = NewFlow::Insert;
    // An ICMP error follows its flow's entry, or the choice a new flow would get; it neither
    // takes nor changes an entry, and is neither a hit nor a miss.
    let icmp = segment == Segment::IcmpError;
    if segment == Segment::Syn {
        // A SYN opens a new connection: it is balanced afresh, and its entry is inserted only
        // if the 5-tuple has none (no lookup first: that is the common case). An entry it finds
        // is dealt with in `new_flow`.
        fresh = NewFlow::Open;
    } else if use_flow_table {
        // SAFETY: copied out at once. An LRU entry recycled meanwhile can only yield another
        // flow's backend, which is validated below like any pinned backend.
        // (A pointer, so that a UDP datagram can refresh its entry's last-seen time in place.)
        match FLOWS.get_ptr_mut(key).map(|p| (p, unsafe { *p })) {
            Some((entry, flow))
                if segment == Segment::Udp && !udp_entry_alive(entry, &flow, config) =>
            {
                // Idle: this datagram starts a new flow, whose entry replaces the idle one.
                count(Counter::UdpFlowIdle);
            }
            Some((_, flow)) => {
                if !icmp {
                    count(Counter::FlowHit);
                }
                #[allow(
                    clippy::collapsible_match,
                    reason = "an ICMP error about a reset flow must not fall through to its pinned backend"
                )]
                match pinned_backend(&flow, service.index) {
                    None if !icmp => count(Counter::FlowRechosenDown),
                    Some(_) if reset_applies(&flow, control) => {
                        if !icmp {
                            count(Counter::FlowRechosenReset);
                        }
                    }
                    Some(backend) => return Ok((flow.backend, backend, Counter::Tx)),
                    None => {}
                }
            }
            None if !icmp => {
                count(Counter::FlowMiss);
                // Only a connection's first packet may take an entry: a segment from its
                // middle is balanced by the current weight and leaves the table alone (spoofed
                // ACKs, RSTs and FINs cannot evict established flows).
                if segment == Segment::TcpOther {
                    count(Counter::FlowMissTcpNonSyn);
                    fresh = NewFlow::Unpinned;
                }
            }
            None => {}
        }
    }
    if !use_flow_table {
        fresh = NewFlow::NoTable;
    }
    if icmp {
        fresh = NewFlow::Unpinned;
    }
    new_flow(key, service, control, config, fresh)
}

/// Whether a UDP flow's entry is still in use (a datagram within `udp_idle_timeout_ms`); if
/// so its last-seen time becomes now. Only UDP entries pay for this clock read and write.
#[inline(always)]
fn udp_entry_alive(entry: *mut FlowEntry, flow: &FlowEntry, config: &GlobalConfig) -> bool {
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    if udp_entry_idle(flow.seen_ns, now, config.udp_idle_timeout_ms) {
        return false;
    }
    // SAFETY: a valid map value from the lookup; a racing update of the same field by another
    // CPU only writes another recent time.
    unsafe { (*entry).seen_ns = now };
    true
}

/// What a choice made by `new_flow` is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum NewFlow {
    /// A connection's SYN: a new flow, recorded unless its 5-tuple has an entry young enough
    /// to be the same connection's (which the SYN then follows).
    Open,
    /// A new flow (a UDP flow's first datagram) or a re-chosen one: counted as a new flow, and
    /// recorded in the flow table, replacing any entry.
    Insert,
    /// A new flow with the flow table switched off (`CONFIG_FLAG_NO_FLOW_TABLE`).
    NoTable,
    /// A segment from the middle of a connection without an entry, or an ICMP error about a
    /// flow: balanced, not recorded, not counted as a new flow.
    Unpinned,
}

/// The backend a flow is pinned to, if it is still up and still serves this service.
#[inline(always)]
fn pinned_backend(flow: &FlowEntry, service_index: u32) -> Option<Backend> {
    let backend = BACKENDS.get(flow.backend).copied()?;
    (backend.flags & BACKEND_FLAG_UP != 0 && backend.service_index == service_index)
        .then_some(backend)
}

/// Rollback in "reset" mode: canary flows created before the epoch are re-chosen.
#[inline(always)]
fn reset_applies(flow: &FlowEntry, control: &ServiceControl) -> bool {
    flow.group == GROUP_CANARY
        && control.reset_epoch_ns != 0
        && flow.created_ns < control.reset_epoch_ns
}

/// The XDP program's view of the tables the new-flow choice reads.
struct MapTables;

impl Tables for MapTables {
    #[inline(always)]
    fn slot(&self, service_index: u32, group: u32, slot: u32) -> u32 {
        MAGLEV
            .get(maglev_index(service_index, group, slot))
            .copied()
            .unwrap_or(NO_BACKEND)
    }

    #[inline(always)]
    fn backend(&self, index: u32) -> Option<Backend> {
        BACKENDS.get(index).copied()
    }
}

#[inline(always)]
fn new_flow(
    key: &FlowKey,
    service: &ServiceEntry,
    control: &ServiceControl,
    config: &GlobalConfig,
    fresh: NewFlow,
) -> Result<(u32, Backend, Counter), Counter> {
    let selection = Selection::of(
        key,
        service.flags & SERVICE_FLAG_CLIENT_IP != 0,
        config.hash_seed,
    );
    // The coarse clock: `CLOCK_MONOTONIC` as of the last timer tick (behind by at most one
    // tick, 4 ms at HZ=250), without reading the hardware clock, which costs a new flow about
    // 20 ns on these virtual machines. Everything it is compared with is coarser: heartbeat
    // timeouts (seconds), `syn_replace_after_ms`, reset epochs, flood-guard seconds.
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let choice = choose(&MapTables, service.index, selection, control, now);
    let counted = fresh != NewFlow::Unpinned;
    let Some((backend_index, backend)) = choice.backend else {
        if counted && choice.deadman_drop() {
            count(Counter::DeadmanDrop);
        }
        return Err(Counter::DropNoBackend);
    };
    let entry = FlowEntry {
        backend: backend_index,
        group: choice.group,
        created_ns: now,
        seen_ns: now,
    };
    let records = matches!(fresh, NewFlow::Open | NewFlow::Insert);
    if records && !maps::flood_guard_admits(config.flood_guard_rate, now) {
        // Above the rate: balanced, not recorded (a flood cannot evict established flows).
        count_new_flow(service.index, backend_index, &choice);
        return Ok((backend_index, backend, Counter::TxFloodGuard));
    }
    match fresh {
        NewFlow::Open => {
            if FLOWS.insert(key, entry, BPF_NOEXIST).is_err() {
                // SAFETY: copied out at once (see `choose_backend`).
                match unsafe { FLOWS.get(key) }.copied() {
                    Some(old) => {
                        if let Some(kept) = kept_by_syn(&old, service.index, control, config, now) {
                            count(Counter::SynKeptFlow);
                            return Ok((kept.0, kept.1, Counter::Tx));
                        }
                        count(Counter::SynReplacedFlow);
                        if FLOWS.insert(key, entry, BPF_ANY).is_err() {
                            count(Counter::FlowInsertFailed);
                        }
                    }
                    None => count(Counter::FlowInsertFailed),
                }
            }
        }
        NewFlow::Insert => {
            if FLOWS.insert(key, entry, BPF_ANY).is_err() {
                count(Counter::FlowInsertFailed);
            }
        }
        NewFlow::NoTable | NewFlow::Unpinned => {}
    }
    if counted {
        count_new_flow(service.index, backend_index, &choice);
    }
    Ok((backend_index, backend, Counter::Tx))
}

/// The backend a SYN follows instead of opening a new flow: its 5-tuple's entry is younger
/// than `syn_replace_after_ms` (the same connection's retransmitted SYN, or a spoof) and its
/// backend can still take the flow.
#[inline(always)]
fn kept_by_syn(
    old: &FlowEntry,
    service_index: u32,
    control: &ServiceControl,
    config: &GlobalConfig,
    now: u64,
) -> Option<(u32, Backend)> {
    if !syn_keeps_entry(old.created_ns, now, config.syn_replace_after_ms)
        || reset_applies(old, control)
    {
        return None;
    }
    pinned_backend(old, service_index).map(|backend| (old.backend, backend))
}

/// The counters of a new flow and of how it was chosen.
#[inline(always)]
fn count_new_flow(service_index: u32, backend_index: u32, choice: &Choice) {
    if choice.deadman_fallback {
        count(Counter::DeadmanFallback);
        maps::count_service_deadman_fallback(service_index);
    }
    if choice.group_fallback {
        count(Counter::GroupFallback);
        maps::count_service_group_fallback(service_index);
    }
    if choice.slot_fallback {
        count(Counter::SlotFallback);
    }
    maps::count_service_new_flow(service_index, choice.group);
    maps::count_backend_new_flow(backend_index);
}

/// The frame's destination MAC (bytes in wire order, first byte lowest) if the frame is
/// addressed to the balancer: unicast, and equal to `lb_mac` (any unicast one while `lb_mac` is
/// unset). Forwarding anything else would make its destination the source of the forwarded
/// frame.
#[inline(always)]
fn addressed_to_us(pkt: &Packet, config: &GlobalConfig) -> Result<u64, Counter> {
    let dst = pkt.bytes::<6>(0).ok_or(Counter::DropMalformed)?;
    if dst[0] & 1 != 0 {
        return Err(Counter::PassMulticastMac);
    }
    let ours = mac_word(&config.lb_mac);
    let dst = mac_word(dst);
    if ours != 0 && dst != ours {
        return Err(Counter::PassNotOurMac);
    }
    Ok(dst)
}

/// A MAC as an integer: one comparison instead of six, and no `bcmp` (which BPF lacks).
#[inline(always)]
fn mac_word(mac: &[u8; 6]) -> u64 {
    u64::from(u32::from_le_bytes([mac[0], mac[1], mac[2], mac[3]]))
        | u64::from(u16::from_le_bytes([mac[4], mac[5]])) << 32
}

/// Direct server return: destination MAC = the backend's; source MAC = ours (`our_mac`, the
/// frame's destination, see `addressed_to_us`). Nothing else changes.
#[inline(always)]
fn rewrite_macs(pkt: &Packet, backend: &Backend, our_mac: u64) -> Result<(), Counter> {
    let eth = pkt.bytes_mut::<12>(0).ok_or(Counter::DropMalformed)?;
    // SAFETY: `eth` covers 12 bytes inside the frame (checked by `bytes_mut`).
    let eth = unsafe { &mut *eth };
    eth[..6].copy_from_slice(&backend.mac);
    eth[6..].copy_from_slice(&our_mac.to_le_bytes()[..6]);
    Ok(())
}
