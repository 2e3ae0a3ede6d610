//! A real Prometheus (Debian's `prometheus` package, installed by `cargo xtask setup`) run inside
//! a lab namespace, where the daemon's admin API listens on loopback: tests and demos read what
//! the daemon's metrics look like from the outside through Prometheus's own HTTP API.
//!
//! The process belongs to the lab (recorded, so `lab down` ends it) and is killed by PID when the
//! handle drops, also when a test fails; its data directory lives in the lab's state directory,
//! which the lab removes on teardown.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::lab::{Lab, LabError, LabProcess};

/// Port Prometheus listens on, on loopback inside the namespace it runs in. A lab namespace is
/// the lab's own, so the port is free there whatever runs on the host.
pub const PORT: u16 = 9090;

/// Errors of starting or querying Prometheus.
#[derive(Debug, thiserror::Error)]
pub enum PrometheusError {
    #[error(transparent)]
    Lab(#[from] LabError),
    /// The binary is not installed.
    #[error("`prometheus` is not installed: run `cargo xtask setup` (as root), which installs Debian's prometheus package")]
    Missing,
    #[error("{0}")]
    Io(String),
    /// Prometheus did not answer `/-/ready`.
    #[error("prometheus did not become ready in {waited:?}; its log ends with:\n{log}")]
    NotReady { waited: Duration, log: String },
    /// The HTTP API answered with an error or something that is not its JSON.
    #[error("prometheus API {path} {params:?}: {message}")]
    Api {
        path: String,
        params: Vec<(String, String)>,
        message: String,
    },
    #[error("{what} timed out after {waited:?}; last seen: {last}")]
    Timeout {
        what: String,
        waited: Duration,
        last: String,
    },
}

/// A running Prometheus in a lab namespace.
pub struct Prometheus<'a> {
    lab: &'a Lab,
    netns: String,
    process: LabProcess,
    data_dir: PathBuf,
}

fn installed() -> bool {
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| dir.join("prometheus").is_file())
    })
}

