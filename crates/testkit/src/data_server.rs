//! `data-server` processes for tests: start one against given nsqd with config overrides, wait
//! until it listens, read its identity, signal or stop it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::Signal;
use crate::poll::retry;
use crate::process::ManagedProcess;
use crate::project::project_bin;

/// How to start a [`DataServer`].
#[derive(Debug, Clone)]
pub struct DataServerOptions {
    /// `announce.nsqd_tcp_addresses`.
    pub nsqd_tcp_addresses: Vec<String>,
    /// `announce.interval` (short by default, so tests run fast).
    pub interval: String,
    /// More `--set key=value` overrides, applied last.
    pub set: Vec<String>,
    /// Extra environment variables (e.g. `DATA_SERVER__ANNOUNCE__JITTER`, `RUST_LOG`).
    pub envs: Vec<(String, String)>,
    /// A `-c` config file.
    pub config_file: Option<PathBuf>,
    /// The binary (default: [`project_bin`]`("data-server")`; integration tests of the
    /// data-server crate pass `env!("CARGO_BIN_EXE_data-server")`).
    pub bin: Option<PathBuf>,
    /// How long to wait for `listening on ADDR`.
    pub startup_timeout: Duration,
}

impl DataServerOptions {
    /// Listen on `127.0.0.1:0`, announce to these nsqd every second.
    pub fn new<A: ToString>(nsqd_tcp_addresses: impl IntoIterator<Item = A>) -> Self {
        DataServerOptions {
            nsqd_tcp_addresses: nsqd_tcp_addresses
                .into_iter()
                .map(|a| a.to_string())
                .collect(),
            interval: "1s".into(),
            set: Vec::new(),
            envs: Vec::new(),
            config_file: None,
            bin: None,
            startup_timeout: Duration::from_secs(60),
        }
    }

    /// Adds a `--set key=value` override.
    pub fn set(mut self, key_value: impl Into<String>) -> Self {
        self.set.push(key_value.into());
        self
    }

    /// Uses this binary.
    pub fn bin(mut self, bin: impl Into<PathBuf>) -> Self {
        self.bin = Some(bin.into());
        self
    }
}

/// A running `data-server` process, killed on drop.
#[derive(Debug)]
pub struct DataServer {
    process: ManagedProcess,
    opts: DataServerOptions,
    listen: SocketAddr,
    id: String,
    addr: String,
    // Holds the log file.
    _dir: tempfile::TempDir,
}

impl DataServer {
    /// Starts a data-server announcing to `nsqd` with the default options.
    pub async fn start<A: ToString>(nsqd: impl IntoIterator<Item = A>) -> Result<Self> {
        Self::start_with(DataServerOptions::new(nsqd)).await
    }

    /// Starts a data-server, waits until it listens and reads `/whoami`.
    pub async fn start_with(opts: DataServerOptions) -> Result<Self> {
        let bin = match &opts.bin {
            Some(bin) => bin.clone(),
            None => project_bin("data-server")?,
        };
        let dir = tempfile::tempdir()?;
        let mut args = Vec::new();
        if let Some(file) = &opts.config_file {
            args.push("-c".to_owned());
            args.push(file.display().to_string());
        }
        let nsqd = format!(
            "announce.nsqd_tcp_addresses={}",
            opts.nsqd_tcp_addresses.join(",")
        );
        let defaults = [
            "server.listen=127.0.0.1:0".to_owned(),
            nsqd,
            format!("announce.interval={}", opts.interval),
        ];
        for set in defaults.into_iter().chain(opts.set.iter().cloned()) {
            args.push("--set".to_owned());
            args.push(set);
        }
        let log = dir.path().join("data-server.log");
        let mut process = ManagedProcess::spawn("data-server", bin, args, opts.envs.clone(), &log)?;
        let listen = wait_listening(&mut process, opts.startup_timeout).await?;
        let whoami: serde_json::Value = reqwest::get(format!("http://{listen}/whoami"))
            .await
            .context("GET /whoami")?
            .json()
            .await
            .context("reading /whoami")?;
        let field = |name: &str| -> Result<String> {
            whoami[name]
                .as_str()
                .map(str::to_owned)
                .with_context(|| format!("/whoami has no {name}: {whoami}"))
        };
        Ok(DataServer {
            opts,
            id: field("id")?,
            addr: field("addr")?,
            process,
            listen,
            _dir: dir,
        })
    }

