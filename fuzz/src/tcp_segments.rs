//! smoltcp's TCP socket, behind hushgate's user-space stack
//! (`netstack::Stack`), fed arbitrary segments from an authenticated peer.
//!
//! Input (structured, `arbitrary`): a sequence of segments from a tunnel
//! client (flags, sequence and acknowledgement numbers either relative to
//! what the stack expects or anything at all, windows, TCP options
//! including SACK blocks and timestamps, payload), interleaved with time
//! passing, polls, and what the application does with each accepted
//! connection (read, write, close, abort, release) or an outbound connect.
//! Segments carry correct checksums so they reach the state machine.
//!
//! Checked: no panic; sockets never exceed the configured limit (a flood
//! of SYNs or half-open connections cannot grow memory); the outbound
//! queue stays bounded; every packet the stack emits is well-formed IPv4
//! TCP from the service address to the client, no larger than the MTU.

use crate::inner_packet::{CLIENT, SERVICE};
use crate::packet::{self, Segment};
use arbitrary::{Arbitrary, Unstructured};
use netstack::{ConnId, Stack, StackConfig};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

const PORT: u16 = 32400;
const MTU: usize = 1420;
const MAX_SOCKETS: usize = 8;
const QUEUE: usize = 32;

#[derive(Debug, Arbitrary)]
enum Op {
    Send(Send),
    Advance { millis: u16 },
    Poll,
    Read { conn: u8, max: u16 },
    Write { conn: u8, len: u16 },
    Close { conn: u8 },
    Abort { conn: u8 },
    Release { conn: u8 },
    Connect { peer: u8 },
}

#[derive(Debug, Arbitrary)]
struct Send {
    peer: u8,
    /// To the listened port, or to one nobody listens on.
    unlistened: bool,
    flags: u8,
    seq: Number,
    ack: Number,
    window: u16,
    options: Options,
    /// In units of 8 bytes.
    payload_len: u8,
}

#[derive(Debug, Arbitrary)]
enum Number {
    /// What the receiving side expects next.
    Expected,
    /// Near it.
    Near(i16),
    Any(u32),
}

#[derive(Debug, Arbitrary)]
enum Options {
    None,
    Mss(u16),
    WindowScale(u8),
    SackPermitted,
    /// SACK blocks relative to what the stack has sent.
    Sack(Vec<(i16, u16)>),
    Timestamps(u32, u32),
    Raw(Vec<u8>),
}

/// The client end of one 4-tuple, as far as the harness tracks it.
#[derive(Debug, Default, Clone, Copy)]
struct PeerEnd {
    /// The client's next sequence number.
    next_seq: u32,
    /// What the client has seen of the stack's sequence space: the next
    /// number it expects.
    stack_next: Option<u32>,
}

