//! Per-peer limits: one peer that opens too many connections, floods SYNs
//! or grows its buffers as far as it can does not stop a second peer from
//! connecting and moving data, and the limits are counted.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use common::*;
use hushgate_netstack::smoltcp::socket::tcp::State;
use hushgate_netstack::{ConnId, PeerUsage, Stack, StackConfig};

const PORT: u16 = 32400;
const LIMIT: Duration = Duration::from_secs(60);
const PEER_A: IpAddr = CLIENT_IP;
const PEER_B: IpAddr = IpAddr::V4(Ipv4Addr::new(100, 64, 0, 3));

fn service() -> SocketAddr {
    SocketAddr::new(SERVER_IP, PORT)
}

/// A server stack and two client stacks (peers A and B), packets routed
/// in memory by destination address. `mute_a` drops what the server sends
/// to A (a flooder that never completes its handshakes).
struct Net {
    server: Stack,
    a: Stack,
    b: Stack,
    mute_a: bool,
}

impl Net {
    fn new(server: StackConfig) -> Net {
        let mut server = Stack::new(server);
        server.listen(PORT).unwrap();
        Net {
            server,
            a: Stack::new(config(PEER_A)),
            b: Stack::new(config(PEER_B)),
            mute_a: false,
        }
    }

    /// One round; returns whether any packet moved.
    fn step(&mut self, app: &mut impl FnMut(&mut Net) -> (usize, bool)) -> (bool, usize, bool) {
        let now = Instant::now();
        for s in [&mut self.server, &mut self.a, &mut self.b] {
            s.poll_ingress(now);
        }
        let (progress, done) = app(self);
        for s in [&mut self.server, &mut self.a, &mut self.b] {
            s.poll_egress(now);
        }
        let Net {
            server,
            a,
            b,
            mute_a,
        } = self;
        let mut moved = a.drain_outbound(|p| {
            server.push_inbound(p);
        });
        moved += b.drain_outbound(|p| {
            server.push_inbound(p);
        });
        moved += server.drain_outbound(|p| {
            // IPv4 destination: bytes 16..20.
            let dst = IpAddr::V4(Ipv4Addr::new(p[16], p[17], p[18], p[19]));
            if dst == PEER_A && !*mute_a {
                a.push_inbound(p);
            } else if dst == PEER_B {
                b.push_inbound(p);
            }
        });
        (moved > 0, progress, done)
    }

    /// Steps until `app` says done; sleeps only for the stacks' timers.
    fn run(&mut self, mut app: impl FnMut(&mut Net) -> (usize, bool)) {
        drive(
            self,
            LIMIT,
            |n| n.step(&mut app),
            |n, now| {
                [
                    n.server.poll_delay(now),
                    n.a.poll_delay(now),
                    n.b.poll_delay(now),
                ]
            },
        );
    }

    fn settle(&mut self) {
        for _ in 0..10_000 {
            if !self.step(&mut |_| (0, false)).0 {
                return;
            }
        }
        panic!("never settled");
    }
}

/// Server-side ids of every connection accepted so far.
fn accept_all(server: &mut Stack, into: &mut Vec<ConnId>) -> usize {
    let mut n = 0;
    while let Some(id) = server.accept() {
        into.push(id);
        n += 1;
    }
    n
}

/// Peer B connects, and `bytes` go each way on its connection, verified.
fn b_connects_and_transfers(net: &mut Net, bytes: u64) -> (ConnId, ConnId) {
    let c = net.b.connect(service()).unwrap();
    let mut s = None;
    net.run(|n| {
        let mut k = 0;
        while let Some(id) = n.server.accept() {
            if n.server.remote_endpoint(id).map(|e| e.ip()) == Some(PEER_B) {
                s = Some(id);
                k += 1;
            }
        }
        assert_ne!(state(&n.b, c), State::Closed, "B was refused");
        (k, s.is_some() && state(&n.b, c) == State::Established)
    });
    let s = s.unwrap();
    let (mut up_w, mut up_r) = (Writer::new(1, bytes), Reader::new(1));
    let (mut down_w, mut down_r) = (Writer::new(2, bytes), Reader::new(2));
    net.run(|n| {
        let moved = up_w.pump(n.b.socket_mut(c).unwrap())
            + up_r.pump(n.server.socket_mut(s).unwrap())
            + down_w.pump(n.server.socket_mut(s).unwrap())
            + down_r.pump(n.b.socket_mut(c).unwrap());
        (moved, up_r.got == bytes && down_r.got == bytes)
    });
    (c, s)
}

