//! The `[cluster]` section: which store holds the rollout documents (`local`, today's
//! `state_dir`, or `etcd`), how to reach etcd, and this node's name.
//!
//! [`RawCluster`] is the section as written (strings, all optional); [`validate`] turns it into a
//! [`ClusterConfig`] or lists every problem as `key: what is wrong; how to fix it`. It is pure:
//! the host name comes in as an argument and no file is opened ([`check_files`] does that).

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Default key prefix in etcd.
pub const DEFAULT_PREFIX: &str = "/canary";
/// Default lease TTL: a dead leader is replaced within about this long.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(5);
/// etcd leases are whole seconds; below 2 s a busy node would lose its lease to scheduling.
pub const MIN_LEASE_TTL: Duration = Duration::from_secs(2);
pub const MAX_LEASE_TTL: Duration = Duration::from_mins(5);

/// `[cluster]` as written in the config file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawCluster {
    pub store: Option<String>,
    pub etcd_endpoints: Vec<String>,
    pub node_name: Option<String>,
    pub prefix: Option<String>,
    pub lease_ttl: Option<String>,
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub user: Option<String>,
    pub password_file: Option<PathBuf>,
}

/// Where the rollout documents live.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreKind {
    /// One node; rollout state in `state_dir` (the default).
    #[default]
    Local,
    /// Several nodes sharing rollouts through etcd.
    Etcd,
}

impl StoreKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StoreKind::Local => "local",
            StoreKind::Etcd => "etcd",
        }
    }
}

/// TLS towards etcd: the CA that signed etcd's certificate, and optionally a client certificate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsFiles {
    pub ca_file: PathBuf,
    /// Client certificate and its key (PEM), when etcd checks clients.
    pub client: Option<(PathBuf, PathBuf)>,
}

/// etcd user name and the file holding its password.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    pub user: String,
    pub password_file: PathBuf,
}

/// The validated `[cluster]` section.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterConfig {
    pub store: StoreKind,
    /// `http://host:port` or `https://host:port` (empty with the local store).
    pub etcd_endpoints: Vec<String>,
    pub node_name: String,
    /// Key prefix: every node sharing a prefix balances the same services the same way.
    pub prefix: String,
    /// Whole seconds.
    pub lease_ttl: Duration,
    pub tls: Option<TlsFiles>,
    pub credentials: Option<Credentials>,
}

impl ClusterConfig {
    /// A single node with the local store (what a config without `[cluster]` means).
    pub fn local(node_name: &str) -> Self {
        Self {
            store: StoreKind::Local,
            etcd_endpoints: Vec::new(),
            node_name: node_name.to_string(),
            prefix: DEFAULT_PREFIX.to_string(),
            lease_ttl: DEFAULT_LEASE_TTL,
            tls: None,
            credentials: None,
        }
    }

    /// The lease TTL in etcd's unit.
    pub fn lease_ttl_secs(&self) -> i64 {
        i64::try_from(self.lease_ttl.as_secs()).unwrap_or(i64::MAX)
    }
}

/// One mistake in `[cluster]`: `cluster.<key>: <message>` (the message says how to fix it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterProblem {
    pub key: String,
    pub message: String,
}

impl fmt::Display for ClusterProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

#[derive(Default)]
struct Problems(Vec<ClusterProblem>);

impl Problems {
    fn bad(&mut self, key: &str, message: impl Into<String>) {
        self.0.push(ClusterProblem {
            key: format!("cluster.{key}"),
            message: message.into(),
        });
    }
}

