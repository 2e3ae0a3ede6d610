//! The TOML configuration: parsing, defaults and validation.
//!
//! Parsing happens in three passes so that one run reports every mistake at once:
//! 1. TOML syntax (one error: the file cannot be read further);
//! 2. a walk over the tables that reports every unknown key with its path (and a likely
//!    intended key), then removes it;
//! 3. typed deserialisation (`deny_unknown_fields`, key path on a type error) followed by
//!    validation, which checks every value and collects all problems.
//!
//! Nothing is half-applied: a caller gets a complete [`Config`] or a [`ConfigError`].
//!
//! This module holds the validated types and loading; [`raw`] the file as written (and the
//! unknown-key pass), `validate` the checks, one function per section.

pub mod raw;
#[cfg(test)]
mod tests;
mod validate;

use std::ffi::CString;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::domain::{
    Affinity, Forwarding, Group, MissingPolicy, Protocol, RollbackMode, StartMode, Weight, XdpMode,
};
use crate::upstream::preset::{self, Preset};
use crate::upstream::Selector;

/// One mistake in a config file: the key path (`services[0].backends[1].address`) and what is
/// wrong with it, including how to fix it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Why a config could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {}: {source}; check the path and its permissions", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The text is not valid TOML (the message carries line and column).
    #[error("config is not valid TOML: {0}")]
    Syntax(String),
    /// Valid TOML, but keys or values are wrong: every problem found, one per line.
    #[error("{}", render_problems(problems))]
    Invalid { problems: Vec<Problem> },
    /// `dataplane.interface` names no interface in this network namespace.
    #[error("dataplane.interface: no network interface named `{name}` in this network namespace; use one listed by `ip link`")]
    NoInterface { name: String },
}

impl ConfigError {
    /// The individual problems (empty for read, syntax and interface errors).
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Invalid { problems } => problems,
            _ => &[],
        }
    }
}

fn render_problems(problems: &[Problem]) -> String {
    let mut out = format!(
        "config has {} problem{}:",
        problems.len(),
        if problems.len() == 1 { "" } else { "s" }
    );
    for p in problems {
        out.push_str("\n  ");
        out.push_str(&p.to_string());
    }
    out
}

/// A validated configuration.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Config {
    pub dataplane: DataplaneConfig,
    pub admin: AdminConfig,
    pub services: Vec<ServiceConfig>,
    /// `[[notify]]` webhooks (applied at start).
    pub notify: Vec<crate::notify::NotifyConfig>,
    /// `[cluster]`: where rollout decisions live (one node and `state_dir`, or etcd).
    pub cluster: crate::cluster::config::ClusterConfig,
}

/// `[dataplane]`
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DataplaneConfig {
    pub interface: String,
    pub xdp_mode: XdpMode,
    pub flow_table_size: u32,
    pub heartbeat_timeout: Duration,
    pub state_dir: PathBuf,
    pub bpffs: PathBuf,
    /// Seed of the flow hash; nodes that share traffic must share it.
    pub hash_seed: u32,
    /// A TCP SYN replaces its 5-tuple's flow-table entry only when the entry is at least this
    /// old (whole milliseconds; zero: every SYN replaces).
    pub syn_replace_after: Duration,
    /// New flows per second per CPU above which new flows take no flow-table entry; 0: off.
    pub flood_guard_rate: u32,
    /// Outer source address of IPv4-in-IPv4 packets (`ipip` services with an IPv4 VIP).
    pub tunnel_source_v4: Option<Ipv4Addr>,
    /// Outer source address of IPv6-in-IPv6 packets (`ipip` services with an IPv6 VIP).
    pub tunnel_source_v6: Option<Ipv6Addr>,
    /// A UDP flow's flow-table entry without a datagram for this long is idle: the flow's next
    /// datagram is balanced as a new flow (whole milliseconds; zero: never idle).
    pub udp_idle_timeout: Duration,
}

/// Longest `dataplane.syn_replace_after`.
pub const MAX_SYN_REPLACE_AFTER: Duration = Duration::from_hours(1);
/// Longest `dataplane.udp_idle_timeout`.
pub const MAX_UDP_IDLE_TIMEOUT: Duration = Duration::from_hours(24);
/// Smallest non-zero `dataplane.flood_guard_rate`.
pub const MIN_FLOOD_GUARD_RATE: u64 = 100;

/// Default `dataplane.hash_seed`.
pub const DEFAULT_HASH_SEED: u32 = 0x6361_6e61;

/// `[admin]`
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// `None` when `token_file = ""` (allowed only on a loopback `listen`): the daemon then
    /// generates a token in `state_dir` ([`crate::token::GENERATED_TOKEN_FILE`]).
    pub token_file: Option<PathBuf>,
    /// Open admin connections at most; a new one beyond it closes the oldest idle one.
    pub max_connections: usize,
    /// A request's headers must arrive within this time.
    pub header_read_timeout: Duration,
    /// A connection with no request in progress is closed after this time.
    pub idle_timeout: Duration,
}

