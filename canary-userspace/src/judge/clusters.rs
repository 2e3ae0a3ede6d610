//! Variance that survives clustering.
//!
//! Requests are not independent: a keep-alive connection or a client pinned by affinity sends
//! many requests to one backend, and clients differ (one client's inputs fail more often). The
//! judge cannot see clients, but it can see *units* that are nearly independent of each other:
//! one backend over a run of consecutive polls ("batch"). Different backends serve different
//! flows; runs of polls long enough hold whole flows. Each backend's polls are grouped into
//! batches whose length doubles whenever the backend has too many (batch means with a growing
//! batch size), so a step's window keeps a bounded number of units however long it lasts.
//!
//! A quantity that is a ratio of sums over requests (error rate, mean latency, share of
//! requests above a latency bound or in a class) gets its cluster-robust variance from the
//! units (the CR1 sandwich: `k/(k-1) * sum (y_i - R n_i)^2 / N^2`). Its *design effect* is that
//! variance over the one independent requests would give; the judge multiplies its i.i.d.
//! variances by the design effect (never below 1), so correlated requests widen the bounds.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::upstream::{Series, Window};

/// Most batches kept per backend before pairs are merged (then half as many remain).
const MAX_BATCHES_PER_BACKEND: usize = 32;
/// Most batches kept per group, over all its backends (bounds the persisted state).
const MAX_BATCHES_PER_GROUP: usize = 512;
/// Units needed before a design effect is estimated from them at all.
pub const MIN_UNITS: usize = 6;

/// One backend over a run of consecutive polls.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    pub polls: u32,
    pub window: Window,
}

/// One backend's batches, oldest first.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BackendBatches {
    /// Polls a batch holds before a new one starts (doubles on every merge).
    polls_per_batch: u32,
    pub batches: Vec<Batch>,
}

/// The units of one group over a step's window, per backend.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Batches {
    pub backends: BTreeMap<String, BackendBatches>,
}

impl Batches {
    /// Adds one poll's increase of one backend.
    pub fn add(&mut self, backend: &str, window: &Window) {
        let limit =
            (MAX_BATCHES_PER_GROUP / (self.backends.len() + 1)).clamp(4, MAX_BATCHES_PER_BACKEND);
        let b = self.backends.entry(backend.to_string()).or_default();
        b.polls_per_batch = b.polls_per_batch.max(1);
        match b.batches.last_mut() {
            Some(last) if last.polls < b.polls_per_batch => {
                last.window.accumulate(window);
                last.polls += 1;
            }
            _ => b.batches.push(Batch {
                polls: 1,
                window: window.clone(),
            }),
        }
        if b.batches.len() > limit {
            let old = std::mem::take(&mut b.batches);
            for pair in old.chunks(2) {
                let mut merged = pair[0].clone();
                if let Some(second) = pair.get(1) {
                    merged.window.accumulate(&second.window);
                    merged.polls += second.polls;
                }
                b.batches.push(merged);
            }
            b.polls_per_batch *= 2;
        }
    }

    /// Every unit of the group.
    pub fn units(&self) -> impl Iterator<Item = &Window> {
        self.backends
            .values()
            .flat_map(|b| b.batches.iter().map(|u| &u.window))
    }

