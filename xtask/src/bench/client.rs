//! A minimal HTTP/1.1 client on raw tokio sockets and an open-loop load generator, shared by
//! the proxy benchmarks (`proxy`, `failover`, `hostile`).
//!
//! Hand-written rather than hyper or reqwest so that the client costs the same few system
//! calls per request whatever the target, and measures the target rather than itself.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The path the proxy benchmarks request (a small JSON document).
pub const WHOAMI: &str = "/whoami";
/// Samples scheduled in the first part of an open-loop run are not recorded.
const OPEN_LOOP_WARMUP: Duration = Duration::from_millis(100);
/// One request of the open-loop generator gives up after this long (counted as an error).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// `GET path` on a kept-alive connection.
pub fn get_request(addr: SocketAddr, path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").into_bytes()
}

/// `PUT path` with a small body, on a kept-alive connection.
pub fn put_request(addr: SocketAddr, path: &str, body: &[u8]) -> Vec<u8> {
    let mut req = format!(
        "PUT {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    req
}

/// One request on a kept-alive connection (opened when `conn` is empty); returns the status
/// and leaves the response body in `buf`. The connection is dropped on any error.
pub async fn http_request(
    addr: SocketAddr,
    conn: &mut Option<TcpStream>,
    req: &[u8],
    buf: &mut Vec<u8>,
) -> Result<u16> {
    let result = exchange(addr, conn, req, buf).await;
    if result.is_err() {
        *conn = None;
    }
    result
}

async fn exchange(
    addr: SocketAddr,
    conn: &mut Option<TcpStream>,
    req: &[u8],
    buf: &mut Vec<u8>,
) -> Result<u16> {
    if conn.is_none() {
        let s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        *conn = Some(s);
    }
    let Some(s) = conn.as_mut() else {
        bail!("no connection");
    };
    s.write_all(req).await?;
    buf.clear();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            bail!("connection closed before the response head");
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&buf[..head_end])?.to_owned();
    let status: u16 = head
        .split(' ')
        .nth(1)
        .context("no status")?
        .parse()
        .context("bad status")?;
    let (mut length, mut chunked, mut close) = (None, false, false);
    for line in head.lines().skip(1) {
        if let Some((k, v)) = line.split_once(':') {
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_ascii_lowercase());
            match k.as_str() {
                "content-length" => length = Some(v.parse::<usize>()?),
                "transfer-encoding" => chunked = v.contains("chunked"),
                "connection" => close = v.contains("close"),
                _ => {}
            }
        }
    }
    // 204 and 304 never have a body, whatever the headers say (RFC 9112 §6.3).
    if status == 204 || status == 304 {
        length = Some(0);
    }
    let done = |buf: &Vec<u8>| match (length, chunked) {
        (Some(n), _) => buf.len() >= head_end + n,
        (None, true) => {
            let body = &buf[head_end..];
            body.starts_with(b"0\r\n\r\n") || body.ends_with(b"\r\n0\r\n\r\n")
        }
        // Read to the end.
        (None, false) => false,
    };
    while !done(buf) {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            if length.is_none() && !chunked {
                close = true;
                break;
            }
            bail!("connection closed in the response body");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    buf.drain(..head_end);
    if close {
        *conn = None;
    }
    Ok(status)
}

/// What the open-loop generator measured.
#[derive(Debug, Default)]
pub struct OpenLoop {
    /// Successful (2xx) requests recorded.
    pub samples: usize,
    /// Requests that failed (non-2xx, I/O error or [`REQUEST_TIMEOUT`]).
    pub errors: u64,
    /// The failures by kind: the status code, `timeout` or `io`.
    pub failures: BTreeMap<String, u64>,
    /// Median latency of the successful requests.
    pub p50_ms: f64,
    /// 99th percentile latency of the successful requests.
    pub p99_ms: f64,
    /// 99.9th percentile latency of the successful requests.
    pub p999_ms: f64,
}

/// One open-loop run: latencies in ms and the failures.
pub struct Round {
    latencies: Vec<f64>,
    failures: BTreeMap<String, u64>,
}

