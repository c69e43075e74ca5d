//! hushgate addition: BBR congestion control (model-based), after BBR v1
//! as in Linux (`net/ipv4/tcp_bbr.c`) and draft-cardwell-iccrg-bbr.
//!
//! Loss-based controllers read every loss as congestion and halve their
//! window; on a path that drops a packet in a thousand for reasons that
//! have nothing to do with congestion (Wi-Fi, mobile), that keeps the
//! window tiny. BBR instead models the path: the bottleneck bandwidth
//! (windowed maximum of the delivery rate over ten round trips) and the
//! propagation delay (minimum RTT over ten seconds). It paces at the
//! bandwidth and keeps about two bandwidth-delay products in flight, so
//! random loss barely changes its rate, and a deep bottleneck queue is
//! not filled (pacing at the measured rate adds no standing queue).
//!
//! States: STARTUP (pacing gain 2.89 until the bandwidth stops growing by
//! 25 % for three rounds), DRAIN (empties the queue STARTUP built),
//! PROBE_BW (cycles pacing gains 1.25, 0.75, then 1 for six rounds), and
//! PROBE_RTT (every 10 s without a new minimum RTT: four segments in
//! flight for 200 ms, so the queue drains and the true RTT is seen).
//!
//! Loss response, as in Linux: the window shrinks by what is lost, and
//! the first round of a recovery conserves packets (one out per one
//! delivered) once STARTUP is over; the window is restored when recovery
//! ends. There is no long-term policer detection. Integer arithmetic throughout (gains are
//! fixed-point with `UNIT` = 256, as in Linux).

use crate::time::{Duration, Instant};

use super::{Ack, Controller};

const UNIT: u64 = 256;
/// 2/ln(2): the smallest gain that doubles the delivery rate every round.
const HIGH_GAIN: u64 = UNIT * 2885 / 1000 + 1;
const DRAIN_GAIN: u64 = UNIT * 1000 / 2885;
const CWND_GAIN: u64 = UNIT * 2;
const PACING_GAINS: [u64; 8] = [
    UNIT * 5 / 4,
    UNIT * 3 / 4,
    UNIT,
    UNIT,
    UNIT,
    UNIT,
    UNIT,
    UNIT,
];
/// Rounds the bandwidth filter remembers.
const BW_ROUNDS: u64 = 10;
const MIN_RTT_WINDOW: Duration = Duration::from_secs(10);
const PROBE_RTT_TIME: Duration = Duration::from_millis(200);
/// Growth that counts as "the pipe is not full yet" (25 %).
const FULL_BW_THRESH: u64 = UNIT * 5 / 4;
const FULL_BW_ROUNDS: u32 = 3;
/// Pace 1 % below the estimate, so a queue the estimate missed drains.
const PACING_MARGIN_PERCENT: u64 = 1;
const MIN_CWND_SEGMENTS: usize = 4;
/// STARTUP also ends on a round that loses more than this share of what
/// it delivers, in at least `STARTUP_LOSS_EVENTS` separate losses (BBR v2
/// has such an exit, at 2 %): overshooting a shallow bottleneck queue at
/// 2.89 times its rate loses a large part of every round, and without this
/// STARTUP would keep doing it for three rounds after the bandwidth
/// stopped growing. The threshold is far above random loss of a few
/// percent (and its round-to-round variance), which must not end STARTUP
/// early: on a 200 ms path, PROBE_BW then takes seconds to find the rate.
const STARTUP_LOSS_PERCENT: u64 = 15;
const STARTUP_LOSS_EVENTS: u32 = 8;
/// STARTUP also ends when, at the end of a round, the smoothed RTT is this
/// much above the minimum (in 1/256) and at least `STARTUP_QUEUE_MIN`
/// above it: a queue is building, so the pipe is full. Pacing at 2.89 times the
/// delivery rate fills a deep bottleneck queue within a round, and the
/// three rounds BBR v1 waits for a bandwidth plateau overflow it (on a
/// gigabit path with a bandwidth-delay product of queue: megabytes lost
/// and a timeout). As HyStart does for CUBIC.
const STARTUP_QUEUE_GAIN: u64 = UNIT * 5 / 4;
const STARTUP_QUEUE_MIN: Duration = Duration::from_millis(4);
const INITIAL_CWND_SEGMENTS: usize = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub(super) enum Mode {
    Startup,
    Drain,
    ProbeBw,
    ProbeRtt,
}

