//! Parsing a backend's Prometheus text exposition into a [`Snapshot`] of the configured series.
//!
//! The text is read line by line and only the samples of the configured metrics are kept, so a
//! large exposition costs no memory beyond its text, and the number of series is capped while
//! reading. Label values are read with their escapes, so a matcher sees the value the backend
//! meant. (`prometheus-parse` splits label values at `,` and `=`, ignores escapes and keeps
//! every sample: it could neither match `handler="/a,b"` nor bound its memory.)
//!
//! Every count (requests, errors, bucket counts, predictions) must be a whole number from 0 to
//! 2^53 ([`MAX_COUNT`]), where `f64` still counts exactly; a series with any other value is
//! malformed: missing, with the reason in [`Snapshot::problems`].

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use super::selector::Selector;
use super::{Histogram, ScrapeProblem, ScrapeReason, Series, Snapshot};
use crate::config::UpstreamConfig;

/// The largest count accepted from a backend: 2^53, below which every whole number is exact
/// in an `f64` and sums of a few thousand of them still fit a `u64`.
pub const MAX_COUNT: f64 = 9_007_199_254_740_992.0;

/// Distinct version label values kept per backend.
const MAX_VERSIONS: usize = 16;

/// One sample line: `name{labels} value [timestamp]`.
pub(crate) struct Sample<'a> {
    pub(crate) name: &'a str,
    pub(crate) labels: Vec<(&'a str, Cow<'a, str>)>,
    pub(crate) value: f64,
    /// The value as written (an integer beyond 2^53 rounds to 2^53 in an `f64`).
    text: &'a str,
}

impl Sample<'_> {
    fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_ref())
    }

    fn accepted_by(&self, selector: &Selector) -> bool {
        selector.accepts(|l| self.label(l))
    }

    /// `name{a="b",...}` as the backend wrote it (escapes resolved), for messages.
    fn series(&self) -> String {
        let mut out = self.name.to_string();
        if !self.labels.is_empty() {
            out.push('{');
            for (i, (k, v)) in self.labels.iter().enumerate() {
                let _ = write!(out, "{}{k}={v:?}", if i > 0 { "," } else { "" });
            }
            out.push('}');
        }
        out
    }

    /// The labels other than `le`, sorted: the identity of one histogram.
    fn identity_without_le(&self) -> String {
        let mut rest: Vec<_> = self.labels.iter().filter(|(k, _)| *k != "le").collect();
        rest.sort();
        let mut out = String::new();
        for (k, v) in rest {
            let _ = write!(out, "{k}={v:?},");
        }
        out
    }
}

fn metric_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// Reads one sample line (not a comment), as the daemon does; `None` when it is not one.
pub(crate) fn read_sample(line: &str) -> Option<Sample<'_>> {
    let (name, rest) = sample_name(line.trim())?;
    sample_rest(name, rest)
}

/// Splits a sample line into its metric name and the rest; `None` if it does not start
/// with a metric name followed by `{` or a blank.
fn sample_name(line: &str) -> Option<(&str, &str)> {
    let end = line.find(|c| !metric_char(c)).unwrap_or(line.len());
    let (name, rest) = line.split_at(end);
    let ok = !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && (rest.starts_with('{') || rest.starts_with([' ', '\t']));
    ok.then_some((name, rest))
}

/// Reads the labels and the value after the metric name.
fn sample_rest<'a>(name: &'a str, rest: &'a str) -> Option<Sample<'a>> {
    let mut labels = Vec::new();
    let mut rest = rest;
    if let Some(mut r) = rest.strip_prefix('{') {
        loop {
            r = r.trim_start();
            if let Some(after) = r.strip_prefix('}') {
                rest = after;
                break;
            }
            let end = r.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))?;
            let (label, after) = r.split_at(end);
            if label.is_empty() {
                return None;
            }
            let after = after.trim_start().strip_prefix('=')?.trim_start();
            let (value, after) = label_value(after)?;
            labels.push((label, value));
            r = after.trim_start();
            if let Some(a) = r.strip_prefix(',') {
                r = a;
            } else if !r.starts_with('}') {
                return None;
            }
        }
    }
    let mut fields = rest.split_whitespace();
    // Rust reads `+Inf`, `-Inf` and `NaN` in any case, as Go does.
    let text = fields.next()?;
    let value = text.parse::<f64>().ok()?;
    Some(Sample {
        name,
        labels,
        value,
        text,
    })
}

