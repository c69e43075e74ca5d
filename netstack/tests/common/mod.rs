//! Helpers shared by the integration tests: a deterministic byte pattern
//! and two stacks wired back to back in memory.
#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use hushgate_netstack::smoltcp::socket::tcp;
use hushgate_netstack::{ConnId, Stack, StackConfig};

pub const CLIENT_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(100, 64, 0, 2));
pub const SERVER_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(100, 64, 0, 1));

/// Byte `i` of stream `seed`: position-dependent, so a dropped, duplicated
/// or reordered byte is caught where it happens.
pub fn pattern(seed: u64, i: u64) -> u8 {
    let x = (i ^ seed.rotate_left(29)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (x >> 56) as u8 ^ (i as u8)
}

pub fn fill(seed: u64, offset: u64, buf: &mut [u8]) {
    for (k, b) in buf.iter_mut().enumerate() {
        *b = pattern(seed, offset + k as u64);
    }
}

/// Panics at the first byte that differs from the pattern.
pub fn check(seed: u64, offset: u64, buf: &[u8]) {
    for (k, b) in buf.iter().enumerate() {
        let i = offset + k as u64;
        assert_eq!(*b, pattern(seed, i), "stream {seed:#x}: byte {i} differs");
    }
}

/// Writes the pattern into a smoltcp socket up to `total` bytes.
#[derive(Debug, Clone, Copy)]
pub struct Writer {
    pub seed: u64,
    pub sent: u64,
    pub total: u64,
}

impl Writer {
    pub fn new(seed: u64, total: u64) -> Self {
        Writer {
            seed,
            sent: 0,
            total,
        }
    }
    /// Returns bytes written.
    pub fn pump(&mut self, s: &mut tcp::Socket) -> usize {
        let mut moved = 0;
        while self.sent < self.total && s.can_send() {
            let left = self.total - self.sent;
            let (seed, off) = (self.seed, self.sent);
            let n = s
                .send(|buf| {
                    let n = buf.len().min(left as usize);
                    fill(seed, off, &mut buf[..n]);
                    (n, n)
                })
                .unwrap();
            if n == 0 {
                break;
            }
            self.sent += n as u64;
            moved += n;
        }
        moved
    }
    pub fn done(&self) -> bool {
        self.sent == self.total
    }
}

/// Reads and verifies the pattern from a smoltcp socket.
#[derive(Debug, Clone, Copy)]
pub struct Reader {
    pub seed: u64,
    pub got: u64,
}

impl Reader {
    pub fn new(seed: u64) -> Self {
        Reader { seed, got: 0 }
    }
    pub fn pump(&mut self, s: &mut tcp::Socket) -> usize {
        let mut moved = 0;
        while s.recv_queue() > 0 {
            let (seed, off) = (self.seed, self.got);
            let n = s
                .recv(|buf| {
                    check(seed, off, buf);
                    (buf.len(), buf.len())
                })
                .unwrap();
            self.got += n as u64;
            moved += n;
        }
        moved
    }
}

pub fn config(ip: IpAddr) -> StackConfig {
    let mut c = StackConfig::new(ip);
    // Smaller than production so many sockets stay cheap in tests, still
    // large enough to exercise window scaling.
    c.tcp_rx_buffer = 1 << 20;
    c.tcp_tx_buffer = 1 << 20;
    c
}

/// Two stacks, `client` and `server`, whose outbound packets are delivered
/// to each other in memory.
#[derive(Debug)]
pub struct Pair {
    pub client: Stack,
    pub server: Stack,
    /// Packets delivered client -> server and server -> client.
    pub delivered: (u64, u64),
}

impl Pair {
    pub fn new(client: StackConfig, server: StackConfig) -> Self {
        Pair {
            client: Stack::new(client),
            server: Stack::new(server),
            delivered: (0, 0),
        }
    }

    pub fn default_pair() -> Self {
        Pair::new(config(CLIENT_IP), config(SERVER_IP))
    }

    /// One round: ingress on both stacks, `app` (which moves data and
    /// says whether the test is done), egress on both, then delivery.
    /// Returns (packets moved, app progress, done).
    pub fn step(
        &mut self,
        app: &mut impl FnMut(&mut Stack, &mut Stack) -> (usize, bool),
    ) -> (bool, usize, bool) {
        let now = Instant::now();
        self.client.poll_ingress(now);
        self.server.poll_ingress(now);
        let (progress, done) = app(&mut self.client, &mut self.server);
        self.client.poll_egress(now);
        self.server.poll_egress(now);
        let (c, s) = (&mut self.client, &mut self.server);
        let a = c.drain_outbound(|p| {
            s.push_inbound(p);
        });
        let b = s.drain_outbound(|p| {
            c.push_inbound(p);
        });
        self.delivered.0 += a as u64;
        self.delivered.1 += b as u64;
        (a + b > 0, progress, done)
    }

    /// Steps until `app` reports done, sleeping only for the stacks' own
    /// poll delay when nothing moved. Panics on timeout, or if nothing can
    /// ever happen again (no packets, no timers, no progress).
    pub fn run(
        &mut self,
        limit: Duration,
        mut app: impl FnMut(&mut Stack, &mut Stack) -> (usize, bool),
    ) {
        drive(
            self,
            limit,
            |p| p.step(&mut app),
            |p, now| [p.client.poll_delay(now), p.server.poll_delay(now)],
        );
    }

    /// Runs without application traffic until both stacks are quiet.
    pub fn settle(&mut self) {
        for _ in 0..1000 {
            let (moved, _, _) = self.step(&mut |_, _| (0, false));
            if !moved {
                return;
            }
        }
        panic!("pair never settled");
    }
}

/// Steps `net` until `step` reports done (`step` returns packets moved,
/// app progress, done), sleeping only for the earliest of its stacks'
/// poll delays (`delays`) when nothing moved. Panics on timeout, or if
/// nothing can ever happen again (no packets, no timers, no progress).
pub fn drive<N, const K: usize>(
    net: &mut N,
    limit: Duration,
    mut step: impl FnMut(&mut N) -> (bool, usize, bool),
    mut delays: impl FnMut(&mut N, Instant) -> [Option<Duration>; K],
) {
    let deadline = Instant::now() + limit;
    loop {
        assert!(Instant::now() < deadline, "did not finish in {limit:?}");
        let (moved, progress, done) = step(net);
        if done {
            return;
        }
        if moved || progress > 0 {
            continue;
        }
        let now = Instant::now();
        match delays(net, now).into_iter().flatten().min() {
            Some(d) => std::thread::sleep(d.min(deadline.saturating_duration_since(now))),
            None => panic!("stuck: no packets, no timers, no progress"),
        }
    }
}

pub fn state(stack: &Stack, id: ConnId) -> tcp::State {
    stack.socket(id).map_or(tcp::State::Closed, |s| s.state())
}
