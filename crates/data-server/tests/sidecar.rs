//! `data-server sidecar`: announces another service while its health URL answers 2xx, and
//! `leaving` on SIGTERM.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State as Axum;
use axum::http::StatusCode;
use axum::routing::get;
use common::{BIN, Tap, until};
use testkit::{ManagedProcess, NsqCluster, Signal};

const GENEROUS: Duration = Duration::from_secs(30);

#[derive(Clone, Default)]
struct Health {
    up: Arc<AtomicBool>,
    failed_probes: Arc<AtomicU64>,
}

async fn health(Axum(h): Axum<Health>) -> StatusCode {
    if h.up.load(Ordering::SeqCst) {
        StatusCode::OK
    } else {
        h.failed_probes.fetch_add(1, Ordering::SeqCst);
        StatusCode::SERVICE_UNAVAILABLE
    }
}

#[tokio::test]
async fn sidecar_announces_while_the_health_url_answers_2xx() {
    let cluster = NsqCluster::start(1).await.unwrap();
    let tap = Tap::start(&cluster.nsqd_tcp_addresses());
    let state = Health::default();
    state.up.store(true, Ordering::SeqCst);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let service = listener.local_addr().unwrap();
    let app = Router::new()
        .route("/health", get(health))
        .with_state(state.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let dir = tempfile::tempdir().unwrap();
    let args = [
        "sidecar".to_owned(),
        "--advertise".to_owned(),
        service.to_string(),
        "--health-url".to_owned(),
        format!("http://{service}/health"),
        "--set".to_owned(),
        format!("announce.nsqd_tcp_addresses={}", cluster.nsqd_tcp(0)),
        "--set".to_owned(),
        "announce.interval=200ms".to_owned(),
        "--set".to_owned(),
        "server.id=legacy-1".to_owned(),
    ];
    let log = dir.path().join("sidecar.log");
    let mut sidecar = ManagedProcess::spawn("sidecar", BIN, args.to_vec(), vec![], &log).unwrap();

    let got = tap
        .wait_for("legacy-1", GENEROUS, |hbs| hbs.len() >= 2)
        .await;
    assert_eq!(got[0].1.addr, service.to_string());

    state.up.store(false, Ordering::SeqCst);
    until("3 failed probes", || {
        state.failed_probes.load(Ordering::SeqCst) >= 3
    })
    .await;
    let before = tap.of("legacy-1").len();
    until("6 failed probes", || {
        state.failed_probes.load(Ordering::SeqCst) >= 6
    })
    .await;
    assert_eq!(
        tap.of("legacy-1").len(),
        before,
        "no heartbeat while the health URL fails"
    );

    state.up.store(true, Ordering::SeqCst);
    tap.wait_for("legacy-1", GENEROUS, |hbs| hbs.len() >= before + 2)
        .await;

    sidecar.signal(Signal::SIGTERM).unwrap();
    tap.wait_for_leaving("legacy-1", GENEROUS).await;
    let exit = sidecar.wait_exit(GENEROUS).await.unwrap();
    assert_eq!(exit.code(), Some(0), "{}", sidecar.log());
    tap.stop().await;
}

#[test]
fn sidecar_refuses_a_bad_advertise_address() {
    let output = std::process::Command::new(BIN)
        .args([
            "sidecar",
            "--advertise",
            "nohost",
            "--health-url",
            "http://127.0.0.1:1/",
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--advertise"), "{stderr}");
}

/// An `https://` health URL could only fail at every probe (the probe client has no TLS), so it is refused at start.
#[test]
fn sidecar_refuses_an_https_health_url_at_start() {
    let output = std::process::Command::new(BIN)
        .args([
            "sidecar",
            "--advertise",
            "127.0.0.1:9",
            "--health-url",
            "https://127.0.0.1:1/health",
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("--health-url") && stderr.contains("https:// is not supported"),
        "{stderr}"
    );
}
