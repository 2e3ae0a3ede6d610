//! This node's etcd lease, kept alive in the background.
//!
//! Everything a node holds in etcd that must vanish when the node dies (its election key, its
//! node report) is bound to this lease. The keep-alive renews it every third of the TTL. The
//! session counts itself lost once a whole TTL has passed since the last renewal that etcd
//! confirmed (measured from when that renewal was sent, so never later than etcd's own
//! expiry), or at once when etcd says the lease is gone. A lost session is never revived: start
//! a new one.
//!
//! Dropping a [`Session`] stops the keep-alive without revoking the lease (as a crash would:
//! the keys vanish after the TTL); [`Session::close`] revokes it (clean shutdown: they vanish
//! at once).

use std::time::Duration;

use etcd_client::Client;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout, Instant};

use super::ClusterError;

/// State of a session's lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionState {
    Alive,
    /// Gone, and why.
    Lost(String),
}

/// A lease granted to this node and kept alive until dropped, closed or lost.
pub struct Session {
    client: Client,
    node: String,
    lease: i64,
    ttl: Duration,
    state: watch::Receiver<SessionState>,
    keeper: JoinHandle<()>,
}

impl Session {
    /// Grants a lease of `ttl` (whole seconds, at least 1) and starts keeping it alive.
    pub async fn start(client: &Client, node: &str, ttl: Duration) -> Result<Self, ClusterError> {
        let ttl_secs = i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX);
        let granted_at = Instant::now();
        let grant = client
            .clone()
            .lease_grant(ttl_secs, None)
            .await
            .map_err(ClusterError::etcd("lease grant"))?;
        let lease = grant.id();
        let (tx, rx) = watch::channel(SessionState::Alive);
        let keeper = tokio::spawn(keep_alive(client.clone(), lease, ttl, granted_at, tx));
        Ok(Self {
            client: client.clone(),
            node: node.to_string(),
            lease,
            ttl,
            state: rx,
            keeper,
        })
    }

    pub fn lease(&self) -> i64 {
        self.lease
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn is_alive(&self) -> bool {
        *self.state.borrow() == SessionState::Alive
    }

    /// Follows the state (for a status page or a `select!`).
    pub fn state(&self) -> watch::Receiver<SessionState> {
        self.state.clone()
    }

    /// Resolves when the lease is lost, with the reason as an error.
    pub async fn lost(&self) -> ClusterError {
        let mut state = self.state.clone();
        let why = match state.wait_for(|s| *s != SessionState::Alive).await {
            Ok(s) => match &*s {
                SessionState::Lost(why) => why.clone(),
                SessionState::Alive => unreachable!("waited for a state other than Alive"),
            },
            Err(_) => "the keep-alive task ended".to_string(),
        };
        ClusterError::LeaseLost {
            node: self.node.clone(),
            lease: self.lease,
            why,
        }
    }

    /// Stops the keep-alive and revokes the lease: every key bound to it vanishes now.
    pub async fn close(self) -> Result<(), ClusterError> {
        self.keeper.abort();
        self.client
            .clone()
            .lease_revoke(self.lease)
            .await
            .map(drop)
            .map_err(ClusterError::etcd("lease revoke"))
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.keeper.abort();
    }
}

async fn keep_alive(
    mut client: Client,
    lease: i64,
    ttl: Duration,
    granted_at: Instant,
    state: watch::Sender<SessionState>,
) {
    let period = ttl / 3;
    // When the last renewal that etcd confirmed was sent: etcd's expiry is at least a TTL later.
    let mut confirmed = granted_at;
    let lost = |why: String| {
        let _ = state.send(SessionState::Lost(why));
    };
    loop {
        if confirmed.elapsed() >= ttl {
            return lost(format!("not renewed for {ttl:?}; etcd unreachable"));
        }
        let sent = Instant::now();
        let opened = timeout(period, client.lease_keep_alive(lease)).await;
        let (mut keeper, mut stream) = match opened {
            Ok(Ok(pair)) => {
                // Opening the stream renewed once (etcd answered with a positive TTL).
                confirmed = sent;
                pair
            }
            Ok(Err(etcd_client::Error::LeaseKeepAliveError(why))) => {
                return lost(format!("etcd: {why}"));
            }
            Ok(Err(_)) | Err(_) => {
                sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        loop {
            let sent = Instant::now();
            if keeper.keep_alive().await.is_err() {
                break;
            }
            match timeout(period, stream.message()).await {
                Ok(Ok(Some(response))) if response.ttl() > 0 => confirmed = sent,
                Ok(Ok(Some(_))) => return lost("etcd: the lease expired".into()),
                Ok(Ok(None) | Err(_)) | Err(_) => break,
            }
            if confirmed.elapsed() >= ttl {
                return lost(format!("not renewed for {ttl:?}; etcd unreachable"));
            }
            sleep(period.saturating_sub(sent.elapsed())).await;
        }
        sleep(Duration::from_millis(200)).await;
    }
}
