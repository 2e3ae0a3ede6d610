//! The config file: parsing, defaults and every validation message.

use super::raw::*;
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
syn_replace_after = "5s"
flood_guard_rate = 0
tunnel_source_v4 = ""
tunnel_source_v6 = ""
udp_idle_timeout = "30s"

[cluster]
store = "local"

[admin]
listen = "127.0.0.1:9100"
token_file = ""
max_connections = 64
header_read_timeout = "5s"
idle_timeout = "30s"

[[services]]
name = "sentiment"
vip = "198.18.0.100:8080"
protocol = "tcp"
affinity = "flow"
forwarding = "l2"

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
  warmup_body = ""
  rollback = "drain"
  start = "auto"
  metrics_missing = "hold"
  metrics_missing_intervals = 3
  dry_run = []

  [services.rollout.thresholds]
  max_error_rate_increase = 0.02
  max_error_rate_ratio = 0
  max_latency_increase_ms = 50
  max_latency_ratio = 0
  error_spike = 0.10
  max_prediction_shift = 0.10
  confidence = 0.99

  [services.upstream]
  preset = ""
  requests = "requests_total"
  errors = "request_errors_total"
  latency = "request_duration_seconds"
  predictions = "predictions_total"
  prediction_label = "class"
  version_label = ""
  max_scrape_bytes = 4194304
  max_series = 20000
  max_prediction_classes = 1000

