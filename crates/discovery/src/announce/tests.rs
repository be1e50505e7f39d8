//! Announcer timing, health gating, failure handling and leaving, in virtual time against a
//! recording transport (the real-nsqd tests live in the data-server crate).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::transport::BoxFuture;
use super::*;
use crate::heartbeat::HmacKey;
use crate::heartbeat::{Message, decode};

type Log = Arc<Mutex<Vec<(Instant, Vec<u8>)>>>;

/// Records what was published and when; takes nothing while `down` is set.
#[derive(Clone, Default)]
struct Fake {
    sent: Log,
    attempts: Arc<Mutex<Vec<Instant>>>,
    down: Arc<AtomicBool>,
}

impl Fake {
    fn sent(&self) -> Vec<(Instant, Heartbeat)> {
        let sent = self.sent.lock().unwrap();
        sent.iter()
            .map(|(at, body)| match decode(body, None).unwrap() {
                Message::Json(hb) => (*at, hb),
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    }
}

impl Transport for Fake {
    fn addrs(&self) -> Vec<String> {
        vec!["a:4150".into(), "b:4150".into()]
    }

    fn send<'a>(&'a self, _topic: &'a str, body: Vec<u8>) -> BoxFuture<'a, Delivery> {
        let now = Instant::now();
        self.attempts.lock().unwrap().push(now);
        if self.down.load(Ordering::SeqCst) {
            let failures = self
                .addrs()
                .into_iter()
                .map(|a| (a, "connection refused".to_owned()))
                .collect();
            return Box::pin(std::future::ready(Delivery {
                failures,
                ..Delivery::default()
            }));
        }
        self.sent.lock().unwrap().push((now, body));
        Box::pin(std::future::ready(Delivery {
            accepted_by: Some("a:4150".into()),
            ..Delivery::default()
        }))
    }

    fn close(&self, _timeout: Duration) -> BoxFuture<'_, ()> {
        Box::pin(std::future::ready(()))
    }
}

fn announcer(interval: Duration, jitter: f64) -> (Announcer, Fake) {
    let mut cfg = AnnouncerConfig::new("data-1", "127.0.0.1:9000", ["a:4150", "b:4150"]);
    cfg.interval = interval;
    cfg.jitter = jitter;
    let fake = Fake::default();
    let announcer = Announcer::with_transport(cfg, Box::new(fake.clone())).unwrap();
    (announcer, fake)
}

#[test]
fn jitter_stays_within_bounds_and_spreads() {
    let base = Duration::from_secs(5);
    let samples: Vec<Duration> = (0..20_000).map(|_| jittered(base, 0.1)).collect();
    let min = *samples.iter().min().unwrap();
    let max = *samples.iter().max().unwrap();
    assert!(min >= Duration::from_millis(4500), "{min:?}");
    assert!(max <= Duration::from_millis(5500), "{max:?}");
    // Uniform, so 20 000 draws come close to both ends.
    assert!(min < Duration::from_millis(4550), "{min:?}");
    assert!(max > Duration::from_millis(5450), "{max:?}");
    assert_eq!(jittered(base, 0.0), base);
}

#[test]
fn retry_delay_doubles_up_to_the_interval() {
    let interval = Duration::from_secs(5);
    assert_eq!(retry_delay(1, interval), Duration::from_millis(250));
    assert_eq!(retry_delay(2, interval), Duration::from_millis(500));
    assert_eq!(retry_delay(4, interval), Duration::from_secs(2));
    assert_eq!(retry_delay(5, interval), Duration::from_secs(4));
    assert_eq!(retry_delay(6, interval), interval);
    assert_eq!(retry_delay(u32::MAX, interval), interval);
}

#[tokio::test(start_paused = true)]
async fn first_heartbeat_at_once_then_every_interval_within_jitter() {
    let (announcer, fake) = announcer(Duration::from_secs(5), 0.1);
    let start = Instant::now();
    let task = announcer.spawn(|| true, std::future::pending());
    tokio::time::sleep(Duration::from_secs(60)).await;
    let sent = fake.sent();
    assert_eq!(sent[0].0, start, "the first heartbeat goes out at once");
    // 60 s at 4.5..5.5 s per wait: 11..=14 heartbeats including the first.
    assert!((11..=14).contains(&sent.len()), "{} heartbeats", sent.len());
    for pair in sent.windows(2) {
        let gap = pair[1].0 - pair[0].0;
        assert!(
            gap >= Duration::from_millis(4500) && gap <= Duration::from_millis(5500),
            "{gap:?}"
        );
        assert_eq!(pair[1].1.seq, pair[0].1.seq + 1, "seq counts up");
        assert_eq!(pair[1].1.epoch, pair[0].1.epoch, "one epoch per run");
    }
    assert_eq!(sent[0].1.interval_ms, 5000);
    assert_eq!(announcer.stats().heartbeats_sent, sent.len() as u64);
    task.abort();
}

#[tokio::test(start_paused = true)]
async fn unhealthy_stops_announcing_and_recovery_resumes_quickly() {
    let (announcer, fake) = announcer(Duration::from_secs(5), 0.0);
    let healthy = Arc::new(AtomicBool::new(false));
    let check = healthy.clone();
    let task = announcer.spawn(move || check.load(Ordering::SeqCst), std::future::pending());
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(fake.sent().is_empty(), "nothing announced while unhealthy");
    let stats = announcer.stats();
    assert!(!stats.healthy);
    assert!(stats.skipped_unhealthy >= 20, "{stats:?}");

    healthy.store(true, Ordering::SeqCst);
    let recovered = Instant::now();
    tokio::time::sleep(Duration::from_secs(12)).await;
    let sent = fake.sent();
    assert!(
        sent[0].0 - recovered <= HEALTH_RECHECK,
        "resumes within one recheck"
    );
    assert_eq!(sent.len(), 3, "then every interval");

    healthy.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert_eq!(fake.sent().len(), 3, "stops again");
    task.abort();
}

#[tokio::test(start_paused = true)]
async fn all_nsqd_down_retries_with_backoff_and_counts_per_nsqd() {
    let (announcer, fake) = announcer(Duration::from_secs(5), 0.0);
    fake.down.store(true, Ordering::SeqCst);
    let task = announcer.spawn(|| true, std::future::pending());
    tokio::time::sleep(Duration::from_secs(20)).await;
    let attempts = fake.attempts.lock().unwrap().clone();
    // 0, 0.25, 0.75, 1.75, 3.75, 7.75, 12.75, 17.75 s.
    assert_eq!(attempts.len(), 8, "{attempts:?}");
    let gaps: Vec<Duration> = attempts.windows(2).map(|p| p[1] - p[0]).collect();
    assert_eq!(gaps[0], Duration::from_millis(250));
    assert_eq!(gaps[3], Duration::from_secs(2));
    assert_eq!(gaps[6], Duration::from_secs(5), "capped at the interval");
    let stats = announcer.stats();
    assert!(!stats.reachable);
    assert_eq!(stats.failed_heartbeats, 8);
    assert_eq!(
        stats.publish_failures,
        vec![("a:4150".to_owned(), 8), ("b:4150".to_owned(), 8)]
    );

    fake.down.store(false, Ordering::SeqCst);
    // Next retry at 22.75 s, then 27.75 s.
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(
        fake.sent().len(),
        2,
        "recovers at the next retry, then every interval"
    );
    assert!(announcer.stats().reachable);
    task.abort();
}

#[tokio::test(start_paused = true)]
async fn leave_sends_leaving_last_and_stops_the_loop() {
    let (announcer, fake) = announcer(Duration::from_secs(5), 0.1);
    let task = announcer.spawn(|| true, std::future::pending());
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert_eq!(announcer.leave().await, Ok("a:4150".to_owned()));
    tokio::time::timeout(Duration::from_secs(1), task)
        .await
        .expect("the loop ends on leave")
        .unwrap();
    tokio::time::sleep(Duration::from_secs(30)).await;
    let sent = fake.sent();
    let last = &sent.last().unwrap().1;
    assert_eq!(last.state, State::Leaving);
    assert_eq!(last.seq, sent.len() as u64, "leaving has the highest seq");
    assert!(
        sent[..sent.len() - 1]
            .iter()
            .all(|(_, hb)| hb.state == State::Up)
    );
    assert_eq!(announcer.leave().await, Err(AnnounceError::Left));
    assert_eq!(
        announcer.announce(State::Up).await,
        Err(AnnounceError::Left)
    );
    let stats = announcer.stats();
    assert_eq!(stats.leaving_sent, 1);
    assert!(stats.left);
}

/// Every nsqd is down when the server shuts down and one comes back 300 ms later: the same leaving heartbeat is
/// sent again until it is taken, then the call returns at once.
#[tokio::test(start_paused = true)]
async fn the_leaving_heartbeat_is_retried_until_an_nsqd_takes_it() {
    let (announcer, fake) = announcer(Duration::from_secs(5), 0.0);
    announcer.announce(State::Up).await.unwrap();
    fake.down.store(true, Ordering::SeqCst);
    let start = Instant::now();
    let leaving = tokio::spawn({
        let announcer = announcer.clone();
        async move { announcer.leave_within(Duration::from_secs(10)).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    fake.down.store(false, Ordering::SeqCst);
    assert_eq!(leaving.await.unwrap(), Ok("a:4150".to_owned()));
    let ms = Duration::from_millis;
    let attempts: Vec<Duration> = fake.attempts.lock().unwrap()[1..]
        .iter()
        .map(|at| *at - start)
        .collect();
    // 50 ms doubling: 0, 50, 150 (down), 350 (up).
    assert_eq!(attempts, [ms(0), ms(50), ms(150), ms(350)]);
    assert_eq!(
        Instant::now() - start,
        ms(350),
        "returned as soon as it was taken"
    );
    let sent = fake.sent();
    assert_eq!(sent.len(), 2);
    let last = &sent[1].1;
    assert_eq!(
        (last.state, last.seq),
        (State::Leaving, 2),
        "one seq for every try"
    );
    let stats = announcer.stats();
    assert_eq!((stats.leaving_sent, stats.failed_heartbeats), (1, 3));
}

#[tokio::test(start_paused = true)]
async fn the_leaving_heartbeat_is_retried_no_longer_than_the_limit() {
    let (announcer, fake) = announcer(Duration::from_secs(5), 0.0);
    fake.down.store(true, Ordering::SeqCst);
    let start = Instant::now();
    let result = announcer.leave_within(Duration::from_secs(1)).await;
    assert!(
        matches!(result, Err(AnnounceError::AllFailed(_))),
        "{result:?}"
    );
    assert!(Instant::now() - start < Duration::from_secs(1));
    // 0, 50, 150, 350, 750; the next (1250) would be past the limit.
    assert_eq!(fake.attempts.lock().unwrap().len(), 5);
    // leave() alone is one round, as before.
    let (announcer, fake) = self::announcer(Duration::from_secs(5), 0.0);
    fake.down.store(true, Ordering::SeqCst);
    assert!(announcer.leave().await.is_err());
    assert_eq!(fake.attempts.lock().unwrap().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_signed_leaving_heartbeat_is_signed_again_on_each_try() {
    let key = HmacKey::from_bytes(b"secret").unwrap();
    let mut cfg = AnnouncerConfig::new("data-1", "127.0.0.1:9000", ["a:4150", "b:4150"]);
    cfg.key = Some(key.clone());
    let fake = Fake::default();
    let announcer = Announcer::with_transport(cfg, Box::new(fake.clone())).unwrap();
    fake.down.store(true, Ordering::SeqCst);
    let leaving = tokio::spawn({
        let announcer = announcer.clone();
        async move { announcer.leave_within(Duration::from_secs(10)).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    fake.down.store(false, Ordering::SeqCst);
    leaving.await.unwrap().unwrap();
    let body = fake.sent.lock().unwrap()[0].1.clone();
    assert!(decode(&body, Some(&key)).is_ok());
}

#[tokio::test(start_paused = true)]
async fn shutdown_ends_the_loop_without_leaving() {
    let (announcer, fake) = announcer(Duration::from_secs(5), 0.1);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = announcer.spawn(|| true, async move {
        let _ = rx.await;
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    tx.send(()).unwrap();
    task.await.unwrap();
    assert_eq!(fake.sent().len(), 1);
}

#[test]
fn signed_heartbeats_verify_and_tampered_ones_do_not() {
    let key = HmacKey::from_bytes(b"shared secret").unwrap();
    let mut cfg = AnnouncerConfig::new("data-1", "127.0.0.1:9000", ["a:4150"]);
    cfg.key = Some(key.clone());
    let fake = Fake::default();
    let announcer = Announcer::with_transport(cfg, Box::new(fake.clone())).unwrap();
    let body = announcer
        .build(&mut announcer.sequence(), State::Up)
        .encode();
    assert!(decode(&body, Some(&key)).is_ok());
    let tampered = String::from_utf8(body)
        .unwrap()
        .replace("127.0.0.1:9000", "127.0.0.1:6666");
    assert!(decode(tampered.as_bytes(), Some(&key)).is_err());
    let other = HmacKey::from_bytes(b"another").unwrap();
    let body = announcer
        .build(&mut announcer.sequence(), State::Up)
        .encode();
    assert!(decode(&body, Some(&other)).is_err());
}

#[test]
fn bad_configs_are_refused() {
    let fake = || Box::new(Fake::default());
    let base = || AnnouncerConfig::new("data-1", "127.0.0.1:9000", ["a:4150"]);
    let mut cfg = base();
    cfg.interval = Duration::ZERO;
    let err = Announcer::with_transport(cfg, fake()).unwrap_err();
    assert!(matches!(err, AnnouncerConfigError::ZeroInterval));
    let mut cfg = base();
    cfg.jitter = 1.5;
    let err = Announcer::with_transport(cfg, fake()).unwrap_err();
    assert!(matches!(err, AnnouncerConfigError::BadJitter(_)));
    let mut cfg = base();
    cfg.addr = "0.0.0.0:9000".into();
    let err = Announcer::with_transport(cfg, fake()).unwrap_err();
    assert!(
        matches!(err, AnnouncerConfigError::BadHeartbeat(_)),
        "{err}"
    );
    let empty: [&str; 0] = [];
    let err = Announcer::new(AnnouncerConfig::new("d", "127.0.0.1:1", empty)).unwrap_err();
    assert!(matches!(err, AnnouncerConfigError::NoNsqd));
    let mut cfg = base();
    cfg.topic = "bad topic".into();
    let err = Announcer::new(cfg).unwrap_err();
    assert!(matches!(err, AnnouncerConfigError::Nsq(_)), "{err}");
}
