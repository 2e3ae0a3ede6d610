//! Input the program does not balance: every kind gets a defined outcome, is never changed,
//! and touches no flow, service or backend state.

use canary_common::Counter::{
    self, DropFragment, DropIpv6Extensions, DropMalformed, FlowHit, PassNotIp, PassNotService,
    PassOtherProtocol, Tx,
};
use canary_common::{BackendStats, ServiceStats};
use canary_tests::packet::{
    arp_request, icmp_echo, ipv4_fragment, ipv4_set_ihl, ipv4_set_protocol, ipv6_with_extensions,
    ipv6_with_fragment_header, truncate_l4, v4, v6, vlan_tagged, Addr, Tuple, ETH_LEN, IPV4_LEN,
    IPV6_DEST_OPTS, IPV6_FRAGMENT, IPV6_HOP_BY_HOP, IPV6_LEN, IPV6_ROUTING,
};
use canary_tests::xdp::{XDP_DROP, XDP_PASS, XDP_TX};

use crate::support::{
    check, client4, expected_backend, fixture, tcp4, vip4, vip6, Lab, Output, TCP6_SVC, VIP4,
};

/// A frame the program must leave untouched: description, frame, action, counters.
type Untouched = (&'static str, Vec<u8>, u32, &'static [Counter]);

/// Checks each frame on a fresh lab, then that nothing was balanced.
fn check_untouched(frames: Vec<Untouched>) {
    let lab = Lab::new();
    for (description, input, action, counters) in frames {
        check(
            &lab,
            &fixture(description, input, action, Output::Unchanged, counters),
        );
    }
    for service in &lab.scenario.services {
        let stats = lab.dataplane.service_stats(service.index).unwrap();
        assert_eq!(
            stats,
            ServiceStats::default(),
            "service {} stats moved",
            service.index
        );
    }
    for &backend in lab.scenario.backends.keys() {
        let stats = lab.dataplane.backend_stats(backend).unwrap();
        assert_eq!(
            stats,
            BackendStats::default(),
            "backend {backend} stats moved"
        );
    }
    assert_eq!(
        lab.dataplane.flow_count().unwrap(),
        0,
        "no flow may be created"
    );
}

fn good4() -> Vec<u8> {
    tcp4(1, 40_000, 80).frame()
}

fn good6() -> Vec<u8> {
    Tuple::tcp(v6(0x1), 40_000, vip6(), 443).frame()
}

/// `good6` with extension headers of the given kinds (each 8 bytes) before TCP.
fn ext6(kinds: &[u8]) -> Vec<u8> {
    ipv6_with_extensions(&good6(), &kinds.iter().map(|&k| (k, 0)).collect::<Vec<_>>())
}

#[test]
fn frames_that_are_not_ip_are_passed() {
    let good = good4();
    let mut unknown = good.clone();
    unknown[12..14].copy_from_slice(&[0x88, 0xb5]);
    check_untouched(vec![
        ("ARP request", arp_request(VIP4), XDP_PASS, &[PassNotIp]),
        (
            "ethernet header only, ARP ethertype",
            arp_request(VIP4)[..ETH_LEN].to_vec(),
            XDP_PASS,
            &[PassNotIp],
        ),
        (
            "802.1Q tagged TCP to VIP (passed untouched)",
            vlan_tagged(&good, false),
            XDP_PASS,
            &[PassNotIp],
        ),
        (
            "802.1ad tagged TCP to VIP",
            vlan_tagged(&good, true),
            XDP_PASS,
            &[PassNotIp],
        ),
        ("unknown ethertype", unknown, XDP_PASS, &[PassNotIp]),
    ]);
}

