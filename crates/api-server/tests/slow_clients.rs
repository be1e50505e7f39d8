//! Hostile HTTP clients on both listeners (the proxy, `server.listen`, and the admin API, `server.admin_listen`):
//! slowloris (headers trickled forever), connections that never send a byte, oversized request headers, and an
//! oversized body to the admin API. Normal requests keep succeeding meanwhile with normal latency, and every hostile
//! connection is answered or closed by the server within a bounded time.
//!
//! The header read timeout under test is `server.header_read_timeout` (1 s here; 10 s by default); closed
//! connections are counted in `api_http_connections_closed_total{reason}`.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use testkit::{ApiServer, NsqCluster};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(1);
const SET_HEADER_READ_TIMEOUT: &str = "server.header_read_timeout=1s";
/// How long after the header read timeout a slow connection may still be open: scheduling slack, not a budget.
const GRACE: Duration = Duration::from_secs(3);
/// A request on loopback takes about a millisecond; anything near this means the server was blocked.
const NORMAL_LATENCY: Duration = Duration::from_millis(500);

/// A cluster, an upstream announced through it, and an api-server routing to it.
struct Setup {
    _cluster: NsqCluster,
    _announcer: Announcer,
    api: ApiServer,
}

async fn setup(instance: &str, extra: &[&str]) -> Setup {
    let cluster = NsqCluster::start(1).await.unwrap();
    create_topic(&cluster).await;
    let upstream = upstream().await;
    let announcer = announcer(
        &cluster,
        &format!("upstream-{instance}"),
        &upstream.to_string(),
        Duration::from_millis(200),
    );
    let mut sets = vec![format!("server.instance={instance}")];
    sets.extend(extra.iter().map(|s| (*s).to_owned()));
    let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
    let api = api_server(&cluster, "10s", &sets).await;
    wait_servers(&api, 1).await;
    Setup {
        _cluster: cluster,
        _announcer: announcer,
        api,
    }
}

/// A minimal HTTP/1.1 upstream for the proxy to route to: answers every request with 200 and closes. (A
/// `data-server` process would do too, but building it from here costs a minute whenever features differ.)
async fn upstream() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let body = br#"{"id":"upstream"}"#;
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(answer.as_bytes()).await;
                let _ = stream.write_all(body).await;
            });
        }
    });
    addr
}

/// `api_http_connections_closed_total` for `reason`, once it reached `at_least` (or after `SOON`).
async fn closed(api: &ApiServer, reason: &str, at_least: f64) -> f64 {
    let sample = format!("api_http_connections_closed_total{{reason=\"{reason}\"}}");
    wait_metric(api, &sample, at_least).await
}

/// One normal request to each listener succeeds within `NORMAL_LATENCY`.
async fn assert_normal_requests(api: &ApiServer) {
    let http = client();
    for url in [
        format!("http://{}/healthz", api.admin()),
        format!("http://{}/whoami", api.proxy()),
    ] {
        let started = Instant::now();
        let response = http.get(&url).send().await.expect(&url);
        let took = started.elapsed();
        assert!(
            response.status().is_success(),
            "{url}: {}",
            response.status()
        );
        assert!(
            took < NORMAL_LATENCY,
            "{url} took {took:?} while hostile clients were connected"
        );
    }
}

/// Opens a connection that starts a request and then sends one more header byte every `every`, never finishing.
/// Returns how long the server let it live, or `None` if it was still open after `give_up`.
async fn trickle(addr: SocketAddr, every: Duration, give_up: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let (mut read, mut write) = stream.split();
    if write
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .is_err()
    {
        return Some(started.elapsed());
    }
    let mut buf = [0u8; 1024];
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            // EOF, a reset, or a response (e.g. 408) followed by EOF: the server is done with it.
            read = read.read(&mut buf) => match read {
                Ok(0) | Err(_) => return Some(started.elapsed()),
                Ok(_) => continue,
            },
            _ = tick.tick() => {
                if started.elapsed() > give_up {
                    return None;
                }
                if write.write_all(b"a").await.is_err() {
                    return Some(started.elapsed());
                }
            }
        }
    }
}

/// Opens a connection and sends nothing. Returns how long the server let it live, or `None` after `give_up`.
async fn idle(addr: SocketAddr, give_up: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout_at((started + give_up).into(), stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => continue,
        }
    }
}

/// Sends `head` (a request line and headers, without the blank line) plus an end of headers, and returns the status
/// code of the answer, or `None` when the server closed the connection without one.
async fn raw_status(addr: SocketAddr, head: &[u8]) -> Option<u16> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    // A server that refuses early may reset the connection while the rest is still being written: that is a refusal.
    if stream.write_all(head).await.is_err() || stream.write_all(b"\r\n\r\n").await.is_err() {
        return None;
    }
    read_status(&mut stream).await
}

async fn read_status(stream: &mut TcpStream) -> Option<u16> {
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(10);
    while !answer.windows(2).any(|w| w == b"\r\n") {
        let n = tokio::time::timeout_at(deadline.into(), stream.read(&mut buf))
            .await
            .expect("an answer or a close within 10 s")
            .ok()?;
        if n == 0 {
            return None;
        }
        answer.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&answer);
    line.split(' ').nth(1)?.parse().ok()
}

