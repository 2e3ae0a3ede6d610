//! Per-packet benchmark of the XDP program: prints a table and writes target/bench/xdp.json.
//! Run as root: `cargo run --release -p canary-tests --example bench_xdp`.

fn main() -> std::process::ExitCode {
    match canary_tests::bench_xdp::run_and_report() {
        Ok(_) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench xdp: {}", canary_tests::bench_xdp::describe(&e));
            std::process::ExitCode::FAILURE
        }
    }
}
