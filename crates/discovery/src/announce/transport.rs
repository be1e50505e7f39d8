//! Where heartbeats go: NSQ in production, a recording fake in the announcer's virtual-time tests.
//!
//! The seam exists so that tick timing can be tested with `tokio::time::pause()`, which a real
//! socket cannot follow.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// A boxed future, as used by the object-safe [`Transport`].
pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What one publish (with failover) did.
#[derive(Debug, Default)]
pub(crate) struct Delivery {
    /// The nsqd that took the message.
    pub(crate) accepted_by: Option<String>,
    /// The nsqd that failed on the way, with the error text.
    pub(crate) failures: Vec<(String, String)>,
    /// Input that no nsqd would take (nothing further was tried).
    pub(crate) rejected: Option<String>,
}

/// Publishes one message to one of several nsqd, failing over within the call.
pub(crate) trait Transport: Send + Sync + 'static {
    /// The nsqd addresses, in configuration order.
    fn addrs(&self) -> Vec<String>;
    /// Publishes `body` on `topic`.
    fn send<'a>(&'a self, topic: &'a str, body: Vec<u8>) -> BoxFuture<'a, Delivery>;
    /// Flushes and closes the connections.
    fn close(&self, timeout: Duration) -> BoxFuture<'_, ()>;
}

impl Transport for nsq::Publisher {
    fn addrs(&self) -> Vec<String> {
        self.producers()
            .iter()
            .map(|p| p.addr().to_owned())
            .collect()
    }

    fn send<'a>(&'a self, topic: &'a str, body: Vec<u8>) -> BoxFuture<'a, Delivery> {
        Box::pin(async move {
            let report = self.publish_detailed(topic, body).await;
            Delivery {
                accepted_by: report
                    .accepted_by
                    .map(|i| self.producers()[i].addr().to_owned()),
                failures: report
                    .failures
                    .into_iter()
                    .map(|(addr, err)| (addr, err.to_string()))
                    .collect(),
                rejected: report.error.map(|err| err.to_string()),
            }
        })
    }

    fn close(&self, timeout: Duration) -> BoxFuture<'_, ()> {
        Box::pin(nsq::Publisher::close(self, timeout))
    }
}
