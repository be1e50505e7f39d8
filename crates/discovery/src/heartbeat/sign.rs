//! The shared key: HMAC-SHA256 over a heartbeat's canonical bytes (`encode.rs`), as lowercase hex.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::reject::{RejectReason, Rejection};

type HmacSha256 = Hmac<Sha256>;

/// Largest key file read: a key is a secret of a few dozen bytes; anything much bigger is the wrong file.
pub const MAX_KEY_BYTES: usize = 4096;

/// A shared HMAC-SHA256 key for signing and verifying heartbeats over their
/// [canonical encoding](crate::Heartbeat#canonical-encoding-what-sig-covers).
///
/// Load it from a file ([`HmacKey::from_file`]) rather than from a command-line argument, which other local users
/// can read in the process list. `Debug` never prints the key.
#[derive(Clone)]
pub struct HmacKey {
    // Keyed once; cloning the state per message skips re-hashing the key.
    mac: HmacSha256,
}

/// Why a key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file could not be read.
    #[error("cannot read HMAC key file {path}: {source}")]
    Read {
        /// The key file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file holds nothing but newlines.
    #[error(
        "HMAC key file {path} is empty: expected at least one byte of key before the trailing newline"
    )]
    EmptyFile {
        /// The key file.
        path: PathBuf,
    },
    /// The file is larger than [`MAX_KEY_BYTES`].
    #[error("HMAC key file {path} is larger than {MAX_KEY_BYTES} bytes: expected a short secret")]
    TooLong {
        /// The key file.
        path: PathBuf,
    },
    /// [`HmacKey::from_bytes`] was given no bytes.
    #[error("HMAC key is empty: expected at least one byte")]
    Empty,
}

impl HmacKey {
    /// Reads a key file. Trailing `\n` / `\r\n` are trimmed (editors add them); every other byte is key.
    pub fn from_file(path: impl AsRef<Path>) -> Result<HmacKey, KeyError> {
        let path = path.as_ref();
        let read_err = |source| KeyError::Read {
            path: path.to_owned(),
            source,
        };
        let file = std::fs::File::open(path).map_err(read_err)?;
        let mut bytes = Vec::new();
        file.take(MAX_KEY_BYTES as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(read_err)?;
        if bytes.len() > MAX_KEY_BYTES {
            return Err(KeyError::TooLong {
                path: path.to_owned(),
            });
        }
        while matches!(bytes.last(), Some(b'\n' | b'\r')) {
            bytes.pop();
        }
        if bytes.is_empty() {
            return Err(KeyError::EmptyFile {
                path: path.to_owned(),
            });
        }
        HmacKey::from_bytes(&bytes)
    }

    /// A key from raw bytes (for tests and for keys that come from a secret store).
    pub fn from_bytes(bytes: &[u8]) -> Result<HmacKey, KeyError> {
        if bytes.is_empty() {
            return Err(KeyError::Empty);
        }
        // HMAC accepts keys of any length, so this cannot fail; map it anyway rather than panic.
        let mac = HmacSha256::new_from_slice(bytes).map_err(|_| KeyError::Empty)?;
        Ok(HmacKey { mac })
    }

    /// Lowercase hex HMAC-SHA256 of `message`.
    pub(crate) fn sign_hex(&self, message: &[u8]) -> String {
        let mut mac = self.mac.clone();
        mac.update(message);
        hex::encode(mac.finalize().into_bytes())
    }

    /// Checks a hex signature in constant time (the comparison is `hmac`'s `verify_slice`).
    pub(crate) fn verify_hex(&self, message: &[u8], sig_hex: &str) -> Result<(), Rejection> {
        let sig = hex::decode(sig_hex).map_err(|_| {
            Rejection::new(
                RejectReason::BadSignature,
                "expected sig as 64 hex digits, found non-hex text",
            )
        })?;
        if sig.len() != 32 {
            return Err(Rejection::new(
                RejectReason::BadSignature,
                format!(
                    "expected sig as 64 hex digits, found {} digits",
                    sig_hex.len()
                ),
            ));
        }
        let mut mac = self.mac.clone();
        mac.update(message);
        mac.verify_slice(&sig).map_err(|_| {
            Rejection::new(
                RejectReason::BadSignature,
                "signature does not match the canonical encoding under the configured key",
            )
        })
    }
}

impl fmt::Debug for HmacKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HmacKey(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn sign_and_verify() {
        let key = HmacKey::from_bytes(b"secret").unwrap();
        let sig = key.sign_hex(b"message");
        assert_eq!(sig.len(), 64);
        assert!(key.verify_hex(b"message", &sig).is_ok());
        assert!(key.verify_hex(b"messagE", &sig).is_err());
        assert!(key.verify_hex(b"message", &sig.to_uppercase()).is_ok());
        assert!(key.verify_hex(b"message", &sig[..62]).is_err());
        assert!(key.verify_hex(b"message", "zz").is_err());
        let other = HmacKey::from_bytes(b"secret2").unwrap();
        assert!(other.verify_hex(b"message", &sig).is_err());
    }

    #[test]
    fn key_file_is_trimmed_and_empty_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::File::create(&path)
            .unwrap()
            .write_all(b"secret\r\n")
            .unwrap();
        let from_file = HmacKey::from_file(&path).unwrap();
        let direct = HmacKey::from_bytes(b"secret").unwrap();
        assert_eq!(from_file.sign_hex(b"m"), direct.sign_hex(b"m"));
        assert_eq!(format!("{from_file:?}"), "HmacKey(<redacted>)");

        std::fs::write(&path, b"\n\n").unwrap();
        assert!(matches!(
            HmacKey::from_file(&path),
            Err(KeyError::EmptyFile { .. })
        ));
        std::fs::write(&path, vec![b'k'; MAX_KEY_BYTES + 1]).unwrap();
        assert!(matches!(
            HmacKey::from_file(&path),
            Err(KeyError::TooLong { .. })
        ));
        let missing = HmacKey::from_file(dir.path().join("missing")).unwrap_err();
        assert!(missing.to_string().contains("missing"), "{missing}");
        assert!(matches!(HmacKey::from_bytes(b""), Err(KeyError::Empty)));
    }
}
