//! The announcer: publishes this service's heartbeat to a random nsqd every `interval` (with
//! jitter) while a health check passes, and a `leaving` heartbeat on shutdown.
//!
//! One [`nsq::Publisher`] holds one persistent connection per nsqd; each heartbeat goes to a
//! random one and fails over to the others within the same tick, so losing an nsqd costs no
//! interval. When none takes it the announcer retries with backoff and logs once per change of
//! state, not once per tick.
//!
//! Beside this file: `config.rs` (settings, and [`AnnouncerConfigError`] for settings refused at start-up),
//! `health.rs` (the check that gates each tick), `report.rs` ([`AnnounceError`] for one heartbeat not published,
//! and the counters), `transport.rs` (the seam between the loop and NSQ) and `tests.rs` (virtual-time tests).

use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::Rng;
use tokio::sync::watch;
use tokio::time::{Instant, sleep_until};

mod config;
mod health;
mod report;
pub(crate) mod transport;

pub use config::{
    AnnouncerConfig, AnnouncerConfigError, DEFAULT_INTERVAL, DEFAULT_JITTER, DEFAULT_TOPIC,
    publish_timeout_for,
};
pub use health::{AlwaysHealthy, AsyncHealth, Health};
pub use report::{AnnounceError, AnnouncerStats};

use crate::heartbeat::{Heartbeat, State};
use crate::solicit::SolicitCounters;
use transport::{Delivery, Transport};

/// First retry delay after a tick no nsqd took; doubles per failure, capped at the interval.
pub const RETRY_BASE: Duration = Duration::from_millis(250);
/// While unhealthy, the check is repeated at most this far apart, so that a recovered service
/// is announced again quickly even with a long interval.
pub const HEALTH_RECHECK: Duration = Duration::from_secs(1);
/// First wait before the leaving heartbeat is sent again when no nsqd took it ([`Announcer::leave_within`]);
/// doubles per failed round, capped at [`LEAVE_RETRY_MAX`]. Short: the service is shutting down, and every
/// moment it stays routed after it stops serving costs clients a failed try.
pub const LEAVE_RETRY_BASE: Duration = Duration::from_millis(50);
/// Longest wait between two rounds of the leaving heartbeat.
pub const LEAVE_RETRY_MAX: Duration = Duration::from_millis(500);

/// Publishes this service's heartbeats; cheap to clone (clones share one announcer).
///
/// Run [`Announcer::run`] (or [`Announcer::spawn`]) for the periodic heartbeats, and call
/// [`Announcer::leave`] on shutdown before the service stops serving. Embedded in someone
/// else's axum service:
///
/// ```no_run
/// use axum::{Router, routing::get};
/// use discovery::{Announcer, AnnouncerConfig};
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
/// let addr = listener.local_addr()?.to_string();
/// let announcer = Announcer::new(AnnouncerConfig::new("orders-1", addr, ["127.0.0.1:4150"]))?;
/// announcer.spawn(|| true, std::future::pending()); // until leave(); `|| true`: your health check
/// let app = Router::new().route("/", get(|| async { "hello" }));
/// let leaving = announcer.clone();
/// axum::serve(listener, app)
///     .with_graceful_shutdown(async move {
///         let _ = tokio::signal::ctrl_c().await;
///         let _ = leaving.leave().await; // before the listener closes
///     })
///     .await?;
/// announcer.close(std::time::Duration::from_secs(1)).await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Announcer {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: AnnouncerConfig,
    transport: Box<dyn Transport>,
    epoch: u64,
    sequence: Mutex<Sequence>,
    left: watch::Sender<bool>,
    counters: Counters,
}

/// The next `seq` and whether we left, under one lock so that no `up` can follow the `leaving`.
struct Sequence {
    seq: u64,
    left: bool,
}

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    leaving: AtomicU64,
    failed: AtomicU64,
    skipped: AtomicU64,
    unhealthy: AtomicBool,
    unreachable: AtomicBool,
    per_nsqd: Mutex<Vec<(String, u64)>>,
    // The nsqd whose last publish failed: their failures are logged on the change only.
    failing: Mutex<HashSet<String>>,
    solicit: SolicitCounters,
}

