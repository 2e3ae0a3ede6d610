//! Each node's own kernel counters, published under `<prefix>/nodes/<node>` with the node's
//! lease: the key exists exactly while the node is alive. The leader reads them all and sums
//! them per service (the measured split of the whole cluster) and shows each node.
//!
//! Counters are cumulative (the kernel's, since its maps were created); [`increase`] turns two
//! readings into per-node increases, and [`sum_service`] adds the nodes up. Both are pure.

use std::collections::BTreeMap;

use etcd_client::{Client, GetOptions, PutOptions};
use serde::{Deserialize, Serialize};

use super::{revision_to_version, ClusterError, KeySpace};

/// A backend group (the same keywords as the config's).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Group {
    Stable,
    Canary,
}

/// One backend's counters on one node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendCounters {
    pub backend: String,
    pub group: Group,
    /// New flows the kernel sent to this backend.
    pub new_flows: u64,
    pub packets: u64,
}

/// One service on one node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceReport {
    pub service: String,
    /// Version of the rollout document this node applied last.
    pub applied_version: Option<u64>,
    /// The weight it applied, basis points.
    pub applied_weight_bp: Option<u32>,
    /// Why this node does not apply the current document (config mismatch...), if so.
    pub refused: Option<String>,
    pub backends: Vec<BackendCounters>,
}

/// Flow-table fill on one node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowTableFill {
    pub entries: u64,
    pub capacity: u64,
}

/// What one node publishes each poll.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeReport {
    pub node: String,
    /// Unix time, milliseconds.
    pub at_ms: u64,
    pub flow_table: FlowTableFill,
    pub services: Vec<ServiceReport>,
}

/// Reads and writes node reports in etcd.
#[derive(Clone)]
pub struct NodeDirectory {
    client: Client,
    keys: KeySpace,
}

impl NodeDirectory {
    pub fn new(client: &Client, keys: &KeySpace) -> Self {
        Self {
            client: client.clone(),
            keys: keys.clone(),
        }
    }

    /// Writes this node's report, bound to `lease` (this node's session): it vanishes with it.
    pub async fn publish(&self, lease: i64, report: &NodeReport) -> Result<u64, ClusterError> {
        let json = serde_json::to_vec(report).expect("a node report always serialises");
        let response = self
            .client
            .clone()
            .put(
                self.keys.node(&report.node),
                json,
                Some(PutOptions::new().with_lease(lease)),
            )
            .await
            .map_err(ClusterError::etcd("publish the node report"))?;
        Ok(revision_to_version(
            response
                .header()
                .map_or(0, etcd_client::ResponseHeader::revision),
        ))
    }

    /// The reports of every live node, by node name.
    pub async fn read_all(&self) -> Result<Vec<NodeReport>, ClusterError> {
        let response = self
            .client
            .clone()
            .get(self.keys.nodes(), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(ClusterError::etcd("read the node reports"))?;
        response
            .kvs()
            .iter()
            .map(|kv| {
                serde_json::from_slice(kv.value()).map_err(|source| ClusterError::Corrupt {
                    key: String::from_utf8_lossy(kv.key()).into_owned(),
                    source,
                })
            })
            .collect()
    }

    /// Removes this node's report (clean shutdown; a crash leaves it to the lease).
    pub async fn remove(&self, node: &str) -> Result<(), ClusterError> {
        self.client
            .clone()
            .delete(self.keys.node(node), None)
            .await
            .map(drop)
            .map_err(ClusterError::etcd("remove the node report"))
    }
}

/// Per-node counter increases from `previous` to `current`. A node absent from `previous` has
/// no baseline yet and counts nothing; a counter that went down (the node's maps were
/// recreated) counts from zero. Nodes absent from `current` (dead) are left out.
pub fn increase(previous: &[NodeReport], current: &[NodeReport]) -> Vec<NodeReport> {
    let before: BTreeMap<&str, &NodeReport> =
        previous.iter().map(|r| (r.node.as_str(), r)).collect();
    current
        .iter()
        .filter_map(|now| {
            let then = before.get(now.node.as_str())?;
            let services = now
                .services
                .iter()
                .map(|s| {
                    let old = then.services.iter().find(|o| o.service == s.service);
                    let backends = s
                        .backends
                        .iter()
                        .map(|b| {
                            let (flows, packets) = old
                                .and_then(|o| o.backends.iter().find(|ob| ob.backend == b.backend))
                                .map_or((b.new_flows, b.packets), |ob| {
                                    (
                                        since(ob.new_flows, b.new_flows),
                                        since(ob.packets, b.packets),
                                    )
                                });
                            BackendCounters {
                                new_flows: flows,
                                packets,
                                ..b.clone()
                            }
                        })
                        .collect();
                    ServiceReport {
                        backends,
                        ..s.clone()
                    }
                })
                .collect();
            Some(NodeReport {
                services,
                ..now.clone()
            })
        })
        .collect()
}

fn since(before: u64, now: u64) -> u64 {
    if now >= before {
        now - before
    } else {
        now
    }
}

/// New flows and packets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub new_flows: u64,
    pub packets: u64,
}

