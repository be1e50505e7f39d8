//! The heartbeat message, version 1: the types and their wire spec (on [`Heartbeat`]), with one file per step.
//!
//! - `decode.rs`: untrusted bytes to a validated [`Message`], the announced address parsed once (`addr.rs`) and
//!   handed to the registry with it;
//! - `encode.rs`: the canonical bytes, which are both what is signed and the body an announcer publishes;
//! - `sign.rs`: the shared [`HmacKey`] that signs and verifies them, its key id, and the [`KeySet`] a receiver
//!   checks against (several keys during a rotation).
//!
//! Everything here is pure: no I/O apart from reading a key file in [`HmacKey::from_file`].

use std::collections::BTreeMap;

use serde_json::Value;

use crate::reject::{RejectReason, Rejection};

pub(crate) mod addr;
mod decode;
mod encode;
mod sign;

pub use decode::decode;
pub(crate) use decode::{Decoded, decode_with_addr};
pub use sign::{HmacKey, KID_HEX_LEN, KeyError, KeySet, MAX_KEY_BYTES};

/// The only heartbeat version this crate reads and writes.
pub const VERSION: u64 = 1;
/// Largest accepted message body; a heartbeat is a few hundred bytes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Longest accepted `id`, in bytes.
pub const MAX_ID_BYTES: usize = 128;
/// Largest accepted `meta`, in bytes of its canonical encoding.
pub const MAX_META_BYTES: usize = 8 * 1024;
/// Deepest accepted nesting inside `meta` (`{"a":{}}` has depth 2).
pub const MAX_META_DEPTH: usize = 16;

/// What a heartbeat says about its sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Serving; keep routing to it.
    Up,
    /// Shutting down gracefully; stop routing to it now.
    Leaving,
}

impl State {
    /// `"up"` or `"leaving"`, as on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Up => "up",
            State::Leaving => "leaving",
        }
    }
}

/// A version 1 JSON heartbeat (the `v` field is implied).
///
/// # Wire format, version 1
///
/// A message body is either a JSON object or a plain `host:port` (what existing Go services publish), in UTF-8,
/// at most [`MAX_BODY_BYTES`], surrounded by optional whitespace. The JSON fields are those of this struct plus
/// `"v": 1`; `v`, `id`, `addr`, `epoch`, `seq` and `state` are required, `sent_at_ms` and `interval_ms` default to
/// 0 and `meta` to `{}`, and `sig` (with `kid`, the id of the key) is present when the sender signs. Unknown fields are ignored, so a field can be
/// added to v1 without breaking receivers as long as ignoring it changes nothing a v1 receiver does; anything a
/// receiver must understand needs `v: 2`. The address is a `host:port` with a port of 1 to 65535 written in plain
/// digits, and an IPv4 address, an `[IPv6]` address or a DNS name that is neither unspecified, multicast nor
/// broadcast; see [`decode`] for what is refused and why.
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
/// so changing them cannot change what it does. The signature is the lowercase hex HMAC-SHA256 of these bytes
/// under the shared [`HmacKey`]. The wire form written by [`Heartbeat::encode`] is this canonical text with
/// `,"kid":"<16 lowercase hex>","sig":"<64 lowercase hex>"` inserted before the closing brace. `kid` is outside
/// the signed bytes on purpose (rule 2 of ARCHITECTURE.md §4.1): it only selects the key to check, so a forged one
/// can only make verification fail.
#[derive(Debug, Clone, PartialEq)]
pub struct Heartbeat {
    /// Stable identity of the server, 1..=[`MAX_ID_BYTES`] bytes without control characters.
    pub id: String,
    /// Where to reach it: `host:port`.
    pub addr: String,
    /// One run of the process (e.g. its boot time in ms); a restart must use a larger epoch.
    pub epoch: u64,
    /// Counts up within an epoch.
    pub seq: u64,
    /// Sender's wall clock, ms since the Unix epoch (informational: clocks differ, nsqd's timestamp decides staleness).
    pub sent_at_ms: u64,
    /// How often the sender announces, in ms (informational).
    pub interval_ms: u64,
    /// Up or leaving.
    pub state: State,
    /// Free-form metadata; `"weight"` (a positive integer) is used by the balancer.
    pub meta: BTreeMap<String, Value>,
    /// Lowercase hex HMAC-SHA256 over [the canonical encoding](Heartbeat#canonical-encoding-what-sig-covers), when
    /// signed.
    pub sig: Option<String>,
    /// The [key id](HmacKey::kid) of the key that made `sig`; set by [`Heartbeat::sign`]. Absent in heartbeats
    /// signed by senders from before key ids: a receiver then tries each of its keys.
    pub kid: Option<String>,
}

impl Heartbeat {
    /// An unsigned `up` heartbeat with empty meta and zero times.
    pub fn new(id: impl Into<String>, addr: impl Into<String>, epoch: u64, seq: u64) -> Heartbeat {
        Heartbeat {
            id: id.into(),
            addr: addr.into(),
            epoch,
            seq,
            sent_at_ms: 0,
            interval_ms: 0,
            state: State::Up,
            meta: BTreeMap::new(),
            sig: None,
            kid: None,
        }
    }

    /// Checks what [`decode`] checks beyond JSON types: id, address and meta bounds. Announcers call it once at
    /// start-up so that a bad configuration fails early instead of being rejected by every receiver.
    pub fn validate(&self) -> Result<(), Rejection> {
        decode::validate(self).map(drop)
    }

    /// The bytes `sig` covers (see [the canonical encoding](Heartbeat#canonical-encoding-what-sig-covers)).
    pub fn canonical_bytes(&self) -> Vec<u8> {
        encode::canonical(self)
    }

    /// Sets `sig` and `kid` for the current field values; sign again after changing any field.
    pub fn sign(&mut self, key: &HmacKey) {
        self.sig = Some(key.sign_hex(&self.canonical_bytes()));
        self.kid = Some(key.kid().to_owned());
    }

    /// Checks `sig` against the key named by `kid` among `keys` (each key when `kid` is absent):
    /// [`Unsigned`](RejectReason::Unsigned) when `sig` is absent, [`UnknownKey`](RejectReason::UnknownKey) when no
    /// key has that id, [`BadSignature`](RejectReason::BadSignature) when malformed or wrong.
    pub fn verify<'k>(&self, keys: impl Into<KeySet<'k>>) -> Result<(), Rejection> {
        match &self.sig {
            None => Err(Rejection::new(
                RejectReason::Unsigned,
                "a shared key is configured: expected a sig field, found none",
            )),
            Some(sig) => keys
                .into()
                .verify_hex(&self.canonical_bytes(), self.kid.as_deref(), sig),
        }
    }

    /// The JSON body to publish: the canonical encoding, plus `sig` when signed.
    pub fn encode(&self) -> Vec<u8> {
        encode::wire(self)
    }
}

/// A decoded, validated message body.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// A JSON heartbeat.
    Json(Heartbeat),
    /// A plain `host:port` body (what existing Go services publish): the address is also the id, and the registry
    /// treats every one as fresh since it has no `(epoch, seq)`.
    Plain {
        /// The address, whitespace trimmed.
        addr: String,
    },
}

impl Message {
    /// The server's identity (the address for plain bodies).
    pub fn id(&self) -> &str {
        match self {
            Message::Json(hb) => &hb.id,
            Message::Plain { addr } => addr,
        }
    }

    /// The server's `host:port`.
    pub fn addr(&self) -> &str {
        match self {
            Message::Json(hb) => &hb.addr,
            Message::Plain { addr } => addr,
        }
    }
}

#[cfg(test)]
mod tests;
