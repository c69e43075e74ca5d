//! The gateway's data path: one thread that owns the UDP socket, the
//! [`Dispatcher`], the user-space TCP [`Stack`] and every spliced upstream
//! connection, so nothing on the packet path takes a lock.
//!
//! Each wake-up is one batch: drain every readable datagram through the
//! dispatcher (dropping strangers before any cryptography), hand the
//! decrypted packets to the stack, accept new tunnelled connections and
//! connect them upstream, copy bytes between the stack and the kernel
//! sockets, let the stack emit, encrypt what it emitted, and send. The
//! thread then sleeps until a socket is ready or the earliest of the
//! stack's and WireGuard's timers; there is no fixed tick.
//!
//! The loop (poll, waker, command channel) is netstack's [`Driver`];
//! [`Forwarder`] is the gateway's work on top of it, [`DataPath`] the two
//! together for the thread that runs them.

use crate::dispatch::{Dispatcher, Outbox, Output, PeerEvent};
use crate::feed::{FeedChange, FeedChangeRef};
use crate::limits::{PeerLimits, TcpStats};
use mio::event::Event;
use mio::{Interest, Registry, Token};
use netstack::driver::{self, Driver, Flow, Handler, Wake};
use netstack::udp::UdpIo;
use netstack::{Splice, Stack, StackConfig};
use proto::feed::FeedState;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

/// Token 0 is the driver's waker.
const UDP: Token = Token(1);
const SPLICE_BASE: usize = 16;
/// Spliced connections the gateway holds at most (all clients together).
const MAX_CONNECTIONS: usize = 4096;
/// Datagrams read per wake-up before the stack gets a turn, so a flood
/// cannot starve established connections.
const RECV_BATCH: usize = 1024;

/// What the rest of the gateway asks of the data path.
#[derive(Debug)]
pub enum Command {
    /// Take in a feed change (tunnel admissions only: the whole desired
    /// set, or a diff on top of what is held) received from the feed at
    /// the `Instant` (admission deadlines count from there, as in the
    /// pre-filter and the direct proxy); answer with the version applied.
    Apply(FeedChange, Instant, tokio::sync::oneshot::Sender<u64>),
    /// Report counters.
    Stats(tokio::sync::oneshot::Sender<crate::GatewayStats>),
    Shutdown,
}

/// Sends [`Command`]s to the data-path thread (and wakes it), from any
/// thread; `send` is false when the data path has stopped.
pub type DataPathCommands = driver::Sender<Command>;

/// The data-path thread's loop ([`Driver`]) and its work (`Forwarder`).
pub struct DataPath {
    driver: Driver<Command>,
    forwarder: Forwarder,
}

/// What each wake-up of the data path does, and everything it owns.
struct Forwarder {
    /// The driver's registry (a clone), for the UDP socket and splices.
    registry: Registry,
    udp: UdpIo,
    /// What the UDP socket is registered for.
    interest: Interest,
    /// The UDP socket signalled readiness in this wake-up.
    udp_ready: bool,
    /// Datagrams left in the socket by the last wake-up's budget.
    backlog: bool,
    dispatcher: Dispatcher,
    /// Made on the first feed state, which names the service address.
    stack: Option<Stack>,
    splice: Splice,
    /// Service port inside the tunnel -> upstream address.
    upstreams: HashMap<u16, SocketAddr>,
    /// The service ports, sorted: a connection's splice tag is its
    /// service's index here (the metrics count per service).
    service_ports: Vec<u16>,
    /// Per service (same index): upstream connects that failed.
    upstream_failures: Vec<u64>,
    outbox: Outbox,
    /// What each client may hold in the stack.
    peer_limits: PeerLimits,
    /// Told when a first-handshake admission is pinned to a source (the
    /// kernel pre-filter must admit that source from then on).
    pinned: Option<PinSink>,
}

/// Receives `(admission id, source)` for each first-handshake pinning.
pub type PinSink = tokio::sync::mpsc::UnboundedSender<(String, IpAddr)>;

impl std::fmt::Debug for DataPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataPath").finish_non_exhaustive()
    }
}

