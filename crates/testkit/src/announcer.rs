//! Heartbeats for a server that need not exist: discovery's own announcer, run on a task of the
//! test, for any `id` and `addr` (a closed port, a made-up address) and any `meta`. A test that
//! needs a real server behind the address starts a [`DataServer`](crate::DataServer) instead.

use std::time::Duration;

use anyhow::Result;
use discovery::{AnnouncerConfig, publish_timeout_for};
use tokio::task::JoinHandle;

use crate::NsqCluster;

/// How long [`Announcer::leave`] waits for the nsqd connections to flush.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// A running announcer; dropping it stops the heartbeats without a word, like
/// [`Announcer::crash`].
#[derive(Debug)]
pub struct Announcer {
    announcer: discovery::Announcer,
    task: JoinHandle<()>,
}

impl Announcer {
    /// Announces `id` at `addr` every `interval` (no jitter) through the nsqd of `cluster`.
    pub fn start(
        cluster: &NsqCluster,
        id: &str,
        addr: &str,
        interval: Duration,
    ) -> Result<Announcer> {
        Announcer::start_with(Announcer::config(cluster, id, addr, interval))
    }

    /// The configuration [`Announcer::start`] uses, to change (e.g. its `meta`) before
    /// [`Announcer::start_with`].
    pub fn config(
        cluster: &NsqCluster,
        id: &str,
        addr: &str,
        interval: Duration,
    ) -> AnnouncerConfig {
        let nsqd = cluster
            .nsqd_tcp_addresses()
            .into_iter()
            .map(|a| a.to_string());
        let mut cfg = AnnouncerConfig::new(id, addr, nsqd);
        cfg.interval = interval;
        cfg.jitter = 0.0;
        cfg.producer.publish_timeout = publish_timeout_for(interval);
        cfg
    }

    /// Starts announcing with `cfg` (always healthy) until [`Announcer::crash`] or
    /// [`Announcer::leave`].
    pub fn start_with(cfg: AnnouncerConfig) -> Result<Announcer> {
        let announcer = discovery::Announcer::new(cfg)?;
        let task = announcer.spawn(|| true, std::future::pending());
        Ok(Announcer { announcer, task })
    }

    /// Stops without a word, like SIGKILL.
    pub async fn crash(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }

    /// Publishes `leaving` once, then stops, like SIGTERM.
    pub async fn leave(mut self) -> Result<()> {
        let sent = self.announcer.leave().await;
        let _ = (&mut self.task).await;
        self.announcer.close(CLOSE_TIMEOUT).await;
        sent?;
        Ok(())
    }
}

impl Drop for Announcer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
