//! The `FastAPI` example server (`examples/fastapi`): where it and its virtualenv live, and the
//! command line that serves one instance of it. `cargo xtask setup` creates the virtualenv; tests,
//! the lab and the demo start `serve.py` with the virtualenv's Python.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// The example's directory, relative to the workspace root.
pub const APP_DIR: &str = "examples/fastapi";
/// The line `serve.py` prints on stdout once it listens, followed by the bound `HOST:PORT`.
pub const READY_LINE: &str = "listening on ";

/// The example is not installed (or not up to date) where it is expected.
#[derive(Debug, thiserror::Error)]
pub enum FastapiError {
    /// The virtualenv's Python is missing.
    #[error(
        "the FastAPI example's virtualenv is missing ({python} not found): run `cargo xtask setup`"
    )]
    NoVirtualenv { python: String },
    /// `requirements.txt` changed since the virtualenv was filled.
    #[error("{requirements} changed since the FastAPI example's virtualenv was installed: run `cargo xtask setup`")]
    Outdated { requirements: String },
}

/// The metrics library the example is instrumented with (`serve.py --metrics`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MetricsLibrary {
    /// `prometheus_client` used directly (a middleware and a predictions counter).
    PrometheusClient,
    /// `prometheus-fastapi-instrumentator`'s default metrics plus a predictions counter.
    Instrumentator,
}

impl MetricsLibrary {
    pub const ALL: [MetricsLibrary; 2] = [
        MetricsLibrary::PrometheusClient,
        MetricsLibrary::Instrumentator,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MetricsLibrary::PrometheusClient => "prometheus-client",
            MetricsLibrary::Instrumentator => "instrumentator",
        }
    }
}

impl fmt::Display for MetricsLibrary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not a metrics library of the example.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown metrics library `{0}`: use `prometheus-client` or `instrumentator`")]
pub struct UnknownMetricsLibrary(pub String);

impl FromStr for MetricsLibrary {
    type Err = UnknownMetricsLibrary;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| UnknownMetricsLibrary(s.to_owned()))
    }
}

/// The example's directory.
pub fn app_dir() -> PathBuf {
    crate::bins::workspace_root()
        .unwrap_or_else(|| Path::new("."))
        .join(APP_DIR)
}

/// The virtualenv `cargo xtask setup` creates (git-ignored).
pub fn venv_dir() -> PathBuf {
    app_dir().join(".venv")
}

/// The virtualenv's Python interpreter.
pub fn venv_python() -> PathBuf {
    venv_dir().join("bin").join("python")
}

/// The pinned requirements.
pub fn requirements() -> PathBuf {
    app_dir().join("requirements.txt")
}

/// The copy of `requirements.txt` kept in the virtualenv once it is installed: the virtualenv is
/// up to date when both are identical.
pub fn requirements_stamp() -> PathBuf {
    venv_dir().join("canary-requirements.txt")
}

/// `serve.py`.
pub fn serve_script() -> PathBuf {
    app_dir().join("serve.py")
}

/// The virtualenv's Python, checked to exist and to match `requirements.txt`.
pub fn python() -> Result<PathBuf, FastapiError> {
    let python = venv_python();
    // `exists` follows the symlink: a virtualenv whose base interpreter is gone counts as missing.
    if !python.exists() {
        return Err(FastapiError::NoVirtualenv {
            python: python.display().to_string(),
        });
    }
    let wanted = std::fs::read(requirements()).ok();
    if wanted.is_none() || std::fs::read(requirements_stamp()).ok() != wanted {
        return Err(FastapiError::Outdated {
            requirements: requirements().display().to_string(),
        });
    }
    Ok(python)
}

/// One instance of the example server: `serve.py`'s command line.
#[derive(Clone, Debug, PartialEq)]
pub struct ServerSpec {
    /// Address to listen on (port 0: any free port, reported on the ready line).
    pub listen: SocketAddr,
    /// Model version, `v1` or `v2`.
    pub version: String,
    pub metrics: MetricsLibrary,
    /// Instance name returned in each answer's `backend` field (none: no such field).
    pub name: Option<String>,
    /// Further `serve.py` flags, for example faults (`--error-rate 0.1`, `--seed 7`).
    pub extra: Vec<String>,
}

impl ServerSpec {
    pub fn new(listen: SocketAddr, version: &str, metrics: MetricsLibrary) -> Self {
        Self {
            listen,
            version: version.to_owned(),
            metrics,
            name: None,
            extra: Vec::new(),
        }
    }

    /// `serve.py` and its arguments (run them with [`python`]).
    pub fn args(&self) -> Vec<String> {
        let mut a = vec![
            serve_script().display().to_string(),
            "--listen".into(),
            self.listen.to_string(),
            "--version".into(),
            self.version.clone(),
            "--metrics".into(),
            self.metrics.as_str().into(),
        ];
        if let Some(name) = &self.name {
            a.extend(["--name".into(), name.clone()]);
        }
        a.extend(self.extra.iter().cloned());
        a
    }

    /// The whole command line: the virtualenv's Python, `serve.py` and its arguments.
    pub fn argv(&self) -> Result<Vec<String>, FastapiError> {
        let mut argv = vec![python()?.display().to_string()];
        argv.extend(self.args());
        Ok(argv)
    }
}

/// The address on a `serve.py` ready line (`listening on 127.0.0.1:41234`).
pub fn parse_ready_line(line: &str) -> Option<SocketAddr> {
    line.trim().strip_prefix(READY_LINE)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_names_every_setting() {
        let mut spec = ServerSpec::new(
            "127.0.0.1:0".parse().unwrap(),
            "v2",
            MetricsLibrary::Instrumentator,
        );
        spec.name = Some("k0".into());
        spec.extra = vec!["--error-rate".into(), "0.1".into()];
        let args = spec.args();
        assert!(args[0].ends_with("examples/fastapi/serve.py"), "{args:?}");
        assert_eq!(
            args[1..],
            [
                "--listen",
                "127.0.0.1:0",
                "--version",
                "v2",
                "--metrics",
                "instrumentator",
                "--name",
                "k0",
                "--error-rate",
                "0.1"
            ]
        );
    }

    #[test]
    fn ready_lines_and_library_names_parse() {
        assert_eq!(
            parse_ready_line("listening on 127.0.0.1:41234\n"),
            Some("127.0.0.1:41234".parse().unwrap())
        );
        assert_eq!(
            parse_ready_line("listening on [::1]:80"),
            Some("[::1]:80".parse().unwrap())
        );
        assert_eq!(parse_ready_line("INFO: started"), None);
        for m in MetricsLibrary::ALL {
            assert_eq!(m.as_str().parse::<MetricsLibrary>(), Ok(m));
        }
        assert!("prometheus_client".parse::<MetricsLibrary>().is_err());
    }
}
