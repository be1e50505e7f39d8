//! What the balancer reads of the registry: the servers live at one instant, and where to send health events.
//!
//! This is the whole interface between the two: the balancer never sees the table, the lock or the deadlines.

use std::slice;
use std::sync::Arc;

use arc_swap::Guard;
use tokio::time::Instant;

use crate::backend::{Backend, Clock};
use crate::event::{Event, EventSink};

/// The set the proxy reads, swapped atomically; rebuilt only when membership, an address or a weight changes.
/// It may hold servers that expired since the last sweep: readers filter by deadline.
#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    /// Sorted by id, so round robin walks a stable order.
    pub(crate) backends: Vec<Arc<Backend>>,
    /// The running sum of the weights in `backends`' order: entry `i` is the weight of servers `0..=i`, so a
    /// weighted draw is a binary search instead of a walk (built once per rebuild, read by every pick).
    pub(crate) cumulative_weights: Vec<u64>,
    /// How many of them are unconfirmed (loaded from a saved registry, not heard from yet); 0 in steady state,
    /// which keeps the read path what it was.
    pub(crate) unconfirmed: usize,
}

impl Snapshot {
    /// The server `id`: a binary search, as `backends` is sorted by id (a linear walk cost 100,000 comparisons per
    /// lookup on a registry of 100,000 servers).
    pub(crate) fn find(&self, id: &str) -> Option<&Arc<Backend>> {
        self.backends
            .binary_search_by(|b| b.id().cmp(id))
            .ok()
            .map(|i| &self.backends[i])
    }

    /// `backends` must be sorted by id.
    pub(crate) fn new(backends: Vec<Arc<Backend>>) -> Snapshot {
        debug_assert!(backends.windows(2).all(|w| w[0].id() < w[1].id()));
        let unconfirmed = backends.iter().filter(|b| b.is_unconfirmed()).count();
        let cumulative_weights = backends
            .iter()
            .scan(0u64, |sum, b| {
                *sum += u64::from(b.weight());
                Some(*sum)
            })
            .collect();
        Snapshot {
            backends,
            cumulative_weights,
            unconfirmed,
        }
    }
}

/// Which servers a read may return: unconfirmed ones stand in only while no confirmed server is live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Admit {
    /// No unconfirmed server in the snapshot: every live one.
    All,
    ConfirmedOnly,
    UnconfirmedOnly,
}

/// The registry at one instant, as the balancer sees it. Taking one loads the snapshot (an atomic load, no lock
/// unless membership changed since the last read) and allocates nothing, so it suits every proxied request.
pub(crate) struct LiveSet<'r> {
    snapshot: Guard<Arc<Snapshot>>,
    clock: Clock,
    now: Instant,
    now_ticks: u64,
    frozen: bool,
    events: &'r EventSink,
}

impl<'r> LiveSet<'r> {
    pub(super) fn new(
        snapshot: Guard<Arc<Snapshot>>,
        clock: Clock,
        now: Instant,
        frozen: bool,
        events: &'r EventSink,
    ) -> LiveSet<'r> {
        LiveSet {
            snapshot,
            clock,
            now,
            now_ticks: clock.ticks(now),
            frozen,
            events,
        }
    }

    /// The servers live at this instant, in id order. Servers remembered from a saved registry count only while
    /// no confirmed server is live (a restarted api-server routes at once, and stops at the first heartbeat).
    pub(crate) fn live(&self) -> Live<'_> {
        let (now, frozen) = (self.now_ticks, self.frozen);
        let admit = if self.snapshot.unconfirmed == 0 {
            Admit::All
        } else if self
            .snapshot
            .backends
            .iter()
            .any(|b| !b.is_unconfirmed() && b.peer().is_live(now, frozen))
        {
            Admit::ConfirmedOnly
        } else {
            Admit::UnconfirmedOnly
        };
        Live {
            servers: &self.snapshot.backends,
            cumulative_weights: &self.snapshot.cumulative_weights,
            rest: self.snapshot.backends.iter(),
            now_ticks: now,
            frozen,
            admit,
        }
    }

    /// Every server of the snapshot in id order, including any that expired since the last sweep.
    pub(crate) fn all(&self) -> &[Arc<Backend>] {
        &self.snapshot.backends
    }

    /// The server with this id, live or not yet swept.
    pub(crate) fn find(&self, id: &str) -> Option<&Arc<Backend>> {
        self.snapshot.find(id)
    }

    /// The instant this set was taken at.
    pub(crate) fn now(&self) -> Instant {
        self.now
    }

    /// [`now`](LiveSet::now) in the registry's clock ticks, as per-server state stores time.
    pub(crate) fn now_ticks(&self) -> u64 {
        self.now_ticks
    }

    /// The registry's clock, to turn later instants into ticks.
    pub(crate) fn clock(&self) -> Clock {
        self.clock
    }

    /// Broadcasts a health event (eject, recover) to the registry's subscribers.
    pub(crate) fn emit(&self, event: Event) {
        self.events.emit(event);
    }
}

/// The live servers of a [`LiveSet`], in id order. Cheap to clone, so selection can walk it twice instead of
/// collecting it. Besides the walk, it offers the whole snapshot by index ([`servers`](Live::servers), with
/// [`cumulative_weights`](Live::cumulative_weights)) and the test [`admits`](Live::admits), so that a pick can draw
/// a server in O(log n) and check only that one.
#[derive(Clone)]
pub(crate) struct Live<'a> {
    servers: &'a [Arc<Backend>],
    cumulative_weights: &'a [u64],
    rest: slice::Iter<'a, Arc<Backend>>,
    now_ticks: u64,
    frozen: bool,
    admit: Admit,
}

impl<'a> Live<'a> {
    /// Every server of the snapshot in id order, live or not: index it, then check the one found with
    /// [`admits`](Live::admits).
    pub(crate) fn servers(&self) -> &'a [Arc<Backend>] {
        self.servers
    }

    /// The running sum of [`servers`](Live::servers)' weights (same length; the last entry is the total).
    pub(crate) fn cumulative_weights(&self) -> &'a [u64] {
        self.cumulative_weights
    }

    /// Whether `backend`, one of [`servers`](Live::servers), is live: what the walk yields.
    pub(crate) fn admits(&self, backend: &Backend) -> bool {
        is_live(backend, self.admit, self.now_ticks, self.frozen)
    }
}

/// Whether `backend` is admitted by `admit` and live at `now`.
fn is_live(backend: &Backend, admit: Admit, now: u64, frozen: bool) -> bool {
    let admitted = match admit {
        Admit::All => true,
        Admit::ConfirmedOnly => !backend.is_unconfirmed(),
        Admit::UnconfirmedOnly => backend.is_unconfirmed(),
    };
    admitted && backend.peer().is_live(now, frozen)
}

impl<'a> Iterator for Live<'a> {
    type Item = &'a Arc<Backend>;

    fn next(&mut self) -> Option<&'a Arc<Backend>> {
        let (admit, now, frozen) = (self.admit, self.now_ticks, self.frozen);
        self.rest.find(|b| is_live(b, admit, now, frozen))
    }
}
