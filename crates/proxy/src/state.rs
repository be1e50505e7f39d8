//! The reverse proxy on `server.listen`: every request goes to a live data server chosen by the balancer.
//!
//! Connections are served by worker threads, one per core by default (`server.workers`), each with its own
//! single-threaded runtime and its own pool of upstream connections, like nginx's worker processes: a request is
//! read, forwarded, answered and its upstream connection pooled again on one thread, with no lock and no hand-off
//! between threads. A connection is served in [`conn`], its tries upstream in [`tries`], the bytes on the wire in
//! [`relay`], and the framing rules in [`h1`].

mod budget;
mod conn;
pub mod h1;
mod headers;
mod pool;
mod relay;
mod tries;
mod workers;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::http::Method;
use discovery::FailureOutcome;
use svc::{Counter, CounterVec};
use tokio::time::Instant;

use crate::config::ProxyConfig;
use crate::state::AppState;
pub use budget::RetryBudget;
use budget::jittered;
pub(crate) use workers::serve_proxy;

/// Proxy settings over the application state; cheap to clone.
#[derive(Debug, Clone)]
pub struct ProxyState {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    app: AppState,
    connect_timeout: Duration,
    try_timeout: Duration,
    total_timeout: Duration,
    max_tries: u32,
    budget: RetryBudget,
    backoff: Duration,
    eject_on_5xx: bool,
    trusted_proxies: Vec<ipnet::IpNet>,
    access_log: bool,
    statuses: StatusCounters,
    /// Until then the registry may still be filling (see [`ProxyState::new`]).
    warm_until: Instant,
}

impl ProxyState {
    /// A proxy over `app`'s balancer.
    ///
    /// A freshly started api-server knows no server until heartbeats arrive (its channel is new, so it hears only
    /// heartbeats published after it subscribed). For `warmup` from now (the TTL: every live server announces
    /// itself within it), a request that finds no live server waits for the first one, within its own deadline,
    /// instead of being answered 503: a restarted api-server costs clients latency, not errors.
    pub fn new(app: AppState, cfg: &ProxyConfig, warmup: Duration) -> ProxyState {
        let statuses = StatusCounters::new(app.metrics().requests.clone());
        ProxyState {
            inner: Arc::new(Inner {
                app,
                connect_timeout: cfg.connect_timeout.get(),
                try_timeout: cfg.try_timeout.get(),
                total_timeout: cfg.total_timeout.get(),
                max_tries: cfg.max_tries,
                budget: RetryBudget::new(
                    cfg.retry_budget_ratio,
                    cfg.retry_budget_min_per_sec,
                    Instant::now(),
                ),
                backoff: cfg.retry_backoff.get(),
                eject_on_5xx: cfg.eject_on_5xx,
                trusted_proxies: cfg.trusted_proxies.clone(),
                access_log: cfg.access_log,
                statuses,
                warm_until: Instant::now() + warmup,
            }),
        }
    }
}

/// `api_proxy_requests_total` by status, each label looked up once rather than on every request.
#[derive(Debug)]
struct StatusCounters {
    family: CounterVec,
    by_code: Box<[OnceLock<Counter>]>,
}

impl StatusCounters {
    fn new(family: CounterVec) -> StatusCounters {
        StatusCounters {
            family,
            by_code: (100..1000).map(|_| OnceLock::new()).collect(),
        }
    }

    fn get(&self, status: u16) -> &Counter {
        let i = usize::from(status.clamp(100, 999)) - 100;
        self.by_code[i].get_or_init(|| self.family.with(&(i + 100).to_string()))
    }
}

/// Why a request got no upstream response.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No live data server.
    #[error("no live data server")]
    NoServers {
        /// The request id.
        request_id: String,
    },
    /// Every try failed.
    #[error("upstream failed after {tries} tries: {detail}")]
    Upstream {
        /// The request id.
        request_id: String,
        /// Tries made.
        tries: u32,
        /// The last failure.
        detail: String,
    },
    /// The upstream did not answer in time.
    #[error("upstream timed out after {tries} tries")]
    Timeout {
        /// The request id.
        request_id: String,
        /// Tries made.
        tries: u32,
    },
}

impl ProxyError {
    /// Status code and reason phrase of the answer.
    fn status(&self) -> (u16, &'static str) {
        match self {
            ProxyError::NoServers { .. } => (503, "Service Unavailable"),
            ProxyError::Upstream { .. } => (502, "Bad Gateway"),
            ProxyError::Timeout { .. } => (504, "Gateway Timeout"),
        }
    }

    fn tries(&self) -> u32 {
        match self {
            ProxyError::NoServers { .. } => 0,
            ProxyError::Upstream { tries, .. } | ProxyError::Timeout { tries, .. } => *tries,
        }
    }
}

fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// During warm-up: returns once a server is live, or at `until`.
async fn wait_for_a_server(p: &Inner, until: Instant) {
    let registry = p.app.registry();
    // Subscribed before looking, so that a join between the two is not missed.
    let mut events = registry.subscribe();
    let limit = tokio::time::sleep_until(until);
    tokio::pin!(limit);
    while registry.live_count(Instant::now()) == 0 {
        tokio::select! {
            received = events.recv() => {
                if matches!(received, Err(tokio::sync::broadcast::error::RecvError::Closed)) {
                    return;
                }
            }
            () = &mut limit => return,
        }
    }
}

fn report_failure(p: &Inner, id: &str) {
    if let FailureOutcome::Ejected(d) = p.app.balancer().report_failure(id, Instant::now()) {
        p.app.metrics().ejections.inc();
        tracing::warn!(upstream = %id, "ejected for {d:?}");
    }
}