/// A double-quoted label value with `\\`, `\"` and `\n` escapes; the rest after the quote.
fn label_value(s: &str) -> Option<(Cow<'_, str>, &str)> {
    let body = s.strip_prefix('"')?;
    let end = body.find(['"', '\\'])?;
    if body.as_bytes()[end] == b'"' {
        return Some((Cow::Borrowed(&body[..end]), &body[end + 1..]));
    }
    let mut out = String::from(&body[..end]);
    let mut chars = body[end..].char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((Cow::Owned(out), &body[end + i + 1..])),
            '\\' => match chars.next()?.1 {
                'n' => out.push('\n'),
                other => out.push(other),
            },
            c => out.push(c),
        }
    }
    None
}

/// `Ok(value)` when the sample's value is a count (whole, 0..=2^53).
fn count(sample: &Sample) -> Result<f64, String> {
    let value = sample.value;
    // Digits only: compare exactly, since 2^53 + 1 reads as 2^53.
    let digits = sample.text.trim_start_matches('+');
    let exact = !digits.bytes().all(|b| b.is_ascii_digit())
        || digits.parse::<u64>().is_ok_and(|n| n <= MAX_COUNT as u64);
    if exact && value.is_finite() && value >= 0.0 && value.fract() == 0.0 && value <= MAX_COUNT {
        Ok(value)
    } else if !exact {
        Err(format!(
            "{} is not a count (a whole number from 0 to 2^53)",
            sample.text
        ))
    } else {
        // `1e30`, not thirty-one digits.
        let shown = if value.is_finite() && value.abs() >= 1e15 {
            format!("{value:e}")
        } else {
            format!("{value}")
        };
        Err(format!(
            "{shown} is not a count (a whole number from 0 to 2^53)"
        ))
    }
}

/// What one signal read so far.
struct Signal<'s> {
    /// `requests`, `errors`, `latency` or `predictions`.
    what: &'static str,
    selector: &'s Selector,
    /// The metric appeared (a sample or a `# TYPE`/`# HELP` line): no matching series then
    /// means zero, not missing.
    seen: bool,
    problem: Option<ScrapeProblem>,
}

impl<'s> Signal<'s> {
    fn new(what: &'static str, selector: &'s Selector) -> Self {
        Signal {
            what,
            selector,
            seen: false,
            problem: None,
        }
    }

    fn fail(&mut self, reason: ScrapeReason, detail: impl std::fmt::Display) {
        if self.problem.is_none() {
            self.problem = Some(ScrapeProblem {
                reason,
                message: format!("{} ({}): {detail}", self.what, self.selector),
            });
        }
    }

    fn ok(&self) -> bool {
        self.problem.is_none()
    }

    /// Whether samples named `name` belong to this signal (a histogram's `_bucket`, `_sum` and
    /// `_count`, a counter's own name).
    fn feeds_on(&self, name: &str) -> bool {
        let m = self.selector.metric();
        if m.is_empty() {
            return false;
        }
        if self.what == "latency" {
            name.strip_prefix(m)
                .is_some_and(|suffix| matches!(suffix, "_bucket" | "_sum" | "_count"))
        } else {
            name == m
        }
    }

    /// Marks the metric as present when a comment names its family (`foo` for `foo_total`
    /// as `OpenMetrics` writes counters).
    fn family(&mut self, name: &str) {
        let m = self.selector.metric();
        if m == name || m.strip_suffix("_total") == Some(name) {
            self.seen = true;
        }
    }
}

/// One histogram (one set of labels other than `le`).
#[derive(Default)]
struct HistogramParts {
    buckets: Vec<(f64, f64)>,
    sum: Option<f64>,
}

