//! `Producer`: one persistent connection to one nsqd, publishes pipelined and matched to their
//! replies in order (nsqd answers commands of a connection in the order it read them).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tracing::Instrument;

use crate::command;
use crate::config::Config;
use crate::conn::{self, FrameReader, FrameWriter};
use crate::error::{Error, Result, server_error};
use crate::frame::{Frame, HEARTBEAT};
use crate::names::validate_topic;

/// Settings of a [`Producer`].
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// Connection settings.
    pub conn: Config,
    /// Bound on one publish: connecting if needed, queueing, and nsqd's reply.
    pub publish_timeout: Duration,
    /// Largest body of one message (nsqd `--max-msg-size`, default 1 MiB).
    pub max_message_size: usize,
    /// Largest MPUB payload (nsqd `--max-body-size`, default 5 MiB).
    pub max_body_size: usize,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        Self {
            conn: Config::default(),
            publish_timeout: Duration::from_secs(5),
            max_message_size: 1024 * 1024,
            max_body_size: 5 * 1024 * 1024,
        }
    }
}

type Reply = oneshot::Sender<Result<Bytes>>;

struct Request {
    bytes: BytesMut,
    reply: Option<Reply>,
}

#[derive(Default)]
struct Pending {
    /// Replies awaited, in the order their requests were written, with when that was.
    waiting: VecDeque<(Instant, Reply)>,
    /// When nsqd last answered.
    last_reply: Option<Instant>,
    closed: bool,
}

/// One live connection: its request queue, the replies awaited, its two tasks.
struct Link {
    tx: mpsc::Sender<Request>,
    pending: Arc<Mutex<Pending>>,
    tasks: [AbortHandle; 2],
}

impl Link {
    fn is_open(&self) -> bool {
        !self.pending.lock().expect("pending lock").closed && !self.tx.is_closed()
    }

    /// Whether nsqd stopped answering: a reply is awaited and nothing came for a whole publish
    /// timeout, counted from the last answer or from when the oldest awaited request was
    /// written, whichever is later (a healthy nsqd answers within milliseconds, also deep in a
    /// pipeline; a slow disk's fsync stalls it for less). A caller whose own deadline passed
    /// while queued behind other publishes is no sign of that. A hung link is thus dropped by
    /// the first publish to time out after a whole timeout of silence, at most one publish
    /// timeout later than the silence began plus that publish's own.
    fn is_hung(&self, publish_timeout: Duration) -> bool {
        let p = self.pending.lock().expect("pending lock");
        p.waiting.front().is_some_and(|(written, _)| {
            let since = p.last_reply.map_or(*written, |r| r.max(*written));
            since.elapsed() >= publish_timeout
        })
    }

    fn close(&self) {
        fail_all(&self.pending, || Error::Closed);
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.close();
    }
}

fn fail_all(pending: &Mutex<Pending>, err: impl Fn() -> Error) {
    let drained: Vec<Reply> = {
        let mut p = pending.lock().expect("pending lock");
        p.closed = true;
        p.waiting.drain(..).map(|(_, reply)| reply).collect()
    };
    for reply in drained {
        let _ = reply.send(Err(err()));
    }
}

struct Inner {
    addr: String,
    cfg: ProducerConfig,
    tls: Option<Arc<rustls::ClientConfig>>,
    link: tokio::sync::Mutex<Option<Arc<Link>>>,
}

/// A producer for one nsqd. Cheap to clone; clones share the connection.
///
/// Connects on first use and again on the first publish after a failure; never retries a
/// publish by itself (the caller decides, e.g. [`crate::Publisher`] fails over to another nsqd).
#[derive(Clone)]
pub struct Producer {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("addr", &self.inner.addr)
            .finish()
    }
}

impl Producer {
    /// A producer for the nsqd TCP address `addr` (`host:port`). Does not connect yet.
    pub fn new(addr: impl Into<String>, cfg: ProducerConfig) -> Result<Self> {
        cfg.conn.validate()?;
        let tls = cfg.conn.tls_client_config()?;
        Ok(Self {
            inner: Arc::new(Inner {
                addr: addr.into(),
                cfg,
                tls,
                link: tokio::sync::Mutex::new(None),
            }),
        })
    }

    /// The nsqd address.
    pub fn addr(&self) -> &str {
        &self.inner.addr
    }

    /// Publishes one message.
    pub async fn publish(&self, topic: &str, body: impl AsRef<[u8]>) -> Result<()> {
        let body = body.as_ref();
        validate_topic(topic)?;
        self.check_body(body)?;
        let mut bytes = BytesMut::new();
        command::publish(&mut bytes, topic, body);
        self.request(bytes).await.map(drop)
    }

