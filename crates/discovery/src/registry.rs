//! The TTL registry: which data servers are live, fed by heartbeat message bodies.

mod outcome;
mod policy;
mod table;
mod view;

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use ipnet::IpNet;
use tokio::sync::broadcast;
use tokio::time::Instant;

use crate::backend::{Backend, Clock, Snapshot};
use crate::error::ConfigError;
use crate::event::{Event, EventKind};
use crate::heartbeat::{Decoded, HmacKey, Message, State, decode_with_addr};
use crate::reject::{RejectReason, Rejection};
use table::{Changes, Table, Update};

pub use outcome::{IgnoreReason, Outcome, OutcomeCount};
pub use view::{RegistryView, ServerView};

/// The contract default for `discovery.ttl`.
pub const DEFAULT_TTL: Duration = Duration::from_secs(10);
/// Events buffered per subscriber before a slow one starts missing some.
pub const DEFAULT_EVENT_CAPACITY: usize = 1024;

/// How the registry decides who may register and for how long.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// A server is live while its last heartbeat was received less than this long ago.
    pub ttl: Duration,
    /// When set, only JSON heartbeats signed with this key are accepted (plain `host:port` bodies are refused), and
    /// only while their signed `sent_at_ms` is within one `ttl` of this host's clock, so that a captured heartbeat
    /// cannot be replayed later to bring back a server that left or died.
    pub hmac_key: Option<HmacKey>,
    /// When not empty, only IP addresses inside these networks may register; hostnames are then refused too,
    /// because checking them would need a DNS answer that can change after the check.
    pub allowed_networks: Vec<IpNet>,
    /// The api-server's own listen addresses (proxy and admin), which may never register: routing there would
    /// loop. Compared as socket addresses; `0.0.0.0:p` / `[::]:p` also match loopback and `local_ips` on port p.
    pub self_addrs: Vec<String>,
    /// This host's own IPs, for matching unspecified self addresses (optional).
    pub local_ips: Vec<IpAddr>,
    /// Broadcast buffer per event subscriber.
    pub event_capacity: usize,
}

impl RegistryConfig {
    /// Defaults with the given TTL: no key, every network allowed, no self addresses.
    pub fn new(ttl: Duration) -> RegistryConfig {
        RegistryConfig {
            ttl,
            hmac_key: None,
            allowed_networks: Vec::new(),
            self_addrs: Vec::new(),
            local_ips: Vec::new(),
            event_capacity: DEFAULT_EVENT_CAPACITY,
        }
    }
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig::new(DEFAULT_TTL)
    }
}

/// The live set of data servers. A cheap `Clone` handle; all methods take `&self`.
///
/// Writers ([`observe`](Registry::observe), [`sweep`](Registry::sweep)) serialise on a mutex; the proxy's read
/// path ([`live`](Registry::live), the [`Balancer`](crate::Balancer)) only loads an atomically swapped snapshot
/// and compares deadlines, so an expired server is never returned even between sweeps.
#[derive(Debug, Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    ttl: Duration,
    key: Option<HmacKey>,
    policy: policy::Policy,
    clock: Clock,
    /// Self-preservation: while set, deadlines are not enforced.
    frozen: AtomicBool,
    state: Mutex<Table>,
    snapshot: ArcSwap<Snapshot>,
    /// Membership changed since `snapshot` was built. Set and cleared under the `state` lock;
    /// the next reader rebuilds, so a burst of joins costs one rebuild, not one per join.
    stale: AtomicBool,
    events: broadcast::Sender<Event>,
    counters: outcome::Counters,
}

impl Registry {
    /// A registry; `Instant::now()` becomes the zero of its internal clock.
    pub fn new(config: RegistryConfig) -> Result<Registry, ConfigError> {
        if config.ttl.is_zero() {
            return Err(ConfigError::ZeroTtl);
        }
        let policy = policy::Policy::new(
            config.allowed_networks,
            &config.self_addrs,
            config.local_ips,
        )?;
        let (events, _) = broadcast::channel(config.event_capacity.max(1));
        Ok(Registry {
            inner: Arc::new(Inner {
                ttl: config.ttl,
                key: config.hmac_key,
                policy,
                clock: Clock::new(Instant::now()),
                frozen: AtomicBool::new(false),
                state: Mutex::new(Table {
                    entries: HashMap::new(),
                    tombstones: HashMap::new(),
                    peers: HashMap::new(),
                    bus_alive: true,
                }),
                snapshot: ArcSwap::from_pointee(Snapshot::default()),
                stale: AtomicBool::new(false),
                events,
                counters: outcome::Counters::default(),
            }),
        })
    }

