//! `hushgate demo`: the whole admission flow on loopback, narrated, with
//! every claim checked. It exits non-zero if any step does not hold.

use anyhow::{bail, Context};
use client_shim::{
    Credentials, DeviceIdentity, Session, SessionEvent, ShimConfig, Trust, WaitingNotice,
};
use control_client::ControlClient;
use control_client::Method;
use gateway::{Gateway, GatewayConfig, ServiceSpec};
use proto::api::{CreateServer, IssuedInvitation, NewInvitation, ServerPolicy, SignupRequest};
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Run the whole flow on loopback: control plane, a sample media server,
/// the gateway in front of it, an owner sharing it with a friend, and the
/// client shim.
///
/// It narrates each step with its timing: an owner invited by the operator
/// signs up and registers her server, the gateway enrolls, she shares the
/// server by an invitation link, her friend signs up with it, the friend's
/// new device waits for the owner's approval and gets it, access
/// requested, admission pushed, gateway ready, tunnel up, a
/// file downloaded through the local port and its checksum verified; then
/// a stranger's probe from 127.0.0.2 that gets zero bytes back, and a
/// revocation that ends an ongoing download. Everything lives in a
/// temporary folder and is removed at the end.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Leave everything running after the checks and print the local URL
    /// to open in a browser or player; Ctrl-C stops it.
    #[arg(long)]
    keep: bool,
    /// Size of the sample file in MiB.
    #[arg(long, default_value_t = 32, value_name = "MIB")]
    file_mib: usize,
}

struct Narrator {
    start: Instant,
    step: Instant,
    n: usize,
}

impl Narrator {
    fn new() -> Self {
        Narrator {
            start: Instant::now(),
            step: Instant::now(),
            n: 0,
        }
    }
    fn say(&mut self, what: impl AsRef<str>) {
        self.n += 1;
        let took = self.step.elapsed();
        println!(
            "[{:>6.1} ms | +{:>6.1} ms] {:>2}. {}",
            self.start.elapsed().as_secs_f64() * 1e3,
            took.as_secs_f64() * 1e3,
            self.n,
            what.as_ref()
        );
        self.step = Instant::now();
    }
    fn restart(&mut self) {
        self.step = Instant::now();
    }
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    if a.file_mib == 0 || a.file_mib > 1024 {
        bail!("--file-mib must be between 1 and 1024");
    }
    let dir = tempfile::Builder::new()
        .prefix("hushgate-demo-")
        .tempdir()?;
    let mut say = Narrator::new();
    println!(
        "hushgate demo: everything runs on loopback, state in {}",
        dir.path().display()
    );
    println!();

    // The media server: HTTP on localhost only, never exposed.
    let media = media::start(a.file_mib << 20).await?;
    say.say(format!(
        "sample media server on http://{} (localhost only): /identity and a {} MiB file, sha256 {}…",
        media.addr,
        a.file_mib,
        &media.sha256[..16]
    ));

    // The control plane.
    let serving = control::ControlPlane::spawn_on_loopback(
        dir.path().join("control"),
        control::Settings {
            login_per_minute: 1000,
            ..Default::default()
        },
    )?;
    let ca = serving
        .ca_file
        .clone()
        .context("the control plane made no CA")?;
    let url = serving.url.clone();
    let base = ControlClient::new(&url, Trust::from_ca_file(&ca)?)?;
    let admin = base.with_bearer(&serving.admin_token()?);
    say.say(format!(
        "control plane on {url} (HTTPS, its own CA, SQLite in the state folder)"
    ));

    // The operator invites an owner; the owner signs up, registers their
    // server and decides who may reach it. The operator never touches it.
    let owner_password = format!("demo-{}", hex(&rand_bytes::<8>()));
    let invite: IssuedInvitation = admin
        .call(
            Method::POST,
            "/v1/admin/invitations",
            Some(&NewInvitation::default()),
            CALL,
        )
        .await?;
    signup(&base, "olga", &owner_password, &invite.token).await?;
    let olga = base.with_bearer(&base.login("olga", &owner_password).await?.token);
    let server = olga
        .register_server(&CreateServer {
            name: "living-room".into(),
            binding: Default::default(),
            admission_ttl_secs: Some(600),
        })
        .await?;
    olga.update_policy(
        "living-room",
        &ServerPolicy {
            approve_devices: Some(true),
            ..Default::default()
        },
    )
    .await?;
    say.say("the operator invited 'olga'; she signed up, registered her server 'living-room' and asked to approve every new device (binding: exact source address)");