#[test]
fn truncated_or_inconsistent_ip_headers_are_dropped() {
    let good = good4();
    let good6 = good6();
    let mut bad_version4 = good.clone();
    bad_version4[ETH_LEN] = 0x65;
    let mut bad_version6 = good6.clone();
    bad_version6[ETH_LEN] = 0x40 | (bad_version6[ETH_LEN] & 0x0f);
    let mut long_total = good.clone();
    let total = u16::from_be_bytes([long_total[ETH_LEN + 2], long_total[ETH_LEN + 3]]) + 1;
    long_total[ETH_LEN + 2..ETH_LEN + 4].copy_from_slice(&total.to_be_bytes());
    let mut short_total = good.clone();
    short_total[ETH_LEN + 2..ETH_LEN + 4].copy_from_slice(&19u16.to_be_bytes());
    let mut long_payload6 = good6.clone();
    let payload = u16::from_be_bytes([long_payload6[ETH_LEN + 4], long_payload6[ETH_LEN + 5]]) + 1;
    long_payload6[ETH_LEN + 4..ETH_LEN + 6].copy_from_slice(&payload.to_be_bytes());
    check_untouched(vec![
        (
            "ethernet header only, IPv4 ethertype",
            good[..ETH_LEN].to_vec(),
            XDP_DROP,
            &[DropMalformed],
        ),
        (
            "ethernet header only, IPv6 ethertype",
            good6[..ETH_LEN].to_vec(),
            XDP_DROP,
            &[DropMalformed],
        ),
        (
            "IPv4 header truncated at 19 bytes",
            good[..ETH_LEN + IPV4_LEN - 1].to_vec(),
            XDP_DROP,
            &[DropMalformed],
        ),
        (
            "IPv4 version 6 in an IPv4 ethertype",
            bad_version4,
            XDP_DROP,
            &[DropMalformed],
        ),
        (
            "IPv4 ihl 4",
            ipv4_set_ihl(&good, 4),
            XDP_DROP,
            &[DropMalformed],
        ),
        (
            "IPv4 ihl 0",
            ipv4_set_ihl(&good, 0),
            XDP_DROP,
            &[DropMalformed],
        ),
        (
            "IPv4 ihl 15 beyond the packet",
            ipv4_set_ihl(&good[..ETH_LEN + IPV4_LEN + 20], 15),
            XDP_DROP,
            &[DropMalformed],
        ),
        (
            "IPv4 total length beyond the frame",
            long_total,
            XDP_DROP,
            &[DropMalformed],
        ),
        (
            "IPv4 total length below the header",
            short_total,
            XDP_DROP,
            &[DropMalformed],
        ),
        (
            "IPv6 header truncated at 39 bytes",
            good6[..ETH_LEN + IPV6_LEN - 1].to_vec(),
            XDP_DROP,
            &[DropMalformed],
        ),
        (
            "IPv6 version 4 in an IPv6 ethertype",
            bad_version6,
            XDP_DROP,
            &[DropMalformed],
        ),
        (
            "IPv6 payload length beyond the frame",
            long_payload6,
            XDP_DROP,
            &[DropMalformed],
        ),
    ]);
}

#[test]
fn truncated_tcp_and_udp_headers_to_a_service_are_dropped() {
    let good = good4();
    let udp = Tuple::udp(client4(1), 40_000, vip4(), 53).frame();
    let ipv4_end = ETH_LEN + IPV4_LEN;
    let mut tcp_offset_small = good.clone();
    tcp_offset_small[ipv4_end + 12] = 0x40;
    let mut tcp_offset_beyond = good.clone();
    tcp_offset_beyond[ipv4_end + 12] = 0xf0;
    check_untouched(vec![
        (
            "TCP header truncated (19 bytes)",
            truncate_l4(&good, IPV4_LEN, 19),
            XDP_DROP,
            &[DropMalformed],
        ),
        (
            "TCP data offset 4",
            tcp_offset_small,
            XDP_DROP,
            &[DropMalformed],
        ),
        (
            "TCP data offset beyond the packet",
            tcp_offset_beyond,
            XDP_DROP,
            &[DropMalformed],
        ),
        (
            "UDP header truncated (7 bytes)",
            truncate_l4(&udp, IPV4_LEN, 7),
            XDP_DROP,
            &[DropMalformed],
        ),
        (
            "IPv6 TCP header truncated",
            truncate_l4(&good6(), IPV6_LEN, 10),
            XDP_DROP,
            &[DropMalformed],
        ),
    ]);
}

#[test]
fn fragments_to_a_vip_are_dropped() {
    let good = good4();
    check_untouched(vec![
        (
            "IPv4 first fragment (MF) to VIP",
            ipv4_fragment(&good, true, 0),
            XDP_DROP,
            &[DropFragment],
        ),
        (
            "IPv4 non-first fragment to VIP",
            ipv4_fragment(&good, false, 185),
            XDP_DROP,
            &[DropFragment],
        ),
        (
            "IPv4 middle fragment to VIP",
            ipv4_fragment(&good, true, 3),
            XDP_DROP,
            &[DropFragment],
        ),
        (
            "IPv4 fragment to a non-VIP address",
            ipv4_fragment(
                &Tuple::tcp(client4(1), 1, v4(198, 18, 9, 9), 80).frame(),
                true,
                0,
            ),
            XDP_PASS,
            &[PassNotService],
        ),
        (
            "IPv6 fragment header to VIP",
            ext6(&[IPV6_FRAGMENT]),
            XDP_DROP,
            &[DropFragment],
        ),
        (
            "IPv6 fragment header after hop-by-hop",
            ext6(&[IPV6_HOP_BY_HOP, IPV6_FRAGMENT]),
            XDP_DROP,
            &[DropFragment],
        ),
    ]);
}

