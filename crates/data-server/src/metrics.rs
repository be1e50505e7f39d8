//! `/metrics`: requests served, and the announcer's counters (heartbeats, failures per nsqd).

use std::fmt::Write as _;

use discovery::Announcer;
use svc::{CounterVec, Gauge, Registry};

/// The data-server's metrics.
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Registry,
    announcer: Option<Announcer>,
    /// Requests by matched route (`/kv/{key}`), counted when they start.
    pub requests: CounterVec,
    /// Requests whose handler has not returned yet.
    pub in_flight: Gauge,
}

impl Metrics {
    /// Registers the metrics; the announcer's are read from it at each scrape.
    pub fn new(announcer: Option<Announcer>) -> Self {
        let registry = Registry::new();
        let requests = registry.counter_vec(
            "data_server_requests_total",
            "HTTP requests received, by route.",
            "route",
        );
        let in_flight = registry.gauge(
            "data_server_requests_in_flight",
            "HTTP requests being handled.",
        );
        if let Some(a) = &announcer {
            let read = |f: fn(&discovery::AnnouncerStats) -> u64| {
                let a = a.clone();
                move || f(&a.stats()) as f64
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
            registry.gauge_fn(
                "data_server_nsqd_reachable",
                "1 when the last heartbeat reached an nsqd.",
                read(|s| u64::from(s.reachable)),
            );
        }
        Metrics {
            registry,
            announcer,
            requests,
            in_flight,
        }
    }

    /// The Prometheus text of every metric.
    pub fn render(&self) -> String {
        let mut out = self.registry.render();
        if let Some(announcer) = &self.announcer {
            // A family labelled by nsqd, kept by the announcer: written here rather than mirrored
            // into registry counters that would drift from the announcer's own.
            let name = "data_server_publish_failures_total";
            out.push_str(&format!(
                "# HELP {name} Failed heartbeat publishes per nsqd (including ones another nsqd then took).\n# TYPE {name} counter\n"
            ));
            for (nsqd, n) in announcer.stats().publish_failures {
                let _ = writeln!(out, "{name}{{nsqd=\"{}\"}} {n}", escape(&nsqd));
            }
        }
        out
    }
}

/// Escapes a label value as the text format requires.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_failures_per_nsqd() {
        let cfg = discovery::AnnouncerConfig::new("d", "127.0.0.1:1", ["127.0.0.1:4150"]);
        let metrics = Metrics::new(Some(Announcer::new(cfg).unwrap()));
        metrics.requests.with("/whoami").inc();
        let text = metrics.render();
        assert!(
            text.contains("data_server_requests_total{route=\"/whoami\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("data_server_heartbeats_sent_total 0"),
            "{text}"
        );
        assert!(
            text.contains("data_server_publish_failures_total{nsqd=\"127.0.0.1:4150\"} 0"),
            "{text}"
        );
        assert_eq!(escape("a\"b\\c"), "a\\\"b\\\\c");
    }
}
