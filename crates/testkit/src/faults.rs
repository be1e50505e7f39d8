//! Faults of the whole system under load, shared by the end-to-end fault suite and
//! `cargo xtask soak`: a [`FaultRun`] owns a [`Stack`], steady [`Load`] through its proxy, a
//! recorder of the registry's events and a [`Ledger`] of published heartbeats; it injects one
//! [`Fault`] at a time, waits until the system has converged again, and at the end reports
//! requests, failures, registry changes and the archive audit ([`FaultReport`]).

use std::collections::BTreeSet;
use std::fmt;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::audit::{Archived, Ledger, audit};
use crate::events::{RegistryEvent, RegistryEvents};
use crate::fault_report::FaultReport;
use crate::load::{Load, LoadOptions, LoadReport};
use crate::poll::{retry, try_eventually};
use crate::stack::{Stack, StackOptions};

/// The heartbeat topic of the stack.
const TOPIC: &str = "data_server_addr";
/// How long the system may take to converge after a fault is repaired.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(60);
/// Pause between two reads of the archive (each runs `archiver query`) while one is incomplete.
const AUDIT_PAUSE: Duration = Duration::from_millis(250);

/// One fault of the system-level suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL one nsqd, keep it down for one TTL, start it again on the same data path.
    NsqdKill,
    /// SIGSTOP one nsqd for one TTL (connections hang rather than close), then SIGCONT.
    NsqdFreeze,
    /// SIGKILL nsqlookupd, keep it down for four lookup poll intervals, start it again.
    LookupdDown,
    /// SIGTERM every nsqd, keep them down for three TTLs, start them again.
    AllNsqdDown,
    /// SIGSTOP one data server (its listener still accepts connections) until the registry has
    /// expired it, then SIGCONT.
    DataServerFreeze,
    /// Restart every data server one by one (SIGTERM, start again on the same port and id),
    /// each time waiting until it is listed again.
    RollingDeploy,
    /// SIGTERM the api-server and start it again on the same ports.
    ApiServerRestart,
}

impl Fault {
    /// Every fault, in the suite's order.
    pub const ALL: [Fault; 7] = [
        Fault::NsqdKill,
        Fault::NsqdFreeze,
        Fault::LookupdDown,
        Fault::AllNsqdDown,
        Fault::DataServerFreeze,
        Fault::RollingDeploy,
        Fault::ApiServerRestart,
    ];

