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
//!
//! Before and after: with [`BenchOptions::baseline`] (another build of the program, such as the
//! previous commit's), the established, new-flow and insert cases also run on it, interleaved
//! in the same rounds, and [`Report::comparisons`] gives after / before.
//!
//! Two CPUs: `dual_insert_*` runs two single-shot insert loops at once, one thread pinned to
//! each of CPUs 0 and 1, into one table (each thread its own flows), once with the flow table's
//! shared LRU list (the object under test) and once with per-CPU LRU lists
//! ([`BenchOptions::lru_variant`], the same source built with `BPF_F_NO_COMMON_LRU`).
//!
//! The service runs with the dead-man switch on (a heartbeat timeout set, as the daemon always
//! configures it), so every new flow reads the clock as it does in production.

use std::path::{Path, PathBuf};

use canary_common::{Counter, CONFIG_FLAG_NO_FLOW_TABLE, PROTO_TCP};
use serde::Serialize;

use crate::packet::{arp_request, v4, Tuple, ETH_LEN};
use crate::scenario::{Scenario, ServiceSpec};
use crate::xdp::{
    error_chain, monotonic_ns, object_path, pin_to_cpu, Dataplane, LoadOptions, XdpError, XDP_PASS,
    XDP_TX,
};

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
#[derive(Clone, Debug, Serialize)]
pub struct BenchOptions {
    /// Rounds; each round runs every case once, interleaved.
    pub runs: u32,
    /// `repeat` of each repeated case.
    pub repeat: u32,
    /// Packets (one syscall each) of each single-shot case per round.
    pub single_shot: u32,
    /// CPU to pin the measuring thread to (`None`: do not pin).
    pub cpu: Option<usize>,
    /// Another build of the program to compare with (the "before" of a change).
    pub baseline: Option<PathBuf>,
    /// What `baseline` is (a git revision), for the report.
    pub baseline_name: Option<String>,
    /// The current source built with per-CPU LRU lists for the flow table (`percpu-lru`).
    pub lru_variant: Option<PathBuf>,
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
            baseline: None,
            baseline_name: None,
            lru_variant: None,
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

/// One case measured on the baseline and on the object under test in the same rounds.
#[derive(Clone, Debug, Serialize)]
pub struct Comparison {
    pub case: &'static str,
    pub before_ns: f64,
    pub after_ns: f64,
    /// `after_ns / before_ns`.
    pub ratio: f64,
    /// The median over rounds of after / before within each round: both objects measured
    /// seconds apart, so a change of the machine's load between rounds cancels out.
    pub paired_ratio: f64,
    /// The same with the floor of the method subtracted from both (the program's own cost).
    pub before_over_floor_ns: f64,
    pub after_over_floor_ns: f64,
    pub ratio_over_floor: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub options: BenchOptions,
    /// Whether pinning to `options.cpu` succeeded.
    pub pinned: bool,
    pub cases: Vec<CaseReport>,
    /// After / before, when a baseline was given.
    pub comparisons: Vec<Comparison>,
    /// `/proc/loadavg` (1-minute figure) before and after the run: other work on the machine.
    pub load_average: [f64; 2],
}

struct Case {
    name: &'static str,
    measures: &'static str,
    method: &'static str,
    floor: &'static str,
}

/// The cases run on the baseline (named `base_<case>`), and the comparisons reported.
const COMPARED: [&str; 3] = ["established", "new_flow_no_table", "single_new_flow_insert"];

const BASE_CASES: [Case; 3] = [
    Case {
        name: "base_established",
        measures: "the baseline object: established",
        method: "repeat",
        floor: "pass_floor",
    },
    Case {
        name: "base_new_flow_no_table",
        measures: "the baseline object: new_flow_no_table",
        method: "repeat",
        floor: "pass_floor",
    },
    Case {
        name: "base_single_new_flow_insert",
        measures: "the baseline object: single_new_flow_insert",
        method: "single-shot",
        floor: "single_pass_floor",
    },
];

const LRU_CASES: [Case; 3] = [
    Case {
        name: "single_new_flow_insert_percpu_lru",
        measures: "single_new_flow_insert with per-CPU LRU lists (BPF_F_NO_COMMON_LRU build of the same source)",
        method: "single-shot",
        floor: "single_pass_floor",
    },
    Case {
        name: "dual_insert_shared_lru",
        measures: "two threads at once, pinned to CPUs 0 and 1, each single_new_flow_insert of its own flows into one table with the shared LRU list; mean of the two threads",
        method: "single-shot",
        floor: "single_pass_floor",
    },
    Case {
        name: "dual_insert_percpu_lru",
        measures: "the same with per-CPU LRU lists",
        method: "single-shot",
        floor: "single_pass_floor",
    },
];

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
    // The dead-man switch on, as the daemon runs it (there the timeout is 30 s and the
    // heartbeat renewed every poll; here one heartbeat and a timeout longer than any run).
    let control = &mut scenario.service_mut(0).control;
    control.heartbeat_timeout_ns = 3_600_000_000_000;
    control.heartbeat_ns = monotonic_ns();
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

fn loaded(scenario: &Scenario, object: &Path) -> Result<Dataplane, BenchError> {
    let mut dataplane = Dataplane::load_object(object, LoadOptions::default())?;
    scenario.install(&mut dataplane)?;
    Ok(dataplane)
}

/// `flow_offset + i` for the i-th packet: a different 5-tuple per packet.
fn single_shot_from(
    dataplane: &Dataplane,
    case: &'static str,
    count: u32,
    frame: &mut [u8],
    flow_offset: u32,
) -> Result<f64, BenchError> {
    let mut total: u64 = 0;
    for i in 0..count {
        set_flow(frame, flow_offset + i);
        let (ns, action) = dataplane.time_program(PROGRAM, frame, 1)?;
        expect(case, action, XDP_TX)?;
        total += u64::from(ns);
    }
    Ok(total as f64 / f64::from(count.max(1)))
}

/// New flows (SYNs), one per syscall, from two threads at once pinned to CPUs 0 and 1, into
/// one fresh table; the mean of the two threads' ns per packet.
fn dual_insert(
    scenario: &Scenario,
    object: &Path,
    case: &'static str,
    count: u32,
) -> Result<f64, BenchError> {
    let dataplane = loaded(scenario, object)?;
    let syn = service_tuple().frame();
    let barrier = std::sync::Barrier::new(2);
    let means: Vec<Result<f64, BenchError>> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..2u32)
            .map(|cpu| {
                let (dataplane, barrier, mut frame) = (&dataplane, &barrier, syn.clone());
                scope.spawn(move || {
                    let _ = pin_to_cpu(cpu as usize);
                    barrier.wait();
                    single_shot_from(dataplane, case, count, &mut frame, cpu * count)
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    let mut sum = 0.0;
    for mean in means {
        sum += mean?;
    }
    expect_flow_events(case, &dataplane, [0, 0], 2 * u64::from(count), [0, 0])?;
    let flows = dataplane.flow_count()?;
    if flows != 2 * count as usize {
        return Err(BenchError::WrongCount {
            case,
            counter: "flow-table entries",
            packets: 2 * u64::from(count),
            got: flows as u64,
            expected: 2 * u64::from(count),
        });
    }
    Ok(sum / 2.0)
}

fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
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

/// The repeated and single-shot cases of one object on the benchmark service, in `CASES` order
/// from `established` on: `established`, `new_flow_no_table`, and (with `all`) `non_service`,
/// `not_ip`, `single_established`; then `single_new_flow_insert`. Pushes each sample onto
/// `push(case name, ns)`.
struct Frames {
    established: Vec<u8>,
    syn: Vec<u8>,
    non_service: Vec<u8>,
    not_ip: Vec<u8>,
}

fn measure_object(
    options: &BenchOptions,
    scenario: &Scenario,
    object: &Path,
    frames: &Frames,
    all: bool,
    push: &mut dyn FnMut(&'static str, f64),
) -> Result<(), BenchError> {
    let repeat = u64::from(options.repeat);
    let single = u64::from(options.single_shot);
    let mut no_table = scenario.config;
    no_table.flags |= CONFIG_FLAG_NO_FLOW_TABLE;
    let mut dataplane = loaded(scenario, object)?;

    // Opens the flow (its SYN takes the entry) so that every measured ACK is a hit.
    expect("established", dataplane.run(&frames.syn)?.action, XDP_TX)?;
    let before = flow_events(&dataplane)?;
    let (ns, action) = dataplane.time_program(PROGRAM, &frames.established, options.repeat)?;
    expect("established", action, XDP_TX)?;
    expect_flow_events("established", &dataplane, before, repeat, [repeat, 0])?;
    push("established", f64::from(ns));

    dataplane.set_config(&no_table)?;
    let before = flow_events(&dataplane)?;
    let (ns, action) = dataplane.time_program(PROGRAM, &frames.established, options.repeat)?;
    expect("new_flow_no_table", action, XDP_TX)?;
    expect_flow_events("new_flow_no_table", &dataplane, before, repeat, [0, 0])?;
    push("new_flow_no_table", f64::from(ns));
    dataplane.set_config(&scenario.config)?;

    if all {
        let (ns, action) = dataplane.time_program(PROGRAM, &frames.non_service, options.repeat)?;
        expect("non_service", action, XDP_PASS)?;
        push("non_service", f64::from(ns));

        let (ns, action) = dataplane.time_program(PROGRAM, &frames.not_ip, options.repeat)?;
        expect("not_ip", action, XDP_PASS)?;
        push("not_ip", f64::from(ns));

        let mut frame = frames.established.clone();
        push(
            "single_pass_floor",
            single_shot(
                &dataplane,
                PASS_PROGRAM,
                "single_pass_floor",
                XDP_PASS,
                options.single_shot,
                &mut frame,
                false,
            )?,
        );
        let before = flow_events(&dataplane)?;
        push(
            "single_established",
            single_shot(
                &dataplane,
                PROGRAM,
                "single_established",
                XDP_TX,
                options.single_shot,
                &mut frame,
                false,
            )?,
        );
        expect_flow_events(
            "single_established",
            &dataplane,
            before,
            single,
            [single, 0],
        )?;
    }
    drop(dataplane);
    // A fresh copy of the object: an empty flow table for this round's new flows.
    let fresh = loaded(scenario, object)?;
    let mut frame = frames.syn.clone();
    push(
        "single_new_flow_insert",
        single_shot_from(
            &fresh,
            "single_new_flow_insert",
            options.single_shot,
            &mut frame,
            0,
        )?,
    );
    // A SYN opens its flow without a lookup: no hit, no miss; every one took an entry.
    expect_flow_events("single_new_flow_insert", &fresh, [0, 0], single, [0, 0])?;
    Ok(())
}

/// Runs every case `options.runs` times, interleaved, and summarises.
pub fn run(options: BenchOptions) -> Result<Report, BenchError> {
    let pinned = options.cpu.is_some_and(|cpu| pin_to_cpu(cpu).is_ok());
    let load_before = load_average();
    let scenario = bench_scenario();
    let current = object_path();
    let frames = Frames {
        established: service_tuple().ack_frame(),
        syn: service_tuple().frame(),
        non_service: Tuple::tcp(v4(198, 18, 1, 10), 40_000, v4(198, 18, 9, 9), 80).frame(),
        not_ip: arp_request([198, 18, 0, 100]),
    };
    let floor_dataplane = loaded(&scenario, &current)?;

    let mut all_cases: Vec<&Case> = CASES.iter().collect();
    if options.baseline.is_some() {
        all_cases.extend(BASE_CASES.iter());
    }
    if options.lru_variant.is_some() {
        all_cases.extend(LRU_CASES.iter());
    }
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); all_cases.len()];
    let index_of = |name: &str| all_cases.iter().position(|c| c.name == name);
    for _ in 0..options.runs {
        let (ns, action) =
            floor_dataplane.time_program(PASS_PROGRAM, &frames.established, options.repeat)?;
        expect("pass_floor", action, XDP_PASS)?;
        samples[0].push(f64::from(ns));

        let mut push = |prefix: &str, name: &'static str, ns: f64| {
            let full = format!("{prefix}{name}");
            if let Some(i) = index_of(&full) {
                samples[i].push(ns);
            }
        };
        measure_object(
            &options,
            &scenario,
            &current,
            &frames,
            true,
            &mut |n, ns| {
                push("", n, ns);
            },
        )?;
        if let Some(baseline) = &options.baseline {
            measure_object(
                &options,
                &scenario,
                baseline,
                &frames,
                false,
                &mut |n, ns| {
                    push("base_", n, ns);
                },
            )?;
        }
        if let Some(variant) = &options.lru_variant {
            let fresh = loaded(&scenario, variant)?;
            let mut frame = frames.syn.clone();
            let ns = single_shot_from(
                &fresh,
                "single_new_flow_insert_percpu_lru",
                options.single_shot,
                &mut frame,
                0,
            )?;
            push("", "single_new_flow_insert_percpu_lru", ns);
            drop(fresh);
            let half = options.single_shot / 2;
            let ns = dual_insert(&scenario, &current, "dual_insert_shared_lru", half)?;
            push("", "dual_insert_shared_lru", ns);
            let ns = dual_insert(&scenario, variant, "dual_insert_percpu_lru", half)?;
            push("", "dual_insert_percpu_lru", ns);
            // The threads were pinned; this one stays where it was.
        }
    }

    let medians: Vec<f64> = samples.iter().map(|s| median(s)).collect();
    let median_of = |name: &str| index_of(name).map_or(f64::NAN, |i| medians[i]);
    let cases: Vec<CaseReport> = all_cases
        .iter()
        .zip(&samples)
        .zip(&medians)
        .map(|((case, samples), &median_ns)| CaseReport {
            name: case.name,
            measures: case.measures,
            method: case.method,
            median_ns,
            min_ns: samples.iter().copied().fold(f64::INFINITY, f64::min),
            max_ns: samples.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            ratio_to_floor: median_ns / median_of(case.floor),
            samples_ns: samples.clone(),
        })
        .collect();
    let comparisons = if options.baseline.is_some() {
        COMPARED
            .iter()
            .map(|&case| {
                let floor = all_cases
                    .iter()
                    .find(|c| c.name == case)
                    .map_or(f64::NAN, |c| median_of(c.floor));
                let before_ns = median_of(&format!("base_{case}"));
                let after_ns = median_of(case);
                let samples_of = |name: &str| index_of(name).map_or(&[][..], |i| &samples[i][..]);
                let per_round: Vec<f64> = samples_of(case)
                    .iter()
                    .zip(samples_of(&format!("base_{case}")))
                    .map(|(after, before)| after / before)
                    .collect();
                Comparison {
                    case,
                    before_ns,
                    after_ns,
                    ratio: after_ns / before_ns,
                    paired_ratio: median(&per_round),
                    before_over_floor_ns: before_ns - floor,
                    after_over_floor_ns: after_ns - floor,
                    ratio_over_floor: (after_ns - floor) / (before_ns - floor),
                }
            })
            .collect()
    } else {
        Vec::new()
    };
    Ok(Report {
        options,
        pinned,
        cases,
        comparisons,
        load_average: [load_before, load_average()],
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
        if !self.comparisons.is_empty() {
            let _ = writeln!(
                out,
                "\nBefore (baseline {}) and after (this build), same rounds; \"over floor\" subtracts the floor of the method; \
                 \"per round\" is the median of each round's after / before",
                self.options.baseline_name.as_deref().unwrap_or("object")
            );
            let _ = writeln!(
                out,
                "{:<24} {:>10} {:>10} {:>8} {:>12} {:>12} {:>8} {:>10}",
                "case",
                "before ns",
                "after ns",
                "after/",
                "before-floor",
                "after-floor",
                "after/",
                "per round"
            );
            for c in &self.comparisons {
                let _ = writeln!(
                    out,
                    "{:<24} {:>10.1} {:>10.1} {:>7.2}x {:>12.1} {:>12.1} {:>7.2}x {:>9.2}x",
                    c.case,
                    c.before_ns,
                    c.after_ns,
                    c.ratio,
                    c.before_over_floor_ns,
                    c.after_over_floor_ns,
                    c.ratio_over_floor,
                    c.paired_ratio
                );
            }
        }
        let _ = writeln!(
            out,
            "\nLoad average (1 min) of the machine: {:.2} before, {:.2} after the run (other work shares the CPUs).",
            self.load_average[0], self.load_average[1]
        );
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

/// Runs, prints the table, writes the JSON: the `bench_xdp` example.
pub fn run_and_report(options: BenchOptions) -> Result<Report, BenchError> {
    let report = run(options)?;
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
