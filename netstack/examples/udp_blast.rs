//! Loopback UDP throughput of 1,400-byte datagrams, one sender thread and
//! one receiver thread, for a few seconds each:
//!
//! (a) plain std sockets, one `send_to` / `recv_from` per datagram;
//! (b) `UdpIo`: GSO sends of up to 46 datagrams, recvmmsg + GRO receives.
//!
//! Both use 16 MiB socket buffers, so the difference is the batching. The
//! figures are what the receiver got (goodput); loss is what the sender
//! handed to the kernel but never arrived.
//!
//! ```text
//! cargo run --release -p hushgate-netstack --example udp_blast -- [seconds] [datagram bytes]
//! ```

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hushgate_netstack::udp::SOCKET_BUFFER_BYTES;
use hushgate_netstack::{UdpIo, UdpStats};
use mio::{Events, Interest, Poll, Token};

struct Outcome {
    sent: u64,
    received: u64,
    bytes: u64,
    elapsed: Duration,
    out_of_order: u64,
}

impl Outcome {
    fn rate(&self) -> f64 {
        self.received as f64 / self.elapsed.as_secs_f64()
    }
    fn gbits(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.elapsed.as_secs_f64() / 1e9
    }
    fn print(&self, name: &str) {
        println!(
            "{name:<26} {:>10.0} datagrams/s {:>6.2} Gbit/s  (sent {}, received {}, loss {:.2}%, out of order {})",
            self.rate(),
            self.gbits(),
            self.sent,
            self.received,
            100.0 * (self.sent - self.received) as f64 / self.sent.max(1) as f64,
            self.out_of_order,
        );
    }
}

/// Receiver-side bookkeeping: datagrams carry a sequence number.
#[derive(Default)]
struct Tally {
    received: u64,
    bytes: u64,
    next: u64,
    out_of_order: u64,
}

impl Tally {
    fn take(&mut self, d: &[u8]) {
        let seq = u64::from_be_bytes(d[..8].try_into().unwrap());
        if seq < self.next {
            self.out_of_order += 1;
        }
        self.next = seq + 1;
        self.received += 1;
        self.bytes += d.len() as u64;
    }
}

fn loopback() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
}

fn std_socket() -> UdpSocket {
    let s = UdpSocket::bind(loopback()).unwrap();
    let r = socket2::SockRef::from(&s);
    r.set_recv_buffer_size(SOCKET_BUFFER_BYTES).unwrap();
    r.set_send_buffer_size(SOCKET_BUFFER_BYTES).unwrap();
    s
}

fn baseline(secs: Duration, len: usize) -> Outcome {
    let tx = std_socket();
    let rx = std_socket();
    rx.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let dst = rx.local_addr().unwrap();
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        let receiver = s.spawn(|| {
            let mut tally = Tally::default();
            let mut buf = vec![0u8; 65_536];
            loop {
                match rx.recv_from(&mut buf) {
                    Ok((n, _)) => tally.take(&buf[..n]),
                    Err(_) if done.load(Ordering::Relaxed) => break,
                    Err(_) => {}
                }
            }
            tally
        });
        let mut buf = vec![0x5au8; len];
        let start = Instant::now();
        let mut sent = 0u64;
        while start.elapsed() < secs {
            for _ in 0..64 {
                buf[..8].copy_from_slice(&sent.to_be_bytes());
                tx.send_to(&buf, dst).unwrap();
                sent += 1;
            }
        }
        let elapsed = start.elapsed();
        done.store(true, Ordering::Relaxed);
        let t = receiver.join().unwrap();
        Outcome {
            sent,
            received: t.received,
            bytes: t.bytes,
            elapsed,
            out_of_order: t.out_of_order,
        }
    })
}

fn batched(secs: Duration, len: usize) -> (Outcome, UdpStats, UdpStats) {
    let mut tx = UdpIo::bind(loopback()).unwrap();
    let mut rx = UdpIo::bind(loopback()).unwrap();
    let dst = rx.local_addr().unwrap();
    let done = AtomicBool::new(false);
    println!(
        "UdpIo: max_gso_segments {}, gro_segments {}",
        tx.max_gso_segments(),
        rx.gro_segments()
    );
    std::thread::scope(|s| {
        let receiver = s.spawn(|| {
            let mut poll = Poll::new().unwrap();
            poll.registry()
                .register(&mut rx, Token(0), Interest::READABLE)
                .unwrap();
            let mut events = Events::with_capacity(4);
            let mut tally = Tally::default();
            loop {
                let n = rx.recv_batch(4096, |_, d| tally.take(d)).unwrap();
                if n == 0 {
                    if done.load(Ordering::Relaxed) {
                        // One last look after the sender stopped.
                        poll.poll(&mut events, Some(Duration::from_millis(100)))
                            .unwrap();
                        if rx.recv_batch(usize::MAX, |_, d| tally.take(d)).unwrap() == 0 {
                            break;
                        }
                    } else {
                        poll.poll(&mut events, Some(Duration::from_millis(100)))
                            .unwrap();
                    }
                }
            }
            (tally, rx.stats())
        });

        let mut poll = Poll::new().unwrap();
        poll.registry()
            .register(&mut tx, Token(1), Interest::WRITABLE)
            .unwrap();
        let mut events = Events::with_capacity(4);
        let mut buf = vec![0x5au8; len];
        let start = Instant::now();
        let mut queued = 0u64;
        while start.elapsed() < secs {
            // One wake-up's worth: 64 GSO batches' worth at most.
            for _ in 0..256 {
                buf[..8].copy_from_slice(&queued.to_be_bytes());
                tx.queue(dst, &buf);
                queued += 1;
            }
            tx.flush().unwrap();
            while tx.has_pending() {
                poll.poll(&mut events, Some(Duration::from_millis(10)))
                    .unwrap();
                tx.flush().unwrap();
            }
        }
        let elapsed = start.elapsed();
        done.store(true, Ordering::Relaxed);
        let (t, rx_stats) = receiver.join().unwrap();
        let tx_stats = tx.stats();
        (
            Outcome {
                sent: tx_stats.tx_datagrams,
                received: t.received,
                bytes: t.bytes,
                elapsed,
                out_of_order: t.out_of_order,
            },
            tx_stats,
            rx_stats,
        )
    })
}

fn main() {
    let mut args = std::env::args().skip(1);
    let secs = Duration::from_secs_f64(args.next().map_or(2.0, |a| a.parse().expect("seconds")));
    let len: usize = args.next().map_or(1400, |a| a.parse().expect("bytes"));
    assert!(len >= 8, "datagrams carry an 8-byte sequence number");

    let a = baseline(secs, len);
    a.print("(a) std send_to/recv_from");
    let (b, ts, rs) = batched(secs, len);
    b.print("(b) UdpIo GSO/GRO");
    println!(
        "    sender: {:.1} datagrams per sendmsg, {} would-block; receiver: {:.1} datagrams per recvmmsg, {} GRO buffers",
        ts.tx_datagrams as f64 / ts.tx_syscalls.max(1) as f64,
        ts.tx_would_block,
        rs.rx_datagrams as f64 / rs.rx_syscalls.max(1) as f64,
        rs.rx_gro_buffers,
    );
    println!(
        "ratio (b)/(a): {:.2}x datagrams/s received",
        b.rate() / a.rate()
    );
}
