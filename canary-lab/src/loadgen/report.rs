//! Outcomes of requests and their aggregation into a report. Pure: no I/O, no clock.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How a request's connection was used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// A new TCP connection for this one request.
    NewConnection,
    /// One request on a long-lived keep-alive connection.
    KeepAlive,
}

/// Why a request failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The TCP connection could not be opened (refused, unreachable, SYN timeout).
    Connect,
    /// The connection was reset (RST) or broke while in use.
    Reset,
    /// No complete answer within the timeout.
    Timeout,
    /// An answer with a status other than 200.
    Status,
    /// The peer closed the connection without (fully) answering.
    Closed,
    /// A 200 answer whose body is not the model's JSON.
    InvalidBody,
    /// Anything else.
    Other,
}

/// A failed request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub kind: FailureKind,
    /// HTTP status for `FailureKind::Status`.
    pub status: Option<u16>,
    pub detail: String,
}

/// The parts of a successful answer the report counts.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Answer {
    pub version: String,
    #[serde(default)]
    pub backend: Option<String>,
    #[serde(default)]
    pub prediction: Option<String>,
}

/// One request's result.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub mode: Mode,
    /// Local address the request left from (when connected, or bound).
    pub source: Option<IpAddr>,
    pub user: Option<String>,
    pub latency: Duration,
    pub result: Result<Answer, Failure>,
}

/// Failures by kind.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureCounts {
    pub connect: u64,
    pub reset: u64,
    pub timeout: u64,
    pub status: u64,
    pub closed: u64,
    pub invalid_body: u64,
    pub other: u64,
}

impl FailureCounts {
    fn add(&mut self, kind: FailureKind, n: u64) {
        let slot = match kind {
            FailureKind::Connect => &mut self.connect,
            FailureKind::Reset => &mut self.reset,
            FailureKind::Timeout => &mut self.timeout,
            FailureKind::Status => &mut self.status,
            FailureKind::Closed => &mut self.closed,
            FailureKind::InvalidBody => &mut self.invalid_body,
            FailureKind::Other => &mut self.other,
        };
        *slot += n;
    }

    fn merge(&mut self, o: &Self) {
        self.connect += o.connect;
        self.reset += o.reset;
        self.timeout += o.timeout;
        self.status += o.status;
        self.closed += o.closed;
        self.invalid_body += o.invalid_body;
        self.other += o.other;
    }

    pub fn total(&self) -> u64 {
        self.connect
            + self.reset
            + self.timeout
            + self.status
            + self.closed
            + self.invalid_body
            + self.other
    }
}

/// Counts for one connection mode.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModeSummary {
    pub requests: u64,
    pub ok: u64,
    pub failed: u64,
    pub versions: BTreeMap<String, u64>,
}

/// Latency of successful requests, in milliseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    pub count: u64,
    pub min: f64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

/// Nearest-rank percentile of sorted values (`p` in 0..=100).
pub fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

impl LatencySummary {
    /// From latencies in microseconds.
    pub fn from_micros(mut us: Vec<u64>) -> Self {
        us.sort_unstable();
        let ms = |v: Option<u64>| v.map_or(0.0, |v| v as f64 / 1000.0);
        let count = us.len() as u64;
        Self {
            count,
            min: ms(us.first().copied()),
            mean: if count == 0 {
                0.0
            } else {
                us.iter().sum::<u64>() as f64 / count as f64 / 1000.0
            },
            p50: ms(percentile(&us, 50.0)),
            p90: ms(percentile(&us, 90.0)),
            p95: ms(percentile(&us, 95.0)),
            p99: ms(percentile(&us, 99.0)),
            max: ms(us.last().copied()),
        }
    }
}

/// What one keep-alive connection saw.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionReport {
    pub id: u64,
    /// Local address (`ip:port`) once connected.
    pub local: Option<String>,
    pub user: Option<String>,
    pub requests: u64,
    pub ok: u64,
    pub failed: u64,
    pub versions: BTreeMap<String, u64>,
    pub backends: BTreeMap<String, u64>,
    /// The failure that ended the connection, if one did.
    pub ended_by: Option<FailureKind>,
}

impl ConnectionReport {
    pub fn new(id: u64, local: Option<SocketAddr>, user: Option<String>) -> Self {
        Self {
            id,
            local: local.map(|a| a.to_string()),
            user,
            ..Self::default()
        }
    }

    pub fn record(&mut self, result: &Result<Answer, Failure>) {
        self.requests += 1;
        match result {
            Ok(a) => {
                self.ok += 1;
                *self.versions.entry(a.version.clone()).or_default() += 1;
                if let Some(b) = &a.backend {
                    *self.backends.entry(b.clone()).or_default() += 1;
                }
            }
            Err(f) => {
                self.failed += 1;
                self.ended_by = Some(f.kind);
            }
        }
    }

