//! A server's recent latency as a decaying peak, for the `p2c_ewma` strategy (ARCHITECTURE.md §4.3, `p2c_ewma`).
//!
//! A sample above the estimate replaces it at once (the peak: a server that turns slow is avoided from its first
//! slow answer); a sample below pulls the estimate down as an exponentially weighted moving average whose weight
//! depends on the time since the previous sample, with time constant [`LATENCY_DECAY`]. Between samples the
//! estimate read by the balancer decays towards zero with the same constant, so a server avoided for being slow is
//! tried again after a while and its estimate follows what it does now.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Time constant of the estimate's decay.
///
/// One second: at the rates a proxy sees (hundreds of requests a second and more) that still averages over many
/// samples per server, so one slow answer among fast ones costs a server its share for about a second, not ten
/// (Finagle's and Linkerd's 10 s default is made for far lower rates per server). And a server avoided for being
/// slow is probed again once its estimate has decayed below the others' cost: after ln(slow / fast) time constants,
/// about 4 s for a 20 ms server among 0.3 ms ones, so a server that recovered (a GC pause, a cold cache) is back in
/// rotation within seconds, while one that stays slow gets a small share (0.6 % in `cargo xtask bench
/// heterogeneous` at 5,000 requests/s on a loaded machine, against 3.3 % with `p2c`).
pub const LATENCY_DECAY: Duration = Duration::from_secs(1);

/// The estimate in nanoseconds (`f64` bits; 0: no sample yet) and the tick of its last sample. The two are written
/// one after the other without a lock: a concurrent sample may be lost or paired with the other's stamp, which only
/// perturbs an estimate, never a count.
#[derive(Debug, Default)]
pub(crate) struct LatencyEstimate {
    nanos: AtomicU64,
    sampled_at: AtomicU64,
}

impl LatencyEstimate {
    /// Takes one latency `sample` observed at `now` (registry clock ticks).
    pub(crate) fn observe(&self, sample: Duration, now: u64) {
        // At least 1 ns, so that a stored estimate is never the "no sample" zero.
        let sample = (sample.as_nanos() as f64).max(1.0);
        let current = f64::from_bits(self.nanos.load(Ordering::Relaxed));
        let next = if current == 0.0 || sample >= current {
            sample
        } else {
            let since = now.saturating_sub(self.sampled_at.load(Ordering::Relaxed));
            let keep = decay_factor(since);
            current * keep + sample * (1.0 - keep)
        };
        self.nanos.store(next.to_bits(), Ordering::Relaxed);
        self.sampled_at.store(now, Ordering::Relaxed);
    }

    /// The estimate at `now` in nanoseconds, decayed since its last sample; `None` before the first sample.
    pub(crate) fn nanos(&self, now: u64) -> Option<f64> {
        let current = f64::from_bits(self.nanos.load(Ordering::Relaxed));
        if current == 0.0 {
            return None;
        }
        let since = now.saturating_sub(self.sampled_at.load(Ordering::Relaxed));
        Some(current * decay_factor(since))
    }
}

/// The share of an estimate left after `ticks` nanoseconds: e^(-ticks / LATENCY_DECAY).
fn decay_factor(ticks: u64) -> f64 {
    (-(ticks as f64) / LATENCY_DECAY.as_nanos() as f64).exp()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;
    const TAU: u64 = 1000 * MS;

    fn ms(estimate: &LatencyEstimate, now: u64) -> f64 {
        estimate.nanos(now).expect("sampled") / MS as f64
    }

    #[test]
    fn no_estimate_before_the_first_sample() {
        let estimate = LatencyEstimate::default();
        assert_eq!(estimate.nanos(5 * TAU), None);
        estimate.observe(Duration::from_millis(2), 5 * TAU);
        assert!((ms(&estimate, 5 * TAU) - 2.0).abs() < 1e-9);
    }

    #[test]
    fn a_slower_sample_is_taken_at_once() {
        let estimate = LatencyEstimate::default();
        estimate.observe(Duration::from_millis(1), 0);
        estimate.observe(Duration::from_millis(20), MS);
        assert!((ms(&estimate, MS) - 20.0).abs() < 1e-9);
    }

    #[test]
    fn faster_samples_pull_the_estimate_down_with_time() {
        let estimate = LatencyEstimate::default();
        estimate.observe(Duration::from_millis(20), 0);
        // One time constant later: 20 e^-1 + 1 (1 - e^-1) = 7.99 ms.
        estimate.observe(Duration::from_millis(1), TAU);
        let expected = 20.0 * (-1.0f64).exp() + (1.0 - (-1.0f64).exp());
        assert!((ms(&estimate, TAU) - expected).abs() < 1e-9);
        // A burst of fast samples close together barely moves it: the weight is time, not the count.
        for i in 1..=10 {
            estimate.observe(Duration::from_millis(1), TAU + i * 1000);
        }
        assert!(ms(&estimate, TAU + 10_000) > 7.9);
    }

    #[test]
    fn without_samples_it_decays_towards_zero() {
        let estimate = LatencyEstimate::default();
        estimate.observe(Duration::from_millis(20), 0);
        assert!((ms(&estimate, TAU) - 20.0 * (-1.0f64).exp()).abs() < 1e-9);
        // A 20 ms server looks cheaper than a 0.3 ms one after ln(20 / 0.3) = 4.2 time constants.
        assert!(ms(&estimate, 4 * TAU) > 0.3);
        assert!(ms(&estimate, 5 * TAU) < 0.3);
    }
}
