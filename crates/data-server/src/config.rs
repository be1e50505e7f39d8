//! The data-server's configuration: TOML file, `DATA_SERVER__SECTION__KEY` variables and
//! `--set` flags, validated once into this typed form (see `svc::ConfigLoader`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use discovery::{AnnouncerConfig, Heartbeat, HmacKey, MAX_ID_BYTES, MAX_WEIGHT};
use serde::{Deserialize, Serialize};
use svc::{Fraction, Host, HostPort, HumanDuration, Invalid, NsqSection, Validate};

use crate::store::StoreLimits;

/// Prefix of the environment variables that override keys (`DATA_SERVER__ANNOUNCE__INTERVAL`).
pub const ENV_PREFIX: &str = "DATA_SERVER";
/// `server.listen` unless configured.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// `announce.nsqd_tcp_addresses` unless configured: the local nsqd.
pub const DEFAULT_NSQD: &str = "127.0.0.1:4150";
/// `shutdown.timeout` unless configured: bound on the leaving heartbeat, and then on draining.
pub const DEFAULT_SHUTDOWN_TIMEOUT: HumanDuration = HumanDuration::from_secs(10);
/// `shutdown.deregister_delay` unless configured: how long requests are still accepted once an nsqd took the
/// leaving heartbeat. Covers an api-server's delivery of it (nsqd buffers heartbeats up to 25 ms) and handling,
/// with room for a busy host: a request sent meanwhile on a pooled connection would otherwise meet a closing one.
pub const DEFAULT_DEREGISTER_DELAY: HumanDuration = HumanDuration::from_millis(300);
/// `sidecar.health_timeout` unless configured.
pub const DEFAULT_HEALTH_TIMEOUT: HumanDuration = HumanDuration::from_secs(1);
/// `data.max_keys` unless configured.
pub const DEFAULT_MAX_KEYS: usize = 100_000;
/// `data.max_bytes` unless configured: 256 MiB, room for eight values of the largest size.
pub const DEFAULT_MAX_BYTES: u64 = 256 * 1024 * 1024;

/// The whole configuration.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[server]`: where to listen and how to be known.
    pub server: ServerConfig,
    /// `[announce]`: the heartbeats.
    pub announce: AnnounceConfig,
    /// `[shutdown]`: graceful shutdown.
    pub shutdown: ShutdownConfig,
    /// `[sidecar]`: settings of the `sidecar` subcommand.
    pub sidecar: SidecarConfig,
    /// `[data]`: limits of the key-value store.
    pub data: DataConfig,
    /// `[nsq]`: TLS and AUTH towards nsqd.
    pub nsq: NsqSection,
}

/// `[server]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on; port 0 picks a free port (the bound address is then announced).
    pub listen: SocketAddr,
    /// Address announced to clients (default: the bound listen address).
    pub advertise: Option<HostPort>,
    /// Stable identity (default: generated per run).
    pub id: Option<String>,
    /// Metadata sent with every heartbeat; `weight` (1..=1000) is honoured by the balancer.
    pub meta: BTreeMap<String, serde_json::Value>,
    /// Waited before answering every request but `/healthz` and `/metrics`: a slower server on demand, for
    /// benchmarks of latency-aware balancing (0: none).
    pub added_latency: HumanDuration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: DEFAULT_LISTEN.parse().expect("a valid constant"),
            advertise: None,
            id: None,
            meta: BTreeMap::new(),
            added_latency: HumanDuration::ZERO,
        }
    }
}

/// `[announce]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AnnounceConfig {
    /// NSQ topic of the heartbeats.
    pub topic: String,
    /// nsqd TCP addresses; each heartbeat goes to a random one, failing over to the others.
    pub nsqd_tcp_addresses: Vec<HostPort>,
    /// Mean time between heartbeats.
    pub interval: HumanDuration,
    /// Each wait is uniform in `interval * (1 ± jitter)`.
    pub jitter: Fraction,
    /// File holding the shared HMAC key; heartbeats are signed when set (never a flag value,
    /// so the key stays out of `ps`).
    pub hmac_key_file: Option<PathBuf>,
    /// Answer a starting api-server's solicitations with a heartbeat (ARCHITECTURE.md §4.2 "Cold start").
    pub answer_solicitations: bool,
    /// Topic of the solicitations (default `<topic>.solicit#ephemeral`).
    pub solicit_topic: Option<String>,
}

