//! Shared plumbing of the `data-server`, `api-server` and `archiver` binaries: config loading
//! with one-line errors, human durations and addresses, logging, graceful shutdown, Prometheus
//! metrics, the `--version` text, and the request-id and trace layers both HTTP listeners put
//! around their routers ([`request_layers`]). No HTTP server lives here.
//!
//! A binary's config is a serde struct loaded from `-c FILE`, then environment variables
//! (`<PREFIX>__SECTION__KEY`), then `--set section.key=value` flags:
//!
//! ```
//! use serde::Deserialize;
//! use svc::{ConfigLoader, Fraction, HostPort, HumanDuration, Invalid, Validate};
//!
//! #[derive(Deserialize)]
//! #[serde(deny_unknown_fields, default)]
//! struct Announce {
//!     nsqd_tcp_addresses: Vec<HostPort>,
//!     interval: HumanDuration,
//!     jitter: Fraction,
//! }
//!
//! impl Default for Announce {
//!     fn default() -> Self {
//!         let interval = HumanDuration::from_secs(5);
//!         Announce { nsqd_tcp_addresses: Vec::new(), interval, jitter: Fraction::clamped(0.1) }
//!     }
//! }
//!
//! #[derive(Deserialize, Default)]
//! #[serde(deny_unknown_fields, default)]
//! struct Config {
//!     announce: Announce,
//! }
//!
//! impl Validate for Config {
//!     fn validate(&self) -> Result<(), Invalid> {
//!         self.announce.interval.require_positive("announce.interval")
//!     }
//! }
//!
//! let config: Config = ConfigLoader::new("DATA_SERVER")
//!     .with_env([("DATA_SERVER__ANNOUNCE__NSQD_TCP_ADDRESSES", "127.0.0.1:4150,nsqd:4150")])
//!     .set(["announce.interval=250ms"])
//!     .load()
//!     .unwrap_or_else(|err| svc::exit_on_config_error(err));
//! assert_eq!(config.announce.interval, HumanDuration::from_millis(250));
//! assert_eq!(config.announce.nsqd_tcp_addresses[1].to_string(), "nsqd:4150");
//!
//! let err = ConfigLoader::new("DATA_SERVER")
//!     .with_env([("DATA_SERVER__ANNOUNCE__INTERVAL", "0s")])
//!     .load::<Config>()
//!     .err()
//!     .unwrap();
//! assert_eq!(
//!     err.to_string(),
//!     r#"environment variable DATA_SERVER__ANNOUNCE__INTERVAL: announce.interval: expected a duration like "5s" or "250ms", found "0s" (must be > 0)"#
//! );
//! ```
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod config;
mod duration;
mod fraction;
mod host_port;
mod http_trace;
mod limits;
mod logging;
mod lookupd_addr;
mod metrics;
mod nsq_section;
mod shutdown;
mod version;

pub use config::{
    CONFIG_ERROR_EXIT_CODE, ConfigArgs, ConfigError, ConfigErrorKind, ConfigLoader, Invalid,
    Origin, Validate, exit_on_config_error,
};
pub use duration::{HumanDuration, ParseDurationError, human_duration};
pub use fraction::{Fraction, ParseFractionError};
pub use host_port::{Host, HostPort, ParseHostPortError};
pub use http_trace::{
    RequestLayers, RequestSpan, RequestTraceLayer, TracedListener, request_layers,
};
pub use limits::raise_nofile_limit;
pub use logging::{LogFormat, init_tracing};
pub use lookupd_addr::LookupdAddr;
pub use metrics::{
    Counter, CounterVec, Family, Format, Gauge, GaugeF64, GaugeGuard, GaugeVec, Histogram,
    HistogramVec, LATENCY_BUCKETS, Labels, Registry,
};
pub use nsq_section::{MAX_AUTH_SECRET_BYTES, NsqSection};
pub use shutdown::{DrainTimeout, FORCED_EXIT_CODE, Shutdown, shutdown_signal, with_timeout};
pub use version::{VERSION, commit, help_footer, long_version};
