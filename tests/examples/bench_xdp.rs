//! Per-packet benchmark of the XDP program: prints a table and writes target/bench/xdp.json.
//! Run as root: `cargo run --release -p canary-tests --example bench_xdp [-- OPTIONS]`.
//!
//! Options: `--baseline <object>` (another build to compare with), `--lru-variant <object>`
//! (the same source built with the `percpu-lru` feature), `--runs N`, `--single-shot N`
//! (packets per single-shot case and round), `--quick` (2 rounds, fewer packets: for trying a
//! change, not for publishing).

use std::path::PathBuf;

use canary_tests::bench_xdp::{self, BenchOptions};

fn main() -> std::process::ExitCode {
    let mut options = BenchOptions::default();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--baseline" => {
                options.baseline = args.next().map(PathBuf::from);
                options.baseline_name = options.baseline.as_ref().map(|p| p.display().to_string());
            }
            "--lru-variant" => options.lru_variant = args.next().map(PathBuf::from),
            "--runs" => options.runs = args.next().and_then(|n| n.parse().ok()).unwrap_or(5),
            "--single-shot" => {
                options.single_shot = args.next().and_then(|n| n.parse().ok()).unwrap_or(250_000);
            }
            "--quick" => {
                options.runs = 2;
                options.repeat = 200_000;
                options.single_shot = 50_000;
            }
            other => {
                eprintln!("bench_xdp: unknown argument {other:?} (see the example's doc comment)");
                return std::process::ExitCode::FAILURE;
            }
        }
    }
    match bench_xdp::run_and_report(options) {
        Ok(_) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench xdp: {}", bench_xdp::describe(&e));
            std::process::ExitCode::FAILURE
        }
    }
}
