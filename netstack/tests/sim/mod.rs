//! A deterministic, virtual-time simulation of one TCP stream through the
//! tunnel, for finding out how the user-space TCP behaves on Internet paths
//! without a network, a kernel or a wall clock.
//!
//! Two real [`Stack`]s, configured as the product configures them: the
//! *sender* is the gateway's stack (it listens and accepts, then sends the
//! film), the *receiver* is the client shim's stack (it connects, then
//! reads everything at once, as a player's local socket would). Between
//! them a [`Path`] per direction emulates what the Internet does to the
//! tunnel's datagrams: one-way delay, jitter, random and bursty
//! (Gilbert-Elliott) loss, reordering, and a bottleneck link with a rate
//! and a bounded drop-tail queue.
//!
//! Time is virtual: the loop jumps to the next event (a datagram arriving,
//! or the instant an endpoint asked to be woken through
//! [`Stack::poll_delay`]), never sleeps, and draws every random number from
//! one seeded generator, so a scenario gives the same [`Report`] on every
//! run and on every machine. Each wake-up of an endpoint does what the data
//! paths do (`gateway/src/datapath.rs`, `client-shim/src/datapath.rs`):
//! take up to a batch of arrived datagrams, `poll_ingress`, move
//! application bytes, `poll_egress`, drain the outbound queue onto the
//! path. Timer wake-ups are rounded up to a granularity (1 ms by default:
//! mio's epoll timeout has millisecond resolution), so pacing is tested
//! against the sleeps the real loops can take.
//!
//! Used by `tests/lossy.rs` (assertions on deterministic figures) and
//! `examples/lossy_path.rs` (the before/after table in
//! docs/architecture.md).
#![allow(dead_code)]

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use hushgate_netstack::smoltcp::socket::tcp::{State, TcpInfo};
use hushgate_netstack::{ConnId, Stack, StackConfig};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub const GATEWAY_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(100, 64, 0, 1));
pub const CLIENT_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(100, 64, 0, 2));
pub const PORT: u16 = 32400;

/// Bytes WireGuard and the outer UDP/IPv4 headers add to each inner
/// packet (20 IPv4 + 8 UDP + 16 WireGuard header + 16 tag): what a
/// bottleneck link carries is the outer datagram.
pub const TUNNEL_OVERHEAD: usize = 60;

/// Bursty loss: a two-state Markov chain per packet (Gilbert-Elliott).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GilbertElliott {
    /// Probability of moving from the good to the bad state, per packet.
    pub good_to_bad: f64,
    /// Probability of moving from the bad to the good state, per packet.
    pub bad_to_good: f64,
    /// Loss probability in the bad state.
    pub loss_bad: f64,
    /// Loss probability in the good state.
    pub loss_good: f64,
}

impl GilbertElliott {
    /// Mean loss rate `loss` in bursts of `mean_burst` packets on average
    /// (every packet of a burst lost).
    pub fn bursts(loss: f64, mean_burst: f64) -> Self {
        let bad_to_good = 1.0 / mean_burst;
        // Stationary share of the bad state = loss.
        let good_to_bad = loss * bad_to_good / (1.0 - loss);
        GilbertElliott {
            good_to_bad,
            bad_to_good,
            loss_bad: 1.0,
            loss_good: 0.0,
        }
    }
}

/// One direction of the emulated Internet path.
#[derive(Debug, Clone, PartialEq)]
pub struct Path {
    /// One-way propagation delay.
    pub delay: Duration,
    /// Extra delay drawn uniformly from `0..=jitter` for every packet.
    pub jitter: Duration,
    /// With jitter, let a packet overtake an earlier one (as netem does);
    /// otherwise delivery stays in order (jitter only delays).
    pub jitter_reorders: bool,
    /// Independent random loss probability per packet.
    pub loss: f64,
    /// Bursty loss on top of `loss`.
    pub bursts: Option<GilbertElliott>,
    /// Probability that a packet is held back by `reorder_delay`.
    pub reorder: f64,
    pub reorder_delay: Duration,
    /// Bottleneck rate, bits per second of outer datagrams; `None`: no
    /// serialisation at all (only sensible with some delay).
    pub rate: Option<u64>,
    /// Bottleneck queue limit, bytes of outer datagrams (drop-tail).
    pub queue: usize,
    /// Datagrams to drop by their position on this path (0 = the first
    /// sent), on top of any random loss: a loss exactly where a test wants
    /// it.
    pub drop: Vec<u64>,
}

