//! The TTL registry: which data servers are live, fed by heartbeat message bodies.
//!
//! - this file: [`Registry`] and every method of it, the write path (observe, sweep, bus state) and the reads;
//! - `table.rs`: the data behind the lock; `rules.rs`: pure checks (staleness, replay, order, id takeover);
//!   `policy.rs`: who may register; `config.rs`: settings and defaults;
//! - `live.rs`: `LiveSet`, all the balancer reads (the servers live at one instant, and the event sink);
//! - `view.rs`: what the admin API shows; `outcome.rs`: what happened to each message, counted for metrics;
//! - `saved.rs`: the registry as saved for a restart, loaded back as unconfirmed servers;
//! - `names.rs`: cached answers about names and IPs that may be this api-server; `lookup.rs`: such names resolved
//!   in the background, off the heartbeat path.
//!
//! Per-server liveness and health state is `backend::PeerState`, shared with the balancer.

mod config;
mod live;
mod lookup;
mod names;
mod outcome;
mod policy;
mod rules;
mod saved;
mod table;
mod view;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio::sync::broadcast;
use tokio::time::Instant;

use crate::backend::{Backend, Clock, weight_from_meta};
use crate::error::ConfigError;
use crate::event::{Event, EventKind, EventSink};
use crate::heartbeat::addr::ServerAddr;
use crate::heartbeat::{Decoded, HmacKey, KeySet, Message, State, decode_with_addr};
use live::Snapshot;
use policy::Unresolved;
use table::{Changes, Entry, Table, Tombstone, Update};

pub use config::{DEFAULT_EVENT_CAPACITY, DEFAULT_TTL, RegistryConfig};
pub(crate) use live::{Live, LiveSet};
pub use outcome::{IgnoreReason, Outcome, OutcomeCount};
pub use saved::{MAX_SAVED_AGE, SAVED_FORMAT, SavedRegistry, SavedServer};
pub use view::{RegistryView, ServerView};

/// The live set of data servers. A cheap `Clone` handle; all methods take `&self`.
///
/// Writers ([`observe`](Registry::observe), [`sweep`](Registry::sweep)) serialise on a mutex; the proxy's read
/// path ([`live`](Registry::live), the [`Balancer`](crate::Balancer) through a `LiveSet`) only loads an atomically
/// swapped snapshot and compares deadlines, so an expired server is never returned even between sweeps.
#[derive(Debug, Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    ttl: Duration,
    keys: Vec<HmacKey>,
    policy: policy::Policy,
    clock: Clock,
    /// Self-preservation: while set, deadlines are not enforced.
    frozen: AtomicBool,
    state: Mutex<Table>,
    snapshot: ArcSwap<Snapshot>,
    /// Membership changed since `snapshot` was built. Set and cleared under the `state` lock;
    /// the next reader rebuilds, so a burst of joins costs one rebuild, not one per join.
    stale: AtomicBool,
    /// Counts membership changes (what a saved registry holds), so a saver can tell whether to save again.
    generation: AtomicU64,
    events: EventSink,
    counters: outcome::Counters,
    resolver: lookup::Resolver,
}

impl Registry {
    /// A registry; `Instant::now()` becomes the zero of its internal clock.
    pub fn new(config: RegistryConfig) -> Result<Registry, ConfigError> {
        Registry::with_resolver(config, lookup::Resolver::system())
    }

    /// A registry that resolves announced names with `resolver`.
    fn with_resolver(
        config: RegistryConfig,
        resolver: lookup::Resolver,
    ) -> Result<Registry, ConfigError> {
        if config.ttl.is_zero() {
            return Err(ConfigError::ZeroTtl);
        }
        let policy = policy::Policy::new(
            config.allowed_networks,
            &config.self_addrs,
            config.local_ips,
        )?;
        let events = EventSink::new(config.event_capacity);
        Ok(Registry {
            inner: Arc::new(Inner {
                ttl: config.ttl,
                keys: config.hmac_keys,
                policy,
                clock: Clock::new(Instant::now()),
                frozen: AtomicBool::new(false),
                state: Mutex::new(Table {
                    entries: HashMap::new(),
                    tombstones: HashMap::new(),
                    peers: HashMap::new(),
                    bus_alive: true,
                    judged_at: Instant::now(),
                }),
                snapshot: ArcSwap::from_pointee(Snapshot::default()),
                stale: AtomicBool::new(false),
                generation: AtomicU64::new(0),
                events,
                counters: outcome::Counters::default(),
                resolver,
            }),
        })
    }