/// Windowed maximum over rounds (Kathleen Nichols' algorithm, as in
/// Linux's `win_minmax`): the best, second best and third best samples of
/// the window, so the maximum ages out without storing every sample.
#[derive(Debug, Clone, Copy, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
struct MaxFilter {
    s: [(u64, u64); 3], // (round, value)
}

impl MaxFilter {
    fn get(&self) -> u64 {
        self.s[0].1
    }

    fn reset(&mut self, round: u64, v: u64) {
        self.s = [(round, v); 3];
    }

    fn update(&mut self, round: u64, v: u64, window: u64) {
        if v >= self.s[0].1 || round - self.s[2].0 > window {
            self.reset(round, v);
            return;
        }
        if v >= self.s[1].1 {
            self.s[2] = (round, v);
            self.s[1] = (round, v);
        } else if v >= self.s[2].1 {
            self.s[2] = (round, v);
        }
        // Age the samples out.
        let dt = round - self.s[0].0;
        if dt > window {
            self.s[0] = self.s[1];
            self.s[1] = self.s[2];
            self.s[2] = (round, v);
            if round - self.s[0].0 > window {
                self.s[0] = self.s[1];
                self.s[1] = self.s[2];
            }
        } else if self.s[1].0 == self.s[0].0 && dt > window / 4 {
            self.s[2] = (round, v);
            self.s[1] = (round, v);
        } else if self.s[2].0 == self.s[1].0 && dt > window / 2 {
            self.s[2] = (round, v);
        }
    }
}

#[derive(Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Bbr {
    mss: usize,
    mode: Mode,
    cwnd: usize,
    rwnd: usize,
    /// Bytes per second.
    pacing_rate: u64,
    pacing_gain: u64,
    cwnd_gain: u64,

    btl_bw: MaxFilter,
    min_rtt: Option<Duration>,
    min_rtt_stamp: Option<Instant>,

    /// Round counting: a round ends when a segment sent after the round
    /// began is delivered.
    next_round_delivered: u64,
    round_count: u64,
    round_start: bool,

    full_bw: u64,
    full_bw_count: u32,
    filled_pipe: bool,

    cycle_index: usize,
    cycle_stamp: Option<Instant>,

    probe_rtt_done: Option<Instant>,
    probe_rtt_round_done: bool,

    /// cwnd before recovery or PROBE_RTT, restored afterwards.
    prior_cwnd: usize,
    in_recovery: bool,
    /// First round of a recovery: send one segment per segment delivered.
    packet_conservation: bool,
    /// Latest srtt, for the pacing rate before the first bandwidth sample.
    srtt: Option<Duration>,
    /// Bytes delivered as of the latest ACK.
    delivered: u64,
    /// This round's deliveries and losses (STARTUP's loss exit).
    round_delivered: u64,
    round_lost: u64,
    round_loss_events: u32,
}

impl Default for Bbr {
    fn default() -> Self {
        Self::new()
    }
}

impl Bbr {
    pub fn new() -> Bbr {
        let mss = 1024;
        Bbr {
            mss,
            mode: Mode::Startup,
            cwnd: INITIAL_CWND_SEGMENTS * mss,
            rwnd: usize::MAX,
            pacing_rate: 0,
            pacing_gain: HIGH_GAIN,
            cwnd_gain: HIGH_GAIN,
            btl_bw: MaxFilter::default(),
            min_rtt: None,
            min_rtt_stamp: None,
            next_round_delivered: 0,
            round_count: 0,
            round_start: false,
            full_bw: 0,
            full_bw_count: 0,
            filled_pipe: false,
            cycle_index: 0,
            cycle_stamp: None,
            probe_rtt_done: None,
            probe_rtt_round_done: false,
            prior_cwnd: 0,
            in_recovery: false,
            packet_conservation: false,
            srtt: None,
            delivered: 0,
            round_delivered: 0,
            round_lost: 0,
            round_loss_events: 0,
        }
    }

