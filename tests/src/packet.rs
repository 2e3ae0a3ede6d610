//! Test frames: valid packets built with `etherparse`, and byte-level edits that make the
//! unusual or broken variants (options, fragments, extension headers, truncation).

use canary_common::{FlowKey, FAMILY_IPV4, FAMILY_IPV6, PROTO_TCP, PROTO_UDP};
use etherparse::PacketBuilder;

/// Source MAC of client frames.
pub const CLIENT_MAC: [u8; 6] = [0x02, 0xc1, 0x1e, 0x47, 0x00, 0x01];
/// Destination MAC of client frames: the balancer's interface.
pub const LB_MAC: [u8; 6] = [0x02, 0x1b, 0x00, 0x00, 0x00, 0x01];

pub const ETH_LEN: usize = 14;
pub const IPV4_LEN: usize = 20;
pub const IPV6_LEN: usize = 40;
pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_IPV6: u16 = 0x86dd;
pub const ETHERTYPE_ARP: u16 = 0x0806;
pub const ETHERTYPE_VLAN: u16 = 0x8100;
pub const ETHERTYPE_QINQ: u16 = 0x88a8;

/// IPv6 next-header values of the extension headers the program walks, and of fragments.
pub const IPV6_HOP_BY_HOP: u8 = 0;
pub const IPV6_ROUTING: u8 = 43;
pub const IPV6_FRAGMENT: u8 = 44;
pub const IPV6_DEST_OPTS: u8 = 60;

/// TCP flag bits (byte 13 of the TCP header).
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;
/// Offset of the flags byte in the TCP header.
pub const TCP_FLAGS_OFFSET: usize = 13;

/// Whether a TCP segment with these flags opens a connection (SYN set; ACK, RST and FIN
/// clear): such a segment starts a new flow, unless its 5-tuple has an entry younger than
/// `syn_replace_after_ms`.
pub fn opens_connection(tcp_flags: u8) -> bool {
    tcp_flags & (TCP_SYN | TCP_ACK | TCP_RST | TCP_FIN) == TCP_SYN
}

const PAYLOAD: &[u8] = b"canary test payload";
const TTL: u8 = 64;
const SEQUENCE: u32 = 0x1234_5678;
const ACKNOWLEDGMENT: u32 = 0x0abc_def0;
const WINDOW: u16 = 64_240;

/// An IP address of either family, in wire order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Addr {
    V4([u8; 4]),
    V6([u8; 16]),
}

impl Addr {
    pub fn family(self) -> u8 {
        match self {
            Addr::V4(_) => FAMILY_IPV4,
            Addr::V6(_) => FAMILY_IPV6,
        }
    }

    /// The 16-byte map form: IPv4 in the first 4 bytes, the rest zero.
    pub fn to_map(self) -> [u8; 16] {
        match self {
            Addr::V4(a) => {
                let mut out = [0u8; 16];
                out[..4].copy_from_slice(&a);
                out
            }
            Addr::V6(a) => a,
        }
    }
}

/// A TCP or UDP packet's 5-tuple, host byte order ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tuple {
    pub src: Addr,
    pub dst: Addr,
    pub src_port: u16,
    pub dst_port: u16,
    pub protocol: u8,
}

impl Tuple {
    pub fn tcp(src: Addr, src_port: u16, dst: Addr, dst_port: u16) -> Self {
        Self {
            src,
            dst,
            src_port,
            dst_port,
            protocol: PROTO_TCP,
        }
    }

    pub fn udp(src: Addr, src_port: u16, dst: Addr, dst_port: u16) -> Self {
        Self {
            protocol: PROTO_UDP,
            ..Self::tcp(src, src_port, dst, dst_port)
        }
    }

