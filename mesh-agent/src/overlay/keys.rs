//! The node's WireGuard key pair: made once, kept in the data directory
//! with mode 0600.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use wireguard_control::Key;

use super::OverlayError;

pub const KEY_FILE: &str = "wireguard.key";

/// The private key at `path`, made (0600) if there is none.
pub fn load_or_create(path: &Path) -> Result<Key, OverlayError> {
    let io = |source| OverlayError::Io {
        what: format!("the private key {}", path.display()),
        source,
    };
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let mode = std::fs::metadata(path).map_err(io)?.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(OverlayError::KeyMode {
                    path: path.to_path_buf(),
                    mode,
                });
            }
            Key::from_base64(text.trim()).map_err(|_| OverlayError::BadKey {
                what: path.display().to_string(),
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(io)?;
            }
            let key = Key::generate_private();
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(io)?;
            f.write_all(key.to_base64().as_bytes()).map_err(io)?;
            f.sync_all().map_err(io)?;
            Ok(key)
        }
        Err(e) => Err(io(e)),
    }
}

/// A peer's public key as the config gives it.
pub fn parse_public(text: &str, what: &str) -> Result<Key, OverlayError> {
    Key::from_base64(text.trim()).map_err(|_| OverlayError::BadKey {
        what: what.to_string(),
    })
}