impl Default for AnnounceConfig {
    fn default() -> Self {
        AnnounceConfig {
            topic: discovery::DEFAULT_TOPIC.to_owned(),
            nsqd_tcp_addresses: vec![DEFAULT_NSQD.parse().expect("a valid constant")],
            interval: HumanDuration::new(discovery::DEFAULT_INTERVAL),
            jitter: Fraction::clamped(discovery::DEFAULT_JITTER),
            hmac_key_file: None,
            answer_solicitations: true,
            solicit_topic: None,
        }
    }
}

impl AnnounceConfig {
    /// The solicitation topic in effect: `solicit_topic`, else [`discovery::solicit_topic`] of `topic`.
    pub fn solicit_topic(&self) -> String {
        self.solicit_topic
            .clone()
            .unwrap_or_else(|| discovery::solicit_topic(&self.topic))
    }
}

/// `[shutdown]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// Bound on the leaving heartbeat, and then on draining in-flight requests.
    pub timeout: HumanDuration,
    /// Requests are still accepted this long after an nsqd took the leaving heartbeat, so that api-servers stop
    /// routing here before the listener closes.
    pub deregister_delay: HumanDuration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            deregister_delay: DEFAULT_DEREGISTER_DELAY,
        }
    }
}

/// `[sidecar]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SidecarConfig {
    /// Bound on one probe of the health URL; a slower answer counts as unhealthy.
    pub health_timeout: HumanDuration,
}

impl Default for SidecarConfig {
    fn default() -> Self {
        SidecarConfig {
            health_timeout: DEFAULT_HEALTH_TIMEOUT,
        }
    }
}

/// `[data]`: the key-value store behind `/kv/{key}`; a `PUT` beyond either limit gets 507.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// Most keys held at once.
    pub max_keys: usize,
    /// Most bytes held at once, keys and values together.
    pub max_bytes: u64,
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            max_keys: DEFAULT_MAX_KEYS,
            max_bytes: DEFAULT_MAX_BYTES,
        }
    }
}

impl DataConfig {
    /// The store's limits.
    pub fn limits(&self) -> StoreLimits {
        StoreLimits {
            max_keys: self.max_keys,
            max_bytes: self.max_bytes,
        }
    }
}

impl Default for StoreLimits {
    fn default() -> Self {
        DataConfig::default().limits()
    }
}

impl Validate for Config {
    fn validate(&self) -> Result<(), Invalid> {
        self.nsq.validate("nsq")?;
        self.nsq
            .conn()
            .map_err(|err| Invalid::new("nsq", "TLS files the NSQ client can use", err))?;
        let announce = &self.announce;
        if announce.nsqd_tcp_addresses.is_empty() {
            return Err(Invalid::new(
                "announce.nsqd_tcp_addresses",
                r#"at least one nsqd TCP address like "127.0.0.1:4150""#,
                "an empty list",
            ));
        }
        if nsq::validate_topic(&announce.topic).is_err() {
            return Err(Invalid::new(
                "announce.topic",
                "1-64 characters of [.a-zA-Z0-9_-], optionally ending in #ephemeral",
                format!("{:?}", announce.topic),
            ));
        }
        if nsq::validate_topic(&announce.solicit_topic()).is_err() {
            return Err(Invalid::new(
                "announce.solicit_topic",
                "1-64 characters of [.a-zA-Z0-9_-], optionally ending in #ephemeral",
                format!("{:?}", announce.solicit_topic()),
            ));
        }
        announce.interval.require_positive("announce.interval")?;
        if announce.jitter.get() >= 1.0 {
            return Err(Invalid::new(
                "announce.jitter",
                "a fraction below 1.0 (e.g. 0.1)",
                announce.jitter,
            ));
        }
        if let Some(path) = &announce.hmac_key_file {
            HmacKey::from_file(path).map_err(|err| {
                Invalid::new(
                    "announce.hmac_key_file",
                    "a readable file holding the shared key",
                    err,
                )
            })?;
        }
        if let Some(advertise) = &self.server.advertise {
            let unspecified = match advertise.host() {
                Host::Ipv4(ip) => ip.is_unspecified(),
                Host::Ipv6(ip) => ip.is_unspecified(),
                Host::Name(_) => false,
            };
            if unspecified {
                return Err(Invalid::new(
                    "server.advertise",
                    "an address clients can connect to (not 0.0.0.0 or [::])",
                    format!("\"{advertise}\""),
                ));
            }
        }
        if let Some(id) = &self.server.id
            && (id.is_empty() || id.len() > MAX_ID_BYTES || id.chars().any(char::is_control))
        {
            return Err(Invalid::new(
                "server.id",
                format!("1 to {MAX_ID_BYTES} bytes without control characters"),
                format!("{id:?}"),
            ));
        }
        self.validate_meta()?;
        if self.data.max_keys == 0 {
            return Err(Invalid::new("data.max_keys", "at least 1", 0));
        }
        if self.data.max_bytes == 0 {
            return Err(Invalid::new("data.max_bytes", "at least 1", 0));
        }
        self.shutdown.timeout.require_positive("shutdown.timeout")?;
        self.sidecar
            .health_timeout
            .require_positive("sidecar.health_timeout")
    }
}

