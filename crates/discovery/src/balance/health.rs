//! Passive health: ejecting servers that fail requests, with growing ejection times and a cap on how many may be out.

use std::sync::PoisonError;
use std::time::Duration;

use tokio::time::Instant;

use super::Balancer;
use crate::backend::{Backend, FailureStreak};
use crate::event::{Event, EventKind};
use crate::registry::LiveSet;

/// What [`Balancer::report_failure`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureOutcome {
    /// Counted; the server stays (below the threshold, or already ejected).
    Counted,
    /// The server is out of rotation for this long.
    Ejected(Duration),
    /// The server would be ejected, but the ejectable share of the live set is used up, so it stays.
    KeptByShareLimit,
    /// No server with this id is in the live set any more.
    Unknown,
}

/// Passive-health figures of one server, for the dashboard.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BackendStats {
    /// The server's id.
    pub id: String,
    /// Its address.
    pub addr: String,
    /// Balancing weight.
    pub weight: u32,
    /// Requests in flight right now.
    pub in_flight: u64,
    /// Failures reported so far.
    pub failures: u64,
    /// Times it was ejected.
    pub ejections: u64,
    /// Milliseconds until its current ejection ends, if ejected.
    pub ejected_for_ms: Option<u64>,
}

impl Balancer {
    /// Reports a failed request (connection refused, timeout, 5xx as the proxy sees fit) to server `id` at `now`.
    ///
    /// After `failure_threshold` consecutive failures the server is ejected for `base_ejection`, doubled for each
    /// consecutive ejection up to `max_ejection`, unless that would take out more than `max_ejected_share` of the
    /// live set. Ejections are broadcast as [`EventKind::Eject`].
    pub fn report_failure(&self, id: &str, now: Instant) -> FailureOutcome {
        let live = self.inner.registry.live_set(now);
        let Some(backend) = live.find(id) else {
            return FailureOutcome::Unknown;
        };
        let peer = backend.peer();
        let config = &self.inner.config;
        let _decision = self
            .inner
            .eject_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let now_ticks = live.now_ticks();
        match peer.record_failure(now_ticks) {
            FailureStreak::AlreadyEjected => return FailureOutcome::Counted,
            FailureStreak::Consecutive(streak) if streak < config.failure_threshold => {
                return FailureOutcome::Counted;
            }
            FailureStreak::Consecutive(_) => {}
        }
        let live_count = live.live().count();
        let ejected = live
            .live()
            .filter(|b| b.peer().is_ejected(now_ticks))
            .count();
        // Rounded down: one server of one is never ejected, one of two or three may be.
        let allowed = (config.max_ejected_share * live_count as f64).floor() as usize;
        if ejected + 1 > allowed {
            return FailureOutcome::KeptByShareLimit;
        }
        let duration = peer.eject(now, live.clock(), |nth| {
            ejection_time(config.base_ejection, config.max_ejection, nth)
        });
        live.emit(Event::new(EventKind::Eject, id, backend.addr(), now));
        FailureOutcome::Ejected(duration)
    }

    /// Reports a successful request: the failure streak ends, and unless the server is ejected right now, so does
    /// the ejection streak (the next ejection starts again at the base time).
    ///
    /// Takes the server the request went to rather than its id: this runs once per proxied request, and the
    /// caller holds the server already.
    pub fn report_success(&self, backend: &Backend) {
        backend.peer().record_success();
    }

    /// Returns ejected servers whose time is over to rotation and broadcasts [`EventKind::Recover`] for each.
    /// [`pick`](Balancer::pick) does this too, but only for the servers it draws (a walk over every server would
    /// make each pick linear in their number); call this periodically so every recovery shows, with or without
    /// traffic. An ejected server is out of rotation only until its time is over, whether or not this ran.
    pub fn recover_due(&self, now: Instant) -> Vec<Event> {
        self.recover(&self.inner.registry.live_set(now))
    }

    /// Every server of `live` whose ejection is over returns to rotation, with a `Recover` event each.
    fn recover(&self, live: &LiveSet<'_>) -> Vec<Event> {
        live.all()
            .iter()
            .filter_map(|backend| recover_if_due(live, backend))
            .collect()
    }

    /// Passive-health figures of every live server, sorted by id.
    pub fn stats(&self, now: Instant) -> Vec<BackendStats> {
        let live = self.inner.registry.live_set(now);
        live.live()
            .map(|b| {
                let peer = b.peer().stats(live.now_ticks());
                BackendStats {
                    id: b.id().to_owned(),
                    addr: b.addr().to_owned(),
                    weight: b.weight(),
                    in_flight: peer.in_flight,
                    failures: peer.failures,
                    ejections: peer.ejections,
                    ejected_for_ms: peer.ejected_for_ms,
                }
            })
            .collect()
    }
}

/// Returns `backend` to rotation if its ejection is over, broadcasting and returning the `Recover` event. Cheap
/// (one atomic load) for a server that was not ejected, so a pick calls it on each server it draws.
pub(super) fn recover_if_due(live: &LiveSet<'_>, backend: &Backend) -> Option<Event> {
    if !backend.peer().try_recover(live.now_ticks()) {
        return None;
    }
    let event = Event::new(EventKind::Recover, backend.id(), backend.addr(), live.now());
    live.emit(event.clone());
    Some(event)
}

/// `base * 2^(nth-1)`, capped at `max`.
fn ejection_time(base: Duration, max: Duration, nth: u32) -> Duration {
    let factor = 1u32.checked_shl(nth.saturating_sub(1)).unwrap_or(u32::MAX);
    base.saturating_mul(factor).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ejection_time_doubles_up_to_the_cap() {
        let (base, max) = (Duration::from_secs(1), Duration::from_secs(30));
        let times: Vec<u64> = (1..=7)
            .map(|n| ejection_time(base, max, n).as_secs())
            .collect();
        assert_eq!(times, [1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(ejection_time(base, max, u32::MAX), max);
        assert_eq!(ejection_time(base, max, 0), base);
    }
}
