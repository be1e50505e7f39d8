//! Balancing strategies: each one a type behind [`Select`], in a file of its own, and every name listed once
//! here, in [`Strategy`].
//!
//! Every pick must cost O(log n) expected at n servers (100,000 on one api-server), so no strategy walks the
//! candidates. [`Candidates`] offers a draw by weight, a binary search over the running sum of weights the registry
//! keeps with each snapshot; the per-pick filters (the ids a retry excludes, ejected servers, servers expired since
//! the last sweep) are applied by rejection: a server drawn that fails them is drawn again, up to
//! [`DRAW_TRIES`] times. Only when all of those fail (most servers filtered out) does a draw fall back to the
//! walk, which gives the same distribution exactly. Round robin indexes the snapshot by its turn instead.
//!
//! Adding a strategy touches two files: a new `name.rs` with a type implementing [`Select`], and this one (its
//! `mod` line, a [`Strategy`] variant, its name in [`Strategy::as_str`] and [`Strategy::ALL`], and its constructor in
//! [`Strategy::selector`]). The compiler points at each of these through the exhaustive matches.

mod p2c;
mod p2c_ewma;
pub use p2c_ewma::LATENCY_TIE;
mod random;
mod round_robin;

use std::cell::Cell;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use crate::backend::Backend;
use crate::error::ConfigError;
use rand::Rng;

use super::health::recover_if_due;
use crate::registry::{Live, LiveSet};

/// How to choose among the live servers: the names the config file accepts.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Power of two random choices: sample two servers (by weight), take the one with fewer requests in flight
    /// per unit of weight. Nearly as good as least-loaded, without herding on one server.
    #[default]
    P2c,
    /// Power of two random choices by expected latency: of two servers sampled by weight, the one whose decaying
    /// peak latency times (requests in flight + 1), per unit of weight, is lower. Avoids a slow server from its
    /// first slow answer; see [`LATENCY_DECAY`](crate::LATENCY_DECAY) for how fast it forgets.
    P2cEwma,
    /// Each server in turn (weights ignored).
    RoundRobin,
    /// Uniformly at random, in proportion to weight.
    Random,
}

impl Strategy {
    /// Every strategy, in the order the docs list them.
    pub const ALL: [Strategy; 4] = [
        Strategy::P2c,
        Strategy::P2cEwma,
        Strategy::RoundRobin,
        Strategy::Random,
    ];

    /// `"p2c"`, `"p2c_ewma"`, `"round_robin"` or `"random"`, as in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::P2c => "p2c",
            Strategy::P2cEwma => "p2c_ewma",
            Strategy::RoundRobin => "round_robin",
            Strategy::Random => "random",
        }
    }

    /// A fresh selector of this strategy, for one balancer (it may keep state, such as round robin's turn).
    pub(crate) fn selector(self) -> Box<dyn Select> {
        match self {
            Strategy::P2c => Box::new(p2c::P2c),
            Strategy::P2cEwma => Box::new(p2c_ewma::P2cEwma),
            Strategy::RoundRobin => Box::new(round_robin::RoundRobin::default()),
            Strategy::Random => Box::new(random::Random),
        }
    }

    /// Whether picks depend on the servers' latency, so the proxy's [`observe_latency`](crate::Balancer::observe_latency)
    /// has something to feed (the other strategies skip its writes).
    pub(crate) fn uses_latency(self) -> bool {
        match self {
            Strategy::P2cEwma => true,
            Strategy::P2c | Strategy::RoundRobin | Strategy::Random => false,
        }
    }

    /// The accepted names for an error message: `"p2c", "p2c_ewma", "round_robin" or "random"`.
    pub(crate) fn expected_names() -> String {
        let quoted: Vec<String> = Strategy::ALL
            .iter()
            .map(|s| format!("{:?}", s.as_str()))
            .collect();
        match quoted.split_last() {
            Some((last, [])) => last.clone(),
            Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
            None => String::new(),
        }
    }
}

impl FromStr for Strategy {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Strategy, ConfigError> {
        Strategy::ALL
            .into_iter()
            .find(|strategy| strategy.as_str() == s)
            .ok_or_else(|| ConfigError::UnknownStrategy(s.to_owned()))
    }
}

/// One way of choosing a server. Called on every proxied request, so an implementation must not lock or allocate,
/// nor walk the candidates (see the module docs).
pub(crate) trait Select: fmt::Debug + Send + Sync {
    /// One of `candidates`, or `None` when there is none.
    fn select<'a>(&self, candidates: &Candidates<'a>) -> Option<&'a Arc<Backend>>;
}

/// How many servers a draw tries by index before it falls back to walking the candidates. With a fraction f of the
/// servers filtered out the walk is needed with probability f^8: under 0.4% while half of them are ejected.
pub(crate) const DRAW_TRIES: usize = 8;

