//! The announcer embedded in another tokio service, against a real nsqd: the health closure
//! gates the heartbeats.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{Tap, until};
use discovery::{Announcer, AnnouncerConfig};
use testkit::NsqCluster;

const GENEROUS: Duration = Duration::from_secs(30);

#[tokio::test]
async fn an_unhealthy_service_stops_announcing_and_resumes_when_healthy() {
    let cluster = NsqCluster::start(1).await.unwrap();
    let tap = Tap::start(&cluster.nsqd_tcp_addresses());
    let mut cfg = AnnouncerConfig::new(
        "embedded-1",
        "127.0.0.1:9999",
        [cluster.nsqd_tcp(0)].map(|a| a.to_string()),
    );
    cfg.interval = Duration::from_millis(200);
    let announcer = Announcer::new(cfg).unwrap();
    let healthy = Arc::new(AtomicBool::new(true));
    let check = healthy.clone();
    let task = announcer.spawn(move || check.load(Ordering::SeqCst), std::future::pending());
    tap.wait_for("embedded-1", GENEROUS, |hbs| hbs.len() >= 3)
        .await;

    healthy.store(false, Ordering::SeqCst);
    until("3 skipped ticks", || {
        announcer.stats().skipped_unhealthy >= 3
    })
    .await;
    let sent = announcer.stats().heartbeats_sent;
    // Everything published before the switch has arrived.
    tap.wait_for("embedded-1", GENEROUS, |hbs| hbs.len() as u64 == sent)
        .await;
    until("8 skipped ticks", || {
        announcer.stats().skipped_unhealthy >= 8
    })
    .await;
    assert_eq!(
        announcer.stats().heartbeats_sent,
        sent,
        "nothing sent while unhealthy"
    );
    assert_eq!(
        tap.of("embedded-1").len() as u64,
        sent,
        "nothing received while unhealthy"
    );
    assert!(!announcer.stats().healthy);

    healthy.store(true, Ordering::SeqCst);
    let got = tap
        .wait_for("embedded-1", GENEROUS, |hbs| hbs.len() as u64 >= sent + 2)
        .await;
    // Skipped ticks use no seq: the run's seq simply goes on.
    assert!(got.iter().map(|(_, hb)| hb.seq).max().unwrap() >= sent + 2);

    announcer.leave().await.unwrap();
    task.await.unwrap();
    tap.wait_for_leaving("embedded-1", GENEROUS).await;
    announcer.close(Duration::from_secs(1)).await;
    tap.stop().await;
}
