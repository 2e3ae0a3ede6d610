//! The UDP idle timeout: a UDP flow's entry that saw no datagram for `udp_idle_timeout_ms` no
//! longer pins the flow; its next datagram is a new flow. Datagrams keep an entry alive
//! however old it is, and TCP entries never idle out.

use canary_common::Counter::{FlowHit, FlowMiss, Tx, UdpFlowIdle};
use canary_common::{FlowEntry, GROUP_CANARY, GROUP_STABLE};
use canary_tests::packet::Tuple;
use canary_tests::xdp::{monotonic_ns, LoadOptions, XDP_TX};

use crate::support::{
    check, client4, expected_backend, fixture, scenario, tcp4, vip4, Lab, Output, TCP4_SVC,
    UDP4_SVC,
};

const IDLE_MS: u32 = 1_000;
const IDLE_NS: u64 = IDLE_MS as u64 * 1_000_000;

/// A lab whose UDP service sends every new flow to stable, with the idle timeout set.
fn lab(idle_ms: u32) -> Lab {
    let mut s = scenario();
    s.service_mut(UDP4_SVC).control.canary_weight = 0;
    s.config.udp_idle_timeout_ms = idle_ms;
    Lab::with(s, LoadOptions::default())
}

/// Moves every bucket of the UDP service to canary: only a flow-table entry keeps a flow on
/// stable now.
fn all_new_flows_to_canary(lab: &mut Lab) {
    lab.scenario.service_mut(UDP4_SVC).control.canary_weight = canary_common::BUCKETS;
    lab.scenario.update_control(&mut lab.dataplane, UDP4_SVC);
}

fn entry(lab: &Lab, t: &Tuple) -> FlowEntry {
    lab.dataplane
        .flow(&t.flow_key())
        .expect("read FLOWS")
        .unwrap_or_else(|| panic!("no entry for {t:?}"))
}

#[test]
fn an_idle_udp_entry_is_a_new_flow_and_a_busy_one_is_kept() {
    let mut lab = lab(IDLE_MS);
    let u = Tuple::udp(client4(21), 46_000, vip4(), 53);
    let stable = expected_backend(&lab, UDP4_SVC, &u);
    check(
        &lab,
        &fixture(
            "first datagram: a new flow on stable",
            u.frame(),
            XDP_TX,
            Output::ToBackend(stable),
            &[Tx, FlowMiss],
        ),
    );
    let first = entry(&lab, &u);
    assert_eq!(first.group, GROUP_STABLE);
    assert!(first.seen_ns >= first.created_ns);
    all_new_flows_to_canary(&mut lab);
    let canary = expected_backend(&lab, UDP4_SVC, &u);
    assert_ne!(canary, stable);

    // Created long ago, but a datagram arrived just now: busy, kept, and refreshed.
    let now = monotonic_ns();
    lab.dataplane
        .set_flow(
            &u.flow_key(),
            &FlowEntry {
                created_ns: now - 10 * IDLE_NS,
                seen_ns: now - IDLE_NS / 2,
                ..first
            },
        )
        .unwrap();
    check(
        &lab,
        &fixture(
            "datagram within the idle timeout stays on its backend",
            u.frame(),
            XDP_TX,
            Output::ToBackend(stable),
            &[Tx, FlowHit],
        ),
    );
    let kept = entry(&lab, &u);
    assert_eq!(kept.backend, stable);
    assert_eq!(
        kept.created_ns,
        now - 10 * IDLE_NS,
        "a hit keeps the creation time"
    );
    assert!(kept.seen_ns >= now, "a hit refreshes the last-seen time");

    // No datagram for longer than the timeout: the next one is a new flow, by today's weight.
    lab.dataplane
        .set_flow(
            &u.flow_key(),
            &FlowEntry {
                seen_ns: monotonic_ns() - IDLE_NS - 1,
                ..kept
            },
        )
        .unwrap();
    check(
        &lab,
        &fixture(
            "datagram after the idle timeout is a new flow",
            u.frame(),
            XDP_TX,
            Output::ToBackend(canary),
            &[Tx, UdpFlowIdle],
        ),
    );
    let replaced = entry(&lab, &u);
    assert_eq!((replaced.backend, replaced.group), (canary, GROUP_CANARY));
    assert!(replaced.created_ns > kept.created_ns);
    assert_eq!(
        lab.dataplane.service_stats(UDP4_SVC).unwrap().new_flows[GROUP_CANARY as usize],
        1,
        "the idle flow's next datagram counts as a new canary flow"
    );
    check(
        &lab,
        &fixture(
            "the new flow's next datagram hits its new entry",
            u.frame(),
            XDP_TX,
            Output::ToBackend(canary),
            &[Tx, FlowHit],
        ),
    );
}

#[test]
fn zero_timeout_keeps_udp_entries_and_tcp_entries_never_idle_out() {
    let mut lab = lab(0);
    let u = Tuple::udp(client4(22), 46_001, vip4(), 53);
    let stable = expected_backend(&lab, UDP4_SVC, &u);
    check(
        &lab,
        &fixture(
            "first datagram",
            u.frame(),
            XDP_TX,
            Output::ToBackend(stable),
            &[Tx, FlowMiss],
        ),
    );
    all_new_flows_to_canary(&mut lab);
    let e = entry(&lab, &u);
    lab.dataplane
        .set_flow(&u.flow_key(), &FlowEntry { seen_ns: 1, ..e })
        .unwrap();
    check(
        &lab,
        &fixture(
            "timeout 0: an entry silent for hours still pins its flow",
            u.frame(),
            XDP_TX,
            Output::ToBackend(stable),
            &[Tx, FlowHit],
        ),
    );

    // TCP with the timeout on: a connection silent for longer keeps its backend.
    let mut lab = self::lab(IDLE_MS);
    let t = tcp4(23, 46_002, 80);
    let b = expected_backend(&lab, TCP4_SVC, &t);
    check(
        &lab,
        &fixture("SYN", t.frame(), XDP_TX, Output::ToBackend(b), &[Tx]),
    );
    lab.scenario.service_mut(TCP4_SVC).control.canary_weight = canary_common::BUCKETS;
    lab.scenario.update_control(&mut lab.dataplane, TCP4_SVC);
    let e = entry(&lab, &t);
    lab.dataplane
        .set_flow(&t.flow_key(), &FlowEntry { seen_ns: 1, ..e })
        .unwrap();
    check(
        &lab,
        &fixture(
            "a quiet TCP connection is not subject to the UDP idle timeout",
            t.ack_frame(),
            XDP_TX,
            Output::ToBackend(b),
            &[Tx, FlowHit],
        ),
    );
}
