//! Parsing a backend's Prometheus text exposition into a [`Snapshot`] of the configured series.

use std::collections::BTreeMap;

use super::{Histogram, Snapshot};
use crate::config::UpstreamConfig;

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
