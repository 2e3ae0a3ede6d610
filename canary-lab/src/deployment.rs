//! A whole deployment in a lab: model servers on every backend, the `canary` daemon on the
//! load balancer with a generated config, and helpers to drive load and read the daemon's
//! status through its own CLI. Used by the end-to-end tests, the demo and the benchmarks.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use canary_userspace::api::{ServiceStatus, Status};
use canary_userspace::config::raw::{
    RawAdmin, RawBackend, RawConfig, RawDataplane, RawNotify, RawRollout, RawService,
    RawThresholds, RawUpstream,
};

use crate::bins;
use crate::lab::{Lab, LabError, LabProcess, LabSpec, Node, SERVICE_PORT};
use crate::loadgen::{LoadSpec, Report};
use crate::server::ModelServer;

/// Port of the daemon's admin API inside the load balancer's namespace.
pub const ADMIN_PORT: u16 = 9100;

/// Errors of setting up or driving a deployment.
#[derive(Debug, thiserror::Error)]
pub enum DeploymentError {
    #[error(transparent)]
    Lab(#[from] LabError),
    #[error(transparent)]
    Bin(#[from] bins::BinError),
    #[error("{0}")]
    Io(String),
    #[error("the canary daemon did not become ready in {waited:?}; its log ends with:\n{log}")]
    NotReady { waited: Duration, log: String },
    #[error("{what} timed out after {waited:?}; last seen: {last}")]
    Timeout {
        what: String,
        waited: Duration,
        last: String,
    },
    #[error("cannot parse {what}: {message}")]
    Parse { what: String, message: String },
}

/// Rollout and data-plane settings written into the daemon's config.
#[derive(Clone, Debug)]
pub struct DeploymentSpec {
    pub lab: LabSpec,
    /// `flow` or `client-ip`.
    pub affinity: String,
    /// Percent steps, e.g. `[10.0, 25.0, 50.0, 75.0, 100.0]`.
    pub steps: Vec<f64>,
    pub interval: String,
    pub poll_interval: String,
    pub min_samples: u64,
    pub warmup_requests: u32,
    /// `""`: each canary backend's health URL.
    pub warmup_url: String,
    /// `""`: warm-up GETs; else the JSON body of warm-up POSTs.
    pub warmup_body: String,
    /// `drain` or `reset`.
    pub rollback: String,
    /// `auto` or `paused`.
    pub start: String,
    /// `hold` or `rollback`.
    pub metrics_missing: String,
    pub metrics_missing_intervals: u32,
    pub heartbeat_timeout: String,
    pub flow_table_size: u32,
    /// `dataplane.syn_replace_after`.
    pub syn_replace_after: String,
    /// `dataplane.flood_guard_rate` (0: off).
    pub flood_guard_rate: u32,
    /// `dataplane.udp_idle_timeout`.
    pub udp_idle_timeout: String,
    /// The service on the lab's IPv6 VIP, its backends named by their IPv6 addresses and their
    /// MACs left for the daemon to resolve (NDP); else the IPv4 VIP with configured MACs.
    pub ipv6: bool,
    /// The service's `protocol`: `tcp` (HTTP) or `udp` (`canary-model --udp-listen`).
    pub protocol: String,
    pub error_spike: f64,
    pub max_error_rate_increase: f64,
    pub max_latency_increase_ms: f64,
    pub max_prediction_shift: f64,
    pub confidence: f64,
    /// Admin token written to a token file (mode 0600); `None` = no `token_file`: the daemon
    /// generates one in its state directory.
    pub token: Option<String>,
    /// `--bpf-object PATH` for the daemon; `None` = the object embedded in the binary.
    pub bpf_object: Option<PathBuf>,
    /// Run the daemon with this open-file limit (soft and hard, via `prlimit`).
    pub daemon_open_files: Option<u64>,
    /// The model server on every backend.
    pub server: ModelServer,
    /// Extra model-server flags per backend node (faults: both servers take the same flags).
    pub model_args: fn(&Node) -> Vec<String>,
    /// A `[[services]]` section to use instead of the generated one (for example from
    /// `canary init`); the rollout settings above are appended to it.
    pub service_section: Option<String>,
    /// `[[notify]]` webhooks.
    pub notify: Vec<RawNotify>,
    /// `rollout.dry_run`: signals judged and reported but never acted on.
    pub dry_run: Vec<String>,
}

fn no_args(_: &Node) -> Vec<String> {
    Vec::new()
}

impl DeploymentSpec {
    /// Short intervals suited to tests: 1 s polls, 3 s steps.
    pub fn new(tag: impl Into<String>) -> Self {
        DeploymentSpec {
            lab: LabSpec::new(tag),
            affinity: "flow".into(),
            steps: vec![10.0, 25.0, 50.0, 75.0, 100.0],
            interval: "3s".into(),
            poll_interval: "1s".into(),
            min_samples: 200,
            warmup_requests: 5,
            warmup_url: String::new(),
            warmup_body: String::new(),
            rollback: "drain".into(),
            start: "auto".into(),
            metrics_missing: "hold".into(),
            metrics_missing_intervals: 3,
            heartbeat_timeout: "30s".into(),
            flow_table_size: 65_536,
            syn_replace_after: "5s".into(),
            flood_guard_rate: 0,
            udp_idle_timeout: "30s".into(),
            ipv6: false,
            protocol: "tcp".into(),
            error_spike: 0.10,
            max_error_rate_increase: 0.02,
            max_latency_increase_ms: 50.0,
            max_prediction_shift: 0.10,
            confidence: 0.99,
            token: None,
            bpf_object: None,
            daemon_open_files: None,
            server: ModelServer::CanaryModel,
            model_args: no_args,
            service_section: None,
            notify: Vec::new(),
            dry_run: Vec::new(),
        }
    }
}

/// A running deployment; everything is torn down on drop (the lab ends its processes).
pub struct Deployment {
    pub spec: DeploymentSpec,
    pub lab: Lab,
    pub canary_bin: PathBuf,
    pub loadgen_bin: PathBuf,
    pub config_path: PathBuf,
    pub token_path: Option<PathBuf>,
    pub models: Vec<LabProcess>,
    pub daemon: Option<LabProcess>,
}

fn io(what: &str) -> impl Fn(std::io::Error) -> DeploymentError + '_ {
    move |e| DeploymentError::Io(format!("{what}: {e}"))
}

impl Deployment {
    /// Lab up, model servers started, config written, daemon started and ready.
    pub fn start(spec: DeploymentSpec) -> Result<Self, DeploymentError> {
        let mut d = Deployment::up(spec)?;
        d.write_config()?;
        d.start_daemon()?;
        Ok(d)
    }

