#![allow(
    clippy::many_single_char_names,
    reason = "short names for programmers and planes in tests"
)]

use std::net::IpAddr;

use canary_common::{
    maglev_index, Backend, ServiceControl, ServiceStats, BACKEND_FLAG_UP, BUCKETS, FAMILY_IPV4,
    FAMILY_IPV6, GROUP_CANARY, GROUP_STABLE, MAGLEV_TABLE_SIZE, MAX_BACKENDS,
    MAX_BACKENDS_PER_GROUP, NO_BACKEND,
};

use super::fake::FakeDataPlane;
use super::*;
use canary_common::PROTO_UDP;

const SEED: u32 = 0x5eed;

fn backend(name: &str, group: Group, n: u8) -> BackendSpec {
    BackendSpec {
        name: name.to_owned(),
        group,
        mac: [2, 0, 0, 0, 0, n],
        up: true,
    }
}

fn service(name: &str, vip: &str, backends: Vec<BackendSpec>) -> ServiceSpec {
    ServiceSpec {
        name: name.to_owned(),
        vip: vip.parse().unwrap(),
        protocol: Protocol::Tcp,
        affinity: Affinity::Flow,
        backends,
        initial_control: ServiceControl {
            canary_weight: 0,
            heartbeat_timeout_ns: 30_000_000_000,
            ..ServiceControl::default()
        },
    }
}

fn sentiment() -> ServiceSpec {
    service(
        "sentiment",
        "198.18.0.100:8080",
        vec![
            backend("v1-a", Group::Stable, 1),
            backend("v1-b", Group::Stable, 2),
            backend("v2-a", Group::Canary, 3),
        ],
    )
}

fn programmed(desired: &[ServiceSpec]) -> (Programmer, FakeDataPlane) {
    let mut p = Programmer::new();
    let mut dp = FakeDataPlane::new();
    dp.config.hash_seed = SEED;
    p.program(&mut dp, desired).unwrap();
    (p, dp)
}

fn position(writes: &[MapWrite], pred: impl Fn(&MapWrite) -> bool) -> usize {
    writes.iter().position(pred).expect("write present")
}

fn flow(i: u32) -> SocketAddr {
    SocketAddr::new(
        IpAddr::V4(std::net::Ipv4Addr::new(198, 19, (i >> 8) as u8, i as u8)),
        (1024 + i % 60_000) as u16,
    )
}

/// The programmer's own route agrees with what the kernel rule reads from the written maps.
fn assert_route_matches_maps(p: &Programmer, dp: &FakeDataPlane, spec: &ServiceSpec) {
    assert_route_matches_maps_at(p, dp, spec, 1);
}

/// [`assert_route_matches_maps`] at `now_ns`.
fn assert_route_matches_maps_at(
    p: &Programmer,
    dp: &FakeDataPlane,
    spec: &ServiceSpec,
    now_ns: u64,
) {
    let index = p.service_index(&spec.name).unwrap();
    let control = dp.control[index as usize];
    for i in 0..3000 {
        let r = p
            .route(flow(i), spec.vip, spec.protocol, SEED, &control, now_ns)
            .unwrap();
        let key = flow_key(flow(i), spec.vip, spec.protocol).unwrap();
        let kernel = dp.kernel_choice(&key, now_ns);
        assert_eq!(
            kernel,
            r.backend.as_ref().map(|b| (r.group.index(), b.index)),
            "flow {i}: route {r:?}"
        );
    }
}

