//! The real hushgate on loopback, for the shim's integration tests and
//! its benchmark (`benches/shim.rs` includes this file by path):
//!
//! - the real control plane (`hushgate_control::ControlPlane`): HTTPS with
//!   its private CA, SQLite in a temporary folder;
//! - a real upstream HTTP/1.1 server on 127.0.0.1 standing in for the
//!   media server (a fixed test file with `Range` support, optionally
//!   paced, and a fast byte stream for throughput);
//! - the real gateway (`gateway::Gateway`) enrolled with that
//!   control plane, forwarding service `plex` to the upstream;
//! - optionally a [`Nat`] in front of the client: a TCP and a UDP relay
//!   whose outside sockets leave from a "public address" that a test can
//!   change, as a home router's WAN address changes;
//! - a player-like HTTP client ([`get`]) that talks to the shim's port.
#![allow(dead_code)]

use control_client::{ControlClient, Trust};
use gateway::{Gateway, GatewayConfig, ServiceSpec};
use hushgate_client_shim::{Credentials, Session, ShimConfig, ShimError};
use proto::api::{CreateGrant, CreateServer, CreateUser, ServerPolicy, ShareRequest};
use proto::BindingPolicy;
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

pub const USER: &str = "alice";
pub const PASSWORD: &str = "password-of-alice";
pub const SERVER: &str = "den";
/// The test file the upstream serves at `/file`.
pub const FILE_LEN: usize = 8 << 20;

// ------------------------------------------------------------ upstream

/// The bytes of `/file`: deterministic, not compressible, not periodic.
pub fn test_file() -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut v = Vec::with_capacity(FILE_LEN);
    while v.len() < FILE_LEN {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(FILE_LEN);
    v
}

/// A media server stand-in: HTTP/1.1 with keep-alive, one thread per
/// connection.
///
/// - `GET /file[?pace_ms=P&chunk=C]` serves [`test_file`] (a `Range:
///   bytes=A-B` or `bytes=A-` header gives 206 with `Content-Range` and
///   that slice); with `pace_ms` it writes `chunk` bytes (default 64 KiB)
///   every `P` ms, like a slow disk or a transcoder.
/// - `GET /PATH` serves a file added with [`Upstream::add_file`], the
///   same way (e.g. a real MP4 for a real player).
/// - `?cut=N` on either: the server closes the connection after N bytes
///   of the body, as a media server that drops a connection mid-body.
/// - `GET /bytes/N` streams N bytes as fast as the socket takes them.
#[derive(Debug)]
pub struct Upstream {
    pub addr: SocketAddr,
    pub file: Arc<Vec<u8>>,
    files: Files,
    pub stats: Arc<UpstreamStats>,
}

type Files = Arc<Mutex<HashMap<String, Arc<Vec<u8>>>>>;

/// What the upstream served, for tests that must show a player used
/// ranges and lived through dropped connections.
#[derive(Debug, Default)]
pub struct UpstreamStats {
    /// Answers to a `Range` request that did not start at byte 0.
    pub ranged: AtomicU64,
    /// Connections closed mid-body (`cut`).
    pub cut: AtomicU64,
}

impl Upstream {
    pub fn start() -> Upstream {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let file = Arc::new(test_file());
        let files: Files = Arc::new(Mutex::new(HashMap::from([(
            "/file".to_string(),
            file.clone(),
        )])));
        let stats = Arc::new(UpstreamStats::default());
        let (f, st) = (files.clone(), stats.clone());
        std::thread::Builder::new()
            .name("upstream".into())
            .spawn(move || {
                for c in l.incoming() {
                    let Ok(c) = c else { continue };
                    let (f, st) = (f.clone(), st.clone());
                    std::thread::spawn(move || {
                        let _ = serve_http(c, &f, &st);
                    });
                }
            })
            .unwrap();
        Upstream {
            addr,
            file,
            files,
            stats,
        }
    }

    /// Serves `bytes` at `path` (e.g. "/movie.mp4") from now on.
    pub fn add_file(&self, path: &str, bytes: Vec<u8>) {
        self.files
            .lock()
            .unwrap()
            .insert(path.to_string(), Arc::new(bytes));
    }
}

