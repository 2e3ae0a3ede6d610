//! ICMP errors about a service's flows. With direct server return the backend answers the
//! client itself, so a router that cannot forward a reply (too big for the next hop, or no
//! route) sends its ICMP error to the VIP, that is to the balancer. The error must reach the
//! backend that owns the flow, or the backend never learns the path MTU and large replies
//! black-hole. The program reads the quoted packet (VIP:port -> client), builds the flow's key
//! from it reversed, and forwards the error to the flow's backend (from the flow table, without
//! creating an entry; by the new-flow choice when there is none).

use canary_common::Counter::{IcmpErrorForwarded, PassNotService, PassOtherProtocol, Tx};
use canary_common::{FlowEntry, BUCKETS};
use canary_tests::packet::{
    icmp_error, v4, v6, Addr, Tuple, ICMPV6_DEST_UNREACHABLE, ICMPV6_PACKET_TOO_BIG,
    ICMP_DEST_UNREACHABLE, ICMP_FRAGMENTATION_NEEDED, IPV4_LEN, IPV6_LEN,
};
use canary_tests::xdp::{LoadOptions, XDP_PASS, XDP_TX};

use crate::support::{
    check, client4, expected_backend, fixture, scenario, vip4, vip6, Lab, Output, TCP4_SVC,
    TCP6_SVC, UDP4_SVC,
};

/// A router on the path between the backends and the clients.
fn router4() -> Addr {
    v4(198, 18, 77, 1)
}

fn router6() -> Addr {
    v6(0x7701)
}

/// "Fragmentation needed, next-hop MTU 1400" about `flow`'s reply, quoting the IPv4 header and
/// 8 bytes (the least a router quotes).
fn frag_needed(flow: &Tuple) -> Vec<u8> {
    icmp_error(
        router4(),
        flow.dst,
        ICMP_DEST_UNREACHABLE,
        ICMP_FRAGMENTATION_NEEDED,
        [0, 0, 0x05, 0x78],
        &flow.reply_packet(IPV4_LEN + 8),
    )
}

/// "Packet too big, MTU 1280" about `flow`'s reply, quoting as much as fits.
fn packet_too_big(flow: &Tuple) -> Vec<u8> {
    icmp_error(
        router6(),
        flow.dst,
        ICMPV6_PACKET_TOO_BIG,
        0,
        1_280u32.to_be_bytes(),
        &flow.reply_packet(1_280 - IPV6_LEN - 8),
    )
}

/// The lab at weight 0 with `flow` established on its stable backend, then the weight at 100 %:
/// the flow's backend and the backend a new flow would get now differ in group.
fn established(service: u32, flow: &Tuple) -> (Lab, u32) {
    let mut s = scenario();
    s.service_mut(service).control.canary_weight = 0;
    let mut lab = Lab::with(s, LoadOptions::default());
    let backend = expected_backend(&lab, service, flow);
    assert_eq!(lab.dataplane.run_or_panic(&flow.frame()).action, XDP_TX);
    lab.scenario.service_mut(service).control.canary_weight = BUCKETS;
    lab.scenario.update_control(&mut lab.dataplane, service);
    assert_ne!(expected_backend(&lab, service, flow), backend);
    (lab, backend)
}

#[test]
fn icmp_fragmentation_needed_reaches_the_flows_backend() {
    let flow = Tuple::tcp(client4(1), 40_000, vip4(), 80);
    let (lab, backend) = established(TCP4_SVC, &flow);
    let entry = lab.dataplane.flow(&flow.flow_key()).unwrap();
    check(
        &lab,
        &fixture(
            "ICMP fragmentation needed about an established flow",
            frag_needed(&flow),
            XDP_TX,
            Output::ToBackend(backend),
            &[Tx, IcmpErrorForwarded],
        ),
    );
    // Other destination-unreachable codes (port, host unreachable) go the same way.
    for code in [1, 3, 13] {
        let error = icmp_error(
            router4(),
            vip4(),
            ICMP_DEST_UNREACHABLE,
            code,
            [0; 4],
            &flow.reply_packet(IPV4_LEN + 20),
        );
        check(
            &lab,
            &fixture(
                "ICMP destination unreachable",
                error,
                XDP_TX,
                Output::ToBackend(backend),
                &[Tx, IcmpErrorForwarded],
            ),
        );
    }
    assert_eq!(lab.dataplane.flow(&flow.flow_key()).unwrap(), entry);
    let stats = lab.dataplane.backend_stats(backend).unwrap();
    assert_eq!((stats.packets, stats.new_flows), (5, 1));
}

