//! Which solicitations a data server answers, and when: each nonce once, at most one answer per
//! [`MIN_ANSWER_GAP`], and every solicitation that arrives while an answer is pending is folded into it (moving it
//! earlier when it asks for less wait). Pure (both clocks are passed in), so it is tested in virtual time.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use tokio::time::Instant;

use super::{SOLICITATION_MAX_AGE, Solicitation};

/// At most one solicited heartbeat this often, whatever anyone publishes: a flood of solicitations cannot make a
/// data server publish faster than this (plus its own schedule).
pub const MIN_ANSWER_GAP: Duration = Duration::from_secs(1);
/// Nonces remembered for duplicate detection (each until [`remember_until`]); bounded so that a flood of distinct
/// nonces costs fixed memory (when full, the one closest to its end is forgotten first).
pub(crate) const MAX_REMEMBERED: usize = 4096;

/// The receiver's wall-clock ms until which a solicitation's nonce is remembered: as long as
/// [`Solicitation::decode`] would still accept it (`sent_at_ms` + [`SOLICITATION_MAX_AGE`]; a sender whose clock runs
/// ahead is accepted longer than one window after receipt, and a replay inside that time must still be a
/// duplicate). At least one window from receipt (what deduplication of one message through several nsqd needs),
/// at most two: without a key `sent_at_ms` is not checked and could be anything.
pub(crate) fn remember_until(sent_at_ms: u64, now_ms: u64) -> u64 {
    let window = u64::try_from(SOLICITATION_MAX_AGE.as_millis()).unwrap_or(u64::MAX);
    sent_at_ms.saturating_add(window).clamp(
        now_ms.saturating_add(window),
        now_ms.saturating_add(window.saturating_mul(2)),
    )
}

/// What the gate decided for one solicitation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admit {
    /// A new answer is due at this time.
    Answer(Instant),
    /// This nonce was seen already (the same solicitation through another nsqd).
    Duplicate,
    /// An answer is already pending: it answers this one too (it is published after this solicitation was).
    RateLimited,
    /// An answer was pending for later than this one may wait: it is folded in and moved earlier, to this time. A
    /// solicitation with a long spread (a hostile one, or another api-server's) cannot hold back the answer a
    /// starting api-server asked to have at once.
    Sooner(Instant),
}

#[derive(Debug, Default)]
pub(crate) struct Gate {
    /// Remembered nonces by the wall-clock ms until which each is remembered, soonest first.
    by_end: BTreeSet<(u64, String)>,
    /// The same nonces, for lookup.
    seen: HashMap<String, u64>,
    pending: Option<Instant>,
    last_sent: Option<Instant>,
}

impl Gate {
    /// Decides for `solicitation` (already decoded at `now_ms`, the receiver's wall clock) whose answer may wait
    /// `delay` (already drawn from its spread); `now` is the same moment on the monotonic clock.
    pub(crate) fn admit(
        &mut self,
        solicitation: &Solicitation,
        delay: Duration,
        now_ms: u64,
        now: Instant,
    ) -> Admit {
        self.forget(now_ms);
        let nonce = &solicitation.nonce;
        if self.seen.contains_key(nonce) {
            return Admit::Duplicate;
        }
        let until = remember_until(solicitation.sent_at_ms, now_ms);
        self.seen.insert(nonce.clone(), until);
        self.by_end.insert((until, nonce.clone()));
        let mut at = now + delay;
        if let Some(last) = self.last_sent {
            at = at.max(last + MIN_ANSWER_GAP);
        }
        match self.pending {
            Some(pending) if pending <= at => Admit::RateLimited,
            Some(_) => {
                self.pending = Some(at);
                Admit::Sooner(at)
            }
            None => {
                self.pending = Some(at);
                Admit::Answer(at)
            }
        }
    }

    /// Forgets the nonces whose messages `decode` now refuses as too old, then the soonest to end while full.
    fn forget(&mut self, now_ms: u64) {
        while let Some((until, _)) = self.by_end.first() {
            if *until >= now_ms && self.by_end.len() < MAX_REMEMBERED {
                break;
            }
            if let Some((_, nonce)) = self.by_end.pop_first() {
                self.seen.remove(&nonce);
            }
        }
    }

    /// When the pending answer is due, if one is.
    pub(crate) fn pending(&self) -> Option<Instant> {
        self.pending
    }

