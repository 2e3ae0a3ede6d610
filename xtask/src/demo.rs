//! `cargo xtask demo`: the whole system in one command, on one machine, as root.
//!
//! Sets up the toolchain, builds the XDP object and the workspace binaries, then plays three
//! canary rollouts in labs of network namespaces with real TCP load through the XDP balancer,
//! on canary-model or, with `--backend fastapi`, on the `FastAPI` example served by uvicorn:
//!
//! 1. a healthy v2 is stepped 10 -> 25 -> 50 -> 75 -> 100 % and promoted;
//! 2. a v2 that starts answering 30 % errors once it serves 25 % is rolled back; the demo
//!    measures how long that took;
//! 3. three balancer nodes behind an ECMP route share the rollout through etcd; the leader is
//!    killed with `kill -9` at 25 %, another node takes over and promotes (see [`cluster`]).
//!
//! While a rollout moves, a block refreshed about every second shows the configured against
//! the measured split, each group's error rate, latency and prediction mix (in scenario 3: every
//! node, who leads, and what each applied), and every decision of the controller with its
//! reason. `--scenario N` plays only the named scenarios. Exit code 0 only when every outcome
//! happened. The labs are removed at the end, on error, and on Ctrl-C.

mod cluster;

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use canary_lab::deployment::{Deployment, DeploymentSpec};
use canary_lab::lab::{leftovers, Lab, LabProcess, SERVICE_PORT};
use canary_lab::loadgen::LoadSpec;
use canary_lab::server::ModelServer;
use canary_userspace::api::ServiceStatus;
use canary_userspace::domain::Weight;
use canary_userspace::judge::{Judgement, SignalVerdict};
use clap::Args;

use crate::{build_ebpf, lab::require_root, setup};

/// Lab tags of the three scenarios (each gets a fresh lab, so no state carries over).
const TAGS: [&str; 3] = ["demo1", "demo2", "demo3"];
/// The fault of scenario 2, sent to every canary backend once the weight reaches [`FAULT_AT`].
const FAULT: &str = r#"{"error_rate": 0.3}"#;
/// Canary weight (percent) at which scenario 2 injects its fault.
const FAULT_AT: f64 = 25.0;
/// The steps of both rollouts, percent of new flows.
const STEPS: [f64; 5] = [10.0, 25.0, 50.0, 75.0, 100.0];
/// How often the live view is printed.
const VIEW_EVERY: Duration = Duration::from_secs(1);
/// How long the view runs on after a rollout ended.
const SETTLE: Duration = Duration::from_secs(3);

#[derive(Args, Debug, Clone)]
pub(crate) struct Options {
    /// Skip set-up and builds: use the binaries already built (`CANARY_BIN_DIR` or next to xtask).
    #[arg(long)]
    pub no_build: bool,
    /// The model server on the backends: `canary-model`, `fastapi` (the `FastAPI` example with
    /// `prometheus_client`) or `fastapi-instrumentator`.
    #[arg(long, default_value = "canary-model")]
    pub backend: ModelServer,
    /// Give up on a scenario after this many seconds (default: 80; 240 for the `FastAPI` example).
    #[arg(long)]
    pub scenario_timeout: Option<u64>,
    /// Play only these scenarios (1 promotion, 2 rollback, 3 leader killed in a 3-node
    /// cluster); repeatable. Default: all three.
    #[arg(long = "scenario", value_parser = clap::value_parser!(u8).range(1..=3))]
    pub scenarios: Vec<u8>,
}

/// How hard the demo drives a model server, and how its judge is set for that load.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Profile {
    /// New-connection workers per client, and the pause of each between requests.
    workers: usize,
    interval: Duration,
    min_samples: u64,
    /// `None`: the judge's defaults.
    confidence: Option<f64>,
    max_latency_increase_ms: Option<f64>,
    max_prediction_shift: Option<f64>,
    timeout: Duration,
}

