//! The synthetic service: clients open flows (connections), each flow sends its requests to
//! one backend of the group its new-flow hash chose, and every backend keeps cumulative
//! Prometheus counters that it exposes as text, as a real backend does.
//!
//! Clients differ: with an intra-flow correlation `rho`, each flow draws its own error
//! propensity (beta, mean the group's error rate, intra-class correlation `rho`), its own
//! latency level (a normal offset of the log-latency carrying a share `rho` of its variance)
//! and its own class mix (Dirichlet around the group's class shares, correlation `rho`). With
//! `rho = 0` every request is independent.

use std::fmt::Write as _;

use rand::rngs::StdRng;
use rand::Rng;
use rand_distr::{Beta, Distribution, Gamma, Poisson, StandardNormal};

/// Class shares of the predictions.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Classes {
    pub names: Vec<String>,
    pub shares: Vec<f64>,
}

impl Classes {
    /// Two classes, the first with `first` of the predictions.
    pub(super) fn two(first: f64) -> Classes {
        Classes {
            names: vec!["first".into(), "second".into()],
            shares: vec![first, 1.0 - first],
        }
    }

    /// `k` classes with Zipf shares (`1/i`, normalised).
    pub(super) fn zipf(k: usize) -> Classes {
        let raw: Vec<f64> = (1..=k).map(|i| 1.0 / i as f64).collect();
        let total: f64 = raw.iter().sum();
        Classes {
            names: (0..k).map(|i| format!("c{i:02}")).collect(),
            shares: raw.iter().map(|v| v / total).collect(),
        }
    }

    /// Total variation distance to the uniform distribution over the same classes.
    pub(super) fn distance_to_uniform(&self) -> f64 {
        let u = 1.0 / self.shares.len() as f64;
        self.shares.iter().map(|p| (p - u).abs()).sum::<f64>() / 2.0
    }
}

/// How one group departs from the service's base behaviour at one moment (a fault).
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct Behaviour {
    /// Probability of an extra failure, independent of the client (on top of the base).
    pub extra_error: f64,
    pub latency_shift_ms: f64,
    /// With this probability a prediction is replaced by `shifted_to` (a class index, or
    /// uniform over all classes when `None`).
    pub class_shift: f64,
    pub shifted_to: Option<usize>,
}

/// The traffic model.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct TrafficModel {
    pub requests_per_second: f64,
    /// Requests per flow (1: a new connection per request).
    pub flow_requests: u32,
    /// Requests a flow sends per second.
    pub flow_rate: u32,
    /// Intra-flow correlation.
    pub rho: f64,
    pub base_error_rate: f64,
    pub latency_median_ms: f64,
    pub latency_sigma: f64,
    pub classes: Classes,
    /// Histogram bounds, seconds.
    pub buckets: Vec<f64>,
}

/// One open flow.
struct Flow {
    canary: bool,
    backend: usize,
    left: u32,
    /// Error propensity of this client.
    error: f64,
    latency_offset: f64,
    /// Cumulative class shares of this flow, or `None` for the group's.
    classes: Option<Vec<f64>>,
}

/// A backend's cumulative counters.
#[derive(Clone, Debug, Default)]
pub(super) struct Counters {
    pub requests: u64,
    pub errors: u64,
    /// Per bucket (not cumulative), the last is `+Inf`.
    pub buckets: Vec<u64>,
    pub sum_seconds: f64,
    pub classes: Vec<u64>,
}

impl Counters {
    fn new(buckets: usize, classes: usize) -> Counters {
        Counters {
            buckets: vec![0; buckets + 1],
            classes: vec![0; classes],
            ..Counters::default()
        }
    }

    /// The Prometheus text exposition of these counters (the series the default
    /// `[services.upstream]` names).
    pub(super) fn exposition(&self, bounds: &[f64], class_names: &[String]) -> String {
        let mut t = String::with_capacity(1024);
        let _ = writeln!(t, "# TYPE requests_total counter");
        let _ = writeln!(t, "requests_total {}", self.requests);
        let _ = writeln!(t, "# TYPE request_errors_total counter");
        let _ = writeln!(t, "request_errors_total {}", self.errors);
        let _ = writeln!(t, "# TYPE request_duration_seconds histogram");
        let mut cumulative = 0;
        for (i, b) in bounds.iter().enumerate() {
            cumulative += self.buckets[i];
            let _ = writeln!(
                t,
                "request_duration_seconds_bucket{{le=\"{b}\"}} {cumulative}"
            );
        }
        cumulative += self.buckets[bounds.len()];
        let _ = writeln!(
            t,
            "request_duration_seconds_bucket{{le=\"+Inf\"}} {cumulative}"
        );
        let _ = writeln!(t, "request_duration_seconds_sum {}", self.sum_seconds);
        let _ = writeln!(t, "request_duration_seconds_count {cumulative}");
        let _ = writeln!(t, "# TYPE predictions_total counter");
        for (name, c) in class_names.iter().zip(&self.classes) {
            if *c > 0 {
                let _ = writeln!(t, "predictions_total{{class=\"{name}\"}} {c}");
            }
        }
        t
    }
}

