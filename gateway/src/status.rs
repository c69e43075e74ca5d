//! What `hushgate gateway status` shows, and the Unix socket that answers
//! it: the data path's counters (asked over its command channel), the
//! feed's health (what the follower last reported), the pre-filter, the
//! direct proxy, the upstreams and the port mapping.

use crate::datapath::{Command, DataPathCommands};
use crate::direct::{DirectProxy, DirectStatus};
use crate::dispatch::GatewayStats;
use crate::filter::{Filter, FilterStatus};
use crate::health::{ServiceHealth, UpstreamHealth};
use proto::WgKey;
use serde::Serialize;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch};

/// What `hushgate gateway status` shows.
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    pub server: Option<String>,
    pub public_key: WgKey,
    pub udp: SocketAddr,
    pub control_url: String,
    /// Whether the last feed request succeeded.
    pub control_connected: bool,
    pub last_control_error: Option<String>,
    pub acked_version: u64,
    pub gateway: GatewayStats,
    /// The kernel pre-filter, when it is in place.
    pub prefilter: Option<FilterStatus>,
    pub direct: Option<DirectStatus>,
    /// Every service (tunnel and direct) and whether its upstream answers.
    pub services: Vec<ServiceHealth>,
    pub uptime_secs: u64,
    /// The gateway's version (`hushgate --version`).
    pub version: String,
    /// The port mapping on the home router.
    pub port_mapping: proto::reach::MappingReport,
    /// The control plane's last reachability check and its diagnosis.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reachability: Option<proto::reach::ReachabilityView>,
}

/// The feed's health as the follower last reported it.
#[derive(Debug, Default)]
pub(crate) struct FeedHealth {
    pub server: Option<String>,
    pub connected: bool,
    pub last_error: Option<String>,
    pub acked: u64,
    /// When a feed answer was last acknowledged (the metrics' feed lag).
    pub acked_at: Option<Instant>,
    pub reachability: Option<proto::reach::ReachabilityView>,
}

/// Where a status report comes from.
#[derive(Debug, Clone)]
pub(crate) struct StatusSources {
    pub commands: DataPathCommands,
    pub health: Arc<Mutex<FeedHealth>>,
    pub public_key: WgKey,
    pub udp: SocketAddr,
    pub url: String,
    pub filter: Option<Arc<Mutex<Filter>>>,
    pub direct: Option<Arc<DirectProxy>>,
    pub upstreams: Arc<Mutex<UpstreamHealth>>,
    pub started: Instant,
    pub portmap: Option<watch::Receiver<proto::reach::MappingReport>>,
}

pub(crate) async fn status_of(src: &StatusSources) -> Option<StatusReport> {
    let (tx, rx) = oneshot::channel();
    if !src.commands.send(Command::Stats(tx)) {
        return None;
    }
    let gateway = tokio::time::timeout(Duration::from_secs(2), rx)
        .await
        .ok()?
        .ok()?;
    let prefilter = src
        .filter
        .as_ref()
        .map(|f| f.lock().unwrap_or_else(|p| p.into_inner()).status());
    let h = src.health.lock().unwrap_or_else(|p| p.into_inner());
    Some(StatusReport {
        server: h.server.clone(),
        public_key: src.public_key,
        udp: src.udp,
        control_url: src.url.clone(),
        control_connected: h.connected,
        last_control_error: h.last_error.clone(),
        acked_version: h.acked,
        gateway,
        prefilter,
        direct: src.direct.as_ref().map(|d| d.status()),
        services: src
            .upstreams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .snapshot(Instant::now()),
        uptime_secs: src.started.elapsed().as_secs(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        port_mapping: src
            .portmap
            .as_ref()
            .map(|p| p.borrow().clone())
            .unwrap_or_else(proto::reach::MappingReport::off),
        reachability: h.reachability.clone(),
    })
}

/// A Unix socket at `path` (0600) that answers each connection with the
/// status as JSON: `hushgate gateway status`.
pub(crate) fn serve(
    path: &Path,
    sources: StatusSources,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::remove_file(path);
    let listener = tokio::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            use tokio::io::AsyncWriteExt;
            let report = status_of(&sources).await;
            let body = serde_json::to_vec_pretty(&report).unwrap_or_default();
            let _ = conn.write_all(&body).await;
            let _ = conn.shutdown().await;
        }
    }))
}
