//! The admin HTTP API, routes only: `GET /metrics`, `GET /status`, `GET /v1/route`, and the operator verbs
//! (`POST /v1/services/{service}/{verb}`, `POST /v1/reload`).
//!
//! The API does no work itself: reads come from the shared status and metrics registry, and
//! every verb is sent to the controller task as an [`OperatorRequest`], which answers with what it
//! did. Every mutating call must carry `Authorization: Bearer <token>` (the token of
//! [`crate::token`]: configured or generated, never absent); a missing or wrong token gets 401
//! and nothing is sent to the controller. Reads (`/status`, `/metrics`, `/v1/route`) are open
//! to whoever can reach `admin.listen`.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};

use crate::api::{OperatorCommand, OperatorReply, Status};
use crate::history::HistoryStore;
use crate::token::TokenDigest;

/// A verb on its way to the controller, with the channel for its answer.
#[derive(Debug)]
pub struct OperatorRequest {
    pub service: Option<String>,
    pub command: OperatorCommand,
    pub reply: oneshot::Sender<OperatorReply>,
}

/// Everything the API handlers share.
#[derive(Clone)]
pub struct AdminState {
    pub status: Arc<RwLock<Status>>,
    pub registry: prometheus::Registry,
    pub requests: mpsc::Sender<OperatorRequest>,
    /// The bearer token mutating calls need (its digest).
    pub token: TokenDigest,
    /// The rollouts' recorded histories (`canary report`).
    pub history: Option<HistoryStore>,
}

/// The API's routes.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .route("/v1/route", get(route))
        .route("/v1/history/{service}", get(history_list))
        .route("/v1/history/{service}/{rollout}", get(history_get))
        .route("/v1/reload", post(reload))
        .route("/v1/services/{service}/{verb}", post(service_verb))
        .with_state(state)
}

async fn metrics(State(state): State<AdminState>) -> Response {
    let families = state.registry.gather();
    match prometheus::TextEncoder::new().encode_to_string(&families) {
        Ok(text) => ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], text).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// The stored rollouts of a service, oldest first.
async fn history_list(State(state): State<AdminState>, Path(service): Path<String>) -> Response {
    let Some(store) = state.history.clone() else {
        return reply(
            StatusCode::NOT_FOUND,
            OperatorReply::refused("this daemon keeps no history"),
        );
    };
    match tokio::task::spawn_blocking(move || store.summaries(&service)).await {
        Ok(Ok(list)) => Json(list).into_response(),
        Ok(Err(e)) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            OperatorReply::refused(format!("cannot read the history: {e}")),
        ),
        Err(e) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            OperatorReply::refused(e.to_string()),
        ),
    }
}

/// One rollout's history; `latest` for the newest.
async fn history_get(
    State(state): State<AdminState>,
    Path((service, rollout)): Path<(String, String)>,
) -> Response {
    let Some(store) = state.history.clone() else {
        return reply(
            StatusCode::NOT_FOUND,
            OperatorReply::refused("this daemon keeps no history"),
        );
    };
    let found = tokio::task::spawn_blocking(move || {
        let ids = store.rollouts(&service)?;
        let id = if rollout == "latest" {
            ids.last().copied()
        } else {
            rollout.parse::<u64>().ok().filter(|id| ids.contains(id))
        };
        let Some(id) = id else {
            let known: Vec<String> = ids.iter().map(ToString::to_string).collect();
            return Ok(Err(format!(
                "no recorded rollout {rollout:?} of service {service:?}; recorded: {}",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            )));
        };
        store
            .load(&service, id)
            .map(|h| h.ok_or_else(|| format!("rollout {id} of {service:?} was just removed")))
    })
    .await;
    match found {
        Ok(Ok(Ok(h))) => Json(h).into_response(),
        Ok(Ok(Err(why))) => reply(StatusCode::NOT_FOUND, OperatorReply::refused(why)),
        Ok(Err(e)) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            OperatorReply::refused(format!("cannot read the history: {e}")),
        ),
        Err(e) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            OperatorReply::refused(e.to_string()),
        ),
    }
}

