//! The data behind the registry's lock: entries, tombstones and per-id state. The rules that change it are
//! `Registry`'s methods (`mod.rs`) and the pure checks in `rules.rs`.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;

use serde_json::Value;
use tokio::time::Instant;

use crate::State;
use crate::backend::{Backend, PeerState};
use crate::event::{Event, EventKind};

#[derive(Debug)]
pub(super) struct Table {
    pub(super) entries: HashMap<String, Entry>,
    pub(super) tombstones: HashMap<String, Tombstone>,
    /// Per-id counters, kept while an id is registered or still has requests in flight or an ejection running.
    pub(super) peers: HashMap<String, Arc<PeerState>>,
    pub(super) bus_alive: bool,
    /// The latest instant any write judged the table by. A heartbeat is judged by no earlier time, so one that read
    /// the clock before a sweep but took the lock after it cannot count as received before that sweep (which
    /// would break the TTL rule: expired at the sweep, yet heard from before its deadline).
    pub(super) judged_at: Instant,
}

impl Table {
    /// The instant a write that holds the lock judges by: `now`, or the last one a write used if that is later.
    pub(super) fn judge_at(&mut self, now: Instant) -> Instant {
        self.judged_at = self.judged_at.max(now);
        self.judged_at
    }
}

#[derive(Debug)]
pub(super) struct Entry {
    pub(super) backend: Arc<Backend>,
    /// `(epoch, seq)` of the last JSON heartbeat applied; `None` while only plain bodies were heard.
    pub(super) order: Option<(u64, u64)>,
    pub(super) interval_ms: u64,
    pub(super) meta: BTreeMap<String, Value>,
    pub(super) last_seen: Instant,
    /// Wall clock of the last accepted heartbeat, ms since the Unix epoch (for a server loaded from a saved
    /// registry and not heard since: the time saved with it). Saved with the server, to age it across restarts.
    pub(super) heard_at_ms: u64,
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
    /// The receiver's wall clock, ms since the Unix epoch.
    pub(super) heard_at_ms: u64,
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
