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
//! A design effect above 1 is itself estimated, from few units or few flows: at a bound with
//! multiplier `z`, its excess over 1 is scaled by `(t_df / z)^2`, the Student quantile at the
//! same tail probability over `z` (a `t` reference distribution, as cluster-robust tests use),
//! with `df` the units (or the group's new flows, if fewer) minus one. It is at most
//! [`FLOW_SIZE_FACTOR`] times the group's requests per new flow
//! ([`DesignEffect::capped_by_flows`]): beyond a flow's size, what the units show is variation
//! over time that both groups share, which cancels in the difference.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use statrs::distribution::{ContinuousCDF, Normal, StudentsT};

use crate::upstream::{Series, Window};

/// Most batches kept per backend before pairs are merged (then half as many remain): few and
/// long, so that a batch holds whole flows.
const MAX_BATCHES_PER_BACKEND: usize = 8;
/// Most batches kept per group, over all its backends (bounds the persisted state).
const MAX_BATCHES_PER_GROUP: usize = 512;
/// Units needed before a design effect is estimated from them at all.
pub const MIN_UNITS: usize = 6;
/// A design effect is at most this many times the requests per new flow.
pub const FLOW_SIZE_FACTOR: f64 = 2.0;

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

/// An estimated design effect with the degrees of freedom of its estimate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DesignEffect {
    /// At least 1.
    pub value: f64,
    /// Degrees of freedom of the estimate (infinite when it is exactly 1 by default).
    pub df: f64,
}

impl DesignEffect {
    /// Independent requests.
    pub const NONE: DesignEffect = DesignEffect {
        value: 1.0,
        df: f64::INFINITY,
    };

    /// At most `flows - 1` degrees of freedom: clusters cannot be more than the flows that
    /// carried the requests. And at most [`FLOW_SIZE_FACTOR`] times the `requests` per new
    /// flow: clustering by flows (connections, clients) cannot inflate the variance beyond the
    /// size of a flow (uneven flows up to about twice the mean size); what the units show
    /// beyond that is variation over time that both groups share (a loaded machine slows
    /// every backend), which cancels in the difference. `flows == 0`: not counted, no cap.
    #[must_use]
    pub fn capped_by_flows(self, flows: u64, requests: f64) -> DesignEffect {
        if flows == 0 {
            return self;
        }
        let largest = (FLOW_SIZE_FACTOR * requests / flows as f64).max(1.0);
        DesignEffect {
            value: self.value.min(largest),
            df: self.df.min(flows.saturating_sub(1).max(1) as f64),
        }
    }

    /// The factor for the i.i.d. variance at a bound with multiplier `z`: 1 plus the excess
    /// of the design effect, scaled by `(t_df / z)^2` at the tail probability of `z`.
    pub fn factor(self, z: f64) -> f64 {
        if self.value <= 1.0 || !self.df.is_finite() || z <= 0.0 {
            return self.value.max(1.0);
        }
        let tail = Normal::standard().sf(z);
        let t = StudentsT::new(0.0, 1.0, self.df.max(1.0)).map_or(z, |d| d.inverse_cdf(1.0 - tail));
        1.0 + (self.value - 1.0) * (t / z).max(1.0).powi(2)
    }
}

/// The units the design effects are estimated from: the current window's, and the previous
/// window's (the clients are the same whatever the weight; early in a step, when batches are
/// still short, the previous window's long batches see clustering that the new ones cannot).
#[derive(Clone, Copy, Debug)]
pub struct Units<'a> {
    /// `[stable, canary]` over the current window.
    pub current: [&'a Batches; 2],
    /// `[stable, canary]` over the previous window (empty in the first).
    pub earlier: [&'a Batches; 2],
}

/// One group's units over one window, summed for a ratio.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Segment {
    /// 0 stable, 1 canary.
    pub group: usize,
    /// From the current window (the only ones a group's own estimate uses).
    pub current: bool,
    pub sums: RatioSums,
    /// Per request variance of the quantity if requests were independent.
    pub request_variance: f64,
}

impl Units<'_> {
    /// The segments of a ratio: `extract` gives a unit's `(n, y)`, `variance(group, ratio)`
    /// the per request variance at the segment's ratio.
    pub fn segments(
        &self,
        extract: impl Fn(&Window) -> Option<(f64, f64)>,
        variance: impl Fn(usize, f64) -> f64,
    ) -> Vec<Segment> {
        let mut out = Vec::with_capacity(4);
        for (current, groups) in [(true, self.current), (false, self.earlier)] {
            for (group, batches) in groups.iter().enumerate() {
                let pairs: Vec<(f64, f64)> = batches.units().filter_map(&extract).collect();
                let sums = RatioSums::new(&pairs);
                if sums.n > 0.0 {
                    out.push(Segment {
                        group,
                        current,
                        sums,
                        request_variance: variance(group, sums.y / sums.n),
                    });
                }
            }
        }
        out
    }
}

