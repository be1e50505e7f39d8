//! Does the archive hold every heartbeat the data servers had published?
//!
//! A data server counts a heartbeat as published when an nsqd answered OK to its PUB
//! (`data_server_heartbeats_sent_total`), and every heartbeat carries `(id, epoch, seq)` with
//! `seq` counting every attempt of the run. So a run whose counters show `sent` published and
//! `failed` unpublished heartbeats published `sent` of the seqs `1..=sent + failed` (plus at most
//! one in flight when read); with `failed == 0` that is exactly `1..=sent`. The archive may hold
//! more than was counted: a PUB that nsqd applied but whose OK was lost (a timeout on a frozen
//! nsqd, a kill) is archived without being counted, and those are reported as extras.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{Context, Result, bail};

use crate::bins::workspace_root;
use crate::data_server::DataServer;
use crate::project::project_bin;

/// One run of a data server, as its counters last showed it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishedRun {
    /// Up heartbeats an nsqd accepted.
    pub sent: u64,
    /// Heartbeats no nsqd accepted (their seqs are used up).
    pub failed: u64,
    /// Whether its log says the leaving heartbeat was accepted.
    pub leaving_sent: bool,
}

/// What every data-server run published: `(id, epoch)` -> counters.
#[derive(Debug, Clone, Default)]
pub struct Ledger {
    runs: BTreeMap<(String, u64), PublishedRun>,
}

impl Ledger {
    /// Reads one data server's `/whoami` (epoch) and `/metrics` and records its run. Call it
    /// while the server runs, last just before stopping it.
    pub async fn record(&mut self, ds: &DataServer) -> Result<()> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(std::time::Duration::from_secs(5))
            .build()?;
        let whoami: serde_json::Value = http.get(ds.url("/whoami")).send().await?.json().await?;
        let epoch = whoami["epoch"]
            .as_u64()
            .with_context(|| format!("/whoami has no epoch: {whoami}"))?;
        let metrics = http.get(ds.url("/metrics")).send().await?.text().await?;
        let value = |name: &str| -> u64 {
            metrics
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
                .unwrap_or(0.0) as u64
        };
        let run = self.runs.entry((ds.id().to_owned(), epoch)).or_default();
        run.sent = value("data_server_heartbeats_sent_total");
        run.failed = value("data_server_heartbeats_failed_total");
        Ok(())
    }

    /// Notes, from the log of a stopped run, whether its leaving heartbeat was accepted.
    pub fn record_exit(&mut self, id: &str, epoch: u64, log: &str) {
        if let Some(run) = self.runs.get_mut(&(id.to_owned(), epoch)) {
            run.leaving_sent = log.contains("leaving heartbeat sent");
        }
    }

    /// The runs recorded.
    pub fn runs(&self) -> &BTreeMap<(String, u64), PublishedRun> {
        &self.runs
    }

    /// Heartbeats counted as published (up and leaving).
    pub fn published(&self) -> u64 {
        self.runs
            .values()
            .map(|r| r.sent + u64::from(r.leaving_sent))
            .sum()
    }
}

/// Where one archived row came from: (nsqd, nsqd timestamp in ns, archived_at_ms).
type RowOrigin = (String, i64, i64);

/// The heartbeats in the archive: `(id, epoch)` -> (up seqs, leaving seqs).
#[derive(Debug, Clone, Default)]
pub struct Archived {
    runs: BTreeMap<(String, u64), (BTreeSet<u64>, BTreeSet<u64>)>,
    /// `(id, epoch, seq)` -> (nsqd, nsqd timestamp in ns, archived_at_ms) of each row.
    rows_by_heartbeat: BTreeMap<(String, u64, u64), Vec<RowOrigin>>,
    /// Rows read (duplicates included).
    pub rows: u64,
}

