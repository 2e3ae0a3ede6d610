//! The only module that uses aya: loads the XDP object, attaches `canary` to an interface, pins
//! its maps and link under a bpffs directory, and re-opens them after a restart.
//!
//! Pins (under `bpffs`, default `/sys/fs/bpf/canary`): one file per map, named as in
//! `canary_common::maps`, and `link` (the XDP `bpf_link`). The pinned link keeps the program
//! attached after the daemon exits, so a restart re-opens the pins instead of attaching anew:
//! no detach, no packet lost, no flow table reset. Every reused map pin is first checked
//! against the object's own map definitions ([`layout`]); a pin of another layout is refused
//! with the steps to migrate. When the object's program differs from the attached one (a new
//! binary), it is loaded against the pinned maps and swapped in atomically through the pinned
//! link (`bpf_link_update`), so established flows stay. [`detach`] removes the link and the
//! pins.

use std::ffi::CString;
use std::io;
use std::path::{Path, PathBuf};

use aya::maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray, PerCpuValues};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::xdp::XdpLink;
use aya::programs::{ProgramError, Xdp, XdpMode};
use aya::EbpfLoader;
use canary_common::{
    maps, Backend, BackendStats, FlowEntry, FlowKey, GlobalConfig, ServiceControl, ServiceEntry,
    ServiceKey, ServiceStats, Tunnel, VipKey, COUNTERS, MAGLEV_TABLE_SIZE, MAX_BACKENDS,
    MAX_SERVICES,
};

use crate::dataplane::{Counters, DataPlane, DataPlaneError, MapWrite, WrittenState};

pub mod layout;
mod object;
mod pass;
mod pins;

pub use object::{embedded_object, object_bytes, OBJECT_BUILD_PATH};
pub use pass::PassProgram;
pub use pins::{
    detach, ensure_bpffs, is_bpffs, mount_bpffs, parse_link_fdinfo, pinned_link_info, Detached,
    LinkInfo,
};

/// Name of the pinned XDP link in the bpffs directory.
pub const LINK_PIN: &str = "link";

/// Every map the program has, all pinned.
pub const ALL_MAPS: [&str; 13] = [
    maps::CONFIG,
    maps::SERVICES,
    maps::VIPS,
    maps::CONTROL,
    maps::BACKENDS,
    maps::MAGLEV,
    maps::FLOWS,
    maps::COUNTERS,
    maps::BACKEND_STATS,
    maps::SERVICE_STATS,
    maps::FLOOD_GUARD,
    maps::TUNNELS,
    maps::ICMP_GUARD,
];

/// Maps that pins of an earlier version may lack: re-opening creates and pins them. They hold
/// only the program's own short-lived state (the flood guard's and the ICMP answers' current
/// one-second windows), or what no earlier version wrote (the tunnels of `ipip` services), so
/// a fresh one loses nothing; every other missing pin stops a re-open.
pub const MAPS_CREATED_ON_REOPEN: [&str; 3] = [maps::FLOOD_GUARD, maps::TUNNELS, maps::ICMP_GUARD];

/// `dataplane.xdp_mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum XdpAttachMode {
    /// Native (driver) mode, else generic (skb) mode.
    #[default]
    Auto,
    Native,
    Skb,
}

impl std::str::FromStr for XdpAttachMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(XdpAttachMode::Auto),
            "native" => Ok(XdpAttachMode::Native),
            "skb" => Ok(XdpAttachMode::Skb),
            other => Err(format!(
                "unknown xdp_mode {other:?}: use auto, native or skb"
            )),
        }
    }
}

/// The mode the program was attached in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachedMode {
    Native,
    Skb,
}

/// How to open the data plane (from the `[dataplane]` config section).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    pub interface: String,
    pub xdp_mode: XdpAttachMode,
    /// Entries of the LRU flow table (used when the maps are created; pinned maps keep theirs).
    pub flow_table_size: u32,
    /// Pin directory, e.g. `/sys/fs/bpf/canary`.
    pub bpffs: PathBuf,
    /// `--bpf-object PATH`: load this file instead of the embedded object.
    pub object: Option<PathBuf>,
}

