//! Renders a registry in both formats and reads the lines back, as a scraper would.

use super::*;

fn registry_with_one_of_each() -> Registry {
    let registry = Registry::new();
    let requests = registry.counter("requests_total", "Requests proxied.");
    let dropped =
        registry.counter_vec("dropped_total", "Heartbeats dropped,\nby reason.", "reason");
    let outcomes =
        registry.counter_family("outcomes_total", "By two labels.", &["outcome", "reason"]);
    let live = registry.gauge("live_servers", "Servers in the registry.");
    let in_flight = registry.gauge_vec("in_flight", "Requests in flight.", "upstream");
    let ratio = registry.gauge_f64("bus_ratio", "A ratio with a \\ in its help.");
    registry.gauge_fn("answer", "Computed at scrape time.", || 42);
    registry.counter_fn("kept_elsewhere_total", "Read at scrape time.", || 7);
    registry.counter_family_fn("scraped_total", "Labelled, read at scrape time.", || {
        vec![
            (vec![("outcome", "joined".to_owned())], 2),
            (
                vec![
                    ("outcome", "rejected".to_owned()),
                    ("reason", "unsigned".to_owned()),
                ],
                1,
            ),
        ]
    });
    let latency = registry.histogram("latency_seconds", "Added latency.", &[0.001, 0.01]);
    let by_upstream = registry.histogram_vec(
        "upstream_seconds",
        "Upstream latency.",
        "upstream",
        LATENCY_BUCKETS,
    );

    requests.inc_by(3);
    dropped.with("bad \"json\"\n\\").inc();
    dropped.with("stale").inc_by(2);
    outcomes.with_values(&["rejected", "unsigned"]).inc();
    live.set(-2);
    std::mem::forget(in_flight.with("10.0.0.1:80").inc_guard());
    ratio.set(0.5);
    latency.observe(0.0005);
    latency.observe(0.005);
    latency.observe(5.0);
    latency.observe(f64::NAN);
    by_upstream.with("a:1").observe(0.002);
    registry
}

fn has(text: &str, line: &str) {
    assert!(
        text.lines().any(|l| l == line),
        "no line {line:?} in:\n{text}"
    );
}

#[test]
fn classic_text_has_every_kind() {
    let text = registry_with_one_of_each().render(Format::Prometheus);
    for line in [
        "# HELP requests_total Requests proxied.",
        "# TYPE requests_total counter",
        "requests_total 3",
        "# HELP dropped_total Heartbeats dropped,\\nby reason.",
        "dropped_total{reason=\"bad \\\"json\\\"\\n\\\\\"} 1",
        "dropped_total{reason=\"stale\"} 2",
        "# TYPE dropped_total counter",
        "# TYPE outcomes_total counter",
        "# TYPE in_flight gauge",
        "# TYPE upstream_seconds histogram",
        "# TYPE scraped_total counter",
        "outcomes_total{outcome=\"rejected\",reason=\"unsigned\"} 1",
        "# TYPE live_servers gauge",
        "live_servers -2",
        "in_flight{upstream=\"10.0.0.1:80\"} 1",
        "# HELP bus_ratio A ratio with a \\\\ in its help.",
        "bus_ratio 0.5",
        "answer 42",
        "kept_elsewhere_total 7",
        "scraped_total{outcome=\"joined\"} 2",
        "scraped_total{outcome=\"rejected\",reason=\"unsigned\"} 1",
        "# TYPE latency_seconds histogram",
        "latency_seconds_bucket{le=\"0.001\"} 1",
        "latency_seconds_bucket{le=\"0.01\"} 2",
        "latency_seconds_bucket{le=\"+Inf\"} 3",
        "latency_seconds_sum 5.0055",
        "latency_seconds_count 3",
        "upstream_seconds_bucket{upstream=\"a:1\",le=\"0.0025\"} 1",
        "upstream_seconds_count{upstream=\"a:1\"} 1",
    ] {
        has(&text, line);
    }
    assert!(!text.contains("# EOF"), "{text}");
}

#[test]
fn openmetrics_names_families_without_suffixes_and_ends_in_eof() {
    let text = registry_with_one_of_each().render(Format::OpenMetrics);
    has(&text, "# TYPE requests counter");
    has(&text, "requests_total 3");
    has(&text, "# TYPE scraped counter");
    has(
        &text,
        "scraped_total{outcome=\"rejected\",reason=\"unsigned\"} 1",
    );
    assert!(text.ends_with("# EOF\n"), "{text}");
}

#[test]
fn a_binary_registry_has_build_info_and_process_metrics() {
    let registry = Registry::for_binary("test_bin");
    let (content_type, text) = registry.scrape(None);
    assert!(content_type.starts_with("text/plain; version=0.0.4"));
    has(&text, "# TYPE test_bin_build_info gauge");
    let commit = crate::commit().unwrap_or("unknown");
    has(
        &text,
        &format!(
            "test_bin_build_info{{version=\"{}\",commit=\"{commit}\"}} 1",
            crate::VERSION
        ),
    );
    for name in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(&format!("{name} "))),
            "no {name} in:\n{text}"
        );
    }
    let (content_type, text) = registry.scrape(Some("application/openmetrics-text"));
    assert!(content_type.starts_with("application/openmetrics-text"));
    has(&text, "# TYPE test_bin_build info");
}

#[test]
#[should_panic(expected = "registered twice")]
fn duplicate_names_are_a_programming_error() {
    let registry = Registry::new();
    registry.counter("x_total", "");
    registry.gauge("x_total", "");
}

#[test]
#[should_panic(expected = "must be named …_total")]
fn counters_end_in_total() {
    Registry::new().counter("requests", "");
}

#[test]
#[should_panic(expected = "invalid metric name")]
fn invalid_names_are_a_programming_error() {
    Registry::new().gauge("1bad", "");
}

#[test]
#[should_panic(expected = "invalid label name")]
fn le_is_reserved() {
    Registry::new().counter_vec("a_total", "", "le");
}

#[test]
fn debug_lists_names() {
    let registry = Registry::new();
    registry.gauge("g", "");
    assert_eq!(format!("{registry:?}"), "[\"g\"]");
}
