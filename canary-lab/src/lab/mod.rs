//! A lab of network namespaces on a Linux bridge: clients, one load balancer, stable and canary
//! backends, wired for direct server return (DSR).
//!
//! ```text
//!   c0 c1 ...        lb (VIP on eth0)       s0 s1 s2   k0 k1   (VIP on lo, arp_ignore)
//!    |  |             |                      |  |  |    |  |
//!  ==+==+=============+======================+==+==+====+==+==  bridge cnry-<tag>-br (host)
//! ```
//!
//! Clients send to the VIP; the load balancer's XDP program rewrites the destination MAC and
//! bounces the frame back out (`XDP_TX`) to a backend, which answers the client straight over the
//! bridge. Everything the lab creates is written to `/run/canary-lab/<tag>/lab.json` before it is
//! created, so `down` removes exactly that, even after a crash mid-`up`.

mod cmd;
mod plan;
mod process;
mod xdp_pass;

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

pub use plan::{
    LabPlan, LabSpec, MacAddr, Node, PeerXdp, Role, MAX_BACKENDS_PER_GROUP, MAX_CLIENTS,
    MAX_EXTRA_ADDRESSES, MAX_TAG_LEN, NAME_PREFIX, NETNS_IFNAME, PREFIX_LEN, SERVICE_PORT,
    STATE_ROOT, VIP,
};
pub use process::{LabProcess, ProcessRecord};

use crate::server::ModelServer;

/// Name of the builtin peer XDP link's pin inside the lab's bpffs.
pub const PEER_XDP_PIN: &str = "lab_peer_xdp_pass";

