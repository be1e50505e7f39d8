//! What the dashboard needs beyond the registry: recent membership changes with their times (the timeline), and
//! the proxy's per-server tries and latency ([`proxy::Traffic`]), shaped as the JSON of the `/registry/events`
//! stream (ARCHITECTURE.md §4.4).
//!
//! A page that opens the stream first gets a `history` event (the timeline so far and every server's last
//! [`WINDOW_SECS`] seconds), then each snapshot carries the second that just ended, so the page extends its own
//! series instead of being sent the whole window every second.
//!
//! Built once, shared by every stream: a change is stamped (its `at_ms` from the event's own time, a `seq`) once
//! when it is kept, and the traffic window, each second's traffic and the registry document are serialized at
//! most once per second (or per change) into an `Arc<str>`. A hundred open dashboards then cost a hundred copies
//! of bytes, not a hundred JSON trees of several MB.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use discovery::Event;
use proxy::Traffic;
use proxy::traffic::{Second, WINDOW_SECS, unix_second};
use tokio::sync::broadcast;
use tokio::time::Instant;

/// Membership changes the timeline keeps.
pub const TIMELINE_LEN: usize = 200;
/// Changes buffered per stream; a stream further behind gets a fresh snapshot instead.
const STREAM_CAPACITY: usize = 4096;
/// Seconds of traffic kept serialized, for streams whose tick drifted behind by a few.
const CACHED_SECONDS: usize = 8;

/// A change as the streams send it.
#[derive(Debug, Clone)]
pub struct Change {
    /// The SSE event name (`join`, `leave`, …).
    pub kind: &'static str,
    /// `{"kind","id","addr","at_ms","seq"}`.
    pub json: Arc<str>,
}

/// The timeline, the changes sent to the streams, and the serialized forms they share.
#[derive(Debug)]
pub struct Feed {
    changes: Mutex<Changes>,
    sender: broadcast::Sender<Change>,
    cache: Mutex<Cache>,
}

#[derive(Debug, Default)]
struct Changes {
    /// The last [`TIMELINE_LEN`] changes' JSON, oldest first.
    timeline: VecDeque<Arc<str>>,
    /// Changes kept so far: the `seq` of the last one.
    seq: u64,
}

