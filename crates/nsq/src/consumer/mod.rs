//! `Consumer`: subscribes a topic/channel on every nsqd it finds (directly or through
//! nsqlookupd), hands messages to `concurrency` handler tasks, keeps the sum of RDY within
//! `max_in_flight`, backs off when handlers fail, and stops gracefully.

mod connection;
mod coordinator;
mod message;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::names::{validate_channel, validate_topic};

pub use message::Message;

/// What a handler returns when it could not process a message: the message is requeued.
pub type HandlerError = Box<dyn std::error::Error + Send + Sync>;

/// Processes messages. Runs on `concurrency` tasks at once.
///
/// A closure `Fn(Message) -> impl Future<Output = Result<(), HandlerError>>` is a handler.
pub trait Handler: Send + Sync + 'static {
    /// Handles one message. `Ok` finishes it and `Err` requeues it (with backoff), unless the
    /// handler already answered it through [`Message::finish`] or [`Message::requeue`]. A panic,
    /// also one before the future is returned, counts as `Err`. A message whose connection
    /// ended while it waited in the queue is not handed over (nsqd redelivers it).
    fn handle(&self, message: Message) -> impl Future<Output = Result<(), HandlerError>> + Send;

    /// Called instead of `handle` for a message delivered more than `max_attempts` times;
    /// the message is finished afterwards (requeued instead if this panics). The default logs it.
    fn give_up(&self, message: &Message) -> impl Future<Output = ()> + Send {
        tracing::warn!(
            id = %String::from_utf8_lossy(message.id()),
            attempts = message.attempts(),
            nsqd = message.nsqd_address(),
            "giving up on a message after max_attempts; finishing it"
        );
        async {}
    }
}

impl<F, Fut> Handler for F
where
    F: Fn(Message) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send,
{
    fn handle(&self, message: Message) -> impl Future<Output = Result<(), HandlerError>> + Send {
        self(message)
    }
}

/// Settings of a [`Consumer`].
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// Connection settings.
    pub conn: Config,
    /// nsqd TCP addresses to connect to directly.
    pub nsqd_tcp_addresses: Vec<String>,
    /// nsqlookupd HTTP addresses (`host:port`) to discover nsqd through.
    pub lookupd_http_addresses: Vec<String>,
    /// Most messages in flight at once, over all connections.
    pub max_in_flight: u64,
    /// Handler tasks.
    pub concurrency: usize,
    /// How often nsqlookupd is asked (after a random first delay of up to `jitter` of it).
    /// More than zero.
    pub lookupd_poll_interval: Duration,
    /// Fraction (0..=1) of the poll interval used as the random delay before the second poll.
    pub lookupd_poll_jitter: f64,
    /// Bound on one nsqlookupd query.
    pub lookupd_timeout: Duration,
    /// Deliveries after which a message is given up (finished without handling); 0: never.
    pub max_attempts: u16,
    /// Whether a handler's `Ok` finishes the message. When false, `Ok` leaves it in flight
    /// until someone calls [`Message::finish`] or [`Message::requeue`] (from any thread, e.g.
    /// once a batch holding it is committed); `Err` still requeues it.
    pub auto_response: bool,
    /// Requeue delay unit: a failed message waits `requeue_delay` x attempts...
    pub requeue_delay: Duration,
    /// ...capped at this.
    pub max_requeue_delay: Duration,
    /// First pause after a handler failure (doubles per further failure).
    pub backoff_base: Duration,
    /// Longest pause.
    pub backoff_max: Duration,
    /// First reconnect delay after a connection ends (doubles, with jitter). More than zero.
    pub reconnect_min: Duration,
    /// Longest reconnect delay.
    pub reconnect_max: Duration,
    /// When there are more connections than `max_in_flight`, or while backoff probes with
    /// RDY 1, how often RDY moves between connections. More than zero.
    pub rdy_redistribute_interval: Duration,
    /// A connection without messages for this long gives its RDY to another (also the
    /// backoff probe's RDY 1).
    pub low_rdy_idle_timeout: Duration,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        Self {
            conn: Config::default(),
            nsqd_tcp_addresses: Vec::new(),
            lookupd_http_addresses: Vec::new(),
            max_in_flight: 1,
            concurrency: 1,
            lookupd_poll_interval: Duration::from_secs(60),
            lookupd_poll_jitter: 0.3,
            lookupd_timeout: Duration::from_secs(10),
            max_attempts: 5,
            auto_response: true,
            requeue_delay: Duration::from_secs(90),
            max_requeue_delay: Duration::from_secs(15 * 60),
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(120),
            reconnect_min: Duration::from_millis(250),
            reconnect_max: Duration::from_secs(10),
            rdy_redistribute_interval: Duration::from_secs(5),
            low_rdy_idle_timeout: Duration::from_secs(10),
        }
    }
}

