//! Per-server state shared by the registry (liveness) and the balancer (requests in flight, passive health).
//!
//! Every field is an atomic so the proxy's pick never takes a lock; the fields are private so that each rule lives
//! in one method here: a deadline only moves forward, in-flight counts only move through an [`InFlightGuard`], an
//! ejection is reported as recovered exactly once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::latency::LatencyEstimate;

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

/// Per-id state, keyed by id in the registry and shared by every `Backend` built for that id, so that in-flight
/// counts and ejections survive snapshot rebuilds (a rebuild happens on every join/leave of any server).
/// Times are [`Clock`] ticks so they fit in atomics and can be read without a lock on the proxy path.
#[derive(Debug, Default)]
pub(crate) struct PeerState {
    /// Expiry deadline; refreshed in place by heartbeats, so a refresh needs no rebuild.
    deadline: AtomicU64,
    in_flight: AtomicU64,
    /// Out of rotation until this tick (0: never ejected).
    ejected_until: AtomicU64,
    /// Set on ejection, cleared by whoever first sees the time is over and emits `Recover`.
    ejected: AtomicBool,
    consecutive_failures: AtomicU32,
    consecutive_ejections: AtomicU32,
    ejections: AtomicU64,
    failures: AtomicU64,
    /// The largest heartbeat epoch applied for this id, kept while the id is out of the table (expired, left) so
    /// that a rejoin can tell a new run from the same one.
    epoch: AtomicU64,
    /// Recent latency, for `p2c_ewma`.
    latency: LatencyEstimate,
}

/// What [`PeerState::record_failure`] found, for the balancer to decide on ejection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FailureStreak {
    /// Already ejected: requests that were in flight when it was ejected bring no news.
    AlreadyEjected,
    /// This many consecutive failures so far, this one included.
    Consecutive(u32),
}

/// The passive-health figures of one server at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PeerStats {
    pub(crate) in_flight: u64,
    pub(crate) failures: u64,
    pub(crate) ejections: u64,
    /// Milliseconds until its current ejection ends, if ejected.
    pub(crate) ejected_for_ms: Option<u64>,
}

impl PeerState {
    // Liveness, written by the registry.

    /// Pushes the expiry deadline to `deadline` unless it is already later: heartbeats handled on several threads
    /// may pass instants slightly out of order, and a deadline never moves back.
    pub(crate) fn extend_deadline(&self, deadline: u64) {
        self.deadline.fetch_max(deadline, Ordering::AcqRel);
    }

    /// The expiry deadline, in ticks.
    pub(crate) fn deadline(&self) -> u64 {
        self.deadline.load(Ordering::Acquire)
    }

    /// The deadline has passed at `now`.
    pub(crate) fn is_expired(&self, now: u64) -> bool {
        self.deadline() <= now
    }

    /// Live at `now`: before its deadline, or held because expiry is `frozen` (self-preservation).
    pub(crate) fn is_live(&self, now: u64, frozen: bool) -> bool {
        frozen || !self.is_expired(now)
    }

    /// Records a heartbeat epoch applied for this id; true when it is larger than any seen before, i.e. a new run
    /// (whose passive-health history the caller then clears). Registry writes only, under its lock.
    pub(crate) fn note_epoch(&self, epoch: u64) -> bool {
        self.epoch.fetch_max(epoch, Ordering::AcqRel) < epoch
    }

    /// Nothing in flight and no ejection pending: forgetting it loses nothing a user would notice.
    pub(crate) fn is_idle(&self, now: u64) -> bool {
        self.in_flight() == 0 && !self.is_ejected(now)
    }

    // Requests in flight, counted by the guard.

    /// Counts one request in flight until the guard is dropped.
    pub(crate) fn enter(self: &Arc<Self>) -> InFlightGuard {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlightGuard {
            state: Arc::clone(self),
        }
    }

    /// Requests in flight right now.
    pub(crate) fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    // Latency, written by the balancer when its strategy uses it.

    /// Takes the latency of one try, answered at `now`.
    pub(crate) fn observe_latency(&self, latency: Duration, now: u64) {
        self.latency.observe(latency, now);
    }

    /// The latency estimate at `now` in nanoseconds; `None` before the first answer.
    pub(crate) fn latency_nanos(&self, now: u64) -> Option<f64> {
        self.latency.nanos(now)
    }

    // Passive health, written by the balancer (and by the registry when a server restarts or moves).

    /// Out of rotation at `now`.
    pub(crate) fn is_ejected(&self, now: u64) -> bool {
        self.ejected_until.load(Ordering::Relaxed) > now
    }

    /// Counts a failed request at `now`, and unless the server is ejected already, extends its failure streak.
    /// The balancer calls this under its ejection lock, so the streak and the ejection decision agree.
    pub(crate) fn record_failure(&self, now: u64) -> FailureStreak {
        self.failures.fetch_add(1, Ordering::Relaxed);
        if self.is_ejected(now) {
            return FailureStreak::AlreadyEjected;
        }
        let streak = self
            .consecutive_failures
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        FailureStreak::Consecutive(streak)
    }

