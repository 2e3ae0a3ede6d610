//! What backends report about themselves: their Prometheus text exposition parsed into a
//! [`Snapshot`] of the series named in `[services.upstream]`, deltas between two snapshots of
//! one backend (surviving counter resets when a backend restarts), and sums over a group.
//!
//! A series that is not in the exposition is [`Series::Missing`], never zero: the judge must
//! tell "no errors" from "no error counter".

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::UpstreamConfig;

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

/// A latency histogram in Prometheus form: cumulative counts at finite upper bounds
/// (seconds, increasing); the `+Inf` bucket is `count`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Histogram {
    pub bounds: Vec<f64>,
    pub cumulative: Vec<f64>,
    pub count: f64,
    /// Sum of observations, seconds.
    pub sum: f64,
}

impl Histogram {
    /// An empty histogram with these bucket bounds.
    pub fn empty(bounds: Vec<f64>) -> Histogram {
        let n = bounds.len();
        Histogram {
            bounds,
            cumulative: vec![0.0; n],
            count: 0.0,
            sum: 0.0,
        }
    }

    /// The value at (fractional, 0-based) rank `rank` of a histogram by linear interpolation in
    /// its bucket, as Prometheus' `histogram_quantile` does. Ranks in the `+Inf` bucket are
    /// unbounded above: `None`.
    pub fn value_at_rank(&self, rank: f64) -> Option<f64> {
        let rank = rank.max(0.0);
        let mut lo = 0.0;
        let mut below = 0.0;
        for (&hi, &cum) in self.bounds.iter().zip(&self.cumulative) {
            if cum >= rank && cum > below {
                return Some(lo + (hi - lo) * (rank - below) / (cum - below));
            }
            if cum >= rank {
                return Some(lo);
            }
            lo = hi;
            below = cum;
        }
        None
    }

    /// Counts per bucket (not cumulative); the last entry is the `+Inf` bucket.
    pub fn bucket_counts(&self) -> Vec<f64> {
        let mut out = Vec::with_capacity(self.bounds.len() + 1);
        let mut prev = 0.0;
        for &c in self.cumulative.iter().chain(std::iter::once(&self.count)) {
            out.push((c - prev).max(0.0));
            prev = c;
        }
        out
    }

    /// Restricts to the bounds shared with `other` (cumulative counts at a shared bound stay
    /// exact), so histograms with different layouts can be added.
    fn restricted_to(&self, bounds: &[f64]) -> Histogram {
        let mut out = Histogram::empty(Vec::new());
        for (b, c) in self.bounds.iter().zip(&self.cumulative) {
            if bounds.contains(b) {
                out.bounds.push(*b);
                out.cumulative.push(*c);
            }
        }
        out.count = self.count;
        out.sum = self.sum;
        out
    }

    /// Sum of two histograms over their shared bounds.
    #[must_use]
    pub fn plus(&self, other: &Histogram) -> Histogram {
        let shared: Vec<f64> = self
            .bounds
            .iter()
            .copied()
            .filter(|b| other.bounds.contains(b))
            .collect();
        let a = self.restricted_to(&shared);
        let b = other.restricted_to(&shared);
        Histogram {
            cumulative: a
                .cumulative
                .iter()
                .zip(&b.cumulative)
                .map(|(x, y)| x + y)
                .collect(),
            bounds: shared,
            count: a.count + b.count,
            sum: a.sum + b.sum,
        }
    }

    /// `self - earlier`, or `None` when the histogram went backwards or changed layout
    /// (the backend restarted: the counts start again from zero).
    fn minus(&self, earlier: &Histogram) -> Option<Histogram> {
        if self.bounds != earlier.bounds || self.count < earlier.count {
            return None;
        }
        let mut cumulative = Vec::with_capacity(self.cumulative.len());
        for (now, before) in self.cumulative.iter().zip(&earlier.cumulative) {
            if now < before {
                return None;
            }
            cumulative.push(now - before);
        }
        Some(Histogram {
            bounds: self.bounds.clone(),
            cumulative,
            count: self.count - earlier.count,
            sum: (self.sum - earlier.sum).max(0.0),
        })
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

/// Why an exposition could not be read at all.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The text is not a Prometheus text exposition.
    #[error(
        "metrics are not in the Prometheus text format ({0}); check the backend's metrics_url"
    )]
    Format(#[source] std::io::Error),
}

fn sum_counter(samples: &[prometheus_parse::Sample], name: &str) -> Option<f64> {
    let mut total = None;
    for s in samples.iter().filter(|s| s.metric == name) {
        let (prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v)) = s.value
        else {
            continue;
        };
        if v.is_finite() {
            *total.get_or_insert(0.0) += v;
        }
    }
    total
}

