//! Solicitations: how a starting api-server learns every data server at once instead of one interval later
//! (ARCHITECTURE.md §4.2 "Cold start", §4.1 "Solicitation").
//!
//! The api-server publishes one [`Solicitation`] to every nsqd it knows on the solicitation topic
//! (`<heartbeat topic>.solicit#ephemeral`, [`solicit_topic`]). Each data server's [`Responder`] subscribes to that
//! topic on the nsqd it announces to, on a channel of its own (so every data server gets every solicitation), and
//! answers with an ordinary heartbeat ([`Announcer::announce`]) after a random delay within the spread the
//! solicitation names, capped by its own interval. The api-server thus needs no new admission path, and a Go
//! publisher that does not subscribe is learned from its next heartbeat as before.
//!
//! A flood cannot amplify: each nonce is answered once and at most one solicited heartbeat goes out per
//! [`MIN_ANSWER_GAP`] (`gate.rs`). With a key, unsigned or badly signed solicitations are rejected and counted.
//! Beside this file: `message.rs` (the format), `gate.rs` (dedup and rate limit).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use rand::Rng;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

mod gate;
mod message;

pub use gate::MIN_ANSWER_GAP;
pub use message::{
    MAX_SOLICIT_FIELD_BYTES, MAX_SOLICITATION_BYTES, SOLICIT_VERSION, SOLICITATION_MAX_AGE,
    SolicitError, Solicitation,
};

use crate::announce::{Announcer, Health};
use crate::heartbeat::{HmacKey, State};
use gate::{Admit, Gate};

/// Suffix of the solicitation topic, after the heartbeat topic without its own `#ephemeral`. Ephemeral: nsqd drops
/// the topic with its last channel, so nothing queues for data servers that are not there.
pub const SOLICIT_TOPIC_SUFFIX: &str = ".solicit#ephemeral";

/// The solicitation topic of `heartbeat_topic` (`data_server_addr` -> `data_server_addr.solicit#ephemeral`).
pub fn solicit_topic(heartbeat_topic: &str) -> String {
    let base = heartbeat_topic
        .strip_suffix("#ephemeral")
        .unwrap_or(heartbeat_topic);
    format!("{base}{SOLICIT_TOPIC_SUFFIX}")
}

/// A channel name for the data server `id`: its id made NSQ-safe and cut short, a random suffix (a channel per
/// process), ephemeral (it goes away with the process). Each data server needs its own: NSQ gives each message of a
/// channel to one subscriber only. nsqlookupd lists these channels, which tells an api-server how many there are.
pub fn solicit_channel(id: &str) -> String {
    let safe: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(40)
        .collect();
    format!("{safe}-{:08x}#ephemeral", rand::random::<u32>())
}

/// Where a [`Responder`] listens.
#[derive(Clone)]
pub struct SolicitationConfig {
    /// The solicitation topic.
    pub topic: String,
    /// This data server's channel on it.
    pub channel: String,
    /// The nsqd subscribed to (those the announcer publishes to).
    pub nsqd_tcp_addresses: Vec<String>,
    /// When set, only solicitations signed with this key are answered (the announcer's key).
    pub key: Option<HmacKey>,
    /// Connection settings (TLS, AUTH).
    pub conn: nsq::Config,
}

impl std::fmt::Debug for SolicitationConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SolicitationConfig")
            .field("topic", &self.topic)
            .field("channel", &self.channel)
            .field("nsqd_tcp_addresses", &self.nsqd_tcp_addresses)
            .field("signed", &self.key.is_some())
            .finish_non_exhaustive()
    }
}

impl SolicitationConfig {
    /// The settings that go with an announcer: its topic's solicitation topic, a channel for its id, its nsqd
    /// and key, and its producers' connection settings.
    pub fn for_announcer(announcer: &Announcer) -> SolicitationConfig {
        let cfg = announcer.config();
        SolicitationConfig {
            topic: solicit_topic(&cfg.topic),
            channel: solicit_channel(&cfg.id),
            nsqd_tcp_addresses: cfg.nsqd_tcp_addresses.clone(),
            key: cfg.key.clone(),
            conn: cfg.producer.conn.clone(),
        }
    }
}

/// What became of the solicitations a data server received (in [`AnnouncerStats`](crate::AnnouncerStats)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SolicitationStats {
    /// Answered: the solicited heartbeat was published (counted once an nsqd took it). Solicitations folded into
    /// an answer count as `rate_limited`, so each published answer counts once here.
    pub answered: u64,
    /// Admitted, but no answer went out: no nsqd took the heartbeat (also logged), the health check failed, or
    /// the server was leaving.
    pub unanswered: u64,
    /// The same nonce again (through another nsqd, or a replay).
    pub duplicate: u64,
    /// Folded into an answer already pending (the rate limit).
    pub rate_limited: u64,
    /// Unsigned, signed with another key, a bad signature, or a replay, while a key is configured.
    pub rejected: u64,
    /// Not a solicitation.
    pub malformed: u64,
    /// Stamped by nsqd more than [`SOLICITATION_MAX_AGE`] ago (queued before this server subscribed).
    pub stale: u64,
    /// Whether the responder holds a connection to at least one nsqd.
    pub subscribed: bool,
}

