//! `NsqCluster`: one nsqlookupd and N nsqd on free loopback ports, each nsqd with its own data
//! path, registered with the lookupd; faults (kill, stop, restart, freeze, thaw) on demand.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Result, bail};
use nix::sys::signal::Signal;

use crate::bins::nsq_bin;
use crate::poll::try_eventually;
use crate::process::ManagedProcess;
use crate::stats::{LookupProducer, NsqdStats, Producers, null_lists_to_empty, unwrap_legacy};

/// How long a daemon may take to answer `/ping` after start.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a graceful stop may take before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts to start a daemon when a freshly picked port turned out to be taken.
const PORT_RETRIES: usize = 4;
/// How long one `GET /ping` may take while waiting for a process to answer.
const PING_TIMEOUT: Duration = Duration::from_millis(500);

/// A free TCP port on 127.0.0.1 (bound, then released for the child to take).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding 127.0.0.1:0")
}

/// A loopback port that refuses every connection and that nothing else can take while this
/// lives: the socket is bound but never listens. (A merely free port can be taken by a
/// process of a test running in parallel, which would then answer.)
#[derive(Debug)]
pub struct RefusingPort {
    socket: tokio::net::TcpSocket,
}

impl RefusingPort {
    /// Binds a fresh one.
    pub fn new() -> Self {
        let socket = tokio::net::TcpSocket::new_v4().expect("creating a TCP socket");
        socket
            .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .expect("binding 127.0.0.1:0");
        Self { socket }
    }

    /// Its address, `127.0.0.1:PORT`.
    pub fn addr(&self) -> SocketAddr {
        self.socket
            .local_addr()
            .expect("a bound socket has an address")
    }
}

impl Default for RefusingPort {
    fn default() -> Self {
        Self::new()
    }
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Options for [`NsqCluster::start_with`].
#[derive(Debug, Clone, Default)]
pub struct ClusterOptions {
    /// Number of nsqd.
    pub nsqd: usize,
    /// Extra command-line flags for every nsqd (e.g. `--mem-queue-size=0`, TLS or auth flags).
    pub nsqd_args: Vec<String>,
    /// Also give every nsqd an HTTPS port (needed when TLS flags are set).
    pub https: bool,
    /// Use NSQ's standard ports (nsqlookupd 4160/4161, nsqd i on 4150+100i/4151+100i,
    /// nsqadmin 4171) instead of free ones, failing clearly when one is taken.
    pub standard_ports: bool,
}

/// NSQ's standard ports for nsqd `i`: (tcp, http, https).
fn standard_nsqd_ports(i: usize) -> (u16, u16, u16) {
    let base = 4150 + 100 * i as u16;
    (base, base + 1, base + 2)
}

/// Fails with a clear message when `port` on 127.0.0.1 is taken.
fn ensure_free(port: u16, what: &str) -> Result<()> {
    std::net::TcpListener::bind(("127.0.0.1", port))
        .map(drop)
        .map_err(|e| {
            anyhow::anyhow!(
                "port {port} ({what}) on 127.0.0.1 is not available ({e}); stop whatever uses it \
             (another `cargo xtask up`, or a local nsqd?) and try again"
            )
        })
}

/// A free port, or the standard one when asked (checked to be free).
fn pick(standard: Option<u16>, what: &str) -> Result<u16> {
    match standard {
        Some(p) => ensure_free(p, what).map(|()| p),
        None => Ok(free_port()),
    }
}

/// One nsqd of the cluster.
#[derive(Debug)]
pub struct Nsqd {
    /// TCP (protocol) address.
    pub tcp: SocketAddr,
    /// HTTP address.
    pub http: SocketAddr,
    /// HTTPS address, when asked for.
    pub https: Option<SocketAddr>,
    /// Its data path.
    pub data_path: PathBuf,
    process: ManagedProcess,
}

/// A running NSQ cluster. Dropping it kills every process it started.
#[derive(Debug)]
pub struct NsqCluster {
    // Declared first so that processes die before their directory goes.
    lookupd: ManagedProcess,
    nsqds: Vec<Nsqd>,
    admin: Option<(SocketAddr, ManagedProcess)>,
    standard_ports: bool,
    lookupd_tcp: SocketAddr,
    lookupd_http: SocketAddr,
    http: reqwest::Client,
    dir: tempfile::TempDir,
}

impl NsqCluster {
    /// One nsqlookupd and `nsqd` nsqd, all answering and registered.
    pub async fn start(nsqd: usize) -> Result<Self> {
        Self::start_with(ClusterOptions {
            nsqd,
            ..Default::default()
        })
        .await
    }

