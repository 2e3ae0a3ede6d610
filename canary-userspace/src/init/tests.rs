//! Recognition on expositions recorded from the real servers: canary-model and the `FastAPI`
//! example with each metrics library, after a few answers (200s, a 422 and two 500s) and fresh
//! (nothing but a health check).

use super::recognise::{recognise, Catalogue, NotRecognised, DEFAULT_ROUTE};
use super::*;
use crate::config::Config;

const CANARY_MODEL: &str = include_str!("testdata/canary-model.prom");
const CANARY_MODEL_FRESH: &str = include_str!("testdata/canary-model-fresh.prom");
const CLIENT: &str = include_str!("testdata/fastapi-prometheus-client.prom");
const CLIENT_FRESH: &str = include_str!("testdata/fastapi-prometheus-client-fresh.prom");
const INSTRUMENTATOR: &str = include_str!("testdata/fastapi-instrumentator.prom");
const INSTRUMENTATOR_FRESH: &str = include_str!("testdata/fastapi-instrumentator-fresh.prom");

fn catalogue(text: &str) -> Catalogue {
    Catalogue::parse(text).expect("a recorded exposition parses")
}

fn recognised(text: &str) -> Recognised {
    recognise(&catalogue(text), DEFAULT_ROUTE).unwrap_or_else(|e| panic!("not recognised:\n{e}"))
}

fn not_recognised(text: &str) -> NotRecognised {
    match recognise(&catalogue(text), DEFAULT_ROUTE) {
        Ok(r) => panic!("recognised, but should not be: {r:#?}"),
        Err(e) => e,
    }
}

/// The exposition without any 5xx series (a backend that has not failed yet).
fn without_errors(text: &str) -> String {
    lines_where(text, |l| !(l.contains("\"500\"") || l.contains("\"5xx\"")))
}

/// The lines of `text` that `keep`.
fn lines_where(text: &str, keep: impl Fn(&str) -> bool) -> String {
    let kept: Vec<&str> = text.lines().filter(|l| keep(l)).collect();
    kept.join("\n") + "\n"
}

fn selectors(r: &Recognised) -> [String; 5] {
    [
        r.requests.to_string(),
        r.errors.to_string(),
        r.latency.to_string(),
        r.predictions.to_string(),
        r.prediction_label.clone(),
    ]
}

#[test]
fn canary_model_series_are_recognised() {
    let r = recognised(CANARY_MODEL);
    assert_eq!(
        selectors(&r),
        [
            "requests_total",
            "request_errors_total",
            "request_duration_seconds",
            "predictions_total",
            "class"
        ]
    );
    assert_eq!(r.version_label, None);
    // canary-model declares every series at start: a fresh one is recognised the same way.
    assert_eq!(selectors(&recognised(CANARY_MODEL_FRESH)), selectors(&r));
}

#[test]
fn prometheus_client_series_are_recognised_with_route_and_numeric_status() {
    let r = recognised(CLIENT);
    assert_eq!(
        selectors(&r),
        [
            r#"http_requests_total{route="/predict"}"#,
            r#"http_requests_total{route="/predict",status=~"5.."}"#,
            r#"http_request_duration_seconds{route="/predict"}"#,
            "model_predictions_total",
            "class"
        ]
    );
    assert_eq!(r.version_label.as_deref(), Some("model_version"));
    // Before any error the status values are still numeric: the same selector.
    assert_eq!(
        selectors(&recognised(&without_errors(CLIENT))),
        selectors(&r)
    );
    let notes = r.notes.join("\n");
    assert!(
        notes.contains("other routes seen: /fault, /healthz, /metrics"),
        "{notes}"
    );
}

