//! The XDP program on the load balancer's bridge-side veth: without one, frames the balancer
//! sends back out with `XDP_TX` never reach the bridge. The builtin pass program, or the caller's.

use std::fmt;

use super::error::io_err;
use super::{cmd, xdp_pass, Lab, LabError};

/// Name of the builtin peer XDP link's pin inside the lab's bpffs.
pub const PEER_XDP_PIN: &str = "lab_peer_xdp_pass";

impl Lab {
    /// The bridge-side peer of the load balancer's veth (where the peer XDP program goes).
    pub fn lb_peer_ifname(&self) -> Result<&str, LabError> {
        Ok(&self.load_balancer()?.host_ifname)
    }

    pub(super) fn attach_builtin_peer_xdp(&self) -> Result<(), LabError> {
        let ifname = self.lb_peer_ifname()?.to_owned();
        let pin = self.plan.bpffs.join(PEER_XDP_PIN);
        if !pin.exists() {
            self.with_record(|r| r.pins.insert(pin.clone()))?;
            xdp_pass::attach(&ifname, &pin).map_err(|e| LabError::PeerXdp {
                ifname,
                reason: e.to_string(),
            })?;
        }
        for b in &self.plan.more_balancers {
            let pin = self.plan.bpffs.join(format!("{PEER_XDP_PIN}_{}", b.name));
            if pin.exists() {
                continue;
            }
            self.with_record(|r| r.pins.insert(pin.clone()))?;
            xdp_pass::attach(&b.host_ifname, &pin).map_err(|e| LabError::PeerXdp {
                ifname: b.host_ifname.clone(),
                reason: e.to_string(),
            })?;
        }
        Ok(())
    }

    /// Attach a native XDP program to the load balancer's peer veth with your own code; `attach`
    /// gets the interface name. Removes the builtin pass program first.
    pub fn attach_peer_xdp_with<E: fmt::Display>(
        &self,
        attach: impl FnOnce(&str) -> Result<(), E>,
    ) -> Result<(), LabError> {
        self.detach_peer_xdp()?;
        let ifname = self.lb_peer_ifname()?;
        attach(ifname).map_err(|e| LabError::PeerXdp {
            ifname: ifname.into(),
            reason: e.to_string(),
        })
    }

    /// Attach by running a host command; every `{iface}` in `argv` becomes the interface name.
    pub fn attach_peer_xdp_command(&self, argv: &[&str]) -> Result<(), LabError> {
        self.attach_peer_xdp_with(|ifname| {
            let args: Vec<String> = argv.iter().map(|a| a.replace("{iface}", ifname)).collect();
            let (program, rest) = args.split_first().ok_or("empty command")?;
            let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
            cmd::run(program, &rest)
                .map(drop)
                .map_err(|e| e.to_string())
        })
    }

    /// Remove any XDP program from the load balancer's peer veth (builtin pin and netlink attach).
    pub fn detach_peer_xdp(&self) -> Result<(), LabError> {
        let ifname = self.lb_peer_ifname()?.to_owned();
        let pin = self.plan.bpffs.join(PEER_XDP_PIN);
        if pin.exists() {
            std::fs::remove_file(&pin).map_err(io_err(format!("remove {}", pin.display())))?;
        }
        // A netlink-attached program (for example `ip link set ... xdpdrv`); none is fine. The
        // kernel frees a link whose last pin went away asynchronously: until it has, netlink
        // refuses with "active BPF XDP link", so wait for that (bounded) rather than fail.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match cmd::run("ip", &["link", "set", "dev", &ifname, "xdp", "off"]) {
                Ok(_) => return Ok(()),
                Err(e)
                    if e.to_string().contains("active BPF XDP link")
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Whether an XDP program is attached to the load balancer's peer veth.
    pub fn peer_xdp_attached(&self) -> Result<bool, LabError> {
        let out = cmd::run("ip", &["-d", "link", "show", "dev", self.lb_peer_ifname()?])?;
        Ok(out.contains("prog/xdp"))
    }
}
