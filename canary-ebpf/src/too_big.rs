//! Path MTU discovery for IP-in-IP services: a packet that would exceed the egress MTU once
//! encapsulated is answered, back to its sender, with ICMP "fragmentation needed" (IPv4, type 3
//! code 4) or `ICMPv6` "packet too big" (type 2), naming the MTU the sender must use (the
//! egress MTU less the outer header). The sender's TCP then sends smaller segments to the VIP,
//! so full-size transfers work without any set-up on the path.
//!
//! The frame is rewritten in place into the answer: shortened to the headers plus the first
//! [`QUOTE_LEN`] bytes of the packet from its IP header on (enough for any IPv4 header with
//! options and the transport ports and sequence number a host matches the error with), new
//! Ethernet, IP and ICMP headers in front, MACs swapped, source address the VIP, `XDP_TX`.
//! An answer is a fraction of the size of the packet it answers (at most 190 bytes for at
//! least 1,280), so it cannot be used for amplification.

use aya_ebpf::helpers::{bpf_csum_diff, bpf_xdp_adjust_tail};
use canary_common::Counter;

use crate::packet::{Packet, ETH_HEADER_LEN};

/// Bytes of the answered packet quoted in the ICMP message, from its IP header on.
pub const QUOTE_LEN: usize = 128;
const ICMP_HEADER_LEN: usize = 8;
const IPV4_HEADER_LEN: usize = 20;
const IPV6_HEADER_LEN: usize = 40;
const PROTO_ICMP: u8 = 1;
const PROTO_ICMPV6: u8 = 58;
const ICMP_DEST_UNREACHABLE: u8 = 3;
const ICMP_FRAG_NEEDED: u8 = 4;
const ICMPV6_PACKET_TOO_BIG: u8 = 2;
const ETHERTYPE_IPV4: [u8; 2] = [0x08, 0x00];
const ETHERTYPE_IPV6: [u8; 2] = [0x86, 0xdd];
const TTL: u8 = 64;
/// The least MTU an IPv4 host must accept (RFC 791).
const IPV4_MIN_MTU: u16 = 68;
/// The least MTU of any IPv6 link (RFC 8200).
const IPV6_MIN_MTU: u16 = 1280;

const V4_ANSWER_LEN: usize = ETH_HEADER_LEN + IPV4_HEADER_LEN + ICMP_HEADER_LEN + QUOTE_LEN;
const V6_ANSWER_LEN: usize = ETH_HEADER_LEN + IPV6_HEADER_LEN + ICMP_HEADER_LEN + QUOTE_LEN;
/// Bytes the ICMP checksum covers (header and quote).
const ICMP_MESSAGE_LEN: usize = ICMP_HEADER_LEN + QUOTE_LEN;

/// The MTU a sender must keep to: `egress_mtu` less the outer header, at least `floor`.
#[inline(always)]
fn sender_mtu(egress_mtu: u16, overhead: usize, floor: u16) -> u16 {
    let mtu = egress_mtu.saturating_sub(overhead as u16);
    if mtu < floor {
        floor
    } else {
        mtu
    }
}

/// Answers an IPv4 packet (its header starts after the Ethernet header, don't-fragment set)
/// with "fragmentation needed": `TxIcmpTooBig` when the frame is the answer, ready to go out
/// (`XDP_TX`), `DropTunnelTooBig` when it could not be built (a frame shorter than an answer,
/// possible only with an egress MTU under 142 bytes): the packet is then dropped.
#[inline(always)]
pub fn answer_v4(pkt: &Packet, egress_mtu: u16) -> Counter {
    let Some((macs, addrs)) = sender_of::<IPV4_HEADER_LEN>(pkt, 12) else {
        return Counter::DropTunnelTooBig;
    };
    let Some(pkt) = reshape(pkt, V4_ANSWER_LEN, IPV4_HEADER_LEN) else {
        return Counter::DropTunnelTooBig;
    };
    let Some(frame) = pkt.bytes_mut::<V4_ANSWER_LEN>(0) else {
        return Counter::DropTunnelTooBig;
    };
    // SAFETY: `frame` covers the whole answer inside the frame (checked by `bytes_mut`).
    let frame = unsafe { &mut *frame };
    write_macs(frame, &macs, ETHERTYPE_IPV4);

    let mut ip = [0u8; IPV4_HEADER_LEN];
    ip[0] = 0x45;
    // Internetwork control precedence, as hosts send their own ICMP errors.
    ip[1] = 0xc0;
    ip[2..4].copy_from_slice(&((V4_ANSWER_LEN - ETH_HEADER_LEN) as u16).to_be_bytes());
    ip[8] = TTL;
    ip[9] = PROTO_ICMP;
    // From the address the packet was sent to (the VIP), back to its sender.
    ip[12..16].copy_from_slice(&addrs[4..8]);
    ip[16..20].copy_from_slice(&addrs[..4]);
    let checksum = crate::tunnel::ipv4_checksum(&ip).to_be_bytes();
    ip[10] = checksum[0];
    ip[11] = checksum[1];
    frame[ETH_HEADER_LEN..ETH_HEADER_LEN + IPV4_HEADER_LEN].copy_from_slice(&ip);

    let icmp = ETH_HEADER_LEN + IPV4_HEADER_LEN;
    let mtu = sender_mtu(egress_mtu, IPV4_HEADER_LEN, IPV4_MIN_MTU).to_be_bytes();
    frame[icmp..icmp + ICMP_HEADER_LEN].copy_from_slice(&[
        ICMP_DEST_UNREACHABLE,
        ICMP_FRAG_NEEDED,
        0,
        0,
        0,
        0,
        mtu[0],
        mtu[1],
    ]);
    let sum = checksum_of(&mut frame[icmp..], 0);
    frame[icmp + 2..icmp + 4].copy_from_slice(&sum.to_ne_bytes());
    Counter::TxIcmpTooBig
}

