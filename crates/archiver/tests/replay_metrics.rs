//! `archiver replay` with `archive.metrics_listen`: while it works, `/metrics` shows the size of
//! the range (`archiver_replay_messages`) and how much of it was sent
//! (`archiver_replay_messages_sent_total`), up to the whole range.

#[macro_use]
mod common;

use std::time::{Duration, Instant};

use common::{ARCHIVER, Backend, TestDb, insert, msg};
use testkit::{ManagedProcess, NsqCluster, free_port};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BASE_NS: i64 = 1_700_000_000_000_000_000;
/// Messages in the replayed range (more are archived on both sides of it).
const RANGE: u64 = 40;
/// Messages per second: MPUBs of 2 every 100 ms, so the replay lasts about 2 s.
const RATE: &str = "20";

/// `GET /metrics` over a fresh connection; `None` while nothing answers (not listening yet, or
/// the replay has exited).
async fn scrape(addr: &str) -> Option<String> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    response.starts_with("HTTP/1.1 200").then_some(response)
}

/// The value of the unlabelled sample `name` in a scrape.
fn sample(scrape: &str, name: &str) -> Option<u64> {
    scrape
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn replay_metrics_show_the_range_and_what_was_sent() {
    let db = TestDb::start(Backend::Sqlite).await;
    let cluster = NsqCluster::start(1).await.unwrap();
    // Messages 0..60, one millisecond apart; the range is 10..50.
    let archived: Vec<_> = (0..60u64)
        .map(|i| {
            let ts = BASE_NS + i as i64 * 1_000_000;
            msg(
                "metered",
                "127.0.0.1:4150",
                i,
                ts,
                format!("m-{i}").as_bytes(),
            )
        })
        .collect();
    insert(db.open().as_mut(), &archived);
    cluster
        .create_topic(0, "metered_again", None)
        .await
        .unwrap();

    let listen = format!("127.0.0.1:{}", free_port());
    let mut args: Vec<String> = vec!["replay".into()];
    args.extend(db.set_args());
    args.extend([
        "--set".into(),
        format!("archive.metrics_listen={listen}"),
        "--nsqd".into(),
        cluster.nsqd_tcp(0).to_string(),
    ]);
    let (from, until) = (
        BASE_NS + 10_000_000,
        BASE_NS + (10 + RANGE as i64) * 1_000_000,
    );
    for arg in [
        "--topic",
        "metered",
        "--destination",
        "metered_again",
        "--from",
        &from.to_string(),
        "--until",
        &until.to_string(),
        "--rate",
        RATE,
    ] {
        args.push(arg.to_owned());
    }
    let log = db.dir.path().join("replay.log");
    let mut replay = ManagedProcess::spawn("replay", ARCHIVER, args, vec![], log).unwrap();

    // The listener lives only as long as the replay: scrape until the process has exited.
    // The final value is observable because a rate-limited replay lasts as long as its rate
    // says (RANGE / RATE seconds): after its last MPUB it waits out that MPUB's share of time,
    // with the listener still up, before it exits.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut seen: Vec<(u64, u64)> = Vec::new();
    let status = loop {
        if let Some(status) = replay.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the replay did not finish:\n{}",
            replay.log()
        );
        if let Some(text) = scrape(&listen).await {
            let total = sample(&text, "archiver_replay_messages");
            let sent = sample(&text, "archiver_replay_messages_sent_total");
            seen.push((total.expect(&text), sent.expect(&text)));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(status.success(), "{}", replay.log());
    let log = replay.log();
    assert!(
        log.contains(&format!("done: replayed {RANGE} messages")),
        "{log}"
    );
    // The summary's rate ("... in 2.00s (20/s); ...") keeps to --rate.
    let reported: f64 = log
        .split_once("/s)")
        .and_then(|(before, _)| before.rsplit_once('('))
        .and_then(|(_, rate)| rate.parse().ok())
        .unwrap_or_else(|| panic!("no rate in the summary:\n{log}"));
    assert!(reported <= RATE.parse().unwrap(), "{log}");

    assert!(!seen.is_empty(), "no scrape answered:\n{}", replay.log());
    assert!(
        seen.iter().all(|&(total, _)| total == RANGE),
        "archiver_replay_messages is not the range's size: {seen:?}"
    );
    let sent: Vec<u64> = seen.iter().map(|&(_, sent)| sent).collect();
    assert!(
        sent.windows(2).all(|w| w[0] <= w[1]),
        "archiver_replay_messages_sent_total went backwards: {sent:?}"
    );
    assert!(
        sent.first() < sent.last(),
        "sent was not seen growing: {sent:?}"
    );
    assert_eq!(
        sent.last(),
        Some(&RANGE),
        "sent did not reach the range's size"
    );
}
