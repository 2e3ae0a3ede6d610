//! The dead-man switch: a stale heartbeat keeps new flows off the canary group.

use canary_common::Counter::{DeadmanDrop, DeadmanFallback, DropNoBackend, Tx};
use canary_common::{ServiceControl, BACKEND_FLAG_UP, BUCKETS, GROUP_CANARY, GROUP_STABLE};
use canary_tests::packet::{v4, Tuple};
use canary_tests::xdp::{monotonic_ns, LoadOptions, XDP_DROP, XDP_TX};

use crate::support::{
    check, client4, fixture, scenario, tcp4, vip4, vip_b, Lab, Output, NO_STABLE_SVC, TCP4_SVC,
};

#[test]
fn deadman_switch_sends_new_flows_to_stable() {
    let mut s = scenario();
    s.service_mut(TCP4_SVC).control = ServiceControl {
        canary_weight: BUCKETS,
        heartbeat_ns: 1,
        heartbeat_timeout_ns: 1_000_000_000,
        ..ServiceControl::default()
    };
    // Dead-man on a service whose stable group is empty: never falls back into canary.
    s.service_mut(NO_STABLE_SVC).control = ServiceControl {
        canary_weight: BUCKETS,
        heartbeat_ns: 1,
        heartbeat_timeout_ns: 1_000_000_000,
        ..ServiceControl::default()
    };
    let mut lab = Lab::with(s, LoadOptions::default());
    for i in 0..100u16 {
        let t = tcp4((i % 100) as u8 + 1, 40_000 + i, 80);
        let choice = lab
            .scenario
            .choose(lab.scenario.service(TCP4_SVC), &t.flow_key(), true)
            .unwrap();
        assert!(choice.deadman && choice.group == GROUP_STABLE);
        check(
            &lab,
            &fixture(
                "stale heartbeat, weight 10000",
                t.frame(),
                XDP_TX,
                Output::ToBackend(choice.backend),
                &[Tx, DeadmanFallback],
            ),
        );
        let t = Tuple::tcp(
            client4((i % 100) as u8 + 1),
            40_000 + i,
            v4(198, 18, 0, 101),
            1001,
        );
        check(
            &lab,
            &fixture(
                "stale heartbeat, stable group empty",
                t.frame(),
                XDP_DROP,
                Output::Unchanged,
                &[DropNoBackend, DeadmanDrop],
            ),
        );
    }
    let st = lab.dataplane.service_stats(TCP4_SVC).unwrap();
    assert_eq!((st.new_flows, st.deadman_fallback), ([100, 0], 100));

    // A fresh heartbeat restores the weight for new flows.
    let control = &mut lab.scenario.service_mut(TCP4_SVC).control;
    control.heartbeat_ns = monotonic_ns();
    control.heartbeat_timeout_ns = 60_000_000_000;
    lab.scenario.update_control(&mut lab.dataplane, TCP4_SVC);
    let t = tcp4(201, 41_000, 80);
    let choice = lab
        .scenario
        .choose(lab.scenario.service(TCP4_SVC), &t.flow_key(), false)
        .unwrap();
    assert_eq!(choice.group, GROUP_CANARY);
    check(
        &lab,
        &fixture(
            "fresh heartbeat",
            t.frame(),
            XDP_TX,
            Output::ToBackend(choice.backend),
            &[Tx],
        ),
    );
    // A timeout of 0 disables the switch even with an ancient heartbeat.
    let control = &mut lab.scenario.service_mut(TCP4_SVC).control;
    control.heartbeat_ns = 1;
    control.heartbeat_timeout_ns = 0;
    lab.scenario.update_control(&mut lab.dataplane, TCP4_SVC);
    let t = tcp4(202, 41_001, 80);
    let choice = lab
        .scenario
        .choose(lab.scenario.service(TCP4_SVC), &t.flow_key(), false)
        .unwrap();
    check(
        &lab,
        &fixture(
            "dead-man disabled",
            t.frame(),
            XDP_TX,
            Output::ToBackend(choice.backend),
            &[Tx],
        ),
    );
}

