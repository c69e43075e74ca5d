//! One direction of the emulated path as a plain state machine: packets
//! are offered with the time they arrived, and come out of `pop_due` when
//! their time has come. No clock, no IO: time is passed in, randomness
//! comes from a seeded generator, so tests drive it in virtual time and a
//! seed repeats the same fates for the same packet sequence.
//!
//! A packet meets, in order:
//! 1. loss (random or Gilbert-Elliott), decided on arrival, so a lost
//!    packet takes no room in the queue (like a lossy last hop);
//! 2. the bottleneck: a FIFO served at `rate`; the packet waits until the
//!    link has sent everything before it, then takes its own serialization
//!    time; when the unsent backlog plus this packet would exceed the
//!    queue limit it is dropped at the tail, as by a router;
//! 3. the propagation delay plus jitter; order is kept (delivery never
//!    earlier than the previous packet's) unless the packet is picked for
//!    reordering, in which case it is held `gap` longer and later packets
//!    pass it.
//!
//! The model computes every departure time on arrival (a virtual-finish-time
//! queue), so the backlog is `(busy_until - now) x rate`, exact, with no
//! separate queue to walk.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, VecDeque};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;
use serde::Serialize;

use crate::spec::{LinkSpec, Loss};

/// Why a packet did not get through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropCause {
    /// Random or Gilbert-Elliott loss.
    Lost,
    /// The bottleneck's queue was full.
    QueueFull,
}

/// Counters since the start or the last reset.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct LinkCounters {
    pub packets_in: u64,
    pub bytes_in: u64,
    pub packets_out: u64,
    pub bytes_out: u64,
    pub lost: u64,
    pub queue_drops: u64,
    pub reordered: u64,
    /// Largest unsent backlog at the bottleneck seen on an arrival, bytes.
    pub max_backlog_bytes: u64,
}

/// Time packets waited in the bottleneck's queue before their own
/// serialization began (the added queueing delay), microseconds.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct QueueWait {
    pub samples: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

struct Late<T> {
    at: Instant,
    seq: u64,
    item: T,
}
impl<T> PartialEq for Late<T> {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl<T> Eq for Late<T> {}
impl<T> PartialOrd for Late<T> {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl<T> Ord for Late<T> {
    fn cmp(&self, o: &Self) -> Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

/// One direction of the path; `T` is whatever the driver keeps per packet
/// (its buffer).
pub struct Link<T> {
    spec: LinkSpec,
    queue_limit: Option<u64>,
    rng: Pcg64Mcg,
    /// Gilbert-Elliott: in the bad state.
    bad: bool,
    /// When the bottleneck has sent everything offered so far.
    busy_until: Option<Instant>,
    /// Delivery time of the last in-order packet (order is kept).
    last_delivery: Option<Instant>,
    /// In-order packets, delivery times non-decreasing.
    line: VecDeque<(Instant, u32, T)>,
    /// Reordered packets, by delivery time.
    late: BinaryHeap<Reverse<Late<(u32, T)>>>,
    seq: u64,
    counters: LinkCounters,
    wait_us: Histogram<u64>,
}

impl<T> std::fmt::Debug for Link<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("spec", &self.spec)
            .field("in_flight", &self.in_flight())
            .field("counters", &self.counters)
            .finish()
    }
}

impl<T> Link<T> {
    pub fn new(spec: LinkSpec, seed: u64) -> Self {
        Link {
            queue_limit: spec.queue_bytes(),
            spec,
            rng: Pcg64Mcg::seed_from_u64(seed),
            bad: false,
            busy_until: None,
            last_delivery: None,
            line: VecDeque::new(),
            late: BinaryHeap::new(),
            seq: 0,
            counters: LinkCounters::default(),
            // 1 us to 100 s at 3 significant digits; recording never allocates.
            wait_us: Histogram::new_with_bounds(1, 100_000_000, 3).expect("valid histogram bounds"),
        }
    }

    pub fn spec(&self) -> &LinkSpec {
        &self.spec
    }

