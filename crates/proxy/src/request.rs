//! A request head, parsed in place (httparse) and rewritten once into the upstream head: the framing decided, the
//! forwarding headers added, what a client may not send dropped or refused (see README, "The proxy").

use bytes::Buf;
use http::Method;

use crate::conn::{Conn, MAX_HEADERS, Worker};
use crate::h1::{
    self, ConnectionTokens, Framing, FramingHeaders, Refusal, push_decimal, push_header,
};
use crate::headers::{EarlierHops, RequestId, is_api_server_via, is_forwarding, push_forwarding};

/// A parsed request head, owned, once its bytes have been rewritten into `up_line` and `up_rest`.
pub(crate) struct Req {
    pub(crate) method: Method,
    pub(crate) http10: bool,
    pub(crate) framing: Framing,
    pub(crate) keep_alive: bool,
    pub(crate) expect_continue: bool,
    pub(crate) id: RequestId,
    /// The path, for the access log.
    pub(crate) path: Option<String>,
    /// The request carried this proxy's own `Via` token: it has been here before.
    pub(crate) looped: bool,
    /// It asks to switch protocols (`Connection: upgrade` and an `Upgrade` other than `h2c`), and is forwarded so.
    pub(crate) upgrade: bool,
}

/// Parses the request head at the start of the buffer; on success its bytes are consumed and the upstream head is
/// in `up_line` and `up_rest`.
pub(crate) fn parse_request(w: &Worker, c: &mut Conn) -> Result<Option<Req>, Refusal> {
    let mut headers = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
    let mut r = httparse::Request::new(&mut []);
    let n = match r.parse_with_uninit_headers(&c.buf, &mut headers) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(Refusal::TooLarge),
        Err(_) => return Err(Refusal::BadRequest("malformed request head")),
    };
    if n > w.limits.max_header_bytes {
        return Err(Refusal::TooLarge);
    }
    let (Some(method), Some(target), Some(version)) = (r.method, r.path, r.version) else {
        return Err(Refusal::BadRequest("malformed request line"));
    };
    let method = Method::from_bytes(method.as_bytes())
        .map_err(|_| Refusal::BadRequest("malformed method"))?;
    if method == Method::CONNECT {
        return Err(Refusal::NotImplemented("CONNECT is not proxied"));
    }
    let http10 = version == 0;
    let (target, target_host) = origin_form(&method, target)?;

    let mut connection = ConnectionTokens::default();
    for h in r.headers.iter() {
        if h.name.eq_ignore_ascii_case("connection") {
            connection.add(h.value);
        }
    }
    let trusted = c.peer.trusted;
    let mut framing = FramingHeaders::default();
    let mut earlier = EarlierHops::default();
    let mut host = None;
    let mut id = None;
    let mut expect_continue = false;
    let mut looped = false;
    let mut upgrade: Option<&[u8]> = None;
    let mut upgrades = 0;
    let (mut underscores, mut untrusted) = (0, 0);
    c.up_rest.clear();
    c.up_rest.extend_from_slice(b"\r\n");
    for h in r.headers.iter() {
        let name = h.name;
        // A backend that folds `_` into `-` would read `X_Forwarded_For` or `Transfer_Encoding` as the real thing
        // (nginx's `underscores_in_headers off`).
        if name.contains('_') {
            underscores += 1;
            continue;
        }
        if framing.add(name, h.value) {
            continue;
        }
        if name.eq_ignore_ascii_case("host") {
            if host.replace(h.value).is_some() {
                return Err(Refusal::BadRequest("more than one Host header"));
            }
        } else if name.eq_ignore_ascii_case("x-request-id") {
            // Only a trusted proxy's id is kept: anyone else could make requests look like another's in the logs.
            if trusted {
                id = id.or_else(|| RequestId::from_client(h.value));
            }
        } else if name.eq_ignore_ascii_case("upgrade") {
            upgrades += 1;
            upgrade = Some(h.value);
        } else if name.eq_ignore_ascii_case("via") {
            looped |= w.p.via.seen_in(h.value);
            push_via(&mut c.up_rest, h.value, trusted, &mut untrusted);
        } else if name.eq_ignore_ascii_case("expect")
            && h.value.trim_ascii().eq_ignore_ascii_case(b"100-continue")
        {
            // Answered by the proxy itself when it is ready for the body.
            expect_continue = true;
        } else if is_forwarding(name) {
            if trusted {
                earlier.add(name, h.value);
            } else {
                untrusted += 1;
            }
        } else if !(h1::is_hop_by_hop(name)
            || (connection.names_others && h1::named_by_connection(r.headers, name)))
        {
            push_header(&mut c.up_rest, name.as_bytes(), h.value);
        }
    }
    if host.is_none() && !http10 && target_host.is_none() {
        return Err(Refusal::BadRequest("no Host header"));
    }
    if host.is_some_and(|h| !h1::valid_authority(h))
        || target_host.is_some_and(|h| !h1::valid_authority(h))
    {
        return Err(Refusal::BadRequest(
            "invalid Host or request-target authority",
        ));
    }
    let host = target_host.or(host);
    if underscores > 0 {
        w.p.metrics
            .headers_dropped
            .with("underscore")
            .inc_by(underscores);
    }
    if untrusted > 0 {
        w.p.metrics
            .headers_dropped
            .with("untrusted")
            .inc_by(untrusted);
    }
    let framing = framing.request(http10)?;
    // A protocol switch is passed on for a request without a body, from an HTTP/1.1 client, naming one `Upgrade`
    // other than h2c (HTTP/2 in clear text is not tunnelled: the data servers speak HTTP/1.1 to the proxy).
    let upgrade = match upgrade {
        Some(protocols)
            if connection.upgrade
                && upgrades == 1
                && !http10
                && framing == Framing::Empty
                && !h1::list(protocols).any(|p| p.eq_ignore_ascii_case(b"h2c")) =>
        {
            c.up_rest.extend_from_slice(b"connection: upgrade\r\n");
            push_header(&mut c.up_rest, b"upgrade", protocols);
            true
        }
        _ => false,
    };
    match framing {
        Framing::Length(len) => {
            c.up_rest.extend_from_slice(b"content-length: ");
            push_decimal(&mut c.up_rest, len);
            c.up_rest.extend_from_slice(b"\r\n");
        }
        Framing::Chunked => c
            .up_rest
            .extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::Empty if matches!(method, Method::POST | Method::PUT | Method::PATCH) => {
            c.up_rest.extend_from_slice(b"content-length: 0\r\n");
        }
        Framing::Empty | Framing::UntilClose => {}
    }
    let id = id.unwrap_or_else(RequestId::generate);
    push_forwarding(&mut c.up_rest, &c.peer, &earlier, host, &id);
    push_header(&mut c.up_rest, b"via", w.p.via.value());
    c.up_rest.extend_from_slice(b"\r\n");
    // What the proxy adds counts against the limits too: the data server must not be the one to refuse the head.
    // Lines of `up_rest`: the host line's end, the headers, the blank line (values hold no LF).
    let headers = c.up_rest.iter().filter(|&&b| b == b'\n').count() - 1;
    // The request line and the host line: method, target, version, and room for the server's address.
    let first_lines = method.as_str().len() + target.len() + 300;
    if headers > MAX_HEADERS || first_lines + c.up_rest.len() > w.limits.max_header_bytes {
        return Err(Refusal::TooLarge);
    }

    c.up_line.clear();
    c.up_line.extend_from_slice(method.as_str().as_bytes());
    c.up_line.push(b' ');
    if !target.starts_with(['/', '*']) {
        c.up_line.push(b'/');
    }
    c.up_line.extend_from_slice(target.as_bytes());
    c.up_line.extend_from_slice(b" HTTP/1.1\r\nhost: ");

    let path = w.p.access_log.then(|| match target.split('?').next() {
        Some(path) if !path.is_empty() => path.to_owned(),
        _ => "/".to_owned(),
    });
    let keep_alive = if http10 {
        connection.keep_alive && !connection.close
    } else {
        !connection.close
    };
    let req = Req {
        method,
        http10,
        framing,
        keep_alive,
        expect_continue: expect_continue && framing != Framing::Empty,
        id,
        path,
        looped,
        upgrade,
    };
    c.buf.advance(n);
    Ok(Some(req))
}

