//! The layout of the structures an XDP object shares with userspace, as that object was built.
//!
//! The packet tests load objects built from the current `canary-common`. The benchmark also
//! loads an older build of the program beside the current one (`bench xdp --baseline REV`), so
//! [`Dataplane`](super::Dataplane) reads which layout the object has from its own maps (the
//! `CONFIG` and `FLOWS` value sizes and the number of `COUNTERS`) and writes and reads each map
//! at the object's own sizes. Only the layouts listed here are known; any other object is
//! refused with [`XdpError::UnknownLayout`] rather than driven with values it would misread.
//!
//! The older layout differs from today's only by fields appended at the end of a value (so an
//! older value is a prefix of today's, and the appended fields are simply absent) and by
//! counters inserted into or appended to [`Counter`] (so a counter's index differs).

use canary_common::{Counter, FlowEntry, GlobalConfig, COUNTERS};

use super::XdpError;

/// Which layout an object has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObjectLayout {
    /// The current `canary-common`: every structure as the tests are compiled with.
    Current,
    /// Before IP-in-IP forwarding and the UDP idle timeout (for example commit 73c130c, the
    /// object the new-flow path's before/after is measured against): no `TUNNELS` map and no
    /// `canary_decap` program; `GlobalConfig` without `udp_idle_timeout_ms` and its padding
    /// (24 bytes), `FlowEntry` without `seen_ns` (16 bytes); `COUNTERS` without
    /// `DropTunnelNoRoute`, `DropTunnelTooBig` and `TxIcmpTooBig` (inserted before `FlowHit`,
    /// so every event counter sat three places lower) and without `UdpFlowIdle` (appended).
    BeforeTunnels,
}

/// `GlobalConfig` bytes in a [`ObjectLayout::BeforeTunnels`] object.
pub(super) const BEFORE_TUNNELS_CONFIG_SIZE: usize = 24;
/// `FlowEntry` bytes in a [`ObjectLayout::BeforeTunnels`] object.
pub(super) const BEFORE_TUNNELS_FLOW_ENTRY_SIZE: usize = 16;

impl ObjectLayout {
    /// Every layout this code can drive.
    pub const KNOWN: [ObjectLayout; 2] = [ObjectLayout::Current, ObjectLayout::BeforeTunnels];

    /// `CONFIG` value size in bytes.
    pub const fn config_size(self) -> usize {
        match self {
            ObjectLayout::Current => size_of::<GlobalConfig>(),
            ObjectLayout::BeforeTunnels => BEFORE_TUNNELS_CONFIG_SIZE,
        }
    }

    /// `FLOWS` value size in bytes.
    pub const fn flow_entry_size(self) -> usize {
        match self {
            ObjectLayout::Current => size_of::<FlowEntry>(),
            ObjectLayout::BeforeTunnels => BEFORE_TUNNELS_FLOW_ENTRY_SIZE,
        }
    }

    /// Number of `COUNTERS` entries.
    pub const fn counters(self) -> u32 {
        match self {
            ObjectLayout::Current => COUNTERS,
            ObjectLayout::BeforeTunnels => COUNTERS - 4,
        }
    }

    /// Whether the object has the IP-in-IP parts: the `TUNNELS` map and `canary_decap`.
    pub const fn has_tunnels(self) -> bool {
        matches!(self, ObjectLayout::Current)
    }

    /// Where `counter` is in the object's `COUNTERS`; `None` when the object does not count it.
    pub fn counter_index(self, counter: Counter) -> Option<u32> {
        let index = counter as u32;
        match self {
            ObjectLayout::Current => Some(index),
            ObjectLayout::BeforeTunnels => match counter {
                Counter::DropTunnelNoRoute
                | Counter::DropTunnelTooBig
                | Counter::TxIcmpTooBig
                | Counter::UdpFlowIdle => None,
                _ if index < Counter::DropTunnelNoRoute as u32 => Some(index),
                _ => Some(index - 3),
            },
        }
    }

