//! A real etcd server for tests, labs and demos: started on free ports (loopback, or an address
//! inside a lab namespace) with a temporary data directory, ready when its `/health` answers,
//! and stopped by PID when dropped, even when the test fails.
//!
//! etcd comes from Debian's `etcd-server` package (3.4), installed by `cargo xtask setup`.

use std::fs;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The etcd binary installed by `cargo xtask setup`.
pub const ETCD_BIN: &str = "/usr/bin/etcd";
/// How long a start may take before it is given up (etcd answers within about 2 s when idle).
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Starts retried with new ports when another process took a chosen one first.
const PORT_ATTEMPTS: u32 = 5;

/// Why an etcd could not be started or restarted.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// The binary is not installed.
    #[error("{ETCD_BIN} not found; install it with `cargo xtask setup` (Debian's etcd-server)")]
    NotInstalled,
    /// A file or directory operation failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// etcd exited before it answered.
    #[error("etcd exited ({status}) before it answered; its log ends with:\n{log_tail}")]
    Exited { status: String, log_tail: String },
    /// etcd did not answer in time.
    #[error("etcd did not answer /health within {timeout:?}; its log ends with:\n{log_tail}")]
    Timeout { timeout: Duration, log_tail: String },
}

/// Where and how to run etcd.
#[derive(Clone, Debug)]
pub struct EtcdOptions {
    /// Member name (also in the data directory's name).
    pub name: String,
    /// Address to listen on for clients and peers.
    pub address: IpAddr,
    /// Run inside this network namespace (`ip netns exec`); `None` = the caller's.
    pub netns: Option<String>,
    /// Client and peer ports; `None` = free ports picked on `address` (in the caller's
    /// namespace, so give both when `netns` is set).
    pub ports: Option<(u16, u16)>,
    /// Parent of the data directory; `None` = the system's temporary directory.
    pub parent_dir: Option<PathBuf>,
}

impl Default for EtcdOptions {
    fn default() -> Self {
        Self {
            name: "canary-test".into(),
            address: IpAddr::V4(Ipv4Addr::LOCALHOST),
            netns: None,
            ports: None,
            parent_dir: None,
        }
    }
}

/// A running etcd, stopped (SIGKILL by PID, reaped) and its data directory removed on drop.
#[derive(Debug)]
pub struct Etcd {
    options: EtcdOptions,
    child: Option<Child>,
    client: SocketAddr,
    peer: SocketAddr,
    data_dir: PathBuf,
    log: PathBuf,
    /// Holds `data_dir` and `log`; removed on drop (declared last: after the server is killed).
    dir: ScratchDir,
}

impl Etcd {
    /// A single-member etcd on loopback with free ports and a fresh data directory.
    pub fn start() -> Result<Self, EtcdError> {
        Self::start_with(EtcdOptions::default())
    }

