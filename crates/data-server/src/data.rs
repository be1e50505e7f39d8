//! The data endpoints: a small key-value store (kept in `store.rs`), and streaming endpoints for proxy tests and
//! benchmarks (`/echo`, `/upload`, `/bytes/{n}`, `/slow`). The streaming ones never hold a whole
//! body in memory, so a 20 MB transfer costs no more than a small one.

use std::time::Duration;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::app::AppState;

/// Largest `n` of `GET /bytes/{n}`.
pub const MAX_GENERATED_BYTES: u64 = 1 << 30;
/// Longest `ms` of `/slow?ms=`.
pub const MAX_SLOW_MS: u64 = 60_000;
/// Size of the chunks `/bytes/{n}` streams.
const CHUNK: usize = 64 * 1024;

/// An HTTP error with a JSON body `{"error": "..."}`.
#[derive(Debug)]
pub struct AppError {
    status: StatusCode,
    message: String,
}

impl AppError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        AppError {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

pub(crate) async fn kv_get(
    State(state): State<AppState>,
    Path(key): Path<String>,
) -> Result<Bytes, AppError> {
    state
        .kv()
        .get(&key)
        .ok_or_else(|| AppError::new(StatusCode::NOT_FOUND, format!("no value for key {key:?}")))
}

pub(crate) async fn kv_put(
    State(state): State<AppState>,
    Path(key): Path<String>,
    value: Bytes,
) -> Result<StatusCode, AppError> {
    match state.kv().put(key, value) {
        Ok(true) => Ok(StatusCode::CREATED),
        Ok(false) => Ok(StatusCode::NO_CONTENT),
        Err(full) => Err(AppError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            full.to_string(),
        )),
    }
}

pub(crate) async fn kv_delete(
    State(state): State<AppState>,
    Path(key): Path<String>,
) -> Result<StatusCode, AppError> {
    if state.kv().delete(&key) {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(AppError::new(
            StatusCode::NOT_FOUND,
            format!("no value for key {key:?}"),
        ))
    }
}

/// Streams the request body back as it arrives, with the same length and type.
pub(crate) async fn echo(headers: HeaderMap, body: Body) -> Response {
    let mut response = Response::new(body);
    for name in [header::CONTENT_TYPE, header::CONTENT_LENGTH] {
        if let Some(value) = headers.get(&name) {
            response.headers_mut().insert(name, value.clone());
        }
    }
    response
}

/// Reads the whole body as a stream and answers its size and SHA-256, so that a client can
/// check that a large upload arrived intact.
pub(crate) async fn upload(
    State(state): State<AppState>,
    body: Body,
) -> Result<Json<serde_json::Value>, AppError> {
    let mut body = body;
    let mut hasher = Sha256::new();
    let mut bytes = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            AppError::new(StatusCode::BAD_REQUEST, format!("reading the body: {e}"))
        })?;
        if let Some(data) = frame.data_ref() {
            bytes += data.len() as u64;
            hasher.update(data);
        }
    }
    Ok(Json(json!({
        "id": state.id(),
        "bytes": bytes,
        "sha256": hex::encode(hasher.finalize()),
    })))
}

/// The byte at `offset` of every `/bytes/{n}` body: a pattern a client can check without
/// keeping a copy (251 is prime, so chunk boundaries never line up with the pattern).
pub fn pattern_byte(offset: u64) -> u8 {
    (offset % 251) as u8
}

/// Streams `n` bytes of [`pattern_byte`] in chunks.
pub(crate) async fn bytes(Path(n): Path<u64>) -> Result<Response, AppError> {
    if n > MAX_GENERATED_BYTES {
        return Err(AppError::new(
            StatusCode::BAD_REQUEST,
            format!("expected at most {MAX_GENERATED_BYTES} bytes, found {n}"),
        ));
    }
    let chunks = futures::stream::unfold(0u64, move |offset| async move {
        if offset >= n {
            return None;
        }
        let len = (n - offset).min(CHUNK as u64);
        let chunk: Vec<u8> = (offset..offset + len).map(pattern_byte).collect();
        Some((Ok::<_, std::io::Error>(Bytes::from(chunk)), offset + len))
    });
    let mut response = Response::new(Body::from_stream(chunks));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_LENGTH, n.into());
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/octet-stream"),
    );
    Ok(response)
}

#[derive(Deserialize)]
pub(crate) struct SlowQuery {
    #[serde(default)]
    ms: u64,
}

/// Answers after `ms` milliseconds: a request that is in flight long enough to observe
/// draining, timeouts and load balancing.
pub(crate) async fn slow(
    State(state): State<AppState>,
    Query(query): Query<SlowQuery>,
) -> Result<Json<serde_json::Value>, AppError> {
    if query.ms > MAX_SLOW_MS {
        return Err(AppError::new(
            StatusCode::BAD_REQUEST,
            format!("expected ms of at most {MAX_SLOW_MS}, found {}", query.ms),
        ));
    }
    tokio::time::sleep(Duration::from_millis(query.ms)).await;
    Ok(Json(json!({ "id": state.id(), "slept_ms": query.ms })))
}
