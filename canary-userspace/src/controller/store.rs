//! The seam between deciding and applying: where the controller's decisions go, and where the
//! weight written to the kernel comes from.
//!
//! - [`DecisionStore::Local`]: one node. Each decision is persisted in `state_dir` and applied
//!   at once (the rollout's own weight is the kernel's weight).
//! - [`DecisionStore::Cluster`]: several nodes sharing etcd. Only the leader decides; each
//!   decision becomes a [`RolloutDocument`] in the outbox, which the daemon publishes (fenced on
//!   the leader's key). Every node, leader included, applies the documents the store hands
//!   back ([`super::Controller::on_document`]): the kernel's weight is the applied document's,
//!   never the local rollout's.
//!
//! The controller itself never does I/O with the store: the daemon drains the outbox and feeds
//! the store's events in, so the deciding side runs against an in-memory store in tests.

use std::collections::BTreeMap;

use prometheus::{IntGauge, IntGaugeVec, Opts, Registry};

use crate::cluster::document::RolloutDocument;
use crate::cluster::nodes::NodeReport;
use crate::judge::FlowCounts;
use crate::rollout::StateStore;

/// Where decisions are kept (see the module documentation).
pub enum DecisionStore {
    Local(StateStore),
    Cluster(Box<ClusterSide>),
}

impl From<StateStore> for DecisionStore {
    fn from(store: StateStore) -> Self {
        DecisionStore::Local(store)
    }
}

impl DecisionStore {
    /// A cluster node called `node`, not leading yet, store not seen yet.
    pub fn cluster(node: &str) -> Self {
        DecisionStore::Cluster(Box::new(ClusterSide {
            node: node.to_string(),
            leading: false,
            leader: None,
            store_problem: Some("not connected to etcd yet".to_string()),
            outbox: BTreeMap::new(),
            published: BTreeMap::new(),
            reports: Vec::new(),
            previous_reports: Vec::new(),
            flows: BTreeMap::new(),
            node_share: BTreeMap::new(),
            gone: BTreeMap::new(),
            metrics: None,
        }))
    }

    pub(super) fn cluster_side(&self) -> Option<&ClusterSide> {
        match self {
            DecisionStore::Local(_) => None,
            DecisionStore::Cluster(c) => Some(c),
        }
    }

    pub(super) fn cluster_side_mut(&mut self) -> Option<&mut ClusterSide> {
        match self {
            DecisionStore::Local(_) => None,
            DecisionStore::Cluster(c) => Some(c),
        }
    }

    /// Whether this node may decide now: always on one node; in a cluster only the leader,
    /// and only while it reaches the store.
    pub(super) fn decides(&self) -> bool {
        match self {
            DecisionStore::Local(_) => true,
            DecisionStore::Cluster(c) => c.leading && c.store_problem.is_none(),
        }
    }

    /// Whether this node scrapes the backends' metrics: one node always; in a cluster only the
    /// leader (the backends' metrics are global: one scrape serves every node).
    pub(super) fn scrapes_upstream(&self) -> bool {
        match self {
            DecisionStore::Local(_) => true,
            DecisionStore::Cluster(c) => c.leading,
        }
    }

    /// Whether the kernel's heartbeat may be refreshed now: always on one node; in a cluster
    /// only while a live leader and a reachable store are seen (otherwise the dead-man switch
    /// sends new flows to stable after `heartbeat_timeout`).
    pub(super) fn heartbeat_ok(&self) -> bool {
        match self {
            DecisionStore::Local(_) => true,
            DecisionStore::Cluster(c) => c.leader.is_some() && c.store_problem.is_none(),
        }
    }
}

/// A cluster node's view of the store and the other nodes.
pub struct ClusterSide {
    pub(super) node: String,
    /// This node leads and took over the store's documents: it decides.
    pub(super) leading: bool,
    /// The node that leads now, as the election says.
    pub(super) leader: Option<String>,
    /// Why the store cannot be used now; `None` while it answers.
    pub(super) store_problem: Option<String>,
    /// Decided, not yet handed to the store, by service.
    pub(super) outbox: BTreeMap<String, RolloutDocument>,
    /// What was last put in the outbox per service (the part that matters), so only changes
    /// are published.
    pub(super) published: BTreeMap<String, String>,
    /// Every node's last report (for `/status`).
    pub(super) reports: Vec<NodeReport>,
    pub(super) previous_reports: Vec<NodeReport>,
    /// New flows per group summed over every node since the previous reports, by service
    /// (the leader's measured split).
    pub(super) flows: BTreeMap<String, FlowCounts>,
    /// Canary share of each node's new flows between its last two reports.
    pub(super) node_share: BTreeMap<String, f64>,
    /// Nodes whose report vanished (lease gone), with their last report.
    pub(super) gone: BTreeMap<String, NodeReport>,
    pub(super) metrics: Option<ClusterMetrics>,
}

/// The metrics of cluster mode.
#[derive(Clone)]
pub(super) struct ClusterMetrics {
    /// 1 while the service's current document was decided for a different config (refused).
    pub(super) config_mismatch: IntGaugeVec,
    /// Version (etcd revision) of the document applied, per service.
    pub(super) applied_version: IntGaugeVec,
    /// 1 while this node leads.
    pub(super) leader: IntGauge,
    /// 1 while the store answers.
    pub(super) store_reachable: IntGauge,
    /// Nodes with a live report.
    pub(super) nodes: IntGauge,
}

impl ClusterMetrics {
    pub(super) fn register(registry: &Registry) -> prometheus::Result<Self> {
        let m = ClusterMetrics {
            config_mismatch: IntGaugeVec::new(
                Opts::new(
                    "canary_cluster_config_mismatch",
                    "1 while the leader's document for the service was decided for a different config (backends, hash seed, Maglev size, affinity): not applied, the last applied weight stays.",
                ),
                &["service"],
            )?,
            applied_version: IntGaugeVec::new(
                Opts::new(
                    "canary_cluster_applied_version",
                    "Version (etcd revision) of the rollout document this node applied.",
                ),
                &["service"],
            )?,
            leader: IntGauge::with_opts(Opts::new(
                "canary_cluster_leader",
                "1 while this node leads (decides for every node).",
            ))?,
            store_reachable: IntGauge::with_opts(Opts::new(
                "canary_cluster_store_reachable",
                "1 while etcd answers this node; 0 while the rollout holds for want of it.",
            ))?,
            nodes: IntGauge::with_opts(Opts::new(
                "canary_cluster_nodes",
                "Nodes with a live report in etcd.",
            ))?,
        };
        registry.register(Box::new(m.config_mismatch.clone()))?;
        registry.register(Box::new(m.applied_version.clone()))?;
        registry.register(Box::new(m.leader.clone()))?;
        registry.register(Box::new(m.store_reachable.clone()))?;
        registry.register(Box::new(m.nodes.clone()))?;
        Ok(m)
    }
}

/// What a node applied of one service's documents.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Applied {
    /// Version of the document applied; `None` before the first.
    pub(super) version: Option<u64>,
    /// Canary weight written to the kernel, basis points.
    pub(super) weight_bp: u32,
    /// The document's reset counter last seen.
    pub(super) reset_epoch: u64,
    /// Why the newest document was not applied, if it was not.
    pub(super) refused: Option<String>,
    pub(super) decided_by: Option<String>,
}
