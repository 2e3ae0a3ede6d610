//! `canary status --watch`: a live terminal view of one service, redrawn in place.

use std::time::{Duration, UNIX_EPOCH};

use anyhow::{Context, Result};
use canary_userspace::api::{ClusterStatus, ServiceStatus, Status};
use canary_userspace::judge::{Signal, SignalReport};
use crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use crossterm::execute;
use crossterm::terminal::{
    disable_raw_mode, enable_raw_mode, BeginSynchronizedUpdate, EndSynchronizedUpdate,
    EnterAlternateScreen, LeaveAlternateScreen,
};
use ratatui::backend::{Backend, CrosstermBackend};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Cell, Gauge, Paragraph, Row, Table};
use ratatui::{Frame, Terminal};
use tokio::sync::mpsc;

use super::client::{self, Endpoint};

/// How often the view asks the daemon.
const REFRESH: Duration = Duration::from_millis(500);

/// Phases in which a rollout has ended.
fn done(phase: &str) -> bool {
    matches!(phase, "promoted" | "rolled_back" | "idle")
}

/// Why the view stopped.
enum Exit {
    Quit,
    Done(Box<ServiceStatus>),
}

/// Runs the view until Ctrl-C, `q`, or (with `until_done`) the end of the rollout. The terminal
/// is restored whatever happens. With `until_done`, a rolled-back rollout is an error (exit 1).
pub(crate) async fn run(
    endpoint: &Endpoint,
    service: Option<&str>,
    until_done: bool,
) -> Result<()> {
    // The service must exist before the screen is taken over.
    let first = client::status(endpoint).await?;
    first.service(service).map_err(anyhow::Error::msg)?;

    enable_raw_mode().context("cannot switch the terminal to raw mode (is this a terminal?)")?;
    let mut stdout = std::io::stdout();
    if let Err(e) = execute!(stdout, EnterAlternateScreen) {
        let _ = disable_raw_mode();
        return Err(e).context("cannot take over the terminal");
    }
    let result = match Terminal::new(CrosstermBackend::new(std::io::stdout())) {
        Ok(mut terminal) => {
            let r = watch(&mut terminal, endpoint, service, until_done, first).await;
            let _ = terminal.show_cursor();
            r
        }
        Err(e) => Err(e.into()),
    };
    let _ = execute!(std::io::stdout(), LeaveAlternateScreen);
    let _ = disable_raw_mode();
    match result? {
        Exit::Quit => Ok(()),
        Exit::Done(s) => {
            print!("{}", super::render::service(&s));
            if s.phase == "rolled_back" {
                anyhow::bail!("the rollout of {} was rolled back", s.name);
            }
            Ok(())
        }
    }
}

/// Keys, read on their own thread (crossterm's reads block): Ctrl-C, `q` and Esc quit.
fn spawn_keys() -> mpsc::Receiver<()> {
    let (tx, rx) = mpsc::channel(1);
    std::thread::spawn(move || loop {
        if tx.is_closed() {
            return;
        }
        if !event::poll(Duration::from_millis(100)).unwrap_or(false) {
            continue;
        }
        if let Ok(Event::Key(k)) = event::read() {
            let ctrl_c =
                k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL);
            if k.kind == KeyEventKind::Press
                && (ctrl_c || matches!(k.code, KeyCode::Char('q') | KeyCode::Esc))
            {
                let _ = tx.blocking_send(());
                return;
            }
        }
    });
    rx
}

async fn watch<B: Backend>(
    terminal: &mut Terminal<B>,
    endpoint: &Endpoint,
    service: Option<&str>,
    until_done: bool,
    first: Status,
) -> Result<Exit> {
    let mut keys = spawn_keys();
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut ticker = tokio::time::interval(REFRESH);
    let mut last: Option<ServiceStatus> = first.service(service).ok().cloned();
    let mut cluster: Option<ClusterStatus> = first.cluster.clone();
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                let mut error = None;
                match client::status(endpoint).await {
                    Ok(st) => {
                        cluster.clone_from(&st.cluster);
                        match st.service(service) {
                            Ok(s) => last = Some(s.clone()),
                            Err(e) => error = Some(e.clone()),
                        }
                    }
                    Err(e) => error = Some(format!("{e:#}")),
                }
                if let Some(s) = &last {
                    // One update for the terminal: no half-drawn frame is ever shown.
                    let _ = execute!(std::io::stdout(), BeginSynchronizedUpdate);
                    let drawn = terminal.draw(|f| {
                        draw(f, s, cluster.as_ref(), error.as_deref(), &endpoint.url);
                    });
                    let _ = execute!(std::io::stdout(), EndSynchronizedUpdate);
                    drawn?;
                    if until_done && done(&s.phase) {
                        return Ok(Exit::Done(Box::new(s.clone())));
                    }
                }
            }
            _ = keys.recv() => return Ok(Exit::Quit),
            _ = sigint.recv() => return Ok(Exit::Quit),
            _ = sigterm.recv() => return Ok(Exit::Quit),
        }
    }
}

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{:.1}", v * 1000.0))
}