    /// Applies one NSQ message body received at `now`.
    ///
    /// `nsqd_timestamp_ns` is the message frame's timestamp (ns since the Unix epoch, nsqd's clock); a message
    /// older than the TTL by it, compared with `wall_now`, is stale. Zero or negative means unknown: never stale.
    /// Never panics; every outcome is counted (see [`outcome_counts`](Registry::outcome_counts)).
    pub fn observe(
        &self,
        body: &[u8],
        nsqd_timestamp_ns: i64,
        now: Instant,
        wall_now: SystemTime,
    ) -> Outcome {
        let outcome = self.apply(body, nsqd_timestamp_ns, now, wall_now);
        self.inner.counters.record(&outcome);
        outcome
    }

    fn apply(
        &self,
        body: &[u8],
        nsqd_timestamp_ns: i64,
        now: Instant,
        wall_now: SystemTime,
    ) -> Outcome {
        let Decoded { message, addr } = match decode_with_addr(body, self.inner.key.as_ref()) {
            Ok(decoded) => decoded,
            Err(rejection) => return Outcome::Rejected(rejection),
        };
        if let Err(rejection) = self.inner.policy.check(message.addr(), &addr) {
            return Outcome::Rejected(rejection);
        }
        if self.is_stale(nsqd_timestamp_ns, wall_now) {
            return Outcome::Ignored(IgnoreReason::Stale);
        }
        if let (Some(_), Message::Json(hb)) = (&self.inner.key, &message) {
            if let Err(rejection) = self.check_replay_window(hb.sent_at_ms, wall_now) {
                return Outcome::Rejected(rejection);
            }
        }
        let update = match message {
            Message::Json(hb) => Update {
                id: hb.id,
                addr: hb.addr,
                socket_addr: addr.socket_addr(),
                order: Some((hb.epoch, hb.seq)),
                state: hb.state,
                interval_ms: hb.interval_ms,
                meta: hb.meta,
            },
            Message::Plain { addr: text } => Update {
                id: text.clone(),
                addr: text,
                socket_addr: addr.socket_addr(),
                order: None,
                state: State::Up,
                interval_ms: 0,
                meta: BTreeMap::new(),
            },
        };

        let mut guard = self.lock();
        let table = &mut *guard;
        let mut changes = Changes::default();
        if table
            .tombstones
            .get(&update.id)
            .is_some_and(|t| t.until <= now)
        {
            table.tombstones.remove(&update.id);
        }
        self.expire_if_due(table, &update.id, now, &mut changes);
        let outcome = match update.state {
            State::Leaving => self.leave(table, update, now, &mut changes),
            State::Up => self.upsert(table, update, now, &mut changes),
        };
        self.commit(table, changes);
        outcome
    }

    fn is_stale(&self, nsqd_timestamp_ns: i64, wall_now: SystemTime) -> bool {
        let Ok(ns) = u64::try_from(nsqd_timestamp_ns) else {
            return false;
        };
        if ns == 0 {
            return false;
        }
        let sent = UNIX_EPOCH + Duration::from_nanos(ns);
        // A timestamp ahead of our clock (skew) is not stale.
        wall_now
            .duration_since(sent)
            .is_ok_and(|age| age > self.inner.ttl)
    }

    /// With a shared key, `sent_at_ms` is signed, so it bounds how long a captured heartbeat stays usable: one TTL
    /// either way of this host's clock. Within that window `(epoch, seq)` ordering and the one-TTL tombstone refuse
    /// a replay; after it, only this check does, because the registry forgets a server one TTL after its last
    /// heartbeat or its leave. nsqd's timestamp cannot do this job: publishing the capture again renews it.
    /// Hosts' clocks must therefore agree to well within one TTL when a key is configured.
    fn check_replay_window(&self, sent_at_ms: u64, wall_now: SystemTime) -> Result<(), Rejection> {
        let now_ms = wall_now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let ttl_ms = u64::try_from(self.inner.ttl.as_millis()).unwrap_or(u64::MAX);
        if now_ms.abs_diff(sent_at_ms) <= ttl_ms {
            return Ok(());
        }
        let (distance, side) = if sent_at_ms < now_ms {
            (now_ms - sent_at_ms, "old")
        } else {
            (sent_at_ms - now_ms, "ahead of this host's clock")
        };
        Err(Rejection::new(
            RejectReason::Replayed,
            format!(
                "expected a signed sent_at_ms within {ttl_ms} ms of now, found one {distance} ms {side}: \
                 a replayed heartbeat, or clocks that disagree"
            ),
        ))
    }

    fn commit(&self, _table: &Table, changes: Changes) -> Vec<Event> {
        if changes.rebuild {
            self.inner.stale.store(true, Ordering::Release);
        }
        for event in &changes.events {
            // No subscriber is fine: events are a courtesy, the table is the truth.
            let _ = self.inner.events.send(event.clone());
        }
        changes.events
    }

