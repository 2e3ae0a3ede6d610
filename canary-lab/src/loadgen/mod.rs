//! Load generator: concurrent clients, some opening a new connection per request, some holding
//! long-lived keep-alive connections, bounded in requests and time. It reports per-version
//! counts, failures by kind, latency percentiles, and which backend each keep-alive connection
//! saw. `canary-loadgen` runs it inside a lab client namespace and prints the report as JSON.

mod http;
pub mod report;
mod udp;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

pub use report::{
    Answer, ConnectionReport, Failure, FailureCounts, FailureKind, KeepAliveSummary,
    LatencySummary, Mode, ModeSummary, Outcome, Recorder, Report,
};

/// Texts sent when none are given: both model versions classify them 60/40 positive/negative,
/// so a healthy canary shows no prediction shift (the skew fault creates one).
pub const DEFAULT_TEXTS: &[&str] = &[
    "great product, works perfectly",
    "I love it, fast and helpful",
    "excellent support, would recommend",
    "nice and simple, does the job",
    "best purchase this year",
    "solid and reliable, works fine",
    "terrible, it crashes all the time",
    "slow and buggy, I want a refund",
    "not good, disappointing",
    "meh, slow and expensive",
];

/// What load to generate (also the `canary-loadgen` command line).
#[derive(Clone, Debug, PartialEq, clap::Args, Serialize, Deserialize)]
pub struct LoadSpec {
    /// Target `ip:port` (the VIP, or a backend's address).
    #[arg(long)]
    pub target: SocketAddr,
    /// Request path.
    #[arg(long, default_value = "/predict")]
    pub path: String,
    /// HTTP method: POST sends a JSON `{"text": ...}` body, GET none.
    #[arg(long, default_value = "POST")]
    pub method: String,
    /// Stop after this many requests in total (default: only the duration bounds the run).
    #[arg(long)]
    pub requests: Option<u64>,
    /// Stop after this long.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    #[serde(with = "humantime_serde_compat")]
    pub duration: Duration,
    /// Workers that open a new connection for every request.
    #[arg(long, default_value_t = 8)]
    pub new_conns: usize,
    /// Pause of each new-connection worker between requests.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    #[serde(with = "humantime_serde_compat")]
    pub interval: Duration,
    /// Long-lived keep-alive connections.
    #[arg(long, default_value_t = 0)]
    pub keepalive: usize,
    /// Pause between requests on each keep-alive connection.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "200ms")]
    #[serde(with = "humantime_serde_compat")]
    pub keepalive_interval: Duration,
    /// Do not reopen a keep-alive connection after it fails.
    #[arg(long)]
    pub no_reconnect: bool,
    /// Per-request timeout (connect included).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "2s")]
    #[serde(with = "humantime_serde_compat")]
    pub timeout: Duration,
    /// Send a user id header with values `user-0` .. `user-(N-1)` (0: no header).
    #[arg(long, default_value_t = 0)]
    pub users: usize,
    /// Name of the user id header.
    #[arg(long, default_value = "x-user-id")]
    pub user_header: String,
    /// Source addresses to bind, used round-robin by workers and connections (repeatable).
    #[arg(long = "source")]
    pub sources: Vec<IpAddr>,
    /// Request texts, chosen at random per request (repeatable; default: a built-in mix).
    #[arg(long = "text")]
    pub texts: Vec<String>,
    /// Seed of the random choices.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// UDP instead of HTTP (`canary-model --udp-listen`): a new-connection worker sends each
    /// request from a new socket (a new flow), a keep-alive "connection" is one socket that
    /// sends all its requests (one flow) and keeps it after a failure.
    #[arg(long)]
    #[serde(default)]
    pub udp: bool,
}

/// Durations as humantime strings in JSON ("1s 500ms").
mod humantime_serde_compat {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

impl LoadSpec {
    /// A spec for `target` with the command line's defaults.
    pub fn new(target: SocketAddr) -> Self {
        Self {
            target,
            path: "/predict".into(),
            method: "POST".into(),
            requests: None,
            duration: Duration::from_secs(10),
            new_conns: 8,
            interval: Duration::ZERO,
            keepalive: 0,
            keepalive_interval: Duration::from_millis(200),
            no_reconnect: false,
            timeout: Duration::from_secs(2),
            users: 0,
            user_header: "x-user-id".into(),
            sources: Vec::new(),
            texts: Vec::new(),
            seed: 1,
            udp: false,
        }
    }

