//! Running commands inside a lab's namespaces: one-shot, or started, logged and recorded so
//! teardown ends them; and the model server on every backend.

use std::ffi::OsStr;
use std::fs::File;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use super::error::io_err;
use super::{cmd, Lab, LabError, LabProcess, Node, ProcessRecord, Role, SERVICE_PORT};
use crate::server::ModelServer;

impl Lab {
    fn check_netns(&self, netns: &str) -> Result<(), LabError> {
        self.node(netns).map(drop)
    }

    /// A `Command` that runs `argv` inside `netns` (`ip netns exec`). Not recorded: prefer
    /// `spawn_in` for anything long-running.
    pub fn command_in<S: AsRef<OsStr>>(
        &self,
        netns: &str,
        argv: &[S],
    ) -> Result<Command, LabError> {
        self.check_netns(netns)?;
        let mut c = Command::new("ip");
        c.args(["netns", "exec", netns]);
        c.args(argv);
        Ok(c)
    }

    /// Run `argv` in `netns` to completion; fails on a non-zero exit. Returns stdout.
    pub fn exec_in<S: AsRef<OsStr>>(&self, netns: &str, argv: &[S]) -> Result<String, LabError> {
        cmd::stdout_of(describe_argv(netns, argv), &self.output_in(netns, argv)?)
    }

    /// Run `argv` in `netns` to completion, whatever its exit status.
    pub fn output_in<S: AsRef<OsStr>>(&self, netns: &str, argv: &[S]) -> Result<Output, LabError> {
        self.command_in(netns, argv)?
            .output()
            .map_err(|source| LabError::Spawn {
                command: describe_argv(netns, argv),
                source,
            })
    }

    /// Start `argv` in `netns`, stdout and stderr to a log file in the lab's state dir. The
    /// process is recorded (so `down` ends it) and killed when the handle drops.
    pub fn spawn_in<S: AsRef<OsStr>>(
        &self,
        netns: &str,
        argv: &[S],
    ) -> Result<LabProcess, LabError> {
        self.spawn_in_env(netns, argv, &[])
    }

    /// `spawn_in` with extra environment variables.
    pub fn spawn_in_env<S: AsRef<OsStr>>(
        &self,
        netns: &str,
        argv: &[S],
        env: &[(&str, &str)],
    ) -> Result<LabProcess, LabError> {
        let mut c = self.command_in(netns, argv)?;
        let n = self
            .spawned
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let program = argv
            .first()
            .map(|p| {
                Path::new(p.as_ref())
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned()
            })
            .unwrap_or_default();
        let log = self.plan.state_dir.join("logs").join(format!(
            "{}-{program}-{}-{n}.log",
            netns,
            std::process::id()
        ));
        let out = File::create(&log).map_err(io_err(format!("create {}", log.display())))?;
        let err = out
            .try_clone()
            .map_err(io_err(format!("open {}", log.display())))?;
        c.stdin(Stdio::null()).stdout(out).stderr(err);
        for (k, v) in env {
            c.env(k, v);
        }
        let command = describe_argv(netns, argv);
        let child = c.spawn().map_err(|source| LabError::Spawn {
            command: command.clone(),
            source,
        })?;
        let pid = child.id();
        // `ip netns exec` execs the command in place: this PID is the command's.
        let record = ProcessRecord {
            pid,
            start_time: cmd::process_start_time(pid).unwrap_or_default(),
            netns: netns.into(),
            command,
            log,
        };
        let proc = LabProcess::new(child, record.clone());
        self.with_record(|r| {
            r.processes.retain(ProcessRecord::is_running);
            r.processes.push(record);
        })?;
        Ok(proc)
    }

    /// Start the model server on every backend: stable as `v1`, canary as `v2`, named after the
    /// node (`s0`, `k0`, ...), listening on `0.0.0.0:8080` (so the VIP on `lo` works). `extra`
    /// adds flags per node (for example faults). Waits until each one listens.
    pub fn start_models(
        &self,
        server: ModelServer,
        extra: impl Fn(&Node) -> Vec<String>,
    ) -> Result<Vec<LabProcess>, LabError> {
        let mut procs = Vec::new();
        for node in self.backends() {
            let version = if node.role == Role::Canary {
                "v2"
            } else {
                "v1"
            };
            let listen = std::net::SocketAddr::from(([0, 0, 0, 0], SERVICE_PORT));
            let argv = server
                .argv(listen, version, &node.name, &extra(node))
                .map_err(|e| {
                    LabError::Spec(format!("cannot run {server} on {}: {e}", node.name))
                })?;
            procs.push(self.spawn_in(&node.netns, &argv)?);
        }
        for p in &mut procs {
            p.wait_for_log("listening on", server.start_timeout())?;
        }
        Ok(procs)
    }
}

fn describe_argv<S: AsRef<OsStr>>(netns: &str, argv: &[S]) -> String {
    let args: Vec<String> = argv
        .iter()
        .map(|a| a.as_ref().to_string_lossy().into_owned())
        .collect();
    format!("ip netns exec {netns} {}", args.join(" "))
}
