//! The gateway's whole sans-IO dispatcher (`gateway::Dispatcher`) against a
//! reference model of hushgate's admission rules.
//!
//! Input (structured, `arbitrary`; see [`Op`]): feed answers over three
//! admission slots (each slot holds client k's key, so a real WireGuard
//! client exists for it), time steps, timer runs, datagrams from any of
//! eight sources (raw bytes, replays and bit flips of captured datagrams,
//! or the real output of a client's boringtun `Tunn`: initiations, data,
//! keepalives), clients taking in what the gateway sent, and packets from
//! the TCP stack side (plain and farewell). Each client op makes a real
//! handshake or real encrypted traffic, so the fuzzer reaches established
//! sessions, cookie replies under load, pinning and renewals.
//!
//! The model knows what the feed said and what time it is, nothing of the
//! dispatcher's insides, and asserts after every step:
//! - rule 1: every datagram the dispatcher sends goes to an address that a
//!   live admission binds right now (for replies to a datagram, to that
//!   datagram's source, and for a session's traffic, bound by that
//!   session's admission); farewells may also go to an admission that has
//!   expired but is not swept yet;
//! - rule 2: a datagram from a source no admission binds (and no
//!   first-handshake window could take) is dropped as `unknown_source`,
//!   with nothing sent;
//! - nothing reaches the inner stack unless it came from a source bound to
//!   a live admission, was encrypted by that admission's client, and is
//!   IPv4 TCP from its tunnel address to one of its services;
//! - a client decrypts only packets the TCP stack addressed to it;
//! - a handshake is accepted only for the admission of the key that made
//!   it, and a first-handshake admission is pinned only by such a handshake
//!   while its window is open;
//! - the dispatcher's table holds exactly the model's admissions, with the
//!   model's deadlines and pinning, and its events report every install and
//!   removal (the driver closes connections on them).

use crate::packet::{self, Segment};
use crate::world::{self, CLIENTS, SERVICES, SERVICE_ADDRESS, SERVICE_NAMES};
use arbitrary::{Arbitrary, Unstructured};
use boringtun::noise::{Tunn, TunnResult};
use gateway::{
    Dispatcher, DispatcherConfig, DropReason, Outbox, Output, PeerEvent, PeerId, Pinning, Verdict,
};
use netstack::wire::wireguard::{
    looks_like_initiation, HANDSHAKE_INIT_LEN, HANDSHAKE_INIT_MAC1_END, MSG_HANDSHAKE_INIT,
};
use proto::feed::{FeedAdmission, FeedState};
use proto::{BindingPolicy, OffsetDateTime, WgKey};
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};
use testkit::feed;

/// Most steps one input runs (each may cost a handshake's DH work).
pub const MAX_OPS: usize = 64;
/// Bytes of an initiation that its mac1 covers, mac1 included: a change
/// past them (mac2, checked only under load) leaves it a real initiation.
const INIT_AUTHENTICATED: usize = HANDSHAKE_INIT_MAC1_END;
const POOL: usize = 32;
/// Most initiations one input hands to the gateway (made by a client or
/// replayed). X25519 is
/// most of an execution's cost (about nine scalar multiplications per
/// handshake); six are enough for every story (a handshake, a cookie
/// round, a renewal, a replay, a pinning race).
const MAX_HANDSHAKES: usize = 6;
const WRONG_PSK: [u8; 32] = [0xee; 32];

/// One step. The byte layout is written out by [`Op::encode`] (the seed
/// recorder uses it) and read back by `arbitrary`, one tag byte and then
/// the fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// A feed answer: whole (every slot still held is listed) or a diff.
    Feed {
        diff: bool,
        slots: [Change; CLIENTS],
    },
    AdvanceMillis(u16),
    AdvanceSecs(u8),
    /// `Dispatcher::handle_timers`.
    Timers,
    /// A datagram of raw bytes.
    Raw {
        src: u8,
        port: u8,
        bytes: Vec<u8>,
    },
    /// A captured datagram (a client's, or one the gateway sent) again,
    /// optionally with one byte changed.
    Replay {
        src: u8,
        port: u8,
        pick: u8,
        flip_at: u16,
        flip: u8,
    },
    /// Client k starts a handshake; its initiation is sent from `src`.
    Initiate {
        client: u8,
        src: u8,
        port: u8,
    },
    /// Client k encrypts an inner packet (or starts a handshake to send
    /// it, or a keepalive); the result is sent from `src`.
    Seal {
        client: u8,
        src: u8,
        port: u8,
        inner: InnerSpec,
    },
    /// Client k takes in a datagram the gateway sent (the `pick`-th most
    /// recent); whatever it answers is sent from `src`.
    Receive {
        client: u8,
        pick: u8,
        src: u8,
        port: u8,
    },
    /// The TCP stack sends a packet to tunnel address `to` (a client's, or
    /// one no admission holds).
    Outbound {
        to: u8,
        inner: InnerSpec,
        farewell: bool,
    },
    /// The control plane's clock jumps (its answers carry it).
    ClockJump(i8),
}

/// A slot's part of a feed answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Keep,
    Remove,
    Set(Spec),
}

