//! The error spike check: a canary that suddenly fails much more than stable, over the latest
//! poll(s), rolls back at that poll, without waiting for the step's window.
//!
//! It is a real test of canary against stable over the same polls, one-sided: given the errors
//! of both groups together, under "the canary is no worse" each error is a canary error with
//! at most the canary's share of the requests, so the canary's errors are (at most) binomial;
//! the p-value is that binomial's upper tail (a conditional test, no nuisance parameter). Counts
//! are divided by stable's design effect of errors ([`super::spike_design_effect`]: clustered
//! requests carry less evidence). It runs at every poll over the latest poll and over the
//! latest [`SPIKE_POLLS`] polls, each at half the spike's level for that poll
//! ([`super::sequential::spike_level`]), so its own share of the error budget holds over any
//! number of polls. A spike also needs the canary's rate over those polls above `error_spike`.

use statrs::distribution::{ContinuousCDF, Normal};

use super::clusters::DesignEffect;
use super::report::{Signal, SignalReport, SignalVerdict};
use super::stats::binomial_upper_tail;

/// Polls in the longer of the two spike windows.
pub const SPIKE_POLLS: usize = 3;

/// One poll's requests and errors per group: `(stable, canary)`, each `(requests, errors)`.
pub type PollErrors = ((u64, u64), (u64, u64));