/// Everything read from one exposition, before it becomes a [`Snapshot`].
struct Reader<'s> {
    requests: Signal<'s>,
    request_sum: f64,
    errors: Signal<'s>,
    error_sum: f64,
    latency: Signal<'s>,
    histograms: BTreeMap<String, HistogramParts>,
    predictions: Signal<'s>,
    prediction_label: &'s str,
    classes: BTreeMap<String, f64>,
    /// Some selected predictions series was seen / had the class label.
    classes_selected: bool,
    classes_labelled: bool,
    max_classes: usize,
    version_label: &'s str,
    versions: BTreeSet<String>,
}

impl<'s> Reader<'s> {
    fn new(cfg: &'s UpstreamConfig) -> Self {
        Reader {
            requests: Signal::new("requests", &cfg.requests),
            request_sum: 0.0,
            errors: Signal::new("errors", &cfg.errors),
            error_sum: 0.0,
            latency: Signal::new("latency", &cfg.latency),
            histograms: BTreeMap::new(),
            predictions: Signal::new("predictions", &cfg.predictions),
            prediction_label: &cfg.prediction_label,
            classes: BTreeMap::new(),
            classes_selected: false,
            classes_labelled: false,
            max_classes: cfg.max_prediction_classes,
            version_label: &cfg.version_label,
            versions: BTreeSet::new(),
        }
    }

    /// Whether a sample of this metric feeds some signal (only those are read in full).
    fn wanted(&self, name: &str) -> bool {
        [
            &self.requests,
            &self.errors,
            &self.latency,
            &self.predictions,
        ]
        .iter()
        .any(|s| s.feeds_on(name))
    }

    fn comment(&mut self, line: &str) {
        let mut words = line.trim_start_matches('#').split_whitespace();
        if !matches!(words.next(), Some("TYPE" | "HELP")) {
            return;
        }
        let Some(name) = words.next() else {
            return;
        };
        for s in [
            &mut self.requests,
            &mut self.errors,
            &mut self.latency,
            &mut self.predictions,
        ] {
            if !s.selector.is_empty() {
                s.family(name);
            }
        }
    }

    /// A line of a wanted metric that could not be read: that signal is malformed.
    fn unreadable(&mut self, name: &str, line_no: usize) {
        for s in [
            &mut self.requests,
            &mut self.errors,
            &mut self.predictions,
            &mut self.latency,
        ] {
            if s.feeds_on(name) {
                s.seen = true;
                s.fail(
                    ScrapeReason::Malformed,
                    format!("line {line_no} is not a valid sample"),
                );
            }
        }
    }

    fn version(&mut self, sample: &Sample) {
        if self.version_label.is_empty() || self.versions.len() >= MAX_VERSIONS {
            return;
        }
        if let Some(v) = sample.label(self.version_label) {
            if !self.versions.contains(v) {
                self.versions.insert(v.to_string());
            }
        }
    }

    fn sample(&mut self, sample: &Sample) {
        for (signal, sum) in [
            (&mut self.requests, &mut self.request_sum),
            (&mut self.errors, &mut self.error_sum),
        ] {
            if signal.selector.is_empty() || sample.name != signal.selector.metric() {
                continue;
            }
            signal.seen = true;
            if !signal.ok() || !sample.accepted_by(signal.selector) {
                continue;
            }
            match count(sample) {
                Ok(v) => *sum += v,
                Err(e) => signal.fail(
                    ScrapeReason::NotACount,
                    format!("{} = {e}", sample.series()),
                ),
            }
        }
        if sample.name == self.predictions.selector.metric()
            && !self.predictions.selector.is_empty()
        {
            self.prediction(sample);
        }
        let latency = self.latency.selector.metric();
        if !latency.is_empty() {
            if let Some(suffix) = sample.name.strip_prefix(latency) {
                self.latency_part(suffix, sample);
            }
        }
        let selected = [
            &self.requests,
            &self.errors,
            &self.latency,
            &self.predictions,
        ]
        .iter()
        .any(|s| s.feeds_on(sample.name) && sample.accepted_by(s.selector));
        if selected {
            self.version(sample);
        }
    }

