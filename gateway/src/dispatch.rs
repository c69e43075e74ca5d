//! The dispatcher: a multi-peer WireGuard endpoint on boringtun's `Tunn`,
//! with hushgate's admission rules in front of every cryptographic step.
//!
//! It is sans-IO. The driver feeds it datagrams from the UDP socket
//! ([`Dispatcher::handle_datagram`]), IP packets from the user-space TCP
//! stack ([`Dispatcher::handle_outbound`]), feed states
//! ([`Dispatcher::apply`]) and wake-ups ([`Dispatcher::handle_timers`] at
//! [`Dispatcher::poll_timeout`]); it collects what to send and what to hand
//! to the TCP stack in an [`Outbox`] the driver owns and reuses, and peer
//! lifecycle changes in [`Dispatcher::poll_event`]. Time is always passed
//! in; nothing here reads a clock, except boringtun's own session timers
//! inside `Tunn`, which stay behind this type.
//!
//! Order of checks on a datagram, cheapest and most discriminating first:
//! source address (one hash lookup, no reply to the unknown), shape, then
//! for handshake initiations the MAC and load check, the static-key lookup
//! (the first DH) and the source binding of that key's admission (under
//! load, the same key check, within its own budget, decides whether a
//! cookie reply is sent at all); for
//! everything else the receiver index (an array index) and the source
//! binding of that peer. Decrypted packets then pass the inner checks of
//! [`crate::tunnel_rule`].

use crate::admission::{
    Admission, AdmissionTable, ApplyOutcome, PeerId, Pinning, RemovalCause, SourceStatus,
    DEFAULT_PINNING_WINDOW,
};
use crate::feed::FeedChangeRef;
use crate::tunnel_rule;
use boringtun::noise::errors::WireGuardError;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{HandshakeInit, Packet, Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use netstack::wire;
use netstack::wire::wireguard::{
    self, looks_like_initiation, COOKIE_REPLY_LEN, DATA_OVERHEAD, HANDSHAKE_INIT_LEN,
    MSG_COOKIE_REPLY, MSG_HANDSHAKE_RESPONSE,
};
use proto::{BindingPolicy, WgKey};
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The largest datagram WireGuard can carry over UDP.
pub const MAX_DATAGRAM_LEN: usize = 65_535;

/// Handshake initiations per second the gateway answers with DH work
/// before it asks initiators to prove their address with a cookie first.
/// At ~218 us per responder handshake this caps handshakes at ~5% of a core.
pub const DEFAULT_HANDSHAKES_PER_SECOND: u64 = 250;

/// Under load, how many initiations per second may have their claimed
/// static key decrypted (one X25519, about a quarter of a responder
/// handshake) to decide whether they deserve a cookie reply. Beyond it an
/// initiation without a valid cookie gets silence; its sender retries in
/// 5 s. About as much work as [`DEFAULT_HANDSHAKES_PER_SECOND`] full
/// handshakes.
pub const DEFAULT_COOKIE_CHECKS_PER_SECOND: u64 = 4 * DEFAULT_HANDSHAKES_PER_SECOND;

/// How often boringtun's per-session timers (rekey, keepalive, session
/// expiry) are run: [`wireguard::TIMER_INTERVAL`].
pub const DEFAULT_TIMER_INTERVAL: Duration = wireguard::TIMER_INTERVAL;

/// `HandshakeCompleted` events are informational; past this many undrained
/// events they are no longer queued, so a driver that ignores them cannot
/// make memory grow with every handshake. Removals, and the handshake that
/// pins a first-handshake admission, are always queued.
const MAX_QUEUED_EVENTS: usize = 4096;

/// boringtun writes handshake messages (up to 148 bytes) into the same
/// buffer as data, so no scratch area may be smaller than that.
const MIN_SCRATCH: usize = HANDSHAKE_INIT_LEN;

/// How the dispatcher is set up; everything except the services has a
/// sensible default.
#[derive(Debug, Clone)]
pub struct DispatcherConfig {
    /// Service name (as the feed's admissions name them) to the TCP port it
    /// listens on at the service address.
    pub services: HashMap<String, u16>,
    /// How long a `first-handshake` admission waits for its first handshake.
    pub pinning_window: Duration,
    /// See [`DEFAULT_HANDSHAKES_PER_SECOND`].
    pub handshakes_per_second: u64,
    /// See [`DEFAULT_COOKIE_CHECKS_PER_SECOND`].
    pub cookie_checks_per_second: u64,
    /// See [`DEFAULT_TIMER_INTERVAL`].
    pub timer_interval: Duration,
    /// Datagrams longer than this are dropped as malformed, and outbound
    /// packets that would exceed it once encrypted are refused.
    pub max_datagram_len: usize,
}

impl DispatcherConfig {
    pub fn new<I, S>(services: I) -> Self
    where
        I: IntoIterator<Item = (S, u16)>,
        S: Into<String>,
    {
        DispatcherConfig {
            services: services.into_iter().map(|(n, p)| (n.into(), p)).collect(),
            ..DispatcherConfig::default()
        }
    }
}

impl Default for DispatcherConfig {
    fn default() -> Self {
        DispatcherConfig {
            services: HashMap::new(),
            pinning_window: DEFAULT_PINNING_WINDOW,
            handshakes_per_second: DEFAULT_HANDSHAKES_PER_SECOND,
            cookie_checks_per_second: DEFAULT_COOKIE_CHECKS_PER_SECOND,
            timer_interval: DEFAULT_TIMER_INTERVAL,
            max_datagram_len: MAX_DATAGRAM_LEN,
        }
    }
}

/// Why a datagram or outbound packet was dropped. Every drop is silent:
/// the only reply the gateway ever sends to a packet it does not process
/// is a cookie reply ([`DropReason::RateLimited`]), and only to an
/// initiation whose key and source a live admission binds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DropReason {
    /// No live admission binds the source address. Costs one hash lookup
    /// (plus one per distinct prefix length); nothing else is looked at.
    UnknownSource,
    /// A handshake for a static key no admission holds.
    WrongKey,
    /// An admitted key or session, but from a source its admission does
    /// not bind (no roaming without a new admission).
    WrongSource,
    /// A decrypted packet that is not IPv4 TCP from the client's tunnel
    /// address to one of its allowed services.
    InnerViolation,
    /// Handshake load is above the limit and the initiator has not proven
    /// its address yet; answered with a cookie reply instead of a
    /// handshake, if its source is bound and the key it claims is the one
    /// an admission binds there (else dropped under that reason), while
    /// the cookie checks' budget lasts (else silence).
    RateLimited,
    /// Not shaped like a WireGuard message, or too long.
    Malformed,
    /// Failed a cryptographic check: MAC, AEAD tag, or an unexpected
    /// handshake message.
    Unauthenticated,
    /// A data counter or handshake timestamp seen before.
    Replayed,
    /// A receiver index that names no peer or no live session.
    UnknownIndex,
    /// The admission's expiry passed (and the sweep has not removed it
    /// yet).
    Expired,
    /// Outbound: no admission holds the packet's destination address.
    NoRoute,
    /// Outbound: the peer has not completed a handshake yet.
    NoSession,
}

