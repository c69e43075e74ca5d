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

use crate::device::{PortSet, QueueDevice};
use crate::wire::{self, TcpHeaders};

/// Congestion controller for every TCP socket of a [`Stack`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Congestion {
    /// No congestion control: only the peer's receive window limits sending.
    None,
    /// NewReno, with byte counting.
    Reno,
    /// CUBIC, with byte counting.
    Cubic,
    /// BBR: paces at the measured bottleneck bandwidth and keeps about two
    /// bandwidth-delay products in flight; random loss does not cut its
    /// rate and it builds no standing queue (see docs/architecture.md,
    /// "TCP over lossy paths").
    Bbr,
}

impl From<Congestion> for tcp::CongestionControl {
    fn from(c: Congestion) -> Self {
        match c {
            Congestion::None => tcp::CongestionControl::None,
            Congestion::Reno => tcp::CongestionControl::Reno,
            Congestion::Cubic => tcp::CongestionControl::Cubic,
            Congestion::Bbr => tcp::CongestionControl::Bbr,
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
    /// Initial receive buffer per TCP connection. Default 256 KiB.
    pub tcp_rx_buffer: usize,
    /// Initial send buffer per TCP connection; it bounds the bytes in
    /// flight until it grows. Default 256 KiB.
    pub tcp_tx_buffer: usize,
    /// The receive buffer of a connection doubles, up to this size, while
    /// its peer fills the window it is offered and the application keeps
    /// the buffer drained (buffer autotuning). The window scale is chosen
    /// for this size when the socket is created. Default 32 MiB: one
    /// stream can keep 1 Gbit/s in flight over a 250 ms round trip.
    pub tcp_rx_buffer_max: usize,
    /// The send buffer of a connection doubles, up to this size, while all
    /// of it is in flight and the congestion and peer windows would take
    /// more. Default 32 MiB.
    pub tcp_tx_buffer_max: usize,
    /// Bytes all the buffer growth of this stack may take together (beyond
    /// the initial sizes); a connection gives its share back when it is
    /// freed. With the defaults a stack's TCP buffers never exceed
    /// `max_sockets` x 512 KiB (the initial sizes; pages are touched only
    /// as data flows through them) plus this. Default 256 MiB.
    pub tcp_buffer_budget: usize,
    /// Growth one peer address's connections may take together, out of
    /// `tcp_buffer_budget`, so one client cannot take all of it (see
    /// [`Stack::peer_usage`]). Default 64 MiB: two streams at the full
    /// 32 MiB each, a quarter of the stack's budget.
    pub tcp_buffer_budget_per_peer: usize,
    /// Connections one peer address may hold at once, counting every
    /// state the stack keeps a socket for: handshakes in progress, open
    /// connections, and released ones still closing. A SYN beyond it is
    /// answered with RST, the way a port that takes no more connections
    /// answers, so the peer's connect fails at once instead of hanging
    /// through SYN retransmissions. Connections this stack opens itself
    /// ([`Stack::connect`]) are not counted. Default 128.
    pub max_connections_per_peer: usize,
    /// Handshakes one peer address may have in progress (SYN received,
    /// final ACK not yet). A SYN beyond it is dropped without a reply, like
    /// a server whose SYN queue is full: the peer sends it again a second
    /// later, when its earlier handshakes have finished. Default 16.
    pub max_pending_per_peer: usize,
    /// Idle listening sockets kept per listened port (a smoltcp listener
    /// accepts exactly one connection). Default 8.
    pub listener_pool: usize,
    /// Upper bound on TCP sockets of all kinds (listeners, handshakes,
    /// connections, closing ones). A SYN beyond it is answered with RST.
    /// Default 1024.
    pub max_sockets: usize,
    /// Each socket acknowledges, while an inbound batch is processed, as
    /// soon as this many full-sized segments are unacknowledged (and the
    /// first segments of a connection one by one, like Linux's quick-ack);
    /// whatever is left is acknowledged by the egress pass that ends every
    /// wake-up. At Internet rates a wake-up carries one or two segments, so
    /// the peer gets an ACK every one or two segments, as RFC 9293 asks.
    /// Within a large batch (a LAN, a busy machine) ACKs made during
    /// ingress leave with the batch anyway, so more of them only cost CPU
    /// (each is encrypted and sent): this bounds how much one ACK covers,
    /// like Linux acknowledging per GRO batch. 0: only at egress.
    /// Default 16 (measured: `client-shim/benches/shim.rs` carried one
    /// stream 15-25 % slower with 2, and the simulations in
    /// `tests/lossy.rs` did not improve).
    pub ack_every: u8,
    /// smoltcp's delayed-ACK timer. Default `None`: batching already
    /// coalesces ACKs (one per socket per egress pass), and a delayed ACK
    /// would only add latency.
    pub ack_delay: Option<Duration>,
    /// Default [`Congestion::Bbr`].
    pub congestion: Congestion,
    /// Floor of the retransmission timeout. Default 200 ms (Linux's; RFC
    /// 6298's 1 s turns every tail loss into a second of silence).
    pub rto_min: Duration,
    /// Pace transmissions at the congestion controller's rate, in quanta
    /// of about 1 ms of data. Default true.
    pub pacing: bool,
    /// Tail loss probes (RFC 8985): a lost tail is found two round trips
    /// after the last ACK rather than at the retransmission timeout.
    /// Default true.
    pub tail_loss_probe: bool,
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
            tcp_rx_buffer: 256 << 10,
            tcp_tx_buffer: 256 << 10,
            tcp_rx_buffer_max: 32 << 20,
            tcp_tx_buffer_max: 32 << 20,
            tcp_buffer_budget: 256 << 20,
            tcp_buffer_budget_per_peer: 64 << 20,
            max_connections_per_peer: 128,
            max_pending_per_peer: 16,
            listener_pool: 8,
            max_sockets: 1024,
            ack_every: 16,
            ack_delay: None,
            congestion: Congestion::Bbr,
            rto_min: Duration::from_millis(200),
            pacing: true,
            tail_loss_probe: true,
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
    /// SYNs answered with RST because their peer held
    /// `max_connections_per_peer` connections.
    pub syn_over_connection_limit: u64,
    /// SYNs dropped because their peer had `max_pending_per_peer`
    /// handshakes in progress.
    pub syn_over_pending_limit: u64,
}

/// What one peer address holds in a [`Stack`] ([`Stack::peer_usage`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerUsage {
    /// Sockets held for the peer: handshakes, open connections and
    /// released ones still closing (the count `max_connections_per_peer`
    /// bounds).
    pub connections: usize,
    /// Handshakes in progress (bounded by `max_pending_per_peer`).
    pub pending: usize,
    /// Bytes its connections' buffers have grown by beyond their initial
    /// sizes (bounded by `tcp_buffer_budget_per_peer`).
    pub buffer_growth: usize,
}

/// Accepted connections per peer address, so that one peer cannot take
/// every socket, every handshake slot or the whole buffer budget. Touched
/// only by SYNs and by sockets changing hands, never by other packets.
#[derive(Debug, Default)]
struct Peers {
    map: HashMap<IpAddr, PeerUse>,
}

#[derive(Debug)]
struct PeerUse {
    held: usize,
    pending: usize,
    /// The peer's share of the stack's budget; its sockets draw on it.
    budget: tcp::BufferBudget,
    share: usize,
}

impl Peers {
    fn usage(&self, peer: IpAddr) -> PeerUsage {
        self.map
            .get(&peer)
            .map_or(PeerUsage::default(), |u| PeerUsage {
                connections: u.held,
                pending: u.pending,
                buffer_growth: u.share.saturating_sub(u.budget.available()),
            })
    }

