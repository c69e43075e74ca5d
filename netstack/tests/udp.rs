//! `UdpIo` over real sockets on loopback: batching must never change what
//! arrives. Every wait is bounded by a deadline.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use hushgate_netstack::UdpIo;
use mio::{Events, Interest, Poll, Token};

const WAIT: Duration = Duration::from_secs(5);

fn v4() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
}

/// A datagram of `len` bytes whose content is derived from `seq` (the first
/// 4 bytes are `seq`, when there is room).
fn datagram(seq: u32, len: usize) -> Vec<u8> {
    let mut d: Vec<u8> = (0..len)
        .map(|i| (seq as usize).wrapping_mul(31).wrapping_add(i * 7) as u8)
        .collect();
    if len >= 4 {
        d[..4].copy_from_slice(&seq.to_be_bytes());
    }
    d
}

/// A receiver registered in its own `Poll`.
struct Rx {
    io: UdpIo,
    poll: Poll,
    events: Events,
}

impl Rx {
    fn bind(addr: SocketAddr) -> Rx {
        let mut io = UdpIo::bind(addr).unwrap();
        let poll = Poll::new().unwrap();
        poll.registry()
            .register(&mut io, Token(0), Interest::READABLE)
            .unwrap();
        Rx {
            io,
            poll,
            events: Events::with_capacity(8),
        }
    }

    fn addr(&self) -> SocketAddr {
        self.io.local_addr().unwrap()
    }

    /// Receives until `n` datagrams arrived or the deadline passed; then
    /// also takes whatever else is already there (to catch extras).
    fn recv(&mut self, n: usize) -> Vec<(SocketAddr, Vec<u8>)> {
        let deadline = Instant::now() + WAIT;
        let mut got = Vec::new();
        loop {
            self.io
                .recv_batch(usize::MAX, |src, d| got.push((src, d.to_vec())))
                .unwrap();
            let now = Instant::now();
            if got.len() >= n || now >= deadline {
                break;
            }
            let timeout = (deadline - now).min(Duration::from_millis(50));
            self.poll.poll(&mut self.events, Some(timeout)).unwrap();
        }
        std::thread::sleep(Duration::from_millis(5));
        self.io
            .recv_batch(usize::MAX, |src, d| got.push((src, d.to_vec())))
            .unwrap();
        got
    }
}