    /// Lab up and model servers started; no config written and no daemon yet (see
    /// [`Deployment::write_config`] and [`Deployment::start_daemon`]).
    pub fn up(spec: DeploymentSpec) -> Result<Self, DeploymentError> {
        let canary_bin = bins::locate("canary", "canary-userspace")?;
        let loadgen_bin = bins::locate("canary-loadgen", "canary-lab")?;
        let lab = Lab::up(&spec.lab)?;
        let models = lab.start_models(spec.server, spec.model_args)?;
        let token_path = match &spec.token {
            Some(t) => {
                use std::io::Write as _;
                use std::os::unix::fs::OpenOptionsExt as _;
                let p = lab.state_dir().join("admin.token");
                std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&p)
                    .and_then(|mut f| f.write_all(t.as_bytes()))
                    .map_err(io("write token file"))?;
                Some(p)
            }
            None => None,
        };
        let config_path = lab.state_dir().join("canary.toml");
        Ok(Deployment {
            spec,
            lab,
            canary_bin,
            loadgen_bin,
            config_path,
            token_path,
            models,
            daemon: None,
        })
    }

    /// Writes the daemon's config for the spec as it is now.
    pub fn write_config(&self) -> Result<(), DeploymentError> {
        std::fs::write(
            &self.config_path,
            config_text(&self.spec, &self.lab, self.token_path.as_deref())?,
        )
        .map_err(io("write config"))
    }