impl DropReason {
    pub const ALL: [DropReason; 12] = [
        DropReason::UnknownSource,
        DropReason::WrongKey,
        DropReason::WrongSource,
        DropReason::InnerViolation,
        DropReason::RateLimited,
        DropReason::Malformed,
        DropReason::Unauthenticated,
        DropReason::Replayed,
        DropReason::UnknownIndex,
        DropReason::Expired,
        DropReason::NoRoute,
        DropReason::NoSession,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::UnknownSource => "unknown_source",
            DropReason::WrongKey => "wrong_key",
            DropReason::WrongSource => "wrong_source",
            DropReason::InnerViolation => "inner_violation",
            DropReason::RateLimited => "rate_limited",
            DropReason::Malformed => "malformed",
            DropReason::Unauthenticated => "unauthenticated",
            DropReason::Replayed => "replayed",
            DropReason::UnknownIndex => "unknown_index",
            DropReason::Expired => "expired",
            DropReason::NoRoute => "no_route",
            DropReason::NoSession => "no_session",
        }
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Drops since the dispatcher started, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DropCounters {
    pub unknown_source: u64,
    pub wrong_key: u64,
    pub wrong_source: u64,
    pub inner_violation: u64,
    pub rate_limited: u64,
    pub malformed: u64,
    pub unauthenticated: u64,
    pub replayed: u64,
    pub unknown_index: u64,
    pub expired: u64,
    pub no_route: u64,
    pub no_session: u64,
}

impl DropCounters {
    pub fn get(&self, reason: DropReason) -> u64 {
        *self.field(reason)
    }

    pub fn total(&self) -> u64 {
        DropReason::ALL.iter().map(|&r| self.get(r)).sum()
    }

    fn add(&mut self, reason: DropReason) {
        *self.field_mut(reason) += 1;
    }

    fn field(&self, reason: DropReason) -> &u64 {
        match reason {
            DropReason::UnknownSource => &self.unknown_source,
            DropReason::WrongKey => &self.wrong_key,
            DropReason::WrongSource => &self.wrong_source,
            DropReason::InnerViolation => &self.inner_violation,
            DropReason::RateLimited => &self.rate_limited,
            DropReason::Malformed => &self.malformed,
            DropReason::Unauthenticated => &self.unauthenticated,
            DropReason::Replayed => &self.replayed,
            DropReason::UnknownIndex => &self.unknown_index,
            DropReason::Expired => &self.expired,
            DropReason::NoRoute => &self.no_route,
            DropReason::NoSession => &self.no_session,
        }
    }

    fn field_mut(&mut self, reason: DropReason) -> &mut u64 {
        match reason {
            DropReason::UnknownSource => &mut self.unknown_source,
            DropReason::WrongKey => &mut self.wrong_key,
            DropReason::WrongSource => &mut self.wrong_source,
            DropReason::InnerViolation => &mut self.inner_violation,
            DropReason::RateLimited => &mut self.rate_limited,
            DropReason::Malformed => &mut self.malformed,
            DropReason::Unauthenticated => &mut self.unauthenticated,
            DropReason::Replayed => &mut self.replayed,
            DropReason::UnknownIndex => &mut self.unknown_index,
            DropReason::Expired => &mut self.expired,
            DropReason::NoRoute => &mut self.no_route,
            DropReason::NoSession => &mut self.no_session,
        }
    }
}

/// What became of one input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Processed for this peer; any reply or decrypted packet is in the
    /// outbox.
    Accepted { peer: PeerId },
    /// Dropped and counted. Nothing was added to the outbox, except a
    /// cookie reply for [`DropReason::RateLimited`] to an admitted key
    /// from a source its live admission binds.
    Dropped(DropReason),
}

impl Verdict {
    pub fn dropped(self) -> Option<DropReason> {
        match self {
            Verdict::Dropped(reason) => Some(reason),
            Verdict::Accepted { .. } => None,
        }
    }
}

