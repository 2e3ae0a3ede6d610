//! The `FastAPI` example behind `canary`, as users run it: uvicorn processes in the lab's
//! backend namespaces (two v1, one v2), read through the upstream preset of their metrics
//! library, real TCP traffic through the XDP balancer.
//!
//! - a healthy v2 (`prometheus_client`) is promoted to 100 % without a failed request;
//! - a v2 that answers "positive" 80 % of the time where v1 says 60 % (instrumentator, no more
//!   errors) is rolled back by the prediction gate;
//! - a v2 that starts failing 10 % of its requests is rolled back by the spike rule at the
//!   first poll that covers the failures (no evaluation interval waited for);
//! - a v2 whose first requests are slow (cold start) is warmed up by POSTs to `/predict` and
//!   promoted; warmed up with GETs of its health endpoint instead, the same v2 is rolled back
//!   for its latency, which shows it is the warm-up that keeps it from being judged cold.
//!
//! The judge's thresholds are set here so that each outcome has a wide margin: the healthy
//! cases pass with generous limits, the faulty ones exceed them several times over.

mod e2e_support;

use std::time::{Duration, Instant};

use std::time::{SystemTime, UNIX_EPOCH};

use canary_lab::deployment::{Deployment, DeploymentSpec};
use canary_lab::fastapi::MetricsLibrary;
use canary_lab::lab::{LabSpec, Node, Role};
use canary_lab::loadgen::{LoadSpec, Report};
use canary_lab::server::ModelServer;
use canary_userspace::api::ServiceStatus;
use canary_userspace::judge::{Reason, Signal, SignalVerdict};
use canary_userspace::rollout::Decision;
use e2e_support::{cli_ok, decisions, new_conn_load, start, totals, wait_status, Background};

/// Two v1 backends and one v2 backend of the `FastAPI` example with `library`. The steps keep
/// the lone v2 backend no busier than each v1 backend until the promotion (at 30 % it takes
/// 30 % of the requests, each v1 35 %): on a loaded machine one uvicorn process slows with its
/// load, and that must not read as a slower model.
fn spec(tag: char, library: MetricsLibrary) -> DeploymentSpec {
    let mut spec = DeploymentSpec::new(LabSpec::unique_tag(tag));
    spec.server = ModelServer::Fastapi(library);
    spec.lab.clients = 1;
    spec.lab.stable = 2;
    spec.lab.canary = 1;
    spec.lab.client_extra_addresses = 20;
    spec.steps = vec![15.0, 30.0, 100.0];
    spec.interval = "3s".into();
    spec.poll_interval = "1s".into();
    spec.min_samples = 120;
    // Wide limits: a healthy v2 passes them with room to spare on a busy machine; the faults
    // below exceed them several times over.
    spec.confidence = 0.95;
    spec.max_error_rate_increase = 0.10;
    spec.max_latency_increase_ms = 150.0;
    spec.max_prediction_shift = 0.25;
    spec.error_spike = 0.05;
    spec
}

/// New connections from every address of the client, about 100 requests per second: what
/// three uvicorn processes answer comfortably on a busy machine.
fn load(d: &Deployment) -> LoadSpec {
    let mut l = new_conn_load(d, &d.lab.clients()[0], 0, 21);
    l.interval = Duration::from_millis(200);
    l
}

/// Load in the background until the rollout ends (promoted or rolled back); the final status
/// and the reports of the load during the rollout.
fn until_rollout_ends(d: &Deployment) -> (ServiceStatus, Vec<Report>) {
    std::thread::scope(|scope| {
        let bg = Background::start(scope, d, &load(d), Duration::from_secs(2));
        let (s, _) = wait_status(d, "the end of the rollout", Duration::from_mins(3), |s| {
            s.phase == "promoted" || s.phase == "rolled_back"
        });
        (s, bg.finish())
    })
}

fn show(what: &str, status: &ServiceStatus, reports: &[Report]) {
    let (requests, ok, failed, transport, http) = totals(reports);
    println!(
        "{what}: phase {} weight {}; load: {requests} requests, {ok} ok, {failed} failed \
         ({transport} transport, {http} HTTP status)",
        status.phase, status.weight_percent
    );
    for e in &status.events {
        let undecided: Vec<&str> = e
            .judgement
            .iter()
            .flat_map(|j| &j.signals)
            .filter(|r| r.verdict == SignalVerdict::Inconclusive)
            .map(|r| r.signal.as_str())
            .collect();
        println!(
            "  {}/{}: {}{}",
            e.action.as_str(),
            e.reason.as_str(),
            e.message,
            if undecided.is_empty() {
                String::new()
            } else {
                format!(" (undecided: {})", undecided.join(", "))
            }
        );
    }
}