    /// The `canary-loadgen` arguments that reproduce this spec.
    pub fn to_args(&self) -> Vec<String> {
        let d = |d: Duration| humantime::format_duration(d).to_string().replace(' ', "");
        let mut a = vec![
            "--target".into(),
            self.target.to_string(),
            "--path".into(),
            self.path.clone(),
            "--method".into(),
            self.method.clone(),
            "--duration".into(),
            d(self.duration),
            "--new-conns".into(),
            self.new_conns.to_string(),
            "--interval".into(),
            d(self.interval),
            "--keepalive".into(),
            self.keepalive.to_string(),
            "--keepalive-interval".into(),
            d(self.keepalive_interval),
            "--timeout".into(),
            d(self.timeout),
            "--users".into(),
            self.users.to_string(),
            "--user-header".into(),
            self.user_header.clone(),
            "--seed".into(),
            self.seed.to_string(),
        ];
        if let Some(n) = self.requests {
            a.extend(["--requests".into(), n.to_string()]);
        }
        if self.no_reconnect {
            a.push("--no-reconnect".into());
        }
        if self.udp {
            a.push("--udp".into());
        }
        for s in &self.sources {
            a.extend(["--source".into(), s.to_string()]);
        }
        for t in &self.texts {
            a.extend(["--text".into(), t.clone()]);
        }
        a
    }
}

/// Requests left to send, shared by all workers (`None`: unbounded).
#[derive(Debug)]
struct Budget(Option<AtomicU64>);

impl Budget {
    fn take(&self) -> bool {
        match &self.0 {
            None => true,
            Some(left) => left
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok(),
        }
    }
}

struct Shared {
    spec: LoadSpec,
    texts: Vec<String>,
    budget: Budget,
    deadline: Instant,
}

impl Shared {
    fn source(&self, i: usize) -> Option<IpAddr> {
        (!self.spec.sources.is_empty()).then(|| self.spec.sources[i % self.spec.sources.len()])
    }

    fn body(&self, rng: &mut StdRng) -> String {
        let text = &self.texts[rng.gen_range(0..self.texts.len())];
        serde_json::json!({ "text": text }).to_string()
    }

    /// The start of long-lived worker `index` (a keep-alive connection or a UDP flow): its
    /// random stream, source address and user, after a random offset within
    /// `keepalive_interval` so the workers' requests spread instead of coming in bursts.
    async fn long_lived_start(&self, index: usize) -> (StdRng, Option<IpAddr>, Option<String>) {
        let mut rng = StdRng::seed_from_u64(self.spec.seed.wrapping_mul(7_000_003) + index as u64);
        let offset = self.spec.keepalive_interval.mul_f64(rng.gen::<f64>());
        tokio::time::sleep(offset).await;
        (rng, self.source(index), user_for(&self.spec, index))
    }

    fn more(&self) -> bool {
        Instant::now() < self.deadline && self.budget.take()
    }
}

/// Run the load and return the report.
pub async fn run(spec: &LoadSpec) -> Report {
    let started = Instant::now();
    let texts = if spec.texts.is_empty() {
        DEFAULT_TEXTS.iter().map(|t| (*t).to_owned()).collect()
    } else {
        spec.texts.clone()
    };
    let shared = Arc::new(Shared {
        spec: spec.clone(),
        texts,
        budget: Budget(spec.requests.map(AtomicU64::new)),
        deadline: started + spec.duration,
    });
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..spec.new_conns {
        tasks.spawn(new_connection_worker(shared.clone(), w));
    }
    for c in 0..spec.keepalive {
        if spec.udp {
            tasks.spawn(udp_flow_worker(shared.clone(), c));
        } else {
            tasks.spawn(keepalive_worker(shared.clone(), c));
        }
    }
    let mut all = Recorder::default();
    while let Some(done) = tasks.join_next().await {
        all.merge(done.expect("load workers do not panic"));
    }
    all.finish(spec.target.to_string(), started.elapsed())
}

fn user_for(spec: &LoadSpec, n: usize) -> Option<String> {
    (spec.users > 0).then(|| format!("user-{}", n % spec.users))
}

async fn new_connection_worker(shared: Arc<Shared>, worker: usize) -> Recorder {
    let spec = &shared.spec;
    let mut rng = StdRng::seed_from_u64(spec.seed.wrapping_mul(1_000_003) + worker as u64);
    let source = shared.source(worker);
    let mut rec = Recorder::default();
    while shared.more() {
        let user = user_for(spec, rng.gen_range(0..spec.users.max(1)));
        let body = shared.body(&mut rng);
        let t = Instant::now();
        // The address actually used, also when the kernel picked it.
        let mut local = source;
        let result = if spec.udp {
            tokio::time::timeout(spec.timeout, async {
                let mut flow = udp::Flow::open(spec.target, source).await?;
                local = Some(flow.local().ip());
                flow.request(&body).await
            })
            .await
            .unwrap_or_else(|_| Err(udp::no_answer(spec.timeout)))
        } else {
            tokio::time::timeout(spec.timeout, async {
                let mut conn = http::Connection::open(spec.target, source).await?;
                local = Some(conn.local().ip());
                let answer = conn.request(spec, &body, user.as_deref(), true).await;
                conn.close().await;
                answer
            })
            .await
            .unwrap_or_else(|_| Err(http::timeout_failure(spec.timeout)))
        };
        rec.record(&Outcome {
            mode: Mode::NewConnection,
            source: local,
            user,
            latency: t.elapsed(),
            result,
        });
        if !spec.interval.is_zero() {
            tokio::time::sleep(spec.interval).await;
        }
    }
    rec
}

async fn keepalive_worker(shared: Arc<Shared>, index: usize) -> Recorder {
    let spec = &shared.spec;
    let (mut rng, source, user) = shared.long_lived_start(index).await;
    let mut rec = Recorder::default();
    let mut generation = 0u64;
    'connections: loop {
        if Instant::now() >= shared.deadline {
            break;
        }
        let id = index as u64 + generation * spec.keepalive as u64;
        generation += 1;
        let t = Instant::now();
        let mut conn =
            match tokio::time::timeout(spec.timeout, http::Connection::open(spec.target, source))
                .await
                .unwrap_or_else(|_| Err(http::timeout_failure(spec.timeout)))
            {
                Ok(c) => c,
                Err(f) => {
                    if !shared.budget.take() {
                        break;
                    }
                    let result = Err(f);
                    let mut report = ConnectionReport::new(id, None, user.clone());
                    report.record(&result);
                    rec.record(&Outcome {
                        mode: Mode::KeepAlive,
                        source,
                        user: user.clone(),
                        latency: t.elapsed(),
                        result,
                    });
                    rec.connection(report);
                    if spec.no_reconnect {
                        break;
                    }
                    tokio::time::sleep(spec.keepalive_interval).await;
                    continue;
                }
            };
        let mut report = ConnectionReport::new(id, Some(conn.local()), user.clone());
        while shared.more() {
            let body = shared.body(&mut rng);
            let t = Instant::now();
            let result = tokio::time::timeout(
                spec.timeout,
                conn.request(spec, &body, user.as_deref(), false),
            )
            .await
            .unwrap_or_else(|_| Err(http::timeout_failure(spec.timeout)));
            report.record(&result);
            let failed = result.is_err();
            rec.record(&Outcome {
                mode: Mode::KeepAlive,
                source: Some(conn.local().ip()),
                user: user.clone(),
                latency: t.elapsed(),
                result,
            });
            if failed {
                rec.connection(report);
                if spec.no_reconnect {
                    break 'connections;
                }
                continue 'connections;
            }
            tokio::time::sleep(spec.keepalive_interval).await;
        }
        conn.close().await;
        rec.connection(report);
        break;
    }
    rec
}