/// `[[services]]`
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ServiceConfig {
    pub name: String,
    pub vip: SocketAddr,
    pub protocol: Protocol,
    pub affinity: Affinity,
    pub forwarding: Forwarding,
    /// `ipip`: the outer source address (the dataplane's `tunnel_source_v4` or `_v6`, by the
    /// VIP's family); `None` for `l2`.
    pub tunnel_source: Option<IpAddr>,
    pub backends: Vec<BackendConfig>,
    pub rollout: RolloutConfig,
    pub upstream: UpstreamConfig,
}

impl ServiceConfig {
    /// Backends of one group, in config order.
    pub fn group(&self, group: Group) -> impl Iterator<Item = &BackendConfig> {
        self.backends.iter().filter(move |b| b.group == group)
    }

    /// A stable identity of the canary group (sorted `name@address`), used to notice that a
    /// reload changed the canary version and a new rollout must start.
    pub fn canary_fingerprint(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .group(Group::Canary)
            .map(|b| format!("{}@{}", b.name, b.address))
            .collect();
        v.sort();
        v
    }
}

/// `[[services.backends]]`
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BackendConfig {
    pub name: String,
    pub group: Group,
    pub address: IpAddr,
    /// `None`: resolve from the neighbour table (`l2` services; `ipip` ones need no MAC).
    pub mac: Option<[u8; 6]>,
    pub health_url: String,
    pub metrics_url: String,
}

/// `[services.rollout]`
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RolloutConfig {
    /// Strictly increasing, ending at 100 %.
    pub steps: Vec<Weight>,
    pub interval: Duration,
    pub poll_interval: Duration,
    pub min_samples: u64,
    pub warmup_requests: u32,
    /// `None`: use each canary backend's `health_url`.
    pub warmup_url: Option<String>,
    /// JSON body: warm-up requests are POSTs of it (they run the model); `None`: GETs.
    pub warmup_body: Option<String>,
    pub rollback: RollbackMode,
    pub start: StartMode,
    pub metrics_missing: MissingPolicy,
    pub metrics_missing_intervals: u32,
    pub thresholds: Thresholds,
    /// Signals judged and reported but never holding or rolling back.
    pub dry_run: Vec<crate::judge::Signal>,
}

/// `[services.rollout.thresholds]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Thresholds {
    /// Absolute, canary minus stable, as a fraction (0.02 = 2 percentage points).
    pub max_error_rate_increase: f64,
    /// Relative, canary over stable (1.5 = at most 1.5 times stable); 0 switches it off.
    pub max_error_rate_ratio: f64,
    /// On mean and on p95, canary minus stable.
    pub max_latency_increase_ms: f64,
    /// On mean and on p95, canary over stable; 0 switches it off.
    pub max_latency_ratio: f64,
    /// Canary error rate over the latest poll(s) above which a canary significantly worse
    /// than stable over the same polls rolls back at once.
    pub error_spike: f64,
    /// Total variation distance between the groups' class distributions.
    pub max_prediction_shift: f64,
    /// 1 - the false-alarm rate of a whole rollout.
    pub confidence: f64,
}

/// `[services.upstream]`: which series of the backends' Prometheus exposition the judge reads
/// (selectors with label matchers; an empty `latency` or `predictions` turns that signal off),
/// and how much of a backend's exposition the daemon reads at most.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpstreamConfig {
    /// The preset the selectors came from, if any (explicit keys override it).
    pub preset: Option<String>,
    pub requests: Selector,
    pub errors: Selector,
    pub latency: Selector,
    pub predictions: Selector,
    pub prediction_label: String,
    /// Label naming the model version on the selected series (`""`: none); shown in status.
    pub version_label: String,
    /// A larger `/metrics` body is a failed scrape.
    pub max_scrape_bytes: u64,
    /// More samples in one exposition is a failed scrape.
    pub max_series: usize,
    /// More prediction classes make the predictions series missing.
    pub max_prediction_classes: usize,
}

/// Default `upstream.max_scrape_bytes`: 4 MiB, a hundred times a large real exposition.
pub const DEFAULT_MAX_SCRAPE_BYTES: u64 = 4 << 20;
/// Default `upstream.max_series`.
pub const DEFAULT_MAX_SERIES: usize = 20_000;
/// Default `upstream.max_prediction_classes`.
pub const DEFAULT_MAX_PREDICTION_CLASSES: usize = 1_000;

impl UpstreamConfig {
    /// The resolved selectors and limits, one per line, as `canary validate` prints them.
    pub fn describe(&self) -> Vec<String> {
        let or_off = |s: &Selector| {
            if s.is_empty() {
                "off".to_string()
            } else {
                s.to_string()
            }
        };
        let mut lines = vec![
            format!(
                "upstream ({}):",
                self.preset
                    .as_deref()
                    .map_or_else(|| "no preset".to_string(), |p| format!("preset {p}"))
            ),
            format!("  requests     {}", or_off(&self.requests)),
            format!("  errors       {}", or_off(&self.errors)),
            format!("  latency      {}", or_off(&self.latency)),
        ];
        lines.push(if self.predictions.is_empty() {
            "  predictions  off".to_string()
        } else {
            format!(
                "  predictions  {}, class label `{}`",
                self.predictions, self.prediction_label
            )
        });
        if !self.version_label.is_empty() {
            lines.push(format!("  version      label `{}`", self.version_label));
        }
        lines.push(format!(
            "  limits       {} bytes, {} series, {} prediction classes per scrape",
            self.max_scrape_bytes, self.max_series, self.max_prediction_classes
        ));
        lines
    }

