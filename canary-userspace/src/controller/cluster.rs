//! Cluster mode of the controller: the leader's documents (deciding side) and every node's
//! application of them (applying side). The daemon carries documents and events between
//! these methods and etcd; nothing here does I/O.

use std::collections::BTreeMap;

use super::service::Service;
use super::store::{Applied, ClusterSide};
use super::Controller;
use crate::api::{ClusterStatus, NodeStatus};
use crate::cluster::document::{
    fingerprint, may_apply, ApplyCheck, ConfigFingerprint, DecisionRecord, RolloutDocument,
    DOCUMENT_FORMAT,
};
use crate::cluster::nodes::{self, BackendCounters, FlowTableFill, NodeReport, ServiceReport};
use crate::dataplane::DataPlane;
use crate::domain::{Group, Weight};
use crate::judge::FlowCounts;
use crate::rollout::{Event, Phase, Rollout};

/// The fingerprint of a service's hashing on this node.
pub(super) fn local_fingerprint(s: &Service, hash_seed: u32) -> ConfigFingerprint {
    let names = |g: Group| -> Vec<String> { s.config.group(g).map(|b| b.name.clone()).collect() };
    fingerprint(
        &names(Group::Stable),
        &names(Group::Canary),
        hash_seed,
        canary_common::MAGLEV_TABLE_SIZE,
    )
    .with_affinity(s.config.affinity.as_str())
}

/// The document of service `s` as decided by `node` now.
pub(super) fn document_of(s: &Service, node: &str, hash_seed: u32) -> RolloutDocument {
    let rollout = &s.rollout;
    RolloutDocument {
        format: DOCUMENT_FORMAT,
        service: s.name().to_string(),
        phase: rollout.phase(),
        step: rollout
            .step(&s.config.rollout)
            .map_or(0, |i| u32::try_from(i).unwrap_or(u32::MAX)),
        weight_bp: s.decided_weight().basis_points(),
        reset_epoch: s.reset_count,
        paused: rollout.paused(),
        last_decision: rollout.last_decision().map(|d| DecisionRecord {
            at_ms: d.at_ms,
            action: d.action.as_str().to_string(),
            reason: d.reason.as_str().to_string(),
            from_bp: d.from.basis_points(),
            to_bp: d.to.basis_points(),
            message: d.message.clone(),
            signals: Vec::new(),
        }),
        fingerprint: local_fingerprint(s, hash_seed),
        decided_by: node.to_string(),
        decided_at_ms: crate::cluster::unix_ms(),
        rollout_state: serde_json::from_str(&rollout.to_json()).ok(),
        version: 0,
    }
}

/// The part of a document that, when it changes, must be published.
fn document_key(d: &RolloutDocument) -> String {
    serde_json::json!([
        d.phase,
        d.step,
        d.weight_bp,
        d.reset_epoch,
        d.paused,
        d.last_decision,
        d.fingerprint,
        d.decided_by,
    ])
    .to_string()
}

impl ClusterSide {
    /// Puts a decided document in the outbox when it says something new.
    pub(super) fn queue(&mut self, document: RolloutDocument) {
        let key = document_key(&document);
        if self.published.get(&document.service) != Some(&key) {
            self.published.insert(document.service.clone(), key);
            self.outbox.insert(document.service.clone(), document);
        }
    }
}

impl<D: DataPlane> Controller<D> {
    /// Whether this controller runs as a cluster node.
    pub fn is_clustered(&self) -> bool {
        self.store.cluster_side().is_some()
    }

    /// Whether this node leads and decides (always false on one node: it has no leader).
    pub fn leading(&self) -> bool {
        self.store.cluster_side().is_some_and(|c| c.leading)
    }

    /// The name of the service `name` designates (or the only one).
    pub fn service_name(&self, name: Option<&str>) -> Result<String, String> {
        crate::api::select_service(self.services.iter().map(Service::name), name)
            .map(|i| self.services[i].name().to_string())
    }