    fn prediction(&mut self, sample: &Sample) {
        let p = &mut self.predictions;
        p.seen = true;
        if !p.ok() || !sample.accepted_by(p.selector) {
            return;
        }
        self.classes_selected = true;
        let Some(class) = sample.label(self.prediction_label) else {
            return;
        };
        self.classes_labelled = true;
        let v = match count(sample) {
            Ok(v) => v,
            Err(e) => {
                p.fail(
                    ScrapeReason::NotACount,
                    format!("{} = {e}", sample.series()),
                );
                return;
            }
        };
        if let Some(total) = self.classes.get_mut(class) {
            *total += v;
        } else if self.classes.len() >= self.max_classes {
            p.fail(
                ScrapeReason::TooManyClasses,
                format!(
                    "more than {} classes (label `{}`); raise upstream.max_prediction_classes if the model really has that many",
                    self.max_classes, self.prediction_label
                ),
            );
        } else {
            self.classes.insert(class.to_string(), v);
        }
    }

    fn latency_part(&mut self, suffix: &str, sample: &Sample) {
        let l = &mut self.latency;
        if !matches!(suffix, "_bucket" | "_sum" | "_count") {
            return;
        }
        l.seen = true;
        // `_count` repeats the `+Inf` bucket.
        if suffix == "_count" || !l.ok() || !sample.accepted_by(l.selector) {
            return;
        }
        let parts = self
            .histograms
            .entry(sample.identity_without_le())
            .or_default();
        match suffix {
            "_bucket" => {
                let le = match sample.label("le").map(str::parse::<f64>) {
                    Some(Ok(le)) if !le.is_nan() => le,
                    _ => {
                        l.fail(
                            ScrapeReason::Malformed,
                            format!("{} has no numeric `le` label", sample.series()),
                        );
                        return;
                    }
                };
                match count(sample) {
                    Ok(v) => parts.buckets.push((le, v)),
                    Err(e) => {
                        l.fail(
                            ScrapeReason::NotACount,
                            format!("{} = {e}", sample.series()),
                        );
                    }
                }
            }
            "_sum" => {
                if sample.value.is_finite() {
                    parts.sum = Some(parts.sum.unwrap_or(0.0) + sample.value);
                } else {
                    l.fail(
                        ScrapeReason::Malformed,
                        format!("{} = {} is not finite", sample.series(), sample.value),
                    );
                }
            }
            _ => {}
        }
    }

    fn counter(signal: Signal, sum: f64, problems: &mut Vec<ScrapeProblem>) -> Series<f64> {
        let mut signal = signal;
        if signal.ok() && sum > MAX_COUNT {
            signal.fail(
                ScrapeReason::NotACount,
                format!("the selected series add up to {sum}, more than 2^53"),
            );
        }
        finish(signal, sum, problems)
    }

