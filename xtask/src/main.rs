//! `cargo xtask …`: the project's own commands.

mod bench;
mod fuzz;
mod soak;
mod up;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "nsq-discovery project commands")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build nsqd, nsqlookupd, nsqadmin, to_nsq, nsq_tail, bench_reader and bench_writer from
    /// tools/nsq into target/nsq/bin/ (skipped when already built) and print the directory.
    Nsq {
        /// Rebuild even when a build of the pinned version is present.
        #[arg(long)]
        force: bool,
    },
    /// Run the whole stack locally (nsqlookupd, 2 nsqd, nsqadmin, archiver, api-server, data
    /// servers); prints the URLs; Ctrl-C stops everything gracefully.
    Up(up::UpArgs),
    /// Run one benchmark against its named peer, side by side (`--json` for one JSON object).
    Bench(bench::BenchArgs),
    /// Steady load through the proxy while system faults are injected at random (seeded), one
    /// at a time; prints requests, failures, joins, leaves, expiries, false expiries and
    /// archived vs published (`--json` for one object); fails unless all hold.
    Soak(soak::SoakArgs),
    /// Fuzz the frame, heartbeat and config targets in fuzz/ one after the other on their
    /// corpora (nightly; installs cargo-fuzz if missing); prints executions, exec/s and corpus
    /// size per target and fails on a crash, naming its input.
    Fuzz(fuzz::FuzzArgs),
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Nsq { force } => {
            let dir = testkit::build_nsq(force)?;
            println!("{}", dir.display());
            Ok(())
        }
        Cmd::Bench(args) => bench::run(args),
        Cmd::Up(args) => up::run(args),
        Cmd::Soak(args) => soak::run(args),
        Cmd::Fuzz(args) => fuzz::run(args),
    }
}
