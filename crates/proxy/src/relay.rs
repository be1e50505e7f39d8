//! Bytes on the wire: response heads read and rewritten for the client, bodies relayed both ways as their framing
//! delimits them, each step bounded in time.

use std::cell::Cell;
use std::io;
use std::task::Poll;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use http::Method;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::conn::MAX_HEADERS;
use crate::h1::{
    self, ChunkError, ConnectionTokens, Framing, FramingHeaders, push_decimal, push_header,
};
use crate::pool::UPSTREAM_BUFFER;
use crate::request::Req;

/// Largest response head accepted from a data server.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// What a response head said, once rewritten for the client into `out`.
#[derive(Debug)]
pub(crate) struct Resp {
    pub(crate) status: u16,
    pub(crate) framing: Framing,
    /// The upstream connection may carry another request once the body is read.
    pub(crate) reusable: bool,
    /// The client connection closes after this response.
    pub(crate) close_client: bool,
    /// A `101 Switching Protocols` to an upgrade request: the connection becomes a tunnel.
    pub(crate) upgraded: bool,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum HeadError {
    #[error("connection closed before a response")]
    Closed,
    #[error("reading the response: {0}")]
    Io(#[from] io::Error),
    #[error("malformed response: {0}")]
    Malformed(&'static str),
}

/// Reads a response head (skipping interim 1xx responses) and writes the client's version of it into `out`.
pub(crate) async fn read_response_head<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut BytesMut,
    out: &mut Vec<u8>,
    req: &Req,
    draining: bool,
) -> Result<Resp, HeadError> {
    loop {
        if !buf.is_empty() {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut resp = httparse::Response::new(&mut headers);
            match resp.parse(buf) {
                Ok(httparse::Status::Complete(n)) => {
                    // A hard limit, however the head arrived (one read may bring more than the limit).
                    if n > MAX_RESPONSE_HEAD {
                        return Err(HeadError::Malformed("response head too large"));
                    }
                    let status = resp.code.unwrap_or_default();
                    if status == 101 && req.upgrade {
                        let result = rewrite_upgrade(&resp, out, req);
                        buf.advance(n);
                        return result;
                    }
                    if (100..200).contains(&status) {
                        if status == 101 {
                            return Err(HeadError::Malformed("101 to a request without Upgrade"));
                        }
                        // 100 Continue was answered by the proxy; other interim responses are dropped.
                        buf.advance(n);
                        continue;
                    }
                    let result = rewrite_response(&resp, out, req, draining);
                    buf.advance(n);
                    return result;
                }
                Ok(httparse::Status::Partial) if buf.len() >= MAX_RESPONSE_HEAD => {
                    return Err(HeadError::Malformed("response head too large"));
                }
                Ok(httparse::Status::Partial) => {}
                Err(_) => return Err(HeadError::Malformed("unparsable response head")),
            }
        }
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(UPSTREAM_BUFFER);
        }
        let read = match r.read_buf(buf).await {
            Ok(n) => n,
            // A request that crosses the server's close of an idle connection is answered by a reset
            // rather than the FIN: as with the FIN, no byte of a response came, so it is the same case.
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset && buf.is_empty() => 0,
            Err(e) => return Err(e.into()),
        };
        if read == 0 {
            return Err(if buf.is_empty() {
                HeadError::Closed
            } else {
                HeadError::Malformed("connection closed inside the response head")
            });
        }
    }
}

/// Writes the client's head of a `101 Switching Protocols`: hop-by-hop headers out but `Upgrade`, which names the
/// protocol the tunnel now carries; `Connection: upgrade`; `X-Request-Id`.
fn rewrite_upgrade(
    resp: &httparse::Response<'_, '_>,
    out: &mut Vec<u8>,
    req: &Req,
) -> Result<Resp, HeadError> {
    let mut connection = ConnectionTokens::default();
    let mut upgrade = false;
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("connection") {
            connection.add(h.value);
        }
        upgrade |= h.name.eq_ignore_ascii_case("upgrade");
    }
    if !upgrade {
        return Err(HeadError::Malformed("101 without Upgrade"));
    }
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 101 ");
    out.extend_from_slice(resp.reason.unwrap_or("Switching Protocols").as_bytes());
    out.extend_from_slice(b"\r\n");
    for h in resp.headers.iter() {
        let name = h.name;
        let framing = name.eq_ignore_ascii_case("content-length")
            || name.eq_ignore_ascii_case("transfer-encoding");
        if framing
            || name.eq_ignore_ascii_case("x-request-id")
            || (h1::is_hop_by_hop(name) && !name.eq_ignore_ascii_case("upgrade"))
            || (connection.names_others && h1::named_by_connection(resp.headers, name))
        {
            continue;
        }
        push_header(out, name.as_bytes(), h.value);
    }
    out.extend_from_slice(b"connection: upgrade\r\n");
    push_header(out, b"x-request-id", req.id.as_bytes());
    out.extend_from_slice(b"\r\n");
    Ok(Resp {
        status: 101,
        framing: Framing::Empty,
        reusable: false,
        close_client: true,
        upgraded: true,
    })
}