    /// Answered by more than one backend (or version): the connection moved.
    pub fn moved(&self) -> bool {
        self.backends.len() > 1 || self.versions.len() > 1
    }
}

/// Keep-alive connections in total.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeepAliveSummary {
    /// Connections opened (including reopened ones).
    pub connections: u64,
    /// Connections that saw more than one backend or version.
    pub moved: u64,
    /// Connections ended by a failure.
    pub broken: u64,
}

/// The load generator's result (printed as JSON by `canary-loadgen`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub target: String,
    pub elapsed_seconds: f64,
    /// Requests attempted.
    pub requests: u64,
    /// Answered 200 with the model's JSON.
    pub ok: u64,
    pub failed: u64,
    /// Successful answers by model version.
    pub versions: BTreeMap<String, u64>,
    /// Successful answers by backend name.
    pub backends: BTreeMap<String, u64>,
    /// Successful answers by predicted class.
    pub predictions: BTreeMap<String, u64>,
    pub failures: FailureCounts,
    /// Non-200 answers by status code.
    pub status_codes: BTreeMap<String, u64>,
    pub latency_ms: LatencySummary,
    pub new_connection: ModeSummary,
    pub keep_alive: ModeSummary,
    pub keep_alive_connections: KeepAliveSummary,
    /// Successful answers by client source address, then version.
    pub by_source: BTreeMap<String, BTreeMap<String, u64>>,
    /// Successful answers by user id, then version (when user ids are sent).
    pub by_user: BTreeMap<String, BTreeMap<String, u64>>,
    /// Every keep-alive connection, in id order.
    pub connections: Vec<ConnectionReport>,
    /// Up to 10 distinct failure details, for diagnosis.
    pub failure_samples: Vec<String>,
}

impl Report {
    /// Share (0..=1) of successful answers from `version`.
    pub fn version_share(&self, version: &str) -> f64 {
        if self.ok == 0 {
            return 0.0;
        }
        self.versions.get(version).copied().unwrap_or(0) as f64 / self.ok as f64
    }
}

const MAX_FAILURE_SAMPLES: usize = 10;

/// Accumulates outcomes; one per worker, merged at the end.
#[derive(Clone, Debug, Default)]
pub struct Recorder {
    report: Report,
    latencies_us: Vec<u64>,
}

impl Recorder {
    pub fn record(&mut self, o: &Outcome) {
        let r = &mut self.report;
        r.requests += 1;
        let mode = match o.mode {
            Mode::NewConnection => &mut r.new_connection,
            Mode::KeepAlive => &mut r.keep_alive,
        };
        mode.requests += 1;
        match &o.result {
            Ok(a) => {
                r.ok += 1;
                mode.ok += 1;
                *mode.versions.entry(a.version.clone()).or_default() += 1;
                *r.versions.entry(a.version.clone()).or_default() += 1;
                if let Some(b) = &a.backend {
                    *r.backends.entry(b.clone()).or_default() += 1;
                }
                if let Some(p) = &a.prediction {
                    *r.predictions.entry(p.clone()).or_default() += 1;
                }
                if let Some(s) = o.source {
                    *r.by_source
                        .entry(s.to_string())
                        .or_default()
                        .entry(a.version.clone())
                        .or_default() += 1;
                }
                if let Some(u) = &o.user {
                    *r.by_user
                        .entry(u.clone())
                        .or_default()
                        .entry(a.version.clone())
                        .or_default() += 1;
                }
                self.latencies_us.push(o.latency.as_micros() as u64);
            }
            Err(f) => {
                r.failed += 1;
                mode.failed += 1;
                r.failures.add(f.kind, 1);
                if let Some(code) = f.status {
                    *r.status_codes.entry(code.to_string()).or_default() += 1;
                }
                let sample = format!("{:?}: {}", f.kind, f.detail);
                if r.failure_samples.len() < MAX_FAILURE_SAMPLES
                    && !r.failure_samples.contains(&sample)
                {
                    r.failure_samples.push(sample);
                }
            }
        }
    }

    /// Add a finished keep-alive connection.
    pub fn connection(&mut self, c: ConnectionReport) {
        let k = &mut self.report.keep_alive_connections;
        k.connections += 1;
        k.moved += u64::from(c.moved());
        k.broken += u64::from(c.ended_by.is_some());
        self.report.connections.push(c);
    }

