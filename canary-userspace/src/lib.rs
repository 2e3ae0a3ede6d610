//! The `canary` library: the data-plane layer and the controller's modules.

pub mod aya_dataplane;
pub mod config;
pub mod dataplane;
pub mod maglev;
pub mod judge;
pub mod rollout;
pub mod upstream;
pub mod admin;
pub mod client;
pub mod metrics;
pub mod scrape;
pub mod status;
pub mod controller;
pub mod daemon;
pub mod neighbour;
pub mod rollout_sim;