/// Writes the client's response head: hop-by-hop headers out, the proxy's own framing, `X-Request-Id` in.
fn rewrite_response(
    resp: &httparse::Response<'_, '_>,
    out: &mut Vec<u8>,
    req: &Req,
    draining: bool,
) -> Result<Resp, HeadError> {
    let status = resp.code.unwrap_or_default();
    if !(200..1000).contains(&status) {
        return Err(HeadError::Malformed("status code out of range"));
    }
    let mut connection = ConnectionTokens::default();
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("connection") {
            connection.add(h.value);
        }
    }
    let mut framing_headers = FramingHeaders::default();
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    push_decimal(out, u64::from(status));
    out.push(b' ');
    out.extend_from_slice(resp.reason.unwrap_or_default().as_bytes());
    out.extend_from_slice(b"\r\n");
    // A HEAD or 304 response's Content-Length describes the body it does not have: it passes unchanged.
    let keep_length = req.method == Method::HEAD || status == 304;
    for h in resp.headers.iter() {
        let name = h.name;
        if framing_headers.add(name, h.value) {
            if keep_length && name.eq_ignore_ascii_case("content-length") {
                push_header(out, name.as_bytes(), h.value);
            }
            continue;
        }
        if h1::is_hop_by_hop(name)
            || name.eq_ignore_ascii_case("x-request-id")
            || (connection.names_others && h1::named_by_connection(resp.headers, name))
        {
            continue;
        }
        push_header(out, name.as_bytes(), h.value);
    }
    let framing = framing_headers
        .response(status, req.method == Method::HEAD)
        .ok_or(HeadError::Malformed("ambiguous response framing"))?;
    match framing {
        Framing::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            push_decimal(out, n);
            out.extend_from_slice(b"\r\n");
        }
        // Content codings before `chunked` (`gzip, chunked`) stay: the body is relayed as it is coded.
        Framing::Chunked if !req.http10 && framing_headers.other_codings() => {
            for h in resp.headers.iter() {
                if h.name.eq_ignore_ascii_case("transfer-encoding") {
                    push_header(out, b"transfer-encoding", h.value);
                }
            }
        }
        Framing::Chunked if !req.http10 => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        // De-chunking for an HTTP/1.0 client would leave it a body in a coding it is not told of.
        Framing::Chunked if framing_headers.other_codings() => {
            return Err(HeadError::Malformed(
                "a transfer coding an HTTP/1.0 client cannot take",
            ));
        }
        Framing::Empty if !keep_length && status != 204 => {
            out.extend_from_slice(b"content-length: 0\r\n")
        }
        _ => {}
    }
    push_header(out, b"x-request-id", req.id.as_bytes());
    // HTTP/1.0 has no chunked coding, and a close-delimited body ends with the connection.
    let close_client = !req.keep_alive
        || draining
        || framing == Framing::UntilClose
        || (req.http10 && framing == Framing::Chunked);
    if close_client {
        out.extend_from_slice(b"connection: close\r\n");
    } else if req.http10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    let http11 = resp.version == Some(1);
    Ok(Resp {
        status,
        framing,
        reusable: http11 && !connection.close && framing != Framing::UntilClose,
        close_client,
        upgraded: false,
    })
}

#[derive(Debug)]
pub(crate) enum RelayError {
    /// The data server failed; `head_sent` says whether the client got the response head.
    Upstream {
        detail: String,
        head_sent: bool,
    },
    Client(io::Error),
}

