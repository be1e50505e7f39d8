//! The HTTP application: shared state, the router, and the identity, health and metrics
//! endpoints. The data endpoints live in `data.rs`.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post, put};
use axum::{Json, Router};
use discovery::Announcer;
use serde_json::json;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;

use crate::data;
use crate::metrics::Metrics;
use crate::store::{Store, StoreLimits};
use crate::ws;

/// Largest value `PUT /kv/{key}` stores (the streaming endpoints have no limit).
pub const MAX_KV_VALUE_BYTES: usize = 32 * 1024 * 1024;
/// Bound on the answer of the routes that do a bounded amount of work (all but the streaming ones): longer than
/// the longest `/slow` ([`MAX_SLOW_MS`](crate::MAX_SLOW_MS)); beyond it 503.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(65);

/// What every handler shares; cheap to clone.
#[derive(Clone, Debug)]
pub struct AppState {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    id: String,
    addr: String,
    announcer: Option<Announcer>,
    metrics: Metrics,
    kv: Store,
    ready: AtomicBool,
    /// `server.added_latency` in nanoseconds.
    added_latency_ns: AtomicU64,
}

impl AppState {
    /// State for the server known as `id` at `addr`, announced by `announcer` when given; the key-value store
    /// has the default limits (`data.max_keys`, `data.max_bytes`).
    pub fn new(
        id: impl Into<String>,
        addr: impl Into<String>,
        announcer: Option<Announcer>,
    ) -> Self {
        Self::with_limits(id, addr, announcer, StoreLimits::default())
    }

    /// Like [`AppState::new`], with the key-value store bounded by `limits`.
    pub fn with_limits(
        id: impl Into<String>,
        addr: impl Into<String>,
        announcer: Option<Announcer>,
        limits: StoreLimits,
    ) -> Self {
        let metrics = Metrics::new(announcer.clone());
        AppState {
            inner: Arc::new(Inner {
                id: id.into(),
                addr: addr.into(),
                announcer,
                metrics,
                kv: Store::new(limits),
                ready: AtomicBool::new(true),
                added_latency_ns: AtomicU64::new(0),
            }),
        }
    }

    /// The server's identity.
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// The announced address.
    pub fn addr(&self) -> &str {
        &self.inner.addr
    }

    /// Whether the server is ready for traffic: the announcer's health check.
    pub fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::Relaxed)
    }

    /// Marks the server ready or not (not ready stops the heartbeats).
    pub fn set_ready(&self, ready: bool) {
        self.inner.ready.store(ready, Ordering::Relaxed);
    }

    /// Waits `latency` before answering each request but `/healthz` and `/metrics` (`server.added_latency`).
    pub fn set_added_latency(&self, latency: Duration) {
        let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.inner.added_latency_ns.store(nanos, Ordering::Relaxed);
    }

    /// The wait [`set_added_latency`](AppState::set_added_latency) set.
    pub fn added_latency(&self) -> Duration {
        Duration::from_nanos(self.inner.added_latency_ns.load(Ordering::Relaxed))
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Keys and bytes the key-value store holds now.
    pub fn store_usage(&self) -> (usize, u64) {
        self.inner.kv.usage()
    }

    pub(crate) fn kv(&self) -> &Store {
        &self.inner.kv
    }
}

