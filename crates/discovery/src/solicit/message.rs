//! The solicitation message (ARCHITECTURE.md §4.1 "Solicitation"): what a starting api-server publishes on the
//! solicitation topic, signed like heartbeats when keys are configured, and its strict decoding on the data-server.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::heartbeat::HmacKey;

/// The `solicit` field of every solicitation; another value is refused as malformed.
pub const SOLICIT_VERSION: u64 = 1;
/// Largest solicitation body accepted (a real one is about 100 bytes plus 100 per key).
pub const MAX_SOLICITATION_BYTES: usize = 4096;
/// Longest `from` and `nonce`, in bytes.
pub const MAX_SOLICIT_FIELD_BYTES: usize = 128;
/// A signed solicitation whose `sent_at_ms` is further than this from the receiver's clock is refused (a replay),
/// and any solicitation nsqd stamped longer ago than this is ignored (stale: it waited in a topic without channels).
pub const SOLICITATION_MAX_AGE: Duration = Duration::from_secs(30);

/// One request to every data server on the solicitation topic: "announce yourself now, within `spread`".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Solicitation {
    /// Who asks (the api-server's instance name); for logs only.
    pub from: String,
    /// Random per solicitation: the same one arriving through several nsqd is answered once.
    pub nonce: String,
    /// Sender's wall clock, ms since the Unix epoch; checked only when a key is configured.
    pub sent_at_ms: u64,
    /// Each receiver answers after a random delay in `0..=spread_ms` (capped by its own interval).
    pub spread_ms: u64,
}

/// Why a solicitation body was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SolicitError {
    /// Not a solicitation of this version: bad JSON, a missing or out-of-range field.
    #[error("malformed solicitation: {0}")]
    Malformed(String),
    /// Well-formed but not trusted: unsigned, signed by another key, a bad signature, or a replay.
    #[error("solicitation refused: {0}")]
    Rejected(String),
}

#[derive(Deserialize)]
struct Wire {
    solicit: u64,
    from: String,
    nonce: String,
    sent_at_ms: u64,
    spread_ms: u64,
    #[serde(default)]
    sigs: Option<BTreeMap<String, String>>,
}

/// `from` and `nonce` are limited to these bytes so that the canonical text needs no JSON escaping: a signer in
/// another language produces the same bytes by plain concatenation.
fn plain_field(s: &str) -> bool {
    (1..=MAX_SOLICIT_FIELD_BYTES).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:#-".contains(&b))
}

/// `s` with every byte outside the allowed set replaced by `_`, cut to the allowed length (never empty).
pub(crate) fn to_plain_field(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._:#-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(MAX_SOLICIT_FIELD_BYTES)
        .collect();
    if out.is_empty() {
        out.push('_');
    }
    out
}

impl Solicitation {
    /// A solicitation from `from` (made plain: see [`Solicitation::decode`]) with a fresh random nonce, stamped now.
    pub fn new(from: &str, spread: Duration) -> Solicitation {
        Solicitation {
            from: to_plain_field(from),
            nonce: format!("{:016x}", rand::random::<u64>()),
            sent_at_ms: crate::announce::now_ms(),
            spread_ms: u64::try_from(spread.as_millis()).unwrap_or(u64::MAX),
        }
    }

    /// The bytes a key signs: the fields in this fixed order, no spaces, no `sigs`.
    pub fn canonical(&self) -> String {
        format!(
            r#"{{"solicit":{SOLICIT_VERSION},"from":"{}","nonce":"{}","sent_at_ms":{},"spread_ms":{}}}"#,
            self.from, self.nonce, self.sent_at_ms, self.spread_ms
        )
    }