/// A SYN from `src`:`sport` to the service, with valid checksums.
fn syn(src: IpAddr, sport: u16) -> Vec<u8> {
    let (IpAddr::V4(s), IpAddr::V4(d)) = (src, SERVER_IP) else {
        unreachable!()
    };
    let mut p = vec![0u8; 40];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&40u16.to_be_bytes());
    p[8] = 64;
    p[9] = 6;
    p[12..16].copy_from_slice(&s.octets());
    p[16..20].copy_from_slice(&d.octets());
    p[20..22].copy_from_slice(&sport.to_be_bytes());
    p[22..24].copy_from_slice(&PORT.to_be_bytes());
    p[24..28].copy_from_slice(&(u32::from(sport) * 7919).to_be_bytes());
    p[32] = 0x50;
    p[33] = 0x02; // SYN
    p[34..36].copy_from_slice(&65535u16.to_be_bytes());
    let c = checksum(&p[..20], 0);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    let mut pseudo = 0u32;
    for w in [&s.octets()[..], &d.octets()[..]] {
        pseudo += u32::from(u16::from_be_bytes([w[0], w[1]]));
        pseudo += u32::from(u16::from_be_bytes([w[2], w[3]]));
    }
    pseudo += 6 + 20;
    let c = checksum(&p[20..], pseudo);
    p[36..38].copy_from_slice(&c.to_be_bytes());
    p
}

