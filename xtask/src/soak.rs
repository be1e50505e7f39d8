//! `cargo xtask soak --minutes N`: the whole stack under steady load through the proxy while
//! faults of the system suite (tests/faults.rs) are injected at random, one at a time, each
//! repaired and followed by convergence and a calm spell. Ends with a table (or `--json`).
//!
//! Pass rule (exit status 0): zero failed requests, zero false expiries, and every heartbeat
//! the data servers counted as published is in the archive (archived == published, none
//! missing). A connection refused while the api-server restarts sent nothing; the load retries
//! it (as a client of several api-servers would) and the table counts those retries apart.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Result, bail};
use clap::Args;
use testkit::{DURABLE_NSQD_ARGS, Fault, FaultRun, LoadOptions, SeededRng, StackOptions};

/// Options of `cargo xtask soak`.
#[derive(Args, Debug)]
pub struct SoakArgs {
    /// How long to run.
    #[arg(long, default_value_t = 10.0)]
    pub minutes: f64,
    /// Seed of the fault schedule (default: the clock; printed so a run can be replayed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Data servers.
    #[arg(long, default_value_t = 3)]
    pub data_servers: usize,
    /// nsqd.
    #[arg(long, default_value_t = 2)]
    pub nsqd: usize,
    /// Concurrent keep-alive clients of the load.
    #[arg(long, default_value_t = 4)]
    pub clients: usize,
    /// Leave these faults out (repeatable, e.g. `--skip api-server-restart`); names as in the
    /// fault list printed at the end.
    #[arg(long, value_name = "FAULT")]
    pub skip: Vec<String>,
    /// Print one JSON object on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// Runs the soak; fails (non-zero exit) when the pass rule does not hold.
pub fn run(args: SoakArgs) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(soak(args))
}

async fn soak(args: SoakArgs) -> Result<()> {
    let seed = args.seed.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_secs())
    });
    let total = Duration::from_secs_f64(args.minutes.max(0.0) * 60.0);
    eprintln!(
        "soak: {:.1} min, seed {seed}, {} data servers, {} nsqd (replay with --seed {seed}){}",
        args.minutes,
        args.data_servers,
        args.nsqd,
        if args.skip.is_empty() {
            String::new()
        } else {
            format!(", skipping {:?}", args.skip)
        }
    );
    for name in &args.skip {
        if !Fault::ALL.iter().any(|f| f.name() == name) {
            bail!(
                "--skip {name}: no such fault; the faults are {:?}",
                Fault::ALL.map(Fault::name)
            );
        }
    }
    let faults: Vec<Fault> = Fault::ALL
        .into_iter()
        .filter(|f| !args.skip.iter().any(|s| s == f.name()))
        .collect();
    if faults.is_empty() {
        bail!("every fault is skipped");
    }
    let mut rng = SeededRng::new(seed);
    let opts = StackOptions {
        nsqd: args.nsqd,
        data_servers: args.data_servers,
        announce_interval: "1s".into(),
        ttl: "5s".into(),
        nsqd_args: DURABLE_NSQD_ARGS.iter().map(|s| s.to_string()).collect(),
        ..StackOptions::default()
    };
    let load = LoadOptions {
        clients: args.clients,
        pause: Duration::from_millis(5),
        retry_refused: Some(Duration::from_secs(30)),
        ..LoadOptions::default()
    };
    let mut run = FaultRun::start(opts, load).await?;
    // The soak's length counts from a running stack under load.
    let started = Instant::now();
    while started.elapsed() < total {
        // A calm spell of 2-6 s between faults.
        let calm = Duration::from_millis(2000 + rng.below(4000) as u64);
        tokio::time::sleep(calm.min(total.saturating_sub(started.elapsed()))).await;
        if started.elapsed() >= total {
            break;
        }
        let fault = faults[rng.below(faults.len())];
        run.inject(fault, &mut rng).await?;
    }
    let report = run.finish().await?;
    run.shutdown().await?;
    if args.json {
        let mut v = report.json();
        v["seed"] = seed.into();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("soak, seed {seed}:\n");
        println!("{}", report.table());
        for f in &report.faults {
            println!("- {f}");
        }
        if !report.failure_details.is_empty() {
            println!("\nfailed requests:");
            for f in &report.failure_details {
                println!("{f}");
            }
        }
        if !report.false_expiry_details.is_empty() {
            println!("\nfalse expiries: {:?}", report.false_expiry_details);
        }
        if !report.audit.missing.is_empty() {
            println!("\nmissing from the archive: {:?}", report.audit.missing);
        }
    }
    if !report.passed() {
        bail!(
            "soak failed: {} failed requests, {} false expiries, {} of {} published heartbeats archived",
            report.failures,
            report.false_expiries,
            report.audit.archived,
            report.audit.published
        );
    }
    Ok(())
}