    #[cfg(test)]
    pub(super) fn mode(&self) -> Mode {
        self.mode
    }

    /// Bottleneck bandwidth estimate, bytes per second.
    pub(super) fn bandwidth(&self) -> u64 {
        self.btl_bw.get()
    }

    /// Bandwidth-delay product scaled by `gain`, bytes; `None` before the
    /// model has both a bandwidth and an RTT.
    fn bdp(&self, gain: u64) -> Option<usize> {
        let (bw, rtt) = (self.btl_bw.get(), self.min_rtt?);
        if bw == 0 {
            return None;
        }
        let bdp = bw as u128 * rtt.total_micros() as u128 / 1_000_000;
        Some((bdp * gain as u128 / UNIT as u128) as usize)
    }

    /// The pacing quantum the socket uses (about 1 ms of data, at least
    /// two segments): the window keeps room for three of them, so sending
    /// in quanta does not starve the pipe (Linux's quantization budget).
    fn quantum(&self) -> usize {
        ((self.pacing_rate / 1000) as usize).max(2 * self.mss)
    }

    fn target_cwnd(&self, gain: u64) -> usize {
        match self.bdp(gain) {
            Some(bdp) => bdp + 3 * self.quantum(),
            None => INITIAL_CWND_SEGMENTS * self.mss,
        }
    }

    fn min_cwnd(&self) -> usize {
        MIN_CWND_SEGMENTS * self.mss
    }

    fn update_round(&mut self, ack: &Ack) {
        self.round_start = false;
        if let Some(prior) = ack.rate.prior_delivered
            && ack.rate.newly_delivered > 0
            && prior >= self.next_round_delivered
        {
            self.next_round_delivered = ack.total_delivered;
            self.round_count += 1;
            self.round_start = true;
            self.packet_conservation = false;
        }
    }

    fn update_bw(&mut self, ack: &Ack) {
        let Some(bw) = ack.rate.rate() else {
            return;
        };
        // An app-limited sample says the path can do at least this much;
        // it may only raise the estimate.
        if !ack.rate.app_limited || bw >= self.btl_bw.get() {
            self.btl_bw.update(self.round_count, bw, BW_ROUNDS);
        }
    }

    /// STARTUP's exits on heavy loss and on a building queue, judged once
    /// per round.
    fn check_startup_loss(&mut self, ack: &Ack) {
        if self.round_start {
            let heavy = self.round_lost * 100 > self.round_delivered * STARTUP_LOSS_PERCENT
                && self.round_loss_events >= STARTUP_LOSS_EVENTS;
            let queue = match (ack.srtt, self.min_rtt) {
                (Some(srtt), Some(min)) => {
                    srtt.total_micros() * UNIT > min.total_micros() * STARTUP_QUEUE_GAIN
                        && srtt > min + STARTUP_QUEUE_MIN
                }
                _ => false,
            };
            if self.mode == Mode::Startup && (heavy || queue) {
                self.filled_pipe = true;
            }
            self.round_delivered = 0;
            self.round_lost = 0;
            self.round_loss_events = 0;
        }
        self.round_delivered += ack.delivered as u64;
        if ack.lost > 0 {
            self.round_lost += ack.lost as u64;
            self.round_loss_events += 1;
        }
    }