/// An admission for a slot: its client's key and tunnel address are
/// fixed; the rest is chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    pub source: u8,
    pub binding: u8,
    pub lifetime_secs: u16,
    /// 0: the client's preshared key, 1: none, 2: a wrong one.
    pub psk: u8,
    /// Bit i: `SERVICE_NAMES[i]`.
    pub services: u8,
    /// Keep the admission id (a renewal or an edit) instead of a new one.
    pub same_id: bool,
}

/// An inner IP packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InnerSpec {
    /// 0: the sender's own address, 1: another client's, 2: the service
    /// address, 3: elsewhere.
    pub src: u8,
    /// 0: the service address (or the client, outbound), 1: elsewhere,
    /// 2: the sender itself.
    pub dst: u8,
    /// 0: 32400, 1: 8096, 2: 22.
    pub port: u8,
    pub flags: u8,
    pub payload_len: u8,
    /// 0-2: plain, 3: fragment, 4: UDP, 5: padded after the IP length,
    /// 6: IPv6, 7: empty (a keepalive).
    pub shape: u8,
}

/// The setup byte pair, then the steps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Input {
    /// Handshakes per second before cookies: 1, 2, 4 or 1000.
    pub load: u8,
    /// Pinning window in seconds (1 + n % 30).
    pub window: u8,
    pub ops: Vec<Op>,
}

impl<'a> Arbitrary<'a> for Input {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let load = u.arbitrary()?;
        let window = u.arbitrary()?;
        let mut ops = Vec::new();
        while !u.is_empty() && ops.len() < MAX_OPS {
            ops.push(Op::arbitrary(u)?);
        }
        Ok(Input { load, window, ops })
    }
}

fn u16_of(u: &mut Unstructured<'_>) -> arbitrary::Result<u16> {
    Ok(u16::from_le_bytes([u.arbitrary()?, u.arbitrary()?]))
}

impl<'a> Arbitrary<'a> for InnerSpec {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(InnerSpec {
            src: u.arbitrary()?,
            dst: u.arbitrary()?,
            port: u.arbitrary()?,
            flags: u.arbitrary()?,
            payload_len: u.arbitrary()?,
            shape: u.arbitrary()?,
        })
    }
}

impl<'a> Arbitrary<'a> for Op {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let tag: u8 = u.arbitrary()?;
        Ok(match tag % 12 {
            0 => {
                let diff = u.arbitrary::<u8>()? & 1 != 0;
                let mut slots = [Change::Keep, Change::Keep, Change::Keep];
                for slot in &mut slots {
                    *slot = match u.arbitrary::<u8>()? % 3 {
                        0 => Change::Keep,
                        1 => Change::Remove,
                        _ => Change::Set(Spec {
                            source: u.arbitrary()?,
                            binding: u.arbitrary()?,
                            lifetime_secs: u16_of(u)?,
                            psk: u.arbitrary()?,
                            services: u.arbitrary()?,
                            same_id: u.arbitrary::<u8>()? & 1 != 0,
                        }),
                    };
                }
                Op::Feed { diff, slots }
            }
            1 => Op::AdvanceMillis(u16_of(u)?),
            2 => Op::AdvanceSecs(u.arbitrary()?),
            3 => Op::Timers,
            4 => {
                let src = u.arbitrary()?;
                let port = u.arbitrary()?;
                let len = usize::from(u16_of(u)?).min(u.len());
                Op::Raw {
                    src,
                    port,
                    bytes: u.bytes(len)?.to_vec(),
                }
            }
            5 => Op::Replay {
                src: u.arbitrary()?,
                port: u.arbitrary()?,
                pick: u.arbitrary()?,
                flip_at: u16_of(u)?,
                flip: u.arbitrary()?,
            },
            6 => Op::Initiate {
                client: u.arbitrary()?,
                src: u.arbitrary()?,
                port: u.arbitrary()?,
            },
            7 => Op::Seal {
                client: u.arbitrary()?,
                src: u.arbitrary()?,
                port: u.arbitrary()?,
                inner: u.arbitrary()?,
            },
            8 => Op::Receive {
                client: u.arbitrary()?,
                pick: u.arbitrary()?,
                src: u.arbitrary()?,
                port: u.arbitrary()?,
            },
            9 => Op::Outbound {
                to: u.arbitrary()?,
                inner: u.arbitrary()?,
                farewell: u.arbitrary::<u8>()? & 1 != 0,
            },
            10 => Op::ClockJump(u.arbitrary()?),
            _ => Op::Timers,
        })
    }
}

impl InnerSpec {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend([
            self.src,
            self.dst,
            self.port,
            self.flags,
            self.payload_len,
            self.shape,
        ]);
    }
}

