//! The daemon's own view of the maps on a test copy of the object: `canary_userspace`'s
//! [`DataPlane`] over [`Dataplane`], so the daemon's [`Programmer`] and Maglev tables can be
//! written into a program that `BPF_PROG_TEST_RUN` then runs.
//!
//! [`Programmer`]: canary_userspace::dataplane::Programmer

use aya::maps::{Array, HashMap, PerCpuArray, PerCpuValues};
use canary_common::{
    maglev_index, maps, Backend, BackendStats, GlobalConfig, ServiceControl, ServiceEntry,
    ServiceKey, ServiceStats, Tunnel, VipKey,
};
use canary_userspace::dataplane::{Counters, DataPlane, DataPlaneError, MapWrite, WrittenState};

use super::{Dataplane, XdpError};

fn dp_err(map: &'static str, operation: &'static str) -> impl FnOnce(XdpError) -> DataPlaneError {
    move |e| DataPlaneError::Map {
        map,
        operation,
        source: Box::new(e),
    }
}

fn map_err(
    map: &'static str,
    operation: &'static str,
) -> impl FnOnce(aya::maps::MapError) -> DataPlaneError {
    move |e| DataPlaneError::Map {
        map,
        operation,
        source: Box::new(e),
    }
}

impl Dataplane {
    fn zero_per_cpu<V: aya::Pod + Default>(
        &mut self,
        name: &'static str,
        index: u32,
    ) -> Result<(), DataPlaneError> {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| DataPlaneError::Map {
            map: name,
            operation: "count CPUs",
            source: Box::new(e),
        })?;
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or_else(|| dp_err(name, "open")(XdpError::MissingMap(name)))?;
        let mut array: PerCpuArray<_, V> =
            PerCpuArray::try_from(map).map_err(map_err(name, "open"))?;
        let zeros =
            PerCpuValues::try_from(vec![V::default(); cpus]).map_err(|e| DataPlaneError::Map {
                map: name,
                operation: "zero",
                source: Box::new(e),
            })?;
        array.set(index, zeros, 0).map_err(map_err(name, "zero"))
    }

    fn read_array<V: aya::Pod>(&self, name: &'static str, index: u32) -> Result<V, DataPlaneError> {
        let map = self
            .ebpf
            .map(name)
            .ok_or_else(|| dp_err(name, "open")(XdpError::MissingMap(name)))?;
        let array: Array<_, V> = Array::try_from(map).map_err(map_err(name, "open"))?;
        array.get(&index, 0).map_err(map_err(name, "get"))
    }

    fn hash_entries<K: aya::Pod, V: aya::Pod>(
        &self,
        name: &'static str,
    ) -> Result<Vec<(K, V)>, DataPlaneError> {
        let map = self
            .ebpf
            .map(name)
            .ok_or_else(|| dp_err(name, "open")(XdpError::MissingMap(name)))?;
        let hash: HashMap<_, K, V> = HashMap::try_from(map).map_err(map_err(name, "open"))?;
        hash.iter()
            .map(|r| r.map_err(map_err(name, "iterate")))
            .collect()
    }
}

