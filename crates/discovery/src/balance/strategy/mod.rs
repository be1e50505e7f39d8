//! Balancing strategies: each one a type behind [`Select`], in a file of its own, and every name listed once
//! here, in [`Strategy`].
//!
//! Adding a strategy touches two files: a new `name.rs` with a type implementing [`Select`], and this one (its
//! `mod` line, a [`Strategy`] variant, its name in [`Strategy::as_str`] and [`Strategy::ALL`], and its constructor in
//! [`Strategy::selector`]). The compiler points at each of these through the exhaustive matches.

mod p2c;
mod p2c_ewma;
mod random;
mod round_robin;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use crate::backend::Backend;
use crate::error::ConfigError;
use crate::registry::Live;

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

/// One way of choosing a server. Called on every proxied request, so an implementation must not lock or allocate.
pub(crate) trait Select: fmt::Debug + Send + Sync {
    /// One of `candidates` (never empty), or `None` only if concurrent ejections emptied it meanwhile.
    fn select<'a>(&self, candidates: &Candidates<'a>) -> Option<&'a Arc<Backend>>;
}

/// The servers one pick may choose from: live, not excluded by the caller and, when `healthy_only`, not ejected.
/// Walked as many times as a strategy needs instead of collected, so a pick allocates nothing.
#[derive(Clone)]
pub(crate) struct Candidates<'a> {
    live: Live<'a>,
    exclude: &'a [&'a str],
    healthy_only: bool,
    now_ticks: u64,
    count: usize,
    total_weight: u64,
}

impl<'a> Candidates<'a> {
    /// The candidates among `live` at `now_ticks`, or `None` when there is none.
    pub(crate) fn new(
        live: Live<'a>,
        exclude: &'a [&'a str],
        healthy_only: bool,
        now_ticks: u64,
    ) -> Option<Candidates<'a>> {
        let mut candidates = Candidates {
            live,
            exclude,
            healthy_only,
            now_ticks,
            count: 0,
            total_weight: 0,
        };
        let (count, total_weight) = candidates.iter().fold((0usize, 0u64), |(n, w), b| {
            (n + 1, w + u64::from(b.weight()))
        });
        if count == 0 {
            return None;
        }
        candidates.count = count;
        candidates.total_weight = total_weight;
        Some(candidates)
    }

    /// How many there are (at least one).
    pub(crate) fn len(&self) -> usize {
        self.count
    }

    /// The sum of their weights (at least [`len`](Candidates::len), since every weight is at least 1).
    pub(crate) fn total_weight(&self) -> u64 {
        self.total_weight
    }

    /// The candidates in id order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &'a Arc<Backend>> + Clone + use<'a> {
        let (exclude, healthy_only, now) = (self.exclude, self.healthy_only, self.now_ticks);
        self.live.clone().filter(move |b| {
            let skipped = healthy_only && b.peer().is_ejected(now);
            !skipped && !exclude.contains(&b.id())
        })
    }

    /// The candidate at offset `point` of the weight line (each one as long as its weight), skipping `skip`.
    /// Should concurrent ejections shrink the set since it was counted, the last candidate seen stands in.
    pub(crate) fn at_weight(
        &self,
        mut point: u64,
        skip: Option<&Arc<Backend>>,
    ) -> Option<&'a Arc<Backend>> {
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