    /// Like [`NsqCluster::start`], with options.
    pub async fn start_with(opts: ClusterOptions) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("nsq-cluster-").tempdir()?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .no_proxy()
            .build()?;
        let lookupd_bin = nsq_bin("nsqlookupd")?;
        let mut last_err = None;
        let mut started = None;
        let tries = if opts.standard_ports { 1 } else { PORT_RETRIES };
        for _ in 0..tries {
            let std_ports = opts.standard_ports;
            let tcp = loopback(pick(std_ports.then_some(4160), "nsqlookupd TCP")?);
            let web = loopback(pick(std_ports.then_some(4161), "nsqlookupd HTTP")?);
            let args = vec![
                format!("--tcp-address={tcp}"),
                format!("--http-address={web}"),
                "--broadcast-address=127.0.0.1".to_string(),
            ];
            let mut p = ManagedProcess::spawn(
                "nsqlookupd",
                &lookupd_bin,
                args,
                vec![],
                dir.path().join("nsqlookupd.log"),
            )?;
            match wait_ping(&http, &mut p, web).await {
                Ok(()) => {
                    started = Some((p, tcp, web));
                    break;
                }
                Err(e) => last_err = Some(e),
            }
        }
        let Some((lookupd, lookupd_tcp, lookupd_http)) = started else {
            return Err(last_err.unwrap_or_else(|| anyhow::anyhow!("nsqlookupd did not start")));
        };
        let mut cluster = Self {
            lookupd,
            nsqds: Vec::new(),
            admin: None,
            standard_ports: opts.standard_ports,
            lookupd_tcp,
            lookupd_http,
            http,
            dir,
        };
        for i in 0..opts.nsqd {
            let nsqd = cluster.spawn_nsqd(i, &opts).await?;
            cluster.nsqds.push(nsqd);
        }
        for i in 0..opts.nsqd {
            cluster.wait_registered(i).await?;
        }
        Ok(cluster)
    }

    async fn spawn_nsqd(&self, i: usize, opts: &ClusterOptions) -> Result<Nsqd> {
        let data_path = self.dir.path().join(format!("nsqd{i}"));
        std::fs::create_dir_all(&data_path)?;
        let bin = nsq_bin("nsqd")?;
        let mut last_err = None;
        let tries = if opts.standard_ports { 1 } else { PORT_RETRIES };
        for _ in 0..tries {
            let std_ports = opts.standard_ports.then(|| standard_nsqd_ports(i));
            let tcp = loopback(pick(std_ports.map(|p| p.0), &format!("nsqd{i} TCP"))?);
            let web = loopback(pick(std_ports.map(|p| p.1), &format!("nsqd{i} HTTP"))?);
            let https = match (opts.https, std_ports) {
                (false, _) => None,
                (true, s) => Some(loopback(pick(s.map(|p| p.2), &format!("nsqd{i} HTTPS"))?)),
            };
            let mut args = vec![
                format!("--tcp-address={tcp}"),
                format!("--http-address={web}"),
                "--broadcast-address=127.0.0.1".to_string(),
                format!("--lookupd-tcp-address={}", self.lookupd_tcp),
                format!("--data-path={}", data_path.display()),
            ];
            if let Some(https) = https {
                args.push(format!("--https-address={https}"));
            }
            args.extend(opts.nsqd_args.iter().cloned());
            let mut process = ManagedProcess::spawn(
                format!("nsqd{i}"),
                &bin,
                args,
                vec![],
                self.dir.path().join(format!("nsqd{i}.log")),
            )?;
            match wait_ping(&self.http, &mut process, web).await {
                Ok(()) => {
                    return Ok(Nsqd {
                        tcp,
                        http: web,
                        https,
                        data_path,
                        process,
                    });
                }
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow::anyhow!("nsqd{i} did not start")))
    }

    /// Waits until nsqlookupd's `/nodes` lists nsqd `i`.
    pub async fn wait_registered(&self, i: usize) -> Result<()> {
        let port = self.nsqds[i].tcp.port();
        let what = format!("nsqlookupd to list nsqd{i} ({})", self.nsqds[i].tcp);
        let this = self;
        try_eventually(START_TIMEOUT, &what, move || async move {
            let nodes = this.nodes().await;
            Ok(nodes
                .is_ok_and(|n| n.iter().any(|p| p.tcp_port == port))
                .then_some(()))
        })
        .await
    }

