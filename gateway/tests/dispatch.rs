//! The dispatcher against real boringtun clients, wired together in memory
//! with a fake clock: every drop reason, every binding policy, and bytes
//! that arrive intact in both directions.

use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use hushgate_gateway::dispatch::MAX_DATAGRAM_LEN;
use hushgate_gateway::{
    Dispatcher, DispatcherConfig, DropReason, Outbox, PeerEvent, PeerId, Pinning, RemovalCause,
    SourceStatus, Verdict,
};
use proto::feed::FeedAdmission;
use proto::{BindingPolicy, OffsetDateTime, WgKey};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};
use testkit::{feed, packet};

const SERVICE_ADDRESS: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 1);
const PLEX: u16 = 32400;
const JELLYFIN: u16 = 8096;

fn sock(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn secret(seed: u32) -> StaticSecret {
    let mut bytes = [0x5au8; 32];
    bytes[..4].copy_from_slice(&seed.to_be_bytes());
    StaticSecret::from(bytes)
}

// ---------------------------------------------------------------- packets

/// An IPv4 TCP segment with valid IP and TCP checksums, as a TCP stack
/// would send it.
fn tcp_segment(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    src_port: u16,
    dst_port: u16,
    flags: u8,
    payload: &[u8],
) -> Vec<u8> {
    let p = packet::ipv4_tcp(&packet::Segment {
        src,
        dst,
        src_port,
        dst_port,
        seq: 0x0102_0304,
        ack: 0,
        flags,
        window: 65535,
        options: &[],
        payload,
    });
    // A receiver's check over a correct header sums to zero.
    assert!(packet::parse_ipv4_tcp(&p).is_some());
    p
}

const SYN: u8 = 0x02;
const SYN_ACK: u8 = 0x12;

/// A minimal IPv6 packet (no payload).
fn ipv6_packet() -> Vec<u8> {
    let mut p = vec![0u8; 40];
    p[0] = 0x60;
    p[6] = 6;
    p[7] = 64;
    let IpAddr::V6(src) = ip("fd00::2") else {
        unreachable!()
    };
    let IpAddr::V6(dst) = ip("fd00::1") else {
        unreachable!()
    };
    p[8..24].copy_from_slice(&src.octets());
    p[24..40].copy_from_slice(&dst.octets());
    p
}

// ---------------------------------------------------------------- actors

/// The fake clock handed to the dispatcher. boringtun's own timers keep
/// reading the real clock (its mock-instant feature would freeze boringtun
/// for every crate in a workspace test run), so tests that need boringtun
/// itself to see time pass say so.
struct Clock {
    now: Instant,
}

impl Clock {
    fn advance(&mut self, by: Duration) {
        self.now += by;
    }
}

/// What a client's `Tunn` made of a datagram from the gateway.
#[derive(Debug, PartialEq, Eq)]
enum ClientGot {
    Network(Vec<u8>),
    Tunnel(Vec<u8>),
    Done,
    Err(String),
}

/// A hushgate client shim, reduced to its boringtun `Tunn`.
struct Client {
    tunn: Tunn,
    public: PublicKey,
    addr: SocketAddr,
    inner: Ipv4Addr,
    psk: [u8; 32],
}

impl Client {
    fn new(seed: u32, addr: &str, inner: Ipv4Addr, gateway: PublicKey) -> Client {
        let secret = secret(1000 + seed);
        let public = PublicKey::from(&secret);
        let psk = [seed as u8 ^ 0xa5; 32];
        let tunn = Tunn::new(secret, gateway, Some(psk), None, seed, None);
        Client {
            tunn,
            public,
            addr: sock(addr),
            inner,
            psk,
        }
    }

    /// The feed entry the control plane would push for this client.
    fn admission(&self, id: &str, binding: BindingPolicy) -> FeedAdmission {
        FeedAdmission {
            preshared_key: Some(WgKey(self.psk)),
            binding,
            client_address: Some(self.inner),
            ..feed::tunnel(id, WgKey(self.public.to_bytes()), self.addr.ip())
        }
    }

    fn initiation(&mut self) -> Vec<u8> {
        let mut buf = vec![0u8; 256];
        match self.tunn.format_handshake_initiation(&mut buf, true) {
            TunnResult::WriteToNetwork(b) => b.to_vec(),
            other => panic!("client could not initiate: {other:?}"),
        }
    }

    fn seal(&mut self, packet: &[u8]) -> Vec<u8> {
        let mut buf = vec![0u8; packet.len() + 256];
        match self.tunn.encapsulate(packet, &mut buf) {
            TunnResult::WriteToNetwork(b) => b.to_vec(),
            other => panic!("client has no session: {other:?}"),
        }
    }

    fn receive(&mut self, datagram: &[u8]) -> ClientGot {
        let mut buf = vec![0u8; 65_536];
        match self.tunn.decapsulate(None, datagram, &mut buf) {
            TunnResult::WriteToNetwork(b) => ClientGot::Network(b.to_vec()),
            TunnResult::WriteToTunnelV4(b, _) | TunnResult::WriteToTunnelV6(b, _) => {
                ClientGot::Tunnel(b.to_vec())
            }
            TunnResult::Done => ClientGot::Done,
            TunnResult::Err(e) => ClientGot::Err(format!("{e:?}")),
        }
    }

    fn syn(&self, dst_port: u16) -> Vec<u8> {
        tcp_segment(self.inner, SERVICE_ADDRESS, 49152, dst_port, SYN, b"")
    }
}

/// Everything one dispatcher call produced, copied out of the outbox.
#[derive(Debug)]
struct Result {
    verdict: Verdict,
    transmits: Vec<(SocketAddr, Vec<u8>)>,
    deliveries: Vec<(PeerId, Vec<u8>)>,
}

impl Result {
    fn assert_silent_drop(&self, reason: DropReason) {
        assert_eq!(self.verdict, Verdict::Dropped(reason), "{self:?}");
        assert!(
            self.transmits.is_empty(),
            "answered a dropped datagram: {self:?}"
        );
        assert!(self.deliveries.is_empty(), "delivered a dropped datagram");
    }
}

/// The gateway under test plus the world around it.
struct Net {
    gateway: Dispatcher,
    public: PublicKey,
    out: Outbox,
    clock: Clock,
    version: u64,
}

fn server_time() -> OffsetDateTime {
    feed::SERVER_TIME
}

impl Net {
    fn new() -> Net {
        Net::with_config(DispatcherConfig::new([
            ("plex", PLEX),
            ("jellyfin", JELLYFIN),
        ]))
    }

    fn with_config(config: DispatcherConfig) -> Net {
        let secret = secret(1);
        let public = PublicKey::from(&secret);
        let clock = Clock {
            now: Instant::now(),
        };
        Net {
            gateway: Dispatcher::new(secret, config, clock.now),
            public,
            out: Outbox::new(),
            clock,
            version: 0,
        }
    }

    fn client(&self, seed: u32, addr: &str) -> Client {
        Client::new(
            seed,
            addr,
            Ipv4Addr::new(100, 64, 0, 1 + seed as u8),
            self.public,
        )
    }

    fn apply(&mut self, admissions: Vec<FeedAdmission>) -> hushgate_gateway::ApplyOutcome {
        self.version += 1;
        let state = feed::state(self.version, admissions);
        let outcome = self.gateway.apply(&state, self.clock.now);
        assert!(outcome.rejected.is_empty(), "{:?}", outcome.rejected);
        outcome
    }

    fn collect(&mut self, verdict: Verdict) -> Result {
        let result = Result {
            verdict,
            transmits: self.out.transmits().map(|(d, b)| (d, b.to_vec())).collect(),
            deliveries: self
                .out
                .deliveries()
                .map(|(p, b)| (p, b.to_vec()))
                .collect(),
        };
        self.out.clear();
        result
    }

    fn send(&mut self, from: SocketAddr, datagram: &[u8]) -> Result {
        let verdict = self
            .gateway
            .handle_datagram(from, datagram, self.clock.now, &mut self.out);
        self.collect(verdict)
    }

    fn outbound(&mut self, packet: &[u8]) -> Result {
        let verdict = self
            .gateway
            .handle_outbound(packet, self.clock.now, &mut self.out);
        self.collect(verdict)
    }

    /// Runs the gateway's timers; returns what they sent.
    fn timers(&mut self) -> Vec<(SocketAddr, Vec<u8>)> {
        self.gateway.handle_timers(self.clock.now, &mut self.out);
        assert_eq!(self.out.deliveries().count(), 0);
        let sent = self.out.transmits().map(|(d, b)| (d, b.to_vec())).collect();
        self.out.clear();
        sent
    }

    /// A full handshake from `from`, finished by the client's keepalive so
    /// that the gateway may send data too.
    fn handshake_from(&mut self, client: &mut Client, from: SocketAddr) -> PeerId {
        // Fresh TAI64N timestamp for every initiation, as on a real clock.
        self.clock.advance(Duration::from_millis(1));
        let init = client.initiation();
        let r = self.send(from, &init);
        let Verdict::Accepted { peer } = r.verdict else {
            panic!("handshake refused: {r:?}");
        };
        assert_eq!(r.transmits.len(), 1, "{r:?}");
        assert_eq!(r.transmits[0].0, from);
        assert_eq!(r.transmits[0].1[0], 2, "a handshake response");
        let ClientGot::Network(keepalive) = client.receive(&r.transmits[0].1) else {
            panic!("client rejected the gateway's response");
        };
        let r = self.send(from, &keepalive);
        assert_eq!(r.verdict, Verdict::Accepted { peer });
        assert!(r.deliveries.is_empty() && r.transmits.is_empty());
        peer
    }

    fn handshake(&mut self, client: &mut Client) -> PeerId {
        let from = client.addr;
        self.handshake_from(client, from)
    }

    fn events(&mut self) -> Vec<PeerEvent> {
        std::iter::from_fn(|| self.gateway.poll_event()).collect()
    }
}

// ---------------------------------------------------------------- tests

#[test]
fn handshake_then_tcp_both_ways_arrives_intact() {
    let mut net = Net::new();
    let mut alice = net.client(1, "203.0.113.7:51820");
    net.apply(vec![alice.admission("adm_alice", BindingPolicy::Exact)]);
    let peer = net.handshake(&mut alice);

    let syn = alice.syn(PLEX);
    let sealed = alice.seal(&syn);
    let r = net.send(alice.addr, &sealed);
    assert_eq!(r.verdict, Verdict::Accepted { peer });
    assert_eq!(r.deliveries, vec![(peer, syn.clone())]);
    assert!(r.transmits.is_empty());

    let payload = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
    let syn_ack = tcp_segment(SERVICE_ADDRESS, alice.inner, PLEX, 49152, SYN_ACK, payload);
    let r = net.outbound(&syn_ack);
    assert_eq!(r.verdict, Verdict::Accepted { peer });
    assert_eq!(r.transmits.len(), 1);
    assert_eq!(r.transmits[0].0, alice.addr);
    assert_eq!(alice.receive(&r.transmits[0].1), ClientGot::Tunnel(syn_ack));

    // A keepalive is fine and delivers nothing.
    let keepalive = alice.seal(&[]);
    let r = net.send(alice.addr, &keepalive);
    assert_eq!(r.verdict, Verdict::Accepted { peer });
    assert!(r.deliveries.is_empty() && r.transmits.is_empty());

    let counters = net.gateway.peer_counters(peer).unwrap();
    assert_eq!(counters.handshakes, 1);
    assert_eq!(counters.rx_packets, 4, "init, keepalive, syn, keepalive");
    assert_eq!(counters.tx_packets, 2, "response, syn-ack");
    assert_eq!(counters.tx_bytes, 92 + (syn_ack_len(payload) + 32) as u64);
    assert_eq!(net.gateway.drops().total(), 0);
    assert_eq!(
        net.events(),
        vec![
            PeerEvent::Installed {
                peer,
                admission_id: "adm_alice".into(),
                client_address: alice.inner
            },
            PeerEvent::HandshakeCompleted {
                peer,
                endpoint: alice.addr
            },
        ]
    );
}

fn syn_ack_len(payload: &[u8]) -> usize {
    40 + payload.len()
}

#[test]
fn unknown_source_gets_nothing_at_all() {
    let mut net = Net::new();
    let mut alice = net.client(1, "203.0.113.7:51820");
    net.apply(vec![alice.admission("adm_alice", BindingPolicy::Exact)]);
    let stranger = sock("198.51.100.1:4444");

    let init = alice.initiation();
    let mut data_shaped = vec![0u8; 64];
    data_shaped[0] = 4;
    let mut cookie_shaped = vec![0u8; 64];
    cookie_shaped[0] = 3;
    for datagram in [
        init.as_slice(),
        &[0xffu8; 200],
        &[],
        &data_shaped,
        &cookie_shaped,
        &vec![0u8; 70_000],
    ] {
        net.send(stranger, datagram)
            .assert_silent_drop(DropReason::UnknownSource);
    }
    assert_eq!(net.gateway.drops().unknown_source, 6);
    assert_eq!(net.gateway.drops().total(), 6, "counted nowhere else");
    let peer = net.gateway.admissions().by_id("adm_alice").unwrap().peer();
    assert_eq!(net.gateway.peer_counters(peer).unwrap().handshakes, 0);
    assert_eq!(net.gateway.peer_endpoint(peer), None);
}

#[test]
fn admitted_key_from_another_source_is_refused() {
    let mut net = Net::new();
    let mut alice = net.client(1, "203.0.113.7:51820");
    let bob = net.client(2, "198.51.100.20:51820");
    net.apply(vec![
        alice.admission("adm_alice", BindingPolicy::Exact),
        bob.admission("adm_bob", BindingPolicy::Exact),
    ]);

    // From Bob's (admitted) address, Alice's key does not pass.
    let init = alice.initiation();
    net.send(bob.addr, &init)
        .assert_silent_drop(DropReason::WrongSource);
    // From nowhere admitted it does not even get looked at.
    net.send(sock("192.0.2.99:51820"), &init)
        .assert_silent_drop(DropReason::UnknownSource);
    // From her own address the same key works.
    net.handshake(&mut alice);
    assert_eq!(net.gateway.drops().wrong_source, 1);
}

#[test]
fn session_packet_from_another_address_is_dropped_before_decryption() {
    let mut net = Net::new();
    let mut alice = net.client(1, "203.0.113.7:51820");
    let mut bob = net.client(2, "198.51.100.20:51820");
    net.apply(vec![
        alice.admission("adm_alice", BindingPolicy::Exact),
        bob.admission("adm_bob", BindingPolicy::Exact),
    ]);
    let peer = net.handshake(&mut alice);
    net.handshake(&mut bob);

    let syn = alice.syn(PLEX);
    let sealed = alice.seal(&syn);
    net.send(bob.addr, &sealed)
        .assert_silent_drop(DropReason::WrongSource);
    net.send(sock("192.0.2.99:51820"), &sealed)
        .assert_silent_drop(DropReason::UnknownSource);
    // The packet's counter was not consumed by the refused copies: the
    // genuine one from Alice's address still decrypts.
    let r = net.send(alice.addr, &sealed);
    assert_eq!(r.deliveries, vec![(peer, syn)]);
    // Replies still go to Alice, not to where the copies came from.
    assert_eq!(net.gateway.peer_endpoint(peer), Some(alice.addr));
}

#[test]
fn unadmitted_key_from_admitted_source_is_wrong_key() {
    let mut net = Net::new();
    let alice = net.client(1, "203.0.113.7:51820");
    net.apply(vec![alice.admission("adm_alice", BindingPolicy::Exact)]);
    let mut mallory = net.client(66, "203.0.113.7:40000");
    let init = mallory.initiation();
    net.send(mallory.addr, &init)
        .assert_silent_drop(DropReason::WrongKey);
    assert_eq!(net.gateway.drops().wrong_key, 1);
}

#[test]
fn forged_inner_source_is_dropped() {
    let mut net = Net::new();
    let mut alice = net.client(1, "203.0.113.7:51820");
    let bob = net.client(2, "198.51.100.20:51820");
    net.apply(vec![
        alice.admission("adm_alice", BindingPolicy::Exact),
        bob.admission("adm_bob", BindingPolicy::Exact),
    ]);
    net.handshake(&mut alice);
    let forged = tcp_segment(bob.inner, SERVICE_ADDRESS, 49152, PLEX, SYN, b"");
    let sealed = alice.seal(&forged);
    net.send(alice.addr, &sealed)
        .assert_silent_drop(DropReason::InnerViolation);
}

#[test]
fn inner_destination_port_and_protocol_are_checked() {
    let mut net = Net::new();
    let mut alice = net.client(1, "203.0.113.7:51820");
    net.apply(vec![alice.admission("adm_alice", BindingPolicy::Exact)]);
    let peer = net.handshake(&mut alice);

    let mut udp = alice.syn(PLEX);
    udp[9] = 17;
    let refused = [
        // Another host behind the gateway.
        tcp_segment(
            alice.inner,
            Ipv4Addr::new(127, 0, 0, 1),
            49152,
            PLEX,
            SYN,
            b"",
        ),
        // A port the gateway has no service on.
        alice.syn(22),
        // A service the gateway offers but this admission does not grant.
        alice.syn(JELLYFIN),
        udp,
        ipv6_packet(),
        // Authenticated but not an IP packet at all.
        vec![0x00; 40],
    ];
    for packet in refused {
        let sealed = alice.seal(&packet);
        net.send(alice.addr, &sealed)
            .assert_silent_drop(DropReason::InnerViolation);
    }
    assert_eq!(net.gateway.drops().inner_violation, 6);
    let syn = alice.syn(PLEX);
    let sealed = alice.seal(&syn);
    assert_eq!(net.send(alice.addr, &sealed).deliveries, vec![(peer, syn)]);
}

#[test]
fn malformed_datagrams_from_an_admitted_source_are_dropped() {
    let mut net = Net::new();
    let mut alice = net.client(1, "203.0.113.7:51820");
    net.apply(vec![alice.admission("adm_alice", BindingPolicy::Exact)]);
    let peer = net.handshake(&mut alice);
    let sealed = alice.seal(&alice.syn(PLEX));
    let init = alice.initiation();

    let mut reserved_set = init.clone();
    reserved_set[1] = 1;
    let mut type_five = sealed.clone();
    type_five[0] = 5;
    for datagram in [
        &[][..],
        &[4u8],
        &sealed[..31],
        &init[..147],
        &reserved_set,
        &type_five,
        &vec![4u8; MAX_DATAGRAM_LEN + 1],
    ] {
        net.send(alice.addr, datagram)
            .assert_silent_drop(DropReason::Malformed);
    }

    // Right shape, wrong contents.
    let mut bad_tag = sealed.clone();
    let last = bad_tag.len() - 1;
    bad_tag[last] ^= 1;
    net.send(alice.addr, &bad_tag)
        .assert_silent_drop(DropReason::Unauthenticated);
    let mut bad_mac = init.clone();
    bad_mac[120] ^= 1;
    net.send(alice.addr, &bad_mac)
        .assert_silent_drop(DropReason::Unauthenticated);
    let mut no_such_index = sealed.clone();
    no_such_index[4..8].copy_from_slice(&0x00ff_ff00u32.to_le_bytes());
    net.send(alice.addr, &no_such_index)
        .assert_silent_drop(DropReason::UnknownIndex);

    assert_eq!(net.gateway.drops().malformed, 7);
    // None of it disturbed the session.
    let syn = alice.syn(PLEX);
    let sealed = alice.seal(&syn);
    assert_eq!(net.send(alice.addr, &sealed).deliveries, vec![(peer, syn)]);
}

#[test]
fn a_smaller_datagram_limit_is_enforced_both_ways() {
    let mut config = DispatcherConfig::new([("plex", PLEX)]);
    config.max_datagram_len = 1452;
    let mut net = Net::with_config(config);
    let mut alice = net.client(1, "203.0.113.7:51820");
    net.apply(vec![alice.admission("adm_alice", BindingPolicy::Exact)]);
    net.handshake(&mut alice);
    // 40 bytes of headers + 1381 of payload + 32 of WireGuard = 1453.
    let big = tcp_segment(alice.inner, SERVICE_ADDRESS, 49152, PLEX, 0x10, &[7; 1381]);
    let sealed = alice.seal(&big);
    assert_eq!(sealed.len(), 1453);
    net.send(alice.addr, &sealed)
        .assert_silent_drop(DropReason::Malformed);
    let big_reply = tcp_segment(SERVICE_ADDRESS, alice.inner, PLEX, 49152, 0x10, &[7; 1381]);
    net.outbound(&big_reply)
        .assert_silent_drop(DropReason::Malformed);
    let fits = tcp_segment(SERVICE_ADDRESS, alice.inner, PLEX, 49152, 0x10, &[7; 1380]);
    assert_eq!(net.outbound(&fits).transmits.len(), 1);
}

#[test]
fn replayed_data_and_handshakes_are_dropped() {
    let mut net = Net::new();
    let mut alice = net.client(1, "203.0.113.7:51820");
    net.apply(vec![alice.admission("adm_alice", BindingPolicy::Exact)]);

    net.clock.advance(Duration::from_millis(1));
    let init = alice.initiation();
    let r = net.send(alice.addr, &init);
    let ClientGot::Network(keepalive) = alice.receive(&r.transmits[0].1) else {
        panic!("handshake failed");
    };
    net.send(alice.addr, &keepalive);
    net.send(alice.addr, &init)
        .assert_silent_drop(DropReason::Replayed);

    let syn = alice.syn(PLEX);
    let sealed = alice.seal(&syn);
    assert_eq!(net.send(alice.addr, &sealed).deliveries.len(), 1);
    net.send(alice.addr, &sealed)
        .assert_silent_drop(DropReason::Replayed);
    assert_eq!(net.gateway.drops().replayed, 2);
}

#[test]
fn expiry_removes_the_peer_and_silences_it() {
    let mut net = Net::new();
    let mut alice = net.client(1, "203.0.113.7:51820");
    let mut admission = alice.admission("adm_alice", BindingPolicy::Exact);
    admission.expires_at = server_time() + time::Duration::seconds(60);
    net.apply(vec![admission]);
    let peer = net.handshake(&mut alice);
    net.events();
    let deadline = net.gateway.admissions().get(peer).unwrap().deadline();
    assert!(net.gateway.poll_timeout().unwrap() <= deadline);

    net.clock.advance(Duration::from_secs(61));
    // Past the deadline but before the sweep: already refused.
    let sealed = alice.seal(&alice.syn(PLEX));
    net.send(alice.addr, &sealed)
        .assert_silent_drop(DropReason::Expired);
    let reply = tcp_segment(SERVICE_ADDRESS, alice.inner, PLEX, 49152, 0x10, b"");
    net.outbound(&reply).assert_silent_drop(DropReason::Expired);

    net.timers();
    assert_eq!(
        net.events(),
        vec![PeerEvent::Removed {
            peer,
            admission_id: "adm_alice".into(),
            client_address: alice.inner,
            cause: RemovalCause::Expired,
        }]
    );
    net.send(alice.addr, &sealed)
        .assert_silent_drop(DropReason::UnknownSource);
    let init = alice.initiation();
    net.send(alice.addr, &init)
        .assert_silent_drop(DropReason::UnknownSource);
    net.outbound(&reply).assert_silent_drop(DropReason::NoRoute);
    assert!(net.gateway.admissions().is_empty());
    assert_eq!(net.gateway.poll_timeout(), None);
}

#[test]
fn revocation_through_the_feed_removes_the_peer_at_once() {
    let mut net = Net::new();
    let mut alice = net.client(1, "203.0.113.7:51820");
    let bob = net.client(2, "198.51.100.20:51820");
    net.apply(vec![
        alice.admission("adm_alice", BindingPolicy::Exact),
        bob.admission("adm_bob", BindingPolicy::Exact),
    ]);
    let peer = net.handshake(&mut alice);
    net.events();

    let outcome = net.apply(vec![bob.admission("adm_bob", BindingPolicy::Exact)]);
    assert_eq!(outcome.removed.len(), 1);
    assert_eq!(
        net.events(),
        vec![PeerEvent::Removed {
            peer,
            admission_id: "adm_alice".into(),
            client_address: alice.inner,
            cause: RemovalCause::Revoked,
        }]
    );
    let sealed = alice.seal(&alice.syn(PLEX));
    net.send(alice.addr, &sealed)
        .assert_silent_drop(DropReason::UnknownSource);
    // Even from an address that is still admitted, the session is gone.
    net.send(bob.addr, &sealed)
        .assert_silent_drop(DropReason::UnknownIndex);
}

#[test]
fn changed_services_apply_to_the_live_session_and_a_new_key_replaces_the_peer() {
    let mut net = Net::new();
    let mut alice = net.client(1, "203.0.113.7:51820");
    let mut admission = alice.admission("adm_alice", BindingPolicy::Exact);
    net.apply(vec![admission.clone()]);
    let peer = net.handshake(&mut alice);
    let sealed = alice.seal(&alice.syn(JELLYFIN));
    net.send(alice.addr, &sealed)
        .assert_silent_drop(DropReason::InnerViolation);

    admission.services.push("jellyfin".into());
    let outcome = net.apply(vec![admission.clone()]);
    assert_eq!(outcome.changed.len(), 1);
    let syn = alice.syn(JELLYFIN);
    let sealed = alice.seal(&syn);
    assert_eq!(net.send(alice.addr, &sealed).deliveries, vec![(peer, syn)]);

    // The client re-keyed (a new ephemeral key under the same admission id):
    // the old peer and its sessions are gone.
    let mut renewed = net.client(9, "203.0.113.7:51820");
    renewed.inner = alice.inner;
    admission.client_public_key = Some(WgKey(renewed.public.to_bytes()));
    admission.preshared_key = Some(WgKey(renewed.psk));
    net.events();
    let outcome = net.apply(vec![admission]);
    assert_eq!(outcome.removed.len(), 1);
    assert_eq!(outcome.added.len(), 1);
    let events = net.events();
    assert!(matches!(
        events[0],
        PeerEvent::Removed {
            cause: RemovalCause::Replaced,
            ..
        }
    ));
    let sealed = alice.seal(&alice.syn(PLEX));
    net.send(alice.addr, &sealed)
        .assert_silent_drop(DropReason::UnknownIndex);
    let new_peer = net.handshake(&mut renewed);
    assert_ne!(new_peer, peer);
}

#[test]
fn prefix_24_binding_admits_the_neighbourhood_only() {
    let mut net = Net::new();
    // The control plane saw .7; the client's UDP leaves from .200 (CGNAT).
    let mut alice = net.client(1, "203.0.113.7:51820");
    net.apply(vec![
        alice.admission("adm_alice", BindingPolicy::prefix(24, 56).unwrap())
    ]);
    let peer = net.handshake_from(&mut alice, sock("203.0.113.200:61000"));

    // A NAT rebinding inside the prefix keeps working, and replies follow.
    let syn = alice.syn(PLEX);
    let sealed = alice.seal(&syn);
    let r = net.send(sock("203.0.113.201:61001"), &sealed);
    assert_eq!(r.deliveries, vec![(peer, syn)]);
    assert_eq!(
        net.gateway.peer_endpoint(peer),
        Some(sock("203.0.113.201:61001"))
    );

    let sealed = alice.seal(&alice.syn(PLEX));
    net.send(sock("203.0.114.200:61000"), &sealed)
        .assert_silent_drop(DropReason::UnknownSource);
    let init = alice.initiation();
    net.send(sock("203.0.114.200:61000"), &init)
        .assert_silent_drop(DropReason::UnknownSource);
}

#[test]
fn an_ipv6_client_under_prefix_24_56_is_admitted_within_its_56_only() {
    let mut net = Net::new();
    let mut alice = net.client(1, "[2001:db8:1:2::5]:51820");
    // The server's binding names an IPv4 length for carrier pools and an
    // IPv6 one for a home's delegated prefix; the IPv4 length must never
    // apply to IPv6 (a /24 there is a large part of a provider).
    let binding: BindingPolicy = "prefix:24,56".parse().unwrap();
    net.apply(vec![alice.admission("adm_alice", binding)]);
    // Another LAN of the same home (same /56): admitted.
    let peer = net.handshake_from(&mut alice, sock("[2001:db8:1:ff::99]:51820"));
    let syn = alice.syn(PLEX);
    let sealed = alice.seal(&syn);
    assert_eq!(
        net.send(sock("[2001:db8:1:80::7]:40000"), &sealed)
            .deliveries,
        vec![(peer, syn)]
    );
    // The neighbouring /56, and the rest of the /24: nothing.
    for stranger in ["[2001:db8:1:100::5]:51820", "[2001:db8:ff::1]:51820"] {
        let init = alice.initiation();
        net.send(sock(stranger), &init)
            .assert_silent_drop(DropReason::UnknownSource);
        let sealed = alice.seal(&alice.syn(PLEX));
        net.send(sock(stranger), &sealed)
            .assert_silent_drop(DropReason::UnknownSource);
    }
}

#[test]
fn prefix_64_binding_for_ipv6() {
    let mut net = Net::new();
    let mut alice = net.client(1, "[2001:db8:1:2::5]:51820");
    // The short form a server created before per-family lengths holds.
    let binding: BindingPolicy = "prefix:64".parse().unwrap();
    net.apply(vec![alice.admission("adm_alice", binding)]);
    let peer = net.handshake_from(&mut alice, sock("[2001:db8:1:2:aaaa::99]:51820"));
    let syn = alice.syn(PLEX);
    let sealed = alice.seal(&syn);
    assert_eq!(
        net.send(sock("[2001:db8:1:2:aaaa::99]:51820"), &sealed)
            .deliveries,
        vec![(peer, syn)]
    );
    let init = alice.initiation();
    net.send(sock("[2001:db8:1:3::5]:51820"), &init)
        .assert_silent_drop(DropReason::UnknownSource);
    let sealed = alice.seal(&alice.syn(PLEX));
    net.send(sock("[2001:db8:1:3::5]:51820"), &sealed)
        .assert_silent_drop(DropReason::UnknownSource);
}

#[test]
fn exact_binding_matches_ipv4_mapped_sources_from_dual_stack_sockets() {
    let mut net = Net::new();
    let mut alice = net.client(1, "203.0.113.7:51820");
    net.apply(vec![alice.admission("adm_alice", BindingPolicy::Exact)]);
    let mapped = sock("[::ffff:203.0.113.7]:51820");
    let peer = net.handshake_from(&mut alice, mapped);
    // Replies keep the form the socket reported, so a dual-stack socket
    // can send them.
    assert_eq!(net.gateway.peer_endpoint(peer), Some(mapped));
    let sealed = alice.seal(&alice.syn(PLEX));
    net.send(sock("[::ffff:203.0.113.8]:51820"), &sealed)
        .assert_silent_drop(DropReason::UnknownSource);
}

#[test]
fn first_handshake_pins_the_first_valid_source_then_refuses_others() {
    let mut net = Net::new();
    let mut alice = net.client(1, "203.0.113.7:51820");
    let mut carol = net.client(3, "203.0.113.30:51820");
    net.apply(vec![
        alice.admission("adm_alice", BindingPolicy::FirstHandshake),
        carol.admission("adm_carol", BindingPolicy::FirstHandshake),
    ]);
    let alice_peer = net.gateway.admissions().by_id("adm_alice").unwrap().peer();

    // While a window is open an initiation from anywhere is read, but
    // only a valid handshake for an admitted key may pin.
    let mut mallory = net.client(66, "192.0.2.66:51820");
    let init = mallory.initiation();
    net.send(mallory.addr, &init)
        .assert_silent_drop(DropReason::WrongKey);
    // Nothing but initiations from such sources is read.
    let mut data_shaped = vec![0u8; 64];
    data_shaped[0] = 4;
    net.send(mallory.addr, &data_shaped)
        .assert_silent_drop(DropReason::UnknownSource);

    // Alice's UDP comes from a different address than her HTTPS did.
    let pinned = sock("192.0.2.44:51820");
    net.handshake_from(&mut alice, pinned);
    assert_eq!(
        net.gateway.admissions().get(alice_peer).unwrap().pinning(),
        Pinning::Pinned(pinned.ip())
    );
    let syn = alice.syn(PLEX);
    let sealed = alice.seal(&syn);
    assert_eq!(
        net.send(pinned, &sealed).deliveries,
        vec![(alice_peer, syn)]
    );

    // Carol's window is still open, so initiations from anywhere are read;
    // Alice's key from another address is refused by its pin.
    let elsewhere = sock("192.0.2.55:51820");
    net.clock.advance(Duration::from_millis(1));
    let init = alice.initiation();
    net.send(elsewhere, &init)
        .assert_silent_drop(DropReason::WrongSource);
    let sealed = alice.seal(&alice.syn(PLEX));
    net.send(elsewhere, &sealed)
        .assert_silent_drop(DropReason::UnknownSource);

    // Once Carol pins too, no window is open: the same initiation is not
    // even read.
    net.handshake(&mut carol);
    net.clock.advance(Duration::from_millis(1));
    let init = alice.initiation();
    net.send(elsewhere, &init)
        .assert_silent_drop(DropReason::UnknownSource);
    // Re-handshakes from the pinned address keep working after the window.
    net.clock.advance(Duration::from_secs(60));
    net.timers();
    net.handshake_from(&mut alice, pinned);

    let stats = net.gateway.stats(net.clock.now);
    let alice_stats = stats
        .peers
        .iter()
        .find(|p| p.admission_id == "adm_alice")
        .unwrap();
    assert_eq!(alice_stats.pinned_source, Some(pinned.ip()));
    assert_eq!(alice_stats.handshakes, 2);
}

#[test]
fn first_handshake_window_that_passes_unused_admits_nobody() {
    let mut config = DispatcherConfig::new([("plex", PLEX)]);
    config.pinning_window = Duration::from_secs(10);
    let mut net = Net::with_config(config);
    let mut alice = net.client(1, "203.0.113.7:51820");
    net.apply(vec![
        alice.admission("adm_alice", BindingPolicy::FirstHandshake)
    ]);
    let window_end = net.clock.now + Duration::from_secs(10);
    assert!(net.gateway.poll_timeout().unwrap() <= window_end);

    net.clock.advance(Duration::from_secs(11));
    net.timers();
    let peer = net.gateway.admissions().by_id("adm_alice").unwrap().peer();
    assert_eq!(
        net.gateway.admissions().get(peer).unwrap().pinning(),
        Pinning::Closed
    );
    let init = alice.initiation();
    // Not from anywhere, and not from the address the control plane saw.
    net.send(sock("192.0.2.44:51820"), &init)
        .assert_silent_drop(DropReason::UnknownSource);
    net.send(alice.addr, &init)
        .assert_silent_drop(DropReason::UnknownSource);
}

#[test]
fn handshake_flood_from_an_admitted_source_meets_cookies() {
    let mut config = DispatcherConfig::new([("plex", PLEX)]);
    config.handshakes_per_second = 1;
    let mut net = Net::with_config(config);
    let mut alice = net.client(1, "203.0.113.7:51820");
    net.apply(vec![alice.admission("adm_alice", BindingPolicy::Exact)]);
    let peer = net.handshake(&mut alice);

    // Over the limit: a cookie reply, no DH, no session.
    net.clock.advance(Duration::from_millis(1));
    let init = alice.initiation();
    let r = net.send(alice.addr, &init);
    assert_eq!(r.verdict, Verdict::Dropped(DropReason::RateLimited));
    assert_eq!(r.transmits.len(), 1);
    assert_eq!(r.transmits[0].0, alice.addr);
    assert_eq!(r.transmits[0].1.len(), 64);
    assert_eq!(r.transmits[0].1[0], 3, "a cookie reply");
    assert_eq!(net.gateway.drops().rate_limited, 1);
    assert_eq!(net.gateway.peer_counters(peer).unwrap().handshakes, 1);

    // A client that proves its address with the cookie gets through even
    // under load.
    assert_eq!(alice.receive(&r.transmits[0].1), ClientGot::Done);
    net.handshake(&mut alice);
    assert_eq!(net.gateway.peer_counters(peer).unwrap().handshakes, 2);

    // Strangers still get nothing, not even a cookie.
    net.send(sock("192.0.2.1:1"), &init)
        .assert_silent_drop(DropReason::UnknownSource);
}

#[test]
fn under_load_a_neighbour_behind_the_same_nat_gets_no_cookie() {
    let mut config = DispatcherConfig::new([("plex", PLEX)]);
    config.handshakes_per_second = 1;
    config.cookie_checks_per_second = 3;
    let mut net = Net::with_config(config);
    let mut alice = net.client(1, "203.0.113.7:51820");
    net.apply(vec![alice.admission("adm_alice", BindingPolicy::Exact)]);
    net.handshake(&mut alice);

    // Mallory shares alice's public address (one NAT), knows the gateway's
    // key (a former guest), but holds no admission. Under load, her valid
    // initiations get nothing at all: no cookie, no handshake.
    let mut mallory = net.client(66, "203.0.113.7:40000");
    let init = mallory.initiation();
    net.send(mallory.addr, &init)
        .assert_silent_drop(DropReason::WrongKey);
    assert_eq!(net.gateway.drops().rate_limited, 0);
    // An admitted key from a source its admission does not bind is no
    // better, even if another admission binds that source.
    let mut bob = net.client(2, "198.51.100.9:51820");
    net.apply(vec![
        alice.admission("adm_alice", BindingPolicy::Exact),
        bob.admission("adm_bob", BindingPolicy::Exact),
    ]);
    let init = bob.initiation();
    net.send(sock("203.0.113.7:40002"), &init)
        .assert_silent_drop(DropReason::WrongSource);

    // Alice, from the same address, gets her cookie (each check costs one
    // X25519, so they are counted)...
    net.clock.advance(Duration::from_millis(1));
    let init = alice.initiation();
    let r = net.send(alice.addr, &init);
    assert_eq!(r.verdict, Verdict::Dropped(DropReason::RateLimited));
    assert_eq!(r.transmits.len(), 1);
    assert_eq!(r.transmits[0].1[0], 3, "a cookie reply");
    // ...until this second's checks are spent: then silence, even for
    // her, and mallory's flood costs no more DH work.
    let init = alice.initiation();
    net.send(alice.addr, &init)
        .assert_silent_drop(DropReason::RateLimited);
    // A second later (on the dispatcher's clock) there are checks again.
    net.clock.advance(Duration::from_secs(1));
    let init = mallory.initiation();
    net.send(mallory.addr, &init)
        .assert_silent_drop(DropReason::WrongKey);
    let init = alice.initiation();
    let r = net.send(alice.addr, &init);
    assert_eq!(r.transmits.len(), 1, "{r:?}");
    assert_eq!(alice.receive(&r.transmits[0].1), ClientGot::Done);
    // With the cookie, alice's next initiation proves her address and is
    // answered even under load.
    net.handshake(&mut alice);
}

#[test]
fn under_load_an_open_pinning_window_answers_no_cookies() {
    let mut config = DispatcherConfig::new([("plex", PLEX)]);
    config.handshakes_per_second = 1;
    let mut net = Net::with_config(config);
    let mut alice = net.client(1, "203.0.113.7:51820");
    let carol = net.client(3, "198.51.100.30:51820");
    net.apply(vec![
        alice.admission("adm_alice", BindingPolicy::Exact),
        carol.admission("adm_carol", BindingPolicy::FirstHandshake),
    ]);
    net.handshake(&mut alice);

    // Someone who knows the gateway key sends a valid-looking initiation
    // from an address nothing binds, while the load limit is exceeded.
    let mut mallory = net.client(66, "192.0.2.66:51820");
    let init = mallory.initiation();
    net.send(mallory.addr, &init)
        .assert_silent_drop(DropReason::RateLimited);
    // A bound source under the same load gets its cookie.
    net.clock.advance(Duration::from_millis(1));
    let init = alice.initiation();
    let r = net.send(alice.addr, &init);
    assert_eq!(r.verdict, Verdict::Dropped(DropReason::RateLimited));
    assert_eq!(r.transmits.len(), 1);
}

#[test]
fn outbound_needs_a_route_and_a_session() {
    let mut net = Net::new();
    let mut alice = net.client(1, "203.0.113.7:51820");
    net.apply(vec![alice.admission("adm_alice", BindingPolicy::Exact)]);
    let reply = tcp_segment(SERVICE_ADDRESS, alice.inner, PLEX, 49152, SYN_ACK, b"");
    net.outbound(&reply)
        .assert_silent_drop(DropReason::NoSession);
    let nobody = tcp_segment(
        SERVICE_ADDRESS,
        Ipv4Addr::new(100, 64, 9, 9),
        PLEX,
        1,
        SYN_ACK,
        b"",
    );
    net.outbound(&nobody)
        .assert_silent_drop(DropReason::NoRoute);
    net.outbound(&[0x45, 0, 0])
        .assert_silent_drop(DropReason::Malformed);
    let not_from_service = tcp_segment(
        Ipv4Addr::new(10, 0, 0, 1),
        alice.inner,
        PLEX,
        1,
        SYN_ACK,
        b"",
    );
    net.outbound(&not_from_service)
        .assert_silent_drop(DropReason::InnerViolation);

    net.handshake(&mut alice);
    let r = net.outbound(&reply);
    assert_eq!(alice.receive(&r.transmits[0].1), ClientGot::Tunnel(reply));
}

#[test]
fn timers_keep_the_session_alive_towards_the_endpoint() {
    let mut net = Net::new();
    let mut alice = net.client(1, "203.0.113.7:51820");
    net.apply(vec![alice.admission("adm_alice", BindingPolicy::Exact)]);
    net.handshake(&mut alice);
    // boringtun stamps events with the time of its last timer run, so let
    // one pass between the handshake and the data, as in a live gateway.
    net.clock.advance(Duration::from_millis(250));
    assert!(net.timers().is_empty());
    let syn = alice.syn(PLEX);
    let sealed = alice.seal(&syn);
    assert_eq!(net.send(alice.addr, &sealed).deliveries.len(), 1);

    // Data came in and nothing went back for WireGuard's keepalive
    // timeout (10 s): the gateway's tunnel sends an empty packet. boringtun
    // reads the real clock, so this test lets real time pass (12 s).
    let mut keepalives = Vec::new();
    for _ in 0..48 {
        std::thread::sleep(Duration::from_millis(250));
        net.clock.advance(Duration::from_millis(250));
        let wake = net.gateway.poll_timeout().unwrap();
        assert!(wake <= net.clock.now + Duration::from_millis(250));
        keepalives.extend(net.timers());
    }
    assert_eq!(keepalives.len(), 1, "{keepalives:?}");
    assert_eq!(keepalives[0].0, alice.addr);
    assert_eq!(alice.receive(&keepalives[0].1), ClientGot::Done);
}

#[test]
fn ten_thousand_admissions_route_correctly() {
    let mut net = Net::new();
    let mut alice = net.client(1, "203.0.113.7:51820");
    alice.inner = Ipv4Addr::new(100, 65, 0, 1);
    let mut admissions: Vec<FeedAdmission> = (0..10_000u32)
        .map(|n| {
            let mut key = [0u8; 32];
            key[..4].copy_from_slice(&n.to_be_bytes());
            key[31] = 0x77;
            FeedAdmission {
                binding: if n % 3 == 0 {
                    BindingPolicy::prefix(24, 56).unwrap()
                } else {
                    BindingPolicy::Exact
                },
                client_address: Some(Ipv4Addr::from(0x6440_0100 + n)),
                ..feed::tunnel(
                    &format!("adm_{n}"),
                    WgKey(key),
                    IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n)),
                )
            }
        })
        .collect();
    admissions.insert(5_000, alice.admission("adm_alice", BindingPolicy::Exact));
    let outcome = net.apply(admissions.clone());
    assert_eq!(outcome.added.len(), 10_001);

    let table = net.gateway.admissions();
    for admission in &admissions {
        let by_key = table
            .by_key(admission.client_public_key.unwrap().as_bytes())
            .unwrap();
        assert_eq!(by_key.id(), admission.id);
        let by_inner = table
            .by_client_address(admission.client_address.unwrap())
            .unwrap();
        assert_eq!(by_inner.peer(), by_key.peer());
        assert_eq!(table.source_status(admission.source), SourceStatus::Bound);
    }
    assert_eq!(table.source_status(ip("11.0.0.1")), SourceStatus::Unknown);

    let peer = net.handshake(&mut alice);
    let syn = alice.syn(PLEX);
    let sealed = alice.seal(&syn);
    assert_eq!(net.send(alice.addr, &sealed).deliveries, vec![(peer, syn)]);
    net.send(sock("11.0.0.1:1"), &sealed)
        .assert_silent_drop(DropReason::UnknownSource);
    // A one-address revocation among ten thousand.
    admissions.remove(5_000);
    let outcome = net.apply(admissions);
    assert_eq!(outcome.removed.len(), 1);
    assert!(outcome.added.is_empty() && outcome.changed.is_empty());
}

