//! Processes started inside a lab namespace.

use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::cmd;
use super::LabError;

/// A process the lab started, as written in the lab record (so `down` can end it by PID).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessRecord {
    pub pid: u32,
    /// Start time in clock ticks since boot: a later process reusing the PID is left alone.
    pub start_time: u64,
    pub netns: String,
    pub command: String,
    pub log: PathBuf,
}

impl ProcessRecord {
    pub fn is_running(&self) -> bool {
        cmd::process_alive(self.pid, self.start_time)
    }
}

/// A process running in a lab namespace; killed (by PID) when dropped unless detached.
#[derive(Debug)]
pub struct LabProcess {
    child: Option<Child>,
    record: ProcessRecord,
}

impl LabProcess {
    pub(super) fn new(child: Child, record: ProcessRecord) -> Self {
        Self {
            child: Some(child),
            record,
        }
    }

    pub fn pid(&self) -> u32 {
        self.record.pid
    }

    pub fn netns(&self) -> &str {
        &self.record.netns
    }

    /// File receiving the process's stdout and stderr.
    pub fn log_path(&self) -> &Path {
        &self.record.log
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.record.log).unwrap_or_default()
    }

    pub fn record(&self) -> &ProcessRecord {
        &self.record
    }

    /// Exit status if it has exited (reaps it).
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => self.record.is_running(),
        }
    }

    /// Send a signal (for example `libc::SIGTERM`) without waiting.
    pub fn signal(&self, sig: i32) {
        if self.record.is_running() {
            cmd::signal(self.record.pid, sig);
        }
    }

    /// `SIGKILL` and reap.
    pub fn kill(&mut self) -> Option<ExitStatus> {
        self.signal(libc::SIGKILL);
        self.child.as_mut().and_then(|c| c.wait().ok())
    }

    /// `SIGTERM`, wait up to `grace`, then `SIGKILL`.
    pub fn terminate(&mut self, grace: Duration) -> Option<ExitStatus> {
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill()
    }

    /// Wait until the log contains `needle`; fails if the process exits first or on timeout.
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> Result<(), LabError> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log_text().contains(needle) {
                return Ok(());
            }
            if let Some(status) = self.try_wait() {
                return Err(LabError::ProcessExited {
                    command: self.record.command.clone(),
                    status: status.to_string(),
                    log_tail: self.log_tail(20),
                });
            }
            if Instant::now() >= deadline {
                return Err(LabError::Timeout {
                    what: format!("`{needle}` in the log of `{}`", self.record.command),
                    log_tail: self.log_tail(20),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log_text(), lines)
    }

    /// Leave the process running after this handle is dropped (the lab's `down` still ends it).
    pub fn detach(mut self) -> u32 {
        self.child = None;
        self.record.pid
    }
}

impl Drop for LabProcess {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.kill();
        }
    }
}

pub(super) fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
