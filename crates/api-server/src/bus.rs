//! Whether the bus delivers: the state the canary probes update and the registry, `/registry`, `/metrics` and the
//! dashboard read.
//!
//! The bus is alive while a canary published through the nsqd set came back within `canary_timeout` and the
//! heartbeat consumer holds at least one nsqd connection (or no server is registered, so there is nothing to
//! preserve). Either alone can lie: a connected consumer says nothing about delivery, and canaries can flow while
//! the heartbeat subscription is gone.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use discovery::Registry;
use tokio::time::Instant;

/// One nsqd as the canary sees it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NsqdProbe {
    /// Its TCP address.
    pub addr: String,
    /// Milliseconds since a canary through it came back (None: never).
    pub last_canary_ms: Option<u64>,
    /// Whether a canary came back within the timeout.
    pub delivering: bool,
    /// How far its clock is ahead of this api-server's (negative: behind), in ms, from this instance's last canary
    /// through it (None: none yet). More than the TTL behind, every heartbeat it delivers is ignored as stale.
    pub clock_offset_ms: Option<i64>,
}

/// The bus state shown by the admin API.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BusView {
    /// True while canaries come back and the heartbeat consumer is connected.
    pub alive: bool,
    /// nsqd connections of the heartbeat consumer.
    pub heartbeat_connections: i64,
    /// Milliseconds since any canary came back (None: never).
    pub last_canary_ms: Option<u64>,
    /// The configured canary timeout, in ms.
    pub canary_timeout_ms: u64,
    /// Per nsqd.
    pub nsqd: Vec<NsqdProbe>,
}

/// Shared bus-liveness state; cheap to clone.
#[derive(Debug, Clone)]
pub struct Bus {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    started: Instant,
    timeout: Duration,
    alive: AtomicBool,
    heartbeat_connections: std::sync::atomic::AtomicI64,
    /// Heartbeats more than this far behind (by nsqd's timestamp) are stale: the TTL.
    ttl: Duration,
    last_by_nsqd: Mutex<BTreeMap<String, NsqdState>>,
    /// Kept apart from the per-nsqd map, which forgets an nsqd when nsqlookupd does (as when it dies).
    last_any: Mutex<Option<Instant>>,
    canaries_published: AtomicU64,
    canaries_received: AtomicU64,
    publish_failures: AtomicU64,
    down_transitions: AtomicU64,
}

/// What the canary learnt of one nsqd.
#[derive(Debug, Default)]
struct NsqdState {
    last_canary: Option<Instant>,
    clock_offset_ms: Option<i64>,
    /// When a skewed clock was last logged, so that it is said once a minute, not once a canary.
    warned: Option<Instant>,
}

/// How often a skewed nsqd clock is logged again.
const SKEW_WARN_EVERY: Duration = Duration::from_secs(60);

impl Bus {
    /// A bus state that counts as alive for one `timeout` after `now`, the time the first canary needs; `ttl` is the
    /// registry's, against which nsqd clocks are judged.
    pub fn new(timeout: Duration, ttl: Duration, now: Instant) -> Bus {
        Bus {
            inner: Arc::new(Inner {
                started: now,
                timeout,
                ttl,
                alive: AtomicBool::new(true),
                heartbeat_connections: Default::default(),
                last_by_nsqd: Mutex::new(BTreeMap::new()),
                last_any: Mutex::new(None),
                canaries_published: AtomicU64::new(0),
                canaries_received: AtomicU64::new(0),
                publish_failures: AtomicU64::new(0),
                down_transitions: AtomicU64::new(0),
            }),
        }
    }

