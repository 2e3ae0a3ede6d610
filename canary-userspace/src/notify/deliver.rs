//! Delivery: one task per sink posts its queue's events in order.

use std::time::Duration;

use tokio::sync::mpsc;

use super::{Event, Notifier, NotifyConfig, SinkHandle};
use crate::metrics::Metrics;

/// First retry after this; doubled for each further one.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);

/// Starts one delivery task per sink (call inside a tokio runtime) and returns the
/// controller's handle. Fails, naming the file, when a bearer token file cannot be read or is
/// empty.
pub fn start(sinks: &[NotifyConfig], node: String, metrics: &Metrics) -> Result<Notifier, String> {
    let client = reqwest::Client::builder()
        .build()
        .map_err(|e| format!("cannot build the notification HTTP client: {e}"))?;
    let mut handles = Vec::new();
    for config in sinks {
        let token = match &config.bearer_token_file {
            Some(path) => {
                let t = std::fs::read_to_string(path).map_err(|e| {
                    format!(
                        "notify {:?}: cannot read bearer_token_file {}: {e}; fix the path or its permissions",
                        config.name,
                        path.display()
                    )
                })?;
                let t = t.trim().to_string();
                if t.is_empty() {
                    return Err(format!(
                        "notify {:?}: bearer_token_file {} is empty; put the token in it",
                        config.name,
                        path.display()
                    ));
                }
                Some(t)
            }
            None => None,
        };
        // Both series exist from the start, so a rate() over them works before any drop.
        for reason in ["queue_full", "failed"] {
            let _ = metrics
                .notify_dropped
                .with_label_values(&[&config.name, reason]);
        }
        let _ = metrics.notify_sent.with_label_values(&[&config.name]);
        let (tx, rx) = mpsc::channel(config.queue);
        tokio::spawn(run(
            rx,
            config.clone(),
            token,
            client.clone(),
            metrics.clone(),
        ));
        handles.push(SinkHandle {
            config: config.clone(),
            tx,
        });
    }
    Ok(Notifier::new(handles, node, metrics.clone()))
}

async fn run(
    mut rx: mpsc::Receiver<Event>,
    config: NotifyConfig,
    token: Option<String>,
    client: reqwest::Client,
    metrics: Metrics,
) {
    while let Some(event) = rx.recv().await {
        match post(&client, &config, token.as_deref(), &event).await {
            Ok(()) => metrics.notify_sent.with_label_values(&[&config.name]).inc(),
            Err(why) => {
                metrics
                    .notify_dropped
                    .with_label_values(&[&config.name, "failed"])
                    .inc();
                tracing::warn!(
                    notify = %config.name,
                    event = event.event.as_str(),
                    service = %event.service,
                    attempts = config.retries + 1,
                    "notification dropped: {why}"
                );
            }
        }
    }
}

/// Posts one event: the first attempt and up to `retries` more, with backoff.
async fn post(
    client: &reqwest::Client,
    config: &NotifyConfig,
    token: Option<&str>,
    event: &Event,
) -> Result<(), String> {
    let mut backoff = FIRST_BACKOFF;
    let mut last = String::new();
    for attempt in 0..=config.retries {
        if attempt > 0 {
            tokio::time::sleep(backoff).await;
            backoff *= 2;
        }
        let mut request = client.post(&config.url).timeout(config.timeout).json(event);
        if let Some(t) = token {
            request = request.bearer_auth(t);
        }
        match request.send().await {
            Ok(r) if r.status().is_success() => return Ok(()),
            Ok(r) => last = format!("the receiver answered {}", r.status()),
            Err(e) if e.is_timeout() => {
                last = format!(
                    "no answer within {}",
                    humantime::format_duration(config.timeout)
                );
            }
            Err(e) => last = format!("cannot post to the receiver: {e}"),
        }
    }
    Err(last)
}
