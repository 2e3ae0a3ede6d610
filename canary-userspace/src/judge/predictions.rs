//! Predictions: does the canary predict the same classes as stable?
//!
//! * Classes with small expected counts (below [`SPARSE_EXPECTED`] in either group under
//!   homogeneity) are pooled into one cell, so the test has a sound chi-square approximation
//!   and rare classes add no noise. If that cell is still sparse it joins the smallest class.
//! * Rollback: a sequential chi-square test of homogeneity over the cells (the multivariate
//!   normal mixture boundary, `X^2 r/(1+r) >= 2 ln(1/a) + (K-1) ln(1+r)`, with `X^2` divided by
//!   the design effect, Rao-Scott), together with a bias-corrected distance above half the
//!   threshold.
//! * Promotion: an upper bound on the total variation distance (TVD). The plug-in
//!   `1/2 sum |p_c - p_s|` is biased up (every class adds its noise); the bound is the largest
//!   TVD whose *expected* plug-in value is consistent with the observed one: `sum |d_j|` is
//!   Lipschitz in the noise with constant `L = sqrt(deff_c/n_c + deff_s/n_s)`, so with
//!   confidence it is at least its mean minus `z L`; the mean is `sum sigma_j F(|d_j|/sigma_j)`
//!   (`F` the folded normal mean), and the largest `sum |d_j|` under that constraint spreads the
//!   difference in proportion to `sigma_j`: `sum sigma_j * F^-1(U / sum sigma_j)`. Pooling hides
//!   moves between the pooled classes; they are bounded by the smaller group's mass in a pooled
//!   cell, which is added.

use std::collections::{BTreeMap, BTreeSet};

use statrs::distribution::{ChiSquared, ContinuousCDF};

use super::clusters::{design_effect, of_classes, DesignEffect, Units};
use super::report::{finite, Signal, SignalReport, SignalVerdict};
use super::sequential::{cs_z, intrinsic_ratio, mixture_z, pairs};
use super::signals::Look;
use super::stats::{folded_mean_inverse, wilson};

/// Classes expected fewer times than this in either group are pooled.
pub(super) const SPARSE_EXPECTED: f64 = 5.0;

/// The cells of the table: each a set of classes (one class, or the pooled sparse ones).
fn cells<'a>(
    classes: &[&'a str],
    count: impl Fn(usize, &str) -> f64,
    n: [f64; 2],
) -> Vec<Vec<&'a str>> {
    let total = n[0] + n[1];
    let expected_min = |cols: f64| (n[0] * cols / total).min(n[1] * cols / total);
    let mut dense: Vec<Vec<&str>> = Vec::new();
    let mut pooled: Vec<&str> = Vec::new();
    for &c in classes {
        let col = count(0, c) + count(1, c);
        if expected_min(col) < SPARSE_EXPECTED {
            pooled.push(c);
        } else {
            dense.push(vec![c]);
        }
    }
    if !pooled.is_empty() {
        let col: f64 = pooled.iter().map(|c| count(0, c) + count(1, c)).sum();
        if expected_min(col) < SPARSE_EXPECTED && !dense.is_empty() {
            // Still sparse: joins the smallest dense class.
            let smallest = dense
                .iter()
                .enumerate()
                .min_by(|a, b| {
                    let m = |cell: &Vec<&str>| -> f64 {
                        cell.iter().map(|c| count(0, c) + count(1, c)).sum()
                    };
                    m(a.1).total_cmp(&m(b.1))
                })
                .map_or(0, |(i, _)| i);
            dense[smallest].extend(pooled);
        } else {
            dense.push(pooled);
        }
    }
    dense
}

