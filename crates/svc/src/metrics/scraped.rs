//! Values read at scrape time from where they are kept (a registry's size, an announcer's
//! counters, a consumer's statistics), so they never drift from a mirrored copy.

use std::fmt;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// Label pairs of one series, e.g. `vec![("outcome", "rejected".into()), ("reason", "unsigned".into())]`.
/// A series may leave out a label that does not apply to it.
pub type Labels = Vec<(&'static str, String)>;

type Read<T> = Box<dyn Fn() -> T + Send + Sync>;

/// What a scrape-time reader gives: one value, or one value per label set.
pub(crate) enum Scraped {
    Counter(Read<u64>),
    Gauge(Read<i64>),
    CounterFamily(Read<Vec<(Labels, u64)>>),
    GaugeFamily(Read<Vec<(Labels, i64)>>),
}

impl fmt::Debug for Scraped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Scraped::Counter(_) => "Scraped::Counter",
            Scraped::Gauge(_) => "Scraped::Gauge",
            Scraped::CounterFamily(_) => "Scraped::CounterFamily",
            Scraped::GaugeFamily(_) => "Scraped::GaugeFamily",
        })
    }
}

impl EncodeMetric for Scraped {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), fmt::Error> {
        match self {
            Scraped::Counter(read) => ConstCounter::new(read()).encode(encoder),
            Scraped::Gauge(read) => ConstGauge::new(read()).encode(encoder),
            Scraped::CounterFamily(read) => {
                for (labels, value) in read() {
                    ConstCounter::new(value).encode(encoder.encode_family(&labels)?)?;
                }
                Ok(())
            }
            Scraped::GaugeFamily(read) => {
                for (labels, value) in read() {
                    ConstGauge::new(value).encode(encoder.encode_family(&labels)?)?;
                }
                Ok(())
            }
        }
    }

    fn metric_type(&self) -> MetricType {
        match self {
            Scraped::Counter(_) | Scraped::CounterFamily(_) => MetricType::Counter,
            Scraped::Gauge(_) | Scraped::GaugeFamily(_) => MetricType::Gauge,
        }
    }
}
