//! Graceful shutdown: the signals that start it, a token components drain on, and a bound on
//! how long draining may take.
//!
//! Shutdown is an argument: long-running components take a [`Shutdown`] (or its
//! [`CancellationToken`], or the future from [`Shutdown::wait`]) and stop taking new work when
//! it fires; `main` waits for them within `shutdown.timeout` using [`with_timeout`].

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::duration::HumanDuration;

/// Resolves when the process receives SIGTERM or SIGINT (Ctrl-C).
///
/// The handlers are installed when this is called, not when first polled, so a signal that
/// arrives in between is not lost. Installing a handler replaces the default action (exit) for
/// the rest of the process; a second signal therefore does not kill it, so a binary that wants
/// "press Ctrl-C twice to force" calls this again after the first one.
///
/// Must be called within a Tokio runtime. If a handler cannot be installed (which does not
/// happen on a normal Unix system) the error is logged and only the other signal is awaited.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())
            .inspect_err(|err| tracing::error!("cannot listen for SIGTERM: {err}"))
            .ok();
        let mut int = signal(SignalKind::interrupt())
            .inspect_err(|err| tracing::error!("cannot listen for SIGINT: {err}"))
            .ok();
        async move {
            let term = async {
                match term.as_mut() {
                    Some(stream) => stream.recv().await,
                    None => std::future::pending().await,
                }
            };
            let int = async {
                match int.as_mut() {
                    Some(stream) => stream.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = term => tracing::info!("SIGTERM received, shutting down"),
                _ = int => tracing::info!("SIGINT received, shutting down"),
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            if let Err(err) = tokio::signal::ctrl_c().await {
                tracing::error!("cannot listen for Ctrl-C: {err}");
                std::future::pending::<()>().await;
            }
        }
    }
}

/// A cloneable shutdown switch: one place triggers it, every component awaits it.
///
/// Built on [`CancellationToken`] because it is level-triggered (a component that starts
/// waiting after the trigger still sees it) and has children, so a sub-system can be stopped
/// on its own while still stopping with the whole process.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
}

impl Shutdown {
    /// A switch not yet triggered.
    pub fn new() -> Self {
        Shutdown::default()
    }

    /// Starts the shutdown; every waiter wakes. Triggering twice is harmless.
    pub fn trigger(&self) {
        self.token.cancel();
    }

    /// Whether [`trigger`](Self::trigger) was called (on this switch or a parent).
    pub fn is_triggered(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Resolves once triggered; `'static`, for APIs like axum's `with_graceful_shutdown`.
    pub fn wait(&self) -> impl Future<Output = ()> + Send + 'static {
        self.token.clone().cancelled_owned()
    }

    /// The underlying token, for components that take a [`CancellationToken`].
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// A switch that triggers with this one but can also be triggered alone.
    pub fn child(&self) -> Shutdown {
        Shutdown {
            token: self.token.child_token(),
        }
    }

    /// Spawns a task that triggers this switch on SIGTERM or SIGINT (see [`shutdown_signal`]).
    /// The handlers are installed before this returns.
    pub fn trigger_on_signal(&self) -> tokio::task::JoinHandle<()> {
        let signal = shutdown_signal();
        let token = self.token.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = signal => token.cancel(),
                // Nothing left to do once triggered by other means.
                () = token.cancelled() => {}
            }
        })
    }
}

impl From<CancellationToken> for Shutdown {
    fn from(token: CancellationToken) -> Self {
        Shutdown { token }
    }
}

/// A drain that did not finish in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("did not finish within {limit}")]
pub struct DrainTimeout {
    limit: HumanDuration,
}

impl DrainTimeout {
    /// The limit that was exceeded.
    pub fn limit(&self) -> Duration {
        self.limit.get()
    }
}

/// Runs `fut` for at most `limit`, e.g. to bound draining by `shutdown.timeout`.
pub async fn with_timeout<F: Future>(fut: F, limit: Duration) -> Result<F::Output, DrainTimeout> {
    tokio::time::timeout(limit, fut)
        .await
        .map_err(|_| DrainTimeout {
            limit: HumanDuration(limit),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn with_timeout_bounds_a_slow_drain() {
        let fast = with_timeout(async { 7 }, Duration::from_secs(1)).await;
        assert_eq!(fast, Ok(7));
        let slow = with_timeout(
            tokio::time::sleep(Duration::from_secs(60)),
            Duration::from_secs(5),
        );
        let err = slow.await.unwrap_err();
        assert_eq!(err.limit(), Duration::from_secs(5));
        assert_eq!(err.to_string(), "did not finish within 5s");
    }

    #[tokio::test]
    async fn trigger_wakes_waiters_and_children() {
        let shutdown = Shutdown::new();
        let child = shutdown.child();
        let waiter = tokio::spawn(shutdown.wait());
        let child_waiter = tokio::spawn(child.wait());
        assert!(!child.is_triggered());
        shutdown.trigger();
        waiter.await.unwrap();
        child_waiter.await.unwrap();
        assert!(child.is_triggered());
        // Level-triggered: waiting after the fact returns at once.
        shutdown.wait().await;
    }

    #[tokio::test]
    async fn a_child_stops_alone() {
        let shutdown = Shutdown::new();
        let child = shutdown.child();
        child.trigger();
        assert!(child.is_triggered());
        assert!(!shutdown.is_triggered());
    }

    #[tokio::test]
    async fn sigterm_triggers_shutdown() {
        let shutdown = Shutdown::new();
        let task = shutdown.trigger_on_signal();
        // The handler is installed already, so this signal cannot kill the test process.
        nix::sys::signal::raise(nix::sys::signal::Signal::SIGTERM).unwrap();
        tokio::time::timeout(Duration::from_secs(10), shutdown.wait())
            .await
            .expect("SIGTERM triggers the shutdown");
        task.await.unwrap();
    }
}
