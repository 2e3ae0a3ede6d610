//! The maps of the object and the counter updates.
//!
//! Each static's identifier is its map name, so it must equal the name in
//! `canary_common::maps` (checked at compile time below) that userspace looks up.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
};
use canary_common::{
    maps as names, Backend, BackendStats, Counter, FloodWindow, FlowEntry, FlowKey, GlobalConfig,
    ServiceControl, ServiceEntry, ServiceKey, ServiceStats, Tunnel, VipKey,
    COUNTERS as COUNTER_ENTRIES, DEFAULT_FLOW_TABLE_SIZE, GROUP_CANARY, ICMP_ANSWERS_PER_SECOND,
    MAGLEV_ENTRIES, MAX_BACKENDS, MAX_SERVICES,
};

#[map]
pub static CONFIG: Array<GlobalConfig> = Array::with_max_entries(1, 0);

#[map]
pub static SERVICES: HashMap<ServiceKey, ServiceEntry> = HashMap::with_max_entries(MAX_SERVICES, 0);

/// Value: number of services on the address (only presence matters here).
#[map]
pub static VIPS: HashMap<VipKey, u32> = HashMap::with_max_entries(MAX_SERVICES, 0);

#[map]
pub static CONTROL: Array<ServiceControl> = Array::with_max_entries(MAX_SERVICES, 0);

#[map]
pub static BACKENDS: Array<Backend> = Array::with_max_entries(MAX_BACKENDS, 0);

/// Flat Maglev tables, indexed by `canary_common::maglev_index`; value: backend index or
/// `NO_BACKEND`.
#[map]
pub static MAGLEV: Array<u32> = Array::with_max_entries(MAGLEV_ENTRIES, 0);

/// Established flows. Userspace resizes it at load time (`EbpfLoader::set_max_entries`).
///
/// One LRU list shared by all CPUs. Per-CPU lists (`BPF_F_NO_COMMON_LRU`, the `percpu-lru`
/// feature, built only for the benchmark's comparison) split the entries evenly between the
/// CPUs: a CPU could then hold only `max_entries / CPUs` flows before evicting its own, so a
/// table sized for the flows would hold a fraction of them whenever the flows are not spread
/// evenly over the CPUs.
#[map]
pub static FLOWS: LruHashMap<FlowKey, FlowEntry> =
    LruHashMap::with_max_entries(DEFAULT_FLOW_TABLE_SIZE, FLOWS_MAP_FLAGS);

/// `BPF_F_NO_COMMON_LRU`.
#[cfg(feature = "percpu-lru")]
const FLOWS_MAP_FLAGS: u32 = 1 << 1;
#[cfg(not(feature = "percpu-lru"))]
const FLOWS_MAP_FLAGS: u32 = 0;

#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_ENTRIES, 0);

#[map]
pub static BACKEND_STATS: PerCpuArray<BackendStats> =
    PerCpuArray::with_max_entries(MAX_BACKENDS, 0);

#[map]
pub static SERVICE_STATS: PerCpuArray<ServiceStats> =
    PerCpuArray::with_max_entries(MAX_SERVICES, 0);

/// This CPU's flood-guard window.
#[map]
pub static FLOOD_GUARD: PerCpuArray<FloodWindow> = PerCpuArray::with_max_entries(1, 0);

/// This CPU's window of ICMP answers to too-big packets (`too_big`).
#[map]
pub static ICMP_GUARD: PerCpuArray<FloodWindow> = PerCpuArray::with_max_entries(1, 0);

/// Outer addresses of the backends of IP-in-IP services, indexed like `BACKENDS`.
#[map]
pub static TUNNELS: Array<Tunnel> = Array::with_max_entries(MAX_BACKENDS, 0);