#[test]
fn instrumentator_series_are_recognised_with_handler_and_grouped_status() {
    let r = recognised(INSTRUMENTATOR);
    assert_eq!(
        selectors(&r),
        [
            r#"http_requests_total{handler="/predict"}"#,
            r#"http_requests_total{handler="/predict",status="5xx"}"#,
            r#"http_request_duration_seconds{handler="/predict"}"#,
            "model_predictions_total",
            "class"
        ]
    );
    assert_eq!(r.version_label, None);
    assert_eq!(
        selectors(&recognised(&without_errors(INSTRUMENTATOR))),
        selectors(&r)
    );
    // The fine histogram without a handler label mixes every route: not the latency.
    let notes = r.notes.join("\n");
    assert!(
        notes.contains(
            "not http_request_duration_highr_seconds (no route label: every route mixed)"
        ),
        "{notes}"
    );
}

#[test]
fn a_fresh_fastapi_backend_says_to_send_a_request_first() {
    // Only the health check has been counted.
    for (text, series, route) in [
        (
            CLIENT_FRESH,
            "http_requests_total{method=GET, route=/healthz, status=200}",
            "route",
        ),
        (
            INSTRUMENTATOR_FRESH,
            "http_requests_total{handler=/healthz, method=GET, status=2xx}",
            "handler",
        ),
    ] {
        let e = not_recognised(text);
        let text = e.to_string();
        assert_eq!(e.0.len(), 1, "{text}");
        assert_eq!(e.0[0].signal, "requests");
        assert!(text.contains(&format!("saw: {series}")), "{text}");
        assert!(
            text.contains(&format!(
                "{route}=\"/predict\": send one request to /predict first"
            )),
            "{text}"
        );
    }
    // prometheus_client before any request: the counter is declared, without series.
    let declared_only = lines_where(CLIENT_FRESH, |l| !l.starts_with("http_"));
    let text = not_recognised(&declared_only).to_string();
    assert!(
        text.contains("saw: http_requests_total (declared, no series yet)"),
        "{text}"
    );
    assert!(
        text.contains("its labels appear with the first request"),
        "{text}"
    );
}

#[test]
fn another_route_is_selected_when_asked() {
    let r = recognise(&catalogue(CLIENT), "/healthz").expect("recognised");
    assert_eq!(
        r.requests.to_string(),
        r#"http_requests_total{route="/healthz"}"#
    );
    let e = recognise(&catalogue(CLIENT), "/classify")
        .unwrap_err()
        .to_string();
    assert!(e.contains("route=\"/classify\""), "{e}");
    assert!(e.contains("route=/fault|/healthz|/metrics|/predict"), "{e}");
}

#[test]
fn missing_signals_are_named_with_what_was_seen() {
    // No status label and no errors counter; no histogram; no class counter.
    let text = "# TYPE app_requests_total counter\n\
                app_requests_total{path=\"/predict\"} 10\n\
                # TYPE app_request_latency_seconds summary\n\
                app_request_latency_seconds_sum 1.0\n\
                app_request_latency_seconds_count 10\n\
                # TYPE cache_hits_total counter\n\
                cache_hits_total{cache=\"tokens\"} 3\n";
    let e = not_recognised(text);
    let signals: Vec<&str> = e.0.iter().map(|p| p.signal).collect();
    assert_eq!(signals, ["errors", "latency", "predictions"], "{e}");
    let text = e.to_string();
    assert!(
        text.contains("a status label on `app_requests_total`"),
        "{text}"
    );
    assert!(
        text.contains("saw: app_requests_total{path=/predict}"),
        "{text}"
    );
    assert!(
        text.contains("a histogram of request durations in seconds"),
        "{text}"
    );
    assert!(
        text.contains("saw: cache_hits_total{cache=tokens}"),
        "{text}"
    );
    assert!(text.contains("predictions = \"\""), "{text}");
}

