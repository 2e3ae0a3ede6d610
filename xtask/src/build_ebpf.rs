//! `cargo xtask build-ebpf [--release]`: builds the XDP object for `bpfel-unknown-none`.
//!
//! The object always lands in `canary-ebpf/target/` (whatever `CARGO_TARGET_DIR` says), so
//! everything that loads or embeds it can rely on [`object_path`].

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::setup::{self, CompilerRoute, Toolchain};

/// The eBPF crate, relative to the workspace root.
pub(crate) const EBPF_CRATE_DIR: &str = "canary-ebpf";
pub(crate) const BPF_TARGET: &str = "bpfel-unknown-none";
/// Name of the object file (the eBPF crate's binary).
pub(crate) const OBJECT_NAME: &str = "canary-ebpf";

#[derive(Args, Debug, Clone, Copy)]
pub(crate) struct Options {
    /// Optimised build (the one tests, benchmarks and the embedded object use).
    #[arg(long)]
    pub release: bool,
    /// Also build the upgrade variant the upgrade test needs (same source, other code).
    #[arg(long)]
    pub upgrade_variant: bool,
}

/// Path of the built object: `<root>/canary-ebpf/target/bpfel-unknown-none/{release,debug}/canary-ebpf`.
pub(crate) fn object_path(workspace_root: &Path, release: bool) -> PathBuf {
    workspace_root
        .join(EBPF_CRATE_DIR)
        .join("target")
        .join(BPF_TARGET)
        .join(if release { "release" } else { "debug" })
        .join(OBJECT_NAME)
}

pub(crate) fn run(options: Options) -> Result<()> {
    let toolchain = setup::ensure()?;
    let object = build(&crate::workspace_root(), options.release, &toolchain)?;
    println!("{}", object.display());
    if options.upgrade_variant {
        println!(
            "{}",
            build_upgrade_variant(&crate::workspace_root(), &toolchain)?.display()
        );
    }
    Ok(())
}

/// Target directory (under `canary-ebpf/target/`) of the upgrade variant.
pub(crate) const UPGRADE_VARIANT_DIR: &str = "upgrade-variant";

/// Path of the upgrade variant: the same source built with another optimisation level, so its
/// program's instructions (and kernel tag) differ while its maps are the same. The upgrade
/// test attaches the real object, then restarts the daemon with this one.
pub(crate) fn upgrade_variant_path(workspace_root: &Path) -> PathBuf {
    workspace_root
        .join(EBPF_CRATE_DIR)
        .join("target")
        .join(UPGRADE_VARIANT_DIR)
        .join(BPF_TARGET)
        .join("release")
        .join(OBJECT_NAME)
}

/// `object` once its build succeeded: an error if the build did not leave it there.
fn built(object: PathBuf) -> Result<PathBuf> {
    if !object.is_file() {
        bail!(
            "the eBPF build succeeded but {} is missing",
            object.display()
        );
    }
    Ok(object)
}

/// Builds the object with the installed toolchain and returns its path.
pub(crate) fn build(
    workspace_root: &Path,
    release: bool,
    toolchain: &Toolchain,
) -> Result<PathBuf> {
    let target_dir = workspace_root.join(EBPF_CRATE_DIR).join("target");
    cargo_build(workspace_root, &target_dir, release, toolchain, &[], &[])?;
    let object = object_path(workspace_root, release);
    built(object)
}

/// Builds the upgrade variant ([`upgrade_variant_path`]) and returns its path.
pub(crate) fn build_upgrade_variant(
    workspace_root: &Path,
    toolchain: &Toolchain,
) -> Result<PathBuf> {
    let target_dir = workspace_root
        .join(EBPF_CRATE_DIR)
        .join("target")
        .join(UPGRADE_VARIANT_DIR);
    cargo_build(
        workspace_root,
        &target_dir,
        true,
        toolchain,
        &[("CARGO_PROFILE_RELEASE_OPT_LEVEL", "2")],
        &[],
    )?;
    let object = upgrade_variant_path(workspace_root);
    built(object)
}

