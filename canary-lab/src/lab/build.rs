//! Building a lab from its plan: the bpffs mount, the bridge, and each node's namespace, veth,
//! addresses, routes and sysctls. Every step is recorded before it is made and skipped when it
//! already exists, so re-running completes a partly built lab.

use super::cmd::{self, path_str};
use super::error::io_err;
use super::{Lab, LabError, Node, PeerXdp, Role, NETNS_IFNAME, PREFIX_LEN6};

impl Lab {
    pub(super) fn build(&self) -> Result<(), LabError> {
        let plan = &self.plan;
        // bpffs in the host mount namespace: pins made by processes under `ip netns exec` (which
        // gives them a private /sys) land here and survive those processes.
        std::fs::create_dir_all(&plan.bpffs)
            .map_err(io_err(format!("create {}", plan.bpffs.display())))?;
        if !cmd::mounts_under(&plan.bpffs).contains(&plan.bpffs) {
            self.with_record(|r| r.mounts.insert(plan.bpffs.clone()))?;
            cmd::run("mount", &["-t", "bpf", "bpf", path_str(&plan.bpffs)])?;
        }

        for bridge in std::iter::once(&plan.bridge).chain(&plan.backend_bridge) {
            self.build_bridge(bridge)?;
        }
        let existing = cmd::netns_list()?;
        for node in plan.nodes() {
            self.build_node(node, existing.contains(&node.netns))?;
        }
        if plan.load_balancer.is_some() && plan.spec.peer_xdp == PeerXdp::Builtin {
            self.attach_builtin_peer_xdp()?;
        }
        if plan.spec.routed {
            self.build_routes()?;
        }
        Ok(())
    }

    /// A bridge in the host namespace, recorded first (for teardown), left as is if present.
    fn build_bridge(&self, name: &str) -> Result<(), LabError> {
        if !cmd::host_link_exists(name) {
            self.with_record(|r| r.links.insert(name.to_owned()))?;
            // Bridged lab frames must not go through the host's iptables (br_netfilter).
            cmd::run(
                "ip",
                &[
                    "link",
                    "add",
                    "name",
                    name,
                    "type",
                    "bridge",
                    "nf_call_iptables",
                    "0",
                    "nf_call_ip6tables",
                    "0",
                    "nf_call_arptables",
                    "0",
                ],
            )?;
        }
        cmd::host_sysctl(&format!("net.ipv6.conf.{name}.disable_ipv6"), "1")?;
        cmd::run("ip", &["link", "set", name, "up"]).map(drop)
    }