/// The prediction signal over a window; `units` are each group's batches (for the design
/// effect).
#[allow(
    clippy::many_single_char_names,
    reason = "n, k, o, m, r are the usual statistical names"
)]
pub(super) fn predictions(
    stable: &BTreeMap<String, u64>,
    canary: &BTreeMap<String, u64>,
    units: &Units<'_>,
    flows: [u64; 2],
    threshold: f64,
    look: Look,
) -> SignalReport {
    let groups = [stable, canary];
    let count = |g: usize, k: &str| groups[g].get(k).copied().unwrap_or(0) as f64;
    let n = [
        stable.values().sum::<u64>() as f64,
        canary.values().sum::<u64>() as f64,
    ];
    let mut r = SignalReport::new(
        Signal::Predictions,
        "sequential chi-square test of homogeneity (sparse classes pooled); bias-corrected total variation distance bound",
        n[0] as u64,
        n[1] as u64,
        threshold,
    );
    let names: BTreeSet<&str> = stable
        .keys()
        .chain(canary.keys())
        .map(String::as_str)
        .filter(|k| count(0, k) + count(1, k) > 0.0)
        .collect();
    let names: Vec<&str> = names.into_iter().collect();
    if n[0] == 0.0 || n[1] == 0.0 {
        r.verdict = SignalVerdict::NoData;
        r.note = "no predictions in a group".into();
        return r;
    }
    if names.len() < 2 {
        r.verdict = SignalVerdict::Pass;
        r.estimate = Some(0.0);
        r.note = "a single class was predicted in both groups: no shift".into();
        return r;
    }
    let table = cells(&names, count, n);
    let cell_count = |g: usize, cell: &[&str]| -> f64 { cell.iter().map(|c| count(g, c)).sum() };

    // Design effect: Rao-Scott's first order, the mean over cells of each cell's design effect
    // (with the fewest degrees of freedom among them).
    let k = table.len() as f64;
    let mut sum = [0.0; 2];
    let mut dfs = [f64::INFINITY; 2];
    for cell in &table {
        let d = design_effect(&units.segments(of_classes(cell), |_, p| p * (1.0 - p)));
        for g in 0..2 {
            sum[g] += d[g].value;
            dfs[g] = dfs[g].min(d[g].df);
        }
    }
    let design = [0, 1].map(|g| {
        DesignEffect {
            value: sum[g] / k,
            df: dfs[g],
        }
        .capped_by_flows(flows[g], n[g])
    });
    r.design_effect = Some(design[0].value.max(design[1].value));
    let m = pairs(n[0] / design[0].value, n[1] / design[1].value);
    let z = cs_z(look.promote / 2.0, m, look.n_ref / 2.0);
    let rr = intrinsic_ratio(m, look.n_ref / 2.0, look.rollback);
    // The design effects' factors at the promotion bound and at the rollback test.
    let deff = [design[0].factor(z), design[1].factor(z)];
    let z_r = mixture_z(look.rollback, rr);
    let deff_r = design[0].factor(z_r).max(design[1].factor(z_r));

    // Chi-square over the cells.
    let total = n[0] + n[1];
    let mut chi2 = 0.0;
    let mut abs_sum = 0.0;
    let mut sigma_sum = 0.0;
    let mut plug_in = 0.0;
    for cell in &table {
        let o = [cell_count(0, cell), cell_count(1, cell)];
        let col = o[0] + o[1];
        for g in 0..2 {
            let e = n[g] * col / total;
            chi2 += (o[g] - e).powi(2) / e;
        }
        let p = [o[0] / n[0], o[1] / n[1]];
        abs_sum += (p[1] - p[0]).abs();
        // Smoothed so that a class unseen in a group still has some noise.
        let ps = |g: usize| (o[g] + 0.5) / (n[g] + 0.5 * k);
        sigma_sum += (ps(0) * (1.0 - ps(0)) * deff[0] / n[0]
            + ps(1) * (1.0 - ps(1)) * deff[1] / n[1])
            .sqrt();
        plug_in += (p[1] - p[0]).abs() / 2.0;
    }
    let chi2_adj = chi2 / deff_r;
    let df = k - 1.0;
    r.statistic = Some(chi2_adj);
    r.p_value = Some(ChiSquared::new(df).map_or(1.0, |d| d.sf(chi2_adj)));
    let significant =
        chi2_adj * rr / (1.0 + rr) >= 2.0 * (1.0 / look.rollback).ln() + df * (1.0 + rr).ln();

    // Bias-corrected estimate and upper bound of the distance.
    let estimate = (sigma_sum * folded_mean_inverse(abs_sum / sigma_sum) / 2.0).min(1.0);
    let lipschitz = (deff[0] / n[0] + deff[1] / n[1]).sqrt();
    let upper_cells = sigma_sum * folded_mean_inverse((abs_sum + z * lipschitz) / sigma_sum) / 2.0;
    let hidden: f64 = table
        .iter()
        .filter(|cell| cell.len() > 1)
        .map(|cell| {
            let upper = |g: usize| wilson(cell_count(g, cell) / deff[g], n[g] / deff[g], z).1;
            upper(0).min(upper(1))
        })
        .sum();
    let upper = (upper_cells + hidden).min(1.0);
    r.estimate = finite(estimate);
    r.upper = finite(upper);
    r.verdict = if upper < threshold {
        SignalVerdict::Pass
    } else if significant && estimate > threshold / 2.0 {
        SignalVerdict::Fail
    } else {
        SignalVerdict::Inconclusive
    };
    let pooled: usize = table.iter().filter(|c| c.len() > 1).map(Vec::len).sum();
    r.note = format!(
        "{} classes in {} cells ({} pooled), {} degrees of freedom; plug-in distance {:.4}",
        names.len(),
        table.len(),
        pooled,
        table.len() - 1,
        plug_in
    );
    r
}
