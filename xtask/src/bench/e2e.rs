//! `bench e2e`: the request path through each balancer, same lab, backends and load.
//!
//! Paths: (a) client straight to one backend (the ceiling), (b) the canary XDP balancer (DSR,
//! canary weight 10 %), (c) nginx `stream`, (d) `HAProxy` TCP mode, (e) a `FastAPI` + uvicorn
//! router with httpx, (f) a do-nothing XDP bouncer in the balancer's place (the lab's second
//! balancer namespace, `lb1`: every IPv4 frame to one fixed backend's MAC, `XDP_TX`), the
//! ceiling of this topology for any DSR balancer. (c)-(e) split 90/10 by weight like (b) and run
//! in the load balancer's namespace on its own address (ports 8081-8083); (b) and (f) use the
//! VIP, routed from the client through `lb` or `lb1`. (b1) is the canary XDP balancer again, for
//! a second service of the same daemon on its own VIP whose one backend is (f)'s: the bouncer
//! cannot spread, so (b1) against (f) compares the two programs on the same backend set. (f5) is
//! the spreading bouncer in the lab's third balancer namespace (`lb2`): as little as (f), but
//! each connection to one of (b)'s 5 backends with (b)'s weights (a hash of the TCP source port
//! picks one of 20 slots, 6 per stable and 1 per canary backend), so (b) against (f5) compares
//! the programs on (b)'s own backend set.
//! Load: `wrk`, one thread, POST /predict, keep-alive and one request per connection, rounds
//! interleaved.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use canary_lab::deployment::{self as deployment, Deployment, DeploymentSpec};
use canary_lab::lab::{LabProcess, LabSpec, Node, MAX_BOUNCER_BACKENDS, SERVICE_PORT};
use serde::Serialize;

use super::install;
use super::labkit::{self, BpfStats, WrkResult};
use super::procstat;
use super::proxies::{self, Upstream};
use super::report::{bench_dir, heading, table, Machine, Section};
use super::stats::{median, verdict};

const ROUNDS: usize = 5;
const SECONDS: u32 = 5;
const CONNECTIONS: u32 = 32;
const CANARY_PERCENT: u32 = 10;
/// The lab's service (the one with the canary split).
const SERVICE: &str = "sentiment";
/// Path (b1)'s service: the same daemon, one backend (the bouncer's), on its own VIP.
const ONE_BACKEND_SERVICE: &str = "sentiment-one";
/// (b1)'s VIP: in the lab's range, free (balancers .2-.7, etcd .9, backends .11-.49, clients
/// .51-.90, the lab's VIP .100), held on the one backend's `lo` and routed by the client through
/// `lb`.
const ONE_BACKEND_VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 101);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
enum Mode {
    KeepAlive,
    Close,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::KeepAlive => "keep-alive",
            Mode::Close => "new connection per request",
        }
    }
}

/// Where a path's balancer CPU figure comes from.
enum Cpu {
    None,
    Xdp(u64),
    Process(u32),
}

struct PathDef {
    key: &'static str,
    name: &'static str,
    target: SocketAddr,
    cpu: Cpu,
    /// The balancer namespace the client routes the VIP through for this path, if it uses the VIP.
    via: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
struct Sample {
    round: usize,
    wrk: WrkResult,
    /// Balancer CPU time during the run, ns (`None` for the direct path).
    balancer_cpu_ns: Option<u64>,
    /// The `canary` daemon's CPU time during the run (it runs through every path), seconds.
    daemon_cpu_seconds: f64,
    /// All model servers' CPU time during the run, seconds.
    backends_cpu_seconds: f64,
    /// Percent of all the machine's CPUs busy during the run.
    machine_busy_percent: f64,
}

#[derive(Clone, Debug, Serialize)]
struct Row {
    path: String,
    mode: Mode,
    samples: Vec<Sample>,
    requests_per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    balancer_cpu_ms_per_1000: Option<f64>,
    /// The daemon's CPU, ms per second of run.
    daemon_cpu_ms_per_second: f64,
    generator_cpu_percent: f64,
    backends_cpu_percent: f64,
    machine_busy_percent: f64,
    errors: u64,
}

fn upstreams(d: &Deployment) -> Vec<Upstream> {
    let stable = d.lab.stable();
    let canary = d.lab.canary();
    let (ws, wc) = proxies::weights(stable.len(), canary.len(), CANARY_PERCENT);
    let mk = |n: &Node, canary: bool, weight| Upstream {
        name: n.name.clone(),
        address: SocketAddrV4::new(n.address, SERVICE_PORT),
        canary,
        weight,
    };
    stable
        .iter()
        .map(|n| mk(n, false, ws))
        .chain(canary.iter().map(|n| mk(n, true, wc)))
        .collect()
}

/// (f5)'s slots: every backend of the lab's service as often as its weight in (b)'s split
/// (weights divided by their greatest common divisor; 3 stable + 2 canary at 10 %: 6 and 1).
fn spread_slots(d: &Deployment) -> Result<Vec<Node>> {
    let ups = upstreams(d);
    let gcd = ups.iter().map(|u| u.weight).fold(0, gcd);
    let mut slots = Vec::new();
    for u in &ups {
        let node = d
            .lab
            .backends()
            .find(|b| b.name == u.name)
            .with_context(|| format!("backend {} is not in the lab", u.name))?;
        for _ in 0..u.weight / gcd.max(1) {
            slots.push(node.clone());
        }
    }
    if slots.len() > MAX_BOUNCER_BACKENDS {
        bail!(
            "the spreading bouncer takes at most {MAX_BOUNCER_BACKENDS} slots, (b)'s weights need {}",
            slots.len()
        );
    }
    Ok(slots)
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("write {}", path.display()))
}

