//! The session's timing decisions as plain functions and structs, with
//! time passed in: when to renew, how long to wait between retries, and
//! when the path to the gateway counts as lost.

use std::time::{Duration, Instant};
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

/// When the path to the gateway counts as lost or stalled.
#[derive(Debug, Clone, Copy)]
pub struct PathTimeouts {
    /// Something that needs an answer (data, a handshake initiation) went
    /// out and nothing at all came back for this long: the path is lost.
    /// WireGuard's own rule (keepalive 10 s + rekey timeout 5 s): a peer
    /// that receives data answers within 10 s, if only with a keepalive.
    pub lost: Duration,
    /// Silence this long while waiting is worth a cheap check at the
    /// control plane (has the admission been revoked?) and a fresh
    /// handshake.
    pub stalled: Duration,
    /// While the silence lasts (stalled, not yet lost), a fresh handshake
    /// initiation this often. A gateway that restarted has forgotten our
    /// session and drops our data without a word; WireGuard itself would
    /// retry its initiation only every 5 s (REKEY_TIMEOUT), so a gateway
    /// back a moment after our first retry went unanswered would cost up
    /// to 5 s more. boringtun keeps the previous initiation's state, so a
    /// response up to two intervals late still completes the handshake.
    pub retry: Duration,
}

impl Default for PathTimeouts {
    fn default() -> Self {
        PathTimeouts {
            lost: Duration::from_secs(15),
            stalled: Duration::from_secs(1),
            retry: Duration::from_secs(1),
        }
    }
}

/// What [`PathMonitor::check`] concluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathVerdict {
    Fine,
    /// First report of silence past `stalled` in this episode.
    Stalled,
    /// Still silent, `retry` after the stall or the last retry: time for
    /// another handshake initiation.
    Retry,
    /// First report of silence past `lost` in this episode.
    Lost,
}

/// Watches for answers from the gateway. Fed by the data path; no clock
/// of its own.
#[derive(Debug, Clone)]
pub struct PathMonitor {
    timeouts: PathTimeouts,
    /// Since when we are waiting for any authenticated datagram: set by
    /// the first send that expects an answer, cleared by any receipt.
    waiting_since: Option<Instant>,
    stall_reported: bool,
    loss_reported: bool,
    /// When the next [`PathVerdict::Retry`] is due (set by a stall).
    next_retry: Option<Instant>,
}

impl PathMonitor {
    pub fn new(timeouts: PathTimeouts) -> PathMonitor {
        PathMonitor {
            timeouts,
            waiting_since: None,
            stall_reported: false,
            loss_reported: false,
            next_retry: None,
        }
    }

    /// We sent something the gateway must answer (data or a handshake).
    pub fn on_sent(&mut self, now: Instant) {
        if self.waiting_since.is_none() {
            self.waiting_since = Some(now);
        }
    }

    /// An authenticated datagram arrived. Returns true if this ends a loss
    /// that was already reported (the path came back by itself).
    pub fn on_received(&mut self) -> bool {
        let recovered = self.loss_reported;
        self.waiting_since = None;
        self.stall_reported = false;
        self.loss_reported = false;
        self.next_retry = None;
        recovered
    }

    pub fn check(&mut self, now: Instant) -> PathVerdict {
        let Some(since) = self.waiting_since else {
            return PathVerdict::Fine;
        };
        let silent = now.saturating_duration_since(since);
        if silent >= self.timeouts.lost && !self.loss_reported {
            self.loss_reported = true;
            self.stall_reported = true;
            self.next_retry = None;
            return PathVerdict::Lost;
        }
        if silent >= self.timeouts.stalled && !self.stall_reported {
            self.stall_reported = true;
            self.next_retry = Some(now + self.timeouts.retry);
            return PathVerdict::Stalled;
        }
        if let Some(at) = self.next_retry.filter(|at| now >= *at) {
            // From the due time, not from now: a late tick does not
            // stretch the interval.
            let next = at + self.timeouts.retry;
            self.next_retry = Some(if next > now {
                next
            } else {
                now + self.timeouts.retry
            });
            return PathVerdict::Retry;
        }
        PathVerdict::Fine
    }