impl Op {
    /// The bytes `arbitrary` reads back as this op.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Op::Feed { diff, slots } => {
                out.extend([0, u8::from(*diff)]);
                for slot in slots {
                    match slot {
                        Change::Keep => out.push(0),
                        Change::Remove => out.push(1),
                        Change::Set(s) => {
                            out.extend([2, s.source, s.binding]);
                            out.extend(s.lifetime_secs.to_le_bytes());
                            out.extend([s.psk, s.services, u8::from(s.same_id)]);
                        }
                    }
                }
            }
            Op::AdvanceMillis(ms) => {
                out.push(1);
                out.extend(ms.to_le_bytes());
            }
            Op::AdvanceSecs(s) => out.extend([2, *s]),
            Op::Timers => out.push(3),
            Op::Raw { src, port, bytes } => {
                out.extend([4, *src, *port]);
                out.extend((bytes.len() as u16).to_le_bytes());
                out.extend(bytes);
            }
            Op::Replay {
                src,
                port,
                pick,
                flip_at,
                flip,
            } => {
                out.extend([5, *src, *port, *pick]);
                out.extend(flip_at.to_le_bytes());
                out.push(*flip);
            }
            Op::Initiate { client, src, port } => out.extend([6, *client, *src, *port]),
            Op::Seal {
                client,
                src,
                port,
                inner,
            } => {
                out.extend([7, *client, *src, *port]);
                inner.encode(out);
            }
            Op::Receive {
                client,
                pick,
                src,
                port,
            } => out.extend([8, *client, *pick, *src, *port]),
            Op::Outbound {
                to,
                inner,
                farewell,
            } => {
                out.extend([9, *to]);
                inner.encode(out);
                out.push(u8::from(*farewell));
            }
            Op::ClockJump(s) => out.extend([10, *s as u8]),
        }
    }
}

impl Input {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![self.load, self.window];
        for op in &self.ops {
            op.encode(&mut out);
        }
        out
    }
}

pub fn run(data: &[u8]) {
    if let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(data)) {
        World::new(&input).play(&input.ops);
    }
}

// ------------------------------------------------------------------ model

/// Where a first-handshake admission stands, as the model sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pin {
    NotApplicable,
    Open(Instant),
    Pinned(IpAddr),
    Closed,
}

#[derive(Debug, Clone)]
struct ModelAdmission {
    id: String,
    feed: FeedAdmission,
    source: IpAddr,
    binding: BindingPolicy,
    deadline: Instant,
    pin: Pin,
}

impl ModelAdmission {
    fn live(&self, now: Instant) -> bool {
        now < self.deadline
    }

    /// Whether this admission binds `ip` (a session's traffic may come
    /// from it and go to it), whatever the time.
    fn binds(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        match self.pin {
            Pin::NotApplicable => covers(self.binding, self.source, ip),
            Pin::Pinned(p) => p == ip,
            Pin::Open(_) | Pin::Closed => false,
        }
    }

    fn allowed_ports(&self) -> Vec<u16> {
        SERVICES
            .iter()
            .filter(|(name, _)| self.feed.services.iter().any(|s| s == name))
            .map(|&(_, port)| port)
            .collect()
    }
}

/// The binding rule written out again, apart from the code under test.
fn covers(binding: BindingPolicy, source: IpAddr, ip: IpAddr) -> bool {
    match (binding, source, ip) {
        (BindingPolicy::Exact, s, c) => s == c,
        (BindingPolicy::Prefix { v4, .. }, IpAddr::V4(s), IpAddr::V4(c)) => {
            let bits = u32::from(v4.min(32));
            bits == 0 || (u32::from(s) ^ u32::from(c)) >> (32 - bits) == 0
        }
        (BindingPolicy::Prefix { v6, .. }, IpAddr::V6(s), IpAddr::V6(c)) => {
            let bits = u32::from(v6.min(128));
            bits == 0 || (u128::from(s) ^ u128::from(c)) >> (128 - bits) == 0
        }
        _ => false,
    }
}

fn binding_of(i: u8) -> BindingPolicy {
    match i % 6 {
        0 => BindingPolicy::Exact,
        1 => BindingPolicy::Prefix { v4: 24, v6: 56 },
        2 => BindingPolicy::Prefix { v4: 32, v6: 64 },
        3 => BindingPolicy::FirstHandshake,
        4 => BindingPolicy::Prefix { v4: 0, v6: 0 },
        _ => BindingPolicy::Prefix { v4: 16, v6: 120 },
    }
}

/// A real WireGuard client for slot k.
struct Client {
    slot: usize,
    /// Made when first used: each costs two scalar multiplications.
    tunn: Option<Box<Tunn>>,
    /// Initiations it made, as far as mac1 covers them.
    initiations: HashSet<Vec<u8>>,
    /// Inner packets it encrypted, as the gateway would hand them on.
    sealed: HashSet<Vec<u8>>,
}

impl Client {
    fn tunn(&mut self) -> &mut Tunn {
        let k = self.slot;
        self.tunn.get_or_insert_with(|| {
            Box::new(Tunn::new(
                world::client_secret(k),
                world::keys().gateway,
                Some(world::client_psk(k)),
                None,
                k as u32 + 1,
                None,
            ))
        })
    }
}

struct World {
    dispatcher: Dispatcher,
    out: Outbox,
    t0: Instant,
    now: Instant,
    server_t0: OffsetDateTime,
    /// The control plane's clock minus ours.
    skew: time::Duration,
    window: Duration,
    version: u64,
    generation: u32,
    slots: [Option<ModelAdmission>; CLIENTS],
    clients: Vec<Client>,
    /// Admission ids the dispatcher's events say are installed, by peer.
    installed: HashMap<PeerId, String>,
    /// Datagrams the clients made (for replays).
    captured: Vec<Vec<u8>>,
    /// Datagrams the gateway sent, newest last.
    sent: Vec<(SocketAddr, Vec<u8>)>,
    /// Packets the TCP stack sent, by tunnel address.
    outbound: HashMap<Ipv4Addr, HashSet<Vec<u8>>>,
    buf: Vec<u8>,
    /// Initiations made or handed to the gateway so far.
    handshakes: usize,
}

