//! `bench xdp`: the per-packet benchmark of the data plane (`canary_tests::bench_xdp`).

use anyhow::{anyhow, Result};
use std::fmt::Write as _;

use super::report::{heading, Machine, Section};
use super::stats::verdict;
use canary_tests::bench_xdp::{self, BenchOptions};

pub(super) fn run() -> Result<Section> {
    let machine = Machine::current();
    let report = bench_xdp::run(BenchOptions::default())
        .map_err(|e| anyhow!("{}", bench_xdp::describe(&e)))?;
    let mut md = heading("xdp: per-packet cost (BPF_PROG_TEST_RUN)", &machine);
    md.push_str("```text\n");
    md.push_str(&report.table());
    md.push_str("```\n\n");
    let ratio = |name: &str| {
        report
            .cases
            .iter()
            .find(|c| c.name == name)
            .map_or(f64::NAN, |c| c.ratio_to_floor)
    };
    let established = ratio("established");
    let new_flow = ratio("new_flow_no_table");
    let insert = ratio("single_new_flow_insert");
    let _ = writeln!(md,
        "Targets: established flow within 2.0x the floor: {established:.2}x, {}; new-flow path within 3.0x: \
         {new_flow:.2}x (repeat, no table), {}; {insert:.2}x (single-shot with insert, against the single-shot floor), {}.",
        verdict(established <= 2.0),
        verdict(new_flow <= 3.0),
        verdict(insert <= 3.0),
    );
    print!("{}", report.table());
    Ok(Section {
        name: "xdp",
        markdown: md,
        json: serde_json::json!({ "machine": machine, "report": report }),
    })
}
