//! A small real model server used as a backend in the canary lab: a text sentiment classifier
//! behind HTTP, with Prometheus metrics and fault knobs for exercising canary rollouts.

pub mod classifier;
pub mod fault;
pub mod metrics;
pub mod server;
pub mod udp;