    /// Applies one NSQ message body received at `now`.
    ///
    /// `nsqd_timestamp_ns` is the message frame's timestamp (ns since the Unix epoch, nsqd's clock); a message
    /// older than the TTL by it, compared with `wall_now`, is stale. Zero or negative means unknown: never stale.
    /// Never panics; every outcome is counted (see [`outcome_counts`](Registry::outcome_counts)). A host name with
    /// no cached answer is taken as not this api-server, and not looked up.
    pub fn observe(
        &self,
        body: &[u8],
        nsqd_timestamp_ns: i64,
        now: Instant,
        wall_now: SystemTime,
    ) -> Outcome {
        let (outcome, _) = self.apply(body, nsqd_timestamp_ns, Some(now), wall_now);
        self.inner.counters.record(&outcome);
        outcome
    }

    /// [`observe`](Registry::observe) at the time the registry's lock is taken, which also looks up, in the
    /// background, an announced host name on one of this api-server's ports that has no cached answer: a name that
    /// resolves to the api-server itself (an `/etc/hosts` alias, say) would loop, so its server is removed once
    /// resolved (counted as `self_address`), and its later heartbeats are refused from the cache. The heartbeat
    /// itself never waits for DNS. Must be called within a Tokio runtime (it spawns the lookup).
    pub async fn observe_resolving(
        &self,
        body: &[u8],
        nsqd_timestamp_ns: i64,
        wall_now: SystemTime,
    ) -> Outcome {
        // The receive time is read under the registry's lock (`None`), so that the time a heartbeat is judged by
        // follows the order in which writers took the lock.
        let (outcome, unresolved) = self.apply(body, nsqd_timestamp_ns, None, wall_now);
        if let Some((name, port)) = unresolved {
            self.resolve_in_background(name, port);
        }
        self.inner.counters.record(&outcome);
        outcome
    }

    /// Applies one message received at `now` (`None`: read the clock once the lock is held). Also returns the host
    /// name on one of this api-server's ports that it announced, if that name has no cached answer yet.
    fn apply(
        &self,
        body: &[u8],
        nsqd_timestamp_ns: i64,
        now: Option<Instant>,
        wall_now: SystemTime,
    ) -> (Outcome, Unresolved) {
        let keys = KeySet::from(&self.inner.keys);
        // Plain bodies cannot be signed: with keys they pass only where allowed_networks vouches for the address
        // (checked by the policy just below).
        let allow_plain = keys.is_empty() || self.inner.policy.restricts_networks();
        let Decoded { message, addr } = match decode_with_addr(body, keys, allow_plain) {
            Ok(decoded) => decoded,
            Err(rejection) => return (Outcome::Rejected(rejection), None),
        };
        let policy_now = now.unwrap_or_else(Instant::now).into_std();
        let (verdict, unresolved) = self.inner.policy.check(message.addr(), &addr, policy_now);
        if let Err(rejection) = verdict {
            return (Outcome::Rejected(rejection), unresolved);
        }
        let recheck = unresolved.is_some();
        let outcome = self.apply_checked(message, addr, recheck, nsqd_timestamp_ns, now, wall_now);
        (outcome, unresolved)
    }

