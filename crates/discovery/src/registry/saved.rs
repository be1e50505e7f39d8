//! A saved registry, so that a restarted api-server routes before the first heartbeat arrives (ARCHITECTURE.md
//! §4.2 "Cold start").
//!
//! The api-server writes [`SavedRegistry`] to a file when membership changes and reads it at start;
//! [`Registry::restore`](super::Registry::restore) loads it as *unconfirmed* servers: they take traffic only while
//! no confirmed (heard-from) server is live, the first heartbeat of each confirms it, and one not heard from within
//! a TTL expires as usual. Passive health ejects one that refuses connections on the first try. This module only
//! holds the data and its checks; the file itself is the api-server's business (this crate does no file I/O).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The version of the saved format this code writes. It reads this one and format 1 (from before per-server
/// `heard_at_ms`, whose servers count as heard when the file was saved).
pub const SAVED_FORMAT: u32 = 2;

/// The oldest format this code reads.
pub(super) const OLDEST_READ_FORMAT: u32 = 1;

/// A saved registry older than this is ignored, and so is a server in it last heard from longer ago than this: it
/// has most likely moved or gone, and trying each such server would cost clients more than waiting for
/// heartbeats. Per server, so that a file saved again and again (an api-server restarting in a loop, or during
/// an NSQ outage) cannot keep bringing back servers nobody has heard from for hours.
pub const MAX_SAVED_AGE: Duration = Duration::from_secs(600);

/// The registry as saved: the servers live when it was taken.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedRegistry {
    /// [`SAVED_FORMAT`].
    pub format: u32,
    /// Wall clock when it was taken, ms since the Unix epoch.
    pub saved_at_ms: u64,
    /// The servers, sorted by id.
    pub servers: Vec<SavedServer>,
}

/// One server of a [`SavedRegistry`]: what its last heartbeat said.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedServer {
    /// The server's id.
    pub id: String,
    /// Its announced `host:port`.
    pub addr: String,
    /// `(epoch, seq)` of its last JSON heartbeat; absent for plain `host:port` servers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<(u64, u64)>,
    /// Its announced interval, ms.
    #[serde(default)]
    pub interval_ms: u64,
    /// Its announced metadata.
    #[serde(default)]
    pub meta: BTreeMap<String, Value>,
    /// Wall clock when a heartbeat of it was last accepted, ms since the Unix epoch: kept across saves of a server
    /// loaded from a file and not heard since. Absent in format 1 (the file's `saved_at_ms` stands in).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heard_at_ms: Option<u64>,
}

impl SavedRegistry {
    /// True when it was taken more than [`MAX_SAVED_AGE`] before `wall_now` (or claims to come from the future
    /// by more than that, a clock that jumped).
    pub fn is_too_old(&self, wall_now: SystemTime) -> bool {
        let now_ms = wall_now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        now_ms.abs_diff(self.saved_at_ms) > max_saved_age_ms()
    }
}

impl SavedServer {
    /// True when it was last heard from more than [`MAX_SAVED_AGE`] before `wall_now` (or claims a time further
    /// than that ahead); `saved_at_ms`, its file's, stands in for a server saved without `heard_at_ms`.
    pub(super) fn is_too_old(&self, saved_at_ms: u64, wall_now: SystemTime) -> bool {
        let heard_at_ms = self.heard_at_ms.unwrap_or(saved_at_ms);
        unix_ms(wall_now).abs_diff(heard_at_ms) > max_saved_age_ms()
    }
}

fn max_saved_age_ms() -> u64 {
    u64::try_from(MAX_SAVED_AGE.as_millis()).unwrap_or(u64::MAX)
}

/// Milliseconds since the Unix epoch of `at`.
pub(super) fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn age_limit_both_ways() {
        let saved = |at_ms| SavedRegistry {
            format: SAVED_FORMAT,
            saved_at_ms: at_ms,
            servers: Vec::new(),
        };
        let now = UNIX_EPOCH + Duration::from_secs(10_000);
        assert!(!saved(10_000_000).is_too_old(now));
        assert!(!saved(9_400_000).is_too_old(now), "exactly the limit");
        assert!(saved(9_399_999).is_too_old(now));
        assert!(saved(10_600_001).is_too_old(now), "from the future");
    }

    #[test]
    fn plain_servers_round_trip_without_order() {
        let server = SavedServer {
            id: "10.0.0.1:80".into(),
            addr: "10.0.0.1:80".into(),
            order: None,
            interval_ms: 0,
            meta: BTreeMap::new(),
            heard_at_ms: Some(1),
        };
        let text = serde_json::to_string(&server).unwrap();
        assert!(!text.contains("order"), "{text}");
        assert_eq!(serde_json::from_str::<SavedServer>(&text).unwrap(), server);
    }
}
