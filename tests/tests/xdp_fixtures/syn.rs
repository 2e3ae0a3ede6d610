//! What a TCP SYN does to the flow table.

use canary_common::Counter::{
    DeadmanFallback, FlowHit, GroupFallback, SlotFallback, SynKeptFlow, SynReplacedFlow, Tx,
};
use canary_common::{
    FlowEntry, ServiceControl, BACKEND_FLAG_UP, BUCKETS, GROUP_CANARY, GROUP_STABLE,
};
use canary_tests::packet::{Tuple, TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN};
use canary_tests::xdp::{monotonic_ns, LoadOptions, XDP_TX};

use crate::support::{check, expected_backend, fixture, scenario, tcp4, Lab, Output, TCP4_SVC};

/// The first segment of a new connection that reuses an old connection's 5-tuple (the backend
/// closed first, so the client has no `TIME_WAIT` and reuses its port): the SYN is balanced
/// afresh by the current weight and replaces the old entry; the connection's later segments
/// follow the new entry. (`syn_replace_after_ms` is 0 here: every entry is old enough.)
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
            &[Tx, SynReplacedFlow],
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
            &[Tx, SynReplacedFlow, DeadmanFallback],
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
            &[Tx, SynReplacedFlow, GroupFallback],
        ),
    );
}

/// Only a pure SYN (no ACK, RST or FIN) opens a connection. A SYN carrying RST or FIN is no
/// connection start (a scan, or a spoof meant to re-pin a flow): it follows the table like any
/// other segment and never replaces an entry.
#[test]
fn a_syn_with_rst_or_fin_does_not_open_a_connection() {
    let mut s = scenario();
    s.service_mut(TCP4_SVC).control.canary_weight = 0;
    let mut lab = Lab::with(s, LoadOptions::default());
    let flows: Vec<(Tuple, u32)> = (0..50u16)
        .map(|i| {
            let t = tcp4((i % 50) as u8 + 1, 46_000 + i, 80);
            let b = expected_backend(&lab, TCP4_SVC, &t);
            assert_eq!(lab.dataplane.run_or_panic(&t.frame()).action, XDP_TX);
            (t, b)
        })
        .collect();
    // Promoted to 100%: a SYN that re-opened these 5-tuples would move them to canary.
    lab.scenario.service_mut(TCP4_SVC).control.canary_weight = BUCKETS;
    lab.scenario.update_control(&mut lab.dataplane, TCP4_SVC);
    for (t, backend) in &flows {
        let entry = lab.dataplane.flow(&t.flow_key()).unwrap();
        for (what, flags) in [
            ("SYN+RST", TCP_SYN | TCP_RST),
            ("SYN+FIN", TCP_SYN | TCP_FIN),
            ("SYN+FIN+RST", TCP_SYN | TCP_FIN | TCP_RST),
            ("SYN+FIN+PSH+URG (xmas)", TCP_SYN | TCP_FIN | TCP_PSH | 0x20),
        ] {
            check(
                &lab,
                &fixture(
                    what,
                    t.segment(flags, b""),
                    XDP_TX,
                    Output::ToBackend(*backend),
                    &[Tx, FlowHit],
                ),
            );
        }
        assert_eq!(lab.dataplane.flow(&t.flow_key()).unwrap(), entry);
    }
    let stats = lab.dataplane.service_stats(TCP4_SVC).unwrap();
    assert_eq!(stats.new_flows, [50, 0]);
}

