//! What the handlers share: the registry, the balancer, the bus state, the heartbeat subscription and metrics.

use std::sync::{Arc, Mutex, PoisonError};

use discovery::{Balancer, Registry};
use svc::{Counter, CounterVec, Gauge, Histogram, HistogramVec};
use tokio::time::Instant;

use crate::bus::Bus;
use crate::feed::Feed;

/// Shared state of both listeners; cheap to clone.
#[derive(Debug, Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    instance: String,
    registry: Registry,
    balancer: Balancer,
    bus: Bus,
    metrics: Metrics,
    shutdown: svc::Shutdown,
    heartbeats: ConsumerSlot,
    traffic: proxy::Traffic,
    feed: Feed,
}

/// The heartbeat consumer once it runs; shared with the metrics, which read its counters at each scrape.
type ConsumerSlot = Arc<Mutex<Option<nsq::Consumer>>>;

impl AppState {
    /// State around a registry and its balancer.
    pub fn new(
        instance: String,
        balancer: Balancer,
        bus: Bus,
        shutdown: svc::Shutdown,
    ) -> AppState {
        let registry = balancer.registry().clone();
        let heartbeats = ConsumerSlot::default();
        let metrics = Metrics::new(&registry, &bus, &heartbeats);
        AppState {
            inner: Arc::new(Inner {
                instance,
                registry,
                balancer,
                bus,
                metrics,
                shutdown,
                heartbeats,
                traffic: proxy::Traffic::new(),
                feed: Feed::default(),
            }),
        }
    }

    /// This instance's name.
    pub fn instance(&self) -> &str {
        &self.inner.instance
    }

    /// The registry.
    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    /// The balancer.
    pub fn balancer(&self) -> &Balancer {
        &self.inner.balancer
    }

    /// The bus state.
    pub fn bus(&self) -> &Bus {
        &self.inner.bus
    }

    /// Metrics handles.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// The proxy's tries and latency per server over the last minutes (the dashboard's sparklines).
    pub fn traffic(&self) -> &proxy::Traffic {
        &self.inner.traffic
    }

    /// Recent membership changes with their times (the dashboard's timeline), sent to the event streams, and
    /// the serialized forms those streams share.
    pub fn feed(&self) -> &Feed {
        &self.inner.feed
    }

    /// The process's shutdown switch.
    pub fn shutdown(&self) -> &svc::Shutdown {
        &self.inner.shutdown
    }

    /// Hands the heartbeat consumer to the state, so readiness can see its connections.
    pub fn set_heartbeat_consumer(&self, consumer: nsq::Consumer) {
        *self.lock_consumer() = Some(consumer);
    }

    /// Takes the heartbeat consumer back, to stop it.
    pub fn take_heartbeat_consumer(&self) -> Option<nsq::Consumer> {
        self.lock_consumer().take()
    }

    /// Counters of the heartbeat consumer (zeros before it starts or after it stopped).
    pub fn heartbeat_consumer_stats(&self) -> nsq::ConsumerStats {
        consumer_stats(&self.inner.heartbeats)
    }

    /// Open nsqd connections of the heartbeat consumer.
    pub fn heartbeat_connections(&self) -> i64 {
        self.lock_consumer()
            .as_ref()
            .map_or(0, |c| c.stats().connections)
    }

    fn lock_consumer(&self) -> std::sync::MutexGuard<'_, Option<nsq::Consumer>> {
        self.inner
            .heartbeats
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

fn consumer_stats(slot: &ConsumerSlot) -> nsq::ConsumerStats {
    slot.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .as_ref()
        .map(nsq::Consumer::stats)
        .unwrap_or_default()
}

/// The process's metrics; `/metrics` renders them.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: svc::Registry,
    /// Proxied requests by final status code (label `code`).
    pub requests: CounterVec,
    /// Proxied requests by upstream id.
    pub upstream_requests: CounterVec,
    /// Retries (tries after the first).
    pub retries: Counter,
    /// Passive-health ejections.
    pub ejections: Counter,
    /// Request bodies whose trailer fields the proxy dropped.
    pub trailers_dropped: Counter,
    /// Requests that came back to this api-server (its own `Via` token), answered 508.
    pub loops: Counter,
    /// Upgraded connections (WebSocket) open now.
    pub tunnels_open: Gauge,
    /// Client headers the proxy did not forward, by reason.
    pub headers_dropped: CounterVec,
    /// Upgraded connections closed, by reason.
    pub tunnels_closed: CounterVec,
    /// Idle kept-alive client connections parked out of their tasks now.
    pub parked_connections: Gauge,
    /// Proxied request latency, until the response head.
    pub latency: Histogram,
    /// Latency of the try that answered, until its response head, by data server id.
    pub upstream_latency: HistogramVec,
    /// Tries per proxied request.
    pub tries: Histogram,
    /// Open `/registry/events` streams.
    pub event_streams: Gauge,
    /// Client connections the server closed, by reason (slow or oversized request heads, malformed requests).
    pub connection_errors: CounterVec,
}

