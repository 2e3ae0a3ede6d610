//! Upstream presets: the series that common model servers and instrumentation libraries
//! really export, so that `preset = "..."` is all a service section needs. Explicit keys in
//! `[services.upstream]` override a preset's.

/// Every series and label a preset fills.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Preset {
    pub name: &'static str,
    /// What exports these series.
    pub source: &'static str,
    pub requests: &'static str,
    pub errors: &'static str,
    pub latency: &'static str,
    pub predictions: &'static str,
    pub prediction_label: &'static str,
    /// `""`: the library puts no version label on these series.
    pub version_label: &'static str,
}

/// `canary-model`, the project's own model server; also the defaults without a preset.
pub const CANARY_MODEL: Preset = Preset {
    name: "canary-model",
    source: "canary-model (this repository)",
    requests: "requests_total",
    errors: "request_errors_total",
    latency: "request_duration_seconds",
    predictions: "predictions_total",
    prediction_label: "class",
    version_label: "",
};

/// A `FastAPI` app instrumented with `prometheus_client` directly (examples/fastapi,
/// `--metrics prometheus-client`): one requests counter with the route template and the
/// numeric status code; errors are its 5xx series.
pub const PROMETHEUS_CLIENT: Preset = Preset {
    name: "prometheus-client",
    source: "FastAPI app with prometheus_client (examples/fastapi)",
    requests: r#"http_requests_total{route="/predict"}"#,
    errors: r#"http_requests_total{route="/predict",status=~"5.."}"#,
    latency: r#"http_request_duration_seconds{route="/predict"}"#,
    predictions: "model_predictions_total",
    prediction_label: "class",
    version_label: "model_version",
};

/// A `FastAPI` app instrumented with `prometheus-fastapi-instrumentator`'s default metrics
/// (examples/fastapi, `--metrics instrumentator`): status codes are grouped (`5xx`), and the
/// latency histogram per handler has only the buckets 0.1, 0.5 and 1 s (its mean is exact;
/// its p95 is coarse). The library's fine `http_request_duration_highr_seconds` has no
/// handler label (health checks and scrapes mixed in), so it is not used.
pub const FASTAPI_INSTRUMENTATOR: Preset = Preset {
    name: "fastapi-instrumentator",
    source: "FastAPI app with prometheus-fastapi-instrumentator (examples/fastapi)",
    requests: r#"http_requests_total{handler="/predict"}"#,
    errors: r#"http_requests_total{handler="/predict",status="5xx"}"#,
    latency: r#"http_request_duration_seconds{handler="/predict"}"#,
    predictions: "model_predictions_total",
    prediction_label: "class",
    version_label: "",
};

/// Every preset, in the order the README lists them.
pub const PRESETS: [Preset; 3] = [CANARY_MODEL, PROMETHEUS_CLIENT, FASTAPI_INSTRUMENTATOR];

/// The preset called `name`.
pub fn find(name: &str) -> Option<&'static Preset> {
    PRESETS.iter().find(|p| p.name == name)
}

/// The preset names, for messages.
pub fn names() -> Vec<&'static str> {
    PRESETS.iter().map(|p| p.name).collect()
}