    /// The selectors of a preset, with the default limits.
    pub fn from_preset(p: &Preset) -> UpstreamConfig {
        let parse = |s: &str| Selector::parse(s).expect("preset selectors are valid");
        UpstreamConfig {
            preset: Some(p.name.to_string()),
            requests: parse(p.requests),
            errors: parse(p.errors),
            latency: parse(p.latency),
            predictions: parse(p.predictions),
            prediction_label: p.prediction_label.to_string(),
            version_label: p.version_label.to_string(),
            max_scrape_bytes: DEFAULT_MAX_SCRAPE_BYTES,
            max_series: DEFAULT_MAX_SERIES,
            max_prediction_classes: DEFAULT_MAX_PREDICTION_CLASSES,
        }
    }
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            max_error_rate_increase: 0.02,
            max_error_rate_ratio: 0.0,
            max_latency_increase_ms: 50.0,
            max_latency_ratio: 0.0,
            error_spike: 0.10,
            max_prediction_shift: 0.10,
            confidence: 0.99,
        }
    }
}

impl Default for UpstreamConfig {
    /// `canary-model`'s series, without naming the preset.
    fn default() -> Self {
        UpstreamConfig {
            preset: None,
            ..UpstreamConfig::from_preset(&preset::CANARY_MODEL)
        }
    }
}

impl Default for RolloutConfig {
    fn default() -> Self {
        RolloutConfig {
            steps: [10, 25, 50, 75, 100]
                .iter()
                .map(|p| Weight::from_basis_points(p * 100))
                .collect(),
            interval: Duration::from_secs(15),
            poll_interval: Duration::from_secs(1),
            min_samples: 1000,
            warmup_requests: 20,
            warmup_url: None,
            warmup_body: None,
            rollback: RollbackMode::Drain,
            start: StartMode::Auto,
            metrics_missing: MissingPolicy::Hold,
            metrics_missing_intervals: 3,
            thresholds: Thresholds::default(),
            dry_run: Vec::new(),
        }
    }
}

impl Config {
    /// Reads, parses and validates a config file (no OS checks; see [`check_interface`]).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::from_toml_str(&text)
    }

    /// Parses and validates config text.
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        let mut table: toml::Table = toml::from_str(text)
            .map_err(|e| ConfigError::Syntax(e.to_string().trim().to_string()))?;
        let mut problems = Vec::new();
        raw::strip_all_unknown(&mut table, &mut problems);
        let raw: raw::RawConfig = match serde_path_to_error::deserialize(toml::Value::Table(table))
        {
            Ok(raw) => raw,
            Err(e) => {
                let path = e.path().to_string();
                let inner = e.into_inner();
                let message = inner.message().trim().to_string();
                // A missing required key is reported at the enclosing table.
                let key = if path == "." { String::new() } else { path };
                problems.push(Problem {
                    key: if key.is_empty() {
                        "(top level)".into()
                    } else {
                        key
                    },
                    message: format!(
                        "{message}; see the README's configuration section for the expected type"
                    ),
                });
                return Err(ConfigError::Invalid { problems });
            }
        };
        match validate::validate(&raw) {
            Ok(config) if problems.is_empty() => Ok(config),
            Ok(_) => Err(ConfigError::Invalid { problems }),
            Err(more) => {
                problems.extend(more);
                Err(ConfigError::Invalid { problems })
            }
        }
    }

    /// The service called `name`.
    pub fn service(&self, name: &str) -> Option<&ServiceConfig> {
        self.services.iter().find(|s| s.name == name)
    }
}

/// Reads a token file (trimmed; refused when empty or readable by other users).
pub use crate::token::read_token;

/// Reads and validates a config file; errors name the file.
pub fn read_config(path: &Path) -> anyhow::Result<Config> {
    Config::load(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// [`read_config`], plus the check that `dataplane.interface` exists here.
pub fn load_config(path: &Path) -> anyhow::Result<Config> {
    let config = read_config(path)?;
    check_interface(&config.dataplane.interface)?;
    Ok(config)
}

/// Resolves `dataplane.interface` in the current network namespace, returning its ifindex.
pub fn check_interface(name: &str) -> Result<u32, ConfigError> {
    let not_found = || ConfigError::NoInterface {
        name: name.to_string(),
    };
    let c_name = CString::new(name).map_err(|_| not_found())?;
    // SAFETY: `c_name` is a valid NUL-terminated string that outlives the call;
    // if_nametoindex only reads it.
    let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    if index == 0 {
        Err(not_found())
    } else {
        Ok(index)
    }
}
