//! What backends report about themselves: their Prometheus text exposition parsed into a
//! [`Snapshot`] of the series selected in `[services.upstream]`, deltas between two snapshots of
//! one backend (surviving backend restarts), and sums over a group.
//!
//! A series that is not in the exposition is [`Series::Missing`], never zero: the judge must
//! tell "no errors" from "no error counter". A series whose metric is there but none of whose
//! label sets match the selector is zero (a `5..` status that never happened).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::UpstreamConfig;

mod exposition;
mod histogram;
pub mod preset;
mod selector;
#[cfg(test)]
mod tests;

pub(crate) use exposition::read_sample;
pub use exposition::{parse_exposition, MAX_COUNT};
pub use histogram::Histogram;
pub use selector::{valid_label_name, MatchOp, Matcher, Selector, SelectorError};

/// Why a backend's metrics, or one of its series, could not be used: the `reason` label of
/// `canary_upstream_scrape_errors_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScrapeReason {
    /// No connection to the metrics endpoint (unreachable, reset while connecting).
    Connect,
    /// The backend refused the connection: nothing listens on the metrics port.
    Refused,
    /// No complete answer within the poll's time budget.
    Timeout,
    /// Connected, but the connection was closed or reset before an answer.
    NoAnswer,
    /// The scrape could not be made for a reason of this node (out of file descriptors,
    /// buffers, memory or local ports): it says nothing about the backend.
    Local,
    /// The endpoint answered with a status other than 2xx or 3xx.
    HttpStatus,
    /// The endpoint answered with a redirect (never followed).
    Redirect,
    /// The body is larger than `upstream.max_scrape_bytes`.
    TooLarge,
    /// The body could not be read (connection reset, bad encoding, not UTF-8).
    Body,
    /// The body is not a Prometheus text exposition.
    Format,
    /// More series than `upstream.max_series`.
    TooManySeries,
    /// More prediction classes than `upstream.max_prediction_classes`.
    TooManyClasses,
    /// A count that is not a whole number from 0 to 2^53.
    NotACount,
    /// A series that cannot be read as configured (a histogram without `+Inf`, ...).
    Malformed,
}

impl ScrapeReason {
    pub const ALL: [ScrapeReason; 14] = [
        ScrapeReason::Connect,
        ScrapeReason::Refused,
        ScrapeReason::Timeout,
        ScrapeReason::NoAnswer,
        ScrapeReason::Local,
        ScrapeReason::HttpStatus,
        ScrapeReason::Redirect,
        ScrapeReason::TooLarge,
        ScrapeReason::Body,
        ScrapeReason::Format,
        ScrapeReason::TooManySeries,
        ScrapeReason::TooManyClasses,
        ScrapeReason::NotACount,
        ScrapeReason::Malformed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ScrapeReason::Connect => "connect",
            ScrapeReason::Refused => "refused",
            ScrapeReason::Timeout => "timeout",
            ScrapeReason::NoAnswer => "no_answer",
            ScrapeReason::Local => "local",
            ScrapeReason::HttpStatus => "http_status",
            ScrapeReason::Redirect => "redirect",
            ScrapeReason::TooLarge => "too_large",
            ScrapeReason::Body => "body",
            ScrapeReason::Format => "format",
            ScrapeReason::TooManySeries => "too_many_series",
            ScrapeReason::TooManyClasses => "too_many_classes",
            ScrapeReason::NotACount => "not_a_count",
            ScrapeReason::Malformed => "malformed",
        }
    }
}

/// A failed scrape, or one series of a backend that could not be used, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ScrapeProblem {
    pub reason: ScrapeReason,
    /// For the operator: what was wrong and, where it helps, what to change.
    pub message: String,
}

/// A value that a backend reported, or the explicit fact that it did not.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Series<T> {
    Present(T),
    Missing,
}

impl<T> Series<T> {
    pub fn as_ref(&self) -> Series<&T> {
        match self {
            Series::Present(v) => Series::Present(v),
            Series::Missing => Series::Missing,
        }
    }

    pub fn present(&self) -> Option<&T> {
        match self {
            Series::Present(v) => Some(v),
            Series::Missing => None,
        }
    }

    pub fn is_missing(&self) -> bool {
        matches!(self, Series::Missing)
    }
}

impl<T> From<Option<T>> for Series<T> {
    fn from(v: Option<T>) -> Self {
        v.map_or(Series::Missing, Series::Present)
    }
}

/// Everything the judge reads from one backend's exposition at one instant (cumulative
/// counters as reported).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub requests: Series<f64>,
    pub errors: Series<f64>,
    pub latency: Series<Histogram>,
    /// Predictions per class (value of the configured label).
    pub predictions: Series<BTreeMap<String, f64>>,
    /// Values of `upstream.version_label` on the selected series (the model version the
    /// backend says it serves), sorted.
    #[serde(default)]
    pub versions: Vec<String>,
    /// Why the scrape failed, or which series were present but unusable (reported as missing).
    pub problems: Vec<ScrapeProblem>,
}

