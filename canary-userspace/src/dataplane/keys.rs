//! Map keys as the kernel builds them from packets: addresses and ports in network byte order.

use std::net::{IpAddr, SocketAddr};

use canary_common::{FlowKey, ServiceKey, VipKey, FAMILY_IPV4, FAMILY_IPV6};

use crate::domain::Protocol;

fn addr_bytes(ip: IpAddr) -> ([u8; 16], u8) {
    let mut addr = [0u8; 16];
    match ip {
        IpAddr::V4(v4) => {
            addr[..4].copy_from_slice(&v4.octets());
            (addr, FAMILY_IPV4)
        }
        IpAddr::V6(v6) => (v6.octets(), FAMILY_IPV6),
    }
}

/// `SERVICES` key of a VIP and protocol (address and port in network byte order).
pub fn service_key(vip: SocketAddr, protocol: Protocol) -> ServiceKey {
    let (addr, family) = addr_bytes(vip.ip());
    ServiceKey {
        addr,
        port: vip.port().to_be(),
        protocol: protocol.number(),
        family,
    }
}

/// `VIPS` key of an address.
pub fn vip_key(ip: IpAddr) -> VipKey {
    let (addr, family) = addr_bytes(ip);
    VipKey {
        addr,
        family,
        _pad: [0; 3],
    }
}

/// The flow key the kernel builds for a packet from `src` to `dst`. `None` when the families
/// differ (no such packet).
pub fn flow_key(src: SocketAddr, dst: SocketAddr, protocol: Protocol) -> Option<FlowKey> {
    let (src_addr, family) = addr_bytes(src.ip());
    let (dst_addr, dst_family) = addr_bytes(dst.ip());
    (family == dst_family).then_some(FlowKey {
        src: src_addr,
        dst: dst_addr,
        src_port: src.port().to_be(),
        dst_port: dst.port().to_be(),
        protocol: protocol.number(),
        family,
        _pad: [0; 2],
    })
}
