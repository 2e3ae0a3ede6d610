//! The flood guard: above `flood_guard_rate` new flows per second on a CPU, new flows are
//! balanced as usual but take no flow-table entry (`tx_flood_guard`), so a flood of new flows
//! cannot push established flows out of the LRU table.

use std::time::Instant;

use canary_common::Counter::{FlowMiss, TxFloodGuard};
use canary_common::{Counter, BUCKETS};
use canary_tests::packet::{v4, Tuple};
use canary_tests::xdp::{pin_to_cpu, LoadOptions, XDP_TX};

use crate::support::{
    check, client4, expected_backend, fixture, scenario, tcp4, vip4, Lab, Output, TCP4_SVC,
    UDP4_SVC,
};

const TABLE: u32 = 1_024;
const ESTABLISHED: u16 = 600;
const FLOOD: u32 = 20_000;
const RATE: u32 = 100;

/// A table holding `ESTABLISHED` established flows (opened at weight 0, guard off), then the
/// guard at `rate` and the weight at 100 %, so that a flow that lost its entry would move.
fn established(rate: u32) -> (Lab, Vec<(Tuple, u32)>) {
    // One CPU: the LRU table's per-CPU free lists then never evict below capacity, and the
    // guard's per-CPU window is this one.
    let _ = pin_to_cpu(0);
    let mut s = scenario();
    s.service_mut(TCP4_SVC).control.canary_weight = 0;
    let mut lab = Lab::with(
        s,
        LoadOptions {
            flow_table_size: Some(TABLE),
        },
    );
    let flows: Vec<(Tuple, u32)> = (0..ESTABLISHED)
        .map(|i| {
            let t = tcp4((i % 200) as u8 + 1, 30_000 + i, 80);
            let backend = expected_backend(&lab, TCP4_SVC, &t);
            assert_eq!(lab.dataplane.run_or_panic(&t.frame()).action, XDP_TX);
            (t, backend)
        })
        .collect();
    assert_eq!(
        lab.dataplane.flow_count().unwrap(),
        usize::from(ESTABLISHED)
    );
    lab.scenario.config.flood_guard_rate = rate;
    lab.dataplane.set_config(&lab.scenario.config).unwrap();
    lab.scenario.service_mut(TCP4_SVC).control.canary_weight = BUCKETS;
    lab.scenario.update_control(&mut lab.dataplane, TCP4_SVC);
    (lab, flows)
}

/// Flood client `i`: a distinct address per SYN (198.19.0.0/16).
fn flood_client(i: u32) -> Tuple {
    let [_, _, hi, lo] = i.to_be_bytes();
    Tuple::tcp(v4(198, 19, hi, lo), 1_024 + (i % 60_000) as u16, vip4(), 80)
}

/// SYNs of `FLOOD` distinct spoofed clients, as fast as test runs go.
fn flood(lab: &Lab) {
    for i in 0..FLOOD {
        let run = lab.dataplane.run_or_panic(&flood_client(i).frame());
        assert_eq!(run.action, XDP_TX);
    }
}

/// How many of the established flows still hit their entry (and keep their backend).
fn still_pinned(lab: &Lab, flows: &[(Tuple, u32)]) -> usize {
    flows
        .iter()
        .filter(|(t, backend)| {
            let before = lab.counters();
            let run = lab.dataplane.run_or_panic(&t.ack_frame());
            let after = lab.counters();
            run.action == XDP_TX
                && run.output[..6] == canary_tests::scenario::backend_mac(*backend)
                && after[Counter::FlowHit as usize] == before[Counter::FlowHit as usize] + 1
        })
        .count()
}

#[test]
fn a_syn_flood_evicts_no_established_flow() {
    let (lab, flows) = established(RATE);
    let started = Instant::now();
    flood(&lab);
    let seconds = started.elapsed().as_secs();
    let counters = lab.counters();
    let guarded = counters[TxFloodGuard as usize];
    // At most RATE per one-second window were admitted (the flood may straddle a few).
    let admitted = u64::from(FLOOD) - guarded;
    assert!(
        admitted <= u64::from(RATE) * (seconds + 2),
        "{admitted} flood SYNs took entries in {seconds} s at {RATE}/s"
    );
    assert!(guarded >= u64::from(FLOOD) / 2, "only {guarded} guarded");
    let stats = lab.dataplane.service_stats(TCP4_SVC).unwrap();
    assert_eq!(
        stats.new_flows[0] + stats.new_flows[1],
        u64::from(ESTABLISHED) + u64::from(FLOOD),
        "guarded flows are new flows too"
    );
    assert_eq!(
        still_pinned(&lab, &flows),
        flows.len(),
        "every established flow still hits its entry"
    );
}

/// The same flood without the guard: it is what evicts established flows (so the test above
/// can fail).
#[test]
fn without_the_guard_the_same_flood_evicts_established_flows() {
    let (lab, flows) = established(0);
    flood(&lab);
    assert_eq!(lab.counters()[TxFloodGuard as usize], 0);
    let pinned = still_pinned(&lab, &flows);
    assert!(
        pinned < flows.len() / 2,
        "{pinned} of {} established flows survived an unguarded flood",
        flows.len()
    );
}

/// A guarded new flow: forwarded like any new flow, counted as `tx_flood_guard` (an outcome:
/// it replaces `tx`), and without an entry. A UDP flow's later datagrams then look the table up
/// and miss; a TCP connection's later segments are unpinned segments.
#[test]
fn a_guarded_new_flow_is_forwarded_without_an_entry() {
    let (lab, _) = established(1);
    // Spend this second's one admission (a flow of the flood kind).
    let spent = (FLOOD..FLOOD + 1_000).any(|i| {
        lab.dataplane.run_or_panic(&flood_client(i).frame());
        lab.counters()[TxFloodGuard as usize] > 0
    });
    assert!(spent, "the guard at 1 per second never refused a flow");
    let t = tcp4(250, 50_000, 80);
    let b = expected_backend(&lab, TCP4_SVC, &t);
    check(
        &lab,
        &fixture(
            "SYN above the rate",
            t.frame(),
            XDP_TX,
            Output::ToBackend(b),
            &[TxFloodGuard],
        ),
    );
    assert_eq!(lab.dataplane.flow(&t.flow_key()).unwrap(), None);
    let u = Tuple::udp(client4(250), 5_353, vip4(), 53);
    let b = expected_backend(&lab, UDP4_SVC, &u);
    check(
        &lab,
        &fixture(
            "first UDP datagram above the rate",
            u.frame(),
            XDP_TX,
            Output::ToBackend(b),
            &[TxFloodGuard, FlowMiss],
        ),
    );
    assert_eq!(lab.dataplane.flow(&u.flow_key()).unwrap(), None);
}
