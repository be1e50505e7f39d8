//! NSQ's own command-line clients as test peers: `to_nsq` publishes, `nsq_tail` consumes.

use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::bins::nsq_bin;
use crate::process::ManagedProcess;

/// Publishes each line to `topic` on the nsqd at `nsqd_tcp` with `to_nsq`; returns once
/// `to_nsq` has exited successfully.
pub async fn to_nsq(nsqd_tcp: SocketAddr, topic: &str, lines: &[&str]) -> Result<()> {
    let bin = nsq_bin("to_nsq")?;
    let mut input = lines.join("\n");
    input.push('\n');
    let topic = topic.to_string();
    // to_nsq reads stdin to EOF and then flushes; run it off the async threads.
    tokio::task::spawn_blocking(move || -> Result<()> {
        let mut child = Command::new(bin)
            .arg(format!("--topic={topic}"))
            .arg(format!("--nsqd-tcp-address={nsqd_tcp}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting to_nsq")?;
        child
            .stdin
            .take()
            .expect("piped stdin")
            .write_all(input.as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "to_nsq exited with {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    })
    .await?
}

/// A running `nsq_tail -n N`: it exits by itself after printing N messages.
#[derive(Debug)]
pub struct NsqTail {
    process: ManagedProcess,
    _dir: tempfile::TempDir,
}

impl NsqTail {
    /// Tails `topic` on the nsqd at `nsqd_tcp` until `count` messages were printed.
    pub fn start(nsqd_tcp: SocketAddr, topic: &str, count: usize) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("nsq-tail-").tempdir()?;
        let process = ManagedProcess::spawn_with_stdout(
            "nsq_tail",
            nsq_bin("nsq_tail")?,
            vec![
                format!("--topic={topic}"),
                format!("--nsqd-tcp-address={nsqd_tcp}"),
                format!("-n={count}"),
            ],
            dir.path().join("nsq_tail.log"),
            dir.path().join("messages"),
        )?;
        Ok(Self { process, _dir: dir })
    }

    /// Waits for `nsq_tail` to exit and returns the message bodies it printed, one a line.
    pub async fn finish(mut self, timeout: Duration) -> Result<Vec<String>> {
        let status = self
            .process
            .wait_exit(timeout)
            .await
            .with_context(|| format!("nsq_tail log:\n{}", self.process.log_tail(40)))?;
        if !status.success() {
            bail!(
                "nsq_tail exited with {status}:\n{}",
                self.process.log_tail(40)
            );
        }
        Ok(self.output().lines().map(str::to_string).collect())
    }

    /// The message bodies printed so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("messages")).unwrap_or_default()
    }
}
