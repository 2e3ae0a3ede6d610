//! Statistical properties of the split, measured through the real XDP program on 100,000
//! distinct synthetic flows per case. Needs root; run with `--test-threads=1`.

use std::collections::HashMap;
use std::time::Instant;

use canary_common::{Counter, Selection, GROUP_CANARY, PROTO_TCP, PROTO_UDP};
use canary_tests::packet::{v4, Addr, Tuple};
use canary_tests::scenario::{Scenario, ServiceSpec, CONFIGURED_LB_MAC};
use canary_tests::xdp::{action_name, pin_to_cpu, Dataplane, LoadOptions, XDP_TX};

const FLOWS: u32 = 100_000;
const FLOW_TABLE: u32 = 1 << 18;
const SVC: u32 = 0;

fn scenario(weight: u32) -> Scenario {
    let mut s = Scenario::new();
    s.add_service(
        ServiceSpec::new(v4(198, 18, 0, 100), 80, PROTO_TCP, SVC)
            .groups(&[1, 2, 3, 4, 5], &[6, 7])
            .weight(weight),
    );
    s
}

/// Flow `i` of the synthetic population: a distinct client address and port per flow.
fn flow(i: u32) -> Tuple {
    let hi = i / 250;
    let src = v4(198, 18 + (hi >> 8) as u8, hi as u8, (i % 250) as u8 + 1);
    Tuple::tcp(
        src,
        1024 + ((i * 7) % 60_000) as u16,
        v4(198, 18, 0, 100),
        80,
    )
}

fn population() -> Vec<(Tuple, Vec<u8>)> {
    (0..FLOWS)
        .map(|i| {
            let t = flow(i);
            (t, t.frame())
        })
        .collect()
}

struct Lab {
    dataplane: Dataplane,
    scenario: Scenario,
}

impl Lab {
    fn new(scenario: Scenario) -> Self {
        // One CPU: the LRU flow table's per-CPU free lists then never evict below capacity.
        let _ = pin_to_cpu(0);
        let mut dataplane = Dataplane::load_or_panic(LoadOptions {
            flow_table_size: Some(FLOW_TABLE),
        });
        scenario.install_or_panic(&mut dataplane);
        Self {
            dataplane,
            scenario,
        }
    }

    fn set_weight(&mut self, weight: u32) {
        self.scenario.service_mut(SVC).control.canary_weight = weight;
        self.scenario.update_control(&mut self.dataplane, SVC);
    }

    /// Runs every frame once; returns the backend each went to (from the output MAC).
    fn send(&self, frames: &[(Tuple, Vec<u8>)]) -> Vec<u32> {
        let mut out = Vec::with_capacity(2048);
        frames
            .iter()
            .map(|(t, frame)| {
                let action = self
                    .dataplane
                    .run_into(frame, &mut out)
                    .unwrap_or_else(|e| panic!("test run of {t:?}: {e}"));
                assert_eq!(action, XDP_TX, "{t:?} got {}", action_name(action));
                assert_eq!(out[12..], frame[12..], "{t:?}: only the MACs may change");
                assert_eq!(out[6..12], CONFIGURED_LB_MAC, "{t:?}: source MAC");
                u32::from_be_bytes([out[2], out[3], out[4], out[5]])
            })
            .collect()
    }

    fn group_of(&self, backend: u32) -> u32 {
        self.scenario.backends[&backend].group
    }
}