#[test]
fn ipv6_extension_header_beyond_the_packet() {
    let ipv6_end = ETH_LEN + IPV6_LEN;
    // An extension header whose stated length runs past the packet.
    let mut truncated = ext6(&[IPV6_DEST_OPTS]);
    truncated.truncate(ipv6_end + 8);
    truncated[ipv6_end + 1] = 4;
    let len = (truncated.len() - ipv6_end) as u16;
    truncated[ETH_LEN + 4..ETH_LEN + 6].copy_from_slice(&len.to_be_bytes());
    check_untouched(vec![(
        "IPv6 extension header truncated",
        truncated,
        XDP_DROP,
        &[DropMalformed],
    )]);
}

#[test]
fn other_protocols_and_destinations_are_passed() {
    check_untouched(vec![
        (
            "ICMP echo to VIP",
            icmp_echo(client4(1), vip4()),
            XDP_PASS,
            &[PassOtherProtocol],
        ),
        (
            "ICMPv6 echo to VIP",
            icmp_echo(v6(1), vip6()),
            XDP_PASS,
            &[PassOtherProtocol],
        ),
        (
            "GRE (47) to VIP",
            ipv4_set_protocol(&good4(), 47),
            XDP_PASS,
            &[PassOtherProtocol],
        ),
        (
            "ICMP to a non-VIP address",
            icmp_echo(client4(1), v4(198, 18, 9, 9)),
            XDP_PASS,
            &[PassNotService],
        ),
        (
            "TCP to VIP, unconfigured port",
            tcp4(1, 40_000, 81).frame(),
            XDP_PASS,
            &[PassNotService],
        ),
        (
            "UDP to VIP, port of the TCP service",
            Tuple::udp(client4(1), 40_000, vip4(), 80).frame(),
            XDP_PASS,
            &[PassNotService],
        ),
        (
            "TCP to a non-VIP address",
            Tuple::tcp(client4(1), 40_000, v4(198, 18, 9, 9), 80).frame(),
            XDP_PASS,
            &[PassNotService],
        ),
        (
            "IPv6 TCP to a non-VIP address",
            Tuple::tcp(v6(1), 40_000, v6(0x999), 443).frame(),
            XDP_PASS,
            &[PassNotService],
        ),
        (
            "IPv4-mapped VIP bytes as IPv6 destination",
            Tuple::tcp(v6(1), 40_000, Addr::V6(Addr::V4(VIP4).to_map()), 80).frame(),
            XDP_PASS,
            &[PassNotService],
        ),
    ]);
}

/// Frames shorter than Ethernet cannot reach the program through `BPF_PROG_TEST_RUN` (the
/// kernel refuses them, even behind XDP metadata), so the shortest testable frame is the
/// 14-byte one above. This pins that limit down so a kernel that lifts it is noticed.
#[test]
fn frames_shorter_than_ethernet_cannot_be_test_run() {
    let lab = Lab::new();
    let good = good4();
    for len in [0, 1, 13] {
        let err = lab
            .dataplane
            .run(&good[..len])
            .expect_err("a runt frame cannot be test-run");
        assert!(matches!(err, canary_tests::xdp::XdpError::FrameTooShort(n) if n == len));
    }
    let before = lab.counters();
    assert_eq!(before.iter().sum::<u64>(), 0);
}

