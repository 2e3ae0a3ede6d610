//! Packet fixtures through the real XDP program (`BPF_PROG_TEST_RUN`), katran style: each
//! fixture is an input frame, the expected action, the expected output frame and the expected
//! change of every global counter. Needs root; run with `--test-threads=1`.

use canary_common::Counter::{
    DeadmanFallback, DropFragment, DropMalformed, DropNoBackend, FlowHit, FlowMiss,
    FlowRechosenDown, FlowRechosenReset, GroupFallback, PassIpv6Extensions, PassNotIp,
    PassNotService, PassOtherProtocol, Tx,
};
use canary_common::{
    Counter, ServiceControl, BACKEND_FLAG_UP, BUCKETS, COUNTERS, GROUP_CANARY, GROUP_STABLE,
    PROTO_TCP, PROTO_UDP,
};
use canary_tests::packet::{
    arp_request, icmp_echo, ipv4_fragment, ipv4_set_ihl, ipv4_set_protocol, ipv4_with_options,
    ipv6_with_extensions, truncate_l4, v4, v6, vlan_tagged, with_macs, Addr, Tuple, ETH_LEN,
    IPV4_LEN, IPV6_DEST_OPTS, IPV6_FRAGMENT, IPV6_HOP_BY_HOP, IPV6_LEN, IPV6_ROUTING, LB_MAC,
    TCP_ACK, TCP_SYN,
};
use canary_tests::scenario::{backend_mac, Scenario, ServiceSpec, CONFIGURED_LB_MAC};
use canary_tests::xdp::{
    action_name, monotonic_ns, Dataplane, LoadOptions, XDP_DROP, XDP_PASS, XDP_TX,
};

const VIP4: [u8; 4] = [198, 18, 0, 100];
const TCP4_SVC: u32 = 0;
const UDP4_SVC: u32 = 1;
const TCP6_SVC: u32 = 2;
const NO_CANARY_SVC: u32 = 3;
const NO_STABLE_SVC: u32 = 4;
const EMPTY_SVC: u32 = 5;
const ALL_CANARY_SVC: u32 = 6;

fn vip4() -> Addr {
    Addr::V4(VIP4)
}

fn vip6() -> Addr {
    v6(0x100)
}

fn client4(n: u8) -> Addr {
    v4(198, 18, 1, n)
}

/// Several services at once: TCP and UDP on one IPv4 VIP, TCP on an IPv6 VIP, and services
/// whose groups are empty, on a second IPv4 VIP.
fn scenario() -> Scenario {
    let mut s = Scenario::new();
    s.add_service(
        ServiceSpec::new(vip4(), 80, PROTO_TCP, TCP4_SVC)
            .groups(&[1, 2, 3], &[4, 5])
            .weight(2_500),
    );
    s.add_service(
        ServiceSpec::new(vip4(), 53, PROTO_UDP, UDP4_SVC)
            .groups(&[6, 7], &[8])
            .weight(5_000),
    );
    s.add_service(
        ServiceSpec::new(vip6(), 443, PROTO_TCP, TCP6_SVC)
            .groups(&[9, 10], &[11])
            .weight(5_000),
    );
    let vip_b = v4(198, 18, 0, 101);
    s.add_service(
        ServiceSpec::new(vip_b, 1000, PROTO_TCP, NO_CANARY_SVC)
            .groups(&[12], &[])
            .weight(BUCKETS),
    );
    s.add_service(
        ServiceSpec::new(vip_b, 1001, PROTO_TCP, NO_STABLE_SVC)
            .groups(&[], &[13])
            .weight(0),
    );
    s.add_service(
        ServiceSpec::new(vip_b, 1002, PROTO_TCP, EMPTY_SVC)
            .groups(&[], &[])
            .weight(5_000),
    );
    s.add_service(
        ServiceSpec::new(vip_b, 1003, PROTO_TCP, ALL_CANARY_SVC)
            .groups(&[14], &[15])
            .weight(BUCKETS),
    );
    s
}

struct Lab {
    dataplane: Dataplane,
    scenario: Scenario,
}

impl Lab {
    fn new() -> Self {
        Self::with(scenario(), LoadOptions::default())
    }

    fn with(scenario: Scenario, options: LoadOptions) -> Self {
        let mut dataplane = Dataplane::load_or_panic(options);
        scenario.install_or_panic(&mut dataplane);
        Self {
            dataplane,
            scenario,
        }
    }

    fn counters(&self) -> [u64; COUNTERS as usize] {
        self.dataplane.counters().expect("reading COUNTERS")
    }
}

/// What a fixture expects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Output {
    /// Output frame equals the input.
    Unchanged,
    /// `XDP_TX` with MACs rewritten to this backend (and the configured LB MAC).
    ToBackend(u32),
}

struct Fixture {
    description: &'static str,
    input: Vec<u8>,
    action: u32,
    output: Output,
    counters: Vec<Counter>,
}

fn fixture(
    description: &'static str,
    input: Vec<u8>,
    action: u32,
    output: Output,
    counters: &[Counter],
) -> Fixture {
    Fixture {
        description,
        input,
        action,
        output,
        counters: counters.to_vec(),
    }
}

