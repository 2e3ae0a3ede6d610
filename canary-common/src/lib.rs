//! Types and pure functions shared by the XDP program and userspace.
//!
//! Everything that crosses the kernel boundary is defined once here: `#[repr(C)]`, no implicit
//! padding (explicit `_pad` fields), sizes asserted at compile time. Addresses and ports are
//! stored in network byte order exactly as they appear on the wire; IPv4 addresses occupy the
//! first 4 bytes of a 16-byte address field, the rest zero, and `family` tells which it is.
#![no_std]
#![allow(
    clippy::inline_always,
    reason = "BPF programs need these small functions inlined into the XDP program"
)]
#![allow(
    clippy::pub_underscore_fields,
    reason = "explicit padding fields must be public so both sides can build the structs"
)]

pub mod choose;
pub mod flood_guard;
pub mod hash;

pub use choose::{choose, heartbeat_stale, syn_keeps_entry, udp_entry_idle, Choice, Tables};
pub use flood_guard::{FloodWindow, ICMP_ANSWERS_PER_SECOND};
pub use hash::{
    bucket_of, client_hash, flow_hash, murmur3_bytes, murmur3_words, slot_of, Selection,
};

/// Weights are in basis points: 0 = no canary, 10 000 = all new flows to the canary group.
pub const BUCKETS: u32 = 10_000;
/// Services the data plane holds at once.
pub const MAX_SERVICES: u32 = 64;
/// Backends over all services (index into the `BACKENDS` array).
pub const MAX_BACKENDS: u32 = 4096;
/// Maglev lookup table size per (service, group): a prime, 100x above 163 backends.
pub const MAGLEV_TABLE_SIZE: u32 = 16_381;
/// Largest group for which the table stays at least 100x the number of backends.
pub const MAX_BACKENDS_PER_GROUP: u32 = MAGLEV_TABLE_SIZE / 100;
/// Maglev slot value meaning "this group has no backend".
pub const NO_BACKEND: u32 = u32::MAX;
/// Default LRU flow table size.
pub const DEFAULT_FLOW_TABLE_SIZE: u32 = 1 << 20;

/// Backend groups. Index into per-service group arrays.
pub const GROUP_STABLE: u32 = 0;
pub const GROUP_CANARY: u32 = 1;
pub const GROUPS: usize = 2;

pub const FAMILY_IPV4: u8 = 4;
pub const FAMILY_IPV6: u8 = 6;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// Names of the maps in the object (one definition for kernel and userspace).
pub mod maps {
    pub const CONFIG: &str = "CONFIG";
    pub const SERVICES: &str = "SERVICES";
    pub const VIPS: &str = "VIPS";
    pub const CONTROL: &str = "CONTROL";
    pub const BACKENDS: &str = "BACKENDS";
    pub const MAGLEV: &str = "MAGLEV";
    pub const FLOWS: &str = "FLOWS";
    pub const COUNTERS: &str = "COUNTERS";
    pub const BACKEND_STATS: &str = "BACKEND_STATS";
    pub const SERVICE_STATS: &str = "SERVICE_STATS";
    pub const FLOOD_GUARD: &str = "FLOOD_GUARD";
    pub const TUNNELS: &str = "TUNNELS";
    pub const ICMP_GUARD: &str = "ICMP_GUARD";
    /// Name of the XDP program in the object.
    pub const PROGRAM: &str = "canary";
    /// A do-nothing `XDP_PASS` program in the same object (veth peers, benchmark floor).
    pub const PASS_PROGRAM: &str = "canary_pass";
    /// Strips IP-in-IP on a backend whose kernel has no tunnel modules (the lab's backends).
    pub const DECAP_PROGRAM: &str = "canary_decap";
}

/// Key of the `SERVICES` hash map: a VIP, port and protocol.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct ServiceKey {
    /// VIP, network byte order; IPv4 in the first 4 bytes.
    pub addr: [u8; 16],
    /// Port, network byte order.
    pub port: u16,
    /// `PROTO_TCP` or `PROTO_UDP`.
    pub protocol: u8,
    /// `FAMILY_IPV4` or `FAMILY_IPV6`.
    pub family: u8,
}