    // The owner shares the server with a friend by link.
    let link: IssuedInvitation = olga
        .call(
            Method::POST,
            "/v1/servers/living-room/invitations",
            Some(&NewInvitation {
                ttl_secs: Some(3600),
                ..Default::default()
            }),
            CALL,
        )
        .await?;
    let password = format!("demo-{}", hex(&rand_bytes::<8>()));
    signup(&base, "alice", &password, &link.token).await?;
    say.say("olga made a one-use invitation link; her friend 'alice' opened it and signed up: the share exists");

    // The gateway.
    let gw = Gateway::start(GatewayConfig {
        control_url: url.clone(),
        trust: Trust::from_ca_file(&ca)?,
        state_dir: dir.path().join("gateway"),
        listen_udp: "127.0.0.1:0".parse()?,
        public_endpoint: None,
        services: vec![ServiceSpec {
            name: "plex".into(),
            port: 32400,
            upstream: media.addr,
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
    .await?;
    if !gw.wait_synced(Duration::from_secs(10)).await {
        bail!("the gateway did not sync with the control plane within 10 s");
    }
    say.say(format!(
        "gateway enrolled with a one-time token; key {}…, silent UDP port {}; it holds an outbound feed to the control plane",
        gw.public_key().fingerprint(),
        gw.udp_addr()
    ));

    // Alice's player asks for access from a new device: it waits until
    // the owner approves that device.
    say.restart();
    let (told_tx, mut told) = tokio::sync::mpsc::unbounded_channel::<String>();
    let connecting = tokio::spawn(Session::connect(ShimConfig {
        control_url: url.clone(),
        trust: Trust::from_ca_file(&ca)?,
        credentials: Credentials::Password {
            user: "alice".into(),
            password: password.clone(),
        },
        server: "living-room".into(),
        service: Some("plex".into()),
        listen: "127.0.0.1:0".parse()?,
        device: Some(DeviceIdentity {
            file: dir.path().join("alice-device"),
            name: "alice's tv".into(),
        }),
        on_waiting: Some(WaitingNotice(Arc::new(move |m: &str| {
            let _ = told_tx.send(m.to_string());
        }))),
    }));
    let waiting = tokio::time::timeout(Duration::from_secs(30), told.recv())
        .await
        .ok()
        .flatten()
        .context("the shim did not report that it waits for the owner's approval")?;
    say.say(format!(
        "alice signed in from a new device (its credential kept in a 0600 file); the shim says: {waiting}"
    ));
    let pending = olga.device_requests("living-room").await?;
    let request = pending
        .iter()
        .find(|r| r.state == "pending" && r.username == "alice")
        .context("olga does not see alice's device waiting")?;
    olga.decide_device("living-room", &request.device_id, true)
        .await?;
    say.say(format!(
        "olga approved \"{}\" (audited); alice's shim, which asks again every 3 s while it waits, goes on by itself",
        request.device_name
    ));
    let session = tokio::time::timeout(Duration::from_secs(60), connecting)
        .await
        .context("the shim did not connect within 60 s of the approval")??
        .context("the client shim could not connect")?;
    let admissions = admin.list_admissions().await?;
    let adm = admissions
        .iter()
        .find(|x| x.id == session.info().admission_id)
        .context("the control plane does not list the shim's admission")?;
    let audit = admin.audit(20).await?;
    if !audit
        .iter()
        .any(|e| e.event == "access_granted" && e.admission_id.as_deref() == Some(&adm.id))
    {
        bail!("the audit log does not record the admission");
    }
    say.say(format!(
        "access requested from {} with an ephemeral key {}…; admission {} pushed to the gateway, acknowledged, then answered; tunnel up ({} inside the tunnel)",
        adm.source,
        adm.client_public_key.map(|k| k.fingerprint()).unwrap_or_default(),
        adm.id,
        adm.client_address.map(|c| c.to_string()).unwrap_or_default(),
    ));
    let status = gw.status().await.context("gateway status")?;
    if status.gateway.peers.len() != 1 || status.gateway.peers[0].handshakes == 0 {
        bail!("the gateway does not show the admitted peer with a handshake");
    }
    say.say(format!(
        "gateway ready: 1 peer, bound to {} ({}), WireGuard handshake done",
        status.gateway.peers[0].source, status.gateway.peers[0].binding
    ));

    // The player downloads through the local port.
    let local = session.local_addr();
    let identity = http_get(local, "/identity", None).await?;
    if !String::from_utf8_lossy(&identity).contains(&media.machine_id) {
        bail!("/identity through the tunnel does not match the media server");
    }
    let t = Instant::now();
    let body = http_get(local, "/file", None).await?;
    let took = t.elapsed();
    let sha = hex(&Sha256::digest(&body));
    if sha != media.sha256 {
        bail!("checksum mismatch: got {sha}, want {}", media.sha256);
    }
    say.say(format!(
        "player fetched /identity and the {} MiB file through http://{local}: sha256 matches, {:.0} Mbit/s",
        a.file_mib,
        body.len() as f64 * 8.0 / took.as_secs_f64() / 1e6
    ));

    // A stranger probes the gateway.
    let drops_before = status.gateway.drops.total();
    let back = probe(gw.udp_addr()).await?;
    let drops_after = gw
        .status()
        .await
        .context("gateway status")?
        .gateway
        .drops
        .total();
    if back != 0 {
        bail!("the gateway answered a stranger with {back} bytes");
    }
    say.say(format!(
        "a stranger at 127.0.0.2 sent {PROBES} probes (junk, handshake-shaped, data-shaped): 0 bytes back, {} dropped before any cryptography",
        drops_after - drops_before
    ));

    if a.keep {
        println!();
        println!("everything stays up. Open http://{local}/ in a browser or point a player at it.");
        println!("  control plane: {url}  (CA {})", ca.display());
        println!(
            "  admin:         hushgate admin --state {} admission list",
            dir.path().join("control").display()
        );
        println!(
            "  gateway:       hushgate gateway status --state {}",
            dir.path().join("gateway").display()
        );
        println!("Ctrl-C stops everything.");
        let _ = tokio::signal::ctrl_c().await;
        session.close().await;
        gw.shutdown().await;
        serving.stop().await?;
        return Ok(());
    }

    // Revocation ends an ongoing download.
    let mut events = session.events();
    let (rev_tx, rev_rx) = tokio::sync::oneshot::channel::<Instant>();
    let slow = tokio::spawn(async move {
        // Read slowly so the download is still running when it is revoked.
        http_get(local, "/file", Some((256 * 1024, rev_rx))).await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    say.restart();
    let revoked_at = Instant::now();
    olga.revoke(&adm.id).await?;
    let _ = rev_tx.send(revoked_at);
    let outcome = tokio::time::timeout(Duration::from_secs(5), slow).await;
    let ended_after = revoked_at.elapsed();
    match outcome {
        Ok(Ok(Err(_))) => {}
        Ok(Ok(Ok(b))) if b.len() < media.len => {}
        Ok(Ok(Ok(_))) => bail!("the download finished despite the revocation"),
        Ok(Err(e)) => bail!("download task failed: {e}"),
        Err(_) => bail!("the download was still running 5 s after the revocation"),
    }
    if ended_after > Duration::from_secs(1) {
        bail!("the download ended {ended_after:?} after the revocation (limit 1 s)");
    }
    say.say(format!(
        "olga revoked the admission: the ongoing download ended {:.0} ms later",
        ended_after.as_secs_f64() * 1e3
    ));
    // The player tries again: the tunnel is gone, so nothing answers, and
    // the shim learns from the control plane that access has ended.
    let retry =
        tokio::time::timeout(Duration::from_secs(3), http_get(local, "/identity", None)).await;
    if matches!(retry, Ok(Ok(_))) {
        bail!("a new connection still worked after the revocation");
    }
    let revoked_event = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match events.recv().await {
                Ok(SessionEvent::Revoked { message }) => return Some(message),
                Ok(SessionEvent::Ended { reason }) => return Some(reason.to_string()),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(_) => return None,
                Ok(_) => {}
            }
        }
    })
    .await
    .ok()
    .flatten()
    .context("the shim did not report the revocation within 5 s")?;
    say.say(format!(
        "the player's new connection gets nothing; the shim ends the session: {revoked_event}"
    ));
    if gw.status().await.map(|s| s.gateway.peers.len()) != Some(0) {
        bail!("the gateway still holds the revoked peer");
    }

    session.close().await;
    gw.shutdown().await;
    serving.stop().await?;
    media.stop();
    println!();
    println!("every step held. `hushgate demo --keep` leaves it running for a browser or player.");
    Ok(())
}

const PROBES: usize = 60;
const CALL: Duration = Duration::from_secs(15);

/// `POST /v1/signup` with an invitation.
async fn signup(
    base: &ControlClient,
    username: &str,
    password: &str,
    invitation: &str,
) -> anyhow::Result<()> {
    let _: serde_json::Value = base
        .call(
            Method::POST,
            "/v1/signup",
            Some(&SignupRequest {
                username: username.into(),
                password: password.into(),
                invitation: Some(invitation.into()),
            }),
            CALL,
        )
        .await
        .with_context(|| format!("sign-up of {username}"))?;
    Ok(())
}

/// Sends junk from 127.0.0.2 and counts every byte that comes back.
async fn probe(gateway: SocketAddr) -> anyhow::Result<usize> {
    let sock = tokio::net::UdpSocket::bind("127.0.0.2:0")
        .await
        .context("cannot bind 127.0.0.2 (loopback alias) for the stranger's probe")?;
    for i in 0..PROBES {
        let mut d = rand_bytes::<148>().to_vec();
        match i % 3 {
            0 => d[0] = 1,              // handshake initiation shape
            1 => d.truncate(32 + i),    // data-packet shape
            _ => d.truncate(1 + i % 7), // scraps
        }
        if i % 3 == 1 {
            d[..4].copy_from_slice(&[4, 0, 0, 0]);
        }
        sock.send_to(&d, gateway).await?;
    }
    let mut total = 0;
    let mut buf = [0u8; 2048];
    let deadline = Instant::now() + Duration::from_millis(800);
    while let Ok(r) = tokio::time::timeout_at(deadline.into(), sock.recv_from(&mut buf)).await {
        match r {
            Ok((n, _)) => total += n,
            // An ICMP error surfacing as an error counts as an answer too.
            Err(_) => total += 1,
        }
    }
    Ok(total)
}

/// A minimal HTTP/1.1 GET (the player). With `slow`, reads at most that
/// many bytes per 100 ms and stops waiting once told the revocation time.
async fn http_get(
    addr: SocketAddr,
    path: &str,
    slow: Option<(usize, tokio::sync::oneshot::Receiver<Instant>)>,
) -> anyhow::Result<Vec<u8>> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: media\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut raw = Vec::new();
    let mut buf = vec![0u8; 256 * 1024];
    let (rate, _rx) = match slow {
        Some((r, rx)) => (Some(r), Some(rx)),
        None => (None, None),
    };
    loop {
        let want = rate.map_or(buf.len(), |r| r.min(buf.len()));
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf[..want]))
            .await
            .context("no data for 10 s")??;
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
        if rate.is_some() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no HTTP header in the answer")?;
    let head = String::from_utf8_lossy(&raw[..end]).to_string();
    if !head.starts_with("HTTP/1.1 200") {
        bail!(
            "the media server answered: {}",
            head.lines().next().unwrap_or("")
        );
    }
    Ok(raw[end + 4..].to_vec())
}

fn rand_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut b);
    b
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The sample media server: like a Plex server, it has an identity page
/// and media files; it listens on localhost only.
mod media {
    use super::*;
    use axum::http::header;
    use axum::response::IntoResponse;
    use axum::routing::get;

