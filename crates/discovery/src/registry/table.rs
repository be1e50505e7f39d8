//! The mutable table behind the registry: entries, tombstones, per-id state, and the ordering rules.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde_json::Value;
use tokio::time::Instant;

use super::{IgnoreReason, Outcome, Registry};
use crate::backend::{Backend, PeerState, weight_from_meta};
use crate::event::{Event, EventKind};
use crate::heartbeat::State;
use crate::reject::{RejectReason, Rejection, excerpt};

#[derive(Debug)]
pub(super) struct Table {
    pub(super) entries: HashMap<String, Entry>,
    pub(super) tombstones: HashMap<String, Tombstone>,
    /// Per-id counters, kept while an id is registered or still has requests in flight or an ejection running.
    pub(super) peers: HashMap<String, Arc<PeerState>>,
    pub(super) bus_alive: bool,
}

#[derive(Debug)]
pub(super) struct Entry {
    pub(super) backend: Arc<Backend>,
    /// `(epoch, seq)` of the last JSON heartbeat applied; `None` while only plain bodies were heard.
    pub(super) order: Option<(u64, u64)>,
    pub(super) interval_ms: u64,
    pub(super) meta: BTreeMap<String, Value>,
    pub(super) last_seen: Instant,
}

/// Remembers a graceful leave for one TTL so that a late `up` of the same run cannot resurrect the server.
#[derive(Debug, Clone, Copy)]
pub(super) struct Tombstone {
    pub(super) order: (u64, u64),
    pub(super) until: Instant,
}

/// A message reduced to what the table needs.
pub(super) struct Update {
    pub(super) id: String,
    pub(super) addr: String,
    pub(super) socket_addr: Option<SocketAddr>,
    pub(super) order: Option<(u64, u64)>,
    pub(super) state: State,
    pub(super) interval_ms: u64,
    pub(super) meta: BTreeMap<String, Value>,
}

/// What one write did to membership, applied and broadcast at the end under the same lock (so subscribers see
/// events in the order the table changed).
#[derive(Default)]
pub(super) struct Changes {
    pub(super) events: Vec<Event>,
    pub(super) rebuild: bool,
}

impl Changes {
    pub(super) fn push(&mut self, kind: EventKind, id: &str, addr: &str, at: Instant) {
        self.events.push(Event::new(kind, id, addr, at));
        self.rebuild = true;
    }
}

impl Registry {
    /// An entry past its deadline is gone even if no sweep ran yet: treat the message as a new join.
    pub(super) fn expire_if_due(
        &self,
        table: &mut Table,
        id: &str,
        now: Instant,
        changes: &mut Changes,
    ) {
        if self.inner.frozen.load(Ordering::Acquire) {
            return;
        }
        let now_ticks = self.inner.clock.ticks(now);
        let due = table
            .entries
            .get(id)
            .is_some_and(|e| e.backend.state.deadline.load(Ordering::Acquire) <= now_ticks);
        if !due {
            return;
        }
        if let Some(entry) = table.entries.remove(id) {
            changes.push(EventKind::Expire, id, entry.backend.addr(), now);
        }
    }

