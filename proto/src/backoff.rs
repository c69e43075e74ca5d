//! Exponential backoff between retries: the one schedule every retry loop
//! in hushgate uses (the client's calls to the control plane, the
//! gateway's port mapping and endpoint reports, the control plane's
//! listener for other replicas, the gateway's feed).
//!
//! No clock: the caller sleeps for the delay it is given. Randomness comes
//! from a passed-in generator, so tests seed it and a sans-IO state machine
//! can ask for no jitter at all.

use rand::Rng;
use std::time::Duration;

/// The spread of [`Backoff::new`]: each delay scattered by x(1 +- 0.2), so
/// that many clients cut off together do not come back in lockstep.
pub const DEFAULT_SPREAD: f64 = 0.2;

/// Doubling is stopped after this many failures; by then any base has
/// long reached any sensible cap, and `2^16` cannot overflow the multiply.
const MAX_DOUBLINGS: u32 = 16;

/// `base`, `2 * base`, `4 * base`, ... up to `max` after each failure,
/// scattered by the jitter spread and never above `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    spread: f64,
    attempt: u32,
}

impl Backoff {
    /// A backoff from `base` doubling up to `max`, with the default
    /// jitter ([`DEFAULT_SPREAD`]).
    pub fn new(base: Duration, max: Duration) -> Backoff {
        Backoff {
            base,
            max,
            spread: DEFAULT_SPREAD,
            attempt: 0,
        }
    }

    /// Each delay multiplied by a uniform factor in `[1 - spread,
    /// 1 + spread]`; `0.0` means exact delays (and the generator is never
    /// drawn from). A spread outside `[0, 1)` is clamped into it: a factor
    /// of zero or below would turn the backoff into a busy loop.
    pub fn with_jitter(mut self, spread: f64) -> Backoff {
        self.spread = if spread.is_nan() {
            0.0
        } else {
            spread.clamp(0.0, 0.99)
        };
        self
    }

    /// Failures since the last [`reset`](Self::reset).
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// The wait before the next attempt after one more failure.
    pub fn next_delay(&mut self, rng: &mut impl Rng) -> Duration {
        let raw = self.next_exact();
        if self.spread == 0.0 {
            return raw;
        }
        let factor = rng.gen_range(1.0 - self.spread..=1.0 + self.spread);
        // `mul_f64` would panic past `Duration::MAX` (a cap that large).
        Duration::try_from_secs_f64(raw.as_secs_f64() * factor)
            .map_or(self.max, |d| d.min(self.max))
    }

    /// The wait before the next attempt after one more failure, without
    /// jitter whatever the spread: for callers that keep no generator
    /// (sans-IO state machines, single retriers nobody else lines up with).
    pub fn next_exact(&mut self) -> Duration {
        let exp = self.attempt.min(MAX_DOUBLINGS);
        self.attempt = self.attempt.saturating_add(1);
        self.base.saturating_mul(1 << exp).min(self.max)
    }

    /// Success: the next failure waits `base` again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

impl Default for Backoff {
    /// The client's retries against the control plane: 1 s doubling up to
    /// 30 s, with the default jitter.
    fn default() -> Self {
        Backoff::new(Duration::from_secs(1), Duration::from_secs(30))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn without_jitter_delays_double_exactly_up_to_the_cap() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut b =
            Backoff::new(Duration::from_secs(30), Duration::from_secs(600)).with_jitter(0.0);
        let secs: Vec<u64> = (0..8).map(|_| b.next_delay(&mut rng).as_secs()).collect();
        assert_eq!(secs, [30, 60, 120, 240, 480, 600, 600, 600]);
        assert_eq!(b.attempts(), 8);
    }

    #[test]
    fn without_jitter_the_generator_is_not_drawn_from() {
        let mut used = StdRng::seed_from_u64(3);
        let mut b =
            Backoff::new(Duration::from_millis(100), Duration::from_secs(5)).with_jitter(0.0);
        for _ in 0..5 {
            b.next_delay(&mut used);
        }
        let mut fresh = StdRng::seed_from_u64(3);
        assert_eq!(used.gen::<u64>(), fresh.gen::<u64>());
    }

    #[test]
    fn jitter_stays_within_its_spread_and_under_the_cap() {
        let mut rng = StdRng::seed_from_u64(7);
        let max = Duration::from_secs(30);
        let mut b = Backoff::default();
        let mut seen_different = false;
        for i in 0..40 {
            let d = b.next_delay(&mut rng);
            let nominal = Duration::from_secs(1 << i.min(5)).min(max);
            assert!(
                d >= nominal.mul_f64(0.8) && d <= nominal.mul_f64(1.2).min(max),
                "attempt {i}: {d:?}"
            );
            seen_different |= d != nominal;
        }
        assert!(seen_different, "the jitter moved no delay");
    }

    #[test]
    fn a_wider_spread_is_honoured() {
        let mut rng = StdRng::seed_from_u64(11);
        let base = Duration::from_secs(10);
        let (mut low, mut high) = (false, false);
        for _ in 0..200 {
            let mut b = Backoff::new(base, Duration::from_secs(100)).with_jitter(0.5);
            let d = b.next_delay(&mut rng);
            assert!(d >= base.mul_f64(0.5) && d <= base.mul_f64(1.5), "{d:?}");
            low |= d < base.mul_f64(0.8);
            high |= d > base.mul_f64(1.2);
        }
        assert!(low && high, "a spread of 0.5 reaches past 0.2 both ways");
    }

    #[test]
    fn a_spread_of_one_or_more_never_gives_a_zero_wait() {
        let mut rng = StdRng::seed_from_u64(5);
        for spread in [1.0, 7.0, f64::INFINITY] {
            let mut b =
                Backoff::new(Duration::from_secs(1), Duration::from_secs(1)).with_jitter(spread);
            for _ in 0..100 {
                assert!(b.next_delay(&mut rng) >= Duration::from_millis(10));
            }
        }
    }

    #[test]
    fn reset_starts_over_and_many_failures_do_not_overflow() {
        let mut rng = StdRng::seed_from_u64(9);
        let mut b = Backoff::new(Duration::from_secs(1), Duration::MAX).with_jitter(0.0);
        for _ in 0..100 {
            b.next_delay(&mut rng);
        }
        assert_eq!(b.attempts(), 100);
        assert_eq!(b.next_delay(&mut rng), Duration::from_secs(1 << 16));
        b.reset();
        assert_eq!(b.attempts(), 0);
        assert_eq!(b.next_delay(&mut rng), Duration::from_secs(1));
    }
}
