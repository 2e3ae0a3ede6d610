//! The `FastAPI` example server (`examples/fastapi`), run for real: uvicorn from the virtualenv that
//! `cargo xtask setup` installs, on a free loopback port, for each metrics library and model
//! version. Checks the answers against canary-model's classifier, the Prometheus exposition
//! (series names, exact label sets, counts) and every fault.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use canary_lab::fastapi::{self, MetricsLibrary, ServerSpec};
use canary_lab::loadgen::DEFAULT_TEXTS;
use canary_model::classifier::{Classifier, ModelVersion};
use prometheus_parse::{Sample, Scrape, Value};

const START_TIMEOUT: Duration = Duration::from_secs(45);
/// prometheus-fastapi-instrumentator records a request after sending its answer: the counts are
/// waited for, not read once.
const METRICS_TIMEOUT: Duration = Duration::from_secs(10);
/// Requests sent with a 20 % error rate.
const N: u64 = 300;
/// Rounds of the load generator's texts sent with the prediction skew.
const SKEW_ROUNDS: u64 = 40;

/// Servers started by this test binary (names their log files).
static STARTED: AtomicU32 = AtomicU32::new(0);

/// A `serve.py` process on loopback; killed by PID when dropped, also when a test fails.
struct Server {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl Server {
    /// Starts `serve.py` with `spec` (plus `env`) and waits for its ready line.
    fn start(spec: &ServerSpec, env: &[(&str, &str)]) -> Server {
        let argv = spec.argv().unwrap_or_else(|e| panic!("{e}"));
        let log = std::env::temp_dir().join(format!(
            "canary-fastapi-{}-{}.log",
            std::process::id(),
            STARTED.fetch_add(1, Ordering::Relaxed)
        ));
        let stderr = std::fs::File::create(&log).expect("create the server's log file");
        let mut child = Command::new(&argv[0])
            .args(&argv[1..])
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {argv:?}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        // Reads stdout to its end, so the server never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = fastapi::parse_ready_line(&line) {
                    let _ = tx.send(addr);
                }
            }
        });
        let mut server = Server {
            child,
            addr: "127.0.0.1:0".parse().unwrap(),
            log,
        };
        match rx.recv_timeout(START_TIMEOUT) {
            Ok(addr) => server.addr = addr,
            Err(e) => panic!(
                "{argv:?} did not print its ready line within {START_TIMEOUT:?} ({e}; exit: {:?}); log:\n{}",
                server.child.try_wait().ok().flatten(),
                server.log_text()
            ),
        }
        server
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn log_text(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut text);
        }
        text
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // `Child::kill` signals this child's PID only.
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

fn loopback(version: &str, metrics: MetricsLibrary) -> ServerSpec {
    ServerSpec::new("127.0.0.1:0".parse().unwrap(), version, metrics)
}

/// Series names and label sets each metrics library exposes (see examples/fastapi/README.md).
struct Shape(MetricsLibrary);

impl Shape {
    const REQUESTS: &'static str = "http_requests_total";
    const LATENCY: &'static str = "http_request_duration_seconds";
    const PREDICTIONS: &'static str = "model_predictions_total";

    /// Labels of the requests counter for `/predict` answered with `code`.
    fn requests(&self, code: u16) -> Vec<(&'static str, String)> {
        match self.0 {
            MetricsLibrary::PrometheusClient => vec![
                ("method", "POST".into()),
                ("route", "/predict".into()),
                ("status", code.to_string()),
            ],
            MetricsLibrary::Instrumentator => vec![
                ("handler", "/predict".into()),
                ("method", "POST".into()),
                ("status", format!("{}xx", code / 100)),
            ],
        }
    }

    /// Labels of the latency histogram of `/predict`.
    fn latency(&self) -> Vec<(&'static str, String)> {
        match self.0 {
            MetricsLibrary::PrometheusClient => {
                vec![("method", "POST".into()), ("route", "/predict".into())]
            }
            MetricsLibrary::Instrumentator => {
                vec![("handler", "/predict".into()), ("method", "POST".into())]
            }
        }
    }

