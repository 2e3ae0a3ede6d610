//! `bench xdp`: the per-packet benchmark of the data plane (`canary_tests::bench_xdp`).

use anyhow::{anyhow, Result};
use std::fmt::Write as _;

use super::report::{heading, Machine, Section};
use super::stats::verdict;
use super::Options;
use canary_tests::bench_xdp::{self, BenchOptions};

/// After / before targets of the compared cases (`bench xdp --baseline REV`).
const TARGETS: [(&str, f64, &str); 3] = [
    ("new_flow_no_table", 0.7, "new flow without table insert"),
    ("established", 1.0, "established flow (not slower)"),
    ("single_new_flow_insert", 0.8, "SYN with insert"),
];

pub(super) fn run(options: &Options) -> Result<Section> {
    let machine = Machine::current();
    let defaults = BenchOptions::default();
    let report = bench_xdp::run(BenchOptions {
        runs: options.rounds.unwrap_or(defaults.runs),
        baseline: options.baseline_object.clone(),
        baseline_name: options.baseline.clone(),
        lru_variant: options.lru_variant_object.clone(),
        ..defaults
    })
    .map_err(|e| anyhow!("{}", bench_xdp::describe(&e)))?;
    let mut md = heading("xdp: per-packet cost (BPF_PROG_TEST_RUN)", &machine);
    let mut command = "cargo xtask bench xdp".to_owned();
    if let Some(rev) = &options.baseline {
        let _ = write!(command, " --baseline {rev}");
    }
    if let Some(rounds) = options.rounds {
        let _ = write!(command, " --rounds {rounds}");
    }
    let _ = writeln!(md, "Command: `{command}`.\n");
    md.push_str("```text\n");
    md.push_str(&report.table());
    md.push_str("```\n\n");
    let case = |name: &str| report.cases.iter().find(|c| c.name == name);
    let ratio = |name: &str| case(name).map_or(f64::NAN, |c| c.ratio_to_floor);
    let median = |name: &str| case(name).map_or(f64::NAN, |c| c.median_ns);
    if report.comparisons.is_empty() {
        md.push_str("No baseline given (`--baseline REV`): no before/after targets checked.\n");
    } else {
        md.push_str("Targets (after / before, whole kernel-measured time per packet):\n");
        for (name, target, label) in TARGETS {
            if let Some(c) = report.comparisons.iter().find(|c| c.case == name) {
                let _ = writeln!(
                    md,
                    "- {label}: {:.2}x (over the floor {:.2}x; median of the per-round ratios {:.2}x); <= {target}x: {}.",
                    c.ratio,
                    c.ratio_over_floor,
                    c.paired_ratio,
                    verdict(c.ratio <= target),
                );
            }
        }
    }
    let (shared, percpu) = (
        median("dual_insert_shared_lru"),
        median("dual_insert_percpu_lru"),
    );
    if shared.is_finite() && percpu.is_finite() {
        let _ = writeln!(
            md,
            "- Two CPUs inserting at once: shared LRU {shared:.1} ns, per-CPU LRU {percpu:.1} ns per packet ({:.2}x); \
             one CPU: shared {:.1} ns, per-CPU {:.1} ns.",
            percpu / shared,
            median("single_new_flow_insert"),
            median("single_new_flow_insert_percpu_lru"),
        );
    }
    let _ = writeln!(
        md,
        "- Against the floor (earlier targets): established {:.2}x (within 2.0x: {}), new flow without table {:.2}x (within 3.0x: {}).",
        ratio("established"),
        verdict(ratio("established") <= 2.0),
        ratio("new_flow_no_table"),
        verdict(ratio("new_flow_no_table") <= 3.0),
    );
    print!("{}", report.table());
    Ok(Section {
        name: "xdp",
        markdown: md,
        json: serde_json::json!({ "machine": machine, "report": report }),
    })
}
