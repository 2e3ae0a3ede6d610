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

const NO_UNITS: Units<'static> = Units {
    current: [&EMPTY, &EMPTY],
    earlier: [&EMPTY, &EMPTY],
};
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
        latency: crate::upstream::Selector::default(),
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

/// Units of one backend: `polls` windows of `n` requests with the given errors.
fn backend_units(batches: &mut Batches, name: &str, n: u64, errors: &[u64]) {
    for &x in errors {
        batches.add(
            name,
            &Window {
                requests: Series::Present(n),
                errors: Series::Present(x),
                latency: Series::Present(lognormal_histogram(n, 100.0, 0.5, 0.0)),
                predictions: Series::Present(BTreeMap::from([
                    ("positive".to_string(), n * 6 / 10),
                    ("negative".to_string(), n - n * 6 / 10),
                ])),
            },
        );
    }
}

/// What the i.i.d. bounds got wrong: a few clients that fail often land on the canary's
/// backends (clustered errors, as keep-alive connections make them). The same totals judged
/// as independent requests roll back; with the units the judge sees the clustering (the
/// stable side has it too) and does not.
#[test]
fn clustered_errors_widen_the_bounds() {
    // Errors come in runs of 4 polls, a different run on each backend (a client that fails
    // often, on its keep-alive connection). Stable: 4 backends x 32 polls x 150 requests.
    let burst = |i: usize, b: usize, size: u64| {
        if (i / 4 + b).is_multiple_of(4) {
            size
        } else {
            0
        }
    };
    let mut stable_units = Batches::default();
    for b in 0..4 {
        let errors: Vec<u64> = (0..32).map(|i| burst(i, b, 6)).collect();
        backend_units(&mut stable_units, &format!("s{b}"), 150, &errors);
    }
    // Canary: 2 backends x 32 polls x 50 requests.
    let mut canary_units = Batches::default();
    for b in 0..2 {
        let errors: Vec<u64> = (0..32).map(|i| burst(i, b, 5)).collect();
        backend_units(&mut canary_units, &format!("c{b}"), 50, &errors);
    }
    let total = |u: &Batches| -> (u64, u64) {
        u.units().fold((0, 0), |(n, x), w| {
            (
                n + w.requests.present().unwrap(),
                x + w.errors.present().unwrap(),
            )
        })
    };
    let ((n_s, x_s), (n_c, x_c)) = (total(&stable_units), total(&canary_units));
    let stable = window(n_s, x_s, lognormal_histogram(n_s, 100.0, 0.5, 0.0), 0.6);
    let canary = window(n_c, x_c, lognormal_histogram(n_c, 100.0, 0.5, 0.0), 0.6);
    assert!((x_c as f64 / n_c as f64) > 2.0 * (x_s as f64 / n_s as f64));
    let flows = FlowCounts {
        stable: 5000,
        canary: 1000,
    };
    let judged = |units: Units<'_>| {
        let input = JudgeInput {
            stable: &stable,
            canary: &canary,
            units,
            flows,
            weight: Weight::from_basis_points(1000),
            window: 1,
        };
        judge(
            &input,
            &RolloutConfig::default(),
            &UpstreamConfig::default(),
        )
    };
    let naive = judged(NO_UNITS);
    assert_eq!(
        (naive.verdict, naive.reason),
        (Verdict::Rollback, Reason::ErrorRate),
        "{naive}"
    );
    let robust = judged(Units {
        current: [&stable_units, &canary_units],
        earlier: [&EMPTY, &EMPTY],
    });
    let e = robust.signal(Signal::ErrorRate).unwrap();
    assert_ne!(e.verdict, SignalVerdict::Fail, "{robust}");
    assert!(e.design_effect.unwrap() > 2.0, "{e}");
    assert_ne!(robust.verdict, Verdict::Rollback, "{robust}");
}

