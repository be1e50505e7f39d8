//! A small Prometheus registry rendered in the text format, without an external metrics crate.
//!
//! Updating a metric touches one atomic; only registering and rendering take the registry's
//! lock. Handles are cheap clones sharing one value, so a component keeps the handles it needs
//! and the binary's `/metrics` handler calls [`Registry::render`].

mod family;
mod histogram;
mod text;
mod values;

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

pub use family::{CounterVec, Family, GaugeVec, HistogramVec};
pub use histogram::{Histogram, LATENCY_BUCKETS};
pub use values::{Counter, Gauge, GaugeF64, GaugeGuard};

/// The `Content-Type` of [`Registry::render`]'s output.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// A metric that can write its own sample lines, with the labels of its family if any.
pub(crate) trait Sample {
    /// The `# TYPE` word.
    const KIND: &'static str;
    fn write(&self, name: &str, labels: &[(&str, &str)], out: &mut String);
}

/// What the registry keeps per metric name: something that knows its type and samples.
trait Collect: Send + Sync {
    fn kind(&self) -> &'static str;
    fn write_samples(&self, name: &str, out: &mut String);
}

struct Single<M>(M);

impl<M: Sample + Send + Sync> Collect for Single<M> {
    fn kind(&self) -> &'static str {
        M::KIND
    }
    fn write_samples(&self, name: &str, out: &mut String) {
        self.0.write(name, &[], out);
    }
}

impl<M: Sample + Clone + Send + Sync + 'static> Collect for Family<M> {
    fn kind(&self) -> &'static str {
        M::KIND
    }
    fn write_samples(&self, name: &str, out: &mut String) {
        for (value, member) in self.snapshot() {
            member.write(name, &[(self.label_name(), &value)], out);
        }
    }
}

/// A value computed at scrape time (a map's size, a queue's depth).
struct Computed {
    kind: &'static str,
    read: Box<dyn Fn() -> f64 + Send + Sync>,
}

impl Collect for Computed {
    fn kind(&self) -> &'static str {
        self.kind
    }
    fn write_samples(&self, name: &str, out: &mut String) {
        text::push_sample(out, name, "", &[], text::Float((self.read)()));
    }
}

struct Entry {
    name: String,
    help: String,
    collector: Box<dyn Collect>,
}

/// The metrics of one process, in registration order. Cloning shares the registry.
///
/// Registration methods panic on an invalid or duplicate name (see the Prometheus naming rules):
/// names are fixed in code, so that is a programming error best found by the first test.
#[derive(Clone, Default)]
pub struct Registry {
    entries: Arc<Mutex<Vec<Entry>>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Registry::default()
    }

    /// Registers a counter; name it `…_total`.
    pub fn counter(&self, name: &str, help: &str) -> Counter {
        let counter = Counter::new();
        self.register(name, help, Box::new(Single(counter.clone())));
        counter
    }

    /// Registers counters by one label, e.g. `("dropped_total", "…", "reason")`.
    pub fn counter_vec(&self, name: &str, help: &str, label: &str) -> CounterVec {
        self.family(name, help, label, Counter::new)
    }

    /// Registers an integer gauge.
    pub fn gauge(&self, name: &str, help: &str) -> Gauge {
        let gauge = Gauge::new();
        self.register(name, help, Box::new(Single(gauge.clone())));
        gauge
    }

    /// Registers integer gauges by one label.
    pub fn gauge_vec(&self, name: &str, help: &str, label: &str) -> GaugeVec {
        self.family(name, help, label, Gauge::new)
    }

    /// Registers a floating-point gauge.
    pub fn gauge_f64(&self, name: &str, help: &str) -> GaugeF64 {
        let gauge = GaugeF64::new();
        self.register(name, help, Box::new(Single(gauge.clone())));
        gauge
    }

    /// Registers a gauge whose value `read` computes at each scrape. `read` runs while the
    /// registry is locked, so it must not register metrics.
    pub fn gauge_fn(&self, name: &str, help: &str, read: impl Fn() -> f64 + Send + Sync + 'static) {
        let read = Box::new(read);
        self.register(
            name,
            help,
            Box::new(Computed {
                kind: "gauge",
                read,
            }),
        );
    }

    /// Registers a counter kept elsewhere, read at each scrape (same rules as [`gauge_fn`](Self::gauge_fn)).
    pub fn counter_fn(
        &self,
        name: &str,
        help: &str,
        read: impl Fn() -> f64 + Send + Sync + 'static,
    ) {
        let read = Box::new(read);
        self.register(
            name,
            help,
            Box::new(Computed {
                kind: "counter",
                read,
            }),
        );
    }

    /// Registers a histogram with these upper bounds (e.g. [`LATENCY_BUCKETS`], in seconds).
    ///
    /// # Panics
    /// Also if `buckets` is empty, not finite or not strictly increasing.
    pub fn histogram(&self, name: &str, help: &str, buckets: &[f64]) -> Histogram {
        let histogram = Histogram::new(buckets);
        self.register(name, help, Box::new(Single(histogram.clone())));
        histogram
    }

    /// Registers histograms by one label, all with the same buckets.
    pub fn histogram_vec(
        &self,
        name: &str,
        help: &str,
        label: &str,
        buckets: &[f64],
    ) -> HistogramVec {
        // Checked once now rather than at the first label value, in the middle of a request.
        drop(Histogram::new(buckets));
        let buckets = buckets.to_vec();
        self.family(name, help, label, move || Histogram::new(&buckets))
    }

    /// Every metric in the text format, `# HELP` and `# TYPE` first; serve it with
    /// [`METRICS_CONTENT_TYPE`].
    pub fn render(&self) -> String {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out = String::with_capacity(256 * entries.len());
        for entry in entries.iter() {
            text::push_header(&mut out, &entry.name, &entry.help, entry.collector.kind());
            entry.collector.write_samples(&entry.name, &mut out);
        }
        out
    }

    fn family<M>(
        &self,
        name: &str,
        help: &str,
        label: &str,
        make: impl Fn() -> M + Send + Sync + 'static,
    ) -> Family<M>
    where
        M: Sample + Clone + Send + Sync + 'static,
    {
        assert!(
            text::is_label_name(label) && label != "le",
            "invalid label name {label:?}: expected [a-zA-Z_][a-zA-Z0-9_]*, not \"le\" or __…"
        );
        let family = Family::new(label, make);
        self.register(name, help, Box::new(family.clone()));
        family
    }

    fn register(&self, name: &str, help: &str, collector: Box<dyn Collect>) {
        assert!(
            text::is_metric_name(name),
            "invalid metric name {name:?}: expected [a-zA-Z_:][a-zA-Z0-9_:]*"
        );
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        assert!(
            entries.iter().all(|entry| entry.name != name),
            "metric {name:?} is registered twice"
        );
        entries.push(Entry {
            name: name.to_owned(),
            help: help.to_owned(),
            collector,
        });
    }
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        f.debug_list()
            .entries(entries.iter().map(|e| &e.name))
            .finish()
    }
}

#[cfg(test)]
mod tests;