    /// Publishes several messages atomically (MPUB): all or none.
    pub async fn multi_publish<B: AsRef<[u8]>>(&self, topic: &str, bodies: &[B]) -> Result<()> {
        validate_topic(topic)?;
        if bodies.is_empty() {
            return Err(Error::InvalidBody("MPUB needs at least one message".into()));
        }
        let mut total = 4;
        for b in bodies {
            self.check_body(b.as_ref())?;
            total += 4 + b.as_ref().len();
        }
        if total > self.inner.cfg.max_body_size {
            return Err(Error::InvalidBody(format!(
                "MPUB payload of {total} bytes exceeds max_body_size {}",
                self.inner.cfg.max_body_size
            )));
        }
        let mut bytes = BytesMut::new();
        command::multi_publish(&mut bytes, topic, bodies);
        self.request(bytes).await.map(drop)
    }

    /// Publishes one message that nsqd delivers after `delay` (at most one hour).
    pub async fn deferred_publish(
        &self,
        topic: &str,
        delay: Duration,
        body: impl AsRef<[u8]>,
    ) -> Result<()> {
        let body = body.as_ref();
        validate_topic(topic)?;
        self.check_body(body)?;
        if delay > Duration::from_secs(3600) {
            return Err(Error::InvalidBody(format!(
                "DPUB delay {delay:?} exceeds nsqd's 1h maximum"
            )));
        }
        let mut bytes = BytesMut::new();
        command::deferred_publish(&mut bytes, topic, delay, body);
        self.request(bytes).await.map(drop)
    }

    /// Connects if needed and checks the connection is usable.
    pub async fn ping(&self) -> Result<()> {
        let t = self.inner.cfg.publish_timeout;
        tokio::time::timeout(t, async {
            let link = self.link().await?;
            let mut bytes = BytesMut::new();
            command::nop(&mut bytes);
            link.tx
                .send(Request { bytes, reply: None })
                .await
                .map_err(|_| Error::Closed)
        })
        .await
        .map_err(|_| Error::Timeout("pinging nsqd"))?
    }

    /// Whether a connection is currently open.
    pub async fn is_connected(&self) -> bool {
        self.inner
            .link
            .lock()
            .await
            .as_ref()
            .is_some_and(|l| l.is_open())
    }

    /// Waits (bounded by `timeout`) for replies to publishes already sent, then closes.
    pub async fn close(&self, timeout: Duration) {
        let link = self.inner.link.lock().await.take();
        if let Some(link) = link {
            let deadline = tokio::time::Instant::now() + timeout;
            while !link
                .pending
                .lock()
                .expect("pending lock")
                .waiting
                .is_empty()
                && tokio::time::Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            link.close();
        }
    }

    fn check_body(&self, body: &[u8]) -> Result<()> {
        if body.is_empty() {
            return Err(Error::InvalidBody("empty body (nsqd rejects it)".into()));
        }
        if body.len() > self.inner.cfg.max_message_size {
            return Err(Error::InvalidBody(format!(
                "body of {} bytes exceeds max_message_size {}",
                body.len(),
                self.inner.cfg.max_message_size
            )));
        }
        Ok(())
    }

    async fn request(&self, bytes: BytesMut) -> Result<Bytes> {
        let t = self.inner.cfg.publish_timeout;
        let mut sent_on = None;
        let result = tokio::time::timeout(t, async {
            let link = self.link().await?;
            sent_on = Some(Arc::clone(&link));
            let (reply, rx) = oneshot::channel();
            link.tx
                .send(Request {
                    bytes,
                    reply: Some(reply),
                })
                .await
                .map_err(|_| Error::Closed)?;
            rx.await.map_err(|_| Error::Closed)?
        })
        .await
        .unwrap_or(Err(Error::Timeout("waiting for nsqd to answer a publish")));
        if let (Err(e), Some(link)) = (&result, sent_on) {
            // A hung nsqd or a broken link is dropped so that the next publish reconnects. A
            // timeout alone is not enough: it also fires for a publish queued behind many others
            // on a healthy link, and dropping that link would fail every publish pending on it.
            let broken = match e {
                Error::Timeout(_) => link.is_hung(t),
                Error::Server { .. } => false,
                e => e.is_fatal(),
            };
            if broken {
                self.discard(&link).await;
            }
        }
        result
    }

    async fn discard(&self, link: &Arc<Link>) {
        let mut guard = self.inner.link.lock().await;
        if guard.as_ref().is_some_and(|l| Arc::ptr_eq(l, link)) {
            guard.take();
        }
        link.close();
    }