    /// Leader: the documents decided since the last call, for the store.
    pub fn take_documents(&mut self) -> Vec<RolloutDocument> {
        self.store
            .cluster_side_mut()
            .map(|c| std::mem::take(&mut c.outbox).into_values().collect())
            .unwrap_or_default()
    }

    /// Whether the store answers (`None`) or why not: while it does not, the rollout holds
    /// and the heartbeat is not refreshed.
    pub fn on_store(&mut self, problem: Option<String>) {
        let Some(side) = self.store.cluster_side_mut() else {
            return;
        };
        if side.store_problem != problem {
            if let Some(why) = &problem {
                tracing::warn!(node = %side.node, "etcd unreachable, the rollout holds and forwarding continues: {why}");
            } else {
                tracing::info!(node = %side.node, "etcd reachable again");
            }
            side.store_problem = problem;
            self.refresh();
        }
    }

    /// The node that leads now, as the election says.
    pub fn on_leader(&mut self, leader: Option<String>) {
        let Some(side) = self.store.cluster_side_mut() else {
            return;
        };
        if side.leader != leader {
            tracing::info!(node = %side.node, leader = leader.as_deref().unwrap_or("(none)"), "leader");
            side.leader = leader;
            self.refresh();
        }
    }

    /// This node won the election: it continues every service's rollout from the store's
    /// documents (`documents`, read after winning) at the same step, and decides from now on.
    pub fn take_leadership(&mut self, documents: &[RolloutDocument], now_ms: u64, now_ns: u64) {
        let Some(side) = self.store.cluster_side_mut() else {
            return;
        };
        side.leading = true;
        side.published.clear();
        let node = side.node.clone();
        tracing::info!(node, "leading: this node decides for every node");
        for i in 0..self.services.len() {
            let s = &mut self.services[i];
            // Scraping starts now: the first scrape is each backend's baseline.
            for (_, state) in s.backends_mut() {
                state.baseline = crate::upstream::Snapshot::default();
            }
            let stored = documents
                .iter()
                .find(|d| d.service == s.name())
                .and_then(|d| {
                    let state = d.rollout_state.as_ref()?;
                    let rollout = Rollout::from_json(&state.to_string()).ok()?;
                    rollout.validate().ok()?;
                    Some((rollout, d.reset_epoch))
                });
            let out = if let Some((rollout, reset_epoch)) = stored {
                s.rollout = rollout;
                s.reset_count = reset_epoch;
                s.rollout.on_event(
                    now_ms,
                    Event::CanaryChanged {
                        fingerprint: s.config.canary_fingerprint(),
                    },
                    &s.config.rollout,
                    &s.config.upstream,
                )
            } else {
                let (rollout, out) =
                    Rollout::new(now_ms, s.config.canary_fingerprint(), &s.config.rollout);
                s.rollout = rollout;
                out
            };
            // A rollout taken over during its warm-up: this node warms the canary up again
            // (the previous leader's warm-up ended with it).
            let warming = self.services[i].rollout.phase() == Phase::Pending;
            let out = crate::rollout::Output {
                warm_up: out.warm_up || warming,
                ..out
            };
            self.apply_output(i, out, now_ns);
            self.persist(i);
        }
        self.refresh();
    }

    /// This node no longer leads (its lease is gone, or a write was refused): it stops deciding.
    pub fn give_up_leadership(&mut self, why: &str) {
        let Some(side) = self.store.cluster_side_mut() else {
            return;
        };
        if side.leading {
            tracing::warn!(node = %side.node, "no longer leading: {why}");
        }
        side.leading = false;
        side.outbox.clear();
        side.published.clear();
        self.refresh();
    }

