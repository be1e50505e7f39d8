//! `cargo xtask fuzz`: every cargo-fuzz target in `fuzz/`, one after the other on one core, each
//! on its corpus in `fuzz/corpus/<target>/`, then a table of libFuzzer's final statistics.
//!
//! Needs the nightly toolchain (cargo-fuzz instruments with sanitizers); installs cargo-fuzz when
//! it is missing. New inputs go to `fuzz/target/corpus/<target>/`, crash inputs to
//! `fuzz/artifacts/<target>/` (both gitignored). The committed corpus is also replayed on stable
//! by `cargo test` (each crate's `tests/fuzz_corpus.rs`).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use testkit::workspace_root;

/// The targets in `fuzz/Cargo.toml`, in the order they run.
pub const TARGETS: [&str; 5] = ["frame", "heartbeat", "config", "chunked", "host"];

/// Options of `cargo xtask fuzz`.
#[derive(Args, Debug)]
pub struct FuzzArgs {
    /// How long to fuzz each target, in seconds (builds not counted).
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Fuzz only this target.
    #[arg(long, value_parser = TARGETS)]
    target: Option<String>,
}

/// What libFuzzer reported at the end of one run.
#[derive(Debug, Default, PartialEq)]
struct Stats {
    executions: Option<u64>,
    exec_per_sec: Option<u64>,
    corpus: Option<String>,
    artifact: Option<String>,
}

pub fn run(args: FuzzArgs) -> Result<()> {
    let fuzz_dir = workspace_root().join("fuzz");
    require_nightly()?;
    ensure_cargo_fuzz()?;
    let targets: Vec<&str> = match &args.target {
        Some(one) => vec![one.as_str()],
        None => TARGETS.to_vec(),
    };
    let mut rows = Vec::new();
    for target in targets {
        eprintln!("== fuzzing {target} for {}s", args.seconds);
        let started = Instant::now();
        let (stats, success) = fuzz_one(&fuzz_dir, target, args.seconds)?;
        eprintln!("== {target} done in {:.0?}", started.elapsed());
        rows.push((target, stats, success));
    }

    println!(
        "{:<10} {:>14} {:>9} {:>18}  result",
        "target", "executions", "exec/s", "corpus"
    );
    let mut failures = Vec::new();
    for (target, stats, success) in &rows {
        let show = |n: Option<u64>| n.map_or("?".to_owned(), |n| n.to_string());
        let result = match (&stats.artifact, success) {
            (Some(artifact), _) => format!("CRASH: {artifact}"),
            (None, true) => "ok".to_owned(),
            (None, false) => "FAILED (see the log above)".to_owned(),
        };
        println!(
            "{:<10} {:>14} {:>9} {:>18}  {result}",
            target,
            show(stats.executions),
            show(stats.exec_per_sec),
            stats.corpus.as_deref().unwrap_or("?"),
        );
        if result != "ok" {
            failures.push(format!("{target}: {result}"));
        }
    }
    if !failures.is_empty() {
        bail!("fuzzing found problems: {}", failures.join("; "));
    }
    Ok(())
}