// Used by the launcher side of `cargo xtask bench` only.
#[cfg(not(feature = "bench"))]
/// Target directory (under `canary-ebpf/target/`) of the LRU variant.
pub(crate) const LRU_VARIANT_DIR: &str = "lru-variant";
// Used by the launcher side of `cargo xtask bench` only.
#[cfg(not(feature = "bench"))]
/// The eBPF crate's feature that selects the other flow-table LRU (see `canary-ebpf/src/maps.rs`).
pub(crate) const LRU_VARIANT_FEATURE: &str = "percpu-lru";

// Used by the launcher side of `cargo xtask bench` only.
#[cfg(not(feature = "bench"))]
/// Builds the current source with the flow table's other LRU (the benchmark compares a shared
/// LRU list with per-CPU lists) and returns the object's path.
pub(crate) fn build_lru_variant(workspace_root: &Path, toolchain: &Toolchain) -> Result<PathBuf> {
    let target_dir = workspace_root
        .join(EBPF_CRATE_DIR)
        .join("target")
        .join(LRU_VARIANT_DIR);
    cargo_build(
        workspace_root,
        &target_dir,
        true,
        toolchain,
        &[],
        &["--features", LRU_VARIANT_FEATURE],
    )?;
    let object = target_dir
        .join(BPF_TARGET)
        .join("release")
        .join(OBJECT_NAME);
    built(object)
}

// Used by the launcher side of `cargo xtask bench` only.
#[cfg(not(feature = "bench"))]
/// Builds the object of git revision `rev` (its source exported with `git archive` into
/// `target/bench/baseline/<commit>/`, built once and reused) and returns its path.
pub(crate) fn build_revision(
    workspace_root: &Path,
    rev: &str,
    toolchain: &Toolchain,
) -> Result<PathBuf> {
    let out = Command::new("git")
        .args(["rev-parse", "--verify", &format!("{rev}^{{commit}}")])
        .current_dir(workspace_root)
        .output()
        .context("cannot run git")?;
    if !out.status.success() {
        bail!(
            "baseline revision {rev:?} is not a commit of this repository: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let commit = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let source = workspace_root.join("target/bench/baseline").join(&commit);
    let object = object_path(&source, true);
    if object.is_file() {
        return Ok(object);
    }
    std::fs::create_dir_all(&source).with_context(|| format!("create {}", source.display()))?;
    let status = Command::new("sh")
        .arg("-c")
        .arg("git archive --format=tar \"$1\" | tar -x -C \"$2\"")
        .arg("sh")
        .arg(&commit)
        .arg(&source)
        .current_dir(workspace_root)
        .status()
        .context("cannot run git archive")?;
    if !status.success() {
        bail!(
            "exporting {commit} into {} failed ({status})",
            source.display()
        );
    }
    build(&source, true, toolchain)
}

fn cargo_build(
    workspace_root: &Path,
    target_dir: &Path,
    release: bool,
    toolchain: &Toolchain,
    env: &[(&str, &str)],
    args: &[&str],
) -> Result<()> {
    let crate_dir = workspace_root.join(EBPF_CRATE_DIR);
    let mut cargo = match toolchain.route {
        CompilerRoute::RustupNightly => {
            let mut cmd = Command::new("rustup");
            cmd.args(["run", "nightly", "cargo", "build", "-Z", "build-std=core"])
                .env_remove("RUSTC")
                .env_remove("RUSTC_BOOTSTRAP");
            cmd
        }
        CompilerRoute::DebianRustc => {
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let mut cmd = Command::new(cargo);
            // aya-ebpf enables `asm_experimental_arch`; Debian's core for BPF is prebuilt.
            cmd.arg("build")
                .env("RUSTC", "/usr/bin/rustc")
                .env("RUSTC_BOOTSTRAP", "1");
            cmd
        }
    };
    cargo
        .args(["--locked", "--target", BPF_TARGET])
        .arg("--target-dir")
        .arg(target_dir)
        .args(args)
        .envs(env.iter().copied())
        .current_dir(&crate_dir)
        // The outer `cargo run` sets these for the host toolchain; they must not steer this build.
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env(
            "PATH",
            setup::path_with(&[toolchain.linker_dir.clone(), PathBuf::from(setup::LLVM_BIN)]),
        );
    if release {
        cargo.arg("--release");
    }
    let status = cargo
        .status()
        .with_context(|| format!("cannot start the eBPF build {cargo:?}"))?;
    if !status.success() {
        bail!("building the eBPF object failed ({status}); command: {cargo:?}");
    }
    Ok(())
}
