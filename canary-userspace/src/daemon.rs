//! `canary run`: the daemon's event loop. Opens (or re-opens) the data plane, serves the admin
//! API, and every poll interval probes and scrapes the backends and hands the results to the
//! [`Controller`]. SIGHUP reloads the config; SIGTERM/SIGINT stop the daemon and leave the
//! program attached, so traffic keeps flowing (the dead-man switch sends new flows to stable
//! once the heartbeat is older than `heartbeat_timeout`).

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

use canary_userspace::admin::{self, AdminState, OperatorRequest};
use canary_userspace::admin_server;
use canary_userspace::api::{OperatorCommand, OperatorReply, Status};
use canary_userspace::config::{load_config, read_token};
use canary_userspace::controller::Controller;
use canary_userspace::dataplane::aya::{AyaDataPlane, Opened, Options, XdpAttachMode};
use canary_userspace::dataplane::monotonic_ns;
use canary_userspace::domain::XdpMode;
use canary_userspace::lock::DaemonLock;
use canary_userspace::metrics::Metrics;
use canary_userspace::observe::neighbour::KernelNeighbours;
use canary_userspace::observe::probe::{observe, BackendClient};
use canary_userspace::observe::WarmUp;
use canary_userspace::rollout::StateStore;
use canary_userspace::token::TokenDigest;

/// `canary run` options.
#[derive(Clone, Debug)]
pub(crate) struct RunOptions {
    pub(crate) config: PathBuf,
    pub(crate) bpf_object: Option<PathBuf>,
}

/// Wall-clock milliseconds: rollout times survive restarts.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Raises the open-file soft limit to the hard limit (probes, scrapes and admin connections
/// all need descriptors); returns the limits in force.
fn raise_open_file_limit() -> std::io::Result<(u64, u64)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into a valid rlimit struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: setrlimit reads a valid rlimit struct; raising the soft limit up to the hard
        // one needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const limit) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok((limit.rlim_cur, limit.rlim_max))
}

