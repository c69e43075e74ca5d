//! The shim against the real hushgate on loopback: the real control plane
//! (HTTPS, SQLite), the real gateway and a real upstream HTTP server, with
//! the shim started the way a player app starts it, `Session::connect`.
//! These are the "Done when" of issue 4. The shim's own timings are its
//! defaults: nothing here is shortened.

use testkit as support;

use hushgate_client_shim::{
    Credentials, DeviceIdentity, EndReason, Session, SessionEvent, WaitingNotice,
};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use support::{get, paced_download, sha256, Options, Reading, World, FILE_LEN};
use tokio::sync::broadcast;

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

/// How long a test waits for an event before calling it a failure:
/// generous, because the machine running the tests may be busy, and a wait
/// that ends early costs nothing.
const PATIENCE: Duration = Duration::from_secs(20);

/// The bound for claims that something happens "within a second" (a
/// revocation ends a download, an expiry cuts it): an order of magnitude
/// above the promise, so a busy machine cannot fail these tests, and far
/// below what the failure would take (admissions here live an hour, or
/// the download would run for seconds more). The netns harness checks the
/// promise itself, with real processes.
const PROMPT: Duration = Duration::from_secs(10);

/// Waits for an event matching `want`, up to `limit`; returns it and
/// everything seen before it.
async fn expect_event(
    rx: &mut broadcast::Receiver<SessionEvent>,
    limit: Duration,
    want: impl Fn(&SessionEvent) -> bool,
) -> (SessionEvent, Vec<SessionEvent>) {
    let deadline = tokio::time::Instant::now() + limit;
    let mut seen = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Ok(ev)) if want(&ev) => return (ev, seen),
            Ok(Ok(ev)) => seen.push(ev),
            Ok(Err(broadcast::error::RecvError::Lagged(_))) => {}
            Ok(Err(e)) => panic!("event stream ended: {e}; seen {seen:?}"),
            Err(_) => panic!("no matching event within {limit:?}; seen {seen:?}"),
        }
    }
}

/// Everything already queued on `rx`.
fn drain(rx: &mut broadcast::Receiver<SessionEvent>) -> Vec<SessionEvent> {
    let mut v = Vec::new();
    loop {
        match rx.try_recv() {
            Ok(ev) => v.push(ev),
            Err(broadcast::error::TryRecvError::Lagged(_)) => {}
            Err(_) => return v,
        }
    }
}

/// A player fetching the file in four ranges over four connections at
/// once (as players fetch segments in parallel); the ranges put together
/// must be the file, byte for byte.
async fn four_connections(local: SocketAddr, file_hash: [u8; 32]) {
    let part = FILE_LEN / 4;
    let workers: Vec<_> = (0..4)
        .map(|i| {
            std::thread::spawn(move || {
                let range = (i * part, (i + 1) * part - 1);
                get(local, "/file", Some(range), Reading::Fast)
            })
        })
        .collect();
    let whole = blocking(move || {
        let mut whole = Vec::with_capacity(FILE_LEN);
        for w in workers {
            let body = w.join().unwrap().expect("range download completes");
            assert_eq!(body.len(), part);
            whole.extend_from_slice(&body);
        }
        whole
    })
    .await;
    assert_eq!(whole.len(), FILE_LEN);
    assert!(sha256(&whole) == file_hash, "the file arrived corrupted");
}

/// A player-like client downloads 8 MiB through the local port, four
/// connections at once, intact; then once more over one connection. The
/// session logs in with a password here (the real `/v1/login` path).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_connections_download_several_mib_intact() {
    let w = World::start(Options::default()).await;
    let session = Session::connect(w.shim_config(Credentials::Password {
        user: support::USER.into(),
        password: support::PASSWORD.into(),
    }))
    .await
    .expect("the session connects");
    let info = session.info();
    assert_eq!(info.gateway, w.gateway().udp_addr());
    assert_eq!(info.service, "plex");
    let local = session.local_addr();
    let file_hash = sha256(&w.upstream.file);

    let t = Instant::now();
    four_connections(local, file_hash).await;
    eprintln!(
        "{} MiB over 4 connections in {:?}",
        FILE_LEN >> 20,
        t.elapsed()
    );
    let body = blocking(move || get(local, "/file", None, Reading::Fast))
        .await
        .expect("a whole-file download completes");
    assert!(sha256(&body) == file_hash, "the file arrived corrupted");

    // The gateway saw one peer, from the address the control plane saw.
    let status = w.gateway().status().await.unwrap();
    assert_eq!(status.gateway.peers.len(), 1);
    let peer = &status.gateway.peers[0];
    assert_eq!(peer.admission_id, info.admission_id);
    assert!(peer.tx_bytes >= 2 * FILE_LEN as u64, "{peer:?}");

    // Closing revokes the admission and frees the port.
    session.close().await;
    assert!(std::net::TcpStream::connect(local).is_err());
    assert!(w.admin.list_admissions().await.unwrap().is_empty());
    w.stop().await;
}