impl Profile {
    fn of(server: ModelServer) -> Profile {
        match server {
            // About 1,000 requests per second in total.
            ModelServer::CanaryModel => Profile {
                workers: 6,
                interval: Duration::from_millis(5),
                min_samples: 300,
                confidence: None,
                max_latency_increase_ms: None,
                max_prediction_shift: None,
                timeout: Duration::from_secs(80),
            },
            // About 120 requests per second: five uvicorn processes (one each) share the
            // machine with the rest of the lab. Fewer samples per step, so wider limits keep a
            // healthy v2 from waiting for statistical power; the fault still exceeds them.
            ModelServer::Fastapi(_) => Profile {
                workers: 6,
                interval: Duration::from_millis(100),
                min_samples: 150,
                confidence: Some(0.95),
                max_latency_increase_ms: Some(150.0),
                max_prediction_shift: Some(0.25),
                timeout: Duration::from_mins(4),
            },
        }
    }
}

/// One rollout to play.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scenario {
    Healthy,
    Faulty,
    LeaderKilled,
}

impl Scenario {
    const ALL: [Scenario; 3] = [Scenario::Healthy, Scenario::Faulty, Scenario::LeaderKilled];

    fn title(self) -> &'static str {
        match self {
            Scenario::Healthy => "scenario 1: a healthy v2 is promoted",
            Scenario::Faulty => "scenario 2: a v2 that fails at 25% is rolled back",
            Scenario::LeaderKilled => {
                "scenario 3: three nodes, the leader killed at 25%, another node promotes"
            }
        }
    }

    fn tag(self) -> &'static str {
        TAGS[self as usize]
    }

    /// The scenarios `--scenario` names (numbered from 1), all of them when none is named.
    fn selected(numbers: &[u8]) -> Vec<Scenario> {
        Scenario::ALL
            .into_iter()
            .enumerate()
            .filter(|(i, _)| numbers.is_empty() || numbers.contains(&(*i as u8 + 1)))
            .map(|(_, s)| s)
            .collect()
    }
}

/// What a scenario ended with.
#[derive(Clone, Debug, Default)]
struct Outcome {
    /// Final phase (`promoted`, `rolled_back`, ...) or what stopped the scenario.
    phase: String,
    /// Canary weights seen, in order, without repeats (percent).
    weights: Vec<f64>,
    /// From the first step to the end.
    elapsed: Duration,
    /// Scenario 2: when the fault was in force on every canary backend (Unix ms).
    fault_at_ms: Option<u64>,
    /// Scenario 2: the rollback decision, milliseconds after the fault.
    rollback_after_ms: Option<u64>,
    /// Scenario 2: weight 0 seen by polling, after the fault.
    weight_zero_seen_after: Option<Duration>,
    /// Scenario 2: the first poll after the fault in which the kernel sent no new flow to
    /// canary (and some to stable).
    canary_flows_stopped_after: Option<Duration>,
    /// Kernel new flows per group (stable, canary) while the view ran on after the end.
    flows_after_end: Option<(u64, u64)>,
    /// Reason of the final decision.
    reason: String,
    /// Requests the backends answered over the scenario, per group.
    requests: BTreeMap<String, u64>,
    /// The scenario's `canary report` (SVG), if written.
    report: Option<std::path::PathBuf>,
    /// Scenario 3: the leader killed and the node that took over.
    takeover: Option<cluster::Takeover>,
}

impl Outcome {
    /// Scenario 1 passed: promoted through every step, never rolled back, and afterwards every
    /// new flow went to canary.
    fn promoted_through_all_steps(&self) -> bool {
        self.phase == "promoted"
            && self.weights == STEPS
            && self
                .flows_after_end
                .is_some_and(|(stable, canary)| stable == 0 && canary > 0)
    }

    /// Scenario 2 passed: rolled back after the fault, and afterwards no new flow went to canary.
    fn rolled_back_after_fault(&self) -> bool {
        self.phase == "rolled_back"
            && self.rollback_after_ms.is_some()
            && self.weights.last() == Some(&0.0)
            && self
                .flows_after_end
                .is_some_and(|(stable, canary)| stable > 0 && canary == 0)
    }

    fn passed(&self, scenario: Scenario) -> bool {
        match scenario {
            Scenario::Healthy => self.promoted_through_all_steps(),
            Scenario::Faulty => self.rolled_back_after_fault(),
            Scenario::LeaderKilled => cluster::passed(self),
        }
    }
}

