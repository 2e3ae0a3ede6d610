#![allow(
    clippy::float_cmp,
    clippy::many_single_char_names,
    reason = "test values are exact small integers and halves"
)]
#![allow(clippy::format_collect, reason = "test expositions are built once")]
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

fn sel(text: &str) -> Selector {
    Selector::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
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
        requests: sel("http_requests_total"),
        errors: sel("http_failures_total"),
        latency: Selector::default(),
        predictions: sel("labels_total"),
        prediction_label: "label".into(),
        ..UpstreamConfig::default()
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
    assert!(s
        .problems
        .iter()
        .all(|p| p.reason == ScrapeReason::Malformed));
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
        versions: Vec::new(),
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
    base.advance(&Snapshot::missing(), false);
    assert_eq!(base.requests, Series::Present(100.0));
    let d = snapshot(130.0, 1.0, [100.0, 130.0], 70.0).delta_since(&base);
    assert_eq!(d.window.requests, Series::Present(30), "the gap is covered");
    base.advance(&snapshot(130.0, 1.0, [100.0, 130.0], 70.0), false);
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

// ---------------------------------------------------------------------------------------
// Backend restarts

#[test]
fn a_restart_seen_on_one_series_resets_every_series() {
    // requests went 100 -> 50 (a restart), errors 2 -> 3: all 3 errors are new.
    let before = snapshot(100.0, 2.0, [80.0, 100.0], 60.0);
    let after = snapshot(50.0, 3.0, [90.0, 120.0], 70.0);
    let d = after.delta_since(&before);
    assert!(d.reset);
    assert_eq!(d.window.requests, Series::Present(50));
    assert_eq!(
        d.window.errors,
        Series::Present(3),
        "errors since the restart"
    );
    let h = d.window.latency.present().unwrap();
    assert_eq!(h.count, 120.0, "the histogram counts since the restart");
    assert_eq!(h.cumulative, [90.0]);
    assert_eq!(d.window.predictions.present().unwrap()["positive"], 70);
}

#[test]
fn a_restart_seen_on_a_bucket_or_a_class_resets_the_counters_too() {
    let before = snapshot(100.0, 2.0, [80.0, 100.0], 60.0);
    // Only one bucket went back; the counters happen to be higher.
    let d = snapshot(150.0, 4.0, [70.0, 150.0], 90.0).delta_since(&before);
    assert!(d.reset);
    assert_eq!(d.window.requests, Series::Present(150));
    assert_eq!(d.window.errors, Series::Present(4));
    // A class that vanished (not yet predicted since the restart).
    let mut after = snapshot(120.0, 3.0, [90.0, 120.0], 0.0);
    after.predictions = Series::Present([("negative".to_string(), 5.0)].into());
    let d = after.delta_since(&before);
    assert!(d.reset);
    assert_eq!(d.window.errors, Series::Present(3));
    assert_eq!(d.window.predictions.present().unwrap()["negative"], 5);
    // A histogram whose buckets changed is a new process.
    let mut after = snapshot(120.0, 3.0, [90.0, 120.0], 70.0);
    if let Series::Present(h) = &mut after.latency {
        h.bounds = vec![0.2];
    }
    assert!(after.delta_since(&before).reset);
}

#[test]
fn after_a_restart_a_series_missing_then_counts_from_zero() {
    let mut base = snapshot(100.0, 2.0, [80.0, 100.0], 60.0);
    // Restarted; its errors series is not exported yet this poll.
    let mut now = snapshot(10.0, 0.0, [8.0, 10.0], 6.0);
    now.errors = Series::Missing;
    let d = now.delta_since(&base);
    assert!(d.reset);
    assert_eq!(d.window.errors, Series::Missing);
    base.advance(&now, d.reset);
    // Next poll: 1 error since the restart, and its baseline is zero, not the old 2.
    let next = snapshot(20.0, 1.0, [18.0, 20.0], 12.0);
    let d = next.delta_since(&base);
    assert!(!d.reset);
    assert_eq!(d.window.requests, Series::Present(10));
    assert_eq!(d.window.errors, Series::Present(1));
}

#[test]
fn a_histogram_that_first_had_no_series_is_not_a_restart() {
    // The family is declared before the first request: an empty histogram with no buckets.
    let text =
        "# TYPE request_duration_seconds histogram\nrequests_total 0\nrequest_errors_total 0\n";
    let empty = parse(text);
    assert_eq!(
        empty.latency,
        Series::Present(Histogram::empty(Vec::new())),
        "declared but not observed yet: zero, not missing"
    );
    let d = parse(EXPOSITION).delta_since(&empty);
    assert!(!d.reset);
    assert_eq!(d.window.requests, Series::Present(1000));
    assert_eq!(d.window.latency.present().unwrap().count, 1000.0);
    assert_eq!(
        d.window.latency.present().unwrap().bounds,
        [0.05, 0.1, 0.25]
    );
}

#[test]
fn an_empty_histogram_adds_nothing_and_keeps_the_buckets() {
    let h = parse(EXPOSITION).latency.present().cloned().unwrap();
    let empty = Histogram::empty(Vec::new());
    assert_eq!(h.plus(&empty), h);
    assert_eq!(empty.plus(&h), h);
}

// ---------------------------------------------------------------------------------------
// Selectors

const HTTP: &str = r#"
# HELP http_requests_total HTTP requests.
# TYPE http_requests_total counter
http_requests_total{method="POST",route="/predict",status="200"} 940
http_requests_total{method="POST",route="/predict",status="500"} 50
http_requests_total{method="POST",route="/predict",status="503"} 10
http_requests_total{method="GET",route="/healthz",status="200"} 300
http_requests_total{method="GET",route="/metrics",status="200"} 300
http_requests_total{method="GET",route="/healthz",status="503"} 7
# TYPE http_request_duration_seconds histogram
http_request_duration_seconds_bucket{method="POST",route="/predict",le="0.1"} 900
http_request_duration_seconds_bucket{method="POST",route="/predict",le="+Inf"} 1000
http_request_duration_seconds_sum{method="POST",route="/predict"} 50.0
http_request_duration_seconds_count{method="POST",route="/predict"} 1000
http_request_duration_seconds_bucket{method="GET",route="/healthz",le="0.1"} 307
http_request_duration_seconds_bucket{method="GET",route="/healthz",le="+Inf"} 307
http_request_duration_seconds_sum{method="GET",route="/healthz"} 0.3
http_request_duration_seconds_count{method="GET",route="/healthz"} 307
http_request_duration_seconds_created{method="GET",route="/healthz"} 1.7e9
# TYPE model_predictions_total counter
model_predictions_total{model_version="v2",class="positive"} 600
model_predictions_total{model_version="v2",class="negative"} 340
"#;

fn http_cfg(requests: &str, errors: &str, latency: &str) -> UpstreamConfig {
    UpstreamConfig {
        requests: sel(requests),
        errors: sel(errors),
        latency: sel(latency),
        predictions: sel("model_predictions_total"),
        version_label: "model_version".into(),
        ..UpstreamConfig::default()
    }
}

#[test]
fn only_the_selected_series_are_summed() {
    let cfg = http_cfg(
        r#"http_requests_total{route="/predict"}"#,
        r#"http_requests_total{route="/predict",status=~"5.."}"#,
        r#"http_request_duration_seconds{route="/predict"}"#,
    );
    let s = parse_exposition(HTTP, &cfg).unwrap();
    assert_eq!(
        s.requests,
        Series::Present(1000.0),
        "health checks left out"
    );
    assert_eq!(s.errors, Series::Present(60.0), "500 and 503 of /predict");
    let h = s.latency.present().unwrap();
    assert_eq!((h.count, h.sum, h.cumulative[0]), (1000.0, 50.0, 900.0));
    assert_eq!(s.predictions.present().unwrap()["positive"], 600.0);
    assert_eq!(s.versions, ["v2"]);
    assert!(s.problems.is_empty(), "{:?}", s.problems);
    // Without matchers every series of the name counts.
    let all = parse_exposition(
        HTTP,
        &http_cfg(
            "http_requests_total",
            "http_requests_total",
            "http_request_duration_seconds",
        ),
    )
    .unwrap();
    assert_eq!(all.requests, Series::Present(1607.0));
    assert_eq!(all.latency.present().unwrap().count, 1307.0);
}

#[test]
fn every_operator_and_the_missing_label_follow_promql() {
    let value = |requests: &str| {
        let cfg = http_cfg(requests, "http_requests_total", "");
        *parse_exposition(HTTP, &cfg)
            .unwrap()
            .requests
            .present()
            .unwrap()
    };
    assert_eq!(value(r#"http_requests_total{route!="/predict"}"#), 607.0);
    assert_eq!(value(r#"http_requests_total{status!~"2.."}"#), 67.0);
    // Anchored: "5" alone matches no status.
    assert_eq!(value(r#"http_requests_total{status=~"5"}"#), 0.0);
    assert_eq!(value(r#"http_requests_total{status=~"5.*|200"}"#), 1607.0);
    // A label no series has reads as "": `=""` selects all, `!=""` none.
    assert_eq!(value(r#"http_requests_total{zone=""}"#), 1607.0);
    assert_eq!(value(r#"http_requests_total{zone!=""}"#), 0.0);
    assert_eq!(
        value(r#"http_requests_total{method="GET", route=~"/(healthz|metrics)", status="200",}"#),
        600.0
    );
}

#[test]
fn errors_as_a_grouped_status_label_of_the_requests_counter() {
    // prometheus-fastapi-instrumentator groups status codes.
    let text = r#"
# TYPE http_requests_total counter
http_requests_total{handler="/predict",method="POST",status="2xx"} 970
http_requests_total{handler="/predict",method="POST",status="5xx"} 30
http_requests_total{handler="/metrics",method="GET",status="2xx"} 100
"#;
    let cfg = http_cfg(
        r#"http_requests_total{handler="/predict"}"#,
        r#"http_requests_total{handler="/predict",status="5xx"}"#,
        "",
    );
    let s = parse_exposition(text, &cfg).unwrap();
    assert_eq!(s.requests, Series::Present(1000.0));
    assert_eq!(s.errors, Series::Present(30.0));
}

#[test]
fn a_metric_present_without_a_matching_series_is_zero_and_an_absent_one_missing() {
    // No 5xx yet: the metric is there, the errors are zero.
    let text = "# TYPE http_requests_total counter\nhttp_requests_total{route=\"/predict\",status=\"200\"} 10\n";
    let cfg = http_cfg(
        r#"http_requests_total{route="/predict"}"#,
        r#"http_requests_total{status=~"5.."}"#,
        r#"http_request_duration_seconds{route="/predict"}"#,
    );
    let s = parse_exposition(text, &cfg).unwrap();
    assert_eq!(s.errors, Series::Present(0.0));
    assert_eq!(s.latency, Series::Missing, "no such metric at all");
    assert_eq!(s.predictions, Series::Missing);
    // Declared by its TYPE line only (a labelled counter before its first increment).
    let s = parse_exposition(
        "# HELP http_requests_total x\n# TYPE http_requests_total counter\n",
        &cfg,
    )
    .unwrap();
    assert_eq!(s.requests, Series::Present(0.0));
    // OpenMetrics names the counter family without `_total`.
    let s = parse_exposition("# TYPE http_requests counter\n", &cfg).unwrap();
    assert_eq!(s.requests, Series::Present(0.0));
}

#[test]
fn label_values_are_read_with_their_escapes() {
    let text = r#"requests_total{route="/a,b=c",q="say \"hi\"\\"} 5
requests_total{route="/a"} 7
"#;
    let value = |requests: &str| {
        let cfg = UpstreamConfig {
            requests: sel(requests),
            ..cfg()
        };
        *parse_exposition(text, &cfg)
            .unwrap()
            .requests
            .present()
            .unwrap()
    };
    assert_eq!(value(r#"requests_total{route="/a,b=c"}"#), 5.0);
    assert_eq!(value(r#"requests_total{q="say \"hi\"\\"}"#), 5.0);
    assert_eq!(value(r#"requests_total{route="/a"}"#), 7.0);
}

#[test]
fn selectors_parse_and_print_canonically() {
    let s = sel(
        r#" http_requests_total { route = "/predict" , status=~'5..', method!="GET", x!~"a|b" } "#,
    );
    assert_eq!(s.metric(), "http_requests_total");
    assert_eq!(s.matchers().len(), 4);
    assert_eq!(
        s.to_string(),
        r#"http_requests_total{route="/predict",status=~"5..",method!="GET",x!~"a|b"}"#
    );
    assert_eq!(sel(&s.to_string()), s);
    assert_eq!(sel("requests_total").to_string(), "requests_total");
    assert_eq!(sel("requests_total{}").to_string(), "requests_total");
    assert!(sel("").is_empty());
}

#[test]
fn bad_selectors_say_what_is_wrong() {
    let err = |text: &str| Selector::parse(text).unwrap_err().to_string();
    assert_eq!(err(r#"{route="/x"}"#), "it has no metric name before `{`");
    assert!(err("5xx_total").contains("\"5xx_total\" is not a metric name"));
    assert!(err("http-requests").contains("\"http-requests\" is not a metric name"));
    assert_eq!(
        err(r#"m{status=="500"}"#),
        "unknown operator \"==\" after label `status`; use =, !=, =~ or !~"
    );
    assert_eq!(
        err(r#"m{status:"500"}"#),
        "unknown operator \":\" after label `status`; use =, !=, =~ or !~"
    );
    assert!(err(r"m{status=500}").contains("is not quoted"));
    assert!(err(r#"m{status="500}"#).contains("no closing quote"));
    assert!(err(r#"m{status="500""#).contains("no closing `}`"));
    assert!(err(r#"m{status="500" route="/"}"#).contains("expected `,` or `}`"));
    assert!(err(r#"m{status="500"} x"#).contains("unexpected text after `}`"));
    assert!(err(r#"m{__name__="x"}"#).contains("__name__"));
    assert!(err(r#"m{1a="x"}"#).contains("is not a label name"));
    let bad = err(r#"m{status=~"5..("}"#);
    assert!(
        bad.starts_with("the regular expression for `status` is not valid: "),
        "{bad}"
    );
    // The anchors cannot be escaped by unbalanced groups.
    assert!(err(r#"m{a=~"x)|(y"}"#).contains("not valid"));
}

// ---------------------------------------------------------------------------------------
// Hostile or broken expositions

fn problem_of(s: &Snapshot) -> (ScrapeReason, String) {
    assert_eq!(s.problems.len(), 1, "{:?}", s.problems);
    (s.problems[0].reason, s.problems[0].message.clone())
}

#[test]
fn a_count_that_is_not_a_whole_number_up_to_2_53_makes_the_series_missing() {
    for (value, shown) in [
        ("1e30", "1e30"),
        ("9007199254740993", "9007199254740993"),
        ("12.5", "12.5"),
        ("-3", "-3"),
        ("NaN", "NaN"),
        ("+Inf", "inf"),
    ] {
        let s = parse(&format!("requests_total {value}\nrequest_errors_total 1\n"));
        assert_eq!(s.requests, Series::Missing, "{value}");
        assert_eq!(
            s.errors,
            Series::Present(1.0),
            "other series are unaffected"
        );
        assert_eq!(
            problem_of(&s),
            (
                ScrapeReason::NotACount,
                format!("requests (requests_total): requests_total = {shown} is not a count (a whole number from 0 to 2^53)")
            ),
            "{value}"
        );
    }
    // 2^53 itself is a count; two series that add up beyond it are not.
    let s = parse("requests_total 9007199254740992\n");
    assert_eq!(s.requests, Series::Present(MAX_COUNT));
    let s = parse("requests_total{a=\"1\"} 9007199254740992\nrequests_total{a=\"2\"} 2\n");
    assert_eq!(s.requests, Series::Missing);
    assert_eq!(problem_of(&s).0, ScrapeReason::NotACount);
}

#[test]
fn bucket_and_prediction_counts_are_checked_too() {
    let text = "request_duration_seconds_bucket{le=\"0.1\"} 1e30\nrequest_duration_seconds_bucket{le=\"+Inf\"} 1e30\nrequest_duration_seconds_sum 1\npredictions_total{class=\"a\"} 0.5\n";
    let s = parse(text);
    assert_eq!(s.latency, Series::Missing);
    assert_eq!(s.predictions, Series::Missing);
    let reasons: Vec<ScrapeReason> = s.problems.iter().map(|p| p.reason).collect();
    assert_eq!(reasons, [ScrapeReason::NotACount, ScrapeReason::NotACount]);
    assert!(s.problems[0].message.starts_with("latency (request_duration_seconds): request_duration_seconds_bucket{le=\"0.1\"} = 1e30"), "{}", s.problems[0]);
    assert!(
        s.problems[1]
            .message
            .starts_with("predictions (predictions_total): predictions_total{class=\"a\"} = 0.5"),
        "{}",
        s.problems[1]
    );
}

#[test]
fn a_huge_count_goes_nowhere_near_the_sums() {
    // Through the whole path: exposition, delta, group sum, window over time.
    let config = cfg();
    let honest = |n: u64| {
        snapshot_of(
            &Ok(format!("requests_total {n}\nrequest_errors_total 0\n")),
            &config,
        )
    };
    let liar = snapshot_of(
        &Ok("requests_total 1e30\nrequest_errors_total 0\n".into()),
        &config,
    );
    let base = honest(10);
    let a = honest(20).delta_since(&base).window;
    let b = liar.delta_since(&base).window;
    let group = aggregate([&a, &b]);
    assert_eq!(
        group.requests,
        Series::Missing,
        "one bad backend, the group's requests are missing"
    );
    assert_eq!(group.errors, Series::Present(0));
    let mut over_time = aggregate([&a]);
    over_time.accumulate(&b);
    assert_eq!(over_time.requests, Series::Present(10));
}

#[test]
fn window_sums_saturate_instead_of_overflowing() {
    let mut big = Window::zero(Vec::new());
    big.requests = Series::Present(u64::MAX);
    big.predictions = Series::Present([("x".to_string(), u64::MAX)].into());
    let g = aggregate([&big, &big]);
    assert_eq!(g.requests, Series::Present(1 << 53));
    assert_eq!(g.predictions.present().unwrap()["x"], 1 << 53);
    let mut w = big.clone();
    w.accumulate(&big);
    assert_eq!(w.requests, Series::Present(1 << 53));
}

#[test]
fn too_many_series_fail_the_scrape() {
    let config = UpstreamConfig {
        max_series: 100,
        ..cfg()
    };
    let text: String = (0..101).map(|i| format!("junk_{i} 1\n")).collect();
    let e = parse_exposition(&text, &config).unwrap_err();
    assert_eq!(e.reason, ScrapeReason::TooManySeries);
    assert_eq!(e.message, "more than 100 series in the exposition; raise upstream.max_series if the backend really exports that many");
    let text: String = (0..100).map(|i| format!("junk_{i} 1\n")).collect();
    assert!(parse_exposition(&text, &config).is_ok());
}

#[test]
fn too_many_prediction_classes_make_predictions_missing() {
    let config = UpstreamConfig {
        max_prediction_classes: 20,
        ..cfg()
    };
    let classes = |n: usize| -> String {
        (0..n)
            .map(|i| format!("predictions_total{{class=\"c{i}\"}} 1\n"))
            .collect()
    };
    let s = parse_exposition(&classes(20), &config).unwrap();
    assert_eq!(s.predictions.present().unwrap().len(), 20);
    let s = parse_exposition(&format!("requests_total 5\n{}", classes(21)), &config).unwrap();
    assert_eq!(s.predictions, Series::Missing);
    assert_eq!(s.requests, Series::Present(5.0));
    assert_eq!(
        problem_of(&s),
        (
            ScrapeReason::TooManyClasses,
            "predictions (predictions_total): more than 20 classes (label `class`); raise upstream.max_prediction_classes if the model really has that many".into()
        )
    );
}

#[test]
fn text_that_is_not_an_exposition_fails_the_scrape() {
    let e = parse_exposition("<html><body>Login</body></html>\n", &cfg()).unwrap_err();
    assert_eq!(e.reason, ScrapeReason::Format);
    // A broken line of a configured metric makes that series malformed, others stay.
    let s = parse("requests_total{route=\"/x} 5\nrequest_errors_total 1\n");
    assert_eq!(s.requests, Series::Missing);
    assert_eq!(s.errors, Series::Present(1.0));
    assert_eq!(
        problem_of(&s),
        (
            ScrapeReason::Malformed,
            "requests (requests_total): line 1 is not a valid sample".into()
        )
    );
    // Lines of other metrics that cannot be read are ignored.
    let s = parse("other{a=} 1\nrequests_total 5\n");
    assert_eq!(s.requests, Series::Present(5.0));
}

#[test]
fn a_failed_scrape_is_every_series_missing_with_its_reason() {
    let failure = ScrapeProblem {
        reason: ScrapeReason::Redirect,
        message: "metrics endpoint answered 302 Found".into(),
    };
    let s = snapshot_of(&Err(failure.clone()), &cfg());
    assert_eq!(s.problems, [failure]);
    assert_eq!(
        Snapshot {
            problems: Vec::new(),
            ..s
        },
        Snapshot::missing()
    );
}
