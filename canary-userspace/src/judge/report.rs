//! What the judge finds: the verdict, per-signal reports with their numbers, and the reasons
//! that label decisions.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Overall verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Promote,
    Rollback,
    Hold,
}

/// Why: also the `reason` label of `canary_decisions_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Every signal passed.
    Healthy,
    ErrorRate,
    LatencyMean,
    LatencyP95,
    PredictionShift,
    ErrorSpike,
    /// Fewer than `min_samples` requests in a group.
    InsufficientSamples,
    MetricsMissing,
    /// A signal has no data to judge (no latency observations, no predictions, p95 in the
    /// `+Inf` bucket) while every other signal could be judged.
    NoData,
    /// Metrics could not be scraped for a reason of this node (not the backends'): held
    /// without counting toward `metrics_missing_intervals`.
    MetricsUnknown,
    /// Neither pass nor fail on some signal yet.
    Inconclusive,
    /// An operator action.
    Operator,
    /// The canary group changed (new version): a new rollout starts.
    CanaryChanged,
    /// Warm-up finished: first step.
    WarmupDone,
    /// Rollout paused: no automatic step.
    Paused,
    /// The state file was missing; the weight the data plane held was adopted.
    StateMissing,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Healthy => "healthy",
            Reason::ErrorRate => "error_rate",
            Reason::LatencyMean => "latency_mean",
            Reason::LatencyP95 => "latency_p95",
            Reason::PredictionShift => "prediction_shift",
            Reason::ErrorSpike => "error_spike",
            Reason::InsufficientSamples => "insufficient_samples",
            Reason::MetricsMissing => "metrics_missing",
            Reason::NoData => "no_data",
            Reason::MetricsUnknown => "metrics_unknown",
            Reason::Inconclusive => "inconclusive",
            Reason::Operator => "operator",
            Reason::CanaryChanged => "canary_changed",
            Reason::WarmupDone => "warmup_done",
            Reason::Paused => "paused",
            Reason::StateMissing => "state_missing",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A signal the judge looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Signal {
    Samples,
    ErrorRate,
    LatencyMean,
    LatencyP95,
    Predictions,
    FlowShare,
    ErrorSpike,
    Metrics,
}

impl Signal {
    pub fn as_str(self) -> &'static str {
        match self {
            Signal::Samples => "samples",
            Signal::ErrorRate => "error_rate",
            Signal::LatencyMean => "latency_mean",
            Signal::LatencyP95 => "latency_p95",
            Signal::Predictions => "predictions",
            Signal::FlowShare => "flow_share",
            Signal::ErrorSpike => "error_spike",
            Signal::Metrics => "metrics",
        }
    }

    /// The signals that can roll back or hold a rollout, so can be put in `dry_run`.
    pub const DECIDING: [Signal; 5] = [
        Signal::ErrorRate,
        Signal::LatencyMean,
        Signal::LatencyP95,
        Signal::Predictions,
        Signal::ErrorSpike,
    ];

    /// A deciding signal by its name (as in `dry_run`).
    pub fn deciding(name: &str) -> Option<Signal> {
        Signal::DECIDING.into_iter().find(|s| s.as_str() == name)
    }

    pub(super) fn reason(self) -> Reason {
        match self {
            Signal::ErrorRate => Reason::ErrorRate,
            Signal::LatencyMean => Reason::LatencyMean,
            Signal::LatencyP95 => Reason::LatencyP95,
            Signal::Predictions => Reason::PredictionShift,
            Signal::ErrorSpike => Reason::ErrorSpike,
            Signal::Metrics => Reason::MetricsMissing,
            Signal::Samples => Reason::InsufficientSamples,
            Signal::FlowShare => Reason::Inconclusive,
        }
    }

    /// Unit of the values of this signal, for display.
    fn unit(self) -> Unit {
        match self {
            Signal::ErrorRate | Signal::ErrorSpike | Signal::FlowShare => Unit::Percent,
            Signal::LatencyMean | Signal::LatencyP95 => Unit::Millis,
            Signal::Predictions => Unit::Ratio,
            Signal::Samples | Signal::Metrics => Unit::Count,
        }
    }
}

#[derive(Clone, Copy)]
enum Unit {
    Percent,
    Millis,
    Ratio,
    Count,
}

impl Unit {
    fn show(self, v: f64) -> String {
        match self {
            Unit::Percent => format!("{:.3}%", v * 100.0),
            Unit::Millis => format!("{v:.2}ms"),
            Unit::Ratio => format!("{v:.4}"),
            Unit::Count => format!("{v:.0}"),
        }
    }
}

/// The verdict on one signal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignalVerdict {
    /// Not worse by more than the threshold, at the configured confidence.
    Pass,
    /// Worse: rolls back.
    Fail,
    /// Not decided yet.
    Inconclusive,
    /// Informational finding worth a look (flow share far from the weight).
    Warn,
    /// Informational, fine.
    Ok,
    /// Not computable (no new flows counted: flow share only).
    Skipped,
    /// The groups have requests but this signal has nothing to judge.
    NoData,
    Missing,
}

impl fmt::Display for SignalVerdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SignalVerdict::Pass => "PASS",
            SignalVerdict::Fail => "FAIL",
            SignalVerdict::Inconclusive => "inconclusive",
            SignalVerdict::Warn => "WARN",
            SignalVerdict::Ok => "ok",
            SignalVerdict::Skipped => "skipped",
            SignalVerdict::NoData => "NO DATA",
            SignalVerdict::Missing => "MISSING",
        })
    }
}

