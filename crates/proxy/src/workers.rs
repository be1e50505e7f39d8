//! The proxy listener: one accept loop hands each connection to the least busy worker thread, which serves it to
//! the end on its own single-threaded runtime.
//!
//! Shutdown follows the same drain as the api-server's admin listener: the listener closes, open connections are
//! served for [`HttpLimits::drain_grace`] with `Connection: close` on every response, then idle connections close
//! and those in the middle of a request finish it. If the caller stops waiting (the api-server's
//! `shutdown.timeout`), dropping the returned future stops the workers and cancels what is left.
//!
//! A kept-alive connection idle for a moment between requests leaves its task for the parking lot (`park`), which
//! hands it back to its worker thread, in a new task, when its next request arrives or its keep-alive timeout
//! passes. A parked connection stays counted as open (its guard goes with it), and the end of the drain's grace
//! closes the parked ones at once, like the idle ones still in their tasks.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc, oneshot};

use crate::conn::{self, Resumed, Worker};
use crate::listener::{ConnectionErrors, HttpLimits, OpenConnections, OpenGuard, accept};
use crate::park::{Parked, ParkingLot};
use crate::pool::IDLE_TIMEOUT;
use crate::state::Proxy;
use crate::tunnel::RingRelay;

enum Message {
    /// A new client connection, counted as open until its guard is dropped.
    Connection(std::net::TcpStream, SocketAddr, WorkerGuard),
    /// A parked connection to take up again: readable, hung up or at its keep-alive deadline.
    Resume(Parked<Owner>),
    /// The drain grace is over: close connections between requests.
    CloseIdle,
}

/// What the parking lot keeps with a parked connection: its open count, and the worker it goes back to.
struct Owner {
    guard: WorkerGuard,
    worker: usize,
}

type Lot = ParkingLot<Owner>;

/// Stops the parking lot's thread (closing what it holds) when `serve` returns or is dropped.
struct StopLot(Arc<Lot>);

impl Drop for StopLot {
    fn drop(&mut self) {
        self.0.stop();
    }
}

/// Counts a connection as open, overall and on its worker, while it lives (from its hand-off to its close).
struct WorkerGuard {
    _open: OpenGuard,
    worker: Arc<AtomicUsize>,
}

impl WorkerGuard {
    fn new(all: &Arc<OpenConnections>, worker: &Arc<AtomicUsize>) -> WorkerGuard {
        worker.fetch_add(1, Ordering::AcqRel);
        WorkerGuard {
            _open: OpenGuard::new(all),
            worker: Arc::clone(worker),
        }
    }
}

impl Drop for WorkerGuard {
    fn drop(&mut self) {
        self.worker.fetch_sub(1, Ordering::AcqRel);
    }
}

struct WorkerHandle {
    tx: mpsc::UnboundedSender<Message>,
    open: Arc<AtomicUsize>,
    done: oneshot::Receiver<()>,
}

