//! The coordinator task: owns the connections, decides RDY, finds nsqd (directly or through
//! nsqlookupd), reconnects with backoff, slows down when handlers fail, and runs the stop.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::FutureExt;
use rand::Rng;
use rand::seq::{IteratorRandom, SliceRandom};
use tokio::sync::{Mutex, Notify, mpsc};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until};

use crate::error::Error;
use crate::lookup::Lookupd;

use super::connection::{self, Conn, Ended};
use super::message::{Cmd, Message};
use super::{ConsumerConfig, Control, Handler, Shared, StopReport};

/// Longest backoff level (the pause is capped by `backoff_max` long before).
const MAX_BACKOFF_LEVEL: u32 = 30;

enum Event {
    Opened(Arc<str>, u64, crate::Result<Conn>),
    Listed(Vec<String>),
}

#[derive(Debug)]
enum State {
    /// Connect as soon as possible.
    Due,
    Connecting,
    Connected,
    /// Reconnect at this time.
    Waiting(Instant),
}

struct Target {
    direct: bool,
    listed: bool,
    state: State,
    failures: u32,
    ever_connected: bool,
}

#[derive(Default)]
struct Backoff {
    level: u32,
    /// Paused until then; outcomes are ignored meanwhile.
    until: Option<Instant>,
    /// RDY 1 on one connection to test the water.
    probing: bool,
    /// When the probe's RDY 1 was last placed (ms since the consumer's epoch): a holder that
    /// got no message since then for `low_rdy_idle_timeout` hands it on.
    probe_since_ms: i64,
}

struct Coordinator {
    topic: String,
    channel: String,
    cfg: ConsumerConfig,
    tls: Option<Arc<rustls::ClientConfig>>,
    shared: Arc<Shared>,
    targets: HashMap<Arc<str>, Target>,
    conns: HashMap<Arc<str>, Conn>,
    next_id: u64,
    backoff: Backoff,
    epoch: Instant,
    deliveries: Option<mpsc::UnboundedSender<Message>>,
    /// Connection attempts under way. Each holds a clone of `deliveries`, so stop aborts them:
    /// a connection opened after the drain would otherwise keep the handlers' queue open.
    connecting: JoinSet<()>,
    events_tx: mpsc::UnboundedSender<Event>,
    ended_tx: mpsc::UnboundedSender<Ended>,
    requery: Arc<Notify>,
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn spawn<H: Handler>(
    topic: String,
    channel: String,
    cfg: ConsumerConfig,
    tls: Option<Arc<rustls::ClientConfig>>,
    shared: Arc<Shared>,
    handler: Arc<H>,
    control: mpsc::UnboundedReceiver<Control>,
    outcomes: mpsc::UnboundedReceiver<bool>,
) {
    let (deliveries, queue) = mpsc::unbounded_channel();
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let (ended_tx, ended_rx) = mpsc::unbounded_channel();
    let queue = Arc::new(Mutex::new(queue));
    let mut handlers = JoinSet::new();
    for _ in 0..cfg.concurrency {
        handlers.spawn(handler_loop(
            Arc::clone(&queue),
            Arc::clone(&handler),
            Arc::clone(&shared),
            cfg.max_attempts,
            cfg.auto_response,
            cfg.concurrency,
        ));
    }
    let mut targets = HashMap::new();
    for addr in &cfg.nsqd_tcp_addresses {
        targets.insert(
            Arc::from(addr.as_str()),
            Target {
                direct: true,
                listed: true,
                state: State::Due,
                failures: 0,
                ever_connected: false,
            },
        );
    }
    let requery = Arc::new(Notify::new());
    let lookup = (!cfg.lookupd_http_addresses.is_empty()).then(|| {
        tokio::spawn(lookup_loop(
            cfg.lookupd_http_addresses.clone(),
            topic.clone(),
            cfg.lookupd_poll_interval,
            cfg.lookupd_poll_jitter,
            cfg.lookupd_timeout,
            cfg.conn.tls.clone(),
            events_tx.clone(),
            Arc::clone(&requery),
        ))
    });
    let c = Coordinator {
        topic,
        channel,
        cfg,
        tls,
        shared,
        targets,
        conns: HashMap::new(),
        next_id: 0,
        backoff: Backoff::default(),
        epoch: Instant::now(),
        deliveries: Some(deliveries),
        connecting: JoinSet::new(),
        events_tx,
        ended_tx,
        requery,
    };
    tokio::spawn(async move {
        c.run(control, events_rx, ended_rx, outcomes, handlers)
            .await;
        if let Some(l) = lookup {
            l.abort();
        }
    });
}

impl Coordinator {
    async fn run(
        mut self,
        mut control: mpsc::UnboundedReceiver<Control>,
        mut events: mpsc::UnboundedReceiver<Event>,
        mut ended: mpsc::UnboundedReceiver<Ended>,
        mut outcomes: mpsc::UnboundedReceiver<bool>,
        mut handlers: JoinSet<()>,
    ) {
        let mut redistribute = tokio::time::interval(self.cfg.rdy_redistribute_interval);
        redistribute.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.connect_due();
            let wake = self.next_wake();
            tokio::select! {
                ctl = control.recv() => match ctl {
                    Some(Control::SetMaxInFlight(n)) => {
                        self.shared.max_in_flight.store(n, Ordering::Relaxed);
                        self.rebalance(false);
                    }
                    Some(Control::Stop(timeout, reply)) => {
                        let report = self.stop(timeout, &mut events, &mut ended, &mut handlers).await;
                        let _ = reply.send(report);
                        return;
                    }
                    None => {
                        // The Consumer was dropped: stop without draining.
                        self.stop(Duration::ZERO, &mut events, &mut ended, &mut handlers).await;
                        return;
                    }
                },
                Some(ev) = events.recv() => self.on_event(ev),
                Some(e) = ended.recv() => self.on_ended(e),
                Some(success) = outcomes.recv() => self.on_outcome(success),
                _ = redistribute.tick() => {
                    if self.backoff.probing {
                        self.move_idle_probe();
                    } else if self.conns.len() as u64 > self.max_in_flight() {
                        self.rebalance(true);
                    }
                }
                _ = sleep_until(wake) => self.on_timer(),
            }
        }
    }

