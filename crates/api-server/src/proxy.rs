//! The reverse proxy on `server.listen`: every request goes to a live data server chosen by the balancer.

mod body;
mod budget;
mod headers;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::http::header::CONTENT_TYPE;
use axum::http::uri::{PathAndQuery, Scheme};
use axum::http::{HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use discovery::{Backend, FailureOutcome};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use svc::{Counter, CounterVec};
use tokio::time::Instant;

use crate::config::ProxyConfig;
use crate::state::AppState;
pub use body::{ProxyBody, UpstreamBody};
pub use budget::RetryBudget;
use budget::jittered;
use headers::{PeerHeaders, X_REQUEST_ID, add_forwarding, request_id, strip_hop_by_hop};

/// The one pooled HTTP/1.1 client all proxied requests share.
pub type UpstreamClient = Client<HttpConnector, UpstreamBody>;

/// Proxy settings and the shared client; cheap to clone.
#[derive(Debug, Clone)]
pub struct ProxyState {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    app: AppState,
    client: UpstreamClient,
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
    /// A proxy over `app`'s balancer with a fresh keep-alive pool.
    ///
    /// A freshly started api-server knows no server until heartbeats arrive (its channel is new, so it hears only
    /// heartbeats published after it subscribed). For `warmup` from now (the TTL: every live server announces
    /// itself within it), a request that finds no live server waits for the first one, within its own deadline,
    /// instead of being answered 503: a restarted api-server costs clients latency, not errors.
    pub fn new(app: AppState, cfg: &ProxyConfig, warmup: Duration) -> ProxyState {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(cfg.connect_timeout.get()));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(1024)
            .pool_timer(TokioTimer::new())
            .build(connector);
        let statuses = StatusCounters::new(app.metrics().requests.clone());
        ProxyState {
            inner: Arc::new(Inner {
                app,
                client,
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

    /// The service for one client connection from `peer`.
    pub fn service(&self, peer: SocketAddr) -> ProxyService {
        let trusted = self
            .inner
            .trusted_proxies
            .iter()
            .any(|net| net.contains(&peer.ip()));
        ProxyService {
            state: self.clone(),
            peer: Arc::new(PeerHeaders::new(peer, trusted)),
        }
    }
}

/// The proxy as a hyper service: every request, any method, goes upstream.
#[derive(Debug, Clone)]
pub struct ProxyService {
    state: ProxyState,
    peer: Arc<PeerHeaders>,
}

impl hyper::service::Service<Request<Incoming>> for ProxyService {
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, Infallible>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let state = self.state.clone();
        let peer = Arc::clone(&self.peer);
        Box::pin(async move { Ok(proxy(&state.inner, &peer, request).await) })
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

    fn get(&self, status: StatusCode) -> &Counter {
        // StatusCode is always within 100..=999.
        self.by_code[usize::from(status.as_u16()) - 100]
            .get_or_init(|| self.family.with(status.as_str()))
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
    fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoServers { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Upstream { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    fn tries(&self) -> u32 {
        match self {
            ProxyError::NoServers { .. } => 0,
            ProxyError::Upstream { tries, .. } | ProxyError::Timeout { tries, .. } => *tries,
        }
    }

    fn request_id(&self) -> &str {
        match self {
            ProxyError::NoServers { request_id }
            | ProxyError::Upstream { request_id, .. }
            | ProxyError::Timeout { request_id, .. } => request_id,
        }
    }
}

impl ProxyError {
    fn into_response(self) -> Response<ProxyBody> {
        let status = self.status();
        let body = serde_json::json!({
            "error": self.to_string(),
            "status": status.as_u16(),
            "request_id": self.request_id(),
        });
        let mut response = Response::new(ProxyBody::full(body.to_string()));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Ok(v) = HeaderValue::from_str(self.request_id()) {
            headers.insert(X_REQUEST_ID.clone(), v);
        }
        response
    }
}

fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

async fn proxy(p: &Inner, peer: &PeerHeaders, request: Request<Incoming>) -> Response<ProxyBody> {
    let started = Instant::now();
    // Only kept for the access log (a `Uri` clone shares its bytes).
    let logged = p
        .access_log
        .then(|| (request.method().clone(), request.uri().clone()));
    let result = forward(p, peer, request, started).await;
    let elapsed = started.elapsed();
    p.app.metrics().latency.observe_duration(elapsed);
    let (response, upstream, tries, failure) = match result {
        Ok((response, upstream, tries)) => (response, Some(upstream), tries, None),
        Err(err) => {
            let (tries, text) = (err.tries(), err.to_string());
            (err.into_response(), None, tries, Some(text))
        }
    };
    let status = response.status();
    p.statuses.get(status).inc();
    if let Some((method, uri)) = logged {
        let upstream = upstream.as_ref().map_or("-", |b| b.id());
        let path = uri.path();
        match failure {
            None => {
                tracing::info!(target: "api_server::access", %method, path, status = status.as_u16(), upstream, tries, ?elapsed)
            }
            Some(text) => {
                tracing::info!(target: "api_server::access", %method, path, status = status.as_u16(), upstream, tries, ?elapsed, "{text}")
            }
        }
    }
    response
}

/// Tries live servers until one answers, a failure may not be retried, or tries, time or the retry budget run out.
async fn forward(
    p: &Inner,
    peer: &PeerHeaders,
    request: Request<Incoming>,
    started: Instant,
) -> Result<(Response<ProxyBody>, Arc<Backend>, u32), ProxyError> {
    let request_id = request_id(request.headers());
    let rid = || request_id.to_str().unwrap_or_default().to_owned();
    let (mut parts, body) = request.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    add_forwarding(&mut parts.headers, peer, &request_id);
    let path_and_query = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let idempotent = is_idempotent(&parts.method);
    let body = UpstreamBody::new(body);
    let deadline = started + p.total_timeout;
    let balancer = p.app.balancer();
    let metrics = p.app.metrics();
    p.budget.deposit(started);
    if started < p.warm_until {
        wait_for_a_server(p, deadline.min(p.warm_until)).await;
    }
    let mut tried: Vec<Arc<Backend>> = Vec::new();
    let mut last_failure = String::new();
    // Whether the last try failed by timing out (then the answer is 504, not 502).
    let mut timed_out = false;
    // Decides whether the failed try may be followed by another, taking a token from the budget if so.
    let may_retry = |tries: u32, retryable: bool| {
        retryable
            && tries < p.max_tries
            && Instant::now() < deadline
            && p.budget.withdraw(Instant::now())
    };
    for attempt in 0..p.max_tries {
        if attempt > 0 {
            metrics.retries.inc();
            let pause = jittered(p.backoff).min(deadline.saturating_duration_since(Instant::now()));
            tokio::time::sleep(pause).await;
        }
        let picked = if tried.is_empty() {
            balancer.pick(&[])
        } else {
            let exclude: Vec<&str> = tried.iter().map(|b| b.id()).collect();
            balancer.pick(&exclude)
        };
        let Some((backend, in_flight)) = picked else {
            break;
        };
        metrics.upstream_requests.with(backend.id()).inc();
        let uri = match upstream_uri(backend.addr(), &path_and_query) {
            Ok(uri) => uri,
            Err(err) => {
                last_failure = format!("bad upstream address {:?}: {err}", backend.addr());
                tried.push(backend);
                if may_retry(attempt + 1, !body.touched()) {
                    continue;
                }
                break;
            }
        };
        let mut upstream = Request::new(body.clone());
        *upstream.method_mut() = parts.method.clone();
        *upstream.uri_mut() = uri;
        *upstream.version_mut() = Version::HTTP_11;
        *upstream.headers_mut() = parts.headers.clone();
        let limit = p
            .try_timeout
            .min(deadline.saturating_duration_since(Instant::now()));
        let id = backend.id();
        match tokio::time::timeout(limit, p.client.request(upstream)).await {
            Ok(Ok(response)) => {
                let status = response.status();
                if status.is_server_error() && p.eject_on_5xx {
                    report_failure(p, id);
                } else {
                    balancer.report_success(id);
                }
                // A 502/503 from one server may be its own trouble: another may answer, if sending twice is safe.
                let gateway = matches!(
                    status,
                    StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE
                );
                if gateway && may_retry(attempt + 1, idempotent && !body.touched()) {
                    last_failure = format!("{id} answered {status}");
                    timed_out = false;
                    tried.push(backend);
                    continue;
                }
                let (mut head, incoming) = response.into_parts();
                strip_hop_by_hop(&mut head.headers);
                head.headers
                    .insert(X_REQUEST_ID.clone(), request_id.clone());
                let body = ProxyBody::Upstream {
                    inner: incoming,
                    in_flight,
                };
                return Ok((Response::from_parts(head, body), backend, attempt + 1));
            }
            Ok(Err(err)) => {
                drop(in_flight);
                timed_out = false;
                let connect = err.is_connect();
                last_failure = format!("{id} ({}): {err}", backend.addr());
                tracing::warn!(request_id = %rid(), upstream = %id, connect, "upstream try failed: {err}");
                report_failure(p, id);
                tried.push(backend);
                // A refused connection never saw the body; other failures may have consumed part of it, and
                // only idempotent requests may be sent twice.
                if !may_retry(attempt + 1, !body.touched() && (connect || idempotent)) {
                    break;
                }
            }
            Err(_) => {
                drop(in_flight);
                report_failure(p, id);
                tracing::warn!(request_id = %rid(), upstream = %id, "upstream try timed out after {limit:?}");
                // A server that hangs (alive TCP, no answer) may have started the work: only an idempotent
                // request whose body nobody read goes to another server, within the overall deadline.
                if !may_retry(attempt + 1, idempotent && !body.touched()) {
                    return Err(ProxyError::Timeout {
                        request_id: rid(),
                        tries: attempt + 1,
                    });
                }
                last_failure = format!("{id} ({}): timed out after {limit:?}", backend.addr());
                timed_out = true;
                tried.push(backend);
                continue;
            }
        }
    }
    if tried.is_empty() {
        return Err(ProxyError::NoServers { request_id: rid() });
    }
    if timed_out {
        return Err(ProxyError::Timeout {
            request_id: rid(),
            tries: tried.len() as u32,
        });
    }
    Err(ProxyError::Upstream {
        request_id: rid(),
        tries: tried.len() as u32,
        detail: last_failure,
    })
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

/// `http://addr/path?query`, sharing the path's bytes.
fn upstream_uri(addr: &str, path_and_query: &PathAndQuery) -> Result<Uri, axum::http::Error> {
    Uri::builder()
        .scheme(Scheme::HTTP)
        .authority(addr)
        .path_and_query(path_and_query.clone())
        .build()
}

fn report_failure(p: &Inner, id: &str) {
    if let FailureOutcome::Ejected(d) = p.app.balancer().report_failure(id, Instant::now()) {
        p.app.metrics().ejections.inc();
        tracing::warn!(upstream = %id, "ejected for {d:?}");
    }
}
