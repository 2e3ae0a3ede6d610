//! `canary`: the daemon (`canary run`) and its command-line interface.

use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

mod cli;
mod daemon;

use canary_userspace::api::OperatorCommand;
use canary_userspace::config::{load_config, read_config};
use canary_userspace::init;
use cli::client::{self, Endpoint};
use cli::render;
use daemon::RunOptions;

#[derive(Parser)]
#[command(
    name = "canary",
    version,
    about = "XDP load balancer and canary controller for network services"
)]
struct Cli {
    /// Log format of the daemon.
    #[arg(long, value_enum, default_value_t = LogFormat::Human, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

/// How the CLI finds the daemon.
#[derive(clap::Args, Clone)]
struct Target {
    /// Config file: its `admin.listen` and `admin.token_file` locate the daemon.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Admin API base URL (default `http://127.0.0.1:9100`).
    #[arg(long, env = "CANARY_ADMIN")]
    admin: Option<String>,
    /// File holding the admin token (verbs need it; default: the config's `admin.token_file`,
    /// else `state_dir/admin.token`, else /var/lib/canary/admin.token).
    #[arg(long, env = "CANARY_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// Service to act on (needed when several are configured).
    #[arg(long, short)]
    service: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon (root): attach the XDP program and drive the rollouts.
    Run {
        #[arg(long, short)]
        config: PathBuf,
        /// Load this eBPF object instead of the embedded one.
        #[arg(long)]
        bpf_object: Option<PathBuf>,
    },
    /// Check a config file (no root needed); prints every problem with its key.
    Validate {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Print a service section for the backends, recognised from what their /metrics export:
    /// the requests, errors, latency and predictions series (a preset when one matches).
    Init {
        /// A stable backend's metrics URL, `http://ADDRESS:PORT/metrics`; repeat for each.
        #[arg(long = "metrics-url", value_name = "URL", required = true)]
        metrics_urls: Vec<String>,
        /// A canary backend's metrics URL; repeat for each (none: a service without rollout).
        #[arg(long = "canary-metrics-url", value_name = "URL")]
        canary_metrics_urls: Vec<String>,
        /// The address clients connect to, `IP:PORT` (the backends serve on the same port).
        #[arg(long)]
        vip: SocketAddr,
        /// The service's name.
        #[arg(long, default_value = "model")]
        name: String,
        /// The path the model answers on (selected where requests carry a route label).
        #[arg(long, default_value = init::recognise::DEFAULT_ROUTE)]
        route: String,
        /// The path of each backend's health endpoint (2xx while it can take traffic).
        #[arg(long, default_value = "/healthz")]
        health_path: String,
    },
    /// Show phase, step, split, per-group figures and the last decision.
    Status {
        #[command(flatten)]
        target: Target,
        /// Print the raw JSON document.
        #[arg(long, conflicts_with = "watch")]
        json: bool,
        /// A live view, redrawn in place until q or Ctrl-C.
        #[arg(long)]
        watch: bool,
        /// With --watch: exit when the rollout ends (promoted: exit 0; rolled back: exit 1).
        #[arg(long, requires = "watch")]
        until_done: bool,
    },
    /// Draw a rollout's history (weights, error rate and p95 per group, prediction mix,
    /// decisions) into an SVG or HTML file.
    Report {
        #[command(flatten)]
        target: Target,
        /// The rollout's id (its start, Unix milliseconds; `latest` by default).
        #[arg(long, default_value = "latest")]
        rollout: String,
        /// Output file: FILE.svg or FILE.html.
        #[arg(long)]
        out: PathBuf,
    },
    /// Start a rollout of the current canary group.
    Start {
        #[command(flatten)]
        target: Target,
    },
    /// Move to the next step (or to 100% with --full).
    Promote {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        full: bool,
    },
    /// Roll back now: no new flows to the canary.
    Rollback {
        #[command(flatten)]
        target: Target,
    },
    /// Stop the judge from moving the weight.
    Pause {
        #[command(flatten)]
        target: Target,
    },
    /// Let the judge move the weight again.
    Resume {
        #[command(flatten)]
        target: Target,
    },
    /// Set the canary weight by hand (percent of new flows, 0.01 steps); pauses the rollout.
    SetWeight {
        #[command(flatten)]
        target: Target,
        percent: f64,
    },
    /// Which group and backend a new flow would get now.
    Route {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        src: SocketAddr,
        #[arg(long)]
        dst: SocketAddr,
        #[arg(long, default_value = "tcp")]
        proto: String,
    },
    /// Re-read the daemon's config file (same as SIGHUP).
    Reload {
        #[command(flatten)]
        target: Target,
    },
    /// Remove the XDP program and its pinned maps (root). Traffic to the VIPs stops being balanced.
    Detach {
        /// Config file whose `dataplane.bpffs` to clean.
        #[arg(long, short, conflicts_with = "bpffs")]
        config: Option<PathBuf>,
        /// Pin directory (default /sys/fs/bpf/canary).
        #[arg(long)]
        bpffs: Option<PathBuf>,
    },
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        // Colour only on a terminal: a file or the journal gets plain text.
        LogFormat::Human => builder
            .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
            .init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn endpoint(t: &Target) -> Result<Endpoint> {
    let from_config = match &t.config {
        Some(path) => {
            let c = read_config(path)?;
            Some(client::ConfigTarget {
                listen: c.admin.listen.to_string(),
                token_file: c.admin.token_file,
                state_dir: c.dataplane.state_dir,
            })
        }
        None => None,
    };
    Endpoint::resolve(t.admin.as_deref(), t.token_file.as_deref(), from_config)
}

async fn verb(t: &Target, command: OperatorCommand) -> Result<()> {
    let reply = client::command(&endpoint(t)?, t.service.as_deref(), &command).await?;
    println!("{}", reply.message);
    Ok(())
}

fn validate(path: &Path) -> Result<()> {
    let config = load_config(path)?;
    let unreadable = canary_userspace::cluster::config::check_files(&config.cluster);
    if !unreadable.is_empty() {
        let lines: Vec<String> = unreadable.iter().map(ToString::to_string).collect();
        anyhow::bail!("{}: {}", path.display(), lines.join("\n"));
    }
    println!(
        "{}: ok ({} service{})",
        path.display(),
        config.services.len(),
        if config.services.len() == 1 { "" } else { "s" }
    );
    let d = &config.dataplane;
    let mac = match canary_userspace::dataplane::interface_mac(&d.interface) {
        Ok(Some(mac)) => canary_userspace::domain::format_mac(mac),
        Ok(None) => "none: frames to any unicast MAC would be balanced".to_string(),
        Err(e) => format!("unknown ({e})"),
    };
    println!(
        "  data plane: interface {} (MAC {mac}), syn_replace_after {}, flood guard {}",
        d.interface,
        humantime::format_duration(d.syn_replace_after),
        if d.flood_guard_rate == 0 {
            "off".to_string()
        } else {
            format!("above {} new flows/s per CPU", d.flood_guard_rate)
        }
    );
    for s in &config.services {
        println!(
            "  {} {} {}: {} stable, {} canary backends; steps {}",
            s.name,
            s.protocol.as_str(),
            s.vip,
            s.group(canary_userspace::domain::Group::Stable).count(),
            s.group(canary_userspace::domain::Group::Canary).count(),
            s.rollout
                .steps
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" -> ")
        );
        for line in s.upstream.describe() {
            println!("    {line}");
        }
    }
    let c = &config.cluster;
    match c.store {
        canary_userspace::cluster::config::StoreKind::Local => {
            println!(
                "  cluster: one node, rollout state in {}",
                config.dataplane.state_dir.display()
            );
        }
        canary_userspace::cluster::config::StoreKind::Etcd => println!(
            "  cluster: node {} in etcd {} under {}, lease {}",
            c.node_name,
            c.etcd_endpoints.join(", "),
            c.prefix,
            humantime::format_duration(c.lease_ttl)
        ),
    }
    Ok(())
}

async fn dispatch(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Run { config, bpf_object } => {
            Box::pin(daemon::run(RunOptions { config, bpf_object })).await
        }
        Command::Validate { config } => validate(&config),
        Command::Init {
            metrics_urls,
            canary_metrics_urls,
            vip,
            name,
            route,
            health_path,
        } => {
            let section = cli::init::run(&cli::init::Options {
                name,
                vip,
                stable: metrics_urls,
                canary: canary_metrics_urls,
                route,
                health_path,
            })
            .await?;
            print!("{section}");
            Ok(())
        }
        Command::Status {
            target,
            watch: true,
            until_done,
            ..
        } => cli::watch::run(&endpoint(&target)?, target.service.as_deref(), until_done).await,
        Command::Status { target, json, .. } => {
            let status = client::status(&endpoint(&target)?).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else if let Some(name) = &target.service {
                let s = status.service(Some(name)).map_err(anyhow::Error::msg)?;
                print!("{}", render::service(s));
            } else {
                for s in &status.services {
                    print!("{}", render::service(s));
                }
            }
            if let (false, Some(cluster)) = (json, &status.cluster) {
                print!("{}", render::cluster(cluster));
            }
            Ok(())
        }
        Command::Report {
            target,
            rollout,
            out,
        } => report(&target, &rollout, &out).await,
        Command::Start { target } => verb(&target, OperatorCommand::Start).await,
        Command::Promote { target, full } => verb(&target, OperatorCommand::Promote { full }).await,
        Command::Rollback { target } => verb(&target, OperatorCommand::Rollback).await,
        Command::Pause { target } => verb(&target, OperatorCommand::Pause).await,
        Command::Resume { target } => verb(&target, OperatorCommand::Resume).await,
        Command::SetWeight { target, percent } => {
            verb(&target, OperatorCommand::SetWeight { percent }).await
        }
        Command::Route {
            target,
            src,
            dst,
            proto,
        } => {
            verb(
                &target,
                OperatorCommand::Route {
                    src,
                    dst,
                    protocol: proto,
                },
            )
            .await
        }
        Command::Reload { target } => verb(&target, OperatorCommand::Reload).await,
        Command::Detach { config, bpffs } => {
            let dir = match (config, bpffs) {
                (Some(path), _) => read_config(&path)?.dataplane.bpffs,
                (None, Some(dir)) => dir,
                (None, None) => PathBuf::from("/sys/fs/bpf/canary"),
            };
            // Not while a daemon drives these pins (it would keep writing to a detached program).
            let _lock = if dir.is_dir() {
                Some(canary_userspace::lock::DaemonLock::pins(&dir)?)
            } else {
                None
            };
            let detached = canary_userspace::dataplane::aya::detach(&dir)
                .with_context(|| format!("cannot detach from {}", dir.display()))?;
            println!(
                "detached: link {}, {} pinned maps removed from {}",
                if detached.link {
                    "removed"
                } else {
                    "was not pinned"
                },
                detached.maps.len(),
                dir.display()
            );
            Ok(())
        }
    }
}

/// `canary report`: fetch a rollout's history and draw it.
async fn report(target: &Target, rollout: &str, out: &Path) -> Result<()> {
    use canary_userspace::history::render;
    let html = match out.extension().and_then(|e| e.to_str()) {
        Some("svg") => false,
        Some("html" | "htm") => true,
        _ => anyhow::bail!(
            "--out {}: give a file ending in .svg or .html",
            out.display()
        ),
    };
    let endpoint = endpoint(target)?;
    let service = if let Some(s) = &target.service {
        s.clone()
    } else {
        let status = client::status(&endpoint).await?;
        status
            .service(None)
            .map_err(anyhow::Error::msg)?
            .name
            .clone()
    };
    let history = client::history(&endpoint, &service, rollout).await?;
    let text = if html {
        render::html(&history)
    } else {
        render::svg(&history)
    }
    .map_err(anyhow::Error::msg)?;
    std::fs::write(out, text).with_context(|| format!("cannot write {}", out.display()))?;
    println!(
        "{}: service {}, rollout {} ({} samples, {} decisions)",
        out.display(),
        history.service,
        history.rollout,
        history.samples.len(),
        history.decisions.len()
    );
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logs(cli.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