    pub fn start_with(options: EtcdOptions) -> Result<Self, EtcdError> {
        if !Path::new(ETCD_BIN).exists() {
            return Err(EtcdError::NotInstalled);
        }
        let dir = ScratchDir::create(&options)?;
        let (client_port, peer_port) = match options.ports {
            Some(ports) => ports,
            None => (free_port(options.address)?, free_port(options.address)?),
        };
        let mut etcd = Etcd {
            client: SocketAddr::new(options.address, client_port),
            peer: SocketAddr::new(options.address, peer_port),
            data_dir: dir.0.join("data"),
            log: dir.0.join("etcd.log"),
            dir,
            options,
            child: None,
        };
        let mut attempt = 1;
        loop {
            match etcd.spawn_and_wait() {
                Ok(()) => return Ok(etcd),
                // Another process took a port between the pick and the bind: new ports.
                Err(EtcdError::Exited { log_tail, .. })
                    if log_tail.contains("address already in use")
                        && etcd.options.ports.is_none()
                        && attempt < PORT_ATTEMPTS =>
                {
                    attempt += 1;
                    let _ = fs::remove_dir_all(&etcd.data_dir);
                    etcd.client.set_port(free_port(etcd.options.address)?);
                    etcd.peer.set_port(free_port(etcd.options.address)?);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The client URL, for example `http://127.0.0.1:40123`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.client)
    }

    pub fn client_addr(&self) -> SocketAddr {
        self.client
    }

    /// PID of the running server; `None` after [`Etcd::stop`].
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The scratch directory holding the data directory and the log (removed on drop).
    pub fn dir(&self) -> &Path {
        &self.dir.0
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last `lines` lines of etcd's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Stops the server (SIGKILL, as a crash would) and keeps its data for [`Etcd::restart`].
    pub fn stop(&mut self) {
        self.kill();
    }

    /// Starts it again on the same ports with the same data (after [`Etcd::stop`]).
    pub fn restart(&mut self) -> Result<(), EtcdError> {
        self.kill();
        self.spawn_and_wait()
    }

    /// SIGSTOP: the server stops answering but keeps its sockets (a hung store).
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// SIGCONT after [`Etcd::pause`].
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, sig: i32) {
        if let Some(child) = &self.child {
            if let Ok(pid) = i32::try_from(child.id()) {
                // SAFETY: kill(2) on the PID of our own unreaped child signals only that process.
                unsafe {
                    libc::kill(pid, sig);
                }
            }
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGKILL also ends a process stopped with SIGSTOP.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn spawn_and_wait(&mut self) -> Result<(), EtcdError> {
        let log = fs::File::create(&self.log).map_err(|source| EtcdError::Io {
            what: format!("create {}", self.log.display()),
            source,
        })?;
        let log_err = log.try_clone().map_err(|source| EtcdError::Io {
            what: "duplicate the log file handle".into(),
            source,
        })?;
        let client_url = format!("http://{}", self.client);
        let peer_url = format!("http://{}", self.peer);
        let mut command = match &self.options.netns {
            Some(netns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", netns, ETCD_BIN]);
                c
            }
            None => Command::new(ETCD_BIN),
        };
        command
            .arg("--name")
            .arg(&self.options.name)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .arg("--initial-cluster")
            .arg(format!("{}={peer_url}", self.options.name))
            // Short election timers: a single member elects itself at once.
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .env_remove("ETCD_UNSUPPORTED_ARCH")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        let child = command.spawn().map_err(|source| EtcdError::Io {
            what: format!("start {ETCD_BIN}"),
            source,
        })?;
        self.child = Some(child);
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> Result<(), EtcdError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(EtcdError::Exited {
                        status: status.to_string(),
                        log_tail: self.log_tail(20),
                    });
                }
            }
            if self.options.netns.is_none() && healthy(self.client) {
                return Ok(());
            }
            if self.options.netns.is_some()
                && self
                    .log_tail(200)
                    .contains("ready to serve client requests")
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(EtcdError::Timeout {
                    timeout: READY_TIMEOUT,
                    log_tail: self.log_tail(20),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A directory removed (with its contents) on drop.
#[derive(Debug)]
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn create(options: &EtcdOptions) -> Result<Self, EtcdError> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let parent = options
            .parent_dir
            .clone()
            .unwrap_or_else(std::env::temp_dir);
        let dir = parent.join(format!(
            "canary-etcd-{}-{}-{}-{nanos}",
            options.name,
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&dir).map_err(|source| EtcdError::Io {
            what: format!("create {}", dir.display()),
            source,
        })?;
        Ok(Self(dir))
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// `GET /health` answers `"health":"true"` (etcd 3.4: a leader is elected and the store serves).
fn healthy(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let request = format!("GET /health HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.starts_with("HTTP/1.") && response.contains("\"health\":\"true\"")
}

/// A port that was free a moment ago (the kernel's pick for port 0).
fn free_port(address: IpAddr) -> Result<u16, EtcdError> {
    let listener =
        TcpListener::bind(SocketAddr::new(address, 0)).map_err(|source| EtcdError::Io {
            what: format!("find a free port on {address}"),
            source,
        })?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|source| EtcdError::Io {
            what: "read the bound port".into(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_answers_and_is_gone_after_drop() {
        assert!(
            Path::new(ETCD_BIN).exists(),
            "{ETCD_BIN} missing: run `cargo xtask setup`"
        );
        let etcd = Etcd::start().expect("etcd starts");
        let pid = etcd.pid().expect("running");
        let dir = etcd.dir().to_path_buf();
        assert!(healthy(etcd.client_addr()), "answers /health");
        assert!(Path::new(&format!("/proc/{pid}")).exists());
        drop(etcd);
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "etcd {pid} still running after drop"
        );
        assert!(
            !dir.exists(),
            "data directory {} left behind",
            dir.display()
        );
    }

    #[test]
    fn restart_keeps_ports_and_data() {
        let mut etcd = Etcd::start().expect("etcd starts");
        let endpoint = etcd.endpoint();
        etcd.stop();
        assert!(etcd.pid().is_none());
        assert!(
            etcd.data_dir().join("member/snap/db").exists(),
            "the data directory must survive a stop"
        );
        assert!(!healthy(etcd.client_addr()), "stopped etcd still answers");
        etcd.restart().expect("restarts");
        assert_eq!(etcd.endpoint(), endpoint);
        assert!(healthy(etcd.client_addr()));
    }

    #[test]
    fn paused_etcd_does_not_answer_until_resumed() {
        let etcd = Etcd::start().expect("etcd starts");
        etcd.pause();
        assert!(!healthy(etcd.client_addr()), "a stopped process answered");
        etcd.resume();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !healthy(etcd.client_addr()) {
            assert!(Instant::now() < deadline, "no answer after SIGCONT");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