impl Archived {
    /// Reads every heartbeat of `topic` with `archiver query` (the archiver may be running:
    /// the database is in WAL mode).
    pub async fn read(db: &Path, topic: &str) -> Result<Archived> {
        let out = tokio::process::Command::new(project_bin("archiver")?)
            .arg("query")
            .arg("-c")
            .arg(workspace_root().join("config/archiver.toml"))
            .arg("--set")
            .arg(format!("archive.database={}", db.display()))
            .args(["--topic", topic])
            .output()
            .await
            .context("running archiver query")?;
        if !out.status.success() {
            bail!(
                "archiver query exited with {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let mut archived = Archived::default();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let row: serde_json::Value = serde_json::from_str(line)?;
            archived.rows += 1;
            let Some(body) = row["body"].as_str() else {
                continue;
            };
            let Ok(hb) = serde_json::from_str::<serde_json::Value>(body) else {
                continue;
            };
            let (Some(id), Some(epoch), Some(seq)) =
                (hb["id"].as_str(), hb["epoch"].as_u64(), hb["seq"].as_u64())
            else {
                continue;
            };
            archived
                .rows_by_heartbeat
                .entry((id.to_owned(), epoch, seq))
                .or_default()
                .push((
                    row["nsqd"].as_str().unwrap_or_default().to_owned(),
                    row["nsqd_ts_ns"].as_i64().unwrap_or_default(),
                    row["archived_at_ms"].as_i64().unwrap_or_default(),
                ));
            let run = archived.runs.entry((id.to_owned(), epoch)).or_default();
            if hb["state"] == "leaving" {
                run.1.insert(seq);
            } else {
                run.0.insert(seq);
            }
        }
        Ok(archived)
    }

    /// The archived rows of the heartbeats within 3 seqs of each of `missing`, one a line
    /// (which nsqd delivered them, and when), for failure reports.
    pub fn describe_around(&self, missing: &[(String, u64, u64)]) -> String {
        let mut out = String::new();
        for (id, epoch, seq) in missing {
            out.push_str(&format!(
                "{id} epoch {epoch} seq {seq} is missing; around it:\n"
            ));
            for s in seq.saturating_sub(3)..=seq + 3 {
                let rows = self.rows_by_heartbeat.get(&(id.clone(), *epoch, s));
                out.push_str(&format!("  seq {s}: {rows:?}\n"));
            }
        }
        out
    }

    /// Distinct heartbeats archived.
    pub fn distinct(&self) -> u64 {
        self.runs
            .values()
            .map(|(up, leaving)| (up.len() + leaving.len()) as u64)
            .sum()
    }
}

/// The outcome of comparing a [`Ledger`] with the [`Archived`] heartbeats.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditReport {
    /// Heartbeats counted as published.
    pub published: u64,
    /// Of those, found in the archive.
    pub archived: u64,
    /// Published and not archived: `(id, epoch, seq or 0 for leaving)` where known; for runs
    /// with failed heartbeats only the shortfall is known, given as seq 0.
    pub missing: Vec<(String, u64, u64)>,
    /// Archived within the audited range but not counted as published (applied PUBs whose OK
    /// was lost).
    pub extra: u64,
    /// Runs with failed heartbeats, for which only counts (not exact seqs) could be compared.
    pub inexact_runs: u64,
}

/// Compares what was published with what was archived.
pub fn audit(ledger: &Ledger, archived: &Archived) -> AuditReport {
    let mut report = AuditReport::default();
    let empty = (BTreeSet::new(), BTreeSet::new());
    for ((id, epoch), run) in ledger.runs() {
        let (up, leaving) = archived.runs.get(&(id.clone(), *epoch)).unwrap_or(&empty);
        report.published += run.sent + u64::from(run.leaving_sent);
        if run.failed == 0 {
            // Exactly 1..=sent were published; one more may have been in flight when read.
            for seq in 1..=run.sent {
                if up.contains(&seq) {
                    report.archived += 1;
                } else {
                    report.missing.push((id.clone(), *epoch, seq));
                }
            }
        } else {
            report.inexact_runs += 1;
            let window = run.sent + run.failed + 1;
            let found = up.range(1..=window).count() as u64;
            report.archived += found.min(run.sent);
            report.extra += found.saturating_sub(run.sent);
            for _ in found..run.sent {
                report.missing.push((id.clone(), *epoch, 0));
            }
        }
        if run.leaving_sent {
            if leaving.is_empty() {
                report.missing.push((id.clone(), *epoch, 0));
            } else {
                report.archived += 1;
            }
        }
    }
    report
}