/// `f` within `limit`, arming a timer only when it does not complete at once (a write usually does).
async fn bounded<F: Future>(
    limit: Duration,
    f: F,
) -> Result<F::Output, tokio::time::error::Elapsed> {
    let mut f = std::pin::pin!(f);
    if let Poll::Ready(v) = futures::poll!(f.as_mut()) {
        return Ok(v);
    }
    tokio::time::timeout(limit, f).await
}

/// An I/O step that must make progress within `idle`; running out of time is a `TimedOut` error saying `what`.
pub(crate) async fn within<T>(
    idle: Duration,
    what: &str,
    step: impl Future<Output = io::Result<T>>,
) -> io::Result<T> {
    bounded(idle, step).await.unwrap_or_else(|_| {
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("{what} for {idle:?}"),
        ))
    })
}

/// How long each side of a relay may pause.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pauses {
    /// The data server (`proxy.try_timeout`): a read of its response, a write of the request body to it.
    pub(crate) server: Duration,
    /// The client: a write of the response to it (`server.send_timeout`), a read of its body
    /// (`server.body_read_timeout`).
    pub(crate) client_read: Duration,
    pub(crate) client_write: Duration,
}

/// Whether the request body is still going up while a response comes down. Until it is all sent, a silent server
/// may be waiting for it, which is not its fault; once it is, the server gets a whole pause from that moment.
#[derive(Debug, Default)]
pub(crate) struct Hold {
    uploading: Cell<bool>,
    released: Cell<Option<tokio::time::Instant>>,
}

impl Hold {
    /// A hold in place: the body is still going up.
    pub(crate) fn uploading() -> Hold {
        Hold {
            uploading: Cell::new(true),
            released: Cell::new(None),
        }
    }

    /// The body is all sent (or will not be): the server's pauses count from now.
    pub(crate) fn release(&self) {
        if self.uploading.replace(false) {
            self.released.set(Some(tokio::time::Instant::now()));
        }
    }

    /// How much longer a server that has been silent for `idle` may stay silent: `idle` again while the body is
    /// going up, what is left of `idle` since the release, or nothing.
    fn more(&self, idle: Duration) -> Option<Duration> {
        if self.uploading.get() {
            return Some(idle);
        }
        let left =
            (self.released.get()? + idle).saturating_duration_since(tokio::time::Instant::now());
        (!left.is_zero()).then_some(left)
    }
}

/// Writes all of `bytes`, each write allowed to pause `idle` at most: a slow reader that keeps reading is served
/// however long the whole takes.
pub(crate) async fn write_paced<W: AsyncWrite + Unpin>(
    w: &mut W,
    bytes: &[u8],
    idle: Duration,
    what: &str,
) -> io::Result<()> {
    let mut at = 0;
    while at < bytes.len() {
        match within(idle, what, w.write(&bytes[at..])).await? {
            0 => return Err(io::ErrorKind::WriteZero.into()),
            n => at += n,
        }
    }
    Ok(())
}

