//! IPv6 end to end: the service on the lab's IPv6 VIP, backends named by their IPv6 addresses
//! with their MACs resolved by the daemon (NDP), health probes and metrics scrapes over IPv6,
//! clients sending from many IPv6 addresses. A healthy canary is promoted to 100% with no
//! failed request, after which stable gets no new flows.

mod e2e_support;

use std::time::Duration;

use canary_lab::deployment::DeploymentSpec;
use canary_lab::lab::LabSpec;
use e2e_support::{
    flow_delta, flows, group_sum, load_all_clients, new_conn_load, settle_counters, start, totals,
    wait_status, Background,
};

#[test]
fn healthy_canary_on_an_ipv6_vip_is_promoted_without_a_failed_request() {
    let mut spec = DeploymentSpec::new(LabSpec::unique_tag('6'));
    spec.ipv6 = true;
    spec.lab.clients = 2;
    spec.lab.stable = 2;
    spec.lab.canary = 2;
    spec.lab.client_extra_addresses = 20;
    // Every new connection follows the weight, also one reusing a recent 5-tuple.
    spec.syn_replace_after = "0s".into();
    let d = start(spec);

    // The daemon finds every backend's MAC by itself (no MAC in the config): its health probe
    // fills the neighbour table (NDP), read at the next poll.
    let (s, _) = wait_status(&d, "every backend up", Duration::from_secs(15), |s| {
        s.backends.iter().all(|b| b.up)
    });
    for b in &s.backends {
        assert!(b.address.contains(':'), "IPv6 backend address: {b:?}");
        assert!(b.up, "backend {} is not up: {:?}", b.name, b.down_reason);
    }

    let mut load = new_conn_load(&d, &d.lab.clients()[0], 0, 21);
    load.interval = Duration::from_millis(40);
    // Long-lived connections as well: each stays on its backend while the weight moves.
    load.keepalive = 10;
    let (promoted, background) = std::thread::scope(|scope| {
        let bg = Background::start(scope, &d, &load, Duration::from_secs(2));
        let (s, _) = wait_status(&d, "promotion to 100%", Duration::from_mins(2), |s| {
            s.phase == "promoted" || s.phase == "rolled_back"
        });
        (s, bg.finish())
    });
    let events = e2e_support::decisions(&promoted);
    let (requests, ok, failed, transport, status) = totals(&background);
    println!(
        "IPv6 load during the rollout: {requests} requests, {ok} ok, {failed} failed \
         ({transport} transport, {status} HTTP status); decisions {events:#?}"
    );
    for r in &background {
        if r.failed > 0 {
            println!("failures {:?}: {:?}", r.failures, r.failure_samples);
        }
    }
    assert_eq!(promoted.phase, "promoted", "{events:#?}");
    assert!(requests > 500, "too little load to judge: {requests}");
    assert_eq!(failed, 0, "no request fails during a healthy IPv6 rollout");
    let moved: u64 = background
        .iter()
        .map(|r| r.keep_alive_connections.moved)
        .sum();
    assert_eq!(moved, 0, "a keep-alive connection changed backend");

    // After the promotion every new IPv6 connection is balanced to canary, and counted by the
    // kernel: none bypassed the balancer.
    settle_counters();
    let before = flows(&d);
    let reports = load_all_clients(&d, &new_conn_load(&d, &d.lab.clients()[0], 1000, 21));
    settle_counters();
    let delta = flow_delta(&before, &flows(&d));
    let versions = e2e_support::merge_versions(&reports);
    let (_, ok, failed, _, _) = totals(&reports);
    println!("after promotion: {ok} ok, {failed} failed; {versions:?}; new flows {delta:?}");
    assert_eq!(failed, 0);
    assert_eq!(group_sum(&delta, "s"), 0, "stable got new flows: {delta:?}");
    assert_eq!(versions.get("v1"), None);
    assert!(
        group_sum(&delta, "k") >= ok,
        "canary counted {} new flows for {ok} answers: some IPv6 connections bypassed the \
         balancer",
        group_sum(&delta, "k")
    );

    // Clients reach the IPv6 VIP through the balancer's MAC only: no backend announced it.
    let lb_mac = d.lab.load_balancer().unwrap().mac.to_string();
    for c in d.lab.clients() {
        let out = d
            .lab
            .output_in(
                &c.netns,
                &["ip", "-6", "neigh", "show", &d.lab.vip6().to_string()],
            )
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains(&lb_mac),
            "client {} resolves the IPv6 VIP to another MAC than the balancer's {lb_mac}: {text}",
            c.name
        );
    }
}
