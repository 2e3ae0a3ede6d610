//! A local client floods the admin port with 1,100 half-sent requests while the daemon runs
//! with a 1,024 open-file limit, and the daemon's connections to the backends get closed
//! meanwhile (so its probes need new sockets). The admin API keeps within its connection cap,
//! so the daemon never runs out of descriptors: every backend stays up, traffic through the
//! balancer keeps flowing without a failure, and `/status` still answers within a second.

mod e2e_support;

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use canary_lab::deployment::{metric_value, Deployment, DeploymentSpec, ADMIN_PORT};
use canary_lab::lab::LabSpec;
use canary_userspace::api::Status;
use e2e_support::{http_get, in_netns, load_all_clients, new_conn_load, start, totals};

const FLOOD: usize = 1_100;
const HOLD: Duration = Duration::from_secs(12);

fn xdp_counter(d: &Deployment, name: &str) -> u64 {
    d.status().unwrap().xdp.get(name).copied().unwrap_or(0)
}

/// `canary_admin_connections_closed_total{reason}` now.
fn closed_admin_connections(d: &Deployment, reason: &str) -> u64 {
    let metrics = d.daemon_metrics().expect("GET /metrics");
    metric_value(
        &metrics,
        "canary_admin_connections_closed_total",
        &[("reason", reason)],
    )
    .unwrap_or_else(|| panic!("no canary_admin_connections_closed_total{{reason={reason:?}}}"))
        as u64
}

/// The default `admin.max_connections`.
const MAX_CONNECTIONS: usize = 64;

