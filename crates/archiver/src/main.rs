//! `archiver`: keeps every message of chosen NSQ topics in SQLite or PostgreSQL, and replays them.
//! See `archiver --help` and `config/archiver.toml`.

mod cli;

use clap::Parser;

fn main() -> std::process::ExitCode {
    cli::Cli::parse().main()
}