    fn max_in_flight(&self) -> u64 {
        self.shared.max_in_flight.load(Ordering::Relaxed)
    }

    fn next_wake(&self) -> Instant {
        let far = Instant::now() + Duration::from_secs(3600);
        self.targets
            .values()
            .filter_map(|t| match t.state {
                State::Waiting(at) => Some(at),
                _ => None,
            })
            .chain(self.backoff.until)
            .min()
            .unwrap_or(far)
    }

    fn on_timer(&mut self) {
        let now = Instant::now();
        for t in self.targets.values_mut() {
            if matches!(t.state, State::Waiting(at) if at <= now) {
                t.state = State::Due;
            }
        }
        if self.backoff.until.is_some_and(|u| u <= now) {
            self.backoff.until = None;
            self.probe();
        }
    }

    /// Starts a connection for every target that is due.
    fn connect_due(&mut self) {
        // Reap the attempts that reported already.
        while self.connecting.try_join_next().is_some() {}
        let Some(deliveries) = self.deliveries.clone() else {
            return;
        };
        for (addr, t) in self.targets.iter_mut() {
            if !matches!(t.state, State::Due) {
                continue;
            }
            t.state = State::Connecting;
            self.next_id += 1;
            let id = self.next_id;
            let addr = Arc::clone(addr);
            let (topic, channel) = (self.topic.clone(), self.channel.clone());
            let (conn_cfg, tls) = (self.cfg.conn.clone(), self.tls.clone());
            let shared = Arc::clone(&self.shared);
            let (events, ended) = (self.events_tx.clone(), self.ended_tx.clone());
            let deliveries = deliveries.clone();
            let epoch = self.epoch;
            self.connecting.spawn(async move {
                let result = connection::open(
                    id,
                    Arc::clone(&addr),
                    &topic,
                    &channel,
                    &conn_cfg,
                    tls.as_ref(),
                    shared,
                    deliveries,
                    ended,
                    epoch,
                )
                .await;
                let _ = events.send(Event::Opened(addr, id, result));
            });
        }
    }

