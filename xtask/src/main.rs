//! Project tasks: `cargo xtask <command>`. Each command lives in its own module; this file only
//! parses the command line and dispatches.

mod bench;
mod build_ebpf;
mod demo;
mod lab;
#[allow(
    unreachable_pub,
    reason = "setup predates the workspace lint; its items are crate-visible in effect"
)]
mod setup;
mod test;

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "canary project tasks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what is missing to build the eBPF object (idempotent; Debian packages need root).
    Setup,
    /// Build the XDP object for bpfel-unknown-none and print its path.
    BuildEbpf(build_ebpf::Options),
    /// Set up, build the eBPF object (release) and run all workspace tests one at a time.
    Test(test::Options),
    /// Run benchmarks (root): xdp, e2e, rollout, judge, scale or all; writes target/bench and BENCHMARKS.md.
    Bench(bench::Options),
    /// Bring the network-namespace lab up, down, or show its status (root).
    Lab(lab::Options),
    /// Build everything and play a promotion and a rollback in a lab, with a live view (root).
    Demo(demo::Options),
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Setup => setup::ensure().map(drop),
        Command::BuildEbpf(options) => build_ebpf::run(options),
        Command::Test(options) => test::run(&options),
        Command::Bench(options) => bench::run(&options),
        Command::Lab(options) => lab::run(&options),
        Command::Demo(options) => demo::run(&options),
    }
}

/// The workspace root (the parent of this crate), independent of the current directory.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
        .to_path_buf()
}
