//! The lab's layout, computed from its spec: names, addresses, MACs. Pure, no I/O.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::LabError;

/// Every name the lab creates starts with this, then the tag: `cnry-<tag>-...`.
pub const NAME_PREFIX: &str = "cnry-";
/// Longest tag: keeps `cnry-<tag>-xNN` within the kernel's 15-byte interface name limit.
pub const MAX_TAG_LEN: usize = 6;
/// Where labs keep their record, logs and bpffs mount: `<STATE_ROOT>/<tag>/`.
pub const STATE_ROOT: &str = "/run/canary-lab";
/// The service address, held by the load balancer (on its veth) and by every backend (on `lo`).
pub const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);
/// The IPv6 service address (see [`ipv6_of`]): the lab is dual-stack.
pub const VIP6: Ipv6Addr = ipv6_of(VIP);
/// IPv6 addresses are configured with this prefix length: all of the lab's `2001:db8::/64` is
/// on-link.
pub const PREFIX_LEN6: u8 = 64;
/// The port the lab's model servers listen on.
pub const SERVICE_PORT: u16 = 8080;
/// Host addresses are configured with this prefix length: all of 198.18.0.0/15 is on-link, so
/// extra client addresses (198.19.x.y) and DSR replies need no routes.
pub const PREFIX_LEN: u8 = 15;
/// Name of the lab veth inside every namespace.
pub const NETNS_IFNAME: &str = "eth0";

/// The IPv6 address of a lab IPv4 address: each decimal byte written as a hex group, in
/// `2001:db8::/64`, so that `198.18.0.11` is `2001:db8::198:18:0:11`.
pub const fn ipv6_of(v4: Ipv4Addr) -> Ipv6Addr {
    const fn group(b: u8) -> u16 {
        (b / 100) as u16 * 0x100 + (b / 10 % 10) as u16 * 0x10 + (b % 10) as u16
    }
    let o = v4.octets();
    Ipv6Addr::new(
        0x2001,
        0xdb8,
        0,
        0,
        group(o[0]),
        group(o[1]),
        group(o[2]),
        group(o[3]),
    )
}

/// The IPv6 address of a routed lab's address (in `ROUTED_SUBNET`): its last byte, written as
/// [`ipv6_of`] does, in `ROUTED_SUBNET6`, so that `198.19.100.11` is `2001:db8:100::11`.
pub const fn routed_ipv6_of(v4: Ipv4Addr) -> Ipv6Addr {
    let last = ipv6_of(v4).segments()[7];
    let p = ROUTED_SUBNET6.segments();
    Ipv6Addr::new(p[0], p[1], p[2], p[3], 0, 0, 0, last)
}

const LB_ADDRESS: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// The router of a routed lab, on the balancers' segment.
pub const ROUTER_ADDRESS: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// The backends' subnet of a routed lab (`/24`; the router is `.1`). Client extra addresses
/// (198.19.<client>.x, at most 40 clients) never reach it.
pub const ROUTED_SUBNET: Ipv4Addr = Ipv4Addr::new(198, 19, 100, 0);
pub const ROUTED_PREFIX_LEN: u8 = 24;
/// The router's address in the backends' subnet.
pub const ROUTED_GATEWAY: Ipv4Addr = Ipv4Addr::new(198, 19, 100, 1);
/// The MSS backends of a routed lab advertise (`advmss` on their route to the clients): a
/// 1500-byte MTU less 20 bytes of outer IPv4 header, 20 of IPv4 and 20 of TCP.
pub const ROUTED_ADVMSS: u16 = 1440;
/// The backends' IPv6 subnet of a routed lab (`/64`, apart from the on-link `2001:db8::/64` of
/// the rest of the lab), named after `ROUTED_SUBNET`'s third byte (see [`routed_ipv6_of`]).
pub const ROUTED_SUBNET6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 0);
/// The router's IPv6 address in the backends' subnet: `2001:db8:100::1`.
pub const ROUTED_GATEWAY6: Ipv6Addr = routed_ipv6_of(ROUTED_GATEWAY);
/// The IPv6 MSS of a routed lab's backends: 1500 less 40 bytes of outer IPv6 header, 40 of IPv6
/// and 20 of TCP.
pub const ROUTED_ADVMSS6: u16 = 1400;
/// The etcd namespace of a lab with several balancers.
const ETCD_ADDRESS: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 9);
/// Most balancer namespaces in one lab (198.18.0.2 to .7).
pub const MAX_BALANCERS: usize = 6;
const STABLE_BASE: u8 = 11;
const CANARY_BASE: u8 = 31;
const CLIENT_BASE: u8 = 51;
/// Most nodes per role, so that each role's addresses stay in its own block.
pub const MAX_BACKENDS_PER_GROUP: usize = 19;
pub const MAX_CLIENTS: usize = 40;
pub const MAX_EXTRA_ADDRESSES: usize = 250;

