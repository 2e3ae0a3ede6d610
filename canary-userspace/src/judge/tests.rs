use std::collections::BTreeMap;

use super::stats::{folded_mean, folded_mean_inverse, newcombe, ratio_upper, wilson};
use super::*;
use crate::upstream::Histogram;
use statrs::distribution::{ContinuousCDF, Normal};

/// Latency buckets (seconds) used by the tests and the simulation.
pub(crate) const BOUNDS: [f64; 14] = [
    0.01, 0.025, 0.05, 0.075, 0.1, 0.125, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 1.0, 2.5,
];

/// Histogram of `n` deterministic log-normal latencies (median `median_ms`, shape
/// `sigma`), shifted by `shift_ms`.
pub(crate) fn lognormal_histogram(n: u64, median_ms: f64, sigma: f64, shift_ms: f64) -> Histogram {
    let normal = Normal::standard();
    let mut h = Histogram::empty(BOUNDS.to_vec());
    for i in 0..n {
        let z = normal.inverse_cdf((i as f64 + 0.5) / n as f64);
        let v = (median_ms * (sigma * z).exp() + shift_ms) / 1000.0;
        for (b, c) in h.bounds.iter().zip(h.cumulative.iter_mut()) {
            if v <= *b {
                *c += 1.0;
            }
        }
        h.count += 1.0;
        h.sum += v;
    }
    h
}

pub(crate) fn window(n: u64, errors: u64, latency: Histogram, positive_share: f64) -> Window {
    let positive = (n as f64 * positive_share).round() as u64;
    Window {
        requests: Series::Present(n),
        errors: Series::Present(errors),
        latency: Series::Present(latency),
        predictions: Series::Present(BTreeMap::from([
            ("positive".to_string(), positive),
            ("negative".to_string(), n - positive),
        ])),
    }
}

fn healthy(n: u64) -> Window {
    window(n, n / 100, lognormal_histogram(n, 100.0, 0.5, 0.0), 0.6)
}

const NO_UNITS: [&Batches; 2] = [&EMPTY, &EMPTY];
static EMPTY: Batches = Batches {
    backends: std::collections::BTreeMap::new(),
};

fn run_with(stable: &Window, canary: &Window, window: u32, cfg: &RolloutConfig) -> Judgement {
    let flows = FlowCounts {
        stable: 9000,
        canary: 1000,
    };
    let input = JudgeInput {
        stable,
        canary,
        units: NO_UNITS,
        flows,
        weight: Weight::from_basis_points(1000),
        window,
    };
    judge(&input, cfg, &UpstreamConfig::default())
}

fn run(stable: &Window, canary: &Window, window: u32) -> Judgement {
    run_with(stable, canary, window, &RolloutConfig::default())
}

#[test]
fn newcombe_matches_the_published_example() {
    // Newcombe (1998), example (a): 56/70 - 48/80, 95% interval 0.0524 to 0.3339.
    let (low, high) = newcombe(56.0, 70.0, 48.0, 80.0, 1.959_964);
    assert!((low - 0.0524).abs() < 5e-4, "{low}");
    assert!((high - 0.3339).abs() < 5e-4, "{high}");
    let (l, h) = wilson(0.0, 100.0, 1.96);
    assert!(l == 0.0 && (h - 0.037).abs() < 1e-3, "{h}");
}

#[test]
fn ratio_bound_matches_the_published_example() {
    // Donner and Zou (2012): ratio of two means 2.0 (0.5 .. 1.5 against 0.8 .. 1.2): the
    // MOVER-R upper limit solves the same quadratic; check it against a direct search.
    let a = (1.0, 0.5, 1.5);
    let b = (1.0, 0.8, 1.2);
    let u = ratio_upper(a, b);
    // MOVER: upper limit of a - u b is 0 at the limit.
    let l_contrast = (a.0 - u * b.0) + ((a.2 - a.0).powi(2) + (u * (b.0 - b.1)).powi(2)).sqrt();
    assert!(l_contrast.abs() < 1e-9, "{u} {l_contrast}");
    assert!(u > 1.5 && u < 2.0, "{u}");
    assert!(ratio_upper(a, (1.0, 0.0, 2.0)).is_infinite());
}

#[test]
fn folded_mean_inverts() {
    assert!((folded_mean(0.0) - (2.0 / std::f64::consts::PI).sqrt()).abs() < 1e-12);
    for c in [0.1, 0.5, 1.0, 2.0, 5.0] {
        assert!(
            (folded_mean_inverse(folded_mean(c)) - c).abs() < 1e-9,
            "{c}"
        );
    }
    assert!(folded_mean_inverse(0.1).abs() < 1e-12);
}