impl Path {
    /// A clean path with only a propagation delay and a 1 Gbit/s link
    /// whose queue holds one bandwidth-delay product (at least 256 KiB).
    pub fn clean(delay: Duration) -> Path {
        let rate = 1_000_000_000u64;
        let bdp = (rate as f64 / 8.0 * (2.0 * delay.as_secs_f64())) as usize;
        Path {
            delay,
            jitter: Duration::ZERO,
            jitter_reorders: false,
            loss: 0.0,
            bursts: None,
            reorder: 0.0,
            reorder_delay: Duration::ZERO,
            rate: Some(rate),
            queue: bdp.max(256 << 10),
            drop: Vec::new(),
        }
    }
}

/// Everything one simulated run depends on.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Gateway -> client: the data direction.
    pub forward: Path,
    /// Client -> gateway: the ACK direction.
    pub reverse: Path,
    /// Virtual time to run after the connection is established.
    pub duration: Duration,
    /// Stop early once this many bytes have arrived (`None`: run for
    /// `duration`).
    pub bytes: Option<u64>,
    pub seed: u64,
    /// Timer wake-ups are rounded up to a multiple of this (mio: 1 ms).
    pub timer_granularity: Duration,
    /// Datagrams taken per wake-up (the gateway reads up to 1024, the
    /// shim 64, before running its stack).
    pub sender_batch: usize,
    pub receiver_batch: usize,
    /// How long an endpoint takes to notice arrived datagrams (a busy loop,
    /// interrupt coalescing, GRO): with a non-zero value, datagrams that
    /// arrive close together are handled in one wake-up, as on a loaded
    /// machine. Zero (the default): every arrival wakes the endpoint.
    pub sender_coalesce: Duration,
    pub receiver_coalesce: Duration,
    /// The gateway's stack (the sender).
    pub sender: StackConfig,
    /// The client shim's stack (the receiver).
    pub receiver: StackConfig,
    /// Period of the time series in [`Report::samples`].
    pub sample_every: Duration,
    /// A gap without new bytes for the player longer than this is a stall
    /// (default: two round trips plus 100 ms, longer than any fast
    /// recovery takes to fill a hole).
    pub stall_threshold: Duration,
    /// Steady-state figures ([`Report::steady_mbps`], the queueing delays
    /// in [`PathStats`]) count from this long after establishment, so the
    /// start-up's overshoot is not mistaken for a standing queue. Default
    /// 2 s.
    pub warmup: Duration,
}

impl Scenario {
    /// A path of round trip `rtt` (`0` means 100 us) with independent
    /// random loss `loss` (0.01 = 1 %) in both directions over a 1 Gbit/s
    /// link (see [`Path::clean`]), 10 virtual seconds.
    pub fn internet(rtt: Duration, loss: f64) -> Scenario {
        let one_way = (rtt / 2).max(Duration::from_micros(50));
        let mut forward = Path::clean(one_way);
        forward.loss = loss;
        let reverse = forward.clone();
        Scenario {
            forward,
            reverse,
            duration: Duration::from_secs(10),
            bytes: None,
            seed: 1,
            timer_granularity: Duration::from_millis(1),
            sender_batch: 1024,
            receiver_batch: 64,
            sender_coalesce: Duration::ZERO,
            receiver_coalesce: Duration::ZERO,
            sender: StackConfig::new(GATEWAY_IP),
            receiver: StackConfig::new(CLIENT_IP),
            sample_every: Duration::from_millis(100),
            stall_threshold: 2 * (2 * one_way) + Duration::from_millis(100),
            warmup: Duration::from_secs(2),
        }
    }