/// What a namespace is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Client,
    LoadBalancer,
    Stable,
    Canary,
    /// The etcd of a lab with several balancers (cluster mode).
    Etcd,
    /// The router between the balancers' segment and the backends' subnet (routed labs).
    Router,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Client => "client",
            Role::LoadBalancer => "load-balancer",
            Role::Stable => "stable",
            Role::Canary => "canary",
            Role::Etcd => "etcd",
            Role::Router => "router",
        })
    }
}

/// Whether the lab attaches its own `XDP_PASS` program to the load balancer's bridge-side veth.
///
/// `XDP_TX` out of a veth only delivers when the peer veth runs a native XDP program.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PeerXdp {
    /// Load a two-instruction `XDP_PASS` program and pin its link in the lab's bpffs.
    #[default]
    Builtin,
    /// Attach nothing; call `Lab::attach_peer_xdp_with` / `attach_peer_xdp_command` instead.
    None,
}

/// What to build.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LabSpec {
    /// 1 to 6 characters of `[a-z0-9]`; separates concurrent labs.
    pub tag: String,
    pub clients: usize,
    pub stable: usize,
    pub canary: usize,
    /// Create the load-balancer namespace (tests of plain connectivity may skip it).
    pub load_balancer: bool,
    /// Extra addresses per client veth, to emulate many client IPs from one namespace.
    pub client_extra_addresses: usize,
    pub peer_xdp: PeerXdp,
    /// Balancer namespaces (with `load_balancer`). Above 1, clients reach the VIP through an
    /// ECMP multipath route over all of them (L4 hash), and an etcd namespace (`kv`) is added.
    pub balancers: usize,
    /// Backends in subnets of their own (`ROUTED_SUBNET`, `ROUTED_SUBNET6`) behind a router
    /// namespace (`rt`), for `forwarding = "ipip"`; each backend runs the IP-in-IP
    /// decapsulation program.
    pub routed: bool,
}

impl Default for LabSpec {
    fn default() -> Self {
        Self {
            tag: "lab".into(),
            clients: 2,
            stable: 3,
            canary: 2,
            load_balancer: true,
            client_extra_addresses: 0,
            peer_xdp: PeerXdp::Builtin,
            balancers: 1,
            routed: false,
        }
    }
}

impl LabSpec {
    /// A spec with the default shape and the given tag.
    pub fn new(tag: impl Into<String>) -> Self {
        Self {
            tag: tag.into(),
            ..Self::default()
        }
    }

    /// A tag unlikely to be in use by another test of this or another process:
    /// `prefix` (one character) plus five base-36 digits from the PID and a per-process counter.
    pub fn unique_tag(prefix: char) -> String {
        use std::sync::atomic::{AtomicU32, Ordering};
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = std::process::id().wrapping_mul(131) + COUNTER.fetch_add(1, Ordering::Relaxed);
        let mut digits = String::new();
        let mut v = n % 36u32.pow(5);
        for _ in 0..5 {
            digits.insert(0, char::from_digit(v % 36, 36).expect("digit below 36"));
            v /= 36;
        }
        format!("{}{digits}", prefix.to_ascii_lowercase())
    }

    pub fn validate(&self) -> Result<(), LabError> {
        let bad_tag = self.tag.is_empty()
            || self.tag.len() > MAX_TAG_LEN
            || !self
                .tag
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if bad_tag {
            return Err(LabError::Spec(format!(
                "tag `{}` must be 1 to {MAX_TAG_LEN} characters of a-z and 0-9 \
                 (it is part of 15-byte interface names)",
                self.tag
            )));
        }
        let limits = [
            ("clients", self.clients, 1, MAX_CLIENTS),
            ("stable", self.stable, 0, MAX_BACKENDS_PER_GROUP),
            ("canary", self.canary, 0, MAX_BACKENDS_PER_GROUP),
            (
                "client_extra_addresses",
                self.client_extra_addresses,
                0,
                MAX_EXTRA_ADDRESSES,
            ),
            ("balancers", self.balancers, 1, MAX_BALANCERS),
        ];
        for (key, value, min, max) in limits {
            if !(min..=max).contains(&value) {
                return Err(LabError::Spec(format!(
                    "`{key}` is {value}: give a number from {min} to {max}"
                )));
            }
        }
        Ok(())
    }
}

