//! Where rollout documents live: the [`RolloutStore`] trait, joined by the deciding side (the
//! leader publishes) and the applying side (every node watches).
//!
//! [`EtcdStore`] keeps one key per service (`<prefix>/rollout/<service>`); a document's version
//! is the key's mod revision. Every publish is a transaction that first compares the leader's
//! election key's create revision ([`LeaderFence`]): if the key is gone or was re-created, the
//! write fails with [`ClusterError::NotLeader`] and nothing is written.
//!
//! [`MemoryStore`] is the same contract in memory, for tests of the deciding side: a settable
//! leader fence, a switch that makes it unreachable, and watchers.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Mutex;

use etcd_client::{Client, Compare, CompareOp, GetOptions, KeyValue, Txn, TxnOp};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::document::RolloutDocument;
use super::election::LeaderFence;
use super::{follow_prefix, revision_to_version, ClusterError, KeySpace, PrefixEvent};

/// What a document watch reports.
#[derive(Clone, Debug, PartialEq)]
pub enum DocumentEvent {
    /// Every document now: first, and again whenever the watch had to be re-established.
    Snapshot(Vec<RolloutDocument>),
    /// A document was published.
    Published(Box<RolloutDocument>),
    /// A service's document was deleted (by hand: the leader never deletes).
    Removed { service: String, version: u64 },
    /// The store cannot be read: hold (keep the last applied document); a `Snapshot` follows.
    Unreachable(String),
    /// A stored document could not be read (skipped, and said).
    Unreadable { key: String, problem: String },
}

/// A stream of [`DocumentEvent`]s; stops following the store when dropped.
#[derive(Debug)]
pub struct DocumentWatch {
    events: mpsc::UnboundedReceiver<DocumentEvent>,
    task: Option<JoinHandle<()>>,
}

impl DocumentWatch {
    /// The next event; `None` when the store side ended.
    pub async fn recv(&mut self) -> Option<DocumentEvent> {
        self.events.recv().await
    }
}

impl Drop for DocumentWatch {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// The store of rollout documents, as the controller sees it.
pub trait RolloutStore: Send + Sync {
    /// One service's document, if one was published.
    fn load(
        &self,
        service: &str,
    ) -> impl Future<Output = Result<Option<RolloutDocument>, ClusterError>> + Send;

    /// Every service's document.
    fn load_all(&self) -> impl Future<Output = Result<Vec<RolloutDocument>, ClusterError>> + Send;

    /// Leader only: writes `document` if `fence` still leads; returns the new version.
    fn publish(
        &self,
        fence: &LeaderFence,
        document: &RolloutDocument,
    ) -> impl Future<Output = Result<u64, ClusterError>> + Send;

    /// Every document now, then every change.
    fn watch(&self) -> impl Future<Output = Result<DocumentWatch, ClusterError>> + Send;
}

/// Rollout documents in etcd.
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    keys: KeySpace,
}

impl EtcdStore {
    pub fn new(client: &Client, keys: &KeySpace) -> Self {
        Self {
            client: client.clone(),
            keys: keys.clone(),
        }
    }

    fn read(kv: &KeyValue) -> Result<RolloutDocument, ClusterError> {
        RolloutDocument::from_json(kv.value(), revision_to_version(kv.mod_revision())).map_err(
            |source| ClusterError::Corrupt {
                key: String::from_utf8_lossy(kv.key()).into_owned(),
                source,
            },
        )
    }
}

/// The compare every leader write starts with.
pub(crate) fn fence_compare(fence: &LeaderFence) -> Compare {
    Compare::create_revision(fence.key.as_str(), CompareOp::Equal, fence.revision)
}

/// The error for a fenced transaction that did not succeed.
pub(crate) fn not_leader(fence: &LeaderFence, what: String) -> ClusterError {
    ClusterError::NotLeader {
        what,
        node: fence.node.clone(),
        key: fence.key.clone(),
        revision: fence.revision,
    }
}