    fn check_full_pipe(&mut self, ack: &Ack) {
        // hushgate: a round held back by buffers (the peer's window, or
        // our send buffer, while autotuning grows them) says nothing about
        // the path either, unless a queue is building (the RTT is a quarter
        // above its minimum): then the path is full whatever held us back.
        let queueing = match (ack.rtt.or(ack.srtt), self.min_rtt) {
            (Some(rtt), Some(min)) => rtt.total_micros() * 4 > min.total_micros() * 5,
            _ => false,
        };
        if self.filled_pipe
            || !self.round_start
            || ack.rate.app_limited
            || (ack.buffer_limited && !queueing)
        {
            return;
        }
        let bw = self.btl_bw.get();
        if bw >= self.full_bw * FULL_BW_THRESH / UNIT {
            self.full_bw = bw;
            self.full_bw_count = 0;
            return;
        }
        self.full_bw_count += 1;
        self.filled_pipe = self.full_bw_count >= FULL_BW_ROUNDS;
    }

    fn enter_probe_bw(&mut self, now: Instant, seed: u64) {
        self.mode = Mode::ProbeBw;
        self.cwnd_gain = CWND_GAIN;
        // Start in a random phase other than the draining one, so flows
        // sharing a bottleneck do not probe in step. The "randomness"
        // comes from the flow's own counters: deterministic for a given
        // run, different between flows.
        self.cycle_index = (2 + (seed % 7) as usize) % PACING_GAINS.len();
        self.pacing_gain = PACING_GAINS[self.cycle_index];
        self.cycle_stamp = Some(now);
    }

    fn advance_cycle(&mut self, ack: &Ack) {
        if self.mode != Mode::ProbeBw {
            return;
        }
        let (Some(stamp), Some(min_rtt)) = (self.cycle_stamp, self.min_rtt) else {
            return;
        };
        let full_length = ack.now - stamp > min_rtt;
        let gain = self.pacing_gain;
        let bdp = self.bdp(UNIT).unwrap_or(0);
        let next = if gain == UNIT {
            full_length
        } else if gain > UNIT {
            // Probing: until the extra data is in flight, or losses say
            // the pipe is full.
            full_length && (ack.lost > 0 || ack.prior_in_flight >= self.bdp(gain).unwrap_or(0))
        } else {
            // Draining: as soon as the queue the probe built is gone.
            full_length || ack.prior_in_flight <= bdp
        };
        if next {
            self.cycle_index = (self.cycle_index + 1) % PACING_GAINS.len();
            self.pacing_gain = PACING_GAINS[self.cycle_index];
            self.cycle_stamp = Some(ack.now);
        }
    }

    fn check_drain(&mut self, ack: &Ack) {
        if self.mode == Mode::Startup && self.filled_pipe {
            self.mode = Mode::Drain;
            self.pacing_gain = DRAIN_GAIN;
            self.cwnd_gain = HIGH_GAIN;
        }
        if self.mode == Mode::Drain && ack.in_flight <= self.target_cwnd(UNIT) {
            self.enter_probe_bw(ack.now, ack.total_delivered);
        }
    }

    fn update_min_rtt(&mut self, ack: &Ack) {
        let now = ack.now;
        let expired = self.min_rtt_stamp.is_some_and(|s| now > s + MIN_RTT_WINDOW);
        if let Some(rtt) = ack.rtt
            && (self.min_rtt.is_none_or(|m| rtt <= m) || expired)
        {
            self.min_rtt = Some(rtt);
            self.min_rtt_stamp = Some(now);
        }

        if expired && self.mode != Mode::ProbeRtt {
            self.mode = Mode::ProbeRtt;
            self.pacing_gain = UNIT;
            self.cwnd_gain = UNIT;
            self.save_cwnd();
            self.probe_rtt_done = None;
        }

        if self.mode == Mode::ProbeRtt {
            match self.probe_rtt_done {
                None if ack.in_flight <= self.min_cwnd() => {
                    self.probe_rtt_done = Some(now + PROBE_RTT_TIME);
                    self.probe_rtt_round_done = false;
                    self.next_round_delivered = ack.total_delivered;
                }
                Some(done) => {
                    if self.round_start {
                        self.probe_rtt_round_done = true;
                    }
                    if self.probe_rtt_round_done && now >= done {
                        self.min_rtt_stamp = Some(now);
                        self.cwnd = self.cwnd.max(self.prior_cwnd);
                        if self.filled_pipe {
                            self.enter_probe_bw(now, ack.total_delivered);
                        } else {
                            self.mode = Mode::Startup;
                            self.pacing_gain = HIGH_GAIN;
                            self.cwnd_gain = HIGH_GAIN;
                        }
                    }
                }
                None => {}
            }
        }
    }

