//! Hostile heartbeats published to the real topic on a real nsqd, read by a real api-server process: random bytes,
//! size limits, truncated and deeply nested JSON, wrong types, out-of-range numbers, unroutable and self addresses,
//! and id collisions (replayed signed heartbeats are in `replay.rs`). For each the user-visible result is checked:
//! the process keeps serving, the server is not in `/registry`, and `/metrics` counts the message under its
//! specific reason. (`malformed.rs` has the first, smaller set of cases; nothing here repeats it.)

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use discovery::{Heartbeat, MAX_BODY_BYTES, State};
use testkit::{ApiServer, NsqCluster, try_eventually};

/// What each published body should be counted as, for comparing with `/metrics` at the end.
#[derive(Default)]
struct Expected(BTreeMap<String, f64>);

impl Expected {
    fn add(&mut self, outcome: &str, reason: Option<&str>) {
        *self.0.entry(heartbeat_sample(outcome, reason)).or_default() += 1.0;
    }

    /// Waits until every expected counter has exactly its value (a message counted twice or under another reason
    /// fails), and returns the metrics text; on timeout, fails listing the counters that differ.
    async fn wait_for(&self, api: &ApiServer) -> String {
        let reached = try_eventually(SOON, "the expected heartbeat counters", || async {
            let text = api.metrics().await.unwrap_or_default();
            Ok(self.differing(&text).is_empty().then_some(text))
        })
        .await;
        match reached {
            Ok(text) => text,
            Err(e) => {
                let text = api.metrics().await.unwrap_or_default();
                panic!("{e}:\n{}\n\n{text}", self.differing(&text).join("\n"))
            }
        }
    }

    /// The counters whose value in `text` is not the expected one.
    fn differing(&self, text: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(sample, n)| value(text, sample) != **n)
            .map(|(sample, n)| format!("{sample}: expected {n}, found {}", value(text, sample)))
            .collect()
    }
}

fn value(metrics: &str, sample: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(sample)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Deterministic noise (xorshift64*), so a failure can be reproduced.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.max(1);
    (0..len)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        })
        .collect()
}

