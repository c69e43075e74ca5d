//! The reachability check: proves that a gateway's reported endpoint
//! reaches the gateway through the real path (the home router, any NAT
//! or firewall in front of it), using the admission mechanism itself, so
//! that the check never makes the port answer anyone else.
//!
//! A check, for one server:
//! 1. picks the address it will send from: a `--probe-source` of the
//!    endpoint's family (a control plane behind a NAT of its own names its
//!    public address so), else the control plane's address as the gateway
//!    reaches it (the gateway reports it), else the address this host
//!    sends from towards the endpoint. That is where the datagrams come
//!    from, so that is what the gateway's kernel pre-filter and admission
//!    table will see.
//! 2. makes a fresh X25519 key pair that exists only in this function,
//!    and pushes a one-off admission for it: bound `exact` to that
//!    address whatever the server's binding policy (never the
//!    first-handshake window, which would open the port to every source),
//!    no services (nothing may pass inside the tunnel), the reserved
//!    tunnel address 100.64.0.0 (never given to a client), 30 s of life.
//!    It is stored with the server, not as an admission row
//!    (`store::begin_probe`): every replica's feed answers carry it while
//!    the check runs, whichever replica the gateway polls, and the feed's
//!    history names its id, so the diffs that carry it are versioned like
//!    any other change. One check per server at a time, across replicas:
//!    a second waits for the first's admission to end. A replica killed
//!    during a check leaves it to end at its deadline (the feed stops
//!    carrying it then, and the gateway drops it at its expiry).
//! 3. waits for the gateway's acknowledgement, as an access request does;
//! 4. sends a WireGuard handshake initiation from that address to the
//!    endpoint and waits for the response (retrying twice);
//! 5. records the result and removes the admission in one transaction, so
//!    the feed answer that carries the removal also carries the result to
//!    the gateway (`hushgate gateway status`).
//!
//! Only the holder of the one-off key can complete that handshake, and
//! only from the bound address: the gateway answers no one else.

use crate::app::AppState;
use crate::store;
use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use proto::api::AccessMode;
use proto::feed::FeedAdmission;
use proto::reach::{diagnose, NetworkReport, Reachability, ReachabilityView, UnreachableReason};
use proto::{BindingPolicy, WgKey};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use time::OffsetDateTime;

/// The tunnel address of a check's admission: 100.64.0.0, the network
/// address of the tunnel range, which no client is ever given.
pub const PROBE_TUNNEL_ADDRESS: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 0);
/// How long a check's admission lives at most.
const PROBE_LIFETIME: Duration = Duration::from_secs(30);
/// Handshake attempts and the wait for each answer.
const ATTEMPTS: u32 = 3;
const ANSWER_WAIT: Duration = Duration::from_secs(1);
/// Checks the gateway did not confirm are tried again this many times,
/// this long apart.
const UNCONFIRMED_RETRIES: u32 = 3;
const UNCONFIRMED_WAIT: Duration = Duration::from_secs(10);

/// What the gateway reported about its network, and the address the
/// control plane saw the report come from (for the double-NAT rule).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredNetwork {
    pub report: NetworkReport,
    pub observed: IpAddr,
}

/// One lock per server, so that this replica's checks of one server
/// queue here instead of in the database (see `store::begin_probe`).
#[derive(Debug, Default)]
pub struct Prober {
    locks: Mutex<HashMap<i64, Arc<tokio::sync::Mutex<()>>>>,
    /// Servers a check was asked for while one ran: check again after.
    again: Mutex<HashMap<i64, bool>>,
}

impl Prober {
    fn lock_of(&self, server_id: i64) -> Arc<tokio::sync::Mutex<()>> {
        self.locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(server_id)
            .or_default()
            .clone()
    }
}

/// What the gateway and an admin see: the last check and the diagnosis.
pub fn view(server: &store::Server) -> ReachabilityView {
    ReachabilityView {
        check: server.reachability.clone(),
        diagnosis: diagnose(
            server.network.as_ref().map(|n| &n.report),
            server.network.as_ref().map(|n| n.observed),
            server.reachability.as_ref(),
        ),
    }
}