impl Config {
    fn validate_meta(&self) -> Result<(), Invalid> {
        let meta = &self.server.meta;
        if let Some(weight) = meta.get("weight") {
            let ok = weight
                .as_u64()
                .is_some_and(|w| (1..=u64::from(MAX_WEIGHT)).contains(&w));
            if !ok {
                return Err(Invalid::new(
                    "server.meta.weight",
                    format!("an integer from 1 to {MAX_WEIGHT}"),
                    weight,
                ));
            }
        }
        let mut probe = Heartbeat::new("probe", "127.0.0.1:1", 0, 0);
        probe.meta = meta.clone();
        probe.validate().map_err(|rejection| {
            Invalid::new("server.meta", "a small table of metadata", rejection)
        })
    }

    /// The address to announce: `server.advertise`, else the bound address (loopback when it
    /// is unspecified, since nobody can connect to `0.0.0.0`).
    pub fn advertise_for(&self, bound: SocketAddr) -> String {
        if let Some(advertise) = &self.server.advertise {
            return advertise.to_string();
        }
        if bound.ip().is_unspecified() {
            tracing::warn!(
                "listening on {bound}: announcing 127.0.0.1:{}; set server.advertise to be reachable from other hosts",
                bound.port()
            );
            return format!("127.0.0.1:{}", bound.port());
        }
        bound.to_string()
    }

    /// `server.id`, else one generated for this run.
    pub fn id_or_generated(&self, prefix: &str) -> String {
        self.server
            .id
            .clone()
            .unwrap_or_else(|| format!("{prefix}-{:08x}", rand::random::<u32>()))
    }

    /// The HMAC key when `announce.hmac_key_file` is set (already checked by validation).
    pub fn hmac_key(&self) -> Result<Option<HmacKey>, discovery::KeyError> {
        self.announce
            .hmac_key_file
            .as_ref()
            .map(HmacKey::from_file)
            .transpose()
    }

    /// The announcer settings for this identity and address.
    pub fn announcer_config(
        &self,
        id: String,
        addr: String,
        key: Option<HmacKey>,
    ) -> AnnouncerConfig {
        let nsqd = self
            .announce
            .nsqd_tcp_addresses
            .iter()
            .map(|a| a.to_string());
        let mut cfg = AnnouncerConfig::new(id, addr, nsqd);
        cfg.topic = self.announce.topic.clone();
        cfg.interval = self.announce.interval.get();
        cfg.jitter = self.announce.jitter.get();
        cfg.key = key;
        cfg.meta = self.server.meta.clone();
        cfg.producer.publish_timeout = discovery::publish_timeout_for(cfg.interval);
        cfg
    }

    /// `shutdown.timeout`.
    pub fn shutdown_timeout(&self) -> Duration {
        self.shutdown.timeout.get()
    }

