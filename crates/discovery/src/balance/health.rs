//! Passive health: ejecting servers that fail requests, with growing ejection times and a cap on how many may be out.

use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use super::Balancer;
use crate::backend::Backend;
use crate::event::{Event, EventKind};
use crate::registry::is_live;

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
        let registry = &self.inner.registry;
        let snapshot = registry.snapshot();
        let Some(backend) = snapshot.backends.iter().find(|b| b.id() == id) else {
            return FailureOutcome::Unknown;
        };
        let state = &backend.state;
        state.failures.fetch_add(1, Ordering::Relaxed);
        let clock = registry.clock();
        let now_ticks = clock.ticks(now);
        let _decision = self
            .inner
            .eject_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if state.ejected_until.load(Ordering::Relaxed) > now_ticks {
            // Requests that were in flight when it was ejected: no news.
            return FailureOutcome::Counted;
        }
        let streak = state
            .consecutive_failures
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        if streak < self.inner.config.failure_threshold {
            return FailureOutcome::Counted;
        }
        let frozen = registry.self_preservation();
        let live = snapshot
            .backends
            .iter()
            .filter(|b| is_live(b, now_ticks, frozen));
        let live_count = live.clone().count();
        let ejected = live
            .filter(|b| b.state.ejected_until.load(Ordering::Relaxed) > now_ticks)
            .count();
        // Rounded down: one server of one is never ejected, one of two or three may be.
        let allowed = (self.inner.config.max_ejected_share * live_count as f64).floor() as usize;
        if ejected + 1 > allowed {
            return FailureOutcome::KeptByShareLimit;
        }
        let nth = state
            .consecutive_ejections
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        let duration = ejection_time(
            self.inner.config.base_ejection,
            self.inner.config.max_ejection,
            nth,
        );
        state
            .ejected_until
            .store(clock.ticks(now + duration), Ordering::Relaxed);
        state.ejected.store(true, Ordering::Release);
        state.ejections.fetch_add(1, Ordering::Relaxed);
        state.consecutive_failures.store(0, Ordering::Relaxed);
        registry.emit(Event::new(EventKind::Eject, id, backend.addr(), now));
        FailureOutcome::Ejected(duration)
    }

    /// Reports a successful request: the failure streak ends, and unless the server is ejected right now, so does
    /// the ejection streak (the next ejection starts again at the base time).
    pub fn report_success(&self, id: &str) {
        let snapshot = self.inner.registry.snapshot();
        let Some(backend) = snapshot.backends.iter().find(|b| b.id() == id) else {
            return;
        };
        let state = &backend.state;
        // Read before writing: on the hot path the counters are nearly always zero already, and a plain load
        // keeps the cache line shared between cores.
        if state.consecutive_failures.load(Ordering::Relaxed) != 0 {
            state.consecutive_failures.store(0, Ordering::Relaxed);
        }
        if !state.ejected.load(Ordering::Acquire)
            && state.consecutive_ejections.load(Ordering::Relaxed) != 0
        {
            state.consecutive_ejections.store(0, Ordering::Relaxed);
        }
    }

    /// Returns ejected servers whose time is over to rotation and broadcasts [`EventKind::Recover`] for each.
    /// [`pick`](Balancer::pick) does this too; call it periodically so recoveries show without traffic.
    pub fn recover_due(&self, now: Instant) -> Vec<Event> {
        let registry = &self.inner.registry;
        let snapshot = registry.snapshot();
        self.recover(&snapshot.backends, registry.clock().ticks(now), now)
    }

    pub(super) fn recover(
        &self,
        backends: &[Arc<Backend>],
        now_ticks: u64,
        now: Instant,
    ) -> Vec<Event> {
        let mut events = Vec::new();
        for backend in backends {
            let state = &backend.state;
            if !state.ejected.load(Ordering::Acquire)
                || state.ejected_until.load(Ordering::Relaxed) > now_ticks
            {
                continue;
            }
            // Only the thread that flips the flag reports the recovery, so it is reported once.
            if state
                .ejected
                .compare_exchange(true, false, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                let event = Event::new(EventKind::Recover, backend.id(), backend.addr(), now);
                self.inner.registry.emit(event.clone());
                events.push(event);
            }
        }
        events
    }

    /// Passive-health figures of every live server, sorted by id.
    pub fn stats(&self, now: Instant) -> Vec<BackendStats> {
        let registry = &self.inner.registry;
        let snapshot = registry.snapshot();
        let now_ticks = registry.clock().ticks(now);
        let frozen = registry.self_preservation();
        snapshot
            .backends
            .iter()
            .filter(|b| is_live(b, now_ticks, frozen))
            .map(|b| {
                let until = b.state.ejected_until.load(Ordering::Relaxed);
                BackendStats {
                    id: b.id().to_owned(),
                    addr: b.addr().to_owned(),
                    weight: b.weight(),
                    in_flight: b.in_flight(),
                    failures: b.state.failures.load(Ordering::Relaxed),
                    ejections: b.state.ejections.load(Ordering::Relaxed),
                    ejected_for_ms: (until > now_ticks).then(|| (until - now_ticks) / 1_000_000),
                }
            })
            .collect()
    }
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
