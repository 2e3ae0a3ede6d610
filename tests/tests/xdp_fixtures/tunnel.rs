//! `forwarding = "ipip"`: the frame leaves IP-in-IP encapsulated (IPv4 in IPv4, IPv6 in IPv6)
//! to the next hop the kernel's FIB names; a packet over the egress MTU is answered with ICMP
//! "fragmentation needed" / "packet too big" (or dropped and counted when it must not be
//! answered), and what else the FIB refuses (no route, no neighbour) is dropped and counted.
//!
//! `bpf_fib_lookup` reads the routes of the namespace the frame arrived in, so each test builds
//! a namespace of its own (`cnry-<tag>-fib`: veths, addresses, routes, permanent neighbours),
//! enters it on the test thread and runs the program as if the frame arrived on its veth.

use std::fs::File;
use std::os::fd::AsFd as _;
use std::process::Command;
use std::time::{Duration, Instant};

use canary_common::Counter::{DropTunnelNoRoute, DropTunnelTooBig, Tx, TxIcmpTooBig};
use canary_common::{
    Backend, Tunnel, BACKEND_FLAG_UP, GROUP_STABLE, ICMP_ANSWERS_PER_SECOND, PROTO_TCP,
    SERVICE_FLAG_IPIP,
};
use canary_lab::lab::LabSpec;
use canary_tests::packet::{
    icmp_error, internet_checksum, ipv4_header_checksum, v4, v6, with_dont_fragment, Addr, Tuple,
    ICMP_DEST_UNREACHABLE, ICMP_FRAGMENTATION_NEEDED,
};
use canary_tests::scenario::{Scenario, ServiceSpec};
use canary_tests::xdp::{action_name, LoadOptions, XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX};
use nix::sched::{setns, CloneFlags};

use crate::support::Lab;

const VIP4: [u8; 4] = [198, 18, 0, 100];
const SVC4: u32 = 0;
const SVC6: u32 = 1;
/// Backends of the IPv4 service (indices) and their outer addresses.
const ROUTED4: u32 = 1;
const NO_ROUTE4: u32 = 2;
const NO_NEIGH4: u32 = 3;
const OTHER_PORT4: u32 = 4;
const ROUTED6: u32 = 5;
const SOURCE4: [u8; 4] = [198, 18, 200, 1];
const GATEWAY_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0xfe];
const OTHER_GATEWAY_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x02, 0xfe];
const LB_IF_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];
const LB_OTHER_IF_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x02, 0x01];

fn source6() -> [u8; 16] {
    ip6("2001:db8:200::1")
}

fn ip6(s: &str) -> [u8; 16] {
    s.parse::<std::net::Ipv6Addr>().unwrap().octets()
}

fn v4_map(a: [u8; 4]) -> [u8; 16] {
    Addr::V4(a).to_map()
}

