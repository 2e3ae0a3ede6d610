//! Leader election with etcd's election API: every node campaigns with its node name as the
//! value, on its own lease; the candidate whose key was created first leads until its key goes
//! (lease expired or revoked, or `resign`).
//!
//! Winning returns a [`LeaderFence`]: the leader's key and its create revision. Every write of
//! the leader is a transaction that compares that key's create revision, so a leader that lost
//! its lease (paused, partitioned) cannot write once another node may have taken over; see
//! [`super::store`].
//!
//! [`Candidacy`] runs the whole loop in the background (lease, campaign, lead until the lease
//! is lost, campaign again) and publishes an [`ElectionState`]: whether this node leads, and
//! which node does.

use std::time::Duration;

use etcd_client::{Client, GetOptions, LeaderKey, ResignOptions, SortOrder, SortTarget};
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use super::session::Session;
use super::{follow_prefix, ClusterError, KeySpace, PrefixEvent};

/// Proof of leadership that guards the leader's writes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LeaderFence {
    /// The leading node's name.
    pub node: String,
    /// Its election key (`<prefix>/leader/<lease id in hex>`).
    pub key: String,
    /// The key's create revision: equal only while this very key exists.
    pub revision: i64,
    /// The lease the key is bound to.
    pub lease: i64,
}

/// The node that leads now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leader {
    pub node: String,
    pub key: String,
    pub revision: i64,
}

/// One node's election, on etcd's election API.
#[derive(Clone)]
pub struct Election {
    client: Client,
    name: String,
    node: String,
}

impl Election {
    pub fn new(client: &Client, keys: &KeySpace, node: &str) -> Self {
        Self {
            client: client.clone(),
            name: keys.election(),
            node: node.to_string(),
        }
    }

    /// Waits until this node leads (etcd keeps `session`'s lease alive meanwhile, and so does the
    /// session); fails if the session's lease is lost first.
    pub async fn campaign(&self, session: &Session) -> Result<LeaderFence, ClusterError> {
        let mut client = self.client.clone();
        // Boxed: etcd-client's campaign future is large.
        let campaign =
            Box::pin(client.campaign(self.name.as_str(), self.node.as_str(), session.lease()));
        let response = tokio::select! {
            response = campaign => response.map_err(ClusterError::etcd("campaign"))?,
            lost = session.lost() => return Err(lost),
        };
        let key = response.leader().ok_or_else(|| ClusterError::Etcd {
            operation: "campaign",
            source: etcd_client::Error::ElectError("etcd returned no leader key".into()),
        })?;
        Ok(LeaderFence {
            node: self.node.clone(),
            key: String::from_utf8_lossy(key.key()).into_owned(),
            revision: key.rev(),
            lease: key.lease(),
        })
    }

    /// The node that leads now, if any (the candidate key created first).
    pub async fn leader(&self) -> Result<Option<Leader>, ClusterError> {
        let options = GetOptions::new()
            .with_prefix()
            .with_sort(SortTarget::Create, SortOrder::Ascend)
            .with_limit(1);
        let response = self
            .client
            .clone()
            .get(format!("{}/", self.name), Some(options))
            .await
            .map_err(ClusterError::etcd("read the leader"))?;
        Ok(response.kvs().first().map(|kv| Leader {
            node: String::from_utf8_lossy(kv.value()).into_owned(),
            key: String::from_utf8_lossy(kv.key()).into_owned(),
            revision: kv.create_revision(),
        }))
    }

    /// Whether `fence` still leads (its key exists with the same create revision).
    pub async fn holds(&self, fence: &LeaderFence) -> Result<bool, ClusterError> {
        Ok(self
            .leader()
            .await?
            .is_some_and(|l| l.key == fence.key && l.revision == fence.revision))
    }

    /// Gives leadership up (deletes the key): the next candidate leads at once.
    pub async fn resign(&self, fence: &LeaderFence) -> Result<(), ClusterError> {
        let key = LeaderKey::new()
            .with_name(self.name.as_str())
            .with_key(fence.key.as_str())
            .with_rev(fence.revision)
            .with_lease(fence.lease);
        self.client
            .clone()
            .resign(Some(ResignOptions::new().with_leader(key)))
            .await
            .map(drop)
            .map_err(ClusterError::etcd("resign"))
    }

