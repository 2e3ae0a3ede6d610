//! The controller in cluster mode against the in-memory store and the fake data plane, with a
//! controllable clock: the leader decides, every node applies what the store hands back.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use super::tests::config_text;
use super::{Controller, DecisionStore};
use crate::api::{OperatorCommand, Status};
use crate::cluster::election::LeaderFence;
use crate::cluster::store::{MemoryStore, RolloutStore};
use crate::config::Config;
use crate::dataplane::fake::FakeDataPlane;
use crate::dataplane::DataPlane;
use crate::metrics::Metrics;

const SECOND_NS: u64 = 1_000_000_000;

fn node(name: &str, hash_seed: u32) -> (Controller<FakeDataPlane>, Arc<RwLock<Status>>) {
    let text = config_text("  start = \"paused\"\n").replacen(
        "[dataplane]\n",
        &format!("[dataplane]\nhash_seed = {hash_seed}\n"),
        1,
    );
    let config = Config::from_toml_str(&text).expect("valid test config");
    assert_eq!(config.dataplane.hash_seed, hash_seed);
    let status = Arc::new(RwLock::new(Status::default()));
    let mut c = Controller::new(
        config,
        FakeDataPlane::new(),
        false,
        DecisionStore::cluster(name),
        Metrics::new().unwrap(),
        status.clone(),
        None,
        &BTreeMap::new(),
        0,
        SECOND_NS,
    )
    .expect("controller starts");
    // The first poll places the service in the data plane.
    c.on_poll(1_000, SECOND_NS, &[], &BTreeMap::new()).unwrap();
    (c, status)
}

fn fence(node: &str) -> LeaderFence {
    LeaderFence {
        node: node.into(),
        key: format!("/canary/leader/{node}"),
        revision: 7,
        lease: 7,
    }
}

/// The control entry the node's kernel holds for the service.
fn kernel(c: &Controller<FakeDataPlane>) -> canary_common::ServiceControl {
    let index = c.programmer.service_index("sentiment").expect("placed");
    c.dataplane().control(index).unwrap()
}

/// Publishes the leader's pending documents and hands every stored document to `nodes`.
async fn carry(
    store: &MemoryStore,
    leader: &mut Controller<FakeDataPlane>,
    nodes: &mut [&mut Controller<FakeDataPlane>],
    now_ns: u64,
) {
    for d in leader.take_documents() {
        store
            .publish(&fence("a"), &d)
            .await
            .expect("the leader's write");
    }
    for d in store.load_all().await.unwrap() {
        leader.on_document(&d, now_ns);
        for n in nodes.iter_mut() {
            n.on_document(&d, now_ns);
        }
    }
}

#[tokio::test]
async fn leader_decides_every_node_applies_what_the_store_holds() {
    let store = MemoryStore::new();
    store.set_leader(Some(fence("a")));
    let (mut a, _) = node("a", 7);
    let (mut b, b_status) = node("b", 7);
    for n in [&mut a, &mut b] {
        n.on_store(None);
        n.on_leader(Some("a".into()));
    }
    // b does not lead: a verb there is refused, naming the leader.
    let refused = b.on_operator(
        2_000,
        2 * SECOND_NS,
        None,
        &OperatorCommand::SetWeight { percent: 40.0 },
    );
    assert!(!refused.ok);
    assert!(
        refused.message.contains("the leader (a) decides"),
        "{}",
        refused.message
    );

    a.take_leadership(&[], 2_000, 2 * SECOND_NS);
    carry(&store, &mut a, &mut [&mut b], 2 * SECOND_NS).await;
    let reply = a.on_operator(
        3_000,
        3 * SECOND_NS,
        None,
        &OperatorCommand::SetWeight { percent: 40.0 },
    );
    assert!(reply.ok, "{}", reply.message);
    // Decided, not applied yet: the kernel's weight comes from the store only.
    assert_eq!(kernel(&a).canary_weight, 0);
    assert_eq!(kernel(&b).canary_weight, 0);
    carry(&store, &mut a, &mut [&mut b], 3 * SECOND_NS).await;
    assert_eq!(kernel(&a).canary_weight, 4_000);
    assert_eq!(kernel(&b).canary_weight, 4_000);
    let status = b_status.read().unwrap().clone();
    let s = &status.services[0];
    assert!((s.weight_percent - 40.0).abs() < 1e-9);
    assert_eq!(s.cluster.as_ref().unwrap().decided_by.as_deref(), Some("a"));
    assert!(s.paused, "the follower mirrors the leader's rollout: {s:?}");

    // b takes over from the store's documents at the same state.
    let documents = store.load_all().await.unwrap();
    b.take_leadership(&documents, 4_000, 4 * SECOND_NS);
    assert!(b.leading());
    assert_eq!(
        b.rollout("sentiment").unwrap().weight().basis_points(),
        4_000
    );
    assert!(b.rollout("sentiment").unwrap().paused());
}

