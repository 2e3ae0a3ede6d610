//! IP-in-IP forwarding (`forwarding = "ipip"`): the packet is wrapped in an outer IP header of
//! its own family (IPv4-in-IPv4, protocol 4; IPv6-in-IPv6, next header 41) from the tunnel
//! source to the backend's address (`TUNNELS`), and sent to the next hop the kernel's FIB
//! names (`bpf_fib_lookup`): `XDP_TX` when that is the interface the frame came in on,
//! `bpf_redirect` otherwise.
//!
//! The FIB also checks the egress MTU against the outer length: a packet that would not fit is
//! never sent to be lost further on. It is answered with ICMP "fragmentation needed" / "packet
//! too big" (`too_big`, counted `TxIcmpTooBig`), so that its sender lowers its path MTU, or,
//! when it must not be answered (IPv4 without don't-fragment, an ICMP error itself, this CPU
//! over `ICMP_ANSWERS_PER_SECOND`), dropped and counted (`DropTunnelTooBig`). Nothing is
//! written to the frame before the lookup succeeded.

use core::{
    mem::{size_of, MaybeUninit},
    ptr::write_volatile,
};

use aya_ebpf::{
    bindings::{bpf_fib_lookup as FibParams, xdp_action, BPF_FIB_LKUP_RET_FRAG_NEEDED},
    helpers::{bpf_fib_lookup, bpf_redirect},
};
use canary_common::{Counter, Tunnel, FAMILY_IPV4};

