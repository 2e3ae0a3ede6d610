//! The real data plane, as root: attach to a veth in a network namespace this test creates,
//! program a service, send a frame through it, restart from the pins, detach.
//!
//! Needs root and the eBPF object (embedded at build time, or `CANARY_BPF_OBJECT=PATH`).
//! Without them the test says so and passes, except under `CI=true`, where it fails.

use std::net::SocketAddr;
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use canary_common::{
    Counter, FlowEntry, GlobalConfig, ServiceControl, BACKEND_FLAG_UP, GROUP_STABLE,
};
use canary_userspace::dataplane::aya::{
    self, AyaDataPlane, AyaError, Opened, Options, PassProgram, XdpAttachMode,
};
use canary_userspace::dataplane::{
    flow_key, monotonic_ns, BackendSpec, DataPlane, MapWrite, Programmer, ServiceSpec,
};
use canary_userspace::domain::{Affinity, Group, Protocol};

const LB_IF: &str = "cdp0";
const PEER_IF: &str = "cdp1";
const LB_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xa0];
const PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xa1];

fn object_override() -> Option<PathBuf> {
    std::env::var_os("CANARY_BPF_OBJECT").map(PathBuf::from)
}

/// Whether the test can run here; panics under CI when it cannot.
fn prerequisites() -> bool {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let object = object_override().is_some() || aya::embedded_object().is_some();
    let missing = match (root, object) {
        (true, true) => return true,
        (false, _) => "root",
        (true, false) => "the eBPF object (run `cargo xtask build-ebpf --release`, then rebuild)",
    };
    assert!(!ci, "CI=true: this test needs {missing}");
    eprintln!("SKIPPED: the real data-plane test needs {missing}");
    false
}