/// Key of the `VIPS` hash map (any service on this address): lets the program tell a fragment
/// or an unconfigured port to a VIP from unrelated traffic.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct VipKey {
    pub addr: [u8; 16],
    pub family: u8,
    pub _pad: [u8; 3],
}

/// Value of the `SERVICES` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ServiceEntry {
    /// Index into `CONTROL`, `SERVICE_STATS` and the `MAGLEV` table (< `MAX_SERVICES`).
    pub index: u32,
    /// `SERVICE_FLAG_*`.
    pub flags: u32,
}

/// Affinity by client address only (all ports of a client get the same group and backend).
pub const SERVICE_FLAG_CLIENT_IP: u32 = 1;
/// Forwarding by IP-in-IP (`forwarding = "ipip"`): IPv4-in-IPv4 to an IPv4 VIP's backends,
/// IPv6-in-IPv6 to an IPv6 VIP's, to the backend's `TUNNELS` entry, next hop from the FIB.
/// Without it: direct server return by MAC rewrite (`l2`).
pub const SERVICE_FLAG_IPIP: u32 = 2;

/// Per-service control entry (`CONTROL` array, indexed by `ServiceEntry::index`), written by
/// userspace, read by the program for every new flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ServiceControl {
    /// Canary weight in basis points, `0..=BUCKETS`.
    pub canary_weight: u32,
    pub _pad: u32,
    /// Rollback "reset" epoch (`CLOCK_MONOTONIC` ns): canary flows created before it are re-chosen.
    /// 0 = none.
    pub reset_epoch_ns: u64,
    /// Last daemon heartbeat, `CLOCK_MONOTONIC` ns (the program compares it with the kernel's
    /// coarse `CLOCK_MONOTONIC`, `bpf_ktime_get_coarse_ns`, up to one timer tick behind).
    pub heartbeat_ns: u64,
    /// Dead-man switch: when `|now - heartbeat_ns| > heartbeat_timeout_ns` (a heartbeat too far
    /// in the future is as stale as an old one), new flows go to stable only. 0 disables the
    /// switch.
    pub heartbeat_timeout_ns: u64,
}

/// Global settings (`CONFIG` array, one entry).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct GlobalConfig {
    /// Seed of the flow hash: the same on every balancer node so they agree on every flow.
    pub hash_seed: u32,
    /// `CONFIG_FLAG_*`.
    pub flags: u32,
    /// The balancer's MAC (its interface's): only frames addressed to it are balanced, and it
    /// is the source of forwarded frames. All zero (a configuration that predates it): any
    /// unicast destination is taken as ours and kept as the source. Frames to a group
    /// (broadcast, multicast) address are never balanced.
    pub lb_mac: [u8; 6],
    pub _pad: [u8; 2],
    /// A TCP SYN (without ACK, RST, FIN) replaces its 5-tuple's flow-table entry only when the
    /// entry is at least this old (ms); a younger entry is the same connection's (a
    /// retransmitted SYN) or a spoof, and the SYN follows it. 0: every SYN replaces.
    pub syn_replace_after_ms: u32,
    /// Flood guard: new flows per second per CPU above which new flows are balanced without a
    /// flow-table entry (`TxFloodGuard`), so a flood cannot evict established flows. 0: off.
    pub flood_guard_rate: u32,
    /// A UDP flow's entry that has seen no datagram for this long (ms) is idle: the next
    /// datagram of its 5-tuple is a new flow (`UdpFlowIdle`). 0: UDP entries never idle out
    /// (only the LRU evicts them).
    pub udp_idle_timeout_ms: u32,
    pub _pad2: u32,
}

/// Do not read or write the flow table (benchmarks: shows what the flow table buys).
pub const CONFIG_FLAG_NO_FLOW_TABLE: u32 = 1;