impl DataPath {
    pub fn new(
        mut udp: UdpIo,
        dispatcher: Dispatcher,
        upstreams: HashMap<u16, SocketAddr>,
    ) -> std::io::Result<(DataPath, DataPathCommands)> {
        let (driver, control) = Driver::new()?;
        let registry = driver.registry().try_clone()?;
        let interest = Interest::READABLE;
        registry.register(&mut udp, UDP, interest)?;
        let mut service_ports: Vec<u16> = upstreams.keys().copied().collect();
        service_ports.sort_unstable();
        let upstream_failures = vec![0; service_ports.len()];
        let forwarder = Forwarder {
            registry,
            udp,
            interest,
            udp_ready: false,
            backlog: false,
            dispatcher,
            stack: None,
            splice: Splice::new(SPLICE_BASE, MAX_CONNECTIONS),
            upstreams,
            service_ports,
            upstream_failures,
            outbox: Outbox::with_capacity(256 * 1024, 512),
            peer_limits: PeerLimits::default(),
            pinned: None,
        };
        Ok((DataPath { driver, forwarder }, control))
    }

    /// Sets what each client may hold in the TCP stack (for stacks made
    /// from now on: call it before `run`).
    pub fn set_peer_limits(&mut self, limits: PeerLimits) {
        self.forwarder.peer_limits = limits;
    }

    /// Tells `sink` whenever a first-handshake admission is pinned.
    pub fn on_pinned(&mut self, sink: PinSink) {
        self.forwarder.pinned = Some(sink);
    }

    /// Runs until `Command::Shutdown` or every [`DataPathCommands`] is gone.
    pub fn run(mut self) -> std::io::Result<()> {
        self.driver.run(&mut self.forwarder)?;
        let f = &mut self.forwarder;
        if let Some(stack) = f.stack.as_mut() {
            f.splice.close_all(stack, &f.registry);
        }
        Ok(())
    }
}

impl Handler for Forwarder {
    type Command = Command;

    fn wake(&mut self, now: Instant) -> Wake {
        if self.backlog {
            return Wake::NOW;
        }
        Wake::IDLE
            .at(now, self.dispatcher.poll_timeout())
            .after(self.stack.as_mut().and_then(|s| s.poll_delay(now)))
    }

    fn ready(&mut self, event: &Event) {
        if event.token() == UDP {
            self.udp_ready = true;
        } else {
            self.splice.on_event(event);
        }
    }

    fn command(&mut self, command: Command, now: Instant) -> std::io::Result<Flow> {
        Ok(self.handle_command(command, now))
    }

    fn batch(&mut self, now: Instant) -> std::io::Result<()> {
        if std::mem::take(&mut self.udp_ready) || self.backlog {
            self.backlog = self.receive(now);
        }
        // Admissions that expire now (without a feed change: the
        // control plane may be unreachable) say goodbye first, like
        // those the feed removes.
        let expiring: Vec<IpAddr> = self
            .dispatcher
            .admissions()
            .expiring(now)
            .map(|a| IpAddr::V4(a.client_address()))
            .collect();
        self.say_goodbye(expiring, now);
        self.dispatcher.handle_timers(now, &mut self.outbox);
        self.route_outbox();
        self.handle_peer_events();
        self.run_stack(now);
        if let Err(e) = self.udp.flush() {
            tracing::debug!(error = %e, "udp send failed");
        }
        // Ask for writability only while sends are waiting.
        let want = if self.udp.has_pending() {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        if want != self.interest {
            self.interest = want;
            self.registry.reregister(&mut self.udp, UDP, want)?;
        }
        Ok(())
    }
}

impl Forwarder {
    /// Carries out one command; `Flow::Stop` when the data path must stop.
    fn handle_command(&mut self, command: Command, now: Instant) -> Flow {
        match command {
            Command::Apply(change, received, done) => {
                self.take_feed(change.as_ref(), received, now, done);
            }
            Command::Stats(reply) => {
                let mut stats = self.dispatcher.stats(now);
                if let Some(stack) = self.stack.as_ref() {
                    stats.tcp = Some(TcpStats::of(stack));
                    for p in &mut stats.peers {
                        p.tcp = stack.peer_usage(IpAddr::V4(p.client_address)).into();
                    }
                }
                let tags = self.splice.tag_totals();
                stats.services = self
                    .service_ports
                    .iter()
                    .enumerate()
                    .map(|(i, &port)| {
                        let t = tags.get(i).copied().unwrap_or_default();
                        crate::ServiceTraffic {
                            port,
                            connections: t.attached,
                            open: t.live,
                            upstream_failures: self.upstream_failures[i],
                            bytes_to_upstream: t.to_kernel,
                            bytes_from_upstream: t.to_tunnel,
                        }
                    })
                    .collect();
                let _ = reply.send(stats);
            }
            Command::Shutdown => return Flow::Stop,
        }
        Flow::Continue
    }