    /// Removes servers not heard from within the TTL (and old tombstones); returns and broadcasts `Expire` events.
    /// Does nothing to servers while self-preservation is on.
    pub fn sweep(&self, now: Instant) -> Vec<Event> {
        let mut guard = self.lock();
        let table = &mut *guard;
        let now_ticks = self.inner.clock.ticks(now);
        let mut changes = Changes::default();
        table.tombstones.retain(|_, t| t.until > now);
        if !self.inner.frozen.load(Ordering::Acquire) {
            expire_due(table, now, now_ticks, &mut changes);
        }
        let entries = &table.entries;
        table
            .peers
            .retain(|id, peer| entries.contains_key(id) || !peer.is_idle(now_ticks));
        self.commit(table, changes)
    }

    /// Tells the registry whether the bus works. While it does not, nothing expires and
    /// [`self_preservation`](Registry::self_preservation) is true; when it comes back, every server gets one TTL
    /// from `now` to be heard again, instead of all expiring at once.
    pub fn set_bus_alive(&self, alive: bool, now: Instant) {
        let mut guard = self.lock();
        let table = &mut *guard;
        if table.bus_alive == alive {
            return;
        }
        table.bus_alive = alive;
        if !alive {
            // Servers already past their deadline are not part of the last known set: expire them before freezing.
            let mut changes = Changes::default();
            expire_due(table, now, self.inner.clock.ticks(now), &mut changes);
            self.commit(table, changes);
        } else {
            let grace = self.inner.clock.ticks(now + self.inner.ttl);
            for entry in table.entries.values() {
                entry
                    .backend
                    .state
                    .deadline
                    .fetch_max(grace, Ordering::AcqRel);
            }
        }
        // Deadlines are extended before the freeze lifts, so no reader sees a spurious expiry in between.
        self.inner.frozen.store(!alive, Ordering::Release);
    }

    /// True while expiry is frozen because the bus is down.
    pub fn self_preservation(&self) -> bool {
        self.inner.frozen.load(Ordering::Acquire)
    }

    /// The configured TTL.
    pub fn ttl(&self) -> Duration {
        self.inner.ttl
    }

    /// Live servers at `now`, sorted by id (lock-free).
    pub fn live(&self, now: Instant) -> Vec<Arc<Backend>> {
        let now_ticks = self.inner.clock.ticks(now);
        let frozen = self.self_preservation();
        self.snapshot()
            .backends
            .iter()
            .filter(|b| is_live(b, now_ticks, frozen))
            .cloned()
            .collect()
    }

    /// Number of live servers at `now` (lock-free).
    pub fn live_count(&self, now: Instant) -> usize {
        let now_ticks = self.inner.clock.ticks(now);
        let frozen = self.self_preservation();
        self.snapshot()
            .backends
            .iter()
            .filter(|b| is_live(b, now_ticks, frozen))
            .count()
    }

    /// A receiver of every future [`Event`] (join, leave, expire from the registry; eject, recover from the
    /// balancer). A receiver that falls more than the configured capacity behind gets `Lagged` and skips ahead.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.inner.events.subscribe()
    }

    /// How many messages had each outcome so far, every label included.
    pub fn outcome_counts(&self) -> Vec<OutcomeCount> {
        self.inner.counters.snapshot()
    }

    pub(crate) fn snapshot(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        if self.inner.stale.load(Ordering::Acquire) {
            let table = self.lock();
            if self.inner.stale.swap(false, Ordering::AcqRel) {
                let mut backends: Vec<_> = table
                    .entries
                    .values()
                    .map(|e| Arc::clone(&e.backend))
                    .collect();
                backends.sort_by(|a, b| a.id().cmp(b.id()));
                self.inner.snapshot.store(Arc::new(Snapshot { backends }));
            }
        }
        self.inner.snapshot.load()
    }

    pub(crate) fn clock(&self) -> Clock {
        self.inner.clock
    }

    pub(crate) fn emit(&self, event: Event) {
        let _ = self.inner.events.send(event);
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        // The table stays consistent at every await-free step, so a panic elsewhere does not poison the data.
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Removes every entry whose deadline has passed, in id order.
fn expire_due(table: &mut Table, now: Instant, now_ticks: u64, changes: &mut Changes) {
    let mut expired: Vec<String> = table
        .entries
        .iter()
        .filter(|(_, e)| e.backend.state.deadline.load(Ordering::Acquire) <= now_ticks)
        .map(|(id, _)| id.clone())
        .collect();
    expired.sort();
    for id in expired {
        if let Some(entry) = table.entries.remove(&id) {
            changes.push(EventKind::Expire, &id, entry.backend.addr(), now);
        }
    }
}

pub(crate) fn is_live(backend: &Backend, now_ticks: u64, frozen: bool) -> bool {
    frozen || backend.state.deadline.load(Ordering::Acquire) > now_ticks
}

#[cfg(test)]
mod tests;
