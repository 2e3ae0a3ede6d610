//! `bench scale`: the flow table at 1M and 4M entries (kernel memory, ns per packet on a hit,
//! against a 64K table in the same run), and the daemon's memory and CPU per poll with 2, 16
//! and 64 backends.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use canary_common::maps::{PASS_PROGRAM, PROGRAM};
use canary_common::{Counter, FlowKey, PROTO_TCP};
use canary_lab::bins;
use canary_lab::lab::{Lab, LabSpec};
use canary_tests::packet::{v4, Tuple, ETH_LEN};
use canary_tests::scenario::{Scenario, ServiceSpec};
use canary_tests::xdp::{error_chain, pin_to_cpu, Dataplane, LoadOptions, XDP_TX};
use canary_userspace::api::Status;
use serde::Serialize;

use super::procstat;
use super::report::{heading, table, Machine, Section};
use super::stats::{summary, Summary};

const TABLE_SIZES: [u32; 3] = [1 << 16, 1 << 20, 1 << 22];
const ROUNDS: usize = 5;
const REPEAT: u32 = 1_000_000;
const SINGLE_SHOT: u32 = 100_000;
const BACKEND_COUNTS: [usize; 3] = [2, 16, 64];
const POLL_SECONDS: u64 = 20;

#[derive(Clone, Debug, Serialize)]
struct TableResult {
    size: u32,
    entries: usize,
    memlock_bytes: u64,
    fill_seconds: f64,
    /// Repeat mode: the same established flow every iteration (cache-hot).
    hit_repeat_ns: Summary,
    pass_repeat_ns: Summary,
    /// Single shot: a different flow of the full table per packet (cache-cold), one syscall each.
    hit_single_ns: Summary,
    pass_single_ns: Summary,
}

fn scenario() -> Scenario {
    let mut s = Scenario::new();
    // The balancer's MAC unset: a repeated run re-reads its own output, whose destination is
    // then the backend's MAC, and must still be taken as addressed to us.
    s.config.lb_mac = [0; 6];
    s.add_service(
        ServiceSpec::new(v4(198, 18, 0, 100), 80, PROTO_TCP, 0)
            .groups(&[1, 2, 3, 4], &[5])
            .weight(1_000),
    );
    s
}

/// Client 198.18.0.0/15 address and source port of flow `i` (distinct for i < 2^17 * 64511).
fn set_flow(frame: &mut [u8], i: u32) {
    let host = i & 0x1_ffff;
    let addr = [
        198,
        0x12 | (host >> 16) as u8,
        (host >> 8) as u8,
        host as u8,
    ];
    frame[ETH_LEN + 12..ETH_LEN + 16].copy_from_slice(&addr);
    let port = 1024 + (i >> 17) as u16;
    frame[ETH_LEN + 20..ETH_LEN + 22].copy_from_slice(&port.to_be_bytes());
}

/// TCP flag bits of an established connection's segment (ACK): the program follows the flow
/// table for these, while a SYN always starts a new flow.
const TCP_ACK: u8 = 0x10;

/// Sets the TCP flags byte of an IPv4 frame.
fn set_tcp_flags(frame: &mut [u8], flags: u8) {
    let ihl = usize::from(frame[ETH_LEN] & 0x0f) * 4;
    frame[ETH_LEN + ihl + 13] = flags;
}

/// `memlock` of this process's BPF map with these dimensions, from `/proc/self/fdinfo`.
fn map_memlock(max_entries: u32, key_size: usize) -> Result<u64> {
    for entry in std::fs::read_dir("/proc/self/fd")?.flatten() {
        let fdinfo = Path::new("/proc/self/fdinfo").join(entry.file_name());
        let Ok(text) = std::fs::read_to_string(fdinfo) else {
            continue;
        };
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(str::trim)
                .map(str::to_owned)
        };
        if field("max_entries:").as_deref() == Some(&max_entries.to_string())
            && field("key_size:").as_deref() == Some(&key_size.to_string())
        {
            return field("memlock:")
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| anyhow!("no memlock in the flow map's fdinfo"));
        }
    }
    bail!("flow map with {max_entries} entries not found among this process's fds")
}