/// Cumulative `(le, count)` pairs of one labelled histogram, merged over label sets.
fn histogram_buckets(samples: &[prometheus_parse::Sample], name: &str) -> Vec<Vec<(f64, f64)>> {
    let typed: Vec<Vec<(f64, f64)>> = samples
        .iter()
        .filter(|s| s.metric == name)
        .filter_map(|s| match &s.value {
            prometheus_parse::Value::Histogram(h) => {
                Some(h.iter().map(|b| (b.less_than, b.count)).collect())
            }
            _ => None,
        })
        .collect();
    if !typed.is_empty() {
        return typed;
    }
    // Without a `# TYPE` line the buckets arrive as plain samples with an `le` label.
    let bucket_name = format!("{name}_bucket");
    let mut by_labels: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for s in samples.iter().filter(|s| s.metric == bucket_name) {
        let (prometheus_parse::Value::Untyped(v) | prometheus_parse::Value::Counter(v)) = s.value
        else {
            continue;
        };
        let Some(le) = s.labels.get("le").and_then(parse_float) else {
            continue;
        };
        let mut rest: Vec<(&String, &String)> =
            s.labels.iter().filter(|(k, _)| *k != "le").collect();
        rest.sort();
        by_labels
            .entry(format!("{rest:?}"))
            .or_default()
            .push((le, v));
    }
    by_labels.into_values().collect()
}

fn parse_float(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" | "inf" | "+inf" => Some(f64::INFINITY),
        _ => s.parse().ok(),
    }
}

fn build_histogram(
    samples: &[prometheus_parse::Sample],
    name: &str,
    problems: &mut Vec<String>,
) -> Option<Histogram> {
    let sets = histogram_buckets(samples, name);
    if sets.is_empty() {
        return None;
    }
    let mut total: Option<Histogram> = None;
    for mut buckets in sets {
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        let Some(&(last_le, inf_count)) = buckets.last() else {
            continue;
        };
        if last_le != f64::INFINITY {
            problems.push(format!("{name}: histogram has no le=\"+Inf\" bucket"));
            return None;
        }
        let finite = &buckets[..buckets.len() - 1];
        let monotone = finite.windows(2).all(|w| w[0].1 <= w[1].1)
            && finite.last().is_none_or(|b| b.1 <= inf_count);
        if !monotone || buckets.iter().any(|b| !b.1.is_finite() || b.1 < 0.0) {
            problems.push(format!("{name}: histogram buckets are not cumulative"));
            return None;
        }
        let h = Histogram {
            bounds: finite.iter().map(|b| b.0).collect(),
            cumulative: finite.iter().map(|b| b.1).collect(),
            count: inf_count,
            sum: 0.0,
        };
        total = Some(match total {
            None => h,
            Some(t) => t.plus(&h),
        });
    }
    let mut h = total?;
    let Some(sum) = sum_counter(samples, &format!("{name}_sum")) else {
        problems.push(format!("{name}: histogram has no {name}_sum"));
        return None;
    };
    h.sum = sum;
    Some(h)
}

fn predictions(
    samples: &[prometheus_parse::Sample],
    name: &str,
    label: &str,
    problems: &mut Vec<String>,
) -> Option<BTreeMap<String, f64>> {
    let mut seen = false;
    let mut classes: BTreeMap<String, f64> = BTreeMap::new();
    for s in samples.iter().filter(|s| s.metric == name) {
        let (prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v)) = s.value
        else {
            continue;
        };
        seen = true;
        if let (Some(class), true) = (s.labels.get(label), v.is_finite()) {
            *classes.entry(class.to_string()).or_default() += v;
        }
    }
    if seen && classes.is_empty() {
        problems.push(format!("{name}: no sample has the label `{label}`"));
        return None;
    }
    seen.then_some(classes)
}

/// Parses one backend's Prometheus text exposition.
pub fn parse_exposition(text: &str, series: &UpstreamConfig) -> Result<Snapshot, UpstreamError> {
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .map_err(UpstreamError::Format)?;
    let samples = &scrape.samples;
    let mut problems = Vec::new();
    let enabled = |name: &str| !name.is_empty();
    let latency = if enabled(&series.latency) {
        build_histogram(samples, &series.latency, &mut problems)
    } else {
        None
    };
    let preds = if enabled(&series.predictions) {
        predictions(
            samples,
            &series.predictions,
            &series.prediction_label,
            &mut problems,
        )
    } else {
        None
    };
    Ok(Snapshot {
        requests: sum_counter(samples, &series.requests).into(),
        errors: sum_counter(samples, &series.errors).into(),
        latency: latency.into(),
        predictions: preds.into(),
        problems,
    })
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

#[cfg(test)]
#[allow(
    clippy::float_cmp,
    clippy::many_single_char_names,
    reason = "test values are exact small integers and halves"
)]
mod tests {
    use super::*;