/// A backend (`BACKENDS` array, global index).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Backend {
    /// Destination MAC for direct server return.
    pub mac: [u8; 6],
    /// `BACKEND_FLAG_*`.
    pub flags: u16,
    pub service_index: u32,
    /// `GROUP_STABLE` or `GROUP_CANARY`.
    pub group: u32,
}

/// Backend may receive traffic. Flows pinned to a backend without it are re-chosen.
pub const BACKEND_FLAG_UP: u16 = 1;

/// The outer addresses of a backend of an IP-in-IP service (`TUNNELS` array, indexed like
/// `BACKENDS`; all zero for backends of `l2` services). Same family as the service's VIP.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Tunnel {
    /// Outer destination: the backend's address (IPv4 in the first 4 bytes).
    pub dst: [u8; 16],
    /// Outer source: the balancer's tunnel source address of the family.
    pub src: [u8; 16],
}

impl Tunnel {
    /// Whether the entry names no backend (never written, or a backend of an `l2` service).
    #[must_use]
    pub fn is_unset(&self) -> bool {
        self.dst.iter().all(|b| *b == 0)
    }
}

/// Key of the LRU `FLOWS` map: the 5-tuple as seen on the wire.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FlowKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// Network byte order.
    pub src_port: u16,
    /// Network byte order.
    pub dst_port: u16,
    pub protocol: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}

/// Value of the `FLOWS` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowEntry {
    pub backend: u32,
    pub group: u32,
    /// When the flow was first seen (`CLOCK_MONOTONIC` ns, read from the kernel's coarse
    /// clock: up to one timer tick early).
    pub created_ns: u64,
    /// UDP flows: when the flow's last datagram was seen (`CLOCK_MONOTONIC` ns), for the idle
    /// timeout. TCP flows: when the entry was written.
    pub seen_ns: u64,
}

/// Per-backend counters (`BACKEND_STATS`, per-CPU array indexed by backend).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct BackendStats {
    pub packets: u64,
    /// Bytes of whole frames forwarded.
    pub bytes: u64,
    pub new_flows: u64,
}

impl BackendStats {
    /// Field-wise sum (per-CPU values add up to the backend's total).
    #[must_use]
    pub const fn plus(self, other: Self) -> Self {
        BackendStats {
            packets: self.packets.wrapping_add(other.packets),
            bytes: self.bytes.wrapping_add(other.bytes),
            new_flows: self.new_flows.wrapping_add(other.new_flows),
        }
    }
}

/// Per-service counters (`SERVICE_STATS`, per-CPU array indexed by service).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ServiceStats {
    /// New flows per group (`GROUP_STABLE`, `GROUP_CANARY`).
    pub new_flows: [u64; GROUPS],
    /// New flows sent to stable because the daemon's heartbeat was stale.
    pub deadman_fallback: u64,
    /// New flows sent to the other group because theirs had no backend.
    pub group_fallback: u64,
}

impl ServiceStats {
    /// Field-wise sum (per-CPU values add up to the service's total).
    #[must_use]
    pub const fn plus(self, other: Self) -> Self {
        ServiceStats {
            new_flows: [
                self.new_flows[0].wrapping_add(other.new_flows[0]),
                self.new_flows[1].wrapping_add(other.new_flows[1]),
            ],
            deadman_fallback: self.deadman_fallback.wrapping_add(other.deadman_fallback),
            group_fallback: self.group_fallback.wrapping_add(other.group_fallback),
        }
    }
}

