//! Fault injection: what the server does wrong on purpose, decided per request.
//!
//! The decision is pure: randomness comes in as uniform draws, so tests choose the outcome.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::classifier::Sentiment;

/// The faults in force. Set at start from flags and changed at runtime with `POST /fault`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FaultConfig {
    /// Fraction (0..=1) of `/predict` requests answered with HTTP 500.
    pub error_rate: f64,
    /// Latency added to every `/predict` request, in milliseconds.
    pub latency_ms: u64,
    /// Fraction (0..=1) of predictions replaced by `skew_class`.
    pub skew: f64,
    /// The class that skewed predictions are forced to.
    pub skew_class: Sentiment,
    /// Number of upcoming requests served "cold" (with `cold_latency_ms` added).
    pub cold_requests: u64,
    /// Extra latency of a cold request, in milliseconds.
    pub cold_latency_ms: u64,
    /// Exit the process on this upcoming request (1 = the next one), without answering it.
    pub crash_after: Option<u64>,
    /// Make `/healthz` answer 503.
    pub health_failing: bool,
    /// Make `/metrics` answer 500 (a broken exporter while requests are still served).
    pub metrics_failing: bool,
    /// Make `/metrics` stream junk series without end (a hostile or runaway exporter).
    pub metrics_flood: bool,
}

impl Default for FaultConfig {
    fn default() -> Self {
        Self {
            error_rate: 0.0,
            latency_ms: 0,
            skew: 0.0,
            skew_class: Sentiment::Positive,
            cold_requests: 0,
            cold_latency_ms: 200,
            crash_after: None,
            health_failing: false,
            metrics_failing: false,
            metrics_flood: false,
        }
    }
}

/// A fault setting out of range.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FaultError {
    /// A probability outside 0..=1.
    #[error("`{field}` is {value}: it is a fraction of requests, give a number from 0 to 1")]
    NotAFraction { field: &'static str, value: f64 },
    /// `crash_after` of zero would mean "crash before the request that already happened".
    #[error("`crash_after` is 0: give 1 to crash on the next request, or use `\"crash\": true`")]
    CrashAfterZero,
}

impl FaultConfig {
    pub fn validate(&self) -> Result<(), FaultError> {
        for (field, value) in [("error_rate", self.error_rate), ("skew", self.skew)] {
            if !(0.0..=1.0).contains(&value) {
                return Err(FaultError::NotAFraction { field, value });
            }
        }
        if self.crash_after == Some(0) {
            return Err(FaultError::CrashAfterZero);
        }
        Ok(())
    }
}

/// A partial change of the faults (`POST /fault` body): absent fields keep their value.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultUpdate {
    pub error_rate: Option<f64>,
    pub latency_ms: Option<u64>,
    pub skew: Option<f64>,
    pub skew_class: Option<Sentiment>,
    pub cold_requests: Option<u64>,
    pub cold_latency_ms: Option<u64>,
    /// Crash on the N-th upcoming request (cancel with `clear_crash`).
    pub crash_after: Option<u64>,
    /// Cancel a pending `crash_after`.
    pub clear_crash: Option<bool>,
    pub health_failing: Option<bool>,
    pub metrics_failing: Option<bool>,
    pub metrics_flood: Option<bool>,
    /// Exit the process right after answering this request.
    pub crash: Option<bool>,
    /// Reset every fault to its default before applying the other fields.
    pub reset: Option<bool>,
}

impl FaultUpdate {
    /// The config after this update, validated; the old config is untouched on error.
    pub fn apply_to(&self, current: &FaultConfig) -> Result<FaultConfig, FaultError> {
        let mut next = if self.reset == Some(true) {
            FaultConfig::default()
        } else {
            current.clone()
        };
        if let Some(v) = self.error_rate {
            next.error_rate = v;
        }
        if let Some(v) = self.latency_ms {
            next.latency_ms = v;
        }
        if let Some(v) = self.skew {
            next.skew = v;
        }
        if let Some(v) = self.skew_class {
            next.skew_class = v;
        }
        if let Some(v) = self.cold_requests {
            next.cold_requests = v;
        }
        if let Some(v) = self.cold_latency_ms {
            next.cold_latency_ms = v;
        }
        if self.clear_crash == Some(true) {
            next.crash_after = None;
        }
        if let Some(v) = self.crash_after {
            next.crash_after = Some(v);
        }
        if let Some(v) = self.health_failing {
            next.health_failing = v;
        }
        if let Some(v) = self.metrics_failing {
            next.metrics_failing = v;
        }
        if let Some(v) = self.metrics_flood {
            next.metrics_flood = v;
        }
        next.validate()?;
        Ok(next)
    }
}

/// Uniform random draws in 0..1 for one request.
#[derive(Clone, Copy, Debug)]
pub struct Draws {
    pub error: f64,
    pub skew: f64,
}

/// What to do with one `/predict` request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestPlan {
    /// Exit the process instead of answering.
    pub crash: bool,
    /// Sleep this long before answering.
    pub delay: Duration,
    /// Answer HTTP 500.
    pub fail: bool,
    /// Replace the model's prediction with this class.
    pub force_class: Option<Sentiment>,
}

/// The faults in force plus the counters that run down with each request.
#[derive(Clone, Debug, Default)]
pub struct FaultState {
    config: FaultConfig,
}