/// One long-lived UDP flow (one socket, one 5-tuple) sending a request every
/// `keepalive_interval`; reported like a keep-alive connection (which backends answered it). A
/// failed request (no answer in time) does not end the flow.
async fn udp_flow_worker(shared: Arc<Shared>, index: usize) -> Recorder {
    let spec = &shared.spec;
    let (mut rng, source, user) = shared.long_lived_start(index).await;
    let mut rec = Recorder::default();
    let mut flow = match udp::Flow::open(spec.target, source).await {
        Ok(f) => f,
        Err(f) => {
            if shared.budget.take() {
                let result = Err(f);
                let mut report = ConnectionReport::new(index as u64, None, user.clone());
                report.record(&result);
                rec.record(&Outcome {
                    mode: Mode::KeepAlive,
                    source,
                    user,
                    latency: Duration::ZERO,
                    result,
                });
                rec.connection(report);
            }
            return rec;
        }
    };
    let mut report = ConnectionReport::new(index as u64, Some(flow.local()), user.clone());
    while shared.more() {
        let body = shared.body(&mut rng);
        let t = Instant::now();
        let result = tokio::time::timeout(spec.timeout, flow.request(&body))
            .await
            .unwrap_or_else(|_| Err(udp::no_answer(spec.timeout)));
        report.record(&result);
        rec.record(&Outcome {
            mode: Mode::KeepAlive,
            source: Some(flow.local().ip()),
            user: user.clone(),
            latency: t.elapsed(),
            result,
        });
        tokio::time::sleep(spec.keepalive_interval).await;
    }
    rec.connection(report);
    rec
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_round_trip_through_the_command_line() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            spec: LoadSpec,
        }
        let mut spec = LoadSpec::new("198.18.0.100:8080".parse().unwrap());
        spec.requests = Some(5000);
        spec.duration = Duration::from_millis(1500);
        spec.keepalive = 500;
        spec.users = 10;
        spec.no_reconnect = true;
        spec.udp = true;
        spec.sources = vec!["198.19.0.1".parse().unwrap(), "198.19.0.2".parse().unwrap()];
        spec.texts = vec!["good stuff".into()];
        let mut argv = vec!["canary-loadgen".to_owned()];
        argv.extend(spec.to_args());
        let parsed = <Cli as clap::Parser>::try_parse_from(argv).unwrap().spec;
        assert_eq!(parsed, spec);
    }

    #[test]
    fn budget_runs_out_exactly() {
        let b = Budget(Some(AtomicU64::new(2)));
        assert!(b.take());
        assert!(b.take());
        assert!(!b.take());
        assert!(Budget(None).take());
    }

    #[test]
    fn spec_serialises_durations_readably() {
        let spec = LoadSpec::new("127.0.0.1:1".parse().unwrap());
        let json = serde_json::to_value(&spec).unwrap();
        assert_eq!(json["duration"], "10s");
        assert_eq!(serde_json::from_value::<LoadSpec>(json).unwrap(), spec);
    }
}