/// Errors of lab set-up, use and tear-down.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// The lab spec is invalid.
    #[error("invalid lab spec: {0}")]
    Spec(String),
    /// Not running as root.
    #[error("the lab needs root (it creates namespaces, links and mounts): run as root")]
    NotRoot,
    /// A command could not be started.
    #[error("cannot run `{command}`: {source} (is iproute2/ethtool installed?)")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    /// A command failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    /// A file operation failed.
    #[error("cannot {what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// The lab record is unreadable.
    #[error("lab record {path} is unreadable: {source}; remove the lab with `down` by tag")]
    Record {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// No lab with this tag.
    #[error("no lab `{0}` (no record under /run/canary-lab): bring it up first")]
    NotFound(String),
    /// A namespace name that is not part of this lab.
    #[error("`{netns}` is not a namespace of lab `{tag}`: use a node's `netns` field")]
    UnknownNetns { netns: String, tag: String },
    /// The lab has no load balancer (spec `load_balancer = false`).
    #[error("lab `{0}` has no load-balancer namespace: set `load_balancer` in the spec")]
    NoLoadBalancer(String),
    /// Attaching the peer XDP program failed.
    #[error("cannot attach XDP to the load balancer's peer veth `{ifname}`: {reason}")]
    PeerXdp { ifname: String, reason: String },
    /// A started process exited early.
    #[error("`{command}` exited ({status}); log tail:\n{log_tail}")]
    ProcessExited {
        command: String,
        status: String,
        log_tail: String,
    },
    /// Waiting for something took too long.
    #[error("timed out waiting for {what}; log tail:\n{log_tail}")]
    Timeout { what: String, log_tail: String },
    /// `down` finished but something of the lab is still there.
    #[error("lab teardown left behind: {}", .0.join(", "))]
    Leftovers(Vec<String>),
}

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
    fn new(plan: LabPlan) -> Self {
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

    fn load(state_dir: &Path) -> Result<Option<Self>, LabError> {
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

    fn save(&self) -> Result<(), LabError> {
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

/// A running lab. Dropping it tears the lab down unless `keep` was called (or it was `open`ed).
pub struct Lab {
    plan: LabPlan,
    record: Mutex<LabRecord>,
    teardown_on_drop: bool,
    spawned: std::sync::atomic::AtomicU32,
}

fn ensure_root() -> Result<(), LabError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        Ok(())
    } else {
        Err(LabError::NotRoot)
    }
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LabError {
    let what = what.into();
    move |source| LabError::Io { what, source }
}

impl Lab {
    /// Create the lab, or complete it when it (partly) exists: re-running is harmless.
    pub fn up(spec: &LabSpec) -> Result<Self, LabError> {
        ensure_root()?;
        let plan = LabPlan::new(spec)?;
        std::fs::create_dir_all(plan.state_dir.join("logs"))
            .map_err(io_err(format!("create {}", plan.state_dir.display())))?;
        let record = match LabRecord::load(&plan.state_dir)? {
            Some(mut r) => {
                r.plan = plan.clone();
                r
            }
            None => LabRecord::new(plan.clone()),
        };
        record.save()?;
        let lab = Self {
            plan,
            record: Mutex::new(record),
            teardown_on_drop: true,
            spawned: std::sync::atomic::AtomicU32::new(0),
        };
        // On error, `lab` drops here and removes what was created so far.
        lab.build()?;
        Ok(lab)
    }

    /// A handle on an existing lab (from its record); it does not tear down on drop.
    pub fn open(tag: &str) -> Result<Self, LabError> {
        let state_dir = Path::new(STATE_ROOT).join(tag);
        let record = LabRecord::load(&state_dir)?.ok_or_else(|| LabError::NotFound(tag.into()))?;
        Ok(Self {
            plan: record.plan.clone(),
            record: Mutex::new(record),
            teardown_on_drop: false,
            spawned: std::sync::atomic::AtomicU32::new(0),
        })
    }

    /// Keep the lab (and detached processes) after this handle is dropped; `Lab::down_tag` ends it.
    pub fn keep(mut self) -> LabPlan {
        self.teardown_on_drop = false;
        self.plan.clone()
    }

    pub fn plan(&self) -> &LabPlan {
        &self.plan
    }

    pub fn tag(&self) -> &str {
        &self.plan.spec.tag
    }

    pub fn vip(&self) -> std::net::Ipv4Addr {
        self.plan.vip
    }

    pub fn bridge(&self) -> &str {
        &self.plan.bridge
    }

    /// The bpffs mounted in the host mount namespace for this lab (outlives `ip netns exec`).
    pub fn bpffs(&self) -> &Path {
        &self.plan.bpffs
    }

    pub fn state_dir(&self) -> &Path {
        &self.plan.state_dir
    }

    pub fn load_balancer(&self) -> Result<&Node, LabError> {
        self.plan
            .load_balancer
            .as_ref()
            .ok_or_else(|| LabError::NoLoadBalancer(self.tag().into()))
    }

    pub fn clients(&self) -> &[Node] {
        &self.plan.clients
    }

    pub fn stable(&self) -> &[Node] {
        &self.plan.stable
    }

    pub fn canary(&self) -> &[Node] {
        &self.plan.canary
    }

    /// Stable then canary backends.
    pub fn backends(&self) -> impl Iterator<Item = &Node> {
        self.plan.backends()
    }

    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.plan.nodes()
    }

    /// The node whose namespace is `netns`.
    pub fn node(&self, netns: &str) -> Result<&Node, LabError> {
        self.plan
            .nodes()
            .find(|n| n.netns == netns)
            .ok_or_else(|| LabError::UnknownNetns {
                netns: netns.into(),
                tag: self.tag().into(),
            })
    }

    fn with_record<T>(&self, f: impl FnOnce(&mut LabRecord) -> T) -> Result<T, LabError> {
        let mut r = self.record.lock().unwrap_or_else(PoisonError::into_inner);
        let out = f(&mut r);
        r.save()?;
        Ok(out)
    }

    fn build(&self) -> Result<(), LabError> {
        let plan = &self.plan;
        // bpffs in the host mount namespace: pins made by processes under `ip netns exec` (which
        // gives them a private /sys) land here and survive those processes.
        std::fs::create_dir_all(&plan.bpffs)
            .map_err(io_err(format!("create {}", plan.bpffs.display())))?;
        if !cmd::mounts_under(&plan.bpffs).contains(&plan.bpffs) {
            self.with_record(|r| r.mounts.insert(plan.bpffs.clone()))?;
            cmd::run("mount", &["-t", "bpf", "bpf", path_str(&plan.bpffs)])?;
        }

        if !cmd::host_link_exists(&plan.bridge) {
            self.with_record(|r| r.links.insert(plan.bridge.clone()))?;
            // Bridged lab frames must not go through the host's iptables (br_netfilter).
            cmd::run(
                "ip",
                &[
                    "link",
                    "add",
                    "name",
                    &plan.bridge,
                    "type",
                    "bridge",
                    "nf_call_iptables",
                    "0",
                    "nf_call_ip6tables",
                    "0",
                    "nf_call_arptables",
                    "0",
                ],
            )?;
        }
        cmd::host_sysctl(&format!("net.ipv6.conf.{}.disable_ipv6", plan.bridge), "1")?;
        cmd::run("ip", &["link", "set", &plan.bridge, "up"])?;

        let existing = cmd::netns_list()?;
        for node in plan.nodes() {
            self.build_node(node, existing.contains(&node.netns))?;
        }
        if plan.load_balancer.is_some() && plan.spec.peer_xdp == PeerXdp::Builtin {
            self.attach_builtin_peer_xdp()?;
        }
        Ok(())
    }

    fn build_node(&self, node: &Node, netns_exists: bool) -> Result<(), LabError> {
        let ns = node.netns.as_str();
        if !netns_exists {
            self.with_record(|r| r.namespaces.insert(node.netns.clone()))?;
            cmd::run("ip", &["netns", "add", ns])?;
        }
        if !cmd::host_link_exists(&node.host_ifname) {
            // A half-made pair from an interrupted run: its namespace end would block the name.
            if cmd::netns_links(ns)?.contains(NETNS_IFNAME) {
                cmd::run("ip", &["-n", ns, "link", "del", NETNS_IFNAME])?;
            }
            self.with_record(|r| r.links.insert(node.host_ifname.clone()))?;
            cmd::run(
                "ip",
                &[
                    "link",
                    "add",
                    &node.host_ifname,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    NETNS_IFNAME,
                    "netns",
                    ns,
                ],
            )?;
        }
        cmd::host_sysctl(
            &format!("net.ipv6.conf.{}.disable_ipv6", node.host_ifname),
            "1",
        )?;
        cmd::run(
            "ip",
            &[
                "link",
                "set",
                &node.host_ifname,
                "master",
                &self.plan.bridge,
                "up",
            ],
        )?;

        let ip_n = |args: &[&str]| -> Result<String, LabError> {
            let mut all = vec!["-n", ns];
            all.extend_from_slice(args);
            cmd::run("ip", &all)
        };
        ip_n(&["link", "set", "lo", "up"])?;
        let mac = node.mac.to_string();
        ip_n(&["link", "set", NETNS_IFNAME, "address", &mac])?;

        let mut sysctls = vec![
            // No IPv6 chatter (DAD, router solicitations) in counters and captures.
            "net.ipv6.conf.all.disable_ipv6=1".to_owned(),
            "net.ipv6.conf.default.disable_ipv6=1".to_owned(),
            // Replies from the VIP arrive on an interface that does not hold it (DSR).
            "net.ipv4.conf.all.rp_filter=0".to_owned(),
            "net.ipv4.conf.default.rp_filter=0".to_owned(),
            format!("net.ipv4.conf.{NETNS_IFNAME}.rp_filter=0"),
        ];
        if matches!(node.role, Role::Stable | Role::Canary) {
            // Only the load balancer may answer ARP for the VIP.
            for dev in ["all", NETNS_IFNAME, "lo"] {
                sysctls.push(format!("net.ipv4.conf.{dev}.arp_ignore=1"));
                sysctls.push(format!("net.ipv4.conf.{dev}.arp_announce=2"));
            }
        }
        let mut args = vec!["netns", "exec", ns, "sysctl", "-q", "-w"];
        args.extend(sysctls.iter().map(String::as_str));
        cmd::run("ip", &args)?;

        ip_n(&["link", "set", NETNS_IFNAME, "up"])?;
        for a in node.source_addresses() {
            let cidr = format!("{a}/{PREFIX_LEN}");
            ip_n(&["addr", "replace", &cidr, "dev", NETNS_IFNAME])?;
        }
        let vip = format!("{}/32", self.plan.vip);
        match node.role {
            Role::LoadBalancer => {
                ip_n(&["addr", "replace", &vip, "dev", NETNS_IFNAME])?;
            }
            Role::Stable | Role::Canary => {
                ip_n(&["addr", "replace", &vip, "dev", "lo"])?;
                // Replies leave straight for the client over the bridge.
                ip_n(&["route", "replace", "default", "dev", NETNS_IFNAME])?;
            }
            Role::Client => {
                // Checksums left to offload are lost through XDP_TX: finish them in software.
                cmd::run(
                    "ip",
                    &[
                        "netns",
                        "exec",
                        ns,
                        "ethtool",
                        "-K",
                        NETNS_IFNAME,
                        "tx",
                        "off",
                    ],
                )?;
            }
        }
        Ok(())
    }

    /// The bridge-side peer of the load balancer's veth (where the peer XDP program goes).
    pub fn lb_peer_ifname(&self) -> Result<&str, LabError> {
        Ok(&self.load_balancer()?.host_ifname)
    }

    fn attach_builtin_peer_xdp(&self) -> Result<(), LabError> {
        let ifname = self.lb_peer_ifname()?.to_owned();
        let pin = self.plan.bpffs.join(PEER_XDP_PIN);
        if pin.exists() {
            return Ok(());
        }
        self.with_record(|r| r.pins.insert(pin.clone()))?;
        xdp_pass::attach(&ifname, &pin).map_err(|e| LabError::PeerXdp {
            ifname,
            reason: e.to_string(),
        })
    }

    /// Attach a native XDP program to the load balancer's peer veth with your own code; `attach`
    /// gets the interface name. Removes the builtin pass program first.
    pub fn attach_peer_xdp_with<E: fmt::Display>(
        &self,
        attach: impl FnOnce(&str) -> Result<(), E>,
    ) -> Result<(), LabError> {
        self.detach_peer_xdp()?;
        let ifname = self.lb_peer_ifname()?;
        attach(ifname).map_err(|e| LabError::PeerXdp {
            ifname: ifname.into(),
            reason: e.to_string(),
        })
    }

    /// Attach by running a host command; every `{iface}` in `argv` becomes the interface name.
    pub fn attach_peer_xdp_command(&self, argv: &[&str]) -> Result<(), LabError> {
        self.attach_peer_xdp_with(|ifname| {
            let args: Vec<String> = argv.iter().map(|a| a.replace("{iface}", ifname)).collect();
            let (program, rest) = args.split_first().ok_or("empty command")?;
            let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
            cmd::run(program, &rest)
                .map(drop)
                .map_err(|e| e.to_string())
        })
    }

    /// Remove any XDP program from the load balancer's peer veth (builtin pin and netlink attach).
    pub fn detach_peer_xdp(&self) -> Result<(), LabError> {
        let ifname = self.lb_peer_ifname()?.to_owned();
        let pin = self.plan.bpffs.join(PEER_XDP_PIN);
        if pin.exists() {
            std::fs::remove_file(&pin).map_err(io_err(format!("remove {}", pin.display())))?;
        }
        // A netlink-attached program (for example `ip link set ... xdpdrv`); none is fine. The
        // kernel frees a link whose last pin went away asynchronously: until it has, netlink
        // refuses with "active BPF XDP link", so wait for that (bounded) rather than fail.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match cmd::run("ip", &["link", "set", "dev", &ifname, "xdp", "off"]) {
                Ok(_) => return Ok(()),
                Err(e)
                    if e.to_string().contains("active BPF XDP link")
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Whether an XDP program is attached to the load balancer's peer veth.
    pub fn peer_xdp_attached(&self) -> Result<bool, LabError> {
        let out = cmd::run("ip", &["-d", "link", "show", "dev", self.lb_peer_ifname()?])?;
        Ok(out.contains("prog/xdp"))
    }

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
        let out = self.output_in(netns, argv)?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(LabError::Command {
                command: describe_argv(netns, argv),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            })
        }
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

    /// What exists of this lab now.
    pub fn status(&self) -> LabStatus {
        let record = self
            .record
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        LabStatus::of(Some(record), &self.plan.spec.tag)
    }

    /// Status of the lab `tag` from its record (or of its leftovers when there is no record).
    pub fn status_of(tag: &str) -> Result<LabStatus, LabError> {
        let state_dir = Path::new(STATE_ROOT).join(tag);
        Ok(LabStatus::of(LabRecord::load(&state_dir)?, tag))
    }

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

fn path_str(p: &Path) -> &str {
    p.to_str().expect("lab paths are UTF-8")
}

fn describe_argv<S: AsRef<OsStr>>(netns: &str, argv: &[S]) -> String {
    let args: Vec<String> = argv
        .iter()
        .map(|a| a.as_ref().to_string_lossy().into_owned())
        .collect();
    format!("ip netns exec {netns} {}", args.join(" "))
}

/// One node's state.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeStatus {
    pub node: Node,
    pub netns_exists: bool,
    pub link_exists: bool,
}

/// A recorded process and whether it still runs.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProcessStatus {
    pub pid: u32,
    pub netns: String,
    pub command: String,
    pub running: bool,
}

