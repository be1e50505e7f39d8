//! Prometheus metrics on `prometheus-client`: a registry shared by a binary's components, with
//! the small API the crates register through (names in full, `…_total` for counters) and
//! rendering in the format the scraper asks for.
//!
//! Updating a metric touches one atomic (a histogram: one short lock); registering and
//! rendering take the registry's lock. Handles are cheap clones sharing one value, so a
//! component keeps the handles it needs and the binary's `/metrics` handler calls
//! [`Registry::scrape`] with the request's `Accept` header.

mod family;
mod format;
mod process;
mod scraped;
mod values;

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use prometheus_client::encoding::EncodeMetric;
use prometheus_client::metrics::info::Info;

pub use family::{CounterVec, Family, GaugeVec, HistogramVec};
pub use format::Format;
pub use scraped::Labels;
pub use values::{Counter, Gauge, GaugeF64, GaugeGuard, Histogram, LATENCY_BUCKETS};

use scraped::Scraped;

/// The metrics of one process. Cloning shares the registry.
///
/// Registration methods panic on an invalid or duplicate name, a counter not named `…_total`, or
/// an invalid label name (see the Prometheus naming rules): names are fixed in code, so that is a
/// programming error best found by the first test.
#[derive(Clone, Default)]
pub struct Registry {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    metrics: prometheus_client::registry::Registry,
    names: Vec<String>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Registry::default()
    }

    /// A binary's registry: `<prefix>_build_info{version,commit}` and the `process_*` metrics
    /// (CPU seconds, resident memory, open and maximum fds, start time) to begin with.
    pub fn for_binary(prefix: &str) -> Self {
        let registry = Registry::new();
        let name = format!("{prefix}_build_info");
        registry.claim(&name);
        let labels: Labels = vec![
            ("version", crate::VERSION.to_owned()),
            (
                "commit",
                crate::version::commit().unwrap_or("unknown").to_owned(),
            ),
        ];
        let mut inner = registry.lock();
        inner.metrics.register(
            format!("{prefix}_build"),
            "Build of this binary; always 1",
            Info::new(labels),
        );
        inner
            .metrics
            .register_collector(Box::new(process::ProcessCollector));
        inner.names.extend(
            [
                "process_cpu_seconds_total",
                "process_resident_memory_bytes",
                "process_virtual_memory_bytes",
                "process_start_time_seconds",
                "process_open_fds",
                "process_max_fds",
            ]
            .map(String::from),
        );
        drop(inner);
        registry
    }

    /// Registers a counter; name it `…_total`.
    pub fn counter(&self, name: &str, help: &str) -> Counter {
        let counter = Counter::new();
        self.register(name, help, counter.clone());
        counter
    }

    /// Registers counters by one label, e.g. `("dropped_total", "…", "reason")`.
    pub fn counter_vec(&self, name: &str, help: &str, label: &'static str) -> CounterVec {
        self.counter_family(name, help, &[label])
    }

    /// Registers counters by several labels, e.g. `&["outcome", "reason"]`; see
    /// [`Family::with_values`].
    pub fn counter_family(&self, name: &str, help: &str, labels: &[&'static str]) -> CounterVec {
        let family = Family::new(checked_labels(labels), Counter::new);
        self.register(name, help, family.clone());
        family
    }

    /// Registers an integer gauge.
    pub fn gauge(&self, name: &str, help: &str) -> Gauge {
        let gauge = Gauge::new();
        self.register(name, help, gauge.clone());
        gauge
    }

    /// Registers integer gauges by one label.
    pub fn gauge_vec(&self, name: &str, help: &str, label: &'static str) -> GaugeVec {
        let family = Family::new(checked_labels(&[label]), Gauge::new);
        self.register(name, help, family.clone());
        family
    }

    /// Registers a floating-point gauge.
    pub fn gauge_f64(&self, name: &str, help: &str) -> GaugeF64 {
        let gauge = GaugeF64::new();
        self.register(name, help, gauge.clone());
        gauge
    }

    /// Registers a gauge whose value `read` computes at each scrape. `read` runs while the
    /// registry is locked, so it must not register metrics.
    pub fn gauge_fn(&self, name: &str, help: &str, read: impl Fn() -> i64 + Send + Sync + 'static) {
        self.register(name, help, Scraped::Gauge(Box::new(read)));
    }

    /// Registers a counter kept elsewhere, read at each scrape (same rules as [`gauge_fn`](Self::gauge_fn)).
    pub fn counter_fn(
        &self,
        name: &str,
        help: &str,
        read: impl Fn() -> u64 + Send + Sync + 'static,
    ) {
        self.register(name, help, Scraped::Counter(Box::new(read)));
    }

    /// Registers counters kept elsewhere by label set, read at each scrape: `read` returns every
    /// series with its labels (same rules as [`gauge_fn`](Self::gauge_fn)).
    pub fn counter_family_fn(
        &self,
        name: &str,
        help: &str,
        read: impl Fn() -> Vec<(Labels, u64)> + Send + Sync + 'static,
    ) {
        self.register(name, help, Scraped::CounterFamily(Box::new(read)));
    }

    /// Registers gauges kept elsewhere by label set, read at each scrape.
    pub fn gauge_family_fn(
        &self,
        name: &str,
        help: &str,
        read: impl Fn() -> Vec<(Labels, i64)> + Send + Sync + 'static,
    ) {
        self.register(name, help, Scraped::GaugeFamily(Box::new(read)));
    }

    /// Registers a histogram with these upper bounds (e.g. [`LATENCY_BUCKETS`], in seconds).
    ///
    /// # Panics
    /// Also if `buckets` is empty, not finite or not strictly increasing.
    pub fn histogram(&self, name: &str, help: &str, buckets: &[f64]) -> Histogram {
        let histogram = Histogram::new(buckets);
        self.register(name, help, histogram.clone());
        histogram
    }

    /// Registers histograms by one label, all with the same buckets.
    pub fn histogram_vec(
        &self,
        name: &str,
        help: &str,
        label: &'static str,
        buckets: &[f64],
    ) -> HistogramVec {
        self.histogram_family(name, help, &[label], buckets)
    }

    /// Registers histograms by several labels, all with the same buckets.
    pub fn histogram_family(
        &self,
        name: &str,
        help: &str,
        labels: &[&'static str],
        buckets: &[f64],
    ) -> HistogramVec {
        // Checked once now rather than at the first label value, in the middle of a request.
        values::check_buckets(buckets);
        let buckets = buckets.to_vec();
        let family = Family::new(checked_labels(labels), move || Histogram::new(&buckets));
        self.register(name, help, family.clone());
        family
    }

    /// Every metric in `format`; serve it with [`Format::content_type`].
    pub fn render(&self, format: Format) -> String {
        let inner = self.lock();
        let mut out = String::with_capacity(256 * inner.names.len());
        // Writing into a String cannot fail, and our own encoders only write.
        let _ = format.encode(&mut out, &inner.metrics);
        out
    }

    /// What a `/metrics` handler answers: the content type and the text, in the format the
    /// request's `Accept` header asks for ([`Format::from_accept`]).
    pub fn scrape(&self, accept: Option<&str>) -> (&'static str, String) {
        let format = Format::from_accept(accept);
        (format.content_type(), self.render(format))
    }

    fn register(
        &self,
        name: &str,
        help: &str,
        metric: impl EncodeMetric + fmt::Debug + Send + Sync + 'static,
    ) {
        let is_counter = metric.metric_type() == prometheus_client::metrics::MetricType::Counter;
        let base = if is_counter {
            name.strip_suffix("_total").unwrap_or_else(|| {
                panic!("counter {name:?} must be named …_total (Prometheus naming)")
            })
        } else {
            name
        };
        self.claim(name);
        // prometheus-client adds the full stop itself.
        let help = help.strip_suffix('.').unwrap_or(help);
        self.lock().metrics.register(base, help, metric);
    }

    /// Checks a full metric name and reserves it.
    fn claim(&self, name: &str) {
        assert!(
            is_metric_name(name),
            "invalid metric name {name:?}: expected [a-zA-Z_:][a-zA-Z0-9_:]*"
        );
        let mut inner = self.lock();
        assert!(
            inner.names.iter().all(|n| n != name),
            "metric {name:?} is registered twice"
        );
        inner.names.push(name.to_owned());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.lock().names.iter()).finish()
    }
}

fn checked_labels<'a>(labels: &'a [&'static str]) -> &'a [&'static str] {
    for label in labels {
        assert!(
            is_label_name(label) && *label != "le" && !label.starts_with("__"),
            "invalid label name {label:?}: expected [a-zA-Z_][a-zA-Z0-9_]*, not \"le\" or __…"
        );
    }
    labels
}

fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests;