impl DataPlane for Dataplane {
    fn apply(&mut self, writes: &[MapWrite]) -> Result<(), DataPlaneError> {
        for w in writes {
            match w {
                MapWrite::ResetServiceStats { index } => {
                    self.zero_per_cpu::<ServiceStats>(maps::SERVICE_STATS, *index)?;
                }
                MapWrite::ResetBackendStats { index } => {
                    self.zero_per_cpu::<BackendStats>(maps::BACKEND_STATS, *index)?;
                }
                MapWrite::Backend {
                    index,
                    backend,
                    tunnel,
                } => {
                    // The tunnel first, as the daemon writes it.
                    self.set_tunnel(*index, tunnel)
                        .map_err(dp_err(maps::TUNNELS, "set"))?;
                    self.set_backend(*index, backend)
                        .map_err(dp_err(maps::BACKENDS, "set"))?;
                }
                MapWrite::MaglevSlots {
                    service_index,
                    group,
                    slots,
                } => {
                    let mut maglev = self
                        .array::<u32>(maps::MAGLEV)
                        .map_err(dp_err(maps::MAGLEV, "open"))?;
                    for (slot, backend) in slots {
                        maglev
                            .set(maglev_index(*service_index, *group, *slot), backend, 0)
                            .map_err(map_err(maps::MAGLEV, "set"))?;
                    }
                }
                MapWrite::Control { index, control } => self
                    .set_control(*index, control)
                    .map_err(dp_err(maps::CONTROL, "set"))?,
                MapWrite::ServiceInsert { key, entry } => self
                    .set_service(key, entry)
                    .map_err(dp_err(maps::SERVICES, "insert"))?,
                MapWrite::ServiceRemove { key } => self
                    .remove_service(key)
                    .map_err(dp_err(maps::SERVICES, "remove"))?,
                MapWrite::VipSet { key, services } => self
                    .set_vip(key, *services)
                    .map_err(dp_err(maps::VIPS, "set"))?,
                MapWrite::VipRemove { key } => {
                    self.set_vip(key, 0).map_err(dp_err(maps::VIPS, "remove"))?;
                }
            }
        }
        Ok(())
    }

    fn control(&self, service_index: u32) -> Result<ServiceControl, DataPlaneError> {
        self.read_array(maps::CONTROL, service_index)
    }

    fn set_global_config(&mut self, config: &GlobalConfig) -> Result<(), DataPlaneError> {
        self.set_config(config).map_err(dp_err(maps::CONFIG, "set"))
    }

    fn global_config(&self) -> Result<GlobalConfig, DataPlaneError> {
        self.read_array(maps::CONFIG, 0)
    }

    fn counters(&self) -> Result<Counters, DataPlaneError> {
        Dataplane::counters(self)
            .map(Counters)
            .map_err(dp_err(maps::COUNTERS, "get"))
    }

    fn backend_stats(&self, backend_index: u32) -> Result<BackendStats, DataPlaneError> {
        Dataplane::backend_stats(self, backend_index).map_err(dp_err(maps::BACKEND_STATS, "get"))
    }

    fn service_stats(&self, service_index: u32) -> Result<ServiceStats, DataPlaneError> {
        Dataplane::service_stats(self, service_index).map_err(dp_err(maps::SERVICE_STATS, "get"))
    }

    fn written_state(&self) -> Result<WrittenState, DataPlaneError> {
        let services = self.hash_entries::<ServiceKey, ServiceEntry>(maps::SERVICES)?;
        let vips = self.hash_entries::<VipKey, u32>(maps::VIPS)?;
        let map = self
            .ebpf
            .map(maps::BACKENDS)
            .ok_or_else(|| dp_err(maps::BACKENDS, "open")(XdpError::MissingMap(maps::BACKENDS)))?;
        let array: Array<_, Backend> =
            Array::try_from(map).map_err(map_err(maps::BACKENDS, "open"))?;
        let tunnel_map = self
            .ebpf
            .map(maps::TUNNELS)
            .ok_or_else(|| dp_err(maps::TUNNELS, "open")(XdpError::MissingMap(maps::TUNNELS)))?;
        let tunnel_array: Array<_, Tunnel> =
            Array::try_from(tunnel_map).map_err(map_err(maps::TUNNELS, "open"))?;
        let mut backends = Vec::new();
        let mut tunnels = Vec::new();
        for index in 0..array.len() {
            let b = array
                .get(&index, 0)
                .map_err(map_err(maps::BACKENDS, "get"))?;
            if b != Backend::default() {
                let tunnel = tunnel_array
                    .get(&index, 0)
                    .map_err(map_err(maps::TUNNELS, "get"))?;
                backends.push((index, b));
                if !tunnel.is_unset() {
                    tunnels.push((index, tunnel));
                }
            }
        }
        Ok(WrittenState {
            services,
            vips,
            backends,
            tunnels,
        })
    }
}
