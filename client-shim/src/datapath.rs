//! The data path: one dedicated thread that owns everything a packet
//! touches, so nothing on it takes a lock.
//!
//! It owns the mio `Poll`, the UDP socket, the local `TcpListener`, the
//! gateway's [`GatewayPeer`] (boringtun `Tunn`), the user-space TCP
//! [`Stack`] at the client's tunnel address and the [`Splice`] joining the
//! stack's connections to the player's local connections. Each wake-up is
//! one batch:
//!
//! 1. read every datagram waiting (up to a budget), drop those not from the
//!    gateway's endpoint unread, decrypt the rest into the stack;
//! 2. accept local connections: each becomes `stack.connect(service)`
//!    spliced to the local stream;
//! 3. `poll_ingress`, `splice.pump` (copy both ways), `poll_egress`;
//! 4. encrypt what the stack emitted (unless the socket is still
//!    blocked from the last flush: then smoltcp holds its segments, which
//!    is TCP backpressure rather than loss);
//! 5. run boringtun's timers when due and check the path for silence;
//! 6. flush, then sleep until readiness or the earliest of smoltcp's
//!    `poll_delay`, the next WireGuard timer and the path deadline.
//!
//! The loop itself is netstack's [`Driver`]; this module is its
//! [`Handler`], the per-batch work. The async side talks to it through the
//! driver's [`Sender`](netstack::driver::Sender) ([`DataPathHandle`]): a
//! new admission ([`Command::Install`], which
//! replaces the peer and the stack and resets connections of the old
//! one) or shutdown. It reports handshakes, stalls, losses, recoveries and
//! connections reset by the gateway's side as [`PathEvent`]s on an
//! unbounded tokio channel (a few per session, never per packet: resets
//! at most every [`RESET_REPORT_INTERVAL`]).

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use boringtun::x25519::StaticSecret;
use mio::event::Event;
use mio::net::TcpListener;
use mio::{Interest, Registry, Token};
use netstack::driver::{self, Driver, Flow, Handler, Wake};
use netstack::{wire, Splice, Stack, StackConfig, UdpIo};
use tokio::sync::mpsc::UnboundedSender;

use crate::access_answer::TunnelParams;
use crate::path_monitor::{PathTimeouts, PathVerdict};
use crate::peer::{Decap, GatewayPeer};

/// Token 0 is the driver's waker.
const UDP: Token = Token(1);
const LISTENER: Token = Token(2);
const SPLICE_BASE: usize = 16;
/// Local connections open at once.
const MAX_CONNECTIONS: usize = 1024;
/// Datagrams read per `recv_batch` call.
const RECV_BATCH: usize = 64;
/// Datagrams handled per wake-up before the other work gets a turn; more
/// waiting means the next sleep is zero.
const RECV_BUDGET: usize = 1024;
/// Local connections accepted per wake-up.
const ACCEPT_BUDGET: usize = 64;
/// Enough for any datagram and for boringtun's 148-byte handshakes.
const BUF_LEN: usize = 65_536;
/// Least time between two [`PathEvent::Reset`] reports.
const RESET_REPORT_INTERVAL: Duration = Duration::from_millis(250);

/// Settings of the data path.
#[derive(Debug, Clone)]
pub(crate) struct DataPathConfig {
    pub(crate) timeouts: PathTimeouts,
    /// Stack settings for a given client address (buffers, congestion).
    pub(crate) stack: fn(IpAddr) -> StackConfig,
}

impl Default for DataPathConfig {
    fn default() -> Self {
        DataPathConfig {
            timeouts: PathTimeouts::default(),
            stack: StackConfig::new,
        }
    }
}

/// A new admission for the data path.
pub(crate) struct Install {
    /// Numbers each admission of a session; events carry it so the async
    /// side can ignore news about a tunnel it has already replaced.
    pub(crate) generation: u64,
    pub(crate) params: TunnelParams,
    /// The session's ephemeral private key. It moves into boringtun and
    /// never leaves the process.
    pub(crate) secret: StaticSecret,
}

