//! `cargo xtask up`: the whole stack on this machine, no Docker. Ctrl-C stops it gracefully.

use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use testkit::{Stack, StackOptions, nsq_bin_dir, workspace_root};

/// Options of `cargo xtask up`.
#[derive(Args, Debug)]
pub struct UpArgs {
    /// Number of data servers.
    #[arg(long, default_value_t = 3)]
    data_servers: usize,
    /// Number of nsqd.
    #[arg(long, default_value_t = 2)]
    nsqd: usize,
    /// Pick free ports instead of the standard ones (NSQ's, proxy 8080, admin 8081).
    #[arg(long)]
    free_ports: bool,
    /// Directory for the archive database and the logs (default: target/stack).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Where the archiver stores: a SQLite file in the state directory, or a throwaway
    /// PostgreSQL server (Debian's `postgresql` package; removed at Ctrl-C).
    #[arg(long, value_enum, default_value_t = crate::bench::ArchiveBackend::Sqlite)]
    archive: crate::bench::ArchiveBackend,
}

pub fn run(args: UpArgs) -> Result<()> {
    eprintln!("== building NSQ (first time only) and the project binaries");
    let nsq = nsq_bin_dir()?;
    eprintln!("   NSQ binaries: {}", nsq.display());
    let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .current_dir(workspace_root())
        .args(["build", "--workspace", "--bins"])
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("cargo build failed");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        eprintln!(
            "== starting nsqlookupd, {} nsqd, nsqadmin, archiver, api-server, {} data servers",
            args.nsqd, args.data_servers
        );
        let state_dir = args
            .state_dir
            .unwrap_or_else(|| testkit::target_dir().join("stack"));
        // Started before the stack and dropped after it, so the archiver never loses it.
        let postgres = match args.archive {
            crate::bench::ArchiveBackend::Sqlite => None,
            crate::bench::ArchiveBackend::Postgres => Some(testkit::Postgres::start().await?),
        };
        let archiver_sets = postgres.as_ref().map_or_else(Vec::new, |pg| {
            vec![
                format!("archive.database={}", pg.url()),
                format!(
                    "archive.database_password_file={}",
                    pg.password_file().display()
                ),
            ]
        });
        let mut stack = Stack::start(StackOptions {
            archiver_sets,
            nsqd: args.nsqd,
            data_servers: args.data_servers,
            standard_ports: !args.free_ports,
            announce_interval: "2s".into(),
            ttl: "6s".into(),
            state_dir: Some(state_dir.clone()),
            ..Default::default()
        })
        .await?;
        print_table(&mut stack, postgres.as_ref(), &state_dir);
        println!();
        println!(
            "try: curl {}/whoami    (Ctrl-C stops everything)",
            stack.proxy_url()
        );
        let stop = Arc::new(AtomicBool::new(false));
        // NSQ's daemons log every HTTP request; their logs stay in the state directory.
        let followers: Vec<_> = stack
            .logs()
            .into_iter()
            .filter(|(name, _)| !name.starts_with("nsq"))
            .map(|(name, path)| {
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || follow(&name, &path, &stop))
            })
            .collect();
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        eprintln!("== stopping: data servers (leaving), api-server, archiver, NSQ");
        let result = stack.shutdown().await;
        stop.store(true, Ordering::Relaxed);
        for f in followers {
            let _ = f.join();
        }
        result?;
        drop(postgres);
        eprintln!("== stopped; no process left behind");
        Ok(())
    })
}

/// Prints the lines appended to `path`, each prefixed with `name`, until `stop`.
fn follow(name: &str, path: &std::path::Path, stop: &AtomicBool) {
    let Ok(mut file) = std::fs::File::open(path) else {
        return;
    };
    // Start at the end: what was written during start-up is noise once the table is shown.
    let _ = file.seek(SeekFrom::End(0));
    let mut reader = BufReader::new(file);
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) => {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            Ok(_) => print!("{name:>11} | {line}"),
            Err(_) => return,
        }
    }
}

/// One row of the table `up` prints: what, its process's pid (blank for a file), where.
fn row(name: &str, pid: Option<u32>, place: impl std::fmt::Display) {
    let pid = pid.map_or_else(String::new, |p| p.to_string());
    println!("  {name:<12} {pid:<8} {place}");
}

/// The URL table, one row per service with its pid, so a data server can be picked by pid (the
/// README's walkthrough stops one with `kill <pid>`).
fn print_table(stack: &mut Stack, postgres: Option<&testkit::Postgres>, state_dir: &Path) {
    println!();
    println!("  {:<12} {:<8} address", "service", "pid");
    let api = stack.api.process().pid();
    row("proxy", api, stack.proxy_url());
    row("dashboard", api, stack.dashboard_url());
    row(
        "registry",
        api,
        format!("{}registry", stack.dashboard_url()),
    );
    for i in 0..stack.data.len() {
        let data = &mut stack.data[i];
        let place = format!("http://{}/", data.listen_addr());
        let id = data.id().to_owned();
        row(&id, data.process().pid(), place);
    }
    row(
        "nsqadmin",
        stack.cluster.nsqadmin_pid(),
        stack.nsqadmin_url(),
    );
    let lookupd = format!("http://{}/", stack.cluster.lookupd_http());
    row("nsqlookupd", stack.cluster.lookupd_pid(), lookupd);
    for i in 0..stack.cluster.len() {
        let place = format!(
            "tcp {}  http http://{}/",
            stack.cluster.nsqd_tcp(i),
            stack.cluster.nsqd_http(i)
        );
        row(&format!("nsqd{i}"), stack.cluster.nsqd_pid(i), place);
    }
    let archive = match postgres {
        Some(pg) => format!(
            "{} (password in {})",
            pg.url(),
            pg.password_file().display()
        ),
        None => stack.archive_db().display().to_string(),
    };
    row("archiver", stack.archiver_pid(), archive);
    row("arch metrics", None, stack.archiver_metrics_url());
    row("state", None, state_dir.display());
    row(
        "hmac key",
        None,
        format!(
            "{} (made on first start; heartbeats are signed)",
            stack.key_file().display()
        ),
    );
}
