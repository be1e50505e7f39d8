//! Renders a registry and parses the text back, as a scraper would.

use std::collections::BTreeMap;

use super::*;

/// One parsed sample: metric name, labels, value.
#[derive(Debug, PartialEq)]
struct Parsed {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A strict reader for what `render` writes: HELP and TYPE before a family's samples, quoted
/// and escaped label values, Go-style floats.
fn parse(text: &str) -> (BTreeMap<String, (String, String)>, Vec<Parsed>) {
    let mut families: BTreeMap<String, (String, String)> = BTreeMap::new();
    let mut samples = Vec::new();
    let mut pending_help: Option<(String, String)> = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').expect("HELP has a name and text");
            pending_help = Some((name.to_owned(), unescape(help)));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE has a name and kind");
            let (help_name, help) = pending_help.take().expect("HELP comes before TYPE");
            assert_eq!(help_name, name);
            families.insert(name.to_owned(), (kind.to_owned(), help));
        } else {
            samples.push(parse_sample(line));
        }
    }
    (families, samples)
}

fn parse_sample(line: &str) -> Parsed {
    let (series, value) = line.rsplit_once(' ').expect("a sample has a value");
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        other => other.parse().expect("a number"),
    };
    let Some((name, labels)) = series.split_once('{') else {
        return Parsed {
            name: series.to_owned(),
            labels: BTreeMap::new(),
            value,
        };
    };
    let mut labels_out = BTreeMap::new();
    let mut chars = labels
        .strip_suffix('}')
        .expect("labels end with }")
        .chars()
        .peekable();
    while chars.peek().is_some() {
        let key: String = chars.by_ref().take_while(|&c| c != '=').collect();
        assert_eq!(chars.next(), Some('"'));
        let mut value = String::new();
        loop {
            match chars.next().expect("unterminated label value") {
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(c @ ('\\' | '"')) => value.push(c),
                    other => panic!("bad escape {other:?}"),
                },
                '"' => break,
                c => value.push(c),
            }
        }
        labels_out.insert(key, value);
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
    Parsed {
        name: name.to_owned(),
        labels: labels_out,
        value,
    }
}

fn unescape(help: &str) -> String {
    help.replace("\\n", "\n").replace("\\\\", "\\")
}

fn find<'a>(samples: &'a [Parsed], name: &str, labels: &[(&str, &str)]) -> &'a Parsed {
    let wanted: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    samples
        .iter()
        .find(|s| s.name == name && s.labels == wanted)
        .unwrap_or_else(|| panic!("no sample {name}{labels:?} in {samples:#?}"))
}

#[test]
fn renders_every_kind_and_parses_back() {
    let registry = Registry::new();
    let requests = registry.counter("requests_total", "Requests proxied.");
    let dropped =
        registry.counter_vec("dropped_total", "Heartbeats dropped,\nby reason.", "reason");
    let live = registry.gauge("live_servers", "Servers in the registry.");
    let in_flight = registry.gauge_vec("in_flight", "Requests in flight.", "upstream");
    let ratio = registry.gauge_f64("bus_ratio", "A ratio with a \\ in its help.");
    registry.gauge_fn("answer", "Computed at scrape time.", || 42.0);
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
    live.set(-2);
    let _guard = in_flight.with("10.0.0.1:80").inc_guard();
    ratio.set(0.5);
    latency.observe(0.0005);
    latency.observe(0.005);
    latency.observe(5.0);
    by_upstream.with("a:1").observe(0.002);

    let text = registry.render();
    let (families, samples) = parse(&text);

    let kinds: Vec<(&str, &str)> = families
        .iter()
        .map(|(name, (kind, _))| (name.as_str(), kind.as_str()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("answer", "gauge"),
            ("bus_ratio", "gauge"),
            ("dropped_total", "counter"),
            ("in_flight", "gauge"),
            ("latency_seconds", "histogram"),
            ("live_servers", "gauge"),
            ("requests_total", "counter"),
            ("upstream_seconds", "histogram"),
        ]
    );
    assert_eq!(
        families["dropped_total"].1,
        "Heartbeats dropped,\nby reason."
    );
    assert_eq!(families["bus_ratio"].1, "A ratio with a \\ in its help.");

    assert_eq!(find(&samples, "requests_total", &[]).value, 3.0);
    assert_eq!(
        find(&samples, "dropped_total", &[("reason", "bad \"json\"\n\\")]).value,
        1.0
    );
    assert_eq!(
        find(&samples, "dropped_total", &[("reason", "stale")]).value,
        2.0
    );
    assert_eq!(find(&samples, "live_servers", &[]).value, -2.0);
    assert_eq!(
        find(&samples, "in_flight", &[("upstream", "10.0.0.1:80")]).value,
        1.0
    );
    assert_eq!(find(&samples, "bus_ratio", &[]).value, 0.5);
    assert_eq!(find(&samples, "answer", &[]).value, 42.0);
    assert_eq!(
        find(&samples, "latency_seconds_bucket", &[("le", "0.001")]).value,
        1.0
    );
    assert_eq!(
        find(&samples, "latency_seconds_bucket", &[("le", "0.01")]).value,
        2.0
    );
    assert_eq!(
        find(&samples, "latency_seconds_bucket", &[("le", "+Inf")]).value,
        3.0
    );
    assert_eq!(find(&samples, "latency_seconds_count", &[]).value, 3.0);
    assert_eq!(find(&samples, "latency_seconds_sum", &[]).value, 5.0055);
    let upstream = [("upstream", "a:1"), ("le", "0.0025")];
    assert_eq!(
        find(&samples, "upstream_seconds_bucket", &upstream).value,
        1.0
    );
    assert_eq!(
        find(&samples, "upstream_seconds_count", &[("upstream", "a:1")]).value,
        1.0
    );
    // One line per bucket plus +Inf, _sum and _count for each labelled histogram.
    let series = samples
        .iter()
        .filter(|s| s.name.starts_with("upstream_seconds"))
        .count();
    assert_eq!(series, LATENCY_BUCKETS.len() + 3);
}

#[test]
fn header_comes_first_and_empty_families_render_only_the_header() {
    let registry = Registry::new();
    registry.counter_vec("errors_total", "Errors.", "kind");
    assert_eq!(
        registry.render(),
        "# HELP errors_total Errors.\n# TYPE errors_total counter\n"
    );
    assert_eq!(METRICS_CONTENT_TYPE, "text/plain; version=0.0.4");
    assert_eq!(format!("{registry:?}"), "[\"errors_total\"]");
}

#[test]
fn clones_share_values() {
    let registry = Registry::new();
    let counter = registry.counter("hits_total", "Hits.");
    let shared = registry.clone();
    counter.clone().inc();
    assert!(shared.render().ends_with("hits_total 1\n"));
}

#[test]
#[should_panic(expected = "registered twice")]
fn duplicate_names_are_a_programming_error() {
    let registry = Registry::new();
    registry.counter("a_total", "A.");
    registry.gauge("a_total", "A again.");
}

#[test]
#[should_panic(expected = "invalid metric name")]
fn invalid_names_are_a_programming_error() {
    Registry::new().counter("requests-total", "Dashes are not allowed.");
}

#[test]
#[should_panic(expected = "invalid label name")]
fn le_is_reserved_for_histograms() {
    Registry::new().histogram_vec("h", "H.", "le", LATENCY_BUCKETS);
}
