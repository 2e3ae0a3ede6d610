//! The debug-build side of `cargo xtask bench`: prerequisites, then the release re-run.

use std::process::Command;

use anyhow::{bail, Context, Result};

use super::Target;
use crate::{build_ebpf, setup};

pub(super) fn run(target: Target) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("benchmarks need root (network namespaces, XDP, BPF statistics): run `cargo xtask bench` as root");
    }
    let root = crate::workspace_root();
    let toolchain = setup::ensure()?;
    let object = build_ebpf::build(&root, true, &toolchain)?;
    println!("bench: eBPF object {}", object.display());

    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    // The lab runs the daemon, model server and load generator from the same release target
    // directory as the measuring binary (found next to it).
    let mut build = Command::new(&cargo);
    build
        .args(["build", "--release", "--workspace", "--bins"])
        .current_dir(&root);
    let status = build
        .status()
        .with_context(|| format!("cannot start {build:?}"))?;
    if !status.success() {
        bail!("building the release binaries failed ({status})");
    }
    let mut bench = Command::new(&cargo);
    bench
        .args([
            "run",
            "--release",
            "--package",
            "xtask",
            "--features",
            "bench",
            "--",
            "bench",
            target.name(),
        ])
        .current_dir(&root);
    let status = bench
        .status()
        .with_context(|| format!("cannot start {bench:?}"))?;
    if !status.success() {
        bail!("bench {} failed ({status})", target.name());
    }
    Ok(())
}
