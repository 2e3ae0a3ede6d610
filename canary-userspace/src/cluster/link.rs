//! A cluster node's link to etcd, for the daemon: it connects (and keeps retrying), campaigns,
//! watches the rollout documents, publishes this node's report and reads everyone's, publishes
//! the leader's documents fenced on its key, and carries operator requests and answers.
//!
//! Every etcd call runs in a task of its own with a timeout, so the daemon's loop never waits on
//! etcd: results come back as [`LinkEvent`]s. The controller never sees etcd, only these
//! events.

use std::time::Duration;

use etcd_client::Client;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::timeout;

use super::config::ClusterConfig;
use super::document::RolloutDocument;
use super::election::{Candidacy, ElectionState, LeaderFence};
use super::nodes::{NodeDirectory, NodeReport};
use super::ops::{OperatorAnswer, OperatorQueue, OperatorRequest, Verb};
use super::store::{DocumentEvent, EtcdStore, RolloutStore};
use super::{connect, ClusterError, KeySpace};

/// How long one etcd call of the link may take before it counts as "etcd unreachable".
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// What the link tells the daemon.
#[derive(Debug)]
pub enum LinkEvent {
    /// Connected to etcd (once).
    Connected,
    /// The election changed (who leads, whether this node does, problems).
    Election(ElectionState),
    /// The rollout documents.
    Document(DocumentEvent),
    /// Every node's report just read (after this node's was published), or why it could not be.
    Reports(Result<Vec<NodeReport>, String>),
    /// This node won the election with `fence`: the documents to continue from.
    Leadership {
        fence: LeaderFence,
        documents: Vec<RolloutDocument>,
    },
    /// A document was published (its version) or refused.
    Published {
        service: String,
        /// The lease of the leader key the write was fenced on.
        lease: i64,
        result: Result<u64, String>,
    },
    /// Operator requests for the leader to carry out.
    Requests(Vec<OperatorRequest>),
}

struct Connected {
    client: Client,
    candidacy: Candidacy,
    store: EtcdStore,
    queue: OperatorQueue,
    tasks: Vec<JoinHandle<()>>,
}

/// The daemon's side of cluster mode.
pub struct ClusterLink {
    config: ClusterConfig,
    keys: KeySpace,
    events_tx: mpsc::UnboundedSender<LinkEvent>,
    events: mpsc::UnboundedReceiver<LinkEvent>,
    connected: Option<Connected>,
    connecting: Option<JoinHandle<()>>,
    client_rx: Option<oneshot::Receiver<Client>>,
    report: watch::Sender<Option<NodeReport>>,
    lease: watch::Sender<Option<i64>>,
    interval: Duration,
    /// The fence this node leads with, once the documents were handed over.
    fence: Option<LeaderFence>,
    leader_tasks: Vec<JoinHandle<()>>,
}