    /// Follows who leads: the current leader now, then every change (including "nobody",
    /// which etcd's `observe` does not report). The task ends when the receiver is dropped.
    pub fn follow_leader(&self) -> (watch::Receiver<Option<Leader>>, JoinHandle<()>) {
        let (tx, rx) = watch::channel(None);
        let election = self.clone();
        let task = tokio::spawn(async move {
            let (mut events, follower) =
                follow_prefix(&election.client, format!("{}/", election.name));
            while let Some(event) = events.recv().await {
                if matches!(event, PrefixEvent::Unreachable(_)) {
                    continue;
                }
                // Any change among the candidates: read who is first now.
                if let Ok(leader) = election.leader().await {
                    tx.send_if_modified(|current| {
                        let changed = *current != leader;
                        current.clone_from(&leader);
                        changed
                    });
                }
                if tx.is_closed() {
                    break;
                }
            }
            follower.abort();
        });
        (rx, task)
    }
}

/// This node's part in the election, as the controller reads it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ElectionState {
    /// Set while this node leads.
    pub leading: Option<LeaderFence>,
    /// The leading node's name, as last seen.
    pub leader: Option<String>,
    /// This node's lease (its node report is bound to it).
    pub lease: Option<i64>,
    /// Why this node cannot campaign now (etcd unreachable, lease lost), if so.
    pub problem: Option<String>,
}

/// Runs the election in the background: lease, campaign, lead while the lease lives, and over
/// again after a loss. [`Candidacy::stop`] resigns and revokes the lease.
#[derive(Debug)]
pub struct Candidacy {
    state: watch::Receiver<ElectionState>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
    follower: JoinHandle<()>,
}

impl Candidacy {
    pub fn spawn(client: &Client, keys: &KeySpace, node: &str, ttl: Duration) -> Self {
        let election = Election::new(client, keys, node);
        let (state_tx, state) = watch::channel(ElectionState::default());
        let (stop_tx, stop_rx) = oneshot::channel();
        let (mut leader_rx, leader_task) = election.follow_leader();
        let follower_state = state_tx.clone();
        let follower = tokio::spawn(async move {
            loop {
                let leader = leader_rx
                    .borrow_and_update()
                    .as_ref()
                    .map(|l| l.node.clone());
                follower_state.send_modify(|s| s.leader = leader);
                if leader_rx.changed().await.is_err() {
                    break;
                }
            }
            leader_task.abort();
        });
        let task = tokio::spawn(campaign_loop(
            client.clone(),
            election,
            node.to_string(),
            ttl,
            state_tx,
            stop_rx,
        ));
        Self {
            state,
            stop: Some(stop_tx),
            task,
            follower,
        }
    }

    pub fn state(&self) -> watch::Receiver<ElectionState> {
        self.state.clone()
    }

    /// The fence while this node leads.
    pub fn leading(&self) -> Option<LeaderFence> {
        self.state.borrow().leading.clone()
    }

    /// Resigns if leading, revokes the lease (this node's keys vanish now) and stops.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
        self.follower.abort();
    }
}

impl Drop for Candidacy {
    /// Without [`Candidacy::stop`]: stops campaigning and keeping the lease alive, as a crash
    /// would (the lease expires after its TTL).
    fn drop(&mut self) {
        self.task.abort();
        self.follower.abort();
    }
}

async fn campaign_loop(
    client: Client,
    election: Election,
    node: String,
    ttl: Duration,
    state: watch::Sender<ElectionState>,
    mut stop: oneshot::Receiver<()>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let session = tokio::select! {
            session = Session::start(&client, &node, ttl) => session,
            _ = &mut stop => return,
        };
        let session = match session {
            Ok(session) => session,
            Err(e) => {
                state.send_modify(|s| {
                    s.problem = Some(e.to_string());
                    s.lease = None;
                });
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    _ = &mut stop => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        state.send_modify(|s| {
            s.lease = Some(session.lease());
            s.problem = None;
        });
        // Campaign (again after an etcd error) while the lease lives.
        while session.is_alive() {
            let won = tokio::select! {
                won = election.campaign(&session) => won,
                _ = &mut stop => {
                    let _ = session.close().await;
                    return;
                }
            };
            match won {
                Ok(fence) => {
                    backoff = Duration::from_millis(100);
                    state.send_modify(|s| {
                        s.leading = Some(fence.clone());
                        s.problem = None;
                    });
                    let stopped = tokio::select! {
                        lost = session.lost() => {
                            state.send_modify(|s| {
                                s.leading = None;
                                s.problem = Some(lost.to_string());
                            });
                            false
                        }
                        _ = &mut stop => true,
                    };
                    if stopped {
                        state.send_modify(|s| s.leading = None);
                        let _ = election.resign(&fence).await;
                        let _ = session.close().await;
                        return;
                    }
                }
                Err(e) => {
                    state.send_modify(|s| s.problem = Some(e.to_string()));
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        _ = &mut stop => {
                            let _ = session.close().await;
                            return;
                        }
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
        state.send_modify(|s| s.lease = None);
    }
}