impl World {
    fn new(input: &Input) -> World {
        let now = Instant::now();
        let mut config = DispatcherConfig::new(SERVICES);
        let window = Duration::from_secs(1 + u64::from(input.window % 30));
        config.pinning_window = window;
        config.handshakes_per_second = [1, 2, 4, 1000][usize::from(input.load % 4)];
        let clients = (0..CLIENTS)
            .map(|k| Client {
                slot: k,
                tunn: None,
                initiations: HashSet::new(),
                sealed: HashSet::new(),
            })
            .collect();
        World {
            dispatcher: Dispatcher::new(world::gateway_secret(), config, now),
            out: Outbox::new(),
            t0: now,
            now,
            server_t0: time::macros::datetime!(2026-01-01 00:00 UTC),
            skew: time::Duration::ZERO,
            window,
            version: 0,
            generation: 0,
            slots: [None, None, None],
            clients,
            installed: HashMap::new(),
            captured: Vec::new(),
            sent: Vec::new(),
            outbound: HashMap::new(),
            buf: vec![0u8; 2048],
            handshakes: 0,
        }
    }

    fn server_time(&self) -> OffsetDateTime {
        let elapsed = self.now - self.t0;
        self.server_t0 + time::Duration::try_from(elapsed).expect("small") + self.skew
    }

    fn play(&mut self, ops: &[Op]) {
        for op in ops {
            if crate::tracing() {
                eprintln!("{op:?}");
            }
            self.step(op);
            self.check_table();
        }
    }

    fn step(&mut self, op: &Op) {
        match op {
            Op::Feed { diff, slots } => self.feed(*diff, slots),
            Op::AdvanceMillis(ms) => self.now += Duration::from_millis(u64::from(*ms)),
            Op::AdvanceSecs(s) => self.now += Duration::from_secs(u64::from(*s)),
            Op::Timers => self.timers(),
            Op::Raw { src, port, bytes } => {
                self.datagram(world::source_socket(*src, *port), bytes);
            }
            Op::Replay {
                src,
                port,
                pick,
                flip_at,
                flip,
            } => {
                let pool = self.captured.len() + self.sent.len();
                if pool == 0 {
                    return;
                }
                let i = usize::from(*pick) % pool;
                let mut d = if i < self.captured.len() {
                    self.captured[i].clone()
                } else {
                    self.sent[i - self.captured.len()].1.clone()
                };
                if *flip != 0 && !d.is_empty() {
                    let at = usize::from(*flip_at) % d.len();
                    d[at] ^= flip;
                }
                self.datagram(world::source_socket(*src, *port), &d);
            }
            Op::Initiate { client, src, port } => {
                if self.handshakes >= MAX_HANDSHAKES {
                    return;
                }
                let k = usize::from(*client) % CLIENTS;
                self.client_writes(k, world::source_socket(*src, *port), |tunn, buf| {
                    tunn.format_handshake_initiation(buf, true)
                });
            }
            Op::Seal {
                client,
                src,
                port,
                inner,
            } => {
                let k = usize::from(*client) % CLIENTS;
                let (pkt, delivered) = client_packet(k, inner);
                if let Some(d) = delivered {
                    self.clients[k].sealed.insert(d);
                }
                self.client_writes(k, world::source_socket(*src, *port), |tunn, buf| {
                    tunn.encapsulate(&pkt, buf)
                });
            }
            Op::Receive {
                client,
                pick,
                src,
                port,
            } => {
                if self.sent.is_empty() {
                    return;
                }
                let k = usize::from(*client) % CLIENTS;
                let (from, d) =
                    self.sent[self.sent.len() - 1 - usize::from(*pick) % self.sent.len()].clone();
                let answers = self.client_receives(k, from, &d);
                let at = world::source_socket(*src, *port);
                for a in answers {
                    self.client_sends(k, at, a);
                }
            }
            Op::Outbound {
                to,
                inner,
                farewell,
            } => self.outbound(*to, inner, *farewell),
            Op::ClockJump(s) => self.skew += time::Duration::seconds(i64::from(*s)),
        }
    }