impl Metrics {
    fn new(discovery: &Registry, bus: &Bus, heartbeats: &ConsumerSlot) -> Metrics {
        let m = svc::Registry::for_binary("api");
        let live = discovery.clone();
        m.gauge_fn("api_live_servers", "Data servers live now.", move || {
            live.live_count(Instant::now()) as i64
        });
        let b = bus.clone();
        m.gauge_fn(
            "api_bus_alive",
            "1 while canaries come back through NSQ, 0 while the bus is down (self-preservation).",
            move || i64::from(b.alive()),
        );
        let d = discovery.clone();
        m.gauge_fn(
            "api_self_preservation",
            "1 while expiry is frozen because the bus is down.",
            move || i64::from(d.self_preservation()),
        );
        let d = discovery.clone();
        m.gauge_fn(
            "api_unauthenticated_heartbeats",
            "1 when heartbeats are accepted unauthenticated (no HMAC key, whatever allowed_networks says).",
            move || i64::from(d.accepts_unauthenticated()),
        );
        let b = bus.clone();
        m.gauge_fn(
            "api_heartbeat_connections",
            "nsqd connections of the heartbeat consumer.",
            move || b.heartbeat_connections(),
        );
        // The bus's counters, in the order `Bus::counters` returns them.
        let bus_counters = [
            ("api_canaries_published_total", "Canaries published."),
            ("api_canaries_received_total", "Fresh canaries received."),
            (
                "api_canary_publish_failures_total",
                "Canary publishes that failed.",
            ),
            ("api_bus_down_total", "Times the bus was found down."),
        ];
        for (i, (name, help)) in bus_counters.into_iter().enumerate() {
            let b = bus.clone();
            m.counter_fn(name, help, move || {
                let (published, received, failed, down) = b.counters();
                [published, received, failed, down][i]
            });
        }
        let d = discovery.clone();
        m.counter_family_fn(
            "api_heartbeats_total",
            "Heartbeat messages by outcome (and reason when ignored or rejected).",
            move || {
                d.outcome_counts()
                    .into_iter()
                    .map(|c| {
                        let mut labels: svc::Labels = vec![("outcome", c.outcome.to_owned())];
                        labels.extend(c.reason.map(|r| ("reason", r.to_owned())));
                        (labels, c.count)
                    })
                    .collect()
            },
        );
        heartbeat_consumer_metrics(&m, heartbeats);
        let d = discovery.clone();
        m.counter_family_fn(
            "api_registry_events_total",
            "Registry changes by kind; kind=\"expire\" counts expirations.",
            move || {
                d.event_counts()
                    .into_iter()
                    .map(|(kind, count)| (vec![("kind", kind.as_str().to_owned())], count))
                    .collect()
            },
        );
        Metrics {
            requests: m.counter_vec(
                "api_proxy_requests_total",
                "Proxied requests by final status code.",
                "code",
            ),
            upstream_requests: m.counter_vec(
                "api_proxy_upstream_requests_total",
                "Proxied tries by upstream id.",
                "upstream",
            ),
            retries: m.counter("api_proxy_retries_total", "Tries after the first."),
            ejections: m.counter("api_proxy_ejections_total", "Passive-health ejections."),
            trailers_dropped: m.counter(
                "api_proxy_trailers_dropped_total",
                "Request bodies whose trailer fields were dropped (chunked bodies are re-framed).",
            ),
            loops: m.counter(
                "api_proxy_loops_total",
                "Requests that came back to this api-server (its own Via token), answered 508.",
            ),
            headers_dropped: m.counter_vec(
                "api_proxy_headers_dropped_total",
                "Client headers not forwarded: names with '_', or address headers from an untrusted peer.",
                "reason",
            ),
            tunnels_open: m.gauge(
                "api_proxy_tunnels_open",
                "Upgraded connections (WebSocket) open now.",
            ),
            tunnels_closed: m.counter_vec(
                "api_proxy_tunnels_closed_total",
                "Upgraded connections closed, by reason.",
                "reason",
            ),
            parked_connections: m.gauge(
                "api_proxy_parked_connections",
                "Idle kept-alive client connections parked out of their tasks now.",
            ),
            latency: m.histogram(
                "api_proxy_request_duration_seconds",
                "Time until the response head, all tries included.",
                svc::LATENCY_BUCKETS,
            ),
            upstream_latency: m.histogram_vec(
                "api_proxy_upstream_duration_seconds",
                "Time from the start of the try that answered until its response head, by data server id.",
                "upstream",
                svc::LATENCY_BUCKETS,
            ),
            tries: m.histogram(
                "api_proxy_tries",
                "Tries per proxied request (1: the first server answered).",
                TRIES_BUCKETS,
            ),
            event_streams: m.gauge("api_event_streams", "Open /registry/events streams."),
            connection_errors: m.counter_vec(
                "api_http_connections_closed_total",
                "Client connections closed by the server, by reason.",
                "reason",
            ),
            registry: m,
        }
    }

    /// `/metrics`: the content type and text in the format `accept` asks for.
    pub fn scrape(&self, accept: Option<&str>) -> (&'static str, String) {
        self.registry.scrape(accept)
    }
}

/// Upper bounds of `api_proxy_tries` (`proxy.max_tries` is small).
const TRIES_BUCKETS: &[f64] = &[1.0, 2.0, 3.0, 4.0, 5.0, 10.0];

/// The heartbeat consumer's counters, read from it at each scrape (zeros before it starts).
fn heartbeat_consumer_metrics(m: &svc::Registry, slot: &ConsumerSlot) {
    type Read = fn(&nsq::ConsumerStats) -> u64;
    let counters: [(&str, &str, Read); 3] = [
        (
            "api_heartbeat_messages_received_total",
            "Heartbeat messages received from nsqd.",
            |c| c.received,
        ),
        (
            "api_heartbeat_messages_finished_total",
            "Heartbeat messages finished.",
            |c| c.finished,
        ),
        (
            "api_heartbeat_messages_requeued_total",
            "Heartbeat messages requeued (handler failures).",
            |c| c.requeued,
        ),
    ];
    for (name, help, read) in counters {
        let slot = slot.clone();
        m.counter_fn(name, help, move || read(&consumer_stats(&slot)));
    }
    let slot = slot.clone();
    m.gauge_fn(
        "api_heartbeat_messages_in_flight",
        "Heartbeat messages received and not answered yet.",
        move || consumer_stats(&slot).in_flight,
    );
}
