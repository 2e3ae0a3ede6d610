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

/// The local `errno` behind an error, if any: the chain of sources is searched for an
/// `io::Error` with one of [`LOCAL_ERRNOS`].
pub fn local_cause(e: &(dyn std::error::Error + 'static)) -> Option<std::io::Error> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if let Some(code) = io.raw_os_error().filter(|c| LOCAL_ERRNOS.contains(c)) {
                return Some(std::io::Error::from_raw_os_error(code));
            }
        }
        cur = err.source();
    }
    None
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
            Err(e) => match local_cause(&e) {
                Some(local) => Probe::Unknown(format!(
                    "probe not made, local failure on this node: {local}"
                )),
                None => Probe::Unhealthy(describe(&e)),
            },
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

#[cfg(test)]
mod tests {
    use super::*;

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
            drop(hold);
            println!("probe result: {probe:?}");
            assert!(
                matches!(probe, Probe::Unknown(ref why) if why.contains("local")),
                "{probe:?}"
            );
        });
    }
}