    /// A bottleneck of `rate` bits/s with a queue of `queue` bytes in the
    /// data direction, round trip `rtt`, no random loss.
    pub fn bottleneck(rtt: Duration, rate: u64, queue: usize) -> Scenario {
        let mut s = Scenario::internet(rtt, 0.0);
        s.forward.rate = Some(rate);
        s.forward.queue = queue;
        s
    }

    /// Round-trip propagation delay.
    pub fn rtt(&self) -> Duration {
        self.forward.delay + self.reverse.delay
    }
}

/// Counters of one direction of the path.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PathStats {
    /// Datagrams offered to the path.
    pub sent: u64,
    pub lost_random: u64,
    pub lost_burst: u64,
    /// Dropped by the full bottleneck queue.
    pub lost_queue: u64,
    pub reordered: u64,
    pub delivered: u64,
    /// Dropped because the scenario said so ([`Path::drop`]).
    pub lost_chosen: u64,
    /// Time each datagram sent after the warm-up waited in the bottleneck
    /// queue, us.
    pub queue_delays_us: Vec<u32>,
}

impl PathStats {
    /// The `p`-th percentile (0-100) of the queueing delay.
    pub fn queue_delay(&self, p: f64) -> Duration {
        if self.queue_delays_us.is_empty() {
            return Duration::ZERO;
        }
        let mut v = self.queue_delays_us.clone();
        v.sort_unstable();
        let i = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
        Duration::from_micros(u64::from(v[i]))
    }

    pub fn mean_queue_delay(&self) -> Duration {
        if self.queue_delays_us.is_empty() {
            return Duration::ZERO;
        }
        let sum: u64 = self.queue_delays_us.iter().map(|&d| u64::from(d)).sum();
        Duration::from_micros(sum / self.queue_delays_us.len() as u64)
    }
}

/// One point of the sender's time series.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Since the connection was established.
    pub t: Duration,
    /// Bytes the player has received so far.
    pub delivered: u64,
    pub cwnd: usize,
    pub pacing_rate: u64,
    pub delivery_rate: u64,
    pub srtt: Duration,
    pub min_rtt: Duration,
    pub bytes_in_flight: usize,
    /// Bytes in the data direction's bottleneck queue.
    pub queue: usize,
    pub retrans_segs: u64,
    pub rto_events: u64,
}

/// What a run measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// Bytes that reached the player, in order and verified.
    pub bytes: u64,
    /// From establishment to the end of the run.
    pub elapsed: Duration,
    /// Bytes that reached the player after the warm-up, and over how long.
    pub steady_bytes: u64,
    pub steady_elapsed: Duration,
    /// The sender's (gateway's) socket at the end.
    pub sender: TcpInfo,
    /// The receiver's (shim's) socket at the end.
    pub receiver: TcpInfo,
    pub forward: PathStats,
    pub reverse: PathStats,
    /// Data segments seen on the wire again (sequence below the highest
    /// sent): the path's view of retransmissions.
    pub wire_retransmissions: u64,
    /// Gaps longer than the stall threshold without new bytes for the
    /// player: how many, how long in all, the longest.
    pub stalls: u32,
    pub stalled: Duration,
    pub longest_stall: Duration,
    pub samples: Vec<Sample>,
    /// Wake-ups of the sender and of the receiver.
    pub wakeups: (u64, u64),
    /// Wake-ups at the same instant as the previous one of that endpoint
    /// that moved nothing (a loop that would spin).
    pub idle_wakeups: u64,
    /// Time to establish the connection.
    pub handshake: Duration,
}

impl Report {
    /// Goodput seen by the player, Mbit/s.
    pub fn goodput_mbps(&self) -> f64 {
        if self.elapsed.is_zero() {
            return 0.0;
        }
        self.bytes as f64 * 8.0 / self.elapsed.as_secs_f64() / 1e6
    }