fn tx(dp: &Dataplane, frame: &[u8], repeat: u32) -> Result<u32> {
    let (ns, action) = dp
        .time_program(PROGRAM, frame, repeat)
        .map_err(|e| anyhow!("{}", error_chain(&e)))?;
    if action != XDP_TX {
        bail!("flow-table packet returned action {action}, expected XDP_TX");
    }
    Ok(ns)
}

fn pass(dp: &Dataplane, frame: &[u8], repeat: u32) -> Result<u32> {
    Ok(dp
        .time_program(PASS_PROGRAM, frame, repeat)
        .map_err(|e| anyhow!("{}", error_chain(&e)))?
        .0)
}

fn flow_table(size: u32) -> Result<TableResult> {
    let mut dp = Dataplane::load(LoadOptions {
        flow_table_size: Some(size),
    })
    .map_err(|e| anyhow!("{}", error_chain(&e)))?;
    scenario()
        .install(&mut dp)
        .map_err(|e| anyhow!("{}", error_chain(&e)))?;
    let memlock_bytes = map_memlock(size, std::mem::size_of::<FlowKey>())?;
    let mut frame = Tuple::tcp(v4(198, 18, 1, 10), 40_000, v4(198, 18, 0, 100), 80).frame();
    // Fill through the program itself: each packet is a new flow the program inserts.
    let started = Instant::now();
    for i in 0..size {
        set_flow(&mut frame, i);
        tx(&dp, &frame, 1)?;
    }
    let fill_seconds = started.elapsed().as_secs_f64();
    let entries = dp
        .flow_count()
        .map_err(|e| anyhow!("{}", error_chain(&e)))?;
    // A pseudo-random walk over the filled flows for the single-shot hits.
    let order: Vec<u32> = (0..SINGLE_SHOT)
        .map(|k| (u64::from(k) * 2_654_435_761 % u64::from(size)) as u32)
        .collect();
    // The fill sent each flow's first segment; the hits are segments of the established flows.
    set_tcp_flags(&mut frame, TCP_ACK);
    let (mut hit_r, mut pass_r, mut hit_s, mut pass_s) = (vec![], vec![], vec![], vec![]);
    let misses = |dp: &Dataplane| {
        dp.counters()
            .map(|c| c[Counter::FlowMiss as usize])
            .map_err(|e| anyhow!("{}", error_chain(&e)))
    };
    let misses_before = misses(&dp)?;
    for _ in 0..ROUNDS {
        set_flow(&mut frame, size / 2);
        pass_r.push(f64::from(pass(&dp, &frame, REPEAT)?));
        hit_r.push(f64::from(tx(&dp, &frame, REPEAT)?));
        let mut total = 0u64;
        for &i in &order {
            set_flow(&mut frame, i);
            total += u64::from(pass(&dp, &frame, 1)?);
        }
        pass_s.push(total as f64 / f64::from(SINGLE_SHOT));
        let mut total = 0u64;
        for &i in &order {
            set_flow(&mut frame, i);
            total += u64::from(tx(&dp, &frame, 1)?);
        }
        hit_s.push(total as f64 / f64::from(SINGLE_SHOT));
    }
    // The program counts every flow-table miss: the measured packets must all have hit.
    let hit_misses = misses(&dp)? - misses_before;
    if hit_misses > 0 {
        bail!("{hit_misses} flow-table misses while measuring hits in the {size}-entry table: the figures would not be hits");
    }
    Ok(TableResult {
        size,
        entries,
        memlock_bytes,
        fill_seconds,
        hit_repeat_ns: summary(&hit_r),
        pass_repeat_ns: summary(&pass_r),
        hit_single_ns: summary(&hit_s),
        pass_single_ns: summary(&pass_s),
    })
}

#[derive(Clone, Debug, Serialize)]
struct DaemonResult {
    backends: usize,
    rss_bytes: u64,
    cpu_ms_per_poll: f64,
    polls: u64,
}