/// A heartbeat more than the timeout ahead of the kernel's clock is stale too: otherwise a
/// bogus `u64::MAX` would switch the dead-man switch off for good. Within the timeout ahead
/// (a heartbeat written just after the kernel read its clock) it is fresh.
#[test]
fn heartbeat_in_the_future_is_stale() {
    const TIMEOUT: u64 = 1_000_000_000;
    let mut s = scenario();
    s.service_mut(TCP4_SVC).control = ServiceControl {
        canary_weight: BUCKETS,
        heartbeat_ns: u64::MAX,
        heartbeat_timeout_ns: TIMEOUT,
        ..ServiceControl::default()
    };
    let mut lab = Lab::with(s, LoadOptions::default());
    for i in 0..50u16 {
        let t = tcp4((i % 50) as u8 + 1, 42_000 + i, 80);
        let choice = lab
            .scenario
            .choose(lab.scenario.service(TCP4_SVC), &t.flow_key(), true)
            .unwrap();
        assert!(choice.deadman && choice.group == GROUP_STABLE);
        check(
            &lab,
            &fixture(
                "heartbeat u64::MAX, weight 10000",
                t.frame(),
                XDP_TX,
                Output::ToBackend(choice.backend),
                &[Tx, DeadmanFallback],
            ),
        );
    }
    // Ahead by the timeout and more: stale. Ahead by less: fresh.
    for (ahead, stale) in [(2 * TIMEOUT, true), (TIMEOUT / 2, false)] {
        lab.scenario.service_mut(TCP4_SVC).control.heartbeat_ns = monotonic_ns() + ahead;
        lab.scenario.update_control(&mut lab.dataplane, TCP4_SVC);
        let t = tcp4(60, 43_000 + (ahead / 1_000_000) as u16, 80);
        let choice = lab
            .scenario
            .choose(lab.scenario.service(TCP4_SVC), &t.flow_key(), stale)
            .unwrap();
        assert_eq!(
            choice.group,
            if stale { GROUP_STABLE } else { GROUP_CANARY }
        );
        let counters: &[_] = if stale { &[Tx, DeadmanFallback] } else { &[Tx] };
        check(
            &lab,
            &fixture(
                if stale {
                    "heartbeat two timeouts ahead"
                } else {
                    "heartbeat half a timeout ahead"
                },
                t.frame(),
                XDP_TX,
                Output::ToBackend(choice.backend),
                counters,
            ),
        );
    }
}

/// With a stale heartbeat nobody can roll a bad canary back, so new flows go to stable only,
/// whatever their bucket says. When stable has no usable backend (none configured, or all
/// down) they are dropped and counted, never sent to the canary group.
#[test]
fn stale_heartbeat_never_sends_new_flows_to_canary() {
    let stale = ServiceControl {
        canary_weight: 5_000,
        heartbeat_ns: 1,
        heartbeat_timeout_ns: 1_000_000_000,
        ..ServiceControl::default()
    };
    let mut s = scenario();
    s.service_mut(NO_STABLE_SVC).control = stale;
    s.service_mut(TCP4_SVC).control = stale;
    for b in s.service(TCP4_SVC).stable.clone() {
        s.backends.get_mut(&b).unwrap().flags &= !BACKEND_FLAG_UP;
    }
    let lab = Lab::with(s, LoadOptions::default());
    let mut by_bucket = [0u32; 2];
    for i in 0..200u16 {
        let client = client4((i % 100) as u8 + 1);
        for (service, t) in [
            (NO_STABLE_SVC, Tuple::tcp(client, 30_000 + i, vip_b(), 1001)),
            (TCP4_SVC, Tuple::tcp(client, 30_000 + i, vip4(), 80)),
        ] {
            let spec = lab.scenario.service(service);
            assert_eq!(lab.scenario.choose(spec, &t.flow_key(), true), None);
            let canary_bucket = lab.scenario.bucket_group(spec, &t.flow_key()) == GROUP_CANARY;
            by_bucket[usize::from(canary_bucket)] += 1;
            check(
                &lab,
                &fixture(
                    "stale heartbeat, no usable stable backend",
                    t.frame(),
                    XDP_DROP,
                    Output::Unchanged,
                    &[DropNoBackend, DeadmanDrop],
                ),
            );
        }
    }
    assert!(
        by_bucket.iter().all(|&n| n > 50),
        "both bucket ranges are exercised: {by_bucket:?}"
    );
    for service in [NO_STABLE_SVC, TCP4_SVC] {
        let st = lab.dataplane.service_stats(service).unwrap();
        assert_eq!((st.new_flows, st.group_fallback), ([0, 0], 0));
    }
    assert_eq!(lab.dataplane.flow_count().unwrap(), 0);
}
