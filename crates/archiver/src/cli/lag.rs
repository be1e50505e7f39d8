//! The archiver's lag: how many messages wait in its channel on each nsqd, read from nsqd's
//! `GET /stats?format=json&topic=T&channel=C` every [`POLL`] and exposed as
//! `archiver_channel_depth{topic,nsqd}`.
//!
//! nsqd's HTTP address comes from nsqlookupd (`/lookup` lists each producer's `http_port`) for
//! `http://` lookupd addresses; an nsqd in `archive.nsqd_tcp_addresses` is asked on the port
//! after its TCP port (nsqd's own pairing, 4150 and 4151). HTTP/1.0 over a plain socket: two
//! small GETs do not need a client library.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::Deserialize;
use svc::{HostPort, Labels, LookupdAddr, Registry, Shutdown};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How often the depths are read.
pub const POLL: Duration = Duration::from_secs(5);
/// Bound on one HTTP exchange.
const TIMEOUT: Duration = Duration::from_secs(2);
/// Largest answer read (a `/stats` filtered to one channel is small).
const MAX_ANSWER: u64 = 4 << 20;

/// Where the lag is read from.
#[derive(Debug, Clone)]
pub struct Sources {
    /// Archived topics.
    pub topics: Vec<String>,
    /// The archive channel.
    pub channel: String,
    /// nsqlookupd addresses (`https://` ones are skipped).
    pub lookupd: Vec<LookupdAddr>,
    /// nsqd TCP addresses given directly.
    pub nsqd_tcp: Vec<HostPort>,
}

type Depths = Arc<Mutex<BTreeMap<(String, String), i64>>>;

/// Registers `archiver_channel_depth` and keeps it current until `shutdown`.
pub async fn watch(sources: Sources, registry: Registry, shutdown: Shutdown) {
    let depths = Depths::default();
    let read = depths.clone();
    registry.gauge_family_fn(
        "archiver_channel_depth",
        "Messages waiting in the archive channel on each nsqd (the archiver's lag), from nsqd's /stats.",
        move || {
            let depths = read.lock().unwrap_or_else(PoisonError::into_inner);
            depths
                .iter()
                .map(|((topic, nsqd), depth)| {
                    let labels: Labels = vec![("topic", topic.clone()), ("nsqd", nsqd.clone())];
                    (labels, *depth)
                })
                .collect()
        },
    );
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.wait() => return,
        }
        let fresh = poll(&sources).await;
        *depths.lock().unwrap_or_else(PoisonError::into_inner) = fresh;
    }
}

/// One reading: the depth per (topic, nsqd HTTP address) that answered.
async fn poll(sources: &Sources) -> BTreeMap<(String, String), i64> {
    let mut out = BTreeMap::new();
    for topic in &sources.topics {
        for nsqd in nsqd_http_addresses(sources, topic).await {
            let path = format!(
                "/stats?format=json&topic={}&channel={}",
                query_value(topic),
                query_value(&sources.channel)
            );
            match get_json::<Stats>(&nsqd, &path).await {
                Ok(stats) => {
                    let depth = stats
                        .topics
                        .iter()
                        .filter(|t| t.topic_name == *topic)
                        .flat_map(|t| &t.channels)
                        .filter(|c| c.channel_name == sources.channel)
                        .map(|c| c.depth)
                        .sum();
                    out.insert((topic.clone(), nsqd), depth);
                }
                Err(err) => tracing::debug!(%nsqd, "reading the channel depth: {err}"),
            }
        }
    }
    out
}

/// The HTTP addresses of the nsqd that hold `topic`, without repeats.
async fn nsqd_http_addresses(sources: &Sources, topic: &str) -> Vec<String> {
    let mut found: Vec<String> = sources
        .nsqd_tcp
        .iter()
        .map(|a| format!("{}:{}", a.host(), a.port().saturating_add(1)))
        .collect();
    for lookupd in sources.lookupd.iter().filter(|l| !l.is_https()) {
        let path = format!("/lookup?topic={}", query_value(topic));
        match get_json::<Lookup>(&lookupd.host_port().to_string(), &path).await {
            Ok(lookup) => found.extend(
                lookup
                    .producers
                    .into_iter()
                    .map(|p| join_host_port(&p.broadcast_address, p.http_port)),
            ),
            Err(err) => tracing::debug!(%lookupd, "looking up nsqd for the channel depth: {err}"),
        }
    }
    found.sort();
    found.dedup();
    found
}

fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Percent-encodes a query value (topic and channel names are `[.a-zA-Z0-9_-]` plus `#ephemeral`).
fn query_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[derive(Deserialize)]
struct Lookup {
    #[serde(default)]
    producers: Vec<Producer>,
}

#[derive(Deserialize)]
struct Producer {
    broadcast_address: String,
    http_port: u16,
}

#[derive(Deserialize)]
struct Stats {
    #[serde(default)]
    topics: Vec<TopicStats>,
}

#[derive(Deserialize)]
struct TopicStats {
    topic_name: String,
    #[serde(default)]
    channels: Vec<ChannelStats>,
}

#[derive(Deserialize)]
struct ChannelStats {
    channel_name: String,
    depth: i64,
}

/// `GET path` on `addr` (HTTP/1.0, so the answer ends with the connection), 200 and JSON expected.
async fn get_json<T: serde::de::DeserializeOwned>(addr: &str, path: &str) -> Result<T, String> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let request =
            format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nAccept: application/json\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut answer = Vec::new();
        stream
            .take(MAX_ANSWER)
            .read_to_end(&mut answer)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(answer)
    };
    let answer = tokio::time::timeout(TIMEOUT, exchange)
        .await
        .map_err(|_| format!("no answer within {TIMEOUT:?}"))??;
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("an answer without a complete head")?;
    let status_line = answer[..split]
        .split(|&b| b == b'\r')
        .next()
        .unwrap_or_default();
    let status_line = String::from_utf8_lossy(status_line);
    if status_line.split_whitespace().nth(1) != Some("200") {
        return Err(format!("expected 200, found {status_line:?}"));
    }
    serde_json::from_slice(&answer[split + 4..]).map_err(|e| format!("unexpected JSON: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_encoded_and_addresses_joined() {
        assert_eq!(query_value("hb#ephemeral"), "hb%23ephemeral");
        assert_eq!(
            query_value("data_server_addr.v1-x"),
            "data_server_addr.v1-x"
        );
        assert_eq!(join_host_port("::1", 4151), "[::1]:4151");
        assert_eq!(join_host_port("nsqd", 4151), "nsqd:4151");
    }

    #[test]
    fn stats_of_nsqd_1_3_parse() {
        let body = r#"{"version":"1.3.0","health":"OK","start_time":1,"topics":[{"topic_name":"t","channels":[{"channel_name":"archive","depth":7,"backend_depth":0,"in_flight_count":2,"clients":[]}],"depth":0}],"memory":{},"producers":[]}"#;
        let stats: Stats = serde_json::from_str(body).unwrap();
        assert_eq!(stats.topics[0].channels[0].depth, 7);
    }
}
