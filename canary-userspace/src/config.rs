//! The TOML configuration: parsing, defaults and validation.
//!
//! Parsing happens in three passes so that one run reports every mistake at once:
//! 1. TOML syntax (one error: the file cannot be read further);
//! 2. a walk over the tables that reports every unknown key with its path (and a likely
//!    intended key), then removes it;
//! 3. typed deserialisation (`deny_unknown_fields`, key path on a type error) followed by
//!    [`validate`], which checks every value and collects all problems.
//!
//! Nothing is half-applied: a caller gets a complete [`Config`] or a [`ConfigError`].

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use canary_common::{BUCKETS, MAX_BACKENDS, MAX_BACKENDS_PER_GROUP, MAX_SERVICES};
use serde::{Deserialize, Serialize};

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

/// A canary weight: the share of new flows sent to the canary group, in basis points
/// (0 = none, 10 000 = all). Percent values with up to two decimals convert exactly.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Weight(u32);

/// Why a percentage is not a weight.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum WeightError {
    #[error("{0} is not between 0 and 100 percent")]
    OutOfRange(f64),
    #[error(
        "{0} has more than two decimals; weights have 0.01 percent resolution (e.g. 12.5 or 0.25)"
    )]
    TooFine(f64),
}

impl Weight {
    pub const ZERO: Weight = Weight(0);
    pub const FULL: Weight = Weight(BUCKETS);

    /// From basis points; values above 10 000 are clamped to 10 000.
    pub fn from_basis_points(bp: u32) -> Weight {
        Weight(bp.min(BUCKETS))
    }

    /// From a percentage with at most two decimals (`12.5` -> 1250 basis points).
    pub fn from_percent(percent: f64) -> Result<Weight, WeightError> {
        if !percent.is_finite() || !(0.0..=100.0).contains(&percent) {
            return Err(WeightError::OutOfRange(percent));
        }
        let bp = percent * 100.0;
        let rounded = bp.round();
        // Tolerance absorbs binary representation error of decimal input like 0.29.
        if (bp - rounded).abs() > 1e-6 {
            return Err(WeightError::TooFine(percent));
        }
        Ok(Weight(rounded as u32))
    }

    pub fn basis_points(self) -> u32 {
        self.0
    }

    pub fn percent(self) -> f64 {
        f64::from(self.0) / 100.0
    }

    /// Share of new flows in 0..=1.
    pub fn ratio(self) -> f64 {
        f64::from(self.0) / f64::from(BUCKETS)
    }
}

impl fmt::Display for Weight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}%", self.percent())
    }
}

macro_rules! keyword_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub enum $name { $($(#[$vm])* #[serde(rename = $text)] $variant),+ }

        impl $name {
            const CHOICES: &'static [&'static str] = &[$($text),+];

            fn parse(s: &str) -> Option<Self> {
                match s { $($text => Some(Self::$variant),)+ _ => None }
            }

            /// The keyword used in the config file.
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $text),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

keyword_enum!(
    /// How XDP attaches: `auto` tries native (driver) mode and falls back to generic.
    XdpMode { Auto = "auto", Native = "native", Skb = "skb" }
);
keyword_enum!(
    /// Transport protocol of a service.
    Protocol { Tcp = "tcp", Udp = "udp" }
);
keyword_enum!(
    /// What keeps a client on one backend: the flow (5-tuple) or the client address.
    Affinity { Flow = "flow", ClientIp = "client-ip" }
);
keyword_enum!(
    /// Backend group of a service.
    Group { Stable = "stable", Canary = "canary" }
);
keyword_enum!(
    /// On rollback: `drain` lets established canary flows finish; `reset` re-chooses them.
    RollbackMode { Drain = "drain", Reset = "reset" }
);
keyword_enum!(
    /// Whether a new rollout starts stepping by itself or waits for `canary resume`.
    StartMode { Auto = "auto", Paused = "paused" }
);
keyword_enum!(
    /// What to do while backend metrics are missing.
    MissingPolicy { Hold = "hold", Rollback = "rollback" }
);

#[allow(
    clippy::derivable_impls,
    reason = "the enum comes from keyword_enum!, which derives no Default"
)]
impl Default for Affinity {
    fn default() -> Self {
        Affinity::Flow
    }
}

impl Group {
    /// Index used by the data plane (`GROUP_STABLE` / `GROUP_CANARY`).
    pub const fn index(self) -> u32 {
        match self {
            Group::Stable => canary_common::GROUP_STABLE,
            Group::Canary => canary_common::GROUP_CANARY,
        }
    }
}

/// A validated configuration.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Config {
    pub dataplane: DataplaneConfig,
    pub admin: AdminConfig,
    pub services: Vec<ServiceConfig>,
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
}

/// Default `dataplane.hash_seed`.
pub const DEFAULT_HASH_SEED: u32 = 0x6361_6e61;

/// `[admin]`
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// `None` when `token_file = ""` (allowed only on a loopback `listen`).
    pub token_file: Option<PathBuf>,
}

/// `[[services]]`
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ServiceConfig {
    pub name: String,
    pub vip: SocketAddr,
    pub protocol: Protocol,
    pub affinity: Affinity,
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
    /// `None`: resolve from the neighbour table.
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
    pub rollback: RollbackMode,
    pub start: StartMode,
    pub metrics_missing: MissingPolicy,
    pub metrics_missing_intervals: u32,
    pub thresholds: Thresholds,
}

/// `[services.rollout.thresholds]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Thresholds {
    /// Absolute, canary minus stable, as a fraction (0.02 = 2 percentage points).
    pub max_error_rate_increase: f64,
    /// On mean and on p95, canary minus stable.
    pub max_latency_increase_ms: f64,
    /// Canary error rate over one poll that rolls back at once.
    pub error_spike: f64,
    /// Total variation distance between the groups' class distributions.
    pub max_prediction_shift: f64,
    /// 1 - the false-alarm rate of a whole rollout.
    pub confidence: f64,
}

/// `[services.upstream]`: series names in the backends' Prometheus exposition. An empty
/// `latency` or `predictions` turns that signal off.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpstreamConfig {
    pub requests: String,
    pub errors: String,
    pub latency: String,
    pub predictions: String,
    pub prediction_label: String,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            max_error_rate_increase: 0.02,
            max_latency_increase_ms: 50.0,
            error_spike: 0.10,
            max_prediction_shift: 0.10,
            confidence: 0.99,
        }
    }
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            requests: "requests_total".into(),
            errors: "request_errors_total".into(),
            latency: "request_duration_seconds".into(),
            predictions: "predictions_total".into(),
            prediction_label: "class".into(),
        }
    }
}