fn start_peers(
    d: &Deployment,
    venv: &Path,
    dir: &Path,
) -> Result<(LabProcess, LabProcess, LabProcess)> {
    let lb = d.lab.load_balancer()?;
    let ups = upstreams(d);
    let nginx_conf = dir.join("nginx.conf");
    write(
        &nginx_conf,
        &proxies::nginx_conf(
            proxies::peer_listen(lb.address, 8081),
            &ups,
            &dir.display().to_string(),
        ),
    )?;
    let haproxy_cfg = dir.join("haproxy.cfg");
    write(
        &haproxy_cfg,
        &proxies::haproxy_cfg(proxies::peer_listen(lb.address, 8082), &ups),
    )?;
    write(&dir.join("router.py"), proxies::ROUTER_PY)?;
    let s = |p: &Path| p.display().to_string();
    let nginx = d.lab.spawn_in(
        &lb.netns,
        &[
            "/usr/sbin/nginx",
            "-p",
            &s(dir),
            "-c",
            &s(&nginx_conf),
            "-g",
            "daemon off;",
        ],
    )?;
    let haproxy = d.lab.spawn_in(
        &lb.netns,
        &["/usr/sbin/haproxy", "-db", "-f", &s(&haproxy_cfg)],
    )?;
    let (v1, v2) = proxies::router_groups(&ups);
    let weight = format!("{}", f64::from(CANARY_PERCENT) / 100.0);
    let router = d.lab.spawn_in_env(
        &lb.netns,
        &[
            &s(&venv.join("bin/uvicorn")),
            "--app-dir",
            &s(dir),
            "router:app",
            "--host",
            &lb.address.to_string(),
            "--port",
            "8083",
            "--workers",
            "2",
            "--log-level",
            "warning",
            "--no-access-log",
        ],
        &[
            ("ROUTER_V1", &v1),
            ("ROUTER_V2", &v2),
            ("ROUTER_CANARY_WEIGHT", &weight),
        ],
    )?;
    Ok((nginx, haproxy, router))
}

fn models_cpu(d: &Deployment) -> f64 {
    d.models
        .iter()
        .map(|m| procstat::tree_cpu_time(m.pid()).as_secs_f64())
        .sum()
}

fn daemon_cpu(d: &Deployment) -> f64 {
    d.daemon
        .as_ref()
        .map_or(0.0, |p| procstat::tree_cpu_time(p.pid()).as_secs_f64())
}

/// The daemon's config: the lab's service (3 stable + 2 canary backends), and
/// [`ONE_BACKEND_SERVICE`] on [`ONE_BACKEND_VIP`] with only `backend`, with the same settings.
fn write_config(d: &Deployment, backend: &Node) -> Result<()> {
    let mut config = deployment::config(&d.spec, &d.lab, d.token_path.as_deref())?;
    let mut one = config.services[0].clone();
    one.name = ONE_BACKEND_SERVICE.into();
    one.vip = SocketAddrV4::new(ONE_BACKEND_VIP, SERVICE_PORT).to_string();
    one.backends.retain(|b| b.name == backend.name);
    if one.backends.len() != 1 {
        bail!("backend {} is not in the lab's service", backend.name);
    }
    config.services.push(one);
    write(&d.config_path, &deployment::toml_text(&config)?)
}

