//! Root-only: real namespaces, veths, a bridge, model servers and the load generator.
//! Skipped (with a message) when not root. Each test uses its own lab tag.

use std::time::Duration;

use canary_lab::bins;
use canary_lab::lab::{leftovers, spread_slot, Lab, LabSpec, Role, SERVICE_PORT};
use canary_lab::loadgen::{LoadSpec, Report};
use canary_lab::server::ModelServer;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

macro_rules! require_root {
    () => {
        if !is_root() {
            eprintln!("skipped: needs root (network namespaces)");
            return;
        }
    };
}

/// canary-model, built first if needed (the lab finds it next to the test binaries).
fn model_server() -> ModelServer {
    bins::locate_or_build("canary-model", "canary-model").expect("canary-model binary");
    ModelServer::CanaryModel
}

fn run_loadgen(lab: &Lab, netns: &str, spec: &LoadSpec) -> Report {
    let mut argv = vec![env!("CARGO_BIN_EXE_canary-loadgen").to_owned()];
    argv.extend(spec.to_args());
    let out = lab.exec_in(netns, &argv).expect("loadgen runs");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("bad report ({e}): {out}"))
}

#[test]
fn client_reaches_backends_directly_and_down_leaves_nothing() {
    require_root!();
    let spec = LabSpec {
        clients: 1,
        stable: 1,
        canary: 1,
        load_balancer: false,
        ..LabSpec::new(LabSpec::unique_tag('d'))
    };
    let tag = spec.tag.clone();
    let lab = Lab::up(&spec).expect("lab up");
    let models = lab
        .start_models(model_server(), |_| Vec::new())
        .expect("models start");
    assert_eq!(models.len(), 2);
    let client = lab.clients()[0].clone();

    for backend in lab.backends() {
        let mut load = LoadSpec::new(
            format!("{}:{SERVICE_PORT}", backend.address)
                .parse()
                .unwrap(),
        );
        load.requests = Some(400);
        load.duration = Duration::from_secs(30);
        load.new_conns = 4;
        load.keepalive = 4;
        load.keepalive_interval = Duration::from_millis(2);
        let r = run_loadgen(&lab, &client.netns, &load);
        println!(
            "{} {}: requests {} ok {} failed {} p50 {:.2} ms p99 {:.2} ms keep-alive conns {}",
            backend.name,
            backend.address,
            r.requests,
            r.ok,
            r.failed,
            r.latency_ms.p50,
            r.latency_ms.p99,
            r.keep_alive_connections.connections
        );
        assert_eq!(r.ok, 400, "failures: {:?}", r.failure_samples);
        let version = if backend.role == Role::Canary {
            "v2"
        } else {
            "v1"
        };
        assert_eq!(r.versions.get(version), Some(&400));
        assert_eq!(r.backends.get(&backend.name), Some(&400));
        assert_eq!(
            r.by_source.keys().collect::<Vec<_>>(),
            [&client.address.to_string()]
        );
        assert_eq!(r.keep_alive_connections.moved, 0);
        assert!(r.keep_alive.ok > 0 && r.new_connection.ok > 0);
    }

    // No load balancer: nobody may answer ARP for the VIP (backends hold it on lo only).
    let mut to_vip = LoadSpec::new(format!("{}:{SERVICE_PORT}", lab.vip()).parse().unwrap());
    to_vip.requests = Some(2);
    to_vip.new_conns = 1;
    to_vip.timeout = Duration::from_millis(500);
    let r = run_loadgen(&lab, &client.netns, &to_vip);
    assert_eq!(r.ok, 0, "a backend answered for the VIP: {r:?}");

    // The model's metrics are reachable at the address the controller's config would use.
    let metrics = lab
        .exec_in(
            &client.netns,
            &[
                env!("CARGO_BIN_EXE_canary-loadgen"),
                "--target",
                &format!("{}:{SERVICE_PORT}", lab.stable()[0].address),
                "--path",
                "/healthz",
                "--method",
                "GET",
                "--requests",
                "1",
                "--new-conns",
                "1",
            ],
        )
        .unwrap();
    // /healthz answers 200 with a non-JSON body: counted as an invalid body, not a failure to connect.
    let r: Report = serde_json::from_str(&metrics).unwrap();
    assert_eq!(r.failures.invalid_body, 1, "{r:?}");

    drop(models);
    lab.down().expect("down");
    assert_eq!(leftovers(&tag), Vec::<String>::new());
}

