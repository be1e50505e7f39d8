//! Membership and health changes, broadcast to subscribers (the admin API's event stream, logs).

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

/// Where the registry and the balancer send their events: a broadcast to every subscriber.
#[derive(Debug)]
pub(crate) struct EventSink {
    sender: broadcast::Sender<Event>,
}

impl EventSink {
    /// A sink buffering up to `capacity` events per subscriber.
    pub(crate) fn new(capacity: usize) -> EventSink {
        let (sender, _) = broadcast::channel(capacity.max(1));
        EventSink { sender }
    }

    /// Sends `event` to every subscriber.
    pub(crate) fn emit(&self, event: Event) {
        // No subscriber is fine: events are a courtesy, the table is the truth.
        let _ = self.sender.send(event);
    }

    /// A receiver of every future event.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.sender.subscribe()
    }
}
