//! Heartbeat service discovery over NSQ: the pure logic, with no I/O of its own.
//!
//! - [`Heartbeat`], [`decode`]: the version 1 heartbeat message (JSON, or a plain `host:port` body), validated and
//!   optionally HMAC-signed with an [`HmacKey`] over a canonical encoding.
//! - [`Registry`]: the servers heard from within a TTL, ordered by `(epoch, seq)`, with tombstones for graceful
//!   leaves, self-preservation while the bus is down, [`Event`]s for subscribers and counters for metrics.
//! - [`Balancer`]: picks a live server per request (`p2c`, `round_robin`, `random`), counts requests in flight and
//!   ejects failing servers for a while.
//!
//! Time is always passed in (`tokio::time::Instant`), so everything runs in virtual time under test.
//!
//! ```
//! use std::time::{Duration, SystemTime};
//! use discovery::{Balancer, BalancerConfig, Heartbeat, Outcome, Registry, RegistryConfig};
//! use tokio::time::Instant;
//!
//! let registry = Registry::new(RegistryConfig::new(Duration::from_secs(10)))?;
//! let heartbeat = Heartbeat::new("data-1", "10.0.0.5:8080", 1, 1);
//! let outcome = registry.observe(&heartbeat.encode(), 0, Instant::now(), SystemTime::now());
//! assert_eq!(outcome, Outcome::Joined);
//!
//! let balancer = Balancer::new(registry.clone(), BalancerConfig::default())?;
//! let (backend, _in_flight) = balancer.pick(&[]).expect("one live server");
//! assert_eq!(backend.addr(), "10.0.0.5:8080");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod addr;
mod announcer;
mod announcer_config;
mod announcer_health;
mod announcer_transport;
mod backend;
mod balance;
mod error;
mod event;
mod heartbeat;
mod registry;
mod reject;
mod signing;

pub use announcer::{Announcer, HEALTH_RECHECK, RETRY_BASE, jittered};
pub use announcer_config::{
    AnnounceError, AnnouncerConfig, AnnouncerError, AnnouncerStats, DEFAULT_INTERVAL,
    DEFAULT_JITTER, DEFAULT_TOPIC, publish_timeout_for,
};
pub use announcer_health::{AlwaysHealthy, AsyncHealth, Health};
pub use backend::{Backend, InFlightGuard, MAX_WEIGHT};
pub use balance::{BackendStats, Balancer, BalancerConfig, FailureOutcome, Strategy};
pub use error::ConfigError;
pub use event::{Event, EventKind};
pub use heartbeat::{
    Heartbeat, MAX_BODY_BYTES, MAX_ID_BYTES, MAX_META_BYTES, MAX_META_DEPTH, Message, State,
    VERSION, decode,
};
pub use registry::{
    DEFAULT_EVENT_CAPACITY, DEFAULT_TTL, IgnoreReason, Outcome, OutcomeCount, Registry,
    RegistryConfig, RegistryView, ServerView,
};
pub use reject::{RejectReason, Rejection};
pub use signing::{HmacKey, KeyError, MAX_KEY_BYTES};
