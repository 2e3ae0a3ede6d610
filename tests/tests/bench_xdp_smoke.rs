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
        assert!(
            c.paired_ratio.is_finite() && c.paired_ratio > 0.0,
            "{}: {}",
            c.case,
            c.paired_ratio
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

/// The benchmark's baseline is an older build of the program, driven in its own layout
/// (`canary_tests::xdp::ObjectLayout`). Needs such an object: `cargo xtask bench xdp
/// --baseline 73c130c` builds one into `target/bench/baseline/<commit>/`; point
/// `CANARY_BASELINE_OBJECT` at it and run with `--ignored`.
#[test]
#[ignore = "needs an older object in CANARY_BASELINE_OBJECT (built by `cargo xtask bench xdp --baseline 73c130c`)"]
fn an_older_object_is_driven_in_its_own_layout() {
    use canary_common::{Counter, FlowEntry, CONFIG_FLAG_NO_FLOW_TABLE, PROTO_TCP};
    use canary_tests::packet::{v4, Tuple};
    use canary_tests::scenario::{backend_mac, Scenario, ServiceSpec};
    use canary_tests::xdp::{Dataplane, LoadOptions, ObjectLayout, XdpError, XDP_TX};

    let path = std::env::var_os("CANARY_BASELINE_OBJECT")
        .expect("CANARY_BASELINE_OBJECT names the older object");
    let mut dataplane = Dataplane::load_object(std::path::Path::new(&path), LoadOptions::default())
        .unwrap_or_else(|e| panic!("{}", canary_tests::xdp::error_chain(&e)));
    assert_eq!(dataplane.layout(), ObjectLayout::BeforeTunnels);

    let mut scenario = Scenario::new();
    scenario.add_service(
        ServiceSpec::new(v4(198, 18, 0, 100), 80, PROTO_TCP, 0)
            .groups(&[1, 2, 3, 4], &[5])
            .weight(1_000),
    );
    scenario.install_or_panic(&mut dataplane);
    let tuple = Tuple::tcp(v4(198, 18, 1, 10), 40_000, v4(198, 18, 0, 100), 80);
    let key = tuple.flow_key();

    // The SYN takes an entry, read back in the object's 16-byte layout (no `seen_ns`).
    assert_eq!(dataplane.run_or_panic(&tuple.frame()).action, XDP_TX);
    let entry = dataplane.flow(&key).unwrap().expect("the SYN's entry");
    assert!((1..=5).contains(&entry.backend), "{entry:?}");
    assert!(entry.created_ns > 0 && entry.seen_ns == 0, "{entry:?}");
    assert_eq!(dataplane.flow_count().unwrap(), 1);

    // An entry written in the object's layout steers the flow: the ACK is a hit (counted at the
    // object's own index of FlowHit) and goes to the written backend.
    let other = if entry.backend == 2 { 3 } else { 2 };
    dataplane
        .set_flow(
            &key,
            &FlowEntry {
                backend: other,
                group: 0,
                created_ns: entry.created_ns,
                seen_ns: 0,
            },
        )
        .unwrap();
    let run = dataplane.run_or_panic(&tuple.ack_frame());
    assert_eq!(run.action, XDP_TX);
    assert_eq!(run.output[..6], backend_mac(other));
    let counters = dataplane.counters().unwrap();
    assert_eq!(counters[Counter::Tx as usize], 2, "{counters:?}");
    assert_eq!(counters[Counter::FlowHit as usize], 1, "{counters:?}");
    assert_eq!(counters[Counter::FlowMiss as usize], 0, "{counters:?}");
    assert_eq!(
        counters[Counter::UdpFlowIdle as usize],
        0,
        "not in this object"
    );

    // The settings written in the object's 24-byte layout take effect: no flow table, so the
    // ACK is a new flow without a lookup.
    let new_flows: u64 = dataplane.service_stats(0).unwrap().new_flows.iter().sum();
    assert_eq!(new_flows, 1, "the SYN");
    let mut config = scenario.config;
    config.flags |= CONFIG_FLAG_NO_FLOW_TABLE;
    dataplane.set_config(&config).unwrap();
    assert_eq!(dataplane.run_or_panic(&tuple.ack_frame()).action, XDP_TX);
    let counters = dataplane.counters().unwrap();
    assert_eq!(counters[Counter::FlowHit as usize], 1, "{counters:?}");
    let new_flows: u64 = dataplane.service_stats(0).unwrap().new_flows.iter().sum();
    assert_eq!(new_flows, 2, "the SYN and the ACK without a table");

    dataplane.clear_flows().unwrap();
    assert_eq!(dataplane.flow_count().unwrap(), 0);
    // The object has no decapsulation program: asking for it names it.
    let err = dataplane
        .run_program_into(
            canary_common::maps::DECAP_PROGRAM,
            &tuple.frame(),
            &mut Vec::new(),
        )
        .unwrap_err();
    assert!(matches!(err, XdpError::MissingProgram(_)), "{err}");
}
