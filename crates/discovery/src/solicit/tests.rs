//! The responder's answering, in virtual time against a transport that holds each publish until the test lets it
//! go (the real-nsqd tests are in the api-server's `tests/solicit.rs`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};

use super::*;
use crate::AnnouncerConfig;
use crate::announce::transport::{BoxFuture, Delivery, Transport};

/// Counts publishes, holds each until released, then takes it (or fails it while `down`).
struct Held {
    attempts: AtomicUsize,
    release: Semaphore,
    down: AtomicBool,
}

impl Held {
    fn new() -> Arc<Held> {
        Arc::new(Held {
            attempts: AtomicUsize::new(0),
            release: Semaphore::new(0),
            down: AtomicBool::new(false),
        })
    }
}

impl Transport for Arc<Held> {
    fn addrs(&self) -> Vec<String> {
        vec!["a:4150".into()]
    }

    fn send<'a>(&'a self, _topic: &'a str, _body: Vec<u8>) -> BoxFuture<'a, Delivery> {
        Box::pin(async move {
            self.attempts.fetch_add(1, Ordering::SeqCst);
            self.release.acquire().await.unwrap().forget();
            if self.down.load(Ordering::SeqCst) {
                return Delivery {
                    failures: vec![("a:4150".into(), "connection refused".into())],
                    ..Delivery::default()
                };
            }
            Delivery {
                accepted_by: Some("a:4150".into()),
                ..Delivery::default()
            }
        })
    }

    fn close(&self, _timeout: Duration) -> BoxFuture<'_, ()> {
        Box::pin(std::future::ready(()))
    }
}

/// An announcer on `held`, a running answer task (healthy), and what `receive` needs.
fn responder(held: &Arc<Held>) -> (Announcer, Arc<Shared>, JoinHandle<()>) {
    responder_with(held, || true)
}

fn responder_with(
    held: &Arc<Held>,
    health: impl Health,
) -> (Announcer, Arc<Shared>, JoinHandle<()>) {
    let mut cfg = AnnouncerConfig::new("data-1", "127.0.0.1:9000", ["a:4150"]);
    cfg.interval = Duration::from_secs(60);
    let announcer = Announcer::with_transport(cfg, Box::new(Arc::clone(held))).unwrap();
    let shared = Arc::new(Shared {
        gate: Mutex::new(Gate::default()),
        wake: Notify::new(),
    });
    let task = tokio::spawn(answer_when_due(
        announcer.clone(),
        Arc::clone(&shared),
        health,
    ));
    (announcer, shared, task)
}

fn solicit(announcer: &Announcer, shared: &Shared) {
    let body = Solicitation::new("api-1", Duration::ZERO).encode(&[]);
    receive(announcer, shared, None, &body, 0);
}

/// Lets the other tasks run (virtual time: a few ms pass, no real wait) until `done` holds, for at most 5 s.
async fn until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn answered_counts_only_once_nsqd_took_the_heartbeat() {
    let held = Held::new();
    let (announcer, shared, task) = responder(&held);
    solicit(&announcer, &shared);
    until("the answer is being published", || {
        held.attempts.load(Ordering::SeqCst) == 1
    })
    .await;
    let stats = || announcer.stats().solicitations;
    assert_eq!(stats().answered, 0, "counted while nsqd has not taken it");
    held.release.add_permits(1);
    until("answered", || stats().answered == 1).await;
    assert_eq!(announcer.stats().heartbeats_sent, 1);
    task.abort();
}

#[tokio::test(start_paused = true)]
async fn an_answer_no_nsqd_took_is_counted_unanswered() {
    let held = Held::new();
    held.down.store(true, Ordering::SeqCst);
    held.release.add_permits(1);
    let (announcer, shared, task) = responder(&held);
    solicit(&announcer, &shared);
    let stats = || announcer.stats().solicitations;
    until("unanswered", || stats().unanswered == 1).await;
    assert_eq!(stats().answered, 0);
    assert_eq!(announcer.stats().heartbeats_sent, 0);
    task.abort();
}

#[tokio::test(start_paused = true)]
async fn an_answer_while_unhealthy_is_counted_unanswered() {
    let held = Held::new();
    let (announcer, shared, task) = responder_with(&held, || false);
    solicit(&announcer, &shared);
    let stats = || announcer.stats().solicitations;
    until("unanswered", || stats().unanswered == 1).await;
    assert_eq!(stats().answered, 0);
    assert_eq!(held.attempts.load(Ordering::SeqCst), 0, "nothing published");
    task.abort();
}
