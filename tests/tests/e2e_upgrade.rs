//! Upgrading the binary: the daemon runs with object A, then restarts with object B (the same
//! source built with other code generation: other instructions, same maps). B's program
//! replaces A's in place through the pinned link, so traffic flows throughout with no failed
//! request and no keep-alive connection moved, and B's program is the one attached.

mod e2e_support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use canary_lab::deployment::DeploymentSpec;
use canary_lab::lab::LabSpec;
use canary_userspace::dataplane::aya::{pinned_link_info, LINK_PIN, OBJECT_BUILD_PATH};
use e2e_support::{cli_ok, new_conn_load, start, totals};

/// Where `cargo xtask build-ebpf --release --upgrade-variant` (and `cargo xtask test`) put B.
const VARIANT_PATH: &str =
    "canary-ebpf/target/upgrade-variant/bpfel-unknown-none/release/canary-ebpf";

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The kernel tag of the `canary` program of an object, loaded here (not attached).
fn program_tag(object: &Path) -> String {
    let bytes = std::fs::read(object).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; build it with `cargo xtask build-ebpf --release --upgrade-variant`",
            object.display()
        )
    });
    let mut ebpf = aya::EbpfLoader::new()
        .map_max_entries(canary_common::maps::FLOWS, 1024)
        .load(&bytes)
        .unwrap_or_else(|e| panic!("load {}: {e}", object.display()));
    let program: &mut aya::programs::Xdp = ebpf
        .program_mut(canary_common::maps::PROGRAM)
        .unwrap()
        .try_into()
        .unwrap();
    program.load().unwrap();
    format!("{:016x}", program.info().unwrap().tag())
}

#[test]
fn a_new_object_replaces_the_program_in_place_without_failures() {
    let a = workspace_root().join(OBJECT_BUILD_PATH);
    let b = workspace_root().join(VARIANT_PATH);
    let (tag_a, tag_b) = (program_tag(&a), program_tag(&b));
    println!(
        "object A {} tag {tag_a}\nobject B {} tag {tag_b}",
        a.display(),
        b.display()
    );
    assert_ne!(
        tag_a, tag_b,
        "A and B must differ for this test to mean anything"
    );

    let mut spec = DeploymentSpec::new(LabSpec::unique_tag('u'));
    spec.lab.clients = 1;
    spec.lab.stable = 2;
    spec.lab.canary = 1;
    spec.lab.client_extra_addresses = 10;
    spec.start = "paused".into();
    spec.bpf_object = Some(a);
    let mut d = start(spec);
    cli_ok(&d, &["set-weight", "30"]);
    let link = d.lab.bpffs().join("canary").join(LINK_PIN);
    let before = pinned_link_info(&link).unwrap();
    println!("attached: {before:?}");
    assert_eq!(before.prog_tag, tag_a);

    // New connections and long-lived keep-alive connections across the upgrade.
    let mut load = new_conn_load(&d, &d.lab.clients()[0], 0, 6);
    load.requests = None;
    load.duration = Duration::from_secs(16);
    load.interval = Duration::from_millis(20);
    load.keepalive = 20;
    load.keepalive_interval = Duration::from_millis(200);
    let proc = d.spawn_load(0, &load).unwrap();
    std::thread::sleep(Duration::from_secs(4));

    d.stop_daemon().expect("daemon running");
    d.spec.bpf_object = Some(b);
    d.start_daemon()
        .unwrap_or_else(|e| panic!("restart with object B: {e}"));
    let log = d.daemon_log();
    let line = log
        .lines()
        .find(|l| l.contains("replaced the attached XDP program"))
        .unwrap_or_else(|| panic!("no replacement logged:\n{log}"));
    println!("{line}");
    let after = pinned_link_info(&link).unwrap();
    println!("attached after the upgrade: {after:?}");
    assert_eq!(after.prog_tag, tag_b, "B's program is attached");
    assert_ne!(after.prog_id, before.prog_id);
    assert_eq!(after.ifindex, before.ifindex);
    // The new daemon wrote every setting over the kept CONFIG map.
    let g = e2e_support::pinned_global_config(&d);
    assert_eq!(
        (g.lb_mac, g.syn_replace_after_ms, g.flood_guard_rate),
        (d.lab.load_balancer().unwrap().mac.0, 5000, 0),
        "{g:?}"
    );
    // The rollout and the weight carried over.
    e2e_support::assert_weight(&d.service_status().unwrap(), 30.0);

    let report = d.wait_load(proc, Duration::from_mins(1)).unwrap();
    let (requests, ok, failed, transport, http) = totals(std::slice::from_ref(&report));
    println!(
        "load across the upgrade: {requests} requests, {ok} ok, {failed} failed ({transport} \
         connection-level, {http} HTTP); keep-alive moved {} broken {}; versions {:?}",
        report.keep_alive_connections.moved, report.keep_alive_connections.broken, report.versions
    );
    assert!(requests > 200);
    assert_eq!(failed, 0, "{:?}", report.failure_samples);
    assert_eq!(
        (
            report.keep_alive_connections.moved,
            report.keep_alive_connections.broken
        ),
        (0, 0)
    );

    // Restarting with the same object replaces nothing.
    d.stop_daemon().expect("daemon running");
    d.start_daemon().unwrap();
    let log = d.daemon_log();
    assert!(
        log.contains("re-attached to the running XDP program"),
        "{log}"
    );
    assert!(!log.contains("replaced the attached XDP program"), "{log}");
    assert_eq!(pinned_link_info(&link).unwrap().prog_id, after.prog_id);
}
