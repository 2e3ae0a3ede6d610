//! The rollout state machine of one service: pending (warm-up) -> stepping through the
//! configured weights -> promoted, or -> rolled back; paused at any time by the operator.
//!
//! Pure: time is an argument (milliseconds on any monotonic-enough clock the caller picks,
//! the same clock for one rollout), there is no I/O, and the whole state serialises, so the
//! daemon persists it after every change and resumes the same phase, step and weight after a
//! restart. The caller programs the returned weight into the data plane.
//!
//! Data: every poll brings per-group increases ([`Poll`]); they add up into the window of the
//! current step, and per backend into the window's units (for variances that survive
//! clustering). The poll that straddles a weight change is left out (it mixes two weights),
//! as is everything before the first step (warm-up). After every poll the judge looks at the
//! step's window so far ([`crate::judge`]; its bounds are confidence sequences, valid however
//! often it looks): a failing signal rolls back at once, at any sample size; a promotion needs
//! every signal to pass, `min_samples` in each group and the step's `interval` elapsed. Holds
//! are recorded (logged, counted) once per `interval`. A new step starts an empty window.

use serde::{Deserialize, Serialize};

use crate::config::{RolloutConfig, UpstreamConfig};
use crate::domain::Group;
use crate::domain::{MissingPolicy, RollbackMode, StartMode, Weight};
use crate::judge::{
    self, Batches, FlowCounts, JudgeInput, Judgement, PollErrors, Reason, Signal, SignalVerdict,
    Verdict,
};
use crate::upstream::Window;

mod decision;
mod store;
#[cfg(test)]
mod tests;

pub use decision::{Action, BackendPoll, Decision, DecisionAction, Event, Output, Phase, Poll};
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
    /// Each group's units (backend x run of polls): `[stable, canary]`.
    #[serde(default)]
    pub units: [Batches; 2],
    /// The previous window's units (design effects early in a step).
    #[serde(default)]
    pub earlier: [Batches; 2],
    /// Requests and errors of the latest polls (at most [`judge::SPIKE_POLLS`]), for the spike
    /// check.
    #[serde(default)]
    recent: Vec<PollErrors>,
    polls_since_evaluation: u32,
    /// Series missing in the latest poll (`canary.errors`, ...).
    pub missing_now: Vec<String>,
    /// Judged signals without data at the latest evaluation, each `signal: why`.
    #[serde(default)]
    pub without_data: Vec<(Signal, String)>,
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