fn serve_http(mut c: TcpStream, files: &Files, stats: &UpstreamStats) -> io::Result<()> {
    c.set_nodelay(true)?;
    let block: Vec<u8> = (0..1 << 20).map(|i: u32| (i * 7 + 3) as u8).collect();
    let mut buf = Vec::with_capacity(4096);
    loop {
        // One request head (no bodies: GETs only).
        let end = loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            if buf.len() > 16 << 10 {
                return Ok(());
            }
            let mut tmp = [0u8; 2048];
            let n = c.read(&mut tmp)?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&tmp[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_string();
        buf.drain(..end);
        let mut lines = head.split("\r\n");
        let target = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .unwrap_or("/")
            .to_string();
        let range = lines
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("range"))
            .map(|(_, v)| v.trim().to_string());
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        let q: HashMap<&str, u64> = query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .filter_map(|(k, v)| Some((k, v.parse().ok()?)))
            .collect();
        let file = files.lock().unwrap().get(path).cloned();
        if let Some(file) = file {
            let range = range.and_then(|r| parse_range(&r, file.len()));
            let (status, body, content_range) = match range {
                Some((a, b)) => {
                    if a > 0 {
                        stats.ranged.fetch_add(1, Ordering::Relaxed);
                    }
                    (
                        "206 Partial Content",
                        &file[a..=b],
                        format!("Content-Range: bytes {a}-{b}/{}\r\n", file.len()),
                    )
                }
                None => ("200 OK", &file[..], String::new()),
            };
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Type: video/mp4\r\nAccept-Ranges: bytes\r\n{content_range}Content-Length: {}\r\n\r\n",
                body.len()
            );
            c.write_all(head.as_bytes())?;
            let pace = q.get("pace_ms").copied().unwrap_or(0);
            let chunk = q.get("chunk").copied().unwrap_or(64 << 10).max(1) as usize;
            if let Some(&cut) = q.get("cut").filter(|&&n| (n as usize) < body.len()) {
                c.write_all(&body[..cut as usize])?;
                stats.cut.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
            if pace == 0 {
                c.write_all(body)?;
            } else {
                for part in body.chunks(chunk) {
                    c.write_all(part)?;
                    std::thread::sleep(Duration::from_millis(pace));
                }
            }
        } else if let Some(n) = path.strip_prefix("/bytes/") {
            let n: u64 = n.parse().unwrap_or(0);
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {n}\r\n\r\n");
            c.write_all(head.as_bytes())?;
            let mut left = n;
            while left > 0 {
                let k = left.min(block.len() as u64) as usize;
                c.write_all(&block[..k])?;
                left -= k as u64;
            }
        } else {
            c.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")?;
        }
    }
}

fn parse_range(v: &str, len: usize) -> Option<(usize, usize)> {
    let (a, b) = v.strip_prefix("bytes=")?.split_once('-')?;
    let a: usize = a.parse().ok()?;
    let b: usize = if b.is_empty() {
        len - 1
    } else {
        b.parse().ok()?
    };
    (a <= b && b < len).then_some((a, b))
}

// ------------------------------------------------------------ player

/// How the player reads the body.
#[derive(Debug, Clone, Copy)]
pub enum Reading {
    /// As fast as it arrives.
    Fast,
    /// At most `chunk` bytes, then a pause of `every` (a player that
    /// buffers only a little ahead).
    Paced { chunk: usize, every: Duration },
}

/// A player-like HTTP GET through `addr`: request, head, then exactly
/// Content-Length bytes of body. `range` is inclusive, as in HTTP.
pub fn get(
    addr: SocketAddr,
    target: &str,
    range: Option<(usize, usize)>,
    reading: Reading,
) -> io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(addr)?;
    get_on(&mut s, target, range, reading)
}

