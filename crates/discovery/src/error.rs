//! Configuration errors of the registry and the balancer.

/// A [`RegistryConfig`](crate::RegistryConfig) or [`BalancerConfig`](crate::BalancerConfig) that cannot work.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The TTL is zero: every server would expire on arrival.
    #[error("discovery ttl must be greater than zero, found 0s")]
    ZeroTtl,
    /// A self address is not `host:port`.
    #[error("self address {addr:?} is not a valid listen address: {detail}")]
    BadSelfAddr {
        /// The configured text.
        addr: String,
        /// What is wrong with it.
        detail: String,
    },
    /// The ejectable share is outside `0.0..=1.0`.
    #[error("balancer max_ejected_share must be within 0.0..=1.0, found {0}")]
    BadEjectedShare(f64),
    /// The ejection times are zero or the cap is below the base.
    #[error(
        "balancer ejection times must satisfy 0 < base <= max, found base {base:?} and max {max:?}"
    )]
    BadEjectionTimes {
        /// The base ejection time.
        base: std::time::Duration,
        /// The cap.
        max: std::time::Duration,
    },
    /// The failure threshold is zero.
    #[error("balancer failure_threshold must be at least 1, found 0")]
    ZeroFailureThreshold,
    /// An unknown strategy name.
    #[error("unknown balancer strategy {0:?}: expected {names}", names = crate::Strategy::expected_names())]
    UnknownStrategy(String),
}
