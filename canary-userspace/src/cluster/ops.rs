//! Operator verbs in a cluster: any node turns `canary promote` (and the others) into a request
//! in etcd; the leader carries it out and answers, naming itself as the node that decided.
//!
//! Keys: `<prefix>/ops/requests/<id>` (written by the asking node, only if new) and
//! `<prefix>/ops/answers/<id>`. The leader's answer is one fenced transaction that removes the
//! request and writes the answer, so a request is answered at most once and only by a node that
//! still leads. The asking node watches the answer key from before it writes the request, so it
//! cannot miss the answer; answers carry a short lease so none is left behind.
//!
//! If nobody answers in time, the asking node withdraws its request (only if the leader has not
//! taken it yet) and says that nothing changed.

use std::time::Duration;

/// Request ids are unique per node: node name, time, process and this sequence.
static REQUEST_SEQUENCE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

use etcd_client::{
    Client, Compare, CompareOp, EventType, GetOptions, PutOptions, SortOrder, SortTarget, Txn,
    TxnOp, TxnOpResponse,
};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::election::LeaderFence;
use super::store::{fence_compare, not_leader};
use super::{follow_prefix, unix_ms, ClusterError, KeySpace, PrefixEvent};

/// How long an answer stays in etcd if its asker is gone.
const ANSWER_TTL_SECS: i64 = 60;
/// After withdrawing failed because the leader had taken the request: wait this much longer.
const TAKEN_GRACE: Duration = Duration::from_secs(5);

/// An operator verb (the same as the single-node admin API's).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "verb", rename_all = "snake_case")]
pub enum Verb {
    Start,
    Pause,
    Resume,
    Promote { full: bool },
    Rollback,
    SetWeight { weight_bp: u32 },
}

/// A verb for one service, from one node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OperatorRequest {
    pub id: String,
    pub service: String,
    #[serde(flatten)]
    pub verb: Verb,
    /// Node that received the operator's call.
    pub from_node: String,
    /// Unix time, milliseconds.
    pub at_ms: u64,
}

/// The leader's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorAnswer {
    pub id: String,
    /// Whether the verb was carried out.
    pub ok: bool,
    /// What happened, or why not (as the single-node reply says it).
    pub message: String,
    /// The node that decided (the leader).
    pub decided_by: String,
    /// The rollout document version that carries the result, if one was published.
    pub document_version: Option<u64>,
    pub at_ms: u64,
}

/// Operator requests and answers in etcd, for one node.
#[derive(Clone)]
pub struct OperatorQueue {
    client: Client,
    keys: KeySpace,
    node: String,
}

/// Requests as they arrive, for the leader: every pending request first, then each new one.
#[derive(Debug)]
pub struct RequestWatch {
    events: mpsc::UnboundedReceiver<PrefixEvent>,
    task: JoinHandle<()>,
}

impl RequestWatch {
    /// The next requests to carry out (a batch: all pending after a reconnect). `Err` tells that
    /// etcd cannot be read now (the watch goes on); `None` that it ended.
    pub async fn recv(&mut self) -> Option<Result<Vec<OperatorRequest>, String>> {
        let event = self.events.recv().await?;
        Some(match event {
            PrefixEvent::Snapshot(kvs) => {
                let mut kvs = kvs;
                kvs.sort_by_key(etcd_client::KeyValue::create_revision);
                Ok(kvs.iter().filter_map(parse_request).collect())
            }
            PrefixEvent::Put(kv) => Ok(parse_request(&kv).into_iter().collect()),
            PrefixEvent::Delete { .. } => Ok(Vec::new()),
            PrefixEvent::Unreachable(why) => Err(why),
        })
    }
}

impl Drop for RequestWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A request that cannot be parsed is skipped (the leader has nothing to answer it with).
fn parse_request(kv: &etcd_client::KeyValue) -> Option<OperatorRequest> {
    serde_json::from_slice(kv.value()).ok()
}

impl OperatorQueue {
    pub fn new(client: &Client, keys: &KeySpace, node: &str) -> Self {
        Self {
            client: client.clone(),
            keys: keys.clone(),
            node: node.to_string(),
        }
    }

