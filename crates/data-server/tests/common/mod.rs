//! Shared by the integration tests: a consumer that records every heartbeat it receives.

#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use discovery::{Heartbeat, HmacKey, Message, State, decode};
use testkit::{eventually, try_eventually};

/// The binary under test, built by cargo for this crate's integration tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_data-server");
/// Topic of the heartbeats (the default).
pub const TOPIC: &str = "data_server_addr";

/// Bound for [`until`].
const UNTIL_TIMEOUT: Duration = Duration::from_secs(30);

/// Polls `done` until it holds; fails the test naming `what` after 30 s.
pub async fn until(what: &str, mut done: impl FnMut() -> bool) {
    eventually(UNTIL_TIMEOUT, what, || {
        std::future::ready(done().then_some(()))
    })
    .await
}

/// One received message: when, and the raw body.
#[derive(Clone, Debug)]
pub struct Received {
    pub at: Instant,
    pub body: Vec<u8>,
}

impl Received {
    /// The body as a JSON heartbeat (panics otherwise).
    pub fn heartbeat(&self) -> Heartbeat {
        match decode(&self.body, None) {
            Ok(Message::Json(hb)) => hb,
            other => panic!("not a JSON heartbeat: {other:?}"),
        }
    }
}

/// Consumes the heartbeat topic on an ephemeral channel of its own.
pub struct Tap {
    consumer: Option<nsq::Consumer>,
    received: Arc<Mutex<Vec<Received>>>,
}

impl Tap {
    pub fn start(nsqd: &[std::net::SocketAddr]) -> Tap {
        let received = Arc::new(Mutex::new(Vec::new()));
        let sink = received.clone();
        let cfg = nsq::ConsumerConfig {
            nsqd_tcp_addresses: nsqd.iter().map(ToString::to_string).collect(),
            max_in_flight: 100,
            conn: nsq::Config {
                output_buffer: nsq::OutputBuffer::Unbuffered,
                ..Default::default()
            },
            reconnect_max: Duration::from_secs(1),
            ..Default::default()
        };
        let consumer = nsq::Consumer::start(TOPIC, "tap#ephemeral", cfg, move |m: nsq::Message| {
            let sink = sink.clone();
            async move {
                let item = Received {
                    at: Instant::now(),
                    body: m.body().to_vec(),
                };
                sink.lock().unwrap().push(item);
                Ok(())
            }
        })
        .expect("consumer starts");
        Tap {
            consumer: Some(consumer),
            received,
        }
    }

    /// Everything received so far.
    pub fn all(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// The JSON heartbeats of server `id`, in arrival order.
    pub fn of(&self, id: &str) -> Vec<(Instant, Heartbeat)> {
        self.all()
            .into_iter()
            .filter_map(|r| match decode(&r.body, None) {
                Ok(Message::Json(hb)) if hb.id == id => Some((r.at, hb)),
                _ => None,
            })
            .collect()
    }

    /// Polls until the leaving heartbeat of `id` has arrived, or panics after `timeout`; returns
    /// all heartbeats of `id` then.
    pub async fn wait_for_leaving(&self, id: &str, timeout: Duration) -> Vec<(Instant, Heartbeat)> {
        self.wait_for(id, timeout, |hbs| {
            hbs.iter().any(|(_, hb)| hb.state == State::Leaving)
        })
        .await
    }

    /// Polls until `done` holds for the heartbeats of `id`, or panics after `timeout`.
    pub async fn wait_for(
        &self,
        id: &str,
        timeout: Duration,
        done: impl Fn(&[(Instant, Heartbeat)]) -> bool,
    ) -> Vec<(Instant, Heartbeat)> {
        let what = format!("the heartbeats of {id}");
        let reached = try_eventually(timeout, &what, || {
            let got = self.of(id);
            std::future::ready(Ok(done(&got).then_some(got)))
        })
        .await;
        reached.unwrap_or_else(|e| panic!("{e}; received {:?}", self.of(id)))
    }

    pub async fn stop(mut self) {
        if let Some(c) = self.consumer.take() {
            c.stop(Duration::from_secs(2)).await;
        }
    }
}

/// A key file in `dir` holding `secret`.
pub fn key_file(dir: &std::path::Path, secret: &str) -> (std::path::PathBuf, HmacKey) {
    let path = dir.join("heartbeat.key");
    std::fs::write(&path, format!("{secret}\n")).unwrap();
    (path.clone(), HmacKey::from_file(&path).unwrap())
}

/// The value of an unlabelled metric in Prometheus text (0 when absent).
pub fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}