    /// Number of nsqd.
    pub fn len(&self) -> usize {
        self.nsqds.len()
    }

    /// Whether the cluster has no nsqd.
    pub fn is_empty(&self) -> bool {
        self.nsqds.is_empty()
    }

    /// nsqlookupd TCP address.
    pub fn lookupd_tcp(&self) -> SocketAddr {
        self.lookupd_tcp
    }

    /// nsqlookupd HTTP address.
    pub fn lookupd_http(&self) -> SocketAddr {
        self.lookupd_http
    }

    /// nsqd `i`.
    pub fn nsqd(&self, i: usize) -> &Nsqd {
        &self.nsqds[i]
    }

    /// TCP address of nsqd `i`.
    pub fn nsqd_tcp(&self, i: usize) -> SocketAddr {
        self.nsqds[i].tcp
    }

    /// HTTP address of nsqd `i`.
    pub fn nsqd_http(&self, i: usize) -> SocketAddr {
        self.nsqds[i].http
    }

    /// TCP addresses of every nsqd.
    pub fn nsqd_tcp_addresses(&self) -> Vec<SocketAddr> {
        self.nsqds.iter().map(|n| n.tcp).collect()
    }

    /// Directory holding logs and data paths.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// nsqlookupd's pid, while it runs.
    pub fn lookupd_pid(&self) -> Option<u32> {
        self.lookupd.pid()
    }

    /// nsqd `i`'s pid, while it runs.
    pub fn nsqd_pid(&self, i: usize) -> Option<u32> {
        self.nsqds[i].process.pid()
    }

    /// nsqadmin's pid, once started and while it runs.
    pub fn nsqadmin_pid(&self) -> Option<u32> {
        self.admin.as_ref().and_then(|(_, p)| p.pid())
    }

    /// Pids of every running child (lookupd, nsqd, nsqadmin).
    pub fn pids(&self) -> Vec<u32> {
        std::iter::once(&self.lookupd)
            .chain(self.nsqds.iter().map(|n| &n.process))
            .chain(self.admin.iter().map(|(_, p)| p))
            .filter_map(ManagedProcess::pid)
            .collect()
    }

    /// (name, log file) of every process of the cluster.
    pub fn log_paths(&self) -> Vec<(String, PathBuf)> {
        std::iter::once(&self.lookupd)
            .chain(self.nsqds.iter().map(|n| &n.process))
            .chain(self.admin.iter().map(|(_, p)| p))
            .map(|p| (p.name().to_string(), p.log_path().to_path_buf()))
            .collect()
    }

    /// The log of nsqd `i` so far.
    pub fn nsqd_log(&self, i: usize) -> String {
        self.nsqds[i].process.log()
    }

