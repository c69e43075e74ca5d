use crate::time::Instant;

use super::{Ack, Controller};

// Constants from RFC 9438.
const BETA_CUBIC: f64 = 0.7;
const C: f64 = 0.4;
const ALPHA_CUBIC: f64 = 3.0 * (1.0 - BETA_CUBIC) / (1.0 + BETA_CUBIC);

const DEFAULT_MSS: usize = 1024;

/// CUBIC (RFC 9438) with byte counting: growth is computed per byte
/// delivered, not per ACK (hushgate change; upstream grew by at most one
/// segment per ACK, so a receiver that acknowledges a batch of segments at
/// once slowed the window's growth by the batch size). During loss
/// recovery the socket sends by RFC 6675's pipe rule against `cwnd =
/// ssthresh`, so there is no window inflation per duplicate ACK.
#[derive(Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Cubic {
    /// Window before the last reduction (RFC 9438 W_max).
    w_max: usize,
    cwnd: usize,
    mss: usize,
    ssthresh: usize,
    rwnd: usize,
    /// Cubic curve offset in seconds; depends only on w_max and mss.
    k: f64,
    /// RFC 9438 4.3 Reno-friendly window, integrated per delivered byte.
    w_est: f64,
    /// cwnd at the most recent congestion event; gates alpha_cubic.
    cwnd_prior: usize,
    /// Start of the current congestion avoidance epoch.
    epoch_start: Option<Instant>,
    in_recovery: bool,
    in_rto_recovery: bool,
    /// RFC 9438 4.2: when in-flight last hit 0 (an idle period does not
    /// count as time on the curve).
    idle_start: Option<Instant>,
}

impl Cubic {
    pub fn new() -> Cubic {
        let mut cubic = Cubic {
            w_max: DEFAULT_MSS * 2,
            cwnd: DEFAULT_MSS * 2,
            mss: DEFAULT_MSS,
            rwnd: 64 * DEFAULT_MSS,
            ssthresh: usize::MAX,
            k: 0.0,
            w_est: (DEFAULT_MSS * 2) as f64,
            cwnd_prior: DEFAULT_MSS * 2,
            epoch_start: None,
            in_recovery: false,
            in_rto_recovery: false,
            idle_start: None,
        };
        cubic.recompute_k();
        cubic
    }

    fn recompute_k(&mut self) {
        let c_as_bytes = C * self.mss as f64;
        let k3 = (self.w_max as f64) * (1.0 - BETA_CUBIC) / c_as_bytes;
        self.k = cube_root(k3);
    }

    fn absorb_idle(&mut self, now: Instant) {
        if let (Some(idle), Some(start)) = (self.idle_start, self.epoch_start)
            && now >= idle
        {
            self.epoch_start = Some(start + (now - idle));
        }
        self.idle_start = None;
    }

    fn reduce(&mut self, now: Instant) {
        self.cwnd_prior = self.cwnd;
        // Fast convergence (RFC 9438 4.7).
        self.w_max = if self.cwnd < self.w_max {
            ((self.cwnd as f64) * (1.0 + BETA_CUBIC) / 2.0) as usize
        } else {
            self.cwnd
        };
        self.ssthresh = ((self.cwnd as f64 * BETA_CUBIC) as usize).max(2 * self.mss);
        self.epoch_start = Some(now);
        self.recompute_k();
    }
}

impl Controller for Cubic {
    fn window(&self) -> usize {
        self.cwnd
    }

    fn in_slow_start(&self) -> bool {
        self.cwnd < self.ssthresh
    }