    /// Offers a packet of `len` bytes that arrived at `now`. On a drop the
    /// item comes back with the cause.
    pub fn offer(&mut self, now: Instant, len: usize, item: T) -> Result<(), (T, DropCause)> {
        self.counters.packets_in += 1;
        self.counters.bytes_in += len as u64;
        if self.lose() {
            self.counters.lost += 1;
            return Err((item, DropCause::Lost));
        }
        let departure = match self.spec.rate_bps {
            None => now,
            Some(rate) => {
                let start = self.busy_until.map_or(now, |b| b.max(now));
                let backlog = ((start - now).as_secs_f64() * rate as f64 / 8.0) as u64;
                self.counters.max_backlog_bytes = self.counters.max_backlog_bytes.max(backlog);
                if let Some(limit) = self.queue_limit {
                    if backlog + len as u64 > limit {
                        self.counters.queue_drops += 1;
                        return Err((item, DropCause::QueueFull));
                    }
                }
                let wait = (start - now).as_micros() as u64;
                self.wait_us.saturating_record(wait.max(1));
                let serialization = Duration::from_secs_f64(len as f64 * 8.0 / rate as f64);
                let done = start + serialization;
                self.busy_until = Some(done);
                done
            }
        };
        let mut at = departure + self.spec.delay;
        if !self.spec.jitter.is_zero() {
            let j = self.spec.jitter.as_secs_f64();
            let offset = self.rng.gen_range(-j..=j);
            at = if offset >= 0.0 {
                at + Duration::from_secs_f64(offset)
            } else {
                at.checked_sub(Duration::from_secs_f64(-offset))
                    .unwrap_or(departure)
                    .max(departure)
            };
        }
        let len32 = len as u32;
        if self.spec.reorder > 0.0 && self.rng.gen_bool(self.spec.reorder) {
            self.counters.reordered += 1;
            self.seq += 1;
            self.late.push(Reverse(Late {
                at: at + self.spec.reorder_gap,
                seq: self.seq,
                item: (len32, item),
            }));
            return Ok(());
        }
        if let Some(last) = self.last_delivery {
            at = at.max(last);
        }
        self.last_delivery = Some(at);
        self.line.push_back((at, len32, item));
        Ok(())
    }

    fn lose(&mut self) -> bool {
        match self.spec.loss {
            Loss::None => false,
            Loss::Random(p) => self.rng.gen_bool(p),
            Loss::GilbertElliott {
                good_to_bad,
                bad_to_good,
                loss_good,
                loss_bad,
            } => {
                let flip = if self.bad { bad_to_good } else { good_to_bad };
                if self.rng.gen_bool(flip) {
                    self.bad = !self.bad;
                }
                self.rng
                    .gen_bool(if self.bad { loss_bad } else { loss_good })
            }
        }
    }

    /// The next packet whose delivery time is at or before `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<T> {
        let line_at = self
            .line
            .front()
            .map(|(at, _, _)| *at)
            .filter(|at| *at <= now);
        let late_at = self
            .late
            .peek()
            .map(|Reverse(l)| l.at)
            .filter(|at| *at <= now);
        let (len, item) = match (line_at, late_at) {
            (Some(a), Some(b)) if b < a => self.late.pop().map(|Reverse(l)| l.item)?,
            (Some(_), _) => self.line.pop_front().map(|(_, len, item)| (len, item))?,
            (None, Some(_)) => self.late.pop().map(|Reverse(l)| l.item)?,
            (None, None) => return None,
        };
        self.counters.packets_out += 1;
        self.counters.bytes_out += u64::from(len);
        Some(item)
    }

