//! Baseline throughput of one TCP stream through two `Stack`s wired back to
//! back in memory, on one thread (no kernel, no crypto): the user-space TCP
//! cost alone.
//!
//! ```text
//! cargo run --release -p hushgate-netstack --example pair_throughput -- [MiB] [buffer MiB] [ack_every]
//! ```
//! Defaults: 2048 MiB, the stack's default (autotuned) buffers (also with a
//! buffer size of 0), the stack's default `ack_every` (segments per ACK sent
//! from ingress; 0: ACK at egress only).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Instant;

use hushgate_netstack::smoltcp::socket::tcp::State;
use hushgate_netstack::{Stack, StackConfig};

const BLOCK: usize = 1 << 16;

fn main() {
    let mut args = std::env::args()
        .skip(1)
        .map(|a| a.parse::<usize>().expect("a number"));
    let total = args.next().unwrap_or(2048) as u64 * (1 << 20);
    let buffer = args.next();
    let ack_every = args.next();

    let client_ip = IpAddr::V4(Ipv4Addr::new(100, 64, 0, 2));
    let server_ip = IpAddr::V4(Ipv4Addr::new(100, 64, 0, 1));
    let configure = |ip| {
        let mut c = StackConfig::new(ip);
        if let Some(b) = buffer.filter(|b| *b > 0) {
            c.tcp_rx_buffer = b << 20;
            c.tcp_tx_buffer = b << 20;
        }
        if let Some(a) = ack_every {
            c.ack_every = u8::try_from(a).expect("ack_every fits in a u8");
        }
        c
    };
    let mut client = Stack::new(configure(client_ip));
    let mut server = Stack::new(configure(server_ip));
    server.listen(80).unwrap();
    let c = client.connect(SocketAddr::new(server_ip, 80)).unwrap();

    // A fixed block of non-trivial bytes: the sender copies from it and the
    // receiver compares against it, so the data is checked at memcpy cost.
    let block: Vec<u8> = (0..BLOCK as u64)
        .map(|i| (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8)
        .collect();

    let mut s = None;
    let (mut sent, mut got) = (0u64, 0u64);
    let mut rounds = 0u64;
    let mut start = Instant::now();
    while got < total {
        let now = Instant::now();
        client.poll_ingress(now);
        server.poll_ingress(now);
        if s.is_none() {
            s = server.accept();
            start = Instant::now();
        }
        let cs = client.socket_mut(c).unwrap();
        while sent < total && cs.can_send() && cs.state() == State::Established {
            let n = cs
                .send(|buf| {
                    let off = (sent % BLOCK as u64) as usize;
                    let n = buf.len().min(BLOCK - off).min((total - sent) as usize);
                    buf[..n].copy_from_slice(&block[off..off + n]);
                    (n, n)
                })
                .unwrap();
            sent += n as u64;
        }
        if let Some(id) = s {
            let ss = server.socket_mut(id).unwrap();
            while ss.recv_queue() > 0 {
                let n = ss
                    .recv(|buf| {
                        let off = (got % BLOCK as u64) as usize;
                        let n = buf.len().min(BLOCK - off);
                        assert_eq!(&buf[..n], &block[off..off + n], "corrupt at {got}");
                        (n, n)
                    })
                    .unwrap();
                got += n as u64;
            }
        }
        client.poll_egress(now);
        server.poll_egress(now);
        client.drain_outbound(|p| {
            server.push_inbound(p);
        });
        server.drain_outbound(|p| {
            client.push_inbound(p);
        });
        rounds += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    let mbps = got as f64 / secs / 1e6;
    let cs = client.stats();
    let ss = server.stats();
    println!(
        "pair_throughput: {} MiB in {:.3} s = {:.0} MB/s ({:.2} Gbit/s); {} data packets, {} ack packets, {} rounds",
        got >> 20,
        secs,
        mbps,
        mbps * 8.0 / 1e3,
        cs.tx_packets,
        ss.tx_packets,
        rounds
    );
    assert_eq!(ss.rx_queue_full + cs.rx_queue_full, 0, "no loss in memory");
}
