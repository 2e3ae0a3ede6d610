//! Talking to backends over HTTP: health probes, metrics scrapes and warm-up requests.
//! Only I/O lives here; parsing and judging are elsewhere.

use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use super::{Observation, Target};
use crate::upstream::{ScrapeProblem, ScrapeReason};

/// Result of one health probe.
#[derive(Clone, Debug, PartialEq)]
pub enum Probe {
    Healthy,
    /// Why it failed (status code, connect error, timeout), for operators.
    Unhealthy(String),
    /// The probe could not be made for a reason of this node (out of file descriptors,
    /// buffers or local ports): says nothing about the backend, so it counts neither way.
    Unknown(String),
}

/// `errno` values of a failed probe that are about this node, not the backend.
const LOCAL_ERRNOS: [i32; 5] = [
    libc::EMFILE,
    libc::ENFILE,
    libc::ENOBUFS,
    libc::ENOMEM,
    libc::EADDRNOTAVAIL,
];

/// The first `errno` among `codes` behind an error: the chain of sources is searched for an
/// `io::Error` with one of them.
fn errno_in(e: &(dyn std::error::Error + 'static), codes: &[i32]) -> Option<std::io::Error> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if let Some(code) = io.raw_os_error().filter(|c| codes.contains(c)) {
                return Some(std::io::Error::from_raw_os_error(code));
            }
        }
        cur = err.source();
    }
    None
}

