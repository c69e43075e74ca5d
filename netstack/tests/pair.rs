//! Two stacks wired together in memory: data integrity, concurrency,
//! half-close, listener pools, filtering and revocation.

mod common;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use common::*;
use hushgate_netstack::smoltcp::socket::tcp::State;
use hushgate_netstack::{ConnId, Stack};

const PORT: u16 = 32400;
const LIMIT: Duration = Duration::from_secs(60);

fn service() -> SocketAddr {
    SocketAddr::new(SERVER_IP, PORT)
}

/// Connects `n` client connections and returns (client id, server id) pairs
/// once all are established and accepted.
fn establish(pair: &mut Pair, n: usize) -> Vec<(ConnId, ConnId)> {
    pair.server.listen(PORT).unwrap();
    let client_ids: Vec<ConnId> = (0..n)
        .map(|_| pair.client.connect(service()).unwrap())
        .collect();
    // Map the server's accepted connections back to client connections by
    // the client's local port.
    let mut by_port: HashMap<u16, ConnId> = HashMap::new();
    pair.run(LIMIT, |client, server| {
        let mut k = 0;
        while let Some(id) = server.accept() {
            let port = server.remote_endpoint(id).unwrap().port();
            by_port.insert(port, id);
            k += 1;
        }
        let done = by_port.len() == n
            && client_ids
                .iter()
                .all(|id| state(client, *id) == State::Established);
        (k, done)
    });
    client_ids
        .iter()
        .map(|c| {
            let port = pair.client.local_endpoint(*c).unwrap().port();
            (*c, by_port[&port])
        })
        .collect()
}

/// Sends `bytes` each way on every connection concurrently and verifies
/// every byte on arrival.
fn transfer_both_ways(pair: &mut Pair, conns: &[(ConnId, ConnId)], bytes: u64) {
    let mut up: Vec<(Writer, Reader)> = (0..conns.len() as u64)
        .map(|i| (Writer::new(0x100 + i, bytes), Reader::new(0x100 + i)))
        .collect();
    let mut down: Vec<(Writer, Reader)> = (0..conns.len() as u64)
        .map(|i| (Writer::new(0x200 + i, bytes), Reader::new(0x200 + i)))
        .collect();
    let conns = conns.to_vec();
    pair.run(LIMIT, |client, server| {
        let mut moved = 0;
        for (k, (c, s)) in conns.iter().enumerate() {
            moved += up[k].0.pump(client.socket_mut(*c).unwrap());
            moved += up[k].1.pump(server.socket_mut(*s).unwrap());
            moved += down[k].0.pump(server.socket_mut(*s).unwrap());
            moved += down[k].1.pump(client.socket_mut(*c).unwrap());
        }
        let done = up.iter().chain(down.iter()).all(|(_, r)| r.got == bytes);
        (moved, done)
    });
}

#[test]
fn one_connection_moves_mebibytes_each_way_intact() {
    let mut pair = Pair::default_pair();
    let conns = establish(&mut pair, 1);
    let (c, s) = conns[0];
    assert_eq!(pair.server.remote_endpoint(s).unwrap().ip(), CLIENT_IP);
    assert_eq!(pair.client.remote_endpoint(c).unwrap(), service());
    transfer_both_ways(&mut pair, &conns, 6 << 20);
    assert_eq!(pair.server.stats().rx_queue_full, 0);
}

#[test]
fn concurrent_connections_stay_separate() {
    let mut pair = Pair::default_pair();
    let conns = establish(&mut pair, 4);
    transfer_both_ways(&mut pair, &conns, 2 << 20);
}

#[test]
fn half_close_carries_data_after_fin_both_ways() {
    let mut pair = Pair::default_pair();
    let (c, s) = establish(&mut pair, 1)[0];

    // Client sends 1 MiB then FIN.
    let mut w = Writer::new(7, 1 << 20);
    let mut r = Reader::new(7);
    let mut closed = false;
    pair.run(LIMIT, |client, server| {
        let mut m = w.pump(client.socket_mut(c).unwrap());
        if w.done() && !closed {
            client.close(c).unwrap();
            closed = true;
        }
        m += r.pump(server.socket_mut(s).unwrap());
        (m, r.got == 1 << 20 && state(server, s) == State::CloseWait)
    });
    assert!(!pair.server.socket(s).unwrap().may_recv());

    // The server keeps sending on its open half; the client still reads.
    let mut w2 = Writer::new(8, 1 << 20);
    let mut r2 = Reader::new(8);
    let mut closed2 = false;
    pair.run(LIMIT, |client, server| {
        let mut m = w2.pump(server.socket_mut(s).unwrap());
        if w2.done() && !closed2 {
            server.close(s).unwrap();
            closed2 = true;
        }
        m += r2.pump(client.socket_mut(c).unwrap());
        (m, r2.got == 1 << 20 && state(client, c) == State::TimeWait)
    });

    // Released sockets finish closing and are freed; only listeners remain.
    let listeners = pair.server.config().listener_pool;
    pair.client.release(c);
    pair.server.release(s);
    pair.settle();
    assert_eq!(pair.client.socket_count(), 0);
    assert_eq!(pair.server.socket_count(), listeners);
    assert_eq!(pair.server.connection_count(), 0);
}

