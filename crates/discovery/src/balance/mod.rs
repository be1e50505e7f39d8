//! Choosing a live server for each proxied request.
//!
//! - this file: the [`Balancer`] and its settings, and the pick itself;
//! - `strategy/`: how to choose among candidates, one file per strategy behind one trait, the names in one list;
//! - `health.rs`: passive health, ejecting servers that fail and returning them to rotation.
//!
//! The balancer reads the registry only through a `LiveSet` (the servers live at one instant, and an event sink).
//! A pick costs O(log n) expected at n servers, whatever the strategy: it draws from the snapshot by index and
//! checks only the servers drawn (see `strategy/mod.rs`), so it suits 100,000 servers on one api-server.

mod health;
mod strategy;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::backend::{Backend, Clock, InFlightGuard};
use crate::error::ConfigError;
use crate::registry::Registry;
use strategy::{Candidates, Select};

pub use health::{BackendStats, FailureOutcome};
pub use strategy::{LATENCY_TIE, Strategy};

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
    /// The configured strategy, built once (with any state of its own).
    selector: Box<dyn Select>,
    /// The registry's clock, to stamp latency samples in the ticks per-server state keeps.
    clock: Clock,
    /// Serialises ejection decisions so that concurrent failures cannot together exceed the ejectable share.
    eject_lock: Mutex<()>,
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
        let clock = registry.live_set(Instant::now()).clock();
        Ok(Balancer {
            inner: Arc::new(Inner {
                clock,
                registry,
                selector: config.strategy.selector(),
                config,
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
    /// a server that failed recently beats refusing the request outright. A server drawn whose ejection is over
    /// returns to rotation here (with its `Recover` event); [`recover_due`](Balancer::recover_due) does it for the
    /// others.
    ///
    /// O(log n) expected in the number of servers n: see `strategy/mod.rs` for how the filters stay off the walk.
    pub fn pick_at(&self, exclude: &[&str], now: Instant) -> Option<(Arc<Backend>, InFlightGuard)> {
        let live = self.inner.registry.live_set(now);
        let choose = |healthy_only| {
            (self.inner.selector).select(&Candidates::new(&live, exclude, healthy_only))
        };
        let chosen = choose(true).or_else(|| choose(false))?;
        Some((Arc::clone(chosen), chosen.peer().enter()))
    }

    /// Reports how long one try on `backend` took to answer (its response head), at `now`: what `p2c_ewma` weighs.
    /// Costs nothing with the other strategies.
    pub fn observe_latency(&self, backend: &Backend, latency: Duration, now: Instant) {
        if self.inner.config.strategy.uses_latency() {
            let now = self.inner.clock.ticks(now);
            backend.peer().observe_latency(latency, now);
        }
    }
}

#[cfg(test)]
mod scale_tests;
#[cfg(test)]
mod tests;