#[test]
fn status_snapshot_serializes_counters_by_reason() {
    let mut net = Net::new();
    let mut alice = net.client(1, "203.0.113.7:51820");
    net.apply(vec![
        alice.admission("adm_alice", BindingPolicy::prefix(24, 56).unwrap())
    ]);
    net.handshake(&mut alice);
    net.send(sock("192.0.2.1:1"), &[1, 2, 3]);
    let stats = net.gateway.stats(net.clock.now);
    let json = serde_json::to_value(&stats).unwrap();
    assert_eq!(json["feed_version"], 1);
    assert_eq!(json["drops"]["unknown_source"], 1);
    assert_eq!(json["drops"]["wrong_key"], 0);
    let peer = &json["peers"][0];
    assert_eq!(peer["admission_id"], "adm_alice");
    assert_eq!(peer["binding"], "prefix:24,56");
    assert_eq!(peer["handshakes"], 1);
    assert_eq!(peer["client_address"], alice.inner.to_string());
    assert_eq!(peer["endpoint"], alice.addr.to_string());
    // The handshake moved the clock by a millisecond.
    assert_eq!(peer["expires_in_secs"], 3599);
    assert_eq!(
        peer["client_public_key"],
        WgKey(alice.public.to_bytes()).to_string()
    );
}

