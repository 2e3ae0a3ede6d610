//! The rollout's vocabulary: phases, what comes in (polls, events, operator actions) and what
//! goes out (decisions and what the caller must do).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::domain::{Group, Weight};
use crate::judge::{FlowCounts, Judgement, Reason};
use crate::upstream::Window;

/// Phase of a rollout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// No canary backends: all new flows to stable.
    Idle,
    /// Canary backends are being warmed up; weight 0.
    Pending,
    /// Stepping through the configured weights.
    Stepping,
    /// Canary serves all new flows.
    Promoted,
    /// Canary serves no new flows.
    RolledBack,
}

impl Phase {
    pub const ALL: [Phase; 5] = [
        Phase::Idle,
        Phase::Pending,
        Phase::Stepping,
        Phase::Promoted,
        Phase::RolledBack,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Idle => "idle",
            Phase::Pending => "pending",
            Phase::Stepping => "stepping",
            Phase::Promoted => "promoted",
            Phase::RolledBack => "rolled_back",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One poll's increases per group (from [`crate::upstream::aggregate`] of backend deltas) and
/// the new flows the kernel counted per group over the same poll.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Poll {
    pub stable: Window,
    pub canary: Window,
    pub flows: FlowCounts,
    /// The same poll per backend (the backends aggregated into `stable` and `canary`): the
    /// judge's units for variances that survive clustering.
    #[serde(default)]
    pub backends: Vec<BackendPoll>,
    /// Why series of the backends in service are missing this poll, one line per problem
    /// (`k0: connection refused: ... [refused]`), for the decision's message.
    #[serde(default)]
    pub problems: Vec<String>,
    /// Some backend's metrics could not be scraped for a reason of this node (out of file
    /// descriptors, buffers, ...): what is missing says nothing about the backends.
    #[serde(default)]
    pub local_failure: bool,
}

/// One backend's increase over one poll.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BackendPoll {
    pub group: Group,
    pub backend: String,
    pub window: Window,
}

/// What the controller reports.
#[derive(Clone, Debug, PartialEq)]
#[allow(
    clippy::large_enum_variant,
    reason = "one event per poll, moved once; boxing would only add an allocation"
)]
pub enum Event {
    /// Every canary backend got its warm-up requests.
    WarmupDone,
    /// A poll (every `poll_interval`): data for the window and the spike check.
    Poll(Poll),
    /// An evaluation is due (see [`Rollout::evaluation_due`]).
    Evaluate,
    /// The canary group's identity after a start or reload
    /// ([`crate::config::ServiceConfig::canary_fingerprint`]).
    CanaryChanged { fingerprint: Vec<String> },
}

/// What an operator asks for.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Pause,
    Resume,
    /// To the next configured step.
    Promote,
    /// Straight to 100 %.
    PromoteFull,
    Rollback,
    /// Any weight; pauses the rollout so the judge does not move it at once.
    SetWeight(Weight),
    /// Start a new rollout of the current canary group (after a promotion or rollback).
    Start,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Pause => "pause",
            Action::Resume => "resume",
            Action::Promote => "promote",
            Action::PromoteFull => "promote --full",
            Action::Rollback => "rollback",
            Action::SetWeight(_) => "set-weight",
            Action::Start => "start",
        }
    }
}

/// What a decision did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecisionAction {
    /// A rollout started (warm-up).
    Start,
    /// Moved to a higher step.
    Step,
    /// Reached 100 %.
    Promote,
    Rollback,
    /// Stayed at the current weight.
    Hold,
    Pause,
    Resume,
    SetWeight,
    /// No canary group: nothing to roll out.
    Idle,
}

impl DecisionAction {
    /// Also the `action` label of `canary_decisions_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            DecisionAction::Start => "start",
            DecisionAction::Step => "step",
            DecisionAction::Promote => "promote",
            DecisionAction::Rollback => "rollback",
            DecisionAction::Hold => "hold",
            DecisionAction::Pause => "pause",
            DecisionAction::Resume => "resume",
            DecisionAction::SetWeight => "set_weight",
            DecisionAction::Idle => "idle",
        }
    }
}

/// One decision, for `/status`, the event log and `canary_decisions_total`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub at_ms: u64,
    pub action: DecisionAction,
    pub reason: Reason,
    /// Phase after the decision.
    pub phase: Phase,
    pub from: Weight,
    pub to: Weight,
    /// In words.
    pub message: String,
    /// The judge's evidence, when the judge or the spike check decided.
    pub judgement: Option<Judgement>,
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({}): {} -> {}, phase {}: {}",
            self.action.as_str(),
            self.reason,
            self.from,
            self.to,
            self.phase,
            self.message
        )?;
        if let Some(j) = &self.judgement {
            write!(f, "\n{j}")?;
        }
        Ok(())
    }
}

/// What the caller must do after an event or action.
#[derive(Clone, Debug, PartialEq)]
pub struct Output {
    /// Weight to program (always given, changed or not).
    pub weight: Weight,
    /// Rollback in `reset` mode: bump the service's reset epoch so established canary flows
    /// are re-chosen.
    pub reset_epoch: bool,
    /// Send warm-up requests to the canary backends, then report [`Event::WarmupDone`].
    pub warm_up: bool,
    pub decision: Option<Decision>,
    /// Dry-run checks that failed outside an evaluation (the per-poll error spike): reported,
    /// nothing else.
    pub dry_run_failures: Vec<crate::judge::SignalReport>,
}