fn pct(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{:.2}%", v * 100.0))
}

/// A signal's value in its unit.
fn value(signal: Signal, v: Option<f64>) -> String {
    let Some(v) = v else { return "-".into() };
    match signal {
        Signal::ErrorRate | Signal::ErrorSpike | Signal::FlowShare => format!("{:.2}%", v * 100.0),
        Signal::LatencyMean | Signal::LatencyP95 => format!("{v:.1}ms"),
        Signal::Predictions => format!("{v:.3}"),
        Signal::Samples | Signal::Metrics => format!("{v:.0}"),
    }
}

fn clock(at_ms: u64) -> String {
    let t =
        humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(at_ms)).to_string();
    t.get(11..19).unwrap_or(&t).to_string()
}

fn verdict_style(verdict: &str) -> Style {
    match verdict {
        "PASS" | "ok" => Style::default().fg(Color::Green),
        "FAIL" | "MISSING" => Style::default().fg(Color::Red).add_modifier(Modifier::BOLD),
        "WARN" | "inconclusive" => Style::default().fg(Color::Yellow),
        _ => Style::default(),
    }
}

fn signal_row(r: &SignalReport) -> Row<'static> {
    let verdict = r.verdict.to_string();
    let bound = match (r.lower, r.upper) {
        (None, None) => "-".to_string(),
        (l, u) => format!("[{}, {}]", value(r.signal, l), value(r.signal, u)),
    };
    Row::new(vec![
        Cell::from(r.signal.as_str().to_string()),
        Cell::from(if r.dry_run {
            format!("{verdict} (dry run)")
        } else {
            verdict.clone()
        })
        .style(verdict_style(&verdict)),
        Cell::from(value(r.signal, r.stable)),
        Cell::from(value(r.signal, r.canary)),
        Cell::from(value(r.signal, r.estimate)),
        Cell::from(bound),
        Cell::from(value(r.signal, Some(r.threshold))),
    ])
}

