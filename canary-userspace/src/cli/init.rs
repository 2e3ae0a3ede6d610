//! `canary init`: scrapes every backend's metrics once (no redirects, at most
//! `upstream.max_scrape_bytes`, a bounded time), checks its health endpoint, and prints the
//! service section that reads what it exports. The recognition itself is the library's pure
//! [`canary_userspace::init`]; only the I/O is here.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{bail, Result};
use canary_userspace::config::{Config, DEFAULT_MAX_SCRAPE_BYTES};
use canary_userspace::domain::Group;
use canary_userspace::init::recognise::Catalogue;
use canary_userspace::init::{self, BackendDraft, ServiceDraft};
use canary_userspace::observe::probe::{BackendClient, Probe};

/// Time allowed for each scrape and health check.
const TIMEOUT: Duration = Duration::from_secs(5);

/// What `canary init` was asked for.
pub(crate) struct Options {
    pub(crate) name: String,
    pub(crate) vip: SocketAddr,
    /// Metrics URLs of the stable backends, then of the canary backends.
    pub(crate) stable: Vec<String>,
    pub(crate) canary: Vec<String>,
    /// The path whose requests are the model's (`/predict`).
    pub(crate) route: String,
    /// The health endpoint's path on each backend (`/healthz`).
    pub(crate) health_path: String,
}

/// The backend's address and its health URL (same scheme, host and port as the metrics URL).
fn backend_of(metrics_url: &str, health_path: &str) -> Result<(IpAddr, String)> {
    let url = reqwest::Url::parse(metrics_url).map_err(|e| {
        anyhow::anyhow!(
            "--metrics-url {metrics_url}: not a URL ({e}); write http://ADDRESS:PORT/metrics"
        )
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        bail!("--metrics-url {metrics_url}: use an http:// or https:// URL");
    }
    let host = url.host_str().unwrap_or_default();
    let Ok(address) = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
    else {
        bail!(
            "--metrics-url {metrics_url}: the host must be the backend's IP address (canary sends \
             packets to addresses, and the daemon scrapes this URL); write http://ADDRESS:PORT/metrics"
        )
    };
    let mut health = url.clone();
    health.set_path(health_path);
    health.set_query(None);
    Ok((address, health.to_string()))
}

/// Scrapes, probes, recognises and renders; the section is checked with the config's own
/// validation before it is returned.
pub(crate) async fn run(o: &Options) -> Result<String> {
    if o.stable.is_empty() {
        bail!("give at least one stable backend with --metrics-url");
    }
    let client = BackendClient::new(TIMEOUT)?;
    let mut backends = Vec::new();
    let mut expositions = Vec::new();
    let mut failures = Vec::new();
    let listed = o
        .stable
        .iter()
        .map(|u| (Group::Stable, u))
        .chain(o.canary.iter().map(|u| (Group::Canary, u)));
    let mut index = [0usize; 2];
    for (group, url) in listed {
        let (address, health_url) = backend_of(url, &o.health_path)?;
        let n = &mut index[usize::from(group == Group::Canary)];
        *n += 1;
        match client.scrape(url, DEFAULT_MAX_SCRAPE_BYTES).await {
            Ok(text) => match Catalogue::parse(&text) {
                Ok(c) => expositions.push((url.clone(), c)),
                Err(e) => failures.push(format!("{url}: {e}")),
            },
            Err(e) => failures.push(format!("{url}: {}", e.message)),
        }
        if let Probe::Unhealthy(why) = client.probe(&health_url).await {
            failures.push(format!(
                "{health_url}: {why}; the daemon takes a backend into service only while its \
                 health endpoint answers 2xx: pass --health-path with the path that does"
            ));
        }
        backends.push(BackendDraft {
            name: format!("{group}-{n}"),
            group,
            address,
            health_url,
            metrics_url: url.clone(),
        });
    }
    if !failures.is_empty() {
        bail!("cannot read every backend:\n  {}", failures.join("\n  "));
    }
    let proposal = init::propose(&expositions, &o.route).map_err(|e| {
        anyhow::anyhow!(
            "cannot tell every series apart, so no section is written (nothing is guessed):\n{e}"
        )
    })?;
    let service = ServiceDraft {
        name: o.name.clone(),
        vip: o.vip,
        backends,
    };
    let section = init::render(&service, &proposal);
    if let Err(e) = Config::from_toml_str(&section) {
        bail!("the section would not be a valid config ({e}):\n{section}");
    }
    Ok(section)
}

#[cfg(test)]
mod tests {
    use super::backend_of;

    #[test]
    fn the_backend_is_the_metrics_urls_address_and_its_health_url_the_same_origin() {
        let (address, health) =
            backend_of("http://198.18.0.11:8080/metrics?x=1", "/healthz").unwrap();
        assert_eq!(address.to_string(), "198.18.0.11");
        assert_eq!(health, "http://198.18.0.11:8080/healthz");
        let (address, health) = backend_of("https://[2001:db8::7]:9000/m", "/health").unwrap();
        assert_eq!(address.to_string(), "2001:db8::7");
        assert_eq!(health, "https://[2001:db8::7]:9000/health");
        for (url, says) in [
            (
                "http://model.internal:8080/metrics",
                "must be the backend's IP address",
            ),
            (
                "ftp://198.18.0.11/metrics",
                "use an http:// or https:// URL",
            ),
            ("198.18.0.11:8080/metrics", "not a URL"),
        ] {
            let e = backend_of(url, "/healthz").unwrap_err().to_string();
            assert!(e.contains(says), "{url}: {e}");
        }
    }
}
