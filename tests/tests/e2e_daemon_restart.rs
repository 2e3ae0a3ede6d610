//! The daemon dies mid-rollout. Killed with SIGKILL and restarted: no request fails meanwhile
//! and the rollout resumes at the same step. Killed and not restarted: once the heartbeat is
//! older than `heartbeat_timeout`, the kernel sends new flows only to stable.

mod e2e_support;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use canary_lab::deployment::{Deployment, DeploymentSpec};
use canary_lab::lab::LabSpec;
use e2e_support::{
    cli_ok, flow_delta, flows, group_sum, load_all_clients, new_conn_load, settle_counters, start,
    totals, transport_failures,
};

fn xdp_counter(d: &Deployment, name: &str) -> u64 {
    d.status().unwrap().xdp.get(name).copied().unwrap_or(0)
}

#[test]
fn kill_9_under_load_then_restart_resumes_the_same_step_without_failures() {
    let mut spec = DeploymentSpec::new(LabSpec::unique_tag('r'));
    spec.lab.clients = 2;
    spec.lab.stable = 2;
    spec.lab.canary = 2;
    spec.lab.client_extra_addresses = 20;
    spec.start = "paused".into();
    // Long enough that a restart slowed by a loaded machine still reads the step it left.
    spec.interval = "20s".into();
    let mut d = start(spec);
    cli_ok(&d, &["set-weight", "25"]);
    cli_ok(&d, &["resume"]);
    let before = d.service_status().unwrap();
    println!(
        "before: phase {} step {:?} weight {} paused {}",
        before.phase, before.step, before.weight_percent, before.paused
    );

    // New connections and keep-alive connections for 30 s from both clients.
    let procs: Vec<_> = (0..2)
        .map(|i| {
            let mut l = new_conn_load(&d, &d.lab.clients()[i], 0, 21);
            l.requests = None;
            l.duration = Duration::from_secs(30);
            l.interval = Duration::from_millis(20);
            l.keepalive = 40;
            l.keepalive_interval = Duration::from_millis(200);
            l.seed = i as u64 + 1;
            l.sources = d.lab.clients()[i]
                .source_addresses()
                .into_iter()
                .map(IpAddr::V4)
                .collect();
            d.spawn_load(i, &l).unwrap()
        })
        .collect();
    std::thread::sleep(Duration::from_secs(3));
    let killed = d.kill_daemon().expect("daemon running");
    let gap = Instant::now();
    println!("daemon pid {} killed with SIGKILL", killed.pid());
    std::thread::sleep(Duration::from_secs(5));
    d.start_daemon()
        .unwrap_or_else(|e| panic!("restart: {e}\nprevious log:\n{}", killed.log_tail(30)));
    let gap = gap.elapsed();
    let after = d.service_status().unwrap();
    println!(
        "restarted after {:.1}s: phase {} step {:?} weight {} paused {}; {}",
        gap.as_secs_f64(),
        after.phase,
        after.step,
        after.weight_percent,
        after.paused,
        d.daemon_log()
            .lines()
            .find(|l| l.contains("re-attached") || l.contains("XDP program attached"))
            .unwrap_or("(no attach line)")
    );
    assert_eq!(after.phase, "stepping");
    assert_eq!(after.step, before.step);
    e2e_support::assert_weight(&after, 25.0);
    assert!(!after.paused);

    // The rollout goes on from there: the next evaluation steps up.
    let (next, waited) = e2e_support::wait_status(
        &d,
        "the next step after the restart",
        Duration::from_secs(45),
        |s| s.weight_percent > 25.0 || s.phase == "rolled_back",
    );
    println!(
        "{:.1}s after the restart: phase {} weight {} ({})",
        waited.as_secs_f64(),
        next.phase,
        next.weight_percent,
        e2e_support::last_message(&next)
    );
    assert_eq!(next.phase, "stepping");

    let reports: Vec<_> = procs
        .into_iter()
        .map(|p| d.wait_load(p, Duration::from_mins(1)).unwrap())
        .collect();
    let (requests, ok, failed, transport, http) = totals(&reports);
    let moved: u64 = reports.iter().map(|r| r.keep_alive_connections.moved).sum();
    let broken: u64 = reports
        .iter()
        .map(|r| r.keep_alive_connections.broken)
        .sum();
    println!(
        "clients over 30 s: {requests} requests, {ok} ok, {failed} failed ({transport} \
         connection-level, {http} HTTP); keep-alive moved {moved} broken {broken}; versions {:?}",
        e2e_support::merge_versions(&reports)
    );
    assert_eq!(
        failed,
        0,
        "{:?}",
        reports
            .iter()
            .map(|r| &r.failure_samples)
            .collect::<Vec<_>>()
    );
    assert_eq!((moved, broken), (0, 0));
}

