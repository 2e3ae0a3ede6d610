//! Service traffic leaves with only its MACs changed, over every supported header shape.

use canary_common::Counter::{self, FlowHit, FlowMiss, Tx};
use canary_tests::packet::{
    ipv4_with_options, ipv6_with_extensions, v6, with_ttl, Tuple, IPV6_DEST_OPTS, IPV6_HOP_BY_HOP,
    IPV6_ROUTING,
};
use canary_tests::xdp::{XDP_PASS, XDP_TX};

use crate::support::{
    check, client4, expected_backend, fixture, tcp4, vip4, vip6, Lab, Output, TCP4_SVC, TCP6_SVC,
    UDP4_SVC,
};

#[test]
fn service_traffic_is_forwarded_with_only_macs_rewritten() {
    let lab = Lab::new();
    let tcp = tcp4(1, 40_000, 80);
    let udp = Tuple::udp(client4(2), 5353, vip4(), 53);
    let tcp6 = Tuple::tcp(v6(0x1), 40_001, vip6(), 443);
    let options = ipv4_with_options(&tcp4(3, 40_002, 80).frame(), 2);
    let ext6 = ipv6_with_extensions(
        &Tuple::tcp(v6(0x2), 40_003, vip6(), 443).frame(),
        &[
            (IPV6_HOP_BY_HOP, 0),
            (IPV6_ROUTING, 1),
            (IPV6_DEST_OPTS, 0),
            (IPV6_DEST_OPTS, 2),
        ],
    );
    let b_tcp = expected_backend(&lab, TCP4_SVC, &tcp);
    let b_udp = expected_backend(&lab, UDP4_SVC, &udp);
    let b_tcp6 = expected_backend(&lab, TCP6_SVC, &tcp6);
    let b_opt = expected_backend(&lab, TCP4_SVC, &tcp4(3, 40_002, 80));
    let b_ext6 = expected_backend(&lab, TCP6_SVC, &Tuple::tcp(v6(0x2), 40_003, vip6(), 443));
    let mut padded = tcp.ack_frame();
    padded.extend_from_slice(&[0u8; 9]);
    let fixtures = [
        fixture(
            "IPv4 TCP SYN, new flow",
            tcp.frame(),
            XDP_TX,
            Output::ToBackend(b_tcp),
            &[Tx],
        ),
        fixture(
            "IPv4 TCP ACK, same flow again",
            tcp.ack_frame(),
            XDP_TX,
            Output::ToBackend(b_tcp),
            &[Tx, FlowHit],
        ),
        fixture(
            "IPv4 TCP ACK with trailing ethernet padding, same flow",
            padded,
            XDP_TX,
            Output::ToBackend(b_tcp),
            &[Tx, FlowHit],
        ),
        fixture(
            "IPv4 UDP service",
            udp.frame(),
            XDP_TX,
            Output::ToBackend(b_udp),
            &[Tx, FlowMiss],
        ),
        fixture(
            "IPv6 TCP service",
            tcp6.frame(),
            XDP_TX,
            Output::ToBackend(b_tcp6),
            &[Tx],
        ),
        fixture(
            "IPv4 with 8 bytes of options (carried through)",
            options,
            XDP_TX,
            Output::ToBackend(b_opt),
            &[Tx],
        ),
        fixture(
            "IPv6 with 4 extension headers (walked)",
            ext6,
            XDP_TX,
            Output::ToBackend(b_ext6),
            &[Tx],
        ),
    ];
    for f in &fixtures {
        check(&lab, f);
    }
    // Per-backend and per-service counters agree with what was sent.
    let (syn_len, ack_len) = (tcp.frame().len() as u64, tcp.ack_frame().len() as u64);
    let stats = lab.dataplane.backend_stats(b_tcp).unwrap();
    assert_eq!(stats.packets, 3);
    assert_eq!(stats.bytes, syn_len + 2 * ack_len + 9);
    assert_eq!(stats.new_flows, 1);
    let flow = lab
        .dataplane
        .flow(&tcp.flow_key())
        .unwrap()
        .expect("flow entry");
    assert_eq!(flow.backend, b_tcp);
    let s = lab.dataplane.service_stats(TCP4_SVC).unwrap();
    assert_eq!(s.new_flows[0] + s.new_flows[1], 2);
}

#[test]
fn removing_a_service_passes_its_traffic() {
    let mut lab = Lab::new();
    let t = tcp4(1, 40_000, 80);
    assert_eq!(lab.dataplane.run_or_panic(&t.frame()).action, XDP_TX);
    let key = lab.scenario.service(TCP4_SVC).key;
    lab.dataplane.remove_service(&key).unwrap();
    check(
        &lab,
        &fixture(
            "service removed, flow still in the table",
            t.ack_frame(),
            XDP_PASS,
            Output::Unchanged,
            &[Counter::PassNotService],
        ),
    );
}

/// Direct server return moves the frame within one L2 segment: the balancer is not a routing
/// hop, so it neither decrements the TTL (hop limit) nor refuses TTL 0 or 1; the backend's own
/// stack sees the packet as the client sent it.
#[test]
fn ttl_and_hop_limit_are_left_alone() {
    let lab = Lab::new();
    for ttl in [0, 1] {
        let t = tcp4(70 + ttl, 40_100, 80);
        let t6 = Tuple::tcp(v6(0x70 + u16::from(ttl)), 40_100, vip6(), 443);
        for (service, tuple) in [(TCP4_SVC, t), (TCP6_SVC, t6)] {
            check(
                &lab,
                &fixture(
                    "TTL / hop limit 0 or 1",
                    with_ttl(&tuple.frame(), ttl),
                    XDP_TX,
                    Output::ToBackend(expected_backend(&lab, service, &tuple)),
                    &[Tx],
                ),
            );
        }
    }
}