/// A namespace entered by this thread, left and deleted on drop (even on failure).
struct FibNamespace {
    name: String,
    home: File,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl FibNamespace {
    fn new() -> Self {
        let name = format!("cnry-{}-fib", LabSpec::unique_tag('f'));
        let home = File::open("/proc/thread-self/ns/net").expect("own netns");
        ip(&["netns", "add", &name]);
        let ns = FibNamespace { name, home };
        ns.build();
        let target = File::open(format!("/run/netns/{}", ns.name)).expect("netns file");
        setns(target.as_fd(), CloneFlags::CLONE_NEWNET).expect("entering the test namespace");
        ns
    }

    fn build(&self) {
        let n = self.name.as_str();
        let sysctl = |kv: &str| ip(&["netns", "exec", n, "sysctl", "-q", "-w", kv]);
        sysctl("net.ipv6.conf.all.disable_ipv6=0");
        sysctl("net.ipv6.conf.default.disable_ipv6=0");
        for (a, b, mac) in [
            ("fib0", "fib1", LB_IF_MAC),
            ("fib2", "fib3", LB_OTHER_IF_MAC),
        ] {
            ip(&["-n", n, "link", "add", a, "type", "veth", "peer", "name", b]);
            ip(&["-n", n, "link", "set", a, "address", &mac_str(mac), "up"]);
            ip(&["-n", n, "link", "set", b, "up"]);
        }
        // The balancer forwards: the FIB refuses lookups on an interface that does not.
        sysctl("net.ipv4.conf.all.forwarding=1");
        sysctl("net.ipv6.conf.all.forwarding=1");
        ip(&["-n", n, "addr", "add", "198.18.200.1/24", "dev", "fib0"]);
        ip(&["-n", n, "addr", "add", "198.18.202.1/24", "dev", "fib2"]);
        ip(&[
            "-n",
            n,
            "addr",
            "add",
            "2001:db8:200::1/64",
            "dev",
            "fib0",
            "nodad",
        ]);
        // Backends behind a router on fib0, another subnet behind a router on fib2, and a
        // subnet whose gateway's MAC is unknown.
        ip(&[
            "-n",
            n,
            "route",
            "add",
            "198.19.200.0/24",
            "via",
            "198.18.200.254",
        ]);
        ip(&[
            "-n",
            n,
            "route",
            "add",
            "198.19.202.0/24",
            "via",
            "198.18.202.254",
        ]);
        ip(&[
            "-n",
            n,
            "route",
            "add",
            "198.19.203.0/24",
            "via",
            "198.18.200.253",
        ]);
        ip(&[
            "-n",
            n,
            "route",
            "add",
            "2001:db8:201::/64",
            "via",
            "2001:db8:200::fe",
        ]);
        for (addr, mac, dev) in [
            ("198.18.200.254", GATEWAY_MAC, "fib0"),
            ("198.18.202.254", OTHER_GATEWAY_MAC, "fib2"),
            ("2001:db8:200::fe", GATEWAY_MAC, "fib0"),
        ] {
            ip(&[
                "-n",
                n,
                "neigh",
                "replace",
                addr,
                "lladdr",
                &mac_str(mac),
                "dev",
                dev,
                "nud",
                "permanent",
            ]);
        }
    }

    /// The index of `ifname` in the namespace (this thread's: `/sys` would show the host's).
    fn ifindex(&self, ifname: &str) -> u32 {
        let c = std::ffi::CString::new(ifname).unwrap();
        // SAFETY: a valid NUL-terminated name.
        let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
        assert_ne!(index, 0, "{ifname} not found in {}", self.name);
        index
    }
}

impl Drop for FibNamespace {
    fn drop(&mut self) {
        let _ = setns(self.home.as_fd(), CloneFlags::CLONE_NEWNET);
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn mac_str(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Two `ipip` services, every backend alone in its own service's stable group in turn (the
/// test points the service's table at one backend at a time).
fn lab() -> Lab {
    let mut s = Scenario::new();
    let mut svc4 = ServiceSpec::new(Addr::V4(VIP4), 80, PROTO_TCP, SVC4).groups(&[ROUTED4], &[]);
    svc4.flags |= SERVICE_FLAG_IPIP;
    let mut svc6 = ServiceSpec::new(v6(0x100), 443, PROTO_TCP, SVC6).groups(&[ROUTED6], &[]);
    svc6.flags |= SERVICE_FLAG_IPIP;
    s.add_service(svc4);
    s.add_service(svc6);
    let mut lab = Lab::with(s, LoadOptions::default());
    let tunnels = [
        (ROUTED4, v4_map([198, 19, 200, 11])),
        (NO_ROUTE4, v4_map([198, 19, 250, 11])),
        (NO_NEIGH4, v4_map([198, 19, 203, 11])),
        (OTHER_PORT4, v4_map([198, 19, 202, 11])),
    ];
    for (index, dst) in tunnels {
        lab.dataplane
            .set_tunnel(
                index,
                &Tunnel {
                    dst,
                    src: v4_map(SOURCE4),
                },
            )
            .unwrap();
    }
    lab.dataplane
        .set_tunnel(
            ROUTED6,
            &Tunnel {
                dst: ip6("2001:db8:201::11"),
                src: source6(),
            },
        )
        .unwrap();
    lab
}

/// Points service `svc`'s stable group at backend `backend` only (up, of that service).
fn serve_from(lab: &mut Lab, svc: u32, backend: u32) {
    lab.scenario.service_mut(svc).stable = vec![backend];
    lab.scenario.install_or_panic(&mut lab.dataplane);
    lab.dataplane
        .set_backend(
            backend,
            &Backend {
                mac: [0; 6],
                flags: BACKEND_FLAG_UP,
                service_index: svc,
                group: GROUP_STABLE,
            },
        )
        .unwrap();
}

/// What the balancer must send for `frame`: Ethernet to the gateway, an outer IPv4 header
/// (TTL 64, protocol 4, DF as the inner packet's, valid checksum), the inner packet unchanged.
fn ipip4(frame: &[u8], src: [u8; 4], dst: [u8; 4], dmac: [u8; 6], smac: [u8; 6]) -> Vec<u8> {
    let inner = &frame[14..];
    let total = (inner.len() + 20) as u16;
    let mut ip = vec![0x45, inner[1]];
    ip.extend_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&[0, 0, inner[6] & 0x40, 0, 64, 4, 0, 0]);
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&dst);
    let sum = ipv4_header_checksum(&ip).to_be_bytes();
    ip[10] = sum[0];
    ip[11] = sum[1];
    let mut out = dmac.to_vec();
    out.extend_from_slice(&smac);
    out.extend_from_slice(&[0x08, 0x00]);
    out.extend_from_slice(&ip);
    out.extend_from_slice(inner);
    out
}

/// As [`ipip4`] for IPv6 in IPv6: version, class and flow label from the inner header, next
/// header 41, hop limit 64.
fn ipip6(frame: &[u8], src: [u8; 16], dst: [u8; 16], dmac: [u8; 6], smac: [u8; 6]) -> Vec<u8> {
    let inner = &frame[14..];
    let mut ip = inner[..4].to_vec();
    ip.extend_from_slice(&(inner.len() as u16).to_be_bytes());
    ip.extend_from_slice(&[41, 64]);
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&dst);
    let mut out = dmac.to_vec();
    out.extend_from_slice(&smac);
    out.extend_from_slice(&[0x86, 0xdd]);
    out.extend_from_slice(&ip);
    out.extend_from_slice(inner);
    out
}

/// Runs `frame` in on `ifindex`; checks action, output and the outcome counted.
fn expect(
    lab: &Lab,
    what: &str,
    frame: &[u8],
    ifindex: u32,
    action: u32,
    output: Option<&[u8]>,
    outcome: canary_common::Counter,
) {
    let before = lab.counters();
    let run = lab
        .dataplane
        .run_on_interface(frame, ifindex)
        .unwrap_or_else(|e| panic!("{what}: test run failed: {e}"));
    let after = lab.counters();
    assert_eq!(
        run.action,
        action,
        "{what}: action {} expected {}",
        action_name(run.action),
        action_name(action)
    );
    if let Some(output) = output {
        assert_eq!(run.output, output, "{what}: output frame");
    }
    assert_eq!(
        after[outcome as usize] - before[outcome as usize],
        1,
        "{what}: {} not counted",
        outcome.name()
    );
}

#[test]
fn ipv4_and_ipv6_leave_encapsulated_to_the_fib_next_hop() {
    let mut lab = lab();
    let ns = FibNamespace::new();
    let fib0 = ns.ifindex("fib0");

    let tcp = Tuple::tcp(v4(198, 18, 1, 7), 40_000, Addr::V4(VIP4), 80);
    let frame = tcp.frame();
    let want = ipip4(&frame, SOURCE4, [198, 19, 200, 11], GATEWAY_MAC, LB_IF_MAC);
    expect(&lab, "IPv4 SYN", &frame, fib0, XDP_TX, Some(&want), Tx);
    let ack = tcp.ack_frame();
    let want = ipip4(&ack, SOURCE4, [198, 19, 200, 11], GATEWAY_MAC, LB_IF_MAC);
    expect(
        &lab,
        "IPv4 ACK of the flow",
        &ack,
        fib0,
        XDP_TX,
        Some(&want),
        Tx,
    );

    let tcp6 = Tuple::tcp(v6(0x7), 40_001, v6(0x100), 443);
    let frame = tcp6.frame();
    let want = ipip6(
        &frame,
        source6(),
        ip6("2001:db8:201::11"),
        GATEWAY_MAC,
        LB_IF_MAC,
    );
    expect(&lab, "IPv6 SYN", &frame, fib0, XDP_TX, Some(&want), Tx);

    // A next hop behind another interface: redirected there, with that interface's MACs.
    serve_from(&mut lab, SVC4, OTHER_PORT4);
    let frame = Tuple::tcp(v4(198, 18, 1, 8), 40_002, Addr::V4(VIP4), 80).frame();
    let want = ipip4(
        &frame,
        SOURCE4,
        [198, 19, 202, 11],
        OTHER_GATEWAY_MAC,
        LB_OTHER_IF_MAC,
    );
    expect(
        &lab,
        "IPv4 SYN to a backend behind fib2",
        &frame,
        fib0,
        XDP_REDIRECT,
        Some(&want),
        Tx,
    );
    drop(ns);
}

#[test]
fn fib_failures_are_dropped_and_counted() {
    let mut lab = lab();
    let ns = FibNamespace::new();
    let fib0 = ns.ifindex("fib0");
    serve_from(&mut lab, SVC4, NO_ROUTE4);
    let frame = Tuple::tcp(v4(198, 18, 1, 9), 40_003, Addr::V4(VIP4), 80).frame();
    expect(
        &lab,
        "no route to the backend",
        &frame,
        fib0,
        XDP_DROP,
        Some(&frame),
        DropTunnelNoRoute,
    );
    serve_from(&mut lab, SVC4, NO_NEIGH4);
    let frame = Tuple::tcp(v4(198, 18, 1, 10), 40_004, Addr::V4(VIP4), 80).frame();
    expect(
        &lab,
        "gateway's MAC unknown",
        &frame,
        fib0,
        XDP_DROP,
        Some(&frame),
        DropTunnelNoRoute,
    );
    drop(ns);
}

/// Bytes of the too-big packet an ICMP answer quotes, from its IP header on.
const QUOTE_LEN: usize = 128;

/// The answer to a too-big IPv4 `frame`: back to its sender's MAC from the balancer's, from
/// the VIP to the sender, ICMP "fragmentation needed" naming `mtu`, quoting `QUOTE_LEN` bytes.
fn frag_needed_answer(frame: &[u8], mtu: u16) -> Vec<u8> {
    let quote = &frame[14..14 + QUOTE_LEN];
    let mut icmp = vec![ICMP_DEST_UNREACHABLE, ICMP_FRAGMENTATION_NEEDED, 0, 0, 0, 0];
    icmp.extend_from_slice(&mtu.to_be_bytes());
    let sum = internet_checksum(&[&icmp, quote]).to_be_bytes();
    icmp[2..4].copy_from_slice(&sum);
    let total = (20 + icmp.len() + quote.len()) as u16;
    let mut ip = vec![0x45, 0xc0];
    ip.extend_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&[0, 0, 0, 0, 64, 1, 0, 0]);
    ip.extend_from_slice(&frame[30..34]);
    ip.extend_from_slice(&frame[26..30]);
    let sum = ipv4_header_checksum(&ip).to_be_bytes();
    ip[10..12].copy_from_slice(&sum);
    let mut out = frame[6..12].to_vec();
    out.extend_from_slice(&frame[..6]);
    out.extend_from_slice(&[0x08, 0x00]);
    out.extend_from_slice(&ip);
    out.extend_from_slice(&icmp);
    out.extend_from_slice(quote);
    out
}

