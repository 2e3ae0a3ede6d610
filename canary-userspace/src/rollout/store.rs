//! Where each service's rollout is persisted, so a restart resumes the same phase, step and
//! weight.

use std::path::{Path, PathBuf};

use super::Rollout;

/// Where rollout state is persisted.
#[derive(Clone, Debug)]
pub struct StateStore {
    dir: PathBuf,
}

impl StateStore {
    pub fn new(dir: &Path) -> Self {
        StateStore {
            dir: dir.to_path_buf(),
        }
    }

    fn path(&self, service: &str) -> PathBuf {
        self.dir.join(format!("rollout-{service}.json"))
    }

    /// The persisted rollout of a service, if any.
    pub fn load(&self, service: &str) -> Result<Option<Rollout>, String> {
        let path = self.path(service);
        match std::fs::read_to_string(&path) {
            Ok(text) => Rollout::from_json(&text)
                .map(Some)
                .map_err(|e| format!("{}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }

    /// Write atomically (temporary file, then rename), so a crash never leaves half a file.
    pub fn save(&self, service: &str, rollout: &Rollout) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let path = self.path(service);
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, rollout.to_json())?;
        std::fs::rename(&tmp, &path)
    }
}