/// What exists of a lab (`lab status`); `Display` is a readable table.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[allow(
    clippy::struct_excessive_bools,
    reason = "independent facts about what exists, reported as such"
)]
pub struct LabStatus {
    pub tag: String,
    /// A record exists.
    pub recorded: bool,
    pub vip: Option<std::net::Ipv4Addr>,
    pub bridge: Option<String>,
    pub bridge_exists: bool,
    pub bpffs: Option<PathBuf>,
    pub bpffs_mounted: bool,
    pub peer_xdp_pinned: bool,
    pub nodes: Vec<NodeStatus>,
    pub processes: Vec<ProcessStatus>,
    /// Everything with the lab's name prefix that exists.
    pub leftovers: Vec<String>,
}

impl LabStatus {
    fn of(record: Option<LabRecord>, tag: &str) -> Self {
        let netns = cmd::netns_list().unwrap_or_default();
        let Some(r) = record else {
            return Self {
                tag: tag.into(),
                recorded: false,
                vip: None,
                bridge: None,
                bridge_exists: false,
                bpffs: None,
                bpffs_mounted: false,
                peer_xdp_pinned: false,
                nodes: Vec::new(),
                processes: Vec::new(),
                leftovers: leftovers(tag),
            };
        };
        let plan = &r.plan;
        Self {
            tag: tag.into(),
            recorded: true,
            vip: Some(plan.vip),
            bridge: Some(plan.bridge.clone()),
            bridge_exists: cmd::host_link_exists(&plan.bridge),
            bpffs: Some(plan.bpffs.clone()),
            bpffs_mounted: cmd::mounts_under(&plan.bpffs).contains(&plan.bpffs),
            peer_xdp_pinned: plan.bpffs.join(PEER_XDP_PIN).exists(),
            nodes: plan
                .nodes()
                .map(|n| NodeStatus {
                    node: n.clone(),
                    netns_exists: netns.contains(&n.netns),
                    link_exists: cmd::host_link_exists(&n.host_ifname),
                })
                .collect(),
            processes: r
                .processes
                .iter()
                .map(|p| ProcessStatus {
                    pid: p.pid,
                    netns: p.netns.clone(),
                    command: p.command.clone(),
                    running: p.is_running(),
                })
                .collect(),
            leftovers: leftovers(tag),
        }
    }