    /// Any node: asks the leader to carry out `verb` on `service` and waits for its answer.
    pub async fn ask(
        &self,
        service: &str,
        verb: Verb,
        timeout: Duration,
    ) -> Result<OperatorAnswer, ClusterError> {
        let request = OperatorRequest {
            id: format!(
                "{}-{}-{}-{}",
                self.node,
                unix_ms(),
                std::process::id(),
                REQUEST_SEQUENCE.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            ),
            service: service.to_string(),
            verb,
            from_node: self.node.clone(),
            at_ms: unix_ms(),
        };
        let request_key = self.keys.op_request(&request.id);
        let answer_key = self.keys.op_answer(&request.id);
        let mut client = self.client.clone();

        // Watch first, so the answer cannot come before we look.
        let mut watch = client
            .watch(answer_key.as_str(), None)
            .await
            .map_err(ClusterError::etcd("watch for the operator answer"))?;
        let json = serde_json::to_vec(&request).expect("a request always serialises");
        let created = client
            .txn(
                Txn::new()
                    .when([Compare::version(request_key.as_str(), CompareOp::Equal, 0)])
                    .and_then([TxnOp::put(request_key.as_str(), json, None)]),
            )
            .await
            .map_err(ClusterError::etcd("write the operator request"))?;
        if !created.succeeded() {
            return Err(ClusterError::Etcd {
                operation: "write the operator request",
                source: etcd_client::Error::InvalidArgs(format!(
                    "request id {} exists already",
                    request.id
                )),
            });
        }

        let wait_answer = async {
            loop {
                match watch.message().await {
                    Ok(Some(response)) => {
                        for event in response.events() {
                            if event.event_type() != EventType::Put {
                                continue;
                            }
                            if let Some(kv) = event.kv() {
                                return serde_json::from_slice::<OperatorAnswer>(kv.value())
                                    .map_err(|source| ClusterError::Corrupt {
                                        key: answer_key.clone(),
                                        source,
                                    });
                            }
                        }
                    }
                    Ok(None) => {
                        return Err(ClusterError::Etcd {
                            operation: "wait for the operator answer",
                            source: etcd_client::Error::WatchError("watch closed".into()),
                        })
                    }
                    Err(source) => {
                        return Err(ClusterError::Etcd {
                            operation: "wait for the operator answer",
                            source,
                        })
                    }
                }
            }
        };
        tokio::pin!(wait_answer);
        let verb = verb_name(&request.verb);
        let answer = if let Ok(answer) = tokio::time::timeout(timeout, &mut wait_answer).await {
            answer
        } else {
            // Withdraw the request unless the leader took it already.
            let unanswered = Compare::version(request_key.as_str(), CompareOp::Greater, 0);
            let withdrawn = client
                .txn(
                    Txn::new()
                        .when([unanswered])
                        .and_then([TxnOp::delete(request_key.as_str(), None)]),
                )
                .await
                .map_err(ClusterError::etcd("withdraw the operator request"))?;
            if withdrawn.succeeded() {
                let what = format!(
                    "an answer from the leader to `{verb}` on service {service} (no node leads, \
                     or the leader is busy; the request was withdrawn, nothing changed)"
                );
                return Err(ClusterError::Timeout { what, timeout });
            }
            let late = tokio::time::timeout(TAKEN_GRACE, &mut wait_answer).await;
            late.map_err(|_| ClusterError::Timeout {
                what: format!(
                    "the answer to `{verb}` on service {service} (the leader took the request; \
                     check `canary status` for its outcome)"
                ),
                timeout: timeout + TAKEN_GRACE,
            })?
        }?;
        let _ = client.delete(answer_key.as_str(), None).await;
        Ok(answer)
    }

    /// Leader: requests not answered yet, oldest first.
    pub async fn pending(&self) -> Result<Vec<OperatorRequest>, ClusterError> {
        let options = GetOptions::new()
            .with_prefix()
            .with_sort(SortTarget::Create, SortOrder::Ascend);
        let response = self
            .client
            .clone()
            .get(self.keys.op_requests(), Some(options))
            .await
            .map_err(ClusterError::etcd("read the operator requests"))?;
        Ok(response.kvs().iter().filter_map(parse_request).collect())
    }

    /// Leader: pending requests, then each new one as it arrives.
    pub fn watch_requests(&self) -> RequestWatch {
        let (events, task) = follow_prefix(&self.client, self.keys.op_requests());
        RequestWatch { events, task }
    }

    /// Leader: removes the request and writes `answer`, in one transaction fenced on `fence`.
    /// `Ok(false)`: the request is gone already (withdrawn by its asker, or answered).
    pub async fn answer(
        &self,
        fence: &LeaderFence,
        answer: &OperatorAnswer,
    ) -> Result<bool, ClusterError> {
        let request_key = self.keys.op_request(&answer.id);
        let mut client = self.client.clone();
        let lease = client
            .lease_grant(ANSWER_TTL_SECS, None)
            .await
            .map_err(ClusterError::etcd("grant the answer's lease"))?
            .id();
        let json = serde_json::to_vec(answer).expect("an answer always serialises");
        let response = client
            .txn(
                Txn::new()
                    .when([
                        fence_compare(fence),
                        Compare::version(request_key.as_str(), CompareOp::Greater, 0),
                    ])
                    .and_then([
                        TxnOp::delete(request_key.as_str(), None),
                        TxnOp::put(
                            self.keys.op_answer(&answer.id),
                            json,
                            Some(PutOptions::new().with_lease(lease)),
                        ),
                    ])
                    .or_else([TxnOp::get(fence.key.as_str(), None)]),
            )
            .await
            .map_err(ClusterError::etcd("answer the operator request"))?;
        if response.succeeded() {
            return Ok(true);
        }
        let _ = client.lease_revoke(lease).await;
        let fence_holds = response.op_responses().iter().any(|r| match r {
            TxnOpResponse::Get(get) => get
                .kvs()
                .first()
                .is_some_and(|kv| kv.create_revision() == fence.revision),
            _ => false,
        });
        if fence_holds {
            Ok(false)
        } else {
            Err(not_leader(
                fence,
                format!("answer to operator request {}", answer.id),
            ))
        }
    }
}

fn verb_name(verb: &Verb) -> &'static str {
    match verb {
        Verb::Start => "start",
        Verb::Pause => "pause",
        Verb::Resume => "resume",
        Verb::Promote { .. } => "promote",
        Verb::Rollback => "rollback",
        Verb::SetWeight { .. } => "set-weight",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_json_is_flat_and_readable() {
        let r = OperatorRequest {
            id: "lb-2-1-0000abcd".into(),
            service: "sentiment".into(),
            verb: Verb::SetWeight { weight_bp: 1_250 },
            from_node: "lb-2".into(),
            at_ms: 5,
        };
        let json = serde_json::to_string(&r).unwrap();
        assert!(
            json.contains("\"verb\":\"set_weight\",\"weight_bp\":1250"),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<OperatorRequest>(&json).unwrap(), r);
    }
}
