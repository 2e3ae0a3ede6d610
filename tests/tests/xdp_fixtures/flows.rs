//! The flow table: full tables, flows whose backend went down, reset rollbacks, UDP flows.

use canary_common::Counter::{
    self, FlowHit, FlowMiss, FlowRechosenDown, FlowRechosenReset, SlotFallback, Tx,
};
use canary_common::{BACKEND_FLAG_UP, BUCKETS, GROUP_CANARY, GROUP_STABLE};
use canary_tests::packet::{with_macs, Tuple};
use canary_tests::scenario::{backend_mac, CONFIGURED_LB_MAC};
use canary_tests::xdp::{monotonic_ns, LoadOptions, XDP_TX};

use crate::support::{
    check, client4, expected_backend, fixture, scenario, tcp4, vip4, Lab, Output, TCP4_SVC,
    UDP4_SVC,
};

#[test]
fn flow_table_full_still_forwards_consistently() {
    const TABLE: u32 = 64;
    let lab = Lab::with(
        scenario(),
        LoadOptions {
            flow_table_size: Some(TABLE),
        },
    );
    let flows: Vec<Tuple> = (0..2_000u16)
        .map(|i| tcp4((i % 250) as u8 + 1, 10_000 + i, 80))
        .collect();
    // Round 0 opens every connection (SYN); round 1 continues them (ACK), so it looks each
    // one up in a table that evicted most of them.
    for (round, frame) in [
        (0, Tuple::frame as fn(&Tuple) -> Vec<u8>),
        (1, Tuple::ack_frame),
    ] {
        let before = lab.counters();
        for t in &flows {
            let input = frame(t);
            let run = lab.dataplane.run_or_panic(&input);
            assert_eq!(run.action, XDP_TX, "round {round} {t:?}");
            let b = expected_backend(&lab, TCP4_SVC, t);
            assert_eq!(
                run.output,
                with_macs(&input, backend_mac(b), CONFIGURED_LB_MAC),
                "round {round}: flow {t:?} must go to the same backend as before eviction"
            );
        }
        let after = lab.counters();
        let d = |c: Counter| after[c as usize] - before[c as usize];
        assert_eq!(d(Counter::Tx), 2_000, "round {round}");
        if round == 0 {
            // A SYN opens a flow without a lookup: neither a hit nor a miss.
            assert_eq!(d(Counter::FlowHit) + d(Counter::FlowMiss), 0);
        } else {
            assert_eq!(d(Counter::FlowHit) + d(Counter::FlowMiss), 2_000);
            assert!(
                d(Counter::FlowMiss) >= 2_000 - u64::from(TABLE),
                "a 64-entry table cannot hold 2000 flows: {} misses",
                d(Counter::FlowMiss)
            );
            // Evicted connections go on by the current weight without taking entries back.
            assert_eq!(d(Counter::FlowMissTcpNonSyn), d(Counter::FlowMiss));
        }
    }
    let count = lab.dataplane.flow_count().unwrap();
    assert!(
        count <= TABLE as usize,
        "flow table holds {count} > {TABLE}"
    );
}

#[test]
fn flow_on_a_down_backend_is_rechosen() {
    let mut lab = Lab::new();
    // Find a flow that lands on stable backend 1.
    let t = (1..=250u8)
        .flat_map(|c| (0..20u16).map(move |p| tcp4(c, 50_000 + p, 80)))
        .find(|t| {
            lab.scenario
                .choose(lab.scenario.service(TCP4_SVC), &t.flow_key(), false)
                .is_some_and(|c| c.backend == 1)
        })
        .expect("some flow lands on backend 1");
    check(
        &lab,
        &fixture(
            "new flow on backend 1",
            t.frame(),
            XDP_TX,
            Output::ToBackend(1),
            &[Tx],
        ),
    );
    lab.scenario.backends.get_mut(&1).unwrap().flags &= !BACKEND_FLAG_UP;
    lab.scenario.update_backend(&mut lab.dataplane, 1);
    // Same flow: the table still says backend 1, which is down. The lookup table still names
    // it at that slot too (userspace has not rebuilt it), so a later slot of the same group is
    // used.
    let again = lab
        .scenario
        .choose(lab.scenario.service(TCP4_SVC), &t.flow_key(), false)
        .unwrap();
    assert!(again.slot_fallback && !again.group_fallback);
    assert_eq!(again.group, GROUP_STABLE);
    check(
        &lab,
        &fixture(
            "flow pinned to a down backend",
            t.ack_frame(),
            XDP_TX,
            Output::ToBackend(again.backend),
            &[Tx, FlowHit, FlowRechosenDown, SlotFallback],
        ),
    );
    assert_eq!(
        lab.dataplane.flow(&t.flow_key()).unwrap().unwrap().backend,
        again.backend
    );
    check(
        &lab,
        &fixture(
            "re-chosen flow is pinned again",
            t.ack_frame(),
            XDP_TX,
            Output::ToBackend(again.backend),
            &[Tx, FlowHit],
        ),
    );

    // A backend entry re-used by another service also makes the flow re-chosen.
    let t2 = (1..=250u8)
        .flat_map(|c| (0..20u16).map(move |p| tcp4(c, 51_000 + p, 80)))
        .find(|t| {
            lab.scenario
                .choose(lab.scenario.service(TCP4_SVC), &t.flow_key(), false)
                .is_some_and(|c| c.backend == 2 && !c.slot_fallback)
        })
        .expect("some flow lands on backend 2 by its own slot");
    check(
        &lab,
        &fixture(
            "new flow on backend 2",
            t2.frame(),
            XDP_TX,
            Output::ToBackend(2),
            &[Tx],
        ),
    );
    lab.scenario.backends.get_mut(&2).unwrap().service_index = UDP4_SVC;
    lab.scenario.update_backend(&mut lab.dataplane, 2);
    let run = lab.dataplane.run_or_panic(&t2.ack_frame());
    assert_eq!(run.action, XDP_TX);
    let c = lab.dataplane.counters().unwrap();
    assert_eq!(
        c[Counter::FlowRechosenDown as usize],
        2,
        "flow to a backend of another service re-chosen"
    );
}

