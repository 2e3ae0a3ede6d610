//! The rollout document: what the leader decided for one service, which every node (leader
//! included) applies to its own maps.
//!
//! A document is JSON in the store. Its `version` is not part of the JSON: it is the store's
//! revision of the write (etcd's mod revision), so versions only grow and a node can tell a newer
//! document from one it already applied. The document also carries the [`ConfigFingerprint`] it
//! was decided for: a node whose own fingerprint differs would hash flows differently, so it
//! refuses to apply ([`may_apply`]) and keeps its last applied weight.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Format of the JSON; a node refuses documents of a newer format than it knows.
pub const DOCUMENT_FORMAT: u32 = 1;
/// The largest weight in basis points (100 %).
pub const MAX_WEIGHT_BP: u32 = 10_000;

/// Phase of a rollout: the controller's own (same names in documents and in `/status`).
pub use crate::rollout::Phase;

/// One signal's part in a decision, in words (the judge's full report stays with the leader).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignalReason {
    /// `errors`, `latency_mean`, `latency_p95`, `predictions`, ...
    pub signal: String,
    /// `pass`, `fail`, `inconclusive`, `missing`, ...
    pub verdict: String,
    /// Values and bound, e.g. "canary - stable = 0.004, upper bound 0.011 < 0.02".
    pub detail: String,
}

/// The last decision, as operators read it on any node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecisionRecord {
    /// Unix time, milliseconds.
    pub at_ms: u64,
    /// `start`, `step`, `promote`, `rollback`, `hold`, `pause`, `resume`, `set_weight`, `idle`.
    pub action: String,
    /// Why, in one short phrase (`judge`, `operator`, `error_spike`, ...).
    pub reason: String,
    pub from_bp: u32,
    pub to_bp: u32,
    /// In words.
    pub message: String,
    pub signals: Vec<SignalReason>,
}

/// What must be equal on every node for a flow to get the same group and backend on all of
/// them: the backends of each group (by name; the Maglev table depends only on the set of
/// names), the flow hash seed, the Maglev table size and the affinity (which fields of a
/// flow are hashed).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ConfigFingerprint {
    /// Sorted.
    pub stable: Vec<String>,
    /// Sorted.
    pub canary: Vec<String>,
    pub hash_seed: u32,
    pub maglev_size: u32,
    /// `flow` or `client-ip` (empty when not given).
    #[serde(default)]
    pub affinity: String,
}

/// The fingerprint of one service's data-plane config, from plain inputs (order of the names
/// does not matter).
pub fn fingerprint<S: AsRef<str>>(
    stable: &[S],
    canary: &[S],
    hash_seed: u32,
    maglev_size: u32,
) -> ConfigFingerprint {
    let sorted = |names: &[S]| {
        let mut v: Vec<String> = names.iter().map(|n| n.as_ref().to_string()).collect();
        v.sort();
        v
    };
    ConfigFingerprint {
        stable: sorted(stable),
        canary: sorted(canary),
        hash_seed,
        maglev_size,
        affinity: String::new(),
    }
}

impl ConfigFingerprint {
    /// The same fingerprint with the service's affinity.
    #[must_use]
    pub fn with_affinity(mut self, affinity: &str) -> Self {
        self.affinity = affinity.to_string();
        self
    }

    /// How `other` (the document's) differs from `self` (this node's), one phrase per
    /// difference; empty when equal.
    pub fn differences(&self, other: &ConfigFingerprint) -> Vec<String> {
        let mut out = Vec::new();
        for (group, mine, theirs) in [
            ("stable", &self.stable, &other.stable),
            ("canary", &self.canary, &other.canary),
        ] {
            let only_mine: Vec<&str> = mine
                .iter()
                .filter(|n| !theirs.contains(n))
                .map(String::as_str)
                .collect();
            let only_theirs: Vec<&str> = theirs
                .iter()
                .filter(|n| !mine.contains(n))
                .map(String::as_str)
                .collect();
            if !only_mine.is_empty() {
                out.push(format!(
                    "{group} backends only on this node: {}",
                    only_mine.join(", ")
                ));
            }
            if !only_theirs.is_empty() {
                out.push(format!(
                    "{group} backends only in the leader's config: {}",
                    only_theirs.join(", ")
                ));
            }
        }
        if self.hash_seed != other.hash_seed {
            out.push(format!(
                "hash_seed {} here, {} in the leader's config",
                self.hash_seed, other.hash_seed
            ));
        }
        if self.affinity != other.affinity {
            out.push(format!(
                "affinity {} here, {} in the leader's config",
                self.affinity, other.affinity
            ));
        }
        if self.maglev_size != other.maglev_size {
            out.push(format!(
                "Maglev table size {} here, {} in the leader's config",
                self.maglev_size, other.maglev_size
            ));
        }
        out
    }
}

