//! One established connection to nsqd: TCP (optionally TLS), the V2 handshake (magic,
//! IDENTIFY with feature negotiation, TLS upgrade, compression, AUTH), then framed reads and
//! batched writes through the negotiated codec.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::command;
use crate::compress::{Deflater, Inflater};
use crate::config::{Compression, Config, IdentifyReply};
use crate::error::{Error, Result, server_error};
use crate::frame::{Frame, decode_from};

/// The socket: plain TCP or TLS over it.
pub(crate) enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Reads frames through the negotiated decoder.
pub(crate) struct FrameReader {
    io: ReadHalf<Stream>,
    inflater: Inflater,
    raw: BytesMut,
    plain: BytesMut,
    max_frame: usize,
    peer: SocketAddr,
}

impl FrameReader {
    /// The next frame; `Ok(None)` when nsqd closed the connection cleanly.
    pub(crate) async fn next(&mut self) -> Result<Option<Frame>> {
        loop {
            if let Some(frame) = self.buffered()? {
                return Ok(Some(frame));
            }
            let n = if self.inflater.is_none() {
                // A full BytesMut would otherwise offer read_buf only a few bytes per call.
                self.plain.reserve(64 * 1024);
                self.io.read_buf(&mut self.plain).await?
            } else {
                self.raw.clear();
                self.raw.reserve(64 * 1024);
                let n = self.io.read_buf(&mut self.raw).await?;
                self.inflater.feed(&self.raw[..n], &mut self.plain)?;
                n
            };
            if n == 0 {
                return if self.plain.is_empty() {
                    Ok(None)
                } else {
                    Err(Error::Malformed("connection closed inside a frame".into()))
                };
            }
        }
    }

    /// The next frame if it is already read in full, without touching the socket.
    pub(crate) fn buffered(&mut self) -> Result<Option<Frame>> {
        match decode_from(&mut self.plain, self.max_frame) {
            Err(Error::Malformed(m)) if m == "HTTP" => Err(Error::HttpPort(self.peer)),
            other => other,
        }
    }

    /// Like [`FrameReader::next`], failing when nothing arrives within `timeout`.
    pub(crate) async fn next_within(&mut self, timeout: Option<Duration>) -> Result<Option<Frame>> {
        // A frame already read needs no timer: arming one reads the clock, once per frame of a burst.
        if let Some(frame) = self.buffered()? {
            return Ok(Some(frame));
        }
        match timeout {
            None => self.next().await,
            Some(t) => tokio::time::timeout(t, self.next())
                .await
                .map_err(|_| Error::Timeout("waiting for data from nsqd (missed heartbeats)"))?,
        }
    }
}

/// Writes command bytes through the negotiated encoder.
pub(crate) struct FrameWriter {
    io: WriteHalf<Stream>,
    deflater: Deflater,
    wire: BytesMut,
    write_timeout: Duration,
}

impl FrameWriter {
    /// Writes `plain` (one or more encoded commands) and flushes, within the write timeout.
    pub(crate) async fn write(&mut self, plain: &[u8]) -> Result<()> {
        let io = &mut self.io;
        let bytes: &[u8] = if self.deflater.is_none() {
            plain
        } else {
            self.wire.clear();
            self.deflater.encode(plain, &mut self.wire)?;
            &self.wire
        };
        tokio::time::timeout(self.write_timeout, async {
            io.write_all(bytes).await?;
            io.flush().await
        })
        .await
        .map_err(|_| Error::Timeout("writing to nsqd"))??;
        Ok(())
    }

    /// Closes our side of the connection.
    pub(crate) async fn shutdown(&mut self) {
        let _ = tokio::time::timeout(self.write_timeout, self.io.shutdown()).await;
    }
}

/// A connection that finished its handshake.
pub(crate) struct Connection {
    pub(crate) reader: FrameReader,
    pub(crate) writer: FrameWriter,
    pub(crate) identify: IdentifyReply,
}

