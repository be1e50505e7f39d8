//! What the proxy routes to: a live server, and the per-id state that outlives snapshot rebuilds (`peer.rs`),
//! its latency estimate among it (`latency.rs`).

mod latency;
mod peer;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use serde_json::Value;

pub use latency::LATENCY_DECAY;
pub use peer::InFlightGuard;
pub(crate) use peer::{Clock, FailureStreak, PeerState};

/// Largest weight honoured; bigger announced weights are clamped so one server cannot starve the rest.
pub const MAX_WEIGHT: u32 = 1000;

/// A server the proxy may route to. Cheap to clone through `Arc`; its counters are shared by every snapshot.
#[derive(Debug)]
pub struct Backend {
    id: String,
    addr: String,
    socket_addr: Option<SocketAddr>,
    weight: u32,
    /// Loaded from a saved registry and not yet heard from in this run (see `registry/saved.rs`).
    unconfirmed: bool,
    state: Arc<PeerState>,
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
            unconfirmed: false,
            state,
        }
    }

    /// This server as remembered from a saved registry: routed to only while no confirmed server is live.
    pub(crate) fn into_unconfirmed(mut self) -> Self {
        self.unconfirmed = true;
        self
    }

    /// True while the server is only remembered from a saved registry: no heartbeat of it was heard in this run.
    pub fn is_unconfirmed(&self) -> bool {
        self.unconfirmed
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
        self.state.in_flight()
    }

    /// The state shared by every `Backend` built for this id: liveness, requests in flight, passive health.
    pub(crate) fn peer(&self) -> &Arc<PeerState> {
        &self.state
    }
}

/// Weight from meta: a positive integer, clamped to [`MAX_WEIGHT`]; anything else means 1.
pub(crate) fn weight_from_meta(meta: &BTreeMap<String, Value>) -> u32 {
    match meta.get("weight").and_then(Value::as_u64) {
        Some(w) if w > 0 => u32::try_from(w).unwrap_or(MAX_WEIGHT).min(MAX_WEIGHT),
        _ => 1,
    }
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
}
