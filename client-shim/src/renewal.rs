//! When the session renews its admission and how long it waits between
//! retries against the control plane, as plain functions with time
//! passed in.

use std::time::Duration;
use time::OffsetDateTime;

/// Renewal happens at this fraction of the remaining lifetime, leaving a
/// third of it for retries when the control plane is briefly away.
const RENEW_NUMERATOR: u32 = 2;
const RENEW_DENOMINATOR: u32 = 3;
/// Never renew more often than this, even for very short lifetimes or a
/// local clock far ahead of the control plane's.
pub const MIN_RENEW_DELAY: Duration = Duration::from_secs(1);

/// How long to wait before renewing an admission that expires at
/// `expires_at`, seen at local wall-clock time `now`.
///
/// The access answer carries no server time, so the local clock is
/// trusted; a clock that runs ahead makes renewals earlier (never later),
/// and [`MIN_RENEW_DELAY`] stops that from turning into a busy loop.
pub fn renew_delay(now: OffsetDateTime, expires_at: OffsetDateTime) -> Duration {
    let remaining = expires_at - now;
    if remaining <= time::Duration::ZERO {
        return MIN_RENEW_DELAY;
    }
    let remaining = Duration::try_from(remaining).unwrap_or(Duration::MAX);
    (remaining * RENEW_NUMERATOR / RENEW_DENOMINATOR).max(MIN_RENEW_DELAY)
}

/// Retries against the control plane: `Backoff::default()` is 1 s, 2 s,
/// 4 s, ... up to 30 s, each scattered by +-20 % so that many clients cut
/// off together do not come back in lockstep. One schedule for every
/// crate, kept in `proto`.
pub use proto::backoff::Backoff;

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;
    use time::macros::datetime;

    #[test]
    fn renewal_comes_at_two_thirds_of_the_remaining_lifetime() {
        let now = datetime!(2026-11-25 20:00 UTC);
        assert_eq!(
            renew_delay(now, datetime!(2026-11-25 21:00 UTC)),
            Duration::from_secs(40 * 60)
        );
        assert_eq!(
            renew_delay(now, now + time::Duration::seconds(30)),
            Duration::from_secs(20)
        );
    }

    #[test]
    fn renewal_never_busy_loops() {
        let now = datetime!(2026-11-25 20:00 UTC);
        // Already expired by our clock (clock ahead of the control plane's).
        assert_eq!(
            renew_delay(now, now - time::Duration::hours(1)),
            MIN_RENEW_DELAY
        );
        assert_eq!(
            renew_delay(now, now + time::Duration::milliseconds(300)),
            MIN_RENEW_DELAY
        );
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_bounded_jitter() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut b = Backoff::default();
        let delays: Vec<Duration> = (0..8).map(|_| b.next_delay(&mut rng)).collect();
        for (i, d) in delays.iter().enumerate() {
            let nominal = Duration::from_secs(1 << i.min(5)).min(Duration::from_secs(30));
            assert!(
                *d >= nominal.mul_f64(0.8)
                    && *d <= nominal.mul_f64(1.2).min(Duration::from_secs(30)),
                "attempt {i}: {d:?}"
            );
        }
        assert_eq!(b.attempts(), 8);
        b.reset();
        assert!(b.next_delay(&mut rng) <= Duration::from_millis(1200));
    }
}