#[test]
fn new_service_is_written_fully_and_in_a_safe_order() {
    let spec = sentiment();
    let (p, dp) = programmed(std::slice::from_ref(&spec));
    let w = &dp.writes;
    assert_eq!(dp.maglev_slots_written(), 2 * MAGLEV_TABLE_SIZE as usize);
    let idx = p.service_index("sentiment").unwrap();
    let first_maglev = position(w, |x| matches!(x, MapWrite::MaglevSlots { .. }));
    let last_backend = w
        .iter()
        .rposition(|x| matches!(x, MapWrite::Backend { .. }))
        .unwrap();
    let control = position(w, |x| matches!(x, MapWrite::Control { .. }));
    let insert = position(w, |x| matches!(x, MapWrite::ServiceInsert { .. }));
    assert!(
        last_backend < first_maglev,
        "backends before the slots naming them"
    );
    assert!(control < insert && first_maglev < insert);
    assert_eq!(dp.control[idx as usize], spec.initial_control);
    assert_eq!(dp.vips.get(&vip_key(spec.vip.ip())), Some(&1));
    // Every backend up, in its group, with the service's index.
    for b in &spec.backends {
        let i = p.backend_index("sentiment", &b.name).unwrap();
        let e = dp.backends[i as usize];
        assert_eq!(
            (e.mac, e.flags, e.service_index, e.group),
            (b.mac, BACKEND_FLAG_UP, idx, b.group.index())
        );
    }
    assert_route_matches_maps(&p, &dp, &spec);
}

#[test]
fn unchanged_desired_state_writes_nothing() {
    let spec = sentiment();
    let (p, _) = programmed(std::slice::from_ref(&spec));
    assert!(p.plan(&[spec]).unwrap().is_empty());
}

#[test]
fn adding_a_backend_keeps_indices_and_writes_only_changed_slots() {
    let mut spec = sentiment();
    let (mut p, mut dp) = programmed(std::slice::from_ref(&spec));
    let before: Vec<u32> = spec
        .backends
        .iter()
        .map(|b| p.backend_index("sentiment", &b.name).unwrap())
        .collect();
    dp.writes.clear();
    spec.backends.push(backend("v1-c", Group::Stable, 4));
    p.program(&mut dp, std::slice::from_ref(&spec)).unwrap();
    for (b, i) in spec.backends.iter().zip(&before) {
        assert_eq!(p.backend_index("sentiment", &b.name), Some(*i));
    }
    let share = MAGLEV_TABLE_SIZE as usize / 3;
    let written = dp.maglev_slots_written();
    assert!(
        written >= share && written * 2 <= share * 3,
        "{written} slots written for a share of {share}"
    );
    assert!(!dp
        .writes
        .iter()
        .any(|w| matches!(w, MapWrite::Control { .. } | MapWrite::ServiceInsert { .. })));
    let new_index = p.backend_index("sentiment", "v1-c").unwrap();
    let backend_write = position(
        &dp.writes,
        |w| matches!(w, MapWrite::Backend { index, .. } if *index == new_index),
    );
    let maglev = position(&dp.writes, |w| matches!(w, MapWrite::MaglevSlots { .. }));
    assert!(backend_write < maglev);
    assert_route_matches_maps(&p, &dp, &spec);
}

#[test]
fn removed_backend_goes_down_after_the_slots_and_keeps_its_index_until_reused() {
    let mut spec = sentiment();
    let (mut p, mut dp) = programmed(std::slice::from_ref(&spec));
    let gone = p.backend_index("sentiment", "v1-b").unwrap();
    dp.writes.clear();
    spec.backends.retain(|b| b.name != "v1-b");
    p.program(&mut dp, std::slice::from_ref(&spec)).unwrap();
    let maglev = position(&dp.writes, |w| matches!(w, MapWrite::MaglevSlots { .. }));
    let down = position(
        &dp.writes,
        |w| matches!(w, MapWrite::Backend { index, backend } if *index == gone && backend.flags == 0),
    );
    assert!(maglev < down, "slots move off before the backend goes down");
    let stable = maglev_index(p.service_index("sentiment").unwrap(), GROUP_STABLE, 0) as usize;
    assert!(dp.maglev[stable..stable + MAGLEV_TABLE_SIZE as usize]
        .iter()
        .all(|&b| b != gone));
    // A new backend takes a never-used index; the removed one gets its own back.
    spec.backends.push(backend("v1-new", Group::Stable, 9));
    p.program(&mut dp, std::slice::from_ref(&spec)).unwrap();
    assert_ne!(p.backend_index("sentiment", "v1-new"), Some(gone));
    spec.backends.push(backend("v1-b", Group::Stable, 2));
    p.program(&mut dp, std::slice::from_ref(&spec)).unwrap();
    assert_eq!(p.backend_index("sentiment", "v1-b"), Some(gone));
    assert_route_matches_maps(&p, &dp, &spec);
}

