//! The start-up solicitation (ARCHITECTURE.md §4.2 "Cold start"): once the heartbeat consumer is subscribed on the
//! nsqd it knows, one [`discovery::Solicitation`] goes to every nsqd, and every data server answers with a
//! heartbeat within the spread it names, so a first start routes within milliseconds instead of one interval.
//!
//! The spread keeps a large fleet from answering in one burst: answers should arrive at about
//! `discovery.solicit_rate` (default 20,000/s, the steady heartbeat rate of 100,000 servers every 5 s that the
//! registry is built for), so spread = known servers / rate. Known servers: the larger of what the saved registry
//! held and the channels nsqlookupd lists on the solicitation topic (every data server that answers has one). A
//! handful of servers get a spread of 0 (they answer at once); 100,000 get 5 s. Each data server caps it by its own
//! interval, since its next heartbeat would come by then anyway.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use discovery::{HmacKey, Solicitation};
use svc::Shutdown;
use tokio::time::Instant;

/// How long the solicitation waits for the heartbeat consumer to be subscribed on every known nsqd: an answer
/// published through an nsqd before our channel exists there is lost to us. After this it goes out as soon as
/// at least one connection is up (a start during an NSQ outage solicits when NSQ comes back).
pub const SUBSCRIBE_WAIT: Duration = Duration::from_secs(2);
/// How often the consumer's connections are checked while waiting: often at first (each ms here is a ms before the
/// first routed request), rarely once [`SUBSCRIBE_WAIT`] is over (NSQ is down: nothing to hurry for).
const POLL: Duration = Duration::from_millis(2);
const POLL_DURING_OUTAGE: Duration = Duration::from_millis(100);
/// Bound on one nsqlookupd query and on one publish.
const NSQ_TIMEOUT: Duration = Duration::from_secs(1);
/// Bound on resolving the nsqd names before publishing (IP addresses need no lookup): a name not resolved by then
/// is published to as it is.
const RESOLVE_TIMEOUT: Duration = Duration::from_millis(100);

/// What the solicitation needs to know.
#[derive(Debug, Clone)]
pub struct SolicitConfig {
    /// The solicitation topic.
    pub topic: String,
    /// The heartbeat topic (its producers are solicited too).
    pub heartbeat_topic: String,
    /// This instance's name, written into the solicitation.
    pub instance: String,
    /// Answers per second to aim at.
    pub rate: f64,
    /// Servers the saved registry held at start.
    pub saved_servers: usize,
    /// nsqlookupd HTTP addresses.
    pub lookupd_http_addresses: Vec<String>,
    /// nsqd TCP addresses always solicited.
    pub nsqd_tcp_addresses: Vec<String>,
    /// Signing keys (one signature each); empty: unsigned.
    pub keys: Vec<HmacKey>,
    /// Connection settings (TLS, AUTH).
    pub conn: nsq::Config,
    /// How often nsqlookupd is asked again while no nsqd is reachable.
    pub poll_interval: Duration,
}

/// The spread for `servers` answers at `rate` per second; the message carries whole ms, so a handful (less than
/// 1 ms of answers) get 0 and answer at once.
pub fn spread_for(servers: usize, rate: f64) -> Duration {
    Duration::from_secs_f64(servers as f64 / rate.max(1.0))
}

/// What nsqlookupd and the configuration say: the nsqd the heartbeat consumer should be on, every nsqd to
/// solicit, and the data servers subscribed to solicitations.
#[derive(Debug, Default)]
struct Known {
    heartbeat_nsqd: BTreeSet<String>,
    all_nsqd: BTreeSet<String>,
    solicit_channels: usize,
}

async fn learn(http: &nsq::Lookupd, cfg: &SolicitConfig) -> Known {
    let mut known = Known::default();
    known
        .heartbeat_nsqd
        .extend(cfg.nsqd_tcp_addresses.iter().cloned());
    let mut channels = BTreeSet::new();
    for lookupd in &cfg.lookupd_http_addresses {
        let (heartbeat, solicit) = tokio::join!(
            http.lookup(lookupd, &cfg.heartbeat_topic),
            http.lookup_topic(lookupd, &cfg.topic),
        );
        match heartbeat {
            Ok(addrs) => known.heartbeat_nsqd.extend(addrs),
            Err(err) => tracing::debug!(%lookupd, "solicitation: nsqlookupd lookup failed: {err}"),
        }
        if let Ok(solicit) = solicit {
            known.all_nsqd.extend(solicit.producers);
            channels.extend(solicit.channels);
        }
    }
    known.all_nsqd.extend(known.heartbeat_nsqd.iter().cloned());
    known.solicit_channels = channels.len();
    known
}