/// One result of dispatching, borrowed from the [`Outbox`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output<'a> {
    /// Send `datagram` from the gateway's UDP socket to `dst`.
    Transmit { dst: SocketAddr, datagram: &'a [u8] },
    /// Hand this decrypted IPv4 packet, which passed the inner checks, to
    /// the TCP stack on behalf of `peer`.
    Deliver { peer: PeerId, packet: &'a [u8] },
}

#[derive(Debug, Clone, Copy)]
enum OutputKind {
    Transmit(SocketAddr),
    Deliver(PeerId),
}

#[derive(Debug, Clone, Copy)]
struct OutputRecord {
    kind: OutputKind,
    start: usize,
    len: usize,
}

/// Where the dispatcher puts datagrams to send and packets to deliver.
///
/// The driver owns one, lets several inputs fill it (a whole receive
/// batch), drains it with [`Outbox::iter`] and calls [`Outbox::clear`].
/// Its byte arena and record list only grow to the largest batch seen, so
/// in steady state nothing is allocated per packet: boringtun encrypts and
/// decrypts straight into the arena.
#[derive(Debug, Default)]
pub struct Outbox {
    bytes: Vec<u8>,
    used: usize,
    /// Size of the area handed out by the last `scratch` call.
    scratch_len: usize,
    records: Vec<OutputRecord>,
}

impl Outbox {
    pub fn new() -> Self {
        Outbox::default()
    }

    /// Pre-sizes the arena, e.g. for a batch of 64 datagrams of 1500 bytes.
    pub fn with_capacity(bytes: usize, outputs: usize) -> Self {
        Outbox {
            bytes: vec![0; bytes],
            used: 0,
            scratch_len: 0,
            records: Vec::with_capacity(outputs),
        }
    }

    /// Forgets all outputs, keeping the memory.
    pub fn clear(&mut self) {
        self.used = 0;
        self.scratch_len = 0;
        self.records.clear();
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = Output<'_>> + '_ {
        self.records.iter().map(|r| {
            let bytes = &self.bytes[r.start..r.start + r.len];
            match r.kind {
                OutputKind::Transmit(dst) => Output::Transmit {
                    dst,
                    datagram: bytes,
                },
                OutputKind::Deliver(peer) => Output::Deliver {
                    peer,
                    packet: bytes,
                },
            }
        })
    }

    /// Only the datagrams to send.
    pub fn transmits(&self) -> impl Iterator<Item = (SocketAddr, &[u8])> + '_ {
        self.iter().filter_map(|o| match o {
            Output::Transmit { dst, datagram } => Some((dst, datagram)),
            Output::Deliver { .. } => None,
        })
    }

    /// Only the packets for the TCP stack.
    pub fn deliveries(&self) -> impl Iterator<Item = (PeerId, &[u8])> + '_ {
        self.iter().filter_map(|o| match o {
            Output::Deliver { peer, packet } => Some((peer, packet)),
            Output::Transmit { .. } => None,
        })
    }

    /// A writable area of `need` bytes after the committed outputs.
    fn scratch(&mut self, need: usize) -> &mut [u8] {
        let end = self.used + need;
        if self.bytes.len() < end {
            self.bytes.resize(end, 0);
        }
        self.scratch_len = need;
        &mut self.bytes[self.used..end]
    }

    /// Bytes written into the current scratch area.
    fn staged(&self, offset: usize, len: usize) -> Option<&[u8]> {
        let end = offset.checked_add(len)?;
        if end > self.scratch_len {
            return None;
        }
        self.bytes.get(self.used + offset..self.used + end)
    }

    /// Turns part of the current scratch area into an output.
    fn commit(&mut self, kind: OutputKind, offset: usize, len: usize) -> bool {
        if self.staged(offset, len).is_none() {
            return false;
        }
        self.records.push(OutputRecord {
            kind,
            start: self.used + offset,
            len,
        });
        self.used += offset + len;
        self.scratch_len = 0;
        true
    }

    fn push_transmit(&mut self, dst: SocketAddr, datagram: &[u8]) {
        let area = self.scratch(datagram.len());
        area.copy_from_slice(datagram);
        self.commit(OutputKind::Transmit(dst), 0, datagram.len());
    }
}

/// A change in the set of peers the driver must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerEvent {
    /// A new admission is installed; its client may now handshake.
    Installed {
        peer: PeerId,
        admission_id: String,
        client_address: Ipv4Addr,
    },
    /// The peer is gone and its tunnel state with it. Close every spliced
    /// connection from `client_address` now.
    Removed {
        peer: PeerId,
        admission_id: String,
        client_address: Ipv4Addr,
        cause: RemovalCause,
    },
    /// A handshake completed; the peer is reachable at `endpoint`.
    HandshakeCompleted { peer: PeerId, endpoint: SocketAddr },
}

/// Traffic counters of one peer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerCounters {
    pub handshakes: u64,
    /// Authenticated datagrams received (handshakes, data, keepalives) and
    /// their size on the wire.
    pub rx_packets: u64,
    pub rx_bytes: u64,
    /// Datagrams sent to the peer and their size on the wire.
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub last_handshake: Option<Instant>,
}

impl PeerCounters {
    /// Adds `other`'s counts to these (`last_handshake` stays).
    fn absorb(&mut self, other: &PeerCounters) {
        self.handshakes += other.handshakes;
        self.rx_packets += other.rx_packets;
        self.rx_bytes += other.rx_bytes;
        self.tx_packets += other.tx_packets;
        self.tx_bytes += other.tx_bytes;
    }

    fn received(&mut self, datagram_len: usize) {
        self.rx_packets += 1;
        self.rx_bytes += datagram_len as u64;
    }

    fn sent(&mut self, datagram_len: usize) {
        self.tx_packets += 1;
        self.tx_bytes += datagram_len as u64;
    }
}

/// A status snapshot a person can read (`hushgate gateway status`).
#[derive(Debug, Clone, Serialize)]
pub struct GatewayStats {
    pub feed_version: Option<u64>,
    pub service_address: Option<Ipv4Addr>,
    pub peers: Vec<PeerStats>,
    /// Datagrams the gateway process received on its UDP port, from
    /// anyone (with the kernel pre-filter, only admitted sources' reach it).
    pub datagrams: u64,
    pub drops: DropCounters,
    /// The user-space TCP stack (filled in by the data path once the feed
    /// has named the service address).
    pub tcp: Option<crate::limits::TcpStats>,
    /// Everything every peer (present or gone) did since the start.
    pub totals: TrafficTotals,
    /// Connections and bytes per service port (filled in by the data path).
    pub services: Vec<ServiceTraffic>,
}

/// Counters since the dispatcher started, peers that left included: they
/// only ever grow, as Prometheus counters must.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TrafficTotals {
    /// Completed handshakes (as responder and as initiator).
    pub handshakes: u64,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// Admissions installed and removed by feed versions.
    pub admissions_installed: u64,
    pub admissions_removed: u64,
}

/// One service's spliced connections since the start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ServiceTraffic {
    /// The service's port inside the tunnel.
    pub port: u16,
    /// Connections spliced to the upstream, and those open now.
    pub connections: u64,
    pub open: u64,
    /// Connections the upstream refused (or could not be reached for).
    pub upstream_failures: u64,
    /// Bytes from clients to the upstream, and back.
    pub bytes_to_upstream: u64,
    pub bytes_from_upstream: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct PeerStats {
    pub peer: PeerId,
    pub admission_id: String,
    pub client_public_key: WgKey,
    pub client_address: Ipv4Addr,
    /// The source the control plane observed, and how tightly it binds.
    pub source: IpAddr,
    pub binding: BindingPolicy,
    /// For `first-handshake`: the address the first handshake pinned.
    pub pinned_source: Option<IpAddr>,
    /// Where the gateway sends this peer's datagrams.
    pub endpoint: Option<SocketAddr>,
    pub expires_in_secs: u64,
    pub handshakes: u64,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub last_handshake_secs_ago: Option<u64>,
    /// What it holds in the user-space TCP stack (filled in by the data
    /// path).
    pub tcp: crate::limits::PeerTcp,
}