impl Default for Snapshot {
    fn default() -> Self {
        Snapshot::missing()
    }
}

/// Increases over a time span: one backend between two snapshots, or a whole group. Counts
/// saturate at 2^53 ([`MAX_COUNT`]), far beyond any real window, so that sums of them never
/// overflow.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Window {
    pub requests: Series<u64>,
    pub errors: Series<u64>,
    pub latency: Series<Histogram>,
    pub predictions: Series<BTreeMap<String, u64>>,
}

impl Default for Window {
    fn default() -> Self {
        Window::missing()
    }
}

/// A backend's increase between two snapshots.
#[derive(Clone, Debug, PartialEq)]
pub struct Delta {
    pub window: Window,
    /// Some series went backwards: the backend restarted and the window counts from zero.
    pub reset: bool,
}

/// The largest count a [`Window`] holds.
const MAX_WINDOW_COUNT: u64 = MAX_COUNT as u64;

/// `a + b`, saturating at [`MAX_WINDOW_COUNT`].
fn add(a: u64, b: u64) -> u64 {
    a.saturating_add(b).min(MAX_WINDOW_COUNT)
}

/// Whole count of a difference of two counts (both at most 2^53, so exact).
fn whole(v: f64) -> u64 {
    (v.round().max(0.0) as u64).min(MAX_WINDOW_COUNT)
}

fn counter_delta(now: &Series<f64>, base: &Series<f64>) -> Series<u64> {
    match (now, base) {
        (Series::Missing, _) => Series::Missing,
        // First sight: no baseline, the increase is counted from here.
        (Series::Present(_), Series::Missing) => Series::Present(0),
        (Series::Present(n), Series::Present(b)) => Series::Present(whole(n - b)),
    }
}

impl Snapshot {
    /// A snapshot with every series missing (a failed scrape).
    pub fn missing() -> Snapshot {
        Snapshot {
            requests: Series::Missing,
            errors: Series::Missing,
            latency: Series::Missing,
            predictions: Series::Missing,
            versions: Vec::new(),
            problems: Vec::new(),
        }
    }

    /// Every series at zero: the baseline of a backend that just restarted.
    fn zero() -> Snapshot {
        Snapshot {
            requests: Series::Present(0.0),
            errors: Series::Present(0.0),
            latency: Series::Present(Histogram::empty(Vec::new())),
            predictions: Series::Present(BTreeMap::new()),
            versions: Vec::new(),
            problems: Vec::new(),
        }
    }

    /// Whether some series present in both went backwards since `earlier` (a counter, a
    /// bucket, a class that decreased or vanished, a histogram whose buckets changed): the
    /// backend restarted.
    pub fn went_backwards_from(&self, earlier: &Snapshot) -> bool {
        let counter = |now: &Series<f64>, then: &Series<f64>| matches!((now, then), (Series::Present(n), Series::Present(t)) if n < t);
        let latency = match (&self.latency, &earlier.latency) {
            (Series::Present(n), Series::Present(t)) => n.went_backwards_from(t),
            _ => false,
        };
        let predictions = match (&self.predictions, &earlier.predictions) {
            (Series::Present(n), Series::Present(t)) => t
                .iter()
                .any(|(class, then)| n.get(class).is_none_or(|now| now < then)),
            _ => false,
        };
        counter(&self.requests, &earlier.requests)
            || counter(&self.errors, &earlier.errors)
            || latency
            || predictions
    }

    /// Increase from `earlier` to `self`. If any series went backwards the backend restarted,
    /// and the current value of every series is its increase (a per-series rule would miss
    /// the errors of a crash-looping backend whose error count happens to end higher). A
    /// series seen for the first time has increased by zero (there is no baseline); a series
    /// missing now is missing.
    pub fn delta_since(&self, earlier: &Snapshot) -> Delta {
        let reset = self.went_backwards_from(earlier);
        let zero;
        let base = if reset {
            zero = Snapshot::zero();
            &zero
        } else {
            earlier
        };
        let latency = match (&self.latency, &base.latency) {
            (Series::Missing, _) => Series::Missing,
            (Series::Present(n), Series::Missing) => {
                Series::Present(Histogram::empty(n.bounds.clone()))
            }
            // Cannot fail: a histogram that went backwards made this a reset, whose baseline
            // is zero.
            (Series::Present(n), Series::Present(b)) => {
                Series::Present(n.minus(b).unwrap_or_else(|| n.clone()))
            }
        };
        let predictions = match (&self.predictions, &base.predictions) {
            (Series::Missing, _) => Series::Missing,
            (Series::Present(n), Series::Missing) => {
                Series::Present(n.keys().map(|k| (k.clone(), 0)).collect())
            }
            (Series::Present(n), Series::Present(b)) => Series::Present(
                n.iter()
                    .map(|(k, v)| (k.clone(), whole(v - b.get(k).copied().unwrap_or(0.0))))
                    .collect(),
            ),
        };
        Delta {
            window: Window {
                requests: counter_delta(&self.requests, &base.requests),
                errors: counter_delta(&self.errors, &base.errors),
                latency,
                predictions,
            },
            reset,
        }
    }