/// Sends the response head in `out` and the body after it, as `framing` delimits it; `dechunk` strips the chunked
/// coding (for an HTTP/1.0 client). The server may pause `pauses.server` between reads, the client
/// `pauses.client_write` between writes: one that stops sending or reading is cut off. While `hold` is set (the
/// request body is still going up, and a server may wait for it before it answers more), the server's pauses are
/// not timed: the upload's own timers judge that time (see [`Hold`]).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn relay_body<R, W>(
    r: &mut R,
    buf: &mut BytesMut,
    w: &mut W,
    out: &mut Vec<u8>,
    framing: Framing,
    dechunk: bool,
    pauses: Pauses,
    hold: &Hold,
) -> Result<(), RelayError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let upstream = |detail: String, head_sent: bool| RelayError::Upstream { detail, head_sent };
    let idle = pauses.server;
    let read_more = async |r: &mut R, buf: &mut BytesMut| -> Result<usize, String> {
        buf.reserve(UPSTREAM_BUFFER);
        let mut wait = idle;
        loop {
            match bounded(wait, r.read_buf(buf)).await {
                Ok(read) => return read.map_err(|e| e.to_string()),
                Err(_) => match hold.more(idle) {
                    Some(more) => wait = more,
                    None => return Err(format!("nothing more from the server for {idle:?}")),
                },
            }
        }
    };
    let send = async |w: &mut W, bytes: &[u8]| -> Result<(), RelayError> {
        write_paced(w, bytes, pauses.client_write, "the client read nothing")
            .await
            .map_err(RelayError::Client)
    };
    match framing {
        Framing::Empty => send(w, out).await,
        Framing::Length(n) => {
            let mut left = n;
            let k = take(left, buf);
            out.extend_from_slice(&buf[..k]);
            buf.advance(k);
            left -= k as u64;
            send(w, out).await?;
            while left > 0 {
                let read = read_more(r, buf).await.map_err(|d| upstream(d, true))?;
                if read == 0 {
                    return Err(upstream(
                        format!("closed with {left} bytes of the body unsent"),
                        true,
                    ));
                }
                let k = take(left, buf);
                send(w, &buf[..k]).await?;
                buf.advance(k);
                left -= k as u64;
            }
            Ok(())
        }
        Framing::Chunked => {
            let mut parser = h1::ChunkedParser::default();
            let mut head_sent = false;
            loop {
                let k = parser
                    .advance(buf, |data| {
                        if dechunk {
                            out.extend_from_slice(data)
                        }
                    })
                    .map_err(|e| upstream(e.to_string(), head_sent))?;
                if !dechunk {
                    out.extend_from_slice(&buf[..k]);
                }
                buf.advance(k);
                send(w, out).await?;
                head_sent = true;
                out.clear();
                if parser.done() {
                    return Ok(());
                }
                let read = read_more(r, buf).await.map_err(|d| upstream(d, true))?;
                if read == 0 {
                    return Err(upstream("closed inside a chunked body".to_owned(), true));
                }
            }
        }
        Framing::UntilClose => {
            out.extend_from_slice(buf);
            buf.clear();
            send(w, out).await?;
            while read_more(r, buf).await.map_err(|d| upstream(d, true))? > 0 {
                send(w, buf).await?;
                buf.clear();
            }
            Ok(())
        }
    }
}

/// How many of the buffered bytes belong to a body with `left` bytes to go.
fn take(left: u64, buf: &BytesMut) -> usize {
    usize::try_from(left).map_or(buf.len(), |l| l.min(buf.len()))
}

/// Why a request body did not all go up.
#[derive(Debug)]
pub(crate) enum BodyError {
    /// The client closed the connection inside its body.
    ClientGone(io::Error),
    /// The client's body paused for longer than `server.body_read_timeout`.
    ClientStalled(Duration),
    Malformed(ChunkError),
    /// The body went past `proxy.max_body_bytes`.
    TooLarge(u64),
    /// The server stopped reading it (or closed).
    Upstream(io::Error),
}

/// A request body that went up whole.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct BodySent {
    /// Its trailer fields were dropped.
    pub(crate) trailers_dropped: bool,
}

/// Re-frames the chunked body data in `input` into `out` as fresh chunks (extensions dropped), ending it with the
/// last chunk once `parser` is done (trailers dropped); returns how many bytes of `input` belonged to the body.
/// `data_seen` counts the body's data bytes against `max_body`.
pub(crate) fn reframe(
    parser: &mut h1::ChunkedParser,
    input: &[u8],
    out: &mut Vec<u8>,
    data_seen: &mut u64,
    max_body: Option<u64>,
) -> Result<usize, BodyError> {
    let k = parser
        .advance(input, |data| {
            *data_seen += data.len() as u64;
            h1::push_chunk(out, data);
        })
        .map_err(BodyError::Malformed)?;
    if let Some(max) = max_body.filter(|&max| *data_seen > max) {
        return Err(BodyError::TooLarge(max));
    }
    if parser.done() {
        out.extend_from_slice(h1::LAST_CHUNK);
    }
    Ok(k)
}

