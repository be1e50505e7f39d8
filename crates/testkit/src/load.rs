//! Steady HTTP load through the proxy: a few keep-alive clients on tokio tasks, each sending
//! one request after another, counting successes and keeping every failure with its detail.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use crate::poll::try_eventually;

/// How to generate load.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Concurrent clients, each with its own keep-alive connection.
    pub clients: usize,
    /// Path requested (`GET`), e.g. `/whoami`.
    pub path: String,
    /// Pause after each request of one client (bounds the rate on a small machine).
    pub pause: Duration,
    /// Client timeout per request (longer than the proxy's own timeouts, so that the proxy's
    /// answer is what gets recorded).
    pub timeout: Duration,
    /// Stop by itself after this long (`None`: until [`Load::stop`] or drop).
    pub duration: Option<Duration>,
    /// Retry a request whose connection was refused (nothing listened, so nothing was sent)
    /// for up to this long, as a client of several api-servers behind a balancer would see
    /// it; each such retry is counted in [`LoadReport::refused_retries`]. `None`: a refused
    /// connection is a failure.
    pub retry_refused: Option<Duration>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            clients: 4,
            path: "/whoami".into(),
            pause: Duration::from_millis(5),
            timeout: Duration::from_secs(40),
            duration: None,
            retry_refused: None,
        }
    }
}

/// One request that did not get a 2xx answer.
#[derive(Debug, Clone)]
pub struct Failure {
    /// When it was sent, since the load started.
    pub at: Duration,
    /// How long it took to fail.
    pub latency: Duration,
    /// The answer's status, when there was one.
    pub status: Option<u16>,
    /// The connection was refused: nothing listened, so no request was sent.
    pub refused: bool,
    /// The `X-Request-Id` sent (the api-server logs it).
    pub request_id: String,
    /// The error or the answer's body.
    pub detail: String,
}

/// What the load saw.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    /// 2xx answers.
    pub ok: u64,
    /// Everything else, in the order they ended.
    pub failures: Vec<Failure>,
    /// Slowest 2xx answer.
    pub max_latency: Duration,
    /// How long the load ran.
    pub elapsed: Duration,
    /// Refused connections retried (see [`LoadOptions::retry_refused`]).
    pub refused_retries: u64,
    /// When (since the start) a client's request succeeded right after one of its own had
    /// failed: the moments the system served that client again.
    pub recoveries: Vec<Duration>,
}

impl LoadReport {
    /// Every request made.
    pub fn requests(&self) -> u64 {
        self.ok + self.failures.len() as u64
    }

    /// Failures whose connection was refused (nothing listened).
    pub fn refused(&self) -> usize {
        self.failures.iter().filter(|f| f.refused).count()
    }

