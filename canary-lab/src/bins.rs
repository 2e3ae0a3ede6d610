//! Finding the workspace's binaries (`canary-model`, `canary-loadgen`, `canary`) from tests and
//! tools, which cannot use `CARGO_BIN_EXE_*` across packages.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A binary could not be found or built.
#[derive(Debug, thiserror::Error)]
pub enum BinError {
    /// Not next to the running executable nor in `CANARY_BIN_DIR`.
    #[error("binary `{name}` not found in {searched}: build it with `cargo build -p {package}` or set CANARY_BIN_DIR")]
    NotFound {
        name: String,
        package: String,
        searched: String,
    },
    /// `cargo build` failed.
    #[error("`cargo build -p {package} --bin {name}` failed: {reason}")]
    Build {
        name: String,
        package: String,
        reason: String,
    },
}

/// Directories searched, in order: `$CANARY_BIN_DIR`, the running executable's directory and its
/// parent (test executables live in `target/<profile>/deps`).
pub fn search_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(d) = std::env::var_os("CANARY_BIN_DIR") {
        dirs.push(PathBuf::from(d));
    }
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            dirs.push(dir.to_path_buf());
            if let Some(up) = dir.parent() {
                dirs.push(up.to_path_buf());
            }
        }
    }
    dirs
}

/// Path of an already built binary.
pub fn locate(name: &str, package: &str) -> Result<PathBuf, BinError> {
    let dirs = search_dirs();
    dirs.iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| BinError::NotFound {
            name: name.into(),
            package: package.into(),
            searched: dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// Path of a binary, building it with cargo (same profile as the running executable) if absent.
pub fn locate_or_build(name: &str, package: &str) -> Result<PathBuf, BinError> {
    if let Ok(p) = locate(name, package) {
        return Ok(p);
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let release = std::env::current_exe()
        .ok()
        .is_some_and(|e| e.components().any(|c| c.as_os_str() == "release"));
    let mut c = Command::new(cargo);
    c.args(["build", "-p", package, "--bin", name]);
    if release {
        c.arg("--release");
    }
    if let Some(root) = workspace_root() {
        c.current_dir(root);
    }
    let build_err = |reason: String| BinError::Build {
        name: name.into(),
        package: package.into(),
        reason,
    };
    let out = c.output().map_err(|e| build_err(e.to_string()))?;
    if !out.status.success() {
        return Err(build_err(String::from_utf8_lossy(&out.stderr).into_owned()));
    }
    locate(name, package)
}

/// The workspace root (this crate's parent directory, as built).
pub(crate) fn workspace_root() -> Option<&'static Path> {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent()
}
