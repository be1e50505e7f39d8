//! Parked connections (`crates/proxy/src/park.rs`): a kept-alive client connection between requests holds no
//! buffers, costs little memory, and still serves its next request, whatever that request looks like. (That a
//! parked connection closes at `server.keepalive_timeout`, not before, is `blame.rs`'s idle keep-alive test.)

mod common;

use common::wire::*;

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
    let added = rss_bytes(pid).saturating_sub(before);
    assert!(
        added / IDLE as u64 <= MAX_BYTES_PER_IDLE,
        "{IDLE} idle connections added {added} bytes, {} per connection",
        added / IDLE as u64
    );
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
}
