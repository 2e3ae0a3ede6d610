//! Shared pieces of the end-to-end tests: root check, deployment start, CLI calls, load specs,
//! kernel flow counters.

#![allow(dead_code, reason = "each test file uses a different subset")]

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use canary_lab::deployment::{Deployment, DeploymentSpec};
use canary_lab::lab::{Node, SERVICE_PORT};
use canary_lab::loadgen::{LoadSpec, Report};

pub(crate) fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert!(
        unsafe { libc::geteuid() } == 0,
        "end-to-end tests need root (network namespaces, XDP): run the test command as root"
    );
}

/// Brings the deployment up or fails the test with the reason.
pub(crate) fn start(spec: DeploymentSpec) -> Deployment {
    require_root();
    Deployment::start(spec).unwrap_or_else(|e| panic!("deployment does not start: {e}"))
}

/// Runs a `canary` CLI verb and fails the test if it fails.
pub(crate) fn cli_ok(d: &Deployment, args: &[&str]) -> String {
    let out = d
        .cli(args)
        .unwrap_or_else(|e| panic!("canary {args:?}: {e}"));
    assert!(
        out.status.success(),
        "canary {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub(crate) fn vip(d: &Deployment) -> SocketAddr {
    SocketAddr::from((d.lab.vip(), SERVICE_PORT))
}

/// New connections only, bounded by `requests`, from every address of `client`.
pub(crate) fn new_conn_load(
    d: &Deployment,
    client: &Node,
    requests: u64,
    workers: usize,
) -> LoadSpec {
    let mut l = LoadSpec::new(vip(d));
    l.requests = Some(requests);
    l.duration = Duration::from_mins(1);
    l.new_conns = workers;
    l.sources = client
        .source_addresses()
        .into_iter()
        .map(IpAddr::V4)
        .collect();
    l
}

/// Runs `spec` in every client at once (seed differs per client) and returns the reports.
pub(crate) fn load_all_clients(d: &Deployment, spec: &LoadSpec) -> Vec<Report> {
    let procs: Vec<_> = (0..d.lab.clients().len())
        .map(|i| {
            let mut s = spec.clone();
            s.seed = spec.seed + i as u64;
            s.sources = d.lab.clients()[i]
                .source_addresses()
                .into_iter()
                .map(IpAddr::V4)
                .collect();
            d.spawn_load(i, &s)
                .unwrap_or_else(|e| panic!("start load in client {i}: {e}"))
        })
        .collect();
    procs
        .into_iter()
        .map(|p| {
            d.wait_load(p, spec.duration + Duration::from_secs(30))
                .unwrap_or_else(|e| panic!("load: {e}\n{}", d.daemon_log_tail()))
        })
        .collect()
}

/// Kernel new-flow counters per backend, read through the daemon's status.
pub(crate) fn flows(d: &Deployment) -> BTreeMap<String, u64> {
    d.backend_new_flows()
        .unwrap_or_else(|e| panic!("read backend counters: {e}"))
}

/// `after - before` per backend.
pub(crate) fn flow_delta(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0)))
        .collect()
}

/// Sum of the counters of backends whose name starts with `prefix` (`s` stable, `k` canary).
pub(crate) fn group_sum(m: &BTreeMap<String, u64>, prefix: &str) -> u64 {
    m.iter()
        .filter(|(k, _)| k.starts_with(prefix))
        .map(|(_, v)| v)
        .sum()
}

/// Waits for the daemon to publish counters newer than `since` (one poll later, plus margin).
pub(crate) fn settle_counters() {
    std::thread::sleep(Duration::from_millis(2200));
}

/// Polls the first service's status until `pred`, failing the test with the daemon log.
pub(crate) fn wait_status(
    d: &Deployment,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> (serde_json::Value, Duration) {
    let t = Instant::now();
    let s = d
        .wait_for(what, timeout, pred)
        .unwrap_or_else(|e| panic!("{e}\ndaemon log:\n{}", d.daemon_log_tail()));
    (s, t.elapsed())
}

/// The decisions in the status, as `action/reason: message` lines.
pub(crate) fn decisions(status: &serde_json::Value) -> Vec<String> {
    status["events"]
        .as_array()
        .map(|es| {
            es.iter()
                .map(|e| format!("{}/{}: {}", e["action"], e["reason"], e["message"]))
                .collect()
        })
        .unwrap_or_default()
}

/// Failures that are not an HTTP status from the backend (connect, reset, timeout, ...).
pub(crate) fn transport_failures(r: &Report) -> u64 {
    let f = &r.failures;
    f.connect + f.reset + f.timeout + f.closed + f.invalid_body + f.other
}

pub(crate) fn merge_versions(reports: &[Report]) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for r in reports {
        for (k, v) in &r.versions {
            *m.entry(k.clone()).or_default() += v;
        }
    }
    m
}

/// Load in the background, in chunks of `chunk`, from every client until dropped or stopped;
/// the reports of all chunks are kept.
pub(crate) struct Background<'a> {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handles: Vec<std::thread::ScopedJoinHandle<'a, Vec<Report>>>,
}

impl<'a> Background<'a> {
    pub(crate) fn start(
        scope: &'a std::thread::Scope<'a, '_>,
        d: &'a Deployment,
        spec: &LoadSpec,
        chunk: Duration,
    ) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let handles = (0..d.lab.clients().len())
            .map(|i| {
                let stop = stop.clone();
                let mut s = spec.clone();
                s.duration = chunk;
                s.requests = None;
                s.sources = d.lab.clients()[i]
                    .source_addresses()
                    .into_iter()
                    .map(IpAddr::V4)
                    .collect();
                scope.spawn(move || {
                    let mut out = Vec::new();
                    let mut n = 0;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        s.seed = (i as u64) * 1000 + n;
                        n += 1;
                        match d.load(i, &s) {
                            Ok(r) => out.push(r),
                            Err(e) => panic!("background load in client {i}: {e}"),
                        }
                    }
                    out
                })
            })
            .collect();
        Background { stop, handles }
    }

    /// Stops after the running chunks and returns every chunk's report.
    pub(crate) fn finish(self) -> Vec<Report> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.handles
            .into_iter()
            .flat_map(|h| h.join().expect("background load thread"))
            .collect()
    }
}

/// Totals of several reports: requests, ok, failed, transport failures, HTTP status failures.
pub(crate) fn totals(reports: &[Report]) -> (u64, u64, u64, u64, u64) {
    reports.iter().fold((0, 0, 0, 0, 0), |a, r| {
        (
            a.0 + r.requests,
            a.1 + r.ok,
            a.2 + r.failed,
            a.3 + transport_failures(r),
            a.4 + r.failures.status,
        )
    })
}