    /// Applies a message that passed the address policy. `recheck`: its address is a host name on one of this
    /// api-server's ports that had no fresh answer, so the policy is asked again under the lock.
    fn apply_checked(
        &self,
        message: Message,
        addr: ServerAddr,
        recheck: bool,
        nsqd_timestamp_ns: i64,
        now: Option<Instant>,
        wall_now: SystemTime,
    ) -> Outcome {
        if rules::is_stale(nsqd_timestamp_ns, wall_now, self.inner.ttl) {
            return Outcome::Ignored(IgnoreReason::Stale);
        }
        if let (false, Message::Json(hb)) = (self.inner.keys.is_empty(), &message)
            && let Err(rejection) =
                rules::check_replay_window(hb.sent_at_ms, wall_now, self.inner.ttl)
        {
            return Outcome::Rejected(rejection);
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
                heard_at_ms: saved::unix_ms(wall_now),
            },
            Message::Plain { addr: text } => Update {
                id: text.clone(),
                addr: text,
                socket_addr: addr.socket_addr(),
                order: None,
                state: State::Up,
                interval_ms: 0,
                meta: BTreeMap::new(),
                heard_at_ms: saved::unix_ms(wall_now),
            },
        };

        let mut guard = self.lock();
        let table = &mut *guard;
        let now = table.judge_at(now.unwrap_or_else(Instant::now));
        // A background lookup may have found, since the check above, that the name is this api-server, and removed
        // its servers (`remove_self_name` records the answer before it takes this lock): this heartbeat must not
        // bring one back.
        if recheck
            && update.state == State::Up
            && let (Err(rejection), _) =
                self.inner.policy.check(&update.addr, &addr, now.into_std())
        {
            return Outcome::Rejected(rejection);
        }
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

    /// An entry past its deadline is gone even if no sweep ran yet: treat the message as a new join.
    fn expire_if_due(&self, table: &mut Table, id: &str, now: Instant, changes: &mut Changes) {
        if self.inner.frozen.load(Ordering::Acquire) {
            return;
        }
        let now_ticks = self.inner.clock.ticks(now);
        let due = table
            .entries
            .get(id)
            .is_some_and(|e| e.backend.peer().is_expired(now_ticks));
        if !due {
            return;
        }
        if let Some(entry) = table.entries.remove(id) {
            changes.push(EventKind::Expire, id, entry.backend.addr(), now);
        }
    }

    fn upsert(
        &self,
        table: &mut Table,
        update: Update,
        now: Instant,
        changes: &mut Changes,
    ) -> Outcome {
        if let Some(tombstone) = table.tombstones.get(&update.id) {
            // Plain bodies carry no epoch, so they cannot prove they come from a newer run.
            let same_run = update
                .order
                .is_none_or(|(epoch, _)| epoch <= tombstone.order.0);
            if same_run {
                return Outcome::Ignored(IgnoreReason::Tombstoned);
            }
            table.tombstones.remove(&update.id);
        }
        let deadline = self.inner.clock.ticks(now + self.inner.ttl);
        if let Some(conflict) = table
            .entries
            .get(&update.id)
            .and_then(|entry| rules::conflict(entry, &update))
        {
            return conflict;
        }
        let Some(entry) = table.entries.get_mut(&update.id) else {
            let peer = Arc::clone(table.peers.entry(update.id.clone()).or_default());
            peer.extend_deadline(deadline);
            // The per-id state outlives the entry while an ejection runs: a server that expired or left while
            // ejected and comes back as a new run is a new run here too (same rule as a refresh, below).
            let restarted = update
                .order
                .is_some_and(|(epoch, _)| peer.note_epoch(epoch));
            let recovered = restarted && peer.clear_ejection();
            let weight = weight_from_meta(&update.meta);
            let backend = Backend::new(&update.id, &update.addr, update.socket_addr, weight, peer);
            changes.push(EventKind::Join, &update.id, &update.addr, now);
            if recovered {
                changes.push(EventKind::Recover, &update.id, &update.addr, now);
            }
            table.entries.insert(
                update.id,
                Entry {
                    backend: Arc::new(backend),
                    order: update.order,
                    interval_ms: update.interval_ms,
                    meta: update.meta,
                    last_seen: now,
                    heard_at_ms: update.heard_at_ms,
                },
            );
            return Outcome::Joined;
        };
        if let (Some(order), Some(current)) = (update.order, entry.order)
            && let Some(reason) = rules::not_newer(order, current)
        {
            return Outcome::Ignored(reason);
        }
        // A new epoch is a new run of the server, which announces itself only once healthy: whatever made the old
        // run fail does not count against it, so an ejected server returns to rotation at once.
        let restarted =
            matches!((update.order, entry.order), (Some((new, _)), Some((old, _))) if new > old);
        if let Some((epoch, _)) = update.order {
            entry.backend.peer().note_epoch(epoch);
        }
        if restarted && entry.backend.peer().clear_ejection() {
            changes.push(EventKind::Recover, &update.id, &update.addr, now);
        }
        // Plain bodies refresh liveness only: they know nothing of seq, meta or interval.
        if update.order.is_some() {
            entry.order = update.order;
            entry.interval_ms = update.interval_ms;
            entry.meta = update.meta;
        }
        entry.last_seen = now;
        entry.heard_at_ms = update.heard_at_ms;
        entry.backend.peer().extend_deadline(deadline);

        let weight = weight_from_meta(&entry.meta);
        let old = &entry.backend;
        // The first heartbeat of a server loaded from a saved registry confirms it: a rebuild, once per server.
        if old.addr() == update.addr && old.weight() == weight && !old.is_unconfirmed() {
            return Outcome::Refreshed;
        }
        let peer = Arc::clone(old.peer());
        let moved = old.addr() != update.addr;
        if moved {
            // A newer run of the same id wins (see `rules::conflict`): the server was re-deployed or re-addressed.
            // Subscribers see it leave the old address and join the new one.
            changes.push(EventKind::Leave, &update.id, old.addr(), now);
            changes.push(EventKind::Join, &update.id, &update.addr, now);
            peer.clear_ejection();
        }
        entry.backend = Arc::new(Backend::new(
            &update.id,
            &update.addr,
            update.socket_addr,
            weight,
            peer,
        ));
        changes.rebuild = true;
        if moved {
            Outcome::Moved
        } else {
            Outcome::Refreshed
        }
    }

