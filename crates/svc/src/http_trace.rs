//! The tracing and request-id layers both HTTP listeners put around their routers (the
//! data-server's listener and the api-server's admin listener), written once.
//!
//! [`request_layers`] gives one tower layer that, from the outside in:
//! 1. sets `X-Request-Id` on the request: the client's when it sends one (the api-server's proxy
//!    always does, so one request carries one id through the proxy's access log and the data
//!    server's traces), else a new UUID;
//! 2. opens a span per request at DEBUG with the fields `method`, `uri` and `request_id`, and
//!    logs tower-http's response event (`latency`, `status`) and failure event inside it, also at
//!    DEBUG;
//! 3. copies the id to the response.
//!
//! Apply it last (outermost) so that the id exists before the span is made and every inner
//! layer's answer (a timeout's 503, a body limit's 413) is traced and tagged.
//!
//! Why DEBUG for everything: the api-server's access log already has one line per proxied
//! request, and a 5xx here is an answer, not a fault of the process (the data-server's 507 for a
//! full store, a `/readyz` 503, a timeout's 503); tower-http's default would log each at ERROR,
//! so a client filling a store would flood the log.
//!
//! Span names and targets did not change when this moved here from the two binaries: the span
//! keeps its old name and, through tracing's `target:`, its old target (see [`TracedListener`]),
//! so `RUST_LOG` filters written for them keep working, e.g.
//! `RUST_LOG=data_server=debug,tower_http=debug` or `RUST_LOG=info,api_server::admin=debug,tower_http=debug`.
//! (The span's target decides whether the span is shown; the events inside it are tower-http's,
//! under targets `tower_http::trace::*`.)

use http::Request;
use tower::ServiceBuilder;
use tower::layer::util::{Identity, Stack};
use tower_http::classify::{ServerErrorsAsFailures, SharedClassifier};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{
    DefaultOnBodyChunk, DefaultOnEos, DefaultOnFailure, DefaultOnRequest, DefaultOnResponse,
    MakeSpan, TraceLayer,
};
use tracing::{Level, Span};

/// Whose requests a layer traces. Each keeps the span name and target it had before the layer
/// moved to svc, so that `RUST_LOG` filters written for it still match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TracedListener {
    /// The data-server's HTTP listener: span `request`, target `data_server::layers`.
    DataServer,
    /// The api-server's admin listener: span `admin`, target `api_server::admin`.
    ApiAdmin,
}

/// Makes the span of one request (the `make_span_with` of [`request_layers`]'s trace layer).
#[derive(Debug, Clone, Copy)]
pub struct RequestSpan(TracedListener);

/// One request's span; the field names are written here only, for both listeners.
macro_rules! request_span {
    ($target:literal, $name:literal, $request:expr, $id:expr) => {
        tracing::debug_span!(
            target: $target,
            $name,
            method = %$request.method(),
            uri = %$request.uri(),
            request_id = %$id,
        )
    };
}

impl<B> MakeSpan<B> for RequestSpan {
    fn make_span(&mut self, request: &Request<B>) -> Span {
        let id = request
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        // Names and targets are literals: tracing keeps them in static metadata.
        match self.0 {
            TracedListener::DataServer => {
                request_span!("data_server::layers", "request", request, id)
            }
            TracedListener::ApiAdmin => request_span!("api_server::admin", "admin", request, id),
        }
    }
}

/// The trace layer of [`request_layers`].
pub type RequestTraceLayer = TraceLayer<
    SharedClassifier<ServerErrorsAsFailures>,
    RequestSpan,
    DefaultOnRequest,
    DefaultOnResponse,
    DefaultOnBodyChunk,
    DefaultOnEos,
    DefaultOnFailure,
>;

/// What [`request_layers`] returns: set the id, trace, copy the id to the response.
pub type RequestLayers = ServiceBuilder<
    Stack<
        PropagateRequestIdLayer,
        Stack<RequestTraceLayer, Stack<SetRequestIdLayer<MakeRequestUuid>, Identity>>,
    >,
>;

/// The request-id and trace layers for `listener`'s router (see the module docs), as one layer
/// to apply outermost: `router.layer(svc::request_layers(TracedListener::DataServer))`.
pub fn request_layers(listener: TracedListener) -> RequestLayers {
    let trace = TraceLayer::new_for_http()
        .make_span_with(RequestSpan(listener))
        .on_response(DefaultOnResponse::new().level(Level::DEBUG))
        .on_failure(DefaultOnFailure::new().level(Level::DEBUG));
    // A ServiceBuilder's first layer is the outermost.
    ServiceBuilder::new()
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .layer(trace)
        .layer(PropagateRequestIdLayer::x_request_id())
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use http::{Response, StatusCode};
    use tower::{ServiceExt, service_fn};
    use tracing_subscriber::EnvFilter;

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

    /// Sends `requests` requests (the first with `X-Request-Id: req-1`) through the layers of
    /// `listener` to a service answering `status`, under `RUST_LOG=filter`; returns the log and
    /// the response ids.
    async fn serve(
        listener: TracedListener,
        filter: &str,
        status: StatusCode,
        requests: usize,
    ) -> (String, Vec<String>) {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(EnvFilter::new(filter))
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let service = ServiceBuilder::new()
            .layer(request_layers(listener))
            .service(service_fn(move |_: Request<String>| async move {
                let mut response = Response::new(String::new());
                *response.status_mut() = status;
                Ok::<_, Infallible>(response)
            }));
        let mut ids = Vec::new();
        for n in 0..requests {
            let mut request = Request::get("/full?x=1");
            if n == 0 {
                request = request.header("x-request-id", "req-1");
            }
            let response = service
                .clone()
                .oneshot(request.body(String::new()).unwrap())
                .await
                .unwrap();
            assert_eq!(response.status(), status);
            let id = response.headers()["x-request-id"].to_str().unwrap();
            ids.push(id.to_owned());
        }
        let logged = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        (logged, ids)
    }

    #[tokio::test]
    async fn a_5xx_answer_logs_nothing_at_info() {
        for listener in [TracedListener::DataServer, TracedListener::ApiAdmin] {
            let status = StatusCode::INSUFFICIENT_STORAGE;
            let (logged, _) = serve(listener, "info", status, 3).await;
            assert_eq!(
                logged, "",
                "{listener:?}: 5xx answers are not logged at INFO"
            );
        }
    }

    #[tokio::test]
    async fn the_old_rust_log_filters_still_show_each_listeners_span_and_fields() {
        let cases = [
            (
                TracedListener::DataServer,
                "data_server=debug,tower_http=debug",
                "request{",
            ),
            (
                TracedListener::ApiAdmin,
                "info,api_server::admin=debug,tower_http=debug",
                "admin{",
            ),
        ];
        for (listener, filter, span) in cases {
            let (logged, ids) = serve(listener, filter, StatusCode::OK, 2).await;
            let fields = format!("{span}method=GET uri=/full?x=1 request_id=req-1}}");
            assert!(logged.contains(&fields), "{listener:?}: {logged}");
            assert!(logged.contains("status=200"), "{listener:?}: {logged}");
            assert!(logged.contains("latency="), "{listener:?}: {logged}");
            // The client's id is kept; without one, a new UUID is made and answered.
            assert_eq!(ids[0], "req-1");
            assert_eq!(ids[1].len(), 36, "{ids:?}");
            let generated = format!("request_id={}}}", ids[1]);
            assert!(logged.contains(&generated), "{listener:?}: {logged}");
        }
    }
}
