//! The retry budget: retries may add about `ratio` of the recent traffic, plus a small floor per second.
//!
//! A decaying token bucket: every request deposits `ratio` of a token, time deposits `min_per_sec` tokens per
//! second, and a retry takes one whole token or does not happen. The balance decays with a time constant of
//! [`WINDOW`], so it stands for about the last ten seconds of traffic: after healthy traffic, a sudden burst of
//! failures (a server killed with many requests in flight to it) can be retried in full, while a lasting outage
//! of every server gets at most `ratio` extra tries per request instead of `max_tries` times the load.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// The memory of the budget: deposits fade with this time constant.
pub const WINDOW: Duration = Duration::from_secs(10);

/// A shared retry budget.
#[derive(Debug)]
pub struct RetryBudget {
    ratio: f64,
    min_per_sec: f64,
    state: Mutex<(f64, Instant)>,
}

impl RetryBudget {
    /// A budget of `ratio` retries per request plus `min_per_sec` per second; it starts with the floor's share of
    /// one window.
    pub fn new(ratio: f64, min_per_sec: f64, now: Instant) -> RetryBudget {
        RetryBudget {
            ratio,
            min_per_sec,
            state: Mutex::new((min_per_sec * WINDOW.as_secs_f64(), now)),
        }
    }

    fn update<T>(&self, now: Instant, f: impl FnOnce(&mut f64) -> T) -> T {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let elapsed = now.saturating_duration_since(state.1).as_secs_f64();
        if elapsed > 0.0 {
            // The exact solution of d(tokens)/dt = min_per_sec - tokens / WINDOW over `elapsed`.
            let window = WINDOW.as_secs_f64();
            let keep = (-elapsed / window).exp();
            state.0 = state.0 * keep + self.min_per_sec * window * (1.0 - keep);
            state.1 = now;
        }
        f(&mut state.0)
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

    /// Requests at `per_sec` for `seconds`, each failing and asking for a retry; returns the retries granted.
    async fn failing_traffic(budget: &RetryBudget, per_sec: u32, seconds: u32) -> u32 {
        let mut granted = 0;
        for _ in 0..per_sec * seconds {
            tokio::time::advance(Duration::from_secs(1) / per_sec).await;
            budget.deposit(Instant::now());
            if budget.withdraw(Instant::now()) {
                granted += 1;
            }
        }
        granted
    }

    #[tokio::test(start_paused = true)]
    async fn a_lasting_outage_gets_the_ratio_plus_the_floor() {
        let budget = RetryBudget::new(0.2, 0.0, Instant::now());
        // Long past the window, so any reserve is spent: what is left is the ratio.
        let granted = failing_traffic(&budget, 1000, 60).await;
        assert!((11_900..=12_000).contains(&granted), "{granted}");

        let floor = RetryBudget::new(0.0, 5.0, Instant::now());
        let reserve = (0..1000).filter(|_| floor.withdraw(Instant::now())).count();
        assert_eq!(reserve, 50, "the floor's share of one window");
        let granted = failing_traffic(&floor, 100, 60).await;
        assert!((295..=300).contains(&granted), "five per second: {granted}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_after_healthy_traffic_is_retried_in_full() {
        let budget = RetryBudget::new(0.2, 10.0, Instant::now());
        for _ in 0..20_000 {
            tokio::time::advance(Duration::from_micros(500)).await;
            budget.deposit(Instant::now());
        }
        // 2,000 requests/s for 10 s: a server killed with 500 requests in flight costs no client an error.
        let granted = (0..500).filter(|_| budget.withdraw(Instant::now())).count();
        assert_eq!(granted, 500);
    }

    #[test]
    fn jitter_stays_within_half_to_one_and_a_half() {
        for _ in 0..100 {
            let d = jittered(Duration::from_millis(10));
            assert!(d >= Duration::from_millis(5) && d <= Duration::from_millis(15));
        }
    }
}
