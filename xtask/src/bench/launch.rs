//! The debug-build side of `cargo xtask bench`: prerequisites, then the release re-run.

use std::process::Command;

use anyhow::{bail, Context, Result};

use super::{Options, Target};
use crate::{build_ebpf, setup};

pub(super) fn run(options: &Options) -> Result<()> {
    let target = options.target;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("benchmarks need root (network namespaces, XDP, BPF statistics): run `cargo xtask bench` as root");
    }
    let root = crate::workspace_root();
    let toolchain = setup::ensure()?;
    let object = build_ebpf::build(&root, true, &toolchain)?;
    println!("bench: eBPF object {}", object.display());
    let mut extra: Vec<std::ffi::OsString> = Vec::new();
    if matches!(target, Target::Xdp | Target::All) {
        let variant = build_ebpf::build_lru_variant(&root, &toolchain)?;
        println!(
            "bench: eBPF object with the other flow-table LRU {}",
            variant.display()
        );
        extra.push("--lru-variant-object".into());
        extra.push(variant.into());
        if let Some(rev) = &options.baseline {
            let baseline = build_ebpf::build_revision(&root, rev, &toolchain)?;
            println!("bench: baseline eBPF object ({rev}) {}", baseline.display());
            extra.extend(["--baseline".into(), rev.into(), "--baseline-object".into()]);
            extra.push(baseline.into());
        }
        if let Some(rounds) = options.rounds {
            extra.extend(["--rounds".into(), rounds.to_string().into()]);
        }
    }

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
        .args(&extra)
        .current_dir(&root);
    let status = bench
        .status()
        .with_context(|| format!("cannot start {bench:?}"))?;
    if !status.success() {
        bail!("bench {} failed ({status})", target.name());
    }
    Ok(())
}
