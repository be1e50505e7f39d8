//! Read-only views of the registry for the admin API (`GET /registry`) and the dashboard.

use std::collections::BTreeMap;

use serde_json::Value;
use tokio::time::Instant;

use super::table::Entry;

/// One live server as the admin API shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ServerView {
    /// The server's id.
    pub id: String,
    /// Its announced `host:port`.
    pub addr: String,
    /// `"up"`, `"ejected"` (passive health keeps it out of rotation for now), `"held"` (past its TTL but kept
    /// because self-preservation froze expiry) or `"unconfirmed"` (loaded from a saved registry, not heard from
    /// yet: routed to only while no confirmed server is live).
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
    /// True when neither a key nor `allowed_networks` is configured: anyone who can publish to nsqd can put an
    /// address into rotation ("unauthenticated heartbeats accepted").
    pub unauthenticated: bool,
}

impl ServerView {
    /// The view of a live entry at `now` (`now_ticks` in the registry's clock).
    pub(super) fn new(id: &str, entry: &Entry, now: Instant, now_ticks: u64) -> ServerView {
        let peer = entry.backend.peer();
        let deadline = peer.deadline();
        let stats = peer.stats(now_ticks);
        let state = match () {
            _ if deadline <= now_ticks => "held",
            _ if stats.ejected_for_ms.is_some() => "ejected",
            _ if entry.backend.is_unconfirmed() => "unconfirmed",
            _ => "up",
        };
        ServerView {
            id: id.to_owned(),
            addr: entry.backend.addr().to_owned(),
            state,
            last_seen_ms: u64::try_from(now.saturating_duration_since(entry.last_seen).as_millis())
                .unwrap_or(u64::MAX),
            expires_in_ms: nanos_to_ms(deadline.saturating_sub(now_ticks)),
            epoch: entry.order.map_or(0, |o| o.0),
            seq: entry.order.map_or(0, |o| o.1),
            interval_ms: entry.interval_ms,
            plain: entry.order.is_none(),
            weight: entry.backend.weight(),
            in_flight: stats.in_flight,
            ejections: stats.ejections,
            ejected_for_ms: stats.ejected_for_ms,
            meta: entry.meta.clone(),
        }
    }
}

fn nanos_to_ms(nanos: u64) -> u64 {
    nanos / 1_000_000
}
