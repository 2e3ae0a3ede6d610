//! The CLI's side of the admin API: finds the daemon, sends a verb, prints the answer.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use canary_userspace::api::{OperatorCommand, OperatorReply, Status};
use canary_userspace::config::read_token;
use canary_userspace::token::{token_path, DEFAULT_STATE_DIR};

/// Default admin address when neither `--admin` nor `--config` is given.
pub(crate) const DEFAULT_ADMIN_URL: &str = "http://127.0.0.1:9100";

/// How to reach the daemon.
#[derive(Clone, Debug)]
pub(crate) struct Endpoint {
    /// Base URL, without a trailing slash.
    pub(crate) url: String,
    /// The admin token; `Err` says why there is none (reads work without it, verbs do not).
    pub(crate) token: Result<String, String>,
}

/// What a config file tells the CLI.
#[derive(Clone, Debug)]
pub(crate) struct ConfigTarget {
    /// `admin.listen`.
    pub(crate) listen: String,
    /// `admin.token_file`.
    pub(crate) token_file: Option<PathBuf>,
    /// `dataplane.state_dir` (the generated token lives there).
    pub(crate) state_dir: PathBuf,
}

impl Endpoint {
    /// `--admin`/`--token-file` win; otherwise the config file's `admin.listen` and token
    /// (`admin.token_file`, else the generated `state_dir/admin.token`); without a config, the
    /// default address and `/var/lib/canary/admin.token`. A token file given explicitly must
    /// be readable; the generated one may be missing (reads need no token).
    pub(crate) fn resolve(
        admin: Option<&str>,
        token_file: Option<&Path>,
        config: Option<ConfigTarget>,
    ) -> Result<Self> {
        let url = match (admin, &config) {
            (Some(url), _) => url.trim_end_matches('/').to_string(),
            (None, Some(c)) => format!("http://{}", c.listen),
            (None, None) => DEFAULT_ADMIN_URL.to_string(),
        };
        let explicit = token_file
            .map(Path::to_path_buf)
            .or_else(|| config.as_ref().and_then(|c| c.token_file.clone()));
        let token = if let Some(path) = explicit {
            Ok(read_token(&path)?)
        } else {
            let state_dir =
                config.map_or_else(|| PathBuf::from(DEFAULT_STATE_DIR), |c| c.state_dir);
            let path = token_path(None, &state_dir);
            read_token(&path).map_err(|e| {
                format!(
                    "no admin token: {e}. The daemon generates it there when admin.token_file is not set: run this as a user that can read it (root), or pass --config FILE (its state_dir) or --token-file FILE"
                )
            })
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

/// A rollout's recorded history (`rollout`: an id, or `latest`).
pub(crate) async fn history(
    endpoint: &Endpoint,
    service: &str,
    rollout: &str,
) -> Result<canary_userspace::history::History> {
    let response = http()?
        .get(format!("{}/v1/history/{service}/{rollout}", endpoint.url))
        .send()
        .await
        .map_err(|e| unreachable(endpoint, &e))?;
    if !response.status().is_success() {
        let code = response.status();
        let why = response
            .json::<canary_userspace::api::OperatorReply>()
            .await
            .map_or_else(|_| code.to_string(), |r| r.message);
        bail!("{why}");
    }
    response
        .json()
        .await
        .context("the daemon's history is not valid JSON")
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
    let request = match (&endpoint.token, command.is_mutating()) {
        (Ok(t), _) => request.bearer_auth(t),
        (Err(why), true) => bail!("{why}"),
        (Err(_), false) => request,
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
    use std::os::unix::fs::PermissionsExt as _;

    fn target(listen: &str, state_dir: &Path) -> ConfigTarget {
        ConfigTarget {
            listen: listen.into(),
            token_file: None,
            state_dir: state_dir.to_owned(),
        }
    }

    #[test]
    fn endpoint_precedence() {
        let dir = std::env::temp_dir().join(format!("canary-endpoint-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let e = Endpoint::resolve(None, None, Some(target("127.0.0.1:9200", &dir))).unwrap();
        assert_eq!(e.url, "http://127.0.0.1:9200");
        // No generated token yet: reads work, verbs say where the token should be.
        let why = e.token.unwrap_err();
        assert!(why.contains("admin.token"), "{why}");
        let e = Endpoint::resolve(
            Some("http://198.18.0.1:9100/"),
            None,
            Some(target("127.0.0.1:9200", &dir)),
        )
        .unwrap();
        assert_eq!(e.url, "http://198.18.0.1:9100");

        // The generated token in the config's state_dir is found without flags.
        let token = canary_userspace::token::load_or_generate(&dir).unwrap();
        let e = Endpoint::resolve(None, None, Some(target("127.0.0.1:9200", &dir))).unwrap();
        assert_eq!(e.token.unwrap(), token);
        // --token-file wins, and must be readable and private.
        let explicit = dir.join("explicit");
        std::fs::write(&explicit, "other\n").unwrap();
        std::fs::set_permissions(&explicit, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = Endpoint::resolve(None, Some(&explicit), Some(target("x:1", &dir))).unwrap();
        assert_eq!(e.token.unwrap(), "other");
        std::fs::set_permissions(&explicit, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = Endpoint::resolve(None, Some(&explicit), None).unwrap_err();
        assert!(e.to_string().contains("chmod 600"), "{e}");
        assert!(Endpoint::resolve(None, Some(&dir.join("missing")), None).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
