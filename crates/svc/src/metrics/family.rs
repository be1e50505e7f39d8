//! Metrics with one label whose values are only known at run time (upstream address, reason).

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};

/// One metric per value of a fixed label, e.g. `requests_total{upstream="10.0.0.1:8080"}`.
///
/// Looking up a value takes a read lock on a small map; a hot path that always uses the same
/// value can keep the handle [`with`](Family::with) returns and skip even that.
pub struct Family<M> {
    label: Arc<str>,
    members: Arc<RwLock<HashMap<String, M>>>,
    make: Arc<dyn Fn() -> M + Send + Sync>,
}

/// Counters by one label.
pub type CounterVec = Family<super::Counter>;
/// Integer gauges by one label.
pub type GaugeVec = Family<super::Gauge>;
/// Histograms by one label.
pub type HistogramVec = Family<super::Histogram>;

impl<M: Clone> Family<M> {
    pub(crate) fn new(label: &str, make: impl Fn() -> M + Send + Sync + 'static) -> Self {
        Family {
            label: label.into(),
            members: Arc::default(),
            make: Arc::new(make),
        }
    }

    /// The metric for this label value, created at zero on first use.
    pub fn with(&self, value: &str) -> M {
        // A panic while holding the lock cannot leave the map half-updated, so poisoning is
        // ignored rather than spread to every later request.
        let members = self.members.read().unwrap_or_else(PoisonError::into_inner);
        if let Some(member) = members.get(value) {
            return member.clone();
        }
        drop(members);
        let mut members = self.members.write().unwrap_or_else(PoisonError::into_inner);
        members
            .entry(value.to_owned())
            .or_insert_with(|| (self.make)())
            .clone()
    }

    /// Forgets a label value (e.g. a server that left) so the family does not grow forever.
    /// Returns whether it was there.
    pub fn remove(&self, value: &str) -> bool {
        let mut members = self.members.write().unwrap_or_else(PoisonError::into_inner);
        members.remove(value).is_some()
    }

    /// The label's name.
    pub fn label_name(&self) -> &str {
        &self.label
    }
}

impl<M> Clone for Family<M> {
    fn clone(&self) -> Self {
        Family {
            label: self.label.clone(),
            members: self.members.clone(),
            make: self.make.clone(),
        }
    }
}

impl<M> fmt::Debug for Family<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let members = self.members.read().unwrap_or_else(PoisonError::into_inner);
        f.debug_struct("Family")
            .field("label", &self.label)
            .field("values", &members.len())
            .finish()
    }
}

impl<M: Clone> Family<M> {
    /// Every member, sorted by label value so scrapes are stable; copied out so that
    /// rendering does not hold the lock.
    pub(crate) fn snapshot(&self) -> Vec<(String, M)> {
        let mut members: Vec<(String, M)> = {
            let members = self.members.read().unwrap_or_else(PoisonError::into_inner);
            members
                .iter()
                .map(|(k, m)| (k.clone(), m.clone()))
                .collect()
        };
        members.sort_by(|a, b| a.0.cmp(&b.0));
        members
    }
}

#[cfg(test)]
mod tests {
    use super::super::Counter;
    use super::*;

    #[test]
    fn with_creates_once_and_remove_forgets() {
        let family: CounterVec = Family::new("reason", Counter::new);
        family.with("bad_json").inc();
        family.with("bad_json").inc();
        family.with("stale").inc();
        assert_eq!(family.with("bad_json").get(), 2);
        let values: Vec<(String, u64)> = family
            .snapshot()
            .into_iter()
            .map(|(k, c)| (k, c.get()))
            .collect();
        assert_eq!(
            values,
            [("bad_json".to_owned(), 2), ("stale".to_owned(), 1)]
        );
        assert!(family.remove("stale"));
        assert!(!family.remove("stale"));
        assert_eq!(family.label_name(), "reason");
        assert_eq!(
            format!("{family:?}"),
            "Family { label: \"reason\", values: 1 }"
        );
    }
}