impl Totals {
    fn add(&mut self, b: &BackendCounters) {
        self.new_flows += b.new_flows;
        self.packets += b.packets;
    }
}

/// One service summed over nodes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceTotals {
    pub stable: Totals,
    pub canary: Totals,
    pub backends: BTreeMap<String, Totals>,
    /// Nodes that reported the service.
    pub nodes: usize,
}

impl ServiceTotals {
    /// Share of new flows that went to the canary group, 0..1; `None` without new flows.
    pub fn canary_share(&self) -> Option<f64> {
        let all = self.stable.new_flows + self.canary.new_flows;
        (all > 0).then(|| self.canary.new_flows as f64 / all as f64)
    }
}

/// Sums one service's counters over `reports` (readings or [`increase`]s).
pub fn sum_service(reports: &[NodeReport], service: &str) -> ServiceTotals {
    let mut totals = ServiceTotals::default();
    for report in reports {
        let Some(s) = report.services.iter().find(|s| s.service == service) else {
            continue;
        };
        totals.nodes += 1;
        for b in &s.backends {
            match b.group {
                Group::Stable => totals.stable.add(b),
                Group::Canary => totals.canary.add(b),
            }
            totals.backends.entry(b.backend.clone()).or_default().add(b);
        }
    }
    totals
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn report(node: &str, stable_flows: u64, canary_flows: u64) -> NodeReport {
        NodeReport {
            node: node.into(),
            at_ms: 1,
            flow_table: FlowTableFill {
                entries: 10,
                capacity: 100,
            },
            services: vec![ServiceReport {
                service: "s".into(),
                applied_version: Some(7),
                applied_weight_bp: Some(2_500),
                refused: None,
                backends: vec![
                    BackendCounters {
                        backend: "v1-a".into(),
                        group: Group::Stable,
                        new_flows: stable_flows,
                        packets: stable_flows * 10,
                    },
                    BackendCounters {
                        backend: "v2-a".into(),
                        group: Group::Canary,
                        new_flows: canary_flows,
                        packets: canary_flows * 10,
                    },
                ],
            }],
        }
    }

    #[test]
    fn sums_over_nodes() {
        let reports = [report("a", 75, 25), report("b", 150, 50)];
        let t = sum_service(&reports, "s");
        assert_eq!(t.nodes, 2);
        assert_eq!(t.stable.new_flows, 225);
        assert_eq!(t.canary.packets, 750);
        assert_eq!(t.backends["v2-a"].new_flows, 75);
        assert_eq!(t.canary_share(), Some(0.25));
        assert_eq!(sum_service(&reports, "other").canary_share(), None);
    }

    #[test]
    fn increases_per_node() {
        let before = [report("a", 100, 0), report("gone", 5, 5)];
        let now = [report("a", 175, 25), report("new", 1_000, 1_000)];
        let inc = increase(&before, &now);
        assert_eq!(inc.len(), 1, "only nodes with a baseline count");
        let t = sum_service(&inc, "s");
        assert_eq!((t.stable.new_flows, t.canary.new_flows), (75, 25));
        // Maps recreated on node a: counters restart from zero.
        let inc = increase(&now, &[report("a", 30, 10)]);
        assert_eq!(sum_service(&inc, "s").stable.new_flows, 30);
    }
}
