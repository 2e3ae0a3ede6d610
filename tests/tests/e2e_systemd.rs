//! The daemon as `deploy/systemd/canary.service` runs it: with only the unit's capabilities
//! (`CapabilityBoundingSet`, via `setpriv`, plus `NoNewPrivileges`), it tells systemd it is ready
//! (`READY=1` on `NOTIFY_SOCKET`, a datagram socket the test binds) only once the first poll has
//! programmed the maps, and each capability of the unit is one it cannot start without.

mod e2e_support;

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use canary_lab::bins;
use canary_lab::deployment::{self, DeploymentSpec};
use canary_lab::lab::{Lab, LabProcess, LabSpec, SERVICE_PORT};
use canary_lab::server::ModelServer;
use canary_tests::deploy::deploy_dir;
use canary_userspace::api::Status;
use canary_userspace::config::raw::RawBackend;

/// An address of the lab's subnet that no node holds: a backend there never answers, so its
/// health probe lasts the whole probe timeout and the first poll cannot finish early.
const SILENT_BACKEND: &str = "198.18.0.200";

/// The unit's `CapabilityBoundingSet`, as `setpriv` names them (`bpf`, `net_admin`, ...).
fn unit_capabilities() -> Vec<String> {
    let unit = std::fs::read_to_string(deploy_dir().join("systemd/canary.service")).unwrap();
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("the unit sets CapabilityBoundingSet");
    line.split_whitespace()
        .map(|c| {
            c.strip_prefix("CAP_")
                .unwrap_or_else(|| panic!("{c}: not a CAP_ name"))
                .to_ascii_lowercase()
        })
        .collect()
}

/// A lab with one stable and one canary model server, and a daemon config that also lists a
/// stable backend at [`SILENT_BACKEND`].
struct Setup {
    lab: Lab,
    _models: Vec<LabProcess>,
    canary_bin: PathBuf,
    config: PathBuf,
}

fn setup(prefix: char) -> Setup {
    e2e_support::require_root();
    let mut spec = DeploymentSpec::new(LabSpec::unique_tag(prefix));
    spec.lab.clients = 1;
    spec.lab.stable = 1;
    spec.lab.canary = 1;
    let canary_bin = bins::locate("canary", "canary-userspace").unwrap();
    let lab = Lab::up(&spec.lab).unwrap_or_else(|e| panic!("lab: {e}"));
    let models = lab
        .start_models(ModelServer::CanaryModel, |_| Vec::new())
        .unwrap_or_else(|e| panic!("models: {e}"));
    let mut raw = deployment::config(&spec, &lab, None).unwrap();
    raw.services[0].backends.push(RawBackend {
        name: "silent".into(),
        group: "stable".into(),
        address: SILENT_BACKEND.into(),
        mac: "02:00:00:00:00:c8".into(),
        health_url: format!("http://{SILENT_BACKEND}:{SERVICE_PORT}/healthz"),
        metrics_url: format!("http://{SILENT_BACKEND}:{SERVICE_PORT}/metrics"),
    });
    let text = deployment::toml_text(&raw).unwrap();
    assert!(text.contains("name = \"silent\""));
    let config = lab.state_dir().join("canary.toml");
    std::fs::write(&config, text).unwrap();
    Setup {
        lab,
        _models: models,
        canary_bin,
        config,
    }
}

impl Setup {
    fn lb(&self) -> String {
        self.lab.load_balancer().unwrap().netns.clone()
    }

    /// `canary run` in the load balancer with only `caps` and no new privileges, its
    /// `NOTIFY_SOCKET` at `socket`.
    fn spawn_daemon(&self, caps: &[String], socket: &Path) -> LabProcess {
        let bounding = std::iter::once("-all".to_string())
            .chain(caps.iter().map(|c| format!("+{c}")))
            .collect::<Vec<_>>()
            .join(",");
        let argv = [
            "setpriv".to_string(),
            "--bounding-set".into(),
            bounding,
            "--inh-caps".into(),
            "-all".into(),
            "--no-new-privs".into(),
            "--".into(),
            self.canary_bin.to_string_lossy().into_owned(),
            "run".into(),
            "--config".into(),
            self.config.to_string_lossy().into_owned(),
        ];
        self.lab
            .spawn_in_env(
                &self.lb(),
                &argv,
                &[
                    ("NOTIFY_SOCKET", &socket.to_string_lossy()),
                    ("RUST_LOG", "info"),
                ],
            )
            .unwrap_or_else(|e| panic!("spawn the daemon: {e}"))
    }

