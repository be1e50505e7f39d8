//! Choosing a live server for each proxied request.

mod health;

use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;

use crate::backend::{Backend, PeerState};
use crate::error::ConfigError;
use crate::registry::{Registry, is_live};

pub use health::{BackendStats, FailureOutcome};

/// How to choose among the live servers.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Power of two random choices: sample two servers (by weight), take the one with fewer requests in flight
    /// per unit of weight. Nearly as good as least-loaded, without herding on one server.
    #[default]
    P2c,
    /// Each server in turn (weights ignored).
    RoundRobin,
    /// Uniformly at random, in proportion to weight.
    Random,
}

impl Strategy {
    /// `"p2c"`, `"round_robin"` or `"random"`, as in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::P2c => "p2c",
            Strategy::RoundRobin => "round_robin",
            Strategy::Random => "random",
        }
    }
}

impl FromStr for Strategy {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Strategy, ConfigError> {
        match s {
            "p2c" => Ok(Strategy::P2c),
            "round_robin" => Ok(Strategy::RoundRobin),
            "random" => Ok(Strategy::Random),
            other => Err(ConfigError::UnknownStrategy(other.to_owned())),
        }
    }
}

/// Selection and passive-health settings.
#[derive(Debug, Clone, PartialEq)]
pub struct BalancerConfig {
    /// How to choose.
    pub strategy: Strategy,
    /// Consecutive failures that eject a server (1: the first failure does, which suits connection errors).
    pub failure_threshold: u32,
    /// First ejection time; each further consecutive ejection doubles it.
    pub base_ejection: Duration,
    /// Longest ejection time.
    pub max_ejection: Duration,
    /// Never eject more than this share of the live servers (rounded down): past it, failures are counted but the
    /// server stays, since routing to a flaky server beats refusing the request.
    pub max_ejected_share: f64,
}

impl Default for BalancerConfig {
    fn default() -> Self {
        BalancerConfig {
            strategy: Strategy::P2c,
            failure_threshold: 1,
            base_ejection: Duration::from_secs(1),
            max_ejection: Duration::from_secs(30),
            max_ejected_share: 0.5,
        }
    }
}

/// Chooses servers from the registry's live set; a cheap `Clone` handle.
///
/// In-flight counts and ejections are kept per server id and survive every rebuild of the live set.
#[derive(Debug, Clone)]
pub struct Balancer {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    registry: Registry,
    config: BalancerConfig,
    next: AtomicUsize,
    /// Serialises ejection decisions so that concurrent failures cannot together exceed the ejectable share.
    eject_lock: Mutex<()>,
}

/// Counts one request in flight to a server until dropped.
#[derive(Debug)]
#[must_use = "the request counts as in flight only while the guard lives"]
pub struct InFlightGuard {
    state: Arc<PeerState>,
}

