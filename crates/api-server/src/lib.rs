//! The api-server: consumes data-server heartbeats from NSQ into a TTL registry, serves the registry on an admin
//! listener (JSON, Server-Sent Events, health, metrics, a live dashboard) and reverse-proxies every request on its
//! main listener to a live data server, load-balanced.
//!
//! - [`Config`]: the TOML configuration (`server`, `discovery`, `balancer`, `proxy`, `shutdown`).
//! - [`run`]: binds both listeners, subscribes, runs until a [`Shutdown`](svc::Shutdown), then drains.
//! - [`admin_router`] and the proxy: the two listeners over one [`AppState`]. The admin listener is served by
//!   hyper (`admin_listener`); the proxy by the `proxy` crate's HTTP/1.1 engine on worker threads, one per core,
//!   which `run` hands its `[proxy]` settings, metrics and balancer. Both bound slow and oversized request heads.
//! - Bus liveness is measured by a canary (see the `canary` module docs): while NSQ does not deliver, expiry is
//!   frozen and `/registry` says `"self_preservation": true`.
//! - With `discovery.registry_file`, the registry is saved when membership changes and loaded at start as
//!   unconfirmed servers (`saved_registry`), so a restart routes at once.
//! - With `discovery.solicit` (default on), a start publishes one solicitation that data servers answer with a
//!   heartbeat within a spread sized to the fleet (`solicit`), so even a first start without a file routes at once.
//!
//! ```no_run
//! # async fn demo() -> Result<(), api_server::RunError> {
//! let config: api_server::Config = svc::ConfigLoader::new("API_SERVER")
//!     .set(["discovery.lookupd_http_addresses=127.0.0.1:4161", "server.listen=127.0.0.1:0"])
//!     .load()
//!     .expect("valid config");
//! let shutdown = svc::Shutdown::new();
//! shutdown.trigger_on_signal();
//! api_server::run(config, shutdown, |at| println!("proxy {} admin {}", at.proxy, at.admin)).await
//! # }
//! ```
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod admin;
mod admin_listener;
mod bus;
mod canary;
mod config;
mod feed;
mod run;
mod saved_registry;
mod solicit;
mod state;

pub use admin::{
    ADMIN_MAX_BODY_BYTES, ADMIN_REQUEST_TIMEOUT, RegistryDocument, SNAPSHOT_INTERVAL, admin_router,
};
pub use bus::{Bus, BusView, NsqdProbe};
pub use canary::CanaryConfig;
pub use config::{
    BalancerSection, CANARY_TOPIC_SUFFIX, Config, DEFAULT_HEADER_READ_TIMEOUT,
    DEFAULT_LOOKUPD_POLL_INTERVAL, DEFAULT_MAX_HEADER_BYTES, DEFAULT_PRUNE_INTERVAL,
    DEFAULT_SHUTDOWN_TIMEOUT, DEFAULT_SOLICIT_RATE, DEFAULT_TOPIC, DEFAULT_TTL, DiscoveryConfig,
    ProxyConfig, ServerConfig, ShutdownConfig,
};
pub use feed::{Change, Feed, TIMELINE_LEN};
pub use run::{Listening, RunError, run};
pub use solicit::{SUBSCRIBE_WAIT, SolicitConfig, spread_for};
pub use state::{AppState, Metrics};