fn measure(
    d: &Deployment,
    path: &PathDef,
    script: &Path,
    round: usize,
    seconds: u32,
) -> Result<Sample> {
    let client = &d.lab.clients()[0].netns;
    if let Some(via) = &path.via {
        d.lab.route_vip_via(&[via.as_str()])?;
    }
    let url = format!("http://{}/predict", path.target);
    let before_cpu = match path.cpu {
        Cpu::None => 0,
        Cpu::Xdp(id) => labkit::prog_stats(id)?.run_time_ns,
        Cpu::Process(pid) => procstat::tree_cpu_time(pid).as_nanos() as u64,
    };
    let before_models = models_cpu(d);
    let before_daemon = daemon_cpu(d);
    let before_machine = procstat::machine_ticks();
    let wrk = labkit::run_wrk(&d.lab, client, script, &url, CONNECTIONS, seconds)?;
    let after_models = models_cpu(d);
    let after_daemon = daemon_cpu(d);
    let machine_busy_percent = procstat::busy_percent(before_machine, procstat::machine_ticks());
    let balancer_cpu_ns = match path.cpu {
        Cpu::None => None,
        Cpu::Xdp(id) => Some(labkit::prog_stats(id)?.run_time_ns - before_cpu),
        Cpu::Process(pid) => {
            Some((procstat::tree_cpu_time(pid).as_nanos() as u64).saturating_sub(before_cpu))
        }
    };
    Ok(Sample {
        round,
        wrk,
        balancer_cpu_ns,
        daemon_cpu_seconds: after_daemon - before_daemon,
        backends_cpu_seconds: after_models - before_models,
        machine_busy_percent,
    })
}

