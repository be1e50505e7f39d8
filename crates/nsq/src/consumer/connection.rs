//! One subscribed connection: a reader task that never waits on handlers (messages go to an
//! unbounded queue whose depth RDY bounds, heartbeats are answered at once) and a writer task
//! that batches FIN/REQ/TOUCH/RDY into single writes.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::BytesMut;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::Instrument;

use crate::command;
use crate::config::Config;
use crate::conn::{self, FrameReader, FrameWriter};
use crate::error::{Error, Result, server_error};
use crate::frame::{Frame, HEARTBEAT};

use super::Shared;
use super::message::{Cmd, ConnShared, Message};

/// Why a connection ended, reported to the coordinator.
pub(crate) struct Ended {
    pub(crate) id: u64,
    pub(crate) addr: Arc<str>,
    pub(crate) reason: Option<Error>,
}

/// A live connection as the coordinator holds it.
pub(crate) struct Conn {
    pub(crate) id: u64,
    pub(crate) shared: Arc<ConnShared>,
    pub(crate) max_rdy: u64,
    /// RDY last sent.
    pub(crate) rdy: u64,
    pub(crate) writer: JoinHandle<()>,
    pub(crate) reader: JoinHandle<()>,
}

impl Conn {
    pub(crate) fn send(&self, cmd: Cmd) {
        let _ = self.shared.cmd.send(cmd);
    }
}

impl Drop for Conn {
    /// A connection nobody holds (e.g. one whose handshake finished after the consumer
    /// stopped) must not stay subscribed: dropping a JoinHandle does not stop its task.
    fn drop(&mut self) {
        let _ = self.shared.cmd.send(Cmd::Close);
        self.reader.abort();
    }
}

/// Connects, subscribes and starts the two tasks.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn open(
    id: u64,
    addr: Arc<str>,
    topic: &str,
    channel: &str,
    cfg: &Config,
    tls: Option<&Arc<rustls::ClientConfig>>,
    shared: Arc<Shared>,
    deliveries: mpsc::UnboundedSender<Message>,
    ended: mpsc::UnboundedSender<Ended>,
    epoch: Instant,
) -> Result<Conn> {
    let mut c = conn::connect(&addr, cfg, tls).await?;
    let mut buf = BytesMut::new();
    command::sub(&mut buf, topic, channel);
    c.writer.write(&buf).await?;
    let reply = tokio::time::timeout(cfg.dial_timeout, c.reader.next())
        .await
        .map_err(|_| Error::Timeout("waiting for SUB reply"))??;
    match reply {
        Some(Frame::Response(b)) if &b[..] == b"OK" => {}
        Some(Frame::Error(e)) => return Err(server_error(&e)),
        Some(other) => {
            return Err(Error::Malformed(format!(
                "unexpected reply to SUB: {other:?}"
            )));
        }
        None => return Err(Error::Closed),
    }
    let span = tracing::info_span!("nsq_consumer", nsqd = %addr, topic, channel);
    Ok(start(
        id,
        addr,
        c,
        cfg.read_timeout(),
        shared,
        deliveries,
        ended,
        epoch,
        span,
    ))
}

/// Spawns the reader and writer of a subscribed connection.
#[allow(clippy::too_many_arguments)]
fn start(
    id: u64,
    addr: Arc<str>,
    c: conn::Connection,
    read_timeout: Option<Duration>,
    shared: Arc<Shared>,
    deliveries: mpsc::UnboundedSender<Message>,
    ended: mpsc::UnboundedSender<Ended>,
    epoch: Instant,
    span: tracing::Span,
) -> Conn {
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    let conn_shared = Arc::new(ConnShared::new(addr, cmd_tx));
    // The writer's failure, for the reader to stop on.
    let (failed_tx, failed_rx) = oneshot::channel();
    let writer = tokio::spawn(
        write_loop(
            c.writer,
            cmd_rx,
            Arc::clone(&conn_shared),
            Arc::clone(&shared),
            failed_tx,
        )
        .instrument(span.clone()),
    );
    let reader = tokio::spawn(
        read_loop(
            id,
            c.reader,
            Arc::clone(&conn_shared),
            shared,
            deliveries,
            ended,
            failed_rx,
            read_timeout,
            epoch,
        )
        .instrument(span),
    );
    Conn {
        id,
        shared: conn_shared,
        max_rdy: c.identify.max_rdy_count.max(1),
        rdy: 0,
        writer,
        reader,
    }
}

