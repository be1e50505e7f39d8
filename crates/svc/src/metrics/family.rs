//! Metrics by label values known only at run time (upstream id, reason, outcome and reason).

use std::fmt;
use std::sync::Arc;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder};
use prometheus_client::metrics::family::{Family as LibFamily, MetricConstructor};
use prometheus_client::metrics::{MetricType, TypedMetric};

/// One label set as prometheus-client encodes it: `(name, value)` pairs in the family's order.
pub(crate) type LabelSet = Vec<(&'static str, String)>;

/// Makes the member for a new label set (a histogram needs its buckets).
pub(crate) struct Make<M>(Arc<dyn Fn() -> M + Send + Sync>);

impl<M> Clone for Make<M> {
    fn clone(&self) -> Self {
        Make(self.0.clone())
    }
}

impl<M> MetricConstructor<M> for Make<M> {
    fn new_metric(&self) -> M {
        (self.0)()
    }
}

/// One metric per combination of label values, e.g.
/// `api_proxy_upstream_requests_total{upstream="data-1"}` or
/// `api_proxy_upstream_duration_seconds{upstream="data-1",le="0.001"}`.
///
/// A lookup takes a read lock on the family's map; a hot path that always uses the same values
/// can keep the handle [`with`](Family::with) returns.
pub struct Family<M> {
    names: Arc<[&'static str]>,
    inner: LibFamily<LabelSet, M, Make<M>>,
}

/// Counters by label.
pub type CounterVec = Family<super::Counter>;
/// Integer gauges by label.
pub type GaugeVec = Family<super::Gauge>;
/// Histograms by label.
pub type HistogramVec = Family<super::Histogram>;

impl<M: Clone> Family<M> {
    pub(crate) fn new(
        names: &[&'static str],
        make: impl Fn() -> M + Send + Sync + 'static,
    ) -> Self {
        Family {
            names: names.into(),
            inner: LibFamily::new_with_constructor(Make(Arc::new(make))),
        }
    }

    /// The metric for this value of a one-label family, created at zero on first use.
    ///
    /// # Panics
    /// If the family has more than one label (use [`with_values`](Self::with_values)).
    pub fn with(&self, value: &str) -> M {
        self.with_values(&[value])
    }

    /// The metric for these label values, in the order the family's labels were declared.
    ///
    /// # Panics
    /// If the number of values is not the number of labels: label sets are fixed in code.
    pub fn with_values(&self, values: &[&str]) -> M {
        self.inner.get_or_create_owned(&self.label_set(values))
    }

    /// Forgets a one-label value (e.g. a server that left) so the family does not grow forever.
    /// Returns whether it was there.
    pub fn remove(&self, value: &str) -> bool {
        self.inner.remove(&self.label_set(&[value]))
    }

    /// Forgets every label value (each comes back at zero on its next use).
    pub fn clear(&self) {
        self.inner.clear();
    }

    /// The first label's name.
    pub fn label_name(&self) -> &str {
        self.names[0]
    }

    fn label_set(&self, values: &[&str]) -> LabelSet {
        assert_eq!(
            values.len(),
            self.names.len(),
            "labels {:?} need as many values, found {values:?}",
            self.names
        );
        self.names
            .iter()
            .zip(values)
            .map(|(name, value)| (*name, (*value).to_owned()))
            .collect()
    }
}

impl<M> Clone for Family<M> {
    fn clone(&self) -> Self {
        Family {
            names: self.names.clone(),
            inner: self.inner.clone(),
        }
    }
}

impl<M> fmt::Debug for Family<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Family")
            .field("labels", &self.names)
            .finish_non_exhaustive()
    }
}

impl<M: TypedMetric> TypedMetric for Family<M> {
    const TYPE: MetricType = M::TYPE;
}

impl<M: EncodeMetric + TypedMetric> EncodeMetric for Family<M> {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        self.inner.encode(encoder)
    }
    fn metric_type(&self) -> MetricType {
        M::TYPE
    }
    fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::super::Counter;
    use super::*;

    #[test]
    fn with_creates_once_and_remove_forgets() {
        let family: CounterVec = Family::new(&["reason"], Counter::new);
        family.with("bad_json").inc();
        family.with("bad_json").inc();
        family.with("stale").inc();
        assert_eq!(family.with("bad_json").get(), 2);
        assert!(family.remove("stale"));
        assert!(!family.remove("stale"));
        assert_eq!(family.with("stale").get(), 0);
        assert_eq!(family.label_name(), "reason");
    }

    #[test]
    #[should_panic(expected = "need as many values")]
    fn a_missing_label_value_is_a_programming_error() {
        let family: CounterVec = Family::new(&["outcome", "reason"], Counter::new);
        family.with("rejected");
    }
}
