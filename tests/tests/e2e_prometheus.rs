//! A real Prometheus, configured from `deploy/prometheus/` (1 s scrape and rule evaluation
//! instead of 15 s), scrapes the daemon in the lab through a rollout to 100 % and a second
//! rollout that the judge rolls back. Then, as an operator would see it:
//! - every query of the Grafana dashboard (panels and annotations, variables
//!   substituted) returns data, with every label its legend shows, and the variables' own
//!   queries list the service and the node;
//! - `canary_weight_ratio` in Prometheus equals the weight `/status` showed at the same time;
//! - the alert `CanaryRolledBack` fires, and every rule evaluates without error.
//!
//! A metric or label renamed in the daemon, the rules or the dashboard makes this test fail.

mod e2e_support;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use canary_lab::deployment::{DeploymentSpec, ADMIN_PORT};
use canary_lab::lab::LabSpec;
use canary_lab::prometheus::{samples, series, Prometheus};
use canary_tests::deploy::{
    dashboard, dashboard_queries, dashboard_variables, deploy_dir, prometheus_config, substitute,
};
use canary_userspace::rollout::DecisionAction;
use e2e_support::{cli_ok, new_conn_load, start, wait_status, Background};

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Sets the flag when dropped.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// One read of `/status`: the weight it showed, and when the read started and ended.
#[derive(Clone, Copy, Debug)]
struct StatusSample {
    from: f64,
    to: f64,
    ratio: f64,
}

