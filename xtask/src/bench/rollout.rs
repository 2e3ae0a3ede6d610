//! `bench rollout`: how fast the controller reacts in a real lab, and what the flow table
//! buys during a promotion.
//!
//! - Fault: a canary at 10 % starts answering 30 % errors (`POST /fault`); time until the
//!   daemon reports canary weight 0 (`poll_interval = 1s`).
//! - Healthy promotion: `canary start` to phase `promoted`, against steps x interval.
//! - Promotion with 1,000 open keep-alive connections (one request per second each): the
//!   weight goes 10 -> 100 (`canary promote --full`); connections broken and moved, with the
//!   flow table and with it disabled (`CONFIG_FLAG_NO_FLOW_TABLE` written into the pinned
//!   `CONFIG` map of the running daemon: a benchmark-only switch, no config key).

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use canary_common::{maps, GlobalConfig, CONFIG_FLAG_NO_FLOW_TABLE};
use canary_lab::deployment::{Deployment, DeploymentSpec};
use canary_lab::lab::{LabSpec, SERVICE_PORT};
use canary_lab::loadgen::{LoadSpec, Report};
use canary_userspace::api::ServiceStatus;
use serde::Serialize;

use super::labkit;
use super::report::{heading, table, Machine, Section};
use super::stats::{summary, verdict, Summary};

const TRIALS: usize = 5;
const KEEPALIVE_CONNECTIONS: usize = 1000;
/// Background load during the fault trials: about 400 requests/s in all.
const FAULT_LOAD_INTERVAL: Duration = Duration::from_millis(20);
/// During the promotion trials: about 1,600 requests/s, so that the judge's bounds tighten
/// within a step (the promotion time is set by the canary's traffic, not only the interval).
const PROMOTION_LOAD_INTERVAL: Duration = Duration::from_millis(5);