#[test]
fn listener_pool_accepts_more_than_its_size() {
    let mut sc = config(SERVER_IP);
    sc.listener_pool = 2;
    let mut pair = Pair::new(config(CLIENT_IP), sc);
    // Twelve SYNs arrive in one batch at a pool of two.
    let conns = establish(&mut pair, 12);
    assert_eq!(conns.len(), 12);
    let mut servers: Vec<ConnId> = conns.iter().map(|c| c.1).collect();
    servers.sort();
    servers.dedup();
    assert_eq!(servers.len(), 12, "each connection accepted once");
    // Everything accepted is usable.
    transfer_both_ways(&mut pair, &conns, 64 << 10);
}

#[test]
fn port_not_listened_gets_silence() {
    let mut pair = Pair::default_pair();
    pair.server.listen(PORT).unwrap();
    let c = pair
        .client
        .connect(SocketAddr::new(SERVER_IP, PORT + 1))
        .unwrap();
    pair.settle();
    assert_eq!(pair.delivered.0, 1, "one SYN left the client");
    assert_eq!(
        pair.delivered.1, 0,
        "the server answered nothing, not even RST"
    );
    assert_eq!(pair.server.stats().rx_filtered, 1);
    assert_eq!(state(&pair.client, c), State::SynSent);
    assert!(pair.server.accept().is_none());
}

#[test]
fn non_tcp_packets_are_dropped_without_reply() {
    let mut server = Stack::new(config(SERVER_IP));
    server.listen(PORT).unwrap();
    // ICMP echo request and a UDP datagram to the listened port.
    let mut icmp = vec![0u8; 28];
    icmp[0] = 0x45;
    icmp[2..4].copy_from_slice(&28u16.to_be_bytes());
    icmp[8] = 64;
    icmp[9] = 1;
    icmp[12..16].copy_from_slice(&[100, 64, 0, 2]);
    icmp[16..20].copy_from_slice(&[100, 64, 0, 1]);
    icmp[20] = 8;
    let mut udp = icmp.clone();
    udp[9] = 17;
    udp[22..24].copy_from_slice(&PORT.to_be_bytes());
    assert!(!server.push_inbound(&icmp));
    assert!(!server.push_inbound(&udp));
    server.poll(Instant::now());
    assert!(!server.has_outbound());
    assert_eq!(server.stats().rx_filtered, 2);
}

/// A SYN with valid checksums from the client to `dst`.
fn syn_to(dst: [u8; 4], port: u16) -> Vec<u8> {
    fn sum(data: &[u8]) -> u32 {
        data.chunks(2)
            .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
            .sum()
    }
    fn fold(mut s: u32) -> [u8; 2] {
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        (!(s as u16)).to_be_bytes()
    }
    let mut p = vec![0u8; 40];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&40u16.to_be_bytes());
    p[8] = 64;
    p[9] = 6;
    p[12..16].copy_from_slice(&[100, 64, 0, 2]);
    p[16..20].copy_from_slice(&dst);
    let ip = fold(sum(&p[..20]));
    p[10..12].copy_from_slice(&ip);
    p[20..22].copy_from_slice(&50000u16.to_be_bytes());
    p[22..24].copy_from_slice(&port.to_be_bytes());
    p[24..28].copy_from_slice(&7u32.to_be_bytes());
    p[32] = 0x50;
    p[33] = 0x02;
    p[34..36].copy_from_slice(&65535u16.to_be_bytes());
    let mut pseudo = Vec::from(&p[12..20]);
    pseudo.extend_from_slice(&[0, 6, 0, 20]);
    let tcp = fold(sum(&pseudo) + sum(&p[20..]));
    p[36..38].copy_from_slice(&tcp);
    p
}

