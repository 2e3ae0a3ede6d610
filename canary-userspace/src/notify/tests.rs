//! Classification and the event body (pure), and delivery against a real HTTP receiver on
//! loopback.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};

use super::*;
use crate::domain::Weight;
use crate::judge::{Judgement, Verdict};

/// What a receiver got: the `Authorization` header and the event, in arrival order.
pub(crate) type Received = Arc<Mutex<Vec<(Option<String>, Event)>>>;

/// A webhook receiver on a free loopback port: records every event it accepts with its
/// `Authorization` header; answers 500 to the first `fail_first` requests.
pub(crate) struct Receiver {
    pub(crate) url: String,
    pub(crate) got: Received,
    pub(crate) requests: Arc<Mutex<u32>>,
}

impl Receiver {
    pub(crate) async fn start(fail_first: u32) -> Receiver {
        let got: Received = Arc::default();
        let requests: Arc<Mutex<u32>> = Arc::default();
        let (g, r) = (got.clone(), requests.clone());
        let app = Router::new().route(
            "/hook",
            post(move |headers: HeaderMap, Json(event): Json<Event>| {
                let (g, r) = (g.clone(), r.clone());
                async move {
                    let n = {
                        let mut r = r.lock().unwrap();
                        *r += 1;
                        *r
                    };
                    if n <= fail_first {
                        return StatusCode::INTERNAL_SERVER_ERROR;
                    }
                    let auth = headers
                        .get("authorization")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    g.lock().unwrap().push((auth, event));
                    StatusCode::OK
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver { url, got, requests }
    }

    pub(crate) fn events(&self) -> Vec<Event> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .map(|(_, e)| e.clone())
            .collect()
    }

    /// Waits until `n` events arrived (or `limit`), then returns them.
    pub(crate) fn wait_for(&self, n: usize, limit: Duration) -> Vec<Event> {
        let deadline = Instant::now() + limit;
        while self.got.lock().unwrap().len() < n && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.events()
    }
}

/// A loopback URL where nothing listens (connection refused).
pub(crate) fn dead_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    format!("http://{addr}/hook")
}

pub(crate) fn sink(url: &str) -> NotifyConfig {
    NotifyConfig {
        name: "chat".into(),
        url: url.into(),
        events: EventKind::ALL.to_vec(),
        hold_intervals: 2,
        bearer_token_file: None,
        timeout: Duration::from_secs(2),
        retries: 2,
        queue: 64,
    }
}

fn decision(action: DecisionAction, reason: Reason, from: u32, to: u32) -> Decision {
    Decision {
        at_ms: 1_764_650_000_000,
        action,
        reason,
        phase: Phase::Stepping,
        from: Weight::from_basis_points(from),
        to: Weight::from_basis_points(to),
        message: "every signal passed".into(),
        judgement: None,
    }
}

#[test]
fn decisions_map_to_events_holds_only_at_the_sinks_interval() {
    let d = |a, r| decision(a, r, 1000, 2500);
    assert_eq!(
        classify(&d(DecisionAction::Step, Reason::Healthy), 0, false),
        Some(EventKind::Step)
    );
    assert_eq!(
        classify(
            &d(DecisionAction::Rollback, Reason::MetricsMissing),
            0,
            true
        ),
        Some(EventKind::Rollback)
    );
    assert_eq!(
        classify(&d(DecisionAction::Hold, Reason::MetricsMissing), 1, false),
        Some(EventKind::MetricsMissing)
    );
    // A run of metrics-missing holds notifies once, then counts as holds.
    assert_eq!(
        classify(&d(DecisionAction::Hold, Reason::MetricsMissing), 2, true),
        Some(EventKind::Hold)
    );
    assert_eq!(
        classify(&d(DecisionAction::Pause, Reason::Operator), 0, false),
        None
    );
    let s = sink("http://127.0.0.1:1/");
    assert!(!wants(&s, EventKind::Hold, 1));
    assert!(wants(&s, EventKind::Hold, 2));
    assert!(!wants(&s, EventKind::Hold, 3), "once per run of holds");
    let only_rollback = NotifyConfig {
        events: vec![EventKind::Rollback],
        ..s
    };
    assert!(!wants(&only_rollback, EventKind::Step, 0));
    assert!(wants(&only_rollback, EventKind::Rollback, 0));
}

#[test]
fn the_body_carries_service_weights_phase_reasons_time_node_and_text() {
    let mut report = SignalReport {
        signal: crate::judge::Signal::LatencyP95,
        test: "p95".into(),
        n_stable: 1000,
        n_canary: 100,
        stable: Some(100.0),
        canary: Some(250.0),
        estimate: Some(150.0),
        statistic: None,
        p_value: None,
        lower: Some(90.0),
        upper: Some(200.0),
        threshold: 50.0,
        ratio: None,
        ratio_upper: None,
        ratio_threshold: None,
        design_effect: None,
        verdict: crate::judge::SignalVerdict::Fail,
        note: String::new(),
        dry_run: false,
    };
    let mut d = decision(DecisionAction::Rollback, Reason::LatencyP95, 2500, 0);
    d.phase = Phase::RolledBack;
    d.message = "canary is worse on latency_p95 at look 3".into();
    report.dry_run = false;
    d.judgement = Some(Judgement {
        verdict: Verdict::Rollback,
        reason: Reason::LatencyP95,
        window: 3,
        rollback_level: 0.001,
        promote_level: 0.01,
        rollback_signals: 4,
        signals: vec![report],
    });
    let e = event_of(7, EventKind::Rollback, "sentiment", "lb-1", &d, 0);
    let json = serde_json::to_value(&e).unwrap();
    assert_eq!(json["service"], "sentiment");
    assert_eq!(json["event"], "rollback");
    assert_eq!(json["from_percent"], 25.0);
    assert_eq!(json["to_percent"], 0.0);
    assert_eq!(json["phase"], "rolled_back");
    assert_eq!(json["node"], "lb-1");
    assert_eq!(json["signals"][0]["signal"], "latency_p95");
    assert_eq!(json["signals"][0]["verdict"], "fail");
    assert_eq!(json["time"], "2025-12-02T04:33:20.000Z");
    assert_eq!(
        e.text,
        "canary sentiment: rollback 25% -> 0% (latency_p95), phase rolled_back: canary is worse on latency_p95 at look 3 [latency_p95 fail] on lb-1"
    );
}

#[test]
fn delivery_posts_in_order_with_token_and_retries_and_counts_what_it_drops() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _guard = rt.enter();
    // The first two requests fail: the retries deliver the event anyway, once.
    let receiver = rt.block_on(Receiver::start(2));
    let dir = std::env::temp_dir().join(format!("canary-notify-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let token = dir.join("token");
    std::fs::write(&token, "s3cret\n").unwrap();
    let metrics = Metrics::new().unwrap();
    let alive = NotifyConfig {
        bearer_token_file: Some(token),
        ..sink(&receiver.url)
    };
    let dead = NotifyConfig {
        name: "dead".into(),
        retries: 1,
        ..sink(&dead_url())
    };
    let mut n = start(&[alive, dead], "lb-1".into(), &metrics).unwrap();
    let steps = [(0, 1000), (1000, 2500), (2500, 5000), (5000, 10_000)];
    for (from, to) in steps {
        let action = if to == 10_000 {
            DecisionAction::Promote
        } else {
            DecisionAction::Step
        };
        n.decision("sentiment", &decision(action, Reason::Healthy, from, to));
    }
    let got = receiver.wait_for(4, Duration::from_secs(20));
    let weights: Vec<(f64, f64)> = got.iter().map(|e| (e.from_percent, e.to_percent)).collect();
    assert_eq!(
        weights,
        vec![(0.0, 10.0), (10.0, 25.0), (25.0, 50.0), (50.0, 100.0)]
    );
    let ids: Vec<u64> = got.iter().map(|e| e.id).collect();
    assert_eq!(ids, vec![1, 2, 3, 4]);
    assert!(receiver
        .got
        .lock()
        .unwrap()
        .iter()
        .all(|(auth, _)| auth.as_deref() == Some("Bearer s3cret")));
    assert_eq!(
        *receiver.requests.lock().unwrap(),
        6,
        "2 failed + 4 delivered"
    );
    // The dead sink drops each event after its retry.
    let deadline = Instant::now() + Duration::from_secs(20);
    let dropped = || {
        metrics
            .notify_dropped
            .with_label_values(&["dead", "failed"])
            .get()
    };
    while dropped() < 4 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(dropped(), 4);
    assert_eq!(metrics.notify_sent.with_label_values(&["chat"]).get(), 4);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(receiver.events().len(), 4, "each event exactly once");

    // A bad token file stops the start with the file named.
    let missing = dir.join("nope");
    let e = start(
        &[NotifyConfig {
            bearer_token_file: Some(missing),
            ..sink(&receiver.url)
        }],
        String::new(),
        &metrics,
    )
    .err()
    .unwrap();
    assert!(e.contains("nope") && e.contains("bearer_token_file"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_full_queue_drops_and_counts_without_waiting() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _guard = rt.enter();
    let metrics = Metrics::new().unwrap();
    // A receiver that never answers: the first event occupies the sender for its timeout.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", silent.local_addr().unwrap());
    let cfg = NotifyConfig {
        queue: 2,
        retries: 0,
        timeout: Duration::from_secs(30),
        ..sink(&url)
    };
    let mut n = start(&[cfg], String::new(), &metrics).unwrap();
    let t0 = Instant::now();
    for i in 0..50 {
        n.decision(
            "sentiment",
            &decision(DecisionAction::Step, Reason::Healthy, i, i + 1),
        );
    }
    assert!(
        t0.elapsed() < Duration::from_millis(500),
        "the controller never waits: {:?}",
        t0.elapsed()
    );
    let dropped = metrics
        .notify_dropped
        .with_label_values(&["chat", "queue_full"])
        .get();
    assert!((47..=48).contains(&dropped), "dropped {dropped}");
    drop(silent);
}
