//! `cargo xtask lab up|down|status`: the network-namespace lab of [`canary_lab::lab`], kept
//! running between commands (the end-to-end tests and the demo build the same lab as a library).

use anyhow::{bail, Result};
use canary_lab::lab::{Lab, LabSpec};
use clap::{Args, Subcommand};

/// Tag of the lab when none is given (names are `cnry-<tag>-...`).
pub(crate) const DEFAULT_TAG: &str = "lab";

#[derive(Args, Debug, Clone)]
pub(crate) struct Options {
    #[command(subcommand)]
    pub command: LabCommand,
}

#[derive(Subcommand, Debug, Clone)]
pub(crate) enum LabCommand {
    /// Create the lab, or complete it when it partly exists (re-running is harmless).
    Up(UpOptions),
    /// Remove the lab: processes, pins, mounts, links, namespaces, state; fails naming leftovers.
    Down(TagOption),
    /// Show what exists of the lab.
    Status(TagOption),
}

#[derive(Args, Debug, Clone)]
pub(crate) struct UpOptions {
    /// Stable backend namespaces.
    #[arg(long, default_value_t = 3)]
    pub stable: usize,
    /// Canary backend namespaces.
    #[arg(long, default_value_t = 2)]
    pub canary: usize,
    /// Client namespaces.
    #[arg(long, default_value_t = 2)]
    pub clients: usize,
    /// Balancer namespaces; above 1 clients reach the VIP through an ECMP multipath route
    /// over all of them (L4 hash) and an etcd namespace (`kv`) is added for cluster mode.
    #[arg(long, default_value_t = 1)]
    pub balancers: usize,
    /// Backends in subnets of their own, dual-stack (`198.19.100.0/24` and `2001:db8:100::/64`),
    /// behind a router namespace, each running the IP-in-IP decapsulation program (IPv4-in-IPv4
    /// and IPv6-in-IPv6): for services with `forwarding = "ipip"`.
    #[arg(long)]
    pub routed: bool,
    #[command(flatten)]
    pub tag: TagOption,
}

#[derive(Args, Debug, Clone)]
pub(crate) struct TagOption {
    /// Lab tag, 1 to 6 characters of a-z and 0-9; separates labs that run side by side.
    #[arg(long, default_value = DEFAULT_TAG)]
    pub tag: String,
}

pub(crate) fn run(options: &Options) -> Result<()> {
    match &options.command {
        LabCommand::Up(up) => {
            require_root("lab up")?;
            let spec = LabSpec {
                stable: up.stable,
                canary: up.canary,
                clients: up.clients,
                balancers: up.balancers,
                routed: up.routed,
                ..LabSpec::new(up.tag.tag.clone())
            };
            // Keep it: `lab down` (or `Lab::down_tag`) removes it later.
            Lab::up(&spec)?.keep();
            print!("{}", Lab::status_of(&spec.tag)?);
            Ok(())
        }
        LabCommand::Down(t) => {
            require_root("lab down")?;
            Lab::down_tag(&t.tag)?;
            println!("lab {}: down, nothing left behind", t.tag);
            Ok(())
        }
        LabCommand::Status(t) => {
            let status = Lab::status_of(&t.tag)?;
            print!("{status}");
            if status.recorded && !status.is_up() {
                bail!(
                    "lab {} is incomplete: run `cargo xtask lab up --tag {}` to complete it \
                     or `cargo xtask lab down --tag {}` to remove it",
                    t.tag,
                    t.tag,
                    t.tag
                );
            }
            Ok(())
        }
    }
}

/// Fails with the command to run instead when not root.
pub(crate) fn require_root(what: &str) -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "`cargo xtask {what}` needs root (it creates network namespaces, links, mounts and \
             loads XDP programs): run `sudo -E env PATH=\"$PATH\" cargo xtask {what}`"
        );
    }
    Ok(())
}
