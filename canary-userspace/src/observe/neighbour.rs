//! Backend MAC addresses from the kernel's neighbour table (ARP for IPv4, NDP for IPv6).
//!
//! Direct server return rewrites only the destination MAC, so every backend's MAC must be
//! known. A config `mac` wins; otherwise the neighbour table of the daemon's network namespace
//! is read. The health probe to the backend's address is what fills that table.

use std::net::IpAddr;
use std::process::Command;

use crate::domain::parse_mac;

/// Where MACs come from (the real table, or a fixed map in tests).
pub trait Neighbours {
    fn mac(&self, ip: IpAddr) -> Option<[u8; 6]>;
}

/// The kernel's neighbour table, read with `ip neigh show`.
pub struct KernelNeighbours;

impl Neighbours for KernelNeighbours {
    fn mac(&self, ip: IpAddr) -> Option<[u8; 6]> {
        let output = Command::new("ip")
            .args(["neigh", "show", "to", &ip.to_string()])
            .output()
            .ok()?;
        if !output.status.success() {
            return None;
        }
        parse_neigh(&String::from_utf8_lossy(&output.stdout))
    }
}

/// The MAC in `ip neigh show to ADDR` output, when the entry is usable (not FAILED or
/// INCOMPLETE).
pub fn parse_neigh(text: &str) -> Option<[u8; 6]> {
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.iter().any(|w| *w == "FAILED" || *w == "INCOMPLETE") {
            continue;
        }
        if let Some(i) = words.iter().position(|w| *w == "lladdr") {
            if let Some(mac) = words.get(i + 1).and_then(|m| parse_mac(m)) {
                return Some(mac);
            }
        }
    }
    None
}

/// A fixed table (tests, and backends whose MAC is configured).
impl Neighbours for std::collections::BTreeMap<IpAddr, [u8; 6]> {
    fn mac(&self, ip: IpAddr) -> Option<[u8; 6]> {
        self.get(&ip).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_reachable_and_stale_entries_only() {
        assert_eq!(
            parse_neigh("198.18.0.11 dev eth0 lladdr 02:00:c6:12:00:0b REACHABLE\n"),
            Some([2, 0, 0xc6, 0x12, 0, 0x0b])
        );
        assert_eq!(
            parse_neigh("198.18.0.11 dev eth0 lladdr 02:00:c6:12:00:0b STALE"),
            Some([2, 0, 0xc6, 0x12, 0, 0x0b])
        );
        assert_eq!(parse_neigh("198.18.0.11 dev eth0 INCOMPLETE"), None);
        assert_eq!(
            parse_neigh("198.18.0.11 dev eth0 lladdr 02:00:c6:12:00:0b FAILED"),
            None
        );
        assert_eq!(parse_neigh(""), None);
    }

    #[test]
    fn parses_ndp_entries_like_arp_ones() {
        // `ip neigh show to ADDR` prints IPv6 (NDP) entries in the same form; a router flag
        // may follow the MAC.
        assert_eq!(
            parse_neigh(
                "2001:db8::198:18:0:11 dev eth0 lladdr 02:c4:4e:12:00:0b router REACHABLE\n"
            ),
            Some([2, 0xc4, 0x4e, 0x12, 0, 0x0b])
        );
        assert_eq!(
            parse_neigh("2001:db8::198:18:0:11 dev eth0 lladdr 02:c4:4e:12:00:0b DELAY"),
            Some([2, 0xc4, 0x4e, 0x12, 0, 0x0b])
        );
        assert_eq!(parse_neigh("2001:db8::198:18:0:11 dev eth0 FAILED"), None);
    }
}
