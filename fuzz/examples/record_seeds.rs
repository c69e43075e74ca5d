//! Records the seed corpus of the fuzz targets from a real run:
//!
//! - a real control plane (HTTPS, SQLite) on loopback, driven over raw
//!   HTTP: the request bodies sent and the answers it wrote (users,
//!   servers, grants, enrollment, the feed whole and as diffs, access
//!   answers for tunnel and direct mode, renewals, revocations, error
//!   bodies, admin listings) go to `api_json`, access answers also to
//!   `access_answer`; this program plays the gateway's part of the feed
//!   (long-poll and acknowledge);
//! - a real tunnel in memory: the gateway's `Dispatcher` holding the
//!   admission the control plane pushed, a boringtun client holding what
//!   the control plane answered, and a netstack TCP stack on each side,
//!   moving a download through: every datagram (initiation, response,
//!   data, keepalives) goes to `datagram` and `dispatcher`, every inner
//!   packet both ways to `inner_packet`;
//! - key and policy text, config files and nf_tables answers made from the
//!   same values.
//!
//! The keys are the fuzz world's fixed keys (`hushgate_fuzz::world`), so
//! recorded initiations are real ones for the targets' gateway.
//!
//!     cargo run --manifest-path fuzz/Cargo.toml --example record_seeds [-- OUT_DIR]
//!
//! OUT_DIR defaults to fuzz/corpus. Files are named by a hash of their
//! content, so a rerun adds only what is new.

use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519::PublicKey;
use control_client::{ControlClient, Trust};
use hushgate_fuzz::dispatcher::{Change, InnerSpec, Input, Op, Spec};
use hushgate_fuzz::world;
use netstack::{Stack, StackConfig};
use proto::api::AccessResponse;
use proto::feed::{FeedMirror, FeedState, FeedUpdate};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Caps per target, so the committed set stays small.
const MAX_PER_TARGET: usize = 48;

struct Seeds {
    root: PathBuf,
    written: HashMap<&'static str, usize>,
}

impl Seeds {
    fn add(&mut self, target: &'static str, bytes: &[u8]) {
        let n = self.written.entry(target).or_default();
        if *n >= MAX_PER_TARGET {
            return;
        }
        let dir = self.root.join(target);
        std::fs::create_dir_all(&dir).expect("corpus directory");
        // FNV-1a, 64 bits: names by content without another dependency.
        let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
        });
        let path = dir.join(format!("seed-{hash:016x}"));
        if !path.exists() {
            std::fs::write(&path, bytes).expect("write seed");
            *n += 1;
        }
    }
}