/// [`get`] on an open connection (keep-alive).
pub fn get_on(
    s: &mut TcpStream,
    target: &str,
    range: Option<(usize, usize)>,
    reading: Reading,
) -> io::Result<Vec<u8>> {
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    s.set_nodelay(true)?;
    let range = range
        .map(|(a, b)| format!("Range: bytes={a}-{b}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET {target} HTTP/1.1\r\nHost: media\r\nUser-Agent: test-player\r\n{range}\r\n"
    )?;
    let mut buf = Vec::new();
    let mut tmp = vec![0u8; 256 << 10];
    let end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        let n = s.read(&mut tmp)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before the response head",
            ));
        }
        buf.extend_from_slice(&tmp[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let status = head.split(' ').nth(1).unwrap_or("");
    if status != "200" && status != "206" {
        return Err(io::Error::other(format!("HTTP status {status}")));
    }
    let len: usize = head
        .split("\r\n")
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .ok_or_else(|| io::Error::other("no Content-Length"))?;
    let mut body = buf.split_off(end);
    body.reserve(len.saturating_sub(body.len()));
    while body.len() < len {
        let want = match reading {
            Reading::Fast => tmp.len(),
            Reading::Paced { chunk, .. } => chunk.min(tmp.len()),
        };
        let n = s.read(&mut tmp[..want.min(len - body.len())])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("connection closed after {} of {len} bytes", body.len()),
            ));
        }
        body.extend_from_slice(&tmp[..n]);
        if let Reading::Paced { every, .. } = reading {
            std::thread::sleep(every);
        }
    }
    Ok(body)
}

/// Like [`get`] for `/bytes/N`, counting instead of keeping: returns the
/// body length and when its first byte arrived.
pub fn get_count(s: &mut TcpStream, n: u64) -> io::Result<(u64, Instant)> {
    write!(s, "GET /bytes/{n} HTTP/1.1\r\nHost: media\r\n\r\n")?;
    let mut tmp = vec![0u8; 256 << 10];
    let mut head = Vec::new();
    let mut first = None;
    let (mut body, end) = loop {
        let k = s.read(&mut tmp)?;
        if k == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        first.get_or_insert_with(Instant::now);
        head.extend_from_slice(&tmp[..k]);
        if let Some(p) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break ((head.len() - p - 4) as u64, p);
        }
    };
    if !head[..end].starts_with(b"HTTP/1.1 200") {
        return Err(io::Error::other("not 200"));
    }
    while body < n {
        let k = s.read(&mut tmp)?;
        if k == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        body += k as u64;
    }
    Ok((body, first.unwrap_or_else(Instant::now)))
}

pub fn sha256(b: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(b).into()
}

// ------------------------------------------------------------ NAT

/// The client's home router, reduced to what the far side sees: every
/// TCP connection and UDP flow from the client leaves from the router's
/// public address. [`Nat::change_address`] is what a new WAN address
/// looks like from outside: existing mappings die (open TCP connections
/// are cut, UDP flows get a new source) and everything new comes from the
/// new address. The client's own sockets notice nothing.
///
/// Inside, the client reaches the control plane at [`Nat::control_url`]
/// and the gateway at [`Nat::udp`] (the gateway announces that address as
/// its public endpoint).
#[derive(Debug)]
pub struct Nat {
    public: Arc<Mutex<IpAddr>>,
    epoch: watch::Sender<u64>,
    udp_epoch: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    pub udp: SocketAddr,
    pub tcp: SocketAddr,
}