/// The whole view of one service.
pub(crate) fn draw(
    f: &mut Frame<'_>,
    s: &ServiceStatus,
    cluster: Option<&ClusterStatus>,
    error: Option<&str>,
    daemon: &str,
) {
    let signals = s
        .last_decision
        .as_ref()
        .and_then(|d| d.judgement.as_ref())
        .map(|j| j.signals.clone())
        .unwrap_or_default();
    let nodes = cluster.map_or(0, |c| c.nodes.len() as u16 + 3);
    let [head, gauge, groups, sigs, decisions, backends, nodes_area, foot] = Layout::vertical([
        Constraint::Length(2),
        Constraint::Length(3),
        Constraint::Length(s.groups.len() as u16 + 3),
        Constraint::Length(signals.len().max(1) as u16 + 3),
        Constraint::Min(4),
        Constraint::Length(s.backends.len() as u16 + 3),
        Constraint::Length(nodes),
        Constraint::Length(1),
    ])
    .areas(f.area());

    let step = s.step.map_or_else(
        || "-".to_string(),
        |i| format!("{}/{}", i + 1, s.steps.len()),
    );
    let mut line = vec![
        Span::styled(
            format!("service {} ", s.name),
            Style::default().add_modifier(Modifier::BOLD),
        ),
        Span::raw(format!("({} {})  ", s.protocol, s.vip)),
        Span::raw("phase "),
        Span::styled(
            s.phase.clone(),
            Style::default().fg(match s.phase.as_str() {
                "promoted" => Color::Green,
                "rolled_back" => Color::Red,
                _ => Color::Cyan,
            }),
        ),
        Span::raw(if s.paused { " (paused)" } else { "" }),
        Span::raw(format!("  step {step}")),
    ];
    if !s.dry_run.is_empty() {
        line.push(Span::raw(format!("  dry run: {}", s.dry_run.join(", "))));
    }
    let mut head_lines = vec![Line::from(line)];
    if let Some(e) = error {
        head_lines.push(Line::styled(
            format!("daemon unreachable: {e}"),
            Style::default().fg(Color::Red),
        ));
    }
    f.render_widget(Paragraph::new(head_lines), head);

    let measured = s
        .measured_canary_share
        .map_or_else(|| "-".to_string(), |m| format!("{:.2}%", m * 100.0));
    f.render_widget(
        Gauge::default()
            .block(
                Block::default()
                    .borders(Borders::ALL)
                    .title("canary weight"),
            )
            .gauge_style(Style::default().fg(Color::Yellow))
            .ratio((s.weight_percent / 100.0).clamp(0.0, 1.0))
            .label(format!(
                "configured {:.2}%  measured {measured}",
                s.weight_percent
            )),
        gauge,
    );

    let rows = s.groups.iter().map(|g| {
        let preds: Vec<String> = g
            .predictions
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        Row::new(vec![
            g.group.clone(),
            g.requests.to_string(),
            g.errors.to_string(),
            pct(g.error_rate),
            ms(g.latency_mean_seconds),
            ms(g.latency_p95_seconds),
            g.new_flows.to_string(),
            preds.join(" "),
        ])
    });
    f.render_widget(
        table(
            rows,
            &[
                ("group", 7),
                ("n", 9),
                ("errors", 7),
                ("err%", 8),
                ("mean ms", 8),
                ("p95 ms", 8),
                ("flows", 8),
                ("predictions", 10),
            ],
            "groups (this step's window)",
        ),
        groups,
    );

    let rows: Vec<Row> = if signals.is_empty() {
        vec![Row::new(vec!["(none yet)", "no evaluation"])]
    } else {
        signals.iter().map(signal_row).collect()
    };
    f.render_widget(
        table(
            rows,
            &[
                ("signal", 13),
                ("verdict", 22),
                ("stable", 10),
                ("canary", 10),
                ("estimate", 10),
                ("bounds", 22),
                ("threshold", 9),
            ],
            "signals (last evaluation)",
        ),
        sigs,
    );

    let room = decisions.height.saturating_sub(2) as usize;
    let lines: Vec<Line> = s
        .events
        .iter()
        .rev()
        .take(room)
        .map(|d| {
            Line::from(format!(
                "{} {:<9} {} -> {} ({}) {}",
                clock(d.at_ms),
                d.action.as_str(),
                d.from,
                d.to,
                d.reason,
                d.message
            ))
        })
        .collect();
    f.render_widget(
        Paragraph::new(lines).block(
            Block::default()
                .borders(Borders::ALL)
                .title("decisions (newest first)"),
        ),
        decisions,
    );

    let rows = s.backends.iter().map(|b| {
        Row::new(vec![
            Cell::from(b.name.clone()),
            Cell::from(b.group.clone()),
            Cell::from(b.address.clone()),
            Cell::from(if b.up { "up" } else { "DOWN" }).style(if b.up {
                Style::default().fg(Color::Green)
            } else {
                Style::default().fg(Color::Red)
            }),
            Cell::from(b.new_flows.to_string()),
            Cell::from(b.down_reason.clone().unwrap_or_default()),
        ])
    });
    f.render_widget(
        table(
            rows,
            &[
                ("backend", 12),
                ("group", 7),
                ("address", 16),
                ("state", 5),
                ("flows", 9),
                ("why", 10),
            ],
            "backends",
        ),
        backends,
    );
    if let Some(c) = cluster {
        draw_nodes(f, &s.name, c, nodes_area);
    }
    f.render_widget(
        Paragraph::new(format!("q or Ctrl-C quits · {daemon}")),
        foot,
    );
}

/// The cluster's nodes: who leads, what each applied for this service, its split and flow table.
fn draw_nodes(f: &mut Frame<'_>, service: &str, c: &ClusterStatus, area: ratatui::layout::Rect) {
    let leader = c.leader.as_deref().unwrap_or("none");
    let title = match &c.store_problem {
        Some(problem) => format!(
            "cluster: this node {}, leader {leader} · etcd: {problem}",
            c.node
        ),
        None => format!("cluster: this node {}, leader {leader}", c.node),
    };
    let rows = c.nodes.iter().map(|n| {
        let version = n
            .applied_versions
            .get(service)
            .copied()
            .flatten()
            .map_or_else(|| "-".to_string(), |v| v.to_string());
        let weight = n
            .applied_weight_percent
            .get(service)
            .copied()
            .flatten()
            .map_or_else(|| "-".to_string(), |w| format!("{w:.2}%"));
        let role = if c.leader.as_deref() == Some(n.name.as_str()) {
            "leader"
        } else {
            ""
        };
        Row::new(vec![
            Cell::from(n.name.clone()),
            Cell::from(role),
            Cell::from(if n.alive { "alive" } else { "GONE" }).style(if n.alive {
                Style::default().fg(Color::Green)
            } else {
                Style::default().fg(Color::Red)
            }),
            Cell::from(version),
            Cell::from(weight),
            Cell::from(pct(n.measured_canary_share)),
            Cell::from(format!(
                "{}/{}",
                n.flow_table_entries, n.flow_table_capacity
            )),
            Cell::from(n.refused.get(service).cloned().unwrap_or_default()),
        ])
    });
    f.render_widget(
        table(
            rows,
            &[
                ("node", 12),
                ("role", 7),
                ("state", 6),
                ("applied", 9),
                ("weight", 9),
                ("canary", 9),
                ("flow table", 14),
                ("refused", 10),
            ],
            title,
        ),
        area,
    );
}

