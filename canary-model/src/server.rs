//! HTTP API: `POST /predict`, `GET /healthz`, `GET /metrics`, `GET|POST /fault`.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use std::fmt::Write as _;

use axum::body::{Body, Bytes};
use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::classifier::{Classifier, ModelVersion, Sentiment};
use crate::fault::{Draws, FaultConfig, FaultError, FaultState, FaultUpdate};
use crate::metrics::Metrics;

/// Exit status of an injected crash (distinct from a normal error exit).
pub const CRASH_EXIT_CODE: i32 = 70;

/// Body of `POST /predict`.
#[derive(Debug, Deserialize)]
pub struct PredictRequest {
    pub text: String,
}

/// Answer of `POST /predict`.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct PredictResponse {
    pub version: ModelVersion,
    pub prediction: Sentiment,
    pub confidence: f64,
    /// Name of the backend instance that answered (lets clients see where a connection landed).
    pub backend: String,
}

/// Everything a request handler needs.
pub struct AppState {
    classifier: Classifier,
    backend: String,
    faults: Mutex<FaultState>,
    rng: Mutex<StdRng>,
    metrics: Metrics,
}

impl AppState {
    /// `seed` makes fault draws reproducible; `None` seeds from the OS.
    pub fn new(
        version: ModelVersion,
        backend: String,
        faults: FaultConfig,
        seed: Option<u64>,
    ) -> Result<Self, FaultError> {
        Ok(Self {
            classifier: Classifier::new(version),
            backend,
            faults: Mutex::new(FaultState::new(faults)?),
            rng: Mutex::new(seed.map_or_else(StdRng::from_entropy, StdRng::seed_from_u64)),
            metrics: Metrics::new(),
        })
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    fn faults(&self) -> std::sync::MutexGuard<'_, FaultState> {
        // A panic while holding the lock cannot leave the fault state half-written.
        self.faults.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn draws(&self) -> Draws {
        let mut rng = self.rng.lock().unwrap_or_else(PoisonError::into_inner);
        Draws {
            error: rng.gen(),
            skew: rng.gen(),
        }
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/predict", post(predict))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/fault", get(get_fault).post(post_fault))
        .with_state(state)
}

fn error_body(status: StatusCode, message: &str) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

async fn predict(
    State(state): State<Arc<AppState>>,
    body: Result<Json<PredictRequest>, JsonRejection>,
) -> Response {
    let started = Instant::now();
    let plan = {
        let draws = state.draws();
        state.faults().next_request(draws)
    };
    if plan.crash {
        tracing::error!("injected crash: exiting without answering");
        std::process::exit(CRASH_EXIT_CODE);
    }
    if plan.delay > Duration::ZERO {
        tokio::time::sleep(plan.delay).await;
    }
    let m = &state.metrics;
    m.requests.inc();
    let response = if plan.fail {
        m.errors.inc();
        error_body(StatusCode::INTERNAL_SERVER_ERROR, "injected fault")
    } else {
        match body {
            Err(rejection) => {
                m.errors.inc();
                error_body(StatusCode::BAD_REQUEST, &rejection.body_text())
            }
            Ok(Json(req)) => {
                let p = state.classifier.predict(&req.text);
                let class = plan.force_class.unwrap_or(p.class);
                m.predictions.with_label_values(&[class.as_str()]).inc();
                Json(PredictResponse {
                    version: state.classifier.version(),
                    prediction: class,
                    confidence: p.confidence,
                    backend: state.backend.clone(),
                })
                .into_response()
            }
        }
    };
    m.duration.observe(started.elapsed().as_secs_f64());
    response
}

async fn healthz(State(state): State<Arc<AppState>>) -> Response {
    if state.faults().health_failing() {
        (StatusCode::SERVICE_UNAVAILABLE, "failing (injected)\n").into_response()
    } else {
        (StatusCode::OK, "ok\n").into_response()
    }
}

/// Junk series without end, as fast as the connection takes them.
fn flood() -> Body {
    let chunk: Bytes = (0..1000u32)
        .fold(String::new(), |mut s, i| {
            let _ = writeln!(s, "junk_series_{i}{{flood=\"{i}\"}} {i}");
            s
        })
        .into();
    Body::from_stream(futures_util::stream::repeat_with(move || {
        Ok::<_, std::convert::Infallible>(chunk.clone())
    }))
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    if state.faults().metrics_flood() {
        return (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            flood(),
        )
            .into_response();
    }
    if state.faults().metrics_failing() {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            "metrics failing (injected)\n",
        )
            .into_response();
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

async fn get_fault(State(state): State<Arc<AppState>>) -> Json<FaultConfig> {
    Json(state.faults().config().clone())
}

async fn post_fault(
    State(state): State<Arc<AppState>>,
    body: Result<Json<FaultUpdate>, JsonRejection>,
) -> Response {
    let update = match body {
        Ok(Json(u)) => u,
        Err(rejection) => return error_body(StatusCode::BAD_REQUEST, &rejection.body_text()),
    };
    let result = state.faults().update(&update).cloned();
    match result {
        Err(e) => error_body(StatusCode::BAD_REQUEST, &e.to_string()),
        Ok(config) => {
            tracing::info!(?config, "faults changed");
            if update.crash == Some(true) {
                // Answer first, so the caller knows the crash was its doing, then exit.
                tokio::spawn(async {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    tracing::error!("injected crash: exiting");
                    std::process::exit(CRASH_EXIT_CODE);
                });
            }
            Json(config).into_response()
        }
    }
}