impl Nat {
    /// A NAT toward `control` (TCP) and `gateway` (UDP), starting with
    /// public address `public`.
    pub async fn start(public: IpAddr, control: SocketAddr, gateway: SocketAddr) -> Nat {
        let public = Arc::new(Mutex::new(public));
        let (epoch, _) = watch::channel(0u64);
        let udp_epoch = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));

        // TCP: each inside connection gets an outside one from the
        // current public address; a change of address cuts them all.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tcp = l.local_addr().unwrap();
        let (p, e) = (public.clone(), epoch.clone());
        tokio::spawn(async move {
            while let Ok((mut inside, _)) = l.accept().await {
                let from = *p.lock().unwrap();
                let mut changed = e.subscribe();
                tokio::spawn(async move {
                    let sock = tokio::net::TcpSocket::new_v4().unwrap();
                    if sock.bind(SocketAddr::new(from, 0)).is_err() {
                        return;
                    }
                    let Ok(mut outside) = sock.connect(control).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inside, &mut outside) => {}
                        _ = changed.changed() => {}
                    }
                });
            }
        });

        // UDP: one outside socket per inside source, bound to the public
        // address of its epoch.
        let inside = UdpSocket::bind("127.0.0.1:0").unwrap();
        let udp = inside.local_addr().unwrap();
        inside
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let (p, ue, st) = (public.clone(), udp_epoch.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut maps: HashMap<SocketAddr, (u64, UdpSocket)> = HashMap::new();
            let mut buf = vec![0u8; 65_536];
            while !st.load(Ordering::Relaxed) {
                let Ok((n, src)) = inside.recv_from(&mut buf) else {
                    continue;
                };
                let now = ue.load(Ordering::SeqCst);
                let stale = maps.get(&src).is_none_or(|(e, _)| *e != now);
                if stale {
                    let from = *p.lock().unwrap();
                    let Ok(out) = UdpSocket::bind(SocketAddr::new(from, 0)) else {
                        continue;
                    };
                    out.set_read_timeout(Some(Duration::from_millis(20)))
                        .unwrap();
                    let (back, o) = (inside.try_clone().unwrap(), out.try_clone().unwrap());
                    let (ue2, st2) = (ue.clone(), st.clone());
                    std::thread::spawn(move || {
                        let mut b = vec![0u8; 65_536];
                        while ue2.load(Ordering::SeqCst) == now && !st2.load(Ordering::Relaxed) {
                            if let Ok((n, from)) = o.recv_from(&mut b) {
                                if from == gateway {
                                    let _ = back.send_to(&b[..n], src);
                                }
                            }
                        }
                    });
                    maps.insert(src, (now, out));
                }
                let _ = maps[&src].1.send_to(&buf[..n], gateway);
            }
        });

        Nat {
            public,
            epoch,
            udp_epoch,
            stop,
            udp,
            tcp,
        }
    }

    pub fn control_url(&self) -> String {
        format!("https://{}", self.tcp)
    }

    /// The router gets a new public address.
    pub fn change_address(&self, to: IpAddr) {
        *self.public.lock().unwrap() = to;
        self.udp_epoch.fetch_add(1, Ordering::SeqCst);
        self.epoch.send_modify(|e| *e += 1);
    }
}

impl Drop for Nat {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

// ------------------------------------------------------------ world

/// What to build.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The server's admission lifetime (default: the control plane's).
    pub ttl_secs: Option<u64>,
    /// Put the client behind a [`Nat`] whose public address starts as
    /// 127.0.0.1.
    pub nat: bool,
    /// `den` belongs to the account [`OWNER`] (who shares it with alice
    /// and approves each new device) instead of the operator.
    pub owned: bool,
}

/// The owner of `den` in worlds with [`Options::owned`].
pub const OWNER: &str = "olga";

/// Control plane + upstream + gateway, with user `alice` granted server
/// `den` (binding `exact`).
#[derive(Debug)]
pub struct World {
    pub dir: tempfile::TempDir,
    /// The control plane as the gateway (and an admin) reach it.
    pub control_url: String,
    pub ca: PathBuf,
    pub base: ControlClient,
    pub admin: ControlClient,
    pub upstream: Upstream,
    pub gateway: Option<Gateway>,
    pub nat: Option<Nat>,
    control: Option<control::Serving>,
}

