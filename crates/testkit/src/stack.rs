//! The whole system on loopback: nsqlookupd, nsqd, nsqadmin, data servers, an api-server and
//! the archiver, started from the config files in `config/`. `cargo xtask up` runs this for
//! people; the end-to-end tests run the very same code. Heartbeats are signed: the stack makes a key in its
//! state directory on first start (`data-server keygen --if-missing`) and gives it to every data server and the
//! api-server, as an operator would.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::api_server::ApiServer;
use crate::bins::workspace_root;
use crate::cluster::{ClusterOptions, NsqCluster};
use crate::data_server::{DataServer, DataServerOptions};
use crate::poll::try_eventually;
use crate::process::ManagedProcess;
use crate::project::project_bin;

/// What to start.
#[derive(Debug, Clone)]
pub struct StackOptions {
    /// Number of nsqd.
    pub nsqd: usize,
    /// Number of data servers.
    pub data_servers: usize,
    /// Standard ports (NSQ's, proxy 8080, admin 8081) instead of free ones.
    pub standard_ports: bool,
    /// Heartbeat interval of the data servers.
    pub announce_interval: String,
    /// Registry TTL of the api-server.
    pub ttl: String,
    /// Where the archive database and logs go (default: a temporary directory).
    pub state_dir: Option<PathBuf>,
    /// Extra flags for every nsqd, e.g. [`DURABLE_NSQD_ARGS`].
    pub nsqd_args: Vec<String>,
    /// Extra `--set key=value` overrides for the api-server, applied last.
    pub api_sets: Vec<String>,
    /// Extra `--set key=value` overrides for the archiver, applied last (e.g. a PostgreSQL
    /// `archive.database` and its `archive.database_password_file`).
    pub archiver_sets: Vec<String>,
}

/// nsqd flags that make every accepted message survive a SIGKILL of nsqd: with
/// `--mem-queue-size=0` nsqd v1.3.0 writes each message to the topic's and then each durable
/// channel's disk queue (`Topic.put` / `Channel.put` skip the memory queue, `diskqueue.writeOne`
/// is a plain `write(2)`, so the bytes are in the page cache before PUB is answered) instead of
/// holding up to 10,000 per queue in memory, which a crash loses.
pub const DURABLE_NSQD_ARGS: &[&str] = &["--mem-queue-size=0"];

impl Default for StackOptions {
    fn default() -> Self {
        Self {
            nsqd: 2,
            data_servers: 3,
            standard_ports: false,
            announce_interval: "1s".into(),
            ttl: "5s".into(),
            state_dir: None,
            nsqd_args: Vec::new(),
            api_sets: Vec::new(),
            archiver_sets: Vec::new(),
        }
    }
}

/// A running stack. Dropping it kills everything; [`Stack::shutdown`] stops it gracefully.
#[derive(Debug)]
pub struct Stack {
    // Field order is drop order: clients of NSQ before NSQ itself.
    /// The data servers, in start order.
    pub data: Vec<DataServer>,
    /// The api-server.
    pub api: ApiServer,
    archiver: ManagedProcess,
    archiver_metrics: SocketAddr,
    nsqadmin: SocketAddr,
    key_file: PathBuf,
    /// nsqlookupd and the nsqd.
    pub cluster: NsqCluster,
    opts: StackOptions,
    archive_db: PathBuf,
    _dir: Option<tempfile::TempDir>,
}

/// The archiver's metrics port with standard ports (next to nsqd's and the admin API's).
pub const ARCHIVER_METRICS_PORT: u16 = 9102;
/// Waits until the archiver's durable channel exists, with a subscriber, on every nsqd.
async fn wait_archive_channel(cluster: &NsqCluster) -> Result<()> {
    // The first nsqd without a subscriber, for the timeout message.
    let unsubscribed = AtomicUsize::new(0);
    let waiting_for = &unsubscribed;
    let waited = try_eventually(
        Duration::from_secs(30),
        "the archiver to subscribe",
        move || async move {
            for i in 0..cluster.len() {
                let s = cluster
                    .stats(i, "data_server_addr", Some("archive"))
                    .await?;
                let channel = s.channel("data_server_addr", "archive");
                if channel.is_none_or(|c| c.client_count == 0) {
                    waiting_for.store(i, Ordering::Relaxed);
                    return Ok(None);
                }
            }
            Ok(Some(()))
        },
    )
    .await;
    let i = unsubscribed.load(Ordering::Relaxed);
    waited.map_err(|e| e.context(format!("the archiver did not subscribe to nsqd{i}")))
}

