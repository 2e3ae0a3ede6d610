//! Per-packet cost of the XDP program, measured with `BPF_PROG_TEST_RUN`.
//!
//! `BPF_PROG_TEST_RUN` with `repeat = N` re-runs the same buffer without resetting it, so each
//! case is chosen to stay honest under that:
//! - `pass_floor`: `canary_pass` (returns `XDP_PASS`), the cost of running any XDP program.
//! - `established`: an ACK of a flow already in the flow table. The program rewrites only MACs,
//!   so every re-run is the same flow again: each iteration is a flow-table hit. (A SYN would
//!   not do: a SYN without ACK always starts a new flow, with no lookup.)
//! - `new_flow_no_table`: `CONFIG_FLAG_NO_FLOW_TABLE` set, so every iteration takes the whole
//!   new-flow path (hash, bucket, group, lookup table, backend, rewrite, counters) with no flow
//!   lookup and no insert.
//! - `non_service`: IPv4/TCP to an address that is not a VIP (parse + one VIPS lookup, pass).
//!
//! The destination MAC check would pass a re-run frame (its destination is then the backend's
//! MAC), so the benchmark leaves the balancer's MAC unset (any unicast destination is ours).
//!
//! A new flow's insert cannot be repeated on one buffer (the table would grow by nothing), so
//! it is measured with one syscall per packet, each the SYN of a different connection (the
//! packet that starts a TCP flow), into an empty table: `single_new_flow_insert`.
//!
//! Each case's path is checked, not assumed: the action, and the flow-table counters it must
//! (and must not) move. The kernel's single-shot per-run time includes
//! its timer reads, so the same single-shot method is applied to the floor and to an
//! established flow (`single_pass_floor`, `single_established`) and those are compared with
//! each other only.

use std::path::{Path, PathBuf};

use canary_common::{Counter, CONFIG_FLAG_NO_FLOW_TABLE, PROTO_TCP};
use serde::Serialize;

use crate::packet::{arp_request, v4, Tuple, ETH_LEN};
use crate::scenario::{Scenario, ServiceSpec};
use crate::xdp::{error_chain, pin_to_cpu, Dataplane, LoadOptions, XdpError, XDP_PASS, XDP_TX};

use canary_common::maps::{PASS_PROGRAM, PROGRAM};

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Xdp(#[from] XdpError),
    /// A case did not take the path it is meant to measure.
    #[error("benchmark case {case} returned action {got}, expected {expected}: the program does not take the measured path")]
    WrongPath {
        case: &'static str,
        got: u32,
        expected: u32,
    },
    /// A case moved a flow-table counter other than the measured path would.
    #[error("benchmark case {case} counted {got} {counter} for {packets} packets, expected {expected}: the program does not take the measured path")]
    WrongCount {
        case: &'static str,
        counter: &'static str,
        packets: u64,
        got: u64,
        expected: u64,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// How much to measure.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct BenchOptions {
    /// Rounds; each round runs every case once, interleaved.
    pub runs: u32,
    /// `repeat` of each repeated case.
    pub repeat: u32,
    /// Packets (one syscall each) of each single-shot case per round.
    pub single_shot: u32,
    /// CPU to pin the measuring thread to (`None`: do not pin).
    pub cpu: Option<usize>,
}

impl Default for BenchOptions {
    fn default() -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        Self {
            runs: 5,
            repeat: 1_000_000,
            // One syscall per packet is slow (about 1 us each): 250,000 keeps a run near a
            // minute while the mean stays stable to well under 1 ns.
            single_shot: 250_000,
            // CPU 1 leaves CPU 0 to the rest of the machine when there are two or more.
            cpu: Some(usize::from(cpus > 1)),
        }
    }
}

/// Figures of one case over all rounds.
#[derive(Clone, Debug, Serialize)]
pub struct CaseReport {
    pub name: &'static str,
    pub measures: &'static str,
    /// "repeat" (kernel mean over `repeat` iterations) or "single-shot" (one syscall per packet).
    pub method: &'static str,
    pub median_ns: f64,
    pub min_ns: f64,
    pub max_ns: f64,
    /// Median divided by the median of the floor of the same method.
    pub ratio_to_floor: f64,
    /// Per-round mean ns per packet.
    pub samples_ns: Vec<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub options: BenchOptions,
    /// Whether pinning to `options.cpu` succeeded.
    pub pinned: bool,
    pub cases: Vec<CaseReport>,
}