    fn reconnect_delay(&self, failures: u32) -> Duration {
        let exp = self
            .cfg
            .reconnect_min
            .saturating_mul(1 << failures.saturating_sub(1).min(16));
        let capped = exp.min(self.cfg.reconnect_max);
        // Up to 25% jitter so that many consumers do not reconnect in lockstep.
        capped.mul_f64(1.0 - rand::rng().random_range(0.0..0.25))
    }

    fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Opened(addr, id, result) => self.on_opened(addr, id, result),
            Event::Listed(addrs) => self.on_listed(addrs),
        }
    }

    fn on_opened(&mut self, addr: Arc<str>, id: u64, result: crate::Result<Conn>) {
        let Some(t) = self.targets.get_mut(&addr) else {
            if let Ok(conn) = result {
                conn.send(Cmd::Close);
            }
            return;
        };
        match result {
            Ok(conn) => {
                debug_assert_eq!(conn.id, id);
                if t.ever_connected {
                    self.shared.stats.reconnects.fetch_add(1, Ordering::Relaxed);
                }
                if t.failures > 0 || t.ever_connected {
                    tracing::info!(nsqd = %addr, "connected again");
                } else {
                    tracing::debug!(nsqd = %addr, "connected");
                }
                t.ever_connected = true;
                t.failures = 0;
                t.state = State::Connected;
                self.shared
                    .stats
                    .connections
                    .fetch_add(1, Ordering::Relaxed);
                self.conns.insert(addr, conn);
                if self.backoff.level > 0 {
                    self.conns.values_mut().for_each(|c| set_rdy(c, 0));
                    if self.backoff.probing {
                        self.probe();
                    }
                } else {
                    self.rebalance(false);
                }
            }
            Err(e) => {
                t.failures += 1;
                self.shared
                    .stats
                    .connect_failures
                    .fetch_add(1, Ordering::Relaxed);
                // Log once per change of state, not once per attempt.
                if t.failures == 1 {
                    tracing::warn!(nsqd = %addr, error = %e, "cannot connect; retrying with backoff");
                } else {
                    tracing::debug!(nsqd = %addr, error = %e, attempt = t.failures, "still cannot connect");
                }
                if matches!(
                    e,
                    Error::InvalidName { .. } | Error::Auth(_) | Error::Tls(_) | Error::Config(_)
                ) {
                    tracing::error!(nsqd = %addr, error = %e, "this will not fix itself; check the configuration");
                }
                if t.direct || t.listed {
                    let failures = t.failures;
                    let delay = self.reconnect_delay(failures);
                    if let Some(t) = self.targets.get_mut(&addr) {
                        t.state = State::Waiting(Instant::now() + delay);
                    }
                } else {
                    self.targets.remove(&addr);
                }
            }
        }
    }

    fn on_ended(&mut self, e: Ended) {
        let is_current = self.conns.get(&e.addr).is_some_and(|c| c.id == e.id);
        if !is_current {
            return;
        }
        if let Some(conn) = self.conns.remove(&e.addr) {
            conn.reader.abort();
        }
        self.shared
            .stats
            .connections
            .fetch_sub(1, Ordering::Relaxed);
        match &e.reason {
            Some(err) => tracing::warn!(nsqd = %e.addr, error = %err, "connection lost"),
            None => tracing::warn!(nsqd = %e.addr, "nsqd closed the connection"),
        }
        let delay = self.reconnect_delay(1);
        if let Some(t) = self.targets.get_mut(&e.addr) {
            if t.direct || t.listed {
                t.state = State::Waiting(Instant::now() + delay);
            } else {
                self.targets.remove(&e.addr);
            }
        }
        // Ask nsqlookupd now whether that nsqd is still there.
        self.requery.notify_one();
        if self.backoff.level == 0 {
            self.rebalance(false);
        } else if self.backoff.probing {
            self.probe();
        }
    }

    fn on_listed(&mut self, addrs: Vec<String>) {
        for t in self.targets.values_mut().filter(|t| !t.direct) {
            t.listed = false;
        }
        for addr in addrs {
            let t = self
                .targets
                .entry(Arc::from(addr.as_str()))
                .or_insert(Target {
                    direct: false,
                    listed: true,
                    state: State::Due,
                    failures: 0,
                    ever_connected: false,
                });
            t.listed = true;
        }
        // An nsqd lookupd no longer lists is not reconnected; a live connection to it stays.
        self.targets.retain(|addr, t| {
            let keep = t.direct || t.listed || matches!(t.state, State::Connected | State::Connecting);
            if !keep {
                tracing::info!(nsqd = %addr, "nsqlookupd no longer lists this nsqd; not reconnecting");
            }
            keep
        });
    }

    fn on_outcome(&mut self, success: bool) {
        if self.backoff.until.is_some() {
            return;
        }
        if success {
            if self.backoff.level == 0 {
                return;
            }
            self.backoff.level -= 1;
            if self.backoff.level == 0 {
                self.backoff.probing = false;
                self.shared.backoff_level.store(0, Ordering::Relaxed);
                tracing::info!("handlers recovered; leaving backoff");
                self.rebalance(false);
                return;
            }
        } else {
            self.backoff.level = (self.backoff.level + 1).min(MAX_BACKOFF_LEVEL);
        }
        self.enter_backoff();
    }

    fn enter_backoff(&mut self) {
        let level = self.backoff.level;
        let pause = self
            .cfg
            .backoff_base
            .saturating_mul(1 << (level - 1).min(20))
            .min(self.cfg.backoff_max);
        tracing::warn!(level, ?pause, "handler failed; pausing deliveries (RDY 0)");
        self.shared.backoff_level.store(level, Ordering::Relaxed);
        self.backoff.until = Some(Instant::now() + pause);
        self.backoff.probing = false;
        self.conns.values_mut().for_each(|c| set_rdy(c, 0));
    }

    /// After a pause: RDY 1 on one random connection, RDY 0 elsewhere.
    fn probe(&mut self) {
        let chosen = self.conns.keys().choose(&mut rand::rng()).cloned();
        self.probe_on(chosen);
    }

    /// While probing, on the redistribute tick: an nsqd that sent nothing for
    /// `low_rdy_idle_timeout` since it got the probe's RDY 1 may have nothing to send, while
    /// another holds a backlog; the RDY 1 moves to one of the others (go-nsq does the same).
    /// Without this the consumer could wait on an empty nsqd for ever.
    fn move_idle_probe(&mut self) {
        if self.conns.len() < 2 {
            return;
        }
        let holder = self.conns.iter().find(|(_, c)| c.rdy > 0).map(|(a, c)| {
            (
                Arc::clone(a),
                c.shared.last_message_ms.load(Ordering::Relaxed),
            )
        });
        let Some((holder, last_ms)) = holder else {
            // The holder's connection ended and no other was chosen yet.
            self.probe();
            return;
        };
        let now_ms = self.epoch.elapsed().as_millis() as i64;
        let idle_ms = self.cfg.low_rdy_idle_timeout.as_millis() as i64;
        if now_ms - last_ms.max(self.backoff.probe_since_ms) < idle_ms {
            return;
        }
        let next = self
            .conns
            .keys()
            .filter(|a| **a != holder)
            .choose(&mut rand::rng())
            .cloned();
        tracing::debug!(from = %holder, to = ?next, "probe idle; moving RDY 1");
        self.probe_on(next);
    }

    /// RDY 1 on `chosen`, RDY 0 elsewhere (decreases first, so the sum stays at most 1).
    fn probe_on(&mut self, chosen: Option<Arc<str>>) {
        self.backoff.probing = true;
        self.backoff.probe_since_ms = self.epoch.elapsed().as_millis() as i64;
        for (addr, c) in self.conns.iter_mut() {
            if Some(addr) != chosen.as_ref() {
                set_rdy(c, 0);
            }
        }
        if let Some(c) = chosen.and_then(|a| self.conns.get_mut(&a)) {
            set_rdy(c, 1);
        }
    }

    /// Spreads max_in_flight over the connections; the sum never exceeds it. Decreases are
    /// sent before increases.
    fn rebalance(&mut self, rotate: bool) {
        if self.deliveries.is_none() || self.backoff.level > 0 || self.conns.is_empty() {
            return;
        }
        let mif = self.max_in_flight();
        let n = self.conns.len() as u64;
        let mut addrs: Vec<Arc<str>> = self.conns.keys().cloned().collect();
        addrs.sort();
        let mut want: HashMap<Arc<str>, u64> = HashMap::new();
        if n <= mif {
            for (i, a) in addrs.iter().enumerate() {
                let share = mif / n + u64::from((i as u64) < mif % n);
                want.insert(Arc::clone(a), share.min(self.conns[a].max_rdy));
            }
        } else {
            // Fewer slots than connections: busy holders keep RDY 1, idle ones give it up on
            // a rotation, and the free slots go to random others.
            let now_ms = self.epoch.elapsed().as_millis() as i64;
            let idle_ms = self.cfg.low_rdy_idle_timeout.as_millis() as i64;
            let mut keep: Vec<Arc<str>> = addrs
                .iter()
                .filter(|a| {
                    let c = &self.conns[*a];
                    let last = c.shared.last_message_ms.load(Ordering::Relaxed);
                    c.rdy > 0 && (!rotate || (last >= 0 && now_ms - last < idle_ms))
                })
                .cloned()
                .collect();
            keep.truncate(mif as usize);
            let mut others: Vec<Arc<str>> = addrs
                .iter()
                .filter(|a| !keep.contains(a))
                .cloned()
                .collect();
            others.shuffle(&mut rand::rng());
            let free = mif as usize - keep.len();
            for a in addrs.iter() {
                want.insert(Arc::clone(a), 0);
            }
            for a in keep.into_iter().chain(others.into_iter().take(free)) {
                want.insert(a, 1);
            }
        }
        for (a, c) in self.conns.iter_mut() {
            if want[a] < c.rdy {
                set_rdy(c, want[a]);
            }
        }
        for (a, c) in self.conns.iter_mut() {
            if want[a] > c.rdy {
                set_rdy(c, want[a]);
            }
        }
    }

    async fn stop(
        &mut self,
        timeout: Duration,
        events: &mut mpsc::UnboundedReceiver<Event>,
        ended: &mut mpsc::UnboundedReceiver<Ended>,
        handlers: &mut JoinSet<()>,
    ) -> StopReport {
        let deadline = Instant::now() + timeout;
        let answered = |s: &Shared| {
            s.stats.finished.load(Ordering::Relaxed) + s.stats.requeued.load(Ordering::Relaxed)
        };
        let before = answered(&self.shared);
        // No new connections, and no new deliveries once the live ones end.
        self.deliveries = None;
        self.targets.clear();
        for c in self.conns.values() {
            c.send(Cmd::Cls);
        }
        // Connections still in their handshake never got RDY: abort them. One that finished
        // just now is in the event queue; dropping it closes it. Either way its clone of the
        // delivery queue goes, so the handlers' queue closes once the live connections end.
        self.connecting.abort_all();
        while self.connecting.join_next().await.is_some() {}
        while let Ok(ev) = events.try_recv() {
            if let Event::Opened(addr, _, Ok(conn)) = ev {
                tracing::debug!(nsqd = %addr, "connected while stopping; closing");
                conn.send(Cmd::Close);
            }
        }
        // Handlers keep answering what they hold; wait until every nsqd acknowledged CLS (so no
        // message is still on its way) and nothing is in flight.
        let draining = |c: &Self| {
            c.shared.in_flight.load(Ordering::Acquire) > 0
                || c.conns
                    .values()
                    .any(|conn| !conn.shared.close_acked.load(Ordering::Acquire))
        };
        while draining(self) && Instant::now() < deadline {
            tokio::select! {
                Some(ev) = events.recv() => {
                    if let Event::Opened(_, _, Ok(conn)) = ev {
                        conn.send(Cmd::Close);
                    }
                }
                Some(e) = ended.recv() => {
                    if self.conns.get(&e.addr).is_some_and(|c| c.id == e.id) {
                        self.conns.remove(&e.addr);
                        self.shared.stats.connections.fetch_sub(1, Ordering::Relaxed);
                    }
                }
                _ = tokio::time::sleep(Duration::from_millis(2)) => {}
            }
        }
        let abandoned = self.shared.in_flight.load(Ordering::Acquire).max(0);
        // Flush every FIN/REQ already queued, then close.
        let flush_deadline = Instant::now().max(deadline) + Duration::from_secs(1);
        for (_, mut c) in self.conns.drain() {
            c.send(Cmd::Close);
            let _ = tokio::time::timeout_at(flush_deadline, &mut c.writer).await;
            // nsqd reads commands in order and closes after our FIN (shutdown): its EOF means
            // every FIN above was applied, so its /stats is settled when stop returns.
            let _ = tokio::time::timeout_at(flush_deadline, &mut c.reader).await;
            c.reader.abort();
            self.shared
                .stats
                .connections
                .fetch_sub(1, Ordering::Relaxed);
        }
        // With every connection gone the delivery queue closes and handlers return.
        let mut clean = abandoned == 0;
        while !handlers.is_empty() {
            match tokio::time::timeout_at(deadline.max(Instant::now()), handlers.join_next()).await
            {
                Ok(_) => {}
                Err(_) => {
                    handlers.abort_all();
                    clean = false;
                    break;
                }
            }
        }
        let report = StopReport {
            drained: answered(&self.shared) - before,
            abandoned,
            clean,
        };
        tracing::info!(?report, "consumer stopped");
        report
    }
}