#[tokio::test]
async fn a_node_with_another_hash_seed_refuses_and_keeps_its_weight() {
    let store = MemoryStore::new();
    store.set_leader(Some(fence("a")));
    let (mut a, _) = node("a", 7);
    let (mut c, c_status) = node("c", 8);
    for n in [&mut a, &mut c] {
        n.on_store(None);
        n.on_leader(Some("a".into()));
    }
    a.take_leadership(&[], 2_000, 2 * SECOND_NS);
    let reply = a.on_operator(
        3_000,
        3 * SECOND_NS,
        None,
        &OperatorCommand::SetWeight { percent: 30.0 },
    );
    assert!(reply.ok, "{}", reply.message);
    carry(&store, &mut a, &mut [&mut c], 3 * SECOND_NS).await;
    assert_eq!(kernel(&a).canary_weight, 3_000);
    assert_eq!(
        kernel(&c).canary_weight,
        0,
        "the refusing node keeps its last weight"
    );
    let status = c_status.read().unwrap().clone();
    let why = status.services[0]
        .cluster
        .as_ref()
        .unwrap()
        .refused
        .clone()
        .unwrap();
    assert!(
        why.contains("hash_seed 8 here, 7 in the leader's config"),
        "{why}"
    );
    let metrics = prometheus::TextEncoder::new()
        .encode_to_string(&c.metrics.registry.gather())
        .unwrap();
    assert!(
        metrics.contains("canary_cluster_config_mismatch{service=\"sentiment\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn without_store_or_leader_the_rollout_holds_and_the_heartbeat_is_not_refreshed() {
    let (mut b, status) = node("b", 7);
    b.on_store(None);
    b.on_leader(Some("a".into()));
    b.on_poll(2_000, 2 * SECOND_NS, &[], &BTreeMap::new())
        .unwrap();
    assert_eq!(kernel(&b).heartbeat_ns, 2 * SECOND_NS);
    b.on_store(Some("etcd stopped".into()));
    b.on_poll(3_000, 3 * SECOND_NS, &[], &BTreeMap::new())
        .unwrap();
    b.on_poll(4_000, 4 * SECOND_NS, &[], &BTreeMap::new())
        .unwrap();
    assert_eq!(kernel(&b).heartbeat_ns, 2 * SECOND_NS, "heartbeat held");
    let cluster = status.read().unwrap().cluster.clone().unwrap();
    assert_eq!(cluster.store_problem.as_deref(), Some("etcd stopped"));
    assert!(cluster.heartbeat_held);
    // The store is back but no leader is seen: still held.
    b.on_store(None);
    b.on_leader(None);
    b.on_poll(5_000, 5 * SECOND_NS, &[], &BTreeMap::new())
        .unwrap();
    assert_eq!(kernel(&b).heartbeat_ns, 2 * SECOND_NS);
    b.on_leader(Some("a".into()));
    b.on_poll(6_000, 6 * SECOND_NS, &[], &BTreeMap::new())
        .unwrap();
    assert_eq!(kernel(&b).heartbeat_ns, 6 * SECOND_NS);
}