#[test]
fn retired_indices_are_reused_only_when_fresh_ones_run_out() {
    let mut p = Programmer::new();
    p.limit_backend_indices_for_tests(2);
    let two = service(
        "s",
        "198.18.0.1:80",
        vec![
            backend("a", Group::Stable, 1),
            backend("b", Group::Stable, 2),
        ],
    );
    let plan = p.plan(std::slice::from_ref(&two)).unwrap();
    p.commit(plan);
    let one = service("s", "198.18.0.1:80", vec![backend("a", Group::Stable, 1)]);
    let plan = p.plan(&[one]).unwrap();
    p.commit(plan);
    let other = service(
        "s",
        "198.18.0.1:80",
        vec![
            backend("a", Group::Stable, 1),
            backend("c", Group::Stable, 3),
        ],
    );
    let plan = p.plan(&[other]).unwrap();
    assert!(plan
        .writes
        .contains(&MapWrite::ResetBackendStats { index: 1 }));
    p.commit(plan);
    assert_eq!(p.backend_index("s", "c"), Some(1));
    let three = service(
        "s",
        "198.18.0.1:80",
        vec![
            backend("a", Group::Stable, 1),
            backend("c", Group::Stable, 3),
            backend("d", Group::Stable, 4),
        ],
    );
    assert_eq!(
        p.plan(&[three]).unwrap_err(),
        PlanError::TooManyBackends {
            needed: 1,
            max: MAX_BACKENDS
        }
    );
}

#[test]
fn backend_marked_down_leaves_the_table_but_keeps_its_index() {
    let mut spec = sentiment();
    let (mut p, mut dp) = programmed(std::slice::from_ref(&spec));
    let i = p.backend_index("sentiment", "v1-a").unwrap();
    dp.writes.clear();
    spec.backends[0].up = false;
    p.program(&mut dp, std::slice::from_ref(&spec)).unwrap();
    assert_eq!(p.backend_index("sentiment", "v1-a"), Some(i));
    assert_eq!(dp.backends[i as usize].flags, 0);
    assert!(matches!(dp.writes.last(), Some(MapWrite::Backend { index, .. }) if *index == i));
    assert_route_matches_maps(&p, &dp, &spec);
    // Up again: the flag goes up before the slots name it.
    dp.writes.clear();
    spec.backends[0].up = true;
    p.program(&mut dp, std::slice::from_ref(&spec)).unwrap();
    assert!(matches!(dp.writes.first(), Some(MapWrite::Backend { index, .. }) if *index == i));
    assert_route_matches_maps(&p, &dp, &spec);
}

#[test]
fn route_follows_weight_deadman_and_group_fallback() {
    let spec = sentiment();
    let (p, mut dp) = programmed(std::slice::from_ref(&spec));
    let idx = p.service_index("sentiment").unwrap();
    let mut control = ServiceControl {
        canary_weight: 2500,
        heartbeat_ns: 1_000,
        heartbeat_timeout_ns: 1_000_000,
        ..ServiceControl::default()
    };
    dp.apply(&[MapWrite::Control {
        index: idx,
        control,
    }])
    .unwrap();
    let mut canary = 0;
    for i in 0..4000 {
        let r = p
            .route(flow(i), spec.vip, Protocol::Tcp, SEED, &control, 2_000)
            .unwrap();
        assert_eq!(r.group, r.group_by_weight);
        assert_eq!(r.group == Group::Canary, r.bucket < 2500);
        canary += u32::from(r.group == Group::Canary);
    }
    assert!((800..1200).contains(&canary), "canary share {canary}/4000");
    assert_route_matches_maps(&p, &dp, &spec);
    // Stale heartbeat: canary buckets go to stable.
    let now = 10_000_000;
    let stale: Vec<Route> = (0..4000)
        .map(|i| {
            p.route(flow(i), spec.vip, Protocol::Tcp, SEED, &control, now)
                .unwrap()
        })
        .collect();
    assert!(stale.iter().all(|r| r.group == Group::Stable));
    assert!(stale.iter().any(|r| r.deadman_fallback));
    // Weight 10000 with no canary backend up: everything falls back to stable.
    let mut no_canary = spec.clone();
    no_canary.backends[2].up = false;
    let (p, _) = programmed(&[no_canary]);
    control.canary_weight = BUCKETS;
    let r = p
        .route(flow(7), spec.vip, Protocol::Tcp, SEED, &control, 2_000)
        .unwrap();
    assert_eq!(
        (r.group_by_weight, r.group, r.group_fallback),
        (Group::Canary, Group::Stable, true)
    );
    assert!(r.backend.is_some());
    assert_eq!(
        p.route(
            flow(7),
            "198.18.0.100:9999".parse().unwrap(),
            Protocol::Tcp,
            SEED,
            &control,
            0
        ),
        Err(RouteError::NoService {
            dst: "198.18.0.100:9999".parse().unwrap(),
            protocol: Protocol::Tcp
        })
    );
}

