//! The announcer's settings, and why a set of them cannot work.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use crate::heartbeat::HmacKey;
use crate::reject::Rejection;

/// Topic heartbeats go to unless configured otherwise (ARCHITECTURE.md §4.3).
pub const DEFAULT_TOPIC: &str = "data_server_addr";
/// Time between heartbeats unless configured otherwise (ARCHITECTURE.md §4.3).
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
/// Relative jitter of each wait unless configured otherwise (ARCHITECTURE.md §4.3).
pub const DEFAULT_JITTER: f64 = 0.1;

/// Settings of an [`Announcer`](crate::Announcer).
#[derive(Clone)]
pub struct AnnouncerConfig {
    /// NSQ topic of the heartbeats.
    pub topic: String,
    /// nsqd TCP addresses (`host:port`); each heartbeat goes to a random one.
    pub nsqd_tcp_addresses: Vec<String>,
    /// Mean time between heartbeats.
    pub interval: Duration,
    /// Each wait is uniform in `interval * (1 ± jitter)`; `0.0..1.0`. Jitter keeps a fleet that
    /// started together from publishing in lockstep.
    pub jitter: f64,
    /// This server's stable identity.
    pub id: String,
    /// Where clients reach this server: `host:port`.
    pub addr: String,
    /// Free-form metadata sent with every heartbeat (`"weight"` is used by balancers).
    pub meta: BTreeMap<String, Value>,
    /// Signs every heartbeat when set.
    pub key: Option<HmacKey>,
    /// Connection settings of the producers. Keep `publish_timeout` well below `interval`
    /// (see [`publish_timeout_for`]): a hung nsqd costs that much of a tick before failover.
    pub producer: nsq::ProducerConfig,
}

/// A publish timeout that lets a heartbeat fail over from a hung nsqd (one that accepts
/// connections but never answers) well within its interval: a quarter of it, between 100 ms
/// and 1 s. A healthy nsqd answers in about a millisecond.
pub fn publish_timeout_for(interval: Duration) -> Duration {
    (interval / 4).clamp(Duration::from_millis(100), Duration::from_secs(1))
}

impl AnnouncerConfig {
    /// Defaults (topic, interval, jitter) for this identity, address and nsqd list.
    pub fn new<S: Into<String>>(
        id: impl Into<String>,
        addr: impl Into<String>,
        nsqd_tcp_addresses: impl IntoIterator<Item = S>,
    ) -> Self {
        AnnouncerConfig {
            topic: DEFAULT_TOPIC.to_owned(),
            nsqd_tcp_addresses: nsqd_tcp_addresses.into_iter().map(Into::into).collect(),
            interval: DEFAULT_INTERVAL,
            jitter: DEFAULT_JITTER,
            id: id.into(),
            addr: addr.into(),
            meta: BTreeMap::new(),
            key: None,
            producer: nsq::ProducerConfig {
                publish_timeout: publish_timeout_for(DEFAULT_INTERVAL),
                ..nsq::ProducerConfig::default()
            },
        }
    }
}

impl std::fmt::Debug for AnnouncerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key stays out of logs.
        f.debug_struct("AnnouncerConfig")
            .field("topic", &self.topic)
            .field("nsqd_tcp_addresses", &self.nsqd_tcp_addresses)
            .field("interval", &self.interval)
            .field("jitter", &self.jitter)
            .field("id", &self.id)
            .field("addr", &self.addr)
            .field("signed", &self.key.is_some())
            .finish_non_exhaustive()
    }
}

/// An [`AnnouncerConfig`] that cannot work, returned once by [`Announcer::new`](crate::Announcer::new).
///
/// Not to be confused with [`AnnounceError`](crate::AnnounceError), which is one heartbeat that a running announcer
/// could not publish.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AnnouncerConfigError {
    /// No nsqd to publish to.
    #[error("announce: expected at least one nsqd TCP address, found none")]
    NoNsqd,
    /// The interval is zero.
    #[error("announce: expected an interval greater than zero, found 0s")]
    ZeroInterval,
    /// The jitter is outside `0.0..1.0`.
    #[error("announce: expected a jitter within 0.0..1.0, found {0}")]
    BadJitter(f64),
    /// The heartbeat this configuration would send is invalid (id, address or meta).
    #[error("announce: the heartbeat would be refused: {0}")]
    BadHeartbeat(Rejection),
    /// The NSQ client refused the settings (topic name, producer settings).
    #[error("announce: {0}")]
    Nsq(#[from] nsq::Error),
}