fn checksum(data: &[u8], mut sum: u32) -> u16 {
    for w in data.chunks(2) {
        sum += u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[test]
fn one_peer_cannot_hold_every_socket() {
    let mut cfg = config(SERVER_IP);
    cfg.max_sockets = 64;
    cfg.max_connections_per_peer = 16;
    let mut net = Net::new(cfg);
    // A asks for more connections than the whole stack has sockets.
    let a: Vec<ConnId> = (0..100)
        .map(|_| net.a.connect(service()).unwrap())
        .collect();
    let mut accepted = Vec::new();
    net.run(|n| {
        let k = accept_all(&mut n.server, &mut accepted);
        let settled = a
            .iter()
            .all(|c| matches!(state(&n.a, *c), State::Established | State::Closed));
        let open = a
            .iter()
            .filter(|c| state(&n.a, **c) == State::Established)
            .count();
        (k, settled && accepted.len() == open)
    });
    // B still gets in and moves data.
    let (_, s) = b_connects_and_transfers(&mut net, 256 << 10);
    assert_eq!(net.server.peer_usage(PEER_B).connections, 1);
    let open = a
        .iter()
        .filter(|c| state(&net.a, **c) == State::Established)
        .count();
    assert_eq!(
        open,
        16,
        "A got its limit; server {:?}, accepted {}, usage {:?}",
        net.server.stats(),
        accepted.len(),
        net.server.peer_usage(PEER_A)
    );
    assert_eq!(accepted.len(), 16);
    // The rest were refused at once with RST (their sockets are Closed,
    // not waiting out SYN retransmissions).
    assert_eq!(net.server.stats().syn_over_connection_limit, 84);
    assert_eq!(net.server.peer_usage(PEER_A).connections, 16);
    // When A lets one go (both sides close), A may connect again.
    let (c0, s0) = (a[0], accepted[0]);
    net.a.release(c0);
    net.server.release(s0);
    net.settle();
    assert_eq!(net.server.peer_usage(PEER_A).connections, 15);
    let again = net.a.connect(service()).unwrap();
    net.run(|n| {
        let k = accept_all(&mut n.server, &mut accepted);
        (
            k,
            state(&n.a, again) == State::Established && accepted.len() == 17,
        )
    });
    assert_eq!(net.server.peer_usage(PEER_A).connections, 16);
    // Everything released, nothing stays counted.
    for id in accepted.iter().skip(1).copied().chain([s]) {
        net.server.release(id);
    }
    for c in a.iter().skip(1).copied().chain([again]) {
        net.a.release(c);
    }
    net.settle();
    assert_eq!(net.server.peer_usage(PEER_A), PeerUsage::default());
    assert_eq!(net.server.peers().count(), 1, "only B's connection is left");
}

#[test]
fn a_syn_flood_from_one_peer_leaves_room_for_others() {
    let mut cfg = config(SERVER_IP);
    cfg.max_sockets = 64;
    cfg.max_pending_per_peer = 4;
    let mut net = Net::new(cfg);
    net.mute_a = true;
    // 500 SYNs that A never completes, in batches as a tunnel delivers them.
    for batch in 0..5u16 {
        for k in 0..100u16 {
            assert!(net
                .server
                .push_inbound(&syn(PEER_A, 20_000 + batch * 100 + k)));
        }
        net.step(&mut |_| (0, false));
    }
    let sockets = net.server.socket_count();
    b_connects_and_transfers(&mut net, 256 << 10);
    let u = net.server.peer_usage(PEER_A);
    assert_eq!((u.pending, u.connections), (4, 4));
    // Dropped, not answered with RST.
    assert_eq!(net.server.stats().syn_over_pending_limit, 496);
    assert_eq!(net.server.stats().syn_over_connection_limit, 0);
    assert!(sockets <= 4 + 8, "four handshakes and the pool: {sockets}");
}

#[test]
fn one_peer_cannot_take_the_whole_buffer_budget() {
    let mut cfg = config(SERVER_IP);
    // Small buffers that must grow to carry the streams at full speed.
    cfg.tcp_rx_buffer = 16 << 10;
    cfg.tcp_tx_buffer = 16 << 10;
    cfg.tcp_rx_buffer_max = 1 << 20;
    cfg.tcp_tx_buffer_max = 1 << 20;
    cfg.tcp_buffer_budget = 1 << 20;
    cfg.tcp_buffer_budget_per_peer = 256 << 10;
    let mut net = Net::new(cfg);
    // A's four connections push as much as they can both ways.
    let a: Vec<ConnId> = (0..4).map(|_| net.a.connect(service()).unwrap()).collect();
    let mut accepted = Vec::new();
    net.run(|n| {
        let k = accept_all(&mut n.server, &mut accepted);
        (k, accepted.len() == 4)
    });
    // In the order of A's connections.
    let ports: Vec<u16> = a
        .iter()
        .map(|c| net.a.local_endpoint(*c).unwrap().port())
        .collect();
    accepted.sort_by_key(|s| {
        let p = net.server.remote_endpoint(*s).unwrap().port();
        ports.iter().position(|q| *q == p)
    });
    let bytes = 16u64 << 20;
    let mut streams: Vec<_> = (0..4u64)
        .map(|i| {
            (
                Writer::new(10 + i, bytes),
                Reader::new(10 + i),
                Writer::new(20 + i, bytes),
                Reader::new(20 + i),
            )
        })
        .collect();
    net.run(|n| {
        let mut moved = 0;
        for (k, (uw, ur, dw, dr)) in streams.iter_mut().enumerate() {
            let (c, s) = (a[k], accepted[k]);
            moved += uw.pump(n.a.socket_mut(c).unwrap());
            moved += ur.pump(n.server.socket_mut(s).unwrap());
            moved += dw.pump(n.server.socket_mut(s).unwrap());
            moved += dr.pump(n.a.socket_mut(c).unwrap());
        }
        (
            moved,
            streams.iter().all(|s| s.1.got == bytes && s.3.got == bytes),
        )
    });
    let grown = net.server.peer_usage(PEER_A).buffer_growth;
    let available = net.server.buffer_budget_available();
    // A keeps its connections (and its grown buffers); B's still grow.
    let (_, s) = b_connects_and_transfers(&mut net, 16 << 20);
    let b_grown = net.server.peer_usage(PEER_B).buffer_growth;
    let sock = net.server.socket(s).unwrap();
    assert!(
        sock.recv_capacity() + sock.send_capacity() > 32 << 10,
        "B's buffers grew too ({b_grown} bytes)"
    );
    assert!(b_grown > 0);
    assert!(grown > 0, "A's buffers grew");
    assert!(
        grown <= 256 << 10,
        "A took {grown} bytes, more than its share"
    );
    assert!(available >= (1 << 20) - (256 << 10));
}

#[test]
fn handshakes_finished_earlier_in_a_batch_do_not_count_against_a_syn() {
    let mut cfg = config(SERVER_IP);
    cfg.max_pending_per_peer = 2;
    let mut net = Net::new(cfg);
    let first: Vec<ConnId> = (0..2).map(|_| net.a.connect(service()).unwrap()).collect();
    let mut second: Vec<ConnId> = Vec::new();
    let mut accepted = Vec::new();
    net.run(|n| {
        let established =
            |s: &Stack, ids: &[ConnId]| ids.iter().all(|c| state(s, *c) == State::Established);
        // The client's ACKs for the first two handshakes and the SYNs of
        // the next two leave together and arrive in one batch.
        if second.is_empty() && established(&n.a, &first) {
            second = (0..2).map(|_| n.a.connect(service()).unwrap()).collect();
        }
        let k = accept_all(&mut n.server, &mut accepted);
        let done = second.len() == 2 && established(&n.a, &second) && accepted.len() == 4;
        (k, done)
    });
    assert_eq!(net.server.stats().syn_over_pending_limit, 0);
    assert_eq!(net.server.peer_usage(PEER_A).connections, 4);
}