/// Connects to `addr` and completes the handshake, all within `cfg.dial_timeout`.
pub(crate) async fn connect(
    addr: &str,
    cfg: &Config,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<Connection> {
    tokio::time::timeout(cfg.dial_timeout, handshake(addr, cfg, tls))
        .await
        .map_err(|_| Error::Timeout("connecting to nsqd (TCP connect and handshake)"))?
}

/// Handshake state before the stream is split.
struct Handshake {
    /// `None` only while TLS takes the TCP stream over.
    stream: Option<Stream>,
    inflater: Inflater,
    deflater: Deflater,
    raw: BytesMut,
    plain: BytesMut,
    out: BytesMut,
    max_frame: usize,
    peer: SocketAddr,
}

impl Handshake {
    async fn send(&mut self) -> Result<()> {
        let mut wire = BytesMut::new();
        self.deflater.encode(&self.out, &mut wire)?;
        self.out.clear();
        let io = self.io()?;
        io.write_all(&wire).await?;
        io.flush().await?;
        Ok(())
    }

    async fn read_frame(&mut self) -> Result<Frame> {
        loop {
            match decode_from(&mut self.plain, self.max_frame) {
                Ok(Some(frame)) => return Ok(frame),
                Ok(None) => {}
                Err(Error::Malformed(m)) if m == "HTTP" => return Err(Error::HttpPort(self.peer)),
                Err(e) => return Err(e),
            }
            self.raw.clear();
            self.raw.reserve(4096);
            let n = self
                .stream
                .as_mut()
                .ok_or(Error::Closed)?
                .read_buf(&mut self.raw)
                .await?;
            if n == 0 {
                return Err(Error::Closed);
            }
            self.inflater.feed(&self.raw[..n], &mut self.plain)?;
        }
    }

    async fn expect_ok(&mut self, step: &str) -> Result<()> {
        match self.read_frame().await? {
            Frame::Response(b) if &b[..] == b"OK" => Ok(()),
            Frame::Error(e) => Err(server_error(&e)),
            other => Err(Error::Malformed(format!(
                "expected OK after {step}, got {other:?}"
            ))),
        }
    }

    fn io(&mut self) -> Result<&mut Stream> {
        self.stream.as_mut().ok_or(Error::Closed)
    }

    /// Switches to a new decoder; bytes already buffered arrived encoded and are re-fed.
    fn switch_codec(&mut self, inflater: Inflater, deflater: Deflater) -> Result<()> {
        self.inflater = inflater;
        self.deflater = deflater;
        let buffered = self.plain.split();
        self.inflater.feed(&buffered, &mut self.plain)
    }
}

async fn handshake(
    addr: &str,
    cfg: &Config,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<Connection> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let peer = tcp.peer_addr()?;
    let mut h = Handshake {
        stream: Some(Stream::Plain(tcp)),
        inflater: Inflater::None,
        deflater: Deflater::None,
        raw: BytesMut::with_capacity(4096),
        plain: BytesMut::with_capacity(4096),
        out: BytesMut::with_capacity(512),
        max_frame: cfg.max_frame_size,
        peer,
    };
    h.out.extend_from_slice(command::MAGIC_V2);
    command::identify(&mut h.out, &cfg.identify_json());
    h.send().await?;
    let identify = match h.read_frame().await? {
        Frame::Response(b) if &b[..] == b"OK" => IdentifyReply::legacy(),
        Frame::Response(b) => serde_json::from_slice::<IdentifyReply>(&b).map_err(|e| {
            Error::Malformed(format!("IDENTIFY reply is not the expected JSON: {e}"))
        })?,
        Frame::Error(e) => return Err(server_error(&e)),
        Frame::Message(_) => return Err(Error::Malformed("message before IDENTIFY reply".into())),
    };

    if cfg.tls.is_some() && !identify.tls_v1 {
        return Err(Error::Tls(format!(
            "nsqd at {addr} did not agree to TLS (is it started with --tls-cert/--tls-key?)"
        )));
    }
    if identify.tls_v1 {
        let client =
            tls.ok_or_else(|| Error::Tls("nsqd turned TLS on that we did not ask for".into()))?;
        if !h.plain.is_empty() {
            return Err(Error::Malformed(
                "unexpected bytes before the TLS handshake".into(),
            ));
        }
        let name = server_name(addr, cfg)?;
        let Some(Stream::Plain(tcp)) = h.stream.take() else {
            return Err(Error::Malformed("TLS negotiated twice".into()));
        };
        let tls_stream = tokio_rustls::TlsConnector::from(Arc::clone(client))
            .connect(name, tcp)
            .await
            .map_err(|e| Error::Tls(format!("handshake with {addr}: {e}")))?;
        h.stream = Some(Stream::Tls(Box::new(tls_stream)));
        h.expect_ok("TLS upgrade").await?;
    }
    if identify.snappy {
        h.switch_codec(Inflater::snappy(), Deflater::snappy())?;
        h.expect_ok("snappy upgrade").await?;
    } else if identify.deflate {
        let level = identify.deflate_level.clamp(1, 9);
        h.switch_codec(Inflater::deflate(), Deflater::deflate(level))?;
        h.expect_ok("deflate upgrade").await?;
    } else if cfg.compression != Compression::None {
        tracing::warn!(%addr, "nsqd declined compression; continuing uncompressed");
    }
    if identify.auth_required {
        let secret = cfg.auth_secret.as_deref().ok_or_else(|| {
            Error::Auth(format!(
                "nsqd at {addr} requires AUTH and no secret is configured"
            ))
        })?;
        command::auth(&mut h.out, secret.as_bytes());
        h.send().await?;
        match h.read_frame().await? {
            Frame::Response(_) => {}
            Frame::Error(e) => return Err(Error::Auth(server_error(&e).to_string())),
            Frame::Message(_) => return Err(Error::Malformed("message before AUTH reply".into())),
        }
    }
    let (r, w) = tokio::io::split(h.stream.take().ok_or(Error::Closed)?);
    Ok(Connection {
        reader: FrameReader {
            io: r,
            inflater: h.inflater,
            raw: h.raw,
            plain: h.plain,
            max_frame: cfg.max_frame_size,
            peer,
        },
        writer: FrameWriter {
            io: w,
            deflater: h.deflater,
            wire: BytesMut::new(),
            write_timeout: cfg.write_timeout,
        },
        identify,
    })
}

impl Connection {
    /// A connection over `tcp` with no handshake (plain, uncompressed), for tests that play nsqd.
    #[cfg(test)]
    pub(crate) fn plain_for_tests(tcp: TcpStream, cfg: &Config) -> Result<Self> {
        let peer = tcp.peer_addr()?;
        let (r, w) = tokio::io::split(Stream::Plain(tcp));
        Ok(Self {
            reader: FrameReader {
                io: r,
                inflater: Inflater::None,
                raw: BytesMut::new(),
                plain: BytesMut::new(),
                max_frame: cfg.max_frame_size,
                peer,
            },
            writer: FrameWriter {
                io: w,
                deflater: Deflater::None,
                wire: BytesMut::new(),
                write_timeout: cfg.write_timeout,
            },
            identify: IdentifyReply::legacy(),
        })
    }
}

fn server_name(addr: &str, cfg: &Config) -> Result<rustls_pki_types::ServerName<'static>> {
    let host = match cfg.tls.as_ref().and_then(|t| t.server_name.clone()) {
        Some(name) => name,
        None => {
            let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .to_string()
        }
    };
    rustls_pki_types::ServerName::try_from(host.clone())
        .map_err(|e| Error::Tls(format!("{host:?} is not a valid TLS server name: {e}")))
}
