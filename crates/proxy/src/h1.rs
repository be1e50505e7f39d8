//! The HTTP/1.1 wire rules the proxy needs: message framing (RFC 9112 section 6), hop-by-hop headers, and a strict
//! chunked-coding parser.
//!
//! A proxy that frames a message differently from the server behind it lets a client smuggle a second request
//! inside the first one. So framing is strict: `Transfer-Encoding` and `Content-Length` together, `Content-Length`
//! values that disagree, a transfer coding other than `chunked`, and anything malformed in a chunked body are
//! rejected, never guessed at. Bodies are forwarded byte for byte as parsed, so the upstream reads exactly the
//! message this module measured.

/// How a message's body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the connection closes (responses only).
    UntilClose,
}

/// Why a request head was refused before anything was forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// 400: malformed or ambiguous.
    BadRequest(&'static str),
    /// 431: head larger than `server.max_header_bytes`, or too many headers.
    TooLarge,
    /// 501: a transfer coding or method this proxy does not forward.
    NotImplemented(&'static str),
}

impl Refusal {
    /// Status code and reason phrase.
    pub fn status(self) -> (u16, &'static str) {
        match self {
            Refusal::BadRequest(_) => (400, "Bad Request"),
            Refusal::TooLarge => (431, "Request Header Fields Too Large"),
            Refusal::NotImplemented(_) => (501, "Not Implemented"),
        }
    }

    /// What was wrong, for the error body and the log.
    pub fn detail(self) -> &'static str {
        match self {
            Refusal::BadRequest(d) | Refusal::NotImplemented(d) => d,
            Refusal::TooLarge => "request head too large",
        }
    }
}

/// Headers meaningful for one connection only (RFC 9110 section 7.6.1), never forwarded in either direction.
/// `Transfer-Encoding` and `Content-Length` are not listed: the proxy writes its own framing headers.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
];

/// Whether `name` is a hop-by-hop header.
pub fn is_hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP.iter().any(|h| h.eq_ignore_ascii_case(name))
}

/// The comma-separated elements of a list header, trimmed, empty ones skipped.
pub fn list(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(|v| v.trim_ascii())
        .filter(|v| !v.is_empty())
}

/// What a message's `Connection` header says.
#[derive(Debug, Default, Clone, Copy)]
pub struct ConnectionTokens {
    /// `close`.
    pub close: bool,
    /// `keep-alive` (HTTP/1.0 persistence).
    pub keep_alive: bool,
    /// `upgrade`: the sender asks to switch protocols (with an `Upgrade` header).
    pub upgrade: bool,
    /// It names other headers, which are then hop-by-hop as well.
    pub names_others: bool,
}

impl ConnectionTokens {
    /// Adds one `Connection` header's value.
    pub fn add(&mut self, value: &[u8]) {
        for token in list(value) {
            if token.eq_ignore_ascii_case(b"close") {
                self.close = true;
            } else if token.eq_ignore_ascii_case(b"keep-alive") {
                self.keep_alive = true;
            } else if token.eq_ignore_ascii_case(b"upgrade") {
                self.upgrade = true;
            } else {
                self.names_others = true;
            }
        }
    }
}