use crate::{
    maps::TUNNELS,
    packet::{
        Packet, ETHERTYPE_IPV4, ETHERTYPE_IPV6, ETH_HEADER_LEN,
        IPV4_MIN_HEADER_LEN as IPV4_HEADER_LEN, IPV6_HEADER_LEN, PROTO_IPIP, PROTO_IPV6,
    },
    too_big,
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
/// TTL / hop limit of the outer header.
const OUTER_TTL: u8 = 64;
/// The don't-fragment bit in the first byte of the IPv4 flags/offset field.
const IPV4_DF: u8 = 0x40;

/// FIB lookup parameters on an 8-byte aligned stack slot, zeroed by 8-byte stores (see
/// `AlignedFlowKey` in `balancer`: a zeroing `Default` would become a byte-wise loop).
#[repr(C, align(8))]
struct AlignedFib(FibParams);

const _: () = assert!(size_of::<AlignedFib>().is_multiple_of(8));

impl AlignedFib {
    #[inline(always)]
    fn zeroed_in(slot: &mut MaybeUninit<AlignedFib>) -> &mut FibParams {
        let words = slot.as_mut_ptr().cast::<u64>();
        for i in 0..size_of::<AlignedFib>() / 8 {
            // SAFETY: `i` words of 8 bytes stay inside the 8-aligned slot.
            unsafe { write_volatile(words.add(i), 0) };
        }
        // SAFETY: every byte is written, and all-zero is valid for this plain C struct.
        unsafe { &mut slot.assume_init_mut().0 }
    }
}

/// Encapsulates the frame for the backend at `backend_index` and returns the XDP action
/// (`XDP_TX` or `XDP_REDIRECT`), or the outcome of a packet not forwarded: a drop, or
/// `TxIcmpTooBig` (the frame is now the ICMP answer to its sender, sent by `XDP_TX`). An
/// ICMP error being forwarded (`answerable` false) is never answered with another.
#[inline(always)]
pub fn encapsulate(
    pkt: &Packet,
    family: u8,
    backend_index: u32,
    answerable: bool,
) -> Result<u32, Counter> {
    let tunnel = TUNNELS
        .get(backend_index)
        .ok_or(Counter::DropTunnelNoRoute)?;
    if family == FAMILY_IPV4 {
        encapsulate_v4(pkt, tunnel, answerable)
    } else {
        encapsulate_v6(pkt, tunnel, answerable)
    }
}

/// Why the FIB gave no next hop.
enum Refused {
    /// No route, no neighbour, forwarding off: `DropTunnelNoRoute`.
    NoRoute,
    /// The outer packet would exceed the egress interface's MTU (this one).
    TooBig(u16),
}

/// The kernel's next hop for the outer packet (`fib` filled in), or why there is none.
#[inline(always)]
fn lookup(pkt: &Packet, fib: &mut FibParams) -> Result<(), Refused> {
    // SAFETY: the context is the program's; `fib` is a valid, writable parameter block.
    let rc = unsafe { bpf_fib_lookup(pkt.ctx().cast(), fib, size_of::<FibParams>() as i32, 0) };
    match rc {
        0 => Ok(()),
        rc if rc == i64::from(BPF_FIB_LKUP_RET_FRAG_NEEDED) => {
            // SAFETY: on FRAG_NEEDED the kernel wrote the MTU over the total length.
            Err(Refused::TooBig(unsafe { fib.__bindgen_anon_1.mtu_result }))
        }
        _ => Err(Refused::NoRoute),
    }
}

/// `XDP_TX` when the next hop is behind the interface the frame came in on, else a redirect.
#[inline(always)]
fn send(ingress: u32, egress: u32) -> u32 {
    if egress == ingress {
        xdp_action::XDP_TX
    } else {
        // SAFETY: a helper on plain integers; it only records the target.
        unsafe { bpf_redirect(egress, 0) };
        xdp_action::XDP_REDIRECT
    }
}

#[inline(always)]
fn ingress_ifindex(pkt: &Packet) -> u32 {
    // SAFETY: the program's context, valid for the whole invocation.
    unsafe { (*pkt.ctx()).ingress_ifindex }
}

/// The one's-complement checksum of an IPv4 header whose checksum field is zero.
#[inline(always)]
pub fn ipv4_checksum(header: &[u8; IPV4_HEADER_LEN]) -> u16 {
    let mut sum = 0u32;
    for i in 0..IPV4_HEADER_LEN / 2 {
        sum += u32::from(u16::from_be_bytes([header[2 * i], header[2 * i + 1]]));
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

#[inline(always)]
fn encapsulate_v4(pkt: &Packet, tunnel: &Tunnel, answerable: bool) -> Result<u32, Counter> {
    if u32::from_ne_bytes([tunnel.dst[0], tunnel.dst[1], tunnel.dst[2], tunnel.dst[3]]) == 0 {
        return Err(Counter::DropTunnelNoRoute);
    }
    let inner = pkt
        .bytes::<IPV4_HEADER_LEN>(ETH_HEADER_LEN)
        .ok_or(Counter::DropMalformed)?;
    let tos = inner[1];
    let df = inner[6] & IPV4_DF;
    let outer_len = u32::from(u16::from_be_bytes([inner[2], inner[3]])) + IPV4_HEADER_LEN as u32;
    if outer_len > u32::from(u16::MAX) {
        return Err(Counter::DropTunnelTooBig);
    }
    let ingress = ingress_ifindex(pkt);
    let mut slot = MaybeUninit::uninit();
    let fib = AlignedFib::zeroed_in(&mut slot);
    fib.family = AF_INET;
    fib.l4_protocol = PROTO_IPIP;
    fib.__bindgen_anon_1.tot_len = outer_len as u16;
    fib.ifindex = ingress;
    fib.__bindgen_anon_2.tos = tos;
    fib.__bindgen_anon_3.ipv4_src =
        u32::from_ne_bytes([tunnel.src[0], tunnel.src[1], tunnel.src[2], tunnel.src[3]]);
    fib.__bindgen_anon_4.ipv4_dst =
        u32::from_ne_bytes([tunnel.dst[0], tunnel.dst[1], tunnel.dst[2], tunnel.dst[3]]);
    match lookup(pkt, fib) {
        Ok(()) => {}
        Err(Refused::NoRoute) => return Err(Counter::DropTunnelNoRoute),
        // Without don't-fragment the sender asked the path to fragment, which XDP cannot do;
        // it is not told to send smaller packets either.
        Err(Refused::TooBig(mtu)) if answerable && df != 0 && too_big::may_answer() => {
            return Err(too_big::answer_v4(pkt, mtu))
        }
        Err(Refused::TooBig(_)) => return Err(Counter::DropTunnelTooBig),
    }

    let mut ip = [0u8; IPV4_HEADER_LEN];
    ip[0] = 0x45;
    ip[1] = tos;
    ip[2..4].copy_from_slice(&(outer_len as u16).to_be_bytes());
    ip[6] = df;
    ip[8] = OUTER_TTL;
    ip[9] = PROTO_IPIP;
    ip[12..16].copy_from_slice(&tunnel.src[..4]);
    ip[16..20].copy_from_slice(&tunnel.dst[..4]);
    let checksum = ipv4_checksum(&ip).to_be_bytes();
    ip[10] = checksum[0];
    ip[11] = checksum[1];

    push_outer::<IPV4_HEADER_LEN, { ETH_HEADER_LEN + IPV4_HEADER_LEN }>(
        pkt,
        fib,
        ETHERTYPE_IPV4,
        &ip,
    )?;
    Ok(send(ingress, fib.ifindex))
}

#[inline(always)]
fn encapsulate_v6(pkt: &Packet, tunnel: &Tunnel, answerable: bool) -> Result<u32, Counter> {
    let dst = words(&tunnel.dst);
    if dst[0] | dst[1] | dst[2] | dst[3] == 0 {
        return Err(Counter::DropTunnelNoRoute);
    }
    let inner = pkt
        .bytes::<IPV6_HEADER_LEN>(ETH_HEADER_LEN)
        .ok_or(Counter::DropMalformed)?;
    // Version, traffic class and flow label as the inner packet has them.
    let first = [inner[0], inner[1], inner[2], inner[3]];
    let outer_payload =
        u32::from(u16::from_be_bytes([inner[4], inner[5]])) + IPV6_HEADER_LEN as u32;
    if outer_payload > u32::from(u16::MAX) {
        return Err(Counter::DropTunnelTooBig);
    }
    let ingress = ingress_ifindex(pkt);
    let mut slot = MaybeUninit::uninit();
    let fib = AlignedFib::zeroed_in(&mut slot);
    fib.family = AF_INET6;
    fib.l4_protocol = PROTO_IPV6;
    fib.__bindgen_anon_1.tot_len = (outer_payload + IPV6_HEADER_LEN as u32) as u16;
    fib.ifindex = ingress;
    fib.__bindgen_anon_3.ipv6_src = words(&tunnel.src);
    fib.__bindgen_anon_4.ipv6_dst = dst;
    match lookup(pkt, fib) {
        Ok(()) => {}
        Err(Refused::NoRoute) => return Err(Counter::DropTunnelNoRoute),
        // IPv6 is never fragmented on the path: every sender expects "packet too big".
        Err(Refused::TooBig(mtu)) if answerable && too_big::may_answer() => {
            return Err(too_big::answer_v6(pkt, mtu))
        }
        Err(Refused::TooBig(_)) => return Err(Counter::DropTunnelTooBig),
    }

    let mut ip = [0u8; IPV6_HEADER_LEN];
    ip[..4].copy_from_slice(&first);
    ip[4..6].copy_from_slice(&(outer_payload as u16).to_be_bytes());
    ip[6] = PROTO_IPV6;
    ip[7] = OUTER_TTL;
    ip[8..24].copy_from_slice(&tunnel.src);
    ip[24..40].copy_from_slice(&tunnel.dst);

    push_outer::<IPV6_HEADER_LEN, { ETH_HEADER_LEN + IPV6_HEADER_LEN }>(
        pkt,
        fib,
        ETHERTYPE_IPV6,
        &ip,
    )?;
    Ok(send(ingress, fib.ifindex))
}

/// Puts the outer IP header `ip` (`HEADER` bytes) in front of the packet, behind a new Ethernet
/// header to the FIB's next hop. `FRAME` is the Ethernet and outer headers together (the
/// length the frame must have at its new start).
#[inline(always)]
fn push_outer<const HEADER: usize, const FRAME: usize>(
    pkt: &Packet,
    fib: &FibParams,
    ethertype: u16,
    ip: &[u8; HEADER],
) -> Result<(), Counter> {
    const { assert!(FRAME == ETH_HEADER_LEN + HEADER) };
    let pkt = pkt
        .adjust_head(-(HEADER as i32))
        .ok_or(Counter::DropTunnelNoRoute)?;
    let head = pkt.bytes_mut::<FRAME>(0).ok_or(Counter::DropMalformed)?;
    // SAFETY: `head` covers the new Ethernet and outer IP headers inside the frame.
    let head = unsafe { &mut *head };
    head[..6].copy_from_slice(&fib.dmac);
    head[6..12].copy_from_slice(&fib.smac);
    head[12..14].copy_from_slice(&ethertype.to_be_bytes());
    head[ETH_HEADER_LEN..].copy_from_slice(ip);
    Ok(())
}

/// An address as the FIB's four 32-bit words (bytes kept in wire order).
#[inline(always)]
fn words(addr: &[u8; 16]) -> [u32; 4] {
    [
        u32::from_ne_bytes([addr[0], addr[1], addr[2], addr[3]]),
        u32::from_ne_bytes([addr[4], addr[5], addr[6], addr[7]]),
        u32::from_ne_bytes([addr[8], addr[9], addr[10], addr[11]]),
        u32::from_ne_bytes([addr[12], addr[13], addr[14], addr[15]]),
    ]
}
