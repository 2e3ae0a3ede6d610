//! `cargo xtask bench [xdp|e2e|rollout|judge|scale|cluster|all]`: measurements against a baseline taken
//! in the same run, printed as tables, written to `target/bench/<name>.json` and into the
//! results section of `BENCHMARKS.md`.
//!
//! The measuring code needs the whole workspace (lab, data plane, simulator) and must run
//! optimised, so `cargo xtask bench` (a quick debug build) prepares the toolchain, the eBPF
//! object and the release binaries, then re-runs itself as a release build with the `bench`
//! feature, which does the work.

use clap::{Args, ValueEnum};

#[cfg(feature = "bench")]
mod cluster;
#[cfg(feature = "bench")]
mod e2e;
#[cfg(feature = "bench")]
mod install;
#[cfg(feature = "bench")]
mod judge;
#[cfg(feature = "bench")]
mod labkit;
#[cfg(not(feature = "bench"))]
mod launch;
#[cfg(feature = "bench")]
mod measure;
#[cfg(feature = "bench")]
mod procstat;
#[cfg(feature = "bench")]
mod proxies;
#[cfg(feature = "bench")]
mod report;
#[cfg(feature = "bench")]
mod rollout;
#[cfg(feature = "bench")]
mod scale;
#[cfg(feature = "bench")]
mod sim;
#[cfg(feature = "bench")]
mod stats;
#[cfg(feature = "bench")]
mod xdp;

/// Which benchmark to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Target {
    /// Per-packet cost of the XDP program (`BPF_PROG_TEST_RUN`).
    Xdp,
    /// Request path through the XDP balancer vs nginx, `HAProxy` and a `FastAPI` router.
    E2e,
    /// Controller reaction: rollback and promotion times, connections broken by a promotion.
    Rollout,
    /// Judge quality over simulated rollouts.
    Judge,
    /// Flow table size and daemon cost per backend count.
    Scale,
    /// Three nodes behind ECMP through etcd: leader takeover, apply latency, etcd traffic,
    /// connections broken when a node leaves the route.
    Cluster,
    /// Everything, in the order above.
    All,
}

impl Target {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Target::Xdp => "xdp",
            Target::E2e => "e2e",
            Target::Rollout => "rollout",
            Target::Judge => "judge",
            Target::Scale => "scale",
            Target::Cluster => "cluster",
            Target::All => "all",
        }
    }
}

#[derive(Args, Debug, Clone)]
pub(crate) struct Options {
    /// The benchmark to run.
    #[arg(value_enum, default_value = "all")]
    pub target: Target,
    /// xdp: also measure the eBPF object built from this git revision (for example `main`), in
    /// the same run, interleaved with the current one: before and after side by side.
    #[arg(long, value_name = "REV")]
    pub baseline: Option<String>,
    /// xdp: rounds (each runs every case once, the cases interleaved); default 5. More rounds
    /// steady the medians on a busy machine.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub rounds: Option<u32>,
    /// Set by the launcher: the baseline object it built, and its revision.
    #[arg(long, hide = true, requires = "baseline")]
    pub baseline_object: Option<std::path::PathBuf>,
    /// Set by the launcher: the current source built with the other flow-table LRU.
    #[arg(long, hide = true)]
    pub lru_variant_object: Option<std::path::PathBuf>,
}

pub(crate) fn run(options: &Options) -> anyhow::Result<()> {
    #[cfg(feature = "bench")]
    {
        measure::run(options)
    }
    #[cfg(not(feature = "bench"))]
    {
        launch::run(options)
    }
}
