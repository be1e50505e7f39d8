//! The health check that gates announcing: a server that cannot serve must not invite traffic.

use std::future::Future;

/// Decides, before every heartbeat, whether the service is fit to receive traffic.
///
/// Any `Fn() -> bool` closure is a `Health`; wrap an async check in [`AsyncHealth`].
pub trait Health: Send + Sync + 'static {
    /// `true` to announce now, `false` to skip this heartbeat.
    fn check(&self) -> impl Future<Output = bool> + Send;
}

impl<F> Health for F
where
    F: Fn() -> bool + Send + Sync + 'static,
{
    fn check(&self) -> impl Future<Output = bool> + Send {
        std::future::ready(self())
    }
}

/// An asynchronous health check, e.g. a probe of the service's own health URL.
///
/// ```
/// use discovery::AsyncHealth;
/// let health = AsyncHealth(|| async { true });
/// # let _ = health;
/// ```
#[derive(Debug, Clone)]
pub struct AsyncHealth<F>(pub F);

impl<F, Fut> Health for AsyncHealth<F>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send,
{
    fn check(&self) -> impl Future<Output = bool> + Send {
        (self.0)()
    }
}

/// A health check that always passes, for services with nothing to check.
#[derive(Debug, Clone, Copy, Default)]
pub struct AlwaysHealthy;

impl Health for AlwaysHealthy {
    fn check(&self) -> impl Future<Output = bool> + Send {
        std::future::ready(true)
    }
}
