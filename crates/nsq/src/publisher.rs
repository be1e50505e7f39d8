//! `Publisher`: publishes to one nsqd of several, chosen at random per publish, failing over to
//! the others when it fails. One [`Producer`] (one connection) per nsqd, never one per publish.

use std::time::Duration;

use rand::seq::SliceRandom;

use crate::error::{Error, Result};
use crate::producer::{Producer, ProducerConfig};

/// Publishes through several nsqd with failover.
#[derive(Clone, Debug)]
pub struct Publisher {
    producers: Vec<Producer>,
}

impl Publisher {
    /// One producer per address. Fails on an empty list or bad settings.
    pub fn new<S: AsRef<str>>(addrs: &[S], cfg: ProducerConfig) -> Result<Self> {
        if addrs.is_empty() {
            return Err(Error::Config(
                "a publisher needs at least one nsqd address".into(),
            ));
        }
        let producers = addrs
            .iter()
            .map(|a| Producer::new(a.as_ref(), cfg.clone()))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { producers })
    }

    /// The producers, one per nsqd.
    pub fn producers(&self) -> &[Producer] {
        &self.producers
    }

    /// Publishes to a random nsqd, trying the others in random order on failure. Returns the
    /// address of the nsqd that took the message, or every nsqd's error.
    pub async fn publish(&self, topic: &str, body: impl AsRef<[u8]>) -> Result<&str> {
        let report = self.publish_detailed(topic, body).await;
        match (report.accepted_by, report.error) {
            (Some(i), _) => Ok(self.producers[i].addr()),
            (None, Some(e)) => Err(e),
            (None, None) => Err(Error::AllFailed(report.failures)),
        }
    }

    /// Like [`Publisher::publish`], and says which nsqd failed on the way (for per-nsqd
    /// metrics and logs) even when another one took the message.
    pub async fn publish_detailed(&self, topic: &str, body: impl AsRef<[u8]>) -> PublishReport {
        let body = body.as_ref();
        let mut order: Vec<usize> = (0..self.producers.len()).collect();
        order.shuffle(&mut rand::rng());
        let mut failures = Vec::new();
        for i in order {
            let p = &self.producers[i];
            match p.publish(topic, body).await {
                Ok(()) => {
                    return PublishReport {
                        accepted_by: Some(i),
                        failures,
                        error: None,
                    };
                }
                // Bad input fails the same everywhere: do not try the others.
                Err(e @ (Error::InvalidName { .. } | Error::InvalidBody(_))) => {
                    return PublishReport {
                        accepted_by: None,
                        failures,
                        error: Some(e),
                    };
                }
                Err(e) => {
                    tracing::debug!(nsqd = p.addr(), error = %e, "publish failed; trying another nsqd");
                    failures.push((p.addr().to_string(), e));
                }
            }
        }
        PublishReport {
            accepted_by: None,
            failures,
            error: None,
        }
    }

    /// Closes every connection after the replies already due (bounded by `timeout` each).
    pub async fn close(&self, timeout: Duration) {
        for p in &self.producers {
            p.close(timeout).await;
        }
    }
}

/// What [`Publisher::publish_detailed`] did.
#[derive(Debug)]
pub struct PublishReport {
    /// Index (into [`Publisher::producers`]) of the nsqd that took the message, if any.
    pub accepted_by: Option<usize>,
    /// The nsqd that failed before, with their errors.
    pub failures: Vec<(String, Error)>,
    /// Bad input that no nsqd would take (then nothing was tried further).
    pub error: Option<Error>,
}
