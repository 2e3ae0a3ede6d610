//! The backend's side of `ipip` forwarding, for hosts whose kernel has no `ipip`/`ip6tnl`
//! module (the lab's): strips an outer IPv4 header carrying IPv4 (protocol 4) or an outer IPv6
//! header carrying IPv6 (next header 41) and hands the inner packet to the stack, as a tunnel
//! device would. Anything else passes untouched.

use crate::packet::{
    Packet, ETHERTYPE_IPV4, ETHERTYPE_IPV6, ETH_HEADER_LEN, IPV4_MIN_HEADER_LEN as IPV4_HEADER_LEN,
    IPV6_HEADER_LEN, PROTO_IPIP, PROTO_IPV6,
};

/// Decapsulates the frame in place if it is IP-in-IP of one family; `None` when it is not
/// (or too short to be).
#[inline(always)]
pub fn decapsulate(pkt: &Packet) -> Option<()> {
    let eth = pkt.bytes::<ETH_HEADER_LEN>(0)?;
    let mut macs = [0u8; 12];
    macs.copy_from_slice(&eth[..12]);
    let ethertype = u16::from_be_bytes([eth[12], eth[13]]);
    let outer_len = if ethertype == ETHERTYPE_IPV4 {
        let ip = pkt.bytes::<IPV4_HEADER_LEN>(ETH_HEADER_LEN)?;
        let inner = pkt.bytes::<1>(ETH_HEADER_LEN + IPV4_HEADER_LEN)?;
        // Only the shape the balancer sends: no options, IPv4 inside.
        if ip[0] != 0x45 || ip[9] != PROTO_IPIP || inner[0] >> 4 != 4 {
            return None;
        }
        IPV4_HEADER_LEN
    } else if ethertype == ETHERTYPE_IPV6 {
        let ip = pkt.bytes::<IPV6_HEADER_LEN>(ETH_HEADER_LEN)?;
        let inner = pkt.bytes::<1>(ETH_HEADER_LEN + IPV6_HEADER_LEN)?;
        if ip[0] >> 4 != 6 || ip[6] != PROTO_IPV6 || inner[0] >> 4 != 6 {
            return None;
        }
        IPV6_HEADER_LEN
    } else {
        return None;
    };
    let pkt = pkt.adjust_head(outer_len as i32)?;
    let head = pkt.bytes_mut::<ETH_HEADER_LEN>(0)?;
    // SAFETY: `head` covers the Ethernet header's place inside the frame.
    let head = unsafe { &mut *head };
    head[..12].copy_from_slice(&macs);
    head[12..].copy_from_slice(&ethertype.to_be_bytes());
    Some(())
}
