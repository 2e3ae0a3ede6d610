//! Bounds-checked packet access and header parsing (Ethernet, IPv4, IPv6 with extension headers,
//! TCP, UDP, and the packet quoted by an ICMP error).
//!
//! Headers are read as byte arrays at fixed offsets rather than through `network-types`: its
//! API changes between releases, and byte offsets from the RFCs are easy to check against a
//! capture. Every access goes through [`Packet::bytes`], which compares against `data_end`
//! right before the pointer is formed, the shape the verifier can follow.

use core::ptr::{addr_of, read_volatile};

use aya_ebpf::{bindings::xdp_md, programs::XdpContext};
use canary_common::{Counter, FlowKey, FAMILY_IPV4, FAMILY_IPV6, PROTO_TCP, PROTO_UDP};

// Header lengths and numbers from the RFCs, shared by every module that reads or writes headers.
pub const ETH_HEADER_LEN: usize = 14;
pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_IPV6: u16 = 0x86DD;

/// An IPv4 header without options.
pub const IPV4_MIN_HEADER_LEN: usize = 20;
/// More-fragments flag and fragment offset of the IPv4 flags/offset field.
const IPV4_FRAGMENT_MASK: u16 = 0x3fff;

pub const IPV6_HEADER_LEN: usize = 40;
const IPV6_HOP_BY_HOP: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_DEST_OPTIONS: u8 = 60;
/// Length of a Fragment header, and the least of any extension header.
const IPV6_FRAGMENT_HEADER_LEN: usize = 8;
/// Fragment offset and more-fragments flag of a Fragment header's second 16 bits.
const IPV6_FRAGMENT_OFFSET_AND_MORE: u16 = 0xfff9;
/// Extension headers walked before giving up (keeps the program small for the verifier).
const MAX_IPV6_EXTENSIONS: usize = 4;

const TCP_MIN_HEADER_LEN: usize = 20;
/// Offset of the flags byte (CWR ECE URG ACK PSH RST SYN FIN) in the TCP header.
const TCP_FLAGS_OFFSET: usize = 13;
const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;
const UDP_HEADER_LEN: usize = 8;

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_ICMPV6: u8 = 58;
/// IPv4 in IPv4 (the protocol of an outer IPv4 header).
pub const PROTO_IPIP: u8 = 4;
/// IPv6 in IPv6 (the next header of an outer IPv6 header).
pub const PROTO_IPV6: u8 = 41;
pub const ICMP_HEADER_LEN: usize = 8;
/// ICMP destination unreachable (all codes: "fragmentation needed" is code 4).
pub const ICMP_DEST_UNREACHABLE: u8 = 3;
pub const ICMP_FRAG_NEEDED: u8 = 4;
const ICMPV6_DEST_UNREACHABLE: u8 = 1;
pub const ICMPV6_PACKET_TOO_BIG: u8 = 2;
/// Fragment offset of the IPv4 flags/offset field (a quoted packet with an offset has no ports).
const IPV4_OFFSET_MASK: u16 = 0x1fff;
/// Bytes of the quoted packet's transport header read: its two ports.
const QUOTED_PORTS_LEN: usize = 4;

/// The frame of one XDP invocation.
pub struct Packet {
    ctx: *const xdp_md,
    start: usize,
    end: usize,
}

impl Packet {
    #[inline(always)]
    pub fn new(ctx: &XdpContext) -> Self {
        Packet {
            ctx: ctx.ctx,
            start: ctx.data(),
            end: ctx.data_end(),
        }
    }

    /// `data_end`, re-read for each access check. LLVM would otherwise drop a pointer check
    /// that the length checks on header fields already imply (for example "TCP header inside
    /// the IP total length, which is inside the frame"), and the verifier cannot follow that
    /// arithmetic: it only trusts a direct comparison of the packet pointer with `data_end`.
    #[inline(always)]
    fn fresh_end(&self) -> usize {
        // SAFETY: `ctx` is the program's context, valid for the whole invocation.
        unsafe { read_volatile(addr_of!((*self.ctx).data_end)) as usize }
    }