    /// One line per failure, for assertion messages.
    pub fn describe_failures(&self) -> String {
        self.failures
            .iter()
            .map(|f| {
                format!(
                    "  at {:?} after {:?}: {} {} [{}] {}",
                    f.at,
                    f.latency,
                    f.status.map_or("-".to_string(), |s| s.to_string()),
                    if f.refused { "refused" } else { "" },
                    f.request_id,
                    f.detail
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

#[derive(Debug, Default)]
struct Shared {
    ok: AtomicU64,
    failed: AtomicU64,
    max_latency_us: AtomicU64,
    refused_retries: AtomicU64,
    recoveries: Mutex<Vec<Duration>>,
    failures: Mutex<Vec<Failure>>,
}

/// Running load. Dropping it stops the clients.
#[derive(Debug)]
pub struct Load {
    stop: Arc<AtomicBool>,
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
    started: Instant,
}

impl Load {
    /// Starts `opts.clients` clients against `base_url` (e.g. `http://127.0.0.1:8080`).
    pub fn start(base_url: &str, opts: LoadOptions) -> anyhow::Result<Load> {
        let stop = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(Shared::default());
        let started = Instant::now();
        let url = format!("{base_url}{}", opts.path);
        let mut tasks = Vec::new();
        for client in 0..opts.clients {
            let http = reqwest::Client::builder()
                .no_proxy()
                .timeout(opts.timeout)
                .pool_max_idle_per_host(1)
                .build()?;
            let (stop, shared, url, opts) =
                (stop.clone(), shared.clone(), url.clone(), opts.clone());
            tasks.push(tokio::spawn(async move {
                let mut n = 0u64;
                let mut failing = false;
                while !stop.load(Ordering::Relaxed)
                    && opts.duration.is_none_or(|d| started.elapsed() < d)
                {
                    n += 1;
                    let request_id = format!("load-{client}-{n}");
                    let ok = one(
                        &http,
                        &url,
                        request_id,
                        started,
                        opts.retry_refused,
                        &shared,
                    )
                    .await;
                    if ok && failing {
                        shared
                            .recoveries
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .push(started.elapsed());
                    }
                    failing = !ok;
                    if !opts.pause.is_zero() {
                        tokio::time::sleep(opts.pause).await;
                    }
                }
            }));
        }
        Ok(Load {
            stop,
            shared,
            tasks,
            started,
        })
    }

    /// 2xx answers so far.
    pub fn ok(&self) -> u64 {
        self.shared.ok.load(Ordering::Relaxed)
    }

    /// Failures so far.
    pub fn failed(&self) -> u64 {
        self.shared.failed.load(Ordering::Relaxed)
    }

    /// When the load started (the origin of [`Failure::at`]).
    pub fn started_at(&self) -> Instant {
        self.started
    }

    /// Time since the load started (the clock of [`Failure::at`]).
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Waits until `n` more requests succeeded than when called (the system serves again),
    /// failing after `timeout`.
    pub async fn wait_more_ok(&self, n: u64, timeout: Duration) -> anyhow::Result<()> {
        let target = self.ok() + n;
        let what = format!("{n} more requests to succeed");
        let waited = try_eventually(timeout, &what, || {
            std::future::ready(Ok((self.ok() >= target).then_some(())))
        })
        .await;
        waited.map_err(|e| anyhow::anyhow!("{e} ({} failures so far)", self.failed()))
    }

    /// What was seen so far, without stopping.
    pub fn snapshot(&self) -> LoadReport {
        LoadReport {
            ok: self.ok(),
            failures: self
                .shared
                .failures
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
            max_latency: Duration::from_micros(self.shared.max_latency_us.load(Ordering::Relaxed)),
            elapsed: self.started.elapsed(),
            refused_retries: self.shared.refused_retries.load(Ordering::Relaxed),
            recoveries: self
                .shared
                .recoveries
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        }
    }

    /// Stops the clients, lets requests in flight finish, and reports.
    pub async fn stop(mut self) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
        self.snapshot()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn one(
    http: &reqwest::Client,
    url: &str,
    request_id: String,
    started: Instant,
    retry_refused: Option<Duration>,
    shared: &Shared,
) -> bool {
    let sent = Instant::now();
    let result = loop {
        let result = http
            .get(url)
            .header("x-request-id", &request_id)
            .send()
            .await;
        match (&result, retry_refused) {
            (Err(e), Some(budget)) if e.is_connect() && sent.elapsed() < budget => {
                shared.refused_retries.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            _ => break result,
        }
    };
    let failure = match result {
        Ok(resp) if resp.status().is_success() => match resp.bytes().await {
            Ok(_) => None,
            Err(e) => Some((Some(200), false, format!("reading the body: {e}"))),
        },
        Ok(resp) => {
            let status = resp.status().as_u16();
            let body = resp.text().await.unwrap_or_else(|e| format!("<{e}>"));
            Some((Some(status), false, body))
        }
        Err(e) => Some((None, e.is_connect(), format!("{e:?}"))),
    };
    let latency = sent.elapsed();
    match failure {
        None => {
            shared.ok.fetch_add(1, Ordering::Relaxed);
            let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
            shared.max_latency_us.fetch_max(us, Ordering::Relaxed);
            true
        }
        Some((status, refused, detail)) => {
            shared.failed.fetch_add(1, Ordering::Relaxed);
            shared
                .failures
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(Failure {
                    at: sent.duration_since(started),
                    latency,
                    status,
                    refused,
                    request_id,
                    detail,
                });
            false
        }
    }
}