    /// The layout whose sizes are these, or [`XdpError::UnknownLayout`] naming them.
    pub fn detect(
        config_size: usize,
        flow_entry_size: usize,
        counters: u32,
    ) -> Result<Self, XdpError> {
        Self::KNOWN
            .into_iter()
            .find(|layout| {
                layout.config_size() == config_size
                    && layout.flow_entry_size() == flow_entry_size
                    && layout.counters() == counters
            })
            .ok_or(XdpError::UnknownLayout {
                config_size,
                flow_entry_size,
                counters,
            })
    }

    /// The known layouts' sizes, for error messages.
    pub fn known_sizes() -> String {
        Self::KNOWN
            .iter()
            .map(|l| {
                format!(
                    "{l:?}: CONFIG {} bytes, FLOWS {} bytes, {} COUNTERS",
                    l.config_size(),
                    l.flow_entry_size(),
                    l.counters()
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// The bytes of a value shared with the kernel.
pub(super) fn bytes_of<V: aya::Pod>(value: &V) -> &[u8] {
    // SAFETY: `aya::Pod` types are plain `#[repr(C)]` data without padding (the shared
    // structures' sizes are asserted in canary-common), so every byte is initialised.
    unsafe { std::slice::from_raw_parts(std::ptr::from_ref(value).cast::<u8>(), size_of::<V>()) }
}

/// The first `N` bytes of `value`: the value as an older layout that lacks its appended fields.
pub(super) fn prefix<const N: usize, V: aya::Pod>(value: &V) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&bytes_of(value)[..N]);
    out
}

/// A value read in an older layout: its `N` bytes, and the appended fields zero.
pub(super) fn widen<const N: usize, V: aya::Pod + Default>(bytes: &[u8; N]) -> V {
    let mut value = V::default();
    // SAFETY: as in `bytes_of`; every bit pattern is a valid `aya::Pod` value, and `N` is at
    // most `size_of::<V>()` (the slice indexing below checks it).
    let target = unsafe {
        std::slice::from_raw_parts_mut(std::ptr::from_mut(&mut value).cast::<u8>(), size_of::<V>())
    };
    target[..N].copy_from_slice(bytes);
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_counter_of_the_older_layout_has_one_distinct_index() {
        let layout = ObjectLayout::BeforeTunnels;
        let mut indices: Vec<u32> = Counter::ALL
            .iter()
            .filter_map(|c| layout.counter_index(*c))
            .collect();
        assert_eq!(indices.len(), layout.counters() as usize);
        indices.sort_unstable();
        assert_eq!(indices, (0..layout.counters()).collect::<Vec<_>>());
        assert_eq!(
            layout.counter_index(Counter::DropNoBackend),
            Some(Counter::DropNoBackend as u32)
        );
        assert_eq!(
            layout.counter_index(Counter::FlowHit),
            Some(Counter::DropNoBackend as u32 + 1)
        );
        assert_eq!(
            layout.counter_index(Counter::FlowInsertFailed),
            Some(layout.counters() - 1)
        );
    }

    #[test]
    fn layouts_are_told_apart_and_others_refused() {
        for layout in ObjectLayout::KNOWN {
            let found = ObjectLayout::detect(
                layout.config_size(),
                layout.flow_entry_size(),
                layout.counters(),
            );
            assert_eq!(found.ok(), Some(layout));
        }
        let unknown = ObjectLayout::detect(size_of::<GlobalConfig>(), 16, COUNTERS);
        assert!(
            matches!(unknown, Err(XdpError::UnknownLayout { .. })),
            "{unknown:?}"
        );
    }

    #[test]
    fn an_older_value_is_the_prefix_and_reads_back_with_the_appended_fields_zero() {
        let entry = FlowEntry {
            backend: 3,
            group: 1,
            created_ns: 42,
            seen_ns: 99,
        };
        let old: [u8; BEFORE_TUNNELS_FLOW_ENTRY_SIZE] = prefix(&entry);
        let back: FlowEntry = widen(&old);
        assert_eq!(
            back,
            FlowEntry {
                seen_ns: 0,
                ..entry
            }
        );
    }
}