#[test]
fn packets_for_other_addresses_get_silence() {
    // Found by the inner_packet fuzz target: smoltcp took a SYN to the
    // broadcast address as its own and answered from 255.255.255.255.
    let mut server = Stack::new(config(SERVER_IP));
    server.listen(PORT).unwrap();
    for dst in [[255, 255, 255, 255], [100, 64, 0, 9], [224, 0, 0, 1]] {
        assert!(!server.push_inbound(&syn_to(dst, PORT)), "{dst:?}");
    }
    server.poll(Instant::now());
    assert!(
        !server.has_outbound(),
        "answered a packet for another address"
    );
    assert_eq!(server.stats().rx_filtered, 3);
    // The same SYN to the stack's own address is answered.
    assert!(server.push_inbound(&syn_to([100, 64, 0, 1], PORT)));
    server.poll(Instant::now());
    assert!(server.has_outbound());
}

#[test]
fn abort_peer_resets_every_connection_of_that_peer() {
    let mut pair = Pair::default_pair();
    let conns = establish(&mut pair, 3);
    let n = pair.server.abort_peer(CLIENT_IP);
    assert_eq!(n, 3);
    pair.settle();
    for (c, s) in &conns {
        assert_eq!(state(&pair.client, *c), State::Closed, "client saw RST");
        assert_eq!(state(&pair.server, *s), State::Closed);
        pair.server.release(*s);
        pair.client.release(*c);
    }
    pair.settle();
    assert_eq!(pair.server.connection_count(), 0);
    assert_eq!(pair.client.socket_count(), 0);
}

#[test]
fn window_scaling_allows_more_than_64k_in_flight() {
    // With a 1 MiB receive buffer and nobody reading, the sender must be
    // able to push far beyond 64 KiB: only a scaled window allows that.
    let mut pair = Pair::default_pair();
    let (c, s) = establish(&mut pair, 1)[0];
    let mut w = Writer::new(9, 4 << 20);
    pair.run(LIMIT, |client, server| {
        let m = w.pump(client.socket_mut(c).unwrap());
        (m, server.socket(s).unwrap().recv_queue() >= 900 << 10)
    });
    assert!(pair.server.socket(s).unwrap().recv_queue() <= 1 << 20);
}

#[test]
fn receiver_acks_at_least_every_sixteen_segments_of_a_batch() {
    // Each round of the pair delivers a whole window at once, as a batched
    // UDP receive would. Without forced ACKs the receiver would answer one
    // ACK per round, and CUBIC (which grows per ACK) would stall.
    let mut pair = Pair::default_pair();
    let (c, s) = establish(&mut pair, 1)[0];
    let before = (pair.delivered.0, pair.delivered.1);
    let mut w = Writer::new(10, 8 << 20);
    let mut r = Reader::new(10);
    pair.run(LIMIT, |client, server| {
        let m = w.pump(client.socket_mut(c).unwrap()) + r.pump(server.socket_mut(s).unwrap());
        (m, r.got == 8 << 20)
    });
    let data = pair.delivered.0 - before.0;
    let acks = pair.delivered.1 - before.1;
    assert!(data > 6000, "{data} data segments");
    assert!(
        acks * 17 >= data,
        "{acks} ACKs for {data} segments: fewer than one per 16"
    );
}

#[test]
fn retransmitted_syn_does_not_create_a_second_connection() {
    // smoltcp gives a SYN to the first socket (in its slot order) that
    // accepts it. After some churn an idle listener can sit in a slot before
    // the half-open socket of a handshake, and would take a retransmitted
    // SYN as a new connection. Build that order: pool of 2, one connection
    // that comes and goes (freeing slot 0, which the next refill reuses).
    let mut sc = config(SERVER_IP);
    sc.listener_pool = 2;
    let mut pair = Pair::new(config(CLIENT_IP), sc);
    let (c1, s1) = establish(&mut pair, 1)[0];
    pair.client.abort(c1).unwrap();
    pair.settle();
    pair.client.release(c1);
    pair.server.release(s1);
    pair.settle();
    assert_eq!(pair.server.socket_count(), 2);

    let c = pair.client.connect(service()).unwrap();
    pair.client.poll_egress(Instant::now());
    let syn = pair.client.pop_outbound().expect("a SYN");
    assert!(pair.client.pop_outbound().is_none());
    // The same SYN twice in one batch, as after a lost SYN-ACK.
    assert!(pair.server.push_inbound(&syn));
    assert!(pair.server.push_inbound(&syn));
    pair.server.poll(Instant::now());
    let mut synacks = Vec::new();
    while let Some(p) = pair.server.pop_outbound() {
        synacks.push(p);
    }
    assert_eq!(synacks.len(), 1, "one SYN-ACK, one half-open socket");
    assert_eq!(pair.server.stats().rx_dup_syn, 1);
    for p in &synacks {
        pair.client.push_inbound(p);
    }
    pair.settle();
    assert_eq!(state(&pair.client, c), State::Established);
    assert!(pair.server.accept().is_some());
    assert!(pair.server.accept().is_none());
}