/// Checks `[cluster]` and fills in defaults; `host_name` is the default `node_name`.
pub fn validate(raw: &RawCluster, host_name: &str) -> Result<ClusterConfig, Vec<ClusterProblem>> {
    let mut p = Problems::default();

    let store = match raw.store.as_deref().map(str::trim) {
        None | Some("local") => StoreKind::Local,
        Some("etcd") => StoreKind::Etcd,
        Some(other) => {
            p.bad(
                "store",
                format!("\"{other}\" is not allowed; use one of \"local\", \"etcd\""),
            );
            StoreKind::Local
        }
    };

    let tls_wanted = raw.ca_file.is_some();
    let mut endpoints = Vec::new();
    if store == StoreKind::Etcd && raw.etcd_endpoints.is_empty() {
        p.bad(
            "etcd_endpoints",
            "is empty but store is \"etcd\"; list etcd's client URLs, e.g. [\"http://198.18.0.2:2379\"]",
        );
    }
    if store == StoreKind::Local && !raw.etcd_endpoints.is_empty() {
        p.bad(
            "etcd_endpoints",
            "is set but store is \"local\", so etcd would not be used; set store = \"etcd\" or remove etcd_endpoints",
        );
    }
    for (i, endpoint) in raw.etcd_endpoints.iter().enumerate() {
        match check_endpoint(endpoint, tls_wanted) {
            Ok(url) => {
                if endpoints.contains(&url) {
                    p.bad(
                        &format!("etcd_endpoints[{i}]"),
                        format!("\"{endpoint}\" is listed twice; remove the duplicate"),
                    );
                }
                endpoints.push(url);
            }
            Err(message) => p.bad(&format!("etcd_endpoints[{i}]"), message),
        }
    }

    let node_name = match raw.node_name.as_deref() {
        Some(name) => name.to_string(),
        None => host_name.to_string(),
    };
    if !is_node_name(&node_name) {
        let key = "node_name";
        if raw.node_name.is_some() {
            p.bad(
                key,
                format!(
                    "\"{node_name}\" is not valid; use 1 to 63 letters, digits, '-', '_' or '.'"
                ),
            );
        } else {
            p.bad(key, format!("the host name \"{node_name}\" is not a valid node name; set node_name to 1 to 63 letters, digits, '-', '_' or '.'"));
        }
    }

    let prefix = raw.prefix.as_deref().unwrap_or(DEFAULT_PREFIX).to_string();
    if let Err(message) = check_prefix(&prefix) {
        p.bad("prefix", message);
    }

    let lease_ttl = match raw.lease_ttl.as_deref() {
        None => DEFAULT_LEASE_TTL,
        Some(text) => match check_lease_ttl(text) {
            Ok(ttl) => ttl,
            Err(message) => {
                p.bad("lease_ttl", message);
                DEFAULT_LEASE_TTL
            }
        },
    };

    let tls = match (&raw.ca_file, &raw.cert_file, &raw.key_file) {
        (None, None, None) => None,
        (Some(ca), None, None) => Some(TlsFiles {
            ca_file: ca.clone(),
            client: None,
        }),
        (Some(ca), Some(cert), Some(key)) => Some(TlsFiles {
            ca_file: ca.clone(),
            client: Some((cert.clone(), key.clone())),
        }),
        (None, _, _) => {
            p.bad(
                "ca_file",
                "is missing but cert_file/key_file are set; a client certificate needs TLS: set ca_file to the CA that signed etcd's certificate",
            );
            None
        }
        (Some(_), Some(_), None) => {
            p.bad(
                "key_file",
                "is missing but cert_file is set; give both or neither",
            );
            None
        }
        (Some(_), None, Some(_)) => {
            p.bad(
                "cert_file",
                "is missing but key_file is set; give both or neither",
            );
            None
        }
    };
    for (key, path) in [
        ("ca_file", &raw.ca_file),
        ("cert_file", &raw.cert_file),
        ("key_file", &raw.key_file),
        ("password_file", &raw.password_file),
    ] {
        if path.as_ref().is_some_and(|f| f.as_os_str().is_empty()) {
            p.bad(key, "is empty; give a file path or remove the key");
        }
    }

    let credentials = match (&raw.user, &raw.password_file) {
        (None, None) => None,
        (Some(user), Some(file)) => {
            if user.is_empty() || user.contains(char::is_whitespace) {
                p.bad(
                    "user",
                    format!("\"{user}\" is not a user name; give etcd's user name without spaces"),
                );
            }
            Some(Credentials {
                user: user.clone(),
                password_file: file.clone(),
            })
        }
        (Some(_), None) => {
            p.bad(
                "password_file",
                "is missing but user is set; give the file holding the user's password",
            );
            None
        }
        (None, Some(_)) => {
            p.bad(
                "user",
                "is missing but password_file is set; give etcd's user name",
            );
            None
        }
    };

    if store == StoreKind::Local {
        for (key, set) in [
            ("ca_file", raw.ca_file.is_some()),
            ("user", raw.user.is_some()),
        ] {
            if set {
                p.bad(
                    key,
                    "is set but store is \"local\", so etcd would not be used; set store = \"etcd\" or remove it",
                );
            }
        }
    }

    if p.0.is_empty() {
        Ok(ClusterConfig {
            store,
            etcd_endpoints: endpoints,
            node_name,
            prefix,
            lease_ttl,
            tls,
            credentials,
        })
    } else {
        Err(p.0)
    }
}

