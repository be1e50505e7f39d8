//! Power of two random choices by expected latency: two servers drawn by weight, the one with the lower cost taken,
//! cost being the server's decaying peak latency (`backend/latency.rs`) times its requests in flight plus one, per
//! unit of weight. The peak makes a server that turns slow lose its share from its first slow answer; the
//! in-flight factor keeps a fast server from taking every request at once.

use std::sync::Arc;

use super::p2c::draw_two;
use super::{Candidates, Select};
use crate::backend::Backend;

/// Picks by peak-EWMA latency times load (after Linkerd's and Finagle's peak EWMA balancers).
#[derive(Debug, Default)]
pub(super) struct P2cEwma;

impl Select for P2cEwma {
    fn select<'a>(&self, candidates: &Candidates<'a>) -> Option<&'a Arc<Backend>> {
        match draw_two(candidates)? {
            (first, Some(second)) => Some(cheaper(first, second, candidates.now_ticks)),
            (only, None) => Some(only),
        }
    }
}

/// How much slower than the other a server must look before latency, not load, decides between two servers that
/// have nothing in flight: below it the two count as equal, as in `p2c`.
///
/// Without it, two equal servers differ by noise (a connect in one's last try, a scheduling hiccup) and the one
/// that looks faster takes every request while the load is low (sequential requests never make in-flight differ):
/// measured, 20 sequential requests to two equal servers all went to one in 3 runs of 6, which to a person reads
/// as no balancing at all. Twice is far outside loopback noise between equal servers and far inside what latency
/// awareness is for (a 20 ms server among 0.3 ms ones: `cargo xtask bench heterogeneous`).
///
/// Only while both are idle: under load the in-flight factor already spreads equal servers, and there a tie would
/// hand a slow server whose estimate decayed to within twice the others' (raised by queueing) every request until
/// its in-flight count caught up with theirs, each costing its full latency.
pub const LATENCY_TIE: f64 = 2.0;

/// The one with the lower expected latency at `now`; ties go to `a`, itself a weighted random sample.
///
/// A server not answered yet is neutral: it takes the other's estimate, so the two compare by load alone (1 ns
/// each when neither has answered). It is neither flooded as if it were infinitely fast nor starved as if slow.
/// Latencies within [`LATENCY_TIE`] of each other count as equal while neither server has a request in flight.
fn cheaper<'a>(a: &'a Arc<Backend>, b: &'a Arc<Backend>, now: u64) -> &'a Arc<Backend> {
    let idle = a.in_flight() == 0 && b.in_flight() == 0;
    let (latency_a, latency_b) = match (a.peer().latency_nanos(now), b.peer().latency_nanos(now)) {
        (Some(la), Some(lb)) if idle && la.max(lb) < la.min(lb) * LATENCY_TIE => (1.0, 1.0),
        (Some(la), Some(lb)) => (la, lb),
        (Some(_), None) | (None, Some(_)) | (None, None) => (1.0, 1.0),
    };
    let cost = |latency: f64, backend: &Backend, other: &Backend| {
        latency * (backend.in_flight() as f64 + 1.0) * f64::from(other.weight())
    };
    if cost(latency_b, b, a) < cost(latency_a, a, b) {
        b
    } else {
        a
    }
}
