//! Counters and gauges: one atomic each, so updating them never takes a lock.
//!
//! Relaxed ordering throughout: a scrape needs each value to be eventually right, not
//! ordered with respect to other memory.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

use super::Sample;
use super::text::{Float, push_sample};

/// A count that only goes up (requests, errors). Cloning gives another handle to the same count.
#[derive(Debug, Clone)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    pub(crate) fn new() -> Self {
        Counter(Arc::new(AtomicU64::new(0)))
    }

    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Relaxed);
    }

    /// Adds `n`.
    pub fn inc_by(&self, n: u64) {
        self.0.fetch_add(n, Relaxed);
    }

    /// The current count.
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

impl Sample for Counter {
    const KIND: &'static str = "counter";

    fn write(&self, name: &str, labels: &[(&str, &str)], out: &mut String) {
        push_sample(out, name, "", labels, self.get());
    }
}

/// An integer that goes up and down (connections, in-flight requests, live servers).
#[derive(Debug, Clone)]
pub struct Gauge(Arc<AtomicI64>);

impl Gauge {
    pub(crate) fn new() -> Self {
        Gauge(Arc::new(AtomicI64::new(0)))
    }

    /// Sets the value.
    pub fn set(&self, value: i64) {
        self.0.store(value, Relaxed);
    }

    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }

    /// Subtracts one.
    pub fn dec(&self) {
        self.add(-1);
    }

    /// Adds `delta` (which may be negative).
    pub fn add(&self, delta: i64) {
        self.0.fetch_add(delta, Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> i64 {
        self.0.load(Relaxed)
    }

    /// Adds one now and subtracts it when the guard drops: an in-flight count that stays
    /// right when a request errors out or its task is cancelled.
    pub fn inc_guard(&self) -> GaugeGuard {
        self.inc();
        GaugeGuard(self.clone())
    }
}

impl Sample for Gauge {
    const KIND: &'static str = "gauge";

    fn write(&self, name: &str, labels: &[(&str, &str)], out: &mut String) {
        push_sample(out, name, "", labels, self.get());
    }
}

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
#[derive(Debug, Clone)]
pub struct GaugeF64(Arc<AtomicU64>);

impl GaugeF64 {
    pub(crate) fn new() -> Self {
        GaugeF64(Arc::new(AtomicU64::new(0f64.to_bits())))
    }

    /// Sets the value.
    pub fn set(&self, value: f64) {
        self.0.store(value.to_bits(), Relaxed);
    }

    /// Adds `delta` (which may be negative).
    pub fn add(&self, delta: f64) {
        add_f64(&self.0, delta);
    }

    /// The current value.
    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Relaxed))
    }
}

impl Sample for GaugeF64 {
    const KIND: &'static str = "gauge";

    fn write(&self, name: &str, labels: &[(&str, &str)], out: &mut String) {
        push_sample(out, name, "", labels, Float(self.get()));
    }
}

/// Adds to an `f64` stored as bits; there is no atomic float add, so compare-and-swap.
pub(crate) fn add_f64(bits: &AtomicU64, delta: f64) {
    let _ = bits.fetch_update(Relaxed, Relaxed, |current| {
        Some((f64::from_bits(current) + delta).to_bits())
    });
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
}
