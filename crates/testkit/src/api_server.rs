//! A real `api-server` process on free loopback ports, with helpers to read its admin API.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::poll::{retry, try_eventually};
use crate::process::ManagedProcess;

/// How long an api-server may take to print its bound addresses.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running api-server. Dropping it kills the process.
#[derive(Debug)]
pub struct ApiServer {
    process: ManagedProcess,
    program: std::path::PathBuf,
    sets: Vec<String>,
    proxy: SocketAddr,
    admin: SocketAddr,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl ApiServer {
    /// Starts the binary at `program` with both listeners on `127.0.0.1:0` and `sets` as `--set key=value`
    /// overrides, and waits until it printed the addresses it bound.
    pub async fn start(program: &Path, sets: &[String]) -> Result<ApiServer> {
        let dir = tempfile::Builder::new().prefix("api-server-").tempdir()?;
        let mut args = vec![
            "--set".to_owned(),
            "server.listen=127.0.0.1:0".to_owned(),
            "--set".to_owned(),
            "server.admin_listen=127.0.0.1:0".to_owned(),
        ];
        for set in sets {
            args.push("--set".to_owned());
            args.push(set.clone());
        }
        let envs = vec![(
            "RUST_LOG".to_owned(),
            std::env::var("API_SERVER_TEST_LOG").unwrap_or_else(|_| "info".to_owned()),
        )];
        let mut process = ManagedProcess::spawn(
            "api-server",
            program,
            args,
            envs,
            dir.path().join("api-server.log"),
        )?;
        let (proxy, admin) = process
            .wait_log(START_TIMEOUT, "the proxy and admin addresses", |log| {
                Some((
                    bound(log, "proxy listening on http://")?,
                    bound(log, "admin listening on http://")?,
                ))
            })
            .await?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .no_proxy()
            .build()?;
        Ok(ApiServer {
            process,
            program: program.to_path_buf(),
            sets: sets.to_vec(),
            proxy,
            admin,
            http,
            _dir: dir,
        })
    }

    /// A deploy of the api-server: SIGTERM (it drains in-flight requests, up to `timeout`), then
    /// the same binary and settings again on the same proxy and admin ports. Returns once the new
    /// run listens on both (a port the old run held may be briefly unavailable: retried).
    pub async fn restart(&mut self, timeout: Duration) -> Result<()> {
        self.process.terminate(timeout).await?;
        let mut sets = self.sets.clone();
        sets.push(format!("server.listen={}", self.proxy));
        sets.push(format!("server.admin_listen={}", self.admin));
        let program = &self.program;
        let next = retry(START_TIMEOUT, Duration::from_millis(100), || {
            ApiServer::start(program, &sets)
        })
        .await?;
        if (next.proxy, next.admin) != (self.proxy, self.admin) {
            bail!(
                "the restarted api-server bound {} and {}, not {} and {}",
                next.proxy,
                next.admin,
                self.proxy,
                self.admin
            );
        }
        let sets = std::mem::take(&mut self.sets);
        *self = ApiServer { sets, ..next };
        Ok(())
    }

    /// Adds a `--set key=value` override for the next [`ApiServer::restart`] and those after it (a later one wins
    /// over an earlier one for the same key), e.g. a new list of key files during a key rotation.
    pub fn push_set(&mut self, set: impl Into<String>) {
        self.sets.push(set.into());
    }

    /// The proxy's address.
    pub fn proxy(&self) -> SocketAddr {
        self.proxy
    }

    /// The admin API's address.
    pub fn admin(&self) -> SocketAddr {
        self.admin
    }

    /// The process (signals, log).
    pub fn process(&mut self) -> &mut ManagedProcess {
        &mut self.process
    }

    /// The log so far.
    pub fn log(&self) -> String {
        self.process.log()
    }

    /// `GET /registry` as JSON.
    pub async fn registry(&self) -> Result<Value> {
        let url = format!("http://{}/registry", self.admin);
        let response = self.http.get(&url).send().await.context("GET /registry")?;
        Ok(response.error_for_status()?.json().await?)
    }

    /// The ids listed by `/registry`, sorted.
    pub async fn server_ids(&self) -> Result<Vec<String>> {
        let doc = self.registry().await?;
        let mut ids: Vec<String> = doc["servers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["id"].as_str().map(str::to_owned))
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// `GET /metrics` as text.
    pub async fn metrics(&self) -> Result<String> {
        let url = format!("http://{}/metrics", self.admin);
        Ok(self.http.get(&url).send().await?.text().await?)
    }

    /// The value of one sample line of `/metrics` (`name{labels}` exactly as rendered), 0 when absent.
    pub async fn metric(&self, sample: &str) -> Result<f64> {
        let text = self.metrics().await?;
        Ok(text
            .lines()
            .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0))
    }

    /// Polls `/registry` until `ready` accepts it; fails with the last document and the log after `timeout`.
    pub async fn wait_registry(
        &self,
        timeout: Duration,
        what: &str,
        ready: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        let last = Mutex::new(Value::Null);
        let (this, ready, seen) = (self, &ready, &last);
        let waited = try_eventually(timeout, what, move || async move {
            if let Ok(doc) = this.registry().await {
                if ready(&doc) {
                    return Ok(Some(doc));
                }
                *seen.lock().unwrap_or_else(PoisonError::into_inner) = doc;
            }
            Ok(None)
        })
        .await;
        waited.map_err(|e| {
            let last = last.into_inner().unwrap_or_else(PoisonError::into_inner);
            anyhow::anyhow!(
                "{e}; last /registry: {last}\n--- api-server log (tail) ---\n{}",
                self.process.log_tail(40)
            )
        })
    }
}

fn bound(log: &str, prefix: &str) -> Option<SocketAddr> {
    log.lines()
        .find_map(|line| line.trim().strip_prefix(prefix)?.parse().ok())
}
