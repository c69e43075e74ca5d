//! The real gateway on loopback: a real control plane (HTTPS, SQLite), a
//! real upstream HTTP server, and a WireGuard client built from boringtun
//! and the netstack TCP stack. A file of several MiB must arrive intact,
//! and sources that are not admitted must get zero bytes back.

use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use control_client::ControlClient;
use hushgate_gateway::{EnrollToken, Gateway, GatewayConfig, GatewayError, ServiceSpec};
use netstack::{Stack, StackConfig};
use proto::api::AccessResponse;
use proto::WgKey;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use testkit::world::gateway_config;
use testkit::{test_file, Options, World, FILE_LEN};

/// Whether `body` is the stand-in media server's file, byte for byte.
fn intact(body: &[u8]) -> bool {
    static FILE: OnceLock<Vec<u8>> = OnceLock::new();
    body == FILE.get_or_init(test_file).as_slice()
}

async fn world() -> World {
    world_with(Default::default()).await
}

async fn world_with(peer_limits: hushgate_gateway::PeerLimits) -> World {
    World::start(Options {
        peer_limits,
        ..Default::default()
    })
    .await
}

/// A WireGuard client: boringtun for the tunnel, netstack for TCP,
/// driven by a simple polling loop (a test, not a data path).
struct TestClient {
    udp: UdpSocket,
    tunn: Tunn,
    stack: Stack,
    gateway: SocketAddr,
    service: SocketAddr,
    rx: Vec<u8>,
    scratch: Vec<u8>,
}

impl TestClient {
    fn new(secret: StaticSecret, access: &AccessResponse, bind: &str) -> TestClient {
        let udp = UdpSocket::bind(bind).unwrap();
        udp.set_nonblocking(true).unwrap();
        let tunn = Tunn::new(
            secret,
            PublicKey::from(access.gateway_public_key.0),
            access.preshared_key.map(|k| k.0),
            None,
            7,
            None,
        );
        let stack = Stack::new(StackConfig::new(access.client_address));
        TestClient {
            udp,
            tunn,
            stack,
            gateway: access.gateway_endpoint,
            service: SocketAddr::new(access.service_address, access.services[0].port),
            rx: vec![0; 65_536],
            scratch: vec![0; 65_536],
        }
    }

    /// One round of the loop; true if anything moved.
    fn turn(&mut self) -> bool {
        let mut moved = false;
        if let TunnResult::WriteToNetwork(p) = self.tunn.update_timers(&mut self.scratch) {
            let _ = self.udp.send_to(p, self.gateway);
        }
        while let Ok((n, src)) = self.udp.recv_from(&mut self.rx) {
            moved = true;
            if src != self.gateway {
                continue;
            }
            let mut r = self
                .tunn
                .decapsulate(None, &self.rx[..n], &mut self.scratch);
            loop {
                match r {
                    TunnResult::WriteToNetwork(p) => {
                        let _ = self.udp.send_to(p, self.gateway);
                        r = self.tunn.decapsulate(None, &[], &mut self.scratch);
                    }
                    TunnResult::WriteToTunnelV4(p, _) => {
                        self.stack.push_inbound(p);
                        break;
                    }
                    _ => break,
                }
            }
        }
        let now = Instant::now();
        self.stack.poll(now);
        let (tunn, udp, scratch, gw) = (&mut self.tunn, &self.udp, &mut self.scratch, self.gateway);
        self.stack.drain_outbound(|pkt| {
            if let TunnResult::WriteToNetwork(p) = tunn.encapsulate(pkt, scratch) {
                let _ = udp.send_to(p, gw);
            }
        });
        moved
    }

    /// Encrypts one inner packet to the gateway as it is, outside the
    /// stack (a SYN the stack knows nothing of).
    fn send_raw(&mut self, pkt: &[u8]) {
        if let TunnResult::WriteToNetwork(p) = self.tunn.encapsulate(pkt, &mut self.scratch) {
            let _ = self.udp.send_to(p, self.gateway);
        }
    }

