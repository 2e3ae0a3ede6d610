//! The rollout state machine of one service: pending (warm-up) -> stepping through the
//! configured weights -> promoted, or -> rolled back; paused at any time by the operator.
//!
//! Pure: time is an argument (milliseconds on any monotonic-enough clock the caller picks,
//! the same clock for one rollout), there is no I/O, and the whole state serialises, so the
//! daemon persists it after every change and resumes the same phase, step and weight after a
//! restart. The caller programs the returned weight into the data plane.
//!
//! Data: every poll brings per-group increases ([`Poll`]); they add up into the window of the
//! current step. The poll that straddles a weight change is left out (it mixes two weights),
//! as is everything before the first step (warm-up). Every evaluation judges the step's window
//! so far ([`crate::judge`]); a new step starts an empty window.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::config::{RolloutConfig, UpstreamConfig};
use crate::domain::{MissingPolicy, RollbackMode, StartMode, Weight};
use crate::judge::{self, FlowCounts, JudgeInput, Judgement, Reason, SignalVerdict, Verdict};
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
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Poll {
    pub stable: Window,
    pub canary: Window,
    pub flows: FlowCounts,
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
}

/// An operator action that does not apply now.
#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    /// The action makes no sense in this phase.
    #[error("cannot {action}: the rollout is {phase}; {hint}")]
    NotApplicable {
        action: &'static str,
        phase: Phase,
        hint: &'static str,
    },
    /// Persisted state could not be read back.
    #[error("rollout state is unreadable ({0}); delete the state file to start over")]
    State(#[from] serde_json::Error),
}

/// The data of the current step.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StepWindow {
    pub stable: Window,
    pub canary: Window,
    pub flows: FlowCounts,
    /// Polls added to the window.
    pub polls: u32,
    polls_since_evaluation: u32,
    /// Series missing in the latest poll (`canary.errors`, ...).
    pub missing_now: Vec<String>,
    /// The next poll straddles a weight change: leave it out.
    skip_next: bool,
    /// The next poll follows the warm-up: no spike check either.
    after_warmup: bool,
}

/// The rollout of one service. See the module documentation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    phase: Phase,
    weight: Weight,
    paused: bool,
    warmed_up: bool,
    canary: Vec<String>,
    started_at_ms: u64,
    step_started_at_ms: u64,
    last_evaluation_ms: u64,
    /// Looks that tested, over the whole rollout (the judge's alpha spending index).
    looks: u32,
    /// Consecutive evaluations with metrics missing.
    missing_intervals: u32,
    window: StepWindow,
    last_decision: Option<Decision>,
}

const HINT_NEW: &str = "start a new rollout with `canary start` or change the canary group";

impl Rollout {
    /// A rollout for a canary group (`fingerprint` empty: none, idle).
    pub fn new(at_ms: u64, fingerprint: Vec<String>, cfg: &RolloutConfig) -> (Rollout, Output) {
        let mut r = Rollout {
            phase: Phase::Idle,
            weight: Weight::ZERO,
            paused: false,
            warmed_up: false,
            canary: Vec::new(),
            started_at_ms: at_ms,
            step_started_at_ms: at_ms,
            last_evaluation_ms: at_ms,
            looks: 0,
            missing_intervals: 0,
            window: StepWindow::default(),
            last_decision: None,
        };
        let out = r.change_canary(at_ms, fingerprint, cfg);
        (r, out)
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    pub fn weight(&self) -> Weight {
        self.weight
    }

    pub fn paused(&self) -> bool {
        self.paused
    }

    /// Index of the current weight in `cfg.steps` (`None` off the configured steps).
    pub fn step(&self, cfg: &RolloutConfig) -> Option<usize> {
        if self.phase != Phase::Stepping && self.phase != Phase::Promoted {
            return None;
        }
        cfg.steps.iter().position(|w| *w == self.weight)
    }

    pub fn looks(&self) -> u32 {
        self.looks
    }

    pub fn window(&self) -> &StepWindow {
        &self.window
    }

    pub fn last_decision(&self) -> Option<&Decision> {
        self.last_decision.as_ref()
    }

    pub fn started_at_ms(&self) -> u64 {
        self.started_at_ms
    }

    pub fn step_started_at_ms(&self) -> u64 {
        self.step_started_at_ms
    }

    /// Whether the caller should send [`Event::Evaluate`] now.
    pub fn evaluation_due(&self, at_ms: u64, cfg: &RolloutConfig) -> bool {
        self.phase == Phase::Stepping
            && !self.paused
            && at_ms.saturating_sub(self.last_evaluation_ms) >= cfg.interval.as_millis() as u64
    }

    /// State to persist.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("rollout state always serialises")
    }