    /// The program's context (for helpers that take it).
    #[inline(always)]
    pub fn ctx(&self) -> *mut xdp_md {
        self.ctx.cast_mut()
    }

    /// Moves the frame's start by `delta` bytes (negative: grows it at the front) and returns
    /// the frame as it is now; `None` if the kernel refused. Every pointer into the frame taken
    /// before is invalid afterwards.
    #[inline(always)]
    pub fn adjust_head(&self, delta: i32) -> Option<Packet> {
        // SAFETY: `ctx` is the program's context; the helper checks the bounds itself.
        if unsafe { aya_ebpf::helpers::bpf_xdp_adjust_head(self.ctx(), delta) } != 0 {
            return None;
        }
        // SAFETY: as in `fresh_end`; data and data_end were just set by the helper.
        let (start, end) = unsafe {
            (
                read_volatile(addr_of!((*self.ctx).data)) as usize,
                read_volatile(addr_of!((*self.ctx).data_end)) as usize,
            )
        };
        Some(Packet {
            ctx: self.ctx,
            start,
            end,
        })
    }

    /// Length of the whole frame in bytes.
    #[inline(always)]
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    /// `N` bytes at `offset`, or `None` if the frame is shorter.
    #[inline(always)]
    pub fn bytes<const N: usize>(&self, offset: usize) -> Option<&[u8; N]> {
        let at = self.start + offset;
        if at + N > self.fresh_end() {
            return None;
        }
        // SAFETY: `at..at + N` lies inside the frame (checked above); `[u8; N]` has alignment 1.
        Some(unsafe { &*(at as *const [u8; N]) })
    }

    /// Writable `N` bytes at `offset`, or `None` if the frame is shorter.
    #[inline(always)]
    pub fn bytes_mut<const N: usize>(&self, offset: usize) -> Option<*mut [u8; N]> {
        let at = self.start + offset;
        if at + N > self.fresh_end() {
            return None;
        }
        Some(at as *mut [u8; N])
    }
}

/// What a complete TCP or UDP header says about the flow, as far as the balancer cares.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Segment {
    /// A TCP SYN without ACK, RST or FIN: the first packet of a connection.
    Syn,
    /// Any other TCP segment: the middle or end of a connection.
    TcpOther,
    /// A UDP datagram (UDP has no connection start).
    Udp,
    /// An ICMP error about a flow (the key is the flow's, read from the quoted packet): it
    /// follows the flow and never opens one.
    IcmpError,
}

/// What a packet with a readable IP header carries: `Ok` when it has a complete TCP or UDP
/// header (ports in the flow key). Otherwise the outcome it gets if it is addressed to a VIP:
/// `DropFragment`, `DropMalformed`, `DropIpv6Extensions` or `PassOtherProtocol` (anything
/// else is passed as `PassNotService`).
pub type Transport = Result<Segment, Counter>;

/// Parses Ethernet and IP into `key` (addresses and family; ports and protocol when the
/// transport is `Ok`), and the TCP/UDP header when there is one to read. `Err` is an outcome
/// that does not depend on the destination (`PassNotIp`, or `DropMalformed` for a frame too
/// short to hold an IP header: its destination is unknown).
///
/// `key` is written in place (not returned) so that LLVM keeps it in one stack slot instead
/// of splitting it into 40 byte-sized values merged from the IPv4 and IPv6 paths and spilled.
#[inline(always)]
pub fn parse(pkt: &Packet, key: &mut FlowKey) -> Result<Transport, Counter> {
    let eth = pkt
        .bytes::<ETH_HEADER_LEN>(0)
        .ok_or(Counter::DropMalformed)?;
    // VLAN-tagged frames (0x8100, 0x88a8) are passed untouched like any other non-IP ethertype.
    match u16::from_be_bytes([eth[12], eth[13]]) {
        ETHERTYPE_IPV4 => parse_ipv4(pkt, key),
        ETHERTYPE_IPV6 => parse_ipv6(pkt, key),
        _ => Err(Counter::PassNotIp),
    }
}