[[notify]]
name = "chat"
url = "https://chat.example.com/hooks/canary"
events = ["start", "step", "promote", "rollback", "hold", "deadman", "metrics_missing"]
hold_intervals = 3
bearer_token_file = ""
timeout = "5s"
retries = 3
queue = 256
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
    assert_eq!(c.dataplane.syn_replace_after, Duration::from_secs(5));
    assert_eq!(c.dataplane.flood_guard_rate, 0);
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
fn ipip_forwarding_needs_a_tunnel_source_and_backends_of_the_vip_family() {
    let ipip = with("forwarding = \"l2\"", "forwarding = \"ipip\"")
        .replace("  mac = \"02:00:c6:12:00:15\"\n", "");
    assert_problem(
        &ipip,
        "services[0].forwarding: \"ipip\" needs the balancer's outer source address for the VIP's family; set [dataplane] tunnel_source_v4 = \"198.18.0.2\" (an address of this host the backends can see), or use forwarding = \"l2\"",
    );
    let sourced = ipip.replace(
        "tunnel_source_v4 = \"\"",
        "tunnel_source_v4 = \"198.18.0.2\"",
    );
    let c = Config::from_toml_str(&sourced).expect("ipip with a source is valid");
    assert_eq!(c.services[0].forwarding, Forwarding::Ipip);
    assert_eq!(
        c.services[0].tunnel_source,
        Some("198.18.0.2".parse().unwrap())
    );
    assert_eq!(c.services[0].backends[1].mac, None);
    let full = Config::from_toml_str(FULL).unwrap();
    assert_eq!(full.services[0].forwarding, Forwarding::L2);
    assert_eq!(full.services[0].tunnel_source, None);

    assert_problem(
        &sourced.replace("address = \"198.18.0.21\"", "address = \"2001:db8::21\""),
        "services[0].backends[1].address: 2001:db8::21 is IPv6 but the VIP is IPv4; forwarding = \"ipip\" carries IPv4 in IPv4 and IPv6 in IPv6, so give the backend's IPv4 address",
    );
    assert_problem(
        &with("forwarding = \"l2\"", "forwarding = \"ipip\"")
            .replace("tunnel_source_v4 = \"\"", "tunnel_source_v4 = \"198.18.0.2\""),
        "services[0].backends[1].mac: is not used with forwarding = \"ipip\" (the next hop's MAC comes from the kernel's routes); remove it",
    );
    assert_problem(
        &with("forwarding = \"l2\"", "forwarding = \"gre\""),
        "services[0].forwarding: \"gre\" is not allowed; use one of \"l2\", \"ipip\"",
    );
    assert_problem(
        &with("tunnel_source_v4 = \"\"", "tunnel_source_v4 = \"2001:db8::2\""),
        "dataplane.tunnel_source_v4: \"2001:db8::2\" is not an IPv4 address; give this host's IPv4 address that IP-in-IP packets leave from, e.g. \"198.18.0.2\"",
    );
    assert_problem(
        &with("tunnel_source_v6 = \"\"", "tunnel_source_v6 = \"nope\""),
        "dataplane.tunnel_source_v6: \"nope\" is not an IP address; give this host's IPv6 address that IP-in-IP packets leave from, e.g. \"2001:db8::2\", or \"\" for none",
    );
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
        .chain(NOTIFY_KEYS)
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
        p.contains(&"services[0].backends[0].mca: unknown key; did you mean `mac`?".to_string()),
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
fn syn_replace_after_and_flood_guard_rate_are_checked() {
    let c = Config::from_toml_str(MINIMAL).unwrap();
    assert_eq!(c.dataplane.syn_replace_after, Duration::from_secs(5));
    assert_eq!(c.dataplane.flood_guard_rate, 0);
    let c = Config::from_toml_str(&with(
        "syn_replace_after = \"5s\"\nflood_guard_rate = 0",
        "syn_replace_after = \"0s\"\nflood_guard_rate = 20000",
    ))
    .unwrap();
    assert_eq!(c.dataplane.syn_replace_after, Duration::ZERO);
    assert_eq!(c.dataplane.flood_guard_rate, 20_000);
    assert_problem(
        &with("syn_replace_after = \"5s\"", "syn_replace_after = \"soon\""),
        "dataplane.syn_replace_after: \"soon\" is not a duration (expected number at 0); write it like \"5s\" or \"500ms\", or \"0s\" to let every SYN replace its 5-tuple's entry",
    );
    assert_problem(
        &with("syn_replace_after = \"5s\"", "syn_replace_after = \"2h\""),
        "dataplane.syn_replace_after: \"2h\" is too long; give at most \"1h\" (default \"5s\": longer than a client retransmits its SYN, shorter than a port is reused)",
    );
    assert_problem(
        &with("syn_replace_after = \"5s\"", "syn_replace_after = \"1500us\""),
        "dataplane.syn_replace_after: \"1500us\" is not whole milliseconds (the data plane counts in ms); write it like \"5s\" or \"1500ms\"",
    );
    for bad in [1u64, 99, 1 << 32] {
        assert_problem(
            &with("flood_guard_rate = 0", &format!("flood_guard_rate = {bad}")),
            &format!("dataplane.flood_guard_rate: {bad} is out of range; give 0 (off) or 100 to 4294967295 new flows per second per CPU (above it, new flows are balanced without a flow-table entry, so a lower rate would leave ordinary connections unpinned)"),
        );
    }
}

#[test]
fn udp_idle_timeout_is_checked() {
    let c = Config::from_toml_str(MINIMAL).unwrap();
    assert_eq!(c.dataplane.udp_idle_timeout, Duration::from_secs(30));
    let key = "udp_idle_timeout = \"30s\"";
    let c = Config::from_toml_str(&with(key, "udp_idle_timeout = \"0s\"")).unwrap();
    assert_eq!(c.dataplane.udp_idle_timeout, Duration::ZERO);
    let c = Config::from_toml_str(&with(key, "udp_idle_timeout = \"2m\"")).unwrap();
    assert_eq!(c.dataplane.udp_idle_timeout, Duration::from_mins(2));
    assert_problem(
        &with(key, "udp_idle_timeout = \"idle\""),
        "dataplane.udp_idle_timeout: \"idle\" is not a duration (expected number at 0); write it like \"30s\" or \"2m\", or \"0s\" to keep UDP entries until the flow table evicts them",
    );
    assert_problem(
        &with(key, "udp_idle_timeout = \"2days\""),
        "dataplane.udp_idle_timeout: \"2days\" is too long; give at most \"24h\" (default \"30s\": longer than a UDP client pauses between datagrams of one flow)",
    );
    assert_problem(
        &with(key, "udp_idle_timeout = \"10us\""),
        "dataplane.udp_idle_timeout: \"10us\" is not whole milliseconds (the data plane counts in ms); write it like \"30s\" or \"1500ms\"",
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
            &with("max_error_rate_ratio = 0", "max_error_rate_ratio = 0.5"),
            "services[0].rollout.thresholds.max_error_rate_ratio: 0.5 is out of range; give a factor above 1 (canary at most that many times stable), e.g. 1.5 for at most 1.5 times stable's error rate, or 0 to switch it off",
        );
    assert_problem(
            &with("max_latency_ratio = 0", "max_latency_ratio = 1"),
            "services[0].rollout.thresholds.max_latency_ratio: 1 is out of range; give a factor above 1 (canary at most that many times stable), e.g. 1.2 for at most 1.2 times stable's latency, or 0 to switch it off",
        );
    let c = Config::from_toml_str(&with(
        "max_error_rate_ratio = 0",
        "max_error_rate_ratio = 1.5",
    ))
    .expect("a ratio is valid");
    assert!((c.services[0].rollout.thresholds.max_error_rate_ratio - 1.5).abs() < 1e-12);
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
            "services[0].upstream.requests: must not be empty; give the series the backends export, e.g. 'http_requests_total{route=\"/predict\"}'",
        );
}