    fn histogram(&mut self) -> Option<Histogram> {
        let name = self.latency.selector.metric().to_string();
        let mut total: Option<Histogram> = None;
        for parts in std::mem::take(&mut self.histograms).into_values() {
            let mut buckets = parts.buckets;
            if buckets.is_empty() {
                self.latency.fail(
                    ScrapeReason::Malformed,
                    format!("{name}_sum without {name}_bucket series (is it a summary?)"),
                );
                return None;
            }
            buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            if buckets
                .windows(2)
                .any(|w| w[0].0.total_cmp(&w[1].0).is_eq())
            {
                self.latency
                    .fail(ScrapeReason::Malformed, "a bucket bound appears twice");
                return None;
            }
            let (last_le, inf_count) = buckets[buckets.len() - 1];
            if last_le != f64::INFINITY {
                self.latency
                    .fail(ScrapeReason::Malformed, "no le=\"+Inf\" bucket");
                return None;
            }
            let finite = &buckets[..buckets.len() - 1];
            if !buckets.windows(2).all(|w| w[0].1 <= w[1].1) {
                self.latency
                    .fail(ScrapeReason::Malformed, "bucket counts are not cumulative");
                return None;
            }
            let Some(sum) = parts.sum else {
                self.latency
                    .fail(ScrapeReason::Malformed, format!("no {name}_sum"));
                return None;
            };
            let h = Histogram {
                bounds: finite.iter().map(|b| b.0).collect(),
                cumulative: finite.iter().map(|b| b.1).collect(),
                count: inf_count,
                sum,
            };
            total = Some(match total {
                None => h,
                Some(t) => t.plus(&h),
            });
        }
        if let Some(h) = &total {
            if h.count > MAX_COUNT {
                self.latency.fail(
                    ScrapeReason::NotACount,
                    format!(
                        "the selected histograms add up to {} requests, more than 2^53",
                        h.count
                    ),
                );
                return None;
            }
        }
        // Present but no matching histogram yet: zero, with no buckets.
        Some(total.unwrap_or_else(|| Histogram::empty(Vec::new())))
    }

    fn finish(mut self) -> Snapshot {
        let mut problems = Vec::new();
        let problems = &mut problems;
        let histogram = if self.latency.ok() && self.latency.seen {
            self.histogram()
        } else {
            None
        };
        if self.predictions.ok() && self.classes_selected && !self.classes_labelled {
            let label = self.prediction_label.to_string();
            self.predictions.fail(
                ScrapeReason::Malformed,
                format!("no selected series has the label `{label}`"),
            );
        }
        let requests = Self::counter(self.requests, self.request_sum, problems);
        let errors = Self::counter(self.errors, self.error_sum, problems);
        let latency = finish(
            self.latency,
            histogram.unwrap_or_else(|| Histogram::empty(Vec::new())),
            problems,
        );
        let predictions = finish(self.predictions, self.classes, problems);
        Snapshot {
            requests,
            errors,
            latency,
            predictions,
            versions: self.versions.into_iter().collect(),
            problems: std::mem::take(problems),
        }
    }
}

/// The value of a signal: present when its metric appeared and nothing was wrong with it.
fn finish<T>(signal: Signal, value: T, problems: &mut Vec<ScrapeProblem>) -> Series<T> {
    match signal.problem {
        Some(p) => {
            problems.push(p);
            Series::Missing
        }
        None if signal.seen && !signal.selector.is_empty() => Series::Present(value),
        None => Series::Missing,
    }
}

/// Parses one backend's Prometheus text exposition. Fails as a whole when the text is not an
/// exposition or has more than `max_series` samples; a single bad series is missing, with its
/// reason in [`Snapshot::problems`].
pub fn parse_exposition(text: &str, cfg: &UpstreamConfig) -> Result<Snapshot, ScrapeProblem> {
    let mut reader = Reader::new(cfg);
    let mut samples = 0usize;
    let mut readable = 0usize;
    let mut unreadable = 0usize;
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if line.starts_with('#') {
            reader.comment(line);
            if line.starts_with("# TYPE") || line.starts_with("# HELP") {
                readable += 1;
            }
            continue;
        }
        let Some((name, rest)) = sample_name(line) else {
            unreadable += 1;
            continue;
        };
        samples += 1;
        if samples > cfg.max_series {
            return Err(ScrapeProblem {
                reason: ScrapeReason::TooManySeries,
                message: format!(
                    "more than {} series in the exposition; raise upstream.max_series if the backend really exports that many",
                    cfg.max_series
                ),
            });
        }
        readable += 1;
        if !reader.wanted(name) {
            continue;
        }
        match sample_rest(name, rest) {
            Some(sample) => reader.sample(&sample),
            None => reader.unreadable(name, i + 1),
        }
    }
    if readable == 0 && unreadable > 0 {
        return Err(ScrapeProblem {
            reason: ScrapeReason::Format,
            message:
                "metrics are not in the Prometheus text format; check the backend's metrics_url"
                    .into(),
        });
    }
    Ok(reader.finish())
}
