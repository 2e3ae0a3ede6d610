//! Which backend a new flow gets when its Maglev slot names one that cannot take it: a later
//! slot of the same group first, the other group only when the group has nothing usable. A slot
//! can name such a backend for as long as userspace takes to rewrite the table.

use canary_common::Counter::{GroupFallback, SlotFallback, Tx};
use canary_common::{Counter, BACKEND_FLAG_UP, GROUP_CANARY, GROUP_STABLE};
use canary_tests::xdp::{LoadOptions, XDP_TX};

use crate::support::{check, fixture, scenario, tcp4, Lab, Output, TCP4_SVC, UDP4_SVC};

/// Sends 300 new flows of the TCP service at weight 0 and checks each against the model; returns
/// how many fell back to a later slot.
fn new_flows_stay_in_stable(lab: &Lab, first_port: u16, what: &'static str) -> u32 {
    let mut slot_fallbacks = 0;
    for i in 0..300u16 {
        let t = tcp4((i % 150) as u8 + 1, first_port + i, 80);
        let choice = lab
            .scenario
            .choose(lab.scenario.service(TCP4_SVC), &t.flow_key(), false)
            .expect("stable has usable backends");
        assert_eq!(
            choice.group, GROUP_STABLE,
            "{what}: weight 0 stays in stable"
        );
        assert!(!choice.group_fallback);
        let mut counters: Vec<Counter> = vec![Tx];
        if choice.slot_fallback {
            counters.push(SlotFallback);
            slot_fallbacks += 1;
        }
        check(
            lab,
            &fixture(
                what,
                t.frame(),
                XDP_TX,
                Output::ToBackend(choice.backend),
                &counters,
            ),
        );
    }
    let stats = lab.dataplane.service_stats(TCP4_SVC).unwrap();
    assert_eq!(stats.new_flows[1], 0, "{what}: no new flow went to canary");
    assert_eq!(stats.group_fallback, 0, "{what}");
    slot_fallbacks
}

#[test]
fn a_down_backend_in_the_slot_falls_back_inside_its_group() {
    let mut s = scenario();
    s.service_mut(TCP4_SVC).control.canary_weight = 0;
    // Backend 1 is down, but the stable table still names it in a third of its slots.
    s.backends.get_mut(&1).unwrap().flags &= !BACKEND_FLAG_UP;
    let lab = Lab::with(s, LoadOptions::default());
    let n = new_flows_stay_in_stable(&lab, 20_000, "slot names a down stable backend");
    assert!(n > 50, "only {n} flows had the down backend's slot");
    assert_eq!(lab.dataplane.backend_stats(1).unwrap().new_flows, 0);
}

#[test]
fn a_backend_of_another_service_or_group_is_never_chosen() {
    let mut s = scenario();
    s.service_mut(TCP4_SVC).control.canary_weight = 0;
    // The stable table still names backends 1 and 2, now re-used by another service and by
    // the canary group (up, so only the service and group tell them apart).
    s.backends.get_mut(&1).unwrap().service_index = UDP4_SVC;
    s.backends.get_mut(&2).unwrap().group = GROUP_CANARY;
    let lab = Lab::with(s, LoadOptions::default());
    let n = new_flows_stay_in_stable(&lab, 21_000, "slot names another service's backend");
    assert!(n > 100, "only {n} flows had a stale slot");
    for b in [1, 2] {
        assert_eq!(lab.dataplane.backend_stats(b).unwrap().new_flows, 0);
    }
    assert_eq!(lab.dataplane.backend_stats(3).unwrap().new_flows, 300);
}

#[test]
fn a_group_with_nothing_usable_falls_back_to_the_other_group() {
    let mut s = scenario();
    s.service_mut(TCP4_SVC).control.canary_weight = 0;
    for b in [1, 2, 3] {
        s.backends.get_mut(&b).unwrap().flags &= !BACKEND_FLAG_UP;
    }
    let lab = Lab::with(s, LoadOptions::default());
    for i in 0..100u16 {
        let t = tcp4((i % 100) as u8 + 1, 22_000 + i, 80);
        let choice = lab
            .scenario
            .choose(lab.scenario.service(TCP4_SVC), &t.flow_key(), false)
            .unwrap();
        assert!(choice.group_fallback && choice.group == GROUP_CANARY);
        let mut counters: Vec<Counter> = vec![Tx, GroupFallback];
        if choice.slot_fallback {
            counters.push(SlotFallback);
        }
        check(
            &lab,
            &fixture(
                "every stable backend down",
                t.frame(),
                XDP_TX,
                Output::ToBackend(choice.backend),
                &counters,
            ),
        );
    }
}