    fn on_ack(&mut self, ack: &Ack) {
        let now = ack.now;
        self.absorb_idle(now);
        if ack.in_flight == 0 {
            self.idle_start = Some(now);
        }
        if ack.delivered == 0 {
            return;
        }
        self.in_rto_recovery = false;
        if ack.in_recovery || self.in_recovery || !ack.cwnd_limited {
            return;
        }

        if self.cwnd < self.ssthresh {
            self.cwnd = self
                .cwnd
                .saturating_add(ack.delivered)
                .min(self.ssthresh.max(self.cwnd))
                .min(self.rwnd)
                .max(self.mss);
            return;
        }

        let epoch_start = match self.epoch_start {
            Some(t) => t,
            None => {
                // Congestion avoidance without a prior loss (left slow
                // start at ssthresh): the curve starts at the current window.
                self.w_max = self.cwnd;
                self.k = 0.0;
                self.w_est = self.cwnd as f64;
                self.epoch_start = Some(now);
                now
            }
        };
        let t = (now - epoch_start).total_micros() as f64 / 1_000_000.0;
        let cwnd = self.cwnd as f64;
        let delivered = ack.delivered as f64;
        let c_as_bytes = C * self.mss as f64;

        // Reno-friendly estimate, per delivered byte.
        let alpha = if self.w_est >= self.cwnd_prior as f64 {
            1.0
        } else {
            ALPHA_CUBIC
        };
        self.w_est += alpha * self.mss as f64 * delivered / cwnd;

        // The cubic target one RTT ahead, clamped so growth never outpaces
        // slow start (RFC 9438 4.2).
        let rtt = ack
            .srtt
            .map_or(0.0, |d| d.total_micros() as f64 / 1_000_000.0);
        let w_cubic = c_as_bytes * (t + rtt - self.k).powi(3) + self.w_max as f64;
        let target = w_cubic.clamp(cwnd, 1.5 * cwnd);

        let next = if c_as_bytes * (t - self.k).powi(3) + (self.w_max as f64) < self.w_est {
            // Reno-friendly region.
            self.w_est
        } else {
            cwnd + (target - cwnd) * delivered / cwnd
        };
        self.cwnd = (next.max(cwnd) as usize).min(self.rwnd).max(self.mss);
    }

    fn on_send(&mut self, now: Instant, _len: usize, _in_flight: usize) {
        self.absorb_idle(now);
    }

    fn on_recovery_start(&mut self, now: Instant, _in_flight: usize) {
        self.idle_start = None;
        self.reduce(now);
        self.cwnd = self.ssthresh.min(self.rwnd).max(self.mss);
        self.w_est = self.cwnd as f64;
        self.in_recovery = true;
    }

    fn on_recovery_end(&mut self, _now: Instant) {
        self.in_recovery = false;
    }

    fn on_rto(&mut self, now: Instant, in_flight: usize) {
        if !self.in_rto_recovery {
            self.cwnd = self.cwnd.max(in_flight);
            self.reduce(now);
            self.in_rto_recovery = true;
        }
        self.cwnd = self.mss;
        self.cwnd_prior = in_flight.max(self.cwnd_prior);
        // Slow start up to ssthresh, then a fresh curve.
        self.epoch_start = None;
        self.in_recovery = false;
        self.idle_start = None;
    }

    fn set_mss(&mut self, mss: usize) {
        self.mss = mss;
        self.recompute_k();
    }

    fn set_remote_window(&mut self, remote_window: usize) {
        if self.rwnd < remote_window {
            self.rwnd = remote_window;
        }
    }
}