    pub fn merge(&mut self, other: Recorder) {
        fn add_map(a: &mut BTreeMap<String, u64>, b: &BTreeMap<String, u64>) {
            for (k, v) in b {
                *a.entry(k.clone()).or_default() += v;
            }
        }
        fn add_mode(a: &mut ModeSummary, b: &ModeSummary) {
            a.requests += b.requests;
            a.ok += b.ok;
            a.failed += b.failed;
            add_map(&mut a.versions, &b.versions);
        }
        let (a, b) = (&mut self.report, other.report);
        a.requests += b.requests;
        a.ok += b.ok;
        a.failed += b.failed;
        add_map(&mut a.versions, &b.versions);
        add_map(&mut a.backends, &b.backends);
        add_map(&mut a.predictions, &b.predictions);
        add_map(&mut a.status_codes, &b.status_codes);
        a.failures.merge(&b.failures);
        add_mode(&mut a.new_connection, &b.new_connection);
        add_mode(&mut a.keep_alive, &b.keep_alive);
        for (k, m) in &b.by_source {
            add_map(a.by_source.entry(k.clone()).or_default(), m);
        }
        for (k, m) in &b.by_user {
            add_map(a.by_user.entry(k.clone()).or_default(), m);
        }
        a.keep_alive_connections.connections += b.keep_alive_connections.connections;
        a.keep_alive_connections.moved += b.keep_alive_connections.moved;
        a.keep_alive_connections.broken += b.keep_alive_connections.broken;
        a.connections.extend(b.connections);
        for s in b.failure_samples {
            if a.failure_samples.len() < MAX_FAILURE_SAMPLES && !a.failure_samples.contains(&s) {
                a.failure_samples.push(s);
            }
        }
        self.latencies_us.extend(other.latencies_us);
    }

    pub fn finish(self, target: String, elapsed: Duration) -> Report {
        let mut r = self.report;
        r.target = target;
        r.elapsed_seconds = elapsed.as_secs_f64();
        r.latency_ms = LatencySummary::from_micros(self.latencies_us);
        r.connections.sort_by_key(|c| c.id);
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(version: &str, backend: &str, ms: u64, mode: Mode) -> Outcome {
        Outcome {
            mode,
            source: Some("198.18.0.51".parse().unwrap()),
            user: Some("user-1".into()),
            latency: Duration::from_millis(ms),
            result: Ok(Answer {
                version: version.into(),
                backend: Some(backend.into()),
                prediction: Some("positive".into()),
            }),
        }
    }

    fn failed(kind: FailureKind, status: Option<u16>) -> Outcome {
        Outcome {
            mode: Mode::NewConnection,
            source: None,
            user: None,
            latency: Duration::from_millis(1),
            result: Err(Failure {
                kind,
                status,
                detail: "x".into(),
            }),
        }
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), Some(50));
        assert_eq!(percentile(&v, 95.0), Some(95));
        assert_eq!(percentile(&v, 100.0), Some(100));
        assert_eq!(percentile(&v, 0.0), Some(1));
        assert_eq!(percentile(&[7], 99.0), Some(7));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn merged_workers_add_up() {
        let mut a = Recorder::default();
        a.record(&ok("v1", "s0", 2, Mode::NewConnection));
        a.record(&failed(FailureKind::Status, Some(500)));
        let mut b = Recorder::default();
        b.record(&ok("v2", "k0", 4, Mode::KeepAlive));
        b.record(&failed(FailureKind::Reset, None));
        let mut c = ConnectionReport::new(3, None, None);
        c.record(&ok("v2", "k0", 1, Mode::KeepAlive).result);
        c.record(&ok("v2", "k1", 1, Mode::KeepAlive).result);
        b.connection(c);
        a.merge(b);
        let r = a.finish("198.18.0.100:8080".into(), Duration::from_secs(2));
        assert_eq!((r.requests, r.ok, r.failed), (4, 2, 2));
        assert_eq!(r.versions["v1"], 1);
        assert_eq!(r.versions["v2"], 1);
        assert_eq!(r.backends["k0"], 1);
        assert_eq!(r.failures.status, 1);
        assert_eq!(r.failures.reset, 1);
        assert_eq!(r.failures.total(), 2);
        assert_eq!(r.status_codes["500"], 1);
        assert_eq!(r.new_connection.requests, 3);
        assert_eq!(r.keep_alive.ok, 1);
        assert_eq!(r.by_source["198.18.0.51"]["v1"], 1);
        assert_eq!(r.by_user["user-1"]["v2"], 1);
        assert_eq!(r.keep_alive_connections.connections, 1);
        assert_eq!(r.keep_alive_connections.moved, 1, "k0 then k1 is a move");
        assert_eq!(r.latency_ms.count, 2);
        assert!((r.latency_ms.mean - 3.0).abs() < 1e-9);
        assert!((r.latency_ms.max - 4.0).abs() < 1e-9);
        assert!((r.version_share("v2") - 0.5).abs() < 1e-9);
        assert_eq!(r.failure_samples.len(), 2);
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<Report>(&json).unwrap(), r);
    }

    #[test]
    fn a_connection_that_stays_did_not_move() {
        let mut c = ConnectionReport::new(0, None, None);
        for _ in 0..3 {
            c.record(&ok("v1", "s1", 1, Mode::KeepAlive).result);
        }
        assert!(!c.moved());
        c.record(&failed(FailureKind::Closed, None).result);
        assert_eq!(c.ended_by, Some(FailureKind::Closed));
        assert_eq!((c.requests, c.ok, c.failed), (4, 3, 1));
    }
}
