//! Every mutating call without the admin token (or with a wrong one) is refused with 401 and
//! changes nothing; with the token the same calls work. Without `admin.token_file` the daemon
//! generates a token (the CLI finds it); a token file other users can read is refused.

mod e2e_support;

use canary_lab::deployment::DeploymentSpec;
use canary_lab::lab::LabSpec;
use e2e_support::{cli_ok, start};

const TOKEN: &str = "e2e-admin-token-5f1c";

#[test]
fn mutations_need_the_token() {
    let mut spec = DeploymentSpec::new(LabSpec::unique_tag('a'));
    spec.lab.clients = 1;
    spec.lab.stable = 1;
    spec.lab.canary = 1;
    spec.start = "paused".into();
    spec.token = Some(TOKEN.into());
    let d = start(spec);
    cli_ok(&d, &["set-weight", "20"]);
    let snapshot = |d: &canary_lab::deployment::Deployment| {
        let s = d.service_status().expect("status");
        (s.phase, s.weight_percent, s.paused, s.events.len())
    };
    let before = snapshot(&d);
    println!("before: {before:?}");

    let svc = "/v1/services/sentiment";
    let calls: Vec<(String, Option<&str>)> = vec![
        (format!("{svc}/start"), None),
        (format!("{svc}/pause"), None),
        (format!("{svc}/resume"), None),
        (format!("{svc}/promote"), Some(r#"{"full":true}"#)),
        (format!("{svc}/rollback"), None),
        (format!("{svc}/set-weight"), Some(r#"{"percent":90}"#)),
        ("/v1/reload".to_string(), None),
    ];
    for (path, body) in &calls {
        for token in [None, Some("wrong-token"), Some("")] {
            let (code, answer) = d
                .admin_http("POST", path, token, *body)
                .unwrap_or_else(|e| panic!("POST {path}: {e}"));
            println!("POST {path} token {token:?}: {code} {}", answer.trim());
            assert_eq!(
                code, 401,
                "POST {path} with token {token:?} answered {code}"
            );
        }
    }
    let after = snapshot(&d);
    println!("after refused calls: {after:?}");
    assert_eq!(before, after, "a refused call changed the rollout");

    // Reads need no token.
    for path in [
        "/status",
        "/metrics",
        "/v1/route?src=198.18.0.51:40000&dst=198.18.0.100:8080",
    ] {
        let (code, _) = d.admin_http("GET", path, None, None).unwrap();
        println!("GET {path} without token: {code}");
        assert_eq!(code, 200, "GET {path}");
    }

    // The CLI without the token file is refused too.
    let out = d
        .lab
        .output_in(
            &d.lab.load_balancer().unwrap().netns,
            &[
                d.canary_bin.to_string_lossy().as_ref(),
                "set-weight",
                "70",
                "--admin",
                "http://127.0.0.1:9100",
            ],
        )
        .unwrap();
    println!(
        "CLI without token: exit {} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    assert!(!out.status.success());
    assert_eq!(snapshot(&d), before);

    // With the token: the same calls work.
    let (code, answer) = d
        .admin_http(
            "POST",
            &format!("{svc}/set-weight"),
            Some(TOKEN),
            Some(r#"{"percent":35}"#),
        )
        .unwrap();
    println!("set-weight 35 with token: {code} {}", answer.trim());
    assert_eq!(code, 200);
    e2e_support::assert_weight(&d.service_status().unwrap(), 35.0);
    let (code, _) = d
        .admin_http("POST", &format!("{svc}/rollback"), Some(TOKEN), None)
        .unwrap();
    assert_eq!(code, 200);
    let s = d.service_status().unwrap();
    println!(
        "rollback with token: {code}, phase {} weight {}",
        s.phase, s.weight_percent
    );
    assert_eq!(s.phase, "rolled_back");
    e2e_support::assert_weight(&s, 0.0);
    // The CLI finds the token through the config's token_file.
    cli_ok(&d, &["start"]);
    assert_ne!(d.service_status().unwrap().phase, "rolled_back");
}

/// Without `admin.token_file` the daemon still needs a token for every verb: it generates one
/// in its state directory (mode 0600), which the CLI finds through `--config`.
#[test]
fn verbs_need_a_token_even_without_a_token_file() {
    use std::os::unix::fs::PermissionsExt as _;
    let mut spec = DeploymentSpec::new(LabSpec::unique_tag('g'));
    spec.lab.clients = 1;
    spec.lab.stable = 1;
    spec.lab.canary = 1;
    spec.start = "paused".into();
    assert!(spec.token.is_none());
    let d = start(spec);
    let generated = d.daemon_state_dir().join("admin.token");
    let mode = std::fs::metadata(&generated)
        .unwrap_or_else(|e| panic!("{}: {e}", generated.display()))
        .permissions()
        .mode();
    println!("generated {} mode {:o}", generated.display(), mode & 0o777);
    assert_eq!(mode & 0o777, 0o600);
    let before = d.service_status().unwrap().weight_percent;

    for token in [None, Some("wrong-token"), Some("")] {
        let (code, answer) = d
            .admin_http(
                "POST",
                "/v1/services/sentiment/set-weight",
                token,
                Some(r#"{"percent":90}"#),
            )
            .unwrap();
        println!(
            "set-weight 90 with token {token:?}: {code} {}",
            answer.trim()
        );
        assert_eq!(code, 401);
    }
    e2e_support::assert_weight(&d.service_status().unwrap(), before);

    // The CLI finds the generated token through the config's state_dir, without flags.
    cli_ok(&d, &["set-weight", "15"]);
    e2e_support::assert_weight(&d.service_status().unwrap(), 15.0);
    // With the token, the API accepts the verb.
    let token = d.admin_token().unwrap();
    let (code, _) = d
        .admin_http(
            "POST",
            "/v1/services/sentiment/set-weight",
            Some(&token),
            Some(r#"{"percent":20}"#),
        )
        .unwrap();
    assert_eq!(code, 200);
    e2e_support::assert_weight(&d.service_status().unwrap(), 20.0);
}

/// A token file other users can read is refused at start, with the fix named.
#[test]
fn a_token_file_readable_by_others_is_refused() {
    use std::os::unix::fs::PermissionsExt as _;
    let mut spec = DeploymentSpec::new(LabSpec::unique_tag('p'));
    spec.lab.clients = 1;
    spec.lab.stable = 1;
    spec.lab.canary = 1;
    spec.token = Some(TOKEN.into());
    let mut d = start(spec);
    let path = d.token_path.clone().unwrap();
    d.stop_daemon().expect("daemon running");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = d
        .start_daemon()
        .expect_err("a 0644 token file must stop the start");
    let log = d.daemon_log();
    println!("start with a 0644 token file: {err}");
    assert!(
        log.contains(&format!("chmod 600 {}", path.display())),
        "the fix is named: {log}"
    );
    assert!(!log.contains("XDP program attached") && !log.contains("re-attached"));
    d.daemon.take();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    d.start_daemon().expect("starts with a private token file");
}