#[test]
fn bouncers_send_real_connections_to_one_backend_or_spread_them_by_flow() {
    require_root!();
    let spec = LabSpec {
        clients: 1,
        stable: 3,
        canary: 2,
        ..LabSpec::new(LabSpec::unique_tag('b'))
    };
    let tag = spec.tag.clone();
    let lab = Lab::up(&spec).expect("lab up");
    let models = lab
        .start_models(model_server(), |_| Vec::new())
        .expect("models start");
    let client = lab.clients()[0].clone();
    let lb = lab.load_balancer().unwrap().clone();
    let backends: Vec<_> = lab.backends().cloned().collect();
    // Nothing listens on the load balancer: an answer from the VIP came from a backend.
    let load = |requests: u64, keepalive: usize| {
        let mut l = LoadSpec::new(format!("{}:{SERVICE_PORT}", lab.vip()).parse().unwrap());
        l.requests = Some(requests);
        l.duration = Duration::from_mins(1);
        l.new_conns = 4;
        l.keepalive = keepalive;
        l.keepalive_interval = Duration::from_millis(2);
        l
    };

    // One backend: every connection to it.
    lab.attach_bouncer(&lb, &backends[0])
        .expect("attach bouncer");
    let r = run_loadgen(&lab, &client.netns, &load(200, 4));
    assert_eq!(r.ok, 200, "failures: {:?}", r.failure_samples);
    assert_eq!(
        r.backends.keys().collect::<Vec<_>>(),
        [&backends[0].name],
        "{r:?}"
    );
    lab.detach_bouncer(&lb).expect("detach bouncer");

    // Spreading: every backend, each connection kept on the one its source port picks.
    lab.attach_spreading_bouncer(&lb, &backends)
        .expect("attach spreading bouncer");
    let r = run_loadgen(&lab, &client.netns, &load(1200, 24));
    println!(
        "spread: requests {} ok {} failed {} backends {:?} keep-alive conns {} moved {}",
        r.requests,
        r.ok,
        r.failed,
        r.backends,
        r.keep_alive_connections.connections,
        r.keep_alive_connections.moved
    );
    assert_eq!(r.ok, 1200, "failures: {:?}", r.failure_samples);
    assert!(r.keep_alive.ok > 0 && r.new_connection.ok > 0, "{r:?}");
    let reached: Vec<_> = r.backends.keys().cloned().collect();
    let mut all: Vec<_> = backends.iter().map(|b| b.name.clone()).collect();
    all.sort();
    assert_eq!(reached, all, "every backend reached: {:?}", r.backends);
    assert_eq!(r.keep_alive_connections.moved, 0, "{r:?}");
    let mut checked = 0;
    for c in r.connections.iter().filter(|c| c.ok > 0) {
        let local: std::net::SocketAddr =
            c.local.as_deref().expect("local address").parse().unwrap();
        let want = &backends[spread_slot(local.port(), backends.len())].name;
        assert_eq!(
            c.backends.keys().collect::<Vec<_>>(),
            [want],
            "connection from port {}",
            local.port()
        );
        checked += 1;
    }
    assert!(checked >= 24, "{checked} keep-alive connections checked");
    lab.detach_bouncer(&lb).expect("detach spreading bouncer");

    drop(models);
    lab.down().expect("down");
    assert_eq!(leftovers(&tag), Vec::<String>::new());
}