/// The key file's name in the state directory.
pub const KEY_FILE: &str = "heartbeat.key";

/// Makes the stack's HMAC key with `data-server keygen` unless it exists (kept across restarts of the stack).
fn make_key(path: &std::path::Path) -> Result<()> {
    let output = std::process::Command::new(project_bin("data-server")?)
        .args(["keygen", "--if-missing", "--out"])
        .arg(path)
        .output()
        .context("running data-server keygen")?;
    anyhow::ensure!(
        output.status.success(),
        "data-server keygen --out {} failed: {}",
        path.display(),
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(())
}

fn config(name: &str) -> PathBuf {
    workspace_root().join("config").join(name)
}

impl Stack {
    /// Starts everything and waits until the api-server lists every data server.
    pub async fn start(opts: StackOptions) -> Result<Self> {
        let (dir, state) = match &opts.state_dir {
            Some(d) => {
                std::fs::create_dir_all(d)?;
                (None, d.clone())
            }
            None => {
                let t = tempfile::Builder::new().prefix("nsq-stack-").tempdir()?;
                let p = t.path().to_path_buf();
                (Some(t), p)
            }
        };
        let mut cluster = NsqCluster::start_with(ClusterOptions {
            nsqd: opts.nsqd,
            standard_ports: opts.standard_ports,
            nsqd_args: opts.nsqd_args.clone(),
            ..Default::default()
        })
        .await?;
        let nsqadmin = cluster.start_nsqadmin().await?;
        let key_file = state.join(KEY_FILE);
        make_key(&key_file)?;
        let lookupd = cluster.lookupd_http().to_string();

        let archive_db = state.join("archive.db");
        let mut archiver_args: Vec<String> = vec![
            "run".into(),
            "-c".into(),
            config("archiver.toml").display().to_string(),
            "--set".into(),
            format!("archive.database={}", archive_db.display()),
            "--set".into(),
            format!("archive.lookupd_http_addresses={lookupd}"),
            "--set".into(),
            "archive.lookupd_poll_interval=1s".into(),
            // Direct addresses too: SUB creates the durable channel at once, so it holds
            // every message from the first heartbeat on (lookupd lists an nsqd only once the
            // topic exists, which would be too late for the first messages).
            "--set".into(),
            format!(
                "archive.nsqd_tcp_addresses={}",
                cluster
                    .nsqd_tcp_addresses()
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        ];
        let archiver_metrics = SocketAddr::from((
            [127, 0, 0, 1],
            if opts.standard_ports {
                ARCHIVER_METRICS_PORT
            } else {
                crate::cluster::free_port()
            },
        ));
        archiver_args.extend([
            "--set".to_owned(),
            format!("archive.metrics_listen={archiver_metrics}"),
        ]);
        for set in &opts.archiver_sets {
            archiver_args.extend(["--set".to_owned(), set.clone()]);
        }
        let archiver = ManagedProcess::spawn(
            "archiver",
            project_bin("archiver")?,
            archiver_args,
            vec![],
            state.join("archiver.log"),
        )?;
        wait_archive_channel(&cluster).await?;

        let (proxy, admin) = if opts.standard_ports {
            ("127.0.0.1:8080", "127.0.0.1:8081")
        } else {
            ("127.0.0.1:0", "127.0.0.1:0")
        };
        let mut api_sets = vec![
            format!("server.listen={proxy}"),
            format!("server.admin_listen={admin}"),
            format!("discovery.lookupd_http_addresses={lookupd}"),
            "discovery.lookupd_poll_interval=1s".into(),
            format!("discovery.ttl={}", opts.ttl),
            "discovery.prune_interval=500ms".into(),
            format!("discovery.hmac_key_files={}", key_file.display()),
        ];
        api_sets.extend(opts.api_sets.iter().cloned());
        let api = ApiServer::start(&project_bin("api-server")?, &api_sets)
            .await
            .context("starting the api-server")?;

        let mut stack = Self {
            data: Vec::new(),
            api,
            archiver,
            archiver_metrics,
            nsqadmin,
            key_file,
            cluster,
            opts,
            archive_db,
            _dir: dir,
        };
        for _ in 0..stack.opts.data_servers {
            stack.add_data_server().await?;
        }
        let want = stack.data.len();
        stack
            .api
            .wait_registry(
                Duration::from_secs(30),
                "every data server to register",
                |doc| doc["servers"].as_array().is_some_and(|s| s.len() == want),
            )
            .await?;
        Ok(stack)
    }

    /// Starts one more data server (named `data-N`) and returns its index.
    pub async fn add_data_server(&mut self) -> Result<usize> {
        let n = self.data.len() + 1;
        let mut opts = DataServerOptions::new(self.cluster.nsqd_tcp_addresses());
        opts.config_file = Some(config("data-server.toml"));
        opts.interval = self.opts.announce_interval.clone();
        opts.set.push(format!("server.id=data-{n}"));
        opts.set.push(format!(
            "announce.hmac_key_file={}",
            self.key_file.display()
        ));
        self.data.push(DataServer::start_with(opts).await?);
        Ok(self.data.len() - 1)
    }

    /// The proxy URL.
    pub fn proxy_url(&self) -> String {
        format!("http://{}", self.api.proxy())
    }

    /// The admin dashboard URL.
    pub fn dashboard_url(&self) -> String {
        format!("http://{}/", self.api.admin())
    }

    /// The archiver's `/metrics` URL (`archive.metrics_listen`).
    pub fn archiver_metrics_url(&self) -> String {
        format!("http://{}/metrics", self.archiver_metrics)
    }

    /// The nsqadmin URL.
    pub fn nsqadmin_url(&self) -> String {
        format!("http://{}/", self.nsqadmin)
    }

    /// The options it was started with.
    pub fn options(&self) -> &StackOptions {
        &self.opts
    }

    /// The index of the data server with this id.
    pub fn data_server_index(&self, id: &str) -> Option<usize> {
        self.data.iter().position(|d| d.id() == id)
    }

    /// The archiver's log so far.
    pub fn archiver_log(&self) -> String {
        self.archiver.log()
    }

    /// The HMAC key file every data server signs with and the api-server checks.
    pub fn key_file(&self) -> &PathBuf {
        &self.key_file
    }

    /// The archive database file.
    pub fn archive_db(&self) -> &PathBuf {
        &self.archive_db
    }

    /// The archiver's pid, while it runs.
    pub fn archiver_pid(&self) -> Option<u32> {
        self.archiver.pid()
    }

    /// Every process as (name, log file), for following their output.
    pub fn logs(&mut self) -> Vec<(String, PathBuf)> {
        let mut v = self.cluster.log_paths();
        v.push((
            "archiver".to_string(),
            self.archiver.log_path().to_path_buf(),
        ));
        v.push((
            "api-server".into(),
            self.api.process().log_path().to_path_buf(),
        ));
        for (i, d) in self.data.iter_mut().enumerate() {
            v.push((
                format!("data-{}", i + 1),
                d.process().log_path().to_path_buf(),
            ));
        }
        v
    }

    /// Pids of every process of the stack.
    pub fn pids(&mut self) -> Vec<u32> {
        let mut v = self.cluster.pids();
        v.extend(self.archiver.pid());
        v.extend(self.api.process().pid());
        for d in &mut self.data {
            v.extend(d.process().pid());
        }
        v
    }

    /// Graceful stop in dependency order: data servers (they announce leaving), the
    /// api-server, the archiver (commits its open batch), then NSQ.
    pub async fn shutdown(mut self) -> Result<()> {
        let t = Duration::from_secs(15);
        for d in &mut self.data {
            d.terminate(t).await?;
        }
        self.api.process().terminate(t).await?;
        self.archiver.terminate(t).await?;
        for i in 0..self.cluster.len() {
            self.cluster.stop(i).await?;
        }
        Ok(())
    }
}