#[test]
fn empty_group_table_is_no_backend() {
    let spec = service("s", "198.18.0.2:53", vec![backend("a", Group::Stable, 1)]);
    let (p, dp) = programmed(std::slice::from_ref(&spec));
    let base = maglev_index(p.service_index("s").unwrap(), GROUP_CANARY, 0) as usize;
    assert!(dp.maglev[base..base + MAGLEV_TABLE_SIZE as usize]
        .iter()
        .all(|&b| b == NO_BACKEND));
}

#[test]
fn removed_service_stops_first_and_its_index_is_reused_with_fresh_stats() {
    let a = sentiment();
    let b = service(
        "other",
        "198.18.0.100:9090",
        vec![backend("x", Group::Stable, 7)],
    );
    let (mut p, mut dp) = programmed(&[a.clone(), b.clone()]);
    assert_eq!(dp.vips.get(&vip_key(a.vip.ip())), Some(&2));
    let a_index = p.service_index("sentiment").unwrap();
    dp.service_stats[a_index as usize].new_flows = [5, 5];
    dp.writes.clear();
    p.program(&mut dp, std::slice::from_ref(&b)).unwrap();
    assert!(
        matches!(dp.writes[0], MapWrite::ServiceRemove { key } if key == service_key(a.vip, Protocol::Tcp))
    );
    assert_eq!(dp.vips.get(&vip_key(a.vip.ip())), Some(&1));
    assert!(dp
        .backends
        .iter()
        .all(|e| e.service_index != a_index || e.flags == 0));
    let c = service(
        "third",
        "198.18.0.101:80",
        vec![backend("y", Group::Stable, 8)],
    );
    p.program(&mut dp, &[b.clone(), c]).unwrap();
    assert_eq!(p.service_index("third"), Some(a_index));
    assert_eq!(dp.service_stats[a_index as usize], ServiceStats::default());
    p.program(&mut dp, &[]).unwrap();
    assert!(dp.services.is_empty() && dp.vips.is_empty());
    assert!(dp.backends.iter().all(|e| e.flags == 0));
}

#[test]
fn recovery_after_restart_keeps_indices_weight_and_every_slot() {
    let spec = sentiment();
    let extra = service(
        "gone",
        "198.18.0.50:80",
        vec![backend("z", Group::Stable, 9)],
    );
    let (p, mut dp) = programmed(&[extra.clone(), spec.clone()]);
    let idx = p.service_index("sentiment").unwrap();
    dp.apply(&[MapWrite::Control {
        index: idx,
        control: ServiceControl {
            canary_weight: 2500,
            ..spec.initial_control
        },
    }])
    .unwrap();
    let maglev_before = dp.maglev.clone();
    // The restarted daemon no longer has "gone" configured.
    let desired = [spec.clone()];
    let mut q = Programmer::recover(&dp.written_state().unwrap(), &desired);
    assert_eq!(q.service_index("sentiment"), Some(idx));
    for b in &spec.backends {
        assert_eq!(
            q.backend_index("sentiment", &b.name),
            p.backend_index("sentiment", &b.name)
        );
    }
    dp.writes.clear();
    q.program(&mut dp, &desired).unwrap();
    assert!(!dp
        .writes
        .iter()
        .any(|w| matches!(w, MapWrite::Control { .. })));
    assert_eq!(dp.control[idx as usize].canary_weight, 2500);
    let s = maglev_index(idx, 0, 0) as usize;
    let e = maglev_index(idx + 1, 0, 0) as usize;
    assert_eq!(
        dp.maglev[s..e],
        maglev_before[s..e],
        "no slot of the service changed"
    );
    assert!(!dp
        .services
        .contains_key(&service_key(extra.vip, Protocol::Tcp)));
    let z = p.backend_index("gone", "z").unwrap();
    assert_eq!(dp.backends[z as usize].flags & BACKEND_FLAG_UP, 0);
    assert!(q.plan(&desired).unwrap().is_empty());
    assert_route_matches_maps(&q, &dp, &spec);
}

