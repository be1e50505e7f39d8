//! The canary: bus liveness by measurement, not by guess.
//!
//! Every `canary_interval` the api-server publishes a small JSON message to every nsqd it knows (configured
//! `nsqd_tcp_addresses` plus every node nsqlookupd lists) on a topic of its own, `<discovery.topic>.canary#ephemeral`,
//! and subscribes to that topic on each nsqd directly, on its own ephemeral channel. A canary coming back through an
//! nsqd proves that nsqd accepts, stores and delivers right now.
//!
//! Why a separate topic rather than canaries on the heartbeat topic: other api-servers (and Go services, and the
//! archiver) read the heartbeat topic, and would have to recognise canaries or count them as malformed heartbeats.
//! On a topic of its own nobody else sees them. Ephemeral, so nsqd drops the topic once no api-server listens
//! instead of queueing canaries forever. Every api-server accepts every fresh canary, its own or another's: any of
//! them proves delivery. Stale ones (older than the timeout by their `sent_at_ms`, e.g. queued while nobody
//! listened) prove nothing and are ignored.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use discovery::Registry;
use svc::Shutdown;
use tokio::time::Instant;

use crate::bus::Bus;

/// What the canary needs to know.
#[derive(Debug, Clone)]
pub struct CanaryConfig {
    /// The canary topic.
    pub topic: String,
    /// This instance's channel on it.
    pub channel: String,
    /// This instance's name, written into its canaries.
    pub instance: String,
    /// How often to publish.
    pub interval: Duration,
    /// A canary older than this proves nothing.
    pub timeout: Duration,
    /// How often nsqlookupd is asked for the nsqd set.
    pub poll_interval: Duration,
    /// nsqlookupd HTTP addresses.
    pub lookupd_http_addresses: Vec<String>,
    /// nsqd TCP addresses always probed.
    pub nsqd_tcp_addresses: Vec<String>,
    /// Connection settings every probe starts from: TLS and AUTH of `[nsq]`.
    pub conn: nsq::Config,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct CanaryBody {
    canary: u8,
    from: String,
    sent_at_ms: u64,
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A canary sent less than `timeout` ago, if `body` is one.
fn fresh(body: &[u8], timeout: Duration) -> Option<CanaryBody> {
    let canary = serde_json::from_slice::<CanaryBody>(body).ok()?;
    // A canary from a clock slightly ahead is fresh, not stale.
    (canary.canary == 1 && wall_ms().saturating_sub(canary.sent_at_ms) < timeout.as_millis() as u64)
        .then_some(canary)
}

/// How far nsqd's clock is ahead of this host's (negative: behind), in ms, from one of this instance's own
/// canaries: the timestamp nsqd gave it minus when it was sent (the trip to nsqd, a millisecond or so on a LAN,
/// counts as ahead). Heartbeats are judged stale by nsqd's timestamps against this host's clock (ARCHITECTURE
/// §4.2), so an nsqd far behind makes every heartbeat through it look old.
fn clock_offset_ms(canary: &CanaryBody, nsqd_timestamp_ns: i64, instance: &str) -> Option<i64> {
    let ours = canary
        .from
        .rsplit_once('#')
        .is_some_and(|(from, _)| from == instance);
    let sent = i64::try_from(canary.sent_at_ms).ok()?;
    (ours && nsqd_timestamp_ns > 0).then(|| nsqd_timestamp_ns / 1_000_000 - sent)
}

/// A producer and a direct consumer on one nsqd.
struct Probe {
    producer: nsq::Producer,
    consumer: nsq::Consumer,
}

impl Probe {
    fn start(addr: &str, cfg: &CanaryConfig, bus: &Bus) -> Result<Probe, nsq::Error> {
        let conn = nsq::Config {
            output_buffer: nsq::OutputBuffer::Unbuffered,
            // nsqd's minimum; a frozen nsqd is noticed within two of these.
            heartbeat_interval: Some(Duration::from_secs(1)),
            dial_timeout: cfg.interval.max(Duration::from_millis(100)),
            ..cfg.conn.clone()
        };
        let producer = nsq::Producer::new(
            addr,
            nsq::ProducerConfig {
                conn: conn.clone(),
                publish_timeout: cfg.interval.max(Duration::from_millis(100)),
                ..nsq::ProducerConfig::default()
            },
        )?;
        let (bus, nsqd, timeout) = (bus.clone(), addr.to_owned(), cfg.timeout);
        let instance = cfg.instance.clone();
        let consumer = nsq::Consumer::start(
            &cfg.topic,
            &cfg.channel,
            nsq::ConsumerConfig {
                conn,
                nsqd_tcp_addresses: vec![addr.to_owned()],
                max_in_flight: 16,
                concurrency: 1,
                reconnect_min: Duration::from_millis(100),
                reconnect_max: Duration::from_secs(1),
                ..nsq::ConsumerConfig::default()
            },
            move |msg: nsq::Message| {
                let (bus, nsqd) = (bus.clone(), nsqd.clone());
                let canary = fresh(msg.body(), timeout);
                let offset = canary
                    .as_ref()
                    .and_then(|c| clock_offset_ms(c, msg.timestamp_ns(), &instance));
                async move {
                    if canary.is_some() {
                        bus.canary_received(&nsqd, Instant::now(), offset);
                    }
                    // Always finished: a canary is never worth a redelivery.
                    Ok::<(), nsq::HandlerError>(())
                }
            },
        )?;
        Ok(Probe { producer, consumer })
    }

    async fn stop(self) {
        self.consumer.stop(Duration::from_secs(1)).await;
        self.producer.close(Duration::from_millis(200)).await;
    }
}

/// Runs the canary until `shutdown`: refreshes the nsqd set, publishes, and re-evaluates bus liveness every
/// interval. `heartbeat_connections` reads the heartbeat consumer's open connections.
pub async fn run(
    cfg: CanaryConfig,
    bus: Bus,
    registry: Registry,
    heartbeat_connections: impl Fn() -> i64 + Send + 'static,
    shutdown: Shutdown,
) {
    // Lookups over https:// use [nsq]'s CA; a TLS setting that cannot load was refused at config load.
    let http = match nsq::Lookupd::with_tls(LOOKUPD_TIMEOUT, cfg.conn.tls.as_ref()) {
        Ok(client) => client,
        Err(err) => {
            tracing::error!("canary: cannot build the nsqlookupd client: {err}");
            return;
        }
    };
    let mut probes: BTreeMap<String, Probe> = BTreeMap::new();
    let mut tick = tokio::time::interval(cfg.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_refresh = Instant::now();
    let mut seq: u64 = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.wait() => break,
        }
        if Instant::now() >= next_refresh {
            next_refresh = Instant::now() + cfg.poll_interval;
            if let Some(addrs) = nsqd_set(&http, &cfg).await {
                reconcile(&mut probes, &addrs, &cfg, &bus).await;
            }
        }
        seq += 1;
        let body = serde_json::to_vec(&CanaryBody {
            canary: 1,
            from: format!("{}#{seq}", cfg.instance),
            sent_at_ms: wall_ms(),
        })
        .unwrap_or_default();
        let (topic, body, bus_ref) = (&cfg.topic, &body, &bus);
        let publishes = probes.iter().map(|(addr, probe)| async move {
            let result = probe.producer.publish(topic, body).await;
            if let Err(err) = &result {
                tracing::debug!(nsqd = %addr, "canary publish failed: {err}");
            }
            bus_ref.canary_published(result.is_ok());
        });
        futures::future::join_all(publishes).await;
        bus.evaluate(&registry, heartbeat_connections(), Instant::now());
    }
    futures::future::join_all(probes.into_values().map(Probe::stop)).await;
}

/// Starts probes for new nsqd and stops those that are gone.
async fn reconcile(
    probes: &mut BTreeMap<String, Probe>,
    addrs: &BTreeSet<String>,
    cfg: &CanaryConfig,
    bus: &Bus,
) {
    let gone: Vec<String> = probes
        .keys()
        .filter(|a| !addrs.contains(*a))
        .cloned()
        .collect();
    for addr in gone {
        if let Some(probe) = probes.remove(&addr) {
            tracing::info!(nsqd = %addr, "nsqd left the set; canary probe stopped");
            tokio::spawn(probe.stop());
        }
    }
    for addr in addrs {
        if probes.contains_key(addr) {
            continue;
        }
        match Probe::start(addr, cfg, bus) {
            Ok(probe) => {
                tracing::info!(nsqd = %addr, "canary probe started");
                probes.insert(addr.clone(), probe);
            }
            Err(err) => tracing::warn!(nsqd = %addr, "cannot start a canary probe: {err}"),
        }
    }
    let list: Vec<String> = probes.keys().cloned().collect();
    bus.set_nsqds(&list);
}

/// Bound on one nsqlookupd `/nodes` query.
const LOOKUPD_TIMEOUT: Duration = Duration::from_secs(2);

/// Configured nsqd plus every node of every reachable nsqlookupd; `None` when nothing could be learned (keep the
/// current set rather than drop every probe because nsqlookupd is down).
async fn nsqd_set(http: &nsq::Lookupd, cfg: &CanaryConfig) -> Option<BTreeSet<String>> {
    let mut set: BTreeSet<String> = cfg.nsqd_tcp_addresses.iter().cloned().collect();
    let mut answered = cfg.lookupd_http_addresses.is_empty();
    for lookupd in &cfg.lookupd_http_addresses {
        match http.nodes(lookupd).await {
            Ok(nodes) => {
                answered = true;
                set.extend(nodes);
            }
            Err(err) => tracing::debug!(%lookupd, "nsqlookupd /nodes failed: {err}"),
        }
    }
    answered.then_some(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freshness() {
        let now = wall_ms();
        let body = |at: u64| format!(r#"{{"canary":1,"from":"a#1","sent_at_ms":{at}}}"#);
        let timeout = Duration::from_secs(1);
        assert!(fresh(body(now).as_bytes(), timeout).is_some());
        assert!(
            fresh(body(now + 50).as_bytes(), timeout).is_some(),
            "clock skew"
        );
        assert!(fresh(body(now - 5000).as_bytes(), timeout).is_none());
        assert!(fresh(b"10.0.0.1:80", timeout).is_none());
    }

    #[test]
    fn an_nsqds_clock_offset_is_read_from_this_instances_own_canaries() {
        let canary = |from: &str| CanaryBody {
            canary: 1,
            from: from.to_owned(),
            sent_at_ms: 1_000_000,
        };
        // nsqd stamped it 12 s before it was sent by this host's clock: nsqd is 12 s behind.
        let stamped = 988_000 * 1_000_000;
        assert_eq!(
            clock_offset_ms(&canary("api-1#7"), stamped, "api-1"),
            Some(-12_000)
        );
        // Another api-server's canary carries its clock, not ours; an unstamped message says nothing.
        assert_eq!(clock_offset_ms(&canary("api-2#7"), stamped, "api-1"), None);
        assert_eq!(clock_offset_ms(&canary("api-1#7"), 0, "api-1"), None);
    }
}
