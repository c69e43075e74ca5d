//! The runnable gateway: enrollment, the feed from the control plane, the
//! data-path thread and the local status socket, put together.
//!
//! The async side (tokio) only talks HTTPS to the control plane and
//! answers status requests; every packet is handled on the data-path
//! thread (`datapath`). They meet through a channel: the feed follower
//! keeps its copy of the desired set current from the feed's diffs
//! (`feed::DesiredSet`), applies each answer (whole, or as a diff) to the
//! kernel pre-filter, the direct proxy and the data path, waits until it
//! is applied, and only then acknowledges the version to the control
//! plane.

use crate::datapath::{Control, ControlTx, DataPath};
use crate::direct::{DirectProxy, DirectStatus};
use crate::dispatch::{Dispatcher, DispatcherConfig, GatewayStats};
use crate::feed::{self, Absorbed, DesiredSet};
use crate::filter::{Filter, FilterStatus, NftError, PrefilterMode};
use crate::health::{ServiceHealth, UpstreamHealth, CHECK_INTERVAL, CHECK_TIMEOUT};
use crate::identity::{Identity, IdentityError};
use control_client::{ClientError, ControlClient, Trust};
use netstack::udp::UdpIo;
use proto::api::ServiceInfo;
use proto::feed::{EnrollRequest, GatewayReport};
use proto::WgKey;
use rand::Rng;
use serde::Serialize;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch};

/// One service the gateway offers inside the tunnel:
/// `NAME=PORT:UPSTREAM`, e.g. `plex=32400:127.0.0.1:32400`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    pub name: String,
    /// The port clients connect to at the service address.
    pub port: u16,
    /// Where the gateway forwards those connections.
    pub upstream: SocketAddr,
}

impl FromStr for ServiceSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let usage = || {
            format!(
                "'{s}' is not a service: use NAME=PORT:UPSTREAM, e.g. plex=32400:127.0.0.1:32400"
            )
        };
        let (name, rest) = s.split_once('=').ok_or_else(usage)?;
        let (port, upstream) = rest.split_once(':').ok_or_else(usage)?;
        let port: u16 = port.parse().map_err(|_| usage())?;
        let upstream: SocketAddr = upstream.parse().map_err(|_| {
            format!("'{upstream}' is not an address: the upstream is IP:PORT, e.g. 127.0.0.1:32400 or [::1]:8096")
        })?;
        if name.is_empty() || name.len() > 64 || port == 0 {
            return Err(usage());
        }
        // What the control plane takes as a name (it reaches clients'
        // configurations and pages).
        if !proto::is_name(name) {
            return Err(format!(
                "service name '{name}' must be letters, digits, '-', '_', '.' or '@'"
            ));
        }
        Ok(ServiceSpec {
            name: name.to_string(),
            port,
            upstream,
        })
    }
}

/// Everything `hushgate gateway` is told.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub control_url: String,
    pub trust: Trust,
    pub state_dir: PathBuf,
    pub listen_udp: SocketAddr,
    /// The address clients use; default: what the control plane sees of
    /// the gateway, with the UDP port.
    pub public_endpoint: Option<SocketAddr>,
    pub services: Vec<ServiceSpec>,
    /// Direct (firewall-only) services: `NAME=PUBLIC_PORT:UPSTREAM`, the
    /// TCP port opened to direct admissions' sources. Needs the pre-filter.
    pub direct: Vec<ServiceSpec>,
    /// What each client may hold in the user-space TCP stack.
    pub peer_limits: crate::limits::PeerLimits,
    /// Whether to keep the kernel pre-filter (nftables).
    pub prefilter: PrefilterMode,
    /// Where the one-time enrollment token comes from. Read on the first
    /// start only: once the state folder holds a credential it is
    /// ignored, so its file may be removed after enrolling.
    pub enroll_token: Option<EnrollToken>,
    /// Automatic port mapping on the home router (issue 17).
    pub port_mapping: crate::portmap::PortMapConfig,
}

/// Where a gateway finds its one-time enrollment token.
#[derive(Clone)]
pub enum EnrollToken {
    /// The token itself (from the environment or standard input).
    Given(String),
    /// A file holding it, read only when the token is needed: e.g.
    /// `$CREDENTIALS_DIRECTORY/enroll-token` under systemd, or a file the
    /// operator deletes once the gateway has enrolled.
    File(PathBuf),
}