fn measure_share(weight: u32) {
    let started = Instant::now();
    let lab = Lab::new(scenario(weight));
    let frames = population();
    let backends = lab.send(&frames);
    let service = lab.scenario.service(SVC);
    let seed = lab.scenario.config.hash_seed;
    let mut canary = 0u32;
    let mut expected_canary = 0u32;
    for ((t, _), &backend) in frames.iter().zip(&backends) {
        let key = t.flow_key();
        let choice = lab
            .scenario
            .choose(service, &key, false)
            .expect("backends exist");
        assert_eq!(
            backend, choice.backend,
            "flow {t:?}: backend differs from the contract"
        );
        if lab.group_of(backend) == GROUP_CANARY {
            canary += 1;
        }
        if Selection::of(&key, false, seed).bucket < weight {
            expected_canary += 1;
        }
    }
    assert_eq!(
        canary, expected_canary,
        "weight {weight}: canary flows vs the pure selection"
    );
    let share = f64::from(canary) / f64::from(FLOWS) * 100.0;
    let target = f64::from(weight) / 100.0;
    assert!(
        (share - target).abs() <= 0.5,
        "weight {weight}: measured canary share {share:.3}% is more than 0.5 points from {target}%"
    );
    let stats = lab.dataplane.service_stats(SVC).unwrap();
    assert_eq!(
        stats.new_flows,
        [u64::from(FLOWS - canary), u64::from(canary)]
    );
    let c = lab.dataplane.counters().unwrap();
    assert_eq!(c[Counter::Tx as usize], u64::from(FLOWS));
    // SYNs open their flows without a lookup: no hit, no miss.
    assert_eq!(
        c[Counter::FlowMiss as usize] + c[Counter::FlowHit as usize],
        0
    );
    assert_eq!(c[Counter::FlowInsertFailed as usize], 0);
    eprintln!(
        "weight {weight}: canary share {share:.3}% ({canary} of {FLOWS}), {:.2?}",
        started.elapsed()
    );
}

#[test]
fn canary_share_at_1_percent() {
    measure_share(100);
}

#[test]
fn canary_share_at_10_percent() {
    measure_share(1_000);
}

#[test]
fn canary_share_at_50_percent() {
    measure_share(5_000);
}

#[test]
fn raising_the_weight_only_moves_flows_to_canary() {
    let frames = population();
    let canary_at = |weight: u32| -> Vec<bool> {
        // A fresh load each time: every flow is new, so this tests selection, not the table.
        let lab = Lab::new(scenario(weight));
        lab.send(&frames)
            .into_iter()
            .map(|b| lab.group_of(b) == GROUP_CANARY)
            .collect()
    };
    let at10 = canary_at(1_000);
    let at25 = canary_at(2_500);
    let moved_back = frames
        .iter()
        .zip(at10.iter().zip(&at25))
        .filter(|(_, (&a, &b))| a && !b)
        .map(|(f, _)| f.0)
        .take(5)
        .collect::<Vec<_>>();
    assert!(
        moved_back.is_empty(),
        "flows on canary at 10% but stable at 25%: {moved_back:?}"
    );
    let n10 = at10.iter().filter(|&&c| c).count();
    let n25 = at25.iter().filter(|&&c| c).count();
    assert!(
        n10 > 9_000 && n25 > n10 + 10_000,
        "canary flows: {n10} at 10%, {n25} at 25%"
    );
}

/// The population's later segments: ACKs of the connections its SYNs opened.
fn acks(frames: &[(Tuple, Vec<u8>)]) -> Vec<(Tuple, Vec<u8>)> {
    frames.iter().map(|(t, _)| (*t, t.ack_frame())).collect()
}

#[test]
fn established_flows_keep_their_backend_across_weight_changes() {
    let mut lab = Lab::new(scenario(1_000));
    let frames = population();
    let first = lab.send(&frames);
    let established = acks(&frames);
    for weight in [5_000, 0, 10_000, 2_500] {
        lab.set_weight(weight);
        let before = lab.dataplane.counters().unwrap();
        let again = lab.send(&established);
        let moved = first.iter().zip(&again).filter(|(a, b)| a != b).count();
        assert_eq!(
            moved, 0,
            "weight {weight}: {moved} established flows changed backend"
        );
        let after = lab.dataplane.counters().unwrap();
        assert_eq!(
            after[Counter::FlowHit as usize] - before[Counter::FlowHit as usize],
            u64::from(FLOWS),
            "weight {weight}: every packet is a flow-table hit"
        );
    }
    // New flows follow the current weight (25%) while the old ones stay.
    let fresh: Vec<(Tuple, Vec<u8>)> = (FLOWS..FLOWS + 20_000)
        .map(|i| {
            let t = flow(i);
            (t, t.frame())
        })
        .collect();
    let backends = lab.send(&fresh);
    let service = lab.scenario.service(SVC);
    for ((t, _), b) in fresh.iter().zip(backends) {
        let choice = lab.scenario.choose(service, &t.flow_key(), false).unwrap();
        assert_eq!(b, choice.backend, "new flow {t:?} after the weight change");
    }
}

