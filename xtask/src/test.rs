//! `cargo xtask test`: the project's test command (also what CI runs).
//!
//! Sets up the toolchain, builds the release eBPF object the packet tests load, then runs every
//! workspace test one at a time (privileged tests share kernel state).

use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::{build_ebpf, setup};

#[derive(Args, Debug, Clone)]
pub(crate) struct Options {
    /// Runs only this test file (`tests/tests/<NAME>.rs` or `<NAME>/main.rs`, e.g.
    /// `e2e_routed`); repeat for several. The rollout simulator's tests are then skipped.
    #[arg(long = "test", value_name = "NAME")]
    pub tests: Vec<String>,
    /// Extra arguments for the test binaries (e.g. a test name filter).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub test_args: Vec<String>,
}

pub(crate) fn run(options: &Options) -> Result<()> {
    let root = crate::workspace_root();
    let toolchain = setup::ensure()?;
    let object = build_ebpf::build(&root, true, &toolchain)?;
    println!("test: eBPF object {}", object.display());
    let variant = build_ebpf::build_upgrade_variant(&root, &toolchain)?;
    println!("test: eBPF upgrade variant {}", variant.display());

    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    // The end-to-end tests run the workspace's binaries (daemon, model server, load generator)
    // from the same target directory: build them all first.
    let mut build = Command::new(&cargo);
    build
        .args(["build", "--workspace", "--bins"])
        .current_dir(&root);
    let status = build
        .status()
        .with_context(|| format!("cannot start {build:?}"))?;
    if !status.success() {
        bail!("building the workspace binaries failed ({status})");
    }
    let mut test = Command::new(&cargo);
    // Every test binary runs even after one fails, so that one run reports every failure.
    test.args(["test", "--workspace", "--no-fail-fast"]);
    for name in &options.tests {
        test.args(["--test", name]);
    }
    test.args(["--", "--test-threads=1"])
        .args(&options.test_args)
        .current_dir(&root);
    let status = test
        .status()
        .with_context(|| format!("cannot start {test:?}"))?;
    if !status.success() {
        bail!("tests failed ({status})");
    }
    if !options.tests.is_empty() {
        return Ok(());
    }
    // The judge's rollout simulator is part of the benchmark code (xtask's `bench` feature).
    let filters: Vec<String> = if options.test_args.is_empty() {
        vec!["bench::sim::".into()]
    } else {
        options.test_args.clone()
    };
    let mut sim = Command::new(&cargo);
    sim.args([
        "test",
        "-p",
        "xtask",
        "--features",
        "bench",
        "--",
        "--test-threads=1",
    ])
    .args(&filters)
    .current_dir(&root);
    let status = sim
        .status()
        .with_context(|| format!("cannot start {sim:?}"))?;
    if !status.success() {
        bail!("tests of the rollout simulator failed ({status})");
    }
    Ok(())
}
