//! Test and demo infrastructure for canary: a lab of network namespaces wired for direct server
//! return ([`lab`]), a load generator that reports where every request landed ([`loadgen`]),
//! a real Prometheus run inside a lab namespace ([`prometheus`]), and lookup of the workspace's
//! binaries ([`bins`]).

pub mod bins;
pub mod deployment;
pub mod etcd;
pub mod lab;
pub mod loadgen;
pub mod prometheus;
