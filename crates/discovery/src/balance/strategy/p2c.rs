//! Power of two random choices: two servers drawn by weight, the less loaded of them taken.

use std::sync::Arc;

use super::{Candidates, Select};
use crate::backend::Backend;

/// Nearly as good as least-loaded, without every picker herding onto the same least-loaded server.
#[derive(Debug, Default)]
pub(super) struct P2c;

impl Select for P2c {
    fn select<'a>(&self, candidates: &Candidates<'a>) -> Option<&'a Arc<Backend>> {
        match draw_two(candidates)? {
            (first, Some(second)) => Some(less_loaded(first, second)),
            (only, None) => Some(only),
        }
    }
}

/// Two different candidates drawn by weight (the second `None` when there is only one); shared with `p2c_ewma`.
pub(super) fn draw_two<'a>(
    candidates: &Candidates<'a>,
) -> Option<(&'a Arc<Backend>, Option<&'a Arc<Backend>>)> {
    let mut rng = rand::rng();
    let first = candidates.draw(&mut rng, None)?;
    Some((first, candidates.draw(&mut rng, Some(first))))
}

/// Fewer in flight per unit of weight; ties go to `a`, itself a weighted random sample.
fn less_loaded<'a>(a: &'a Arc<Backend>, b: &'a Arc<Backend>) -> &'a Arc<Backend> {
    let load_a = u128::from(a.in_flight()) * u128::from(b.weight());
    let load_b = u128::from(b.in_flight()) * u128::from(a.weight());
    if load_b < load_a { b } else { a }
}