struct Case {
    name: &'static str,
    measures: &'static str,
    method: &'static str,
    floor: &'static str,
}

const CASES: [Case; 8] = [
    Case {
        name: "pass_floor",
        measures: "canary_pass (returns XDP_PASS): cost of running any XDP program",
        method: "repeat",
        floor: "pass_floor",
    },
    Case {
        name: "established",
        measures: "canary, IPv4/TCP ACK to a service, flow already in the flow table (hit), MAC rewrite, XDP_TX",
        method: "repeat",
        floor: "pass_floor",
    },
    Case {
        name: "new_flow_no_table",
        measures: "canary with CONFIG_FLAG_NO_FLOW_TABLE: full new-flow selection (hash, bucket, group, table, backend, stats), no flow lookup or insert, XDP_TX",
        method: "repeat",
        floor: "pass_floor",
    },
    Case {
        name: "non_service",
        measures: "canary, IPv4/TCP to an address that is not a VIP: parse, VIPS lookup, XDP_PASS",
        method: "repeat",
        floor: "pass_floor",
    },
    Case {
        name: "not_ip",
        measures: "canary, an ARP frame: program entry, Ethernet parse, one counter, XDP_PASS (the program's fixed cost)",
        method: "repeat",
        floor: "pass_floor",
    },
    Case {
        name: "single_pass_floor",
        measures: "canary_pass, one syscall per packet (includes the kernel's per-run timer reads)",
        method: "single-shot",
        floor: "single_pass_floor",
    },
    Case {
        name: "single_established",
        measures: "canary, flow-table hit, one syscall per packet",
        method: "single-shot",
        floor: "single_pass_floor",
    },
    Case {
        name: "single_new_flow_insert",
        measures: "canary, every packet the SYN of a different connection: new flow without lookup, selection, insert into an empty table, XDP_TX; one syscall per packet",
        method: "single-shot",
        floor: "single_pass_floor",
    },
];

fn bench_scenario() -> Scenario {
    let mut scenario = Scenario::new();
    // The balancer's MAC unset: a re-run of a forwarded frame (now addressed to the backend's
    // MAC) is then still taken as addressed to us, and each iteration takes the measured path.
    // The destination check runs either way (only its last branch differs).
    scenario.config.lb_mac = [0; 6];
    scenario.add_service(
        ServiceSpec::new(v4(198, 18, 0, 100), 80, PROTO_TCP, 0)
            .groups(&[1, 2, 3, 4], &[5])
            .weight(1_000),
    );
    scenario
}

fn service_tuple() -> Tuple {
    Tuple::tcp(v4(198, 18, 1, 10), 40_000, v4(198, 18, 0, 100), 80)
}

/// A frame of the benchmark service whose client address and port are derived from `i`.
fn set_flow(frame: &mut [u8], i: u32) {
    let b = i.to_be_bytes();
    // Client 198.18.x.y (x, y from i), source port from i: a different 5-tuple per i.
    frame[ETH_LEN + 12..ETH_LEN + 16].copy_from_slice(&[198, 0x12 | (b[1] & 1), b[2], b[3]]);
    let port = 1024 + (b[1] >> 1) as u16 * 256 + u16::from(b[0]);
    frame[ETH_LEN + 20..ETH_LEN + 22].copy_from_slice(&port.to_be_bytes());
}

fn expect(case: &'static str, got: u32, expected: u32) -> Result<(), BenchError> {
    if got == expected {
        Ok(())
    } else {
        Err(BenchError::WrongPath {
            case,
            got,
            expected,
        })
    }
}

/// (`FlowHit`, `FlowMiss`) so far.
fn flow_events(dataplane: &Dataplane) -> Result<[u64; 2], BenchError> {
    let counters = dataplane.counters()?;
    Ok([
        counters[Counter::FlowHit as usize],
        counters[Counter::FlowMiss as usize],
    ])
}

