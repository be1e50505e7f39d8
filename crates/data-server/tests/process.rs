//! The data-server as a real process against real nsqd: first heartbeat, nsqd failover,
//! graceful shutdown order, signing, and serving while the bus is down.

mod common;

use std::time::{Duration, Instant};

use common::{BIN, Tap, key_file, metric};
use discovery::{HmacKey, State, decode};
use testkit::http::{get, get_json, get_text};
use testkit::{DataServer, DataServerOptions, NsqCluster, Signal, eventually, try_eventually};

const GENEROUS: Duration = Duration::from_secs(30);

fn options(cluster: &NsqCluster, interval: &str) -> DataServerOptions {
    let mut opts = DataServerOptions::new(cluster.nsqd_tcp_addresses()).bin(BIN);
    opts.interval = interval.into();
    opts
}

/// `/metrics` of `server` as text.
async fn metrics_of(server: &DataServer) -> String {
    get_text(&reqwest::Client::new(), server.url("/metrics")).await
}

/// Waits for `server` to exit and checks the exit code, showing its log if it differs.
async fn assert_exits_with(server: &mut DataServer, code: i32) {
    let exit = server.wait_exit(GENEROUS).await.unwrap();
    assert_eq!(exit.code(), Some(code), "{}", server.log());
}

/// Polls `/metrics` until `ready` accepts it and returns it; fails the test after [`GENEROUS`],
/// showing the metrics then.
async fn wait_metrics(server: &DataServer, what: &str, ready: impl Fn(&str) -> bool) -> String {
    let reached = try_eventually(GENEROUS, what, || async {
        let text = metrics_of(server).await;
        Ok(ready(&text).then_some(text))
    })
    .await;
    match reached {
        Ok(text) => text,
        Err(e) => panic!("{e}:\n{}", metrics_of(server).await),
    }
}

/// One nsqd, a tap on it, and a data server heartbeating every second whose first heartbeat the
/// tap has received. The cluster is returned to be kept alive.
async fn heartbeating_every_second() -> (NsqCluster, Tap, DataServer) {
    let cluster = NsqCluster::start(1).await.unwrap();
    let tap = Tap::start(&cluster.nsqd_tcp_addresses());
    let server = DataServer::start_with(options(&cluster, "1s"))
        .await
        .unwrap();
    tap.wait_for(server.id(), GENEROUS, |hbs| !hbs.is_empty())
        .await;
    (cluster, tap, server)
}

/// Waits for eight heartbeats of `id` after `since` (eight intervals of an outage), and returns
/// the largest gap between its heartbeats from 2 s before `since` on.
async fn largest_gap_after(tap: &Tap, id: &str, since: Instant) -> Duration {
    let got = tap
        .wait_for(id, GENEROUS, |hbs| {
            hbs.iter().filter(|(at, _)| *at > since).count() >= 8
        })
        .await;
    let times: Vec<Instant> = got
        .iter()
        .filter(|(at, _)| *at > since - Duration::from_secs(2))
        .map(|(at, _)| *at)
        .collect();
    times.windows(2).map(|w| w[1] - w[0]).max().unwrap()
}

/// Polls `/metrics` until at least one publish failure is counted for `nsqd`.
async fn wait_for_failures(server: &DataServer, nsqd: &str) {
    let line = format!("data_server_publish_failures_total{{nsqd=\"{nsqd}\"}} ");
    let what = format!("a failure counted for {nsqd}");
    wait_metrics(server, &what, |text| {
        let failures: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix(&line))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        failures >= 1
    })
    .await;
}

#[tokio::test]
async fn first_heartbeat_arrives_well_before_the_first_interval_ends() {
    let cluster = NsqCluster::start(1).await.unwrap();
    let tap = Tap::start(&cluster.nsqd_tcp_addresses());
    let started = Instant::now();
    let server = DataServer::start_with(options(&cluster, "30s"))
        .await
        .unwrap();
    let got = tap
        .wait_for(server.id(), GENEROUS, |hbs| !hbs.is_empty())
        .await;
    let after = got[0].0 - started;
    // The interval is 30 s; the first heartbeat goes out as soon as the server listens.
    eprintln!("first heartbeat {after:?} after spawning the process");
    assert!(
        after < Duration::from_secs(10),
        "first heartbeat after {after:?}"
    );
    let hb = &got[0].1;
    assert_eq!(hb.addr, server.addr());
    assert_eq!(
        hb.addr,
        server.listen_addr().to_string(),
        "announces the bound port"
    );
    assert_eq!(hb.state, State::Up);
    assert_eq!(hb.seq, 1);
    assert_eq!(hb.interval_ms, 30_000);
    tap.stop().await;
}