    fn save_cwnd(&mut self) {
        self.prior_cwnd = if self.in_recovery || self.mode == Mode::ProbeRtt {
            self.prior_cwnd.max(self.cwnd)
        } else {
            self.cwnd
        };
    }

    fn set_pacing_rate(&mut self) {
        let bw = self.btl_bw.get();
        let rate = if bw == 0 {
            // No sample yet: the initial window over the handshake's RTT.
            let rtt = self.srtt.map_or(1000, |d| d.total_micros().max(1)) as u128;
            (self.cwnd as u128 * 1_000_000 / rtt) as u64 * HIGH_GAIN / UNIT
        } else {
            (bw as u128 * self.pacing_gain as u128 / UNIT as u128) as u64
                * (100 - PACING_MARGIN_PERCENT)
                / 100
        };
        // Before the pipe is full, never slow down (a low early sample
        // would throttle STARTUP).
        if self.filled_pipe || rate > self.pacing_rate {
            self.pacing_rate = rate.max(1);
        }
    }

    fn set_cwnd(&mut self, ack: &Ack) {
        let acked = ack.delivered;
        let target = self.target_cwnd(self.cwnd_gain);
        // Losses take their share out of the window first.
        let mut cwnd = self.cwnd.saturating_sub(ack.lost).max(self.mss);
        if self.packet_conservation {
            cwnd = cwnd.max(ack.in_flight + acked);
        } else if self.filled_pipe {
            cwnd = (cwnd + acked).min(target);
        } else if cwnd < target || (ack.total_delivered as usize) < INITIAL_CWND_SEGMENTS * self.mss
        {
            cwnd += acked;
        }
        cwnd = cwnd.max(self.min_cwnd());
        if self.mode == Mode::ProbeRtt {
            cwnd = cwnd.min(self.min_cwnd());
        }
        self.cwnd = cwnd.min(self.rwnd.max(self.min_cwnd()));
    }
}

impl Controller for Bbr {
    fn window(&self) -> usize {
        self.cwnd
    }

    fn pacing_rate(&self) -> Option<u64> {
        (self.pacing_rate > 0).then_some(self.pacing_rate)
    }

    fn in_slow_start(&self) -> bool {
        self.mode == Mode::Startup
    }

    fn on_ack(&mut self, ack: &Ack) {
        if ack.srtt.is_some() {
            self.srtt = ack.srtt;
        }
        self.delivered = ack.total_delivered;
        self.update_round(ack);
        self.update_bw(ack);
        self.advance_cycle(ack);
        self.check_startup_loss(ack);
        self.check_full_pipe(ack);
        self.check_drain(ack);
        self.update_min_rtt(ack);
        self.set_pacing_rate();
        self.set_cwnd(ack);
    }

    fn on_recovery_start(&mut self, _now: Instant, in_flight: usize) {
        self.save_cwnd();
        self.in_recovery = true;
        if !self.filled_pipe {
            // hushgate: not in STARTUP. With random loss every round has a
            // loss; conserving packets for a round at each recovery halves
            // STARTUP's growth, the bandwidth stops growing by 25 % per
            // round and STARTUP ends at a fraction of the path's bandwidth
            // (seen at 80 and 200 ms with 1 % loss). The window still
            // loses what is lost (`set_cwnd`).
            return;
        }
        // Start a round now (it ends when a segment sent from now on is
        // delivered); during it, send one segment per segment delivered.
        self.packet_conservation = true;
        self.next_round_delivered = self.delivered;
        self.cwnd = (in_flight + self.mss).max(self.min_cwnd());
    }

    fn on_recovery_end(&mut self, _now: Instant) {
        self.in_recovery = false;
        self.packet_conservation = false;
        self.cwnd = self.cwnd.max(self.prior_cwnd);
    }