impl SolicitationStats {
    /// The outcomes with their metric label, in a fixed order.
    pub fn by_outcome(&self) -> [(&'static str, u64); 7] {
        [
            ("answered", self.answered),
            ("unanswered", self.unanswered),
            ("duplicate", self.duplicate),
            ("rate_limited", self.rate_limited),
            ("rejected", self.rejected),
            ("malformed", self.malformed),
            ("stale", self.stale),
        ]
    }
}

/// The counters behind [`SolicitationStats`], kept in the announcer so its stats carry them.
#[derive(Debug, Default)]
pub(crate) struct SolicitCounters {
    answered: AtomicU64,
    unanswered: AtomicU64,
    duplicate: AtomicU64,
    rate_limited: AtomicU64,
    rejected: AtomicU64,
    malformed: AtomicU64,
    stale: AtomicU64,
    subscribed: AtomicBool,
}

impl SolicitCounters {
    pub(crate) fn snapshot(&self) -> SolicitationStats {
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        SolicitationStats {
            answered: n(&self.answered),
            unanswered: n(&self.unanswered),
            duplicate: n(&self.duplicate),
            rate_limited: n(&self.rate_limited),
            rejected: n(&self.rejected),
            malformed: n(&self.malformed),
            stale: n(&self.stale),
            subscribed: self.subscribed.load(Ordering::Relaxed),
        }
    }
}

/// How often the responder checks whether it is subscribed (for the log line on each change).
const SUBSCRIPTION_CHECK: Duration = Duration::from_secs(1);

/// A data server's answering of solicitations; stop it with [`Responder::stop`] (dropping it stops it abruptly).
pub struct Responder {
    consumer: Arc<Mutex<Option<nsq::Consumer>>>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Responder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Responder").finish_non_exhaustive()
    }
}

struct Shared {
    gate: Mutex<Gate>,
    wake: Notify,
}

impl Announcer {
    /// Subscribes to solicitations and answers each with a heartbeat (while `health` passes). Returns at once:
    /// connections are made and retried in the background; the periodic heartbeats do not depend on them.
    pub fn answer_solicitations(
        &self,
        cfg: SolicitationConfig,
        health: impl Health,
    ) -> Result<Responder, nsq::Error> {
        let shared = Arc::new(Shared {
            gate: Mutex::new(Gate::default()),
            wake: Notify::new(),
        });
        let (announcer, handler_shared, key) = (self.clone(), Arc::clone(&shared), cfg.key);
        let consumer = nsq::Consumer::start(
            &cfg.topic,
            &cfg.channel,
            nsq::ConsumerConfig {
                // nsqd's default output buffering (250 ms) would hold a solicitation up to that long (measured:
                // 195 ms); solicitations are rare, so each is written at once.
                conn: nsq::Config {
                    output_buffer: nsq::OutputBuffer::Unbuffered,
                    ..cfg.conn
                },
                nsqd_tcp_addresses: cfg.nsqd_tcp_addresses,
                max_in_flight: 64,
                concurrency: 1,
                reconnect_min: Duration::from_millis(100),
                reconnect_max: Duration::from_secs(5),
                max_attempts: 0,
                ..nsq::ConsumerConfig::default()
            },
            move |msg: nsq::Message| {
                let (announcer, shared) = (announcer.clone(), Arc::clone(&handler_shared));
                let key = key.clone();
                async move {
                    receive(
                        &announcer,
                        &shared,
                        key.as_ref(),
                        msg.body(),
                        msg.timestamp_ns(),
                    );
                    // Always finished: a redelivery could not make a solicitation any better.
                    Ok::<(), nsq::HandlerError>(())
                }
            },
        )?;
        let consumer = Arc::new(Mutex::new(Some(consumer)));
        let (watched, announcer) = (Arc::clone(&consumer), self.clone());
        let watch = tokio::spawn(async move {
            let mut tick = tokio::time::interval(SUBSCRIPTION_CHECK);
            tick.tick().await;
            let mut known: Option<bool> = None;
            loop {
                // The first check comes after a second, so that connecting is not reported as a failure.
                tick.tick().await;
                let connections = lock(&watched).as_ref().map_or(0, |c| c.stats().connections);
                let subscribed = connections > 0;
                announcer
                    .solicit_counters()
                    .subscribed
                    .store(subscribed, Ordering::Relaxed);
                if known != Some(subscribed) {
                    if subscribed {
                        tracing::info!(
                            "subscribed to solicitations: a starting api-server learns this server at once"
                        );
                    } else {
                        tracing::warn!(
                            "not subscribed to solicitations (no nsqd reachable); heartbeats still go out on schedule"
                        );
                    }
                    known = Some(subscribed);
                }
            }
        });
        let answer = tokio::spawn(answer_when_due(self.clone(), shared, health));
        Ok(Responder {
            consumer,
            tasks: vec![watch, answer],
        })
    }
}

