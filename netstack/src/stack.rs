//! [`Stack`]: one smoltcp interface over in-memory packet queues, with
//! listener pools, outbound connects, a connection table and a port filter.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr, IpListenEndpoint};

use crate::device::{parse_tcp, PortSet, QueueDevice, TcpMeta};

/// Congestion controller for every TCP socket of a [`Stack`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Congestion {
    /// No congestion control: only the peer's receive window limits sending.
    None,
    /// NewReno.
    Reno,
    /// CUBIC (smoltcp's best choice for long fat paths).
    Cubic,
}

impl From<Congestion> for tcp::CongestionControl {
    fn from(c: Congestion) -> Self {
        match c {
            Congestion::None => tcp::CongestionControl::None,
            Congestion::Reno => tcp::CongestionControl::Reno,
            Congestion::Cubic => tcp::CongestionControl::Cubic,
        }
    }
}

/// How a [`Stack`] is built. `StackConfig::new(addr)` gives the defaults
/// described on each field.
#[derive(Debug, Clone)]
pub struct StackConfig {
    /// The stack's own inner addresses (host addresses, /32 or /128). The
    /// first one of each family is also installed as the default route, so
    /// any destination (every client of the gateway) is reachable.
    pub addresses: Vec<IpAddr>,
    /// Accept packets addressed to any IP, not only `addresses`.
    /// Default false.
    pub any_ip: bool,
    /// IP MTU of the tunnel. Default 1420 (WireGuard's usual inner MTU).
    pub mtu: usize,
    /// Receive buffer per TCP connection. It fixes the window-scale factor
    /// when the socket is created, so it is applied before listen/connect.
    /// Default 4 MiB (about 670 Mbit/s at 50 ms RTT; pages are touched only
    /// as data flows through them).
    pub tcp_rx_buffer: usize,
    /// Send buffer per TCP connection; bounds the bytes in flight.
    /// Default 4 MiB.
    pub tcp_tx_buffer: usize,
    /// Idle listening sockets kept per listened port (a smoltcp listener
    /// accepts exactly one connection). Default 8.
    pub listener_pool: usize,
    /// Upper bound on TCP sockets of all kinds (listeners, handshakes,
    /// connections, closing ones). A SYN beyond it is answered with RST.
    /// Default 1024.
    pub max_sockets: usize,
    /// Run an egress pass after this many inbound segments during ingress,
    /// so the peer gets an ACK at least every N segments even when a whole
    /// batch arrives at once. CUBIC/Reno grow the window per ACK, not per
    /// byte; one ACK per batch stalls the ramp. 0 disables. Default 16.
    pub ack_every: usize,
    /// smoltcp's delayed-ACK timer. Default `None`: batching already
    /// coalesces ACKs (one per socket per egress pass), and a delayed ACK
    /// would only add latency.
    pub ack_delay: Option<Duration>,
    /// Default [`Congestion::Cubic`].
    pub congestion: Congestion,
    /// TCP keep-alive interval. Default 30 s.
    pub keep_alive: Option<Duration>,
    /// Abort a connection whose peer stays silent this long (keep-alives
    /// unanswered, retransmissions unacknowledged). Default 120 s.
    pub timeout: Option<Duration>,
    /// How long a released connection may take to finish its close
    /// handshake before it is aborted. Default 30 s.
    pub linger: Duration,
    /// Bound of each packet queue (inbound and outbound). Default 4096.
    pub max_queued_packets: usize,
    /// Abort a connection on any reset from its peer, even one whose
    /// sequence number smoltcp would reject (see `abort_matching`). Right
    /// inside an authenticated tunnel, where the peer cannot be spoofed.
    /// Default true.
    pub trust_peer_resets: bool,
}

impl StackConfig {
    /// Defaults for a stack whose own inner address is `address`.
    pub fn new(address: IpAddr) -> Self {
        StackConfig {
            addresses: vec![address],
            any_ip: false,
            mtu: 1420,
            tcp_rx_buffer: 4 << 20,
            tcp_tx_buffer: 4 << 20,
            listener_pool: 8,
            max_sockets: 1024,
            ack_every: 16,
            ack_delay: None,
            congestion: Congestion::Cubic,
            keep_alive: Some(Duration::from_secs(30)),
            timeout: Some(Duration::from_secs(120)),
            linger: Duration::from_secs(30),
            max_queued_packets: 4096,
            trust_peer_resets: true,
        }
    }
}