/// `flags` for the canary backend, nothing for the others.
fn canary_only(flags: &[&str], node: &Node) -> Vec<String> {
    if node.role == Role::Canary {
        flags.iter().map(|f| (*f).to_string()).collect()
    } else {
        Vec::new()
    }
}

/// The verdict on `signal` in a decision's judgement (`None`: absent).
fn verdict(decision: &Decision, signal: Signal) -> Option<SignalVerdict> {
    decision
        .judgement
        .as_ref()
        .and_then(|j| j.signal(signal))
        .map(|r| r.verdict)
}

/// The last decision, failing the test when there is none.
fn last_decision(status: &ServiceStatus) -> &Decision {
    status
        .last_decision
        .as_ref()
        .unwrap_or_else(|| panic!("no decision in the status: {status:?}"))
}

/// The four signals a healthy step passes on.
const JUDGED: [Signal; 4] = [
    Signal::ErrorRate,
    Signal::LatencyMean,
    Signal::LatencyP95,
    Signal::Predictions,
];

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[test]
fn fastapi_healthy_v2_with_prometheus_client_is_promoted_without_a_failed_request() {
    let d = start(spec('f', MetricsLibrary::PrometheusClient));
    let t0 = Instant::now();
    let (status, reports) = until_rollout_ends(&d);
    show(&format!("after {:.1?}", t0.elapsed()), &status, &reports);
    for r in &reports {
        if r.failed > 0 {
            println!("failures {:?}: {:?}", r.failures, r.failure_samples);
        }
    }
    assert_eq!(status.phase, "promoted", "{:#?}", decisions(&status));
    assert!((status.weight_percent - 100.0).abs() < 1e-9);
    let (requests, ok, failed, _, _) = totals(&reports);
    assert_eq!(failed, 0, "no request fails during a healthy rollout");
    assert_eq!(ok, requests);
    // Every promotion was the judge's, on the example's own series read through the preset.
    let promotions: Vec<&Decision> = status
        .events
        .iter()
        .filter(|e| e.reason == Reason::Healthy)
        .collect();
    assert_eq!(promotions.len(), 2, "{:#?}", decisions(&status));
    for p in promotions {
        for signal in JUDGED {
            assert_eq!(
                verdict(p, signal),
                Some(SignalVerdict::Pass),
                "{} in {p:#?}",
                signal.as_str()
            );
        }
    }
    let versions = e2e_support::merge_versions(&reports);
    assert!(versions.get("v2").copied().unwrap_or(0) > 0, "{versions:?}");
}

#[test]
fn fastapi_v2_predicting_positive_80_percent_is_rolled_back_by_the_prediction_gate() {
    let mut spec = spec('g', MetricsLibrary::Instrumentator);
    // The load generator's texts are 60 % positive for both versions; half of v2's answers
    // forced to "positive" make 80 %. No errors, no added latency.
    spec.model_args = |n| canary_only(&["--skew", "0.5", "--skew-class", "positive"], n);
    // A shift of 0.2 is twice the limit.
    spec.max_prediction_shift = 0.10;
    let d = start(spec);
    let (status, reports) = until_rollout_ends(&d);
    show("skewed v2", &status, &reports);
    assert_eq!(status.phase, "rolled_back", "{:#?}", decisions(&status));
    let decision = last_decision(&status);
    assert_eq!(decision.reason, Reason::PredictionShift, "{decision:#?}");
    assert!(decision.message.contains("prediction"), "{decision:#?}");
    assert_eq!(
        verdict(decision, Signal::Predictions),
        Some(SignalVerdict::Fail),
        "{decision:#?}"
    );
    assert_ne!(
        verdict(decision, Signal::ErrorRate),
        Some(SignalVerdict::Fail),
        "{decision:#?}"
    );
    let shift = decision
        .judgement
        .as_ref()
        .and_then(|j| j.signal(Signal::Predictions))
        .and_then(|r| r.estimate)
        .unwrap_or_else(|| panic!("no measured prediction shift: {decision:#?}"));
    // 80 % against 60 %: a total variation distance of 0.2.
    assert!((0.12..0.3).contains(&shift), "measured shift {shift}");
    let (_, _, failed, _, _) = totals(&reports);
    assert_eq!(failed, 0, "the skewed v2 answers every request");
}