impl ClusterLink {
    /// Starts connecting to etcd in the background; `interval` paces the node reports.
    pub fn start(config: &ClusterConfig, interval: Duration) -> Self {
        let (events_tx, events) = mpsc::unbounded_channel();
        let (client_tx, client_rx) = oneshot::channel();
        let cfg = config.clone();
        let connecting = tokio::spawn(async move {
            let mut backoff = Duration::from_millis(200);
            loop {
                match timeout(Duration::from_secs(5), connect(&cfg)).await {
                    Ok(Ok(client)) => {
                        let _ = client_tx.send(client);
                        return;
                    }
                    Ok(Err(e)) => tracing::warn!("cannot connect to etcd: {e}"),
                    Err(_) => tracing::warn!("cannot connect to etcd: no answer within 5s"),
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        });
        let (report, _) = watch::channel(None);
        let (lease, _) = watch::channel(None);
        Self {
            keys: KeySpace::new(&config.prefix),
            config: config.clone(),
            events_tx,
            events,
            connected: None,
            connecting: Some(connecting),
            client_rx: Some(client_rx),
            report,
            lease,
            interval,
            fence: None,
            leader_tasks: Vec::new(),
        }
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.config.node_name
    }

    /// The next event (cancel-safe).
    pub async fn next(&mut self) -> LinkEvent {
        loop {
            if let Some(rx) = &mut self.client_rx {
                tokio::select! {
                    client = rx => {
                        self.client_rx = None;
                        if let Ok(client) = client {
                            self.on_connected(client);
                            return LinkEvent::Connected;
                        }
                    }
                    Some(event) = self.events.recv() => return event,
                }
            } else if let Some(event) = self.events.recv().await {
                return event;
            }
        }
    }

    fn on_connected(&mut self, client: Client) {
        let node = self.config.node_name.clone();
        let candidacy = Candidacy::spawn(&client, &self.keys, &node, self.config.lease_ttl);
        let store = EtcdStore::new(&client, &self.keys);
        let queue = OperatorQueue::new(&client, &self.keys, &node);
        let mut tasks = Vec::new();
        // Election changes.
        let mut state = candidacy.state();
        let tx = self.events_tx.clone();
        let lease_tx = self.lease.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let current = state.borrow_and_update().clone();
                lease_tx.send_replace(current.lease);
                if tx.send(LinkEvent::Election(current)).is_err() {
                    return;
                }
                if state.changed().await.is_err() {
                    return;
                }
            }
        }));
        // Documents.
        let tx = self.events_tx.clone();
        let watching = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut watch = loop {
                match watching.watch().await {
                    Ok(w) => break w,
                    Err(e) => {
                        let _ = tx.send(LinkEvent::Document(DocumentEvent::Unreachable(
                            e.to_string(),
                        )));
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            };
            while let Some(event) = watch.recv().await {
                if tx.send(LinkEvent::Document(event)).is_err() {
                    return;
                }
            }
        }));
        // This node's report, then everyone's, every interval.
        let tx = self.events_tx.clone();
        let directory = NodeDirectory::new(&client, &self.keys);
        let report = self.report.subscribe();
        let lease = self.lease.subscribe();
        let interval = self.interval;
        tasks.push(tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let current = report.borrow().clone();
                let lease = *lease.borrow();
                let result = exchange_reports(&directory, current, lease).await;
                if tx.send(LinkEvent::Reports(result)).is_err() {
                    return;
                }
            }
        }));
        self.connected = Some(Connected {
            client,
            candidacy,
            store,
            queue,
            tasks,
        });
    }

    /// The report published at the next interval.
    pub fn set_report(&self, report: NodeReport) {
        self.report.send_replace(Some(report));
    }

    /// The election changed: starts taking over when this node now leads with a new fence
    /// (the documents come back as [`LinkEvent::Leadership`]), stops the leader's work when it
    /// no longer does. Returns true when leadership was lost.
    pub fn on_election(&mut self, state: &ElectionState) -> bool {
        match (&state.leading, &self.fence) {
            (Some(new), Some(old)) if new == old => false,
            (Some(new), _) => {
                let lost = self.fence.is_some();
                self.stop_leading();
                self.fence = Some(new.clone());
                self.load_for_leadership(new.clone());
                lost
            }
            (None, Some(_)) => {
                self.stop_leading();
                true
            }
            (None, None) => false,
        }
    }

    fn stop_leading(&mut self) {
        self.fence = None;
        for t in self.leader_tasks.drain(..) {
            t.abort();
        }
    }

    /// Reads the documents for a new leader (retrying until etcd answers or leadership ends),
    /// then follows operator requests.
    fn load_for_leadership(&mut self, fence: LeaderFence) {
        let Some(c) = &self.connected else { return };
        let tx = self.events_tx.clone();
        let store = c.store.clone();
        let queue = c.queue.clone();
        self.leader_tasks.push(tokio::spawn(async move {
            let documents = loop {
                match timeout(CALL_TIMEOUT, store.load_all()).await {
                    Ok(Ok(d)) => break d,
                    Ok(Err(e)) => tracing::warn!("new leader cannot read the documents: {e}"),
                    Err(_) => tracing::warn!("new leader cannot read the documents: no answer"),
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            };
            if tx
                .send(LinkEvent::Leadership {
                    fence: fence.clone(),
                    documents,
                })
                .is_err()
            {
                return;
            }
            let mut requests = queue.watch_requests();
            while let Some(batch) = requests.recv().await {
                if let Ok(batch) = batch {
                    if !batch.is_empty() && tx.send(LinkEvent::Requests(batch)).is_err() {
                        return;
                    }
                }
            }
        }));
    }

    /// The election as the candidacy sees it now.
    pub fn election_state(&self) -> ElectionState {
        self.connected
            .as_ref()
            .map(|c| c.candidacy.state().borrow().clone())
            .unwrap_or_default()
    }

    /// After a refused write: when this node still leads, it reads the documents again and
    /// continues from them.
    pub fn restart_leadership(&mut self, state: &ElectionState) {
        self.stop_leading();
        if let Some(fence) = &state.leading {
            self.fence = Some(fence.clone());
            self.load_for_leadership(fence.clone());
        }
    }

    /// Whether `fence` is the one this node leads with now.
    pub fn leads_with(&self, fence: &LeaderFence) -> bool {
        self.fence.as_ref() == Some(fence)
    }

    /// Leader: publishes documents (fenced), then writes `answer` (if any) with the last
    /// version published.
    pub fn publish(&mut self, documents: Vec<RolloutDocument>, answer: Option<OperatorAnswer>) {
        let (Some(c), Some(fence)) = (&self.connected, &self.fence) else {
            return;
        };
        if documents.is_empty() && answer.is_none() {
            return;
        }
        let tx = self.events_tx.clone();
        let store = c.store.clone();
        let queue = c.queue.clone();
        let fence = fence.clone();
        self.leader_tasks.retain(|t| !t.is_finished());
        self.leader_tasks.push(tokio::spawn(async move {
            let mut version = None;
            for document in documents {
                let result = match timeout(CALL_TIMEOUT, store.publish(&fence, &document)).await {
                    Ok(Ok(v)) => {
                        version = Some(v);
                        Ok(v)
                    }
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err(format!("etcd did not answer within {CALL_TIMEOUT:?}")),
                };
                let _ = tx.send(LinkEvent::Published {
                    service: document.service.clone(),
                    lease: fence.lease,
                    result,
                });
            }
            if let Some(mut answer) = answer {
                answer.document_version = answer.document_version.or(version);
                if let Err(e) = queue.answer(&fence, &answer).await {
                    tracing::warn!("cannot answer operator request {}: {e}", answer.id);
                }
            }
        }));
    }

    /// Any node: asks the leader to carry out `verb` on `service`; the answer arrives on the
    /// returned channel.
    pub fn ask(
        &self,
        service: String,
        verb: Verb,
        wait: Duration,
    ) -> oneshot::Receiver<Result<OperatorAnswer, String>> {
        let (tx, rx) = oneshot::channel();
        let Some(c) = &self.connected else {
            let _ = tx.send(Err(
                "not connected to etcd yet; the leader cannot be asked".to_string()
            ));
            return rx;
        };
        let queue = c.queue.clone();
        tokio::spawn(async move {
            let result = queue
                .ask(&service, verb, wait)
                .await
                .map_err(|e: ClusterError| e.to_string());
            let _ = tx.send(result);
        });
        rx
    }

    /// Stops campaigning (resigning when leading) and removes this node's report.
    pub async fn stop(mut self) {
        self.stop_leading();
        if let Some(task) = self.connecting.take() {
            task.abort();
        }
        if let Some(c) = self.connected.take() {
            for t in &c.tasks {
                t.abort();
            }
            let _ = timeout(CALL_TIMEOUT, c.candidacy.stop()).await;
            let directory = NodeDirectory::new(&c.client, &self.keys);
            let _ = timeout(CALL_TIMEOUT, directory.remove(&self.config.node_name)).await;
        }
    }
}

async fn exchange_reports(
    directory: &NodeDirectory,
    report: Option<NodeReport>,
    lease: Option<i64>,
) -> Result<Vec<NodeReport>, String> {
    // Without a lease yet (starting, or a new one being granted) only the others' are read.
    if let (Some(report), Some(lease)) = (report, lease) {
        match timeout(CALL_TIMEOUT, directory.publish(lease, &report)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err(format!("etcd did not answer within {CALL_TIMEOUT:?}")),
        }
    }
    match timeout(CALL_TIMEOUT, directory.read_all()).await {
        Ok(Ok(all)) => Ok(all),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("etcd did not answer within {CALL_TIMEOUT:?}")),
    }
}