pub(super) fn run() -> Result<Section> {
    let machine = Machine::current();
    let venv = install::ensure_venv(&bench_dir())?;
    let _stats = BpfStats::enable()?;

    let mut spec = DeploymentSpec::new(LabSpec::unique_tag('e'));
    spec.lab.clients = 1;
    spec.lab.stable = 3;
    spec.lab.canary = 2;
    // `lb1` and `lb2`, the second and third balancer namespaces, hold the bouncers of paths (f)
    // and (f5); the daemon runs in `lb`.
    spec.lab.balancers = 3;
    spec.start = "paused".into();
    spec.flow_table_size = 1 << 20;
    let mut d = Deployment::up(spec).context("start the lab deployment")?;
    let backend = d.lab.stable()[0].clone();
    write_config(&d, &backend)?;
    d.start_daemon().context("start the canary daemon")?;
    let out = d.cli(&[
        "set-weight",
        &CANARY_PERCENT.to_string(),
        "--service",
        SERVICE,
    ])?;
    if !out.status.success() {
        bail!(
            "canary set-weight failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let lb = d.lab.load_balancer()?.clone();
    let mut others = d.lab.balancers().filter(|b| b.name != lb.name).cloned();
    let bouncer = others
        .next()
        .context("the lab has no second balancer namespace for the bouncer")?;
    let spreader = others
        .next()
        .context("the lab has no third balancer namespace for the spreading bouncer")?;
    let client = d.lab.clients()[0].netns.clone();
    labkit::tune_netns(&d.lab, &lb.netns)?;
    labkit::tune_netns(&d.lab, &bouncer.netns)?;
    labkit::tune_netns(&d.lab, &spreader.netns)?;
    labkit::tune_netns(&d.lab, &client)?;
    // (b1): the backend holds the second VIP on `lo` (it answers no ARP there, as for the lab's
    // VIP), and the client routes it through `lb`.
    let one_vip = format!("{ONE_BACKEND_VIP}/32");
    d.lab.exec_in(
        &backend.netns,
        &["ip", "addr", "replace", &one_vip, "dev", "lo"],
    )?;
    d.lab.exec_in(
        &client,
        &[
            "ip",
            "route",
            "replace",
            &one_vip,
            "via",
            &lb.address.to_string(),
            "dev",
            "eth0",
        ],
    )?;
    d.lab.attach_bouncer(&bouncer, &backend)?;
    let bouncer_prog = labkit::xdp_prog_id(&d.lab, &bouncer.netns, "eth0")?;
    let slots = spread_slots(&d)?;
    d.lab.attach_spreading_bouncer(&spreader, slots.iter())?;
    let spreader_prog = labkit::xdp_prog_id(&d.lab, &spreader.netns, "eth0")?;

    let dir = d.lab.state_dir().join("bench-e2e");
    std::fs::create_dir_all(&dir)?;
    let (mut nginx, mut haproxy, mut router) = start_peers(&d, &venv, &dir)?;
    let prog = labkit::xdp_prog_id(&d.lab, &lb.netns, "eth0")?;

    let paths = [
        PathDef {
            key: "a",
            name: "direct to one backend",
            target: SocketAddr::new(backend.address.into(), SERVICE_PORT),
            cpu: Cpu::None,
            via: None,
        },
        PathDef {
            key: "b",
            name: "canary XDP (DSR)",
            target: SocketAddr::new(d.lab.vip().into(), SERVICE_PORT),
            cpu: Cpu::Xdp(prog),
            via: Some(lb.name.clone()),
        },
        PathDef {
            key: "b1",
            name: "canary XDP, (f)'s one backend",
            target: SocketAddr::new(ONE_BACKEND_VIP.into(), SERVICE_PORT),
            cpu: Cpu::Xdp(prog),
            via: None,
        },
        PathDef {
            key: "c",
            name: "nginx stream",
            target: SocketAddr::new(lb.address.into(), 8081),
            cpu: Cpu::Process(nginx.pid()),
            via: None,
        },
        PathDef {
            key: "d",
            name: "HAProxy TCP",
            target: SocketAddr::new(lb.address.into(), 8082),
            cpu: Cpu::Process(haproxy.pid()),
            via: None,
        },
        PathDef {
            key: "e",
            name: "FastAPI + httpx router",
            target: SocketAddr::new(lb.address.into(), 8083),
            cpu: Cpu::Process(router.pid()),
            via: None,
        },
        PathDef {
            key: "f",
            name: "XDP bouncer (ceiling)",
            target: SocketAddr::new(d.lab.vip().into(), SERVICE_PORT),
            cpu: Cpu::Xdp(bouncer_prog),
            via: Some(bouncer.name.clone()),
        },
        PathDef {
            key: "f5",
            name: "XDP bouncer, (b)'s 5 backends",
            target: SocketAddr::new(d.lab.vip().into(), SERVICE_PORT),
            cpu: Cpu::Xdp(spreader_prog),
            via: Some(spreader.name.clone()),
        },
    ];
    for p in &paths {
        if let Some(via) = &p.via {
            d.lab.route_vip_via(&[via.as_str()])?;
        }
        labkit::wait_http(&d.lab, &client, p.target, Duration::from_secs(30)).with_context(
            || {
                format!(
                    "path ({}) {}; nginx log: {}; haproxy log: {}; router log: {}",
                    p.key,
                    p.name,
                    nginx.log_tail(5),
                    haproxy.log_tail(5),
                    router.log_tail(5)
                )
            },
        )?;
    }
    let scripts = [
        (Mode::KeepAlive, dir.join("keepalive.lua")),
        (Mode::Close, dir.join("close.lua")),
    ];
    for (mode, path) in &scripts {
        std::fs::write(path, labkit::wrk_script(*mode == Mode::Close))?;
    }
    // Warm-up (not recorded): connection pools, caches, the router's interpreter.
    for p in &paths {
        measure(&d, p, &scripts[0].1, 0, 1)?;
    }

    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); paths.len() * scripts.len()];
    for round in 0..ROUNDS {
        for (pi, p) in paths.iter().enumerate() {
            for (mi, (mode, script)) in scripts.iter().enumerate() {
                let s = measure(&d, p, script, round, SECONDS)?;
                println!(
                    "round {round} ({}) {:<24} {:<27} {:>8.0} req/s p50 {:>6.2} ms p99 {:>6.2} ms errors {}",
                    p.key,
                    p.name,
                    mode.name(),
                    s.wrk.requests_per_second(),
                    s.wrk.p50_ms,
                    s.wrk.p99_ms,
                    s.wrk.errors
                );
                samples[pi * scripts.len() + mi].push(s);
            }
        }
    }
    d.lab.route_vip_via(&[lb.name.as_str()])?;
    d.lab.detach_bouncer(&bouncer)?;
    d.lab.detach_bouncer(&spreader)?;
    nginx.terminate(Duration::from_secs(3));
    haproxy.terminate(Duration::from_secs(3));
    router.terminate(Duration::from_secs(5));

    let mut rows = Vec::new();
    for (pi, p) in paths.iter().enumerate() {
        for (mi, (mode, _)) in scripts.iter().enumerate() {
            let ss = &samples[pi * scripts.len() + mi];
            let m = |f: &dyn Fn(&Sample) -> f64| median(&ss.iter().map(f).collect::<Vec<_>>());
            let cpu = ss.iter().all(|s| s.balancer_cpu_ns.is_some()).then(|| {
                m(&|s| {
                    s.balancer_cpu_ns.unwrap_or(0) as f64 / 1e6 / s.wrk.requests.max(1) as f64
                        * 1000.0
                })
            });
            rows.push(Row {
                path: format!("({}) {}", p.key, p.name),
                mode: *mode,
                samples: ss.clone(),
                requests_per_second: m(&|s| s.wrk.requests_per_second()),
                p50_ms: m(&|s| s.wrk.p50_ms),
                p99_ms: m(&|s| s.wrk.p99_ms),
                balancer_cpu_ms_per_1000: cpu,
                daemon_cpu_ms_per_second: m(&|s| 1000.0 * s.daemon_cpu_seconds / s.wrk.seconds),
                generator_cpu_percent: m(&|s| 100.0 * s.wrk.generator_cpu_seconds / s.wrk.seconds),
                backends_cpu_percent: m(&|s| 100.0 * s.backends_cpu_seconds / s.wrk.seconds),
                machine_busy_percent: m(&|s| s.machine_busy_percent),
                errors: ss.iter().map(|s| s.wrk.errors).sum(),
            });
        }
    }
    Ok(section(&machine, &rows))
}

