//! Three balancer nodes behind ECMP, one config: three separately loaded copies of the program,
//! each programmed by its own daemon-side [`Programmer`] from the same parsed config, give
//! every 5-tuple the same group and backend at every weight (and the one `canary route`
//! computes). This is what lets the multipath route send a flow's packets to any node.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use canary_common::{GlobalConfig, ServiceControl, Tunnel};
use canary_tests::packet::{v4, Tuple, LB_MAC};
use canary_tests::xdp::{action_name, monotonic_ns, Dataplane, LoadOptions, XDP_TX};
use canary_userspace::config::Config;
use canary_userspace::controller::global_config;
use canary_userspace::dataplane::{BackendSpec, DataPlane, MapWrite, Programmer, ServiceSpec};
use canary_userspace::domain::{Group, Weight};

/// The config every node reads (backends with their MACs, so no neighbour table is needed).
const CONFIG: &str = r#"
[dataplane]
interface = "lo"
hash_seed = 2654435769

[[services]]
name = "sentiment"
vip = "198.18.0.100:8080"
  [[services.backends]]
  name = "s0"
  group = "stable"
  address = "198.18.0.11"
  mac = "02:00:c6:12:00:0b"
  [[services.backends]]
  name = "s1"
  group = "stable"
  address = "198.18.0.12"
  mac = "02:00:c6:12:00:0c"
  [[services.backends]]
  name = "s2"
  group = "stable"
  address = "198.18.0.13"
  mac = "02:00:c6:12:00:0d"
  [[services.backends]]
  name = "k0"
  group = "canary"
  address = "198.18.0.21"
  mac = "02:00:c6:12:00:15"
  [[services.backends]]
  name = "k1"
  group = "canary"
  address = "198.18.0.22"
  mac = "02:00:c6:12:00:16"
"#;

const NODES: usize = 3;
const FLOWS_PER_WEIGHT: u16 = 400;

/// One balancer node: its own loaded program and its own programmer.
struct Node {
    dataplane: Dataplane,
    programmer: Programmer,
}

/// The services of `config` as the daemon places them, every backend up, at weight 0.
fn desired(config: &Config) -> Vec<ServiceSpec> {
    config
        .services
        .iter()
        .map(|s| ServiceSpec {
            name: s.name.clone(),
            vip: s.vip,
            protocol: s.protocol,
            affinity: s.affinity,
            forwarding: s.forwarding,
            backends: s
                .backends
                .iter()
                .map(|b| BackendSpec {
                    name: b.name.clone(),
                    group: b.group,
                    mac: b.mac.expect("the test config gives every MAC"),
                    // Direct server return on the segment: no tunnel.
                    tunnel: Tunnel::default(),
                    up: true,
                })
                .collect(),
            initial_control: control(config, Weight::ZERO),
        })
        .collect()
}

fn control(config: &Config, weight: Weight) -> ServiceControl {
    ServiceControl {
        canary_weight: weight.basis_points(),
        _pad: 0,
        reset_epoch_ns: 0,
        heartbeat_ns: monotonic_ns(),
        heartbeat_timeout_ns: u64::try_from(config.dataplane.heartbeat_timeout.as_nanos())
            .unwrap_or(u64::MAX),
    }
}

impl Node {
    fn start(config: &Config) -> Node {
        let mut dataplane = Dataplane::load_or_panic(LoadOptions::default());
        DataPlane::set_global_config(
            &mut dataplane,
            &global_config(GlobalConfig::default(), &config.dataplane, Some(LB_MAC)),
        )
        .expect("CONFIG written");
        let mut programmer = Programmer::new();
        programmer
            .program(&mut dataplane, &desired(config))
            .expect("the daemon's programmer writes the maps");
        Node {
            dataplane,
            programmer,
        }
    }

