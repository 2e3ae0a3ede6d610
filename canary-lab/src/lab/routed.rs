//! The routed part of a routed lab (`LabSpec::routed`): the backends' bridge, the router's leg
//! on it, the routes between the two subnets of each family (IPv4 `198.19.100.0/24` and IPv6
//! `2001:db8:100::/64` behind the router), and the IP-in-IP decapsulation program on every backend
//! (this kernel has no `ipip`/`ip6tnl` module, so a tunnel device is not available).

use std::fs::File;
use std::os::fd::AsFd as _;
use std::path::{Path, PathBuf};

use aya::programs::links::FdLink;
use aya::programs::{Xdp, XdpMode};
use canary_common::maps;
use nix::sched::{setns, CloneFlags};

use super::plan::{
    mac_for, ROUTED_ADVMSS, ROUTED_ADVMSS6, ROUTED_GATEWAY, ROUTED_GATEWAY6, ROUTED_PREFIX_LEN,
    ROUTED_SUBNET, ROUTED_SUBNET6,
};
use super::{cmd, Lab, LabError, Node, Role, NETNS_IFNAME, PREFIX_LEN, PREFIX_LEN6};

/// Name of a backend's decapsulation link pin in the lab's bpffs: `lab_decap_<node>`.
pub const DECAP_PIN_PREFIX: &str = "lab_decap_";
/// The router's interface on the backends' bridge.
const ROUTER_BACKEND_IFNAME: &str = "eth1";

fn backend_role(node: &Node) -> bool {
    matches!(node.role, Role::Stable | Role::Canary)
}

impl Lab {
    /// The bridge a node's veth joins: the backends' one for backends of a routed lab.
    pub(super) fn bridge_of(&self, node: &Node) -> &str {
        match &self.plan.backend_bridge {
            Some(b) if backend_role(node) => b,
            _ => &self.plan.bridge,
        }
    }

    /// The prefix length of a node's address.
    pub(super) fn prefix_len_of(&self, node: &Node) -> u8 {
        if self.plan.spec.routed && backend_role(node) {
            ROUTED_PREFIX_LEN
        } else {
            PREFIX_LEN
        }
    }

    /// The router's leg on the backends' bridge, routes both ways for both families, and the
    /// decapsulation program on every backend.
    pub(super) fn build_routes(&self) -> Result<(), LabError> {
        let plan = &self.plan;
        let (Some(router), Some(bridge)) = (&plan.router, &plan.backend_bridge) else {
            return Ok(());
        };
        let rt = router.netns.as_str();
        let leg = format!("{}2", router.host_ifname);
        if !cmd::host_link_exists(&leg) {
            if cmd::netns_links(rt)?.contains(ROUTER_BACKEND_IFNAME) {
                ip_in(rt, &["link", "del", ROUTER_BACKEND_IFNAME])?;
            }
            self.with_record(|r| r.links.insert(leg.clone()))?;
            cmd::run(
                "ip",
                &[
                    "link",
                    "add",
                    &leg,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    ROUTER_BACKEND_IFNAME,
                    "netns",
                    rt,
                ],
            )?;
        }
        cmd::host_sysctl(&format!("net.ipv6.conf.{leg}.disable_ipv6"), "1")?;
        cmd::run("ip", &["link", "set", &leg, "master", bridge, "up"])?;
        let gateway_mac = mac_for(ROUTED_GATEWAY).to_string();
        let gateway = format!("{ROUTED_GATEWAY}/{ROUTED_PREFIX_LEN}");
        let gateway6 = format!("{ROUTED_GATEWAY6}/{PREFIX_LEN6}");
        let leg_in_rt = ROUTER_BACKEND_IFNAME;
        ip_in(rt, &["link", "set", leg_in_rt, "address", &gateway_mac])?;
        ip_in(rt, &["addr", "replace", &gateway, "dev", leg_in_rt])?;
        ip_in(
            rt,
            &["addr", "replace", &gateway6, "dev", leg_in_rt, "nodad"],
        )?;
        ip_in(rt, &["link", "set", leg_in_rt, "up"])?;
        sysctl_in(
            rt,
            &[
                "net.ipv4.ip_forward=1",
                "net.ipv6.conf.all.forwarding=1",
                &format!("net.ipv4.conf.{leg_in_rt}.rp_filter=0"),
            ],
        )?;

        let router_mac = router.mac.to_string();
        let subnets = [
            (
                "-4",
                format!("{ROUTED_SUBNET}/{ROUTED_PREFIX_LEN}"),
                router.address.to_string(),
            ),
            (
                "-6",
                format!("{ROUTED_SUBNET6}/{PREFIX_LEN6}"),
                router.address6.to_string(),
            ),
        ];
        for lb in plan.balancers() {
            let ns = lb.netns.as_str();
            for (family, subnet, via) in &subnets {
                // The backends' subnet is behind the router (IPv4: more specific than the
                // on-link /15; IPv6: a /64 of its own).
                ip_in(
                    ns,
                    &[
                        family,
                        "route",
                        "replace",
                        subnet,
                        "via",
                        via,
                        "dev",
                        NETNS_IFNAME,
                    ],
                )?;
                // The XDP program's FIB lookup needs the next hop's MAC resolved, and
                // forwarding on.
                ip_in(
                    ns,
                    &[
                        family,
                        "neigh",
                        "replace",
                        via,
                        "lladdr",
                        &router_mac,
                        "dev",
                        NETNS_IFNAME,
                        "nud",
                        "permanent",
                    ],
                )?;
            }
            sysctl_in(
                ns,
                &[
                    "net.ipv4.conf.all.forwarding=1",
                    "net.ipv6.conf.all.forwarding=1",
                ],
            )?;
        }

        for b in plan.backends() {
            route_replies(b, true)?;
            self.attach_decap(b)?;
        }
        Ok(())
    }