    /// Applying side, every node: a document from the store. Applied when newer and decided
    /// for this node's config; refused (the last applied weight stays) when the config
    /// differs.
    pub fn on_document(&mut self, document: &RolloutDocument, now_ns: u64) {
        let hash_seed = self.hash_seed;
        let Some(i) = self
            .services
            .iter()
            .position(|s| s.name() == document.service)
        else {
            tracing::debug!(service = %document.service, "document of a service not configured here");
            return;
        };
        let Some(side) = self.store.cluster_side() else {
            return;
        };
        let leading = side.leading;
        let node = side.node.clone();
        let metrics = side.metrics.clone();
        let s = &mut self.services[i];
        let local = local_fingerprint(s, hash_seed);
        let applied = s.applied.get_or_insert_with(Applied::default);
        let check = may_apply(document, s.config.name.as_str(), &local, applied.version);
        match check {
            ApplyCheck::Apply => {
                let first = applied.version.is_none();
                if document.reset_epoch > applied.reset_epoch && !first {
                    // A reset rollback: flows established before now are re-decided here.
                    s.reset_epoch_ns = now_ns.max(1);
                }
                applied.version = Some(document.version);
                applied.weight_bp = document.weight_bp;
                applied.reset_epoch = document.reset_epoch;
                applied.decided_by = Some(document.decided_by.clone());
                if applied.refused.take().is_some() {
                    tracing::info!(service = %document.service, node, "document applied again: the config matches the leader's");
                }
                tracing::info!(
                    service = %document.service,
                    node,
                    version = document.version,
                    weight_bp = document.weight_bp,
                    decided_by = %document.decided_by,
                    "rollout document applied"
                );
                if !leading {
                    // The rollout mirrors the leader's, for status and for a takeover.
                    if let Some(rollout) = document
                        .rollout_state
                        .as_ref()
                        .and_then(|v| Rollout::from_json(&v.to_string()).ok())
                    {
                        let new_decision = rollout.last_decision() != s.rollout.last_decision();
                        s.rollout = rollout;
                        s.reset_count = document.reset_epoch;
                        if new_decision {
                            if let Some(d) = s.rollout.last_decision() {
                                s.events.push_back(d.clone());
                                while s.events.len() > 50 {
                                    s.events.pop_front();
                                }
                            }
                        }
                    }
                }
                if let Some(m) = &metrics {
                    m.config_mismatch
                        .with_label_values(&[s.config.name.as_str()])
                        .set(0);
                    m.applied_version
                        .with_label_values(&[s.config.name.as_str()])
                        .set(i64::try_from(document.version).unwrap_or(i64::MAX));
                }
                let _ = self.write_control_now(i, now_ns);
                self.refresh();
            }
            ApplyCheck::NotNewer { .. } => {}
            ApplyCheck::ConfigMismatch { .. } | ApplyCheck::Invalid { .. } => {
                let message = format!(
                    "service {}: document version {} from {} refused: {check}",
                    document.service, document.version, document.decided_by
                );
                if applied.refused.as_deref() != Some(message.as_str()) {
                    tracing::error!(service = %document.service, node, "{message}");
                    applied.refused = Some(message);
                }
                if let Some(m) = &metrics {
                    m.config_mismatch
                        .with_label_values(&[s.config.name.as_str()])
                        .set(i64::from(matches!(
                            check,
                            ApplyCheck::ConfigMismatch { .. }
                        )));
                }
                self.refresh();
            }
        }
    }

    /// Writes the control entry of service `i` now (a newly applied weight).
    fn write_control_now(&mut self, i: usize, now_ns: u64) -> Result<(), super::ControllerError> {
        self.write_control(i, now_ns)
    }

    /// Every node's report as just read from etcd: for `/status`, and (leader) the new flows
    /// summed over every node since the previous read, for the judge.
    pub fn on_node_reports(&mut self, reports: Vec<NodeReport>) {
        let names: Vec<String> = self.services.iter().map(|s| s.name().to_string()).collect();
        let Some(side) = self.store.cluster_side_mut() else {
            return;
        };
        let increase = nodes::increase(&side.reports, &reports);
        for name in &names {
            let totals = nodes::sum_service(&increase, name);
            let f = side
                .flows
                .entry(name.clone())
                .or_insert(FlowCounts::default());
            f.stable += totals.stable.new_flows;
            f.canary += totals.canary.new_flows;
        }
        if let Some(m) = &side.metrics {
            m.nodes
                .set(i64::try_from(reports.len()).unwrap_or(i64::MAX));
        }
        side.previous_reports = std::mem::replace(&mut side.reports, reports);
        // Nodes whose report vanished stay listed, not alive.
        for gone in side
            .previous_reports
            .iter()
            .filter(|p| !side.reports.iter().any(|r| r.node == p.node))
            .cloned()
            .collect::<Vec<_>>()
        {
            side.gone.insert(gone.node.clone(), gone);
        }
        for r in &side.reports {
            side.gone.remove(&r.node);
        }
        for r in &increase {
            let (mut stable, mut canary) = (0u64, 0u64);
            for s in &r.services {
                for b in &s.backends {
                    match b.group {
                        nodes::Group::Stable => stable += b.new_flows,
                        nodes::Group::Canary => canary += b.new_flows,
                    }
                }
            }
            if stable + canary > 0 {
                side.node_share
                    .insert(r.node.clone(), canary as f64 / (stable + canary) as f64);
            }
        }
        self.refresh();
    }