    /// A short name (kebab-case).
    pub fn name(self) -> &'static str {
        match self {
            Fault::NsqdKill => "nsqd-kill",
            Fault::NsqdFreeze => "nsqd-freeze",
            Fault::LookupdDown => "lookupd-down",
            Fault::AllNsqdDown => "all-nsqd-down",
            Fault::DataServerFreeze => "data-server-freeze",
            Fault::RollingDeploy => "rolling-deploy",
            Fault::ApiServerRestart => "api-server-restart",
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A small deterministic random source (SplitMix64), so that a seed replays a soak.
#[derive(Debug, Clone)]
pub struct SeededRng(u64);

impl SeededRng {
    /// From a seed.
    pub fn new(seed: u64) -> Self {
        SeededRng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// A span of time in which an expiry of `id` is the expected outcome (it was frozen or down).
#[derive(Debug, Clone)]
struct ExpiryAllowed {
    id: String,
    from: Instant,
    until: Option<Instant>,
}

/// A span of time in which nothing listened on the proxy port (the api-server was restarting).
#[derive(Debug, Clone, Copy)]
struct ProxyDown {
    from: Duration,
    until: Duration,
}

/// A stack under steady load, ready for faults.
#[derive(Debug)]
pub struct FaultRun {
    // Field order is drop order: the load and the recorder before the stack they talk to.
    load: Load,
    events: RegistryEvents,
    /// The system.
    pub stack: Stack,
    ledger: Ledger,
    allowed: Vec<ExpiryAllowed>,
    proxy_down: Vec<ProxyDown>,
    faults: Vec<String>,
    ttl: Duration,
    started: Instant,
}

fn parse_duration(s: &str) -> Result<Duration> {
    let (n, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map(|i| s.split_at(i))
        .with_context(|| format!("duration {s:?} has no unit"))?;
    let n: u64 = n.parse()?;
    Ok(match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(60 * n),
        _ => bail!("duration {s:?}: unknown unit {unit:?}"),
    })
}

impl FaultRun {
    /// Starts the stack, the event recorder and the load, and waits until requests succeed.
    pub async fn start(opts: StackOptions, load: LoadOptions) -> Result<FaultRun> {
        let ttl = parse_duration(&opts.ttl)?;
        let stack = Stack::start(opts).await?;
        let events = RegistryEvents::start(stack.api.admin()).await?;
        let load = Load::start(&stack.proxy_url(), load)?;
        let run = FaultRun {
            load,
            events,
            stack,
            ledger: Ledger::default(),
            allowed: Vec::new(),
            proxy_down: Vec::new(),
            faults: Vec::new(),
            ttl,
            started: Instant::now(),
        };
        run.load.wait_more_ok(20, Duration::from_secs(30)).await?;
        Ok(run)
    }

    /// The registry TTL.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The load so far.
    pub fn load(&self) -> &Load {
        &self.load
    }

    /// The registry events so far.
    pub fn events(&self) -> Vec<RegistryEvent> {
        self.events.all()
    }

    fn note(&mut self, line: String) {
        eprintln!(
            "[faults {:>6.1}s] {line}",
            self.started.elapsed().as_secs_f64()
        );
        self.faults.push(line);
    }

    /// Injects `fault` (choosing which process with `rng`), repairs it, and waits until the
    /// system has converged: every data server listed, no self-preservation, requests
    /// succeeding.
    pub async fn inject(&mut self, fault: Fault, rng: &mut SeededRng) -> Result<()> {
        let ttl = self.ttl;
        match fault {
            Fault::NsqdKill => {
                let i = rng.below(self.stack.cluster.len());
                wait_queue_metadata(&self.stack, i).await?;
                self.note(format!("{fault}: SIGKILL nsqd{i}, down for {ttl:?}"));
                self.stack.cluster.kill(i);
                tokio::time::sleep(ttl).await;
                self.stack.cluster.restart(i).await?;
            }
            Fault::NsqdFreeze => {
                let i = rng.below(self.stack.cluster.len());
                self.note(format!("{fault}: SIGSTOP nsqd{i} for {ttl:?}"));
                self.stack.cluster.freeze(i)?;
                tokio::time::sleep(ttl).await;
                self.stack.cluster.thaw(i)?;
            }
            Fault::LookupdDown => {
                let down = Duration::from_secs(4);
                self.note(format!(
                    "{fault}: SIGKILL nsqlookupd, down for {down:?} (4 poll intervals)"
                ));
                self.stack.cluster.kill_lookupd();
                tokio::time::sleep(down).await;
                self.stack.cluster.restart_lookupd().await?;
                for i in 0..self.stack.cluster.len() {
                    self.stack.cluster.wait_registered(i).await?;
                }
            }
            Fault::AllNsqdDown => {
                let down = ttl * 3;
                self.note(format!("{fault}: SIGTERM every nsqd, down for {down:?}"));
                for i in 0..self.stack.cluster.len() {
                    self.stack.cluster.stop(i).await?;
                }
                tokio::time::sleep(down).await;
                for i in 0..self.stack.cluster.len() {
                    self.stack.cluster.restart(i).await?;
                }
            }
            Fault::DataServerFreeze => {
                let i = rng.below(self.stack.data.len());
                let id = self.stack.data[i].id().to_owned();
                self.ledger.record(&self.stack.data[i]).await?;
                self.note(format!(
                    "{fault}: SIGSTOP {id} until the registry expires it"
                ));
                let from = Instant::now();
                self.stack.data[i].freeze()?;
                let gone = self
                    .stack
                    .api
                    .wait_registry(
                        ttl * 3 + Duration::from_secs(5),
                        "the frozen server to expire",
                        |doc| !listed(doc).contains(&id),
                    )
                    .await;
                self.stack.data[i].thaw()?;
                gone?;
                // It may still expire until its first heartbeat after the thaw is in.
                self.allowed.push(ExpiryAllowed {
                    id,
                    from,
                    until: Some(Instant::now() + ttl),
                });
            }
            Fault::RollingDeploy => {
                self.note(format!(
                    "{fault}: restart {} data servers one by one",
                    self.stack.data.len()
                ));
                for i in 0..self.stack.data.len() {
                    self.restart_data_server(i).await?;
                }
            }
            Fault::ApiServerRestart => {
                self.note(format!("{fault}: SIGTERM the api-server, start it again"));
                let from = self.load.elapsed();
                let restarted = self.stack.api.restart(Duration::from_secs(15)).await;
                self.proxy_down.push(ProxyDown {
                    from,
                    until: self.load.elapsed(),
                });
                restarted?;
            }
        }
        self.converge().await
    }

    /// One rolling-deploy step for data server `i`.
    async fn restart_data_server(&mut self, i: usize) -> Result<()> {
        let ds = &self.stack.data[i];
        let id = ds.id().to_owned();
        self.ledger.record(ds).await?;
        let epoch = self.epoch(i).await?;
        let from = Instant::now();
        let status = self.stack.data[i]
            .terminate(Duration::from_secs(15))
            .await?;
        if !status.success() {
            bail!("{id} exited with {status} on SIGTERM");
        }
        let log = self.stack.data[i].log();
        self.ledger.record_exit(&id, epoch, &log);
        self.stack.data[i].start_again().await?;
        let listed_again = self
            .stack
            .api
            .wait_registry(
                CONVERGE_TIMEOUT,
                "the restarted server to be listed",
                |doc| listed(doc).contains(&id),
            )
            .await;
        self.allowed.push(ExpiryAllowed {
            id,
            from,
            until: Some(Instant::now()),
        });
        listed_again.map(drop)
    }

    async fn epoch(&self, i: usize) -> Result<u64> {
        let whoami: serde_json::Value = reqwest::Client::builder()
            .no_proxy()
            .build()?
            .get(self.stack.data[i].url("/whoami"))
            .send()
            .await?
            .json()
            .await?;
        whoami["epoch"].as_u64().context("/whoami has no epoch")
    }

    /// Waits until the api-server lists exactly the data servers, is out of self-preservation,
    /// and requests succeed again.
    pub async fn converge(&self) -> Result<()> {
        let want: BTreeSet<String> = self.stack.data.iter().map(|d| d.id().to_owned()).collect();
        self.stack
            .api
            .wait_registry(CONVERGE_TIMEOUT, "the registry to converge", |doc| {
                listed(doc) == want && doc["self_preservation"] == false
            })
            .await?;
        self.load.wait_more_ok(20, CONVERGE_TIMEOUT).await
    }

    /// Stops the load, reads every data server's final counters, waits (bounded) until the
    /// archive holds what they published, and reports.
    pub async fn finish(&mut self) -> Result<FaultReport> {
        let report_load = self.stop_load().await;
        for ds in &self.stack.data {
            self.ledger.record(ds).await?;
        }
        // The archiver commits in batches of at most 50 ms; a few seconds is plenty.
        // Read again (each read runs `archiver query`) while something is missing; after the
        // deadline the last report, with what is missing, is the answer.
        let (db, ledger) = (self.stack.archive_db(), &self.ledger);
        let audited = retry(Duration::from_secs(30), AUDIT_PAUSE, move || async move {
            // Ok: done (complete, or the archive could not be read); Err: something is missing.
            match Archived::read(db, TOPIC).await {
                Ok(archived) => match audit(ledger, &archived) {
                    report if report.missing.is_empty() => Ok(Ok(report)),
                    report => Err(report),
                },
                Err(e) => Ok(Err(e)),
            }
        })
        .await;
        let audit_report = match audited {
            Ok(read) => read?,
            Err(incomplete) => incomplete,
        };
        let events = self.events.all();
        let count = |kind: &str| events.iter().filter(|e| e.kind == kind).count() as u64;
        let false_expiries: Vec<&RegistryEvent> = events
            .iter()
            .filter(|e| e.kind == "expire")
            .filter(|e| {
                !self
                    .allowed
                    .iter()
                    .any(|a| a.id == e.id && a.from <= e.at && a.until.is_none_or(|u| e.at <= u))
            })
            .collect();
        let refused_while_restarting = report_load
            .failures
            .iter()
            .filter(|f| {
                f.refused
                    && self
                        .proxy_down
                        .iter()
                        .any(|d| d.from <= f.at && f.at <= d.until)
            })
            .count() as u64;
        // A restarted api-server answers 503 until its registry hears the first heartbeat:
        // the warm-up lasts from the restart until a request succeeds again.
        let warm_windows: Vec<(Duration, Duration)> = self
            .proxy_down
            .iter()
            .map(|d| {
                let back = report_load
                    .recoveries
                    .iter()
                    .copied()
                    .filter(|t| *t >= d.until)
                    .min()
                    .unwrap_or(d.until);
                (d.from, back)
            })
            .collect();
        let no_servers_after_restart = report_load
            .failures
            .iter()
            .filter(|f| {
                f.status == Some(503)
                    && f.detail.contains("no live data server")
                    && warm_windows.iter().any(|(a, b)| *a <= f.at && f.at <= *b)
            })
            .count() as u64;
        let closed_while_draining = report_load
            .failures
            .iter()
            .filter(|f| {
                f.status.is_none()
                    && !f.refused
                    && f.detail.contains("IncompleteMessage")
                    && self
                        .proxy_down
                        .iter()
                        .any(|d| d.from <= f.at && f.at <= d.until)
            })
            .count() as u64;
        let nsqd_reported_loss = self
            .stack
            .cluster
            .log_paths()
            .into_iter()
            .filter(|(name, _)| name.starts_with("nsqd"))
            .flat_map(|(name, path)| {
                std::fs::read_to_string(path)
                    .unwrap_or_default()
                    .lines()
                    .filter(|l| {
                        l.contains("DISKQUEUE") && (l.contains("data loss") || l.contains(".bad"))
                    })
                    .map(|l| format!("{name}: {l}"))
                    .collect::<Vec<_>>()
            })
            .collect();
        Ok(FaultReport {
            faults: self.faults.clone(),
            no_servers_after_restart,
            closed_while_draining,
            nsqd_reported_loss,
            requests: report_load.requests(),
            failures: report_load.failures.len() as u64,
            refused_while_restarting,
            max_latency: report_load.max_latency,
            refused_retries: report_load.refused_retries,
            joins: count("join"),
            leaves: count("leave"),
            expiries: count("expire"),
            false_expiries: false_expiries.len() as u64,
            audit: audit_report,
            failure_details: report_load
                .describe_failures()
                .lines()
                .map(str::to_owned)
                .collect(),
            false_expiry_details: false_expiries
                .iter()
                .map(|e| {
                    format!(
                        "{} expired at {:.1}s",
                        e.id,
                        e.at.duration_since(self.started).as_secs_f64()
                    )
                })
                .collect(),
            elapsed: self.started.elapsed(),
        })
    }

    async fn stop_load(&mut self) -> LoadReport {
        let load = std::mem::replace(
            &mut self.load,
            Load::start(
                "http://127.0.0.1:9",
                LoadOptions {
                    clients: 0,
                    ..LoadOptions::default()
                },
            )
            .expect("an empty load starts"),
        );
        load.stop().await
    }

    /// Graceful shutdown of the stack.
    pub async fn shutdown(self) -> Result<()> {
        let FaultRun { stack, .. } = self;
        stack.shutdown().await
    }
}

/// Waits until nsqd `i` has written the metadata of the heartbeat topic's and the archive
/// channel's disk queues. nsqd v1.3.0 (go-diskqueue v1.1.0) writes a queue's metadata file
/// only at its first sync (`--sync-timeout`, 2 s, after the first message), and a queue
/// restarted without one starts writing at offset 0 of its existing data file, overwriting
/// messages not yet delivered (the restarted nsqd then logs `DISKQUEUE(…) reading at N …
/// unexpected EOF` and `positive depth at tail (…), data loss`). A SIGKILL inside that first
/// window loses data whatever the flags; a real deployment is past it after two seconds of
/// traffic, so the kill waits for it.
async fn wait_queue_metadata(stack: &Stack, i: usize) -> Result<()> {
    let what = format!("nsqd{i} to write the metadata of {TOPIC} and {TOPIC}:archive");
    try_eventually(Duration::from_secs(30), &what, || {
        let c = &stack.cluster;
        let written = c.durable_depth(i, TOPIC, None).is_some()
            && c.durable_depth(i, TOPIC, Some("archive")).is_some();
        std::future::ready(Ok(written.then_some(())))
    })
    .await
}

/// The ids a `/registry` document lists.
pub fn listed(doc: &serde_json::Value) -> BTreeSet<String> {
    doc["servers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["id"].as_str().map(str::to_owned))
        .collect()
}
