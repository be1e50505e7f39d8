//! The HTTP layers around the whole router (tower-http): a request id, a tracing span per request, and the id
//! echoed in the response.
//!
//! The id is the client's `X-Request-Id` when it sends one (the api-server's proxy always does, so one request
//! carries one id through the proxy's access log and this server's traces), else a new UUID.

use axum::Router;
use axum::http::Request;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;

/// `router` under the request-id and trace layers. Spans and their response events are at DEBUG
/// (`RUST_LOG=data_server=debug,tower_http=debug`): the api-server's access log already has one line per request.
pub(crate) fn http_layers(router: Router) -> Router {
    let trace = TraceLayer::new_for_http()
        .make_span_with(|request: &Request<_>| {
            let id = request
                .headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            tracing::debug_span!(
                "request",
                method = %request.method(),
                uri = %request.uri(),
                request_id = %id,
            )
        })
        .on_response(DefaultOnResponse::new().level(Level::DEBUG));
    // The last layer added runs first: the id is set before the span is made, and copied to the response last.
    router
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(trace)
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
}
