//! Backends failing during a rollout. A canary backend that dies leaves its table within 3 s
//! and gets no new flows; when the whole canary group is gone its metrics are missing and the
//! configured policy decides. A backend whose metrics endpoint fails makes the rollout hold (or
//! roll back, as configured); it never promotes on missing data.

mod e2e_support;

use std::time::{Duration, Instant};

use canary_lab::deployment::{Deployment, DeploymentSpec};
use canary_lab::lab::LabSpec;
use canary_userspace::api::ServiceStatus;
use canary_userspace::judge::Reason;
use e2e_support::{
    backend, cli_ok, decisions, flows, last_message, new_conn_load, start, totals, Background,
};

/// The reason of the last decision, if there is one.
fn last_reason(s: &ServiceStatus) -> Option<Reason> {
    s.last_decision.as_ref().map(|d| d.reason)
}

/// Waits until `name` is out of its table; returns how long it took and its counter then.
fn wait_down(d: &Deployment, name: &str, since: Instant) -> (Duration, u64) {
    loop {
        let s = d.service_status().unwrap();
        let b = backend(&s, name);
        if !b.up {
            println!(
                "{name} down after {:.2}s: {:?}",
                since.elapsed().as_secs_f64(),
                b.down_reason
            );
            return (since.elapsed(), b.new_flows);
        }
        assert!(
            since.elapsed() < Duration::from_secs(10),
            "{name} never marked down"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn dead_canary_backend_leaves_its_table_and_the_missing_canary_follows_the_policy() {
    let mut spec = DeploymentSpec::new(LabSpec::unique_tag('d'));
    spec.lab.clients = 2;
    spec.lab.stable = 2;
    spec.lab.canary = 2;
    spec.lab.client_extra_addresses = 20;
    spec.start = "paused".into();
    spec.interval = "2s".into();
    spec.min_samples = 1_000_000_000;
    spec.metrics_missing = "rollback".into();
    spec.metrics_missing_intervals = 2;
    let d = start(spec);
    cli_ok(&d, &["set-weight", "50"]);
    cli_ok(&d, &["resume"]);

    let mut load = new_conn_load(&d, &d.lab.clients()[0], 0, 21);
    load.interval = Duration::from_millis(20);
    let k0 = d.lab.canary()[0].clone();
    let k1 = d.lab.canary()[1].clone();
    let reports = std::thread::scope(|scope| {
        let bg = Background::start(scope, &d, &load, Duration::from_secs(2));
        std::thread::sleep(Duration::from_secs(3));

        // One canary backend dies (the model exits right after answering).
        d.fault(&k0, r#"{"crash":true}"#).unwrap();
        let t0 = Instant::now();
        let (took, k0_flows) = wait_down(&d, "k0", t0);
        assert!(
            took <= Duration::from_secs(3),
            "k0 left its table after {took:?}"
        );
        let k1_before = flows(&d)["k1"];
        std::thread::sleep(Duration::from_secs(4));
        let s = d.service_status().unwrap();
        let after = flows(&d);
        println!(
            "4 s later: k0 new flows {k0_flows} -> {}, k1 {k1_before} -> {}; phase {} weight {}; {}",
            after["k0"],
            after["k1"],
            s.phase,
            s.weight_percent,
            last_message(&s)
        );
        assert_eq!(after["k0"], k0_flows, "new flows reached the dead k0");
        assert!(
            after["k1"] > k1_before,
            "the other canary backend takes the canary's share"
        );
        assert_eq!(
            s.phase, "stepping",
            "one dead canary backend alone is not a verdict"
        );

        // The whole canary group dies: no canary metrics at all -> metrics_missing = rollback.
        d.fault(&k1, r#"{"crash":true}"#).unwrap();
        let t1 = Instant::now();
        let (took, _) = wait_down(&d, "k1", t1);
        assert!(
            took <= Duration::from_secs(3),
            "k1 left its table after {took:?}"
        );
        let (s, _) = e2e_support::wait_status(
            &d,
            "rollback on missing canary metrics",
            Duration::from_secs(20),
            |s| s.phase == "rolled_back",
        );
        println!(
            "canary group gone: rolled back {:.1}s after k1 died: {} ({:?})",
            t1.elapsed().as_secs_f64(),
            last_message(&s),
            last_reason(&s)
        );
        for e in decisions(&s) {
            println!("  {e}");
        }
        assert_eq!(last_reason(&s), Some(Reason::MetricsMissing));
        bg.finish()
    });
    let (requests, ok, failed, transport, http) = totals(&reports);
    println!(
        "clients: {requests} requests, {ok} ok, {failed} failed ({transport} connection-level \
         while dead backends were still in the table, {http} HTTP)"
    );
    assert_eq!(http, 0);
}

fn metrics_down(policy: &str, tag: char) {
    let mut spec = DeploymentSpec::new(LabSpec::unique_tag(tag));
    spec.lab.clients = 1;
    spec.lab.stable = 2;
    spec.lab.canary = 1;
    spec.lab.client_extra_addresses = 20;
    spec.start = "paused".into();
    spec.interval = "2s".into();
    spec.min_samples = 200;
    spec.metrics_missing = policy.into();
    spec.metrics_missing_intervals = 2;
    let d = start(spec);
    cli_ok(&d, &["set-weight", "25"]);
    let k0 = d.lab.canary()[0].clone();
    d.fault(&k0, r#"{"metrics_failing":true}"#).unwrap();

    let mut load = new_conn_load(&d, &d.lab.clients()[0], 0, 21);
    load.interval = Duration::from_millis(10);
    std::thread::scope(|scope| {
        let bg = Background::start(scope, &d, &load, Duration::from_secs(2));
        cli_ok(&d, &["resume"]);
        let t0 = Instant::now();
        let mut max_weight = 0.0_f64;
        let mut last = None;
        // Five evaluation intervals with enough samples that a healthy canary would step up.
        while t0.elapsed() < Duration::from_secs(11) {
            let s = d.service_status().unwrap();
            max_weight = max_weight.max(s.weight_percent);
            let done = s.phase == "rolled_back";
            last = Some(s);
            if done {
                break;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        let last = last.expect("a status");
        println!(
            "metrics_missing = {policy}: after {:.1}s phase {} weight {} (highest {max_weight}); \
             k0 metrics_ok {}",
            t0.elapsed().as_secs_f64(),
            last.phase,
            last.weight_percent,
            backend(&last, "k0").metrics_ok
        );
        for e in decisions(&last) {
            println!("  {e}");
        }
        assert!(max_weight <= 25.0, "promoted on missing metrics");
        assert!(
            !decisions(&last).iter().any(|e| e.contains("healthy")),
            "a healthy verdict on missing metrics"
        );
        assert!(!backend(&last, "k0").metrics_ok);
        if policy == "hold" {
            assert_eq!(last.phase, "stepping");
            e2e_support::assert_weight(&last, 25.0);
            assert_eq!(last_reason(&last), Some(Reason::MetricsMissing));
            // Metrics back: the same rollout goes on and steps up.
            d.fault(&k0, r#"{"metrics_failing":false}"#).unwrap();
            let (s, waited) = e2e_support::wait_status(
                &d,
                "a step up once the metrics are back",
                Duration::from_secs(30),
                |s| s.weight_percent > 25.0 || s.phase == "rolled_back",
            );
            println!(
                "metrics back: {:.1}s later phase {} weight {} ({})",
                waited.as_secs_f64(),
                s.phase,
                s.weight_percent,
                last_message(&s)
            );
            assert_eq!(s.phase, "stepping");
        } else {
            assert_eq!(last.phase, "rolled_back");
            e2e_support::assert_weight(&last, 0.0);
            assert_eq!(last_reason(&last), Some(Reason::MetricsMissing));
        }
        let reports = bg.finish();
        let (requests, ok, failed, _, _) = totals(&reports);
        println!("clients: {requests} requests, {ok} ok, {failed} failed");
        assert_eq!(failed, 0);
    });
}

#[test]
fn metrics_endpoint_down_holds_and_never_promotes() {
    metrics_down("hold", 'h');
}

#[test]
fn metrics_endpoint_down_rolls_back_when_configured() {
    metrics_down("rollback", 'b');
}