#[test]
fn reset_epoch_rechooses_old_canary_flows_only() {
    let mut s = scenario();
    s.service_mut(TCP4_SVC).control.canary_weight = 5_000;
    let mut lab = Lab::with(s, LoadOptions::default());
    let flows: Vec<Tuple> = (0..400u16)
        .map(|i| tcp4((i % 200) as u8 + 1, 30_000 + i, 80))
        .collect();
    let mut canary = Vec::new();
    let mut stable = Vec::new();
    for t in &flows {
        let choice = lab
            .scenario
            .choose(lab.scenario.service(TCP4_SVC), &t.flow_key(), false)
            .unwrap();
        assert_eq!(lab.dataplane.run_or_panic(&t.frame()).action, XDP_TX);
        if choice.group == GROUP_CANARY {
            canary.push(*t);
        } else {
            stable.push(*t);
        }
    }
    assert!(!canary.is_empty() && !stable.is_empty());
    // Roll back with reset: weight 0 and an epoch after every flow was created.
    let control = &mut lab.scenario.service_mut(TCP4_SVC).control;
    control.canary_weight = 0;
    control.reset_epoch_ns = monotonic_ns();
    lab.scenario.update_control(&mut lab.dataplane, TCP4_SVC);
    for t in &canary {
        let b = expected_backend(&lab, TCP4_SVC, t);
        assert!(lab.scenario.service(TCP4_SVC).stable.contains(&b));
        check(
            &lab,
            &fixture(
                "canary flow older than the reset epoch",
                t.ack_frame(),
                XDP_TX,
                Output::ToBackend(b),
                &[Tx, FlowHit, FlowRechosenReset],
            ),
        );
        // Re-chosen flows are stable flows now: no second re-choice.
        check(
            &lab,
            &fixture(
                "re-chosen flow stays",
                t.ack_frame(),
                XDP_TX,
                Output::ToBackend(b),
                &[Tx, FlowHit],
            ),
        );
    }
    for t in &stable {
        let entry = lab
            .dataplane
            .flow(&t.flow_key())
            .unwrap()
            .expect("stable flow entry");
        assert_eq!(entry.group, GROUP_STABLE);
        check(
            &lab,
            &fixture(
                "stable flow kept through a reset",
                t.ack_frame(),
                XDP_TX,
                Output::ToBackend(entry.backend),
                &[Tx, FlowHit],
            ),
        );
    }
    // Canary flows created after the epoch are kept.
    let control = &mut lab.scenario.service_mut(TCP4_SVC).control;
    control.canary_weight = BUCKETS;
    lab.scenario.update_control(&mut lab.dataplane, TCP4_SVC);
    let late = tcp4(77, 60_000, 80);
    let b = expected_backend(&lab, TCP4_SVC, &late);
    check(
        &lab,
        &fixture(
            "new canary flow after the epoch",
            late.frame(),
            XDP_TX,
            Output::ToBackend(b),
            &[Tx],
        ),
    );
    check(
        &lab,
        &fixture(
            "canary flow newer than the epoch is kept",
            late.ack_frame(),
            XDP_TX,
            Output::ToBackend(b),
            &[Tx, FlowHit],
        ),
    );
}

/// UDP has no connection start: a UDP flow stays on its backend across weight changes.
#[test]
fn udp_flows_keep_their_backend_across_weight_changes() {
    let mut s = scenario();
    s.service_mut(UDP4_SVC).control.canary_weight = 0;
    let mut lab = Lab::with(s, LoadOptions::default());
    let u = Tuple::udp(client4(9), 45_000, vip4(), 53);
    let first = expected_backend(&lab, UDP4_SVC, &u);
    check(
        &lab,
        &fixture(
            "UDP at weight 0",
            u.frame(),
            XDP_TX,
            Output::ToBackend(first),
            &[Tx, FlowMiss],
        ),
    );
    lab.scenario.service_mut(UDP4_SVC).control.canary_weight = BUCKETS;
    lab.scenario.update_control(&mut lab.dataplane, UDP4_SVC);
    assert_ne!(expected_backend(&lab, UDP4_SVC, &u), first);
    check(
        &lab,
        &fixture(
            "UDP after the weight moved its bucket to canary",
            u.frame(),
            XDP_TX,
            Output::ToBackend(first),
            &[Tx, FlowHit],
        ),
    );
}