    /// A handshake from `peer` began: one more socket and handshake held.
    /// Returns the budget its socket's growth must draw on.
    fn begin(
        &mut self,
        peer: IpAddr,
        whole: &tcp::BufferBudget,
        share: usize,
    ) -> tcp::BufferBudget {
        let u = self.map.entry(peer).or_insert_with(|| PeerUse {
            held: 0,
            pending: 0,
            budget: whole.share(share),
            share,
        });
        u.held += 1;
        u.pending += 1;
        u.budget.clone()
    }

    /// A handshake of `peer` ended, with a connection (or a socket still
    /// closing) that stays held, or not.
    fn end_handshake(&mut self, peer: Option<IpAddr>, still_held: bool) {
        if let Some(u) = peer.and_then(|p| self.map.get_mut(&p)) {
            u.pending -= 1;
        }
        if !still_held {
            self.release(peer);
        }
    }

    /// A socket of `peer` was freed.
    fn release(&mut self, peer: Option<IpAddr>) {
        let Some(p) = peer else {
            return;
        };
        if let Some(u) = self.map.get_mut(&p) {
            u.held -= 1;
            if u.held == 0 {
                self.map.remove(&p);
            }
        }
    }
}

/// Listening sockets for one port.
#[derive(Debug)]
struct Pool {
    port: u16,
    /// Sockets in LISTEN.
    idle: Vec<SocketHandle>,
    /// Sockets that got a SYN and are in the middle of the handshake.
    embryonic: Vec<Embryo>,
}

/// A listener that received a SYN, and from which peer.
#[derive(Debug, Clone, Copy)]
struct Embryo {
    handle: SocketHandle,
    peer: Option<IpAddr>,
}

#[derive(Debug)]
struct Conn {
    handle: SocketHandle,
    /// The local port to give back when this was an outbound connection.
    out_port: Option<u16>,
    /// The peer it is counted against (accepted connections only).
    peer: Option<IpAddr>,
}

/// A released socket finishing its close handshake in the background.
#[derive(Debug)]
struct Lingering {
    handle: SocketHandle,
    out_port: Option<u16>,
    peer: Option<IpAddr>,
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
///
/// Per-peer limits: the peer address of an accepted connection is counted
/// against `max_connections_per_peer` (a SYN beyond it gets an RST),
/// `max_pending_per_peer` (a SYN beyond it is dropped) and
/// `tcp_buffer_budget_per_peer` (its buffers stop growing), so one client
/// cannot hold every socket or the whole budget. The checks cost a hash
/// lookup per SYN and nothing for other segments.
pub struct Stack {
    iface: Interface,
    sockets: SocketSet<'static>,
    dev: QueueDevice,
    cfg: StackConfig,
    epoch: Instant,
    /// The latest time the owner passed in: deadlines set outside a poll
    /// (release) count from it rather than from the real clock.
    now: Instant,
    pools: Vec<Pool>,
    listen_ports: PortSet,
    out_ports: PortSet,
    conns: HashMap<ConnId, Conn>,
    accepted: VecDeque<ConnId>,
    lingering: Vec<Lingering>,
    /// Sockets of every kind, for `max_sockets`.
    socket_count: usize,
    /// What the buffer growth of all sockets may take together.
    budget: tcp::BufferBudget,
    peers: Peers,
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
        Stack::new_at(cfg, Instant::now())
    }

