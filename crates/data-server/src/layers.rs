//! The HTTP layers around the whole router (tower-http): a request id, a tracing span per request, and the id
//! echoed in the response.
//!
//! The id is the client's `X-Request-Id` when it sends one (the api-server's proxy always does, so one request
//! carries one id through the proxy's access log and this server's traces), else a new UUID.

use axum::Router;
use axum::http::Request;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnFailure, DefaultOnResponse, TraceLayer};
use tracing::Level;

/// `router` under the request-id and trace layers. Spans and their response and failure events are at DEBUG
/// (`RUST_LOG=data_server=debug,tower_http=debug`): the api-server's access log already has one line per request,
/// and a 5xx is an answer here (507 for a full store, 503 from `/readyz`), so a client filling the store must not
/// flood the log with tower-http's default ERROR per failure.
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
        .on_response(DefaultOnResponse::new().level(Level::DEBUG))
        .on_failure(DefaultOnFailure::new().level(Level::DEBUG));
    // The last layer added runs first: the id is set before the span is made, and copied to the response last.
    router
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(trace)
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use axum::body::Body;
    use axum::http::StatusCode;
    use axum::routing::get;
    use tower::ServiceExt;

    use super::*;

    /// Log lines written, shared with the subscriber.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_5xx_answer_logs_nothing_at_info() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(Level::INFO)
            .with_writer(move || writer.clone())
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let app = http_layers(
            Router::new().route("/full", get(|| async { StatusCode::INSUFFICIENT_STORAGE })),
        );
        for _ in 0..3 {
            let request = Request::get("/full").body(Body::empty()).unwrap();
            let response = app.clone().oneshot(request).await.unwrap();
            assert_eq!(response.status(), StatusCode::INSUFFICIENT_STORAGE);
        }
        let logged = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        assert_eq!(logged, "", "507s are not logged at INFO or above");
    }
}