    /// Starts `canary run` in the load balancer and waits until its admin API answers and
    /// every backend has been probed.
    pub fn start_daemon(&mut self) -> Result<(), DeploymentError> {
        let lb = self.lab.load_balancer()?.netns.clone();
        let daemon = DaemonCommand {
            lab: &self.lab,
            netns: &lb,
            canary_bin: &self.canary_bin,
            config_path: &self.config_path,
            spec: &self.spec,
        };
        let proc = self.daemon.insert(daemon.spawn()?);
        daemon.wait_ready(proc, Duration::from_secs(20), all_probed)
    }

    /// `SIGKILL` to the daemon by PID (no clean-up runs: pins, link and state stay as they were)
    /// and reap it. Returns the dead process, whose log stays readable.
    pub fn kill_daemon(&mut self) -> Option<LabProcess> {
        let mut d = self.daemon.take()?;
        d.kill();
        Some(d)
    }

    /// `SIGTERM` to the daemon (it stops and leaves the program attached); waits up to 10 s.
    pub fn stop_daemon(&mut self) -> Option<LabProcess> {
        let mut d = self.daemon.take()?;
        d.terminate(Duration::from_secs(10));
        Some(d)
    }

    /// An HTTP request to the admin API from inside the load balancer's namespace, with the
    /// bearer `token` when given. Returns the status code and the body.
    pub fn admin_http(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        json_body: Option<&str>,
    ) -> Result<(u16, String), DeploymentError> {
        const MARK: &str = "\n--canary-http-status:";
        let url = format!("http://127.0.0.1:{ADMIN_PORT}{path}");
        let mut argv: Vec<String> = [
            "curl",
            "-sS",
            "-m",
            "5",
            "-X",
            method,
            "-w",
            &format!("{MARK}%{{http_code}}"),
        ]
        .iter()
        .map(|s| (*s).to_string())
        .collect();
        if let Some(t) = token {
            argv.extend(["-H".into(), format!("authorization: Bearer {t}")]);
        }
        if let Some(b) = json_body {
            argv.extend([
                "-H".into(),
                "content-type: application/json".into(),
                "-d".into(),
                b.into(),
            ]);
        }
        argv.push(url.clone());
        let out = self.lab.output_in(&self.lb()?, &argv)?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let parsed = text
            .rsplit_once(MARK)
            .and_then(|(body, code)| Some((code.trim().parse::<u16>().ok()?, body.to_string())));
        match parsed {
            Some((code, body)) if out.status.success() => Ok((code, body)),
            _ => Err(DeploymentError::Io(format!(
                "{method} {url} failed: {} {}",
                text,
                String::from_utf8_lossy(&out.stderr)
            ))),
        }
    }

    /// The daemon's state directory (`dataplane.state_dir`).
    pub fn daemon_state_dir(&self) -> PathBuf {
        state_dir(&self.lab)
    }

    /// The admin token the daemon uses: the configured one, else the one it generated in its
    /// state directory.
    pub fn admin_token(&self) -> Result<String, DeploymentError> {
        let path = self
            .token_path
            .clone()
            .unwrap_or_else(|| self.daemon_state_dir().join("admin.token"));
        std::fs::read_to_string(&path)
            .map(|t| t.trim().to_string())
            .map_err(io("read the admin token"))
    }

    /// The daemon's Prometheus exposition (`GET /metrics` on the admin API).
    pub fn daemon_metrics(&self) -> Result<String, DeploymentError> {
        match self.admin_http("GET", "/metrics", None, None)? {
            (200, body) => Ok(body),
            (code, body) => Err(DeploymentError::Io(format!(
                "GET /metrics answered {code}: {body}"
            ))),
        }
    }

