//! The server's Prometheus series: exactly the ones the controller reads by default.

use prometheus::{Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry};

use crate::classifier::Sentiment;

/// Histogram buckets in seconds: fine below 100 ms, where a lab backend answers and where a
/// latency regression of tens of milliseconds must show.
pub const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5,
    5.0, 10.0,
];

/// Series names (the controller's `[services.upstream]` defaults).
pub const REQUESTS: &str = "requests_total";
pub const ERRORS: &str = "request_errors_total";
pub const DURATION: &str = "request_duration_seconds";
pub const PREDICTIONS: &str = "predictions_total";
pub const PREDICTION_LABEL: &str = "class";

/// Counters and the latency histogram of `/predict`, in their own registry (no process series).
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub requests: IntCounter,
    pub errors: IntCounter,
    pub duration: Histogram,
    pub predictions: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = IntCounter::new(REQUESTS, "Prediction requests received.").expect("valid");
        let errors =
            IntCounter::new(ERRORS, "Prediction requests answered with an error.").expect("valid");
        let duration = Histogram::with_opts(
            HistogramOpts::new(DURATION, "Time to answer a prediction request, in seconds.")
                .buckets(DURATION_BUCKETS.to_vec()),
        )
        .expect("valid");
        let predictions = IntCounterVec::new(
            Opts::new(PREDICTIONS, "Predictions returned, by predicted class."),
            &[PREDICTION_LABEL],
        )
        .expect("valid");
        // Every class series exists from the start, so a class never seen still reads 0.
        for class in Sentiment::ALL {
            predictions.with_label_values(&[class.as_str()]);
        }
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(errors.clone()),
            Box::new(duration.clone()),
            Box::new(predictions.clone()),
        ] {
            registry.register(c).expect("names are unique");
        }
        Self {
            registry,
            requests,
            errors,
            duration,
            predictions,
        }
    }

    /// The Prometheus text exposition of every series.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding of gathered metrics does not fail");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_exactly_the_default_series() {
        let m = Metrics::new();
        m.requests.inc();
        m.duration.observe(0.004);
        m.predictions.with_label_values(&["positive"]).inc();
        let text = m.render();
        let names: std::collections::BTreeSet<&str> = text
            .lines()
            .filter(|l| l.starts_with("# TYPE "))
            .map(|l| l.split_whitespace().nth(2).unwrap())
            .collect();
        assert_eq!(
            names.into_iter().collect::<Vec<_>>(),
            [PREDICTIONS, DURATION, ERRORS, REQUESTS]
        );
        assert!(text.contains("requests_total 1"), "{text}");
        assert!(text.contains("request_errors_total 0"), "{text}");
        assert!(
            text.contains("predictions_total{class=\"negative\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("predictions_total{class=\"positive\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("request_duration_seconds_bucket{le=\"0.005\"} 1"),
            "{text}"
        );
    }
}