/// As [`frag_needed_answer`] for IPv6: `ICMPv6` "packet too big" (checksum over the
/// pseudo-header), hop limit 64.
fn packet_too_big_answer(frame: &[u8], mtu: u32) -> Vec<u8> {
    let quote = &frame[14..14 + QUOTE_LEN];
    let (src, dst) = (&frame[38..54], &frame[22..38]);
    let mut icmp = vec![2, 0, 0, 0];
    icmp.extend_from_slice(&mtu.to_be_bytes());
    let len = (icmp.len() + quote.len()) as u32;
    let mut pseudo = [src, dst].concat();
    pseudo.extend_from_slice(&len.to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, 58]);
    let sum = internet_checksum(&[&pseudo, &icmp, quote]).to_be_bytes();
    icmp[2..4].copy_from_slice(&sum);
    let mut out = frame[6..12].to_vec();
    out.extend_from_slice(&frame[..6]);
    out.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
    out.extend_from_slice(&(len as u16).to_be_bytes());
    out.extend_from_slice(&[58, 64]);
    out.extend_from_slice(src);
    out.extend_from_slice(dst);
    out.extend_from_slice(&icmp);
    out.extend_from_slice(quote);
    out
}

#[test]
fn packets_over_the_egress_mtu_are_answered_with_icmp_or_dropped_and_counted() {
    let lab = lab();
    let ns = FibNamespace::new();
    let fib0 = ns.ifindex("fib0");
    let tcp = Tuple::tcp(v4(198, 18, 1, 11), 40_005, Addr::V4(VIP4), 80);
    // 1480 bytes of inner packet (MSS 1440) fit a 1500-byte MTU once encapsulated.
    let fits = with_dont_fragment(&tcp.frame_with_payload(&[0x5a; 1440]), true);
    let want = ipip4(&fits, SOURCE4, [198, 19, 200, 11], GATEWAY_MAC, LB_IF_MAC);
    assert_eq!(want.len() - 14, 1500);
    expect(
        &lab,
        "1480-byte packet",
        &fits,
        fib0,
        XDP_TX,
        Some(&want),
        Tx,
    );
    // A full 1500-byte packet (MSS 1460) would leave as 1520 bytes: its sender is told to keep
    // to 1480 (the egress MTU less the outer header), from the VIP.
    let full = with_dont_fragment(&tcp.frame_with_payload(&[0x5a; 1460]), true);
    expect(
        &lab,
        "1500-byte packet, don't-fragment",
        &full,
        fib0,
        XDP_TX,
        Some(&frag_needed_answer(&full, 1480)),
        TxIcmpTooBig,
    );
    // Without don't-fragment the sender asked for fragmentation, which XDP cannot do: dropped.
    let fragmentable = with_dont_fragment(&full, false);
    expect(
        &lab,
        "1500-byte packet, fragmentable",
        &fragmentable,
        fib0,
        XDP_DROP,
        Some(&fragmentable),
        DropTunnelTooBig,
    );
    // An ICMP error is never answered with another: a too-big one is dropped. (An error about
    // the flow's reply, VIP -> client, quoting all of it and 32 bytes more: 1,472 bytes.)
    let reply_of = Tuple::tcp(v4(198, 18, 1, 12), 40_006, Addr::V4(VIP4), 80);
    let error = with_dont_fragment(
        &icmp_error(
            v4(198, 18, 77, 1),
            reply_of.dst,
            ICMP_DEST_UNREACHABLE,
            ICMP_FRAGMENTATION_NEEDED,
            [0, 0, 0x05, 0x78],
            &[reply_of.reply_packet(1_440), vec![0; 32]].concat(),
        ),
        true,
    );
    assert_eq!(error.len() - 14, 1500);
    expect(
        &lab,
        "1500-byte ICMP error about a flow",
        &error,
        fib0,
        XDP_DROP,
        Some(&error),
        DropTunnelTooBig,
    );
    // IPv6: 40 more bytes of outer header, and never fragmented on the path.
    let tcp6 = Tuple::tcp(v6(0x8), 40_006, v6(0x100), 443);
    let full6 = tcp6.frame_with_payload(&[0x5a; 1440]);
    expect(
        &lab,
        "1500-byte IPv6 packet",
        &full6,
        fib0,
        XDP_TX,
        Some(&packet_too_big_answer(&full6, 1460)),
        TxIcmpTooBig,
    );
    drop(ns);
}

