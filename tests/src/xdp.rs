//! Loads the XDP object, writes its maps and runs its programs with `BPF_PROG_TEST_RUN`.
//!
//! Every packet test and the per-packet benchmark go through [`Dataplane`]: one loaded copy of
//! the object with fresh (empty) maps, so tests do not see each other's flows or counters.
//! An object is driven in its own layout ([`ObjectLayout`]): the current one, or an older
//! build's that the benchmark measures as its baseline.

use std::path::PathBuf;

mod daemon;
mod layout;

pub use layout::ObjectLayout;
use layout::{prefix, widen, BEFORE_TUNNELS_CONFIG_SIZE, BEFORE_TUNNELS_FLOW_ENTRY_SIZE};

use aya::maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray};
use aya::programs::{ProgramError, TestRun, TestRunOptions, Xdp};
use aya::{Ebpf, EbpfError, EbpfLoader};
use canary_common::{
    maglev_index, maps, Backend, BackendStats, Counter, FlowEntry, FlowKey, GlobalConfig,
    ServiceControl, ServiceEntry, ServiceKey, ServiceStats, Tunnel, VipKey, COUNTERS,
    MAGLEV_TABLE_SIZE,
};

/// Environment variable naming the object to load instead of the default build output.
pub const OBJECT_ENV: &str = "CANARY_BPF_OBJECT";

/// XDP return codes (uapi `enum xdp_action`).
pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

/// Readable name of an XDP action, for failure messages.
pub fn action_name(action: u32) -> &'static str {
    match action {
        XDP_ABORTED => "XDP_ABORTED",
        XDP_DROP => "XDP_DROP",
        XDP_PASS => "XDP_PASS",
        XDP_TX => "XDP_TX",
        XDP_REDIRECT => "XDP_REDIRECT",
        _ => "unknown XDP action",
    }
}

/// Frames are tested with at least this much room for output (the program never grows them).
const OUT_SLACK: usize = 256;
/// The kernel's test runner refuses frames shorter than an Ethernet header (EINVAL), even
/// behind XDP metadata (checked on kernel 6.18), so shorter frames cannot be tested this way.
pub const MIN_TEST_FRAME: usize = 14;

#[derive(Debug, thiserror::Error)]
pub enum XdpError {
    /// Loading BPF programs needs root (`CAP_BPF` + `CAP_NET_ADMIN`).
    #[error("the XDP packet tests load BPF programs and must run as root (try `sudo -E cargo test -p canary-tests -- --test-threads=1`)")]
    NotRoot,
    /// The object has not been built.
    #[error("XDP object not found at {path}: build it with `cargo xtask build-ebpf --release` or point {OBJECT_ENV} at it")]
    ObjectMissing { path: PathBuf },
    /// The kernel or aya refused the object.
    #[error("loading the XDP object {path} failed")]
    Load {
        path: PathBuf,
        #[source]
        source: Box<EbpfError>,
    },
    /// The object lacks a map this code expects (object and canary-common out of step).
    #[error("map {0} is missing from the XDP object: rebuild it from the current canary-common")]
    MissingMap(&'static str),
    /// A map of the object is not of the kind this code expects.
    #[error("map {0} of the XDP object is not an array or hash map: rebuild it from the current canary-common")]
    MapKind(&'static str),
    /// The object lacks a program this code expects.
    #[error(
        "program {0} is missing from the XDP object: rebuild it from the current canary-common"
    )]
    MissingProgram(&'static str),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: Box<MapError>,
    },
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: Box<ProgramError>,
    },
    /// `BPF_PROG_TEST_RUN` cannot run a frame this short.
    #[error(
        "a {0}-byte frame cannot be test-run: the kernel needs at least {MIN_TEST_FRAME} bytes"
    )]
    FrameTooShort(usize),
    /// The object's shared structures are in none of the layouts this code can drive.
    #[error(
        "the XDP object's maps have a layout this code does not know (CONFIG value {config_size} bytes, \
         FLOWS value {flow_entry_size} bytes, {counters} COUNTERS; known: {known}): rebuild the object \
         from the current canary-common, or describe its layout in tests/src/xdp/layout.rs",
        known = ObjectLayout::known_sizes()
    )]
    UnknownLayout {
        config_size: usize,
        flow_entry_size: usize,
        counters: u32,
    },
    /// A Maglev table given to [`Dataplane::set_maglev_table`] has the wrong size.
    #[error("a Maglev table has {0} slots, expected MAGLEV_TABLE_SIZE")]
    TableSize(usize),
}

