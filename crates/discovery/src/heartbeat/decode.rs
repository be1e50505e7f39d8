//! Decoding of untrusted message bodies into a [`Message`]: every field checked, the address parsed once and
//! handed on with the message.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use super::addr::ServerAddr;
use super::encode::canonical_meta_len;
use super::{
    Heartbeat, KeySet, MAX_BODY_BYTES, MAX_ID_BYTES, MAX_META_BYTES, MAX_META_DEPTH, Message,
    State, VERSION,
};
use crate::reject::{RejectReason, Rejection, excerpt};

/// Decodes and validates an untrusted message body. Never panics, whatever the bytes.
///
/// A body whose first non-blank byte is `{` is a JSON heartbeat; anything else must be a plain `host:port`,
/// optionally surrounded by whitespace. With keys (`Some(&key)`, or a slice of several during a rotation), JSON
/// heartbeats must carry a valid `sig` by the key their `kid` names, and plain bodies are refused as
/// [`Unsigned`](RejectReason::Unsigned) (they cannot carry one). Unknown JSON fields are ignored.
pub fn decode<'k>(body: &[u8], keys: impl Into<KeySet<'k>>) -> Result<Message, Rejection> {
    let keys = keys.into();
    decode_with_addr(body, keys, keys.is_empty()).map(|decoded| decoded.message)
}

/// A decoded message with its address already parsed, so that the registry does not parse it again.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Decoded {
    /// What the sender said.
    pub(crate) message: Message,
    /// [`Message::addr`], parsed and checked.
    pub(crate) addr: ServerAddr,
}

/// [`decode`], keeping the parsed address. `allow_plain` lets plain bodies through even with keys: the registry
/// does so when `allowed_networks` vouches for the address instead (ARCHITECTURE.md §4.1).
pub(crate) fn decode_with_addr(
    body: &[u8],
    keys: KeySet<'_>,
    allow_plain: bool,
) -> Result<Decoded, Rejection> {
    if body.len() > MAX_BODY_BYTES {
        return Err(Rejection::new(
            RejectReason::TooLarge,
            format!(
                "expected at most {MAX_BODY_BYTES} bytes, found {}",
                body.len()
            ),
        ));
    }
    let text = std::str::from_utf8(body)
        .map_err(|e| Rejection::new(RejectReason::NotUtf8, format!("expected UTF-8 text: {e}")))?;
    let text = text.trim();
    if text.is_empty() {
        return Err(Rejection::new(
            RejectReason::Empty,
            "expected a heartbeat, found an empty body",
        ));
    }
    if text.starts_with('{') {
        decode_json(text, keys)
    } else {
        decode_plain(text, allow_plain)
    }
}

fn decode_plain(text: &str, allow_plain: bool) -> Result<Decoded, Rejection> {
    match ServerAddr::parse_announced(text) {
        Ok(_) if !allow_plain => Err(Rejection::new(
            RejectReason::Unsigned,
            "a shared key is configured: plain host:port bodies cannot be signed",
        )),
        Ok(addr) => Ok(Decoded {
            message: Message::Plain {
                addr: text.to_owned(),
            },
            addr,
        }),
        // Valid JSON that is not an object (array, string, number...) is a type error, not a bad address.
        Err(_) if serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok() => {
            Err(Rejection::new(
                RejectReason::WrongType,
                format!(
                    "expected a JSON object or host:port, found {}",
                    excerpt(text)
                ),
            ))
        }
        // Broken JSON (an unclosed array, nesting past serde_json's depth limit, an unterminated string) is a JSON
        // error too, as long as it cannot be the start of a bracketed IPv6 address.
        Err(_) if looks_like_json(text) => {
            let error = serde_json::from_str::<serde::de::IgnoredAny>(text)
                .err()
                .map_or_else(String::new, |e| e.to_string());
            Err(Rejection::new(
                RejectReason::BadJson,
                format!("expected a JSON object or host:port, found broken JSON: {error}"),
            ))
        }
        Err(detail) => Err(Rejection::new(RejectReason::BadAddr, detail)),
    }
}

/// True for text that starts like a JSON array or string and not like `[ipv6]:port`: an IPv6 literal in brackets
/// holds only hex digits, `:`, `.` and a `%zone` before its `]`.
fn looks_like_json(text: &str) -> bool {
    if text.starts_with('"') {
        return true;
    }
    let Some(rest) = text.strip_prefix('[') else {
        return false;
    };
    let inside = rest.split(']').next().unwrap_or(rest);
    !inside
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'.' | b'%' | b'_' | b'-'))
}

/// Every field as a raw JSON value, so each can be checked and reported precisely. Serde refuses duplicate keys
/// here (ambiguous input) and skips unknown ones (forward compatibility).
#[derive(Deserialize)]
struct Wire {
    v: Option<Value>,
    id: Option<Value>,
    addr: Option<Value>,
    epoch: Option<Value>,
    seq: Option<Value>,
    sent_at_ms: Option<Value>,
    interval_ms: Option<Value>,
    state: Option<Value>,
    meta: Option<Value>,
    sig: Option<Value>,
    kid: Option<Value>,
}