/// Global counters (`COUNTERS`, per-CPU array). The first `OUTCOMES` entries are terminal
/// outcomes: every packet increments exactly one of them. The rest count events on the way.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Forwarded to a backend (`XDP_TX`).
    Tx = 0,
    /// Forwarded to a backend (`XDP_TX`) as a new flow without a flow-table entry: this CPU
    /// saw more new flows in the current second than `flood_guard_rate`.
    TxFloodGuard,
    /// Not IPv4/IPv6 (ARP, VLAN-tagged, other ethertypes): `XDP_PASS`.
    PassNotIp,
    /// IP, but not to a configured service (address, port or protocol): `XDP_PASS`.
    PassNotService,
    /// To a VIP address with a protocol other than TCP/UDP (ICMP, ...): `XDP_PASS`.
    PassOtherProtocol,
    /// To a service, but the Ethernet destination is not the balancer's MAC (`lb_mac`): another
    /// host's frame, flooded or seen in promiscuous mode. `XDP_PASS`.
    PassNotOurMac,
    /// To a service, but the Ethernet destination is a group (broadcast or multicast) address:
    /// `XDP_PASS`.
    PassMulticastMac,
    /// Truncated or inconsistent headers: `XDP_DROP`.
    DropMalformed,
    /// IP fragment to a VIP address (ports unknowable for non-first fragments): `XDP_DROP`.
    /// IPv6 atomic fragments (offset 0, no more fragments) are whole packets, not counted here.
    DropFragment,
    /// IPv6 to a VIP address with more extension headers than the program walks (4): its
    /// ports cannot be read. `XDP_DROP`.
    DropIpv6Extensions,
    /// Service has no backend up in either group: `XDP_DROP`.
    DropNoBackend,
    /// IP-in-IP service: the kernel's FIB has no usable next hop for the backend's outer
    /// address (no route, unresolved neighbour, forwarding off on the interface) or the
    /// backend has no tunnel entry: `XDP_DROP`.
    DropTunnelNoRoute,
    /// IP-in-IP service: the encapsulated packet would exceed the egress MTU (the FIB's
    /// `FRAG_NEEDED`) and may not be answered with `TxIcmpTooBig` (IPv4 without
    /// don't-fragment, an ICMP error being forwarded, or this CPU past
    /// `ICMP_ANSWERS_PER_SECOND` answers in the current second): `XDP_DROP`.
    DropTunnelTooBig,
    /// IP-in-IP service: the encapsulated packet would exceed the egress MTU, and the frame was
    /// rewritten into an ICMP "fragmentation needed" (`ICMPv6` "packet too big") to its
    /// sender, naming the egress MTU less the outer header (path MTU discovery): `XDP_TX`.
    TxIcmpTooBig,
    // ---- events, not outcomes ----
    /// A packet that is not a connection's first found its flow's entry.
    FlowHit,
    /// A packet that is not a connection's first (a UDP datagram, a TCP segment other than a
    /// SYN) found no entry. UDP: a new flow, which takes an entry.
    FlowMiss,
    /// The TCP part of `FlowMiss`: a segment in the middle of a connection whose entry is gone
    /// (evicted, or never there: spoofed), balanced by the current weight without an entry. A
    /// connection that was pinned may have moved: alert on it.
    FlowMissTcpNonSyn,
    /// A SYN found an entry of its 5-tuple younger than `syn_replace_after_ms` (its
    /// connection's retransmitted SYN, or a spoof) and followed it.
    SynKeptFlow,
    /// A SYN replaced an older entry of its 5-tuple (a client reusing its port), or one whose
    /// backend can no longer take the flow.
    SynReplacedFlow,
    /// Flow pinned to a backend that is down (or gone): re-chosen.
    FlowRechosenDown,
    /// Canary flow older than the service's reset epoch: re-chosen.
    FlowRechosenReset,
    /// New flow sent to stable instead of canary: the daemon's heartbeat was stale.
    DeadmanFallback,
    /// New flow dropped: the heartbeat was stale and stable had no usable backend (the
    /// dead-man switch never sends new flows into canary).
    DeadmanDrop,
    /// New flow sent to the other group: its own had no usable backend.
    GroupFallback,
    /// New flow whose Maglev slot named a backend that cannot take it (down, or of another
    /// service or group: the table is being rewritten); a later slot of the same group served.
    SlotFallback,
    /// An ICMP destination-unreachable (`ICMPv6`: destination unreachable, packet too big)
    /// about a service flow, forwarded to the flow's backend (counted `Tx` as well).
    IcmpErrorForwarded,
    /// Flow table insert failed; the packet was still forwarded.
    FlowInsertFailed,
    /// A UDP datagram found its flow's entry idle (no datagram for `udp_idle_timeout_ms`):
    /// balanced as a new flow, whose entry replaces the idle one.
    UdpFlowIdle,
}