/// Flushes until nothing is queued (bounded).
fn flush_all(io: &mut UdpIo) {
    let deadline = Instant::now() + WAIT;
    loop {
        io.flush().unwrap();
        if !io.has_pending() {
            return;
        }
        assert!(Instant::now() < deadline, "send queue never drained");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn ten_thousand_datagrams_in_bursts_arrive_intact_and_in_order() {
    const TOTAL: u32 = 10_000;
    const LEN: usize = 1400;
    let mut tx = UdpIo::bind(v4()).unwrap();
    let mut rx = Rx::bind(v4());
    // 16 MiB as root (SO_RCVBUFFORCE); otherwise net.core.rmem_max, often
    // 208 KiB (reported doubled): keep a burst well inside what the
    // receiver's buffer holds.
    let rcvbuf = socket2::SockRef::from(rx.io.socket())
        .recv_buffer_size()
        .unwrap();
    let sndbuf = socket2::SockRef::from(tx.socket())
        .send_buffer_size()
        .unwrap();
    eprintln!("SO_RCVBUF {rcvbuf}, SO_SNDBUF {sndbuf}");
    const BURST: u32 = 500;
    let burst = if rcvbuf >= 8 << 20 { BURST } else { 50 };
    let (src, dst) = (tx.local_addr().unwrap(), rx.addr());

    let mut seq = 0;
    while seq < TOTAL {
        let first = seq;
        for _ in 0..burst {
            tx.queue(dst, &datagram(seq, LEN));
            seq += 1;
        }
        flush_all(&mut tx);
        let got = rx.recv(burst as usize);
        assert_eq!(got.len(), burst as usize, "burst from {first}");
        for (i, (from, d)) in got.iter().enumerate() {
            assert_eq!(*from, src);
            assert_eq!(
                *d,
                datagram(first + i as u32, LEN),
                "datagram {}",
                first + i as u32
            );
        }
    }

    let (ts, rs) = (tx.stats(), rx.io.stats());
    assert_eq!(ts.tx_datagrams, TOTAL as u64);
    assert_eq!(ts.tx_bytes, TOTAL as u64 * LEN as u64);
    assert_eq!(ts.tx_dropped_error + ts.tx_dropped_overflow, 0);
    assert_eq!(rs.rx_datagrams, TOTAL as u64);
    assert_eq!(rs.rx_bytes, TOTAL as u64 * LEN as u64);
    if tx.max_gso_segments() >= 46 {
        // 46 datagrams of 1400 bytes fit one 64 KiB GSO send.
        let sends = (TOTAL / burst) as u64 * burst.div_ceil(46) as u64;
        assert_eq!(ts.tx_syscalls - ts.tx_would_block, sends, "{ts:?}");
        assert_eq!(ts.tx_gso_batches, sends);
    }
    eprintln!("sender {ts:?}\nreceiver {rs:?}");
}

#[test]
fn mixed_sizes_and_destinations_keep_their_boundaries() {
    let mut tx = UdpIo::bind(v4()).unwrap();
    let mut rxs: Vec<Rx> = (0..3).map(|_| Rx::bind(v4())).collect();
    let dsts: Vec<SocketAddr> = rxs.iter().map(Rx::addr).collect();

    // (destination index, length): runs of equal sizes, shorter tails,
    // growing sizes, empty datagrams, a batch at the 64 KiB limit, and
    // destinations interleaved.
    let mut plan: Vec<(usize, usize)> = Vec::new();
    plan.extend(std::iter::repeat_n((0, 1000), 5));
    plan.push((0, 300));
    plan.extend(std::iter::repeat_n((0, 1000), 3));
    plan.extend([
        (1, 1400),
        (1, 1400),
        (0, 1400),
        (2, 1),
        (2, 0),
        (2, 0),
        (2, 17),
    ]);
    plan.extend([(1, 100), (1, 200), (1, 300), (1, 300), (1, 299), (1, 300)]);
    plan.extend(std::iter::repeat_n((2, 1200), 120));
    plan.push((2, 1199));
    plan.extend([(0, 60_000), (0, 60_000), (0, 5), (1, 65_507)]);
    for i in 0..60 {
        plan.push((i % 3, 500 + (i / 3) % 4));
    }

    let mut expected: Vec<Vec<Vec<u8>>> = vec![Vec::new(); 3];
    for (seq, &(d, len)) in plan.iter().enumerate() {
        let dg = datagram(seq as u32, len);
        tx.queue(dsts[d], &dg);
        expected[d].push(dg);
    }
    flush_all(&mut tx);

    for (d, rx) in rxs.iter_mut().enumerate() {
        let got: Vec<Vec<u8>> = rx
            .recv(expected[d].len())
            .into_iter()
            .map(|(_, g)| g)
            .collect();
        assert_eq!(got.len(), expected[d].len(), "destination {d}");
        for (i, (g, e)) in got.iter().zip(&expected[d]).enumerate() {
            assert!(
                g == e,
                "destination {d} datagram {i}: {} bytes, wanted {}",
                g.len(),
                e.len()
            );
        }
    }
    let s = tx.stats();
    assert_eq!(s.tx_datagrams, plan.len() as u64);
    assert_eq!(s.tx_dropped_error, 0);
    if tx.max_gso_segments() > 1 {
        assert!(s.tx_gso_batches > 0);
        assert!(s.tx_syscalls < plan.len() as u64 / 2, "{s:?}");
    }
}

#[test]
fn gro_buffers_are_split_into_exact_datagrams() {
    const N: u32 = 200;
    const LEN: usize = 1200;
    let mut tx = UdpIo::bind(v4()).unwrap();
    let mut rx = Rx::bind(v4());
    let dst = rx.addr();
    for seq in 0..N {
        // Every 50th datagram is shorter: it ends its GSO batch (and so the
        // receive buffer it arrives in).
        let len = if seq % 50 == 49 { 700 } else { LEN };
        tx.queue(dst, &datagram(seq, len));
    }
    flush_all(&mut tx);
    let got = rx.recv(N as usize);
    assert_eq!(got.len(), N as usize);
    for (seq, (_, d)) in got.iter().enumerate() {
        let len = if seq % 50 == 49 { 700 } else { LEN };
        assert_eq!(*d, datagram(seq as u32, len), "datagram {seq}");
    }
    let s = rx.io.stats();
    if rx.io.gro_segments() > 1 && tx.max_gso_segments() > 1 {
        // On loopback a GSO send reaches a GRO socket unsegmented.
        assert!(s.rx_gro_buffers > 0, "{s:?}");
        assert!(s.rx_syscalls < N as u64 / 4, "{s:?}");
    }
    assert_eq!(s.rx_truncated, 0);

    // A limit on the count is honoured at buffer granularity.
    for seq in 0..100 {
        tx.queue(dst, &datagram(seq, 300));
    }
    flush_all(&mut tx);
    std::thread::sleep(Duration::from_millis(20));
    let mut first = Vec::new();
    let n = rx.io.recv_batch(1, |_, d| first.push(d.to_vec())).unwrap();
    assert!(n >= 1 && n <= rx.io.gro_segments(), "{n}");
    assert_eq!(n, first.len());
    let rest = rx.recv(100 - n);
    assert_eq!(n + rest.len(), 100);
    for (seq, d) in first.iter().chain(rest.iter().map(|(_, d)| d)).enumerate() {
        assert_eq!(*d, datagram(seq as u32, 300));
    }
}

#[test]
fn plain_socket_receives_gso_sends_as_separate_datagrams() {
    let mut tx = UdpIo::bind(v4()).unwrap();
    let rx = UdpSocket::bind(v4()).unwrap();
    rx.set_read_timeout(Some(WAIT)).unwrap();
    let dst = rx.local_addr().unwrap();
    for seq in 0..40 {
        tx.queue(dst, &datagram(seq, 1000));
    }
    flush_all(&mut tx);
    let mut buf = [0u8; 65_536];
    for seq in 0..40 {
        let (n, _) = rx.recv_from(&mut buf).unwrap();
        assert_eq!(buf[..n], datagram(seq, 1000)[..], "datagram {seq}");
    }
}

/// A port with nothing bound to it (bound, then closed).
fn closed_port() -> SocketAddr {
    let s = UdpSocket::bind(v4()).unwrap();
    s.local_addr().unwrap()
}

#[test]
fn icmp_unreachable_does_not_wedge_later_sends() {
    let closed = closed_port();
    let mut tx = UdpIo::bind(v4()).unwrap();
    // Linux reports ICMP errors to unconnected UDP sockets only with
    // IP_RECVERR; with it, each ICMP error fails the next call once.
    tx.enable_transport_errors().unwrap();
    let mut rx = Rx::bind(v4());
    let good = rx.addr();

    let mut expected = Vec::new();
    let mut seq = 0;
    for round in 0..20 {
        tx.queue(closed, &datagram(seq, 100));
        seq += 1;
        flush_all(&mut tx);
        // Let the ICMP port unreachable come back before the next sends.
        std::thread::sleep(Duration::from_millis(2));
        for _ in 0..(round % 3 + 1) * 10 {
            let d = datagram(seq, 1000);
            tx.queue(good, &d);
            expected.push(d);
            seq += 1;
        }
        flush_all(&mut tx);
    }
    let got: Vec<Vec<u8>> = rx
        .recv(expected.len())
        .into_iter()
        .map(|(_, d)| d)
        .collect();
    assert_eq!(got.len(), expected.len());
    assert!(got == expected);
    let s = tx.stats();
    assert!(s.async_errors > 0, "no ICMP error was ever reported: {s:?}");
    assert!(s.icmp_errors > 0, "{s:?}");
    // Receiving on the sender meets the pending errors too: not an error.
    let n = tx
        .recv_batch(64, |_, _| panic!("nothing was sent to us"))
        .unwrap();
    assert_eq!(n, 0);
}

#[test]
fn connected_socket_refusals_do_not_wedge_sends_elsewhere() {
    // A connected UDP socket gets ECONNREFUSED without IP_RECVERR.
    let closed = closed_port();
    let std_sock = UdpSocket::bind(v4()).unwrap();
    std_sock.connect(closed).unwrap();
    let mut tx = UdpIo::from_std(std_sock).unwrap();
    let other = UdpSocket::bind(v4()).unwrap();
    other.set_read_timeout(Some(WAIT)).unwrap();
    let good = other.local_addr().unwrap();

    for seq in 0..30u32 {
        tx.queue(closed, &datagram(seq, 64));
        flush_all(&mut tx);
        std::thread::sleep(Duration::from_millis(1));
        tx.queue(good, &datagram(seq, 64));
        flush_all(&mut tx);
    }
    let mut buf = [0u8; 2048];
    for seq in 0..30u32 {
        let (n, _) = other.recv_from(&mut buf).unwrap();
        assert_eq!(buf[..n], datagram(seq, 64)[..]);
    }
    assert!(tx.stats().async_errors > 0, "{:?}", tx.stats());
    assert_eq!(tx.recv_batch(64, |_, _| {}).unwrap(), 0);
}

#[test]
fn ipv6_loopback_works_and_families_are_checked() {
    let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, 0));
    let mut tx = UdpIo::bind(v6).unwrap();
    let mut rx = Rx::bind(v6);
    let dst = rx.addr();
    assert!(dst.is_ipv6());
    let mut expected = Vec::new();
    for seq in 0..150 {
        let d = datagram(seq, if seq % 100 == 99 { 77 } else { 1380 });
        tx.queue(dst, &d);
        expected.push(d);
    }
    // An IPv6-only socket cannot send to IPv4: dropped when queued.
    tx.queue(SocketAddr::from((Ipv4Addr::LOCALHOST, 9)), b"x");
    flush_all(&mut tx);
    let got = rx.recv(expected.len());
    assert_eq!(got.len(), expected.len());
    for ((src, g), e) in got.iter().zip(&expected) {
        assert_eq!(*src, tx.local_addr().unwrap());
        assert!(g == e);
    }
    assert_eq!(tx.stats().tx_dropped_error, 1);

    // An IPv4 socket: IPv6 destinations are dropped, IPv4-mapped ones sent.
    let mut tx4 = UdpIo::bind(v4()).unwrap();
    let mut rx4 = Rx::bind(v4());
    let port = rx4.addr().port();
    tx4.queue(SocketAddr::from((Ipv6Addr::LOCALHOST, port)), b"dropped");
    let mapped = Ipv4Addr::LOCALHOST.to_ipv6_mapped();
    tx4.queue(SocketAddr::from((mapped, port)), b"mapped");
    tx4.queue(rx4.addr(), b"plain");
    tx4.queue(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), b"port zero");
    flush_all(&mut tx4);
    let got: Vec<Vec<u8>> = rx4.recv(2).into_iter().map(|(_, d)| d).collect();
    assert_eq!(got, vec![b"mapped".to_vec(), b"plain".to_vec()]);
    assert_eq!(tx4.stats().tx_dropped_error, 2);
}

#[test]
fn queue_is_bounded_dropping_the_oldest() {
    let mut tx = UdpIo::bind(v4()).unwrap();
    let mut rx = Rx::bind(v4());
    let dst = rx.addr();
    tx.set_queue_limit(1 << 16);
    // 1,464 bytes of cost each: 44 fit in 64 KiB.
    for seq in 0..200 {
        tx.queue(dst, &datagram(seq, 1400));
    }
    // Oversized: dropped at once.
    tx.queue(dst, &vec![0u8; 70_000]);
    let s = tx.stats();
    assert_eq!(s.tx_dropped_error, 1);
    let kept = 200 - s.tx_dropped_overflow as u32;
    assert!((40..=44).contains(&kept), "kept {kept}");
    flush_all(&mut tx);
    let got = rx.recv(kept as usize);
    assert_eq!(got.len(), kept as usize);
    for (i, (_, d)) in got.iter().enumerate() {
        assert_eq!(*d, datagram(200 - kept + i as u32, 1400));
    }
    // The queue is usable afterwards.
    tx.queue(dst, b"after");
    flush_all(&mut tx);
    assert_eq!(rx.recv(1)[0].1, b"after");
}
