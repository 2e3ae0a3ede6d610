//! Every check of a raw config, one function per section; all problems are collected.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use canary_common::{MAX_BACKENDS, MAX_BACKENDS_PER_GROUP, MAX_SERVICES};

use super::raw::{
    RawAdmin, RawBackend, RawConfig, RawDataplane, RawNotify, RawRollout, RawService,
    RawThresholds, RawUpstream,
};
use super::{
    AdminConfig, BackendConfig, Config, DataplaneConfig, Problem, RolloutConfig, ServiceConfig,
    Thresholds, UpstreamConfig, MAX_SYN_REPLACE_AFTER, MAX_UDP_IDLE_TIMEOUT, MIN_FLOOD_GUARD_RATE,
};
use crate::domain::{
    Affinity, Forwarding, Group, MissingPolicy, Protocol, RollbackMode, StartMode, Weight, XdpMode,
};
use crate::judge::Signal;
use crate::notify::{EventKind, NotifyConfig};
use crate::upstream::{preset, valid_label_name, Selector};

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

    /// A series selector: the explicit value if given, else the preset's (or default's).
    fn selector(
        &mut self,
        key: &str,
        explicit: Option<&str>,
        base: &Selector,
        optional: bool,
    ) -> Option<Selector> {
        let Some(text) = explicit else {
            return Some(base.clone());
        };
        match Selector::parse(text) {
            Ok(s) if s.is_empty() && !optional => {
                self.bad(
                    key,
                    "must not be empty; give the series the backends export, e.g. 'http_requests_total{route=\"/predict\"}'",
                );
                None
            }
            Ok(s) => Some(s),
            Err(e) => {
                self.bad(
                    key,
                    format!("'{text}' is not a series selector: {e}; write a metric name with optional label matchers (=, !=, =~, !~), e.g. 'http_requests_total{{route=\"/predict\",status=~\"5..\"}}'"),
                );
                None
            }
        }
    }

    /// A whole number in `lo..=hi`.
    fn limit(&mut self, key: &str, value: u64, lo: u64, hi: u64, what: &str) -> u64 {
        if !(lo..=hi).contains(&value) {
            self.bad(
                key,
                format!("{value} is out of range; give {lo} to {hi} ({what})"),
            );
        }
        value
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
    match crate::domain::parse_mac(value) {
        Some(b) if b[0] & 1 == 1 || b.iter().all(|x| *x == 0) => {
            c.bad(key, format!("\"{value}\" is not a unicast MAC; give the backend's interface MAC or \"\" to resolve it"));
            None
        }
        Some(b) => Some(b),
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
pub(super) fn validate(raw: &RawConfig) -> Result<Config, Vec<Problem>> {
    let mut c = Checker {
        problems: Vec::new(),
    };
    let (dataplane, heartbeat_timeout) = dataplane(&mut c, &raw.dataplane);
    let admin = admin(&mut c, &raw.admin);
    let tunnel_sources = dataplane
        .as_ref()
        .map(|d| (d.tunnel_source_v4, d.tunnel_source_v6));
    let (services, longest_poll) = services(&mut c, &raw.services, tunnel_sources);
    let notify = notify_sinks(&mut c, &raw.notify);
    if let Some(hb) = heartbeat_timeout {
        if hb < 2 * longest_poll {
            c.bad(
                "dataplane.heartbeat_timeout",
                format!("{} is shorter than twice the longest poll_interval ({}); the data plane would fall back to stable between polls", humantime::format_duration(hb), humantime::format_duration(longest_poll)),
            );
        }
    }

    let cluster = match crate::cluster::config::validate(
        &raw.cluster,
        &crate::cluster::config::host_name(),
    ) {
        Ok(cluster) => Some(cluster),
        Err(problems) => {
            for p in problems {
                c.bad(&p.key, p.message);
            }
            None
        }
    };

    if !c.problems.is_empty() {
        return Err(c.problems);
    }
    // Every value parsed, so the Options below are all Some.
    let (Some(dataplane), Some(admin), Some(cluster)) = (dataplane, admin, cluster) else {
        unreachable!("validation reported no problem but a value is missing");
    };
    Ok(Config {
        dataplane,
        admin,
        services,
        notify,
        cluster,
    })
}

/// `[[notify]]`: webhook URL, events, limits.
fn notify_sinks(c: &mut Checker, raw: &[RawNotify]) -> Vec<NotifyConfig> {
    let mut out = Vec::new();
    for (i, n) in raw.iter().enumerate() {
        let k = format!("notify[{i}]");
        let before = c.problems.len();
        if n.url.is_empty() {
            c.bad(
                format!("{k}.url"),
                "is missing; give the webhook's URL, e.g. \"https://chat.example.com/hooks/canary\"",
            );
        } else {
            c.url(&format!("{k}.url"), &n.url);
        }
        let mut events = Vec::new();
        for e in &n.events {
            match EventKind::parse(e) {
                Some(kind) if !events.contains(&kind) => events.push(kind),
                Some(_) => {}
                None => c.bad(
                    format!("{k}.events"),
                    format!(
                        "{e:?} is not an event; use some of {}",
                        EventKind::ALL.map(EventKind::as_str).join(", ")
                    ),
                ),
            }
        }
        if n.events.is_empty() {
            c.bad(
                format!("{k}.events"),
                "is empty; list the events to send, or leave the key out for all of them",
            );
        }
        if n.hold_intervals == 0 {
            c.bad(
                format!("{k}.hold_intervals"),
                "must be at least 1 (evaluations in a row that held before a hold event)",
            );
        }
        let timeout = c.duration(&format!("{k}.timeout"), &n.timeout);
        if !(1..=100_000).contains(&n.queue) {
            c.bad(
                format!("{k}.queue"),
                format!("{} is out of range; give 1 .. 100000 events", n.queue),
            );
        }
        if n.retries > 10 {
            c.bad(
                format!("{k}.retries"),
                format!("{} is too many; give 0 .. 10", n.retries),
            );
        }
        let name = if n.name.is_empty() {
            format!("notify-{i}")
        } else {
            n.name.clone()
        };
        if out.iter().any(|o: &NotifyConfig| o.name == name) {
            c.bad(
                format!("{k}.name"),
                format!("{name:?} is used by another [[notify]] entry; names must be unique"),
            );
        }
        if let (Some(timeout), true) = (timeout, c.problems.len() == before) {
            out.push(NotifyConfig {
                name,
                url: n.url.clone(),
                events,
                hold_intervals: n.hold_intervals,
                bearer_token_file: (!n.bearer_token_file.is_empty())
                    .then(|| PathBuf::from(&n.bearer_token_file)),
                timeout,
                retries: n.retries,
                queue: n.queue as usize,
            });
        }
    }
    out
}

/// `[dataplane]`; also the heartbeat timeout alone, for the check against the poll intervals.
fn dataplane(c: &mut Checker, d: &RawDataplane) -> (Option<DataplaneConfig>, Option<Duration>) {
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
    let syn_replace_after = syn_replace_after(c, &d.syn_replace_after);
    let flood_guard_rate = flood_guard_rate(c, d.flood_guard_rate);
    let tunnel_source_v4 =
        tunnel_source(c, "dataplane.tunnel_source_v4", &d.tunnel_source_v4, true);
    let tunnel_source_v6 =
        tunnel_source(c, "dataplane.tunnel_source_v6", &d.tunnel_source_v6, false);
    let udp_idle_timeout = udp_idle_timeout(c, &d.udp_idle_timeout);
    for (key, value) in [
        ("dataplane.state_dir", &d.state_dir),
        ("dataplane.bpffs", &d.bpffs),
    ] {
        if !Path::new(value).is_absolute() || value == "/" {
            c.bad(key, format!("\"{value}\" is not an absolute directory path below /; give one like \"/var/lib/canary\""));
        }
    }

    let config = match (
        xdp_mode,
        heartbeat_timeout,
        syn_replace_after,
        tunnel_source_v4,
        tunnel_source_v6,
        udp_idle_timeout,
    ) {
        (
            Some(xdp_mode),
            Some(heartbeat_timeout),
            Some(syn_replace_after),
            Ok(tunnel_source_v4),
            Ok(tunnel_source_v6),
            Some(udp_idle_timeout),
        ) => Some(DataplaneConfig {
            interface: d.interface.clone(),
            xdp_mode,
            flow_table_size,
            heartbeat_timeout,
            state_dir: PathBuf::from(&d.state_dir),
            bpffs: PathBuf::from(&d.bpffs),
            hash_seed: d.hash_seed,
            syn_replace_after,
            flood_guard_rate,
            tunnel_source_v4: tunnel_source_v4.map(|a| match a {
                IpAddr::V4(a) => a,
                IpAddr::V6(_) => unreachable!("checked to be IPv4"),
            }),
            tunnel_source_v6: tunnel_source_v6.map(|a| match a {
                IpAddr::V6(a) => a,
                IpAddr::V4(_) => unreachable!("checked to be IPv6"),
            }),
            udp_idle_timeout,
        }),
        _ => None,
    };
    (config, heartbeat_timeout)
}

/// `dataplane.tunnel_source_v4` / `_v6`: `""` (none: `Ok(None)`) or a unicast address of the
/// family; `Err` after a problem (reported).
fn tunnel_source(c: &mut Checker, key: &str, value: &str, v4: bool) -> Result<Option<IpAddr>, ()> {
    if value.is_empty() {
        return Ok(None);
    }
    let example = if v4 { "198.18.0.2" } else { "2001:db8::2" };
    let family = if v4 { "IPv4" } else { "IPv6" };
    match value.parse::<IpAddr>() {
        Ok(ip) if ip.is_ipv4() != v4 => {
            c.bad(key, format!("\"{value}\" is not an {family} address; give this host's {family} address that IP-in-IP packets leave from, e.g. \"{example}\""));
            Err(())
        }
        Ok(ip) if ip.is_unspecified() || ip.is_multicast() || ip.is_loopback() => {
            c.bad(key, format!("\"{value}\" is not a unicast address the backends can see; give this host's {family} address that IP-in-IP packets leave from, e.g. \"{example}\""));
            Err(())
        }
        Ok(ip) => Ok(Some(ip)),
        Err(_) => {
            c.bad(key, format!("\"{value}\" is not an IP address; give this host's {family} address that IP-in-IP packets leave from, e.g. \"{example}\", or \"\" for none"));
            Err(())
        }
    }
}

/// `dataplane.syn_replace_after`: zero (every SYN replaces its 5-tuple's entry) or whole
/// milliseconds up to [`MAX_SYN_REPLACE_AFTER`].
fn syn_replace_after(c: &mut Checker, value: &str) -> Option<Duration> {
    const KEY: &str = "dataplane.syn_replace_after";
    let d = match humantime::parse_duration(value.trim()) {
        Ok(d) => d,
        Err(e) => {
            c.bad(
                KEY,
                format!("\"{value}\" is not a duration ({e}); write it like \"5s\" or \"500ms\", or \"0s\" to let every SYN replace its 5-tuple's entry"),
            );
            return None;
        }
    };
    if d > MAX_SYN_REPLACE_AFTER {
        c.bad(
            KEY,
            format!("\"{value}\" is too long; give at most \"1h\" (default \"5s\": longer than a client retransmits its SYN, shorter than a port is reused)"),
        );
        return None;
    }
    if d.subsec_nanos() % 1_000_000 != 0 {
        c.bad(
            KEY,
            format!("\"{value}\" is not whole milliseconds (the data plane counts in ms); write it like \"5s\" or \"1500ms\""),
        );
        return None;
    }
    Some(d)
}

/// `dataplane.udp_idle_timeout`: zero (UDP entries never idle out) or whole milliseconds up to
/// [`MAX_UDP_IDLE_TIMEOUT`].
fn udp_idle_timeout(c: &mut Checker, value: &str) -> Option<Duration> {
    const KEY: &str = "dataplane.udp_idle_timeout";
    let d = match humantime::parse_duration(value.trim()) {
        Ok(d) => d,
        Err(e) => {
            c.bad(
                KEY,
                format!("\"{value}\" is not a duration ({e}); write it like \"30s\" or \"2m\", or \"0s\" to keep UDP entries until the flow table evicts them"),
            );
            return None;
        }
    };
    if d > MAX_UDP_IDLE_TIMEOUT {
        c.bad(
            KEY,
            format!("\"{value}\" is too long; give at most \"24h\" (default \"30s\": longer than a UDP client pauses between datagrams of one flow)"),
        );
        return None;
    }
    if d.subsec_nanos() % 1_000_000 != 0 {
        c.bad(
            KEY,
            format!("\"{value}\" is not whole milliseconds (the data plane counts in ms); write it like \"30s\" or \"1500ms\""),
        );
        return None;
    }
    Some(d)
}

/// `dataplane.flood_guard_rate`: 0 (off) or [`MIN_FLOOD_GUARD_RATE`] to `u32::MAX` new flows per
/// second per CPU.
fn flood_guard_rate(c: &mut Checker, value: u64) -> u32 {
    match u32::try_from(value) {
        Ok(rate) if rate == 0 || u64::from(rate) >= MIN_FLOOD_GUARD_RATE => rate,
        _ => {
            c.bad(
                "dataplane.flood_guard_rate",
                format!("{value} is out of range; give 0 (off) or {MIN_FLOOD_GUARD_RATE} to {} new flows per second per CPU (above it, new flows are balanced without a flow-table entry, so a lower rate would leave ordinary connections unpinned)", u32::MAX),
            );
            0
        }
    }
}

/// `[admin]`
fn admin(c: &mut Checker, a: &RawAdmin) -> Option<AdminConfig> {
    let listen = a.listen.parse::<SocketAddr>().ok();
    if listen.is_none() {
        c.bad(
            "admin.listen",
            format!(
                "\"{}\" is not an address with port; write \"127.0.0.1:9100\"",
                a.listen
            ),
        );
    }
    let token_file = (!a.token_file.is_empty()).then(|| PathBuf::from(&a.token_file));
    if let Some(listen) = listen {
        if !listen.ip().is_loopback() && token_file.is_none() {
            c.bad(
                "admin.token_file",
                format!("is required because admin.listen ({listen}) is not a loopback address; give a file holding the API token, or listen on 127.0.0.1"),
            );
        }
    }

    let max_connections = if (1..=4096).contains(&a.max_connections) {
        a.max_connections as usize
    } else {
        c.bad(
            "admin.max_connections",
            format!(
                "{} is out of range; use 1 to 4096 connections (default 64)",
                a.max_connections
            ),
        );
        0
    };
    let header_read_timeout = c.duration("admin.header_read_timeout", &a.header_read_timeout);
    let idle_timeout = c.duration("admin.idle_timeout", &a.idle_timeout);
    match (listen, header_read_timeout, idle_timeout) {
        (Some(listen), Some(header_read_timeout), Some(idle_timeout)) => Some(AdminConfig {
            listen,
            token_file,
            max_connections,
            header_read_timeout,
            idle_timeout,
        }),
        _ => None,
    }
}

/// `[[services]]`: each service, and what must hold across them. Also returns the longest
/// poll interval.
fn services(
    c: &mut Checker,
    raw: &[RawService],
    tunnel_sources: Option<(Option<Ipv4Addr>, Option<Ipv6Addr>)>,
) -> (Vec<ServiceConfig>, Duration) {
    if raw.is_empty() {
        c.bad(
            "services",
            "no [[services]] defined; add at least one service with its backends",
        );
    }
    if raw.len() > MAX_SERVICES as usize {
        c.bad(
            "services",
            format!(
                "{} services defined; at most {MAX_SERVICES} are supported",
                raw.len()
            ),
        );
    }
    let total_backends: usize = raw.iter().map(|s| s.backends.len()).sum();
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
    for (i, s) in raw.iter().enumerate() {
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
        let vip = parse_vip(c, &format!("{sk}.vip"), &s.vip);
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
        let forwarding = c.keyword(
            &format!("{sk}.forwarding"),
            &s.forwarding,
            Forwarding::parse,
            Forwarding::CHOICES,
        );
        let tunnel_source = match (forwarding, vip, tunnel_sources) {
            (Some(Forwarding::Ipip), Some(vip), Some((v4, v6))) => {
                let (source, key, example) = if vip.is_ipv4() {
                    (v4.map(IpAddr::V4), "tunnel_source_v4", "198.18.0.2")
                } else {
                    (v6.map(IpAddr::V6), "tunnel_source_v6", "2001:db8::2")
                };
                if source.is_none() {
                    c.bad(
                        format!("{sk}.forwarding"),
                        format!("\"ipip\" needs the balancer's outer source address for the VIP's family; set [dataplane] {key} = \"{example}\" (an address of this host the backends can see), or use forwarding = \"l2\""),
                    );
                }
                source
            }
            _ => None,
        };

        let backends = backends(c, &sk, &s.backends, vip, forwarding);
        let rollout = rollout(c, &format!("{sk}.rollout"), &s.rollout, &mut longest_poll);
        let upstream = upstream(c, &format!("{sk}.upstream"), &s.upstream);
        if let (Some(vip), Some(protocol), Some(affinity), Some(forwarding), Some(rollout)) =
            (vip, protocol, affinity, forwarding, rollout)
        {
            services.push(ServiceConfig {
                name: s.name.clone(),
                vip,
                protocol,
                affinity,
                forwarding,
                tunnel_source,
                backends,
                rollout,
                upstream,
            });
        }
    }
    (services, longest_poll)
}

/// `[[services.backends]]` of one service (those valid; problems for the others).
fn backends(
    c: &mut Checker,
    sk: &str,
    raw: &[RawBackend],
    vip: Option<SocketAddr>,
    forwarding: Option<Forwarding>,
) -> Vec<BackendConfig> {
    let mut names: BTreeMap<&str, usize> = BTreeMap::new();
    let mut addresses: BTreeMap<IpAddr, usize> = BTreeMap::new();
    let mut backends = Vec::new();
    let mut counts = [0usize; 2];
    for (j, b) in raw.iter().enumerate() {
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
        let address = parse_backend_address(c, &format!("{bk}.address"), &b.address);
        if let Some(a) = address {
            if let Some(first) = addresses.insert(a, j) {
                c.bad(format!("{bk}.address"), format!("{a} is already the address of {sk}.backends[{first}]; each backend is listed once"));
            }
        }
        let ipip = forwarding == Some(Forwarding::Ipip);
        if let (true, Some(a), Some(v)) = (ipip, address, vip) {
            if a.is_ipv4() != v.is_ipv4() {
                let (family, vip_family) = if a.is_ipv4() {
                    ("IPv4", "IPv6")
                } else {
                    ("IPv6", "IPv4")
                };
                c.bad(format!("{bk}.address"), format!("{a} is {family} but the VIP is {vip_family}; forwarding = \"ipip\" carries IPv4 in IPv4 and IPv6 in IPv6, so give the backend's {vip_family} address"));
            }
        }
        if ipip && !b.mac.is_empty() {
            c.bad(format!("{bk}.mac"), "is not used with forwarding = \"ipip\" (the next hop's MAC comes from the kernel's routes); remove it");
        }
        let mac = if ipip {
            None
        } else {
            parse_mac(c, &format!("{bk}.mac"), &b.mac)
        };
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
        && raw.iter().all(|b| Group::parse(&b.group).is_some())
    {
        c.bad(format!("{sk}.backends"), "has no backend with group = \"stable\"; a service needs at least one stable backend (the canary group may be empty)");
    }
    for g in [Group::Stable, Group::Canary] {
        if counts[g.index() as usize] > MAX_BACKENDS_PER_GROUP as usize {
            c.bad(format!("{sk}.backends"), format!("{} backends in group {g}; at most {MAX_BACKENDS_PER_GROUP} per group are supported", counts[g.index() as usize]));
        }
    }

    backends
}

/// `[services.rollout]`, thresholds included.
fn rollout(
    c: &mut Checker,
    rk: &str,
    r: &RawRollout,
    longest_poll: &mut Duration,
) -> Option<RolloutConfig> {
    let steps = validate_steps(c, &format!("{rk}.steps"), &r.steps);
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
        *longest_poll = (*longest_poll).max(p);
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
    let warmup_body = (!r.warmup_body.is_empty()).then(|| r.warmup_body.clone());
    if let Some(body) = &warmup_body {
        if let Err(e) = serde_json::from_str::<serde_json::Value>(body) {
            c.bad(
                format!("{rk}.warmup_body"),
                format!("is not JSON ({e}); give the body of one request the model answers, e.g. '{{\"text\": \"warm-up\"}}', or \"\" for GETs"),
            );
        }
        if warmup_url.is_none() {
            c.bad(
                format!("{rk}.warmup_body"),
                "is set but warmup_url is not: the body is POSTed to warmup_url (the health endpoint takes no body); set warmup_url, e.g. \"http://{address}:8080/predict\"".to_string(),
            );
        }
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
    let thresholds = thresholds(c, &format!("{rk}.thresholds"), &r.thresholds);

    let mut dry_run = Vec::new();
    for name in &r.dry_run {
        match Signal::deciding(name) {
            Some(s) if !dry_run.contains(&s) => dry_run.push(s),
            Some(_) => {}
            None => c.bad(
                format!("{rk}.dry_run"),
                format!(
                    "{name:?} is not a signal that can hold or roll back; use some of {}",
                    Signal::DECIDING.map(Signal::as_str).join(", ")
                ),
            ),
        }
    }

    let (Some(interval), Some(poll_interval), Some(rollback), Some(start), Some(metrics_missing)) =
        (interval, poll_interval, rollback, start, metrics_missing)
    else {
        return None;
    };
    Some(RolloutConfig {
        steps,
        interval,
        poll_interval,
        min_samples: r.min_samples,
        warmup_requests: r.warmup_requests,
        warmup_url,
        warmup_body,
        rollback,
        start,
        metrics_missing,
        metrics_missing_intervals: r.metrics_missing_intervals,
        thresholds,
        dry_run,
    })
}

/// `[services.rollout.thresholds]`
fn thresholds(c: &mut Checker, tk: &str, t: &RawThresholds) -> Thresholds {
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
    for (key, value, example) in [
        (
            "max_error_rate_ratio",
            t.max_error_rate_ratio,
            "1.5 for at most 1.5 times stable's error rate",
        ),
        (
            "max_latency_ratio",
            t.max_latency_ratio,
            "1.2 for at most 1.2 times stable's latency",
        ),
    ] {
        if !(value.is_finite() && (value == 0.0 || (value > 1.0 && value <= 1000.0))) {
            c.bad(
                format!("{tk}.{key}"),
                format!("{value} is out of range; give a factor above 1 (canary at most that many times stable), e.g. {example}, or 0 to switch it off"),
            );
        }
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
    Thresholds {
        max_error_rate_increase: t.max_error_rate_increase,
        max_error_rate_ratio: t.max_error_rate_ratio,
        max_latency_increase_ms: t.max_latency_increase_ms,
        max_latency_ratio: t.max_latency_ratio,
        error_spike: t.error_spike,
        max_prediction_shift: t.max_prediction_shift,
        confidence: t.confidence,
    }
}

/// `[services.upstream]`: the preset (or the defaults), each explicit selector over it, and
/// the limits.
fn upstream(c: &mut Checker, uk: &str, u: &RawUpstream) -> UpstreamConfig {
    let preset_name = u.preset.as_deref().filter(|p| !p.is_empty());
    let found = preset_name.map(|name| (name, preset::find(name)));
    let base = if let Some((_, Some(p))) = found {
        UpstreamConfig::from_preset(p)
    } else {
        if let Some((name, None)) = found {
            let list = preset::names()
                .iter()
                .map(|n| format!("\"{n}\""))
                .collect::<Vec<_>>()
                .join(", ");
            c.bad(
                format!("{uk}.preset"),
                format!("\"{name}\" is not a preset; use one of {list}, or leave it out and give every series"),
            );
        }
        UpstreamConfig::default()
    };
    let requests = c.selector(
        &format!("{uk}.requests"),
        u.requests.as_deref(),
        &base.requests,
        false,
    );
    let errors = c.selector(
        &format!("{uk}.errors"),
        u.errors.as_deref(),
        &base.errors,
        false,
    );
    let latency = c.selector(
        &format!("{uk}.latency"),
        u.latency.as_deref(),
        &base.latency,
        true,
    );
    let predictions = c.selector(
        &format!("{uk}.predictions"),
        u.predictions.as_deref(),
        &base.predictions,
        true,
    );
    if let Some(l) = &latency {
        let m = l.metric();
        if let Some(suffix) = ["_bucket", "_sum", "_count"]
            .iter()
            .find(|s| m.ends_with(**s))
        {
            c.bad(
                format!("{uk}.latency"),
                format!("\"{m}\" is one part of a histogram; give the histogram's name without \"{suffix}\", e.g. \"{}\"", &m[..m.len() - suffix.len()]),
            );
        }
        if l.matchers().iter().any(|x| x.label == "le") {
            c.bad(
                format!("{uk}.latency"),
                "matches the label `le`, the bucket bound, which every bucket needs; match the other labels only",
            );
        }
    }
    let prediction_label = u
        .prediction_label
        .clone()
        .unwrap_or_else(|| base.prediction_label.clone());
    if predictions.as_ref().is_some_and(|p| !p.is_empty())
        && (!valid_label_name(&prediction_label) || prediction_label == "le")
    {
        c.bad(format!("{uk}.prediction_label"), format!("\"{prediction_label}\" is not a usable label name; give the label that holds the predicted class, e.g. \"class\""));
    }
    let version_label = u
        .version_label
        .clone()
        .unwrap_or_else(|| base.version_label.clone());
    if !version_label.is_empty() && !valid_label_name(&version_label) {
        c.bad(format!("{uk}.version_label"), format!("\"{version_label}\" is not a label name; give the label that holds the model version, e.g. \"model_version\", or \"\" for none"));
    }
    let max_scrape_bytes = c.limit(
        &format!("{uk}.max_scrape_bytes"),
        u.max_scrape_bytes,
        4096,
        1 << 30,
        "bytes of one /metrics answer",
    );
    let max_series = c.limit(
        &format!("{uk}.max_series"),
        u.max_series,
        10,
        10_000_000,
        "series in one exposition",
    );
    let max_prediction_classes = c.limit(
        &format!("{uk}.max_prediction_classes"),
        u.max_prediction_classes,
        2,
        100_000,
        "prediction classes per backend",
    );

    UpstreamConfig {
        preset: preset_name.map(str::to_string),
        requests: requests.unwrap_or_default(),
        errors: errors.unwrap_or_default(),
        latency: latency.unwrap_or_default(),
        predictions: predictions.unwrap_or_default(),
        prediction_label,
        version_label,
        max_scrape_bytes,
        max_series: usize::try_from(max_series).unwrap_or(usize::MAX),
        max_prediction_classes: usize::try_from(max_prediction_classes).unwrap_or(usize::MAX),
    }
}