impl ConsumerConfig {
    /// Checks the consumer's own settings; values the coordinator cannot work with (a zero
    /// interval would panic or spin) are refused here, naming the field.
    fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if self.nsqd_tcp_addresses.is_empty() && self.lookupd_http_addresses.is_empty() {
            return bad("a consumer needs nsqd_tcp_addresses or lookupd_http_addresses".into());
        }
        if self.max_in_flight == 0 {
            return bad("max_in_flight must be at least 1".into());
        }
        if self.concurrency == 0 {
            return bad("concurrency must be at least 1".into());
        }
        let positive = [
            ("lookupd_poll_interval", self.lookupd_poll_interval),
            ("reconnect_min", self.reconnect_min),
            ("rdy_redistribute_interval", self.rdy_redistribute_interval),
        ];
        for (name, value) in positive {
            if value.is_zero() {
                return bad(format!("{name} must be more than zero, got {value:?}"));
            }
        }
        if !(0.0..=1.0).contains(&self.lookupd_poll_jitter) {
            return bad(format!(
                "lookupd_poll_jitter must be a fraction in 0..=1, got {}",
                self.lookupd_poll_jitter
            ));
        }
        Ok(())
    }
}

/// Counters of a consumer, for metrics.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) received: AtomicU64,
    pub(crate) finished: AtomicU64,
    pub(crate) requeued: AtomicU64,
    pub(crate) timed_out: AtomicU64,
    pub(crate) given_up: AtomicU64,
    pub(crate) handler_errors: AtomicU64,
    pub(crate) connections: AtomicI64,
    pub(crate) reconnects: AtomicU64,
    pub(crate) connect_failures: AtomicU64,
}

/// A snapshot of a consumer's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConsumerStats {
    /// Messages received.
    pub received: u64,
    /// Messages finished (FIN sent on a live connection).
    pub finished: u64,
    /// Messages requeued (REQ sent on a live connection).
    pub requeued: u64,
    /// Answers nsqd refused because the message had already timed out (E_FIN_FAILED and co).
    pub timed_out: u64,
    /// Messages given up after `max_attempts`.
    pub given_up: u64,
    /// Handler errors (and panics).
    pub handler_errors: u64,
    /// Open connections.
    pub connections: i64,
    /// Connections opened after the first one to the same nsqd.
    pub reconnects: u64,
    /// Connection attempts that failed (refused, timed out, handshake or SUB error).
    pub connect_failures: u64,
    /// Messages received and not answered yet.
    pub in_flight: i64,
    /// Current backoff level (0: not backing off).
    pub backoff_level: u32,
    /// Current max_in_flight.
    pub max_in_flight: u64,
}

/// State shared by the coordinator, connections, handler tasks and messages.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) stats: Counters,
    pub(crate) in_flight: AtomicI64,
    pub(crate) backoff_level: AtomicU32,
    pub(crate) max_in_flight: AtomicU64,
    requeue_delay: Duration,
    max_requeue_delay: Duration,
    /// Handler outcomes for the coordinator's backoff: `true` for a FIN (automatic or manual),
    /// `false` for a handler failure.
    outcomes: mpsc::UnboundedSender<bool>,
}

impl Shared {
    pub(crate) fn new(cfg: &ConsumerConfig, outcomes: mpsc::UnboundedSender<bool>) -> Self {
        Self {
            stats: Counters::default(),
            in_flight: AtomicI64::new(0),
            backoff_level: AtomicU32::new(0),
            max_in_flight: AtomicU64::new(cfg.max_in_flight),
            requeue_delay: cfg.requeue_delay,
            max_requeue_delay: cfg.max_requeue_delay,
            outcomes,
        }
    }

    /// A message was finished: one step out of backoff, like go-nsq, whoever sent the FIN.
    /// Outside backoff nothing is sent, which keeps the hot path to one load.
    pub(crate) fn report_finished(&self) {
        if self.backoff_level.load(Ordering::Relaxed) > 0 {
            let _ = self.outcomes.send(true);
        }
    }

    /// A handler failed (error or panic): one step further into backoff.
    pub(crate) fn report_failed(&self) {
        let _ = self.outcomes.send(false);
    }

    pub(crate) fn requeue_delay(&self, attempts: u16) -> Duration {
        (self.requeue_delay * u32::from(attempts.max(1))).min(self.max_requeue_delay)
    }
}

/// What [`Consumer::stop`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StopReport {
    /// Messages answered (finished or requeued) while stopping.
    pub drained: u64,
    /// Messages still unanswered at the deadline; nsqd redelivers them after their timeout.
    pub abandoned: i64,
    /// Whether everything finished before the timeout.
    pub clean: bool,
}

pub(crate) enum Control {
    SetMaxInFlight(u64),
    Stop(Duration, oneshot::Sender<StopReport>),
}

/// A running consumer. Stop it with [`Consumer::stop`]; dropping it stops it abruptly.
pub struct Consumer {
    shared: Arc<Shared>,
    control: mpsc::UnboundedSender<Control>,
    topic: String,
    channel: String,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("topic", &self.topic)
            .field("channel", &self.channel)
            .finish()
    }
}