    pub(super) fn upsert(
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
        // Deadlines only move forward (fetch_max): callers on several threads may pass instants slightly out of order.
        let deadline = self.inner.clock.ticks(now + self.inner.ttl);
        if let Some(conflict) = table
            .entries
            .get(&update.id)
            .and_then(|entry| conflict(entry, &update))
        {
            return conflict;
        }
        let Some(entry) = table.entries.get_mut(&update.id) else {
            let state = Arc::clone(table.peers.entry(update.id.clone()).or_default());
            state.deadline.fetch_max(deadline, Ordering::AcqRel);
            let weight = weight_from_meta(&update.meta);
            let backend = Backend::new(&update.id, &update.addr, update.socket_addr, weight, state);
            changes.push(EventKind::Join, &update.id, &update.addr, now);
            table.entries.insert(
                update.id,
                Entry {
                    backend: Arc::new(backend),
                    order: update.order,
                    interval_ms: update.interval_ms,
                    meta: update.meta,
                    last_seen: now,
                },
            );
            return Outcome::Joined;
        };
        if let (Some(order), Some(current)) = (update.order, entry.order) {
            if order == current {
                return Outcome::Ignored(IgnoreReason::Duplicate);
            }
            if order < current {
                return Outcome::Ignored(IgnoreReason::OutOfOrder);
            }
        }
        // A new epoch is a new run of the server, which announces itself only once healthy: whatever made the old
        // run fail does not count against it, so an ejected server returns to rotation at once.
        let restarted =
            matches!((update.order, entry.order), (Some((new, _)), Some((old, _))) if new > old);
        if restarted {
            let state = &entry.backend.state;
            let was_ejected = state.ejected.load(Ordering::Acquire);
            state.clear_ejection();
            if was_ejected {
                changes.push(EventKind::Recover, &update.id, &update.addr, now);
            }
        }
        // Plain bodies refresh liveness only: they know nothing of seq, meta or interval.
        if update.order.is_some() {
            entry.order = update.order;
            entry.interval_ms = update.interval_ms;
            entry.meta = update.meta;
        }
        entry.last_seen = now;
        entry
            .backend
            .state
            .deadline
            .fetch_max(deadline, Ordering::AcqRel);

        let weight = weight_from_meta(&entry.meta);
        let old = &entry.backend;
        if old.addr() == update.addr && old.weight() == weight {
            return Outcome::Refreshed;
        }
        let state = Arc::clone(&old.state);
        let moved = old.addr() != update.addr;
        if moved {
            // A newer run of the same id wins (see `conflict`): the server was re-deployed or re-addressed.
            // Subscribers see it leave the old address and join the new one.
            changes.push(EventKind::Leave, &update.id, old.addr(), now);
            changes.push(EventKind::Join, &update.id, &update.addr, now);
            state.clear_ejection();
        }
        entry.backend = Arc::new(Backend::new(
            &update.id,
            &update.addr,
            update.socket_addr,
            weight,
            state,
        ));
        changes.rebuild = true;
        if moved {
            Outcome::Moved
        } else {
            Outcome::Refreshed
        }
    }

    pub(super) fn leave(
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
            .and_then(|entry| conflict(entry, &update))
        {
            return conflict;
        }
        let known = match table.entries.get(&update.id) {
            Some(entry) => entry.order,
            None => table.tombstones.get(&update.id).map(|t| t.order),
        };
        if let Some(current) = known {
            if order == current {
                return Outcome::Ignored(IgnoreReason::Duplicate);
            }
            if order < current {
                return Outcome::Ignored(IgnoreReason::OutOfOrder);
            }
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
}

/// A message for a live id at another address may only take the id over when it proves a newer run: a larger
/// `epoch` than the holder's. One run never changes its address (the announcer's address is fixed), so a different
/// address within the same or an older epoch, or from a plain body that carries no epoch at all, is a second server
/// using the same id (or a takeover attempt): the live holder keeps the id, and the message is counted.
fn conflict(entry: &Entry, update: &Update) -> Option<Outcome> {
    let holder = entry.backend.addr();
    if holder == update.addr {
        return None;
    }
    let newer_run = matches!(
        (update.order, entry.order),
        (Some((epoch, _)), Some((held, _))) if epoch > held
    );
    if newer_run {
        return None;
    }
    let detail = match (update.order, entry.order) {
        (Some((epoch, _)), Some((held, _))) => format!(
            "id {} is live at {} (epoch {held}); {} would need a newer epoch to take it over, found {epoch}",
            excerpt(&update.id),
            excerpt(holder),
            excerpt(&update.addr)
        ),
        _ => format!(
            "id {} is live at {}; {} cannot prove a newer run (a plain host:port body has no epoch)",
            excerpt(&update.id),
            excerpt(holder),
            excerpt(&update.addr)
        ),
    };
    Some(Outcome::Rejected(Rejection::new(
        RejectReason::IdConflict,
        detail,
    )))
}
