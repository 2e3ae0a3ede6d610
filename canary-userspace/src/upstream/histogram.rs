//! A latency histogram in Prometheus form, and the arithmetic the judge and `/status` need.

use serde::{Deserialize, Serialize};

/// A latency histogram in Prometheus form: cumulative counts at finite upper bounds
/// (seconds, increasing); the `+Inf` bucket is `count`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Histogram {
    pub bounds: Vec<f64>,
    pub cumulative: Vec<f64>,
    pub count: f64,
    /// Sum of observations, seconds.
    pub sum: f64,
}

impl Histogram {
    /// An empty histogram with these bucket bounds.
    pub fn empty(bounds: Vec<f64>) -> Histogram {
        let n = bounds.len();
        Histogram {
            bounds,
            cumulative: vec![0.0; n],
            count: 0.0,
            sum: 0.0,
        }
    }

    /// The value at (fractional, 0-based) rank `rank` of a histogram by linear interpolation in
    /// its bucket, as Prometheus' `histogram_quantile` does. Ranks in the `+Inf` bucket are
    /// unbounded above: `None`.
    pub fn value_at_rank(&self, rank: f64) -> Option<f64> {
        let rank = rank.max(0.0);
        let mut lo = 0.0;
        let mut below = 0.0;
        for (&hi, &cum) in self.bounds.iter().zip(&self.cumulative) {
            if cum >= rank && cum > below {
                return Some(lo + (hi - lo) * (rank - below) / (cum - below));
            }
            if cum >= rank {
                return Some(lo);
            }
            lo = hi;
            below = cum;
        }
        None
    }

    /// Counts per bucket (not cumulative); the last entry is the `+Inf` bucket.
    pub fn bucket_counts(&self) -> Vec<f64> {
        let mut out = Vec::with_capacity(self.bounds.len() + 1);
        let mut prev = 0.0;
        for &c in self.cumulative.iter().chain(std::iter::once(&self.count)) {
            out.push((c - prev).max(0.0));
            prev = c;
        }
        out
    }

    /// Restricts to the bounds shared with `other` (cumulative counts at a shared bound stay
    /// exact), so histograms with different layouts can be added.
    pub(super) fn restricted_to(&self, bounds: &[f64]) -> Histogram {
        let mut out = Histogram::empty(Vec::new());
        for (b, c) in self.bounds.iter().zip(&self.cumulative) {
            if bounds.contains(b) {
                out.bounds.push(*b);
                out.cumulative.push(*c);
            }
        }
        out.count = self.count;
        out.sum = self.sum;
        out
    }

    /// No observation at all (whatever the bounds).
    pub fn is_zero(&self) -> bool {
        self.count == 0.0 && self.sum == 0.0 && self.cumulative.iter().all(|c| *c == 0.0)
    }

    /// Whether this histogram cannot have grown from `earlier`: a count went down or the
    /// buckets changed (a new process). Growing from an empty histogram is always possible.
    pub(super) fn went_backwards_from(&self, earlier: &Histogram) -> bool {
        if earlier.is_zero() {
            return false;
        }
        self.bounds != earlier.bounds
            || self.count < earlier.count
            || self
                .cumulative
                .iter()
                .zip(&earlier.cumulative)
                .any(|(now, before)| now < before)
    }

    /// Sum of two histograms over their shared bounds. An empty histogram adds nothing and
    /// keeps the other's bounds.
    #[must_use]
    pub fn plus(&self, other: &Histogram) -> Histogram {
        if other.is_zero() {
            return self.clone();
        }
        if self.is_zero() {
            return other.clone();
        }
        if self.bounds == other.bounds {
            // The usual case: one layout, added bucket by bucket.
            return Histogram {
                bounds: self.bounds.clone(),
                cumulative: self
                    .cumulative
                    .iter()
                    .zip(&other.cumulative)
                    .map(|(x, y)| x + y)
                    .collect(),
                count: self.count + other.count,
                sum: self.sum + other.sum,
            };
        }
        let shared: Vec<f64> = self
            .bounds
            .iter()
            .copied()
            .filter(|b| other.bounds.contains(b))
            .collect();
        let a = self.restricted_to(&shared);
        let b = other.restricted_to(&shared);
        Histogram {
            cumulative: a
                .cumulative
                .iter()
                .zip(&b.cumulative)
                .map(|(x, y)| x + y)
                .collect(),
            bounds: shared,
            count: a.count + b.count,
            sum: a.sum + b.sum,
        }
    }

    /// `self - earlier`, or `None` when the histogram went backwards or changed layout
    /// (the backend restarted: the counts start again from zero).
    pub(super) fn minus(&self, earlier: &Histogram) -> Option<Histogram> {
        if earlier.is_zero() {
            return Some(self.clone());
        }
        if self.went_backwards_from(earlier) {
            return None;
        }
        let mut cumulative = Vec::with_capacity(self.cumulative.len());
        for (now, before) in self.cumulative.iter().zip(&earlier.cumulative) {
            if now < before {
                return None;
            }
            cumulative.push(now - before);
        }
        Some(Histogram {
            bounds: self.bounds.clone(),
            cumulative,
            count: self.count - earlier.count,
            sum: (self.sum - earlier.sum).max(0.0),
        })
    }
}
