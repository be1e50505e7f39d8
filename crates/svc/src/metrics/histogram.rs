//! Histograms with fixed buckets: one atomic per bucket, so observing never takes a lock.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use super::Sample;
use super::text::{Float, push_sample};
use super::values::add_f64;

/// Latency buckets in seconds, from 100 µs to 10 s: the proxy's added latency is sub-millisecond,
/// so the low end is finer than the usual defaults.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Counts observations into buckets by upper bound (inclusive), plus their sum.
/// Cloning gives another handle to the same histogram.
#[derive(Debug, Clone)]
pub struct Histogram(Arc<Core>);

#[derive(Debug)]
struct Core {
    bounds: Box<[f64]>,
    // Per bucket, not cumulative (so one observation is one increment); the last slot is
    // the implicit +Inf bucket. Rendering adds them up.
    counts: Box<[AtomicU64]>,
    sum_bits: AtomicU64,
}

impl Histogram {
    /// # Panics
    /// If `bounds` is empty (ignoring a final +Inf), not finite or not strictly increasing:
    /// buckets are fixed in code, so that is a programming error.
    pub(crate) fn new(bounds: &[f64]) -> Self {
        let bounds = match bounds.split_last() {
            Some((&last, rest)) if last == f64::INFINITY => rest,
            _ => bounds,
        };
        assert!(!bounds.is_empty(), "a histogram needs at least one bucket");
        assert!(
            bounds.iter().all(|b| b.is_finite()) && bounds.windows(2).all(|w| w[0] < w[1]),
            "histogram buckets must be finite and strictly increasing, found {bounds:?}"
        );
        let counts = (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect();
        Histogram(Arc::new(Core {
            bounds: bounds.into(),
            counts,
            sum_bits: AtomicU64::new(0f64.to_bits()),
        }))
    }

    /// Records one value. NaN is ignored: it belongs in no bucket and would poison the sum.
    pub fn observe(&self, value: f64) {
        if value.is_nan() {
            return;
        }
        // First bucket whose upper bound is >= value; past the end is +Inf.
        let index = self.0.bounds.partition_point(|&bound| bound < value);
        self.0.counts[index].fetch_add(1, Relaxed);
        add_f64(&self.0.sum_bits, value);
    }

    /// Records a duration in seconds, the unit Prometheus expects.
    pub fn observe_duration(&self, duration: Duration) {
        self.observe(duration.as_secs_f64());
    }

    /// How many values were recorded.
    pub fn count(&self) -> u64 {
        self.0.counts.iter().map(|c| c.load(Relaxed)).sum()
    }

    /// The sum of the recorded values.
    pub fn sum(&self) -> f64 {
        f64::from_bits(self.0.sum_bits.load(Relaxed))
    }
}

impl Sample for Histogram {
    const KIND: &'static str = "histogram";

    fn write(&self, name: &str, labels: &[(&str, &str)], out: &mut String) {
        let mut cumulative = 0u64;
        for (i, count) in self.0.counts.iter().enumerate() {
            cumulative += count.load(Relaxed);
            let le = match self.0.bounds.get(i) {
                Some(&bound) => Float(bound).to_string(),
                None => "+Inf".to_owned(),
            };
            let mut with_le: Vec<(&str, &str)> = labels.to_vec();
            with_le.push(("le", &le));
            push_sample(out, name, "_bucket", &with_le, cumulative);
        }
        push_sample(out, name, "_sum", labels, Float(self.sum()));
        // From the same loads as the buckets, so `_count` always equals the +Inf bucket.
        push_sample(out, name, "_count", labels, cumulative);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_land_in_the_first_bucket_that_holds_them() {
        let histogram = Histogram::new(&[1.0, 2.0, f64::INFINITY]);
        for value in [0.5, 1.0, 1.5, 3.0, f64::NAN] {
            histogram.observe(value);
        }
        histogram.observe_duration(Duration::from_millis(2000));
        assert_eq!(histogram.count(), 5);
        assert_eq!(histogram.sum(), 8.0);
        let mut out = String::new();
        histogram.write("h", &[("path", "/")], &mut out);
        let expected = "h_bucket{path=\"/\",le=\"1\"} 2\n\
                        h_bucket{path=\"/\",le=\"2\"} 4\n\
                        h_bucket{path=\"/\",le=\"+Inf\"} 5\n\
                        h_sum{path=\"/\"} 8\n\
                        h_count{path=\"/\"} 5\n";
        assert_eq!(out, expected);
    }

    #[test]
    #[should_panic(expected = "strictly increasing")]
    fn unsorted_buckets_are_a_programming_error() {
        Histogram::new(&[2.0, 1.0]);
    }

    #[test]
    fn latency_buckets_are_valid() {
        assert_eq!(
            Histogram::new(LATENCY_BUCKETS).0.bounds.len(),
            LATENCY_BUCKETS.len()
        );
    }
}
