//! What backends report about themselves: their Prometheus text exposition parsed into a
//! [`Snapshot`] of the series named in `[services.upstream]`, deltas between two snapshots of
//! one backend (surviving counter resets when a backend restarts), and sums over a group.
//!
//! A series that is not in the exposition is [`Series::Missing`], never zero: the judge must
//! tell "no errors" from "no error counter".

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

mod exposition;
mod histogram;
#[cfg(test)]
mod tests;

pub use exposition::{parse_exposition, UpstreamError};
pub use histogram::Histogram;

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
    /// Series that were present but malformed (reported as missing), for the operator.
    pub problems: Vec<String>,
}

impl Default for Snapshot {
    fn default() -> Self {
        Snapshot::missing()
    }
}

/// Increases over a time span: one backend between two snapshots, or a whole group.
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
    /// Some counter went backwards: the backend restarted and the window counts from zero.
    pub reset: bool,
}

fn counter_delta(now: &Series<f64>, earlier: &Series<f64>, reset: &mut bool) -> Series<u64> {
    match (now, earlier) {
        (Series::Missing, _) => Series::Missing,
        // First sight: no baseline, the increase is counted from here.
        (Series::Present(_), Series::Missing) => Series::Present(0),
        (Series::Present(n), Series::Present(e)) if n < e => {
            *reset = true;
            Series::Present(n.round() as u64)
        }
        (Series::Present(n), Series::Present(e)) => Series::Present((n - e).round() as u64),
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
            problems: Vec::new(),
        }
    }

    /// Increase from `earlier` to `self`. A counter that went backwards means the backend
    /// restarted: its current value is the increase. A series seen for the first time has
    /// increased by zero (there is no baseline); a series missing now is missing.
    pub fn delta_since(&self, earlier: &Snapshot) -> Delta {
        let mut reset = false;
        let requests = counter_delta(&self.requests, &earlier.requests, &mut reset);
        let errors = counter_delta(&self.errors, &earlier.errors, &mut reset);
        let latency = match (&self.latency, &earlier.latency) {
            (Series::Missing, _) => Series::Missing,
            (Series::Present(n), Series::Missing) => {
                Series::Present(Histogram::empty(n.bounds.clone()))
            }
            (Series::Present(n), Series::Present(e)) => {
                Series::Present(n.minus(e).unwrap_or_else(|| {
                    reset = true;
                    n.clone()
                }))
            }
        };
        let predictions = match (&self.predictions, &earlier.predictions) {
            (Series::Missing, _) => Series::Missing,
            (Series::Present(n), Series::Missing) => {
                Series::Present(n.keys().map(|k| (k.clone(), 0)).collect())
            }
            (Series::Present(n), Series::Present(e)) => {
                let went_back = e.iter().any(|(k, v)| n.get(k).is_none_or(|nv| nv < v));
                if went_back {
                    reset = true;
                }
                Series::Present(
                    n.iter()
                        .map(|(k, v)| {
                            let base = if went_back {
                                0.0
                            } else {
                                e.get(k).copied().unwrap_or(0.0)
                            };
                            (k.clone(), (v - base).round() as u64)
                        })
                        .collect(),
                )
            }
        };
        Delta {
            window: Window {
                requests,
                errors,
                latency,
                predictions,
            },
            reset,
        }
    }

    /// Moves the baseline forward to `newer`, series by series, keeping the old value of a
    /// series that `newer` lacks: a scrape that fails once does not lose the increase, the
    /// next good scrape covers both polls.
    pub fn advance(&mut self, newer: &Snapshot) {
        fn keep<T: Clone>(old: &mut Series<T>, new: &Series<T>) {
            if let Series::Present(v) = new {
                *old = Series::Present(v.clone());
            }
        }
        keep(&mut self.requests, &newer.requests);
        keep(&mut self.errors, &newer.errors);
        keep(&mut self.latency, &newer.latency);
        keep(&mut self.predictions, &newer.predictions);
        self.problems.clone_from(&newer.problems);
    }
}

fn add_counts(a: &BTreeMap<String, u64>, b: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    let mut out = a.clone();
    for (k, v) in b {
        *out.entry(k.clone()).or_default() += v;
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
        acc(&mut self.requests, &other.requests, |a, b| a + b);
        acc(&mut self.errors, &other.errors, |a, b| a + b);
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
        strict(&mut requests, &w.requests, |a, b| a + b);
        strict(&mut errors, &w.errors, |a, b| a + b);
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