#[test]
fn ipv6_inner_addresses_work() {
    let c_ip: std::net::IpAddr = "fd7a:115c:a1e0::2".parse().unwrap();
    let s_ip: std::net::IpAddr = "fd7a:115c:a1e0::1".parse().unwrap();
    let mut pair = Pair::new(config(c_ip), config(s_ip));
    pair.server.listen(PORT).unwrap();
    let c = pair.client.connect(SocketAddr::new(s_ip, PORT)).unwrap();
    let mut s = None;
    let mut w = Writer::new(11, 512 << 10);
    let mut r = Reader::new(11);
    pair.run(LIMIT, |client, server| {
        let mut m = w.pump(client.socket_mut(c).unwrap());
        if s.is_none() {
            s = server.accept();
        }
        if let Some(s) = s {
            m += r.pump(server.socket_mut(s).unwrap());
        }
        (m, r.got == 512 << 10)
    });
    assert_eq!(pair.server.remote_endpoint(s.unwrap()).unwrap().ip(), c_ip);
}

/// An RST from the server to the client's connection with a sequence
/// number nowhere near the client's window.
fn stray_reset(client_port: u16) -> Vec<u8> {
    use hushgate_netstack::smoltcp::phy::ChecksumCapabilities;
    use hushgate_netstack::smoltcp::wire::{
        IpAddress, IpProtocol, Ipv4Packet, Ipv4Repr, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber,
    };
    let (IpAddr::V4(src), IpAddr::V4(dst)) = (SERVER_IP, CLIENT_IP) else {
        unreachable!()
    };
    let tcp = TcpRepr {
        src_port: PORT,
        dst_port: client_port,
        control: TcpControl::Rst,
        seq_number: TcpSeqNumber(0x4000_0000),
        ack_number: None,
        window_len: 0,
        window_scale: None,
        max_seg_size: None,
        sack_permitted: false,
        sack_ranges: [None, None, None],
        timestamp: None,
        payload: &[],
    };
    let ip = Ipv4Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: IpProtocol::Tcp,
        payload_len: tcp.buffer_len(),
        hop_limit: 64,
    };
    let mut buf = vec![0u8; ip.buffer_len() + tcp.buffer_len()];
    let caps = ChecksumCapabilities::default();
    let mut p = Ipv4Packet::new_unchecked(&mut buf);
    ip.emit(&mut p, &caps);
    let mut t = TcpPacket::new_unchecked(p.payload_mut());
    tcp.emit(&mut t, &IpAddress::Ipv4(src), &IpAddress::Ipv4(dst), &caps);
    buf
}

#[test]
fn a_reset_from_the_tunnel_peer_ends_the_connection_whatever_its_sequence() {
    // Trusted (the default inside a tunnel): the connection ends.
    let mut pair = Pair::default_pair();
    let conns = establish(&mut pair, 1);
    let port = pair.client.local_endpoint(conns[0].0).unwrap().port();
    assert!(pair.client.push_inbound(&stray_reset(port)));
    pair.client.poll(Instant::now());
    assert_eq!(state(&pair.client, conns[0].0), State::Closed);

    // Untrusted (smoltcp's RFC 5961 behaviour): the stray reset is ignored.
    let mut client = config(CLIENT_IP);
    client.trust_peer_resets = false;
    let mut pair = Pair::new(client, config(SERVER_IP));
    let conns = establish(&mut pair, 1);
    let port = pair.client.local_endpoint(conns[0].0).unwrap().port();
    pair.client.push_inbound(&stray_reset(port));
    pair.client.poll(Instant::now());
    assert_eq!(state(&pair.client, conns[0].0), State::Established);
}