/// Efficient cube root using f64 bit tricks and Newton-Raphson.
///
/// a = mantissa * 2^e
///
/// cbrt(a) = cbrt(mantissa * 2^e)
/// cbrt(a) = cbrt(mantissa) * cbrt(2^e)
/// -> cbrt(2^e) = 2^(e/3)
///     -> e = 3q + r
///   -> 2^(e/3) = 2^(3q + r)
///   -> 2^(e/3) = 2^q * 2^(r/3)
/// cbrt(a) = cbrt(mantissa) * 2^q * 2^(r/3)
///
/// Floats are constructed from a mantissa and expontnet component.
/// Cbrt of a float can be achieved by cbrt of these two components.
///
/// The mantissa is always between 1 and 2, putting the cbrt between 1
/// and 1.2599. The slope of the curve between those two points is
/// almost a straight line, so a linear interpolatoin between those
/// two points gives an error less than 2%.
///
///
/// The exponent `e` of `2^e` has two parts, tt's quotient and remainder: `e = 3q + r`.
/// Which means cbrt `2^e` is cbrt `2^3q * 2^r` which becomes `2^q * 2^(r/3)`.
///
/// The remainder operation means `r` can only be 0, 1, or 2, so we can calaculate
/// `2^(r/3)` ahead of time.
///
/// Multiplying everything gets us a pretty close answer to the true cbrt.
/// `cbrt(a) = cbrt(mantissa) * 2^q * 2^(r/3)`
///
/// One or two Newton-Raphson iterations reduce any error enough not to matter.
fn cube_root(a: f64) -> f64 {
    if !(a >= f64::MIN_POSITIVE && a.is_finite()) {
        return 0.0;
    }

    const POW2_REM_OVER_3: [f64; 3] = [1.0, 1.2599210498948732, 1.5874010519681994];

    let bits = a.to_bits();

    let m = f64::from_bits((bits & 0x000F_FFFF_FFFF_FFFF) | 0x3FF0_0000_0000_0000);
    let cbrt_m = m.mul_add(0.2599, 0.7401);

    let e = (((bits >> 52) & 0x7FF) as i64) - 1023;
    let q = e.div_euclid(3);
    let r = e.rem_euclid(3) as usize;

    let pow2q = f64::from_bits(((q + 1023) as u64) << 52);

    let x = cbrt_m * pow2q * POW2_REM_OVER_3[r];

    (2.0 * x + a / (x * x)) / 3.0
}

#[cfg(test)]
mod test {
    use super::super::test_ack;
    use super::*;
    use crate::socket::tcp::rate::RateSample;
    use crate::time::Duration;

    const MSS: usize = 1024;

    fn ack(cubic: &mut Cubic, len: usize, now: Instant) {
        let rs = RateSample::default();
        let mut a = test_ack(now, len, cubic.window().saturating_sub(MSS), &rs);
        a.srtt = Some(Duration::from_millis(20));
        cubic.on_ack(&a)
    }

    #[test]
    fn congestion_avoidance_works() {
        let mut cubic = Cubic::new();
        cubic.set_mss(MSS);
        cubic.set_remote_window(1 << 20);
        cubic.w_max = MSS * 32;
        cubic.recompute_k();

        cubic.cwnd = (MSS * 32 * 7) / 10;
        cubic.ssthresh = cubic.cwnd;
        cubic.epoch_start = Some(Instant::from_millis(0));

        for i in 1..10 {
            let initial_cwnd = cubic.window();
            ack(&mut cubic, MSS, Instant::from_millis(i));
            assert!(cubic.window() < initial_cwnd + MSS);
        }

        // Time on the curve brings the window back to w_max and past it.
        let pre = cubic.window();
        for i in 0..600 {
            ack(&mut cubic, MSS, Instant::from_millis(i * 10));
        }
        assert!(cubic.window() >= cubic.w_max);
        assert!(cubic.window() > pre);
    }

    #[test]
    fn growth_is_per_byte_not_per_ack() {
        // The same bytes delivered in one stretch ACK or in 16 ACKs give
        // the same window (within rounding).
        let mk = || {
            let mut c = Cubic::new();
            c.set_mss(MSS);
            c.set_remote_window(1 << 24);
            c.cwnd = 64 * MSS;
            c.ssthresh = 32 * MSS;
            c.w_max = 64 * MSS;
            c.w_est = c.cwnd as f64;
            c.cwnd_prior = c.cwnd;
            c.recompute_k();
            c.epoch_start = Some(Instant::from_millis(0));
            c
        };
        let (mut one, mut many) = (mk(), mk());
        let now = Instant::from_millis(2000);
        ack(&mut one, 16 * MSS, now);
        for _ in 0..16 {
            ack(&mut many, MSS, now);
        }
        let (a, b) = (one.window() as i64, many.window() as i64);
        assert!(a > 64 * MSS as i64, "it grew: {a}");
        assert!((a - b).abs() <= 2 * MSS as i64, "{a} vs {b}");
    }