impl std::fmt::Debug for Install {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Install")
            .field("generation", &self.generation)
            .field("admission", &self.params.admission_id)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
pub(crate) enum Command {
    Install(Box<Install>),
    Shutdown,
}

/// What the data path tells the async side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PathEvent {
    /// The first handshake with this admission's gateway peer completed.
    Connected { generation: u64 },
    /// The gateway has been silent for a moment while we wait for it.
    Stalled { generation: u64 },
    /// The gateway has been silent for the loss timeout.
    Lost { generation: u64 },
    /// A path reported lost answers again.
    Recovered { generation: u64 },
    /// The gateway's side reset a connection inside the tunnel. The
    /// gateway does that to every open connection of a peer it removes
    /// (revocation, grant removed): worth asking the control plane at
    /// once rather than waiting for a silence. At most one per
    /// [`RESET_REPORT_INTERVAL`].
    Reset { generation: u64 },
    /// The data path stopped on an I/O error.
    Failed(String),
    /// The data path thread has finished: the local port is closed and
    /// every local connection reset. Always the last event.
    Stopped,
}

/// The async side's end of the data path: send commands, stop the thread.
#[derive(Debug)]
pub(crate) struct DataPathHandle {
    commands: DataPathCommands,
    thread: Option<JoinHandle<()>>,
    local_addr: SocketAddr,
}

/// A cloneable sender of commands; `send` returns false once the data
/// path has stopped.
pub(crate) type DataPathCommands = driver::Sender<Command>;

impl DataPathHandle {
    /// Starts the data path thread with its first admission. `listener`
    /// is already bound (so "port in use" was reported before any
    /// control plane call).
    pub(crate) fn spawn(
        listener: std::net::TcpListener,
        first: Install,
        config: DataPathConfig,
        events: UnboundedSender<PathEvent>,
    ) -> io::Result<DataPathHandle> {
        let local_addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let (driver, commands) = Driver::new()?;
        let mut dp = DataPath::new(
            driver.registry().try_clone()?,
            TcpListener::from_std(listener),
            first.params.gateway_endpoint,
            config,
            events,
        )?;
        dp.install(first, false, Instant::now())?;
        let thread = std::thread::Builder::new()
            .name("hushgate-shim-data".into())
            .spawn(move || dp.run(driver))?;
        Ok(DataPathHandle {
            commands,
            thread: Some(thread),
            local_addr,
        })
    }

    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub(crate) fn commands(&self) -> DataPathCommands {
        self.commands.clone()
    }