/// A MAC address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl Serialize for MacAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        canary_userspace::domain::parse_mac(&s)
            .map(MacAddr)
            .ok_or_else(|| serde::de::Error::custom(format!("bad MAC address `{s}`")))
    }
}

/// One namespace of the lab and its link to the bridge.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub role: Role,
    /// Index within its role.
    pub index: usize,
    /// Short name within the lab: `lb`, `c0`, `s0`, `k0` (canary).
    pub name: String,
    /// Network namespace: `cnry-<tag>-<name>`.
    pub netns: String,
    /// The veth inside the namespace (`eth0`).
    pub ifname: String,
    /// Its peer on the bridge, in the host namespace (same as `netns`).
    pub host_ifname: String,
    /// Address on `eth0` (with prefix length `PREFIX_LEN`).
    pub address: Ipv4Addr,
    /// MAC of `eth0` (fixed, so configs can name backends' MACs).
    pub mac: MacAddr,
    /// More addresses on `eth0` (clients only), to bind as distinct client sources.
    pub extra_addresses: Vec<Ipv4Addr>,
    /// IPv6 address on `eth0` (with prefix length `PREFIX_LEN6`): `ipv6_of(address)`, or
    /// `routed_ipv6_of(address)` for a routed lab's backends.
    #[serde(default = "unspecified6")]
    pub address6: Ipv6Addr,
}

fn unspecified6() -> Ipv6Addr {
    Ipv6Addr::UNSPECIFIED
}

impl Node {
    /// `http://<address>:8080<path>` on this node.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}:{SERVICE_PORT}{path}", self.address)
    }

    /// `http://[<address6>]:8080<path>` on this node.
    pub fn url6(&self, path: &str) -> String {
        format!("http://[{}]:{SERVICE_PORT}{path}", self.address6)
    }

    /// Every address this node sends from.
    pub fn source_addresses(&self) -> Vec<Ipv4Addr> {
        std::iter::once(self.address)
            .chain(self.extra_addresses.iter().copied())
            .collect()
    }

    /// Every IPv6 address this node sends from: `address6`, then the extra addresses by
    /// `ipv6_of`.
    pub fn source_addresses6(&self) -> Vec<Ipv6Addr> {
        std::iter::once(self.address6)
            .chain(self.extra_addresses.iter().copied().map(ipv6_of))
            .collect()
    }
}

/// Everything the lab will consist of.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabPlan {
    pub spec: LabSpec,
    pub bridge: String,
    pub state_dir: PathBuf,
    pub bpffs: PathBuf,
    pub vip: Ipv4Addr,
    /// The IPv6 VIP, held like `vip`.
    #[serde(default = "unspecified6")]
    pub vip6: Ipv6Addr,
    pub load_balancer: Option<Node>,
    /// Balancers after the first (`lb1`, `lb2`, ...), in a lab with several.
    #[serde(default)]
    pub more_balancers: Vec<Node>,
    /// The etcd namespace, in a lab with several balancers.
    #[serde(default)]
    pub etcd: Option<Node>,
    pub clients: Vec<Node>,
    pub stable: Vec<Node>,
    pub canary: Vec<Node>,
    /// The router of a routed lab (`rt`: `eth0` on the bridge, `eth1` on the backends' bridge).
    #[serde(default)]
    pub router: Option<Node>,
    /// The backends' bridge of a routed lab (`cnry-<tag>-bb`).
    #[serde(default)]
    pub backend_bridge: Option<String>,
}

pub(super) fn mac_for(address: Ipv4Addr) -> MacAddr {
    // Locally administered, unicast; the address's last three bytes keep it unique in the lab.
    let o = address.octets();
    MacAddr([0x02, 0xc4, 0x4e, o[1], o[2], o[3]])
}

