//! Real TCP traffic through the XDP balancer in network namespaces: a client connects to the
//! VIP, the load balancer forwards by direct server return, backends answer the client directly.

use std::time::Duration;

use canary_lab::deployment::{Deployment, DeploymentSpec};
use canary_lab::lab::LabSpec;
use canary_lab::loadgen::LoadSpec;

fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert!(
        unsafe { libc::geteuid() } == 0,
        "end-to-end tests need root (network namespaces, XDP): run the test command as root"
    );
}

#[test]
fn tcp_connections_to_the_vip_reach_both_groups_and_complete() {
    require_root();
    let mut spec = DeploymentSpec::new(LabSpec::unique_tag('s'));
    spec.lab.clients = 1;
    spec.lab.stable = 2;
    spec.lab.canary = 1;
    spec.start = "paused".into();
    let d = Deployment::start(spec).expect("deployment starts");

    let out = d.cli(&["set-weight", "50"]).unwrap();
    assert!(
        out.status.success(),
        "set-weight failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let vip = std::net::SocketAddr::from((d.lab.vip(), canary_lab::lab::SERVICE_PORT));
    let mut load = LoadSpec::new(vip);
    load.requests = Some(1000);
    load.duration = Duration::from_secs(30);
    load.new_conns = 8;
    let report = d
        .load(0, &load)
        .unwrap_or_else(|e| panic!("load failed: {e}\ndaemon log:\n{}", d.daemon_log_tail()));
    println!(
        "requests {} ok {} failed {} versions {:?} backends {:?}",
        report.requests, report.ok, report.failed, report.versions, report.backends
    );
    assert_eq!(
        report.failed,
        0,
        "failures: {:?}\n{}",
        report.failures,
        d.daemon_log_tail()
    );
    assert_eq!(report.ok, 1000);
    let v2 = report.versions.get("v2").copied().unwrap_or(0) as f64;
    let share = v2 / report.ok as f64;
    assert!(
        (0.40..=0.60).contains(&share),
        "canary share {share} at weight 50%"
    );
    for b in ["s0", "s1", "k0"] {
        assert!(
            report.backends.get(b).copied().unwrap_or(0) > 0,
            "backend {b} got nothing"
        );
    }
}