async fn write_loop(
    mut writer: FrameWriter,
    mut rx: mpsc::UnboundedReceiver<Cmd>,
    conn: Arc<ConnShared>,
    shared: Arc<Shared>,
    failed: oneshot::Sender<Error>,
) {
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut closing = false;
    while !closing {
        let Some(first) = rx.recv().await else { break };
        if rx.is_empty() {
            // Answers come in bursts (a batch of handlers finishing together): let the other
            // ready tasks queue theirs so that one write carries them all.
            tokio::task::yield_now().await;
        }
        let mut next = Some(first);
        while let Some(cmd) = next.take() {
            match cmd {
                Cmd::Fin(id) => command::fin(&mut buf, &id),
                Cmd::Req(id, delay) => command::req(&mut buf, &id, delay),
                Cmd::Touch(id) => command::touch(&mut buf, &id),
                Cmd::Rdy(n) => command::rdy(&mut buf, n),
                Cmd::Nop => command::nop(&mut buf),
                Cmd::Cls => command::cls(&mut buf),
                Cmd::Close => closing = true,
            }
            if !closing && buf.len() < 64 * 1024 {
                next = rx.try_recv().ok();
            }
        }
        if !buf.is_empty() {
            if let Err(e) = writer.write(&buf).await {
                tracing::warn!(error = %e, "write to nsqd failed; closing the connection");
                // Nothing more reaches nsqd: answers given from now on are not counted (the
                // connection is closed for them), the queue closes as this task returns, and
                // the reader stops and reports the connection ended.
                conn.closed(&shared);
                let _ = failed.send(e);
                return;
            }
            buf.clear();
        }
    }
    writer.shutdown().await;
}

#[allow(clippy::too_many_arguments)]
async fn read_loop(
    id: u64,
    mut reader: FrameReader,
    conn: Arc<ConnShared>,
    shared: Arc<Shared>,
    deliveries: mpsc::UnboundedSender<Message>,
    ended: mpsc::UnboundedSender<Ended>,
    mut writer_failed: oneshot::Receiver<Error>,
    read_timeout: Option<Duration>,
    epoch: Instant,
) {
    // Until the writer returns: once it did (after a Close), only its failure matters.
    let mut writer_running = true;
    // When the frames of the last socket read arrived, stamped at the first message among them: the frames of one
    // read arrived together, and reading the clock per message was a tenth of the consumer's time (perf).
    let mut stamped = false;
    let reason = loop {
        let next = match reader.buffered() {
            Ok(Some(f)) => Ok(Some(f)),
            Ok(None) => {
                stamped = false;
                tokio::select! {
                    biased;
                    failed = &mut writer_failed, if writer_running => match failed {
                        Ok(e) => Err(e),
                        Err(_) => {
                            writer_running = false; // closed normally
                            continue;
                        }
                    },
                    next = reader.next_within(read_timeout) => next,
                }
            }
            Err(e) => Err(e),
        };
        let frame = match next {
            Ok(Some(f)) => f,
            Ok(None) => break None,
            Err(e) => break Some(e),
        };
        match frame {
            Frame::Message(raw) => {
                tracing::trace!(id = %String::from_utf8_lossy(&raw.id), "message");
                shared.stats.received.fetch_add(1, Ordering::Relaxed);
                if !conn.received(&shared) {
                    // The writer failed while this burst was being read: nsqd redelivers.
                    break Some(writer_failed.try_recv().unwrap_or(Error::Closed));
                }
                if !stamped {
                    stamped = true;
                    conn.last_message_ms
                        .store(epoch.elapsed().as_millis() as i64, Ordering::Relaxed);
                }
                let msg = Message::new(raw, Arc::clone(&conn), Arc::clone(&shared));
                if deliveries.send(msg).is_err() {
                    break None; // the consumer is gone
                }
            }
            Frame::Response(b) if &b[..] == HEARTBEAT => {
                let _ = conn.cmd.send(Cmd::Nop);
            }
            Frame::Response(b) if &b[..] == b"CLOSE_WAIT" => {
                tracing::debug!("nsqd acknowledged CLS");
                conn.close_acked.store(true, Ordering::Release);
            }
            Frame::Response(_) => {}
            Frame::Error(e) => {
                let err = server_error(&e);
                if err.is_fatal() {
                    tracing::warn!(error = %err, "nsqd closed the connection with an error");
                    break Some(err);
                }
                // E_FIN_FAILED and co: the message timed out and nsqd will redeliver it.
                shared.stats.timed_out.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(error = %err, "nsqd refused an answer (message already timed out)");
            }
        }
    };
    conn.closed(&shared);
    conn.close_acked.store(true, Ordering::Release);
    let _ = conn.cmd.send(Cmd::Close);
    let _ = ended.send(Ended {
        id,
        addr: Arc::clone(&conn.addr),
        reason,
    });
}