    fn build_node(&self, node: &Node, netns_exists: bool) -> Result<(), LabError> {
        let ns = node.netns.as_str();
        if !netns_exists {
            self.with_record(|r| r.namespaces.insert(node.netns.clone()))?;
            cmd::run("ip", &["netns", "add", ns])?;
        }
        if !cmd::host_link_exists(&node.host_ifname) {
            // A half-made pair from an interrupted run: its namespace end would block the name.
            if cmd::netns_links(ns)?.contains(NETNS_IFNAME) {
                cmd::run("ip", &["-n", ns, "link", "del", NETNS_IFNAME])?;
            }
            self.with_record(|r| r.links.insert(node.host_ifname.clone()))?;
            cmd::run(
                "ip",
                &[
                    "link",
                    "add",
                    &node.host_ifname,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    NETNS_IFNAME,
                    "netns",
                    ns,
                ],
            )?;
        }
        cmd::host_sysctl(
            &format!("net.ipv6.conf.{}.disable_ipv6", node.host_ifname),
            "1",
        )?;
        cmd::run(
            "ip",
            &[
                "link",
                "set",
                &node.host_ifname,
                "master",
                self.bridge_of(node),
                "up",
            ],
        )?;

        let ip_n = |args: &[&str]| -> Result<String, LabError> {
            let mut all = vec!["-n", ns];
            all.extend_from_slice(args);
            cmd::run("ip", &all)
        };
        ip_n(&["link", "set", "lo", "up"])?;
        let mac = node.mac.to_string();
        ip_n(&["link", "set", NETNS_IFNAME, "address", &mac])?;

        let mut sysctls = Vec::new();
        // Dual-stack: IPv6 on, its addresses usable at once (no duplicate address detection),
        // and no router solicitations or advertisements (the lab has no router).
        for dev in ["all", "default", NETNS_IFNAME] {
            for (key, value) in [
                ("disable_ipv6", "0"),
                ("accept_dad", "0"),
                ("dad_transmits", "0"),
                ("router_solicitations", "0"),
                ("accept_ra", "0"),
            ] {
                sysctls.push(format!("net.ipv6.conf.{dev}.{key}={value}"));
            }
        }
        sysctls.extend([
            // Replies from the VIP arrive on an interface that does not hold it (DSR).
            "net.ipv4.conf.all.rp_filter=0".to_owned(),
            "net.ipv4.conf.default.rp_filter=0".to_owned(),
            format!("net.ipv4.conf.{NETNS_IFNAME}.rp_filter=0"),
        ]);
        if matches!(node.role, Role::Stable | Role::Canary) {
            // Only the load balancer may answer ARP for the VIP. (IPv6 needs no setting: a
            // host answers neighbour solicitations only for addresses on the interface they
            // arrive on, and solicits from an address of the outgoing interface, so the IPv6
            // VIP on `lo` is never announced on `eth0`.)
            for dev in ["all", NETNS_IFNAME, "lo"] {
                sysctls.push(format!("net.ipv4.conf.{dev}.arp_ignore=1"));
                sysctls.push(format!("net.ipv4.conf.{dev}.arp_announce=2"));
            }
        }
        let mut args = vec!["netns", "exec", ns, "sysctl", "-q", "-w"];
        args.extend(sysctls.iter().map(String::as_str));
        cmd::run("ip", &args)?;

        ip_n(&["link", "set", NETNS_IFNAME, "up"])?;
        for a in node.source_addresses() {
            let cidr = format!("{a}/{}", self.prefix_len_of(node));
            ip_n(&["addr", "replace", &cidr, "dev", NETNS_IFNAME])?;
        }
        for a in node.source_addresses6() {
            let cidr = format!("{a}/{PREFIX_LEN6}");
            ip_n(&["addr", "replace", &cidr, "dev", NETNS_IFNAME, "nodad"])?;
        }
        let vip = format!("{}/32", self.plan.vip);
        let vip6 = format!("{}/128", self.plan.vip6);
        // The IPv6 VIP is deprecated (`preferred_lft 0`): still answered for and received on,
        // never picked as the source of the node's own connections or neighbour solicitations.
        // (Source selection prefers the longest matching prefix, and a /128 VIP beats the
        // node's /64 address: the daemon's probes would leave from the VIP and their answers
        // go to a backend's own `lo`.)
        let vip6_args = [
            "addr",
            "replace",
            vip6.as_str(),
            "preferred_lft",
            "0",
            "nodad",
        ];
        let several = !self.plan.more_balancers.is_empty();
        match node.role {
            // With several balancers clients route the VIP through them (no ARP for it).
            Role::LoadBalancer if several => {}
            Role::LoadBalancer => {
                ip_n(&["addr", "replace", &vip, "dev", NETNS_IFNAME])?;
                ip_n(&[&vip6_args[..], &["dev", NETNS_IFNAME]].concat())?;
            }
            Role::Etcd | Role::Router => {}
            Role::Stable | Role::Canary if self.plan.spec.routed => {
                // Replies go through the router (routes added with the router).
                ip_n(&["addr", "replace", &vip, "dev", "lo"])?;
                ip_n(&[&vip6_args[..], &["dev", "lo"]].concat())?;
            }
            Role::Stable | Role::Canary => {
                ip_n(&["addr", "replace", &vip, "dev", "lo"])?;
                ip_n(&[&vip6_args[..], &["dev", "lo"]].concat())?;
                // Replies leave straight for the client over the bridge.
                ip_n(&["route", "replace", "default", "dev", NETNS_IFNAME])?;
            }
            Role::Client => {
                // Checksums left to offload are lost through XDP_TX: finish them in software.
                cmd::run(
                    "ip",
                    &[
                        "netns",
                        "exec",
                        ns,
                        "ethtool",
                        "-K",
                        NETNS_IFNAME,
                        "tx",
                        "off",
                    ],
                )?;
                if several {
                    // L4 multipath hash: each connection picks a balancer by its 5-tuple.
                    cmd::run(
                        "ip",
                        &[
                            "netns",
                            "exec",
                            ns,
                            "sysctl",
                            "-q",
                            "-w",
                            "net.ipv4.fib_multipath_hash_policy=1",
                            "net.ipv6.fib_multipath_hash_policy=1",
                        ],
                    )?;
                    let all: Vec<&str> = self.plan.balancers().map(|b| b.name.as_str()).collect();
                    self.route_vip_in(ns, &all)?;
                }
            }
        }
        Ok(())
    }

    /// Routes the VIP from every client over exactly the named balancers (`lb`, `lb1`, ...):
    /// a balancer takes traffic only once it is in this route.
    pub fn route_vip_via(&self, balancers: &[&str]) -> Result<(), LabError> {
        for c in &self.plan.clients {
            self.route_vip_in(&c.netns, balancers)?;
        }
        Ok(())
    }

    /// Every balancer namespace (`lb`, then `lb1`, `lb2`, ...).
    pub fn balancers(&self) -> impl Iterator<Item = &Node> {
        self.plan.balancers()
    }

    /// The etcd namespace (labs with several balancers).
    pub fn etcd_node(&self) -> Option<&Node> {
        self.plan.etcd.as_ref()
    }

    /// The VIP's route in client namespace `ns`: one next hop per named balancer (ECMP), or
    /// none (the VIP unreachable) when `balancers` is empty.
    pub(super) fn route_vip_in(&self, ns: &str, balancers: &[&str]) -> Result<(), LabError> {
        let chosen: Vec<&Node> = self
            .plan
            .balancers()
            .filter(|b| balancers.contains(&b.name.as_str()))
            .collect();
        let routes = [
            (
                format!("{}/32", self.plan.vip),
                chosen
                    .iter()
                    .map(|b| b.address.to_string())
                    .collect::<Vec<_>>(),
            ),
            (
                format!("{}/128", self.plan.vip6),
                chosen.iter().map(|b| b.address6.to_string()).collect(),
            ),
        ];
        for (vip, hops) in &routes {
            if hops.is_empty() {
                let _ = cmd::run("ip", &["-n", ns, "route", "del", vip]);
                continue;
            }
            let mut args = vec!["-n", ns, "route", "replace", vip.as_str()];
            for h in hops {
                args.extend(["nexthop", "via", h.as_str(), "dev", NETNS_IFNAME]);
            }
            cmd::run("ip", &args)?;
        }
        Ok(())
    }
}