    /// The flow table key of this tuple (as the program builds it from the wire).
    pub fn flow_key(&self) -> FlowKey {
        FlowKey {
            src: self.src.to_map(),
            dst: self.dst.to_map(),
            src_port: self.src_port.to_be(),
            dst_port: self.dst_port.to_be(),
            protocol: self.protocol,
            family: self.dst.family(),
            _pad: [0; 2],
        }
    }

    /// An Ethernet frame carrying this tuple with a small payload; for TCP, a SYN (the first
    /// segment of a connection: always a new flow).
    pub fn frame(&self) -> Vec<u8> {
        self.frame_with_payload(PAYLOAD)
    }

    /// As [`Tuple::frame`] with the given payload (TCP: a SYN).
    pub fn frame_with_payload(&self, payload: &[u8]) -> Vec<u8> {
        self.segment(TCP_SYN, payload)
    }

    /// The IP packet (no Ethernet header) a backend sends back to the client of this flow by
    /// direct server return: from the VIP and service port to the client, `len` bytes of it at
    /// most (what an ICMP error quotes).
    pub fn reply_packet(&self, len: usize) -> Vec<u8> {
        let reply = Tuple {
            src: self.dst,
            dst: self.src,
            src_port: self.dst_port,
            dst_port: self.src_port,
            protocol: self.protocol,
        };
        let frame = reply.segment(TCP_ACK | TCP_PSH, &[0x5a; 1_400]);
        let ip = &frame[ETH_LEN..];
        ip[..len.min(ip.len())].to_vec()
    }

    /// A frame of an established connection: for TCP an ACK (follows the flow table), for UDP
    /// the same as [`Tuple::frame`].
    pub fn ack_frame(&self) -> Vec<u8> {
        self.segment(TCP_ACK, PAYLOAD)
    }

    /// A frame with the given TCP flags (`TCP_*` bits; FIN, SYN, RST, PSH, ACK are honoured,
    /// ignored for UDP) and payload.
    pub fn segment(&self, tcp_flags: u8, payload: &[u8]) -> Vec<u8> {
        let eth = PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC);
        let ip = match (self.src, self.dst) {
            (Addr::V4(s), Addr::V4(d)) => eth.ipv4(s, d, TTL),
            (Addr::V6(s), Addr::V6(d)) => eth.ipv6(s, d, TTL),
            _ => panic!("mixed address families in {self:?}"),
        };
        let mut out = Vec::new();
        match self.protocol {
            PROTO_TCP => {
                let mut tcp = ip.tcp(self.src_port, self.dst_port, SEQUENCE, WINDOW);
                if tcp_flags & TCP_FIN != 0 {
                    tcp = tcp.fin();
                }
                if tcp_flags & TCP_SYN != 0 {
                    tcp = tcp.syn();
                }
                if tcp_flags & TCP_RST != 0 {
                    tcp = tcp.rst();
                }
                if tcp_flags & TCP_PSH != 0 {
                    tcp = tcp.psh();
                }
                if tcp_flags & TCP_ACK != 0 {
                    tcp = tcp.ack(ACKNOWLEDGMENT);
                }
                tcp.write(&mut out, payload)
            }
            PROTO_UDP => ip
                .udp(self.src_port, self.dst_port)
                .write(&mut out, payload),
            other => panic!("no frame builder for protocol {other}"),
        }
        .expect("writing to a Vec cannot fail");
        out
    }
}

pub fn v4(a: u8, b: u8, c: u8, d: u8) -> Addr {
    Addr::V4([a, b, c, d])
}

/// An address in `2001:2::/48` (RFC 5180 benchmarking range) ending in `suffix`.
pub fn v6(suffix: u16) -> Addr {
    let mut a = [0u8; 16];
    a[..4].copy_from_slice(&[0x20, 0x01, 0x00, 0x02]);
    a[14..].copy_from_slice(&suffix.to_be_bytes());
    Addr::V6(a)
}

