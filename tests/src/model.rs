//! The data-plane contract's parsing steps (1-6) as a plain function: what outcome a frame
//! must get, independently of the kernel program, and whether a TCP segment opens a connection
//! (step 7's SYN rule). The fuzz test compares the program with it on every frame.

use canary_common::{Counter, FlowKey, VipKey, PROTO_TCP, PROTO_UDP};

use crate::packet::{
    opens_connection, ETHERTYPE_IPV4, ETHERTYPE_IPV6, ETH_LEN, IPV6_DEST_OPTS, IPV6_FRAGMENT,
    IPV6_HOP_BY_HOP, IPV6_LEN, IPV6_ROUTING, TCP_FLAGS_OFFSET,
};
use crate::scenario::Scenario;
use crate::xdp::{XDP_DROP, XDP_PASS, XDP_TX};

/// IPv6 extension headers the program walks before giving up (`DropIpv6Extensions`).
pub const MAX_IPV6_EXTENSIONS: usize = 4;

/// Where the contract's parsing steps leave a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A terminal outcome reached before the flow steps.
    Outcome(Counter),
    /// A packet to a configured service (index), with its flow key and what it is to the flow.
    Service {
        service: u32,
        key: FlowKey,
        segment: Segment,
    },
}

/// What a packet to a service is to its flow (step 7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Segment {
    /// A TCP SYN without ACK: opens a connection.
    Syn,
    /// Any other TCP segment: only follows an entry, never takes one.
    TcpOther,
    /// A UDP datagram: follows an entry, or takes one.
    Udp,
    /// An ICMP error about the flow: follows its entry, or the new-flow choice; takes none.
    IcmpError,
}

