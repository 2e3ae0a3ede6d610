//! `cargo xtask setup`: makes sure everything needed to build the eBPF object is installed, and
//! the `FastAPI` example's virtualenv.
//!
//! Idempotent and cheap when nothing is missing: presence is checked with `dpkg-query`, file
//! tests and `bpf-linker --version` (each a few milliseconds); package managers and rustup are
//! only run for what is missing. Installing Debian packages needs root; everything else is
//! installed for the current user.

use std::{
    env, fmt, fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{bail, Context, Result};
use canary_lab::fastapi;

/// Debian packages: LLVM 22 to build `bpf-linker` against, and the tools the labs use.
const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "iproute2",
    "ethtool",
    "curl",
];
/// Real components the tests start: Prometheus and `promtool` (the alerting rules and the
/// dashboard's queries, against a daemon in the lab), `systemd-analyze` (the unit files) and
/// tmux (`canary status --watch` in a pseudo-terminal).
const TEST_TOOL_PACKAGES: &[&str] = &["prometheus", "systemd", "tmux"];
/// Debian's Python with `venv` and `ensurepip`, for when the `python3` on PATH cannot make a
/// virtualenv.
const APT_PYTHON_PACKAGES: &[&str] = &["python3", "python3-venv"];
const DEBIAN_PYTHON: &str = "/usr/bin/python3";
/// The oldest Python the `FastAPI` example's pinned packages support.
const MIN_PYTHON: (u32, u32) = (3, 11);
/// Debian's packaged compiler with a prebuilt `core` for the BPF targets (route 2).
const DEBIAN_RUSTC_PACKAGES: &[&str] = &["rustc-web", "libstd-rust-web-dev-bpf"];
const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
/// LLVM that `bpf-linker` is built against; it must match the compilers' LLVM (22).
pub const LLVM_BIN: &str = "/usr/lib/llvm-22/bin";
const BPF_LINKER_VERSION: &str = "0.13.0";
const NIGHTLY: &str = "nightly";
/// Forces a compiler route (`rustup-nightly` or `debian-rustc`) instead of the automatic choice.
pub const ROUTE_ENV: &str = "CANARY_EBPF_COMPILER";

/// How the eBPF crate is compiled for `bpfel-unknown-none`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompilerRoute {
    /// rustup's nightly toolchain with `rust-src`: `cargo +nightly build -Z build-std=core`.
    RustupNightly,
    /// Debian's `rustc-web` with a prebuilt BPF `core`: `RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1`.
    DebianRustc,
}

impl CompilerRoute {
    fn as_str(self) -> &'static str {
        match self {
            CompilerRoute::RustupNightly => "rustup-nightly",
            CompilerRoute::DebianRustc => "debian-rustc",
        }
    }
}

impl fmt::Display for CompilerRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CompilerRoute::RustupNightly => "rustup nightly + rust-src",
            CompilerRoute::DebianRustc => "Debian rustc-web (RUSTC_BOOTSTRAP)",
        })
    }
}

/// What `build-ebpf` needs to know about the installed toolchain.
#[derive(Clone, Debug)]
pub struct Toolchain {
    pub route: CompilerRoute,
    /// Directory holding `bpf-linker` (put first on PATH for the build).
    pub linker_dir: PathBuf,
}

/// Checks everything and installs what is missing; prints each action and the total time.
pub fn ensure() -> Result<Toolchain> {
    let started = Instant::now();
    let mut setup = Setup {
        is_root: is_root(),
        apt_updated: false,
        actions: 0,
    };

    if !setup.is_root {
        check_without_root()?;
    }
    setup.ensure_apt_packages(APT_PACKAGES)?;
    setup.ensure_cluster_store()?;
    let route = setup.ensure_compiler()?;
    let linker_dir = setup.ensure_bpf_linker()?;
    setup.ensure_test_tools()?;
    record_route(route);
    setup.ensure_fastapi_venv()?;

    let elapsed = started.elapsed().as_secs_f64();
    if setup.actions == 0 {
        println!("setup: everything present (compiler: {route}, bpf-linker {BPF_LINKER_VERSION}); nothing to do ({elapsed:.2} s)");
    } else {
        println!(
            "setup: done, {} step(s) (compiler: {route}) in {elapsed:.1} s",
            setup.actions
        );
    }
    Ok(Toolchain { route, linker_dir })
}

struct Setup {
    is_root: bool,
    apt_updated: bool,
    actions: u32,
}

impl Setup {
    fn ensure_apt_packages(&mut self, packages: &[&str]) -> Result<()> {
        let missing = missing_apt_packages(packages)?;
        if missing.is_empty() {
            return Ok(());
        }
        self.require_root_for(&missing)?;
        self.apt_install(&missing)
    }