    fn leave(
        &self,
        table: &mut Table,
        update: Update,
        now: Instant,
        changes: &mut Changes,
    ) -> Outcome {
        // Only JSON heartbeats can say leaving, so the order is always present.
        let order = update.order.unwrap_or_default();
        if let Some(conflict) = table
            .entries
            .get(&update.id)
            .and_then(|entry| rules::conflict(entry, &update))
        {
            return conflict;
        }
        let known = match table.entries.get(&update.id) {
            Some(entry) => entry.order,
            None => table.tombstones.get(&update.id).map(|t| t.order),
        };
        if let Some(reason) = known.and_then(|current| rules::not_newer(order, current)) {
            return Outcome::Ignored(reason);
        }
        table.tombstones.insert(
            update.id.clone(),
            Tombstone {
                order,
                until: now + self.inner.ttl,
            },
        );
        match table.entries.remove(&update.id) {
            Some(entry) => {
                changes.push(EventKind::Leave, &update.id, entry.backend.addr(), now);
                Outcome::Left
            }
            None => Outcome::Ignored(IgnoreReason::NotRegistered),
        }
    }

    fn commit(&self, _table: &Table, changes: Changes) -> Vec<Event> {
        if changes.rebuild {
            self.inner.stale.store(true, Ordering::Release);
            self.inner.generation.fetch_add(1, Ordering::Release);
        }
        for event in &changes.events {
            self.inner.events.emit(event.clone());
        }
        changes.events
    }

    /// Removes servers not heard from within the TTL (and old tombstones); returns and broadcasts `Expire` events.
    /// Does nothing to servers while self-preservation is on.
    pub fn sweep(&self, now: Instant) -> Vec<Event> {
        let mut guard = self.lock();
        let table = &mut *guard;
        table.judge_at(now);
        let now_ticks = self.inner.clock.ticks(now);
        let mut changes = Changes::default();
        table.tombstones.retain(|_, t| t.until > now);
        if !self.inner.frozen.load(Ordering::Acquire) {
            expire_due(table, now, now_ticks, &mut changes);
        }
        // Every entry has its peer, so only when there are more peers than entries can one be forgotten: at 100,000
        // servers that skips 100,000 lookups per sweep.
        if table.peers.len() > table.entries.len() {
            let entries = &table.entries;
            table
                .peers
                .retain(|id, peer| entries.contains_key(id) || !peer.is_idle(now_ticks));
        }
        self.commit(table, changes)
    }

