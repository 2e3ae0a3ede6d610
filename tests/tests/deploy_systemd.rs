//! `deploy/systemd/canary.service` passes `systemd-analyze verify` (with `ExecStart` pointing at
//! the built binary: verify checks that it exists), with no warning, and says what the README
//! promises. `e2e_systemd` runs the daemon the way the unit does.

use std::path::{Path, PathBuf};
use std::process::Command;

use canary_lab::bins;
use canary_tests::deploy::deploy_dir;

const INSTALLED_BINARY: &str = "/usr/local/bin/canary";

fn unit_text() -> String {
    std::fs::read_to_string(deploy_dir().join("systemd/canary.service")).unwrap()
}

/// The unit, with the installed binary's path replaced by `binary`, in a fresh directory.
fn unit_copy(text: &str, binary: &Path, dir_name: &str) -> PathBuf {
    assert!(text.contains(INSTALLED_BINARY));
    let dir = std::env::temp_dir().join(format!("{dir_name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("canary.service");
    std::fs::write(
        &path,
        text.replace(INSTALLED_BINARY, &binary.to_string_lossy()),
    )
    .unwrap();
    path
}

/// `systemd-analyze verify UNIT`: exit status and everything it printed.
fn verify(unit: &Path) -> (bool, String) {
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(unit)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run systemd-analyze ({e}): run `cargo xtask setup` as root, which installs Debian's systemd package")
        });
    let _ = std::fs::remove_dir_all(unit.parent().unwrap());
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn unit_passes_systemd_analyze_verify_without_warnings() {
    let binary = bins::locate("canary", "canary-userspace").unwrap_or_else(|e| panic!("{e}"));
    let (ok, output) = verify(&unit_copy(&unit_text(), &binary, "canary-unit"));
    assert!(ok, "systemd-analyze verify failed:\n{output}");
    assert!(
        output.trim().is_empty(),
        "systemd-analyze verify warns:\n{output}"
    );
}

#[test]
fn verify_catches_a_misspelt_setting_and_a_missing_binary() {
    let binary = bins::locate("canary", "canary-userspace").unwrap_or_else(|e| panic!("{e}"));
    let misspelt = unit_text().replace("ProtectSystem=", "ProtectSystm=");
    let (_, output) = verify(&unit_copy(&misspelt, &binary, "canary-unit-misspelt"));
    assert!(output.contains("ProtectSystm"), "{output}");
    let (ok, output) = verify(&unit_copy(
        &unit_text(),
        Path::new("/nonexistent/canary"),
        "canary-unit-missing",
    ));
    assert!(!ok, "{output}");
}

#[test]
fn unit_runs_the_daemon_as_the_readme_says() {
    let unit = unit_text();
    let settings: Vec<(&str, &str)> = unit
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .collect();
    let get = |key: &str| -> Vec<&str> {
        settings
            .iter()
            .filter(|(k, _)| *k == key)
            .map(|(_, v)| *v)
            .collect()
    };
    assert_eq!(get("Type"), ["notify"]);
    assert_eq!(
        get("ExecStart"),
        ["/usr/local/bin/canary run --config /etc/canary/canary.toml"]
    );
    assert_eq!(get("ExecReload"), ["/bin/kill -HUP $MAINPID"]);
    assert_eq!(get("Restart"), ["on-failure"]);
    assert_eq!(get("StateDirectory"), ["canary"]);
    assert_eq!(get("NoNewPrivileges"), ["yes"]);
    assert_eq!(
        get("CapabilityBoundingSet"),
        ["CAP_BPF CAP_NET_ADMIN CAP_PERFMON"]
    );
    // The default state_dir is the unit's StateDirectory.
    let defaults = canary_userspace::config::Config::from_toml_str(
        "[dataplane]\ninterface = \"lo\"\n[[services]]\nname = \"s\"\nvip = \"198.18.0.100:80\"\n  [[services.backends]]\n  name = \"a\"\n  group = \"stable\"\n  address = \"198.18.0.11\"\n",
    )
    .unwrap();
    assert_eq!(
        defaults.dataplane.state_dir,
        Path::new("/var/lib/canary"),
        "StateDirectory=canary is /var/lib/canary"
    );
    assert!(defaults.dataplane.bpffs.starts_with("/sys/fs/bpf"));
}