    const EXPOSITION: &str = r#"
# HELP requests_total Requests served.
# TYPE requests_total counter
requests_total{route="/predict",code="200"} 990
requests_total{route="/healthz",code="200"} 10
# TYPE request_errors_total counter
request_errors_total{route="/predict"} 7
# HELP request_duration_seconds Request latency.
# TYPE request_duration_seconds histogram
request_duration_seconds_bucket{le="0.05"} 100
request_duration_seconds_bucket{le="0.1"} 600
request_duration_seconds_bucket{le="0.25"} 950
request_duration_seconds_bucket{le="+Inf"} 1000
request_duration_seconds_sum 110.5
request_duration_seconds_count 1000
# TYPE predictions_total counter
predictions_total{class="positive"} 600
predictions_total{class="negative"} 390
"#;

    fn cfg() -> UpstreamConfig {
        UpstreamConfig::default()
    }

    fn parse(text: &str) -> Snapshot {
        parse_exposition(text, &cfg()).expect("parses")
    }

    #[test]
    fn parses_every_configured_series() {
        let s = parse(EXPOSITION);
        assert_eq!(s.requests, Series::Present(1000.0));
        assert_eq!(s.errors, Series::Present(7.0));
        let h = s.latency.present().unwrap();
        assert_eq!(h.bounds, [0.05, 0.1, 0.25]);
        assert_eq!(h.cumulative, [100.0, 600.0, 950.0]);
        assert!((h.count - 1000.0).abs() < 1e-9);
        assert!((h.sum - 110.5).abs() < 1e-9);
        assert_eq!(h.bucket_counts(), [100.0, 500.0, 350.0, 50.0]);
        let p = s.predictions.present().unwrap();
        assert_eq!(p["positive"], 600.0);
        assert_eq!(p["negative"], 390.0);
        assert!(s.problems.is_empty());
    }

    #[test]
    fn missing_series_are_missing_not_zero() {
        let s = parse("# TYPE requests_total counter\nrequests_total 5\n");
        assert_eq!(s.requests, Series::Present(5.0));
        assert_eq!(s.errors, Series::Missing);
        assert_eq!(s.latency, Series::Missing);
        assert_eq!(s.predictions, Series::Missing);
        assert_eq!(parse(""), Snapshot::missing());
    }

    #[test]
    fn configured_names_and_label_are_used() {
        let cfg = UpstreamConfig {
            requests: "http_requests_total".into(),
            errors: "http_failures_total".into(),
            latency: String::new(),
            predictions: "labels_total".into(),
            prediction_label: "label".into(),
        };
        let text = "http_requests_total 10\nhttp_failures_total 1\nlabels_total{label=\"a\"} 4\nlabels_total{label=\"b\"} 6\nrequest_duration_seconds_count 3\n";
        let s = parse_exposition(text, &cfg).unwrap();
        assert_eq!(s.requests, Series::Present(10.0));
        assert_eq!(s.errors, Series::Present(1.0));
        assert_eq!(s.latency, Series::Missing, "latency is switched off");
        assert_eq!(s.predictions.present().unwrap().len(), 2);
    }

    #[test]
    fn untyped_histogram_buckets_are_read() {
        let text = "request_duration_seconds_bucket{le=\"0.1\"} 3\nrequest_duration_seconds_bucket{le=\"+Inf\"} 4\nrequest_duration_seconds_sum 0.5\nrequest_duration_seconds_count 4\n";
        let h = parse(text).latency.present().cloned().unwrap();
        assert_eq!(h.bounds, [0.1]);
        assert_eq!(h.count, 4.0);
    }

    #[test]
    fn malformed_series_are_missing_with_a_problem() {
        let text = "# TYPE request_duration_seconds histogram\nrequest_duration_seconds_bucket{le=\"0.1\"} 5\nrequest_duration_seconds_bucket{le=\"+Inf\"} 4\nrequest_duration_seconds_sum 1\npredictions_total{model=\"x\"} 3\n";
        let s = parse(text);
        assert_eq!(s.latency, Series::Missing);
        assert_eq!(s.predictions, Series::Missing);
        assert_eq!(s.problems.len(), 2, "{:?}", s.problems);
    }

    fn snapshot(requests: f64, errors: f64, buckets: [f64; 2], positive: f64) -> Snapshot {
        Snapshot {
            requests: Series::Present(requests),
            errors: Series::Present(errors),
            latency: Series::Present(Histogram {
                bounds: vec![0.1],
                cumulative: vec![buckets[0]],
                count: buckets[1],
                sum: buckets[1] * 0.05,
            }),
            predictions: Series::Present([("positive".to_string(), positive)].into()),
            problems: Vec::new(),
        }
    }

