//! `canary init` against live backends in the lab, for each model server (the `FastAPI` example
//! with either metrics library, and canary-model): run from the load balancer's namespace
//! before the daemon exists, it writes a service section that `canary validate` accepts and
//! that the daemon then runs a rollout with: every backend's metrics read through the
//! recognised series, the first step judged healthy on all four signals.
//!
//! For the `FastAPI` servers it first refuses, because a fresh server has not counted any
//! `/predict` request yet (the route label has no value to select), and says so; after a few
//! requests to the stable backends it succeeds, the fresh canary included.

mod e2e_support;

use std::process::Output;
use std::time::Duration;

use canary_lab::deployment::{Deployment, DeploymentSpec};
use canary_lab::fastapi::MetricsLibrary;
use canary_lab::lab::{LabSpec, SERVICE_PORT};
use canary_lab::server::ModelServer;
use canary_userspace::judge::{Reason, Signal, SignalVerdict};
use e2e_support::{new_conn_load, require_root, wait_status, Background};

/// `canary init` for the lab's backends, run in the load balancer's namespace.
fn init(d: &Deployment) -> Output {
    let mut argv: Vec<String> = vec![d.canary_bin.display().to_string(), "init".into()];
    for n in d.lab.stable() {
        argv.extend(["--metrics-url".into(), n.url("/metrics")]);
    }
    for n in d.lab.canary() {
        argv.extend(["--canary-metrics-url".into(), n.url("/metrics")]);
    }
    argv.extend([
        "--vip".into(),
        format!("{}:{SERVICE_PORT}", d.lab.vip()),
        "--name".into(),
        "sentiment".into(),
    ]);
    let lb = d.lab.load_balancer().expect("load balancer").netns.clone();
    d.lab.output_in(&lb, &argv).expect("canary init runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A few `/predict` requests straight to each stable backend (from its own namespace).
fn predict_on_stable(d: &Deployment) {
    for n in d.lab.stable() {
        for _ in 0..3 {
            let out = d
                .lab
                .output_in(
                    &n.netns,
                    &[
                        "curl",
                        "-sf",
                        "-m",
                        "5",
                        "-H",
                        "content-type: application/json",
                        "-d",
                        r#"{"text": "a fine day"}"#,
                        &format!("http://127.0.0.1:{SERVICE_PORT}/predict"),
                    ],
                )
                .expect("curl runs");
            assert!(out.status.success(), "{}", text(&out.stderr));
        }
    }
}

fn init_then_run(tag: char, server: ModelServer) {
    require_root();
    let mut spec = DeploymentSpec::new(LabSpec::unique_tag(tag));
    spec.server = server;
    spec.lab.clients = 1;
    spec.lab.stable = 2;
    spec.lab.canary = 1;
    spec.lab.client_extra_addresses = 20;
    spec.steps = vec![15.0, 30.0, 100.0];
    spec.min_samples = 100;
    spec.confidence = 0.95;
    spec.max_error_rate_increase = 0.10;
    spec.max_latency_increase_ms = 150.0;
    spec.max_prediction_shift = 0.25;
    let mut d = Deployment::up(spec).unwrap_or_else(|e| panic!("lab does not come up: {e}"));

    if server != ModelServer::CanaryModel {
        let refused = init(&d);
        let err = text(&refused.stderr);
        println!("{server}, before any request:\n{err}");
        assert!(
            !refused.status.success(),
            "init guessed: {}",
            text(&refused.stdout)
        );
        assert!(refused.stdout.is_empty(), "{}", text(&refused.stdout));
        assert!(err.contains("send one request to /predict"), "{err}");
        predict_on_stable(&d);
    }
    let out = init(&d);
    let section = text(&out.stdout);
    println!("{server}:\n{section}{}", text(&out.stderr));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        section.contains(&format!("preset = \"{}\"", server.preset())),
        "{section}"
    );
    assert_eq!(section.matches("[[services.backends]]").count(), 3);

    // As written, the section is a config `canary validate` accepts.
    let path = d.lab.state_dir().join("init.toml");
    std::fs::write(&path, &section).expect("write the section");
    let lb = d.lab.load_balancer().unwrap().netns.clone();
    let validated = d
        .lab
        .output_in(
            &lb,
            &[
                d.canary_bin.display().to_string(),
                "validate".into(),
                "--config".into(),
                path.display().to_string(),
            ],
        )
        .unwrap();
    assert!(
        validated.status.success(),
        "{}{}",
        text(&validated.stdout),
        text(&validated.stderr)
    );
    println!("{}", text(&validated.stdout));

    // The daemon runs with it (the lab's data plane, admin and rollout pace added).
    d.spec.service_section = Some(section);
    d.write_config().unwrap();
    d.start_daemon()
        .unwrap_or_else(|e| panic!("the daemon does not run with the section: {e}"));
    let mut load = new_conn_load(&d, &d.lab.clients()[0], 0, 21);
    load.interval = Duration::from_millis(200);
    let status = std::thread::scope(|scope| {
        let bg = Background::start(scope, &d, &load, Duration::from_secs(2));
        let (s, _) = wait_status(
            &d,
            "a step judged on every backend's metrics",
            Duration::from_mins(3),
            |s| s.phase == "rolled_back" || s.events.iter().any(|e| e.reason == Reason::Healthy),
        );
        bg.finish();
        s
    });
    assert!(!status.backends.is_empty(), "{status:?}");
    for b in &status.backends {
        println!(
            "  {} {}: up {} metrics_ok {} reported requests {:?} versions {:?}",
            b.group, b.name, b.up, b.metrics_ok, b.reported_requests, b.reported_versions
        );
        assert!(b.up, "{b:?}");
        assert!(b.metrics_ok, "{b:?}");
        assert!(b.reported_requests.is_some_and(|n| n > 0.0), "{b:?}");
    }
    let healthy = status
        .events
        .iter()
        .find(|e| e.reason == Reason::Healthy)
        .unwrap_or_else(|| {
            panic!(
                "no step judged healthy: {:#?}",
                e2e_support::decisions(&status)
            )
        });
    let judgement = healthy
        .judgement
        .as_ref()
        .unwrap_or_else(|| panic!("the healthy step has no judgement: {healthy:?}"));
    for r in &judgement.signals {
        if [
            Signal::ErrorRate,
            Signal::LatencyMean,
            Signal::LatencyP95,
            Signal::Predictions,
        ]
        .contains(&r.signal)
        {
            assert_eq!(r.verdict, SignalVerdict::Pass, "{r:?}");
            assert!(r.n_canary > 0, "{r:?}");
        }
    }
}

#[test]
fn init_on_fastapi_with_prometheus_client_writes_a_section_the_daemon_runs() {
    init_then_run('n', ModelServer::Fastapi(MetricsLibrary::PrometheusClient));
}

#[test]
fn init_on_fastapi_with_instrumentator_writes_a_section_the_daemon_runs() {
    init_then_run('o', ModelServer::Fastapi(MetricsLibrary::Instrumentator));
}

#[test]
fn init_on_canary_model_writes_a_section_the_daemon_runs() {
    init_then_run('q', ModelServer::CanaryModel);
}