/// Checks that `packets` runs since `before` counted exactly `hits` hits and `misses` misses.
fn expect_flow_events(
    case: &'static str,
    dataplane: &Dataplane,
    before: [u64; 2],
    packets: u64,
    [hits, misses]: [u64; 2],
) -> Result<(), BenchError> {
    let after = flow_events(dataplane)?;
    for (counter, got, expected) in [
        (Counter::FlowHit, after[0] - before[0], hits),
        (Counter::FlowMiss, after[1] - before[1], misses),
    ] {
        if got != expected {
            return Err(BenchError::WrongCount {
                case,
                counter: counter.name(),
                packets,
                got,
                expected,
            });
        }
    }
    Ok(())
}

fn loaded(scenario: &Scenario) -> Result<Dataplane, BenchError> {
    let mut dataplane = Dataplane::load(LoadOptions::default())?;
    scenario.install(&mut dataplane)?;
    Ok(dataplane)
}

/// Mean kernel ns per packet over `count` single-syscall runs of `frame` (a different flow
/// per run when `vary`).
fn single_shot(
    dataplane: &Dataplane,
    program: &'static str,
    case: &'static str,
    expected: u32,
    count: u32,
    frame: &mut [u8],
    vary: bool,
) -> Result<f64, BenchError> {
    let mut total: u64 = 0;
    for i in 0..count {
        if vary {
            set_flow(frame, i);
        }
        let (ns, action) = dataplane.time_program(program, frame, 1)?;
        expect(case, action, expected)?;
        total += u64::from(ns);
    }
    Ok(total as f64 / f64::from(count.max(1)))
}

/// Runs every case `options.runs` times, interleaved, and summarises.
pub fn run(options: BenchOptions) -> Result<Report, BenchError> {
    let pinned = options.cpu.is_some_and(|cpu| pin_to_cpu(cpu).is_ok());
    let scenario = bench_scenario();
    let mut dataplane = loaded(&scenario)?;
    let established = service_tuple().ack_frame();
    let syn = service_tuple().frame();
    let repeat = u64::from(options.repeat);
    let single = u64::from(options.single_shot);
    let non_service = Tuple::tcp(v4(198, 18, 1, 10), 40_000, v4(198, 18, 9, 9), 80).frame();
    let not_ip = arp_request([198, 18, 0, 100]);
    let mut no_table = scenario.config;
    no_table.flags |= CONFIG_FLAG_NO_FLOW_TABLE;

    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); CASES.len()];
    for _ in 0..options.runs {
        // Repeated cases.
        let (ns, action) = dataplane.time_program(PASS_PROGRAM, &established, options.repeat)?;
        expect("pass_floor", action, XDP_PASS)?;
        samples[0].push(f64::from(ns));

        dataplane.set_config(&scenario.config)?;
        // Opens the flow (its SYN takes the entry) so that every measured ACK is a hit.
        expect("established", dataplane.run(&syn)?.action, XDP_TX)?;
        let before = flow_events(&dataplane)?;
        let (ns, action) = dataplane.time_program(PROGRAM, &established, options.repeat)?;
        expect("established", action, XDP_TX)?;
        expect_flow_events("established", &dataplane, before, repeat, [repeat, 0])?;
        samples[1].push(f64::from(ns));

        dataplane.set_config(&no_table)?;
        let before = flow_events(&dataplane)?;
        let (ns, action) = dataplane.time_program(PROGRAM, &established, options.repeat)?;
        expect("new_flow_no_table", action, XDP_TX)?;
        expect_flow_events("new_flow_no_table", &dataplane, before, repeat, [0, 0])?;
        samples[2].push(f64::from(ns));
        dataplane.set_config(&scenario.config)?;

        let (ns, action) = dataplane.time_program(PROGRAM, &non_service, options.repeat)?;
        expect("non_service", action, XDP_PASS)?;
        samples[3].push(f64::from(ns));

        let (ns, action) = dataplane.time_program(PROGRAM, &not_ip, options.repeat)?;
        expect("not_ip", action, XDP_PASS)?;
        samples[4].push(f64::from(ns));

        // Single-shot cases.
        let mut frame = established.clone();
        samples[5].push(single_shot(
            &dataplane,
            PASS_PROGRAM,
            "single_pass_floor",
            XDP_PASS,
            options.single_shot,
            &mut frame,
            false,
        )?);
        let before = flow_events(&dataplane)?;
        samples[6].push(single_shot(
            &dataplane,
            PROGRAM,
            "single_established",
            XDP_TX,
            options.single_shot,
            &mut frame,
            false,
        )?);
        expect_flow_events(
            "single_established",
            &dataplane,
            before,
            single,
            [single, 0],
        )?;
        // A fresh copy of the object: an empty flow table for this round's new flows.
        let fresh = loaded(&scenario)?;
        let mut frame = syn.clone();
        samples[7].push(single_shot(
            &fresh,
            PROGRAM,
            "single_new_flow_insert",
            XDP_TX,
            options.single_shot,
            &mut frame,
            true,
        )?);
        // A SYN opens its flow without a lookup: no hit, no miss; every one took an entry.
        expect_flow_events("single_new_flow_insert", &fresh, [0, 0], single, [0, 0])?;
        drop(fresh);
    }

    let medians: Vec<f64> = samples.iter().map(|s| median(s)).collect();
    let cases = CASES
        .iter()
        .zip(&samples)
        .zip(&medians)
        .map(|((case, samples), &median_ns)| {
            let floor = CASES
                .iter()
                .position(|c| c.name == case.floor)
                .map_or(f64::NAN, |i| medians[i]);
            CaseReport {
                name: case.name,
                measures: case.measures,
                method: case.method,
                median_ns,
                min_ns: samples.iter().copied().fold(f64::INFINITY, f64::min),
                max_ns: samples.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                ratio_to_floor: median_ns / floor,
                samples_ns: samples.clone(),
            }
        })
        .collect();
    Ok(Report {
        options,
        pinned,
        cases,
    })
}

