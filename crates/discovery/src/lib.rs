//! Heartbeat service discovery over NSQ: servers announce themselves, api-servers subscribe, keep who is live and
//! pick one per request. Both ends of a heartbeat live in this crate.
//!
//! Modules that do I/O, through the [`nsq`] client crate:
//! - `announce`: the [`Announcer`] publishes this server's [`Heartbeat`] to a random nsqd every interval (with
//!   jitter) while a [`Health`] check passes, fails over between nsqd, and publishes `leaving` on shutdown.
//! - `solicit`: a data server's [`Responder`] answers an api-server's [`Solicitation`] (published at its start)
//!   with an ordinary heartbeat after a random delay, once per nonce and at most once per [`MIN_ANSWER_GAP`].
//! - `subscribe`: [`subscribe`] starts an NSQ consumer of the heartbeat topic (nsqd found through nsqlookupd, or
//!   given directly) that feeds every message into a [`Registry`].
//!
//! Pure modules, with no I/O and no tasks of their own (time is always passed in as `tokio::time::Instant`, so
//! everything runs in virtual time under test):
//! - `heartbeat`: the version 1 message ([`Heartbeat`], [`Message`]), its wire format and the canonical bytes that
//!   an [`HmacKey`] signs (naming it by its key id, so that a receiver with a [`KeySet`] of several keys during a
//!   rotation checks only that one), and [`decode`] of untrusted bodies with a [`Rejection`] for every refusal.
//!   The one exception is [`HmacKey::from_file`], which reads the key file.
//! - `registry`: the [`Registry`] of servers heard from within a TTL, ordered by `(epoch, seq)`, with tombstones
//!   for graceful leaves, self-preservation while the bus is down, [`Event`]s for subscribers and counters for
//!   metrics.
//! - `balancer`: the [`Balancer`] picks a live server per request (`p2c`, `p2c_ewma`, `round_robin`, `random`),
//!   counts requests in flight, keeps a latency estimate per server for `p2c_ewma` and ejects failing servers for a
//!   while.
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

mod announce;
mod backend;
mod balance;
mod error;
mod event;
mod heartbeat;
mod registry;
mod reject;
mod solicit;
mod subscribe;

pub use announce::{
    AlwaysHealthy, AnnounceError, Announcer, AnnouncerConfig, AnnouncerConfigError, AnnouncerStats,
    AsyncHealth, DEFAULT_INTERVAL, DEFAULT_JITTER, DEFAULT_TOPIC, HEALTH_RECHECK, Health,
    LEAVE_RETRY_BASE, LEAVE_RETRY_MAX, RETRY_BASE, jittered, publish_timeout_for,
};
pub use backend::{Backend, InFlightGuard, LATENCY_DECAY, MAX_WEIGHT};
pub use balance::{BackendStats, Balancer, BalancerConfig, FailureOutcome, LATENCY_TIE, Strategy};
pub use error::ConfigError;
pub use event::{Event, EventKind};
pub use heartbeat::{
    Heartbeat, HmacKey, KID_HEX_LEN, KeyError, KeySet, MAX_BODY_BYTES, MAX_ID_BYTES, MAX_KEY_BYTES,
    MAX_META_BYTES, MAX_META_DEPTH, Message, State, VERSION, decode,
};
pub use registry::{
    DEFAULT_EVENT_CAPACITY, DEFAULT_TTL, IgnoreReason, MAX_SAVED_AGE, Outcome, OutcomeCount,
    Registry, RegistryConfig, RegistryView, SAVED_FORMAT, SavedRegistry, SavedServer, ServerView,
};
pub use reject::{RejectReason, Rejection};
pub use solicit::{
    MAX_SOLICIT_FIELD_BYTES, MAX_SOLICITATION_BYTES, MIN_ANSWER_GAP, Responder,
    SOLICIT_TOPIC_SUFFIX, SOLICIT_VERSION, SOLICITATION_MAX_AGE, SolicitError, Solicitation,
    SolicitationConfig, SolicitationStats, solicit_channel, solicit_topic,
};
pub use subscribe::{HEARTBEAT_OUTPUT_BUFFER, SubscriptionConfig, subscribe};
