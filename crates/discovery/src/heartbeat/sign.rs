//! HMAC-SHA256 signing of heartbeats over a canonical encoding.
//!
//! See [`HmacKey`] for the canonical encoding the signature covers.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use hmac::{Hmac, KeyInit, Mac};
use serde_json::Value;
use sha2::Sha256;

use crate::heartbeat::Heartbeat;
use crate::reject::{RejectReason, Rejection};

type HmacSha256 = Hmac<Sha256>;

/// Largest key file read: a key is a secret of a few dozen bytes; anything much bigger is the wrong file.
pub const MAX_KEY_BYTES: usize = 4096;

/// A shared HMAC-SHA256 key for signing and verifying heartbeats.
///
/// Load it from a file ([`HmacKey::from_file`]) rather than from a command-line argument, which other local users
/// can read in the process list. `Debug` never prints the key.
///
/// # Canonical encoding (what `sig` covers)
///
/// The signed bytes are the heartbeat re-serialized from its parsed fields, never the bytes received, so that field
/// order, whitespace and escaping chosen by the sender do not matter:
///
/// ```text
/// {"v":1,"id":<str>,"addr":<str>,"epoch":<u64>,"seq":<u64>,"sent_at_ms":<u64>,"interval_ms":<u64>,"state":<"up"|"leaving">,"meta":<value>}
/// ```
///
/// - exactly these keys in exactly this order, no whitespace anywhere; `sig` itself is left out;
/// - absent optional fields take their defaults first (`sent_at_ms`, `interval_ms`: 0; `meta`: `{}`);
/// - integers in plain decimal without leading zeros or `+` (a `-` only for negative integers inside `meta`);
/// - strings in double quotes, escaping only `"` as `\"`, `\` as `\\`, the controls U+0008, U+0009, U+000A,
///   U+000C, U+000D as `\b \t \n \f \r`, other controls below U+0020 as `\u00xx` (lowercase hex); everything else,
///   including non-ASCII and `/`, as raw UTF-8;
/// - objects (at any depth inside `meta`) with keys sorted by their UTF-8 bytes; arrays in order;
///   `null`, `true`, `false` as such; non-integer numbers as serde_json prints them (shortest round-trip form),
///   so signers in other languages should keep floats out of `meta`.
///
/// Unknown top-level fields are tolerated for forward compatibility but are not signed: a v1 reader ignores them,
/// so changing them cannot change what it does. The wire form written by [`Heartbeat::encode`] is this canonical
/// text with `,"sig":"<64 lowercase hex>"` inserted before the closing brace.
///
/// [`Heartbeat::encode`]: crate::Heartbeat::encode
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

/// The canonical encoding described in the module docs.
pub(crate) fn canonical(hb: &Heartbeat) -> Vec<u8> {
    let mut out = Vec::with_capacity(160 + hb.id.len() + hb.addr.len());
    out.extend_from_slice(b"{\"v\":1,\"id\":");
    write_str(&mut out, &hb.id);
    out.extend_from_slice(b",\"addr\":");
    write_str(&mut out, &hb.addr);
    for (key, n) in [
        ("epoch", hb.epoch),
        ("seq", hb.seq),
        ("sent_at_ms", hb.sent_at_ms),
        ("interval_ms", hb.interval_ms),
    ] {
        out.extend_from_slice(b",\"");
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(b"\":");
        out.extend_from_slice(n.to_string().as_bytes());
    }
    out.extend_from_slice(b",\"state\":");
    write_str(&mut out, hb.state.as_str());
    out.extend_from_slice(b",\"meta\":");
    write_object(&mut out, hb.meta.iter());
    out.push(b'}');
    out
}

/// Length of `meta` in canonical form, for the size limit.
pub(crate) fn canonical_meta_len(meta: &std::collections::BTreeMap<String, Value>) -> usize {
    let mut out = Vec::new();
    write_object(&mut out, meta.iter());
    out.len()
}

fn write_object<'a>(out: &mut Vec<u8>, entries: impl Iterator<Item = (&'a String, &'a Value)>) {
    let mut entries: Vec<_> = entries.collect();
    // Sorting here, not relying on the map type, keeps the encoding stable even if serde_json's
    // `preserve_order` feature gets switched on by another crate in the build.
    entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    out.push(b'{');
    for (i, (key, value)) in entries.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str(out, key);
        out.push(b':');
        write_value(out, value);
    }
    out.push(b'}');
}

fn write_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => out.extend_from_slice(n.to_string().as_bytes()),
        Value::String(s) => write_str(out, s),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(out, item);
            }
            out.push(b']');
        }
        Value::Object(map) => write_object(out, map.iter()),
    }
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\u{08}' => out.extend_from_slice(b"\\b"),
            '\t' => out.extend_from_slice(b"\\t"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\u{0c}' => out.extend_from_slice(b"\\f"),
            '\r' => out.extend_from_slice(b"\\r"),
            c if (c as u32) < 0x20 => {
                out.extend_from_slice(format!("\\u{:04x}", c as u32).as_bytes())
            }
            c => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn canonical_form_is_exact() {
        let mut hb = Heartbeat::new("a\"b", "10.0.0.1:80", 7, 9);
        hb.sent_at_ms = 1;
        hb.interval_ms = 5000;
        hb.meta.insert(
            "z".into(),
            serde_json::json!({"y": [1, "\u{1}é/"], "b": null}),
        );
        hb.meta.insert("a".into(), serde_json::json!(true));
        let text = String::from_utf8(canonical(&hb)).unwrap();
        assert_eq!(
            text,
            r#"{"v":1,"id":"a\"b","addr":"10.0.0.1:80","epoch":7,"seq":9,"sent_at_ms":1,"interval_ms":5000,"state":"up","meta":{"a":true,"z":{"b":null,"y":[1,"\u0001é/"]}}}"#
        );
        // The canonical text is valid JSON that means the same heartbeat.
        let back: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back["meta"]["z"]["y"][1], "\u{1}é/");
    }

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
