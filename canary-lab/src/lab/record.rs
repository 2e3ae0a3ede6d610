//! The on-disk record of what a lab created (`/run/canary-lab/<tag>/lab.json`), written before
//! each creation so teardown removes exactly that, even after a crash.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{LabError, LabPlan, ProcessRecord};

/// What a lab created; written before each creation.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LabRecord {
    pub plan: LabPlan,
    pub namespaces: BTreeSet<String>,
    /// Host-namespace links (bridge and bridge-side veths).
    pub links: BTreeSet<String>,
    pub mounts: BTreeSet<PathBuf>,
    pub pins: BTreeSet<PathBuf>,
    pub processes: Vec<ProcessRecord>,
}

impl LabRecord {
    pub(super) fn new(plan: LabPlan) -> Self {
        Self {
            plan,
            namespaces: BTreeSet::new(),
            links: BTreeSet::new(),
            mounts: BTreeSet::new(),
            pins: BTreeSet::new(),
            processes: Vec::new(),
        }
    }

    fn path(state_dir: &Path) -> PathBuf {
        state_dir.join("lab.json")
    }

    pub(super) fn load(state_dir: &Path) -> Result<Option<Self>, LabError> {
        let path = Self::path(state_dir);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| LabError::Record { path, source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(LabError::Io {
                what: format!("read {}", path.display()),
                source,
            }),
        }
    }

    pub(super) fn save(&self) -> Result<(), LabError> {
        let path = Self::path(&self.plan.state_dir);
        let tmp = path.with_extension("json.tmp");
        let io = |what: String| move |source| LabError::Io { what, source };
        std::fs::write(
            &tmp,
            serde_json::to_vec_pretty(self).expect("record serialises"),
        )
        .map_err(io(format!("write {}", tmp.display())))?;
        std::fs::rename(&tmp, &path).map_err(io(format!("write {}", path.display())))
    }
}