/// Design effects `[stable, canary]` of a ratio: the cluster-robust variance over the
/// variance the same requests would give if independent. Both groups' clients come from one
/// population, so the estimate pools every segment with [`MIN_UNITS`] units (each around its
/// own mean); a group whose own current estimate is significantly larger (beyond twice its
/// sampling error, `sqrt(2 / (k - 1))` relative for `k` units) gets its own. At least 1;
/// exactly 1 (independent) when no segment has enough units.
pub fn design_effect(segments: &[Segment]) -> [DesignEffect; 2] {
    let mut pooled_num = 0.0;
    let mut pooled_den = 0.0;
    let mut pooled_units = 0;
    let mut own = [None; 2];
    for seg in segments {
        let Some(cr) = seg.sums.cluster_variance() else {
            continue;
        };
        let iid = seg.request_variance / seg.sums.n;
        if iid <= 0.0 {
            continue;
        }
        if seg.current {
            own[seg.group] = Some((cr / iid, seg.sums.units));
        }
        // Pool the variance sums on the request scale.
        pooled_num += cr * seg.sums.n * seg.sums.n;
        pooled_den += seg.request_variance * seg.sums.n;
        pooled_units += seg.sums.units;
    }
    if pooled_den <= 0.0 {
        return [DesignEffect::NONE; 2];
    }
    let pooled = DesignEffect {
        value: (pooled_num / pooled_den).max(1.0),
        df: pooled_units.saturating_sub(2).max(1) as f64,
    };
    own.map(|o| match o {
        Some((d, k)) if d > pooled.value * (1.0 + 2.0 * (2.0 / (k as f64 - 1.0)).sqrt()) => {
            DesignEffect {
                value: d,
                df: (k - 1) as f64,
            }
        }
        _ => pooled,
    })
}

/// A unit's `(requests, errors)`.
pub fn errors_of(w: &Window) -> Option<(f64, f64)> {
    match (&w.requests, &w.errors) {
        (Series::Present(n), Series::Present(x)) => Some((*n as f64, (*x).min(*n) as f64)),
        _ => None,
    }
}

/// A unit's `(observations, sum of latencies in ms)`.
pub fn latency_of(w: &Window) -> Option<(f64, f64)> {
    w.latency.present().map(|h| (h.count, h.sum * 1000.0))
}

/// A unit's `(observations, observations above the bound le seconds)`; `None` when its
/// histogram lacks that bound.
pub fn above(le: f64) -> impl Fn(&Window) -> Option<(f64, f64)> {
    move |w: &Window| {
        let h = w.latency.present()?;
        let i = h
            .bounds
            .iter()
            .position(|b| (*b - le).abs() <= 1e-12 * le.abs())?;
        Some((h.count, (h.count - h.cumulative[i]).max(0.0)))
    }
}

/// A unit's `(predictions, predictions of one of classes)`.
pub fn of_classes<'a>(classes: &'a [&'a str]) -> impl Fn(&Window) -> Option<(f64, f64)> + 'a {
    move |w: &Window| {
        let p = w.predictions.present()?;
        let n: u64 = p.values().sum();
        let y: u64 = classes.iter().filter_map(|c| p.get(*c)).sum();
        Some((n as f64, y as f64))
    }
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
        let seg = |group, sums| Segment {
            group,
            current: true,
            sums,
            request_variance: p * (1.0 - p),
        };
        let iid = RatioSums::new(&units(&mut rng, 0.0, 50, 400));
        let [d, _] = design_effect(&[seg(0, iid)]);
        assert!(d.value < 1.3, "{d:?}");
        let clustered = RatioSums::new(&units(&mut rng, 0.2, 50, 400));
        let [d, other] = design_effect(&[seg(0, clustered)]);
        let truth = 1.0 + 49.0 * 0.2;
        assert!((d.value / truth - 1.0).abs() < 0.3, "{d:?} vs {truth}");
        // Pooled: the other group (too few units of its own) gets it too.
        assert_eq!(other, d);
        // A group clustered when the other is not keeps its own (larger) design effect.
        let iid = RatioSums::new(&units(&mut rng, 0.0, 50, 400));
        let [a, b] = design_effect(&[seg(0, iid), seg(1, clustered)]);
        assert!(b.value > 1.5 * a.value, "{a:?} {b:?}");
        assert!((b.df - 399.0).abs() < 1e-9 && (a.df - 798.0).abs() < 1e-9);
        // An earlier window's units count for the pooled estimate, not for a group's own.
        let earlier = Segment {
            current: false,
            ..seg(1, clustered)
        };
        let [a, b] = design_effect(&[seg(0, iid), earlier]);
        assert!(
            a.value > 2.0 && (a.value - b.value).abs() < 1e-9,
            "{a:?} {b:?}"
        );
        // Too few units: no estimate, design effect 1.
        let few = RatioSums::new(&units(&mut rng, 0.2, 50, 3));
        assert!(few.cluster_variance().is_none());
        let _ = rng.gen::<u8>();
    }

    #[test]
    fn an_estimated_design_effect_widens_more_with_few_units() {
        let z = 4.0;
        assert!((DesignEffect::NONE.factor(z) - 1.0).abs() < 1e-12);
        let many = DesignEffect {
            value: 5.0,
            df: 1000.0,
        };
        let few = DesignEffect {
            value: 5.0,
            df: 10.0,
        };
        assert!((many.factor(z) - 5.0).abs() < 0.2, "{}", many.factor(z));
        assert!(few.factor(z) > 8.0, "{}", few.factor(z));
        // Few flows cap the degrees of freedom.
        assert!((many.capped_by_flows(11, 1000.0).df - 10.0).abs() < 1e-12);
        assert!((many.capped_by_flows(0, 1000.0).df - 1000.0).abs() < 1e-12);
        // A new connection per request: no clustering by flows, whatever the units show.
        assert!((many.capped_by_flows(1000, 1000.0).value - 2.0).abs() < 1e-12);
        assert!((many.capped_by_flows(1000, 500.0).value - 1.0).abs() < 1e-12);
        // Flows of 20 requests leave the estimate alone.
        assert!((many.capped_by_flows(50, 1000.0).value - 5.0).abs() < 1e-12);
    }
}
