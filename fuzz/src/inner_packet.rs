//! Inner IP packets after decapsulation: the gateway's checks
//! (`gateway::tunnel_rule`, over `netstack::wire`) and the user-space stack's packet filter and
//! smoltcp's parsing behind it (`netstack::Stack::push_inbound`, then a
//! poll).
//!
//! Input: 1 byte choosing which ports the client may reach, then the
//! packet. Besides "no panic":
//! - what the gateway lets through to its stack, the stack's filter reads
//!   the same way (it takes it in when it is for the stack's address and a
//!   listened port);
//! - a packet the stack's filter refuses gets no answer at all (the
//!   stack stays silent to anything that is not TCP to a port of ours);
//! - whatever the stack sends comes from the service address, as
//!   well-formed IPv4 TCP, to the packet's source.

use crate::packet;
use gateway::tunnel_rule::check_from_client;
use netstack::wire::{ipv4_destination, ipv4_tcp};
use netstack::{Stack, StackConfig};
use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

pub const SERVICE: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 1);
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 2);
const LISTENED: [u16; 2] = [32400, 8096];

/// A stack as the gateway builds one, with buffers small enough that
/// every input can afford a fresh one.
pub fn small_stack() -> Stack {
    let mut cfg = StackConfig::new(IpAddr::V4(SERVICE));
    cfg.tcp_rx_buffer = 4096;
    cfg.tcp_tx_buffer = 4096;
    cfg.listener_pool = 2;
    cfg.max_sockets = 8;
    cfg.max_queued_packets = 64;
    let mut stack = Stack::new(cfg);
    for port in LISTENED {
        stack.listen(port).expect("a free port");
    }
    stack
}

pub fn run(data: &[u8]) {
    let Some((&choice, pkt)) = data.split_first() else {
        return;
    };
    let allowed: &[u16] = match choice % 3 {
        0 => &LISTENED,
        1 => &LISTENED[..1],
        _ => &[],
    };
    let view = ipv4_tcp(pkt);
    let checked = check_from_client(pkt, CLIENT, SERVICE, allowed);
    if let Ok(v) = checked {
        assert_eq!(Ok(v), view);
        assert_eq!(v.source, CLIENT);
        assert_eq!(v.destination, SERVICE);
        assert!(allowed.contains(&v.destination_port));
        assert_eq!(ipv4_destination(pkt), Some(SERVICE));
    }
    if let Ok(v) = view {
        // What the parser read is where the header says it is.
        assert_eq!(usize::from(u16::from_be_bytes([pkt[2], pkt[3]])), pkt.len());
        assert_eq!(
            v.destination,
            Ipv4Addr::new(pkt[16], pkt[17], pkt[18], pkt[19])
        );
    }

    let mut stack = small_stack();
    let taken = stack.push_inbound(pkt);
    if let Ok(v) = view {
        if v.destination == SERVICE && LISTENED.contains(&v.destination_port) {
            assert!(
                taken,
                "the gateway passes {v:?} but the stack's filter drops it"
            );
        }
    }
    let now = Instant::now();
    stack.poll(now);
    let mut answers = 0;
    stack.drain_outbound(|out| {
        answers += 1;
        let p = packet::parse_ipv4_tcp(out).expect("the stack sends well-formed IPv4 TCP");
        assert_eq!(
            p.src, SERVICE,
            "the stack answers from the service address only"
        );
        if let Ok(v) = view {
            assert_eq!(p.dst, v.source);
        }
    });
    if !taken {
        assert_eq!(answers, 0, "a packet the filter refused was answered");
    }
    assert!(stack.socket_count() <= stack.config().max_sockets);
}