/// Stable identifier of a connection in a [`Stack`]. Never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(u64);

impl ConnId {
    /// The raw number (for logs).
    pub fn as_u64(self) -> u64 {
        self.0
    }
}

/// Errors from [`Stack`] operations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// Port 0, or a port already used for something else.
    InvalidPort(u16),
    /// Every ephemeral port (49152-65535) is in use.
    NoFreePort,
    /// `max_sockets` reached.
    TooManySockets,
    /// smoltcp refused the connect (e.g. no source address for that family).
    Unaddressable,
    /// No such connection (already released).
    UnknownConnection(ConnId),
    /// The splice has no free token.
    SpliceFull,
    /// Registering a stream with the mio registry failed.
    Register(std::io::ErrorKind),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::InvalidPort(p) => write!(f, "invalid or busy port {p}"),
            Error::NoFreePort => f.write_str("no free ephemeral port"),
            Error::TooManySockets => f.write_str("socket limit reached"),
            Error::Unaddressable => f.write_str("destination not addressable from this stack"),
            Error::UnknownConnection(id) => write!(f, "unknown connection {}", id.0),
            Error::SpliceFull => f.write_str("no free splice slot"),
            Error::Register(k) => write!(f, "registering the stream failed: {k}"),
        }
    }
}

impl std::error::Error for Error {}

/// Packet counters of a [`Stack`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StackStats {
    /// Inbound packets accepted into the rx queue.
    pub rx_packets: u64,
    /// Inbound packets dropped by the filter (not TCP, or a port that is
    /// neither listened on nor the local port of an outbound connection).
    pub rx_filtered: u64,
    /// Inbound packets dropped because the rx queue was full.
    pub rx_queue_full: u64,
    /// Duplicate SYNs dropped (their connection already exists).
    pub rx_dup_syn: u64,
    /// Packets handed to the caller.
    pub tx_packets: u64,
}

/// Listening sockets for one port.
#[derive(Debug)]
struct Pool {
    port: u16,
    /// Sockets in LISTEN.
    idle: Vec<SocketHandle>,
    /// Sockets that got a SYN and are in the middle of the handshake.
    embryonic: Vec<SocketHandle>,
}

#[derive(Debug)]
struct Conn {
    handle: SocketHandle,
    /// The local port to give back when this was an outbound connection.
    out_port: Option<u16>,
}

/// A released socket finishing its close handshake in the background.
#[derive(Debug)]
struct Lingering {
    handle: SocketHandle,
    out_port: Option<u16>,
    deadline: Instant,
}

const EPHEMERAL_FIRST: u16 = 49152;

/// User-space TCP endpoint over in-memory packet queues (sans-IO).
///
/// The owner pushes decrypted inner IP packets with
/// [`push_inbound`](Self::push_inbound), calls
/// [`poll_ingress`](Self::poll_ingress), moves application bytes (see
/// [`crate::Splice`]), calls [`poll_egress`](Self::poll_egress), and takes
/// the packets to encrypt with [`drain_outbound`](Self::drain_outbound) or
/// [`pop_outbound`](Self::pop_outbound). It then sleeps at most
/// [`poll_delay`](Self::poll_delay).
///
/// Filtering: only TCP segments to a listened port, or to the local port
/// of one of this stack's outbound connections, reach smoltcp; everything
/// else is dropped without any reply (no RST, no ICMP). On listened ports
/// the stack behaves like ordinary TCP: a stray segment for a closed
/// connection, or a SYN beyond `max_sockets`, gets an RST. That is
/// acceptable because only admitted peers reach the stack at all.
pub struct Stack {
    iface: Interface,
    sockets: SocketSet<'static>,
    dev: QueueDevice,
    cfg: StackConfig,
    epoch: Instant,
    pools: Vec<Pool>,
    listen_ports: PortSet,
    out_ports: PortSet,
    conns: HashMap<ConnId, Conn>,
    accepted: VecDeque<ConnId>,
    lingering: Vec<Lingering>,
    /// Sockets of every kind, for `max_sockets`.
    socket_count: usize,
    next_id: u64,
    next_port: u16,
    stats: StackStats,
}

