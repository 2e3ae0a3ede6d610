//! One HTTP/1.1 connection we own (hyper's low-level client), so the report can say which
//! connection each answer came over.

use std::error::Error as _;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{CONNECTION, CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpSocket;
use tokio::task::JoinHandle;

use super::report::{Answer, Failure, FailureKind};
use super::LoadSpec;

pub(super) fn timeout_failure(t: Duration) -> Failure {
    Failure {
        kind: FailureKind::Timeout,
        status: None,
        detail: format!("no answer within {t:?}"),
    }
}

fn io_kind(e: &io::Error) -> Option<FailureKind> {
    match e.kind() {
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe => Some(FailureKind::Reset),
        io::ErrorKind::TimedOut => Some(FailureKind::Timeout),
        io::ErrorKind::UnexpectedEof => Some(FailureKind::Closed),
        _ => None,
    }
}

/// Classify a hyper error by the I/O error under it, if any.
fn classify(e: &hyper::Error) -> FailureKind {
    let mut source = e.source();
    while let Some(s) = source {
        if let Some(kind) = s.downcast_ref::<io::Error>().and_then(io_kind) {
            return kind;
        }
        source = s.source();
    }
    if e.is_incomplete_message() || e.is_canceled() || e.is_closed() {
        FailureKind::Closed
    } else {
        FailureKind::Other
    }
}

fn failure(kind: FailureKind, detail: impl std::fmt::Display) -> Failure {
    Failure {
        kind,
        status: None,
        detail: detail.to_string(),
    }
}

pub(super) struct Connection {
    sender: SendRequest<Full<Bytes>>,
    driver: JoinHandle<Result<(), hyper::Error>>,
    local: SocketAddr,
    host: String,
}

impl Connection {
    /// Connect from `source` (any port) or from the address the kernel picks.
    pub(super) async fn open(target: SocketAddr, source: Option<IpAddr>) -> Result<Self, Failure> {
        let socket = if target.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .map_err(|e| failure(FailureKind::Other, format!("socket: {e}")))?;
        if let Some(ip) = source {
            socket
                .bind(SocketAddr::new(ip, 0))
                .map_err(|e| failure(FailureKind::Connect, format!("bind {ip}: {e}")))?;
        }
        let stream = socket
            .connect(target)
            .await
            .map_err(|e| failure(FailureKind::Connect, format!("connect {target}: {e}")))?;
        stream.set_nodelay(true).ok();
        let local = stream
            .local_addr()
            .map_err(|e| failure(FailureKind::Other, e))?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| failure(classify(&e), e))?;
        let driver = tokio::spawn(conn);
        Ok(Self {
            sender,
            driver,
            local,
            host: target.to_string(),
        })
    }

    pub(super) fn local(&self) -> SocketAddr {
        self.local
    }

    /// One POST of `body`; `close` asks the server to close the connection after answering.
    pub(super) async fn request(
        &mut self,
        spec: &LoadSpec,
        body: &str,
        user: Option<&str>,
        close: bool,
    ) -> Result<Answer, Failure> {
        self.sender
            .ready()
            .await
            .map_err(|e| failure(classify(&e), e))?;
        let get = spec.method.eq_ignore_ascii_case("GET");
        let mut req = Request::builder()
            .method(if get { Method::GET } else { Method::POST })
            .uri(spec.path.as_str())
            .header(HOST, self.host.as_str());
        if !get {
            req = req.header(CONTENT_TYPE, "application/json");
        }
        if close {
            req = req.header(CONNECTION, "close");
        }
        if let Some(u) = user {
            req = req.header(spec.user_header.as_str(), u);
        }
        let req = req
            .body(Full::new(if get {
                Bytes::new()
            } else {
                Bytes::from(body.to_owned())
            }))
            .map_err(|e| failure(FailureKind::Other, e))?;
        let resp = self
            .sender
            .send_request(req)
            .await
            .map_err(|e| failure(classify(&e), e))?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| failure(classify(&e), e))?
            .to_bytes();
        if status != StatusCode::OK {
            return Err(Failure {
                kind: FailureKind::Status,
                status: Some(status.as_u16()),
                detail: format!("HTTP {status}"),
            });
        }
        serde_json::from_slice::<Answer>(&bytes).map_err(|e| {
            failure(
                FailureKind::InvalidBody,
                format!("{e}: {}", String::from_utf8_lossy(&bytes)),
            )
        })
    }

    /// Close our side and wait for the connection to finish.
    pub(super) async fn close(self) {
        drop(self.sender);
        let _ = tokio::time::timeout(Duration::from_secs(1), self.driver).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_map_to_kinds() {
        assert_eq!(
            io_kind(&io::Error::from(io::ErrorKind::ConnectionReset)),
            Some(FailureKind::Reset)
        );
        assert_eq!(
            io_kind(&io::Error::from(io::ErrorKind::UnexpectedEof)),
            Some(FailureKind::Closed)
        );
        assert_eq!(io_kind(&io::Error::from(io::ErrorKind::NotFound)), None);
    }
}
