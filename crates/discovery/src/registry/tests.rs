use super::*;
use crate::heartbeat::Heartbeat;
use crate::reject::RejectReason;
use serde_json::json;
use std::time::UNIX_EPOCH;
use tokio::sync::broadcast::error::TryRecvError;
use tokio::time::advance;

const TTL: Duration = Duration::from_secs(10);
const MS: Duration = Duration::from_millis(1);

fn registry() -> Registry {
    Registry::new(RegistryConfig::new(TTL)).unwrap()
}

fn body(id: &str, addr: &str, epoch: u64, seq: u64) -> Vec<u8> {
    Heartbeat::new(id, addr, epoch, seq).encode()
}

fn leaving(id: &str, addr: &str, epoch: u64, seq: u64) -> Vec<u8> {
    let mut hb = Heartbeat::new(id, addr, epoch, seq);
    hb.state = State::Leaving;
    hb.encode()
}

fn observe(reg: &Registry, body: &[u8]) -> Outcome {
    reg.observe(body, 0, Instant::now(), SystemTime::now())
}

fn live_ids(reg: &Registry) -> Vec<String> {
    reg.live(Instant::now())
        .iter()
        .map(|b| b.id().to_owned())
        .collect()
}

fn drain(rx: &mut broadcast::Receiver<Event>) -> Vec<(EventKind, String, String)> {
    let mut out = Vec::new();
    loop {
        match rx.try_recv() {
            Ok(e) => out.push((e.kind, e.id, e.addr)),
            Err(TryRecvError::Empty) => return out,
            Err(e) => panic!("{e}"),
        }
    }
}

fn ev(kind: EventKind, id: &str, addr: &str) -> (EventKind, String, String) {
    (kind, id.to_owned(), addr.to_owned())
}

fn rejected(outcome: Outcome) -> RejectReason {
    match outcome {
        Outcome::Rejected(r) => r.reason(),
        other => panic!("expected a rejection, got {other:?}"),
    }
}

mod admission;
mod lifecycle;
mod names;
mod saved;