/// A v1 heartbeat with the given fields written as raw JSON text, for values `Heartbeat` cannot hold.
fn raw(fields: &str) -> Vec<u8> {
    format!(r#"{{"v":1,"state":"up",{fields}}}"#).into_bytes()
}

fn hb(id: &str, addr: &str, epoch: u64, seq: u64) -> Vec<u8> {
    Heartbeat::new(id, addr, epoch, seq).encode()
}

fn padded(id: &str, addr: &str, len: usize) -> Vec<u8> {
    let mut body = hb(id, addr, 1, 1);
    body.resize(len, b' ');
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_heartbeats_never_admit_a_server_and_are_counted_by_reason() {
    let cluster = NsqCluster::start(1).await.unwrap();
    create_topic(&cluster).await;
    let mut api = api_server(&cluster, "60s", &["server.instance=hostile"]).await;
    wait_subscribed(&api, 1).await;
    let out = Publisher::new(&cluster);
    let mut expected = Expected::default();
    let epoch = now_ms();

    // Phase 1: legitimate servers, some at the edges of what is valid.
    let legit: Vec<(&str, Vec<u8>)> = vec![
        ("holder", hb("holder", "127.0.0.1:19901", epoch, 5)),
        // An id that looks like an address, held by a JSON heartbeat at another address.
        (
            "127.0.0.1:19902",
            hb("127.0.0.1:19902", "127.0.0.1:19903", epoch, 1),
        ),
        // The largest epoch and seq heartbeat v1 allows (u64, ARCHITECTURE.md §4.1) are valid.
        (
            "max-epoch",
            hb("max-epoch", "127.0.0.1:19801", u64::MAX, u64::MAX),
        ),
        // Exactly the codec's size limit is still accepted: the limit is on bytes, not on content.
        (
            "pad-edge",
            padded("pad-edge", "127.0.0.1:19502", MAX_BODY_BYTES),
        ),
    ];
    for (_, body) in &legit {
        out.publish(TOPIC, body).await;
        expected.add("joined", None);
    }
    wait_servers(&api, legit.len()).await;

    // Phase 2: hostile bodies, each with the reason it must be counted under.
    let (proxy, admin) = (api.proxy(), api.admin());
    let mut hostile: Vec<(Vec<u8>, &str)> = Vec::new();
    // Random bytes: binary (never valid UTF-8) and printable noise (never host:port).
    for (i, len) in [1usize, 7, 64, 1000, 4096, 60_000].into_iter().enumerate() {
        let mut binary = noise(i as u64 + 1, len);
        binary[len / 2] = 0xff;
        hostile.push((binary, "not_utf8"));
        let alphabet = b"abcdefghijklmnopqrstuvwxyz0123456789-_.!? ";
        let mut text: Vec<u8> = noise(i as u64 + 100, len)
            .into_iter()
            .map(|b| alphabet[b as usize % alphabet.len()])
            .collect();
        text[0] = b'x';
        hostile.push((text, "bad_addr"));
    }
    hostile.push((b" \n\t ".to_vec(), "empty"));
    // Sizes: one byte over the codec's limit, and 100k '[' (over it too, so never parsed at all).
    hostile.push((
        padded("pad-over", "127.0.0.1:19501", MAX_BODY_BYTES + 1),
        "too_large",
    ));
    hostile.push((vec![b'['; 100_000], "too_large"));
    // Truncated heartbeats.
    let whole = hb("truncated", "127.0.0.1:19601", epoch, 1);
    for cut in [1, 10, whole.len() / 2, whole.len() - 1] {
        hostile.push((whole[..cut].to_vec(), "bad_json"));
    }
    // Deep nesting within the size limit: serde_json's depth limit (128) turns it into an error, not a stack
    // overflow; `meta` has its own, lower limit.
    hostile.push((vec![b'['; 60_000], "bad_json"));
    hostile.push((vec![b'{'; 60_000], "bad_json"));
    let depth = 10_000; // 50 KB: under the size limit
    hostile.push((
        raw(&format!(
            r#""id":"deep","addr":"127.0.0.1:19602","epoch":1,"seq":1,"meta":{}1{}"#,
            r#"{"a":"#.repeat(depth),
            "}".repeat(depth)
        )),
        "bad_json",
    ));
    hostile.push((
        raw(&format!(
            r#""id":"deep-meta","addr":"127.0.0.1:19603","epoch":1,"seq":1,"meta":{}1{}"#,
            r#"{"a":"#.repeat(20),
            "}".repeat(20)
        )),
        "meta_too_large",
    ));
    // Wrong types and missing or invalid fields.
    let base = r#""id":"typed","addr":"127.0.0.1:19701","epoch":1"#;
    for (body, reason) in [
        (
            r#"{"v":"1","id":"typed","addr":"127.0.0.1:19701","epoch":1,"seq":1,"state":"up"}"#
                .to_owned(),
            "wrong_type",
        ),
        (
            r#"{"v":1,"id":"typed","addr":"127.0.0.1:19701","epoch":1,"seq":1,"state":1}"#
                .to_owned(),
            "wrong_type",
        ),
        (
            r#"{"v":1,"id":"typed","addr":"127.0.0.1:19701","epoch":1,"seq":1,"state":"down"}"#
                .to_owned(),
            "bad_state",
        ),
        (
            r#"{"v":2,"id":"typed","addr":"127.0.0.1:19701","epoch":1,"seq":1,"state":"up"}"#
                .to_owned(),
            "unsupported_version",
        ),
        (
            String::from_utf8(raw(
                r#""id":"typed","addr":"127.0.0.1:19701","epoch":"1","seq":1"#,
            ))
            .unwrap(),
            "wrong_type",
        ),
        (
            String::from_utf8(raw(&format!(r#"{base},"seq":true"#))).unwrap(),
            "wrong_type",
        ),
        (
            String::from_utf8(raw(&format!(r#"{base},"seq":1,"meta":[]"#))).unwrap(),
            "wrong_type",
        ),
        (
            String::from_utf8(raw(&format!(r#"{base},"seq":1,"sig":5"#))).unwrap(),
            "wrong_type",
        ),
        (
            String::from_utf8(raw(
                r#""id":null,"addr":"127.0.0.1:19701","epoch":1,"seq":1"#,
            ))
            .unwrap(),
            "missing_field",
        ),
        (
            String::from_utf8(raw(r#""id":"typed","epoch":1,"seq":1"#)).unwrap(),
            "missing_field",
        ),
        (
            String::from_utf8(raw(r#""id":"","addr":"127.0.0.1:19701","epoch":1,"seq":1"#))
                .unwrap(),
            "bad_id",
        ),
        ("true".to_owned(), "wrong_type"),
        ("null".to_owned(), "wrong_type"),
        ("42".to_owned(), "wrong_type"),
        ("\"127.0.0.1:19702\"".to_owned(), "wrong_type"),
    ] {
        hostile.push((body.into_bytes(), reason));
    }
    // Numbers outside u64: larger, negative, fractional are bad numbers; beyond f64's range is a JSON error.
    for (numbers, reason) in [
        (
            r#""epoch":18446744073709551616,"seq":1"#.to_owned(),
            "bad_number",
        ),
        (r#""epoch":1,"seq":-1"#.to_owned(), "bad_number"),
        (r#""epoch":1.5,"seq":1"#.to_owned(), "bad_number"),
        (
            format!(r#""epoch":1,"seq":{}"#, "9".repeat(300)),
            "bad_number",
        ),
        (r#""epoch":1e400,"seq":1"#.to_owned(), "bad_json"),
        (
            format!(r#""epoch":1,"seq":{}"#, "9".repeat(400)),
            "bad_json",
        ),
    ] {
        hostile.push((
            raw(&format!(
                r#""id":"numbers","addr":"127.0.0.1:19802",{numbers}"#
            )),
            reason,
        ));
    }
    // Addresses nobody can be proxied to, as JSON and as plain bodies.
    for addr in [
        "0.0.0.0:19401",
        "[::]:19401",
        "224.0.0.1:19401",
        "[ff02::1]:19401",
        "255.255.255.255:19401",
    ] {
        hostile.push((hb("unroutable", addr, 1, 1), "bad_addr"));
        hostile.push((addr.as_bytes().to_vec(), "bad_addr"));
    }
    // The api-server's own listeners, under other spellings too; routing there would loop.
    let me = |port: u16| -> [String; 3] {
        [
            SocketAddr::from(([127, 0, 0, 1], port)).to_string(),
            format!("localhost:{port}"),
            format!("[::ffff:127.0.0.1]:{port}"),
        ]
    };
    for addr in me(proxy.port()).into_iter().chain(me(admin.port())) {
        hostile.push((hb("self", &addr, 1, 1), "self_address"));
        hostile.push((addr.into_bytes(), "self_address"));
    }
    // Id collisions: the same id at another address without a newer epoch. The live holder keeps its id.
    hostile.push((hb("holder", "127.0.0.1:19966", epoch, 1000), "id_conflict"));
    hostile.push((hb("holder", "127.0.0.1:19966", epoch - 1, 1), "id_conflict"));
    let mut leave = Heartbeat::new("holder", "127.0.0.1:19966", epoch, 1001);
    leave.state = State::Leaving;
    hostile.push((leave.encode(), "id_conflict"));
    hostile.push((b"127.0.0.1:19902".to_vec(), "id_conflict"));

    for (body, reason) in &hostile {
        out.publish(TOPIC, body).await;
        expected.add("rejected", Some(reason));
    }
    // Valid but changing nothing: NSQ's redelivery of the holder's heartbeat, and an older seq of max-epoch.
    out.publish(TOPIC, &legit[0].1).await;
    expected.add("ignored", Some("duplicate"));
    out.publish(
        TOPIC,
        &hb("max-epoch", "127.0.0.1:19801", u64::MAX, u64::MAX - 1),
    )
    .await;
    expected.add("ignored", Some("out_of_order"));
    // nsqd itself refuses bodies over its --max-msg-size (1 MiB by default): they never reach an api-server.
    let over_nsqd = vec![b'x'; 1024 * 1024 + 1];
    let refused = nsq::Producer::new(cluster.nsqd_tcp(0).to_string(), Default::default()).unwrap();
    assert!(refused.publish(TOPIC, &over_nsqd).await.is_err());
    refused.close(Duration::from_secs(1)).await;

    let metrics = expected.wait_for(&api).await;
    let rejected_total: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("api_heartbeats_total{outcome=\"rejected\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(
        rejected_total,
        hostile.len() as f64,
        "nothing else rejected:\n{metrics}"
    );

    let mut ids: Vec<&str> = legit.iter().map(|(id, _)| *id).collect();
    ids.sort_unstable();
    assert_eq!(
        api.server_ids().await.unwrap(),
        ids,
        "no hostile server admitted"
    );
    let doc = api.registry().await.unwrap();
    let holder = find_server(&doc, "holder").unwrap();
    assert_eq!(
        holder["addr"], "127.0.0.1:19901",
        "the holder kept its address"
    );
    assert_eq!(
        holder["seq"], 5,
        "and its seq: the hostile seq 1000 was not applied"
    );
    let max = find_server(&doc, "max-epoch").unwrap();
    assert_eq!(max["epoch"], u64::MAX);
    assert_eq!(max["seq"], u64::MAX);
    assert_eq!(
        find_server(&doc, "127.0.0.1:19902").unwrap()["addr"],
        "127.0.0.1:19903"
    );

    // Phase 3: a newer run of the same id may move it (a re-deployment); that is the only way to take an id over.
    out.publish(TOPIC, &hb("holder", "127.0.0.1:19966", epoch + 1, 1))
        .await;
    expected.add("moved", None);
    expected.wait_for(&api).await;
    let doc = api.registry().await.unwrap();
    assert_eq!(
        find_server(&doc, "holder").unwrap()["addr"],
        "127.0.0.1:19966"
    );

    assert_serving(&mut api).await;
    assert_all_finished(&cluster, TOPIC).await;
}