/// Number of terminal outcomes (they sum to the packets seen).
pub const OUTCOMES: u32 = Counter::TxIcmpTooBig as u32 + 1;
/// Number of entries in `COUNTERS`.
pub const COUNTERS: u32 = Counter::UdpFlowIdle as u32 + 1;

impl Counter {
    pub const ALL: [Counter; COUNTERS as usize] = [
        Counter::Tx,
        Counter::TxFloodGuard,
        Counter::PassNotIp,
        Counter::PassNotService,
        Counter::PassOtherProtocol,
        Counter::PassNotOurMac,
        Counter::PassMulticastMac,
        Counter::DropMalformed,
        Counter::DropFragment,
        Counter::DropIpv6Extensions,
        Counter::DropNoBackend,
        Counter::DropTunnelNoRoute,
        Counter::DropTunnelTooBig,
        Counter::TxIcmpTooBig,
        Counter::FlowHit,
        Counter::FlowMiss,
        Counter::FlowMissTcpNonSyn,
        Counter::SynKeptFlow,
        Counter::SynReplacedFlow,
        Counter::FlowRechosenDown,
        Counter::FlowRechosenReset,
        Counter::DeadmanFallback,
        Counter::DeadmanDrop,
        Counter::GroupFallback,
        Counter::SlotFallback,
        Counter::IcmpErrorForwarded,
        Counter::FlowInsertFailed,
        Counter::UdpFlowIdle,
    ];

    /// Snake-case name used in metrics (`canary_xdp_packets_total{outcome=...}`).
    pub const fn name(self) -> &'static str {
        match self {
            Counter::Tx => "tx",
            Counter::TxFloodGuard => "tx_flood_guard",
            Counter::PassNotIp => "pass_not_ip",
            Counter::PassNotService => "pass_not_service",
            Counter::PassOtherProtocol => "pass_other_protocol",
            Counter::PassNotOurMac => "pass_not_our_mac",
            Counter::PassMulticastMac => "pass_multicast_mac",
            Counter::DropMalformed => "drop_malformed",
            Counter::DropFragment => "drop_fragment",
            Counter::DropIpv6Extensions => "drop_ipv6_extensions",
            Counter::DropNoBackend => "drop_no_backend",
            Counter::DropTunnelNoRoute => "drop_tunnel_no_route",
            Counter::DropTunnelTooBig => "drop_tunnel_too_big",
            Counter::TxIcmpTooBig => "tx_icmp_too_big",
            Counter::FlowHit => "flow_table_hit",
            Counter::FlowMiss => "flow_table_miss",
            Counter::FlowMissTcpNonSyn => "flow_table_miss_tcp_non_syn",
            Counter::SynKeptFlow => "syn_kept_flow",
            Counter::SynReplacedFlow => "syn_replaced_flow",
            Counter::FlowRechosenDown => "flow_rechosen_backend_down",
            Counter::FlowRechosenReset => "flow_rechosen_reset",
            Counter::DeadmanFallback => "deadman_fallback",
            Counter::DeadmanDrop => "deadman_drop",
            Counter::GroupFallback => "group_fallback",
            Counter::SlotFallback => "slot_fallback",
            Counter::IcmpErrorForwarded => "icmp_error_forwarded",
            Counter::FlowInsertFailed => "flow_insert_failed",
            Counter::UdpFlowIdle => "udp_flow_idle",
        }
    }

    pub const fn is_outcome(self) -> bool {
        (self as u32) < OUTCOMES
    }
}

/// Index of a slot in the flat `MAGLEV` array.
#[inline(always)]
pub const fn maglev_index(service_index: u32, group: u32, slot: u32) -> u32 {
    (service_index * GROUPS as u32 + group) * MAGLEV_TABLE_SIZE + slot
}

