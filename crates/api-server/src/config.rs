//! The api-server's configuration: serde structs with named defaults, validated once into values
//! the rest of the crate can trust.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use discovery::Strategy;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use svc::{HostPort, HumanDuration, Invalid, LookupdAddr, NsqSection, Validate};

/// Contract default of `discovery.topic`.
pub const DEFAULT_TOPIC: &str = "data_server_addr";
/// Contract default of `discovery.lookupd_poll_interval`.
pub const DEFAULT_LOOKUPD_POLL_INTERVAL: Duration = Duration::from_secs(2);
/// Contract default of `discovery.ttl`.
pub const DEFAULT_TTL: Duration = Duration::from_secs(10);
/// Contract default of `discovery.prune_interval`.
pub const DEFAULT_PRUNE_INTERVAL: Duration = Duration::from_secs(2);
/// Default of `shutdown.timeout`.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// Default of `shutdown.drain_grace`.
pub const DEFAULT_DRAIN_GRACE: Duration = Duration::from_secs(1);
/// Default of `server.header_read_timeout`.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Default of `server.keepalive_timeout` (nginx's `keepalive_timeout` is 75 s; clients that pool connections keep
/// them longer than a short timeout, Go's for 90 s, and would race its close).
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(75);
/// Default of `server.body_read_timeout` (nginx's `client_body_timeout`).
pub const DEFAULT_BODY_READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Default of `server.send_timeout` (nginx's `send_timeout`).
pub const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(60);
/// Connections the admin listener serves at once, whatever the proxy's load: its own reserve, so that `/healthz`,
/// `/readyz` and `/metrics` answer during a flood of proxy clients.
pub const ADMIN_MAX_CONNECTIONS: usize = 64;
/// File descriptors kept out of the proxy's default `server.max_connections`: the admin listener's reserve, NSQ
/// and nsqlookupd connections, logs and the like.
pub const FD_RESERVE: usize = 256;
/// Default of `server.max_header_bytes` (nginx's default allows 4 header lines of 8 KiB each).
pub const DEFAULT_MAX_HEADER_BYTES: usize = 32 * 1024;
/// Smallest `server.max_header_bytes` (hyper reads requests in buffers of at least this size).
pub const MIN_MAX_HEADER_BYTES: usize = 8192;
/// Most proxy worker threads (`server.workers`).
pub const MAX_WORKERS: usize = 256;
/// Suffix of the default canary topic, after `discovery.topic` without its own `#ephemeral`.
pub const CANARY_TOPIC_SUFFIX: &str = ".canary#ephemeral";
/// `discovery.solicit_rate` unless configured: answers per second a solicitation asks the fleet to stay under, the
/// steady heartbeat rate the registry is built for (100,000 servers every 5 s).
pub const DEFAULT_SOLICIT_RATE: f64 = 20_000.0;

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[server]`
    pub server: ServerConfig,
    /// `[discovery]`
    pub discovery: DiscoveryConfig,
    /// `[balancer]`
    pub balancer: BalancerSection,
    /// `[proxy]`
    pub proxy: ProxyConfig,
    /// `[shutdown]`
    pub shutdown: ShutdownConfig,
    /// `[nsq]`: TLS and AUTH towards nsqd and `https://` nsqlookupd.
    pub nsq: NsqSection,
}

