//! `bench judge`: judge quality over seeded simulated rollouts ([`super::sim`]), through the
//! daemon's path from Prometheus text to decision.

use std::fmt::Write as _;
use std::time::Instant;

use super::report::{heading, table, Machine, Section};
use super::sim::{simulate_all, Scenario, ScenarioReport, SimParams};
use super::stats::verdict;

/// Rollouts per scenario.
pub(super) const ROLLOUTS: usize = 1000;
const SEED: u64 = 20_240_601;

fn opt(v: Option<f64>, unit: &str) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.0}{unit}"))
}

fn reasons(r: &ScenarioReport) -> String {
    if r.rollback_reasons.is_empty() {
        return "-".to_owned();
    }
    r.rollback_reasons
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub(super) fn run() -> Section {
    let machine = Machine::current();
    let params = SimParams::default();
    let identical = Scenario::identical();
    let faults = Scenario::faults();
    let (power_errors, power_latency) = Scenario::power_curve();
    let all: Vec<Scenario> = identical
        .iter()
        .chain(&faults)
        .chain(&power_errors)
        .chain(&power_latency)
        .cloned()
        .collect();
    let threads = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let started = Instant::now();
    let reports = simulate_all(&all, &params, ROLLOUTS, SEED, threads);
    let elapsed = started.elapsed().as_secs_f64();
    let (aa, rest) = reports.split_at(identical.len());
    let (fault_reports, rest) = rest.split_at(faults.len());
    let (power_e, power_l) = rest.split_at(power_errors.len());
    let least = params.least_promotion_seconds();

    let mut md = heading("judge: quality over simulated rollouts", &machine);
    let _ = write!(
        md,
        "`cargo xtask bench judge`: {ROLLOUTS} seeded rollouts per scenario ({} scenarios, {threads} threads, {elapsed:.0} s). \
         {:.0} requests/s over both groups, {} stable and {} canary backends, log-normal latency (median {:.0} ms, sigma {}), \
         one scrape in {:.0} failing; every poll each backend's counters go through Prometheus text, the upstream parser, \
         per-backend deltas and group sums into the real rollout state machine and judge. Default rollout: steps {:?} %, \
         interval {:.0} s, poll {:.0} s, min_samples {}, confidence {}. Keep-alive flows send {} requests/s each. \
         Rates with their 95 % Wilson interval.\n\n",
        all.len(),
        params.requests_per_second,
        params.backends[0],
        params.backends[1],
        params.latency_median_ms,
        params.latency_sigma,
        1.0 / params.scrape_failure,
        params
            .rollout
            .steps
            .iter()
            .map(|w| w.percent())
            .collect::<Vec<_>>(),
        params.rollout.interval.as_secs_f64(),
        params.rollout.poll_interval.as_secs_f64(),
        params.rollout.min_samples,
        params.rollout.thresholds.confidence,
        params.flow_rate,
    );

    md.push_str("Identical versions (A/A): every rollback is false.\n\n");
    let rows: Vec<Vec<String>> = aa
        .iter()
        .map(|r| {
            vec![
                r.scenario.name.clone(),
                r.rolled_back.show(),
                r.promoted.to_string(),
                r.unfinished.to_string(),
                opt(r.seconds_to_promotion_median, " s"),
                opt(r.seconds_to_promotion_p90, " s"),
                reasons(r),
            ]
        })
        .collect();
    md.push_str(&table(
        &[
            "scenario",
            "false rollbacks",
            "promoted",
            "unfinished (30 min)",
            "time to promotion (median)",
            "(p90)",
            "rollback reasons",
        ],
        &rows,
    ));
    let worst_aa = aa
        .iter()
        .max_by(|a, b| a.rolled_back.rate.total_cmp(&b.rolled_back.rate))
        .expect("scenarios");
    let _ = writeln!(
        md,
        "\nTarget: false rollback <= 1 % in every A/A scenario: worst {} ({}), {}.\n",
        worst_aa.rolled_back.show(),
        worst_aa.scenario.name,
        verdict(worst_aa.rolled_back.rate <= 0.01)
    );

    md.push_str("Faulty canaries.\n\n");
    let rows: Vec<Vec<String>> = fault_reports
        .iter()
        .map(|r| {
            vec![
                r.scenario.name.clone(),
                r.rolled_back_before_half.show(),
                r.rolled_back.show(),
                r.promoted.to_string(),
                opt(r.canary_requests_to_rollback_median, ""),
                opt(r.canary_requests_to_rollback_p90, ""),
                reasons(r),
            ]
        })
        .collect();
    md.push_str(&table(
        &[
            "scenario",
            "rolled back before 50 %",
            "rolled back",
            "promoted",
            "canary requests to rollback (median)",
            "(p90)",
            "rollback reasons",
        ],
        &rows,
    ));
    let mut missed = Vec::new();
    for r in fault_reports {
        let (rate, target) = if r.scenario.fault_from_percent.is_some() {
            (r.rolled_back.rate, "rolled back before 100 %")
        } else {
            (r.rolled_back_before_half.rate, "rolled back before 50 %")
        };
        if rate < 0.95 {
            missed.push(format!(
                "{} ({target} {:.1} %)",
                r.scenario.name,
                100.0 * rate
            ));
        }
    }
    let five = fault_reports
        .iter()
        .find(|r| {
            (r.scenario.error_increase - 0.05).abs() < 1e-12
                && r.scenario.fault_from_percent.is_none()
        })
        .and_then(|r| r.canary_requests_to_rollback_median);
    let _ = writeln!(
        md,
        "\nTargets: >= 95 % rolled back before 50 % (the late fault: before 100 %): {}{}; median canary requests before the rollback of +5 pp <= 600: {}, {}.\n",
        verdict(missed.is_empty()),
        if missed.is_empty() {
            String::new()
        } else {
            format!(" ({})", missed.join("; "))
        },
        opt(five, ""),
        verdict(five.is_some_and(|v| v <= 600.0)),
    );

    let healthy = &aa[1];
    let median = healthy.seconds_to_promotion_median;
    let ratio = median.map(|m| m / least);
    let per_step: Vec<String> = params
        .rollout
        .steps
        .iter()
        .filter(|w| w.basis_points() < 10_000)
        .map(|w| {
            let share = w.ratio().min(1.0 - w.ratio());
            let samples = params.rollout.min_samples as f64 / (params.requests_per_second * share);
            format!(
                "{} %: {:.0} s",
                w.percent(),
                params.rollout.interval.as_secs_f64().max(samples)
            )
        })
        .collect();
    let _ = writeln!(
        md,
        "Healthy promotion ({}): median {} (p90 {}) against the least the config allows at this traffic, {least:.0} s \
         (per step the larger of `interval` and the time for both groups to reach `min_samples`: {}): {} the least; target <= 1.15x: {}.\n",
        healthy.scenario.name,
        opt(median, " s"),
        opt(healthy.seconds_to_promotion_p90, " s"),
        per_step.join(", "),
        ratio.map_or_else(|| "-".to_owned(), |r| format!("{r:.2}x")),
        verdict(ratio.is_some_and(|r| r <= 1.15)),
    );

    md.push_str("Power: detection against effect size (1 % base error rate).\n\n");
    let power_rows = |reports: &[ScenarioReport]| -> Vec<Vec<String>> {
        reports
            .iter()
            .map(|r| {
                vec![
                    r.scenario.name.clone(),
                    r.rolled_back.show(),
                    r.rolled_back_before_half.show(),
                    opt(r.canary_requests_to_rollback_median, ""),
                ]
            })
            .collect()
    };
    let mut rows = power_rows(power_e);
    rows.extend(power_rows(power_l));
    md.push_str(&table(
        &[
            "canary worse by",
            "rolled back",
            "rolled back before 50 %",
            "canary requests to rollback (median)",
        ],
        &rows,
    ));
    Section {
        name: "judge",
        markdown: md,
        json: serde_json::json!({
            "machine": machine,
            "rollouts_per_scenario": ROLLOUTS,
            "seed": SEED,
            "seconds": elapsed,
            "threads": threads,
            "params": params,
            "least_promotion_seconds": least,
            "scenarios": reports,
        }),
    }
}