/// Tunnel state of one admitted peer.
struct Peer {
    /// Created on the first handshake that passes the key and source
    /// checks, so that installing an admission costs no DH and an admitted
    /// client that never connects costs no tunnel memory.
    tunnel: Option<Box<Tunn>>,
    /// The source of the peer's last authenticated datagram: where replies
    /// go. It can only ever be an address the admission binds.
    endpoint: Option<SocketAddr>,
    /// The admission's services resolved to ports once, at apply time.
    allowed_ports: Vec<u16>,
    counters: PeerCounters,
}

/// Which WireGuard message a session-routed datagram is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SessionMessage {
    HandshakeResponse,
    CookieReply,
    Data,
}

/// A `TunnResult` reduced to positions in the outbox's scratch area, so the
/// borrow of the scratch ends before the result is acted on.
enum Step {
    Network { offset: usize, len: usize },
    TunnelV4 { offset: usize, len: usize },
    TunnelV6,
    Done,
    Failed(WireGuardError),
}

fn locate(result: TunnResult<'_>, base: usize) -> Step {
    match result {
        TunnResult::Done => Step::Done,
        TunnResult::Err(e) => Step::Failed(e),
        TunnResult::WriteToNetwork(b) => Step::Network {
            offset: b.as_ptr().addr().wrapping_sub(base),
            len: b.len(),
        },
        TunnResult::WriteToTunnelV4(b, _) => Step::TunnelV4 {
            offset: b.as_ptr().addr().wrapping_sub(base),
            len: b.len(),
        },
        TunnResult::WriteToTunnelV6(..) => Step::TunnelV6,
    }
}

/// The gateway's WireGuard endpoint: admission table plus one boringtun
/// `Tunn` per connected peer, behind hushgate's checks.
pub struct Dispatcher {
    static_secret: StaticSecret,
    static_public: PublicKey,
    /// Shared by every `Tunn` so that the handshake load limit is per
    /// gateway, not per peer: a flood spread over many admitted keys still
    /// meets cookies.
    rate_limiter: Arc<RateLimiter>,
    config: DispatcherConfig,
    table: AdmissionTable,
    /// Indexed by `PeerId`, parallel to the table's slots.
    peers: Vec<Option<Peer>>,
    drops: DropCounters,
    /// Every datagram handed to `handle_datagram`.
    datagrams: u64,
    /// What removed peers had counted, so that the totals the metrics
    /// export never go down when a peer leaves. Added to only when a peer
    /// is forgotten: the packet path keeps counting per peer alone.
    departed: PeerCounters,
    /// Admissions installed and removed since the start (every feed
    /// version applied), for the metrics.
    installed: u64,
    removed: u64,
    events: VecDeque<PeerEvent>,
    next_tick: Instant,
    /// Cookie checks (see [`Dispatcher::deserves_cookie`]) in the second
    /// that began at `cookie_window`, on the caller's clock.
    cookie_checks: u64,
    cookie_window: Instant,
}

impl fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dispatcher")
            .field("public_key", &self.public_key())
            .field("admissions", &self.table.len())
            .field("drops", &self.drops)
            .field("next_tick", &self.next_tick)
            .finish_non_exhaustive()
    }
}

impl Dispatcher {
    pub fn new(static_secret: StaticSecret, config: DispatcherConfig, now: Instant) -> Self {
        let static_public = PublicKey::from(&static_secret);
        // Each accepted initiation passes the limiter twice: once in our
        // pre-DH check and once inside `Tunn::decapsulate`.
        let limit = config.handshakes_per_second.saturating_mul(2);
        let rate_limiter = Arc::new(RateLimiter::new(&static_public, limit));
        let mut config = config;
        config.max_datagram_len = config.max_datagram_len.max(MIN_SCRATCH);
        Dispatcher {
            static_secret,
            static_public,
            rate_limiter,
            table: AdmissionTable::new(config.pinning_window),
            next_tick: now + config.timer_interval,
            config,
            peers: Vec::new(),
            drops: DropCounters::default(),
            datagrams: 0,
            departed: PeerCounters::default(),
            installed: 0,
            removed: 0,
            events: VecDeque::new(),
            cookie_checks: 0,
            cookie_window: now,
        }
    }

    /// The gateway's static public key, as clients must be told it.
    pub fn public_key(&self) -> WgKey {
        WgKey(self.static_public.to_bytes())
    }

    pub fn admissions(&self) -> &AdmissionTable {
        &self.table
    }

    pub fn drops(&self) -> &DropCounters {
        &self.drops
    }

    pub fn peer_counters(&self, peer: PeerId) -> Option<PeerCounters> {
        self.peer(peer).map(|p| p.counters)
    }

    /// Where the gateway currently sends datagrams for `peer`.
    pub fn peer_endpoint(&self, peer: PeerId) -> Option<SocketAddr> {
        self.peer(peer).and_then(|p| p.endpoint)
    }

    /// The next peer lifecycle change, oldest first. The driver should
    /// drain these after every call; `Removed` must be acted on.
    pub fn poll_event(&mut self) -> Option<PeerEvent> {
        self.events.pop_front()
    }

