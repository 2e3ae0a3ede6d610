//! A canary that starts failing 30% of its requests at step 25% is rolled back by the error
//! spike check: within 3 s (1 s polls) it gets no new flows, and clients see no failure other
//! than the canary's own injected 500s (no refused, reset or timed-out connection).

mod e2e_support;

use std::time::{Duration, Instant};

use canary_lab::deployment::DeploymentSpec;
use canary_lab::lab::LabSpec;
use canary_userspace::judge::Reason;
use e2e_support::{cli_ok, flows, group_sum, new_conn_load, start, totals, Background};

#[test]
fn error_spike_at_25_percent_stops_new_canary_flows_within_3_seconds() {
    let mut spec = DeploymentSpec::new(LabSpec::unique_tag('e'));
    spec.lab.clients = 2;
    spec.lab.stable = 2;
    spec.lab.canary = 2;
    spec.lab.client_extra_addresses = 20;
    spec.start = "paused".into();
    spec.poll_interval = "1s".into();
    let d = start(spec);
    cli_ok(&d, &["set-weight", "25"]);

    let mut load = new_conn_load(&d, &d.lab.clients()[0], 0, 21);
    load.interval = Duration::from_millis(20);
    let (samples, switch_at, reports) = std::thread::scope(|scope| {
        let bg = Background::start(scope, &d, &load, Duration::from_secs(2));
        std::thread::sleep(Duration::from_secs(4));
        let switch_at = Instant::now();
        for k in d.lab.canary() {
            d.fault(k, r#"{"error_rate":0.3}"#).expect("fault");
        }
        let mut samples = Vec::new();
        while switch_at.elapsed() < Duration::from_secs(9) {
            if let Ok(s) = d.service_status() {
                let f: u64 = s
                    .backends
                    .iter()
                    .filter(|b| b.group == "canary")
                    .map(|b| b.new_flows)
                    .sum();
                samples.push((switch_at.elapsed(), f, s.weight_percent, s.phase));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        (samples, switch_at, bg.finish())
    });
    let _ = switch_at;
    for (t, f, w, p) in &samples {
        println!(
            "  +{:.2}s canary new flows {f} weight {w}% phase {p}",
            t.as_secs_f64()
        );
    }
    // The last sample at which the canary's counter was still growing bounds the moment of
    // its last new flow from above (the status is refreshed every poll).
    let last_increase = samples
        .windows(2)
        .filter(|w| w[1].1 > w[0].1)
        .map(|w| w[1].0)
        .next_back()
        .unwrap_or_default();
    let rolled_back_at = samples.iter().find(|s| s.3 == "rolled_back").map(|s| s.0);
    let status = d.service_status().unwrap();
    let decision = status
        .last_decision
        .as_ref()
        .expect("the status has a last decision");
    let (requests, ok, failed, transport, http) = totals(&reports);
    let codes: std::collections::BTreeSet<String> = reports
        .iter()
        .flat_map(|r| r.status_codes.keys().cloned())
        .collect();
    println!(
        "rollback seen at {rolled_back_at:?}; last new canary flow seen at +{:.2}s; decision {} ({}): {}",
        last_increase.as_secs_f64(),
        decision.action.as_str(),
        decision.reason.as_str(),
        decision.message
    );
    println!(
        "clients: {requests} requests, {ok} ok, {failed} failed: {transport} connection-level, \
         {http} HTTP status (codes {codes:?})"
    );
    println!("final counters {:?}", flows(&d));
    assert_eq!(status.phase, "rolled_back");
    assert_eq!(decision.reason, Reason::ErrorSpike);
    e2e_support::assert_weight(&status, 0.0);
    assert!(
        last_increase <= Duration::from_secs(3),
        "canary still got new flows {:.2}s after the switch",
        last_increase.as_secs_f64()
    );
    let tail = samples.last().unwrap();
    assert!(
        tail.0 >= last_increase + Duration::from_secs(5),
        "observed long enough"
    );
    assert_eq!(transport, 0, "connections failed because of the rollback");
    assert!(
        codes.iter().all(|c| c == "500"),
        "only injected 500s: {codes:?}"
    );
    assert!(http > 0, "the injected errors were seen by clients");
    assert!(group_sum(&flows(&d), "s") > 0);
}
