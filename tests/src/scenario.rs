//! A data-plane configuration (services, backends, groups, weights) that tests install into a
//! loaded object, and the choice the data-plane contract says the program makes for a new flow.
//!
//! Lookup tables here are filled round-robin (slot `i` -> `backends[i % n]`) rather than by
//! Maglev: the program only indexes the table, so any fill tests it, and round-robin makes the
//! expected backend of a flow a one-line computation.

use std::collections::BTreeMap;

use canary_common::choose::GROUP_PROBES;
use canary_common::{
    group_for_bucket, Backend, FlowKey, GlobalConfig, Selection, ServiceControl, ServiceEntry,
    ServiceKey, VipKey, BACKEND_FLAG_UP, BUCKETS, GROUP_CANARY, GROUP_STABLE, MAGLEV_TABLE_SIZE,
    MAX_BACKENDS, NO_BACKEND, SERVICE_FLAG_CLIENT_IP,
};

use crate::packet::Addr;
use crate::xdp::{Dataplane, XdpError};

/// Hash seed used by the test configurations.
pub const TEST_SEED: u32 = 0x00c0_ffee;
/// The balancer's MAC in the test configurations (`GlobalConfig::lb_mac`): test frames are
/// addressed to it, and forwarded frames carry it as their source.
pub const CONFIGURED_LB_MAC: [u8; 6] = crate::packet::LB_MAC;

/// The MAC of backend `index` in tests: unique per backend.
pub fn backend_mac(index: u32) -> [u8; 6] {
    let b = index.to_be_bytes();
    [0x02, 0xbe, b[0], b[1], b[2], b[3]]
}

/// One service: its key, index, affinity, control entry and the backends of both groups.
#[derive(Clone, Debug)]
pub struct ServiceSpec {
    pub key: ServiceKey,
    pub index: u32,
    pub flags: u32,
    pub control: ServiceControl,
    /// Backend indices of the stable group.
    pub stable: Vec<u32>,
    /// Backend indices of the canary group.
    pub canary: Vec<u32>,
}

impl ServiceSpec {
    pub fn new(addr: Addr, port: u16, protocol: u8, index: u32) -> Self {
        Self {
            key: ServiceKey {
                addr: addr.to_map(),
                port: port.to_be(),
                protocol,
                family: addr.family(),
            },
            index,
            flags: 0,
            control: ServiceControl::default(),
            stable: Vec::new(),
            canary: Vec::new(),
        }
    }

    #[must_use]
    pub fn weight(mut self, canary_weight: u32) -> Self {
        self.control.canary_weight = canary_weight;
        self
    }

    #[must_use]
    pub fn client_ip_affinity(mut self) -> Self {
        self.flags |= SERVICE_FLAG_CLIENT_IP;
        self
    }

    #[must_use]
    pub fn groups(mut self, stable: &[u32], canary: &[u32]) -> Self {
        self.stable = stable.to_vec();
        self.canary = canary.to_vec();
        self
    }

    pub fn group(&self, group: u32) -> &[u32] {
        if group == GROUP_CANARY {
            &self.canary
        } else {
            &self.stable
        }
    }

    pub fn vip(&self) -> VipKey {
        VipKey {
            addr: self.key.addr,
            family: self.key.family,
            _pad: [0; 3],
        }
    }
}

/// The lookup table of a group: round-robin over its backends, or all `NO_BACKEND`.
pub fn lookup_table(backends: &[u32]) -> Vec<u32> {
    (0..MAGLEV_TABLE_SIZE as usize)
        .map(|slot| {
            if backends.is_empty() {
                NO_BACKEND
            } else {
                backends[slot % backends.len()]
            }
        })
        .collect()
}

/// What the contract says happens to a new flow of a service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Choice {
    pub backend: u32,
    pub group: u32,
    /// The group chosen by the bucket rule had no backend up: the other group was used.
    pub group_fallback: bool,
    /// The dead-man switch moved the flow from canary to stable.
    pub deadman: bool,
    /// The flow's own Maglev slot named a backend that could not take it; a later slot of the
    /// same group did.
    pub slot_fallback: bool,
}

/// A whole configuration: global settings, backends and services.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub config: GlobalConfig,
    pub backends: BTreeMap<u32, Backend>,
    pub services: Vec<ServiceSpec>,
}

impl Default for Scenario {
    fn default() -> Self {
        Self::new()
    }
}

impl Scenario {
    pub fn new() -> Self {
        Self {
            config: GlobalConfig {
                hash_seed: TEST_SEED,
                lb_mac: CONFIGURED_LB_MAC,
                ..GlobalConfig::default()
            },
            backends: BTreeMap::new(),
            services: Vec::new(),
        }
    }

    /// Adds a service and creates (up) every backend it names that does not exist yet.
    pub fn add_service(&mut self, service: ServiceSpec) -> &mut Self {
        for (group, list) in [
            (GROUP_STABLE, &service.stable),
            (GROUP_CANARY, &service.canary),
        ] {
            for &index in list {
                self.backends.entry(index).or_insert(Backend {
                    mac: backend_mac(index),
                    flags: BACKEND_FLAG_UP,
                    service_index: service.index,
                    group,
                });
            }
        }
        self.services.push(service);
        self
    }

    pub fn service(&self, index: u32) -> &ServiceSpec {
        self.services
            .iter()
            .find(|s| s.index == index)
            .unwrap_or_else(|| panic!("no service with index {index}"))
    }