/// Serves `proxy` on `listener` with `threads` worker threads (at least one) until `shutdown` completes, then
/// drains; returns once every connection has closed and every worker thread has stopped. Fails only when a worker
/// thread or the parking lot (its readiness set, its thread) cannot be started.
pub async fn serve(
    listener: TcpListener,
    proxy: Proxy,
    limits: HttpLimits,
    threads: usize,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let draining = Arc::new(AtomicBool::new(false));
    let all = Arc::new(OpenConnections::default());
    let channels: Vec<_> = (0..threads.max(1))
        .map(|_| mpsc::unbounded_channel())
        .collect();
    // Weak: a worker's channel closes when the accept loop drops its sender, whatever the lot does.
    let resume_to: Vec<_> = channels.iter().map(|(tx, _)| tx.downgrade()).collect();
    let lot = Lot::start(proxy.inner.metrics.parked.clone(), move |parked| {
        if let Some(tx) = resume_to[parked.owner.worker].upgrade() {
            // A worker gone (it panicked) drops the connection with the message.
            let _ = tx.send(Message::Resume(parked));
        }
    })?;
    let _stop_lot = StopLot(Arc::clone(&lot));
    let mut workers = Vec::with_capacity(threads);
    // Stopped (its tunnels closed) once the last worker is gone.
    let tunnels = Arc::new(RingRelay::start(
        proxy.inner.tunnel_io_uring,
        threads.max(1),
    ));
    for (n, (tx, rx)) in channels.into_iter().enumerate() {
        let (done_tx, done) = oneshot::channel();
        let open = Arc::new(AtomicUsize::new(0));
        let worker = Worker {
            p: Arc::clone(&proxy.inner),
            pool: Default::default(),
            limits,
            draining: Arc::clone(&draining),
            close_idle: Default::default(),
            close_idle_now: Notify::new(),
            spare: Default::default(),
            parking: std::cell::Cell::new(true),
            tunnels: Arc::clone(&tunnels),
        };
        let lot = Arc::clone(&lot);
        std::thread::Builder::new()
            .name(format!("proxy-{n}"))
            .spawn(move || {
                run_worker(worker, n, lot, rx);
                let _ = done_tx.send(());
            })?;
        workers.push(WorkerHandle { tx, open, done });
    }

    tokio::pin!(shutdown);
    let mut over_capacity = OverCapacity::default();
    while let Some((stream, peer)) = accept("proxy", &listener, shutdown.as_mut()).await {
        if all.count() >= limits.max_connections {
            over_capacity.refuse(stream, peer, &proxy.inner.metrics.connections_closed);
            continue;
        }
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(err) => {
                tracing::warn!(%peer, "could not hand the connection to a worker: {err}");
                continue;
            }
        };
        let worker = workers
            .iter()
            .min_by_key(|w| w.open.load(Ordering::Acquire))
            .expect("at least one worker");
        let guard = WorkerGuard::new(&all, &worker.open);
        if worker
            .tx
            .send(Message::Connection(stream, peer, guard))
            .is_err()
        {
            // The worker thread is gone (it panicked): the connection and its guard are dropped with the message.
            tracing::error!("proxy worker thread stopped; connection from {peer} closed");
        }
    }
    drop(listener);
    draining.store(true, Ordering::Release);
    let grace = tokio::time::sleep(limits.drain_grace);
    tokio::pin!(grace);
    all.all_closed(Some(grace)).await;
    lot.close_all();
    for w in &workers {
        let _ = w.tx.send(Message::CloseIdle);
    }
    all.all_closed(None).await;
    let mut done = Vec::with_capacity(workers.len());
    for w in workers {
        drop(w.tx);
        done.push(w.done);
    }
    for d in done {
        let _ = d.await;
    }
    Ok(())
}