impl StepWindow {
    /// The units the judge estimates design effects from.
    pub fn units(&self) -> judge::Units<'_> {
        judge::Units {
            current: [&self.units[0], &self.units[1]],
            earlier: [&self.earlier[0], &self.earlier[1]],
        }
    }
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
    /// When the latest hold was recorded (holds are recorded once per `interval`).
    last_evaluation_ms: u64,
    /// Step windows entered in this rollout (each has its share of the error budget).
    #[serde(default)]
    windows: u32,
    /// Polls the spike check tested in this rollout (its budget is spread over them).
    #[serde(default)]
    spike_polls: u32,
    /// Consecutive recorded holds with metrics missing or a signal without data.
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
            windows: 0,
            spike_polls: 0,
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
            windows: 0,
            spike_polls: 0,
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

    /// Step windows entered in this rollout.
    pub fn windows(&self) -> u32 {
        self.windows
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

    /// Whether the caller should send [`Event::Evaluate`] now: after every poll of a running
    /// step (the judge's bounds stay valid however often it looks). While the latest poll
    /// misses series there is nothing to judge: then once per `interval`, so each evaluation
    /// with metrics missing stands for one interval (`metrics_missing_intervals`).
    pub fn evaluation_due(&self, at_ms: u64, cfg: &RolloutConfig) -> bool {
        self.phase == Phase::Stepping
            && !self.paused
            && self.window.polls_since_evaluation > 0
            && (self.window.missing_now.is_empty() || self.hold_due(at_ms, cfg))
    }

    /// A hold is recorded at most once per `interval`.
    fn hold_due(&self, at_ms: u64, cfg: &RolloutConfig) -> bool {
        at_ms.saturating_sub(self.last_evaluation_ms) >= cfg.interval.as_millis() as u64
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
        self.windows += 1;
        let old = std::mem::take(&mut self.window);
        let earlier = if old.units.iter().all(Batches::is_empty) {
            old.earlier
        } else {
            old.units
        };
        self.window = StepWindow {
            skip_next: true,
            earlier,
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
        self.windows = 0;
        self.spike_polls = 0;
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
            for b in &poll.backends {
                let i = usize::from(b.group == Group::Canary);
                w.units[i].add(&b.backend, &b.window);
            }
        }
        if let Some(errors) = poll_errors(poll) {
            w.recent.push(errors);
            if w.recent.len() > judge::SPIKE_POLLS {
                w.recent.remove(0);
            }
        }
        if after_warmup {
            return self.output(None);
        }
        // The spike check runs even while paused: it guards against a canary that fails
        // outright, which no operator means to keep serving.
        if self.window.recent.last().is_some_and(|p| p.1 .0 > 0)
            && judge::enough_flows(self.window.flows)
        {
            self.spike_polls += 1;
            let alpha = 1.0 - cfg.thresholds.confidence;
            let level = judge::spike_level(alpha, self.spike_polls);
            let stable_requests = self.window.stable.requests.present().copied().unwrap_or(0);
            let deff = judge::spike_design_effect(
                &self.window.units(),
                self.window.flows,
                stable_requests as f64,
            );
            if let Some(mut report) =
                judge::error_spike(&self.window.recent, deff, level, cfg.thresholds.error_spike)
            {
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
                        window: self.windows,
                        rollback_level: level,
                        promote_level: 0.0,
                        rollback_signals: 1,
                        signals: vec![report],
                    };
                    return self.roll_back(
                        at_ms,
                        cfg,
                        Reason::ErrorSpike,
                        &message,
                        Some(judgement),
                    );
                }
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
        let polls = std::mem::take(&mut self.window.polls_since_evaluation);
        if polls == 0 {
            return self.output(None);
        }
        let missing_now = self.window.missing_now.clone();
        if !missing_now.is_empty() {
            let what = if self.window.missing_why.is_empty() {
                format!("missing in the latest poll: {}", missing_now.join(", "))
            } else {
                format!(
                    "missing in the latest poll: {}; {}",
                    missing_now.join(", "),
                    self.window.missing_why.join("; ")
                )
            };
            if self.window.missing_local {
                return self.on_metrics_unknown(at_ms, &what);
            }
            return self.on_missing(at_ms, cfg, Reason::MetricsMissing, &what, None);
        }
        let input = JudgeInput {
            stable: &self.window.stable,
            canary: &self.window.canary,
            units: self.window.units(),
            flows: self.window.flows,
            weight: self.weight,
            window: self.windows.max(1),
        };
        let j = judge::judge(&input, cfg, upstream);
        self.window.without_data = if j.reason == Reason::NoData {
            j.signals
                .iter()
                .filter(|s| s.verdict == SignalVerdict::NoData)
                .map(|s| (s.signal, s.note.clone()))
                .collect()
        } else {
            Vec::new()
        };
        match j.reason {
            Reason::MetricsMissing => {
                let what = j
                    .signals
                    .first()
                    .map_or_else(String::new, |s| s.note.clone());
                return self.on_missing(at_ms, cfg, Reason::MetricsMissing, &what, Some(j));
            }
            Reason::NoData => {
                let what = j
                    .signals
                    .iter()
                    .filter(|s| s.verdict == SignalVerdict::NoData)
                    .map(|s| format!("{}: {}", s.signal.as_str(), s.note))
                    .collect::<Vec<_>>()
                    .join("; ");
                return self.on_missing(at_ms, cfg, Reason::NoData, &what, Some(j));
            }
            _ => {}
        }
        self.missing_intervals = 0;
        let step_age = at_ms.saturating_sub(self.step_started_at_ms);
        match j.verdict {
            Verdict::Promote if step_age >= cfg.interval.as_millis() as u64 => {
                let message = format!(
                    "every signal passed in step window {} ({} polls)",
                    self.windows, self.window.polls
                );
                self.step_up(at_ms, cfg, Reason::Healthy, message, Some(j))
            }
            Verdict::Rollback => {
                let below = j
                    .signal(Signal::Samples)
                    .is_some_and(|s| s.verdict != SignalVerdict::Ok);
                let message = format!(
                    "canary is worse on {} in step window {}{}",
                    j.reason,
                    self.windows,
                    if below {
                        " (strong evidence before min_samples)"
                    } else {
                        ""
                    }
                );
                let reason = j.reason;
                self.roll_back(at_ms, cfg, reason, &message, Some(j))
            }
            Verdict::Promote | Verdict::Hold => {
                if !self.hold_due(at_ms, cfg) {
                    return self.output(None);
                }
                self.last_evaluation_ms = at_ms;
                let message = match j.reason {
                    Reason::InsufficientSamples => format!(
                        "fewer than {} requests in a group so far; holding {}",
                        cfg.min_samples, self.weight
                    ),
                    Reason::Healthy => format!(
                        "every signal passes; the step lasts at least {}; holding {}",
                        humantime::format_duration(cfg.interval),
                        self.weight
                    ),
                    _ => format!(
                        "not conclusive yet ({} polls in step window {}); holding {}",
                        self.window.polls, self.windows, self.weight
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
        self.last_evaluation_ms = at_ms;
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

    /// Metrics missing, or a signal without data: held, recorded once per `interval`, and
    /// after `metrics_missing_intervals` such holds `metrics_missing = rollback` rolls back.
    fn on_missing(
        &mut self,
        at_ms: u64,
        cfg: &RolloutConfig,
        reason: Reason,
        what: &str,
        judgement: Option<Judgement>,
    ) -> Output {
        if !self.hold_due(at_ms, cfg) {
            return self.output(None);
        }
        self.last_evaluation_ms = at_ms;
        self.missing_intervals += 1;
        let n = self.missing_intervals;
        let limit = cfg.metrics_missing_intervals;
        let problem = match reason {
            Reason::NoData => "a signal without data",
            _ => "metrics missing",
        };
        if cfg.metrics_missing == MissingPolicy::Rollback && n >= limit {
            let message =
                format!("{problem} for {n} evaluations ({what}); metrics_missing = rollback");
            return self.roll_back(at_ms, cfg, reason, &message, judgement);
        }
        let policy = match cfg.metrics_missing {
            MissingPolicy::Hold => {
                "metrics_missing = hold: holds until the data arrive".to_string()
            }
            MissingPolicy::Rollback => format!("rollback after {limit}"),
        };
        let message = format!(
            "{problem} for {n} evaluation(s) ({what}); holding {} ({policy})",
            self.weight
        );
        let d = self.record(
            at_ms,
            DecisionAction::Hold,
            reason,
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
                // The step's interval restarts: the judge may promote a full interval after
                // the resume at the earliest (a rollback may come at any poll).
                self.last_evaluation_ms = at_ms;
                self.step_started_at_ms = at_ms;
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

/// Requests and errors of both groups in a poll, when both are present in both.
fn poll_errors(poll: &Poll) -> Option<PollErrors> {
    let get = |w: &Window| Some((*w.requests.present()?, *w.errors.present()?));
    Some((get(&poll.stable)?, get(&poll.canary)?))
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
