//! A rollout's history as a picture (`canary report`): SVG drawn with `plotters`, or an HTML
//! page holding the SVG and the decisions in words.
//!
//! Four charts over time (seconds since the rollout started): configured and measured canary
//! weight with every decision marked and labelled with its reason; error rate per group; p95
//! latency per group; share of each predicted class per group. Each series carries a name in
//! the legend (and so in the SVG text).

use std::collections::BTreeSet;
use std::fmt::Write as _;

use plotters::prelude::*;

use super::{GroupSample, History};

const WIDTH: u32 = 1200;
const PANEL: u32 = 300;

const STABLE: RGBColor = RGBColor(31, 119, 180);
const CANARY: RGBColor = RGBColor(255, 127, 14);
const MEASURED: RGBColor = RGBColor(44, 160, 44);
const PALETTE: [RGBColor; 6] = [
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// Names of the series, as they appear in the legend.
pub const SERIES: [&str; 7] = [
    "configured weight %",
    "measured weight %",
    "stable error rate %",
    "canary error rate %",
    "stable p95 ms",
    "canary p95 ms",
    "decision",
];

fn secs(h: &History, at_ms: u64) -> f64 {
    at_ms.saturating_sub(h.rollout) as f64 / 1000.0
}

fn upper(values: impl Iterator<Item = f64>, floor: f64) -> f64 {
    let m = values.filter(|v| v.is_finite()).fold(0.0_f64, f64::max);
    (m * 1.15).max(floor)
}

type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;

fn err<E: std::fmt::Display>(e: E) -> String {
    format!("cannot draw the report: {e}")
}

type Chart<'a, 'b> = ChartContext<
    'a,
    SVGBackend<'b>,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

/// One panel's chart: its caption, seconds `0..end` across, `0..top` up.
fn panel<'a, 'b>(
    area: &'a Area<'b>,
    caption: &str,
    end: f64,
    top: f64,
) -> Result<Chart<'a, 'b>, String> {
    ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..end, 0.0..top)
        .map_err(err)
}

/// A legend entry's sample: a short line in the series' style.
fn legend_line<S: Into<ShapeStyle> + Copy>(
    style: S,
) -> impl Fn((i32, i32)) -> PathElement<(i32, i32)> {
    move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style)
}

/// Draws the chart's legend at `position`.
fn legend<'a, 'b: 'a>(
    chart: &mut Chart<'a, 'b>,
    position: SeriesLabelPosition,
) -> Result<(), String> {
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)
}

/// The SVG of a rollout's history.
pub fn svg(h: &History) -> Result<String, String> {
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (WIDTH, PANEL * 4 + 40)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let title = format!(
            "canary report: service {}, rollout {} ({} samples, {} decisions)",
            h.service,
            h.rollout,
            h.samples.len(),
            h.decisions.len()
        );
        let (top, rest) = root.split_vertically(40);
        top.titled(&title, ("sans-serif", 20)).map_err(err)?;
        let panels = rest.split_evenly((4, 1));
        let end = h
            .samples
            .iter()
            .map(|s| s.at_ms)
            .chain(h.decisions.iter().map(|d| d.at_ms))
            .max()
            .map_or(1.0, |t| secs(h, t).max(1.0));
        weight(&panels[0], h, end)?;
        per_group(
            &panels[1],
            h,
            end,
            "error rate per group (%)",
            ["stable error rate %", "canary error rate %"],
            |g| g.error_rate.map(|r| r * 100.0),
            1.0,
        )?;
        per_group(
            &panels[2],
            h,
            end,
            "latency p95 per group (ms)",
            ["stable p95 ms", "canary p95 ms"],
            |g| g.latency_p95_ms,
            10.0,
        )?;
        predictions(&panels[3], h, end)?;
        root.present().map_err(err)?;
    }
    Ok(out)
}

fn weight(area: &Area<'_>, h: &History, end: f64) -> Result<(), String> {
    let mut chart = panel(
        area,
        "canary weight: configured and measured (%), decisions",
        end,
        105.0,
    )?;
    chart
        .configure_mesh()
        .x_desc("seconds since the rollout started")
        .draw()
        .map_err(err)?;
    // Configured weight is a step function: it changes only at decisions.
    let mut configured: Vec<(f64, f64)> = Vec::new();
    for s in &h.samples {
        let x = secs(h, s.at_ms);
        if let Some(&(_, last)) = configured.last() {
            if (last - s.weight_percent).abs() > f64::EPSILON {
                configured.push((x, last));
            }
        }
        configured.push((x, s.weight_percent));
    }
    chart
        .draw_series(LineSeries::new(configured, CANARY.stroke_width(2)))
        .map_err(err)?
        .label(SERIES[0])
        .legend(legend_line(CANARY));
    let measured: Vec<(f64, f64)> = h
        .samples
        .iter()
        .filter_map(|s| s.measured_percent.map(|m| (secs(h, s.at_ms), m)))
        .collect();
    chart
        .draw_series(LineSeries::new(measured, MEASURED.stroke_width(1)))
        .map_err(err)?
        .label(SERIES[1])
        .legend(legend_line(MEASURED));
    let red = RGBColor(214, 39, 40);
    chart
        .draw_series(h.decisions.iter().map(|d| {
            let x = secs(h, d.at_ms);
            PathElement::new(vec![(x, 0.0), (x, 105.0)], red.mix(0.5))
        }))
        .map_err(err)?
        .label(SERIES[6])
        .legend(legend_line(red));
    // Each decision's action and reason, staggered so neighbours do not overlap.
    for (i, d) in h
        .decisions
        .iter()
        .filter(|d| d.action.as_str() != "hold")
        .enumerate()
    {
        let x = secs(h, d.at_ms);
        let y = 100.0 - (i % 4) as f64 * 8.0;
        chart
            .draw_series(std::iter::once(Text::new(
                format!("{} {} ({})", d.action.as_str(), d.to, d.reason),
                (x, y),
                ("sans-serif", 12).into_font().color(&red),
            )))
            .map_err(err)?;
    }
    legend(&mut chart, SeriesLabelPosition::LowerRight)
}

