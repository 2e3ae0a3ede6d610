//! What the daemon reports about itself: the `/status` document, shared by the admin API and
//! the CLI (which renders it as a table).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::rollout::Decision;

/// The whole `/status` document.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Status {
    pub services: Vec<ServiceStatus>,
    /// Terminal outcomes and events of the XDP program since it was loaded, by name.
    pub xdp: BTreeMap<String, u64>,
}

/// One service's rollout, groups and backends.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub name: String,
    pub vip: String,
    pub protocol: String,
    /// `pending`, `stepping`, `promoted`, `rolled_back`, or `idle` (no canary configured).
    pub phase: String,
    pub paused: bool,
    /// Index into `steps` of the current step, when stepping.
    pub step: Option<usize>,
    /// Configured steps, percent of new flows.
    pub steps: Vec<f64>,
    /// Canary weight now programmed, percent of new flows.
    pub weight_percent: f64,
    /// Canary share of new flows the kernel counted over the last evaluation window (0..1).
    pub measured_canary_share: Option<f64>,
    /// Stable then canary.
    pub groups: Vec<GroupStatus>,
    pub backends: Vec<BackendStatus>,
    pub last_decision: Option<Decision>,
    /// The most recent decisions and operator actions, newest last.
    pub events: Vec<Decision>,
}

/// One group's figures over the current evaluation window.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct GroupStatus {
    pub group: String,
    pub requests: u64,
    pub errors: u64,
    pub error_rate: Option<f64>,
    pub latency_mean_seconds: Option<f64>,
    pub latency_p95_seconds: Option<f64>,
    pub predictions: BTreeMap<String, u64>,
    /// New flows the kernel sent to this group in the window.
    pub new_flows: u64,
}

/// One backend's state.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct BackendStatus {
    pub name: String,
    pub group: String,
    pub address: String,
    pub up: bool,
    /// Why it is down (failed health checks, no MAC), if it is.
    pub down_reason: Option<String>,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    /// Requests the backend itself reports (its `requests` series), if scraped.
    pub reported_requests: Option<f64>,
    pub metrics_ok: bool,
    /// Why its metrics, or some of its series, are missing (failed scrape, malformed series).
    #[serde(default)]
    pub metrics_problem: Option<String>,
    /// The model versions it reports (`upstream.version_label`), if configured.
    #[serde(default)]
    pub reported_versions: Vec<String>,
}

fn opt(v: Option<f64>, scale: f64, digits: usize) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{:.*}", digits, v * scale))
}

impl ServiceStatus {
    /// A readable multi-line table (`canary status`).
    pub fn render(&self) -> String {
        let mut out = String::new();
        let step = match self.step {
            Some(i) => format!("{}/{}", i + 1, self.steps.len()),
            None => "-".to_string(),
        };
        let _ = writeln!(
            out,
            "service {} ({} {})  phase {}{}  step {}  weight {:.2}%  measured {}",
            self.name,
            self.protocol,
            self.vip,
            self.phase,
            if self.paused { " (paused)" } else { "" },
            step,
            self.weight_percent,
            self.measured_canary_share
                .map_or_else(|| "-".to_string(), |s| format!("{:.2}%", s * 100.0)),
        );
        let _ = writeln!(
            out,
            "  {:<7} {:>9} {:>8} {:>9} {:>9} {:>9}  predictions",
            "group", "requests", "errors", "err%", "mean ms", "p95 ms"
        );
        for g in &self.groups {
            let preds: Vec<String> = g
                .predictions
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            let _ = writeln!(
                out,
                "  {:<7} {:>9} {:>8} {:>9} {:>9} {:>9}  {}",
                g.group,
                g.requests,
                g.errors,
                opt(g.error_rate, 100.0, 2),
                opt(g.latency_mean_seconds, 1000.0, 1),
                opt(g.latency_p95_seconds, 1000.0, 1),
                preds.join(" "),
            );
        }
        let _ = writeln!(
            out,
            "  {:<12} {:<7} {:<16} {:<5} {:>10} {:>9}",
            "backend", "group", "address", "up", "packets", "flows"
        );
        for b in &self.backends {
            let _ = writeln!(
                out,
                "  {:<12} {:<7} {:<16} {:<5} {:>10} {:>9}{}{}",
                b.name,
                b.group,
                b.address,
                if b.up { "yes" } else { "no" },
                b.packets,
                b.new_flows,
                if b.reported_versions.is_empty() {
                    String::new()
                } else {
                    format!("  version {}", b.reported_versions.join(","))
                },
                b.down_reason
                    .as_ref()
                    .map(|r| format!("  ({r})"))
                    .unwrap_or_default(),
            );
            if let Some(p) = &b.metrics_problem {
                let _ = writeln!(out, "  {:<12} metrics: {p}", "");
            }
        }
        if let Some(d) = &self.last_decision {
            let _ = writeln!(out, "  last decision: {d}");
        }
        out
    }
}

impl Status {
    /// Find a service by name, or the only one when `name` is `None`.
    pub fn service(&self, name: Option<&str>) -> Result<&ServiceStatus, String> {
        select_service(self.services.iter().map(|s| s.name.as_str()), name)
            .map(|i| &self.services[i])
    }
}

/// Index of the service called `name`, or of the only service when `name` is `None`.
pub fn select_service<'a>(
    names: impl Iterator<Item = &'a str>,
    name: Option<&str>,
) -> Result<usize, String> {
    let names: Vec<&str> = names.collect();
    match name {
        Some(n) => names.iter().position(|s| *s == n).ok_or_else(|| {
            format!(
                "no service named {n:?}; configured services: {}",
                names.join(", ")
            )
        }),
        None if names.len() == 1 => Ok(0),
        None if names.is_empty() => Err("no services are configured".to_string()),
        None => Err(format!(
            "several services are configured; pass --service NAME (one of: {})",
            names.join(", ")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn select_service_by_name_or_only_one() {
        let one = ["a"];
        assert_eq!(select_service(one.iter().copied(), None), Ok(0));
        let two = ["a", "b"];
        assert_eq!(select_service(two.iter().copied(), Some("b")), Ok(1));
        let err = select_service(two.iter().copied(), None).unwrap_err();
        assert!(err.contains("--service"), "{err}");
        let err = select_service(two.iter().copied(), Some("c")).unwrap_err();
        assert!(err.contains("a, b"), "{err}");
    }

    #[test]
    fn render_shows_groups_backends_and_decision() {
        let s = ServiceStatus {
            name: "sentiment".into(),
            vip: "198.18.0.100:8080".into(),
            protocol: "tcp".into(),
            phase: "stepping".into(),
            step: Some(1),
            steps: vec![10.0, 25.0, 50.0, 75.0, 100.0],
            weight_percent: 25.0,
            measured_canary_share: Some(0.2512),
            groups: vec![GroupStatus {
                group: "stable".into(),
                requests: 1000,
                errors: 10,
                error_rate: Some(0.01),
                ..GroupStatus::default()
            }],
            backends: vec![BackendStatus {
                name: "v1-a".into(),
                group: "stable".into(),
                up: false,
                down_reason: Some("health check failed 3 times".into()),
                ..BackendStatus::default()
            }],
            ..ServiceStatus::default()
        };
        let text = s.render();
        for needle in [
            "phase stepping",
            "step 2/5",
            "25.12%",
            "1.00",
            "health check failed",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
    }
}
