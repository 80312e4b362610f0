//! The one backoff of every retry loop (result delivery, dead-letter sends,
//! the input consumer's receive): exponential with full jitter, so clients
//! that failed together do not retry together.

use std::time::Duration;

use rand::Rng;

/// Exponential backoff with full jitter: the delay before retry `n` is drawn
/// uniformly from zero to `min(max, initial * 2^(n-1))` (AWS's "full
/// jitter", which spreads synchronized retries furthest).
///
/// ```
/// use std::time::Duration;
/// use modalkit_queue::Backoff;
///
/// let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
/// assert_eq!(backoff.ceiling(1), Duration::from_millis(100));
/// assert_eq!(backoff.ceiling(3), Duration::from_millis(400));
/// assert_eq!(backoff.ceiling(30), Duration::from_secs(1));
/// assert!(backoff.delay(3) <= Duration::from_millis(400));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
}

impl Backoff {
    /// Retries wait at most `initial` first, doubling up to `max`.
    pub const fn new(initial: Duration, max: Duration) -> Self {
        Backoff { initial, max }
    }

    /// The longest delay before retry `attempt` (1 for the first retry).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(31);
        self.initial.saturating_mul(1u32 << doublings).min(self.max)
    }

    /// The delay before retry `attempt`: uniform in `0..=ceiling(attempt)`.
    pub fn delay(&self, attempt: u32) -> Duration {
        self.ceiling(attempt)
            .mul_f64(rand::rng().random_range(0.0..=1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ceiling_doubles_from_initial_up_to_max() {
        let backoff = Backoff::new(Duration::from_millis(50), Duration::from_millis(300));
        let ceilings: Vec<u128> = (1..=6).map(|n| backoff.ceiling(n).as_millis()).collect();
        assert_eq!(ceilings, [50, 100, 200, 300, 300, 300]);
        assert_eq!(backoff.ceiling(0), Duration::from_millis(50));
        assert_eq!(backoff.ceiling(u32::MAX), Duration::from_millis(300));
    }

    #[test]
    fn delays_spread_over_the_whole_range_below_the_ceiling() {
        // Full jitter: delays reach near zero and near the ceiling. (Equal
        // jitter would never go below half of it.) With 2,000 draws, missing
        // either quarter has a chance of (3/4)^2000.
        let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        let ceiling = backoff.ceiling(4);
        let delays: Vec<Duration> = (0..2000).map(|_| backoff.delay(4)).collect();
        assert!(delays.iter().all(|delay| *delay <= ceiling));
        assert!(delays.iter().any(|delay| *delay < ceiling / 4));
        assert!(delays.iter().any(|delay| *delay > ceiling * 3 / 4));
        let mean = delays.iter().sum::<Duration>() / 2000;
        assert!(
            mean > ceiling * 2 / 5 && mean < ceiling * 3 / 5,
            "mean {mean:?} of a uniform draw under {ceiling:?}"
        );
    }
}
