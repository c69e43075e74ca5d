//! When the path to the gateway counts as stalled or lost: a watch over
//! the gateway's answers, fed by the data path, with time passed in.

use std::time::{Duration, Instant};

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