fn set_rdy(c: &mut Conn, n: u64) {
    if c.rdy != n {
        c.rdy = n;
        c.send(Cmd::Rdy(n));
    }
}

/// Most messages a handler task takes from the queue at once.
const HANDLER_BATCH: usize = 64;

/// One of the `concurrency` handler tasks. It takes its share of what is queued in one go (at least one message,
/// at most [`HANDLER_BATCH`]) and handles them one after another: one lock of the shared queue and one wake-up per
/// burst instead of per message, which is most of what the hand-off from reader to handler cost.
async fn handler_loop<H: Handler>(
    queue: Arc<Mutex<mpsc::UnboundedReceiver<Message>>>,
    handler: Arc<H>,
    shared: Arc<Shared>,
    max_attempts: u16,
    auto_response: bool,
    concurrency: usize,
) {
    let mut batch = Vec::with_capacity(HANDLER_BATCH);
    loop {
        {
            let mut rx = queue.lock().await;
            let share = (rx.len() / concurrency.max(1)).clamp(1, HANDLER_BATCH);
            if rx.recv_many(&mut batch, share).await == 0 {
                return;
            }
        }
        for msg in batch.drain(..) {
            handle_one(&*handler, &shared, max_attempts, auto_response, msg).await;
        }
    }
}

