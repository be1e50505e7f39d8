//! The heartbeat consumer, the receiving half of what [`announce`](crate::Announcer) sends: an NSQ consumer on the
//! heartbeat topic (nsqd found through nsqlookupd, or given directly) whose every message goes into a
//! [`Registry`]. Every message is finished, malformed or not: a redelivery could not make a malformed body any
//! better. Rejections are logged at most once per 5 s, with the count left out in between.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use crate::{Outcome, Registry};
use tokio::time::Instant;

/// How nsqd buffers heartbeats to an api-server: up to 16 KiB (about 100 heartbeats), flushed within 25 ms (nsqd's
/// smallest timeout by default). Unbuffered, nsqd wrote every message on its own, so each heartbeat cost the
/// api-server a wake-up, a `recv` and a share of a FIN write: at 20,000 heartbeats/s (100,000 servers every 5 s)
/// over half of its CPU was spent in those system calls (perf). A lone heartbeat may wait up to 25 ms more, a small
/// part of any interval (`bench discovery-latency` measured join p50 0.26 ms, max 2.5 ms with it).
pub const HEARTBEAT_OUTPUT_BUFFER: nsq::OutputBuffer = nsq::OutputBuffer::Buffered {
    size: 16 * 1024,
    timeout: Duration::from_millis(25),
};

/// Where to consume heartbeats from.
#[derive(Debug, Clone)]
pub struct SubscriptionConfig {
    /// The heartbeat topic.
    pub topic: String,
    /// This instance's channel.
    pub channel: String,
    /// nsqlookupd HTTP addresses.
    pub lookupd_http_addresses: Vec<String>,
    /// nsqd TCP addresses.
    pub nsqd_tcp_addresses: Vec<String>,
    /// nsqlookupd poll interval.
    pub lookupd_poll_interval: Duration,
    /// Connection settings the consumer starts from: TLS (also for `https://` lookupds), AUTH, identity. Its
    /// output buffering and heartbeat interval are replaced by what heartbeats need.
    pub conn: nsq::Config,
}

/// Starts the heartbeat consumer feeding `registry`; it runs until the returned consumer is stopped.
///
/// Each message is handed to [`Registry::observe_resolving`] with nsqd's timestamp and the current time.
pub fn subscribe(
    cfg: &SubscriptionConfig,
    registry: Registry,
) -> Result<nsq::Consumer, nsq::Error> {
    let log = Arc::new(RateLimitedLog::new(Duration::from_secs(5)));
    let consumer_cfg = nsq::ConsumerConfig {
        conn: nsq::Config {
            output_buffer: HEARTBEAT_OUTPUT_BUFFER,
            heartbeat_interval: Some(Duration::from_secs(5)),
            ..cfg.conn.clone()
        },
        lookupd_http_addresses: cfg.lookupd_http_addresses.clone(),
        nsqd_tcp_addresses: cfg.nsqd_tcp_addresses.clone(),
        lookupd_poll_interval: cfg.lookupd_poll_interval,
        // Heartbeats are tiny and handled in microseconds; a deep window keeps 10k servers flowing.
        max_in_flight: 2500,
        concurrency: 2,
        reconnect_min: Duration::from_millis(100),
        reconnect_max: Duration::from_secs(1),
        // Never give up or requeue: every message is finished by the handler.
        max_attempts: 0,
        ..nsq::ConsumerConfig::default()
    };
    nsq::Consumer::start(
        &cfg.topic,
        &cfg.channel,
        consumer_cfg,
        move |msg: nsq::Message| {
            let (registry, log) = (registry.clone(), Arc::clone(&log));
            async move {
                let outcome = registry
                    .observe_resolving(msg.body(), msg.timestamp_ns(), SystemTime::now())
                    .await;
                match &outcome {
                    Outcome::Rejected(rejection) => {
                        log.warn(|suppressed| {
                            tracing::warn!(
                                nsqd = msg.nsqd_address(),
                                reason = rejection.reason().as_str(),
                                suppressed,
                                "heartbeat rejected: {}",
                                rejection.detail()
                            )
                        });
                    }
                    Outcome::Joined | Outcome::Left | Outcome::Moved => {
                        tracing::debug!(?outcome, "registry changed")
                    }
                    _ => {}
                }
                Ok::<(), nsq::HandlerError>(())
            }
        },
    )
}

/// At most one log line per period; the next line says how many were left out in between, so a flood of
/// garbage costs one line per period instead of one per message.
#[derive(Debug)]
pub(crate) struct RateLimitedLog {
    period: Duration,
    last: Mutex<Option<Instant>>,
    suppressed: AtomicU64,
}

impl RateLimitedLog {
    /// A limiter allowing one line per `period`.
    pub(crate) fn new(period: Duration) -> Self {
        RateLimitedLog {
            period,
            last: Mutex::new(None),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Calls `emit(suppressed_since_last_line)` if a line is due, else counts one suppressed line. Returns whether
    /// it emitted.
    pub(crate) fn warn(&self, emit: impl FnOnce(u64)) -> bool {
        let now = Instant::now();
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        if last.is_some_and(|at| now.saturating_duration_since(at) < self.period) {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        *last = Some(now);
        drop(last);
        emit(self.suppressed.swap(0, Ordering::Relaxed));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn one_line_per_period_with_the_count_left_out() {
        let log = RateLimitedLog::new(Duration::from_secs(5));
        let mut lines = Vec::new();
        for _ in 0..100 {
            log.warn(|n| lines.push(n));
        }
        tokio::time::advance(Duration::from_secs(6)).await;
        log.warn(|n| lines.push(n));
        assert_eq!(lines, vec![0, 99]);
    }
}