    /// Moves the baseline forward to `newer`, series by series, keeping the old value of a
    /// series that `newer` lacks: a scrape that fails once does not lose the increase, the
    /// next good scrape covers both polls. After a restart (`reset`, from
    /// [`Snapshot::delta_since`]) a series that `newer` lacks starts again from zero.
    pub fn advance(&mut self, newer: &Snapshot, reset: bool) {
        fn keep<T: Clone>(old: &mut Series<T>, new: &Series<T>) {
            if let Series::Present(v) = new {
                *old = Series::Present(v.clone());
            }
        }
        if reset {
            *self = Snapshot::zero();
        }
        keep(&mut self.requests, &newer.requests);
        keep(&mut self.errors, &newer.errors);
        keep(&mut self.latency, &newer.latency);
        keep(&mut self.predictions, &newer.predictions);
        self.versions.clone_from(&newer.versions);
        self.problems.clone_from(&newer.problems);
    }
}

/// The snapshot of one scrape: the parsed exposition, or every series missing with the reason
/// the scrape failed.
pub fn snapshot_of(scrape: &Result<String, ScrapeProblem>, series: &UpstreamConfig) -> Snapshot {
    let parsed = match scrape {
        Ok(text) => parse_exposition(text, series),
        Err(problem) => Err(problem.clone()),
    };
    parsed.unwrap_or_else(|problem| Snapshot {
        problems: vec![problem],
        ..Snapshot::missing()
    })
}

fn add_counts(a: &BTreeMap<String, u64>, b: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    let mut out = a.clone();
    for (k, v) in b {
        let total = out.entry(k.clone()).or_default();
        *total = add(*total, *v);
    }
    out
}

impl Window {
    /// A window with every series missing.
    pub fn missing() -> Window {
        Window {
            requests: Series::Missing,
            errors: Series::Missing,
            latency: Series::Missing,
            predictions: Series::Missing,
        }
    }

    /// A window with every series present and zero (no traffic yet).
    pub fn zero(bounds: Vec<f64>) -> Window {
        Window {
            requests: Series::Present(0),
            errors: Series::Present(0),
            latency: Series::Present(Histogram::empty(bounds)),
            predictions: Series::Present(BTreeMap::new()),
        }
    }

    /// Adds `other` over time: present series add up; a series missing in `other` leaves
    /// this one unchanged (the next delta covers the gap), and one missing here takes
    /// `other`'s value.
    pub fn accumulate(&mut self, other: &Window) {
        fn acc<T: Clone>(mine: &mut Series<T>, theirs: &Series<T>, add: impl Fn(&T, &T) -> T) {
            match (&*mine, theirs) {
                (_, Series::Missing) => {}
                (Series::Missing, Series::Present(t)) => *mine = Series::Present(t.clone()),
                (Series::Present(m), Series::Present(t)) => *mine = Series::Present(add(m, t)),
            }
        }
        acc(&mut self.requests, &other.requests, |a, b| add(*a, *b));
        acc(&mut self.errors, &other.errors, |a, b| add(*a, *b));
        acc(&mut self.latency, &other.latency, Histogram::plus);
        acc(&mut self.predictions, &other.predictions, add_counts);
    }

    /// Names of the missing series (`requests`, `errors`, `latency`, `predictions`).
    pub fn missing_series(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.requests.is_missing() {
            out.push("requests");
        }
        if self.errors.is_missing() {
            out.push("errors");
        }
        if self.latency.is_missing() {
            out.push("latency");
        }
        if self.predictions.is_missing() {
            out.push("predictions");
        }
        out
    }
}

/// Sums the windows of a group's backends. Strict: a series missing on any backend is
/// missing for the group, since a backend that stops reporting may be the failing one.
/// Pass only the backends that are in service (health checks passing).
pub fn aggregate<'a>(windows: impl IntoIterator<Item = &'a Window>) -> Window {
    fn strict<T: Clone>(acc: &mut Option<Series<T>>, next: &Series<T>, add: impl Fn(&T, &T) -> T) {
        *acc = Some(match (acc.take(), next) {
            (None, n) => n.clone(),
            (Some(Series::Present(a)), Series::Present(b)) => Series::Present(add(&a, b)),
            _ => Series::Missing,
        });
    }
    let mut requests = None;
    let mut errors = None;
    let mut latency = None;
    let mut predictions = None;
    for w in windows {
        strict(&mut requests, &w.requests, |a, b| add(*a, *b));
        strict(&mut errors, &w.errors, |a, b| add(*a, *b));
        strict(&mut latency, &w.latency, Histogram::plus);
        strict(&mut predictions, &w.predictions, add_counts);
    }
    Window {
        requests: requests.unwrap_or(Series::Missing),
        errors: errors.unwrap_or(Series::Missing),
        latency: latency.unwrap_or(Series::Missing),
        predictions: predictions.unwrap_or(Series::Missing),
    }
}