    fn prediction(&self, version: &str, class: &str) -> Vec<(&'static str, String)> {
        match self.0 {
            MetricsLibrary::PrometheusClient => {
                vec![("class", class.into()), ("model_version", version.into())]
            }
            MetricsLibrary::Instrumentator => vec![("class", class.into())],
        }
    }
}

/// One parsed `/metrics` answer.
struct Exposition(Vec<Sample>);

impl Exposition {
    /// The sample of `metric` whose label set is exactly `labels`.
    fn find(&self, metric: &str, labels: &[(&str, String)]) -> Option<&Sample> {
        self.0.iter().find(|s| {
            s.metric == metric
                && s.labels.len() == labels.len()
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(k) == Some(v.as_str()))
        })
    }

    /// Every series of `metric`, for error messages.
    fn describe(&self, metric: &str) -> String {
        let mut lines: Vec<String> = self
            .0
            .iter()
            .filter(|s| s.metric == metric)
            .map(|s| format!("{metric}{{{}}} {:?}", s.labels, s.value))
            .collect();
        lines.sort();
        lines.join("\n")
    }

    /// The value of a counter series; 0 when the series does not exist.
    fn counter(&self, metric: &str, labels: &[(&str, String)]) -> f64 {
        match self.find(metric, labels).map(|s| &s.value) {
            None => 0.0,
            Some(Value::Counter(v)) => *v,
            Some(other) => panic!("{metric} {labels:?} is not a counter: {other:?}"),
        }
    }

    /// The cumulative buckets `(le, count)` of a histogram series.
    fn histogram(
        &self,
        metric: &str,
        labels: &[(&str, String)],
    ) -> Result<Vec<(f64, f64)>, String> {
        match self.find(metric, labels).map(|s| &s.value) {
            Some(Value::Histogram(buckets)) => {
                Ok(buckets.iter().map(|b| (b.less_than, b.count)).collect())
            }
            Some(other) => Err(format!("{metric} {labels:?} is not a histogram: {other:?}")),
            None => Err(format!(
                "no histogram {metric} {labels:?}; its series:\n{}",
                self.describe(metric)
            )),
        }
    }

    /// Observations of a histogram series (its +Inf bucket) and those at most `le` seconds.
    fn observations(
        &self,
        metric: &str,
        labels: &[(&str, String)],
        le: f64,
    ) -> Result<(f64, f64), String> {
        let buckets = self.histogram(metric, labels)?;
        let total = buckets
            .iter()
            .find(|(bound, _)| bound.is_infinite())
            .map(|(_, c)| *c)
            .ok_or_else(|| format!("{metric} {labels:?} has no +Inf bucket: {buckets:?}"))?;
        let below = buckets
            .iter()
            .find(|(bound, _)| (*bound - le).abs() < 1e-9)
            .map(|(_, c)| *c)
            .ok_or_else(|| format!("{metric} {labels:?} has no bucket le={le}: {buckets:?}"))?;
        Ok((total, below))
    }

    /// The value of an untyped sample (a histogram's `_sum`/`_count`) with exactly `labels`.
    fn untyped(&self, metric: &str, labels: &[(&str, String)]) -> Option<f64> {
        match self.find(metric, labels)?.value {
            Value::Untyped(v) => Some(v),
            _ => None,
        }
    }
}

struct Client {
    http: reqwest::Client,
}

/// One `/predict` answer.
struct Answer {
    status: u16,
    body: serde_json::Value,
    took: Duration,
}