    fn on_rto(&mut self, _now: Instant, _in_flight: usize) {
        self.save_cwnd();
        self.in_recovery = true;
        self.packet_conservation = false;
        // Everything in flight is presumed lost: start from one segment;
        // the model (bandwidth, RTT) survives and the window grows back
        // by what is delivered, then is restored when recovery ends.
        self.cwnd = self.mss;
        self.full_bw = 0;
        self.full_bw_count = 0;
    }

    fn set_mss(&mut self, mss: usize) {
        let initial = self.cwnd == INITIAL_CWND_SEGMENTS * self.mss;
        self.mss = mss;
        if initial {
            self.cwnd = INITIAL_CWND_SEGMENTS * mss;
        }
    }

    fn set_remote_window(&mut self, remote_window: usize) {
        // The peer's window only matters as a cap on what a cwnd can use;
        // remember the largest seen (it grows with receive autotuning).
        if self.rwnd == usize::MAX || self.rwnd < remote_window {
            self.rwnd = remote_window;
        }
    }
}

#[cfg(test)]
mod test {
    use super::super::test_ack;
    use super::*;
    use crate::socket::tcp::rate::RateSample;

    const MSS: usize = 1000;

    /// A fluid model of one BBR flow over a bottleneck of `bw` bytes/s,
    /// propagation RTT `rtt`, with a queue: each round, what BBR lets fly
    /// is delivered at min(pacing, bw) and acknowledged one RTT (plus
    /// queueing) later.
    struct Path {
        bw: u64,
        rtt: Duration,
        queue: u64,
        now: Instant,
        delivered: u64,
    }

    impl Path {
        fn round(&mut self, bbr: &mut Bbr, loss_bytes: usize) -> (u64, Duration) {
            let cwnd = bbr.window() as u64;
            let pacing = bbr.pacing_rate().unwrap_or(u64::MAX);
            let rtt_us = self.rtt.total_micros();
            // Bytes offered in one RTT: limited by cwnd and pacing.
            let offered = cwnd.min(pacing.saturating_mul(rtt_us) / 1_000_000).max(1);
            let capacity = self.bw * rtt_us / 1_000_000;
            let delivered = offered.min(capacity + self.queue);
            self.queue = offered.saturating_sub(capacity).min(4 * capacity);
            let qdelay = Duration::from_micros(self.queue * 1_000_000 / self.bw);
            let round_time = self.rtt + qdelay;
            self.now += round_time;
            let prior = self.delivered;
            self.delivered += delivered;
            let rs = RateSample {
                prior_delivered: Some(prior),
                delivered,
                interval: round_time,
                newly_delivered: delivered as usize,
                ..RateSample::default()
            };
            let mut a = test_ack(self.now, delivered as usize, 0, &rs);
            a.lost = loss_bytes;
            a.rtt = Some(round_time);
            a.srtt = Some(round_time);
            a.total_delivered = self.delivered;
            a.prior_in_flight = offered as usize;
            // What is still queued at the bottleneck is still in flight.
            a.in_flight = self.queue as usize;
            bbr.on_ack(&a);
            (delivered, qdelay)
        }
    }

    fn path(bw: u64, rtt_ms: u64) -> Path {
        Path {
            bw,
            rtt: Duration::from_millis(rtt_ms),
            queue: 0,
            now: Instant::from_millis(0),
            delivered: 0,
        }
    }

    #[test]
    fn startup_finds_the_bandwidth_then_cruises() {
        let mut bbr = Bbr::new();
        bbr.set_mss(MSS);
        let mut p = path(10_000_000, 20); // 80 Mbit/s, 20 ms
        let mut modes = Vec::new();
        for _ in 0..40 {
            p.round(&mut bbr, 0);
            if modes.last() != Some(&bbr.mode()) {
                modes.push(bbr.mode());
            }
        }
        assert_eq!(modes[0], Mode::Startup);
        // DRAIN may pass within one ACK when the queue STARTUP built is
        // small (its exit on a growing RTT comes early).
        assert!(modes.len() <= 3, "{modes:?}");
        assert_eq!(bbr.mode(), Mode::ProbeBw);
        let bw = bbr.bandwidth();
        assert!((9_000_000..=10_500_000).contains(&bw), "{bw}");
        // Two BDPs of window (2 x 200 kB) plus three quanta of ~12 kB.
        assert!(
            (400_000..=460_000).contains(&bbr.window()),
            "{}",
            bbr.window()
        );
    }

