//! What the daemon and its operators say to each other, without HTTP and without rendering:
//! the operator commands and replies, and the `/status` document. The admin API carries them,
//! the controller produces them, the CLI and the lab read them.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::rollout::Decision;

/// An operator verb, for one service (or the only one).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "verb", rename_all = "kebab-case")]
pub enum OperatorCommand {
    /// Start a rollout now (the canary group must have backends).
    Start,
    Pause,
    Resume,
    /// Move to the next step, or straight to 100% with `full`.
    Promote {
        full: bool,
    },
    Rollback,
    /// Set the canary weight by hand (percent, 0.01 resolution); pauses the rollout.
    SetWeight {
        percent: f64,
    },
    /// Which group and backend a new flow would get now.
    Route {
        src: SocketAddr,
        dst: SocketAddr,
        protocol: String,
    },
    /// Re-read the configuration file.
    Reload,
}

impl OperatorCommand {
    /// Whether the verb changes anything (and so needs the token).
    pub fn is_mutating(&self) -> bool {
        !matches!(self, OperatorCommand::Route { .. })
    }
}

/// What the controller answers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OperatorReply {
    pub ok: bool,
    pub message: String,
    /// Extra detail (e.g. the route answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<serde_json::Value>,
}

impl OperatorReply {
    pub fn ok(message: impl Into<String>) -> Self {
        OperatorReply {
            ok: true,
            message: message.into(),
            detail: None,
        }
    }
    pub fn refused(message: impl Into<String>) -> Self {
        OperatorReply {
            ok: false,
            message: message.into(),
            detail: None,
        }
    }
}

/// The whole `/status` document.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Status {
    pub services: Vec<ServiceStatus>,
    /// Terminal outcomes and events of the XDP program since it was loaded, by name.
    pub xdp: BTreeMap<String, u64>,
    /// Cluster mode (`[cluster] store = "etcd"`): this node, the leader, every node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterStatus>,
}

/// A cluster as one node sees it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// This node's name.
    pub node: String,
    /// The node that leads (decides for all), if one is seen.
    pub leader: Option<String>,
    /// Whether this node leads and decides.
    pub leading: bool,
    /// Why etcd cannot be used now (the rollout holds); `None` while it answers.
    pub store_problem: Option<String>,
    /// The heartbeat is not refreshed (no live leader or no store): after
    /// `heartbeat_timeout` new flows go to stable only.
    pub heartbeat_held: bool,
    /// Every node seen, by name.
    pub nodes: Vec<NodeStatus>,
}

/// One node of the cluster, from its report in etcd.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct NodeStatus {
    pub name: String,
    /// Its report is in etcd (bound to its lease).
    pub alive: bool,
    /// Version of the document it applied, per service.
    pub applied_versions: BTreeMap<String, Option<u64>>,
    /// Canary weight it applied, percent, per service.
    pub applied_weight_percent: BTreeMap<String, Option<f64>>,
    /// Why it refused a document, per service.
    pub refused: BTreeMap<String, String>,
    /// Canary share of the new flows it forwarded between its last two reports (0..1).
    pub measured_canary_share: Option<f64>,
    pub flow_table_entries: u64,
    pub flow_table_capacity: u64,
}

/// How this node applies a service's rollout documents (cluster mode).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ServiceClusterStatus {
    /// Version (etcd revision) of the document applied; `None` before the first.
    pub applied_version: Option<u64>,
    /// The node that decided the applied document.
    pub decided_by: Option<String>,
    /// Why the newest document was refused (config mismatch...), if it was.
    pub refused: Option<String>,
}

