//! The load generator against in-process model servers on 127.0.0.1 (no root needed).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use canary_lab::loadgen::{self, LoadSpec};
use canary_model::classifier::ModelVersion;
use canary_model::fault::FaultConfig;
use canary_model::server::{router, AppState};

async fn model(version: ModelVersion, name: &str, faults: FaultConfig) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = Arc::new(AppState::new(version, name.into(), faults, Some(1)).unwrap());
    tokio::spawn(async move { axum::serve(listener, router(state)).await.unwrap() });
    addr
}

#[tokio::test]
async fn mixed_load_is_counted_by_version_backend_and_connection() {
    let target = model(ModelVersion::V2, "k0", FaultConfig::default()).await;
    let mut spec = LoadSpec::new(target);
    spec.requests = Some(300);
    spec.duration = Duration::from_secs(20);
    spec.new_conns = 4;
    spec.keepalive = 3;
    spec.keepalive_interval = Duration::from_millis(5);
    spec.users = 5;
    spec.sources = vec!["127.0.0.1".parse().unwrap()];
    let r = loadgen::run(&spec).await;
    assert_eq!(r.requests, 300, "{r:#?}");
    assert_eq!(r.ok, 300, "{:?}", r.failure_samples);
    assert_eq!(r.versions["v2"], 300);
    assert_eq!(r.backends["k0"], 300);
    assert_eq!(r.new_connection.requests + r.keep_alive.requests, 300);
    assert!(r.keep_alive.requests > 0 && r.new_connection.requests > 0);
    assert_eq!(r.keep_alive_connections.connections, 3);
    assert_eq!(r.keep_alive_connections.moved, 0);
    for c in &r.connections {
        assert_eq!(c.failed, 0);
        assert!(c.local.as_deref().unwrap().starts_with("127.0.0.1:"));
    }
    let sent: u64 = r.connections.iter().map(|c| c.requests).sum();
    assert_eq!(sent, r.keep_alive.requests);
    assert_eq!(r.by_source["127.0.0.1"]["v2"], 300);
    assert_eq!(r.by_user.len(), 5);
    assert!(r.predictions.contains_key("positive") && r.predictions.contains_key("negative"));
    assert_eq!(r.latency_ms.count, 300);
    assert!(r.latency_ms.p50 <= r.latency_ms.p99 && r.latency_ms.p99 <= r.latency_ms.max);
}

#[tokio::test]
async fn errors_and_refused_connections_are_failures_by_kind() {
    let failing = model(
        ModelVersion::V1,
        "s0",
        FaultConfig {
            error_rate: 1.0,
            ..FaultConfig::default()
        },
    )
    .await;
    let mut spec = LoadSpec::new(failing);
    spec.requests = Some(40);
    spec.new_conns = 2;
    spec.keepalive = 2;
    spec.keepalive_interval = Duration::from_millis(1);
    let r = loadgen::run(&spec).await;
    assert_eq!(r.requests, 40);
    assert_eq!(r.ok, 0);
    assert_eq!(r.failures.status, 40, "{r:#?}");
    assert_eq!(r.status_codes["500"], 40);

    // A port nobody listens on: every attempt is a connect failure.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let mut spec = LoadSpec::new(closed);
    spec.requests = Some(10);
    spec.new_conns = 2;
    let r = loadgen::run(&spec).await;
    assert_eq!(r.failures.connect, 10, "{r:#?}");
}

#[tokio::test]
async fn time_bound_stops_the_run() {
    let target = model(
        ModelVersion::V1,
        "s0",
        FaultConfig {
            latency_ms: 20,
            ..FaultConfig::default()
        },
    )
    .await;
    let mut spec = LoadSpec::new(target);
    spec.duration = Duration::from_millis(300);
    spec.new_conns = 2;
    spec.keepalive = 2;
    spec.keepalive_interval = Duration::from_millis(10);
    let t = std::time::Instant::now();
    let r = loadgen::run(&spec).await;
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert!(r.ok > 5, "{r:#?}");
    assert_eq!(r.failed, 0, "{:?}", r.failure_samples);
    assert!(r.latency_ms.min >= 20.0, "{:?}", r.latency_ms);
}

#[test]
fn default_texts_are_sixty_forty_for_both_versions() {
    use canary_model::classifier::{Classifier, Sentiment};
    let v1 = Classifier::new(ModelVersion::V1);
    let v2 = Classifier::new(ModelVersion::V2);
    let positive = loadgen::DEFAULT_TEXTS
        .iter()
        .filter(|t| {
            let (a, b) = (v1.predict(t).class, v2.predict(t).class);
            assert_eq!(a, b, "versions disagree on `{t}`");
            a == Sentiment::Positive
        })
        .count();
    assert_eq!((positive, loadgen::DEFAULT_TEXTS.len()), (6, 10));
}