    /// Builds a stack whose clock starts at `epoch`. Every operation takes
    /// the time as an argument and the stack never reads the clock itself,
    /// so a simulation can drive it with a virtual clock (an `epoch` and
    /// later instants computed from it) and get the same run every time.
    pub fn new_at(cfg: StackConfig, epoch: Instant) -> Stack {
        assert!(!cfg.addresses.is_empty(), "a stack needs an address");
        let mut dev = QueueDevice::new(cfg.mtu, cfg.max_queued_packets.max(1));
        let mut config = Config::new(HardwareAddress::Ip);
        // smoltcp derives initial sequence numbers from this seed.
        config.random_seed = {
            let mut h = RandomState::new().build_hasher();
            h.write_u64(0x6875_7368_6761_7465);
            h.finish()
        };
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
            now: epoch,
            pools: Vec::new(),
            listen_ports: PortSet::new(),
            out_ports: PortSet::new(),
            conns: HashMap::new(),
            accepted: VecDeque::new(),
            lingering: Vec::new(),
            socket_count: 0,
            budget: tcp::BufferBudget::new(cfg.tcp_buffer_budget),
            peers: Peers::default(),
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

    /// What `peer` holds now: sockets, handshakes, buffer growth.
    pub fn peer_usage(&self, peer: IpAddr) -> PeerUsage {
        self.peers.usage(peer)
    }

    /// Every peer address holding at least one socket, with its usage.
    pub fn peers(&self) -> impl Iterator<Item = (IpAddr, PeerUsage)> + '_ {
        self.peers.map.keys().map(|&p| (p, self.peers.usage(p)))
    }

    /// Bytes of the stack's buffer budget (`tcp_buffer_budget`) not taken
    /// by buffer growth.
    pub fn buffer_budget_available(&self) -> usize {
        self.budget.available()
    }

