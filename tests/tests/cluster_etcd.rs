//! Cluster mode's etcd side against a real etcd (Debian's 3.4, started per test on loopback
//! with a temporary data directory): rollout documents published and watched, one leader among
//! candidates and a takeover within two lease TTLs, fencing of a deposed leader (in process and
//! with a leader process frozen by SIGSTOP), node reports that vanish with their lease, and
//! operator requests answered by the leader.

use std::future::Future;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use canary_lab::etcd::Etcd;
use canary_userspace::cluster::config::{ClusterConfig, StoreKind};
use canary_userspace::cluster::document::{
    fingerprint, DecisionRecord, Phase, RolloutDocument, DOCUMENT_FORMAT,
};
use canary_userspace::cluster::election::{Candidacy, Election, LeaderFence};
use canary_userspace::cluster::nodes::{
    sum_service, BackendCounters, FlowTableFill, Group, NodeDirectory, NodeReport, ServiceReport,
};
use canary_userspace::cluster::ops::{OperatorAnswer, OperatorQueue, Verb};
use canary_userspace::cluster::session::Session;
use canary_userspace::cluster::store::{DocumentEvent, EtcdStore, RolloutStore};
use canary_userspace::cluster::{connect, unix_ms, ClusterError, KeySpace};

const TTL: Duration = Duration::from_secs(2);
/// Environment of the child process in `frozen_leader_cannot_publish_after_sigcont`.
const CHILD_ENDPOINT_ENV: &str = "CANARY_CLUSTER_TEST_CHILD_ENDPOINT";

fn config(etcd: &Etcd, node: &str) -> ClusterConfig {
    ClusterConfig {
        store: StoreKind::Etcd,
        etcd_endpoints: vec![etcd.endpoint()],
        lease_ttl: TTL,
        ..ClusterConfig::local(node)
    }
}

async fn client(etcd: &Etcd, node: &str) -> etcd_client::Client {
    connect(&config(etcd, node))
        .await
        .expect("connects to etcd")
}

fn keys() -> KeySpace {
    KeySpace::new("/canary-test")
}

fn document(service: &str, weight_bp: u32, decided_by: &str) -> RolloutDocument {
    RolloutDocument {
        format: DOCUMENT_FORMAT,
        service: service.into(),
        phase: Phase::Stepping,
        step: 1,
        weight_bp,
        reset_epoch: 0,
        paused: false,
        last_decision: Some(DecisionRecord {
            at_ms: unix_ms(),
            action: "step".into(),
            reason: "judge".into(),
            from_bp: 1_000,
            to_bp: weight_bp,
            message: "every signal passed".into(),
            signals: Vec::new(),
        }),
        fingerprint: fingerprint(&["v1-a", "v1-b"], &["v2-a"], 7, 16_381),
        decided_by: decided_by.into(),
        decided_at_ms: unix_ms(),
        rollout_state: Some(serde_json::json!({"looks": 2})),
        version: 0,
    }
}