    /// When [`check`](Self::check) could next report something.
    pub fn deadline(&self) -> Option<Instant> {
        let since = self.waiting_since?;
        if !self.stall_reported {
            Some(since + self.timeouts.stalled)
        } else if !self.loss_reported {
            let lost = since + self.timeouts.lost;
            Some(self.next_retry.map_or(lost, |r| r.min(lost)))
        } else {
            None
        }
    }
}

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

    #[test]
    fn silence_after_a_send_is_first_a_stall_then_a_loss_each_reported_once() {
        let t0 = Instant::now();
        let mut m = PathMonitor::new(PathTimeouts::default());
        assert_eq!(m.check(t0 + Duration::from_secs(100)), PathVerdict::Fine);
        assert_eq!(m.deadline(), None);
        m.on_sent(t0);
        m.on_sent(t0 + Duration::from_secs(5)); // keeps the first time
        assert_eq!(m.deadline(), Some(t0 + Duration::from_secs(1)));
        assert_eq!(m.check(t0 + Duration::from_millis(999)), PathVerdict::Fine);
        assert_eq!(m.check(t0 + Duration::from_secs(1)), PathVerdict::Stalled);
        assert_eq!(m.check(t0 + Duration::from_millis(1500)), PathVerdict::Fine);
        assert_eq!(m.deadline(), Some(t0 + Duration::from_secs(2)));
        // While silent: a retry every second after the stall ...
        assert_eq!(m.check(t0 + Duration::from_secs(2)), PathVerdict::Retry);
        assert_eq!(m.check(t0 + Duration::from_secs(2)), PathVerdict::Fine);
        // ... on the second's grid, however late the check comes ...
        assert_eq!(
            m.check(t0 + Duration::from_millis(3400)),
            PathVerdict::Retry
        );
        assert_eq!(m.deadline(), Some(t0 + Duration::from_secs(4)));
        // ... and a check that missed whole intervals retries once.
        assert_eq!(
            m.check(t0 + Duration::from_millis(6500)),
            PathVerdict::Retry
        );
        assert_eq!(m.check(t0 + Duration::from_millis(6600)), PathVerdict::Fine);
        assert_eq!(m.deadline(), Some(t0 + Duration::from_millis(7500)));
        for s in 8..15 {
            assert_eq!(m.check(t0 + Duration::from_secs(s)), PathVerdict::Retry);
        }
        assert_eq!(m.deadline(), Some(t0 + Duration::from_millis(14_500)));
        assert_eq!(
            m.check(t0 + Duration::from_millis(14_600)),
            PathVerdict::Retry
        );
        assert_eq!(m.deadline(), Some(t0 + Duration::from_secs(15)));
        assert_eq!(m.check(t0 + Duration::from_secs(15)), PathVerdict::Lost);
        // A lost path is the supervisor's: no more retries here.
        assert_eq!(m.check(t0 + Duration::from_secs(16)), PathVerdict::Fine);
        assert_eq!(m.check(t0 + Duration::from_secs(30)), PathVerdict::Fine);
        assert_eq!(m.deadline(), None);
        assert!(m.on_received(), "a loss that ends is a recovery");
        assert!(!m.on_received());
        // An answer ends the retries: the next silence starts over.
        m.on_sent(t0 + Duration::from_secs(40));
        assert_eq!(m.check(t0 + Duration::from_secs(41)), PathVerdict::Stalled);
        assert!(!m.on_received());
        assert_eq!(m.check(t0 + Duration::from_secs(42)), PathVerdict::Fine);
        assert_eq!(m.deadline(), None);
    }

    #[test]
    fn answers_keep_the_path_fine() {
        let t0 = Instant::now();
        let mut m = PathMonitor::new(PathTimeouts::default());
        for s in 0..60 {
            let now = t0 + Duration::from_secs(s);
            m.on_sent(now);
            assert_eq!(m.check(now + Duration::from_millis(500)), PathVerdict::Fine);
            m.on_received();
        }
    }
}
