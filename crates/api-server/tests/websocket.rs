//! Upgrades through the proxy: WebSocket clients reach the data servers' `/ws` endpoints through the api-server,
//! tunnels outlive the request timers, end with their server, the drain, their idle timeout or a half close's grace,
//! and `h2c` is never tunnelled.
//! Real data-server processes behind a real api-server, heartbeats through a real nsqd.

mod common;

use std::time::{Duration, Instant};

use common::wire::*;
use common::*;
use futures::{SinkExt, StreamExt};
use testkit::Signal;
use testkit::{NsqCluster, eventually};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(api: &testkit::ApiServer, path: &str) -> Socket {
    let url = format!("ws://{}{path}", api.proxy());
    // Without Nagle's delay on the client's own socket, as a latency-minded client would (the proxy's are set).
    let connecting = tokio_tungstenite::connect_async_with_config(&url, None, true);
    let (socket, response) = tokio::time::timeout(SOON, connecting)
        .await
        .expect("the upgrade answered in time")
        .unwrap_or_else(|e| panic!("upgrade to {url}: {e}"));
    assert_eq!(response.status(), 101);
    socket
}

/// The next text message, within `SOON`; `None` once the tunnel closed.
async fn next_text(socket: &mut Socket) -> Option<String> {
    loop {
        match tokio::time::timeout(SOON, socket.next())
            .await
            .expect("a message in time")
        {
            Some(Ok(Message::Text(text))) => return Some(text.to_string()),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
            Some(Ok(other)) => panic!("unexpected {other:?}"),
        }
    }
}

