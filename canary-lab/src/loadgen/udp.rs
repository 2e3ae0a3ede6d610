//! UDP flows to `canary-model --udp-listen`: a request is one JSON datagram (`{"text": ...,
//! "id": N}`), its answer one JSON datagram that repeats the id. A flow is one connected UDP
//! socket (one 5-tuple); answers to earlier, timed-out requests are recognised by their id and
//! skipped.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use serde_json::Value;
use tokio::net::UdpSocket;

use super::report::{Answer, Failure, FailureKind};

fn failure(kind: FailureKind, detail: impl std::fmt::Display) -> Failure {
    Failure {
        kind,
        status: None,
        detail: detail.to_string(),
    }
}

fn io_failure(what: &str, e: &io::Error) -> Failure {
    let kind = match e.kind() {
        // An ICMP port unreachable: nothing listens there.
        io::ErrorKind::ConnectionRefused => FailureKind::Connect,
        _ => FailureKind::Other,
    };
    failure(kind, format!("{what}: {e}"))
}

/// One UDP flow: a socket connected to the target.
pub(super) struct Flow {
    socket: UdpSocket,
    local: SocketAddr,
    next_id: u64,
}

impl Flow {
    /// A new flow from `source` (any port) or from the address the kernel picks.
    pub(super) async fn open(target: SocketAddr, source: Option<IpAddr>) -> Result<Self, Failure> {
        let any = if target.is_ipv4() {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        } else {
            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        };
        let socket = UdpSocket::bind(SocketAddr::new(source.unwrap_or(any), 0))
            .await
            .map_err(|e| io_failure("bind", &e))?;
        socket
            .connect(target)
            .await
            .map_err(|e| io_failure("connect", &e))?;
        let local = socket.local_addr().map_err(|e| io_failure("local", &e))?;
        Ok(Self {
            socket,
            local,
            next_id: 1,
        })
    }

    pub(super) fn local(&self) -> SocketAddr {
        self.local
    }

    /// Sends `body` (the HTTP request's JSON) as one datagram and waits for its answer. The
    /// caller bounds the wait.
    pub(super) async fn request(&mut self, body: &str) -> Result<Answer, Failure> {
        let id = self.next_id;
        self.next_id += 1;
        let mut request: Value = serde_json::from_str(body)
            .map_err(|e| failure(FailureKind::Other, format!("request body: {e}")))?;
        if let Some(map) = request.as_object_mut() {
            map.insert("id".into(), id.into());
        }
        self.socket
            .send(request.to_string().as_bytes())
            .await
            .map_err(|e| io_failure("send", &e))?;
        let mut buf = vec![0u8; 65_535];
        loop {
            let n = self
                .socket
                .recv(&mut buf)
                .await
                .map_err(|e| io_failure("receive", &e))?;
            if let Some(result) = parse_answer(&buf[..n], id) {
                return result;
            }
        }
    }
}

/// The result an answer datagram carries, or `None` for the answer to another (earlier) request.
pub(super) fn parse_answer(datagram: &[u8], id: u64) -> Option<Result<Answer, Failure>> {
    let Ok(v) = serde_json::from_slice::<Value>(datagram) else {
        return Some(Err(failure(
            FailureKind::InvalidBody,
            format!("not JSON: {}", String::from_utf8_lossy(datagram)),
        )));
    };
    if v.get("id").and_then(Value::as_u64) != Some(id) {
        return None;
    }
    if let Some(error) = v.get("error") {
        let status = v
            .get("status")
            .and_then(Value::as_u64)
            .and_then(|s| u16::try_from(s).ok());
        return Some(Err(Failure {
            kind: FailureKind::Status,
            status,
            detail: error.to_string(),
        }));
    }
    Some(
        serde_json::from_value::<Answer>(v)
            .map_err(|e| failure(FailureKind::InvalidBody, format!("answer: {e}"))),
    )
}

/// A UDP request that timed out (no answer: lost on the way there or back, or not answered).
pub(super) fn no_answer(t: Duration) -> Failure {
    failure(FailureKind::Timeout, format!("no UDP answer within {t:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_matched_by_id() {
        let ok =
            br#"{"version":"v2","prediction":"positive","confidence":0.9,"backend":"k0","id":5}"#;
        let a = parse_answer(ok, 5).unwrap().unwrap();
        assert_eq!(
            (a.version.as_str(), a.backend.as_deref()),
            ("v2", Some("k0"))
        );
        assert!(
            parse_answer(ok, 6).is_none(),
            "an earlier request's answer is skipped"
        );
        let err = parse_answer(br#"{"error":"injected fault","status":500,"id":2}"#, 2)
            .unwrap()
            .unwrap_err();
        assert_eq!((err.kind, err.status), (FailureKind::Status, Some(500)));
        let junk = parse_answer(b"junk", 1).unwrap().unwrap_err();
        assert_eq!(junk.kind, FailureKind::InvalidBody);
    }
}