impl LabPlan {
    pub fn new(spec: &LabSpec) -> Result<Self, LabError> {
        spec.validate()?;
        let tag = &spec.tag;
        let node = |role: Role, index: usize, name: String, address: Ipv4Addr, extra: usize| {
            let netns = format!("{NAME_PREFIX}{tag}-{name}");
            let extra_addresses = (0..extra)
                .map(|j| Ipv4Addr::new(198, 19, index as u8, (j + 1) as u8))
                .collect();
            Node {
                role,
                index,
                name,
                host_ifname: netns.clone(),
                netns,
                ifname: NETNS_IFNAME.into(),
                address,
                // A routed lab's backends are in an IPv6 subnet of their own as well.
                address6: if spec.routed && matches!(role, Role::Stable | Role::Canary) {
                    routed_ipv6_of(address)
                } else {
                    ipv6_of(address)
                },
                mac: mac_for(address),
                extra_addresses,
            }
        };
        let host = |base: u8, i: usize| Ipv4Addr::new(198, 18, 0, base + i as u8);
        let backend = |base: u8, i: usize| {
            if spec.routed {
                let o = ROUTED_SUBNET.octets();
                Ipv4Addr::new(o[0], o[1], o[2], base + i as u8)
            } else {
                host(base, i)
            }
        };
        let state_dir = PathBuf::from(STATE_ROOT).join(tag);
        Ok(Self {
            bridge: format!("{NAME_PREFIX}{tag}-br"),
            bpffs: state_dir.join("bpffs"),
            state_dir,
            vip: VIP,
            vip6: VIP6,
            load_balancer: spec
                .load_balancer
                .then(|| node(Role::LoadBalancer, 0, "lb".into(), LB_ADDRESS, 0)),
            more_balancers: if spec.load_balancer {
                (1..spec.balancers)
                    .map(|i| {
                        let o = LB_ADDRESS.octets();
                        let address = Ipv4Addr::new(o[0], o[1], o[2], o[3] + i as u8);
                        node(Role::LoadBalancer, i, format!("lb{i}"), address, 0)
                    })
                    .collect()
            } else {
                Vec::new()
            },
            etcd: (spec.load_balancer && spec.balancers > 1)
                .then(|| node(Role::Etcd, 0, "kv".into(), ETCD_ADDRESS, 0)),
            clients: (0..spec.clients)
                .map(|i| {
                    node(
                        Role::Client,
                        i,
                        format!("c{i}"),
                        host(CLIENT_BASE, i),
                        spec.client_extra_addresses,
                    )
                })
                .collect(),
            stable: (0..spec.stable)
                .map(|i| node(Role::Stable, i, format!("s{i}"), backend(STABLE_BASE, i), 0))
                .collect(),
            canary: (0..spec.canary)
                .map(|i| node(Role::Canary, i, format!("k{i}"), backend(CANARY_BASE, i), 0))
                .collect(),
            router: spec
                .routed
                .then(|| node(Role::Router, 0, "rt".into(), ROUTER_ADDRESS, 0)),
            backend_bridge: spec.routed.then(|| format!("{NAME_PREFIX}{tag}-bb")),
            spec: spec.clone(),
        })
    }

