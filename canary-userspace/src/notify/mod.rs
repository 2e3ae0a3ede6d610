//! Notifications: decision events posted as JSON to `[[notify]]` webhooks.
//!
//! The controller hands every decision (and a dead-man finding) to a [`Notifier`], which is
//! synchronous and never waits: it turns the decision into an [`Event`] (pure: [`classify`])
//! and puts it on each interested sink's bounded queue with `try_send`. A full queue drops the
//! event (`canary_notify_dropped_total{reason="queue_full"}`, logged). One task per sink
//! ([`deliver`]) posts the events in order, with a timeout per attempt and retries with
//! exponential backoff; an event that still fails is dropped (`reason="failed"`, logged).
//! Nothing a receiver does reaches the controller.

mod deliver;
#[cfg(test)]
pub(crate) mod tests;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::judge::{Reason, SignalReport};
use crate::metrics::Metrics;
use crate::rollout::{Decision, DecisionAction, Phase};

pub use deliver::start;

/// What a sink can subscribe to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A rollout started (warm-up).
    Start,
    /// A higher step.
    Step,
    /// 100 %.
    Promote,
    Rollback,
    /// The rollout held `hold_intervals` evaluations in a row.
    Hold,
    /// The kernel's dead-man switch was active (the heartbeat went stale).
    Deadman,
    /// An evaluation found metrics missing (first of a run of them).
    MetricsMissing,
}

impl EventKind {
    pub const ALL: [EventKind; 7] = [
        EventKind::Start,
        EventKind::Step,
        EventKind::Promote,
        EventKind::Rollback,
        EventKind::Hold,
        EventKind::Deadman,
        EventKind::MetricsMissing,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Start => "start",
            EventKind::Step => "step",
            EventKind::Promote => "promote",
            EventKind::Rollback => "rollback",
            EventKind::Hold => "hold",
            EventKind::Deadman => "deadman",
            EventKind::MetricsMissing => "metrics_missing",
        }
    }

    pub fn parse(name: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

/// One `[[notify]]` entry.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NotifyConfig {
    /// Label of the sink's metrics and logs.
    pub name: String,
    pub url: String,
    pub events: Vec<EventKind>,
    /// A hold event after this many holds in a row.
    pub hold_intervals: u32,
    /// Sent as `Authorization: Bearer <contents>`.
    pub bearer_token_file: Option<PathBuf>,
    /// Per attempt.
    pub timeout: Duration,
    /// Attempts after the first.
    pub retries: u32,
    /// Events waiting for delivery at most.
    pub queue: usize,
}

/// One signal's verdict, as sent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SignalReason {
    pub signal: String,
    pub verdict: String,
    #[serde(default)]
    pub dry_run: bool,
    pub stable: Option<f64>,
    pub canary: Option<f64>,
    pub estimate: Option<f64>,
    pub upper: Option<f64>,
    pub threshold: f64,
    pub note: String,
}

impl From<&SignalReport> for SignalReason {
    fn from(r: &SignalReport) -> Self {
        SignalReason {
            signal: r.signal.as_str().to_string(),
            verdict: r.verdict.to_string().to_lowercase(),
            dry_run: r.dry_run,
            stable: r.stable,
            canary: r.canary,
            estimate: r.estimate,
            upper: r.upper,
            threshold: r.threshold,
            note: r.note.clone(),
        }
    }
}

/// The JSON body of a notification.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Increasing per daemon start: receivers can spot a retried duplicate.
    pub id: u64,
    pub event: EventKind,
    pub service: String,
    pub node: String,
    /// RFC 3339, UTC.
    pub time: String,
    pub time_ms: u64,
    pub phase: Phase,
    pub action: String,
    pub reason: String,
    pub from_percent: f64,
    pub to_percent: f64,
    /// Evaluations in a row that held the rollout (hold events).
    pub held_intervals: u32,
    pub message: String,
    /// The judge's verdict per signal, when the judge decided.
    pub signals: Vec<SignalReason>,
    /// One line for chat tools, shown as is.
    pub text: String,
}

/// What a decision is worth notifying, if anything: `held` counts the holds in a row up to and
/// including this decision, `was_missing` says the previous decision of the service was a
/// metrics-missing hold.
pub fn classify(d: &Decision, held: u32, was_missing: bool) -> Option<EventKind> {
    match d.action {
        DecisionAction::Start => Some(EventKind::Start),
        DecisionAction::Step => Some(EventKind::Step),
        DecisionAction::Promote => Some(EventKind::Promote),
        DecisionAction::Rollback => Some(EventKind::Rollback),
        DecisionAction::Hold if d.reason == Reason::MetricsMissing && !was_missing => {
            Some(EventKind::MetricsMissing)
        }
        DecisionAction::Hold if held > 0 => Some(EventKind::Hold),
        _ => None,
    }
}

/// Whether a sink subscribed to `kind` gets it (hold: only at its `hold_intervals`-th hold).
fn wants(sink: &NotifyConfig, kind: EventKind, held: u32) -> bool {
    sink.events.contains(&kind) && (kind != EventKind::Hold || held == sink.hold_intervals)
}

fn rfc3339(at_ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(at_ms)).to_string()
}

