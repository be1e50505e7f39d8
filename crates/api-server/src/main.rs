//! `api-server`: heartbeat discovery over NSQ and a load-balancing reverse proxy.

use clap::Parser;

/// Discovers data servers from NSQ heartbeats and reverse-proxies HTTP to them.
#[derive(Debug, Parser)]
#[command(
    name = "api-server",
    version = svc::long_version(),
    after_help = svc::help_footer("API_SERVER", "discovery.ttl=10s")
)]
struct Args {
    #[command(flatten)]
    config: svc::ConfigArgs,
}

fn main() -> anyhow::Result<()> {
    limit_malloc_arenas();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(serve())
}

/// glibc gives every thread that allocates its own malloc arena (up to 8 per core); a registry
/// of 10,000 servers churned by several runtime threads then keeps ~30 MB of fragmented arenas
/// (measured with `cargo xtask bench registry-scale`). One arena keeps the peak RSS within budget
/// (the CPU cost is within the noise of that benchmark).
fn limit_malloc_arenas() {
    // SAFETY: called first thing in main, before any other thread exists; mallopt only adjusts
    // allocator settings.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

async fn serve() -> anyhow::Result<()> {
    let args = Args::parse();
    let config: api_server::Config = args
        .config
        .loader("API_SERVER")
        .load()
        .unwrap_or_else(|err| svc::exit_on_config_error(err));
    svc::init_tracing("info");
    let shutdown = svc::Shutdown::new();
    // A first SIGTERM/SIGINT drains, a second exits at once with svc::FORCED_EXIT_CODE.
    shutdown.trigger_on_signal();
    let origin = args.config.config.as_ref().map_or_else(
        || "config (no file given)".to_owned(),
        |p| p.display().to_string(),
    );
    let result = api_server::run(config, shutdown, |at| {
        // One line each, on stdout, so that scripts and tests can read the bound ports.
        println!("proxy listening on http://{}", at.proxy);
        println!("admin listening on http://{}", at.admin);
    })
    .await;
    match result {
        Ok(()) => Ok(()),
        Err(err @ api_server::RunError::Config { .. }) => {
            eprintln!("error: {origin}: {err}");
            std::process::exit(svc::CONFIG_ERROR_EXIT_CODE)
        }
        Err(err) => Err(err.into()),
    }
}
