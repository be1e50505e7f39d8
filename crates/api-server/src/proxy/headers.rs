//! Header rewriting: hop-by-hop headers out, forwarding headers and a request id in.

use std::net::{IpAddr, SocketAddr};

use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use bytes::Bytes;
use rand::Rng;

/// `X-Request-Id`.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static FORWARDED: HeaderName = HeaderName::from_static("forwarded");

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Headers meaningful for one connection only (RFC 9110 7.6.1), never forwarded. Parsed names, so removing them
/// costs a hash lookup each and no parsing.
static HOP_BY_HOP: [&HeaderName; 9] = [
    &header::CONNECTION,
    &KEEP_ALIVE,
    &PROXY_CONNECTION,
    &header::PROXY_AUTHENTICATE,
    &header::PROXY_AUTHORIZATION,
    &header::TE,
    &header::TRAILER,
    &header::TRANSFER_ENCODING,
    &header::UPGRADE,
];

/// Whether any of `names` is present: one pass over the (few) headers a request has, cheaper than a hash lookup
/// per name when, as usual, none is.
fn any_of(headers: &HeaderMap, names: &[&HeaderName]) -> bool {
    headers.keys().any(|key| names.contains(&key))
}

/// Removes hop-by-hop headers, including every header the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if !any_of(headers, &HOP_BY_HOP) {
        return;
    }
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// The incoming request id when it is short printable ASCII, else a new random one.
pub fn request_id(headers: &HeaderMap) -> HeaderValue {
    let incoming = headers.get(&X_REQUEST_ID).filter(|v| {
        let b = v.as_bytes();
        !b.is_empty() && b.len() <= 128 && b.iter().all(|c| c.is_ascii_graphic())
    });
    match incoming {
        Some(v) => v.clone(),
        None => {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            let mut n = rand::rng().random::<u128>();
            let mut id = [0u8; 32];
            for digit in id.iter_mut().rev() {
                *digit = HEX[(n & 0xf) as usize];
                n >>= 4;
            }
            HeaderValue::from_bytes(&id).expect("hex is a valid header value")
        }
    }
}

/// What the forwarding headers say about one client connection, worked out once when it is accepted.
#[derive(Debug, Clone)]
pub struct PeerHeaders {
    /// The client's address alone, the whole `X-Forwarded-For` of a first hop.
    forwarded_for: HeaderValue,
    /// `for=<ip>;proto=http`, the start of this hop's `Forwarded` element.
    node: String,
    /// A trusted proxy's forwarding headers are kept and appended to.
    trusted: bool,
}

impl PeerHeaders {
    /// For a connection from `peer`; `trusted` when it is a proxy whose forwarding headers count.
    pub fn new(peer: SocketAddr, trusted: bool) -> PeerHeaders {
        let ip = peer.ip();
        let node = match ip {
            IpAddr::V4(v4) => format!("for={v4};proto=http"),
            IpAddr::V6(v6) => format!("for=\"[{v6}]\";proto=http"),
        };
        PeerHeaders {
            forwarded_for: HeaderValue::from_str(&ip.to_string())
                .expect("an IP address is a valid header value"),
            node,
            trusted,
        }
    }
}

static FORWARDING: [&HeaderName; 4] = [
    &X_FORWARDED_FOR,
    &X_FORWARDED_PROTO,
    &X_FORWARDED_HOST,
    &FORWARDED,
];

/// `earlier, this` (a list header grown by one hop) or `this` alone.
fn appended(earlier: Option<&HeaderValue>, this: &[u8]) -> Option<HeaderValue> {
    let mut value = Vec::with_capacity(this.len() + earlier.map_or(0, |e| e.len() + 2));
    if let Some(earlier) = earlier {
        value.extend_from_slice(earlier.as_bytes());
        value.extend_from_slice(b", ");
    }
    value.extend_from_slice(this);
    HeaderValue::from_maybe_shared(Bytes::from(value)).ok()
}

/// Adds `X-Forwarded-For`, `X-Forwarded-Proto`, `X-Forwarded-Host`, RFC 7239 `Forwarded` and `X-Request-Id`,
/// and drops `Host` so that the upstream sees its own address there. From a trusted peer (another proxy) the
/// earlier hops are kept and appended to; from anyone else they are dropped, since a client could forge them.
pub fn add_forwarding(headers: &mut HeaderMap, peer: &PeerHeaders, request_id: &HeaderValue) {
    if !peer.trusted && any_of(headers, &FORWARDING) {
        for name in FORWARDING {
            headers.remove(name);
        }
    }
    let host = headers.remove(header::HOST);
    let forwarded_for = match headers.get(&X_FORWARDED_FOR) {
        None => Some(peer.forwarded_for.clone()),
        earlier => appended(earlier, peer.forwarded_for.as_bytes()),
    };
    if let Some(v) = forwarded_for {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));

    let mut element = Vec::with_capacity(peer.node.len() + 32);
    element.extend_from_slice(peer.node.as_bytes());
    if let Some(host) = host {
        element.extend_from_slice(b";host=\"");
        element.extend(host.as_bytes().iter().filter(|&&b| b != b'"' && b != b'\\'));
        element.push(b'"');
        headers.insert(X_FORWARDED_HOST.clone(), host);
    }
    if let Some(v) = appended(headers.get(&FORWARDED), &element) {
        headers.insert(FORWARDED.clone(), v);
    }
    headers.insert(X_REQUEST_ID.clone(), request_id.clone());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn forwarding_headers() {
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("example.com"));
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        let id = request_id(&h);
        assert_eq!(id.len(), 32);
        let mut untrusted = h.clone();
        let peer = "192.0.2.7:5000".parse().unwrap();
        add_forwarding(&mut h, &PeerHeaders::new(peer, true), &id);
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 192.0.2.7");
        add_forwarding(&mut untrusted, &PeerHeaders::new(peer, false), &id);
        assert_eq!(
            untrusted["x-forwarded-for"], "192.0.2.7",
            "a client cannot forge hops"
        );
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "example.com");
        assert_eq!(
            h["forwarded"],
            "for=192.0.2.7;proto=http;host=\"example.com\""
        );
        assert_eq!(h["x-request-id"], id);
        assert!(!h.contains_key("host"));
        let mut kept = HeaderMap::new();
        kept.insert("x-request-id", HeaderValue::from_static("abc-1"));
        assert_eq!(request_id(&kept), "abc-1");
    }
}
