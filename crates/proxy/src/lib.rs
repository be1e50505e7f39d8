//! The api-server's reverse-proxy engine: HTTP/1.1 served by hand on worker threads, every request forwarded to a
//! live data server that a [`discovery::Balancer`] picks.
//!
//! The engine speaks HTTP/1.1 itself rather than through a general-purpose HTTP library. A request head is parsed
//! in place (`httparse`) and rewritten once into the upstream head; the response head is rewritten straight into
//! the bytes for the client, together with as much of the body as has arrived. So a small exchange costs one read
//! and one write on each side and no allocation; bodies stream both ways through fixed buffers.
//!
//! # Per-thread design
//!
//! [`serve`] runs one accept loop that hands each client connection to the least busy of its worker threads (one
//! per core by default), nginx-style; that thread serves the connection to its end. Each worker has its own
//! single-threaded tokio runtime and its own pool of keep-alive upstream connections, so a request is read,
//! forwarded, answered and its upstream connection pooled again on one thread, with no lock and no hand-off between
//! threads. What the workers share ([`Proxy`]: settings, balancer, metrics, the retry budget) is read-only or
//! atomic.
//!
//! # What it is given
//!
//! The owner (the api-server) builds a [`ProxySettings`] from its `[proxy]` config section and a [`ProxyMetrics`]
//! from its metrics registry, hands both to [`Proxy::new`] with the balancer, and runs [`serve`] on a bound
//! listener with [`HttpLimits`] and a shutdown future; on shutdown, `serve` drains and returns.
//!
//! # Modules
//!
//! | module | what |
//! |---|---|
//! | [`h1`] | HTTP/1.1 framing rules and the chunked-body parser (public: the fuzz targets use it) |
//! | `conn` | one client connection: request heads in, the body's relation to the buffer, the request handled |
//! | `request` | a request head parsed and rewritten into the upstream head; what clients may not send |
//! | `answer` | the proxy's own answers: JSON errors, 508 for a loop, 400/408/413 for a client's body |
//! | `tries` | the tries of one request: a server, a pooled or new connection, retries; `tries/upload` a streamed upload |
//! | `blame` | what a failed try means: another try or not, whose fault, which answer (one pure table) |
//! | `relay` | bytes on the wire: response heads rewritten, bodies relayed both ways, each step bounded |
//! | `pool` | idle upstream connections, one pool per worker |
//! | `park` | idle client connections: buffers given back between requests, then the parking lot (`park/lot`) out of any task |
//! | `workers` | the accept loop, the worker threads and the drain ([`serve`]) |
//! | `headers` | forwarding headers and the request id |
//! | `budget` | the retry budget |
//! | `tunnel` | upgraded connections (WebSocket): bytes both ways after a `101` |
//! | [`traffic`] | tries and latency per server in 1 s buckets over the last minutes, for the dashboard |
//! | [`listener`] | what both api-server listeners share: limits, closed-connection counts, accept, open count |
//! | `state`, `settings`, `error` | [`Proxy`], [`ProxySettings`] and [`ProxyMetrics`], [`ProxyError`] |
//!
//! ```no_run
//! # async fn demo(balancer: discovery::Balancer, metrics: proxy::ProxyMetrics) -> std::io::Result<()> {
//! use std::time::Duration;
//!
//! let settings = proxy::ProxySettings {
//!     connect_timeout: Duration::from_millis(500),
//!     try_timeout: Duration::from_secs(10),
//!     total_timeout: Duration::from_secs(30),
//!     max_body_bytes: None,
//!     tunnel_idle_timeout: Duration::from_secs(3600),
//!     tunnel_io_uring: true,
//!     max_tries: 3,
//!     retry_budget_ratio: 0.2,
//!     retry_budget_min_per_sec: 10.0,
//!     retry_backoff: Duration::from_millis(5),
//!     eject_on_5xx: false,
//!     trusted_proxies: Vec::new(),
//!     access_log: true,
//!     warmup: Duration::from_secs(10),
//! };
//! let limits = proxy::HttpLimits {
//!     header_read_timeout: Duration::from_secs(10),
//!     keepalive_timeout: Duration::from_secs(75),
//!     body_read_timeout: Duration::from_secs(60),
//!     send_timeout: Duration::from_secs(60),
//!     max_connections: 10_000,
//!     max_header_bytes: 32 * 1024,
//!     drain_grace: Duration::from_secs(1),
//! };
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let engine = proxy::Proxy::new(settings, balancer, metrics);
//! let shutdown = async {
//!     let _ = tokio::signal::ctrl_c().await;
//! };
//! proxy::serve(listener, engine, limits, 2, shutdown).await
//! # }
//! ```
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod answer;
mod blame;
mod budget;
mod client_stream;
mod conn;
mod error;
pub mod h1;
mod headers;
pub mod listener;
mod park;
mod pool;
mod relay;
mod request;
mod settings;
mod state;
pub mod traffic;
mod tries;
mod tunnel;
mod workers;

pub use error::ProxyError;
pub use listener::{ConnectionErrors, HttpLimits};
pub use settings::{ProxyMetrics, ProxySettings};
pub use state::Proxy;
pub use traffic::Traffic;
pub use workers::serve;