    #[test]
    fn random_loss_does_not_collapse_the_rate() {
        let mut bbr = Bbr::new();
        bbr.set_mss(MSS);
        let mut p = path(10_000_000, 20);
        for _ in 0..30 {
            p.round(&mut bbr, 0);
        }
        let before = bbr.pacing_rate().unwrap();
        // 1 % of every round lost, for 100 rounds.
        let mut total = 0;
        for _ in 0..100 {
            let (d, _) = p.round(&mut bbr, 2 * MSS);
            total += d;
        }
        let rate = total * 1_000_000 / (100 * 20_000);
        assert!(rate > 8_000_000, "delivered {rate} B/s");
        assert!(bbr.pacing_rate().unwrap() > before / 2);
    }

    #[test]
    fn a_deep_queue_stays_short() {
        let mut bbr = Bbr::new();
        bbr.set_mss(MSS);
        let mut p = path(6_250_000, 20); // 50 Mbit/s
        let mut worst = Duration::ZERO;
        for i in 0..200 {
            let (_, q) = p.round(&mut bbr, 0);
            if i > 30 {
                worst = worst.max(q);
            }
        }
        assert!(worst < Duration::from_millis(20), "{worst}");
    }

    #[test]
    fn probe_rtt_after_ten_seconds_without_a_new_minimum() {
        let mut bbr = Bbr::new();
        bbr.set_mss(MSS);
        let mut p = path(1_000_000, 100);
        let mut seen = false;
        for _ in 0..150 {
            p.round(&mut bbr, 0);
            if bbr.mode() == Mode::ProbeRtt {
                seen = true;
                assert!(bbr.window() <= MIN_CWND_SEGMENTS * MSS);
            }
        }
        assert!(seen, "entered PROBE_RTT within 15 s");
        assert_ne!(bbr.mode(), Mode::ProbeRtt, "and left it");
    }

    #[test]
    fn recovery_conserves_then_restores() {
        let mut bbr = Bbr::new();
        bbr.set_mss(MSS);
        let mut p = path(10_000_000, 20);
        for _ in 0..30 {
            p.round(&mut bbr, 0);
        }
        let before = bbr.window();
        bbr.on_recovery_start(p.now, 50 * MSS);
        assert_eq!(bbr.window(), 51 * MSS);
        bbr.on_recovery_end(p.now);
        assert_eq!(bbr.window(), before);
        bbr.on_rto(p.now, 100 * MSS);
        assert_eq!(bbr.window(), MSS);
        bbr.on_recovery_end(p.now);
        assert_eq!(bbr.window(), before);
    }

    #[test]
    fn max_filter_ages_out() {
        let mut f = MaxFilter::default();
        f.update(0, 100, 10);
        for r in 1..=10 {
            f.update(r, 50, 10);
        }
        assert_eq!(f.get(), 100);
        for r in 11..=25 {
            f.update(r, 50, 10);
        }
        assert_eq!(f.get(), 50);
        f.update(26, 70, 10);
        assert_eq!(f.get(), 70);
    }

    #[test]
    fn zero_delivery_acks_are_harmless() {
        let mut bbr = Bbr::new();
        bbr.set_mss(MSS);
        let rs = RateSample::default();
        let w = bbr.window();
        for i in 0..100 {
            bbr.on_ack(&test_ack(Instant::from_millis(i), 0, 0, &rs));
        }
        assert!(bbr.window() >= w);
        assert_eq!(bbr.mode(), Mode::Startup);
    }
}