    /// The weight as a node applies a rollout document: the service's `CONTROL` entry.
    fn apply_weight(&mut self, config: &Config, weight: Weight) {
        let index = self
            .programmer
            .service_index("sentiment")
            .expect("service placed");
        self.dataplane
            .apply(&[MapWrite::Control {
                index,
                control: control(config, weight),
            }])
            .expect("CONTROL written");
    }
}

#[test]
fn three_loaded_programs_pick_the_same_group_and_backend_at_every_weight() {
    let config = Config::from_toml_str(CONFIG).expect("the test config is valid");
    let mut nodes: Vec<Node> = (0..NODES).map(|_| Node::start(&config)).collect();
    let by_mac: BTreeMap<[u8; 6], (&str, Group)> = config.services[0]
        .backends
        .iter()
        .map(|b| (b.mac.unwrap(), (b.name.as_str(), b.group)))
        .collect();
    let vip = v4(198, 18, 0, 100);
    let vip_addr = SocketAddr::from((Ipv4Addr::new(198, 18, 0, 100), 8080));
    let hash_seed = config.dataplane.hash_seed;
    for (w, percent) in [0.0, 10.0, 25.0, 50.0, 75.0, 100.0].into_iter().enumerate() {
        let weight = Weight::from_percent(percent).expect("a weight");
        for node in &mut nodes {
            node.apply_weight(&config, weight);
        }
        let mut groups: BTreeMap<Group, u32> = BTreeMap::new();
        let mut backends: BTreeMap<&str, u32> = BTreeMap::new();
        for i in 0..FLOWS_PER_WEIGHT {
            // A new 5-tuple per weight (a tuple seen before is pinned by the flow table).
            let client = Ipv4Addr::new(198, 18, 1 + w as u8, (i % 200) as u8 + 1);
            let sport = 20_000 + i * 7;
            let tuple = Tuple::tcp(
                v4(198, 18, 1 + w as u8, (i % 200) as u8 + 1),
                sport,
                vip,
                8080,
            );
            let frame = tuple.frame();
            let answers: Vec<(&str, Group)> = nodes
                .iter()
                .enumerate()
                .map(|(n, node)| {
                    let run = node.dataplane.run_or_panic(&frame);
                    assert_eq!(
                        run.action,
                        XDP_TX,
                        "node {n}, {tuple:?} at {percent}%: {}",
                        action_name(run.action)
                    );
                    let mac: [u8; 6] = run.output[..6].try_into().unwrap();
                    let chosen = *by_mac
                        .get(&mac)
                        .unwrap_or_else(|| panic!("node {n} sent to unknown MAC {mac:02x?}"));
                    // What `canary route` on this node says for the flow.
                    let route = node
                        .programmer
                        .route(
                            SocketAddr::new(IpAddr::V4(client), sport),
                            vip_addr,
                            config.services[0].protocol,
                            hash_seed,
                            &control(&config, weight),
                            monotonic_ns(),
                        )
                        .expect("a route");
                    assert_eq!(
                        (route.backend.as_ref().map(|b| b.name.as_str()), route.group),
                        (Some(chosen.0), chosen.1),
                        "node {n}: the program and `canary route` disagree on {tuple:?}"
                    );
                    chosen
                })
                .collect();
            assert!(
                answers.iter().all(|a| *a == answers[0]),
                "{tuple:?} at {percent}%: the nodes disagree: {answers:?}"
            );
            *groups.entry(answers[0].1).or_default() += 1;
            *backends.entry(answers[0].0).or_default() += 1;
        }
        let canary = f64::from(groups.get(&Group::Canary).copied().unwrap_or(0))
            / f64::from(FLOWS_PER_WEIGHT);
        println!("{percent}%: same answer on {NODES} nodes for {FLOWS_PER_WEIGHT} flows; canary share {canary:.3}; {backends:?}");
        assert!(
            (canary - percent / 100.0).abs() <= 0.07,
            "canary share {canary} at weight {percent}%"
        );
        if percent > 0.0 && percent < 100.0 {
            assert_eq!(
                backends.len(),
                5,
                "every backend chosen at {percent}%: {backends:?}"
            );
        }
    }
}
