//! Running `ip`, `ethtool`, `sysctl`, `mount` and reading what exists.

use std::collections::HashSet;
use std::path::Path;
use std::process::{Command, Output};

use super::LabError;

fn describe(program: &str, args: &[&str]) -> String {
    std::iter::once(program)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ")
}

/// A lab path as a command argument.
pub(super) fn path_str(p: &Path) -> &str {
    p.to_str().expect("lab paths are UTF-8")
}

/// Run a command; fail with its stderr when it exits non-zero.
pub(super) fn run(program: &str, args: &[&str]) -> Result<String, LabError> {
    stdout_of(describe(program, args), &output(program, args)?)
}

/// The stdout of a finished `command`, or its exit status and stderr when it failed.
pub(super) fn stdout_of(command: String, out: &Output) -> Result<String, LabError> {
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(LabError::Command {
            command,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

/// Run a command and return its output whatever its exit status.
pub(super) fn output(program: &str, args: &[&str]) -> Result<Output, LabError> {
    Command::new(program)
        .args(args)
        .output()
        .map_err(|source| LabError::Spawn {
            command: describe(program, args),
            source,
        })
}

/// Names of the network namespaces that exist (`ip netns list`).
pub(super) fn netns_list() -> Result<HashSet<String>, LabError> {
    let out = run("ip", &["netns", "list"])?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect())
}

/// Names of the links in the host namespace.
pub(super) fn host_links() -> Result<HashSet<String>, LabError> {
    Ok(std::fs::read_dir("/sys/class/net")
        .map_err(|source| LabError::Io {
            what: "list /sys/class/net".into(),
            source,
        })?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect())
}

pub(super) fn host_link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// Links inside a namespace.
pub(super) fn netns_links(netns: &str) -> Result<HashSet<String>, LabError> {
    let out = run("ip", &["-n", netns, "-o", "link", "show"])?;
    // `2: eth0@if5: <...` -> `eth0`
    Ok(out
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_owned())
        .collect())
}

/// Mount points at or below `dir` in this process's mount namespace.
pub(super) fn mounts_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    info.lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .map(|p| std::path::PathBuf::from(unescape_mount_path(p)))
        .filter(|p| p.starts_with(dir))
        .collect()
}

/// `/proc/self/mountinfo` escapes space, tab, newline and backslash as octal.
fn unescape_mount_path(p: &str) -> String {
    p.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// Write a sysctl of the host namespace directly (`net.ipv6.conf.X.disable_ipv6` style key).
pub(super) fn host_sysctl(key: &str, value: &str) -> Result<(), LabError> {
    let path = Path::new("/proc/sys").join(key.replace('.', "/"));
    std::fs::write(&path, value).map_err(|source| LabError::Io {
        what: format!("write {}", path.display()),
        source,
    })
}

/// Start time of a process in clock ticks since boot (field 22 of `/proc/PID/stat`); tells a
/// process apart from a later one that reuses its PID.
pub(super) fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: fields resume after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether a process with this PID and start time is still alive (and not a zombie).
pub(super) fn process_alive(pid: u32, start_time: u64) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let zombie = stat
        .rfind(')')
        .and_then(|i| stat.get(i + 2..i + 3))
        .is_some_and(|s| s == "Z");
    !zombie && process_start_time(pid) == Some(start_time)
}

/// Send a signal to one process by PID.
pub(super) fn signal(pid: u32, sig: i32) {
    let Ok(pid) = i32::try_from(pid) else { return };
    // SAFETY: kill(2) with a positive PID signals only that process; errors (ESRCH) are ignored
    // because the process may already be gone.
    unsafe {
        libc::kill(pid, sig);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_start_time_is_readable() {
        let me = std::process::id();
        let t = process_start_time(me).expect("own /proc stat");
        assert!(process_alive(me, t));
        assert!(!process_alive(me, t + 1));
    }

    #[test]
    fn mount_paths_are_unescaped() {
        assert_eq!(unescape_mount_path("/run/a\\040b"), "/run/a b");
    }
}