#[inline(always)]
fn parse_ipv4(pkt: &Packet, key: &mut FlowKey) -> Result<Transport, Counter> {
    let ip = pkt
        .bytes::<IPV4_MIN_HEADER_LEN>(ETH_HEADER_LEN)
        .ok_or(Counter::DropMalformed)?;
    // The addresses first: whether a bad header matters depends on where it goes (a VIP's
    // traffic is dropped, anyone else's passed).
    key.family = FAMILY_IPV4;
    key.src[..4].copy_from_slice(&ip[12..16]);
    key.dst[..4].copy_from_slice(&ip[16..20]);

    let header_len = usize::from(ip[0] & 0x0f) * 4;
    let available = pkt.len() - ETH_HEADER_LEN;
    let total_len = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    if ip[0] >> 4 != 4
        || header_len < IPV4_MIN_HEADER_LEN
        || header_len > available
        || total_len < header_len
        || total_len > available
    {
        return Ok(Err(Counter::DropMalformed));
    }

    // Ports are never read from a fragment: a non-first fragment has none, and a first
    // fragment alone would pin a flow whose other fragments cannot follow it.
    let transport = if u16::from_be_bytes([ip[6], ip[7]]) & IPV4_FRAGMENT_MASK != 0 {
        Err(Counter::DropFragment)
    } else {
        // Options (ihl > 5) are skipped, never modified.
        parse_transport(
            pkt,
            key,
            ip[9],
            ETH_HEADER_LEN + header_len,
            ETH_HEADER_LEN + total_len,
        )
    };
    Ok(transport)
}

#[inline(always)]
fn parse_ipv6(pkt: &Packet, key: &mut FlowKey) -> Result<Transport, Counter> {
    let ip = pkt
        .bytes::<IPV6_HEADER_LEN>(ETH_HEADER_LEN)
        .ok_or(Counter::DropMalformed)?;
    key.family = FAMILY_IPV6;
    key.src.copy_from_slice(&ip[8..24]);
    key.dst.copy_from_slice(&ip[24..40]);

    let payload_len = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
    if ip[0] >> 4 != 6 || payload_len + IPV6_HEADER_LEN > pkt.len() - ETH_HEADER_LEN {
        return Ok(Err(Counter::DropMalformed));
    }

    let end = ETH_HEADER_LEN + IPV6_HEADER_LEN + payload_len;
    let transport = match skip_ipv6_extensions(pkt, ip[6], ETH_HEADER_LEN + IPV6_HEADER_LEN, end) {
        Ok((protocol, offset)) => parse_transport(pkt, key, protocol, offset, end),
        Err(outcome) => Err(outcome),
    };
    Ok(transport)
}

/// Walks Hop-by-Hop, Routing, Destination Options and atomic Fragment headers from `offset`
/// (the first one's type is `next`), up to `MAX_IPV6_EXTENSIONS`. Returns the upper-layer
/// protocol and its offset.
#[inline(always)]
fn skip_ipv6_extensions(
    pkt: &Packet,
    mut next: u8,
    mut offset: usize,
    end: usize,
) -> Result<(u8, usize), Counter> {
    for _ in 0..MAX_IPV6_EXTENSIONS {
        match next {
            IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DEST_OPTIONS | IPV6_FRAGMENT => {}
            _ => return Ok((next, offset)),
        }
        if offset + IPV6_FRAGMENT_HEADER_LEN > end {
            return Err(Counter::DropMalformed);
        }
        // Every extension header is at least 8 bytes.
        let ext = pkt
            .bytes::<IPV6_FRAGMENT_HEADER_LEN>(offset)
            .ok_or(Counter::DropMalformed)?;
        let len = if next == IPV6_FRAGMENT {
            // An atomic fragment (offset 0, no more fragments: RFC 6946) is a whole packet.
            if u16::from_be_bytes([ext[2], ext[3]]) & IPV6_FRAGMENT_OFFSET_AND_MORE != 0 {
                return Err(Counter::DropFragment);
            }
            IPV6_FRAGMENT_HEADER_LEN
        } else {
            (usize::from(ext[1]) + 1) * 8
        };
        if offset + len > end {
            return Err(Counter::DropMalformed);
        }
        next = ext[0];
        offset += len;
    }
    match next {
        IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DEST_OPTIONS | IPV6_FRAGMENT => {
            Err(Counter::DropIpv6Extensions)
        }
        _ => Ok((next, offset)),
    }
}