    /// What client k made, recorded, and sent to the gateway from `at`.
    /// Client `k` makes a datagram with `make` (in the shared buffer) and,
    /// if it made one, sends it from `at`.
    fn client_writes(
        &mut self,
        k: usize,
        at: SocketAddr,
        make: impl for<'b> FnOnce(&mut Tunn, &'b mut [u8]) -> TunnResult<'b>,
    ) {
        let mut buf = std::mem::take(&mut self.buf);
        let made = match make(self.clients[k].tunn(), &mut buf) {
            TunnResult::WriteToNetwork(d) => Some(d.to_vec()),
            _ => None,
        };
        self.buf = buf;
        if let Some(d) = made {
            self.client_sends(k, at, d);
        }
    }

    fn client_sends(&mut self, k: usize, at: SocketAddr, d: Vec<u8>) {
        if d.len() == HANDSHAKE_INIT_LEN && d[0] == MSG_HANDSHAKE_INIT {
            self.clients[k]
                .initiations
                .insert(d[..INIT_AUTHENTICATED].to_vec());
        }
        if self.captured.len() >= POOL {
            self.captured.remove(0);
        }
        self.captured.push(d.clone());
        self.datagram(at, &d);
    }

    /// Client k takes in a datagram; returns what it sends in answer.
    fn client_receives(&mut self, k: usize, from: SocketAddr, d: &[u8]) -> Vec<Vec<u8>> {
        let mut answers = Vec::new();
        let mut buf = std::mem::take(&mut self.buf);
        let mut input: &[u8] = d;
        loop {
            match self.clients[k]
                .tunn()
                .decapsulate(Some(from.ip()), input, &mut buf)
            {
                TunnResult::WriteToNetwork(a) => answers.push(a.to_vec()),
                TunnResult::WriteToTunnelV4(p, _) => {
                    let dst = Ipv4Addr::new(p[16], p[17], p[18], p[19]);
                    let sent = self.outbound.get(&dst).is_some_and(|s| s.contains(&*p));
                    assert!(
                        sent && dst == world::client_address(k),
                        "client {k} decrypted a packet the TCP stack never sent it"
                    );
                    break;
                }
                TunnResult::WriteToTunnelV6(..) => {
                    panic!("client {k} decrypted an IPv6 packet; the gateway carries IPv4 only")
                }
                TunnResult::Done | TunnResult::Err(_) => break,
            }
            // After a handshake, queued packets come out one per call.
            input = &[];
        }
        self.buf = buf;
        answers
    }

    // ---------------------------------------------------------- feed

    fn feed(&mut self, diff: bool, changes: &[Change; CLIENTS]) {
        let now = self.now;
        let server_time = self.server_time();
        self.version += 1;
        let mut listed = Vec::new();
        let mut removed_ids = Vec::new();
        let mut expected: [Option<ModelAdmission>; CLIENTS] = self.slots.clone();
        for (k, change) in changes.iter().enumerate() {
            let held = self.slots[k].clone();
            match change {
                Change::Keep => {
                    if let (Some(h), false) = (&held, diff) {
                        listed.push(h.feed.clone());
                        expected[k] = self.upsert(Some(h), h.feed.clone(), server_time, now);
                    }
                }
                Change::Remove => {
                    if let Some(h) = &held {
                        removed_ids.push(h.id.clone());
                    }
                    expected[k] = None;
                }
                Change::Set(spec) => {
                    let id = match &held {
                        Some(h) if spec.same_id => h.id.clone(),
                        _ => {
                            self.generation += 1;
                            if let Some(h) = &held {
                                removed_ids.push(h.id.clone());
                            }
                            format!("s{k}g{}", self.generation)
                        }
                    };
                    let feed = feed_admission(k, &id, spec, server_time);
                    listed.push(feed.clone());
                    let same = held.as_ref().filter(|h| h.id == id);
                    expected[k] = self.upsert(same, feed, server_time, now);
                }
            }
        }
        let header = FeedState {
            server: "fuzz".into(),
            version: self.version,
            server_time,
            service_address: SERVICE_ADDRESS,
            admissions: Vec::new(),
        };
        let outcome = if diff {
            self.dispatcher.apply(
                gateway::FeedChangeRef::diff(&header, &listed, &removed_ids),
                now,
            )
        } else {
            let state = FeedState {
                admissions: listed,
                ..header
            };
            self.dispatcher.apply(&state, now)
        };
        for r in &outcome.rejected {
            assert!(
                matches!(r, gateway::AdmissionError::AlreadyExpired { .. }),
                "a valid admission was refused: {r}"
            );
        }
        self.slots = expected;
        self.drain_events();
        assert!(self.out.is_empty(), "applying a feed answer sent something");
    }

    /// The model of the table taking in one listed admission: `held` is
    /// what the slot holds under the same id, if anything.
    fn upsert(
        &self,
        held: Option<&ModelAdmission>,
        feed: FeedAdmission,
        server_time: OffsetDateTime,
        now: Instant,
    ) -> Option<ModelAdmission> {
        let remaining = Duration::try_from(feed.expires_at - server_time)
            .ok()
            .filter(|d| !d.is_zero())?;
        let open = Pin::Open(now + self.window);
        let pin = match held {
            // The same tunnel identity: edited in place, the pinning kept
            // while the binding stays first-handshake.
            Some(h) if h.feed.preshared_key == feed.preshared_key => match (feed.binding, h.pin) {
                (BindingPolicy::FirstHandshake, Pin::NotApplicable) => open,
                (BindingPolicy::FirstHandshake, kept) => kept,
                _ => Pin::NotApplicable,
            },
            _ if feed.binding == BindingPolicy::FirstHandshake => open,
            _ => Pin::NotApplicable,
        };
        Some(ModelAdmission {
            id: feed.id.clone(),
            source: feed.source.to_canonical(),
            binding: feed.binding,
            deadline: now + remaining,
            pin,
            feed,
        })
    }

    fn timers(&mut self) {
        let now = self.now;
        for slot in &mut self.slots {
            if let Some(a) = slot {
                if matches!(a.pin, Pin::Open(until) if until <= now) {
                    a.pin = Pin::Closed;
                }
                if a.deadline <= now {
                    *slot = None;
                }
            }
        }
        self.dispatcher.handle_timers(now, &mut self.out);
        let sends: Vec<(SocketAddr, Vec<u8>)> =
            self.out.transmits().map(|(d, b)| (d, b.to_vec())).collect();
        assert_eq!(sends.len(), self.out.len(), "timers delivered to the stack");
        for (dst, _) in &sends {
            assert!(
                self.admitted(dst.ip()),
                "timers sent to {dst}, which no live admission binds (rule 1)"
            );
        }
        self.record_sent(sends);
        self.out.clear();
        self.drain_events();
    }

    // ---------------------------------------------------------- datagrams

    fn datagram(&mut self, src: SocketAddr, d: &[u8]) {
        if d.len() == HANDSHAKE_INIT_LEN && d[0] == MSG_HANDSHAKE_INIT {
            if self.handshakes >= MAX_HANDSHAKES {
                return;
            }
            self.handshakes += 1;
        }
        let now = self.now;
        let ip = src.ip().to_canonical();
        let bound = self.slots.iter().flatten().any(|a| a.binds(ip));
        let window_open = self
            .slots
            .iter()
            .flatten()
            .any(|a| matches!(a.pin, Pin::Open(_)));
        let looks_like_initiation = looks_like_initiation(d);
        let made_here: Vec<usize> = (0..CLIENTS)
            .filter(|&k| {
                d.len() == HANDSHAKE_INIT_LEN
                    && self.clients[k]
                        .initiations
                        .contains(&d[..INIT_AUTHENTICATED])
            })
            .collect();

        let verdict = self.dispatcher.handle_datagram(src, d, now, &mut self.out);

        if !(bound || window_open && looks_like_initiation) {
            assert_eq!(
                verdict,
                Verdict::Dropped(DropReason::UnknownSource),
                "a datagram from {src}, which nothing admits, got past the source check (rule 2)"
            );
            assert!(
                self.out.is_empty(),
                "a source nothing admits got an answer (rule 1)"
            );
            self.drain_events();
            return;
        }
        let peer = match verdict {
            Verdict::Accepted { peer } => Some(peer),
            Verdict::Dropped(_) => None,
        };
        let slot = peer.map(|p| self.slot_of(p));
        // Only a real initiation of the admission's own key is accepted,
        // and pins only while the window is open.
        if let (Some(k), true) = (slot, looks_like_initiation) {
            assert!(
                made_here.contains(&k) || initiator_is(d, k),
                "an initiation of another key than slot {k}'s was accepted for it"
            );
            let a = self.slots[k].as_mut().expect("an accepted peer is held");
            assert!(a.live(now), "an expired admission accepted a handshake");
            match a.pin {
                Pin::Open(until) => {
                    assert!(now < until, "a handshake pinned after the window closed");
                    a.pin = Pin::Pinned(ip);
                }
                Pin::Closed => panic!("a handshake was accepted for a closed pinning window"),
                Pin::NotApplicable | Pin::Pinned(_) => assert!(
                    a.binds(ip),
                    "a handshake from {src} was accepted for an admission that does not bind it (rule 2)"
                ),
            }
        }
        let outputs: Vec<(bool, SocketAddr, PeerId, Vec<u8>)> = self
            .out
            .iter()
            .map(|o| match o {
                Output::Transmit { dst, datagram } => {
                    (true, dst, PeerId::from_receiver_index(0), datagram.to_vec())
                }
                Output::Deliver { peer, packet } => (false, src, peer, packet.to_vec()),
            })
            .collect();
        self.out.clear();
        let mut sends = Vec::new();
        for (transmit, dst, out_peer, bytes) in outputs {
            if transmit {
                assert_eq!(
                    dst, src,
                    "an answer went somewhere other than the datagram's source"
                );
                if bytes.first() == Some(&3) && bytes.len() == 64 {
                    // A cookie reply: to a source some live admission binds.
                    assert!(
                        self.admitted(ip),
                        "a cookie reply went to {src}, which no live admission binds (rule 1)"
                    );
                } else {
                    let k = slot
                        .unwrap_or_else(|| panic!("a dropped datagram was answered: {verdict:?}"));
                    let a = self.slots[k].as_ref().expect("held");
                    assert!(
                        a.live(now) && a.binds(ip),
                        "slot {k}'s session answered {src}, which its admission does not bind now (rule 1)"
                    );
                }
                sends.push((dst, bytes));
            } else {
                let k = self.slot_of(out_peer);
                assert_eq!(
                    Some(out_peer),
                    peer,
                    "a packet was delivered for another peer"
                );
                let a = self.slots[k].as_ref().expect("held");
                assert!(a.live(now), "an expired admission delivered a packet");
                assert!(
                    a.binds(ip),
                    "a packet from {src} reached the stack, but slot {k}'s admission does not bind it"
                );
                assert!(
                    self.clients[k].sealed.contains(&bytes),
                    "a packet reached the stack that client {k} never sent"
                );
                check_inner(&bytes, world::client_address(k), &a.allowed_ports());
            }
        }
        self.record_sent(sends);
        self.drain_events();
    }

    // ---------------------------------------------------------- outbound

    fn outbound(&mut self, to: u8, spec: &InnerSpec, farewell: bool) {
        let now = self.now;
        let dst = match to % 4 {
            k @ 0..=2 => world::client_address(usize::from(k)),
            _ => Ipv4Addr::new(100, 64, 0, 99),
        };
        let src = match spec.src % 4 {
            0 | 1 => SERVICE_ADDRESS,
            2 => dst,
            _ => Ipv4Addr::new(10, 0, 0, 1),
        };
        let pkt = build_inner(src, dst, 32400 + u16::from(spec.port % 2), 50000, spec);
        if let Some(whole) = cut_at_length(&pkt) {
            self.outbound.entry(dst).or_default().insert(whole);
        }
        let verdict = if farewell {
            self.dispatcher.handle_farewell(&pkt, now, &mut self.out)
        } else {
            self.dispatcher.handle_outbound(&pkt, now, &mut self.out)
        };
        let sends: Vec<(SocketAddr, Vec<u8>)> =
            self.out.transmits().map(|(d, b)| (d, b.to_vec())).collect();
        assert_eq!(
            sends.len(),
            self.out.len(),
            "an outbound packet was delivered inward"
        );
        self.out.clear();
        if !sends.is_empty() {
            assert!(
                matches!(verdict, Verdict::Accepted { .. }),
                "{verdict:?} but sent"
            );
            assert_eq!(inner_source(&pkt), Some(SERVICE_ADDRESS));
            let k = (0..CLIENTS)
                .find(|&k| world::client_address(k) == dst)
                .expect("sent only to a client's tunnel address");
            let a = self.slots[k]
                .as_ref()
                .unwrap_or_else(|| panic!("sent for slot {k}, which holds no admission"));
            for (d, _) in &sends {
                assert!(
                    a.binds(d.ip()) && (farewell || a.live(now)),
                    "a packet for slot {k} went to {d}, which its admission does not bind now (rule 1)"
                );
            }
        }
        self.record_sent(sends);
        self.drain_events();
    }

    // ---------------------------------------------------------- checks

    /// Whether some live admission binds `ip` right now.
    fn admitted(&self, ip: IpAddr) -> bool {
        self.slots
            .iter()
            .flatten()
            .any(|a| a.live(self.now) && a.binds(ip))
    }

    fn slot_of(&self, peer: PeerId) -> usize {
        let id = self
            .installed
            .get(&peer)
            .unwrap_or_else(|| panic!("{peer} was never reported installed"));
        let k = usize::from(id.as_bytes()[1] - b'0');
        assert_eq!(
            self.slots[k].as_ref().map(|a| a.id.as_str()),
            Some(id.as_str()),
            "{peer} acted for an admission that is gone"
        );
        k
    }

    fn record_sent(&mut self, sends: Vec<(SocketAddr, Vec<u8>)>) {
        for s in sends {
            if self.sent.len() >= POOL {
                self.sent.remove(0);
            }
            self.sent.push(s);
        }
    }

    fn drain_events(&mut self) {
        while let Some(e) = self.dispatcher.poll_event() {
            match e {
                PeerEvent::Installed {
                    peer, admission_id, ..
                } => {
                    assert!(
                        self.installed.insert(peer, admission_id).is_none(),
                        "{peer} installed twice"
                    );
                }
                PeerEvent::Removed {
                    peer, admission_id, ..
                } => {
                    assert_eq!(
                        self.installed.remove(&peer),
                        Some(admission_id),
                        "removal of a peer that was not installed"
                    );
                }
                PeerEvent::HandshakeCompleted { peer, endpoint } => {
                    assert!(self.installed.contains_key(&peer));
                    let k = self.slot_of(peer);
                    assert!(
                        self.slots[k]
                            .as_ref()
                            .is_some_and(|a| a.binds(endpoint.ip())),
                        "a handshake completed with {endpoint}, which the admission does not bind"
                    );
                }
            }
        }
        let mut reported: Vec<&str> = self.installed.values().map(String::as_str).collect();
        reported.sort_unstable();
        let mut held: Vec<&str> = self.slots.iter().flatten().map(|a| a.id.as_str()).collect();
        held.sort_unstable();
        assert_eq!(
            reported, held,
            "the events disagree with the admissions held"
        );
    }

    /// The dispatcher's table holds what the model holds.
    fn check_table(&self) {
        let table = self.dispatcher.admissions();
        assert_eq!(table.len(), self.slots.iter().flatten().count());
        crate::feed_apply::check_table(table);
        for a in self.slots.iter().flatten() {
            let t = table
                .by_id(&a.id)
                .unwrap_or_else(|| panic!("{} is missing from the table", a.id));
            assert_eq!(t.deadline(), a.deadline, "{}: deadline", a.id);
            assert_eq!(t.source(), a.source);
            assert_eq!(t.binding(), a.binding);
            let pin = match t.pinning() {
                Pinning::NotApplicable => Pin::NotApplicable,
                Pinning::Open { until } => Pin::Open(until),
                Pinning::Pinned(ip) => Pin::Pinned(ip),
                Pinning::Closed => Pin::Closed,
            };
            assert_eq!(pin, a.pin, "{}: pinning", a.id);
        }
    }
}