#[derive(Debug, Default)]
struct Cache {
    /// The traffic window ending with a second.
    window: Option<(u64, Arc<str>)>,
    /// Each recent second's traffic, oldest first.
    seconds: VecDeque<(u64, Arc<str>)>,
    /// The registry document as of a second and a change `seq`.
    registry: Option<((u64, u64), Arc<str>)>,
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms(now: SystemTime) -> u64 {
    now.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The wall-clock time of `at` (a monotonic instant in the past), as seen now.
pub fn wall_time(at: Instant) -> SystemTime {
    SystemTime::now() - Instant::now().saturating_duration_since(at)
}

/// The last whole second before `now`: the current one is still filling.
pub fn last_whole_second(now: SystemTime) -> u64 {
    unix_second(now).saturating_sub(1)
}

impl Default for Feed {
    fn default() -> Feed {
        Feed {
            changes: Mutex::default(),
            sender: broadcast::channel(STREAM_CAPACITY).0,
            cache: Mutex::default(),
        }
    }
}

impl Feed {
    /// Keeps `event`, which happened at `at`, with the next `seq` (dropping the oldest beyond [`TIMELINE_LEN`]),
    /// and sends it to every stream.
    pub fn push(&self, event: &Event, at: SystemTime) {
        let mut changes = lock(&self.changes);
        changes.seq += 1;
        let json: Arc<str> = serde_json::json!({
            "kind": event.kind,
            "id": event.id,
            "addr": event.addr,
            "at_ms": unix_ms(at),
            "seq": changes.seq,
        })
        .to_string()
        .into();
        if changes.timeline.len() == TIMELINE_LEN {
            changes.timeline.pop_front();
        }
        changes.timeline.push_back(Arc::clone(&json));
        // Sent under the lock, so that `subscribe` sees each change either in the timeline or on its receiver.
        let _ = self.sender.send(Change {
            kind: event.kind.as_str(),
            json,
        });
    }

    /// The timeline so far (oldest first) and a receiver of every change after it, taken together: a change near
    /// the moment a page connects is neither missed nor sent twice.
    pub fn subscribe(&self) -> (Vec<Arc<str>>, broadcast::Receiver<Change>) {
        let changes = lock(&self.changes);
        (
            changes.timeline.iter().cloned().collect(),
            self.sender.subscribe(),
        )
    }

    /// The changes kept, oldest first.
    pub fn timeline(&self) -> Vec<Arc<str>> {
        lock(&self.changes).timeline.iter().cloned().collect()
    }

    /// The `history` event's data: `{"kind":"history","events":[…],"traffic":{"window_s","last","servers":
    /// {id:[[r,e,p99],…]}}}`, each server's seconds oldest first, ending with second `last`.
    pub fn history(&self, timeline: &[Arc<str>], traffic: &Traffic, last: u64) -> String {
        let window = self.window(traffic, last);
        let mut out = String::with_capacity(window.len() + 200 * timeline.len() + 64);
        out.push_str(r#"{"kind":"history","events":["#);
        for (i, event) in timeline.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(event);
        }
        out.push_str(r#"],"traffic":"#);
        out.push_str(&window);
        out.push('}');
        out
    }

    /// `{"window_s","last","servers":{id:[[r,e,p99],…]}}` for the window ending with `last`, built once per second.
    fn window(&self, traffic: &Traffic, last: u64) -> Arc<str> {
        let mut cache = lock(&self.cache);
        if let Some((second, json)) = &cache.window
            && *second == last
        {
            return Arc::clone(json);
        }
        let mut out = String::new();
        let _ = write!(
            out,
            r#"{{"window_s":{WINDOW_SECS},"last":{last},"servers":{{"#
        );
        for (i, (id, seconds)) in traffic.window(last).iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            write_id(&mut out, id);
            out.push('[');
            for (j, s) in seconds.iter().enumerate() {
                if j > 0 {
                    out.push(',');
                }
                write_second(&mut out, s);
            }
            out.push(']');
        }
        out.push_str("}}");
        let json: Arc<str> = out.into();
        cache.window = Some((last, Arc::clone(&json)));
        json
    }

    /// One second of every tracked server: `{"at":second,"servers":{id:[r,e,p99]}}`, built once. A live server
    /// that is not in `servers` is not tracked (the page draws "-" for it, not 0).
    pub fn second(&self, traffic: &Traffic, second: u64) -> Arc<str> {
        let mut cache = lock(&self.cache);
        if let Some((_, json)) = cache.seconds.iter().find(|(s, _)| *s == second) {
            return Arc::clone(json);
        }
        let mut out = String::new();
        let _ = write!(out, r#"{{"at":{second},"servers":{{"#);
        for (i, (id, s)) in traffic.second(second).iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            write_id(&mut out, id);
            write_second(&mut out, s);
        }
        out.push_str("}}");
        let json: Arc<str> = out.into();
        let newest = cache.seconds.back().map_or(0, |(s, _)| *s);
        // Only the newest seconds are kept; an older one asked again is simply built again.
        if second > newest {
            if cache.seconds.len() == CACHED_SECONDS {
                cache.seconds.pop_front();
            }
            cache.seconds.push_back((second, Arc::clone(&json)));
        }
        json
    }

    /// The registry document as `build` serializes it, built at most once per `second` and change.
    pub fn registry(&self, second: u64, build: impl FnOnce() -> String) -> Arc<str> {
        let seq = lock(&self.changes).seq;
        let mut cache = lock(&self.cache);
        if let Some((key, json)) = &cache.registry
            && *key == (second, seq)
        {
            return Arc::clone(json);
        }
        let json: Arc<str> = build().into();
        cache.registry = Some(((second, seq), Arc::clone(&json)));
        json
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `"id":`, the id escaped as JSON.
fn write_id(out: &mut String, id: &str) {
    out.push_str(&serde_json::Value::from(id).to_string());
    out.push(':');
}

/// One second of one server: `[requests,errors,p99_ms or null]`, short because there are many of them.
fn write_second(out: &mut String, s: &Second) {
    let _ = write!(out, "[{},{},", s.requests, s.errors);
    match s.p99_ms {
        Some(ms) => {
            let _ = write!(out, "{}", (ms * 1000.0).round() / 1000.0);
        }
        None => out.push_str("null"),
    }
    out.push(']');
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use discovery::EventKind;
    use serde_json::{Value, json};

    use super::*;

    fn event(kind: EventKind, id: &str) -> Event {
        Event {
            kind,
            id: id.into(),
            addr: "127.0.0.1:1".into(),
            at: tokio::time::Instant::now(),
        }
    }

    fn parse(json: &str) -> Value {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn the_timeline_keeps_the_latest_changes_with_their_times_and_seqs() {
        let feed = Feed::default();
        let at = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        for i in 0..TIMELINE_LEN + 5 {
            feed.push(&event(EventKind::Join, &format!("s{i}")), at);
        }
        feed.push(&event(EventKind::Leave, "s3"), at);
        let entries: Vec<Value> = feed.timeline().iter().map(|e| parse(e)).collect();
        assert_eq!(entries.len(), TIMELINE_LEN);
        assert_eq!(entries[0]["id"], "s6", "the oldest went first");
        let last = &entries[TIMELINE_LEN - 1];
        assert_eq!(last["kind"], "leave");
        assert_eq!(last["at_ms"], 1_700_000_000_123u64);
        assert_eq!(last["seq"], TIMELINE_LEN as u64 + 6);
    }

    #[test]
    fn a_subscriber_gets_each_change_once_either_in_the_timeline_or_on_its_receiver() {
        let feed = Feed::default();
        let at = SystemTime::now();
        feed.push(&event(EventKind::Join, "before"), at);
        let (timeline, mut rx) = feed.subscribe();
        feed.push(&event(EventKind::Join, "after"), at);
        assert_eq!(timeline.len(), 1);
        assert_eq!(parse(&timeline[0])["id"], "before");
        let change = rx.try_recv().unwrap();
        assert_eq!(change.kind, "join");
        assert_eq!(parse(&change.json)["id"], "after");
        assert!(rx.try_recv().is_err(), "nothing twice");
    }

    #[test]
    fn history_and_seconds_carry_each_servers_figures_and_are_built_once() {
        let traffic = Traffic::new();
        traffic.record_at("a", 1000, Some(Duration::from_millis(1)));
        traffic.record_at("a", 1000, None);
        let feed = Feed::default();
        feed.push(&event(EventKind::Join, "a"), SystemTime::now());
        let (timeline, _rx) = feed.subscribe();
        let history = parse(&feed.history(&timeline, &traffic, 1000));
        assert_eq!(history["kind"], "history");
        assert_eq!(history["events"][0]["id"], "a");
        assert_eq!(history["traffic"]["window_s"], WINDOW_SECS);
        let a = history["traffic"]["servers"]["a"].as_array().unwrap();
        assert_eq!(a.len() as u64, WINDOW_SECS);
        assert_eq!(a[a.len() - 1][0], 2);
        assert_eq!(a[a.len() - 1][1], 1);
        assert!(a[a.len() - 1][2].as_f64().unwrap() > 0.5);
        assert_eq!(a[0], json!([0, 0, null]));
        assert!(Arc::ptr_eq(
            &feed.window(&traffic, 1000),
            &feed.window(&traffic, 1000)
        ));
        let second = feed.second(&traffic, 1000);
        assert!(Arc::ptr_eq(&second, &feed.second(&traffic, 1000)));
        let second = parse(&second);
        assert_eq!(second["at"], 1000);
        assert_eq!(second["servers"]["a"][0], 2);
    }

    #[test]
    fn the_registry_is_built_again_after_a_change_or_a_second() {
        let feed = Feed::default();
        let built = std::cell::Cell::new(0);
        let build = || {
            built.set(built.get() + 1);
            "{}".to_owned()
        };
        feed.registry(1, build);
        feed.registry(1, build);
        assert_eq!(built.get(), 1);
        feed.push(&event(EventKind::Leave, "a"), SystemTime::now());
        feed.registry(1, build);
        feed.registry(2, build);
        assert_eq!(built.get(), 3);
    }
}
