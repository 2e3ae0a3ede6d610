//! The bucket rule at the extremes: weights 0 and 10000 and above, and empty groups.

use canary_common::Counter::{DropNoBackend, GroupFallback, Tx};
use canary_tests::packet::{v4, with_macs, Tuple};
use canary_tests::scenario::{backend_mac, CONFIGURED_LB_MAC};
use canary_tests::xdp::{LoadOptions, XDP_DROP, XDP_TX};

use crate::support::{
    check, client4, expected_backend, fixture, scenario, tcp4, Lab, Output, ALL_CANARY_SVC,
    EMPTY_SVC, NO_CANARY_SVC, NO_STABLE_SVC, TCP4_SVC,
};

#[test]
fn empty_groups_and_extreme_weights() {
    let lab = Lab::new();
    let vip_b = v4(198, 18, 0, 101);
    let to = |port: u16, client: u8, sport: u16| Tuple::tcp(client4(client), sport, vip_b, port);
    // Many flows each, so both buckets ranges are hit.
    for i in 0..200u16 {
        let c = (i % 50) as u8 + 1;
        let sport = 30_000 + i;
        // Weight 10000, canary group empty: every flow falls back to stable.
        check(
            &lab,
            &fixture(
                "weight 10000, empty canary group",
                to(1000, c, sport).frame(),
                XDP_TX,
                Output::ToBackend(12),
                &[Tx, GroupFallback],
            ),
        );
        // Weight 0, stable group empty: every flow falls back to canary.
        check(
            &lab,
            &fixture(
                "weight 0, empty stable group",
                to(1001, c, sport).frame(),
                XDP_TX,
                Output::ToBackend(13),
                &[Tx, GroupFallback],
            ),
        );
        // Both groups empty.
        check(
            &lab,
            &fixture(
                "both groups empty",
                to(1002, c, sport).frame(),
                XDP_DROP,
                Output::Unchanged,
                &[DropNoBackend],
            ),
        );
        // Weight 10000 with both groups: everything to canary.
        check(
            &lab,
            &fixture(
                "weight 10000",
                to(1003, c, sport).frame(),
                XDP_TX,
                Output::ToBackend(15),
                &[Tx],
            ),
        );
    }
    let s = lab.dataplane.service_stats(NO_CANARY_SVC).unwrap();
    assert_eq!((s.new_flows, s.group_fallback), ([200, 0], 200));
    let s = lab.dataplane.service_stats(NO_STABLE_SVC).unwrap();
    assert_eq!((s.new_flows, s.group_fallback), ([0, 200], 200));
    let s = lab.dataplane.service_stats(ALL_CANARY_SVC).unwrap();
    assert_eq!((s.new_flows, s.group_fallback), ([0, 200], 0));
    let s = lab.dataplane.service_stats(EMPTY_SVC).unwrap();
    assert_eq!(s.new_flows, [0, 0]);
}

#[test]
fn weight_zero_sends_everything_to_stable() {
    let mut s = scenario();
    s.service_mut(TCP4_SVC).control.canary_weight = 0;
    let lab = Lab::with(s, LoadOptions::default());
    for i in 0..500u16 {
        let t = tcp4((i % 200) as u8 + 1, 20_000 + i, 80);
        let run = lab.dataplane.run_or_panic(&t.frame());
        assert_eq!(run.action, XDP_TX);
        let b = expected_backend(&lab, TCP4_SVC, &t);
        assert!(lab.scenario.service(TCP4_SVC).stable.contains(&b));
        assert_eq!(
            run.output,
            with_macs(&t.frame(), backend_mac(b), CONFIGURED_LB_MAC)
        );
    }
    let s = lab.dataplane.service_stats(TCP4_SVC).unwrap();
    assert_eq!(s.new_flows, [500, 0]);
}

#[test]
fn weight_above_buckets_is_clamped_to_all_canary() {
    let mut s = scenario();
    s.service_mut(TCP4_SVC).control.canary_weight = 60_000;
    let lab = Lab::with(s, LoadOptions::default());
    for i in 0..300u16 {
        let t = tcp4((i % 200) as u8 + 1, 20_000 + i, 80);
        assert_eq!(lab.dataplane.run_or_panic(&t.frame()).action, XDP_TX);
    }
    assert_eq!(
        lab.dataplane.service_stats(TCP4_SVC).unwrap().new_flows,
        [0, 300]
    );
}