impl std::fmt::Debug for Stack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stack")
            .field("addresses", &self.cfg.addresses)
            .field("connections", &self.conns.len())
            .field("lingering", &self.lingering.len())
            .field("sockets", &self.socket_count)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Stack {
    /// Builds a stack. Panics if `cfg.addresses` is empty, holds a
    /// non-unicast address, or holds more addresses than smoltcp's build
    /// allows (2 by default).
    pub fn new(cfg: StackConfig) -> Stack {
        assert!(!cfg.addresses.is_empty(), "a stack needs an address");
        let mut dev = QueueDevice::new(cfg.mtu, cfg.max_queued_packets.max(1));
        let mut config = Config::new(HardwareAddress::Ip);
        // smoltcp derives initial sequence numbers from this seed.
        config.random_seed = {
            let mut h = RandomState::new().build_hasher();
            h.write_u64(0x6875_7368_6761_7465);
            h.finish()
        };
        let epoch = Instant::now();
        let mut iface = Interface::new(config, &mut dev, smoltcp::time::Instant::ZERO);
        iface.set_any_ip(cfg.any_ip);
        iface.update_ip_addrs(|addrs| {
            for a in &cfg.addresses {
                let cidr = match a {
                    IpAddr::V4(_) => IpCidr::new(IpAddress::from(*a), 32),
                    IpAddr::V6(_) => IpCidr::new(IpAddress::from(*a), 128),
                };
                addrs.push(cidr).expect("too many addresses for smoltcp");
            }
        });
        // Medium IP has no neighbours, but smoltcp still wants a route for
        // every destination before it sends; "everything via ourselves"
        // makes every peer address reachable.
        let v4 = cfg.addresses.iter().find_map(|a| match a {
            IpAddr::V4(v) => Some(*v),
            IpAddr::V6(_) => None,
        });
        let v6 = cfg.addresses.iter().find_map(|a| match a {
            IpAddr::V6(v) => Some(*v),
            IpAddr::V4(_) => None,
        });
        if let Some(v4) = v4 {
            iface
                .routes_mut()
                .add_default_ipv4_route(v4)
                .expect("route table full");
        }
        if let Some(v6) = v6 {
            iface
                .routes_mut()
                .add_default_ipv6_route(v6)
                .expect("route table full");
        }
        Stack {
            iface,
            sockets: SocketSet::new(Vec::new()),
            dev,
            epoch,
            pools: Vec::new(),
            listen_ports: PortSet::new(),
            out_ports: PortSet::new(),
            conns: HashMap::new(),
            accepted: VecDeque::new(),
            lingering: Vec::new(),
            socket_count: 0,
            next_id: 1,
            next_port: EPHEMERAL_FIRST,
            stats: StackStats::default(),
            cfg,
        }
    }

    /// The configuration this stack was built with.
    pub fn config(&self) -> &StackConfig {
        &self.cfg
    }

    /// Packet counters.
    pub fn stats(&self) -> StackStats {
        self.stats
    }

    fn ts(&self, now: Instant) -> smoltcp::time::Instant {
        let micros = now.saturating_duration_since(self.epoch).as_micros();
        smoltcp::time::Instant::from_micros(i64::try_from(micros).unwrap_or(i64::MAX))
    }

    // ----- listening -------------------------------------------------------

    /// Starts accepting connections on `port` (any of the stack's
    /// addresses, any peer address) with a pool of
    /// `listener_pool` listeners that is refilled as connections arrive.
    pub fn listen(&mut self, port: u16) -> Result<(), Error> {
        if port == 0 || self.out_ports.contains(port) {
            return Err(Error::InvalidPort(port));
        }
        if self.listen_ports.contains(port) {
            return Ok(());
        }
        self.listen_ports.insert(port);
        self.pools.push(Pool {
            port,
            idle: Vec::new(),
            embryonic: Vec::new(),
        });
        let i = self.pools.len() - 1;
        self.refill(i);
        Ok(())
    }

    /// Stops accepting on `port`. Handshakes in progress are aborted;
    /// accepted connections keep working. The filter closes the port at
    /// once if no accepted connection uses it, otherwise it stays open (new
    /// SYNs then get RST instead of silence) until the port is listened on
    /// and unlistened again.
    pub fn unlisten(&mut self, port: u16) {
        let Some(i) = self.pools.iter().position(|p| p.port == port) else {
            return;
        };
        let pool = self.pools.swap_remove(i);
        for h in pool.idle {
            self.sockets.remove(h);
            self.socket_count -= 1;
        }
        let deadline = Instant::now() + self.cfg.linger;
        for h in pool.embryonic {
            self.sockets.get_mut::<tcp::Socket>(h).abort();
            self.lingering.push(Lingering {
                handle: h,
                out_port: None,
                deadline,
            });
        }
        // Keep the port open in the filter while accepted connections on it
        // still exist, so they are not cut off.
        let still_used = self
            .conns
            .values()
            .any(|c| c.out_port.is_none() && self.local_port_of(c.handle) == Some(port));
        if !still_used {
            self.listen_ports.remove(port);
        }
    }

    fn local_port_of(&self, h: SocketHandle) -> Option<u16> {
        self.sockets
            .get::<tcp::Socket>(h)
            .local_endpoint()
            .map(|e| e.port)
    }

    /// Next accepted (established) connection, oldest first.
    pub fn accept(&mut self) -> Option<ConnId> {
        self.accepted.pop_front()
    }

    /// Tops up pool `i` and moves listeners whose state changed.
    fn refill(&mut self, i: usize) {
        let Stack {
            pools,
            sockets,
            conns,
            accepted,
            lingering,
            next_id,
            cfg,
            socket_count,
            ..
        } = self;
        let pool = &mut pools[i];
        // Listeners that received a SYN are no longer available.
        let mut k = 0;
        while k < pool.idle.len() {
            if sockets.get::<tcp::Socket>(pool.idle[k]).state() == tcp::State::Listen {
                k += 1;
            } else {
                let h = pool.idle.swap_remove(k);
                pool.embryonic.push(h);
            }
        }
        // Handshakes that finished (or failed).
        let mut k = 0;
        while k < pool.embryonic.len() {
            let h = pool.embryonic[k];
            let s = sockets.get::<tcp::Socket>(h);
            match s.state() {
                tcp::State::SynReceived => k += 1,
                // An RST during the handshake puts smoltcp's socket back in
                // LISTEN: it is an ordinary idle listener again.
                tcp::State::Listen => {
                    pool.embryonic.swap_remove(k);
                    pool.idle.push(h);
                }
                tcp::State::Closed => {
                    pool.embryonic.swap_remove(k);
                    if s.local_endpoint().is_none() {
                        sockets.remove(h);
                        *socket_count -= 1;
                    } else {
                        // An RST is still queued; let egress send it.
                        lingering.push(Lingering {
                            handle: h,
                            out_port: None,
                            deadline: Instant::now() + cfg.linger,
                        });
                    }
                }
                // Established, or already past it (data and FIN arrived
                // with the handshake's last ACK): hand it to the owner.
                _ => {
                    pool.embryonic.swap_remove(k);
                    let id = ConnId(*next_id);
                    *next_id += 1;
                    conns.insert(
                        id,
                        Conn {
                            handle: h,
                            out_port: None,
                        },
                    );
                    accepted.push_back(id);
                }
            }
        }
        let port = pool.port;
        while pool.idle.len() < cfg.listener_pool && *socket_count < cfg.max_sockets {
            let mut s = new_socket(cfg);
            s.listen(IpListenEndpoint { addr: None, port })
                .expect("fresh socket listens");
            pool.idle.push(sockets.add(s));
            *socket_count += 1;
        }
    }

    fn refill_all(&mut self) {
        for i in 0..self.pools.len() {
            self.refill(i);
        }
    }

    // ----- connecting ------------------------------------------------------

    /// Opens a connection to `remote` from an ephemeral local port
    /// (49152-65535, round robin, skipping ports in use). The connection is
    /// usable (data accepted by `send`) once it is established; the SYN
    /// leaves at the next [`poll_egress`](Self::poll_egress).
    pub fn connect(&mut self, remote: SocketAddr) -> Result<ConnId, Error> {
        let port = self.alloc_port()?;
        self.connect_from(port, remote)
    }

    /// Opens a connection to `remote` from the given local port.
    pub fn connect_from(&mut self, local_port: u16, remote: SocketAddr) -> Result<ConnId, Error> {
        if local_port == 0
            || self.out_ports.contains(local_port)
            || self.listen_ports.contains(local_port)
        {
            return Err(Error::InvalidPort(local_port));
        }
        if self.socket_count >= self.cfg.max_sockets {
            return Err(Error::TooManySockets);
        }
        let mut s = new_socket(&self.cfg);
        s.connect(self.iface.context(), remote, local_port)
            .map_err(|_| Error::Unaddressable)?;
        let handle = self.sockets.add(s);
        self.socket_count += 1;
        self.out_ports.insert(local_port);
        let id = self.new_id();
        self.conns.insert(
            id,
            Conn {
                handle,
                out_port: Some(local_port),
            },
        );
        Ok(id)
    }

    fn new_id(&mut self) -> ConnId {
        let id = ConnId(self.next_id);
        self.next_id += 1;
        id
    }

    fn alloc_port(&mut self) -> Result<u16, Error> {
        for _ in 0..=(u16::MAX - EPHEMERAL_FIRST) {
            let p = self.next_port;
            self.next_port = if p == u16::MAX {
                EPHEMERAL_FIRST
            } else {
                p + 1
            };
            if !self.out_ports.contains(p) && !self.listen_ports.contains(p) {
                return Ok(p);
            }
        }
        Err(Error::NoFreePort)
    }

    // ----- connections -----------------------------------------------------

    /// The smoltcp socket of a connection, for reading/writing data and
    /// inspecting its state.
    pub fn socket(&self, id: ConnId) -> Option<&tcp::Socket<'static>> {
        let c = self.conns.get(&id)?;
        Some(self.sockets.get::<tcp::Socket>(c.handle))
    }

    /// Mutable access to the smoltcp socket of a connection.
    pub fn socket_mut(&mut self, id: ConnId) -> Option<&mut tcp::Socket<'static>> {
        let c = self.conns.get(&id)?;
        Some(self.sockets.get_mut::<tcp::Socket>(c.handle))
    }

    /// The peer's address and port (`None` for an unknown connection or one
    /// that has already been reset).
    pub fn remote_endpoint(&self, id: ConnId) -> Option<SocketAddr> {
        self.socket(id)?.remote_endpoint().map(SocketAddr::from)
    }

    /// Our address and port of a connection.
    pub fn local_endpoint(&self, id: ConnId) -> Option<SocketAddr> {
        self.socket(id)?.local_endpoint().map(SocketAddr::from)
    }

    /// Ids of all connections not yet released.
    pub fn connections(&self) -> impl Iterator<Item = ConnId> + '_ {
        self.conns.keys().copied()
    }

    /// TCP sockets of every kind (listeners, handshakes, connections,
    /// released ones still closing).
    pub fn socket_count(&self) -> usize {
        self.socket_count
    }

    /// Number of connections not yet released.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Sends FIN after the queued data (half-close of our sending side).
    pub fn close(&mut self, id: ConnId) -> Result<(), Error> {
        self.socket_mut(id)
            .ok_or(Error::UnknownConnection(id))?
            .close();
        Ok(())
    }

    /// Aborts a connection: one RST goes out at the next egress.
    pub fn abort(&mut self, id: ConnId) -> Result<(), Error> {
        self.socket_mut(id)
            .ok_or(Error::UnknownConnection(id))?
            .abort();
        Ok(())
    }

    /// The owner is done with `id`. The connection is closed gracefully
    /// (FIN after queued data) unless it was aborted, and the stack keeps the
    /// socket until the close handshake ends or `linger` passes, then frees
    /// it. The id becomes unknown at once.
    pub fn release(&mut self, id: ConnId) {
        let Some(c) = self.conns.remove(&id) else {
            return;
        };
        self.accepted.retain(|a| *a != id);
        let s = self.sockets.get_mut::<tcp::Socket>(c.handle);
        s.close();
        if s.state() == tcp::State::Closed && s.local_endpoint().is_none() {
            self.free_socket(c.handle, c.out_port);
        } else {
            self.lingering.push(Lingering {
                handle: c.handle,
                out_port: c.out_port,
                deadline: Instant::now() + self.cfg.linger,
            });
        }
    }

    fn free_socket(&mut self, h: SocketHandle, out_port: Option<u16>) {
        self.sockets.remove(h);
        self.socket_count -= 1;
        if let Some(p) = out_port {
            self.out_ports.remove(p);
        }
    }

    /// Aborts every connection (and handshake) whose peer address is
    /// `peer`: each gets one RST at the next egress. Connections stay in
    /// the table (their state reads `Closed`) until their owner releases
    /// them; ones accepted but not yet taken by [`accept`](Self::accept) are
    /// released here. Returns how many connections were aborted.
    pub fn abort_peer(&mut self, peer: IpAddr) -> usize {
        let target = IpAddress::from(peer);
        let mut n = 0;
        let is_peer = |s: &tcp::Socket| s.remote_endpoint().is_some_and(|e| e.addr == target);
        for c in self.conns.values() {
            let s = self.sockets.get_mut::<tcp::Socket>(c.handle);
            if is_peer(s) {
                s.abort();
                n += 1;
            }
        }
        let unclaimed: Vec<ConnId> = self
            .accepted
            .iter()
            .copied()
            .filter(|id| {
                self.socket(*id)
                    .is_some_and(|s| s.state() == tcp::State::Closed)
            })
            .collect();
        for id in unclaimed {
            self.release(id);
        }
        for pool in &mut self.pools {
            for &h in &pool.embryonic {
                let s = self.sockets.get_mut::<tcp::Socket>(h);
                if is_peer(s) {
                    s.abort();
                }
            }
        }
        for l in &self.lingering {
            let s = self.sockets.get_mut::<tcp::Socket>(l.handle);
            if is_peer(s) {
                s.abort();
            }
        }
        n
    }

    // ----- packets ---------------------------------------------------------

    /// Queues one inbound IP packet (copied into a pooled buffer). Returns
    /// false if it was dropped: not a TCP segment for a port and an address
    /// of ours, or the queue is full.
    pub fn push_inbound(&mut self, pkt: &[u8]) -> bool {
        match parse_tcp(pkt) {
            Some(m) if self.port_allowed(&m) && self.addressed_to_us(&m) => {
                if m.rst && self.cfg.trust_peer_resets {
                    self.abort_matching(&m);
                }
            }
            _ => {
                self.stats.rx_filtered += 1;
                return false;
            }
        }
        if self.dev.push_rx(pkt) {
            self.stats.rx_packets += 1;
            true
        } else {
            self.stats.rx_queue_full += 1;
            false
        }
    }

    /// Aborts the connection a reset belongs to, whatever its sequence
    /// number. smoltcp follows RFC 5961 and drops a reset that is not
    /// exactly at the expected sequence number, which defends a TCP
    /// connection on an open network against blind injection. Inside a
    /// WireGuard tunnel only the authenticated peer can send at all, and
    /// its reset may legitimately be off by a zero-window probe (a gateway
    /// ending a revoked client's connections while the player reads
    /// slowly); dropping it would leave the player hanging. Resets are
    /// rare, so the linear search is fine.
    fn abort_matching(&mut self, m: &TcpMeta) {
        let src = IpAddress::from(m.src);
        for c in self.conns.values() {
            let s = self.sockets.get_mut::<tcp::Socket>(c.handle);
            let matches = s
                .remote_endpoint()
                .is_some_and(|e| e.addr == src && e.port == m.src_port)
                && s.local_endpoint().is_some_and(|e| e.port == m.dst_port);
            if matches && s.state() != tcp::State::Listen {
                s.abort();
            }
        }
    }

    /// smoltcp takes a TCP segment sent to a broadcast address as its own
    /// (and would answer it from that address); only the stack's own
    /// addresses are (unless `any_ip`).
    fn addressed_to_us(&self, m: &TcpMeta) -> bool {
        self.cfg.any_ip || self.cfg.addresses.contains(&m.dst)
    }

    fn port_allowed(&self, m: &TcpMeta) -> bool {
        self.listen_ports.contains(m.dst_port) || self.out_ports.contains(m.dst_port)
    }

    /// True if packets are waiting to be taken.
    pub fn has_outbound(&self) -> bool {
        !self.dev.tx.is_empty()
    }

    /// Takes the oldest outbound packet. Give the buffer back with
    /// [`recycle`](Self::recycle) to keep the steady state allocation-free.
    pub fn pop_outbound(&mut self) -> Option<Vec<u8>> {
        let p = self.dev.pop_tx()?;
        self.stats.tx_packets += 1;
        Some(p)
    }

    /// Returns a buffer obtained from [`pop_outbound`](Self::pop_outbound).
    pub fn recycle(&mut self, buf: Vec<u8>) {
        self.dev.recycle_tx(buf);
    }

    /// Hands every queued outbound packet to `f`, oldest first, recycling
    /// the buffers. Returns how many packets were drained.
    pub fn drain_outbound(&mut self, mut f: impl FnMut(&[u8])) -> usize {
        let mut n = 0;
        while let Some(p) = self.dev.pop_tx() {
            f(&p);
            self.dev.recycle_tx(p);
            n += 1;
        }
        self.stats.tx_packets += n as u64;
        n
    }

    // ----- polling ---------------------------------------------------------

    /// Feeds every queued inbound packet to smoltcp, one at a time
    /// (`poll_ingress_single`), running an egress pass every `ack_every`
    /// segments so senders see regular ACKs. Then accepts finished
    /// handshakes and refills listener pools. Returns true if any packet
    /// was processed.
    ///
    /// Call [`poll_egress`](Self::poll_egress) after moving application
    /// data, so the ACKs it sends advertise the window freed by reading.
    pub fn poll_ingress(&mut self, now: Instant) -> bool {
        let ts = self.ts(now);
        let mut processed = false;
        let mut since_egress = 0usize;
        while let Some(front) = self.dev.rx.front() {
            let mut syn_pool = None;
            if let Some(m) = parse_tcp(front) {
                if m.syn && !m.ack && self.listen_ports.contains(m.dst_port) {
                    // smoltcp offers a SYN to the first socket that accepts
                    // it; an idle listener would take a retransmitted SYN
                    // of a handshake already in progress and create a
                    // second socket for the same 4-tuple. Drop duplicates;
                    // our SYN-ACK retransmission recovers the handshake.
                    if self.tuple_in_use(&m) {
                        self.dev.drop_front_rx();
                        self.stats.rx_dup_syn += 1;
                        continue;
                    }
                    syn_pool = self.pools.iter().position(|p| p.port == m.dst_port);
                }
            }
            let _ = self
                .iface
                .poll_ingress_single(ts, &mut self.dev, &mut self.sockets);
            processed = true;
            if let Some(i) = syn_pool {
                // Refill at once, not after the batch: a burst of SYNs
                // larger than the pool would otherwise be reset.
                self.refill(i);
            }
            since_egress += 1;
            if self.cfg.ack_every > 0 && since_egress >= self.cfg.ack_every {
                since_egress = 0;
                let _ = self.iface.poll_egress(ts, &mut self.dev, &mut self.sockets);
            }
        }
        if processed {
            self.refill_all();
        }
        processed
    }

    fn tuple_in_use(&self, m: &TcpMeta) -> bool {
        let src = IpAddress::from(m.src);
        let same = |h: SocketHandle| {
            let s = self.sockets.get::<tcp::Socket>(h);
            match (s.remote_endpoint(), s.local_endpoint()) {
                (Some(r), Some(l)) => r.addr == src && r.port == m.src_port && l.port == m.dst_port,
                _ => false,
            }
        };
        self.pools
            .iter()
            .filter(|p| p.port == m.dst_port)
            .any(|p| p.embryonic.iter().any(|&h| same(h)))
            || self.conns.values().any(|c| same(c.handle))
            || self.lingering.iter().any(|l| same(l.handle))
    }

    /// Lets smoltcp emit everything it can (data, ACKs, window updates,
    /// retransmissions, RSTs) into the outbound queue, then frees released
    /// sockets whose close finished.
    pub fn poll_egress(&mut self, now: Instant) {
        let ts = self.ts(now);
        // Each pass sends at most one segment per socket: loop until quiet
        // (or the outbound queue is full).
        while matches!(
            self.iface.poll_egress(ts, &mut self.dev, &mut self.sockets),
            smoltcp::iface::PollResult::SocketStateChanged
        ) {}
        self.sweep(now);
        // A handshake can also finish without new packets (e.g. it timed
        // out); keep the pools honest.
        self.refill_all();
    }

    /// Ingress then egress, for owners with no application data to move in
    /// between (tests, or a stack with only idle connections).
    pub fn poll(&mut self, now: Instant) {
        self.poll_ingress(now);
        self.poll_egress(now);
    }

    fn sweep(&mut self, now: Instant) {
        let mut k = 0;
        while k < self.lingering.len() {
            let l = &self.lingering[k];
            let s = self.sockets.get_mut::<tcp::Socket>(l.handle);
            let done = match s.state() {
                // TIME-WAIT only guards against a lost final ACK; the peer
                // is an admitted client, so an RST for a retransmitted FIN
                // is acceptable and the memory is worth more.
                tcp::State::TimeWait => true,
                tcp::State::Closed => s.local_endpoint().is_none(),
                _ => {
                    if now >= l.deadline {
                        s.abort();
                    }
                    false
                }
            };
            if done {
                let l = self.lingering.swap_remove(k);
                self.free_socket(l.handle, l.out_port);
            } else {
                k += 1;
            }
        }
    }

    /// How long the owner may sleep before the next poll, if nothing
    /// arrives: zero when packets are queued, `None` when only new packets
    /// can change anything.
    pub fn poll_delay(&mut self, now: Instant) -> Option<Duration> {
        if !self.dev.rx.is_empty() {
            return Some(Duration::ZERO);
        }
        let ts = self.ts(now);
        let mut d = self
            .iface
            .poll_delay(ts, &self.sockets)
            .map(|d| Duration::from_micros(d.total_micros()));
        if let Some(first) = self.lingering.iter().map(|l| l.deadline).min() {
            let l = first.saturating_duration_since(now);
            d = Some(d.map_or(l, |d| d.min(l)));
        }
        d
    }
}

/// A socket with all the settings applied. Buffers are sized here, before
/// any listen/connect, because smoltcp fixes the window-scale factor from
/// the receive buffer when the socket is created.
fn new_socket(cfg: &StackConfig) -> tcp::Socket<'static> {
    let rx = tcp::SocketBuffer::new(vec![0u8; cfg.tcp_rx_buffer]);
    let tx = tcp::SocketBuffer::new(vec![0u8; cfg.tcp_tx_buffer]);
    let mut s = tcp::Socket::new(rx, tx);
    s.set_nagle_enabled(false);
    s.set_ack_delay(cfg.ack_delay.map(to_smol));
    s.set_congestion_control(cfg.congestion.into());
    s.set_keep_alive(cfg.keep_alive.map(to_smol));
    s.set_timeout(cfg.timeout.map(to_smol));
    s
}

fn to_smol(d: Duration) -> smoltcp::time::Duration {
    smoltcp::time::Duration::from_micros(u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}