pub(crate) fn run(options: &Options) -> Result<()> {
    require_root("demo")?;
    let started = Instant::now();
    install_interrupt_handler()?;
    if !options.no_build {
        build()?;
    }
    // A previous run that was killed hard may have left a lab (and a persisted rollout) behind.
    for tag in TAGS {
        Lab::down_tag(tag).with_context(|| format!("removing the leftover lab {tag}"))?;
    }

    let profile = Profile::of(options.backend);
    let timeout = options
        .scenario_timeout
        .map_or(profile.timeout, Duration::from_secs);
    let mut results = Vec::new();
    for scenario in Scenario::selected(&options.scenarios) {
        println!("\n=== {} ({}) ===", scenario.title(), options.backend);
        let outcome = play(scenario, options.backend, timeout)
            .with_context(|| format!("{} failed to run", scenario.title()))?;
        println!(
            "--- {}: {} ---",
            scenario.title(),
            if outcome.passed(scenario) {
                "done"
            } else {
                "NOT as expected"
            }
        );
        results.push((scenario, outcome));
    }

    println!("\n=== summary ===");
    for (scenario, o) in &results {
        println!("{}", summary_line(*scenario, o));
        if let Some(r) = &o.report {
            println!("  report: {} (and .html beside it)", r.display());
        }
    }
    println!(
        "operators: import deploy/grafana/canary.json into Grafana (Prometheus scrape config and \
         alert rules in deploy/prometheus/) for the same rollout as a dashboard; \
         `canary status --watch` shows it live in a terminal; `canary report --out FILE.svg` draws it"
    );
    let total = started.elapsed();
    let left: Vec<String> = TAGS.iter().flat_map(|tag| leftovers(tag)).collect();
    if left.is_empty() {
        println!(
            "demo finished in {:.0} s; labs removed, nothing left behind",
            total.as_secs_f64()
        );
    } else {
        bail!("the demo labs left behind: {}", left.join(", "));
    }
    if results.iter().all(|(s, o)| o.passed(*s)) {
        Ok(())
    } else {
        bail!("the demo did not show every outcome (see the summary above)")
    }
}

/// Ctrl-C removes both labs (with their daemons, models and load) before exiting: a Drop guard
/// would not run on SIGINT.
fn install_interrupt_handler() -> Result<()> {
    ctrlc::set_handler(|| {
        eprintln!("\ninterrupted: removing the demo labs");
        for tag in TAGS {
            if let Err(e) = Lab::down_tag(tag) {
                eprintln!("lab {tag}: {e}");
            }
        }
        std::process::exit(130);
    })
    .context("cannot install the Ctrl-C handler")
}

/// Set-up, release XDP object (embedded by the daemon's build), then the workspace binaries in
/// the profile of this executable (so they land next to it, where `bins::locate` looks).
fn build() -> Result<()> {
    let root = crate::workspace_root();
    let toolchain = setup::ensure()?;
    let object = build_ebpf::build(&root, true, &toolchain)?;
    println!("demo: eBPF object {}", object.display());
    let release = std::env::current_exe()
        .ok()
        .is_some_and(|e| e.components().any(|c| c.as_os_str() == "release"));
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut c = Command::new(cargo);
    c.args(["build", "--workspace", "--bins"])
        .current_dir(&root);
    if release {
        c.arg("--release");
    }
    println!("demo: building the workspace binaries");
    let status = c.status().with_context(|| format!("cannot start {c:?}"))?;
    if !status.success() {
        bail!("building the workspace binaries failed ({status}); command: {c:?}");
    }
    Ok(())
}

/// The daemon config of the demo: short steps, enough samples for the judge to decide at the
/// load of the server's [`Profile`].
fn deployment_spec(tag: &str, server: ModelServer) -> DeploymentSpec {
    let profile = Profile::of(server);
    let mut spec = DeploymentSpec::new(tag);
    spec.server = server;
    spec.lab.clients = 2;
    spec.lab.stable = 3;
    spec.lab.canary = 2;
    spec.steps = STEPS.to_vec();
    spec.interval = "3s".into();
    spec.poll_interval = "1s".into();
    spec.min_samples = profile.min_samples;
    spec.warmup_requests = 5;
    spec.rollback = "drain".into();
    if let Some(c) = profile.confidence {
        spec.confidence = c;
    }
    if let Some(ms) = profile.max_latency_increase_ms {
        spec.max_latency_increase_ms = ms;
    }
    if let Some(shift) = profile.max_prediction_shift {
        spec.max_prediction_shift = shift;
    }
    spec
}

