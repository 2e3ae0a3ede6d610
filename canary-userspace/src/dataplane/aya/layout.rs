//! The data plane's layout: the definition of every pinned map (type, key and value size,
//! entries, flags), read from the eBPF object itself, so the object carries its own layout
//! identity and no version number can drift from the code.
//!
//! Pinned maps are reused across restarts and upgrades only when they match the object's
//! definitions as the kernel reports them (the check libbpf calls `map_is_reuse_compat`), on
//! every path that reuses pins. A pinned map of another layout would otherwise be read and
//! written with the wrong sizes by both the program and the daemon.

use std::collections::BTreeMap;
use std::path::Path;

use canary_common::maps;

use super::{AyaError, ALL_MAPS};

/// A map's definition, as the kernel sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapDef {
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub flags: u32,
}

/// A pinned map that does not match the object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mismatch {
    pub map: &'static str,
    pub field: &'static str,
    pub pinned: String,
    pub expected: String,
}

/// `BPF_MAP_TYPE_*` names for messages.
fn type_name(t: u32) -> String {
    let name = match t {
        1 => "hash",
        2 => "array",
        5 => "percpu_hash",
        6 => "percpu_array",
        9 => "lru_hash",
        10 => "lru_percpu_hash",
        _ => return format!("type {t}"),
    };
    format!("{name} ({t})")
}

/// Whether a pinned map can be reused for the object's map `name`. The flow table keeps the
/// size it was created with (`dataplane.flow_table_size` applies when it is created), so its
/// entries are not compared; everything else must be equal.
pub fn check_reuse(name: &'static str, expected: MapDef, pinned: MapDef) -> Result<(), Mismatch> {
    let mismatch = |field, pinned: String, expected: String| {
        Err(Mismatch {
            map: name,
            field,
            pinned,
            expected,
        })
    };
    if pinned.map_type != expected.map_type {
        return mismatch(
            "type",
            type_name(pinned.map_type),
            type_name(expected.map_type),
        );
    }
    if pinned.key_size != expected.key_size {
        return mismatch(
            "key size",
            format!("{} bytes", pinned.key_size),
            format!("{} bytes", expected.key_size),
        );
    }
    if pinned.value_size != expected.value_size {
        return mismatch(
            "value size",
            format!("{} bytes", pinned.value_size),
            format!("{} bytes", expected.value_size),
        );
    }
    if name != maps::FLOWS && pinned.max_entries != expected.max_entries {
        return mismatch(
            "max entries",
            pinned.max_entries.to_string(),
            expected.max_entries.to_string(),
        );
    }
    if pinned.flags != expected.flags {
        return mismatch(
            "flags",
            format!("{:#x}", pinned.flags),
            format!("{:#x}", expected.flags),
        );
    }
    Ok(())
}

/// The definitions of every pinned map in the object `bytes`.
pub fn object_layout(bytes: &[u8]) -> Result<BTreeMap<&'static str, MapDef>, AyaError> {
    let object = aya_obj::Object::parse(bytes).map_err(|e| AyaError::Layout(e.to_string()))?;
    ALL_MAPS
        .iter()
        .map(|name| {
            let m = object.maps.get(*name).ok_or_else(|| {
                AyaError::Layout(format!(
                    "the eBPF object has no map {name}; rebuild it with `cargo xtask build-ebpf --release`"
                ))
            })?;
            Ok((
                *name,
                MapDef {
                    map_type: m.map_type(),
                    key_size: m.key_size(),
                    value_size: m.value_size(),
                    max_entries: m.max_entries(),
                    flags: m.map_flags(),
                },
            ))
        })
        .collect()
}

