//! The retry budget: retries may add about `ratio` of the traffic, plus a small floor per second.
//!
//! A token bucket: every request deposits `ratio` of a token, time deposits `min_per_sec` tokens per second, and a
//! retry takes one whole token or does not happen. When every server fails, requests fail after one try each
//! instead of `max_tries`, so a struggling backend set is not hit three times as hard.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// Tokens kept at most: a burst of this many retries after a quiet spell.
const MAX_TOKENS_FLOOR: f64 = 10.0;

/// A shared retry budget.
#[derive(Debug)]
pub struct RetryBudget {
    ratio: f64,
    min_per_sec: f64,
    max_tokens: f64,
    state: Mutex<(f64, Instant)>,
}

impl RetryBudget {
    /// A budget of `ratio` retries per request plus `min_per_sec` per second.
    pub fn new(ratio: f64, min_per_sec: f64, now: Instant) -> RetryBudget {
        let max_tokens = MAX_TOKENS_FLOOR.max(min_per_sec);
        RetryBudget {
            ratio,
            min_per_sec,
            max_tokens,
            state: Mutex::new((min_per_sec.min(max_tokens), now)),
        }
    }

    fn update<T>(&self, now: Instant, f: impl FnOnce(&mut f64) -> T) -> T {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let elapsed = now.saturating_duration_since(state.1).as_secs_f64();
        state.0 = (state.0 + elapsed * self.min_per_sec).min(self.max_tokens);
        state.1 = now;
        let result = f(&mut state.0);
        state.0 = state.0.min(self.max_tokens);
        result
    }

    /// One request arrived.
    pub fn deposit(&self, now: Instant) {
        let ratio = self.ratio;
        self.update(now, |tokens| *tokens += ratio);
    }

    /// Takes one retry from the budget; false when it is spent.
    pub fn withdraw(&self, now: Instant) -> bool {
        self.update(now, |tokens| {
            if *tokens >= 1.0 {
                *tokens -= 1.0;
                true
            } else {
                false
            }
        })
    }
}

/// `base` jittered to between 0.5x and 1.5x, so that retries of many requests do not arrive in lockstep.
pub fn jittered(base: Duration) -> Duration {
    use rand::Rng;
    base.mul_f64(rand::rng().random_range(0.5..1.5))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn retries_are_bounded_by_the_ratio_and_the_floor() {
        let budget = RetryBudget::new(0.2, 0.0, Instant::now());
        let mut retries = 0;
        for _ in 0..1000 {
            budget.deposit(Instant::now());
            if budget.withdraw(Instant::now()) {
                retries += 1;
            }
        }
        assert!((195..=200).contains(&retries), "{retries}");

        let floor = RetryBudget::new(0.0, 5.0, Instant::now());
        let mut granted = 0;
        for _ in 0..100 {
            if floor.withdraw(Instant::now()) {
                granted += 1;
            }
        }
        assert_eq!(granted, 5, "the initial floor");
        tokio::time::advance(Duration::from_secs(1)).await;
        let later = (0..100).filter(|_| floor.withdraw(Instant::now())).count();
        assert_eq!(later, 5, "five more per second");
    }

    #[test]
    fn jitter_stays_within_half_to_one_and_a_half() {
        for _ in 0..100 {
            let d = jittered(Duration::from_millis(10));
            assert!(d >= Duration::from_millis(5) && d <= Duration::from_millis(15));
        }
    }
}