#[test]
fn up_is_idempotent_and_down_ends_detached_processes() {
    require_root!();
    let spec = LabSpec {
        clients: 1,
        stable: 1,
        canary: 1,
        client_extra_addresses: 2,
        ..LabSpec::new(LabSpec::unique_tag('i'))
    };
    let tag = spec.tag.clone();
    let lab = Lab::up(&spec).expect("first up");
    let status = lab.status();
    assert!(status.is_up(), "{status}");
    assert!(status.bpffs_mounted && status.peer_xdp_pinned, "{status}");
    assert!(
        lab.peer_xdp_attached().unwrap(),
        "builtin XDP on the LB's peer veth"
    );
    println!("{status}");

    // Again, with the first still up: completes nothing, breaks nothing.
    let again = Lab::up(&spec).expect("second up").keep();
    assert_eq!(&again, lab.plan());
    assert!(Lab::status_of(&tag).unwrap().is_up());

    // The VIP answers ARP from the LB; the LB reaches a backend; extra client addresses exist.
    let client = &lab.clients()[0];
    let addrs = lab
        .exec_in(
            &client.netns,
            &["ip", "-4", "-o", "addr", "show", "dev", "eth0"],
        )
        .unwrap();
    for a in client.source_addresses() {
        assert!(addrs.contains(&format!("{a}/15")), "{addrs}");
    }
    let lb = lab.load_balancer().unwrap();
    // Nothing listens on the LB: a refused connection proves the LB answered ARP for the VIP.
    let mut to_vip = LoadSpec::new(format!("{}:{SERVICE_PORT}", lab.vip()).parse().unwrap());
    to_vip.requests = Some(1);
    to_vip.new_conns = 1;
    let r = run_loadgen(&lab, &client.netns, &to_vip);
    assert_eq!(r.failures.connect, 1, "{r:?}");
    assert!(r.failure_samples[0].contains("refused"), "{r:?}");
    let neigh = lab
        .exec_in(
            &client.netns,
            &["ip", "neigh", "show", &lab.vip().to_string()],
        )
        .unwrap();
    assert!(
        neigh.contains(&lb.mac.to_string()),
        "VIP resolved to the LB: {neigh}"
    );
    // The LB reaches a backend's model server (the controller's health and metrics path).
    let _models = lab.start_models(model_server(), |_| Vec::new()).unwrap();
    let mut health = LoadSpec::new(
        format!("{}:{SERVICE_PORT}", lab.stable()[0].address)
            .parse()
            .unwrap(),
    );
    health.path = "/healthz".into();
    health.method = "GET".into();
    health.requests = Some(1);
    health.new_conns = 1;
    let r = run_loadgen(&lab, &lb.netns, &health);
    assert_eq!(
        r.failures.invalid_body, 1,
        "200 with a plain-text body: {r:?}"
    );

    // The lab's bpffs (and the builtin pin) is visible to processes under `ip netns exec`.
    let pins = lab
        .exec_in(&lb.netns, &["ls", lab.bpffs().to_str().unwrap()])
        .unwrap();
    assert!(pins.contains(canary_lab::lab::PEER_XDP_PIN), "{pins}");

    // Hooks for another XDP program on the peer.
    let mut seen = String::new();
    lab.attach_peer_xdp_with(|ifname| {
        seen = ifname.to_owned();
        Ok::<(), String>(())
    })
    .unwrap();
    assert_eq!(seen, lb.host_ifname);
    assert!(
        !lab.peer_xdp_attached().unwrap(),
        "builtin removed before the hook"
    );

    let sleeper = lab
        .spawn_in(&lab.stable()[0].netns, &["sleep", "300"])
        .unwrap();
    let pid = sleeper.detach();
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());

    lab.down().expect("down");
    assert_eq!(leftovers(&tag), Vec::<String>::new());
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    assert!(
        stat.is_empty() || stat.contains(") Z"),
        "detached process ended: {stat}"
    );
}

#[test]
fn a_panicking_test_still_cleans_up() {
    require_root!();
    let spec = LabSpec {
        clients: 1,
        stable: 1,
        canary: 0,
        ..LabSpec::new(LabSpec::unique_tag('p'))
    };
    let tag = spec.tag.clone();
    let pid = std::sync::Mutex::new(0u32);
    let result = std::panic::catch_unwind(|| {
        let lab = Lab::up(&spec).expect("lab up");
        let p = lab
            .spawn_in(&lab.clients()[0].netns, &["sleep", "300"])
            .unwrap();
        *pid.lock().unwrap() = p.detach();
        panic!("test failure inside the lab");
    });
    assert!(result.is_err());
    assert_eq!(leftovers(&tag), Vec::<String>::new());
    let pid = *pid.lock().unwrap();
    assert!(pid > 0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    assert!(
        stat.is_empty() || stat.contains(") Z"),
        "process ended: {stat}"
    );
}