/// Polls `condition` every 20 ms until it holds; panics with `what` after `limit`.
async fn wait_until<F, Fut>(limit: Duration, what: &str, mut condition: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if condition().await {
            return started.elapsed();
        }
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn next_event(watch: &mut canary_userspace::cluster::store::DocumentWatch) -> DocumentEvent {
    tokio::time::timeout(Duration::from_secs(10), watch.recv())
        .await
        .expect("a document event within 10 s")
        .expect("the watch is open")
}

/// A leader of its own: a session and a won campaign.
async fn lead(etcd: &Etcd, node: &str) -> (Session, LeaderFence) {
    let client = client(etcd, node).await;
    let session = Session::start(&client, node, TTL).await.expect("lease");
    let fence = Election::new(&client, &keys(), node)
        .campaign(&session)
        .await
        .expect("campaign");
    (session, fence)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_are_published_watched_and_survive_an_etcd_restart() {
    let mut etcd = Etcd::start().expect("etcd starts");
    let client = client(&etcd, "lb-1").await;
    let store = EtcdStore::new(&client, &keys());
    let (_session, fence) = lead(&etcd, "lb-1").await;

    let mut watch = store.watch().await.expect("watch");
    assert_eq!(
        next_event(&mut watch).await,
        DocumentEvent::Snapshot(vec![])
    );

    let doc = document("sentiment", 2_500, "lb-1");
    let v1 = store.publish(&fence, &doc).await.expect("publish");
    let DocumentEvent::Published(seen) = next_event(&mut watch).await else {
        panic!("expected the published document")
    };
    assert_eq!(seen.version, v1, "the watch reports the write's revision");
    assert_eq!(
        *seen,
        RolloutDocument {
            version: v1,
            ..doc.clone()
        }
    );

    let v2 = store
        .publish(&fence, &document("sentiment", 5_000, "lb-1"))
        .await
        .expect("second publish");
    assert!(v2 > v1, "versions grow: {v1} then {v2}");
    let DocumentEvent::Published(seen) = next_event(&mut watch).await else {
        panic!("expected the second document")
    };
    assert_eq!((seen.weight_bp, seen.version), (5_000, v2));
    let loaded = store.load("sentiment").await.unwrap().expect("stored");
    assert_eq!((loaded.weight_bp, loaded.version), (5_000, v2));
    assert!(store.load("other").await.unwrap().is_none());
    assert_eq!(store.load_all().await.unwrap().len(), 1);

    // etcd down: the watch says so; back: a snapshot with the document as it was.
    etcd.stop();
    let event = next_event(&mut watch).await;
    assert!(
        matches!(event, DocumentEvent::Unreachable(_)),
        "expected Unreachable, got {event:?}"
    );
    assert!(
        store.load_all().await.is_err(),
        "reads fail while etcd is down"
    );
    etcd.restart().expect("etcd restarts");
    let snapshot = loop {
        match next_event(&mut watch).await {
            DocumentEvent::Snapshot(docs) => break docs,
            DocumentEvent::Unreachable(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(snapshot.len(), 1);
    assert_eq!((snapshot[0].weight_bp, snapshot[0].version), (5_000, v2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_and_a_takeover_within_two_lease_ttls() {
    let etcd = Etcd::start().expect("etcd starts");
    let a = Candidacy::spawn(&client(&etcd, "lb-a").await, &keys(), "lb-a", TTL);
    let b = Candidacy::spawn(&client(&etcd, "lb-b").await, &keys(), "lb-b", TTL);

    wait_until(
        Duration::from_secs(10),
        "a leader elected and seen by both",
        || {
            let (sa, sb) = (a.state().borrow().clone(), b.state().borrow().clone());
            async move {
                sa.leading.is_some() != sb.leading.is_some()
                    && sa.leader.is_some()
                    && sa.leader == sb.leader
            }
        },
    )
    .await;
    let (leader, follower, follower_name) = if a.leading().is_some() {
        (a, b, "lb-b")
    } else {
        (b, a, "lb-a")
    };
    let first = leader.leading().expect("leads");
    assert_eq!(
        follower.state().borrow().leader.as_deref(),
        Some(first.node.as_str()),
        "the follower names the leader"
    );
    // Still exactly one leader a while later (no flapping).
    tokio::time::sleep(TTL).await;
    assert!(leader.leading().is_some() && follower.leading().is_none());

    // The leader stops keeping its lease alive, as a crashed or frozen node would.
    drop(leader);
    let took = wait_until(2 * TTL, "the other candidate leads", || {
        let leading = follower.leading();
        async move { leading.is_some() }
    })
    .await;
    let second = follower.leading().unwrap();
    assert_eq!(second.node, follower_name);
    assert!(second.revision > first.revision);
    wait_until(Duration::from_secs(5), "the new leader is reported", || {
        let leader = follower.state().borrow().leader.clone();
        async move { leader.as_deref() == Some(follower_name) }
    })
    .await;
    eprintln!("takeover after {took:?} (lease TTL {TTL:?})");

    // A clean stop resigns: nobody leads afterwards.
    let probe = Election::new(&client(&etcd, "probe").await, &keys(), "probe");
    follower.stop().await;
    assert_eq!(
        probe.leader().await.unwrap(),
        None,
        "resign removed the key"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_lease_is_revoked_stops_leading_and_campaigns_again() {
    let etcd = Etcd::start().expect("etcd starts");
    let a = Candidacy::spawn(&client(&etcd, "lb-a").await, &keys(), "lb-a", TTL);
    wait_until(Duration::from_secs(10), "lb-a leads", || {
        let leading = a.leading();
        async move { leading.is_some() }
    })
    .await;
    let first = a.leading().unwrap();
    let mut state = a.state();

    // The lease is revoked behind its back (an operator, or etcd restored from a backup).
    client(&etcd, "probe")
        .await
        .lease_revoke(first.lease)
        .await
        .expect("revoke");
    tokio::time::timeout(TTL, state.wait_for(|s| s.leading.is_none()))
        .await
        .expect("lb-a notices the loss within one TTL")
        .unwrap();
    wait_until(2 * TTL, "lb-a leads again on a new lease", || {
        let leading = a.leading();
        async move { leading.is_some() }
    })
    .await;
    let second = a.leading().unwrap();
    assert_ne!(second.lease, first.lease);
    assert!(second.revision > first.revision);
    let store = EtcdStore::new(&client(&etcd, "probe").await, &keys());
    assert!(
        matches!(
            store.publish(&first, &document("s", 1, "lb-a")).await,
            Err(ClusterError::NotLeader { .. })
        ),
        "the old fence is dead"
    );
    store
        .publish(&second, &document("s", 1, "lb-a"))
        .await
        .expect("the new fence writes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_leader_cannot_publish_or_overwrite() {
    let etcd = Etcd::start().expect("etcd starts");
    let store = EtcdStore::new(&client(&etcd, "probe").await, &keys());
    let (session_a, fence_a) = lead(&etcd, "lb-a").await;
    store
        .publish(&fence_a, &document("s", 1_000, "lb-a"))
        .await
        .expect("the leader publishes");

    // lb-a stops renewing (crash or pause); lb-b campaigns and wins once the lease expired.
    let candidate_b = Candidacy::spawn(&client(&etcd, "lb-b").await, &keys(), "lb-b", TTL);
    drop(session_a);
    wait_until(2 * TTL, "lb-b leads", || {
        let leading = candidate_b.leading();
        async move { leading.is_some() }
    })
    .await;
    let fence_b = candidate_b.leading().unwrap();
    let v_b = store
        .publish(&fence_b, &document("s", 2_500, "lb-b"))
        .await
        .expect("the new leader publishes");

    // lb-a comes back still believing it leads: its decision is refused, nothing overwritten.
    let err = store
        .publish(&fence_a, &document("s", 10_000, "lb-a"))
        .await
        .expect_err("a deposed leader's publish must fail");
    assert!(
        matches!(&err, ClusterError::NotLeader { node, .. } if node == "lb-a"),
        "{err}"
    );
    assert!(
        err.to_string().contains("node lb-a no longer leads"),
        "{err}"
    );
    let stored = store.load("s").await.unwrap().unwrap();
    assert_eq!(
        (stored.weight_bp, stored.decided_by.as_str(), stored.version),
        (2_500, "lb-b", v_b)
    );

    // A leader that resigned is fenced off at once too.
    candidate_b.stop().await;
    let err = store
        .publish(&fence_b, &document("s", 5_000, "lb-b"))
        .await
        .expect_err("a resigned leader's publish must fail");
    assert!(matches!(err, ClusterError::NotLeader { .. }), "{err}");
    assert_eq!(store.load("s").await.unwrap().unwrap().version, v_b);
}

/// The child side of `frozen_leader_cannot_publish_after_sigcont` (runs only as that child).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process of frozen_leader_cannot_publish_after_sigcont"]
async fn child_leader() {
    let Ok(endpoint) = std::env::var(CHILD_ENDPOINT_ENV) else {
        eprintln!(
            "child_leader runs only as the child of frozen_leader_cannot_publish_after_sigcont"
        );
        return;
    };
    let config = ClusterConfig {
        store: StoreKind::Etcd,
        etcd_endpoints: vec![endpoint],
        lease_ttl: TTL,
        ..ClusterConfig::local("lb-frozen")
    };
    let client = connect(&config).await.expect("connects");
    let session = Session::start(&client, "lb-frozen", TTL)
        .await
        .expect("lease");
    let fence = Election::new(&client, &keys(), "lb-frozen")
        .campaign(&session)
        .await
        .expect("campaign");
    say(&format!("LEADING {}", fence.revision));
    // Frozen here by the parent (SIGSTOP), continued later (SIGCONT): then the "go" line.
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).expect("go line");
    let store = EtcdStore::new(&client, &keys());
    match store
        .publish(&fence, &document("s", 10_000, "lb-frozen"))
        .await
    {
        Ok(version) => say(&format!("PUBLISHED {version}")),
        Err(e) => say(&format!("REFUSED {e}")),
    }
}

/// A line to the parent (straight to the pipe: the test harness captures `println!`).
fn say(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").expect("write to the parent");
    out.flush().expect("flush to the parent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_leader_cannot_publish_after_sigcont() {
    let etcd = Etcd::start().expect("etcd starts");
    let mut child = ChildProcess(
        Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "child_leader",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENDPOINT_ENV, etcd.endpoint())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("child test process starts"),
    );
    let lines = lines_of(child.0.stdout.take().unwrap());
    let next_line = |what: &str| {
        lines
            .recv_timeout(Duration::from_mins(1))
            .unwrap_or_else(|_| panic!("the child ended or hung before {what}"))
    };
    // The harness's own "test child_leader ... " may precede a line on the same line.
    while !next_line("it led").contains("LEADING ") {}
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.0.id()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).expect("SIGSTOP");

    // Past the TTL another node takes over and decides.
    let candidate = Candidacy::spawn(&client(&etcd, "lb-live").await, &keys(), "lb-live", TTL);
    wait_until(3 * TTL, "lb-live leads while lb-frozen is stopped", || {
        let leading = candidate.leading();
        async move { leading.is_some() }
    })
    .await;
    let store = EtcdStore::new(&client(&etcd, "probe").await, &keys());
    let fence = candidate.leading().unwrap();
    let version = store
        .publish(&fence, &document("s", 2_500, "lb-live"))
        .await
        .unwrap();

    // The frozen leader wakes up and tries to write its decision.
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).expect("SIGCONT");
    {
        use std::io::Write;
        let stdin = child.0.stdin.as_mut().unwrap();
        stdin.write_all(b"go\n").unwrap();
        stdin.flush().unwrap();
    }
    let verdict = loop {
        let line = next_line("its verdict");
        if let Some(at) = line.find("PUBLISHED ").or_else(|| line.find("REFUSED ")) {
            break line[at..].to_string();
        }
    };
    assert!(
        verdict.starts_with("REFUSED") && verdict.contains("lb-frozen no longer leads"),
        "the frozen leader's publish went through: {verdict}"
    );
    let stored = store.load("s").await.unwrap().unwrap();
    assert_eq!(
        (stored.decided_by.as_str(), stored.version),
        ("lb-live", version)
    );
}

/// The lines a child writes, read on a thread of their own (so a wait can time out).
fn lines_of(stdout: std::process::ChildStdout) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line.trim().to_string()).is_err() {
                break;
            }
        }
    });
    rx
}

/// Kills the child (by PID) and reaps it, also when the test fails.
struct ChildProcess(Child);

impl Drop for ChildProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn node_report(node: &str, stable: u64, canary: u64, version: u64) -> NodeReport {
    NodeReport {
        node: node.into(),
        at_ms: unix_ms(),
        flow_table: FlowTableFill {
            entries: stable + canary,
            capacity: 1 << 20,
        },
        services: vec![ServiceReport {
            service: "s".into(),
            applied_version: Some(version),
            applied_weight_bp: Some(2_500),
            refused: None,
            backends: vec![
                BackendCounters {
                    backend: "v1-a".into(),
                    group: Group::Stable,
                    new_flows: stable,
                    packets: stable * 8,
                },
                BackendCounters {
                    backend: "v2-a".into(),
                    group: Group::Canary,
                    new_flows: canary,
                    packets: canary * 8,
                },
            ],
        }],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_reports_are_summed_and_vanish_with_their_lease() {
    let etcd = Etcd::start().expect("etcd starts");
    let directory = NodeDirectory::new(&client(&etcd, "leader").await, &keys());
    let client_a = client(&etcd, "lb-a").await;
    let client_b = client(&etcd, "lb-b").await;
    let session_a = Session::start(&client_a, "lb-a", TTL).await.unwrap();
    let session_b = Session::start(&client_b, "lb-b", TTL).await.unwrap();
    NodeDirectory::new(&client_a, &keys())
        .publish(session_a.lease(), &node_report("lb-a", 300, 100, 7))
        .await
        .unwrap();
    NodeDirectory::new(&client_b, &keys())
        .publish(session_b.lease(), &node_report("lb-b", 600, 200, 7))
        .await
        .unwrap();

    let reports = directory.read_all().await.unwrap();
    assert_eq!(reports.len(), 2);
    let totals = sum_service(&reports, "s");
    assert_eq!(
        (totals.stable.new_flows, totals.canary.new_flows),
        (900, 300)
    );
    assert_eq!(totals.canary_share(), Some(0.25));

    // lb-a stops renewing (crash): its report disappears once the lease expires, lb-b's stays.
    let stopped = Instant::now();
    drop(session_a);
    wait_until(2 * TTL, "lb-a's report expires", || {
        let directory = directory.clone();
        async move {
            let nodes: Vec<String> = directory
                .read_all()
                .await
                .unwrap()
                .into_iter()
                .map(|r| r.node)
                .collect();
            nodes == ["lb-b"]
        }
    })
    .await;
    assert!(
        stopped.elapsed() >= Duration::from_millis(500),
        "the report vanished before its lease could have expired"
    );
    // Waited a whole TTL more: lb-b's, renewed, is still there.
    tokio::time::sleep(TTL).await;
    assert_eq!(directory.read_all().await.unwrap().len(), 1);

    // A clean stop (revoke) removes it at once.
    session_b.close().await.unwrap();
    assert!(directory.read_all().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_requests_are_carried_out_by_the_leader() {
    let etcd = Etcd::start().expect("etcd starts");
    let leader_client = client(&etcd, "lb-1").await;
    let (_session, fence) = lead(&etcd, "lb-1").await;
    let asker = OperatorQueue::new(&client(&etcd, "lb-2").await, &keys(), "lb-2");

    // Nobody carries requests out yet: the asker gives up and withdraws its request.
    let err = asker
        .ask("s", Verb::Pause, Duration::from_millis(500))
        .await
        .expect_err("no answer without a leader loop");
    assert!(
        matches!(err, ClusterError::Timeout { .. }) && err.to_string().contains("nothing changed"),
        "{err}"
    );
    let leader_queue = OperatorQueue::new(&leader_client, &keys(), "lb-1");
    assert!(
        leader_queue.pending().await.unwrap().is_empty(),
        "withdrawn"
    );

    // The leader's loop: carry out each request (publish the new document), answer it.
    let store = EtcdStore::new(&leader_client, &keys());
    let loop_fence = fence.clone();
    let loop_queue = leader_queue.clone();
    let leader_loop = tokio::spawn(async move {
        let mut requests = loop_queue.watch_requests();
        while let Some(batch) = requests.recv().await {
            let Ok(batch) = batch else { continue };
            for request in batch {
                let (weight, message) = match request.verb {
                    Verb::SetWeight { weight_bp } => {
                        (weight_bp, format!("weight set to {weight_bp} bp"))
                    }
                    _ => (2_500, "promoted to 25 %".to_string()),
                };
                let version = store
                    .publish(&loop_fence, &document(&request.service, weight, "lb-1"))
                    .await
                    .unwrap();
                let answer = OperatorAnswer {
                    id: request.id.clone(),
                    ok: true,
                    message: format!("{message} (asked on {})", request.from_node),
                    decided_by: "lb-1".into(),
                    document_version: Some(version),
                    at_ms: unix_ms(),
                };
                assert!(loop_queue.answer(&loop_fence, &answer).await.unwrap());
            }
        }
    });

    let answer = asker
        .ask("s", Verb::Promote { full: false }, Duration::from_secs(10))
        .await
        .expect("answered");
    assert!(answer.ok);
    assert_eq!(
        answer.decided_by, "lb-1",
        "the answer names the deciding node"
    );
    assert_eq!(answer.message, "promoted to 25 % (asked on lb-2)");
    let stored = EtcdStore::new(&leader_client, &keys())
        .load("s")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(Some(stored.version), answer.document_version);

    let answer = asker
        .ask(
            "s",
            Verb::SetWeight { weight_bp: 1_250 },
            Duration::from_secs(10),
        )
        .await
        .expect("answered");
    assert_eq!(answer.message, "weight set to 1250 bp (asked on lb-2)");
    assert!(
        leader_queue.pending().await.unwrap().is_empty(),
        "answered requests are removed"
    );
    leader_loop.abort();

    // A node that does not lead cannot answer: its answer transaction is fenced.
    let (_other_session, not_leading) = {
        let c = client(&etcd, "lb-3").await;
        let s = Session::start(&c, "lb-3", TTL).await.unwrap();
        let fake = LeaderFence {
            node: "lb-3".into(),
            key: format!("{}/{:x}", keys().election(), s.lease()),
            revision: 1,
            lease: s.lease(),
        };
        (s, fake)
    };
    let asked = tokio::spawn({
        let asker = asker.clone();
        async move { asker.ask("s", Verb::Rollback, Duration::from_secs(3)).await }
    });
    let pending = wait_until(Duration::from_secs(5), "the request is pending", || {
        let q = leader_queue.clone();
        async move { !q.pending().await.unwrap().is_empty() }
    });
    pending.await;
    let request = leader_queue.pending().await.unwrap().remove(0);
    let err = leader_queue
        .answer(
            &not_leading,
            &OperatorAnswer {
                id: request.id,
                ok: true,
                message: "rolled back".into(),
                decided_by: "lb-3".into(),
                document_version: None,
                at_ms: unix_ms(),
            },
        )
        .await
        .expect_err("a node that does not lead cannot answer");
    assert!(matches!(err, ClusterError::NotLeader { .. }), "{err}");
    let outcome = asked.await.unwrap();
    assert!(
        matches!(outcome, Err(ClusterError::Timeout { .. })),
        "nobody with the leadership answered: {outcome:?}"
    );
}
