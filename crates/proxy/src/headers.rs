//! Forwarding headers and the request id, written straight into the upstream request head.

use std::net::{IpAddr, SocketAddr};

use rand::Rng;

use crate::h1::push_header;

/// Longest client-supplied `X-Request-Id` kept.
const MAX_REQUEST_ID: usize = 128;

/// A request's id: the client's `X-Request-Id` when it is short printable ASCII, else a new random one. Held
/// inline, so a request costs no allocation for it.
#[derive(Clone, Copy)]
pub struct RequestId {
    bytes: [u8; MAX_REQUEST_ID],
    len: u8,
}

impl std::fmt::Debug for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl RequestId {
    /// The client's id, if acceptable.
    pub fn from_client(value: &[u8]) -> Option<RequestId> {
        if value.is_empty()
            || value.len() > MAX_REQUEST_ID
            || !value.iter().all(u8::is_ascii_graphic)
        {
            return None;
        }
        let mut id = RequestId {
            bytes: [0; MAX_REQUEST_ID],
            len: value.len() as u8,
        };
        id.bytes[..value.len()].copy_from_slice(value);
        Some(id)
    }

    /// 32 random hex digits.
    pub fn generate() -> RequestId {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut n = rand::rng().random::<u128>();
        let mut id = RequestId {
            bytes: [0; MAX_REQUEST_ID],
            len: 32,
        };
        for digit in id.bytes[..32].iter_mut().rev() {
            *digit = HEX[(n & 0xf) as usize];
            n >>= 4;
        }
        id
    }

    /// The id's bytes (printable ASCII).
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        // Only printable ASCII is ever stored.
        std::str::from_utf8(self.as_bytes()).unwrap_or_default()
    }
}

/// This proxy's pseudonym in `Via` (RFC 9110 section 7.6.3): random per process, so that a request that comes back
/// to the proxy that sent it is recognised, whatever address it came back through.
#[derive(Debug, Clone)]
pub struct ViaToken {
    /// `1.1 api-<16 hex digits>`: the value this proxy adds.
    value: Box<[u8]>,
}

impl ViaToken {
    /// A new random token.
    pub fn generate() -> ViaToken {
        let n = rand::rng().random::<u64>();
        ViaToken {
            value: format!("1.1 api-{n:016x}").into_bytes().into_boxed_slice(),
        }
    }

    /// The `Via` value this proxy adds to a request.
    pub fn value(&self) -> &[u8] {
        &self.value
    }

    /// Whether a `Via` value names this proxy (the request has been here before).
    pub fn seen_in(&self, via: &[u8]) -> bool {
        let pseudonym = &self.value[4..];
        via.windows(pseudonym.len()).any(|w| w == pseudonym)
    }
}

/// What the forwarding headers say about one client connection, worked out once when it is accepted.
#[derive(Debug, Clone)]
pub struct PeerHeaders {
    /// The client's address alone, the whole `X-Forwarded-For` of a first hop.
    forwarded_for: String,
    /// `for=<ip>;proto=http`, the start of this hop's `Forwarded` element.
    node: String,
    /// A trusted proxy's forwarding headers are kept and appended to.
    pub trusted: bool,
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
            forwarded_for: ip.to_string(),
            node,
            trusted,
        }
    }
}

/// Whether `name` is one of the headers that say who the client is or how it came (dropped from an untrusted
/// client, who could forge them; kept from a trusted proxy).
pub fn is_forwarding(name: &str) -> bool {
    [
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "forwarded",
        "x-real-ip",
        "true-client-ip",
        "x-forwarded-port",
    ]
    .iter()
    .any(|h| h.eq_ignore_ascii_case(name))
}

/// Whether one element of a `Via` list (`1.1 api-0123456789abcdef`) names an api-server of this product. Those are
/// kept from any peer: a request that loops through two api-servers must carry both tokens back.
pub fn is_api_server_via(element: &[u8]) -> bool {
    let Some(pseudonym) = element
        .trim_ascii()
        .split(|b| b.is_ascii_whitespace())
        .nth(1)
    else {
        return false;
    };
    pseudonym.len() == 20
        && pseudonym.starts_with(b"api-")
        && pseudonym[4..].iter().all(|b| b.is_ascii_hexdigit())
}

/// The forwarding headers a request arrived with from a trusted proxy (empty from anyone else).
#[derive(Debug, Default)]
pub struct EarlierHops<'a> {
    /// `X-Forwarded-For` values, in order.
    pub forwarded_for: Vec<&'a [u8]>,
    /// `Forwarded` values, in order.
    pub forwarded: Vec<&'a [u8]>,
    /// `X-Forwarded-Host`: the host the first proxy was asked for.
    pub forwarded_host: Option<&'a [u8]>,
    /// `X-Forwarded-Proto`: the scheme the client used with the first proxy.
    pub forwarded_proto: Option<&'a [u8]>,
    /// `X-Real-IP`, `True-Client-IP`, `X-Forwarded-Port`: passed on as they came.
    pub others: Vec<(&'a str, &'a [u8])>,
}

impl<'a> EarlierHops<'a> {
    /// Records one forwarding header of a trusted peer's request.
    pub fn add(&mut self, name: &'a str, value: &'a [u8]) {
        if name.eq_ignore_ascii_case("x-forwarded-for") {
            self.forwarded_for.push(value);
        } else if name.eq_ignore_ascii_case("forwarded") {
            self.forwarded.push(value);
        } else if name.eq_ignore_ascii_case("x-forwarded-host") {
            self.forwarded_host = Some(value);
        } else if name.eq_ignore_ascii_case("x-forwarded-proto") {
            self.forwarded_proto = Some(value);
        } else {
            self.others.push((name, value));
        }
    }
}