/// One service's rollout as decided by the leader.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RolloutDocument {
    pub format: u32,
    pub service: String,
    pub phase: Phase,
    /// Index of the current step in the service's `steps` (0 before the first step).
    pub step: u32,
    /// Canary weight in basis points (0..=10000) for new flows.
    pub weight_bp: u32,
    /// Incremented by each `reset` rollback. Every node that sees it grow sets its own
    /// kernel reset epoch to its own clock's now (the kernel's epoch is a local
    /// `CLOCK_MONOTONIC` time and means nothing on another node).
    pub reset_epoch: u64,
    pub paused: bool,
    pub last_decision: Option<DecisionRecord>,
    /// The config this was decided for.
    pub fingerprint: ConfigFingerprint,
    /// Node that wrote it.
    pub decided_by: String,
    /// Unix time of the write, milliseconds.
    pub decided_at_ms: u64,
    /// The deciding side's resumable state (opaque to the applying side): a new leader
    /// continues from it at the same step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout_state: Option<serde_json::Value>,
    /// The store's revision of this write (etcd's mod revision); 0 before it was stored.
    #[serde(skip)]
    pub version: u64,
}

/// Whether a node may apply a document, and if not, why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApplyCheck {
    /// Newer than what is applied, and decided for the same config: write the maps.
    Apply,
    /// Already applied (or older): nothing to do.
    NotNewer { applied: u64, offered: u64 },
    /// Decided for a different config: refuse, keep the last applied weight, say so.
    ConfigMismatch { differences: Vec<String> },
    /// Not usable at all (another service's, a newer format, a weight out of range).
    Invalid { problem: String },
}

impl fmt::Display for ApplyCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApplyCheck::Apply => f.write_str("apply"),
            ApplyCheck::NotNewer { applied, offered } => write!(
                f,
                "document version {offered} is not newer than the applied version {applied}"
            ),
            ApplyCheck::ConfigMismatch { differences } => write!(
                f,
                "config differs from the leader's ({}); not applied, the last applied weight stays; make the config the same on every node sharing the prefix",
                differences.join("; ")
            ),
            ApplyCheck::Invalid { problem } => write!(f, "document refused: {problem}"),
        }
    }
}

/// May a node whose config has fingerprint `local` for `service`, and which last applied
/// version `applied` (if any), apply `document`? Pure.
pub fn may_apply(
    document: &RolloutDocument,
    service: &str,
    local: &ConfigFingerprint,
    applied: Option<u64>,
) -> ApplyCheck {
    if document.service != service {
        return ApplyCheck::Invalid {
            problem: format!("it is service {}'s, not {service}'s", document.service),
        };
    }
    if document.format > DOCUMENT_FORMAT {
        return ApplyCheck::Invalid {
            problem: format!(
                "format {} is newer than this node's {DOCUMENT_FORMAT}; upgrade this node",
                document.format
            ),
        };
    }
    if document.weight_bp > MAX_WEIGHT_BP {
        return ApplyCheck::Invalid {
            problem: format!(
                "weight {} basis points is above {MAX_WEIGHT_BP}",
                document.weight_bp
            ),
        };
    }
    if let Some(applied) = applied {
        if document.version <= applied {
            return ApplyCheck::NotNewer {
                applied,
                offered: document.version,
            };
        }
    }
    let differences = local.differences(&document.fingerprint);
    if differences.is_empty() {
        ApplyCheck::Apply
    } else {
        ApplyCheck::ConfigMismatch { differences }
    }
}