/// Daemon config with `n` backends whose health and metrics URLs all point at one model
/// server on the load balancer's loopback (addresses are never contacted by the daemon).
fn daemon_config(n: usize, lab: &Lab, dir: &Path, metrics: &str) -> String {
    let mut t = String::new();
    let _ = writeln!(t, "[dataplane]\ninterface = \"eth0\"\nxdp_mode = \"auto\"");
    let _ = writeln!(t, "state_dir = \"{}\"", dir.join("state").display());
    let _ = writeln!(
        t,
        "bpffs = \"{}\"",
        lab.bpffs().join(format!("scale{n}")).display()
    );
    let _ = writeln!(t, "\n[admin]\nlisten = \"127.0.0.1:9100\"");
    let _ = writeln!(
        t,
        "\n[[services]]\nname = \"scale\"\nvip = \"{}:8080\"\nprotocol = \"tcp\"",
        lab.vip()
    );
    for i in 0..n {
        let group = if i < n / 2 { "stable" } else { "canary" };
        let _ = writeln!(t, "\n  [[services.backends]]");
        let _ = writeln!(t, "  name = \"b{i}\"\n  group = \"{group}\"");
        let _ = writeln!(t, "  address = \"198.19.200.{}\"", i + 1);
        let _ = writeln!(t, "  mac = \"02:00:00:00:c8:{:02x}\"", i + 1);
        let _ = writeln!(t, "  health_url = \"http://{metrics}/healthz?backend={i}\"");
        let _ = writeln!(
            t,
            "  metrics_url = \"http://{metrics}/metrics?backend={i}\""
        );
    }
    let _ = writeln!(t, "\n  [services.rollout]\n  steps = [10.0, 100.0]\n  interval = \"600s\"\n  poll_interval = \"1s\"");
    t
}

