//! What the proxy routes to: a live server, and the per-id counters that outlive snapshot rebuilds.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use serde_json::Value;
use tokio::time::Instant;

/// Largest weight honoured; bigger announced weights are clamped so one server cannot starve the rest.
pub const MAX_WEIGHT: u32 = 1000;

/// A server the proxy may route to. Cheap to clone through `Arc`; its counters are shared by every snapshot.
#[derive(Debug)]
pub struct Backend {
    id: String,
    addr: String,
    socket_addr: Option<SocketAddr>,
    weight: u32,
    pub(crate) state: Arc<PeerState>,
}

impl Backend {
    pub(crate) fn new(
        id: &str,
        addr: &str,
        socket_addr: Option<SocketAddr>,
        weight: u32,
        state: Arc<PeerState>,
    ) -> Self {
        Backend {
            id: id.to_owned(),
            addr: addr.to_owned(),
            socket_addr,
            weight,
            state,
        }
    }

    /// The server's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The announced `host:port`, as announced.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The address as a socket address when the host is an IP literal (no DNS needed).
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        self.socket_addr
    }

    /// Relative weight, 1..=[`MAX_WEIGHT`]: from meta `"weight"` when it is a positive integer, else 1.
    pub fn weight(&self) -> u32 {
        self.weight
    }

    /// Requests currently proxied to this server.
    pub fn in_flight(&self) -> u64 {
        self.state.in_flight.load(Ordering::Relaxed)
    }
}

/// Weight from meta: a positive integer, clamped to [`MAX_WEIGHT`]; anything else means 1.
pub(crate) fn weight_from_meta(meta: &BTreeMap<String, Value>) -> u32 {
    match meta.get("weight").and_then(Value::as_u64) {
        Some(w) if w > 0 => u32::try_from(w).unwrap_or(MAX_WEIGHT).min(MAX_WEIGHT),
        _ => 1,
    }
}

/// Per-id state, keyed by id in the registry and shared by every `Backend` built for that id, so that in-flight
/// counts and ejections survive snapshot rebuilds (a rebuild happens on every join/leave of any server).
/// Times are [`Clock`] ticks so they fit in atomics and can be read without a lock on the proxy path.
#[derive(Debug, Default)]
pub(crate) struct PeerState {
    /// Expiry deadline; refreshed in place by heartbeats, so a refresh needs no rebuild.
    pub(crate) deadline: AtomicU64,
    pub(crate) in_flight: AtomicU64,
    /// Out of rotation until this tick (0: never ejected).
    pub(crate) ejected_until: AtomicU64,
    /// Set on ejection, cleared by whoever first sees the time is over and emits `Recover`.
    pub(crate) ejected: AtomicBool,
    pub(crate) consecutive_failures: AtomicU32,
    pub(crate) consecutive_ejections: AtomicU32,
    pub(crate) ejections: AtomicU64,
    pub(crate) failures: AtomicU64,
}

impl PeerState {
    /// Forgets passive-health history, for a server that moved: its failures belonged to the old address.
    pub(crate) fn clear_ejection(&self) {
        self.ejected_until.store(0, Ordering::Relaxed);
        self.ejected.store(false, Ordering::Release);
        self.consecutive_failures.store(0, Ordering::Relaxed);
        self.consecutive_ejections.store(0, Ordering::Relaxed);
    }

    /// Nothing in flight and no ejection pending: forgetting it loses nothing a user would notice.
    pub(crate) fn is_idle(&self, now: u64) -> bool {
        self.in_flight.load(Ordering::Relaxed) == 0
            && self.ejected_until.load(Ordering::Relaxed) <= now
    }
}

/// Monotonic time as nanoseconds since the registry was created, to store instants in `AtomicU64`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    base: Instant,
}

impl Clock {
    pub(crate) fn new(base: Instant) -> Clock {
        Clock { base }
    }

    pub(crate) fn ticks(&self, at: Instant) -> u64 {
        let nanos = at.saturating_duration_since(self.base).as_nanos();
        u64::try_from(nanos).unwrap_or(u64::MAX)
    }
}

/// The set the proxy reads, swapped atomically; rebuilt only when membership, an address or a weight changes.
/// It may hold servers that expired since the last sweep: readers filter by deadline.
#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    /// Sorted by id, so round robin walks a stable order.
    pub(crate) backends: Vec<Arc<Backend>>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn weight_parsing() {
        let meta = |v: Value| BTreeMap::from([("weight".to_owned(), v)]);
        assert_eq!(weight_from_meta(&BTreeMap::new()), 1);
        assert_eq!(weight_from_meta(&meta(json!(5))), 5);
        assert_eq!(weight_from_meta(&meta(json!(0))), 1);
        assert_eq!(weight_from_meta(&meta(json!(-3))), 1);
        assert_eq!(weight_from_meta(&meta(json!(2.5))), 1);
        assert_eq!(weight_from_meta(&meta(json!("4"))), 1);
        assert_eq!(weight_from_meta(&meta(json!(u64::MAX))), MAX_WEIGHT);
    }

    #[tokio::test(start_paused = true)]
    async fn clock_ticks_follow_virtual_time() {
        let clock = Clock::new(Instant::now());
        tokio::time::advance(std::time::Duration::from_millis(1500)).await;
        assert_eq!(clock.ticks(Instant::now()), 1_500_000_000);
    }
}