/// Files named in the section that cannot be read (I/O, apart from [`validate`]).
pub fn check_files(config: &ClusterConfig) -> Vec<ClusterProblem> {
    let mut p = Problems::default();
    let mut files: Vec<(&str, &Path)> = Vec::new();
    if let Some(tls) = &config.tls {
        files.push(("ca_file", &tls.ca_file));
        if let Some((cert, key)) = &tls.client {
            files.push(("cert_file", cert));
            files.push(("key_file", key));
        }
    }
    if let Some(c) = &config.credentials {
        files.push(("password_file", &c.password_file));
    }
    for (key, path) in files {
        if let Err(e) = std::fs::File::open(path) {
            p.bad(
                key,
                format!(
                    "cannot read {}: {e}; check the path and its permissions",
                    path.display()
                ),
            );
        }
    }
    p.0
}

/// This machine's host name (the default `node_name`).
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

fn is_node_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
}

/// `http://host:port`, `https://host:port` or `host:port` (scheme from `tls`), normalised to
/// a URL with a scheme.
fn check_endpoint(endpoint: &str, tls: bool) -> Result<String, String> {
    let (scheme, rest) = if let Some(rest) = endpoint.strip_prefix("http://") {
        ("http", rest)
    } else if let Some(rest) = endpoint.strip_prefix("https://") {
        ("https", rest)
    } else if endpoint.contains("://") {
        return Err(format!(
            "\"{endpoint}\" has an unknown scheme; use http://host:port or https://host:port"
        ));
    } else {
        (if tls { "https" } else { "http" }, endpoint)
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let Some((host, port)) = rest.rsplit_once(':') else {
        return Err(format!(
            "\"{endpoint}\" has no port; write it like \"http://198.18.0.2:2379\""
        ));
    };
    let host_ok = !host.is_empty()
        && !host.contains('/')
        && !host.contains(char::is_whitespace)
        && (!host.contains(':') || (host.starts_with('[') && host.ends_with(']')));
    if !host_ok {
        return Err(format!(
            "\"{endpoint}\" has no valid host; write it like \"http://198.18.0.2:2379\" ([IPv6] in brackets)"
        ));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => {}
        _ => {
            return Err(format!(
                "\"{endpoint}\": \"{port}\" is not a port; use 1 to 65535"
            ))
        }
    }
    if tls && scheme == "http" {
        return Err(format!(
            "\"{endpoint}\" is plain http but ca_file is set (TLS); use https:// or remove ca_file"
        ));
    }
    if !tls && scheme == "https" {
        return Err(format!(
            "\"{endpoint}\" is https but no ca_file is set; set ca_file to the CA that signed etcd's certificate"
        ));
    }
    Ok(format!("{scheme}://{host}:{port}"))
}

fn check_prefix(prefix: &str) -> Result<(), String> {
    let ok = prefix.len() > 1
        && prefix.starts_with('/')
        && !prefix.ends_with('/')
        && !prefix.contains("//")
        && prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "\"{prefix}\" is not a key prefix; write it like \"/canary\" or \"/canary/site-a\" (starts with '/', no trailing '/', letters, digits, '-', '_', '.')"
        ))
    }
}