    /// Takes the server out of rotation from `now` for `length(nth)`, `nth` counting consecutive ejections from 1;
    /// returns that length. The failure streak starts again.
    pub(crate) fn eject(
        &self,
        now: Instant,
        clock: Clock,
        length: impl FnOnce(u32) -> Duration,
    ) -> Duration {
        let nth = self
            .consecutive_ejections
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        let duration = length(nth);
        self.ejected_until
            .store(clock.ticks(now + duration), Ordering::Relaxed);
        self.ejected.store(true, Ordering::Release);
        self.ejections.fetch_add(1, Ordering::Relaxed);
        self.consecutive_failures.store(0, Ordering::Relaxed);
        duration
    }

    /// A request succeeded: the failure streak ends, and unless the server is ejected right now, so does the
    /// ejection streak (the next ejection starts again at the base time).
    pub(crate) fn record_success(&self) {
        // Read before writing: on the hot path the counters are nearly always zero already, and a plain load
        // keeps the cache line shared between cores.
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
        if !self.ejected.load(Ordering::Acquire)
            && self.consecutive_ejections.load(Ordering::Relaxed) != 0
        {
            self.consecutive_ejections.store(0, Ordering::Relaxed);
        }
    }

    /// True once per ejection, for the caller that first sees at `now` that the ejection is over: that caller
    /// reports the recovery, so it is reported once however many threads look.
    pub(crate) fn try_recover(&self, now: u64) -> bool {
        if !self.ejected.load(Ordering::Acquire) || self.is_ejected(now) {
            return false;
        }
        self.ejected
            .compare_exchange(true, false, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    }

    /// Forgets passive-health history, for a server that moved or restarted: its failures belonged to the old
    /// address or run. Returns whether it was ejected, so the caller can report its return to rotation.
    pub(crate) fn clear_ejection(&self) -> bool {
        let was_ejected = self.ejected.load(Ordering::Acquire);
        self.ejected_until.store(0, Ordering::Relaxed);
        self.ejected.store(false, Ordering::Release);
        self.consecutive_failures.store(0, Ordering::Relaxed);
        self.consecutive_ejections.store(0, Ordering::Relaxed);
        was_ejected
    }

    /// The figures the admin API and the dashboard show, at `now`.
    pub(crate) fn stats(&self, now: u64) -> PeerStats {
        let until = self.ejected_until.load(Ordering::Relaxed);
        PeerStats {
            in_flight: self.in_flight(),
            failures: self.failures.load(Ordering::Relaxed),
            ejections: self.ejections.load(Ordering::Relaxed),
            ejected_for_ms: (until > now).then(|| (until - now) / 1_000_000),
        }
    }
}

/// Counts one request in flight to a server until dropped.
#[derive(Debug)]
#[must_use = "the request counts as in flight only while the guard lives"]
pub struct InFlightGuard {
    state: Arc<PeerState>,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.state.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    #[tokio::test(start_paused = true)]
    async fn clock_ticks_follow_virtual_time() {
        let clock = Clock::new(Instant::now());
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert_eq!(clock.ticks(Instant::now()), 1_500_000_000);
    }

    #[test]
    fn deadline_only_moves_forward() {
        let peer = PeerState::default();
        peer.extend_deadline(5 * SEC);
        peer.extend_deadline(3 * SEC);
        assert_eq!(peer.deadline(), 5 * SEC);
        assert!(peer.is_live(5 * SEC - 1, false));
        assert!(!peer.is_live(5 * SEC, false));
        assert!(peer.is_live(9 * SEC, true), "held while frozen");
    }

    #[test]
    fn guards_count_requests_in_flight() {
        let peer = Arc::new(PeerState::default());
        let (a, b) = (peer.enter(), peer.enter());
        assert_eq!(peer.in_flight(), 2);
        assert!(!peer.is_idle(0));
        drop((a, b));
        assert_eq!(peer.in_flight(), 0);
        assert!(peer.is_idle(0));
    }

    #[test]
    fn ejection_streaks_and_recovery() {
        let clock = Clock::new(Instant::now());
        let start = Instant::now();
        let peer = PeerState::default();
        assert_eq!(peer.record_failure(0), FailureStreak::Consecutive(1));
        assert_eq!(peer.record_failure(0), FailureStreak::Consecutive(2));
        let mut nths = Vec::new();
        let length = peer.eject(start, clock, |nth| {
            nths.push(nth);
            Duration::from_secs(1)
        });
        assert_eq!(length, Duration::from_secs(1));
        assert!(peer.is_ejected(clock.ticks(start)) && !peer.is_idle(clock.ticks(start)));
        assert_eq!(peer.record_failure(0), FailureStreak::AlreadyEjected);
        let now = clock.ticks(start);
        assert_eq!(
            peer.stats(now),
            PeerStats {
                in_flight: 0,
                failures: 3,
                ejections: 1,
                ejected_for_ms: Some(1000)
            }
        );
        assert!(!peer.try_recover(now), "not over yet");
        let later = clock.ticks(start + Duration::from_secs(1));
        assert!(peer.try_recover(later));
        assert!(!peer.try_recover(later), "recovered once");
        // Success while not ejected ends the ejection streak: the next ejection is the first again.
        peer.record_success();
        assert_eq!(peer.record_failure(later), FailureStreak::Consecutive(1));
        peer.eject(start, clock, |nth| {
            nths.push(nth);
            Duration::from_secs(1)
        });
        assert_eq!(nths, [1, 1]);
        assert!(peer.clear_ejection());
        assert!(!peer.is_ejected(now) && !peer.clear_ejection());
    }
}