const fn same_name(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

const _: () = assert!(same_name(names::CONFIG, "CONFIG"));
const _: () = assert!(same_name(names::SERVICES, "SERVICES"));
const _: () = assert!(same_name(names::VIPS, "VIPS"));
const _: () = assert!(same_name(names::CONTROL, "CONTROL"));
const _: () = assert!(same_name(names::BACKENDS, "BACKENDS"));
const _: () = assert!(same_name(names::MAGLEV, "MAGLEV"));
const _: () = assert!(same_name(names::FLOWS, "FLOWS"));
const _: () = assert!(same_name(names::COUNTERS, "COUNTERS"));
const _: () = assert!(same_name(names::BACKEND_STATS, "BACKEND_STATS"));
const _: () = assert!(same_name(names::SERVICE_STATS, "SERVICE_STATS"));
const _: () = assert!(same_name(names::FLOOD_GUARD, "FLOOD_GUARD"));
const _: () = assert!(same_name(names::TUNNELS, "TUNNELS"));
const _: () = assert!(same_name(names::ICMP_GUARD, "ICMP_GUARD"));
const _: () = assert!(same_name(names::PROGRAM, "canary"));
const _: () = assert!(same_name(names::PASS_PROGRAM, "canary_pass"));
const _: () = assert!(same_name(names::DECAP_PROGRAM, "canary_decap"));

/// Adds one to a global counter (outcome or event) on this CPU.
#[inline(always)]
pub fn count(counter: Counter) {
    if let Some(value) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: a per-CPU slot, written only by this CPU while the program runs.
        unsafe { *value += 1 };
    }
}

/// Whether this CPU's flood guard lets one more new flow take a flow-table entry now.
#[inline(always)]
pub fn flood_guard_admits(rate: u32, now_ns: u64) -> bool {
    if rate == 0 {
        return true;
    }
    window_admits(&FLOOD_GUARD, rate, now_ns).unwrap_or(true)
}

/// Whether this CPU may send one more ICMP answer now (at most `ICMP_ANSWERS_PER_SECOND`).
#[inline(always)]
pub fn icmp_guard_admits(now_ns: u64) -> bool {
    window_admits(&ICMP_GUARD, ICMP_ANSWERS_PER_SECOND, now_ns).unwrap_or(false)
}

/// Counts one event in this CPU's window of `guard` and says whether it is within `rate`;
/// `None` if the one-entry array has no entry (never, but the verifier needs the branch).
#[inline(always)]
fn window_admits(guard: &PerCpuArray<FloodWindow>, rate: u32, now_ns: u64) -> Option<bool> {
    let window = guard.get_ptr_mut(0)?;
    // SAFETY: as in `count`.
    Some(unsafe { (*window).admit(rate, now_ns) })
}

/// Updates this CPU's stats of a service; a missing index (out of range) is ignored.
#[inline(always)]
fn with_service_stats(service: u32, update: impl FnOnce(&mut ServiceStats)) {
    if let Some(stats) = SERVICE_STATS.get_ptr_mut(service) {
        // SAFETY: as in `count`.
        update(unsafe { &mut *stats });
    }
}

#[inline(always)]
pub fn count_service_new_flow(service: u32, group: u32) {
    // Constant indices only: a variable index would bring a panicking bounds check.
    with_service_stats(service, |s| {
        if group == GROUP_CANARY {
            s.new_flows[1] += 1;
        } else {
            s.new_flows[0] += 1;
        }
    });
}

#[inline(always)]
pub fn count_service_deadman_fallback(service: u32) {
    with_service_stats(service, |s| s.deadman_fallback += 1);
}

#[inline(always)]
pub fn count_service_group_fallback(service: u32) {
    with_service_stats(service, |s| s.group_fallback += 1);
}

#[inline(always)]
pub fn count_backend_new_flow(backend: u32) {
    if let Some(stats) = BACKEND_STATS.get_ptr_mut(backend) {
        // SAFETY: as in `count`.
        unsafe { (*stats).new_flows += 1 };
    }
}

#[inline(always)]
pub fn count_backend_packet(backend: u32, frame_len: u64) {
    if let Some(stats) = BACKEND_STATS.get_ptr_mut(backend) {
        // SAFETY: as in `count`.
        unsafe {
            (*stats).packets += 1;
            (*stats).bytes += frame_len;
        }
    }
}