impl Consumer {
    /// Starts consuming `topic` on `channel`. Returns at once; connections are made in the
    /// background and retried until [`Consumer::stop`]. Call it within a tokio runtime.
    pub fn start<H: Handler>(
        topic: &str,
        channel: &str,
        cfg: ConsumerConfig,
        handler: H,
    ) -> Result<Self> {
        validate_topic(topic)?;
        validate_channel(channel)?;
        cfg.conn.validate()?;
        cfg.validate()?;
        let tls = cfg.conn.tls_client_config()?;
        let (outcomes, outcomes_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared::new(&cfg, outcomes));
        let (control, control_rx) = mpsc::unbounded_channel();
        coordinator::spawn(
            topic.to_string(),
            channel.to_string(),
            cfg,
            tls,
            Arc::clone(&shared),
            Arc::new(handler),
            control_rx,
            outcomes_rx,
        );
        Ok(Self {
            shared,
            control,
            topic: topic.to_string(),
            channel: channel.to_string(),
        })
    }

    /// Counters now.
    pub fn stats(&self) -> ConsumerStats {
        let s = &self.shared.stats;
        ConsumerStats {
            received: s.received.load(Ordering::Relaxed),
            finished: s.finished.load(Ordering::Relaxed),
            requeued: s.requeued.load(Ordering::Relaxed),
            timed_out: s.timed_out.load(Ordering::Relaxed),
            given_up: s.given_up.load(Ordering::Relaxed),
            handler_errors: s.handler_errors.load(Ordering::Relaxed),
            connections: s.connections.load(Ordering::Relaxed),
            reconnects: s.reconnects.load(Ordering::Relaxed),
            connect_failures: s.connect_failures.load(Ordering::Relaxed),
            in_flight: self.shared.in_flight.load(Ordering::Relaxed),
            backoff_level: self.shared.backoff_level.load(Ordering::Relaxed),
            max_in_flight: self.shared.max_in_flight.load(Ordering::Relaxed),
        }
    }

    /// Changes max_in_flight; RDY is redistributed at once.
    pub fn set_max_in_flight(&self, max_in_flight: u64) {
        let _ = self
            .control
            .send(Control::SetMaxInFlight(max_in_flight.max(1)));
    }

    /// Graceful stop: CLS to every nsqd, keep answering what handlers complete until nothing is
    /// in flight (or `timeout`), flush, close. Nothing a handler finished is redelivered.
    pub async fn stop(self, timeout: Duration) -> StopReport {
        let (tx, rx) = oneshot::channel();
        if self.control.send(Control::Stop(timeout, tx)).is_err() {
            return StopReport::default();
        }
        rx.await.unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requeue_delay_grows_with_attempts_and_is_capped() {
        let shared = Shared::new(&ConsumerConfig::default(), mpsc::unbounded_channel().0);
        assert_eq!(shared.requeue_delay(1), Duration::from_secs(90));
        assert_eq!(shared.requeue_delay(3), Duration::from_secs(270));
        assert_eq!(shared.requeue_delay(100), Duration::from_secs(900));
        assert_eq!(shared.requeue_delay(0), Duration::from_secs(90));
    }

    /// `Consumer::start`'s error for `cfg` on a direct nsqd, which must name `field`.
    fn refused(field: &str, cfg: ConsumerConfig) {
        let cfg = ConsumerConfig {
            nsqd_tcp_addresses: vec!["127.0.0.1:4150".into()],
            ..cfg
        };
        let handler = |_m: Message| async { Ok::<(), HandlerError>(()) };
        match Consumer::start("t", "c", cfg, handler) {
            Err(Error::Config(m)) => assert!(m.contains(field), "{m:?} names {field}"),
            other => panic!("{field}: expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn settings_that_would_panic_or_spin_are_refused_by_name() {
        let d = ConsumerConfig::default;
        refused(
            "rdy_redistribute_interval",
            ConsumerConfig {
                rdy_redistribute_interval: Duration::ZERO,
                ..d()
            },
        );
        refused(
            "lookupd_poll_interval",
            ConsumerConfig {
                lookupd_poll_interval: Duration::ZERO,
                ..d()
            },
        );
        refused(
            "reconnect_min",
            ConsumerConfig {
                reconnect_min: Duration::ZERO,
                ..d()
            },
        );
        for jitter in [f64::NAN, -0.1, 1.5, f64::INFINITY] {
            refused(
                "lookupd_poll_jitter",
                ConsumerConfig {
                    lookupd_poll_jitter: jitter,
                    ..d()
                },
            );
        }
        refused(
            "max_in_flight",
            ConsumerConfig {
                max_in_flight: 0,
                ..d()
            },
        );
        refused(
            "concurrency",
            ConsumerConfig {
                concurrency: 0,
                ..d()
            },
        );
    }
}