    #[test]
    fn slow_start_counts_bytes() {
        let mut cubic = Cubic::new();
        cubic.set_mss(MSS);
        cubic.set_remote_window(1 << 20);
        let initial = cubic.window();
        ack(&mut cubic, 16 * MSS, Instant::from_millis(1));
        assert_eq!(cubic.window(), initial + 16 * MSS);
    }

    #[test]
    fn recovery_reduces_once_by_beta() {
        let mut cubic = Cubic::new();
        cubic.set_mss(MSS);
        cubic.set_remote_window(1 << 20);
        cubic.cwnd = MSS * 32;

        cubic.on_recovery_start(Instant::from_millis(0), MSS * 32);
        let expected = (32.0 * MSS as f64 * BETA_CUBIC) as usize;
        assert_eq!(cubic.ssthresh, expected);
        assert_eq!(cubic.window(), expected);
        assert_eq!(cubic.w_max, MSS * 32);

        // Deliveries during recovery hold the window.
        for i in 0..5 {
            ack(&mut cubic, MSS, Instant::from_millis(i));
        }
        assert_eq!(cubic.window(), expected);

        cubic.on_recovery_end(Instant::from_millis(10));
        ack(&mut cubic, MSS, Instant::from_millis(30));
        assert!(cubic.window() >= expected);
    }

    #[test]
    fn repeated_rto_holds_ssthresh() {
        let mut cubic = Cubic::new();
        cubic.set_mss(MSS);
        cubic.cwnd = MSS * 32;

        cubic.on_rto(Instant::from_millis(0), MSS * 32);
        let ssthresh = cubic.ssthresh;
        assert_eq!(ssthresh, (32.0 * MSS as f64 * BETA_CUBIC) as usize);
        assert_eq!(cubic.window(), MSS);

        cubic.on_rto(Instant::from_millis(1), MSS);
        assert_eq!(cubic.ssthresh, ssthresh);

        ack(&mut cubic, MSS, Instant::from_millis(2));
        cubic.cwnd = 4 * MSS;
        cubic.on_rto(Instant::from_millis(3), MSS * 4);
        assert_eq!(cubic.ssthresh, (4.0 * MSS as f64 * BETA_CUBIC) as usize);
    }

    #[test]
    fn fast_convergence_reduces_w_max() {
        let mut cubic = Cubic::new();
        cubic.set_mss(MSS);
        cubic.cwnd = MSS * 32;
        cubic.w_max = MSS * 64;
        let w_max_prev = cubic.w_max;
        cubic.on_recovery_start(Instant::from_millis(0), cubic.cwnd);
        assert!(cubic.w_max < w_max_prev);
    }

    #[test]
    fn idle_time_is_not_time_on_the_curve() {
        let mut cubic = Cubic::new();
        cubic.set_mss(MSS);
        cubic.epoch_start = Some(Instant::from_millis(0));
        cubic.idle_start = Some(Instant::from_millis(100));
        cubic.on_send(Instant::from_millis(1100), MSS, MSS);
        assert_eq!(cubic.epoch_start, Some(Instant::from_millis(1000)));
    }

    #[test]
    fn test_cube_root() {
        let mut max_err = 0.0;
        let mut max_err_at = 0;
        let mut max_err_expected = 0.0;
        let mut max_err_found = 0.0;

        for i in (1..1_000_000).step_by(99) {
            let found = cube_root(i as f64);
            let expected = (i as f64).cbrt();
            let err = (found - expected).abs() / expected;

            if err > max_err {
                max_err = err;
                max_err_at = i;
                max_err_found = found;
                max_err_expected = expected;
            }
        }

        assert!(
            max_err < 0.0005,
            "cube_root({max_err_at}) = {max_err_found}, expected ~{max_err_expected}, rel err {max_err:.3e}"
        );
    }
}
