//! Shared set-up of the packet fixtures: the services, a loaded object with them installed,
//! and `check`, which runs one fixture and compares action, output frame and every counter.

use canary_common::{Counter, BUCKETS, COUNTERS, PROTO_TCP, PROTO_UDP};
use canary_tests::packet::{v4, v6, with_macs, Addr, Tuple};
use canary_tests::scenario::{backend_mac, Scenario, ServiceSpec, CONFIGURED_LB_MAC};
use canary_tests::xdp::{action_name, Dataplane, LoadOptions};

pub(crate) const VIP4: [u8; 4] = [198, 18, 0, 100];
pub(crate) const TCP4_SVC: u32 = 0;
pub(crate) const UDP4_SVC: u32 = 1;
pub(crate) const TCP6_SVC: u32 = 2;
pub(crate) const NO_CANARY_SVC: u32 = 3;
pub(crate) const NO_STABLE_SVC: u32 = 4;
pub(crate) const EMPTY_SVC: u32 = 5;
pub(crate) const ALL_CANARY_SVC: u32 = 6;

pub(crate) fn vip4() -> Addr {
    Addr::V4(VIP4)
}

pub(crate) fn vip6() -> Addr {
    v6(0x100)
}

pub(crate) fn vip_b() -> Addr {
    v4(198, 18, 0, 101)
}

pub(crate) fn client4(n: u8) -> Addr {
    v4(198, 18, 1, n)
}

/// Several services at once: TCP and UDP on one IPv4 VIP, TCP on an IPv6 VIP, and services
/// whose groups are empty, on a second IPv4 VIP.
pub(crate) fn scenario() -> Scenario {
    let mut s = Scenario::new();
    s.add_service(
        ServiceSpec::new(vip4(), 80, PROTO_TCP, TCP4_SVC)
            .groups(&[1, 2, 3], &[4, 5])
            .weight(2_500),
    );
    s.add_service(
        ServiceSpec::new(vip4(), 53, PROTO_UDP, UDP4_SVC)
            .groups(&[6, 7], &[8])
            .weight(5_000),
    );
    s.add_service(
        ServiceSpec::new(vip6(), 443, PROTO_TCP, TCP6_SVC)
            .groups(&[9, 10], &[11])
            .weight(5_000),
    );
    let vip_b = v4(198, 18, 0, 101);
    s.add_service(
        ServiceSpec::new(vip_b, 1000, PROTO_TCP, NO_CANARY_SVC)
            .groups(&[12], &[])
            .weight(BUCKETS),
    );
    s.add_service(
        ServiceSpec::new(vip_b, 1001, PROTO_TCP, NO_STABLE_SVC)
            .groups(&[], &[13])
            .weight(0),
    );
    s.add_service(
        ServiceSpec::new(vip_b, 1002, PROTO_TCP, EMPTY_SVC)
            .groups(&[], &[])
            .weight(5_000),
    );
    s.add_service(
        ServiceSpec::new(vip_b, 1003, PROTO_TCP, ALL_CANARY_SVC)
            .groups(&[14], &[15])
            .weight(BUCKETS),
    );
    s
}

pub(crate) struct Lab {
    pub(crate) dataplane: Dataplane,
    pub(crate) scenario: Scenario,
}

impl Lab {
    pub(crate) fn new() -> Self {
        Self::with(scenario(), LoadOptions::default())
    }

    pub(crate) fn with(scenario: Scenario, options: LoadOptions) -> Self {
        let mut dataplane = Dataplane::load_or_panic(options);
        scenario.install_or_panic(&mut dataplane);
        Self {
            dataplane,
            scenario,
        }
    }

    pub(crate) fn counters(&self) -> [u64; COUNTERS as usize] {
        self.dataplane.counters().expect("reading COUNTERS")
    }
}

/// What a fixture expects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Output {
    /// Output frame equals the input.
    Unchanged,
    /// `XDP_TX` with MACs rewritten to this backend (and the configured LB MAC).
    ToBackend(u32),
}

pub(crate) struct Fixture {
    pub(crate) description: &'static str,
    pub(crate) input: Vec<u8>,
    pub(crate) action: u32,
    pub(crate) output: Output,
    pub(crate) counters: Vec<Counter>,
}

pub(crate) fn fixture(
    description: &'static str,
    input: Vec<u8>,
    action: u32,
    output: Output,
    counters: &[Counter],
) -> Fixture {
    Fixture {
        description,
        input,
        action,
        output,
        counters: counters.to_vec(),
    }
}

/// Runs one fixture and checks action, output bytes, every counter's delta, and that exactly
/// one outcome counter moved.
pub(crate) fn check(lab: &Lab, f: &Fixture) {
    let before = lab.counters();
    let run = lab.dataplane.run_or_panic(&f.input);
    let after = lab.counters();
    assert_eq!(
        run.action,
        f.action,
        "{}: action {} expected {}",
        f.description,
        action_name(run.action),
        action_name(f.action)
    );
    let expected_output = match f.output {
        Output::Unchanged => f.input.clone(),
        Output::ToBackend(b) => with_macs(&f.input, backend_mac(b), CONFIGURED_LB_MAC),
    };
    assert_eq!(
        run.output, expected_output,
        "{}: output frame differs from the expected one",
        f.description
    );
    let mut expected = [0u64; COUNTERS as usize];
    for c in &f.counters {
        expected[*c as usize] += 1;
    }
    let delta: Vec<(&str, u64)> = Counter::ALL
        .iter()
        .map(|c| (c.name(), after[*c as usize] - before[*c as usize]))
        .filter(|(_, d)| *d != 0)
        .collect();
    let want: Vec<(&str, u64)> = Counter::ALL
        .iter()
        .map(|c| (c.name(), expected[*c as usize]))
        .filter(|(_, d)| *d != 0)
        .collect();
    assert_eq!(delta, want, "{}: counter deltas", f.description);
    let outcomes: u64 = Counter::ALL
        .iter()
        .filter(|c| c.is_outcome())
        .map(|c| after[*c as usize] - before[*c as usize])
        .sum();
    assert_eq!(
        outcomes, 1,
        "{}: exactly one outcome counter",
        f.description
    );
}

/// The backend the contract picks for a new flow of `tuple` to service `service`.
pub(crate) fn expected_backend(lab: &Lab, service: u32, tuple: &Tuple) -> u32 {
    lab.scenario
        .choose(lab.scenario.service(service), &tuple.flow_key(), false)
        .unwrap_or_else(|| panic!("no backend expected for {tuple:?}"))
        .backend
}

pub(crate) fn tcp4(client: u8, port: u16, dport: u16) -> Tuple {
    Tuple::tcp(client4(client), port, vip4(), dport)
}