impl World {
    pub async fn start(opts: Options) -> World {
        let dir = tempfile::tempdir().unwrap();
        let serving = control::ControlPlane::spawn_on_loopback(
            dir.path().join("control"),
            control::Settings {
                login_per_minute: 1000,
                // Sign-in by code: a device polls once a second, so a
                // test's approval is seen at once.
                device_code_interval: Duration::from_secs(1),
                ..Default::default()
            },
        )
        .unwrap();
        let ca = serving.ca_file.clone().unwrap();
        let control_addr = serving.addr;
        let control_url = serving.url.clone();
        let base = ControlClient::new(&control_url, Trust::from_ca_file(&ca).unwrap()).unwrap();
        let token = serving.admin_token().unwrap();
        let admin = base.with_bearer(&token);
        admin
            .create_user(&CreateUser {
                username: USER.into(),
                password: PASSWORD.into(),
                admin: false,
            })
            .await
            .unwrap();
        let req = CreateServer {
            name: SERVER.into(),
            binding: BindingPolicy::Exact,
            admission_ttl_secs: opts.ttl_secs,
        };
        let server = if opts.owned {
            admin
                .create_user(&CreateUser {
                    username: OWNER.into(),
                    password: PASSWORD.into(),
                    admin: false,
                })
                .await
                .unwrap();
            let owner = base.with_bearer(&base.login(OWNER, PASSWORD).await.unwrap().token);
            let server = owner.register_server(&req).await.unwrap();
            owner
                .update_policy(
                    SERVER,
                    &ServerPolicy {
                        approve_devices: Some(true),
                        ..Default::default()
                    },
                )
                .await
                .unwrap();
            owner
                .share(
                    SERVER,
                    &ShareRequest {
                        username: USER.into(),
                        services: None,
                        direct: false,
                    },
                )
                .await
                .unwrap();
            server
        } else {
            let server = admin.create_server(&req).await.unwrap();
            admin
                .create_grant(&CreateGrant {
                    username: USER.into(),
                    server: SERVER.into(),
                    services: None,
                    direct: false,
                })
                .await
                .unwrap();
            server
        };
        let upstream = Upstream::start();

        // The gateway's UDP port is picked first so that the NAT can
        // point at it and the gateway can announce the NAT's address.
        let probe = UdpSocket::bind("127.0.0.1:0").unwrap();
        let gw_udp = probe.local_addr().unwrap();
        drop(probe);
        let nat = if opts.nat {
            Some(Nat::start("127.0.0.1".parse().unwrap(), control_addr, gw_udp).await)
        } else {
            None
        };
        let gateway = Gateway::start(GatewayConfig {
            control_url: control_url.clone(),
            trust: Trust::from_ca_file(&ca).unwrap(),
            state_dir: dir.path().join("gateway"),
            listen_udp: gw_udp,
            public_endpoint: nat.as_ref().map(|n| n.udp),
            services: vec![ServiceSpec {
                name: "plex".into(),
                port: 32400,
                upstream: upstream.addr,
            }],
            direct: vec![],
            peer_limits: Default::default(),
            prefilter: gateway::PrefilterMode::Off,
            enroll_token: Some(server.enrollment_token.into()),
            // Tests and the demo run on loopback: never ask the host's real router.
            port_mapping: gateway::PortMapConfig {
                mode: gateway::PortMappingMode::Off,
                ..Default::default()
            },
        })
        .await
        .expect("the gateway starts and enrolls");
        assert!(gateway.wait_synced(Duration::from_secs(10)).await);
        World {
            dir,
            control_url,
            ca,
            base,
            admin,
            upstream,
            gateway: Some(gateway),
            nat,
            control: Some(serving),
        }
    }

    pub fn gateway(&self) -> &Gateway {
        self.gateway.as_ref().unwrap()
    }

    /// The owner's client (worlds with [`Options::owned`]).
    pub async fn owner(&self) -> ControlClient {
        let t = self.base.login(OWNER, PASSWORD).await.unwrap().token;
        self.base.with_bearer(&t)
    }

    /// Alice's user token, from one password login.
    pub async fn token(&self) -> String {
        self.base.login(USER, PASSWORD).await.unwrap().token
    }

    /// A shim configuration for server `den`, through the NAT if any.
    /// A shim session for alice (logged in already: a token).
    pub async fn session(&self) -> Result<Session, ShimError> {
        Session::connect(self.shim_config(Credentials::Token(self.token().await))).await
    }

    pub fn shim_config(&self, credentials: Credentials) -> ShimConfig {
        ShimConfig {
            control_url: match &self.nat {
                Some(n) => n.control_url(),
                None => self.control_url.clone(),
            },
            trust: Trust::from_ca_file(&self.ca).unwrap(),
            credentials,
            server: SERVER.into(),
            service: None,
            listen: "127.0.0.1:0".parse().unwrap(),
            device: None,
            on_waiting: None,
        }
    }

    /// Stops the control plane only (the gateway keeps what it has).
    pub async fn stop_control(&mut self) {
        if let Some(c) = self.control.take() {
            let _ = c.stop().await;
        }
    }

    pub async fn stop(mut self) {
        if let Some(g) = self.gateway.take() {
            g.shutdown().await;
        }
        if let Some(c) = self.control.take() {
            let _ = c.stop().await;
        }
    }
}
