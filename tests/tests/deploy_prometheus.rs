//! The Prometheus and Grafana files under `deploy/`, checked with Prometheus's own `promtool`
//! (installed by `cargo xtask setup`): the configuration and the alerting rules are valid, the
//! rules' unit tests pass, every dashboard query parses, and every `canary_*` series the rules
//! and the dashboard name is one the daemon exports. `e2e_prometheus` runs them all against a
//! real daemon.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use canary_tests::deploy::{dashboard, dashboard_queries, deploy_dir, substitute};

fn promtool(args: &[&str], dir: &Path) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run promtool ({e}): run `cargo xtask setup` as root, which installs Debian's prometheus package")
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn prometheus_config_and_rules_pass_promtool() {
    let dir = deploy_dir().join("prometheus");
    let rules = promtool(&["check", "rules", "canary-rules.yml"], &dir);
    assert!(rules.contains("SUCCESS"), "{rules}");
    let config = promtool(&["check", "config", "prometheus.yml"], &dir);
    assert!(config.contains("1 rule files found"), "{config}");
}

#[test]
fn alerting_rules_pass_their_unit_tests() {
    let dir = deploy_dir().join("prometheus");
    let out = promtool(&["test", "rules", "canary-rules.test.yml"], &dir);
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn every_alert_has_a_unit_test() {
    let dir = deploy_dir().join("prometheus");
    let rules = std::fs::read_to_string(dir.join("canary-rules.yml")).unwrap();
    let tests = std::fs::read_to_string(dir.join("canary-rules.test.yml")).unwrap();
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert!(alerts.len() >= 6, "{alerts:?}");
    for a in alerts {
        assert!(
            tests.contains(&format!("alertname: {a}\n")),
            "alert {a} has no case in canary-rules.test.yml"
        );
    }
}

#[test]
fn every_dashboard_query_parses() {
    let queries = dashboard_queries(&dashboard());
    assert!(queries.len() >= 15, "{} queries", queries.len());
    // promtool parses recording rules: one per query, variables substituted.
    let mut file = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, q) in queries.iter().enumerate() {
        let expr = substitute(
            &q.expr,
            &[("service", "sentiment"), ("instance", "127.0.0.1:9100")],
            "1m",
        );
        let _ = write!(
            file,
            "      - record: dashboard_query_{i}\n        expr: {}\n",
            serde_json::to_string(&expr).unwrap()
        );
    }
    let dir = std::env::temp_dir().join(format!("canary-dashboard-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("queries.yml"), &file).unwrap();
    let out = Command::new("promtool")
        .args(["check", "rules", "queries.yml"])
        .current_dir(&dir)
        .output()
        .expect("promtool (run `cargo xtask setup`)");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "a dashboard query does not parse:\n{}{}\n{file}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn dashboard_panels_are_well_formed() {
    let d = dashboard();
    assert_eq!(d["uid"], "canary-service");
    let names: Vec<&str> = d["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["datasource", "instance", "service"]);
    let mut ids = BTreeSet::new();
    for p in d["panels"].as_array().unwrap() {
        let title = p["title"].as_str().unwrap();
        assert!(
            ids.insert(p["id"].as_u64().unwrap()),
            "{title}: duplicate id"
        );
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}");
        let g = &p["gridPos"];
        assert!(
            g["x"].as_u64().unwrap() + g["w"].as_u64().unwrap() <= 24,
            "{title}: wider than the grid"
        );
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title}: no query");
        let refs: BTreeSet<&str> = targets
            .iter()
            .map(|t| t["refId"].as_str().unwrap())
            .collect();
        assert_eq!(refs.len(), targets.len(), "{title}: duplicate refId");
    }
}

/// `canary_*` names in `text`, with a histogram's `_bucket`/`_sum`/`_count` taken off.
fn canary_series(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(pos) = text[i..].find("canary_") {
        let start = i + pos;
        let preceded =
            start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let end = text[start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(text.len(), |n| start + n);
        if !preceded {
            let name = &text[start..end];
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            out.insert(base.to_string());
        }
        i = end;
    }
    out
}

#[test]
fn rules_and_dashboard_name_only_series_the_daemon_exports() {
    // The daemon's metrics, and those only a cluster node registers.
    let exported = ["metrics.rs", "controller/store.rs"]
        .iter()
        .map(|f| {
            std::fs::read_to_string(
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../canary-userspace/src")
                    .join(f),
            )
            .unwrap()
        })
        .collect::<Vec<_>>()
        .join("\n");
    let exported: BTreeSet<String> = canary_series(&exported)
        .into_iter()
        .filter(|n| exported_name(n))
        .collect();
    let rules = std::fs::read_to_string(deploy_dir().join("prometheus/canary-rules.yml")).unwrap();
    let mut used = canary_series(&rules);
    for q in dashboard_queries(&dashboard()) {
        used.extend(canary_series(&q.expr));
    }
    // `canary_rollout_phase` etc. are literal names in metrics.rs; the test module's needles
    // are counted too, which is fine: they are the same names.
    let unknown: Vec<&String> = used.iter().filter(|n| !exported.contains(*n)).collect();
    assert!(
        unknown.is_empty(),
        "series the daemon does not export: {unknown:?} (exported: {exported:?})"
    );
    assert!(used.len() >= 15, "{used:?}");
}

/// Metric names, not Rust identifiers such as `canary_common`.
fn exported_name(n: &str) -> bool {
    !matches!(n, "canary_common" | "canary_userspace")
}