fn head_with_header(path: &str, name: &str, value_len: usize) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{name}: {}",
        "a".repeat(value_len)
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slowloris_connections_are_closed_and_do_not_slow_normal_requests() {
    let Setup { api, .. } = &setup("slowloris", &[SET_HEADER_READ_TIMEOUT]).await;
    const PER_LISTENER: usize = 50;
    let give_up = HEADER_READ_TIMEOUT + GRACE;
    let mut slow = tokio::task::JoinSet::new();
    for addr in [api.proxy(), api.admin()] {
        for _ in 0..PER_LISTENER {
            slow.spawn(async move {
                (
                    addr,
                    trickle(addr, Duration::from_millis(300), give_up).await,
                )
            });
        }
    }
    // While the slow clients hold their connections, normal ones are served as usual.
    let started = Instant::now();
    while started.elapsed() < HEADER_READ_TIMEOUT / 2 {
        assert_normal_requests(api).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    while let Some(joined) = slow.join_next().await {
        let (addr, lived) = joined.unwrap();
        let lived = lived.unwrap_or_else(|| {
            panic!("a slowloris connection to {addr} was still open after {give_up:?}")
        });
        assert!(
            lived >= HEADER_READ_TIMEOUT - Duration::from_millis(100),
            "closed after {lived:?}, before the header read timeout"
        );
    }
    assert_normal_requests(api).await;
    let counted = closed(api, "header_timeout", (2 * PER_LISTENER) as f64).await;
    assert!(
        counted >= (2 * PER_LISTENER) as f64,
        "{counted} header timeouts counted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_never_send_a_byte_are_closed() {
    let Setup { api, .. } = &setup("idle", &[SET_HEADER_READ_TIMEOUT]).await;
    let give_up = HEADER_READ_TIMEOUT + GRACE;
    let mut idle_clients = tokio::task::JoinSet::new();
    for addr in [api.proxy(), api.admin()] {
        for _ in 0..20 {
            idle_clients.spawn(async move { (addr, idle(addr, give_up).await) });
        }
    }
    assert_normal_requests(api).await;
    while let Some(joined) = idle_clients.join_next().await {
        let (addr, lived) = joined.unwrap();
        assert!(
            lived.is_some(),
            "an idle connection to {addr} was still open after {give_up:?}"
        );
    }
    assert_normal_requests(api).await;
    let counted = closed(api, "header_timeout", 40.0).await;
    assert!(counted >= 40.0, "{counted} header timeouts counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_request_headers_get_431_and_normal_ones_pass() {
    let Setup { api, .. } = &setup("headers", &[SET_HEADER_READ_TIMEOUT]).await;
    for (addr, path) in [(api.proxy(), "/whoami"), (api.admin(), "/healthz")] {
        // A large cookie is normal: it passes.
        assert_eq!(
            raw_status(addr, &head_with_header(path, "Cookie", 4 * 1024)).await,
            Some(200),
            "{addr}{path} with a 4 KB header"
        );
        // One 100 KB header, and many headers adding up to 100 KB: refused, never served.
        let many: String = (0..1000)
            .map(|i| format!("\r\nX-H{i}: {}", "b".repeat(100)))
            .collect();
        let many =
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close{many}").into_bytes();
        for (what, head) in [
            (
                "one 100 KB header",
                head_with_header(path, "X-Big", 100 * 1024),
            ),
            ("1000 headers", many),
        ] {
            let status = raw_status(addr, &head).await;
            assert!(
                matches!(status, Some(431) | None),
                "{addr}{path} with {what}: expected 431 or a closed connection, found {status:?}"
            );
        }
    }
    assert_normal_requests(api).await;
    // Two oversized requests per listener, each counted once.
    assert_eq!(
        closed(api, "header_too_large", 4.0).await,
        4.0,
        "{}",
        api.metrics().await.unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_body_to_the_admin_api_is_not_buffered() {
    let Setup { api, .. } = &mut setup("admin-body", &[]).await;
    const BODY: usize = 64 * 1024 * 1024;
    let pid = api.process().pid().expect("api-server pid");
    let rss_before = rss_kib(pid);
    for (method, path) in [
        ("POST", "/registry"),
        ("GET", "/healthz"),
        ("PUT", "/metrics"),
    ] {
        let mut stream = TcpStream::connect(api.admin()).await.unwrap();
        let head = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {BODY}\r\n\r\n");
        stream.write_all(head.as_bytes()).await.unwrap();
        // Write the body while waiting for the answer; a server that answers early need not read the rest.
        let (mut read, mut write) = stream.into_split();
        let writer = tokio::spawn(async move {
            let chunk = vec![b'z'; 64 * 1024];
            let mut sent = 0;
            while sent < BODY {
                if write.write_all(&chunk).await.is_err() {
                    break;
                }
                sent += chunk.len();
            }
        });
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        let status = loop {
            let n = tokio::time::timeout(Duration::from_secs(10), read.read(&mut buf))
                .await
                .unwrap_or_else(|_| {
                    panic!("{method} {path} with a {BODY}-byte body: no answer within 10 s")
                })
                .unwrap_or(0);
            if n == 0 {
                break None;
            }
            answer.extend_from_slice(&buf[..n]);
            if let Some(line) = answer
                .split(|b| *b == b'\n')
                .next()
                .filter(|_| answer.contains(&b'\n'))
            {
                break String::from_utf8_lossy(line)
                    .split(' ')
                    .nth(1)
                    .and_then(|s| s.parse::<u16>().ok());
            }
        };
        writer.abort();
        let refused = matches!(status, Some(405 | 413) | None);
        let ignored = method == "GET" && status == Some(200);
        assert!(
            refused || ignored,
            "{method} {path} with a {BODY}-byte body: {status:?}"
        );
    }
    let grown = rss_kib(pid).saturating_sub(rss_before);
    assert!(
        grown < 32 * 1024,
        "the api-server grew by {grown} KiB: a body was buffered"
    );
    assert_normal_requests(api).await;
    assert!(
        api.process().try_wait().unwrap().is_none(),
        "the api-server exited:\n{}",
        api.log()
    );
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmRSS:")?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0)
}
