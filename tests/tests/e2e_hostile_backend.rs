//! A canary backend whose `/metrics` streams junk series without end. The daemon reads at most
//! `upstream.max_scrape_bytes` (4 MiB by default) of it per poll, so its memory stays bounded
//! (peak RSS read from /proc), that backend's metrics count as missing with the reason in
//! status and in `canary_upstream_scrape_errors_total`, the rollout holds, and it goes on once
//! the backend is sane again.

mod e2e_support;

use std::time::{Duration, Instant};

use canary_lab::deployment::{metric_value, Deployment, DeploymentSpec};
use canary_lab::lab::LabSpec;
use canary_userspace::api::{BackendStatus, ServiceStatus};
use canary_userspace::judge::Reason;
use e2e_support::{cli_ok, new_conn_load, start, Background};

/// Peak resident set size of a process, in bytes (`VmHWM` of /proc/PID/status).
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmHWM in /proc/{pid}/status"));
    kib * 1024
}

fn daemon_pid(d: &Deployment) -> u32 {
    d.daemon.as_ref().expect("daemon running").pid()
}

fn too_large_count(d: &Deployment) -> f64 {
    let text = d.daemon_metrics().expect("daemon metrics");
    metric_value(
        &text,
        "canary_upstream_scrape_errors_total",
        &[("backend", "k0"), ("reason", "too_large")],
    )
    .unwrap_or(0.0)
}

fn k0(s: &ServiceStatus) -> &BackendStatus {
    e2e_support::backend(s, "k0")
}

#[test]
fn an_endless_metrics_answer_costs_bounded_memory_and_counts_as_missing() {
    const MIB: u64 = 1 << 20;
    let mut spec = DeploymentSpec::new(LabSpec::unique_tag('h'));
    spec.lab.clients = 1;
    spec.lab.stable = 2;
    spec.lab.canary = 1;
    spec.lab.client_extra_addresses = 20;
    spec.start = "paused".into();
    spec.interval = "2s".into();
    spec.min_samples = 200;
    let d = start(spec);
    cli_ok(&d, &["set-weight", "25"]);
    let pid = daemon_pid(&d);
    let mut load = new_conn_load(&d, &d.lab.clients()[0], 0, 21);
    load.interval = Duration::from_millis(10);
    let k0_node = d.lab.canary()[0].clone();

    std::thread::scope(|scope| {
        let bg = Background::start(scope, &d, &load, Duration::from_secs(2));
        // A few polls of normal operation (paused: scrapes go on, no step) set the baseline of
        // the peak RSS.
        std::thread::sleep(Duration::from_secs(3));
        let before = peak_rss(pid);
        assert!(k0(&d.service_status().unwrap()).metrics_ok);

        d.fault(&k0_node, r#"{"metrics_flood":true}"#).unwrap();
        cli_ok(&d, &["resume"]);
        let t0 = Instant::now();
        let mut last = None;
        let mut max_weight = 0.0_f64;
        // Ten polls of a backend streaming as fast as the link takes it.
        while t0.elapsed() < Duration::from_secs(10) {
            let asked = Instant::now();
            let s = d
                .service_status()
                .expect("the daemon answers during the flood");
            assert!(
                asked.elapsed() < Duration::from_secs(1),
                "/status took {:?} during the flood",
                asked.elapsed()
            );
            max_weight = max_weight.max(s.weight_percent);
            last = Some(s);
            std::thread::sleep(Duration::from_millis(250));
        }
        let after = peak_rss(pid);
        let rejected = too_large_count(&d);
        let last = last.expect("a status during the flood");
        let k = k0(&last);
        println!(
            "flood: daemon peak RSS {:.1} MiB before, {:.1} MiB after 10 s; {rejected} scrapes \
             refused as too large; k0 metrics_ok {} ({:?}); phase {} weight {} (highest \
             {max_weight}); last decision: {}",
            before as f64 / MIB as f64,
            after as f64 / MIB as f64,
            k.metrics_ok,
            k.metrics_problem,
            last.phase,
            last.weight_percent,
            e2e_support::last_message(&last),
        );
        // 4 MiB of body at most (its buffer's capacity at most 8 MiB), one poll at a time.
        // Without the cap the daemon buffered all it could read within the poll's timeout:
        // 60 MiB more here.
        assert!(
            after < before + 16 * MIB,
            "peak RSS grew by {} MiB",
            (after - before) / MIB
        );
        assert!(rejected >= 5.0, "only {rejected} scrapes were refused");
        assert!(!k.metrics_ok);
        let problem = k.metrics_problem.as_deref().unwrap_or_default();
        assert!(
            problem.starts_with(
                "metrics answer is larger than upstream.max_scrape_bytes (4194304 bytes)"
            ),
            "{problem}"
        );
        assert_eq!(last.phase, "stepping");
        assert!(max_weight <= 25.0, "promoted on missing metrics");
        assert_eq!(
            last.last_decision.as_ref().map(|d| d.reason),
            Some(Reason::MetricsMissing)
        );

        // Sane again: the same rollout goes on.
        d.fault(&k0_node, r#"{"metrics_flood":false}"#).unwrap();
        let (s, waited) = e2e_support::wait_status(
            &d,
            "a step up once the metrics are sane",
            Duration::from_secs(30),
            |s| s.weight_percent > 25.0 || s.phase == "rolled_back",
        );
        println!(
            "metrics sane: {:.1}s later phase {} weight {}",
            waited.as_secs_f64(),
            s.phase,
            s.weight_percent
        );
        assert!(k0(&s).metrics_ok);
        assert!(s.weight_percent > 25.0);
        bg.finish()
    });
}
