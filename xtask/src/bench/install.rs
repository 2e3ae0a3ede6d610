//! What the benchmarks need from outside the workspace, installed only when missing: Debian
//! packages (peers and tools) and a Python virtual environment for the application router.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// (executable, Debian package providing it).
pub(super) const DEBIAN: [(&str, &str); 5] = [
    ("/usr/sbin/nginx", "nginx-light"),
    (
        "/usr/lib/nginx/modules/ngx_stream_module.so",
        "libnginx-mod-stream",
    ),
    ("/usr/sbin/haproxy", "haproxy"),
    ("/usr/bin/wrk", "wrk"),
    ("/usr/sbin/bpftool", "bpftool"),
];

/// `PyPI` packages of the application router.
/// `uvicorn[standard]` (uvloop, httptools) as the `FastAPI` documentation recommends for serving.
pub(super) const PYPI: [&str; 3] = ["fastapi", "uvicorn[standard]", "httpx"];

/// Installs the Debian packages whose file is missing.
pub(super) fn ensure_debian() -> Result<()> {
    let missing: Vec<&str> = DEBIAN
        .iter()
        .filter(|(path, _)| !Path::new(path).exists())
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    println!("bench: installing Debian packages {}", missing.join(" "));
    let update = Command::new("apt-get")
        .args(["update", "-qq"])
        .status()
        .context("cannot run apt-get (Debian is required)")?;
    if !update.success() {
        bail!("apt-get update failed ({update})");
    }
    let status = Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("cannot run apt-get")?;
    if !status.success() {
        bail!("apt-get install {} failed ({status})", missing.join(" "));
    }
    for (path, package) in DEBIAN {
        if !Path::new(path).exists() {
            bail!("{path} is still missing after installing {package}");
        }
    }
    Ok(())
}

/// `target/bench/venv` with the router's packages; returns its directory.
pub(super) fn ensure_venv(bench_dir: &Path) -> Result<PathBuf> {
    let venv = bench_dir.join("venv");
    let python = venv.join("bin/python");
    let imports = || {
        Command::new(&python)
            .args(["-c", "import fastapi, uvicorn, httpx, uvloop, httptools"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if imports() {
        return Ok(venv);
    }
    println!("bench: creating {} with {}", venv.display(), PYPI.join(" "));
    let status = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .context("cannot run python3 (install python3 and python3-venv)")?;
    if !status.success() {
        bail!(
            "python3 -m venv {} failed ({status}); install python3-venv",
            venv.display()
        );
    }
    let status = Command::new(venv.join("bin/pip"))
        .args(["install", "-q", "--disable-pip-version-check"])
        .args(PYPI)
        .status()
        .context("cannot run pip in the venv")?;
    if !status.success() {
        bail!("pip install {} failed ({status})", PYPI.join(" "));
    }
    if !imports() {
        bail!(
            "the venv at {} still cannot import {}",
            venv.display(),
            PYPI.join(", ")
        );
    }
    Ok(venv)
}
