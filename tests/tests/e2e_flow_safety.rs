//! Long-lived keep-alive connections stay on their backend while the weight goes 10 -> 100 and
//! through a rollback in drain mode: no reset, every request answered, no connection moves.

mod e2e_support;

use std::net::IpAddr;
use std::time::Duration;

use canary_lab::deployment::DeploymentSpec;
use canary_lab::lab::LabSpec;
use canary_lab::loadgen::{LoadSpec, Report};
use e2e_support::{cli_ok, start, vip};

fn keepalive_load(
    d: &canary_lab::deployment::Deployment,
    client: usize,
    n: usize,
    secs: u64,
) -> LoadSpec {
    let mut l = LoadSpec::new(vip(d));
    l.new_conns = 0;
    l.keepalive = n;
    l.keepalive_interval = Duration::from_secs(1);
    l.duration = Duration::from_secs(secs);
    l.no_reconnect = true;
    l.timeout = Duration::from_secs(3);
    l.sources = d.lab.clients()[client]
        .source_addresses()
        .into_iter()
        .map(IpAddr::V4)
        .collect();
    l
}

fn check(name: &str, r: &Report, n: u64, min_requests: u64) {
    let k = &r.keep_alive_connections;
    let fewest = r.connections.iter().map(|c| c.requests).min().unwrap_or(0);
    println!(
        "{name}: {} connections, {} requests, {} ok, {} failed ({:?}), moved {}, broken {}, \
         versions {:?}, fewest requests on one connection {fewest}",
        k.connections, r.requests, r.ok, r.failed, r.failures, k.moved, k.broken, r.versions
    );
    assert_eq!(
        k.connections, n,
        "{name}: connections (none may be reopened)"
    );
    assert_eq!(
        r.failed, 0,
        "{name}: failures {:?} {:?}",
        r.failures, r.failure_samples
    );
    assert_eq!(k.broken, 0, "{name}: broken connections");
    assert_eq!(k.moved, 0, "{name}: connections that changed backend");
    assert!(
        fewest >= min_requests,
        "{name}: a connection answered only {fewest} requests"
    );
}

#[test]
fn keepalive_connections_survive_promotion_and_drain_rollback() {
    let mut spec = DeploymentSpec::new(LabSpec::unique_tag('f'));
    spec.lab.clients = 2;
    spec.lab.stable = 2;
    spec.lab.canary = 2;
    spec.lab.client_extra_addresses = 9;
    spec.start = "paused".into();
    spec.rollback = "drain".into();
    let d = start(spec);
    cli_ok(&d, &["set-weight", "10"]);

    // 500 connections opened at 10%, held for 40 s through 10 -> 100 and the rollback.
    let first = d.spawn_load(0, &keepalive_load(&d, 0, 500, 40)).unwrap();
    std::thread::sleep(Duration::from_secs(5));
    for w in ["25", "50", "75", "100"] {
        cli_ok(&d, &["set-weight", w]);
        println!("weight {w}%");
        std::thread::sleep(Duration::from_secs(2));
    }
    // 200 more opened at 100% (all on the canary), held through the rollback.
    let second = d.spawn_load(1, &keepalive_load(&d, 1, 200, 25)).unwrap();
    std::thread::sleep(Duration::from_secs(6));
    cli_ok(&d, &["rollback"]);
    let s = d.service_status().unwrap();
    println!("rolled back: phase {} weight {}", s.phase, s.weight_percent);
    assert_eq!(s.phase, "rolled_back");

    let first = d.wait_load(first, Duration::from_mins(1)).unwrap();
    let second = d.wait_load(second, Duration::from_mins(1)).unwrap();
    check("opened at 10%", &first, 500, 30);
    check("opened at 100%", &second, 200, 20);
    let v2 = first.versions.get("v2").copied().unwrap_or(0) as f64 / first.ok as f64;
    println!("opened at 10%: canary share of answers {:.1}%", v2 * 100.0);
    assert!(v2 > 0.03, "some of the first connections are on the canary");
    assert_eq!(
        second.versions.get("v1"),
        None,
        "all opened at 100% are on the canary"
    );
    assert!(second.keep_alive.ok > 0);
}