    /// The open link, connecting first if there is none.
    async fn link(&self) -> Result<Arc<Link>> {
        let mut guard = self.inner.link.lock().await;
        if let Some(link) = guard.as_ref()
            && link.is_open()
        {
            return Ok(Arc::clone(link));
        }
        guard.take();
        let c = conn::connect(
            &self.inner.addr,
            &self.inner.cfg.conn,
            self.inner.tls.as_ref(),
        )
        .await?;
        let link = Arc::new(spawn_link(
            &self.inner.addr,
            c.reader,
            c.writer,
            self.inner.cfg.conn.read_timeout(),
        ));
        *guard = Some(Arc::clone(&link));
        Ok(link)
    }
}

fn spawn_link(
    addr: &str,
    reader: FrameReader,
    writer: FrameWriter,
    read_timeout: Option<Duration>,
) -> Link {
    let (tx, rx) = mpsc::channel::<Request>(1024);
    let pending = Arc::new(Mutex::new(Pending::default()));
    let span = tracing::debug_span!("nsq_producer", nsqd = %addr);
    let w = tokio::spawn(write_loop(writer, rx, Arc::clone(&pending)).instrument(span.clone()));
    let r = tokio::spawn(
        read_loop(reader, tx.clone(), Arc::clone(&pending), read_timeout).instrument(span),
    );
    Link {
        tx,
        pending,
        tasks: [w.abort_handle(), r.abort_handle()],
    }
}

/// Batches whatever is queued into one write; registers each reply before its bytes leave.
async fn write_loop(
    mut writer: FrameWriter,
    mut rx: mpsc::Receiver<Request>,
    pending: Arc<Mutex<Pending>>,
) {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    while let Some(first) = rx.recv().await {
        let now = Instant::now();
        let mut next = Some(first);
        while let Some(req) = next.take() {
            let send = match req.reply {
                // Its caller timed out while it was queued: not published at all is clearer
                // for the caller than published after it was told the publish failed.
                Some(reply) if reply.is_closed() => false,
                Some(reply) => {
                    let mut p = pending.lock().expect("pending lock");
                    if p.closed {
                        let _ = reply.send(Err(Error::Closed));
                        false
                    } else {
                        p.waiting.push_back((now, reply));
                        true
                    }
                }
                None => true,
            };
            if send {
                buf.extend_from_slice(&req.bytes);
            }
            if buf.len() < 256 * 1024 {
                next = rx.try_recv().ok();
            }
        }
        if buf.is_empty() {
            continue;
        }
        if let Err(e) = writer.write(&buf).await {
            tracing::debug!(error = %e, "write failed; closing the connection");
            let msg = e.to_string();
            fail_all(&pending, || Error::Io(std::io::Error::other(msg.clone())));
            return;
        }
        buf.clear();
    }
    writer.shutdown().await;
}

/// Matches replies to requests in order; answers heartbeats.
async fn read_loop(
    mut reader: FrameReader,
    tx: mpsc::Sender<Request>,
    pending: Arc<Mutex<Pending>>,
    read_timeout: Option<Duration>,
) {
    let outcome: Result<()> = async {
        loop {
            let Some(frame) = reader.next_within(read_timeout).await? else {
                return Err(Error::Closed);
            };
            match frame {
                Frame::Response(b) if &b[..] == HEARTBEAT => {
                    let mut bytes = BytesMut::new();
                    command::nop(&mut bytes);
                    tx.send(Request { bytes, reply: None })
                        .await
                        .map_err(|_| Error::Closed)?;
                }
                Frame::Response(b) => reply(&pending, Ok(b)),
                Frame::Error(e) => {
                    let err = server_error(&e);
                    let fatal = err.is_fatal();
                    reply(&pending, Err(err));
                    if fatal {
                        return Err(Error::Closed);
                    }
                }
                Frame::Message(_) => {
                    return Err(Error::Malformed(
                        "a producer connection received a message".into(),
                    ));
                }
            }
        }
    }
    .await;
    if let Err(e) = outcome {
        tracing::debug!(error = %e, "producer connection ended");
    }
    fail_all(&pending, || Error::Closed);
}

fn reply(pending: &Mutex<Pending>, result: Result<Bytes>) {
    let waiter = {
        let mut p = pending.lock().expect("pending lock");
        p.last_reply = Some(Instant::now());
        p.waiting.pop_front()
    };
    match waiter {
        Some((_, w)) => {
            let _ = w.send(result);
        }
        None => tracing::warn!("nsqd sent a reply nobody waits for"),
    }
}