    fn status(&self) -> Status {
        let out = self
            .lab
            .output_in(
                &self.lb(),
                &[
                    self.canary_bin.to_string_lossy().as_ref(),
                    "status",
                    "--json",
                    "--config",
                    self.config.to_string_lossy().as_ref(),
                ],
            )
            .unwrap();
        assert!(
            out.status.success(),
            "canary status: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn notify_socket(&self, name: &str) -> (UnixDatagram, PathBuf) {
        let path = self.lab.state_dir().join(name);
        let _ = std::fs::remove_file(&path);
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        (socket, path)
    }
}

/// The next notification within `timeout`, if any.
fn receive(socket: &UnixDatagram, timeout: Duration) -> Option<String> {
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        if let Ok(n) = socket.recv(&mut buf) {
            return Some(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    None
}

#[test]
fn ready_only_once_the_maps_are_programmed_with_the_units_capabilities() {
    let s = setup('n');
    let caps = unit_capabilities();
    println!("capabilities: {caps:?}");
    let (socket, path) = s.notify_socket("notify.sock");
    let started = Instant::now();
    let mut daemon = s.spawn_daemon(&caps, &path);

    let message = receive(&socket, Duration::from_secs(30)).unwrap_or_else(|| {
        panic!(
            "no notification within 30 s; daemon log:\n{}",
            daemon.log_tail(30)
        )
    });
    // Read at once: the status the daemon had when it said it was ready.
    let status = s.status();
    let waited = started.elapsed();
    println!("{message:?} after {waited:.2?}");
    assert_eq!(message.trim(), "READY=1");
    let service = status.services.first().expect("a service in the status");
    assert_eq!(service.name, "sentiment", "{status:#?}");
    let backends = &service.backends;
    assert_eq!(backends.len(), 3);
    for b in backends {
        assert_ne!(
            b.down_reason.as_deref(),
            Some("not probed yet"),
            "READY=1 before the first poll programmed the maps: {b:?}"
        );
        let expect_up = b.name != "silent";
        assert_eq!(b.up, expect_up, "{b:?}");
    }
    // The maps are programmed: a new connection to the VIP is answered by the stable backend.
    let client = &s.lab.clients()[0].netns;
    let url = format!("http://{}:{SERVICE_PORT}/healthz", s.lab.vip());
    let out = s
        .lab
        .output_in(
            client,
            &[
                "curl",
                "-sS",
                "-m",
                "5",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                &url,
            ],
        )
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "200",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(daemon.is_running());

    // Nothing else until it stops; then STOPPING=1.
    assert_eq!(receive(&socket, Duration::from_secs(2)), None);
    daemon.signal(libc::SIGTERM);
    let stopping = receive(&socket, Duration::from_secs(10));
    assert_eq!(stopping.as_deref().map(str::trim), Some("STOPPING=1"));
    let status = daemon.terminate(Duration::from_secs(10)).unwrap();
    assert!(status.success(), "{status}\n{}", daemon.log_tail(20));
    drop(socket);
    let _ = std::fs::remove_file(&path);
}

#[test]
fn each_capability_of_the_unit_is_needed() {
    let s = setup('q');
    let caps = unit_capabilities();
    let mut needed = Vec::new();
    for (i, dropped) in caps.iter().enumerate() {
        let rest: Vec<String> = caps.iter().filter(|c| *c != dropped).cloned().collect();
        let (socket, path) = s.notify_socket(&format!("notify-{i}.sock"));
        let mut daemon = s.spawn_daemon(&rest, &path);
        let message = receive(&socket, Duration::from_secs(15));
        let log = daemon.log_tail(5);
        daemon.terminate(Duration::from_secs(10));
        // Whatever a partial start left behind goes before the next try.
        let _ = s.lab.output_in(
            &s.lb(),
            &[
                s.canary_bin.to_string_lossy().as_ref(),
                "detach",
                "--config",
                s.config.to_string_lossy().as_ref(),
            ],
        );
        println!("without {dropped}: {message:?}\n{log}\n");
        if message.as_deref().map(str::trim) != Some("READY=1") {
            needed.push(dropped.clone());
        }
    }
    assert_eq!(
        needed, caps,
        "the unit grants capabilities the daemon does not need"
    );
}