impl OpenLoop {
    /// The percentiles over all rounds together.
    pub fn merge(rounds: Vec<Round>) -> Result<OpenLoop> {
        let mut latencies = Vec::new();
        let mut failures = BTreeMap::new();
        for r in rounds {
            latencies.extend(r.latencies);
            for (k, n) in r.failures {
                *failures.entry(k).or_insert(0) += n;
            }
        }
        let errors = failures.values().sum();
        if latencies.is_empty() {
            bail!("no successful open-loop request ({errors} errors: {failures:?})");
        }
        latencies.sort_by(f64::total_cmp);
        let pct = |p: f64| {
            let i = ((p * latencies.len() as f64).ceil() as usize).clamp(1, latencies.len()) - 1;
            latencies[i]
        };
        Ok(OpenLoop {
            samples: latencies.len(),
            errors,
            failures,
            p50_ms: pct(0.50),
            p99_ms: pct(0.99),
            p999_ms: pct(0.999),
        })
    }
}

/// Requests at a fixed `rate` for `length` over `connections` kept-alive connections (a fixed
/// schedule, not waiting for answers), each latency measured from its scheduled send time, so
/// a stall counts against every request that should have gone out during it (no coordinated
/// omission). The n-th scheduled request sends `requests[n % requests.len()]`.
pub async fn open_loop(
    addr: SocketAddr,
    rate: f64,
    length: Duration,
    connections: usize,
    requests: &Arc<[Vec<u8>]>,
) -> Result<Round> {
    if requests.is_empty() {
        bail!("the open-loop generator needs at least one request");
    }
    let count = (rate * length.as_secs_f64()) as u64;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<(usize, Instant)>();
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let start = Instant::now() + Duration::from_millis(200);
    let record_from = start + OPEN_LOOP_WARMUP;
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..connections.max(1) {
        let (rx, requests) = (rx.clone(), requests.clone());
        workers.spawn(async move {
            let mut conn = None;
            let mut buf = Vec::with_capacity(8192);
            if let Ok(s) = TcpStream::connect(addr).await {
                let _ = s.set_nodelay(true);
                conn = Some(s);
            }
            let mut latencies = Vec::new();
            let mut failures = BTreeMap::<String, u64>::new();
            loop {
                let next = rx.lock().await.recv().await;
                let Some((n, scheduled)) = next else { break };
                let req = &requests[n % requests.len()];
                let answer = tokio::time::timeout(
                    REQUEST_TIMEOUT,
                    http_request(addr, &mut conn, req, &mut buf),
                )
                .await;
                let elapsed = scheduled.elapsed();
                let failure = match answer {
                    Ok(Ok(status)) if (200..300).contains(&status) => {
                        if scheduled >= record_from {
                            latencies.push(elapsed.as_secs_f64() * 1000.0);
                        }
                        continue;
                    }
                    Ok(Ok(status)) => status.to_string(),
                    Ok(Err(_)) => "io".to_string(),
                    Err(_) => {
                        conn = None;
                        "timeout".to_string()
                    }
                };
                *failures.entry(failure).or_insert(0) += 1;
            }
            (latencies, failures)
        });
    }
    // The schedule runs on its own thread: thread::sleep wakes within tens of microseconds,
    // where tokio's timer wheel would add up to a millisecond to every send.
    let interval = 1.0 / rate;
    let scheduler = std::thread::spawn(move || {
        for i in 0..count {
            let at = start + Duration::from_secs_f64(i as f64 * interval);
            let now = Instant::now();
            if at > now {
                std::thread::sleep(at - now);
            }
            if tx.send((i as usize, at)).is_err() {
                break;
            }
        }
    });
    let deadline = length + REQUEST_TIMEOUT + Duration::from_secs(10);
    let mut latencies = Vec::with_capacity(count as usize);
    let mut failures = BTreeMap::new();
    let collect = async {
        while let Some(done) = workers.join_next().await {
            let (l, f) = done?;
            latencies.extend(l);
            for (k, n) in f {
                *failures.entry(k).or_insert(0) += n;
            }
        }
        anyhow::Ok(())
    };
    let finished = tokio::time::timeout(deadline, collect).await;
    workers.abort_all();
    let _ = tokio::task::spawn_blocking(move || scheduler.join()).await;
    finished.context("the open-loop run did not finish in time")??;
    Ok(Round {
        latencies,
        failures,
    })
}
