//! What the daemon learns about backends each poll: health probes and metrics scrapes
//! ([`probe`]), their MACs ([`neighbour`]), and health with hysteresis ([`Health`]).

pub mod neighbour;
pub mod probe;

use probe::Probe;

use crate::upstream::ScrapeProblem;

/// Consecutive failed health checks that take a backend out of its group.
pub const FALL: u32 = 2;
/// Consecutive passed health checks that put it back.
pub const RISE: u32 = 2;

/// What the daemon learnt about one backend in one poll.
#[derive(Clone, Debug)]
pub struct Observation {
    pub service: String,
    pub backend: String,
    pub health: Probe,
    /// The metrics exposition, or why it could not be fetched.
    pub metrics: Result<String, ScrapeProblem>,
}

/// A backend the daemon must probe and scrape.
#[derive(Clone, Debug)]
pub struct Target {
    pub service: String,
    pub backend: String,
    pub health_url: String,
    pub metrics_url: String,
    /// `upstream.max_scrape_bytes` of its service.
    pub max_scrape_bytes: u64,
}

/// Warm-up requests to send before a canary takes traffic.
#[derive(Clone, Debug)]
pub struct WarmUp {
    pub service: String,
    pub urls: Vec<String>,
    pub requests: u32,
    /// JSON body to POST (`None`: GET).
    pub body: Option<String>,
}

/// Health of a backend, with hysteresis.
#[derive(Clone, Debug, Default)]
pub struct Health {
    /// `None` until the first probe: the first answer counts at once.
    pub up: Option<bool>,
    passes: u32,
    fails: u32,
    pub last_failure: Option<String>,
    /// The latest probe that could not be made for a local reason (it changed nothing).
    pub last_unknown: Option<String>,
}

impl Health {
    /// Feeds a probe; returns whether the up/down state changed.
    pub fn observe(&mut self, probe: &Probe) -> bool {
        let before = self.up;
        match probe {
            Probe::Healthy => {
                self.passes += 1;
                self.fails = 0;
                if self.up.is_none() || self.passes >= RISE {
                    self.up = Some(true);
                }
            }
            // A local failure says nothing about the backend: no count either way.
            Probe::Unknown(why) => {
                self.last_unknown = Some(why.clone());
            }
            Probe::Unhealthy(why) => {
                self.fails += 1;
                self.passes = 0;
                self.last_failure = Some(why.clone());
                if self.up.is_none() || self.fails >= FALL {
                    self.up = Some(false);
                }
            }
        }
        before != self.up
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_probe_failures_count_neither_way() {
        let mut h = Health::default();
        assert!(h.observe(&Probe::Healthy));
        for _ in 0..10 {
            assert!(!h.observe(&Probe::Unknown("EMFILE".into())));
        }
        assert_eq!(h.up, Some(true));
        // Nor do they break a run of failures or of passes.
        assert!(!h.observe(&Probe::Unhealthy("refused".into())));
        assert!(!h.observe(&Probe::Unknown("EMFILE".into())));
        assert!(h.observe(&Probe::Unhealthy("refused".into())));
        assert_eq!(h.up, Some(false));
        // Before the first real answer, an unknown leaves the backend unknown.
        let mut fresh = Health::default();
        assert!(!fresh.observe(&Probe::Unknown("ENOBUFS".into())));
        assert_eq!(fresh.up, None);
    }
}