/// `[server]`: where to listen.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// The proxy listener (port 0 picks a free port).
    pub listen: SocketAddr,
    /// The admin listener: registry, events, health, metrics, dashboard.
    pub admin_listen: SocketAddr,
    /// Name of this api-server instance (default: generated); used in the default channel name.
    pub instance: Option<String>,
    /// Time a client gets to send a request's headers, on both listeners, from the request's first byte (from the
    /// accept for a connection's first request); slower ones are disconnected.
    pub header_read_timeout: HumanDuration,
    /// How long a kept-alive client connection may sit idle between requests.
    pub keepalive_timeout: HumanDuration,
    /// Longest pause allowed in a request body (a stalled upload, or `Expect: 100-continue` and no body): then
    /// 408, the client's fault, counted, no server blamed. A body that keeps moving may take as long as it takes.
    pub body_read_timeout: HumanDuration,
    /// Longest pause allowed in the client's reading of a response; then the connection is closed.
    pub send_timeout: HumanDuration,
    /// Most proxy client connections open at once; beyond it a new connection gets a fast 503 and is closed.
    /// Default: half of the open-file limit (raised to its hard limit at start) less a reserve, since each client
    /// connection may hold one to a data server.
    pub max_connections: Option<usize>,
    /// Largest request head (request line and headers) accepted, in bytes; bigger ones are answered 431.
    pub max_header_bytes: usize,
    /// Proxy worker threads; 0 (the default) means one per available core.
    pub workers: usize,
}

impl ServerConfig {
    /// `max_connections` in effect, given the process's open-file limit.
    pub fn max_connections(&self, nofile_limit: u64) -> usize {
        self.max_connections.unwrap_or_else(|| {
            let limit = usize::try_from(nofile_limit).unwrap_or(usize::MAX);
            (limit.saturating_sub(FD_RESERVE) / 2).max(1)
        })
    }

    /// The number of proxy worker threads to run.
    pub fn workers(&self) -> usize {
        match self.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            instance: None,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT.into(),
            keepalive_timeout: DEFAULT_KEEPALIVE_TIMEOUT.into(),
            body_read_timeout: DEFAULT_BODY_READ_TIMEOUT.into(),
            send_timeout: DEFAULT_SEND_TIMEOUT.into(),
            max_connections: None,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            workers: 0,
        }
    }
}

/// `[discovery]`: where heartbeats come from and how long they count.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiscoveryConfig {
    /// The heartbeat topic.
    pub topic: String,
    /// Channel of this instance (default `api-server-<instance>#ephemeral`): each api-server needs its own,
    /// since NSQ gives each message of a channel to only one of its subscribers.
    pub channel: Option<String>,
    /// nsqlookupd HTTP addresses: `host:port`, or `https://host:port` (verified with `[nsq]`'s CA).
    pub lookupd_http_addresses: Vec<LookupdAddr>,
    /// nsqd TCP addresses to subscribe to directly.
    pub nsqd_tcp_addresses: Vec<HostPort>,
    /// How often nsqlookupd is polled.
    pub lookupd_poll_interval: HumanDuration,
    /// A server is live while heard from within this.
    pub ttl: HumanDuration,
    /// How often expired servers are swept (expiry is also checked on every read).
    pub prune_interval: HumanDuration,
    /// File holding the shared HMAC key; when set, only signed heartbeats are accepted. Shorthand for a
    /// one-element `hmac_key_files`; both may be set (the keys add up).
    pub hmac_key_file: Option<PathBuf>,
    /// Files of every key accepted (several during a rotation); a heartbeat's `kid` names the one checked.
    pub hmac_key_files: Vec<PathBuf>,
    /// CIDRs allowed to register (empty: any).
    pub allowed_networks: Vec<IpNet>,
    /// Topic of the bus-liveness canary (default `<topic>.canary#ephemeral`).
    pub canary_topic: Option<String>,
    /// How often a canary is published to every known nsqd (default: ttl / 10, at least 100ms).
    pub canary_interval: Option<HumanDuration>,
    /// The bus counts as down when no canary arrived for this long (default: ttl / 4, at least 3 intervals).
    pub canary_timeout: Option<HumanDuration>,
    /// Where the registry is saved when membership changes and loaded from at start (none: not saved), so a
    /// restarted api-server routes at once to the servers it knew, as unconfirmed until they are heard from.
    pub registry_file: Option<PathBuf>,
    /// Publish a solicitation at start, so that data servers answer at once instead of at their next heartbeat.
    pub solicit: bool,
    /// Topic of the solicitations (default `<topic>.solicit#ephemeral`).
    pub solicit_topic: Option<String>,
    /// Answers per second the solicitation's spread aims at: spread = known data servers / rate.
    pub solicit_rate: f64,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        DiscoveryConfig {
            topic: DEFAULT_TOPIC.to_owned(),
            channel: None,
            lookupd_http_addresses: Vec::new(),
            nsqd_tcp_addresses: Vec::new(),
            lookupd_poll_interval: DEFAULT_LOOKUPD_POLL_INTERVAL.into(),
            ttl: DEFAULT_TTL.into(),
            prune_interval: DEFAULT_PRUNE_INTERVAL.into(),
            hmac_key_file: None,
            hmac_key_files: Vec::new(),
            allowed_networks: Vec::new(),
            canary_topic: None,
            canary_interval: None,
            canary_timeout: None,
            registry_file: None,
            solicit: true,
            solicit_topic: None,
            solicit_rate: DEFAULT_SOLICIT_RATE,
        }
    }
}

