//! A recorder of the api-server's `/registry/events` stream (joins, leaves, expiries, ejections),
//! reconnecting when the api-server restarts.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use crate::poll::try_eventually;

/// One change of the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryEvent {
    /// When it was received.
    pub at: Instant,
    /// `join`, `leave`, `expire`, `eject`, `recover`.
    pub kind: String,
    /// The data server's id.
    pub id: String,
}

/// Records every change event of one api-server's admin address until dropped.
#[derive(Debug)]
pub struct RegistryEvents {
    events: Arc<Mutex<Vec<RegistryEvent>>>,
    connects: Arc<Mutex<u64>>,
    task: JoinHandle<()>,
}

impl RegistryEvents {
    /// Subscribes to `http://ADMIN/registry/events` and returns once the stream is open.
    pub async fn start(admin: SocketAddr) -> anyhow::Result<RegistryEvents> {
        let events = Arc::new(Mutex::new(Vec::new()));
        let connects = Arc::new(Mutex::new(0u64));
        let http = reqwest::Client::builder().no_proxy().build()?;
        let url = format!("http://{admin}/registry/events");
        let task = {
            let (events, connects) = (events.clone(), connects.clone());
            tokio::spawn(async move {
                loop {
                    follow(&http, &url, &events, &connects).await;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
        };
        let me = RegistryEvents {
            events,
            connects,
            task,
        };
        let what = format!("{admin}/registry/events to open");
        try_eventually(Duration::from_secs(10), &what, || {
            std::future::ready(Ok((me.connects() > 0).then_some(())))
        })
        .await?;
        Ok(me)
    }

    /// How many times the stream was (re)opened.
    pub fn connects(&self) -> u64 {
        *self.connects.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every event so far.
    pub fn all(&self) -> Vec<RegistryEvent> {
        self.events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Events of one kind so far.
    pub fn of_kind(&self, kind: &str) -> Vec<RegistryEvent> {
        self.all().into_iter().filter(|e| e.kind == kind).collect()
    }
}

impl Drop for RegistryEvents {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads one connection of the stream until it ends.
async fn follow(
    http: &reqwest::Client,
    url: &str,
    events: &Mutex<Vec<RegistryEvent>>,
    connects: &Mutex<u64>,
) {
    let Ok(mut resp) = http.get(url).send().await else {
        return;
    };
    if !resp.status().is_success() {
        return;
    }
    *connects.lock().unwrap_or_else(PoisonError::into_inner) += 1;
    let mut buf = String::new();
    while let Ok(Some(chunk)) = resp.chunk().await {
        buf.push_str(&String::from_utf8_lossy(&chunk));
        // Events end with a blank line.
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            if let Some(event) = parse(&block) {
                events
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(event);
            }
        }
    }
}

/// A change event from one SSE block; `None` for snapshots, keep-alives and anything else.
fn parse(block: &str) -> Option<RegistryEvent> {
    let data = block
        .lines()
        .find_map(|l| l.strip_prefix("data:"))?
        .trim_start();
    let v: serde_json::Value = serde_json::from_str(data).ok()?;
    let kind = v["kind"].as_str()?;
    if kind == "snapshot" {
        return None;
    }
    Some(RegistryEvent {
        at: Instant::now(),
        kind: kind.to_owned(),
        id: v["id"].as_str()?.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_change_events_and_skips_snapshots() {
        let e = parse(
            "event: expire\ndata: {\"kind\":\"expire\",\"id\":\"data-2\",\"addr\":\"x\"}\n\n",
        )
        .unwrap();
        assert_eq!((e.kind.as_str(), e.id.as_str()), ("expire", "data-2"));
        assert!(
            parse("event: snapshot\ndata: {\"kind\":\"snapshot\",\"registry\":{}}\n\n").is_none()
        );
        assert!(parse(":\n\n").is_none());
    }
}