/// Runs one fixture and checks action, output bytes, every counter's delta, and that exactly
/// one outcome counter moved.
fn check(lab: &Lab, f: &Fixture) {
    let before = lab.counters();
    let run = lab.dataplane.run_or_panic(&f.input);
    let after = lab.counters();
    assert_eq!(
        run.action,
        f.action,
        "{}: action {} expected {}",
        f.description,
        action_name(run.action),
        action_name(f.action)
    );
    let expected_output = match f.output {
        Output::Unchanged => f.input.clone(),
        Output::ToBackend(b) => with_macs(&f.input, backend_mac(b), CONFIGURED_LB_MAC),
    };
    assert_eq!(
        run.output, expected_output,
        "{}: output frame differs from the expected one",
        f.description
    );
    let mut expected = [0u64; COUNTERS as usize];
    for c in &f.counters {
        expected[*c as usize] += 1;
    }
    let delta: Vec<(&str, u64)> = Counter::ALL
        .iter()
        .map(|c| (c.name(), after[*c as usize] - before[*c as usize]))
        .filter(|(_, d)| *d != 0)
        .collect();
    let want: Vec<(&str, u64)> = Counter::ALL
        .iter()
        .map(|c| (c.name(), expected[*c as usize]))
        .filter(|(_, d)| *d != 0)
        .collect();
    assert_eq!(delta, want, "{}: counter deltas", f.description);
    let outcomes: u64 = Counter::ALL
        .iter()
        .filter(|c| c.is_outcome())
        .map(|c| after[*c as usize] - before[*c as usize])
        .sum();
    assert_eq!(
        outcomes, 1,
        "{}: exactly one outcome counter",
        f.description
    );
}

/// The backend the contract picks for a new flow of `tuple` to service `service`.
fn expected_backend(lab: &Lab, service: u32, tuple: &Tuple) -> u32 {
    lab.scenario
        .choose(lab.scenario.service(service), &tuple.flow_key(), false)
        .unwrap_or_else(|| panic!("no backend expected for {tuple:?}"))
        .backend
}

fn tcp4(client: u8, port: u16, dport: u16) -> Tuple {
    Tuple::tcp(client4(client), port, vip4(), dport)
}

