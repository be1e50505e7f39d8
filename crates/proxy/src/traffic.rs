//! Per-server tries and latency over the last minutes, in 1 s buckets: what the api-server's dashboard draws as
//! a sparkline per data server (requests/s and p99).
//!
//! Kept apart from the metrics registry on purpose: Prometheus keeps the long history and does the arithmetic;
//! this only answers "what did each server do in each of the last [`WINDOW_SECS`] seconds" cheaply, for a page
//! that a person keeps open. Each server has a ring of buckets indexed by the Unix second; a worker thread records
//! a try with a few relaxed atomic additions, and a bucket is zeroed when its slot comes round again. A bucket's
//! latencies are a histogram with doubling bounds (64 µs to about 9 minutes), from which a p99 is interpolated.
//!
//! Bounded memory: at most [`MAX_SERVERS`] servers are tracked at once (about 20 KiB each). A server is dropped
//! once it has had no try for a whole window ([`Traffic::prune_idle`]), so a server that left is still drawn, its
//! line stopped, for as long as its last tries are in the window. Beyond the bound a new server is not tracked
//! (the dashboard shows no sparkline for it), which costs nothing on the way of its requests.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dashmap::DashMap;

/// Seconds of history kept per server.
pub const WINDOW_SECS: u64 = 180;
/// [`WINDOW_SECS`] as a length.
pub const WINDOW_LEN: usize = WINDOW_SECS as usize;
/// Most servers tracked at once.
pub const MAX_SERVERS: usize = 256;

/// Latency buckets: bucket `i` holds latencies up to `FIRST_BOUND_US << i` (the last one everything above).
const LATENCY_BUCKETS: usize = 24;
const FIRST_BOUND_US: u64 = 64;
/// A bucket's `second` while it is being emptied: a try that finds it is not counted.
const RESETTING: u64 = u64::MAX;
/// In a bucket's packed `tries`: one try (low half) and one failed try (high half).
const ONE_TRY: u64 = 1;
const ONE_ERROR: u64 = 1 << 32;

/// What one server did in one second.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Second {
    /// Tries sent to it that ended in that second.
    pub requests: u32,
    /// Of those, tries that failed (no usable response head, or a 502/503 answered elsewhere).
    pub errors: u32,
    /// 99th percentile of the time to the response head of the tries that got one, in milliseconds; `None`
    /// when none did.
    pub p99_ms: Option<f64>,
}

/// The per-server series; cheap to clone (a handle to one shared table).
#[derive(Debug, Clone, Default)]
pub struct Traffic {
    inner: Arc<Table>,
}

#[derive(Debug, Default)]
struct Table {
    servers: DashMap<String, Arc<Series>>,
    /// Servers in `servers`, counted here so that a full table costs a load, not a walk of the shards.
    tracked: AtomicUsize,
}

/// One server's ring of seconds.
#[derive(Debug)]
struct Series {
    buckets: Box<[Bucket]>,
    /// The newest second recorded, so that a series nobody records into any more can be dropped.
    newest: AtomicU64,
}

#[derive(Debug, Default)]
struct Bucket {
    /// The Unix second this bucket holds; another value means it holds nothing current.
    second: AtomicU64,
    /// Tries in the low 32 bits, failed tries in the high 32: one atomic, so that a try which took this bucket
    /// just before another thread emptied it lands whole on one side of the emptying, never as an error without
    /// its request.
    tries: AtomicU64,
    latency: [AtomicU32; LATENCY_BUCKETS],
}

