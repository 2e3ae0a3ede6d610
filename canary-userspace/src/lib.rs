//! The `canary` library: the data-plane layer and the controller's modules.

pub mod admin;
pub mod api;
pub mod config;
pub mod controller;
pub mod dataplane;
pub mod domain;
pub mod judge;
pub mod metrics;
pub mod observe;
pub mod rollout;
pub mod upstream;