/// What [`AyaDataPlane::open`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Opened {
    /// Loaded the object, attached it in this mode, pinned maps and link. `maps_reused`: some
    /// pinned maps already existed (an earlier run died before pinning its link) and were
    /// reused, flow table included.
    Attached {
        mode: AttachedMode,
        maps_reused: bool,
    },
    /// Re-opened the pinned maps and link of a running program (after a restart): nothing was
    /// detached or reset. `replaced`: the object's program differed from the attached one and
    /// replaced it in place.
    Reopened { replaced: Option<Replaced> },
}

impl Opened {
    /// Whether the maps (and what the daemon wrote into them) come from an earlier run.
    pub fn recovered(&self) -> bool {
        matches!(self, Opened::Reopened { .. })
    }
}

/// A program replaced through the pinned link: tags (the kernel's hash of the instructions) of
/// the program before and after.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replaced {
    pub from_tag: String,
    pub to_tag: String,
}

/// Errors of loading, attaching, pinning and map access.
#[derive(Debug, thiserror::Error)]
pub enum AyaError {
    /// Built without the object and no `--bpf-object` given.
    #[error("no eBPF object: this binary was built without it; run `cargo xtask build-ebpf --release` and rebuild, or pass --bpf-object PATH")]
    NoObject,
    #[error("cannot read the eBPF object {path}: {source}")]
    ReadObject {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The pin directory could not be prepared.
    #[error("cannot prepare the bpffs pin directory {path}: {source} (run as root; the parent must be a bpffs or a directory where one can be mounted)")]
    Bpffs {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("loading the eBPF object failed: {0} (is it built for this version of canary? run `cargo xtask build-ebpf --release`; a stale pin directory can be cleared with `canary detach`)")]
    Load(#[source] Box<aya::EbpfError>),
    #[error("the eBPF object has no XDP program {0:?}; rebuild it with `cargo xtask build-ebpf --release`")]
    ProgramMissing(&'static str),
    #[error("loading XDP program {program:?} into the kernel failed: {source}")]
    ProgramLoad {
        program: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("attaching XDP to interface {interface:?} in {mode} mode failed: {source} (check the interface exists in this network namespace; another XDP program may be attached: `ip link set dev {interface} xdp off`; try xdp_mode = \"skb\")")]
    Attach {
        interface: String,
        mode: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("the kernel attached XDP without a bpf_link (netlink fallback), which cannot be pinned; a kernel >= 5.9 is needed")]
    NoLink,
    #[error("pinning {path} failed: {source}")]
    Pin {
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("the XDP link is pinned in {dir} but map pin {path} is missing; run `canary detach` and start again")]
    PinnedMapMissing { dir: PathBuf, path: PathBuf },
    #[error("opening pin {path} failed: {message}")]
    OpenPin { path: PathBuf, message: String },
    /// The object's map definitions could not be read.
    #[error("cannot read the map definitions of the eBPF object: {0}")]
    Layout(String),
    /// A pinned map of another layout than the object's.
    #[error("{}", layout::describe(path, dir, mismatch))]
    IncompatiblePin {
        path: PathBuf,
        dir: PathBuf,
        mismatch: Box<layout::Mismatch>,
    },
    /// The new program could not replace the attached one.
    #[error("replacing the attached XDP program through {path} failed: {source}; the old program stays attached")]
    Replace {
        path: PathBuf,
        #[source]
        source: ProgramError,
    },
    #[error("map {map} in the object or pin has an unexpected type or layout: {source} (object and binary are from different versions; rebuild, or `canary detach` to drop old pins)")]
    MapType {
        map: &'static str,
        #[source]
        source: MapError,
    },
    #[error("the pinned XDP link is attached to interface index {pinned}, but {interface:?} has index {configured}; run `canary detach` first to move the data plane")]
    OtherInterface {
        interface: String,
        pinned: u32,
        configured: u32,
    },
    #[error("removing pin {path} failed: {source}")]
    Unpin {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    DataPlane(#[from] DataPlaneError),
}

fn interface_index(interface: &str) -> Option<u32> {
    let c = CString::new(interface).ok()?;
    // SAFETY: `c` is a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (index != 0).then_some(index)
}

fn map_err(map: &'static str, operation: &'static str, e: MapError) -> DataPlaneError {
    DataPlaneError::Map {
        map,
        operation,
        source: Box::new(e),
    }
}

fn is_not_found(e: &MapError) -> bool {
    match e {
        MapError::KeyNotFound | MapError::ElementNotFound => true,
        MapError::SyscallError(s) => s.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

/// The data plane over the real maps.
pub struct AyaDataPlane {
    config: Array<MapData, GlobalConfig>,
    services: HashMap<MapData, ServiceKey, ServiceEntry>,
    vips: HashMap<MapData, VipKey, u32>,
    control: Array<MapData, ServiceControl>,
    backends: Array<MapData, Backend>,
    tunnels: Array<MapData, Tunnel>,
    maglev: Array<MapData, u32>,
    flows: HashMap<MapData, FlowKey, FlowEntry>,
    counters: PerCpuArray<MapData, u64>,
    backend_stats: PerCpuArray<MapData, BackendStats>,
    service_stats: PerCpuArray<MapData, ServiceStats>,
    flow_table_capacity: u32,
    bpffs: PathBuf,
    /// Holding it keeps nothing alive that the pin does not; kept for symmetry with `detach`.
    _link: PinnedLink,
}

impl std::fmt::Debug for AyaDataPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AyaDataPlane")
            .field("bpffs", &self.bpffs)
            .field("flow_table_capacity", &self.flow_table_capacity)
            .finish_non_exhaustive()
    }
}

/// The `canary` XDP program of a loaded object.
fn program(ebpf: &mut aya::Ebpf) -> Result<&mut Xdp, AyaError> {
    ebpf.program_mut(maps::PROGRAM)
        .ok_or(AyaError::ProgramMissing(maps::PROGRAM))?
        .try_into()
        .map_err(|_| AyaError::ProgramMissing(maps::PROGRAM))
}

fn take_map(ebpf: &mut aya::Ebpf, name: &'static str) -> Result<Map, AyaError> {
    ebpf.take_map(name).ok_or(AyaError::MapType {
        map: name,
        source: MapError::InvalidName {
            name: name.to_owned(),
        },
    })
}

fn typed<T>(name: &'static str, map: Map) -> Result<T, AyaError>
where
    T: TryFrom<Map, Error = MapError>,
{
    T::try_from(map).map_err(|source| AyaError::MapType { map: name, source })
}

fn capacity(name: &'static str, map: &Map) -> Result<u32, AyaError> {
    match map {
        Map::LruHashMap(data) => data
            .info()
            .map(|i| i.max_entries())
            .map_err(|source| AyaError::MapType { map: name, source }),
        _ => Err(AyaError::MapType {
            map: name,
            source: MapError::InvalidMapType { map_type: 0 },
        }),
    }
}

impl AyaDataPlane {
    /// Opens the data plane: re-opens the pins when the link is pinned in `options.bpffs`
    /// (after a restart; the program is replaced in place when the object's differs),
    /// otherwise loads the object, attaches `canary` to the interface and pins maps and link.
    /// Every existing map pin must match the object's layout. Mounts a bpffs at the pin
    /// directory's parent when none is there.
    pub fn open(options: &Options) -> Result<(AyaDataPlane, Opened), AyaError> {
        ensure_bpffs(&options.bpffs)?;
        let bytes = object_bytes(options.object.as_deref())?;
        layout::check_pins(&options.bpffs, &layout::object_layout(&bytes)?)?;
        let link_path = options.bpffs.join(LINK_PIN);
        if link_path.exists() {
            let configured = interface_index(&options.interface).unwrap_or(0);
            let link = pinned_link_info(&link_path).map_err(|e| AyaError::OpenPin {
                path: link_path.clone(),
                message: e.to_string(),
            })?;
            if link.ifindex != 0 {
                if link.ifindex != configured {
                    return Err(AyaError::OtherInterface {
                        interface: options.interface.clone(),
                        pinned: link.ifindex,
                        configured,
                    });
                }
                return Self::reopen(options, &bytes, &link);
            }
            // Its interface was deleted: the link is dead; attach anew, keeping the maps.
            std::fs::remove_file(&link_path).map_err(|source| AyaError::Unpin {
                path: link_path.clone(),
                source,
            })?;
        }
        Self::load_and_attach(options, &bytes)
    }

    /// Loads the object with every map from its pin (existing pins reused, missing ones
    /// created and pinned) and loads the program into the kernel, not attached.
    fn load(options: &Options, bytes: &[u8]) -> Result<aya::Ebpf, AyaError> {
        let mut loader = EbpfLoader::new();
        for name in ALL_MAPS {
            loader.map_pin_path(name, options.bpffs.join(name));
        }
        loader.map_max_entries(maps::FLOWS, options.flow_table_size);
        let mut ebpf = loader
            .load(bytes)
            .map_err(|e| AyaError::Load(Box::new(e)))?;
        program(&mut ebpf)?
            .load()
            .map_err(|source| AyaError::ProgramLoad {
                program: maps::PROGRAM,
                source,
            })?;
        Ok(ebpf)
    }

    fn reopen(
        options: &Options,
        bytes: &[u8],
        attached: &LinkInfo,
    ) -> Result<(AyaDataPlane, Opened), AyaError> {
        let bpffs = &options.bpffs;
        for name in ALL_MAPS {
            let path = bpffs.join(name);
            if !path.exists() && !MAPS_CREATED_ON_REOPEN.contains(&name) {
                return Err(AyaError::PinnedMapMissing {
                    dir: bpffs.to_owned(),
                    path,
                });
            }
        }
        let mut ebpf = Self::load(options, bytes)?;
        let link_path = bpffs.join(LINK_PIN);
        let program = program(&mut ebpf)?;
        let tag = program
            .info()
            .map(|i| format!("{:016x}", i.tag()))
            .map_err(|source| AyaError::ProgramLoad {
                program: maps::PROGRAM,
                source,
            })?;
        let replaced = if tag == attached.prog_tag {
            None
        } else {
            // Atomically swap the program behind the pinned link; the maps are the pinned ones,
            // so flows, weights and counters carry over.
            let open = |e: aya::programs::links::LinkError| AyaError::OpenPin {
                path: link_path.clone(),
                message: e.to_string(),
            };
            let pinned = PinnedLink::from_pin(&link_path).map_err(open)?;
            let link = XdpLink::try_from(FdLink::from(pinned)).map_err(open)?;
            let id = program
                .attach_to_link(link)
                .map_err(|source| AyaError::Replace {
                    path: link_path.clone(),
                    source,
                })?;
            // The link stays pinned; this handle only closes our descriptor.
            drop(program.take_link(id));
            Some(Replaced {
                from_tag: attached.prog_tag.clone(),
                to_tag: tag,
            })
        };
        let link = PinnedLink::from_pin(&link_path).map_err(|e| AyaError::OpenPin {
            path: link_path.clone(),
            message: e.to_string(),
        })?;
        let dp = Self::from_maps(|name| take_map(&mut ebpf, name), bpffs, link)?;
        Ok((dp, Opened::Reopened { replaced }))
    }

    fn load_and_attach(
        options: &Options,
        bytes: &[u8],
    ) -> Result<(AyaDataPlane, Opened), AyaError> {
        let bpffs = &options.bpffs;
        let maps_reused = ALL_MAPS.iter().any(|m| bpffs.join(m).exists());
        let mut ebpf = Self::load(options, bytes)?;
        let program = program(&mut ebpf)?;
        let (link_id, mode) = attach(program, &options.interface, options.xdp_mode)?;
        let link = program
            .take_link(link_id)
            .map_err(|source| AyaError::Attach {
                interface: options.interface.clone(),
                mode: "any",
                source,
            })?;
        let link: FdLink = link.try_into().map_err(|_| AyaError::NoLink)?;
        let link_path = bpffs.join(LINK_PIN);
        let link = link.pin(&link_path).map_err(|source| AyaError::Pin {
            path: link_path,
            source,
        })?;
        let dp = Self::from_maps(|name| take_map(&mut ebpf, name), bpffs, link)?;
        Ok((dp, Opened::Attached { mode, maps_reused }))
    }

    /// The one place that turns the program's maps into typed handles, whether they come from
    /// the pins (`open`) or from a fresh load (`take`).
    fn from_maps(
        mut map: impl FnMut(&'static str) -> Result<Map, AyaError>,
        bpffs: &Path,
        link: PinnedLink,
    ) -> Result<AyaDataPlane, AyaError> {
        let flows = map(maps::FLOWS)?;
        let flow_table_capacity = capacity(maps::FLOWS, &flows)?;
        Ok(AyaDataPlane {
            config: typed(maps::CONFIG, map(maps::CONFIG)?)?,
            services: typed(maps::SERVICES, map(maps::SERVICES)?)?,
            vips: typed(maps::VIPS, map(maps::VIPS)?)?,
            control: typed(maps::CONTROL, map(maps::CONTROL)?)?,
            backends: typed(maps::BACKENDS, map(maps::BACKENDS)?)?,
            tunnels: typed(maps::TUNNELS, map(maps::TUNNELS)?)?,
            maglev: typed(maps::MAGLEV, map(maps::MAGLEV)?)?,
            flows: typed(maps::FLOWS, flows)?,
            counters: typed(maps::COUNTERS, map(maps::COUNTERS)?)?,
            backend_stats: typed(maps::BACKEND_STATS, map(maps::BACKEND_STATS)?)?,
            service_stats: typed(maps::SERVICE_STATS, map(maps::SERVICE_STATS)?)?,
            flow_table_capacity,
            bpffs: bpffs.to_owned(),
            _link: link,
        })
    }

    /// Entries of the flow table in the kernel (a pinned table keeps the size it was created
    /// with; compare with `dataplane.flow_table_size`).
    pub fn flow_table_capacity(&self) -> u32 {
        self.flow_table_capacity
    }

    pub fn bpffs(&self) -> &Path {
        &self.bpffs
    }

    /// A flow's entry in the flow table.
    pub fn flow(&self, key: &FlowKey) -> Result<Option<FlowEntry>, DataPlaneError> {
        match self.flows.get(key, 0) {
            Ok(e) => Ok(Some(e)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(map_err(maps::FLOWS, "lookup", e)),
        }
    }

    /// Number of flows in the table (walks it: for diagnostics, not for every poll).
    pub fn flow_count(&self) -> usize {
        self.flows.keys().flatten().count()
    }

    /// Writes a flow entry as the kernel would (tests and tools: pre-seeding, restart checks).
    pub fn insert_flow(&mut self, key: &FlowKey, entry: &FlowEntry) -> Result<(), DataPlaneError> {
        self.flows
            .insert(key, entry, 0)
            .map_err(|e| map_err(maps::FLOWS, "update", e))
    }

    /// The Maglev table of a (service, group) as the map holds it.
    pub fn maglev_table(&self, service_index: u32, group: u32) -> Result<Vec<u32>, DataPlaneError> {
        (0..MAGLEV_TABLE_SIZE)
            .map(|slot| {
                self.maglev
                    .get(&canary_common::maglev_index(service_index, group, slot), 0)
                    .map_err(|e| map_err(maps::MAGLEV, "lookup", e))
            })
            .collect()
    }

    fn zeroed<V: aya::Pod + Default>(map: &'static str) -> Result<PerCpuValues<V>, DataPlaneError> {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| DataPlaneError::Map {
            map,
            operation: "count CPUs",
            source: Box::new(e),
        })?;
        PerCpuValues::try_from(vec![V::default(); cpus]).map_err(|e| DataPlaneError::Map {
            map,
            operation: "build per-CPU values",
            source: Box::new(e),
        })
    }
}

pub(super) fn attach(
    program: &mut Xdp,
    interface: &str,
    mode: XdpAttachMode,
) -> Result<(aya::programs::xdp::XdpLinkId, AttachedMode), AyaError> {
    let try_mode = |program: &mut Xdp, m: AttachedMode| {
        let (xdp_mode, name) = match m {
            AttachedMode::Native => (XdpMode::Driver, "native"),
            AttachedMode::Skb => (XdpMode::Skb, "skb"),
        };
        program
            .attach(interface, xdp_mode)
            .map(|id| (id, m))
            .map_err(|source| AyaError::Attach {
                interface: interface.to_owned(),
                mode: name,
                source,
            })
    };
    match mode {
        XdpAttachMode::Native => try_mode(program, AttachedMode::Native),
        XdpAttachMode::Skb => try_mode(program, AttachedMode::Skb),
        XdpAttachMode::Auto => try_mode(program, AttachedMode::Native)
            .or_else(|_| try_mode(program, AttachedMode::Skb)),
    }
}

impl DataPlane for AyaDataPlane {
    fn flow_table_fill(&self) -> Option<crate::cluster::nodes::FlowTableFill> {
        // Walks the keys only (a hash table holds few entries compared with its capacity).
        let entries = self.flows.keys().flatten().count();
        Some(crate::cluster::nodes::FlowTableFill {
            entries: entries as u64,
            capacity: u64::from(self.flow_table_capacity),
        })
    }

    fn apply(&mut self, writes: &[MapWrite]) -> Result<(), DataPlaneError> {
        for w in writes {
            match w {
                MapWrite::ResetServiceStats { index } => {
                    let zero = Self::zeroed::<ServiceStats>(maps::SERVICE_STATS)?;
                    self.service_stats
                        .set(*index, zero, 0)
                        .map_err(|e| map_err(maps::SERVICE_STATS, "update", e))?;
                }
                MapWrite::ResetBackendStats { index } => {
                    let zero = Self::zeroed::<BackendStats>(maps::BACKEND_STATS)?;
                    self.backend_stats
                        .set(*index, zero, 0)
                        .map_err(|e| map_err(maps::BACKEND_STATS, "update", e))?;
                }
                MapWrite::Backend {
                    index,
                    backend,
                    tunnel,
                } => {
                    // The tunnel first: a backend entry is never read without its tunnel.
                    self.tunnels
                        .set(*index, tunnel, 0)
                        .map_err(|e| map_err(maps::TUNNELS, "update", e))?;
                    self.backends
                        .set(*index, backend, 0)
                        .map_err(|e| map_err(maps::BACKENDS, "update", e))?;
                }
                MapWrite::MaglevSlots {
                    service_index,
                    group,
                    slots,
                } => {
                    for &(slot, backend) in slots {
                        if slot >= MAGLEV_TABLE_SIZE || *service_index >= MAX_SERVICES {
                            return Err(DataPlaneError::IndexOutOfRange {
                                map: maps::MAGLEV,
                                index: slot,
                                size: MAGLEV_TABLE_SIZE,
                            });
                        }
                        let index = canary_common::maglev_index(*service_index, *group, slot);
                        self.maglev
                            .set(index, backend, 0)
                            .map_err(|e| map_err(maps::MAGLEV, "update", e))?;
                    }
                }
                MapWrite::Control { index, control } => self
                    .control
                    .set(*index, control, 0)
                    .map_err(|e| map_err(maps::CONTROL, "update", e))?,
                MapWrite::ServiceInsert { key, entry } => self
                    .services
                    .insert(key, entry, 0)
                    .map_err(|e| map_err(maps::SERVICES, "update", e))?,
                MapWrite::ServiceRemove { key } => match self.services.remove(key) {
                    Ok(()) => {}
                    Err(e) if is_not_found(&e) => {}
                    Err(e) => return Err(map_err(maps::SERVICES, "delete", e)),
                },
                MapWrite::VipSet { key, services } => self
                    .vips
                    .insert(key, services, 0)
                    .map_err(|e| map_err(maps::VIPS, "update", e))?,
                MapWrite::VipRemove { key } => match self.vips.remove(key) {
                    Ok(()) => {}
                    Err(e) if is_not_found(&e) => {}
                    Err(e) => return Err(map_err(maps::VIPS, "delete", e)),
                },
            }
        }
        Ok(())
    }

    fn control(&self, service_index: u32) -> Result<ServiceControl, DataPlaneError> {
        self.control
            .get(&service_index, 0)
            .map_err(|e| map_err(maps::CONTROL, "lookup", e))
    }

    fn set_global_config(&mut self, config: &GlobalConfig) -> Result<(), DataPlaneError> {
        self.config
            .set(0, config, 0)
            .map_err(|e| map_err(maps::CONFIG, "update", e))
    }

    fn global_config(&self) -> Result<GlobalConfig, DataPlaneError> {
        self.config
            .get(&0, 0)
            .map_err(|e| map_err(maps::CONFIG, "lookup", e))
    }

    fn counters(&self) -> Result<Counters, DataPlaneError> {
        let mut out = Counters::default();
        for i in 0..COUNTERS {
            let values = self
                .counters
                .get(&i, 0)
                .map_err(|e| map_err(maps::COUNTERS, "lookup", e))?;
            out.0[i as usize] = values.iter().copied().fold(0u64, u64::wrapping_add);
        }
        Ok(out)
    }

    fn backend_stats(&self, backend_index: u32) -> Result<BackendStats, DataPlaneError> {
        let values = self
            .backend_stats
            .get(&backend_index, 0)
            .map_err(|e| map_err(maps::BACKEND_STATS, "lookup", e))?;
        Ok(values
            .iter()
            .copied()
            .fold(BackendStats::default(), BackendStats::plus))
    }

    fn service_stats(&self, service_index: u32) -> Result<ServiceStats, DataPlaneError> {
        let values = self
            .service_stats
            .get(&service_index, 0)
            .map_err(|e| map_err(maps::SERVICE_STATS, "lookup", e))?;
        Ok(values
            .iter()
            .copied()
            .fold(ServiceStats::default(), ServiceStats::plus))
    }

    fn written_state(&self) -> Result<WrittenState, DataPlaneError> {
        let services = self
            .services
            .iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| map_err(maps::SERVICES, "iterate", e))?;
        let vips = self
            .vips
            .iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| map_err(maps::VIPS, "iterate", e))?;
        let mut backends = Vec::new();
        let mut tunnels = Vec::new();
        for i in 0..MAX_BACKENDS {
            let b = self
                .backends
                .get(&i, 0)
                .map_err(|e| map_err(maps::BACKENDS, "lookup", e))?;
            if b != Backend::default() {
                let tunnel = self
                    .tunnels
                    .get(&i, 0)
                    .map_err(|e| map_err(maps::TUNNELS, "lookup", e))?;
                backends.push((i, b));
                if !tunnel.is_unset() {
                    tunnels.push((i, tunnel));
                }
            }
        }
        Ok(WrittenState {
            services,
            vips,
            backends,
            tunnels,
        })
    }
}