impl EnrollToken {
    fn read(&self) -> Result<String, GatewayError> {
        let token = match self {
            EnrollToken::Given(t) => t.trim().to_string(),
            EnrollToken::File(path) => std::fs::read_to_string(path)
                .map_err(|e| {
                    GatewayError::Config(format!(
                        "this gateway is not enrolled yet and its enrollment token cannot be read from {}: {e}",
                        path.display()
                    ))
                })?
                .trim()
                .to_string(),
        };
        if token.is_empty() {
            return Err(GatewayError::Config(format!(
                "the enrollment token {} is empty: give the token 'hushgate admin server add' printed",
                match self {
                    EnrollToken::Given(_) => "given".to_string(),
                    EnrollToken::File(p) => format!("in {}", p.display()),
                }
            )));
        }
        Ok(token)
    }
}

impl From<String> for EnrollToken {
    fn from(token: String) -> Self {
        EnrollToken::Given(token)
    }
}

/// Never shows the token itself: configurations end up in logs.
impl std::fmt::Debug for EnrollToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EnrollToken::Given(_) => f.write_str("EnrollToken::Given(..)"),
            EnrollToken::File(p) => f.debug_tuple("EnrollToken::File").field(p).finish(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    StateLocked(#[from] statelock::LockError),
    #[error("cannot listen on UDP {addr}: {source}; is another gateway running there?")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("enrollment failed: {0}")]
    Enroll(ClientError),
    #[error("the control plane refused this gateway's credential ({0}); it was revoked or replaced, or the server removed: get a new token with 'hushgate admin server reenroll NAME' on the control plane and start the gateway with it (HUSHGATE_ENROLL_TOKEN or --enroll-file); {1} is replaced when it is used")]
    CredentialRefused(ClientError, PathBuf),
    #[error("cannot reach the control plane: {0}")]
    Control(ClientError),
    #[error("cannot start the data path: {0}")]
    DataPath(std::io::Error),
    #[error("the kernel pre-filter is required but cannot be set up: {0}")]
    Prefilter(crate::filter::NftError),
    #[error("direct services need the kernel pre-filter, which cannot be set up ({0}); without it their port would be open to everyone")]
    DirectNeedsPrefilter(String),
    #[error("cannot start the direct services: {0}")]
    Direct(std::io::Error),
}

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

#[derive(Debug, Default)]
struct FeedHealth {
    server: Option<String>,
    connected: bool,
    last_error: Option<String>,
    acked: u64,
    /// When a feed answer was last acknowledged (the metrics' feed lag).
    acked_at: Option<Instant>,
    reachability: Option<proto::reach::ReachabilityView>,
}

/// A running gateway. Dropping it without `shutdown` leaves the data path
/// running until the process exits.
#[derive(Debug)]
pub struct Gateway {
    udp: SocketAddr,
    public_key: WgKey,
    control_url: String,
    control: ControlTx,
    health: Arc<Mutex<FeedHealth>>,
    synced: watch::Receiver<u64>,
    filter: Option<Arc<Mutex<Filter>>>,
    direct: Option<Arc<DirectProxy>>,
    feed: tokio::task::JoinHandle<()>,
    pins: Option<tokio::task::JoinHandle<()>>,
    upstreams: Arc<Mutex<UpstreamHealth>>,
    upstream_checks: tokio::task::JoinHandle<()>,
    started: Instant,
    status: Option<tokio::task::JoinHandle<()>>,
    thread: Option<std::thread::JoinHandle<std::io::Result<()>>>,
    status_path: PathBuf,
    feed_metrics: Arc<crate::metrics::FeedMetrics>,
    /// Tunnel services (port, name), to name the data path's per-port
    /// counters in the metrics.
    service_names: Vec<(u16, String)>,
    /// Port mapping and endpoint reports (issue 17).
    portmap: Option<crate::portmap::PortMap>,
    /// The state folder, this gateway's while it lives.
    _lock: statelock::StateLock,
}

impl Gateway {
    /// Binds the UDP port, enrolls (first start) or reports to the control
    /// plane, and starts the data path and the feed follower.
    pub async fn start(cfg: GatewayConfig) -> Result<Gateway, GatewayError> {
        if cfg.services.is_empty() {
            return Err(GatewayError::Config(
                "no services: give at least one --service NAME=PORT:UPSTREAM".into(),
            ));
        }
        cfg.peer_limits
            .check(&netstack::StackConfig::new(
                std::net::Ipv4Addr::UNSPECIFIED.into(),
            ))
            .map_err(GatewayError::Config)?;
        let mut ports = HashMap::new();
        for s in &cfg.services {
            if ports.insert(s.port, s.upstream).is_some() {
                return Err(GatewayError::Config(format!(
                    "two services use port {} inside the tunnel",
                    s.port
                )));
            }
        }
        let mut public_ports = HashMap::new();
        for s in &cfg.direct {
            if public_ports.insert(s.port, &s.name).is_some() {
                return Err(GatewayError::Config(format!(
                    "two direct services use TCP port {}",
                    s.port
                )));
            }
            if cfg.services.iter().all(|t| t.name != s.name)
                && cfg.direct.iter().filter(|d| d.name == s.name).count() > 1
            {
                return Err(GatewayError::Config(format!(
                    "two direct services are named '{}'",
                    s.name
                )));
            }
        }
        for d in &cfg.direct {
            let clash = cfg.services.iter().chain(&cfg.direct).find(|u| {
                u.upstream.port() == d.port
                    && (u.upstream.ip().is_loopback() || u.upstream.ip().is_unspecified())
            });
            if let Some(u) = clash {
                return Err(GatewayError::Config(format!(
                    "direct service '{}' would take TCP port {} on this host, where upstream {} listens; give it another public port (e.g. {}={}:{})",
                    d.name,
                    d.port,
                    u.upstream,
                    d.name,
                    d.port.wrapping_add(1).max(1),
                    d.upstream
                )));
            }
        }
        if !cfg.direct.is_empty() && cfg.prefilter == PrefilterMode::Off {
            return Err(GatewayError::DirectNeedsPrefilter(
                "--prefilter off was given".into(),
            ));
        }
        // First of all: a second gateway on this folder would share the
        // key and credential and fight this one over the feed and the
        // pre-filter.
        let lock = statelock::StateLock::acquire(&cfg.state_dir, "a hushgate gateway")?;
        let mut identity = Identity::load_or_create(&cfg.state_dir)?;
        let udp = UdpIo::bind(cfg.listen_udp).map_err(|source| GatewayError::Bind {
            addr: cfg.listen_udp,
            source,
        })?;
        let udp_addr = udp.local_addr().map_err(GatewayError::DataPath)?;
        let direct_ports: HashMap<String, u16> = cfg
            .direct
            .iter()
            .map(|s| (s.name.clone(), s.port))
            .collect();
        let marker = cfg.state_dir.join("prefilter-table");
        let filter = match cfg.prefilter {
            PrefilterMode::Off => {
                stale_table(&marker, udp_addr.port(), None)?;
                None
            }
            mode => match Filter::install(
                udp_addr.port(),
                direct_ports,
                crate::admission::DEFAULT_PINNING_WINDOW,
            ) {
                Ok(f) => {
                    tracing::info!(table = f.table(), "kernel pre-filter in place: datagrams from sources without an admission are dropped before they reach the gateway");
                    // Remembered, so that a later run without the
                    // pre-filter notices the table it would leave behind.
                    if let Err(e) = std::fs::write(&marker, f.table()) {
                        tracing::warn!(error = %e, path = %marker.display(), "cannot note the pre-filter's table in the state folder");
                    }
                    Some(Arc::new(Mutex::new(f)))
                }
                Err(e) if mode == PrefilterMode::Required => {
                    return Err(GatewayError::Prefilter(e))
                }
                Err(e) if !cfg.direct.is_empty() => {
                    return Err(GatewayError::DirectNeedsPrefilter(e.to_string()))
                }
                Err(e) => {
                    stale_table(&marker, udp_addr.port(), Some(&e))?;
                    tracing::warn!(error = %e, "no kernel pre-filter: running with the user-space filter alone (unknown sources still get no answer, but each datagram wakes the gateway); use --prefilter required to refuse to start instead");
                    None
                }
            },
        };
        // The upstreams are checked now, so a dead media server is in the
        // log from the start, and then every CHECK_INTERVAL.
        let mut book = UpstreamHealth::default();
        for s in &cfg.services {
            book.watch(&s.name, "tunnel", s.port, s.upstream);
        }
        for s in &cfg.direct {
            book.watch(&s.name, "direct", s.port, s.upstream);
        }
        let upstreams = Arc::new(Mutex::new(book));
        check_upstreams(&upstreams).await;
        let upstream_checks = {
            let book = upstreams.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(CHECK_INTERVAL).await;
                    check_upstreams(&book).await;
                }
            })
        };
        let direct = if cfg.direct.is_empty() {
            None
        } else {
            Some(Arc::new(
                DirectProxy::start(&cfg.direct)
                    .await
                    .map_err(GatewayError::Direct)?,
            ))
        };
        let client = ControlClient::new(&cfg.control_url, cfg.trust.clone())
            .map_err(GatewayError::Control)?;
        let report = GatewayReport {
            public_key: identity.public,
            public_endpoint: cfg.public_endpoint,
            listen_port: udp_addr.port(),
            services: cfg
                .services
                .iter()
                .map(|s| ServiceInfo {
                    name: s.name.clone(),
                    port: s.port,
                })
                .collect(),
            direct_services: cfg
                .direct
                .iter()
                .map(|s| ServiceInfo {
                    name: s.name.clone(),
                    port: s.port,
                })
                .collect(),
            network: None,
        };
        let mut server = None;
        let refused = match identity.credential.clone() {
            Some(c) => match client.with_bearer(&c).report(&report).await {
                Ok(()) => {
                    if cfg.enroll_token.is_some() {
                        // Enrolled on an earlier start: the token was spent
                        // then, and its file may well be gone now.
                        tracing::info!(
                            credential = %identity.credential_path().display(),
                            "already enrolled; the enrollment token setting is ignored (it may be removed)"
                        );
                    }
                    Ok(c)
                }
                // Revoked or replaced on the control plane. A readable
                // enrollment token given now is the operator's answer to
                // that ('hushgate admin server reenroll'); without one, say
                // so.
                Err(e) if e.status() == Some(401) => {
                    match cfg.enroll_token.as_ref().map(EnrollToken::read) {
                        Some(Ok(token)) => {
                            tracing::warn!(error = %e, "the control plane refused this gateway's credential; enrolling again with the enrollment token given");
                            Err(token)
                        }
                        _ => {
                            return Err(GatewayError::CredentialRefused(
                                e,
                                identity.credential_path(),
                            ))
                        }
                    }
                }
                Err(e) => return Err(GatewayError::Control(e)),
            },
            None => Err(cfg
                .enroll_token
                .as_ref()
                .ok_or_else(|| {
                    GatewayError::Config(format!(
                        "this gateway is not enrolled yet ({} has no credential): give the enrollment token from 'hushgate admin server add' in HUSHGATE_ENROLL_TOKEN, with --enroll-file, or as the systemd credential 'enroll-token'",
                        cfg.state_dir.display()
                    ))
                })?
                .read()?),
        };
        let credential = match refused {
            Ok(c) => c,
            Err(token) => {
                let resp = client
                    .enroll(&EnrollRequest {
                        enrollment_token: token,
                        report: report.clone(),
                    })
                    .await
                    .map_err(GatewayError::Enroll)?;
                identity.save_credential(&resp.credential)?;
                tracing::info!(server = %resp.server, "enrolled with the control plane");
                server = Some(resp.server);
                resp.credential
            }
        };

        let dispatcher = Dispatcher::new(
            identity.secret.clone(),
            DispatcherConfig::new(cfg.services.iter().map(|s| (s.name.clone(), s.port))),
            Instant::now(),
        );
        let (mut dp, control) =
            DataPath::new(udp, dispatcher, ports).map_err(GatewayError::DataPath)?;
        dp.set_peer_limits(cfg.peer_limits);
        let pins = filter.as_ref().map(|filter| {
            // Pinnings arrive on the data-path thread; the kernel update
            // happens here, off that thread.
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, std::net::IpAddr)>();
            dp.on_pinned(Box::new(move |id, source| {
                let _ = tx.send((id, source));
            }));
            let filter = filter.clone();
            tokio::spawn(async move {
                while let Some((id, source)) = rx.recv().await {
                    // A pinned client must be admitted before its open
                    // window closes; a failed update is tried again a few
                    // times rather than waiting for the next feed answer.
                    for attempt in 1..=5 {
                        let f = filter.clone();
                        let pinned = id.clone();
                        let result = tokio::task::spawn_blocking(move || {
                            f.lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .pin(&pinned, source)
                        })
                        .await;
                        match result {
                            Ok(Ok(true)) => {
                                tracing::info!(admission = %id, %source, "pre-filter admits the pinned source");
                                break;
                            }
                            Ok(Ok(false)) => break,
                            Ok(Err(e)) => tracing::error!(admission = %id, %source, attempt, error = %e, "pre-filter could not admit the pinned source"),
                            Err(e) => tracing::error!(admission = %id, attempt, error = %e, "pre-filter pin task failed"),
                        }
                        tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
                    }
                }
            })
        });
        let thread = std::thread::Builder::new()
            .name("hushgate-datapath".into())
            .spawn(move || dp.run())
            .map_err(GatewayError::DataPath)?;

        let health = Arc::new(Mutex::new(FeedHealth {
            server,
            ..Default::default()
        }));
        let (synced_tx, synced) = watch::channel(0u64);
        let feed_metrics = Arc::new(crate::metrics::FeedMetrics::default());
        let feed = tokio::spawn(follow_feed(
            client.with_bearer(&credential),
            Appliers {
                control: control.clone(),
                filter: filter.clone(),
                direct: direct.clone(),
            },
            health.clone(),
            synced_tx,
            feed_metrics.clone(),
        ));
        // ---- issue 17: port mapping; re-reports the endpoint when it changes.
        // A gateway listening on loopback only cannot be reached through
        // any router, so asking the host's router to forward its port
        // would only disturb a real router (tests and the demo run so).
        let mut mapping = cfg.port_mapping.clone();
        if udp_addr.ip().is_loopback() && mapping.mode == crate::portmap::PortMappingMode::Auto {
            tracing::info!("listening on loopback only: no port mapping on the router");
            mapping.mode = crate::portmap::PortMappingMode::Off;
        }
        let portmap = crate::portmap::PortMap::start(
            &mapping,
            udp_addr.port(),
            &cfg.direct.iter().map(|d| d.port).collect::<Vec<_>>(),
            crate::portmap::Reporting {
                client: client.with_bearer(&credential),
                base: report.clone(),
                configured: cfg.public_endpoint,
                control_url: cfg.control_url.clone(),
            },
        );
        // ---- end issue 17
        let mut gw = Gateway {
            udp: udp_addr,
            public_key: identity.public,
            control_url: cfg.control_url.clone(),
            control,
            health,
            synced,
            filter,
            direct,
            feed,
            pins,
            upstreams,
            upstream_checks,
            started: Instant::now(),
            status: None,
            thread: Some(thread),
            status_path: cfg.state_dir.join("status.sock"),
            feed_metrics,
            service_names: cfg
                .services
                .iter()
                .map(|s| (s.port, s.name.clone()))
                .collect(),
            portmap: Some(portmap),
            _lock: lock,
        };
        gw.status = Some(gw.serve_status()?);
        Ok(gw)
    }

    pub fn udp_addr(&self) -> SocketAddr {
        self.udp
    }

    pub fn public_key(&self) -> WgKey {
        self.public_key
    }

    /// Waits until the first desired state from the control plane is
    /// applied and acknowledged.
    pub async fn wait_synced(&self, timeout: Duration) -> bool {
        let mut rx = self.synced.clone();
        tokio::time::timeout(timeout, rx.wait_for(|v| *v > 0))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    pub async fn status(&self) -> Option<StatusReport> {
        status_of(&self.status_sources()).await
    }

    /// The metrics in the Prometheus text format (see [`crate::metrics`]);
    /// None when the data path does not answer.
    pub async fn metrics_text(&self) -> Option<String> {
        let report = self.status().await?;
        let prefilter_drops = match &report.prefilter {
            Some(_) => {
                let port = self.udp.port();
                tokio::task::spawn_blocking(move || crate::filter::drop_counts(port))
                    .await
                    .ok()
                    .and_then(|r| r.map_err(|e| tracing::debug!(error = %e, "cannot read the pre-filter's counters")).ok())
            }
            None => None,
        };
        let feed_lag_secs = self
            .health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .acked_at
            .map(|t| t.elapsed().as_secs_f64());
        Some(crate::metrics::render(
            &self.feed_metrics,
            crate::metrics::Scrape {
                report,
                prefilter_drops,
                feed_lag_secs,
                service_names: self.service_names.clone(),
            },
        ))
    }

    /// Checks every upstream now (as the periodic check does), logging
    /// what changed; `status` then shows the result.
    pub async fn check_upstreams(&self) {
        check_upstreams(&self.upstreams).await;
    }

    /// Stops the feed, closes every spliced connection and ends the data
    /// path thread.
    /// The kernel pre-filter's table, when it is in place.
    pub fn prefilter_table(&self) -> Option<String> {
        self.filter.as_ref().map(|f| {
            f.lock()
                .unwrap_or_else(|p| p.into_inner())
                .table()
                .to_string()
        })
    }

    /// Stops the feed, closes every spliced connection and ends the data
    /// path thread. The pre-filter's table stays: the port stays dark.
    pub async fn shutdown(mut self) {
        if let Some(p) = self.portmap.take() {
            p.shutdown().await;
        }
        self.feed.abort();
        self.upstream_checks.abort();
        if let Some(p) = self.pins.take() {
            p.abort();
        }
        if let Some(d) = &self.direct {
            d.shutdown();
        }
        if let Some(f) = self.filter.clone() {
            let _ = tokio::task::spawn_blocking(move || {
                if let Err(e) = f.lock().unwrap_or_else(|p| p.into_inner()).close_open() {
                    tracing::warn!(error = %e, "could not close the pre-filter's open port");
                }
            })
            .await;
        }
        if let Some(s) = self.status.take() {
            s.abort();
        }
        let _ = std::fs::remove_file(&self.status_path);
        self.control.send(Control::Shutdown);
        if let Some(t) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }

    /// A Unix socket in the state folder (0600) that answers each
    /// connection with the status as JSON: `hushgate gateway status`.
    fn serve_status(&self) -> Result<tokio::task::JoinHandle<()>, GatewayError> {
        use std::os::unix::fs::PermissionsExt;
        let path = self.status_path.clone();
        let _ = std::fs::remove_file(&path);
        let listener = tokio::net::UnixListener::bind(&path).map_err(GatewayError::DataPath)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(GatewayError::DataPath)?;
        let sources = self.status_sources();
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

    fn status_sources(&self) -> StatusSources {
        StatusSources {
            control: self.control.clone(),
            health: self.health.clone(),
            public_key: self.public_key,
            udp: self.udp,
            url: self.control_url.clone(),
            filter: self.filter.clone(),
            direct: self.direct.clone(),
            upstreams: self.upstreams.clone(),
            started: self.started,
            portmap: self.portmap.as_ref().map(|p| p.status()),
        }
    }
}

/// One round of upstream checks, all at once: a TCP connect each, closed
/// at once, bounded by CHECK_TIMEOUT. Each change is logged once.
async fn check_upstreams(book: &Mutex<UpstreamHealth>) {
    let targets = book.lock().unwrap_or_else(|p| p.into_inner()).upstreams();
    let mut checks = tokio::task::JoinSet::new();
    for (i, upstream) in targets.into_iter().enumerate() {
        checks.spawn(async move {
            let outcome =
                match tokio::time::timeout(CHECK_TIMEOUT, tokio::net::TcpStream::connect(upstream))
                    .await
                {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err(format!("no answer within {} s", CHECK_TIMEOUT.as_secs())),
                };
            (i, outcome)
        });
    }
    while let Some(Ok((i, outcome))) = checks.join_next().await {
        let change =
            book.lock()
                .unwrap_or_else(|p| p.into_inner())
                .record(i, outcome, Instant::now());
        let Some(c) = change else { continue };
        match (&c.was, &c.now) {
            (_, crate::health::Health::Down(error)) => tracing::warn!(
                service = %c.name,
                kind = c.kind,
                upstream = %c.upstream,
                %error,
                "the service's upstream does not answer: clients get in, but their connections to it fail; is the media server running?"
            ),
            (crate::health::Health::Down(_), _) => tracing::info!(
                service = %c.name,
                kind = c.kind,
                upstream = %c.upstream,
                "the service's upstream answers again"
            ),
            _ => {
                tracing::debug!(service = %c.name, upstream = %c.upstream, "the service's upstream answers")
            }
        }
    }
}

/// Where a status report comes from.
#[derive(Debug, Clone)]
struct StatusSources {
    control: ControlTx,
    health: Arc<Mutex<FeedHealth>>,
    public_key: WgKey,
    udp: SocketAddr,
    url: String,
    filter: Option<Arc<Mutex<Filter>>>,
    direct: Option<Arc<DirectProxy>>,
    upstreams: Arc<Mutex<UpstreamHealth>>,
    started: Instant,
    portmap: Option<watch::Receiver<proto::reach::MappingReport>>,
}

async fn status_of(src: &StatusSources) -> Option<StatusReport> {
    let (tx, rx) = oneshot::channel();
    if !src.control.send(Control::Stats(tx)) {
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

/// Refuses to run without the pre-filter while a table an earlier run of
/// this gateway installed is still there: it would drop every client this
/// run admits. `why` is why this run has no pre-filter (None: `off`).
fn stale_table(
    marker: &std::path::Path,
    port: u16,
    why: Option<&crate::filter::NftError>,
) -> Result<(), GatewayError> {
    if !marker.exists() {
        return Ok(());
    }
    let table = crate::filter::table_name(port);
    match crate::filter::tables() {
        Ok(tables) if !tables.contains(&table) => {
            let _ = std::fs::remove_file(marker);
            Ok(())
        }
        Ok(_) => Err(GatewayError::Config(format!(
            "the pre-filter table inet {table} from an earlier run is still in place and would drop every client this run admits{}; remove it with 'hushgate gateway filter remove --port {port}' (as root), or run with the pre-filter",
            why.map(|e| format!(" (this run has no pre-filter: {e})")).unwrap_or_default()
        ))),
        Err(e) => Err(GatewayError::Config(format!(
            "an earlier run of this gateway installed the pre-filter table inet {table}, and this run cannot check whether it is still there ({e}); if it is, it drops every client this run admits: remove it with 'hushgate gateway filter remove --port {port}' as root and then delete {}, or give the gateway CAP_NET_ADMIN",
            marker.display()
        ))),
    }
}

/// Everything a feed version is applied to.
#[derive(Debug)]
struct Appliers {
    control: ControlTx,
    filter: Option<Arc<Mutex<Filter>>>,
    direct: Option<Arc<DirectProxy>>,
}

/// The longest wait between two attempts to reach the control plane's
/// feed (before jitter of 0.5x to 1.5x). While the gateway is away from
/// the feed nobody can be admitted (the control plane answers "gateway
/// offline"), so after a control plane restart every client waiting for
/// an admission waits for this retry too; one request every couple of
/// seconds from one gateway costs the control plane nothing.
const FEED_RETRY_MAX: Duration = Duration::from_secs(2);

/// Follows the control plane's feed for ever: take in each answer (a diff
/// or the whole set), apply it (a diff as a diff) to the pre-filter, the
/// direct proxy and the data path, then acknowledge it. On errors it retries with exponential backoff and
/// jitter; meanwhile the data path keeps enforcing what it has until each
/// admission expires (fail-static), and nothing new can be admitted
/// (fail-closed).
async fn follow_feed(
    client: ControlClient,
    appliers: Appliers,
    health: Arc<Mutex<FeedHealth>>,
    synced: watch::Sender<u64>,
    metrics: Arc<crate::metrics::FeedMetrics>,
) {
    let Appliers {
        control,
        filter,
        direct,
    } = appliers;
    let mut desired = DesiredSet::new();
    // Whether the control plane offers diffs (one that predates them
    // refuses the `diff` parameter with 400).
    let mut diffs = true;
    let mut backoff = Duration::from_millis(100);
    // Whether the pre-filter holds the version the mirror holds, so that
    // the next diff can be applied to it as a diff.
    let mut filter_synced = false;
    loop {
        let after = desired.next_after(Instant::now());
        match feed::fetch(&client, after, Duration::from_secs(25), diffs).await {
            Ok(update) => {
                backoff = Duration::from_millis(100);
                let received = Instant::now();
                let reachability = update.reachability.clone(); // issue 17
                                                                // A diff goes to the pre-filter, the direct proxy and the
                                                                // data path as a diff: applying it then costs what the
                                                                // change costs, not what the whole set does.
                let absorbed = match desired.absorb_update(update, received) {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::info!(error = %e, "feed diff does not fit");
                        continue;
                    }
                };
                let (version, server) = match &absorbed {
                    Absorbed::Whole(state) => (state.version, state.server.clone()),
                    Absorbed::Diff { header, .. } => (header.version, header.server.clone()),
                };
                let kind = match &absorbed {
                    Absorbed::Whole(_) => "whole",
                    Absorbed::Diff { .. } => "diff",
                };
                metrics.updates.get_or_create(&vec![("kind", kind)]).inc();
                // The kernel first: a version is acknowledged only once
                // its sources (tunnel and direct) are admitted there. The
                // netlink and `nft` calls block, so they run off the async
                // workers. A pre-filter that missed a version takes the
                // whole set next (see `refetch` below), never a diff.
                let mut kernel_ok = true;
                if let Some(filter) = &filter {
                    let f = filter.clone();
                    let job = match &absorbed {
                        Absorbed::Diff {
                            header,
                            changed,
                            removed,
                        } if filter_synced => Absorbed::Diff {
                            header: header.clone(),
                            changed: changed.clone(),
                            removed: removed.clone(),
                        },
                        Absorbed::Diff { .. } => Absorbed::Whole(
                            desired
                                .mirror()
                                .state()
                                .expect("a mirror that took a diff has a state"),
                        ),
                        Absorbed::Whole(state) => Absorbed::Whole(state.clone()),
                    };
                    let result = tokio::task::spawn_blocking(move || {
                        let mut f = f.lock().unwrap_or_else(|p| p.into_inner());
                        match job {
                            Absorbed::Diff {
                                header,
                                changed,
                                removed,
                            } => f.apply_diff(&changed, &removed, header.server_time, received),
                            Absorbed::Whole(state) => f.apply(&state, received),
                        }
                    })
                    .await
                    .unwrap_or_else(|e| {
                        Err(NftError::Refused(format!("the update panicked: {e}")))
                    });
                    filter_synced = result.is_ok();
                    match result {
                        Ok(unrepresentable) => {
                            for e in unrepresentable {
                                let crate::filter::plan::PlanError::UnknownDirectService {
                                    id, ..
                                } = &e;
                                tracing::warn!(admission = %id, error = %e, "admission left out of the pre-filter");
                            }
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "the pre-filter could not take feed version {version}; applying it in user space but not acknowledging it, retrying");
                            kernel_ok = false;
                        }
                    }
                }
                // Removals must take effect even when the kernel refused
                // the version: user space applies every version.
                let (tx, rx) = oneshot::channel();
                let sent = match absorbed {
                    Absorbed::Whole(mut state) => {
                        if let Some(direct) = &direct {
                            direct.apply(&state, received);
                        }
                        state
                            .admissions
                            .retain(|a| a.mode == proto::api::AccessMode::Tunnel);
                        control.send(Control::Apply(state, tx))
                    }
                    Absorbed::Diff {
                        header,
                        mut changed,
                        removed,
                    } => {
                        if let Some(direct) = &direct {
                            direct.apply_diff(&changed, &removed, header.server_time, received);
                        }
                        changed.retain(|a| a.mode == proto::api::AccessMode::Tunnel);
                        control.send(Control::ApplyDiff {
                            header,
                            changed,
                            removed,
                            done: tx,
                        })
                    }
                };
                if !sent || rx.await.is_err() {
                    tracing::error!("the data path has stopped; the feed stops too");
                    return;
                }
                if !kernel_ok {
                    desired.refetch();
                    let jitter = rand::thread_rng().gen_range(0.5..1.5);
                    tokio::time::sleep(backoff.mul_f64(jitter)).await;
                    backoff = (backoff * 2).min(FEED_RETRY_MAX);
                    continue;
                }
                match client.ack(version).await {
                    Ok(()) => {
                        let mut h = health.lock().unwrap_or_else(|p| p.into_inner());
                        h.server = Some(server);
                        h.connected = true;
                        h.last_error = None;
                        h.acked = version;
                        h.acked_at = Some(Instant::now());
                        // issue 17: the control plane's check, logged when it changes.
                        if reachability.is_some() && h.reachability != reachability {
                            crate::portmap::log_reachability(
                                reachability.as_ref().unwrap_or(&Default::default()),
                            );
                            h.reachability = reachability;
                        }
                        drop(h);
                        metrics
                            .ack_latency
                            .observe(received.elapsed().as_secs_f64());
                        synced.send_replace(version);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "acknowledging feed version {version} failed; fetching again");
                        desired.refetch();
                    }
                }
            }
            Err(e) if diffs && e.status() == Some(400) => {
                tracing::warn!(error = %e, "the control plane does not offer feed diffs; following the whole set");
                diffs = false;
            }
            Err(e) => {
                metrics.errors.inc();
                {
                    let mut h = health.lock().unwrap_or_else(|p| p.into_inner());
                    if e.status() == Some(401) && (h.connected || h.last_error.is_none()) {
                        tracing::error!(error = %e, "the control plane no longer accepts this gateway's credential (revoked, replaced, or the server removed); existing admissions stay until they expire; re-enroll: run 'hushgate admin server reenroll NAME' on the control plane and restart the gateway with the new token");
                    } else if h.connected || h.last_error.is_none() {
                        tracing::warn!(error = %e, "lost the control plane feed; existing admissions stay until they expire, retrying");
                    }
                    h.connected = false;
                    h.last_error = Some(e.to_string());
                }
                desired.refetch();
                let jitter = rand::thread_rng().gen_range(0.5..1.5);
                tokio::time::sleep(backoff.mul_f64(jitter)).await;
                backoff = (backoff * 2).min(FEED_RETRY_MAX);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_specs_parse() {
        let s: ServiceSpec = "plex=32400:127.0.0.1:32400".parse().unwrap();
        assert_eq!(s.name, "plex");
        assert_eq!(s.port, 32400);
        assert_eq!(s.upstream, "127.0.0.1:32400".parse().unwrap());
        let s: ServiceSpec = "jf=8096:[::1]:8096".parse().unwrap();
        assert_eq!(s.upstream, "[::1]:8096".parse().unwrap());
        for bad in [
            "plex",
            "plex=x:1.2.3.4:5",
            "=1:127.0.0.1:2",
            "plex=0:127.0.0.1:1",
            "plex=1:localhost",
        ] {
            assert!(bad.parse::<ServiceSpec>().is_err(), "{bad}");
        }
    }
}