/// One signal's test, numbers and verdict. Values are in base units: error rates and shares
/// as fractions, latency in milliseconds, predictions as a distance in 0..=1.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SignalReport {
    pub signal: Signal,
    /// Name of the test or bound.
    pub test: String,
    pub n_stable: u64,
    pub n_canary: u64,
    /// Measured value per group (error rate, mean, p95, share); `None` when not defined.
    pub stable: Option<f64>,
    pub canary: Option<f64>,
    /// Canary minus stable (distance for predictions).
    pub estimate: Option<f64>,
    pub statistic: Option<f64>,
    pub p_value: Option<f64>,
    /// Lower confidence bound at the rollback level.
    pub lower: Option<f64>,
    /// Upper confidence bound at the promotion level.
    pub upper: Option<f64>,
    /// The absolute tolerance (canary minus stable).
    pub threshold: f64,
    /// Canary over stable (when a relative tolerance is set).
    #[serde(default)]
    pub ratio: Option<f64>,
    /// Upper confidence bound of canary over stable at the promotion level.
    #[serde(default)]
    pub ratio_upper: Option<f64>,
    /// The relative tolerance (canary at most this times stable), when set.
    #[serde(default)]
    pub ratio_threshold: Option<f64>,
    /// The design effect applied to the variances (1 = requests look independent).
    #[serde(default)]
    pub design_effect: Option<f64>,
    pub verdict: SignalVerdict,
    /// Anything else worth saying, in words.
    pub note: String,
    /// Judged and reported, but never holds or rolls back (`dry_run` in the rollout config).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
}

pub(super) fn finite(v: f64) -> Option<f64> {
    v.is_finite().then_some(v)
}

impl SignalReport {
    pub(super) fn new(
        signal: Signal,
        test: &str,
        n_stable: u64,
        n_canary: u64,
        threshold: f64,
    ) -> SignalReport {
        SignalReport {
            signal,
            test: test.to_string(),
            n_stable,
            n_canary,
            stable: None,
            canary: None,
            estimate: None,
            statistic: None,
            p_value: None,
            lower: None,
            upper: None,
            threshold,
            ratio: None,
            ratio_upper: None,
            ratio_threshold: None,
            design_effect: None,
            verdict: SignalVerdict::Inconclusive,
            note: String::new(),
            dry_run: false,
        }
    }
}

impl fmt::Display for SignalReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let u = self.signal.unit();
        let show = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| u.show(v));
        write!(
            f,
            "{:<13} {:<8} {}; n stable {} canary {}",
            self.signal.as_str(),
            self.verdict.to_string(),
            self.test,
            self.n_stable,
            self.n_canary
        )?;
        if self.stable.is_some() || self.canary.is_some() {
            write!(
                f,
                "; stable {} canary {}",
                show(self.stable),
                show(self.canary)
            )?;
        }
        if let Some(e) = self.estimate {
            write!(f, "; estimate {}", u.show(e))?;
        }
        if let Some(s) = self.statistic {
            write!(f, "; statistic {s:.3}")?;
        }
        if let Some(p) = self.p_value {
            write!(f, "; p {p:.3e}")?;
        }
        if self.lower.is_some() || self.upper.is_some() {
            write!(f, "; bounds [{}, {}]", show(self.lower), show(self.upper))?;
        }
        write!(f, "; threshold {}", u.show(self.threshold))?;
        if let Some(r) = self.ratio_threshold {
            let show = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.3}"));
            write!(
                f,
                "; ratio {} (upper {}) against {r}",
                show(self.ratio),
                show(self.ratio_upper)
            )?;
        }
        if let Some(d) = self.design_effect.filter(|d| *d > 1.0) {
            write!(f, "; design effect {d:.2}")?;
        }
        if !self.note.is_empty() {
            write!(f, "; {}", self.note)?;
        }
        if self.dry_run {
            f.write_str("; dry run: never holds or rolls back")?;
        }
        Ok(())
    }
}

/// The judge's finding over one window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Judgement {
    pub verdict: Verdict,
    pub reason: Reason,
    /// 1-based index of the step window in the rollout (its share of the error budget).
    pub window: u32,
    /// One-sided level of each signal's rollback test in this window.
    pub rollback_level: f64,
    /// One-sided level of each signal's promotion bound.
    pub promote_level: f64,
    /// Signals the rollback budget is split over.
    pub rollback_signals: u32,
    pub signals: Vec<SignalReport>,
}

impl Judgement {
    /// The report of one signal, if computed.
    pub fn signal(&self, signal: Signal) -> Option<&SignalReport> {
        self.signals.iter().find(|s| s.signal == signal)
    }
}

impl fmt::Display for Judgement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = match self.verdict {
            Verdict::Promote => "promote",
            Verdict::Rollback => "rollback",
            Verdict::Hold => "hold",
        };
        write!(f, "{verdict} ({})", self.reason)?;
        if self.rollback_signals > 0 {
            write!(
                f,
                " in step window {} (confidence sequences: rollback level {:.1e} per signal over {} signals, promotion level {:.1e})",
                self.window, self.rollback_level, self.rollback_signals, self.promote_level
            )?;
        }
        for s in &self.signals {
            write!(f, "\n  {s}")?;
        }
        Ok(())
    }
}