    /// Takes the pending answer if it is due at `now` (then it counts as sent now).
    pub(crate) fn take_due(&mut self, now: Instant) -> bool {
        match self.pending {
            Some(at) if at <= now => {
                self.pending = None;
                self.last_sent = Some(now);
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The receiver's wall clock (ms) at the start of each test.
    const T0: u64 = 1_700_000_000_000;

    /// Both clocks, `after` the start of a test: the wall one in ms, and the monotonic one.
    struct Clocks(Instant);

    impl Clocks {
        fn start() -> Clocks {
            Clocks(Instant::now())
        }

        fn at(&self, after: Duration) -> (u64, Instant) {
            (T0 + after.as_millis() as u64, self.0 + after)
        }
    }

    /// A solicitation with `nonce`, stamped `sent_at_ms` by its sender's clock.
    fn solicitation(nonce: &str, sent_at_ms: u64) -> Solicitation {
        Solicitation {
            from: "api-1".into(),
            nonce: nonce.into(),
            sent_at_ms,
            spread_ms: 0,
        }
    }

    /// Admits a solicitation sent now by a sender whose clock agrees, received `after` the start.
    fn admit(
        gate: &mut Gate,
        clocks: &Clocks,
        nonce: &str,
        delay: Duration,
        after: Duration,
    ) -> Admit {
        let (now_ms, now) = clocks.at(after);
        gate.admit(&solicitation(nonce, now_ms), delay, now_ms, now)
    }

    #[tokio::test(start_paused = true)]
    async fn a_flood_is_answered_once_per_gap() {
        let (mut gate, clocks) = (Gate::default(), Clocks::start());
        let mut answers = 0;
        // 1,000 distinct solicitations over 2 s, each asking for an immediate answer.
        for i in 0..1000u64 {
            let after = Duration::from_millis(i * 2);
            let now = clocks.at(after).1;
            if let Admit::Answer(at) =
                admit(&mut gate, &clocks, &format!("n{i}"), Duration::ZERO, after)
            {
                assert!(at >= now);
            }
            if gate.take_due(now) {
                answers += 1;
            }
        }
        assert!((2..=3).contains(&answers), "{answers} answers in 2 s");
    }

    #[tokio::test(start_paused = true)]
    async fn the_same_nonce_twice_is_a_duplicate() {
        let (mut gate, clocks) = (Gate::default(), Clocks::start());
        let now = clocks.0;
        let delay = Duration::from_millis(300);
        let zero = Duration::ZERO;
        assert_eq!(
            admit(&mut gate, &clocks, "a", delay, zero),
            Admit::Answer(now + delay)
        );
        assert_eq!(
            admit(&mut gate, &clocks, "a", delay, zero),
            Admit::Duplicate
        );
        assert_eq!(
            admit(&mut gate, &clocks, "b", delay, zero),
            Admit::RateLimited
        );
        assert!(!gate.take_due(now));
        assert!(gate.take_due(now + delay));
        // Long after, the same nonce is forgotten only once it is older than the maximum age.
        let after = SOLICITATION_MAX_AGE + Duration::from_secs(1);
        let (later_ms, later) = clocks.at(after);
        assert_eq!(
            gate.admit(&solicitation("a", T0), zero, later_ms, later),
            Admit::Answer(later)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_nonce_is_remembered_while_its_message_would_be_accepted() {
        // The sender's clock runs 25 s ahead: its message stays inside the window until 55 s after receipt.
        let (mut gate, clocks) = (Gate::default(), Clocks::start());
        let ahead = solicitation("ahead", T0 + 25_000);
        let (now_ms, now) = clocks.at(Duration::ZERO);
        assert_eq!(
            gate.admit(&ahead, Duration::ZERO, now_ms, now),
            Admit::Answer(now)
        );
        assert!(gate.take_due(now));
        let window = SOLICITATION_MAX_AGE.as_millis() as u64;
        for after_s in [31, 55] {
            let (replay_ms, replay) = clocks.at(Duration::from_secs(after_s));
            assert!(
                replay_ms.abs_diff(ahead.sent_at_ms) <= window,
                "the signature check still accepts it"
            );
            assert_eq!(
                gate.admit(&ahead, Duration::ZERO, replay_ms, replay),
                Admit::Duplicate,
                "replayed {after_s} s after receipt"
            );
        }
        // Once refused as too old by the message check, it may be forgotten.
        let (gone_ms, gone) = clocks.at(Duration::from_millis(55_001));
        assert!(gone_ms.abs_diff(ahead.sent_at_ms) > window);
        gate.admit(
            &solicitation("other", gone_ms),
            Duration::ZERO,
            gone_ms,
            gone,
        );
        assert!(!gate.seen.contains_key("ahead"));
    }

    #[test]
    fn remembered_at_least_one_window_and_at_most_two() {
        let window = SOLICITATION_MAX_AGE.as_millis() as u64;
        assert_eq!(remember_until(T0, T0), T0 + window);
        assert_eq!(remember_until(T0 + 25_000, T0), T0 + 25_000 + window);
        // Unsigned, so never checked against the clock: a stamp in the past or far ahead.
        assert_eq!(remember_until(0, T0), T0 + window);
        assert_eq!(remember_until(u64::MAX, T0), T0 + 2 * window);
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_spread_cannot_hold_back_an_answer_wanted_at_once() {
        let (mut gate, clocks) = (Gate::default(), Clocks::start());
        let now = clocks.0;
        let (long, zero) = (Duration::from_secs(5), Duration::ZERO);
        assert_eq!(
            admit(&mut gate, &clocks, "slow", long, zero),
            Admit::Answer(now + long)
        );
        assert_eq!(
            admit(&mut gate, &clocks, "urgent", zero, zero),
            Admit::Sooner(now)
        );
        assert!(gate.take_due(now), "answered at once");
        // Still one answer per gap: the next, however urgent, waits for it.
        let soon = Duration::from_millis(10);
        assert_eq!(
            admit(&mut gate, &clocks, "next", zero, soon),
            Admit::Answer(now + MIN_ANSWER_GAP)
        );
        assert_eq!(
            admit(&mut gate, &clocks, "again", zero, soon),
            Admit::RateLimited
        );
    }

    #[tokio::test(start_paused = true)]
    async fn memory_is_bounded() {
        let (mut gate, clocks) = (Gate::default(), Clocks::start());
        for i in 0..(3 * MAX_REMEMBERED) {
            admit(
                &mut gate,
                &clocks,
                &i.to_string(),
                Duration::ZERO,
                Duration::ZERO,
            );
        }
        assert!(gate.seen.len() <= MAX_REMEMBERED && gate.by_end.len() <= MAX_REMEMBERED);
    }
}