/// The event of a decision.
pub fn event_of(
    id: u64,
    kind: EventKind,
    service: &str,
    node: &str,
    d: &Decision,
    held: u32,
) -> Event {
    let signals: Vec<SignalReason> = d
        .judgement
        .iter()
        .flat_map(|j| &j.signals)
        .map(SignalReason::from)
        .collect();
    let mut text = format!(
        "canary {service}: {} {} -> {} ({}), phase {}: {}",
        d.action.as_str(),
        d.from,
        d.to,
        d.reason,
        d.phase,
        d.message
    );
    let decisive: Vec<String> = signals
        .iter()
        .filter(|s| matches!(s.verdict.as_str(), "fail" | "missing") || s.dry_run)
        .map(|s| {
            format!(
                "{} {}{}",
                s.signal,
                s.verdict,
                if s.dry_run { " (dry run)" } else { "" }
            )
        })
        .collect();
    if !decisive.is_empty() {
        let _ = write!(text, " [{}]", decisive.join(", "));
    }
    if !node.is_empty() {
        let _ = write!(text, " on {node}");
    }
    Event {
        id,
        event: kind,
        service: service.to_string(),
        node: node.to_string(),
        time: rfc3339(d.at_ms),
        time_ms: d.at_ms,
        phase: d.phase,
        action: d.action.as_str().to_string(),
        reason: d.reason.as_str().to_string(),
        from_percent: d.from.percent(),
        to_percent: d.to.percent(),
        held_intervals: held,
        message: d.message.clone(),
        signals,
        text,
    }
}

/// A sink as the controller sees it: its config and its queue.
#[derive(Clone, Debug)]
pub(crate) struct SinkHandle {
    pub(crate) config: NotifyConfig,
    pub(crate) tx: mpsc::Sender<Event>,
}

/// Per-service memory for [`classify`].
#[derive(Clone, Copy, Debug, Default)]
struct ServiceMemory {
    held: u32,
    missing: bool,
}

/// The controller's side of notifications: never blocks.
#[derive(Default)]
pub struct Notifier {
    sinks: Vec<SinkHandle>,
    node: String,
    next_id: u64,
    services: BTreeMap<String, ServiceMemory>,
    metrics: Option<Metrics>,
    /// Before the real notifier is in place ([`Notifier::none`]): the decisions taken so far
    /// (those at start), handed to it by [`Notifier::take_over`].
    backlog: Vec<(String, Decision)>,
}

/// Decisions a placeholder notifier keeps at most.
const BACKLOG: usize = 256;

impl Notifier {
    /// No sinks: every call does nothing.
    pub fn none() -> Notifier {
        Notifier::default()
    }

    pub(crate) fn new(sinks: Vec<SinkHandle>, node: String, metrics: Metrics) -> Notifier {
        Notifier {
            sinks,
            node,
            next_id: 1,
            services: BTreeMap::new(),
            metrics: Some(metrics),
            backlog: Vec::new(),
        }
    }

    /// Replaces `old` (a placeholder): the decisions it kept are sent now, in order.
    pub fn take_over(&mut self, old: Notifier) {
        for (service, d) in old.backlog {
            self.decision(&service, &d);
        }
    }

    /// A decision of `service` (every decision, in order).
    pub fn decision(&mut self, service: &str, d: &Decision) {
        if self.metrics.is_none() {
            if self.backlog.len() < BACKLOG {
                self.backlog.push((service.to_string(), d.clone()));
            }
            return;
        }
        let memory = self.services.entry(service.to_string()).or_default();
        let was_missing = memory.missing;
        memory.held = if d.action == DecisionAction::Hold {
            memory.held + 1
        } else {
            0
        };
        memory.missing = d.action == DecisionAction::Hold && d.reason == Reason::MetricsMissing;
        let held = memory.held;
        if self.sinks.is_empty() {
            return;
        }
        let Some(kind) = classify(d, held, was_missing) else {
            return;
        };
        self.send(kind, held, |id, node| {
            event_of(id, kind, service, node, d, held)
        });
    }

    /// The dead-man switch of `service` was active: its heartbeat was `stale` old when the
    /// daemon wrote the next one.
    pub fn deadman(
        &mut self,
        service: &str,
        at_ms: u64,
        stale: Duration,
        phase: Phase,
        weight_percent: f64,
    ) {
        if self.sinks.is_empty() {
            return;
        }
        self.send(EventKind::Deadman, 0, |id, node| {
            let message = format!(
                "the heartbeat was {:.1}s old: the dead-man switch sent new flows to stable only until now",
                stale.as_secs_f64()
            );
            Event {
                id,
                event: EventKind::Deadman,
                service: service.to_string(),
                node: node.to_string(),
                time: rfc3339(at_ms),
                time_ms: at_ms,
                phase,
                action: "deadman".into(),
                reason: "heartbeat_stale".into(),
                from_percent: weight_percent,
                to_percent: weight_percent,
                held_intervals: 0,
                text: format!("canary {service}: dead-man switch was active: {message}{}", if node.is_empty() { String::new() } else { format!(" on {node}") }),
                message,
                signals: Vec::new(),
            }
        });
    }

    fn send(&mut self, kind: EventKind, held: u32, make: impl Fn(u64, &str) -> Event) {
        let id = self.next_id;
        let mut sent = false;
        for sink in &self.sinks {
            if !wants(&sink.config, kind, held) {
                continue;
            }
            sent = true;
            if let Err(e) = sink.tx.try_send(make(id, &self.node)) {
                let reason = match e {
                    mpsc::error::TrySendError::Full(_) => "queue_full",
                    mpsc::error::TrySendError::Closed(_) => "closed",
                };
                if let Some(m) = &self.metrics {
                    m.notify_dropped
                        .with_label_values(&[&sink.config.name, reason])
                        .inc();
                }
                tracing::warn!(
                    notify = %sink.config.name,
                    event = kind.as_str(),
                    reason,
                    "notification dropped: the sink's queue is full (its receiver is slow or down) or its sender stopped"
                );
            }
        }
        if sent {
            self.next_id += 1;
        }
    }
}

/// The node's name for events: the host name.
pub fn node_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}