/// Where the object is: `$CANARY_BPF_OBJECT`, or the release build of `canary-ebpf`.
pub fn object_path() -> PathBuf {
    if let Some(path) = std::env::var_os(OBJECT_ENV) {
        return PathBuf::from(path);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../canary-ebpf/target/bpfel-unknown-none/release/canary-ebpf")
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Result of one run of a program on one frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Run {
    pub action: u32,
    /// The frame as the program left it.
    pub output: Vec<u8>,
}

/// Options for [`Dataplane::load`].
#[derive(Clone, Copy, Debug, Default)]
pub struct LoadOptions {
    /// `FLOWS` max entries; `None` keeps the object's default.
    pub flow_table_size: Option<u32>,
}

/// A loaded copy of the object with its programs loaded (not attached anywhere).
pub struct Dataplane {
    ebpf: Ebpf,
    layout: ObjectLayout,
}

fn map_err(name: &'static str) -> impl FnOnce(MapError) -> XdpError {
    move |source| XdpError::Map {
        name,
        source: Box::new(source),
    }
}

fn prog_err(name: &'static str) -> impl FnOnce(ProgramError) -> XdpError {
    move |source| XdpError::Program {
        name,
        source: Box::new(source),
    }
}

impl Dataplane {
    /// Loads the object at [`object_path`] with empty maps.
    pub fn load(options: LoadOptions) -> Result<Self, XdpError> {
        Self::load_object(&object_path(), options)
    }

    /// Loads the object at `path` (another build of the program: the benchmark's baseline or
    /// variant) with empty maps.
    pub fn load_object(path: &std::path::Path, options: LoadOptions) -> Result<Self, XdpError> {
        if !is_root() {
            return Err(XdpError::NotRoot);
        }
        let path = path.to_path_buf();
        if !path.is_file() {
            return Err(XdpError::ObjectMissing { path });
        }
        let mut loader = EbpfLoader::new();
        if let Some(size) = options.flow_table_size {
            loader.map_max_entries(maps::FLOWS, size);
        }
        let mut ebpf = loader.load_file(&path).map_err(|source| XdpError::Load {
            path,
            source: Box::new(source),
        })?;
        let layout = ObjectLayout::detect(
            map_info(&ebpf, maps::CONFIG)?.value_size() as usize,
            map_info(&ebpf, maps::FLOWS)?.value_size() as usize,
            map_info(&ebpf, maps::COUNTERS)?.max_entries(),
        )?;
        let programs: &[&'static str] = if layout.has_tunnels() {
            &[maps::PROGRAM, maps::PASS_PROGRAM, maps::DECAP_PROGRAM]
        } else {
            &[maps::PROGRAM, maps::PASS_PROGRAM]
        };
        for &name in programs {
            let program: &mut Xdp = ebpf
                .program_mut(name)
                .ok_or(XdpError::MissingProgram(name))?
                .try_into()
                .map_err(prog_err(name))?;
            program.load().map_err(prog_err(name))?;
        }
        Ok(Self { ebpf, layout })
    }

    /// The layout of the loaded object's shared structures.
    pub fn layout(&self) -> ObjectLayout {
        self.layout
    }

    /// Loads the object, panicking with the reason (for tests: a panic names its location).
    pub fn load_or_panic(options: LoadOptions) -> Self {
        match Self::load(options) {
            Ok(dataplane) => dataplane,
            Err(e) => panic!("{}", error_chain(&e)),
        }
    }

    fn array<V: aya::Pod>(
        &mut self,
        name: &'static str,
    ) -> Result<Array<&mut MapData, V>, XdpError> {
        let map = self.ebpf.map_mut(name).ok_or(XdpError::MissingMap(name))?;
        Array::try_from(map).map_err(map_err(name))
    }

    fn hash<K: aya::Pod, V: aya::Pod>(
        &mut self,
        name: &'static str,
    ) -> Result<HashMap<&mut MapData, K, V>, XdpError> {
        let map = self.ebpf.map_mut(name).ok_or(XdpError::MissingMap(name))?;
        HashMap::try_from(map).map_err(map_err(name))
    }

    fn per_cpu<V: aya::Pod>(
        &self,
        name: &'static str,
    ) -> Result<PerCpuArray<&MapData, V>, XdpError> {
        let map = self.ebpf.map(name).ok_or(XdpError::MissingMap(name))?;
        PerCpuArray::try_from(map).map_err(map_err(name))
    }

    /// Writes the global settings (in an older layout, without the fields it lacks).
    pub fn set_config(&mut self, config: &GlobalConfig) -> Result<(), XdpError> {
        match self.layout {
            ObjectLayout::Current => self.array::<GlobalConfig>(maps::CONFIG)?.set(0, config, 0),
            ObjectLayout::BeforeTunnels => self
                .array::<[u8; BEFORE_TUNNELS_CONFIG_SIZE]>(maps::CONFIG)?
                .set(0, prefix(config), 0),
        }
        .map_err(map_err(maps::CONFIG))
    }

    pub fn set_service(&mut self, key: &ServiceKey, entry: &ServiceEntry) -> Result<(), XdpError> {
        self.hash::<ServiceKey, ServiceEntry>(maps::SERVICES)?
            .insert(key, entry, 0)
            .map_err(map_err(maps::SERVICES))
    }

    pub fn remove_service(&mut self, key: &ServiceKey) -> Result<(), XdpError> {
        self.hash::<ServiceKey, ServiceEntry>(maps::SERVICES)?
            .remove(key)
            .map_err(map_err(maps::SERVICES))
    }

    /// Sets the number of services on an address (0 removes the address).
    pub fn set_vip(&mut self, key: &VipKey, services: u32) -> Result<(), XdpError> {
        let mut vips = self.hash::<VipKey, u32>(maps::VIPS)?;
        if services == 0 {
            vips.remove(key).map_err(map_err(maps::VIPS))
        } else {
            vips.insert(key, services, 0).map_err(map_err(maps::VIPS))
        }
    }

    pub fn vip(&mut self, key: &VipKey) -> Result<u32, XdpError> {
        match self.hash::<VipKey, u32>(maps::VIPS)?.get(key, 0) {
            Ok(n) => Ok(n),
            Err(MapError::KeyNotFound) => Ok(0),
            Err(e) => Err(map_err(maps::VIPS)(e)),
        }
    }

    pub fn set_control(&mut self, service: u32, control: &ServiceControl) -> Result<(), XdpError> {
        self.array::<ServiceControl>(maps::CONTROL)?
            .set(service, control, 0)
            .map_err(map_err(maps::CONTROL))
    }

    pub fn set_backend(&mut self, index: u32, backend: &Backend) -> Result<(), XdpError> {
        self.array::<Backend>(maps::BACKENDS)?
            .set(index, backend, 0)
            .map_err(map_err(maps::BACKENDS))
    }

    /// Writes a backend's IP-in-IP outer addresses (`TUNNELS`).
    pub fn set_tunnel(&mut self, index: u32, tunnel: &Tunnel) -> Result<(), XdpError> {
        self.array::<Tunnel>(maps::TUNNELS)?
            .set(index, tunnel, 0)
            .map_err(map_err(maps::TUNNELS))
    }

    /// Writes a whole (service, group) lookup table (`MAGLEV_TABLE_SIZE` backend indices).
    pub fn set_maglev_table(
        &mut self,
        service: u32,
        group: u32,
        table: &[u32],
    ) -> Result<(), XdpError> {
        if table.len() != MAGLEV_TABLE_SIZE as usize {
            return Err(XdpError::TableSize(table.len()));
        }
        let mut maglev = self.array::<u32>(maps::MAGLEV)?;
        for (slot, backend) in (0..MAGLEV_TABLE_SIZE).zip(table) {
            maglev
                .set(maglev_index(service, group, slot), backend, 0)
                .map_err(map_err(maps::MAGLEV))?;
        }
        Ok(())
    }

    /// Global counters, per-CPU values summed, indexed by `Counter as usize` (of the current
    /// `canary-common`, whatever the object's layout; a counter the object lacks reads 0).
    pub fn counters(&self) -> Result<[u64; COUNTERS as usize], XdpError> {
        let counters = self.per_cpu::<u64>(maps::COUNTERS)?;
        let mut sums = [0u64; COUNTERS as usize];
        for (&counter, sum) in Counter::ALL.iter().zip(sums.iter_mut()) {
            if let Some(index) = self.layout.counter_index(counter) {
                *sum = counters
                    .get(&index, 0)
                    .map_err(map_err(maps::COUNTERS))?
                    .iter()
                    .sum();
            }
        }
        Ok(sums)
    }

    /// Counters of one backend, summed over CPUs.
    pub fn backend_stats(&self, index: u32) -> Result<BackendStats, XdpError> {
        let stats = self
            .per_cpu::<BackendStats>(maps::BACKEND_STATS)?
            .get(&index, 0)
            .map_err(map_err(maps::BACKEND_STATS))?;
        Ok(stats
            .iter()
            .copied()
            .fold(BackendStats::default(), BackendStats::plus))
    }

    /// Counters of one service, summed over CPUs.
    pub fn service_stats(&self, index: u32) -> Result<ServiceStats, XdpError> {
        let stats = self
            .per_cpu::<ServiceStats>(maps::SERVICE_STATS)?
            .get(&index, 0)
            .map_err(map_err(maps::SERVICE_STATS))?;
        Ok(stats
            .iter()
            .copied()
            .fold(ServiceStats::default(), ServiceStats::plus))
    }

    /// The flow table with values of type `V` (the object's `FlowEntry` layout).
    fn flows<V: aya::Pod>(&self) -> Result<HashMap<&MapData, FlowKey, V>, XdpError> {
        let map = self
            .ebpf
            .map(maps::FLOWS)
            .ok_or(XdpError::MissingMap(maps::FLOWS))?;
        HashMap::try_from(map).map_err(map_err(maps::FLOWS))
    }

    /// The flow table entry of a flow, if any (from an older layout, the fields it lacks are 0).
    pub fn flow(&self, key: &FlowKey) -> Result<Option<FlowEntry>, XdpError> {
        let entry = match self.layout {
            ObjectLayout::Current => self.flows::<FlowEntry>()?.get(key, 0),
            ObjectLayout::BeforeTunnels => self
                .flows::<[u8; BEFORE_TUNNELS_FLOW_ENTRY_SIZE]>()?
                .get(key, 0)
                .map(|bytes| widen(&bytes)),
        };
        match entry {
            Ok(entry) => Ok(Some(entry)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_err(maps::FLOWS)(e)),
        }
    }

    /// Writes a flow table entry (a flow the program did not create, or an edited one; in an
    /// older layout, without the fields it lacks).
    pub fn set_flow(&mut self, key: &FlowKey, entry: &FlowEntry) -> Result<(), XdpError> {
        match self.layout {
            ObjectLayout::Current => self
                .hash::<FlowKey, FlowEntry>(maps::FLOWS)?
                .insert(key, entry, 0),
            ObjectLayout::BeforeTunnels => self
                .hash::<FlowKey, [u8; BEFORE_TUNNELS_FLOW_ENTRY_SIZE]>(maps::FLOWS)?
                .insert(key, prefix(entry), 0),
        }
        .map_err(map_err(maps::FLOWS))
    }

    /// The keys of every flow table entry.
    fn flow_keys(&self) -> Result<Vec<FlowKey>, XdpError> {
        Ok(match self.layout {
            ObjectLayout::Current => self.flows::<FlowEntry>()?.keys().flatten().collect(),
            ObjectLayout::BeforeTunnels => self
                .flows::<[u8; BEFORE_TUNNELS_FLOW_ENTRY_SIZE]>()?
                .keys()
                .flatten()
                .collect(),
        })
    }

    /// Number of entries in the flow table.
    pub fn flow_count(&self) -> Result<usize, XdpError> {
        Ok(self.flow_keys()?.len())
    }

    /// Deletes every flow table entry.
    pub fn clear_flows(&mut self) -> Result<(), XdpError> {
        for key in self.flow_keys()? {
            let removed = match self.layout {
                ObjectLayout::Current => self.hash::<FlowKey, FlowEntry>(maps::FLOWS)?.remove(&key),
                ObjectLayout::BeforeTunnels => self
                    .hash::<FlowKey, [u8; BEFORE_TUNNELS_FLOW_ENTRY_SIZE]>(maps::FLOWS)?
                    .remove(&key),
            };
            match removed {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err(maps::FLOWS)(e)),
            }
        }
        Ok(())
    }

    fn program(&self, name: &'static str) -> Result<&Xdp, XdpError> {
        self.ebpf
            .program(name)
            .ok_or(XdpError::MissingProgram(name))?
            .try_into()
            .map_err(prog_err(name))
    }

    /// Runs `canary` once on `frame`; the output is written into `out` (resized to fit).
    /// Reuses `out` so that loops of many runs do not allocate.
    pub fn run_into(&self, frame: &[u8], out: &mut Vec<u8>) -> Result<u32, XdpError> {
        self.run_program_into(maps::PROGRAM, frame, out)
    }

    /// Runs `canary` once on `frame`.
    pub fn run(&self, frame: &[u8]) -> Result<Run, XdpError> {
        let mut output = Vec::new();
        let action = self.run_into(frame, &mut output)?;
        Ok(Run { action, output })
    }

    /// Runs `canary` once, panicking with the reason on a syscall failure.
    pub fn run_or_panic(&self, frame: &[u8]) -> Run {
        self.run(frame)
            .unwrap_or_else(|e| panic!("test run failed: {}", error_chain(&e)))
    }

    /// Runs `canary` once on `frame` as if it arrived on interface `ifindex` of the calling
    /// thread's network namespace (what `bpf_fib_lookup` starts from).
    pub fn run_on_interface(&self, frame: &[u8], ifindex: u32) -> Result<Run, XdpError> {
        if frame.len() < MIN_TEST_FRAME {
            return Err(XdpError::FrameTooShort(frame.len()));
        }
        let program = self.program(maps::PROGRAM)?;
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
        // egress_ifindex.
        let md: [u32; 6] = [0, frame.len() as u32, 0, ifindex, 0, 0];
        let ctx: Vec<u8> = md.iter().flat_map(|w| w.to_ne_bytes()).collect();
        let mut output = vec![0u8; frame.len() + OUT_SLACK];
        let result = program
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(output.as_mut_slice()),
                ctx_in: Some(&ctx),
                ..TestRunOptions::default()
            })
            .map_err(prog_err(maps::PROGRAM))?;
        output.truncate(result.data_size_out as usize);
        Ok(Run {
            action: result.return_value,
            output,
        })
    }

    /// Runs the named program once on `frame`.
    pub fn run_program_into(
        &self,
        name: &'static str,
        frame: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<u32, XdpError> {
        if frame.len() < MIN_TEST_FRAME {
            return Err(XdpError::FrameTooShort(frame.len()));
        }
        let program = self.program(name)?;
        out.resize(frame.len() + OUT_SLACK, 0);
        let result = program
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(out.as_mut_slice()),
                ..TestRunOptions::default()
            })
            .map_err(prog_err(name))?;
        out.truncate(result.data_size_out as usize);
        Ok(result.return_value)
    }

    /// Runs the named program `repeat` times on `frame` (the kernel re-runs the same buffer)
    /// and returns the kernel's mean ns per iteration and the last action.
    pub fn time_program(
        &self,
        name: &'static str,
        frame: &[u8],
        repeat: u32,
    ) -> Result<(u32, u32), XdpError> {
        let program = self.program(name)?;
        let result = program
            .test_run(TestRunOptions {
                data_in: Some(frame),
                repeat,
                ..TestRunOptions::default()
            })
            .map_err(prog_err(name))?;
        Ok((result.duration.as_nanos() as u32, result.return_value))
    }
}

/// The kernel's description of map `name` of a loaded object (sizes, entries).
fn map_info(ebpf: &Ebpf, name: &'static str) -> Result<aya::maps::MapInfo, XdpError> {
    let (Map::Array(data) | Map::PerCpuArray(data) | Map::HashMap(data) | Map::LruHashMap(data)) =
        ebpf.map(name).ok_or(XdpError::MissingMap(name))?
    else {
        return Err(XdpError::MapKind(name));
    };
    data.info().map_err(map_err(name))
}

/// An error and its sources on one line.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Pins the calling thread to one CPU, so per-CPU state and timing stay on one core.
pub fn pin_to_cpu(cpu: usize) -> Result<(), nix::Error> {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu)?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
}

/// `CLOCK_MONOTONIC` now in ns: the clock `bpf_ktime_get_ns` reads (the daemon's own clock).
pub use canary_userspace::dataplane::monotonic_ns;