/// Starts a check of `server_id` in the background; one asked for while
/// one runs makes it run once more afterwards (the endpoint may have
/// changed in between).
pub fn request(st: &Arc<AppState>, server_id: i64) {
    {
        let mut again = st.prober.again.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(flag) = again.get_mut(&server_id) {
            *flag = true;
            return;
        }
        again.insert(server_id, false);
    }
    let st = st.clone();
    tokio::spawn(async move {
        let mut unconfirmed = 0;
        loop {
            match check(&st, server_id).await {
                Err(e) => tracing::warn!(server_id, error = %e, "reachability check failed to run"),
                // The gateway did not confirm the one-off admission: it is
                // probably reconnecting its feed (a new external address
                // breaks its connection through the router). Try again a
                // few times rather than leave that as the last word.
                Ok(Some(r))
                    if r.reason == Some(UnreachableReason::GatewayDidNotConfirm)
                        && unconfirmed < UNCONFIRMED_RETRIES =>
                {
                    unconfirmed += 1;
                    tokio::time::sleep(UNCONFIRMED_WAIT).await;
                    continue;
                }
                Ok(_) => {}
            }
            let mut again = st.prober.again.lock().unwrap_or_else(|p| p.into_inner());
            if again.get(&server_id) == Some(&true) {
                again.insert(server_id, false);
                continue;
            }
            again.remove(&server_id);
            return;
        }
    });
}

/// Checks every server whose gateway holds its feed, every `interval`.
pub async fn periodic(st: Arc<AppState>, interval: Duration) {
    loop {
        tokio::time::sleep(interval).await;
        let servers = match st.db.tx(store::list_servers).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list servers for the reachability checks");
                continue;
            }
        };
        let now = Instant::now();
        for s in servers {
            let connected = st.live_feeds.get(s.id).is_some_and(|l| l.connected(now));
            if connected && s.endpoint.is_some() && s.network.is_some() {
                request(&st, s.id);
            }
        }
    }
}

/// Runs one check now and records its result. `Ok(None)`: nothing to
/// check (no gateway enrolled, or no endpoint yet).
pub async fn check(st: &Arc<AppState>, server_id: i64) -> store::Result<Option<Reachability>> {
    let lock = st.prober.lock_of(server_id);
    let _one_at_a_time = lock.lock().await;
    let server = st
        .db
        .tx(move |tx| store::server_by_id(tx, server_id))
        .await?;
    let (Some(endpoint), Some(gateway_key)) = (server.endpoint, server.gateway_key) else {
        return Ok(None);
    };
    let from = probe_source(st, &server, endpoint);
    let (result, probe_id) = match from {
        None => (
            finish(endpoint, None, Err(UnreachableReason::NoProbeAddress)),
            None,
        ),
        Some(from) => {
            let (r, id) = probe(st, &server, endpoint, gateway_key, from).await?;
            (r, Some(id))
        }
    };
    let check = result.clone();
    // The removal's version carries the result to the gateway (every
    // replica's live feeds hear of it at the commit); without a check admission
    // (nothing could be sent) it hears at its next answer.
    st.db
        .tx(move |tx| {
            store::set_reachability(tx, server_id, &check)?;
            if let Some(id) = &probe_id {
                store::end_probe(tx, server_id, id)?;
            }
            Ok(())
        })
        .await?;
    if result.reachable {
        tracing::info!(server = %server.name, "reachability check: {}", result.summary());
    } else {
        tracing::warn!(server = %server.name, "reachability check: {}", result.summary());
    }
    Ok(Some(result))
}

/// The address the check's datagrams leave from: the control plane's
/// address of the endpoint's family as the gateway reaches it, else a
/// configured `--probe-source` of that family.
fn probe_source(st: &AppState, server: &store::Server, endpoint: SocketAddr) -> Option<IpAddr> {
    let v4 = endpoint.ip().to_canonical().is_ipv4();
    let configured = st
        .settings
        .probe_sources
        .iter()
        .find(|a| a.is_ipv4() == v4)
        .copied();
    configured
        .or_else(|| {
            server.network.as_ref().and_then(|n| {
                n.report
                    .control_addresses
                    .iter()
                    .map(|a| a.to_canonical())
                    .find(|a| a.is_ipv4() == v4)
            })
        })
        .or_else(|| local_address_towards(endpoint))
}

/// The address this host's kernel sends from towards `endpoint` (a
/// connected UDP socket sends nothing): right for a control plane with
/// its own public address, before the gateway has said how it reaches it.
fn local_address_towards(endpoint: SocketAddr) -> Option<IpAddr> {
    let any: SocketAddr = if endpoint.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let s = std::net::UdpSocket::bind(any).ok()?;
    s.connect(endpoint).ok()?;
    let ip = s.local_addr().ok()?.ip();
    (!ip.is_unspecified() && !ip.is_loopback() || endpoint.ip().is_loopback()).then_some(ip)
}

