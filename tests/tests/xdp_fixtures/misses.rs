//! Packets of a 5-tuple the flow table does not hold. Only the first packet of a flow may take
//! a flow-table entry (a TCP SYN without ACK, RST or FIN, or a UDP datagram): a TCP segment in
//! the middle of a connection whose entry is gone (evicted, or never there) is balanced by the
//! current weight without an entry, and counted apart so that such mid-connection reassignments
//! show. Spoofed ACKs, RSTs and FINs therefore cannot push established flows out of the table.

use canary_common::Counter::{FlowHit, FlowMiss, FlowMissTcpNonSyn, Tx};
use canary_common::BUCKETS;
use canary_tests::packet::{Tuple, TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST};
use canary_tests::xdp::{pin_to_cpu, LoadOptions, XDP_TX};

use crate::support::{
    check, client4, expected_backend, fixture, scenario, tcp4, vip4, Lab, Output, TCP4_SVC,
    UDP4_SVC,
};

#[test]
fn a_tcp_segment_without_an_entry_takes_none() {
    let lab = Lab::new();
    let t = tcp4(1, 40_000, 80);
    let backend = expected_backend(&lab, TCP4_SVC, &t);
    for (what, flags) in [
        ("ACK", TCP_ACK),
        ("RST", TCP_RST),
        ("RST+ACK", TCP_RST | TCP_ACK),
        ("FIN+ACK", TCP_FIN | TCP_ACK),
        ("data", TCP_PSH | TCP_ACK),
        ("no flags", 0),
    ] {
        check(
            &lab,
            &fixture(
                what,
                t.segment(flags, b"x"),
                XDP_TX,
                Output::ToBackend(backend),
                &[Tx, FlowMiss, FlowMissTcpNonSyn],
            ),
        );
        assert_eq!(lab.dataplane.flow(&t.flow_key()).unwrap(), None, "{what}");
    }
    let stats = lab.dataplane.service_stats(TCP4_SVC).unwrap();
    assert_eq!(
        stats.new_flows,
        [0, 0],
        "mid-connection segments are not new flows"
    );
    assert_eq!(lab.dataplane.backend_stats(backend).unwrap().new_flows, 0);
    assert_eq!(lab.dataplane.backend_stats(backend).unwrap().packets, 6);

    // The SYN opens the flow; the same segments then follow its entry.
    check(
        &lab,
        &fixture("SYN", t.frame(), XDP_TX, Output::ToBackend(backend), &[Tx]),
    );
    assert!(lab.dataplane.flow(&t.flow_key()).unwrap().is_some());
    check(
        &lab,
        &fixture(
            "RST of the open flow",
            t.segment(TCP_RST, b""),
            XDP_TX,
            Output::ToBackend(backend),
            &[Tx, FlowHit],
        ),
    );

    // A UDP datagram has no connection start: the first one of a flow takes the entry.
    let u = Tuple::udp(client4(2), 5353, vip4(), 53);
    let b = expected_backend(&lab, UDP4_SVC, &u);
    check(
        &lab,
        &fixture(
            "first UDP datagram",
            u.frame(),
            XDP_TX,
            Output::ToBackend(b),
            &[Tx, FlowMiss],
        ),
    );
    assert!(lab.dataplane.flow(&u.flow_key()).unwrap().is_some());
}

/// The attack: established flows, then a flood of ACKs, RSTs and FINs of tuples the table does
/// not know, many times the table's size, and a weight change. Every established flow must
/// still hit its entry and keep its backend.
#[test]
fn a_flood_of_unknown_segments_evicts_no_established_flow() {
    const TABLE: u32 = 256;
    const ESTABLISHED: u16 = 200;
    // One CPU: the LRU table's per-CPU free lists then never evict below capacity.
    let _ = pin_to_cpu(0);
    let mut s = scenario();
    s.service_mut(TCP4_SVC).control.canary_weight = 0;
    let mut lab = Lab::with(
        s,
        LoadOptions {
            flow_table_size: Some(TABLE),
        },
    );
    let established: Vec<(Tuple, u32)> = (0..ESTABLISHED)
        .map(|i| {
            let t = tcp4((i % 100) as u8 + 1, 30_000 + i, 80);
            let backend = expected_backend(&lab, TCP4_SVC, &t);
            assert_eq!(lab.dataplane.run_or_panic(&t.frame()).action, XDP_TX);
            (t, backend)
        })
        .collect();
    assert_eq!(
        lab.dataplane.flow_count().unwrap(),
        usize::from(ESTABLISHED)
    );
    // Canary from now on: a flow that lost its entry would move.
    lab.scenario.service_mut(TCP4_SVC).control.canary_weight = BUCKETS;
    lab.scenario.update_control(&mut lab.dataplane, TCP4_SVC);

    let flags = [TCP_ACK, TCP_RST, TCP_FIN | TCP_ACK, TCP_RST | TCP_ACK];
    for i in 0..4_000u32 {
        let t = Tuple::tcp(
            client4(200 + (i % 50) as u8),
            10_000 + (i / 50) as u16,
            vip4(),
            80,
        );
        let run = lab
            .dataplane
            .run_or_panic(&t.segment(flags[i as usize % flags.len()], b""));
        assert_eq!(run.action, XDP_TX);
    }
    let counters = lab.counters();
    assert_eq!(counters[FlowMissTcpNonSyn as usize], 4_000);
    assert_eq!(
        lab.dataplane.flow_count().unwrap(),
        usize::from(ESTABLISHED),
        "unknown segments took flow-table entries"
    );
    for (t, backend) in &established {
        check(
            &lab,
            &fixture(
                "established flow after the flood",
                t.ack_frame(),
                XDP_TX,
                Output::ToBackend(*backend),
                &[Tx, FlowHit],
            ),
        );
    }
}
