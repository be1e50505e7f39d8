//! What the dashboard needs beyond the registry: recent membership changes with their times (the timeline), and
//! the proxy's per-server tries and latency ([`proxy::Traffic`]), shaped as the JSON of the `/registry/events`
//! stream (ARCHITECTURE.md §4.4).
//!
//! A page that opens the stream first gets a `history` event (the timeline so far and every server's last
//! [`WINDOW_SECS`](proxy::traffic::WINDOW_SECS) seconds), then each snapshot carries the second that just ended,
//! so the page extends its own series instead of being sent the whole window every second.

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use discovery::Event;
use proxy::Traffic;
use proxy::traffic::{Second, WINDOW_SECS, unix_second};
use serde_json::{Map, Value, json};

/// Membership changes the timeline keeps.
pub const TIMELINE_LEN: usize = 200;

/// The last [`TIMELINE_LEN`] membership changes, each with its wall-clock time.
#[derive(Debug, Default)]
pub struct Timeline {
    entries: Mutex<VecDeque<Value>>,
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms(now: SystemTime) -> u64 {
    now.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// An event as the stream sends it: `{"kind","id","addr","at_ms"}`.
pub fn event_json(event: &Event, at: SystemTime) -> Value {
    json!({
        "kind": event.kind,
        "id": event.id,
        "addr": event.addr,
        "at_ms": unix_ms(at),
    })
}

impl Timeline {
    /// Adds `event`, which happened at `at`, dropping the oldest beyond [`TIMELINE_LEN`].
    pub fn push(&self, event: &Event, at: SystemTime) {
        let mut entries = self.lock();
        if entries.len() == TIMELINE_LEN {
            entries.pop_front();
        }
        entries.push_back(event_json(event, at));
    }

    /// The changes kept, oldest first.
    pub fn entries(&self) -> Vec<Value> {
        self.lock().iter().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Value>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One second of one server: `[requests, errors, p99_ms or null]`, short because there are many of them.
fn second_json(s: &Second) -> Value {
    json!([
        s.requests,
        s.errors,
        s.p99_ms.map(|ms| (ms * 1000.0).round() / 1000.0)
    ])
}

/// The last whole second before `now`: the current one is still filling.
pub fn last_whole_second(now: SystemTime) -> u64 {
    unix_second(now).saturating_sub(1)
}

/// The `history` event's data: `{"kind":"history","events":[…],"traffic":{"window_s","last","servers":{id:[[r,e,p99],…]}}}`,
/// each server's seconds oldest first, ending with second `last`.
pub fn history_json(timeline: &Timeline, traffic: &Traffic, last: u64) -> Value {
    let servers: Map<String, Value> = traffic
        .window(last)
        .into_iter()
        .map(|(id, seconds)| (id, seconds.iter().map(second_json).collect()))
        .collect();
    json!({
        "kind": "history",
        "events": timeline.entries(),
        "traffic": { "window_s": WINDOW_SECS, "last": last, "servers": servers },
    })
}

/// One second of every tracked server: `{"at":second,"servers":{id:[r,e,p99]}}`, carried by each snapshot.
pub fn second_of_traffic(traffic: &Traffic, second: u64) -> Value {
    let servers: Map<String, Value> = traffic
        .second(second)
        .iter()
        .map(|(id, s)| (id.clone(), second_json(s)))
        .collect();
    json!({ "at": second, "servers": servers })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use discovery::EventKind;

    use super::*;

    fn event(kind: EventKind, id: &str) -> Event {
        Event {
            kind,
            id: id.into(),
            addr: "127.0.0.1:1".into(),
            at: tokio::time::Instant::now(),
        }
    }

    #[test]
    fn the_timeline_keeps_the_latest_changes_with_their_times() {
        let timeline = Timeline::default();
        let at = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        for i in 0..TIMELINE_LEN + 5 {
            timeline.push(&event(EventKind::Join, &format!("s{i}")), at);
        }
        timeline.push(&event(EventKind::Leave, "s3"), at);
        let entries = timeline.entries();
        assert_eq!(entries.len(), TIMELINE_LEN);
        assert_eq!(entries[0]["id"], "s6", "the oldest went first");
        let last = &entries[TIMELINE_LEN - 1];
        assert_eq!(last["kind"], "leave");
        assert_eq!(last["at_ms"], 1_700_000_000_123u64);
    }

    #[test]
    fn history_and_seconds_carry_each_servers_figures() {
        let traffic = Traffic::new();
        traffic.record_at("a", 1000, Some(Duration::from_millis(1)));
        traffic.record_at("a", 1000, None);
        let history = history_json(&Timeline::default(), &traffic, 1000);
        let a = history["traffic"]["servers"]["a"].as_array().unwrap();
        assert_eq!(a.len() as u64, WINDOW_SECS);
        assert_eq!(a[a.len() - 1][0], 2);
        assert_eq!(a[a.len() - 1][1], 1);
        assert!(a[a.len() - 1][2].as_f64().unwrap() > 0.5);
        assert_eq!(a[0], json!([0, 0, null]));
        let second = second_of_traffic(&traffic, 1000);
        assert_eq!(second["at"], 1000);
        assert_eq!(second["servers"]["a"][0], 2);
    }
}