    /// Opens `n` connections to the service and turns until each is
    /// established or refused; returns how many were established.
    fn open(&mut self, n: usize, limit: Duration) -> usize {
        use netstack::smoltcp::socket::tcp::State;
        let ids: Vec<_> = (0..n)
            .map(|_| self.stack.connect(self.service).unwrap())
            .collect();
        let state = |s: &Stack, id| s.socket(id).map_or(State::Closed, |s| s.state());
        let deadline = Instant::now() + limit;
        while ids
            .iter()
            .any(|id| !matches!(state(&self.stack, *id), State::Established | State::Closed))
        {
            assert!(
                Instant::now() < deadline,
                "connections neither open nor refused"
            );
            if !self.turn() {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        ids.iter()
            .filter(|id| state(&self.stack, **id) == State::Established)
            .count()
    }

    /// GETs the file through the tunnel; returns the body, or None when
    /// nothing arrives before `limit`.
    fn download(&mut self, limit: Duration) -> Option<Vec<u8>> {
        let id = self.stack.connect(self.service).unwrap();
        let deadline = Instant::now() + limit;
        let mut sent = false;
        let mut got = Vec::with_capacity(FILE_LEN + 1024);
        while Instant::now() < deadline {
            let moved = self.turn();
            let sock = self.stack.socket_mut(id)?;
            if !sent && sock.can_send() {
                sock.send_slice(b"GET /file HTTP/1.1\r\nHost: plex\r\n\r\n")
                    .unwrap();
                sent = true;
            }
            while sock.can_recv() {
                let _ = sock.recv(|b| {
                    got.extend_from_slice(b);
                    (b.len(), ())
                });
            }
            if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                if got.len() >= end + 4 + FILE_LEN {
                    return Some(got[end + 4..].to_vec());
                }
            }
            if !sock.is_open() {
                return None;
            }
            if !moved {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        None
    }
}

async fn admitted(w: &World) -> (StaticSecret, AccessResponse, ControlClient) {
    let alice = w.base.login("alice", "password-of-alice").await.unwrap();
    let alice = w.base.with_bearer(&alice.token);
    let secret = StaticSecret::random_from_rng(rand_core::OsRng);
    let public = WgKey(PublicKey::from(&secret).to_bytes());
    let access = alice.access("den", public).await.expect("access granted");
    (secret, access, alice)
}

/// Sends `datagrams` from `from` to the gateway, then listens for
/// `listen`; returns how many bytes came back.
fn bytes_back(from: &UdpSocket, to: SocketAddr, datagrams: &[Vec<u8>], listen: Duration) -> usize {
    for d in datagrams {
        let _ = from.send_to(d, to);
    }
    from.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let deadline = Instant::now() + listen;
    let mut total = 0;
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline {
        match from.recv_from(&mut buf) {
            Ok((n, _)) => total += n,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => total += 1,
            Err(_) => {}
        }
    }
    total
}

fn handshake_initiation(secret: StaticSecret, gateway: WgKey) -> Vec<u8> {
    let mut t = Tunn::new(secret, PublicKey::from(gateway.0), None, None, 1, None);
    let mut buf = vec![0u8; 256];
    match t.format_handshake_initiation(&mut buf, true) {
        TunnResult::WriteToNetwork(p) => p.to_vec(),
        other => panic!("no initiation: {other:?}"),
    }
}

/// A SYN from `src`:`sport` to `dst`, checksums included.
fn raw_syn(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    use netstack::smoltcp::phy::ChecksumCapabilities;
    use netstack::smoltcp::wire::{
        IpAddress, IpProtocol, IpRepr, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber,
    };
    let (s, d) = (IpAddress::from(src.ip()), IpAddress::from(dst.ip()));
    let tcp = TcpRepr {
        src_port: src.port(),
        dst_port: dst.port(),
        control: TcpControl::Syn,
        seq_number: TcpSeqNumber(i32::from(src.port()) * 7919),
        ack_number: None,
        window_len: 65_535,
        window_scale: None,
        max_seg_size: Some(1380),
        sack_permitted: false,
        sack_ranges: [None; 3],
        timestamp: None,
        payload: &[],
    };
    let ip = IpRepr::new(s, d, IpProtocol::Tcp, tcp.buffer_len(), 64);
    let caps = ChecksumCapabilities::default();
    let mut p = vec![0u8; ip.buffer_len()];
    ip.emit(&mut p[..ip.header_len()], &caps);
    tcp.emit(
        &mut TcpPacket::new_unchecked(&mut p[ip.header_len()..]),
        &s,
        &d,
        &caps,
    );
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_cannot_exhaust_the_gateway_and_the_limits_are_counted() {
    let limits = hushgate_gateway::PeerLimits {
        max_connections: 8,
        max_pending: 4,
        ..Default::default()
    };
    let w = world_with(limits).await;
    let (flooder, flooder_access, _) = admitted(&w).await;
    let (hog, hog_access, _) = admitted(&w).await;
    let (good, good_access, _) = admitted(&w).await;
    let (flooder_ip, hog_ip) = (flooder_access.client_address, hog_access.client_address);
    let attack = tokio::task::spawn_blocking(move || {
        // One real connection opens the tunnel, then 200 SYNs that will
        // never complete (the client's stack ignores the SYN-ACKs).
        let mut f = TestClient::new(flooder, &flooder_access, "127.0.0.1:0");
        assert_eq!(f.open(1, Duration::from_secs(10)), 1);
        for port in 0..200u16 {
            let src = SocketAddr::new(flooder_access.client_address, 10_000 + port);
            f.send_raw(&raw_syn(src, f.service));
        }
        // Another client asks for more connections than it may hold, four
        // at a time (within its handshake limit).
        let mut h = TestClient::new(hog, &hog_access, "127.0.0.1:0");
        let open: usize = (0..5).map(|_| h.open(4, Duration::from_secs(20))).sum();
        (f, h, open)
    })
    .await
    .unwrap();
    let (_f, _h, hog_open) = attack;
    assert_eq!(hog_open, 8, "the hog got its limit, the rest were reset");
    // A third client still downloads the whole file.
    let body = tokio::task::spawn_blocking(move || {
        TestClient::new(good, &good_access, "127.0.0.1:0").download(Duration::from_secs(30))
    })
    .await
    .unwrap()
    .expect("the well-behaved client downloads");
    assert!(intact(&body));

    let status = w.gateway().status().await.unwrap();
    let tcp = status.gateway.tcp.clone().expect("the stack reports");
    assert_eq!(tcp.limits_per_client, limits);
    assert_eq!(tcp.refused_connections, 12);
    // Exactly the flood's: the hog's SYNs that followed the ACKs of its
    // finished handshakes in one batch were not refused.
    assert_eq!(tcp.dropped_syns, 196);
    let peer = |ip: IpAddr| {
        status
            .gateway
            .peers
            .iter()
            .find(|p| IpAddr::V4(p.client_address) == ip)
            .unwrap()
            .tcp
    };
    assert_eq!(
        (peer(flooder_ip).connections, peer(flooder_ip).pending),
        (5, 4)
    );
    assert_eq!((peer(hog_ip).connections, peer(hog_ip).pending), (8, 0));
    // And it is in `hushgate gateway status`'s JSON.
    let json = serde_json::to_value(&status).unwrap();
    assert_eq!(json["gateway"]["tcp"]["refused_connections"], 12);

    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admitted_client_downloads_intact_and_strangers_hear_nothing() {
    let w = world().await;
    let (secret, access, alice) = admitted(&w).await;
    assert_eq!(access.gateway_endpoint, w.gateway().udp_addr());
    assert_eq!(access.gateway_public_key, w.gateway().public_key());

    let body = tokio::task::spawn_blocking(move || {
        let mut c = TestClient::new(secret, &access, "127.0.0.1:0");
        let t = Instant::now();
        let body = c
            .download(Duration::from_secs(30))
            .expect("download completes");
        eprintln!("{} MiB in {:?}", FILE_LEN >> 20, t.elapsed());
        (body, c, access)
    })
    .await
    .unwrap();
    let (body, client, access) = body;
    assert_eq!(body.len(), FILE_LEN);
    assert!(intact(&body), "file corrupted");

    // Strangers: another loopback address sends junk, a handshake with its
    // own key, and even a handshake with the admitted key (it does not have
    // the private key, but the gateway must not even look). Zero bytes back.
    let gw = w.gateway().udp_addr();
    let stranger = UdpSocket::bind("127.0.0.2:0").unwrap();
    let mut probes = vec![
        vec![0u8; 1],
        vec![0xff; 200],
        vec![1, 0, 0, 0],
        handshake_initiation(
            StaticSecret::random_from_rng(rand_core::OsRng),
            w.gateway().public_key(),
        ),
    ];
    for n in 0..50u8 {
        probes.push(vec![n; 148]);
    }
    assert_eq!(
        bytes_back(&stranger, gw, &probes, Duration::from_millis(700)),
        0
    );
    // Same address as the admitted client but another key: nothing either.
    let same_ip = UdpSocket::bind("127.0.0.1:0").unwrap();
    let other_key = vec![handshake_initiation(
        StaticSecret::random_from_rng(rand_core::OsRng),
        w.gateway().public_key(),
    )];
    assert_eq!(
        bytes_back(&same_ip, gw, &other_key, Duration::from_millis(500)),
        0
    );

    let status = w.gateway().status().await.unwrap();
    assert!(
        status
            .gateway
            .drops
            .get(hushgate_gateway::DropReason::UnknownSource)
            >= 54
    );
    assert!(
        status
            .gateway
            .drops
            .get(hushgate_gateway::DropReason::WrongKey)
            >= 1
    );
    assert_eq!(status.gateway.peers.len(), 1);
    assert!(status.gateway.peers[0].rx_bytes > 0);

    // Revocation removes the peer: the client's next download gets nothing.
    alice.revoke(&access.admission_id).await.unwrap();
    // (Generous: the machine running the tests may be busy; the netns
    // harness checks the one-second promise with real processes.)
    let deadline = Instant::now() + Duration::from_secs(20);
    while w.gateway().status().await.unwrap().gateway.peers.len() == 1 && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(w.gateway().status().await.unwrap().gateway.peers.is_empty());
    let after = tokio::task::spawn_blocking(move || {
        let mut c = client;
        c.download(Duration::from_secs(2))
    })
    .await
    .unwrap();
    assert!(after.is_none(), "a revoked client still got data");

    let _ = w.admin.list_admissions().await.unwrap();
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_keeps_its_identity_and_survives_a_restart() {
    let w = world().await;
    let key = w.gateway().public_key();
    let dir = w.dir.path().join("gateway");
    let mode = std::fs::metadata(dir.join("gateway.key")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(mode.permissions().mode() & 0o777, 0o600);
    let (secret, access, _alice) = admitted(&w).await;
    let (url, ca, upstream) = (w.control_url.clone(), w.ca.clone(), w.upstream.addr);
    let udp = w.gateway().udp_addr();
    let config = |token: Option<EnrollToken>, listen: SocketAddr| GatewayConfig {
        listen_udp: listen,
        enroll_token: token,
        ..gateway_config(&url, &ca, &dir, upstream)
    };
    // A second gateway on the same state folder is refused, naming it.
    let e = Gateway::start(config(None, "127.0.0.1:0".parse().unwrap()))
        .await
        .expect_err("two gateways on one state folder");
    assert!(
        matches!(e, GatewayError::StateLocked(_))
            && e.to_string().contains(&*dir.to_string_lossy()),
        "{e}"
    );
    let World {
        gateway,
        dir: _dir,
        control: serving,
        ..
    } = w;
    gateway.unwrap().shutdown().await;
    // Restart on the same port: it reuses its key and credential, and the
    // feed gives it back the admission. The enrollment token's file was
    // removed after the first start, as the deploy notes say: enrolled,
    // the gateway does not read it.
    let gone = _dir.path().join("enroll-token-removed-after-enrolling");
    // One more service this time, whose upstream is not running yet.
    let spare = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let jf_upstream = spare.local_addr().unwrap();
    drop(spare);
    let mut restarted = config(Some(EnrollToken::File(gone)), udp);
    restarted.services.push(ServiceSpec {
        name: "jf".into(),
        port: 8096,
        upstream: jf_upstream,
    });
    let gateway = Gateway::start(restarted)
        .await
        .expect("restarts with its token file gone");
    // Upstreams were checked at start: the one not running shows so.
    let health = |s: &hushgate_gateway::StatusReport| -> Vec<(String, &'static str)> {
        s.services
            .iter()
            .map(|h| (h.name.clone(), h.health))
            .collect()
    };
    let status = gateway.status().await.unwrap();
    assert_eq!(
        health(&status),
        [("plex".to_string(), "up"), ("jf".to_string(), "down")]
    );
    assert!(status.services[1].error.is_some());
    // It starts; the next check (periodic, or now) sees it.
    let _jf = std::net::TcpListener::bind(jf_upstream).unwrap();
    gateway.check_upstreams().await;
    let status = gateway.status().await.unwrap();
    assert_eq!(
        health(&status),
        [("plex".to_string(), "up"), ("jf".to_string(), "up")]
    );
    assert_eq!(gateway.public_key(), key);
    assert!(gateway.wait_synced(Duration::from_secs(10)).await);
    let body = tokio::task::spawn_blocking(move || {
        TestClient::new(secret, &access, "127.0.0.1:0").download(Duration::from_secs(30))
    })
    .await
    .unwrap();
    assert_eq!(body.map(|b| b.len()), Some(FILE_LEN));
    gateway.shutdown().await;
    if let Some(c) = serving {
        let _ = c.stop().await;
    }
    drop(_dir);
    let _ = IpAddr::from([127, 0, 0, 1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_a_stranger_is_drained_and_does_not_silence_the_gateway() {
    let w = world().await;
    let gw = w.gateway().udp_addr();
    // 40,000 junk datagrams in GSO batches as fast as one thread can send:
    // far more than the data path reads in one wake-up, so the socket holds
    // a backlog that must be drained without new datagrams arriving.
    const N: u64 = 40_000;
    let mut udp = netstack::udp::UdpIo::bind("127.0.0.2:0".parse().unwrap()).unwrap();
    for round in 1..=3u64 {
        let sent_before = udp.stats().tx_datagrams;
        let (u, sent) = tokio::task::spawn_blocking(move || {
            let junk = [0x55u8; 148];
            // Queue everything, then send in as few system calls as possible,
            // so the datagrams pile up in the gateway's socket at once.
            for _ in 0..N {
                udp.queue(gw, &junk);
            }
            while udp.has_pending() {
                udp.flush().unwrap();
            }
            let sent = udp.stats().tx_datagrams;
            (udp, sent)
        })
        .await
        .unwrap();
        udp = u;
        let sent_now = sent - sent_before;
        // Whatever the kernel accepted into the gateway's socket must be read
        // and counted; nothing may stay stuck in the socket.
        let counted = || async {
            w.gateway()
                .status()
                .await
                .unwrap()
                .gateway
                .drops
                .get(hushgate_gateway::DropReason::UnknownSource)
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut last = counted().await;
        loop {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let now = counted().await;
            if now == last || Instant::now() > deadline {
                last = now;
                break;
            }
            last = now;
        }
        assert!(sent_now >= N / 2, "the flooder sent only {sent_now}");
        assert!(
            last >= sent * 9 / 10,
            "round {round}: only {last} of {sent} junk datagrams were read; the rest are stuck"
        );
    }
    // And an admitted client still gets through afterwards.
    let (secret, access, _alice) = admitted(&w).await;
    let body = tokio::task::spawn_blocking(move || {
        TestClient::new(secret, &access, "127.0.0.1:0").download(Duration::from_secs(30))
    })
    .await
    .unwrap();
    assert_eq!(body.map(|b| b.len()), Some(FILE_LEN));
    w.stop().await;
}

/// A gateway whose credential was revoked on the control plane says how
/// to re-enroll, and a new enrollment token for its server (given at the
/// next start) brings it back with its admissions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_gateway_reenrolls_with_a_new_token() {
    let w = world().await;
    let (secret, access, _alice) = admitted(&w).await;
    let dir = w.dir.path().join("gateway");
    let udp = w.gateway().udp_addr();
    let config = {
        let (url, ca, upstream) = (w.control_url.clone(), w.ca.clone(), w.upstream.addr);
        move |enroll_token: Option<String>| GatewayConfig {
            listen_udp: udp,
            enroll_token: enroll_token.map(Into::into),
            ..gateway_config(&url, &ca, &dir, upstream)
        }
    };
    let World {
        gateway,
        dir: _dir,
        control: serving,
        admin,
        ..
    } = w;
    gateway.unwrap().shutdown().await;
    admin.revoke_credential("den").await.unwrap();
    let Err(e) = Gateway::start(config(None)).await else {
        panic!("a gateway with a revoked credential started");
    };
    let text = e.to_string();
    assert!(text.contains("hushgate admin server reenroll"), "{text}");
    let token = admin
        .create_enrollment_token("den", &proto::api::NewEnrollmentToken::default())
        .await
        .unwrap();
    let gateway = Gateway::start(config(Some(token.token)))
        .await
        .expect("re-enrolls with the new token");
    assert!(gateway.wait_synced(Duration::from_secs(10)).await);
    let body = tokio::task::spawn_blocking(move || {
        TestClient::new(secret, &access, "127.0.0.1:0").download(Duration::from_secs(30))
    })
    .await
    .unwrap();
    assert_eq!(body.map(|b| b.len()), Some(FILE_LEN));
    gateway.shutdown().await;
    if let Some(c) = serving {
        let _ = c.stop().await;
    }
}

/// Issue 17: the control plane's reachability check proves the endpoint
/// with a WireGuard handshake from its own address, through a one-off
/// admission it removes afterwards; the result reaches the gateway's
/// status. A gateway that is gone fails the check, with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reachability_check_proves_the_endpoint_and_leaves_nothing_admitted() {
    let w = world().await;
    let v = w.admin.check_server("den").await.unwrap();
    let c = v.check.expect("a check result");
    assert!(c.reachable, "{c:?}");
    assert_eq!(c.endpoint, w.gateway().udp_addr());
    assert_eq!(c.from, Some("127.0.0.1".parse().unwrap()));
    assert!(v.diagnosis.is_empty(), "{:?}", v.diagnosis);
    // The one-off admission is gone, and the gateway heard the result.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = w.gateway().status().await.unwrap();
        let heard = s
            .reachability
            .as_ref()
            .and_then(|r| r.check.as_ref())
            .is_some_and(|c| c.reachable);
        if heard && s.gateway.peers.is_empty() {
            assert_eq!(s.port_mapping.state, proto::reach::MappingState::Off);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the gateway still has {:?} and heard {:?}",
            s.gateway.peers,
            s.reachability
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let servers = w.admin.list_servers().await.unwrap();
    let den = servers.iter().find(|s| s.name == "den").unwrap();
    assert!(den.reachability.check.as_ref().unwrap().reachable);
    assert_eq!(
        den.port_mapping.as_ref().map(|m| m.state),
        Some(proto::reach::MappingState::Off)
    );

    // Gone: the control plane cannot have its one-off admission confirmed.
    let World { admin, gateway, .. } = w;
    gateway.unwrap().shutdown().await;
    let v = admin.check_server("den").await.unwrap();
    let c = v.check.unwrap();
    assert!(!c.reachable);
    assert_eq!(
        c.reason,
        Some(proto::reach::UnreachableReason::GatewayDidNotConfirm)
    );
}