    /// When the next packet is due, if any is in flight.
    pub fn next_due(&self) -> Option<Instant> {
        let a = self.line.front().map(|(at, _, _)| *at);
        let b = self.late.peek().map(|Reverse(l)| l.at);
        match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Packets held (queued or in propagation).
    pub fn in_flight(&self) -> usize {
        self.line.len() + self.late.len()
    }

    pub fn counters(&self) -> &LinkCounters {
        &self.counters
    }

    pub fn queue_wait(&self) -> QueueWait {
        let h = &self.wait_us;
        if h.is_empty() {
            return QueueWait::default();
        }
        QueueWait {
            samples: h.len(),
            mean_us: h.mean(),
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            max_us: h.max(),
        }
    }

    /// Starts the counters and the queue-wait histogram again (packets in
    /// flight are kept and still delivered).
    pub fn reset_counters(&mut self) {
        self.counters = LinkCounters::default();
        self.wait_us.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(spec: &str, seed: u64) -> Link<u64> {
        Link::new(LinkSpec::default().apply(spec).unwrap(), seed)
    }

    /// Offers `n` packets of `len` bytes every `every` from `t0`, draining
    /// as it goes; returns (id, delivery time) of what got through.
    fn run(
        l: &mut Link<u64>,
        t0: Instant,
        n: u64,
        len: usize,
        every: Duration,
    ) -> Vec<(u64, Instant)> {
        let mut out = Vec::new();
        let mut now = t0;
        for id in 0..n {
            now = t0 + every * id as u32;
            while let Some(due) = l.next_due().filter(|d| *d <= now) {
                out.push((l.pop_due(due).unwrap(), due));
            }
            let _ = l.offer(now, len, id);
        }
        while let Some(due) = l.next_due() {
            assert!(
                due >= now,
                "a packet was due before the last arrival and not taken"
            );
            out.push((l.pop_due(due).unwrap(), due));
            now = due;
        }
        assert_eq!(l.in_flight(), 0);
        out
    }

    #[test]
    fn perfect_wire_passes_everything_at_once() {
        let t0 = Instant::now();
        let mut l = link("", 1);
        l.offer(t0, 100, 7).unwrap();
        assert_eq!(l.next_due(), Some(t0));
        assert_eq!(l.pop_due(t0), Some(7));
        assert_eq!(l.pop_due(t0), None);
        assert_eq!(l.next_due(), None);
    }

    #[test]
    fn delay_is_exact_and_nothing_leaves_early() {
        let t0 = Instant::now();
        let mut l = link("delay=20ms", 1);
        l.offer(t0, 1000, 1).unwrap();
        l.offer(t0 + Duration::from_millis(5), 1000, 2).unwrap();
        assert_eq!(l.pop_due(t0 + Duration::from_millis(19)), None);
        assert_eq!(l.next_due(), Some(t0 + Duration::from_millis(20)));
        assert_eq!(l.pop_due(t0 + Duration::from_millis(20)), Some(1));
        assert_eq!(l.pop_due(t0 + Duration::from_millis(24)), None);
        assert_eq!(l.pop_due(t0 + Duration::from_millis(25)), Some(2));
    }

    #[test]
    fn jitter_varies_delay_within_bounds_and_keeps_order() {
        let t0 = Instant::now();
        // Packets far apart (10 ms > 2 x jitter): each delay anywhere in
        // delay +- jitter.
        let mut l = link("delay=10ms,jitter=3ms", 5);
        let every = Duration::from_millis(10);
        let out = run(&mut l, t0, 2000, 500, every);
        assert_eq!(out.len(), 2000);
        let delays: Vec<Duration> = out
            .iter()
            .map(|(id, at)| *at - (t0 + every * *id as u32))
            .collect();
        let lo = *delays.iter().min().unwrap();
        let hi = *delays.iter().max().unwrap();
        assert!(
            (Duration::from_millis(7)..Duration::from_micros(7100)).contains(&lo),
            "{lo:?}"
        );
        assert!(
            (Duration::from_micros(12900)..=Duration::from_millis(13)).contains(&hi),
            "{hi:?}"
        );
        // Packets close together: a FIFO link never reorders, so a packet
        // drawn early waits for the one before it.
        let mut l = link("delay=10ms,jitter=3ms", 5);
        let out = run(&mut l, t0, 2000, 500, Duration::from_micros(100));
        assert!(out.windows(2).all(|w| w[1].0 > w[0].0 && w[1].1 >= w[0].1));
    }

    #[test]
    fn random_loss_matches_the_share_and_repeats_with_the_seed() {
        let t0 = Instant::now();
        let fates = |seed| {
            let mut l = link("loss=1%", seed);
            let got: Vec<u64> = run(&mut l, t0, 100_000, 100, Duration::from_micros(10))
                .into_iter()
                .map(|(id, _)| id)
                .collect();
            (got, l.counters().lost)
        };
        let (a, lost) = fates(42);
        assert_eq!(a.len() as u64 + lost, 100_000);
        // 1,000 expected; the binomial's sd is ~31.
        assert!((850..1150).contains(&lost), "{lost}");
        assert_eq!(fates(42).0, a, "the same seed repeats the same losses");
        assert_ne!(fates(43).0, a, "another seed loses other packets");
    }

    /// Mean length of runs of consecutive lost packets.
    fn mean_burst(l: &mut Link<u64>, n: u64) -> (f64, f64) {
        let t0 = Instant::now();
        let mut lost = Vec::new();
        for id in 0..n {
            if l.offer(t0, 100, id).is_err() {
                lost.push(id);
            }
        }
        let mut bursts = 0;
        for (i, id) in lost.iter().enumerate() {
            if i == 0 || lost[i - 1] + 1 != *id {
                bursts += 1;
            }
        }
        (
            lost.len() as f64 / bursts as f64,
            lost.len() as f64 / n as f64,
        )
    }

    #[test]
    fn gilbert_loss_comes_in_bursts_with_the_asked_mean() {
        let (burst, share) = mean_burst(&mut link("loss=1%,burst=4", 9), 400_000);
        assert!((0.008..0.012).contains(&share), "{share}");
        assert!((3.5..4.5).contains(&burst), "{burst}");
        // Random loss of the same share: bursts of ~1.
        let (burst, _) = mean_burst(&mut link("loss=1%", 9), 400_000);
        assert!(burst < 1.1, "{burst}");
    }

    #[test]
    fn bottleneck_paces_at_the_rate_and_measures_the_wait() {
        let t0 = Instant::now();
        // 10 Mbit/s: a 1250-byte packet takes 1 ms. 100 packets at once.
        let mut l = link("rate=10mbit,queue=1mb", 1);
        for id in 0..100 {
            l.offer(t0, 1250, id).unwrap();
        }
        let mut last = t0;
        let mut n = 0;
        while let Some(due) = l.next_due() {
            assert_eq!(l.pop_due(due), Some(n));
            n += 1;
            last = due;
        }
        assert_eq!(n, 100);
        assert_eq!(last - t0, Duration::from_millis(100));
        let w = l.queue_wait();
        assert_eq!(w.samples, 100);
        // The k-th packet waited k ms; the last 99 ms.
        assert!((98_000..=99_100).contains(&w.max_us), "{w:?}");
        assert!((48_000..=50_100).contains(&w.p50_us), "{w:?}");
        assert_eq!(l.counters().max_backlog_bytes, 99 * 1250);
    }

    #[test]
    fn full_queue_drops_at_the_tail() {
        let t0 = Instant::now();
        // 10 Mbit/s with a 10 ms queue (12,500 bytes): of a burst, 10
        // packets of 1250 fit (the limit counts every unsent byte, the
        // packet on the wire included), the rest is dropped.
        let mut l = link("rate=10mbit,queue=10ms", 1);
        let mut kept = 0;
        let mut dropped = 0;
        for id in 0..30 {
            match l.offer(t0, 1250, id) {
                Ok(()) => kept += 1,
                Err((_, DropCause::QueueFull)) => dropped += 1,
                Err((_, c)) => panic!("{c:?}"),
            }
        }
        assert_eq!((kept, dropped), (10, 20));
        assert_eq!(l.counters().queue_drops, 20);
        // After the queue drained, packets are accepted again.
        assert!(l.offer(t0 + Duration::from_millis(11), 1250, 99).is_ok());
    }

    #[test]
    fn steady_overload_holds_the_rate_and_a_full_queue() {
        // 20 Mbit/s offered into 10 Mbit/s for 2 s: half is dropped, the
        // output is the rate, the wait settles at the queue's depth.
        let t0 = Instant::now();
        let mut l = link("rate=10mbit,queue=50ms", 3);
        let out = run(&mut l, t0, 4000, 1250, Duration::from_micros(500));
        let bytes = out.len() as f64 * 1250.0;
        let secs = (out.last().unwrap().1 - out[0].1).as_secs_f64();
        let mbps = bytes * 8.0 / secs / 1e6;
        assert!((9.9..10.1).contains(&mbps), "{mbps}");
        let w = l.queue_wait();
        assert!((48_000..=50_100).contains(&w.p90_us), "{w:?}");
        assert!(l.counters().queue_drops > 1900, "{:?}", l.counters());
    }

    #[test]
    fn reordered_packets_are_overtaken() {
        let t0 = Instant::now();
        let mut l = link("delay=5ms,reorder=10%,gap=2ms", 11);
        let out = run(&mut l, t0, 10_000, 100, Duration::from_micros(100));
        assert_eq!(out.len(), 10_000);
        let late = out.windows(2).filter(|w| w[1].0 < w[0].0).count();
        let reordered = l.counters().reordered;
        assert!((800..1200).contains(&reordered), "{reordered}");
        // Each held-back packet is passed by the ~20 sent in its 2 ms gap.
        assert!(late as u64 >= reordered * 9 / 10, "{late} {reordered}");
        // Without reordering, never.
        let mut l = link("delay=5ms", 11);
        let out = run(&mut l, t0, 1000, 100, Duration::from_micros(100));
        assert!(out.windows(2).all(|w| w[1].0 > w[0].0));
    }

    #[test]
    fn reset_starts_the_counters_again_and_keeps_packets() {
        let t0 = Instant::now();
        let mut l = link("delay=1ms,rate=1mbit", 1);
        l.offer(t0, 125, 1).unwrap();
        l.reset_counters();
        assert_eq!(l.counters(), &LinkCounters::default());
        assert_eq!(l.queue_wait().samples, 0);
        assert_eq!(l.in_flight(), 1);
        assert_eq!(l.pop_due(t0 + Duration::from_millis(2)), Some(1));
    }
}