impl DiscoveryConfig {
    /// Every configured key file: `hmac_key_file`, then `hmac_key_files`.
    pub fn hmac_key_paths(&self) -> impl Iterator<Item = &PathBuf> {
        self.hmac_key_file.iter().chain(&self.hmac_key_files)
    }

    /// The canary topic in effect: by default `discovery.topic` without its `#ephemeral` suffix (a
    /// name carries it once, at the end), then `.canary#ephemeral`.
    pub fn canary_topic(&self) -> String {
        self.canary_topic.clone().unwrap_or_else(|| {
            let base = self.topic.strip_suffix("#ephemeral").unwrap_or(&self.topic);
            format!("{base}{CANARY_TOPIC_SUFFIX}")
        })
    }

    /// The solicitation topic in effect: `solicit_topic`, else [`discovery::solicit_topic`] of `topic`.
    pub fn solicit_topic(&self) -> String {
        self.solicit_topic
            .clone()
            .unwrap_or_else(|| discovery::solicit_topic(&self.topic))
    }

    /// The canary interval in effect.
    pub fn canary_interval(&self) -> Duration {
        self.canary_interval
            .map(Duration::from)
            .unwrap_or_else(|| (self.ttl.get() / 10).max(Duration::from_millis(100)))
    }

    /// The canary timeout in effect.
    pub fn canary_timeout(&self) -> Duration {
        self.canary_timeout
            .map(Duration::from)
            .unwrap_or_else(|| (self.ttl.get() / 4).max(3 * self.canary_interval()))
    }
}

/// `[balancer]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BalancerSection {
    /// `p2c` (default), `round_robin` or `random`.
    pub strategy: Strategy,
    /// First ejection time after a failure.
    pub base_ejection: HumanDuration,
    /// Longest ejection time.
    pub max_ejection: HumanDuration,
    /// Never eject more than this share of the live servers.
    pub max_ejected_share: f64,
}

impl Default for BalancerSection {
    fn default() -> Self {
        let d = discovery::BalancerConfig::default();
        BalancerSection {
            strategy: d.strategy,
            base_ejection: d.base_ejection.into(),
            max_ejection: d.max_ejection.into(),
            max_ejected_share: d.max_ejected_share,
        }
    }
}

