//! Parked connections (`crates/proxy/src/park.rs`): a kept-alive client connection between requests holds no
//! buffers, leaves its task for the parking lot, costs little memory, and still serves its next request, whatever
//! that request looks like; parked, it still counts toward `server.max_connections` and the drain closes it at the
//! end of its grace; `api_proxy_parked_connections` shows them in the lot and out of it again when a request comes.
//! (That a parked connection closes at `server.keepalive_timeout`, not before, is `blame.rs`'s idle keep-alive
//! test.)

mod common;

use std::time::{Duration, Instant};

use common::SOON;
use common::wire::*;
use testkit::{ApiServer, Signal};

/// Idle connections opened by the memory test: few enough for a default open-file limit of 1024.
const IDLE: usize = 400;
/// What one idle connection may add to the api-server's resident memory. Unparked, one cost about 11 KiB (a 4 KiB
/// read buffer, the write buffers, a 5 KiB task); parked, about 1 KiB.
const MAX_BYTES_PER_IDLE: u64 = 4 * 1024;

fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap();
    kib * 1024
}

const GET: &[u8] = b"GET /whoami HTTP/1.1\r\nHost: t\r\n\r\n";

/// Waits until `api_proxy_parked_connections` is `n` (within `SOON`).
async fn parked(api: &ApiServer, n: usize) {
    testkit::eventually(SOON, &format!("{n} connections parked"), || async {
        let parked = api.metric("api_proxy_parked_connections").await.ok()?;
        (parked == n as f64).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_cost_little_and_each_serves_its_next_request() {
    let (mut setup, id) = with_data_server("ds-parked").await;
    let api = &mut setup.api;
    // Warm up, so that what the first requests allocate once (upstream connections, spare buffers) is counted
    // before.
    for _ in 0..10 {
        let mut wire = Wire::connect(api.proxy()).await;
        wire.send(GET).await;
        assert_eq!(wire.response(false).await.status, 200);
    }
    let pid = api.process().pid().unwrap();
    let before = rss_bytes(pid);
    let mut wires = Vec::with_capacity(IDLE);
    for _ in 0..IDLE {
        let mut wire = Wire::connect(api.proxy()).await;
        wire.send(GET).await;
        assert_eq!(wire.response(false).await.status, 200);
        wires.push(wire);
    }
    // Every idle one is in the lot, the warm-up's closed ones gone from it.
    parked(api, IDLE).await;
    let added = rss_bytes(pid).saturating_sub(before);
    assert!(
        added / IDLE as u64 <= MAX_BYTES_PER_IDLE,
        "{IDLE} idle connections added {added} bytes, {} per connection",
        added / IDLE as u64
    );
    // A request's first bytes take their connection out of the lot: it waits for the rest in a task.
    wires[0].send(b"GET /whoami HTTP/1.1\r\n").await;
    parked(api, IDLE - 1).await;
    wires[0].send(b"Host: t\r\n\r\n").await;
    assert_eq!(wires[0].response(false).await.status, 200);
    // Every parked connection takes buffers back for its next request: a plain one, one whose head is larger than
    // the first read buffer (it must grow), and two pipelined in one write.
    let large = format!(
        "GET /whoami HTTP/1.1\r\nHost: t\r\nX-Padding: {}\r\n\r\n",
        "p".repeat(6000)
    );
    for (i, wire) in wires.iter_mut().enumerate() {
        match i % 3 {
            0 => wire.send(GET).await,
            1 => wire.send(large.as_bytes()).await,
            _ => wire.send(&[GET, GET].concat()).await,
        }
        let response = wire.response(false).await;
        assert_eq!(response.status, 200, "connection {i}: {response:?}");
        assert_eq!(response.json()["id"], id.as_str());
        if i % 3 == 2 {
            assert_eq!(wire.response(false).await.status, 200, "connection {i}");
        }
    }
    // Served, each goes back to the lot.
    parked(api, IDLE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_connections_count_toward_the_limit_and_the_drain_closes_them_after_its_grace() {
    let extra = [
        "server.max_connections=3",
        "shutdown.drain_grace=1s",
        "shutdown.timeout=10s",
    ];
    let (mut setup, id) = with_data_server_and("ds-parked-drain", &extra).await;
    let api = &mut setup.api;
    let mut wires = Vec::new();
    for _ in 0..3 {
        let mut wire = Wire::connect(api.proxy()).await;
        wire.send(GET).await;
        assert_eq!(wire.response(false).await.status, 200);
        wires.push(wire);
    }
    parked(api, 3).await;
    let mut extra = Wire::connect(api.proxy()).await;
    assert_eq!(
        extra.response(false).await.status,
        503,
        "three parked connections fill the limit"
    );
    extra.assert_closed("over the limit").await;

    api.process().signal(Signal::SIGTERM).unwrap();
    let sent = Instant::now();
    testkit::eventually(SOON, "the drain to start", || async {
        api.log()
            .contains("SIGTERM received, shutting down gracefully")
            .then_some(())
    })
    .await;
    // During the grace a parked connection is still served, and told the server is closing it.
    let mut last = wires.pop().unwrap();
    last.send(GET).await;
    let response = last.response(false).await;
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.json()["id"], id.as_str());
    assert_eq!(response.header("connection"), Some("close"));
    last.assert_closed("after a response during the drain")
        .await;
    // The others are closed at the end of the grace, and the process exits.
    for wire in &mut wires {
        wire.assert_closed("parked at the end of the drain's grace")
            .await;
    }
    let open_for = sent.elapsed();
    assert!(
        open_for >= Duration::from_millis(900) && open_for < Duration::from_secs(8),
        "closed {open_for:?} after SIGTERM"
    );
    let status = api.process().wait_exit(SOON).await.unwrap();
    assert!(status.success(), "{status}\n{}", api.log());
}