#[test]
fn icmpv6_packet_too_big_reaches_the_flows_backend() {
    let flow = Tuple::tcp(v6(0x1), 40_000, vip6(), 443);
    let (lab, backend) = established(TCP6_SVC, &flow);
    check(
        &lab,
        &fixture(
            "ICMPv6 packet too big about an established flow",
            packet_too_big(&flow),
            XDP_TX,
            Output::ToBackend(backend),
            &[Tx, IcmpErrorForwarded],
        ),
    );
    let unreachable = icmp_error(
        router6(),
        vip6(),
        ICMPV6_DEST_UNREACHABLE,
        4,
        [0; 4],
        &flow.reply_packet(IPV6_LEN + 20),
    );
    check(
        &lab,
        &fixture(
            "ICMPv6 destination unreachable about an established flow",
            unreachable,
            XDP_TX,
            Output::ToBackend(backend),
            &[Tx, IcmpErrorForwarded],
        ),
    );
}

/// Without a flow-table entry (evicted, or the flow is a UDP one that expired) the error goes
/// where the flow would go now, and no entry is created.
#[test]
fn an_icmp_error_without_an_entry_follows_the_new_flow_choice() {
    let lab = Lab::new();
    for (service, flow, error) in [
        {
            let f = Tuple::tcp(client4(2), 41_000, vip4(), 80);
            (TCP4_SVC, f, frag_needed(&f))
        },
        {
            let f = Tuple::udp(client4(3), 41_001, vip4(), 53);
            (UDP4_SVC, f, frag_needed(&f))
        },
        {
            let f = Tuple::tcp(v6(0x2), 41_002, vip6(), 443);
            (TCP6_SVC, f, packet_too_big(&f))
        },
    ] {
        check(
            &lab,
            &fixture(
                "ICMP error about a flow without an entry",
                error,
                XDP_TX,
                Output::ToBackend(expected_backend(&lab, service, &flow)),
                &[Tx, IcmpErrorForwarded],
            ),
        );
        assert_eq!(
            lab.dataplane.flow(&flow.flow_key()).unwrap(),
            None::<FlowEntry>
        );
    }
    for service in [TCP4_SVC, UDP4_SVC, TCP6_SVC] {
        let stats = lab.dataplane.service_stats(service).unwrap();
        assert_eq!(stats.new_flows, [0, 0], "an ICMP error is no new flow");
    }
}

/// Errors the program cannot attribute to a service flow go to the balancer's own stack.
#[test]
fn other_icmp_errors_are_passed() {
    let lab = Lab::new();
    let flow = Tuple::tcp(client4(4), 42_000, vip4(), 80);
    let quoted = flow.reply_packet(IPV4_LEN + 8);
    let to_other_port = Tuple::tcp(client4(4), 42_000, vip4(), 81).reply_packet(IPV4_LEN + 8);
    let mut not_from_the_vip = quoted.clone();
    not_from_the_vip[12..16].copy_from_slice(&[198, 18, 0, 101]);
    let fixtures = [
        (
            "ICMP time exceeded (type 11) about a flow",
            icmp_error(router4(), vip4(), 11, 0, [0; 4], &quoted),
            PassOtherProtocol,
        ),
        (
            "ICMP error quoting only 4 bytes past the IP header",
            icmp_error(
                router4(),
                vip4(),
                ICMP_DEST_UNREACHABLE,
                ICMP_FRAGMENTATION_NEEDED,
                [0; 4],
                &quoted[..IPV4_LEN + 3],
            ),
            PassOtherProtocol,
        ),
        (
            "ICMP error whose quoted packet was not sent from the VIP it reached",
            icmp_error(
                router4(),
                vip4(),
                ICMP_DEST_UNREACHABLE,
                ICMP_FRAGMENTATION_NEEDED,
                [0; 4],
                &not_from_the_vip,
            ),
            PassOtherProtocol,
        ),
        (
            "ICMP error about a VIP port without a service",
            icmp_error(
                router4(),
                vip4(),
                ICMP_DEST_UNREACHABLE,
                ICMP_FRAGMENTATION_NEEDED,
                [0; 4],
                &to_other_port,
            ),
            PassNotService,
        ),
        (
            "ICMP error to an address that is not a VIP",
            icmp_error(
                router4(),
                v4(198, 18, 9, 9),
                ICMP_DEST_UNREACHABLE,
                ICMP_FRAGMENTATION_NEEDED,
                [0; 4],
                &quoted,
            ),
            PassNotService,
        ),
        (
            "ICMPv6 echo request to the VIP",
            canary_tests::packet::icmp_echo(v6(0x3), vip6()),
            PassOtherProtocol,
        ),
    ];
    for (what, frame, outcome) in fixtures {
        check(
            &lab,
            &fixture(what, frame, XDP_PASS, Output::Unchanged, &[outcome]),
        );
    }
}
