//! `canary status` as text.

use std::fmt::Write as _;

use canary_userspace::api::ServiceStatus;

fn opt(v: Option<f64>, scale: f64, digits: usize) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{:.*}", digits, v * scale))
}

/// A service as a readable multi-line table (`canary status`).
pub(crate) fn service(s: &ServiceStatus) -> String {
    let mut out = String::new();
    let step = match s.step {
        Some(i) => format!("{}/{}", i + 1, s.steps.len()),
        None => "-".to_string(),
    };
    let _ = writeln!(
        out,
        "service {} ({} {})  phase {}{}  step {}  weight {:.2}%  measured {}",
        s.name,
        s.protocol,
        s.vip,
        s.phase,
        if s.paused { " (paused)" } else { "" },
        step,
        s.weight_percent,
        s.measured_canary_share
            .map_or_else(|| "-".to_string(), |s| format!("{:.2}%", s * 100.0)),
    );
    let _ = writeln!(
        out,
        "  {:<7} {:>9} {:>8} {:>9} {:>9} {:>9}  predictions",
        "group", "requests", "errors", "err%", "mean ms", "p95 ms"
    );
    for g in &s.groups {
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
    for b in &s.backends {
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
            let reasons = if b.metrics_problem_reasons.is_empty() {
                String::new()
            } else {
                format!(" [{}]", b.metrics_problem_reasons.join(","))
            };
            let _ = writeln!(out, "  {:<12} metrics{reasons}: {p}", "");
        }
    }
    for w in &s.signals_without_data {
        let _ = writeln!(out, "  NO DATA for {}: {}", w.signal, w.why);
    }
    if !s.dry_run.is_empty() {
        let _ = writeln!(
            out,
            "  dry run (judged, never acted on): {}",
            s.dry_run.join(", ")
        );
    }
    if let Some(d) = &s.last_decision {
        let _ = writeln!(out, "  last decision: {d}");
    }
    out
}

/// The cluster as one node sees it: who leads, the store, and every node.
pub(crate) fn cluster(c: &canary_userspace::api::ClusterStatus) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "cluster: this node {}, leader {}{}",
        c.node,
        c.leader.as_deref().unwrap_or("none"),
        if c.leading {
            " (this node decides)"
        } else {
            ""
        }
    );
    match &c.store_problem {
        Some(why) => {
            let _ = writeln!(t, "  etcd unreachable, the rollout holds: {why}");
        }
        None => {
            let _ = writeln!(t, "  etcd reachable");
        }
    }
    if c.heartbeat_held {
        let _ = writeln!(
            t,
            "  heartbeat held (no live leader or no etcd): after heartbeat_timeout new flows go to stable"
        );
    }
    let _ = writeln!(
        t,
        "  {:<16} {:<6} {:<18} {:<10} {:<9} flow table",
        "node", "alive", "applied version", "weight %", "canary %"
    );
    for n in &c.nodes {
        let versions: Vec<String> = n
            .applied_versions
            .values()
            .map(|v| v.map_or_else(|| "-".to_string(), |v| v.to_string()))
            .collect();
        let weights: Vec<String> = n
            .applied_weight_percent
            .values()
            .map(|w| w.map_or_else(|| "-".to_string(), |w| format!("{w:.2}")))
            .collect();
        let _ = writeln!(
            t,
            "  {:<16} {:<6} {:<18} {:<10} {:<9} {}/{}",
            n.name,
            if n.alive { "yes" } else { "no" },
            versions.join(","),
            weights.join(","),
            opt(n.measured_canary_share, 100.0, 1),
            n.flow_table_entries,
            n.flow_table_capacity
        );
        for (service, why) in &n.refused {
            let _ = writeln!(t, "    {service}: {why}");
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use canary_userspace::api::{BackendStatus, GroupStatus, SignalWithoutData};

    use super::*;

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
            signals_without_data: vec![SignalWithoutData {
                signal: "latency_p95".into(),
                why: "p95 lies in the +Inf bucket".into(),
            }],
            ..ServiceStatus::default()
        };
        let text = service(&s);
        for needle in [
            "phase stepping",
            "step 2/5",
            "25.12%",
            "1.00",
            "health check failed",
            "NO DATA for latency_p95: p95 lies in the +Inf bucket",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
    }
}
