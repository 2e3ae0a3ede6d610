//! The per-packet benchmark's measuring code runs and every case takes the path it claims
//! (a wrong path is an error). Tiny counts: this checks the harness, it measures nothing.
//! Needs root; run with `--test-threads=1`.

use canary_tests::bench_xdp::{run, BenchOptions};
use canary_tests::xdp::object_path;

#[test]
fn every_benchmark_case_takes_its_path() {
    let report = run(BenchOptions {
        runs: 2,
        repeat: 1_000,
        single_shot: 1_000,
        cpu: None,
        // The object under test stands in for the baseline and the LRU variant: this checks
        // that the before/after and two-CPU cases run and take their paths.
        baseline: Some(object_path()),
        baseline_name: Some("itself".to_owned()),
        lru_variant: Some(object_path()),
    })
    .unwrap_or_else(|e| panic!("{}", canary_tests::bench_xdp::describe(&e)));
    assert_eq!(report.cases.len(), 14);
    assert_eq!(report.comparisons.len(), 3);
    for c in &report.comparisons {
        assert!(
            c.ratio.is_finite() && c.ratio > 0.0,
            "{}: {}",
            c.case,
            c.ratio
        );
    }
    for case in &report.cases {
        assert_eq!(case.samples_ns.len(), 2, "{}", case.name);
        assert!(
            case.min_ns <= case.median_ns && case.median_ns <= case.max_ns,
            "{}",
            case.name
        );
        assert!(
            case.median_ns > 0.0,
            "{}: a program run takes time",
            case.name
        );
    }
    let table = report.table();
    assert!(table.contains("established") && table.contains("single_new_flow_insert"));
    assert!(table.contains("dual_insert_percpu_lru") && table.contains("Before (baseline itself)"));
}