    /// The wire form: the canonical text, plus `"sigs":{"<kid>":"<hex>",…}` with one signature per key when
    /// `keys` is not empty (during a rotation every data server finds the key it holds).
    pub fn encode(&self, keys: &[HmacKey]) -> Vec<u8> {
        let canonical = self.canonical();
        if keys.is_empty() {
            return canonical.into_bytes();
        }
        let sigs: Vec<String> = keys
            .iter()
            .map(|k| format!(r#""{}":"{}""#, k.kid(), k.sign_hex(canonical.as_bytes())))
            .collect();
        let mut out = canonical;
        out.pop();
        out.push_str(&format!(r#","sigs":{{{}}}}}"#, sigs.join(",")));
        out.into_bytes()
    }

    /// Parses an untrusted body. With `key`, the signature made with it (found by its key id in `sigs`) must
    /// verify and `sent_at_ms` must be within [`SOLICITATION_MAX_AGE`] of `now_ms`; without, `sigs` is ignored.
    pub fn decode(
        body: &[u8],
        key: Option<&HmacKey>,
        now_ms: u64,
    ) -> Result<Solicitation, SolicitError> {
        let malformed = |m: String| SolicitError::Malformed(m);
        if body.len() > MAX_SOLICITATION_BYTES {
            return Err(malformed(format!(
                "expected at most {MAX_SOLICITATION_BYTES} bytes, found {}",
                body.len()
            )));
        }
        let wire: Wire = serde_json::from_slice(body).map_err(|e| malformed(e.to_string()))?;
        if wire.solicit != SOLICIT_VERSION {
            return Err(malformed(format!(
                "expected solicit {SOLICIT_VERSION}, found {}",
                wire.solicit
            )));
        }
        for (name, value) in [("from", &wire.from), ("nonce", &wire.nonce)] {
            if !plain_field(value) {
                return Err(malformed(format!(
                    "expected {name} of 1..={MAX_SOLICIT_FIELD_BYTES} bytes of [A-Za-z0-9._:#-]"
                )));
            }
        }
        let solicitation = Solicitation {
            from: wire.from,
            nonce: wire.nonce,
            sent_at_ms: wire.sent_at_ms,
            spread_ms: wire.spread_ms,
        };
        let Some(key) = key else {
            return Ok(solicitation);
        };
        let rejected = |m: String| SolicitError::Rejected(m);
        let sigs = wire
            .sigs
            .ok_or_else(|| rejected("unsigned, and a key is configured".into()))?;
        let sig = sigs.get(key.kid()).ok_or_else(|| {
            rejected(format!(
                "no signature by this server's key {} among {} signatures",
                key.kid(),
                sigs.len()
            ))
        })?;
        key.verify_hex(solicitation.canonical().as_bytes(), sig)
            .map_err(|r| rejected(r.detail().to_owned()))?;
        let skew = now_ms.abs_diff(solicitation.sent_at_ms);
        if u128::from(skew) > SOLICITATION_MAX_AGE.as_millis() {
            return Err(rejected(format!(
                "sent_at_ms is {skew} ms away from this clock (more than {SOLICITATION_MAX_AGE:?}): a replay?"
            )));
        }
        Ok(solicitation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: &[u8]) -> HmacKey {
        HmacKey::from_bytes(b).unwrap()
    }

    #[test]
    fn round_trip_unsigned_and_signed() {
        let s = Solicitation::new("api 1", Duration::from_millis(250));
        assert_eq!(s.from, "api_1");
        let plain = s.encode(&[]);
        assert_eq!(
            Solicitation::decode(&plain, None, s.sent_at_ms),
            Ok(s.clone())
        );
        let (old, new) = (key(b"old key"), key(b"new key"));
        let signed = s.encode(&[old.clone(), new.clone()]);
        for k in [&old, &new] {
            assert_eq!(
                Solicitation::decode(&signed, Some(k), s.sent_at_ms),
                Ok(s.clone())
            );
        }
        assert_eq!(Solicitation::decode(&signed, None, 0), Ok(s.clone()));
    }

    #[test]
    fn untrusted_ones_are_rejected() {
        let k = key(b"secret");
        let s = Solicitation::new("a", Duration::ZERO);
        let reject = |body: &[u8], now| {
            matches!(
                Solicitation::decode(body, Some(&k), now),
                Err(SolicitError::Rejected(_))
            )
        };
        assert!(reject(&s.encode(&[]), s.sent_at_ms), "unsigned");
        assert!(
            reject(&s.encode(&[key(b"other")]), s.sent_at_ms),
            "another key"
        );
        let forged = String::from_utf8(s.encode(std::slice::from_ref(&k)))
            .unwrap()
            .replace(&format!("\"spread_ms\":{}", s.spread_ms), "\"spread_ms\":1");
        assert!(
            reject(forged.as_bytes(), s.sent_at_ms),
            "changed after signing"
        );
        assert!(
            reject(&s.encode(std::slice::from_ref(&k)), s.sent_at_ms + 60_000),
            "replayed"
        );
    }

    #[test]
    fn malformed_ones_are_named() {
        for body in [
            &b"10.0.0.1:80"[..],
            br#"{"solicit":2,"from":"a","nonce":"n","sent_at_ms":1,"spread_ms":0}"#,
            br#"{"solicit":1,"from":"a b","nonce":"n","sent_at_ms":1,"spread_ms":0}"#,
            br#"{"solicit":1,"from":"a","nonce":"","sent_at_ms":1,"spread_ms":0}"#,
            br#"{"solicit":1,"from":"a","nonce":"n","sent_at_ms":-1,"spread_ms":0}"#,
            br#"{"solicit":1,"from":"a","nonce":"n","sent_at_ms":1}"#,
        ] {
            assert!(
                matches!(
                    Solicitation::decode(body, None, 1),
                    Err(SolicitError::Malformed(_))
                ),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }
}
