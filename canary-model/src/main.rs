//! `canary-model`: serve the sentiment classifier over HTTP.

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use canary_model::classifier::{ModelVersion, Sentiment};
use canary_model::fault::FaultConfig;
use canary_model::server::{router, AppState};
use clap::Parser;

/// Serve a tiny sentiment model: POST /predict, GET /healthz, GET /metrics, GET|POST /fault.
#[derive(Debug, Parser)]
#[command(disable_version_flag = true)]
struct Args {
    /// Address to listen on (0.0.0.0 also accepts traffic for a VIP held on `lo`).
    #[arg(long, default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// Model version to serve: v1 or v2.
    #[arg(long, default_value = "v1")]
    version: ModelVersion,
    /// Instance name reported in each answer's `backend` field (default: version@listen).
    #[arg(long)]
    name: Option<String>,
    /// Fraction (0..=1) of /predict requests answered with HTTP 500.
    #[arg(long, default_value_t = 0.0)]
    error_rate: f64,
    /// Latency added to every /predict request, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Fraction (0..=1) of predictions replaced by --skew-class.
    #[arg(long, default_value_t = 0.0)]
    skew: f64,
    /// Class that skewed predictions are forced to.
    #[arg(long, default_value = "positive")]
    skew_class: Sentiment,
    /// Slow start: the first N requests are served cold.
    #[arg(long, default_value_t = 0)]
    cold_requests: u64,
    /// Extra latency of a cold request, in milliseconds.
    #[arg(long, default_value_t = 200)]
    cold_latency_ms: u64,
    /// Exit (crash) on the N-th request without answering it.
    #[arg(long)]
    crash_after: Option<u64>,
    /// Start with /healthz failing.
    #[arg(long)]
    health_failing: bool,
    /// Start with /metrics answering 500.
    #[arg(long)]
    metrics_failing: bool,
    /// Start with /metrics streaming junk series without end.
    #[arg(long)]
    metrics_flood: bool,
    /// Seed of the fault draws, for reproducible runs.
    #[arg(long)]
    seed: Option<u64>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let faults = FaultConfig {
        error_rate: args.error_rate,
        latency_ms: args.latency_ms,
        skew: args.skew,
        skew_class: args.skew_class,
        cold_requests: args.cold_requests,
        cold_latency_ms: args.cold_latency_ms,
        crash_after: args.crash_after,
        health_failing: args.health_failing,
        metrics_failing: args.metrics_failing,
        metrics_flood: args.metrics_flood,
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let local = listener.local_addr()?;
    let name = args
        .name
        .unwrap_or_else(|| format!("{}@{local}", args.version));
    let state = Arc::new(AppState::new(
        args.version,
        name.clone(),
        faults,
        args.seed,
    )?);
    // One line on stdout that a parent process can wait for (the port when 0 was asked for).
    println!("listening on {local}");
    std::io::stdout().flush()?;
    tracing::info!(%local, version = %args.version, backend = %name, "serving");
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("server failed")?;
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