    pub struct Media {
        pub addr: SocketAddr,
        pub sha256: String,
        pub machine_id: String,
        pub len: usize,
        task: tokio::task::JoinHandle<()>,
    }

    impl Media {
        pub fn stop(self) {
            self.task.abort();
        }
    }

    pub async fn start(len: usize) -> anyhow::Result<Media> {
        // Deterministic, incompressible-looking content.
        let mut data = vec![0u8; len];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for chunk in data.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
        let sha256 = hex(&Sha256::digest(&data));
        let data = axum::body::Bytes::from(data);
        let machine_id = hex(&rand_bytes::<16>());
        let identity = Arc::new(format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<MediaContainer size=\"0\" machineIdentifier=\"{machine_id}\" version=\"1.0.0-hushgate-demo\"/>\n"
        ));
        let page = Arc::new(format!(
            "<!doctype html><title>hushgate demo media server</title><h1>Reached through hushgate</h1>\
             <p>This page came through the WireGuard tunnel. <a href=\"/file\">Download the {} MiB sample file</a> \
             (sha256 {sha256}).</p>",
            len >> 20
        ));
        let app = axum::Router::new()
            .route(
                "/identity",
                get(move || {
                    let i = identity.clone();
                    async move { ([(header::CONTENT_TYPE, "application/xml")], (*i).clone()) }
                }),
            )
            .route(
                "/file",
                get(move || {
                    let d = data.clone();
                    async move {
                        ([(header::CONTENT_TYPE, "application/octet-stream")], d).into_response()
                    }
                }),
            )
            .route(
                "/",
                get(move || {
                    let p = page.clone();
                    async move { axum::response::Html((*p).clone()) }
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Media {
            addr,
            sha256,
            machine_id,
            len,
            task,
        })
    }
}