/// The servers one pick may choose from: live, not excluded by the caller and, when `healthy_only`, not ejected.
/// Nothing is counted or collected up front: a strategy draws servers by index and [`accepts`](Candidates::accepts)
/// tests each one drawn, so a pick allocates nothing and costs O(log n) expected.
#[derive(Clone)]
pub(crate) struct Candidates<'a> {
    live: Live<'a>,
    /// Where the `Recover` event of a server drawn after its ejection goes.
    live_set: &'a LiveSet<'a>,
    exclude: &'a [&'a str],
    healthy_only: bool,
    now_ticks: u64,
    /// How many candidates there are and their total weight, once a fallback walk has counted them.
    counted: Cell<Option<(usize, u64)>>,
}

impl<'a> Candidates<'a> {
    /// The candidates among `live_set`'s live servers (possibly none).
    pub(crate) fn new(
        live_set: &'a LiveSet<'a>,
        exclude: &'a [&'a str],
        healthy_only: bool,
    ) -> Candidates<'a> {
        Candidates {
            live: live_set.live(),
            live_set,
            exclude,
            healthy_only,
            now_ticks: live_set.now_ticks(),
            counted: Cell::new(None),
        }
    }

    /// Every server of the snapshot in id order, candidate or not: what round robin indexes.
    pub(crate) fn servers(&self) -> &'a [Arc<Backend>] {
        self.live.servers()
    }

    /// Whether `backend`, one of [`servers`](Candidates::servers), is a candidate. A server whose ejection is over
    /// returns to rotation here first, so each server a pick draws is checked for recovery.
    pub(crate) fn accepts(&self, backend: &Backend) -> bool {
        recover_if_due(self.live_set, backend);
        self.is_candidate(backend)
    }

    fn is_candidate(&self, backend: &Backend) -> bool {
        let skipped = self.healthy_only && backend.peer().is_ejected(self.now_ticks);
        !skipped && self.live.admits(backend) && !self.exclude.contains(&backend.id())
    }

    /// A candidate drawn in proportion to weight, other than `skip` (itself a candidate drawn before), or `None`
    /// when there is no such candidate.
    pub(crate) fn draw(
        &self,
        rng: &mut impl Rng,
        skip: Option<&Arc<Backend>>,
    ) -> Option<&'a Arc<Backend>> {
        let (servers, cumulative) = (self.live.servers(), self.live.cumulative_weights());
        if let Some(&total) = cumulative.last() {
            for _ in 0..DRAW_TRIES {
                let point = rng.random_range(0..total);
                // The first server whose running sum passes the point: each one covers a stretch its weight long.
                let drawn = &servers[cumulative.partition_point(|&sum| sum <= point)];
                if skip.is_some_and(|s| Arc::ptr_eq(s, drawn)) {
                    continue;
                }
                if self.accepts(drawn) {
                    return Some(drawn);
                }
            }
        }
        self.draw_by_walk(rng, skip)
    }

    /// [`draw`](Candidates::draw) by walking the candidates: the same distribution, in O(n).
    fn draw_by_walk(
        &self,
        rng: &mut impl Rng,
        skip: Option<&Arc<Backend>>,
    ) -> Option<&'a Arc<Backend>> {
        let (count, total_weight) = self.count();
        let skipped_weight = skip.map_or(0, |s| u64::from(s.weight()));
        if count <= usize::from(skip.is_some()) {
            return None;
        }
        let rest = total_weight.saturating_sub(skipped_weight).max(1);
        let chosen = self.at_weight(rng.random_range(0..rest), skip)?;
        recover_if_due(self.live_set, chosen);
        Some(chosen)
    }

    /// How many candidates there are and their total weight, walked once per pick at most.
    fn count(&self) -> (usize, u64) {
        if let Some(counted) = self.counted.get() {
            return counted;
        }
        let counted = self.iter().fold((0usize, 0u64), |(n, w), b| {
            (n + 1, w + u64::from(b.weight()))
        });
        self.counted.set(Some(counted));
        counted
    }

    /// The candidates in id order.
    fn iter(&self) -> impl Iterator<Item = &'a Arc<Backend>> + Clone + use<'a> {
        let (exclude, healthy_only, now) = (self.exclude, self.healthy_only, self.now_ticks);
        self.live.clone().filter(move |b| {
            let skipped = healthy_only && b.peer().is_ejected(now);
            !skipped && !exclude.contains(&b.id())
        })
    }

    /// The candidate at offset `point` of the weight line (each one as long as its weight), skipping `skip`.
    /// Should concurrent ejections shrink the set since it was counted, the last candidate seen stands in.
    fn at_weight(&self, mut point: u64, skip: Option<&Arc<Backend>>) -> Option<&'a Arc<Backend>> {
        let mut last = None;
        for backend in self.iter() {
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
}