impl<'a> Prometheus<'a> {
    /// Starts `prometheus --config.file CONFIG` in `netns` (rule files are found relative to
    /// the config file), with a fresh data directory in the lab's state directory, and waits
    /// until it is ready.
    pub fn start(lab: &'a Lab, netns: &str, config: &Path) -> Result<Self, PrometheusError> {
        if !installed() {
            return Err(PrometheusError::Missing);
        }
        let data_dir = lab
            .state_dir()
            .join(format!("prometheus-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&data_dir);
        std::fs::create_dir_all(&data_dir)
            .map_err(|e| PrometheusError::Io(format!("create {}: {e}", data_dir.display())))?;
        let argv = [
            "prometheus".to_string(),
            format!("--config.file={}", config.display()),
            format!("--storage.tsdb.path={}", data_dir.display()),
            format!("--web.listen-address=127.0.0.1:{PORT}"),
            "--log.level=warn".to_string(),
        ];
        let process = lab.spawn_in(netns, &argv)?;
        let mut p = Prometheus {
            lab,
            netns: netns.to_string(),
            process,
            data_dir,
        };
        p.wait_ready(Duration::from_secs(30))?;
        Ok(p)
    }

    fn wait_ready(&mut self, waited: Duration) -> Result<(), PrometheusError> {
        let start = Instant::now();
        while start.elapsed() < waited {
            let out = self.lab.output_in(
                &self.netns,
                &[
                    "curl",
                    "-sf",
                    "-m",
                    "2",
                    &format!("http://127.0.0.1:{PORT}/-/ready"),
                ],
            )?;
            if out.status.success() {
                return Ok(());
            }
            if !self.process.is_running() {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Err(PrometheusError::NotReady {
            waited,
            log: self.process.log_tail(30),
        })
    }

    /// PID of the `prometheus` process.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// The TSDB directory (removed with the lab).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The last lines of Prometheus's log.
    pub fn log_tail(&self, lines: usize) -> String {
        self.process.log_tail(lines)
    }

    /// `GET /api/v1/<path>` with URL-encoded parameters; returns the `data` of a successful
    /// answer.
    pub fn api(
        &self,
        path: &str,
        params: &[(&str, String)],
    ) -> Result<serde_json::Value, PrometheusError> {
        let error = |message: String| PrometheusError::Api {
            path: path.to_string(),
            params: params
                .iter()
                .map(|(k, v)| ((*k).to_string(), v.clone()))
                .collect(),
            message,
        };
        let mut argv: Vec<String> = ["curl", "-sS", "-m", "10", "-G"]
            .iter()
            .map(|s| (*s).to_string())
            .collect();
        argv.push(format!("http://127.0.0.1:{PORT}/api/v1/{path}"));
        for (k, v) in params {
            argv.push("--data-urlencode".into());
            argv.push(format!("{k}={v}"));
        }
        let out = self.lab.output_in(&self.netns, &argv)?;
        if !out.status.success() {
            return Err(error(format!(
                "curl failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let body: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| {
            error(format!(
                "not JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            ))
        })?;
        if body["status"] != "success" {
            return Err(error(format!("{} {}", body["errorType"], body["error"])));
        }
        Ok(body["data"].clone())
    }

    /// An instant query now (`time` = `None`) or at a Unix time; returns `data`
    /// (`resultType` and `result`).
    pub fn query(
        &self,
        expr: &str,
        time: Option<f64>,
    ) -> Result<serde_json::Value, PrometheusError> {
        let mut params = vec![("query", expr.to_string())];
        if let Some(t) = time {
            params.push(("time", format!("{t:.3}")));
        }
        self.api("query", &params)
    }

    /// A range query, as a dashboard panel runs it; returns `data`.
    pub fn query_range(
        &self,
        expr: &str,
        start: f64,
        end: f64,
        step: Duration,
    ) -> Result<serde_json::Value, PrometheusError> {
        self.api(
            "query_range",
            &[
                ("query", expr.to_string()),
                ("start", format!("{start:.3}")),
                ("end", format!("{end:.3}")),
                ("step", format!("{}", step.as_secs_f64())),
            ],
        )
    }

    /// Polls `probe` until it returns `Some`, failing with the last `Err` or `None` seen.
    pub fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut probe: impl FnMut(&Self) -> Result<Option<T>, PrometheusError>,
    ) -> Result<T, PrometheusError> {
        let start = Instant::now();
        let mut last = String::from("nothing yet");
        while start.elapsed() < timeout {
            match probe(self) {
                Ok(Some(v)) => return Ok(v),
                Ok(None) => last = "not yet".into(),
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        Err(PrometheusError::Timeout {
            what: what.to_string(),
            waited: timeout,
            last,
        })
    }
}

/// The series of a `query`/`query_range` answer's `result` (empty if it holds none).
pub fn series(data: &serde_json::Value) -> Vec<serde_json::Value> {
    data["result"].as_array().cloned().unwrap_or_default()
}

/// The `(time, value)` samples of one series of a matrix (`values`) or vector (`value`);
/// values Prometheus writes as `NaN`/`+Inf` parse as such.
pub fn samples(series: &serde_json::Value) -> Vec<(f64, f64)> {
    let one = |p: &serde_json::Value| -> Option<(f64, f64)> {
        Some((p[0].as_f64()?, p[1].as_str()?.parse().ok()?))
    };
    match series["values"].as_array() {
        Some(values) => values.iter().filter_map(one).collect(),
        None => one(&series["value"]).into_iter().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::samples;

    #[test]
    fn samples_of_matrix_and_vector_answers() {
        let matrix = serde_json::json!({"metric": {}, "values": [[1.5, "0.25"], [2.5, "NaN"]]});
        let got = samples(&matrix);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0], (1.5, 0.25));
        assert!(got[1].1.is_nan());
        let vector = serde_json::json!({"metric": {}, "value": [3.0, "1"]});
        assert_eq!(samples(&vector), vec![(3.0, 1.0)]);
    }
}