    /// Restores persisted state.
    pub fn from_json(text: &str) -> Result<Rollout, RolloutError> {
        Ok(serde_json::from_str(text)?)
    }

    fn output(&self, decision: Option<Decision>) -> Output {
        Output {
            weight: self.weight,
            reset_epoch: false,
            warm_up: false,
            decision,
        }
    }

    fn record(
        &mut self,
        at_ms: u64,
        action: DecisionAction,
        reason: Reason,
        from: Weight,
        message: String,
        judgement: Option<Judgement>,
    ) -> Decision {
        let d = Decision {
            at_ms,
            action,
            reason,
            phase: self.phase,
            from,
            to: self.weight,
            message,
            judgement,
        };
        self.last_decision = Some(d.clone());
        d
    }

    /// Moves to `weight` as a new step: fresh window; 100 % is the promotion.
    fn enter_weight(&mut self, at_ms: u64, weight: Weight) {
        self.weight = weight;
        self.phase = if weight == Weight::FULL {
            Phase::Promoted
        } else {
            Phase::Stepping
        };
        self.step_started_at_ms = at_ms;
        self.last_evaluation_ms = at_ms;
        self.missing_intervals = 0;
        self.window = StepWindow {
            skip_next: true,
            ..StepWindow::default()
        };
    }

    fn next_weight(&self, cfg: &RolloutConfig) -> Weight {
        cfg.steps
            .iter()
            .copied()
            .find(|w| *w > self.weight)
            .unwrap_or(Weight::FULL)
    }

    /// Steps up (or promotes at 100 %).
    fn step_up(
        &mut self,
        at_ms: u64,
        cfg: &RolloutConfig,
        reason: Reason,
        message: String,
        judgement: Option<Judgement>,
    ) -> Output {
        let from = self.weight;
        let next = self.next_weight(cfg);
        self.enter_weight(at_ms, next);
        let action = if self.phase == Phase::Promoted {
            DecisionAction::Promote
        } else {
            DecisionAction::Step
        };
        let d = self.record(at_ms, action, reason, from, message, judgement);
        self.output(Some(d))
    }

    fn roll_back(
        &mut self,
        at_ms: u64,
        cfg: &RolloutConfig,
        reason: Reason,
        message: &str,
        judgement: Option<Judgement>,
    ) -> Output {
        let from = self.weight;
        self.weight = Weight::ZERO;
        self.phase = Phase::RolledBack;
        self.paused = false;
        let reset = cfg.rollback == RollbackMode::Reset;
        let message = if reset {
            format!("{message}; established canary flows are re-chosen (reset)")
        } else {
            format!("{message}; established canary flows drain")
        };
        let d = self.record(
            at_ms,
            DecisionAction::Rollback,
            reason,
            from,
            message,
            judgement,
        );
        Output {
            reset_epoch: reset,
            ..self.output(Some(d))
        }
    }

    fn change_canary(
        &mut self,
        at_ms: u64,
        fingerprint: Vec<String>,
        cfg: &RolloutConfig,
    ) -> Output {
        let from = self.weight;
        self.canary = fingerprint;
        self.looks = 0;
        self.missing_intervals = 0;
        self.window = StepWindow::default();
        self.weight = Weight::ZERO;
        self.started_at_ms = at_ms;
        self.step_started_at_ms = at_ms;
        self.last_evaluation_ms = at_ms;
        self.warmed_up = false;
        if self.canary.is_empty() {
            self.phase = Phase::Idle;
            self.paused = false;
            let d = self.record(
                at_ms,
                DecisionAction::Idle,
                Reason::CanaryChanged,
                from,
                "no canary backends: all new flows go to stable".into(),
                None,
            );
            return self.output(Some(d));
        }
        self.phase = Phase::Pending;
        self.paused = cfg.start == StartMode::Paused;
        let message = format!(
            "new canary group ({}): warming up{}",
            self.canary.join(", "),
            if self.paused {
                "; paused until `canary resume` (start = paused)"
            } else {
                ""
            }
        );
        let d = self.record(
            at_ms,
            DecisionAction::Start,
            Reason::CanaryChanged,
            from,
            message,
            None,
        );
        Output {
            warm_up: true,
            ..self.output(Some(d))
        }
    }

    fn first_step(
        &mut self,
        at_ms: u64,
        cfg: &RolloutConfig,
        reason: Reason,
        message: &str,
    ) -> Output {
        let first = cfg.steps.first().copied().unwrap_or(Weight::FULL);
        let from = self.weight;
        self.enter_weight(at_ms, first);
        self.window.after_warmup = true;
        let action = if self.phase == Phase::Promoted {
            DecisionAction::Promote
        } else {
            DecisionAction::Step
        };
        let d = self.record(
            at_ms,
            action,
            reason,
            from,
            format!("{message}: first step {first}"),
            None,
        );
        self.output(Some(d))
    }