#[test]
fn bad_and_unrelated_input_has_a_defined_outcome() {
    let lab = Lab::new();
    let good = tcp4(1, 40_000, 80).frame();
    let good6 = Tuple::tcp(v6(0x1), 40_000, vip6(), 443).frame();
    let udp = Tuple::udp(client4(1), 40_000, vip4(), 53).frame();
    let ipv4_end = ETH_LEN + IPV4_LEN;
    let ipv6_end = ETH_LEN + IPV6_LEN;
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
    let mut tcp_offset_small = good.clone();
    tcp_offset_small[ipv4_end + 12] = 0x40;
    let mut tcp_offset_beyond = good.clone();
    tcp_offset_beyond[ipv4_end + 12] = 0xf0;
    let ext = |kinds: &[u8]| {
        ipv6_with_extensions(&good6, &kinds.iter().map(|&k| (k, 0)).collect::<Vec<_>>())
    };
    // An extension header whose stated length runs past the packet.
    let mut ext_truncated = ext(&[IPV6_DEST_OPTS]);
    ext_truncated.truncate(ipv6_end + 8);
    ext_truncated[ipv6_end + 1] = 4;
    let len = (ext_truncated.len() - ipv6_end) as u16;
    ext_truncated[ETH_LEN + 4..ETH_LEN + 6].copy_from_slice(&len.to_be_bytes());

    let fixtures = [
        fixture(
            "ARP request",
            arp_request(VIP4),
            XDP_PASS,
            Output::Unchanged,
            &[PassNotIp],
        ),
        fixture(
            "ethernet header only, IPv4 ethertype",
            good[..ETH_LEN].to_vec(),
            XDP_DROP,
            Output::Unchanged,
            &[DropMalformed],
        ),
        fixture(
            "ethernet header only, IPv6 ethertype",
            good6[..ETH_LEN].to_vec(),
            XDP_DROP,
            Output::Unchanged,
            &[DropMalformed],
        ),
        fixture(
            "ethernet header only, ARP ethertype",
            arp_request(VIP4)[..ETH_LEN].to_vec(),
            XDP_PASS,
            Output::Unchanged,
            &[PassNotIp],
        ),
        fixture(
            "802.1Q tagged TCP to VIP (passed untouched)",
            vlan_tagged(&good, false),
            XDP_PASS,
            Output::Unchanged,
            &[PassNotIp],
        ),
        fixture(
            "802.1ad tagged TCP to VIP",
            vlan_tagged(&good, true),
            XDP_PASS,
            Output::Unchanged,
            &[PassNotIp],
        ),
        fixture(
            "unknown ethertype",
            {
                let mut f = good.clone();
                f[12] = 0x88;
                f[13] = 0xb5;
                f
            },
            XDP_PASS,
            Output::Unchanged,
            &[PassNotIp],
        ),
        fixture(
            "IPv4 header truncated at 19 bytes",
            good[..ipv4_end - 1].to_vec(),
            XDP_DROP,
            Output::Unchanged,
            &[DropMalformed],
        ),
        fixture(
            "IPv4 version 6 in an IPv4 ethertype",
            bad_version4,
            XDP_DROP,
            Output::Unchanged,
            &[DropMalformed],
        ),
        fixture(
            "IPv4 ihl 4",
            ipv4_set_ihl(&good, 4),
            XDP_DROP,
            Output::Unchanged,
            &[DropMalformed],
        ),
        fixture(
            "IPv4 ihl 0",
            ipv4_set_ihl(&good, 0),
            XDP_DROP,
            Output::Unchanged,
            &[DropMalformed],
        ),
        fixture(
            "IPv4 ihl 15 beyond the packet",
            ipv4_set_ihl(&good[..ipv4_end + 20], 15),
            XDP_DROP,
            Output::Unchanged,
            &[DropMalformed],
        ),
        fixture(
            "IPv4 total length beyond the frame",
            long_total,
            XDP_DROP,
            Output::Unchanged,
            &[DropMalformed],
        ),
        fixture(
            "IPv4 total length below the header",
            short_total,
            XDP_DROP,
            Output::Unchanged,
            &[DropMalformed],
        ),
        fixture(
            "IPv6 header truncated at 39 bytes",
            good6[..ipv6_end - 1].to_vec(),
            XDP_DROP,
            Output::Unchanged,
            &[DropMalformed],
        ),
        fixture(
            "IPv6 version 4 in an IPv6 ethertype",
            bad_version6,
            XDP_DROP,
            Output::Unchanged,
            &[DropMalformed],
        ),
        fixture(
            "IPv6 payload length beyond the frame",
            long_payload6,
            XDP_DROP,
            Output::Unchanged,
            &[DropMalformed],
        ),
        fixture(
            "IPv4 first fragment (MF) to VIP",
            ipv4_fragment(&good, true, 0),
            XDP_DROP,
            Output::Unchanged,
            &[DropFragment],
        ),
        fixture(
            "IPv4 non-first fragment to VIP",
            ipv4_fragment(&good, false, 185),
            XDP_DROP,
            Output::Unchanged,
            &[DropFragment],
        ),
        fixture(
            "IPv4 middle fragment to VIP",
            ipv4_fragment(&good, true, 3),
            XDP_DROP,
            Output::Unchanged,
            &[DropFragment],
        ),
        fixture(
            "IPv4 fragment to a non-VIP address",
            ipv4_fragment(
                &Tuple::tcp(client4(1), 1, v4(198, 18, 9, 9), 80).frame(),
                true,
                0,
            ),
            XDP_PASS,
            Output::Unchanged,
            &[PassNotService],
        ),
        fixture(
            "IPv6 fragment header to VIP",
            ext(&[IPV6_FRAGMENT]),
            XDP_DROP,
            Output::Unchanged,
            &[DropFragment],
        ),
        fixture(
            "IPv6 fragment header after hop-by-hop",
            ext(&[IPV6_HOP_BY_HOP, IPV6_FRAGMENT]),
            XDP_DROP,
            Output::Unchanged,
            &[DropFragment],
        ),
        fixture(
            "IPv6 5 extension headers",
            ext(&[
                IPV6_HOP_BY_HOP,
                IPV6_DEST_OPTS,
                IPV6_ROUTING,
                IPV6_DEST_OPTS,
                IPV6_DEST_OPTS,
            ]),
            XDP_PASS,
            Output::Unchanged,
            &[PassIpv6Extensions],
        ),
        fixture(
            "IPv6 extension header truncated",
            ext_truncated,
            XDP_DROP,
            Output::Unchanged,
            &[DropMalformed],
        ),
        fixture(
            "ICMP echo to VIP",
            icmp_echo(client4(1), vip4()),
            XDP_PASS,
            Output::Unchanged,
            &[PassOtherProtocol],
        ),
        fixture(
            "ICMPv6 echo to VIP",
            icmp_echo(v6(1), vip6()),
            XDP_PASS,
            Output::Unchanged,
            &[PassOtherProtocol],
        ),
        fixture(
            "GRE (47) to VIP",
            ipv4_set_protocol(&good, 47),
            XDP_PASS,
            Output::Unchanged,
            &[PassOtherProtocol],
        ),
        fixture(
            "ICMP to a non-VIP address",
            icmp_echo(client4(1), v4(198, 18, 9, 9)),
            XDP_PASS,
            Output::Unchanged,
            &[PassNotService],
        ),
        fixture(
            "TCP header truncated (19 bytes)",
            truncate_l4(&good, IPV4_LEN, 19),
            XDP_DROP,
            Output::Unchanged,
            &[DropMalformed],
        ),
        fixture(
            "TCP data offset 4",
            tcp_offset_small,
            XDP_DROP,
            Output::Unchanged,
            &[DropMalformed],
        ),
        fixture(
            "TCP data offset beyond the packet",
            tcp_offset_beyond,
            XDP_DROP,
            Output::Unchanged,
            &[DropMalformed],
        ),
        fixture(
            "UDP header truncated (7 bytes)",
            truncate_l4(&udp, IPV4_LEN, 7),
            XDP_DROP,
            Output::Unchanged,
            &[DropMalformed],
        ),
        fixture(
            "IPv6 TCP header truncated",
            truncate_l4(&good6, IPV6_LEN, 10),
            XDP_DROP,
            Output::Unchanged,
            &[DropMalformed],
        ),
        fixture(
            "TCP to VIP, unconfigured port",
            tcp4(1, 40_000, 81).frame(),
            XDP_PASS,
            Output::Unchanged,
            &[PassNotService],
        ),
        fixture(
            "UDP to VIP, port of the TCP service",
            Tuple::udp(client4(1), 40_000, vip4(), 80).frame(),
            XDP_PASS,
            Output::Unchanged,
            &[PassNotService],
        ),
        fixture(
            "TCP to a non-VIP address",
            Tuple::tcp(client4(1), 40_000, v4(198, 18, 9, 9), 80).frame(),
            XDP_PASS,
            Output::Unchanged,
            &[PassNotService],
        ),
        fixture(
            "IPv6 TCP to a non-VIP address",
            Tuple::tcp(v6(1), 40_000, v6(0x999), 443).frame(),
            XDP_PASS,
            Output::Unchanged,
            &[PassNotService],
        ),
        fixture(
            "IPv4-mapped VIP bytes as IPv6 destination",
            Tuple::tcp(v6(1), 40_000, Addr::V6(Addr::V4(VIP4).to_map()), 80).frame(),
            XDP_PASS,
            Output::Unchanged,
            &[PassNotService],
        ),
    ];
    for f in &fixtures {
        check(&lab, f);
    }
    // No service traffic reached any per-service or per-backend counter.
    for service in &lab.scenario.services {
        let stats = lab.dataplane.service_stats(service.index).unwrap();
        assert_eq!(
            stats,
            canary_common::ServiceStats::default(),
            "service {} stats moved",
            service.index
        );
    }
    for &backend in lab.scenario.backends.keys() {
        let stats = lab.dataplane.backend_stats(backend).unwrap();
        assert_eq!(
            stats,
            canary_common::BackendStats::default(),
            "backend {backend} stats moved"
        );
    }
    assert_eq!(
        lab.dataplane.flow_count().unwrap(),
        0,
        "no flow may be created"
    );
}

