//! Cluster mode: several balancer nodes, one rollout per service, coordinated through etcd.
//!
//! ```text
//!             decide (leader only)                      apply (every node)
//!   judge ─► RolloutDocument ─► store.publish ══ etcd ══► store.watch ─► may_apply ─► maps
//!                 ▲   fenced on the leader key              │
//!   node reports ─┘ (sums of every node's counters)         └► node report (own lease)
//! ```
//!
//! - [`config`]: the `[cluster]` section and its validation (pure).
//! - [`document`]: the per-service rollout document, the config fingerprint and the
//!   "may this node apply it" check (pure).
//! - [`store`]: the [`store::RolloutStore`] trait, its etcd implementation (every write fenced
//!   on the leader's election key) and an in-memory store for tests of the deciding side.
//! - [`session`]: this node's etcd lease, kept alive in the background.
//! - [`election`]: leader election with etcd's election API; who leads.
//! - [`nodes`]: each node's kernel counters under a key bound to its lease; the leader's sums.
//! - [`ops`]: operator verbs as requests in etcd, carried out and answered by the leader.
//!
//! Keys, under the configured prefix `P` ([`KeySpace`]):
//! `P/leader/<lease>` (election), `P/rollout/<service>` (documents), `P/nodes/<node>` (node
//! reports), `P/ops/requests/<id>` and `P/ops/answers/<id>` (operator verbs).

pub mod config;
pub mod document;
pub mod election;
pub mod link;
pub mod nodes;
pub mod ops;
pub mod session;
pub mod store;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use etcd_client::{
    Certificate, Client, ConnectOptions, EventType, GetOptions, Identity, KeyValue, TlsOptions,
    WatchOptions,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use self::config::ClusterConfig;

/// How long connecting to an etcd endpoint may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// HTTP/2 pings on the etcd connection: a dead connection is noticed within about 3 s.
const PING_INTERVAL: Duration = Duration::from_secs(1);
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a cluster operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// etcd could not be reached or refused the request.
    #[error("etcd {operation} failed: {source}; check that etcd answers at the configured etcd_endpoints")]
    Etcd {
        operation: &'static str,
        #[source]
        source: etcd_client::Error,
    },
    /// A leader's write was refused: its election key is gone or was replaced, so another node
    /// leads (or will). Nothing was written.
    #[error("{what} not written: node {node} no longer leads (its election key {key} at revision {revision} is gone); the current leader decides")]
    NotLeader {
        what: String,
        node: String,
        key: String,
        revision: i64,
    },
    /// A stored value is not valid JSON of the expected kind.
    #[error("{key} holds an unreadable value ({source}); delete the key, the leader rewrites it")]
    Corrupt {
        key: String,
        #[source]
        source: serde_json::Error,
    },
    /// A file named in `[cluster]` could not be read.
    #[error("cannot read cluster.{key} {path}: {source}; check the path and its permissions")]
    File {
        key: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// This node's lease expired (or was revoked): its keys are gone.
    #[error("lease {lease:x} of node {node} is lost ({why}); its keys are gone until a new lease is granted")]
    LeaseLost {
        node: String,
        lease: i64,
        why: String,
    },
    /// Waiting for something took too long.
    #[error("{what} did not happen within {timeout:?}")]
    Timeout { what: String, timeout: Duration },
}

impl ClusterError {
    pub(crate) fn etcd(operation: &'static str) -> impl FnOnce(etcd_client::Error) -> Self {
        move |source| ClusterError::Etcd { operation, source }
    }
}

/// The keys of one prefix (pure: no I/O).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeySpace {
    prefix: String,
}

