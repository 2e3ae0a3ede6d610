//! The daemon writes every data-plane setting into the kernel's `CONFIG` map, read back here
//! from the pin as the XDP program sees it: the balancer interface's MAC (`lb_mac`: frames to
//! any other MAC are not balanced, and forwarded frames carry it as their source),
//! `syn_replace_after` and the flood guard's rate. A burst of new connections above the rate
//! engages the flood guard with no failed request. A new MAC on the interface is followed. A
//! restart with another config writes the
//! new values; a reload that changes them is refused and changes nothing.

mod e2e_support;

use std::time::Duration;

use canary_lab::deployment::{Deployment, DeploymentSpec};
use canary_lab::lab::LabSpec;
use e2e_support::{load_all_clients, new_conn_load, pinned_global_config, start, totals};

fn xdp_counter(d: &Deployment, name: &str) -> u64 {
    d.status().unwrap().xdp.get(name).copied().unwrap_or(0)
}

const RATE: u32 = 100;
const BURST: Duration = Duration::from_secs(6);

#[test]
fn the_daemon_writes_every_dataplane_setting_and_the_flood_guard_engages() {
    let mut spec = DeploymentSpec::new(LabSpec::unique_tag('g'));
    spec.lab.clients = 1;
    spec.lab.stable = 2;
    spec.lab.canary = 1;
    spec.lab.client_extra_addresses = 10;
    spec.start = "paused".into();
    spec.syn_replace_after = "2500ms".into();
    spec.flood_guard_rate = RATE;
    let mut d = start(spec);
    let lb_mac = d.lab.load_balancer().unwrap().mac.0;

    let g = pinned_global_config(&d);
    println!("CONFIG after the first start: {g:?}");
    assert_eq!(g.lb_mac, lb_mac, "lb_mac is the balancer interface's MAC");
    assert_eq!(g.syn_replace_after_ms, 2500);
    assert_eq!(g.flood_guard_rate, RATE);
    assert_eq!(g.hash_seed, canary_userspace::config::DEFAULT_HASH_SEED);

    // A burst of short connections, well above the guard's rate.
    let names = [
        "tx",
        "tx_flood_guard",
        "pass_not_our_mac",
        "pass_not_service",
    ];
    let before: Vec<u64> = names.iter().map(|n| xdp_counter(&d, n)).collect();
    let mut load = new_conn_load(&d, &d.lab.clients()[0], 0, 16);
    load.requests = None;
    load.duration = BURST;
    let reports = load_all_clients(&d, &load);
    e2e_support::settle_counters();
    let delta: Vec<u64> = names
        .iter()
        .zip(&before)
        .map(|(n, b)| xdp_counter(&d, n) - b)
        .collect();
    let (requests, ok, failed, transport, http) = totals(&reports);
    println!(
        "burst: {requests} requests ({:.0} new connections/s), {ok} ok, {failed} failed \
         ({transport} connection-level, {http} HTTP); XDP {names:?} +{delta:?}",
        requests as f64 / BURST.as_secs_f64()
    );
    assert_eq!(
        failed,
        0,
        "{:?}",
        reports
            .iter()
            .map(|r| &r.failure_samples)
            .collect::<Vec<_>>()
    );
    // Every CPU admits at most RATE new flows a second; this many cannot all have been.
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get) as u64;
    let admissible = u64::from(RATE) * cpus * (BURST.as_secs() + 1);
    assert!(
        requests > 2 * admissible,
        "the burst ({requests} connections) is too small to exceed the flood guard's rate \
         ({RATE}/s on each of {cpus} CPUs)"
    );
    assert!(
        delta[1] > 0,
        "no new flow was balanced by the flood guard (tx_flood_guard)"
    );
    // Frames to the balancer's MAC were balanced: none was passed as another host's.
    assert!(delta[0] > 0);
    assert_eq!(delta[2], 0, "frames seen as not addressed to the balancer");

    // The interface's MAC changes while the daemon runs: the new one is written within a few
    // polls (and the old one back again).
    let lb = d.lab.load_balancer().unwrap().netns.clone();
    for mac in [[0x02, 0, 0xc6, 0x12, 0xee, 0x01], lb_mac] {
        let text = canary_userspace::domain::format_mac(mac);
        d.lab
            .exec_in(&lb, &["ip", "link", "set", "dev", "eth0", "address", &text])
            .expect("set the interface's MAC");
        let t = std::time::Instant::now();
        while pinned_global_config(&d).lb_mac != mac {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "CONFIG still has lb_mac {:?}, the interface has {text}",
                pinned_global_config(&d).lb_mac
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        println!(
            "lb_mac followed the interface to {text} in {:?}",
            t.elapsed()
        );
    }

    // A restart with other values writes them; lb_mac stays the interface's.
    d.stop_daemon().expect("daemon running");
    d.spec.syn_replace_after = "0s".into();
    d.spec.flood_guard_rate = 0;
    d.write_config().unwrap();
    d.start_daemon()
        .unwrap_or_else(|e| panic!("restart: {e}\n{}", d.daemon_log_tail()));
    let g = pinned_global_config(&d);
    println!("CONFIG after the restart: {g:?}");
    assert_eq!(
        (g.lb_mac, g.syn_replace_after_ms, g.flood_guard_rate),
        (lb_mac, 0, 0)
    );

    // A reload that changes them is refused, and the kernel keeps what it had.
    d.spec.flood_guard_rate = 5000;
    d.write_config().unwrap();
    let out = d.cli(&["reload"]).expect("canary reload");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    println!("reload: {text}");
    assert!(!out.status.success(), "a changed [dataplane] was accepted");
    assert!(text.contains("[dataplane] section changed"), "{text}");
    assert_eq!(pinned_global_config(&d), g);
}
