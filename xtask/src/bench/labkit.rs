//! Small helpers over the lab shared by the lab benchmarks: namespace sysctls, waiting for a
//! listener, the XDP program's BPF statistics, and the load generator (`wrk`).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use canary_lab::lab::Lab;
use serde::Serialize;

/// Body of every benchmark request (a short text for the model's classifier).
pub(super) const PREDICT_BODY: &str =
    r#"{"text":"the service was quick and the staff were friendly"}"#;

/// Namespace-local TCP settings for load with many short connections: a wide port range and
/// `TIME_WAIT` reuse, so that a run does not starve the next of ports.
pub(super) fn tune_netns(lab: &Lab, netns: &str) -> Result<()> {
    lab.exec_in(
        netns,
        &[
            "sysctl",
            "-q",
            "-w",
            "net.ipv4.ip_local_port_range=1024 65535",
            "net.ipv4.tcp_tw_reuse=1",
            "net.core.somaxconn=8192",
            "net.ipv4.tcp_max_syn_backlog=8192",
        ],
    )?;
    Ok(())
}

/// Waits until `POST /predict` on `target` answers 200 from `netns`.
pub(super) fn wait_http(
    lab: &Lab,
    netns: &str,
    target: SocketAddr,
    timeout: Duration,
) -> Result<()> {
    let start = Instant::now();
    let url = format!("http://{target}/predict");
    loop {
        let out = lab.output_in(
            netns,
            &[
                "curl",
                "-sf",
                "-m",
                "2",
                "-o",
                "/dev/null",
                "-H",
                "content-type: application/json",
                "-d",
                PREDICT_BODY,
                &url,
            ],
        )?;
        if out.status.success() {
            return Ok(());
        }
        if start.elapsed() > timeout {
            bail!("{url} did not answer from {netns} within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Turns on `kernel.bpf_stats_enabled` (programs' run time and count) and restores the
/// previous value when dropped.
pub(super) struct BpfStats {
    previous: String,
}

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStats {
    pub(super) fn enable() -> Result<Self> {
        let previous = std::fs::read_to_string(BPF_STATS)
            .with_context(|| format!("read {BPF_STATS}"))?
            .trim()
            .to_owned();
        std::fs::write(BPF_STATS, "1").with_context(|| format!("write {BPF_STATS}"))?;
        Ok(Self { previous })
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write(BPF_STATS, &self.previous);
    }
}

/// Id of the XDP program attached to `ifname` in `netns`.
pub(super) fn xdp_prog_id(lab: &Lab, netns: &str, ifname: &str) -> Result<u64> {
    let out = lab.exec_in(netns, &["ip", "-j", "-d", "link", "show", "dev", ifname])?;
    let v: serde_json::Value = serde_json::from_str(&out).context("parse `ip -j link` output")?;
    find_prog_id(&v[0]["xdp"])
        .ok_or_else(|| anyhow!("no XDP program attached to {ifname} in {netns}: {out}"))
}

fn find_prog_id(v: &serde_json::Value) -> Option<u64> {
    match v {
        serde_json::Value::Object(m) => m
            .get("prog")
            .and_then(|p| p["id"].as_u64())
            .or_else(|| m.values().find_map(find_prog_id)),
        serde_json::Value::Array(a) => a.iter().find_map(find_prog_id),
        _ => None,
    }
}

/// A program's cumulative run time and run count (`kernel.bpf_stats_enabled` must be on).
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub(super) struct ProgStats {
    pub run_time_ns: u64,
    pub run_cnt: u64,
}

pub(super) fn prog_stats(id: u64) -> Result<ProgStats> {
    let out = std::process::Command::new("bpftool")
        .args(["prog", "show", "id", &id.to_string(), "--json"])
        .output()
        .context("run bpftool")?;
    if !out.status.success() {
        bail!(
            "bpftool prog show id {id}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    Ok(ProgStats {
        run_time_ns: v["run_time_ns"].as_u64().unwrap_or(0),
        run_cnt: v["run_cnt"].as_u64().unwrap_or(0),
    })
}

/// What one `wrk` run measured.
#[derive(Clone, Debug, Default, Serialize)]
pub(super) struct WrkResult {
    pub requests: u64,
    pub seconds: f64,
    pub errors: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// The generator's own CPU time (user + system), seconds.
    pub generator_cpu_seconds: f64,
}

impl WrkResult {
    pub(super) fn requests_per_second(&self) -> f64 {
        self.requests as f64 / self.seconds.max(1e-9)
    }
}

/// The `wrk` script: POST /predict, optionally closing every connection after one request,
/// and a machine-readable summary line.
pub(super) fn wrk_script(close: bool) -> String {
    let mut s = String::new();
    s.push_str("wrk.method = \"POST\"\n");
    let _ = writeln!(s, "wrk.body = '{PREDICT_BODY}'");
    s.push_str("wrk.headers[\"Content-Type\"] = \"application/json\"\n");
    if close {
        s.push_str("wrk.headers[\"Connection\"] = \"close\"\n");
    }
    s.push_str(
        "done = function(summary, latency, requests)\n\
         \x20 local e = summary.errors\n\
         \x20 io.write(string.format(\"WRKJSON {\\\"requests\\\":%d,\\\"duration_us\\\":%d,\\\"errors\\\":%d,\\\"p50_us\\\":%d,\\\"p99_us\\\":%d}\\n\",\n\
         \x20   summary.requests, summary.duration, e.connect + e.read + e.write + e.status + e.timeout,\n\
         \x20   latency:percentile(50), latency:percentile(99)))\n\
         end\n",
    );
    s
}

/// Runs `wrk` in `netns` against `url` and reads its summary and CPU time.
pub(super) fn run_wrk(
    lab: &Lab,
    netns: &str,
    script: &Path,
    url: &str,
    connections: u32,
    seconds: u32,
) -> Result<WrkResult> {
    // `times` after wrk prints the CPU time of the shell's children: wrk's own.
    let cmd = format!(
        "wrk -t1 -c{connections} -d{seconds}s --timeout 2s -s {} {url} && times",
        script.display()
    );
    let out = lab.output_in(netns, &["bash", "-c", &cmd])?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "wrk against {url} failed: {}{}",
            text,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    parse_wrk(&text).with_context(|| format!("wrk output against {url}:\n{text}"))
}

/// Parses the `WRKJSON` line and the children line of `times`.
pub(super) fn parse_wrk(text: &str) -> Result<WrkResult> {
    let json = text
        .lines()
        .find_map(|l| l.strip_prefix("WRKJSON "))
        .ok_or_else(|| anyhow!("no WRKJSON line"))?;
    let v: serde_json::Value = serde_json::from_str(json)?;
    let num = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    let children = text
        .lines()
        .rev()
        .find(|l| {
            l.contains('m') && l.trim_end().ends_with('s') && l.split_whitespace().count() == 2
        })
        .ok_or_else(|| anyhow!("no `times` line"))?;
    let generator_cpu_seconds = children
        .split_whitespace()
        .map(parse_times_field)
        .sum::<Option<f64>>()
        .ok_or_else(|| anyhow!("cannot parse `times` line {children:?}"))?;
    Ok(WrkResult {
        requests: num("requests") as u64,
        seconds: num("duration_us") / 1e6,
        errors: num("errors") as u64,
        p50_ms: num("p50_us") / 1e3,
        p99_ms: num("p99_us") / 1e3,
        generator_cpu_seconds,
    })
}

/// `1m2.345s` -> 62.345.
fn parse_times_field(s: &str) -> Option<f64> {
    let (m, rest) = s.split_once('m')?;
    let secs = rest.strip_suffix('s')?;
    Some(m.parse::<f64>().ok()? * 60.0 + secs.parse::<f64>().ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_wrk_summary_and_times() {
        let text = "Running 5s test\nWRKJSON {\"requests\":1000,\"duration_us\":5000000,\"errors\":2,\"p50_us\":1500,\"p99_us\":9000}\n0m0.001s 0m0.002s\n0m1.500s 0m0.500s\n";
        let r = parse_wrk(text).unwrap();
        assert_eq!(r.requests, 1000);
        assert!((r.requests_per_second() - 200.0).abs() < 1e-9);
        assert!((r.p99_ms - 9.0).abs() < 1e-9);
        assert!((r.generator_cpu_seconds - 2.0).abs() < 1e-9);
        assert_eq!(r.errors, 2);
    }

    #[test]
    fn finds_the_prog_id_in_ip_link_json() {
        let v: serde_json::Value =
            serde_json::from_str(r#"{"mode":1,"prog":{"id":42,"tag":"x","jited":1}}"#).unwrap();
        assert_eq!(find_prog_id(&v), Some(42));
        let multi: serde_json::Value =
            serde_json::from_str(r#"{"attached":[{"mode":1,"prog":{"id":7}}]}"#).unwrap();
        assert_eq!(find_prog_id(&multi), Some(7));
    }

    #[test]
    fn close_script_sets_the_header() {
        assert!(wrk_script(true).contains("Connection"));
        assert!(!wrk_script(false).contains("Connection"));
    }
}
