//! `hostile`: clients that stall, trickle or send odd bodies, against the api-server and
//! against nginx in front of the same 3 data servers, while ordinary clients keep a steady
//! load (issue 15). What counts: the ordinary clients are still served (no failures, p99
//! about as without the hostiles) and no healthy data server is ejected for a client's fault.
//!
//! Each side runs twice: ordinary load alone (the baseline), then ordinary load with the
//! hostile clients. Hostile clients are raw sockets (no HTTP library sends these requests),
//! all to 127.0.0.1, and each stops by itself after [`HOSTILE_MAX_LIFE`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::json;
use testkit::NsqCluster;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::client::{OpenLoop, WHOAMI, get_request, http_request, open_loop, put_request};
use super::stack::{Nginx, start_api, start_data_servers, stop_stack, whoami_count};
use super::{BenchArgs, Report, release_bins, round3};

/// `--seconds` of this scenario when not given: how long the hostiles run on each side (the
/// baseline runs as long).
pub const DEFAULT_SECONDS: u64 = 30;
/// Ordinary requests per second (open loop: latency runs from the scheduled send time).
const ORDINARY_RATE: f64 = 300.0;
/// Kept-alive connections of the ordinary clients.
const ORDINARY_CONNECTIONS: usize = 16;
/// One ordinary request in this many is a small PUT; the others GET /whoami.
const PUT_EVERY: usize = 4;
/// Size of an ordinary PUT's body.
const PUT_BYTES: usize = 64;
/// New connections per second of each hostile pattern.
const HOSTILE_RATE_PER_PATTERN: f64 = 5.0;
/// A hostile client gives up after this long without a final answer.
const HOSTILE_MAX_LIFE: Duration = Duration::from_secs(120);
/// After the hostile window, how long the hostiles still running get to be answered before
/// they are closed (and counted as `open_at_end`): longer than the api-server's
/// `proxy.try_timeout` (10 s), so that every ejection it causes is counted.
const HOSTILE_GRACE: Duration = Duration::from_secs(15);
/// nginx's upstream parameters: eject after one failure, for about our `balancer.base_ejection`.
const NGINX_SERVER_PARAMS: &str = "max_fails=1 fail_timeout=1s";
/// What nginx logs (at `warn`) when `max_fails` takes a server out.
const NGINX_EJECTION_LINE: &str = "upstream server temporarily disabled";
/// The api-server's ejection counter on its admin `/metrics`.
const API_EJECTIONS: &str = "api_proxy_ejections_total";
/// Where the hostile clients send their bodies (the data server reads the whole body).
const UPLOAD: &str = "/upload";

/// 3 data servers behind the api-server and behind nginx; ordinary load without, then with,
/// hostile clients on each side in turn.
pub async fn hostile(a: &BenchArgs) -> Result<Report> {
    let bins = release_bins(&["api-server", "data-server"])?;
    let window = Duration::from_secs(a.seconds.max(1));
    let cluster = NsqCluster::start(1).await?;
    let data = start_data_servers(&bins, &cluster, &[None, None, None]).await?;
    let upstreams: Vec<SocketAddr> = data.iter().map(|d| d.listen_addr()).collect();
    let api = start_api(&bins, &cluster).await?;
    let mut nginx = Nginx::start(&upstreams, NGINX_SERVER_PARAMS).await?;

    let ours = run_side(api.proxy(), Ejections::Api(api.admin()), &upstreams, window).await;
    let ours = ours.with_context(|| format!("api-server side; its log:\n{}", api.log()))?;
    let theirs = run_side(nginx.addr, Ejections::Nginx(&nginx), &upstreams, window).await?;

    nginx.stop();
    stop_stack(api, data, cluster).await?;

    let mut r = Report::default();
    r.add("seconds", a.seconds)
        .add("ordinary_req_per_s", ORDINARY_RATE)
        .add("ordinary_connections", ORDINARY_CONNECTIONS)
        .add(
            "ordinary_mix",
            format!("GET {WHOAMI}, 1 in {PUT_EVERY} a {PUT_BYTES} B PUT /kv/<key>"),
        )
        .add("hostile_req_per_s_per_pattern", HOSTILE_RATE_PER_PATTERN)
        .add("nginx_upstream_params", NGINX_SERVER_PARAMS);
    for (name, side) in [("api_server", &ours), ("nginx", &theirs)] {
        side.add_to(&mut r, name);
    }
    r.ratio = Some(theirs.p99_ratio() / ours.p99_ratio());
    Ok(r)
}

