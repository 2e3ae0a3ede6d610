//! The admin token: every operator verb needs it.
//!
//! With `admin.token_file` set, that file holds it. Without, the daemon generates a random
//! token at its first start in `state_dir/admin.token` (mode 0600, owned by the daemon's user)
//! and keeps it; the CLI reads the same file (through `--config`'s `state_dir`, or the default
//! `/var/lib/canary/admin.token`). A token file other users can read or write is refused: the
//! token would not be a secret.

use std::fmt::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

/// Name of the generated token file in `state_dir`.
pub const GENERATED_TOKEN_FILE: &str = "admin.token";

/// Default `dataplane.state_dir`, where the CLI looks for the generated token without
/// `--config`.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/canary";

/// Why a token cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read token file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("token file {path} is empty; put the admin token in it")]
    Empty { path: PathBuf },
    #[error("token file {path} has mode {mode:04o}: other users can read or change it, so it is not a secret; run `chmod 600 {path}`")]
    Exposed { path: PathBuf, mode: u32 },
    #[error("cannot write the generated token file {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The token file the daemon uses: `admin.token_file`, else the generated one in `state_dir`.
pub fn token_path(token_file: Option<&Path>, state_dir: &Path) -> PathBuf {
    token_file.map_or_else(|| state_dir.join(GENERATED_TOKEN_FILE), Path::to_path_buf)
}

/// Reads a token file: its content, trimmed. Refused when empty or accessible to group or
/// others (the fix is named).
pub fn read_token(path: &Path) -> Result<String, TokenError> {
    let read = |source| TokenError::Read {
        path: path.to_owned(),
        source,
    };
    let mode = std::fs::metadata(path).map_err(read)?.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(TokenError::Exposed {
            path: path.to_owned(),
            mode,
        });
    }
    let token = std::fs::read_to_string(path)
        .map_err(read)?
        .trim()
        .to_string();
    if token.is_empty() {
        return Err(TokenError::Empty {
            path: path.to_owned(),
        });
    }
    Ok(token)
}

/// The token in `state_dir/admin.token`, generated there (32 bytes of `/dev/urandom`, hex; mode 0600;
/// written durably) when the file does not exist yet.
pub fn load_or_generate(state_dir: &Path) -> Result<String, TokenError> {
    let path = state_dir.join(GENERATED_TOKEN_FILE);
    if path.exists() {
        return read_token(&path);
    }
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .map_err(|source| TokenError::Write {
            path: path.clone(),
            source,
        })?;
    let token = bytes.iter().fold(String::new(), |mut t, b| {
        let _ = write!(t, "{b:02x}");
        t
    });
    crate::rollout::write_durably(state_dir, &path, format!("{token}\n").as_bytes()).map_err(
        |source| TokenError::Write {
            path: path.clone(),
            source,
        },
    )?;
    tracing::info!(path = %path.display(), "generated the admin token (admin.token_file is not set)");
    Ok(token)
}

/// What the API keeps of the token: its SHA-256, so a comparison takes the same time whatever
/// the length of the token presented.
#[derive(Clone)]
pub struct TokenDigest([u8; 32]);

impl TokenDigest {
    pub fn new(token: &str) -> Self {
        TokenDigest(Sha256::digest(token.as_bytes()).into())
    }

    /// Whether `presented` is the token, in constant time over fixed-length digests.
    pub fn matches(&self, presented: &str) -> bool {
        use subtle::ConstantTimeEq as _;
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        bool::from(digest.ct_eq(&self.0))
    }
}

impl std::fmt::Debug for TokenDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenDigest(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("canary-token-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn write(path: &Path, text: &str, mode: u32) {
        std::fs::write(path, text).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn token_files_are_trimmed_private_and_not_empty() {
        let d = dir("read");
        let good = d.join("good");
        write(&good, "abc\n", 0o600);
        assert_eq!(read_token(&good).unwrap(), "abc");
        let empty = d.join("empty");
        write(&empty, "\n", 0o600);
        assert!(matches!(read_token(&empty), Err(TokenError::Empty { .. })));
        assert!(matches!(
            read_token(&d.join("missing")),
            Err(TokenError::Read { .. })
        ));
        for mode in [0o644, 0o640, 0o604, 0o602] {
            let open = d.join(format!("open{mode:o}"));
            write(&open, "abc", mode);
            let e = read_token(&open).unwrap_err().to_string();
            assert!(e.contains(&format!("chmod 600 {}", open.display())), "{e}");
            assert!(e.contains(&format!("{mode:04o}")), "{e}");
        }
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_generated_token_is_private_and_kept() {
        let d = dir("gen");
        let state = d.join("state");
        let first = load_or_generate(&state).unwrap();
        assert_eq!(first.len(), 64);
        let path = state.join(GENERATED_TOKEN_FILE);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(load_or_generate(&state).unwrap(), first);
        assert_eq!(read_token(&token_path(None, &state)).unwrap(), first);
        assert_ne!(load_or_generate(&d.join("other")).unwrap(), first);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn digests_match_only_the_token() {
        let t = TokenDigest::new("s3cret");
        assert!(t.matches("s3cret"));
        for wrong in ["", "s3cre", "s3cret ", "S3cret", "s3cret-and-more"] {
            assert!(!t.matches(wrong), "{wrong:?}");
        }
    }
}