async fn status(State(state): State<AdminState>) -> Response {
    let snapshot = state
        .status
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    Json(snapshot).into_response()
}

#[derive(Deserialize)]
struct RouteQuery {
    service: Option<String>,
    src: String,
    dst: String,
    #[serde(default = "default_protocol")]
    proto: String,
}

fn default_protocol() -> String {
    "tcp".to_string()
}

async fn route(State(state): State<AdminState>, Query(q): Query<RouteQuery>) -> Response {
    let parse = |what: &str, v: &str| {
        v.parse::<SocketAddr>().map_err(|_| {
            Box::new(reply(
                StatusCode::BAD_REQUEST,
                OperatorReply::refused(format!(
                    "{what} {v:?} is not IP:PORT (IPv6 as [addr]:port)"
                )),
            ))
        })
    };
    let src = match parse("src", &q.src) {
        Ok(a) => a,
        Err(r) => return *r,
    };
    let dst = match parse("dst", &q.dst) {
        Ok(a) => a,
        Err(r) => return *r,
    };
    let command = OperatorCommand::Route {
        src,
        dst,
        protocol: q.proto,
    };
    forward(&state, q.service, command).await
}

async fn reload(State(state): State<AdminState>, headers: HeaderMap) -> Response {
    if let Err(r) = authorize(&state, &headers) {
        return *r;
    }
    forward(&state, None, OperatorCommand::Reload).await
}

#[derive(Deserialize, Default)]
struct VerbBody {
    #[serde(default)]
    full: bool,
    percent: Option<f64>,
}

async fn service_verb(
    State(state): State<AdminState>,
    headers: HeaderMap,
    Path((service, verb)): Path<(String, String)>,
    body: Option<Json<VerbBody>>,
) -> Response {
    if let Err(r) = authorize(&state, &headers) {
        return *r;
    }
    let body = body.map(|Json(b)| b).unwrap_or_default();
    let command = match verb.as_str() {
        "start" => OperatorCommand::Start,
        "pause" => OperatorCommand::Pause,
        "resume" => OperatorCommand::Resume,
        "promote" => OperatorCommand::Promote { full: body.full },
        "rollback" => OperatorCommand::Rollback,
        "set-weight" => match body.percent {
            Some(percent) => OperatorCommand::SetWeight { percent },
            None => {
                return reply(
                    StatusCode::BAD_REQUEST,
                    OperatorReply::refused("set-weight needs a JSON body {\"percent\": P}"),
                )
            }
        },
        other => {
            return reply(
                StatusCode::NOT_FOUND,
                OperatorReply::refused(format!(
                "unknown verb {other:?}; use start, pause, resume, promote, rollback or set-weight"
            )),
            )
        }
    };
    // `_` stands for "the only service", so the CLI works without --service.
    let service = (service != "_").then_some(service);
    forward(&state, service, command).await
}

fn authorize(state: &AdminState, headers: &HeaderMap) -> Result<(), Box<Response>> {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if presented.is_some_and(|p| state.token.matches(p)) {
        Ok(())
    } else {
        Err(Box::new(reply(
            StatusCode::UNAUTHORIZED,
            OperatorReply::refused(
                "missing or wrong token: send `Authorization: Bearer <token>` with the token from admin.token_file, or from state_dir/admin.token when none is configured (the canary CLI finds it with --config or --token-file)",
            ),
        )))
    }
}

async fn forward(
    state: &AdminState,
    service: Option<String>,
    command: OperatorCommand,
) -> Response {
    let (tx, rx) = oneshot::channel();
    let request = OperatorRequest {
        service,
        command,
        reply: tx,
    };
    if state.requests.send(request).await.is_err() {
        return reply(
            StatusCode::SERVICE_UNAVAILABLE,
            OperatorReply::refused("the controller is shutting down"),
        );
    }
    match rx.await {
        Ok(r) if r.ok => reply(StatusCode::OK, r),
        Ok(r) => reply(StatusCode::CONFLICT, r),
        Err(_) => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            OperatorReply::refused("the controller dropped the request"),
        ),
    }
}