/// ICMP echo request (IPv4) or `ICMPv6` echo request between two addresses.
pub fn icmp_echo(src: Addr, dst: Addr) -> Vec<u8> {
    let eth = PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC);
    let mut out = Vec::new();
    match (src, dst) {
        (Addr::V4(s), Addr::V4(d)) => eth
            .ipv4(s, d, TTL)
            .icmpv4_echo_request(1, 1)
            .write(&mut out, PAYLOAD),
        (Addr::V6(s), Addr::V6(d)) => eth
            .ipv6(s, d, TTL)
            .icmpv6_echo_request(1, 1)
            .write(&mut out, PAYLOAD),
        _ => panic!("mixed address families"),
    }
    .expect("writing to a Vec cannot fail");
    out
}

/// ICMP destination unreachable (IPv4 type 3); code 4 is "fragmentation needed".
pub const ICMP_DEST_UNREACHABLE: u8 = 3;
pub const ICMP_FRAGMENTATION_NEEDED: u8 = 4;
/// `ICMPv6` destination unreachable (type 1) and packet too big (type 2).
pub const ICMPV6_DEST_UNREACHABLE: u8 = 1;
pub const ICMPV6_PACKET_TOO_BIG: u8 = 2;

/// An ICMP (IPv4) or `ICMPv6` error from `router` to `to`, sent to the balancer's MAC, quoting
/// `quoted` (an IP packet from its IP header on, as much of it as the router quotes). `rest` is
/// the ICMP header's bytes 5-8 (the MTU of "fragmentation needed" and "packet too big").
pub fn icmp_error(
    router: Addr,
    to: Addr,
    icmp_type: u8,
    code: u8,
    rest: [u8; 4],
    quoted: &[u8],
) -> Vec<u8> {
    let eth = PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC);
    let mut out = Vec::new();
    match (router, to) {
        (Addr::V4(s), Addr::V4(d)) => eth
            .ipv4(s, d, TTL)
            .icmpv4_raw(icmp_type, code, rest)
            .write(&mut out, quoted),
        (Addr::V6(s), Addr::V6(d)) => eth
            .ipv6(s, d, TTL)
            .icmpv6_raw(icmp_type, code, rest)
            .write(&mut out, quoted),
        _ => panic!("mixed address families"),
    }
    .expect("writing to a Vec cannot fail");
    out
}

/// An ARP request (who-has `target`), as a raw frame.
pub fn arp_request(target: [u8; 4]) -> Vec<u8> {
    let mut out = Vec::with_capacity(42);
    out.extend_from_slice(&[0xff; 6]);
    out.extend_from_slice(&CLIENT_MAC);
    out.extend_from_slice(&ETHERTYPE_ARP.to_be_bytes());
    out.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    out.extend_from_slice(&CLIENT_MAC);
    out.extend_from_slice(&[198, 18, 0, 1]);
    out.extend_from_slice(&[0; 6]);
    out.extend_from_slice(&target);
    out
}

/// Inserts an 802.1Q (or 802.1ad when `qinq`) tag after the MACs.
pub fn vlan_tagged(frame: &[u8], qinq: bool) -> Vec<u8> {
    let tpid = if qinq { ETHERTYPE_QINQ } else { ETHERTYPE_VLAN };
    let mut out = frame[..12].to_vec();
    out.extend_from_slice(&tpid.to_be_bytes());
    out.extend_from_slice(&100u16.to_be_bytes());
    out.extend_from_slice(&frame[12..]);
    out
}

/// The one's-complement sum of an IPv4 header, folded and inverted (RFC 1071): 0 for a
/// header whose checksum field is right, its checksum when that field is 0.
pub fn ipv4_header_checksum(header: &[u8]) -> u16 {
    internet_checksum(&[header])
}