fn section(machine: &Machine, rows: &[Row]) -> Section {
    let find = |key: &str, mode: Mode| {
        rows.iter()
            .find(|r| r.path.starts_with(&format!("({key})")) && r.mode == mode)
            .expect("every path and mode measured")
    };
    let mut md = heading("e2e: request path, same lab and load", machine);
    let _ = write!(md,
        "Lab: 1 client, load balancer, 3 stable + 2 canary `canary-model` backends, each in its own network namespace on one bridge. \
         Load: `wrk -t1 -c{CONNECTIONS} -d{SECONDS}s`, POST /predict, from the client namespace; medians of {ROUNDS} interleaved rounds. \
         Ratios are against (a), (f) and (f5) in the same mode and run. (f) and (f5) run in the lab's second and \
         third balancer namespaces (`lb1`, `lb2`: same veth, bridge and tuning as `lb`); for (b), (f) and (f5) the \
         client routes the VIP through `lb`, `lb1` or `lb2` (switched before each run), so they differ only in the \
         program on the balancer. \
         (b1) is the same daemon and program as (b) for a second service, `{ONE_BACKEND_SERVICE}` on its own VIP, \
         whose one backend is the one (f) bounces to: the bouncer cannot spread, so (b1) against (f) compares the \
         programs on the same backend set, and (b) against (b1) shows what spreading over 5 backends costs on this \
         machine. (f5) is the bouncer spreading over (b)'s 5 backends with (b)'s weights (a multiplicative hash of \
         the TCP source port picks one of 20 slots: 6 per stable backend, 1 per canary; no maps, no state): (b) \
         against (f5) compares the programs on (b)'s own backend set.\n\n"
    );
    let mut table_rows = Vec::new();
    for r in rows {
        let a = find("a", r.mode);
        let f = find("f", r.mode);
        let f5 = find("f5", r.mode);
        table_rows.push(vec![
            r.path.clone(),
            r.mode.name().to_owned(),
            format!("{:.0}", r.requests_per_second),
            format!("{:.2}x", r.requests_per_second / a.requests_per_second),
            format!("{:.2}x", r.requests_per_second / f.requests_per_second),
            format!("{:.2}x", r.requests_per_second / f5.requests_per_second),
            format!("{:.2}", r.p50_ms),
            format!("{:.2}", r.p99_ms),
            format!("{:.2}x", r.p99_ms / a.p99_ms),
            r.balancer_cpu_ms_per_1000
                .map_or_else(|| "-".to_owned(), |c| format!("{c:.3}")),
            format!("{:.0} %", r.generator_cpu_percent),
            format!("{:.0} %", r.backends_cpu_percent),
            format!("{:.0} %", r.machine_busy_percent),
            r.errors.to_string(),
        ]);
    }
    md.push_str(&table(
        &[
            "path",
            "connections",
            "requests/s",
            "x (a)",
            "x (f)",
            "x (f5)",
            "p50 ms",
            "p99 ms",
            "p99 x (a)",
            "balancer CPU ms / 1000 req",
            "wrk CPU",
            "backends CPU",
            "machine busy",
            "errors",
        ],
        &table_rows,
    ));
    md.push_str(
        "\nBalancer CPU: for (b), (b1), (f) and (f5), the XDP program's run time from the kernel's BPF statistics \
         (`kernel.bpf_stats_enabled=1`, `run_time_ns` of the attached program): every client-to-VIP packet of the run \
         (handshake, request, ACKs, FIN); it leaves out the driver and the kernel's own receive and transmit work around the \
         program, which the load balancer pays with or without it. For (c)-(e), user plus system CPU time of the proxy's \
         processes (master and workers) from `/proc/<pid>/stat`: it includes their socket system calls, and leaves out \
         softirq network processing not charged to them. The proxies' packets also pass the XDP program (not a VIP: parse, \
         one lookup, XDP_PASS), which is not counted in their figure. wrk CPU and backends CPU are percent of one CPU \
         over the run; machine busy is percent of all CPUs (`/proc/stat`). wrk uses well under one CPU, so it is not \
         what limits a path by itself; but client, balancer and backends share this machine's CPUs, so when the machine \
         is near 100 % busy every path is bound by the shared CPUs, and work the kernel does for a path (for (b): the \
         extra hop through the load balancer's veth and the bridge, which `run_time_ns` does not include) shows up as \
         fewer requests/s for it.\n",
    );
    let daemon: Vec<f64> = rows
        .iter()
        .filter(|r| r.path.starts_with("(b)") || r.path.starts_with("(b1)"))
        .map(|r| r.daemon_cpu_ms_per_second)
        .collect();
    let (least, most) = (
        daemon.iter().copied().fold(f64::INFINITY, f64::min),
        daemon.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    );
    let used = if (most - least).abs() < 0.05 {
        format!("{most:.1}")
    } else {
        format!("{least:.1} to {most:.1}")
    };
    let _ = writeln!(
        md,
        "\nThe `canary` daemon (two services, 6 backends, `poll_interval` 1 s: health probes, metrics \
         scrapes, kernel counters, heartbeat) used {used} ms of CPU per second during the (b) and (b1) \
         runs (medians per row; `/proc/<pid>/stat`, 10 ms ticks).",
    );
    let mut checks = String::from("\nTargets:\n");
    for mode in [Mode::KeepAlive, Mode::Close] {
        let (direct, xdp_row) = (find("a", mode), find("b", mode));
        let ceiling = xdp_row.requests_per_second / find("f", mode).requests_per_second;
        let spread_ceiling = xdp_row.requests_per_second / find("f5", mode).requests_per_second;
        let (nginx, haproxy) = (find("c", mode), find("d", mode));
        let rps = xdp_row.requests_per_second / direct.requests_per_second;
        let p99 = xdp_row.p99_ms / direct.p99_ms;
        let better = match (
            nginx.balancer_cpu_ms_per_1000,
            haproxy.balancer_cpu_ms_per_1000,
        ) {
            (Some(n), Some(h)) => n.min(h),
            _ => f64::NAN,
        };
        let xdp = xdp_row.balancer_cpu_ms_per_1000.unwrap_or(f64::NAN);
        let same_backend =
            find("b1", mode).requests_per_second / find("f", mode).requests_per_second;
        let _ = writeln!(checks,
            "- {}: (b) requests/s {ceiling:.2}x the bouncer (f) (>= 0.95x: {}); on (b)'s 5 backends, (b) \
             {spread_ceiling:.2}x the spreading bouncer (f5) (>= 0.95x: {}); on (f)'s one backend, (b1) \
             {same_backend:.2}x (f) (>= 0.95x: {}); (b) requests/s {rps:.2}x (a) (>= 0.9x: {}); \
             (b) p99 {p99:.2}x (a) (within 10 %: {}); \
             (b) balancer CPU per request {:.4}x the better of nginx and HAProxy (<= 0.1x: {}).",
            mode.name(),
            verdict(ceiling >= 0.95),
            verdict(spread_ceiling >= 0.95),
            verdict(same_backend >= 0.95),
            verdict(rps >= 0.9),
            verdict(p99 <= 1.1),
            xdp / better,
            verdict(xdp / better <= 0.1),
        );
    }
    md.push_str(&checks);
    Section {
        name: "e2e",
        markdown: md,
        json: serde_json::json!({
            "machine": machine,
            "rounds": ROUNDS,
            "seconds": SECONDS,
            "connections": CONNECTIONS,
            "canary_percent": CANARY_PERCENT,
            "rows": rows,
        }),
    }
}