/// A flood of too-big packets gets at most `ICMP_ANSWERS_PER_SECOND` answers a second from a
/// CPU; the rest are dropped and counted, never answered.
#[test]
fn icmp_answers_are_capped_per_cpu_per_second() {
    canary_tests::xdp::pin_to_cpu(0).expect("pinning the test thread: the cap is per CPU");
    let lab = lab();
    let ns = FibNamespace::new();
    let fib0 = ns.ifindex("fib0");
    let extra = 500;
    let flood = ICMP_ANSWERS_PER_SECOND + extra;
    let before = lab.counters();
    let start = Instant::now();
    for i in 0..flood {
        let sender = Tuple::tcp(v4(198, 18, 2, 1), 1_024 + i as u16, Addr::V4(VIP4), 80);
        let frame = with_dont_fragment(&sender.frame_with_payload(&[0x5a; 1460]), true);
        let run = lab
            .dataplane
            .run_on_interface(&frame, fib0)
            .expect("test run");
        assert!(
            run.action == XDP_TX || run.action == XDP_DROP,
            "packet {i}: {}",
            action_name(run.action)
        );
    }
    let took = start.elapsed();
    let after = lab.counters();
    let delta = |c: canary_common::Counter| after[c as usize] - before[c as usize];
    // One window is one second from the first answer: the whole flood must fit in it.
    assert!(
        took < Duration::from_millis(900),
        "{flood} test runs took {took:?}: too slow to stay within one window"
    );
    assert_eq!(delta(TxIcmpTooBig), u64::from(ICMP_ANSWERS_PER_SECOND));
    assert_eq!(delta(DropTunnelTooBig), u64::from(extra));
    drop(ns);
}