/// The service's backends and open flows.
pub(super) struct Service {
    model: TrafficModel,
    cumulative_shares: Vec<f64>,
    flows: Vec<Flow>,
    /// `[stable backends, canary backends]`.
    pub backends: [Vec<Counters>; 2],
}

/// What one second of traffic did.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Second {
    /// New flows per group `[stable, canary]`.
    pub new_flows: [u64; 2],
    /// Requests served per group.
    pub requests: [u64; 2],
}

fn cumulative(shares: &[f64]) -> Vec<f64> {
    let mut acc = 0.0;
    shares
        .iter()
        .map(|s| {
            acc += s;
            acc
        })
        .collect()
}

fn pick(cumulative: &[f64], u: f64) -> usize {
    let total = cumulative.last().copied().unwrap_or(1.0);
    cumulative
        .partition_point(|c| *c < u * total)
        .min(cumulative.len() - 1)
}

impl Service {
    pub(super) fn new(model: TrafficModel, backends: [usize; 2]) -> Service {
        let b = model.buckets.len();
        let k = model.classes.shares.len();
        Service {
            cumulative_shares: cumulative(&model.classes.shares),
            backends: [
                vec![Counters::new(b, k); backends[0]],
                vec![Counters::new(b, k); backends[1]],
            ],
            flows: Vec::new(),
            model,
        }
    }

    pub(super) fn model(&self) -> &TrafficModel {
        &self.model
    }

    /// A backend restarts: its counters start again from zero.
    pub(super) fn restart(&mut self, group: usize, backend: usize) {
        let b = self.model.buckets.len();
        let k = self.model.classes.shares.len();
        self.backends[group][backend] = Counters::new(b, k);
    }

    fn new_flow(&self, rng: &mut StdRng, canary: bool) -> Flow {
        let m = &self.model;
        let group = usize::from(canary);
        let backend = rng.gen_range(0..self.backends[group].len());
        let rho = m.rho;
        let (error, latency_offset, classes) = if rho > 0.0 {
            let s = 1.0 / rho - 1.0;
            let p = m.base_error_rate.clamp(1e-9, 1.0 - 1e-9);
            let error = Beta::new(p * s, (1.0 - p) * s).map_or(p, |d| d.sample(rng));
            let z: f64 = rng.sample(StandardNormal);
            let mut shares: Vec<f64> = m
                .classes
                .shares
                .iter()
                .map(|&a| Gamma::new((a * s).max(1e-9), 1.0).map_or(a, |d| d.sample(rng)))
                .collect();
            let total: f64 = shares.iter().sum();
            if total > 0.0 {
                for v in &mut shares {
                    *v /= total;
                }
            } else {
                shares.clone_from(&m.classes.shares);
            }
            (
                error,
                rho.sqrt() * m.latency_sigma * z,
                Some(cumulative(&shares)),
            )
        } else {
            (m.base_error_rate, 0.0, None)
        };
        Flow {
            canary,
            backend,
            left: m.flow_requests.max(1),
            error,
            latency_offset,
            classes,
        }
    }

