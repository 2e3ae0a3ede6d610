//! The CLI's side of the admin API: finds the daemon, sends a verb, prints the answer.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use canary_userspace::api::{OperatorCommand, OperatorReply, Status};
use canary_userspace::config::read_token;

/// Default admin address when neither `--admin` nor `--config` is given.
pub(crate) const DEFAULT_ADMIN_URL: &str = "http://127.0.0.1:9100";

/// How to reach the daemon.
#[derive(Clone, Debug)]
pub(crate) struct Endpoint {
    /// Base URL, without a trailing slash.
    pub(crate) url: String,
    pub(crate) token: Option<String>,
}

impl Endpoint {
    /// `--admin`/`--token-file` win; otherwise the config file's `admin.listen`/`token_file`.
    pub(crate) fn resolve(
        admin: Option<&str>,
        token_file: Option<&Path>,
        config_admin: Option<(String, Option<PathBuf>)>,
    ) -> Result<Self> {
        let (url, config_token) = match (admin, config_admin) {
            (Some(url), _) => (url.trim_end_matches('/').to_string(), None),
            (None, Some((listen, token))) => (format!("http://{listen}"), token),
            (None, None) => (DEFAULT_ADMIN_URL.to_string(), None),
        };
        let token = match token_file.map(Path::to_path_buf).or(config_token) {
            Some(path) => Some(read_token(&path)?),
            None => None,
        };
        Ok(Endpoint { url, token })
    }
}

fn http() -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .context("cannot build the HTTP client")
}

fn unreachable(endpoint: &Endpoint, e: &reqwest::Error) -> anyhow::Error {
    anyhow::anyhow!(
        "cannot reach the canary daemon at {}: {e}\n  is `canary run` running? pass --admin URL or --config FILE to point at it",
        endpoint.url
    )
}

/// `GET /status`.
pub(crate) async fn status(endpoint: &Endpoint) -> Result<Status> {
    let response = http()?
        .get(format!("{}/status", endpoint.url))
        .send()
        .await
        .map_err(|e| unreachable(endpoint, &e))?;
    if !response.status().is_success() {
        bail!("GET /status answered {}", response.status());
    }
    response
        .json()
        .await
        .context("the daemon's /status is not valid JSON")
}

/// Send an operator verb; an `Err` carries the daemon's explanation.
pub(crate) async fn command(
    endpoint: &Endpoint,
    service: Option<&str>,
    command: &OperatorCommand,
) -> Result<OperatorReply> {
    let client = http()?;
    let service_path = service.unwrap_or("_");
    let request = match command {
        OperatorCommand::Route { src, dst, protocol } => {
            let mut url = format!(
                "{}/v1/route?src={src}&dst={dst}&proto={protocol}",
                endpoint.url
            );
            if let Some(s) = service {
                url.push_str("&service=");
                url.push_str(s);
            }
            client.get(url)
        }
        OperatorCommand::Reload => client.post(format!("{}/v1/reload", endpoint.url)),
        other => {
            let (verb, body) = match other {
                OperatorCommand::Start => ("start", serde_json::json!({})),
                OperatorCommand::Pause => ("pause", serde_json::json!({})),
                OperatorCommand::Resume => ("resume", serde_json::json!({})),
                OperatorCommand::Promote { full } => ("promote", serde_json::json!({"full": full})),
                OperatorCommand::Rollback => ("rollback", serde_json::json!({})),
                OperatorCommand::SetWeight { percent } => {
                    ("set-weight", serde_json::json!({"percent": percent}))
                }
                OperatorCommand::Route { .. } | OperatorCommand::Reload => unreachable!(),
            };
            client
                .post(format!(
                    "{}/v1/services/{service_path}/{verb}",
                    endpoint.url
                ))
                .json(&body)
        }
    };
    let request = match &endpoint.token {
        Some(t) => request.bearer_auth(t),
        None => request,
    };
    let response = request
        .send()
        .await
        .map_err(|e| unreachable(endpoint, &e))?;
    let code = response.status();
    let reply: OperatorReply = response
        .json()
        .await
        .with_context(|| format!("the daemon answered {code} without a JSON body"))?;
    if code.is_success() && reply.ok {
        Ok(reply)
    } else {
        bail!("refused ({code}): {}", reply.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_precedence() {
        let e = Endpoint::resolve(None, None, None).unwrap();
        assert_eq!(e.url, DEFAULT_ADMIN_URL);
        let e = Endpoint::resolve(None, None, Some(("127.0.0.1:9200".into(), None))).unwrap();
        assert_eq!(e.url, "http://127.0.0.1:9200");
        let e = Endpoint::resolve(
            Some("http://198.18.0.1:9100/"),
            None,
            Some(("127.0.0.1:9200".into(), None)),
        )
        .unwrap();
        assert_eq!(e.url, "http://198.18.0.1:9100");
    }
}
