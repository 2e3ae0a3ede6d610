//! A cluster deployment: a lab with several balancer namespaces behind an ECMP multipath route,
//! a real etcd in the lab's `etcd` namespace, and one `canary run` per balancer with
//! `[cluster] store = "etcd"`.
//!
//! ```text
//!   c0 ──ECMP (L4 hash)──┬── lb  (canary run, node lb)  ─┐
//!                        ├── lb1 (canary run, node lb1) ─┼── etcd (198.18.0.9:2379)
//!                        └── lb2 (canary run, node lb2) ─┘
//!   s0 s1 s2  k0 k1  backends (DSR: they answer the client directly)
//! ```
//!
//! Everything is torn down on drop: the lab ends the daemons and the model servers, etcd is
//! stopped by PID and its data directory removed.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use canary_userspace::api::{ServiceStatus, Status};
use canary_userspace::cluster::config::RawCluster;
use canary_userspace::config::raw::RawConfig;

use crate::deployment::{
    all_probed, config, toml_text, DaemonCommand, DeploymentError, DeploymentSpec, ADMIN_PORT,
};
use crate::etcd::{Etcd, EtcdOptions};
use crate::lab::{Lab, LabProcess, Node, SERVICE_PORT};
use crate::loadgen::{LoadSpec, Report};

/// etcd's ports inside its own namespace.
const ETCD_PORTS: (u16, u16) = (2379, 2380);

/// One balancer node of the cluster.
pub struct ClusterNode {
    /// Balancer name (`lb`, `lb1`, ...), also the daemon's `node_name`.
    pub name: String,
    pub netns: String,
    pub config_path: PathBuf,
    pub daemon: Option<LabProcess>,
}

/// A running cluster deployment (see the module documentation).
pub struct ClusterDeployment {
    pub spec: DeploymentSpec,
    pub lease_ttl: String,
    pub canary_bin: PathBuf,
    pub loadgen_bin: PathBuf,
    pub token: String,
    pub token_path: PathBuf,
    pub nodes: Vec<ClusterNode>,
    pub models: Vec<LabProcess>,
    /// Declared before `lab`: stopped before the namespace goes away.
    pub etcd: Etcd,
    pub lab: Lab,
}

fn io(what: &str) -> impl Fn(std::io::Error) -> DeploymentError + '_ {
    move |e| DeploymentError::Io(format!("{what}: {e}"))
}

