//! Membership and health changes, broadcast to subscribers (the admin API's event stream, logs).

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::broadcast;
use tokio::time::Instant;

/// What changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// A server was heard from and is now live.
    Join,
    /// A server said it is leaving (or moved away from this address).
    Leave,
    /// A server was not heard from within the TTL.
    Expire,
    /// Passive health took a server out of rotation for a while.
    Eject,
    /// An ejected server's time is over; it is back in rotation.
    Recover,
}

impl EventKind {
    /// Every kind.
    pub const ALL: [EventKind; 5] = [
        EventKind::Join,
        EventKind::Leave,
        EventKind::Expire,
        EventKind::Eject,
        EventKind::Recover,
    ];

    /// `"join"`, `"leave"`, `"expire"`, `"eject"` or `"recover"`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Join => "join",
            EventKind::Leave => "leave",
            EventKind::Expire => "expire",
            EventKind::Eject => "eject",
            EventKind::Recover => "recover",
        }
    }
}

/// One change to one server.
///
/// `at` is a monotonic instant (testable in virtual time); broadcast delivery is immediate, so a subscriber that
/// needs wall-clock time stamps the event when it receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// What changed.
    pub kind: EventKind,
    /// The server's id.
    pub id: String,
    /// The server's address at the time of the change.
    pub addr: String,
    /// When it changed.
    pub at: Instant,
}

impl Event {
    pub(crate) fn new(kind: EventKind, id: &str, addr: &str, at: Instant) -> Event {
        Event {
            kind,
            id: id.to_owned(),
            addr: addr.to_owned(),
            at,
        }
    }
}

/// Where the registry and the balancer send their events: a broadcast to every subscriber, and a count per kind.
///
/// The counts are kept here, not by a subscriber, because a subscriber that falls more than the buffer behind
/// (a sweep that expires a whole zone at once) loses events; a count must not.
#[derive(Debug)]
pub(crate) struct EventSink {
    sender: broadcast::Sender<Event>,
    /// Events emitted so far, by kind, in [`EventKind::ALL`]'s order.
    counts: [AtomicU64; 5],
}

impl EventSink {
    /// A sink buffering up to `capacity` events per subscriber.
    pub(crate) fn new(capacity: usize) -> EventSink {
        let (sender, _) = broadcast::channel(capacity.max(1));
        EventSink {
            sender,
            counts: Default::default(),
        }
    }

    /// Counts `event` and sends it to every subscriber.
    pub(crate) fn emit(&self, event: Event) {
        self.counts[event.kind as usize].fetch_add(1, Ordering::Relaxed);
        // No subscriber is fine: events are a courtesy, the table is the truth.
        let _ = self.sender.send(event);
    }

    /// Events emitted so far, by kind.
    pub(crate) fn counts(&self) -> [(EventKind, u64); 5] {
        EventKind::ALL.map(|kind| (kind, self.counts[kind as usize].load(Ordering::Relaxed)))
    }

    /// A receiver of every future event.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.sender.subscribe()
    }
}