    /// One second of traffic: new flows arrive (each to canary with probability `weight`),
    /// every open flow sends its requests for this second. `behaviour` is `[stable, canary]`.
    pub(super) fn second(
        &mut self,
        rng: &mut StdRng,
        weight: f64,
        behaviour: &[Behaviour; 2],
    ) -> Second {
        let mut out = Second::default();
        let flows_per_second =
            self.model.requests_per_second / f64::from(self.model.flow_requests.max(1));
        let arrivals = Poisson::new(flows_per_second).map_or(0.0, |d| d.sample(rng)) as u64;
        for _ in 0..arrivals {
            let canary = rng.gen::<f64>() < weight;
            out.new_flows[usize::from(canary)] += 1;
            let flow = self.new_flow(rng, canary);
            self.flows.push(flow);
        }
        let rate = self.model.flow_rate.max(1);
        let residual_sd = (1.0 - self.model.rho).max(0.0).sqrt() * self.model.latency_sigma;
        let ln_median = self.model.latency_median_ms.ln();
        let uniform_classes = self.model.classes.shares.len();
        let mut flows = std::mem::take(&mut self.flows);
        for flow in &mut flows {
            let group = usize::from(flow.canary);
            let fault = &behaviour[group];
            let n = flow.left.min(rate);
            flow.left -= n;
            out.requests[group] += u64::from(n);
            let counters = &mut self.backends[group][flow.backend];
            for _ in 0..n {
                counters.requests += 1;
                // The client's own failures, plus a fault's extra independent ones.
                let failed = rng.gen::<f64>() < flow.error
                    || (fault.extra_error > 0.0 && rng.gen::<f64>() < fault.extra_error);
                if failed {
                    counters.errors += 1;
                }
                let z: f64 = rng.sample(StandardNormal);
                let ms = (ln_median + flow.latency_offset + residual_sd * z).exp()
                    + fault.latency_shift_ms;
                let seconds = ms / 1000.0;
                let bucket = self.model.buckets.partition_point(|le| *le < seconds);
                counters.buckets[bucket] += 1;
                counters.sum_seconds += seconds;
                let class = if fault.class_shift > 0.0 && rng.gen::<f64>() < fault.class_shift {
                    fault
                        .shifted_to
                        .unwrap_or_else(|| rng.gen_range(0..uniform_classes))
                } else {
                    let u = rng.gen::<f64>();
                    pick(
                        flow.classes.as_deref().unwrap_or(&self.cumulative_shares),
                        u,
                    )
                };
                counters.classes[class] += 1;
            }
        }
        flows.retain(|f| f.left > 0);
        self.flows = flows;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn model(rho: f64, flow_requests: u32) -> TrafficModel {
        TrafficModel {
            requests_per_second: 200.0,
            flow_requests,
            flow_rate: 10,
            rho,
            base_error_rate: 0.05,
            latency_median_ms: 100.0,
            latency_sigma: 0.5,
            classes: Classes::two(0.6),
            buckets: vec![0.05, 0.1, 0.2, 0.5],
        }
    }

    fn healthy() -> [Behaviour; 2] {
        [Behaviour::default(), Behaviour::default()]
    }

    #[test]
    fn rates_and_shares_match_the_model() {
        for (rho, m) in [(0.0, 1), (0.2, 20)] {
            let mut rng = StdRng::seed_from_u64(1);
            let mut s = Service::new(model(rho, m), [2, 1]);
            let mut requests = [0; 2];
            for _ in 0..600 {
                let sec = s.second(&mut rng, 0.25, &healthy());
                requests[0] += sec.requests[0];
                requests[1] += sec.requests[1];
            }
            let total = (requests[0] + requests[1]) as f64;
            assert!((total / 600.0 / 200.0 - 1.0).abs() < 0.05, "{total}");
            let share = requests[1] as f64 / total;
            assert!((share - 0.25).abs() < 0.05, "{share}");
            let c: Vec<&Counters> = s.backends.iter().flatten().collect();
            let errors: u64 = c.iter().map(|c| c.errors).sum();
            let rate = errors as f64 / total;
            assert!((rate - 0.05).abs() < 0.01, "rho {rho}: {rate}");
            let first: u64 = c.iter().map(|c| c.classes[0]).sum();
            assert!((first as f64 / total - 0.6).abs() < 0.05);
        }
    }

    #[test]
    fn exposition_is_cumulative_prometheus_text() {
        let mut rng = StdRng::seed_from_u64(2);
        let mut s = Service::new(model(0.0, 1), [1, 1]);
        s.second(&mut rng, 0.5, &healthy());
        let c = &s.backends[1][0];
        let text = c.exposition(&s.model.buckets, &s.model.classes.names);
        assert!(
            text.contains(&format!("requests_total {}", c.requests)),
            "{text}"
        );
        assert!(text.contains(&format!(
            "request_duration_seconds_bucket{{le=\"+Inf\"}} {}",
            c.requests
        )));
        s.restart(1, 0);
        assert_eq!(s.backends[1][0].requests, 0);
    }

    #[test]
    fn zipf_classes() {
        let z = Classes::zipf(20);
        assert!((z.shares.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert!(z.shares[0] > z.shares[19] * 19.0);
        assert!(z.distance_to_uniform() > 0.3);
    }
}