    /// The depth that nsqd `i` has made durable for a topic's disk queue (`channel: None`) or a
    /// channel's: the first line of the queue's metadata file, `None` while the file does not
    /// exist yet (go-diskqueue writes it only at its first sync).
    ///
    /// This, not `/stats`, is what a SIGKILL keeps: `/stats` counts a message once it is in the
    /// queue's data file, but the metadata (how far it is written and read) is synced after that,
    /// and a message the topic has handed to a channel is gone from the topic's metadata before
    /// it is in the channel's. A kill between the two loses it inside nsqd.
    pub fn durable_depth(&self, i: usize, topic: &str, channel: Option<&str>) -> Option<u64> {
        let name = match channel {
            Some(c) => format!("{topic}:{c}.diskqueue.meta.dat"),
            None => format!("{topic}.diskqueue.meta.dat"),
        };
        let text = std::fs::read_to_string(self.nsqds[i].data_path.join(name)).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    /// SIGKILL nsqd `i` (a crash: in-memory messages are lost).
    pub fn kill(&mut self, i: usize) {
        self.nsqds[i].process.kill();
    }

    /// SIGTERM nsqd `i` and wait for it to exit (it flushes memory queues to disk).
    pub async fn stop(&mut self, i: usize) -> Result<()> {
        let status = self.nsqds[i].process.terminate(STOP_TIMEOUT).await?;
        if !status.success() {
            bail!("nsqd{i} exited with {status} on SIGTERM");
        }
        Ok(())
    }

    /// Starts nsqd `i` again on the same ports and data path; waits until it answers and
    /// nsqlookupd lists it.
    pub async fn restart(&mut self, i: usize) -> Result<()> {
        let web = self.nsqds[i].http;
        // The old socket may linger briefly: started again until the port is ours.
        restart_until_ping(&self.http, &mut self.nsqds[i].process, web).await?;
        self.wait_registered(i).await
    }

    /// SIGSTOP nsqd `i`: its sockets stay open but nothing answers (a hung node). Returns once
    /// the kernel reports every thread stopped (a signal is delivered asynchronously).
    pub fn freeze(&self, i: usize) -> Result<()> {
        let p = &self.nsqds[i].process;
        p.signal(Signal::SIGSTOP)?;
        p.wait_stopped(true)
    }

    /// SIGCONT nsqd `i`; returns once it runs again.
    pub fn thaw(&self, i: usize) -> Result<()> {
        let p = &self.nsqds[i].process;
        p.signal(Signal::SIGCONT)?;
        p.wait_stopped(false)
    }

    /// SIGKILL the nsqlookupd.
    pub fn kill_lookupd(&mut self) {
        self.lookupd.kill();
    }

    /// Starts the nsqlookupd again on the same ports (nsqd re-register on their own).
    pub async fn restart_lookupd(&mut self) -> Result<()> {
        let web = self.lookupd_http;
        restart_until_ping(&self.http, &mut self.lookupd, web).await
    }

    /// Starts an nsqadmin pointed at the lookupd; returns its HTTP address.
    pub async fn start_nsqadmin(&mut self) -> Result<SocketAddr> {
        if let Some((addr, _)) = &self.admin {
            return Ok(*addr);
        }
        let bin = nsq_bin("nsqadmin")?;
        let mut last_err = None;
        let tries = if self.standard_ports { 1 } else { PORT_RETRIES };
        for _ in 0..tries {
            let web = loopback(pick(self.standard_ports.then_some(4171), "nsqadmin HTTP")?);
            let mut p = ManagedProcess::spawn(
                "nsqadmin",
                &bin,
                vec![
                    format!("--http-address={web}"),
                    format!("--lookupd-http-address={}", self.lookupd_http),
                ],
                vec![],
                self.dir.path().join("nsqadmin.log"),
            )?;
            match wait_ping(&self.http, &mut p, web).await {
                Ok(()) => {
                    self.admin = Some((web, p));
                    return Ok(web);
                }
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow::anyhow!("nsqadmin did not start")))
    }

    /// POST `body` to nsqd `i`'s HTTP `/pub`.
    pub async fn http_pub(&self, i: usize, topic: &str, body: impl Into<Vec<u8>>) -> Result<()> {
        let url = format!(
            "http://{}/pub?{}",
            self.nsqds[i].http,
            query(&[("topic", topic)])
        );
        let resp = self.http.post(url).body(body.into()).send().await?;
        if !resp.status().is_success() {
            bail!(
                "nsqd{i} /pub answered {}: {}",
                resp.status(),
                resp.text().await?
            );
        }
        Ok(())
    }

    /// Creates a topic (and optionally a channel) on nsqd `i`.
    pub async fn create_topic(&self, i: usize, topic: &str, channel: Option<&str>) -> Result<()> {
        let base = self.nsqds[i].http;
        self.post_ok(&format!(
            "http://{base}/topic/create?{}",
            query(&[("topic", topic)])
        ))
        .await?;
        if let Some(channel) = channel {
            self.post_ok(&format!(
                "http://{base}/channel/create?{}",
                query(&[("topic", topic), ("channel", channel)])
            ))
            .await?;
        }
        Ok(())
    }

    async fn post_ok(&self, url: &str) -> Result<()> {
        let resp = self.http.post(url).send().await?;
        if !resp.status().is_success() {
            bail!("POST {url} answered {}", resp.status());
        }
        Ok(())
    }

    /// nsqd `i`'s `/stats` for one topic (and channel).
    pub async fn stats(&self, i: usize, topic: &str, channel: Option<&str>) -> Result<NsqdStats> {
        let mut pairs = vec![("format", "json"), ("topic", topic)];
        pairs.extend(channel.map(|c| ("channel", c)));
        let url = format!("http://{}/stats?{}", self.nsqds[i].http, query(&pairs));
        let v: serde_json::Value = self.http.get(url).send().await?.json().await?;
        let mut v = unwrap_legacy(v);
        null_lists_to_empty(&mut v);
        Ok(serde_json::from_value(v)?)
    }

    /// nsqlookupd `/lookup?topic=` producers (empty when the topic is unknown).
    pub async fn lookup(&self, topic: &str) -> Result<Vec<LookupProducer>> {
        let resp = self
            .lookupd_get(&format!("/lookup?{}", query(&[("topic", topic)])))
            .await?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(Vec::new());
        }
        producers_of(resp).await
    }