    fn ts(&mut self, now: Instant) -> smoltcp::time::Instant {
        self.now = self.now.max(now);
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
            now,
            budget,
            peers,
            ..
        } = self;
        let pool = &mut pools[i];
        // Listeners that received a SYN are no longer available; they now
        // count against their peer, and grow from its share of the budget.
        let mut k = 0;
        while k < pool.idle.len() {
            let s = sockets.get_mut::<tcp::Socket>(pool.idle[k]);
            if s.state() == tcp::State::Listen {
                k += 1;
            } else {
                let handle = pool.idle.swap_remove(k);
                let peer = s.remote_endpoint().map(|e| IpAddr::from(e.addr));
                if let Some(p) = peer {
                    let share = peers.begin(p, budget, cfg.tcp_buffer_budget_per_peer);
                    // A listener has not grown, so this cannot fail.
                    s.set_buffer_budget(Some(share));
                }
                pool.embryonic.push(Embryo { handle, peer });
            }
        }
        // Handshakes that finished (or failed).
        let mut k = 0;
        while k < pool.embryonic.len() {
            let Embryo { handle: h, peer } = pool.embryonic[k];
            let s = sockets.get_mut::<tcp::Socket>(h);
            match s.state() {
                tcp::State::SynReceived => k += 1,
                // An RST during the handshake puts smoltcp's socket back in
                // LISTEN: it is an ordinary idle listener again.
                tcp::State::Listen => {
                    pool.embryonic.swap_remove(k);
                    peers.end_handshake(peer, false);
                    s.set_buffer_budget(Some(budget.clone()));
                    pool.idle.push(h);
                }
                tcp::State::Closed => {
                    pool.embryonic.swap_remove(k);
                    if s.local_endpoint().is_none() {
                        sockets.remove(h);
                        *socket_count -= 1;
                        peers.end_handshake(peer, false);
                    } else {
                        // An RST is still queued; let egress send it.
                        peers.end_handshake(peer, true);
                        lingering.push(Lingering {
                            handle: h,
                            out_port: None,
                            peer,
                            deadline: *now + cfg.linger,
                        });
                    }
                }
                // Established, or already past it (data and FIN arrived
                // with the handshake's last ACK): hand it to the owner.
                _ => {
                    pool.embryonic.swap_remove(k);
                    peers.end_handshake(peer, true);
                    let id = ConnId(*next_id);
                    *next_id += 1;
                    conns.insert(
                        id,
                        Conn {
                            handle: h,
                            out_port: None,
                            peer,
                        },
                    );
                    accepted.push_back(id);
                }
            }
        }
        let port = pool.port;
        while pool.idle.len() < cfg.listener_pool && *socket_count < cfg.max_sockets {
            let mut s = new_socket(cfg, budget);
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
        let mut s = new_socket(&self.cfg, &self.budget);
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
                peer: None,
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
            self.free_socket(c.handle, c.out_port, c.peer);
        } else {
            self.lingering.push(Lingering {
                handle: c.handle,
                out_port: c.out_port,
                peer: c.peer,
                deadline: self.now + self.cfg.linger,
            });
        }
    }