/// `[proxy]`: timeouts and retries of proxied requests.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    /// Bound on opening a connection to a data server.
    pub connect_timeout: HumanDuration,
    /// Bound on waiting for a data server: for the response head once it has the whole request, and for each
    /// pause while it reads the request body or sends the response.
    pub try_timeout: HumanDuration,
    /// Bound on finding a server and getting a response head, all tries together; never on a body that keeps
    /// moving (an upload's transfer time does not count).
    pub total_timeout: HumanDuration,
    /// Largest request body accepted, in bytes; bigger ones get 413. Off when absent.
    pub max_body_bytes: Option<u64>,
    /// An upgraded connection (WebSocket) silent both ways for this long is closed.
    pub tunnel_idle_timeout: HumanDuration,
    /// Relay tunnels on io_uring threads (fewer system calls per message) when the kernel allows it; when it
    /// refuses (a container's seccomp profile, `kernel.io_uring_disabled`), tunnels are relayed on the proxy's
    /// workers and a warning says so. False: always on the workers.
    pub tunnel_io_uring: bool,
    /// Most tries per request (first try included).
    pub max_tries: u32,
    /// Retries may add at most this share of the requests (plus the floor below), so that retries cannot
    /// multiply an outage.
    pub retry_budget_ratio: f64,
    /// Retries always allowed per second, whatever the traffic (so a quiet proxy can still retry).
    pub retry_budget_min_per_sec: f64,
    /// Pause before a retry, jittered between 0.5x and 1.5x.
    pub retry_backoff: HumanDuration,
    /// Whether a 5xx answer counts as a failure of the server for passive health (ejection).
    pub eject_on_5xx: bool,
    /// Peers (CIDRs) whose `X-Forwarded-*` and `Forwarded` headers are kept and appended to; from anyone else
    /// they are replaced, so a client cannot forge its address.
    pub trusted_proxies: Vec<IpNet>,
    /// One log line per proxied request (method, path, status, upstream, tries, duration) at info level.
    pub access_log: bool,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            connect_timeout: HumanDuration::from_millis(500),
            try_timeout: HumanDuration::from_secs(10),
            total_timeout: HumanDuration::from_secs(30),
            max_body_bytes: None,
            tunnel_idle_timeout: HumanDuration::from_secs(3600),
            tunnel_io_uring: true,
            max_tries: 3,
            retry_budget_ratio: 0.2,
            retry_budget_min_per_sec: 10.0,
            retry_backoff: HumanDuration::from_millis(5),
            eject_on_5xx: false,
            trusted_proxies: Vec::new(),
            access_log: true,
        }
    }
}

/// `[shutdown]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// Bound on draining everything at shutdown.
    pub timeout: HumanDuration,
    /// After the listeners close, open client connections are still served this long, each response saying
    /// `Connection: close`, so that no client loses a request to a keep-alive connection closed under it.
    pub drain_grace: HumanDuration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            timeout: DEFAULT_SHUTDOWN_TIMEOUT.into(),
            drain_grace: DEFAULT_DRAIN_GRACE.into(),
        }
    }
}

impl Config {
    /// The instance name in effect (generated once when not configured).
    pub fn instance(&self) -> String {
        self.server.instance.clone().unwrap_or_else(|| {
            use rand::Rng;
            format!("{:08x}", rand::rng().random::<u32>())
        })
    }

    /// The channel for `instance`.
    pub fn channel(&self, instance: &str) -> String {
        self.discovery
            .channel
            .clone()
            .unwrap_or_else(|| format!("api-server-{instance}#ephemeral"))
    }
}

