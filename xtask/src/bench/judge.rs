//! `bench judge`: judge quality over seeded simulated rollouts (`rollout_sim`).

use std::fmt::Write as _;

use super::report::{heading, table, Machine, Section};
use super::sim::{simulate, Scenario, ScenarioReport, SimParams};
use super::stats::verdict;

/// Rollouts per scenario.
pub(super) const ROLLOUTS: usize = 1000;
const SEED: u64 = 20_240_601;

pub(super) fn run() -> Section {
    let machine = Machine::current();
    let params = SimParams::default();
    let scenarios = Scenario::standard();
    // One thread per scenario: the simulation is CPU-bound and scenarios are independent.
    let reports: Vec<ScenarioReport> = std::thread::scope(|s| {
        let handles: Vec<_> = scenarios
            .iter()
            .map(|sc| s.spawn(|| simulate(sc, &params, ROLLOUTS, SEED)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("simulation thread"))
            .collect()
    });
    let steps = params.rollout.steps.len();
    let interval = params.rollout.interval.as_secs_f64();
    // The last step (100 %) is reached at the end of the previous step's interval.
    let minimum = (steps.saturating_sub(1)) as f64 * interval;
    let first_pct = params
        .rollout
        .steps
        .first()
        .map_or(0, |w| w.basis_points() / 100);
    let first_rps = params.requests_per_second * f64::from(first_pct) / 100.0;
    let opt =
        |v: Option<f64>, unit: &str| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.0}{unit}"));
    let rows: Vec<Vec<String>> = reports
        .iter()
        .map(|r| {
            vec![
                r.scenario.clone(),
                r.rollouts.to_string(),
                format!("{:.1} %", 100.0 * r.rollback_rate),
                format!("{:.1} %", 100.0 * r.rolled_back_before_half_rate),
                opt(r.canary_requests_to_rollback_median, ""),
                opt(r.canary_requests_to_rollback_p90, ""),
                opt(r.seconds_to_promotion_median, " s"),
                opt(r.seconds_to_promotion_p90, " s"),
                r.unfinished.to_string(),
            ]
        })
        .collect();
    let mut md = heading("judge: quality over simulated rollouts", &machine);
    let _ = write!(md,
        "{ROLLOUTS} seeded rollouts per scenario; {:.0} requests/s over both groups (Poisson), base error rate {:.0} %, \
         log-normal latency (median {:.0} ms, sigma {}), predictions {:.0}/{:.0}; default rollout: steps {:?} %, interval {interval:.0} s, \
         poll {:.0} s, min_samples {}; the real judge and state machine decide.\n\n",
        params.requests_per_second,
        100.0 * params.base_error_rate,
        params.latency_median_ms,
        params.latency_sigma,
        100.0 * params.first_class_share,
        100.0 * (1.0 - params.first_class_share),
        params.rollout.steps.iter().map(|w| w.basis_points() / 100).collect::<Vec<_>>(),
        params.rollout.poll_interval.as_secs_f64(),
        params.rollout.min_samples,
    );
    md.push_str(&table(
        &[
            "scenario",
            "rollouts",
            "rolled back",
            "rolled back before 50 %",
            "canary requests to rollback (median)",
            "(p90)",
            "time to promotion (median)",
            "(p90)",
            "unfinished",
        ],
        &rows,
    ));
    let aa = &reports[0];
    let worst_detection = reports[1..]
        .iter()
        .map(|r| r.rolled_back_before_half_rate)
        .fold(f64::INFINITY, f64::min);
    let _ = writeln!(md,
        "\nTargets: A/A false-rollback rate <= 1 %: {:.1} %, {}; every faulty scenario rolled back before 50 % in >= 95 % of rollouts: \
         worst {:.1} %, {}. Healthy promotion: median {} against the configured minimum of {minimum:.0} s ({} steps after the first x {interval:.0} s): the judge holds a step until each group has `min_samples` requests and its bounds are conclusive, so at this traffic (the canary gets {first_rps:.0} requests/s at {first_pct} %) the data, not the interval, sets the pace.",
        100.0 * aa.rollback_rate,
        verdict(aa.rollback_rate <= 0.01),
        100.0 * worst_detection,
        verdict(worst_detection >= 0.95),
        opt(aa.seconds_to_promotion_median, " s"),
        steps.saturating_sub(1),
    );
    Section {
        name: "judge",
        markdown: md,
        json: serde_json::json!({
            "machine": machine,
            "rollouts_per_scenario": ROLLOUTS,
            "seed": SEED,
            "params": params,
            "minimum_promotion_seconds": minimum,
            "scenarios": reports,
        }),
    }
}
