//! The binary's lifecycle ([`run`]): the listeners bound, the registry, subscription, canary and sweeper started,
//! the proxy engine handed its settings, metrics and balancer, and an orderly stop.

use std::net::SocketAddr;
use std::time::Duration;

use discovery::{Balancer, BalancerConfig, EventKind, HmacKey, Registry, RegistryConfig};
use hyper_util::service::TowerToHyperService;
use proxy::{ConnectionErrors, HttpLimits};
use svc::Shutdown;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::admin::admin_router;
use crate::admin_listener::serve_http1;
use crate::bus::Bus;
use crate::canary::{self, CanaryConfig};
use crate::config::ProxyConfig;
use crate::config::{ADMIN_MAX_CONNECTIONS, Config};
use crate::solicit::SolicitConfig;
use crate::state::{AppState, Metrics};

/// Why the api-server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A config value that only turned out bad when used (a key file, a listen address).
    #[error("{key}: {detail}")]
    Config {
        /// The dotted config key.
        key: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// Binding a listener failed.
    #[error("{key}: cannot listen on {addr}: {source}")]
    Bind {
        /// The dotted config key.
        key: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The NSQ subscription could not start.
    #[error("cannot subscribe to NSQ: {0}")]
    Nsq(#[from] nsq::Error),
    /// A listener failed while serving.
    #[error("serving failed: {0}")]
    Serve(std::io::Error),
}

/// The bound addresses, known once both listeners are open.
#[derive(Debug, Clone, Copy)]
pub struct Listening {
    /// Where the proxy listens.
    pub proxy: SocketAddr,
    /// Where the admin API listens.
    pub admin: SocketAddr,
}

/// Runs the api-server until `shutdown` fires, then drains within `shutdown.timeout`. `on_listen` is called once
/// both listeners are bound (main prints the addresses there).
pub async fn run(
    config: Config,
    shutdown: Shutdown,
    on_listen: impl FnOnce(Listening),
) -> Result<(), RunError> {
    // The key first: a bad key file is a config error, reported before anything listens.
    let d = &config.discovery;
    let hmac_keys = d
        .hmac_key_paths()
        .map(|path| {
            HmacKey::from_file(path).map_err(|err| RunError::Config {
                key: if d.hmac_key_file.as_ref() == Some(path) {
                    "discovery.hmac_key_file"
                } else {
                    "discovery.hmac_key_files"
                },
                detail: err.to_string(),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let bind = |key: &'static str, addr: SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| RunError::Bind { key, addr, source })
    };
    let proxy_listener = bind("server.listen", config.server.listen).await?;
    let admin_listener = bind("server.admin_listen", config.server.admin_listen).await?;
    let listening = Listening {
        proxy: proxy_listener.local_addr().map_err(RunError::Serve)?,
        admin: admin_listener.local_addr().map_err(RunError::Serve)?,
    };

    let mut registry_cfg = RegistryConfig::new(d.ttl.get());
    // The solicitation is signed with every key, so each data server finds the one it holds.
    registry_cfg.hmac_keys = hmac_keys.clone();
    registry_cfg.allowed_networks = d.allowed_networks.clone();
    // Our own addresses can never register: the proxy would send requests to itself.
    registry_cfg.self_addrs = vec![listening.proxy.to_string(), listening.admin.to_string()];
    let config_error = |key: &'static str| {
        move |err: discovery::ConfigError| RunError::Config {
            key,
            detail: err.to_string(),
        }
    };
    let registry = Registry::new(registry_cfg).map_err(config_error("discovery"))?;
    if registry.accepts_unauthenticated() {
        tracing::warn!(
            "unauthenticated heartbeats accepted: anyone who can publish to nsqd can send heartbeats for any id \
             (allowed_networks limits the addresses, not the senders); set discovery.hmac_key_files \
             (make a key with `data-server keygen --out FILE`)"
        );
    }
    // Before the subscription and the listeners: the first request may already route to the saved servers.
    let saved_servers = d
        .registry_file
        .as_ref()
        .map_or(0, |path| crate::saved_registry::load(path, &registry));
    let balancer = Balancer::new(
        registry.clone(),
        BalancerConfig {
            strategy: config.balancer.strategy,
            base_ejection: config.balancer.base_ejection.get(),
            max_ejection: config.balancer.max_ejection.get(),
            max_ejected_share: config.balancer.max_ejected_share,
            ..BalancerConfig::default()
        },
    )
    .map_err(config_error("balancer"))?;

    let instance = config.instance();
    let channel = config.channel(&instance);
    let bus = Bus::new(d.canary_timeout(), d.ttl.get(), Instant::now());
    let state = AppState::new(
        instance.clone(),
        balancer.clone(),
        bus.clone(),
        shutdown.clone(),
    );
    let lookupd: Vec<String> = d
        .lookupd_http_addresses
        .iter()
        .map(|a| a.to_string())
        .collect();
    let nsqd: Vec<String> = d.nsqd_tcp_addresses.iter().map(|a| a.to_string()).collect();
    let nsq_conn = config
        .nsq
        .conn()
        .map_err(|detail| RunError::Config { key: "nsq", detail })?;
    let consumer = discovery::subscribe(
        &discovery::SubscriptionConfig {
            topic: d.topic.clone(),
            channel: channel.clone(),
            lookupd_http_addresses: lookupd.clone(),
            nsqd_tcp_addresses: nsqd.clone(),
            lookupd_poll_interval: d.lookupd_poll_interval.get(),
            conn: nsq_conn.clone(),
        },
        registry.clone(),
    )?;
    state.set_heartbeat_consumer(consumer);
    tracing::info!(%instance, topic = %d.topic, %channel, strategy = config.balancer.strategy.as_str(), "subscribed");

    let mut tasks: Vec<JoinHandle<()>> = Vec::new();
    if d.solicit {
        let conns = state.clone();
        tasks.push(tokio::spawn(crate::solicit::solicit_at_start(
            SolicitConfig {
                topic: d.solicit_topic(),
                heartbeat_topic: d.topic.clone(),
                instance: instance.clone(),
                rate: d.solicit_rate,
                saved_servers,
                lookupd_http_addresses: lookupd.clone(),
                nsqd_tcp_addresses: nsqd.clone(),
                keys: hmac_keys,
                conn: nsq_conn.clone(),
                poll_interval: d.lookupd_poll_interval.get(),
            },
            move || conns.heartbeat_connections(),
            shutdown.clone(),
        )));
    }
    let conns = state.clone();
    tasks.push(tokio::spawn(canary::run(
        CanaryConfig {
            topic: d.canary_topic(),
            channel,
            instance,
            interval: d.canary_interval(),
            timeout: d.canary_timeout(),
            poll_interval: d.lookupd_poll_interval.get(),
            lookupd_http_addresses: lookupd,
            nsqd_tcp_addresses: nsqd,
            conn: nsq_conn,
        },
        bus,
        registry.clone(),
        move || conns.heartbeat_connections(),
        shutdown.clone(),
    )));
    tasks.push(tokio::spawn(sweep(
        balancer,
        state.traffic().clone(),
        d.prune_interval.get(),
        shutdown.clone(),
    )));
    tasks.push(tokio::spawn(count_events(state.clone(), shutdown.clone())));
    if let Some(path) = &d.registry_file {
        tasks.push(tokio::spawn(crate::saved_registry::keep_saved(
            path.clone(),
            registry.clone(),
            d.prune_interval.get(),
            shutdown.clone(),
        )));
    }

    on_listen(listening);
    let nofile = svc::raise_nofile_limit();
    let max_connections = config.server.max_connections(nofile);
    tracing::info!(
        open_file_limit = nofile,
        max_connections,
        "proxy connection limit"
    );
    let limits = HttpLimits {
        header_read_timeout: config.server.header_read_timeout.get(),
        keepalive_timeout: config.server.keepalive_timeout.get(),
        body_read_timeout: config.server.body_read_timeout.get(),
        send_timeout: config.server.send_timeout.get(),
        max_connections,
        max_header_bytes: config.server.max_header_bytes,
        drain_grace: config.shutdown.drain_grace.get(),
    };
    let admin_limits = HttpLimits {
        max_connections: ADMIN_MAX_CONNECTIONS,
        ..limits
    };
    let errors = ConnectionErrors::new(state.metrics().connection_errors.clone());
    let admin_service = TowerToHyperService::new(admin_router(state.clone()));
    let admin = serve_http1(
        "admin",
        admin_listener,
        admin_limits,
        errors.clone(),
        shutdown.clone(),
        move |_peer| admin_service.clone(),
    );
    let engine = proxy::Proxy::new(
        proxy_settings(&config.proxy, d.ttl.get()),
        state.balancer().clone(),
        proxy_metrics(state.metrics(), errors, state.traffic().clone()),
    );
    let proxy = proxy::serve(
        proxy_listener,
        engine,
        limits,
        config.server.workers(),
        shutdown.wait(),
    );
    let serving = async {
        let ((), proxy) = tokio::join!(admin, proxy);
        proxy
    };
    let served = tokio::select! {
        result = serving => result.map(|_| ()),
        () = async {
            shutdown.wait().await;
            // In-flight proxied requests get shutdown.timeout to finish.
            tokio::time::sleep(config.shutdown.timeout.get()).await;
        } => {
            tracing::warn!("requests still in flight after shutdown.timeout; closing anyway");
            Ok(())
        }
    };
    if let Some(consumer) = state.take_heartbeat_consumer() {
        let report = consumer.stop(Duration::from_secs(2)).await;
        tracing::info!(?report, "heartbeat subscription closed");
    }
    for task in tasks {
        let _ = svc::with_timeout(task, Duration::from_secs(3)).await;
    }
    served.map_err(RunError::Serve)
}

/// The proxy engine's settings from `[proxy]`; `warmup` is the TTL (see [`proxy::Proxy::new`]).
fn proxy_settings(cfg: &ProxyConfig, warmup: Duration) -> proxy::ProxySettings {
    proxy::ProxySettings {
        connect_timeout: cfg.connect_timeout.get(),
        try_timeout: cfg.try_timeout.get(),
        total_timeout: cfg.total_timeout.get(),
        max_body_bytes: cfg.max_body_bytes,
        tunnel_idle_timeout: cfg.tunnel_idle_timeout.get(),
        tunnel_io_uring: cfg.tunnel_io_uring,
        max_tries: cfg.max_tries,
        retry_budget_ratio: cfg.retry_budget_ratio,
        retry_budget_min_per_sec: cfg.retry_budget_min_per_sec,
        retry_backoff: cfg.retry_backoff.get(),
        eject_on_5xx: cfg.eject_on_5xx,
        trusted_proxies: cfg.trusted_proxies.clone(),
        access_log: cfg.access_log,
        warmup,
    }
}

/// The proxy engine's handles into the process's metrics.
fn proxy_metrics(
    m: &Metrics,
    connections_closed: ConnectionErrors,
    traffic: proxy::Traffic,
) -> proxy::ProxyMetrics {
    proxy::ProxyMetrics {
        requests: m.requests.clone(),
        upstream_requests: m.upstream_requests.clone(),
        retries: m.retries.clone(),
        ejections: m.ejections.clone(),
        latency: m.latency.clone(),
        upstream_latency: m.upstream_latency.clone(),
        tries: m.tries.clone(),
        connections_closed,
        trailers_dropped: m.trailers_dropped.clone(),
        loops: m.loops.clone(),
        tunnels_open: m.tunnels_open.clone(),
        headers_dropped: m.headers_dropped.clone(),
        tunnels_closed: m.tunnels_closed.clone(),
        parked: m.parked_connections.clone(),
        traffic,
    }
}

/// Sweeps expired servers every `interval` (reads filter by deadline as well, so this only bounds how long an
/// expired server stays in memory and when its `expire` event is sent), returns ejected servers whose time is up,
/// and drops the dashboard's series of servers without a try for a whole window.
async fn sweep(
    balancer: Balancer,
    traffic: proxy::Traffic,
    interval: Duration,
    shutdown: Shutdown,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.wait() => return,
        }
        let now = Instant::now();
        balancer.registry().sweep(now);
        balancer.recover_due(now);
        traffic.prune_idle(proxy::traffic::unix_second(std::time::SystemTime::now()));
    }
}

/// Keeps registry events for the dashboard's timeline and its event streams (which receive them from here, see
/// `feed.rs`), drops the per-upstream series of servers that are gone, and logs membership changes. (The registry
/// counts events itself for `/metrics`: exact even when this falls behind.)
async fn count_events(state: AppState, shutdown: Shutdown) {
    let mut rx = state.registry().subscribe();
    loop {
        let event = tokio::select! {
            received = rx.recv() => received,
            () = shutdown.wait() => return,
        };
        match event {
            Ok(event) => {
                // Stamped once, from when the change happened: every stream and the timeline show the same time.
                state.feed().push(&event, crate::feed::wall_time(event.at));
                match event.kind {
                    EventKind::Join => {
                        tracing::info!(id = %event.id, addr = %event.addr, "server join")
                    }
                    EventKind::Leave | EventKind::Expire => {
                        // Ids are per run, so per-upstream series would otherwise grow forever.
                        state.metrics().upstream_requests.remove(&event.id);
                        state.metrics().upstream_latency.remove(&event.id);
                        tracing::info!(id = %event.id, addr = %event.addr, "server {}", event.kind.as_str())
                    }
                    EventKind::Eject | EventKind::Recover => {
                        tracing::warn!(id = %event.id, addr = %event.addr, "server {}", event.kind.as_str())
                    }
                }
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                // Some leaves and expiries were missed with the rest, and their per-upstream series would stay
                // for ever: start those families afresh (a counter reset, which rate() takes in its stride;
                // live servers' series come back at their next request).
                state.metrics().upstream_requests.clear();
                state.metrics().upstream_latency.clear();
                tracing::warn!(
                    "{n} registry events were not seen by the dashboard's timeline (a burst larger than \
                     discovery's event buffer); per-upstream series restarted"
                )
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}