/// Whether some `Connection` header among `headers` names `name` (only looked for when one names anything).
pub fn named_by_connection(headers: &[httparse::Header<'_>], name: &str) -> bool {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        .any(|h| list(h.value).any(|t| t.eq_ignore_ascii_case(name.as_bytes())))
}

/// Accumulates `Content-Length` and `Transfer-Encoding` over a message's headers and decides its framing.
#[derive(Debug, Default)]
pub struct FramingHeaders {
    length: Option<u64>,
    conflicting_length: bool,
    transfer_encodings: u32,
    /// `chunked` codings seen, all headers together.
    chunked: u32,
    /// The last coding listed is `chunked`.
    chunked_last: bool,
    other_coding: bool,
}

impl FramingHeaders {
    /// Looks at one header; returns true when it was a framing header (never forwarded as is).
    pub fn add(&mut self, name: &str, value: &[u8]) -> bool {
        if name.eq_ignore_ascii_case("content-length") {
            // `Content-Length: 5, 5` and repeated equal headers are one length; anything else conflicts.
            for v in value.split(|&b| b == b',') {
                match parse_length(v.trim_ascii()) {
                    Some(n) if self.length.is_none_or(|l| l == n) => self.length = Some(n),
                    _ => self.conflicting_length = true,
                }
            }
            true
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            self.transfer_encodings += 1;
            let mut any = false;
            for coding in list(value) {
                any = true;
                self.chunked_last = coding.eq_ignore_ascii_case(b"chunked");
                if self.chunked_last {
                    self.chunked += 1;
                } else {
                    self.other_coding = true;
                }
            }
            if !any {
                // An empty Transfer-Encoding names no coding: nothing a body could be framed by.
                self.other_coding = true;
                self.chunked_last = false;
            }
            true
        } else {
            false
        }
    }

    /// Whether codings other than `chunked` were listed (a `gzip, chunked` response keeps its header as is).
    pub fn other_codings(&self) -> bool {
        self.other_coding
    }

    /// A request's framing (RFC 9112 6.3): no length and no coding means no body.
    pub fn request(&self, http10: bool) -> Result<Framing, Refusal> {
        if self.transfer_encodings > 0 {
            if http10 {
                return Err(Refusal::BadRequest(
                    "Transfer-Encoding in an HTTP/1.0 request",
                ));
            }
            if self.length.is_some() || self.conflicting_length {
                return Err(Refusal::BadRequest(
                    "both Transfer-Encoding and Content-Length",
                ));
            }
            if self.other_coding || self.transfer_encodings > 1 || self.chunked != 1 {
                return Err(Refusal::NotImplemented(
                    "only Transfer-Encoding: chunked is forwarded",
                ));
            }
            return Ok(Framing::Chunked);
        }
        if self.conflicting_length {
            return Err(Refusal::BadRequest("invalid or conflicting Content-Length"));
        }
        Ok(match self.length {
            None | Some(0) => Framing::Empty,
            Some(n) => Framing::Length(n),
        })
    }

    /// A response's framing (RFC 9112 6.3) for a request made with `head_request`; `None` when it is ambiguous
    /// (the proxy then treats the response as a failed try).
    pub fn response(&self, status: u16, head_request: bool) -> Option<Framing> {
        if head_request || status == 204 || status == 304 || (100..200).contains(&status) {
            // No body, but a `Content-Length` still goes to the client: it must be as valid as a GET's.
            return (!self.conflicting_length).then_some(Framing::Empty);
        }
        if self.transfer_encodings > 0 {
            if self.length.is_some() || self.conflicting_length {
                return None;
            }
            // Chunked last (and once): chunked, whatever content codings come before it (`gzip, chunked`). A
            // final coding other than chunked is delimited by the close.
            return Some(if self.chunked_last && self.chunked == 1 {
                Framing::Chunked
            } else {
                Framing::UntilClose
            });
        }
        if self.conflicting_length {
            return None;
        }
        Some(match self.length {
            Some(0) => Framing::Empty,
            Some(n) => Framing::Length(n),
            None => Framing::UntilClose,
        })
    }
}

/// A `Content-Length` value: decimal digits only, no sign, no overflow.
fn parse_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0u64, |n, &d| n * 10 + u64::from(d - b'0')))
}

/// Longest chunk-size line (size and extensions) accepted.
const MAX_CHUNK_LINE: usize = 4096;
/// Most bytes of chunk extensions in one body, all lines together (hyper refuses a body beyond 16 KiB too, so a
/// body the proxy passes is one a hyper-based server accepts, though the proxy drops the extensions).
const MAX_EXTENSIONS: usize = 16 * 1024;
/// Largest trailer section accepted.
const MAX_TRAILERS: usize = 16 * 1024;

