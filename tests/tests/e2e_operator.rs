//! The operator's tools against the real daemon during a real rollout in the lab:
//! - every decision reaches a `[[notify]]` webhook receiver (in the load balancer's namespace,
//!   on loopback) exactly once and in order, with a bearer token;
//! - `canary status --watch --until-done` runs in a pseudo-terminal (a tmux pane): it redraws
//!   in place while the weight moves and exits 0 when the rollout is promoted;
//! - `canary report` draws the recorded rollout, every series in the file;
//! - a dry-run signal shows in the status and the metrics.

mod e2e_support;

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use canary_lab::deployment::{Deployment, DeploymentSpec};
use canary_lab::lab::LabSpec;
use canary_userspace::config::raw::RawNotify;
use e2e_support::{cli_ok, new_conn_load, require_root, Background};
use serde_json::Value;

/// The `Authorization` header and the body of each request, in arrival order.
type Received = Arc<Mutex<Vec<(Option<String>, Value)>>>;

/// A webhook receiver on loopback inside a network namespace (its own thread, entered into
/// the namespace, with its own runtime); stopped when dropped.
struct Receiver {
    url: String,
    got: Received,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Receiver {
    fn start_in(netns: &str) -> Receiver {
        let got: Received = Arc::default();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let path = format!("/run/netns/{netns}");
        let g = got.clone();
        let thread = std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).expect("open the namespace");
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let app = Router::new().route(
                    "/hook",
                    post(move |headers: HeaderMap, Json(v): Json<Value>| {
                        let g = g.clone();
                        async move {
                            let auth = headers
                                .get("authorization")
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_string);
                            g.lock().unwrap().push((auth, v));
                            StatusCode::OK
                        }
                    }),
                );
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                addr_tx.send(listener.local_addr().unwrap()).unwrap();
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stop_rx.await;
                    })
                    .await;
            });
        });
        let addr = addr_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("receiver listening");
        Receiver {
            url: format!("http://{addr}/hook"),
            got,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    fn events(&self) -> Vec<(Option<String>, Value)> {
        self.got.lock().unwrap().clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A tmux server of our own (its own socket), killed when dropped.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn cmd(&self, args: &[&str]) -> std::process::Output {
        Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("tmux runs")
    }

    fn capture(&self) -> String {
        self.capture_of("watch")
    }

    fn capture_of(&self, session: &str) -> String {
        String::from_utf8_lossy(&self.cmd(&["capture-pane", "-p", "-t", session]).stdout)
            .into_owned()
    }

    /// Waits until the session's pane shows `text`; returns the pane.
    fn wait_for(&self, session: &str, text: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let pane = self.capture_of(session);
            if pane.contains(text) || Instant::now() > deadline {
                return pane;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]);
    }
}

fn configured(screen: &str) -> Option<String> {
    let i = screen.find("configured ")?;
    screen[i..].split_whitespace().nth(1).map(str::to_string)
}