/// Appends a client's `Via` value: whole from a trusted proxy; from anyone else only the elements naming an
/// api-server (which loop detection needs), the rest counted in `dropped`.
fn push_via(out: &mut Vec<u8>, value: &[u8], trusted: bool, dropped: &mut u64) {
    if trusted {
        push_header(out, b"via", value);
        return;
    }
    let mut first = true;
    for element in value.split(|&b| b == b',') {
        if !is_api_server_via(element) {
            *dropped += u64::from(!element.trim_ascii().is_empty());
            continue;
        }
        out.extend_from_slice(if first { &b"via: "[..] } else { b", " });
        out.extend_from_slice(element.trim_ascii());
        first = false;
    }
    if !first {
        out.extend_from_slice(b"\r\n");
    }
}

/// The request target as the upstream gets it (origin form), and the authority of an absolute-form target.
fn origin_form<'a>(
    method: &Method,
    target: &'a str,
) -> Result<(&'a str, Option<&'a [u8]>), Refusal> {
    if target.starts_with('/') {
        return Ok((target, None));
    }
    if target == "*" && method == Method::OPTIONS {
        return Ok((target, None));
    }
    let starts = |scheme: &str| {
        target
            .as_bytes()
            .get(..scheme.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(scheme.as_bytes()))
    };
    let scheme_len = if starts("http://") {
        7
    } else if starts("https://") {
        8
    } else {
        return Err(Refusal::BadRequest("malformed request target"));
    };
    let rest = &target[scheme_len..];
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    if authority.is_empty() {
        return Err(Refusal::BadRequest("malformed request target"));
    }
    // `http://host` and `http://host?q` have an empty path: the caller puts "/" before what is left.
    Ok((path, Some(authority.as_bytes())))
}