    fn probes(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, NsqdState>> {
        self.inner
            .last_by_nsqd
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The nsqd set being probed changed.
    pub fn set_nsqds(&self, addrs: &[String]) {
        let mut probes = self.probes();
        probes.retain(|addr, _| addrs.contains(addr));
        for addr in addrs {
            probes.entry(addr.clone()).or_default();
        }
    }

    /// A fresh canary came back through `nsqd` at `now`; `clock_offset_ms` is nsqd's clock against ours when it was
    /// one of this instance's. An nsqd more than half the TTL behind is logged (once a minute): heartbeats through
    /// it lose that much of their life, and more than the TTL behind they are all ignored as stale.
    pub fn canary_received(&self, nsqd: &str, now: Instant, clock_offset_ms: Option<i64>) {
        self.inner.canaries_received.fetch_add(1, Ordering::Relaxed);
        if let Some(state) = self.probes().get_mut(nsqd) {
            state.last_canary = Some(now);
            if let Some(offset) = clock_offset_ms {
                state.clock_offset_ms = Some(offset);
                let ttl_ms = i64::try_from(self.inner.ttl.as_millis()).unwrap_or(i64::MAX);
                let due = state
                    .warned
                    .is_none_or(|at| now.saturating_duration_since(at) >= SKEW_WARN_EVERY);
                if offset < -(ttl_ms / 2) && due {
                    state.warned = Some(now);
                    tracing::warn!(
                        nsqd,
                        clock_offset_ms = offset,
                        ttl_ms,
                        "this nsqd's clock is behind this api-server's by more than half the TTL: heartbeats it \
                         delivers are judged by its timestamps, lose that much of their life, and are ignored as \
                         stale once it is a whole TTL behind; fix the clocks (NTP)"
                    );
                }
            }
        }
        let mut any = self
            .inner
            .last_any
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *any = Some(any.map_or(now, |at| at.max(now)));
    }

    /// A canary was published (or failed to be).
    pub fn canary_published(&self, ok: bool) {
        let counter = if ok {
            &self.inner.canaries_published
        } else {
            &self.inner.publish_failures
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Recomputes liveness at `now` and tells the registry when it changed; returns the new state.
    pub fn evaluate(&self, registry: &Registry, heartbeat_connections: i64, now: Instant) -> bool {
        self.inner
            .heartbeat_connections
            .store(heartbeat_connections, Ordering::Relaxed);
        let last = self.last_canary();
        let within = |at: Instant| now.saturating_duration_since(at) < self.inner.timeout;
        // Until the first canary could have come back (and the subscription connected), the bus gets the benefit
        // of the doubt: there is nothing to preserve yet anyway.
        let starting = last.is_none() && within(self.inner.started);
        // Through nsqlookupd the subscription only finds nsqd that already have the heartbeat topic: with no server
        // registered yet there may be none, and nothing to preserve either.
        let subscribed = heartbeat_connections > 0 || registry.live_count(now) == 0;
        let alive = starting || (last.is_some_and(within) && subscribed);
        let was = self.inner.alive.swap(alive, Ordering::AcqRel);
        if was != alive {
            if alive {
                tracing::info!("bus delivers again; self-preservation ends");
            } else {
                self.inner.down_transitions.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    heartbeat_connections,
                    "bus does not deliver (no canary back within {:?}); self-preservation: expiry frozen",
                    self.inner.timeout
                );
            }
        }
        registry.set_bus_alive(alive, now);
        alive
    }

    fn last_canary(&self) -> Option<Instant> {
        *self
            .inner
            .last_any
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the bus counted as alive at the last evaluation.
    pub fn alive(&self) -> bool {
        self.inner.alive.load(Ordering::Acquire)
    }

    /// Heartbeat consumer connections at the last evaluation.
    pub fn heartbeat_connections(&self) -> i64 {
        self.inner.heartbeat_connections.load(Ordering::Relaxed)
    }

    /// Counters: (published, received, publish failures, times the bus went down).
    pub fn counters(&self) -> (u64, u64, u64, u64) {
        let i = &self.inner;
        (
            i.canaries_published.load(Ordering::Relaxed),
            i.canaries_received.load(Ordering::Relaxed),
            i.publish_failures.load(Ordering::Relaxed),
            i.down_transitions.load(Ordering::Relaxed),
        )
    }

    /// The state for the admin API.
    pub fn view(&self, now: Instant) -> BusView {
        let ms = |at: Instant| now.saturating_duration_since(at).as_millis() as u64;
        let nsqd = self
            .probes()
            .iter()
            .map(|(addr, state)| NsqdProbe {
                addr: addr.clone(),
                last_canary_ms: state.last_canary.map(ms),
                delivering: state
                    .last_canary
                    .is_some_and(|l| now.saturating_duration_since(l) < self.inner.timeout),
                clock_offset_ms: state.clock_offset_ms,
            })
            .collect();
        BusView {
            alive: self.alive(),
            heartbeat_connections: self.heartbeat_connections(),
            last_canary_ms: self.last_canary().map(ms),
            canary_timeout_ms: self.inner.timeout.as_millis() as u64,
            nsqd,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use discovery::{Heartbeat, RegistryConfig};
    use std::time::SystemTime;

    #[tokio::test(start_paused = true)]
    async fn no_canary_within_the_timeout_freezes_the_registry_and_one_thaws_it() {
        let registry = Registry::new(RegistryConfig::new(Duration::from_secs(2))).unwrap();
        let bus = Bus::new(
            Duration::from_millis(500),
            Duration::from_secs(2),
            Instant::now(),
        );
        bus.set_nsqds(&["n1:4150".to_owned()]);
        let hb = Heartbeat::new("a", "10.0.0.1:80", 1, 1);
        registry.observe(&hb.encode(), 0, Instant::now(), SystemTime::now());
        assert!(bus.evaluate(&registry, 1, Instant::now()));
        tokio::time::advance(Duration::from_millis(600)).await;
        assert!(!bus.evaluate(&registry, 1, Instant::now()));
        assert!(registry.self_preservation());
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(registry.live_count(Instant::now()), 1, "held while frozen");
        bus.canary_received("n1:4150", Instant::now(), None);
        assert!(bus.evaluate(&registry, 1, Instant::now()));
        assert!(!registry.self_preservation());
        assert_eq!(registry.live_count(Instant::now()), 1, "one TTL of grace");
        // Canaries alone are not enough while servers are registered: the heartbeat subscription must be there too.
        assert!(!bus.evaluate(&registry, 0, Instant::now()));
        // With nobody registered there is nothing to preserve, and canaries alone decide.
        let empty = Registry::new(RegistryConfig::new(Duration::from_secs(2))).unwrap();
        bus.canary_received("n1:4150", Instant::now(), None);
        assert!(bus.evaluate(&empty, 0, Instant::now()));
    }

    #[tokio::test(start_paused = true)]
    async fn an_nsqds_clock_offset_is_shown_from_its_last_own_canary() {
        let bus = Bus::new(
            Duration::from_millis(500),
            Duration::from_secs(2),
            Instant::now(),
        );
        bus.set_nsqds(&["n1:4150".to_owned(), "n2:4150".to_owned()]);
        bus.canary_received("n1:4150", Instant::now(), Some(-5_000));
        // Another instance's canary proves delivery but says nothing of the clock: the last measure stays.
        bus.canary_received("n1:4150", Instant::now(), None);
        let view = bus.view(Instant::now());
        let offsets: Vec<_> = view.nsqd.iter().map(|n| n.clock_offset_ms).collect();
        assert_eq!(offsets, [Some(-5_000), None]);
        assert!(view.nsqd[0].delivering && !view.nsqd[1].delivering);
    }
}
