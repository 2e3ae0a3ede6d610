//! Client-ip affinity: every connection of one client address lands in the same group at each
//! step of a promotion, and a client on the canary stays there as the weight rises.

mod e2e_support;

use std::collections::BTreeMap;

use canary_lab::deployment::DeploymentSpec;
use canary_lab::lab::LabSpec;
use e2e_support::{cli_ok, load_all_clients, new_conn_load, start, totals};

#[test]
fn every_connection_of_a_client_lands_in_one_group_through_a_promotion() {
    let mut spec = DeploymentSpec::new(LabSpec::unique_tag('c'));
    spec.lab.clients = 2;
    spec.lab.stable = 2;
    spec.lab.canary = 2;
    spec.lab.client_extra_addresses = 40;
    spec.affinity = "client-ip".into();
    spec.start = "paused".into();
    // Every new connection follows its client's group at the current weight, even one that
    // reuses the 5-tuple of a connection of the previous step (the load generator reuses ports
    // within seconds); the default `syn_replace_after` (5 s) would send such a SYN after the
    // previous connection's backend.
    spec.syn_replace_after = "0s".into();
    let d = start(spec);

    // Per client address: the version it got at each step.
    let mut history: BTreeMap<String, Vec<(f64, String)>> = BTreeMap::new();
    let mut mixed = Vec::new();
    let mut failures = Vec::new();
    for weight in [10.0_f64, 25.0, 50.0, 75.0, 100.0] {
        cli_ok(&d, &["set-weight", &weight.to_string()]);
        // One worker per address (a worker keeps its address): 41 x 15 connections per client.
        let reports = load_all_clients(&d, &new_conn_load(&d, &d.lab.clients()[0], 41 * 15, 41));
        let (requests, ok, failed, _, _) = totals(&reports);
        let mut canary_clients = 0;
        let mut per_source = Vec::new();
        for r in &reports {
            for (src, versions) in &r.by_source {
                per_source.push(versions.values().sum::<u64>());
                if versions.len() > 1 {
                    mixed.push(format!("{src} at {weight}%: {versions:?}"));
                }
                let v = versions
                    .iter()
                    .max_by_key(|(_, n)| **n)
                    .map(|(v, _)| v.clone())
                    .unwrap_or_default();
                canary_clients += usize::from(v == "v2");
                history.entry(src.clone()).or_default().push((weight, v));
            }
        }
        let n_sources = per_source.len();
        println!(
            "weight {weight}%: {requests} connections, {ok} ok, {failed} failed from {n_sources} \
             addresses ({}..{} each); {canary_clients} addresses on the canary ({:.1}%)",
            per_source.iter().min().unwrap_or(&0),
            per_source.iter().max().unwrap_or(&0),
            canary_clients as f64 / n_sources as f64 * 100.0
        );
        if failed > 0 {
            let samples: Vec<_> = reports
                .iter()
                .flat_map(|r| r.failure_samples.clone())
                .collect();
            failures.push(format!("{failed} at {weight}%: {samples:?}"));
        }
        assert_eq!(n_sources, 82, "every client address was used");
        assert!(per_source.iter().all(|n| *n >= 5), "{per_source:?}");
    }
    let mut left_canary = Vec::new();
    for (src, steps) in &history {
        if let Some(i) = steps.iter().position(|(_, v)| v == "v2") {
            if steps[i..].iter().any(|(_, v)| v != "v2") {
                left_canary.push(format!("{src}: {steps:?}"));
            }
        }
    }
    println!(
        "addresses with connections in both groups within a step: {}",
        mixed.len()
    );
    for m in &mixed {
        println!("  {m}");
    }
    println!(
        "addresses that left the canary as the weight rose: {}",
        left_canary.len()
    );
    assert!(
        mixed.is_empty(),
        "connections of one client split across groups"
    );
    assert!(left_canary.is_empty(), "{left_canary:?}");
    assert!(
        history
            .values()
            .all(|s| s.last().is_some_and(|(_, v)| v == "v2")),
        "every client on the canary at 100%"
    );
}
