//! Where the eBPF object comes from: embedded at build time, or a file given at run time.

use std::path::Path;

use super::AyaError;

/// Where `cargo xtask build-ebpf --release` puts the object (relative to the workspace).
pub const OBJECT_BUILD_PATH: &str = "canary-ebpf/target/bpfel-unknown-none/release/canary-ebpf";

/// The eBPF object embedded at build time, if it had been built then.
pub fn embedded_object() -> Option<&'static [u8]> {
    #[cfg(canary_embedded_object)]
    {
        static OBJECT: &[u8] = aya::include_bytes_aligned!(env!("CANARY_EBPF_OBJECT"));
        Some(OBJECT)
    }
    #[cfg(not(canary_embedded_object))]
    {
        None
    }
}

/// The object to load: the file given with `--bpf-object`, else the embedded one.
pub fn object_bytes(override_path: Option<&Path>) -> Result<Vec<u8>, AyaError> {
    match override_path {
        Some(path) => std::fs::read(path).map_err(|source| AyaError::ReadObject {
            path: path.to_owned(),
            source,
        }),
        None => embedded_object()
            .map(<[u8]>::to_vec)
            .ok_or(AyaError::NoObject),
    }
}
