//! End-to-end tests of the shim against an in-process gateway built from
//! the gateway crate's `Dispatcher`, a netstack `Stack` and the test kit's
//! stand-in media server on loopback, with an in-memory control plane that
//! pushes its admissions to that gateway. Everything runs on real sockets and
//! real time; the timeouts of the shim are shortened.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use boringtun::x25519::{PublicKey, StaticSecret};
use gateway::{Dispatcher, DispatcherConfig, Output, PeerEvent};
use mio::{Interest, Registry, Token};
use netstack::driver::{self, Driver, Flow, Handler, Wake};
use netstack::wire::wireguard;
use netstack::{Splice, Stack, StackConfig, UdpIo};
use proto::api::{AccessResponse, RenewResponse, ServiceInfo};
use proto::feed::{FeedAdmission, FeedState};
use proto::WgKey;
use testkit::feed;
use testkit::media::{pattern, Upstream};
use time::OffsetDateTime;

use crate::control_api::ControlApi;
use crate::path_monitor::PathTimeouts;
use crate::renewal::Backoff;
use crate::session::{bind_listener, Session, Tuning};
use crate::{EndReason, SessionEvent, ShimError};

const SERVICE_ADDRESS: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 1);
const PLEX: u16 = 32400;

// ------------------------------------------------------------ upstream

/// The kit's stand-in media server.
fn upstream() -> SocketAddr {
    Upstream::start().addr
}

/// Downloads `len` bytes of stream `seed` through `local` and checks every
/// byte.
fn download(local: SocketAddr, len: u64, seed: u64, pace_ms: u64) -> std::io::Result<u64> {
    let target = format!("/stream/{seed}/{len}?pace_ms={pace_ms}");
    let body = testkit::get(local, &target, None, testkit::Reading::Fast)?;
    for (i, b) in body.iter().enumerate() {
        assert_eq!(
            *b,
            pattern(seed, i as u64),
            "stream {seed}: byte {i} differs"
        );
    }
    Ok(body.len() as u64)
}

// ------------------------------------------------------------ gateway

enum GwCmd {
    Apply(FeedState),
    /// As if the gateway were killed and started again: every session and
    /// connection forgotten, the feed's last state installed anew; and
    /// down (deaf to everything) until it has missed this many handshake
    /// initiations.
    Restart {
        deaf_for_initiations: usize,
    },
    Stop,
}

