//! `data-server`: parses flags and config, then runs the server or the sidecar.

use anyhow::Context;
use clap::{Parser, Subcommand};
use data_server::{Config, ENV_PREFIX};
use svc::{ConfigArgs, HostPort, Shutdown};

/// HTTP data service that announces itself over NSQ while healthy, and `leaving` on shutdown.
#[derive(Debug, Parser)]
#[command(
    name = "data-server",
    version = svc::long_version(),
    after_help = svc::help_footer(ENV_PREFIX, "announce.interval=2s")
)]
struct Cli {
    #[command(flatten)]
    config: ConfigArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Announce another service (any language) at ADDR while its health URL answers 2xx.
    #[command(after_help = svc::help_footer(ENV_PREFIX, "announce.interval=2s"))]
    Sidecar {
        /// Address clients reach the service at (host:port).
        #[arg(long, value_name = "HOST:PORT")]
        advertise: HostPort,
        /// URL probed before every heartbeat; only a 2xx answer counts as healthy.
        #[arg(long, value_name = "URL")]
        health_url: String,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Write a new random 256-bit HMAC key for signing heartbeats to FILE (mode 0600; never overwrites).
    Keygen {
        /// Where to write the key.
        #[arg(long, value_name = "FILE")]
        out: std::path::PathBuf,
        /// Keep an existing FILE and succeed (for start scripts that run every time).
        #[arg(long)]
        if_missing: bool,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Command::Keygen { out, if_missing }) = &cli.command {
        match data_server::keygen(out, *if_missing) {
            Ok(data_server::Keygen::Written { kid }) => {
                println!("wrote a new key to {} (kid {kid})", out.display())
            }
            Ok(data_server::Keygen::Kept) => println!("kept the existing key {}", out.display()),
            Err(err) => {
                eprintln!("error: {err}");
                std::process::exit(1);
            }
        }
        return Ok(());
    }
    let args = match &cli.command {
        Some(Command::Sidecar { config, .. })
            if config.config.is_some() || !config.set.is_empty() =>
        {
            let mut merged = cli.config.clone();
            merged.config = config.config.clone().or(merged.config);
            merged.set.extend(config.set.iter().cloned());
            merged
        }
        _ => cli.config.clone(),
    };
    let config: Config = args
        .loader(ENV_PREFIX)
        .load()
        .unwrap_or_else(|err| svc::exit_on_config_error(err));
    if let Some(Command::Sidecar { health_url, .. }) = &cli.command {
        // https:// is refused here rather than failing every probe later: the probe client is built without TLS
        // (a health URL is normally the service's own port on loopback).
        if !health_url.starts_with("http://") {
            let why = if health_url.starts_with("https://") {
                " (https:// is not supported: probe the service over http://, e.g. on loopback)"
            } else {
                ""
            };
            eprintln!("error: --health-url: expected an http:// URL, found {health_url:?}{why}");
            std::process::exit(svc::CONFIG_ERROR_EXIT_CODE);
        }
    }
    svc::init_tracing("info");
    let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    runtime.block_on(async move {
        let shutdown = Shutdown::new();
        // A first SIGTERM/SIGINT drains, a second exits at once with svc::FORCED_EXIT_CODE.
        shutdown.trigger_on_signal();
        let result = match cli.command {
            None => data_server::run(config, shutdown).await,
            Some(Command::Sidecar {
                advertise,
                health_url,
                ..
            }) => data_server::run_sidecar(config, advertise, health_url, shutdown).await,
            // Handled before the config is loaded, and returned from there.
            Some(Command::Keygen { .. }) => Ok(()),
        };
        anyhow::Ok(result?)
    })?;
    Ok(())
}