impl ClusterDeployment {
    /// Lab up with `spec.lab.balancers` balancers, model servers and etcd started, every node's
    /// config written; no daemon yet (see [`ClusterDeployment::start_node`]).
    pub fn up(spec: DeploymentSpec, lease_ttl: &str) -> Result<Self, DeploymentError> {
        if spec.lab.balancers < 2 {
            return Err(DeploymentError::Io(
                "a cluster needs lab.balancers of 2 or more".into(),
            ));
        }
        let canary_bin = crate::bins::locate("canary", "canary-userspace")?;
        let loadgen_bin = crate::bins::locate("canary-loadgen", "canary-lab")?;
        let lab = Lab::up(&spec.lab)?;
        let models = lab.start_models(spec.server, spec.model_args)?;
        let etcd_node = lab
            .etcd_node()
            .ok_or_else(|| DeploymentError::Io("the lab has no etcd namespace".into()))?;
        let etcd = Etcd::start_with(EtcdOptions {
            name: format!("cnry-{}", lab.tag()),
            address: IpAddr::V4(etcd_node.address),
            netns: Some(etcd_node.netns.clone()),
            ports: Some(ETCD_PORTS),
            parent_dir: Some(lab.state_dir().to_path_buf()),
        })
        .map_err(|e| DeploymentError::Io(format!("cannot start etcd in the lab: {e}")))?;
        let token = spec
            .token
            .clone()
            .unwrap_or_else(|| "cluster-test-token-0123456789".to_string());
        let token_path = lab.state_dir().join("admin.token");
        {
            use std::io::Write as _;
            use std::os::unix::fs::OpenOptionsExt as _;
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&token_path)
                .and_then(|mut f| f.write_all(token.as_bytes()))
                .map_err(io("write token file"))?;
        }
        let nodes = lab
            .balancers()
            .map(|b| ClusterNode {
                name: b.name.clone(),
                netns: b.netns.clone(),
                config_path: lab.state_dir().join(format!("canary-{}.toml", b.name)),
                daemon: None,
            })
            .collect();
        let d = ClusterDeployment {
            spec,
            lease_ttl: lease_ttl.to_string(),
            canary_bin,
            loadgen_bin,
            token,
            token_path,
            nodes,
            models,
            etcd,
            lab,
        };
        for i in 0..d.nodes.len() {
            d.write_config(i, &d.config_for(i)?)?;
        }
        Ok(d)
    }

    /// The etcd client URL the daemons use.
    pub fn etcd_endpoint(&self) -> String {
        self.etcd.endpoint()
    }

    /// Node `i`'s config: the deployment's, with its own state directory and bpffs, and the
    /// `[cluster]` section.
    pub fn raw_config_for(&self, i: usize) -> Result<RawConfig, DeploymentError> {
        let node = &self.nodes[i];
        let mut config = config(&self.spec, &self.lab, Some(&self.token_path))?;
        config.dataplane.state_dir = self
            .lab
            .state_dir()
            .join(format!("canary-state-{}", node.name))
            .display()
            .to_string();
        config.dataplane.bpffs = self
            .lab
            .bpffs()
            .join(format!("canary-{}", node.name))
            .display()
            .to_string();
        config.cluster = RawCluster {
            store: Some("etcd".into()),
            etcd_endpoints: vec![self.etcd_endpoint()],
            node_name: Some(node.name.clone()),
            prefix: Some(format!("/canary/{}", self.lab.tag())),
            lease_ttl: Some(self.lease_ttl.clone()),
            ..RawCluster::default()
        };
        Ok(config)
    }

    /// Node `i`'s config as the TOML file its daemon reads.
    pub fn config_for(&self, i: usize) -> Result<String, DeploymentError> {
        toml_text(&self.raw_config_for(i)?)
    }

    /// Writes node `i`'s config file.
    pub fn write_config(&self, i: usize, text: &str) -> Result<(), DeploymentError> {
        std::fs::write(&self.nodes[i].config_path, text).map_err(io("write config"))
    }

    /// How node `i`'s daemon is started and its status read.
    fn daemon_command(&self, i: usize) -> DaemonCommand<'_> {
        DaemonCommand {
            lab: &self.lab,
            netns: &self.nodes[i].netns,
            canary_bin: &self.canary_bin,
            config_path: &self.nodes[i].config_path,
            spec: &self.spec,
        }
    }

    /// Starts node `i`'s daemon (a running one is killed first) and waits until it has probed every
    /// backend and applied a rollout document (or refused one).
    pub fn start_node(&mut self, i: usize) -> Result<(), DeploymentError> {
        self.kill_node(i);
        let mut proc = self.daemon_command(i).spawn()?;
        let ready = self
            .daemon_command(i)
            .wait_ready(&mut proc, Duration::from_secs(30), |s| {
                all_probed(s)
                    && s.services.iter().all(|svc| {
                        svc.cluster
                            .as_ref()
                            .is_some_and(|c| c.applied_version.is_some() || c.refused.is_some())
                    })
            });
        self.nodes[i].daemon = Some(proc);
        ready
    }

    /// Starts every node, in order.
    pub fn start_all(&mut self) -> Result<(), DeploymentError> {
        for i in 0..self.nodes.len() {
            self.start_node(i)?;
        }
        Ok(())
    }

    /// SIGKILL to node `i`'s daemon (no clean-up: its lease expires after the TTL).
    pub fn kill_node(&mut self, i: usize) -> Option<LabProcess> {
        let mut d = self.nodes[i].daemon.take()?;
        d.kill();
        Some(d)
    }

    /// SIGSTOP / SIGCONT to node `i`'s daemon.
    pub fn freeze_node(&self, i: usize, frozen: bool) {
        if let Some(d) = &self.nodes[i].daemon {
            d.signal(if frozen { libc::SIGSTOP } else { libc::SIGCONT });
        }
    }

    /// The last lines of node `i`'s log.
    pub fn log_tail(&self, i: usize) -> String {
        self.nodes[i]
            .daemon
            .as_ref()
            .map(|d| d.log_tail(40))
            .unwrap_or_default()
    }

    /// Node `i`'s whole log.
    pub fn log(&self, i: usize) -> String {
        self.nodes[i]
            .daemon
            .as_ref()
            .map(LabProcess::log_text)
            .unwrap_or_default()
    }

    /// Runs the `canary` CLI in node `i`'s namespace (where its admin API listens).
    pub fn cli(&self, i: usize, args: &[&str]) -> Result<std::process::Output, DeploymentError> {
        let mut argv: Vec<String> = vec![self.canary_bin.to_string_lossy().into_owned()];
        argv.extend(args.iter().map(|s| (*s).to_string()));
        argv.push("--config".into());
        argv.push(self.nodes[i].config_path.to_string_lossy().into_owned());
        Ok(self.lab.output_in(&self.nodes[i].netns, &argv)?)
    }

    /// `canary status --json` on node `i`, read into the daemon's status types.
    pub fn status(&self, i: usize) -> Result<Status, DeploymentError> {
        self.daemon_command(i).status()
    }

    /// Node `i`'s first service.
    pub fn service_status(&self, i: usize) -> Result<ServiceStatus, DeploymentError> {
        self.status(i)?
            .services
            .into_iter()
            .next()
            .ok_or_else(|| DeploymentError::Parse {
                what: format!("canary status --json on {}", self.nodes[i].name),
                message: "it lists no service".into(),
            })
    }

    /// Node `i`'s Prometheus exposition.
    pub fn metrics(&self, i: usize) -> Result<String, DeploymentError> {
        let url = format!("http://127.0.0.1:{ADMIN_PORT}/metrics");
        Ok(self.lab.exec_in(
            &self.nodes[i].netns,
            &["curl", "-sS", "-m", "5", url.as_str()],
        )?)
    }

    /// Polls node `i`'s status until `pred` holds; returns that status.
    pub fn wait_for(
        &self,
        i: usize,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Status) -> bool,
    ) -> Result<Status, DeploymentError> {
        let start = Instant::now();
        let mut last = String::new();
        while start.elapsed() < timeout {
            match self.status(i) {
                Ok(s) if pred(&s) => return Ok(s),
                Ok(s) => {
                    last = match s.services.first() {
                        Some(svc) => format!(
                            "phase {} weight {} cluster {:?}",
                            svc.phase, svc.weight_percent, s.cluster
                        ),
                        None => format!("no service; cluster {:?}", s.cluster),
                    };
                }
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Err(DeploymentError::Timeout {
            what: format!("{what} (node {})", self.nodes[i].name),
            waited: timeout,
            last,
        })
    }

    /// The node that leads, as node `i` sees it.
    pub fn leader_seen_by(&self, i: usize) -> Option<String> {
        self.status(i).ok()?.cluster?.leader
    }

    /// Index of the node called `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// A load spec against the VIP from client `client`: `new_conns` workers opening a new
    /// connection per request for `duration`.
    pub fn vip_load(&self, client: &Node, new_conns: usize, duration: Duration) -> LoadSpec {
        let mut spec = LoadSpec::new(std::net::SocketAddr::new(
            IpAddr::V4(self.lab.vip()),
            SERVICE_PORT,
        ));
        spec.duration = duration;
        spec.new_conns = new_conns;
        spec.sources = client
            .source_addresses()
            .into_iter()
            .map(IpAddr::V4)
            .collect();
        spec
    }

    /// Starts the load generator in the background in client `client`.
    pub fn spawn_load(
        &self,
        client: usize,
        spec: &LoadSpec,
    ) -> Result<LabProcess, DeploymentError> {
        crate::deployment::spawn_load(&self.lab, &self.loadgen_bin, client, spec)
    }

    /// Waits for a load generator from [`ClusterDeployment::spawn_load`] and returns its report.
    pub fn wait_load(
        &self,
        proc: LabProcess,
        timeout: Duration,
    ) -> Result<Report, DeploymentError> {
        crate::deployment::wait_load(proc, timeout)
    }

    /// Cumulative new flows per backend counted by node `i`'s kernel.
    pub fn node_backend_flows(&self, i: usize) -> BTreeMap<String, u64> {
        self.service_status(i)
            .map(|s| {
                s.backends
                    .into_iter()
                    .map(|b| (b.name, b.new_flows))
                    .collect()
            })
            .unwrap_or_default()
    }
}
