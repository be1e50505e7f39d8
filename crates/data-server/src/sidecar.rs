//! Sidecar mode: announces a service written in another language, at an address it gives,
//! while that service's health URL answers 2xx; announces `leaving` when stopped.
//!
//! `data-server sidecar --advertise 10.0.0.5:8080 --health-url http://127.0.0.1:8080/health -c sidecar.toml`
//! reads the same `[announce]` (and `server.id`, `[shutdown]`, `[sidecar]`) keys as the server.

use std::time::Duration;

use bytes::Bytes;
use discovery::{Announcer, AsyncHealth};
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use svc::{HostPort, Shutdown};

use crate::config::Config;
use crate::server::ServerError;

/// Announces `advertise` while `health_url` answers 2xx, until `shutdown` triggers; then sends
/// `leaving`.
pub async fn run_sidecar(
    config: Config,
    advertise: HostPort,
    health_url: String,
    shutdown: Shutdown,
) -> Result<(), ServerError> {
    let id = config.id_or_generated("sidecar");
    let key = config.hmac_key()?;
    let addr = advertise.to_string();
    let mut announce = config.announcer_config(id.clone(), addr.clone(), key);
    announce.producer.conn = config.nsq.conn().map_err(ServerError::Nsq)?;
    let announcer = Announcer::new(announce)?;
    let uri: http::Uri = health_url
        .parse()
        .map_err(|e| ServerError::HealthClient(format!("{health_url:?}: {e}")))?;
    // hyper-util's pooled client, plain HTTP only (main refuses https:// health URLs).
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let timeout = config.sidecar.health_timeout.get();
    let health = AsyncHealth(move || {
        let probe = client.get(uri.clone());
        async move {
            match tokio::time::timeout(timeout, probe).await {
                Ok(Ok(response)) => response.status().is_success(),
                Ok(Err(err)) => {
                    tracing::debug!("health probe failed: {err}");
                    false
                }
                Err(_) => {
                    tracing::debug!("health probe: no answer within {timeout:?}");
                    false
                }
            }
        }
    });
    let responder = crate::server::answer_solicitations(&config, &announcer, health.clone());
    let heartbeats = announcer.spawn(health, std::future::pending());
    println!("announcing {addr} as {id} while {health_url} answers 2xx");
    tracing::info!(%id, %addr, %health_url, "sidecar started");
    shutdown.wait().await;
    crate::server::leave(&announcer, &config).await;
    // After the leave, which its stop (waiting on nsqd) must not delay; the announcer refuses a later `up`.
    if let Some(responder) = responder {
        responder.stop(Duration::from_secs(1)).await;
    }
    heartbeats.abort();
    announcer.close(Duration::from_secs(1)).await;
    Ok(())
}