impl Client {
    fn new() -> Self {
        Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("HTTP client"),
        }
    }

    async fn predict(&self, server: &Server, body: &serde_json::Value) -> Answer {
        let started = Instant::now();
        let response = self
            .http
            .post(server.url("/predict"))
            .json(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST /predict: {e}; server log:\n{}", server.log_text()));
        let status = response.status().as_u16();
        let body = response.json().await.expect("a JSON answer");
        Answer {
            status,
            body,
            took: started.elapsed(),
        }
    }

    async fn text(&self, server: &Server, text: &str) -> Answer {
        self.predict(server, &serde_json::json!({ "text": text }))
            .await
    }

    async fn get(&self, server: &Server, path: &str) -> (u16, String) {
        let r = self
            .http
            .get(server.url(path))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        (r.status().as_u16(), r.text().await.expect("a body"))
    }

    async fn fault(&self, server: &Server, update: serde_json::Value) -> (u16, serde_json::Value) {
        let r = self
            .http
            .post(server.url("/fault"))
            .json(&update)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST /fault: {e}"));
        (r.status().as_u16(), r.json().await.expect("a JSON answer"))
    }

    async fn scrape(&self, server: &Server) -> Exposition {
        let (status, text) = self.get(server, "/metrics").await;
        assert_eq!(status, 200, "GET /metrics: {text}");
        let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
            .expect("a Prometheus text exposition");
        Exposition(scrape.samples)
    }

    /// Scrapes until `check` passes; panics with its last complaint after [`METRICS_TIMEOUT`].
    async fn wait_metrics(
        &self,
        server: &Server,
        check: impl Fn(&Exposition) -> Result<(), String>,
    ) -> Exposition {
        let deadline = Instant::now() + METRICS_TIMEOUT;
        loop {
            let exposition = self.scrape(server).await;
            match check(&exposition) {
                Ok(()) => return exposition,
                Err(why) if Instant::now() >= deadline => {
                    panic!("the metrics never matched: {why}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }
}

fn expect_eq(what: &str, got: f64, want: f64) -> Result<(), String> {
    if (got - want).abs() < 1e-9 {
        Ok(())
    } else {
        Err(format!("{what}: {got}, expected {want}"))
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// `successes` out of `n` draws of probability `p` lies within five standard deviations of its
/// mean (a false alarm less than once in a million runs).
fn assert_binomial(what: &str, successes: u64, n: u64, p: f64) {
    let mean = n as f64 * p;
    let tolerance = 5.0 * (n as f64 * p * (1.0 - p)).sqrt();
    assert!(
        (successes as f64 - mean).abs() <= tolerance,
        "{what}: {successes} of {n}, expected {mean} ± {tolerance:.1}"
    );
}

#[test]
fn answers_match_the_model_and_metrics_count_every_request() {
    let rt = runtime();
    for metrics in MetricsLibrary::ALL {
        for version in ["v1", "v2"] {
            let server = Server::start(&loopback(version, metrics), &[]);
            rt.block_on(answers_and_metrics(&server, metrics, version));
        }
    }
}

async fn answers_and_metrics(server: &Server, metrics: MetricsLibrary, version: &str) {
    let ctx = format!("{metrics} {version}");
    let client = Client::new();
    let model = Classifier::new(version.parse::<ModelVersion>().unwrap());
    let shape = Shape(metrics);

    let (status, body) = client.get(server, "/healthz").await;
    assert_eq!(status, 200, "{ctx}: /healthz: {body}");

    let mut classes: BTreeMap<String, u64> = BTreeMap::new();
    for _ in 0..3 {
        for text in DEFAULT_TEXTS {
            let a = client.text(server, text).await;
            assert_eq!(a.status, 200, "{ctx}: {text}: {}", a.body);
            let fields: Vec<&str> = a
                .body
                .as_object()
                .expect("a JSON object")
                .keys()
                .map(String::as_str)
                .collect();
            assert_eq!(
                fields,
                ["confidence", "prediction", "version"],
                "{ctx}: {}",
                a.body
            );
            assert_eq!(a.body["version"], version, "{ctx}");
            let expected = model.predict(text);
            assert_eq!(
                a.body["prediction"],
                expected.class.as_str(),
                "{ctx}: {text:?} is classified as canary-model's {version} classifies it"
            );
            let confidence = a.body["confidence"].as_f64().expect("a number");
            assert!(
                (confidence - expected.confidence).abs() < 1e-9,
                "{ctx}: {text:?}: confidence {confidence} vs canary-model's {}",
                expected.confidence
            );
            *classes
                .entry(a.body["prediction"].as_str().unwrap().to_owned())
                .or_default() += 1;
        }
    }
    let sent = 3 * DEFAULT_TEXTS.len() as u64;
    // The load generator's texts are 60 % positive for both versions: the skew test relies on it.
    assert_eq!(
        classes.get("positive").copied(),
        Some(sent * 6 / 10),
        "{ctx}: {classes:?}"
    );

    // A body without `text`: FastAPI's own validation answers 422.
    let bad = client
        .predict(server, &serde_json::json!({ "txt": "x" }))
        .await;
    assert_eq!(bad.status, 422, "{ctx}: {}", bad.body);

    let exposition = client
        .wait_metrics(server, |m| {
            expect_eq(
                "200 answers",
                m.counter(Shape::REQUESTS, &shape.requests(200)),
                sent as f64,
            )?;
            expect_eq(
                "422 answers",
                m.counter(Shape::REQUESTS, &shape.requests(422)),
                1.0,
            )?;
            let (observed, _) = m.observations(Shape::LATENCY, &shape.latency(), 0.1)?;
            expect_eq("latency observations", observed, sent as f64 + 1.0)?;
            for class in ["negative", "positive"] {
                let want = classes.get(class).copied().unwrap_or(0) as f64;
                let got = m.counter(Shape::PREDICTIONS, &shape.prediction(version, class));
                expect_eq(&format!("{class} predictions"), got, want)?;
            }
            Ok(())
        })
        .await;

    // No error series for /predict, and only the documented label names on the requests counter.
    expect_eq(
        "500 answers",
        exposition.counter(Shape::REQUESTS, &shape.requests(500)),
        0.0,
    )
    .unwrap_or_else(|e| panic!("{ctx}: {e}"));
    let label_names: Vec<&str> = shape.requests(200).iter().map(|(k, _)| *k).collect();
    for s in exposition.0.iter().filter(|s| s.metric == Shape::REQUESTS) {
        let mut names: Vec<&str> = s.labels.keys().map(String::as_str).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            label_names,
            "{ctx}: {}",
            exposition.describe(Shape::REQUESTS)
        );
    }
    // Both class series exist from the start, even for a class never predicted.
    for class in ["negative", "positive"] {
        assert!(
            exposition
                .find(Shape::PREDICTIONS, &shape.prediction(version, class))
                .is_some(),
            "{ctx}: {}",
            exposition.describe(Shape::PREDICTIONS)
        );
    }
    let sum = exposition
        .untyped(&format!("{}_sum", Shape::LATENCY), &shape.latency())
        .expect("the latency histogram's _sum");
    assert!(sum > 0.0, "{ctx}: latency sum {sum}");
    if metrics == MetricsLibrary::Instrumentator {
        // The library's unlabelled high-resolution histogram counts every handler.
        let (all, _) = exposition
            .observations("http_request_duration_highr_seconds", &[], 0.01)
            .unwrap();
        assert!(all >= sent as f64 + 2.0, "{ctx}: {all} observations");
    }
}

#[test]
fn faults_set_by_flags_environment_and_admin_endpoint_work() {
    let rt = runtime();
    for metrics in MetricsLibrary::ALL {
        let mut spec = loopback("v1", metrics);
        spec.name = Some(format!("fastapi-{metrics}"));
        // The cold start is set at start: by environment for one library, by flags for the other.
        let env: &[(&str, &str)] = match metrics {
            MetricsLibrary::PrometheusClient => &[
                ("FAULT_COLD_REQUESTS", "3"),
                ("FAULT_COLD_LATENCY_MS", "400"),
                ("FAULT_SEED", "11"),
            ],
            MetricsLibrary::Instrumentator => {
                spec.extra = [
                    "--cold-requests",
                    "3",
                    "--cold-latency-ms",
                    "400",
                    "--seed",
                    "11",
                ]
                .map(String::from)
                .to_vec();
                &[]
            }
        };
        let server = Server::start(&spec, env);
        rt.block_on(faults(&server, metrics));
    }
}

async fn faults(server: &Server, metrics: MetricsLibrary) {
    let ctx = metrics.to_string();
    let client = Client::new();
    let shape = Shape(metrics);
    let text = DEFAULT_TEXTS[0];
    // The histogram bucket that splits fast answers from slow ones in both libraries.
    let fast = match metrics {
        MetricsLibrary::PrometheusClient => 0.25,
        MetricsLibrary::Instrumentator => 0.1,
    };

    // Cold start: the first three requests take the cold latency, then the server is warm.
    let mut took = Vec::new();
    for _ in 0..8 {
        let a = client.text(server, text).await;
        assert_eq!(a.status, 200, "{ctx}: {}", a.body);
        assert_eq!(a.body["backend"], format!("fastapi-{metrics}"), "{ctx}");
        took.push(a.took);
    }
    for (i, t) in took[..3].iter().enumerate() {
        assert!(
            *t >= Duration::from_millis(400),
            "{ctx}: cold request {i} took {t:?}"
        );
    }
    let mut warm = took[3..].to_vec();
    warm.sort();
    assert!(
        warm[warm.len() / 2] < Duration::from_millis(200),
        "{ctx}: warm requests took {warm:?}"
    );
    let (_, config) = client.get(server, "/fault").await;
    let config: serde_json::Value = serde_json::from_str(&config).unwrap();
    assert_eq!(config["cold_requests"], 0, "{ctx}: {config}");
    let m = client
        .wait_metrics(server, |m| {
            let (total, below) = m.observations(Shape::LATENCY, &shape.latency(), fast)?;
            expect_eq("observations", total, 8.0)?;
            // Cold answers are slower than `fast`; warm ones may be too on a loaded machine.
            if total - below < 3.0 {
                return Err(format!(
                    "{} slow observations, expected at least 3",
                    total - below
                ));
            }
            Ok(())
        })
        .await;
    let (_, fast_before) = m
        .observations(Shape::LATENCY, &shape.latency(), fast)
        .unwrap();
    let sum_before = m
        .untyped(&format!("{}_sum", Shape::LATENCY), &shape.latency())
        .unwrap();

    // Added latency, set at run time.
    let (status, body) = client
        .fault(server, serde_json::json!({ "latency_ms": 300 }))
        .await;
    assert_eq!(status, 200, "{ctx}: {body}");
    for _ in 0..4 {
        let a = client.text(server, text).await;
        assert_eq!(a.status, 200, "{ctx}");
        assert!(
            a.took >= Duration::from_millis(300),
            "{ctx}: took {:?}",
            a.took
        );
    }
    client
        .wait_metrics(server, |m| {
            let (total, below) = m.observations(Shape::LATENCY, &shape.latency(), fast)?;
            expect_eq("observations", total, 12.0)?;
            expect_eq("fast observations", below, fast_before)?;
            let sum = m
                .untyped(&format!("{}_sum", Shape::LATENCY), &shape.latency())
                .unwrap_or_default();
            if sum - sum_before < 4.0 * 0.3 {
                return Err(format!("latency sum grew by {}", sum - sum_before));
            }
            Ok(())
        })
        .await;

    // Error rate: about 20 % of 300 requests answer 500, and the errors series counts each one.
    let (status, body) = client
        .fault(
            server,
            serde_json::json!({ "latency_ms": 0, "error_rate": 0.2 }),
        )
        .await;
    assert_eq!(status, 200, "{ctx}: {body}");
    let mut errors = 0;
    for _ in 0..N {
        let a = client.text(server, text).await;
        match a.status {
            200 => {}
            500 => {
                assert_eq!(
                    a.body,
                    serde_json::json!({ "error": "injected fault" }),
                    "{ctx}"
                );
                errors += 1;
            }
            other => panic!("{ctx}: status {other}: {}", a.body),
        }
    }
    assert_binomial(&format!("{ctx}: errors"), errors, N, 0.2);
    client
        .wait_metrics(server, |m| {
            expect_eq(
                "500 answers",
                m.counter(Shape::REQUESTS, &shape.requests(500)),
                errors as f64,
            )?;
            expect_eq(
                "200 answers",
                m.counter(Shape::REQUESTS, &shape.requests(200)),
                (12 + N - errors) as f64,
            )
        })
        .await;

    // Prediction skew: half the predictions forced to positive turn the load generator's 60 %
    // positive texts into 80 % positive answers, with no errors.
    let (status, body) = client
        .fault(server, serde_json::json!({ "error_rate": 0, "skew": 0.5 }))
        .await;
    assert_eq!(status, 200, "{ctx}: {body}");
    let before = client.scrape(server).await;
    let prediction =
        |m: &Exposition, class: &str| m.counter(Shape::PREDICTIONS, &shape.prediction("v1", class));
    let model = Classifier::new(ModelVersion::V1);
    let (mut positive, mut flipped, mut negative_texts) = (0u64, 0u64, 0u64);
    for _ in 0..SKEW_ROUNDS {
        for text in DEFAULT_TEXTS {
            let a = client.text(server, text).await;
            assert_eq!(a.status, 200, "{ctx}: {}", a.body);
            let answer = a.body["prediction"].as_str().unwrap();
            let unskewed = model.predict(text).class.as_str();
            if answer == "positive" {
                positive += 1;
            }
            if unskewed == "negative" {
                negative_texts += 1;
                flipped += u64::from(answer == "positive");
            } else {
                assert_eq!(answer, "positive", "{ctx}: skew only forces the skew class");
            }
        }
    }
    let sent = SKEW_ROUNDS * DEFAULT_TEXTS.len() as u64;
    assert_binomial(
        &format!("{ctx}: negative texts answered positive"),
        flipped,
        negative_texts,
        0.5,
    );
    let share = positive as f64 / sent as f64;
    assert!(
        (0.72..=0.88).contains(&share),
        "{ctx}: positive share {share}"
    );
    let negative_before = prediction(&before, "negative");
    let positive_before = prediction(&before, "positive");
    client
        .wait_metrics(server, |m| {
            expect_eq(
                "positive predictions",
                prediction(m, "positive") - positive_before,
                positive as f64,
            )?;
            expect_eq(
                "negative predictions",
                prediction(m, "negative") - negative_before,
                (sent - positive) as f64,
            )
        })
        .await;

    // Health failing, a rejected update, then a reset.
    let (status, _) = client
        .fault(server, serde_json::json!({ "health_failing": true }))
        .await;
    assert_eq!(status, 200);
    assert_eq!(client.get(server, "/healthz").await.0, 503, "{ctx}");
    let (status, body) = client
        .fault(server, serde_json::json!({ "error_rate": 2 }))
        .await;
    assert_eq!(status, 400, "{ctx}: {body}");
    assert!(
        body["error"].as_str().unwrap().contains("error_rate"),
        "{ctx}: {body}"
    );
    let (status, body) = client
        .fault(server, serde_json::json!({ "latency": 5 }))
        .await;
    assert_eq!(status, 400, "{ctx}: {body}");
    assert!(
        body["error"].as_str().unwrap().contains("latency"),
        "{ctx}: {body}"
    );
    let (_, config) = client.get(server, "/fault").await;
    let config: serde_json::Value = serde_json::from_str(&config).unwrap();
    assert_eq!(
        config["error_rate"], 0.0,
        "{ctx}: a rejected update changes nothing"
    );
    assert_eq!(config["skew"], 0.5, "{ctx}: {config}");
    let (status, config) = client
        .fault(server, serde_json::json!({ "reset": true }))
        .await;
    assert_eq!(status, 200);
    assert_eq!(config["skew"], 0.0, "{ctx}: {config}");
    assert_eq!(config["health_failing"], false, "{ctx}: {config}");
    assert_eq!(client.get(server, "/healthz").await.0, 200, "{ctx}");
}

#[test]
fn bad_settings_are_refused_with_the_setting_named() {
    let python = fastapi::python().unwrap_or_else(|e| panic!("{e}"));
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let mut spec = loopback("v1", MetricsLibrary::PrometheusClient);
        spec.extra = args.iter().map(ToString::to_string).collect();
        let out = Command::new(&python)
            .args(spec.args())
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .output()
            .expect("run serve.py");
        assert!(!out.status.success(), "{args:?} {env:?} was accepted");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = run(&["--error-rate", "1.5"], &[]);
    assert!(
        err.contains("error_rate") && err.contains("from 0 to 1"),
        "{err}"
    );
    let err = run(&[], &[("FAULT_SKEW", "lots")]);
    assert!(err.contains("FAULT_SKEW"), "{err}");
    let err = run(&[], &[("METRICS_LIBRARY", "statsd")]);
    assert!(
        err.contains("statsd") && err.contains("instrumentator"),
        "{err}"
    );
}
