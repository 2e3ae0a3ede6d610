//! Reload: a new configuration applied without a restart.

use super::service::Service;
use super::{Controller, ControllerError};
use crate::config::Config;
use crate::dataplane::DataPlane;
use crate::rollout::Event;

impl<D: DataPlane> Controller<D> {
    /// Applies a new configuration: the data plane section must be unchanged; services and
    /// backends may come and go (minimal remapping), and a changed canary group starts a new
    /// rollout. A refused configuration changes nothing.
    pub fn reload(
        &mut self,
        new: Config,
        now_ms: u64,
        now_ns: u64,
    ) -> Result<String, ControllerError> {
        if new.dataplane != self.dataplane_config {
            return Err(ControllerError::Reload(
                "the [dataplane] section changed; it applies only at start: restart the daemon (traffic keeps flowing)".into(),
            ));
        }
        if new.admin != self.admin_config {
            return Err(ControllerError::Reload(
                "the [admin] section changed; it applies only at start: restart the daemon".into(),
            ));
        }
        if new.cluster != self.cluster_config {
            return Err(ControllerError::Reload(
                "the [cluster] section changed; it applies only at start: restart the daemon (traffic keeps flowing)".into(),
            ));
        }
        // What can fail comes first: the stored rollouts of the services added.
        let mut added = Vec::new();
        for config in &new.services {
            if self.service(&config.name).is_none() {
                let stored = self.stored_rollout(&config.name)?;
                let path = self.state_path(&config.name);
                let (mut s, out) = Service::restore(config.clone(), stored, &path, now_ms, None);
                if self.store.cluster_side().is_some() {
                    s.applied = Some(super::store::Applied::default());
                }
                s.heartbeat_ns = now_ns;
                added.push((s, out));
            }
        }
        let mut added = added.into_iter();
        let mut old = std::mem::take(&mut self.services);
        let mut changes = Vec::new();
        for config in new.services {
            if let Some(pos) = old.iter().position(|s| s.name() == config.name) {
                let mut s = old.remove(pos);
                s.reconfigure(config);
                let out = s.rollout.on_event(
                    now_ms,
                    Event::CanaryChanged {
                        fingerprint: s.config.canary_fingerprint(),
                    },
                    &s.config.rollout,
                    &s.config.upstream,
                );
                if out.decision.is_some() {
                    changes.push(format!("{}: new canary group, rollout restarted", s.name()));
                }
                self.services.push(s);
                self.apply_output(self.services.len() - 1, out, now_ns);
            } else {
                let (s, out) = added.next().expect("restored above, in the same order");
                changes.push(format!("{}: added", s.name()));
                self.services.push(s);
                self.apply_output(self.services.len() - 1, out, 0);
            }
        }
        for s in old {
            changes.push(format!("{}: removed", s.name()));
        }
        self.program(now_ns)?;
        for i in 0..self.services.len() {
            self.write_control(i, now_ns)?;
            self.persist(i);
        }
        self.refresh();
        Ok(if changes.is_empty() {
            "configuration reloaded; backends updated".to_string()
        } else {
            format!("configuration reloaded: {}", changes.join("; "))
        })
    }
}