/// Streams the rest of a request body from the client (its buffer first) to the server; a chunked body is
/// re-framed on the way (see [`reframe`]). The client may pause `pauses.client_read` between reads, the server
/// `pauses.server` between writes.
pub(crate) async fn send_body<R, W>(
    r: &mut R,
    buf: &mut BytesMut,
    w: &mut W,
    framing: Framing,
    pauses: Pauses,
    max_body: Option<u64>,
) -> Result<BodySent, BodyError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let fill = async |r: &mut R, buf: &mut BytesMut| -> Result<(), BodyError> {
        if buf.is_empty() {
            buf.reserve(UPSTREAM_BUFFER);
            let read = match bounded(pauses.client_read, r.read_buf(buf)).await {
                Ok(read) => read.map_err(BodyError::ClientGone)?,
                Err(_) => return Err(BodyError::ClientStalled(pauses.client_read)),
            };
            if read == 0 {
                return Err(BodyError::ClientGone(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "closed inside the request body",
                )));
            }
        }
        Ok(())
    };
    let upload = async |w: &mut W, bytes: &[u8]| -> Result<(), BodyError> {
        write_paced(w, bytes, pauses.server, "the server read nothing")
            .await
            .map_err(BodyError::Upstream)
    };
    match framing {
        Framing::Length(mut left) => {
            while left > 0 {
                fill(r, buf).await?;
                let k = take(left, buf);
                upload(w, &buf[..k]).await?;
                buf.advance(k);
                left -= k as u64;
            }
            Ok(BodySent::default())
        }
        Framing::Chunked => {
            let mut parser = h1::ChunkedParser::default();
            let mut framed = Vec::new();
            let mut data_seen = 0;
            while !parser.done() {
                fill(r, buf).await?;
                framed.clear();
                let k = reframe(&mut parser, buf, &mut framed, &mut data_seen, max_body)?;
                buf.advance(k);
                upload(w, &framed).await?;
            }
            Ok(BodySent {
                trailers_dropped: parser.had_trailers(),
            })
        }
        Framing::Empty | Framing::UntilClose => Ok(BodySent::default()),
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::Context;

    use tokio::io::ReadBuf;

    use super::*;
    use crate::headers::RequestId;

    /// A connection whose next read fails with `kind` after yielding `bytes`.
    struct Failing {
        bytes: &'static [u8],
        kind: io::ErrorKind,
    }

    impl AsyncRead for Failing {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            if self.bytes.is_empty() {
                return Poll::Ready(Err(self.kind.into()));
            }
            buf.put_slice(self.bytes);
            self.bytes = &[];
            Poll::Ready(Ok(()))
        }
    }

    async fn head_from(bytes: &'static [u8], kind: io::ErrorKind) -> HeadError {
        let req = Req {
            method: Method::GET,
            http10: false,
            framing: Framing::Empty,
            keep_alive: true,
            expect_continue: false,
            id: RequestId::generate(),
            path: None,
            looped: false,
            upgrade: false,
        };
        let mut conn = Failing { bytes, kind };
        let (mut buf, mut out) = (BytesMut::new(), Vec::new());
        match read_response_head(&mut conn, &mut buf, &mut out, &req, false).await {
            Ok(_) => panic!("a response head from {bytes:?}"),
            Err(err) => err,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_silent_under_an_upload_gets_a_whole_pause_once_the_upload_ends() {
        let idle = Duration::from_secs(10);
        assert_eq!(Hold::default().more(idle), None, "no upload: no extra time");
        let hold = Hold::uploading();
        assert_eq!(
            hold.more(idle),
            Some(idle),
            "silence under an upload is not timed"
        );
        tokio::time::advance(Duration::from_secs(30)).await;
        hold.release();
        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(
            hold.more(idle),
            Some(Duration::from_secs(6)),
            "counted from the release"
        );
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(hold.more(idle), None);
    }

    #[tokio::test]
    async fn a_reset_before_any_response_byte_is_a_close() {
        // What a pooled connection gives when the request crossed the server's close.
        let err = head_from(b"", io::ErrorKind::ConnectionReset).await;
        assert!(matches!(err, HeadError::Closed), "{err:?}");
        // Once part of a response came, a reset is a broken response, not a closed connection.
        let err = head_from(b"HTTP/1.1 200 OK\r\n", io::ErrorKind::ConnectionReset).await;
        assert!(matches!(err, HeadError::Io(_)), "{err:?}");
        let err = head_from(b"", io::ErrorKind::BrokenPipe).await;
        assert!(matches!(err, HeadError::Io(_)), "{err:?}");
    }
}
