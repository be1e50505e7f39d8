//! Why a heartbeat was refused: a small closed set of reasons, each a stable metrics label.

use std::fmt;

/// Why a message body was refused.
///
/// [`RejectReason::as_str`] is a stable lowercase label meant for metrics (`reason="bad_json"`). Most reasons come
/// from [`decode`](crate::decode); [`NotAllowed`](RejectReason::NotAllowed),
/// [`SelfAddress`](RejectReason::SelfAddress), [`IdConflict`](RejectReason::IdConflict) and
/// [`Replayed`](RejectReason::Replayed) come from the [`Registry`](crate::Registry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RejectReason {
    /// The body is empty or only whitespace.
    Empty,
    /// The body is larger than [`MAX_BODY_BYTES`](crate::MAX_BODY_BYTES).
    TooLarge,
    /// The body is not UTF-8.
    NotUtf8,
    /// The body starts like JSON (an object, an array or a string) but is not valid JSON: syntax, truncation,
    /// nesting deeper than serde_json's limit of 128, a duplicate field.
    BadJson,
    /// The body is JSON but not an object, or a field has the wrong JSON type.
    WrongType,
    /// A required field is missing or null.
    MissingField,
    /// A number field is negative, fractional or larger than `u64::MAX`.
    BadNumber,
    /// `v` is a number other than 1.
    UnsupportedVersion,
    /// `id` is empty, too long or contains control characters.
    BadId,
    /// The address is not `host:port`, has port 0, or is an unspecified, multicast or broadcast IP.
    BadAddr,
    /// `state` is neither `"up"` nor `"leaving"`.
    BadState,
    /// `meta` is larger or more deeply nested than allowed.
    MetaTooLarge,
    /// A shared key is configured and the message carries no signature (plain `host:port` bodies never can).
    Unsigned,
    /// The signature is not hex of the right length or does not match.
    BadSignature,
    /// The address is outside `allowed_networks` (or is a hostname while that list is not empty).
    NotAllowed,
    /// The address is one of the api-server's own listen addresses; routing there would loop.
    SelfAddress,
    /// The id is live at another address and this heartbeat does not prove a newer run (a larger `epoch`): two
    /// servers share an id, or someone tries to take it over. The live holder keeps it.
    IdConflict,
    /// A shared key is configured and the signed `sent_at_ms` is more than one TTL away from this host's clock:
    /// a captured heartbeat published again, or a sender whose clock is far off.
    Replayed,
    /// The heartbeat names (`kid`) a key that is not configured here: a key retired by a rotation, a sender with
    /// a new key that this receiver does not hold yet, or a forgery.
    UnknownKey,
}

impl RejectReason {
    /// Every reason, in declaration order.
    pub const ALL: [RejectReason; 19] = [
        RejectReason::Empty,
        RejectReason::TooLarge,
        RejectReason::NotUtf8,
        RejectReason::BadJson,
        RejectReason::WrongType,
        RejectReason::MissingField,
        RejectReason::BadNumber,
        RejectReason::UnsupportedVersion,
        RejectReason::BadId,
        RejectReason::BadAddr,
        RejectReason::BadState,
        RejectReason::MetaTooLarge,
        RejectReason::Unsigned,
        RejectReason::BadSignature,
        RejectReason::NotAllowed,
        RejectReason::SelfAddress,
        RejectReason::IdConflict,
        RejectReason::Replayed,
        RejectReason::UnknownKey,
    ];

    /// The metrics label, e.g. `"bad_json"`.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::Empty => "empty",
            RejectReason::TooLarge => "too_large",
            RejectReason::NotUtf8 => "not_utf8",
            RejectReason::BadJson => "bad_json",
            RejectReason::WrongType => "wrong_type",
            RejectReason::MissingField => "missing_field",
            RejectReason::BadNumber => "bad_number",
            RejectReason::UnsupportedVersion => "unsupported_version",
            RejectReason::BadId => "bad_id",
            RejectReason::BadAddr => "bad_addr",
            RejectReason::BadState => "bad_state",
            RejectReason::MetaTooLarge => "meta_too_large",
            RejectReason::Unsigned => "unsigned",
            RejectReason::BadSignature => "bad_signature",
            RejectReason::NotAllowed => "not_allowed",
            RejectReason::SelfAddress => "self_address",
            RejectReason::IdConflict => "id_conflict",
            RejectReason::Replayed => "replayed",
            RejectReason::UnknownKey => "unknown_key",
        }
    }

    /// Position in [`RejectReason::ALL`], for counter arrays.
    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refused message: the [`RejectReason`] for metrics plus a short human detail for (rate-limited) logs.
///
/// The detail never quotes more than a short excerpt of the input, so logging it is safe with hostile bodies.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("heartbeat rejected ({reason}): {detail}")]
pub struct Rejection {
    reason: RejectReason,
    detail: String,
}

impl Rejection {
    pub(crate) fn new(reason: RejectReason, detail: impl Into<String>) -> Self {
        Rejection {
            reason,
            detail: detail.into(),
        }
    }

    /// The reason, usable as a metrics label.
    pub fn reason(&self) -> RejectReason {
        self.reason
    }

    /// What was expected and what was found.
    pub fn detail(&self) -> &str {
        &self.detail
    }
}

/// At most 64 characters of untrusted text, quoted, for error details.
pub(crate) fn excerpt(text: &str) -> String {
    const MAX_CHARS: usize = 64;
    match text.char_indices().nth(MAX_CHARS) {
        Some((cut, _)) => format!("{:?}…", &text[..cut]),
        None => format!("{text:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_is_in_index_order_and_labels_are_unique() {
        let mut labels = std::collections::HashSet::new();
        for (i, reason) in RejectReason::ALL.iter().enumerate() {
            assert_eq!(reason.index(), i);
            assert!(labels.insert(reason.as_str()));
        }
    }

    #[test]
    fn excerpt_is_bounded_and_char_safe() {
        let long = "é".repeat(1000);
        let short = excerpt(&long);
        assert!(short.chars().count() < 80, "{short}");
        assert_eq!(excerpt("a:1"), "\"a:1\"");
    }
}
