//! The reverse proxy on `server.listen`: every request goes to a live data server chosen by the balancer.

mod body;
mod budget;
mod headers;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, Uri, Version};
use axum::response::{IntoResponse, Response};
use discovery::FailureOutcome;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;

use crate::config::ProxyConfig;
use crate::state::AppState;
pub use body::{GuardedBody, RetryableBody};
pub use budget::RetryBudget;
use budget::jittered;
use headers::{X_REQUEST_ID, add_forwarding, request_id, strip_hop_by_hop};

/// The one pooled HTTP/1.1 client all proxied requests share.
pub type UpstreamClient = Client<HttpConnector, RetryableBody>;

/// Proxy settings and the shared client.
#[derive(Debug, Clone)]
pub struct ProxyState {
    app: AppState,
    client: UpstreamClient,
    try_timeout: Duration,
    total_timeout: Duration,
    max_tries: u32,
    budget: Arc<RetryBudget>,
    backoff: Duration,
    eject_on_5xx: bool,
    trusted_proxies: Arc<[ipnet::IpNet]>,
    access_log: bool,
}

impl ProxyState {
    /// A proxy over `app`'s balancer with a fresh keep-alive pool.
    pub fn new(app: AppState, cfg: &ProxyConfig) -> ProxyState {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(cfg.connect_timeout.get()));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(1024)
            .build(connector);
        ProxyState {
            app,
            client,
            try_timeout: cfg.try_timeout.get(),
            total_timeout: cfg.total_timeout.get(),
            max_tries: cfg.max_tries,
            budget: Arc::new(RetryBudget::new(
                cfg.retry_budget_ratio,
                cfg.retry_budget_min_per_sec,
                Instant::now(),
            )),
            backoff: cfg.retry_backoff.get(),
            eject_on_5xx: cfg.eject_on_5xx,
            trusted_proxies: cfg.trusted_proxies.clone().into(),
            access_log: cfg.access_log,
        }
    }
}

/// The proxy router: everything, any method, goes upstream. Serve it with connect info (`SocketAddr`) so that
/// `X-Forwarded-For` can name the client.
pub fn proxy_router(state: ProxyState) -> Router {
    Router::new().fallback(proxy).with_state(state)
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

    fn request_id(&self) -> &str {
        match self {
            ProxyError::NoServers { request_id }
            | ProxyError::Upstream { request_id, .. }
            | ProxyError::Timeout { request_id, .. } => request_id,
        }
    }
}

