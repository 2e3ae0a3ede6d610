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
use canary_userspace::cluster::config::StoreKind;
use canary_userspace::cluster::link::{ClusterLink, LinkEvent};
use canary_userspace::cluster::ops::{OperatorAnswer, Verb};
use canary_userspace::cluster::store::DocumentEvent;
use canary_userspace::config::{load_config, read_token};
use canary_userspace::controller::Controller;
use canary_userspace::controller::DecisionStore;
use canary_userspace::dataplane::aya::{AyaDataPlane, Opened, Options, XdpAttachMode};
use canary_userspace::dataplane::{interface_mac, monotonic_ns};
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
    let clustered = config.cluster.store == StoreKind::Etcd;
    let store: DecisionStore = if clustered {
        DecisionStore::cluster(&config.cluster.node_name)
    } else {
        let store = StateStore::new(&config.dataplane.state_dir);
        for svc in &config.services {
            store
                .load(&svc.name)
                .map_err(|e| anyhow::anyhow!("rollout state of service {:?} is not usable: {e}; fix that field or delete the file; nothing was changed", svc.name))?;
        }
        store.into()
    };
    let metrics = Metrics::new().context("cannot register metrics")?;
    // Bearer token files are read before the data plane is touched.
    let notifier = canary_userspace::notify::start(
        &config.notify,
        canary_userspace::notify::node_name(),
        &metrics,
    )
    .map_err(|e| anyhow::anyhow!("{e}; nothing was changed"))?;
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

    metrics
        .flow_table_entries_limit
        .set(i64::from(dp.flow_table_capacity()));
    let status = Arc::new(RwLock::new(Status::default()));
    // The balancer's own MAC: only frames addressed to it are balanced, and it is the source
    // of forwarded frames.
    let lb_mac = interface_mac(&config.dataplane.interface).with_context(|| {
        format!(
            "cannot read the MAC address of dataplane.interface = {:?}",
            config.dataplane.interface
        )
    })?;
    if lb_mac.is_none() {
        tracing::warn!(
            interface = %config.dataplane.interface,
            "the interface has no Ethernet MAC: frames to any unicast MAC are balanced"
        );
    }
    let mut controller = Controller::new(
        config.clone(),
        dp,
        opened.recovered(),
        store,
        metrics.clone(),
        status.clone(),
        lb_mac,
        &KernelNeighbours,
        now_ms(),
        monotonic_ns(),
    )?;
    controller.set_notifier(notifier);

    let poll = controller.poll_interval();
    let mut link = clustered.then(|| {
        tracing::info!(node = %config.cluster.node_name, endpoints = ?config.cluster.etcd_endpoints, prefix = %config.cluster.prefix, "cluster mode: rollout documents in etcd");
        ClusterLink::start(&config.cluster, poll)
    });
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
        history: Some(canary_userspace::history::HistoryStore::new(
            &config.dataplane.state_dir,
        )),
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
        admin_server::ConnectionMetrics {
            open: metrics.admin_connections.clone(),
            closed: metrics.admin_connections_closed.clone(),
        },
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
                match interface_mac(&config.dataplane.interface) {
                    Ok(mac) => {
                        if let Err(e) = controller.update_lb_mac(mac) {
                            tracing::error!(error = %e, "cannot write the interface's new MAC");
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "cannot read the interface's MAC; keeping the last one"),
                }
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
                if let Some(link) = &mut link {
                    if let Some(report) = controller.node_report(now_ms()) {
                        link.set_report(report);
                    }
                    link.publish(controller.take_documents(), None);
                }
            }
            event = next_link_event(&mut link) => {
                if let Some(link) = &mut link {
                    on_link_event(&mut controller, link, event);
                    for job in controller.take_warmups() {
                        spawn_warm_up(&client, job, warm_tx.clone());
                    }
                }
            }
            Some(service) = warm_done.recv() => {
                controller.warm_up_done(&service, now_ms(), monotonic_ns());
                if let Some(link) = &mut link {
                    link.publish(controller.take_documents(), None);
                }
            }
            Some(req) = requests.recv() => {
                if let Some(link) = &link {
                    if let Some(verb) = cluster_verb(&req.command) {
                        ask_leader(&controller, link, req, verb);
                        continue;
                    }
                }
                let reply = match &req.command {
                    OperatorCommand::Reload => reload(&mut controller, &options, &config.notify),
                    command => controller.on_operator(now_ms(), monotonic_ns(), req.service.as_deref(), command),
                };
                tracing::info!(target: "canary::operator", service = req.service.as_deref().unwrap_or(""), command = ?req.command, ok = reply.ok, "{}", reply.message);
                let _ = req.reply.send(reply);
                for job in controller.take_warmups() {
                    spawn_warm_up(&client, job, warm_tx.clone());
                }
            }
            _ = hup.recv() => {
                let reply = reload(&mut controller, &options, &config.notify);
                tracing::info!(ok = reply.ok, "SIGHUP: {}", reply.message);
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    notify(sd_notify::NotifyState::Stopping);
    if let Some(link) = link {
        Box::pin(link.stop()).await;
    }
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

fn reload(
    controller: &mut Controller<AyaDataPlane>,
    options: &RunOptions,
    notify: &[canary_userspace::notify::NotifyConfig],
) -> OperatorReply {
    match load_config(&options.config) {
        Ok(new) => {
            let note = if new.notify == notify {
                ""
            } else {
                "; [[notify]] changed but applies only at start: restart the daemon for it"
            };
            match controller.reload(new, now_ms(), monotonic_ns()) {
                Ok(msg) => OperatorReply::ok(format!("{msg}{note}")),
                Err(e) => OperatorReply::refused(format!("{e}; the running configuration stays")),
            }
        }
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

/// The next event of the cluster link; never, on one node.
async fn next_link_event(link: &mut Option<ClusterLink>) -> LinkEvent {
    match link {
        Some(link) => link.next().await,
        None => std::future::pending().await,
    }
}

/// Carries a cluster event into the controller (and the leader's documents back out).
fn on_link_event(
    controller: &mut Controller<AyaDataPlane>,
    link: &mut ClusterLink,
    event: LinkEvent,
) {
    match event {
        LinkEvent::Connected => tracing::info!(node = link.node(), "connected to etcd"),
        LinkEvent::Election(state) => {
            controller.on_leader(state.leader.clone());
            if link.on_election(&state) {
                controller.give_up_leadership(
                    state.problem.as_deref().unwrap_or("another node leads now"),
                );
            }
        }
        LinkEvent::Leadership { fence, documents } => {
            if link.leads_with(&fence) {
                tracing::info!(node = link.node(), lease = %format!("{:x}", fence.lease), key = %fence.key, "won the election");
                controller.take_leadership(&documents, now_ms(), monotonic_ns());
                link.publish(controller.take_documents(), None);
            }
        }
        LinkEvent::Document(event) => match event {
            DocumentEvent::Snapshot(documents) => {
                controller.on_store(None);
                for d in &documents {
                    controller.on_document(d, monotonic_ns());
                }
            }
            DocumentEvent::Published(d) => controller.on_document(&d, monotonic_ns()),
            DocumentEvent::Removed { service, .. } => {
                tracing::warn!(
                    service,
                    "rollout document removed from etcd; the last applied weight stays"
                );
            }
            DocumentEvent::Unreachable(why) => controller.on_store(Some(why)),
            DocumentEvent::Unreadable { key, problem } => {
                tracing::error!(key, "unreadable rollout document: {problem}");
            }
        },
        LinkEvent::Reports(Ok(reports)) => {
            controller.on_store(None);
            controller.on_node_reports(reports);
        }
        LinkEvent::Reports(Err(why)) => controller.on_store(Some(why)),
        LinkEvent::Published {
            service,
            lease,
            result,
        } => match result {
            Ok(version) => {
                tracing::info!(service, version, lease = %format!("{lease:x}"), "document published");
            }
            Err(e) => {
                tracing::warn!(service, "document not published: {e}");
                // The store keeps the last published document: decide again from it.
                controller.give_up_leadership(&e);
                let state = link.election_state();
                link.restart_leadership(&state);
            }
        },
        LinkEvent::Requests(batch) => {
            for request in batch {
                let command = match request.verb {
                    Verb::Start => OperatorCommand::Start,
                    Verb::Pause => OperatorCommand::Pause,
                    Verb::Resume => OperatorCommand::Resume,
                    Verb::Promote { full } => OperatorCommand::Promote { full },
                    Verb::Rollback => OperatorCommand::Rollback,
                    Verb::SetWeight { weight_bp } => OperatorCommand::SetWeight {
                        percent: f64::from(weight_bp) / 100.0,
                    },
                };
                let reply = controller.on_operator(
                    now_ms(),
                    monotonic_ns(),
                    Some(&request.service),
                    &command,
                );
                tracing::info!(target: "canary::operator", service = %request.service, from = %request.from_node, command = ?command, ok = reply.ok, "{}", reply.message);
                let answer = OperatorAnswer {
                    id: request.id.clone(),
                    ok: reply.ok,
                    message: reply.message,
                    decided_by: link.node().to_string(),
                    document_version: None,
                    at_ms: now_ms(),
                };
                link.publish(controller.take_documents(), Some(answer));
            }
        }
    }
}

/// The verbs a cluster's leader carries out (route and reload stay on the node asked).
fn cluster_verb(command: &OperatorCommand) -> Option<Verb> {
    Some(match command {
        OperatorCommand::Start => Verb::Start,
        OperatorCommand::Pause => Verb::Pause,
        OperatorCommand::Resume => Verb::Resume,
        OperatorCommand::Promote { full } => Verb::Promote { full: *full },
        OperatorCommand::Rollback => Verb::Rollback,
        OperatorCommand::SetWeight { percent } => {
            if !(0.0..=100.0).contains(percent) || !percent.is_finite() {
                return None;
            }
            Verb::SetWeight {
                weight_bp: (percent * 100.0).round() as u32,
            }
        }
        OperatorCommand::Route { .. } | OperatorCommand::Reload => return None,
    })
}

/// Sends an operator verb to the leader through etcd; the reply names the deciding node.
fn ask_leader(
    controller: &Controller<AyaDataPlane>,
    link: &ClusterLink,
    req: OperatorRequest,
    verb: Verb,
) {
    let service = match controller.service_name(req.service.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            let _ = req.reply.send(OperatorReply::refused(e));
            return;
        }
    };
    let answer = link.ask(service.clone(), verb, Duration::from_secs(8));
    let node = link.node().to_string();
    tokio::spawn(async move {
        let reply = match answer.await {
            Ok(Ok(a)) => OperatorReply {
                ok: a.ok,
                message: format!("{} (decided by node {})", a.message, a.decided_by),
                detail: Some(serde_json::json!({
                    "decided_by": a.decided_by,
                    "document_version": a.document_version,
                    "asked_node": node,
                })),
            },
            Ok(Err(e)) => OperatorReply::refused(format!(
                "{service}: the leader did not answer: {e}; the rollout is unchanged unless the leader decided after all (see `canary status`)"
            )),
            Err(_) => OperatorReply::refused("the request to the leader was dropped"),
        };
        tracing::info!(target: "canary::operator", service, ok = reply.ok, "{}", reply.message);
        let _ = req.reply.send(reply);
    });
}