    fn free_socket(&mut self, h: SocketHandle, out_port: Option<u16>, peer: Option<IpAddr>) {
        self.sockets.remove(h);
        self.socket_count -= 1;
        self.peers.release(peer);
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
            for e in &pool.embryonic {
                let s = self.sockets.get_mut::<tcp::Socket>(e.handle);
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
        match wire::tcp(pkt) {
            Some(m) if self.port_allowed(&m) && self.addressed_to_us(&m) => {
                if m.rst() && self.cfg.trust_peer_resets {
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
    fn abort_matching(&mut self, m: &TcpHeaders<IpAddr>) {
        let src = IpAddress::from(m.source);
        for c in self.conns.values() {
            let s = self.sockets.get_mut::<tcp::Socket>(c.handle);
            let matches = s
                .remote_endpoint()
                .is_some_and(|e| e.addr == src && e.port == m.source_port)
                && s.local_endpoint()
                    .is_some_and(|e| e.port == m.destination_port);
            if matches && s.state() != tcp::State::Listen {
                s.abort();
            }
        }
    }

    /// smoltcp takes a TCP segment sent to a broadcast address as its own
    /// (and would answer it from that address); only the stack's own
    /// addresses are (unless `any_ip`).
    fn addressed_to_us(&self, m: &TcpHeaders<IpAddr>) -> bool {
        self.cfg.any_ip || self.cfg.addresses.contains(&m.destination)
    }

    fn port_allowed(&self, m: &TcpHeaders<IpAddr>) -> bool {
        self.listen_ports.contains(m.destination_port)
            || self.out_ports.contains(m.destination_port)
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
    /// (`poll_ingress_single`); sockets acknowledge from here every
    /// `ack_every` segments. Then accepts finished handshakes and refills
    /// listener pools. Returns true if any packet was processed.
    ///
    /// Call [`poll_egress`](Self::poll_egress) after moving application
    /// data, so the ACKs it sends advertise the window freed by reading.
    pub fn poll_ingress(&mut self, now: Instant) -> bool {
        let ts = self.ts(now);
        let mut processed = false;
        // Segments processed since the pools were last looked at: one of
        // them may have finished (or failed) a handshake.
        let mut unrefilled = false;
        while let Some(front) = self.dev.rx.front() {
            let mut syn_pool = None;
            if let Some(m) = wire::tcp(front) {
                if m.syn() && !m.ack() && self.listen_ports.contains(m.destination_port) {
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
                    // One peer may not hold every socket nor flood the
                    // handshake slots (see `max_connections_per_peer`,
                    // `max_pending_per_peer` for why RST vs. drop).
                    let mut u = self.peers.usage(m.source);
                    let full = |u: &PeerUsage, c: &StackConfig| {
                        u.connections >= c.max_connections_per_peer
                            || u.pending >= c.max_pending_per_peer
                    };
                    if full(&u, &self.cfg) && unrefilled {
                        // Handshakes completed (or failed) by segments
                        // earlier in this batch are counted at the next
                        // refill; do it now before refusing anything. (At
                        // most once per other segment: a SYN flood alone
                        // costs no scans.)
                        self.refill_all();
                        unrefilled = false;
                        u = self.peers.usage(m.source);
                    }
                    if u.connections >= self.cfg.max_connections_per_peer {
                        self.dev.refuse_front_rx();
                        self.stats.syn_over_connection_limit += 1;
                        continue;
                    }
                    if u.pending >= self.cfg.max_pending_per_peer {
                        self.dev.drop_front_rx();
                        self.stats.syn_over_pending_limit += 1;
                        continue;
                    }
                    syn_pool = self.pools.iter().position(|p| p.port == m.destination_port);
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
            } else {
                unrefilled = true;
            }
        }
        if processed {
            self.refill_all();
        }
        processed
    }

    fn tuple_in_use(&self, m: &TcpHeaders<IpAddr>) -> bool {
        let src = IpAddress::from(m.source);
        let same = |h: SocketHandle| {
            let s = self.sockets.get::<tcp::Socket>(h);
            match (s.remote_endpoint(), s.local_endpoint()) {
                (Some(r), Some(l)) => {
                    r.addr == src && r.port == m.source_port && l.port == m.destination_port
                }
                _ => false,
            }
        };
        self.pools
            .iter()
            .filter(|p| p.port == m.destination_port)
            .any(|p| p.embryonic.iter().any(|e| same(e.handle)))
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
                self.free_socket(l.handle, l.out_port, l.peer);
            } else {
                k += 1;
            }
        }
    }

    /// How long the owner may sleep before the next poll, if nothing
    /// arrives: zero when packets are queued, `None` when only new packets
    /// can change anything. It covers every timer of every socket: delayed
    /// ACKs, retransmission, tail loss probe and reordering timers, and the
    /// pacer (data held back until its next quantum may leave).
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

/// A socket with all the settings applied. Autotuning is set here, before
/// any listen/connect, because smoltcp fixes the window-scale factor (from
/// the largest the receive buffer may grow to) when the connection opens.
fn new_socket(cfg: &StackConfig, budget: &tcp::BufferBudget) -> tcp::Socket<'static> {
    let rx = tcp::SocketBuffer::new(vec![0u8; cfg.tcp_rx_buffer]);
    let tx = tcp::SocketBuffer::new(vec![0u8; cfg.tcp_tx_buffer]);
    let mut s = tcp::Socket::new(rx, tx);
    s.set_buffer_autotune(
        cfg.tcp_rx_buffer_max,
        cfg.tcp_tx_buffer_max,
        Some(budget.clone()),
    );
    s.set_nagle_enabled(false);
    s.set_ack_delay(cfg.ack_delay.map(to_smol));
    s.set_congestion_control(cfg.congestion.into());
    s.set_ack_every((cfg.ack_every > 0).then_some(cfg.ack_every));
    s.set_rto_min(to_smol(cfg.rto_min));
    s.set_pacing(cfg.pacing);
    s.set_tail_loss_probe(cfg.tail_loss_probe);
    s.set_keep_alive(cfg.keep_alive.map(to_smol));
    s.set_timeout(cfg.timeout.map(to_smol));
    s
}

fn to_smol(d: Duration) -> smoltcp::time::Duration {
    smoltcp::time::Duration::from_micros(u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}
