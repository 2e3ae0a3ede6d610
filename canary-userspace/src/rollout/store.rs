//! Where each service's rollout is persisted, so a restart resumes the same phase, step and
//! weight.
//!
//! A write survives a crash and a power loss: the state goes to a new temporary file (created
//! with `O_EXCL | O_NOFOLLOW`, a name no other writer uses), is flushed to disk, renamed over the
//! state file, and the directory is flushed so the rename itself is durable. Readers therefore
//! see the old state or the new one, never a mix or an empty file. Symbolic links are never
//! followed: a link at the temporary path makes the create fail, a link at the state path is
//! replaced by the rename (its target is untouched), and reading refuses a link.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{self, Read as _, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::Rollout;

/// Where rollout state is persisted.
#[derive(Clone, Debug)]
pub struct StateStore {
    dir: PathBuf,
}

/// Distinguishes the temporary files of one process.
static TEMP_SEQUENCE: AtomicU64 = AtomicU64::new(0);

impl StateStore {
    pub fn new(dir: &Path) -> Self {
        StateStore {
            dir: dir.to_path_buf(),
        }
    }

    /// The state file of a service.
    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn path(&self, service: &str) -> PathBuf {
        self.dir.join(format!("rollout-{service}.json"))
    }

    /// The persisted rollout of a service, if any; state that parses but cannot be right (a
    /// weight above 100 %, a weight the phase cannot have) is an error naming the file and
    /// the field.
    pub fn load(&self, service: &str) -> Result<Option<Rollout>, String> {
        let path = self.path(service);
        let text = match read_no_follow(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                return Err(format!(
                    "{} is a symbolic link; state files are never read through links: remove it and restart",
                    path.display()
                ))
            }
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        let rollout = Rollout::from_json(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        rollout
            .validate()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Some(rollout))
    }

    /// Writes durably and atomically (see the module documentation).
    pub fn save(&self, service: &str, rollout: &Rollout) -> io::Result<()> {
        write_durably(&self.dir, &self.path(service), rollout.to_json().as_bytes())
    }
}

fn read_no_follow(path: &Path) -> io::Result<String> {
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    let mut text = String::new();
    file.read_to_string(&mut text)?;
    Ok(text)
}

/// Replaces `path` (in `dir`) with `bytes`: a fresh temporary file (mode 0600, `O_EXCL |
/// O_NOFOLLOW`), fsync, rename, fsync of the directory. `dir` is created (mode 0700) if
/// missing. A crash at any point leaves either the old content or the new one.
pub fn write_durably(dir: &Path, path: &Path, bytes: &[u8]) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::other("the state path has no file name"))?
        .to_string_lossy()
        .into_owned();
    let (tmp, mut file) = create_temporary(dir, &name)?;
    let written = file
        .write_all(bytes)
        .and_then(|()| file.sync_all())
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    File::open(dir)?.sync_all()
}

/// A new temporary file beside the target, with a name no other writer uses (PID, a
/// per-process sequence and the clock); an existing file or link of that name is never
/// opened.
fn create_temporary(dir: &Path, name: &str) -> io::Result<(PathBuf, File)> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let mut last = None;
    for _ in 0..16 {
        let n = TEMP_SEQUENCE.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(".{name}.{}-{n}-{nanos}.tmp", std::process::id()));
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)
        {
            Ok(file) => return Ok((tmp, file)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no free temporary name")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RolloutConfig;
    use std::os::unix::fs::PermissionsExt as _;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("canary-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn rollout() -> Rollout {
        Rollout::new(5, vec!["k0@198.18.0.31".into()], &RolloutConfig::default()).0
    }

    #[test]
    fn saves_read_back_and_leave_no_temporary_files() {
        let d = dir("roundtrip");
        let store = StateStore::new(&d);
        let r = rollout();
        store.save("svc", &r).unwrap();
        store.save("svc", &r).unwrap();
        assert_eq!(store.load("svc").unwrap(), Some(r));
        let names: Vec<String> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["rollout-svc.json".to_string()]);
        let mode = std::fs::metadata(store.path("svc"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(store.load("other").unwrap(), None);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_link_at_the_state_path_is_replaced_not_followed() {
        let d = dir("link");
        std::fs::create_dir_all(&d).unwrap();
        let victim = d.join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let store = StateStore::new(&d);
        std::os::unix::fs::symlink(&victim, store.path("svc")).unwrap();
        // A link planted at a predictable temporary name is not written through either.
        std::os::unix::fs::symlink(&victim, d.join("rollout-svc.json.tmp")).unwrap();
        // Reading through the link is refused, with the fix.
        let e = store.load("svc").unwrap_err();
        assert!(
            e.contains("symbolic link") && e.contains("remove it"),
            "{e}"
        );
        // Writing replaces the link itself; its target is untouched.
        store.save("svc", &rollout()).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        let meta = std::fs::symlink_metadata(store.path("svc")).unwrap();
        assert!(meta.file_type().is_file());
        assert!(store.load("svc").unwrap().is_some());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn temporary_names_are_unique() {
        let d = dir("tmp");
        std::fs::create_dir_all(&d).unwrap();
        let (a, _fa) = create_temporary(&d, "x").unwrap();
        let (b, _fb) = create_temporary(&d, "x").unwrap();
        assert_ne!(a, b);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
