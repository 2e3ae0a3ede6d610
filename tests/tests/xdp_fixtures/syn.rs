//! What a TCP SYN does to the flow table.

use canary_common::Counter::{DeadmanFallback, FlowHit, GroupFallback, Tx};
use canary_common::{ServiceControl, BACKEND_FLAG_UP, BUCKETS, GROUP_CANARY, GROUP_STABLE};
use canary_tests::packet::{TCP_ACK, TCP_SYN};
use canary_tests::xdp::{LoadOptions, XDP_TX};

use crate::support::{check, fixture, scenario, tcp4, Lab, Output, TCP4_SVC};

/// The first segment of a new connection that reuses an old connection's 5-tuple (the backend
/// closed first, so the client has no `TIME_WAIT` and reuses its port): the SYN is balanced
/// afresh by the current weight and replaces the old entry; the connection's later segments
/// follow the new entry.
#[test]
fn syn_reusing_a_5_tuple_starts_a_new_flow() {
    let mut s = scenario();
    s.service_mut(TCP4_SVC).control.canary_weight = 0;
    let mut lab = Lab::with(s, LoadOptions::default());
    let t = tcp4(9, 45_000, 80);
    let key = t.flow_key();
    let choose = |lab: &Lab, deadman: bool| {
        lab.scenario
            .choose(lab.scenario.service(TCP4_SVC), &key, deadman)
            .expect("a backend")
    };
    let old = choose(&lab, false);
    assert_eq!(old.group, GROUP_STABLE);
    check(
        &lab,
        &fixture(
            "first connection: SYN at weight 0",
            t.frame(),
            XDP_TX,
            Output::ToBackend(old.backend),
            &[Tx],
        ),
    );
    let first_entry = lab.dataplane.flow(&key).unwrap().expect("flow entry");

    // Promoted to 100%: the first connection keeps its backend.
    lab.scenario.service_mut(TCP4_SVC).control.canary_weight = BUCKETS;
    lab.scenario.update_control(&mut lab.dataplane, TCP4_SVC);
    check(
        &lab,
        &fixture(
            "first connection: ACK after the promotion",
            t.ack_frame(),
            XDP_TX,
            Output::ToBackend(old.backend),
            &[Tx, FlowHit],
        ),
    );
    // A SYN with ACK set is not a connection's first segment: it follows the table.
    check(
        &lab,
        &fixture(
            "SYN+ACK of the 5-tuple follows the table",
            t.segment(TCP_SYN | TCP_ACK, b""),
            XDP_TX,
            Output::ToBackend(old.backend),
            &[Tx, FlowHit],
        ),
    );

    // (a) The same 5-tuple opens a new connection: balanced by the current weight (canary),
    // counted as a new flow, and its entry replaces the old one.
    let new = choose(&lab, false);
    assert_eq!(new.group, GROUP_CANARY);
    check(
        &lab,
        &fixture(
            "second connection: SYN reusing the 5-tuple at weight 10000",
            t.frame(),
            XDP_TX,
            Output::ToBackend(new.backend),
            &[Tx],
        ),
    );
    let entry = lab.dataplane.flow(&key).unwrap().expect("flow entry");
    assert_eq!((entry.backend, entry.group), (new.backend, GROUP_CANARY));
    assert!(
        entry.created_ns > first_entry.created_ns,
        "the entry is the new connection's"
    );
    assert_eq!(
        lab.dataplane.flow_count().unwrap(),
        1,
        "replaced, not added"
    );
    // (b) The new connection's ACK follows the new entry.
    check(
        &lab,
        &fixture(
            "second connection: ACK follows the new entry",
            t.ack_frame(),
            XDP_TX,
            Output::ToBackend(new.backend),
            &[Tx, FlowHit],
        ),
    );
    let stats = lab.dataplane.service_stats(TCP4_SVC).unwrap();
    assert_eq!(stats.new_flows, [1, 1]);
    assert_eq!(
        lab.dataplane.backend_stats(new.backend).unwrap().new_flows,
        1
    );

    // The dead-man switch applies to a reused 5-tuple too: a stale heartbeat sends the third
    // connection to stable although the table holds a canary entry.
    let control = &mut lab.scenario.service_mut(TCP4_SVC).control;
    control.heartbeat_ns = 1;
    control.heartbeat_timeout_ns = 1_000_000_000;
    lab.scenario.update_control(&mut lab.dataplane, TCP4_SVC);
    check(
        &lab,
        &fixture(
            "second connection: ACK keeps its canary backend under the dead-man switch",
            t.ack_frame(),
            XDP_TX,
            Output::ToBackend(new.backend),
            &[Tx, FlowHit],
        ),
    );
    let third = choose(&lab, true);
    assert!(third.deadman && third.group == GROUP_STABLE);
    check(
        &lab,
        &fixture(
            "third connection: SYN reusing the 5-tuple with a stale heartbeat",
            t.frame(),
            XDP_TX,
            Output::ToBackend(third.backend),
            &[Tx, DeadmanFallback],
        ),
    );
    check(
        &lab,
        &fixture(
            "third connection: ACK follows the stable entry",
            t.ack_frame(),
            XDP_TX,
            Output::ToBackend(third.backend),
            &[Tx, FlowHit],
        ),
    );

    // A SYN whose chosen group has no backend up falls back like any new flow.
    lab.scenario.service_mut(TCP4_SVC).control = ServiceControl {
        canary_weight: BUCKETS,
        ..ServiceControl::default()
    };
    lab.scenario.update_control(&mut lab.dataplane, TCP4_SVC);
    for b in [4, 5] {
        lab.scenario.backends.get_mut(&b).unwrap().flags &= !BACKEND_FLAG_UP;
        lab.scenario.update_backend(&mut lab.dataplane, b);
    }
    let fallback = choose(&lab, false);
    assert!(fallback.group_fallback && fallback.group == GROUP_STABLE);
    check(
        &lab,
        &fixture(
            "fourth connection: SYN, canary group down",
            t.frame(),
            XDP_TX,
            Output::ToBackend(fallback.backend),
            &[Tx, GroupFallback],
        ),
    );
}
