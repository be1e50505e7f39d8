//! What every worker thread of the proxy shares: its settings, metrics and balancer, the retry budget, the
//! counters by status; and the few steps that consult them on the way of a request.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use discovery::{Balancer, FailureOutcome, Registry};
use http::Method;
use svc::{Counter, CounterVec};
use tokio::time::Instant;

use crate::budget::RetryBudget;
use crate::headers::ViaToken;
use crate::tunnel::TunnelEnd;
use crate::{ProxyMetrics, ProxySettings};

/// The proxy: its settings over a balancer, and the metrics it counts into; cheap to clone. [`serve`](crate::serve)
/// runs it on a listener.
#[derive(Debug, Clone)]
pub struct Proxy {
    pub(crate) inner: Arc<Inner>,
}

/// The settings as the hot path reads them, with the state all workers share.
#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) balancer: Balancer,
    pub(crate) metrics: ProxyMetrics,
    pub(crate) connect_timeout: Duration,
    pub(crate) try_timeout: Duration,
    pub(crate) total_timeout: Duration,
    pub(crate) max_body_bytes: Option<u64>,
    pub(crate) tunnel_idle_timeout: Duration,
    pub(crate) tunnel_io_uring: bool,
    pub(crate) via: ViaToken,
    pub(crate) max_tries: u32,
    pub(crate) budget: RetryBudget,
    pub(crate) backoff: Duration,
    pub(crate) eject_on_5xx: bool,
    pub(crate) trusted_proxies: Vec<ipnet::IpNet>,
    pub(crate) access_log: bool,
    pub(crate) statuses: StatusCounters,
    /// Until then the registry may still be filling (see [`Proxy::new`]).
    pub(crate) warm_until: Instant,
}

impl Proxy {
    /// A proxy to the servers `balancer` picks, counting into `metrics`.
    ///
    /// A freshly started api-server knows no server until heartbeats arrive (its channel is new, so it hears only
    /// heartbeats published after it subscribed). For `settings.warmup` from now (the TTL: every live server
    /// announces itself within it), a request that finds no live server waits for the first one, within its own
    /// deadline, instead of being answered 503: a restarted api-server costs clients latency, not errors.
    pub fn new(settings: ProxySettings, balancer: Balancer, metrics: ProxyMetrics) -> Proxy {
        let statuses = StatusCounters::new(metrics.requests.clone());
        for end in TunnelEnd::ALL {
            metrics.tunnels_closed.with(end.as_str());
        }
        for reason in ["underscore", "untrusted"] {
            metrics.headers_dropped.with(reason);
        }
        let now = Instant::now();
        Proxy {
            inner: Arc::new(Inner {
                balancer,
                metrics,
                connect_timeout: settings.connect_timeout,
                try_timeout: settings.try_timeout,
                total_timeout: settings.total_timeout,
                max_body_bytes: settings.max_body_bytes,
                tunnel_idle_timeout: settings.tunnel_idle_timeout,
                tunnel_io_uring: settings.tunnel_io_uring,
                via: ViaToken::generate(),
                max_tries: settings.max_tries,
                budget: RetryBudget::new(
                    settings.retry_budget_ratio,
                    settings.retry_budget_min_per_sec,
                    now,
                ),
                backoff: settings.retry_backoff,
                eject_on_5xx: settings.eject_on_5xx,
                trusted_proxies: settings.trusted_proxies,
                access_log: settings.access_log,
                statuses,
                warm_until: now + settings.warmup,
            }),
        }
    }
}

impl Inner {
    pub(crate) fn registry(&self) -> &Registry {
        self.balancer.registry()
    }
}

/// `api_proxy_requests_total` by status, each label looked up once rather than on every request.
#[derive(Debug)]
pub(crate) struct StatusCounters {
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

    pub(crate) fn get(&self, status: u16) -> &Counter {
        let i = usize::from(status.clamp(100, 999)) - 100;
        self.by_code[i].get_or_init(|| self.family.with(&(i + 100).to_string()))
    }
}

pub(crate) fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// During warm-up: returns once a server is live, or at `until`.
pub(crate) async fn wait_for_a_server(p: &Inner, until: Instant) {
    let registry = p.registry();
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

/// Reports a failure of server `id` to passive health, counting an ejection if it caused one.
pub(crate) fn report_failure(p: &Inner, id: &str) {
    if let FailureOutcome::Ejected(d) = p.balancer.report_failure(id, Instant::now()) {
        p.metrics.ejections.inc();
        tracing::warn!(upstream = %id, "ejected for {d:?}");
    }
}