#[test]
fn dashboard_queries_weight_and_rollback_alert_in_a_real_prometheus() {
    let mut spec = DeploymentSpec::new(LabSpec::unique_tag('m'));
    spec.lab.clients = 1;
    spec.lab.stable = 2;
    spec.lab.canary = 2;
    spec.lab.client_extra_addresses = 12;
    spec.start = "paused".into();
    spec.min_samples = 60;
    spec.steps = vec![10.0, 50.0, 100.0];
    // Predictions of v1 and v2 differ a little: a wider bound passes them sooner.
    spec.max_prediction_shift = 0.3;
    let d = start(spec);
    let lb = d.lab.load_balancer().unwrap().netns.clone();
    let instance = format!("127.0.0.1:{ADMIN_PORT}");

    // The deploy files as shipped, but evaluated every second.
    let dir = d.lab.state_dir().join("prometheus-config");
    std::fs::create_dir_all(&dir).unwrap();
    let config = prometheus_config(&[
        ("scrape_interval: 15s", "scrape_interval: 1s"),
        ("evaluation_interval: 15s", "evaluation_interval: 1s"),
    ]);
    // The shipped target is the default `admin.listen`, which the lab's daemon uses too.
    assert!(config.contains(&format!("[\"{instance}\"]")), "{config}");
    std::fs::write(dir.join("prometheus.yml"), config).unwrap();
    std::fs::copy(
        deploy_dir().join("prometheus/canary-rules.yml"),
        dir.join("canary-rules.yml"),
    )
    .unwrap();
    let prom = Prometheus::start(&d.lab, &lb, &dir.join("prometheus.yml"))
        .unwrap_or_else(|e| panic!("{e}"));
    println!("prometheus pid {} in {lb}", prom.pid());
    let scraping = |p: &Prometheus| {
        let up = p.query("up{job=\"canary\"}", None)?;
        Ok(series(&up)
            .iter()
            .any(|s| samples(s).first().is_some_and(|v| (v.1 - 1.0).abs() < 1e-9))
            .then_some(()))
    };
    prom.wait_for("the daemon scraped", Duration::from_secs(30), scraping)
        .unwrap_or_else(|e| panic!("{e}\n{}", prom.log_tail(20)));
    let t_start = unix_now();

    let mut load = new_conn_load(&d, &d.lab.clients()[0], 0, 13);
    load.interval = Duration::from_millis(40);
    let stop = AtomicBool::new(false);
    let status_samples = Mutex::new(Vec::<StatusSample>::new());
    let (promoted, rolled_back) = std::thread::scope(|scope| {
        // Set on every way out, a failure included, so that the sampler ends with the scope.
        let _stop_sampler = StopOnDrop(&stop);
        // /status, read as often as the CLI allows, with the time of each read.
        let sampler = scope.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                let from = unix_now();
                if let Ok(s) = d.service_status() {
                    let to = unix_now();
                    let ratio = s.weight_percent / 100.0;
                    status_samples
                        .lock()
                        .unwrap()
                        .push(StatusSample { from, to, ratio });
                }
                std::thread::sleep(Duration::from_millis(150));
            }
        });
        let bg = Background::start(scope, &d, &load, Duration::from_secs(2));

        // A rollout to 100 %.
        cli_ok(&d, &["resume"]);
        let (promoted, took) = wait_status(&d, "promotion", Duration::from_mins(3), |s| {
            s.phase == "promoted" || s.phase == "rolled_back"
        });
        println!("phase {} after {took:.1?}", promoted.phase);
        // Prometheus sees the promotion (three scrapes at 100 %) before anything else happens.
        prom.wait_for("scrapes at 100 %", Duration::from_secs(30), |p| {
            let raw = p.query("canary_weight_ratio{service=\"sentiment\"}[5s]", None)?;
            let full = series(&raw)
                .iter()
                .flat_map(samples)
                .filter(|(_, v)| (*v - 1.0).abs() < 1e-9)
                .count();
            Ok((full >= 3).then_some(()))
        })
        .unwrap_or_else(|e| panic!("{e}"));
        // A second rollout of the same group, which starts failing at its first step.
        cli_ok(&d, &["start"]);
        cli_ok(&d, &["resume"]); // start = paused holds a new rollout after its warm-up too
        wait_status(
            &d,
            "the new rollout's first step",
            Duration::from_mins(1),
            |s| s.phase == "stepping",
        );
        for k in d.lab.canary() {
            d.fault(k, r#"{"error_rate":0.4}"#).expect("fault");
        }
        let (rolled_back, _) = wait_status(&d, "rollback", Duration::from_mins(1), |s| {
            s.phase == "rolled_back"
        });
        // A few more seconds of traffic and scrapes after the rollback.
        std::thread::sleep(Duration::from_secs(4));
        bg.finish();
        stop.store(true, Ordering::Relaxed);
        sampler.join().unwrap();
        (promoted, rolled_back)
    });
    assert_eq!(
        promoted.phase,
        "promoted",
        "{:#?}",
        e2e_support::decisions(&promoted)
    );
    assert_eq!(
        rolled_back.last_decision.as_ref().map(|d| d.action),
        Some(DecisionAction::Rollback)
    );

    // The rollback alert fires.
    let alert = prom
        .wait_for(
            "alert CanaryRolledBack firing",
            Duration::from_secs(30),
            |p| {
                let alerts = p.api("alerts", &[])?;
                Ok(alerts["alerts"].as_array().and_then(|list| {
                    list.iter()
                        .find(|a| {
                            a["labels"]["alertname"] == "CanaryRolledBack"
                                && a["labels"]["service"] == "sentiment"
                                && a["state"] == "firing"
                        })
                        .cloned()
                }))
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
    println!("alert: {}", alert["annotations"]["summary"]);
    let t_end = unix_now();

    // Every rule evaluates without error on the real series.
    let rules = prom.api("rules", &[]).unwrap();
    let mut evaluated = 0;
    for group in rules["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            assert_eq!(
                rule["health"], "ok",
                "rule {} does not evaluate: {}",
                rule["name"], rule["lastError"]
            );
            evaluated += 1;
        }
    }
    assert!(evaluated >= 6, "{rules}");

    // The dashboard's variables list this node and this service.
    let board = dashboard();
    let values = [("instance", instance.as_str()), ("service", "sentiment")];
    for v in dashboard_variables(&board) {
        let selector = substitute(&v.selector, &values, "5s");
        let found = prom
            .api(
                &format!("label/{}/values", v.label),
                &[("match[]", selector)],
            )
            .unwrap();
        let want = values.iter().find(|(n, _)| *n == v.name).unwrap().1;
        assert!(
            found
                .as_array()
                .unwrap()
                .iter()
                .any(|x| x.as_str() == Some(want)),
            "variable {} lists {found} without {want}",
            v.name
        );
    }

    // Every query of the dashboard, over the whole run, as a panel would run it.
    let mut failures = Vec::new();
    let mut annotation_actions = BTreeSet::new();
    for q in dashboard_queries(&board) {
        let expr = substitute(&q.expr, &values, "5s");
        let data = match prom.query_range(&expr, t_start, t_end, Duration::from_secs(1)) {
            Ok(d) => d,
            Err(e) => {
                failures.push(format!("{}: {e}", q.origin));
                continue;
            }
        };
        let result = series(&data);
        let finite = result
            .iter()
            .flat_map(samples)
            .filter(|(_, v)| v.is_finite())
            .count();
        if finite == 0 {
            failures.push(format!("{}: no data for {expr}", q.origin));
            continue;
        }
        for s in &result {
            for label in &q.shown_labels {
                if s["metric"][label].as_str().unwrap_or_default().is_empty() {
                    failures.push(format!(
                        "{}: a series has no label {label:?} ({}) for {expr}",
                        q.origin, s["metric"]
                    ));
                }
            }
            if q.origin.starts_with("annotation") {
                if let Some(a) = s["metric"]["action"].as_str() {
                    annotation_actions.insert(a.to_string());
                }
            }
        }
        println!(
            "  ok  {:<45} {} series, {finite} values",
            q.origin,
            result.len()
        );
    }
    assert!(
        failures.is_empty(),
        "dashboard queries:\n{}",
        failures.join("\n")
    );
    // Decisions that happened once (each first of its kind) are annotations too.
    for action in ["start", "step", "promote", "rollback"] {
        assert!(
            annotation_actions.contains(action),
            "no {action} annotation: {annotation_actions:?}"
        );
    }

    // canary_weight_ratio as Prometheus scraped it, against /status at the same time: a scrape
    // between two reads of /status that showed the same weight must have seen that weight.
    let status_samples = status_samples.into_inner().unwrap();
    let window = (t_end - t_start).ceil() as u64 + 5;
    let raw = prom
        .query(
            &format!("canary_weight_ratio{{service=\"sentiment\"}}[{window}s]"),
            Some(t_end),
        )
        .unwrap();
    let scraped: Vec<(f64, f64)> = series(&raw).iter().flat_map(samples).collect();
    assert!(scraped.len() > 20, "{} scrapes", scraped.len());
    let mut compared = 0;
    let mut weights_compared = BTreeSet::new();
    let mut mismatches = Vec::new();
    for (at, value) in &scraped {
        let before = status_samples.iter().rev().find(|s| s.to <= *at);
        let after = status_samples.iter().find(|s| s.from >= at + 0.05);
        let (Some(before), Some(after)) = (before, after) else {
            continue;
        };
        if (before.ratio - after.ratio).abs() > 1e-9 || after.from - before.to > 1.0 {
            continue; // a change in between, or no read close by
        }
        compared += 1;
        weights_compared.insert((before.ratio * 10_000.0).round() as u64);
        if (value - before.ratio).abs() > 1e-9 {
            mismatches.push(format!(
                "at {at:.3}: Prometheus {value}, /status {} (read {:.3}..{:.3} and {:.3}..{:.3})",
                before.ratio, before.from, before.to, after.from, after.to
            ));
        }
    }
    let weights_shown: BTreeSet<u64> = status_samples
        .iter()
        .filter(|s| s.from >= t_start)
        .map(|s| (s.ratio * 10_000.0).round() as u64)
        .collect();
    println!(
        "weight: {} scrapes, {compared} compared with /status; weights (bp) compared {weights_compared:?}, shown {weights_shown:?}",
        scraped.len()
    );
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
    assert!(
        compared * 2 >= scraped.len(),
        "only {compared} of {} scrapes could be compared",
        scraped.len()
    );
    // Every step of the run (10, 50, 100 %, and 0 before and after) was compared.
    for bp in [0, 1000, 5000, 10_000] {
        assert!(
            weights_compared.contains(&bp),
            "weight {bp} bp never compared: {weights_compared:?}"
        );
    }
}