/// Headers the program cannot trust say nothing about a packet to another host: as long as the
/// destination address can be read and is not a VIP, the frame is passed to the stack like any
/// unrelated traffic (which drops it if it is garbage). Only a frame too short to hold an IP
/// header is dropped without knowing where it goes.
#[test]
fn malformed_ip_to_a_non_vip_destination_is_passed() {
    let other4 = Tuple::tcp(client4(1), 40_000, v4(198, 18, 9, 9), 80).frame();
    let other6 = Tuple::tcp(v6(0x1), 40_000, v6(0x999), 443).frame();
    let mut bad_version4 = other4.clone();
    bad_version4[ETH_LEN] = 0x65;
    let mut long_total = other4.clone();
    long_total[ETH_LEN + 2..ETH_LEN + 4].copy_from_slice(&9_000u16.to_be_bytes());
    let mut short_total = other4.clone();
    short_total[ETH_LEN + 2..ETH_LEN + 4].copy_from_slice(&19u16.to_be_bytes());
    let mut bad_version6 = other6.clone();
    bad_version6[ETH_LEN] = 0x40;
    let mut long_payload6 = other6;
    long_payload6[ETH_LEN + 4..ETH_LEN + 6].copy_from_slice(&9_000u16.to_be_bytes());
    check_untouched(vec![
        (
            "IPv4 ihl 4 to a non-VIP",
            ipv4_set_ihl(&other4, 4),
            XDP_PASS,
            &[PassNotService],
        ),
        (
            "IPv4 ihl 15 beyond the packet to a non-VIP",
            ipv4_set_ihl(&other4[..ETH_LEN + IPV4_LEN + 20], 15),
            XDP_PASS,
            &[PassNotService],
        ),
        (
            "IPv4 version 6 to a non-VIP",
            bad_version4,
            XDP_PASS,
            &[PassNotService],
        ),
        (
            "IPv4 total length beyond the frame to a non-VIP",
            long_total,
            XDP_PASS,
            &[PassNotService],
        ),
        (
            "IPv4 total length below the header to a non-VIP",
            short_total,
            XDP_PASS,
            &[PassNotService],
        ),
        (
            "IPv6 version 4 to a non-VIP",
            bad_version6,
            XDP_PASS,
            &[PassNotService],
        ),
        (
            "IPv6 payload length beyond the frame to a non-VIP",
            long_payload6,
            XDP_PASS,
            &[PassNotService],
        ),
        (
            "IPv4 header truncated: destination unknown",
            other4[..ETH_LEN + 15].to_vec(),
            XDP_DROP,
            &[DropMalformed],
        ),
    ]);
}

/// More extension headers than the program walks (4): a VIP's traffic cannot be balanced and
/// must not reach the balancer's own stack either, so it is dropped and counted. To any other
/// address it is passed.
#[test]
fn too_many_ipv6_extension_headers_to_a_vip_are_dropped() {
    let five = [
        IPV6_HOP_BY_HOP,
        IPV6_DEST_OPTS,
        IPV6_ROUTING,
        IPV6_DEST_OPTS,
        IPV6_DEST_OPTS,
    ];
    let other = Tuple::tcp(v6(0x1), 40_000, v6(0x999), 443).frame();
    check_untouched(vec![
        (
            "IPv6 5 extension headers to a VIP",
            ext6(&five),
            XDP_DROP,
            &[DropIpv6Extensions],
        ),
        (
            "IPv6 4 extension headers then a fragment header to a VIP",
            ext6(&[
                IPV6_HOP_BY_HOP,
                IPV6_DEST_OPTS,
                IPV6_ROUTING,
                IPV6_DEST_OPTS,
                IPV6_FRAGMENT,
            ]),
            XDP_DROP,
            &[DropIpv6Extensions],
        ),
        (
            "IPv6 5 extension headers to a non-VIP",
            ipv6_with_extensions(&other, &five.map(|k| (k, 0))),
            XDP_PASS,
            &[PassNotService],
        ),
    ]);
}

/// Real fragments to a VIP are dropped (their ports cannot be followed), but an atomic
/// fragment (offset 0, no more fragments: RFC 6946) is a whole packet and is balanced.
#[test]
fn ipv6_atomic_fragments_are_balanced_and_real_fragments_dropped() {
    let lab = Lab::new();
    let t = Tuple::tcp(v6(0x1), 40_000, vip6(), 443);
    let backend = expected_backend(&lab, TCP6_SVC, &t);
    let atomic = ipv6_with_fragment_header(&t.frame(), 0, false);
    check(
        &lab,
        &fixture(
            "IPv6 atomic fragment to a service",
            atomic,
            XDP_TX,
            Output::ToBackend(backend),
            &[Tx],
        ),
    );
    let after_options = ipv6_with_extensions(
        &ipv6_with_fragment_header(&t.ack_frame(), 0, false),
        &[(IPV6_HOP_BY_HOP, 0)],
    );
    check(
        &lab,
        &fixture(
            "IPv6 atomic fragment after hop-by-hop, same flow",
            after_options,
            XDP_TX,
            Output::ToBackend(backend),
            &[Tx, FlowHit],
        ),
    );
    for (what, offset, more) in [
        ("IPv6 first fragment", 0, true),
        ("IPv6 middle fragment", 185, true),
        ("IPv6 last fragment", 370, false),
    ] {
        check(
            &lab,
            &fixture(
                what,
                ipv6_with_fragment_header(&t.frame(), offset, more),
                XDP_DROP,
                Output::Unchanged,
                &[DropFragment],
            ),
        );
    }
}