impl Validate for Config {
    fn validate(&self) -> Result<(), Invalid> {
        self.nsq.validate("nsq")?;
        self.nsq
            .conn()
            .map_err(|err| Invalid::new("nsq", "TLS files the NSQ client can use", err))?;
        let d = &self.discovery;
        if nsq::validate_topic(&d.topic).is_err() {
            return Err(Invalid::new(
                "discovery.topic",
                "an NSQ topic name ([.a-zA-Z0-9_-], 1-64 bytes)",
                format!("{:?}", d.topic),
            ));
        }
        if let Some(channel) = &d.channel
            && nsq::validate_channel(channel).is_err()
        {
            return Err(Invalid::new(
                "discovery.channel",
                "an NSQ channel name ([.a-zA-Z0-9_-], optional #ephemeral, 1-64 bytes)",
                format!("{channel:?}"),
            ));
        }
        if let Some(instance) = &self.server.instance
            && nsq::validate_channel(&format!("api-server-{instance}#ephemeral")).is_err()
        {
            return Err(Invalid::new(
                "server.instance",
                "a short name of [.a-zA-Z0-9_-] (it becomes part of the channel name)",
                format!("{instance:?}"),
            ));
        }
        let canary = d.canary_topic();
        if nsq::validate_topic(&canary).is_err() {
            return Err(Invalid::new(
                "discovery.canary_topic",
                "an NSQ topic name of at most 64 bytes (set it when discovery.topic is long)",
                format!("{canary:?}"),
            ));
        }
        let solicit = d.solicit_topic();
        if nsq::validate_topic(&solicit).is_err() {
            return Err(Invalid::new(
                "discovery.solicit_topic",
                "an NSQ topic name of at most 64 bytes (set it when discovery.topic is long)",
                format!("{solicit:?}"),
            ));
        }
        if !(d.solicit_rate.is_finite() && d.solicit_rate >= 1.0) {
            return Err(Invalid::new(
                "discovery.solicit_rate",
                "answers per second, at least 1",
                d.solicit_rate,
            ));
        }
        if d.lookupd_http_addresses.is_empty() && d.nsqd_tcp_addresses.is_empty() {
            return Err(Invalid::new(
                "discovery.lookupd_http_addresses",
                "at least one nsqlookupd HTTP address or one discovery.nsqd_tcp_addresses entry",
                "none",
            ));
        }
        d.lookupd_poll_interval
            .require_positive("discovery.lookupd_poll_interval")?;
        d.ttl.require_positive("discovery.ttl")?;
        d.prune_interval
            .require_positive("discovery.prune_interval")?;
        if let Some(i) = d.canary_interval {
            i.require_positive("discovery.canary_interval")?;
        }
        if let Some(t) = d.canary_timeout {
            t.require_positive("discovery.canary_timeout")?;
        }
        if d.canary_timeout() <= d.canary_interval() {
            return Err(Invalid::new(
                "discovery.canary_timeout",
                format!(
                    "more than discovery.canary_interval ({})",
                    HumanDuration(d.canary_interval())
                ),
                HumanDuration(d.canary_timeout()),
            ));
        }
        if self.server.listen == self.server.admin_listen && self.server.listen.port() != 0 {
            return Err(Invalid::new(
                "server.admin_listen",
                "an address other than server.listen",
                self.server.admin_listen,
            ));
        }
        self.server
            .header_read_timeout
            .require_positive("server.header_read_timeout")?;
        self.server
            .keepalive_timeout
            .require_positive("server.keepalive_timeout")?;
        self.server
            .body_read_timeout
            .require_positive("server.body_read_timeout")?;
        self.server
            .send_timeout
            .require_positive("server.send_timeout")?;
        if self.server.max_connections == Some(0) {
            return Err(Invalid::new(
                "server.max_connections",
                "at least 1 (absent: from the open-file limit)",
                0,
            ));
        }
        if self.server.max_header_bytes < MIN_MAX_HEADER_BYTES {
            return Err(Invalid::new(
                "server.max_header_bytes",
                format!("at least {MIN_MAX_HEADER_BYTES}"),
                self.server.max_header_bytes,
            ));
        }
        if self.server.workers > MAX_WORKERS {
            return Err(Invalid::new(
                "server.workers",
                format!("at most {MAX_WORKERS} (0: one per core)"),
                self.server.workers,
            ));
        }
        if self.shutdown.drain_grace.get() >= self.shutdown.timeout.get() {
            return Err(Invalid::new(
                "shutdown.drain_grace",
                format!("less than shutdown.timeout ({})", self.shutdown.timeout),
                self.shutdown.drain_grace,
            ));
        }
        let b = &self.balancer;
        b.base_ejection.require_positive("balancer.base_ejection")?;
        if b.max_ejection < b.base_ejection {
            return Err(Invalid::new(
                "balancer.max_ejection",
                format!("at least balancer.base_ejection ({})", b.base_ejection),
                b.max_ejection,
            ));
        }
        if !(0.0..=1.0).contains(&b.max_ejected_share) {
            return Err(Invalid::new(
                "balancer.max_ejected_share",
                "a share within 0.0..=1.0",
                b.max_ejected_share,
            ));
        }
        let p = &self.proxy;
        p.connect_timeout
            .require_positive("proxy.connect_timeout")?;
        p.try_timeout.require_positive("proxy.try_timeout")?;
        p.tunnel_idle_timeout
            .require_positive("proxy.tunnel_idle_timeout")?;
        p.total_timeout.require_positive("proxy.total_timeout")?;
        if p.max_tries == 0 {
            return Err(Invalid::new("proxy.max_tries", "at least 1", 0));
        }
        if p.max_body_bytes == Some(0) {
            return Err(Invalid::new(
                "proxy.max_body_bytes",
                "at least 1 (absent: no limit)",
                0,
            ));
        }
        if !(0.0..=1.0).contains(&p.retry_budget_ratio) {
            return Err(Invalid::new(
                "proxy.retry_budget_ratio",
                "a share within 0.0..=1.0",
                p.retry_budget_ratio,
            ));
        }
        if !(p.retry_budget_min_per_sec >= 0.0 && p.retry_budget_min_per_sec.is_finite()) {
            return Err(Invalid::new(
                "proxy.retry_budget_min_per_sec",
                "a rate of at least 0",
                p.retry_budget_min_per_sec,
            ));
        }
        self.shutdown.timeout.require_positive("shutdown.timeout")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use svc::ConfigLoader;

    fn load(flags: &[&str]) -> Result<Config, svc::ConfigError> {
        ConfigLoader::new("")
            .set(flags.iter().copied())
            .load::<Config>()
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = load(&["discovery.nsqd_tcp_addresses=127.0.0.1:4150"]).unwrap();
        assert_eq!(c.discovery.topic, "data_server_addr");
        assert_eq!(c.discovery.ttl.get(), Duration::from_secs(10));
        assert_eq!(c.discovery.prune_interval.get(), Duration::from_secs(2));
        assert_eq!(
            c.discovery.lookupd_poll_interval.get(),
            Duration::from_secs(2)
        );
        assert_eq!(c.balancer.strategy, Strategy::P2c);
        assert_eq!(c.channel("a1"), "api-server-a1#ephemeral");
        assert_eq!(
            c.discovery.canary_topic(),
            "data_server_addr.canary#ephemeral"
        );
        assert_eq!(c.discovery.canary_interval(), Duration::from_secs(1));
        assert!(c.discovery.solicit);
        assert_eq!(
            c.discovery.solicit_topic(),
            "data_server_addr.solicit#ephemeral"
        );
        assert_eq!(c.discovery.solicit_rate, DEFAULT_SOLICIT_RATE);
        assert_eq!(c.discovery.canary_timeout(), Duration::from_millis(3000));
    }

    #[test]
    fn an_ephemeral_topic_gets_a_valid_canary_topic() {
        let c = load(&[
            "discovery.topic=hb#ephemeral",
            "discovery.nsqd_tcp_addresses=127.0.0.1:4150",
        ])
        .unwrap();
        assert_eq!(c.discovery.canary_topic(), "hb.canary#ephemeral");
    }

    #[test]
    fn bad_values_name_their_key() {
        let err = load(&[
            "discovery.ttl=0s",
            "discovery.nsqd_tcp_addresses=127.0.0.1:4150",
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("discovery.ttl"), "{err}");
        let err = load(&["balancer.strategy=fastest"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("balancer.strategy"), "{err}");
        let err = load(&[
            "discovery.solicit_rate=0.5",
            "discovery.nsqd_tcp_addresses=127.0.0.1:4150",
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("discovery.solicit_rate"), "{err}");
        let err = load(&[]).unwrap_err().to_string();
        assert!(err.contains("discovery.lookupd_http_addresses"), "{err}");
        let err = load(&[
            "discovery.channel=bad name",
            "discovery.nsqd_tcp_addresses=127.0.0.1:4150",
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("discovery.channel"), "{err}");
        let err = load(&[
            "server.workers=100000",
            "discovery.nsqd_tcp_addresses=127.0.0.1:4150",
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("server.workers"), "{err}");
    }
}
