//! `canary-loadgen`: generate HTTP load against a target and print a JSON report on stdout.

use canary_lab::loadgen::{self, LoadSpec};
use clap::Parser;

/// Send prediction requests over new and keep-alive connections; print a JSON report.
#[derive(Debug, Parser)]
struct Cli {
    #[command(flatten)]
    spec: LoadSpec,
    /// Pretty-print the JSON report.
    #[arg(long)]
    pretty: bool,
}

fn raise_open_files_limit() {
    // Hundreds of keep-alive connections need more descriptors than the usual soft limit.
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &raw const lim);
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    anyhow::ensure!(
        cli.spec.new_conns + cli.spec.keepalive > 0,
        "nothing to do: give --new-conns or --keepalive above 0"
    );
    raise_open_files_limit();
    let report = loadgen::run(&cli.spec).await;
    let json = if cli.pretty {
        serde_json::to_string_pretty(&report)?
    } else {
        serde_json::to_string(&report)?
    };
    println!("{json}");
    Ok(())
}
