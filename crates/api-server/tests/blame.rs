//! Whose fault a failure is, and the timers that decide it: a client that stalls, trickles, malforms or never sends
//! its body is answered (408, 400) and counted, and no healthy data server is ejected for it; a transfer that keeps
//! moving is never cut, however long it takes; kept-alive connections live for `server.keepalive_timeout`.
//!
//! Against a real data-server process behind a real api-server (heartbeats through a real nsqd), and a scripted
//! upstream where the test must see the bytes the proxy sent.

mod common;

use std::time::{Duration, Instant};

use common::wire::*;
use common::*;
use testkit::ApiServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Short timers, so that the tests run in seconds: a body may pause 1 s, the server 1 s; all tries 1.5 s.
const TIMERS: [&str; 5] = [
    "server.body_read_timeout=1s",
    "proxy.try_timeout=1s",
    "proxy.total_timeout=1500ms",
    "server.header_read_timeout=1s",
    "server.keepalive_timeout=3s",
];

async fn ejections(api: &ApiServer) -> f64 {
    api.metric("api_proxy_ejections_total").await.unwrap()
}

/// The data server answers, and it was never ejected: a user of the fleet saw no harm.
async fn assert_unharmed(api: &ApiServer, id: &str) {
    assert_eq!(ejections(api).await, 0.0, "no server ejected");
    let mut wire = Wire::connect(api.proxy()).await;
    wire.send(b"GET /whoami HTTP/1.1\r\nHost: t\r\n\r\n").await;
    let response = wire.response(false).await;
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.json()["id"], id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_gets_408_and_ejects_nothing() {
    let (Setup { api, .. }, id) = &with_data_server_and("ds-stall", &TIMERS).await;
    // 10 of 100 bytes, then silence: nginx's client_body_timeout case.
    let mut wire = Wire::connect(api.proxy()).await;
    wire.send(b"PUT /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n0123456789")
        .await;
    let response = wire.response(false).await;
    assert_eq!(response.status, 408, "{response:?}");
    assert_eq!(response.header("connection"), Some("close"));
    wire.assert_closed("after a 408").await;
    assert!(closed(api, "body_timeout", 1.0).await >= 1.0);
    assert_unharmed(api, id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_without_a_body_gets_408_and_ejects_nothing() {
    let (Setup { api, .. }, id) = &with_data_server_and("ds-expect", &TIMERS).await;
    let mut wire = Wire::connect(api.proxy()).await;
    wire.send(
        b"PUT /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\nExpect: 100-continue\r\n\r\n",
    )
    .await;
    let interim = wire.response(false).await;
    assert_eq!(interim.status, 100, "{interim:?}");
    let response = wire.response(false).await;
    assert_eq!(response.status, 408, "{response:?}");
    wire.assert_closed("after a 408").await;
    assert_unharmed(api, id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_trickling_for_longer_than_every_proxy_timer_completes_and_ejects_nothing() {
    let (Setup { api, .. }, id) = &with_data_server_and("ds-trickle", &TIMERS).await;
    // 24 bytes, one every 150 ms: 3.6 s in all, more than twice try_timeout and past total_timeout, while no pause
    // reaches body_read_timeout. Both endpoints: /upload answers once it has everything (the head wait starts
    // then), /echo answers at once and streams back while the body still trickles in (the server's silence
    // between echoes is not its fault).
    for path in ["/upload", "/echo"] {
        let body = b"abcdefghijklmnopqrstuvwx";
        let mut wire = Wire::connect(api.proxy()).await;
        let started = Instant::now();
        wire.send(
            format!(
                "PUT {path} HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        )
        .await;
        for byte in body {
            tokio::time::sleep(Duration::from_millis(150)).await;
            wire.send(&[*byte]).await;
        }
        let response = wire.response(false).await;
        assert_eq!(response.status, 200, "{path}: {response:?}");
        assert!(started.elapsed() >= Duration::from_secs(3), "{path}");
        if path == "/echo" {
            assert_eq!(response.body, body, "{path}");
        } else {
            assert_eq!(response.json()["bytes"], body.len(), "{path}: {response:?}");
        }
    }
    assert_unharmed(api, id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_read_slowly_for_longer_than_every_proxy_timer_completes() {
    let (Setup { api, .. }, id) = &with_data_server_and("ds-download", &TIMERS).await;
    // 1 MiB read at about 256 KiB/s: 4 s, past try_timeout and total_timeout, with no pause of a second.
    let n = 1 << 20;
    let mut wire = Wire::connect(api.proxy()).await;
    wire.send(format!("GET /bytes/{n} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
        .await;
    let started = Instant::now();
    let mut got = Vec::new();
    let mut chunk = vec![0u8; 32 * 1024];
    loop {
        tokio::time::sleep(Duration::from_millis(125)).await;
        let read = wire.stream.read(&mut chunk).await.unwrap();
        if read == 0 {
            break;
        }
        got.extend_from_slice(&chunk[..read]);
        if got.windows(5).any(|w| w == b"0\r\n\r\n") && got.len() > n {
            break;
        }
    }
    assert!(started.elapsed() >= Duration::from_secs(3));
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&got[..64.min(got.len())])
    );
    assert!(got.len() > n, "the whole body arrived: {} bytes", got.len());
    assert_unharmed(api, id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_bodies_a_strict_server_refuses_are_refused_by_the_proxy_and_eject_nothing() {
    let (Setup { api, .. }, id) = &with_data_server_and("ds-chunks", &TIMERS).await;
    let long_extension = format!("5;e={}\r\nhello\r\n", "a".repeat(4000)).repeat(6);
    for (what, body) in [
        (
            "a trailer line without a colon",
            "5\r\nhello\r\n0\r\nbad trailer\r\n\r\n".to_owned(),
        ),
        (
            "six 4 KB chunk extensions",
            format!("{long_extension}0\r\n\r\n"),
        ),
    ] {
        // All at once, and in two pieces (the second reaching the proxy while the request streams upstream).
        for split in [body.len(), body.len() - 12] {
            let mut wire = Wire::connect(api.proxy()).await;
            wire.send(b"POST /upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
                .await;
            wire.send(&body.as_bytes()[..split]).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            wire.send(&body.as_bytes()[split..]).await;
            let response = wire.response(false).await;
            assert_eq!(
                response.status, 400,
                "{what}, split at {split}: {response:?}"
            );
            wire.assert_closed(what).await;
        }
    }
    assert_unharmed(api, id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_bodies_reach_the_server_re_framed_without_extensions_or_trailers() {
    // A raw upstream that records the body bytes exactly as the proxy framed them.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, mut received) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut chunk = [0u8; 4096];
                while !seen.windows(5).any(|w| w == b"0\r\n\r\n") {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&chunk[..n]),
                    }
                }
                let _ = tx.send(seen);
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
            });
        }
    });
    let Setup { api, .. } = &with_upstreams_and(&[addr], &TIMERS).await;
    let mut wire = Wire::connect(api.proxy()).await;
    wire.send(
        b"POST /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n\
          5;name=value\r\nhello\r\n6;a;b=\"c\"\r\n world\r\n0\r\nX-Forwarded-For: 6.6.6.6\r\nHost: evil\r\n\r\n",
    )
    .await;
    let response = wire.response(false).await;
    assert_eq!(response.status, 200, "{response:?}");
    let seen = received.recv().await.unwrap();
    let seen = String::from_utf8_lossy(&seen);
    let body = &seen[seen.find("\r\n\r\n").unwrap() + 4..];
    assert_eq!(
        body, "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        "re-framed: {seen}"
    );
    assert_eq!(
        api.metric("api_proxy_trailers_dropped_total")
            .await
            .unwrap(),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_max_body_bytes_gets_413() {
    let mut extra = TIMERS.to_vec();
    extra.push("proxy.max_body_bytes=10");
    let (Setup { api, .. }, id) = &with_data_server_and("ds-413", &extra).await;
    for request in [
        &b"PUT /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 11\r\n\r\n01234567890"[..],
        b"PUT /upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n6\r\n012345\r\n5\r\n67890\r\n0\r\n\r\n",
    ] {
        let mut wire = Wire::connect(api.proxy()).await;
        wire.send(request).await;
        let response = wire.response(false).await;
        assert_eq!(response.status, 413, "{response:?}");
    }
    // At the limit is fine.
    let mut wire = Wire::connect(api.proxy()).await;
    wire.send(b"PUT /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n0123456789")
        .await;
    assert_eq!(wire.response(false).await.status, 200);
    assert!(closed(api, "body_too_large", 2.0).await >= 2.0);
    assert_unharmed(api, id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_outlives_the_header_timeout_and_closes_at_the_keepalive_timeout()
 {
    let (Setup { api, .. }, id) = &with_data_server_and("ds-idle", &TIMERS).await;
    let mut wire = Wire::connect(api.proxy()).await;
    wire.send(b"GET /whoami HTTP/1.1\r\nHost: t\r\n\r\n").await;
    assert_eq!(wire.response(false).await.status, 200);
    // Idle for twice header_read_timeout: a pooling client's connection is still good.
    tokio::time::sleep(Duration::from_secs(2)).await;
    wire.send(b"GET /whoami HTTP/1.1\r\nHost: t\r\n\r\n").await;
    let response = wire.response(false).await;
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.json()["id"], id.as_str());
    // Then idle for good: closed at keepalive_timeout (3 s), not before, and not counted as a slow client.
    let idle_from = Instant::now();
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(SOON, wire.stream.read(&mut byte)).await;
    assert!(matches!(read, Ok(Ok(0) | Err(_))), "closed: {read:?}");
    let idle = idle_from.elapsed();
    assert!(
        idle >= Duration::from_millis(2900) && idle < Duration::from_secs(6),
        "closed after {idle:?}"
    );
    assert_eq!(
        api.metric("api_http_connections_closed_total{reason=\"header_timeout\"}")
            .await
            .unwrap(),
        0.0
    );
    // A request head that has begun still gets header_read_timeout from its first byte.
    let mut slow = Wire::connect(api.proxy()).await;
    slow.send(b"GET /whoami HTTP/1.1\r\nHost: t\r\n\r\n").await;
    assert_eq!(slow.response(false).await.status, 200);
    slow.send(b"GET /whoami HTTP/1.1\r\n").await;
    let started = Instant::now();
    slow.assert_closed("a head begun and not finished").await;
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "{:?}",
        started.elapsed()
    );
}
