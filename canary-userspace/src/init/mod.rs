//! `canary init`: a service section written from what the backends really export. The
//! recognition ([`recognise`]) and the section's text are pure; the CLI scrapes the backends and
//! probes their health endpoint, then calls [`propose`].

pub mod recognise;
#[cfg(test)]
mod tests;

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use crate::domain::Group;
use crate::upstream::preset::PRESETS;
use crate::upstream::Selector;
use recognise::{Catalogue, NotRecognised, Recognised};

/// One backend as `canary init` found it.
#[derive(Clone, Debug, PartialEq)]
pub struct BackendDraft {
    pub name: String,
    pub group: Group,
    pub address: IpAddr,
    pub health_url: String,
    pub metrics_url: String,
}

/// The service section to write: everything but the upstream series, which are recognised.
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceDraft {
    pub name: String,
    pub vip: SocketAddr,
    pub backends: Vec<BackendDraft>,
}

/// The recognised series and, when they are exactly a preset's, that preset.
#[derive(Clone, Debug, PartialEq)]
pub struct Proposal {
    pub recognised: Recognised,
    pub preset: Option<&'static str>,
}

/// Recognises the series of `expositions` (one per backend, with its metrics URL) together,
/// checks that every backend exports them, and names the preset they match.
pub fn propose(
    expositions: &[(String, Catalogue)],
    route: &str,
) -> Result<Proposal, NotRecognised> {
    let mut all = Catalogue::default();
    for (_, c) in expositions {
        all.merge(c);
    }
    let recognised = match recognise::recognise(&all, route) {
        Ok(r) => r,
        Err(e) => return Err(recognise::disagreement(expositions, route).unwrap_or(e)),
    };
    recognise::check_backends(&recognised, expositions)?;
    let preset = preset_of(&recognised);
    Ok(Proposal { recognised, preset })
}

/// The preset whose series and labels are exactly the recognised ones.
fn preset_of(r: &Recognised) -> Option<&'static str> {
    let same = |pick: &recognise::Pick, preset: &str| match (
        Selector::parse(&pick.to_string()),
        Selector::parse(preset),
    ) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    PRESETS
        .iter()
        .find(|p| {
            same(&r.requests, p.requests)
                && same(&r.errors, p.errors)
                && same(&r.latency, p.latency)
                && same(&r.predictions, p.predictions)
                && r.prediction_label == p.prediction_label
                && r.version_label.as_deref().unwrap_or("") == p.version_label
        })
        .map(|p| p.name)
}

/// A TOML string (basic or literal, whichever needs no escapes).
fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// The `[[services]]` section: the draft's service and backends, and the upstream series (the
/// preset when one matches, the selectors otherwise), with how each was recognised as comments.
pub fn render(service: &ServiceDraft, proposal: &Proposal) -> String {
    let r = &proposal.recognised;
    let mut t = String::new();
    let _ = writeln!(
        t,
        "# Written by `canary init` from the metrics of {} backend{}.",
        service.backends.len(),
        if service.backends.len() == 1 { "" } else { "s" }
    );
    for note in &r.notes {
        let _ = writeln!(t, "#   {note}");
    }
    let _ = writeln!(t, "[[services]]");
    let _ = writeln!(t, "name = {}", toml_string(&service.name));
    let _ = writeln!(t, "vip = {}", toml_string(&service.vip.to_string()));
    for b in &service.backends {
        let _ = writeln!(t, "\n  [[services.backends]]");
        let _ = writeln!(t, "  name = {}", toml_string(&b.name));
        let _ = writeln!(t, "  group = {}", toml_string(b.group.as_str()));
        let _ = writeln!(t, "  address = {}", toml_string(&b.address.to_string()));
        let _ = writeln!(t, "  health_url = {}", toml_string(&b.health_url));
        let _ = writeln!(t, "  metrics_url = {}", toml_string(&b.metrics_url));
    }
    let _ = writeln!(t, "\n  [services.upstream]");
    let series = [
        ("requests", r.requests.to_string()),
        ("errors", r.errors.to_string()),
        ("latency", r.latency.to_string()),
        ("predictions", r.predictions.to_string()),
        ("prediction_label", r.prediction_label.clone()),
        ("version_label", r.version_label.clone().unwrap_or_default()),
    ];
    if let Some(preset) = proposal.preset {
        let _ = writeln!(t, "  preset = {}", toml_string(preset));
        let _ = writeln!(t, "  # which is:");
        for (key, value) in &series {
            let _ = writeln!(t, "  # {key} = {}", toml_string(value));
        }
    } else {
        for (key, value) in &series {
            let _ = writeln!(t, "  {key} = {}", toml_string(value));
        }
    }
    t
}