/// The current Unix second.
pub fn unix_second(now: SystemTime) -> u64 {
    now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Traffic {
    /// An empty table.
    pub fn new() -> Traffic {
        Traffic::default()
    }

    /// Records a try of server `id` that ended now: `latency` to the response head, or `None` when it failed.
    pub fn record(&self, id: &str, latency: Option<Duration>) {
        self.record_at(id, unix_second(SystemTime::now()), latency);
    }

    /// Records a try of server `id` that ended in Unix second `second`.
    pub fn record_at(&self, id: &str, second: u64, latency: Option<Duration>) {
        let series = match self.inner.servers.get(id) {
            Some(series) => Arc::clone(&series),
            None => match self.track(id) {
                Some(series) => series,
                None => return,
            },
        };
        let Some(bucket) = series.bucket_for(second) else {
            return;
        };
        match latency {
            Some(latency) => {
                bucket.tries.fetch_add(ONE_TRY, Ordering::Relaxed);
                bucket.latency[latency_bucket(latency)].fetch_add(1, Ordering::Relaxed);
            }
            None => {
                bucket
                    .tries
                    .fetch_add(ONE_TRY | ONE_ERROR, Ordering::Relaxed);
            }
        }
    }

    /// Starts tracking `id` when there is room.
    fn track(&self, id: &str) -> Option<Arc<Series>> {
        let table = &*self.inner;
        if table.tracked.load(Ordering::Relaxed) >= MAX_SERVERS {
            return None;
        }
        let entry = table.servers.entry(id.to_owned()).or_insert_with(|| {
            table.tracked.fetch_add(1, Ordering::Relaxed);
            Arc::new(Series::new())
        });
        Some(Arc::clone(&entry))
    }

    /// Forgets the servers that had no try in the [`WINDOW_SECS`] seconds before `now` (Unix second): servers that
    /// left or expired, and idle ones (whose series would be all zeros).
    pub fn prune_idle(&self, now: u64) {
        let table = &*self.inner;
        table.servers.retain(|_, series| {
            let keep = series.newest.load(Ordering::Relaxed) + WINDOW_SECS > now;
            if !keep {
                table.tracked.fetch_sub(1, Ordering::Relaxed);
            }
            keep
        });
    }

    /// Every tracked server's figures for Unix second `second`, sorted by id.
    pub fn second(&self, second: u64) -> Vec<(String, Second)> {
        let mut all: Vec<(String, Second)> = self
            .inner
            .servers
            .iter()
            .map(|entry| (entry.key().clone(), entry.value().read(second)))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Every tracked server's figures for the [`WINDOW_SECS`] seconds that end with `last` (oldest first), sorted
    /// by id. A fixed array per server: the history of every page that opens is built from this.
    pub fn window(&self, last: u64) -> Vec<(String, Box<[Second; WINDOW_LEN]>)> {
        let first = last.saturating_sub(WINDOW_SECS - 1);
        let mut all: Vec<(String, Box<[Second; WINDOW_LEN]>)> = self
            .inner
            .servers
            .iter()
            .map(|entry| {
                let series = entry.value();
                let mut seconds = Box::new([Second::default(); WINDOW_LEN]);
                for (slot, s) in seconds.iter_mut().zip(first..=last) {
                    *slot = series.read(s);
                }
                (entry.key().clone(), seconds)
            })
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }
}

impl Series {
    fn new() -> Series {
        Series {
            buckets: (0..WINDOW_SECS).map(|_| Bucket::default()).collect(),
            newest: AtomicU64::new(0),
        }
    }

    /// The bucket of `second`, emptied first when it still holds an older second; `None` (the try is not
    /// counted) while another thread empties it, or when it already holds a newer second. The one thread that
    /// swaps in [`RESETTING`] empties it and only then publishes the new second (Release). A try that took the
    /// bucket just before it was emptied may still be wiped, or land in the new second; its counts are one atomic
    /// addition, so never half of it. A dashboard can afford the rare miscounted try; the way of a request cannot
    /// afford a lock.
    fn bucket_for(&self, second: u64) -> Option<&Bucket> {
        let bucket = &self.buckets[(second % WINDOW_SECS) as usize];
        let held = bucket.second.load(Ordering::Acquire);
        if held == second {
            return Some(bucket);
        }
        if held == RESETTING || held > second {
            return None;
        }
        if bucket
            .second
            .compare_exchange(held, RESETTING, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            // Another thread got there first; the bucket is ours only if it already holds this second.
            return (bucket.second.load(Ordering::Acquire) == second).then_some(bucket);
        }
        bucket.tries.store(0, Ordering::Relaxed);
        for count in &bucket.latency {
            count.store(0, Ordering::Relaxed);
        }
        bucket.second.store(second, Ordering::Release);
        self.newest.fetch_max(second, Ordering::Relaxed);
        Some(bucket)
    }

    fn read(&self, second: u64) -> Second {
        let bucket = &self.buckets[(second % WINDOW_SECS) as usize];
        if bucket.second.load(Ordering::Acquire) != second {
            return Second::default();
        }
        let counts: Vec<u32> = bucket
            .latency
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        let tries = bucket.tries.load(Ordering::Relaxed);
        Second {
            requests: tries as u32,
            errors: (tries >> 32) as u32,
            p99_ms: percentile_ms(&counts, 0.99),
        }
    }
}

/// The histogram bucket of `latency`: the first whose bound holds it.
fn latency_bucket(latency: Duration) -> usize {
    let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
    if us <= FIRST_BOUND_US {
        return 0;
    }
    // Bucket i holds (64 << (i-1), 64 << i]: the bit length of (us - 1) / 64.
    let i = (64 - ((us - 1) / FIRST_BOUND_US).leading_zeros()) as usize;
    i.min(LATENCY_BUCKETS - 1)
}

/// The `q` quantile of a histogram, interpolated linearly inside the bucket that holds it.
fn percentile_ms(counts: &[u32], q: f64) -> Option<f64> {
    let total: u64 = counts.iter().map(|&c| u64::from(c)).sum();
    if total == 0 {
        return None;
    }
    let rank = (q * total as f64).ceil().max(1.0);
    let mut below = 0.0;
    for (i, &count) in counts.iter().enumerate() {
        let count = f64::from(count);
        if count > 0.0 && below + count >= rank {
            let upper = (FIRST_BOUND_US << i) as f64;
            let lower = if i == 0 { 0.0 } else { upper / 2.0 };
            let us = lower + (upper - lower) * (rank - below) / count;
            return Some(us / 1000.0);
        }
        below += count;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: u64 = 1_800_000_000;

    #[test]
    fn latencies_fall_in_doubling_buckets() {
        assert_eq!(latency_bucket(Duration::ZERO), 0);
        assert_eq!(latency_bucket(Duration::from_micros(64)), 0);
        assert_eq!(latency_bucket(Duration::from_micros(65)), 1);
        assert_eq!(latency_bucket(Duration::from_micros(128)), 1);
        assert_eq!(latency_bucket(Duration::from_micros(129)), 2);
        assert_eq!(latency_bucket(Duration::from_millis(1)), 4);
        assert_eq!(
            latency_bucket(Duration::from_secs(3600)),
            LATENCY_BUCKETS - 1
        );
    }

    #[test]
    fn a_second_counts_requests_errors_and_a_p99() {
        let t = Traffic::new();
        for _ in 0..99 {
            t.record_at("a", T, Some(Duration::from_micros(100)));
        }
        t.record_at("a", T, Some(Duration::from_millis(50)));
        t.record_at("a", T, None);
        t.record_at("b", T + 1, Some(Duration::from_millis(2)));
        let now = t.second(T);
        assert_eq!(now.len(), 2);
        let (id, a) = &now[0];
        assert_eq!(id, "a");
        assert_eq!((a.requests, a.errors), (101, 1));
        // 99 of 100 head latencies are 100 µs: the p99 is in the (64, 128] µs bucket.
        let p99 = a.p99_ms.unwrap();
        assert!((0.064..=0.128).contains(&p99), "{p99}");
        assert_eq!(now[1].1, Second::default(), "b had nothing in that second");
        let b = t.second(T + 1)[1].1;
        assert_eq!(b.requests, 1);
        let p99 = b.p99_ms.unwrap();
        assert!((1.024..=2.048).contains(&p99), "{p99}");
    }

    #[test]
    fn a_slot_that_comes_round_again_starts_empty_and_old_seconds_read_as_nothing() {
        let t = Traffic::new();
        t.record_at("a", T, None);
        t.record_at("a", T + WINDOW_SECS, Some(Duration::from_millis(1)));
        assert_eq!(t.second(T)[0].1, Second::default());
        let later = t.second(T + WINDOW_SECS)[0].1;
        assert_eq!((later.requests, later.errors), (1, 0));
    }

    #[test]
    fn the_window_runs_oldest_first() {
        let t = Traffic::new();
        t.record_at("a", T - 2, None);
        t.record_at("a", T, Some(Duration::from_millis(1)));
        let window = t.window(T);
        assert_eq!(window.len(), 1);
        let seconds = &window[0].1;
        assert_eq!(seconds.len() as u64, WINDOW_SECS);
        assert_eq!(seconds[seconds.len() - 3].errors, 1);
        assert_eq!(seconds[seconds.len() - 1].requests, 1);
        assert_eq!(seconds[0], Second::default());
    }

    #[test]
    fn concurrent_tries_across_a_slot_reset_never_count_errors_without_their_requests() {
        let t = Traffic::new();
        // Every try fails, so each second must read errors == requests however the resets interleave.
        let rounds = 200u64;
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for round in 0..rounds {
                        for _ in 0..50 {
                            t.record_at("a", T + round * WINDOW_SECS, None);
                        }
                    }
                });
            }
        });
        let last = t.second(T + (rounds - 1) * WINDOW_SECS)[0].1;
        assert!(last.requests > 0);
        assert_eq!(last.requests, last.errors);
    }

    #[test]
    fn a_late_try_for_an_older_second_does_not_wipe_a_newer_one() {
        let t = Traffic::new();
        t.record_at("a", T + WINDOW_SECS, None);
        t.record_at("a", T, None);
        assert_eq!(t.second(T + WINDOW_SECS)[0].1.requests, 1);
    }

    #[test]
    fn a_server_without_tries_for_a_window_is_pruned() {
        let t = Traffic::new();
        t.record_at("old", T, None);
        t.record_at("new", T + 100, None);
        t.prune_idle(T + WINDOW_SECS - 1);
        assert_eq!(t.second(T).len(), 2);
        t.prune_idle(T + WINDOW_SECS);
        let left: Vec<String> = t.second(T).into_iter().map(|(id, _)| id).collect();
        assert_eq!(left, ["new"]);
    }

    #[test]
    fn no_more_than_max_servers_are_tracked() {
        let t = Traffic::new();
        for i in 0..MAX_SERVERS + 10 {
            t.record_at(&format!("s{i}"), T, None);
        }
        assert_eq!(t.second(T).len(), MAX_SERVERS);
        t.prune_idle(T + WINDOW_SECS);
        t.record_at("late", T + WINDOW_SECS, None);
        assert_eq!(
            t.second(T + WINDOW_SECS).len(),
            1,
            "room again once the idle ones went"
        );
    }
}