/// A SYN on a 5-tuple whose entry is younger than `syn_replace_after_ms` is a retransmission of
/// the same connection's SYN (or a spoof): re-pinning it by the current weight would break a
/// connection whose first SYN-ACK is on its way. The SYN follows the entry. An older entry
/// belongs to an earlier connection (a client reusing its port) and is replaced, as is a young
/// one whose backend can no longer take the flow.
#[test]
fn a_recent_entry_survives_a_syn_and_an_old_one_is_replaced() {
    const KEEP_MS: u32 = 60_000;
    let mut s = scenario();
    s.service_mut(TCP4_SVC).control.canary_weight = 0;
    s.config.syn_replace_after_ms = KEEP_MS;
    let mut lab = Lab::with(s, LoadOptions::default());
    let t = tcp4(11, 47_000, 80);
    let key = t.flow_key();
    let choose = |lab: &Lab| {
        lab.scenario
            .choose(lab.scenario.service(TCP4_SVC), &key, false)
            .expect("a backend")
    };
    let first = choose(&lab);
    check(
        &lab,
        &fixture(
            "SYN",
            t.frame(),
            XDP_TX,
            Output::ToBackend(first.backend),
            &[Tx],
        ),
    );
    let entry = lab.dataplane.flow(&key).unwrap().expect("flow entry");
    lab.scenario.service_mut(TCP4_SVC).control.canary_weight = BUCKETS;
    lab.scenario.update_control(&mut lab.dataplane, TCP4_SVC);
    for _ in 0..3 {
        check(
            &lab,
            &fixture(
                "SYN again within the threshold (retransmitted or spoofed)",
                t.frame(),
                XDP_TX,
                Output::ToBackend(first.backend),
                &[Tx, SynKeptFlow],
            ),
        );
    }
    assert_eq!(lab.dataplane.flow(&key).unwrap(), Some(entry), "entry kept");
    let stats = lab.dataplane.service_stats(TCP4_SVC).unwrap();
    assert_eq!(stats.new_flows, [1, 0], "a kept SYN is no new flow");

    // The same entry, older than the threshold: the SYN opens a new connection.
    let long_ago = monotonic_ns() - 2 * u64::from(KEEP_MS) * 1_000_000;
    lab.dataplane
        .set_flow(
            &key,
            &FlowEntry {
                created_ns: long_ago,
                ..entry
            },
        )
        .unwrap();
    let second = choose(&lab);
    assert_eq!(second.group, GROUP_CANARY);
    check(
        &lab,
        &fixture(
            "SYN on an entry older than the threshold",
            t.frame(),
            XDP_TX,
            Output::ToBackend(second.backend),
            &[Tx, SynReplacedFlow],
        ),
    );
    let replaced = lab.dataplane.flow(&key).unwrap().expect("flow entry");
    assert_eq!(
        (replaced.backend, replaced.group),
        (second.backend, GROUP_CANARY)
    );
    assert!(replaced.created_ns > long_ago);
    assert_eq!(
        lab.dataplane.flow_count().unwrap(),
        1,
        "replaced, not added"
    );
    assert_eq!(
        lab.dataplane.service_stats(TCP4_SVC).unwrap().new_flows,
        [1, 1]
    );

    // A young entry whose backend went down is replaced.
    lab.scenario
        .backends
        .get_mut(&second.backend)
        .unwrap()
        .flags &= !BACKEND_FLAG_UP;
    lab.scenario
        .update_backend(&mut lab.dataplane, second.backend);
    let third = choose(&lab);
    assert_ne!(third.backend, second.backend);
    let mut counters = vec![Tx, SynReplacedFlow];
    if third.slot_fallback {
        counters.push(SlotFallback);
    }
    if third.group_fallback {
        counters.push(GroupFallback);
    }
    check(
        &lab,
        &fixture(
            "SYN on a young entry whose backend is down",
            t.frame(),
            XDP_TX,
            Output::ToBackend(third.backend),
            &counters,
        ),
    );

    // A young canary entry created before a reset rollback's epoch is replaced.
    let control = &mut lab.scenario.service_mut(TCP4_SVC).control;
    control.canary_weight = 0;
    control.reset_epoch_ns = monotonic_ns();
    lab.scenario.update_control(&mut lab.dataplane, TCP4_SVC);
    let fourth = choose(&lab);
    assert_eq!(fourth.group, GROUP_STABLE);
    check(
        &lab,
        &fixture(
            "SYN on a young canary entry older than the reset epoch",
            t.frame(),
            XDP_TX,
            Output::ToBackend(fourth.backend),
            &[Tx, SynReplacedFlow],
        ),
    );
}