fn feed_admission(k: usize, id: &str, spec: &Spec, server_time: OffsetDateTime) -> FeedAdmission {
    FeedAdmission {
        preshared_key: match spec.psk % 3 {
            0 => Some(WgKey(world::client_psk(k))),
            1 => None,
            _ => Some(WgKey(WRONG_PSK)),
        },
        binding: binding_of(spec.binding),
        client_address: Some(world::client_address(k)),
        services: SERVICE_NAMES
            .iter()
            .enumerate()
            .filter(|(i, _)| spec.services & (1 << i) != 0)
            .map(|(_, n)| n.to_string())
            .collect(),
        expires_at: server_time + time::Duration::seconds(i64::from(spec.lifetime_secs)),
        ..feed::tunnel(id, world::keys().clients[k], world::source(spec.source))
    }
}

/// The packet client k encrypts, and what the gateway would hand on of it
/// (boringtun cuts an IPv4 packet at its length field).
fn client_packet(k: usize, spec: &InnerSpec) -> (Vec<u8>, Option<Vec<u8>>) {
    let own = world::client_address(k);
    let src = match spec.src % 4 {
        0 => own,
        1 => world::client_address((k + 1) % CLIENTS),
        2 => SERVICE_ADDRESS,
        _ => Ipv4Addr::new(10, 0, 0, 1),
    };
    let dst = match spec.dst % 3 {
        0 => SERVICE_ADDRESS,
        1 => Ipv4Addr::new(127, 0, 0, 1),
        _ => own,
    };
    let port = [32400, 8096, 22][usize::from(spec.port % 3)];
    let pkt = build_inner(src, dst, 50000, port, spec);
    let delivered = cut_at_length(&pkt);
    (pkt, delivered)
}