    /// Goodput after the warm-up, Mbit/s.
    pub fn steady_mbps(&self) -> f64 {
        if self.steady_elapsed.is_zero() {
            return 0.0;
        }
        self.steady_bytes as f64 * 8.0 / self.steady_elapsed.as_secs_f64() / 1e6
    }
}

/// A datagram on its way.
#[derive(Debug)]
struct Flight {
    at: Instant,
    /// Tie-breaker: equal arrival times keep send order.
    seq: u64,
    pkt: Vec<u8>,
}

impl PartialEq for Flight {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Flight {}
impl PartialOrd for Flight {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Flight {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

/// One direction: the bottleneck queue is modelled by the time its link
/// is busy until, so it costs nothing per queued packet.
struct Link {
    cfg: Path,
    /// Record queueing delays from this instant on.
    measure_from: Option<Instant>,
    bad: bool,
    busy_until: Instant,
    last_delivery: Instant,
    next_seq: u64,
    in_flight: BinaryHeap<Reverse<Flight>>,
    stats: PathStats,
}

impl Link {
    fn new(cfg: Path, start: Instant) -> Link {
        Link {
            cfg,
            measure_from: None,
            bad: false,
            busy_until: start,
            last_delivery: start,
            next_seq: 0,
            in_flight: BinaryHeap::new(),
            stats: PathStats::default(),
        }
    }

    fn queued_bytes(&self, now: Instant) -> usize {
        match self.cfg.rate {
            Some(rate) if self.busy_until > now => {
                ((self.busy_until - now).as_secs_f64() * rate as f64 / 8.0) as usize
            }
            _ => 0,
        }
    }