/// The router: `/whoami`, `/healthz`, `/metrics` and the data endpoints, under the request-id and
/// trace layers of [`svc::request_layers`] (the id is the api-server proxy's, so one request carries
/// one id through the proxy's access log and this server's traces).
///
/// Routes that answer after a bounded amount of work get [`REQUEST_TIMEOUT`]; the streaming ones (`/echo`,
/// `/upload`, `/bytes/{n}`, the WebSockets) and `PUT /kv` do not, since a large body at a slow client's pace may
/// take longer and still be moving (the api-server's proxy bounds its pauses instead, and a 503 for a slow
/// upload would be blamed on this server). `PUT /kv` is bounded by its body limit.
pub fn app(state: AppState) -> Router {
    // 413 from the Content-Length before any of the body is read; the extractor's own limit for chunked bodies.
    let kv_body_limits = |route: axum::routing::MethodRouter<AppState>| {
        route
            .layer::<_, Infallible>(RequestBodyLimitLayer::new(MAX_KV_VALUE_BYTES))
            .layer(DefaultBodyLimit::max(MAX_KV_VALUE_BYTES))
    };
    let bounded = Router::new()
        .route("/whoami", get(whoami))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route(
            "/kv/{key}",
            kv_body_limits(get(data::kv_get).delete(data::kv_delete)),
        )
        .route("/slow", any(data::slow))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            REQUEST_TIMEOUT,
        ));
    let streaming = Router::new()
        .route("/kv/{key}", kv_body_limits(put(data::kv_put)))
        .route("/echo", post(data::echo).put(data::echo))
        .route("/upload", put(data::upload).post(data::upload))
        .route("/bytes/{n}", get(data::bytes))
        .route("/ws", get(ws::echo))
        .route("/ws/ticks", get(ws::ticks));
    let router = bounded
        .merge(streaming)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            count_requests,
        ))
        .with_state(state);
    router.layer(svc::request_layers(svc::TracedListener::DataServer))
}

async fn count_requests(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_owned();
    let metrics = state.metrics();
    metrics.requests.with(&route).inc();
    let _in_flight = metrics.in_flight.inc_guard();
    let started = std::time::Instant::now();
    let added = state.added_latency();
    // Operations endpoints stay prompt: a slow server is still observable and healthy.
    if !added.is_zero() && route != "/healthz" && route != "/metrics" {
        tokio::time::sleep(added).await;
    }
    let response = next.run(request).await;
    metrics
        .duration
        .with_values(&[&route, response.status().as_str()])
        .observe_duration(started.elapsed());
    response
}

async fn whoami(State(state): State<AppState>) -> Json<serde_json::Value> {
    let epoch = state.inner.announcer.as_ref().map(Announcer::epoch);
    Json(json!({
        "id": state.id(),
        "addr": state.addr(),
        "epoch": epoch,
        "version": svc::VERSION,
    }))
}

async fn healthz(State(state): State<AppState>) -> Json<serde_json::Value> {
    // Answers while the process serves, whatever the bus does: being announced is reported,
    // not required.
    let stats = state.inner.announcer.as_ref().map(Announcer::stats);
    Json(json!({
        "status": "ok",
        "id": state.id(),
        "ready": state.is_ready(),
        "nsqd_reachable": stats.as_ref().map(|s| s.reachable),
        "heartbeats_sent": stats.as_ref().map(|s| s.heartbeats_sent),
        "leaving": stats.as_ref().map(|s| s.left),
    }))
}

async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> impl IntoResponse {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let (content_type, text) = state.metrics().scrape(accept);
    (StatusCode::OK, [(header::CONTENT_TYPE, content_type)], text)
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use bytes::Bytes;
    use tower::ServiceExt;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_kv_put_whose_body_comes_slower_than_the_request_timeout_is_stored() {
        let app = app(AppState::new("t", "127.0.0.1:1", None));
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(1);
        let body = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|chunk| (chunk, rx))
        });
        let request = Request::put("/kv/slow")
            .body(Body::from_stream(body))
            .unwrap();
        let answer = tokio::spawn(app.clone().oneshot(request));
        tx.send(Ok(Bytes::from_static(b"half,"))).await.unwrap();
        // Virtual time: the client pauses longer than any bounded route may take.
        tokio::time::sleep(REQUEST_TIMEOUT + Duration::from_secs(5)).await;
        tx.send(Ok(Bytes::from_static(b"rest"))).await.unwrap();
        drop(tx);
        assert_eq!(answer.await.unwrap().unwrap().status(), StatusCode::CREATED);
        let get = Request::get("/kv/slow").body(Body::empty()).unwrap();
        let got = app.oneshot(get).await.unwrap();
        assert_eq!(got.status(), StatusCode::OK);
        let value = axum::body::to_bytes(got.into_body(), 100).await.unwrap();
        assert_eq!(&value[..], b"half,rest");
    }
}