    /// Cumulative new flows the kernel counted per backend (from the status), by name.
    pub fn backend_new_flows(&self) -> Result<BTreeMap<String, u64>, DeploymentError> {
        let s = self.service_status()?;
        Ok(s.backends
            .into_iter()
            .map(|b| (b.name, b.new_flows))
            .collect())
    }

    /// The last lines of the daemon's log.
    pub fn daemon_log_tail(&self) -> String {
        self.daemon
            .as_ref()
            .map(|d| d.log_tail(40))
            .unwrap_or_default()
    }

    /// The whole daemon log.
    pub fn daemon_log(&self) -> String {
        self.daemon
            .as_ref()
            .map(LabProcess::log_text)
            .unwrap_or_default()
    }

    fn lb(&self) -> Result<String, DeploymentError> {
        Ok(self.lab.load_balancer()?.netns.clone())
    }

    /// Runs the `canary` CLI in the load balancer's namespace (where the admin API listens).
    pub fn cli(&self, args: &[&str]) -> Result<std::process::Output, DeploymentError> {
        let mut argv: Vec<String> = vec![self.canary_bin.to_string_lossy().into_owned()];
        argv.extend(args.iter().map(|s| (*s).to_string()));
        argv.push("--config".into());
        argv.push(self.config_path.to_string_lossy().into_owned());
        Ok(self.lab.output_in(&self.lb()?, &argv)?)
    }

    /// `canary status --json`, read into the daemon's own status types.
    pub fn status(&self) -> Result<Status, DeploymentError> {
        status_from(&self.cli(&["status", "--json"])?, "the load balancer")
    }

    /// The first service's status.
    pub fn service_status(&self) -> Result<ServiceStatus, DeploymentError> {
        self.status()?
            .services
            .into_iter()
            .next()
            .ok_or_else(|| DeploymentError::Parse {
                what: "canary status --json".into(),
                message: "it lists no service".into(),
            })
    }

