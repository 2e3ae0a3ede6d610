//! Routed backends (`cargo xtask lab up --routed`, `forwarding = "ipip"`): the backends sit in
//! `198.19.100.0/24` and `2001:db8:100::/64` behind a router namespace, the balancer encapsulates
//! IPv4-in-IPv4 or IPv6-in-IPv6 to them and each backend decapsulates with the object's
//! `canary_decap` program. The promotion (over either VIP), the error-spike rollback and flow
//! safety behave as with `l2`; full-size requests of either family pass with the lab's MSS
//! clamp (`advmss 1440`, IPv6 `1400`) and are dropped and counted without it.

mod e2e_support;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use canary_lab::deployment::{Deployment, DeploymentSpec};
use canary_lab::lab::{LabSpec, ROUTED_SUBNET, ROUTED_SUBNET6};
use canary_lab::loadgen::LoadSpec;
use canary_userspace::judge::Reason;
use e2e_support::{cli_ok, new_conn_load, start, totals, vip, wait_status, Background};

fn routed_spec(prefix: char) -> DeploymentSpec {
    let mut spec = DeploymentSpec::new(LabSpec::unique_tag(prefix));
    spec.lab.routed = true;
    spec.lab.clients = 2;
    spec.lab.stable = 2;
    spec.lab.canary = 2;
    spec.lab.client_extra_addresses = 20;
    spec.syn_replace_after = "0s".into();
    spec
}