/// How a side's ejections are counted.
enum Ejections<'a> {
    /// `api_proxy_ejections_total` on this admin address.
    Api(SocketAddr),
    /// "upstream server temporarily disabled" lines in nginx's error log.
    Nginx(&'a Nginx),
}

impl Ejections<'_> {
    async fn count(&self) -> Result<u64> {
        match self {
            Ejections::Api(admin) => api_ejections(*admin).await,
            Ejections::Nginx(nginx) => {
                Ok(nginx.error_log().matches(NGINX_EJECTION_LINE).count() as u64)
            }
        }
    }
}

/// Sum of `api_proxy_ejections_total` (every label set) on the api-server's admin `/metrics`.
async fn api_ejections(admin: SocketAddr) -> Result<u64> {
    let req = format!("GET /metrics HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n");
    let (mut conn, mut buf) = (None, Vec::new());
    let status = tokio::time::timeout(
        Duration::from_secs(5),
        http_request(admin, &mut conn, req.as_bytes(), &mut buf),
    )
    .await
    .context("GET /metrics on the admin listener timed out")??;
    if status != 200 {
        bail!("GET /metrics on the admin listener answered {status}");
    }
    let text = String::from_utf8_lossy(&buf);
    let mut total = 0.0;
    for line in text.lines().filter(|l| l.starts_with(API_EJECTIONS)) {
        let value = line.rsplit(' ').next().unwrap_or_default();
        total += value
            .parse::<f64>()
            .with_context(|| format!("expected a number in {line:?}"))?;
    }
    Ok(total as u64)
}

/// What one side measured.
struct Side {
    without: OpenLoop,
    with: OpenLoop,
    ejections: u64,
    /// Each data server's share of the ordinary GETs while the hostiles ran (a third each
    /// when none is ejected).
    shares: Vec<f64>,
    /// Per pattern, the hostile clients' outcomes (see [`Outcome`]) and how many had each.
    answers: BTreeMap<&'static str, BTreeMap<String, u64>>,
}

impl Side {
    /// Ordinary p99 with hostiles / without.
    fn p99_ratio(&self) -> f64 {
        self.with.p99_ms / self.without.p99_ms.max(1e-3)
    }

    fn add_to(&self, r: &mut Report, side: &str) {
        let k = |figure: &str| format!("{side}_{figure}");
        r.add(&k("failed_without_hostiles"), self.without.errors)
            .add(&k("failed_with_hostiles"), self.with.errors)
            .add(&k("failures_with_hostiles"), json!(self.with.failures))
            .add(&k("ejections"), self.ejections)
            .add(&k("get_share_per_server_with_hostiles"), json!(self.shares))
            .add(&k("p99_without_ms"), round3(self.without.p99_ms))
            .add(&k("p99_with_ms"), round3(self.with.p99_ms))
            .add(&k("p99_ratio"), round3(self.p99_ratio()))
            .add(
                &k("samples"),
                format!("{}/{}", self.without.samples, self.with.samples),
            )
            .add(&k("hostile_answers"), json!(self.answers));
    }
}

/// Baseline, then the same load with hostile clients, against one proxy in front of `data`.
async fn run_side(
    addr: SocketAddr,
    ejections: Ejections<'_>,
    data: &[SocketAddr],
    window: Duration,
) -> Result<Side> {
    let requests = ordinary_requests(addr);
    let before = ejections.count().await?;
    let without = open_loop(addr, ORDINARY_RATE, window, ORDINARY_CONNECTIONS, &requests).await?;
    let gets_before = whoami_counts(data).await?;
    let hostiles = tokio::spawn(run_hostiles(addr, window));
    let with = open_loop(addr, ORDINARY_RATE, window, ORDINARY_CONNECTIONS, &requests).await;
    let gets_after = whoami_counts(data).await;
    // Joined before `?`, so that no hostile client outlives this side.
    let answers = hostiles.await.context("the hostile clients' task")?;
    let with = with?;
    let gets: Vec<f64> = gets_after?
        .iter()
        .zip(&gets_before)
        .map(|(after, before)| after - before)
        .collect();
    let total = gets.iter().sum::<f64>().max(1.0);
    let shares = gets.iter().map(|n| round3(n / total)).collect();
    let ejections = ejections.count().await?.saturating_sub(before);
    Ok(Side {
        without: OpenLoop::merge(vec![without])?,
        with: OpenLoop::merge(vec![with])?,
        ejections,
        shares,
        answers,
    })
}