/// A raw HTTPS call: the exact bytes the control plane answered.
async fn call(
    http: &reqwest::Client,
    base: &str,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<&str>,
) -> Result<(u16, Vec<u8>), Error> {
    let mut req = http.request(method.parse()?, format!("{base}{path}"));
    if let Some(b) = bearer {
        req = req.bearer_auth(b);
    }
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    let resp = req.send().await?;
    let status = resp.status().as_u16();
    Ok((status, resp.bytes().await?.to_vec()))
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let out = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus"));
    let seeds = Arc::new(Mutex::new(Seeds {
        root: out.clone(),
        written: HashMap::new(),
    }));
    let api = |s: &Arc<Mutex<Seeds>>, b: &[u8]| {
        if !b.is_empty() {
            s.lock().unwrap().add("api_json", b);
        }
    };

    let dir = tempfile::tempdir()?;
    let serving = control::ControlPlane::spawn_on_loopback(
        dir.path().to_path_buf(),
        control::Settings {
            ack_timeout: Duration::from_secs(10),
            login_per_minute: 1000,
            ..Default::default()
        },
    )?;
    let base = serving.url.clone();
    let ca = serving
        .ca_file
        .clone()
        .expect("the control plane made its CA");
    let admin_token = serving.admin_token()?;
    let client = ControlClient::new(&base, Trust::from_ca_file(&ca)?)?;
    let http = client.http().clone();
    let admin = Some(admin_token.as_str());

    // The operator sets up a user, a server and a grant.
    let mut exchange = Vec::new();
    for (method, path, body) in [
        (
            "POST",
            "/v1/admin/users",
            r#"{"username":"alice","password":"correct horse battery staple"}"#,
        ),
        (
            "POST",
            "/v1/admin/users",
            r#"{"username":"bob","password":"another long password","admin":true}"#,
        ),
        (
            "POST",
            "/v1/admin/servers",
            r#"{"name":"den","binding":"exact","admission_ttl_secs":3600}"#,
        ),
        (
            "POST",
            "/v1/admin/servers",
            r#"{"name":"attic","binding":"prefix:24"}"#,
        ),
        (
            "POST",
            "/v1/admin/grants",
            r#"{"username":"alice","server":"den","direct":true}"#,
        ),
        (
            "POST",
            "/v1/admin/grants",
            r#"{"username":"bob","server":"attic","services":["plex"]}"#,
        ),
        // Bad input the control plane must refuse with a clear error.
        ("POST", "/v1/admin/users", r#"{"username":"carol""#),
        (
            "POST",
            "/v1/admin/servers",
            r#"{"name":"x","binding":"loose"}"#,
        ),
    ] {
        api(&seeds, body.as_bytes());
        let (_, answer) = call(&http, &base, method, path, admin, Some(body)).await?;
        api(&seeds, &answer);
        exchange.push(answer);
    }
    let created: proto::api::CreatedServer = serde_json::from_slice(&exchange[2])?;

    // The gateway enrolls with the fuzz world's key, then follows the feed.
    let report = serde_json::json!({
        "public_key": proto::WgKey(world::keys().gateway.to_bytes()),
        "public_endpoint": "127.0.0.1:51820",
        "listen_port": 51820,
        "services": [{"name": "plex", "port": 32400}, {"name": "jellyfin", "port": 8096}],
        "direct_services": [{"name": "plex", "port": 32401}],
    });
    let enroll = serde_json::json!({
        "enrollment_token": created.enrollment_token,
        "report": report,
    })
    .to_string();
    api(&seeds, enroll.as_bytes());
    let (status, answer) = call(
        &http,
        &base,
        "POST",
        "/v1/gateway/enroll",
        None,
        Some(&enroll),
    )
    .await?;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
    api(&seeds, &answer);
    let credential = serde_json::from_slice::<proto::feed::EnrollResponse>(&answer)?.credential;
    let report_text = report.to_string();
    api(&seeds, report_text.as_bytes());
    let (_, answer) = call(
        &http,
        &base,
        "POST",
        "/v1/gateway/report",
        Some(&credential),
        Some(&report_text),
    )
    .await?;
    api(&seeds, &answer);
    // The whole-set form once.
    let (_, whole) = call(
        &http,
        &base,
        "GET",
        "/v1/gateway/feed",
        Some(&credential),
        None,
    )
    .await?;
    api(&seeds, &whole);

    let mirror = Arc::new(Mutex::new(FeedMirror::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let follower = {
        let (http, base, credential, seeds, mirror, stop) = (
            http.clone(),
            base.clone(),
            credential.clone(),
            seeds.clone(),
            mirror.clone(),
            stop.clone(),
        );
        tokio::spawn(async move {
            let mut after: Option<u64> = None;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let path = match after {
                    Some(v) => format!("/v1/gateway/feed?diff=true&after={v}&wait_ms=500"),
                    None => "/v1/gateway/feed?diff=true".to_string(),
                };
                let Ok((200, body)) =
                    call(&http, &base, "GET", &path, Some(&credential), None).await
                else {
                    continue;
                };
                seeds.lock().unwrap().add("api_json", &body);
                let update: FeedUpdate = serde_json::from_slice(&body).expect("a feed answer");
                let version = update.version;
                let fits = mirror.lock().unwrap().apply(update).is_ok();
                if !fits {
                    after = None;
                    continue;
                }
                let ack = format!(r#"{{"version":{version}}}"#);
                seeds.lock().unwrap().add("api_json", ack.as_bytes());
                let _ = call(
                    &http,
                    &base,
                    "POST",
                    "/v1/gateway/ack",
                    Some(&credential),
                    Some(&ack),
                )
                .await;
                after = Some(version);
            }
        })
    };

    // The user logs in and asks for access, in both modes.
    let login = r#"{"username":"alice","password":"correct horse battery staple"}"#;
    api(&seeds, login.as_bytes());
    let (_, answer) = call(&http, &base, "POST", "/v1/login", None, Some(login)).await?;
    api(&seeds, &answer);
    let token = serde_json::from_slice::<proto::api::LoginResponse>(&answer)?.token;
    let user = Some(token.as_str());
    let wrong = r#"{"username":"alice","password":"wrong"}"#;
    let (_, answer) = call(&http, &base, "POST", "/v1/login", None, Some(wrong)).await?;
    api(&seeds, &answer);

    let access = serde_json::json!({
        "server": "den",
        "public_key": world::keys().clients[0],
    })
    .to_string();
    api(&seeds, access.as_bytes());
    let (status, answer) = call(&http, &base, "POST", "/v1/access", user, Some(&access)).await?;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
    api(&seeds, &answer);
    for choice in [0u8, 1, 2, 3] {
        let mut seed = vec![choice];
        seed.extend_from_slice(&answer);
        seeds.lock().unwrap().add("access_answer", &seed);
    }
    let access_answer: AccessResponse = serde_json::from_slice(&answer)?;
    for (method, path, body) in [
        (
            "POST",
            "/v1/access",
            Some(r#"{"server":"den","mode":"direct"}"#),
        ),
        (
            "POST",
            "/v1/access",
            Some(
                r#"{"server":"nowhere","public_key":"HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw="}"#,
            ),
        ),
        (
            "POST",
            "/v1/access",
            Some(r#"{"server":"den","public_key":"AAAA"}"#),
        ),
        (
            "POST",
            "/v1/access",
            Some(
                r#"{"server":"den","public_key":"HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=","extra":1}"#,
            ),
        ),
    ] {
        if let Some(b) = body {
            api(&seeds, b.as_bytes());
        }
        let (_, answer) = call(&http, &base, method, path, user, body).await?;
        api(&seeds, &answer);
    }
    let renew = format!("/v1/admissions/{}/renew", access_answer.admission_id);
    let (_, answer) = call(&http, &base, "POST", &renew, user, None).await?;
    api(&seeds, &answer);
    for path in [
        "/v1/admin/users",
        "/v1/admin/servers",
        "/v1/admin/grants",
        "/v1/admin/admissions",
        "/v1/admin/audit?limit=20",
        "/v1/health",
        "/v1/nothing-here",
    ] {
        let (_, answer) = call(&http, &base, "GET", path, admin, None).await?;
        api(&seeds, &answer);
    }

    // The tunnel, with what the control plane pushed and answered.
    let state = mirror
        .lock()
        .unwrap()
        .state()
        .expect("the feed delivered a whole set");
    let tunnel = run_tunnel(&state, &access_answer)?;
    {
        let mut s = seeds.lock().unwrap();
        record_tunnel(&mut s, &tunnel);
        record_text(&mut s, &access_answer, &state);
        record_config(&mut s, &base, &ca);
        record_netlink(&mut s);
    }

    // Revocation: the feed carries the removal as a diff.
    let revoke = format!("/v1/admissions/{}", access_answer.admission_id);
    let (_, answer) = call(&http, &base, "DELETE", &revoke, user, None).await?;
    api(&seeds, &answer);
    tokio::time::sleep(Duration::from_millis(800)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = follower.await;
    serving.stop().await?;

    let s = seeds.lock().unwrap();
    let mut counts: Vec<_> = s.written.iter().collect();
    counts.sort();
    for (target, n) in counts {
        println!("{target}: {n} new seeds in {}", out.join(target).display());
    }
    Ok(())
}

/// What crossed the tunnel, in order.
#[derive(Default)]
struct Tunnel {
    /// (sent by the client, datagram)
    datagrams: Vec<(bool, Vec<u8>)>,
    /// (from the client, inner packet)
    inner: Vec<(bool, Vec<u8>)>,
}

/// A download through the real dispatcher: client stack → boringtun →
/// dispatcher → gateway stack, and back.
fn run_tunnel(state: &FeedState, answer: &AccessResponse) -> Result<Tunnel, Error> {
    let params = client_shim::access_answer::validate_access(answer, None)?;
    let now = Instant::now();
    let mut dispatcher = gateway::Dispatcher::new(
        world::gateway_secret(),
        gateway::DispatcherConfig::new(world::SERVICES),
        now,
    );
    // The data path takes the tunnel admissions (the direct proxy the rest).
    let mut state = state.clone();
    state
        .admissions
        .retain(|a| a.mode == proto::api::AccessMode::Tunnel);
    let outcome = dispatcher.apply(&state, now);
    assert!(outcome.rejected.is_empty(), "{:?}", outcome.rejected);
    let mut client = Tunn::new(
        world::client_secret(0),
        PublicKey::from(params.gateway_public_key.0),
        params.preshared_key.map(|k| k.0),
        None,
        1,
        None,
    );
    // The control plane saw the client on loopback; the admission binds it.
    let src: SocketAddr = "127.0.0.1:40000".parse()?;
    let mut client_stack = Stack::new(StackConfig::new(IpAddr::V4(params.client_address)));
    let mut gateway_stack = Stack::new(StackConfig::new(IpAddr::V4(params.service_address)));
    gateway_stack.listen(params.service_port)?;
    let conn = client_stack.connect(params.service_socket())?;
    let media: Vec<u8> = (0..48 * 1024u32).map(|i| (i * 7 + i / 251) as u8).collect();
    let mut t = Tunnel::default();
    let mut out = gateway::Outbox::new();
    let mut buf = vec![0u8; 65536];
    let mut served = None;
    let mut written = 0;
    let mut received = Vec::new();
    for _ in 0..2000 {
        let now = Instant::now();
        // Client → gateway.
        client_stack.poll(now);
        let mut to_send = Vec::new();
        client_stack.drain_outbound(|p| to_send.push(p.to_vec()));
        let mut datagrams = Vec::new();
        for p in to_send {
            t.inner.push((true, p.clone()));
            if let TunnResult::WriteToNetwork(d) = client.encapsulate(&p, &mut buf) {
                datagrams.push(d.to_vec());
            }
        }
        while let Some(d) = datagrams.pop() {
            t.datagrams.push((true, d.clone()));
            out.clear();
            dispatcher.handle_datagram(src, &d, now, &mut out);
            let outputs: Vec<_> = out
                .iter()
                .map(|o| match o {
                    gateway::Output::Transmit { datagram, .. } => (true, datagram.to_vec()),
                    gateway::Output::Deliver { packet, .. } => (false, packet.to_vec()),
                })
                .collect();
            for (transmit, bytes) in outputs {
                if transmit {
                    t.datagrams.push((false, bytes.clone()));
                    datagrams.extend(client_takes(
                        &mut client,
                        &mut client_stack,
                        &bytes,
                        &mut buf,
                    ));
                } else {
                    gateway_stack.push_inbound(&bytes);
                }
            }
        }
        // The media server's side.
        gateway_stack.poll_ingress(now);
        while let Some(id) = gateway_stack.accept() {
            served = Some(id);
        }
        if let Some(id) = served {
            if let Some(s) = gateway_stack.socket_mut(id) {
                if written < media.len() && s.can_send() {
                    written += s.send_slice(&media[written..]).unwrap_or(0);
                    if written == media.len() {
                        s.close();
                    }
                }
            }
        }
        gateway_stack.poll_egress(now);
        let mut back = Vec::new();
        gateway_stack.drain_outbound(|p| back.push(p.to_vec()));
        for p in back {
            t.inner.push((false, p.clone()));
            out.clear();
            dispatcher.handle_outbound(&p, now, &mut out);
            let sends: Vec<Vec<u8>> = out.transmits().map(|(_, d)| d.to_vec()).collect();
            for d in sends {
                t.datagrams.push((false, d.clone()));
                for answer in client_takes(&mut client, &mut client_stack, &d, &mut buf) {
                    t.datagrams.push((true, answer.clone()));
                    out.clear();
                    dispatcher.handle_datagram(src, &answer, now, &mut out);
                }
            }
        }
        // The player reads.
        client_stack.poll(now);
        if let Some(s) = client_stack.socket_mut(conn) {
            while let Ok(n) = s.recv_slice(&mut buf) {
                if n == 0 {
                    break;
                }
                received.extend_from_slice(&buf[..n]);
            }
            if received.len() == media.len() {
                s.close();
            }
        }
        if received.len() == media.len() && t.inner.len() > 40 {
            break;
        }
    }
    assert_eq!(received, media, "the download arrived intact");
    Ok(t)
}

/// The client takes in a datagram from the gateway; returns its answers.
fn client_takes(client: &mut Tunn, stack: &mut Stack, d: &[u8], buf: &mut [u8]) -> Vec<Vec<u8>> {
    let mut answers = Vec::new();
    let mut input = d;
    loop {
        match client.decapsulate(None, input, buf) {
            TunnResult::WriteToNetwork(a) => answers.push(a.to_vec()),
            TunnResult::WriteToTunnelV4(p, _) => {
                stack.push_inbound(p);
                break;
            }
            _ => break,
        }
        input = &[];
    }
    answers
}

fn frame(src: u8, d: &[u8]) -> Vec<u8> {
    let mut f = vec![src];
    f.extend((d.len() as u16).to_le_bytes());
    f.extend_from_slice(d);
    f
}

fn record_tunnel(s: &mut Seeds, t: &Tunnel) {
    // One datagram per seed (from client 0's admitted source), and the
    // start of the conversation as one seed.
    let mut start = Vec::new();
    for (i, (_, d)) in t.datagrams.iter().enumerate() {
        if i < 6 {
            start.extend(frame(0, d));
        }
        s.add("datagram", &frame(0, d));
        // From a stranger's source too.
        if i % 4 == 0 {
            s.add("datagram", &frame(7, d));
        }
    }
    s.add("datagram", &start);
    for (from_client, p) in &t.inner {
        let mut seed = vec![if *from_client { 0 } else { 2 }];
        seed.extend_from_slice(p);
        s.add("inner_packet", &seed);
    }
    // The dispatcher's scenarios, with the real datagrams as raw input.
    for input in scenarios(t) {
        s.add("dispatcher", &input.encode());
    }
}

fn set(source: u8, binding: u8, lifetime_secs: u16, same_id: bool) -> Change {
    Change::Set(Spec {
        source,
        binding,
        lifetime_secs,
        psk: 0,
        services: 0b011,
        same_id,
    })
}

fn syn(flags: u8) -> InnerSpec {
    InnerSpec {
        src: 0,
        dst: 0,
        port: 0,
        flags,
        payload_len: 16,
        shape: 0,
    }
}

/// Stories the dispatcher target starts from: each reaches a state worth
/// mutating (an established session, a pinning, a renewal, a revocation
/// with traffic in flight, expiry, cookies under load).
fn scenarios(t: &Tunnel) -> Vec<Input> {
    use Op::*;
    let keep = Change::Keep;
    let install = |a: Change, b: Change, c: Change| Feed {
        diff: false,
        slots: [a, b, c],
    };
    let session = vec![
        install(
            set(0, 0, 600, false),
            set(4, 2, 600, false),
            set(7, 3, 600, false),
        ),
        Initiate {
            client: 0,
            src: 0,
            port: 0,
        },
        Receive {
            client: 0,
            pick: 0,
            src: 0,
            port: 0,
        },
        Seal {
            client: 0,
            src: 0,
            port: 0,
            inner: syn(0x02),
        },
        Outbound {
            to: 0,
            inner: syn(0x12),
            farewell: false,
        },
        Receive {
            client: 0,
            pick: 0,
            src: 0,
            port: 0,
        },
        Seal {
            client: 0,
            src: 0,
            port: 0,
            inner: syn(0x10),
        },
    ];
    let mut inputs = vec![Input {
        load: 3,
        window: 10,
        ops: session.clone(),
    }];
    // The same session, then: a renewal in place, an edit of the source,
    // a revocation, expiry; traffic after each.
    for tail in [
        vec![
            Feed {
                diff: true,
                slots: [set(0, 0, 900, true), keep.clone(), keep.clone()],
            },
            Outbound {
                to: 0,
                inner: syn(0x18),
                farewell: false,
            },
        ],
        vec![
            Feed {
                diff: true,
                slots: [set(2, 0, 900, true), keep.clone(), keep.clone()],
            },
            Outbound {
                to: 0,
                inner: syn(0x18),
                farewell: false,
            },
            Seal {
                client: 0,
                src: 0,
                port: 0,
                inner: syn(0x18),
            },
        ],
        vec![
            Feed {
                diff: true,
                slots: [Change::Remove, keep.clone(), keep.clone()],
            },
            Outbound {
                to: 0,
                inner: syn(0x14),
                farewell: true,
            },
            Seal {
                client: 0,
                src: 0,
                port: 0,
                inner: syn(0x18),
            },
        ],
        vec![
            AdvanceSecs(255),
            AdvanceSecs(255),
            AdvanceSecs(255),
            Outbound {
                to: 0,
                inner: syn(0x14),
                farewell: true,
            },
            Timers,
            Seal {
                client: 0,
                src: 0,
                port: 0,
                inner: syn(0x18),
            },
        ],
        vec![
            Seal {
                client: 0,
                src: 7,
                port: 0,
                inner: syn(0x18),
            },
            Replay {
                src: 7,
                port: 1,
                pick: 0,
                flip_at: 0,
                flip: 0,
            },
            Replay {
                src: 1,
                port: 1,
                pick: 1,
                flip_at: 140,
                flip: 1,
            },
        ],
    ] {
        let mut ops = session.clone();
        ops.extend(tail);
        inputs.push(Input {
            load: 3,
            window: 10,
            ops,
        });
    }
    // First-handshake: client 2 pins from a source of its choosing.
    inputs.push(Input {
        load: 3,
        window: 5,
        ops: vec![
            install(keep.clone(), keep.clone(), set(7, 3, 600, false)),
            Initiate {
                client: 2,
                src: 5,
                port: 2,
            },
            Receive {
                client: 2,
                pick: 0,
                src: 5,
                port: 2,
            },
            Seal {
                client: 2,
                src: 5,
                port: 2,
                inner: syn(0x02),
            },
            Initiate {
                client: 2,
                src: 6,
                port: 2,
            },
            AdvanceSecs(6),
            Timers,
        ],
    });
    // Under load: cookie replies, then a handshake that carries the cookie.
    inputs.push(Input {
        load: 0,
        window: 5,
        ops: vec![
            install(set(0, 0, 600, false), set(1, 1, 600, false), keep.clone()),
            Initiate {
                client: 0,
                src: 0,
                port: 0,
            },
            Initiate {
                client: 1,
                src: 1,
                port: 0,
            },
            Initiate {
                client: 1,
                src: 1,
                port: 0,
            },
            Receive {
                client: 1,
                pick: 0,
                src: 1,
                port: 0,
            },
            Initiate {
                client: 1,
                src: 1,
                port: 0,
            },
            Receive {
                client: 1,
                pick: 0,
                src: 1,
                port: 0,
            },
            Seal {
                client: 1,
                src: 1,
                port: 0,
                inner: syn(0x02),
            },
        ],
    });
    // The real run's datagrams, raw, from an admitted and a stranger's source.
    let mut ops = vec![install(
        set(0, 0, 600, false),
        keep.clone(),
        set(7, 3, 600, false),
    )];
    for (i, (_, d)) in t.datagrams.iter().take(10).enumerate() {
        ops.push(Raw {
            src: if i % 2 == 0 { 0 } else { 7 },
            port: 0,
            bytes: d.clone(),
        });
    }
    inputs.push(Input {
        load: 3,
        window: 10,
        ops,
    });
    inputs
}

fn record_text(s: &mut Seeds, answer: &AccessResponse, state: &FeedState) {
    let mut heads: Vec<Vec<u8>> = Vec::new();
    // v4 observed and candidate in one /24; v6 in one /64; mixed.
    let v4 = |a: [u8; 4]| {
        let mut b = a.to_vec();
        b.resize(16, 0);
        b
    };
    let v6 = |s: &str| {
        s.parse::<std::net::Ipv6Addr>()
            .expect("v6")
            .octets()
            .to_vec()
    };
    for (fam, obs, cand) in [
        (0u8, v4([203, 0, 113, 7]), v4([203, 0, 113, 99])),
        (3, v6("2001:db8::7"), v6("2001:db8::99")),
        (1, v6("2001:db8::7"), v4([203, 0, 113, 7])),
    ] {
        let mut h = vec![fam];
        h.extend(obs);
        h.extend(cand);
        heads.push(h);
    }
    let mut texts: Vec<String> = vec![
        answer.gateway_public_key.to_string(),
        world::keys().clients[0].to_string(),
        " exact ".into(),
        "exact".into(),
        "prefix:24".into(),
        "prefix:64".into(),
        "prefix:0".into(),
        "prefix:128".into(),
        "first-handshake".into(),
    ];
    if let Some(psk) = answer.preshared_key {
        texts.push(psk.to_string());
    }
    for a in &state.admissions {
        texts.push(a.binding.to_string());
    }
    for (i, text) in texts.iter().enumerate() {
        let mut seed = heads[i % heads.len()].clone();
        seed.extend_from_slice(text.as_bytes());
        s.add("key_policy_text", &seed);
    }
}

fn record_config(s: &mut Seeds, base: &str, ca: &std::path::Path) {
    s.add(
        "gateway_config",
        include_bytes!("../../deploy/gateway.toml"),
    );
    let real = format!(
        "control = \"{base}\"\nca = \"{}\"\nstate = \"/var/lib/hushgate/gateway\"\n\
         listen_udp = \"0.0.0.0:51820\"\npublic_endpoint = \"127.0.0.1:51820\"\n\
         services = [\"plex=32400:127.0.0.1:32400\", \"jellyfin=8096:[::1]:8096\"]\n\
         direct = [\"plex=32401:127.0.0.1:32400\"]\nprefilter = \"auto\"\n",
        ca.display()
    );
    s.add("gateway_config", real.as_bytes());
    for spec in [
        "plex=32400:127.0.0.1:32400",
        "jellyfin=8096:[::1]:8096",
        "required",
    ] {
        s.add("gateway_config", spec.as_bytes());
    }
}

/// nf_tables answers as the kernel lays them out: an NLMSG_ERROR header,
/// the code, and the header of the message answered.
fn record_netlink(s: &mut Seeds) {
    let answer = |seq: u32, code: i32| {
        let mut m = Vec::new();
        m.extend_from_slice(&36u32.to_ne_bytes());
        m.extend_from_slice(&2u16.to_ne_bytes());
        m.extend_from_slice(&0x100u16.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(&code.to_ne_bytes());
        m.extend_from_slice(&[0u8; 16]);
        m
    };
    let head = |begin: u32, end: u32, first: u32| {
        let mut h = Vec::new();
        for w in [begin, end, first] {
            h.extend_from_slice(&w.to_ne_bytes());
        }
        h
    };
    let mut acks = head(99, 108, 100);
    for seq in 100..108 {
        acks.extend(answer(seq, 0));
    }
    s.add("netlink_answers", &acks);
    let mut refused = head(99, 108, 100);
    refused.extend(answer(100, 0));
    refused.extend(answer(101, -2));
    refused.extend(answer(108, -1));
    s.add("netlink_answers", &refused);
    let mut batch = head(7, 9, 8);
    batch.extend(answer(7, -1));
    s.add("netlink_answers", &batch);
    let mut cut = head(1, 3, 2);
    cut.extend(&answer(2, 0)[..30]);
    s.add("netlink_answers", &cut);
}