#[test]
fn failed_apply_rewrites_everything_next_time() {
    let spec = sentiment();
    let mut p = Programmer::new();
    let mut dp = FakeDataPlane::new();
    dp.config.hash_seed = SEED;
    dp.fail_apply_after = Some(3);
    assert!(matches!(
        p.program(&mut dp, std::slice::from_ref(&spec)),
        Err(ProgramError::Apply(_))
    ));
    p.program(&mut dp, std::slice::from_ref(&spec)).unwrap();
    assert_route_matches_maps(&p, &dp, &spec);
    assert!(dp
        .services
        .contains_key(&service_key(spec.vip, Protocol::Tcp)));
}

#[test]
fn invalid_desired_states_are_rejected() {
    let p = Programmer::new();
    let s = sentiment();
    let mut dup = s.clone();
    dup.vip = "198.18.0.200:1".parse().unwrap();
    assert_eq!(
        p.plan(&[s.clone(), dup]).unwrap_err(),
        PlanError::DuplicateService("sentiment".into())
    );
    let mut same_key = s.clone();
    same_key.name = "copy".into();
    assert!(matches!(
        p.plan(&[s.clone(), same_key]),
        Err(PlanError::DuplicateServiceKey { .. })
    ));
    let mut dup_backend = s.clone();
    dup_backend.backends.push(backend("v1-a", Group::Canary, 5));
    assert!(matches!(
        p.plan(&[dup_backend]),
        Err(PlanError::DuplicateBackend { .. })
    ));
    let mut big = s;
    big.backends = (0..=MAX_BACKENDS_PER_GROUP)
        .map(|i| backend(&format!("b{i}"), Group::Canary, i as u8))
        .collect();
    assert!(matches!(
        p.plan(&[big]),
        Err(PlanError::TooManyBackendsInGroup { count: 164, .. })
    ));
}

#[test]
fn keys_are_in_network_byte_order() {
    let k = service_key("198.18.0.100:8080".parse().unwrap(), Protocol::Udp);
    assert_eq!(&k.addr[..4], &[198, 18, 0, 100]);
    assert_eq!(k.addr[4..], [0; 12]);
    assert_eq!(k.port.to_ne_bytes(), 8080u16.to_be_bytes());
    assert_eq!((k.protocol, k.family), (PROTO_UDP, FAMILY_IPV4));
    let v6 = service_key("[2001:db8::1]:443".parse().unwrap(), Protocol::Tcp);
    assert_eq!(v6.family, FAMILY_IPV6);
    assert_eq!(v6.addr[0..2], [0x20, 0x01]);
    assert!(flow_key(
        "198.18.0.1:1".parse().unwrap(),
        "[::1]:2".parse().unwrap(),
        Protocol::Tcp
    )
    .is_none());
    assert!(monotonic_ns() > 0);
}

