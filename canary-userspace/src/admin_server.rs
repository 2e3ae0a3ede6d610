//! Serving the admin API so that no client can exhaust the daemon: hyper's HTTP/1 connection
//! builder with a timer (so its header-read timeout applies), at most `admin.max_connections` open
//! connections, and an idle timeout.
//!
//! The accept loop never stops accepting, so a new client is never stuck in the listen backlog
//! behind a flood. Past the cap, each new connection closes the oldest one that has no request
//! in progress (a client that has not finished sending its headers counts as such); if every
//! connection is busy, the new one is closed. A connection with no request in progress for
//! `admin.idle_timeout` is closed, and one whose headers do not arrive within
//! `admin.header_read_timeout` is closed by hyper (whose header timer also runs while a
//! connection waits for its next request: an idle connection goes after the shorter of the
//! two). Each closing is counted by reason ([`CloseReason`]). Failed accepts for lack of descriptors or
//! buffers are retried after a short pause instead of spinning.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};
use tower::ServiceExt as _;

/// The admin server's limits (`[admin]` keys).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
}

/// Why the server closed an admin connection (`canary_admin_connections_closed_total{reason}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// At `admin.max_connections`: the oldest connection without a request in progress was
    /// closed to make room for a new one.
    EvictedAtCap,
    /// At `admin.max_connections` with every connection busy: the new one was closed.
    RefusedAtCap,
    /// Its request headers did not arrive within `admin.header_read_timeout`.
    HeaderTimeout,
    /// No request in progress for `admin.idle_timeout`.
    IdleTimeout,
}

impl CloseReason {
    pub const ALL: [CloseReason; 4] = [
        CloseReason::EvictedAtCap,
        CloseReason::RefusedAtCap,
        CloseReason::HeaderTimeout,
        CloseReason::IdleTimeout,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::EvictedAtCap => "evicted_at_cap",
            CloseReason::RefusedAtCap => "refused_at_cap",
            CloseReason::HeaderTimeout => "header_timeout",
            CloseReason::IdleTimeout => "idle_timeout",
        }
    }
}

/// The admin server's own metrics: open connections, and connections it closed by reason.
#[derive(Clone, Debug)]
pub struct ConnectionMetrics {
    pub open: prometheus::IntGauge,
    pub closed: prometheus::IntCounterVec,
}

impl ConnectionMetrics {
    /// Metrics registered nowhere (tests that do not read them).
    pub fn unregistered() -> Self {
        ConnectionMetrics {
            open: prometheus::IntGauge::new("admin_connections", "open").expect("valid name"),
            closed: prometheus::IntCounterVec::new(
                prometheus::Opts::new("admin_connections_closed_total", "closed"),
                &["reason"],
            )
            .expect("valid name"),
        }
    }

    fn closed(&self, reason: CloseReason) {
        self.closed.with_label_values(&[reason.as_str()]).inc();
    }
}

/// How long a stopping server lets requests in progress finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// One open connection, as the accept loop sees it.
#[derive(Debug)]
struct Conn {
    /// Requests in progress.
    busy: AtomicUsize,
    /// Milliseconds since the server started at the last request start or end.
    last_active_ms: AtomicU64,
    /// Wakes the connection's task to close it at once.
    evict: Notify,
}

#[derive(Debug, Default)]
struct Registry {
    next_id: u64,
    /// By id: the oldest first.
    conns: BTreeMap<u64, Arc<Conn>>,
}

impl Registry {
    /// Makes room for one more connection: evicts the oldest idle one when at the cap.
    /// `Err(RefusedAtCap)` when every connection is busy; `Ok(Some(EvictedAtCap))` when one was
    /// evicted.
    fn make_room(&mut self, max: usize) -> Result<Option<CloseReason>, CloseReason> {
        if self.conns.len() < max {
            return Ok(None);
        }
        let oldest_idle = self
            .conns
            .iter()
            .find(|(_, c)| c.busy.load(Ordering::Acquire) == 0)
            .map(|(id, _)| *id);
        match oldest_idle {
            Some(id) => {
                if let Some(c) = self.conns.remove(&id) {
                    c.evict.notify_one();
                }
                Ok(Some(CloseReason::EvictedAtCap))
            }
            None => Err(CloseReason::RefusedAtCap),
        }
    }
}

/// Marks a request in progress for as long as it lives.
struct Busy {
    conn: Arc<Conn>,
    started: Instant,
}