    /// How long the leaving heartbeat is tried again while no nsqd takes it: `shutdown.timeout`, but at most three
    /// announce intervals. Periodic heartbeats stop when the leave starts, so the api-servers expire this server
    /// within their TTL (a few intervals) anyway; trying longer would only hold up the drain that follows.
    pub fn leave_limit(&self) -> Duration {
        self.shutdown_timeout()
            .min(self.announce.interval.get().saturating_mul(3))
    }

    /// `shutdown.deregister_delay`, at most half of `shutdown.timeout` (so that a short timeout, valid before the
    /// delay existed, still starts and still leaves time to drain).
    pub fn deregister_delay(&self) -> Duration {
        self.shutdown
            .deregister_delay
            .get()
            .min(self.shutdown_timeout() / 2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use svc::ConfigLoader;

    fn load(sets: &[&str]) -> Result<Config, svc::ConfigError> {
        let env: [(&str, &str); 0] = [];
        ConfigLoader::new(ENV_PREFIX)
            .with_env(env)
            .set(sets.iter().copied())
            .load()
    }

    #[test]
    fn shutdown_waits_are_bounded_by_the_timeout_and_the_interval() {
        let config = load(&[]).unwrap();
        assert_eq!(config.deregister_delay(), Duration::from_millis(300));
        assert_eq!(
            config.leave_limit(),
            config.shutdown_timeout().min(Duration::from_secs(15))
        );
        // A short timeout that was valid before the delay existed still loads, with the delay cut to fit.
        let short = load(&["shutdown.timeout=200ms"]).unwrap();
        assert_eq!(short.deregister_delay(), Duration::from_millis(100));
        assert_eq!(short.leave_limit(), Duration::from_millis(200));
        // Retrying the leave longer than three intervals gains nothing: the api-servers expire this server anyway.
        let fast = load(&["announce.interval=1s", "shutdown.timeout=30s"]).unwrap();
        assert_eq!(fast.leave_limit(), Duration::from_secs(3));
    }

    #[test]
    fn defaults_are_usable() {
        let config = load(&[]).unwrap();
        assert_eq!(config.announce.topic, "data_server_addr");
        assert_eq!(config.announce.interval, HumanDuration::from_secs(5));
        assert!(config.announce.answer_solicitations);
        assert_eq!(
            config.announce.solicit_topic(),
            "data_server_addr.solicit#ephemeral"
        );
        assert_eq!(
            config.advertise_for("127.0.0.1:9".parse().unwrap()),
            "127.0.0.1:9"
        );
        assert_eq!(
            config.advertise_for("0.0.0.0:9".parse().unwrap()),
            "127.0.0.1:9"
        );
    }

    #[test]
    fn meta_goes_into_the_heartbeats() {
        let config = load(&["server.meta.weight=3", "server.meta.zone=\"eu-1\""]).unwrap();
        let cfg = config.announcer_config("d".into(), "127.0.0.1:1".into(), None);
        assert_eq!(cfg.meta["weight"], 3);
        assert_eq!(cfg.meta["zone"], "eu-1");
    }

    #[test]
    fn bad_values_name_their_key() {
        for (set, key) in [
            (
                "announce.nsqd_tcp_addresses=[]",
                "announce.nsqd_tcp_addresses",
            ),
            ("announce.interval=0s", "announce.interval"),
            ("server.advertise=nohost", "server.advertise"),
            ("server.advertise=0.0.0.0:80", "server.advertise"),
            ("announce.jitter=1.0", "announce.jitter"),
            ("announce.topic=a b", "announce.topic"),
            ("announce.solicit_topic=a b", "announce.solicit_topic"),
            (
                "announce.hmac_key_file=/does/not/exist",
                "announce.hmac_key_file",
            ),
            ("server.bogus=1", "bogus"),
            ("server.meta.weight=0", "server.meta.weight"),
            ("server.meta.weight=\"heavy\"", "server.meta.weight"),
            ("data.max_keys=0", "data.max_keys"),
            ("data.max_bytes=0", "data.max_bytes"),
        ] {
            let err = load(&[set]).unwrap_err().to_string();
            assert!(err.contains(key), "{set}: {err}");
        }
    }
}
