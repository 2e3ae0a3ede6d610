//! Scenario 3 of the demo: three balancer nodes behind an ECMP multipath route share one
//! rollout through etcd; the leader is killed with `SIGKILL` (by PID) mid-rollout, another node
//! takes over and finishes it. The live view shows every node, who leads, and what each applied.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use canary_lab::cluster::ClusterDeployment;
use canary_lab::lab::{LabProcess, SERVICE_PORT};
use canary_lab::server::ModelServer;
use canary_userspace::api::{ServiceStatus, Status};

use super::{
    delta, deployment_spec, group_flows, load_spec, new_decisions, Outcome, Profile, SETTLE,
    VIEW_EVERY,
};

/// Lease TTL of every node: a dead leader is replaced within about two of these.
const LEASE_TTL: &str = "3s";
/// The leader is killed once the canary weight reaches this (percent), with steps left to take.
const KILL_AT: f64 = 25.0;

/// What the cluster scenario saw of the leader's death.
#[derive(Clone, Debug, Default)]
pub(super) struct Takeover {
    /// The node killed, and its daemon's PID.
    pub killed: String,
    pub pid: u32,
    /// The node that led next, and how long after the kill every survivor agreed on it.
    pub leader: Option<String>,
    pub after: Option<Duration>,
}

/// Plays scenario 3 in lab `tag`.
pub(super) fn play(tag: &str, server: ModelServer, timeout: Duration) -> Result<Outcome> {
    let t0 = Instant::now();
    let profile = Profile::of(server);
    let mut spec = deployment_spec(tag, server);
    spec.lab.balancers = 3;
    // A client reusing a 5-tuple a moment after its connection ended gets a new choice by the
    // weight, whichever node the multipath route sends it to.
    spec.syn_replace_after = "0s".into();
    println!(
        "bringing up lab {tag}: 3 balancer nodes behind an ECMP route, etcd, 3 stable v1, \
         2 canary v2, 2 clients; {server} on every backend; `canary run` on each node"
    );
    let mut d = ClusterDeployment::up(spec, LEASE_TTL)?;
    d.start_all().context("starting the three nodes")?;
    let leader = wait_leader(&d, &[0, 1, 2], Duration::from_secs(30))?;
    println!(
        "ready in {:.1} s; VIP {}:{SERVICE_PORT}; etcd {}; leader {leader}; configs {}",
        t0.elapsed().as_secs_f64(),
        d.lab.vip(),
        d.etcd_endpoint(),
        d.nodes
            .iter()
            .map(|n| n.config_path.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let vip = SocketAddr::from((d.lab.vip(), SERVICE_PORT));
    let load_for = timeout + Duration::from_secs(30);
    let mut loads: Vec<LabProcess> = Vec::new();
    for (c, client) in d.lab.clients().iter().enumerate() {
        let mut load = load_spec(vip, c, load_for, profile);
        load.sources = d.vip_load(client, 1, load_for).sources;
        loads.push(d.spawn_load(c, &load)?);
    }
    println!(
        "load: {} clients x {} new-connection workers, spread over the nodes by the route",
        loads.len(),
        profile.workers
    );
    println!(
        "live view of a node: sudo ip netns exec {} {} status --watch --config {}",
        d.nodes[0].netns,
        d.canary_bin.display(),
        d.nodes[0].config_path.display()
    );
    let outcome = watch(&mut d, tag, timeout);
    for l in &mut loads {
        l.kill();
    }
    outcome
}

/// The node every listed node agrees leads.
fn wait_leader(d: &ClusterDeployment, nodes: &[usize], timeout: Duration) -> Result<String> {
    let start = Instant::now();
    loop {
        let seen: Vec<Option<String>> = nodes.iter().map(|&i| d.leader_seen_by(i)).collect();
        if let Some(Some(first)) = seen.first() {
            if seen.iter().all(|s| s.as_deref() == Some(first.as_str())) {
                return Ok(first.clone());
            }
        }
        if start.elapsed() > timeout {
            bail!("the nodes agreed on no leader within {timeout:?}: {seen:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Follows the rollout through a live node, kills the leader at [`KILL_AT`], times the
/// takeover, and after the end keeps the view for [`SETTLE`].
fn watch(d: &mut ClusterDeployment, tag: &str, timeout: Duration) -> Result<Outcome> {
    let start = Instant::now();
    let mut out = Outcome::default();
    let mut seen = HashSet::new();
    let mut alive: Vec<usize> = (0..d.nodes.len()).collect();
    let mut takeover: Option<(Instant, Takeover)> = None;
    let mut last_view: Option<Instant> = None;
    let mut first_step: Option<Instant> = None;
    let mut ended_at: Option<Instant> = None;
    let mut end_flows: Option<(u64, u64)> = None;
    // Largest per-group request count seen per step window (`group@weight`).
    let mut requests: BTreeMap<String, u64> = BTreeMap::new();
    loop {
        let observer = alive[0];
        let status = match d.status(observer) {
            Ok(s) if !s.services.is_empty() => s,
            other => {
                if start.elapsed() > timeout {
                    bail!(
                        "node {} stopped answering ({:?}):\n{}",
                        d.nodes[observer].name,
                        other.err(),
                        d.log_tail(observer)
                    );
                }
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
        };
        let service = &status.services[0];
        if matches!(service.phase.as_str(), "stepping" | "promoted") {
            first_step.get_or_insert_with(Instant::now);
        }
        for g in &service.groups {
            let e = requests
                .entry(format!("{}@{}", g.group, service.weight_percent))
                .or_default();
            *e = (*e).max(g.requests);
        }
        for line in new_decisions(service, &mut seen, None) {
            println!("{line}");
        }
        let leader = status.cluster.as_ref().and_then(|c| c.leader.clone());

        // The leader dies mid-rollout: kill -9 by PID, no clean-up, its lease runs out.
        if takeover.is_none() && service.phase == "stepping" && service.weight_percent >= KILL_AT {
            if let Some(li) = leader.as_deref().and_then(|l| d.index_of(l)) {
                let pid = d.nodes[li].daemon.as_ref().map_or(0, LabProcess::pid);
                d.kill_node(li);
                alive.retain(|&i| i != li);
                let killed = d.nodes[li].name.clone();
                println!(
                    "[{:>5.1}s] !! leader {killed} killed: kill -9 {pid} at weight {}%, step {}; \
                     its lease (TTL {LEASE_TTL}) has to run out before another node leads",
                    start.elapsed().as_secs_f64(),
                    service.weight_percent,
                    step_text(service)
                );
                takeover = Some((
                    Instant::now(),
                    Takeover {
                        killed,
                        pid,
                        ..Takeover::default()
                    },
                ));
                continue;
            }
        }
        if let Some((killed_at, t)) = &mut takeover {
            if t.leader.is_none() {
                let seen: Vec<Option<String>> =
                    alive.iter().map(|&i| d.leader_seen_by(i)).collect();
                if let Some(Some(l)) = seen.first() {
                    if *l != t.killed && seen.iter().all(|s| s.as_deref() == Some(l.as_str())) {
                        t.leader = Some(l.clone());
                        t.after = Some(killed_at.elapsed());
                        println!(
                            "[{:>5.1}s] !! {l} leads now, {:.2} s after the kill; it resumes the \
                             rollout at step {}",
                            start.elapsed().as_secs_f64(),
                            killed_at.elapsed().as_secs_f64(),
                            step_text(service)
                        );
                    }
                }
            }
        }

        if last_view.is_none_or(|v| v.elapsed() >= VIEW_EVERY) {
            let killed = takeover.as_ref().map(|(_, t)| t);
            print!(
                "{}",
                render_cluster_view(start.elapsed(), tag, &status, killed)
            );
            last_view = Some(Instant::now());
        }

        let ended = matches!(service.phase.as_str(), "promoted" | "rolled_back");
        if ended_at.is_none() && (ended || start.elapsed() > timeout) {
            out.phase = if ended {
                service.phase.clone()
            } else {
                println!(
                    "giving up after {} s in phase {}",
                    timeout.as_secs(),
                    service.phase
                );
                format!("{} (timed out)", service.phase)
            };
            out.weights = step_targets(service);
            out.elapsed = first_step.map_or_else(|| start.elapsed(), |f| f.elapsed());
            out.reason = service
                .last_decision
                .as_ref()
                .map_or("-", |d| d.reason.as_str())
                .to_string();
            end_flows = Some(flows_over(d, &alive));
            for (key, n) in &requests {
                let group = key.split('@').next().unwrap_or("?").to_string();
                *out.requests.entry(group).or_default() += n;
            }
            ended_at = Some(Instant::now());
            println!(
                "[{:>5.1}s] rollout ended ({}); load continues for {} s to show where new flows go",
                start.elapsed().as_secs_f64(),
                out.phase,
                SETTLE.as_secs()
            );
        }
        if ended_at.is_some_and(|e| e.elapsed() >= SETTLE) {
            out.flows_after_end = end_flows.map(|e| delta(flows_over(d, &alive), e));
            out.takeover = takeover.map(|(_, t)| t);
            return Ok(out);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// New flows per group (stable, canary) the kernels of the `nodes` counted, summed.
fn flows_over(d: &ClusterDeployment, nodes: &[usize]) -> (u64, u64) {
    nodes
        .iter()
        .filter_map(|&i| d.service_status(i).ok())
        .map(|s| group_flows(&s))
        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
}

/// The weights (percent) the rollout's step and promote decisions moved to, in order.
pub(super) fn step_targets(s: &ServiceStatus) -> Vec<f64> {
    s.events
        .iter()
        .filter(|e| matches!(e.action.as_str(), "step" | "promote"))
        .map(|e| e.to.percent())
        .collect()
}

fn step_text(s: &ServiceStatus) -> String {
    s.step
        .map_or_else(|| "-".into(), |i| format!("{}/{}", i + 1, s.steps.len()))
}

/// The live view of the cluster as one node sees it: the rollout, then one line per node with
/// who leads, the document it applied, its weight, measured split and flow-table fill.
pub(super) fn render_cluster_view(
    t: Duration,
    tag: &str,
    status: &Status,
    killed: Option<&Takeover>,
) -> String {
    let mut out = String::new();
    let Some(s) = status.services.first() else {
        return out;
    };
    let cluster = status.cluster.as_ref();
    let leader = cluster.and_then(|c| c.leader.as_deref());
    let decided_by = s
        .cluster
        .as_ref()
        .and_then(|c| c.decided_by.as_deref())
        .unwrap_or("-");
    let _ = writeln!(
        out,
        "[{:>5.1}s] {tag} | phase {:<11} step {:<3} | canary weight {:>6.2}% (decided by {decided_by}) | leader {} | seen from {}",
        t.as_secs_f64(),
        s.phase,
        step_text(s),
        s.weight_percent,
        leader.unwrap_or("none (election pending)"),
        cluster.map_or("-", |c| c.node.as_str()),
    );
    let nodes = cluster.map(|c| c.nodes.as_slice()).unwrap_or_default();
    let killed_name = killed.map(|k| k.killed.as_str());
    for n in nodes {
        // A killed node's report stays in etcd until its lease runs out (and it may still be
        // named leader until then): it is marked as killed all the same.
        let role = if Some(n.name.as_str()) == killed_name {
            "KILLED"
        } else if Some(n.name.as_str()) == leader {
            "LEADER"
        } else {
            "follower"
        };
        let version = n
            .applied_versions
            .get(&s.name)
            .copied()
            .flatten()
            .map_or_else(|| "-".into(), |v| v.to_string());
        let weight = n
            .applied_weight_percent
            .get(&s.name)
            .copied()
            .flatten()
            .map_or_else(|| "-".into(), |w| format!("{w:.2}%"));
        let measured = n
            .measured_canary_share
            .map_or_else(|| "-".into(), |m| format!("{:.1}%", m * 100.0));
        let _ = writeln!(
            out,
            "         node {:<5} {:<8} {:<5} document {:>5}  weight {:>7}  measured canary {:>6}  flows {}/{}",
            n.name,
            role,
            if n.alive { "alive" } else { "gone" },
            version,
            weight,
            measured,
            n.flow_table_entries,
            n.flow_table_capacity,
        );
    }
    if let Some(k) = killed {
        let _ = writeln!(
            out,
            "         ({} killed with kill -9 {}: its report stays until its lease runs out)",
            k.killed, k.pid
        );
    }
    out
}

/// Scenario 3 passed: promoted through every step although the leader died, and another node
/// led the rest of the way.
pub(super) fn passed(o: &Outcome) -> bool {
    o.promoted_through_all_steps()
        && o.takeover
            .as_ref()
            .is_some_and(|t| t.leader.as_ref().is_some_and(|l| *l != t.killed))
}

/// For `Scenario::LeaderKilled`'s summary.
pub(super) fn summary(o: &Outcome) -> String {
    match &o.takeover {
        Some(t) => format!(
            "       leader {} killed (kill -9 {}); {} led after {}",
            t.killed,
            t.pid,
            t.leader.as_deref().unwrap_or("no node"),
            t.after
                .map_or_else(|| "never".into(), |a| format!("{:.2} s", a.as_secs_f64()))
        ),
        None => "       the leader was never killed".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(killed: &str) -> Status {
        let node = |name: &str, version: u64, weight: f64| {
            serde_json::json!({"name": name, "alive": true,
                "applied_versions": {"sentiment": version},
                "applied_weight_percent": {"sentiment": weight},
                "refused": {}, "measured_canary_share": 0.248,
                "flow_table_entries": 1200, "flow_table_capacity": 65536})
        };
        let nodes: Vec<_> = [("lb", 41, 25.0), ("lb1", 41, 25.0), ("lb2", 40, 10.0)]
            .into_iter()
            .filter(|(n, _, _)| *n != killed)
            .map(|(n, v, w)| node(n, v, w))
            .collect();
        serde_json::from_value(serde_json::json!({
            "services": [{
                "name": "sentiment", "vip": "198.18.0.100:8080", "protocol": "tcp",
                "paused": false, "backends": [], "groups": [],
                "phase": "stepping", "step": 1, "steps": [10.0, 25.0, 50.0, 75.0, 100.0],
                "weight_percent": 25.0, "measured_canary_share": 0.25,
                "cluster": {"applied_version": 41, "decided_by": "lb1", "refused": null},
                "events": [
                    {"at_ms": 1000, "action": "step", "reason": "warmup_done",
                     "phase": "stepping", "from": 0, "to": 1000, "message": "", "judgement": null},
                    {"at_ms": 2000, "action": "hold", "reason": "insufficient_samples",
                     "phase": "stepping", "from": 1000, "to": 1000, "message": "",
                     "judgement": null},
                    {"at_ms": 4000, "action": "step", "reason": "healthy", "phase": "stepping",
                     "from": 1000, "to": 2500, "message": "", "judgement": null}
                ]
            }],
            "xdp": {},
            "cluster": {"node": "lb", "leader": "lb1", "leading": false,
                "store_problem": null, "heartbeat_held": false, "nodes": nodes}
        }))
        .expect("a status as a cluster node writes it")
    }

    #[test]
    fn cluster_view_shows_every_node_and_who_leads() {
        let v = render_cluster_view(Duration::from_millis(7_500), "demo3", &status(""), None);
        for needle in [
            "[  7.5s] demo3 | phase stepping",
            "step 2/5",
            " 25.00% (decided by lb1) | leader lb1 | seen from lb",
            "node lb    follower alive document    41  weight  25.00%  measured canary  24.8%  flows 1200/65536",
            "node lb1   LEADER   alive document    41",
            "node lb2   follower alive document    40  weight  10.00%",
        ] {
            assert!(v.contains(needle), "missing {needle:?} in\n{v}");
        }
        assert!(!v.contains("KILLED"), "{v}");
    }

    #[test]
    fn a_killed_node_is_marked_until_and_after_its_report_is_gone() {
        let t = Takeover {
            killed: "lb2".into(),
            pid: 4242,
            ..Takeover::default()
        };
        // While its report is still in etcd the node is listed with it, marked as killed.
        let v = render_cluster_view(Duration::ZERO, "demo3", &status(""), Some(&t));
        assert!(
            v.contains("node lb2   KILLED   alive document    40"),
            "{v}"
        );
        assert!(v.contains("(lb2 killed with kill -9 4242"), "{v}");
        // Once its lease ran out only the note names it.
        let v = render_cluster_view(Duration::ZERO, "demo3", &status("lb2"), Some(&t));
        assert!(!v.contains("node lb2"), "{v}");
        assert!(v.contains("(lb2 killed with kill -9 4242"), "{v}");
    }

    #[test]
    fn step_targets_follow_step_and_promote_decisions_only() {
        let s = status("");
        assert_eq!(step_targets(&s.services[0]), vec![10.0, 25.0]);
    }

    #[test]
    fn passes_only_when_another_node_finished_the_rollout() {
        let done = Outcome {
            phase: "promoted".into(),
            weights: super::super::STEPS.to_vec(),
            flows_after_end: Some((0, 900)),
            takeover: Some(Takeover {
                killed: "lb".into(),
                pid: 1,
                leader: Some("lb1".into()),
                after: Some(Duration::from_secs(4)),
            }),
            ..Outcome::default()
        };
        assert!(passed(&done));
        let never_killed = Outcome {
            takeover: None,
            ..done.clone()
        };
        assert!(!passed(&never_killed));
        let no_new_leader = Outcome {
            takeover: Some(Takeover {
                leader: None,
                ..done.takeover.clone().unwrap()
            }),
            ..done.clone()
        };
        assert!(!passed(&no_new_leader));
        let step_repeated = Outcome {
            weights: vec![10.0, 25.0, 25.0, 50.0, 75.0, 100.0],
            ..done
        };
        assert!(!passed(&step_repeated));
    }
}
