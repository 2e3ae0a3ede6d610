//! Rollout state files gone wrong between two runs of the daemon. Deleted mid-rollout: the
//! restarted daemon keeps the weight the pinned maps hold instead of starting over at 0 %.
//! Tampered with (a weight of 4,000,000,000): the daemon refuses to start, naming the file and
//! the field, and the weight in the kernel is untouched.

mod e2e_support;

use canary_lab::deployment::{Deployment, DeploymentSpec};
use canary_lab::lab::LabSpec;
use e2e_support::{cli_ok, load_all_clients, new_conn_load, settle_counters, start, totals};

/// Share of new connections answered by the canary.
fn canary_share(d: &Deployment) -> f64 {
    let reports = load_all_clients(d, &new_conn_load(d, &d.lab.clients()[0], 600, 8));
    let (_, ok, failed, _, _) = totals(&reports);
    assert_eq!(failed, 0);
    let v2 = e2e_support::merge_versions(&reports)
        .get("v2")
        .copied()
        .unwrap_or(0);
    v2 as f64 / ok.max(1) as f64
}

#[test]
fn state_file_deleted_or_tampered_mid_rollout() {
    let mut spec = DeploymentSpec::new(LabSpec::unique_tag('s'));
    spec.lab.clients = 1;
    spec.lab.stable = 2;
    spec.lab.canary = 2;
    spec.lab.client_extra_addresses = 20;
    spec.start = "paused".into();
    // Holds at its step for lack of samples: the rollout stays mid-way.
    spec.min_samples = 1_000_000_000;
    let mut d = start(spec);
    cli_ok(&d, &["set-weight", "25"]);
    cli_ok(&d, &["resume"]);
    let state = d.daemon_state_dir().join("rollout-sentiment.json");
    assert!(state.is_file());

    // ---- deleted while the daemon is down ----
    d.stop_daemon().expect("daemon running");
    std::fs::remove_file(&state).unwrap();
    d.start_daemon()
        .unwrap_or_else(|e| panic!("restart without a state file: {e}"));
    let s = d.service_status().unwrap();
    println!(
        "restarted without {}: phase {} weight {} ({})",
        state.display(),
        s.phase,
        s.weight_percent,
        e2e_support::last_message(&s)
    );
    assert_eq!(s.phase, "stepping");
    // The pinned weight is kept.
    e2e_support::assert_weight(&s, 25.0);
    assert!(e2e_support::last_message(&s).contains("is missing"));
    settle_counters();
    let share = canary_share(&d);
    println!("canary share after the restart: {share:.3}");
    assert!((0.12..0.40).contains(&share), "{share}");

    // ---- tampered: a weight of 4,000,000,000 basis points ----
    d.stop_daemon().expect("daemon running");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    json["weight"] = 4_000_000_000u64.into();
    std::fs::write(&state, json.to_string()).unwrap();
    let err = d
        .start_daemon()
        .expect_err("a weight above 100 % must stop the start");
    let log = d.daemon_log();
    println!("start with the tampered file: {err}");
    assert!(log.contains(&state.display().to_string()), "{log}");
    assert!(
        log.contains("`weight`") && log.contains("4000000000"),
        "{log}"
    );
    assert!(
        !d.daemon.as_mut().unwrap().is_running(),
        "the daemon exited"
    );
    // The kernel still has 25 %, not 100 %.
    let share = canary_share(&d);
    println!("canary share while the daemon refuses to start: {share:.3}");
    assert!((0.12..0.40).contains(&share), "{share}");
    d.daemon.take();

    // Fixed (here: deleted), the daemon starts and keeps the pinned weight again.
    std::fs::remove_file(&state).unwrap();
    d.start_daemon().unwrap();
    e2e_support::assert_weight(&d.service_status().unwrap(), 25.0);
}
