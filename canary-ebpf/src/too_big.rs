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
//! An answer (170 or 190 bytes) is a fraction of the full-size packet it answers, so it
//! cannot be used for amplification, and a CPU sends at most `ICMP_ANSWERS_PER_SECOND` of
//! them a second (`may_answer`).

use aya_ebpf::helpers::{bpf_csum_diff, bpf_ktime_get_coarse_ns, bpf_xdp_adjust_tail};
use canary_common::Counter;

use crate::packet::{
    Packet, ETHERTYPE_IPV4, ETHERTYPE_IPV6, ETH_HEADER_LEN, ICMPV6_PACKET_TOO_BIG,
    ICMP_DEST_UNREACHABLE, ICMP_FRAG_NEEDED, ICMP_HEADER_LEN,
    IPV4_MIN_HEADER_LEN as IPV4_HEADER_LEN, IPV6_HEADER_LEN, PROTO_ICMP, PROTO_ICMPV6,
};

/// Bytes of the answered packet quoted in the ICMP message, from its IP header on.
pub const QUOTE_LEN: usize = 128;
const TTL: u8 = 64;
/// The least MTU an IPv4 host must accept (RFC 791).
const IPV4_MIN_MTU: u16 = 68;
/// The least MTU of any IPv6 link (RFC 8200).
const IPV6_MIN_MTU: u16 = 1280;

const V4_ANSWER_LEN: usize = ETH_HEADER_LEN + IPV4_HEADER_LEN + ICMP_HEADER_LEN + QUOTE_LEN;
const V6_ANSWER_LEN: usize = ETH_HEADER_LEN + IPV6_HEADER_LEN + ICMP_HEADER_LEN + QUOTE_LEN;
/// Bytes the ICMP checksum covers (header and quote).
const ICMP_MESSAGE_LEN: usize = ICMP_HEADER_LEN + QUOTE_LEN;

/// Whether this CPU may answer one more too-big packet now: at most
/// `ICMP_ANSWERS_PER_SECOND` a second, as hosts limit the ICMP they send, so that a flood of
/// full-size packets costs the balancer no more than forwarding them would.
#[inline(always)]
pub fn may_answer() -> bool {
    // SAFETY: a helper without arguments (the coarse clock: seconds are all that matter).
    crate::maps::icmp_guard_admits(unsafe { bpf_ktime_get_coarse_ns() })
}

/// The MTU a sender must keep to: `egress_mtu` less the outer header, at least `floor`.
#[inline(always)]
fn sender_mtu(egress_mtu: u16, overhead: usize, floor: u16) -> u16 {
    egress_mtu.saturating_sub(overhead as u16).max(floor)
}

/// Answers an IPv4 packet (its header starts after the Ethernet header, don't-fragment set)
/// with "fragmentation needed": `TxIcmpTooBig` when the frame is the answer, ready to go out
/// (`XDP_TX`), `DropTunnelTooBig` when it could not be built (a frame shorter than an answer,
/// possible only with an egress MTU under 142 bytes): the packet is then dropped.
#[inline(always)]
pub fn answer_v4(pkt: &Packet, egress_mtu: u16) -> Counter {
    let Some((frame, addrs)) =
        answer_frame::<IPV4_HEADER_LEN, V4_ANSWER_LEN>(pkt, 12, ETHERTYPE_IPV4)
    else {
        return Counter::DropTunnelTooBig;
    };
    // SAFETY: `frame` covers the whole answer inside the frame (checked by `bytes_mut`).
    let frame = unsafe { &mut *frame };

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
    let Some((frame, addrs)) =
        answer_frame::<IPV6_HEADER_LEN, V6_ANSWER_LEN>(pkt, 8, ETHERTYPE_IPV6)
    else {
        return Counter::DropTunnelTooBig;
    };
    // SAFETY: as in `answer_v4`.
    let frame = unsafe { &mut *frame };

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

/// Turns the frame into the room of an answer of `ANSWER` bytes to an IP packet whose header
/// has `HEADER` bytes: shortened to the Ethernet header and the quote, grown at the front by
/// the answer's IP and ICMP headers, with the Ethernet header written (back to the sender,
/// from the MAC the frame came to). Returns the answer's bytes, and the packet's source and
/// destination addresses (`HEADER - addrs_at` bytes at `addrs_at` of its header, read before
/// the frame changes). `None` if the frame is too short or the kernel refuses a change.
#[inline(always)]
fn answer_frame<const HEADER: usize, const ANSWER: usize>(
    pkt: &Packet,
    addrs_at: usize,
    ethertype: u16,
) -> Option<(*mut [u8; ANSWER], [u8; 32])> {
    const { assert!(ANSWER == ETH_HEADER_LEN + HEADER + ICMP_HEADER_LEN + QUOTE_LEN) };
    let macs = *pkt.bytes::<12>(0)?;
    let header = pkt.bytes::<HEADER>(ETH_HEADER_LEN)?;
    let mut addrs = [0u8; 32];
    addrs[..HEADER - addrs_at].copy_from_slice(&header[addrs_at..]);

    let grow = HEADER + ICMP_HEADER_LEN;
    let keep = ANSWER - grow;
    if pkt.len() < keep {
        return None;
    }
    // SAFETY: the program's context; the helper checks the bounds itself.
    if unsafe { bpf_xdp_adjust_tail(pkt.ctx(), keep as i32 - pkt.len() as i32) } != 0 {
        return None;
    }
    let pkt = pkt.adjust_head(-(grow as i32))?;
    let frame = pkt.bytes_mut::<ANSWER>(0)?;
    // SAFETY: `frame` covers the whole answer inside the frame (checked by `bytes_mut`).
    let eth = unsafe { &mut *frame };
    eth[..6].copy_from_slice(&macs[6..12]);
    eth[6..12].copy_from_slice(&macs[..6]);
    eth[12..14].copy_from_slice(&ethertype.to_be_bytes());
    Some((frame, addrs))
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