    pub fn len(&self) -> usize {
        self.backends.values().map(|b| b.batches.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The sums over one group's units of a ratio estimator `R = sum y / sum n`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RatioSums {
    /// Units with `n > 0`.
    pub units: usize,
    pub n: f64,
    pub y: f64,
    /// `sum (y_i - R n_i)^2`.
    pub residual_squares: f64,
}

impl RatioSums {
    /// From `(n_i, y_i)` per unit.
    pub fn new(units: &[(f64, f64)]) -> RatioSums {
        let used: Vec<(f64, f64)> = units.iter().copied().filter(|u| u.0 > 0.0).collect();
        let n: f64 = used.iter().map(|u| u.0).sum();
        let y: f64 = used.iter().map(|u| u.1).sum();
        if n <= 0.0 {
            return RatioSums::default();
        }
        let r = y / n;
        RatioSums {
            units: used.len(),
            n,
            y,
            residual_squares: used.iter().map(|(ni, yi)| (yi - r * ni).powi(2)).sum(),
        }
    }

    /// The CR1 variance of the ratio, `None` below [`MIN_UNITS`] units.
    pub fn cluster_variance(&self) -> Option<f64> {
        if self.units < MIN_UNITS || self.n <= 0.0 {
            return None;
        }
        let k = self.units as f64;
        Some(k / (k - 1.0) * self.residual_squares / (self.n * self.n))
    }
}

/// Design effect of a ratio estimated from units of both groups: the cluster-robust variance
/// over the variance the same requests would give if independent (per request variance
/// `request_variance` for each group, e.g. `p (1 - p)`), pooled over both groups (their clients
/// are drawn from the same population), and also per group when it has enough units: the
/// larger applies. At least 1; exactly 1 when no group has [`MIN_UNITS`] units.
pub fn design_effect(groups: [(&RatioSums, f64); 2]) -> [f64; 2] {
    let mut pooled_num = 0.0;
    let mut pooled_den = 0.0;
    let mut own = [1.0; 2];
    for (i, (sums, request_variance)) in groups.iter().enumerate() {
        let Some(cr) = sums.cluster_variance() else {
            continue;
        };
        let iid = request_variance / sums.n;
        if iid > 0.0 {
            own[i] = (cr / iid).max(1.0);
            // Pool the variance sums on the request scale.
            pooled_num += cr * sums.n * sums.n;
            pooled_den += request_variance * sums.n;
        }
    }
    let pooled = if pooled_den > 0.0 {
        (pooled_num / pooled_den).max(1.0)
    } else {
        1.0
    };
    [own[0].max(pooled), own[1].max(pooled)]
}

/// Per-unit `(requests, errors)`.
pub fn error_units(units: &Batches) -> Vec<(f64, f64)> {
    units
        .units()
        .filter_map(|w| match (&w.requests, &w.errors) {
            (Series::Present(n), Series::Present(x)) => Some((*n as f64, (*x).min(*n) as f64)),
            _ => None,
        })
        .collect()
}

/// Per-unit `(observations, sum of latencies in ms)`.
pub fn latency_units(units: &Batches) -> Vec<(f64, f64)> {
    units
        .units()
        .filter_map(|w| w.latency.present().map(|h| (h.count, h.sum * 1000.0)))
        .collect()
}

/// Per-unit `(observations, observations above the bound `le` seconds)`; units whose
/// histogram lacks that bound are left out.
pub fn above_units(units: &Batches, le: f64) -> Vec<(f64, f64)> {
    units
        .units()
        .filter_map(|w| {
            let h = w.latency.present()?;
            let i = h
                .bounds
                .iter()
                .position(|b| (*b - le).abs() <= 1e-12 * le.abs())?;
            Some((h.count, (h.count - h.cumulative[i]).max(0.0)))
        })
        .collect()
}

/// Per-unit `(predictions, predictions of one of `classes`)`.
pub fn class_units(units: &Batches, classes: &[&str]) -> Vec<(f64, f64)> {
    units
        .units()
        .filter_map(|w| {
            let p = w.predictions.present()?;
            let n: u64 = p.values().sum();
            let y: u64 = classes.iter().filter_map(|c| p.get(*c)).sum();
            Some((n as f64, y as f64))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::Histogram;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use rand_distr::{Beta, Binomial, Distribution};

    fn errors_window(n: u64, x: u64) -> Window {
        Window {
            requests: Series::Present(n),
            errors: Series::Present(x),
            latency: Series::Present(Histogram::empty(vec![0.1])),
            predictions: Series::Missing,
        }
    }

    #[test]
    fn batches_double_and_keep_totals() {
        let mut b = Batches::default();
        for i in 0..100 {
            b.add("a", &errors_window(10, i % 2));
        }
        let a = &b.backends["a"];
        assert!(
            a.batches.len() <= MAX_BATCHES_PER_BACKEND,
            "{}",
            a.batches.len()
        );
        assert!(a.batches.len() >= MAX_BATCHES_PER_BACKEND / 2);
        let polls: u32 = a.batches.iter().map(|x| x.polls).sum();
        assert_eq!(polls, 100);
        let n: u64 = a
            .batches
            .iter()
            .map(|x| *x.window.requests.present().unwrap())
            .sum();
        assert_eq!(n, 1000);
        // Consecutive polls stay together: full batches hold polls_per_batch polls.
        assert!(a.batches[..a.batches.len() - 1]
            .iter()
            .all(|x| x.polls == a.polls_per_batch));
    }

    #[test]
    fn many_backends_keep_the_group_bounded() {
        let mut b = Batches::default();
        for poll in 0..200 {
            for backend in 0..150 {
                b.add(&format!("b{backend}"), &errors_window(10, poll % 3));
            }
        }
        assert!(b.len() <= 150 * 4, "{}", b.len());
    }

    /// Independent requests: design effect near 1. Clustered requests (each unit's error rate
    /// drawn around the mean): design effect near the true one, 1 + (m - 1) icc.
    #[test]
    fn design_effect_sees_clustering() {
        let mut rng = StdRng::seed_from_u64(3);
        let p = 0.05;
        let units = |rng: &mut StdRng, icc: f64, m: u64, k: usize| -> Vec<(f64, f64)> {
            (0..k)
                .map(|_| {
                    let q = if icc > 0.0 {
                        let s = 1.0 / icc - 1.0;
                        Beta::new(p * s, (1.0 - p) * s).unwrap().sample(rng)
                    } else {
                        p
                    };
                    let x = Binomial::new(m, q).unwrap().sample(rng);
                    (m as f64, x as f64)
                })
                .collect()
        };
        let iid = RatioSums::new(&units(&mut rng, 0.0, 50, 400));
        let [d, _] = design_effect([(&iid, p * (1.0 - p)), (&RatioSums::default(), 0.0)]);
        assert!(d < 1.3, "{d}");
        let clustered = RatioSums::new(&units(&mut rng, 0.2, 50, 400));
        let [d, other] = design_effect([(&clustered, p * (1.0 - p)), (&RatioSums::default(), 0.0)]);
        let truth = 1.0 + 49.0 * 0.2;
        assert!((d / truth - 1.0).abs() < 0.3, "{d} vs {truth}");
        // Pooled: the other group (too few units of its own) gets it too.
        assert!((other - d).abs() < 1e-9 || other >= 1.0);
        // Too few units: no estimate, design effect 1.
        let few = RatioSums::new(&units(&mut rng, 0.2, 50, 3));
        assert!(few.cluster_variance().is_none());
        let _ = rng.gen::<u8>();
    }
}