    /// When the driver must call [`Dispatcher::handle_timers`] next, if
    /// nothing else arrives first. `None` while no admission exists.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.table.is_empty() {
            return None;
        }
        Some(match self.table.next_deadline() {
            Some(deadline) => deadline.min(self.next_tick),
            None => self.next_tick,
        })
    }

    /// Takes in a feed change (the whole desired state, converged to, or a
    /// diff on top of what is held; see [`AdmissionTable::apply`]). Peers
    /// of removed or replaced admissions lose their tunnel state at once
    /// and a [`PeerEvent::Removed`] tells the driver to close their
    /// connections.
    pub fn apply<'a>(
        &mut self,
        change: impl Into<FeedChangeRef<'a>>,
        now: Instant,
    ) -> ApplyOutcome {
        let outcome = self.table.apply(change, now);
        self.settle(outcome)
    }

    /// Acts on what a table change did: peers forgotten, made, updated.
    fn settle(&mut self, outcome: ApplyOutcome) -> ApplyOutcome {
        self.installed += outcome.added.len() as u64;
        self.removed += outcome.removed.len() as u64;
        for removed in &outcome.removed {
            self.forget_peer(&removed.admission, removed.cause);
        }
        let capacity = self.table.peer_capacity();
        if self.peers.len() < capacity {
            self.peers.resize_with(capacity, || None);
        }
        for installed in &outcome.added {
            let Some(admission) = self.table.get(installed.peer) else {
                continue;
            };
            let allowed_ports = resolve_ports(&self.config.services, admission);
            self.peers[installed.peer.tunnel_index() as usize] = Some(Peer {
                tunnel: None,
                endpoint: None,
                allowed_ports,
                counters: PeerCounters::default(),
            });
            self.events.push_back(PeerEvent::Installed {
                peer: installed.peer,
                admission_id: installed.id.clone(),
                client_address: admission.client_address(),
            });
        }
        for changed in &outcome.changed {
            let Some(admission) = self.table.get(changed.peer) else {
                continue;
            };
            let allowed_ports = resolve_ports(&self.config.services, admission);
            if let Some(peer) = self.peers[changed.peer.tunnel_index() as usize].as_mut() {
                peer.allowed_ports = allowed_ports;
                // An edit may move the binding (another source, another
                // policy, a pinning window opened again). The endpoint is
                // where the last authenticated datagram came from; once
                // the admission no longer binds it, nothing may go there.
                // The session stays: the client's next datagram from a
                // bound source sets the endpoint again.
                if peer
                    .endpoint
                    .is_some_and(|e| !admission.admits_session_packet(e.ip()))
                {
                    peer.endpoint = None;
                }
            }
        }
        for rejected in &outcome.rejected {
            tracing::warn!(admission = rejected.admission_id(), %rejected, "admission not installed");
        }
        outcome
    }

    /// Removes expired admissions (with their tunnels), closes pinning
    /// windows that passed, and runs boringtun's session timers, which may
    /// emit keepalives or handshake retries into `out`.
    pub fn handle_timers(&mut self, now: Instant, out: &mut Outbox) {
        for admission in self.table.expire(now) {
            self.forget_peer(&admission, RemovalCause::Expired);
        }
        if now < self.next_tick {
            return;
        }
        self.next_tick = now + self.config.timer_interval;
        // The shared limiter is not reset by the tunnels that share it.
        self.rate_limiter.reset_count();
        for peer in self.peers.iter_mut().flatten() {
            let Some(tunnel) = peer.tunnel.as_deref_mut() else {
                continue;
            };
            let scratch = out.scratch(MIN_SCRATCH);
            let base = scratch.as_ptr().addr();
            match locate(tunnel.update_timers(scratch), base) {
                Step::Network { offset, len } => {
                    // Without an endpoint there is nobody to send to; the
                    // client will handshake again by itself.
                    if let Some(endpoint) = peer.endpoint {
                        if out.commit(OutputKind::Transmit(endpoint), offset, len) {
                            peer.counters.sent(len);
                        }
                    }
                }
                // Sessions older than boringtun's limits were wiped inside
                // the tunnel; the admission stays and the client can
                // handshake again.
                Step::Failed(_) | Step::Done | Step::TunnelV4 { .. } | Step::TunnelV6 => {}
            }
        }
    }

    /// Processes one datagram received on the gateway's UDP port.
    pub fn handle_datagram(
        &mut self,
        src: SocketAddr,
        datagram: &[u8],
        now: Instant,
        out: &mut Outbox,
    ) -> Verdict {
        self.datagrams += 1;
        let verdict = self.dispatch_datagram(src, datagram, now, out);
        if let Verdict::Dropped(reason) = verdict {
            self.drops.add(reason);
            if reason != DropReason::UnknownSource {
                tracing::trace!(%src, %reason, len = datagram.len(), "datagram dropped");
            }
        }
        verdict
    }

    /// Encrypts one IPv4 packet from the gateway's TCP stack for the peer
    /// that holds its destination address.
    pub fn handle_outbound(&mut self, packet: &[u8], now: Instant, out: &mut Outbox) -> Verdict {
        self.outbound(packet, now, out, false)
    }

    /// Like [`Dispatcher::handle_outbound`], also for a peer whose
    /// admission has just expired but is not removed yet: the driver's
    /// last packets (the resets that end its connections) before
    /// [`Dispatcher::handle_timers`] removes it.
    pub fn handle_farewell(&mut self, packet: &[u8], now: Instant, out: &mut Outbox) -> Verdict {
        self.outbound(packet, now, out, true)
    }

    fn outbound(
        &mut self,
        packet: &[u8],
        now: Instant,
        out: &mut Outbox,
        farewell: bool,
    ) -> Verdict {
        let verdict = self.dispatch_outbound(packet, now, out, farewell);
        if let Verdict::Dropped(reason) = verdict {
            self.drops.add(reason);
            tracing::trace!(%reason, len = packet.len(), "outbound packet dropped");
        }
        verdict
    }

    /// A snapshot of every peer and the drop counters.
    pub fn stats(&self, now: Instant) -> GatewayStats {
        let peers = self
            .table
            .iter()
            .map(|admission| {
                let counters = self
                    .peer(admission.peer())
                    .map(|p| p.counters)
                    .unwrap_or_default();
                PeerStats {
                    peer: admission.peer(),
                    admission_id: admission.id().to_string(),
                    client_public_key: *admission.client_public_key(),
                    client_address: admission.client_address(),
                    source: admission.source(),
                    binding: admission.binding(),
                    pinned_source: match admission.pinning() {
                        Pinning::Pinned(ip) => Some(ip),
                        _ => None,
                    },
                    endpoint: self.peer_endpoint(admission.peer()),
                    expires_in_secs: admission
                        .deadline()
                        .saturating_duration_since(now)
                        .as_secs(),
                    handshakes: counters.handshakes,
                    rx_packets: counters.rx_packets,
                    rx_bytes: counters.rx_bytes,
                    tx_packets: counters.tx_packets,
                    tx_bytes: counters.tx_bytes,
                    last_handshake_secs_ago: counters
                        .last_handshake
                        .map(|t| now.saturating_duration_since(t).as_secs()),
                    tcp: Default::default(),
                }
            })
            .collect();
        let mut totals = self.departed;
        for p in self.peers.iter().flatten() {
            totals.absorb(&p.counters);
        }
        GatewayStats {
            feed_version: self.table.version(),
            service_address: self.table.service_address(),
            peers,
            datagrams: self.datagrams,
            drops: self.drops,
            tcp: None,
            totals: TrafficTotals {
                handshakes: totals.handshakes,
                rx_packets: totals.rx_packets,
                rx_bytes: totals.rx_bytes,
                tx_packets: totals.tx_packets,
                tx_bytes: totals.tx_bytes,
                admissions_installed: self.installed,
                admissions_removed: self.removed,
            },
            services: Vec::new(),
        }
    }

    fn peer(&self, peer: PeerId) -> Option<&Peer> {
        self.peers
            .get(peer.tunnel_index() as usize)
            .and_then(Option::as_ref)
    }

    fn forget_peer(&mut self, admission: &Admission, cause: RemovalCause) {
        if let Some(slot) = self.peers.get_mut(admission.peer().tunnel_index() as usize) {
            if let Some(gone) = slot.take() {
                self.departed.absorb(&gone.counters);
            }
        }
        self.events.push_back(PeerEvent::Removed {
            peer: admission.peer(),
            admission_id: admission.id().to_string(),
            client_address: admission.client_address(),
            cause,
        });
    }

    fn dispatch_datagram(
        &mut self,
        src: SocketAddr,
        datagram: &[u8],
        now: Instant,
        out: &mut Outbox,
    ) -> Verdict {
        // Checks compare canonical addresses (a dual-stack socket reports
        // IPv4 clients as `::ffff:a.b.c.d`); replies keep the socket's form.
        let source = self.table.source_status(src.ip());
        match source {
            SourceStatus::Bound => {}
            SourceStatus::PinningWindowOpen if looks_like_initiation(datagram) => {}
            SourceStatus::PinningWindowOpen | SourceStatus::Unknown => {
                return Verdict::Dropped(DropReason::UnknownSource)
            }
        }
        if datagram.len() > self.config.max_datagram_len {
            return Verdict::Dropped(DropReason::Malformed);
        }
        let Ok(packet) = Tunn::parse_incoming_packet(datagram) else {
            return Verdict::Dropped(DropReason::Malformed);
        };
        match packet {
            Packet::HandshakeInit(init) => {
                self.handle_initiation(src, source, datagram, &init, now, out)
            }
            Packet::HandshakeResponse(p) => self.handle_session_message(
                src,
                p.receiver_idx,
                SessionMessage::HandshakeResponse,
                datagram,
                now,
                out,
            ),
            Packet::PacketCookieReply(p) => self.handle_session_message(
                src,
                p.receiver_idx,
                SessionMessage::CookieReply,
                datagram,
                now,
                out,
            ),
            Packet::PacketData(p) => self.handle_session_message(
                src,
                p.receiver_idx,
                SessionMessage::Data,
                datagram,
                now,
                out,
            ),
        }
    }

    fn handle_initiation(
        &mut self,
        src: SocketAddr,
        source: SourceStatus,
        datagram: &[u8],
        init: &HandshakeInit<'_>,
        now: Instant,
        out: &mut Outbox,
    ) -> Verdict {
        // mac1 (a keyed hash) and the load check come before any DH, so a
        // flood from an admitted source costs hashes, a bounded number of
        // cookie checks, and cookie replies to admitted keys only.
        let mut cookie = [0u8; COOKIE_REPLY_LEN];
        match self
            .rate_limiter
            .verify_packet(Some(src.ip().to_canonical()), datagram, &mut cookie)
        {
            Ok(_) => {}
            Err(TunnResult::WriteToNetwork(reply)) => {
                // A source that only an open pinning window lets in is not
                // bound to anything yet: it gets silence, not a cookie. A
                // genuine first-handshake client retries in 5 s anyway.
                // Nor does a source bound only by admissions past their
                // deadline that the timers have not removed yet.
                if !cookie_allowed(&self.table, src, source, now) {
                    return Verdict::Dropped(DropReason::RateLimited);
                }
                return match self.deserves_cookie(src, init, now) {
                    Ok(()) => {
                        out.push_transmit(src, reply);
                        Verdict::Dropped(DropReason::RateLimited)
                    }
                    Err(reason) => Verdict::Dropped(reason),
                };
            }
            Err(TunnResult::Err(e)) => {
                return Verdict::Dropped(reason_for(&e, SessionMessage::HandshakeResponse))
            }
            Err(_) => return Verdict::Dropped(DropReason::Unauthenticated),
        }

        // The first DH: it reveals which static key is knocking.
        let Ok(half) = parse_handshake_anon(&self.static_secret, &self.static_public, init) else {
            return Verdict::Dropped(DropReason::Unauthenticated);
        };
        let Some(admission) = self.table.by_key(&half.peer_static_public) else {
            return Verdict::Dropped(DropReason::WrongKey);
        };
        let peer_id = admission.peer();
        if admission.is_expired(now) {
            return Verdict::Dropped(DropReason::Expired);
        }
        if !admission.admits_handshake(src.ip(), now) {
            return Verdict::Dropped(DropReason::WrongSource);
        }
        let preshared_key = admission.preshared_key().map(|k| k.0);
        let Some(peer) = self
            .peers
            .get_mut(peer_id.tunnel_index() as usize)
            .and_then(Option::as_mut)
        else {
            return Verdict::Dropped(DropReason::UnknownIndex);
        };
        let tunnel = peer.tunnel.get_or_insert_with(|| {
            Box::new(Tunn::new(
                self.static_secret.clone(),
                PublicKey::from(half.peer_static_public),
                preshared_key,
                None,
                peer_id.tunnel_index(),
                Some(Arc::clone(&self.rate_limiter)),
            ))
        });

        let scratch = out.scratch(datagram.len().max(MIN_SCRATCH));
        let base = scratch.as_ptr().addr();
        match locate(
            tunnel.decapsulate(Some(src.ip().to_canonical()), datagram, scratch),
            base,
        ) {
            Step::Network { offset, len } => {
                match out.staged(offset, len).and_then(|b| b.first().copied()) {
                    Some(MSG_HANDSHAKE_RESPONSE) => {}
                    // Load rose between our check and the tunnel's: the
                    // tunnel answered with a cookie instead. The key was
                    // checked above, so the cookie is deserved; as above,
                    // none to a source only an open pinning window lets in.
                    Some(MSG_COOKIE_REPLY) => {
                        // Same rule as above: a cookie only to a source a
                        // live admission binds.
                        if cookie_allowed(&self.table, src, source, now) {
                            out.commit(OutputKind::Transmit(src), offset, len);
                        }
                        return Verdict::Dropped(DropReason::RateLimited);
                    }
                    _ => return Verdict::Dropped(DropReason::Unauthenticated),
                }
                // The handshake is valid: only now may it pin the source.
                let pins = admission_pins(&self.table, peer_id);
                if pins {
                    self.table.pin(peer_id, src.ip(), now);
                }
                peer.endpoint = Some(src);
                peer.counters.received(datagram.len());
                peer.counters.handshakes += 1;
                peer.counters.last_handshake = Some(now);
                if out.commit(OutputKind::Transmit(src), offset, len) {
                    peer.counters.sent(len);
                }
                flush_queued(
                    tunnel,
                    &mut peer.counters,
                    src,
                    self.config.max_datagram_len,
                    out,
                );
                let event = PeerEvent::HandshakeCompleted {
                    peer: peer_id,
                    endpoint: src,
                };
                if pins {
                    // The driver must hear of a pinning (the kernel
                    // pre-filter admits the pinned source from it): always
                    // queued, like removals; at most once per admission.
                    self.events.push_back(event);
                } else {
                    push_informational(&mut self.events, event);
                }
                Verdict::Accepted { peer: peer_id }
            }
            Step::Failed(e) => Verdict::Dropped(reason_for(&e, SessionMessage::HandshakeResponse)),
            Step::Done | Step::TunnelV4 { .. } | Step::TunnelV6 => {
                Verdict::Dropped(DropReason::Unauthenticated)
            }
        }
    }

    /// Whether an initiation that arrived under load, without a valid
    /// cookie, from a bound source, may be answered with a cookie reply.
    ///
    /// The source being bound is not enough: behind one NAT, a neighbour
    /// of an admitted client shares its address but holds another key,
    /// and rule 1 says a source not admitted gets zero bytes. A valid mac1
    /// is not enough either: it is keyed by the gateway's public key
    /// alone, which every client ever admitted has seen. Only the static
    /// key the initiation carries tells them apart, and WireGuard sends it
    /// encrypted to the gateway's static key: learning it costs one
    /// X25519 (`parse_handshake_anon`), a quarter of a responder
    /// handshake, which is the work the cookie exists to spare. So the
    /// check is spent only on bound sources, and at most
    /// `cookie_checks_per_second` times a second; beyond that the
    /// initiation gets silence and its sender retries. The key is then
    /// the one an admission binds to this source (the same rule as for a
    /// handshake). This proves the initiator *claims* that key: proving
    /// it holds the private half needs the static-static DH as well, and
    /// the claimed key never travels in the clear (the client sends it
    /// only inside the initiation and in its HTTPS access request), so a
    /// neighbour cannot claim a key it has never seen.
    fn deserves_cookie(
        &mut self,
        src: SocketAddr,
        init: &HandshakeInit<'_>,
        now: Instant,
    ) -> Result<(), DropReason> {
        if now.saturating_duration_since(self.cookie_window) >= Duration::from_secs(1) {
            self.cookie_window = now;
            self.cookie_checks = 0;
        }
        if self.cookie_checks >= self.config.cookie_checks_per_second {
            return Err(DropReason::RateLimited);
        }
        self.cookie_checks += 1;
        let half = parse_handshake_anon(&self.static_secret, &self.static_public, init)
            .map_err(|_| DropReason::Unauthenticated)?;
        let admission = self
            .table
            .by_key(&half.peer_static_public)
            .ok_or(DropReason::WrongKey)?;
        if admission.is_expired(now) {
            return Err(DropReason::Expired);
        }
        if !admission.admits_handshake(src.ip(), now) {
            return Err(DropReason::WrongSource);
        }
        Ok(())
    }

    fn handle_session_message(
        &mut self,
        src: SocketAddr,
        receiver_index: u32,
        message: SessionMessage,
        datagram: &[u8],
        now: Instant,
        out: &mut Outbox,
    ) -> Verdict {
        let peer_id = PeerId::from_receiver_index(receiver_index);
        let Some(admission) = self.table.get(peer_id) else {
            return Verdict::Dropped(DropReason::UnknownIndex);
        };
        let Some(peer) = self
            .peers
            .get_mut(peer_id.tunnel_index() as usize)
            .and_then(Option::as_mut)
        else {
            return Verdict::Dropped(DropReason::UnknownIndex);
        };
        let Some(tunnel) = peer.tunnel.as_deref_mut() else {
            return Verdict::Dropped(DropReason::UnknownIndex);
        };
        if admission.is_expired(now) {
            return Verdict::Dropped(DropReason::Expired);
        }
        if !admission.admits_session_packet(src.ip()) {
            return Verdict::Dropped(DropReason::WrongSource);
        }

        let scratch = out.scratch(datagram.len().max(MIN_SCRATCH));
        let base = scratch.as_ptr().addr();
        let step = locate(
            tunnel.decapsulate(Some(src.ip().to_canonical()), datagram, scratch),
            base,
        );
        if let Step::Failed(e) = &step {
            return Verdict::Dropped(reason_for(e, message));
        }
        // Authenticated from an address the admission binds: this is where
        // the peer is now.
        peer.endpoint = Some(src);
        peer.counters.received(datagram.len());
        match step {
            Step::TunnelV4 { offset, len } => {
                let Some(service_address) = self.table.service_address() else {
                    return Verdict::Dropped(DropReason::InnerViolation);
                };
                let Some(packet) = out.staged(offset, len) else {
                    return Verdict::Dropped(DropReason::Malformed);
                };
                if let Err(violation) = tunnel_rule::check_from_client(
                    packet,
                    admission.client_address(),
                    service_address,
                    &peer.allowed_ports,
                ) {
                    tracing::debug!(peer = %peer_id, %violation, "inner packet refused");
                    return Verdict::Dropped(DropReason::InnerViolation);
                }
                out.commit(OutputKind::Deliver(peer_id), offset, len);
                Verdict::Accepted { peer: peer_id }
            }
            Step::TunnelV6 => Verdict::Dropped(DropReason::InnerViolation),
            // A keepalive, or a cookie the tunnel stored.
            Step::Done => Verdict::Accepted { peer: peer_id },
            // The answer to a handshake the gateway started: the tunnel
            // sends a keepalive to confirm the session.
            Step::Network { offset, len } => {
                if message == SessionMessage::HandshakeResponse {
                    peer.counters.handshakes += 1;
                    peer.counters.last_handshake = Some(now);
                    push_informational(
                        &mut self.events,
                        PeerEvent::HandshakeCompleted {
                            peer: peer_id,
                            endpoint: src,
                        },
                    );
                }
                if out.commit(OutputKind::Transmit(src), offset, len) {
                    peer.counters.sent(len);
                }
                flush_queued(
                    tunnel,
                    &mut peer.counters,
                    src,
                    self.config.max_datagram_len,
                    out,
                );
                Verdict::Accepted { peer: peer_id }
            }
            Step::Failed(_) => Verdict::Dropped(DropReason::Unauthenticated),
        }
    }

    fn dispatch_outbound(
        &mut self,
        packet: &[u8],
        now: Instant,
        out: &mut Outbox,
        farewell: bool,
    ) -> Verdict {
        let Some(destination) = wire::ipv4_destination(packet) else {
            return Verdict::Dropped(DropReason::Malformed);
        };
        if packet.len() + DATA_OVERHEAD > self.config.max_datagram_len {
            return Verdict::Dropped(DropReason::Malformed);
        }
        // The TCP stack answers only from the service address; anything
        // else is a bug there, and must not reach a client.
        if wire::ipv4_source(packet) != self.table.service_address() {
            return Verdict::Dropped(DropReason::InnerViolation);
        }
        let Some(admission) = self.table.by_client_address(destination) else {
            return Verdict::Dropped(DropReason::NoRoute);
        };
        let peer_id = admission.peer();
        if admission.is_expired(now) && !farewell {
            return Verdict::Dropped(DropReason::Expired);
        }
        let Some(peer) = self
            .peers
            .get_mut(peer_id.tunnel_index() as usize)
            .and_then(Option::as_mut)
        else {
            return Verdict::Dropped(DropReason::NoRoute);
        };
        let (Some(tunnel), Some(endpoint)) = (peer.tunnel.as_deref_mut(), peer.endpoint) else {
            return Verdict::Dropped(DropReason::NoSession);
        };
        let scratch = out.scratch((packet.len() + DATA_OVERHEAD).max(MIN_SCRATCH));
        let base = scratch.as_ptr().addr();
        match locate(tunnel.encapsulate(packet, scratch), base) {
            // Either the encrypted packet or, when the session is gone, a
            // new handshake initiation (the packet waits in the tunnel).
            Step::Network { offset, len } => {
                if out.commit(OutputKind::Transmit(endpoint), offset, len) {
                    peer.counters.sent(len);
                }
                Verdict::Accepted { peer: peer_id }
            }
            // Queued behind a handshake already in flight.
            Step::Done => Verdict::Accepted { peer: peer_id },
            Step::Failed(_) | Step::TunnelV4 { .. } | Step::TunnelV6 => {
                Verdict::Dropped(DropReason::NoSession)
            }
        }
    }
}

