//! Test and demo infrastructure for canary: a lab of network namespaces wired for direct server
//! return ([`lab`]), a load generator that reports where every request landed ([`loadgen`]),
//! a real Prometheus run inside a lab namespace ([`prometheus`]), a real etcd ([`etcd`]), lookup
//! of the workspace's binaries ([`bins`]) and of the `FastAPI` example server ([`fastapi`]), and
//! the model server the backends run ([`server`]).

pub mod bins;
pub mod cluster;
pub mod deployment;
pub mod etcd;
pub mod fastapi;
pub mod lab;
pub mod loadgen;
pub mod prometheus;
pub mod server;