/// `GET /whoami` served so far by each data server.
async fn whoami_counts(data: &[SocketAddr]) -> Result<Vec<f64>> {
    let mut counts = Vec::new();
    for addr in data {
        counts.push(whoami_count(*addr).await?);
    }
    Ok(counts)
}

/// The ordinary clients' requests, sent in turn: GET /whoami, and every [`PUT_EVERY`]th a
/// small PUT to one of a few keys.
fn ordinary_requests(addr: SocketAddr) -> Arc<[Vec<u8>]> {
    let body = vec![b'v'; PUT_BYTES];
    (0..PUT_EVERY * 25)
        .map(|i| {
            if i % PUT_EVERY == PUT_EVERY - 1 {
                put_request(addr, &format!("/kv/ordinary-{}", i % 10), &body)
            } else {
                get_request(addr, WHOAMI)
            }
        })
        .collect::<Vec<_>>()
        .into()
}

/// The hostile request patterns of issue 15.
#[derive(Clone, Copy, Debug)]
enum Pattern {
    /// Content-Length: 100, 10 bytes sent, then silence.
    StalledBody,
    /// `Expect: 100-continue`, Content-Length: 100, and no body at all.
    ExpectWithoutBody,
    /// A valid 40-byte upload at 1 byte/s.
    Trickle,
    /// A chunked body whose trailer line has no colon.
    BadTrailer,
    /// A chunked body with six 4 KB chunk extensions.
    LongExtensions,
}

/// One step of a hostile client's script.
enum Step {
    Send(Vec<u8>),
    Pause(Duration),
}

impl Pattern {
    const ALL: [Pattern; 5] = [
        Pattern::StalledBody,
        Pattern::ExpectWithoutBody,
        Pattern::Trickle,
        Pattern::BadTrailer,
        Pattern::LongExtensions,
    ];

    fn name(self) -> &'static str {
        match self {
            Pattern::StalledBody => "stalled_body",
            Pattern::ExpectWithoutBody => "expect_without_body",
            Pattern::Trickle => "trickle",
            Pattern::BadTrailer => "bad_trailer",
            Pattern::LongExtensions => "long_extensions",
        }
    }

    /// What the client writes; after the last step it keeps the connection open (no FIN) and
    /// waits for the answer.
    fn script(self, addr: SocketAddr) -> Vec<Step> {
        let head =
            |headers: &str| format!("PUT {UPLOAD} HTTP/1.1\r\nHost: {addr}\r\n{headers}\r\n");
        let chunked = head("Transfer-Encoding: chunked\r\n");
        match self {
            Pattern::StalledBody => {
                vec![Step::Send(
                    format!("{}{}", head("Content-Length: 100\r\n"), "x".repeat(10)).into_bytes(),
                )]
            }
            Pattern::ExpectWithoutBody => vec![Step::Send(
                head("Content-Length: 100\r\nExpect: 100-continue\r\n").into_bytes(),
            )],
            Pattern::Trickle => {
                let mut steps = vec![Step::Send(head("Content-Length: 40\r\n").into_bytes())];
                for _ in 0..40 {
                    steps.push(Step::Pause(Duration::from_secs(1)));
                    steps.push(Step::Send(b"x".to_vec()));
                }
                steps
            }
            Pattern::BadTrailer => vec![Step::Send(
                format!("{chunked}5\r\nhello\r\n0\r\nbad trailer\r\n\r\n").into_bytes(),
            )],
            Pattern::LongExtensions => {
                let chunk = format!("5;ext={}\r\nhello\r\n", "a".repeat(4096));
                vec![Step::Send(
                    format!("{chunked}{}0\r\n\r\n", chunk.repeat(6)).into_bytes(),
                )]
            }
        }
    }
}

/// How a hostile client ended: the final status (after any `100` interim answer, e.g.
/// `100+408`), `closed` (the peer closed without a final answer), `reset`, `no_answer` (none
/// within [`HOSTILE_MAX_LIFE`]), `connect_error`, or `open_at_end` (still waiting when the run
/// ended, [`HOSTILE_GRACE`] after the window; e.g. `100+open_at_end`).
type Outcome = String;