impl KeySpace {
    /// `prefix` as validated by [`config::validate`] (`/canary`).
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.trim_end_matches('/').to_string(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The election's name: candidates' keys are `<name>/<lease id in hex>`.
    pub fn election(&self) -> String {
        format!("{}/leader", self.prefix)
    }

    pub fn documents(&self) -> String {
        format!("{}/rollout/", self.prefix)
    }

    pub fn document(&self, service: &str) -> String {
        format!("{}{service}", self.documents())
    }

    pub fn nodes(&self) -> String {
        format!("{}/nodes/", self.prefix)
    }

    pub fn node(&self, node: &str) -> String {
        format!("{}{node}", self.nodes())
    }

    pub fn op_requests(&self) -> String {
        format!("{}/ops/requests/", self.prefix)
    }

    pub fn op_request(&self, id: &str) -> String {
        format!("{}{id}", self.op_requests())
    }

    pub fn op_answer(&self, id: &str) -> String {
        format!("{}/ops/answers/{id}", self.prefix)
    }
}

/// Connects to the etcd of `config` (TLS and user as configured; the password file and
/// certificates are read now).
pub async fn connect(config: &ClusterConfig) -> Result<Client, ClusterError> {
    let mut options = ConnectOptions::new()
        .with_connect_timeout(CONNECT_TIMEOUT)
        .with_keep_alive(PING_INTERVAL, PING_TIMEOUT)
        .with_keep_alive_while_idle(true);
    if let Some(tls) = &config.tls {
        let read = |key: &'static str, path: &std::path::Path| {
            std::fs::read(path).map_err(|source| ClusterError::File {
                key,
                path: path.display().to_string(),
                source,
            })
        };
        let mut tls_options =
            TlsOptions::new().ca_certificate(Certificate::from_pem(read("ca_file", &tls.ca_file)?));
        if let Some((cert, key)) = &tls.client {
            tls_options = tls_options.identity(Identity::from_pem(
                read("cert_file", cert)?,
                read("key_file", key)?,
            ));
        }
        options = options.with_tls(tls_options);
    }
    if let Some(credentials) = &config.credentials {
        let password = std::fs::read_to_string(&credentials.password_file).map_err(|source| {
            ClusterError::File {
                key: "password_file",
                path: credentials.password_file.display().to_string(),
                source,
            }
        })?;
        options = options
            .with_user(&credentials.user, password.trim_end_matches(['\r', '\n']))
            .with_auto_token_refresh(true);
    }
    // Boxed: the client's connect future is large (about 16 KiB).
    Box::pin(Client::connect(&config.etcd_endpoints, Some(options)))
        .await
        .map_err(ClusterError::etcd("connect"))
}

/// What [`follow_prefix`] reports.
#[derive(Debug)]
pub(crate) enum PrefixEvent {
    /// Every key under the prefix now: first, and again after a broken watch was restored.
    Snapshot(Vec<KeyValue>),
    Put(KeyValue),
    Delete {
        key: String,
        revision: i64,
    },
    /// etcd cannot be read now; a `Snapshot` follows when it can.
    Unreachable(String),
}

/// Reads every key under `prefix`, then follows its changes without a gap (the watch starts
/// right after the read's revision). A broken watch is re-established after a read. Ends when
/// the receiver is dropped (or the returned task is aborted).
pub(crate) fn follow_prefix(
    client: &Client,
    prefix: String,
) -> (mpsc::UnboundedReceiver<PrefixEvent>, JoinHandle<()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut client = client.clone();
    let task = tokio::spawn(async move {
        let mut backoff = Duration::from_millis(100);
        loop {
            let started = match client
                .get(prefix.as_bytes(), Some(GetOptions::new().with_prefix()))
                .await
            {
                Ok(mut got) => {
                    let revision = got
                        .header()
                        .map_or(0, etcd_client::ResponseHeader::revision);
                    if tx.send(PrefixEvent::Snapshot(got.take_kvs())).is_err() {
                        return;
                    }
                    let options = WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(revision + 1);
                    client.watch(prefix.as_bytes(), Some(options)).await
                }
                Err(e) => Err(e),
            };
            let problem = match started {
                Ok(mut stream) => loop {
                    match stream.message().await {
                        Ok(Some(response)) if response.canceled() => {
                            break format!("watch cancelled: {}", response.cancel_reason());
                        }
                        Ok(Some(response)) => {
                            backoff = Duration::from_millis(100);
                            for event in response.events() {
                                let Some(kv) = event.kv() else { continue };
                                let sent = match event.event_type() {
                                    EventType::Put => tx.send(PrefixEvent::Put(kv.clone())),
                                    EventType::Delete => tx.send(PrefixEvent::Delete {
                                        key: String::from_utf8_lossy(kv.key()).into_owned(),
                                        revision: kv.mod_revision(),
                                    }),
                                };
                                if sent.is_err() {
                                    return;
                                }
                            }
                        }
                        Ok(None) => break "watch closed by etcd".to_string(),
                        Err(e) => break e.to_string(),
                    }
                },
                Err(e) => e.to_string(),
            };
            if tx.send(PrefixEvent::Unreachable(problem)).is_err() {
                return;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    });
    (rx, task)
}

/// Unix time in milliseconds (for documents and reports read by people and other nodes).
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// etcd revisions are positive `i64`; versions in this module are `u64`.
pub(crate) fn revision_to_version(revision: i64) -> u64 {
    u64::try_from(revision).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_layout() {
        let k = KeySpace::new("/canary/site-a");
        assert_eq!(k.election(), "/canary/site-a/leader");
        assert_eq!(k.document("sentiment"), "/canary/site-a/rollout/sentiment");
        assert!(k.document("sentiment").starts_with(&k.documents()));
        assert_eq!(k.node("lb-1"), "/canary/site-a/nodes/lb-1");
        assert_eq!(k.op_request("x"), "/canary/site-a/ops/requests/x");
        assert!(k.op_request("x").starts_with(&k.op_requests()));
        assert_eq!(k.op_answer("x"), "/canary/site-a/ops/answers/x");
        assert_eq!(KeySpace::new("/canary/").election(), "/canary/leader");
    }
}
