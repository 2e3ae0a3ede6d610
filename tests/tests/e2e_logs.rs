//! Logs written to a file (as under systemd's journal or a redirect) carry no terminal colour
//! codes: the daemon's human format is plain text there, decision lines included, and
//! `--log-format json` stays one JSON object per line.

mod e2e_support;

use std::time::{Duration, Instant};

use canary_lab::deployment::DeploymentSpec;
use canary_lab::lab::LabSpec;
use e2e_support::start;

const ESC: char = '\u{1b}';

fn wait_for_log(what: &str, timeout: Duration, log: impl Fn() -> String) -> String {
    let t = Instant::now();
    loop {
        let text = log();
        if text.contains(what) {
            return text;
        }
        assert!(
            t.elapsed() < timeout,
            "no {what:?} in the log after {timeout:?}:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn daemon_logs_to_a_file_without_colour_codes() {
    let mut spec = DeploymentSpec::new(LabSpec::unique_tag('g'));
    spec.lab.clients = 1;
    spec.lab.stable = 1;
    spec.lab.canary = 1;
    let mut d = start(spec);

    // Human format (the default), stdout and stderr to the lab's log file.
    let text = wait_for_log("canary::decision", Duration::from_secs(30), || {
        d.daemon_log()
    });
    let decision = text
        .lines()
        .find(|l| l.contains("canary::decision"))
        .unwrap();
    println!("{decision}");
    assert!(
        decision.contains("service=\"sentiment\""),
        "fields are plain `key=value`: {decision:?}"
    );
    assert!(
        !text.contains(ESC),
        "colour codes in a log written to a file:\n{}",
        text.replace(ESC, "\\x1b")
    );

    // JSON format: unchanged, one object per line.
    d.stop_daemon().expect("daemon was running");
    let lb = d.lab.load_balancer().unwrap().netns.clone();
    let argv = [
        d.canary_bin.to_string_lossy().into_owned(),
        "--log-format".into(),
        "json".into(),
        "run".into(),
        "--config".into(),
        d.config_path.to_string_lossy().into_owned(),
    ];
    let mut daemon = d
        .lab
        .spawn_in_env(&lb, &argv, &[("RUST_LOG", "info")])
        .unwrap();
    let text = wait_for_log("canary daemon running", Duration::from_secs(30), || {
        daemon.log_text()
    });
    daemon.terminate(Duration::from_secs(10));
    assert!(!text.contains(ESC), "{text}");
    let mut lines = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line:?}"));
        assert!(
            v["timestamp"].is_string() && v["level"].is_string(),
            "{line}"
        );
        assert!(v["fields"]["message"].is_string(), "{line}");
        lines += 1;
    }
    assert!(lines >= 2, "{text}");
}
