//! A second `canary run` on the same state directory, pins and interface (only the admin port
//! differs) stops at once, naming the PID of the running daemon, and changes nothing: the
//! first daemon keeps the weight, a rollback through it sticks, and traffic is not disturbed.
//! `canary detach` refuses while the daemon runs.

mod e2e_support;

use std::time::{Duration, Instant};

use canary_lab::deployment::{DeploymentSpec, ADMIN_PORT};
use canary_lab::lab::LabSpec;
use e2e_support::{cli_ok, load_all_clients, new_conn_load, settle_counters, start, totals};

#[test]
fn a_second_daemon_on_the_same_data_plane_is_refused() {
    let mut spec = DeploymentSpec::new(LabSpec::unique_tag('t'));
    spec.lab.clients = 1;
    spec.lab.stable = 2;
    spec.lab.canary = 1;
    spec.start = "paused".into();
    // New connections follow the weight even when the load generator reuses a 5-tuple of the
    // last seconds (the default `syn_replace_after`, 5 s, would take its SYN for a
    // retransmission and keep the old flow's backend).
    spec.syn_replace_after = "0s".into();
    let mut d = start(spec);
    cli_ok(&d, &["set-weight", "25"]);
    let first_pid = d.daemon.as_ref().expect("daemon").pid();

    // The same config but another admin port.
    let text = std::fs::read_to_string(&d.config_path).unwrap();
    let other = text.replace(
        &format!("127.0.0.1:{ADMIN_PORT}"),
        &format!("127.0.0.1:{}", ADMIN_PORT + 1),
    );
    assert_ne!(text, other);
    let second_config = d.config_path.with_file_name("second.toml");
    std::fs::write(&second_config, other).unwrap();
    let lb = d.lab.load_balancer().unwrap().netns.clone();
    let mut second = d
        .lab
        .spawn_in(
            &lb,
            &[
                d.canary_bin.to_string_lossy().as_ref(),
                "run",
                "--config",
                second_config.to_string_lossy().as_ref(),
            ],
        )
        .unwrap();
    let t = Instant::now();
    let status = loop {
        if let Some(s) = second.try_wait() {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the second daemon is still running: {}",
            second.log_tail(20)
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let log = second.log_text();
    println!(
        "second daemon exited {status} after {:.1}s:\n{log}",
        t.elapsed().as_secs_f64()
    );
    assert!(!status.success());
    assert!(
        log.contains(&format!("PID {first_pid}")),
        "the message names the running daemon's PID {first_pid}"
    );
    assert!(!log.contains("XDP program attached") && !log.contains("re-attached"));

    // `canary detach` refuses too while the daemon runs.
    let out = d
        .lab
        .output_in(
            &lb,
            &[
                d.canary_bin.to_string_lossy().as_ref(),
                "detach",
                "--config",
                d.config_path.to_string_lossy().as_ref(),
            ],
        )
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    println!("detach while running: {} {}", out.status, text.trim());
    assert!(!out.status.success());
    assert!(text.contains(&format!("PID {first_pid}")), "{text}");
    assert!(d.lab.bpffs().join("canary").join("link").exists());

    // The first daemon is untouched and in charge.
    assert!(d.daemon.as_mut().unwrap().is_running());
    let s = d.service_status().unwrap();
    e2e_support::assert_weight(&s, 25.0);
    settle_counters();
    let reports = load_all_clients(&d, &new_conn_load(&d, &d.lab.clients()[0], 400, 8));
    let (requests, _, failed, _, _) = totals(&reports);
    let v2 = e2e_support::merge_versions(&reports)
        .get("v2")
        .copied()
        .unwrap_or(0);
    println!("at 25 %: {requests} requests, {failed} failed, {v2} from the canary");
    assert_eq!(failed, 0);
    assert!(v2 > 0);

    // A rollback through the first daemon sticks: nobody writes the weight back.
    cli_ok(&d, &["rollback"]);
    std::thread::sleep(Duration::from_secs(3));
    let s = d.service_status().unwrap();
    assert_eq!((s.phase.as_str(), s.weight_percent), ("rolled_back", 0.0));
    let reports = load_all_clients(&d, &new_conn_load(&d, &d.lab.clients()[0], 300, 8));
    let versions = e2e_support::merge_versions(&reports);
    println!("after the rollback: versions {versions:?}");
    assert_eq!(versions.get("v2"), None);
    assert_eq!(totals(&reports).2, 0);
}
