//! What a SYN flood from one tunnel peer costs the stack, per SYN, on one
//! thread: SYNs dropped at the peer's handshake limit, SYNs refused with a
//! reset at its connection limit, and (for comparison) a stack without
//! per-peer limits, where the flood takes sockets until `max_sockets` and
//! smoltcp resets the rest.
//!
//! ```text
//! cargo run --release -p hushgate-netstack --example syn_flood -- [rounds]
//! ```
//! Each round pushes 16,000 distinct SYNs (captured from a real client
//! stack) and runs ingress and egress. Default 20 rounds.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Instant;

use hushgate_netstack::{Stack, StackConfig};

const SYNS: usize = 16_000;
const PORT: u16 = 32400;

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .map_or(20, |a| a.parse().expect("a number"));
    let client_ip = IpAddr::V4(Ipv4Addr::new(100, 64, 0, 2));
    let server_ip = IpAddr::V4(Ipv4Addr::new(100, 64, 0, 1));

    // Real SYNs, from a client stack with tiny buffers and room for them.
    let mut c = StackConfig::new(client_ip);
    c.tcp_rx_buffer = 1024;
    c.tcp_tx_buffer = 1024;
    c.max_sockets = SYNS;
    c.max_queued_packets = SYNS;
    let mut client = Stack::new(c);
    for _ in 0..SYNS {
        client
            .connect(SocketAddr::new(server_ip, PORT))
            .expect("a free port");
    }
    client.poll_egress(Instant::now());
    let mut syns = Vec::with_capacity(SYNS);
    client.drain_outbound(|p| syns.push(p.to_vec()));
    assert_eq!(syns.len(), SYNS);

    // (max_pending_per_peer, max_connections_per_peer); the defaults
    // first, where the handshake limit (16) comes first.
    let server = |limits: Option<(usize, usize)>| {
        let mut c = StackConfig::new(server_ip);
        c.max_queued_packets = SYNS;
        if let Some((pending, connections)) = limits {
            c.max_pending_per_peer = pending;
            c.max_connections_per_peer = connections;
        }
        let mut s = Stack::new(c);
        s.listen(PORT).unwrap();
        s
    };
    for (name, mut s) in [
        ("dropped at the handshake limit (16)", server(None)),
        (
            "reset at the connection limit (16)",
            server(Some((1024, 16))),
        ),
        (
            "no per-peer limits (old behaviour)",
            server(Some((usize::MAX, usize::MAX))),
        ),
    ] {
        let start = Instant::now();
        let mut out = 0;
        for _ in 0..rounds {
            for p in &syns {
                s.push_inbound(p);
            }
            let now = Instant::now();
            s.poll_ingress(now);
            s.poll_egress(now);
            out += s.drain_outbound(|_| {});
        }
        let ns = start.elapsed().as_nanos() as f64 / (rounds * SYNS) as f64;
        let st = s.stats();
        println!(
            "{name}: {ns:.0} ns per SYN; sockets {}, replies {out}, dropped {}, reset by the limit {}",
            s.socket_count(),
            st.syn_over_pending_limit,
            st.syn_over_connection_limit,
        );
    }
}