#[test]
fn under_load_an_expired_admission_answers_no_cookies() {
    // Found by the dispatcher fuzz target: past its deadline, before the
    // timers removed it, an admission still bound its source, and a flood
    // of initiations from there was answered with cookie replies.
    let mut config = DispatcherConfig::new([("plex", PLEX)]);
    config.handshakes_per_second = 1;
    let mut net = Net::with_config(config);
    let mut alice = net.client(1, "203.0.113.7:51820");
    let mut bob = net.client(2, "203.0.113.8:51820");
    let mut admission = alice.admission("adm_alice", BindingPolicy::prefix(24, 56).unwrap());
    admission.expires_at = server_time() + time::Duration::seconds(60);
    net.apply(vec![
        admission,
        bob.admission("adm_bob", BindingPolicy::Exact),
    ]);
    net.handshake(&mut alice);
    net.clock.advance(Duration::from_millis(1));
    let init = alice.initiation();
    let r = net.send(alice.addr, &init);
    assert_eq!(r.verdict, Verdict::Dropped(DropReason::RateLimited));
    assert_eq!(
        r.transmits.len(),
        1,
        "under load, a live source gets a cookie"
    );

    net.clock.advance(Duration::from_secs(61));
    let init = alice.initiation();
    net.send(alice.addr, &init)
        .assert_silent_drop(DropReason::RateLimited);
    // The same from an address of the /24 nothing else binds.
    net.send(sock("203.0.113.99:1"), &init)
        .assert_silent_drop(DropReason::RateLimited);
    // Bob's exact binding lies in alice's expired /24 and is still live.
    let r = net.send(bob.addr, &bob.initiation());
    assert_eq!(r.verdict, Verdict::Dropped(DropReason::RateLimited));
    assert_eq!(r.transmits.len(), 1, "bob is still admitted");
    assert_eq!(r.transmits[0].0, bob.addr);
}
