//! Shared pieces of the end-to-end tests: root check, deployment start, CLI calls, load specs,
//! kernel flow counters.

#![allow(dead_code, reason = "each test file uses a different subset")]

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use canary_lab::deployment::{Deployment, DeploymentSpec};
use canary_lab::lab::{Node, SERVICE_PORT};
use canary_lab::loadgen::{LoadSpec, Report};
use canary_userspace::api::ServiceStatus;

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
    pred: impl Fn(&ServiceStatus) -> bool,
) -> (ServiceStatus, Duration) {
    let t = Instant::now();
    let s = d
        .wait_for(what, timeout, pred)
        .unwrap_or_else(|e| panic!("{e}\ndaemon log:\n{}", d.daemon_log_tail()));
    (s, t.elapsed())
}

/// The first service's status, failing the test when it cannot be read.
pub(crate) fn service_status(d: &Deployment) -> ServiceStatus {
    d.service_status()
        .unwrap_or_else(|e| panic!("read the status: {e}\ndaemon log:\n{}", d.daemon_log_tail()))
}

/// A backend's status by name, failing the test when it is not listed.
pub(crate) fn backend<'a>(
    s: &'a ServiceStatus,
    name: &str,
) -> &'a canary_userspace::api::BackendStatus {
    s.backends
        .iter()
        .find(|b| b.name == name)
        .unwrap_or_else(|| panic!("backend {name} is not in the status: {s:?}"))
}

/// The decisions in the status, as `action/reason: message` lines.
pub(crate) fn decisions(status: &ServiceStatus) -> Vec<String> {
    status
        .events
        .iter()
        .map(|e| format!("{}/{}: {}", e.action.as_str(), e.reason.as_str(), e.message))
        .collect()
}

/// The last decision's message (empty when there is none).
pub(crate) fn last_message(status: &ServiceStatus) -> &str {
    status
        .last_decision
        .as_ref()
        .map_or("", |d| d.message.as_str())
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
    pub(crate) fn finish(mut self) -> Vec<Report> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        std::mem::take(&mut self.handles)
            .into_iter()
            .flat_map(|h| h.join().expect("background load thread"))
            .collect()
    }
}

impl Drop for Background<'_> {
    /// A test that fails while the load runs stops it: the scope then ends after the running
    /// chunks, the failure is reported and the lab is torn down (instead of waiting forever).
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
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

/// Runs `f` on a thread that has entered network namespace `netns` (sockets it opens live
/// there, and stay usable after it returns).
pub(crate) fn in_netns<T: Send>(netns: &str, f: impl FnOnce() -> T + Send) -> T {
    let path = format!("/run/netns/{netns}");
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let file =
                    std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                    .unwrap_or_else(|e| panic!("setns {path}: {e}"));
                f()
            })
            .join()
            .expect("thread in the namespace")
    })
}

/// Raises this process's open-file soft limit to the hard limit; returns the new soft limit.
pub(crate) fn raise_open_files() -> u64 {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut l), 0);
        l.rlim_cur = l.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &raw const l), 0);
    }
    l.rlim_cur
}

/// `GET path` on a fresh connection to `addr` with a `timeout` for the whole exchange;
/// returns the status code, the body and how long it took.
pub(crate) fn http_get(
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<(u16, String, Duration), String> {
    use std::io::{Read as _, Write as _};
    let t = Instant::now();
    let mut s = std::net::TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("not an HTTP answer: {text:?}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body, t.elapsed()))
}

/// The `CONFIG` entry the daemon wrote, read from its pin (as the XDP program sees it).
pub(crate) fn pinned_global_config(d: &Deployment) -> canary_common::GlobalConfig {
    let path = d
        .lab
        .bpffs()
        .join("canary")
        .join(canary_common::maps::CONFIG);
    let data = aya::maps::MapData::from_pin(&path)
        .unwrap_or_else(|e| panic!("open the pinned map {}: {e}", path.display()));
    let config: aya::maps::Array<_, canary_common::GlobalConfig> =
        aya::maps::Array::try_from(aya::maps::Map::Array(data))
            .unwrap_or_else(|e| panic!("{} is not an array of GlobalConfig: {e}", path.display()));
    config
        .get(&0, 0)
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Fails the test unless the status's canary weight is exactly `percent` (the daemon's weights
/// are whole basis points, so their percent values compare exactly).
#[allow(
    clippy::float_cmp,
    reason = "exact: whole basis points divided by 100 on both sides"
)]
pub(crate) fn assert_weight(s: &ServiceStatus, percent: f64) {
    assert!(
        s.weight_percent == percent,
        "weight {}%, expected {percent}%: {s:?}",
        s.weight_percent
    );
}
