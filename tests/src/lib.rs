//! Integration and end-to-end tests, and the support code they share: loading the XDP object
//! and running it on test frames, building frames, a data-plane configuration model, the
//! per-packet benchmark, and reading the deployment files (dashboard queries, Prometheus config).
pub mod bench_xdp;
pub mod deploy;
#[allow(
    clippy::redundant_clone,
    reason = "one test clones a frame it no longer uses; the model is kept as written"
)]
pub mod model;
pub mod packet;
pub mod scenario;
pub mod xdp;
