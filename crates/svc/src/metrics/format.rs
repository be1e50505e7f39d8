//! The two text formats a scraper may ask for, chosen from the request's `Accept` header.

use prometheus_client::encoding::{prometheus_text, text};
use prometheus_client::registry::Registry;

/// A metrics exposition format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The classic Prometheus text format 0.0.4, what `curl` and older scrapers get.
    Prometheus,
    /// OpenMetrics 1.0 text, ending in `# EOF`; Prometheus asks for it first.
    OpenMetrics,
}

impl Format {
    /// OpenMetrics when `Accept` lists `application/openmetrics-text` with a weight at least that
    /// of the classic format (`text/plain`, `text/*`, `*/*`); the classic format otherwise,
    /// including without the header.
    pub fn from_accept(accept: Option<&str>) -> Format {
        let Some(accept) = accept else {
            return Format::Prometheus;
        };
        let (mut openmetrics, mut classic) = (0.0f32, 0.0f32);
        for range in accept.split(',') {
            let mut parts = range.split(';');
            let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let weight = parts
                .filter_map(|p| p.trim().strip_prefix("q="))
                .find_map(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            match media.as_str() {
                "application/openmetrics-text" => openmetrics = openmetrics.max(weight),
                "text/plain" | "text/*" | "*/*" => classic = classic.max(weight),
                _ => {}
            }
        }
        if openmetrics > 0.0 && openmetrics >= classic {
            Format::OpenMetrics
        } else {
            Format::Prometheus
        }
    }

    /// The `Content-Type` of this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => prometheus_text::CONTENT_TYPE,
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }

    pub(crate) fn encode(self, out: &mut String, registry: &Registry) -> std::fmt::Result {
        match self {
            Format::Prometheus => prometheus_text::encode(out, registry),
            Format::OpenMetrics => text::encode(out, registry),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_headers() {
        assert_eq!(Format::from_accept(None), Format::Prometheus);
        assert_eq!(Format::from_accept(Some("*/*")), Format::Prometheus);
        // What Prometheus 2.x/3.x sends by default.
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::from_accept(Some(prometheus)), Format::OpenMetrics);
        let prefers_text = "text/plain;version=0.0.4;q=1,application/openmetrics-text;q=0.5";
        assert_eq!(Format::from_accept(Some(prefers_text)), Format::Prometheus);
        let refused = "application/openmetrics-text;q=0";
        assert_eq!(Format::from_accept(Some(refused)), Format::Prometheus);
        assert_eq!(
            Format::from_accept(Some("Application/OpenMetrics-Text")),
            Format::OpenMetrics
        );
    }
}
