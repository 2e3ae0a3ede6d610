#![allow(
    clippy::float_cmp,
    clippy::many_single_char_names,
    reason = "test values are exact small integers and halves"
)]
use super::*;
use crate::config::UpstreamConfig;

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
    let mut c = b;
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
