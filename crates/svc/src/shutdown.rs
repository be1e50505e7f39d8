//! Graceful shutdown: the signals that start it (and a second one that cuts it short), a token
//! components drain on, and a bound on how long draining may take.
//!
//! Shutdown is an argument: long-running components take a [`Shutdown`] (or its
//! [`CancellationToken`], or the future from [`Shutdown::wait`]) and stop taking new work when
//! it fires; `main` waits for them within `shutdown.timeout` using [`with_timeout`].

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::duration::HumanDuration;

/// Exit status of a process whose graceful shutdown was cut short by a second SIGTERM/SIGINT
/// (see [`Shutdown::trigger_on_signal`]): 130, the shell's 128 + SIGINT, whichever signal it was,
/// so that a supervisor can tell "forced" from a clean stop (0) or a failure (1, 2).
pub const FORCED_EXIT_CODE: i32 = 130;

/// The process's SIGTERM and SIGINT handlers, installed when built so that no signal arriving
/// later is lost. Installing a handler replaces the default action (exit) for the rest of the
/// process: from then on only this code decides what a signal does.
struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    /// Must be called within a Tokio runtime. If a handler cannot be installed (which does not
    /// happen on a normal Unix system) the error is logged and only the other signal is awaited.
    fn install() -> Signals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let term = signal(SignalKind::terminate())
                .inspect_err(|err| tracing::error!("cannot listen for SIGTERM: {err}"))
                .ok();
            let int = signal(SignalKind::interrupt())
                .inspect_err(|err| tracing::error!("cannot listen for SIGINT: {err}"))
                .ok();
            Signals { term, int }
        }
        #[cfg(not(unix))]
        {
            Signals {}
        }
    }

    /// The name of the next signal received.
    async fn next(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            async fn recv(stream: Option<&mut tokio::signal::unix::Signal>) {
                match stream {
                    Some(stream) => {
                        stream.recv().await;
                    }
                    None => std::future::pending().await,
                }
            }
            tokio::select! {
                () = recv(self.term.as_mut()) => "SIGTERM",
                () = recv(self.int.as_mut()) => "SIGINT",
            }
        }
        #[cfg(not(unix))]
        {
            if let Err(err) = tokio::signal::ctrl_c().await {
                tracing::error!("cannot listen for Ctrl-C: {err}");
                std::future::pending::<()>().await;
            }
            "Ctrl-C"
        }
    }
}

/// Resolves when the process receives SIGTERM or SIGINT (Ctrl-C), logging which.
///
/// The handlers are installed when this is called, not when first polled, so a signal that
/// arrives in between is not lost. Installing a handler replaces the default action (exit) for
/// the rest of the process, so a later signal does nothing unless someone listens for it:
/// binaries use [`Shutdown::trigger_on_signal`], which also honours a second signal.
///
/// Must be called within a Tokio runtime.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    let mut signals = Signals::install();
    async move {
        let name = signals.next().await;
        tracing::info!("{name} received, shutting down");
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

    /// Spawns the process's signal handling, the same in every binary: the first SIGTERM or
    /// SIGINT triggers this switch (the graceful drain); a second one, e.g. an impatient operator
    /// pressing Ctrl-C again, exits the process at once with [`FORCED_EXIT_CODE`] instead of
    /// waiting for the drain. Each logs one line:
    ///
    /// - `SIGTERM received, shutting down gracefully (send another to force)`
    /// - `SIGINT received again, exiting at once without finishing the graceful shutdown`
    ///
    /// The handlers are installed before this returns, so a quick second signal is not missed.
    /// The task runs until the process ends; keep it running through the drain (aborting it
    /// would leave a second signal ignored).
    pub fn trigger_on_signal(&self) -> tokio::task::JoinHandle<()> {
        self.on_signals(|| std::process::exit(FORCED_EXIT_CODE))
    }

    /// [`trigger_on_signal`](Self::trigger_on_signal) with the forced exit as an argument, so
    /// tests can observe it without ending the test process.
    fn on_signals(&self, force: impl FnOnce() + Send + 'static) -> tokio::task::JoinHandle<()> {
        let mut signals = Signals::install();
        let shutdown = self.clone();
        tokio::spawn(async move {
            let name = signals.next().await;
            tracing::info!("{name} received, shutting down gracefully (send another to force)");
            shutdown.trigger();
            let name = signals.next().await;
            // The fmt subscriber writes stderr synchronously, so this line is out before the exit.
            tracing::warn!(
                "{name} received again, exiting at once without finishing the graceful shutdown"
            );
            force();
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

    // The only test that raises signals: handlers are process-wide, so a second such test
    // running in parallel would see this one's signals as its own.
    #[tokio::test]
    async fn a_first_signal_drains_and_a_second_forces() {
        let shutdown = Shutdown::new();
        let (forced_tx, forced) = tokio::sync::oneshot::channel();
        let task = shutdown.on_signals(move || {
            let _ = forced_tx.send(());
        });
        // The handlers are installed already, so these signals cannot kill the test process.
        nix::sys::signal::raise(nix::sys::signal::Signal::SIGTERM).unwrap();
        tokio::time::timeout(Duration::from_secs(10), shutdown.wait())
            .await
            .expect("SIGTERM triggers the shutdown");
        assert!(!task.is_finished(), "still listening for a second signal");
        nix::sys::signal::raise(nix::sys::signal::Signal::SIGINT).unwrap();
        tokio::time::timeout(Duration::from_secs(10), forced)
            .await
            .expect("a second signal forces the exit")
            .unwrap();
        task.await.unwrap();
    }
}