/// The local `errno` behind an error, if any (one of [`LOCAL_ERRNOS`]).
pub fn local_cause(e: &(dyn std::error::Error + 'static)) -> Option<std::io::Error> {
    errno_in(e, &LOCAL_ERRNOS)
}

/// HTTP client for backends, with a bounded timeout for every call (a slow backend must not
/// stall a poll). Redirects are never followed: a backend must not send the daemon to another
/// backend's metrics (a canary judged on stable's numbers) or to any other address.
#[derive(Clone)]
pub struct BackendClient {
    http: reqwest::Client,
}

/// The `Location` of a redirect, shortened for a message.
fn location(response: &reqwest::Response) -> String {
    let to = response
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("?");
    let short: String = to.chars().take(120).collect();
    if short.len() < to.len() {
        format!("{short}...")
    } else {
        short
    }
}

impl BackendClient {
    pub fn new(timeout: Duration) -> reqwest::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .pool_max_idle_per_host(2)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(BackendClient { http })
    }

    /// `GET health_url`: healthy on any 2xx; a redirect is a failure (not followed).
    pub async fn probe(&self, url: &str) -> Probe {
        match self.http.get(url).send().await {
            Ok(r) if r.status().is_success() => Probe::Healthy,
            Ok(r) if r.status().is_redirection() => Probe::Unhealthy(format!(
                "health check answered {} to {}; redirects are not followed: set health_url to the address that answers",
                r.status(),
                location(&r)
            )),
            Ok(r) => Probe::Unhealthy(format!("health check answered {}", r.status())),
            Err(e) => match local_cause(&e) {
                Some(local) => Probe::Unknown(format!(
                    "probe not made, local failure on this node: {local}"
                )),
                None => Probe::Unhealthy(describe(&e).message),
            },
        }
    }

    /// `GET metrics_url`: the Prometheus text, or why it could not be had. The body is read
    /// in chunks and given up past `max_bytes`, so a backend that streams without end costs
    /// at most that much memory.
    pub async fn scrape(&self, url: &str, max_bytes: u64) -> Result<String, ScrapeProblem> {
        if url.is_empty() {
            // Not scraped by this node (a cluster node that does not lead).
            return Ok(String::new());
        }
        let mut response = self.http.get(url).send().await.map_err(|e| describe(&e))?;
        let status = response.status();
        if status.is_redirection() {
            return Err(ScrapeProblem {
                reason: ScrapeReason::Redirect,
                message: format!(
                    "metrics endpoint answered {status} to {}; redirects are not followed: set metrics_url to the address that serves the metrics",
                    location(&response)
                ),
            });
        }
        if !status.is_success() {
            return Err(ScrapeProblem {
                reason: ScrapeReason::HttpStatus,
                message: format!("metrics endpoint answered {status}"),
            });
        }
        let too_large = || {
            ScrapeProblem {
            reason: ScrapeReason::TooLarge,
            message: format!(
                "metrics answer is larger than upstream.max_scrape_bytes ({max_bytes} bytes); the backend exports too much, or raise the limit"
            ),
        }
        };
        if response.content_length().is_some_and(|n| n > max_bytes) {
            return Err(too_large());
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| describe(&e))? {
            if (body.len() + chunk.len()) as u64 > max_bytes {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        String::from_utf8(body).map_err(|e| ScrapeProblem {
            reason: ScrapeReason::Body,
            message: format!(
                "metrics answer is not UTF-8 text (invalid byte at {})",
                e.utf8_error().valid_up_to()
            ),
        })
    }

    /// Send `count` warm-up requests to `url`, one after the other: GETs, or POSTs of the JSON
    /// `body` (which run the model, as real requests do). Returns how many got a 2xx and how
    /// long it took.
    pub async fn warm_up(&self, url: &str, count: u32, body: Option<&str>) -> (u32, Duration) {
        let start = Instant::now();
        let mut ok = 0;
        for _ in 0..count {
            let request = match body {
                Some(b) => self
                    .http
                    .post(url)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(b.to_string()),
                None => self.http.get(url),
            };
            if matches!(request.send().await, Ok(r) if r.status().is_success()) {
                ok += 1;
            }
        }
        (ok, start.elapsed())
    }
}

/// Why a scrape failed, told apart: this node's own limits (which say nothing about the
/// backend), a timeout, a refused connection (nothing listens), another connection failure, a
/// connection closed before an answer, an unreadable body.
fn describe(e: &reqwest::Error) -> ScrapeProblem {
    let (reason, message) = if let Some(local) = local_cause(e) {
        (
            ScrapeReason::Local,
            format!("scrape not made, local failure on this node: {local}; the backend's metrics are unknown this poll, not missing"),
        )
    } else if e.is_timeout() {
        (ScrapeReason::Timeout, "timed out".to_string())
    } else if e.is_connect() {
        if errno_in(e, &[libc::ECONNREFUSED]).is_some() {
            (
                ScrapeReason::Refused,
                "connection refused: nothing listens on that port".to_string(),
            )
        } else {
            (
                ScrapeReason::Connect,
                format!("connection failed: {}", chain(e)),
            )
        }
    } else if e.is_body() || e.is_decode() {
        (
            ScrapeReason::Body,
            format!("reading the answer failed: {}", chain(e)),
        )
    } else {
        (ScrapeReason::NoAnswer, format!("no answer: {}", chain(e)))
    };
    ScrapeProblem { reason, message }
}

/// An error with its sources, `outer: inner: ...` (reqwest's own text hides the cause).
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(err) = cur {
        let text = err.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = err.source();
    }
    out
}

/// Probes and scrapes every backend at once; each call is bounded by the client's timeout.
pub async fn observe(client: &BackendClient, targets: Vec<Target>) -> Vec<Observation> {
    let mut set = JoinSet::new();
    for t in targets {
        let client = client.clone();
        set.spawn(async move {
            let (health, metrics) = tokio::join!(
                client.probe(&t.health_url),
                client.scrape(&t.metrics_url, t.max_scrape_bytes)
            );
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

#[cfg(test)]
mod tests {
    //! Real HTTP servers on loopback: axum for ordinary answers, a raw tokio socket for a body
    //! that never ends.

    use std::net::SocketAddr;

    use axum::response::Redirect;
    use axum::routing::get;
    use axum::Router;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    use super::*;

    const STABLE_METRICS: &str = "requests_total 5000\nrequest_errors_total 0\n";

    async fn serve(router: Router) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await });
        addr
    }

    fn client() -> BackendClient {
        BackendClient::new(Duration::from_secs(10)).unwrap()
    }

    #[tokio::test]
    async fn a_redirect_to_another_backend_is_not_followed() {
        let stable = serve(
            Router::new()
                .route("/metrics", get(|| async { STABLE_METRICS }))
                .route("/healthz", get(|| async { "ok" })),
        )
        .await;
        // The canary sends the daemon to stable's numbers.
        let to_metrics = format!("http://{stable}/metrics");
        let to_health = format!("http://{stable}/healthz");
        let canary = serve(
            Router::new()
                .route(
                    "/metrics",
                    get(move || async move {
                        (
                            axum::http::StatusCode::FOUND,
                            [(axum::http::header::LOCATION, to_metrics)],
                        )
                    }),
                )
                .route(
                    "/healthz",
                    get(move || async move { Redirect::to(&to_health) }),
                ),
        )
        .await;
        let c = client();
        assert_eq!(
            c.scrape(&format!("http://{stable}/metrics"), 1 << 20)
                .await
                .unwrap(),
            STABLE_METRICS
        );
        let e = c
            .scrape(&format!("http://{canary}/metrics"), 1 << 20)
            .await
            .expect_err("a redirect is a failed scrape");
        assert_eq!(e.reason, ScrapeReason::Redirect);
        assert_eq!(
            e.message,
            format!("metrics endpoint answered 302 Found to http://{stable}/metrics; redirects are not followed: set metrics_url to the address that serves the metrics")
        );
        match c.probe(&format!("http://{canary}/healthz")).await {
            Probe::Unhealthy(why) => assert!(
                why.starts_with("health check answered 303 See Other to http://"),
                "{why}"
            ),
            other => panic!("a redirected health check must fail: {other:?}"),
        }
        assert_eq!(
            c.probe(&format!("http://{stable}/healthz")).await,
            Probe::Healthy
        );
    }

    #[allow(clippy::format_collect, reason = "the junk is built once")]
    /// A backend whose `/metrics` answer never ends: junk series as fast as the socket takes
    /// them. Returns its address and a counter of the bytes it managed to send.
    async fn endless() -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicU64>) {
        use std::sync::atomic::{AtomicU64, Ordering};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let sent = std::sync::Arc::new(AtomicU64::new(0));
        let counter = sent.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                let counter = counter.clone();
                tokio::spawn(async move {
                    let mut request = [0u8; 1024];
                    let _ = tokio::io::AsyncReadExt::read(&mut socket, &mut request).await;
                    let head =
                        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nconnection: close\r\n\r\n";
                    if socket.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                    let junk: String = (0..1000)
                        .map(|i| format!("junk_series_{i}{{id=\"{i}\"}} 1\n"))
                        .collect();
                    while socket.write_all(junk.as_bytes()).await.is_ok() {
                        counter.fetch_add(junk.len() as u64, Ordering::Relaxed);
                    }
                });
            }
        });
        (addr, sent)
    }

    #[tokio::test]
    async fn a_body_without_end_is_given_up_at_the_byte_cap() {
        let (addr, sent) = endless().await;
        let started = Instant::now();
        let e = client()
            .scrape(&format!("http://{addr}/metrics"), 1 << 20)
            .await
            .expect_err("an endless body is a failed scrape");
        assert_eq!(e.reason, ScrapeReason::TooLarge);
        assert_eq!(e.message, "metrics answer is larger than upstream.max_scrape_bytes (1048576 bytes); the backend exports too much, or raise the limit");
        // Cut by the cap, long before the 10 s timeout.
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "took {:?}",
            started.elapsed()
        );
        let sent = sent.load(std::sync::atomic::Ordering::Relaxed);
        assert!(sent >= 1 << 20, "the server sent only {sent} bytes");
    }

    #[tokio::test]
    async fn a_declared_length_above_the_cap_is_refused_unread() {
        let big =
            serve(Router::new().route("/metrics", get(|| async { "x 1\n".repeat(50_000) }))).await;
        let c = client();
        let e = c
            .scrape(&format!("http://{big}/metrics"), 100_000)
            .await
            .unwrap_err();
        assert_eq!(e.reason, ScrapeReason::TooLarge);
        let text = c
            .scrape(&format!("http://{big}/metrics"), 200_000)
            .await
            .unwrap();
        assert_eq!(text.len(), 200_000);
    }

    #[tokio::test]
    async fn failures_have_their_reason() {
        let broken = serve(Router::new().route(
            "/metrics",
            get(|| async { (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "no") }),
        ))
        .await;
        let c = client();
        let e = c
            .scrape(&format!("http://{broken}/metrics"), 1 << 20)
            .await
            .unwrap_err();
        assert_eq!(
            (e.reason, e.message.as_str()),
            (
                ScrapeReason::HttpStatus,
                "metrics endpoint answered 500 Internal Server Error"
            )
        );
        // Nothing listens on a port that was just released.
        let closed = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let e = c
            .scrape(&format!("http://{closed}/metrics"), 1 << 20)
            .await
            .unwrap_err();
        assert_eq!(
            (e.reason, e.message.as_str()),
            (
                ScrapeReason::Refused,
                "connection refused: nothing listens on that port"
            )
        );
        // Accepts, reads the request, closes without a word.
        let mute = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mute_addr = mute.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = mute.accept().await {
                let mut request = [0u8; 1024];
                let _ = tokio::io::AsyncReadExt::read(&mut socket, &mut request).await;
                drop(socket);
            }
        });
        let e = c
            .scrape(&format!("http://{mute_addr}/metrics"), 1 << 20)
            .await
            .unwrap_err();
        assert_eq!(e.reason, ScrapeReason::NoAnswer, "{}", e.message);
        assert!(e.message.starts_with("no answer: "), "{}", e.message);
        // Accepts and never answers: a timeout, not a connection failure.
        let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let silent_addr = silent.local_addr().unwrap();
        let held = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = silent.accept().await {
                held.push(socket);
            }
        });
        let e = BackendClient::new(Duration::from_millis(300))
            .unwrap()
            .scrape(&format!("http://{silent_addr}/metrics"), 1 << 20)
            .await
            .unwrap_err();
        assert_eq!(
            (e.reason, e.message.as_str()),
            (ScrapeReason::Timeout, "timed out")
        );
        held.abort();
    }

    /// An error wrapping another, like reqwest's around hyper's around the socket's.
    #[derive(Debug)]
    struct Wrapped(Box<dyn std::error::Error + Send + Sync>);

    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("error sending request")
        }
    }

    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&*self.0)
        }
    }

    #[test]
    fn local_errnos_are_found_anywhere_in_the_chain() {
        for code in LOCAL_ERRNOS {
            let e = Wrapped(Box::new(Wrapped(Box::new(
                std::io::Error::from_raw_os_error(code),
            ))));
            assert_eq!(local_cause(&e).and_then(|l| l.raw_os_error()), Some(code));
        }
        for code in [libc::ECONNREFUSED, libc::ETIMEDOUT, libc::EHOSTUNREACH] {
            let e = Wrapped(Box::new(std::io::Error::from_raw_os_error(code)));
            assert!(local_cause(&e).is_none(), "{code}");
        }
    }

    /// A real probe made while this process has no file descriptor left fails locally, and is
    /// classified as unknown, not as a backend failure. Runs in a child process so the
    /// lowered limit affects nothing else.
    #[test]
    fn a_probe_without_file_descriptors_is_unknown() {
        if std::env::var_os("CANARY_PROBE_EMFILE_CHILD").is_none() {
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "observe::probe::tests::a_probe_without_file_descriptors_is_unknown",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env("CANARY_PROBE_EMFILE_CHILD", "1")
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "{text}");
            assert!(text.contains("probe result: Unknown"), "{text}");
            return;
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}/healthz", listener.local_addr().unwrap());
            let client = BackendClient::new(Duration::from_secs(2)).unwrap();
            // Use up every descriptor below a limit just above what is open now.
            let mut hold = Vec::new();
            let limit = libc::rlimit {
                rlim_cur: 256,
                rlim_max: 256,
            };
            // SAFETY: setrlimit with a valid struct; lowers this child's own limit only.
            assert_eq!(
                unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const limit) },
                0
            );
            while let Ok(f) = std::fs::File::open("/dev/null") {
                hold.push(f);
            }
            let probe = client.probe(&url).await;
            let scrape = client.scrape(&url, 1 << 20).await;
            drop(hold);
            println!("probe result: {probe:?}");
            assert!(
                matches!(probe, Probe::Unknown(ref why) if why.contains("local")),
                "{probe:?}"
            );
            // The scrape made at the same moment: a local failure, not the backend's.
            let e = scrape.expect_err("no descriptor for the scrape");
            assert_eq!(e.reason, ScrapeReason::Local, "{}", e.message);
            assert!(
                e.message
                    .starts_with("scrape not made, local failure on this node: "),
                "{}",
                e.message
            );
        });
    }
}