/// The edges where a rule of its own would part from the kernel's, read by `route` and by the
/// fake's kernel view alike: with a stale heartbeat and stable empty a new flow is dropped,
/// never sent to canary, whatever its bucket (a fresh heartbeat falls back to canary); a
/// heartbeat far ahead of the clock is stale too.
#[test]
fn route_follows_the_kernel_rule_when_stable_is_empty_and_the_heartbeat_stale() {
    let mut spec = sentiment();
    spec.backends[0].up = false;
    spec.backends[1].up = false;
    let (p, mut dp) = programmed(std::slice::from_ref(&spec));
    let idx = p.service_index("sentiment").unwrap();
    let beat = 1_000_000;
    let mut control = ServiceControl {
        canary_weight: 0,
        heartbeat_ns: beat,
        heartbeat_timeout_ns: 1_000,
        ..ServiceControl::default()
    };
    for (weight, now) in [
        (0, beat + 1_001),
        (BUCKETS, beat + 1_001),
        (0, beat - 1_001),
        (BUCKETS, beat - 1_001),
    ] {
        control.canary_weight = weight;
        dp.apply(&[MapWrite::Control {
            index: idx,
            control,
        }])
        .unwrap();
        for i in 0..500 {
            let r = p
                .route(flow(i), spec.vip, Protocol::Tcp, SEED, &control, now)
                .unwrap();
            let key = flow_key(flow(i), spec.vip, spec.protocol).unwrap();
            assert!(r.stale_heartbeat, "flow {i} at {now}: {r:?}");
            assert_eq!(
                r.backend, None,
                "flow {i}, weight {weight}, now {now}: {r:?}"
            );
            assert_eq!(r.group, Group::Stable);
            assert!(!r.group_fallback);
            assert_eq!(r.deadman_fallback, weight == BUCKETS, "flow {i}: {r:?}");
            let kernel = dp.new_flow_choice(&key, now).unwrap();
            assert!(kernel.deadman_drop(), "flow {i}: {kernel:?}");
            assert_eq!(dp.kernel_choice(&key, now), None);
        }
        assert_route_matches_maps_at(&p, &dp, &spec, now);
    }
    // A fresh heartbeat: stable's flows fall back to canary.
    control.canary_weight = 0;
    let r = p
        .route(flow(3), spec.vip, Protocol::Tcp, SEED, &control, beat)
        .unwrap();
    assert_eq!(
        (
            r.group_by_weight,
            r.group,
            r.group_fallback,
            r.stale_heartbeat
        ),
        (Group::Stable, Group::Canary, true, false)
    );
    assert_eq!(r.backend.map(|b| b.name), Some("v2-a".to_owned()));
}

/// A slot naming a backend that cannot take new flows (marked down, or of another group, in
/// `BACKENDS` before its slots were rewritten): the kernel's rule tries the next slots of the
/// same group before the other group.
#[test]
fn a_slot_naming_an_unusable_backend_falls_back_inside_the_group() {
    let spec = sentiment();
    let (p, mut dp) = programmed(std::slice::from_ref(&spec));
    let idx = p.service_index("sentiment").unwrap();
    let v1a = p.services().next().unwrap().backend("v1-a").unwrap().index;
    let v1b = p.services().next().unwrap().backend("v1-b").unwrap().index;
    let entry = dp.backends[v1a as usize];
    for unusable in [
        Backend {
            flags: entry.flags & !BACKEND_FLAG_UP,
            ..entry
        },
        Backend {
            group: GROUP_CANARY,
            ..entry
        },
        Backend {
            service_index: idx + 1,
            ..entry
        },
    ] {
        dp.apply(&[MapWrite::Backend {
            index: v1a,
            backend: unusable,
        }])
        .unwrap();
        let (mut in_group, mut other_group) = (0, 0);
        for i in 0..2000 {
            let key = flow_key(flow(i), spec.vip, spec.protocol).unwrap();
            let c = dp.new_flow_choice(&key, 1).unwrap();
            let (index, _) = c.backend.expect("a usable backend");
            if c.group_fallback {
                // Only when every probed slot names v1-a (a long run of it in the table).
                assert_eq!(c.group, GROUP_CANARY, "flow {i}: {c:?}");
                other_group += 1;
                continue;
            }
            assert_eq!((c.group, index), (GROUP_STABLE, v1b), "flow {i}: {c:?}");
            in_group += u32::from(c.slot_fallback);
        }
        assert!(
            in_group > 500,
            "{in_group} of 2000 flows moved to a later slot"
        );
        assert!(other_group < 40, "{other_group} of 2000 flows left stable");
    }
}