/// One service's rollout, groups and backends.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub name: String,
    pub vip: String,
    pub protocol: String,
    /// `pending`, `stepping`, `promoted`, `rolled_back`, or `idle` (no canary configured).
    pub phase: String,
    pub paused: bool,
    /// Index into `steps` of the current step, when stepping.
    pub step: Option<usize>,
    /// Configured steps, percent of new flows.
    pub steps: Vec<f64>,
    /// Canary weight now programmed, percent of new flows.
    pub weight_percent: f64,
    /// Canary share of new flows the kernel counted over the last evaluation window (0..1).
    pub measured_canary_share: Option<f64>,
    /// Judged signals that have no data (the judge holds for them), each with why.
    #[serde(default)]
    pub signals_without_data: Vec<SignalWithoutData>,
    /// Stable then canary.
    pub groups: Vec<GroupStatus>,
    pub backends: Vec<BackendStatus>,
    pub last_decision: Option<Decision>,
    /// The most recent decisions and operator actions, newest last.
    pub events: Vec<Decision>,
    /// Signals judged and reported but never holding or rolling back.
    #[serde(default)]
    pub dry_run: Vec<String>,
    /// Cluster mode only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ServiceClusterStatus>,
}

/// A judged signal that has no data.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SignalWithoutData {
    pub signal: String,
    pub why: String,
}

/// One group's figures over the current evaluation window.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct GroupStatus {
    pub group: String,
    pub requests: u64,
    pub errors: u64,
    pub error_rate: Option<f64>,
    pub latency_mean_seconds: Option<f64>,
    pub latency_p95_seconds: Option<f64>,
    pub predictions: BTreeMap<String, u64>,
    /// New flows the kernel sent to this group in the window.
    pub new_flows: u64,
}

/// One backend's state.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct BackendStatus {
    pub name: String,
    pub group: String,
    pub address: String,
    pub up: bool,
    /// Why it is down (failed health checks, no MAC), if it is.
    pub down_reason: Option<String>,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    /// Requests the backend itself reports (its `requests` series), if scraped.
    pub reported_requests: Option<f64>,
    pub metrics_ok: bool,
    /// Why its metrics, or some of its series, are missing (failed scrape, malformed series).
    #[serde(default)]
    pub metrics_problem: Option<String>,
    /// The reason of each problem, as in `canary_upstream_scrape_errors_total{reason}`
    /// (`refused`, `timeout`, `local`, ...): a failure of this node (`local`) tells apart
    /// from the backend's own.
    #[serde(default)]
    pub metrics_problem_reasons: Vec<String>,
    /// The model versions it reports (`upstream.version_label`), if configured.
    #[serde(default)]
    pub reported_versions: Vec<String>,
}

impl Status {
    /// Find a service by name, or the only one when `name` is `None`.
    pub fn service(&self, name: Option<&str>) -> Result<&ServiceStatus, String> {
        select_service(self.services.iter().map(|s| s.name.as_str()), name)
            .map(|i| &self.services[i])
    }
}

/// Index of the service called `name`, or of the only service when `name` is `None`.
pub fn select_service<'a>(
    names: impl Iterator<Item = &'a str>,
    name: Option<&str>,
) -> Result<usize, String> {
    let names: Vec<&str> = names.collect();
    match name {
        Some(n) => names.iter().position(|s| *s == n).ok_or_else(|| {
            format!(
                "no service named {n:?}; configured services: {}",
                names.join(", ")
            )
        }),
        None if names.len() == 1 => Ok(0),
        None if names.is_empty() => Err("no services are configured".to_string()),
        None => Err(format!(
            "several services are configured; pass --service NAME (one of: {})",
            names.join(", ")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn select_service_by_name_or_only_one() {
        let one = ["a"];
        assert_eq!(select_service(one.iter().copied(), None), Ok(0));
        let two = ["a", "b"];
        assert_eq!(select_service(two.iter().copied(), Some("b")), Ok(1));
        let err = select_service(two.iter().copied(), None).unwrap_err();
        assert!(err.contains("--service"), "{err}");
        let err = select_service(two.iter().copied(), Some("c")).unwrap_err();
        assert!(err.contains("a, b"), "{err}");
    }
}
