//! User-space TCP termination for hushgate tunnels, built on smoltcp 0.14
//! as vendored and extended in `third_party/smoltcp` (see its
//! `HUSHGATE.md`).
//!
//! Two parts, both meant to be owned by one data-path thread (no locks,
//! no internal threads, no timers of their own):
//!
//! - [`Stack`] is a sans-IO TCP/IP endpoint: one smoltcp `Interface` (medium
//!   IP) over in-memory packet queues whose buffers come from a pool. The
//!   owner pushes decrypted inner packets in ([`Stack::push_inbound`]) and
//!   takes packets to encrypt out ([`Stack::drain_outbound`]). It listens on
//!   service ports with a pool of listeners per port ([`Stack::listen`],
//!   [`Stack::accept`]), opens outbound connections ([`Stack::connect`]),
//!   and keeps a table of connections under stable [`ConnId`]s. Time is
//!   always passed in; [`Stack::new_at`] starts the stack's clock at a
//!   given instant, so a simulation can drive it in virtual time.
//!
//!   Every TCP socket is set up for Internet paths, not only the LAN (see
//!   [`StackConfig`] and "TCP over lossy paths" in docs/architecture.md):
//!   BBR congestion control with pacing (in quanta of about 1 ms of data,
//!   so the stack's [`poll_delay`](Stack::poll_delay) reports when the
//!   next quantum may leave), SACK-based loss recovery with RACK and tail
//!   loss probes, a 200 ms RTO floor, an ACK from ingress every
//!   `ack_every` segments, and buffers that start small and grow while a
//!   connection needs them, within a per-connection maximum and a budget
//!   shared by the stack. Nagle is off. Packets that are not TCP to a port
//!   of ours are dropped without a reply.
//!
//!   Each peer address gets a share of the stack: at most
//!   `max_connections_per_peer` sockets (a SYN beyond gets an RST),
//!   `max_pending_per_peer` handshakes (a SYN beyond is dropped) and
//!   `tcp_buffer_budget_per_peer` of the buffer budget, so one tunnel
//!   client cannot hold every socket or all the memory
//!   ([`Stack::peer_usage`] shows what each holds).
//! - [`Splice`] joins each connection to a `mio::net::TcpStream` and moves
//!   bytes both ways directly between smoltcp's rings and the kernel, with
//!   backpressure both ways, FIN propagation, and reset propagation. Its
//!   streams are registered in the caller's `mio::Registry` under tokens
//!   from a range the caller reserves.
//! - [`UdpIo`] (module [`udp`]) is the tunnel's outer UDP socket with
//!   batched I/O through `quinn-udp`: `recvmmsg` with GRO on receive
//!   ([`UdpIo::recv_batch`] splits GRO buffers back into datagrams), and on
//!   send a queue that coalesces consecutive same-size datagrams to one peer
//!   into one GSO `sendmsg` ([`UdpIo::queue`], [`UdpIo::flush`]). Errors of
//!   one destination (ICMP unreachable, `EMSGSIZE`) drop that datagram and
//!   are counted; they never wedge the queue. In the loop below it is the
//!   `UDP` token: drain it with `recv_batch`, `queue` each encrypted packet,
//!   `flush` at the end of the wake-up, and register for `WRITABLE` while
//!   `has_pending()`.
//!
//! - [`driver`] is the event loop both data paths (and the tests' stand-in
//!   gateways) run on: a `mio::Poll`, commands from other threads through
//!   a channel plus a waker ([`driver::Sender`]), and one batch of work per
//!   wake-up by a [`driver::Handler`], with no dynamic dispatch.
//! - [`wire`] is the one place where IPv4/IPv6/TCP header fields and
//!   WireGuard's message types, sizes and timer period are read by hand.
//!
//! One wake-up of a data path (the gateway's; the client shim's is the same
//! with `connect` + `attach` on each accepted local stream instead of
//! `accept`), as [`driver::Driver::run`] and the handler share it:
//!
//! ```text
//! loop {
//!     timeout = min(stack.poll_delay(now), wireguard timers, ...)
//!     poll.poll(&mut events, timeout)
//!     for ev in &events {
//!         if splice.owns(ev.token()) { splice.on_event(ev); }
//!         else if ev.token() == UDP { decrypt each datagram; stack.push_inbound(inner) }
//!     }
//!     stack.poll_ingress(now);                  // all queued segments
//!     while let Some(id) = stack.accept() {     // new tunnel connections
//!         let up = mio::net::TcpStream::connect(upstream)?;
//!         splice.attach(poll.registry(), &stack, id, up)?;
//!     }
//!     splice.pump(&mut stack, poll.registry()); // copy, so ACKs carry the freed window
//!     stack.poll_egress(now);                   // data, ACKs, retransmissions
//!     stack.drain_outbound(|pkt| encrypt and send to the peer owning pkt's destination);
//! }
//! ```
//!
//! Revoking a client: `splice.close_all_for(&mut stack, registry, addr)`
//! resets its spliced connections on both sides and aborts its other
//! connections in the stack; the RSTs leave at the next egress.
#![forbid(unsafe_code)]

mod device;
pub mod driver;
mod splice;
mod stack;
pub mod udp;
pub mod wire;

/// The smoltcp version this crate is built on, for `Stack::socket` users.
pub use smoltcp;
pub use splice::{PumpStats, Splice, TagTotals};
pub use stack::{Congestion, ConnId, Error, PeerUsage, Stack, StackConfig, StackStats};
pub use udp::{UdpIo, UdpStats};
