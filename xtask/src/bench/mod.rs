//! `cargo xtask bench [xdp|e2e|rollout|judge|scale|all]`: measurements against a baseline taken
//! in the same run, printed as tables, written to `target/bench/<name>.json` and into the
//! results section of `BENCHMARKS.md`.
//!
//! The measuring code needs the whole workspace (lab, data plane, simulator) and must run
//! optimised, so `cargo xtask bench` (a quick debug build) prepares the toolchain, the eBPF
//! object and the release binaries, then re-runs itself as a release build with the `bench`
//! feature, which does the work.

use clap::{Args, ValueEnum};

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
            Target::All => "all",
        }
    }
}

#[derive(Args, Debug, Clone)]
pub(crate) struct Options {
    /// The benchmark to run.
    #[arg(value_enum, default_value = "all")]
    pub target: Target,
}

pub(crate) fn run(options: &Options) -> anyhow::Result<()> {
    #[cfg(feature = "bench")]
    {
        measure::run(options.target)
    }
    #[cfg(not(feature = "bench"))]
    {
        launch::run(options.target)
    }
}
