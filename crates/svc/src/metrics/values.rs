//! Counters, gauges and histograms: prometheus-client's types behind the small API the crates
//! already use (`inc`, `inc_guard`, `observe_duration`), so a component keeps plain handles.
//!
//! Counters and gauges are one atomic each; a histogram observation takes its own short lock
//! (prometheus-client keeps buckets, sum and count together).

use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::Counter as LibCounter;
use prometheus_client::metrics::gauge::Gauge as LibGauge;
use prometheus_client::metrics::histogram::Histogram as LibHistogram;
use prometheus_client::metrics::{MetricType, TypedMetric};
use std::sync::atomic::AtomicU64;

/// Latency buckets in seconds, from 100 µs to 10 s: the proxy's added latency is sub-millisecond,
/// so the low end is finer than the usual defaults.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Implements prometheus-client's encoding for a newtype by handing it to the wrapped metric.
macro_rules! delegate_encoding {
    ($type:ty, $kind:expr) => {
        impl TypedMetric for $type {
            const TYPE: MetricType = $kind;
        }

        impl EncodeMetric for $type {
            fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
                self.0.encode(encoder)
            }
            fn metric_type(&self) -> MetricType {
                $kind
            }
        }
    };
}

/// A count that only goes up (requests, errors). Cloning gives another handle to the same count.
#[derive(Debug, Clone, Default)]
pub struct Counter(LibCounter);

impl Counter {
    pub(crate) fn new() -> Self {
        Counter::default()
    }

    /// Adds one.
    pub fn inc(&self) {
        self.0.inc();
    }

    /// Adds `n`.
    pub fn inc_by(&self, n: u64) {
        self.0.inc_by(n);
    }

    /// The current count.
    pub fn get(&self) -> u64 {
        self.0.get()
    }
}

delegate_encoding!(Counter, MetricType::Counter);

/// An integer that goes up and down (connections, in-flight requests, live servers).
#[derive(Debug, Clone, Default)]
pub struct Gauge(LibGauge);

impl Gauge {
    pub(crate) fn new() -> Self {
        Gauge::default()
    }

    /// Sets the value.
    pub fn set(&self, value: i64) {
        self.0.set(value);
    }

    /// Adds one.
    pub fn inc(&self) {
        self.0.inc();
    }

    /// Subtracts one.
    pub fn dec(&self) {
        self.0.dec();
    }

    /// Adds `delta` (which may be negative).
    pub fn add(&self, delta: i64) {
        self.0.inc_by(delta);
    }

    /// The current value.
    pub fn get(&self) -> i64 {
        self.0.get()
    }

    /// Adds one now and subtracts it when the guard drops: an in-flight count that stays
    /// right when a request errors out or its task is cancelled.
    pub fn inc_guard(&self) -> GaugeGuard {
        self.inc();
        GaugeGuard(self.clone())
    }
}

delegate_encoding!(Gauge, MetricType::Gauge);

/// Undoes one [`Gauge::inc_guard`] when dropped.
#[derive(Debug)]
#[must_use = "the gauge goes back down as soon as the guard is dropped"]
pub struct GaugeGuard(Gauge);

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A floating-point value that goes up and down (ratios, last-seen ages in seconds).
#[derive(Debug, Clone, Default)]
pub struct GaugeF64(LibGauge<f64, AtomicU64>);

impl GaugeF64 {
    pub(crate) fn new() -> Self {
        GaugeF64::default()
    }

    /// Sets the value.
    pub fn set(&self, value: f64) {
        self.0.set(value);
    }

    /// Adds `delta` (which may be negative).
    pub fn add(&self, delta: f64) {
        self.0.inc_by(delta);
    }

    /// The current value.
    pub fn get(&self) -> f64 {
        self.0.get()
    }
}

delegate_encoding!(GaugeF64, MetricType::Gauge);

/// Counts observations into buckets by upper bound (inclusive), plus their sum.
/// Cloning gives another handle to the same histogram.
#[derive(Debug, Clone)]
pub struct Histogram(LibHistogram);

impl Histogram {
    /// # Panics
    /// If `bounds` is empty (ignoring a final +Inf), not finite or not strictly increasing:
    /// buckets are fixed in code, so that is a programming error.
    pub(crate) fn new(bounds: &[f64]) -> Self {
        check_buckets(bounds);
        Histogram(LibHistogram::new(bounds.iter().copied()))
    }

    /// Records one value. NaN is ignored: it belongs in no bucket and would poison the sum.
    pub fn observe(&self, value: f64) {
        if !value.is_nan() {
            self.0.observe(value);
        }
    }

    /// Records a duration in seconds, the unit Prometheus expects.
    pub fn observe_duration(&self, duration: Duration) {
        self.observe(duration.as_secs_f64());
    }
}

delegate_encoding!(Histogram, MetricType::Histogram);

/// Checks bucket bounds once, where they are declared, rather than at the first observation.
pub(crate) fn check_buckets(bounds: &[f64]) {
    let bounds = match bounds.split_last() {
        Some((&last, rest)) if last == f64::INFINITY => rest,
        _ => bounds,
    };
    assert!(!bounds.is_empty(), "a histogram needs at least one bucket");
    assert!(
        bounds.iter().all(|b| b.is_finite()) && bounds.windows(2).all(|w| w[0] < w[1]),
        "histogram buckets must be finite and strictly increasing, found {bounds:?}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_gauges_count() {
        let counter = Counter::new();
        let handle = counter.clone();
        counter.inc();
        handle.inc_by(4);
        assert_eq!(counter.get(), 5);

        let gauge = Gauge::new();
        gauge.set(10);
        gauge.dec();
        gauge.add(-4);
        {
            let _in_flight = gauge.inc_guard();
            assert_eq!(gauge.get(), 6);
        }
        assert_eq!(gauge.get(), 5);

        let ratio = GaugeF64::new();
        ratio.set(0.5);
        ratio.add(0.25);
        assert_eq!(ratio.get(), 0.75);
    }

    #[test]
    fn concurrent_float_adds_are_not_lost() {
        let gauge = GaugeF64::new();
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| (0..1000).for_each(|_| gauge.add(1.0)));
            }
        });
        assert_eq!(gauge.get(), 4000.0);
    }

    #[test]
    #[should_panic(expected = "strictly increasing")]
    fn unsorted_buckets_are_a_programming_error() {
        Histogram::new(&[2.0, 1.0]);
    }

    #[test]
    fn latency_buckets_are_valid() {
        check_buckets(LATENCY_BUCKETS);
    }
}
