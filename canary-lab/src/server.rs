//! The model server the lab runs on its backends: the project's `canary-model`, or the `FastAPI`
//! example (`examples/fastapi`) instrumented with one of its two metrics libraries. Both answer
//! the same API (`POST /predict`, `/healthz`, `/metrics`, `/fault` with the same faults) and
//! print the same ready line, so a deployment changes only the command line and the upstream
//! preset that reads its metrics.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use crate::bins;
use crate::fastapi::{self, MetricsLibrary, ServerSpec};

/// Which server runs on the backends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ModelServer {
    /// `canary-model`, this workspace's Rust server.
    #[default]
    CanaryModel,
    /// The `FastAPI` example served by uvicorn, with this metrics library.
    Fastapi(MetricsLibrary),
}

/// The server cannot be started here.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Bin(#[from] bins::BinError),
    #[error(transparent)]
    Fastapi(#[from] fastapi::FastapiError),
}

impl ModelServer {
    pub const ALL: [ModelServer; 3] = [
        ModelServer::CanaryModel,
        ModelServer::Fastapi(MetricsLibrary::PrometheusClient),
        ModelServer::Fastapi(MetricsLibrary::Instrumentator),
    ];

    /// Its name on command lines (`--backend`).
    pub fn as_str(self) -> &'static str {
        match self {
            ModelServer::CanaryModel => "canary-model",
            ModelServer::Fastapi(MetricsLibrary::PrometheusClient) => "fastapi",
            ModelServer::Fastapi(MetricsLibrary::Instrumentator) => "fastapi-instrumentator",
        }
    }

    /// The `[services.upstream] preset` that reads its metrics.
    pub fn preset(self) -> &'static str {
        match self {
            ModelServer::CanaryModel => "canary-model",
            ModelServer::Fastapi(MetricsLibrary::PrometheusClient) => "prometheus-client",
            ModelServer::Fastapi(MetricsLibrary::Instrumentator) => "fastapi-instrumentator",
        }
    }

    /// How long it may take to print its ready line (Python imports take seconds on a busy
    /// machine).
    pub fn start_timeout(self) -> Duration {
        match self {
            ModelServer::CanaryModel => Duration::from_secs(10),
            ModelServer::Fastapi(_) => Duration::from_mins(1),
        }
    }

    /// The command line serving model `version` on `listen`, answering as `name`, plus `extra`
    /// flags (the same fault flags for both servers: `--error-rate 0.1`, `--skew 0.5`, ...).
    pub fn argv(
        self,
        listen: SocketAddr,
        version: &str,
        name: &str,
        extra: &[String],
    ) -> Result<Vec<String>, ServerError> {
        match self {
            ModelServer::CanaryModel => {
                let binary = bins::locate("canary-model", "canary-model")?;
                let mut argv = vec![
                    binary.display().to_string(),
                    "--listen".into(),
                    listen.to_string(),
                    "--version".into(),
                    version.into(),
                    "--name".into(),
                    name.into(),
                ];
                argv.extend(extra.iter().cloned());
                Ok(argv)
            }
            ModelServer::Fastapi(metrics) => {
                let mut spec = ServerSpec::new(listen, version, metrics);
                spec.name = Some(name.into());
                spec.extra = extra.to_vec();
                Ok(spec.argv()?)
            }
        }
    }
}

impl fmt::Display for ModelServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not a model server of the lab.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown model server `{0}`: use canary-model, fastapi (prometheus_client) or fastapi-instrumentator")]
pub struct UnknownModelServer(pub String);

impl FromStr for ModelServer {
    type Err = UnknownModelServer;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| UnknownModelServer(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_map_to_their_presets() {
        for m in ModelServer::ALL {
            assert_eq!(m.as_str().parse::<ModelServer>(), Ok(m));
        }
        assert_eq!(ModelServer::default(), ModelServer::CanaryModel);
        assert_eq!(
            ModelServer::Fastapi(MetricsLibrary::Instrumentator).preset(),
            "fastapi-instrumentator"
        );
        assert!("flask".parse::<ModelServer>().is_err());
    }

    #[test]
    fn fastapi_command_line_carries_name_version_and_faults() {
        let server = ModelServer::Fastapi(MetricsLibrary::PrometheusClient);
        let extra = vec!["--skew".to_string(), "0.5".to_string()];
        match server.argv("0.0.0.0:8080".parse().unwrap(), "v2", "k0", &extra) {
            Ok(argv) => {
                let args = &argv[2..];
                assert_eq!(
                    args,
                    [
                        "--listen",
                        "0.0.0.0:8080",
                        "--version",
                        "v2",
                        "--metrics",
                        "prometheus-client",
                        "--name",
                        "k0",
                        "--skew",
                        "0.5"
                    ]
                );
            }
            // Without `cargo xtask setup` the virtualenv is missing: the error says so.
            Err(e) => assert!(e.to_string().contains("cargo xtask setup"), "{e}"),
        }
    }
}