impl std::fmt::Debug for Announcer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Announcer")
            .field("id", &self.inner.cfg.id)
            .field("addr", &self.inner.cfg.addr)
            .field("epoch", &self.inner.epoch)
            .finish_non_exhaustive()
    }
}

impl Announcer {
    /// Checks the configuration and prepares one producer per nsqd (connections are made by the
    /// first heartbeat). The epoch is the current time in ms.
    pub fn new(cfg: AnnouncerConfig) -> Result<Announcer, AnnouncerConfigError> {
        if cfg.nsqd_tcp_addresses.is_empty() {
            return Err(AnnouncerConfigError::NoNsqd);
        }
        nsq::validate_topic(&cfg.topic)?;
        let publisher = nsq::Publisher::new(&cfg.nsqd_tcp_addresses, cfg.producer.clone())?;
        Announcer::with_transport(cfg, Box::new(publisher))
    }

    pub(crate) fn with_transport(
        cfg: AnnouncerConfig,
        transport: Box<dyn Transport>,
    ) -> Result<Announcer, AnnouncerConfigError> {
        if cfg.interval.is_zero() {
            return Err(AnnouncerConfigError::ZeroInterval);
        }
        if !(0.0..1.0).contains(&cfg.jitter) {
            return Err(AnnouncerConfigError::BadJitter(cfg.jitter));
        }
        let mut probe = Heartbeat::new(cfg.id.clone(), cfg.addr.clone(), 0, 0);
        probe.meta = cfg.meta.clone();
        probe
            .validate()
            .map_err(AnnouncerConfigError::BadHeartbeat)?;
        let per_nsqd = transport.addrs().into_iter().map(|a| (a, 0)).collect();
        let counters = Counters {
            per_nsqd: Mutex::new(per_nsqd),
            ..Counters::default()
        };
        Ok(Announcer {
            inner: Arc::new(Inner {
                cfg,
                transport,
                epoch: now_ms(),
                sequence: Mutex::new(Sequence {
                    seq: 0,
                    left: false,
                }),
                left: watch::Sender::new(false),
                counters,
            }),
        })
    }

    /// This server's identity.
    pub fn id(&self) -> &str {
        &self.inner.cfg.id
    }

    /// The announced `host:port`.
    pub fn addr(&self) -> &str {
        &self.inner.cfg.addr
    }

    /// This run's epoch (start time in ms).
    pub fn epoch(&self) -> u64 {
        self.inner.epoch
    }

    /// The configuration.
    pub fn config(&self) -> &AnnouncerConfig {
        &self.inner.cfg
    }

    /// Announces now, then every `interval` (± jitter) while `health` passes, until `shutdown`
    /// resolves or [`leave`](Self::leave) is called. Never panics on publish errors: they are
    /// counted, logged once per change, and retried with backoff.
    pub async fn run(&self, health: impl Health, shutdown: impl Future<Output = ()>) {
        let cfg = &self.inner.cfg;
        let mut left = self.inner.left.subscribe();
        tokio::pin!(shutdown);
        let mut next = Instant::now();
        let mut failures_in_a_row = 0u32;
        loop {
            tokio::select! {
                biased;
                () = &mut shutdown => return,
                _ = left.wait_for(|l| *l) => return,
                () = sleep_until(next) => {}
            }
            let scheduled = next;
            let healthy = tokio::select! {
                biased;
                () = &mut shutdown => return,
                healthy = health.check() => healthy,
            };
            self.note_health(healthy);
            if !healthy {
                self.inner.counters.skipped.fetch_add(1, Ordering::Relaxed);
                next = Instant::now() + cfg.interval.min(HEALTH_RECHECK);
                continue;
            }
            let result = tokio::select! {
                biased;
                () = &mut shutdown => return,
                result = self.announce(State::Up) => result,
            };
            match result {
                Ok(_) => {
                    failures_in_a_row = 0;
                    // From the scheduled time, so publishing time does not stretch the interval.
                    next = (scheduled + jittered(cfg.interval, cfg.jitter)).max(Instant::now());
                }
                Err(AnnounceError::Left) => return,
                Err(_) => {
                    failures_in_a_row = failures_in_a_row.saturating_add(1);
                    let wait = retry_delay(failures_in_a_row, cfg.interval);
                    next = Instant::now() + jittered(wait, cfg.jitter);
                }
            }
        }
    }