fn daemon_cost(lab: &Lab, canary: &Path, n: usize, metrics: &str) -> Result<DaemonResult> {
    let lb = lab.load_balancer()?.netns.clone();
    let dir = lab.state_dir().join(format!("bench-scale-{n}"));
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("canary.toml");
    std::fs::write(&config, daemon_config(n, lab, &dir, metrics))?;
    let c = |p: &Path| p.display().to_string();
    let mut daemon = lab.spawn_in_env(
        &lb,
        &[c(canary), "run".into(), "--config".into(), c(&config)],
        &[("RUST_LOG", "warn")],
    )?;
    let status = || -> Option<Status> {
        let out = lab
            .output_in(
                &lb,
                &[
                    c(canary),
                    "status".into(),
                    "--json".into(),
                    "--config".into(),
                    c(&config),
                ],
            )
            .ok()?;
        serde_json::from_slice(&out.stdout).ok()
    };
    let ready = Instant::now();
    loop {
        let up = status().is_some_and(|s| {
            s.services
                .first()
                .is_some_and(|svc| svc.backends.len() == n && svc.backends.iter().all(|b| b.up))
        });
        if up {
            break;
        }
        if ready.elapsed() > Duration::from_secs(30) || !daemon.is_running() {
            bail!(
                "daemon with {n} backends not ready: {}",
                daemon.log_tail(20)
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    // Settle, then count CPU over whole polls.
    std::thread::sleep(Duration::from_secs(2));
    let pid = daemon.pid();
    let cpu0 = procstat::cpu_time(pid).context("daemon CPU time")?;
    std::thread::sleep(Duration::from_secs(POLL_SECONDS));
    let cpu1 = procstat::cpu_time(pid).context("daemon CPU time")?;
    let rss_bytes = procstat::rss_bytes(pid).context("daemon RSS")?;
    daemon.terminate(Duration::from_secs(5));
    let _ = lab.output_in(
        &lb,
        &[c(canary), "detach".into(), "--config".into(), c(&config)],
    );
    let polls = POLL_SECONDS;
    Ok(DaemonResult {
        backends: n,
        rss_bytes,
        cpu_ms_per_poll: cpu1.saturating_sub(cpu0).as_secs_f64() * 1000.0 / polls as f64,
        polls,
    })
}

fn daemons() -> Result<Vec<DaemonResult>> {
    let canary = bins::locate("canary", "canary-userspace")?;
    let model = bins::locate("canary-model", "canary-model")?;
    let mut spec = LabSpec::new(LabSpec::unique_tag('c'));
    spec.clients = 1;
    spec.stable = 1;
    spec.canary = 1;
    let lab = Lab::up(&spec)?;
    let lb = lab.load_balancer()?.netns.clone();
    let metrics = "127.0.0.1:9300";
    let mut server = lab.spawn_in(
        &lb,
        &[
            model.display().to_string(),
            "--listen".into(),
            metrics.into(),
            "--name".into(),
            "fake".into(),
        ],
    )?;
    server.wait_for_log("listening on", Duration::from_secs(10))?;
    let mut out = Vec::new();
    for n in BACKEND_COUNTS {
        let r = daemon_cost(&lab, &canary, n, metrics)?;
        println!("daemon with {n} backends: {r:?}");
        out.push(r);
    }
    Ok(out)
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))
}

pub(super) fn run() -> Result<Section> {
    let machine = Machine::current();
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let pinned = pin_to_cpu(usize::from(cpus > 1)).is_ok();
    let mut tables = Vec::new();
    for size in TABLE_SIZES {
        let r = flow_table(size).with_context(|| format!("flow table of {size} entries"))?;
        println!("flow table {size}: {r:?}");
        tables.push(r);
    }
    let daemons = daemons().context("daemon cost")?;

    let base = &tables[0];
    let rows: Vec<Vec<String>> = tables
        .iter()
        .map(|t| {
            vec![
                t.size.to_string(),
                t.entries.to_string(),
                mib(t.memlock_bytes),
                format!("{:.0}", t.memlock_bytes as f64 / f64::from(t.size)),
                format!(
                    "{:.1} ({:.1} - {:.1})",
                    t.hit_repeat_ns.median, t.hit_repeat_ns.min, t.hit_repeat_ns.max
                ),
                format!("{:.2}x", t.hit_repeat_ns.median / t.pass_repeat_ns.median),
                format!(
                    "{:.1} ({:.1} - {:.1})",
                    t.hit_single_ns.median, t.hit_single_ns.min, t.hit_single_ns.max
                ),
                format!("{:.1}", t.hit_single_ns.median - t.pass_single_ns.median),
                format!(
                    "{:.2}x",
                    (t.hit_single_ns.median - t.pass_single_ns.median)
                        / (base.hit_single_ns.median - base.pass_single_ns.median)
                ),
            ]
        })
        .collect();
    let drows: Vec<Vec<String>> = daemons
        .iter()
        .map(|d| {
            vec![
                d.backends.to_string(),
                mib(d.rss_bytes),
                format!("{:.2}", d.cpu_ms_per_poll),
                format!("{:.3}", d.cpu_ms_per_poll / d.backends as f64),
            ]
        })
        .collect();
    let mut md = heading(
        "scale: flow table size and daemon cost per backend",
        &machine,
    );
    let _ = write!(md,
        "Flow table (LRU hash, `FLOWS`): loaded with the given size, filled by running the program on one new flow per entry, \
         then timed with `BPF_PROG_TEST_RUN` ({ROUNDS} rounds{}): *repeat* = the same established flow {REPEAT} times \
         (cache-hot), *single-shot* = {SINGLE_SHOT} different flows spread over the full table, one syscall each (cache-cold; \
         the single-shot `XDP_PASS` floor over the same frames is subtracted, as it holds the syscall and timer cost). \
         Memory is the kernel's `memlock` for the map (`/proc/<pid>/fdinfo`, the map's own accounting: an LRU hash is \
         preallocated, so it does not depend on the fill). The 64K table is the baseline.\n\n",
        if pinned { ", pinned to one CPU" } else { "" }
    );
    md.push_str(&table(
        &[
            "table size",
            "entries after fill",
            "kernel memory",
            "bytes / entry",
            "hit ns, repeat (min - max)",
            "x pass floor",
            "hit ns, single-shot",
            "hit ns over floor",
            "x 64K table",
        ],
        &rows,
    ));
    let _ = write!(md,
        "\nDaemon (`canary run`, release build): one service, half the backends stable and half canary, poll interval 1 s; \
         every backend's health and metrics URL points at one `canary-model` on the load balancer's loopback (fake \
         backends: the daemon probes and scrapes each one separately). CPU is user + system time of the daemon over \
         {POLL_SECONDS} s divided by the {POLL_SECONDS} polls in that time (it includes the health probes and the admin \
         API idle cost; the kernel counts CPU time in 10 ms ticks, so figures are +-0.5 ms per poll); RSS is read at the end.\n\n"
    );
    md.push_str(&table(
        &[
            "backends",
            "daemon RSS",
            "CPU ms / poll",
            "CPU ms / poll / backend",
        ],
        &drows,
    ));
    Ok(Section {
        name: "scale",
        markdown: md,
        json: serde_json::json!({
            "machine": machine,
            "pinned": pinned,
            "flow_tables": tables,
            "daemon": daemons,
        }),
    })
}