fn cli(d: &Deployment, args: &[&str]) -> Result<()> {
    let out = d.cli(args)?;
    if !out.status.success() {
        bail!(
            "canary {} failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn phase(s: &ServiceStatus) -> &str {
    &s.phase
}

fn weight(s: &ServiceStatus) -> f64 {
    s.weight_percent
}

/// Polls the status as often as the CLI allows until `pred` holds; returns the elapsed time
/// from `since`.
fn time_until(
    d: &Deployment,
    since: Instant,
    timeout: Duration,
    what: &str,
    pred: impl Fn(&ServiceStatus) -> bool,
) -> Result<Duration> {
    let mut last = String::new();
    while since.elapsed() < timeout {
        if let Ok(s) = d.service_status() {
            if pred(&s) {
                return Ok(since.elapsed());
            }
            last = format!("phase {} weight {}", phase(&s), weight(&s));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("{what}: not reached in {timeout:?} (last: {last})")
}

/// 8 connections, each sending one request every `interval`.
fn background_load(
    d: &Deployment,
    seconds: u64,
    interval: Duration,
) -> Result<canary_lab::lab::LabProcess> {
    let mut spec = LoadSpec::new((d.lab.vip(), SERVICE_PORT).into());
    spec.duration = Duration::from_secs(seconds);
    spec.new_conns = 8;
    spec.interval = interval;
    Ok(d.spawn_load(0, &spec)?)
}

fn fault_all_canaries(d: &Deployment, json: &str) -> Result<()> {
    for n in d.lab.canary() {
        d.fault(n, json)?;
    }
    Ok(())
}

/// Fault to weight 0, `TRIALS` times in one deployment.
fn fault_reaction() -> Result<Vec<f64>> {
    let mut spec = DeploymentSpec::new(LabSpec::unique_tag('r'));
    spec.lab.clients = 1;
    spec.lab.stable = 2;
    spec.lab.canary = 1;
    // A long first step: the canary sits at 10 % until the fault.
    spec.interval = "300s".into();
    spec.poll_interval = "1s".into();
    let d = Deployment::start(spec)?;
    let _load = background_load(&d, 600, FAULT_LOAD_INTERVAL)?;
    let mut times = Vec::new();
    for trial in 0..TRIALS {
        let t0 = Instant::now();
        time_until(&d, t0, Duration::from_secs(30), "canary at 10 %", |s| {
            phase(s) == "stepping" && weight(s) > 0.0
        })?;
        // Let a few polls of healthy traffic in before the fault.
        std::thread::sleep(Duration::from_secs(3));
        fault_all_canaries(&d, r#"{"error_rate":0.3}"#)?;
        let t = time_until(
            &d,
            Instant::now(),
            Duration::from_secs(30),
            "canary weight 0",
            |s| weight(s) == 0.0,
        )?;
        println!("fault trial {trial}: canary weight 0 after {t:.2?}");
        times.push(t.as_secs_f64());
        fault_all_canaries(&d, r#"{"error_rate":0.0}"#)?;
        cli(&d, &["start"])?;
    }
    Ok(times)
}

/// `canary start` to `promoted`, `TRIALS` times.
fn healthy_promotion(spec: &DeploymentSpec) -> Result<Vec<f64>> {
    let d = Deployment::start(spec.clone())?;
    let _load = background_load(&d, 600, PROMOTION_LOAD_INTERVAL)?;
    let mut times = Vec::new();
    for trial in 0..TRIALS {
        // Some traffic first so the start is not also the first poll with data.
        std::thread::sleep(Duration::from_secs(2));
        // With `start = "paused"` every rollout waits as pending (weight 0) until resumed: the
        // clock starts at the resume.
        if !d.service_status().is_ok_and(|s| phase(&s) == "pending") {
            cli(&d, &["start"])?;
            time_until(
                &d,
                Instant::now(),
                Duration::from_secs(10),
                "pending",
                |s| phase(s) == "pending",
            )?;
        }
        let t0 = Instant::now();
        cli(&d, &["resume"])?;
        let t = time_until(&d, t0, Duration::from_mins(2), "promotion", |s| {
            phase(s) == "promoted"
        })?;
        println!("promotion trial {trial}: promoted after {t:.2?}");
        times.push(t.as_secs_f64());
    }
    Ok(times)
}

/// Sets `CONFIG_FLAG_NO_FLOW_TABLE` in the running daemon's pinned `CONFIG` map.
fn disable_flow_table(pins: &Path) -> Result<()> {
    let path = pins.join(maps::CONFIG);
    let data = aya::maps::MapData::from_pin(&path)
        .with_context(|| format!("open pinned map {}", path.display()))?;
    let mut config: aya::maps::Array<_, GlobalConfig> =
        aya::maps::Array::try_from(aya::maps::Map::Array(data))
            .context("CONFIG is not an array of GlobalConfig")?;
    let mut c = config.get(&0, 0).context("read CONFIG")?;
    c.flags |= CONFIG_FLAG_NO_FLOW_TABLE;
    config.set(0, c, 0).context("write CONFIG")?;
    Ok(())
}

#[derive(Clone, Debug, Serialize)]
struct PromotionTrial {
    connections: u64,
    broken: u64,
    moved: u64,
    failed_requests: u64,
}

/// 1,000 keep-alive connections open at 10 %, then 10 -> 100 at once.
fn promotion_under_load(flow_table: bool) -> Result<Vec<PromotionTrial>> {
    let mut spec = DeploymentSpec::new(LabSpec::unique_tag('p'));
    spec.lab.clients = 1;
    spec.lab.stable = 2;
    spec.lab.canary = 2;
    spec.start = "paused".into();
    let d = Deployment::start(spec)?;
    if !flow_table {
        disable_flow_table(&d.lab.bpffs().join("canary"))?;
    }
    labkit::tune_netns(&d.lab, &d.lab.clients()[0].netns)?;
    let mut trials = Vec::new();
    for trial in 0..TRIALS {
        cli(&d, &["set-weight", "10"])?;
        let mut load = LoadSpec::new((d.lab.vip(), SERVICE_PORT).into());
        load.new_conns = 0;
        load.keepalive = KEEPALIVE_CONNECTIONS;
        load.keepalive_interval = Duration::from_secs(1);
        load.no_reconnect = true;
        load.duration = Duration::from_secs(10);
        load.seed = trial as u64 + 1;
        let mut proc = d.spawn_load(0, &load)?;
        // Connections opened and a few requests each before the promotion.
        std::thread::sleep(Duration::from_secs(4));
        cli(&d, &["promote", "--full"])?;
        let deadline = Instant::now() + Duration::from_secs(40);
        while proc.is_running() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
        }
        if proc.is_running() {
            bail!("the load generator did not finish");
        }
        let text = proc.log_text();
        let start = text.find('{').context("no report from canary-loadgen")?;
        let report: Report = serde_json::from_str(&text[start..]).with_context(|| {
            format!(
                "parse canary-loadgen report: {}",
                &text[start..text.len().min(start + 300)]
            )
        })?;
        let t = PromotionTrial {
            connections: report.keep_alive_connections.connections,
            broken: report.keep_alive_connections.broken,
            moved: report.keep_alive_connections.moved,
            failed_requests: report.failed,
        };
        println!(
            "promotion under load (flow table {}), trial {trial}: {t:?}",
            if flow_table { "on" } else { "off" }
        );
        trials.push(t);
    }
    Ok(trials)
}

pub(super) fn run() -> Result<Section> {
    let machine = Machine::current();
    let fault = fault_reaction().context("fault reaction")?;

    let mut promo_spec = DeploymentSpec::new(LabSpec::unique_tag('h'));
    promo_spec.lab.clients = 1;
    promo_spec.lab.stable = 2;
    promo_spec.lab.canary = 1;
    promo_spec.start = "paused".into();
    promo_spec.interval = "3s".into();
    promo_spec.min_samples = 100;
    let steps = promo_spec.steps.len();
    let interval = 3.0;
    let promotion = healthy_promotion(&promo_spec).context("healthy promotion")?;

    let with_table = promotion_under_load(true).context("promotion with the flow table")?;
    let without_table = promotion_under_load(false).context("promotion without the flow table")?;

    let f = summary(&fault);
    let p = summary(&promotion);
    let broken =
        |t: &[PromotionTrial]| summary(&t.iter().map(|t| t.broken as f64).collect::<Vec<_>>());
    let moved =
        |t: &[PromotionTrial]| summary(&t.iter().map(|t| t.moved as f64).collect::<Vec<_>>());
    let conns =
        |t: &[PromotionTrial]| summary(&t.iter().map(|t| t.connections as f64).collect::<Vec<_>>());
    let (bw, bo) = (broken(&with_table), broken(&without_table));
    let fmt = |s: &Summary, unit: &str, digits: usize| {
        format!(
            "{:.*}{unit} ({:.*} - {:.*})",
            digits, s.median, digits, s.min, digits, s.max
        )
    };
    let configured = steps as f64 * interval;
    let minimum = (steps - 1) as f64 * interval;
    let rows = vec![
        vec![
            "fault (30 % errors on the canary at 10 %) to canary weight 0, poll 1 s".to_owned(),
            fmt(&f, " s", 2),
            format!("<= 2 s: {}", verdict(f.median <= 2.0)),
        ],
        vec![
            format!("healthy canary: start to 100 % ({steps} steps, interval {interval:.0} s)"),
            fmt(&p, " s", 1),
            format!(
                "{:.2}x steps x interval ({configured:.0} s); {:.2}x the least possible ({minimum:.0} s: 100 % comes at the end of step {})",
                p.median / configured,
                p.median / minimum,
                steps - 1
            ),
        ],
        vec![
            format!("connections broken, 10 -> 100 with {KEEPALIVE_CONNECTIONS} open keep-alive connections, flow table on"),
            fmt(&bw, "", 0),
            format!("target 0: {}; moved to another backend: {}", verdict(bw.max == 0.0), fmt(&moved(&with_table), "", 0)),
        ],
        vec![
            "same, flow table disabled (CONFIG_FLAG_NO_FLOW_TABLE)".to_owned(),
            fmt(&bo, "", 0),
            format!("moved: {}; connections opened: {}", fmt(&moved(&without_table), "", 0), fmt(&conns(&without_table), "", 0)),
        ],
    ];
    let mut md = heading("rollout: controller reaction in the lab", &machine);
    let _ = write!(md,
        "Median of {TRIALS} trials (min - max). Each measurement in its own lab deployment (real daemon, XDP, model servers); \
         times are read by polling `canary status` (about every 20 ms plus the CLI's own time). Background load: \
         8 connections, one request each every 20 ms (fault) or 5 ms (healthy promotion). The promotion trials use `canary promote --full` with \
         {KEEPALIVE_CONNECTIONS} keep-alive connections from `canary-loadgen --no-reconnect`, one request per second each; \
         a connection counts as broken when a request on it fails (reset, timeout or closed). The flow table is disabled \
         by setting `CONFIG_FLAG_NO_FLOW_TABLE` in the running daemon's pinned `CONFIG` map (a benchmark-only switch; \
         there is no config key).\n\n"
    );
    md.push_str(&table(
        &["measurement", "median (min - max)", "against"],
        &rows,
    ));
    Ok(Section {
        name: "rollout",
        markdown: md,
        json: serde_json::json!({
            "machine": machine,
            "trials": TRIALS,
            "fault_to_weight_zero_seconds": fault,
            "promotion_seconds": promotion,
            "promotion_steps": steps,
            "promotion_interval_seconds": interval,
            "promotion_with_flow_table": with_table,
            "promotion_without_flow_table": without_table,
        }),
    })
}
