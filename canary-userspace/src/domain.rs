//! The domain's vocabulary: the canary [`Weight`] and the keyword enums (group, protocol,
//! affinity, modes), with what the config file, the data plane and the rollout need of them.

use std::fmt;

use canary_common::{BUCKETS, GROUP_CANARY, GROUP_STABLE, PROTO_TCP, PROTO_UDP};
use serde::{Deserialize, Serialize};

/// A canary weight: the share of new flows sent to the canary group, in basis points
/// (0 = none, 10 000 = all). Percent values with up to two decimals convert exactly.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Weight(u32);

/// Why a percentage is not a weight.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum WeightError {
    #[error("{0} is not between 0 and 100 percent")]
    OutOfRange(f64),
    #[error(
        "{0} has more than two decimals; weights have 0.01 percent resolution (e.g. 12.5 or 0.25)"
    )]
    TooFine(f64),
}

impl Weight {
    pub const ZERO: Weight = Weight(0);
    pub const FULL: Weight = Weight(BUCKETS);

    /// From basis points; values above 10 000 are clamped to 10 000.
    pub fn from_basis_points(bp: u32) -> Weight {
        Weight(bp.min(BUCKETS))
    }

    /// From a percentage with at most two decimals (`12.5` -> 1250 basis points).
    pub fn from_percent(percent: f64) -> Result<Weight, WeightError> {
        if !percent.is_finite() || !(0.0..=100.0).contains(&percent) {
            return Err(WeightError::OutOfRange(percent));
        }
        let bp = percent * 100.0;
        let rounded = bp.round();
        // Tolerance absorbs binary representation error of decimal input like 0.29.
        if (bp - rounded).abs() > 1e-6 {
            return Err(WeightError::TooFine(percent));
        }
        Ok(Weight(rounded as u32))
    }

    pub fn basis_points(self) -> u32 {
        self.0
    }

    pub fn percent(self) -> f64 {
        f64::from(self.0) / 100.0
    }

    /// Share of new flows in 0..=1.
    pub fn ratio(self) -> f64 {
        f64::from(self.0) / f64::from(BUCKETS)
    }
}

impl fmt::Display for Weight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}%", self.percent())
    }
}

macro_rules! keyword_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub enum $name { $($(#[$vm])* #[serde(rename = $text)] $variant),+ }

        impl $name {
            /// Every keyword, for error messages.
            pub(crate) const CHOICES: &'static [&'static str] = &[$($text),+];

            /// The variant written `s` in the config file.
            pub(crate) fn parse(s: &str) -> Option<Self> {
                match s { $($text => Some(Self::$variant),)+ _ => None }
            }

            /// The keyword used in the config file.
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $text),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

keyword_enum!(
    /// How XDP attaches: `auto` tries native (driver) mode and falls back to generic.
    XdpMode { Auto = "auto", Native = "native", Skb = "skb" }
);
keyword_enum!(
    /// Transport protocol of a service.
    Protocol { Tcp = "tcp", Udp = "udp" }
);
keyword_enum!(
    /// What keeps a client on one backend: the flow (5-tuple) or the client address.
    Affinity { Flow = "flow", ClientIp = "client-ip" }
);
keyword_enum!(
    /// Backend group of a service.
    Group { Stable = "stable", Canary = "canary" }
);
keyword_enum!(
    /// On rollback: `drain` lets established canary flows finish; `reset` re-chooses them.
    RollbackMode { Drain = "drain", Reset = "reset" }
);
keyword_enum!(
    /// Whether a new rollout starts stepping by itself or waits for `canary resume`.
    StartMode { Auto = "auto", Paused = "paused" }
);
keyword_enum!(
    /// What to do while backend metrics are missing.
    MissingPolicy { Hold = "hold", Rollback = "rollback" }
);

#[allow(
    clippy::derivable_impls,
    reason = "the enum comes from keyword_enum!, which derives no Default"
)]
impl Default for Affinity {
    fn default() -> Self {
        Affinity::Flow
    }
}

impl Group {
    pub const BOTH: [Group; 2] = [Group::Stable, Group::Canary];

    /// Index used by the data plane (`GROUP_STABLE` / `GROUP_CANARY`).
    pub const fn index(self) -> u32 {
        match self {
            Group::Stable => GROUP_STABLE,
            Group::Canary => GROUP_CANARY,
        }
    }

    pub const fn from_index(index: u32) -> Option<Group> {
        match index {
            GROUP_STABLE => Some(Group::Stable),
            GROUP_CANARY => Some(Group::Canary),
            _ => None,
        }
    }

    #[must_use]
    pub const fn other(self) -> Group {
        match self {
            Group::Stable => Group::Canary,
            Group::Canary => Group::Stable,
        }
    }
}

impl Protocol {
    /// IP protocol number.
    pub const fn number(self) -> u8 {
        match self {
            Protocol::Tcp => PROTO_TCP,
            Protocol::Udp => PROTO_UDP,
        }
    }
}

/// A MAC address written `aa:bb:cc:dd:ee:ff` (six pairs of hex digits), as in the config
/// file and in `ip neigh` output.
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// A MAC address as `aa:bb:cc:dd:ee:ff` (what [`parse_mac`] reads).
pub fn format_mac(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_have_basis_point_resolution() {
        assert_eq!(Weight::from_percent(12.5).unwrap().basis_points(), 1250);
        assert_eq!(Weight::from_percent(0.29).unwrap().basis_points(), 29);
        assert_eq!(Weight::from_percent(100.0).unwrap(), Weight::FULL);
        assert_eq!(Weight::from_percent(0.0).unwrap(), Weight::ZERO);
        assert!(matches!(
            Weight::from_percent(0.125),
            Err(WeightError::TooFine(_))
        ));
        assert!(matches!(
            Weight::from_percent(100.5),
            Err(WeightError::OutOfRange(_))
        ));
        assert!(matches!(
            Weight::from_percent(f64::NAN),
            Err(WeightError::OutOfRange(_))
        ));
        assert_eq!(Weight::from_basis_points(20_000), Weight::FULL);
        assert!((Weight::from_basis_points(2500).ratio() - 0.25).abs() < 1e-12);
        assert_eq!(Weight::from_basis_points(1250).to_string(), "12.5%");
    }

    #[test]
    fn mac_syntax() {
        assert_eq!(format_mac([2, 0, 0xc6, 0x12, 0, 0x0b]), "02:00:c6:12:00:0b");
        assert_eq!(
            parse_mac(&format_mac([0xff, 1, 2, 3, 4, 5])),
            Some([0xff, 1, 2, 3, 4, 5])
        );
        assert_eq!(parse_mac("ff:00:01:02:03:04"), Some([0xff, 0, 1, 2, 3, 4]));
        assert_eq!(parse_mac("ff:00:01:02:03"), None);
        assert_eq!(parse_mac("ff:00:01:02:03:04:05"), None);
        assert_eq!(parse_mac("zz:00:01:02:03:04"), None);
        assert_eq!(parse_mac("f:00:01:02:03:04"), None);
    }
}