#[test]
fn ambiguous_series_are_not_guessed() {
    let text = "# TYPE requests_total counter\n\
                requests_total 10\n\
                # TYPE upstream_requests_total counter\n\
                upstream_requests_total 4\n";
    let e = not_recognised(text);
    assert_eq!(e.0[0].signal, "requests");
    assert!(e.0[0].needs.contains("several fit"), "{e}");
    assert_eq!(e.0[0].saw, ["requests_total", "upstream_requests_total"]);

    let text = "# TYPE requests_total counter\n\
                requests_total{code=\"200\"} 10\n\
                # TYPE request_duration_seconds histogram\n\
                request_duration_seconds_bucket{le=\"+Inf\"} 10\n\
                request_duration_seconds_sum 1\n\
                request_duration_seconds_count 10\n\
                # TYPE predictions_total counter\n\
                predictions_total{class=\"a\",label=\"b\"} 1\n";
    let e = not_recognised(text);
    assert_eq!(e.0.len(), 1, "{e}");
    assert!(
        e.0[0].needs.contains("class, label could each be it"),
        "{e}"
    );
}

#[test]
fn latency_in_milliseconds_is_refused() {
    let text = "# TYPE requests_total counter\n\
                requests_total{code=\"200\"} 10\n\
                # TYPE request_duration_milliseconds histogram\n\
                request_duration_milliseconds_bucket{le=\"+Inf\"} 10\n\
                request_duration_milliseconds_sum 1\n\
                request_duration_milliseconds_count 10\n\
                # TYPE predictions_total counter\n\
                predictions_total{class=\"a\"} 1\n";
    let e = not_recognised(text);
    assert_eq!(e.0[0].signal, "latency");
    assert!(e.0[0].needs.contains("in seconds"), "{e}");
}

#[test]
fn go_style_code_label_and_untyped_series_are_recognised() {
    // promhttp names the status `code`; no # TYPE lines at all.
    let text = "http_requests_total{code=\"200\",handler=\"/predict\"} 10\n\
                http_requests_total{code=\"503\",handler=\"/predict\"} 1\n\
                http_request_duration_seconds_bucket{handler=\"/predict\",le=\"0.1\"} 9\n\
                http_request_duration_seconds_bucket{handler=\"/predict\",le=\"+Inf\"} 11\n\
                http_request_duration_seconds_sum{handler=\"/predict\"} 0.5\n\
                http_request_duration_seconds_count{handler=\"/predict\"} 11\n\
                inference_total{predicted_class=\"cat\",model_version=\"3\"} 4\n\
                go_goroutines 8\n";
    let r = recognised(text);
    assert_eq!(
        selectors(&r),
        [
            r#"http_requests_total{handler="/predict"}"#,
            r#"http_requests_total{handler="/predict",code=~"5.."}"#,
            r#"http_request_duration_seconds{handler="/predict"}"#,
            "inference_total",
            "predicted_class"
        ]
    );
    assert_eq!(r.version_label.as_deref(), Some("model_version"));
}

#[test]
fn backends_of_different_kinds_are_refused() {
    let both = [
        (
            "http://198.18.0.11:8080/metrics".to_string(),
            catalogue(CLIENT),
        ),
        (
            "http://198.18.0.12:8080/metrics".to_string(),
            catalogue(CANARY_MODEL),
        ),
    ];
    let e = propose(&both, DEFAULT_ROUTE).unwrap_err();
    let text = e.to_string();
    assert_eq!(e.0.len(), 1, "{text}");
    assert_eq!(e.0[0].signal, "backends", "{text}");
    assert!(
        text.contains("saw: http://198.18.0.12:8080/metrics: requests requests_total, errors request_errors_total"),
        "{text}"
    );
    assert!(text.contains("different kinds of server"), "{text}");
    // A backend that exports nothing of the kind is named too.
    let stray = [
        (
            "http://198.18.0.11:8080/metrics".to_string(),
            catalogue(CLIENT),
        ),
        (
            "http://198.18.0.12:8080/metrics".to_string(),
            catalogue("# TYPE up gauge\nup 1\n"),
        ),
    ];
    let text = propose(&stray, DEFAULT_ROUTE).unwrap_err().to_string();
    assert!(
        text.contains("http://198.18.0.12:8080/metrics does not export http_request_duration_seconds, http_requests_total, model_predictions_total"),
        "{text}"
    );
}