fn reply(code: StatusCode, body: OperatorReply) -> Response {
    (code, Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Spawns the API on a loopback port with a controller stub that records the verbs it got.
    async fn start(
        token: &str,
    ) -> (
        SocketAddr,
        Arc<std::sync::Mutex<Vec<OperatorCommand>>>,
        tokio::task::JoinHandle<()>,
    ) {
        let (tx, mut rx) = mpsc::channel::<OperatorRequest>(8);
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        let controller = tokio::spawn(async move {
            while let Some(req) = rx.recv().await {
                seen2.lock().unwrap().push(req.command.clone());
                let _ = req
                    .reply
                    .send(OperatorReply::ok(format!("{:?}", req.command)));
            }
        });
        let state = AdminState {
            status: Arc::new(RwLock::new(Status::default())),
            registry: prometheus::Registry::new(),
            requests: tx,
            token: TokenDigest::new(token),
            history: None,
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = crate::admin_server::Limits {
            max_connections: 16,
            header_read_timeout: std::time::Duration::from_secs(5),
            idle_timeout: std::time::Duration::from_secs(5),
        };
        tokio::spawn(crate::admin_server::serve(
            listener,
            router(state),
            limits,
            crate::admin_server::ConnectionMetrics::unregistered(),
            std::future::pending(),
        ));
        (addr, seen, controller)
    }

    #[tokio::test]
    async fn mutations_need_the_token_when_configured() {
        let (addr, seen, _c) = start("s3cret").await;
        let client = reqwest::Client::new();
        let url = format!("http://{addr}/v1/services/_/pause");

        let none = client.post(&url).send().await.unwrap();
        assert_eq!(none.status(), 401);
        let wrong = client.post(&url).bearer_auth("nope").send().await.unwrap();
        assert_eq!(wrong.status(), 401);
        let body: OperatorReply = wrong.json().await.unwrap();
        assert!(body.message.contains("token"), "{}", body.message);
        assert!(
            seen.lock().unwrap().is_empty(),
            "refused calls reached the controller"
        );

        let good = client
            .post(&url)
            .bearer_auth("s3cret")
            .send()
            .await
            .unwrap();
        assert_eq!(good.status(), 200);
        assert_eq!(*seen.lock().unwrap(), vec![OperatorCommand::Pause]);

        // Reads stay open.
        let status = client
            .get(format!("http://{addr}/status"))
            .send()
            .await
            .unwrap();
        assert_eq!(status.status(), 200);
        let reload = client
            .post(format!("http://{addr}/v1/reload"))
            .send()
            .await
            .unwrap();
        assert_eq!(reload.status(), 401);
    }

    #[tokio::test]
    async fn verbs_are_parsed() {
        let (addr, seen, _c) = start("t").await;
        let client = reqwest::Client::new();
        let ok = client
            .post(format!("http://{addr}/v1/services/sentiment/set-weight"))
            .bearer_auth("t")
            .json(&serde_json::json!({"percent": 12.5}))
            .send()
            .await
            .unwrap();
        assert_eq!(ok.status(), 200);
        let missing = client
            .post(format!("http://{addr}/v1/services/sentiment/set-weight"))
            .bearer_auth("t")
            .send()
            .await
            .unwrap();
        assert_eq!(missing.status(), 400);
        let unknown = client
            .post(format!("http://{addr}/v1/services/sentiment/explode"))
            .bearer_auth("t")
            .send()
            .await
            .unwrap();
        assert_eq!(unknown.status(), 404);
        let full = client
            .post(format!("http://{addr}/v1/services/_/promote"))
            .bearer_auth("t")
            .json(&serde_json::json!({"full": true}))
            .send()
            .await
            .unwrap();
        assert_eq!(full.status(), 200);
        let bad_route = client
            .get(format!(
                "http://{addr}/v1/route?src=nope&dst=198.18.0.100:8080"
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(bad_route.status(), 400);
        assert_eq!(
            *seen.lock().unwrap(),
            vec![
                OperatorCommand::SetWeight { percent: 12.5 },
                OperatorCommand::Promote { full: true }
            ]
        );
    }
}
