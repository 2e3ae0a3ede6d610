//! A lab of network namespaces on a Linux bridge: clients, one load balancer, stable and canary
//! backends, wired for direct server return (DSR).
//!
//! ```text
//!   c0 c1 ...        lb (VIP on eth0)       s0 s1 s2   k0 k1   (VIP on lo, arp_ignore)
//!    |  |             |                      |  |  |    |  |
//!  ==+==+=============+======================+==+==+====+==+==  bridge cnry-<tag>-br (host)
//! ```
//!
//! Clients send to the VIP; the load balancer's XDP program rewrites the destination MAC and
//! bounces the frame back out (`XDP_TX`) to a backend, which answers the client straight over the
//! bridge. Everything the lab creates is written to `/run/canary-lab/<tag>/lab.json` before it is
//! created, so `down` removes exactly that, even after a crash mid-`up`.
//!
//! One file per concern: `plan` (names, addresses and MACs; no I/O), `record` (the on-disk
//! record), `build` (bringing it up), `exec` (commands and processes in its namespaces),
//! `peer_xdp` (the program on the balancer's bridge-side veth), `bouncer` (the do-nothing
//! balancer of the benchmarks), `teardown`, `status`; `cmd` runs the host tools and `xdp_pass`
//! loads the builtin pass program.

mod bouncer;
mod build;
mod cmd;
mod error;
mod exec;
mod peer_xdp;
mod plan;
mod process;
mod record;
mod routed;
mod status;
mod teardown;
mod xdp_pass;

use std::path::Path;
use std::sync::{Mutex, PoisonError};

pub use bouncer::{spread_slot, MAX_BOUNCER_BACKENDS};
pub use error::LabError;
pub use peer_xdp::PEER_XDP_PIN;
pub use plan::{
    ipv6_of, routed_ipv6_of, LabPlan, LabSpec, MacAddr, Node, PeerXdp, Role,
    MAX_BACKENDS_PER_GROUP, MAX_BALANCERS, MAX_CLIENTS, MAX_EXTRA_ADDRESSES, MAX_TAG_LEN,
    NAME_PREFIX, NETNS_IFNAME, PREFIX_LEN, PREFIX_LEN6, ROUTED_ADVMSS, ROUTED_ADVMSS6,
    ROUTED_GATEWAY, ROUTED_GATEWAY6, ROUTED_PREFIX_LEN, ROUTED_SUBNET, ROUTED_SUBNET6,
    ROUTER_ADDRESS, SERVICE_PORT, STATE_ROOT, VIP, VIP6,
};
pub use process::{LabProcess, ProcessRecord};
pub use record::LabRecord;
pub use routed::DECAP_PIN_PREFIX;
pub use status::{LabStatus, NodeStatus, ProcessStatus};
pub use teardown::leftovers;

use error::io_err;

/// A running lab. Dropping it tears the lab down unless `keep` was called (or it was `open`ed).
pub struct Lab {
    plan: LabPlan,
    record: Mutex<LabRecord>,
    teardown_on_drop: bool,
    spawned: std::sync::atomic::AtomicU32,
}

fn ensure_root() -> Result<(), LabError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        Ok(())
    } else {
        Err(LabError::NotRoot)
    }
}

impl Lab {
    /// Create the lab, or complete it when it (partly) exists: re-running is harmless.
    pub fn up(spec: &LabSpec) -> Result<Self, LabError> {
        ensure_root()?;
        let plan = LabPlan::new(spec)?;
        std::fs::create_dir_all(plan.state_dir.join("logs"))
            .map_err(io_err(format!("create {}", plan.state_dir.display())))?;
        let record = match LabRecord::load(&plan.state_dir)? {
            Some(mut r) => {
                r.plan = plan.clone();
                r
            }
            None => LabRecord::new(plan.clone()),
        };
        record.save()?;
        let lab = Self {
            plan,
            record: Mutex::new(record),
            teardown_on_drop: true,
            spawned: std::sync::atomic::AtomicU32::new(0),
        };
        // On error, `lab` drops here and removes what was created so far.
        lab.build()?;
        Ok(lab)
    }

    /// A handle on an existing lab (from its record); it does not tear down on drop.
    pub fn open(tag: &str) -> Result<Self, LabError> {
        let state_dir = Path::new(STATE_ROOT).join(tag);
        let record = LabRecord::load(&state_dir)?.ok_or_else(|| LabError::NotFound(tag.into()))?;
        Ok(Self {
            plan: record.plan.clone(),
            record: Mutex::new(record),
            teardown_on_drop: false,
            spawned: std::sync::atomic::AtomicU32::new(0),
        })
    }

    /// Keep the lab (and detached processes) after this handle is dropped; `Lab::down_tag` ends it.
    pub fn keep(mut self) -> LabPlan {
        self.teardown_on_drop = false;
        self.plan.clone()
    }

    pub fn plan(&self) -> &LabPlan {
        &self.plan
    }

    pub fn tag(&self) -> &str {
        &self.plan.spec.tag
    }

    pub fn vip(&self) -> std::net::Ipv4Addr {
        self.plan.vip
    }

    /// The IPv6 VIP (the lab is dual-stack).
    pub fn vip6(&self) -> std::net::Ipv6Addr {
        self.plan.vip6
    }

    pub fn bridge(&self) -> &str {
        &self.plan.bridge
    }

    /// The bpffs mounted in the host mount namespace for this lab (outlives `ip netns exec`).
    pub fn bpffs(&self) -> &Path {
        &self.plan.bpffs
    }

    pub fn state_dir(&self) -> &Path {
        &self.plan.state_dir
    }

    pub fn load_balancer(&self) -> Result<&Node, LabError> {
        self.plan
            .load_balancer
            .as_ref()
            .ok_or_else(|| LabError::NoLoadBalancer(self.tag().into()))
    }

    pub fn clients(&self) -> &[Node] {
        &self.plan.clients
    }

    pub fn stable(&self) -> &[Node] {
        &self.plan.stable
    }

    pub fn canary(&self) -> &[Node] {
        &self.plan.canary
    }

    /// Stable then canary backends.
    pub fn backends(&self) -> impl Iterator<Item = &Node> {
        self.plan.backends()
    }

    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.plan.nodes()
    }

    /// The node whose namespace is `netns`.
    pub fn node(&self, netns: &str) -> Result<&Node, LabError> {
        self.plan
            .nodes()
            .find(|n| n.netns == netns)
            .ok_or_else(|| LabError::UnknownNetns {
                netns: netns.into(),
                tag: self.tag().into(),
            })
    }

    fn with_record<T>(&self, f: impl FnOnce(&mut LabRecord) -> T) -> Result<T, LabError> {
        let mut r = self.record.lock().unwrap_or_else(PoisonError::into_inner);
        let out = f(&mut r);
        r.save()?;
        Ok(out)
    }
}
