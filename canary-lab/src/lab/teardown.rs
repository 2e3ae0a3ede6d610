//! Tearing a lab down: its processes (by PID), pins, mounts, links, namespaces and state dir,
//! from its record and from anything with its name prefix; and what is left behind.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::PoisonError;
use std::time::{Duration, Instant};

use super::cmd::{self, path_str};
use super::record::LabRecord;
use super::{ensure_root, process, Lab, LabError, LabSpec, ProcessRecord, NAME_PREFIX, STATE_ROOT};

impl Lab {
    /// Tear down now (also what dropping does).
    pub fn down(mut self) -> Result<(), LabError> {
        self.teardown_on_drop = false;
        Self::down_tag(self.tag())
    }

    /// Remove the lab `tag`: its processes, pins, mounts, links, namespaces and state dir.
    /// Removing a lab that does not exist is fine. Fails listing anything left behind.
    pub fn down_tag(tag: &str) -> Result<(), LabError> {
        ensure_root()?;
        let spec = LabSpec::new(tag);
        spec.validate()?;
        let state_dir = Path::new(STATE_ROOT).join(tag);
        let prefix = format!("{NAME_PREFIX}{tag}-");
        let record = LabRecord::load(&state_dir).ok().flatten();
        let mut errors = Vec::new();

        // 1. Processes the lab started, by PID (checked against their start time).
        let procs: Vec<ProcessRecord> = record
            .as_ref()
            .map(|r| {
                r.processes
                    .iter()
                    .filter(|p| p.is_running())
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        for p in &procs {
            cmd::signal(p.pid, libc::SIGTERM);
        }
        wait_until(Duration::from_secs(3), || {
            procs.iter().all(|p| !p.is_running())
        });
        for p in procs.iter().filter(|p| p.is_running()) {
            cmd::signal(p.pid, libc::SIGKILL);
        }

        // Namespaces: the recorded ones plus any with the lab's prefix (a crash before saving).
        let mut namespaces: BTreeSet<String> = record
            .as_ref()
            .map(|r| r.namespaces.clone())
            .unwrap_or_default();
        if let Ok(all) = cmd::netns_list() {
            namespaces.extend(all.into_iter().filter(|n| n.starts_with(&prefix)));
        }
        let existing_ns = cmd::netns_list().unwrap_or_default();
        // 2. Anything still running inside the lab's namespaces was started through the lab.
        let mut stragglers = Vec::new();
        for ns in namespaces.iter().filter(|n| existing_ns.contains(*n)) {
            if let Ok(out) = cmd::run("ip", &["netns", "pids", ns]) {
                stragglers.extend(out.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
            }
        }
        for &pid in &stragglers {
            cmd::signal(pid, libc::SIGKILL);
        }
        wait_until(Duration::from_secs(3), || {
            stragglers
                .iter()
                .all(|pid| !Path::new(&format!("/proc/{pid}")).exists() || is_zombie(*pid))
        });

        // 3. Pins and mounts.
        if let Some(r) = &record {
            for pin in &r.pins {
                let _ = std::fs::remove_file(pin);
            }
        }
        let mut mounts = cmd::mounts_under(&state_dir);
        // Deepest first.
        mounts.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
        for m in mounts {
            let p = path_str(&m);
            if cmd::run("umount", &[p]).is_err() {
                if let Err(e) = cmd::run("umount", &["-l", p]) {
                    errors.push(e.to_string());
                }
            }
        }

        // 4. Links in the host namespace (deleting one veth end deletes both).
        let mut links: BTreeSet<String> =
            record.as_ref().map(|r| r.links.clone()).unwrap_or_default();
        if let Ok(all) = cmd::host_links() {
            links.extend(all.into_iter().filter(|l| l.starts_with(&prefix)));
        }
        for l in &links {
            if cmd::host_link_exists(l) {
                if let Err(e) = cmd::run("ip", &["link", "del", l]) {
                    errors.push(e.to_string());
                }
            }
        }

        // 5. Namespaces.
        for ns in namespaces.iter().filter(|n| existing_ns.contains(*n)) {
            if let Err(e) = cmd::run("ip", &["netns", "del", ns]) {
                errors.push(e.to_string());
            }
        }

        // 6. State dir (record, logs, bpffs mount point).
        if state_dir.exists() {
            if let Err(e) = std::fs::remove_dir_all(&state_dir) {
                errors.push(format!("remove {}: {e}", state_dir.display()));
            }
        }
        // The shared parent goes when the last lab is gone; failing because another exists is fine.
        let _ = std::fs::remove_dir(STATE_ROOT);

        let mut left = leftovers(tag);
        left.extend(errors);
        if left.is_empty() {
            Ok(())
        } else {
            Err(LabError::Leftovers(left))
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if !self.teardown_on_drop {
            return;
        }
        if std::thread::panicking() {
            // The logs go with the lab: show the end of each before removing them.
            let record = self.record.lock().unwrap_or_else(PoisonError::into_inner);
            for p in &record.processes {
                let text = std::fs::read_to_string(&p.log).unwrap_or_default();
                eprintln!(
                    "--- {} (pid {}) log tail ---\n{}",
                    p.command,
                    p.pid,
                    process::tail(&text, 30)
                );
            }
        }
        if let Err(e) = Self::down_tag(self.tag()) {
            eprintln!("lab `{}` teardown: {e}", self.tag());
        }
    }
}

/// Everything of lab `tag` that exists: namespaces, host links, mounts and the state dir.
pub fn leftovers(tag: &str) -> Vec<String> {
    let prefix = format!("{NAME_PREFIX}{tag}-");
    let state_dir = Path::new(STATE_ROOT).join(tag);
    let mut left = Vec::new();
    if let Ok(all) = cmd::netns_list() {
        left.extend(
            all.into_iter()
                .filter(|n| n.starts_with(&prefix))
                .map(|n| format!("namespace {n}")),
        );
    }
    if let Ok(all) = cmd::host_links() {
        left.extend(
            all.into_iter()
                .filter(|l| l.starts_with(&prefix))
                .map(|l| format!("link {l}")),
        );
    }
    left.extend(
        cmd::mounts_under(&state_dir)
            .into_iter()
            .map(|m| format!("mount {}", m.display())),
    );
    if state_dir.exists() {
        left.push(format!("directory {}", state_dir.display()));
    }
    left.sort();
    left
}

fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rfind(')')
                .and_then(|i| s.get(i + 2..i + 3))
                .map(|c| c == "Z")
        })
        .unwrap_or(false)
}
