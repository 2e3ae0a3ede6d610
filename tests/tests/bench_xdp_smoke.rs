//! The per-packet benchmark's measuring code runs and every case takes the path it claims
//! (a wrong path is an error). Tiny counts: this checks the harness, it measures nothing.
//! Needs root; run with `--test-threads=1`.

use canary_tests::bench_xdp::{run, BenchOptions};

#[test]
fn every_benchmark_case_takes_its_path() {
    let report = run(BenchOptions {
        runs: 2,
        repeat: 1_000,
        single_shot: 1_000,
        cpu: None,
    })
    .unwrap_or_else(|e| panic!("{}", canary_tests::bench_xdp::describe(&e)));
    assert_eq!(report.cases.len(), 8);
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
}