/// Frames shorter than Ethernet cannot reach the program through `BPF_PROG_TEST_RUN` (the
/// kernel refuses them, even behind XDP metadata), so the shortest testable frame is the
/// 14-byte one above. This pins that limit down so a kernel that lifts it is noticed.
#[test]
fn frames_shorter_than_ethernet_cannot_be_test_run() {
    let lab = Lab::new();
    let good = tcp4(1, 40_000, 80).frame();
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

#[test]
fn service_traffic_is_forwarded_with_only_macs_rewritten() {
    let mut lab = Lab::new();
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
            &[Tx, FlowMiss],
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
            &[Tx, FlowMiss],
        ),
        fixture(
            "IPv4 with 8 bytes of options (carried through)",
            options,
            XDP_TX,
            Output::ToBackend(b_opt),
            &[Tx, FlowMiss],
        ),
        fixture(
            "IPv6 with 4 extension headers (walked)",
            ext6,
            XDP_TX,
            Output::ToBackend(b_ext6),
            &[Tx, FlowMiss],
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

    // With no configured LB MAC, the frame's own destination MAC becomes the source.
    lab.scenario.config.lb_mac = [0; 6];
    lab.dataplane.set_config(&lab.scenario.config).unwrap();
    let run = lab.dataplane.run_or_panic(&tcp.ack_frame());
    assert_eq!(run.action, XDP_TX);
    assert_eq!(
        run.output,
        with_macs(&tcp.ack_frame(), backend_mac(b_tcp), LB_MAC)
    );
}

#[test]
fn empty_groups_and_extreme_weights() {
    let lab = Lab::new();
    let vip_b = v4(198, 18, 0, 101);
    let to = |port: u16, client: u8, sport: u16| Tuple::tcp(client4(client), sport, vip_b, port);
    // Many flows each, so both buckets ranges are hit.
    for i in 0..200u16 {
        let c = (i % 50) as u8 + 1;
        let sport = 30_000 + i;
        // Weight 10000, canary group empty: every flow falls back to stable.
        check(
            &lab,
            &fixture(
                "weight 10000, empty canary group",
                to(1000, c, sport).frame(),
                XDP_TX,
                Output::ToBackend(12),
                &[Tx, FlowMiss, GroupFallback],
            ),
        );
        // Weight 0, stable group empty: every flow falls back to canary.
        check(
            &lab,
            &fixture(
                "weight 0, empty stable group",
                to(1001, c, sport).frame(),
                XDP_TX,
                Output::ToBackend(13),
                &[Tx, FlowMiss, GroupFallback],
            ),
        );
        // Both groups empty.
        check(
            &lab,
            &fixture(
                "both groups empty",
                to(1002, c, sport).frame(),
                XDP_DROP,
                Output::Unchanged,
                &[DropNoBackend, FlowMiss],
            ),
        );
        // Weight 10000 with both groups: everything to canary.
        check(
            &lab,
            &fixture(
                "weight 10000",
                to(1003, c, sport).frame(),
                XDP_TX,
                Output::ToBackend(15),
                &[Tx, FlowMiss],
            ),
        );
    }
    let s = lab.dataplane.service_stats(NO_CANARY_SVC).unwrap();
    assert_eq!((s.new_flows, s.group_fallback), ([200, 0], 200));
    let s = lab.dataplane.service_stats(NO_STABLE_SVC).unwrap();
    assert_eq!((s.new_flows, s.group_fallback), ([0, 200], 200));
    let s = lab.dataplane.service_stats(ALL_CANARY_SVC).unwrap();
    assert_eq!((s.new_flows, s.group_fallback), ([0, 200], 0));
    let s = lab.dataplane.service_stats(EMPTY_SVC).unwrap();
    assert_eq!(s.new_flows, [0, 0]);
}

#[test]
fn weight_zero_sends_everything_to_stable() {
    let mut s = scenario();
    s.service_mut(TCP4_SVC).control.canary_weight = 0;
    let lab = Lab::with(s, LoadOptions::default());
    for i in 0..500u16 {
        let t = tcp4((i % 200) as u8 + 1, 20_000 + i, 80);
        let run = lab.dataplane.run_or_panic(&t.frame());
        assert_eq!(run.action, XDP_TX);
        let b = expected_backend(&lab, TCP4_SVC, &t);
        assert!(lab.scenario.service(TCP4_SVC).stable.contains(&b));
        assert_eq!(
            run.output,
            with_macs(&t.frame(), backend_mac(b), CONFIGURED_LB_MAC)
        );
    }
    let s = lab.dataplane.service_stats(TCP4_SVC).unwrap();
    assert_eq!(s.new_flows, [500, 0]);
}

#[test]
fn weight_above_buckets_is_clamped_to_all_canary() {
    let mut s = scenario();
    s.service_mut(TCP4_SVC).control.canary_weight = 60_000;
    let lab = Lab::with(s, LoadOptions::default());
    for i in 0..300u16 {
        let t = tcp4((i % 200) as u8 + 1, 20_000 + i, 80);
        assert_eq!(lab.dataplane.run_or_panic(&t.frame()).action, XDP_TX);
    }
    assert_eq!(
        lab.dataplane.service_stats(TCP4_SVC).unwrap().new_flows,
        [0, 300]
    );
}

#[test]
fn flow_table_full_still_forwards_consistently() {
    const TABLE: u32 = 64;
    let lab = Lab::with(
        scenario(),
        LoadOptions {
            flow_table_size: Some(TABLE),
        },
    );
    let flows: Vec<Tuple> = (0..2_000u16)
        .map(|i| tcp4((i % 250) as u8 + 1, 10_000 + i, 80))
        .collect();
    // Round 0 opens every connection (SYN); round 1 continues them (ACK), so it looks each
    // one up in a table that evicted most of them.
    for (round, frame) in [
        (0, Tuple::frame as fn(&Tuple) -> Vec<u8>),
        (1, Tuple::ack_frame),
    ] {
        let before = lab.counters();
        for t in &flows {
            let input = frame(t);
            let run = lab.dataplane.run_or_panic(&input);
            assert_eq!(run.action, XDP_TX, "round {round} {t:?}");
            let b = expected_backend(&lab, TCP4_SVC, t);
            assert_eq!(
                run.output,
                with_macs(&input, backend_mac(b), CONFIGURED_LB_MAC),
                "round {round}: flow {t:?} must go to the same backend as before eviction"
            );
        }
        let after = lab.counters();
        let d = |c: Counter| after[c as usize] - before[c as usize];
        assert_eq!(d(Counter::Tx), 2_000, "round {round}");
        assert_eq!(d(Counter::FlowHit) + d(Counter::FlowMiss), 2_000);
        if round == 0 {
            assert_eq!(d(Counter::FlowMiss), 2_000, "a SYN is always a new flow");
        } else {
            assert!(
                d(Counter::FlowMiss) >= 2_000 - u64::from(TABLE),
                "a 64-entry table cannot hold 2000 flows: {} misses",
                d(Counter::FlowMiss)
            );
        }
    }
    let count = lab.dataplane.flow_count().unwrap();
    assert!(
        count <= TABLE as usize,
        "flow table holds {count} > {TABLE}"
    );
}

#[test]
fn flow_on_a_down_backend_is_rechosen() {
    let mut lab = Lab::new();
    // Find a flow that lands on stable backend 1.
    let t = (1..=250u8)
        .flat_map(|c| (0..20u16).map(move |p| tcp4(c, 50_000 + p, 80)))
        .find(|t| {
            lab.scenario
                .choose(lab.scenario.service(TCP4_SVC), &t.flow_key(), false)
                .is_some_and(|c| c.backend == 1)
        })
        .expect("some flow lands on backend 1");
    check(
        &lab,
        &fixture(
            "new flow on backend 1",
            t.frame(),
            XDP_TX,
            Output::ToBackend(1),
            &[Tx, FlowMiss],
        ),
    );
    lab.scenario.backends.get_mut(&1).unwrap().flags &= !BACKEND_FLAG_UP;
    lab.scenario.update_backend(&mut lab.dataplane, 1);
    // Same flow: the table still says backend 1, which is down. The lookup table still names
    // it at that slot too (userspace has not rebuilt it), so the other group is used.
    let again = lab
        .scenario
        .choose(lab.scenario.service(TCP4_SVC), &t.flow_key(), false)
        .unwrap();
    assert!(again.group_fallback);
    check(
        &lab,
        &fixture(
            "flow pinned to a down backend",
            t.ack_frame(),
            XDP_TX,
            Output::ToBackend(again.backend),
            &[Tx, FlowHit, FlowRechosenDown, GroupFallback],
        ),
    );
    assert_eq!(
        lab.dataplane.flow(&t.flow_key()).unwrap().unwrap().backend,
        again.backend
    );
    check(
        &lab,
        &fixture(
            "re-chosen flow is pinned again",
            t.ack_frame(),
            XDP_TX,
            Output::ToBackend(again.backend),
            &[Tx, FlowHit],
        ),
    );

    // A backend entry re-used by another service also makes the flow re-chosen.
    let t2 = (1..=250u8)
        .flat_map(|c| (0..20u16).map(move |p| tcp4(c, 51_000 + p, 80)))
        .find(|t| {
            lab.scenario
                .choose(lab.scenario.service(TCP4_SVC), &t.flow_key(), false)
                .is_some_and(|c| c.backend == 2)
        })
        .expect("some flow lands on backend 2");
    check(
        &lab,
        &fixture(
            "new flow on backend 2",
            t2.frame(),
            XDP_TX,
            Output::ToBackend(2),
            &[Tx, FlowMiss],
        ),
    );
    lab.scenario.backends.get_mut(&2).unwrap().service_index = UDP4_SVC;
    lab.scenario.update_backend(&mut lab.dataplane, 2);
    let run = lab.dataplane.run_or_panic(&t2.ack_frame());
    assert_eq!(run.action, XDP_TX);
    let c = lab.dataplane.counters().unwrap();
    assert_eq!(
        c[Counter::FlowRechosenDown as usize],
        2,
        "flow to a backend of another service re-chosen"
    );
}

#[test]
fn reset_epoch_rechooses_old_canary_flows_only() {
    let mut s = scenario();
    s.service_mut(TCP4_SVC).control.canary_weight = 5_000;
    let mut lab = Lab::with(s, LoadOptions::default());
    let flows: Vec<Tuple> = (0..400u16)
        .map(|i| tcp4((i % 200) as u8 + 1, 30_000 + i, 80))
        .collect();
    let mut canary = Vec::new();
    let mut stable = Vec::new();
    for t in &flows {
        let choice = lab
            .scenario
            .choose(lab.scenario.service(TCP4_SVC), &t.flow_key(), false)
            .unwrap();
        assert_eq!(lab.dataplane.run_or_panic(&t.frame()).action, XDP_TX);
        if choice.group == GROUP_CANARY {
            canary.push(*t);
        } else {
            stable.push(*t);
        }
    }
    assert!(!canary.is_empty() && !stable.is_empty());
    // Roll back with reset: weight 0 and an epoch after every flow was created.
    let control = &mut lab.scenario.service_mut(TCP4_SVC).control;
    control.canary_weight = 0;
    control.reset_epoch_ns = monotonic_ns();
    lab.scenario.update_control(&mut lab.dataplane, TCP4_SVC);
    for t in &canary {
        let b = expected_backend(&lab, TCP4_SVC, t);
        assert!(lab.scenario.service(TCP4_SVC).stable.contains(&b));
        check(
            &lab,
            &fixture(
                "canary flow older than the reset epoch",
                t.ack_frame(),
                XDP_TX,
                Output::ToBackend(b),
                &[Tx, FlowHit, FlowRechosenReset],
            ),
        );
        // Re-chosen flows are stable flows now: no second re-choice.
        check(
            &lab,
            &fixture(
                "re-chosen flow stays",
                t.ack_frame(),
                XDP_TX,
                Output::ToBackend(b),
                &[Tx, FlowHit],
            ),
        );
    }
    for t in &stable {
        let entry = lab
            .dataplane
            .flow(&t.flow_key())
            .unwrap()
            .expect("stable flow entry");
        assert_eq!(entry.group, GROUP_STABLE);
        check(
            &lab,
            &fixture(
                "stable flow kept through a reset",
                t.ack_frame(),
                XDP_TX,
                Output::ToBackend(entry.backend),
                &[Tx, FlowHit],
            ),
        );
    }
    // Canary flows created after the epoch are kept.
    let control = &mut lab.scenario.service_mut(TCP4_SVC).control;
    control.canary_weight = BUCKETS;
    lab.scenario.update_control(&mut lab.dataplane, TCP4_SVC);
    let late = tcp4(77, 60_000, 80);
    let b = expected_backend(&lab, TCP4_SVC, &late);
    check(
        &lab,
        &fixture(
            "new canary flow after the epoch",
            late.frame(),
            XDP_TX,
            Output::ToBackend(b),
            &[Tx, Counter::FlowMiss],
        ),
    );
    check(
        &lab,
        &fixture(
            "canary flow newer than the epoch is kept",
            late.ack_frame(),
            XDP_TX,
            Output::ToBackend(b),
            &[Tx, FlowHit],
        ),
    );
}

#[test]
fn deadman_switch_sends_new_flows_to_stable() {
    let mut s = scenario();
    s.service_mut(TCP4_SVC).control = ServiceControl {
        canary_weight: BUCKETS,
        heartbeat_ns: 1,
        heartbeat_timeout_ns: 1_000_000_000,
        ..ServiceControl::default()
    };
    // Dead-man on a service whose stable group is empty: never falls back into canary.
    s.service_mut(NO_STABLE_SVC).control = ServiceControl {
        canary_weight: BUCKETS,
        heartbeat_ns: 1,
        heartbeat_timeout_ns: 1_000_000_000,
        ..ServiceControl::default()
    };
    let mut lab = Lab::with(s, LoadOptions::default());
    for i in 0..100u16 {
        let t = tcp4((i % 100) as u8 + 1, 40_000 + i, 80);
        let choice = lab
            .scenario
            .choose(lab.scenario.service(TCP4_SVC), &t.flow_key(), true)
            .unwrap();
        assert!(choice.deadman && choice.group == GROUP_STABLE);
        check(
            &lab,
            &fixture(
                "stale heartbeat, weight 10000",
                t.frame(),
                XDP_TX,
                Output::ToBackend(choice.backend),
                &[Tx, FlowMiss, DeadmanFallback],
            ),
        );
        let t = Tuple::tcp(
            client4((i % 100) as u8 + 1),
            40_000 + i,
            v4(198, 18, 0, 101),
            1001,
        );
        check(
            &lab,
            &fixture(
                "stale heartbeat, stable group empty",
                t.frame(),
                XDP_DROP,
                Output::Unchanged,
                &[DropNoBackend, FlowMiss, DeadmanFallback],
            ),
        );
    }
    let st = lab.dataplane.service_stats(TCP4_SVC).unwrap();
    assert_eq!((st.new_flows, st.deadman_fallback), ([100, 0], 100));

    // A fresh heartbeat restores the weight for new flows.
    let control = &mut lab.scenario.service_mut(TCP4_SVC).control;
    control.heartbeat_ns = monotonic_ns();
    control.heartbeat_timeout_ns = 60_000_000_000;
    lab.scenario.update_control(&mut lab.dataplane, TCP4_SVC);
    let t = tcp4(201, 41_000, 80);
    let choice = lab
        .scenario
        .choose(lab.scenario.service(TCP4_SVC), &t.flow_key(), false)
        .unwrap();
    assert_eq!(choice.group, GROUP_CANARY);
    check(
        &lab,
        &fixture(
            "fresh heartbeat",
            t.frame(),
            XDP_TX,
            Output::ToBackend(choice.backend),
            &[Tx, FlowMiss],
        ),
    );
    // A timeout of 0 disables the switch even with an ancient heartbeat.
    let control = &mut lab.scenario.service_mut(TCP4_SVC).control;
    control.heartbeat_ns = 1;
    control.heartbeat_timeout_ns = 0;
    lab.scenario.update_control(&mut lab.dataplane, TCP4_SVC);
    let t = tcp4(202, 41_001, 80);
    let choice = lab
        .scenario
        .choose(lab.scenario.service(TCP4_SVC), &t.flow_key(), false)
        .unwrap();
    check(
        &lab,
        &fixture(
            "dead-man disabled",
            t.frame(),
            XDP_TX,
            Output::ToBackend(choice.backend),
            &[Tx, FlowMiss],
        ),
    );
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

/// The first segment of a new connection that reuses an old connection's 5-tuple (the backend
/// closed first, so the client has no `TIME_WAIT` and reuses its port): the SYN is balanced
/// afresh by the current weight and replaces the old entry; the connection's later segments
/// follow the new entry.
#[test]
fn syn_reusing_a_5_tuple_starts_a_new_flow() {
    let mut s = scenario();
    s.service_mut(TCP4_SVC).control.canary_weight = 0;
    let mut lab = Lab::with(s, LoadOptions::default());
    let t = tcp4(9, 45_000, 80);
    let key = t.flow_key();
    let choose = |lab: &Lab, deadman: bool| {
        lab.scenario
            .choose(lab.scenario.service(TCP4_SVC), &key, deadman)
            .expect("a backend")
    };
    let old = choose(&lab, false);
    assert_eq!(old.group, GROUP_STABLE);
    check(
        &lab,
        &fixture(
            "first connection: SYN at weight 0",
            t.frame(),
            XDP_TX,
            Output::ToBackend(old.backend),
            &[Tx, FlowMiss],
        ),
    );
    let first_entry = lab.dataplane.flow(&key).unwrap().expect("flow entry");

    // Promoted to 100%: the first connection keeps its backend.
    lab.scenario.service_mut(TCP4_SVC).control.canary_weight = BUCKETS;
    lab.scenario.update_control(&mut lab.dataplane, TCP4_SVC);
    check(
        &lab,
        &fixture(
            "first connection: ACK after the promotion",
            t.ack_frame(),
            XDP_TX,
            Output::ToBackend(old.backend),
            &[Tx, FlowHit],
        ),
    );
    // A SYN with ACK set is not a connection's first segment: it follows the table.
    check(
        &lab,
        &fixture(
            "SYN+ACK of the 5-tuple follows the table",
            t.segment(TCP_SYN | TCP_ACK, b""),
            XDP_TX,
            Output::ToBackend(old.backend),
            &[Tx, FlowHit],
        ),
    );

    // (a) The same 5-tuple opens a new connection: balanced by the current weight (canary),
    // counted as a new flow, and its entry replaces the old one.
    let new = choose(&lab, false);
    assert_eq!(new.group, GROUP_CANARY);
    check(
        &lab,
        &fixture(
            "second connection: SYN reusing the 5-tuple at weight 10000",
            t.frame(),
            XDP_TX,
            Output::ToBackend(new.backend),
            &[Tx, FlowMiss],
        ),
    );
    let entry = lab.dataplane.flow(&key).unwrap().expect("flow entry");
    assert_eq!((entry.backend, entry.group), (new.backend, GROUP_CANARY));
    assert!(
        entry.created_ns > first_entry.created_ns,
        "the entry is the new connection's"
    );
    assert_eq!(
        lab.dataplane.flow_count().unwrap(),
        1,
        "replaced, not added"
    );
    // (b) The new connection's ACK follows the new entry.
    check(
        &lab,
        &fixture(
            "second connection: ACK follows the new entry",
            t.ack_frame(),
            XDP_TX,
            Output::ToBackend(new.backend),
            &[Tx, FlowHit],
        ),
    );
    let stats = lab.dataplane.service_stats(TCP4_SVC).unwrap();
    assert_eq!(stats.new_flows, [1, 1]);
    assert_eq!(
        lab.dataplane.backend_stats(new.backend).unwrap().new_flows,
        1
    );

    // The dead-man switch applies to a reused 5-tuple too: a stale heartbeat sends the third
    // connection to stable although the table holds a canary entry.
    let control = &mut lab.scenario.service_mut(TCP4_SVC).control;
    control.heartbeat_ns = 1;
    control.heartbeat_timeout_ns = 1_000_000_000;
    lab.scenario.update_control(&mut lab.dataplane, TCP4_SVC);
    check(
        &lab,
        &fixture(
            "second connection: ACK keeps its canary backend under the dead-man switch",
            t.ack_frame(),
            XDP_TX,
            Output::ToBackend(new.backend),
            &[Tx, FlowHit],
        ),
    );
    let third = choose(&lab, true);
    assert!(third.deadman && third.group == GROUP_STABLE);
    check(
        &lab,
        &fixture(
            "third connection: SYN reusing the 5-tuple with a stale heartbeat",
            t.frame(),
            XDP_TX,
            Output::ToBackend(third.backend),
            &[Tx, FlowMiss, DeadmanFallback],
        ),
    );
    check(
        &lab,
        &fixture(
            "third connection: ACK follows the stable entry",
            t.ack_frame(),
            XDP_TX,
            Output::ToBackend(third.backend),
            &[Tx, FlowHit],
        ),
    );

    // A SYN whose chosen group has no backend up falls back like any new flow.
    lab.scenario.service_mut(TCP4_SVC).control = ServiceControl {
        canary_weight: BUCKETS,
        ..ServiceControl::default()
    };
    lab.scenario.update_control(&mut lab.dataplane, TCP4_SVC);
    for b in [4, 5] {
        lab.scenario.backends.get_mut(&b).unwrap().flags &= !BACKEND_FLAG_UP;
        lab.scenario.update_backend(&mut lab.dataplane, b);
    }
    let fallback = choose(&lab, false);
    assert!(fallback.group_fallback && fallback.group == GROUP_STABLE);
    check(
        &lab,
        &fixture(
            "fourth connection: SYN, canary group down",
            t.frame(),
            XDP_TX,
            Output::ToBackend(fallback.backend),
            &[Tx, FlowMiss, GroupFallback],
        ),
    );
}

/// UDP has no connection start: a UDP flow stays on its backend across weight changes.
#[test]
fn udp_flows_keep_their_backend_across_weight_changes() {
    let mut s = scenario();
    s.service_mut(UDP4_SVC).control.canary_weight = 0;
    let mut lab = Lab::with(s, LoadOptions::default());
    let u = Tuple::udp(client4(9), 45_000, vip4(), 53);
    let first = expected_backend(&lab, UDP4_SVC, &u);
    check(
        &lab,
        &fixture(
            "UDP at weight 0",
            u.frame(),
            XDP_TX,
            Output::ToBackend(first),
            &[Tx, FlowMiss],
        ),
    );
    lab.scenario.service_mut(UDP4_SVC).control.canary_weight = BUCKETS;
    lab.scenario.update_control(&mut lab.dataplane, UDP4_SVC);
    assert_ne!(expected_backend(&lab, UDP4_SVC, &u), first);
    check(
        &lab,
        &fixture(
            "UDP after the weight moved its bucket to canary",
            u.frame(),
            XDP_TX,
            Output::ToBackend(first),
            &[Tx, FlowHit],
        ),
    );
}
