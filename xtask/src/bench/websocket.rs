//! `websocket`: messages echoed through the api-server's upgrade tunnels, against nginx in front of the same data
//! server (issue 16).
//!
//! Every client is a closed loop: it sends one 64-byte binary message to the data server's `/ws` echo and waits for
//! it to come back before sending the next, so messages per second and round-trip latency measure the hop. The
//! sides take turns in one-second rounds over sockets opened once (nginx and the api-server alternately first), so load that comes and goes on the shared
//! machine falls on both alike. Everything listens on 127.0.0.1, and every child process is stopped when the
//! scenario returns, on error too (the handles stop their processes when dropped).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::{SinkExt, StreamExt};
use testkit::NsqCluster;
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::stack::{Nginx, start_api_for, start_data_servers, stop_stack};
use super::{BenchArgs, Report, TICKS_PER_S, cpu_ticks, release_bins, round3, tree_cpu_ticks};

/// The data server's echo endpoint.
const PATH: &str = "/ws";
/// Concurrent sockets per side unless `--count` says otherwise.
const SOCKETS: usize = 64;
/// Size of every message.
const MESSAGE_BYTES: usize = 64;
/// Length of one round; the sides alternate, `--seconds` rounds each.
const ROUND: Duration = Duration::from_secs(1);
/// One echo not back after this long counts as an error (and that socket is not used again).
const ECHO_TIMEOUT: Duration = Duration::from_secs(2);
/// Connecting (TCP and the upgrade) gives up after this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// One data server; the api-server and nginx in front of it; `--count` (64) closed-loop WebSocket clients per side.
pub async fn websocket(a: &BenchArgs) -> Result<Report> {
    let bins = release_bins(&["api-server", "data-server"])?;
    let sockets = a.count.unwrap_or(SOCKETS).max(1);
    let cluster = NsqCluster::start(1).await?;
    let data = start_data_servers(&bins, &cluster, &[None]).await?;
    let upstream = data[0].listen_addr();
    let mut api = start_api_for(&bins, &cluster, 1).await?;
    let mut nginx = Nginx::start_upgrades(&[upstream]).await?;

    let api_pid = api.process().pid().context("api-server pid")?;
    let nginx_pid = nginx.pid()?;
    let mut sides = [
        Side::connect("direct", upstream, sockets, None).await?,
        Side::connect("nginx", nginx.addr, sockets, Some(Cpu::Tree(nginx_pid))).await?,
        Side::connect("api_server", api.proxy(), sockets, Some(Cpu::Own(api_pid))).await?,
    ];
    // Direct first in every round; nginx and the api-server take turns at going first (ABBA), so neither always
    // runs right after the other.
    for round in 0..a.seconds.max(1) {
        let order = if round % 2 == 0 { [0, 1, 2] } else { [0, 2, 1] };
        for i in order {
            sides[i].round().await?;
        }
    }
    for side in &mut sides {
        side.close().await;
    }
    let api_log = api.log();
    let [direct, via_nginx, via_api] = sides;

    nginx.stop();
    stop_stack(api, data, cluster).await?;

    for side in [&direct, &via_nginx, &via_api] {
        if side.latencies_us.is_empty() {
            bail!(
                "no message echoed through {} ({} errors); api-server log:\n{api_log}",
                side.name,
                side.errors
            );
        }
    }
    let mut r = Report::default();
    r.add("seconds", a.seconds)
        .add("sockets", sockets)
        .add("message_bytes", MESSAGE_BYTES)
        .add("path", PATH);
    for side in [&direct, &via_nginx, &via_api] {
        side.add_to(&mut r);
    }
    r.ratio = Some(via_api.messages_per_s() / via_nginx.messages_per_s());
    Ok(r)
}

/// Whose CPU time a side charges to the proxy.
#[derive(Clone, Copy)]
enum Cpu {
    /// This process alone (the api-server).
    Own(u32),
    /// This process and its children (nginx's master and workers).
    Tree(u32),
}

impl Cpu {
    fn ticks(self) -> Result<u64> {
        match self {
            Cpu::Own(pid) => cpu_ticks(pid),
            Cpu::Tree(pid) => tree_cpu_ticks(pid),
        }
    }
}

/// One target's sockets and what they measured so far.
struct Side {
    name: &'static str,
    /// Open sockets (one that failed is dropped).
    sockets: Vec<Socket>,
    /// Round-trip times of the echoed messages, in microseconds.
    latencies_us: Vec<u32>,
    /// Time spent in rounds.
    busy: Duration,
    errors: u64,
    cpu: Option<Cpu>,
    cpu_ticks: u64,
}