/// Whether two byte arrays are equal, byte by byte (a slice comparison would need `bcmp`,
/// which BPF does not have).
#[inline(always)]
fn same<const N: usize>(a: &[u8; N], b: &[u8; N]) -> bool {
    let mut differs = 0;
    for i in 0..N {
        differs |= a[i] ^ b[i];
    }
    differs == 0
}

/// Sets the flow of an ICMP error: the quoted packet went from the VIP (already `key.dst`) to
/// the client (`client`), so the flow is its reverse. `ports` are the quoted source and
/// destination ports.
#[inline(always)]
fn reversed_flow(key: &mut FlowKey, protocol: u8, ports: &[u8; QUOTED_PORTS_LEN]) -> Transport {
    if protocol != PROTO_TCP && protocol != PROTO_UDP {
        return Err(Counter::PassOtherProtocol);
    }
    key.protocol = protocol;
    key.src_port = u16::from_ne_bytes([ports[2], ports[3]]);
    key.dst_port = u16::from_ne_bytes([ports[0], ports[1]]);
    Ok(Segment::IcmpError)
}

/// An ICMP destination-unreachable error to a VIP about a packet the VIP sent (a backend's
/// direct reply): its flow, from the quoted IPv4 header and ports. Anything else is
/// `PassOtherProtocol`: the balancer's own stack may want it.
#[inline(always)]
fn parse_icmp_error(pkt: &Packet, key: &mut FlowKey, offset: usize, end: usize) -> Transport {
    let inner_at = offset + ICMP_HEADER_LEN;
    if inner_at + IPV4_MIN_HEADER_LEN + QUOTED_PORTS_LEN > end {
        return Err(Counter::PassOtherProtocol);
    }
    let icmp = pkt
        .bytes::<ICMP_HEADER_LEN>(offset)
        .ok_or(Counter::PassOtherProtocol)?;
    if icmp[0] != ICMP_DEST_UNREACHABLE {
        return Err(Counter::PassOtherProtocol);
    }
    let inner = pkt
        .bytes::<IPV4_MIN_HEADER_LEN>(inner_at)
        .ok_or(Counter::PassOtherProtocol)?;
    let inner_len = usize::from(inner[0] & 0x0f) * 4;
    let from_vip = same(
        &[inner[12], inner[13], inner[14], inner[15]],
        &[key.dst[0], key.dst[1], key.dst[2], key.dst[3]],
    );
    if inner[0] >> 4 != 4
        || inner_len < IPV4_MIN_HEADER_LEN
        || u16::from_be_bytes([inner[6], inner[7]]) & IPV4_OFFSET_MASK != 0
        || !from_vip
        || inner_at + inner_len + QUOTED_PORTS_LEN > end
    {
        return Err(Counter::PassOtherProtocol);
    }
    let protocol = inner[9];
    key.src[..4].copy_from_slice(&inner[16..20]);
    let ports = pkt
        .bytes::<QUOTED_PORTS_LEN>(inner_at + inner_len)
        .ok_or(Counter::PassOtherProtocol)?;
    reversed_flow(key, protocol, ports)
}