#[cfg(test)]
mod tests {
    use std::net::Shutdown;

    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    use super::*;
    use crate::frame::{FRAME_MESSAGE, FRAME_RESPONSE, frame};

    fn message(id: &[u8; 16]) -> Vec<u8> {
        let mut d = 1_700_000_000_000_000_000i64.to_be_bytes().to_vec();
        d.extend_from_slice(&1u16.to_be_bytes());
        d.extend_from_slice(id);
        d.extend_from_slice(b"body");
        frame(FRAME_MESSAGE, &d)
    }

    /// A writer that can no longer write (here: our side shut down, as after a reset or a
    /// write timeout) ends the connection although nsqd keeps it open, and an answer given
    /// afterwards is not counted as finished.
    #[tokio::test]
    async fn a_failed_write_ends_the_connection_and_later_answers_do_not_count() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (mut nsqd, _) = listener.accept().await.unwrap();
        let client = client.into_std().unwrap();
        client.shutdown(Shutdown::Write).unwrap();
        let client = TcpStream::from_std(client).unwrap();
        let cfg = Config::default();
        let c = conn::Connection::plain_for_tests(client, &cfg).unwrap();
        let shared = Arc::new(Shared::new(
            &super::super::ConsumerConfig::default(),
            mpsc::unbounded_channel().0,
        ));
        let (deliveries, mut queue) = mpsc::unbounded_channel();
        let (ended_tx, mut ended) = mpsc::unbounded_channel();
        let conn = start(
            7,
            Arc::from("nsqd"),
            c,
            Some(Duration::from_secs(60)),
            Arc::clone(&shared),
            deliveries,
            ended_tx,
            Instant::now(),
            tracing::Span::none(),
        );
        nsqd.write_all(&message(b"0000000000000001")).await.unwrap();
        let held = queue.recv().await.unwrap();
        assert_eq!(shared.in_flight.load(Ordering::Relaxed), 1);
        // The heartbeat's NOP is the write that fails.
        nsqd.write_all(&frame(FRAME_RESPONSE, HEARTBEAT))
            .await
            .unwrap();
        let e = tokio::time::timeout(Duration::from_secs(5), ended.recv())
            .await
            .expect("the connection reports its end although nsqd keeps it open")
            .unwrap();
        assert_eq!(e.id, 7);
        assert!(e.reason.is_some(), "the write error is the reason");
        assert!(held.finish(), "the first answer");
        assert_eq!(
            shared.stats.finished.load(Ordering::Relaxed),
            0,
            "a FIN that cannot reach nsqd is not counted"
        );
        assert_eq!(shared.in_flight.load(Ordering::Relaxed), 0);
        assert!(held.connection_ended());
        drop(conn);
    }
}