impl RolloutStore for EtcdStore {
    async fn load(&self, service: &str) -> Result<Option<RolloutDocument>, ClusterError> {
        let response = self
            .client
            .clone()
            .get(self.keys.document(service), None)
            .await
            .map_err(ClusterError::etcd("read a rollout document"))?;
        response.kvs().first().map(Self::read).transpose()
    }

    async fn load_all(&self) -> Result<Vec<RolloutDocument>, ClusterError> {
        let response = self
            .client
            .clone()
            .get(self.keys.documents(), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(ClusterError::etcd("read the rollout documents"))?;
        response.kvs().iter().map(Self::read).collect()
    }

    async fn publish(
        &self,
        fence: &LeaderFence,
        document: &RolloutDocument,
    ) -> Result<u64, ClusterError> {
        let key = self.keys.document(&document.service);
        let txn = Txn::new()
            .when([fence_compare(fence)])
            .and_then([TxnOp::put(key, document.to_json(), None)]);
        let response = self
            .client
            .clone()
            .txn(txn)
            .await
            .map_err(ClusterError::etcd("publish a rollout document"))?;
        if !response.succeeded() {
            return Err(not_leader(
                fence,
                format!("rollout document of service {}", document.service),
            ));
        }
        // The put is the transaction's only write: its mod revision is the header's revision.
        Ok(revision_to_version(
            response
                .header()
                .map_or(0, etcd_client::ResponseHeader::revision),
        ))
    }

    async fn watch(&self) -> Result<DocumentWatch, ClusterError> {
        let (mut raw, follower) = follow_prefix(&self.client, self.keys.documents());
        let (tx, events) = mpsc::unbounded_channel();
        let store = self.clone();
        let task = tokio::spawn(async move {
            while let Some(event) = raw.recv().await {
                let mut out = Vec::new();
                match event {
                    PrefixEvent::Snapshot(kvs) => {
                        let mut documents = Vec::new();
                        for kv in &kvs {
                            match Self::read(kv) {
                                Ok(d) => documents.push(d),
                                Err(e) => out.push(unreadable(kv, &e)),
                            }
                        }
                        out.insert(0, DocumentEvent::Snapshot(documents));
                    }
                    PrefixEvent::Put(kv) => out.push(match Self::read(&kv) {
                        Ok(d) => DocumentEvent::Published(Box::new(d)),
                        Err(e) => unreadable(&kv, &e),
                    }),
                    PrefixEvent::Delete { key, revision } => {
                        let service = key
                            .strip_prefix(&store.keys.documents())
                            .unwrap_or(&key)
                            .to_string();
                        out.push(DocumentEvent::Removed {
                            service,
                            version: revision_to_version(revision),
                        });
                    }
                    PrefixEvent::Unreachable(why) => out.push(DocumentEvent::Unreachable(why)),
                }
                for e in out {
                    if tx.send(e).is_err() {
                        follower.abort();
                        return;
                    }
                }
            }
        });
        Ok(DocumentWatch {
            events,
            task: Some(task),
        })
    }
}

fn unreadable(kv: &KeyValue, e: &ClusterError) -> DocumentEvent {
    DocumentEvent::Unreadable {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        problem: e.to_string(),
    }
}

/// Rollout documents in memory, with the etcd store's rules (fenced publish, growing versions).
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Memory>,
}

#[derive(Debug, Default)]
struct Memory {
    revision: u64,
    documents: BTreeMap<String, RolloutDocument>,
    leader: Option<LeaderFence>,
    unreachable: Option<String>,
    watchers: Vec<mpsc::UnboundedSender<DocumentEvent>>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Who leads: publishes with any other fence fail as [`ClusterError::NotLeader`].
    pub fn set_leader(&self, fence: Option<LeaderFence>) {
        self.lock().leader = fence;
    }