/// Few flows: a canary whose numbers come from a handful of clients is not rolled back on
/// them, however clear they look.
#[test]
fn too_few_flows_hold_a_rollback() {
    let mut canary = healthy(4000);
    canary.errors = Series::Present(240);
    let stable = healthy(20_000);
    let input = |flows| JudgeInput {
        stable: &stable,
        canary: &canary,
        units: NO_UNITS,
        flows,
        weight: Weight::from_basis_points(1000),
        window: 1,
    };
    let cfg = RolloutConfig::default();
    let few = judge(
        &input(FlowCounts {
            stable: 400,
            canary: 12,
        }),
        &cfg,
        &UpstreamConfig::default(),
    );
    assert_eq!(few.verdict, Verdict::Hold, "{few}");
    assert!(few.signals[0].note.contains("too few clients"), "{few}");
    let many = judge(
        &input(FlowCounts {
            stable: 400,
            canary: 60,
        }),
        &cfg,
        &UpstreamConfig::default(),
    );
    assert_eq!(many.verdict, Verdict::Rollback, "{many}");
}

fn class_window(n: u64, shares: &[f64], rng: &mut rand::rngs::StdRng) -> Window {
    use rand_distr::{Binomial, Distribution};
    // Multinomial by sequential binomials.
    let mut left = n;
    let mut rest = 1.0;
    let mut classes = BTreeMap::new();
    for (i, p) in shares.iter().enumerate() {
        let c = if i + 1 == shares.len() || rest <= 0.0 {
            left
        } else {
            Binomial::new(left, (p / rest).min(1.0))
                .unwrap()
                .sample(rng)
        };
        classes.insert(format!("c{i:03}"), c);
        left -= c;
        rest -= p;
    }
    Window {
        requests: Series::Present(n),
        errors: Series::Present(n / 100),
        latency: Series::Present(lognormal_histogram(n, 100.0, 0.5, 0.0)),
        predictions: Series::Present(classes),
    }
}

fn zipf(k: usize) -> Vec<f64> {
    let raw: Vec<f64> = (1..=k).map(|i| 1.0 / i as f64).collect();
    let total: f64 = raw.iter().sum();
    raw.iter().map(|v| v / total).collect()
}

/// Twenty classes (Zipf): the same distribution passes; one moved by 0.2 toward uniform rolls
/// back.
#[test]
fn twenty_classes_pass_when_equal_and_fail_when_shifted() {
    use rand::SeedableRng;
    let mut rng = rand::rngs::StdRng::seed_from_u64(20);
    let shares = zipf(20);
    let stable = class_window(18_000, &shares, &mut rng);
    let same = class_window(2000, &shares, &mut rng);
    let j = run(&stable, &same, 1);
    let p = j.signal(Signal::Predictions).unwrap();
    assert_eq!(p.verdict, SignalVerdict::Pass, "{p}");
    assert!(p.note.starts_with("20 classes"), "{p}");
    // Toward uniform by a mixture whose total variation distance is 0.2.
    let to_uniform: f64 = shares.iter().map(|s| (s - 0.05).abs()).sum::<f64>() / 2.0;
    let w = 0.2 / to_uniform;
    let shifted: Vec<f64> = shares.iter().map(|s| (1.0 - w) * s + w * 0.05).collect();
    let moved = class_window(2000, &shifted, &mut rng);
    let j = run(&stable, &moved, 1);
    assert_eq!(
        (j.verdict, j.reason),
        (Verdict::Rollback, Reason::PredictionShift),
        "{j}"
    );
    let p = j.signal(Signal::Predictions).unwrap();
    assert!((p.estimate.unwrap() - 0.2).abs() < 0.05, "{p}");
}

/// Sparse classes are pooled: twenty classes with a small canary leave the rare ones in one
/// cell (the chi-square approximation needs expected counts of 5).
#[test]
fn sparse_classes_are_pooled() {
    use rand::SeedableRng;
    let mut rng = rand::rngs::StdRng::seed_from_u64(21);
    let shares = zipf(20);
    let stable = class_window(9000, &shares, &mut rng);
    let canary = class_window(150, &shares, &mut rng);
    let j = run(&stable, &canary, 1);
    let p = j.signal(Signal::Predictions).unwrap();
    let pooled: usize = p
        .note
        .split(" pooled")
        .next()
        .and_then(|s| s.rsplit('(').next())
        .and_then(|s| s.trim().parse().ok())
        .unwrap();
    assert!(pooled >= 5, "{p}");
    assert_ne!(p.verdict, SignalVerdict::Fail, "{p}");
}