/// Whether a cookie reply may go to `src`: some live admission binds it.
/// (A source only an open pinning window lets in is bound to nothing yet,
/// and an admission past its deadline binds nothing, even before the
/// timers remove it.)
fn cookie_allowed(
    table: &AdmissionTable,
    src: SocketAddr,
    source: SourceStatus,
    now: Instant,
) -> bool {
    source == SourceStatus::Bound && table.binds_live(src.ip(), now)
}

fn push_informational(events: &mut VecDeque<PeerEvent>, event: PeerEvent) {
    if events.len() < MAX_QUEUED_EVENTS {
        events.push_back(event);
    }
}

/// Whether `peer`'s admission is waiting for its first handshake to pin
/// the source address.
fn admission_pins(table: &AdmissionTable, peer: PeerId) -> bool {
    table
        .get(peer)
        .is_some_and(|a| matches!(a.pinning(), Pinning::Open { .. }))
}

/// After a handshake boringtun may hold packets queued while no session
/// existed; it releases them one per call with an empty datagram.
fn flush_queued(
    tunnel: &mut Tunn,
    counters: &mut PeerCounters,
    dst: SocketAddr,
    max_datagram_len: usize,
    out: &mut Outbox,
) {
    loop {
        let scratch = out.scratch(max_datagram_len);
        let base = scratch.as_ptr().addr();
        match locate(tunnel.decapsulate(None, &[], scratch), base) {
            Step::Network { offset, len } => {
                if !out.commit(OutputKind::Transmit(dst), offset, len) {
                    return;
                }
                counters.sent(len);
            }
            _ => return,
        }
    }
}

