use crate::time::{Duration, Instant};

use super::rate::RateSample;

pub(super) mod no_control;

#[cfg(feature = "socket-tcp-cubic")]
pub(super) mod cubic;

#[cfg(feature = "socket-tcp-reno")]
pub(super) mod reno;

#[cfg(feature = "socket-tcp-bbr")]
pub(super) mod bbr;

/// What one incoming ACK told the sender (hushgate: the controllers see
/// bytes delivered, losses and rate samples, not one call per ACK, so that
/// a stretch ACK covering many segments grows the window as much as the
/// many ACKs it replaces: RFC 3465 byte counting).
#[derive(Debug, Clone, Copy)]
pub(super) struct Ack<'a> {
    pub now: Instant,
    /// Bytes newly acknowledged cumulatively or by SACK.
    pub delivered: usize,
    /// Bytes this ACK found lost.
    pub lost: usize,
    /// Bytes in flight before this ACK and after it.
    pub prior_in_flight: usize,
    pub in_flight: usize,
    /// The sender was limited by the congestion window since the last ACK
    /// (a window that is not used must not grow: RFC 7661).
    pub cwnd_limited: bool,
    /// The send buffer or the peer's window held the sender back since the
    /// data this ACK covers was sent.
    pub buffer_limited: bool,
    /// In fast recovery or timeout recovery.
    pub in_recovery: bool,
    /// Round-trip time sample of this ACK, the smoothed RTT and the
    /// windowed minimum.
    pub rtt: Option<Duration>,
    pub srtt: Option<Duration>,
    pub min_rtt: Option<Duration>,
    /// Bytes delivered since the connection opened (after this ACK).
    pub total_delivered: u64,
    pub rate: &'a RateSample,
}

#[allow(unused_variables)]
pub(super) trait Controller {
    /// Returns the number of bytes that can be in flight.
    fn window(&self) -> usize;

    /// The rate the controller wants the socket to pace at, bytes per
    /// second. `None`: the socket derives one from the window and the RTT.
    fn pacing_rate(&self) -> Option<u64> {
        None
    }

    /// In slow start (the derived pacing rate is doubled there, as Linux
    /// does, so pacing never holds back the window's growth).
    fn in_slow_start(&self) -> bool {
        false
    }

    /// Set the remote window size.
    fn set_remote_window(&mut self, remote_window: usize) {}

    /// An ACK arrived that acknowledged or selectively acknowledged data,
    /// or revealed losses.
    fn on_ack(&mut self, ack: &Ack) {}

    /// Loss recovery begins (first loss detected by SACK, RACK or three
    /// duplicate ACKs): the multiplicative decrease of loss-based
    /// controllers. Called once per recovery episode.
    fn on_recovery_start(&mut self, now: Instant, in_flight: usize) {}

    /// Everything outstanding when recovery began has been acknowledged.
    fn on_recovery_end(&mut self, now: Instant) {}

    /// Fired on a retransmission timeout.
    fn on_rto(&mut self, now: Instant, in_flight: usize) {}

    /// A segment of `len` bytes left; `in_flight` counts it.
    fn on_send(&mut self, now: Instant, len: usize, in_flight: usize) {}

    /// Set the maximum segment size.
    fn set_mss(&mut self, mss: usize) {}
}

#[derive(Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub(super) enum AnyController {
    None(no_control::NoControl),

    #[cfg(feature = "socket-tcp-reno")]
    Reno(reno::Reno),

    #[cfg(feature = "socket-tcp-cubic")]
    Cubic(cubic::Cubic),

    #[cfg(feature = "socket-tcp-bbr")]
    Bbr(bbr::Bbr),
}

impl AnyController {
    /// Create a new congestion controller.
    /// `AnyController::new()` selects the best congestion controller based on the features.
    ///
    /// - If `socket-tcp-cubic` feature is enabled, it will use `Cubic`.
    /// - If `socket-tcp-reno` feature is enabled, it will use `Reno`.
    /// - If both `socket-tcp-cubic` and `socket-tcp-reno` features are enabled, it will use `Cubic`.
    ///    - `Cubic` is more efficient regarding throughput.
    ///    - `Reno` is more conservative and is suitable for low-power devices.
    /// - If no congestion controller is available, it will use `NoControl`.
    ///
    /// Users can also select a congestion controller manually by [`super::Socket::set_congestion_control()`]
    /// method at run-time.
    #[allow(unreachable_code)]
    #[inline]
    pub fn new() -> Self {
        #[cfg(feature = "socket-tcp-cubic")]
        {
            return AnyController::Cubic(cubic::Cubic::new());
        }

        #[cfg(feature = "socket-tcp-reno")]
        {
            return AnyController::Reno(reno::Reno::new());
        }

        AnyController::None(no_control::NoControl)
    }

    #[inline]
    pub fn inner_mut(&mut self) -> &mut dyn Controller {
        match self {
            AnyController::None(n) => n,

            #[cfg(feature = "socket-tcp-reno")]
            AnyController::Reno(r) => r,

            #[cfg(feature = "socket-tcp-cubic")]
            AnyController::Cubic(c) => c,

            #[cfg(feature = "socket-tcp-bbr")]
            AnyController::Bbr(b) => b,
        }
    }

    #[inline]
    pub fn inner(&self) -> &dyn Controller {
        match self {
            AnyController::None(n) => n,

            #[cfg(feature = "socket-tcp-reno")]
            AnyController::Reno(r) => r,

            #[cfg(feature = "socket-tcp-cubic")]
            AnyController::Cubic(c) => c,

            #[cfg(feature = "socket-tcp-bbr")]
            AnyController::Bbr(b) => b,
        }
    }
}

/// Test helper: an ACK of `delivered` bytes at `now`.
#[cfg(test)]
pub(super) fn test_ack(
    now: Instant,
    delivered: usize,
    in_flight: usize,
    rate: &RateSample,
) -> Ack<'_> {
    Ack {
        now,
        delivered,
        lost: 0,
        prior_in_flight: in_flight + delivered,
        in_flight,
        cwnd_limited: true,
        buffer_limited: false,
        in_recovery: false,
        rtt: None,
        srtt: None,
        min_rtt: None,
        total_delivered: 0,
        rate,
    }
}