/// The XDP action that goes with a terminal outcome.
pub fn action_of(outcome: Counter) -> u32 {
    match outcome {
        Counter::Tx | Counter::TxFloodGuard => XDP_TX,
        Counter::PassNotIp
        | Counter::PassNotService
        | Counter::PassOtherProtocol
        | Counter::PassNotOurMac
        | Counter::PassMulticastMac => XDP_PASS,
        _ => XDP_DROP,
    }
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Steps 1-6 of the contract for one frame.
pub fn classify(frame: &[u8], scenario: &Scenario) -> Verdict {
    use Verdict::Outcome;
    if frame.len() < ETH_LEN {
        return Outcome(Counter::DropMalformed);
    }
    let ip = &frame[ETH_LEN..];
    let (family, src, dst, protocol, l4_start, ip_end) = match be16(frame, 12) {
        ETHERTYPE_IPV4 => {
            if ip.len() < 20 {
                return Outcome(Counter::DropMalformed);
            }
            let mut src = [0u8; 16];
            let mut dst = [0u8; 16];
            src[..4].copy_from_slice(&ip[12..16]);
            dst[..4].copy_from_slice(&ip[16..20]);
            // A readable destination that is not a VIP: passed, whatever else is wrong.
            if !scenario.is_vip(&vip(dst, 4)) {
                return Outcome(Counter::PassNotService);
            }
            let ihl = usize::from(ip[0] & 0x0f) * 4;
            let total = usize::from(be16(ip, 2));
            if ip[0] >> 4 != 4 || ihl < 20 || ihl > ip.len() || total < ihl || total > ip.len() {
                return Outcome(Counter::DropMalformed);
            }
            // L4 headers must lie inside the IP packet, not merely inside the frame.
            let ip = &ip[..total];
            let fragment = be16(ip, 6);
            if fragment & 0x2000 != 0 || fragment & 0x1fff != 0 {
                return Outcome(Counter::DropFragment);
            }
            (4u8, src, dst, ip[9], ihl, total)
        }
        ETHERTYPE_IPV6 => {
            if ip.len() < IPV6_LEN {
                return Outcome(Counter::DropMalformed);
            }
            let src: [u8; 16] = ip[8..24].try_into().expect("16 bytes");
            let dst: [u8; 16] = ip[24..40].try_into().expect("16 bytes");
            if !scenario.is_vip(&vip(dst, 6)) {
                return Outcome(Counter::PassNotService);
            }
            if ip[0] >> 4 != 6 || usize::from(be16(ip, 4)) + IPV6_LEN > ip.len() {
                return Outcome(Counter::DropMalformed);
            }
            let ip = &ip[..IPV6_LEN + usize::from(be16(ip, 4))];
            let mut next = ip[6];
            let mut at = IPV6_LEN;
            let mut walked = 0;
            while let IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DEST_OPTS | IPV6_FRAGMENT = next {
                if walked == MAX_IPV6_EXTENSIONS {
                    return Outcome(Counter::DropIpv6Extensions);
                }
                if at + 2 > ip.len() {
                    return Outcome(Counter::DropMalformed);
                }
                let len = if next == IPV6_FRAGMENT {
                    if at + 8 > ip.len() {
                        return Outcome(Counter::DropMalformed);
                    }
                    // Only an atomic fragment (offset 0, M clear) is a whole packet.
                    if be16(ip, at + 2) & 0xfff9 != 0 {
                        return Outcome(Counter::DropFragment);
                    }
                    8
                } else {
                    (usize::from(ip[at + 1]) + 1) * 8
                };
                if at + len > ip.len() {
                    return Outcome(Counter::DropMalformed);
                }
                next = ip[at];
                at += len;
                walked += 1;
            }
            (6u8, src, dst, next, at, ip.len())
        }
        _ => return Outcome(Counter::PassNotIp),
    };
    let l4 = &ip[l4_start..ip_end];
    let (src, src_port, dst_port, protocol, segment) = match protocol {
        PROTO_TCP => {
            if l4.len() < 20 {
                return Outcome(Counter::DropMalformed);
            }
            let offset = usize::from(l4[12] >> 4) * 4;
            if offset < 20 || offset > l4.len() {
                return Outcome(Counter::DropMalformed);
            }
            let segment = if opens_connection(l4[TCP_FLAGS_OFFSET]) {
                Segment::Syn
            } else {
                Segment::TcpOther
            };
            (src, be16(l4, 0), be16(l4, 2), protocol, segment)
        }
        PROTO_UDP => {
            if l4.len() < 8 {
                return Outcome(Counter::DropMalformed);
            }
            (src, be16(l4, 0), be16(l4, 2), protocol, Segment::Udp)
        }
        PROTO_ICMP | PROTO_ICMPV6 => match icmp_error_flow(l4, family, protocol, &dst) {
            Some((client, client_port, service_port, inner_protocol)) => (
                client,
                client_port,
                service_port,
                inner_protocol,
                Segment::IcmpError,
            ),
            None => return Outcome(Counter::PassOtherProtocol),
        },
        _ => return Outcome(Counter::PassOtherProtocol),
    };
    let service_key = canary_common::ServiceKey {
        addr: dst,
        port: dst_port.to_be(),
        protocol,
        family,
    };
    let Some(service) = scenario.service_by_key(&service_key) else {
        return Outcome(Counter::PassNotService);
    };
    // Only frames addressed to the balancer are balanced (any unicast one while no MAC is set).
    let dst_mac = &frame[..6];
    if dst_mac[0] & 1 != 0 {
        return Outcome(Counter::PassMulticastMac);
    }
    let lb_mac = scenario.config.lb_mac;
    if lb_mac != [0; 6] && dst_mac != lb_mac {
        return Outcome(Counter::PassNotOurMac);
    }
    Verdict::Service {
        service: service.index,
        key: FlowKey {
            src,
            dst,
            src_port: src_port.to_be(),
            dst_port: dst_port.to_be(),
            protocol,
            family,
            _pad: [0; 2],
        },
        segment,
    }
}

const PROTO_ICMP: u8 = 1;
const PROTO_ICMPV6: u8 = 58;

/// The flow an ICMP error to `vip` is about: an IPv4 destination unreachable, or an `ICMPv6`
/// destination unreachable or packet too big, quoting a TCP/UDP packet the VIP sent (whole
/// IP header and both ports quoted). Returns the client, its port, the service port and the
/// protocol.
fn icmp_error_flow(
    icmp: &[u8],
    family: u8,
    protocol: u8,
    vip: &[u8; 16],
) -> Option<([u8; 16], u16, u16, u8)> {
    let inner = icmp.get(8..)?;
    let mut client = [0u8; 16];
    let (header_len, inner_protocol) = match (family, protocol) {
        (4, PROTO_ICMP) => {
            if inner.len() < 24 || icmp[0] != 3 || inner[0] >> 4 != 4 {
                return None;
            }
            let header_len = usize::from(inner[0] & 0x0f) * 4;
            if header_len < 20 || be16(inner, 6) & 0x1fff != 0 || inner[12..16] != vip[..4] {
                return None;
            }
            client[..4].copy_from_slice(&inner[16..20]);
            (header_len, inner[9])
        }
        (6, PROTO_ICMPV6) => {
            if inner.len() < IPV6_LEN + 4 || !matches!(icmp[0], 1 | 2) || inner[0] >> 4 != 6 {
                return None;
            }
            if inner[8..24] != vip[..] {
                return None;
            }
            client.copy_from_slice(&inner[24..40]);
            (IPV6_LEN, inner[6])
        }
        _ => return None,
    };
    let ports = inner.get(header_len..header_len + 4)?;
    matches!(inner_protocol, PROTO_TCP | PROTO_UDP)
        .then(|| (client, be16(ports, 2), be16(ports, 0), inner_protocol))
}

fn vip(addr: [u8; 16], family: u8) -> VipKey {
    VipKey {
        addr,
        family,
        _pad: [0; 3],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::{
        ipv4_fragment, ipv4_set_ihl, v4, Tuple, TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN,
    };
    use crate::scenario::ServiceSpec;

    fn scenario() -> Scenario {
        let mut s = Scenario::new();
        s.add_service(ServiceSpec::new(v4(198, 18, 0, 100), 80, PROTO_TCP, 0).groups(&[1], &[]));
        s
    }

    #[test]
    fn classifies_by_the_contract_steps() {
        let s = scenario();
        let t = Tuple::tcp(v4(198, 18, 1, 1), 40_000, v4(198, 18, 0, 100), 80);
        let frame = t.frame();
        assert_eq!(
            classify(&frame, &s),
            Verdict::Service {
                service: 0,
                key: t.flow_key(),
                segment: Segment::Syn,
            }
        );
        assert_eq!(
            classify(&t.ack_frame(), &s),
            Verdict::Service {
                service: 0,
                key: t.flow_key(),
                segment: Segment::TcpOther,
            }
        );
        for (flags, opens) in [
            (TCP_SYN, true),
            (TCP_SYN | TCP_ACK, false),
            (TCP_SYN | TCP_FIN, false),
            (TCP_SYN | TCP_RST, false),
            (TCP_SYN | TCP_PSH, true),
            (TCP_RST, false),
            (TCP_FIN | TCP_ACK, false),
            (TCP_PSH | TCP_ACK, false),
        ] {
            let frame = t.segment(flags, b"x");
            assert_eq!(
                frame[ETH_LEN + 20 + TCP_FLAGS_OFFSET],
                flags,
                "the builder sets exactly flags {flags:#04x}"
            );
            assert!(
                matches!(classify(&frame, &s), Verdict::Service { segment, .. } if (segment == Segment::Syn) == opens),
                "flags {flags:#04x}"
            );
        }
        let outcome = |f: &[u8]| match classify(f, &s) {
            Verdict::Outcome(c) => c,
            Verdict::Service { .. } => Counter::Tx,
        };
        assert_eq!(outcome(&frame[..13]), Counter::DropMalformed);
        assert_eq!(outcome(&ipv4_set_ihl(&frame, 4)), Counter::DropMalformed);
        assert_eq!(
            outcome(&ipv4_fragment(&frame, true, 0)),
            Counter::DropFragment
        );
        let other = Tuple::tcp(v4(198, 18, 1, 1), 40_000, v4(198, 18, 0, 100), 81);
        assert_eq!(outcome(&other.frame()), Counter::PassNotService);
        // A TCP header that ends past the IP total length (trailing frame padding does not
        // count as IP payload).
        let mut short = frame.clone();
        short[ETH_LEN + 2..ETH_LEN + 4].copy_from_slice(&30u16.to_be_bytes());
        assert_eq!(outcome(&short), Counter::DropMalformed);
        assert_eq!(action_of(Counter::Tx), XDP_TX);
    }
}