#[test]
fn fastapi_v2_failing_10_percent_is_rolled_back_by_the_spike_rule_at_the_next_poll() {
    let mut spec = spec('h', MetricsLibrary::PrometheusClient);
    // Held at 35 % by hand, with long evaluation intervals: only the spike rule, which looks
    // at every poll, can act within the time allowed below. The rule tests the canary against
    // stable (given both groups' errors, is the canary's share of them beyond its share of the
    // requests?), so each canary error weighs ln(1 / weight): near 35 % (1 / e) one poll's
    // errors carry the most evidence. 5 s polls at 35 % of the load bring the canary some 115
    // requests per poll: about 11 errors expected, 9 needed at this point of the rollout
    // (canary above 3 %, stable answering no errors).
    spec.start = "paused".into();
    spec.interval = "60s".into();
    spec.poll_interval = "5s".into();
    spec.error_spike = 0.03;
    let d = start(spec);
    let poll = Duration::from_secs(5);
    cli_ok(&d, &["set-weight", "35"]);
    let (fault_ms, status, reports) = std::thread::scope(|scope| {
        let bg = Background::start(scope, &d, &load(&d), Duration::from_secs(2));
        // Healthy first: the spike rule sees the canary's ordinary answers.
        std::thread::sleep(2 * poll);
        assert_eq!(d.service_status().unwrap().phase, "stepping");
        let fault_ms = unix_ms();
        d.fault(&d.lab.canary()[0], r#"{"error_rate": 0.1}"#)
            .expect("fault");
        let (s, _) = wait_status(&d, "the rollback", Duration::from_secs(30), |s| {
            s.phase == "rolled_back"
        });
        (fault_ms, s, bg.finish())
    });
    show("v2 at 10 % errors", &status, &reports);
    let decision = last_decision(&status);
    let after = decision.at_ms.saturating_sub(fault_ms);
    println!("rolled back {after} ms after the fault");
    assert_eq!(decision.reason, Reason::ErrorSpike, "{decision:#?}");
    e2e_support::assert_weight(&status, 0.0);
    // The poll running when the fault began may hold too few of its errors; the next one,
    // entirely after it, decides.
    assert!(
        after <= 2 * poll.as_millis() as u64 + 1000,
        "the spike rule took {after} ms, more than the poll the fault began in and the next"
    );
    let codes: std::collections::BTreeSet<&String> =
        reports.iter().flat_map(|r| r.status_codes.keys()).collect();
    assert!(
        codes.iter().all(|c| *c == "500"),
        "only the injected 500s fail: {codes:?}"
    );
}

/// A v2 whose first 40 `/predict` requests take 250 ms more (a cold model), warmed up with
/// POSTs of a `warmup_body` to `/predict` when `warm_the_model`, else with GETs of `/healthz`.
fn cold_v2(tag: char, warm_the_model: bool) -> (ServiceStatus, Vec<Report>) {
    let mut spec = spec(tag, MetricsLibrary::PrometheusClient);
    spec.model_args = |n| canary_only(&["--cold-requests", "40", "--cold-latency-ms", "250"], n);
    spec.warmup_requests = 40;
    if warm_the_model {
        spec.warmup_url = "http://{address}:8080/predict".into();
        spec.warmup_body = r#"{"text": "warm-up"}"#.into();
    }
    let d = start(spec);
    let out = until_rollout_ends(&d);
    show(
        if warm_the_model {
            "cold v2, model warmed up"
        } else {
            "cold v2, health endpoint warmed up"
        },
        &out.0,
        &out.1,
    );
    out
}

#[test]
fn fastapi_cold_v2_warmed_up_through_predict_is_promoted() {
    let (status, reports) = cold_v2('i', true);
    assert_eq!(status.phase, "promoted", "{:#?}", decisions(&status));
    let latency_decisions: Vec<String> = decisions(&status)
        .into_iter()
        .filter(|d| d.contains("latency"))
        .filter(|d| d.contains("rollback"))
        .collect();
    assert!(latency_decisions.is_empty(), "{latency_decisions:#?}");
    let (_, _, failed, _, _) = totals(&reports);
    assert_eq!(failed, 0);
}

#[test]
fn fastapi_cold_v2_warmed_up_through_its_health_endpoint_is_rolled_back_for_latency() {
    // The control of the test above: the same cold v2, but the warm-up never reaches the
    // model, so its slow first answers are judged.
    let (status, _) = cold_v2('j', false);
    assert_eq!(status.phase, "rolled_back", "{:#?}", decisions(&status));
    let decision = last_decision(&status);
    assert!(
        matches!(decision.reason, Reason::LatencyP95 | Reason::LatencyMean),
        "{decision:#?}"
    );
}
