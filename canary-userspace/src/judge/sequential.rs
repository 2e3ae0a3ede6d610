//! Anytime-valid bounds and how the error budget is shared.
//!
//! A confidence sequence holds at every sample size at once, so the judge may look after every
//! poll, as often as it likes, without inflating its error rate. The bounds here come from
//! Robbins' normal mixture: for a process with Gaussian increments, drift `mu` and intrinsic
//! time `V`, mixing the likelihood ratio over `mu ~ half-normal(0, 1/rho)` gives a nonnegative
//! martingale
//!
//! `M = 2 / sqrt(1 + r) * exp(w^2 / 2) * Phi(w)`, with `r = V / rho`, `w = S / sqrt(V + rho)`,
//!
//! and Ville's inequality bounds `P(M ever >= 1/a)` by `a`. In units of the standard error the
//! boundary is `z = w * sqrt(1 + 1/r)`, where `w` solves `exp(w^2/2) Phi(w) = sqrt(1+r) / (2a)`.
//! Plugging in estimated variances makes these asymptotic confidence sequences (Waudby-Smith
//! et al., "Time-uniform central limit theory and asymptotic confidence sequences").

use statrs::distribution::{ContinuousCDF, Normal};

/// The multiplier of the standard error for a one-sided confidence sequence at level `a`,
/// at `r` (intrinsic time over the mixture scale; see [`intrinsic_ratio`]).
pub fn mixture_z(a: f64, r: f64) -> f64 {
    let a = a.clamp(1e-300, 0.5);
    let r = r.max(1e-9);
    // ln(exp(w^2/2) Phi(w)) is increasing in w; solve ln form for stability.
    let target = 0.5 * (1.0 + r).ln() - (2.0 * a).ln();
    let normal = Normal::standard();
    let f = |w: f64| 0.5 * w * w + normal.cdf(w).ln() - target;
    let (mut lo, mut hi) = (-10.0_f64, 60.0_f64);
    if f(lo) >= 0.0 {
        return lo * (1.0 + 1.0 / r).sqrt();
    }
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if f(mid) >= 0.0 {
            hi = mid;
        } else {
            lo = mid;
        }
        if hi - lo < 1e-12 {
            break;
        }
    }
    hi * (1.0 + 1.0 / r).sqrt()
}

/// `r` for a confidence sequence at level `a` with `n` (effective) observations, tuned to be
/// tightest near `n_ref` observations (`rho` chosen as Waudby-Smith et al. suggest:
/// `r(n_ref) = 2 ln(1/a) + ln(1 + 2 ln(1/a))`).
pub fn intrinsic_ratio(n: f64, n_ref: f64, a: f64) -> f64 {
    let l = 2.0 * (1.0 / a.clamp(1e-300, 0.5)).ln();
    (n / n_ref.max(1.0)) * (l + (1.0 + l).ln())
}

/// The multiplier at level `a` for `n` observations tuned to `n_ref`.
pub fn cs_z(a: f64, n: f64, n_ref: f64) -> f64 {
    mixture_z(a, intrinsic_ratio(n, n_ref, a))
}

/// Effective number of pairs in a two-group comparison: `1 / (1/n_s + 1/n_c)`. It plays the
/// role of the sample size in the mixture (the variance of a difference scales as its inverse).
pub fn pairs(n_s: f64, n_c: f64) -> f64 {
    if n_s <= 0.0 || n_c <= 0.0 {
        0.0
    } else {
        1.0 / (1.0 / n_s + 1.0 / n_c)
    }
}

/// Share of the rollback budget that goes to the error spike check; the rest goes to the
/// judge's signals over each step's window.
pub const SPIKE_SHARE: f64 = 0.2;

/// Share of the window budget for the `window`-th step window (1-based) of a rollout whose
/// configuration has `judged_steps` steps below 100 %: `1 / (judged_steps + 1)` each for the
/// configured steps, and the last share spread as `6 / (pi^2 j^2)` over any further windows
/// (operator weight changes, restarts), so the shares sum to 1 over unboundedly many windows.
pub fn window_share(window: u32, judged_steps: u32) -> f64 {
    let s = f64::from(judged_steps.max(1));
    let w = window.max(1);
    if w <= judged_steps.max(1) {
        1.0 / (s + 1.0)
    } else {
        let j = f64::from(w - judged_steps.max(1));
        (1.0 / (s + 1.0)) * 6.0 / (std::f64::consts::PI.powi(2) * j * j)
    }
}

/// `sum over n >= 2 of 1 / (n ln^2 n)`.
pub const SPIKE_SERIES_SUM: f64 = 2.109_742_801_236_89;

/// Share of the spike budget spent at the `poll`-th tested poll (1-based) of a rollout:
/// `1 / (C (j+1) ln^2 (j+1))`, which sums to 1 over all polls and decays slowly (about
/// 1/90 of the budget at poll 10, 1/4,500 at poll 100, 1/100,000 at poll 1,000).
pub fn spike_share(poll: u32) -> f64 {
    let n = f64::from(poll.max(1)) + 1.0;
    1.0 / (SPIKE_SERIES_SUM * n * n.ln().powi(2))
}