/// `canary_xdp_packets_total{outcome=...}` from the daemon's /metrics.
fn outcome(d: &Deployment, name: &str) -> u64 {
    let (code, body) = d
        .admin_http("GET", "/metrics", None, None)
        .expect("GET /metrics");
    assert_eq!(code, 200, "{body}");
    let needle = format!("canary_xdp_packets_total{{outcome=\"{name}\"}} ");
    body.lines()
        .find_map(|l| l.strip_prefix(&needle))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// A healthy canary promoted from the start to 100 % under new connections from every address
/// of client 0, over the IPv4 or the IPv6 VIP: no request may fail.
fn promotion_without_a_failed_request(ipv6: bool) {
    let mut spec = routed_spec(if ipv6 { 'v' } else { 'r' });
    spec.ipv6 = ipv6;
    let d = start(spec);
    let (s, _) = wait_status(&d, "every backend up", Duration::from_secs(15), |s| {
        s.backends.iter().all(|b| b.up)
    });
    // The backends are named by their address in the routed subnet of the VIP's family.
    assert_eq!(s.backends.len(), d.lab.backends().count());
    for b in &s.backends {
        let node = d
            .lab
            .backends()
            .find(|n| n.name == b.name)
            .expect("a lab backend");
        let want = if ipv6 {
            IpAddr::V6(node.address6)
        } else {
            IpAddr::V4(node.address)
        };
        assert_eq!(b.address.parse::<IpAddr>(), Ok(want), "{b:?}");
        let routed = match want {
            IpAddr::V4(a) => a.octets()[..3] == ROUTED_SUBNET.octets()[..3],
            IpAddr::V6(a) => a.segments()[..4] == ROUTED_SUBNET6.segments()[..4],
        };
        assert!(
            routed,
            "backend {} is not in the routed subnet: {want}",
            b.name
        );
    }

    let mut load = new_conn_load(&d, &d.lab.clients()[0], 0, 21);
    load.interval = Duration::from_millis(40);
    let (status, reports) = std::thread::scope(|scope| {
        let bg = Background::start(scope, &d, &load, Duration::from_secs(2));
        let (s, _) = wait_status(&d, "promotion to 100%", Duration::from_mins(2), |s| {
            s.phase == "promoted" || s.phase == "rolled_back"
        });
        (s, bg.finish())
    });
    let (requests, ok, failed, transport, http) = totals(&reports);
    println!(
        "{} VIP, phase {}: {requests} requests, {ok} ok, {failed} failed ({transport} transport, \
         {http} HTTP); decisions {:#?}",
        vip(&d),
        status.phase,
        e2e_support::decisions(&status)
    );
    for r in reports.iter().filter(|r| r.failed > 0) {
        println!("failures {:?}: {:?}", r.failures, r.failure_samples);
    }
    assert_eq!(status.phase, "promoted");
    assert!(requests > 500, "too little load to judge: {requests}");
    assert_eq!(failed, 0, "no request fails during a routed promotion");
    assert_eq!(outcome(&d, "drop_tunnel_no_route"), 0);
    assert_eq!(outcome(&d, "drop_tunnel_too_big"), 0);
    assert!(outcome(&d, "tx") > 0);
}

#[test]
fn routed_canary_is_promoted_with_no_failed_request() {
    promotion_without_a_failed_request(false);
}

/// IPv6-in-IPv6 end to end: the IPv6 VIP's packets reach backends in `2001:db8:100::/64` behind
/// the router, decapsulated by `canary_decap`.
#[test]
fn routed_canary_on_an_ipv6_vip_is_promoted_with_no_failed_request() {
    promotion_without_a_failed_request(true);
}

#[test]
fn routed_error_spike_rolls_back() {
    let mut spec = routed_spec('s');
    spec.start = "paused".into();
    spec.poll_interval = "1s".into();
    let d = start(spec);
    cli_ok(&d, &["set-weight", "25"]);
    let mut load = new_conn_load(&d, &d.lab.clients()[0], 0, 21);
    load.interval = Duration::from_millis(20);
    let (status, reports) = std::thread::scope(|scope| {
        let bg = Background::start(scope, &d, &load, Duration::from_secs(2));
        std::thread::sleep(Duration::from_secs(4));
        for k in d.lab.canary() {
            d.fault(k, r#"{"error_rate":0.3}"#).expect("fault");
        }
        let (s, _) = wait_status(&d, "rollback", Duration::from_secs(20), |s| {
            s.phase == "rolled_back"
        });
        (s, bg.finish())
    });
    let (_, ok, failed, transport, http) = totals(&reports);
    println!("rolled back: {ok} ok, {failed} failed ({transport} transport, {http} HTTP)");
    assert_eq!(status.phase, "rolled_back");
    let decision = status.last_decision.as_ref().expect("a last decision");
    assert_eq!(decision.reason, Reason::ErrorSpike);
    assert!((status.weight_percent - 0.0).abs() < 1e-9);
    assert_eq!(transport, 0, "only the canary's injected 500s may fail");
}

#[test]
fn routed_keepalive_connections_stay_on_their_backend() {
    let mut spec = routed_spec('k');
    spec.start = "paused".into();
    spec.rollback = "drain".into();
    let d = start(spec);
    cli_ok(&d, &["set-weight", "10"]);
    let mut l = LoadSpec::new(vip(&d));
    l.new_conns = 0;
    l.keepalive = 200;
    l.keepalive_interval = Duration::from_secs(1);
    l.duration = Duration::from_secs(25);
    l.no_reconnect = true;
    l.timeout = Duration::from_secs(3);
    l.sources = d.lab.clients()[0]
        .source_addresses()
        .into_iter()
        .map(IpAddr::V4)
        .collect();
    let load = d.spawn_load(0, &l).unwrap();
    std::thread::sleep(Duration::from_secs(5));
    for w in ["50", "100"] {
        cli_ok(&d, &["set-weight", w]);
        std::thread::sleep(Duration::from_secs(3));
    }
    cli_ok(&d, &["rollback"]);
    let r = d.wait_load(load, Duration::from_mins(1)).unwrap();
    let k = &r.keep_alive_connections;
    println!(
        "{} connections, {} requests, {} failed ({:?}), moved {}, broken {}",
        k.connections, r.requests, r.failed, r.failures, k.moved, k.broken
    );
    assert_eq!(k.connections, 200);
    assert_eq!(r.failed, 0, "{:?}", r.failure_samples);
    assert_eq!(k.broken, 0);
    assert_eq!(k.moved, 0);
}

/// POSTs a `size`-byte JSON body to the VIP from client 0 (curl); the HTTP status, or the error.
fn large_post(d: &Deployment, size: usize, timeout_s: u64) -> Result<u16, String> {
    let body = format!("{{\"text\":\"{}\"}}", "great movie ".repeat(size / 12));
    let path = d.lab.state_dir().join(format!("large-{size}.json"));
    std::fs::write(&path, body).map_err(|e| e.to_string())?;
    let url = format!("http://{}/predict", vip(d));
    let out = d
        .lab
        .output_in(
            &d.lab.clients()[0].netns,
            &[
                "curl",
                "-sS",
                "-o",
                "/dev/null",
                "-m",
                &timeout_s.to_string(),
                "-w",
                "%{http_code}",
                "-H",
                "content-type: application/json",
                "--data-binary",
                &format!("@{}", path.display()),
                &url,
            ],
        )
        .map_err(|e| e.to_string())?;
    let code = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if out.status.success() {
        code.parse().map_err(|_| format!("status {code:?}"))
    } else {
        Err(format!(
            "curl failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Full-size transfers over the VIP of one family: they pass with the lab's MSS clamp without
/// any ICMP, and without it by path MTU discovery: the balancer answers the client's first
/// full-size segments (20 or 40 bytes over the MTU once encapsulated) with ICMP "fragmentation
/// needed" / "packet too big", and the client's TCP sends smaller ones.
fn full_size_transfers(ipv6: bool) {
    let mut spec = routed_spec(if ipv6 { 'n' } else { 'm' });
    spec.ipv6 = ipv6;
    let d = start(spec);
    // Large requests: many full-size segments from the client, each encapsulated.
    let t = Instant::now();
    for _ in 0..5 {
        assert_eq!(large_post(&d, 400_000, 20), Ok(200));
    }
    println!("5 requests of 400 kB to {} in {:.1?}", vip(&d), t.elapsed());
    // Responses of more than one full-size segment (direct from the backends through the
    // router, never encapsulated): the metrics page with its headers.
    for _ in 0..10 {
        let (code, body, _) = e2e_support::in_netns(&d.lab.clients()[0].netns, || {
            e2e_support::http_get(vip(&d), "/metrics", Duration::from_secs(5))
        })
        .unwrap();
        assert_eq!(code, 200);
        assert!(body.len() > 1400, "metrics page of {} bytes", body.len());
    }

    // Without the clamp the client's full-size segments (1460 bytes of IPv4 payload, 1440 of
    // IPv6) would leave at 1520 or 1540 bytes: answered, and the client lowers its path MTU to
    // the VIP. Every request passes; the answers are counted, nothing is dropped.
    d.lab.clamp_backends_mss(false).expect("MSS clamp off");
    let t = Instant::now();
    for _ in 0..5 {
        assert_eq!(large_post(&d, 400_000, 20), Ok(200));
    }
    println!(
        "without the clamp: 5 requests of 400 kB in {:.1?}",
        t.elapsed()
    );
    // The daemon exports the kernel's counters once per poll: wait for the last requests'.
    let polled = |name: &str| {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut value = outcome(&d, name);
        while value == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
            value = outcome(&d, name);
        }
        value
    };
    let answered = polled("tx_icmp_too_big");
    println!("tx_icmp_too_big {answered}");
    assert!(
        answered > 0,
        "no full-size segment was answered: did the clamp stay on?"
    );
    assert_eq!(outcome(&d, "drop_tunnel_too_big"), 0);
}

#[test]
fn full_size_transfers_pass_with_the_mss_clamp_and_by_path_mtu_discovery_without_it() {
    full_size_transfers(false);
}

#[test]
fn full_size_ipv6_transfers_pass_with_the_mss_clamp_and_by_path_mtu_discovery_without_it() {
    full_size_transfers(true);
}
