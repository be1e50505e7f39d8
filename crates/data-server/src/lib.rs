//! The data-server: an HTTP data service that announces itself over NSQ while it is healthy,
//! and announces `leaving` before it stops.
//!
//! - [`app`]: the axum router (`/whoami`, `/healthz`, `/metrics`, `/kv/{key}`, `/echo`,
//!   `/upload`, `/bytes/{n}`, `/slow?ms=`, and the WebSocket endpoints `/ws` and `/ws/ticks`) over an
//!   [`AppState`].
//! - [`Config`]: the TOML configuration (`server.*`, `announce.*`, `shutdown.*`, `sidecar.*`, `data.*`).
//! - The key-value store is bounded ([`StoreLimits`], `data.max_keys` and `data.max_bytes`): a `PUT` beyond
//!   either limit gets 507 Insufficient Storage.
//! - [`run`] / [`serve`]: bind, announce, serve, and shut down in order: leaving heartbeat,
//!   stop accepting, drain in-flight requests.
//! - Both modes answer a starting api-server's solicitation with a heartbeat (`announce.answer_solicitations`,
//!   [`discovery::Responder`]), so it routes at once instead of after one interval.
//! - [`run_sidecar`]: announce another service while its health URL answers 2xx.
//! - [`keygen`]: write a new random HMAC key for signing heartbeats (`data-server keygen --out FILE`).
//!
//! ```
//! use axum::body::Body;
//! use axum::http::Request;
//! use data_server::{AppState, app};
//! use tower::ServiceExt;
//!
//! # tokio_test(async {
//! let router = app(AppState::new("data-1", "127.0.0.1:9000", None));
//! let response = router
//!     .oneshot(Request::get("/whoami").body(Body::empty()).unwrap())
//!     .await
//!     .unwrap();
//! assert_eq!(response.status(), 200);
//! # });
//! # fn tokio_test(f: impl std::future::Future<Output = ()>) {
//! #     tokio::runtime::Runtime::new().unwrap().block_on(f)
//! # }
//! ```
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod app;
mod config;
mod data;
mod keygen;
mod metrics;
mod server;
mod sidecar;
mod store;
mod ws;

pub use app::{AppState, MAX_KV_VALUE_BYTES, REQUEST_TIMEOUT, app};
pub use config::{
    AnnounceConfig, Config, DEFAULT_HEALTH_TIMEOUT, DEFAULT_LISTEN, DEFAULT_MAX_BYTES,
    DEFAULT_MAX_KEYS, DEFAULT_NSQD, DEFAULT_SHUTDOWN_TIMEOUT, DataConfig, ENV_PREFIX, ServerConfig,
    ShutdownConfig, SidecarConfig,
};
pub use data::{AppError, MAX_GENERATED_BYTES, MAX_SLOW_MS, pattern_byte};
pub use keygen::{KEY_BYTES, Keygen, keygen};
pub use metrics::Metrics;
pub use server::{ServerError, run, serve};
pub use sidecar::run_sidecar;
pub use store::{StoreFull, StoreLimits};
