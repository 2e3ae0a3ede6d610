use std::collections::BTreeMap;

use super::stats::{newcombe, wilson};
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

fn run(stable: &Window, canary: &Window, look: u32) -> Judgement {
    let flows = FlowCounts {
        stable: 9000,
        canary: 1000,
    };
    let input = JudgeInput {
        stable,
        canary,
        flows,
        weight: Weight::from_basis_points(1000),
        look,
    };
    judge(
        &input,
        &RolloutConfig::default(),
        &UpstreamConfig::default(),
    )
}

#[test]
fn alpha_spending_sums_to_alpha() {
    let total: f64 = (1..=1_000_000).map(|k| alpha_at_look(0.01, k)).sum();
    assert!((total - 0.01).abs() < 1e-7, "{total}");
    assert!(alpha_at_look(0.01, 2) < alpha_at_look(0.01, 1));
}

#[test]
fn newcombe_matches_the_published_example() {
    // Newcombe (1998), example (a): 56/70 - 48/80, 95% interval 0.0524 to 0.3339.
    let (low, high) = newcombe(56, 70, 48, 80, 1.959_964);
    assert!((low - 0.0524).abs() < 5e-4, "{low}");
    assert!((high - 0.3339).abs() < 5e-4, "{high}");
    let (l, h) = wilson(0, 100, 1.96);
    assert!(l == 0.0 && (h - 0.037).abs() < 1e-3, "{h}");
}

#[test]
fn healthy_canary_is_promoted_with_every_signal_passing() {
    let j = run(&healthy(20_000), &healthy(4000), 1);
    assert_eq!(j.verdict, Verdict::Promote, "{j}");
    assert_eq!(j.reason, Reason::Healthy);
    assert_eq!(j.look, Some(1));
    assert_eq!(j.rollback_signals, 4);
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
fn holds_below_min_samples_without_spending_a_look() {
    let j = run(&healthy(20_000), &healthy(999), 3);
    assert_eq!(
        (j.verdict, j.reason),
        (Verdict::Hold, Reason::InsufficientSamples),
        "{j}"
    );
    assert_eq!(j.look, None);
    // Even an obviously bad canary is not judged below min_samples (the spike guards it).
    let mut bad = healthy(999);
    bad.errors = Series::Present(500);
    assert_eq!(run(&healthy(20_000), &bad, 1).verdict, Verdict::Hold);
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
        latency: crate::upstream::Selector::default(),
        ..UpstreamConfig::default()
    };
    let stable = healthy(20_000);
    let input = JudgeInput {
        stable: &stable,
        canary: &canary,
        flows: FlowCounts::default(),
        weight: Weight::from_basis_points(1000),
        look: 1,
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
fn later_looks_need_stronger_evidence() {
    let mut canary = healthy(1000);
    canary.errors = Series::Present(30);
    let early = run(&healthy(9000), &canary, 1);
    let late = run(&healthy(9000), &canary, 50);
    let (e, l) = (
        early.signal(Signal::ErrorRate).unwrap(),
        late.signal(Signal::ErrorRate).unwrap(),
    );
    assert!(l.lower.unwrap() < e.lower.unwrap() && l.upper.unwrap() > e.upper.unwrap());
    assert!(late.alpha < early.alpha / 1000.0);
}

#[test]
fn flow_share_far_from_weight_is_flagged_not_decisive() {
    let (s, c) = (healthy(20_000), healthy(4000));
    let input = JudgeInput {
        stable: &s,
        canary: &c,
        flows: FlowCounts {
            stable: 5000,
            canary: 5000,
        },
        weight: Weight::from_basis_points(1000),
        look: 1,
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
fn spike_needs_rate_and_a_minimum_count() {
    let t = Thresholds::default();
    let poll = |n, x| Window {
        requests: Series::Present(n),
        errors: Series::Present(x),
        ..Window::missing()
    };
    assert_eq!(
        error_spike(&poll(50, 10), &t).unwrap().verdict,
        SignalVerdict::Fail
    );
    assert_eq!(
        error_spike(&poll(10, 3), &t).unwrap().verdict,
        SignalVerdict::Ok,
        "3 errors are too few"
    );
    assert_eq!(
        error_spike(&poll(100, 9), &t).unwrap().verdict,
        SignalVerdict::Ok
    );
    assert!(error_spike(&poll(0, 0), &t).is_none());
    assert!(error_spike(&Window::missing(), &t).is_none());
}

#[test]
fn judgement_serializes_and_displays() {
    let mut canary = healthy(4000);
    canary.errors = Series::Present(240);
    let j = run(&healthy(20_000), &canary, 2);
    let json = serde_json::to_string(&j).unwrap();
    let back: Judgement = serde_json::from_str(&json).unwrap();
    assert_eq!(
        (back.verdict, back.reason, back.look),
        (j.verdict, j.reason, j.look)
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
        text.starts_with("rollback (error_rate) at look 2"),
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

#[test]
fn dry_run_signal_is_judged_and_reported_but_never_rolls_back_or_holds() {
    let canary = window(4000, 40, lognormal_histogram(4000, 100.0, 0.5, 100.0), 0.6);
    let input = JudgeInput {
        stable: &healthy(20_000),
        canary: &canary,
        flows: FlowCounts {
            stable: 9000,
            canary: 1000,
        },
        weight: Weight::from_basis_points(1000),
        look: 1,
    };
    let mut rollout = RolloutConfig {
        dry_run: vec![Signal::LatencyMean],
        ..RolloutConfig::default()
    };
    // p95 still decides: rollback on it, the mean is reported as a dry-run failure.
    let j = judge(&input, &rollout, &UpstreamConfig::default());
    assert_eq!(j.verdict, Verdict::Rollback, "{j}");
    assert_eq!(j.reason, Reason::LatencyP95, "{j}");
    let mean = j.signal(Signal::LatencyMean).unwrap();
    assert!(mean.dry_run && mean.verdict == SignalVerdict::Fail, "{j}");
    assert!(j.to_string().contains("dry run"), "{j}");

    // Both latency signals in dry run: the canary is promoted on the others.
    rollout.dry_run.push(Signal::LatencyP95);
    let j = judge(&input, &rollout, &UpstreamConfig::default());
    assert_eq!(j.verdict, Verdict::Promote, "{j}");
    assert_eq!(j.reason, Reason::Healthy, "{j}");
    for s in [Signal::LatencyMean, Signal::LatencyP95] {
        let r = j.signal(s).unwrap();
        assert!(r.dry_run && r.verdict == SignalVerdict::Fail, "{j}");
    }
    assert!(!j.signal(Signal::ErrorRate).unwrap().dry_run);
    // The flag survives serialisation (status, notifications, the state file).
    let back: Judgement = serde_json::from_str(&serde_json::to_string(&j).unwrap()).unwrap();
    assert!(back.signal(Signal::LatencyP95).unwrap().dry_run);

    // An inconclusive dry-run signal does not hold either: a small shift with little data.
    let stable = healthy(2000);
    let canary = window(2000, 20, lognormal_histogram(2000, 100.0, 0.5, 8.0), 0.6);
    let input = JudgeInput {
        stable: &stable,
        canary: &canary,
        ..input
    };
    let j = judge(
        &input,
        &RolloutConfig::default(),
        &UpstreamConfig::default(),
    );
    if j.verdict == Verdict::Hold {
        let j = judge(&input, &rollout, &UpstreamConfig::default());
        assert_ne!(j.verdict, Verdict::Hold, "{j}");
    }
}