    /// Applies one feed change: the stack for its service address first,
    /// then goodbyes to the clients whose admissions it ends while their
    /// tunnels exist, then the admission table (its deadlines counted from
    /// `received`); answers with the version.
    fn take_feed(
        &mut self,
        change: FeedChangeRef<'_>,
        received: Instant,
        now: Instant,
        done: tokio::sync::oneshot::Sender<u64>,
    ) {
        let header = change.header();
        self.ensure_stack(header);
        let leaving = self.leaving(change);
        self.say_goodbye(leaving, now);
        let outcome = self.dispatcher.apply(change, received);
        tracing::debug!(
            version = header.version,
            added = outcome.added.len(),
            removed = outcome.removed.len(),
            "feed applied"
        );
        let _ = done.send(header.version);
    }

    /// The client addresses of admissions that `change` ends: those a
    /// whole set no longer holds, or those a diff removes.
    fn leaving(&self, change: FeedChangeRef<'_>) -> Vec<IpAddr> {
        let table = self.dispatcher.admissions();
        match change {
            FeedChangeRef::Whole(state) => {
                let staying: std::collections::HashSet<&str> =
                    state.admissions.iter().map(|a| a.id.as_str()).collect();
                table
                    .iter()
                    .filter(|a| !staying.contains(a.id()))
                    .map(|a| IpAddr::V4(a.client_address()))
                    .collect()
            }
            FeedChangeRef::Diff { removed, .. } => removed
                .iter()
                .filter_map(|id| table.by_id(id))
                .map(|a| IpAddr::V4(a.client_address()))
                .collect(),
        }
    }

    /// Before peers leave (revoked, or expired), resets their connections
    /// and sends those resets through the tunnel while it still exists, so
    /// the client's player sees its connections end at once rather than
    /// when its own timers give up.
    fn say_goodbye(&mut self, leaving: Vec<IpAddr>, now: Instant) {
        if leaving.is_empty() {
            return;
        }
        let Some(stack) = self.stack.as_mut() else {
            return;
        };
        for addr in leaving {
            self.splice.close_all_for(stack, &self.registry, addr);
        }
        stack.poll_egress(now);
        let dispatcher = &mut self.dispatcher;
        let outbox = &mut self.outbox;
        stack.drain_outbound(|pkt| {
            dispatcher.handle_farewell(pkt, now, outbox);
        });
        route(outbox, &mut self.udp, None);
        if let Err(e) = self.udp.flush() {
            tracing::debug!(error = %e, "udp send failed");
        }
    }

    fn ensure_stack(&mut self, state: &FeedState) {
        let addr = IpAddr::V4(state.service_address);
        if self
            .stack
            .as_ref()
            .is_some_and(|s| s.config().addresses.first() == Some(&addr))
        {
            return;
        }
        if let Some(old) = self.stack.as_mut() {
            self.splice.close_all(old, &self.registry);
        }
        let mut cfg = StackConfig::new(addr);
        self.peer_limits.apply(&mut cfg);
        let mut stack = Stack::new(cfg);
        for port in self.upstreams.keys() {
            if let Err(e) = stack.listen(*port) {
                tracing::error!(port, error = %e, "cannot listen inside the tunnel");
            }
        }
        self.stack = Some(stack);
    }

    /// Reads and dispatches datagrams until the socket is empty or this
    /// wake-up's budget is spent. Returns true when it stopped on the
    /// budget: the socket is edge-triggered and will not signal again for
    /// data already queued, so the caller must come back without sleeping.
    fn receive(&mut self, now: Instant) -> bool {
        let dispatcher = &mut self.dispatcher;
        let outbox = &mut self.outbox;
        let udp = &mut self.udp;
        let stack = &mut self.stack;
        let mut total = 0;
        loop {
            let got = udp.recv_batch(64, |src, datagram| {
                dispatcher.handle_datagram(src, datagram, now, outbox);
            });
            // Route after every batch so the outbox stays small.
            route(outbox, udp, stack.as_mut());
            match got {
                Ok(0) => return false,
                Ok(n) => {
                    total += n;
                    if total >= RECV_BATCH {
                        return true;
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "udp receive failed");
                    return false;
                }
            }
        }
    }