    /// Every node: load balancer first, then clients, stable, canary.
    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.load_balancer
            .iter()
            .chain(&self.more_balancers)
            .chain(&self.etcd)
            .chain(&self.router)
            .chain(&self.clients)
            .chain(&self.stable)
            .chain(&self.canary)
    }

    /// Stable then canary backends.
    /// Every balancer: `lb` first, then `lb1`, `lb2`, ...
    pub fn balancers(&self) -> impl Iterator<Item = &Node> {
        self.load_balancer.iter().chain(&self.more_balancers)
    }

    pub fn backends(&self) -> impl Iterator<Item = &Node> {
        self.stable.iter().chain(&self.canary)
    }

    /// The names prefix of everything this lab creates: `cnry-<tag>-`.
    pub fn name_prefix(&self) -> String {
        format!("{NAME_PREFIX}{}-", self.spec.tag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn in_benchmark_range(a: Ipv4Addr) -> bool {
        let o = a.octets();
        o[0] == 198 && (o[1] == 18 || o[1] == 19)
    }

    #[test]
    fn largest_lab_fits_names_and_addresses() {
        let spec = LabSpec {
            tag: "abcdef".into(),
            clients: MAX_CLIENTS,
            stable: MAX_BACKENDS_PER_GROUP,
            canary: MAX_BACKENDS_PER_GROUP,
            client_extra_addresses: MAX_EXTRA_ADDRESSES,
            balancers: MAX_BALANCERS,
            ..LabSpec::default()
        };
        let plan = LabPlan::new(&spec).unwrap();
        assert!(plan.bridge.len() <= 15);
        let mut names = HashSet::new();
        let mut addresses = HashSet::new();
        let mut macs = HashSet::new();
        let mut addresses6 = HashSet::new();
        for n in plan.nodes() {
            assert!(n.host_ifname.len() <= 15, "{}", n.host_ifname);
            assert!(n.host_ifname.starts_with("cnry-abcdef-"));
            assert!(names.insert(n.netns.clone()));
            assert!(macs.insert(n.mac));
            assert_eq!(n.mac.0[0] & 0x03, 0x02, "locally administered unicast");
            for a in n.source_addresses() {
                assert!(in_benchmark_range(a), "{a}");
                assert!(addresses.insert(a), "duplicate {a}");
                assert_ne!(a, VIP);
            }
            for a in n.source_addresses6() {
                assert_eq!(a.segments()[..4], [0x2001, 0xdb8, 0, 0], "{a}");
                assert!(addresses6.insert(a), "duplicate {a}");
                assert_ne!(a, VIP6);
            }
            assert_eq!(n.address6, n.source_addresses6()[0]);
        }
        assert_eq!(
            plan.nodes().count(),
            MAX_BALANCERS + 1 + MAX_CLIENTS + 2 * MAX_BACKENDS_PER_GROUP
        );
        assert!(in_benchmark_range(plan.vip));
    }

    #[test]
    fn default_layout() {
        let plan = LabPlan::new(&LabSpec::new("t1")).unwrap();
        let lb = plan.load_balancer.as_ref().unwrap();
        assert_eq!(lb.netns, "cnry-t1-lb");
        assert_eq!(lb.address, Ipv4Addr::new(198, 18, 0, 2));
        assert_eq!(plan.stable[0].address, Ipv4Addr::new(198, 18, 0, 11));
        assert_eq!(
            plan.stable[0].url("/healthz"),
            "http://198.18.0.11:8080/healthz"
        );
        assert_eq!(
            plan.stable[0].url6("/healthz"),
            "http://[2001:db8::198:18:0:11]:8080/healthz"
        );
        assert_eq!(plan.vip6.to_string(), "2001:db8::198:18:0:100");
        assert_eq!(
            ipv6_of(Ipv4Addr::new(198, 19, 39, 250)).to_string(),
            "2001:db8::198:19:39:250"
        );
        assert_eq!(plan.canary[1].netns, "cnry-t1-k1");
        assert_eq!(plan.canary[1].mac.to_string(), "02:c4:4e:12:00:20");
        assert_eq!(plan.clients.len(), 2);
        assert_eq!(plan.bpffs, PathBuf::from("/run/canary-lab/t1/bpffs"));
        let json = serde_json::to_string(&plan).unwrap();
        assert_eq!(serde_json::from_str::<LabPlan>(&json).unwrap(), plan);
    }

    #[test]
    fn routed_backends_are_in_subnets_of_their_own() {
        let spec = LabSpec {
            routed: true,
            stable: MAX_BACKENDS_PER_GROUP,
            canary: MAX_BACKENDS_PER_GROUP,
            client_extra_addresses: MAX_EXTRA_ADDRESSES,
            clients: MAX_CLIENTS,
            ..LabSpec::new("t2")
        };
        let plan = LabPlan::new(&spec).unwrap();
        let on_link6 = |a: Ipv6Addr| a.segments()[..4] == [0x2001, 0xdb8, 0, 0];
        let routed6 = |a: Ipv6Addr| a.segments()[..4] == ROUTED_SUBNET6.segments()[..4];
        let routed4 = |a: Ipv4Addr| a.octets()[..3] == ROUTED_SUBNET.octets()[..3];
        assert_eq!(plan.stable[0].address6.to_string(), "2001:db8:100::11");
        assert_eq!(ROUTED_GATEWAY6.to_string(), "2001:db8:100::1");
        assert!(routed6(ROUTED_GATEWAY6));
        let mut addresses6 = HashSet::new();
        for n in plan.nodes() {
            let backend = matches!(n.role, Role::Stable | Role::Canary);
            for a in n.source_addresses() {
                assert!(in_benchmark_range(a), "{a}");
                assert_eq!(routed4(a), backend, "{} {a}", n.name);
            }
            for a in n.source_addresses6() {
                assert_eq!(a.segments()[..2], [0x2001, 0xdb8], "{a}");
                assert!(addresses6.insert(a), "duplicate {a}");
                assert_eq!(routed6(a), backend, "{} {a}", n.name);
                assert_eq!(on_link6(a), !backend, "{} {a}", n.name);
            }
        }
        assert!(on_link6(plan.vip6));
    }

    #[test]
    fn bad_specs_are_refused() {
        for tag in ["", "toolong7", "Upper", "a-b"] {
            assert!(LabPlan::new(&LabSpec::new(tag)).is_err(), "{tag}");
        }
        let too_many = LabSpec {
            stable: 20,
            ..LabSpec::new("x")
        };
        let err = LabPlan::new(&too_many).unwrap_err().to_string();
        assert!(err.contains("`stable` is 20"), "{err}");
        assert!(LabPlan::new(&LabSpec {
            clients: 0,
            ..LabSpec::new("x")
        })
        .is_err());
    }

    #[test]
    fn unique_tags_are_valid_and_distinct() {
        let a = LabSpec::unique_tag('t');
        let b = LabSpec::unique_tag('t');
        assert_ne!(a, b);
        assert!(LabSpec::new(a).validate().is_ok());
    }
}