    fn require_root_for(&self, packages: &[String]) -> Result<()> {
        if self.is_root {
            return Ok(());
        }
        bail!(
            "missing Debian packages: {list}. Install them as root: \
             `sudo apt-get install -y {list}` (or run `sudo -E cargo xtask setup`)",
            list = packages.join(" ")
        )
    }

    fn apt_install(&mut self, packages: &[String]) -> Result<()> {
        if !self.apt_updated {
            step("apt-get update");
            run(Command::new("apt-get").args(["update", "-q"]))?;
            self.apt_updated = true;
        }
        step(&format!("apt-get install {}", packages.join(" ")));
        run(Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
        self.actions += 1;
        Ok(())
    }

    /// Prometheus, promtool and systemd-analyze for the tests. Without root this only says
    /// what is missing: building does not need them.
    fn ensure_test_tools(&mut self) -> Result<()> {
        let missing = missing_apt_packages(TEST_TOOL_PACKAGES)?;
        if missing.is_empty() {
            return Ok(());
        }
        if !self.is_root {
            let list = missing.join(" ");
            println!(
                "setup: the tests need Debian packages {list}: `sudo apt-get install -y {list}` \
                 (or run `sudo -E cargo xtask setup`)"
            );
            return Ok(());
        }
        self.apt_install(&missing)
    }

    /// Route 1 when rustup has (or can get) nightly with rust-src, else route 2.
    fn ensure_compiler(&mut self) -> Result<CompilerRoute> {
        match env::var(ROUTE_ENV).ok().as_deref() {
            None | Some("") => {}
            Some("rustup-nightly") if nightly_has_rust_src() => {
                return Ok(CompilerRoute::RustupNightly);
            }
            Some("rustup-nightly") => bail!(
                "{ROUTE_ENV}=rustup-nightly but rustup's nightly with rust-src is missing: \
                 `rustup toolchain install nightly --component rust-src`"
            ),
            Some("debian-rustc") => {
                let missing = missing_apt_packages(DEBIAN_RUSTC_PACKAGES)?;
                if !missing.is_empty() {
                    self.require_root_for(&missing)?;
                    self.apt_install(&missing)?;
                }
                return Ok(CompilerRoute::DebianRustc);
            }
            Some(other) => {
                bail!("{ROUTE_ENV}={other} is not a route: use rustup-nightly or debian-rustc")
            }
        }
        if nightly_has_rust_src() {
            return Ok(CompilerRoute::RustupNightly);
        }
        if debian_rustc_present()? {
            return Ok(CompilerRoute::DebianRustc);
        }
        if find_in_path("rustup").is_some() {
            step("rustup toolchain install nightly --component rust-src");
            let installed = Command::new("rustup")
                .args(["toolchain", "install", NIGHTLY, "--profile", "minimal"])
                .args(["--component", "rust-src"])
                .status()
                .is_ok_and(|s| s.success());
            self.actions += 1;
            if installed && nightly_has_rust_src() {
                return Ok(CompilerRoute::RustupNightly);
            }
            println!("setup: rustup nightly + rust-src unavailable; using Debian's rustc-web");
        }
        if !self.is_root {
            bail!(
                "no compiler for bpfel-unknown-none: neither rustup's nightly with rust-src \
                 (`rustup toolchain install nightly --component rust-src`) nor Debian's \
                 packaged one is installed. Install as root: \
                 `sudo apt-get install -y {}` (or run `sudo -E cargo xtask setup`)",
                DEBIAN_RUSTC_PACKAGES.join(" ")
            );
        }
        let missing = missing_apt_packages(DEBIAN_RUSTC_PACKAGES)?;
        self.apt_install(&missing)?;
        if !debian_rustc_present()? {
            bail!(
                "installed {} but {DEBIAN_RUSTC} is still missing; check the apt output above",
                DEBIAN_RUSTC_PACKAGES.join(" ")
            );
        }
        Ok(CompilerRoute::DebianRustc)
    }

    /// `bpf-linker` 0.13 built against LLVM 22; returns the directory that holds it.
    fn ensure_bpf_linker(&mut self) -> Result<PathBuf> {
        if let Some(dir) = bpf_linker_dir() {
            return Ok(dir);
        }
        let cargo = find_cargo().context(
            "bpf-linker is missing and cargo was not found to install it: put cargo on PATH \
             (`. \"$HOME/.cargo/env\"`) or install Rust with rustup",
        )?;
        step(&format!(
            "cargo install bpf-linker@{BPF_LINKER_VERSION} --no-default-features --features llvm-22 (takes a few minutes)"
        ));
        let mut install = Command::new(cargo);
        install
            .args([
                "install",
                "--force",
                &format!("bpf-linker@{BPF_LINKER_VERSION}"),
                "--no-default-features",
                "--features",
                "llvm-22",
            ])
            .env("PATH", path_with(&[PathBuf::from(LLVM_BIN)]))
            // A compiler override meant for the eBPF build must not leak into this one.
            .env_remove("RUSTC")
            .env_remove("RUSTC_BOOTSTRAP");
        run(&mut install)?;
        self.actions += 1;
        bpf_linker_dir().with_context(|| {
            format!(
                "bpf-linker {BPF_LINKER_VERSION} is still not found after installing it; \
                 is {} on PATH?",
                cargo_home().join("bin").display()
            )
        })
    }
}

/// The `FastAPI` example's virtualenv (`examples/fastapi/.venv`), filled by pip from the Python
/// package index with the pinned `requirements.txt`. A no-op when the virtualenv holds a copy
/// identical to `requirements.txt` (written only after a successful install) and its interpreter
/// still exists.
impl Setup {
    fn ensure_fastapi_venv(&mut self) -> Result<()> {
        let requirements = fastapi::requirements();
        let wanted = fs::read(&requirements)
            .with_context(|| format!("cannot read {}", requirements.display()))?;
        let stamp = fastapi::requirements_stamp();
        if fastapi::venv_python().exists() && fs::read(&stamp).is_ok_and(|s| s == wanted) {
            return Ok(());
        }
        let python = self.python_with_venv()?;
        let venv = fastapi::venv_dir();
        step(&format!(
            "{} -m venv --clear {}",
            python.display(),
            venv.display()
        ));
        run(Command::new(&python)
            .args(["-m", "venv", "--clear"])
            .arg(&venv))?;
        step(&format!("pip install -r {}", requirements.display()));
        run(Command::new(fastapi::venv_python())
            .args(["-m", "pip", "install", "--quiet", "--no-input"])
            .args(["--disable-pip-version-check", "-r"])
            .arg(&requirements))?;
        fs::write(&stamp, &wanted).with_context(|| format!("cannot write {}", stamp.display()))?;
        self.actions += 1;
        Ok(())
    }