#[test]
fn reused_5_tuples_follow_the_current_weight() {
    let mut lab = Lab::new(scenario(1_000));
    let frames = population();
    lab.send(&frames);
    // Every client opens a new connection from the same port after the weight rose to 50%:
    // each SYN is a new flow by the current weight, whatever the table held.
    lab.set_weight(5_000);
    let before = lab.dataplane.counters().unwrap();
    let reopened = lab.send(&frames);
    let service = lab.scenario.service(SVC);
    let mut canary = 0u64;
    for ((t, _), &b) in frames.iter().zip(&reopened) {
        let choice = lab.scenario.choose(service, &t.flow_key(), false).unwrap();
        assert_eq!(b, choice.backend, "SYN {t:?} reusing its 5-tuple");
        canary += u64::from(choice.group == GROUP_CANARY);
    }
    let after = lab.dataplane.counters().unwrap();
    let d = |c: Counter| after[c as usize] - before[c as usize];
    assert_eq!(
        (d(Counter::FlowMiss), d(Counter::FlowHit)),
        (0, 0),
        "a SYN opens its flow without a lookup first"
    );
    assert_eq!(
        d(Counter::SynReplacedFlow),
        u64::from(FLOWS),
        "every SYN replaced its 5-tuple's entry (syn_replace_after_ms is 0)"
    );
    let stats = lab.dataplane.service_stats(SVC).unwrap();
    assert_eq!(
        stats.new_flows[0] + stats.new_flows[1],
        2 * u64::from(FLOWS)
    );
    assert!(
        (45_000..=55_000).contains(&canary),
        "{canary} of {FLOWS} reopened connections on canary at 50%"
    );
    // Their ACKs follow the replaced entries.
    assert_eq!(lab.send(&acks(&frames)), reopened);
    assert_eq!(lab.dataplane.flow_count().unwrap(), FLOWS as usize);
}

#[test]
fn client_ip_affinity_keeps_every_port_of_a_client_together() {
    let mut s = Scenario::new();
    s.add_service(
        ServiceSpec::new(v4(198, 18, 0, 100), 53, PROTO_UDP, SVC)
            .groups(&[1, 2, 3], &[4, 5])
            .weight(5_000)
            .client_ip_affinity(),
    );
    let lab = Lab::new(s);
    let clients = 2_000u32;
    let ports = 16u16;
    let frames: Vec<(Tuple, Vec<u8>)> = (0..clients)
        .flat_map(|c| {
            let src = Addr::V4([198, 19, (c >> 8) as u8, c as u8]);
            (0..ports).map(move |p| {
                let t = Tuple::udp(src, 2_000 + p * 3_001, v4(198, 18, 0, 100), 53);
                (t, t.frame())
            })
        })
        .collect();
    let backends = lab.send(&frames);
    let mut per_client: HashMap<Addr, u32> = HashMap::new();
    let mut canary_clients = 0;
    for ((t, _), &b) in frames.iter().zip(&backends) {
        let first = *per_client.entry(t.src).or_insert_with(|| {
            if lab.group_of(b) == GROUP_CANARY {
                canary_clients += 1;
            }
            b
        });
        assert_eq!(
            b, first,
            "client {:?}: port {} went to another backend",
            t.src, t.src_port
        );
        let choice = lab
            .scenario
            .choose(lab.scenario.service(SVC), &t.flow_key(), false)
            .unwrap();
        assert_eq!(b, choice.backend, "{t:?}");
    }
    // Both groups get clients, roughly by weight (binomial sd ~ 22 of 2000).
    assert!(
        (850..=1_150).contains(&canary_clients),
        "{canary_clients} of {clients} clients on canary at 50%"
    );
}