    /// Stops the thread and waits for it: afterwards the listener is
    /// closed and every local connection has been reset.
    pub(crate) fn shutdown(&mut self) {
        self.commands.send(Command::Shutdown);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for DataPathHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The tunnel of one admission: its peer, its stack, where connections go.
struct Link {
    generation: u64,
    peer: GatewayPeer,
    stack: Stack,
    service: SocketAddr,
    service_address: Ipv4Addr,
}

struct DataPath {
    /// The driver's registry (a clone).
    registry: Registry,
    /// A fresh socket per admission: after a change of network the old
    /// one may be bound to a vanished address, and the family must match
    /// the gateway's.
    udp: UdpIo,
    listener: TcpListener,
    splice: Splice,
    link: Option<Link>,
    report: UnboundedSender<PathEvent>,
    config: DataPathConfig,
    /// Scratch for decryption (one datagram at a time).
    rx_buf: Box<[u8]>,
    /// Scratch for encryption.
    tx_buf: Box<[u8]>,
    /// Replies produced while reading a batch (the socket is borrowed
    /// then): bytes back to back, and their lengths.
    replies: Vec<u8>,
    reply_lens: Vec<usize>,
    /// Edge-triggered readiness not yet used up.
    udp_readable: bool,
    listener_ready: bool,
    /// The last flush left datagrams queued (the kernel buffer was full):
    /// produce no more until the socket is writable.
    tx_blocked: bool,
    /// Local connections are accepted only while the path is believed
    /// good: during a loss they wait in the kernel's backlog for the next
    /// admission instead of being sent into a dead tunnel.
    accepting: bool,
    /// Datagrams from anyone but the gateway (dropped unread).
    foreign_datagrams: u64,
    /// When the last [`PathEvent::Reset`] was reported.
    last_reset_report: Option<Instant>,
}

impl Handler for DataPath {
    type Command = Command;

    fn wake(&mut self, now: Instant) -> Wake {
        if self.udp_readable || (self.accepting && self.listener_ready && self.link.is_some()) {
            // Work is left over from a budget-limited pass.
            return Wake::NOW;
        }
        let Some(link) = self.link.as_mut() else {
            return Wake::IDLE;
        };
        Wake::IDLE
            .at(now, Some(link.peer.next_wakeup()))
            .after(link.stack.poll_delay(now))
            .now_if(!self.tx_blocked && link.stack.has_outbound())
    }

    fn ready(&mut self, ev: &Event) {
        match ev.token() {
            UDP => {
                self.udp_readable |= ev.is_readable() || ev.is_error();
                if ev.is_writable() {
                    self.tx_blocked = false;
                }
            }
            LISTENER => self.listener_ready = true,
            _ => {
                self.splice.on_event(ev);
            }
        }
    }

    fn command(&mut self, command: Command, now: Instant) -> io::Result<Flow> {
        match command {
            Command::Install(inst) => self.install(*inst, true, now)?,
            Command::Shutdown => return Ok(Flow::Stop),
        }
        Ok(Flow::Continue)
    }

    fn batch(&mut self, now: Instant) -> io::Result<()> {
        self.receive(now)?;
        self.accept();
        if let Some(link) = self.link.as_mut() {
            link.stack.poll_ingress(now);
            self.splice.pump(&mut link.stack, &self.registry);
            link.stack.poll_egress(now);
        }
        self.transmit(now);
        self.timers(now);
        self.udp.flush()?;
        self.tx_blocked = self.udp.has_pending();
        Ok(())
    }
}

impl DataPath {
    fn new(
        registry: Registry,
        mut listener: TcpListener,
        first_endpoint: SocketAddr,
        config: DataPathConfig,
        report: UnboundedSender<PathEvent>,
    ) -> io::Result<DataPath> {
        registry.register(&mut listener, LISTENER, Interest::READABLE)?;
        let udp = bind_udp(first_endpoint, &registry)?;
        Ok(DataPath {
            registry,
            udp,
            listener,
            splice: Splice::new(SPLICE_BASE, MAX_CONNECTIONS),
            link: None,
            report,
            config,
            rx_buf: vec![0; BUF_LEN].into_boxed_slice(),
            tx_buf: vec![0; BUF_LEN].into_boxed_slice(),
            replies: Vec::new(),
            reply_lens: Vec::new(),
            udp_readable: false,
            listener_ready: true,
            tx_blocked: false,
            accepting: true,
            foreign_datagrams: 0,
            last_reset_report: None,
        })
    }

    /// Replaces the tunnel with a new admission's. Connections of the old
    /// one are reset on both sides: their inner address is gone.
    fn install(&mut self, inst: Install, rebind: bool, now: Instant) -> io::Result<()> {
        if let Some(mut old) = self.link.take() {
            self.splice.close_all(&mut old.stack, &self.registry);
        }
        let Install {
            generation,
            params,
            secret,
        } = inst;
        if rebind {
            let _ = self.registry.deregister(&mut self.udp);
            self.udp = bind_udp(params.gateway_endpoint, &self.registry)?;
        }
        self.udp_readable = true;
        let client_ip = IpAddr::V4(params.client_address);
        let stack = Stack::new((self.config.stack)(client_ip));
        let mut peer = GatewayPeer::new(
            secret,
            &params,
            self.config.timeouts,
            rand::random::<u32>(),
            now,
        );
        if let Some(init) = peer.initiate(now, &mut self.tx_buf) {
            self.udp.queue(peer.endpoint(), init);
        }
        tracing::debug!(
            admission = %params.admission_id,
            gateway = %params.gateway_endpoint,
            inner = %params.client_address,
            "tunnel installed"
        );
        self.link = Some(Link {
            generation,
            peer,
            stack,
            service: params.service_socket(),
            service_address: params.service_address,
        });
        self.accepting = true;
        self.listener_ready = true;
        Ok(())
    }

    fn run(mut self, mut driver: Driver<Command>) {
        if let Err(e) = driver.run(&mut self) {
            tracing::error!(error = %e, "data path stopped");
            let _ = self.report.send(PathEvent::Failed(e.to_string()));
        }
        self.close();
        // Dropping `self` closes the local listener; only then may the
        // session say it has ended (the port is free from that moment).
        let report = self.report.clone();
        drop(self);
        drop(driver);
        let _ = report.send(PathEvent::Stopped);
    }

    /// Reads and decrypts waiting datagrams into the stack.
    fn receive(&mut self, now: Instant) -> io::Result<()> {
        if !self.udp_readable {
            return Ok(());
        }
        let Some(link) = self.link.as_mut() else {
            return Ok(());
        };
        let DataPath {
            udp,
            rx_buf,
            replies,
            reply_lens,
            foreign_datagrams,
            report,
            accepting,
            ..
        } = self;
        let mut handled = 0;
        let mut handshake = false;
        let mut reset = false;
        loop {
            let n = udp.recv_batch(RECV_BATCH, |src, datagram| {
                if !link.peer.is_gateway(src) {
                    // Not even looked at: only the gateway talks to us.
                    *foreign_datagrams += 1;
                    return;
                }
                let (d, info) = link.peer.decapsulate(datagram, rx_buf);
                match d {
                    Decap::Packet(p) => {
                        // Only the gateway's service address may speak
                        // inside the tunnel.
                        if wire::ipv4_source(p) == Some(link.service_address) {
                            reset |= wire::is_tcp_reset(p);
                            link.stack.push_inbound(p);
                        }
                    }
                    Decap::Network(b) => {
                        replies.extend_from_slice(b);
                        reply_lens.push(b.len());
                    }
                    Decap::Nothing | Decap::Refused => {}
                }
                handshake |= info.handshake;
                if info.first_handshake {
                    let _ = report.send(PathEvent::Connected {
                        generation: link.generation,
                    });
                }
                if info.recovered {
                    *accepting = true;
                    let _ = report.send(PathEvent::Recovered {
                        generation: link.generation,
                    });
                }
            })?;
            handled += n;
            if n < RECV_BATCH {
                self.udp_readable = false;
                break;
            }
            if handled >= RECV_BUDGET {
                break;
            }
        }
        if reset
            && self
                .last_reset_report
                .is_none_or(|t| now.saturating_duration_since(t) >= RESET_REPORT_INTERVAL)
        {
            self.last_reset_report = Some(now);
            let _ = self.report.send(PathEvent::Reset {
                generation: link.generation,
            });
        }
        let endpoint = link.peer.endpoint();
        let mut off = 0;
        for len in self.reply_lens.drain(..) {
            self.udp.queue(endpoint, &self.replies[off..off + len]);
            off += len;
        }
        self.replies.clear();
        if handshake {
            while let Some(b) = link.peer.flush_queued(now, &mut self.tx_buf) {
                self.udp.queue(endpoint, b);
            }
        }
        Ok(())
    }

    /// Accepts local connections and sends each into the tunnel.
    fn accept(&mut self) {
        if !(self.accepting && self.listener_ready) {
            return;
        }
        let Some(link) = self.link.as_mut() else {
            return;
        };
        for _ in 0..ACCEPT_BUDGET {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.listener_ready = false;
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // E.g. EMFILE: leave the rest in the backlog for now.
                    tracing::warn!(error = %e, "cannot accept a local connection");
                    self.listener_ready = false;
                    return;
                }
            };
            let id = match link.stack.connect(link.service) {
                Ok(id) => id,
                Err(e) => {
                    tracing::warn!(error = %e, "no tunnel connection for a local connection");
                    continue;
                }
            };
            if let Err(e) = self.splice.attach(&self.registry, &link.stack, id, stream) {
                tracing::warn!(error = %e, "local connection refused");
                let _ = link.stack.abort(id);
                link.stack.release(id);
            }
        }
    }

