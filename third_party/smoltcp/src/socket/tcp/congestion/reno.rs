use crate::time::Instant;

use super::{Ack, Controller};

const DEFAULT_MSS: usize = 1024;

/// NewReno (RFC 5681) with byte counting (RFC 3465): the window grows by
/// the bytes an ACK delivers, so one ACK covering many segments (a
/// receiver that ACKs per batch, a stretch ACK) grows it as much as the
/// ACKs it replaces. During loss recovery the socket sends by RFC 6675's
/// pipe rule against `cwnd = ssthresh`, so there is no window inflation
/// per duplicate ACK.
#[derive(Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Reno {
    cwnd: usize,
    mss: usize,
    ssthresh: usize,
    rwnd: usize,
    /// Bytes acknowledged in congestion avoidance not yet turned into
    /// window growth.
    bytes_acked: usize,

    in_recovery: bool,
    // Set on RTO, cleared when new data is ACKed. While set, further RTOs
    // are retransmissions of the same segment and must not reduce ssthresh
    // again (RFC 5681 section 3.1).
    in_rto_recovery: bool,
}

impl Reno {
    pub fn new() -> Self {
        Reno {
            cwnd: DEFAULT_MSS * 2,
            mss: DEFAULT_MSS,
            ssthresh: usize::MAX,
            rwnd: 64 * DEFAULT_MSS,
            bytes_acked: 0,
            in_recovery: false,
            in_rto_recovery: false,
        }
    }
}

impl Controller for Reno {
    fn window(&self) -> usize {
        self.cwnd
    }

    fn in_slow_start(&self) -> bool {
        self.cwnd < self.ssthresh
    }

    fn on_ack(&mut self, ack: &Ack) {
        // RFC 5681 only acts on ACKs of new data.
        if ack.delivered == 0 {
            return;
        }

        // New data was delivered: a timer-based loss episode, if any, is over.
        self.in_rto_recovery = false;

        // The window holds during recovery; a window that was not used does
        // not grow (RFC 7661).
        if ack.in_recovery || self.in_recovery || !ack.cwnd_limited {
            return;
        }

        if self.cwnd < self.ssthresh {
            // Slow start: grow by what was delivered, up to ssthresh.
            self.cwnd = self
                .cwnd
                .saturating_add(ack.delivered)
                .min(self.ssthresh.max(self.cwnd));
        } else {
            // Congestion avoidance: one MSS per window delivered.
            self.bytes_acked += ack.delivered;
            while self.bytes_acked >= self.cwnd {
                self.bytes_acked -= self.cwnd;
                self.cwnd += self.mss;
            }
        }
        self.cwnd = self.cwnd.min(self.rwnd).max(self.mss);
    }

    fn on_recovery_start(&mut self, _now: Instant, _in_flight: usize) {
        // Half the window (as Linux; `in_flight` is the pipe after the
        // losses were taken out, which would halve twice).
        self.ssthresh = (self.cwnd >> 1).max(2 * self.mss);
        self.cwnd = self.ssthresh.min(self.rwnd).max(self.mss);
        self.bytes_acked = 0;
        self.in_recovery = true;
    }

    fn on_recovery_end(&mut self, _now: Instant) {
        self.in_recovery = false;
    }

    fn on_rto(&mut self, _now: Instant, in_flight: usize) {
        // RFC 5681: when the retransmission timer fires for a segment that has
        // already been retransmitted by the timer (no new data was ACKed since
        // the previous RTO), ssthresh is held constant.
        if !self.in_rto_recovery {
            self.ssthresh = (in_flight >> 1).max(2 * self.mss);
            self.in_rto_recovery = true;
        }

        // cwnd collapses to the loss window (1 MSS) and we re-enter slow start.
        self.cwnd = self.mss;
        self.bytes_acked = 0;
        // The socket ends the timeout's recovery like a fast recovery; slow
        // start must run meanwhile, so this is not `in_recovery`.
        self.in_recovery = false;
    }

    fn set_mss(&mut self, mss: usize) {
        self.mss = mss;
    }

    fn set_remote_window(&mut self, remote_window: usize) {
        if self.rwnd < remote_window {
            self.rwnd = remote_window;
        }
    }
}

#[cfg(test)]
mod test {
    use super::super::test_ack;
    use super::*;
    use crate::socket::tcp::rate::RateSample;

    const MSS: usize = 1024;

    fn ack(reno: &mut Reno, len: usize, now: Instant) {
        let rs = RateSample::default();
        reno.on_ack(&test_ack(now, len, reno.window().saturating_sub(MSS), &rs))
    }

    #[test]
    fn congestion_avoidance_works() {
        let mut reno = Reno::new();
        reno.set_mss(MSS);
        reno.cwnd = MSS * 32;
        reno.ssthresh = MSS * 16;

        // CA should grow at less than 1 MSS per ACK.
        for i in 0..10 {
            let initial_cwnd = reno.window();
            ack(&mut reno, MSS, Instant::from_millis(i));
            assert!(reno.window() < initial_cwnd + MSS);
        }

        // One window's worth of delivered bytes grows it by one MSS, in one
        // stretch ACK or in many.
        let initial_cwnd = reno.window();
        ack(&mut reno, initial_cwnd, Instant::from_millis(15));
        assert_eq!(reno.window(), initial_cwnd + MSS);

        // CA should cap at the receive window
        reno.cwnd = reno.rwnd - 1;
        let rwnd = reno.rwnd;
        ack(&mut reno, 2 * rwnd, Instant::from_millis(20));
        assert_eq!(reno.window(), reno.rwnd);
    }

