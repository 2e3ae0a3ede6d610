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

use serde::{Deserialize, Serialize};

use crate::config::{RolloutConfig, UpstreamConfig};
use crate::domain::{MissingPolicy, RollbackMode, StartMode, Weight};
use crate::judge::{
    self, FlowCounts, JudgeInput, Judgement, Reason, Signal, SignalVerdict, Verdict,
};
use crate::upstream::Window;

mod decision;
mod store;
#[cfg(test)]
mod tests;

pub use decision::{Action, Decision, DecisionAction, Event, Output, Phase, Poll};
pub use store::{write_durably, StateStore};

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

/// Restored state that cannot be right, with the field at fault.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("field `{field}` {problem}")]
pub struct InvalidState {
    pub field: &'static str,
    pub problem: String,
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
    /// Why, per backend problem in the latest poll (see [`Poll::problems`]).
    #[serde(default)]
    pub missing_why: Vec<String>,
    /// The latest poll could not scrape some backend for a reason of this node.
    #[serde(default)]
    pub missing_local: bool,
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

    /// A rollout for a canary group whose state file is missing while the data plane still
    /// holds canary weight `weight` (the file was deleted or lost, the maps were not): the
    /// rollout continues at that weight instead of silently starting over at 0 %, with a fresh
    /// judging window; at 100 % it is promoted.
    pub fn adopt(
        at_ms: u64,
        fingerprint: Vec<String>,
        weight: Weight,
        path: &std::path::Path,
    ) -> (Rollout, Output) {
        let mut r = Rollout {
            phase: Phase::Stepping,
            weight: Weight::ZERO,
            paused: false,
            warmed_up: true,
            canary: fingerprint,
            started_at_ms: at_ms,
            step_started_at_ms: at_ms,
            last_evaluation_ms: at_ms,
            looks: 0,
            missing_intervals: 0,
            window: StepWindow::default(),
            last_decision: None,
        };
        r.enter_weight(at_ms, weight);
        let d = r.record(
            at_ms,
            DecisionAction::SetWeight,
            Reason::StateMissing,
            Weight::ZERO,
            format!(
                "state file {} is missing but the data plane holds {weight}: continuing at that weight (a new judging window starts)",
                path.display()
            ),
            None,
        );
        let out = r.output(Some(d));
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

    /// Checks restored state before it is used: every weight within 0..=100 % and the weight
    /// consistent with the phase. Steps do not constrain a stepping weight further: the operator
    /// may set any weight below 100 % (`set-weight`), and a resumed rollout steps up from there.
    /// The error names the field.
    pub fn validate(&self) -> Result<(), InvalidState> {
        let bad = |field: &'static str, problem: String| Err(InvalidState { field, problem });
        let bp = self.weight.basis_points();
        if bp > Weight::FULL.basis_points() {
            return bad(
                "weight",
                format!("is {bp} basis points; at most 10000 (100 %)"),
            );
        }
        if let Some(d) = &self.last_decision {
            for (field, w) in [("last_decision.from", d.from), ("last_decision.to", d.to)] {
                if w.basis_points() > Weight::FULL.basis_points() {
                    return bad(
                        field,
                        format!(
                            "is {} basis points; at most 10000 (100 %)",
                            w.basis_points()
                        ),
                    );
                }
            }
        }
        let expected = match self.phase {
            Phase::Idle | Phase::Pending | Phase::RolledBack => (bp == 0).then_some(()).ok_or("0"),
            Phase::Promoted => (self.weight == Weight::FULL)
                .then_some(())
                .ok_or("10000 (100 %)"),
            Phase::Stepping => (self.weight < Weight::FULL)
                .then_some(())
                .ok_or("below 10000 (100 % is the promoted phase)"),
        };
        if let Err(want) = expected {
            return bad(
                "weight",
                format!(
                    "is {bp} basis points in phase {}; that phase has weight {want}",
                    self.phase
                ),
            );
        }
        if self.phase == Phase::Idle && !self.canary.is_empty() {
            return bad(
                "phase",
                "is idle but a canary group is recorded; an idle rollout has none".into(),
            );
        }
        Ok(())
    }

    fn output(&self, decision: Option<Decision>) -> Output {
        Output {
            weight: self.weight,
            reset_epoch: false,
            warm_up: false,
            decision,
            dry_run_failures: Vec::new(),
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
        w.missing_why.clone_from(&poll.problems);
        w.missing_local = poll.local_failure;
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
        if let Some(mut report) = judge::error_spike(&poll.canary, &cfg.thresholds) {
            if cfg.dry_run.contains(&Signal::ErrorSpike) {
                report.dry_run = true;
                if report.verdict == SignalVerdict::Fail {
                    return Output {
                        dry_run_failures: vec![report],
                        ..self.output(None)
                    };
                }
            } else if report.verdict == SignalVerdict::Fail {
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
            } else if self.window.missing_why.is_empty() {
                format!("missing in the latest poll: {}", missing_now.join(", "))
            } else {
                format!(
                    "missing in the latest poll: {}; {}",
                    missing_now.join(", "),
                    self.window.missing_why.join("; ")
                )
            };
            if polls > 0 && self.window.missing_local {
                return self.on_metrics_unknown(at_ms, &what);
            }
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

    /// Metrics missing because this node could not scrape them (out of descriptors, ...): the
    /// backends are not at fault, so this holds without counting toward
    /// `metrics_missing_intervals` (the next good scrape covers the gap).
    fn on_metrics_unknown(&mut self, at_ms: u64, what: &str) -> Output {
        let message = format!(
            "metrics unknown: not scraped for a reason of this node ({what}); holding {}, not counted toward metrics_missing_intervals",
            self.weight
        );
        let d = self.record(
            at_ms,
            DecisionAction::Hold,
            Reason::MetricsUnknown,
            self.weight,
            message,
            None,
        );
        self.output(Some(d))
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
