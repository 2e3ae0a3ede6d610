//! The config file as written. Values that can be wrong in content rather than type are
//! strings here and parsed by validation, so that all of them are reported together. The same
//! structs serialise a config file (the lab writes the daemon's config with them).

use serde::{Deserialize, Serialize};

use super::{Problem, Thresholds, DEFAULT_HASH_SEED};

#[derive(Clone, Debug, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub dataplane: RawDataplane,
    #[serde(default)]
    pub admin: RawAdmin,
    #[serde(default)]
    pub services: Vec<RawService>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notify: Vec<RawNotify>,
    #[serde(default, skip_serializing_if = "is_default_cluster")]
    pub cluster: crate::cluster::config::RawCluster,
}

/// `[[notify]]`: a webhook that receives decision events.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawNotify {
    pub name: String,
    pub url: String,
    pub events: Vec<String>,
    pub hold_intervals: u32,
    pub bearer_token_file: String,
    pub timeout: String,
    pub retries: u32,
    pub queue: u64,
}

impl Default for RawNotify {
    fn default() -> Self {
        RawNotify {
            name: String::new(),
            url: String::new(),
            events: crate::notify::EventKind::ALL
                .iter()
                .map(|k| k.as_str().to_string())
                .collect(),
            hold_intervals: 3,
            bearer_token_file: String::new(),
            timeout: "5s".into(),
            retries: 3,
            queue: 256,
        }
    }
}

