//! The Ethernet destination: only frames addressed to the balancer's own MAC are balanced, and
//! forwarded frames carry that MAC as their source. A frame to a broadcast or multicast MAC, or
//! to another host's MAC (flooded by a switch, or seen in promiscuous mode), is passed
//! untouched: forwarding it would put that MAC in the source field, which poisons the switches'
//! tables, and every balancer on the segment would forward the same flooded frame.

use canary_common::Counter::{PassMulticastMac, PassNotOurMac, Tx};
use canary_common::{BackendStats, ServiceStats};
use canary_tests::packet::{v6, with_macs, Tuple, CLIENT_MAC};
use canary_tests::scenario::backend_mac;
use canary_tests::xdp::{XDP_PASS, XDP_TX};

use crate::support::{
    check, client4, expected_backend, fixture, tcp4, vip4, vip6, Lab, Output, TCP4_SVC, TCP6_SVC,
    UDP4_SVC,
};

/// Another host's unicast MAC on the same segment.
const OTHER_HOST: [u8; 6] = [0x02, 0x99, 0x00, 0x00, 0x00, 0x07];

/// The frame addressed to `dst` instead of the balancer.
fn to_mac(frame: &[u8], dst: [u8; 6]) -> Vec<u8> {
    with_macs(frame, dst, CLIENT_MAC)
}

fn not_for_us() -> Vec<(&'static str, [u8; 6], bool)> {
    vec![
        ("broadcast", [0xff; 6], true),
        (
            "IPv4 multicast MAC",
            [0x01, 0x00, 0x5e, 0x00, 0x00, 0x01],
            true,
        ),
        (
            "IPv6 multicast MAC",
            [0x33, 0x33, 0x00, 0x00, 0x00, 0x01],
            true,
        ),
        (
            "group bit on an otherwise unicast MAC",
            [0x03, 0x1b, 0, 0, 0, 1],
            true,
        ),
        ("another host's MAC", OTHER_HOST, false),
    ]
}

fn assert_nothing_balanced(lab: &Lab) {
    assert_eq!(
        lab.dataplane.flow_count().unwrap(),
        0,
        "no flow may be created"
    );
    for service in [TCP4_SVC, UDP4_SVC, TCP6_SVC] {
        assert_eq!(
            lab.dataplane.service_stats(service).unwrap(),
            ServiceStats::default()
        );
    }
    for &b in lab.scenario.backends.keys() {
        assert_eq!(
            lab.dataplane.backend_stats(b).unwrap(),
            BackendStats::default()
        );
    }
}

#[test]
fn frames_not_addressed_to_the_balancer_are_passed() {
    let lab = Lab::new();
    let frames = [
        tcp4(1, 40_000, 80).frame(),
        tcp4(2, 40_001, 80).ack_frame(),
        Tuple::udp(client4(3), 5353, vip4(), 53).frame(),
        Tuple::tcp(v6(0x1), 40_002, vip6(), 443).frame(),
    ];
    for frame in &frames {
        for (what, mac, group) in not_for_us() {
            check(
                &lab,
                &fixture(
                    what,
                    to_mac(frame, mac),
                    XDP_PASS,
                    Output::Unchanged,
                    if group {
                        &[PassMulticastMac]
                    } else {
                        &[PassNotOurMac]
                    },
                ),
            );
        }
    }
    assert_nothing_balanced(&lab);
    // The same frames addressed to the balancer are forwarded, from the balancer's MAC.
    let t = tcp4(1, 40_000, 80);
    check(
        &lab,
        &fixture(
            "addressed to the balancer",
            t.frame(),
            XDP_TX,
            Output::ToBackend(expected_backend(&lab, TCP4_SVC, &t)),
            &[Tx],
        ),
    );
}

/// A configuration written before the balancer's MAC was known (all zero) keeps working: any
/// unicast destination is taken as ours and becomes the source. Group addresses are still
/// never balanced.
#[test]
fn without_a_configured_mac_unicast_frames_are_balanced_as_before() {
    let mut lab = Lab::new();
    lab.scenario.config.lb_mac = [0; 6];
    lab.dataplane.set_config(&lab.scenario.config).unwrap();
    let t = tcp4(1, 40_000, 80);
    let b = expected_backend(&lab, TCP4_SVC, &t);
    let run = lab.dataplane.run_or_panic(&to_mac(&t.frame(), OTHER_HOST));
    assert_eq!(run.action, XDP_TX);
    assert_eq!(
        run.output,
        with_macs(&t.frame(), backend_mac(b), OTHER_HOST),
        "the frame's destination MAC becomes the source"
    );
    for (what, mac, group) in not_for_us() {
        if group {
            check(
                &lab,
                &fixture(
                    what,
                    to_mac(&tcp4(9, 41_000, 80).frame(), mac),
                    XDP_PASS,
                    Output::Unchanged,
                    &[PassMulticastMac],
                ),
            );
        }
    }
}