#[test]
fn dead_man_switch_sends_new_flows_to_stable_after_the_heartbeat_timeout() {
    let mut spec = DeploymentSpec::new(LabSpec::unique_tag('m'));
    spec.lab.clients = 2;
    spec.lab.stable = 2;
    spec.lab.canary = 2;
    spec.lab.client_extra_addresses = 20;
    spec.start = "paused".into();
    spec.heartbeat_timeout = "3s".into();
    // A connection that reuses the 5-tuple of a canary flow of the last seconds is a new
    // connection here (the load generator reuses ports that fast): with the default
    // `syn_replace_after` (5 s) its SYN would be taken for a retransmission of the old one and
    // follow it to the canary.
    spec.syn_replace_after = "0s".into();
    // Holds at its step for lack of samples: the rollout is mid-way when the daemon dies.
    spec.min_samples = 1_000_000_000;
    let mut d = start(spec);
    cli_ok(&d, &["set-weight", "50"]);
    cli_ok(&d, &["resume"]);
    settle_counters();
    let before = flows(&d);
    let fallback_before = xdp_counter(&d, "deadman_fallback");

    let killed = d.kill_daemon().expect("daemon running");
    let t0 = Instant::now();
    // Right after the kill the weight still holds (the heartbeat is fresh).
    let early = d
        .load(0, &new_conn_load(&d, &d.lab.clients()[0], 300, 21))
        .unwrap();
    let early_at = t0.elapsed();
    let early_v2 = early.versions.get("v2").copied().unwrap_or(0);
    println!(
        "daemon pid {} killed; within {:.2}s: {} connections, v2 {early_v2}",
        killed.pid(),
        early_at.as_secs_f64(),
        early.ok
    );
    std::thread::sleep(Duration::from_millis(4500).saturating_sub(t0.elapsed()));
    let late = load_all_clients(&d, &new_conn_load(&d, &d.lab.clients()[0], 1500, 21));
    let late_versions = e2e_support::merge_versions(&late);
    let (requests, ok, failed, _, _) = totals(&late);
    println!(
        "from +4.5s (timeout 3s): {requests} connections, {ok} ok, {failed} failed, versions \
         {late_versions:?}"
    );

    // Restart only to read the kernel counters (they span the whole time the daemon was away).
    d.start_daemon().unwrap();
    let delta = flow_delta(&before, &flows(&d));
    let fallback = xdp_counter(&d, "deadman_fallback") - fallback_before;
    println!("kernel while the daemon was away: new flows {delta:?}, deadman_fallback {fallback}");
    assert!(
        early_v2 > 0,
        "before the timeout the canary still gets new flows"
    );
    assert_eq!(failed, 0);
    assert_eq!(late.iter().map(transport_failures).sum::<u64>(), 0);
    assert!(
        group_sum(&delta, "k") <= early_v2,
        "the canary got {} new flows, more than the {early_v2} before the timeout",
        group_sum(&delta, "k")
    );
    assert!(fallback > 0, "the dead-man fallback was counted");
    // Connections that reuse the 5-tuple of an earlier canary flow must not reach the canary:
    // their SYN starts a new flow, which the dead-man switch sends to stable.
    let reused = (early.ok + ok).saturating_sub(group_sum(&delta, "k") + group_sum(&delta, "s"));
    assert_eq!(
        late_versions.get("v2"),
        None,
        "answers from the canary after the heartbeat timeout ({reused} connections matched an \
         existing flow-table entry instead of counting as new flows)"
    );

    // With the daemon back, the heartbeat is fresh and the canary takes its share again.
    std::thread::sleep(Duration::from_secs(2));
    let back = d
        .load(0, &new_conn_load(&d, &d.lab.clients()[0], 1000, 21))
        .unwrap();
    println!("daemon back: versions {:?}", back.versions);
    assert!(back.version_share("v2") > 0.3);
}