    #[test]
    fn slow_start_counts_bytes_not_acks() {
        let mut reno = Reno::new();
        reno.set_mss(MSS);
        reno.set_remote_window(1 << 20);
        let initial = reno.window();
        // One ACK for 16 segments grows the window by 16 segments.
        ack(&mut reno, 16 * MSS, Instant::from_millis(1));
        assert_eq!(reno.window(), initial + 16 * MSS);
        // ... but never past ssthresh in one step.
        reno.ssthresh = reno.window() + MSS;
        ack(&mut reno, 16 * MSS, Instant::from_millis(2));
        assert_eq!(reno.window(), reno.ssthresh);
    }

    #[test]
    fn recovery_halves_once_and_holds() {
        let mut reno = Reno::new();
        reno.set_mss(MSS);
        reno.cwnd = MSS * 32;

        let in_flight = MSS * 32;
        reno.on_recovery_start(Instant::from_millis(0), in_flight);
        assert_eq!(reno.ssthresh, in_flight / 2);
        assert_eq!(reno.window(), in_flight / 2);

        // Deliveries during recovery do not grow the window.
        for i in 0..10 {
            ack(&mut reno, MSS, Instant::from_millis(i));
            assert_eq!(reno.window(), in_flight / 2);
        }

        // After recovery, congestion avoidance.
        reno.on_recovery_end(Instant::from_millis(20));
        let initial_cwnd = reno.window();
        ack(&mut reno, MSS, Instant::from_millis(30));
        assert!(reno.window() < initial_cwnd + MSS);
    }

    #[test]
    fn slow_start_after_rto() {
        let mut reno = Reno::new();
        reno.set_mss(MSS);
        reno.cwnd = MSS * 32;
        reno.ssthresh = MSS * 16;

        // we enter recovery upon major loss (an RTO)
        // window should become to 1MSS
        // sstresh should become half the in-flight bytes
        let inflight = reno.window();
        reno.on_rto(Instant::from_millis(0), inflight);
        assert_eq!(reno.ssthresh, inflight / 2);
        assert_eq!(reno.window(), MSS);

        // slow start grows by the bytes delivered
        for i in 0..7 {
            let initial_cwnd = reno.window();
            ack(&mut reno, MSS * 2, Instant::from_millis(i));
            assert_eq!(reno.window(), initial_cwnd + 2 * MSS);
        }
        assert_eq!(reno.window(), 15 * MSS);

        // slow start transitions to congestion avoidance at ssthresh
        ack(&mut reno, MSS * 2, Instant::from_millis(30));
        assert_eq!(reno.window(), reno.ssthresh);

        // CA is slower growth so should be less than 1MSS per ACK
        let initial_cwnd = reno.window();
        ack(&mut reno, MSS, Instant::from_millis(31));
        assert!(reno.window() < initial_cwnd + MSS);
    }

    #[test]
    fn zero_length_ack_does_not_grow_window() {
        let mut reno = Reno::new();
        reno.set_mss(MSS);

        // Slow start.
        let cwnd = reno.window();
        ack(&mut reno, 0, Instant::from_millis(0));
        assert_eq!(reno.window(), cwnd);

        // Congestion avoidance.
        reno.cwnd = MSS * 32;
        reno.ssthresh = MSS * 16;
        ack(&mut reno, 0, Instant::from_millis(1));
        assert_eq!(reno.window(), MSS * 32);
    }

    #[test]
    fn unused_window_does_not_grow() {
        let mut reno = Reno::new();
        reno.set_mss(MSS);
        let cwnd = reno.window();
        let rs = RateSample::default();
        let mut a = test_ack(Instant::from_millis(1), MSS, 0, &rs);
        a.cwnd_limited = false;
        reno.on_ack(&a);
        assert_eq!(reno.window(), cwnd);
    }

    #[test]
    fn repeated_rto_holds_ssthresh() {
        let mut reno = Reno::new();
        reno.set_mss(MSS);
        reno.cwnd = MSS * 32;

        // First RTO halves ssthresh based on the flight size.
        reno.on_rto(Instant::from_millis(0), MSS * 32);
        assert_eq!(reno.ssthresh, MSS * 16);
        assert_eq!(reno.window(), MSS);

        // Until new data is ACKed, further RTOs are retransmissions of the
        // same segment and must hold ssthresh constant instead of collapsing
        // it towards the minimum.
        reno.on_rto(Instant::from_millis(1), MSS);
        assert_eq!(reno.ssthresh, MSS * 16);
        assert_eq!(reno.window(), MSS);

        // Once new data is ACKed, the next RTO is a fresh loss detection
        // and reduces ssthresh again.
        ack(&mut reno, MSS, Instant::from_millis(2));
        reno.on_rto(Instant::from_millis(3), MSS * 4);
        assert_eq!(reno.ssthresh, MSS * 2);
    }

    #[test]
    fn reno_min_cwnd() {
        let mut reno = Reno::new();
        reno.set_remote_window(64 * 1024);

        for _ in 0..100 {
            reno.on_rto(Instant::from_millis(0), reno.window());
            assert!(reno.window() >= reno.mss);
            reno.on_recovery_start(Instant::from_millis(0), 0);
            assert!(reno.window() >= reno.mss);
        }
    }
}