    /// This node's report: per service the applied document and the kernel's counters per
    /// backend, and the flow table's fill.
    pub fn node_report(&self, at_ms: u64) -> Option<NodeReport> {
        let side = self.store.cluster_side()?;
        let services = self
            .services
            .iter()
            .map(|s| ServiceReport {
                service: s.name().to_string(),
                applied_version: s.applied.as_ref().and_then(|a| a.version),
                applied_weight_bp: s.applied.as_ref().map(|a| a.weight_bp),
                refused: s.applied.as_ref().and_then(|a| a.refused.clone()),
                backends: s
                    .config
                    .backends
                    .iter()
                    .map(|b| {
                        let stats = self
                            .programmer
                            .backend_index(s.name(), &b.name)
                            .and_then(|i| self.dp.backend_stats(i).ok())
                            .unwrap_or_default();
                        BackendCounters {
                            backend: b.name.clone(),
                            group: match b.group {
                                Group::Stable => nodes::Group::Stable,
                                Group::Canary => nodes::Group::Canary,
                            },
                            new_flows: stats.new_flows,
                            packets: stats.packets,
                        }
                    })
                    .collect(),
            })
            .collect();
        Some(NodeReport {
            node: side.node.clone(),
            at_ms,
            flow_table: self.dp.flow_table_fill().unwrap_or(FlowTableFill {
                entries: 0,
                capacity: u64::from(self.dataplane_config.flow_table_size),
            }),
            services,
        })
    }

    /// The cluster part of `/status` (and the cluster gauges).
    pub(super) fn cluster_status(&self) -> Option<ClusterStatus> {
        let side = self.store.cluster_side()?;
        if let Some(m) = &side.metrics {
            m.leader.set(i64::from(side.leading));
            m.store_reachable
                .set(i64::from(side.store_problem.is_none()));
        }
        let node_status = |r: &NodeReport, alive: bool| NodeStatus {
            name: r.node.clone(),
            alive,
            applied_versions: r
                .services
                .iter()
                .map(|s| (s.service.clone(), s.applied_version))
                .collect(),
            applied_weight_percent: r
                .services
                .iter()
                .map(|s| {
                    (
                        s.service.clone(),
                        s.applied_weight_bp
                            .map(|w| Weight::from_basis_points(w).percent()),
                    )
                })
                .collect(),
            refused: r
                .services
                .iter()
                .filter_map(|s| Some((s.service.clone(), s.refused.clone()?)))
                .collect(),
            measured_canary_share: side.node_share.get(&r.node).copied(),
            flow_table_entries: r.flow_table.entries,
            flow_table_capacity: r.flow_table.capacity,
        };
        let mut nodes: BTreeMap<String, NodeStatus> = side
            .reports
            .iter()
            .map(|r| (r.node.clone(), node_status(r, true)))
            .collect();
        for (name, r) in &side.gone {
            nodes
                .entry(name.clone())
                .or_insert_with(|| node_status(r, false));
        }
        Some(ClusterStatus {
            node: side.node.clone(),
            leader: side.leader.clone(),
            leading: side.leading,
            store_problem: side.store_problem.clone(),
            heartbeat_held: !self.store.heartbeat_ok(),
            nodes: nodes.into_values().collect(),
        })
    }
}
