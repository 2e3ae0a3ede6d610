//! The `canary` library: the data-plane layer and the controller's modules.

pub mod admin;
pub mod aya_dataplane;
pub mod client;
pub mod cluster;
pub mod config;
pub mod controller;
pub mod daemon;
pub mod dataplane;
pub mod judge;
pub mod maglev;
pub mod metrics;
pub mod neighbour;
pub mod rollout;
pub mod rollout_sim;
pub mod scrape;
pub mod status;
pub mod upstream;