    /// Polls the status until `pred` holds.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&ServiceStatus) -> bool,
    ) -> Result<ServiceStatus, DeploymentError> {
        let start = Instant::now();
        let mut last = String::new();
        while start.elapsed() < timeout {
            if let Ok(s) = self.service_status() {
                if pred(&s) {
                    return Ok(s);
                }
                last = format!(
                    "phase {} weight {} decision {}",
                    s.phase,
                    s.weight_percent,
                    s.last_decision
                        .as_ref()
                        .map_or("none", |d| d.message.as_str())
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        Err(DeploymentError::Timeout {
            what: what.into(),
            waited: timeout,
            last,
        })
    }

    /// Runs the load generator in client `client` with the given arguments; returns its report.
    pub fn load(&self, client: usize, spec: &LoadSpec) -> Result<Report, DeploymentError> {
        let node = &self.lab.clients()[client];
        let mut argv: Vec<String> = vec![self.loadgen_bin.to_string_lossy().into_owned()];
        argv.extend(spec.to_args());
        let out = self.lab.output_in(&node.netns, &argv)?;
        if !out.status.success() {
            return Err(DeploymentError::Io(format!(
                "canary-loadgen failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        serde_json::from_slice(&out.stdout).map_err(|e| DeploymentError::Parse {
            what: "canary-loadgen report".into(),
            message: format!("{e}: {}", String::from_utf8_lossy(&out.stdout)),
        })
    }

    /// Starts the load generator in the background in client `client`.
    pub fn spawn_load(
        &self,
        client: usize,
        spec: &LoadSpec,
    ) -> Result<LabProcess, DeploymentError> {
        spawn_load(&self.lab, &self.loadgen_bin, client, spec)
    }

    /// Waits for a load generator started with `spawn_load` to finish and returns its report.
    pub fn wait_load(
        &self,
        proc: LabProcess,
        timeout: Duration,
    ) -> Result<Report, DeploymentError> {
        wait_load(proc, timeout)
    }

    /// `POST /fault` on a backend (from its own namespace).
    pub fn fault(&self, node: &Node, json: &str) -> Result<(), DeploymentError> {
        let out = self.lab.output_in(
            &node.netns,
            &[
                "curl",
                "-sf",
                "-m",
                "5",
                "-X",
                "POST",
                "-H",
                "content-type: application/json",
                "-d",
                json,
                &format!("http://127.0.0.1:{SERVICE_PORT}/fault"),
            ],
        )?;
        if out.status.success() {
            Ok(())
        } else {
            Err(DeploymentError::Io(format!(
                "POST /fault {json} on {} failed: {}",
                node.name,
                String::from_utf8_lossy(&out.stderr)
            )))
        }
    }
}

/// How `canary run` is started in one namespace: the binary, its config and the spec's
/// launch settings (open-file limit, `--bpf-object`). Shared by the single-node and the
/// cluster deployments.
pub struct DaemonCommand<'a> {
    pub lab: &'a Lab,
    pub netns: &'a str,
    pub canary_bin: &'a Path,
    pub config_path: &'a Path,
    pub spec: &'a DeploymentSpec,
}

impl DaemonCommand<'_> {
    /// The command line of the daemon.
    pub fn argv(&self) -> Vec<String> {
        let mut argv = Vec::new();
        if let Some(n) = self.spec.daemon_open_files {
            // prlimit execs the daemon in place: the PID stays the daemon's.
            argv.extend(["prlimit".to_string(), format!("--nofile={n}:{n}")]);
        }
        argv.extend([
            path_text(self.canary_bin),
            "run".into(),
            "--config".into(),
            path_text(self.config_path),
        ]);
        if let Some(object) = &self.spec.bpf_object {
            argv.extend(["--bpf-object".into(), path_text(object)]);
        }
        argv
    }

    /// Starts the daemon in its namespace (logging at `info`).
    pub fn spawn(&self) -> Result<LabProcess, DeploymentError> {
        Ok(self
            .lab
            .spawn_in_env(self.netns, &self.argv(), &[("RUST_LOG", "info")])?)
    }

    /// `canary status --json` from the daemon's namespace, read into the status types.
    pub fn status(&self) -> Result<Status, DeploymentError> {
        let mut argv = vec![path_text(self.canary_bin)];
        argv.extend(["status".into(), "--json".into(), "--config".into()]);
        argv.push(path_text(self.config_path));
        status_from(&self.lab.output_in(self.netns, &argv)?, self.netns)
    }

    /// Waits until the daemon's status satisfies `ready`; fails with the end of its log when it
    /// exits or `waited` passes first.
    pub fn wait_ready(
        &self,
        daemon: &mut LabProcess,
        waited: Duration,
        ready: impl Fn(&Status) -> bool,
    ) -> Result<(), DeploymentError> {
        let start = Instant::now();
        while start.elapsed() < waited {
            if self.status().is_ok_and(|s| ready(&s)) {
                return Ok(());
            }
            if !daemon.is_running() {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Err(DeploymentError::NotReady {
            waited,
            log: daemon.log_tail(40),
        })
    }
}

/// Ready once the first poll has placed every service and probed every backend: before it,
/// /status lists no services at all, and traffic to the VIP would not be balanced yet.
pub fn all_probed(status: &Status) -> bool {
    !status.services.is_empty()
        && status.services.iter().all(|svc| {
            svc.backends
                .iter()
                .all(|b| b.down_reason.as_deref() != Some("not probed yet"))
        })
}

/// The status printed by `canary status --json` (`out`), or why there is none.
pub fn status_from(out: &std::process::Output, node: &str) -> Result<Status, DeploymentError> {
    if !out.status.success() {
        return Err(DeploymentError::Io(format!(
            "canary status in {node} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| DeploymentError::Parse {
        what: "canary status --json".into(),
        message: e.to_string(),
    })
}

/// The daemon's `dataplane.state_dir` in this lab.
pub fn state_dir(lab: &Lab) -> PathBuf {
    lab.state_dir().join("canary-state")
}

/// The daemon config for this lab, as the daemon's own config types.
pub fn config(
    spec: &DeploymentSpec,
    lab: &Lab,
    token_file: Option<&Path>,
) -> Result<RawConfig, DeploymentError> {
    let mut service = match &spec.service_section {
        Some(section) => given_service(section)?,
        None => lab_service(spec, lab),
    };
    service.rollout = rollout(spec);
    Ok(RawConfig {
        dataplane: RawDataplane {
            interface: "eth0".into(),
            xdp_mode: "auto".into(),
            flow_table_size: u64::from(spec.flow_table_size),
            heartbeat_timeout: spec.heartbeat_timeout.clone(),
            syn_replace_after: spec.syn_replace_after.clone(),
            flood_guard_rate: u64::from(spec.flood_guard_rate),
            udp_idle_timeout: spec.udp_idle_timeout.clone(),
            state_dir: path_text(&state_dir(lab)),
            bpffs: path_text(&lab.bpffs().join("canary")),
            // A routed lab's service is `ipip`: its packets leave from the balancer's address
            // of the VIP's family (both are set: the lab is dual-stack).
            tunnel_source_v4: tunnel_source(lab, |lb| lb.address.to_string()),
            tunnel_source_v6: tunnel_source(lab, |lb| lb.address6.to_string()),
            ..RawDataplane::default()
        },
        admin: RawAdmin {
            listen: format!("127.0.0.1:{ADMIN_PORT}"),
            token_file: token_file.map(path_text).unwrap_or_default(),
            ..RawAdmin::default()
        },
        services: vec![service],
        notify: spec.notify.clone(),
        cluster: canary_userspace::cluster::config::RawCluster::default(),
    })
}

/// An address of the lab's balancer (`address`) in a routed lab, else none.
fn tunnel_source(lab: &Lab, address: impl Fn(&Node) -> String) -> String {
    match lab.load_balancer() {
        Ok(lb) if lab.plan().spec.routed => address(lb),
        _ => String::new(),
    }
}

/// The daemon config for this lab, as the TOML file the daemon reads.
pub fn config_text(
    spec: &DeploymentSpec,
    lab: &Lab,
    token_file: Option<&Path>,
) -> Result<String, DeploymentError> {
    toml_text(&config(spec, lab, token_file)?)
}

/// A config as the TOML file the daemon reads.
pub fn toml_text(config: &RawConfig) -> Result<String, DeploymentError> {
    toml::to_string(config).map_err(|e| DeploymentError::Parse {
        what: "the daemon config".into(),
        message: format!("it does not serialise as TOML: {e}"),
    })
}

fn path_text(path: &Path) -> String {
    path.display().to_string()
}

/// The lab's service: every backend with its group, address, MAC and URLs, and the upstream
/// preset of the model server. IPv6 (`spec.ipv6`): the IPv6 VIP and addresses, no MACs (the
/// daemon resolves them). In a routed lab: `forwarding = "ipip"`, and no MACs.
fn lab_service(spec: &DeploymentSpec, lab: &Lab) -> RawService {
    let ipv6 = spec.ipv6;
    let routed = lab.plan().spec.routed;
    let backends = [("stable", lab.stable()), ("canary", lab.canary())]
        .into_iter()
        .flat_map(|(group, nodes)| {
            nodes.iter().map(move |n| RawBackend {
                name: n.name.clone(),
                group: group.into(),
                address: if ipv6 {
                    n.address6.to_string()
                } else {
                    n.address.to_string()
                },
                mac: if ipv6 || routed {
                    String::new()
                } else {
                    n.mac.to_string()
                },
                health_url: if ipv6 {
                    n.url6("/healthz")
                } else {
                    n.url("/healthz")
                },
                metrics_url: if ipv6 {
                    n.url6("/metrics")
                } else {
                    n.url("/metrics")
                },
            })
        })
        .collect();
    RawService {
        name: "sentiment".into(),
        vip: if ipv6 {
            format!("[{}]:{SERVICE_PORT}", lab.vip6())
        } else {
            format!("{}:{SERVICE_PORT}", lab.vip())
        },
        protocol: spec.protocol.clone(),
        affinity: spec.affinity.clone(),
        forwarding: if routed { "ipip" } else { "l2" }.into(),
        backends,
        rollout: RawRollout::default(),
        upstream: RawUpstream {
            preset: Some(spec.server.preset().into()),
            ..RawUpstream::default()
        },
    }
}

/// The one `[[services]]` table of `section` (for example printed by `canary init`); it must
/// not have a rollout of its own, the deployment's settings are used.
fn given_service(section: &str) -> Result<RawService, DeploymentError> {
    let parse_error = |message: String| DeploymentError::Parse {
        what: "the given service section".into(),
        message,
    };
    let table: toml::Table = toml::from_str(section).map_err(|e| parse_error(e.to_string()))?;
    let has_rollout = table
        .get("services")
        .and_then(toml::Value::as_array)
        .is_some_and(|s| s.iter().any(|s| s.get("rollout").is_some()));
    if has_rollout {
        return Err(parse_error(
            "it has a [services.rollout] table; leave it out (the deployment spec sets the \
             rollout)"
                .into(),
        ));
    }
    let mut config: RawConfig = table
        .try_into()
        .map_err(|e: toml::de::Error| parse_error(e.to_string()))?;
    match config.services.len() {
        1 => Ok(config.services.remove(0)),
        n => Err(parse_error(format!(
            "it has {n} [[services]] tables; give exactly one"
        ))),
    }
}

/// The deployment's rollout settings.
fn rollout(spec: &DeploymentSpec) -> RawRollout {
    RawRollout {
        steps: spec.steps.clone(),
        interval: spec.interval.clone(),
        poll_interval: spec.poll_interval.clone(),
        min_samples: spec.min_samples,
        warmup_requests: spec.warmup_requests,
        warmup_url: spec.warmup_url.clone(),
        warmup_body: spec.warmup_body.clone(),
        rollback: spec.rollback.clone(),
        start: spec.start.clone(),
        metrics_missing: spec.metrics_missing.clone(),
        metrics_missing_intervals: spec.metrics_missing_intervals,
        dry_run: spec.dry_run.clone(),
        thresholds: RawThresholds {
            max_error_rate_increase: spec.max_error_rate_increase,
            max_latency_increase_ms: spec.max_latency_increase_ms,
            error_spike: spec.error_spike,
            max_prediction_shift: spec.max_prediction_shift,
            confidence: spec.confidence,
            ..RawThresholds::default()
        },
    }
}

/// The value of the sample `name{labels}` in a Prometheus text exposition: every given label
/// must match; other labels are ignored. `None` when no sample matches.
pub fn metric_value(exposition: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, label_text) = match series.split_once('{') {
                Some((m, rest)) => (m, rest.strip_suffix('}')?),
                None => (series, ""),
            };
            if metric != name {
                return None;
            }
            let all = labels.iter().all(|(k, v)| {
                label_text
                    .split(',')
                    .any(|kv| kv.trim() == format!("{k}=\"{v}\""))
            });
            all.then(|| value.parse().ok()).flatten()
        })
}

/// Starts `loadgen_bin` with `spec` in the background in client `client` of `lab`.
pub(crate) fn spawn_load(
    lab: &Lab,
    loadgen_bin: &Path,
    client: usize,
    spec: &LoadSpec,
) -> Result<LabProcess, DeploymentError> {
    let node = &lab.clients()[client];
    let mut argv: Vec<String> = vec![loadgen_bin.to_string_lossy().into_owned()];
    argv.extend(spec.to_args());
    Ok(lab.spawn_in(&node.netns, &argv)?)
}

/// Waits for a load generator from [`spawn_load`] to finish (killed after `timeout`) and
/// returns its report.
pub(crate) fn wait_load(
    mut proc: LabProcess,
    timeout: Duration,
) -> Result<Report, DeploymentError> {
    let start = Instant::now();
    let status = loop {
        if let Some(status) = proc.try_wait() {
            break status;
        }
        if start.elapsed() > timeout {
            proc.kill();
            return Err(DeploymentError::Timeout {
                what: "canary-loadgen".into(),
                waited: timeout,
                last: proc.log_tail(5),
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let log = proc.log_text();
    if !status.success() {
        return Err(DeploymentError::Io(format!(
            "canary-loadgen exited {status}: {}",
            proc.log_tail(10)
        )));
    }
    // The report is the one JSON line on stdout (the log also holds stderr).
    let line = log
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_default();
    serde_json::from_str(line).map_err(|e| DeploymentError::Parse {
        what: "canary-loadgen report".into(),
        message: format!("{e}: {}", proc.log_tail(5)),
    })
}

#[cfg(test)]
mod tests {
    use canary_userspace::config::raw::RawConfig;
    use canary_userspace::config::Config;

    use super::{given_service, metric_value, rollout, toml_text, DeploymentSpec};

    const SECTION: &str = r#"
[[services]]
name = "sentiment"
vip = "198.18.0.100:8080"

  [[services.backends]]
  name = "s0"
  group = "stable"
  address = "198.18.0.20"
  mac = "02:00:00:00:00:14"

  [services.upstream]
  preset = "prometheus-client"
"#;

    #[test]
    fn a_given_service_gets_the_deployment_rollout_and_the_daemon_accepts_it() {
        let mut spec = DeploymentSpec::new("t1");
        spec.steps = vec![20.0, 100.0];
        spec.confidence = 0.95;
        let mut service = given_service(SECTION).unwrap();
        service.rollout = rollout(&spec);
        let raw = RawConfig {
            services: vec![service],
            ..RawConfig::default()
        };
        let config = Config::from_toml_str(&toml_text(&raw).unwrap()).unwrap();
        let service = &config.services[0];
        assert_eq!(service.backends.len(), 1);
        let steps: Vec<f64> = service.rollout.steps.iter().map(|w| w.percent()).collect();
        assert_eq!(steps, [20.0, 100.0]);
        assert!((service.rollout.thresholds.confidence - 0.95).abs() < 1e-12);
    }

    #[test]
    fn a_given_service_with_its_own_rollout_or_not_exactly_one_is_refused() {
        let with_rollout = format!("{SECTION}\n  [services.rollout]\n  steps = [50.0]\n");
        let err = given_service(&with_rollout).unwrap_err().to_string();
        assert!(err.contains("[services.rollout]"), "{err}");
        let two = format!("{SECTION}{}", SECTION.replace("\"sentiment\"", "\"other\""));
        let err = given_service(&two).unwrap_err().to_string();
        assert!(err.contains("2 [[services]]"), "{err}");
        let err = given_service("[[services]]\nname = 1\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("given service section"), "{err}");
    }

    #[test]
    fn metric_values_are_found_by_name_and_labels() {
        let text = "# TYPE canary_weight_ratio gauge\n\
                    canary_weight_ratio{service=\"sentiment\"} 0.25\n\
                    canary_rollout_phase{phase=\"stepping\",service=\"sentiment\"} 1\n\
                    canary_rollout_phase{phase=\"promoted\",service=\"sentiment\"} 0\n\
                    canary_up 1\n";
        assert_eq!(
            metric_value(text, "canary_weight_ratio", &[("service", "sentiment")]),
            Some(0.25)
        );
        assert_eq!(
            metric_value(text, "canary_rollout_phase", &[("phase", "promoted")]),
            Some(0.0)
        );
        assert_eq!(metric_value(text, "canary_up", &[]), Some(1.0));
        assert_eq!(metric_value(text, "canary_weight", &[]), None);
        assert_eq!(
            metric_value(text, "canary_weight_ratio", &[("service", "other")]),
            None
        );
    }
}