fn resolve_ports(services: &HashMap<String, u16>, admission: &Admission) -> Vec<u16> {
    let mut ports: Vec<u16> = admission
        .services()
        .iter()
        .filter_map(|name| {
            let port = services.get(name).copied();
            if port.is_none() {
                tracing::warn!(
                    admission = admission.id(),
                    service = %name,
                    "admission names a service this gateway does not offer; ignoring it"
                );
            }
            port
        })
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

fn reason_for(error: &WireGuardError, message: SessionMessage) -> DropReason {
    match error {
        WireGuardError::DuplicateCounter
        | WireGuardError::InvalidCounter
        | WireGuardError::WrongTai64nTimestamp => DropReason::Replayed,
        WireGuardError::NoCurrentSession
        | WireGuardError::WrongIndex
        | WireGuardError::ConnectionExpired => DropReason::UnknownIndex,
        // After decryption boringtun reports content that is not an IP
        // packet this way: the peer authenticated but sent junk inside.
        WireGuardError::InvalidPacket if message == SessionMessage::Data => {
            DropReason::InnerViolation
        }
        WireGuardError::InvalidPacket
        | WireGuardError::IncorrectPacketLength
        | WireGuardError::DestinationBufferTooSmall => DropReason::Malformed,
        WireGuardError::UnderLoad => DropReason::RateLimited,
        _ => DropReason::Unauthenticated,
    }
}