    /// Encrypts what the stack emitted, while the socket takes it.
    fn transmit(&mut self, now: Instant) {
        let Some(link) = self.link.as_mut() else {
            return;
        };
        if self.tx_blocked {
            return;
        }
        let endpoint = link.peer.endpoint();
        while let Some(pkt) = link.stack.pop_outbound() {
            if let Some(b) = link.peer.encapsulate(&pkt, now, &mut self.tx_buf) {
                self.udp.queue(endpoint, b);
            }
            link.stack.recycle(pkt);
        }
    }

    fn timers(&mut self, now: Instant) {
        let Some(link) = self.link.as_mut() else {
            return;
        };
        if let Some(b) = link.peer.timers(now, &mut self.tx_buf) {
            self.udp.queue(link.peer.endpoint(), b);
        }
        let generation = link.generation;
        match link.peer.check_path(now) {
            PathVerdict::Fine => {}
            PathVerdict::Stalled => {
                if let Some(b) = link.peer.rehandshake(now, &mut self.tx_buf) {
                    self.udp.queue(link.peer.endpoint(), b);
                }
                let _ = self.report.send(PathEvent::Stalled { generation });
            }
            // Still silent: a gateway that restarted answers the first
            // initiation it gets once it is back (the supervisor's probe
            // meanwhile asks the control plane whether we moved or were
            // revoked).
            PathVerdict::Retry => {
                if let Some(b) = link.peer.rehandshake(now, &mut self.tx_buf) {
                    self.udp.queue(link.peer.endpoint(), b);
                }
            }
            PathVerdict::Lost => {
                tracing::debug!(
                    foreign = self.foreign_datagrams,
                    "no answer from the gateway"
                );
                self.accepting = false;
                let _ = self.report.send(PathEvent::Lost { generation });
            }
        }
    }

    /// Resets every local connection (and tells the gateway, if it still
    /// listens), then drops the sockets.
    fn close(&mut self) {
        if let Some(mut link) = self.link.take() {
            self.splice.close_all(&mut link.stack, &self.registry);
            let now = Instant::now();
            link.stack.poll_egress(now);
            let endpoint = link.peer.endpoint();
            while let Some(pkt) = link.stack.pop_outbound() {
                if let Some(b) = link.peer.encapsulate(&pkt, now, &mut self.tx_buf) {
                    self.udp.queue(endpoint, b);
                }
            }
            let _ = self.udp.flush();
        }
        let _ = &self.registry.deregister(&mut self.listener);
    }
}

/// A UDP socket of the gateway's address family on any local address,
/// registered with `poll`.
fn bind_udp(gateway: SocketAddr, registry: &Registry) -> io::Result<UdpIo> {
    let mut udp = UdpIo::bind(match gateway {
        SocketAddr::V4(_) => SocketAddr::from(([0, 0, 0, 0], 0)),
        SocketAddr::V6(_) => SocketAddr::from(([0u16; 8], 0)),
    })?;
    registry.register(&mut udp, UDP, Interest::READABLE | Interest::WRITABLE)?;
    Ok(udp)
}