    /// Tells the registry whether the bus works. While it does not, nothing expires and
    /// [`self_preservation`](Registry::self_preservation) is true; when it comes back, every server gets one TTL
    /// from `now` to be heard again, instead of all expiring at once.
    pub fn set_bus_alive(&self, alive: bool, now: Instant) {
        let mut guard = self.lock();
        let table = &mut *guard;
        table.judge_at(now);
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
                entry.backend.peer().extend_deadline(grace);
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
        self.live_set(now).live().cloned().collect()
    }

    /// Number of live servers at `now` (lock-free).
    pub fn live_count(&self, now: Instant) -> usize {
        self.live_set(now).live().count()
    }

    /// Live servers with their details, sorted by id, for the admin API.
    pub fn servers(&self, now: Instant) -> Vec<ServerView> {
        let now_ticks = self.inner.clock.ticks(now);
        let table = self.lock();
        let frozen = self.self_preservation();
        let mut servers: Vec<ServerView> = table
            .entries
            .iter()
            .filter(|(_, e)| e.backend.peer().is_live(now_ticks, frozen))
            .map(|(id, e)| ServerView::new(id, e, now, now_ticks))
            .collect();
        servers.sort_by(|a, b| a.id.cmp(&b.id));
        servers
    }

    /// Everything `GET /registry` shows.
    pub fn view(&self, now: Instant) -> RegistryView {
        RegistryView {
            servers: self.servers(now),
            self_preservation: self.self_preservation(),
            ttl_ms: u64::try_from(self.inner.ttl.as_millis()).unwrap_or(u64::MAX),
            unauthenticated: self.accepts_unauthenticated(),
        }
    }

    /// True when no key is configured, so anyone who can publish to nsqd can send heartbeats for any id.
    /// `allowed_networks` does not change that: it limits the addresses a heartbeat may announce, not who sends it,
    /// so a forger can still take over, refresh or remove any id whose address is inside it. The api-server warns
    /// about it (log, `/registry`, a gauge, the dashboard).
    pub fn accepts_unauthenticated(&self) -> bool {
        self.inner.keys.is_empty()
    }

