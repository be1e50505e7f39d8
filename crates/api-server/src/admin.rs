//! The admin listener: `/registry`, `/registry/events` (SSE), `/healthz`, `/readyz`, `/metrics` and `/`.
//!
//! Under tower-http layers: a request id (the client's `X-Request-Id`, else a UUID) echoed in the response and put
//! in a tracing span per request (at DEBUG; [`svc::request_layers`], span `admin`, target `api_server::admin`), a bound on the time to answer ([`ADMIN_REQUEST_TIMEOUT`]; an event
//! stream answers at once and then streams, so it is not cut), a bound on request bodies
//! ([`ADMIN_MAX_BODY_BYTES`]; no route reads one), and gzip for clients that ask for it (the dashboard, `/registry`
//! with many servers, `/metrics`; never the event stream, which tower-http leaves alone).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Json;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use discovery::RegistryView;
use futures::{Stream, StreamExt};
use proxy::traffic::WINDOW_SECS;
use tokio::sync::broadcast;
use tokio::time::Instant;
use tower_http::compression::CompressionLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;

use crate::bus::BusView;
use crate::feed::last_whole_second;
use crate::state::AppState;

/// Bound on the time an admin route takes to answer (503 beyond it).
pub const ADMIN_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request body the admin API accepts (413 beyond it, before reading it); no route reads one.
pub const ADMIN_MAX_BODY_BYTES: usize = 64 * 1024;

/// How often the event stream also sends the whole registry, so ages and expiry countdowns stay current on the
/// dashboard between changes.
pub const SNAPSHOT_INTERVAL: Duration = Duration::from_secs(1);

/// `GET /registry`: the fields of ARCHITECTURE.md §4.4, plus the bus state and who answers.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RegistryDocument {
    /// servers, self_preservation, ttl_ms, unauthenticated.
    #[serde(flatten)]
    pub registry: RegistryView,
    /// Bus liveness as measured by the canary.
    pub bus: BusView,
    /// This api-server instance.
    pub instance: String,
    /// The balancing strategy.
    pub strategy: &'static str,
}

/// The admin router, under its HTTP layers (see the module docs).
pub fn admin_router(state: AppState) -> Router {
    let router = Router::new()
        .route("/", get(dashboard))
        .route("/registry", get(registry))
        .route("/registry/events", get(events))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state);
    // The last layer added runs first.
    router
        .layer(CompressionLayer::new())
        .layer(RequestBodyLimitLayer::new(ADMIN_MAX_BODY_BYTES))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            ADMIN_REQUEST_TIMEOUT,
        ))
        // The request id and the per-request span (svc::request_layers), outermost.
        .layer(svc::request_layers(svc::TracedListener::ApiAdmin))
}

fn document(state: &AppState) -> RegistryDocument {
    let now = Instant::now();
    RegistryDocument {
        registry: state.registry().view(now),
        bus: state.bus().view(now),
        instance: state.instance().to_owned(),
        strategy: state.balancer().strategy().as_str(),
    }
}

async fn registry(State(state): State<AppState>) -> Json<RegistryDocument> {
    Json(document(&state))
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<AppState>) -> Response {
    let connections = state.heartbeat_connections();
    let live = state.registry().live_count(Instant::now());
    let ready = connections >= 1 && live >= 1;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({
        "ready": ready,
        "nsqd_connections": connections,
        "live_servers": live,
    });
    (status, Json(body)).into_response()
}

async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let (content_type, text) = state.metrics().scrape(accept);
    ([(header::CONTENT_TYPE, content_type)], text).into_response()
}

async fn dashboard() -> Html<&'static str> {
    Html(include_str!("dashboard.html"))
}

/// Query of `GET /registry/events`.
#[derive(Debug, Default, serde::Deserialize)]
pub struct EventsQuery {
    /// End the stream (with an `end` event) after this many milliseconds; unset: never. Lets a headless browser
    /// with a virtual-time budget, which waits for open requests, finish a page that streams.
    pub max_ms: Option<u64>,
}