#[test]
fn healthy_canary_is_promoted_with_every_signal_passing() {
    let j = run(&healthy(20_000), &healthy(4000), 1);
    assert_eq!(j.verdict, Verdict::Promote, "{j}");
    assert_eq!(j.reason, Reason::Healthy);
    assert_eq!(j.window, 1);
    assert_eq!(j.rollback_signals, 4);
    assert!((j.rollback_level - 0.01 * 0.8 / 5.0 / 4.0).abs() < 1e-12);
    for s in [
        Signal::ErrorRate,
        Signal::LatencyMean,
        Signal::LatencyP95,
        Signal::Predictions,
    ] {
        assert_eq!(j.signal(s).unwrap().verdict, SignalVerdict::Pass, "{j}");
    }
    assert_eq!(
        j.signal(Signal::FlowShare).unwrap().verdict,
        SignalVerdict::Ok
    );
}

#[test]
fn higher_error_rate_rolls_back() {
    let mut canary = healthy(4000);
    canary.errors = Series::Present(240); // 6% against 1%
    let j = run(&healthy(20_000), &canary, 1);
    assert_eq!(
        (j.verdict, j.reason),
        (Verdict::Rollback, Reason::ErrorRate),
        "{j}"
    );
    let e = j.signal(Signal::ErrorRate).unwrap();
    assert!(e.lower.unwrap() > 0.0 && e.p_value.unwrap() < 1e-6, "{e}");
    assert!((e.canary.unwrap() - 0.06).abs() < 1e-12);
}

#[test]
fn slower_canary_rolls_back_on_latency() {
    let canary = window(4000, 40, lognormal_histogram(4000, 100.0, 0.5, 100.0), 0.6);
    let j = run(&healthy(20_000), &canary, 1);
    assert_eq!(j.verdict, Verdict::Rollback, "{j}");
    assert_eq!(j.reason, Reason::LatencyMean, "{j}");
    assert_eq!(
        j.signal(Signal::LatencyP95).unwrap().verdict,
        SignalVerdict::Fail,
        "{j}"
    );
}

#[test]
fn heavier_tail_fails_p95() {
    // Same median, much wider spread: p95 grows by far more than 50 ms.
    let canary = window(4000, 40, lognormal_histogram(4000, 100.0, 0.9, 0.0), 0.6);
    let j = run(&healthy(20_000), &canary, 1);
    let p95 = j.signal(Signal::LatencyP95).unwrap();
    assert_eq!(p95.verdict, SignalVerdict::Fail, "{j}");
    assert!(p95.estimate.unwrap() > 100.0, "{p95}");
    assert_eq!(j.verdict, Verdict::Rollback);
}

#[test]
fn prediction_shift_rolls_back() {
    let canary = window(4000, 40, lognormal_histogram(4000, 100.0, 0.5, 0.0), 0.8);
    let j = run(&healthy(20_000), &canary, 1);
    assert_eq!(
        (j.verdict, j.reason),
        (Verdict::Rollback, Reason::PredictionShift),
        "{j}"
    );
    let p = j.signal(Signal::Predictions).unwrap();
    assert!((p.estimate.unwrap() - 0.2).abs() < 1e-3, "{p}");
    assert!(
        p.statistic.unwrap() > 100.0 && p.p_value.unwrap() < 1e-10,
        "{p}"
    );
}

#[test]
fn below_min_samples_only_strong_evidence_rolls_back() {
    let j = run(&healthy(20_000), &healthy(999), 3);
    assert_eq!(
        (j.verdict, j.reason),
        (Verdict::Hold, Reason::InsufficientSamples),
        "{j}"
    );
    // Mildly worse (3 % against 1 %) with 300 canary requests: not yet.
    let mut mild = healthy(300);
    mild.errors = Series::Present(9);
    assert_eq!(run(&healthy(2700), &mild, 1).verdict, Verdict::Hold);
    // Obviously bad: 50 % errors over 200 requests rolls back long before min_samples.
    let mut bad = healthy(200);
    bad.errors = Series::Present(100);
    let j = run(&healthy(1800), &bad, 1);
    assert_eq!(
        (j.verdict, j.reason),
        (Verdict::Rollback, Reason::ErrorRate),
        "{j}"
    );
    // A promotion never comes below min_samples, however good the canary looks.
    let mut perfect = healthy(999);
    perfect.errors = Series::Present(0);
    assert_ne!(run(&healthy(20_000), &perfect, 1).verdict, Verdict::Promote);
}