impl Busy {
    fn new(conn: Arc<Conn>, started: Instant) -> Self {
        conn.busy.fetch_add(1, Ordering::AcqRel);
        touch(&conn, started);
        Busy { conn, started }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        touch(&self.conn, self.started);
        self.conn.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

fn touch(conn: &Conn, started: Instant) {
    conn.last_active_ms
        .store(started.elapsed().as_millis() as u64, Ordering::Release);
}

fn is_resource_shortage(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Serves `router` on `listener` within `limits` until `shutdown` resolves; then stops
/// accepting and gives requests in progress a short grace period.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    metrics: ConnectionMetrics,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    for reason in CloseReason::ALL {
        metrics.closed.with_label_values(&[reason.as_str()]);
    }
    let started = Instant::now();
    let registry = Arc::new(Mutex::new(Registry::default()));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    let mut shortage_logged: Option<Instant> = None;
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
            // Reap finished connection tasks as they end.
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) if is_resource_shortage(&e) => {
                if shortage_logged.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                    tracing::warn!(error = %e, "admin API: cannot accept a connection; retrying");
                    shortage_logged = Some(Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            Err(e) => {
                tracing::debug!(error = %e, "admin API: accept failed");
                continue;
            }
        };
        let (id, conn) = {
            let mut reg = registry
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match reg.make_room(limits.max_connections) {
                Ok(None) => {}
                Ok(Some(evicted)) => metrics.closed(evicted),
                Err(refused) => {
                    metrics.closed(refused);
                    tracing::debug!(
                        max = limits.max_connections,
                        "admin API: every connection is busy; closing a new one"
                    );
                    continue;
                }
            }
            let id = reg.next_id;
            reg.next_id += 1;
            let conn = Arc::new(Conn {
                busy: AtomicUsize::new(0),
                last_active_ms: AtomicU64::new(started.elapsed().as_millis() as u64),
                evict: Notify::new(),
            });
            reg.conns.insert(id, conn.clone());
            (id, conn)
        };
        let router = router.clone();
        let registry = registry.clone();
        let stop = stop_rx.clone();
        let metrics = metrics.clone();
        metrics.open.inc();
        tasks.spawn(async move {
            if let Some(reason) =
                serve_connection(stream, router, conn, limits, started, stop).await
            {
                metrics.closed(reason);
            }
            metrics.open.dec();
            registry
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .conns
                .remove(&id);
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    tasks.abort_all();
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    router: Router,
    conn: Arc<Conn>,
    limits: Limits,
    started: Instant,
    mut stop: watch::Receiver<bool>,
) -> Option<CloseReason> {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    let service_conn = conn.clone();
    let service = hyper::service::service_fn(move |request| {
        let busy = Busy::new(service_conn.clone(), started);
        let router = router.clone();
        async move {
            let response = router.oneshot(request).await;
            drop(busy);
            response
        }
    });
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let mut stopping = false;
    loop {
        let idle_for = Duration::from_millis(
            (started.elapsed().as_millis() as u64)
                .saturating_sub(conn.last_active_ms.load(Ordering::Acquire)),
        );
        let idle_left = limits.idle_timeout.saturating_sub(idle_for);
        tokio::select! {
            done = connection.as_mut() => {
                return match done {
                    Err(e) if e.is_timeout() => Some(CloseReason::HeaderTimeout),
                    _ => None,
                };
            }
            // Counted by the accept loop, which evicted it.
            () = conn.evict.notified() => return None,
            changed = stop.changed(), if !stopping => {
                if changed.is_err() || *stop.borrow() {
                    stopping = true;
                    connection.as_mut().graceful_shutdown();
                }
            }
            () = tokio::time::sleep(idle_left.max(Duration::from_millis(10))) => {
                let busy = conn.busy.load(Ordering::Acquire) > 0;
                let idle_for = Duration::from_millis(
                    (started.elapsed().as_millis() as u64)
                        .saturating_sub(conn.last_active_ms.load(Ordering::Acquire)),
                );
                if !busy && idle_for >= limits.idle_timeout {
                    return Some(CloseReason::IdleTimeout);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use std::io::{Read as _, Write as _};

    const LIMITS: Limits = Limits {
        max_connections: 8,
        header_read_timeout: Duration::from_millis(600),
        idle_timeout: Duration::from_millis(900),
    };

    async fn start(
        limits: Limits,
        metrics: &ConnectionMetrics,
    ) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = Router::new().route("/status", get(|| async { "ok" }));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(serve(listener, router, limits, metrics.clone(), async {
            let _ = rx.await;
        }));
        (addr, tx)
    }

    fn closed(metrics: &ConnectionMetrics, reason: CloseReason) -> u64 {
        metrics.closed.with_label_values(&[reason.as_str()]).get()
    }

    /// A blocking GET /status; the body or the error.
    fn get_status(addr: std::net::SocketAddr) -> Result<String, String> {
        let mut s = std::net::TcpStream::connect(addr).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.write_all(b"GET /status HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .map_err(|e| e.to_string())?;
        let mut out = String::new();
        s.read_to_string(&mut out).map_err(|e| e.to_string())?;
        Ok(out)
    }

    /// Connections that sent half a request and stall.
    fn half_sent(addr: std::net::SocketAddr, n: usize) -> Vec<std::net::TcpStream> {
        (0..n)
            .map(|_| {
                let mut s = std::net::TcpStream::connect(addr).unwrap();
                s.write_all(b"GET /status HTTP/1.1\r\nhost: x\r\n").unwrap();
                s
            })
            .collect()
    }

    /// Whether the server closed `s` (EOF or reset) within `within`.
    fn closed_by_server(s: &mut std::net::TcpStream, within: Duration) -> bool {
        s.set_read_timeout(Some(within)).unwrap();
        let mut b = [0u8; 64];
        match s.read(&mut b) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_flood_of_half_sent_requests_never_locks_out_a_new_client() {
        let metrics = ConnectionMetrics::unregistered();
        let (addr, _stop) = start(LIMITS, &metrics).await;
        let m = metrics.clone();
        tokio::task::spawn_blocking(move || {
            let flood = half_sent(addr, 100);
            // Far more stalled connections than the cap; a new client is still answered,
            // quickly, and the server holds no more than the cap.
            let t = Instant::now();
            let body = get_status(addr).expect("answered during the flood");
            assert!(body.ends_with("ok"), "{body}");
            assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
            let mut flood = flood;
            let still_open = flood
                .iter_mut()
                .filter_map(|s| (!closed_by_server(s, Duration::from_millis(50))).then_some(()))
                .count();
            assert!(still_open <= LIMITS.max_connections, "{still_open} open");
            // Every connection beyond the cap closed an older one, and the metric says so.
            let evicted = closed(&m, CloseReason::EvictedAtCap);
            assert!(
                evicted >= (101 - LIMITS.max_connections) as u64,
                "{evicted} evicted at the cap"
            );
            assert!(
                m.open.get() <= i64::try_from(LIMITS.max_connections).unwrap(),
                "{}",
                m.open.get()
            );
        })
        .await
        .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stalled_and_idle_connections_are_closed() {
        let limits = Limits {
            max_connections: 64,
            ..LIMITS
        };
        let metrics = ConnectionMetrics::unregistered();
        let (addr, _stop) = start(limits, &metrics).await;
        let m = metrics.clone();
        tokio::task::spawn_blocking(move || {
            // Headers never finished: closed by the header-read timeout.
            let mut stalled = half_sent(addr, 1).remove(0);
            let t = Instant::now();
            assert!(closed_by_server(&mut stalled, Duration::from_secs(3)));
            assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
            // Nothing sent at all: closed too (hyper's header timer runs from the start).
            let mut silent = std::net::TcpStream::connect(addr).unwrap();
            let t = Instant::now();
            assert!(closed_by_server(&mut silent, Duration::from_secs(3)));
            assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
            // A request answered, then nothing: closed by the idle timeout.
            let mut idle = std::net::TcpStream::connect(addr).unwrap();
            idle.write_all(b"GET /status HTTP/1.1\r\nhost: x\r\n\r\n")
                .unwrap();
            let mut answer = [0u8; 256];
            assert!(idle.read(&mut answer).unwrap() > 0);
            let t = Instant::now();
            assert!(closed_by_server(&mut idle, Duration::from_secs(3)));
            assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
            // hyper's header timer also runs while a connection waits for its next request:
            // each of the three went by the header-read timeout, the shorter one here.
            std::thread::sleep(Duration::from_millis(100));
            assert_eq!(closed(&m, CloseReason::HeaderTimeout), 3);
            assert_eq!(closed(&m, CloseReason::IdleTimeout), 0);
            assert_eq!(closed(&m, CloseReason::EvictedAtCap), 0);
            assert_eq!(m.open.get(), 0);
        })
        .await
        .unwrap();
        // With the idle timeout the shorter one, a silent connection goes by it.
        let limits = Limits {
            max_connections: 64,
            header_read_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_millis(300),
        };
        let metrics = ConnectionMetrics::unregistered();
        let (addr, _stop) = start(limits, &metrics).await;
        let m = metrics.clone();
        tokio::task::spawn_blocking(move || {
            let mut silent = std::net::TcpStream::connect(addr).unwrap();
            let t = Instant::now();
            assert!(closed_by_server(&mut silent, Duration::from_secs(3)));
            assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
            std::thread::sleep(Duration::from_millis(100));
            assert_eq!(closed(&m, CloseReason::IdleTimeout), 1);
            assert_eq!(closed(&m, CloseReason::HeaderTimeout), 0);
        })
        .await
        .unwrap();
    }
}
