//! What the proxy is told by its owner: the settings of proxied requests and the metrics they count into.
//!
//! The api-server builds both from its own configuration (`[proxy]`) and metrics registry, so this crate knows
//! neither the config file nor the metric names.

use std::time::Duration;

use svc::{Counter, CounterVec, Gauge, Histogram, HistogramVec};

use crate::listener::ConnectionErrors;
use crate::traffic::Traffic;

/// Timeouts, retries and headers of proxied requests.
#[derive(Debug, Clone)]
pub struct ProxySettings {
    /// Bound on opening a connection to a data server.
    pub connect_timeout: Duration,
    /// Bound on waiting for the server: for the response head once it has the whole request, and for each pause
    /// while it reads the request body or sends the response.
    pub try_timeout: Duration,
    /// Bound on finding a server and getting a response head, all tries together; never on a body that keeps
    /// moving (the time a streamed request body takes to go up does not count).
    pub total_timeout: Duration,
    /// Largest request body accepted (413 beyond it); `None` for no limit.
    pub max_body_bytes: Option<u64>,
    /// How long an upgraded connection (WebSocket) may be silent both ways before it is closed.
    pub tunnel_idle_timeout: Duration,
    /// Relay tunnels on io_uring threads when the kernel allows it (else, and when false, on the workers).
    pub tunnel_io_uring: bool,
    /// Most tries per request (first try included).
    pub max_tries: u32,
    /// Retries may add at most this share of the requests (plus the floor below).
    pub retry_budget_ratio: f64,
    /// Retries always allowed per second, whatever the traffic.
    pub retry_budget_min_per_sec: f64,
    /// Pause before a retry, jittered between 0.5x and 1.5x.
    pub retry_backoff: Duration,
    /// Whether a 5xx answer counts as a failure of the server for passive health (ejection).
    pub eject_on_5xx: bool,
    /// Peers whose `X-Forwarded-*` and `Forwarded` headers are kept and appended to; from anyone else they are
    /// replaced, so a client cannot forge its address.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// One log line per proxied request (target `api_server::access`).
    pub access_log: bool,
    /// How long after the start a request that finds no live server waits for one (see [`Proxy::new`]).
    ///
    /// [`Proxy::new`]: crate::Proxy::new
    pub warmup: Duration,
}

/// Metric handles the proxy counts into; cheap to clone (each handle is shared with the registry that renders it).
#[derive(Debug, Clone)]
pub struct ProxyMetrics {
    /// Proxied requests by final status code (label: the status).
    pub requests: CounterVec,
    /// Tries by upstream id (label: the server's id).
    pub upstream_requests: CounterVec,
    /// Retries (tries after the first).
    pub retries: Counter,
    /// Passive-health ejections caused by the proxy's reports.
    pub ejections: Counter,
    /// Time until the response head, all tries included.
    pub latency: Histogram,
    /// Time from the start of the try that answered until its response head, by data server id (label `upstream`).
    pub upstream_latency: HistogramVec,
    /// Tries per request (1 when the first server answered).
    pub tries: Histogram,
    /// Client connections the proxy closed, by reason (slow or oversized heads, malformed or unsupported requests,
    /// stalled or oversized bodies, clients gone, connections over the limit).
    pub connections_closed: ConnectionErrors,
    /// Request bodies whose trailer fields were dropped (the proxy re-frames chunked bodies without them).
    pub trailers_dropped: Counter,
    /// Requests that came back to this proxy (its own `Via` token in them), answered 508.
    pub loops: Counter,
    /// Client headers not forwarded, by reason: `underscore` (a name with `_`), `untrusted` (client-address and
    /// forwarding headers, or foreign `Via` elements, from a peer outside `trusted_proxies`).
    pub headers_dropped: CounterVec,
    /// Upgraded connections (WebSocket) open now.
    pub tunnels_open: Gauge,
    /// Upgraded connections closed, by reason (`client_closed`, `server_closed`, `client_stalled`, `server_stalled`,
    /// `idle`, `drain`, `error`).
    pub tunnels_closed: CounterVec,
    /// Idle kept-alive client connections in the parking lot now, out of any task (see `park`).
    pub parked: Gauge,
    /// Tries and latency per server over the last minutes, for the dashboard (not a metric of the registry:
    /// see [`Traffic`]).
    pub traffic: Traffic,
}