    /// nsqlookupd `/nodes`: every registered nsqd.
    pub async fn nodes(&self) -> Result<Vec<LookupProducer>> {
        producers_of(self.lookupd_get("/nodes").await?).await
    }

    /// `GET path` on nsqlookupd's HTTP port, asking for the versioned (v1.0) answers.
    async fn lookupd_get(&self, path: &str) -> Result<reqwest::Response> {
        let url = format!("http://{}{path}", self.lookupd_http);
        let request = self.http.get(url);
        let versioned = request.header("Accept", "application/vnd.nsq; version=1.0");
        Ok(versioned.send().await?)
    }

    /// Whether nsqd `i` answers `/ping` within `timeout`.
    pub async fn ping(&self, i: usize, timeout: Duration) -> bool {
        ping_once(&self.http, self.nsqds[i].http, timeout).await
    }

    /// The shared HTTP client (5 s timeout).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }
}

async fn ping_once(http: &reqwest::Client, addr: SocketAddr, timeout: Duration) -> bool {
    let req = http
        .get(format!("http://{addr}/ping"))
        .timeout(timeout)
        .send();
    match req.await {
        Ok(r) if r.status().is_success() => true,
        // nsqd with `--tls-required=true` answers every plain HTTP request 403 TLS_REQUIRED: it is up.
        Ok(r) if r.status() == reqwest::StatusCode::FORBIDDEN => r
            .text()
            .await
            .is_ok_and(|body| body.contains("TLS_REQUIRED")),
        _ => false,
    }
}

/// Polls `GET /ping` until it answers, failing early (with the log) if the process exits.
async fn wait_ping(http: &reqwest::Client, p: &mut ManagedProcess, addr: SocketAddr) -> Result<()> {
    let what = format!("{} to answer http://{addr}/ping", p.name());
    let answered = try_eventually(START_TIMEOUT, &what, || {
        let exited = p.try_wait();
        let name = p.name().to_owned();
        async move {
            if let Some(status) = exited? {
                bail!("{name} exited with {status} during start-up");
            }
            Ok(ping_once(http, addr, PING_TIMEOUT).await.then_some(()))
        }
    })
    .await;
    answered.map_err(|e| {
        p.kill();
        anyhow::anyhow!("{e}; log:\n{}", p.log_tail(20))
    })
}

/// Starts `p` again on its old ports and polls `GET /ping` until it answers; a run that exits
/// (its port still held by the previous one) is started again.
async fn restart_until_ping(
    http: &reqwest::Client,
    p: &mut ManagedProcess,
    addr: SocketAddr,
) -> Result<()> {
    p.restart()?;
    let what = format!("{} to answer http://{addr}/ping", p.name());
    let answered = try_eventually(START_TIMEOUT, &what, || {
        let restarted = match p.try_wait() {
            Ok(Some(_)) => p.restart(),
            Ok(None) => Ok(()),
            Err(e) => Err(e),
        };
        async move {
            restarted?;
            Ok(ping_once(http, addr, PING_TIMEOUT).await.then_some(()))
        }
    })
    .await;
    answered.map_err(|e| {
        p.kill();
        anyhow::anyhow!("{e}; log:\n{}", p.log_tail(20))
    })
}

/// The producers in an nsqlookupd answer (`/lookup` or `/nodes`), failing on an error status.
async fn producers_of(resp: reqwest::Response) -> Result<Vec<LookupProducer>> {
    let v: serde_json::Value = resp.error_for_status()?.json().await?;
    Ok(serde_json::from_value::<Producers>(unwrap_legacy(v))?.producers)
}

/// A URL query string with each value encoded: an ephemeral topic's `#` would otherwise start a fragment.
fn query(pairs: &[(&str, &str)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}
