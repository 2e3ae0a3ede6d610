//! The release-build side of `cargo xtask bench`: runs the chosen benchmarks and publishes each.

use anyhow::{anyhow, Result};

use super::report;
use super::{e2e, install, judge, rollout, scale, xdp, Target};

pub(super) fn run(target: Target) -> Result<()> {
    let targets: Vec<Target> = match target {
        Target::All => vec![
            Target::Xdp,
            Target::E2e,
            Target::Rollout,
            Target::Judge,
            Target::Scale,
        ],
        t => vec![t],
    };
    install::ensure_debian()?;
    ensure_benchmarks_md()?;
    let mut failed = Vec::new();
    for t in targets {
        println!("\n=== bench {} ===", t.name());
        let started = std::time::Instant::now();
        let section = match t {
            Target::Xdp => xdp::run(),
            Target::E2e => e2e::run(),
            Target::Rollout => rollout::run(),
            Target::Judge => Ok(judge::run()),
            Target::Scale => scale::run(),
            Target::All => unreachable!("expanded above"),
        };
        match section {
            Ok(section) => {
                println!("{}", section.markdown);
                report::publish(&section)?;
            }
            Err(e) => {
                eprintln!("bench {} failed: {e:#}", t.name());
                failed.push(t.name());
            }
        }
        // Measurements may pin this thread to one CPU; processes started later inherit the
        // mask, so give every CPU back before the next benchmark.
        unpin();
        println!("bench {} took {:.0?}", t.name(), started.elapsed());
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(anyhow!("benchmarks failed: {}", failed.join(", ")))
    }
}

/// `BENCHMARKS.md` must exist with its markers (it is part of the repository).
fn ensure_benchmarks_md() -> Result<()> {
    let path = crate::workspace_root().join("BENCHMARKS.md");
    let text = std::fs::read_to_string(&path).map_err(|e| {
        anyhow!(
            "read {}: {e} (it is part of the repository)",
            path.display()
        )
    })?;
    report::replace_results(&text, "").map(drop)
}

/// Allows this thread on every CPU again.
fn unpin() {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET and sched_setaffinity only
    // read and write that local set.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for cpu in 0..libc::CPU_SETSIZE as usize {
            libc::CPU_SET(cpu, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &raw const set);
    }
}