/// What the plug-in distance got wrong: with 100 equally likely classes every class adds its
/// noise, so the plug-in distance of two identical distributions is far above zero and the
/// old bound (plug-in plus per-class margins) stays above the threshold at 4,000 canary
/// requests. The bias-corrected bound passes.
#[test]
fn many_classes_pass_with_the_bias_corrected_bound() {
    use rand::SeedableRng;
    let mut rng = rand::rngs::StdRng::seed_from_u64(100);
    let shares = vec![0.01; 100];
    let stable = class_window(36_000, &shares, &mut rng);
    let canary = class_window(4000, &shares, &mut rng);
    let j = run(&stable, &canary, 1);
    let p = j.signal(Signal::Predictions).unwrap();
    let plug_in: f64 = p
        .note
        .rsplit("plug-in distance ")
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(plug_in > 0.05, "{p}");
    assert!(p.estimate.unwrap() < plug_in / 2.0, "{p}");
    // The old bound: plug-in plus a Bonferroni margin per class.
    let margin: f64 = 100.0 * (0.01 * 0.99 * (1.0 / 4000.0 + 1.0 / 36_000.0_f64)).sqrt();
    assert!(plug_in + 3.9 * margin / 2.0 > 0.1);
    assert_eq!(p.verdict, SignalVerdict::Pass, "{p}");
}

/// What the absolute margin got wrong: at 0.1 % errors a canary ten times worse is within
/// +2 percentage points and was promoted; a relative threshold rolls it back.
#[test]
fn a_ratio_catches_ten_times_worse_at_a_low_rate() {
    let stable = window(
        40_000,
        40,
        lognormal_histogram(40_000, 100.0, 0.5, 0.0),
        0.6,
    );
    let canary = window(5000, 50, lognormal_histogram(5000, 100.0, 0.5, 0.0), 0.6);
    let absolute = run(&stable, &canary, 1);
    assert_eq!(absolute.verdict, Verdict::Promote, "{absolute}");
    let mut cfg = RolloutConfig::default();
    cfg.thresholds.max_error_rate_ratio = 2.0;
    let relative = run_with(&stable, &canary, 1, &cfg);
    assert_eq!(
        (relative.verdict, relative.reason),
        (Verdict::Rollback, Reason::ErrorRate),
        "{relative}"
    );
    let e = relative.signal(Signal::ErrorRate).unwrap();
    assert!((e.ratio.unwrap() - 10.0).abs() < 1e-9, "{e}");
    // An equal canary is not rolled back by the ratio; proving "at most 2x" at 0.1 % takes
    // many requests, so it holds.
    let equal = window(5000, 5, lognormal_histogram(5000, 100.0, 0.5, 0.0), 0.6);
    let j = run_with(&stable, &equal, 1, &cfg);
    assert_eq!(j.verdict, Verdict::Hold, "{j}");
    assert!(j.signal(Signal::ErrorRate).unwrap().ratio_upper.unwrap() > 2.0);
}

#[test]
fn latency_ratio_applies_to_mean_and_p95() {
    let mut cfg = RolloutConfig::default();
    cfg.thresholds.max_latency_ratio = 1.2;
    // +30 ms on a 100 ms median is within +50 ms but 1.3x.
    let stable = healthy(20_000);
    let slower = window(4000, 40, lognormal_histogram(4000, 100.0, 0.5, 30.0), 0.6);
    assert_eq!(run(&stable, &slower, 1).verdict, Verdict::Promote);
    let j = run_with(&stable, &slower, 1, &cfg);
    assert_eq!(j.verdict, Verdict::Rollback, "{j}");
    assert!(matches!(j.reason, Reason::LatencyMean | Reason::LatencyP95));
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
        units: NO_UNITS,
        window: 1,
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