/// The chunk that ends a chunked body, with no trailers.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// Appends `data` as one chunk of a chunked body (nothing for empty `data`: an empty chunk would end the body).
pub fn push_chunk(out: &mut Vec<u8>, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    let mut digits = [0u8; 16];
    let mut at = digits.len();
    let mut n = data.len();
    loop {
        at -= 1;
        digits[at] = b"0123456789abcdef"[n & 0xf];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// A `tchar` of RFC 9110 section 5.6.2: what a field name is made of.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A chunked body that does not follow RFC 9112 section 7.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed chunked body: {0}")]
pub struct ChunkError(&'static str);

/// Incremental, strict parser of a chunked body. It does not copy: [`ChunkedParser::advance`] says how many of the
/// given bytes belong to the body, and where its data bytes are, so the caller forwards the raw bytes or re-frames
/// the data (request bodies are re-framed: extensions and trailers dropped).
#[derive(Debug, Clone)]
pub struct ChunkedParser {
    state: Chunk,
    /// Bytes of the current size line, or of the trailers so far.
    line: usize,
    /// Bytes of chunk extensions so far, all lines together.
    extensions: usize,
    /// Whether a trailer field was seen.
    trailers: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Hex digits of a size; the value so far and whether a digit was seen.
    Size(u64, bool),
    /// Whitespace after the size: `;` or CR next.
    SizeWs(u64),
    /// After the size: extensions until CR.
    Extension(u64),
    /// CR seen after the size line; LF next.
    SizeLf(u64),
    /// Data bytes left in this chunk.
    Data(u64),
    /// CR after the data.
    DataCr,
    /// LF after the data.
    DataLf,
    /// Start of a trailer line (or of the final CRLF).
    TrailerStart,
    /// In a trailer field's name, before its colon.
    TrailerName,
    /// In a trailer field's value.
    TrailerValue,
    /// CR at the end of a trailer line; LF next.
    TrailerLf,
    /// CR of the final empty line; LF next.
    EndLf,
    /// The body is complete.
    Done,
}

impl Default for ChunkedParser {
    fn default() -> Self {
        ChunkedParser {
            state: Chunk::Size(0, false),
            line: 0,
            extensions: 0,
            trailers: false,
        }
    }
}

impl ChunkedParser {
    /// Whether the whole body has been seen.
    pub fn done(&self) -> bool {
        self.state == Chunk::Done
    }

    /// Whether the body had trailer fields (a proxy that re-frames the body drops them).
    pub fn had_trailers(&self) -> bool {
        self.trailers
    }

    /// Parses from the start of `input`; returns how many bytes belong to the body (all of `input` unless the
    /// body ends inside it) and calls `data` with each run of chunk data among them.
    pub fn advance(
        &mut self,
        input: &[u8],
        mut data: impl FnMut(&[u8]),
    ) -> Result<usize, ChunkError> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.state {
                Chunk::Size(n, seen) => {
                    if let Some(d) = hex(b) {
                        if n >> 60 != 0 {
                            return Err(ChunkError("chunk size overflows"));
                        }
                        self.state = Chunk::Size(n << 4 | u64::from(d), true);
                    } else if !seen {
                        return Err(ChunkError("chunk size expected"));
                    } else if b == b'\r' {
                        self.state = Chunk::SizeLf(n);
                    } else if b == b';' {
                        self.state = Chunk::Extension(n);
                    } else if b == b' ' || b == b'\t' {
                        self.state = Chunk::SizeWs(n);
                    } else {
                        return Err(ChunkError("bad character in chunk size"));
                    }
                    self.line += 1;
                }
                Chunk::SizeWs(n) => {
                    self.state = match b {
                        b' ' | b'\t' => Chunk::SizeWs(n),
                        b';' => Chunk::Extension(n),
                        b'\r' => Chunk::SizeLf(n),
                        _ => return Err(ChunkError("bad character in chunk size")),
                    };
                    self.line += 1;
                }
                Chunk::Extension(n) => {
                    if b == b'\r' {
                        self.state = Chunk::SizeLf(n);
                    } else if b == b'\n' || (b < 0x20 && b != b'\t') || b == 0x7f {
                        return Err(ChunkError("control character in chunk extension"));
                    }
                    self.extensions += 1;
                    if self.extensions > MAX_EXTENSIONS {
                        return Err(ChunkError("chunk extensions too large"));
                    }
                    self.line += 1;
                }
                Chunk::SizeLf(n) => {
                    if b != b'\n' {
                        return Err(ChunkError("chunk size line not ended by CRLF"));
                    }
                    self.line = 0;
                    self.state = if n == 0 {
                        Chunk::TrailerStart
                    } else {
                        Chunk::Data(n)
                    };
                }
                Chunk::Data(left) => {
                    let take = (input.len() - i).min(usize::try_from(left).unwrap_or(usize::MAX));
                    data(&input[i..i + take]);
                    i += take;
                    let left = left - take as u64;
                    self.state = if left == 0 {
                        Chunk::DataCr
                    } else {
                        Chunk::Data(left)
                    };
                    continue;
                }
                Chunk::DataCr => {
                    if b != b'\r' {
                        return Err(ChunkError("chunk data not followed by CRLF"));
                    }
                    self.state = Chunk::DataLf;
                }
                Chunk::DataLf => {
                    if b != b'\n' {
                        return Err(ChunkError("chunk data not followed by CRLF"));
                    }
                    self.state = Chunk::Size(0, false);
                }
                Chunk::TrailerStart => {
                    self.state = if b == b'\r' {
                        Chunk::EndLf
                    } else if is_tchar(b) {
                        self.trailers = true;
                        Chunk::TrailerName
                    } else {
                        return Err(ChunkError("malformed trailer"));
                    };
                    self.line += 1;
                }
                // A field line is `name: value` (RFC 9112 section 5), as in a head: a line without a colon is refused,
                // as hyper and httparse refuse it.
                Chunk::TrailerName => {
                    if b == b':' {
                        self.state = Chunk::TrailerValue;
                    } else if !is_tchar(b) {
                        return Err(ChunkError("malformed trailer"));
                    }
                    self.line += 1;
                }
                Chunk::TrailerValue => {
                    if b == b'\r' {
                        self.state = Chunk::TrailerLf;
                    } else if (b < 0x20 && b != b'\t') || b == 0x7f {
                        return Err(ChunkError("malformed trailer"));
                    }
                    self.line += 1;
                }
                Chunk::TrailerLf => {
                    if b != b'\n' {
                        return Err(ChunkError("trailer line not ended by CRLF"));
                    }
                    self.state = Chunk::TrailerStart;
                    self.line += 1;
                }
                Chunk::EndLf => {
                    if b != b'\n' {
                        return Err(ChunkError("chunked body not ended by CRLF"));
                    }
                    self.state = Chunk::Done;
                    return Ok(i + 1);
                }
                Chunk::Done => return Ok(i),
            }
            match self.state {
                Chunk::Size(..) | Chunk::SizeWs(_) | Chunk::Extension(_)
                    if self.line > MAX_CHUNK_LINE =>
                {
                    return Err(ChunkError("chunk size line too long"));
                }
                Chunk::TrailerStart
                | Chunk::TrailerName
                | Chunk::TrailerValue
                | Chunk::TrailerLf
                    if self.line > MAX_TRAILERS =>
                {
                    return Err(ChunkError("trailers too large"));
                }
                _ => {}
            }
            i += 1;
        }
        Ok(i)
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Whether `authority` is a valid `Host` value or absolute-form authority (RFC 9110 section 7.2, RFC 3986 section
/// 3.2): a reg-name or an IP literal, and an optional port of at most five digits up to 65535. Userinfo (`user:pw@`)
/// is not: `@` is no reg-name character, so it is never forwarded.
pub fn valid_authority(authority: &[u8]) -> bool {
    let (host_ok, rest) = if let Some(literal) = authority.strip_prefix(b"[") {
        let Some(end) = literal.iter().position(|&b| b == b']') else {
            return false;
        };
        let ip_ok = std::str::from_utf8(&literal[..end])
            .ok()
            .and_then(|text| text.parse::<std::net::Ipv6Addr>().ok())
            .is_some();
        (ip_ok, &literal[end + 1..])
    } else {
        let end = authority
            .iter()
            .rposition(|&b| b == b':')
            .unwrap_or(authority.len());
        let host = &authority[..end];
        (!host.is_empty() && valid_reg_name(host), &authority[end..])
    };
    let port_ok = match rest {
        [] => true,
        [b':', digits @ ..] => {
            !digits.is_empty()
                && digits.len() <= 5
                && digits.iter().all(u8::is_ascii_digit)
                && digits
                    .iter()
                    .fold(0u32, |n, &d| n * 10 + u32::from(d - b'0'))
                    <= 65535
        }
        _ => false,
    };
    host_ok && port_ok
}

/// A reg-name (RFC 3986 section 3.2.2) without percent-encoding: unreserved characters and sub-delimiters. An IPv4
/// address is one too. Percent-encoded names are refused, as the `http` crate (and so hyper) refuses them: a name a
/// data server would refuse must not get past the proxy, and DNS names never need them (IDNA has punycode).
fn valid_reg_name(name: &[u8]) -> bool {
    name.iter()
        .all(|&b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=".contains(&b))
}

/// Appends `n` in decimal.
pub fn push_decimal(out: &mut Vec<u8>, n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut n = n;
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// Appends `name: value\r\n`.
pub fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framing(headers: &[(&str, &str)]) -> FramingHeaders {
        let mut f = FramingHeaders::default();
        for (n, v) in headers {
            assert!(f.add(n, v.as_bytes()));
        }
        f
    }

    #[test]
    fn request_framing_is_strict() {
        assert_eq!(framing(&[]).request(false), Ok(Framing::Empty));
        assert_eq!(
            framing(&[("Content-Length", "12")]).request(false),
            Ok(Framing::Length(12))
        );
        assert_eq!(
            framing(&[("content-length", "12"), ("Content-Length", "12, 12")]).request(false),
            Ok(Framing::Length(12))
        );
        assert_eq!(
            framing(&[("Transfer-Encoding", "Chunked")]).request(false),
            Ok(Framing::Chunked)
        );
        for bad in [
            vec![("content-length", "12"), ("content-length", "13")],
            vec![("content-length", "-1")],
            vec![("content-length", "+1")],
            vec![("content-length", "1 2")],
            vec![("content-length", "99999999999999999999")],
            vec![("transfer-encoding", "chunked"), ("content-length", "3")],
        ] {
            assert!(
                matches!(framing(&bad).request(false), Err(Refusal::BadRequest(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(
            framing(&[("transfer-encoding", "gzip, chunked")]).request(false),
            Err(Refusal::NotImplemented(_))
        ));
        assert!(matches!(
            framing(&[
                ("transfer-encoding", "chunked"),
                ("transfer-encoding", "chunked")
            ])
            .request(false),
            Err(Refusal::NotImplemented(_))
        ));
        assert!(matches!(
            framing(&[("transfer-encoding", "chunked")]).request(true),
            Err(Refusal::BadRequest(_))
        ));
    }

    #[test]
    fn response_framing() {
        assert_eq!(framing(&[]).response(200, false), Some(Framing::UntilClose));
        assert_eq!(
            framing(&[("content-length", "5")]).response(200, true),
            Some(Framing::Empty)
        );
        assert_eq!(
            framing(&[("content-length", "5")]).response(304, false),
            Some(Framing::Empty)
        );
        assert_eq!(
            framing(&[("transfer-encoding", "chunked")]).response(200, false),
            Some(Framing::Chunked)
        );
        assert_eq!(
            framing(&[("transfer-encoding", "chunked"), ("content-length", "5")])
                .response(200, false),
            None
        );
        let gzip = framing(&[("transfer-encoding", "gzip, chunked")]);
        assert_eq!(gzip.response(200, false), Some(Framing::Chunked));
        assert!(gzip.other_codings());
        assert_eq!(
            framing(&[
                ("transfer-encoding", "gzip"),
                ("transfer-encoding", "chunked")
            ])
            .response(200, false),
            Some(Framing::Chunked)
        );
        assert_eq!(
            framing(&[("transfer-encoding", "chunked, gzip")]).response(200, false),
            Some(Framing::UntilClose)
        );
        // A HEAD or 304 answer's length is checked like a GET's, though it describes no body here.
        for bad in ["5, 6", "-5", "+5"] {
            assert_eq!(
                framing(&[("content-length", bad)]).response(200, true),
                None,
                "{bad}"
            );
            assert_eq!(
                framing(&[("content-length", bad)]).response(304, false),
                None,
                "{bad}"
            );
        }
    }

    /// Feeds `body` split at every position; returns (consumed, data) of the first call that completes.
    fn parse_all(body: &[u8]) -> Result<(usize, Vec<u8>), ChunkError> {
        let mut whole = None;
        for split in 0..=body.len() {
            let mut p = ChunkedParser::default();
            let mut data = Vec::new();
            let a = p.advance(&body[..split], |d| data.extend_from_slice(d))?;
            assert_eq!(
                a, split,
                "the first part is consumed whole unless the body ended"
            );
            let b = p.advance(&body[split..], |d| data.extend_from_slice(d))?;
            let got = (a + b, data, p.done());
            match &whole {
                None => whole = Some(got),
                Some(w) => assert_eq!(w, &got, "split at {split}"),
            }
        }
        let (n, data, done) = whole.unwrap();
        assert!(done, "body incomplete");
        Ok((n, data))
    }

    #[test]
    fn chunked_bodies_parse_wherever_they_are_split() {
        let body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Sum: 1\r\n\r\nGET / HTTP/1.1";
        let (n, data) = parse_all(&body[..body.len() - 14]).unwrap();
        assert_eq!(n, body.len() - 14);
        assert_eq!(data, b"hello world");
        let mut p = ChunkedParser::default();
        assert_eq!(
            p.advance(body, |_| {}).unwrap(),
            body.len() - 14,
            "stops at the end"
        );
        assert!(p.done());
        assert_eq!(
            parse_all(b"A\r\n0123456789\r\n0\r\n\r\n").unwrap().1,
            b"0123456789"
        );
    }

    #[test]
    fn malformed_chunked_bodies_are_refused() {
        for bad in [
            &b"\r\n"[..],
            b"x\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"5\r\nhelloX\r\n",
            b"5 5\r\nhello\r\n",
            b"-5\r\nhello\r\n",
            b"1ffffffffffffffff\r\n",
            b"0\r\n: x\r\n\r\n",
            b"0\r\n\r\r",
            b"0\r\nbad trailer\r\n\r\n",
            b"0\r\nX-Sum 1\r\n\r\n",
            b"0\r\nX-Sum: a\x01b\r\n\r\n",
        ] {
            let mut p = ChunkedParser::default();
            assert!(
                p.advance(bad, |_| {}).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let mut p = ChunkedParser::default();
        let long = [b'1'; 1]
            .iter()
            .chain(std::iter::repeat_n(&b';', MAX_CHUNK_LINE + 1))
            .copied()
            .collect::<Vec<u8>>();
        assert!(p.advance(&long, |_| {}).is_err());
    }

    #[test]
    fn extensions_are_bounded_per_body_and_trailers_are_noticed() {
        // Six lines of 4,000 bytes of extensions: each line fits, the body does not.
        let ext = "a".repeat(4000);
        let mut body = Vec::new();
        for _ in 0..6 {
            body.extend_from_slice(format!("5;e={ext}\r\nhello\r\n").as_bytes());
        }
        body.extend_from_slice(b"0\r\n\r\n");
        let err = ChunkedParser::default().advance(&body, |_| {}).unwrap_err();
        assert_eq!(err, ChunkError("chunk extensions too large"));

        let mut p = ChunkedParser::default();
        p.advance(b"1;a=b\r\nx\r\n0\r\n\r\n", |_| {}).unwrap();
        assert!(p.done() && !p.had_trailers());
        let mut p = ChunkedParser::default();
        p.advance(b"1\r\nx\r\n0\r\nX-Sum: 1\r\n\r\n", |_| {})
            .unwrap();
        assert!(p.done() && p.had_trailers());
    }

    #[test]
    fn chunks_are_written_as_a_strict_parser_reads_them() {
        let mut out = Vec::new();
        push_chunk(&mut out, b"");
        assert!(out.is_empty(), "an empty chunk would end the body");
        push_chunk(&mut out, b"hello");
        push_chunk(&mut out, &[b'x'; 300]);
        out.extend_from_slice(LAST_CHUNK);
        assert!(out.starts_with(b"5\r\nhello\r\n12c\r\n"));
        let (n, data) = parse_all(&out).unwrap();
        assert_eq!(n, out.len());
        assert_eq!(&data[..5], b"hello");
        assert_eq!(data.len(), 305);
    }

    #[test]
    fn authorities() {
        for good in [
            &b"example.com"[..],
            b"example.com:8080",
            b"127.0.0.1",
            b"127.0.0.1:65535",
            b"[::1]",
            b"[2001:db8::1]:443",
            b"a-b_c~d.e",
            b"xn--caf-dma.example",
        ] {
            assert!(valid_authority(good), "{:?}", String::from_utf8_lossy(good));
        }
        for bad in [
            &b""[..],
            b":80",
            b"user:pw@example.com",
            b"user@example.com",
            b"example.com:",
            b"example.com:65536",
            b"example.com:123456",
            b"example.com:8a",
            b"exa mple.com",
            b"example.com/path",
            b"example.com\x00",
            b"[::1",
            b"[not-ip]",
            b"[::1]x",
            b"[::1]:99999",
            b"%zz.example",
            b"caf%C3%A9.example",
            b"a%4",
            b"a\"b",
        ] {
            assert!(!valid_authority(bad), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn decimal() {
        for n in [0u64, 7, 10, 1234567890, u64::MAX] {
            let mut v = Vec::new();
            push_decimal(&mut v, n);
            assert_eq!(v, n.to_string().as_bytes());
        }
    }
}
