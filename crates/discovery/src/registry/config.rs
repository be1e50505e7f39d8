//! How the registry is configured, and the defaults.

use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;

use crate::HmacKey;

/// The default of `discovery.ttl` (ARCHITECTURE.md §4.3).
pub const DEFAULT_TTL: Duration = Duration::from_secs(10);
/// Events buffered per subscriber before a slow one starts missing some.
pub const DEFAULT_EVENT_CAPACITY: usize = 1024;

/// How the registry decides who may register and for how long.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// A server is live while its last heartbeat was received less than this long ago.
    pub ttl: Duration,
    /// When not empty, only JSON heartbeats signed with one of these keys (the one their `kid` names) are accepted,
    /// and only while their signed `sent_at_ms` is within one `ttl` of this host's clock, so that a captured
    /// heartbeat cannot be replayed later to bring back a server that left or died. Plain `host:port` bodies are
    /// then refused, unless `allowed_networks` is set and holds their address. Several keys are for a rotation.
    pub hmac_keys: Vec<HmacKey>,
    /// When not empty, only IP addresses inside these networks may register; hostnames are then refused too,
    /// because checking them would need a DNS answer that can change after the check.
    pub allowed_networks: Vec<IpNet>,
    /// The api-server's own listen addresses (proxy and admin), which may never register: routing there would
    /// loop. Compared as socket addresses; `0.0.0.0:p` / `[::]:p` also match loopback and `local_ips` on port p.
    pub self_addrs: Vec<String>,
    /// This host's own IPs, for matching unspecified self addresses (optional).
    pub local_ips: Vec<IpAddr>,
    /// Broadcast buffer per event subscriber.
    pub event_capacity: usize,
}

impl RegistryConfig {
    /// Defaults with the given TTL: no key, every network allowed, no self addresses.
    pub fn new(ttl: Duration) -> RegistryConfig {
        RegistryConfig {
            ttl,
            hmac_keys: Vec::new(),
            allowed_networks: Vec::new(),
            self_addrs: Vec::new(),
            local_ips: Vec::new(),
            event_capacity: DEFAULT_EVENT_CAPACITY,
        }
    }
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig::new(DEFAULT_TTL)
    }
}
