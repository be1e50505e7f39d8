//! Waiting for an observable condition with a deadline, instead of sleeping a guessed time.
//!
//! Every wait of the tests and of testkit goes through one of these three, so that the deadline,
//! the pause between checks and the timeout message are written once:
//! - [`eventually`]: a test waits for a condition; a timeout fails the test (panics).
//! - [`try_eventually`]: the same for code that reports errors (testkit itself): `check` may give
//!   up early with an error (a process exited), and a timeout is an error naming what was awaited.
//! - [`retry`]: an operation that fails until the world is ready (a port still held by the
//!   previous run); a timeout returns the operation's last error, which says more than "timed out".
//!
//! A check is a closure returning a future (`|| async move { … }`, or `|| ready(…)` after a
//! synchronous step such as `try_wait`), not an async closure: futures of async closures can fail
//! to be `Send` for a `tokio::spawn`, and testkit's waits run inside spawned tasks.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

/// The pause between two checks of [`eventually`] and [`try_eventually`].
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Polls `check` every 20 ms until it yields `Some`, and panics (failing the test) naming `what`
/// after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let polled = try_eventually(timeout, what, || {
        let checked = check();
        async move { Ok(checked.await) }
    })
    .await;
    polled.unwrap_or_else(|e| panic!("{e}"))
}

/// Polls `check` every 20 ms until it yields `Ok(Some)`; an `Err` from `check` ends the wait with
/// that error at once, and after `timeout` the error is "timed out after … waiting for `what`".
pub async fn try_eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await? {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Runs `attempt` until it succeeds, `pause` apart; after `timeout` returns its last error.
pub async fn retry<T, E, F, Fut>(timeout: Duration, pause: Duration, mut attempt: F) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match attempt().await {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => tokio::time::sleep(pause).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn eventually_returns_the_first_value() {
        let mut calls = 0;
        let v = eventually(Duration::from_secs(5), "the third call", || {
            calls += 1;
            std::future::ready((calls == 3).then_some(calls))
        })
        .await;
        assert_eq!(v, 3);
    }

    #[tokio::test]
    async fn try_eventually_stops_at_an_error_and_names_a_timeout() {
        let err = try_eventually(Duration::from_secs(5), "never", || async {
            let gone: Result<Option<()>> = Err(anyhow::anyhow!("gone"));
            gone
        })
        .await
        .unwrap_err();
        assert_eq!(err.to_string(), "gone");
        let err = try_eventually(Duration::ZERO, "the moon", || async { Ok(None::<()>) })
            .await
            .unwrap_err();
        assert!(err.to_string().contains("waiting for the moon"), "{err}");
    }

    #[tokio::test]
    async fn retry_gives_the_last_error() {
        let mut n = 0;
        let err = retry(Duration::ZERO, Duration::ZERO, || {
            n += 1;
            std::future::ready(Err::<(), u32>(n))
        })
        .await;
        assert_eq!(err, Err(1));
    }
}
