//! Embeds the eBPF object when it has been built (`cargo xtask build-ebpf --release`), so that
//! a plain `cargo build` works without the eBPF toolchain.

use std::path::{Path, PathBuf};

const OBJECT: &str = "../canary-ebpf/target/bpfel-unknown-none/release/canary-ebpf";

fn main() {
    println!("cargo::rustc-check-cfg=cfg(canary_embedded_object)");
    let manifest = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let object = Path::new(&manifest).join(OBJECT);
    // Watch the object, or while it does not exist yet the deepest existing directory on its
    // path (a missing path would make cargo re-run this script on every build).
    let mut watched: PathBuf = object.clone();
    while !watched.exists() {
        if !watched.pop() {
            break;
        }
    }
    println!("cargo::rerun-if-changed={}", watched.display());
    if object.is_file() {
        println!("cargo::rustc-cfg=canary_embedded_object");
        println!("cargo::rustc-env=CANARY_EBPF_OBJECT={}", object.display());
    }
}