/// Admissions of 3 s and a download paced to last about 7 s (the
/// upstream writes 32 KiB every 50 ms, the player reads in small paced
/// chunks): without renewal the gateway would drop the peer at 3 s and
/// the download would stall. It must complete intact, the session must
/// have renewed (`Renewed` events, a later expiry), and it must not have
/// needed a new admission.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_keeps_a_long_download_alive() {
    let w = World::start(Options {
        ttl_secs: Some(3),
        ..Default::default()
    })
    .await;
    let session = w.session().await.expect("the session connects");
    let mut ev = session.events();
    let first = session.info();
    let local = session.local_addr();
    let len = 4 << 20;
    let t = Instant::now();
    let body = blocking(move || {
        get(
            local,
            "/file?pace_ms=50&chunk=32768",
            Some((0, len - 1)),
            Reading::Paced {
                chunk: 16 << 10,
                every: Duration::from_millis(10),
            },
        )
    })
    .await
    .expect("the long download completes");
    let took = t.elapsed();
    assert!(
        took >= Duration::from_secs(6),
        "too fast to prove anything: {took:?}"
    );
    assert!(
        sha256(&body) == sha256(&w.upstream.file[..len]),
        "corrupted"
    );

    let events = drain(&mut ev);
    let renewed = events
        .iter()
        .filter(|e| matches!(e, SessionEvent::Renewed { .. }))
        .count();
    assert!(renewed >= 2, "{took:?}, events {events:?}");
    assert!(
        !events.iter().any(|e| matches!(
            e,
            SessionEvent::Lost | SessionEvent::Reconnecting { .. } | SessionEvent::Connected { .. }
        )),
        "renewal alone should have sufficed: {events:?}"
    );
    let now = session.info();
    assert_eq!(now.admission_id, first.admission_id);
    assert!(now.expires_at > first.expires_at);
    session.close().await;
    w.stop().await;
}

/// An admin revokes the session's admission in the middle of a download:
/// the download ends (the player's connection is cut) and the session
/// ends with `Revoked`, both within one second of the revoke call's
/// return. (How: the gateway removes the peer and resets its open
/// connections inside the tunnel; the reset makes the shim ask the
/// control plane, which answers 404 for the revoked admission.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_ends_an_ongoing_download_within_a_second() {
    let w = World::start(Options::default()).await;
    let session = w.session().await.expect("the session connects");
    let mut ev = session.events();
    let local = session.local_addr();

    // About 5 s of paced download; note when it ends, however it ends.
    let (progress, rx) = paced_download(local, 50);
    // Wait until data flows.
    let t = Instant::now();
    while progress.load(std::sync::atomic::Ordering::Relaxed) < 512 << 10 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the download never started"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let id = session.info().admission_id;
    w.admin.revoke(&id).await.expect("the admin revokes");
    let revoked_at = Instant::now();
    let reason = tokio::time::timeout(PATIENCE, session.ended())
        .await
        .expect("the session ends");
    let session_end = revoked_at.elapsed();
    assert!(matches!(reason, EndReason::Revoked { .. }), "{reason:?}");
    let (r, ended_at) = blocking(move || rx.recv_timeout(PATIENCE))
        .await
        .expect("the download ends");
    let download_end = ended_at.saturating_duration_since(revoked_at);
    eprintln!("after revoke: download ended in {download_end:?}, session in {session_end:?}");
    let got = progress.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        got < FILE_LEN,
        "the download finished before the revocation"
    );
    assert!(
        r.is_err() || r.as_ref().is_ok_and(|n| *n < FILE_LEN),
        "{r:?}"
    );
    assert!(
        download_end < PROMPT,
        "the download ran on for {download_end:?} after the revocation"
    );
    assert!(
        session_end < PROMPT,
        "the session ended {session_end:?} after the revocation"
    );
    let (_, before) = expect_event(&mut ev, PATIENCE, |e| {
        matches!(e, SessionEvent::Ended { .. })
    })
    .await;
    assert!(
        before
            .iter()
            .any(|e| matches!(e, SessionEvent::Revoked { .. })),
        "{before:?}"
    );
    // The local port is closed.
    assert!(std::net::TcpStream::connect(local).is_err());
    drop(session);
    w.stop().await;
}