/// Publishes the start-up solicitation once the heartbeat consumer is subscribed (see [`SUBSCRIBE_WAIT`]);
/// `heartbeat_connections` reads the consumer's open connections.
pub async fn solicit_at_start(
    cfg: SolicitConfig,
    heartbeat_connections: impl Fn() -> i64,
    shutdown: Shutdown,
) {
    let http = match nsq::Lookupd::with_tls(NSQ_TIMEOUT, cfg.conn.tls.as_ref()) {
        Ok(client) => client,
        Err(err) => {
            tracing::warn!("solicitation: cannot build the nsqlookupd client: {err}");
            return;
        }
    };
    let started = Instant::now();
    let mut known = learn(&http, &cfg).await;
    let mut next_lookup = Instant::now() + cfg.poll_interval;
    let mut last_lookup = Instant::now();
    loop {
        let connections = usize::try_from(heartbeat_connections()).unwrap_or(0);
        // The consumer is on nsqd we do not know of (nsqlookupd failed or knew nothing when we asked, and answered
        // the consumer later): ask again, at most every POLL_DURING_OUTAGE, so as not to publish to none.
        if connections > known.heartbeat_nsqd.len() && last_lookup.elapsed() >= POLL_DURING_OUTAGE {
            known = learn(&http, &cfg).await;
            last_lookup = Instant::now();
        }
        let somewhere = !known.all_nsqd.is_empty();
        let all_subscribed = connections >= known.heartbeat_nsqd.len().max(1);
        if somewhere && (all_subscribed || (connections > 0 && started.elapsed() >= SUBSCRIBE_WAIT))
        {
            break;
        }
        if Instant::now() >= next_lookup {
            known = learn(&http, &cfg).await;
            next_lookup = Instant::now() + cfg.poll_interval;
            last_lookup = Instant::now();
        }
        let pause = if started.elapsed() < SUBSCRIBE_WAIT {
            POLL
        } else {
            POLL_DURING_OUTAGE
        };
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = shutdown.wait() => return,
        }
    }
    let servers = known.solicit_channels.max(cfg.saved_servers);
    let spread = spread_for(servers, cfg.rate);
    let body = Solicitation::new(&cfg.instance, spread).encode(&cfg.keys);
    let targets = one_name_per_nsqd(&known.all_nsqd).await;
    let publishes = targets.iter().map(|addr| {
        let (body, topic, conn) = (&body, &cfg.topic, cfg.conn.clone());
        async move {
            let producer = nsq::Producer::new(
                addr.clone(),
                nsq::ProducerConfig {
                    conn,
                    publish_timeout: NSQ_TIMEOUT,
                    ..nsq::ProducerConfig::default()
                },
            )?;
            let result = producer.publish(topic, body).await;
            producer.close(Duration::from_millis(200)).await;
            result
        }
    });
    let results = futures::future::join_all(publishes).await;
    let failed: Vec<String> = targets
        .iter()
        .zip(&results)
        .filter_map(|(addr, r)| r.as_ref().err().map(|e| format!("{addr}: {e}")))
        .collect();
    tracing::info!(
        nsqd = targets.len(),
        failed = failed.len(),
        known_servers = servers,
        spread_ms = spread.as_millis() as u64,
        after_ms = started.elapsed().as_millis() as u64,
        "solicitation published: data servers answer with a heartbeat"
    );
    if !failed.is_empty() {
        tracing::warn!(
            "solicitation not published on some nsqd: {}",
            failed.join("; ")
        );
    }
}

/// `addrs` with one name per nsqd: nsqlookupd may list an nsqd by its host name where the configuration gives its
/// IP address (or the reverse), and one solicitation through each name would reach every data server there twice
/// (a `duplicate` each). See [`distinct_nsqd`] for when two names count as one; a name that does not resolve within
/// [`RESOLVE_TIMEOUT`] is kept. The subscription wait compares raw names on purpose: the consumer opens one
/// connection per name.
async fn one_name_per_nsqd(addrs: &BTreeSet<String>) -> Vec<String> {
    let resolved = futures::future::join_all(addrs.iter().map(|addr| async move {
        let lookup = tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host(addr.as_str()));
        let sockets: BTreeSet<SocketAddr> = match lookup.await {
            Ok(Ok(found)) => found.collect(),
            _ => BTreeSet::new(),
        };
        (addr.clone(), sockets)
    }))
    .await;
    distinct_nsqd(resolved)
}