    pub fn service_mut(&mut self, index: u32) -> &mut ServiceSpec {
        self.services
            .iter_mut()
            .find(|s| s.index == index)
            .unwrap_or_else(|| panic!("no service with index {index}"))
    }

    pub fn service_by_key(&self, key: &ServiceKey) -> Option<&ServiceSpec> {
        self.services.iter().find(|s| s.key == *key)
    }

    pub fn is_vip(&self, vip: &VipKey) -> bool {
        self.services.iter().any(|s| s.vip() == *vip)
    }

    /// Writes everything into the maps of `dataplane`.
    pub fn install(&self, dataplane: &mut Dataplane) -> Result<(), XdpError> {
        dataplane.set_config(&self.config)?;
        for (&index, backend) in &self.backends {
            dataplane.set_backend(index, backend)?;
        }
        let mut vips: BTreeMap<([u8; 16], u8), u32> = BTreeMap::new();
        for service in &self.services {
            dataplane.set_control(service.index, &service.control)?;
            dataplane.set_maglev_table(
                service.index,
                GROUP_STABLE,
                &lookup_table(&service.stable),
            )?;
            dataplane.set_maglev_table(
                service.index,
                GROUP_CANARY,
                &lookup_table(&service.canary),
            )?;
            dataplane.set_service(
                &service.key,
                &ServiceEntry {
                    index: service.index,
                    flags: service.flags,
                },
            )?;
            *vips
                .entry((service.key.addr, service.key.family))
                .or_default() += 1;
        }
        for ((addr, family), count) in vips {
            dataplane.set_vip(
                &VipKey {
                    addr,
                    family,
                    _pad: [0; 3],
                },
                count,
            )?;
        }
        Ok(())
    }

    /// Installs, panicking with the reason.
    pub fn install_or_panic(&self, dataplane: &mut Dataplane) {
        if let Err(e) = self.install(dataplane) {
            panic!(
                "installing the scenario failed: {}",
                crate::xdp::error_chain(&e)
            );
        }
    }

    /// Writes one backend (e.g. after marking it down).
    pub fn update_backend(&self, dataplane: &mut Dataplane, index: u32) {
        dataplane
            .set_backend(index, &self.backends[&index])
            .unwrap_or_else(|e| panic!("writing backend {index}: {}", crate::xdp::error_chain(&e)));
    }

    /// Writes one service's control entry (weight, epoch, heartbeat).
    pub fn update_control(&self, dataplane: &mut Dataplane, service: u32) {
        dataplane
            .set_control(service, &self.service(service).control)
            .unwrap_or_else(|e| {
                panic!("writing control {service}: {}", crate::xdp::error_chain(&e))
            });
    }

    /// Whether `backend` may take a new flow of `service` in `group`: it exists, is up, and
    /// belongs to that service and group.
    fn usable(&self, backend: u32, service: u32, group: u32) -> bool {
        backend < MAX_BACKENDS
            && self.backends.get(&backend).is_some_and(|b| {
                b.flags & BACKEND_FLAG_UP != 0 && b.service_index == service && b.group == group
            })
    }

    /// The group the bucket rule gives a new flow of `service` (before the dead-man switch and
    /// any fallback).
    pub fn bucket_group(&self, service: &ServiceSpec, key: &FlowKey) -> u32 {
        let selection = Selection::of(
            key,
            service.flags & SERVICE_FLAG_CLIENT_IP != 0,
            self.config.hash_seed,
        );
        group_for_bucket(selection.bucket, service.control.canary_weight.min(BUCKETS))
    }

    /// The choice the contract prescribes for a new flow of `service` (step 8), given whether
    /// the dead-man switch is tripped. `None`: no backend (`DropNoBackend`).
    pub fn choose(
        &self,
        service: &ServiceSpec,
        key: &FlowKey,
        deadman_tripped: bool,
    ) -> Option<Choice> {
        let selection = Selection::of(
            key,
            service.flags & SERVICE_FLAG_CLIENT_IP != 0,
            self.config.hash_seed,
        );
        let weight = service.control.canary_weight.min(BUCKETS);
        let mut group = group_for_bucket(selection.bucket, weight);
        let mut deadman = false;
        if deadman_tripped && group == GROUP_CANARY {
            group = GROUP_STABLE;
            deadman = true;
        }
        // The group's table (as `install` writes it) from the flow's slot on, at most
        // GROUP_PROBES slots; an empty group has NO_BACKEND in every slot.
        let at = |group: u32| -> Option<(u32, bool)> {
            let table = service.group(group);
            if table.is_empty() {
                return None;
            }
            (0..GROUP_PROBES).find_map(|probe| {
                let slot = (selection.slot + probe) % MAGLEV_TABLE_SIZE;
                let backend = table[slot as usize % table.len()];
                self.usable(backend, service.index, group)
                    .then_some((backend, probe != 0))
            })
        };
        if let Some((backend, slot_fallback)) = at(group) {
            return Some(Choice {
                backend,
                group,
                group_fallback: false,
                deadman,
                slot_fallback,
            });
        }
        let other = if group == GROUP_CANARY {
            GROUP_STABLE
        } else {
            GROUP_CANARY
        };
        // A stale heartbeat allows stable only: never a fallback into canary.
        if deadman_tripped {
            return None;
        }
        at(other).map(|(backend, slot_fallback)| Choice {
            backend,
            group: other,
            group_fallback: true,
            deadman,
            slot_fallback,
        })
    }
}