fn run(cmd: &[&str]) {
    let out = Command::new(cmd[0])
        .args(&cmd[1..])
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn output(cmd: &[&str]) -> String {
    let out = Command::new(cmd[0]).args(&cmd[1..]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn mac_string(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A network namespace with a veth pair, deleted on drop (which deletes the veths too).
struct Namespace(String);

impl Namespace {
    fn create() -> Namespace {
        Self::create_tagged("")
    }

    /// A namespace whose name carries `tag` (tests that may run at the same time differ).
    fn create_tagged(tag: &str) -> Namespace {
        let name = format!("canary-dp{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        run(&["ip", "netns", "add", &name]);
        let ns = Namespace(name);
        let n = ns.0.as_str();
        run(&[
            "ip",
            "-n",
            n,
            "link",
            "add",
            LB_IF,
            "address",
            &mac_string(LB_MAC),
            "type",
            "veth",
            "peer",
            "name",
            PEER_IF,
            "address",
            &mac_string(PEER_MAC),
        ]);
        run(&[
            "ip",
            "-n",
            n,
            "addr",
            "add",
            "198.18.200.1/24",
            "dev",
            LB_IF,
        ]);
        run(&[
            "ip",
            "-n",
            n,
            "addr",
            "add",
            "198.18.200.2/24",
            "dev",
            PEER_IF,
        ]);
        run(&["ip", "-n", n, "link", "set", LB_IF, "up"]);
        run(&["ip", "-n", n, "link", "set", PEER_IF, "up"]);
        ns
    }

    /// Runs `f` on a thread that entered this namespace (network namespaces are per thread).
    fn run_inside<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/var/run/netns/{}", self.0);
        std::thread::scope(|s| {
            s.spawn(|| {
                let file = std::fs::File::open(&path).expect("open netns");
                // SAFETY: a valid namespace fd; only this thread changes namespace.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

/// A scratch directory whose bpffs (mounted by the code under test) is unmounted on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn create() -> Scratch {
        Self::create_tagged("")
    }

    fn create_tagged(tag: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("canary-dp-test{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
    fn bpffs_mount(&self) -> PathBuf {
        self.0.join("bpffs")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = aya::detach(&self.bpffs_mount().join("canary"));
        if let Ok(c) = std::ffi::CString::new(self.bpffs_mount().to_string_lossy().as_bytes()) {
            // SAFETY: valid path; a failed unmount (nothing mounted) is harmless.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn service() -> ServiceSpec {
    let b = |name: &str, group, last: u8| BackendSpec {
        name: name.into(),
        group,
        mac: [0x02, 0, 0, 0, 0x10, last],
        up: true,
    };
    ServiceSpec {
        name: "sentiment".into(),
        vip: "198.18.200.100:8080".parse().unwrap(),
        protocol: Protocol::Udp,
        affinity: Affinity::Flow,
        backends: vec![
            b("v1-a", Group::Stable, 1),
            b("v1-b", Group::Stable, 2),
            b("v2-a", Group::Canary, 3),
        ],
        initial_control: ServiceControl::default(),
    }
}

fn ipv4_checksum(header: &[u8]) -> u16 {
    let mut sum = 0u32;
    for pair in header.chunks(2) {
        sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An Ethernet/IPv4/UDP frame from `src` to `dst`.
fn udp_frame(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let (SocketAddr::V4(s), SocketAddr::V4(d)) = (src, dst) else {
        panic!("IPv4 only")
    };
    let payload = b"canary";
    let udp_len = 8 + payload.len() as u16;
    let total = 20 + udp_len;
    let mut f = Vec::new();
    f.extend_from_slice(&LB_MAC);
    f.extend_from_slice(&PEER_MAC);
    f.extend_from_slice(&[0x08, 0x00]);
    let mut ip = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 17, 0, 0];
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&s.ip().octets());
    ip.extend_from_slice(&d.ip().octets());
    let c = ipv4_checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&s.port().to_be_bytes());
    f.extend_from_slice(&d.port().to_be_bytes());
    f.extend_from_slice(&udp_len.to_be_bytes());
    f.extend_from_slice(&[0, 0]); // no UDP checksum (allowed for IPv4)
    f.extend_from_slice(payload);
    f
}

/// Sends a raw frame out of `interface` (it arrives on the veth peer, where XDP runs).
fn send_frame(interface: &str, frame: &[u8]) {
    let ifname = std::ffi::CString::new(interface).unwrap();
    // SAFETY: plain syscalls with valid arguments; the socket is closed below.
    unsafe {
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
        assert!(
            fd >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        let mut addr: libc::sockaddr_ll = std::mem::zeroed();
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = i32::try_from(libc::if_nametoindex(ifname.as_ptr())).unwrap();
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&LB_MAC);
        let sent = libc::sendto(
            fd,
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&raw const addr).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        );
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        assert_eq!(
            usize::try_from(sent).ok(),
            Some(frame.len()),
            "sendto: {err}"
        );
    }
}

fn options(bpffs: &Path, interface: &str) -> Options {
    Options {
        interface: interface.into(),
        xdp_mode: XdpAttachMode::Auto,
        flow_table_size: 4096,
        bpffs: bpffs.to_owned(),
        object: object_override(),
    }
}

#[test]
fn attach_program_restart_from_pins_and_detach() {
    if !prerequisites() {
        return;
    }
    let ns = Namespace::create();
    let scratch = Scratch::create();
    let bpffs = scratch.bpffs_mount().join("canary");
    let spec = service();
    let seed = 0x00c0_ffee;

    ns.run_inside(|| {
        // ---- first start: load, attach, pin, program ----
        let (mut dp, opened) = AyaDataPlane::open(&options(&bpffs, LB_IF)).expect("open");
        assert!(
            matches!(
                opened,
                Opened::Attached {
                    maps_reused: false,
                    ..
                }
            ),
            "{opened:?}"
        );
        assert!(aya::is_bpffs(&bpffs).unwrap(), "bpffs mounted");
        for m in aya::ALL_MAPS.iter().chain([&aya::LINK_PIN]) {
            assert!(bpffs.join(m).exists(), "pin {m} missing");
        }
        // The flood guard's window is pinned too (layout checks, detach).
        assert!(bpffs.join(canary_common::maps::FLOOD_GUARD).exists());
        assert_eq!(dp.flow_table_capacity(), 4096);
        let _pass = PassProgram::attach(object_override().as_deref(), PEER_IF, XdpAttachMode::Auto)
            .expect("attach canary_pass to the peer");

        dp.set_global_config(&GlobalConfig {
            hash_seed: seed,
            ..GlobalConfig::default()
        })
        .unwrap();
        let mut programmer = Programmer::new();
        programmer
            .program(&mut dp, std::slice::from_ref(&spec))
            .expect("program");
        let index = programmer.service_index("sentiment").unwrap();
        let control = ServiceControl {
            canary_weight: 2500,
            heartbeat_ns: monotonic_ns(),
            heartbeat_timeout_ns: 3_600_000_000_000,
            ..ServiceControl::default()
        };
        dp.apply(&[MapWrite::Control { index, control }]).unwrap();

        // Read back what was written.
        let state = dp.written_state().unwrap();
        assert_eq!(state.services.len(), 1);
        assert_eq!(state.services[0].1.index, index);
        assert_eq!(state.vips.len(), 1);
        assert_eq!(state.backends.len(), 3);
        assert!(state
            .backends
            .iter()
            .all(|(_, b)| b.flags == BACKEND_FLAG_UP));
        let placed = programmer.service("sentiment").unwrap();
        assert_eq!(
            dp.maglev_table(index, GROUP_STABLE).unwrap(),
            placed.table(Group::Stable)
        );
        assert_eq!(dp.control(index).unwrap(), control);

        // ---- a frame to the VIP: forwarded (XDP_TX) and its flow recorded ----
        let client: SocketAddr = "198.18.200.2:40000".parse().unwrap();
        let before = dp.counters().unwrap();
        send_frame(PEER_IF, &udp_frame(client, spec.vip));
        let key = flow_key(client, spec.vip, Protocol::Udp).unwrap();
        let mut entry = None;
        for _ in 0..50 {
            entry = dp.flow(&key).unwrap();
            if entry.is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let entry = entry.expect("the frame to the VIP created a flow entry");
        let route = programmer
            .route(
                client,
                spec.vip,
                Protocol::Udp,
                seed,
                &control,
                monotonic_ns(),
            )
            .unwrap();
        assert_eq!(
            Some(entry.backend),
            route.backend.as_ref().map(|b| b.index),
            "kernel and route agree"
        );
        let after = dp.counters().unwrap();
        assert_eq!(after.get(Counter::Tx) - before.get(Counter::Tx), 1);
        assert_eq!(
            after.get(Counter::FlowMiss) - before.get(Counter::FlowMiss),
            1
        );
        assert_eq!(dp.backend_stats(entry.backend).unwrap().packets, 1);
        let stats = dp.service_stats(index).unwrap();
        assert_eq!(stats.new_flows.iter().sum::<u64>(), 1);

        // A flow seeded from userspace, to check the table survives the restart as well.
        let seeded = flow_key(
            "198.18.200.9:5555".parse().unwrap(),
            spec.vip,
            Protocol::Udp,
        )
        .unwrap();
        let seeded_entry = FlowEntry {
            backend: route.backend.as_ref().unwrap().index,
            group: route.group.index(),
            created_ns: 42,
        };
        dp.insert_flow(&seeded, &seeded_entry).unwrap();

        // ---- restart: drop every handle, open again from the pins ----
        drop(dp);
        drop(programmer);
        let (dp, opened) = AyaDataPlane::open(&options(&bpffs, LB_IF)).expect("reopen");
        assert_eq!(opened, Opened::Reopened { replaced: None });
        assert_eq!(
            dp.control(index).unwrap().canary_weight,
            2500,
            "weight kept"
        );
        assert_eq!(dp.flow(&key).unwrap(), Some(entry), "kernel flow kept");
        assert_eq!(
            dp.flow(&seeded).unwrap(),
            Some(seeded_entry),
            "seeded flow kept"
        );
        assert_eq!(dp.flow_table_capacity(), 4096);
        assert_eq!(dp.global_config().unwrap().hash_seed, seed);
        // Still attached: a second frame of the same flow is a flow-table hit.
        let hits = dp.counters().unwrap().get(Counter::FlowHit);
        send_frame(PEER_IF, &udp_frame(client, spec.vip));
        let mut hit = false;
        for _ in 0..50 {
            if dp.counters().unwrap().get(Counter::FlowHit) == hits + 1 {
                hit = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(hit, "the program stayed attached across the restart");
        // Recovered indices reprogram the same tables without touching control.
        let mut dp = dp;
        let mut recovered =
            Programmer::recover(&dp.written_state().unwrap(), std::slice::from_ref(&spec));
        assert_eq!(recovered.service_index("sentiment"), Some(index));
        let writes = recovered
            .program(&mut dp, std::slice::from_ref(&spec))
            .unwrap();
        assert!(!writes.iter().any(|w| matches!(w, MapWrite::Control { .. })));
        assert_eq!(dp.control(index).unwrap().canary_weight, 2500);
        assert_eq!(
            dp.maglev_table(index, GROUP_STABLE).unwrap(),
            recovered.service("sentiment").unwrap().table(Group::Stable)
        );

        // The pins belong to another interface: refused.
        let err = AyaDataPlane::open(&options(&bpffs, PEER_IF)).unwrap_err();
        assert!(matches!(err, AyaError::OtherInterface { .. }), "{err}");
        drop(dp);
    });

    // ---- detach: link and pins gone, program off the interface ----
    let detached = aya::detach(&bpffs).expect("detach");
    assert!(detached.link);
    assert_eq!(detached.maps.len(), aya::ALL_MAPS.len());
    assert!(!bpffs.exists(), "pin directory removed");
    let link = output(&["ip", "-n", &ns.0, "-d", "link", "show", LB_IF]);
    assert!(!link.contains("prog/xdp"), "XDP still attached: {link}");
    drop(scratch);
    drop(ns);
}

#[test]
fn missing_object_is_a_clear_error() {
    let err = aya::object_bytes(Some(Path::new("/nonexistent/canary-ebpf"))).unwrap_err();
    assert!(
        err.to_string().contains("/nonexistent/canary-ebpf"),
        "{err}"
    );
    assert!(AyaError::NoObject
        .to_string()
        .contains("cargo xtask build-ebpf --release"));
}

/// Pins a new map of the given definition at `path` (a stale pin of another layout).
fn pin_map(path: &Path, map_type: u32, key: u32, value: u32, entries: u32) {
    let def = aya_obj::Map::new_from_params(map_type, key, value, entries, 0);
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    let map = ::aya::maps::MapData::create(def, &name, None).expect("create map");
    map.pin(path).expect("pin map");
}

const BPF_MAP_TYPE_HASH: u32 = 1;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_MAP_TYPE_PERCPU_ARRAY: u32 = 6;

#[test]
fn pins_of_another_layout_are_refused_on_both_paths() {
    if !prerequisites() {
        return;
    }
    let ns = Namespace::create_tagged("l");
    let scratch = Scratch::create_tagged("l");
    let bpffs = scratch.bpffs_mount().join("canary");
    let link = bpffs.join(aya::LINK_PIN);
    ns.run_inside(|| {
        aya::ensure_bpffs(&bpffs).unwrap();
        let refused = |what: &str| {
            let err = AyaDataPlane::open(&options(&bpffs, LB_IF))
                .err()
                .unwrap_or_else(|| panic!("{what}: opened with an incompatible pin"));
            let text = err.to_string();
            println!("{what}: {text}");
            assert!(matches!(err, AyaError::IncompatiblePin { .. }), "{text}");
            assert!(text.contains("canary detach"), "{text}");
            text
        };

        // ---- load-and-attach path (no link pinned): stale map pins ----
        let backends = bpffs.join(canary_common::maps::BACKENDS);
        pin_map(
            &backends,
            BPF_MAP_TYPE_ARRAY,
            4,
            32,
            canary_common::MAX_BACKENDS,
        );
        let text = refused("BACKENDS with 32-byte values");
        assert!(
            text.contains("BACKENDS") && text.contains("value size is 32 bytes"),
            "{text}"
        );
        assert!(text.contains("the object's is 16 bytes"), "{text}");
        assert!(!link.exists(), "nothing attached");
        std::fs::remove_file(&backends).unwrap();

        let flows = bpffs.join(canary_common::maps::FLOWS);
        let key = u32::try_from(std::mem::size_of::<canary_common::FlowKey>()).unwrap();
        let value = u32::try_from(std::mem::size_of::<FlowEntry>()).unwrap();
        pin_map(&flows, BPF_MAP_TYPE_HASH, key, value, 10);
        let text = refused("FLOWS as a 10-entry plain hash");
        assert!(
            text.contains("type is hash (1)") && text.contains("lru_hash (9)"),
            "{text}"
        );
        assert!(!link.exists(), "nothing attached");
        std::fs::remove_file(&flows).unwrap();

        // ---- reopen path (link pinned): a map pin swapped for one of another layout ----
        let (dp, _) = AyaDataPlane::open(&options(&bpffs, LB_IF)).expect("open");
        drop(dp);
        assert!(link.exists());
        // Pins of a version without the flood guard's map: re-opened, the map created and
        // pinned.
        let guard = bpffs.join(canary_common::maps::FLOOD_GUARD);
        std::fs::remove_file(&guard).unwrap();
        let (dp, opened) =
            AyaDataPlane::open(&options(&bpffs, LB_IF)).expect("reopen pins that lack FLOOD_GUARD");
        assert!(matches!(opened, Opened::Reopened { .. }), "{opened:?}");
        drop(dp);
        assert!(guard.exists(), "FLOOD_GUARD pinned on reopen");
        // The flood guard's window of another layout (8-byte values, not 16) is refused.
        std::fs::remove_file(&guard).unwrap();
        pin_map(&guard, BPF_MAP_TYPE_PERCPU_ARRAY, 4, 8, 1);
        let text = refused("FLOOD_GUARD with 8-byte values");
        assert!(
            text.contains("FLOOD_GUARD") && text.contains("value size is 8 bytes"),
            "{text}"
        );
        std::fs::remove_file(&guard).unwrap();
        std::fs::remove_file(&backends).unwrap();
        pin_map(
            &backends,
            BPF_MAP_TYPE_ARRAY,
            4,
            32,
            canary_common::MAX_BACKENDS,
        );
        let text = refused("reopen with BACKENDS of 32-byte values");
        assert!(text.contains("value size is 32 bytes"), "{text}");
        assert!(link.exists(), "the running program stays attached");
    });
    let link_shown = output(&["ip", "-n", &ns.0, "-d", "link", "show", LB_IF]);
    assert!(
        link_shown.contains("prog/xdp"),
        "still attached: {link_shown}"
    );
    drop(scratch);
    drop(ns);
}