/// Continuous load from every client: new connections only, so every request is a fresh
/// choice by the balancer and the split follows the weight.
fn load_spec(vip: SocketAddr, client: usize, duration: Duration, profile: Profile) -> LoadSpec {
    let mut load = LoadSpec::new(vip);
    load.duration = duration;
    load.new_conns = profile.workers;
    load.interval = profile.interval;
    load.timeout = Duration::from_secs(2);
    load.seed = client as u64 + 1;
    load
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn play(scenario: Scenario, server: ModelServer, timeout: Duration) -> Result<Outcome> {
    if scenario == Scenario::LeaderKilled {
        return cluster::play(scenario.tag(), server, timeout);
    }
    let t0 = Instant::now();
    let profile = Profile::of(server);
    println!(
        "bringing up lab {} (3 stable v1, 2 canary v2, 2 clients), {server} on every backend \
         (upstream preset {}) and `canary run`",
        scenario.tag(),
        server.preset()
    );
    let d = Deployment::start(deployment_spec(scenario.tag(), server))?;
    println!(
        "ready in {:.1} s; VIP {}:{SERVICE_PORT}; config {}",
        t0.elapsed().as_secs_f64(),
        d.lab.vip(),
        d.config_path.display()
    );
    let vip = SocketAddr::from((d.lab.vip(), SERVICE_PORT));
    // Bounded so that nothing outlives a demo that is killed hard; ended when the scenario is.
    let load_for = timeout + Duration::from_secs(30);
    let mut loads: Vec<LabProcess> = (0..d.lab.clients().len())
        .map(|c| d.spawn_load(c, &load_spec(vip, c, load_for, profile)))
        .collect::<Result<_, _>>()?;
    println!(
        "load: {} clients x {} new-connection workers, continuous",
        loads.len(),
        profile.workers
    );
    let lb = d.lab.load_balancer()?.netns.clone();
    println!(
        "live view: sudo ip netns exec {lb} {} status --watch --until-done --config {}",
        d.canary_bin.display(),
        d.config_path.display()
    );
    let outcome = watch(&d, scenario, timeout);
    for l in &mut loads {
        l.kill();
    }
    let mut outcome = outcome?;
    outcome.report = write_report(&d, scenario);
    drop(d);
    Ok(outcome)
}

/// `canary report` of the scenario's rollout, as SVG and HTML under `target/demo/`, outside
/// the lab (which is removed). Returns the SVG's path, or `None` (with the reason printed).
fn write_report(d: &Deployment, scenario: Scenario) -> Option<std::path::PathBuf> {
    let dir = std::env::current_dir().ok()?.join("target").join("demo");
    if let Err(e) = std::fs::create_dir_all(&dir) {
        println!("report: cannot create {}: {e}", dir.display());
        return None;
    }
    let mut written = None;
    for ext in ["svg", "html"] {
        let path = dir.join(format!("report-{}.{ext}", scenario.tag()));
        let path_text = path.to_string_lossy().into_owned();
        match d.cli(&["report", "--out", &path_text]) {
            Ok(out) if out.status.success() => {
                print!("report: {}", String::from_utf8_lossy(&out.stdout));
                if ext == "svg" {
                    written = Some(path);
                }
            }
            Ok(out) => println!(
                "report: canary report failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(e) => println!("report: cannot run canary report: {e}"),
        }
    }
    written
}

/// Follows the rollout until it ends (or `timeout`), printing the live view; in scenario 2
/// injects the fault at 25 % and times the rollback. After the end, keeps showing the view for
/// [`SETTLE`] so the new flows can be seen following the final weight.
fn watch(d: &Deployment, scenario: Scenario, timeout: Duration) -> Result<Outcome> {
    let mut w = Watch {
        start: Instant::now(),
        out: Outcome::default(),
        seen: HashSet::new(),
        last_view: None,
        view_flows: None,
        poll_flows: None,
        first_step: None,
        fault_sent: None,
        end_flows: None,
        requests: BTreeMap::new(),
    };
    let mut ended_at: Option<Instant> = None;
    loop {
        let status = match d.service_status() {
            Ok(s) => s,
            Err(e) => {
                if w.start.elapsed() > timeout {
                    bail!("the daemon stopped answering: {e}\n{}", d.daemon_log_tail());
                }
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
        };
        let phase = status.phase.clone();
        let weight = status.weight_percent;
        w.observe(&status, scenario, &phase, weight);

        if scenario == Scenario::Faulty
            && w.fault_sent.is_none()
            && phase == "stepping"
            && weight >= FAULT_AT
        {
            for node in d.lab.canary() {
                d.fault(node, FAULT)?;
            }
            w.fault_sent = Some(Instant::now());
            w.out.fault_at_ms = Some(unix_ms());
            println!(
                "[{:>5.1}s] !! fault injected: every canary backend now answers 30% of requests with HTTP 500 (POST /fault {FAULT})",
                w.start.elapsed().as_secs_f64()
            );
        }

        let ended = phase == "promoted" || phase == "rolled_back";
        if ended_at.is_none() && (ended || w.start.elapsed() > timeout) {
            w.finish(&status, &phase, ended, timeout);
            ended_at = Some(Instant::now());
            println!(
                "[{:>5.1}s] rollout ended ({}); load continues for {} s to show where new flows go",
                w.start.elapsed().as_secs_f64(),
                w.out.phase,
                SETTLE.as_secs()
            );
        }
        if ended_at.is_some_and(|e| e.elapsed() >= SETTLE) {
            print!("{}", w.view(&status, scenario));
            w.out.flows_after_end = w.end_flows.map(|e| delta(group_flows(&status), e));
            return Ok(w.out);
        }
        // After the fault, poll faster to time the rollback closely.
        std::thread::sleep(if w.fault_sent.is_some() && ended_at.is_none() {
            Duration::from_millis(100)
        } else {
            Duration::from_millis(250)
        });
    }
}

/// The state of [`watch`] between polls.
struct Watch {
    start: Instant,
    out: Outcome,
    seen: HashSet<String>,
    last_view: Option<Instant>,
    /// Kernel new-flow counters at the last view, and at the last poll.
    view_flows: Option<(u64, u64)>,
    poll_flows: Option<(u64, u64)>,
    first_step: Option<Instant>,
    fault_sent: Option<Instant>,
    /// Kernel new-flow counters when the rollout ended.
    end_flows: Option<(u64, u64)>,
    /// Largest per-group request count seen per step window (`group@weight`).
    requests: BTreeMap<String, u64>,
}

impl Watch {
    /// One poll: weights, figures, decisions, timing after the fault, and the view when due.
    fn observe(&mut self, status: &ServiceStatus, scenario: Scenario, phase: &str, weight: f64) {
        if matches!(phase, "stepping" | "promoted" | "rolled_back") {
            self.first_step.get_or_insert_with(Instant::now);
            if self.out.weights.last() != Some(&weight) {
                self.out.weights.push(weight);
            }
        }
        for g in &status.groups {
            let e = self
                .requests
                .entry(format!("{}@{weight}", g.group))
                .or_default();
            *e = (*e).max(g.requests);
        }
        let flows = group_flows(status);
        if let (Some(f), Some(before)) = (self.fault_sent, self.poll_flows) {
            let (stable, canary) = delta(flows, before);
            if weight == 0.0 && self.out.weight_zero_seen_after.is_none() {
                self.out.weight_zero_seen_after = Some(f.elapsed());
            }
            if weight == 0.0
                && canary == 0
                && stable > 0
                && self.out.canary_flows_stopped_after.is_none()
            {
                self.out.canary_flows_stopped_after = Some(f.elapsed());
            }
        }
        self.poll_flows = Some(flows);
        for line in new_decisions(status, &mut self.seen, self.out.fault_at_ms) {
            println!("{line}");
        }
        if self.last_view.is_none_or(|v| v.elapsed() >= VIEW_EVERY) {
            print!("{}", self.view(status, scenario));
        }
    }

    fn view(&mut self, status: &ServiceStatus, scenario: Scenario) -> String {
        let flows = group_flows(status);
        let live = self.view_flows.map(|before| delta(flows, before));
        self.view_flows = Some(flows);
        self.last_view = Some(Instant::now());
        render_view(self.start.elapsed(), scenario, status, live)
    }

    /// The rollout ended (or timed out): fill in the outcome.
    fn finish(&mut self, status: &ServiceStatus, phase: &str, ended: bool, timeout: Duration) {
        self.end_flows = Some(group_flows(status));
        let out = &mut self.out;
        out.phase = if ended {
            phase.to_string()
        } else {
            println!("giving up after {} s in phase {phase}", timeout.as_secs());
            format!("{phase} (timed out)")
        };
        out.elapsed = self
            .first_step
            .map_or_else(|| self.start.elapsed(), |f| f.elapsed());
        out.reason = status
            .last_decision
            .as_ref()
            .map_or("-", |d| d.reason.as_str())
            .to_string();
        if let (Some(fault), Some(at), "rolled_back") = (
            out.fault_at_ms,
            status.last_decision.as_ref().map(|d| d.at_ms),
            phase,
        ) {
            out.rollback_after_ms = Some(at.saturating_sub(fault));
        }
        for (key, n) in &self.requests {
            let group = key.split('@').next().unwrap_or("?").to_string();
            *out.requests.entry(group).or_default() += n;
        }
    }
}

/// Decisions in `status.events` not printed yet, one line each, oldest first. After the fault,
/// each line also says how long after it the decision came.
fn new_decisions(
    status: &ServiceStatus,
    seen: &mut HashSet<String>,
    fault_at_ms: Option<u64>,
) -> Vec<String> {
    let mut lines = Vec::new();
    for e in &status.events {
        let key = format!(
            "{}/{}/{}/{}",
            e.at_ms,
            e.action.as_str(),
            e.reason.as_str(),
            e.to.basis_points()
        );
        if !seen.insert(key) {
            continue;
        }
        let since_fault = match (fault_at_ms, e.at_ms) {
            (Some(f), at) if at >= f => {
                format!(" [{:.2} s after the fault]", (at - f) as f64 / 1000.0)
            }
            _ => String::new(),
        };
        lines.push(format!(
            "  >> decision {} ({}): {} -> {}, phase {}: {}{}{}",
            e.action.as_str(),
            e.reason.as_str(),
            percent_of(e.from),
            percent_of(e.to),
            e.phase.as_str(),
            e.message,
            signals(e.judgement.as_ref()),
            since_fault,
        ));
    }
    lines
}

/// A weight in percent.
fn percent_of(w: Weight) -> String {
    format!("{}%", w.percent())
}

/// The judge's per-signal verdicts, compactly: ` [error_rate pass, latency_mean pass, ...]`.
fn signals(judgement: Option<&Judgement>) -> String {
    let parts: Vec<String> = judgement
        .into_iter()
        .flat_map(|j| &j.signals)
        .filter(|s| s.verdict != SignalVerdict::Skipped)
        .map(|s| {
            format!(
                "{} {}",
                s.signal.as_str(),
                s.verdict.to_string().to_lowercase()
            )
        })
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!(" [{}]", parts.join(", "))
    }
}

fn percent(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{:.2}%", v * 100.0))
}

fn millis(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{:.2}", v * 1000.0))
}

/// New flows the kernel counted per group since the daemon loaded the program: (stable, canary).
fn group_flows(s: &ServiceStatus) -> (u64, u64) {
    let mut flows = (0, 0);
    for b in &s.backends {
        match b.group.as_str() {
            "canary" => flows.1 += b.new_flows,
            _ => flows.0 += b.new_flows,
        }
    }
    flows
}

fn delta(now: (u64, u64), before: (u64, u64)) -> (u64, u64) {
    (
        now.0.saturating_sub(before.0),
        now.1.saturating_sub(before.1),
    )
}

/// The live view of one service status: phase and split, then one line per group.
/// `live`: new flows (stable, canary) the kernel counted since the previous view.
fn render_view(
    t: Duration,
    scenario: Scenario,
    s: &ServiceStatus,
    live: Option<(u64, u64)>,
) -> String {
    let mut out = String::new();
    let step = match s.step {
        Some(i) => format!("{}/{}", i + 1, s.steps.len()),
        None => "-".into(),
    };
    let live = match live {
        Some((stable, canary)) if stable + canary > 0 => format!(
            "{:>6.2}% of {} new flows since the last line",
            canary as f64 * 100.0 / (stable + canary) as f64,
            stable + canary
        ),
        _ => "no new flows since the last line".into(),
    };
    let _ = writeln!(
        out,
        "[{:>5.1}s] {} | phase {:<11} step {:<3} | canary weight {:>6.2}% configured | measured {live} ({} over the last judged window)",
        t.as_secs_f64(),
        scenario.tag(),
        s.phase,
        step,
        s.weight_percent,
        percent(s.measured_canary_share),
    );
    for g in &s.groups {
        let total: u64 = g.predictions.values().sum();
        let mix: Vec<String> = g
            .predictions
            .iter()
            .map(|(k, &n)| {
                if total == 0 {
                    format!("{k} -")
                } else {
                    format!("{k} {:.0}%", n as f64 * 100.0 / total as f64)
                }
            })
            .collect();
        let _ = writeln!(
            out,
            "         {:<6} requests {:>6}  errors {:>7}  latency mean {:>6} ms  p95 {:>6} ms  predictions {}",
            g.group,
            g.requests,
            percent(g.error_rate),
            millis(g.latency_mean_seconds),
            millis(g.latency_p95_seconds),
            if mix.is_empty() { "-".into() } else { mix.join(" ") },
        );
    }
    out
}

fn summary_line(scenario: Scenario, o: &Outcome) -> String {
    let path: Vec<String> = o.weights.iter().map(|w| format!("{w}%")).collect();
    let requests: Vec<String> = o.requests.iter().map(|(g, n)| format!("{g} {n}")).collect();
    let secs = |d: Option<Duration>| {
        d.map_or_else(|| "never".into(), |d| format!("{:.2} s", d.as_secs_f64()))
    };
    let mut s = format!(
        "{} {}\n       weights {} in {:.1} s, phase {} (last reason {})\n       requests judged: {}\n",
        if o.passed(scenario) { "OK  " } else { "FAIL" },
        scenario.title(),
        path.join(" -> "),
        o.elapsed.as_secs_f64(),
        o.phase,
        o.reason,
        requests.join(", "),
    );
    if scenario == Scenario::LeaderKilled {
        let _ = writeln!(s, "{}", cluster::summary(o));
    }
    if scenario == Scenario::Faulty {
        let _ = writeln!(
            s,
            "       after the fault: rollback decision {}, weight 0 seen {}, no new canary flow from {}",
            secs(o.rollback_after_ms.map(Duration::from_millis)),
            secs(o.weight_zero_seen_after),
            secs(o.canary_flows_stopped_after),
        );
    }
    let _ = write!(
        s,
        "       new flows in the {} s after the end: {}",
        SETTLE.as_secs(),
        o.flows_after_end.map_or_else(
            || "-".into(),
            |(stable, canary)| format!("stable {stable}, canary {canary}")
        )
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status() -> ServiceStatus {
        let signal = |signal: &str, verdict: &str| {
            serde_json::json!({"signal": signal, "test": "", "n_stable": 900, "n_canary": 300,
                "threshold": 0.01, "verdict": verdict, "note": ""})
        };
        serde_json::from_value(serde_json::json!({
            "name": "sentiment", "vip": "198.18.0.100:8080", "protocol": "tcp", "paused": false,
            "backends": [],
            "phase": "stepping", "step": 1, "steps": [10.0, 25.0, 50.0, 75.0, 100.0],
            "weight_percent": 25.0, "measured_canary_share": 0.2481,
            "groups": [
                {"group": "stable", "requests": 900, "errors": 0, "error_rate": 0.0,
                 "latency_mean_seconds": 0.0012, "latency_p95_seconds": 0.004,
                 "predictions": {"negative": 360, "positive": 540}, "new_flows": 901},
                {"group": "canary", "requests": 300, "errors": 3, "error_rate": 0.01,
                 "latency_mean_seconds": null, "latency_p95_seconds": null,
                 "predictions": {}, "new_flows": 297}
            ],
            "events": [
                {"at_ms": 1000, "action": "step", "reason": "warmup_done", "phase": "stepping",
                 "from": 0, "to": 1000, "message": "warm-up done: first step 10%", "judgement": null},
                {"at_ms": 4000, "action": "step", "reason": "healthy", "phase": "stepping",
                 "from": 1000, "to": 2500, "message": "every signal passed in step window 1 (3 polls)",
                 "judgement": {"verdict": "promote", "reason": "healthy", "window": 1,
                     "rollback_level": 0.0025, "promote_level": 0.05,
                     "rollback_signals": 4, "signals": [
                         signal("error_rate", "pass"),
                         signal("latency_p95", "skipped")]}}
            ]
        }))
        .expect("a status as the daemon writes it")
    }

    #[test]
    fn view_shows_split_groups_and_prediction_mix() {
        let v = render_view(
            Duration::from_millis(12_300),
            Scenario::Healthy,
            &status(),
            Some((750, 250)),
        );
        for needle in [
            " 12.3s",
            "step 2/5",
            " 25.00% configured",
            "measured  25.00% of 1000 new flows since the last line",
            "(24.81% over the last judged window)",
            "requests    900",
            "errors   1.00%",
            "mean   1.20 ms",
            "p95   4.00 ms",
            "negative 40% positive 60%",
            "p95      - ms  predictions -",
        ] {
            assert!(v.contains(needle), "missing {needle:?} in\n{v}");
        }
    }

    #[test]
    fn decisions_are_printed_once_with_reason_weights_and_signals() {
        let mut seen = HashSet::new();
        let lines = new_decisions(&status(), &mut seen, None);
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(
            lines[0].contains("step (warmup_done): 0% -> 10%"),
            "{}",
            lines[0]
        );
        assert!(
            lines[1].ends_with("every signal passed in step window 1 (3 polls) [error_rate pass]"),
            "{}",
            lines[1]
        );
        assert!(new_decisions(&status(), &mut seen, None).is_empty());
    }

    #[test]
    fn decisions_after_the_fault_say_how_long_after() {
        let mut seen = HashSet::new();
        let lines = new_decisions(&status(), &mut seen, Some(2_500));
        assert!(!lines[0].contains("after the fault"), "{}", lines[0]);
        assert!(
            lines[1].contains("[1.50 s after the fault]"),
            "{}",
            lines[1]
        );
    }

    #[test]
    fn scenarios_are_selected_by_number_in_order() {
        assert_eq!(Scenario::selected(&[]), Scenario::ALL.to_vec());
        assert_eq!(
            Scenario::selected(&[3, 1]),
            vec![Scenario::Healthy, Scenario::LeaderKilled]
        );
        assert_eq!(Scenario::LeaderKilled.tag(), "demo3");
    }

    #[test]
    fn outcomes_pass_only_when_the_scenario_happened() {
        let promoted = Outcome {
            phase: "promoted".into(),
            weights: STEPS.to_vec(),
            flows_after_end: Some((0, 1200)),
            ..Outcome::default()
        };
        assert!(promoted.passed(Scenario::Healthy));
        let stable_still_chosen = Outcome {
            flows_after_end: Some((3, 1200)),
            ..promoted.clone()
        };
        assert!(!stable_still_chosen.passed(Scenario::Healthy));
        let skipped_a_step = Outcome {
            weights: vec![10.0, 50.0, 75.0, 100.0],
            ..promoted
        };
        assert!(!skipped_a_step.passed(Scenario::Healthy));
        let rolled_back = Outcome {
            phase: "rolled_back".into(),
            weights: vec![10.0, 25.0, 0.0],
            rollback_after_ms: Some(1200),
            flows_after_end: Some((900, 0)),
            ..Outcome::default()
        };
        assert!(rolled_back.passed(Scenario::Faulty));
        assert!(!rolled_back.passed(Scenario::Healthy));
        let before_fault = Outcome {
            rollback_after_ms: None,
            ..rolled_back
        };
        assert!(!before_fault.passed(Scenario::Faulty));
    }
}