/// An IPv4 packet as boringtun hands it on after decryption: cut at its
/// length field (`None` if that says more than there is).
fn cut_at_length(pkt: &[u8]) -> Option<Vec<u8>> {
    match pkt.first().map(|b| b >> 4) {
        Some(4) if pkt.len() >= 20 => {
            let total = usize::from(u16::from_be_bytes([pkt[2], pkt[3]]));
            (total <= pkt.len()).then(|| pkt[..total].to_vec())
        }
        _ => None,
    }
}

fn build_inner(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, spec: &InnerSpec) -> Vec<u8> {
    let payload = vec![0xabu8; usize::from(spec.payload_len)];
    let mut p = packet::ipv4_tcp(&Segment {
        src,
        dst,
        src_port: sport,
        dst_port: dport,
        seq: 1,
        ack: 0,
        flags: spec.flags,
        window: 65535,
        options: &[],
        payload: &payload,
    });
    match spec.shape % 8 {
        3 => p[6] = 0x20,
        4 => p[9] = 17,
        5 => p.extend_from_slice(&[0; 7]),
        6 => {
            let mut v6 = vec![0u8; 40];
            v6[0] = 0x60;
            v6[6] = 6;
            v6[7] = 64;
            p = v6;
        }
        7 => p.clear(),
        _ => {}
    }
    p
}