    /// The lab is complete: every namespace, link, the bridge and the bpffs exist.
    pub fn is_up(&self) -> bool {
        self.recorded
            && self.bridge_exists
            && self.bpffs_mounted
            && self.nodes.iter().all(|n| n.netns_exists && n.link_exists)
    }
}

impl fmt::Display for LabStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.recorded {
            writeln!(f, "lab {}: not up", self.tag)?;
            if !self.leftovers.is_empty() {
                writeln!(f, "leftovers: {}", self.leftovers.join(", "))?;
            }
            return Ok(());
        }
        let yes = |b: bool| if b { "yes" } else { "MISSING" };
        writeln!(
            f,
            "lab {}: {}",
            self.tag,
            if self.is_up() { "up" } else { "incomplete" }
        )?;
        if let Some(vip) = self.vip {
            writeln!(f, "vip        {vip}:{SERVICE_PORT}")?;
        }
        if let Some(b) = &self.bridge {
            writeln!(f, "bridge     {b} ({})", yes(self.bridge_exists))?;
        }
        if let Some(p) = &self.bpffs {
            writeln!(
                f,
                "bpffs      {} ({})",
                p.display(),
                yes(self.bpffs_mounted)
            )?;
        }
        writeln!(
            f,
            "peer xdp   {}",
            if self.peer_xdp_pinned {
                "builtin pass"
            } else {
                "not builtin"
            }
        )?;
        writeln!(
            f,
            "{:<14} {:<14} {:<16} {:<18} {:<5} {:<5}",
            "role", "netns", "address", "mac", "ns", "link"
        )?;
        for n in &self.nodes {
            writeln!(
                f,
                "{:<14} {:<14} {:<16} {:<18} {:<5} {:<5}",
                n.node.role.to_string(),
                n.node.netns,
                n.node.address.to_string(),
                n.node.mac.to_string(),
                yes(n.netns_exists),
                yes(n.link_exists)
            )?;
        }
        for p in &self.processes {
            writeln!(
                f,
                "pid {:<8} {:<8} {}",
                p.pid,
                if p.running { "running" } else { "exited" },
                p.command
            )?;
        }
        Ok(())
    }
}