    /// A receiver of every future [`Event`] (join, leave, expire from the registry; eject, recover from the
    /// balancer). A receiver that falls more than the configured capacity behind gets `Lagged` and skips ahead.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.inner.events.subscribe()
    }

    /// How many events of each kind were emitted so far (by the registry and the balancer): exact, whether or not a
    /// subscriber kept up.
    pub fn event_counts(&self) -> [(EventKind, u64); 5] {
        self.inner.events.counts()
    }

    /// How many messages had each outcome so far, every label included.
    pub fn outcome_counts(&self) -> Vec<OutcomeCount> {
        self.inner.counters.snapshot()
    }

    /// The servers at `now` and the event sink: all the balancer reads of the registry (lock-free, no allocation).
    pub(crate) fn live_set(&self, now: Instant) -> LiveSet<'_> {
        LiveSet::new(
            self.snapshot(),
            self.inner.clock,
            now,
            self.self_preservation(),
            &self.inner.events,
        )
    }

    /// Counts changes of membership, addresses and weights: a saver compares it with the value at its last save.
    pub fn generation(&self) -> u64 {
        self.inner.generation.load(Ordering::Acquire)
    }

    /// The servers live at `now`, as a restarted api-server should remember them (see [`restore`](Registry::restore)).
    pub fn saved(&self, now: Instant, wall_now: SystemTime) -> SavedRegistry {
        let now_ticks = self.inner.clock.ticks(now);
        let frozen = self.self_preservation();
        let table = self.lock();
        let mut servers: Vec<SavedServer> = table
            .entries
            .iter()
            .filter(|(_, e)| e.backend.peer().is_live(now_ticks, frozen))
            .map(|(id, e)| SavedServer {
                id: id.clone(),
                addr: e.backend.addr().to_owned(),
                order: e.order,
                interval_ms: e.interval_ms,
                meta: e.meta.clone(),
                heard_at_ms: Some(e.heard_at_ms),
            })
            .collect();
        drop(table);
        servers.sort_by(|a, b| a.id.cmp(&b.id));
        SavedRegistry {
            format: SAVED_FORMAT,
            saved_at_ms: saved::unix_ms(wall_now),
            servers,
        }
    }

    /// Loads a saved registry as unconfirmed servers, live for one TTL from `now` unless a heartbeat confirms them.
    /// They are routed to only while no confirmed server is live. A registry of another format or older than
    /// [`MAX_SAVED_AGE`] loads nothing; a server the address policy refuses today, or an id already known, is
    /// skipped. Returns how many were loaded; each is announced with a `join` event.
    pub fn restore(&self, saved: SavedRegistry, now: Instant, wall_now: SystemTime) -> usize {
        let readable = (saved::OLDEST_READ_FORMAT..=SAVED_FORMAT).contains(&saved.format);
        if !readable || saved.is_too_old(wall_now) {
            return 0;
        }
        let deadline = self.inner.clock.ticks(now + self.inner.ttl);
        let mut guard = self.lock();
        let table = &mut *guard;
        let mut changes = Changes::default();
        for server in saved.servers {
            if server.is_too_old(saved.saved_at_ms, wall_now) {
                continue;
            }
            let Ok(addr) = ServerAddr::parse_announced(&server.addr) else {
                continue;
            };
            let (allowed, _) = self.inner.policy.check(&server.addr, &addr, now.into_std());
            if allowed.is_err() || table.entries.contains_key(&server.id) {
                continue;
            }
            // With keys, only signed (JSON) heartbeats could have put it there; plain ones need allowed_networks.
            if server.order.is_none()
                && !self.inner.keys.is_empty()
                && !self.inner.policy.restricts_networks()
            {
                continue;
            }
            let peer = Arc::clone(table.peers.entry(server.id.clone()).or_default());
            peer.extend_deadline(deadline);
            if let Some((epoch, _)) = server.order {
                peer.note_epoch(epoch);
            }
            let weight = weight_from_meta(&server.meta);
            let backend = Backend::new(&server.id, &server.addr, addr.socket_addr(), weight, peer)
                .into_unconfirmed();
            changes.push(EventKind::Join, &server.id, &server.addr, now);
            table.entries.insert(
                server.id,
                Entry {
                    backend: Arc::new(backend),
                    order: server.order,
                    interval_ms: server.interval_ms,
                    heard_at_ms: server.heard_at_ms.unwrap_or(saved.saved_at_ms),
                    meta: server.meta,
                    last_seen: now,
                },
            );
        }
        let loaded = changes.events.len();
        self.commit(table, changes);
        loaded
    }

    /// The current snapshot, rebuilt first if membership changed since the last read.
    fn snapshot(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        if self.inner.stale.load(Ordering::Acquire) {
            let table = self.lock();
            if self.inner.stale.swap(false, Ordering::AcqRel) {
                let mut backends: Vec<_> = table
                    .entries
                    .values()
                    .map(|e| Arc::clone(&e.backend))
                    .collect();
                // Ids are unique, so an unstable sort gives the same order, faster.
                backends.sort_unstable_by(|a, b| a.id().cmp(b.id()));
                self.inner.snapshot.store(Arc::new(Snapshot::new(backends)));
            }
        }
        self.inner.snapshot.load()
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
        .filter(|(_, e)| e.backend.peer().is_expired(now_ticks))
        .map(|(id, _)| id.clone())
        .collect();
    expired.sort();
    for id in expired {
        if let Some(entry) = table.entries.remove(&id) {
            changes.push(EventKind::Expire, &id, entry.backend.addr(), now);
        }
    }
}

#[cfg(test)]
mod tests;
