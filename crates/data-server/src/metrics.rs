//! `/metrics`: requests served and their duration, the announcer's counters (heartbeats,
//! failures per nsqd), build and process metrics.

use discovery::Announcer;
use svc::{CounterVec, Gauge, HistogramVec, Registry};

/// The data-server's metrics.
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Registry,
    /// Requests by matched route (`/kv/{key}`), counted when they start.
    pub requests: CounterVec,
    /// Requests whose handler has not returned yet.
    pub in_flight: Gauge,
    /// Time until the handler returned the response head, by route and status code.
    pub duration: HistogramVec,
}

impl Metrics {
    /// Registers the metrics; the announcer's are read from it at each scrape.
    pub fn new(announcer: Option<Announcer>) -> Self {
        let registry = Registry::for_binary("data_server");
        let requests = registry.counter_vec(
            "data_server_requests_total",
            "HTTP requests received, by route.",
            "route",
        );
        let in_flight = registry.gauge(
            "data_server_requests_in_flight",
            "HTTP requests being handled.",
        );
        let duration = registry.histogram_family(
            "data_server_request_duration_seconds",
            "Time until the response head, by route and status code.",
            &["route", "code"],
            svc::LATENCY_BUCKETS,
        );
        if let Some(a) = &announcer {
            announcer_metrics(&registry, a);
        }
        Metrics {
            registry,
            requests,
            in_flight,
            duration,
        }
    }

    /// `/metrics`: the content type and text in the format `accept` asks for.
    pub fn scrape(&self, accept: Option<&str>) -> (&'static str, String) {
        self.registry.scrape(accept)
    }
}

/// The announcer's counters, read from it at each scrape rather than mirrored into counters that
/// could drift from its own.
fn announcer_metrics(registry: &Registry, a: &Announcer) {
    let read = |f: fn(&discovery::AnnouncerStats) -> u64| {
        let a = a.clone();
        move || f(&a.stats())
    };
    registry.counter_fn(
        "data_server_heartbeats_sent_total",
        "Up heartbeats an nsqd accepted.",
        read(|s| s.heartbeats_sent),
    );
    registry.counter_fn(
        "data_server_leaving_heartbeats_sent_total",
        "Leaving heartbeats an nsqd accepted.",
        read(|s| s.leaving_sent),
    );
    registry.counter_fn(
        "data_server_heartbeats_failed_total",
        "Heartbeats no nsqd accepted.",
        read(|s| s.failed_heartbeats),
    );
    registry.counter_fn(
        "data_server_heartbeats_skipped_unhealthy_total",
        "Heartbeats skipped because the health check failed.",
        read(|s| s.skipped_unhealthy),
    );
    let reachable = read(|s| u64::from(s.reachable));
    registry.gauge_fn(
        "data_server_nsqd_reachable",
        "1 when the last heartbeat reached an nsqd.",
        move || reachable() as i64,
    );
    let solicited = a.clone();
    registry.counter_family_fn(
        "data_server_solicitations_total",
        "Solicitations received from starting api-servers, by outcome (answered: its heartbeat was published; unanswered: admitted but not published; duplicate, rate_limited, rejected, malformed, stale).",
        move || {
            solicited
                .stats()
                .solicitations
                .by_outcome()
                .into_iter()
                .map(|(outcome, n)| (vec![("outcome", outcome.to_string())], n))
                .collect()
        },
    );
    let subscribed = a.clone();
    registry.gauge_fn(
        "data_server_solicitations_subscribed",
        "1 while subscribed to solicitations on at least one nsqd.",
        move || i64::from(subscribed.stats().solicitations.subscribed),
    );
    let a = a.clone();
    registry.counter_family_fn(
        "data_server_publish_failures_total",
        "Failed heartbeat publishes per nsqd (including ones another nsqd then took).",
        move || {
            a.stats()
                .publish_failures
                .into_iter()
                .map(|(nsqd, n)| (vec![("nsqd", nsqd.to_string())], n))
                .collect()
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_failures_per_nsqd() {
        let cfg = discovery::AnnouncerConfig::new("d", "127.0.0.1:1", ["127.0.0.1:4150"]);
        let metrics = Metrics::new(Some(Announcer::new(cfg).unwrap()));
        metrics.requests.with("/whoami").inc();
        let (_, text) = metrics.scrape(None);
        for line in [
            "data_server_requests_total{route=\"/whoami\"} 1",
            "data_server_heartbeats_sent_total 0",
            "data_server_publish_failures_total{nsqd=\"127.0.0.1:4150\"} 0",
            "data_server_solicitations_total{outcome=\"rate_limited\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        assert!(text.contains("data_server_build_info{"), "{text}");
    }
}