/// A gateway on loopback: Dispatcher + Stack + Splice to `upstream`, on
/// netstack's data-path driver like the real one.
struct TestGateway {
    endpoint: SocketAddr,
    public: PublicKey,
    commands: driver::Sender<GwCmd>,
    /// The shim's UDP address as the gateway last saw it.
    client_endpoint: Arc<Mutex<Option<SocketAddr>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestGateway {
    fn start(upstream: SocketAddr) -> TestGateway {
        let secret = StaticSecret::from([0x42; 32]);
        let public = PublicKey::from(&secret);
        let mut udp = UdpIo::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let endpoint = udp.local_addr().unwrap();
        let (mut driver, commands) = Driver::new().unwrap();
        let registry = driver.registry().try_clone().unwrap();
        registry
            .register(&mut udp, UDP, Interest::READABLE | Interest::WRITABLE)
            .unwrap();
        let client_endpoint = Arc::new(Mutex::new(None));
        let mut gateway =
            GatewayLoop::new(registry, udp, secret, upstream, client_endpoint.clone());
        let thread = std::thread::spawn(move || driver.run(&mut gateway).unwrap());
        TestGateway {
            endpoint,
            public,
            commands,
            client_endpoint,
            thread: Some(thread),
        }
    }

    fn apply(&self, state: FeedState) {
        assert!(self.commands.send(GwCmd::Apply(state)));
    }

    fn restart(&self, deaf_for_initiations: usize) {
        assert!(self.commands.send(GwCmd::Restart {
            deaf_for_initiations,
        }));
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        self.commands.send(GwCmd::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

const UDP: Token = Token(1);

/// The test gateway's per-batch work.
struct GatewayLoop {
    registry: Registry,
    udp: UdpIo,
    secret: StaticSecret,
    upstream: SocketAddr,
    seen: Arc<Mutex<Option<SocketAddr>>>,
    dispatcher: Dispatcher,
    stack: Stack,
    splice: Splice,
    last_state: Option<FeedState>,
    deaf: usize,
    out: gateway::Outbox,
    readable: bool,
}

impl GatewayLoop {
    fn new(
        registry: Registry,
        udp: UdpIo,
        secret: StaticSecret,
        upstream: SocketAddr,
        seen: Arc<Mutex<Option<SocketAddr>>>,
    ) -> GatewayLoop {
        GatewayLoop {
            registry,
            udp,
            dispatcher: new_dispatcher(&secret),
            secret,
            upstream,
            seen,
            stack: new_stack(),
            splice: Splice::new(16, 256),
            last_state: None,
            deaf: 0,
            out: gateway::Outbox::with_capacity(1 << 20, 1024),
            readable: true,
        }
    }
}

fn new_dispatcher(secret: &StaticSecret) -> Dispatcher {
    Dispatcher::new(
        secret.clone(),
        DispatcherConfig::new([("plex", PLEX)]),
        Instant::now(),
    )
}

fn new_stack() -> Stack {
    let mut stack = Stack::new(StackConfig::new(IpAddr::V4(SERVICE_ADDRESS)));
    stack.listen(PLEX).unwrap();
    stack
}

impl Handler for GatewayLoop {
    type Command = GwCmd;

    fn wake(&mut self, now: Instant) -> Wake {
        Wake::IDLE
            .after(Some(
                self.stack
                    .poll_delay(now)
                    .unwrap_or(Duration::from_millis(250)),
            ))
            .at(now, self.dispatcher.poll_timeout())
            .now_if(self.readable || self.stack.has_outbound())
    }

    fn ready(&mut self, ev: &mio::event::Event) {
        if ev.token() == UDP {
            self.readable |= ev.is_readable();
        } else {
            self.splice.on_event(ev);
        }
    }

    fn command(&mut self, command: GwCmd, _now: Instant) -> std::io::Result<Flow> {
        match command {
            GwCmd::Apply(state) => {
                self.dispatcher.apply(&state, Instant::now());
                self.last_state = Some(state);
            }
            GwCmd::Restart {
                deaf_for_initiations,
            } => {
                self.splice.close_all(&mut self.stack, &self.registry);
                self.dispatcher = new_dispatcher(&self.secret);
                self.stack = new_stack();
                if let Some(state) = &self.last_state {
                    self.dispatcher.apply(state, Instant::now());
                }
                self.deaf = deaf_for_initiations;
            }
            GwCmd::Stop => return Ok(Flow::Stop),
        }
        Ok(Flow::Continue)
    }

    fn batch(&mut self, now: Instant) -> std::io::Result<()> {
        let GatewayLoop {
            registry,
            udp,
            upstream,
            seen,
            dispatcher,
            stack,
            splice,
            deaf,
            out,
            readable,
            ..
        } = self;
        if *readable {
            let n = udp
                .recv_batch(1024, |src, d| {
                    if *deaf > 0 {
                        // Down: nothing is read, an initiation is counted.
                        if d.first() == Some(&wireguard::MSG_HANDSHAKE_INIT) {
                            *deaf -= 1;
                        }
                        return;
                    }
                    dispatcher.handle_datagram(src, d, now, out);
                })
                .unwrap();
            *readable = n >= 1024;
        }
        while let Some(ev) = dispatcher.poll_event() {
            match ev {
                PeerEvent::Removed { client_address, .. } => {
                    splice.close_all_for(stack, registry, IpAddr::V4(client_address));
                }
                PeerEvent::HandshakeCompleted { endpoint, .. } => {
                    *seen.lock().unwrap() = Some(endpoint);
                }
                PeerEvent::Installed { .. } => {}
            }
        }
        flush_outbox(out, udp, stack);
        stack.poll_ingress(now);
        while let Some(id) = stack.accept() {
            let up = mio::net::TcpStream::connect(*upstream).unwrap();
            if splice.attach(registry, stack, id, up).is_err() {
                stack.release(id);
            }
        }
        splice.pump(stack, registry);
        stack.poll_egress(now);
        while let Some(pkt) = stack.pop_outbound() {
            dispatcher.handle_outbound(&pkt, now, out);
            stack.recycle(pkt);
            if out.len() > 512 {
                flush_outbox(out, udp, stack);
            }
        }
        dispatcher.handle_timers(now, out);
        flush_outbox(out, udp, stack);
        let _ = udp.flush();
        Ok(())
    }
}

fn flush_outbox(out: &mut gateway::Outbox, udp: &mut UdpIo, stack: &mut Stack) {
    for o in out.iter() {
        match o {
            Output::Transmit { dst, datagram } => udp.queue(dst, datagram),
            Output::Deliver { packet, .. } => {
                stack.push_inbound(packet);
            }
        }
    }
    out.clear();
}

// ------------------------------------------------------------ control

#[derive(Debug, Clone)]
struct Adm {
    key: WgKey,
    source: IpAddr,
    client_address: Ipv4Addr,
    expires_at: OffsetDateTime,
    psk: WgKey,
}

#[derive(Default)]
struct ControlState {
    next: u32,
    version: u64,
    live: HashMap<String, Adm>,
    revoked_by_client: Vec<String>,
    renewals: u32,
    accesses: u32,
    deny: bool,
    ttl_secs: i64,
    /// Renewals still to fail as if the control plane could not be
    /// reached (a connection that died with the client's old address).
    failing_renewals: u32,
    /// Every renewal fails as if the control plane were down.
    unreachable: bool,
    /// The endpoint told to clients (defaults to the gateway's).
    endpoint_override: Option<SocketAddr>,
}

/// An in-memory control plane that pushes every change to the gateway.
#[derive(Clone)]
struct FakeControl {
    state: Arc<Mutex<ControlState>>,
    gateway: Arc<TestGateway>,
}

impl FakeControl {
    fn new(gateway: Arc<TestGateway>, ttl_secs: i64) -> FakeControl {
        FakeControl {
            state: Arc::new(Mutex::new(ControlState {
                ttl_secs,
                ..Default::default()
            })),
            gateway,
        }
    }

    fn push(&self, st: &mut ControlState) {
        st.version += 1;
        let admissions = st
            .live
            .iter()
            .map(|(id, a)| FeedAdmission {
                preshared_key: Some(a.psk),
                client_address: Some(a.client_address),
                expires_at: a.expires_at,
                ..feed::tunnel(id, a.key, a.source)
            })
            .collect();
        self.gateway.apply(FeedState {
            server_time: OffsetDateTime::now_utc(),
            ..feed::state(st.version, admissions)
        });
    }

    /// Revokes like an admin would: the gateway drops the peer.
    fn admin_revoke_all(&self) {
        let mut st = self.state.lock().unwrap();
        st.live.clear();
        self.push(&mut st);
    }

    /// As if the client had moved: its admissions now bind another source.
    fn move_client(&self) {
        let mut st = self.state.lock().unwrap();
        for a in st.live.values_mut() {
            a.source = "127.0.0.2".parse().unwrap();
        }
        self.push(&mut st);
    }

    fn live_ids(&self) -> Vec<String> {
        self.state.lock().unwrap().live.keys().cloned().collect()
    }
}

impl ControlApi for FakeControl {
    async fn access(&mut self, server: &str, key: WgKey) -> Result<AccessResponse, ShimError> {
        let mut st = self.state.lock().unwrap();
        st.accesses += 1;
        if st.deny || server != "den" {
            return Err(ShimError::NoAccess {
                server: server.into(),
                message: "no grant".into(),
            });
        }
        st.next += 1;
        let id = format!("adm_{}", st.next);
        let adm = Adm {
            key,
            source: "127.0.0.1".parse().unwrap(),
            client_address: Ipv4Addr::new(100, 64, 0, 1 + st.next as u8),
            expires_at: OffsetDateTime::now_utc() + time::Duration::seconds(st.ttl_secs),
            psk: WgKey([st.next as u8; 32]),
        };
        st.live.insert(id.clone(), adm.clone());
        self.push(&mut st);
        Ok(AccessResponse {
            admission_id: id,
            gateway_endpoint: st.endpoint_override.unwrap_or(self.gateway.endpoint),
            gateway_public_key: WgKey(self.gateway.public.to_bytes()),
            client_address: IpAddr::V4(adm.client_address),
            service_address: IpAddr::V4(SERVICE_ADDRESS),
            services: vec![ServiceInfo {
                name: "plex".into(),
                port: PLEX,
            }],
            preshared_key: Some(adm.psk),
            expires_at: adm.expires_at,
            gateway_reachability: None,
        })
    }

    async fn renew(&mut self, id: &str) -> Result<RenewResponse, ShimError> {
        let mut st = self.state.lock().unwrap();
        if st.failing_renewals > 0 || st.unreachable {
            st.failing_renewals = st.failing_renewals.saturating_sub(1);
            return Err(ShimError::ControlUnreachable {
                url: "https://den.example".into(),
                detail: "connection reset by peer".into(),
            });
        }
        let ttl = st.ttl_secs;
        let Some(a) = st.live.get_mut(id) else {
            return Err(ShimError::Revoked {
                server: "den".into(),
                message: "admission not found".into(),
            });
        };
        a.expires_at = OffsetDateTime::now_utc() + time::Duration::seconds(ttl);
        let expires_at = a.expires_at;
        // The client really sends from 127.0.0.1 (see `move_client`).
        let moved = a.source != IpAddr::from(Ipv4Addr::LOCALHOST);
        st.renewals += 1;
        self.push(&mut st);
        Ok(RenewResponse {
            expires_at,
            moved: Some(moved),
        })
    }

    async fn revoke(&mut self, id: &str) -> Result<(), ShimError> {
        let mut st = self.state.lock().unwrap();
        st.revoked_by_client.push(id.into());
        if st.live.remove(id).is_some() {
            self.push(&mut st);
        }
        Ok(())
    }
}

// ------------------------------------------------------------ setup

fn tuning() -> Tuning {
    let mut t = Tuning {
        handshake_timeout: Duration::from_secs(3),
        probe_interval: Duration::from_secs(1),
        stall_probe_interval: Duration::from_secs(1),
        backoff: Backoff::new(Duration::from_millis(200), Duration::from_secs(1)),
        reconnect_backoff: Backoff::new(Duration::from_millis(200), Duration::from_secs(1)),
        ..Tuning::default()
    };
    t.datapath.timeouts = PathTimeouts {
        lost: Duration::from_millis(1500),
        stalled: Duration::from_millis(300),
        retry: Duration::from_millis(300),
    };
    t
}

struct World {
    control: FakeControl,
    session: Session,
}

async fn world(ttl_secs: i64) -> World {
    world_with(ttl_secs, tuning()).await
}

async fn world_with(ttl_secs: i64, tuning: Tuning) -> World {
    let gateway = Arc::new(TestGateway::start(upstream()));
    let control = FakeControl::new(gateway, ttl_secs);
    let listener = bind_listener("127.0.0.1:0".parse().unwrap()).unwrap();
    let session = Session::start(control.clone(), listener, "den".into(), None, tuning)
        .await
        .expect("session starts");
    World { control, session }
}

/// Downloads `len` bytes through the session and checks every byte.
async fn downloads_whole(local: SocketAddr, len: u64, seed: u64) {
    assert_eq!(
        blocking(move || download(local, len, seed, 0))
            .await
            .unwrap(),
        len
    );
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

/// How long a test waits for an event before calling it a failure:
/// generous, because the machine running the tests may be busy, and a wait
/// that ends early costs nothing.
const PATIENCE: Duration = Duration::from_secs(20);

/// Waits for an event matching `want`, up to `limit`.
async fn expect_event(
    rx: &mut tokio::sync::broadcast::Receiver<SessionEvent>,
    limit: Duration,
    want: impl Fn(&SessionEvent) -> bool,
) -> SessionEvent {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Ok(ev)) if want(&ev) => return ev,
            Ok(Ok(_)) | Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {}
            Ok(Err(e)) => panic!("event stream ended: {e}"),
            Err(_) => panic!("no matching event within {limit:?}"),
        }
    }
}

// ------------------------------------------------------------ tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_connections_download_several_mib_intact() {
    let w = world(3600).await;
    let local = w.session.local_addr();
    let started = Instant::now();
    let handles: Vec<_> = (0..4u64)
        .map(|seed| std::thread::spawn(move || download(local, 6 << 20, seed + 1, 0)))
        .collect();
    let mut total = 0;
    for h in handles {
        total += h.join().unwrap().expect("download completes");
    }
    assert_eq!(total, 4 * (6 << 20));
    eprintln!("24 MiB over 4 connections in {:?}", started.elapsed());
    // And one more afterwards, on a reused tunnel.
    let n = blocking(move || download(local, 1 << 20, 99, 0))
        .await
        .unwrap();
    assert_eq!(n, 1 << 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_from_others_is_ignored_and_the_download_survives() {
    let w = world(3600).await;
    let local = w.session.local_addr();
    let shim_udp = w
        .control
        .gateway
        .client_endpoint
        .lock()
        .unwrap()
        .expect("handshake seen");
    let dl = std::thread::spawn(move || download(local, 4 << 20, 7, 0));
    let junk = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut shapes: Vec<Vec<u8>> = vec![vec![], vec![0xff; 1400], vec![1, 0, 0, 0], vec![2; 92]];
    let mut data = vec![4, 0, 0, 0];
    data.extend_from_slice(&[0x11; 200]);
    shapes.push(data);
    for _ in 0..2000 {
        for s in &shapes {
            let _ = junk.send_to(s, shim_udp);
        }
    }
    assert_eq!(dl.join().unwrap().unwrap(), 4 << 20);
    // Nothing was ever answered to the junk sender.
    junk.set_nonblocking(true).unwrap();
    let mut b = [0u8; 2048];
    assert!(junk.recv_from(&mut b).is_err(), "the shim answered junk");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_keeps_a_long_download_alive() {
    // Admissions of 3 s: renewed about every 2 s. A download paced to
    // last ~5 s outlives two lifetimes of an unrenewed admission.
    let w = world(3).await;
    let mut ev = w.session.events();
    let local = w.session.local_addr();
    let first_expiry = w.session.info().expires_at;
    let dl = std::thread::spawn(move || download(local, 5 << 20, 3, 60));
    expect_event(&mut ev, PATIENCE, |e| {
        matches!(e, SessionEvent::Renewed { .. })
    })
    .await;
    assert_eq!(dl.join().unwrap().unwrap(), 5 << 20);
    assert!(w.control.state.lock().unwrap().renewals >= 2);
    assert!(w.session.info().expires_at > first_expiry);
    assert_eq!(w.control.live_ids().len(), 1, "no re-admission was needed");
}

/// Downloads, moves the client (its admissions now bind another source),
/// and waits for the session to lose the path and come back with a new
/// admission that downloads again. Returns the first admission's id.
async fn move_and_expect_readmission(w: &World) -> String {
    let mut ev = w.session.events();
    let local = w.session.local_addr();
    let first = w.session.info().admission_id;
    downloads_whole(local, 1 << 20, 1).await;
    w.control.move_client();
    // Traffic into the now-dead tunnel is what reveals the loss.
    let probe = std::thread::spawn(move || download(local, 1 << 20, 2, 0));
    expect_event(&mut ev, PATIENCE, |e| *e == SessionEvent::Lost).await;
    let connected = expect_event(&mut ev, PATIENCE, |e| {
        matches!(e, SessionEvent::Connected { .. })
    })
    .await;
    let SessionEvent::Connected { admission_id, .. } = connected else {
        unreachable!()
    };
    assert_ne!(admission_id, first);
    assert_eq!(w.session.info().admission_id, admission_id);
    // The connection made during the loss may break or may complete; new
    // connections must work.
    let _ = probe.join().unwrap();
    downloads_whole(local, 2 << 20, 3).await;
    first
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_source_address_leads_to_a_new_admission() {
    let w = world(3600).await;
    let first = move_and_expect_readmission(&w).await;
    let st = w.control.state.lock().unwrap();
    assert!(
        st.revoked_by_client.contains(&first),
        "old admission revoked"
    );
    assert_eq!(st.live.len(), 1);
}

/// After a move the probe's first renewals may fail: they go out on the
/// kept-alive connection to the control plane that died with the old
/// address (the netns chaos scenario: half the shims probed once, failed,
/// and waited for the whole loss timeout). With a loss timeout far beyond
/// the test's patience, only a probe tried again can bring the new
/// admission in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_is_noticed_even_when_the_probes_first_renewals_fail() {
    for failing_renewals in [1, 3] {
        moved_and_re_admitted(failing_renewals).await;
    }
}

async fn moved_and_re_admitted(failing_renewals: u32) {
    let mut t = tuning();
    t.datapath.timeouts.lost = PATIENCE * 10;
    let w = world_with(3600, t).await;
    let mut ev = w.session.events();
    let local = w.session.local_addr();
    let first = w.session.info().admission_id;
    w.control.state.lock().unwrap().failing_renewals = failing_renewals;
    w.control.move_client();
    let probe = std::thread::spawn(move || download(local, 1 << 20, 2, 0));
    expect_readmitted(&mut ev, &first, local).await;
    let _ = probe.join().unwrap();
}

/// Waits for the session's next admission (not its end), which must differ
/// from `first` and carry a download.
async fn expect_readmitted(
    ev: &mut tokio::sync::broadcast::Receiver<SessionEvent>,
    first: &str,
    local: SocketAddr,
) {
    let next = expect_event(ev, PATIENCE, |e| {
        matches!(
            e,
            SessionEvent::Connected { .. } | SessionEvent::Ended { .. }
        )
    })
    .await;
    let SessionEvent::Connected { admission_id, .. } = next else {
        panic!("the session ended instead of getting a new admission: {next:?}")
    };
    assert_ne!(admission_id, first);
    downloads_whole(local, 1 << 20, 3).await;
}

/// The control plane down across the admission's expiry: once back it no
/// longer knows the admission, which is not a revocation: the session gets
/// a new admission and goes on (found by the netns chaos scenario: a shim
/// whose renewals failed while the control plane restarted quit with
/// "your admission is gone" when it came back).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admission_that_expired_while_the_control_plane_was_down_is_replaced() {
    let w = world(3).await;
    let mut ev = w.session.events();
    let local = w.session.local_addr();
    let first = w.session.info();
    w.control.state.lock().unwrap().unreachable = true;
    // Past its expiry (by this clock, as the session sees it), the
    // control plane sweeps it; then it answers again.
    let left = (first.expires_at - OffsetDateTime::now_utc()).unsigned_abs();
    tokio::time::sleep(left + Duration::from_millis(200)).await;
    {
        let mut st = w.control.state.lock().unwrap();
        st.live.clear();
        w.control.push(&mut st);
        st.unreachable = false;
    }
    expect_readmitted(&mut ev, &first.admission_id, local).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stall_after_a_move_readmits_without_waiting_for_the_loss() {
    // A path counts as lost only after a minute here, and the test's
    // patience is shorter: the new admission can only come from the
    // probe's answer that the client moved.
    let mut t = tuning();
    t.datapath.timeouts.lost = Duration::from_secs(60);
    assert!(PATIENCE < t.datapath.timeouts.lost);
    let w = world_with(3600, t).await;
    move_and_expect_readmission(&w).await;
}

/// A gateway killed and started again forgets the shim's session and drops
/// its data without a word, while the admission stands. The shim's
/// stalled path sends a fresh initiation every `retry`, so the first one
/// that reaches the gateway once it is back restores the tunnel with the
/// same admission. The gateway here misses three initiations before it
/// answers; WireGuard's own retry would come only after REKEY_TIMEOUT
/// (5 s), later than this test's loss timeout (4 s), so without the
/// retries the session would lose the path and take a new admission.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_gateway_is_handshaken_again_with_the_same_admission() {
    let mut t = tuning();
    t.datapath.timeouts.lost = Duration::from_secs(4);
    let w = world_with(3600, t).await;
    let mut ev = w.session.events();
    let local = w.session.local_addr();
    let first = w.session.info().admission_id;
    downloads_whole(local, 1 << 20, 1).await;
    w.control.gateway.restart(3);
    // The first connection's SYN reveals the silence; it may fail.
    let _ = blocking(move || download(local, 1 << 20, 2, 0)).await;
    downloads_whole(local, 1 << 20, 3).await;
    assert_eq!(w.session.info().admission_id, first);
    assert_eq!(w.control.live_ids(), vec![first]);
    while let Ok(e) = ev.try_recv() {
        assert!(
            !matches!(e, SessionEvent::Lost | SessionEvent::Reconnecting { .. }),
            "the path was given up: {e:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_ends_the_session_quickly_with_a_clear_reason() {
    let w = world(3600).await;
    let local = w.session.local_addr();
    let dl = std::thread::spawn(move || download(local, 64 << 20, 5, 5));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    w.control.admin_revoke_all();
    let reason = tokio::time::timeout(PATIENCE, w.session.ended())
        .await
        .expect("session ends");
    assert!(matches!(reason, EndReason::Revoked { .. }), "{reason:?}");
    // Far sooner than the hour the admission lives; generous, because the
    // machine running the tests may be busy.
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "took {:?}",
        t.elapsed()
    );
    assert!(dl.join().unwrap().is_err(), "the download was cut");
    // The local port is closed.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(TcpStream::connect(local).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_revokes_and_frees_the_port() {
    let w = world(3600).await;
    let local = w.session.local_addr();
    let id = w.session.info().admission_id;
    w.session.close().await;
    assert!(TcpStream::connect(local).is_err());
    assert!(w
        .control
        .state
        .lock()
        .unwrap()
        .revoked_by_client
        .contains(&id));
    assert!(w.control.live_ids().is_empty());
}

/// Closing shuts the data path down too; its end used to race the stop
/// in the supervisor, and when it won the session "failed" and kept its
/// admission. Many closes in a row make the race show.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_close_revokes() {
    for _ in 0..40 {
        let w = world(3600).await;
        let id = w.session.info().admission_id;
        w.session.close().await;
        let st = w.control.state.lock().unwrap();
        assert!(
            st.revoked_by_client.contains(&id),
            "admission kept at close"
        );
        assert!(st.live.is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_that_never_answers_is_reported_and_its_admission_revoked() {
    let gateway = Arc::new(TestGateway::start(upstream()));
    let control = FakeControl::new(gateway, 3600);
    // Nothing listens there.
    let dead = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    control.state.lock().unwrap().endpoint_override = Some(dead.local_addr().unwrap());
    let listener = bind_listener("127.0.0.1:0".parse().unwrap()).unwrap();
    let mut t = tuning();
    t.handshake_timeout = Duration::from_millis(800);
    let e = Session::start(control.clone(), listener, "den".into(), None, t)
        .await
        .unwrap_err();
    assert!(matches!(e, ShimError::GatewayUnreachable { .. }), "{e}");
    assert!(e.to_string().contains("UDP port"), "{e}");
    assert!(control.live_ids().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_access_and_busy_ports_are_clear_errors() {
    let gateway = Arc::new(TestGateway::start(upstream()));
    let control = FakeControl::new(gateway, 3600);
    control.state.lock().unwrap().deny = true;
    let listener = bind_listener("127.0.0.1:0".parse().unwrap()).unwrap();
    let e = Session::start(control, listener, "den".into(), None, tuning())
        .await
        .unwrap_err();
    assert!(matches!(e, ShimError::NoAccess { .. }), "{e}");

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let e = bind_listener(taken.local_addr().unwrap()).unwrap_err();
    assert!(matches!(e, ShimError::ListenInUse { .. }), "{e}");
    assert!(e.to_string().contains("already in use"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_not_on_offer_is_refused_and_revoked() {
    let gateway = Arc::new(TestGateway::start(upstream()));
    let control = FakeControl::new(gateway, 3600);
    let listener = bind_listener("127.0.0.1:0".parse().unwrap()).unwrap();
    let e = Session::start(
        control.clone(),
        listener,
        "den".into(),
        Some("emby".into()),
        tuning(),
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("'emby'"), "{e}");
    assert!(
        control.live_ids().is_empty(),
        "the unusable admission was revoked"
    );
}