impl IntoResponse for ProxyError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "error": self.to_string(),
            "status": self.status().as_u16(),
            "request_id": self.request_id(),
        });
        let mut response = (self.status(), axum::Json(body)).into_response();
        if let Ok(v) = HeaderValue::from_str(self.request_id()) {
            response.headers_mut().insert(X_REQUEST_ID.clone(), v);
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

async fn proxy(
    State(p): State<ProxyState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let started = Instant::now();
    let (method, path) = (request.method().clone(), request.uri().path().to_owned());
    let result = forward(&p, peer, request, started).await;
    let elapsed = started.elapsed();
    p.app.metrics().latency.observe_duration(elapsed);
    match result {
        Ok((response, upstream, tries)) => {
            let status = response.status();
            p.app.metrics().requests.with(status.as_str()).inc();
            if p.access_log {
                tracing::info!(target: "api_server::access", %method, %path, status = status.as_u16(), %upstream, tries, ?elapsed);
            }
            response
        }
        Err(err) => {
            let text = err.to_string();
            let response = err.into_response();
            p.app
                .metrics()
                .requests
                .with(response.status().as_str())
                .inc();
            if p.access_log {
                tracing::info!(target: "api_server::access", %method, %path, status = response.status().as_u16(), upstream = "-", ?elapsed, "{text}");
            }
            response
        }
    }
}

/// Tries live servers until one answers, a failure may not be retried, or tries, time or the retry budget run out.
async fn forward(
    p: &ProxyState,
    peer: SocketAddr,
    request: Request,
    started: Instant,
) -> Result<(Response, String, u32), ProxyError> {
    let request_id = request_id(request.headers());
    let rid = || request_id.to_str().unwrap_or_default().to_owned();
    let (mut parts, body) = request.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    let trusted = p.trusted_proxies.iter().any(|net| net.contains(&peer.ip()));
    add_forwarding(&mut parts.headers, peer, &request_id, trusted);
    let path_and_query = parts
        .uri
        .path_and_query()
        .map_or("/", |pq| pq.as_str())
        .to_owned();
    let idempotent = is_idempotent(&parts.method);
    let body = RetryableBody::new(body);
    let deadline = started + p.total_timeout;
    let balancer = p.app.balancer();
    let metrics = p.app.metrics();
    p.budget.deposit(started);
    let mut tried: Vec<String> = Vec::new();
    let mut last_failure = String::new();
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
        let picked = {
            let exclude: Vec<&str> = tried.iter().map(String::as_str).collect();
            balancer.pick(&exclude)
        };
        let Some((backend, in_flight)) = picked else {
            break;
        };
        let id = backend.id().to_owned();
        metrics.upstream_requests.with(&id).inc();
        let uri: Uri = match format!("http://{}{path_and_query}", backend.addr()).parse() {
            Ok(uri) => uri,
            Err(err) => {
                last_failure = format!("bad upstream address {:?}: {err}", backend.addr());
                tried.push(id);
                if may_retry(attempt + 1, !body.touched()) {
                    continue;
                }
                break;
            }
        };
        let mut upstream = hyper::Request::new(body.clone());
        *upstream.method_mut() = parts.method.clone();
        *upstream.uri_mut() = uri;
        *upstream.version_mut() = Version::HTTP_11;
        *upstream.headers_mut() = parts.headers.clone();
        let budget = deadline.saturating_duration_since(Instant::now());
        let limit = p.try_timeout.min(budget);
        match tokio::time::timeout(limit, p.client.request(upstream)).await {
            Ok(Ok(response)) => {
                let status = response.status();
                if status.is_server_error() && p.eject_on_5xx {
                    report_failure(p, &id);
                } else {
                    balancer.report_success(&id);
                }
                // A 502/503 from one server may be its own trouble: another may answer, if sending twice is safe.
                let gateway = matches!(
                    status,
                    StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE
                );
                if gateway && may_retry(attempt + 1, idempotent && !body.touched()) {
                    last_failure = format!("{id} answered {status}");
                    tried.push(id);
                    continue;
                }
                let (mut head, incoming) = response.into_parts();
                strip_hop_by_hop(&mut head.headers);
                head.headers
                    .insert(X_REQUEST_ID.clone(), request_id.clone());
                let body = axum::body::Body::new(GuardedBody::new(incoming, in_flight));
                return Ok((Response::from_parts(head, body), id, attempt + 1));
            }
            Ok(Err(err)) => {
                drop(in_flight);
                let connect = err.is_connect();
                last_failure = format!("{id} ({}): {err}", backend.addr());
                tracing::warn!(request_id = %rid(), upstream = %id, connect, "upstream try failed: {err}");
                report_failure(p, &id);
                tried.push(id);
                // A refused connection never saw the body; other failures may have consumed part of it, and
                // only idempotent requests may be sent twice.
                if !may_retry(attempt + 1, !body.touched() && (connect || idempotent)) {
                    break;
                }
            }
            Err(_) => {
                drop(in_flight);
                report_failure(p, &id);
                return Err(ProxyError::Timeout {
                    request_id: rid(),
                    tries: attempt + 1,
                });
            }
        }
    }
    if tried.is_empty() {
        return Err(ProxyError::NoServers { request_id: rid() });
    }
    Err(ProxyError::Upstream {
        request_id: rid(),
        tries: tried.len() as u32,
        detail: last_failure,
    })
}

fn report_failure(p: &ProxyState, id: &str) {
    if let FailureOutcome::Ejected(d) = p.app.balancer().report_failure(id, Instant::now()) {
        p.app.metrics().ejections.inc();
        tracing::warn!(upstream = %id, "ejected for {d:?}");
    }
}
