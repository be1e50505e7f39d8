//! Which solicitations a data server answers, and when: each nonce once, at most one answer per
//! [`MIN_ANSWER_GAP`], and every solicitation that arrives while an answer is pending is folded into it (moving it
//! earlier when it asks for less wait). Pure (time is passed in), so it is tested in virtual time.

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use super::SOLICITATION_MAX_AGE;

/// At most one solicited heartbeat this often, whatever anyone publishes: a flood of solicitations cannot make a
/// data server publish faster than this (plus its own schedule).
pub const MIN_ANSWER_GAP: Duration = Duration::from_secs(1);
/// Nonces remembered for duplicate detection (each also for at most [`SOLICITATION_MAX_AGE`]); bounded so that a
/// flood of distinct nonces costs fixed memory.
pub(crate) const MAX_REMEMBERED: usize = 4096;

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
    seen: VecDeque<(String, Instant)>,
    seen_set: HashSet<String>,
    pending: Option<Instant>,
    last_sent: Option<Instant>,
}

impl Gate {
    /// Decides for a solicitation with `nonce` whose answer may wait `delay` (already drawn from its spread).
    pub(crate) fn admit(&mut self, nonce: &str, delay: Duration, now: Instant) -> Admit {
        while let Some((old, at)) = self.seen.front() {
            if self.seen.len() < MAX_REMEMBERED
                && now.saturating_duration_since(*at) < SOLICITATION_MAX_AGE
            {
                break;
            }
            self.seen_set.remove(old);
            self.seen.pop_front();
        }
        if !self.seen_set.insert(nonce.to_owned()) {
            return Admit::Duplicate;
        }
        self.seen.push_back((nonce.to_owned(), now));
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

    #[tokio::test(start_paused = true)]
    async fn a_flood_is_answered_once_per_gap() {
        let mut gate = Gate::default();
        let start = Instant::now();
        let mut answers = 0;
        // 1,000 distinct solicitations over 2 s, each asking for an immediate answer.
        for i in 0..1000u32 {
            let now = start + Duration::from_millis(u64::from(i) * 2);
            if let Admit::Answer(at) = gate.admit(&format!("n{i}"), Duration::ZERO, now) {
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
        let mut gate = Gate::default();
        let now = Instant::now();
        let delay = Duration::from_millis(300);
        assert_eq!(gate.admit("a", delay, now), Admit::Answer(now + delay));
        assert_eq!(gate.admit("a", delay, now), Admit::Duplicate);
        assert_eq!(gate.admit("b", delay, now), Admit::RateLimited);
        assert!(!gate.take_due(now));
        assert!(gate.take_due(now + delay));
        // Long after, the same nonce is forgotten only once it is older than the maximum age.
        let later = now + SOLICITATION_MAX_AGE + Duration::from_secs(1);
        assert_eq!(gate.admit("a", Duration::ZERO, later), Admit::Answer(later));
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_spread_cannot_hold_back_an_answer_wanted_at_once() {
        let mut gate = Gate::default();
        let now = Instant::now();
        let long = Duration::from_secs(5);
        assert_eq!(gate.admit("slow", long, now), Admit::Answer(now + long));
        assert_eq!(
            gate.admit("urgent", Duration::ZERO, now),
            Admit::Sooner(now)
        );
        assert!(gate.take_due(now), "answered at once");
        // Still one answer per gap: the next, however urgent, waits for it.
        let soon = now + Duration::from_millis(10);
        assert_eq!(
            gate.admit("next", Duration::ZERO, soon),
            Admit::Answer(now + MIN_ANSWER_GAP)
        );
        assert_eq!(
            gate.admit("again", Duration::ZERO, soon),
            Admit::RateLimited
        );
    }

    #[tokio::test(start_paused = true)]
    async fn memory_is_bounded() {
        let mut gate = Gate::default();
        let now = Instant::now();
        for i in 0..(3 * MAX_REMEMBERED) {
            gate.admit(&i.to_string(), Duration::ZERO, now);
        }
        assert!(gate.seen.len() <= MAX_REMEMBERED && gate.seen_set.len() <= MAX_REMEMBERED);
    }
}