impl Default for RolloutConfig {
    fn default() -> Self {
        RolloutConfig {
            steps: [10, 25, 50, 75, 100]
                .iter()
                .map(|p| Weight(p * 100))
                .collect(),
            interval: Duration::from_secs(15),
            poll_interval: Duration::from_secs(1),
            min_samples: 1000,
            warmup_requests: 20,
            warmup_url: None,
            rollback: RollbackMode::Drain,
            start: StartMode::Auto,
            metrics_missing: MissingPolicy::Hold,
            metrics_missing_intervals: 3,
            thresholds: Thresholds::default(),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Raw (as written) form. Values that can be wrong in content rather than type are strings
// here and parsed in `validate`, so that all of them are reported together.

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    dataplane: RawDataplane,
    #[serde(default)]
    admin: RawAdmin,
    #[serde(default)]
    services: Vec<RawService>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawDataplane {
    interface: String,
    xdp_mode: String,
    flow_table_size: u64,
    heartbeat_timeout: String,
    state_dir: String,
    bpffs: String,
    hash_seed: u32,
}

impl Default for RawDataplane {
    fn default() -> Self {
        RawDataplane {
            interface: "eth0".into(),
            xdp_mode: "auto".into(),
            flow_table_size: u64::from(canary_common::DEFAULT_FLOW_TABLE_SIZE),
            heartbeat_timeout: "30s".into(),
            state_dir: "/var/lib/canary".into(),
            bpffs: "/sys/fs/bpf/canary".into(),
            hash_seed: DEFAULT_HASH_SEED,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawAdmin {
    listen: String,
    token_file: String,
}

impl Default for RawAdmin {
    fn default() -> Self {
        RawAdmin {
            listen: "127.0.0.1:9100".into(),
            token_file: String::new(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: String,
    vip: String,
    #[serde(default = "default_protocol")]
    protocol: String,
    #[serde(default = "default_affinity")]
    affinity: String,
    #[serde(default)]
    backends: Vec<RawBackend>,
    #[serde(default)]
    rollout: RawRollout,
    #[serde(default)]
    upstream: UpstreamConfigRaw,
}

fn default_protocol() -> String {
    "tcp".into()
}

fn default_affinity() -> String {
    "flow".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackend {
    name: String,
    group: String,
    address: String,
    #[serde(default)]
    mac: String,
    #[serde(default)]
    health_url: String,
    #[serde(default)]
    metrics_url: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawRollout {
    steps: Vec<f64>,
    interval: String,
    poll_interval: String,
    min_samples: u64,
    warmup_requests: u32,
    warmup_url: String,
    rollback: String,
    start: String,
    metrics_missing: String,
    metrics_missing_intervals: u32,
    thresholds: RawThresholds,
}

impl Default for RawRollout {
    fn default() -> Self {
        RawRollout {
            steps: vec![10.0, 25.0, 50.0, 75.0, 100.0],
            interval: "15s".into(),
            poll_interval: "1s".into(),
            min_samples: 1000,
            warmup_requests: 20,
            warmup_url: String::new(),
            rollback: "drain".into(),
            start: "auto".into(),
            metrics_missing: "hold".into(),
            metrics_missing_intervals: 3,
            thresholds: RawThresholds::default(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawThresholds {
    max_error_rate_increase: f64,
    max_latency_increase_ms: f64,
    error_spike: f64,
    max_prediction_shift: f64,
    confidence: f64,
}

impl Default for RawThresholds {
    fn default() -> Self {
        let t = Thresholds::default();
        RawThresholds {
            max_error_rate_increase: t.max_error_rate_increase,
            max_latency_increase_ms: t.max_latency_increase_ms,
            error_spike: t.error_spike,
            max_prediction_shift: t.max_prediction_shift,
            confidence: t.confidence,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct UpstreamConfigRaw {
    requests: String,
    errors: String,
    latency: String,
    predictions: String,
    prediction_label: String,
}

impl Default for UpstreamConfigRaw {
    fn default() -> Self {
        let u = UpstreamConfig::default();
        UpstreamConfigRaw {
            requests: u.requests,
            errors: u.errors,
            latency: u.latency,
            predictions: u.predictions,
            prediction_label: u.prediction_label,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Known keys per table, for the unknown-key pass. Kept next to the raw structs; the test
// `every_documented_key_is_accepted` fails if the two drift apart.

const ROOT_KEYS: &[&str] = &["dataplane", "admin", "services"];
const DATAPLANE_KEYS: &[&str] = &[
    "interface",
    "xdp_mode",
    "flow_table_size",
    "heartbeat_timeout",
    "state_dir",
    "bpffs",
    "hash_seed",
];
const ADMIN_KEYS: &[&str] = &["listen", "token_file"];
const SERVICE_KEYS: &[&str] = &[
    "name", "vip", "protocol", "affinity", "backends", "rollout", "upstream",
];
const BACKEND_KEYS: &[&str] = &[
    "name",
    "group",
    "address",
    "mac",
    "health_url",
    "metrics_url",
];
const ROLLOUT_KEYS: &[&str] = &[
    "steps",
    "interval",
    "poll_interval",
    "min_samples",
    "warmup_requests",
    "warmup_url",
    "rollback",
    "start",
    "metrics_missing",
    "metrics_missing_intervals",
    "thresholds",
];
const THRESHOLD_KEYS: &[&str] = &[
    "max_error_rate_increase",
    "max_latency_increase_ms",
    "error_spike",
    "max_prediction_shift",
    "confidence",
];
const UPSTREAM_KEYS: &[&str] = &[
    "requests",
    "errors",
    "latency",
    "predictions",
    "prediction_label",
];

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Removes keys not in `known` from `table`, recording a problem for each.
fn strip_unknown(table: &mut toml::Table, known: &[&str], path: &str, problems: &mut Vec<Problem>) {
    let unknown: Vec<String> = table
        .keys()
        .filter(|k| !known.contains(&k.as_str()))
        .cloned()
        .collect();
    for key in unknown {
        table.remove(&key);
        let best = known
            .iter()
            .map(|k| (edit_distance(&key, k), *k))
            .min()
            .filter(|(d, _)| *d <= 3);
        let hint = match best {
            Some((_, k)) => format!("; did you mean `{k}`?"),
            None => format!("; remove it (known keys here: {})", known.join(", ")),
        };
        problems.push(Problem {
            key: join_key(path, &key),
            message: format!("unknown key{hint}"),
        });
    }
}

fn join_key(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn sub_table<'a>(table: &'a mut toml::Table, key: &str) -> Option<&'a mut toml::Table> {
    table.get_mut(key).and_then(toml::Value::as_table_mut)
}

fn strip_all_unknown(root: &mut toml::Table, problems: &mut Vec<Problem>) {
    strip_unknown(root, ROOT_KEYS, "", problems);
    if let Some(t) = sub_table(root, "dataplane") {
        strip_unknown(t, DATAPLANE_KEYS, "dataplane", problems);
    }
    if let Some(t) = sub_table(root, "admin") {
        strip_unknown(t, ADMIN_KEYS, "admin", problems);
    }
    let Some(services) = root.get_mut("services").and_then(toml::Value::as_array_mut) else {
        return;
    };
    for (i, service) in services.iter_mut().enumerate() {
        let Some(service) = service.as_table_mut() else {
            continue;
        };
        let path = format!("services[{i}]");
        strip_unknown(service, SERVICE_KEYS, &path, problems);
        if let Some(backends) = service
            .get_mut("backends")
            .and_then(toml::Value::as_array_mut)
        {
            for (j, backend) in backends.iter_mut().enumerate() {
                if let Some(backend) = backend.as_table_mut() {
                    strip_unknown(
                        backend,
                        BACKEND_KEYS,
                        &format!("{path}.backends[{j}]"),
                        problems,
                    );
                }
            }
        }
        if let Some(rollout) = sub_table(service, "rollout") {
            let rpath = format!("{path}.rollout");
            strip_unknown(rollout, ROLLOUT_KEYS, &rpath, problems);
            if let Some(t) = sub_table(rollout, "thresholds") {
                strip_unknown(t, THRESHOLD_KEYS, &format!("{rpath}.thresholds"), problems);
            }
        }
        if let Some(t) = sub_table(service, "upstream") {
            strip_unknown(t, UPSTREAM_KEYS, &format!("{path}.upstream"), problems);
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
        strip_all_unknown(&mut table, &mut problems);
        let raw: RawConfig = match serde_path_to_error::deserialize(toml::Value::Table(table)) {
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
        match validate(&raw) {
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

// ---------------------------------------------------------------------------------------
// Validation

struct Checker {
    problems: Vec<Problem>,
}

impl Checker {
    fn bad(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            key: key.into(),
            message: message.into(),
        });
    }

    fn keyword<T>(
        &mut self,
        key: &str,
        value: &str,
        parse: fn(&str) -> Option<T>,
        choices: &[&str],
    ) -> Option<T> {
        let parsed = parse(value);
        if parsed.is_none() {
            let list = choices
                .iter()
                .map(|c| format!("\"{c}\""))
                .collect::<Vec<_>>()
                .join(", ");
            self.bad(
                key,
                format!("\"{value}\" is not allowed; use one of {list}"),
            );
        }
        parsed
    }

    fn duration(&mut self, key: &str, value: &str) -> Option<Duration> {
        match humantime::parse_duration(value.trim()) {
            Ok(d) if d.is_zero() => {
                self.bad(
                    key,
                    format!("\"{value}\" is zero; give a positive duration such as \"15s\""),
                );
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                self.bad(
                    key,
                    format!("\"{value}\" is not a duration ({e}); write it like \"15s\", \"500ms\" or \"1m\""),
                );
                None
            }
        }
    }

    fn name(&mut self, key: &str, value: &str, what: &str) {
        let ok = !value.is_empty()
            && value.len() <= 63
            && value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
        if !ok {
            self.bad(
                key,
                format!("{what} name \"{value}\" is not valid; use 1 to 63 letters, digits, '-', '_' or '.'"),
            );
        }
    }

    fn url(&mut self, key: &str, value: &str) {
        let rest = value
            .strip_prefix("http://")
            .or_else(|| value.strip_prefix("https://"));
        let host_ok = rest.is_some_and(|r| {
            let host = r.split(['/', '?']).next().unwrap_or("");
            !host.is_empty() && !host.contains(char::is_whitespace)
        });
        if !host_ok {
            self.bad(
                key,
                format!("\"{value}\" is not an http URL; write it like \"http://198.18.0.11:8080/healthz\""),
            );
        }
    }

    fn fraction(
        &mut self,
        key: &str,
        value: f64,
        lo_open: f64,
        hi: f64,
        hi_inclusive: bool,
        example: &str,
    ) {
        let ok =
            value.is_finite() && value > lo_open && (value < hi || (hi_inclusive && value <= hi));
        if !ok {
            let close = if hi_inclusive { "]" } else { ")" };
            self.bad(
                key,
                format!("{value} is out of range; it must be in ({lo_open}, {hi}{close}, e.g. {example}"),
            );
        }
    }

    fn metric_name(&mut self, key: &str, value: &str, optional: bool) {
        if value.is_empty() {
            if !optional {
                self.bad(
                    key,
                    "must not be empty; give the series name the backends export",
                );
            }
            return;
        }
        let mut chars = value.chars();
        let first_ok = chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':');
        if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            self.bad(
                key,
                format!("\"{value}\" is not a Prometheus series name; use letters, digits, '_' and ':' (not starting with a digit)"),
            );
        }
    }
}

fn parse_vip(c: &mut Checker, key: &str, value: &str) -> Option<SocketAddr> {
    match value.parse::<SocketAddr>() {
        Ok(addr) if addr.port() == 0 => {
            c.bad(
                key,
                format!("\"{value}\" has port 0; give the port clients connect to"),
            );
            None
        }
        Ok(addr) if addr.ip().is_unspecified() || addr.ip().is_multicast() => {
            c.bad(
                key,
                format!("\"{value}\" is not a unicast address; a VIP must be an address clients send to"),
            );
            None
        }
        Ok(addr) => Some(addr),
        Err(_) => {
            c.bad(
                key,
                format!("\"{value}\" is not an address with port; write \"198.18.0.100:8080\" or \"[2001:db8::100]:8080\""),
            );
            None
        }
    }
}

fn parse_backend_address(c: &mut Checker, key: &str, value: &str) -> Option<IpAddr> {
    match value.parse::<IpAddr>() {
        Ok(ip) if ip.is_unspecified() || ip.is_multicast() => {
            c.bad(
                key,
                format!("\"{value}\" is not a unicast address; give the backend's own address"),
            );
            None
        }
        Ok(ip) => Some(ip),
        Err(_) if value.parse::<SocketAddr>().is_ok() => {
            c.bad(
                key,
                format!("\"{value}\" has a port; a backend address is the bare IP (the VIP's port is used)"),
            );
            None
        }
        Err(_) => {
            c.bad(key, format!("\"{value}\" is not an IP address; write e.g. \"198.18.0.11\" or \"2001:db8::11\""));
            None
        }
    }
}

fn parse_mac(c: &mut Checker, key: &str, value: &str) -> Option<[u8; 6]> {
    if value.is_empty() {
        return None;
    }
    let parts: Vec<&str> = value.split(':').collect();
    let bytes: Option<Vec<u8>> = (parts.len() == 6)
        .then(|| {
            parts
                .iter()
                .map(|p| {
                    (p.len() == 2)
                        .then(|| u8::from_str_radix(p, 16).ok())
                        .flatten()
                })
                .collect()
        })
        .flatten();
    match bytes {
        Some(b) if b[0] & 1 == 1 || b.iter().all(|x| *x == 0) => {
            c.bad(key, format!("\"{value}\" is not a unicast MAC; give the backend's interface MAC or \"\" to resolve it"));
            None
        }
        Some(b) => Some([b[0], b[1], b[2], b[3], b[4], b[5]]),
        None => {
            c.bad(key, format!("\"{value}\" is not a MAC address; write \"02:00:c6:12:00:0b\" or \"\" to resolve it"));
            None
        }
    }
}

fn host_for_url(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

fn validate_steps(c: &mut Checker, key: &str, steps: &[f64]) -> Vec<Weight> {
    if steps.is_empty() {
        c.bad(
            key,
            "is empty; give increasing percentages ending at 100, e.g. [10, 25, 50, 75, 100]",
        );
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut ok = true;
    for (i, &s) in steps.iter().enumerate() {
        let k = format!("{key}[{i}]");
        if !(s.is_finite() && s > 0.0 && s <= 100.0) {
            c.bad(
                k,
                format!("{s} is outside (0, 100]; steps are percentages of new flows"),
            );
            ok = false;
            continue;
        }
        match Weight::from_percent(s) {
            Ok(w) => {
                if let Some(prev) = out.last() {
                    if w <= *prev {
                        c.bad(
                            k,
                            format!("{s} does not increase on the step before ({prev}); steps must be strictly increasing"),
                        );
                        ok = false;
                    }
                }
                out.push(w);
            }
            Err(e) => {
                c.bad(k, e.to_string());
                ok = false;
            }
        }
    }
    if ok && out.last() != Some(&Weight::FULL) {
        c.bad(
            key,
            "does not end at 100; the last step is the full promotion, append 100",
        );
    }
    out
}

/// Checks every value of a raw config and builds the typed [`Config`], or returns all
/// problems found.
#[allow(
    clippy::many_single_char_names,
    reason = "one-letter names for the table being checked keep the long list of checks readable"
)]
fn validate(raw: &RawConfig) -> Result<Config, Vec<Problem>> {
    let mut c = Checker {
        problems: Vec::new(),
    };

    // [dataplane]
    let d = &raw.dataplane;
    let iface = d.interface.as_str();
    if iface.is_empty()
        || iface.len() > 15
        || iface.contains(['/', ':'])
        || iface.contains(char::is_whitespace)
        || iface == "."
        || iface == ".."
    {
        c.bad(
            "dataplane.interface",
            format!("\"{iface}\" is not an interface name; give 1 to 15 characters without '/', ':' or spaces, e.g. \"eth0\""),
        );
    }
    let xdp_mode = c.keyword(
        "dataplane.xdp_mode",
        &d.xdp_mode,
        XdpMode::parse,
        XdpMode::CHOICES,
    );
    let flow_table_size = if (1024..=1 << 26).contains(&d.flow_table_size) {
        d.flow_table_size as u32
    } else {
        c.bad(
            "dataplane.flow_table_size",
            format!(
                "{} is out of range; use 1024 to 67108864 entries (default 1048576)",
                d.flow_table_size
            ),
        );
        0
    };
    let heartbeat_timeout = c.duration("dataplane.heartbeat_timeout", &d.heartbeat_timeout);
    for (key, value) in [
        ("dataplane.state_dir", &d.state_dir),
        ("dataplane.bpffs", &d.bpffs),
    ] {
        if !Path::new(value).is_absolute() || value == "/" {
            c.bad(key, format!("\"{value}\" is not an absolute directory path below /; give one like \"/var/lib/canary\""));
        }
    }

    // [admin]
    let listen = raw.admin.listen.parse::<SocketAddr>().ok();
    if listen.is_none() {
        c.bad(
            "admin.listen",
            format!(
                "\"{}\" is not an address with port; write \"127.0.0.1:9100\"",
                raw.admin.listen
            ),
        );
    }
    let token_file =
        (!raw.admin.token_file.is_empty()).then(|| PathBuf::from(&raw.admin.token_file));
    if let Some(listen) = listen {
        if !listen.ip().is_loopback() && token_file.is_none() {
            c.bad(
                "admin.token_file",
                format!("is required because admin.listen ({listen}) is not a loopback address; give a file holding the API token, or listen on 127.0.0.1"),
            );
        }
    }

    // [[services]]
    if raw.services.is_empty() {
        c.bad(
            "services",
            "no [[services]] defined; add at least one service with its backends",
        );
    }
    if raw.services.len() > MAX_SERVICES as usize {
        c.bad(
            "services",
            format!(
                "{} services defined; at most {MAX_SERVICES} are supported",
                raw.services.len()
            ),
        );
    }
    let total_backends: usize = raw.services.iter().map(|s| s.backends.len()).sum();
    if total_backends > MAX_BACKENDS as usize {
        c.bad(
            "services",
            format!("{total_backends} backends in total; at most {MAX_BACKENDS} are supported"),
        );
    }
    let mut service_names: BTreeMap<&str, usize> = BTreeMap::new();
    let mut vips: BTreeMap<(SocketAddr, &str), usize> = BTreeMap::new();
    let mut services = Vec::new();
    let mut longest_poll = Duration::ZERO;
    for (i, s) in raw.services.iter().enumerate() {
        let sk = format!("services[{i}]");
        c.name(&format!("{sk}.name"), &s.name, "service");
        if let Some(first) = service_names.insert(&s.name, i) {
            c.bad(
                format!("{sk}.name"),
                format!(
                    "\"{}\" is already the name of services[{first}]; service names must be unique",
                    s.name
                ),
            );
        }
        let vip = parse_vip(&mut c, &format!("{sk}.vip"), &s.vip);
        let protocol = c.keyword(
            &format!("{sk}.protocol"),
            &s.protocol,
            Protocol::parse,
            Protocol::CHOICES,
        );
        if let Some(vip) = vip {
            if let Some(first) = vips.insert((vip, s.protocol.as_str()), i) {
                c.bad(
                    format!("{sk}.vip"),
                    format!("{vip}/{} is already used by services[{first}]; each VIP, port and protocol belongs to one service", s.protocol),
                );
            }
        }
        let affinity = c.keyword(
            &format!("{sk}.affinity"),
            &s.affinity,
            Affinity::parse,
            Affinity::CHOICES,
        );

        // backends
        let mut names: BTreeMap<&str, usize> = BTreeMap::new();
        let mut addresses: BTreeMap<IpAddr, usize> = BTreeMap::new();
        let mut backends = Vec::new();
        let mut counts = [0usize; 2];
        for (j, b) in s.backends.iter().enumerate() {
            let bk = format!("{sk}.backends[{j}]");
            c.name(&format!("{bk}.name"), &b.name, "backend");
            if let Some(first) = names.insert(&b.name, j) {
                c.bad(format!("{bk}.name"), format!("\"{}\" is already the name of {sk}.backends[{first}]; backend names must be unique in a service", b.name));
            }
            let group = c.keyword(
                &format!("{bk}.group"),
                &b.group,
                Group::parse,
                Group::CHOICES,
            );
            if let Some(g) = group {
                counts[g.index() as usize] += 1;
            }
            let address = parse_backend_address(&mut c, &format!("{bk}.address"), &b.address);
            if let Some(a) = address {
                if let Some(first) = addresses.insert(a, j) {
                    c.bad(format!("{bk}.address"), format!("{a} is already the address of {sk}.backends[{first}]; each backend is listed once"));
                }
            }
            let mac = parse_mac(&mut c, &format!("{bk}.mac"), &b.mac);
            let port = vip.map_or(0, |v| v.port());
            let default_url =
                |path: &str| address.map(|a| format!("http://{}:{port}{path}", host_for_url(a)));
            let health_url = if b.health_url.is_empty() {
                default_url("/healthz")
            } else {
                Some(b.health_url.clone())
            };
            let metrics_url = if b.metrics_url.is_empty() {
                default_url("/metrics")
            } else {
                Some(b.metrics_url.clone())
            };
            if !b.health_url.is_empty() {
                c.url(&format!("{bk}.health_url"), &b.health_url);
            }
            if !b.metrics_url.is_empty() {
                c.url(&format!("{bk}.metrics_url"), &b.metrics_url);
            }
            if let (Some(group), Some(address), Some(health_url), Some(metrics_url)) =
                (group, address, health_url, metrics_url)
            {
                backends.push(BackendConfig {
                    name: b.name.clone(),
                    group,
                    address,
                    mac,
                    health_url,
                    metrics_url,
                });
            }
        }
        if counts[Group::Stable.index() as usize] == 0
            && s.backends.iter().all(|b| Group::parse(&b.group).is_some())
        {
            c.bad(format!("{sk}.backends"), "has no backend with group = \"stable\"; a service needs at least one stable backend (the canary group may be empty)");
        }
        for g in [Group::Stable, Group::Canary] {
            if counts[g.index() as usize] > MAX_BACKENDS_PER_GROUP as usize {
                c.bad(format!("{sk}.backends"), format!("{} backends in group {g}; at most {MAX_BACKENDS_PER_GROUP} per group are supported", counts[g.index() as usize]));
            }
        }

        // rollout
        let r = &s.rollout;
        let rk = format!("{sk}.rollout");
        let steps = validate_steps(&mut c, &format!("{rk}.steps"), &r.steps);
        let interval = c.duration(&format!("{rk}.interval"), &r.interval);
        let poll_interval = c.duration(&format!("{rk}.poll_interval"), &r.poll_interval);
        if let Some(p) = poll_interval {
            if p < Duration::from_millis(100) {
                c.bad(
                    format!("{rk}.poll_interval"),
                    format!(
                        "{} is too short; use at least 100ms",
                        humantime::format_duration(p)
                    ),
                );
            }
            longest_poll = longest_poll.max(p);
            if let Some(i) = interval {
                if i < p {
                    c.bad(format!("{rk}.interval"), format!("{} is shorter than poll_interval ({}); an evaluation needs at least one poll", humantime::format_duration(i), humantime::format_duration(p)));
                }
            }
        }
        if r.min_samples < 30 {
            c.bad(format!("{rk}.min_samples"), format!("{} is too small; the judge's normal approximations need at least 30 requests per group", r.min_samples));
        }
        let warmup_url = (!r.warmup_url.is_empty()).then(|| r.warmup_url.clone());
        if let Some(u) = &warmup_url {
            c.url(&format!("{rk}.warmup_url"), u);
        }
        let rollback = c.keyword(
            &format!("{rk}.rollback"),
            &r.rollback,
            RollbackMode::parse,
            RollbackMode::CHOICES,
        );
        let start = c.keyword(
            &format!("{rk}.start"),
            &r.start,
            StartMode::parse,
            StartMode::CHOICES,
        );
        let metrics_missing = c.keyword(
            &format!("{rk}.metrics_missing"),
            &r.metrics_missing,
            MissingPolicy::parse,
            MissingPolicy::CHOICES,
        );
        if r.metrics_missing_intervals == 0 {
            c.bad(
                format!("{rk}.metrics_missing_intervals"),
                "must be at least 1 (evaluation intervals with missing metrics before acting)",
            );
        }
        let t = &r.thresholds;
        let tk = format!("{rk}.thresholds");
        c.fraction(
            &format!("{tk}.max_error_rate_increase"),
            t.max_error_rate_increase,
            0.0,
            1.0,
            false,
            "0.02 for 2 percentage points",
        );
        if !(t.max_latency_increase_ms.is_finite() && t.max_latency_increase_ms > 0.0) {
            c.bad(
                format!("{tk}.max_latency_increase_ms"),
                format!(
                    "{} is out of range; give a positive number of milliseconds, e.g. 50",
                    t.max_latency_increase_ms
                ),
            );
        }
        c.fraction(
            &format!("{tk}.error_spike"),
            t.error_spike,
            0.0,
            1.0,
            true,
            "0.10 for 10% errors over one poll",
        );
        c.fraction(
            &format!("{tk}.max_prediction_shift"),
            t.max_prediction_shift,
            0.0,
            1.0,
            true,
            "0.10",
        );
        if !(t.confidence.is_finite() && t.confidence >= 0.5 && t.confidence < 1.0) {
            c.bad(
                format!("{tk}.confidence"),
                format!(
                    "{} is out of range; it must be at least 0.5 and below 1, e.g. 0.99",
                    t.confidence
                ),
            );
        }

        // upstream
        let u = &s.upstream;
        let uk = format!("{sk}.upstream");
        c.metric_name(&format!("{uk}.requests"), &u.requests, false);
        c.metric_name(&format!("{uk}.errors"), &u.errors, false);
        c.metric_name(&format!("{uk}.latency"), &u.latency, true);
        c.metric_name(&format!("{uk}.predictions"), &u.predictions, true);
        if !u.predictions.is_empty() {
            let l = &u.prediction_label;
            let ok = !l.is_empty()
                && !l.starts_with(|ch: char| ch.is_ascii_digit())
                && l.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
                && l != "le";
            if !ok {
                c.bad(format!("{uk}.prediction_label"), format!("\"{l}\" is not a usable label name; give the label that holds the predicted class, e.g. \"class\""));
            }
        }

        if let (
            Some(vip),
            Some(protocol),
            Some(affinity),
            Some(interval),
            Some(poll_interval),
            Some(rollback),
            Some(start),
            Some(metrics_missing),
        ) = (
            vip,
            protocol,
            affinity,
            interval,
            poll_interval,
            rollback,
            start,
            metrics_missing,
        ) {
            services.push(ServiceConfig {
                name: s.name.clone(),
                vip,
                protocol,
                affinity,
                backends,
                rollout: RolloutConfig {
                    steps,
                    interval,
                    poll_interval,
                    min_samples: r.min_samples,
                    warmup_requests: r.warmup_requests,
                    warmup_url,
                    rollback,
                    start,
                    metrics_missing,
                    metrics_missing_intervals: r.metrics_missing_intervals,
                    thresholds: Thresholds {
                        max_error_rate_increase: t.max_error_rate_increase,
                        max_latency_increase_ms: t.max_latency_increase_ms,
                        error_spike: t.error_spike,
                        max_prediction_shift: t.max_prediction_shift,
                        confidence: t.confidence,
                    },
                },
                upstream: UpstreamConfig {
                    requests: u.requests.clone(),
                    errors: u.errors.clone(),
                    latency: u.latency.clone(),
                    predictions: u.predictions.clone(),
                    prediction_label: u.prediction_label.clone(),
                },
            });
        }
    }
    if let Some(hb) = heartbeat_timeout {
        if hb < 2 * longest_poll {
            c.bad(
                "dataplane.heartbeat_timeout",
                format!("{} is shorter than twice the longest poll_interval ({}); the data plane would fall back to stable between polls", humantime::format_duration(hb), humantime::format_duration(longest_poll)),
            );
        }
    }

    if !c.problems.is_empty() {
        return Err(c.problems);
    }
    // Every value parsed, so the Options below are all Some.
    let (Some(xdp_mode), Some(heartbeat_timeout), Some(listen)) =
        (xdp_mode, heartbeat_timeout, listen)
    else {
        unreachable!("validation reported no problem but a value is missing");
    };
    Ok(Config {
        dataplane: DataplaneConfig {
            interface: d.interface.clone(),
            xdp_mode,
            flow_table_size,
            heartbeat_timeout,
            state_dir: PathBuf::from(&d.state_dir),
            bpffs: PathBuf::from(&d.bpffs),
            hash_seed: d.hash_seed,
        },
        admin: AdminConfig { listen, token_file },
        services,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the documentation, every key set.
    pub(crate) const FULL: &str = r#"
[dataplane]
interface = "eth0"
xdp_mode = "auto"
flow_table_size = 1048576
heartbeat_timeout = "30s"
state_dir = "/var/lib/canary"
bpffs = "/sys/fs/bpf/canary"
hash_seed = 1667329633

[admin]
listen = "127.0.0.1:9100"
token_file = ""

[[services]]
name = "sentiment"
vip = "198.18.0.100:8080"
protocol = "tcp"
affinity = "flow"

  [[services.backends]]
  name = "v1-a"
  group = "stable"
  address = "198.18.0.11"
  mac = ""
  health_url = "http://198.18.0.11:8080/healthz"
  metrics_url = "http://198.18.0.11:8080/metrics"

  [[services.backends]]
  name = "v2-a"
  group = "canary"
  address = "198.18.0.21"
  mac = "02:00:c6:12:00:15"

  [services.rollout]
  steps = [10, 25, 50, 75, 100]
  interval = "15s"
  poll_interval = "1s"
  min_samples = 1000
  warmup_requests = 20
  warmup_url = ""
  rollback = "drain"
  start = "auto"
  metrics_missing = "hold"
  metrics_missing_intervals = 3

  [services.rollout.thresholds]
  max_error_rate_increase = 0.02
  max_latency_increase_ms = 50
  error_spike = 0.10
  max_prediction_shift = 0.10
  confidence = 0.99

  [services.upstream]
  requests = "requests_total"
  errors = "request_errors_total"
  latency = "request_duration_seconds"
  predictions = "predictions_total"
  prediction_label = "class"
"#;

    const MINIMAL: &str = r#"
[[services]]
name = "s"
vip = "198.18.0.100:8080"
  [[services.backends]]
  name = "a"
  group = "stable"
  address = "198.18.0.11"
"#;

    fn problems(text: &str) -> Vec<String> {
        match Config::from_toml_str(text) {
            Ok(_) => panic!("config was accepted:\n{text}"),
            Err(e) => {
                let p: Vec<String> = e.problems().iter().map(ToString::to_string).collect();
                assert!(!p.is_empty(), "expected problems, got: {e}");
                p
            }
        }
    }

    fn assert_problem(text: &str, expected: &str) {
        let p = problems(text);
        assert!(
            p.iter().any(|m| m == expected),
            "expected problem\n  {expected}\ngot\n  {}",
            p.join("\n  ")
        );
    }

    fn with(edit: &str, replacement: &str) -> String {
        assert!(FULL.contains(edit), "test edit not found: {edit}");
        FULL.replacen(edit, replacement, 1)
    }

    #[test]
    fn full_example_parses_with_every_value() {
        let c = Config::from_toml_str(FULL).expect("example is valid");
        assert_eq!(c.dataplane.interface, "eth0");
        assert_eq!(c.dataplane.xdp_mode, XdpMode::Auto);
        assert_eq!(c.dataplane.heartbeat_timeout, Duration::from_secs(30));
        assert_eq!(c.admin.token_file, None);
        let s = &c.services[0];
        assert_eq!(s.vip, "198.18.0.100:8080".parse().unwrap());
        assert_eq!(s.backends.len(), 2);
        assert_eq!(s.backends[1].mac, Some([2, 0, 0xc6, 0x12, 0, 0x15]));
        // URLs default to the backend address and the VIP port.
        assert_eq!(s.backends[1].health_url, "http://198.18.0.21:8080/healthz");
        assert_eq!(s.backends[1].metrics_url, "http://198.18.0.21:8080/metrics");
        let steps: Vec<u32> = s.rollout.steps.iter().map(|w| w.basis_points()).collect();
        assert_eq!(steps, [1000, 2500, 5000, 7500, 10000]);
        assert_eq!(s.rollout, RolloutConfig::default());
        assert_eq!(s.upstream, UpstreamConfig::default());
        assert_eq!(s.canary_fingerprint(), ["v2-a@198.18.0.21"]);
    }

    #[test]
    fn minimal_config_gets_documented_defaults() {
        let c = Config::from_toml_str(MINIMAL).expect("minimal is valid");
        let full = Config::from_toml_str(FULL).unwrap();
        assert_eq!(c.dataplane, full.dataplane);
        assert_eq!(c.admin, full.admin);
        assert_eq!(c.services[0].rollout, full.services[0].rollout);
        assert_eq!(c.services[0].protocol, Protocol::Tcp);
        assert_eq!(c.services[0].affinity, Affinity::Flow);
    }

    #[test]
    fn every_documented_key_is_accepted() {
        // FULL sets every key in the known-key lists; the unknown-key pass and serde agree.
        for key in ROOT_KEYS
            .iter()
            .chain(DATAPLANE_KEYS)
            .chain(ADMIN_KEYS)
            .chain(SERVICE_KEYS)
            .chain(BACKEND_KEYS)
            .chain(ROLLOUT_KEYS)
            .chain(THRESHOLD_KEYS)
            .chain(UPSTREAM_KEYS)
        {
            assert!(
                FULL.contains(&format!("{key} ="))
                    || FULL.contains(&format!("[{key}]"))
                    || FULL.contains(&format!(".{key}]")),
                "{key} missing from the full example"
            );
        }
    }

    #[test]
    fn weights_have_basis_point_resolution() {
        assert_eq!(Weight::from_percent(12.5).unwrap().basis_points(), 1250);
        assert_eq!(Weight::from_percent(0.29).unwrap().basis_points(), 29);
        assert_eq!(Weight::from_percent(100.0).unwrap(), Weight::FULL);
        assert_eq!(Weight::from_percent(0.0).unwrap(), Weight::ZERO);
        assert!(matches!(
            Weight::from_percent(0.125),
            Err(WeightError::TooFine(_))
        ));
        assert!(matches!(
            Weight::from_percent(100.5),
            Err(WeightError::OutOfRange(_))
        ));
        assert!(matches!(
            Weight::from_percent(f64::NAN),
            Err(WeightError::OutOfRange(_))
        ));
        assert_eq!(Weight::from_basis_points(20_000), Weight::FULL);
        assert!((Weight::from_basis_points(2500).ratio() - 0.25).abs() < 1e-12);
        assert_eq!(Weight::from_basis_points(1250).to_string(), "12.5%");
    }

    #[test]
    fn syntax_error_is_reported_with_position() {
        let e = Config::from_toml_str("[dataplane\ninterface = 1").unwrap_err();
        assert!(matches!(e, ConfigError::Syntax(_)));
        assert!(e.to_string().contains("line 1"), "{e}");
    }

    #[test]
    fn unknown_keys_are_all_reported_with_path_and_suggestion() {
        let text = with("  mac = \"\"\n", "  mca = \"\"\n").replace(
            "  interval = \"15s\"",
            "  intervall = \"15s\"\n  colour = \"red\"",
        );
        let p = problems(&text);
        assert!(
            p.contains(
                &"services[0].backends[0].mca: unknown key; did you mean `mac`?".to_string()
            ),
            "{p:?}"
        );
        assert!(
            p.contains(
                &"services[0].rollout.intervall: unknown key; did you mean `interval`?".to_string()
            ),
            "{p:?}"
        );
        assert!(
            p.iter()
                .any(|m| m.starts_with("services[0].rollout.colour: unknown key; remove it")),
            "{p:?}"
        );
        assert_eq!(p.len(), 3, "{p:?}");
    }

    #[test]
    fn type_error_names_the_key() {
        let p = problems(&with("min_samples = 1000", "min_samples = \"many\""));
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].starts_with("services[0].rollout.min_samples: invalid type: string \"many\""),
            "{p:?}"
        );
    }

    #[test]
    fn bad_addresses_are_rejected() {
        assert_problem(
            &with("vip = \"198.18.0.100:8080\"", "vip = \"198.18.0.100\""),
            "services[0].vip: \"198.18.0.100\" is not an address with port; write \"198.18.0.100:8080\" or \"[2001:db8::100]:8080\"",
        );
        assert_problem(
            &with("vip = \"198.18.0.100:8080\"", "vip = \"2001:db8::1:8080\""),
            "services[0].vip: \"2001:db8::1:8080\" is not an address with port; write \"198.18.0.100:8080\" or \"[2001:db8::100]:8080\"",
        );
        assert_problem(
            &with("vip = \"198.18.0.100:8080\"", "vip = \"198.18.0.100:0\""),
            "services[0].vip: \"198.18.0.100:0\" has port 0; give the port clients connect to",
        );
        assert_problem(
            &with("address = \"198.18.0.11\"", "address = \"198.18.0.11:80\""),
            "services[0].backends[0].address: \"198.18.0.11:80\" has a port; a backend address is the bare IP (the VIP's port is used)",
        );
        assert_problem(
            &with("address = \"198.18.0.11\"", "address = \"198.18.0.300\""),
            "services[0].backends[0].address: \"198.18.0.300\" is not an IP address; write e.g. \"198.18.0.11\" or \"2001:db8::11\"",
        );
        assert_problem(
            &with("listen = \"127.0.0.1:9100\"", "listen = \"localhost\""),
            "admin.listen: \"localhost\" is not an address with port; write \"127.0.0.1:9100\"",
        );
        assert_problem(
            &with("mac = \"02:00:c6:12:00:15\"", "mac = \"02:00:c6:12:00\""),
            "services[0].backends[1].mac: \"02:00:c6:12:00\" is not a MAC address; write \"02:00:c6:12:00:0b\" or \"\" to resolve it",
        );
        assert_problem(
            &with("metrics_url = \"http://198.18.0.11:8080/metrics\"", "metrics_url = \"198.18.0.11:8080/metrics\""),
            "services[0].backends[0].metrics_url: \"198.18.0.11:8080/metrics\" is not an http URL; write it like \"http://198.18.0.11:8080/healthz\"",
        );
        let v6 = with(
            "vip = \"198.18.0.100:8080\"",
            "vip = \"[2001:db8::100]:8080\"",
        );
        let c = Config::from_toml_str(&v6).expect("IPv6 VIP is valid");
        assert_eq!(c.services[0].vip.port(), 8080);
    }

    #[test]
    fn duplicates_are_rejected() {
        let dup_backend = with("name = \"v2-a\"", "name = \"v1-a\"");
        assert_problem(
            &dup_backend,
            "services[0].backends[1].name: \"v1-a\" is already the name of services[0].backends[0]; backend names must be unique in a service",
        );
        let dup_address = with("address = \"198.18.0.21\"", "address = \"198.18.0.11\"");
        assert_problem(
            &dup_address,
            "services[0].backends[1].address: 198.18.0.11 is already the address of services[0].backends[0]; each backend is listed once",
        );
        let two = format!(
            "{FULL}\n{}",
            MINIMAL.replace("name = \"s\"", "name = \"sentiment\"")
        );
        let p = problems(&two);
        assert!(p.contains(&"services[1].name: \"sentiment\" is already the name of services[0]; service names must be unique".to_string()), "{p:?}");
        assert!(p.contains(&"services[1].vip: 198.18.0.100:8080/tcp is already used by services[0]; each VIP, port and protocol belongs to one service".to_string()), "{p:?}");
    }

    #[test]
    fn steps_are_checked() {
        assert_problem(
            &with("steps = [10, 25, 50, 75, 100]", "steps = [10, 50, 25, 100]"),
            "services[0].rollout.steps[2]: 25 does not increase on the step before (50%); steps must be strictly increasing",
        );
        assert_problem(
            &with("steps = [10, 25, 50, 75, 100]", "steps = [10, 50, 90]"),
            "services[0].rollout.steps: does not end at 100; the last step is the full promotion, append 100",
        );
        assert_problem(
            &with("steps = [10, 25, 50, 75, 100]", "steps = [0, 50, 100]"),
            "services[0].rollout.steps[0]: 0 is outside (0, 100]; steps are percentages of new flows",
        );
        assert_problem(
            &with("steps = [10, 25, 50, 75, 100]", "steps = [0.125, 100]"),
            "services[0].rollout.steps[0]: 0.125 has more than two decimals; weights have 0.01 percent resolution (e.g. 12.5 or 0.25)",
        );
        assert_problem(
            &with("steps = [10, 25, 50, 75, 100]", "steps = []"),
            "services[0].rollout.steps: is empty; give increasing percentages ending at 100, e.g. [10, 25, 50, 75, 100]",
        );
        let fine = with("steps = [10, 25, 50, 75, 100]", "steps = [0.5, 12.25, 100]");
        let c = Config::from_toml_str(&fine).expect("fractional steps are valid");
        let bp: Vec<u32> = c.services[0]
            .rollout
            .steps
            .iter()
            .map(|w| w.basis_points())
            .collect();
        assert_eq!(bp, [50, 1225, 10000]);
    }

    #[test]
    fn groups_are_checked() {
        assert_problem(
            &with("group = \"stable\"", "group = \"canary\""),
            "services[0].backends: has no backend with group = \"stable\"; a service needs at least one stable backend (the canary group may be empty)",
        );
        assert_problem(
            &with("group = \"stable\"", "group = \"blue\""),
            "services[0].backends[0].group: \"blue\" is not allowed; use one of \"stable\", \"canary\"",
        );
        // An empty canary group is valid: no rollout.
        let c = Config::from_toml_str(MINIMAL).unwrap();
        assert!(c.services[0].canary_fingerprint().is_empty());
    }

    #[test]
    fn durations_are_checked() {
        assert_problem(
            &with("interval = \"15s\"", "interval = \"15 parsecs\""),
            "services[0].rollout.interval: \"15 parsecs\" is not a duration (unknown time unit \"parsecs\", supported units: ns, us/µs, ms, sec, min, hours, days, weeks, months, years (and few variations)); write it like \"15s\", \"500ms\" or \"1m\"",
        );
        assert_problem(
            &with("poll_interval = \"1s\"", "poll_interval = \"0s\""),
            "services[0].rollout.poll_interval: \"0s\" is zero; give a positive duration such as \"15s\"",
        );
        assert_problem(
            &with("interval = \"15s\"", "interval = \"500ms\""),
            "services[0].rollout.interval: 500ms is shorter than poll_interval (1s); an evaluation needs at least one poll",
        );
        assert_problem(
            &with("heartbeat_timeout = \"30s\"", "heartbeat_timeout = \"1500ms\""),
            "dataplane.heartbeat_timeout: 1s 500ms is shorter than twice the longest poll_interval (1s); the data plane would fall back to stable between polls",
        );
    }

    #[test]
    fn thresholds_and_counts_are_checked() {
        assert_problem(
            &with("max_error_rate_increase = 0.02", "max_error_rate_increase = 2"),
            "services[0].rollout.thresholds.max_error_rate_increase: 2 is out of range; it must be in (0, 1), e.g. 0.02 for 2 percentage points",
        );
        assert_problem(
            &with("confidence = 0.99", "confidence = 99"),
            "services[0].rollout.thresholds.confidence: 99 is out of range; it must be at least 0.5 and below 1, e.g. 0.99",
        );
        assert_problem(
            &with("max_latency_increase_ms = 50", "max_latency_increase_ms = -5"),
            "services[0].rollout.thresholds.max_latency_increase_ms: -5 is out of range; give a positive number of milliseconds, e.g. 50",
        );
        assert_problem(
            &with("min_samples = 1000", "min_samples = 5"),
            "services[0].rollout.min_samples: 5 is too small; the judge's normal approximations need at least 30 requests per group",
        );
        assert_problem(
            &with("metrics_missing_intervals = 3", "metrics_missing_intervals = 0"),
            "services[0].rollout.metrics_missing_intervals: must be at least 1 (evaluation intervals with missing metrics before acting)",
        );
        assert_problem(
            &with("xdp_mode = \"auto\"", "xdp_mode = \"turbo\""),
            "dataplane.xdp_mode: \"turbo\" is not allowed; use one of \"auto\", \"native\", \"skb\"",
        );
        assert_problem(
            &with("requests = \"requests_total\"", "requests = \"\""),
            "services[0].upstream.requests: must not be empty; give the series name the backends export",
        );
    }

    #[test]
    fn token_required_off_loopback() {
        assert_problem(
            &with("listen = \"127.0.0.1:9100\"", "listen = \"0.0.0.0:9100\""),
            "admin.token_file: is required because admin.listen (0.0.0.0:9100) is not a loopback address; give a file holding the API token, or listen on 127.0.0.1",
        );
        let ok = with(
            "listen = \"127.0.0.1:9100\"",
            "listen = \"198.18.0.1:9100\"",
        )
        .replace("token_file = \"\"", "token_file = \"/etc/canary/token\"");
        let c = Config::from_toml_str(&ok).expect("token given");
        assert_eq!(c.admin.token_file, Some(PathBuf::from("/etc/canary/token")));
    }

    #[test]
    fn all_problems_are_collected() {
        let text = with("vip = \"198.18.0.100:8080\"", "vip = \"nowhere\"")
            .replace("steps = [10, 25, 50, 75, 100]", "steps = [50, 10, 100]")
            .replace("confidence = 0.99", "confidence = 1.5")
            .replace("interval = \"15s\"", "interval = \"soon\"");
        let p = problems(&text);
        assert_eq!(p.len(), 4, "{p:?}");
        let e = Config::from_toml_str(&text).unwrap_err().to_string();
        assert!(e.starts_with("config has 4 problems:\n  "), "{e}");
    }

    #[test]
    fn no_services_is_rejected() {
        assert_problem(
            "",
            "services: no [[services]] defined; add at least one service with its backends",
        );
    }

    #[test]
    fn load_reads_a_file_and_reports_missing_files() {
        let dir = std::env::temp_dir().join(format!("canary-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("canary.toml");
        std::fs::write(&path, FULL).unwrap();
        let c = Config::load(&path).expect("file loads");
        assert_eq!(c.service("sentiment").unwrap().name, "sentiment");
        std::fs::remove_dir_all(&dir).unwrap();
        let e = Config::load(&path).unwrap_err();
        assert!(matches!(e, ConfigError::Read { .. }));
        assert!(e.to_string().contains("check the path"), "{e}");
    }

    #[test]
    fn interface_check_uses_this_namespace() {
        assert!(check_interface("lo").unwrap() > 0);
        let e = check_interface("nosuchif0").unwrap_err();
        assert_eq!(
            e.to_string(),
            "dataplane.interface: no network interface named `nosuchif0` in this network namespace; use one listed by `ip link`"
        );
    }
}