fn median(samples: &[f64]) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => f64::midpoint(sorted[n / 2 - 1], sorted[n / 2]),
    }
}

impl Report {
    /// A plain-text table of the figures and what each measures.
    pub fn table(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "XDP per-packet cost, BPF_PROG_TEST_RUN, {} rounds, repeat {}, single-shot {} packets, {}",
            self.options.runs,
            self.options.repeat,
            self.options.single_shot,
            match (self.pinned, self.options.cpu) {
                (true, Some(cpu)) => format!("pinned to CPU {cpu}"),
                _ => "not pinned".to_owned(),
            }
        );
        let _ = writeln!(
            out,
            "{:<24} {:>11} {:>10} {:>10} {:>10} {:>9}",
            "case", "method", "median ns", "min ns", "max ns", "x floor"
        );
        for c in &self.cases {
            let _ = writeln!(
                out,
                "{:<24} {:>11} {:>10.1} {:>10.1} {:>10.1} {:>9.2}",
                c.name, c.method, c.median_ns, c.min_ns, c.max_ns, c.ratio_to_floor
            );
        }
        out.push('\n');
        for c in &self.cases {
            let _ = writeln!(out, "{:<24} {}", c.name, c.measures);
        }
        out
    }

    /// Writes the report as JSON, creating the directory.
    pub fn write_json(&self, path: &Path) -> Result<(), BenchError> {
        let write = || -> std::io::Result<()> {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let json = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
            std::fs::write(path, json + "\n")
        };
        write().map_err(|source| BenchError::Write {
            path: path.to_owned(),
            source,
        })
    }
}

/// `target/bench/xdp.json` of the workspace.
pub fn default_json_path() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .unwrap_or(manifest)
        .join("target/bench/xdp.json")
}

/// Runs with default options, prints the table, writes the JSON: the `bench xdp` command.
pub fn run_and_report() -> Result<Report, BenchError> {
    let report = run(BenchOptions::default())?;
    print!("{}", report.table());
    let path = default_json_path();
    report.write_json(&path)?;
    println!("wrote {}", path.display());
    Ok(report)
}

/// For callers that want a one-line message from an error.
pub fn describe(error: &BenchError) -> String {
    error_chain(error)
}