#[tokio::test]
async fn killing_one_of_two_nsqd_loses_no_interval() {
    let mut cluster = NsqCluster::start(2).await.unwrap();
    let tap = Tap::start(&cluster.nsqd_tcp_addresses());
    let mut opts = options(&cluster, "1s");
    opts.set.push("announce.jitter=0.1".into());
    let server = DataServer::start_with(opts).await.unwrap();
    tap.wait_for(server.id(), GENEROUS, |hbs| hbs.len() >= 2)
        .await;
    let dead = cluster.nsqd_tcp(0).to_string();
    cluster.kill(0);
    let max_gap = largest_gap_after(&tap, server.id(), Instant::now()).await;
    eprintln!("nsqd killed: largest gap between heartbeats {max_gap:?} (interval 1s)");
    // A lost interval would leave a gap of at least 2 × 0.9 s.
    assert!(max_gap < Duration::from_millis(1700), "gap of {max_gap:?}");
    // The dead nsqd's failures are counted under its address (it is picked first half the time).
    wait_for_failures(&server, &dead).await;
    // The leaving heartbeat fails over too.
    let mut server = server;
    server.signal(Signal::SIGTERM).unwrap();
    tap.wait_for_leaving(server.id(), GENEROUS).await;
    assert_exits_with(&mut server, 0).await;
    tap.stop().await;
}

#[tokio::test]
async fn a_hung_nsqd_loses_no_interval_either() {
    let cluster = NsqCluster::start(2).await.unwrap();
    let tap = Tap::start(&cluster.nsqd_tcp_addresses());
    let server = DataServer::start_with(options(&cluster, "1s"))
        .await
        .unwrap();
    tap.wait_for(server.id(), GENEROUS, |hbs| hbs.len() >= 2)
        .await;
    // Stopped, not killed: connections stay open and nothing answers.
    cluster.freeze(0).unwrap();
    let max_gap = largest_gap_after(&tap, server.id(), Instant::now()).await;
    eprintln!("nsqd frozen: largest gap between heartbeats {max_gap:?} (interval 1s)");
    // Publish timeout 250 ms (a quarter interval), then failover; a lost interval is >= 1.8 s.
    assert!(max_gap < Duration::from_millis(1700), "gap of {max_gap:?}");
    wait_for_failures(&server, &cluster.nsqd_tcp(0).to_string()).await;
    cluster.thaw(0).unwrap();
    tap.stop().await;
}

#[tokio::test]
async fn sigterm_leaves_then_drains_in_flight_requests_then_exits_0() {
    let (_cluster, tap, mut server) = heartbeating_every_second().await;

    let slow = tokio::spawn({
        let url = server.url("/slow?ms=2000");
        async move {
            let response = reqwest::get(url).await.unwrap();
            let status = response.status();
            let body = response.text().await.unwrap();
            (status, body, Instant::now())
        }
    });
    // Wait until the slow request is in flight (the metrics request itself is the other one).
    wait_metrics(&server, "the slow request in flight", |text| {
        text.contains("data_server_requests_in_flight 2")
    })
    .await;

    server.signal(Signal::SIGTERM).unwrap();
    let got = tap.wait_for_leaving(server.id(), GENEROUS).await;
    let (left_at, leaving) = got
        .iter()
        .find(|(_, hb)| hb.state == State::Leaving)
        .unwrap();
    assert!(
        got.iter().all(|(_, hb)| hb.seq <= leaving.seq),
        "leaving is the last heartbeat"
    );

    let (status, body, answered_at) = slow.await.unwrap();
    assert_eq!(status, 200, "the in-flight request completes: {body}");
    assert!(
        *left_at < answered_at,
        "leaving is announced before draining ends"
    );
    eprintln!(
        "leaving received {:?} before the in-flight request was answered",
        answered_at - *left_at
    );
    assert_exits_with(&mut server, 0).await;
    tap.stop().await;
}

/// Every nsqd is down when the server is told to stop, and comes back while it is stopping: the leaving
/// heartbeat is sent again until it is taken, so api-servers still drop the server at once (not a TTL later).
#[tokio::test]
async fn the_leave_is_sent_again_until_an_nsqd_that_was_down_takes_it() {
    let (mut cluster, tap, mut server) = heartbeating_every_second().await;
    cluster.stop(0).await.unwrap();
    let failed = "data_server_heartbeats_failed_total";
    let before = metric(&metrics_of(&server).await, failed);
    server.signal(Signal::SIGTERM).unwrap();
    // Still serving while it tries: its failed rounds show in /metrics.
    wait_metrics(&server, "the leave tried twice", |text| {
        metric(text, failed) >= before + 2
    })
    .await;
    cluster.restart(0).await.unwrap();
    let got = tap.wait_for_leaving(server.id(), GENEROUS).await;
    let leaving: Vec<_> = got
        .iter()
        .filter(|(_, hb)| hb.state == State::Leaving)
        .collect();
    assert_eq!(leaving.len(), 1, "taken once: {leaving:?}");
    assert_exits_with(&mut server, 0).await;
    tap.stop().await;
}