impl RolloutDocument {
    /// The JSON stored for this document (without `version`).
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a document always serialises")
    }

    /// Reads a stored document; `version` is the store's revision of the write.
    pub fn from_json(bytes: &[u8], version: u64) -> Result<Self, serde_json::Error> {
        let mut document: RolloutDocument = serde_json::from_slice(bytes)?;
        document.version = version;
        Ok(document)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample(service: &str) -> RolloutDocument {
        RolloutDocument {
            format: DOCUMENT_FORMAT,
            service: service.into(),
            phase: Phase::Stepping,
            step: 1,
            weight_bp: 2_500,
            reset_epoch: 0,
            paused: false,
            last_decision: Some(DecisionRecord {
                at_ms: 1_700_000_000_000,
                action: "step".into(),
                reason: "judge".into(),
                from_bp: 1_000,
                to_bp: 2_500,
                message: "every signal passed".into(),
                signals: vec![SignalReason {
                    signal: "errors".into(),
                    verdict: "pass".into(),
                    detail: "upper bound 0.004 < 0.02".into(),
                }],
            }),
            fingerprint: fingerprint(&["v1-b", "v1-a"], &["v2-a"], 7, 16_381),
            decided_by: "lb-1".into(),
            decided_at_ms: 1_700_000_000_000,
            rollout_state: None,
            version: 0,
        }
    }

    #[test]
    fn fingerprint_ignores_name_order() {
        assert_eq!(
            fingerprint(&["b", "a"], &["c"], 1, 13),
            fingerprint(&["a", "b"], &["c"], 1, 13)
        );
        assert_ne!(
            fingerprint(&["a", "b"], &["c"], 1, 13),
            fingerprint(&["a"], &["b", "c"], 1, 13),
            "moving a backend to the other group changes the fingerprint"
        );
    }

    #[test]
    fn json_round_trip_leaves_the_version_to_the_store() {
        let mut doc = sample("sentiment");
        doc.version = 99;
        doc.rollout_state = Some(serde_json::json!({"looks": 3}));
        let json = doc.to_json();
        let text = String::from_utf8(json.clone()).unwrap();
        assert!(!text.contains("\"version\""), "{text}");
        assert!(text.contains("\"phase\":\"stepping\""), "{text}");
        let back = RolloutDocument::from_json(&json, 42).unwrap();
        assert_eq!(back.version, 42);
        assert_eq!(
            RolloutDocument {
                version: 99,
                ..back
            },
            doc
        );
    }

    #[test]
    fn apply_when_newer_and_same_config() {
        let mut doc = sample("s");
        doc.version = 10;
        let local = fingerprint(&["v1-a", "v1-b"], &["v2-a"], 7, 16_381);
        assert_eq!(may_apply(&doc, "s", &local, None), ApplyCheck::Apply);
        assert_eq!(may_apply(&doc, "s", &local, Some(9)), ApplyCheck::Apply);
        assert_eq!(
            may_apply(&doc, "s", &local, Some(10)),
            ApplyCheck::NotNewer {
                applied: 10,
                offered: 10
            }
        );
        assert!(matches!(
            may_apply(&doc, "s", &local, Some(11)),
            ApplyCheck::NotNewer { .. }
        ));
    }

    #[test]
    fn config_mismatch_names_every_difference() {
        let mut doc = sample("s");
        doc.version = 10;
        let local = fingerprint(&["v1-a", "v1-c"], &["v2-a"], 8, 16_381);
        let check = may_apply(&doc, "s", &local, Some(3));
        let ApplyCheck::ConfigMismatch { differences } = &check else {
            panic!("expected a mismatch, got {check:?}");
        };
        assert_eq!(
            differences,
            &vec![
                "stable backends only on this node: v1-c".to_string(),
                "stable backends only in the leader's config: v1-b".to_string(),
                "hash_seed 8 here, 7 in the leader's config".to_string(),
            ]
        );
        assert!(check.to_string().contains("the last applied weight stays"));
    }

    #[test]
    fn invalid_documents_are_refused() {
        let local = sample("s").fingerprint;
        let mut doc = sample("s");
        doc.version = 5;
        assert!(matches!(
            may_apply(&doc, "other", &local, None),
            ApplyCheck::Invalid { .. }
        ));
        doc.weight_bp = 10_001;
        assert!(matches!(
            may_apply(&doc, "s", &local, None),
            ApplyCheck::Invalid { .. }
        ));
        doc.weight_bp = 10_000;
        doc.format = DOCUMENT_FORMAT + 1;
        assert!(may_apply(&doc, "s", &local, None)
            .to_string()
            .contains("upgrade this node"));
    }
}