    /// Handles an event from the controller.
    pub fn on_event(
        &mut self,
        at_ms: u64,
        event: Event,
        cfg: &RolloutConfig,
        upstream: &UpstreamConfig,
    ) -> Output {
        match event {
            Event::CanaryChanged { fingerprint } => {
                if fingerprint == self.canary {
                    self.output(None)
                } else {
                    self.change_canary(at_ms, fingerprint, cfg)
                }
            }
            Event::WarmupDone => {
                if self.phase != Phase::Pending || self.warmed_up {
                    return self.output(None);
                }
                self.warmed_up = true;
                if self.paused {
                    let d = self.record(
                        at_ms,
                        DecisionAction::Hold,
                        Reason::Paused,
                        self.weight,
                        "warm-up done; paused: `canary resume` starts the first step".into(),
                        None,
                    );
                    return self.output(Some(d));
                }
                self.first_step(at_ms, cfg, Reason::WarmupDone, "warm-up done")
            }
            Event::Poll(poll) => self.on_poll(at_ms, &poll, cfg, upstream),
            Event::Evaluate => self.on_evaluate(at_ms, cfg, upstream),
        }
    }

    fn on_poll(
        &mut self,
        at_ms: u64,
        poll: &Poll,
        cfg: &RolloutConfig,
        upstream: &UpstreamConfig,
    ) -> Output {
        if self.phase != Phase::Stepping {
            return self.output(None);
        }
        let w = &mut self.window;
        w.polls_since_evaluation += 1;
        w.missing_now = missing_series(poll, upstream);
        let after_warmup = std::mem::take(&mut w.after_warmup);
        if std::mem::take(&mut w.skip_next) {
            // Straddles a weight change (or the warm-up): not part of this step's window.
        } else {
            w.stable.accumulate(&poll.stable);
            w.canary.accumulate(&poll.canary);
            w.flows.add(poll.flows);
            w.polls += 1;
        }
        if after_warmup {
            return self.output(None);
        }
        // The spike check runs even while paused: it guards against a canary that fails
        // outright, which no operator means to keep serving.
        if let Some(report) = judge::error_spike(&poll.canary, &cfg.thresholds) {
            if report.verdict == SignalVerdict::Fail {
                let message = format!("error spike: {}", report.note);
                let judgement = Judgement {
                    verdict: Verdict::Rollback,
                    reason: Reason::ErrorSpike,
                    look: None,
                    alpha: 0.0,
                    rollback_signals: 0,
                    signals: vec![report],
                };
                return self.roll_back(at_ms, cfg, Reason::ErrorSpike, &message, Some(judgement));
            }
        }
        self.output(None)
    }

    fn on_evaluate(
        &mut self,
        at_ms: u64,
        cfg: &RolloutConfig,
        upstream: &UpstreamConfig,
    ) -> Output {
        if self.phase != Phase::Stepping || self.paused {
            return self.output(None);
        }
        self.last_evaluation_ms = at_ms;
        let polls = std::mem::take(&mut self.window.polls_since_evaluation);
        let missing_now = self.window.missing_now.clone();
        if polls == 0 || !missing_now.is_empty() {
            let what = if polls == 0 {
                "no poll since the last evaluation".to_string()
            } else {
                format!("missing in the latest poll: {}", missing_now.join(", "))
            };
            return self.on_missing(at_ms, cfg, &what, None);
        }
        let input = JudgeInput {
            stable: &self.window.stable,
            canary: &self.window.canary,
            flows: self.window.flows,
            weight: self.weight,
            look: self.looks + 1,
        };
        let j = judge::judge(&input, cfg, upstream);
        if j.look.is_some() {
            self.looks += 1;
        }
        if j.reason == Reason::MetricsMissing {
            let what = j
                .signals
                .first()
                .map_or_else(String::new, |s| s.note.clone());
            return self.on_missing(at_ms, cfg, &what, Some(j));
        }
        self.missing_intervals = 0;
        match j.verdict {
            Verdict::Promote => {
                let message = format!("every signal passed at look {}", self.looks);
                self.step_up(at_ms, cfg, Reason::Healthy, message, Some(j))
            }
            Verdict::Rollback => {
                let message = format!("canary is worse on {} at look {}", j.reason, self.looks);
                let reason = j.reason;
                self.roll_back(at_ms, cfg, reason, &message, Some(j))
            }
            Verdict::Hold => {
                let message = match j.reason {
                    Reason::InsufficientSamples => format!(
                        "fewer than {} requests in a group so far; holding {}",
                        cfg.min_samples, self.weight
                    ),
                    _ => format!(
                        "not conclusive yet at look {}; holding {}",
                        self.looks, self.weight
                    ),
                };
                let reason = j.reason;
                let d = self.record(
                    at_ms,
                    DecisionAction::Hold,
                    reason,
                    self.weight,
                    message,
                    Some(j),
                );
                self.output(Some(d))
            }
        }
    }

