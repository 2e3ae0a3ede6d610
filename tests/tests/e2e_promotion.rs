//! A healthy canary is promoted step by step to 100%, after which the stable group receives
//! no new flows (kernel counters) and every answer comes from the new version.

mod e2e_support;

use std::time::{Duration, Instant};

use canary_lab::deployment::DeploymentSpec;
use canary_lab::lab::LabSpec;
use canary_userspace::rollout::DecisionAction;
use e2e_support::{
    cli_ok, flow_delta, flows, group_sum, load_all_clients, new_conn_load, settle_counters, start,
    totals, wait_status, Background,
};

#[test]
fn healthy_canary_reaches_100_percent_and_stable_gets_no_new_flows() {
    let mut spec = DeploymentSpec::new(LabSpec::unique_tag('p'));
    spec.lab.clients = 2;
    spec.lab.stable = 3;
    spec.lab.canary = 2;
    // Many client addresses, as real traffic has: each address opens a few hundred connections.
    spec.lab.client_extra_addresses = 40;
    // Every new connection follows the weight, even one that reuses the 5-tuple of a connection
    // that ended a moment ago (the load generator reuses ports within seconds); the default
    // `syn_replace_after` (5 s) would send such a SYN after the previous connection's backend.
    spec.syn_replace_after = "0s".into();
    let d = start(spec);
    let t0 = Instant::now();

    // One worker per source address (a worker keeps its address).
    let mut load = new_conn_load(&d, &d.lab.clients()[0], 0, 41);
    load.interval = Duration::from_millis(40);
    let (promoted, background) = std::thread::scope(|scope| {
        let bg = Background::start(scope, &d, &load, Duration::from_secs(2));
        let (s, _) = wait_status(&d, "promotion to 100%", Duration::from_mins(2), |s| {
            s.phase == "promoted" || s.phase == "rolled_back"
        });
        (s, bg.finish())
    });
    let took = t0.elapsed();
    let events = e2e_support::decisions(&promoted);
    println!("phase {} after {took:.1?}; decisions:", promoted.phase);
    for e in &events {
        println!("  {e}");
    }
    let (requests, ok, failed, transport, status) = totals(&background);
    println!(
        "load during the rollout: {requests} requests, {ok} ok, {failed} failed \
         ({transport} transport, {status} HTTP status)"
    );
    assert_eq!(promoted.phase, "promoted", "{events:#?}");
    assert!((promoted.weight_percent - 100.0).abs() < 1e-9);
    let weights: Vec<f64> = promoted
        .events
        .iter()
        .filter(|e| e.action == DecisionAction::Promote)
        .map(|e| e.to.percent())
        .collect();
    println!("promote decisions to: {weights:?}");
    for r in &background {
        if r.failed > 0 {
            println!("failures {:?}: {:?}", r.failures, r.failure_samples);
        }
    }
    assert_eq!(failed, 0, "no request fails during a healthy rollout");

    // After the promotion: stable gets no new flows at all.
    settle_counters();
    let before = flows(&d);
    let reports = load_all_clients(&d, &new_conn_load(&d, &d.lab.clients()[0], 2500, 41));
    settle_counters();
    let delta = flow_delta(&before, &flows(&d));
    let versions = e2e_support::merge_versions(&reports);
    let (requests, ok, failed, _, _) = totals(&reports);
    println!(
        "after promotion: {requests} requests, {ok} ok, {failed} failed; versions {versions:?}; \
         kernel new flows per backend {delta:?}"
    );
    println!("{}", cli_ok(&d, &["status"]));
    assert_eq!(failed, 0);
    assert_eq!(
        group_sum(&delta, "s"),
        0,
        "stable received new flows: {delta:?}"
    );
    // Connections that reuse the 5-tuple of an earlier stable flow must not reach stable: their
    // SYN starts a new flow. Any answered connection the kernel did not count shows up here.
    let reused = ok.saturating_sub(group_sum(&delta, "k") + group_sum(&delta, "s"));
    assert_eq!(
        versions.get("v1"),
        None,
        "answers from v1 after promotion ({reused} connections matched an existing flow-table \
         entry instead of counting as new flows)"
    );
    assert!(
        group_sum(&delta, "k") >= ok,
        "canary counted {} new flows for {ok} answered connections",
        group_sum(&delta, "k")
    );
    assert_eq!(versions.get("v2").copied(), Some(ok));
}