impl FaultState {
    pub fn new(config: FaultConfig) -> Result<Self, FaultError> {
        config.validate()?;
        Ok(Self { config })
    }

    pub fn config(&self) -> &FaultConfig {
        &self.config
    }

    pub fn update(&mut self, update: &FaultUpdate) -> Result<&FaultConfig, FaultError> {
        self.config = update.apply_to(&self.config)?;
        Ok(&self.config)
    }

    pub fn health_failing(&self) -> bool {
        self.config.health_failing
    }

    pub fn metrics_failing(&self) -> bool {
        self.config.metrics_failing
    }

    pub fn metrics_flood(&self) -> bool {
        self.config.metrics_flood
    }

    /// Decide the fate of the next request and run the counters down.
    pub fn next_request(&mut self, draws: Draws) -> RequestPlan {
        let c = &mut self.config;
        let crash = match c.crash_after {
            Some(1) => true,
            Some(n) => {
                c.crash_after = Some(n - 1);
                false
            }
            None => false,
        };
        let mut delay = Duration::from_millis(c.latency_ms);
        if c.cold_requests > 0 {
            c.cold_requests -= 1;
            delay += Duration::from_millis(c.cold_latency_ms);
        }
        RequestPlan {
            crash,
            delay,
            fail: draws.error < c.error_rate,
            force_class: (draws.skew < c.skew).then_some(c.skew_class),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CALM: Draws = Draws {
        error: 0.99,
        skew: 0.99,
    };

    #[test]
    fn no_faults_by_default() {
        let mut s = FaultState::default();
        let plan = s.next_request(Draws {
            error: 0.0,
            skew: 0.0,
        });
        assert_eq!(
            plan,
            RequestPlan {
                crash: false,
                delay: Duration::ZERO,
                fail: false,
                force_class: None
            }
        );
        assert!(!s.health_failing());
    }

    #[test]
    fn error_rate_and_skew_follow_the_draws() {
        let mut s = FaultState::new(FaultConfig {
            error_rate: 0.3,
            skew: 0.5,
            skew_class: Sentiment::Negative,
            ..FaultConfig::default()
        })
        .unwrap();
        let hit = s.next_request(Draws {
            error: 0.29,
            skew: 0.49,
        });
        assert!(hit.fail);
        assert_eq!(hit.force_class, Some(Sentiment::Negative));
        let miss = s.next_request(Draws {
            error: 0.3,
            skew: 0.5,
        });
        assert!(!miss.fail);
        assert_eq!(miss.force_class, None);
    }

    #[test]
    fn cold_requests_run_down() {
        let mut s = FaultState::new(FaultConfig {
            latency_ms: 5,
            cold_requests: 2,
            cold_latency_ms: 100,
            ..FaultConfig::default()
        })
        .unwrap();
        let delays: Vec<_> = (0..4).map(|_| s.next_request(CALM).delay).collect();
        assert_eq!(
            delays,
            [105, 105, 5, 5].map(Duration::from_millis).to_vec(),
            "two cold requests, then only the added latency"
        );
    }

    #[test]
    fn crash_after_counts_requests() {
        let mut s = FaultState::new(FaultConfig {
            crash_after: Some(3),
            ..FaultConfig::default()
        })
        .unwrap();
        let crashes: Vec<_> = (0..3).map(|_| s.next_request(CALM).crash).collect();
        assert_eq!(crashes, [false, false, true]);
    }

    #[test]
    fn updates_are_partial_and_validated() {
        let mut s = FaultState::new(FaultConfig {
            latency_ms: 7,
            ..FaultConfig::default()
        })
        .unwrap();
        let cfg = s
            .update(&FaultUpdate {
                error_rate: Some(0.25),
                health_failing: Some(true),
                metrics_failing: Some(true),
                metrics_flood: Some(true),
                ..FaultUpdate::default()
            })
            .unwrap()
            .clone();
        assert!((cfg.error_rate - 0.25).abs() < f64::EPSILON);
        assert_eq!(cfg.latency_ms, 7, "untouched field keeps its value");
        assert!(s.health_failing());
        assert!(s.metrics_failing());
        assert!(s.metrics_flood());

        let err = s
            .update(&FaultUpdate {
                error_rate: Some(1.5),
                latency_ms: Some(1),
                ..FaultUpdate::default()
            })
            .unwrap_err();
        assert_eq!(
            err,
            FaultError::NotAFraction {
                field: "error_rate",
                value: 1.5
            }
        );
        assert_eq!(
            s.config().latency_ms,
            7,
            "a rejected update changes nothing"
        );

        s.update(&FaultUpdate {
            reset: Some(true),
            ..FaultUpdate::default()
        })
        .unwrap();
        assert_eq!(s.config(), &FaultConfig::default());
    }

    #[test]
    fn update_parses_from_json() {
        let u: FaultUpdate =
            serde_json::from_str(r#"{"error_rate":0.3,"skew_class":"negative"}"#).unwrap();
        assert_eq!(u.error_rate, Some(0.3));
        assert_eq!(u.skew_class, Some(Sentiment::Negative));
        assert!(serde_json::from_str::<FaultUpdate>(r#"{"eror_rate":0.3}"#).is_err());
        assert!(FaultState::new(FaultConfig {
            crash_after: Some(0),
            ..FaultConfig::default()
        })
        .is_err());
    }
}
