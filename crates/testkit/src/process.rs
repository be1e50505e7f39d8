//! A child process that a test owns: output to a log file, signals on demand, and never left
//! behind (killed on drop, and by the kernel if the spawning thread dies first).

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::poll::try_eventually;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// A running (or stopped) child process with its log file.
#[derive(Debug)]
pub struct ManagedProcess {
    name: String,
    program: PathBuf,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    log: PathBuf,
    stdout: Option<PathBuf>,
    /// Run as this (uid, gid) instead of ours (a server that refuses to run as root).
    user: Option<(u32, u32)>,
    child: Option<Child>,
}

impl ManagedProcess {
    /// Starts `program args…`, appending stdout and stderr to `log`.
    ///
    /// The child gets SIGKILL from the kernel if the thread that started it exits, so a test
    /// that dies without unwinding leaves nothing behind. Start processes from the test's own
    /// thread (or a runtime worker), not from `spawn_blocking`, whose threads come and go.
    pub fn spawn(
        name: impl Into<String>,
        program: impl Into<PathBuf>,
        args: Vec<String>,
        envs: Vec<(String, String)>,
        log: impl Into<PathBuf>,
    ) -> Result<Self> {
        Self::unstarted(name, program, args, envs, log).started()
    }

    /// Like [`ManagedProcess::spawn`], running the program as user `uid` and group `gid` (the
    /// caller must be allowed to switch to them, i.e. be root). Still killed with its spawner:
    /// the death signal is set after the switch, which would otherwise clear it.
    pub fn spawn_as(
        name: impl Into<String>,
        program: impl Into<PathBuf>,
        args: Vec<String>,
        log: impl Into<PathBuf>,
        (uid, gid): (u32, u32),
    ) -> Result<Self> {
        let mut p = Self::unstarted(name, program, args, Vec::new(), log);
        p.user = Some((uid, gid));
        p.started()
    }

    /// Like [`ManagedProcess::spawn`], with stdout in a file of its own (for programs whose
    /// stdout is data, like `nsq_tail`); stderr still goes to `log`.
    pub fn spawn_with_stdout(
        name: impl Into<String>,
        program: impl Into<PathBuf>,
        args: Vec<String>,
        log: impl Into<PathBuf>,
        stdout: impl Into<PathBuf>,
    ) -> Result<Self> {
        let mut p = Self::unstarted(name, program, args, Vec::new(), log);
        p.stdout = Some(stdout.into());
        p.started()
    }

    /// The process as configured, not running yet.
    fn unstarted(
        name: impl Into<String>,
        program: impl Into<PathBuf>,
        args: Vec<String>,
        envs: Vec<(String, String)>,
        log: impl Into<PathBuf>,
    ) -> Self {
        Self {
            name: name.into(),
            program: program.into(),
            args,
            envs,
            log: log.into(),
            stdout: None,
            user: None,
            child: None,
        }
    }

    fn started(mut self) -> Result<Self> {
        self.start()?;
        Ok(self)
    }