async fn handle_one<H: Handler>(
    handler: &H,
    shared: &Shared,
    max_attempts: u16,
    auto_response: bool,
    msg: Message,
) {
    if msg.connection_ended() {
        // Queued behind slow handlers while its connection ended: nsqd redelivers it, and an
        // answer could not reach nsqd anyway. Handling it would handle it twice.
        tracing::debug!(id = %String::from_utf8_lossy(msg.id()), "skipping a message of a closed connection");
        return;
    }
    tracing::trace!(id = %String::from_utf8_lossy(msg.id()), "handling");
    let giving_up = max_attempts > 0 && msg.attempts() > max_attempts;
    // Inside an async block, a panic in the synchronous part of `handle` or `give_up` (before
    // the first await) is caught as well as one in the future they return.
    let result = if giving_up {
        AssertUnwindSafe(async { handler.give_up(&msg).await })
            .catch_unwind()
            .await
            .map(|()| Ok(()))
    } else {
        AssertUnwindSafe(async { handler.handle(msg.clone()).await })
            .catch_unwind()
            .await
    };
    let ok = match result {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, attempts = msg.attempts(), "handler failed; requeueing");
            false
        }
        Err(_) => {
            let what = if giving_up { "give_up" } else { "handler" };
            tracing::error!(
                attempts = msg.attempts(),
                "{what} panicked; requeueing the message"
            );
            false
        }
    };
    if giving_up && ok {
        if msg.finish() {
            shared.stats.given_up.fetch_add(1, Ordering::Relaxed);
        }
        return;
    }
    if !ok {
        shared.stats.handler_errors.fetch_add(1, Ordering::Relaxed);
    }
    if msg.has_responded() || (!auto_response && ok) {
        return; // answered by the handler, or left for whoever holds the message
    }
    if ok {
        msg.finish(); // reports the success to the backoff itself
    } else {
        msg.requeue(None);
        shared.report_failed();
    }
}