    /// The bound listen address.
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
    }

    /// The server's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The announced address.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// `http://LISTEN` followed by `path` (which starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.listen)
    }

    /// The process, for anything not covered here.
    pub fn process(&mut self) -> &mut ManagedProcess {
        &mut self.process
    }

    /// Its output so far (stdout and stderr).
    pub fn log(&self) -> String {
        self.process.log()
    }

    /// Sends a signal.
    pub fn signal(&self, signal: Signal) -> Result<()> {
        self.process.signal(signal)
    }

    /// Waits up to `timeout` for it to exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        self.process.wait_exit(timeout).await
    }

    /// SIGTERM, then wait up to `timeout` for a graceful exit (SIGKILL after that).
    pub async fn terminate(&mut self, timeout: Duration) -> Result<ExitStatus> {
        self.process.terminate(timeout).await
    }

    /// SIGKILL: a crash, with no leaving heartbeat.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// SIGSTOP: the process keeps its sockets (the kernel still accepts connections on its
    /// listener) but answers nothing and stops announcing. Returns once every thread is stopped.
    pub fn freeze(&self) -> Result<()> {
        self.process.signal(Signal::SIGSTOP)?;
        self.process.wait_stopped(true)
    }

    /// SIGCONT after [`DataServer::freeze`]; returns once it runs again.
    pub fn thaw(&self) -> Result<()> {
        self.process.signal(Signal::SIGCONT)?;
        self.process.wait_stopped(false)
    }

    /// Starts it again with the same options, id and listen address (a new epoch), after the
    /// current run exited or was stopped. A run still going is killed first.
    pub async fn start_again(&mut self) -> Result<()> {
        self.process.kill();
        let mut opts = self.opts.clone();
        opts.set.push(format!("server.listen={}", self.listen));
        if !opts.set.iter().any(|s| s.starts_with("server.id=")) {
            opts.set.push(format!("server.id={}", self.id));
        }
        // The old listener is closed, but a port can stay briefly unavailable; retry.
        let next = retry(Duration::from_secs(20), Duration::from_millis(100), || {
            DataServer::start_with(opts.clone())
        })
        .await?;
        // Keep the original options (without the pinned listen address) for the next restart.
        let opts = std::mem::replace(&mut self.opts, DataServerOptions::new(Vec::<String>::new()));
        *self = DataServer { opts, ..next };
        Ok(())
    }

    /// Adds a `--set key=value` override for the next [`DataServer::start_again`] or [`DataServer::restart`] and
    /// those after it (a later one wins over an earlier one for the same key).
    pub fn push_set(&mut self, set: impl Into<String>) {
        self.opts.set.push(set.into());
    }

    /// A rolling-deploy step: SIGTERM (it announces `leaving` and drains), wait for the exit
    /// (up to `timeout`), then [`DataServer::start_again`].
    pub async fn restart(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let status = self.terminate(timeout).await?;
        self.start_again().await?;
        Ok(status)
    }
}

/// Waits for `listening on ADDR` in the log (the first line the server prints).
async fn wait_listening(process: &mut ManagedProcess, timeout: Duration) -> Result<SocketAddr> {
    let line = process
        .wait_log(timeout, "`listening on ADDR`", |log| {
            log.lines()
                .find_map(|l| l.strip_prefix("listening on "))
                .map(str::to_owned)
        })
        .await?;
    line.trim()
        .parse()
        .with_context(|| format!("bad address in {line:?}"))
}