fn finish(
    endpoint: SocketAddr,
    from: Option<IpAddr>,
    outcome: Result<Duration, UnreachableReason>,
) -> Reachability {
    Reachability {
        endpoint,
        reachable: outcome.is_ok(),
        reason: outcome.err(),
        from,
        rtt_ms: outcome.ok().map(|d| d.as_millis() as u64),
        checked_at: OffsetDateTime::now_utc(),
    }
}

async fn probe(
    st: &Arc<AppState>,
    server: &store::Server,
    endpoint: SocketAddr,
    gateway_key: WgKey,
    from: IpAddr,
) -> store::Result<(Reachability, String)> {
    let secret = StaticSecret::random_from_rng(rand::rngs::OsRng);
    let public = PublicKey::from(&secret);
    let admission = FeedAdmission {
        id: crate::auth::random_id("probe_"),
        mode: AccessMode::Tunnel,
        client_public_key: Some(WgKey(public.to_bytes())),
        preshared_key: None,
        source: from,
        binding: BindingPolicy::Exact,
        client_address: Some(PROBE_TUNNEL_ADDRESS),
        services: Vec::new(),
        expires_at: OffsetDateTime::now_utc() + PROBE_LIFETIME,
    };
    let server_id = server.id;
    let id = admission.id.clone();
    // Another replica may be checking this server: its admission ends
    // (removed, or at its deadline) within PROBE_LIFETIME.
    let version = loop {
        let a = admission.clone();
        let taken = st
            .db
            .tx(move |tx| store::begin_probe(tx, server_id, &a, OffsetDateTime::now_utc()))
            .await?;
        if let Some(v) = taken {
            break v;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let live = st.live_feeds.server(server_id, version);
    if !live.wait_ack(version, st.settings.ack_timeout).await {
        return Ok((
            finish(
                endpoint,
                Some(from),
                Err(UnreachableReason::GatewayDidNotConfirm),
            ),
            id,
        ));
    }
    let outcome = handshake(secret, gateway_key, from, endpoint).await;
    Ok((finish(endpoint, Some(from), outcome), id))
}

/// One WireGuard handshake from `from` to `endpoint`: the time to its
/// answer.
async fn handshake(
    secret: StaticSecret,
    gateway_key: WgKey,
    from: IpAddr,
    endpoint: SocketAddr,
) -> Result<Duration, UnreachableReason> {
    // Bound to the address the admission names when it is this host's
    // (otherwise, behind a 1:1 NAT, the kernel's choice leaves through it).
    let socket = match tokio::net::UdpSocket::bind(SocketAddr::new(from, 0)).await {
        Ok(s) => s,
        Err(_) => {
            let any: IpAddr = if endpoint.is_ipv4() {
                Ipv4Addr::UNSPECIFIED.into()
            } else {
                std::net::Ipv6Addr::UNSPECIFIED.into()
            };
            tokio::net::UdpSocket::bind(SocketAddr::new(any, 0))
                .await
                .map_err(|_| UnreachableReason::SendFailed)?
        }
    };
    let mut tunn = Tunn::new(
        secret,
        PublicKey::from(gateway_key.0),
        None,
        None,
        rand::random::<u32>() & 0x00ff_ffff,
        None,
    );
    let mut out = vec![0u8; 2048];
    let mut inbuf = vec![0u8; 2048];
    let started = Instant::now();
    for attempt in 0..ATTEMPTS {
        let init = match tunn.format_handshake_initiation(&mut out, attempt > 0) {
            TunnResult::WriteToNetwork(p) => p.to_vec(),
            _ => return Err(UnreachableReason::SendFailed),
        };
        socket
            .send_to(&init, endpoint)
            .await
            .map_err(|_| UnreachableReason::SendFailed)?;
        let deadline = tokio::time::Instant::now() + ANSWER_WAIT;
        while let Ok(Ok((n, src))) =
            tokio::time::timeout_at(deadline, socket.recv_from(&mut inbuf)).await
        {
            if src.ip().to_canonical() != endpoint.ip().to_canonical() {
                continue;
            }
            let _ = tunn.decapsulate(Some(src.ip()), &inbuf[..n], &mut out);
            if tunn.time_since_last_handshake().is_some() {
                return Ok(started.elapsed());
            }
        }
    }
    Err(UnreachableReason::NoAnswer)
}