    fn route_outbox(&mut self) {
        route(&mut self.outbox, &mut self.udp, self.stack.as_mut());
    }

    fn handle_peer_events(&mut self) {
        while let Some(ev) = self.dispatcher.poll_event() {
            match ev {
                PeerEvent::Removed {
                    client_address,
                    admission_id,
                    cause,
                    ..
                } => {
                    if let Some(stack) = self.stack.as_mut() {
                        let n = self.splice.close_all_for(
                            stack,
                            &self.registry,
                            IpAddr::V4(client_address),
                        );
                        tracing::info!(admission = %admission_id, ?cause, closed = n, "peer removed");
                    }
                }
                PeerEvent::Installed { admission_id, .. } => {
                    tracing::info!(admission = %admission_id, "peer installed");
                }
                PeerEvent::HandshakeCompleted { peer, endpoint } => {
                    tracing::debug!(%endpoint, "handshake completed");
                    let pinned = self
                        .dispatcher
                        .admissions()
                        .get(peer)
                        .filter(|a| a.binding() == proto::BindingPolicy::FirstHandshake)
                        .map(|a| a.id().to_string());
                    if let (Some(id), Some(sink)) = (pinned, self.pinned.as_ref()) {
                        let _ = sink.send((id, endpoint.ip().to_canonical()));
                    }
                }
            }
        }
    }

    fn run_stack(&mut self, now: Instant) {
        let Some(stack) = self.stack.as_mut() else {
            return;
        };
        stack.poll_ingress(now);
        while let Some(id) = stack.accept() {
            let port = stack.local_endpoint(id).map(|e| e.port());
            let upstream = port.and_then(|p| self.upstreams.get(&p)).copied();
            let (Some(upstream), Some(tag)) = (
                upstream,
                port.and_then(|p| self.service_ports.binary_search(&p).ok()),
            ) else {
                let _ = stack.abort(id);
                continue;
            };
            match mio::net::TcpStream::connect(upstream) {
                Ok(stream) => {
                    let _ = stream.set_nodelay(true);
                    if let Err(e) =
                        self.splice
                            .attach_tagged(&self.registry, stack, id, stream, tag)
                    {
                        tracing::warn!(error = %e, "cannot splice a new connection");
                        let _ = stack.abort(id);
                    }
                }
                Err(e) => {
                    self.upstream_failures[tag] += 1;
                    tracing::warn!(%upstream, error = %e, "upstream connect failed");
                    let _ = stack.abort(id);
                }
            }
        }
        self.splice.pump(stack, &self.registry);
        stack.poll_egress(now);
        let dispatcher = &mut self.dispatcher;
        let outbox = &mut self.outbox;
        let udp = &mut self.udp;
        // Encrypt in bounded chunks: the stack can emit thousands of
        // packets after a large window opens.
        stack.drain_outbound(|pkt| {
            dispatcher.handle_outbound(pkt, now, outbox);
            if outbox.len() >= 256 {
                for out in outbox.iter() {
                    if let Output::Transmit { dst, datagram } = out {
                        udp.queue(dst, datagram);
                    }
                }
                outbox.clear();
            }
        });
        for out in outbox.iter() {
            if let Output::Transmit { dst, datagram } = out {
                udp.queue(dst, datagram);
            }
        }
        outbox.clear();
    }
}

/// Sends the outbox's datagrams and feeds its decrypted packets to the
/// stack, then empties it.
fn route(outbox: &mut Outbox, udp: &mut UdpIo, mut stack: Option<&mut Stack>) {
    for out in outbox.iter() {
        match out {
            Output::Transmit { dst, datagram } => udp.queue(dst, datagram),
            Output::Deliver { packet, .. } => {
                if let Some(s) = stack.as_deref_mut() {
                    s.push_inbound(packet);
                }
            }
        }
    }
    outbox.clear();
}
