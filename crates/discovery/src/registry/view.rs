//! Read-only views of the registry for the admin API (`GET /registry`) and the dashboard.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use serde_json::Value;

use tokio::time::Instant;

use super::{Registry, is_live};
use crate::backend::PeerState;

/// One live server as the admin API shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ServerView {
    /// The server's id.
    pub id: String,
    /// Its announced `host:port`.
    pub addr: String,
    /// `"up"`, `"ejected"` (passive health keeps it out of rotation for now) or `"held"` (past its TTL but kept
    /// because self-preservation froze expiry).
    pub state: &'static str,
    /// Milliseconds since its last accepted heartbeat.
    pub last_seen_ms: u64,
    /// Milliseconds until it expires unless heard from again (0 while held).
    pub expires_in_ms: u64,
    /// Run identity of the last accepted heartbeat (0 for plain `host:port` servers).
    pub epoch: u64,
    /// Sequence number of the last accepted heartbeat (0 for plain servers).
    pub seq: u64,
    /// The announced heartbeat interval, in ms (0 when unknown).
    pub interval_ms: u64,
    /// True when only plain `host:port` heartbeats were heard.
    pub plain: bool,
    /// Balancing weight.
    pub weight: u32,
    /// Requests proxied to it right now.
    pub in_flight: u64,
    /// Times passive health ejected it.
    pub ejections: u64,
    /// Milliseconds until its current ejection ends, if ejected.
    pub ejected_for_ms: Option<u64>,
    /// Announced metadata.
    pub meta: BTreeMap<String, Value>,
}

/// The whole registry as `GET /registry` returns it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RegistryView {
    /// Live servers, sorted by id.
    pub servers: Vec<ServerView>,
    /// True while the bus is down and expiry is frozen.
    pub self_preservation: bool,
    /// The configured TTL, in ms.
    pub ttl_ms: u64,
}

impl Registry {
    /// Live servers with their details, sorted by id, for the admin API.
    pub fn servers(&self, now: Instant) -> Vec<ServerView> {
        let now_ticks = self.inner.clock.ticks(now);
        let table = self.lock();
        let frozen = self.self_preservation();
        let mut servers: Vec<ServerView> = table
            .entries
            .iter()
            .filter(|(_, e)| is_live(&e.backend, now_ticks, frozen))
            .map(|(id, e)| {
                let peer = &e.backend.state;
                let deadline = peer.deadline.load(Ordering::Acquire);
                let ejected_for_ms = ejected_for_ms(peer, now_ticks);
                let state = match () {
                    _ if deadline <= now_ticks => "held",
                    _ if ejected_for_ms.is_some() => "ejected",
                    _ => "up",
                };
                ServerView {
                    id: id.clone(),
                    addr: e.backend.addr().to_owned(),
                    state,
                    last_seen_ms: u64::try_from(
                        now.saturating_duration_since(e.last_seen).as_millis(),
                    )
                    .unwrap_or(u64::MAX),
                    expires_in_ms: nanos_to_ms(deadline.saturating_sub(now_ticks)),
                    epoch: e.order.map_or(0, |o| o.0),
                    seq: e.order.map_or(0, |o| o.1),
                    interval_ms: e.interval_ms,
                    plain: e.order.is_none(),
                    weight: e.backend.weight(),
                    in_flight: peer.in_flight.load(Ordering::Relaxed),
                    ejections: peer.ejections.load(Ordering::Relaxed),
                    ejected_for_ms,
                    meta: e.meta.clone(),
                }
            })
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
        }
    }
}

pub(crate) fn nanos_to_ms(nanos: u64) -> u64 {
    nanos / 1_000_000
}

/// Milliseconds until `state`'s ejection ends, if it is ejected at tick `now`.
pub(crate) fn ejected_for_ms(state: &PeerState, now: u64) -> Option<u64> {
    let until = state.ejected_until.load(Ordering::Relaxed);
    (until > now).then(|| nanos_to_ms(until - now))
}