fn per_group(
    area: &Area<'_>,
    h: &History,
    end: f64,
    caption: &str,
    labels: [&'static str; 2],
    value: impl Fn(&GroupSample) -> Option<f64>,
    floor: f64,
) -> Result<(), String> {
    let series = |pick: fn(&super::Sample) -> &GroupSample| -> Vec<(f64, f64)> {
        h.samples
            .iter()
            .filter_map(|s| value(pick(s)).map(|v| (secs(h, s.at_ms), v)))
            .collect()
    };
    let stable = series(|s| &s.stable);
    let canary = series(|s| &s.canary);
    let top = upper(stable.iter().chain(&canary).map(|p| p.1), floor);
    let mut chart = panel(area, caption, end, top)?;
    chart.configure_mesh().draw().map_err(err)?;
    for (points, color, label) in [(stable, STABLE, labels[0]), (canary, CANARY, labels[1])] {
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(err)?
            .label(label)
            .legend(legend_line(color));
    }
    decision_marks(&mut chart, h, top)?;
    legend(&mut chart, SeriesLabelPosition::UpperLeft)
}

fn decision_marks(chart: &mut Chart<'_, '_>, h: &History, top: f64) -> Result<(), String> {
    let red = RGBColor(214, 39, 40);
    chart
        .draw_series(
            h.decisions
                .iter()
                .filter(|d| d.action.as_str() != "hold")
                .map(|d| {
                    let x = secs(h, d.at_ms);
                    PathElement::new(vec![(x, 0.0), (x, top)], red.mix(0.3))
                }),
        )
        .map_err(err)?;
    Ok(())
}

fn share(g: &GroupSample, class: &str) -> Option<f64> {
    let total: u64 = g.predictions.values().sum();
    (total > 0)
        .then(|| g.predictions.get(class).copied().unwrap_or(0) as f64 / total as f64 * 100.0)
}

fn predictions(area: &Area<'_>, h: &History, end: f64) -> Result<(), String> {
    let classes: BTreeSet<&String> = h
        .samples
        .iter()
        .flat_map(|s| {
            s.stable
                .predictions
                .keys()
                .chain(s.canary.predictions.keys())
        })
        .collect();
    let mut chart = panel(
        area,
        "prediction mix per group (% of each class)",
        end,
        105.0,
    )?;
    chart.configure_mesh().draw().map_err(err)?;
    for (i, class) in classes.iter().take(PALETTE.len()).enumerate() {
        let color = PALETTE[i];
        for (group, pick, dashed) in [
            (
                "stable",
                (|s: &super::Sample| &s.stable) as fn(&super::Sample) -> &GroupSample,
                false,
            ),
            ("canary", |s: &super::Sample| &s.canary, true),
        ] {
            let points: Vec<(f64, f64)> = h
                .samples
                .iter()
                .filter_map(|s| share(pick(s), class).map(|v| (secs(h, s.at_ms), v)))
                .collect();
            let style = color.stroke_width(if dashed { 1 } else { 2 });
            chart
                .draw_series(LineSeries::new(points, style))
                .map_err(err)?
                .label(format!("{group} {class} %"))
                .legend(legend_line(style));
        }
    }
    decision_marks(&mut chart, h, 105.0)?;
    legend(&mut chart, SeriesLabelPosition::UpperRight)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// An HTML page: the SVG, then every decision with its reasons per signal.
pub fn html(h: &History) -> Result<String, String> {
    let svg = svg(h)?;
    let mut page = String::new();
    let _ = write!(
        page,
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>canary report: {} rollout {}</title>\
         <style>body{{font-family:sans-serif}} td,th{{padding:2px 8px;text-align:left;vertical-align:top}} .fail{{color:#c00;font-weight:bold}}</style></head><body>\n",
        escape(&h.service),
        h.rollout
    );
    page.push_str(&svg);
    page.push_str("\n<h2>Decisions</h2>\n<table><tr><th>t (s)</th><th>action</th><th>weight</th><th>reason</th><th>message</th><th>signals</th></tr>\n");
    for d in &h.decisions {
        let signals: Vec<String> = d
            .judgement
            .iter()
            .flat_map(|j| &j.signals)
            .map(|s| {
                let v = s.verdict.to_string();
                let class = if v == "FAIL" { " class=\"fail\"" } else { "" };
                format!(
                    "<span{class}>{} {}{}</span>",
                    s.signal.as_str(),
                    escape(&v),
                    if s.dry_run { " (dry run)" } else { "" }
                )
            })
            .collect();
        let _ = writeln!(
            page,
            "<tr><td>{:.1}</td><td>{}</td><td>{} &rarr; {}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            secs(h, d.at_ms),
            d.action.as_str(),
            d.from,
            d.to,
            d.reason,
            escape(&d.message),
            signals.join(", ")
        );
    }
    page.push_str("</table>\n</body></html>\n");
    Ok(page)
}