#[test]
fn half_sent_admin_requests_do_not_take_the_backends_down() {
    let mut spec = DeploymentSpec::new(LabSpec::unique_tag('f'));
    spec.lab.clients = 1;
    spec.lab.stable = 2;
    spec.lab.canary = 1;
    spec.start = "paused".into();
    spec.daemon_open_files = Some(1024);
    let d = start(spec);
    let lb = d.lab.load_balancer().unwrap().netns.clone();
    let admin = SocketAddr::from(([127, 0, 0, 1], ADMIN_PORT));
    assert!(e2e_support::raise_open_files() > 2 * FLOOD as u64);
    let no_backend_before = xdp_counter(&d, "drop_no_backend");
    let reasons = [
        "evicted_at_cap",
        "refused_at_cap",
        "header_timeout",
        "idle_timeout",
    ];
    let closed_before: Vec<u64> = reasons
        .iter()
        .map(|r| closed_admin_connections(&d, r))
        .collect();

    let flooding = AtomicBool::new(true);
    let (flood, samples, reports) = std::thread::scope(|scope| {
        // The flood: connections that send half a request and stall, held open.
        let flood = scope.spawn(|| {
            in_netns(&lb, || {
                let mut held = Vec::new();
                let mut refused = 0;
                for _ in 0..FLOOD {
                    match std::net::TcpStream::connect_timeout(&admin, Duration::from_secs(2)) {
                        Ok(mut s) => {
                            let _ = s.write_all(b"GET /status HTTP/1.1\r\nhost: x\r\nx-a: ");
                            held.push(s);
                        }
                        Err(_) => refused += 1,
                    }
                }
                let opened = held.len();
                let t = Instant::now();
                while flooding.load(Ordering::Relaxed) && t.elapsed() < HOLD * 2 {
                    std::thread::sleep(Duration::from_millis(100));
                }
                drop(held);
                (opened, refused)
            })
        });
        // `/status` while the flood is held, twice a second.
        let samples = scope.spawn(|| {
            in_netns(&lb, || {
                std::thread::sleep(Duration::from_secs(1));
                let mut samples = Vec::new();
                let t = Instant::now();
                while t.elapsed() < HOLD {
                    samples.push(http_get(admin, "/status", Duration::from_secs(1)));
                    std::thread::sleep(Duration::from_millis(500));
                }
                samples
            })
        });
        // The daemon's keep-alive connections to the backends are closed now and then (as a
        // backend restart or an idle timeout would), so its probes need new sockets while the
        // flood is held.
        let closer = scope.spawn(|| {
            let mut closed = 0;
            while flooding.load(Ordering::Relaxed) {
                let out = d
                    .lab
                    .output_in(
                        &lb,
                        &["ss", "-K", "state", "established", "( dport = :8080 )"],
                    )
                    .expect("ss -K");
                assert!(out.status.success(), "ss -K: {out:?}");
                closed += 1;
                std::thread::sleep(Duration::from_millis(700));
            }
            closed
        });
        // Traffic through the balancer meanwhile.
        std::thread::sleep(Duration::from_secs(1));
        let mut load = new_conn_load(&d, &d.lab.clients()[0], 1_000_000, 8);
        load.requests = None;
        load.duration = Duration::from_secs(10);
        let reports = load_all_clients(&d, &load);
        let samples = samples.join().expect("status sampler");
        flooding.store(false, Ordering::Relaxed);
        let rounds = closer.join().expect("connection closer");
        println!("closed the daemon's backend connections {rounds} times");
        (flood.join().expect("flood"), samples, reports)
    });

    let (opened, refused) = flood;
    println!("flood: {opened} half-sent connections opened, {refused} refused");
    let mut worst = Duration::ZERO;
    let mut failures = Vec::new();
    let mut down = Vec::new();
    for s in &samples {
        match s {
            Ok((200, body, took)) => {
                worst = worst.max(*took);
                let status: Status = serde_json::from_str(body).expect("status JSON");
                let service = status.services.first().expect("a service in the status");
                for b in &service.backends {
                    if !b.up {
                        down.push(format!("{}: {:?}", b.name, b.down_reason));
                    }
                }
            }
            Ok((code, _, _)) => failures.push(format!("answered {code}")),
            Err(e) => failures.push(e.clone()),
        }
    }
    let (requests, ok, failed, transport, http) = totals(&reports);
    let no_backend = xdp_counter(&d, "drop_no_backend") - no_backend_before;
    println!(
        "/status during the flood: {} samples, slowest {:.0} ms, failures {failures:?}; \
         backends seen down: {down:?}; load: {requests} requests, {ok} ok, {failed} failed \
         ({transport} connection-level, {http} HTTP); drop_no_backend +{no_backend}",
        samples.len(),
        worst.as_secs_f64() * 1000.0
    );
    let log = d.daemon_log();
    let exhausted = log
        .lines()
        .filter(|l| l.contains("Too many open files"))
        .count();
    println!("daemon log:\n{}", d.daemon_log_tail());
    assert!(opened + refused == FLOOD);
    assert!(samples.len() >= 10, "{} status samples", samples.len());
    assert!(
        failures.is_empty(),
        "/status failed during the flood: {failures:?}"
    );
    assert!(worst < Duration::from_secs(1), "/status took {worst:?}");
    assert!(down.is_empty(), "backends went down: {down:?}");
    assert!(requests > 100, "{requests} requests");
    assert_eq!(
        failed,
        0,
        "{:?}",
        reports
            .iter()
            .map(|r| &r.failure_samples)
            .collect::<Vec<_>>()
    );
    assert_eq!(no_backend, 0);
    assert_eq!(exhausted, 0, "the daemon ran out of descriptors");
    // The cap did the closing, and the metric shows it.
    let closed: Vec<u64> = reasons
        .iter()
        .zip(&closed_before)
        .map(|(r, before)| closed_admin_connections(&d, r) - before)
        .collect();
    println!("admin connections closed during the flood: {reasons:?} = {closed:?}");
    assert!(
        closed[0] >= (opened / 2) as u64,
        "only {} connections evicted at the cap of {opened} opened",
        closed[0]
    );
    assert!(
        closed.iter().sum::<u64>() >= (opened - MAX_CONNECTIONS) as u64,
        "{closed:?} closed of {opened} opened"
    );
    // And after it, the daemon is fully usable.
    let status = d.service_status().unwrap();
    assert!(
        status.backends.iter().all(|b| b.up),
        "{:?}",
        status.backends
    );
    e2e_support::cli_ok(&d, &["set-weight", "10"]);
}
