//! hushgate addition: delivery-rate estimation, after
//! draft-cheng-iccrg-delivery-rate-estimation (what Linux's BBR uses).
//!
//! Every transmitted segment carries a [`TxStamp`]: how much the
//! connection had delivered, and when, at the moment the segment left.
//! When the segment is delivered (cumulatively ACKed or SACKed) the
//! difference between the connection's delivered count now and the stamp's
//! is the data delivered over that segment's flight, and the elapsed time
//! is the longer of its send interval and its ACK interval (so ACK
//! compression cannot inflate the rate). One [`RateSample`] is built per
//! incoming ACK, from the most recently sent segment it delivered.

use crate::time::{Duration, Instant};

/// The connection-wide delivery counters.
#[derive(Debug, Clone, Copy)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub(super) struct Delivery {
    /// Bytes delivered (ACKed or SACKed) since the connection opened.
    pub delivered: u64,
    /// When `delivered` last grew.
    pub delivered_time: Instant,
    /// Send time of the most recently sent segment whose delivery has been
    /// accounted: the start of the next sample's send interval.
    pub first_sent_time: Instant,
    /// Non-zero while the flight was limited by the application rather
    /// than by the network: samples taken before `delivered` passes this
    /// mark are marked app-limited (they underestimate the path).
    pub app_limited_until: u64,
}

impl Delivery {
    pub fn new(now: Instant) -> Delivery {
        Delivery {
            delivered: 0,
            delivered_time: now,
            first_sent_time: now,
            app_limited_until: 0,
        }
    }

    /// The stamp for a segment leaving now. `in_flight` is the data in
    /// flight before it: when nothing is in flight the send and delivery
    /// intervals restart here (idle periods must not count as time the path
    /// took to deliver).
    pub fn stamp(&mut self, now: Instant, in_flight: usize) -> TxStamp {
        if in_flight == 0 {
            self.first_sent_time = now;
            self.delivered_time = now;
        }
        TxStamp {
            delivered: self.delivered,
            delivered_time: self.delivered_time,
            first_sent_time: self.first_sent_time,
            app_limited: self.app_limited_until != 0,
        }
    }

    /// Accounts `len` newly delivered bytes of a segment sent at `sent`
    /// with `stamp`, into the sample `rs` being built for this ACK.
    pub fn on_delivered(
        &mut self,
        now: Instant,
        len: usize,
        sent: Instant,
        stamp: &TxStamp,
        rs: &mut RateSample,
    ) {
        self.delivered += len as u64;
        self.delivered_time = now;
        rs.newly_delivered += len;
        // The most recently sent delivered segment defines the sample.
        if rs.prior_delivered.is_none_or(|p| stamp.delivered >= p) {
            rs.prior_delivered = Some(stamp.delivered);
            rs.send_elapsed = sent - stamp.first_sent_time;
            rs.ack_elapsed = now - stamp.delivered_time;
            rs.app_limited = stamp.app_limited;
            self.first_sent_time = sent;
        }
    }

    /// Completes the sample of one ACK. A sample whose interval is shorter
    /// than the path's minimum RTT is discarded, as in Linux: it would
    /// measure a burst, not the path.
    pub fn finish(&mut self, rs: &mut RateSample, min_rtt: Option<Duration>) {
        if self.app_limited_until != 0 && self.delivered > self.app_limited_until {
            self.app_limited_until = 0;
        }
        let Some(prior) = rs.prior_delivered else {
            return;
        };
        rs.delivered = self.delivered - prior;
        rs.interval = rs.send_elapsed.max(rs.ack_elapsed);
        if rs.interval.total_micros() == 0 || min_rtt.is_some_and(|m| rs.interval < m) {
            rs.delivered = 0;
            rs.interval = Duration::ZERO;
        }
    }

    /// Marks the flight app-limited: the sender has nothing more to send
    /// although the congestion window would allow it.
    pub fn set_app_limited(&mut self, in_flight: usize) {
        self.app_limited_until = (self.delivered + in_flight as u64).max(1);
    }
}

/// What the connection's delivery state was when a segment left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub(super) struct TxStamp {
    pub delivered: u64,
    pub delivered_time: Instant,
    pub first_sent_time: Instant,
    pub app_limited: bool,
}

/// The delivery rate measured by one ACK.
#[derive(Debug, Clone, Copy, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub(crate) struct RateSample {
    /// `Delivery::delivered` when the sample's segment was sent.
    pub prior_delivered: Option<u64>,
    pub send_elapsed: Duration,
    pub ack_elapsed: Duration,
    /// Bytes delivered over `interval` (0: no valid sample).
    pub delivered: u64,
    pub interval: Duration,
    /// Bytes this ACK delivered (ACKed or SACKed for the first time).
    pub newly_delivered: usize,
    /// Bytes this ACK found lost.
    pub newly_lost: usize,
    /// The sample was taken while the application limited the flight.
    pub app_limited: bool,
}

impl RateSample {
    /// Delivery rate in bytes per second, if this ACK gave a valid sample.
    pub fn rate(&self) -> Option<u64> {
        if self.delivered == 0 || self.interval.total_micros() == 0 {
            return None;
        }
        Some(self.delivered * 1_000_000 / self.interval.total_micros())
    }
}

#[cfg(test)]
mod test {
    use super::*;

    fn t(ms: u64) -> Instant {
        Instant::from_micros((ms * 1000) as i64)
    }

    #[test]
    fn steady_flight_measures_the_delivery_rate() {
        // 10 segments of 1000 bytes sent 1 ms apart, each delivered 20 ms
        // later: the path delivers 1000 bytes per ms = 1 MB/s.
        let mut d = Delivery::new(t(0));
        let mut stamps = Vec::new();
        for i in 0..10 {
            stamps.push((t(i), d.stamp(t(i), (i as usize) * 1000)));
        }
        let mut last = None;
        for (i, (sent, stamp)) in stamps.iter().enumerate() {
            let mut rs = RateSample::default();
            let now = t(20 + i as u64);
            d.on_delivered(now, 1000, *sent, stamp, &mut rs);
            d.finish(&mut rs, Some(Duration::from_millis(20)));
            last = rs.rate().or(last);
        }
        // The last sample covers 10 segments over 20 + 9 ms... at least
        // the rate is in the right range and never above the true rate.
        let rate = last.expect("a valid sample");
        assert!(rate <= 1_000_000, "{rate}");
        assert!(rate >= 300_000, "{rate}");
    }

    #[test]
    fn samples_shorter_than_min_rtt_are_discarded() {
        let mut d = Delivery::new(t(0));
        let s = d.stamp(t(0), 0);
        let mut rs = RateSample::default();
        d.on_delivered(t(1), 1000, t(0), &s, &mut rs);
        d.finish(&mut rs, Some(Duration::from_millis(20)));
        assert_eq!(rs.rate(), None);
        assert_eq!(rs.newly_delivered, 1000);
    }

    #[test]
    fn app_limited_marks_samples_until_the_flight_is_delivered() {
        let mut d = Delivery::new(t(0));
        d.set_app_limited(0);
        let s = d.stamp(t(0), 0);
        assert!(s.app_limited);
        let mut rs = RateSample::default();
        d.on_delivered(t(30), 1000, t(0), &s, &mut rs);
        d.finish(&mut rs, None);
        assert!(rs.app_limited);
        // The mark (delivered 0 + in flight 0 -> 1) has been passed.
        assert_eq!(d.app_limited_until, 0);
        let s2 = d.stamp(t(30), 0);
        assert!(!s2.app_limited);
    }
}