/// An admission that expires while the control plane is unreachable (no
/// renewal, no feed) ends at the gateway by itself: the gateway resets the
/// player's connections through the tunnel before dropping the peer, so
/// the download ends at the expiry instead of hanging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admission_expiring_without_the_control_plane_resets_the_download() {
    let mut w = World::start(Options {
        ttl_secs: Some(3),
        ..Default::default()
    })
    .await;
    let session = w.session().await.expect("the session connects");
    let local = session.local_addr();
    let left = session.info().expires_at - time::OffsetDateTime::now_utc();
    let expiry = Instant::now() + Duration::try_from(left).unwrap_or_default();

    // About 10 s of paced download.
    let (progress, rx) = paced_download(local, 100);
    let t = Instant::now();
    while progress.load(std::sync::atomic::Ordering::Relaxed) < 256 << 10 {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the download never started"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    w.stop_control().await;

    let (r, ended_at) = blocking(move || rx.recv_timeout(Duration::from_secs(15)))
        .await
        .expect("the download ends");
    let late = ended_at.saturating_duration_since(expiry);
    let early = expiry.saturating_duration_since(ended_at);
    eprintln!("download ended {late:?} after the expiry ({early:?} before it): {r:?}");
    assert!(
        r.is_err() || r.as_ref().is_ok_and(|n| *n < FILE_LEN),
        "the download completed: {r:?}"
    );
    assert!(
        late < PROMPT,
        "the download ran on for {late:?} after the admission expired"
    );
    assert!(
        early < Duration::from_millis(500),
        "the download ended {early:?} before the admission expired"
    );
    drop(session);
    w.stop().await;
}

/// A revocation while nothing is open (so the gateway has nothing to
/// reset) is found as soon as the player connects again: the gateway
/// stays silent, the shim asks the control plane after its stall timeout
/// (1 s), and the session ends with `Revoked`, cutting that connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_of_an_idle_session_is_found_at_the_next_connection() {
    let w = World::start(Options::default()).await;
    let session = w.session().await.expect("the session connects");
    let local = session.local_addr();
    let body = blocking(move || get(local, "/file", Some((0, 65_535)), Reading::Fast))
        .await
        .expect("a download before the revocation");
    assert!(body == w.upstream.file[..65_536]);
    w.admin.revoke(&session.info().admission_id).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let t = Instant::now();
    let player = std::thread::spawn(move || get(local, "/file", None, Reading::Fast));
    let reason = tokio::time::timeout(PATIENCE, session.ended())
        .await
        .expect("the session ends");
    assert!(matches!(reason, EndReason::Revoked { .. }), "{reason:?}");
    assert!(t.elapsed() < PROMPT, "{:?}", t.elapsed());
    let r = blocking(move || player.join().unwrap()).await;
    assert!(r.is_err(), "a revoked session served a download");
    drop(session);
    w.stop().await;
}