/// The tunnel relays of the api-server: on io_uring threads (the default, where the kernel allows it) and on the
/// proxy's workers (`proxy.tunnel_io_uring=false`, and wherever io_uring is refused).
const WORKERS: &str = "proxy.tunnel_io_uring=false";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_messages_echo_through_the_api_server() {
    thousand_messages(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_messages_echo_through_the_workers_relay() {
    thousand_messages(&[WORKERS]).await;
}

async fn thousand_messages(extra: &[&str]) {
    let (Setup { api, .. }, _) = &with_data_server_and("ds-ws", extra).await;
    let mut socket = connect(api, "/ws").await;
    for i in 0..1000 {
        let text = format!("message {i}");
        socket
            .send(Message::Text(text.clone().into()))
            .await
            .unwrap();
        assert_eq!(next_text(&mut socket).await.as_deref(), Some(text.as_str()));
    }
    socket
        .send(Message::Binary(vec![0, 1, 2, 255].into()))
        .await
        .unwrap();
    match tokio::time::timeout(SOON, socket.next()).await.unwrap() {
        Some(Ok(Message::Binary(bytes))) => assert_eq!(&bytes[..], [0, 1, 2, 255]),
        other => panic!("{other:?}"),
    }
    assert_eq!(api.metric("api_proxy_tunnels_open").await.unwrap(), 1.0);
    socket.close(None).await.unwrap();
    drop(socket);
    eventually(SOON, "the tunnel closed and counted", || async {
        let open = api.metric("api_proxy_tunnels_open").await.unwrap();
        let mut closed = 0.0;
        for reason in ["client_closed", "server_closed"] {
            closed += tunnels_closed(api, reason).await;
        }
        (open == 0.0 && closed == 1.0).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tick_stream_outlives_the_request_timers() {
    let extra = [
        "server.header_read_timeout=1s",
        "proxy.try_timeout=1s",
        "proxy.total_timeout=1s",
    ];
    let (Setup { api, .. }, _) = &with_data_server_and("ds-ticks", &extra).await;
    let mut socket = connect(api, "/ws/ticks?every=100ms").await;
    let started = Instant::now();
    let mut expected = 0u64;
    while started.elapsed() < Duration::from_millis(2500) {
        let tick = next_text(&mut socket).await.expect("ticks keep coming");
        assert_eq!(tick, expected.to_string());
        expected += 1;
    }
    assert!(expected >= 20, "{expected} ticks in 2.5 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_data_server_closes_its_tunnels_and_new_upgrades_go_to_another() {
    let cluster = NsqCluster::start(1).await.unwrap();
    create_topic(&cluster).await;
    let api = api_server(&cluster, "10s", &[]).await;
    let mut first = data_server(&cluster, "ds-first", "250ms").await;
    wait_servers(&api, 1).await;
    let mut socket = connect(&api, "/ws").await;
    socket.send(Message::Text("before".into())).await.unwrap();
    assert_eq!(next_text(&mut socket).await.as_deref(), Some("before"));
    let _second = data_server(&cluster, "ds-second", "250ms").await;
    wait_servers(&api, 2).await;
    first.process().signal(Signal::SIGKILL).unwrap();
    assert_eq!(
        next_text(&mut socket).await,
        None,
        "the tunnel closed with its server"
    );
    for i in 0..5 {
        let mut socket = connect(&api, "/ws").await;
        let text = format!("after {i}");
        socket
            .send(Message::Text(text.clone().into()))
            .await
            .unwrap();
        assert_eq!(next_text(&mut socket).await.as_deref(), Some(text.as_str()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_tunnel_closes_after_the_idle_timeout_and_a_talking_one_stays_open() {
    idle_timeout(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_workers_relay_closes_a_silent_tunnel_too() {
    idle_timeout(&[WORKERS]).await;
}

async fn idle_timeout(extra: &[&str]) {
    let extra = [&["proxy.tunnel_idle_timeout=1s"], extra].concat();
    let (Setup { api, .. }, _) = &with_data_server_and("ds-idle", &extra).await;
    let mut silent = connect(api, "/ws").await;
    let mut talking = connect(api, "/ws").await;
    let opened = Instant::now();
    // A message every 300 ms for three idle timeouts: the tunnel stays open.
    while opened.elapsed() < Duration::from_secs(3) {
        talking
            .send(Message::Text("still here".into()))
            .await
            .unwrap();
        assert_eq!(next_text(&mut talking).await.as_deref(), Some("still here"));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // The silent one was closed by the proxy (the timeout is noticed within one more timeout).
    assert_eq!(next_text(&mut silent).await, None);
    let idle = api
        .metric("api_proxy_tunnels_closed_total{reason=\"idle\"}")
        .await
        .unwrap();
    assert_eq!(idle, 1.0);
    assert_eq!(api.metric("api_proxy_tunnels_open").await.unwrap(), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_closed_tunnel_closes_after_its_grace() {
    // A server that switches protocols, then keeps its side open and reads nothing.
    let upstream = Scripted::start(|_| Reply {
        bytes:
            b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n"
                .to_vec(),
        read_body: false,
        head_first: false,
        after: After::CloseIdle(Duration::from_secs(30)),
    })
    .await;
    let Setup { api, .. } = &with_upstreams(&[upstream.addr]).await;
    let mut wire = Wire::connect(api.proxy()).await;
    wire.send(
        b"GET /chat HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    .await;
    assert_eq!(wire.response(false).await.status, 101);
    // The client closes its half; the server never does.
    wire.stream.shutdown().await.unwrap();
    let half_closed = Instant::now();
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(10), wire.stream.read(&mut byte))
        .await
        .expect("the proxy closed the tunnel");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    let open_for = half_closed.elapsed();
    assert!(
        open_for >= Duration::from_millis(4500) && open_for < Duration::from_secs(8),
        "closed {open_for:?} after the client's half close"
    );
    let sample = "api_proxy_tunnels_closed_total{reason=\"client_closed\"}";
    assert_eq!(api.metric(sample).await.unwrap(), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_closes_tunnels_after_its_grace() {
    drain(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_closes_the_workers_relay_tunnels_too() {
    drain(&[WORKERS]).await;
}

async fn drain(extra: &[&str]) {
    let extra = [&["shutdown.drain_grace=1s", "shutdown.timeout=10s"], extra].concat();
    // The whole setup is kept: the cluster and the data server live to the end of the test.
    let (mut setup, _) = with_data_server_and("ds-drain", &extra).await;
    let api = &mut setup.api;
    let mut socket = connect(api, "/ws/ticks?every=50ms").await;
    assert!(next_text(&mut socket).await.is_some());
    api.process().signal(Signal::SIGTERM).unwrap();
    let sent = Instant::now();
    while next_text(&mut socket).await.is_some() {}
    let open_for = sent.elapsed();
    assert!(
        open_for >= Duration::from_millis(900) && open_for < Duration::from_secs(8),
        "closed {open_for:?} after SIGTERM"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_is_stripped_and_other_answers_to_an_upgrade_are_plain_responses() {
    let upstream = Scripted::start(|_| Reply::ok("426 Upgrade Required", "", b"no")).await;
    let Setup { api, .. } = &with_upstreams(&[upstream.addr]).await;
    let mut wire = Wire::connect(api.proxy()).await;
    wire.send(
        b"GET / HTTP/1.1\r\nHost: t\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n",
    )
    .await;
    let response = wire.response(false).await;
    assert_eq!(response.status, 426, "{response:?}");
    let head = upstream.last_head().to_ascii_lowercase();
    assert!(!head.contains("upgrade"), "h2c is not passed on: {head}");
    assert!(!head.contains("http2-settings"), "{head}");
    // A WebSocket upgrade is passed on, and a non-101 answer to it is an ordinary response on a kept connection.
    wire.send(
        b"GET /chat HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await;
    let response = wire.response(false).await;
    assert_eq!(response.status, 426, "{response:?}");
    assert_eq!(response.body, b"no");
    let head = upstream.last_head();
    assert_eq!(head_header(&head, "upgrade").as_deref(), Some("websocket"));
    assert_eq!(head_header(&head, "connection").as_deref(), Some("upgrade"));
    wire.send(b"GET /again HTTP/1.1\r\nHost: t\r\n\r\n").await;
    assert_eq!(wire.response(false).await.status, 426);
}

/// `api_proxy_tunnels_closed_total` for `reason`.
async fn tunnels_closed(api: &testkit::ApiServer, reason: &str) -> f64 {
    let sample = format!("api_proxy_tunnels_closed_total{{reason=\"{reason}\"}}");
    api.metric(&sample).await.unwrap()
}

/// A WebSocket-style upgrade request for `path`.
fn upgrade(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
}

/// An upstream that switches protocols on every request, then reads one byte through the tunnel and either resets
/// its side (`GET /reset`: SO_LINGER 0, then close) or echoes the byte and waits for the tunnel to close.
async fn resetting_upstream() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut conn = Wire::new(stream);
                let Some(head) = conn.request_head().await else {
                    return;
                };
                let switch = b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n";
                conn.stream.write_all(switch).await.unwrap();
                let mut byte = [0u8; 1];
                if conn.stream.read_exact(&mut byte).await.is_err() {
                    return;
                }
                if head.starts_with(b"GET /reset ") {
                    conn.stream.set_zero_linger().unwrap();
                    drop(conn);
                    return;
                }
                let _ = conn.stream.write_all(&byte).await;
                let _ = conn.stream.read(&mut byte).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_counts_as_a_close_by_the_side_that_reset_not_as_an_error() {
    let upstream = resetting_upstream().await;
    let Setup { api, .. } = &with_upstreams(&[upstream]).await;

    // The data server resets its side once the tunnel carries bytes.
    let mut wire = Wire::connect(api.proxy()).await;
    wire.send(upgrade("/reset").as_bytes()).await;
    assert_eq!(wire.response(false).await.status, 101);
    wire.send(b"x").await;
    wire.assert_closed("after the server's reset").await;
    eventually(SOON, "the server's reset counted", || async {
        (tunnels_closed(api, "server_closed").await == 1.0).then_some(())
    })
    .await;
    assert_eq!(
        tunnels_closed(api, "error").await,
        0.0,
        "a reset is not the proxy's error"
    );

    // The client resets its side of a working tunnel.
    let mut wire = Wire::connect(api.proxy()).await;
    wire.send(upgrade("/stay").as_bytes()).await;
    assert_eq!(wire.response(false).await.status, 101);
    wire.send(b"y").await;
    assert_eq!(wire.take(1).await, b"y");
    wire.stream.set_zero_linger().unwrap();
    drop(wire);
    eventually(SOON, "the client's reset counted", || async {
        let open = api.metric("api_proxy_tunnels_open").await.unwrap();
        (tunnels_closed(api, "client_closed").await == 1.0 && open == 0.0).then_some(())
    })
    .await;
    assert_eq!(tunnels_closed(api, "error").await, 0.0);
    assert_eq!(tunnels_closed(api, "server_closed").await, 1.0);
}

/// An upstream that switches protocols on every request, then either sends without pause and reads nothing
/// (`GET /flood`; it tells on the channel when a write failed: its side was closed under it) or reads nothing and
/// sends nothing (any other path).
async fn stalling_upstream() -> (std::net::SocketAddr, tokio::sync::mpsc::Receiver<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (freed, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let freed = freed.clone();
            tokio::spawn(async move {
                let mut conn = Wire::new(stream);
                let Some(head) = conn.request_head().await else {
                    return;
                };
                let switch = b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n";
                conn.stream.write_all(switch).await.unwrap();
                if head.starts_with(b"GET /flood ") {
                    while conn.stream.write_all(&[7; 65536]).await.is_ok() {}
                    let _ = freed.send(()).await;
                } else {
                    // Holds its side open, reading nothing, until the test's runtime ends.
                    std::future::pending::<()>().await;
                }
            });
        }
    });
    (addr, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_or_server_that_stops_reading_loses_its_tunnel_and_only_its_own() {
    stalls(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_workers_relay_closes_stalled_tunnels_too() {
    stalls(&[WORKERS]).await;
}

async fn stalls(extra: &[&str]) {
    let (upstream, mut freed) = stalling_upstream().await;
    // The stall limits short; the idle timeout long, so that only a stall can close these tunnels in time.
    let extra = [
        &[
            "server.send_timeout=1s",
            "proxy.try_timeout=1s",
            "proxy.tunnel_idle_timeout=1h",
        ],
        extra,
    ]
    .concat();
    let Setup { api, .. } = &with_upstreams_and(&[upstream], &extra).await;

    // The data server sends; the client reads nothing. Once the buffers are full the data server is blocked
    // behind the client, both silent: the tunnel closes as the client's stall, and frees the data server.
    let mut wire = Wire::connect(api.proxy()).await;
    wire.send(upgrade("/flood").as_bytes()).await;
    assert_eq!(wire.response(false).await.status, 101);
    let freed_first = tokio::time::timeout(SOON, freed.recv()).await;
    assert_eq!(
        freed_first.expect("the data server's side closed in time"),
        Some(())
    );
    eventually(SOON, "the client's stall counted", || async {
        let open = api.metric("api_proxy_tunnels_open").await.unwrap();
        (tunnels_closed(api, "client_stalled").await == 1.0 && open == 0.0).then_some(())
    })
    .await;
    drop(wire);

    // The client sends; the data server reads nothing: the server's stall, and the client's tunnel closes.
    let mut wire = Wire::connect(api.proxy()).await;
    wire.send(upgrade("/deaf").as_bytes()).await;
    assert_eq!(wire.response(false).await.status, 101);
    let flooding = async { while wire.stream.write_all(&[8; 65536]).await.is_ok() {} };
    tokio::time::timeout(SOON, flooding)
        .await
        .expect("the client's writes failed once the proxy closed the tunnel");
    eventually(SOON, "the server's stall counted", || async {
        let open = api.metric("api_proxy_tunnels_open").await.unwrap();
        (tunnels_closed(api, "server_stalled").await == 1.0 && open == 0.0).then_some(())
    })
    .await;
    for reason in ["client_closed", "server_closed", "idle", "error"] {
        assert_eq!(
            tunnels_closed(api, reason).await,
            0.0,
            "no tunnel closed as {reason}"
        );
    }
}