fn decode_json(text: &str, keys: KeySet<'_>) -> Result<Decoded, Rejection> {
    // serde_json bounds nesting (128 levels), so hostile depth is an error, not a stack overflow.
    let wire: Wire = serde_json::from_str(text).map_err(|e| {
        Rejection::new(
            RejectReason::BadJson,
            format!("expected a JSON heartbeat: {e}"),
        )
    })?;
    match wire.v {
        None => return Err(missing("v")),
        Some(Value::Number(ref n)) if n.as_u64() == Some(VERSION) => {}
        Some(Value::Number(n)) => {
            return Err(Rejection::new(
                RejectReason::UnsupportedVersion,
                format!("expected v = {VERSION}, found {n}"),
            ));
        }
        Some(other) => return Err(wrong_type("v", "a number", &other)),
    }
    let state = match string(wire.state, "state")?.as_str() {
        "up" => State::Up,
        "leaving" => State::Leaving,
        other => {
            return Err(Rejection::new(
                RejectReason::BadState,
                format!(
                    "expected state \"up\" or \"leaving\", found {}",
                    excerpt(other)
                ),
            ));
        }
    };
    let meta = match wire.meta {
        None => BTreeMap::new(),
        Some(Value::Object(map)) => map.into_iter().collect(),
        Some(other) => return Err(wrong_type("meta", "an object", &other)),
    };
    let sig = match wire.sig {
        None => None,
        Some(Value::String(s)) => Some(s),
        Some(other) => return Err(wrong_type("sig", "a string", &other)),
    };
    let kid = match wire.kid {
        None => None,
        Some(Value::String(s)) => Some(s),
        Some(other) => return Err(wrong_type("kid", "a string", &other)),
    };
    let hb = Heartbeat {
        id: string(wire.id, "id")?,
        addr: string(wire.addr, "addr")?,
        epoch: number(wire.epoch, "epoch")?.ok_or_else(|| missing("epoch"))?,
        seq: number(wire.seq, "seq")?.ok_or_else(|| missing("seq"))?,
        sent_at_ms: number(wire.sent_at_ms, "sent_at_ms")?.unwrap_or(0),
        interval_ms: number(wire.interval_ms, "interval_ms")?.unwrap_or(0),
        state,
        meta,
        sig,
        kid,
    };
    let addr = validate(&hb)?;
    if !keys.is_empty() {
        hb.verify(keys)?;
    }
    Ok(Decoded {
        message: Message::Json(hb),
        addr,
    })
}

/// What [`Heartbeat::validate`] checks, returning the parsed address.
pub(super) fn validate(hb: &Heartbeat) -> Result<ServerAddr, Rejection> {
    validate_id(&hb.id)?;
    let addr = ServerAddr::parse_announced(&hb.addr)
        .map_err(|detail| Rejection::new(RejectReason::BadAddr, detail))?;
    validate_meta(&hb.meta)?;
    Ok(addr)
}

fn missing(field: &str) -> Rejection {
    Rejection::new(
        RejectReason::MissingField,
        format!("expected field {field:?}, found none (or null)"),
    )
}

fn wrong_type(field: &str, expected: &str, found: &Value) -> Rejection {
    let found = match found {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    };
    Rejection::new(
        RejectReason::WrongType,
        format!("expected {field:?} to be {expected}, found {found}"),
    )
}

fn string(value: Option<Value>, field: &str) -> Result<String, Rejection> {
    match value {
        None => Err(missing(field)),
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(wrong_type(field, "a string", &other)),
    }
}

/// `Ok(None)` when absent; integers in `0..=u64::MAX` only (serde_json reads larger ones as floats).
fn number(value: Option<Value>, field: &str) -> Result<Option<u64>, Rejection> {
    match value {
        None => Ok(None),
        Some(Value::Number(n)) => n.as_u64().map(Some).ok_or_else(|| {
            Rejection::new(
                RejectReason::BadNumber,
                format!("expected {field:?} to be an integer in 0..=2^64-1, found {n}"),
            )
        }),
        Some(other) => Err(wrong_type(field, "a number", &other)),
    }
}

fn validate_id(id: &str) -> Result<(), Rejection> {
    let bad = |why: String| Err(Rejection::new(RejectReason::BadId, why));
    if id.is_empty() {
        return bad("expected a non-empty id, found \"\"".to_owned());
    }
    if id.len() > MAX_ID_BYTES {
        return bad(format!(
            "expected an id of at most {MAX_ID_BYTES} bytes, found {} bytes",
            id.len()
        ));
    }
    if id.chars().any(char::is_control) {
        return bad(format!(
            "expected an id without control characters, found {}",
            excerpt(id)
        ));
    }
    Ok(())
}

fn validate_meta(meta: &BTreeMap<String, Value>) -> Result<(), Rejection> {
    // Iterative so that a locally built, absurdly deep value cannot overflow the stack here.
    let mut stack: Vec<(&Value, usize)> = meta.values().map(|v| (v, 2)).collect();
    while let Some((value, depth)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match value {
            Value::Array(items) => Box::new(items.iter()),
            Value::Object(map) => Box::new(map.values()),
            _ => continue,
        };
        if depth > MAX_META_DEPTH {
            return Err(Rejection::new(
                RejectReason::MetaTooLarge,
                format!("expected meta nested at most {MAX_META_DEPTH} levels deep, found deeper"),
            ));
        }
        stack.extend(children.map(|c| (c, depth + 1)));
    }
    let len = canonical_meta_len(meta);
    if len > MAX_META_BYTES {
        return Err(Rejection::new(
            RejectReason::MetaTooLarge,
            format!("expected meta of at most {MAX_META_BYTES} bytes, found {len} bytes"),
        ));
    }
    Ok(())
}