/// One worker thread: its runtime, its connections, its pool. Returns when the accept loop drops its sender, which
/// cancels whatever connections are still open.
/// The answer to a connection beyond `server.max_connections`: written at once, without waiting for the request.
const OVER_CAPACITY: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
content-length: 46\r\nretry-after: 1\r\nconnection: close\r\n\r\n\
{\"error\":\"too many connections\",\"status\":503}\n";

/// Refuses connections beyond the limit, logging at most once a second.
#[derive(Default)]
struct OverCapacity {
    last_log: Option<std::time::Instant>,
    since_log: u64,
}

impl OverCapacity {
    /// Answers 503 without blocking and closes. The request is not read: reading it could wait on the client, and a
    /// flood must cost the accept loop nothing. What the client already sent is drained first, so that the close
    /// is a FIN the client can read the 503 before, not a reset.
    fn refuse(
        &mut self,
        stream: tokio::net::TcpStream,
        peer: SocketAddr,
        closed: &ConnectionErrors,
    ) {
        closed.count("over_capacity");
        let _ = stream.try_write(OVER_CAPACITY);
        let mut sink = [0u8; 4096];
        while matches!(stream.try_read(&mut sink), Ok(n) if n > 0) {}
        drop(stream);
        self.since_log += 1;
        let now = std::time::Instant::now();
        if self
            .last_log
            .is_none_or(|t| now.duration_since(t) >= std::time::Duration::from_secs(1))
        {
            tracing::warn!(%peer, refused = self.since_log, "server.max_connections reached: new connections answered 503");
            self.last_log = Some(now);
            self.since_log = 0;
        }
    }
}

/// Serves a connection in a new task on this worker thread (`index`), and parks it when it goes idle.
fn spawn_connection(
    worker: &Rc<Worker>,
    index: usize,
    lot: &Arc<Lot>,
    stream: TcpStream,
    peer: SocketAddr,
    guard: WorkerGuard,
    resumed: Option<Resumed>,
) {
    let worker = Rc::clone(worker);
    let lot = Arc::clone(lot);
    tokio::task::spawn_local(async move {
        let (mut stream, mut resumed, mut guard) = (stream, resumed, guard);
        loop {
            // Closed (the guard dropped with the task) unless it went idle.
            let Some(idle) = conn::serve(&worker, stream, peer, resumed).await else {
                return;
            };
            let socket = match idle.socket.into_std() {
                Ok(socket) => socket,
                Err(err) => {
                    tracing::debug!(%peer, "parking a connection: {err}; closed");
                    return;
                }
            };
            let parked = Parked {
                socket,
                peer: idle.peer,
                served: idle.served,
                deadline: idle.deadline.into_std(),
                park_after: idle.park_after,
                owner: Owner {
                    guard,
                    worker: index,
                },
                readable: false,
            };
            let Err(refused) = lot.park(parked) else {
                return;
            };
            // The lot cannot watch it (its thread died, or the readiness set refused the socket): the connection
            // waits in this task, as before parking existed; after a dead lot, every connection of this worker does.
            if lot.is_dead() {
                worker.parking.set(false);
            }
            (stream, guard, resumed) = match take_up(refused) {
                Ok((stream, guard, taken)) => (stream, guard, Some(taken)),
                Err(err) => {
                    tracing::debug!(%peer, "taking back a connection the lot refused: {err}; closed");
                    return;
                }
            };
        }
    });
}

/// A parked connection back in tokio's reactor, with its open count and what its next task resumes from.
fn take_up(parked: Parked<Owner>) -> std::io::Result<(TcpStream, WorkerGuard, Resumed)> {
    let stream = TcpStream::from_std(parked.socket)?;
    let resumed = Resumed {
        served: parked.served,
        deadline: tokio::time::Instant::from_std(parked.deadline),
        park_after: parked.park_after,
        readable: parked.readable,
    };
    Ok((stream, parked.owner.guard, resumed))
}

fn run_worker(
    worker: Worker,
    index: usize,
    lot: Arc<Lot>,
    mut rx: mpsc::UnboundedReceiver<Message>,
) {
    // A local runtime, not a current-thread runtime with a LocalSet: a woken connection task is scheduled once, by
    // the runtime itself, instead of waking the LocalSet's task which then polls it (under perf in a WebSocket relay,
    // the LocalSet's tick was about 1 % of the worker's samples; the bench's ratio did not move measurably).
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build_local(tokio::runtime::LocalOptions::default())
    {
        Ok(runtime) => runtime,
        Err(err) => {
            tracing::error!("proxy worker runtime: {err}");
            return;
        }
    };
    runtime.block_on(async move {
        let worker = Rc::new(worker);
        let sweeper = Rc::clone(&worker);
        tokio::task::spawn_local(async move {
            let mut tick = tokio::time::interval(IDLE_TIMEOUT / 4);
            loop {
                tick.tick().await;
                sweeper.pool.borrow_mut().sweep(tokio::time::Instant::now());
            }
        });
        while let Some(message) = rx.recv().await {
            match message {
                Message::Connection(stream, peer, guard) => {
                    let stream = match TcpStream::from_std(stream) {
                        Ok(stream) => stream,
                        Err(err) => {
                            tracing::warn!(%peer, "registering a connection: {err}");
                            continue;
                        }
                    };
                    spawn_connection(&worker, index, &lot, stream, peer, guard, None);
                }
                Message::Resume(parked) => {
                    let peer = parked.peer;
                    match take_up(parked) {
                        Ok((stream, guard, resumed)) => spawn_connection(
                            &worker,
                            index,
                            &lot,
                            stream,
                            peer,
                            guard,
                            Some(resumed),
                        ),
                        Err(err) => {
                            tracing::warn!(%peer, "registering a parked connection again: {err}")
                        }
                    }
                }
                Message::CloseIdle => {
                    worker.close_idle.set(true);
                    worker.close_idle_now.notify_waiters();
                }
            }
        }
    });
}