/// The backends' decapsulation program (`canary_decap`) undoes what the balancer did: the
/// inner packet, byte for byte, behind the frame's MACs and the inner ethertype.
#[test]
fn the_decapsulation_program_restores_the_inner_packet() {
    let lab = lab();
    let decap = |frame: &[u8]| {
        let mut out = Vec::new();
        let action = lab
            .dataplane
            .run_program_into(canary_common::maps::DECAP_PROGRAM, frame, &mut out)
            .expect("test run");
        assert_eq!(action, XDP_PASS, "{}", action_name(action));
        out
    };
    let v4_frame = Tuple::tcp(v4(198, 18, 1, 12), 40_007, Addr::V4(VIP4), 80).ack_frame();
    let v6_frame = Tuple::tcp(v6(0x9), 40_008, v6(0x100), 443).ack_frame();
    for (what, inner, outer) in [
        (
            "IPv4 in IPv4",
            &v4_frame,
            ipip4(
                &v4_frame,
                SOURCE4,
                [198, 19, 200, 11],
                GATEWAY_MAC,
                LB_IF_MAC,
            ),
        ),
        (
            "IPv6 in IPv6",
            &v6_frame,
            ipip6(
                &v6_frame,
                source6(),
                ip6("2001:db8:201::11"),
                GATEWAY_MAC,
                LB_IF_MAC,
            ),
        ),
    ] {
        let mut want = outer[..12].to_vec();
        want.extend_from_slice(&inner[12..]);
        assert_eq!(decap(&outer), want, "{what}");
    }
    // Anything else passes untouched: plain packets, IPv6 in IPv4 and IPv4 behind an outer
    // IPv6 header (not what the balancer sends).
    assert_eq!(decap(&v4_frame), v4_frame);
    assert_eq!(decap(&v6_frame), v6_frame);
    let mut mixed = ipip4(
        &v4_frame,
        SOURCE4,
        [198, 19, 200, 11],
        GATEWAY_MAC,
        LB_IF_MAC,
    );
    mixed[14 + 20] = 0x60;
    assert_eq!(decap(&mixed), mixed);
    let mut mixed6 = ipip6(
        &v6_frame,
        source6(),
        ip6("2001:db8:201::11"),
        GATEWAY_MAC,
        LB_IF_MAC,
    );
    mixed6[14 + 40] = 0x45;
    assert_eq!(decap(&mixed6), mixed6);
}