/// The names of `resolved` (name, its socket addresses) in order, leaving out only names that add no nsqd: a host
/// name all of whose addresses are IP literals of the list (each published to directly), and a name that resolves
/// to exactly the addresses of a name kept before it. Names that merely share an address are both kept: a name that
/// resolves to several nsqd (round-robin DNS) reaches only one of them per publish, so leaving out another name of
/// one of them could leave an nsqd unsolicited, which costs more than a `duplicate`.
fn distinct_nsqd(resolved: Vec<(String, BTreeSet<SocketAddr>)>) -> Vec<String> {
    let literals: BTreeSet<SocketAddr> = resolved
        .iter()
        .filter_map(|(name, _)| name.parse().ok())
        .collect();
    let mut kept_sets: Vec<&BTreeSet<SocketAddr>> = Vec::new();
    let mut kept = Vec::new();
    for (name, sockets) in &resolved {
        let literal = name.parse::<SocketAddr>().is_ok();
        let covered = !literal && !sockets.is_empty() && sockets.is_subset(&literals);
        if covered || (!sockets.is_empty() && kept_sets.contains(&sockets)) {
            continue;
        }
        kept_sets.push(sockets);
        kept.push(name.clone());
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spread_keeps_answers_at_the_rate() {
        let ms = |servers, rate| spread_for(servers, rate).as_millis();
        assert_eq!(ms(3, 20_000.0), 0, "a handful answer at once");
        assert_eq!(ms(19, 20_000.0), 0);
        assert_eq!(ms(1_000, 20_000.0), 50);
        assert_eq!(ms(100_000, 20_000.0), 5_000);
        assert_eq!(ms(10_000, 1_000.0), 10_000);
    }

    fn sockets(list: &[&str]) -> BTreeSet<SocketAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn an_nsqd_by_name_and_by_address_is_solicited_once() {
        let resolved = vec![
            ("127.0.0.1:4150".to_owned(), sockets(&["127.0.0.1:4150"])),
            ("127.0.0.1:4151".to_owned(), sockets(&["127.0.0.1:4151"])),
            ("localhost:4150".to_owned(), sockets(&["127.0.0.1:4150"])),
            // Two names of one address set: one nsqd.
            ("nsqd-b:4150".to_owned(), sockets(&["10.0.0.2:4150"])),
            ("nsqd-b.local:4150".to_owned(), sockets(&["10.0.0.2:4150"])),
        ];
        assert_eq!(
            distinct_nsqd(resolved),
            ["127.0.0.1:4150", "127.0.0.1:4151", "nsqd-b:4150"]
        );
    }

    #[test]
    fn a_name_of_several_nsqd_never_hides_one_of_them() {
        // A round-robin name reaches one of its nsqd per publish: B's own name must stay, and so must the pool.
        let resolved = vec![
            ("nsqd-b:4150".to_owned(), sockets(&["10.0.0.2:4150"])),
            (
                "pool:4150".to_owned(),
                sockets(&["10.0.0.1:4150", "10.0.0.2:4150"]),
            ),
            // localhost on a host with IPv6 as well: ::1 is not covered by the literal, so it is kept.
            ("127.0.0.1:4150".to_owned(), sockets(&["127.0.0.1:4150"])),
            (
                "localhost:4150".to_owned(),
                sockets(&["127.0.0.1:4150", "[::1]:4150"]),
            ),
        ];
        assert_eq!(
            distinct_nsqd(resolved),
            [
                "nsqd-b:4150",
                "pool:4150",
                "127.0.0.1:4150",
                "localhost:4150"
            ]
        );
    }

    #[test]
    fn a_name_that_did_not_resolve_is_kept() {
        let socket = |s: &str| BTreeSet::from([s.parse::<SocketAddr>().unwrap()]);
        let resolved = vec![
            ("10.0.0.1:4150".to_owned(), socket("10.0.0.1:4150")),
            ("nsqd-a:4150".to_owned(), socket("10.0.0.1:4150")),
            ("nsqd-b:4150".to_owned(), BTreeSet::new()),
            ("nsqd-c:4150".to_owned(), BTreeSet::new()),
        ];
        assert_eq!(
            distinct_nsqd(resolved),
            ["10.0.0.1:4150", "nsqd-b:4150", "nsqd-c:4150"]
        );
    }
}