/// Runs the daemon until SIGTERM or SIGINT.
pub(crate) async fn run(options: RunOptions) -> Result<()> {
    let config = load_config(&options.config)?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("canary run needs root (to load and attach the XDP program): run it with sudo");
    }
    match raise_open_file_limit() {
        Ok((soft, hard)) => tracing::info!(soft, hard, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }
    // One daemon per state directory and data plane: locked before anything is read or opened.
    canary_userspace::dataplane::aya::ensure_bpffs(&config.dataplane.bpffs)
        .context("cannot set up the data plane")?;
    let _lock = DaemonLock::acquire(&config.dataplane.state_dir, &config.dataplane.bpffs)?;
    // Verbs always need a token: the configured one, or one generated in state_dir.
    let token = match &config.admin.token_file {
        Some(path) => read_token(path)?,
        None => canary_userspace::token::load_or_generate(&config.dataplane.state_dir)?,
    };
    // Rollout state is checked before the data plane is touched: a bad file stops the start
    // with nothing attached or written.
    let store = StateStore::new(&config.dataplane.state_dir);
    for svc in &config.services {
        store
            .load(&svc.name)
            .map_err(|e| anyhow::anyhow!("rollout state of service {:?} is not usable: {e}; fix that field or delete the file; nothing was changed", svc.name))?;
    }
    let mode = match config.dataplane.xdp_mode {
        XdpMode::Auto => XdpAttachMode::Auto,
        XdpMode::Native => XdpAttachMode::Native,
        XdpMode::Skb => XdpAttachMode::Skb,
    };
    let (dp, opened) = AyaDataPlane::open(&Options {
        interface: config.dataplane.interface.clone(),
        xdp_mode: mode,
        flow_table_size: config.dataplane.flow_table_size,
        bpffs: config.dataplane.bpffs.clone(),
        object: options.bpf_object.clone(),
    })
    .context("cannot set up the data plane")?;
    match &opened {
        Opened::Attached { mode, maps_reused } => tracing::info!(
            interface = %config.dataplane.interface,
            ?mode,
            maps_reused,
            bpffs = %config.dataplane.bpffs.display(),
            "XDP program attached"
        ),
        Opened::Reopened { replaced: None } => tracing::info!(
            interface = %config.dataplane.interface,
            bpffs = %config.dataplane.bpffs.display(),
            "re-attached to the running XDP program (pinned maps and link)"
        ),
        Opened::Reopened { replaced: Some(r) } => tracing::info!(
            interface = %config.dataplane.interface,
            bpffs = %config.dataplane.bpffs.display(),
            from_tag = %r.from_tag,
            to_tag = %r.to_tag,
            "replaced the attached XDP program in place (bpf_link_update; pinned maps and flow table kept)"
        ),
    }
    if dp.flow_table_capacity() != config.dataplane.flow_table_size {
        tracing::warn!(
            pinned = dp.flow_table_capacity(),
            configured = config.dataplane.flow_table_size,
            "the pinned flow table keeps its size; `canary detach` and restart to resize it"
        );
    }

    let metrics = Metrics::new().context("cannot register metrics")?;
    metrics
        .flow_table_entries_limit
        .set(i64::from(dp.flow_table_capacity()));
    let status = Arc::new(RwLock::new(Status::default()));
    let hash_seed = config.dataplane.hash_seed;
    let mut controller = Controller::new(
        config.clone(),
        dp,
        opened.recovered(),
        store,
        metrics.clone(),
        status.clone(),
        hash_seed,
        &KernelNeighbours,
        now_ms(),
        monotonic_ns(),
    )?;

    let poll = controller.poll_interval();
    let client = BackendClient::new(poll.mul_f64(0.8).min(Duration::from_secs(2)))
        .context("cannot build the HTTP client")?;

    let (requests_tx, mut requests) = mpsc::channel::<OperatorRequest>(32);
    let (warm_tx, mut warm_done) = mpsc::channel::<String>(8);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let admin_state = AdminState {
        status: status.clone(),
        registry: metrics.registry.clone(),
        requests: requests_tx,
        token: TokenDigest::new(&token),
    };
    let listen = config.admin.listen;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| {
            format!("cannot listen on admin.listen = {listen}; choose a free address")
        })?;
    let limits = admin_server::Limits {
        max_connections: config.admin.max_connections,
        header_read_timeout: config.admin.header_read_timeout,
        idle_timeout: config.admin.idle_timeout,
    };
    let server = tokio::spawn(admin_server::serve(
        listener,
        admin::router(admin_state),
        limits,
        async {
            let _ = stop_rx.await;
        },
    ));
    tracing::info!(%listen, poll_ms = poll.as_millis() as u64, "canary daemon running");

    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut ticker = tokio::time::interval(poll);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    let mut ready = false;
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                let observations = observe(&client, controller.targets()).await;
                match controller.on_poll(now_ms(), monotonic_ns(), &observations, &KernelNeighbours) {
                    // The first poll programs every service: only then is the daemon ready.
                    Ok(()) if !ready => {
                        notify(sd_notify::NotifyState::Ready);
                        ready = true;
                    }
                    Ok(()) => {}
                    Err(e) => tracing::error!(error = %e, "poll failed"),
                }
                for job in controller.take_warmups() {
                    spawn_warm_up(&client, job, warm_tx.clone());
                }
            }
            Some(service) = warm_done.recv() => {
                controller.warm_up_done(&service, now_ms(), monotonic_ns());
            }
            Some(req) = requests.recv() => {
                let reply = match &req.command {
                    OperatorCommand::Reload => reload(&mut controller, &options),
                    command => controller.on_operator(now_ms(), monotonic_ns(), req.service.as_deref(), command),
                };
                tracing::info!(target: "canary::operator", service = req.service.as_deref().unwrap_or(""), command = ?req.command, ok = reply.ok, "{}", reply.message);
                let _ = req.reply.send(reply);
                for job in controller.take_warmups() {
                    spawn_warm_up(&client, job, warm_tx.clone());
                }
            }
            _ = hup.recv() => {
                let reply = reload(&mut controller, &options);
                tracing::info!(ok = reply.ok, "SIGHUP: {}", reply.message);
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    notify(sd_notify::NotifyState::Stopping);
    let _ = stop_tx.send(());
    let _ = server.await;
    tracing::info!(
        "stopped; the XDP program stays attached and traffic keeps flowing (`canary detach` removes it)"
    );
    Ok(())
}

/// Tells the service manager (`Type=notify`) a state change; does nothing when `NOTIFY_SOCKET`
/// is not set.
fn notify(state: sd_notify::NotifyState) {
    if let Err(e) = sd_notify::notify(&[state]) {
        tracing::warn!(error = %e, "cannot notify the service manager");
    }
}

fn reload(controller: &mut Controller<AyaDataPlane>, options: &RunOptions) -> OperatorReply {
    match load_config(&options.config) {
        Ok(new) => match controller.reload(new, now_ms(), monotonic_ns()) {
            Ok(msg) => OperatorReply::ok(msg),
            Err(e) => OperatorReply::refused(format!("{e}; the running configuration stays")),
        },
        Err(e) => OperatorReply::refused(format!(
            "new configuration rejected, the running configuration stays:\n{e:#}"
        )),
    }
}

fn spawn_warm_up(client: &BackendClient, job: WarmUp, done: mpsc::Sender<String>) {
    let client = client.clone();
    tokio::spawn(async move {
        for url in &job.urls {
            let (ok, took) = client.warm_up(url, job.requests, job.body.as_deref()).await;
            tracing::info!(service = %job.service, url, ok, sent = job.requests, took_ms = took.as_millis() as u64, "warm-up");
        }
        let _ = done.send(job.service).await;
    });
}
