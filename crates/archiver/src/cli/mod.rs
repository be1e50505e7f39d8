//! The `archiver` command line: `run`, `replay`, `query`, `stats`.

mod config;
mod lag;
mod metrics;
mod progress;
mod query;
mod replay;
mod retention;
mod run;
mod time;
mod writer;

use std::process::ExitCode;

use archiver::{Archive, StoreError};
use clap::{Parser, Subcommand};
use svc::{ConfigArgs, ConfigError};

use config::Config;

/// Exit status of a problem the operator must fix: bad config, database or topic name.
const SETUP_EXIT: u8 = 2;

/// Archives NSQ topics into SQLite or PostgreSQL through a durable channel, and replays them.
#[derive(Debug, Parser)]
#[command(
    name = "archiver",
    version = svc::long_version(),
    after_help = footer()
)]
pub struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Archive `archive.topics` until SIGTERM / SIGINT
    #[command(after_help = footer())]
    Run {
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Re-publish archived messages of a time range to a topic, in original order (resumable)
    #[command(after_help = footer())]
    Replay {
        #[command(flatten)]
        config: ConfigArgs,
        #[command(flatten)]
        args: replay::ReplayArgs,
    },
    /// Print archived messages of a range as JSON lines
    #[command(after_help = footer())]
    Query {
        #[command(flatten)]
        config: ConfigArgs,
        #[command(flatten)]
        args: query::QueryArgs,
    },
    /// Print counts per topic, first and last times, database size
    #[command(after_help = footer())]
    Stats {
        #[command(flatten)]
        config: ConfigArgs,
        #[command(flatten)]
        args: query::StatsArgs,
    },
}

/// A problem the operator must fix, already one complete line: exits 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Setup(pub String);

impl Cli {
    /// Runs the chosen command and maps failures to exit statuses: 2 for setup problems
    /// (config, database, topic names), 1 for anything else.
    pub fn main(self) -> ExitCode {
        svc::init_tracing("info");
        let result = match self.command {
            Cmd::Run { config } => load(&config).and_then(|c| {
                let name = config_name(&config);
                block_on(run::run(c, &name))
            }),
            Cmd::Replay { config, args } => load(&config).and_then(|c| {
                block_on(replay::replay(c, args)).map(|done| {
                    if !done {
                        std::process::exit(1);
                    }
                })
            }),
            Cmd::Query { config, args } => load(&config).and_then(|c| query::query(c, args)),
            Cmd::Stats { config, args } => load(&config).and_then(|c| query::stats(c, args)),
        };
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) if is_setup(&err) => {
                eprintln!("error: {err}");
                ExitCode::from(SETUP_EXIT)
            }
            Err(err) => {
                eprintln!("error: {err:#}");
                ExitCode::FAILURE
            }
        }
    }
}

/// The end of `--help` of the archiver and each command (an example of its own keys).
fn footer() -> String {
    svc::help_footer(config::ENV_PREFIX, "archive.batch_size=1000")
}

fn is_setup(err: &anyhow::Error) -> bool {
    err.is::<Setup>() || err.is::<StoreError>() || err.is::<ConfigError>()
}

fn load(args: &ConfigArgs) -> anyhow::Result<Config> {
    Ok(args.loader(config::ENV_PREFIX).load::<Config>()?)
}

fn config_name(args: &ConfigArgs) -> String {
    args.config.as_ref().map_or_else(
        || "config (no file given)".to_owned(),
        |p| p.display().to_string(),
    )
}

fn block_on<T>(fut: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(fut)
}

/// Opens the configured database for reading commands, refusing to create a missing one.
fn open_existing(config: &Config) -> anyhow::Result<Box<dyn Archive>> {
    Ok(config.archive.database().open_existing()?)
}