    /// The `python3` on PATH if it can make virtualenvs, else Debian's (installed if missing).
    fn python_with_venv(&mut self) -> Result<PathBuf> {
        if let Some(python) = find_in_path("python3").filter(|p| can_make_venvs(p)) {
            return Ok(python);
        }
        let missing = missing_apt_packages(APT_PYTHON_PACKAGES)?;
        if !missing.is_empty() {
            self.require_root_for(&missing)?;
            self.apt_install(&missing)?;
        }
        let python = PathBuf::from(DEBIAN_PYTHON);
        if !can_make_venvs(&python) {
            bail!(
                "no Python {}.{} or newer with the venv module: neither `python3` on PATH nor \
                 {DEBIAN_PYTHON} (from `apt-get install {}`) can create a virtualenv. Put such a \
                 python3 first on PATH and run `cargo xtask setup` again",
                MIN_PYTHON.0,
                MIN_PYTHON.1,
                APT_PYTHON_PACKAGES.join(" ")
            );
        }
        Ok(python)
    }
}

/// Whether `python` is recent enough and has `venv` and `ensurepip` (Debian ships `ensurepip` in
/// `python3-venv`, without which `python3 -m venv` fails).
fn can_make_venvs(python: &Path) -> bool {
    let check = format!(
        "import sys, venv, ensurepip; sys.exit(0 if sys.version_info >= {MIN_PYTHON:?} else 1)"
    );
    Command::new(python)
        .args(["-c", &check])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Not root: fail early, naming everything that only root can install.
fn check_without_root() -> Result<()> {
    let missing = missing_apt_packages(APT_PACKAGES)?;
    let no_compiler =
        !nightly_has_rust_src() && !debian_rustc_present()? && find_in_path("rustup").is_none();
    if missing.is_empty() && !no_compiler {
        return Ok(());
    }
    let mut lines = vec!["cannot set up without root; missing:".to_string()];
    if !missing.is_empty() {
        let list = missing.join(" ");
        lines.push(format!(
            "  - Debian packages {list}: `sudo apt-get install -y {list}`"
        ));
    }
    if no_compiler {
        lines.push(format!(
            "  - a compiler for bpfel-unknown-none: rustup's nightly with rust-src \
             (`rustup toolchain install nightly --component rust-src`, no root needed) or \
             `sudo apt-get install -y {}`",
            DEBIAN_RUSTC_PACKAGES.join(" ")
        ));
    }
    if bpf_linker_dir().is_none() {
        lines.push(format!(
            "  - bpf-linker {BPF_LINKER_VERSION} (installed by this command once the packages \
             above are there)"
        ));
    }
    lines.push(
        "or run the whole set-up as root: `sudo -E env PATH=\"$PATH\" cargo xtask setup`".into(),
    );
    bail!(lines.join("\n"))
}

fn step(what: &str) {
    println!("setup: {what}");
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Packages of `packages` that are not installed (one `dpkg-query` call).
fn missing_apt_packages(packages: &[&str]) -> Result<Vec<String>> {
    let output = Command::new("dpkg-query")
        .args(["-W", "-f", "${Package} ${db:Status-Abbrev}\\n"])
        .args(packages)
        .stderr(Stdio::null())
        .output()
        .context(
            "dpkg-query not found: `cargo xtask setup` supports Debian and Ubuntu; elsewhere \
             install LLVM 22 (with Polly), zstd and zlib headers, iproute2, ethtool and curl by hand",
        )?;
    let listing = String::from_utf8_lossy(&output.stdout);
    let installed: Vec<&str> = listing
        .lines()
        .filter_map(|line| {
            let (name, status) = line.split_once(' ')?;
            // The name may carry an architecture suffix (`zlib1g-dev:amd64`).
            status
                .starts_with("ii")
                .then(|| name.split(':').next().unwrap_or(name))
        })
        .collect();
    Ok(packages
        .iter()
        .filter(|p| !installed.contains(p))
        .map(ToString::to_string)
        .collect())
}

fn debian_rustc_present() -> Result<bool> {
    Ok(Path::new(DEBIAN_RUSTC).exists() && missing_apt_packages(DEBIAN_RUSTC_PACKAGES)?.is_empty())
}

fn home() -> PathBuf {
    env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from)
}

pub fn cargo_home() -> PathBuf {
    env::var_os("CARGO_HOME").map_or_else(|| home().join(".cargo"), PathBuf::from)
}

fn rustup_home() -> PathBuf {
    env::var_os("RUSTUP_HOME").map_or_else(|| home().join(".rustup"), PathBuf::from)
}

/// rust-src of the nightly toolchain, checked on disk (no rustup call).
fn nightly_has_rust_src() -> bool {
    let toolchain = format!("{NIGHTLY}-{}-unknown-linux-gnu", env::consts::ARCH);
    let toolchain = rustup_home().join("toolchains").join(toolchain);
    toolchain.join("bin/cargo").exists()
        && toolchain
            .join("lib/rustlib/src/rust/library/core/Cargo.toml")
            .exists()
}

/// Directory of a `bpf-linker` of the wanted version: on PATH or in cargo's bin directory.
fn bpf_linker_dir() -> Option<PathBuf> {
    let candidates = find_in_path("bpf-linker")
        .into_iter()
        .chain([cargo_home().join("bin/bpf-linker")]);
    for linker in candidates {
        let Ok(output) = Command::new(&linker).arg("--version").output() else {
            continue;
        };
        let version = String::from_utf8_lossy(&output.stdout);
        if output.status.success() && version.trim() == format!("bpf-linker {BPF_LINKER_VERSION}") {
            return linker.parent().map(Path::to_path_buf);
        }
    }
    None
}

/// The cargo running this command, else the one on PATH, else cargo's own bin directory.
fn find_cargo() -> Option<PathBuf> {
    env::var_os("CARGO")
        .map(PathBuf::from)
        .filter(|p| p.is_file())
        .or_else(|| find_in_path("cargo"))
        .or_else(|| Some(cargo_home().join("bin/cargo")).filter(|p| p.is_file()))
}

fn find_in_path(program: &str) -> Option<PathBuf> {
    env::split_paths(&env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// PATH with `first` prepended.
pub fn path_with(first: &[PathBuf]) -> std::ffi::OsString {
    let rest = env::var_os("PATH").unwrap_or_default();
    env::join_paths(first.iter().cloned().chain(env::split_paths(&rest))).unwrap_or(rest)
}

/// Where the chosen route is recorded (informational; `build-ebpf` re-checks cheaply).
pub fn route_record_path() -> PathBuf {
    crate::workspace_root().join("target/xtask/ebpf-compiler-route")
}

fn record_route(route: CompilerRoute) {
    let path = route_record_path();
    if fs::read_to_string(&path).is_ok_and(|r| r.trim() == route.as_str()) {
        return;
    }
    // Best effort: the record only saves the next reader a probe.
    if let Some(dir) = path.parent() {
        let _ = fs::create_dir_all(dir);
    }
    let _ = fs::write(&path, format!("{}\n", route.as_str()));
}

/// Cluster mode's store: Debian's etcd 3.4 (`etcd`, `etcdctl`; nothing is started, tests and labs
/// start their own), and `protoc` with protobuf's well-known `.proto` files, which the
/// `etcd-client` crate's build script needs to generate its gRPC code.
const CLUSTER_PACKAGES: &[&str] = &[
    "etcd-server",
    "etcd-client",
    "protobuf-compiler",
    "libprotobuf-dev",
];

impl Setup {
    fn ensure_cluster_store(&mut self) -> Result<()> {
        self.ensure_apt_packages(CLUSTER_PACKAGES)
    }
}