/// Answers an IPv6 packet with "packet too big"; results as [`answer_v4`].
#[inline(always)]
pub fn answer_v6(pkt: &Packet, egress_mtu: u16) -> Counter {
    let Some((macs, addrs)) = sender_of::<IPV6_HEADER_LEN>(pkt, 8) else {
        return Counter::DropTunnelTooBig;
    };
    let Some(pkt) = reshape(pkt, V6_ANSWER_LEN, IPV6_HEADER_LEN) else {
        return Counter::DropTunnelTooBig;
    };
    let Some(frame) = pkt.bytes_mut::<V6_ANSWER_LEN>(0) else {
        return Counter::DropTunnelTooBig;
    };
    // SAFETY: as in `answer_v4`.
    let frame = unsafe { &mut *frame };
    write_macs(frame, &macs, ETHERTYPE_IPV6);

    let payload_len = (ICMP_MESSAGE_LEN as u16).to_be_bytes();
    let mut ip = [0u8; IPV6_HEADER_LEN];
    ip[0] = 0x60;
    ip[4..6].copy_from_slice(&payload_len);
    ip[6] = PROTO_ICMPV6;
    ip[7] = TTL;
    ip[8..24].copy_from_slice(&addrs[16..32]);
    ip[24..40].copy_from_slice(&addrs[..16]);
    frame[ETH_HEADER_LEN..ETH_HEADER_LEN + IPV6_HEADER_LEN].copy_from_slice(&ip);

    let icmp = ETH_HEADER_LEN + IPV6_HEADER_LEN;
    let mtu = u32::from(sender_mtu(egress_mtu, IPV6_HEADER_LEN, IPV6_MIN_MTU)).to_be_bytes();
    frame[icmp..icmp + ICMP_HEADER_LEN].copy_from_slice(&[
        ICMPV6_PACKET_TOO_BIG,
        0,
        0,
        0,
        mtu[0],
        mtu[1],
        mtu[2],
        mtu[3],
    ]);
    // The pseudo-header: source, destination, upper-layer length (32 bits), next header.
    let mut pseudo = [0u8; 40];
    pseudo[..32].copy_from_slice(&ip[8..40]);
    pseudo[34..36].copy_from_slice(&payload_len);
    pseudo[39] = PROTO_ICMPV6;
    // SAFETY: a fully written stack array of a multiple of 4 bytes.
    let seed = unsafe {
        bpf_csum_diff(
            core::ptr::null_mut(),
            0,
            pseudo.as_mut_ptr().cast(),
            pseudo.len() as u32,
            0,
        )
    };
    let sum = checksum_of(&mut frame[icmp..], seed as u32);
    frame[icmp + 2..icmp + 4].copy_from_slice(&sum.to_ne_bytes());
    Counter::TxIcmpTooBig
}

/// The frame's MACs (destination, then source) and the IP header's `ADDRS` bytes of source
/// and destination address at `addrs_at` (before the frame is touched).
#[inline(always)]
fn sender_of<const HEADER: usize>(pkt: &Packet, addrs_at: usize) -> Option<([u8; 12], [u8; 32])> {
    let macs = *pkt.bytes::<12>(0)?;
    let header = pkt.bytes::<HEADER>(ETH_HEADER_LEN)?;
    let mut addrs = [0u8; 32];
    let len = HEADER - addrs_at;
    addrs[..len].copy_from_slice(&header[addrs_at..]);
    Some((macs, addrs))
}

/// Shortens the frame to `answer_len` and makes room for the answer's IP and ICMP headers in
/// front of the quoted packet (which keeps its place behind them).
#[inline(always)]
fn reshape(pkt: &Packet, answer_len: usize, ip_header_len: usize) -> Option<Packet> {
    let grow = ip_header_len + ICMP_HEADER_LEN;
    let keep = answer_len - grow;
    if pkt.len() < keep {
        return None;
    }
    // SAFETY: the program's context; the helper checks the bounds itself.
    if unsafe { bpf_xdp_adjust_tail(pkt.ctx(), keep as i32 - pkt.len() as i32) } != 0 {
        return None;
    }
    pkt.adjust_head(-(grow as i32))
}

/// Destination = the sender's MAC (the frame's source), source = ours (its destination).
#[inline(always)]
fn write_macs(frame: &mut [u8], macs: &[u8; 12], ethertype: [u8; 2]) {
    frame[..6].copy_from_slice(&macs[6..12]);
    frame[6..12].copy_from_slice(&macs[..6]);
    frame[12..14].copy_from_slice(&ethertype);
}

/// The ICMP checksum of the message at the start of `message` (`ICMP_MESSAGE_LEN` bytes, its
/// checksum field zero), with `seed` (a partial sum, such as a pseudo-header's) added; in the
/// byte order to store with `to_ne_bytes`.
#[inline(always)]
fn checksum_of(message: &mut [u8], seed: u32) -> u16 {
    // SAFETY: `message` lies inside the frame, verified as at least `ICMP_MESSAGE_LEN` bytes
    // (a multiple of 4) by the caller's `bytes_mut`.
    let sum = unsafe {
        bpf_csum_diff(
            core::ptr::null_mut(),
            0,
            message.as_mut_ptr().cast(),
            ICMP_MESSAGE_LEN as u32,
            seed,
        )
    } as u64;
    let mut folded = (sum & 0xffff) + (sum >> 16);
    folded = (folded & 0xffff) + (folded >> 16);
    folded = (folded & 0xffff) + (folded >> 16);
    !(folded as u16)
}
