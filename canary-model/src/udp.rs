//! Predictions over UDP: one request datagram, one answer datagram, with the same faults and
//! metrics as `POST /predict`.
//!
//! A request is the JSON of `POST /predict` (`{"text": ...}`) with an optional `id` that the
//! answer repeats, so a client can tell a late answer from the one it waits for. The answer is
//! the JSON of a prediction (`version`, `prediction`, `confidence`, `backend`) or
//! `{"error": ..., "status": 500|400, "backend": ...}`, plus the `id`. Answers leave from the address the
//! socket is bound to: behind a direct-server-return balancer bind the VIP (held on `lo`), so
//! that answers come from the address the client sent to.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::{json, Value};
use tokio::net::UdpSocket;

use crate::server::{serve_prediction, AppState, PredictRequest};

/// Largest request datagram read (a longer one is truncated, and refused as bad JSON).
const MAX_DATAGRAM: usize = 65_535;

/// The request datagram: the HTTP body plus an optional id.
#[derive(Debug, Deserialize)]
struct UdpRequest {
    text: String,
    #[serde(default)]
    id: Option<u64>,
}

/// The id of a request datagram that is not a valid request (best effort, for the answer).
fn id_of(datagram: &[u8]) -> Option<u64> {
    serde_json::from_slice::<Value>(datagram)
        .ok()?
        .get("id")?
        .as_u64()
}

/// The answer datagram to one request datagram.
pub async fn answer(state: &AppState, datagram: &[u8]) -> Vec<u8> {
    let (id, body) = match serde_json::from_slice::<UdpRequest>(datagram) {
        Ok(r) => (r.id, Ok(PredictRequest { text: r.text })),
        Err(e) => (id_of(datagram), Err(format!("bad request datagram: {e}"))),
    };
    let mut answer = match serve_prediction(state, body).await {
        Ok(p) => serde_json::to_value(p).unwrap_or_else(|e| json!({ "error": e.to_string() })),
        Err(r) => json!({
            "error": r.message,
            "status": r.status.as_u16(),
            "backend": state.backend(),
        }),
    };
    if let (Some(id), Some(map)) = (id, answer.as_object_mut()) {
        map.insert("id".into(), id.into());
    }
    answer.to_string().into_bytes()
}

/// Answers every datagram on `socket`, each in its own task (an injected latency delays only
/// its own answer). Returns only on a receive error.
pub async fn serve(socket: UdpSocket, state: Arc<AppState>) -> std::io::Result<()> {
    let socket = Arc::new(socket);
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let (n, peer) = socket.recv_from(&mut buf).await?;
        let datagram = buf[..n].to_vec();
        let (socket, state) = (socket.clone(), state.clone());
        tokio::spawn(async move {
            let answer = answer(&state, &datagram).await;
            if let Err(e) = socket.send_to(&answer, peer).await {
                tracing::warn!(%peer, error = %e, "cannot send a UDP answer");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classifier::ModelVersion;
    use crate::fault::FaultConfig;

    fn state(faults: FaultConfig) -> AppState {
        AppState::new(ModelVersion::V2, "k0".into(), faults, Some(1)).unwrap()
    }

    fn parse(bytes: &[u8]) -> Value {
        serde_json::from_slice(bytes).unwrap()
    }

    #[tokio::test]
    async fn a_datagram_gets_a_prediction_with_its_id_and_is_counted() {
        let s = state(FaultConfig::default());
        let a = parse(&answer(&s, br#"{"text":"great product","id":7}"#).await);
        assert_eq!(a["version"], "v2");
        assert_eq!(a["backend"], "k0");
        assert_eq!(a["id"], 7);
        assert!(a["prediction"].is_string());
        let metrics = s.metrics().render();
        assert!(metrics.contains("\nrequests_total 1"), "{metrics}");
    }

    #[tokio::test]
    async fn faults_and_bad_datagrams_answer_errors_counted_as_errors() {
        let s = state(FaultConfig {
            error_rate: 1.0,
            ..FaultConfig::default()
        });
        let a = parse(&answer(&s, br#"{"text":"x","id":3}"#).await);
        assert_eq!(
            (a["status"].as_u64(), a["id"].as_u64()),
            (Some(500), Some(3))
        );
        let s = state(FaultConfig::default());
        let a = parse(&answer(&s, br#"{"txt":"x","id":4}"#).await);
        assert_eq!(
            (a["status"].as_u64(), a["id"].as_u64()),
            (Some(400), Some(4))
        );
        assert!(a["error"]
            .as_str()
            .unwrap()
            .contains("bad request datagram"));
        let metrics = s.metrics().render();
        assert!(metrics.contains("\nrequest_errors_total 1"), "{metrics}");
    }
}