#[test]
fn a_fresh_canary_is_recognised_together_with_a_stable_that_served() {
    // The canary has had no traffic yet: its families are declared, the stable's series say
    // which route and status labels they carry.
    let both = [
        (
            "http://198.18.0.11:8080/metrics".to_string(),
            catalogue(CLIENT),
        ),
        (
            "http://198.18.0.13:8080/metrics".to_string(),
            catalogue(CLIENT_FRESH),
        ),
    ];
    let p = propose(&both, DEFAULT_ROUTE).expect("recognised");
    assert_eq!(selectors(&p.recognised), selectors(&recognised(CLIENT)));
}

fn draft() -> ServiceDraft {
    let backend = |name: &str, group, last: u8| BackendDraft {
        name: name.into(),
        group,
        address: IpAddr::from([198, 18, 0, last]),
        health_url: format!("http://198.18.0.{last}:8080/healthz"),
        metrics_url: format!("http://198.18.0.{last}:8080/metrics"),
    };
    ServiceDraft {
        name: "sentiment".into(),
        vip: "198.18.0.100:8080".parse().unwrap(),
        backends: vec![
            backend("stable-1", Group::Stable, 11),
            backend("stable-2", Group::Stable, 12),
            backend("canary-1", Group::Canary, 13),
        ],
    }
}

#[test]
fn each_recorded_server_matches_its_preset() {
    for (text, preset) in [
        (CANARY_MODEL, "canary-model"),
        (CLIENT, "prometheus-client"),
        (INSTRUMENTATOR, "fastapi-instrumentator"),
    ] {
        let p = propose(&[("m".into(), catalogue(text))], DEFAULT_ROUTE).expect("recognised");
        assert_eq!(p.preset, Some(preset));
    }
    // Another route: the same library, but not its preset's selectors.
    let p = propose(&[("m".into(), catalogue(CLIENT))], "/healthz").expect("recognised");
    assert_eq!(p.preset, None);
}

#[test]
fn the_section_validates_and_names_the_recognised_series() {
    for (text, route) in [
        (CANARY_MODEL, DEFAULT_ROUTE),
        (CLIENT, DEFAULT_ROUTE),
        (INSTRUMENTATOR, DEFAULT_ROUTE),
        // No preset: explicit selectors.
        (CLIENT, "/healthz"),
    ] {
        let p = propose(&[("m".into(), catalogue(text))], route).expect("recognised");
        let section = render(&draft(), &p);
        let config = Config::from_toml_str(&section)
            .unwrap_or_else(|e| panic!("the section does not validate: {e}\n{section}"));
        let s = &config.services[0];
        assert_eq!(s.name, "sentiment");
        assert_eq!(s.backends.len(), 3);
        assert_eq!(s.group(Group::Canary).count(), 1);
        assert_eq!(
            s.backends[2].metrics_url, "http://198.18.0.13:8080/metrics",
            "{section}"
        );
        assert!(section.contains("# Written by `canary init`"), "{section}");
        let u = &s.upstream;
        let resolved = [
            u.requests.to_string(),
            u.errors.to_string(),
            u.latency.to_string(),
            u.predictions.to_string(),
            u.prediction_label.clone(),
        ];
        assert_eq!(resolved, selectors(&p.recognised), "{section}");
        assert_eq!(
            u.version_label,
            p.recognised.version_label.clone().unwrap_or_default()
        );
        assert_eq!(u.preset.as_deref(), p.preset, "{section}");
        if p.preset.is_some() {
            assert!(section.contains("  # which is:\n"), "{section}");
        } else {
            assert!(
                section.contains("\n  requests = 'http_requests_total{route=\"/healthz\"}'\n"),
                "{section}"
            );
        }
    }
}