    fn start(&mut self) -> Result<()> {
        let out = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening log {}", self.log.display()))?;
        let err = out.try_clone()?;
        let out = match &self.stdout {
            Some(path) => File::options()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("opening {}", path.display()))?,
            None => out,
        };
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        if let Some((uid, gid)) = self.user {
            // std switches (and, as root, drops supplementary groups) before running the
            // pre_exec hook below.
            cmd.uid(uid).gid(gid);
        }
        // SAFETY: prctl and setpgid are async-signal-safe and touch no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)?;
                // A process group of its own: a terminal's Ctrl-C reaches only the supervisor
                // (a test or `cargo xtask up`), which then stops children in a chosen order.
                nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0))
                    .map_err(std::io::Error::from)
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {} ({})", self.name, self.program.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// The name given at spawn (used in logs).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Path of the log file holding the process's stdout and stderr.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// OS pid of the current run, if running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends a signal to the current run.
    pub fn signal(&self, signal: Signal) -> Result<()> {
        let pid = self.pid().context("process is not running")?;
        kill(Pid::from_raw(pid as i32), signal)
            .with_context(|| format!("sending {signal} to {}", self.name))
    }

    /// Waits (up to 5 s) until every thread of the process is stopped (`stopped`) or none is.
    pub fn wait_stopped(&self, stopped: bool) -> Result<()> {
        let pid = self.pid().context("process is not running")?;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))?;
            let mut all = true;
            let mut none = true;
            for task in tasks.flatten() {
                let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
                // The state follows the parenthesised command name: "pid (comm) T ...".
                let state = stat
                    .rsplit_once(')')
                    .and_then(|(_, rest)| rest.trim_start().chars().next());
                let is_stopped = matches!(state, Some('T') | Some('t'));
                all &= is_stopped;
                none &= !is_stopped;
            }
            if (stopped && all) || (!stopped && none) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} did not become {} within 5s",
                    self.name,
                    if stopped { "stopped" } else { "running" }
                );
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Exit status if the process has exited (reaps it), `None` while it runs.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        match self.child.as_mut() {
            Some(c) => Ok(c.try_wait()?),
            None => bail!("{} was never started", self.name),
        }
    }

    /// Waits up to `timeout` for the process to exit, polling without blocking the runtime.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let what = format!("{} to exit", self.name);
        try_eventually(timeout, &what, || std::future::ready(self.try_wait())).await
    }

    /// Sends `signal` as the second shutdown signal and checks what `svc::Shutdown::trigger_on_signal`
    /// promises: the process exits with `code` (`svc::FORCED_EXIT_CODE`) within 5 s, logging that it
    /// cut its graceful shutdown short. Panics, showing the log, otherwise.
    pub async fn assert_forced_exit(&mut self, signal: Signal, code: i32) {
        let forced = Instant::now();
        self.signal(signal).unwrap();
        let status = self.wait_exit(Duration::from_secs(15)).await.unwrap();
        assert_eq!(status.code(), Some(code), "{}", self.log_tail(20));
        assert!(
            forced.elapsed() < Duration::from_secs(5),
            "exited {:?} after the second signal",
            forced.elapsed()
        );
        let line = format!(
            "{} received again, exiting at once without finishing the graceful shutdown",
            signal.as_str()
        );
        assert!(self.log().contains(&line), "{}", self.log_tail(20));
    }

    /// Polls the log until `found` picks a value out of it (e.g. the address printed in
    /// `listening on ADDR`). Fails early when the process exits, and after `timeout`, naming
    /// `what` and showing the log.
    pub async fn wait_log<T>(
        &mut self,
        timeout: Duration,
        what: &str,
        mut found: impl FnMut(&str) -> Option<T>,
    ) -> Result<T> {
        let waited = try_eventually(timeout, what, || {
            let found = match found(&self.log()) {
                Some(v) => Ok(Some(v)),
                None => match self.try_wait() {
                    Ok(Some(status)) => Err(anyhow::anyhow!(
                        "{} exited with {status} before {what}",
                        self.name
                    )),
                    Ok(None) => Ok(None),
                    Err(e) => Err(e),
                },
            };
            std::future::ready(found)
        })
        .await;
        waited.map_err(|e| anyhow::anyhow!("{e:#}; {} log:\n{}", self.name, self.log()))
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(child) = self.child.as_mut() {
            if let Ok(None) = child.try_wait() {
                // A stopped process still dies of SIGKILL.
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }

    /// SIGTERM, then wait up to `timeout` for a graceful exit (SIGKILL after that).
    pub async fn terminate(&mut self, timeout: Duration) -> Result<ExitStatus> {
        if let Ok(None) = self.try_wait() {
            self.signal(Signal::SIGTERM)?;
        }
        match self.wait_exit(timeout).await {
            Ok(status) => Ok(status),
            Err(e) => {
                self.kill();
                Err(e)
            }
        }
    }

    /// SIGKILL to the process and every process of its group (its own children, such as a browser's helper
    /// processes), then reap it.
    pub fn kill_group(&mut self) {
        if let Some(pid) = self.pid() {
            let _ = nix::sys::signal::killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        self.kill();
    }

    /// Starts the same command again (after it exited or was killed).
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        self.start()
    }

    /// The last `lines` lines of the log, for failure reports.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for ManagedProcess {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "----- {} log ({}), last 60 lines -----\n{}\n----- end of {} -----",
                self.name,
                self.log.display(),
                self.log_tail(60),
                self.name
            );
        }
        self.kill();
    }
}