/// Every pattern at [`HOSTILE_RATE_PER_PATTERN`] for `window` (staggered, so that the
/// patterns' connections do not arrive together), then up to [`HOSTILE_GRACE`] for the
/// answers; the clients still waiting then are closed. Returns the outcomes per pattern.
async fn run_hostiles(
    addr: SocketAddr,
    window: Duration,
) -> BTreeMap<&'static str, BTreeMap<Outcome, u64>> {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut clients = tokio::task::JoinSet::new();
    let period =
        Duration::from_secs_f64(1.0 / (HOSTILE_RATE_PER_PATTERN * Pattern::ALL.len() as f64));
    let mut tick = tokio::time::interval(period);
    let end = Instant::now() + window;
    for pattern in Pattern::ALL.iter().cycle() {
        tick.tick().await;
        if Instant::now() >= end {
            break;
        }
        let (pattern, stopped) = (*pattern, stopped.clone());
        clients.spawn(async move {
            let outcome = hostile_client(addr, pattern.script(addr), stopped).await;
            (pattern.name(), outcome)
        });
    }
    let mut answers: BTreeMap<&'static str, BTreeMap<Outcome, u64>> = BTreeMap::new();
    let mut record = |done: Option<Result<(&'static str, Outcome), _>>| match done {
        Some(Ok((name, outcome))) => {
            *answers.entry(name).or_default().entry(outcome).or_default() += 1;
            true
        }
        Some(Err(e)) => {
            *answers
                .entry("task_failed")
                .or_default()
                .entry(format!("{e}"))
                .or_default() += 1;
            true
        }
        None => false,
    };
    let grace = tokio::time::sleep(HOSTILE_GRACE);
    tokio::pin!(grace);
    loop {
        tokio::select! {
            done = clients.join_next() => if !record(done) { break },
            () = &mut grace => break,
        }
    }
    // Every client still waiting returns `…open_at_end` at once and closes its connection.
    let _ = stop.send(true);
    while record(clients.join_next().await) {}
    answers
}

/// One hostile client: plays `script` on a new connection while reading the answer, until a
/// final answer, [`HOSTILE_MAX_LIFE`], or `stop`.
async fn hostile_client(
    addr: SocketAddr,
    script: Vec<Step>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Outcome {
    let Ok(stream) = TcpStream::connect(addr).await else {
        return "connect_error".into();
    };
    let (mut reader, mut writer) = stream.into_split();
    let write = async move {
        for step in script {
            match step {
                Step::Send(bytes) => {
                    if writer.write_all(&bytes).await.is_err() {
                        break;
                    }
                }
                Step::Pause(d) => tokio::time::sleep(d).await,
            }
        }
        // Keep the write side open: a FIN would tell the peer the body ended.
        std::future::pending::<()>().await;
    };
    let mut interim = String::new();
    let read = tokio::time::timeout(HOSTILE_MAX_LIFE, final_status(&mut reader, &mut interim));
    tokio::select! {
        outcome = read => match outcome {
            Ok(outcome) => format!("{interim}{outcome}"),
            Err(_) => format!("{interim}no_answer"),
        },
        _ = stop.wait_for(|stop| *stop) => format!("{interim}open_at_end"),
        () = write => unreachable!("the writer never returns"),
    }
}

/// Reads response heads until a final (non-1xx) one and returns its status; interim ones
/// are appended to `interim` as `100+`.
async fn final_status(reader: &mut (impl AsyncRead + Unpin), interim: &mut String) -> Outcome {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            match reader.read(&mut chunk).await {
                Ok(0) => return "closed".into(),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(_) => return "reset".into(),
            }
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        let status = head.split(' ').nth(1).and_then(|s| s.parse::<u16>().ok());
        match status {
            Some(s) if (100..200).contains(&s) => {
                interim.push_str(&format!("{s}+"));
                buf.drain(..end + 4);
            }
            Some(s) => return s.to_string(),
            None => return "malformed".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn final_status_skips_interim_answers() {
        let mut answer: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\n\r\n";
        let mut interim = String::new();
        assert_eq!(final_status(&mut answer, &mut interim).await, "408");
        assert_eq!(interim, "100+");
        let mut closed: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";
        let mut interim = String::new();
        assert_eq!(final_status(&mut closed, &mut interim).await, "closed");
        assert_eq!(interim, "100+");
    }

    #[test]
    fn long_extensions_are_six_4k_chunks() {
        let addr: SocketAddr = ([127, 0, 0, 1], 1).into();
        let Step::Send(bytes) = &Pattern::LongExtensions.script(addr)[0] else {
            panic!("expected one send");
        };
        let text = String::from_utf8_lossy(bytes);
        assert_eq!(
            text.matches(&format!(";ext={}\r\nhello\r\n", "a".repeat(4096)))
                .count(),
            6
        );
        assert!(text.ends_with("hello\r\n0\r\n\r\n"));
    }
}
