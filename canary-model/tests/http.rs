//! The server over real TCP on 127.0.0.1: API, metrics, faults, keep-alive, crash.

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use canary_model::classifier::ModelVersion;
use canary_model::fault::FaultConfig;
use canary_model::server::{router, AppState, PredictResponse, CRASH_EXIT_CODE};
use tokio::io::{
    AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader as TokioBufReader,
};
use tokio::net::TcpStream;

async fn start(version: ModelVersion, faults: FaultConfig) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = Arc::new(AppState::new(version, "test-a".into(), faults, Some(7)).unwrap());
    tokio::spawn(async move { axum::serve(listener, router(state)).await.unwrap() });
    addr
}

/// One HTTP/1.1 exchange on an open connection; returns (status, body).
async fn exchange(
    conn: &mut TokioBufReader<TcpStream>,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, String) {
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    conn.get_mut().write_all(req.as_bytes()).await.unwrap();
    let mut status_line = String::new();
    conn.read_line(&mut status_line).await.unwrap();
    assert!(
        !status_line.is_empty(),
        "connection closed without an answer"
    );
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let mut len = 0usize;
    loop {
        let mut line = String::new();
        conn.read_line(&mut line).await.unwrap();
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().unwrap();
            }
        }
    }
    let mut buf = vec![0; len];
    conn.read_exact(&mut buf).await.unwrap();
    (status, String::from_utf8(buf).unwrap())
}

async fn connect(addr: SocketAddr) -> TokioBufReader<TcpStream> {
    TokioBufReader::new(TcpStream::connect(addr).await.unwrap())
}

#[tokio::test]
async fn predicts_and_counts_over_one_keepalive_connection() {
    let addr = start(ModelVersion::V2, FaultConfig::default()).await;
    let mut conn = connect(addr).await;
    let (status, body) = exchange(
        &mut conn,
        "POST",
        "/predict",
        r#"{"text":"great and fast"}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let answer: PredictResponse = serde_json::from_str(&body).unwrap();
    assert_eq!(answer.version, ModelVersion::V2);
    assert_eq!(answer.prediction.as_str(), "positive");
    assert_eq!(answer.backend, "test-a");
    assert!(answer.confidence > 0.5);

    // Same connection: keep-alive works.
    let (status, body) =
        exchange(&mut conn, "POST", "/predict", r#"{"text":"awful, broken"}"#).await;
    assert_eq!(status, 200);
    assert!(body.contains(r#""prediction":"negative""#), "{body}");
    let (status, body) = exchange(&mut conn, "POST", "/predict", r#"{"txt":1}"#).await;
    assert_eq!(status, 400, "{body}");
    let (status, _) = exchange(&mut conn, "GET", "/healthz", "").await;
    assert_eq!(status, 200);

    let (status, metrics) = exchange(&mut conn, "GET", "/metrics", "").await;
    assert_eq!(status, 200);
    for line in [
        "requests_total 3",
        "request_errors_total 1",
        "request_duration_seconds_count 3",
        "predictions_total{class=\"positive\"} 1",
        "predictions_total{class=\"negative\"} 1",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "missing `{line}` in\n{metrics}"
        );
    }
}

#[tokio::test]
async fn runtime_faults_change_answers() {
    let addr = start(ModelVersion::V1, FaultConfig::default()).await;
    let mut conn = connect(addr).await;
    let (status, body) = exchange(
        &mut conn,
        "POST",
        "/fault",
        r#"{"error_rate":1.0,"health_failing":true,"metrics_failing":true,"latency_ms":30}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(exchange(&mut conn, "GET", "/metrics", "").await.0, 500);
    let t = Instant::now();
    let (status, _) = exchange(&mut conn, "POST", "/predict", r#"{"text":"good"}"#).await;
    assert_eq!(status, 500);
    assert!(
        t.elapsed() >= Duration::from_millis(30),
        "latency was added"
    );
    assert_eq!(exchange(&mut conn, "GET", "/healthz", "").await.0, 503);

    let (status, body) = exchange(&mut conn, "POST", "/fault", r#"{"error_rate":2}"#).await;
    assert_eq!(status, 400);
    assert!(body.contains("error_rate"), "{body}");

    let (status, _) = exchange(
        &mut conn,
        "POST",
        "/fault",
        r#"{"reset":true,"skew":1.0,"skew_class":"negative"}"#,
    )
    .await;
    assert_eq!(status, 200);
    let (status, body) = exchange(&mut conn, "POST", "/predict", r#"{"text":"excellent"}"#).await;
    assert_eq!(status, 200);
    assert!(
        body.contains(r#""prediction":"negative""#),
        "skew forces the class: {body}"
    );
    assert_eq!(exchange(&mut conn, "GET", "/healthz", "").await.0, 200);
    let (_, metrics) = exchange(&mut conn, "GET", "/metrics", "").await;
    assert!(
        metrics.lines().any(|l| l == "request_errors_total 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn slow_start_is_slow_for_the_first_requests() {
    let addr = start(
        ModelVersion::V1,
        FaultConfig {
            cold_requests: 1,
            cold_latency_ms: 150,
            ..FaultConfig::default()
        },
    )
    .await;
    let mut conn = connect(addr).await;
    let t = Instant::now();
    exchange(&mut conn, "POST", "/predict", r#"{"text":"ok"}"#).await;
    let cold = t.elapsed();
    let t = Instant::now();
    exchange(&mut conn, "POST", "/predict", r#"{"text":"ok"}"#).await;
    let warm = t.elapsed();
    assert!(cold >= Duration::from_millis(150), "{cold:?}");
    assert!(warm < Duration::from_millis(100), "{warm:?}");
}

/// Kills the child by PID if an assertion fails.
struct Guard(std::process::Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn binary_crashes_on_the_nth_request() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_canary-model"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--crash-after",
            "2",
            "--version",
            "v2",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut guard = Guard(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let addr: SocketAddr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .parse()
        .unwrap();

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut conn = connect(addr).await;
        let (status, body) = exchange(&mut conn, "POST", "/predict", r#"{"text":"nice"}"#).await;
        assert_eq!(status, 200, "{body}");
        assert!(body.contains(r#""version":"v2""#), "{body}");
        let mut conn = connect(addr).await;
        conn.get_mut()
            .write_all(
                b"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Length: 13\r\n\r\n{\"text\":\"ok\"}",
            )
            .await
            .unwrap();
        let mut rest = Vec::new();
        let _ = conn.read_to_end(&mut rest).await;
        assert!(rest.is_empty(), "no answer from a crash");
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(status) = guard.0.try_wait().unwrap() {
            assert_eq!(status.code(), Some(CRASH_EXIT_CODE));
            break;
        }
        assert!(Instant::now() < deadline, "process did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn metrics_flood_streams_junk_without_end() {
    let addr = start(
        ModelVersion::V1,
        FaultConfig {
            metrics_flood: true,
            ..FaultConfig::default()
        },
    )
    .await;
    let mut conn = connect(addr).await;
    conn.get_mut()
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    // Far more than any exposition, and still going: read 16 MiB, then hang up.
    let mut buf = vec![0u8; 64 * 1024];
    let mut read = 0usize;
    let mut text = String::new();
    while read < 16 << 20 {
        let n = conn.read(&mut buf).await.unwrap();
        assert!(n > 0, "the answer ended after {read} bytes");
        if text.len() < 4096 {
            text.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        read += n;
    }
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    assert!(text.contains("junk_series_1{flood=\"1\"} 1\n"), "{text}");
}