/// After the leave is taken the server keeps answering for `shutdown.deregister_delay`, on a pooled connection
/// (an api-server's that has not handled the leave yet) and on a new one, then closes and exits.
#[tokio::test]
async fn requests_are_answered_for_the_deregistration_delay_after_the_leave() {
    let cluster = NsqCluster::start(1).await.unwrap();
    let tap = Tap::start(&cluster.nsqd_tcp_addresses());
    let opts = options(&cluster, "1s").set("shutdown.deregister_delay=3s");
    let mut server = DataServer::start_with(opts).await.unwrap();
    tap.wait_for(server.id(), GENEROUS, |hbs| !hbs.is_empty())
        .await;
    let pooled = reqwest::Client::new();
    assert_eq!(get(&pooled, server.url("/whoami")).await.status(), 200);
    server.signal(Signal::SIGTERM).unwrap();
    tap.wait_for_leaving(server.id(), GENEROUS).await;
    let left_at = Instant::now();
    assert_eq!(
        get(&pooled, server.url("/whoami")).await.status(),
        200,
        "a pooled connection is still served"
    );
    let fresh = reqwest::Client::new();
    assert_eq!(
        get(&fresh, server.url("/whoami")).await.status(),
        200,
        "a new connection is still accepted"
    );
    assert!(
        left_at.elapsed() < Duration::from_secs(3),
        "within the delay"
    );
    assert_exits_with(&mut server, 0).await;
    tap.stop().await;
}

#[tokio::test]
async fn signed_heartbeats_verify_and_tampered_ones_do_not() {
    let cluster = NsqCluster::start(1).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (path, key) = key_file(dir.path(), "a shared secret");
    let tap = Tap::start(&cluster.nsqd_tcp_addresses());
    let opts = options(&cluster, "1s").set(format!("announce.hmac_key_file={}", path.display()));
    let server = DataServer::start_with(opts).await.unwrap();
    tap.wait_for(server.id(), GENEROUS, |hbs| !hbs.is_empty())
        .await;
    let body = tap
        .all()
        .into_iter()
        .find(|r| r.heartbeat().id == server.id())
        .unwrap()
        .body;
    assert!(
        decode(&body, Some(&key)).is_ok(),
        "signed with the configured key"
    );
    let other = HmacKey::from_bytes(b"another secret").unwrap();
    assert!(
        decode(&body, Some(&other)).is_err(),
        "another key does not verify"
    );
    let text = String::from_utf8(body).unwrap();
    let tampered = text.replace(server.addr(), "127.0.0.1:1");
    assert_ne!(tampered, text);
    assert!(
        decode(tampered.as_bytes(), Some(&key)).is_err(),
        "a changed address does not verify"
    );
    tap.stop().await;
}

#[tokio::test]
async fn with_every_nsqd_down_healthz_keeps_answering_and_logs_once() {
    let refusing = testkit::RefusingPort::new();
    let dead = refusing.addr().to_string();
    let mut opts = DataServerOptions::new([dead]).bin(BIN);
    opts.interval = "200ms".into();
    let mut server = DataServer::start_with(opts).await.unwrap();
    let client = reqwest::Client::new();
    eventually(GENEROUS, "5 failed heartbeats", || async {
        let response = get(&client, server.url("/healthz")).await;
        assert_eq!(response.status(), 200);
        let metrics = metrics_of(&server).await;
        (metric(&metrics, "data_server_heartbeats_failed_total") >= 5).then_some(())
    })
    .await;
    let health: serde_json::Value = get_json(&client, server.url("/healthz")).await;
    assert_eq!(health["status"], "ok", "{health}");
    assert_eq!(health["nsqd_reachable"], false, "{health}");
    let log = server.log();
    // Logged once per change of state, not once per retry (the solicitation consumer logs its own failure to
    // connect apart, see `discovery::Responder`).
    assert_eq!(
        log.matches("no nsqd took the heartbeat; retrying with backoff")
            .count(),
        1,
        "{log}"
    );
    assert_eq!(
        log.matches("publishing a heartbeat failed").count(),
        1,
        "{log}"
    );
    let exit = server.terminate(GENEROUS).await.unwrap();
    assert_eq!(exit.code(), Some(0), "{}", server.log());
}

#[tokio::test]
async fn a_second_signal_cuts_the_drain_short() {
    let (_cluster, tap, mut server) = heartbeating_every_second().await;
    let slow = tokio::spawn(reqwest::get(server.url("/slow?ms=60000")));
    wait_metrics(&server, "the slow request in flight", |text| {
        metric(text, "data_server_requests_in_flight") >= 2
    })
    .await;
    server.signal(Signal::SIGTERM).unwrap();
    tap.wait_for_leaving(server.id(), GENEROUS).await;
    server.signal(Signal::SIGINT).unwrap();
    assert_exits_with(&mut server, 130).await;
    assert!(slow.await.unwrap().is_err(), "the cut request fails");
    tap.stop().await;
}