    /// Runs [`run`](Self::run) on a new task.
    pub fn spawn(
        &self,
        health: impl Health,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move { this.run(health, shutdown).await })
    }

    /// Publishes one heartbeat in `state` now (health is not consulted). Returns the nsqd that
    /// took it.
    pub async fn announce(&self, state: State) -> Result<String, AnnounceError> {
        let heartbeat = self.next_heartbeat(state).ok_or(AnnounceError::Left)?;
        self.deliver(&heartbeat).await
    }

    /// Stops the periodic heartbeats and publishes `state:"leaving"` (failing over to another
    /// nsqd if the first fails), so that api-servers stop routing here at once. Call it on
    /// shutdown before the service stops accepting requests. One round over the nsqd: see
    /// [`leave_within`](Self::leave_within) to keep trying. A second call returns
    /// [`AnnounceError::Left`].
    pub async fn leave(&self) -> Result<String, AnnounceError> {
        self.leave_within(Duration::ZERO).await
    }

    /// [`leave`](Self::leave), sending the same leaving heartbeat (same `seq`, re-stamped and re-signed) again
    /// after [`LEAVE_RETRY_BASE`] (doubling up to [`LEAVE_RETRY_MAX`]) while no nsqd takes it, for up to `limit`:
    /// if every nsqd is briefly down at shutdown, the server would otherwise stay routed for a TTL. Returns as soon
    /// as one nsqd takes it. A round in progress when `limit` runs out is finished; bound the call with a timeout
    /// when that matters.
    pub async fn leave_within(&self, limit: Duration) -> Result<String, AnnounceError> {
        let deadline = Instant::now() + limit;
        let mut heartbeat = {
            let mut sequence = self.sequence();
            if sequence.left {
                return Err(AnnounceError::Left);
            }
            sequence.left = true;
            self.build(&mut sequence, State::Leaving)
        };
        self.inner.left.send_replace(true);
        let mut wait = LEAVE_RETRY_BASE;
        let result = loop {
            let result = self.deliver(&heartbeat).await;
            let retry_at = Instant::now() + wait;
            match result {
                Err(AnnounceError::AllFailed(_)) if retry_at < deadline => {}
                done => break done,
            }
            tokio::time::sleep_until(retry_at).await;
            wait = (wait * 2).min(LEAVE_RETRY_MAX);
            // The same heartbeat: a receiver that got an earlier copy after all counts this one a duplicate.
            // Re-stamped so that a signed one stays inside receivers' replay window however long the retries.
            heartbeat.sent_at_ms = now_ms();
            if let Some(key) = &self.inner.cfg.key {
                heartbeat.sign(key);
            }
        };
        match &result {
            Ok(nsqd) => {
                tracing::info!(nsqd = %nsqd, id = %self.inner.cfg.id, "leaving heartbeat sent")
            }
            Err(err) => tracing::warn!(error = %err, "leaving heartbeat not sent"),
        }
        result
    }

    /// Flushes and closes the nsqd connections (each bounded by `timeout`).
    pub async fn close(&self, timeout: Duration) {
        self.inner.transport.close(timeout).await;
    }

    /// The counters so far.
    pub fn stats(&self) -> AnnouncerStats {
        let c = &self.inner.counters;
        AnnouncerStats {
            heartbeats_sent: c.sent.load(Ordering::Relaxed),
            leaving_sent: c.leaving.load(Ordering::Relaxed),
            failed_heartbeats: c.failed.load(Ordering::Relaxed),
            skipped_unhealthy: c.skipped.load(Ordering::Relaxed),
            publish_failures: lock(&c.per_nsqd).clone(),
            healthy: !c.unhealthy.load(Ordering::Relaxed),
            reachable: !c.unreachable.load(Ordering::Relaxed),
            left: *self.inner.left.borrow(),
            solicitations: c.solicit.snapshot(),
        }
    }

    /// The counters of the solicitations answered for this announcer (`solicit/mod.rs`).
    pub(crate) fn solicit_counters(&self) -> &SolicitCounters {
        &self.inner.counters.solicit
    }

    fn sequence(&self) -> std::sync::MutexGuard<'_, Sequence> {
        lock(&self.inner.sequence)
    }

    fn next_heartbeat(&self, state: State) -> Option<Heartbeat> {
        let mut sequence = self.sequence();
        if sequence.left {
            return None;
        }
        Some(self.build(&mut sequence, state))
    }

    fn build(&self, sequence: &mut Sequence, state: State) -> Heartbeat {
        let cfg = &self.inner.cfg;
        sequence.seq += 1;
        let mut heartbeat = Heartbeat::new(
            cfg.id.clone(),
            cfg.addr.clone(),
            self.inner.epoch,
            sequence.seq,
        );
        heartbeat.sent_at_ms = now_ms();
        heartbeat.interval_ms = u64::try_from(cfg.interval.as_millis()).unwrap_or(u64::MAX);
        heartbeat.state = state;
        heartbeat.meta = cfg.meta.clone();
        if let Some(key) = &cfg.key {
            heartbeat.sign(key);
        }
        heartbeat
    }

    async fn deliver(&self, heartbeat: &Heartbeat) -> Result<String, AnnounceError> {
        let topic = &self.inner.cfg.topic;
        let delivery = self.inner.transport.send(topic, heartbeat.encode()).await;
        self.record(heartbeat.state, delivery)
    }

    fn record(&self, state: State, delivery: Delivery) -> Result<String, AnnounceError> {
        let c = &self.inner.counters;
        {
            let mut per_nsqd = lock(&c.per_nsqd);
            let mut failing = lock(&c.failing);
            for (nsqd, err) in &delivery.failures {
                match per_nsqd.iter_mut().find(|(a, _)| a == nsqd) {
                    Some((_, n)) => *n += 1,
                    None => per_nsqd.push((nsqd.clone(), 1)),
                }
                if failing.insert(nsqd.clone()) {
                    tracing::warn!(nsqd = %nsqd, error = %err, "publishing a heartbeat failed; failing over to another nsqd");
                }
            }
            if let Some(nsqd) = &delivery.accepted_by
                && failing.remove(nsqd)
            {
                tracing::info!(nsqd = %nsqd, "nsqd takes heartbeats again");
            }
        }
        if let Some(nsqd) = delivery.accepted_by {
            let counter = match state {
                State::Up => &c.sent,
                State::Leaving => &c.leaving,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            if c.unreachable.swap(false, Ordering::Relaxed) {
                tracing::info!(nsqd = %nsqd, "an nsqd is reachable again: heartbeats resume");
            }
            return Ok(nsqd);
        }
        c.failed.fetch_add(1, Ordering::Relaxed);
        let err = match delivery.rejected {
            Some(reason) => AnnounceError::Refused(reason),
            None => AnnounceError::AllFailed(delivery.failures),
        };
        if !c.unreachable.swap(true, Ordering::Relaxed) {
            tracing::warn!(error = %err, "no nsqd took the heartbeat; retrying with backoff (logged again when one does)");
        }
        Err(err)
    }

    fn note_health(&self, healthy: bool) {
        let was_unhealthy = self
            .inner
            .counters
            .unhealthy
            .swap(!healthy, Ordering::Relaxed);
        match (was_unhealthy, healthy) {
            (false, false) => tracing::warn!("health check fails: not announcing until it passes"),
            (true, true) => tracing::info!("health check passes again: announcing"),
            _ => {}
        }
    }
}

/// `base` scaled by a factor uniform in `1 ± jitter` (`jitter` is clamped to `0.0..=1.0`).
pub fn jittered(base: Duration, jitter: f64) -> Duration {
    let jitter = jitter.clamp(0.0, 1.0);
    if jitter == 0.0 {
        return base;
    }
    let factor = rand::rng().random_range(1.0 - jitter..=1.0 + jitter);
    base.mul_f64(factor)
}

/// Delay before retry number `failures` (1-based): [`RETRY_BASE`] doubling, capped at `interval`.
pub(crate) fn retry_delay(failures: u32, interval: Duration) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    RETRY_BASE.saturating_mul(1 << doublings).min(interval)
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Counters stay usable even if a thread panicked while holding the lock.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests;