fn check_lease_ttl(text: &str) -> Result<Duration, String> {
    let ttl = humantime::parse_duration(text.trim())
        .map_err(|e| format!("\"{text}\" is not a duration ({e}); write it like \"5s\""))?;
    if ttl.subsec_nanos() != 0 {
        return Err(format!(
            "\"{text}\" is not a whole number of seconds (etcd leases count seconds); write it like \"5s\""
        ));
    }
    if ttl < MIN_LEASE_TTL || ttl > MAX_LEASE_TTL {
        return Err(format!(
            "\"{text}\" is out of range; use 2s to 300s (a dead leader is replaced within about this long)"
        ));
    }
    Ok(ttl)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw_etcd() -> RawCluster {
        RawCluster {
            store: Some("etcd".into()),
            etcd_endpoints: vec!["http://198.18.0.2:2379".into()],
            ..RawCluster::default()
        }
    }

    fn problems(raw: &RawCluster) -> Vec<String> {
        validate(raw, "lb-1")
            .expect_err("should be refused")
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn empty_section_is_a_local_node_named_after_the_host() {
        let c = validate(&RawCluster::default(), "lb-1").unwrap();
        assert_eq!(c, ClusterConfig::local("lb-1"));
        assert_eq!(c.prefix, "/canary");
        assert_eq!(c.lease_ttl, Duration::from_secs(5));
    }

    #[test]
    fn etcd_section_with_defaults() {
        let c = validate(&raw_etcd(), "lb-1").unwrap();
        assert_eq!(c.store, StoreKind::Etcd);
        assert_eq!(c.etcd_endpoints, vec!["http://198.18.0.2:2379"]);
        assert_eq!(c.node_name, "lb-1");
        assert_eq!(c.lease_ttl_secs(), 5);
        assert!(c.tls.is_none() && c.credentials.is_none());
    }

    #[test]
    fn full_section() {
        let raw = RawCluster {
            store: Some("etcd".into()),
            etcd_endpoints: vec![
                "198.18.0.2:2379".into(),
                "https://[2001:db8::2]:2379".into(),
            ],
            node_name: Some("lb-a".into()),
            prefix: Some("/canary/site-a".into()),
            lease_ttl: Some("3s".into()),
            ca_file: Some("/etc/canary/ca.pem".into()),
            cert_file: Some("/etc/canary/c.pem".into()),
            key_file: Some("/etc/canary/c.key".into()),
            user: Some("canary".into()),
            password_file: Some("/etc/canary/etcd-password".into()),
        };
        let c = validate(&raw, "ignored").unwrap();
        assert_eq!(
            c.etcd_endpoints,
            vec!["https://198.18.0.2:2379", "https://[2001:db8::2]:2379"]
        );
        assert_eq!(c.node_name, "lb-a");
        assert_eq!(c.prefix, "/canary/site-a");
        assert_eq!(c.lease_ttl, Duration::from_secs(3));
        let tls = c.tls.unwrap();
        assert_eq!(tls.ca_file, PathBuf::from("/etc/canary/ca.pem"));
        assert!(tls.client.is_some());
        assert_eq!(c.credentials.unwrap().user, "canary");
    }

    #[test]
    fn every_problem_is_reported_with_key_and_fix() {
        let raw = RawCluster {
            store: Some("zookeeper".into()),
            etcd_endpoints: vec!["ftp://x:1".into(), "198.18.0.2".into(), "h:99999".into()],
            node_name: Some("lb 1".into()),
            prefix: Some("canary/".into()),
            lease_ttl: Some("1500ms".into()),
            cert_file: Some("c.pem".into()),
            user: Some("canary".into()),
            ..RawCluster::default()
        };
        let got = problems(&raw);
        let expect = [
            "cluster.store: \"zookeeper\" is not allowed; use one of \"local\", \"etcd\"",
            "cluster.etcd_endpoints[0]: \"ftp://x:1\" has an unknown scheme",
            "cluster.etcd_endpoints[1]: \"198.18.0.2\" has no port",
            "cluster.etcd_endpoints[2]: \"h:99999\": \"99999\" is not a port",
            "cluster.node_name: \"lb 1\" is not valid",
            "cluster.prefix: \"canary/\" is not a key prefix",
            "cluster.lease_ttl: \"1500ms\" is not a whole number of seconds",
            "cluster.ca_file: is missing but cert_file/key_file are set",
            "cluster.password_file: is missing but user is set",
        ];
        for e in expect {
            assert!(
                got.iter().any(|g| g.starts_with(e)),
                "missing `{e}` in {got:#?}"
            );
        }
        // store "zookeeper" falls back to local for the remaining checks: the endpoints are then
        // also reported as unused.
        assert!(got.iter().all(|g| g.contains("; ")), "{got:#?}");
    }

    #[test]
    fn etcd_without_endpoints_is_refused() {
        let raw = RawCluster {
            store: Some("etcd".into()),
            ..RawCluster::default()
        };
        assert_eq!(
            problems(&raw),
            vec!["cluster.etcd_endpoints: is empty but store is \"etcd\"; list etcd's client URLs, e.g. [\"http://198.18.0.2:2379\"]"]
        );
    }

    #[test]
    fn etcd_keys_with_the_local_store_are_refused() {
        let raw = RawCluster {
            etcd_endpoints: vec!["http://198.18.0.2:2379".into()],
            ..RawCluster::default()
        };
        assert!(
            problems(&raw)[0].starts_with("cluster.etcd_endpoints: is set but store is \"local\"")
        );
    }

    #[test]
    fn tls_and_scheme_must_agree() {
        let mut raw = raw_etcd();
        raw.ca_file = Some("/ca.pem".into());
        assert!(problems(&raw)[0].contains("is plain http but ca_file is set"));
        let mut raw = raw_etcd();
        raw.etcd_endpoints = vec!["https://198.18.0.2:2379".into()];
        assert!(problems(&raw)[0].contains("is https but no ca_file is set"));
    }

    #[test]
    fn lease_ttl_bounds() {
        for (text, ok) in [
            ("2s", true),
            ("300s", true),
            ("5m", true),
            ("1s", false),
            ("301s", false),
            ("abc", false),
            ("0s", false),
        ] {
            let mut raw = raw_etcd();
            raw.lease_ttl = Some(text.into());
            assert_eq!(validate(&raw, "lb").is_ok(), ok, "{text}");
        }
    }

    #[test]
    fn an_invalid_host_name_needs_an_explicit_node_name() {
        let got = validate(&raw_etcd(), "my host").unwrap_err();
        assert!(got[0].to_string().starts_with(
            "cluster.node_name: the host name \"my host\" is not a valid node name; set node_name"
        ));
        let mut raw = raw_etcd();
        raw.node_name = Some("lb-1".into());
        assert_eq!(validate(&raw, "my host").unwrap().node_name, "lb-1");
    }

    #[test]
    fn check_files_names_unreadable_files() {
        let mut c = validate(&raw_etcd(), "lb").unwrap();
        c.credentials = Some(Credentials {
            user: "u".into(),
            password_file: "/nonexistent/canary-password".into(),
        });
        let got = check_files(&c);
        assert_eq!(got.len(), 1);
        assert!(got[0]
            .to_string()
            .starts_with("cluster.password_file: cannot read /nonexistent/canary-password"));
    }

    #[test]
    fn duplicate_endpoints_are_refused() {
        let mut raw = raw_etcd();
        raw.etcd_endpoints.push("198.18.0.2:2379".into());
        assert!(problems(&raw)[0].contains("is listed twice"));
    }
}