fn inner_source(p: &[u8]) -> Option<Ipv4Addr> {
    (p.len() >= 20).then(|| Ipv4Addr::new(p[12], p[13], p[14], p[15]))
}

/// Whether an initiation that no client of this run made (a seed recorded
/// from an earlier run with the same fixed keys) is client k's: its
/// encrypted static key opens to client k's public key.
fn initiator_is(d: &[u8], k: usize) -> bool {
    let Ok(boringtun::noise::Packet::HandshakeInit(init)) = Tunn::parse_incoming_packet(d) else {
        return false;
    };
    let secret = world::gateway_secret();
    boringtun::noise::handshake::parse_handshake_anon(&secret, &world::keys().gateway, &init)
        .is_ok_and(|half| half.peer_static_public == world::keys().clients[k].0)
}

/// The inner rules, written out again: IPv4 TCP, unfragmented, whole,
/// from the client's tunnel address to one of its services.
fn check_inner(p: &[u8], client: Ipv4Addr, ports: &[u16]) {
    assert!(
        p.len() >= 40 && p[0] >> 4 == 4,
        "a non-IPv4 packet reached the stack"
    );
    let ihl = usize::from(p[0] & 0x0f) * 4;
    assert!(ihl >= 20);
    assert_eq!(usize::from(u16::from_be_bytes([p[2], p[3]])), p.len());
    assert_eq!(
        u16::from_be_bytes([p[6], p[7]]) & 0x3fff,
        0,
        "a fragment reached the stack"
    );
    assert_eq!(
        p[9],
        packet::PROTO_TCP,
        "a non-TCP packet reached the stack"
    );
    assert_eq!(
        inner_source(p),
        Some(client),
        "a forged inner source reached the stack"
    );
    assert_eq!(
        Ipv4Addr::new(p[16], p[17], p[18], p[19]),
        SERVICE_ADDRESS,
        "a packet for another destination reached the stack"
    );
    assert!(p.len() >= ihl + 20);
    let port = u16::from_be_bytes([p[ihl + 2], p[ihl + 3]]);
    assert!(
        ports.contains(&port),
        "port {port} is not one of the admission's services"
    );
}