    /// Offers `pkt` (an inner IP packet) to the path at `now`. Returns the
    /// buffer back when the path drops it.
    fn send(&mut self, now: Instant, pkt: Vec<u8>, rng: &mut StdRng) -> Option<Vec<u8>> {
        let position = self.stats.sent;
        self.stats.sent += 1;
        if self.cfg.drop.contains(&position) {
            self.stats.lost_chosen += 1;
            return Some(pkt);
        }
        if let Some(ge) = self.cfg.bursts {
            self.bad = if self.bad {
                !rng.gen_bool(ge.bad_to_good)
            } else {
                rng.gen_bool(ge.good_to_bad)
            };
            let p = if self.bad { ge.loss_bad } else { ge.loss_good };
            if p > 0.0 && rng.gen_bool(p.min(1.0)) {
                self.stats.lost_burst += 1;
                return Some(pkt);
            }
        }
        if self.cfg.loss > 0.0 && rng.gen_bool(self.cfg.loss.min(1.0)) {
            self.stats.lost_random += 1;
            return Some(pkt);
        }
        let wire = pkt.len() + TUNNEL_OVERHEAD;
        let mut depart = now;
        let mut waited = Duration::ZERO;
        if let Some(rate) = self.cfg.rate {
            if self.queued_bytes(now) + wire > self.cfg.queue {
                self.stats.lost_queue += 1;
                return Some(pkt);
            }
            let start = self.busy_until.max(now);
            waited = start - now;
            let tx = Duration::from_nanos((wire as u64 * 8 * 1_000_000_000) / rate);
            depart = start + tx;
            self.busy_until = depart;
        }
        let mut at = depart + self.cfg.delay;
        if !self.cfg.jitter.is_zero() {
            let j = rng.gen_range(0..=self.cfg.jitter.as_nanos() as u64);
            at += Duration::from_nanos(j);
            if !self.cfg.jitter_reorders {
                at = at.max(self.last_delivery);
            }
        }
        if self.cfg.reorder > 0.0 && rng.gen_bool(self.cfg.reorder) {
            at += self.cfg.reorder_delay;
            self.stats.reordered += 1;
        } else {
            self.last_delivery = self.last_delivery.max(at);
        }
        if self.measure_from.is_some_and(|t| now >= t) {
            self.stats
                .queue_delays_us
                .push(u32::try_from(waited.as_micros()).unwrap_or(u32::MAX));
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.in_flight.push(Reverse(Flight { at, seq, pkt }));
        None
    }

    fn next_arrival(&self) -> Option<Instant> {
        self.in_flight.peek().map(|f| f.0.at)
    }

    /// When the receiving endpoint notices the next arrival.
    fn next_notice(&self, coalesce: Duration) -> Option<Instant> {
        self.next_arrival().map(|t| t + coalesce)
    }

    fn pop_arrived(&mut self, now: Instant) -> Option<Vec<u8>> {
        if self.next_arrival()? > now {
            return None;
        }
        self.stats.delivered += 1;
        self.in_flight.pop().map(|f| f.0.pkt)
    }
}

/// One side: its stack, its connection and when it wants to run next.
struct Endpoint {
    stack: Stack,
    conn: Option<ConnId>,
    wake: Option<Instant>,
    batch: usize,
    wakeups: u64,
}

/// The simulated film repeats a block of this many bytes (a prime, so it
/// never lines up with segment or buffer sizes).
const FILM_BLOCK: usize = 65_521;

/// One block of the film: position-dependent bytes, so a lost, duplicated
/// or misplaced byte is caught where it happens (unless misplaced by a
/// multiple of the block). Copied and compared with memcpy/memcmp, so the
/// check costs little next to the stacks.
fn film_block() -> Vec<u8> {
    (0..FILM_BLOCK as u64)
        .map(|i| (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8 ^ (i as u8))
        .collect()
}

/// Copies the film from byte `offset` into `buf`.
fn film_fill(block: &[u8], offset: u64, buf: &mut [u8]) {
    let mut done = 0;
    while done < buf.len() {
        let at = ((offset + done as u64) % FILM_BLOCK as u64) as usize;
        let n = (FILM_BLOCK - at).min(buf.len() - done);
        buf[done..done + n].copy_from_slice(&block[at..at + n]);
        done += n;
    }
}

/// Panics if `buf` is not the film from byte `offset`.
fn film_check(block: &[u8], offset: u64, buf: &[u8]) {
    let mut done = 0;
    while done < buf.len() {
        let at = ((offset + done as u64) % FILM_BLOCK as u64) as usize;
        let n = (FILM_BLOCK - at).min(buf.len() - done);
        assert!(
            buf[done..done + n] == block[at..at + n],
            "the film differs in bytes {}..{}",
            offset + done as u64,
            offset + (done + n) as u64
        );
        done += n;
    }
}

fn round_up(d: Duration, granularity: Duration) -> Duration {
    if granularity.is_zero() || d.is_zero() {
        return d;
    }
    let g = granularity.as_nanos();
    Duration::from_nanos((d.as_nanos().div_ceil(g) * g) as u64)
}

/// TCP sequence number and payload length of an inner IPv4 TCP segment.
fn tcp_seq(pkt: &[u8]) -> Option<(u32, usize)> {
    let ihl = usize::from(*pkt.first()? & 0x0f) * 4;
    let tcp = pkt.get(ihl..)?;
    let doff = usize::from(*tcp.get(12)? >> 4) * 4;
    let seq = u32::from_be_bytes(tcp.get(4..8)?.try_into().ok()?);
    Some((seq, tcp.len().saturating_sub(doff)))
}

/// Runs `s` and reports what happened. Deterministic: the same scenario
/// gives the same report.
pub fn run(s: &Scenario) -> Report {
    let start = Instant::now();
    let mut rng = StdRng::seed_from_u64(s.seed);
    let mut sender = Endpoint {
        stack: Stack::new_at(s.sender.clone(), start),
        conn: None,
        wake: None,
        batch: s.sender_batch.max(1),
        wakeups: 0,
    };
    let mut receiver = Endpoint {
        stack: Stack::new_at(s.receiver.clone(), start),
        conn: None,
        wake: Some(start),
        batch: s.receiver_batch.max(1),
        wakeups: 0,
    };
    sender.stack.listen(PORT).expect("listen");
    receiver.conn = Some(
        receiver
            .stack
            .connect(SocketAddr::new(GATEWAY_IP, PORT))
            .expect("connect"),
    );
    let mut fwd = Link::new(s.forward.clone(), start);
    let mut rev = Link::new(s.reverse.clone(), start);

    let mut now = start;
    let mut established: Option<Instant> = None;
    let mut end = start + Duration::from_secs(60);
    let (mut sent, mut got) = (0u64, 0u64);
    let mut last_progress = start;
    let mut steady_from: Option<(Instant, u64)> = None;
    let (mut stalls, mut stalled, mut longest) = (0u32, Duration::ZERO, Duration::ZERO);
    let mut samples = Vec::new();
    let mut next_sample: Option<Instant> = None;
    let mut wire_max: Option<u32> = None;
    let mut wire_retrans = 0u64;
    let mut idle_wakeups = 0u64;
    let mut spins = 0u32;
    let mut spare: Vec<Vec<u8>> = Vec::new();
    let film = film_block();

    loop {
        // The next event: an endpoint's wake-up, a datagram arriving (the
        // receiving endpoint wakes then), or a sample.
        let next = [
            sender.wake,
            receiver.wake,
            fwd.next_notice(s.receiver_coalesce),
            rev.next_notice(s.sender_coalesce),
            next_sample,
        ]
        .into_iter()
        .flatten()
        .min();
        let Some(next) = next else {
            panic!("simulation stuck: nothing can happen any more");
        };
        if next >= end {
            now = end;
            break;
        }
        if next == now {
            spins += 1;
            assert!(spins < 1_000_000, "simulation spins at one instant");
        } else {
            spins = 0;
        }
        now = next;

        if next_sample.is_some_and(|t| t <= now) {
            let t0 = established.expect("sampling starts at establishment");
            let info = sender
                .conn
                .and_then(|c| sender.stack.socket(c))
                .map(|s| s.info())
                .unwrap_or_default();
            samples.push(Sample {
                t: now - t0,
                delivered: got,
                cwnd: info.cwnd,
                pacing_rate: info.pacing_rate,
                delivery_rate: info.delivery_rate,
                srtt: Duration::from_micros(info.srtt.total_micros()),
                min_rtt: Duration::from_micros(info.min_rtt.total_micros()),
                bytes_in_flight: info.bytes_in_flight,
                queue: fwd.queued_bytes(now),
                retrans_segs: info.retrans_segs,
                rto_events: info.rto_events,
            });
            next_sample = Some(now + s.sample_every);
        }

        // Receiver first, then sender: a fixed order keeps runs identical.
        for side in [Side::Receiver, Side::Sender] {
            let (ep, inbox, outbox, coalesce) = match side {
                Side::Receiver => (&mut receiver, &mut fwd, &mut rev, s.receiver_coalesce),
                Side::Sender => (&mut sender, &mut rev, &mut fwd, s.sender_coalesce),
            };
            let due = ep.wake.is_some_and(|t| t <= now)
                || inbox.next_notice(coalesce).is_some_and(|t| t <= now);
            if !due {
                continue;
            }
            ep.wakeups += 1;
            let mut moved = 0usize;
            for _ in 0..ep.batch {
                let Some(p) = inbox.pop_arrived(now) else {
                    break;
                };
                ep.stack.push_inbound(&p);
                spare.push(p);
                moved += 1;
            }
            ep.stack.poll_ingress(now);
            match side {
                Side::Sender => {
                    if ep.conn.is_none() {
                        ep.conn = ep.stack.accept();
                    }
                    if let Some(sock) = ep.conn.and_then(|c| ep.stack.socket_mut(c)) {
                        let limit = s.bytes.unwrap_or(u64::MAX);
                        while sent < limit && sock.can_send() {
                            let off = sent;
                            let n = sock
                                .send(|buf| {
                                    let n = buf.len().min((limit - off) as usize);
                                    film_fill(&film, off, &mut buf[..n]);
                                    (n, n)
                                })
                                .unwrap_or(0);
                            if n == 0 {
                                break;
                            }
                            sent += n as u64;
                            moved += n;
                        }
                    }
                }
                Side::Receiver => {
                    let sock = ep
                        .conn
                        .and_then(|c| ep.stack.socket_mut(c))
                        .expect("the receiver's connection lives");
                    if established.is_none() && sock.state() == State::Established {
                        established = Some(now);
                        last_progress = now;
                        end = now + s.duration;
                        next_sample = Some(now);
                        // On the receiver's side: inbox is the data
                        // direction, outbox the ACK direction.
                        inbox.measure_from = Some(now + s.warmup);
                        outbox.measure_from = Some(now + s.warmup);
                    }
                    if steady_from.is_none() && established.is_some_and(|t| now >= t + s.warmup) {
                        steady_from = Some((now, got));
                    }
                    let before = got;
                    while sock.recv_queue() > 0 {
                        let off = got;
                        let n = sock
                            .recv(|buf| {
                                film_check(&film, off, buf);
                                (buf.len(), buf.len())
                            })
                            .expect("recv");
                        got += n as u64;
                    }
                    if got > before {
                        let gap = now - last_progress;
                        if gap > s.stall_threshold {
                            stalls += 1;
                            stalled += gap;
                        }
                        longest = longest.max(gap);
                        last_progress = now;
                        moved += (got - before) as usize;
                    }
                }
            }
            ep.stack.poll_egress(now);
            while let Some(p) = ep.stack.pop_outbound() {
                moved += 1;
                if side == Side::Sender {
                    if let Some((seq, len)) = tcp_seq(&p) {
                        if len > 0 {
                            let end_seq = seq.wrapping_add(len as u32);
                            match wire_max {
                                Some(m) if (seq.wrapping_sub(m) as i32) < 0 => {
                                    wire_retrans += 1;
                                    if (end_seq.wrapping_sub(m) as i32) > 0 {
                                        wire_max = Some(end_seq);
                                    }
                                }
                                _ => wire_max = Some(end_seq),
                            }
                        }
                    }
                }
                let mut buf = spare.pop().unwrap_or_default();
                buf.clear();
                buf.extend_from_slice(&p);
                ep.stack.recycle(p);
                if let Some(b) = outbox.send(now, buf, &mut rng) {
                    spare.push(b);
                }
            }
            if moved == 0 && ep.wake == Some(now) {
                idle_wakeups += 1;
            }
            ep.wake = if inbox.next_arrival().is_some_and(|t| t <= now) {
                // Budget spent with datagrams left: come back at once.
                Some(now)
            } else {
                ep.stack
                    .poll_delay(now)
                    .map(|d| now + round_up(d, s.timer_granularity))
            };
        }
        if let (Some(limit), true) = (s.bytes, established.is_some()) {
            if got >= limit {
                break;
            }
        }
    }

    let t0 = established.expect("the connection was never established");
    let gap = now - last_progress;
    if gap > s.stall_threshold {
        stalls += 1;
        stalled += gap;
    }
    longest = longest.max(gap);
    let info = |ep: &Endpoint| {
        ep.conn
            .and_then(|c| ep.stack.socket(c))
            .map(|s| s.info())
            .unwrap_or_default()
    };
    let (steady_bytes, steady_elapsed) = match steady_from {
        Some((t, b)) => (got - b, now - t),
        None => (0, Duration::ZERO),
    };
    Report {
        bytes: got,
        elapsed: now - t0,
        steady_bytes,
        steady_elapsed,
        sender: info(&sender),
        receiver: info(&receiver),
        forward: fwd.stats,
        reverse: rev.stats,
        wire_retransmissions: wire_retrans,
        stalls,
        stalled,
        longest_stall: longest,
        samples,
        wakeups: (sender.wakeups, receiver.wakeups),
        idle_wakeups,
        handshake: t0 - start,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Sender,
    Receiver,
}
