//! The `canary` library: the data-plane layer and the controller's modules.

pub mod admin;
pub mod admin_server;
pub mod api;
pub mod cluster;
pub mod config;
pub mod controller;
pub mod dataplane;
pub mod domain;
pub mod history;
pub mod init;
pub mod judge;
pub mod lock;
pub mod metrics;
pub mod notify;
pub mod observe;
pub mod rollout;
pub mod token;
pub mod upstream;
