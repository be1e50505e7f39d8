//! Round robin: each server in turn, weights ignored.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{Candidates, Select};
use crate::backend::Backend;

/// Takes the servers in id order, one turn each; the turn counter is shared by every thread that picks.
///
/// A turn indexes the snapshot directly. When it lands on a server that is not a candidate (ejected, excluded,
/// expired), the next candidate in id order serves it, and the counter jumps past that one so the following turn
/// goes on from there: the candidates keep equal shares, and a run of k filtered servers costs one walk of k, not
/// one per turn.
#[derive(Debug, Default)]
pub(super) struct RoundRobin {
    next: AtomicUsize,
}

impl Select for RoundRobin {
    fn select<'a>(&self, candidates: &Candidates<'a>) -> Option<&'a Arc<Backend>> {
        let servers = candidates.servers();
        if servers.is_empty() {
            return None;
        }
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        let start = turn % servers.len();
        let (wrapped, from_turn) = servers.split_at(start);
        let (step, chosen) = from_turn
            .iter()
            .chain(wrapped)
            .enumerate()
            .find(|(_, backend)| candidates.accepts(backend))?;
        if step > 0 {
            // Skip the turns of the filtered servers just passed, unless another pick moved the counter meanwhile.
            let _ = self.next.compare_exchange(
                turn.wrapping_add(1),
                turn.wrapping_add(1 + step),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
        Some(chosen)
    }
}