/// The spike test over `recent` polls (oldest first; the latest is last) at `level` for this
/// poll, with the design effect `deff` of errors. `None` without canary requests.
pub fn error_spike(
    recent: &[PollErrors],
    deff: DesignEffect,
    level: f64,
    error_spike: f64,
) -> Option<SignalReport> {
    let latest = recent.last()?;
    if latest.1 .0 == 0 {
        return None;
    }
    // The design effect's factor at the normal quantile of this test's level.
    let z = Normal::standard().inverse_cdf(1.0 - (level / 2.0).clamp(1e-300, 0.5));
    let deff = deff.factor(z);
    let spans = if recent.len() > 1 {
        vec![1, recent.len().min(SPIKE_POLLS)]
    } else {
        vec![1]
    };
    let mut reports = Vec::new();
    for polls in spans {
        let span = &recent[recent.len() - polls..];
        let sum = |f: fn(&PollErrors) -> u64| span.iter().map(f).sum::<u64>();
        let (n_s, x_s) = (sum(|p| p.0 .0), sum(|p| p.0 .1.min(p.0 .0)));
        let (n_c, x_c) = (sum(|p| p.1 .0), sum(|p| p.1 .1.min(p.1 .0)));
        if n_c == 0 {
            continue;
        }
        let rate_c = x_c as f64 / n_c as f64;
        let rate_s = if n_s > 0 {
            x_s as f64 / n_s as f64
        } else {
            0.0
        };
        let share = n_c as f64 / (n_s + n_c) as f64;
        let p = binomial_upper_tail(x_c as f64 / deff, (x_s + x_c) as f64 / deff, share);
        let mut r = SignalReport::new(
            Signal::ErrorSpike,
            "canary against stable over the latest poll(s): conditional binomial test",
            n_s,
            n_c,
            error_spike,
        );
        r.stable = Some(rate_s);
        r.canary = Some(rate_c);
        r.estimate = Some(rate_c - rate_s);
        r.p_value = Some(p);
        r.design_effect = Some(deff);
        r.verdict = if p <= level / 2.0 && rate_c > error_spike {
            SignalVerdict::Fail
        } else {
            SignalVerdict::Ok
        };
        r.note = format!(
            "{x_c} errors of {n_c} canary requests against {x_s} of {n_s} stable over the latest {polls} poll(s); \
             p {p:.2e} against {:.2e}; a spike needs the canary above {:.1}%",
            level / 2.0,
            error_spike * 100.0
        );
        reports.push(r);
    }
    // A failing span if any, else the one closest to failing.
    let fail = reports
        .iter()
        .position(|r| r.verdict == SignalVerdict::Fail);
    let closest = || {
        (0..reports.len()).min_by(|&a, &b| {
            let p = |i: usize| reports[i].p_value.unwrap_or(1.0);
            p(a).total_cmp(&p(b))
        })
    };
    let i = fail.or_else(closest)?;
    Some(reports.swap_remove(i))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::judge::sequential::spike_level;

    fn poll(n_s: u64, x_s: u64, n_c: u64, x_c: u64) -> PollErrors {
        ((n_s, x_s), (n_c, x_c))
    }

    #[test]
    fn thirty_percent_against_one_percent_fails_in_one_poll() {
        // 200 requests a second at 10 %, at the 100th poll of the rollout.
        let level = spike_level(0.01, 100);
        let r = error_spike(&[poll(1800, 18, 200, 60)], DesignEffect::NONE, level, 0.10).unwrap();
        assert_eq!(r.verdict, SignalVerdict::Fail, "{r}");
        // Still at the 1000th poll, and with the latest poll after two healthy ones.
        let level = spike_level(0.01, 1000);
        let recent = [
            poll(1800, 18, 200, 2),
            poll(1800, 18, 200, 2),
            poll(1800, 18, 200, 60),
        ];
        let r = error_spike(&recent, DesignEffect::NONE, level, 0.10).unwrap();
        assert_eq!(r.verdict, SignalVerdict::Fail, "{r}");
    }

    /// What the old rule got wrong. Both versions answer 5 % errors; one poll of 161 canary
    /// requests has 20 errors (12.4 %): the old rule (canary above 10 % with at least 5 errors,
    /// stable ignored) rolled back. Against stable's errors over the same poll, at the 30th poll
    /// of a rollout, that is not a spike; nor is 12 % on both sides at the first poll.
    #[test]
    fn same_rate_as_stable_is_no_spike() {
        let r = error_spike(
            &[poll(1450, 72, 161, 20)],
            DesignEffect::NONE,
            spike_level(0.01, 30),
            0.10,
        )
        .unwrap();
        assert_eq!(r.verdict, SignalVerdict::Ok, "{r}");
        let r = error_spike(
            &[poll(1450, 174, 161, 20)],
            DesignEffect::NONE,
            spike_level(0.01, 1),
            0.10,
        )
        .unwrap();
        assert_eq!(r.verdict, SignalVerdict::Ok, "{r}");
        assert!(r.p_value.unwrap() > 0.1, "{r}");
    }

    #[test]
    fn a_high_rate_with_little_evidence_or_below_the_threshold_is_no_spike() {
        let level = spike_level(0.01, 1);
        // 3 of 10 against 0 of 90: p = 0.1^3, not enough.
        let r = error_spike(&[poll(90, 0, 10, 3)], DesignEffect::NONE, level, 0.10).unwrap();
        assert_eq!(r.verdict, SignalVerdict::Ok, "{r}");
        // Significant, but 8 % is below error_spike: the step's judge handles it.
        let r = error_spike(
            &[poll(18_000, 180, 2000, 160)],
            DesignEffect::NONE,
            level,
            0.10,
        )
        .unwrap();
        assert!(r.p_value.unwrap() < level, "{r}");
        assert_eq!(r.verdict, SignalVerdict::Ok, "{r}");
        assert!(error_spike(&[poll(100, 0, 0, 0)], DesignEffect::NONE, level, 0.1).is_none());
        assert!(error_spike(&[], DesignEffect::NONE, level, 0.1).is_none());
    }

    #[test]
    fn clustered_requests_need_more_evidence() {
        let level = spike_level(0.01, 10);
        let recent = [poll(900, 9, 100, 20)];
        assert_eq!(
            error_spike(&recent, DesignEffect::NONE, level, 0.1)
                .unwrap()
                .verdict,
            SignalVerdict::Fail
        );
        // One client's burst of errors, with a design effect of 10: not a spike.
        assert_eq!(
            error_spike(
                &recent,
                DesignEffect {
                    value: 10.0,
                    df: 100.0
                },
                level,
                0.1
            )
            .unwrap()
            .verdict,
            SignalVerdict::Ok
        );
    }

    /// Under "canary no worse", over many polls, the spike test fires in far fewer than its
    /// budget's share of rollouts.
    #[test]
    fn identical_groups_rarely_spike() {
        use rand::rngs::StdRng;
        use rand::SeedableRng;
        use rand_distr::{Binomial, Distribution};
        let mut rng = StdRng::seed_from_u64(9);
        let alpha = 0.01;
        let runs = 2000;
        let mut fired = 0;
        for _ in 0..runs {
            let mut recent: Vec<PollErrors> = Vec::new();
            for j in 1..=200_u32 {
                let x_s = Binomial::new(180, 0.2).unwrap().sample(&mut rng);
                let x_c = Binomial::new(20, 0.2).unwrap().sample(&mut rng);
                recent.push(poll(180, x_s, 20, x_c));
                if recent.len() > SPIKE_POLLS {
                    recent.remove(0);
                }
                let r =
                    error_spike(&recent, DesignEffect::NONE, spike_level(alpha, j), 0.1).unwrap();
                if r.verdict == SignalVerdict::Fail {
                    fired += 1;
                    break;
                }
            }
        }
        assert!(
            f64::from(fired) / f64::from(runs) <= alpha * 0.2,
            "{fired} of {runs}"
        );
    }
}