pub fn run(data: &[u8]) {
    let u = Unstructured::new(data);
    let Ok(ops) = u.arbitrary_take_rest_iter::<Op>() else {
        return;
    };
    let mut cfg = StackConfig::new(IpAddr::V4(SERVICE));
    cfg.mtu = MTU;
    cfg.tcp_rx_buffer = 8192;
    cfg.tcp_tx_buffer = 8192;
    cfg.listener_pool = 2;
    cfg.max_sockets = MAX_SOCKETS;
    cfg.max_queued_packets = QUEUE;
    cfg.timeout = Some(Duration::from_secs(10));
    cfg.keep_alive = Some(Duration::from_secs(2));
    cfg.linger = Duration::from_secs(5);
    let mut stack = Stack::new(cfg);
    stack.listen(PORT).expect("a free port");
    let t0 = Instant::now();
    let mut now = t0;
    let mut peers = [PeerEnd::default(); 4];
    for (i, p) in peers.iter_mut().enumerate() {
        p.next_seq = 1_000_000 * (i as u32 + 1);
    }
    let mut conns: Vec<ConnId> = Vec::new();
    let mut buf = vec![0u8; 4096];
    let zeros = [0x5au8; 4096];

    for op in ops.take(128) {
        let Ok(op) = op else { break };
        if crate::tracing() {
            eprintln!("{op:?}");
        }
        match op {
            Op::Send(s) => {
                let i = usize::from(s.peer) % peers.len();
                let end = peers[i];
                let seq = match s.seq {
                    Number::Expected => end.next_seq,
                    Number::Near(d) => end.next_seq.wrapping_add(d as i32 as u32),
                    Number::Any(n) => n,
                };
                let stack_next = end.stack_next.unwrap_or(0);
                let ack = match s.ack {
                    Number::Expected => stack_next,
                    Number::Near(d) => stack_next.wrapping_add(d as i32 as u32),
                    Number::Any(n) => n,
                };
                let options = options(&s.options, end.stack_next.unwrap_or(0));
                let len = usize::from(s.payload_len) * 8;
                let pkt = packet::ipv4_tcp(&Segment {
                    src: CLIENT,
                    dst: SERVICE,
                    src_port: 50000 + i as u16,
                    dst_port: if s.unlistened { 22 } else { PORT },
                    seq,
                    ack,
                    flags: s.flags,
                    window: s.window,
                    options: &options,
                    payload: &zeros[..len.min(zeros.len())],
                });
                if matches!(s.seq, Number::Expected) {
                    let used = len as u32
                        + u32::from(s.flags & packet::SYN != 0)
                        + u32::from(s.flags & packet::FIN != 0);
                    peers[i].next_seq = seq.wrapping_add(used);
                }
                stack.push_inbound(&pkt);
            }
            Op::Advance { millis } => now += Duration::from_millis(u64::from(millis)),
            Op::Poll => {}
            Op::Read { conn, max } => {
                if let Some(id) = pick(&conns, conn) {
                    if let Some(s) = stack.socket_mut(id) {
                        let n = usize::from(max).min(buf.len());
                        let _ = s.recv_slice(&mut buf[..n]);
                    }
                }
            }
            Op::Write { conn, len } => {
                if let Some(id) = pick(&conns, conn) {
                    if let Some(s) = stack.socket_mut(id) {
                        let n = usize::from(len).min(zeros.len());
                        let _ = s.send_slice(&zeros[..n]);
                    }
                }
            }
            Op::Close { conn } => {
                if let Some(id) = pick(&conns, conn) {
                    let _ = stack.close(id);
                }
            }
            Op::Abort { conn } => {
                if let Some(id) = pick(&conns, conn) {
                    let _ = stack.abort(id);
                }
            }
            Op::Release { conn } => {
                if let Some(id) = pick(&conns, conn) {
                    stack.release(id);
                    conns.retain(|c| *c != id);
                }
            }
            Op::Connect { peer } => {
                let i = usize::from(peer) % peers.len();
                let remote = SocketAddr::from((CLIENT, 50000 + i as u16));
                if let Ok(id) = stack.connect(remote) {
                    conns.push(id);
                }
            }
        }
        stack.poll_ingress(now);
        while let Some(id) = stack.accept() {
            conns.push(id);
        }
        stack.poll_egress(now);
        let mut sent = 0;
        stack.drain_outbound(|out| {
            sent += 1;
            assert!(
                out.len() <= MTU,
                "a packet of {} bytes over an MTU of {MTU}",
                out.len()
            );
            let p = packet::parse_ipv4_tcp(out).expect("the stack sends well-formed IPv4 TCP");
            assert_eq!(p.src, SERVICE);
            assert_eq!(p.dst, CLIENT);
            // Keep the client's view of the stack's sequence space: the
            // highest next number it has been shown.
            if let Some(i) = p.dst_port.checked_sub(50000).map(usize::from) {
                if i < peers.len() {
                    let used = p.payload_len as u32
                        + u32::from(p.flags & packet::SYN != 0)
                        + u32::from(p.flags & packet::FIN != 0);
                    let next = p.seq.wrapping_add(used);
                    let end = &mut peers[i];
                    if p.flags & packet::SYN != 0
                        || end
                            .stack_next
                            .is_none_or(|s| next.wrapping_sub(s) as i32 > 0)
                    {
                        end.stack_next = Some(next);
                    }
                    if p.flags & packet::SYN != 0 && p.flags & packet::ACK == 0 {
                        // The stack's own connect: the client picks its
                        // sequence number now.
                        end.next_seq = 1_000_000 * (i as u32 + 1);
                    }
                }
            }
        });
        assert!(sent <= 2 * QUEUE, "{sent} packets queued at once");
        assert!(
            stack.socket_count() <= MAX_SOCKETS,
            "{} sockets",
            stack.socket_count()
        );
        assert!(stack.connection_count() <= MAX_SOCKETS);
        // Connections the stack gave up on are released like an owner would.
        conns.retain(|&id| stack.socket(id).is_some());
        if crate::tracing() {
            let states: Vec<String> = conns
                .iter()
                .filter_map(|&id| stack.socket(id).map(|s| s.state().to_string()))
                .collect();
            eprintln!("  sent {sent}, connections {states:?}");
        }
    }
}

fn pick(conns: &[ConnId], i: u8) -> Option<ConnId> {
    (!conns.is_empty()).then(|| conns[usize::from(i) % conns.len()])
}

fn options(o: &Options, stack_next: u32) -> Vec<u8> {
    match o {
        Options::None => Vec::new(),
        Options::Mss(m) => {
            let b = m.to_be_bytes();
            vec![2, 4, b[0], b[1]]
        }
        Options::WindowScale(s) => vec![1, 3, 3, *s],
        Options::SackPermitted => vec![1, 1, 4, 2],
        Options::Sack(blocks) => {
            let blocks = &blocks[..blocks.len().min(4)];
            let mut v = vec![1, 1, 5, (2 + 8 * blocks.len()) as u8];
            for &(start, len) in blocks {
                let left = stack_next.wrapping_add(start as i32 as u32);
                v.extend_from_slice(&left.to_be_bytes());
                v.extend_from_slice(&left.wrapping_add(u32::from(len)).to_be_bytes());
            }
            v
        }
        Options::Timestamps(a, b) => {
            let mut v = vec![1, 1, 8, 10];
            v.extend_from_slice(&a.to_be_bytes());
            v.extend_from_slice(&b.to_be_bytes());
            v
        }
        Options::Raw(bytes) => bytes.iter().copied().take(40).collect(),
    }
}