/// A bordered table with a bold header: one `(header, width)` per column, the last column
/// taking the rest of the line (at least its width).
fn table<'a>(
    rows: impl IntoIterator<Item = Row<'a>>,
    columns: &[(&'a str, u16)],
    title: impl Into<Line<'a>>,
) -> Table<'a> {
    let last = columns.len().saturating_sub(1);
    let widths = columns.iter().enumerate().map(|(i, &(_, width))| {
        if i == last {
            Constraint::Min(width)
        } else {
            Constraint::Length(width)
        }
    });
    Table::new(rows, widths)
        .header(
            Row::new(columns.iter().map(|&(name, _)| name))
                .style(Style::default().add_modifier(Modifier::BOLD)),
        )
        .block(Block::default().borders(Borders::ALL).title(title))
}

#[cfg(test)]
mod tests {
    use canary_userspace::api::{BackendStatus, GroupStatus};
    use ratatui::backend::TestBackend;

    use super::*;

    /// The terminal's screen as text, one line per row.
    fn screen(t: &Terminal<TestBackend>) -> String {
        let width = usize::from(t.backend().buffer().area.width);
        t.backend()
            .buffer()
            .content()
            .chunks(width)
            .map(|row| {
                row.iter()
                    .map(ratatui::buffer::Cell::symbol)
                    .collect::<String>()
                    + "\n"
            })
            .collect()
    }

    #[test]
    fn the_view_shows_weights_groups_backends_and_decisions() {
        let s = ServiceStatus {
            name: "sentiment".into(),
            vip: "198.18.0.100:8080".into(),
            protocol: "tcp".into(),
            phase: "stepping".into(),
            step: Some(1),
            steps: vec![10.0, 25.0, 100.0],
            weight_percent: 25.0,
            measured_canary_share: Some(0.2481),
            groups: vec![GroupStatus {
                group: "canary".into(),
                requests: 1234,
                errors: 5,
                error_rate: Some(5.0 / 1234.0),
                latency_p95_seconds: Some(0.0421),
                ..GroupStatus::default()
            }],
            backends: vec![BackendStatus {
                name: "v2-a".into(),
                group: "canary".into(),
                up: false,
                down_reason: Some("health check failed".into()),
                ..BackendStatus::default()
            }],
            dry_run: vec!["latency_p95".into()],
            ..ServiceStatus::default()
        };
        let mut t = Terminal::new(TestBackend::new(120, 40)).unwrap();
        t.draw(|f| draw(f, &s, None, None, "http://127.0.0.1:9100"))
            .unwrap();
        let text = screen(&t);
        for needle in [
            "service sentiment",
            "phase stepping",
            "step 2/3",
            "configured 25.00%  measured 24.81%",
            "1234",
            "42.1",
            "DOWN",
            "health check failed",
            "dry run: latency_p95",
            "no evaluation",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
    }

    #[test]
    fn the_view_shows_the_cluster_nodes_and_who_leads() {
        use canary_userspace::api::NodeStatus;
        use std::collections::BTreeMap;
        let s = ServiceStatus {
            name: "sentiment".into(),
            phase: "stepping".into(),
            ..ServiceStatus::default()
        };
        let node = |name: &str, alive: bool, version: u64, weight: f64| NodeStatus {
            name: name.into(),
            alive,
            applied_versions: BTreeMap::from([("sentiment".to_string(), Some(version))]),
            applied_weight_percent: BTreeMap::from([("sentiment".to_string(), Some(weight))]),
            measured_canary_share: Some(0.25),
            flow_table_entries: 120,
            flow_table_capacity: 65536,
            ..NodeStatus::default()
        };
        let mut lb2 = node("lb2", false, 41, 10.0);
        lb2.refused
            .insert("sentiment".into(), "config fingerprint differs".into());
        let c = ClusterStatus {
            node: "lb1".into(),
            leader: Some("lb".into()),
            nodes: vec![node("lb", true, 42, 25.0), node("lb1", true, 42, 25.0), lb2],
            ..ClusterStatus::default()
        };
        let mut t = Terminal::new(TestBackend::new(120, 40)).unwrap();
        t.draw(|f| draw(f, &s, Some(&c), None, "http://127.0.0.1:9100"))
            .unwrap();
        let text = screen(&t);
        for needle in [
            "cluster: this node lb1, leader lb",
            "leader",
            "GONE",
            "25.00%",
            "120/65536",
            "config fingerprint differs",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
        let lb_row = text
            .lines()
            .find(|l| l.contains("│lb "))
            .unwrap_or_default();
        assert!(lb_row.contains("leader") && lb_row.contains("42"), "{text}");
    }
}