#[test]
fn notifications_watch_and_report_follow_a_real_rollout() {
    require_root();
    let tag = LabSpec::unique_tag('o');
    let mut spec = DeploymentSpec::new(tag.clone());
    spec.lab.clients = 1;
    spec.lab.stable = 2;
    spec.lab.canary = 1;
    spec.lab.client_extra_addresses = 20;
    spec.start = "paused".into();
    spec.steps = vec![10.0, 50.0, 100.0];
    let mut d = Deployment::up(spec).unwrap_or_else(|e| panic!("lab does not start: {e}"));
    let lb = d.lab.load_balancer().unwrap().netns.clone();
    let receiver = Receiver::start_in(&lb);
    let token = d.lab.state_dir().join("notify.token");
    std::fs::write(&token, "hook-secret\n").unwrap();
    d.spec.notify = vec![RawNotify {
        name: "chat".into(),
        url: receiver.url.clone(),
        bearer_token_file: token.display().to_string(),
        ..RawNotify::default()
    }];
    // A dry-run signal: reported, never acted on.
    d.spec.dry_run = vec!["predictions".into()];
    d.write_config().unwrap();
    d.start_daemon()
        .unwrap_or_else(|e| panic!("daemon does not start: {e}"));

    // The live view, in a pseudo-terminal.
    let tmux = Tmux {
        socket: format!("cnry-{tag}"),
    };
    let watch = format!(
        "ip netns exec {lb} {} status --watch --until-done --config {}; echo WATCH-EXIT=$?; sleep 600",
        d.canary_bin.display(),
        d.config_path.display()
    );
    let out = tmux.cmd(&[
        "new-session",
        "-d",
        "-s",
        "watch",
        "-x",
        "140",
        "-y",
        "60",
        &watch,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !tmux.capture().contains("canary weight") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    let first = tmux.capture();
    assert!(
        first.contains("phase pending") || first.contains("(paused)"),
        "{first}"
    );

    let load = new_conn_load(&d, &d.lab.clients()[0], 0, 21);
    let mut screens: Vec<String> = Vec::new();
    let promoted = std::thread::scope(|scope| {
        let _bg = Background::start(scope, &d, &load, Duration::from_secs(2));
        cli_ok(&d, &["resume"]);
        let deadline = Instant::now() + Duration::from_mins(3);
        loop {
            let screen = tmux.capture();
            if screens.last() != Some(&screen) {
                screens.push(screen.clone());
            }
            if screen.contains("WATCH-EXIT=") || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        d.service_status().unwrap()
    });
    let last = screens.last().cloned().unwrap_or_default();
    println!("final pane:\n{last}");
    assert_eq!(promoted.phase, "promoted", "{}", d.daemon_log_tail());
    assert!(
        last.contains("WATCH-EXIT=0"),
        "--until-done exits 0 on promotion:\n{last}"
    );
    assert!(last.contains("phase promoted"), "{last}");
    let weights: std::collections::BTreeSet<String> =
        screens.iter().filter_map(|s| configured(s)).collect();
    println!("weights drawn: {weights:?} over {} screens", screens.len());
    assert!(
        weights.contains("10.00%") && weights.contains("50.00%"),
        "the view redrew at each step: {weights:?}"
    );
    // A whole frame of an evaluation (a capture can fall in the middle of a redraw).
    let needles = [
        "phase stepping",
        "error_rate",
        "groups",
        "backends",
        "decisions (newest first)",
        "dry run: predictions",
    ];
    assert!(
        screens
            .iter()
            .any(|s| needles.iter().all(|n| s.contains(n))),
        "no screen with all of {needles:?}; last:\n{last}"
    );

    // Without --until-done the view stays after the end, until Ctrl-C, which restores the
    // terminal and exits 0.
    let watch2 = format!(
        "ip netns exec {lb} {} status --watch --config {}; echo WATCH2-EXIT=$?; sleep 600",
        d.canary_bin.display(),
        d.config_path.display()
    );
    let out = tmux.cmd(&[
        "new-session",
        "-d",
        "-s",
        "watch2",
        "-x",
        "140",
        "-y",
        "60",
        &watch2,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pane = tmux.wait_for("watch2", "phase promoted", Duration::from_secs(20));
    assert!(pane.contains("canary weight"), "{pane}");
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        !tmux.capture_of("watch2").contains("WATCH2-EXIT"),
        "the view stays"
    );
    tmux.cmd(&["send-keys", "-t", "watch2", "C-c"]);
    let pane = tmux.wait_for("watch2", "WATCH2-EXIT=", Duration::from_secs(10));
    assert!(
        pane.contains("WATCH2-EXIT=0"),
        "Ctrl-C exits cleanly:\n{pane}"
    );
    assert!(
        !pane.contains("canary weight"),
        "the screen is restored:\n{pane}"
    );

    // Every decision, once, in order, with the token.
    let history: Value = {
        let (code, body) = d
            .admin_http("GET", "/v1/history/sentiment/latest", None, None)
            .unwrap();
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    };
    let notable = |action: &str| matches!(action, "start" | "step" | "promote" | "rollback");
    let expected: Vec<(String, u64)> = history["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| notable(d["action"].as_str().unwrap()))
        .map(|d| {
            (
                d["action"].as_str().unwrap().to_string(),
                d["at_ms"].as_u64().unwrap(),
            )
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while receiver.events().len() < expected.len() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let got = receiver.events();
    let arrived: Vec<(String, u64)> = got
        .iter()
        .map(|(_, e)| e)
        .filter(|e| notable(e["action"].as_str().unwrap()))
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_string(),
                e["time_ms"].as_u64().unwrap(),
            )
        })
        .collect();
    println!("notified: {arrived:?}");
    assert_eq!(arrived, expected, "every decision once, in order");
    assert_eq!(
        expected.iter().map(|e| e.0.as_str()).collect::<Vec<_>>(),
        vec!["start", "step", "step", "promote"]
    );
    assert!(got
        .iter()
        .all(|(auth, _)| auth.as_deref() == Some("Bearer hook-secret")));
    let promote = &got
        .iter()
        .find(|(_, e)| e["action"] == "promote")
        .unwrap()
        .1;
    assert_eq!(promote["service"], "sentiment");
    assert_eq!(promote["to_percent"], 100.0);
    assert!(promote["text"].as_str().unwrap().contains("promote"));
    assert!(promote["signals"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["signal"] == "predictions" && s["dry_run"] == true));
    let metrics = d.daemon_metrics().unwrap();
    assert!(metrics.contains("canary_notify_sent_total{notify=\"chat\"}"));
    assert!(metrics
        .contains("canary_dry_run_verdicts_total{service=\"sentiment\",signal=\"predictions\""));

    // The report of the recorded rollout.
    let svg = d.lab.state_dir().join("report.svg");
    let html = d.lab.state_dir().join("report.html");
    cli_ok(&d, &["report", "--out", &svg.to_string_lossy()]);
    cli_ok(&d, &["report", "--out", &html.to_string_lossy()]);
    let svg = std::fs::read_to_string(&svg).unwrap();
    for name in canary_userspace::history::render::SERIES {
        assert!(
            svg.contains(name),
            "series {name:?} missing from the report"
        );
    }
    assert!(svg.contains("promote 100% (healthy)"), "decisions marked");
    assert!(std::fs::read_to_string(&html).unwrap().contains("<svg"));
    let out = d.cli(&["report", "--out", "/tmp/x.png"]).unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains(".svg or .html"));
}