/// `cargo` through rustup, so that `+nightly` works: `$CARGO` is the stable cargo itself.
fn cargo() -> Command {
    let mut cmd = Command::new("cargo");
    // Leave nothing from this (stable) cargo run that could steer the nightly one; the fuzz
    // crate builds into its own fuzz/target, away from the workspace's stable artefacts.
    for var in [
        "CARGO",
        "RUSTC",
        "RUSTDOC",
        "RUSTUP_TOOLCHAIN",
        "CARGO_TARGET_DIR",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

fn require_nightly() -> Result<()> {
    let ok = cargo()
        .args(["+nightly", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        bail!(
            "expected the nightly toolchain (cargo-fuzz needs it), found none: \
             install it with `rustup toolchain install nightly`"
        );
    }
    Ok(())
}

fn ensure_cargo_fuzz() -> Result<()> {
    let present = cargo()
        .args(["+nightly", "fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if present {
        return Ok(());
    }
    eprintln!("== cargo-fuzz is missing: installing it with `cargo install cargo-fuzz --locked`");
    let status = cargo()
        .args(["install", "cargo-fuzz", "--locked"])
        .status()
        .context("running cargo install cargo-fuzz")?;
    if !status.success() {
        bail!("cargo install cargo-fuzz --locked failed ({status})");
    }
    Ok(())
}

/// Runs one target, echoing libFuzzer's output to stderr; returns its final statistics and
/// whether the run ended well.
fn fuzz_one(fuzz_dir: &Path, target: &str, seconds: u64) -> Result<(Stats, bool)> {
    // libFuzzer adds what it finds to the first directory: a scratch one (gitignored, kept
    // between runs), so the committed seeds in fuzz/corpus stay small and change only by hand.
    let scratch = fuzz_dir.join("target").join("corpus").join(target);
    let seeds = fuzz_dir.join("corpus").join(target);
    let artifacts: PathBuf = fuzz_dir.join("artifacts").join(target);
    for dir in [&scratch, &seeds, &artifacts] {
        std::fs::create_dir_all(dir)?;
    }
    let mut child = cargo()
        .current_dir(fuzz_dir)
        .args(["+nightly", "fuzz", "run", target])
        .arg(&scratch)
        .arg(&seeds)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg("-print_final_stats=1")
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running cargo +nightly fuzz run {target}"))?;
    let stderr = child.stderr.take().expect("piped above");
    let mut stats = Stats::default();
    for line in BufReader::new(stderr).lines() {
        let line = line?;
        eprintln!("{line}");
        stats.read(&line);
    }
    let status = child.wait()?;
    Ok((stats, status.success()))
}

impl Stats {
    /// Takes what it can from one line of libFuzzer output; later lines win.
    fn read(&mut self, line: &str) {
        // Status lines: `#12345\tDONE   cov: 310 ft: 900 corp: 57/3911b lim: 4096 exec/s: 2057 rss: 40Mb`
        if let Some(rest) = line.strip_prefix('#') {
            let mut words = rest.split_whitespace();
            if let Some(n) = words.next().and_then(|n| n.parse().ok()) {
                self.executions = Some(n);
            }
            let words: Vec<&str> = line.split_whitespace().collect();
            for pair in words.windows(2) {
                match pair[0] {
                    "corp:" => self.corpus = Some(pair[1].to_owned()),
                    "exec/s:" => self.exec_per_sec = pair[1].parse().ok(),
                    _ => {}
                }
            }
        } else if let Some(n) = line.strip_prefix("stat::number_of_executed_units:") {
            self.executions = n.trim().parse().ok().or(self.executions);
        } else if let Some(n) = line.strip_prefix("stat::average_exec_per_sec:") {
            self.exec_per_sec = n.trim().parse().ok().or(self.exec_per_sec);
        } else if let Some((_, path)) = line.split_once("Test unit written to ") {
            self.artifact = Some(path.trim().to_owned());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_libfuzzer_status_final_stats_and_artifacts() {
        let mut stats = Stats::default();
        for line in [
            "INFO: Seed: 1234",
            "#2\tINITED cov: 10 ft: 11 corp: 4/120b exec/s: 0 rss: 30Mb",
            "#1048576\tpulse  cov: 300 ft: 800 corp: 50/3Kb lim: 4096 exec/s: 349525 rss: 40Mb",
            "#1200000\tDONE   cov: 310 ft: 900 corp: 57/3911b lim: 4096 exec/s: 2057 rss: 40Mb",
            "Done 1200000 runs in 601 second(s)",
            "stat::number_of_executed_units: 1200001",
            "stat::average_exec_per_sec:     1996",
            "stat::new_units_added:          53",
        ] {
            stats.read(line);
        }
        assert_eq!(
            stats,
            Stats {
                executions: Some(1_200_001),
                exec_per_sec: Some(1996),
                corpus: Some("57/3911b".into()),
                artifact: None,
            }
        );
        stats.read("artifact_prefix='a/'; Test unit written to a/crash-0123abcd");
        assert_eq!(stats.artifact.as_deref(), Some("a/crash-0123abcd"));
    }
}
