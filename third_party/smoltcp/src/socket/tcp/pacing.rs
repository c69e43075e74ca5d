//! hushgate addition: pacing inside the socket.
//!
//! Without pacing a sender releases a whole window at once whenever ACKs
//! open it (after a batch of ACKs, after an idle period, after recovery),
//! and the burst overflows a shallow bottleneck queue or builds a deep
//! one. The socket has no qdisc below it (the tunnel's packets go straight
//! to a UDP socket), so it paces itself: a token bucket filled at the
//! pacing rate.
//!
//! Two sizes keep pacing cheap at high rates. The *quantum* is about 1 ms
//! of data (at least two segments): a socket blocked by pacing asks to be
//! woken when a quantum has accumulated, not per segment, so the event
//! loop sleeps at most once per millisecond of data whatever the rate
//! (mio's timer resolution is 1 ms anyway). The bucket holds up to two
//! quanta, so a loop that wakes late does not lose rate. At LAN rates the
//! quantum is hundreds of kilobytes and pacing never holds anything back.

use crate::time::{Duration, Instant};

/// A token bucket; all amounts in bytes, the rate in bytes per second.
#[derive(Debug, Clone, Copy, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub(super) struct Pacer {
    /// 0: not paced.
    rate: u64,
    quantum: u64,
    /// Bytes that may leave at `last` (negative: the debt of the segment
    /// that took the last credit).
    credit: i64,
    last: Option<Instant>,
}

/// Longest gap credited at once (keeps the arithmetic in range).
const MAX_GAP_US: u64 = 1_000_000;

impl Pacer {
    /// Sets the pacing rate (0: unpaced) for segments of up to `mss` bytes.
    pub fn set_rate(&mut self, rate: u64, mss: usize) {
        self.rate = rate;
        // About 1 ms of data, and never less than two segments.
        self.quantum = (rate / 1000).max(2 * mss as u64);
    }

    pub fn rate(&self) -> u64 {
        self.rate
    }

    fn burst(&self) -> i64 {
        (2 * self.quantum).min(i64::MAX as u64) as i64
    }

    fn credit_at(&self, now: Instant) -> i64 {
        let Some(last) = self.last else {
            return self.burst();
        };
        let gap = if now > last {
            (now - last).total_micros().min(MAX_GAP_US)
        } else {
            0
        };
        let earned = (self.rate as u128 * gap as u128 / 1_000_000) as i64;
        self.credit.saturating_add(earned).min(self.burst())
    }

    /// May a segment leave now?
    pub fn can_send(&self, now: Instant) -> bool {
        self.rate == 0 || self.credit_at(now) > 0
    }

    /// When a blocked socket should try again: once a quantum (or the
    /// whole bucket, if smaller) is available.
    pub fn next_send(&self, now: Instant) -> Instant {
        if self.rate == 0 {
            return now;
        }
        let credit = self.credit_at(now);
        let want = (self.quantum as i64).min(self.burst());
        if credit >= want {
            return now;
        }
        let missing = (want - credit) as u128;
        let us = (missing * 1_000_000).div_ceil(self.rate as u128) as u64;
        now + Duration::from_micros(us.max(1))
    }

    /// Takes `bytes` of credit for a segment leaving now.
    pub fn on_send(&mut self, now: Instant, bytes: usize) {
        if self.rate == 0 {
            return;
        }
        self.credit = self.credit_at(now) - bytes as i64;
        self.last = Some(now);
    }
}

#[cfg(test)]
mod test {
    use super::*;

    fn us(n: i64) -> Instant {
        Instant::from_micros(n)
    }

    #[test]
    fn unpaced_never_blocks() {
        let mut p = Pacer::default();
        for _ in 0..1000 {
            assert!(p.can_send(us(0)));
            p.on_send(us(0), 1500);
        }
        assert_eq!(p.next_send(us(5)), us(5));
    }

    #[test]
    fn paced_sends_at_the_rate_over_time() {
        // 1 MB/s, 1000-byte segments, a loop that wakes when told to.
        let mut p = Pacer::default();
        p.set_rate(1_000_000, 1000);
        let mut now = us(0);
        let mut sent = 0u64;
        while now < us(1_000_000) {
            while p.can_send(now) {
                p.on_send(now, 1000);
                sent += 1000;
            }
            now = p.next_send(now);
        }
        // One second at 1 MB/s, plus the initial bucket (2 quanta of 2000).
        assert!((1_000_000..=1_006_000).contains(&sent), "{sent}");
    }

    #[test]
    fn wakes_once_per_quantum_not_per_segment() {
        // 100 MB/s: a quantum is 100 kB (1 ms), a segment 1 kB.
        let mut p = Pacer::default();
        p.set_rate(100_000_000, 1000);
        let mut now = us(0);
        let mut wakeups = 0;
        while now < us(100_000) {
            while p.can_send(now) {
                p.on_send(now, 1000);
            }
            now = p.next_send(now);
            wakeups += 1;
        }
        assert!(wakeups <= 101, "{wakeups}");
    }

    #[test]
    fn a_late_wakeup_keeps_up_to_two_quanta() {
        let mut p = Pacer::default();
        p.set_rate(1_000_000, 500); // quantum 1000 bytes
        p.on_send(us(0), 2000);
        // Idle for a long time: credit is capped at two quanta.
        let later = us(10_000_000);
        let mut n = 0;
        while p.can_send(later) {
            p.on_send(later, 500);
            n += 1;
        }
        assert_eq!(n, 4);
    }
}