#[test]
fn missing_metrics_hold_and_are_named() {
    let mut canary = healthy(4000);
    canary.latency = Series::Missing;
    let j = run(&healthy(20_000), &canary, 1);
    assert_eq!(
        (j.verdict, j.reason),
        (Verdict::Hold, Reason::MetricsMissing),
        "{j}"
    );
    assert_eq!(j.signals[0].note, "missing: canary.latency");
    // A switched-off signal is not required.
    let upstream = UpstreamConfig {
        latency: String::new(),
        ..UpstreamConfig::default()
    };
    let stable = healthy(20_000);
    let input = JudgeInput {
        stable: &stable,
        canary: &canary,
        units: NO_UNITS,
        flows: FlowCounts::default(),
        weight: Weight::from_basis_points(1000),
        window: 1,
    };
    let j = judge(&input, &RolloutConfig::default(), &upstream);
    assert_eq!(j.verdict, Verdict::Promote, "{j}");
    assert_eq!(j.rollback_signals, 2);
    assert!(j.signal(Signal::LatencyMean).is_none());
}

#[test]
fn small_difference_with_little_data_is_inconclusive() {
    let mut canary = healthy(1000);
    canary.errors = Series::Present(19); // 1.9% against 1%: not yet clear either way
    let j = run(&healthy(9000), &canary, 1);
    assert_eq!(
        (j.verdict, j.reason),
        (Verdict::Hold, Reason::Inconclusive),
        "{j}"
    );
    assert_eq!(
        j.signal(Signal::ErrorRate).unwrap().verdict,
        SignalVerdict::Inconclusive
    );
}

#[test]
fn later_windows_get_a_smaller_share_and_looks_cost_nothing() {
    let mut canary = healthy(1000);
    canary.errors = Series::Present(30);
    let first = run(&healthy(9000), &canary, 1);
    // The same data judged again: the same bounds (no spending per look).
    assert_eq!(first, run(&healthy(9000), &canary, 1));
    // Windows beyond the configured steps share what is left.
    let late = run(&healthy(9000), &canary, 9);
    let (e, l) = (
        first.signal(Signal::ErrorRate).unwrap(),
        late.signal(Signal::ErrorRate).unwrap(),
    );
    assert!(l.lower.unwrap() < e.lower.unwrap());
    assert!(late.rollback_level < first.rollback_level / 10.0);
    // Promotion bounds are not split over windows.
    assert_eq!(l.upper, e.upper);
}

#[test]
fn flow_share_far_from_weight_is_flagged_not_decisive() {
    let (s, c) = (healthy(20_000), healthy(4000));
    let input = JudgeInput {
        stable: &s,
        canary: &c,
        units: NO_UNITS,
        flows: FlowCounts {
            stable: 5000,
            canary: 5000,
        },
        weight: Weight::from_basis_points(1000),
        window: 1,
    };
    let j = judge(
        &input,
        &RolloutConfig::default(),
        &UpstreamConfig::default(),
    );
    let f = j.signal(Signal::FlowShare).unwrap();
    assert_eq!(f.verdict, SignalVerdict::Warn, "{f}");
    assert!((f.canary.unwrap() - 0.5).abs() < 1e-12);
    assert_eq!(j.verdict, Verdict::Promote);
}

#[test]
fn judgement_serializes_and_displays() {
    let mut canary = healthy(4000);
    canary.errors = Series::Present(240);
    let j = run(&healthy(20_000), &canary, 2);
    let json = serde_json::to_string(&j).unwrap();
    let back: Judgement = serde_json::from_str(&json).unwrap();
    assert_eq!(
        (back.verdict, back.reason, back.window),
        (j.verdict, j.reason, j.window)
    );
    let verdicts = |j: &Judgement| {
        j.signals
            .iter()
            .map(|s| (s.signal, s.verdict))
            .collect::<Vec<_>>()
    };
    assert_eq!(verdicts(&back), verdicts(&j));
    let text = j.to_string();
    assert!(
        text.starts_with("rollback (error_rate) in step window 2"),
        "{text}"
    );
    assert!(text.contains("error_rate    FAIL"), "{text}");
    assert!(json.contains("\"reason\":\"error_rate\""), "{json}");
}

#[test]
fn quantile_interpolation_matches_prometheus() {
    let h = Histogram {
        bounds: vec![0.1, 0.2],
        cumulative: vec![50.0, 100.0],
        count: 100.0,
        sum: 10.0,
    };
    // rank 95 of 100 lies 90% into the (0.1, 0.2] bucket.
    assert!((h.value_at_rank(95.0).unwrap() - 0.19).abs() < 1e-12);
    assert!((h.value_at_rank(25.0).unwrap() - 0.05).abs() < 1e-12);
    let over = Histogram {
        bounds: vec![0.1],
        cumulative: vec![50.0],
        count: 100.0,
        sum: 10.0,
    };
    assert!(over.value_at_rank(95.0).is_none());
}
