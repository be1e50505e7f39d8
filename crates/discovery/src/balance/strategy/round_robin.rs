//! Round robin: each server in turn, weights ignored.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{Candidates, Select};
use crate::backend::Backend;

/// Takes the candidates in id order, one turn each; the turn counter is shared by every thread that picks.
#[derive(Debug, Default)]
pub(super) struct RoundRobin {
    next: AtomicUsize,
}

impl Select for RoundRobin {
    fn select<'a>(&self, candidates: &Candidates<'a>) -> Option<&'a Arc<Backend>> {
        let turn = self.next.fetch_add(1, Ordering::Relaxed) % candidates.len();
        candidates
            .iter()
            .nth(turn)
            .or_else(|| candidates.iter().last())
    }
}