    /// `Some(reason)`: every call fails and watchers get [`DocumentEvent::Unreachable`];
    /// `None`: reachable again, watchers get a fresh snapshot.
    pub fn set_unreachable(&self, reason: Option<&str>) {
        let mut m = self.lock();
        m.unreachable = reason.map(str::to_string);
        let event = match reason {
            Some(r) => DocumentEvent::Unreachable(r.to_string()),
            None => DocumentEvent::Snapshot(m.documents.values().cloned().collect()),
        };
        m.watchers.retain(|w| w.send(event.clone()).is_ok());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Memory> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn check_reachable(m: &Memory) -> Result<(), ClusterError> {
        match &m.unreachable {
            Some(why) => Err(ClusterError::Etcd {
                operation: "reach the store",
                source: etcd_client::Error::Internal(why.clone()),
            }),
            None => Ok(()),
        }
    }
}

impl RolloutStore for MemoryStore {
    async fn load(&self, service: &str) -> Result<Option<RolloutDocument>, ClusterError> {
        let m = self.lock();
        Self::check_reachable(&m)?;
        Ok(m.documents.get(service).cloned())
    }

    async fn load_all(&self) -> Result<Vec<RolloutDocument>, ClusterError> {
        let m = self.lock();
        Self::check_reachable(&m)?;
        Ok(m.documents.values().cloned().collect())
    }

    async fn publish(
        &self,
        fence: &LeaderFence,
        document: &RolloutDocument,
    ) -> Result<u64, ClusterError> {
        let mut m = self.lock();
        Self::check_reachable(&m)?;
        let leads = m
            .leader
            .as_ref()
            .is_some_and(|l| l.key == fence.key && l.revision == fence.revision);
        if !leads {
            return Err(not_leader(
                fence,
                format!("rollout document of service {}", document.service),
            ));
        }
        m.revision += 1;
        let stored = RolloutDocument {
            version: m.revision,
            ..document.clone()
        };
        m.documents.insert(stored.service.clone(), stored.clone());
        m.watchers.retain(|w| {
            w.send(DocumentEvent::Published(Box::new(stored.clone())))
                .is_ok()
        });
        Ok(stored.version)
    }

    async fn watch(&self) -> Result<DocumentWatch, ClusterError> {
        let mut m = self.lock();
        Self::check_reachable(&m)?;
        let (tx, events) = mpsc::unbounded_channel();
        let _ = tx.send(DocumentEvent::Snapshot(
            m.documents.values().cloned().collect(),
        ));
        m.watchers.push(tx);
        Ok(DocumentWatch { events, task: None })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::document::tests::sample;

    fn fence(node: &str, revision: i64) -> LeaderFence {
        LeaderFence {
            node: node.into(),
            key: format!("/canary/leader/{revision:x}"),
            revision,
            lease: revision,
        }
    }

    #[tokio::test]
    async fn memory_store_fences_publish_and_versions_grow() {
        let store = MemoryStore::new();
        let a = fence("a", 10);
        let b = fence("b", 20);
        store.set_leader(Some(a.clone()));
        let mut watch = store.watch().await.unwrap();
        assert_eq!(watch.recv().await, Some(DocumentEvent::Snapshot(vec![])));

        let v1 = store.publish(&a, &sample("s")).await.unwrap();
        let Some(DocumentEvent::Published(d)) = watch.recv().await else {
            panic!("no publish event")
        };
        assert_eq!(d.version, v1);

        store.set_leader(Some(b.clone()));
        let mut stale = sample("s");
        stale.weight_bp = 10_000;
        let err = store.publish(&a, &stale).await.unwrap_err();
        assert!(matches!(err, ClusterError::NotLeader { .. }), "{err}");
        assert!(err.to_string().contains("node a no longer leads"), "{err}");
        assert_eq!(store.load("s").await.unwrap().unwrap().weight_bp, 2_500);

        let v2 = store.publish(&b, &sample("s")).await.unwrap();
        assert!(v2 > v1);
    }

    #[tokio::test]
    async fn memory_store_unreachable_holds_watchers() {
        let store = MemoryStore::new();
        let mut watch = store.watch().await.unwrap();
        let _ = watch.recv().await;
        store.set_unreachable(Some("etcd stopped"));
        assert!(store.load_all().await.is_err());
        assert_eq!(
            watch.recv().await,
            Some(DocumentEvent::Unreachable("etcd stopped".into()))
        );
        store.set_unreachable(None);
        assert!(matches!(
            watch.recv().await,
            Some(DocumentEvent::Snapshot(_))
        ));
    }
}