/// The error levels of one look, each a probability.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Levels {
    /// One-sided level of each signal's rollback test over this window.
    pub rollback: f64,
    /// One-sided level of each signal's promotion bound (not split: promotion needs every
    /// signal to pass, an intersection-union test).
    pub promote: f64,
}

impl Levels {
    /// `alpha = 1 - confidence` over a whole rollout; `window` is the 1-based index of this
    /// step window in the rollout, `signals` the number of signals that may roll back.
    pub fn new(alpha: f64, window: u32, judged_steps: u32, signals: u32) -> Levels {
        let main = alpha * (1.0 - SPIKE_SHARE);
        Levels {
            rollback: main * window_share(window, judged_steps) / f64::from(signals.max(1)),
            promote: alpha,
        }
    }
}

/// Level of the spike test at the `poll`-th tested poll of a rollout.
pub fn spike_level(alpha: f64, poll: u32) -> f64 {
    alpha * SPIKE_SHARE * spike_share(poll)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use rand_distr::StandardNormal;

    #[test]
    fn mixture_boundary_solves_its_equation() {
        for &(a, r) in &[(0.01, 1.0), (1e-4, 10.0), (0.05, 0.1), (1e-3, 1000.0)] {
            let z = mixture_z(a, r);
            let w = z / (1.0 + 1.0 / r).sqrt();
            let m = 2.0 / (1.0 + r).sqrt() * (w * w / 2.0).exp() * Normal::standard().cdf(w);
            assert!((m * a - 1.0).abs() < 1e-6, "a {a} r {r}: M {m}");
        }
        // Wider than a fixed-sample bound at the same level, by a logarithmic factor.
        let fixed = -Normal::standard().inverse_cdf(0.01);
        let z = cs_z(0.01, 500.0, 500.0);
        assert!(z > fixed && z < 1.6 * fixed, "{z} vs {fixed}");
        // Tightest near the reference size; grows slowly beyond it.
        assert!(cs_z(0.01, 50.0, 500.0) > z);
        assert!(cs_z(0.01, 50_000.0, 500.0) > z);
        assert!(cs_z(0.01, 50_000.0, 500.0) < 1.3 * z);
    }

    #[test]
    fn budget_shares_sum_to_one() {
        let spikes: f64 = (1..=2_000_000).map(spike_share).sum();
        // The tail beyond N is about 1 / (C ln N).
        let tail = 1.0 / (SPIKE_SERIES_SUM * (2_000_001.5_f64).ln());
        assert!((spikes + tail - 1.0).abs() < 1e-3, "{}", spikes + tail);
        let windows: f64 = (1..=100_000).map(|w| window_share(w, 4)).sum();
        assert!((windows - 1.0).abs() < 1e-5, "{windows}");
        assert!((window_share(3, 4) - 0.2).abs() < 1e-12);
        assert!(window_share(6, 4) < window_share(5, 4));
        let l = Levels::new(0.01, 1, 4, 4);
        assert!((l.rollback - 0.01 * 0.8 * 0.2 / 4.0).abs() < 1e-15);
        assert!((l.promote - 0.01).abs() < 1e-15);
    }

    /// A random walk with no drift, watched after every step with the boundary at the running
    /// count: it crosses in no more than `a` of runs (here far fewer, the bound is a union
    /// over all times).
    #[test]
    fn continuous_monitoring_keeps_the_level() {
        let a = 0.05;
        let steps = 1000_u32;
        let boundary: Vec<f64> = (1..=steps).map(|n| cs_z(a, f64::from(n), 100.0)).collect();
        let mut rng = StdRng::seed_from_u64(5);
        let runs = 2000;
        let mut crossed = 0;
        for _ in 0..runs {
            let mut s = 0.0;
            for n in 1..=steps {
                s += rng.sample::<f64, _>(StandardNormal);
                if s / f64::from(n).sqrt() >= boundary[n as usize - 1] {
                    crossed += 1;
                    break;
                }
            }
        }
        let rate = f64::from(crossed) / f64::from(runs);
        assert!(rate <= a, "crossed in {rate}");
        // A fixed-sample bound at the same level, looked at after every step, does not hold.
        let z_fixed = -Normal::standard().inverse_cdf(a);
        let mut naive = 0;
        let mut rng = StdRng::seed_from_u64(5);
        for _ in 0..runs {
            let mut s = 0.0;
            for n in 1..=steps {
                s += rng.sample::<f64, _>(StandardNormal);
                if s / f64::from(n).sqrt() >= z_fixed {
                    naive += 1;
                    break;
                }
            }
        }
        assert!(f64::from(naive) / f64::from(runs) > 3.0 * a);
    }
}