fn is_default_cluster(c: &crate::cluster::config::RawCluster) -> bool {
    *c == crate::cluster::config::RawCluster::default()
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawDataplane {
    pub interface: String,
    pub xdp_mode: String,
    pub flow_table_size: u64,
    pub heartbeat_timeout: String,
    pub state_dir: String,
    pub bpffs: String,
    pub hash_seed: u32,
    pub syn_replace_after: String,
    pub flood_guard_rate: u64,
    /// Outer source of IPv4-in-IPv4 packets (`""`: none; needed by IPv4 `ipip` services).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub tunnel_source_v4: String,
    /// Outer source of IPv6-in-IPv6 packets (`""`: none; needed by IPv6 `ipip` services).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub tunnel_source_v6: String,
    pub udp_idle_timeout: String,
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
            syn_replace_after: "5s".into(),
            flood_guard_rate: 0,
            tunnel_source_v4: String::new(),
            tunnel_source_v6: String::new(),
            udp_idle_timeout: "30s".into(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAdmin {
    pub listen: String,
    pub token_file: String,
    pub max_connections: u64,
    pub header_read_timeout: String,
    pub idle_timeout: String,
}

impl Default for RawAdmin {
    fn default() -> Self {
        RawAdmin {
            listen: "127.0.0.1:9100".into(),
            token_file: String::new(),
            max_connections: 64,
            header_read_timeout: "5s".into(),
            idle_timeout: "30s".into(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawService {
    pub name: String,
    pub vip: String,
    #[serde(default = "default_protocol")]
    pub protocol: String,
    #[serde(default = "default_affinity")]
    pub affinity: String,
    #[serde(default = "default_forwarding")]
    pub forwarding: String,
    #[serde(default)]
    pub backends: Vec<RawBackend>,
    #[serde(default)]
    pub rollout: RawRollout,
    #[serde(default)]
    pub upstream: RawUpstream,
}

fn default_protocol() -> String {
    "tcp".into()
}

fn default_affinity() -> String {
    "flow".into()
}

fn default_forwarding() -> String {
    "l2".into()
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackend {
    pub name: String,
    pub group: String,
    pub address: String,
    #[serde(default)]
    pub mac: String,
    #[serde(default)]
    pub health_url: String,
    #[serde(default)]
    pub metrics_url: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRollout {
    pub steps: Vec<f64>,
    pub interval: String,
    pub poll_interval: String,
    pub min_samples: u64,
    pub warmup_requests: u32,
    pub warmup_url: String,
    pub warmup_body: String,
    pub rollback: String,
    pub start: String,
    pub metrics_missing: String,
    pub metrics_missing_intervals: u32,
    pub thresholds: RawThresholds,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dry_run: Vec<String>,
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
            warmup_body: String::new(),
            rollback: "drain".into(),
            start: "auto".into(),
            metrics_missing: "hold".into(),
            metrics_missing_intervals: 3,
            thresholds: RawThresholds::default(),
            dry_run: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawThresholds {
    pub max_error_rate_increase: f64,
    pub max_error_rate_ratio: f64,
    pub max_latency_increase_ms: f64,
    pub max_latency_ratio: f64,
    pub error_spike: f64,
    pub max_prediction_shift: f64,
    pub confidence: f64,
}

impl Default for RawThresholds {
    fn default() -> Self {
        let t = Thresholds::default();
        RawThresholds {
            max_error_rate_increase: t.max_error_rate_increase,
            max_error_rate_ratio: t.max_error_rate_ratio,
            max_latency_increase_ms: t.max_latency_increase_ms,
            max_latency_ratio: t.max_latency_ratio,
            error_spike: t.error_spike,
            max_prediction_shift: t.max_prediction_shift,
            confidence: t.confidence,
        }
    }
}

/// `[services.upstream]`: a selector left out comes from the preset, or from the defaults.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawUpstream {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preset: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub predictions: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prediction_label: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version_label: Option<String>,
    pub max_scrape_bytes: u64,
    pub max_series: u64,
    pub max_prediction_classes: u64,
}

impl Default for RawUpstream {
    fn default() -> Self {
        RawUpstream {
            preset: None,
            requests: None,
            errors: None,
            latency: None,
            predictions: None,
            prediction_label: None,
            version_label: None,
            max_scrape_bytes: super::DEFAULT_MAX_SCRAPE_BYTES,
            max_series: super::DEFAULT_MAX_SERIES as u64,
            max_prediction_classes: super::DEFAULT_MAX_PREDICTION_CLASSES as u64,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Known keys per table, for the unknown-key pass. Kept next to the raw structs; the test
// `every_documented_key_is_accepted` fails if the two drift apart.

pub(crate) const ROOT_KEYS: &[&str] = &["dataplane", "admin", "services", "notify", "cluster"];
pub(crate) const NOTIFY_KEYS: &[&str] = &[
    "name",
    "url",
    "events",
    "hold_intervals",
    "bearer_token_file",
    "timeout",
    "retries",
    "queue",
];
pub(crate) const CLUSTER_KEYS: &[&str] = &[
    "store",
    "etcd_endpoints",
    "node_name",
    "prefix",
    "lease_ttl",
    "ca_file",
    "cert_file",
    "key_file",
    "user",
    "password_file",
];
pub(crate) const DATAPLANE_KEYS: &[&str] = &[
    "interface",
    "xdp_mode",
    "flow_table_size",
    "heartbeat_timeout",
    "state_dir",
    "bpffs",
    "hash_seed",
    "syn_replace_after",
    "flood_guard_rate",
    "tunnel_source_v4",
    "tunnel_source_v6",
    "udp_idle_timeout",
];
pub(crate) const ADMIN_KEYS: &[&str] = &[
    "listen",
    "token_file",
    "max_connections",
    "header_read_timeout",
    "idle_timeout",
];
pub(crate) const SERVICE_KEYS: &[&str] = &[
    "name",
    "vip",
    "protocol",
    "affinity",
    "forwarding",
    "backends",
    "rollout",
    "upstream",
];
pub(crate) const BACKEND_KEYS: &[&str] = &[
    "name",
    "group",
    "address",
    "mac",
    "health_url",
    "metrics_url",
];
pub(crate) const ROLLOUT_KEYS: &[&str] = &[
    "steps",
    "interval",
    "poll_interval",
    "min_samples",
    "warmup_requests",
    "warmup_url",
    "warmup_body",
    "rollback",
    "start",
    "metrics_missing",
    "metrics_missing_intervals",
    "thresholds",
    "dry_run",
];
pub(crate) const THRESHOLD_KEYS: &[&str] = &[
    "max_error_rate_increase",
    "max_error_rate_ratio",
    "max_latency_increase_ms",
    "max_latency_ratio",
    "error_spike",
    "max_prediction_shift",
    "confidence",
];
pub(crate) const UPSTREAM_KEYS: &[&str] = &[
    "preset",
    "requests",
    "errors",
    "latency",
    "predictions",
    "prediction_label",
    "version_label",
    "max_scrape_bytes",
    "max_series",
    "max_prediction_classes",
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

pub(super) fn strip_all_unknown(root: &mut toml::Table, problems: &mut Vec<Problem>) {
    strip_unknown(root, ROOT_KEYS, "", problems);
    if let Some(t) = sub_table(root, "dataplane") {
        strip_unknown(t, DATAPLANE_KEYS, "dataplane", problems);
    }
    if let Some(t) = sub_table(root, "admin") {
        strip_unknown(t, ADMIN_KEYS, "admin", problems);
    }
    if let Some(sinks) = root.get_mut("notify").and_then(toml::Value::as_array_mut) {
        for (i, sink) in sinks.iter_mut().enumerate() {
            if let Some(sink) = sink.as_table_mut() {
                strip_unknown(sink, NOTIFY_KEYS, &format!("notify[{i}]"), problems);
            }
        }
    }
    if let Some(t) = sub_table(root, "cluster") {
        strip_unknown(t, CLUSTER_KEYS, "cluster", problems);
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