/// Entries of the flat `MAGLEV` array.
pub const MAGLEV_ENTRIES: u32 = MAX_SERVICES * GROUPS as u32 * MAGLEV_TABLE_SIZE;

/// The group a new flow goes to, by the bucket rule: buckets below the weight are canary.
/// Raising the weight only ever moves buckets from stable to canary.
#[inline(always)]
pub const fn group_for_bucket(bucket: u32, canary_weight: u32) -> u32 {
    if bucket < canary_weight {
        GROUP_CANARY
    } else {
        GROUP_STABLE
    }
}

const _: () = assert!(core::mem::size_of::<ServiceKey>() == 20);
const _: () = assert!(core::mem::size_of::<VipKey>() == 20);
const _: () = assert!(core::mem::size_of::<ServiceEntry>() == 8);
const _: () = assert!(core::mem::size_of::<ServiceControl>() == 32);
const _: () = assert!(core::mem::size_of::<GlobalConfig>() == 32);
const _: () = assert!(core::mem::size_of::<Backend>() == 16);
const _: () = assert!(core::mem::size_of::<FlowKey>() == 40);
const _: () = assert!(core::mem::size_of::<Tunnel>() == 32);
const _: () = assert!(core::mem::size_of::<FlowEntry>() == 24);
const _: () = assert!(core::mem::size_of::<BackendStats>() == 24);
const _: () = assert!(core::mem::size_of::<ServiceStats>() == 32);
const _: () = assert!(MAGLEV_TABLE_SIZE >= 100 * MAX_BACKENDS_PER_GROUP);

#[cfg(feature = "user")]
mod pod {
    use super::{
        Backend, BackendStats, FloodWindow, FlowEntry, FlowKey, GlobalConfig, ServiceControl,
        ServiceEntry, ServiceKey, ServiceStats, Tunnel, VipKey,
    };
    // SAFETY: all are `#[repr(C)]`, `Copy`, made only of integers and byte arrays, with no
    // implicit padding (sizes asserted above), so every bit pattern is valid.
    unsafe impl aya::Pod for ServiceKey {}
    unsafe impl aya::Pod for VipKey {}
    unsafe impl aya::Pod for ServiceEntry {}
    unsafe impl aya::Pod for ServiceControl {}
    unsafe impl aya::Pod for GlobalConfig {}
    unsafe impl aya::Pod for Backend {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for FlowEntry {}
    unsafe impl aya::Pod for BackendStats {}
    unsafe impl aya::Pod for ServiceStats {}
    unsafe impl aya::Pod for FloodWindow {}
    unsafe impl aya::Pod for Tunnel {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_rule_is_monotone_in_weight() {
        for bucket in 0..BUCKETS {
            let mut was_canary = false;
            for weight in [0, 100, 1000, 2500, 5000, 7500, BUCKETS] {
                let canary = group_for_bucket(bucket, weight) == GROUP_CANARY;
                assert!(
                    !was_canary || canary,
                    "bucket {bucket} left canary at weight {weight}"
                );
                was_canary = canary;
            }
        }
        assert_eq!(group_for_bucket(0, 0), GROUP_STABLE);
        assert_eq!(group_for_bucket(BUCKETS - 1, BUCKETS), GROUP_CANARY);
    }

    #[test]
    fn maglev_indices_do_not_overlap() {
        let last = maglev_index(MAX_SERVICES - 1, GROUP_CANARY, MAGLEV_TABLE_SIZE - 1);
        assert_eq!(last + 1, MAGLEV_ENTRIES);
        assert_eq!(maglev_index(0, GROUP_CANARY, 0), MAGLEV_TABLE_SIZE);
        assert_eq!(maglev_index(1, GROUP_STABLE, 0), 2 * MAGLEV_TABLE_SIZE);
    }

    #[test]
    fn counters_are_dense_and_named() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i);
            assert!(!c.name().is_empty());
        }
        assert_eq!(
            Counter::ALL.iter().filter(|c| c.is_outcome()).count(),
            OUTCOMES as usize
        );
    }
}