/// The client's public address changes under it, as when the home
/// router's WAN address changes (or a NAT drops its mappings and the
/// next ones leave from another address): the client sits behind a
/// [`support::Nat`] whose public address is 127.0.0.1, so the control
/// plane records 127.0.0.1 and the server's `exact` binding ties the
/// admission to it. Then the NAT's public address becomes 127.0.0.2: open
/// TCP connections through it are cut, and the shim's UDP now reaches the
/// gateway from 127.0.0.2, which no admission binds, so the gateway drops
/// it without a word (nothing in the shim changes: its sockets stay as
/// they are, exactly as behind a real NAT).
///
/// The shim must notice the silence, declare the path lost, ask the
/// control plane for a new admission (which, arriving from 127.0.0.2, is
/// bound to 127.0.0.2), bring the tunnel up again with a new key, revoke
/// the old admission, and serve downloads again, by itself. With the
/// shim's default loss timeout (15 s, WireGuard's own) this test takes
/// about 17 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_source_address_leads_to_readmission() {
    let w = World::start(Options {
        nat: true,
        ..Default::default()
    })
    .await;
    let session = w
        .session()
        .await
        .expect("the session connects through the NAT");
    let mut ev = session.events();
    let local = session.local_addr();
    let first = session.info().admission_id;
    let adm = w.admin.list_admissions().await.unwrap();
    assert_eq!(adm.len(), 1);
    assert_eq!(adm[0].source.to_string(), "127.0.0.1");
    let body = blocking(move || get(local, "/file", Some((0, (1 << 20) - 1)), Reading::Fast))
        .await
        .expect("download before the change");
    assert!(body == w.upstream.file[..1 << 20]);

    let t = Instant::now();
    w.nat
        .as_ref()
        .unwrap()
        .change_address("127.0.0.2".parse().unwrap());
    // The player keeps playing: traffic into the tunnel is what reveals
    // that the gateway no longer answers. (This connection may break.)
    let during = std::thread::spawn(move || get(local, "/file", None, Reading::Fast));
    // The loss is declared after 15 s of silence (WireGuard's own timeout).
    expect_event(&mut ev, Duration::from_secs(15) + PATIENCE, |e| {
        *e == SessionEvent::Lost
    })
    .await;
    let (connected, _) = expect_event(&mut ev, PATIENCE, |e| {
        matches!(e, SessionEvent::Connected { .. })
    })
    .await;
    eprintln!("re-admitted {:?} after the address change", t.elapsed());
    let SessionEvent::Connected { admission_id, .. } = connected else {
        unreachable!()
    };
    assert_ne!(admission_id, first);
    assert_eq!(session.info().admission_id, admission_id);
    let _ = blocking(move || during.join()).await;

    // New connections work, intact.
    let file_hash = sha256(&w.upstream.file);
    four_connections(local, file_hash).await;

    // The control plane bound the new admission to the new address, and
    // the shim revoked the old one.
    let deadline = Instant::now() + Duration::from_secs(20);
    let adm = loop {
        let adm = w.admin.list_admissions().await.unwrap();
        if adm.len() == 1 || Instant::now() > deadline {
            break adm;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(adm.len(), 1, "{adm:?}");
    assert_eq!(adm[0].id, admission_id);
    assert_eq!(adm[0].source.to_string(), "127.0.0.2");
    // What the gateway did with the datagrams from the new address
    // before the new admission existed. The gateway takes the old
    // admission's revocation from its feed after the control plane has
    // committed it: wait for that version to reach its data path.
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        let status = w.gateway().status().await.unwrap();
        if status.gateway.peers.len() == 1 || Instant::now() > deadline {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let drops = &status.gateway.drops;
    assert!(
        drops.get(gateway::DropReason::UnknownSource) + drops.get(gateway::DropReason::WrongSource)
            > 0,
        "{drops:?}"
    );
    assert_eq!(status.gateway.peers.len(), 1);
    assert_eq!(
        status.gateway.peers[0].endpoint.map(|e| e.ip().to_string()),
        Some("127.0.0.2".into())
    );
    session.close().await;
    w.stop().await;
}

/// A server whose owner approves each new device: the shim logs in as a
/// new device (its credential lands in a 0600 file), tells its caller
/// "waiting for olga to approve this device ..." and keeps asking; once
/// the owner approves, the session connects and a download goes through.
/// A later session from the same device file is the same device and
/// needs no new approval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_device_waits_for_the_owners_approval_then_connects() {
    use std::os::unix::fs::PermissionsExt;
    let w = World::start(Options {
        owned: true,
        ..Default::default()
    })
    .await;
    let file = w.dir.path().join("client-state/device");
    let (tx, mut told) = tokio::sync::mpsc::unbounded_channel::<String>();
    let mut config = w.shim_config(Credentials::Password {
        user: support::USER.into(),
        password: support::PASSWORD.into(),
    });
    config.device = Some(DeviceIdentity {
        file: file.clone(),
        name: "alice's laptop".into(),
    });
    config.on_waiting = Some(WaitingNotice(std::sync::Arc::new(move |m: &str| {
        let _ = tx.send(m.to_string());
    })));
    let connecting = tokio::spawn(Session::connect(config.clone()));
    let message = tokio::time::timeout(Duration::from_secs(60), told.recv())
        .await
        .expect("the shim reports the waiting state")
        .unwrap();
    assert!(
        message.contains("waiting for olga to approve this device"),
        "{message}"
    );
    assert!(!connecting.is_finished(), "connect keeps waiting");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the device credential is private");
    assert!(w.admin.list_admissions().await.unwrap().is_empty());

    let owner = w.owner().await;
    let requests = owner.device_requests(support::SERVER).await.unwrap();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].device_name, "alice's laptop");
    owner
        .decide_device(support::SERVER, &requests[0].device_id, true)
        .await
        .unwrap();
    let session = tokio::time::timeout(Duration::from_secs(60), connecting)
        .await
        .expect("connect ends after the approval")
        .unwrap()
        .expect("the session connects");
    let local = session.local_addr();
    let body = blocking(move || get(local, "/file", None, Reading::Fast))
        .await
        .expect("a download completes");
    assert!(sha256(&body) == sha256(&w.upstream.file));
    session.close().await;

    let again = Session::connect(config)
        .await
        .expect("the same device needs no new approval");
    assert_eq!(
        owner.device_requests(support::SERVER).await.unwrap().len(),
        1
    );
    again.close().await;
    w.stop().await;
}