/// The Internet checksum (RFC 1071) of the concatenation of `parts` (each of an even length,
/// but the last): the one's-complement sum of its 16-bit big-endian words, folded and
/// inverted. ICMP over its message; `ICMPv6` with the pseudo-header as the first part.
pub fn internet_checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = parts
        .iter()
        .flat_map(|part| part.chunks(2))
        .map(|w| u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Recomputes the IPv4 header checksum of an IPv4 frame (after edits).
pub fn ipv4_fix_checksum(frame: &mut [u8]) {
    let ihl = usize::from(frame[ETH_LEN] & 0x0f) * 4;
    let header = &mut frame[ETH_LEN..ETH_LEN + ihl];
    header[10] = 0;
    header[11] = 0;
    let sum = ipv4_header_checksum(header);
    header[10..12].copy_from_slice(&sum.to_be_bytes());
}

/// Sets the IPv4 flags/fragment-offset field (offset in 8-byte units) and fixes the checksum.
pub fn ipv4_fragment(frame: &[u8], more_fragments: bool, offset_units: u16) -> Vec<u8> {
    let mut out = frame.to_vec();
    let field = (u16::from(more_fragments) << 13) | (offset_units & 0x1fff);
    out[ETH_LEN + 6..ETH_LEN + 8].copy_from_slice(&field.to_be_bytes());
    ipv4_fix_checksum(&mut out);
    out
}

/// Adds `words` 4-byte words of IPv4 options (NOPs, then end-of-list) to an IPv4 frame.
pub fn ipv4_with_options(frame: &[u8], words: u8) -> Vec<u8> {
    let mut out = frame[..ETH_LEN + IPV4_LEN].to_vec();
    let mut options = vec![1u8; usize::from(words) * 4];
    if let Some(last) = options.last_mut() {
        *last = 0;
    }
    out.extend_from_slice(&options);
    out.extend_from_slice(&frame[ETH_LEN + IPV4_LEN..]);
    out[ETH_LEN] = 0x40 | (5 + words);
    let total = u16::from_be_bytes([out[ETH_LEN + 2], out[ETH_LEN + 3]]) + u16::from(words) * 4;
    out[ETH_LEN + 2..ETH_LEN + 4].copy_from_slice(&total.to_be_bytes());
    ipv4_fix_checksum(&mut out);
    out
}

/// Sets the IPv4 header's IHL nibble (no other change but the checksum).
pub fn ipv4_set_ihl(frame: &[u8], ihl: u8) -> Vec<u8> {
    let mut out = frame.to_vec();
    out[ETH_LEN] = 0x40 | (ihl & 0x0f);
    out
}

/// Sets the IPv4 protocol field and fixes the checksum.
pub fn ipv4_set_protocol(frame: &[u8], protocol: u8) -> Vec<u8> {
    let mut out = frame.to_vec();
    out[ETH_LEN + 9] = protocol;
    ipv4_fix_checksum(&mut out);
    out
}

/// Cuts an IP frame after `l4_bytes` bytes of its L4 header and makes the IP length fields
/// agree, so only the L4 header is truncated.
pub fn truncate_l4(frame: &[u8], l3_len: usize, l4_bytes: usize) -> Vec<u8> {
    let mut out = frame[..ETH_LEN + l3_len + l4_bytes].to_vec();
    let ethertype = u16::from_be_bytes([out[12], out[13]]);
    if ethertype == ETHERTYPE_IPV4 {
        let total = (l3_len + l4_bytes) as u16;
        out[ETH_LEN + 2..ETH_LEN + 4].copy_from_slice(&total.to_be_bytes());
        ipv4_fix_checksum(&mut out);
    } else {
        let payload = (l3_len - IPV6_LEN + l4_bytes) as u16;
        out[ETH_LEN + 4..ETH_LEN + 6].copy_from_slice(&payload.to_be_bytes());
    }
    out
}

/// Inserts IPv6 extension headers of the given kinds (each 8 bytes, or `(len + 1) * 8` for
/// the second tuple field) right after the IPv6 header, chained in order, the original next
/// header last.
pub fn ipv6_with_extensions(frame: &[u8], extensions: &[(u8, u8)]) -> Vec<u8> {
    let nh_offset = ETH_LEN + 6;
    let original_next = frame[nh_offset];
    let mut chain = Vec::new();
    for (i, &(_, hdr_ext_len)) in extensions.iter().enumerate() {
        let next = extensions.get(i + 1).map_or(original_next, |e| e.0);
        let len = (usize::from(hdr_ext_len) + 1) * 8;
        let mut ext = vec![0u8; len];
        ext[0] = next;
        ext[1] = hdr_ext_len;
        if len > 2 {
            // PadN option filling the rest (valid for hop-by-hop and destination options).
            ext[2] = 1;
            ext[3] = (len - 4) as u8;
        }
        chain.extend_from_slice(&ext);
    }
    let mut out = frame[..ETH_LEN + IPV6_LEN].to_vec();
    if let Some(first) = extensions.first() {
        out[nh_offset] = first.0;
    }
    out.extend_from_slice(&chain);
    out.extend_from_slice(&frame[ETH_LEN + IPV6_LEN..]);
    let payload = u16::from_be_bytes([out[ETH_LEN + 4], out[ETH_LEN + 5]]) + chain.len() as u16;
    out[ETH_LEN + 4..ETH_LEN + 6].copy_from_slice(&payload.to_be_bytes());
    out
}

/// Inserts an IPv6 fragment header right after the IPv6 header: `offset_units` (8-byte
/// units) and the more-fragments flag. Offset 0 without more fragments is an atomic fragment
/// (RFC 6946): a whole packet that carries a fragment header.
pub fn ipv6_with_fragment_header(frame: &[u8], offset_units: u16, more_fragments: bool) -> Vec<u8> {
    let nh_offset = ETH_LEN + 6;
    let mut header = vec![frame[nh_offset], 0];
    let field = (offset_units << 3) | u16::from(more_fragments);
    header.extend_from_slice(&field.to_be_bytes());
    header.extend_from_slice(&0x0bad_cafe_u32.to_be_bytes());
    let mut out = frame[..ETH_LEN + IPV6_LEN].to_vec();
    out[nh_offset] = IPV6_FRAGMENT;
    out.extend_from_slice(&header);
    out.extend_from_slice(&frame[ETH_LEN + IPV6_LEN..]);
    let payload = u16::from_be_bytes([out[ETH_LEN + 4], out[ETH_LEN + 5]]) + 8;
    out[ETH_LEN + 4..ETH_LEN + 6].copy_from_slice(&payload.to_be_bytes());
    out
}

/// Sets the IPv4 TTL (and fixes the checksum) or the IPv6 hop limit of a frame.
pub fn with_ttl(frame: &[u8], ttl: u8) -> Vec<u8> {
    let mut out = frame.to_vec();
    if u16::from_be_bytes([out[12], out[13]]) == ETHERTYPE_IPV4 {
        out[ETH_LEN + 8] = ttl;
        ipv4_fix_checksum(&mut out);
    } else {
        out[ETH_LEN + 7] = ttl;
    }
    out
}

/// An IPv4 frame with its don't-fragment bit set or cleared (and the checksum fixed).
pub fn with_dont_fragment(frame: &[u8], dont_fragment: bool) -> Vec<u8> {
    const DF: u8 = 0x40;
    let mut out = frame.to_vec();
    if dont_fragment {
        out[ETH_LEN + 6] |= DF;
    } else {
        out[ETH_LEN + 6] &= !DF;
    }
    ipv4_fix_checksum(&mut out);
    out
}

/// The frame with its destination and source MACs replaced: what the balancer sends.
pub fn with_macs(frame: &[u8], dst: [u8; 6], src: [u8; 6]) -> Vec<u8> {
    let mut out = frame.to_vec();
    out[..6].copy_from_slice(&dst);
    out[6..12].copy_from_slice(&src);
    out
}