#[test]
fn admin_connection_limits() {
    let c = Config::from_toml_str(FULL).unwrap();
    assert_eq!(c.admin.max_connections, 64);
    assert_eq!(c.admin.header_read_timeout, Duration::from_secs(5));
    assert_eq!(c.admin.idle_timeout, Duration::from_secs(30));
    assert_problem(
        &with("max_connections = 64", "max_connections = 0"),
        "admin.max_connections: 0 is out of range; use 1 to 4096 connections (default 64)",
    );
    assert_problem(
        &with("\nidle_timeout = \"30s\"", "\nidle_timeout = \"0s\""),
        "admin.idle_timeout: \"0s\" is zero; give a positive duration such as \"15s\"",
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

fn upstream_of(section: &str) -> Result<UpstreamConfig, Vec<String>> {
    let text = format!("{MINIMAL}\n  [services.upstream]\n{section}\n");
    match Config::from_toml_str(&text) {
        Ok(c) => Ok(c.services[0].upstream.clone()),
        Err(e) => Err(e.problems().iter().map(ToString::to_string).collect()),
    }
}

#[test]
fn upstream_selectors_are_parsed_with_label_matchers() {
    let u = upstream_of(
        r#"  requests = 'http_requests_total{route="/predict"}'
  errors = 'http_requests_total{route="/predict", status=~"5.."}'
  latency = 'http_request_duration_seconds{route!="/healthz"}'
  predictions = 'model_predictions_total{model_version!~"v0|test"}'"#,
    )
    .expect("valid");
    assert_eq!(
        u.requests.to_string(),
        r#"http_requests_total{route="/predict"}"#
    );
    assert_eq!(
        u.errors.to_string(),
        r#"http_requests_total{route="/predict",status=~"5.."}"#
    );
    assert_eq!(
        u.latency.matchers()[0].op,
        crate::upstream::MatchOp::NotEqual
    );
    assert_eq!(
        u.predictions.matchers()[0].op,
        crate::upstream::MatchOp::NotMatches
    );
    // "" switches latency and predictions off.
    let u = upstream_of("  latency = \"\"\n  predictions = \"\"").expect("valid");
    assert!(u.latency.is_empty() && u.predictions.is_empty());
}

#[test]
fn bad_selectors_are_reported_with_the_key_and_a_fix() {
    let p = upstream_of(
        r#"  requests = 'http_requests_total{route="/predict"'
  errors = 'http_requests_total{status=~"5..("}'
  latency = 'http_request_duration_seconds{route=="/predict"}'
  predictions = 'model predictions'"#,
    )
    .unwrap_err();
    let fix = "; write a metric name with optional label matchers (=, !=, =~, !~), e.g. 'http_requests_total{route=\"/predict\",status=~\"5..\"}'";
    let expected = [
        format!("services[0].upstream.requests: 'http_requests_total{{route=\"/predict\"' is not a series selector: the label matchers have no closing `}}`{fix}"),
        format!("services[0].upstream.errors: 'http_requests_total{{status=~\"5..(\"}}' is not a series selector: the regular expression for `status` is not valid: unclosed group{fix}"),
        format!("services[0].upstream.latency: 'http_request_duration_seconds{{route==\"/predict\"}}' is not a series selector: unknown operator \"==\" after label `route`; use =, !=, =~ or !~{fix}"),
        format!("services[0].upstream.predictions: 'model predictions' is not a series selector: \"model\" is not a metric name (letters, digits, '_' and ':', not starting with a digit){fix}"),
    ];
    assert_eq!(p, expected);
}

#[test]
fn latency_selector_names_the_histogram_and_leaves_le_alone() {
    let p = upstream_of("  latency = 'request_duration_seconds_bucket'").unwrap_err();
    assert_eq!(p, ["services[0].upstream.latency: \"request_duration_seconds_bucket\" is one part of a histogram; give the histogram's name without \"_bucket\", e.g. \"request_duration_seconds\""]);
    let p = upstream_of("  latency = 'request_duration_seconds{le=\"0.1\"}'").unwrap_err();
    assert_eq!(p, ["services[0].upstream.latency: matches the label `le`, the bucket bound, which every bucket needs; match the other labels only"]);
    let p = upstream_of("  version_label = \"model-version\"").unwrap_err();
    assert!(
        p[0].starts_with(
            "services[0].upstream.version_label: \"model-version\" is not a label name"
        ),
        "{p:?}"
    );
}

#[test]
fn presets_fill_every_series_and_explicit_keys_override_them() {
    let u = upstream_of("  preset = \"prometheus-client\"").expect("valid");
    assert_eq!(u.preset.as_deref(), Some("prometheus-client"));
    assert_eq!(
        u.requests.to_string(),
        r#"http_requests_total{route="/predict"}"#
    );
    assert_eq!(
        u.errors.to_string(),
        r#"http_requests_total{route="/predict",status=~"5.."}"#
    );
    assert_eq!(
        u.latency.to_string(),
        r#"http_request_duration_seconds{route="/predict"}"#
    );
    assert_eq!(u.predictions.to_string(), "model_predictions_total");
    assert_eq!(u.prediction_label, "class");
    assert_eq!(u.version_label, "model_version");

    let u = upstream_of("  preset = \"fastapi-instrumentator\"\n  requests = 'http_requests_total{handler=\"/v1/predict\"}'\n  latency = \"\"").expect("valid");
    assert_eq!(
        u.requests.to_string(),
        r#"http_requests_total{handler="/v1/predict"}"#
    );
    assert_eq!(
        u.errors.to_string(),
        r#"http_requests_total{handler="/predict",status="5xx"}"#,
        "keys not given come from the preset"
    );
    assert!(u.latency.is_empty());

    let u = upstream_of("  preset = \"canary-model\"").expect("valid");
    assert_eq!(
        UpstreamConfig { preset: None, ..u },
        UpstreamConfig::default(),
        "the defaults are canary-model's series"
    );

    let p = upstream_of("  preset = \"flask\"").unwrap_err();
    assert_eq!(p, ["services[0].upstream.preset: \"flask\" is not a preset; use one of \"canary-model\", \"prometheus-client\", \"fastapi-instrumentator\", or leave it out and give every series"]);
}

#[test]
fn scrape_limits_are_checked() {
    let u = upstream_of(
        "  max_scrape_bytes = 65536\n  max_series = 500\n  max_prediction_classes = 20",
    )
    .expect("valid");
    assert_eq!(
        (u.max_scrape_bytes, u.max_series, u.max_prediction_classes),
        (65536, 500, 20)
    );
    let d = UpstreamConfig::default();
    assert_eq!(
        (d.max_scrape_bytes, d.max_series, d.max_prediction_classes),
        (4 << 20, 20_000, 1_000)
    );
    let p = upstream_of("  max_scrape_bytes = 100\n  max_series = 0\n  max_prediction_classes = 1")
        .unwrap_err();
    assert_eq!(
        p,
        [
            "services[0].upstream.max_scrape_bytes: 100 is out of range; give 4096 to 1073741824 (bytes of one /metrics answer)",
            "services[0].upstream.max_series: 0 is out of range; give 10 to 10000000 (series in one exposition)",
            "services[0].upstream.max_prediction_classes: 1 is out of range; give 2 to 100000 (prediction classes per backend)",
        ]
    );
}

#[test]
fn warm_up_posts_a_json_body_to_the_warm_up_url() {
    let text = with(
        "  warmup_url = \"\"\n  warmup_body = \"\"\n",
        "  warmup_url = \"http://{address}:8080/predict\"\n  warmup_body = '{\"text\": \"warm-up\"}'\n",
    );
    let c = Config::from_toml_str(&text).expect("valid");
    let r = &c.services[0].rollout;
    assert_eq!(r.warmup_body.as_deref(), Some("{\"text\": \"warm-up\"}"));
    assert_eq!(
        r.warmup_url.as_deref(),
        Some("http://{address}:8080/predict")
    );

    let p = problems(&with(
        "  warmup_body = \"\"\n",
        "  warmup_body = \"{text\"\n",
    ));
    assert!(
        p.iter()
            .any(|p| p.starts_with("services[0].rollout.warmup_body: is not JSON")),
        "{p:?}"
    );
    assert!(
        p.iter().any(|p| p.contains("is set but warmup_url is not")),
        "{p:?}"
    );
}

#[test]
fn resolved_upstream_selectors_are_described() {
    let u = upstream_of("  preset = \"prometheus-client\"\n  latency = \"\"").expect("valid");
    assert_eq!(
        u.describe(),
        [
            "upstream (preset prometheus-client):",
            "  requests     http_requests_total{route=\"/predict\"}",
            "  errors       http_requests_total{route=\"/predict\",status=~\"5..\"}",
            "  latency      off",
            "  predictions  model_predictions_total, class label `class`",
            "  version      label `model_version`",
            "  limits       4194304 bytes, 20000 series, 1000 prediction classes per scrape",
        ]
    );
    assert_eq!(
        UpstreamConfig::default().describe()[0],
        "upstream (no preset):"
    );
}

#[test]
fn dry_run_names_signals_and_rejects_unknown_ones() {
    let c = Config::from_toml_str(&with(
        "dry_run = []",
        "dry_run = [\"latency_p95\", \"error_spike\", \"latency_p95\"]",
    ))
    .expect("valid dry_run");
    assert_eq!(
        c.services[0].rollout.dry_run,
        vec![
            crate::judge::Signal::LatencyP95,
            crate::judge::Signal::ErrorSpike
        ]
    );
    assert_problem(
        &with("dry_run = []", "dry_run = [\"latency_p99\"]"),
        "services[0].rollout.dry_run: \"latency_p99\" is not a signal that can hold or roll back; use some of error_rate, latency_mean, latency_p95, predictions, error_spike",
    );
}

#[test]
fn notify_entries_are_checked_with_every_problem_named() {
    let c = Config::from_toml_str(FULL).unwrap();
    assert_eq!(c.notify.len(), 1);
    assert_eq!(c.notify[0].name, "chat");
    assert_eq!(c.notify[0].events.len(), 7);
    // Left out, the events are all of them.
    let c = Config::from_toml_str(&with(
        "events = [\"start\", \"step\", \"promote\", \"rollback\", \"hold\", \"deadman\", \"metrics_missing\"]\n",
        "",
    ))
    .unwrap();
    assert_eq!(c.notify[0].events, crate::notify::EventKind::ALL.to_vec());
    assert_problem(
        &with("events = [\"start\",", "events = [\"started\","),
        "notify[0].events: \"started\" is not an event; use some of start, step, promote, rollback, hold, deadman, metrics_missing",
    );
    assert_problem(
        &with(
            "url = \"https://chat.example.com/hooks/canary\"",
            "url = \"chat.example.com\"",
        ),
        "notify[0].url: \"chat.example.com\" is not an http URL; write it like \"http://198.18.0.11:8080/healthz\"",
    );
    assert_problem(
        &with("hold_intervals = 3", "hold_intervals = 0"),
        "notify[0].hold_intervals: must be at least 1 (evaluations in a row that held before a hold event)",
    );
    assert_problem(
        &with("queue = 256", "queue = 0"),
        "notify[0].queue: 0 is out of range; give 1 .. 100000 events",
    );
    let p = problems(&with("retries = 3", "retires = 3"));
    assert!(
        p.iter()
            .any(|m| m.starts_with("notify[0].retires: unknown key")),
        "{p:?}"
    );
}