    #[test]
    fn delta_between_snapshots() {
        let d = snapshot(150.0, 3.0, [120.0, 150.0], 90.0).delta_since(&snapshot(
            100.0,
            1.0,
            [80.0, 100.0],
            60.0,
        ));
        assert!(!d.reset);
        assert_eq!(d.window.requests, Series::Present(50));
        assert_eq!(d.window.errors, Series::Present(2));
        let h = d.window.latency.present().unwrap();
        assert_eq!(h.cumulative, [40.0]);
        assert_eq!(h.count, 50.0);
        assert_eq!(d.window.predictions.present().unwrap()["positive"], 30);
    }

    #[test]
    fn counter_reset_counts_from_zero() {
        // The backend restarted between scrapes: its counters start again.
        let d = snapshot(20.0, 1.0, [15.0, 20.0], 12.0).delta_since(&snapshot(
            100.0,
            5.0,
            [80.0, 100.0],
            60.0,
        ));
        assert!(d.reset);
        assert_eq!(d.window.requests, Series::Present(20));
        assert_eq!(d.window.errors, Series::Present(1));
        assert_eq!(d.window.latency.present().unwrap().count, 20.0);
        assert_eq!(d.window.predictions.present().unwrap()["positive"], 12);
    }

    #[test]
    fn missing_now_is_missing_and_first_sight_is_zero() {
        let d = Snapshot::missing().delta_since(&snapshot(1.0, 0.0, [1.0, 1.0], 1.0));
        assert_eq!(d.window, Window::missing());
        let d = snapshot(10.0, 1.0, [5.0, 10.0], 4.0).delta_since(&Snapshot::missing());
        assert_eq!(d.window.requests, Series::Present(0));
        assert_eq!(d.window.latency.present().unwrap().count, 0.0);
    }

    #[test]
    fn advance_keeps_the_last_present_baseline() {
        let mut base = snapshot(100.0, 1.0, [80.0, 100.0], 60.0);
        base.advance(&Snapshot::missing());
        assert_eq!(base.requests, Series::Present(100.0));
        let d = snapshot(130.0, 1.0, [100.0, 130.0], 70.0).delta_since(&base);
        assert_eq!(d.window.requests, Series::Present(30), "the gap is covered");
        base.advance(&snapshot(130.0, 1.0, [100.0, 130.0], 70.0));
        assert_eq!(base.requests, Series::Present(130.0));
    }

    #[test]
    fn aggregation_is_strict_and_merges_bucket_layouts() {
        let a = Window {
            requests: Series::Present(10),
            errors: Series::Present(1),
            latency: Series::Present(Histogram {
                bounds: vec![0.1, 0.2],
                cumulative: vec![4.0, 8.0],
                count: 10.0,
                sum: 1.0,
            }),
            predictions: Series::Present([("x".to_string(), 3)].into()),
        };
        let b = Window {
            requests: Series::Present(5),
            errors: Series::Present(0),
            latency: Series::Present(Histogram {
                bounds: vec![0.2, 0.5],
                cumulative: vec![3.0, 4.0],
                count: 5.0,
                sum: 0.7,
            }),
            predictions: Series::Present([("x".to_string(), 1), ("y".to_string(), 4)].into()),
        };
        let g = aggregate([&a, &b]);
        assert_eq!(g.requests, Series::Present(15));
        assert_eq!(g.errors, Series::Present(1));
        let h = g.latency.present().unwrap();
        assert_eq!(h.bounds, [0.2]);
        assert_eq!(h.cumulative, [11.0]);
        assert_eq!(h.count, 15.0);
        assert_eq!(g.predictions.present().unwrap()["x"], 4);
        let mut c = b.clone();
        c.errors = Series::Missing;
        let g = aggregate([&a, &c]);
        assert_eq!(
            g.errors,
            Series::Missing,
            "one silent backend makes the group missing"
        );
        assert_eq!(g.requests, Series::Present(15));
        assert_eq!(aggregate([]), Window::missing());
    }

    #[test]
    fn accumulate_over_time_skips_missing_polls() {
        let mut w = Window::missing();
        let poll = Window::zero(vec![0.1]);
        w.accumulate(&poll);
        let mut p2 = Window::missing();
        p2.requests = Series::Present(7);
        w.accumulate(&p2);
        assert_eq!(w.requests, Series::Present(7));
        assert_eq!(w.errors, Series::Present(0));
        assert!(w.missing_series().is_empty());
        assert_eq!(
            Window::missing().missing_series(),
            ["requests", "errors", "latency", "predictions"]
        );
    }
}
