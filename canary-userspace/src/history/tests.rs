//! The store's bounds and the report's series.

use super::*;
use crate::domain::Weight;
use crate::rollout::{DecisionAction, Phase};

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("canary-history-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn sample(at_ms: u64, weight: f64) -> Sample {
    let group = |rate: f64, p95: f64| GroupSample {
        requests: 1000,
        errors: (rate * 1000.0) as u64,
        error_rate: Some(rate),
        latency_p95_ms: Some(p95),
        predictions: BTreeMap::from([("positive".into(), 600), ("negative".into(), 400)]),
    };
    Sample {
        at_ms,
        phase: "stepping".into(),
        weight_percent: weight,
        measured_percent: Some(weight * 0.98),
        stable: group(0.01, 120.0),
        canary: group(0.02, 180.0),
    }
}

#[test]
fn samples_are_thinned_not_lost_and_rollouts_are_bounded() {
    let mut h = History::default();
    for i in 0..(MAX_SAMPLES as u64 + 10) {
        h.push_sample(sample(i, 10.0));
    }
    assert!(h.samples.len() <= MAX_SAMPLES);
    assert_eq!(h.samples[0].at_ms, 0, "the start stays covered");
    assert_eq!(h.samples.last().unwrap().at_ms, MAX_SAMPLES as u64 + 9);
    assert_eq!(h.thinned, (MAX_SAMPLES / 2) as u64);

    let d = dir("bounded");
    let store = HistoryStore::new(&d);
    for id in 0..(ROLLOUTS_KEPT as u64 + 3) {
        store
            .save(&History {
                service: "sentiment".into(),
                rollout: 1000 + id,
                ..History::default()
            })
            .unwrap();
    }
    let ids = store.rollouts("sentiment").unwrap();
    assert_eq!(ids.len(), ROLLOUTS_KEPT);
    assert_eq!(ids[0], 1003, "the oldest are removed");
    assert!(store.rollouts("../etc").unwrap().is_empty());
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_report_holds_every_series_and_each_decision() {
    let mut h = History {
        service: "sentiment".into(),
        rollout: 1_000_000,
        ..History::default()
    };
    for i in 0..60u64 {
        h.push_sample(sample(
            1_000_000 + i * 1000,
            if i < 30 { 10.0 } else { 50.0 },
        ));
    }
    h.push_decision(Decision {
        at_ms: 1_030_000,
        action: DecisionAction::Step,
        reason: crate::judge::Reason::Healthy,
        phase: Phase::Stepping,
        from: Weight::from_basis_points(1000),
        to: Weight::from_basis_points(5000),
        message: "every signal passed at look 2".into(),
        judgement: None,
    });
    h.push_decision(Decision {
        at_ms: 1_059_000,
        action: DecisionAction::Rollback,
        reason: crate::judge::Reason::LatencyP95,
        phase: Phase::RolledBack,
        from: Weight::from_basis_points(5000),
        to: Weight::ZERO,
        message: "canary is worse on latency_p95 <at look 3>".into(),
        judgement: None,
    });
    let svg = render::svg(&h).unwrap();
    assert!(svg.starts_with("<svg"), "{}", &svg[..100.min(svg.len())]);
    for name in render::SERIES {
        assert!(svg.contains(name), "series {name:?} missing");
    }
    for name in [
        "stable positive %",
        "canary negative %",
        "step 50% (healthy)",
        "rollback 0% (latency_p95)",
    ] {
        assert!(svg.contains(name), "{name:?} missing");
    }
    // Lines, not just labels: one polyline per series with points.
    assert!(svg.matches("<polyline").count() >= 10, "{svg}");
    let html = render::html(&h).unwrap();
    assert!(html.contains("<svg") && html.contains("&lt;at look 3&gt;"));
}
