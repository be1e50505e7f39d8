//! The shared keys: HMAC-SHA256 over a heartbeat's canonical bytes (`encode.rs`), as lowercase hex, and the key
//! id (`kid`) that names the key a heartbeat was signed with, so that a receiver holding several keys (during a
//! rotation) checks only the one named.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

use crate::reject::{RejectReason, Rejection};

type HmacSha256 = Hmac<Sha256>;

/// Largest key file read: a key is a secret of a few dozen bytes; anything much bigger is the wrong file.
pub const MAX_KEY_BYTES: usize = 4096;
/// Length of a key id in hex digits: the first 8 bytes of SHA-256 of the key.
pub const KID_HEX_LEN: usize = 16;

/// A shared HMAC-SHA256 key for signing and verifying heartbeats over their
/// [canonical encoding](crate::Heartbeat#canonical-encoding-what-sig-covers).
///
/// Load it from a file ([`HmacKey::from_file`]) rather than from a command-line argument, which other local users
/// can read in the process list. `Debug` never prints the key, only its [`kid`](HmacKey::kid).
#[derive(Clone)]
pub struct HmacKey {
    // Keyed once; cloning the state per message skips re-hashing the key.
    mac: HmacSha256,
    kid: String,
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
        let kid = hex::encode(&Sha256::digest(bytes)[..KID_HEX_LEN / 2]);
        Ok(HmacKey { mac, kid })
    }

    /// The key id sent in signed heartbeats: the first 8 bytes of SHA-256 of the key, as 16 lowercase hex digits.
    /// Not secret (a hash of a random 256-bit key reveals nothing usable); it only tells a receiver holding several
    /// keys which one to check. Anyone can put any `kid` in a heartbeat: a wrong one only fails verification.
    pub fn kid(&self) -> &str {
        &self.kid
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
        write!(f, "HmacKey(kid {}, <redacted>)", self.kid)
    }
}

/// The keys a receiver accepts: none (heartbeats are not checked), one, or several during a rotation. Built from
/// `Option<&HmacKey>` or a slice, so [`decode`](crate::decode) takes either.
#[derive(Debug, Clone, Copy, Default)]
pub struct KeySet<'k> {
    keys: &'k [HmacKey],
}

impl<'k> KeySet<'k> {
    /// No keys: nothing is verified.
    pub const NONE: KeySet<'static> = KeySet { keys: &[] };

    /// True when no key is configured (heartbeats are accepted unsigned).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Checks `sig` over `message`. With a `kid`, only the key of that id is tried (none holds it:
    /// [`UnknownKey`](RejectReason::UnknownKey)); without one (senders from before key ids), each key is tried.
    pub(crate) fn verify_hex(
        &self,
        message: &[u8],
        kid: Option<&str>,
        sig_hex: &str,
    ) -> Result<(), Rejection> {
        match kid {
            Some(kid) => match self.keys.iter().find(|key| key.kid() == kid) {
                Some(key) => key.verify_hex(message, sig_hex),
                None => Err(Rejection::new(
                    RejectReason::UnknownKey,
                    format!(
                        "signed with key id {}, which is not one of the configured keys (a retired key?)",
                        crate::reject::excerpt(kid)
                    ),
                )),
            },
            None => {
                let mut last = Err(Rejection::new(
                    RejectReason::BadSignature,
                    "no key is configured to check the signature with",
                ));
                for key in self.keys {
                    last = key.verify_hex(message, sig_hex);
                    if last.is_ok() {
                        break;
                    }
                }
                last
            }
        }
    }
}

impl<'k> From<&'k [HmacKey]> for KeySet<'k> {
    fn from(keys: &'k [HmacKey]) -> Self {
        KeySet { keys }
    }
}

impl<'k> From<&'k Vec<HmacKey>> for KeySet<'k> {
    fn from(keys: &'k Vec<HmacKey>) -> Self {
        KeySet { keys }
    }
}

impl<'k> From<Option<&'k HmacKey>> for KeySet<'k> {
    fn from(key: Option<&'k HmacKey>) -> Self {
        KeySet {
            keys: key.map_or(&[], std::slice::from_ref),
        }
    }
}

impl<'k> From<&'k HmacKey> for KeySet<'k> {
    fn from(key: &'k HmacKey) -> Self {
        KeySet {
            keys: std::slice::from_ref(key),
        }
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
        assert_eq!(
            format!("{from_file:?}"),
            format!("HmacKey(kid {}, <redacted>)", from_file.kid())
        );

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

    #[test]
    fn kid_names_the_key_and_the_set_checks_only_that_one() {
        let old = HmacKey::from_bytes(b"old secret").unwrap();
        let new = HmacKey::from_bytes(b"new secret").unwrap();
        assert_eq!(old.kid().len(), KID_HEX_LEN);
        assert!(old.kid().bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(old.kid(), new.kid());
        assert_eq!(old.kid(), HmacKey::from_bytes(b"old secret").unwrap().kid());

        let both = [old.clone(), new.clone()];
        let set = KeySet::from(&both[..]);
        let sig = new.sign_hex(b"m");
        assert!(set.verify_hex(b"m", Some(new.kid()), &sig).is_ok());
        assert!(
            set.verify_hex(b"m", None, &sig).is_ok(),
            "no kid: every key is tried"
        );
        let wrong_kid = set.verify_hex(b"m", Some(old.kid()), &sig).unwrap_err();
        assert_eq!(wrong_kid.reason(), RejectReason::BadSignature);

        let only_new = KeySet::from(&new);
        let retired = only_new
            .verify_hex(b"m", Some(old.kid()), &old.sign_hex(b"m"))
            .unwrap_err();
        assert_eq!(retired.reason(), RejectReason::UnknownKey);
        assert_eq!(
            only_new
                .verify_hex(b"m", None, &old.sign_hex(b"m"))
                .unwrap_err()
                .reason(),
            RejectReason::BadSignature
        );
    }
}
