//! What the registry did with one message, and counters of that for `/metrics`.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::reject::{RejectReason, Rejection};

/// What [`Registry::observe`](crate::Registry::observe) did with a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A server not in the live set joined it.
    Joined,
    /// A live server's deadline was pushed back (and its seq, meta or weight updated).
    Refreshed,
    /// A live server announced a new address with a newer `(epoch, seq)`; it is routed to the new one.
    Moved,
    /// A live server said it is leaving and was removed.
    Left,
    /// A valid message that changes nothing.
    Ignored(IgnoreReason),
    /// An invalid or unauthorised message.
    Rejected(Rejection),
}

/// Why a valid message changed nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum IgnoreReason {
    /// nsqd's timestamp is older than the TTL: the server may have changed since.
    Stale,
    /// Same `(epoch, seq)` as the last one applied: NSQ delivered it again.
    Duplicate,
    /// Older `(epoch, seq)` than the last one applied: NSQ delivered out of order.
    OutOfOrder,
    /// The id left within the last TTL and this `up` is from that run (same or older epoch).
    Tombstoned,
    /// A `leaving` for an id that is not live (remembered as a tombstone all the same).
    NotRegistered,
}

impl IgnoreReason {
    /// Every reason, in declaration order.
    pub const ALL: [IgnoreReason; 5] = [
        IgnoreReason::Stale,
        IgnoreReason::Duplicate,
        IgnoreReason::OutOfOrder,
        IgnoreReason::Tombstoned,
        IgnoreReason::NotRegistered,
    ];

    /// The metrics label, e.g. `"stale"`.
    pub fn as_str(self) -> &'static str {
        match self {
            IgnoreReason::Stale => "stale",
            IgnoreReason::Duplicate => "duplicate",
            IgnoreReason::OutOfOrder => "out_of_order",
            IgnoreReason::Tombstoned => "tombstoned",
            IgnoreReason::NotRegistered => "not_registered",
        }
    }
}

impl Outcome {
    /// Metrics labels: the outcome (`"joined"`, `"refreshed"`, `"moved"`, `"left"`, `"ignored"`, `"rejected"`)
    /// and, for the last two, the reason.
    pub fn labels(&self) -> (&'static str, Option<&'static str>) {
        match self {
            Outcome::Joined => ("joined", None),
            Outcome::Refreshed => ("refreshed", None),
            Outcome::Moved => ("moved", None),
            Outcome::Left => ("left", None),
            Outcome::Ignored(r) => ("ignored", Some(r.as_str())),
            Outcome::Rejected(r) => ("rejected", Some(r.reason().as_str())),
        }
    }
}

/// One counter of [`Registry::outcome_counts`](crate::Registry::outcome_counts), e.g. for
/// `heartbeats_total{outcome="rejected",reason="bad_json"} 3`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct OutcomeCount {
    /// `"joined"`, `"refreshed"`, `"moved"`, `"left"`, `"ignored"` or `"rejected"`.
    pub outcome: &'static str,
    /// The reason label for ignored and rejected messages.
    pub reason: Option<&'static str>,
    /// Messages so far.
    pub count: u64,
}

const ACCEPTED: [&str; 4] = ["joined", "refreshed", "moved", "left"];

/// Lock-free counters, one per outcome and reason, so counting never contends with the registry lock.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    accepted: [AtomicU64; ACCEPTED.len()],
    ignored: [AtomicU64; IgnoreReason::ALL.len()],
    rejected: [AtomicU64; RejectReason::ALL.len()],
}

impl Counters {
    pub(crate) fn record(&self, outcome: &Outcome) {
        let counter = match outcome {
            Outcome::Joined => &self.accepted[0],
            Outcome::Refreshed => &self.accepted[1],
            Outcome::Moved => &self.accepted[2],
            Outcome::Left => &self.accepted[3],
            Outcome::Ignored(r) => &self.ignored[*r as usize],
            Outcome::Rejected(r) => &self.rejected[r.reason().index()],
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Every counter, zeros included, so a dashboard sees the full label set from the start.
    pub(crate) fn snapshot(&self) -> Vec<OutcomeCount> {
        let accepted = ACCEPTED
            .iter()
            .zip(&self.accepted)
            .map(|(name, c)| (*name, None, c));
        let ignored = IgnoreReason::ALL
            .iter()
            .zip(&self.ignored)
            .map(|(r, c)| ("ignored", Some(r.as_str()), c));
        let rejected = RejectReason::ALL
            .iter()
            .zip(&self.rejected)
            .map(|(r, c)| ("rejected", Some(r.as_str()), c));
        accepted
            .chain(ignored)
            .chain(rejected)
            .map(|(outcome, reason, c)| OutcomeCount {
                outcome,
                reason,
                count: c.load(Ordering::Relaxed),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ignore_reasons_are_in_index_order() {
        for (i, r) in IgnoreReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
    }

    #[test]
    fn counts_by_label() {
        let counters = Counters::default();
        counters.record(&Outcome::Joined);
        counters.record(&Outcome::Ignored(IgnoreReason::Duplicate));
        counters.record(&Outcome::Ignored(IgnoreReason::Duplicate));
        counters.record(&Outcome::Rejected(Rejection::new(
            RejectReason::BadJson,
            "x",
        )));
        let all = counters.snapshot();
        assert_eq!(
            all.len(),
            4 + IgnoreReason::ALL.len() + RejectReason::ALL.len()
        );
        let get = |o, r| {
            all.iter()
                .find(|c| c.outcome == o && c.reason == r)
                .unwrap()
                .count
        };
        assert_eq!(get("joined", None), 1);
        assert_eq!(get("ignored", Some("duplicate")), 2);
        assert_eq!(get("rejected", Some("bad_json")), 1);
        assert_eq!(get("rejected", Some("empty")), 0);
    }
}