/// Appends `X-Forwarded-For`, `X-Forwarded-Proto`, `X-Forwarded-Host`, RFC 7239 `Forwarded` and `X-Request-Id`
/// to an upstream request head. Earlier hops (from a trusted proxy) come first in the list headers.
pub fn push_forwarding(
    out: &mut Vec<u8>,
    peer: &PeerHeaders,
    earlier: &EarlierHops<'_>,
    host: Option<&[u8]>,
    id: &RequestId,
) {
    out.extend_from_slice(b"x-forwarded-for: ");
    for v in &earlier.forwarded_for {
        out.extend_from_slice(v);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(peer.forwarded_for.as_bytes());
    out.extend_from_slice(b"\r\n");
    // What the first proxy saw, when a trusted proxy says so; else what this one sees.
    push_header(
        out,
        b"x-forwarded-proto",
        earlier.forwarded_proto.unwrap_or(b"http"),
    );
    if let Some(h) = earlier.forwarded_host.or(host) {
        push_header(out, b"x-forwarded-host", h);
    }
    for (name, value) in &earlier.others {
        push_header(out, name.as_bytes(), value);
    }
    out.extend_from_slice(b"forwarded: ");
    for v in &earlier.forwarded {
        out.extend_from_slice(v);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(peer.node.as_bytes());
    if let Some(host) = host {
        out.extend_from_slice(b";host=\"");
        out.extend(host.iter().filter(|&&b| b != b'"' && b != b'\\'));
        out.push(b'"');
    }
    out.extend_from_slice(b"\r\n");
    push_header(out, b"x-request-id", id.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_server_via_elements_are_recognised_by_shape() {
        assert!(is_api_server_via(ViaToken::generate().value()));
        assert!(is_api_server_via(b" 1.1 api-0123456789abcdef "));
        for other in [
            &b"1.1 nginx"[..],
            b"1.1 api-0123",
            b"1.1 api-0123456789abcdeg",
            b"api-0123456789abcdef",
            b"",
        ] {
            assert!(!is_api_server_via(other), "{other:?}");
        }
    }

    #[test]
    fn a_via_token_recognises_itself_only() {
        let mine = ViaToken::generate();
        let other = ViaToken::generate();
        assert!(mine.value().starts_with(b"1.1 api-"));
        let both = [other.value(), b", ", mine.value()].concat();
        assert!(mine.seen_in(&both));
        assert!(!mine.seen_in(other.value()));
        assert!(!mine.seen_in(b"1.1 nginx"));
    }

    fn forwarding(peer: &PeerHeaders, earlier: &EarlierHops<'_>, host: Option<&str>) -> String {
        let id = RequestId::from_client(b"abc-1").unwrap();
        let mut out = Vec::new();
        push_forwarding(&mut out, peer, earlier, host.map(str::as_bytes), &id);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn forwarding_headers() {
        let peer = "192.0.2.7:5000".parse().unwrap();
        let mut earlier = EarlierHops::default();
        earlier.add("X-Forwarded-For", b"10.0.0.1");
        earlier.add("forwarded", b"for=10.0.0.1");
        assert_eq!(
            forwarding(&PeerHeaders::new(peer, true), &earlier, Some("example.com")),
            "x-forwarded-for: 10.0.0.1, 192.0.2.7\r\n\
             x-forwarded-proto: http\r\n\
             x-forwarded-host: example.com\r\n\
             forwarded: for=10.0.0.1, for=192.0.2.7;proto=http;host=\"example.com\"\r\n\
             x-request-id: abc-1\r\n"
        );
        // A trusted proxy's scheme and host, and the client's own address headers, are what it said.
        let mut earlier = EarlierHops::default();
        earlier.add("x-forwarded-proto", b"https");
        earlier.add("x-forwarded-host", b"public.example");
        earlier.add("x-real-ip", b"203.0.113.9");
        assert_eq!(
            forwarding(
                &PeerHeaders::new(peer, true),
                &earlier,
                Some("internal:8080")
            ),
            "x-forwarded-for: 192.0.2.7\r\n\
             x-forwarded-proto: https\r\n\
             x-forwarded-host: public.example\r\n\
             x-real-ip: 203.0.113.9\r\n\
             forwarded: for=192.0.2.7;proto=http;host=\"internal:8080\"\r\n\
             x-request-id: abc-1\r\n"
        );
        let v6 = "[2001:db8::1]:5000".parse().unwrap();
        assert_eq!(
            forwarding(
                &PeerHeaders::new(v6, false),
                &EarlierHops::default(),
                Some("a\"b")
            ),
            "x-forwarded-for: 2001:db8::1\r\n\
             x-forwarded-proto: http\r\n\
             x-forwarded-host: a\"b\r\n\
             forwarded: for=\"[2001:db8::1]\";proto=http;host=\"ab\"\r\n\
             x-request-id: abc-1\r\n"
        );
    }

    #[test]
    fn request_ids() {
        assert_eq!(RequestId::from_client(b"abc-1").unwrap().as_str(), "abc-1");
        assert!(RequestId::from_client(b"").is_none());
        assert!(RequestId::from_client(b"a b").is_none());
        assert!(RequestId::from_client(&[b'a'; 129]).is_none());
        let g = RequestId::generate();
        assert_eq!(g.as_str().len(), 32);
        assert!(g.as_str().bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(g.as_str(), RequestId::generate().as_str());
    }
}