    /// Sets every backend's routes to the clients (through the router, both families), with
    /// the MSS clamp of the lab (`advmss`, see `ROUTED_ADVMSS`) or, `clamp` false, without it:
    /// clients' full-size segments then no longer fit once encapsulated.
    pub fn clamp_backends_mss(&self, clamp: bool) -> Result<(), LabError> {
        if !self.plan.spec.routed {
            return Err(LabError::Spec(
                "the MSS clamp is a routed lab's: build the lab with `routed`".into(),
            ));
        }
        self.plan
            .backends()
            .try_for_each(|b| route_replies(b, clamp))
    }

    /// The decapsulation program on a backend's `eth0` (native XDP), its link pinned in the
    /// lab's bpffs so it outlives this process.
    fn attach_decap(&self, node: &Node) -> Result<(), LabError> {
        let pin = self
            .plan
            .bpffs
            .join(format!("{DECAP_PIN_PREFIX}{}", node.name));
        if pin.exists() {
            return Ok(());
        }
        self.with_record(|r| r.pins.insert(pin.clone()))?;
        let bytes = decap_object()?;
        let netns = PathBuf::from("/run/netns").join(&node.netns);
        let fail = |reason: String| LabError::PeerXdp {
            ifname: format!("{}:{NETNS_IFNAME}", node.netns),
            reason,
        };
        // Attaching resolves the interface in the calling thread's namespace: a thread of its
        // own enters the backend's (the mount namespace, and so the bpffs, stays the host's).
        std::thread::scope(|s| {
            s.spawn(|| -> Result<(), String> {
                let target = File::open(&netns).map_err(|e| format!("{}: {e}", netns.display()))?;
                setns(target.as_fd(), CloneFlags::CLONE_NEWNET)
                    .map_err(|e| format!("entering {}: {e}", node.netns))?;
                let mut ebpf = aya::EbpfLoader::new()
                    // The balancer's maps come along with the object: keep the flow table small.
                    .map_max_entries(maps::FLOWS, 1024)
                    .load(&bytes)
                    .map_err(|e| format!("loading the object: {e}"))?;
                let program: &mut Xdp = ebpf
                    .program_mut(maps::DECAP_PROGRAM)
                    .ok_or_else(|| format!("the object has no {} program", maps::DECAP_PROGRAM))?
                    .try_into()
                    .map_err(|e| format!("{}: {e}", maps::DECAP_PROGRAM))?;
                program.load().map_err(|e| format!("verifier: {e}"))?;
                let id = program
                    .attach(NETNS_IFNAME, XdpMode::Driver)
                    .map_err(|e| format!("attach: {e}"))?;
                let link = program.take_link(id).map_err(|e| format!("link: {e}"))?;
                let link: FdLink = link.try_into().map_err(|_| "not an fd link".to_string())?;
                link.pin(&pin)
                    .map_err(|e| format!("pin {}: {e}", pin.display()))?;
                Ok(())
            })
            .join()
            .unwrap_or_else(|_| Err("the attaching thread panicked".into()))
        })
        .map_err(fail)
    }
}

/// The eBPF object: `CANARY_BPF_OBJECT`, else the workspace's release build, else the one
/// embedded in `canary-userspace`.
fn decap_object() -> Result<Vec<u8>, LabError> {
    let built = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(canary_userspace::dataplane::aya::OBJECT_BUILD_PATH);
    let path = std::env::var_os("CANARY_BPF_OBJECT").map_or(built, PathBuf::from);
    if path.is_file() {
        return std::fs::read(&path).map_err(super::error::io_err(format!(
            "read the eBPF object {}",
            path.display()
        )));
    }
    canary_userspace::dataplane::aya::embedded_object()
        .map(<[u8]>::to_vec)
        .ok_or_else(|| {
            LabError::Spec(format!(
                "a routed lab needs the eBPF object for its decapsulation program: build it with \
                 `cargo xtask build-ebpf --release` (looked for {})",
                path.display()
            ))
        })
}

/// `ip -n <ns> <args>`.
fn ip_in(ns: &str, args: &[&str]) -> Result<(), LabError> {
    cmd::run("ip", &[&["-n", ns], args].concat()).map(drop)
}

/// `sysctl -w` of every `key=value` in namespace `ns`.
fn sysctl_in(ns: &str, settings: &[&str]) -> Result<(), LabError> {
    cmd::run(
        "ip",
        &[&["netns", "exec", ns, "sysctl", "-q", "-w"], settings].concat(),
    )
    .map(drop)
}

/// A backend's default routes, IPv4 and IPv6, through the router: replies go to the clients
/// that way. With `clamp`, clients' segments must fit the balancer's MTU once encapsulated:
/// the backend advertises a smaller MSS (`ROUTED_ADVMSS`, `ROUTED_ADVMSS6`).
fn route_replies(backend: &Node, clamp: bool) -> Result<(), LabError> {
    let routes = [
        ("-4", ROUTED_GATEWAY.to_string(), ROUTED_ADVMSS),
        ("-6", ROUTED_GATEWAY6.to_string(), ROUTED_ADVMSS6),
    ];
    for (family, gateway, advmss) in &routes {
        let advmss = advmss.to_string();
        let mut args = vec![
            *family,
            "route",
            "replace",
            "default",
            "via",
            gateway.as_str(),
            "dev",
            NETNS_IFNAME,
        ];
        if clamp {
            args.extend(["advmss", advmss.as_str()]);
        }
        ip_in(&backend.netns, &args)?;
    }
    Ok(())
}