impl Side {
    /// `count` WebSocket connections to `ws://addr/ws`, without Nagle's delay on the client's sockets.
    async fn connect(
        name: &'static str,
        addr: SocketAddr,
        count: usize,
        cpu: Option<Cpu>,
    ) -> Result<Side> {
        let url = format!("ws://{addr}{PATH}");
        let mut sockets = Vec::with_capacity(count);
        for _ in 0..count {
            let connecting = tokio_tungstenite::connect_async_with_config(&url, None, true);
            let (socket, response) = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
                .await
                .with_context(|| format!("the upgrade to {url} ({name}) did not answer in time"))?
                .with_context(|| format!("upgrading to {url} ({name})"))?;
            if response.status() != 101 {
                bail!("{url} ({name}) answered {}", response.status());
            }
            sockets.push(socket);
        }
        Ok(Side {
            name,
            sockets,
            latencies_us: Vec::new(),
            busy: Duration::ZERO,
            errors: 0,
            cpu,
            cpu_ticks: 0,
        })
    }

    /// Every socket in a closed loop for one [`ROUND`]; the round lasts until the last echo is back.
    async fn round(&mut self) -> Result<()> {
        let cpu0 = self.cpu.map(Cpu::ticks).transpose()?;
        let started = Instant::now();
        let end = started + ROUND;
        let mut clients = JoinSet::new();
        for (i, socket) in self.sockets.drain(..).enumerate() {
            clients.spawn(closed_loop(socket, i, end));
        }
        while let Some(done) = clients.join_next().await {
            let (socket, latencies, failed) = done.context("a WebSocket client task")?;
            self.latencies_us.extend(latencies);
            if failed {
                self.errors += 1;
            } else {
                self.sockets.push(socket);
            }
        }
        self.busy += started.elapsed();
        if let (Some(cpu), Some(cpu0)) = (self.cpu, cpu0) {
            self.cpu_ticks += cpu.ticks()? - cpu0;
        }
        if self.sockets.is_empty() {
            bail!("every WebSocket through {} failed", self.name);
        }
        Ok(())
    }

    /// Closes every socket (a close frame, then waits briefly for the server's), so that the proxies see clients
    /// leave rather than a drain.
    async fn close(&mut self) {
        for mut socket in self.sockets.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                socket.close(None).await?;
                while socket.next().await.is_some() {}
                anyhow::Ok(())
            })
            .await;
        }
    }

    fn messages_per_s(&self) -> f64 {
        self.latencies_us.len() as f64 / self.busy.as_secs_f64().max(1e-9)
    }

    fn add_to(&self, r: &mut Report) {
        let mut sorted = self.latencies_us.clone();
        sorted.sort_unstable();
        let pct = |p: f64| {
            let i = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
            round3(f64::from(sorted[i]) / 1000.0)
        };
        let k = |figure: &str| format!("{}_{figure}", self.name);
        r.add(&k("msg_per_s"), self.messages_per_s().round())
            .add(&k("p50_ms"), pct(0.50))
            .add(&k("p99_ms"), pct(0.99))
            .add(&k("errors"), self.errors);
        if self.cpu.is_some() {
            let us = self.cpu_ticks as f64 / TICKS_PER_S * 1e6 / sorted.len().max(1) as f64;
            r.add(&k("cpu_us_per_msg"), (us * 10.0).round() / 10.0);
        }
    }
}

/// Sends a 64-byte message and waits for its echo, again and again until `end`. Returns the socket, the round-trip
/// times in microseconds, and whether the socket failed (an error, a wrong echo, or [`ECHO_TIMEOUT`]).
async fn closed_loop(mut socket: Socket, client: usize, end: Instant) -> (Socket, Vec<u32>, bool) {
    let mut latencies = Vec::new();
    let mut payload = vec![0u8; MESSAGE_BYTES];
    // The client's number and a sequence number in every message, so an echo that is not ours is noticed.
    payload[..8].copy_from_slice(&(client as u64).to_le_bytes());
    let mut seq: u64 = 0;
    while Instant::now() < end {
        seq += 1;
        payload[8..16].copy_from_slice(&seq.to_le_bytes());
        let sent = Instant::now();
        let echoed = tokio::time::timeout(ECHO_TIMEOUT, echo(&mut socket, &payload)).await;
        if !matches!(echoed, Ok(Ok(true))) {
            return (socket, latencies, true);
        }
        let us = sent.elapsed().as_micros();
        latencies.push(u32::try_from(us).unwrap_or(u32::MAX));
    }
    (socket, latencies, false)
}

/// One message out and its echo back: `Ok(true)` when the echo is the same bytes.
async fn echo(socket: &mut Socket, payload: &[u8]) -> Result<bool> {
    socket
        .send(Message::Binary(payload.to_vec().into()))
        .await?;
    loop {
        match socket.next().await {
            Some(Ok(Message::Binary(bytes))) => return Ok(bytes[..] == *payload),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            Some(Ok(other)) => bail!("expected the binary echo, found {other:?}"),
            Some(Err(e)) => return Err(e.into()),
            None => bail!("the WebSocket closed"),
        }
    }
}
