//! Random: a server drawn in proportion to its weight.

use std::sync::Arc;

use super::{Candidates, Select};
use crate::backend::Backend;

/// Draws a point on the weight line of the candidates.
#[derive(Debug, Default)]
pub(super) struct Random;

impl Select for Random {
    fn select<'a>(&self, candidates: &Candidates<'a>) -> Option<&'a Arc<Backend>> {
        candidates.draw(&mut rand::rng(), None)
    }
}
