//! What can go wrong setting up, using and tearing down a lab.

use std::path::PathBuf;

/// Errors of lab set-up, use and tear-down.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// The lab spec is invalid.
    #[error("invalid lab spec: {0}")]
    Spec(String),
    /// Not running as root.
    #[error("the lab needs root (it creates namespaces, links and mounts): run as root")]
    NotRoot,
    /// A command could not be started.
    #[error("cannot run `{command}`: {source} (is iproute2/ethtool installed?)")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    /// A command failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    /// A file operation failed.
    #[error("cannot {what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// The lab record is unreadable.
    #[error("lab record {path} is unreadable: {source}; remove the lab with `down` by tag")]
    Record {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// No lab with this tag.
    #[error("no lab `{0}` (no record under /run/canary-lab): bring it up first")]
    NotFound(String),
    /// A namespace name that is not part of this lab.
    #[error("`{netns}` is not a namespace of lab `{tag}`: use a node's `netns` field")]
    UnknownNetns { netns: String, tag: String },
    /// The lab has no load balancer (spec `load_balancer = false`).
    #[error("lab `{0}` has no load-balancer namespace: set `load_balancer` in the spec")]
    NoLoadBalancer(String),
    /// Attaching the peer XDP program failed.
    #[error("cannot attach XDP to the load balancer's peer veth `{ifname}`: {reason}")]
    PeerXdp { ifname: String, reason: String },
    /// A started process exited early.
    #[error("`{command}` exited ({status}); log tail:\n{log_tail}")]
    ProcessExited {
        command: String,
        status: String,
        log_tail: String,
    },
    /// Waiting for something took too long.
    #[error("timed out waiting for {what}; log tail:\n{log_tail}")]
    Timeout { what: String, log_tail: String },
    /// `down` finished but something of the lab is still there.
    #[error("lab teardown left behind: {}", .0.join(", "))]
    Leftovers(Vec<String>),
}

pub(super) fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LabError {
    let what = what.into();
    move |source| LabError::Io { what, source }
}