impl InFlightGuard {
    fn new(state: Arc<PeerState>) -> InFlightGuard {
        state.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlightGuard { state }
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.state.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Balancer {
    /// A balancer over `registry`'s live set.
    pub fn new(registry: Registry, config: BalancerConfig) -> Result<Balancer, ConfigError> {
        if !(0.0..=1.0).contains(&config.max_ejected_share) {
            return Err(ConfigError::BadEjectedShare(config.max_ejected_share));
        }
        if config.base_ejection.is_zero() || config.max_ejection < config.base_ejection {
            return Err(ConfigError::BadEjectionTimes {
                base: config.base_ejection,
                max: config.max_ejection,
            });
        }
        if config.failure_threshold == 0 {
            return Err(ConfigError::ZeroFailureThreshold);
        }
        Ok(Balancer {
            inner: Arc::new(Inner {
                registry,
                config,
                next: AtomicUsize::new(0),
                eject_lock: Mutex::new(()),
            }),
        })
    }

    /// The configured strategy.
    pub fn strategy(&self) -> Strategy {
        self.inner.config.strategy
    }

    /// The registry this balancer reads.
    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    /// [`pick_at`](Balancer::pick_at) now (tokio's clock, so virtual time in paused tests).
    pub fn pick(&self, exclude: &[&str]) -> Option<(Arc<Backend>, InFlightGuard)> {
        self.pick_at(exclude, Instant::now())
    }

    /// A live server whose id is not in `exclude` (the servers a retry already tried), or `None` when there is none.
    ///
    /// Ejected servers are skipped; if every remaining server is ejected, one of them is chosen anyway, since trying
    /// a server that failed recently beats refusing the request outright.
    pub fn pick_at(&self, exclude: &[&str], now: Instant) -> Option<(Arc<Backend>, InFlightGuard)> {
        let registry = &self.inner.registry;
        let snapshot = registry.snapshot();
        let now_ticks = registry.clock().ticks(now);
        let frozen = registry.self_preservation();
        self.recover(&snapshot.backends, now_ticks, now);

        let eligible =
            |b: &&Arc<Backend>| is_live(b, now_ticks, frozen) && !exclude.contains(&b.id());
        let healthy = |b: &&Arc<Backend>| {
            eligible(b) && b.state.ejected_until.load(Ordering::Relaxed) <= now_ticks
        };
        let chosen = self
            .choose(snapshot.backends.iter().filter(healthy))
            .or_else(|| self.choose(snapshot.backends.iter().filter(eligible)))?;
        Some((
            Arc::clone(chosen),
            InFlightGuard::new(Arc::clone(&chosen.state)),
        ))
    }

    /// Two passes over a cheap, cloneable iterator instead of collecting candidates: no allocation per pick.
    fn choose<'a, I>(&self, candidates: I) -> Option<&'a Arc<Backend>>
    where
        I: Iterator<Item = &'a Arc<Backend>> + Clone,
    {
        let (count, total_weight) = candidates.clone().fold((0usize, 0u64), |(n, w), b| {
            (n + 1, w + u64::from(b.weight()))
        });
        if count == 0 {
            return None;
        }
        match self.inner.config.strategy {
            Strategy::RoundRobin => {
                let turn = self.inner.next.fetch_add(1, Ordering::Relaxed) % count;
                candidates.clone().nth(turn).or_else(|| candidates.last())
            }
            Strategy::Random => {
                by_weight(candidates, rand::rng().random_range(0..total_weight), None)
            }
            Strategy::P2c => {
                let mut rng = rand::rng();
                let first = by_weight(candidates.clone(), rng.random_range(0..total_weight), None)?;
                if count == 1 {
                    return Some(first);
                }
                let rest = total_weight - u64::from(first.weight());
                let second = by_weight(candidates, rng.random_range(0..rest.max(1)), Some(first))?;
                Some(less_loaded(first, second))
            }
        }
    }
}

/// The candidate at offset `point` of the weight line, skipping `skip`. Should concurrent ejections shrink the set
/// between the two passes, the last candidate seen stands in.
fn by_weight<'a>(
    candidates: impl Iterator<Item = &'a Arc<Backend>>,
    mut point: u64,
    skip: Option<&Arc<Backend>>,
) -> Option<&'a Arc<Backend>> {
    let mut last = None;
    for backend in candidates {
        if skip.is_some_and(|s| Arc::ptr_eq(s, backend)) {
            continue;
        }
        let weight = u64::from(backend.weight());
        if point < weight {
            return Some(backend);
        }
        point -= weight;
        last = Some(backend);
    }
    last
}

/// Fewer in flight per unit of weight; ties go to `a`, itself a weighted random sample.
fn less_loaded<'a>(a: &'a Arc<Backend>, b: &'a Arc<Backend>) -> &'a Arc<Backend> {
    let load_a = u128::from(a.in_flight()) * u128::from(b.weight());
    let load_b = u128::from(b.in_flight()) * u128::from(a.weight());
    if load_b < load_a { b } else { a }
}

#[cfg(test)]
mod tests;
