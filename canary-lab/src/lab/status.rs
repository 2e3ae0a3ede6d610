//! What exists of a lab (`lab status`), checked against the system, and its table.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::PoisonError;

use serde::{Deserialize, Serialize};

use super::record::LabRecord;
use super::{cmd, leftovers, Lab, LabError, Node, PEER_XDP_PIN, SERVICE_PORT, STATE_ROOT};

impl Lab {
    /// What exists of this lab now.
    pub fn status(&self) -> LabStatus {
        let record = self
            .record
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        LabStatus::of(Some(record), &self.plan.spec.tag)
    }

    /// Status of the lab `tag` from its record (or of its leftovers when there is no record).
    pub fn status_of(tag: &str) -> Result<LabStatus, LabError> {
        let state_dir = Path::new(STATE_ROOT).join(tag);
        Ok(LabStatus::of(LabRecord::load(&state_dir)?, tag))
    }
}

/// One node's state.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeStatus {
    pub node: Node,
    pub netns_exists: bool,
    pub link_exists: bool,
}

/// A recorded process and whether it still runs.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProcessStatus {
    pub pid: u32,
    pub netns: String,
    pub command: String,
    pub running: bool,
}

/// What exists of a lab (`lab status`); `Display` is a readable table.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[allow(
    clippy::struct_excessive_bools,
    reason = "independent facts about what exists, reported as such"
)]
pub struct LabStatus {
    pub tag: String,
    /// A record exists.
    pub recorded: bool,
    pub vip: Option<std::net::Ipv4Addr>,
    pub bridge: Option<String>,
    pub bridge_exists: bool,
    pub bpffs: Option<PathBuf>,
    pub bpffs_mounted: bool,
    pub peer_xdp_pinned: bool,
    pub nodes: Vec<NodeStatus>,
    pub processes: Vec<ProcessStatus>,
    /// Everything with the lab's name prefix that exists.
    pub leftovers: Vec<String>,
}

impl LabStatus {
    fn of(record: Option<LabRecord>, tag: &str) -> Self {
        let netns = cmd::netns_list().unwrap_or_default();
        let Some(r) = record else {
            return Self {
                tag: tag.into(),
                recorded: false,
                vip: None,
                bridge: None,
                bridge_exists: false,
                bpffs: None,
                bpffs_mounted: false,
                peer_xdp_pinned: false,
                nodes: Vec::new(),
                processes: Vec::new(),
                leftovers: leftovers(tag),
            };
        };
        let plan = &r.plan;
        Self {
            tag: tag.into(),
            recorded: true,
            vip: Some(plan.vip),
            bridge: Some(plan.bridge.clone()),
            bridge_exists: cmd::host_link_exists(&plan.bridge),
            bpffs: Some(plan.bpffs.clone()),
            bpffs_mounted: cmd::mounts_under(&plan.bpffs).contains(&plan.bpffs),
            peer_xdp_pinned: plan.bpffs.join(PEER_XDP_PIN).exists(),
            nodes: plan
                .nodes()
                .map(|n| NodeStatus {
                    node: n.clone(),
                    netns_exists: netns.contains(&n.netns),
                    link_exists: cmd::host_link_exists(&n.host_ifname),
                })
                .collect(),
            processes: r
                .processes
                .iter()
                .map(|p| ProcessStatus {
                    pid: p.pid,
                    netns: p.netns.clone(),
                    command: p.command.clone(),
                    running: p.is_running(),
                })
                .collect(),
            leftovers: leftovers(tag),
        }
    }

    /// The lab is complete: every namespace, link, the bridge and the bpffs exist.
    pub fn is_up(&self) -> bool {
        self.recorded
            && self.bridge_exists
            && self.bpffs_mounted
            && self.nodes.iter().all(|n| n.netns_exists && n.link_exists)
    }
}

impl fmt::Display for LabStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.recorded {
            writeln!(f, "lab {}: not up", self.tag)?;
            if !self.leftovers.is_empty() {
                writeln!(f, "leftovers: {}", self.leftovers.join(", "))?;
            }
            return Ok(());
        }
        let yes = |b: bool| if b { "yes" } else { "MISSING" };
        writeln!(
            f,
            "lab {}: {}",
            self.tag,
            if self.is_up() { "up" } else { "incomplete" }
        )?;
        if let Some(vip) = self.vip {
            writeln!(f, "vip        {vip}:{SERVICE_PORT}")?;
        }
        if let Some(b) = &self.bridge {
            writeln!(f, "bridge     {b} ({})", yes(self.bridge_exists))?;
        }
        if let Some(p) = &self.bpffs {
            writeln!(
                f,
                "bpffs      {} ({})",
                p.display(),
                yes(self.bpffs_mounted)
            )?;
        }
        writeln!(
            f,
            "peer xdp   {}",
            if self.peer_xdp_pinned {
                "builtin pass"
            } else {
                "not builtin"
            }
        )?;
        writeln!(
            f,
            "{:<14} {:<14} {:<16} {:<18} {:<5} {:<5}",
            "role", "netns", "address", "mac", "ns", "link"
        )?;
        for n in &self.nodes {
            writeln!(
                f,
                "{:<14} {:<14} {:<16} {:<18} {:<5} {:<5}",
                n.node.role.to_string(),
                n.node.netns,
                n.node.address.to_string(),
                n.node.mac.to_string(),
                yes(n.netns_exists),
                yes(n.link_exists)
            )?;
        }
        for p in &self.processes {
            writeln!(
                f,
                "pid {:<8} {:<8} {}",
                p.pid,
                if p.running { "running" } else { "exited" },
                p.command
            )?;
        }
        Ok(())
    }
}
