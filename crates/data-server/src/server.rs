//! Running the data-server: bind, announce, serve, and shut down in the order of ARCHITECTURE.md §4.8
//! (leaving heartbeat, deregistration delay, stop accepting, drain in-flight requests).

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::time::Duration;

use discovery::{Announcer, AnnouncerConfigError, KeyError};
use svc::{Shutdown, with_timeout};
use tokio::net::TcpListener;

use crate::app::{AppState, app};
use crate::config::Config;

/// Bound on flushing the nsqd connections at exit.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Why the server could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// `server.listen`.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The bound address could not be read back.
    #[error("cannot read the bound address: {0}")]
    LocalAddr(std::io::Error),
    /// The HMAC key file could not be read.
    #[error("announce.hmac_key_file: {0}")]
    Key(#[from] KeyError),
    /// The `[nsq]` settings could not be loaded (TLS files, AUTH secret).
    #[error("nsq: {0}")]
    Nsq(String),
    /// The announcer refused its settings.
    #[error(transparent)]
    Announcer(#[from] AnnouncerConfigError),
    /// The sidecar's health URL could not be parsed.
    #[error("health URL: {0}")]
    HealthClient(String),
    /// The HTTP server failed.
    #[error("HTTP server: {0}")]
    Serve(std::io::Error),
}

/// Binds `server.listen` and serves until `shutdown` triggers, then leaves gracefully.
pub async fn run(config: Config, shutdown: Shutdown) -> Result<(), ServerError> {
    let addr = config.server.listen;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { addr, source })?;
    serve(config, listener, shutdown).await
}

/// Serves on an already bound listener until `shutdown` triggers.
///
/// Prints `listening on ADDR` (the bound address) on stdout once it accepts connections, so
/// scripts and tests can find a port chosen by the OS.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: Shutdown,
) -> Result<(), ServerError> {
    let bound = listener.local_addr().map_err(ServerError::LocalAddr)?;
    let advertise = config.advertise_for(bound);
    let id = config.id_or_generated("data-server");
    let key = config.hmac_key()?;
    let mut announce = config.announcer_config(id.clone(), advertise.clone(), key);
    announce.producer.conn = config.nsq.conn().map_err(ServerError::Nsq)?;
    let announcer = Announcer::new(announce)?;
    let state = AppState::with_limits(
        id.clone(),
        advertise.clone(),
        Some(announcer.clone()),
        config.data.limits(),
    );
    state.set_added_latency(config.server.added_latency.get());

    let stop_serving = Shutdown::new();
    let server = axum::serve(listener, app(state.clone()))
        .with_graceful_shutdown(stop_serving.wait())
        .into_future();
    let mut server = tokio::spawn(server);
    let health = state.clone();
    // The loop ends with `leave()`; shutdown order is driven from here, not by the loop.
    let heartbeats = announcer.spawn(move || health.is_ready(), std::future::pending());
    let ready = state.clone();
    let responder = answer_solicitations(&config, &announcer, move || ready.is_ready());
    println!("listening on {bound}");
    tracing::info!(%id, %advertise, nsqd = ?announcer.config().nsqd_tcp_addresses, "data-server listening on {bound}");

    tokio::select! {
        () = shutdown.wait() => {}
        result = &mut server => {
            drop(responder);
            // The server stopped by itself: still leave, so nobody routes here.
            let _ = announcer.leave().await;
            heartbeats.abort();
            return match result {
                Ok(Ok(())) => Ok(()),
                Ok(Err(err)) => Err(ServerError::Serve(err)),
                Err(join) => Err(ServerError::Serve(std::io::Error::other(join))),
            };
        }
    }

    let limit = config.shutdown_timeout();
    // 1. Leaving heartbeat first, so api-servers stop sending before the listener closes.
    let left = leave(&announcer, &config).await;
    state.set_ready(false);
    heartbeats.abort();
    // 2. Still serving while api-servers take the leave in: until they do, they may send a request on a pooled
    // connection, which must not meet a closing listener. Without an accepted leave they route here until the
    // TTL whatever we do, so no wait then.
    let mut ended = None;
    if left {
        tokio::select! {
            () = tokio::time::sleep(config.deregister_delay()) => {}
            result = &mut server => ended = Some(result),
        }
    }
    // 3. and 4. Stop accepting, then drain what is in flight.
    stop_serving.trigger();
    let drained = match ended {
        Some(result) => Ok(result),
        None => with_timeout(&mut server, limit).await,
    };
    match drained {
        Ok(Ok(Ok(()))) => tracing::info!("in-flight requests drained; exiting"),
        Ok(Ok(Err(err))) => tracing::warn!("HTTP server: {err}"),
        Ok(Err(join)) => tracing::warn!("HTTP server task: {join}"),
        Err(timeout) => tracing::warn!("draining in-flight requests: {timeout}; exiting anyway"),
    }
    // The solicitation consumer last: its stop waits on nsqd (up to CLOSE_TIMEOUT) and must hold back neither the
    // leaving heartbeat nor the drain; a solicited `up` after the leave is refused by the announcer.
    if let Some(responder) = responder {
        responder.stop(CLOSE_TIMEOUT).await;
    }
    announcer.close(CLOSE_TIMEOUT).await;
    Ok(())
}

/// Announces that this server is leaving, tried again while every nsqd refuses it (one briefly down) for at most
/// [`Config::leave_limit`]; whether an nsqd took it.
pub(crate) async fn leave(announcer: &Announcer, config: &Config) -> bool {
    let limit = config.leave_limit();
    match with_timeout(announcer.leave_within(limit), limit).await {
        Ok(Ok(nsqd)) => {
            tracing::debug!(%nsqd, "left");
            true
        }
        Ok(Err(err)) => {
            tracing::warn!("could not announce leaving: {err}");
            false
        }
        Err(timeout) => {
            tracing::warn!("leaving heartbeat: {timeout}");
            false
        }
    }
}

/// Subscribes to solicitations when `announce.answer_solicitations` is on. A failure is logged and costs only the
/// solicited heartbeats: the periodic ones go on.
pub(crate) fn answer_solicitations(
    config: &Config,
    announcer: &Announcer,
    health: impl discovery::Health,
) -> Option<discovery::Responder> {
    if !config.announce.answer_solicitations {
        return None;
    }
    let mut cfg = discovery::SolicitationConfig::for_announcer(announcer);
    cfg.topic = config.announce.solicit_topic();
    match announcer.answer_solicitations(cfg, health) {
        Ok(responder) => Some(responder),
        Err(err) => {
            tracing::warn!(
                "cannot subscribe to solicitations: {err}; heartbeats still go out on schedule"
            );
            None
        }
    }
}
