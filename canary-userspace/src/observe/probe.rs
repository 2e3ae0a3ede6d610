//! Talking to backends over HTTP: health probes, metrics scrapes and warm-up requests.
//! Only I/O lives here; parsing and judging are elsewhere.

use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use super::{Observation, Target};

/// Result of one health probe.
#[derive(Clone, Debug, PartialEq)]
pub enum Probe {
    Healthy,
    /// Why it failed (status code, connect error, timeout), for operators.
    Unhealthy(String),
}

/// HTTP client for backends, with a bounded timeout for every call (a slow backend must not
/// stall a poll).
#[derive(Clone)]
pub struct BackendClient {
    http: reqwest::Client,
}

impl BackendClient {
    pub fn new(timeout: Duration) -> reqwest::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .pool_max_idle_per_host(2)
            .build()?;
        Ok(BackendClient { http })
    }

    /// `GET health_url`: healthy on any 2xx.
    pub async fn probe(&self, url: &str) -> Probe {
        match self.http.get(url).send().await {
            Ok(r) if r.status().is_success() => Probe::Healthy,
            Ok(r) => Probe::Unhealthy(format!("health check answered {}", r.status())),
            Err(e) => Probe::Unhealthy(describe(&e)),
        }
    }

    /// `GET metrics_url`: the Prometheus text, or why it could not be had.
    pub async fn scrape(&self, url: &str) -> Result<String, String> {
        let response = self.http.get(url).send().await.map_err(|e| describe(&e))?;
        if !response.status().is_success() {
            return Err(format!("metrics endpoint answered {}", response.status()));
        }
        response.text().await.map_err(|e| describe(&e))
    }

    /// Send `count` warm-up GETs to `url`; returns how many got a 2xx and how long it took.
    pub async fn warm_up(&self, url: &str, count: u32) -> (u32, Duration) {
        let start = Instant::now();
        let mut ok = 0;
        for _ in 0..count {
            if matches!(self.http.get(url).send().await, Ok(r) if r.status().is_success()) {
                ok += 1;
            }
        }
        (ok, start.elapsed())
    }
}

fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_connect() {
        format!("connection failed: {e}")
    } else {
        e.to_string()
    }
}

/// Probes and scrapes every backend at once; each call is bounded by the client's timeout.
pub async fn observe(client: &BackendClient, targets: Vec<Target>) -> Vec<Observation> {
    let mut set = JoinSet::new();
    for t in targets {
        let client = client.clone();
        set.spawn(async move {
            let (health, metrics) =
                tokio::join!(client.probe(&t.health_url), client.scrape(&t.metrics_url));
            Observation {
                service: t.service,
                backend: t.backend,
                health,
                metrics,
            }
        });
    }
    let mut out = Vec::new();
    while let Some(r) = set.join_next().await {
        if let Ok(o) = r {
            out.push(o);
        }
    }
    out
}