/// The definition of the map pinned at `path`, from the kernel.
pub fn pinned_def(path: &Path) -> Result<MapDef, AyaError> {
    let open = |message: String| AyaError::OpenPin {
        path: path.to_owned(),
        message,
    };
    let info = aya::maps::MapInfo::from_pin(path).map_err(|e| open(e.to_string()))?;
    let map_type = info
        .map_type()
        .map_err(|e| open(format!("unknown map type: {e}")))?;
    Ok(MapDef {
        map_type: map_type as u32,
        key_size: info.key_size(),
        value_size: info.value_size(),
        max_entries: info.max_entries(),
        flags: info.map_flags(),
    })
}

/// Checks every existing map pin in `bpffs` against the object's layout.
pub fn check_pins(bpffs: &Path, layout: &BTreeMap<&'static str, MapDef>) -> Result<(), AyaError> {
    for (name, expected) in layout {
        let path = bpffs.join(name);
        if !path.exists() {
            continue;
        }
        let pinned = pinned_def(&path)?;
        check_reuse(name, *expected, pinned).map_err(|m| AyaError::IncompatiblePin {
            path: path.clone(),
            dir: bpffs.to_owned(),
            mismatch: Box::new(m),
        })?;
    }
    Ok(())
}

/// What [`check_pins`] refuses with, in words (for the error's message).
pub fn describe(path: &Path, dir: &Path, m: &Mismatch) -> String {
    format!(
        "pinned map {} does not match this binary's eBPF object: its {} is {}, the object's is {}. \
         The pins in {} were made by a canary with another data-plane layout. To migrate: stop \
         the daemon, run `canary detach --config FILE` (traffic to the VIPs is not balanced until \
         the new daemon has started, and established flows lose their flow-table entries), then \
         start this version; or go back to the version that made the pins",
        path.display(),
        m.field,
        m.pinned,
        m.expected,
        dir.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const BACKENDS: MapDef = MapDef {
        map_type: 2,
        key_size: 4,
        value_size: 16,
        max_entries: 4096,
        flags: 0,
    };
    const FLOWS: MapDef = MapDef {
        map_type: 9,
        key_size: 40,
        value_size: 16,
        max_entries: 1 << 20,
        flags: 0,
    };

    #[test]
    fn reuse_needs_the_same_type_sizes_entries_and_flags() {
        assert_eq!(check_reuse(maps::BACKENDS, BACKENDS, BACKENDS), Ok(()));
        let e = check_reuse(
            maps::BACKENDS,
            BACKENDS,
            MapDef {
                value_size: 32,
                ..BACKENDS
            },
        )
        .unwrap_err();
        assert_eq!(
            (e.field, e.pinned.as_str(), e.expected.as_str()),
            ("value size", "32 bytes", "16 bytes")
        );
        let e = check_reuse(
            maps::BACKENDS,
            BACKENDS,
            MapDef {
                max_entries: 10,
                ..BACKENDS
            },
        )
        .unwrap_err();
        assert_eq!(e.field, "max entries");
        let e = check_reuse(
            maps::BACKENDS,
            BACKENDS,
            MapDef {
                flags: 1,
                ..BACKENDS
            },
        )
        .unwrap_err();
        assert_eq!(e.field, "flags");
        let e = check_reuse(
            maps::BACKENDS,
            BACKENDS,
            MapDef {
                key_size: 8,
                ..BACKENDS
            },
        )
        .unwrap_err();
        assert_eq!(e.field, "key size");
    }

    #[test]
    fn the_flow_table_keeps_its_size_but_not_another_type() {
        let smaller = MapDef {
            max_entries: 4096,
            ..FLOWS
        };
        assert_eq!(check_reuse(maps::FLOWS, FLOWS, smaller), Ok(()));
        let plain_hash = MapDef {
            map_type: 1,
            max_entries: 10,
            ..FLOWS
        };
        let e = check_reuse(maps::FLOWS, FLOWS, plain_hash).unwrap_err();
        assert_eq!(
            (e.field, e.pinned.as_str(), e.expected.as_str()),
            ("type", "hash (1)", "lru_hash (9)")
        );
    }
}