    fn on_missing(
        &mut self,
        at_ms: u64,
        cfg: &RolloutConfig,
        what: &str,
        judgement: Option<Judgement>,
    ) -> Output {
        self.missing_intervals += 1;
        let n = self.missing_intervals;
        let limit = cfg.metrics_missing_intervals;
        if cfg.metrics_missing == MissingPolicy::Rollback && n >= limit {
            let message =
                format!("metrics missing for {n} evaluations ({what}); metrics_missing = rollback");
            return self.roll_back(at_ms, cfg, Reason::MetricsMissing, &message, judgement);
        }
        let policy = match cfg.metrics_missing {
            MissingPolicy::Hold => "metrics_missing = hold".to_string(),
            MissingPolicy::Rollback => format!("rollback after {limit}"),
        };
        let message = format!(
            "metrics missing for {n} evaluation(s) ({what}); holding {} ({policy})",
            self.weight
        );
        let d = self.record(
            at_ms,
            DecisionAction::Hold,
            Reason::MetricsMissing,
            self.weight,
            message,
            judgement,
        );
        self.output(Some(d))
    }

    /// Handles an operator action.
    pub fn on_action(
        &mut self,
        at_ms: u64,
        action: Action,
        cfg: &RolloutConfig,
    ) -> Result<Output, RolloutError> {
        let not = |hint| {
            Err(RolloutError::NotApplicable {
                action: action.as_str(),
                phase: self.phase,
                hint,
            })
        };
        let from = self.weight;
        match action {
            Action::Pause => {
                if !matches!(self.phase, Phase::Pending | Phase::Stepping) {
                    return not("only a running rollout can be paused");
                }
                self.paused = true;
                let d = self.record(
                    at_ms,
                    DecisionAction::Pause,
                    Reason::Operator,
                    from,
                    format!("paused by the operator at {}", self.weight),
                    None,
                );
                Ok(self.output(Some(d)))
            }
            Action::Resume => {
                if !matches!(self.phase, Phase::Pending | Phase::Stepping) {
                    return not("only a running rollout can be resumed");
                }
                self.paused = false;
                if self.phase == Phase::Pending && self.warmed_up {
                    return Ok(self.first_step(
                        at_ms,
                        cfg,
                        Reason::Operator,
                        "resumed by the operator",
                    ));
                }
                // The interval restarts so the first automatic decision has a full interval.
                self.last_evaluation_ms = at_ms;
                let d = self.record(
                    at_ms,
                    DecisionAction::Resume,
                    Reason::Operator,
                    from,
                    format!("resumed by the operator at {}", self.weight),
                    None,
                );
                Ok(self.output(Some(d)))
            }
            Action::Promote => match self.phase {
                Phase::Pending => {
                    self.warmed_up = true;
                    Ok(self.first_step(at_ms, cfg, Reason::Operator, "promoted by the operator"))
                }
                Phase::Stepping => Ok(self.step_up(
                    at_ms,
                    cfg,
                    Reason::Operator,
                    "promoted by the operator".into(),
                    None,
                )),
                _ => not(HINT_NEW),
            },
            Action::PromoteFull => {
                if !matches!(self.phase, Phase::Pending | Phase::Stepping) {
                    return not(HINT_NEW);
                }
                self.warmed_up = true;
                self.paused = false;
                self.enter_weight(at_ms, Weight::FULL);
                let d = self.record(
                    at_ms,
                    DecisionAction::Promote,
                    Reason::Operator,
                    from,
                    "promoted to 100% by the operator".into(),
                    None,
                );
                Ok(self.output(Some(d)))
            }
            Action::Rollback => {
                if !matches!(
                    self.phase,
                    Phase::Pending | Phase::Stepping | Phase::Promoted
                ) {
                    return not("there is no canary traffic to roll back");
                }
                Ok(self.roll_back(
                    at_ms,
                    cfg,
                    Reason::Operator,
                    "rolled back by the operator",
                    None,
                ))
            }
            Action::SetWeight(weight) => {
                if self.phase == Phase::Idle {
                    return not("there is no canary group; add canary backends to the config");
                }
                self.warmed_up = true;
                self.enter_weight(at_ms, weight);
                let message = if self.phase == Phase::Promoted {
                    "set to 100% by the operator".to_string()
                } else {
                    self.paused = true;
                    format!("set to {weight} by the operator; paused (resume continues from the next step above)")
                };
                let d = self.record(
                    at_ms,
                    DecisionAction::SetWeight,
                    Reason::Operator,
                    from,
                    message,
                    None,
                );
                Ok(self.output(Some(d)))
            }
            Action::Start => {
                if matches!(self.phase, Phase::Pending | Phase::Stepping) {
                    return not("a rollout is already running");
                }
                if self.canary.is_empty() {
                    return not("there is no canary group; add canary backends to the config");
                }
                let fp = std::mem::take(&mut self.canary);
                let mut out = self.change_canary(at_ms, fp, cfg);
                if let Some(d) = &mut out.decision {
                    d.reason = Reason::Operator;
                    d.message = format!("started by the operator; {}", d.message);
                    self.last_decision = Some(d.clone());
                }
                Ok(out)
            }
        }
    }
}

