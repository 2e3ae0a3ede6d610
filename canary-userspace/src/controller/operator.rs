//! Operator verbs from the admin API, and their answers.

use std::fmt::Write as _;
use std::net::SocketAddr;

use super::service::Service;
use super::Controller;
use crate::api::{select_service, OperatorCommand, OperatorReply};
use crate::dataplane::DataPlane;
use crate::domain::{Protocol, Weight};
use crate::rollout::Action;

impl<D: DataPlane> Controller<D> {
    /// An operator verb from the admin API.
    pub fn on_operator(
        &mut self,
        now_ms: u64,
        now_ns: u64,
        service: Option<&str>,
        command: &OperatorCommand,
    ) -> OperatorReply {
        let i = match select_service(self.services.iter().map(Service::name), service) {
            Ok(i) => i,
            Err(e) => return OperatorReply::refused(e),
        };
        if command.is_mutating()
            && !matches!(command, OperatorCommand::Reload)
            && !self.store.decides()
        {
            let why = match self.store.cluster_side() {
                Some(c) if c.store_problem.is_some() => format!(
                    "etcd is unreachable ({}); the rollout holds until it answers",
                    c.store_problem.as_deref().unwrap_or_default()
                ),
                Some(c) => format!(
                    "node {} does not lead; the leader ({}) decides",
                    c.node,
                    c.leader.as_deref().unwrap_or("none yet")
                ),
                None => "this node does not decide".to_string(),
            };
            return OperatorReply::refused(why);
        }
        let action = match command {
            OperatorCommand::Start => Action::Start,
            OperatorCommand::Pause => Action::Pause,
            OperatorCommand::Resume => Action::Resume,
            OperatorCommand::Promote { full: false } => Action::Promote,
            OperatorCommand::Promote { full: true } => Action::PromoteFull,
            OperatorCommand::Rollback => Action::Rollback,
            OperatorCommand::SetWeight { percent } => match Weight::from_percent(*percent) {
                Ok(w) => Action::SetWeight(w),
                Err(e) => return OperatorReply::refused(format!("set-weight: {e}")),
            },
            OperatorCommand::Route { src, dst, protocol } => {
                return self.route(i, *src, *dst, protocol, now_ns)
            }
            OperatorCommand::Reload => {
                return OperatorReply::refused("reload is handled by the daemon, not a service")
            }
        };
        let s = &mut self.services[i];
        match s.rollout.on_action(now_ms, action, &s.config.rollout) {
            Ok(out) => {
                let message = out
                    .decision
                    .as_ref()
                    .map_or_else(|| "nothing to do".to_string(), |d| d.message.clone());
                self.apply_output(i, out, now_ns);
                if let Err(e) = self.write_control(i, now_ns) {
                    return OperatorReply::refused(format!(
                        "the decision was taken but writing the weight failed: {e}"
                    ));
                }
                self.persist(i);
                self.refresh();
                let s = &self.services[i];
                let mut reply = OperatorReply::ok(format!(
                    "{}: {message} (phase {}, weight {})",
                    s.name(),
                    s.rollout.phase(),
                    s.rollout.weight()
                ));
                reply.detail = s
                    .rollout
                    .last_decision()
                    .and_then(|d| serde_json::to_value(d).ok());
                reply
            }
            Err(e) => OperatorReply::refused(format!("{}: {e}", s.name())),
        }
    }

    fn route(
        &self,
        i: usize,
        src: SocketAddr,
        dst: SocketAddr,
        proto: &str,
        now_ns: u64,
    ) -> OperatorReply {
        let protocol = match proto {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            other => return OperatorReply::refused(format!("--proto {other:?}: use tcp or udp")),
        };
        let control = self.services[i].control(self.dataplane_config.heartbeat_timeout, now_ns);
        match self
            .programmer
            .route(src, dst, protocol, self.hash_seed, &control, now_ns)
        {
            Ok(route) => {
                let backend = route
                    .backend
                    .as_ref()
                    .map_or_else(|| "none (dropped)".to_string(), |b| b.name.clone());
                let mut text = format!(
                    "{src} -> {dst}/{proto}: service {}, bucket {} (weight {} bp) -> group {}, backend {backend}",
                    route.service,
                    route.bucket,
                    route.weight,
                    route.group.as_str()
                );
                if route.deadman_fallback {
                    text.push_str(" (dead-man fallback to stable)");
                } else if route.stale_heartbeat && route.backend.is_none() {
                    text.push_str(" (dead-man switch: stable has no backend up)");
                }
                if route.slot_fallback {
                    text.push_str(" (its slot's backend cannot take new flows: a later slot)");
                }
                if route.group_fallback {
                    let _ = write!(
                        text,
                        " (group {} has no backend up)",
                        route.group_by_weight.as_str()
                    );
                }
                OperatorReply {
                    ok: true,
                    message: text,
                    detail: Some(serde_json::json!({
                        "service": route.service,
                        "bucket": route.bucket,
                        "slot": route.slot,
                        "weight_bp": route.weight,
                        "group": route.group.as_str(),
                        "backend": route.backend.as_ref().map(|b| b.name.clone()),
                    })),
                }
            }
            Err(e) => OperatorReply::refused(e.to_string()),
        }
    }
}
