//! One daemon per data plane: an exclusive `flock` on `state_dir/canary.lock` and on the pin
//! directory itself, both taken before the data plane is opened and held until the process
//! exits (the kernel drops them even after `kill -9`). A second `canary run` on the same
//! state directory or pins, and `canary detach` while a daemon runs, stop with the PID of
//! the process holding the lock.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{self, Seek as _, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

/// Name of the lock file in `state_dir` (it also holds the PID of the daemon).
pub const LOCK_FILE: &str = "canary.lock";

/// Locks held; released when dropped or when the process exits.
#[derive(Debug)]
pub struct DaemonLock {
    /// Open only to hold the locks.
    held: Vec<File>,
}

/// Why a lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds it.
    #[error("{path} is locked by another canary process{}: only one daemon may drive a state directory and a data plane. Stop that process first (`kill {}`), or give this one its own dataplane.state_dir, dataplane.bpffs and interface", holder.map(|p| format!(" (PID {p})")).unwrap_or_default(), holder.map_or_else(|| "<pid>".to_string(), |p| p.to_string()))]
    Held { path: PathBuf, holder: Option<u32> },
    /// The lock file or directory could not be opened.
    #[error("cannot lock {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl DaemonLock {
    /// Locks `state_dir` (creating it, mode 0700, and its lock file, mode 0600) and the pin
    /// directory `bpffs` (which must exist). Writes this process's PID into the lock file.
    pub fn acquire(state_dir: &Path, bpffs: &Path) -> Result<DaemonLock, LockError> {
        let path = state_dir.join(LOCK_FILE);
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| LockError::Io { path, source }
        };
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(state_dir)
            .map_err(io(state_dir))?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .map_err(io(&path))?;
        lock(&file, &path)?;
        file.set_len(0).map_err(io(&path))?;
        file.rewind().map_err(io(&path))?;
        writeln!(file, "{}", std::process::id()).map_err(io(&path))?;
        let pins = Self::pins(bpffs)?;
        let mut held = pins.held;
        held.push(file);
        Ok(DaemonLock { held })
    }

    /// Locks only the pin directory (for `canary detach`).
    pub fn pins(bpffs: &Path) -> Result<DaemonLock, LockError> {
        // A directory can be flocked like a file; a bpffs holds no regular files.
        let dir = File::open(bpffs).map_err(|source| LockError::Io {
            path: bpffs.to_owned(),
            source,
        })?;
        lock(&dir, bpffs)?;
        Ok(DaemonLock { held: vec![dir] })
    }
}

fn lock(file: &File, path: &Path) -> Result<(), LockError> {
    match file.try_lock() {
        Ok(()) => Ok(()),
        Err(std::fs::TryLockError::WouldBlock) => Err(LockError::Held {
            path: path.to_owned(),
            holder: holder(file, path),
        }),
        Err(std::fs::TryLockError::Error(source)) => Err(LockError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

/// The PID holding the lock: from `/proc/locks` (by device and inode), else the PID written
/// in a lock file.
fn holder(file: &File, path: &Path) -> Option<u32> {
    let meta = file.metadata().ok()?;
    let dev = meta.dev();
    let from_proc = std::fs::read_to_string("/proc/locks")
        .ok()
        .and_then(|text| {
            holder_in_proc_locks(&text, libc::major(dev), libc::minor(dev), meta.ino())
        });
    from_proc.or_else(|| {
        meta.is_file()
            .then(|| std::fs::read_to_string(path).ok())
            .flatten()
            .and_then(|t| t.trim().parse().ok())
    })
}

/// Finds the PID of the `FLOCK` on `major:minor:inode` in the text of `/proc/locks`
/// (`1: FLOCK  ADVISORY  WRITE 1234 00:1f:5678 0 EOF`; waiters, marked `->`, are skipped).
pub fn holder_in_proc_locks(text: &str, major: u32, minor: u32, inode: u64) -> Option<u32> {
    text.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.get(1) != Some(&"FLOCK") {
            return None;
        }
        let pid = fields.get(4)?.parse().ok()?;
        let mut id = fields.get(5)?.split(':');
        let maj = u32::from_str_radix(id.next()?, 16).ok()?;
        let min = u32::from_str_radix(id.next()?, 16).ok()?;
        let ino: u64 = id.next()?.parse().ok()?;
        (maj == major && min == minor && ino == inode).then_some(pid)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_locks_lines_are_matched_by_device_and_inode() {
        let text = "1: POSIX  ADVISORY  WRITE 10 00:1f:77 0 EOF\n\
                    2: FLOCK  ADVISORY  WRITE 4242 fd:01:77 0 EOF\n\
                    2: -> FLOCK  ADVISORY  WRITE 5151 fd:01:77 0 EOF\n\
                    3: FLOCK  ADVISORY  WRITE 99 00:1f:77 0 EOF\n";
        assert_eq!(holder_in_proc_locks(text, 0xfd, 1, 77), Some(4242));
        assert_eq!(holder_in_proc_locks(text, 0, 0x1f, 77), Some(99));
        assert_eq!(holder_in_proc_locks(text, 0, 0x1f, 78), None);
    }

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_pid() {
        let base = std::env::temp_dir().join(format!("canary-lock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let state = base.join("state");
        let pins = base.join("pins");
        std::fs::create_dir_all(&pins).unwrap();
        let first = DaemonLock::acquire(&state, &pins).unwrap();
        let pid = std::process::id().to_string();
        assert_eq!(
            std::fs::read_to_string(state.join(LOCK_FILE))
                .unwrap()
                .trim(),
            pid
        );
        // flock locks belong to the open file description: a second open conflicts even in
        // the same process, as a second daemon would.
        let e = DaemonLock::acquire(&state, &pins).unwrap_err();
        let text = e.to_string();
        assert!(
            matches!(e, LockError::Held { holder: Some(p), .. } if p == std::process::id()),
            "{text}"
        );
        assert!(text.contains(&format!("PID {pid}")), "{text}");
        assert!(text.contains("canary.lock"), "{text}");
        // Another state directory on the same pins is refused too.
        let e = DaemonLock::acquire(&base.join("other"), &pins).unwrap_err();
        assert!(e.to_string().contains(&pins.display().to_string()), "{e}");
        let e = DaemonLock::pins(&pins).unwrap_err();
        assert!(matches!(e, LockError::Held { .. }), "{e}");
        drop(first);
        let again = DaemonLock::acquire(&state, &pins).unwrap();
        drop(again);
        std::fs::remove_dir_all(&base).unwrap();
    }
}