/// Required series missing in a poll, as `group.series`.
fn missing_series(poll: &Poll, upstream: &UpstreamConfig) -> Vec<String> {
    let mut out = Vec::new();
    for (group, w) in [("stable", &poll.stable), ("canary", &poll.canary)] {
        for name in w.missing_series() {
            let needed = match name {
                "latency" => !upstream.latency.is_empty(),
                "predictions" => !upstream.predictions.is_empty(),
                _ => true,
            };
            if needed {
                out.push(format!("{group}.{name}"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::judge::tests::{lognormal_histogram, window};
    use crate::upstream::Series;

    const SECOND: u64 = 1000;

    fn cfg() -> RolloutConfig {
        RolloutConfig::default()
    }

    fn up() -> UpstreamConfig {
        UpstreamConfig::default()
    }

    /// Canary behaviour for a test.
    #[derive(Clone, Copy)]
    struct Canary {
        error_rate: f64,
        shift_ms: f64,
        first_share: f64,
    }

    const HEALTHY: Canary = Canary {
        error_rate: 0.01,
        shift_ms: 0.0,
        first_share: 0.6,
    };

    /// One poll of `total` requests split by the rollout's weight.
    fn poll(r: &Rollout, total: u64, canary: Canary) -> Poll {
        let n_c = (total as f64 * r.weight().ratio()).round() as u64;
        let n_s = total - n_c;
        let errors = |n: u64, rate: f64| (n as f64 * rate).round() as u64;
        Poll {
            stable: window(
                n_s,
                errors(n_s, 0.01),
                lognormal_histogram(n_s, 100.0, 0.5, 0.0),
                0.6,
            ),
            canary: window(
                n_c,
                errors(n_c, canary.error_rate),
                lognormal_histogram(n_c, 100.0, 0.5, canary.shift_ms),
                canary.first_share,
            ),
            flows: FlowCounts {
                stable: n_s,
                canary: n_c,
            },
        }
    }

    fn started(cfg: &RolloutConfig) -> Rollout {
        let (mut r, out) = Rollout::new(0, vec!["v2-a@198.18.0.21".into()], cfg);
        assert!(out.warm_up);
        assert_eq!((r.phase(), out.weight), (Phase::Pending, Weight::ZERO));
        let out = r.on_event(0, Event::WarmupDone, cfg, &up());
        assert_eq!(
            (r.phase(), out.weight.basis_points()),
            (Phase::Stepping, 1000)
        );
        r
    }

    /// Polls every second (evaluating when due) until a decision that is not a hold, or
    /// `seconds` pass. Returns the time and that output.
    fn drive(
        r: &mut Rollout,
        cfg: &RolloutConfig,
        from: u64,
        seconds: u64,
        total: u64,
        canary: Canary,
    ) -> (u64, Option<Output>) {
        for s in 1..=seconds {
            let t = from + s * SECOND;
            let p = poll(r, total, canary);
            let out = r.on_event(t, Event::Poll(p), cfg, &up());
            if out.decision.is_some() {
                return (t, Some(out));
            }
            if r.evaluation_due(t, cfg) {
                let out = r.on_event(t, Event::Evaluate, cfg, &up());
                if out
                    .decision
                    .as_ref()
                    .is_some_and(|d| d.action != DecisionAction::Hold)
                {
                    return (t, Some(out));
                }
            }
        }
        (from + seconds * SECOND, None)
    }

    #[test]
    fn healthy_canary_is_promoted_through_every_step() {
        let cfg = cfg();
        let mut r = started(&cfg);
        let mut t = 0;
        let mut weights = vec![r.weight().basis_points()];
        while r.phase() == Phase::Stepping {
            let (at, out) = drive(&mut r, &cfg, t, 600, 2000, HEALTHY);
            let out = out.expect("a decision within 10 minutes");
            let d = out.decision.unwrap();
            assert_eq!(d.reason, Reason::Healthy, "{d}");
            assert!(at - t >= 15 * SECOND, "a step lasts at least one interval");
            weights.push(out.weight.basis_points());
            t = at;
        }
        assert_eq!(weights, [1000, 2500, 5000, 7500, 10000]);
        assert_eq!(r.phase(), Phase::Promoted);
        assert_eq!(r.last_decision().unwrap().action, DecisionAction::Promote);
        assert_eq!(r.step(&cfg), Some(4));
        assert!(r.looks() >= 4);
    }

    fn rolls_back_on(canary: Canary, expected: &[Reason]) {
        let cfg = cfg();
        let mut r = started(&cfg);
        let (_, out) = drive(&mut r, &cfg, 0, 600, 2000, canary);
        let out = out.expect("a decision");
        let d = out.decision.unwrap();
        assert_eq!(d.action, DecisionAction::Rollback, "{d}");
        assert!(expected.contains(&d.reason), "{d}");
        assert_eq!(
            (out.weight, r.phase(), out.reset_epoch),
            (Weight::ZERO, Phase::RolledBack, false)
        );
        assert_eq!(d.from.basis_points(), 1000, "caught at the first step");
        assert!(d.judgement.is_some());
    }

    #[test]
    fn rolls_back_on_error_rate() {
        rolls_back_on(
            Canary {
                error_rate: 0.04,
                ..HEALTHY
            },
            &[Reason::ErrorRate],
        );
    }

    #[test]
    fn rolls_back_on_latency() {
        rolls_back_on(
            Canary {
                shift_ms: 100.0,
                ..HEALTHY
            },
            &[Reason::LatencyMean, Reason::LatencyP95],
        );
    }

    #[test]
    fn rolls_back_on_prediction_shift() {
        rolls_back_on(
            Canary {
                first_share: 0.8,
                ..HEALTHY
            },
            &[Reason::PredictionShift],
        );
    }

    #[test]
    fn reset_mode_asks_for_a_new_epoch() {
        let cfg = RolloutConfig {
            rollback: RollbackMode::Reset,
            ..cfg()
        };
        let mut r = started(&cfg);
        let out = r.on_action(5 * SECOND, Action::Rollback, &cfg).unwrap();
        assert!(out.reset_epoch);
        assert!(out.decision.unwrap().message.contains("reset"));
    }

    #[test]
    fn error_spike_rolls_back_within_one_poll() {
        let cfg = cfg();
        let mut r = started(&cfg);
        // First poll after the warm-up is left out; the next healthy poll is fine.
        for s in 1..=2 {
            let out = r.on_event(
                s * SECOND,
                Event::Poll(poll(&r, 2000, HEALTHY)),
                &cfg,
                &up(),
            );
            assert!(out.decision.is_none());
        }
        let out = r.on_event(
            3 * SECOND,
            Event::Poll(poll(
                &r,
                2000,
                Canary {
                    error_rate: 0.3,
                    ..HEALTHY
                },
            )),
            &cfg,
            &up(),
        );
        let d = out.decision.expect("rolled back on this poll");
        assert_eq!(
            (d.action, d.reason, out.weight),
            (DecisionAction::Rollback, Reason::ErrorSpike, Weight::ZERO),
            "{d}"
        );
        assert!(d.message.contains("60 errors of 200 requests"), "{d}");
    }

    #[test]
    fn holds_below_min_samples() {
        let cfg = cfg();
        let mut r = started(&cfg);
        // 100 requests a second: the canary gets 10, far below 1000 per step in 60 s.
        let (_, out) = drive(
            &mut r,
            &cfg,
            0,
            60,
            100,
            Canary {
                error_rate: 0.05,
                ..HEALTHY
            },
        );
        assert!(out.is_none(), "no decision but holds");
        let d = r.last_decision().unwrap();
        assert_eq!(
            (d.action, d.reason),
            (DecisionAction::Hold, Reason::InsufficientSamples),
            "{d}"
        );
        assert_eq!(r.weight().basis_points(), 1000);
        assert_eq!(r.looks(), 0, "no look spent below min_samples");
    }

    fn missing_canary_errors(r: &Rollout) -> Poll {
        let mut p = poll(r, 2000, HEALTHY);
        p.canary.errors = Series::Missing;
        p
    }

    #[test]
    fn missing_metrics_hold() {
        let cfg = cfg();
        let mut r = started(&cfg);
        for s in 1..=120 {
            let t = s * SECOND;
            let p = missing_canary_errors(&r);
            r.on_event(t, Event::Poll(p), &cfg, &up());
            if r.evaluation_due(t, &cfg) {
                let out = r.on_event(t, Event::Evaluate, &cfg, &up());
                let d = out.decision.unwrap();
                assert_eq!(
                    (d.action, d.reason),
                    (DecisionAction::Hold, Reason::MetricsMissing),
                    "{d}"
                );
                assert!(d.message.contains("canary.errors"), "{d}");
            }
        }
        assert_eq!(
            (r.phase(), r.weight().basis_points()),
            (Phase::Stepping, 1000),
            "never promoted"
        );
    }

    #[test]
    fn missing_metrics_roll_back_when_configured() {
        let cfg = RolloutConfig {
            metrics_missing: MissingPolicy::Rollback,
            metrics_missing_intervals: 2,
            ..cfg()
        };
        let mut r = started(&cfg);
        let mut rollback_at = None;
        for s in 1..=60 {
            let t = s * SECOND;
            let p = missing_canary_errors(&r);
            r.on_event(t, Event::Poll(p), &cfg, &up());
            if r.evaluation_due(t, &cfg) {
                let out = r.on_event(t, Event::Evaluate, &cfg, &up());
                if out.decision.as_ref().unwrap().action == DecisionAction::Rollback {
                    assert_eq!(out.decision.unwrap().reason, Reason::MetricsMissing);
                    rollback_at = Some(t);
                    break;
                }
            }
        }
        assert_eq!(rollback_at, Some(30 * SECOND), "second missing evaluation");
        // No poll at all in an interval also counts as missing.
        let mut r = started(&cfg);
        r.on_event(15 * SECOND, Event::Evaluate, &cfg, &up());
        let out = r.on_event(30 * SECOND, Event::Evaluate, &cfg, &up());
        assert_eq!(out.decision.unwrap().reason, Reason::MetricsMissing);
        assert_eq!(r.phase(), Phase::RolledBack);
    }

    #[test]
    fn pause_stops_automatic_steps_and_resume_continues() {
        let cfg = cfg();
        let mut r = started(&cfg);
        let out = r.on_action(SECOND, Action::Pause, &cfg).unwrap();
        assert_eq!(out.decision.unwrap().action, DecisionAction::Pause);
        let (_, out) = drive(&mut r, &cfg, SECOND, 300, 2000, HEALTHY);
        assert!(out.is_none(), "paused: no step");
        assert!(!r.evaluation_due(400 * SECOND, &cfg));
        assert_eq!(r.weight().basis_points(), 1000);
        r.on_action(301 * SECOND, Action::Resume, &cfg).unwrap();
        let (_, out) = drive(&mut r, &cfg, 301 * SECOND, 60, 2000, HEALTHY);
        assert_eq!(
            out.unwrap().weight.basis_points(),
            2500,
            "data gathered while paused counts"
        );
        // A spike still rolls back a paused rollout.
        r.on_action(400 * SECOND, Action::Pause, &cfg).unwrap();
        r.on_event(
            401 * SECOND,
            Event::Poll(poll(&r, 2000, HEALTHY)),
            &cfg,
            &up(),
        );
        let out = r.on_event(
            402 * SECOND,
            Event::Poll(poll(
                &r,
                2000,
                Canary {
                    error_rate: 0.5,
                    ..HEALTHY
                },
            )),
            &cfg,
            &up(),
        );
        assert_eq!(out.decision.unwrap().reason, Reason::ErrorSpike);
    }

    #[test]
    fn start_paused_waits_for_resume() {
        let cfg = RolloutConfig {
            start: StartMode::Paused,
            ..cfg()
        };
        let (mut r, _) = Rollout::new(0, vec!["c".into()], &cfg);
        assert!(r.paused());
        let out = r.on_event(SECOND, Event::WarmupDone, &cfg, &up());
        assert_eq!((r.phase(), out.weight), (Phase::Pending, Weight::ZERO));
        let out = r.on_action(2 * SECOND, Action::Resume, &cfg).unwrap();
        assert_eq!(
            (r.phase(), out.weight.basis_points()),
            (Phase::Stepping, 1000)
        );
    }

    #[test]
    fn operator_actions() {
        let cfg = cfg();
        let mut r = started(&cfg);
        assert_eq!(
            r.on_action(SECOND, Action::Promote, &cfg)
                .unwrap()
                .weight
                .basis_points(),
            2500
        );
        assert_eq!(r.step(&cfg), Some(1));
        let out = r
            .on_action(
                2 * SECOND,
                Action::SetWeight(Weight::from_basis_points(3300)),
                &cfg,
            )
            .unwrap();
        assert_eq!(
            (out.weight.basis_points(), r.paused(), r.step(&cfg)),
            (3300, true, None)
        );
        assert_eq!(
            r.on_action(3 * SECOND, Action::Promote, &cfg)
                .unwrap()
                .weight
                .basis_points(),
            5000,
            "next step above"
        );
        let out = r.on_action(4 * SECOND, Action::PromoteFull, &cfg).unwrap();
        assert_eq!((out.weight, r.phase()), (Weight::FULL, Phase::Promoted));
        let e = r.on_action(5 * SECOND, Action::Promote, &cfg).unwrap_err();
        assert_eq!(e.to_string(), "cannot promote: the rollout is promoted; start a new rollout with `canary start` or change the canary group");
        let out = r.on_action(6 * SECOND, Action::Rollback, &cfg).unwrap();
        assert_eq!((out.weight, r.phase()), (Weight::ZERO, Phase::RolledBack));
        assert!(r.on_action(7 * SECOND, Action::Rollback, &cfg).is_err());
        assert!(r.on_action(7 * SECOND, Action::Pause, &cfg).is_err());
        let out = r.on_action(8 * SECOND, Action::Start, &cfg).unwrap();
        assert!(out.warm_up);
        assert_eq!(
            (r.phase(), out.decision.unwrap().reason),
            (Phase::Pending, Reason::Operator)
        );
        assert!(r.on_action(9 * SECOND, Action::Start, &cfg).is_err());
        // Promote during warm-up skips the rest of it; set-weight 100 promotes.
        assert_eq!(
            r.on_action(10 * SECOND, Action::Promote, &cfg)
                .unwrap()
                .weight
                .basis_points(),
            1000
        );
        r.on_action(11 * SECOND, Action::SetWeight(Weight::FULL), &cfg)
            .unwrap();
        assert_eq!(r.phase(), Phase::Promoted);
    }

    #[test]
    fn canary_group_changes_restart_or_idle() {
        let cfg = cfg();
        let mut r = started(&cfg);
        r.on_action(SECOND, Action::Promote, &cfg).unwrap();
        let same = r.on_event(
            2 * SECOND,
            Event::CanaryChanged {
                fingerprint: vec!["v2-a@198.18.0.21".into()],
            },
            &cfg,
            &up(),
        );
        assert!(same.decision.is_none());
        assert_eq!(r.weight().basis_points(), 2500);
        let out = r.on_event(
            3 * SECOND,
            Event::CanaryChanged {
                fingerprint: vec!["v3-a@198.18.0.31".into()],
            },
            &cfg,
            &up(),
        );
        assert!(out.warm_up);
        assert_eq!(
            (r.phase(), out.weight, r.looks()),
            (Phase::Pending, Weight::ZERO, 0)
        );
        let out = r.on_event(
            4 * SECOND,
            Event::CanaryChanged {
                fingerprint: vec![],
            },
            &cfg,
            &up(),
        );
        assert_eq!((r.phase(), out.weight), (Phase::Idle, Weight::ZERO));
        assert!(r.on_action(5 * SECOND, Action::Start, &cfg).is_err());
    }

    #[test]
    fn restores_from_persisted_state() {
        let cfg = cfg();
        let mut r = started(&cfg);
        r.on_action(SECOND, Action::Promote, &cfg).unwrap();
        let (t, _) = drive(&mut r, &cfg, SECOND, 10, 2000, HEALTHY);
        let saved = r.to_json();
        let mut restored = Rollout::from_json(&saved).expect("state reads back");
        assert_eq!(
            (restored.phase(), restored.weight(), restored.step(&cfg)),
            (Phase::Stepping, Weight::from_basis_points(2500), Some(1))
        );
        assert_eq!(restored.window().polls, r.window().polls);
        assert_eq!(restored.looks(), r.looks());
        // Both continue identically.
        let (a, out_a) = drive(&mut r, &cfg, t, 120, 2000, HEALTHY);
        let (b, out_b) = drive(&mut restored, &cfg, t, 120, 2000, HEALTHY);
        assert_eq!((a, out_a.map(|o| o.weight)), (b, out_b.map(|o| o.weight)));
        assert!(matches!(
            Rollout::from_json("{"),
            Err(RolloutError::State(_))
        ));
    }

    #[test]
    fn decisions_display_and_serialize() {
        let cfg = cfg();
        let mut r = started(&cfg);
        let (_, out) = drive(
            &mut r,
            &cfg,
            0,
            600,
            2000,
            Canary {
                error_rate: 0.05,
                ..HEALTHY
            },
        );
        let d = out.unwrap().decision.unwrap();
        let text = d.to_string();
        assert!(text.starts_with("rollback (error_rate): 10% -> 0%, phase rolled_back: canary is worse on error_rate"), "{text}");
        assert!(text.contains("error_rate    FAIL"), "{text}");
        let json = serde_json::to_string(&d).unwrap();
        let back: Decision = serde_json::from_str(&json).unwrap();
        assert_eq!(
            (back.action, back.reason, back.to),
            (d.action, d.reason, d.to)
        );
    }
}