/// Decides one received body and counts the outcome.
fn receive(
    announcer: &Announcer,
    shared: &Shared,
    key: Option<&HmacKey>,
    body: &[u8],
    nsqd_timestamp_ns: i64,
) {
    let counters = announcer.solicit_counters();
    let count = |c: &AtomicU64| {
        c.fetch_add(1, Ordering::Relaxed);
    };
    let now_ms = crate::announce::now_ms();
    let solicitation = match Solicitation::decode(body, key, now_ms) {
        Ok(s) => s,
        Err(SolicitError::Malformed(detail)) => {
            tracing::debug!("solicitation ignored: {detail}");
            return count(&counters.malformed);
        }
        Err(SolicitError::Rejected(detail)) => {
            tracing::debug!("solicitation rejected: {detail}");
            return count(&counters.rejected);
        }
    };
    let stamped_ms = u64::try_from(nsqd_timestamp_ns / 1_000_000).unwrap_or(0);
    let age_ms = now_ms.saturating_sub(stamped_ms);
    if stamped_ms > 0 && u128::from(age_ms) > SOLICITATION_MAX_AGE.as_millis() {
        return count(&counters.stale);
    }
    // Never later than our own next heartbeat would be anyway.
    let cap = announcer.config().interval;
    let spread = Duration::from_millis(solicitation.spread_ms).min(cap);
    let delay = if spread.is_zero() {
        Duration::ZERO
    } else {
        rand::rng().random_range(Duration::ZERO..=spread)
    };
    let admitted = lock(&shared.gate).admit(&solicitation, delay, now_ms, Instant::now());
    match admitted {
        // Counted as answered once the heartbeat is published (`answer_when_due`).
        Admit::Answer(_) => {
            tracing::debug!(from = %solicitation.from, ?delay, "solicitation admitted: answering");
            shared.wake.notify_one();
        }
        Admit::Duplicate => count(&counters.duplicate),
        Admit::RateLimited => count(&counters.rate_limited),
        Admit::Sooner(_) => {
            count(&counters.rate_limited);
            // The answer task sleeps until the old time: it must look again.
            shared.wake.notify_one();
        }
    }
}

/// Publishes each pending answer when it is due: an ordinary `up` heartbeat, while healthy. Counts it `answered`
/// once an nsqd took it, `unanswered` otherwise.
async fn answer_when_due(announcer: Announcer, shared: Arc<Shared>, health: impl Health) {
    let counters = announcer.solicit_counters();
    let count = |c: &AtomicU64| {
        c.fetch_add(1, Ordering::Relaxed);
    };
    loop {
        let due = lock(&shared.gate).pending();
        match due {
            None => shared.wake.notified().await,
            Some(at) => tokio::select! {
                () = tokio::time::sleep_until(at) => {}
                // Moved earlier (`Admit::Sooner`): look at the new time.
                () = shared.wake.notified() => continue,
            },
        }
        let fire = lock(&shared.gate).take_due(Instant::now());
        if !fire {
            continue;
        }
        if !health.check().await {
            tracing::debug!("solicitation not answered: the health check fails");
            count(&counters.unanswered);
            continue;
        }
        match announcer.announce(State::Up).await {
            Ok(nsqd) => {
                count(&counters.answered);
                tracing::debug!(%nsqd, "solicited heartbeat published");
            }
            // Left: the server is stopping; nothing more is answered.
            Err(crate::AnnounceError::Left) => {
                count(&counters.unanswered);
                return;
            }
            Err(err) => {
                count(&counters.unanswered);
                tracing::warn!("solicited heartbeat not published: {err}");
            }
        }
    }
}

impl Responder {
    /// Unsubscribes (bounded by `timeout`) and stops answering.
    pub async fn stop(self, timeout: Duration) {
        self.tasks.iter().for_each(JoinHandle::abort);
        let consumer = lock(&self.consumer).take();
        if let Some(consumer) = consumer {
            consumer.stop(timeout).await;
        }
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.tasks.iter().for_each(JoinHandle::abort);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests;