/// `GET /registry/events`: a `history` first (the timeline so far and each server's recent seconds, see
/// `feed.rs`), a `snapshot` (`{"kind":"snapshot","registry":<as /registry>,"traffic":<the last whole second>}`)
/// then and every [`SNAPSHOT_INTERVAL`], and one event per change (`join`, `leave`, `expire`, `eject`, `recover`,
/// each `{"kind","id","addr","at_ms","seq"}`). A second that a late tick would skip comes as a `traffic` event
/// (`{"at","servers"}`) before the snapshot, so every second is sent once.
async fn events(
    State(state): State<AppState>,
    Query(query): Query<EventsQuery>,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    // The timeline and the changes after it, taken together (none missed or repeated near the connect).
    let (timeline, rx) = state.feed().subscribe();
    let mut tick = tokio::time::interval(SNAPSHOT_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let end = query
        .max_ms
        .map(|ms| Instant::now() + Duration::from_millis(ms));
    let open = state.metrics().event_streams.inc_guard();
    // First what happened before the page opened: the timeline so far and each server's recent seconds.
    let last_sent = last_whole_second(SystemTime::now());
    let history = state.feed().history(&timeline, state.traffic(), last_sent);
    let history = SseEvent::default().event("history").data(history);
    let changes = futures::stream::unfold(
        Some((state, rx, tick, open, last_sent)),
        move |current| async move {
            let (state, mut rx, mut tick, open, mut last_sent) = current?;
            let deadline = async {
                match end {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let events = tokio::select! {
                // Streams never end on their own; ending them at shutdown lets the listener drain.
                () = state.shutdown().wait() => return None,
                () = deadline => {
                    let end = SseEvent::default().event("end").data("{}");
                    return Some((vec![Ok(end)], None));
                }
                _ = tick.tick() => snapshot_events(&state, &mut last_sent),
                received = rx.recv() => match received {
                    // Only the change: with thousands of servers joining at once, a whole registry per event
                    // would be quadratic. The periodic snapshot (or a fetch of /registry) carries the rest.
                    Ok(change) => vec![SseEvent::default().event(change.kind).data(&*change.json)],
                    // Missed changes are covered by a fresh snapshot.
                    Err(broadcast::error::RecvError::Lagged(_)) => snapshot_events(&state, &mut last_sent),
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
            };
            let events = events.into_iter().map(Ok).collect();
            Some((events, Some((state, rx, tick, open, last_sent))))
        },
    )
    .flat_map(futures::stream::iter);
    let stream = futures::stream::once(async { Ok(history) }).chain(changes);
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// The seconds after `last_sent` up to the last whole one (each second once, however the stream's tick drifts:
/// the earlier ones as `traffic` events, the last in the snapshot), then the snapshot.
fn snapshot_events(state: &AppState, last_sent: &mut u64) -> Vec<SseEvent> {
    let feed = state.feed();
    let now = last_whole_second(SystemTime::now());
    let unsent = unsent_seconds(*last_sent, now);
    let before_last = *unsent.start()..*unsent.end();
    let mut events: Vec<SseEvent> = before_last
        .map(|second| {
            SseEvent::default()
                .event("traffic")
                .data(&*feed.second(state.traffic(), second))
        })
        .collect();
    let traffic = if !unsent.is_empty() {
        *last_sent = now;
        feed.second(state.traffic(), now)
    } else {
        Arc::from("null")
    };
    let registry = feed.registry(now, || {
        serde_json::to_string(&document(state)).unwrap_or_else(|_| "null".to_owned())
    });
    let body = format!(r#"{{"kind":"snapshot","registry":{registry},"traffic":{traffic}}}"#);
    events.push(SseEvent::default().event("snapshot").data(body));
    events
}

/// The seconds a stream has not sent yet, up to the last whole second `now`: none when its tick came twice in one
/// second, several when it came late; at most a window's worth.
fn unsent_seconds(last_sent: u64, now: u64) -> std::ops::RangeInclusive<u64> {
    (last_sent + 1).max(now.saturating_sub(WINDOW_SECS - 1))..=now
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_second_is_sent_once_however_the_tick_drifts() {
        assert_eq!(unsent_seconds(100, 101), 101..=101, "on time");
        assert!(
            unsent_seconds(101, 101).is_empty(),
            "a tick twice in a second"
        );
        assert_eq!(unsent_seconds(101, 103), 102..=103, "a late tick");
        assert_eq!(
            unsent_seconds(0, 10_000),
            10_000 - WINDOW_SECS + 1..=10_000,
            "no more than the window"
        );
    }
}