#[allow(clippy::too_many_arguments)]
async fn lookup_loop(
    lookupds: Vec<String>,
    topic: String,
    interval: Duration,
    jitter: f64,
    timeout: Duration,
    tls: Option<crate::TlsConfig>,
    events: mpsc::UnboundedSender<Event>,
    requery: Arc<Notify>,
) {
    // https:// lookupds are verified with the nsqd connections' CA and client certificate.
    let client = match Lookupd::with_tls(timeout, tls.as_ref()) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the nsqlookupd client");
            return;
        }
    };
    let mut next = 0usize;
    let mut failing = false;
    let mut first = true;
    loop {
        // One lookupd per poll, round robin; on failure the next one is tried at once.
        let mut listed = None;
        for i in 0..lookupds.len() {
            let l = &lookupds[(next + i) % lookupds.len()];
            match client.lookup(l, &topic).await {
                Ok(addrs) => {
                    listed = Some(addrs);
                    break;
                }
                Err(e) if !failing => tracing::warn!(error = %e, "nsqlookupd query failed"),
                Err(e) => tracing::debug!(error = %e, "nsqlookupd query failed"),
            }
        }
        next = (next + 1) % lookupds.len();
        match listed {
            Some(addrs) => {
                if failing {
                    tracing::info!("nsqlookupd answers again");
                }
                failing = false;
                if events.send(Event::Listed(addrs)).is_err() {
                    return;
                }
            }
            None => failing = true,
        }
        let wait = if first {
            first = false;
            interval.mul_f64(rand::rng().random_range(0.0..=jitter.clamp(0.0, 1.0)))
        } else {
            interval
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = requery.notified() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::sync::atomic::AtomicU32;

    use bytes::Bytes;

    use super::super::message::ConnShared;
    use super::super::{ConsumerConfig, HandlerError};
    use super::*;
    use crate::message::RawMessage;

    struct Delivery {
        msg: Message,
        conn: Arc<ConnShared>,
        shared: Arc<Shared>,
        cmds: mpsc::UnboundedReceiver<Cmd>,
        outcomes: mpsc::UnboundedReceiver<bool>,
    }

    /// A message received on a live connection, with what its answers and outcomes become.
    fn delivery(attempts: u16) -> Delivery {
        let (outcomes_tx, outcomes) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared::new(&ConsumerConfig::default(), outcomes_tx));
        let (cmd_tx, cmds) = mpsc::unbounded_channel();
        let conn = Arc::new(ConnShared::new(Arc::from("nsqd"), cmd_tx));
        assert!(conn.received(&shared));
        let raw = RawMessage {
            timestamp_ns: 0,
            attempts,
            id: *b"0123456789abcdef",
            body: Bytes::new(),
        };
        let msg = Message::new(raw, Arc::clone(&conn), Arc::clone(&shared));
        Delivery {
            msg,
            conn,
            shared,
            cmds,
            outcomes,
        }
    }

    /// Panics before returning its future, in `handle` on a first delivery and in `give_up`.
    #[derive(Default)]
    struct PanicsEarly {
        calls: AtomicU32,
    }

    impl Handler for PanicsEarly {
        fn handle(&self, m: Message) -> impl Future<Output = Result<(), HandlerError>> + Send {
            self.calls.fetch_add(1, Ordering::SeqCst);
            assert!(m.attempts() > 1, "handle panics synchronously");
            async { Ok(()) }
        }

        fn give_up(&self, m: &Message) -> impl Future<Output = ()> + Send {
            assert!(m.attempts() == 0, "give_up panics synchronously");
            async {}
        }
    }

    fn is_req(cmd: Option<Cmd>) -> bool {
        matches!(cmd, Some(Cmd::Req(..)))
    }

    #[tokio::test]
    async fn a_panic_before_the_handlers_future_is_a_failed_attempt() {
        let mut d = delivery(1);
        let handler = PanicsEarly::default();
        handle_one(&handler, &d.shared, 5, true, d.msg.clone()).await;
        assert!(is_req(d.cmds.try_recv().ok()), "requeued");
        assert_eq!(
            d.outcomes.try_recv().ok(),
            Some(false),
            "counts for backoff"
        );
        assert_eq!(d.shared.stats.handler_errors.load(Ordering::Relaxed), 1);
        // The handler task goes on: the next delivery is handled.
        let mut next = delivery(2);
        handle_one(&handler, &next.shared, 5, true, next.msg.clone()).await;
        assert!(matches!(next.cmds.try_recv().ok(), Some(Cmd::Fin(_))));
        assert_eq!(handler.calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_panic_in_give_up_is_a_failed_attempt() {
        let mut d = delivery(6);
        handle_one(&PanicsEarly::default(), &d.shared, 5, true, d.msg.clone()).await;
        assert!(is_req(d.cmds.try_recv().ok()), "requeued, not finished");
        assert_eq!(d.outcomes.try_recv().ok(), Some(false));
        assert_eq!(d.shared.stats.given_up.load(Ordering::Relaxed), 0);
        assert_eq!(d.shared.stats.handler_errors.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_manual_fin_counts_once_as_a_success_for_backoff() {
        let mut d = delivery(1);
        d.shared.backoff_level.store(1, Ordering::Relaxed);
        let held = Arc::new(std::sync::Mutex::new(None));
        let h = Arc::clone(&held);
        // auto_response off: the handler keeps the message; someone finishes it later.
        let handler = move |m: Message| {
            *h.lock().unwrap() = Some(m);
            async { Ok::<(), HandlerError>(()) }
        };
        handle_one(&handler, &d.shared, 5, false, d.msg.clone()).await;
        assert!(d.outcomes.try_recv().is_err(), "no outcome before the FIN");
        let m = held.lock().unwrap().take().unwrap();
        assert!(m.finish());
        assert!(!m.finish(), "the first answer wins");
        assert_eq!(d.outcomes.try_recv().ok(), Some(true));
        assert!(d.outcomes.try_recv().is_err(), "once per message");
        // A manual REQ still leaves backoff alone.
        let mut r = delivery(1);
        r.shared.backoff_level.store(1, Ordering::Relaxed);
        assert!(r.msg.requeue(None));
        assert!(r.outcomes.try_recv().is_err());
    }

    #[tokio::test]
    async fn a_message_of_a_closed_connection_is_not_handled() {
        let mut d = delivery(1);
        d.conn.closed(&d.shared);
        let handler = PanicsEarly::default();
        handle_one(&handler, &d.shared, 5, true, d.msg.clone()).await;
        assert_eq!(handler.calls.load(Ordering::SeqCst), 0);
        assert!(d.cmds.try_recv().is_err(), "nothing sent for it");
        assert!(d.outcomes.try_recv().is_err());
    }
}
