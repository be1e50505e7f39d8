//! The rules that decide whether a message may change the table, as pure functions: staleness, the replay window
//! of signed heartbeats, `(epoch, seq)` order, and who may hold an id.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::table::{Entry, Update};
use super::{IgnoreReason, Outcome};
use crate::reject::{RejectReason, Rejection, excerpt};

/// nsqd stamped the message more than one `ttl` before `wall_now`: the server may have changed since.
/// Zero or negative means unknown, never stale; a timestamp ahead of our clock (skew) is not stale either.
pub(super) fn is_stale(nsqd_timestamp_ns: i64, wall_now: SystemTime, ttl: Duration) -> bool {
    let Ok(ns) = u64::try_from(nsqd_timestamp_ns) else {
        return false;
    };
    if ns == 0 {
        return false;
    }
    let sent = UNIX_EPOCH + Duration::from_nanos(ns);
    wall_now.duration_since(sent).is_ok_and(|age| age > ttl)
}

/// With a shared key, `sent_at_ms` is signed, so it bounds how long a captured heartbeat stays usable: one TTL
/// either way of this host's clock. Within that window `(epoch, seq)` ordering and the one-TTL tombstone refuse
/// a replay; after it, only this check does, because the registry forgets a server one TTL after its last
/// heartbeat or its leave. nsqd's timestamp cannot do this job: publishing the capture again renews it.
/// Hosts' clocks must therefore agree to well within one TTL when a key is configured.
pub(super) fn check_replay_window(
    sent_at_ms: u64,
    wall_now: SystemTime,
    ttl: Duration,
) -> Result<(), Rejection> {
    let now_ms = wall_now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
    if now_ms.abs_diff(sent_at_ms) <= ttl_ms {
        return Ok(());
    }
    let (distance, side) = if sent_at_ms < now_ms {
        (now_ms - sent_at_ms, "old")
    } else {
        (sent_at_ms - now_ms, "ahead of this host's clock")
    };
    Err(Rejection::new(
        RejectReason::Replayed,
        format!(
            "expected a signed sent_at_ms within {ttl_ms} ms of now, found one {distance} ms {side}: \
             a replayed heartbeat, or clocks that disagree"
        ),
    ))
}

/// NSQ delivers at least once and in no particular order: a message whose `(epoch, seq)` is not newer than the
/// last one applied changes nothing.
pub(super) fn not_newer(order: (u64, u64), current: (u64, u64)) -> Option<IgnoreReason> {
    if order == current {
        Some(IgnoreReason::Duplicate)
    } else if order < current {
        Some(IgnoreReason::OutOfOrder)
    } else {
        None
    }
}

/// A message for a live id at another address may only take the id over when it proves a newer run: a larger
/// `epoch` than the holder's. One run never changes its address (the announcer's address is fixed), so a different
/// address within the same or an older epoch, or from a plain body that carries no epoch at all, is a second server
/// using the same id (or a takeover attempt): the live holder keeps the id, and the message is counted.
pub(super) fn conflict(entry: &Entry, update: &Update) -> Option<Outcome> {
    let holder = entry.backend.addr();
    // A server remembered from a saved registry is a guess, not a holder: whoever is heard from takes the id.
    if holder == update.addr || entry.backend.is_unconfirmed() {
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

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(10);

    #[test]
    fn order() {
        assert_eq!(not_newer((1, 5), (1, 5)), Some(IgnoreReason::Duplicate));
        assert_eq!(not_newer((1, 4), (1, 5)), Some(IgnoreReason::OutOfOrder));
        assert_eq!(not_newer((0, 9), (1, 5)), Some(IgnoreReason::OutOfOrder));
        assert_eq!(not_newer((1, 6), (1, 5)), None);
        assert_eq!(not_newer((2, 0), (1, 5)), None);
    }

    #[test]
    fn staleness_by_nsqd_timestamp() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000);
        let ns = |secs: u64| i64::try_from(secs * 1_000_000_000).unwrap();
        assert!(!is_stale(0, now, TTL), "unknown");
        assert!(!is_stale(-1, now, TTL), "unknown");
        assert!(!is_stale(ns(990), now, TTL), "exactly one TTL old");
        assert!(is_stale(ns(989), now, TTL));
        assert!(!is_stale(ns(2_000), now, TTL), "ahead: skew, not stale");
    }

    #[test]
    fn replay_window_is_one_ttl_either_way() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000);
        assert!(check_replay_window(990_000, now, TTL).is_ok());
        assert!(check_replay_window(1_010_000, now, TTL).is_ok());
        for sent in [989_999, 1_010_001] {
            let err = check_replay_window(sent, now, TTL).unwrap_err();
            assert_eq!(err.reason(), RejectReason::Replayed);
        }
    }
}