/// As [`parse_icmp_error`] for `ICMPv6` destination unreachable and packet too big (the quoted
/// IPv6 header must be followed by TCP or UDP directly).
#[inline(always)]
fn parse_icmpv6_error(pkt: &Packet, key: &mut FlowKey, offset: usize, end: usize) -> Transport {
    let inner_at = offset + ICMP_HEADER_LEN;
    if inner_at + IPV6_HEADER_LEN + QUOTED_PORTS_LEN > end {
        return Err(Counter::PassOtherProtocol);
    }
    let icmp = pkt
        .bytes::<ICMP_HEADER_LEN>(offset)
        .ok_or(Counter::PassOtherProtocol)?;
    if icmp[0] != ICMPV6_DEST_UNREACHABLE && icmp[0] != ICMPV6_PACKET_TOO_BIG {
        return Err(Counter::PassOtherProtocol);
    }
    let inner = pkt
        .bytes::<IPV6_HEADER_LEN>(inner_at)
        .ok_or(Counter::PassOtherProtocol)?;
    let mut source = [0u8; 16];
    source.copy_from_slice(&inner[8..24]);
    if inner[0] >> 4 != 6 || !same(&source, &key.dst) {
        return Err(Counter::PassOtherProtocol);
    }
    let protocol = inner[6];
    key.src.copy_from_slice(&inner[24..40]);
    let ports = pkt
        .bytes::<QUOTED_PORTS_LEN>(inner_at + IPV6_HEADER_LEN)
        .ok_or(Counter::PassOtherProtocol)?;
    reversed_flow(key, protocol, ports)
}

/// Reads the ports (and for TCP the flags) of a TCP or UDP header at `offset`; the header must
/// end by `end` (the end of the IP packet, which is inside the frame).
#[inline(always)]
fn parse_transport(
    pkt: &Packet,
    key: &mut FlowKey,
    protocol: u8,
    offset: usize,
    end: usize,
) -> Transport {
    let (ports, segment) = match protocol {
        PROTO_TCP => {
            if offset + TCP_MIN_HEADER_LEN > end {
                return Err(Counter::DropMalformed);
            }
            let tcp = pkt
                .bytes::<TCP_MIN_HEADER_LEN>(offset)
                .ok_or(Counter::DropMalformed)?;
            let header_len = usize::from(tcp[12] >> 4) * 4;
            if header_len < TCP_MIN_HEADER_LEN || offset + header_len > end {
                return Err(Counter::DropMalformed);
            }
            // The flags byte lies inside the 20 bytes already checked: no new packet access.
            let flags = tcp[TCP_FLAGS_OFFSET];
            // Only a pure SYN opens a connection: with ACK it answers one, with RST or FIN it
            // is no connection start (a scan, or a spoof meant to re-pin a flow).
            let segment = if flags & (TCP_SYN | TCP_ACK | TCP_RST | TCP_FIN) == TCP_SYN {
                Segment::Syn
            } else {
                Segment::TcpOther
            };
            ([tcp[0], tcp[1], tcp[2], tcp[3]], segment)
        }
        PROTO_UDP => {
            if offset + UDP_HEADER_LEN > end {
                return Err(Counter::DropMalformed);
            }
            let udp = pkt
                .bytes::<UDP_HEADER_LEN>(offset)
                .ok_or(Counter::DropMalformed)?;
            ([udp[0], udp[1], udp[2], udp[3]], Segment::Udp)
        }
        PROTO_ICMP if key.family == FAMILY_IPV4 => return parse_icmp_error(pkt, key, offset, end),
        PROTO_ICMPV6 if key.family == FAMILY_IPV6 => {
            return parse_icmpv6_error(pkt, key, offset, end)
        }
        _ => return Err(Counter::PassOtherProtocol),
    };
    key.protocol = protocol;
    // Kept in network byte order: the in-memory bytes equal the wire bytes.
    key.src_port = u16::from_ne_bytes([ports[0], ports[1]]);
    key.dst_port = u16::from_ne_bytes([ports[2], ports[3]]);
    Ok(segment)
}
