//! The IO shell: the gateway put together and run. It binds (or is given)
//! the UDP socket, enrolls or reports to the control plane
//! ([`crate::enroll`]), installs the kernel pre-filter, starts the direct
//! proxy and the data-path thread, answers the status socket
//! ([`crate::status`]), and runs the feed follower: a loop that executes
//! what the sans-IO [`Follower`] asks (HTTPS to the control plane,
//! nftables off the async workers, the direct proxy, the data path's
//! command channel) and hands each result back to it.
//!
//! The async side (tokio) only talks HTTPS to the control plane, the
//! kernel and the status socket; every packet is handled on the data-path
//! thread (`datapath`).

use crate::config::{GatewayConfig, GatewayError};
use crate::datapath::{Command, DataPath, DataPathCommands};
use crate::direct::DirectProxy;
use crate::dispatch::{Dispatcher, DispatcherConfig};
use crate::feed;
use crate::filter::{Filter, PrefilterMode};
use crate::follower::{Action, FetchError, Follower, Input, Report};
use crate::health::{UpstreamHealth, CHECK_INTERVAL, CHECK_TIMEOUT};
use crate::identity::Identity;
use crate::metrics::FeedMetrics;
use crate::status::{FeedHealth, StatusReport, StatusSources};
use control_client::ControlClient;
use netstack::udp::UdpIo;
use proto::WgKey;
use rand::SeedableRng;
use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};

/// How long one feed request waits for a change before the control plane
/// answers "nothing new".
const FEED_WAIT: Duration = Duration::from_secs(25);

/// Runs a gateway on `udp` (bound by the caller) until `shutdown`
/// completes, then stops it. `cfg.listen_udp` is not used.
pub async fn run(
    cfg: GatewayConfig,
    udp: std::net::UdpSocket,
    shutdown: impl Future<Output = ()>,
) -> Result<(), GatewayError> {
    let gw = Gateway::start_on(cfg, udp).await?;
    shutdown.await;
    gw.shutdown().await;
    Ok(())
}

/// A running gateway. Dropping it without `shutdown` leaves the data path
/// running until the process exits.
#[derive(Debug)]
pub struct Gateway {
    udp: SocketAddr,
    public_key: WgKey,
    control_url: String,
    commands: DataPathCommands,
    health: Arc<Mutex<FeedHealth>>,
    synced: watch::Receiver<u64>,
    filter: Option<Arc<Mutex<Filter>>>,
    direct: Option<Arc<DirectProxy>>,
    /// The feed follower and its pinnings.
    feed: tokio::task::JoinHandle<()>,
    upstreams: Arc<Mutex<UpstreamHealth>>,
    upstream_checks: tokio::task::JoinHandle<()>,
    started: Instant,
    status: Option<tokio::task::JoinHandle<()>>,
    thread: Option<std::thread::JoinHandle<std::io::Result<()>>>,
    status_path: PathBuf,
    feed_metrics: Arc<FeedMetrics>,
    /// Tunnel services (port, name), to name the data path's per-port
    /// counters in the metrics.
    service_names: Vec<(u16, String)>,
    /// Port mapping and endpoint reports (issue 17).
    portmap: Option<crate::portmap::PortMap>,
    /// The state folder, this gateway's while it lives.
    _lock: statelock::StateLock,
}

/// Where the UDP socket comes from.
enum Socket {
    Bind(SocketAddr),
    Given(std::net::UdpSocket),
}

impl Gateway {
    /// Binds the UDP port (`cfg.listen_udp`), enrolls (first start) or
    /// reports to the control plane, and starts the data path and the
    /// feed follower.
    pub async fn start(cfg: GatewayConfig) -> Result<Gateway, GatewayError> {
        let addr = cfg.listen_udp;
        Gateway::launch(cfg, Socket::Bind(addr)).await
    }

    /// Like [`Gateway::start`] on a UDP socket the caller bound (so tests
    /// need not bind, drop and rebind a port); `cfg.listen_udp` is not
    /// used.
    pub async fn start_on(
        cfg: GatewayConfig,
        udp: std::net::UdpSocket,
    ) -> Result<Gateway, GatewayError> {
        Gateway::launch(cfg, Socket::Given(udp)).await
    }

    async fn launch(cfg: GatewayConfig, socket: Socket) -> Result<Gateway, GatewayError> {
        let ports = cfg.check()?;
        // First of all: a second gateway on this folder would share the
        // key and credential and fight this one over the feed and the
        // pre-filter.
        let lock = statelock::StateLock::acquire(&cfg.state_dir, "a hushgate gateway")?;
        let mut identity = Identity::load_or_create(&cfg.state_dir)?;
        let udp = match socket {
            Socket::Bind(addr) => {
                UdpIo::bind(addr).map_err(|source| GatewayError::Bind { addr, source })?
            }
            Socket::Given(sock) => UdpIo::from_std(sock).map_err(GatewayError::DataPath)?,
        };
        let udp_addr = udp.local_addr().map_err(GatewayError::DataPath)?;
        // One pinning window, for the dispatcher and the pre-filter alike.
        let dispatcher_config =
            DispatcherConfig::new(cfg.services.iter().map(|s| (s.name.clone(), s.port)));
        let filter = prefilter(&cfg, udp_addr.port(), dispatcher_config.pinning_window)?
            .map(|f| Arc::new(Mutex::new(f)));
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
        let report = crate::enroll::report(&cfg, &identity, udp_addr.port());
        let (credential, server) =
            crate::enroll::enroll_or_report(&client, &cfg, &mut identity, &report).await?;

        let dispatcher =
            Dispatcher::new(identity.secret.clone(), dispatcher_config, Instant::now());
        let (mut dp, commands) =
            DataPath::new(udp, dispatcher, ports).map_err(GatewayError::DataPath)?;
        dp.set_peer_limits(cfg.peer_limits);
        // Pinnings arrive on the data-path thread; the kernel update
        // happens in the feed follower, off that thread.
        let (pins, pinned) = mpsc::unbounded_channel();
        if filter.is_some() {
            dp.on_pinned(pins);
        }
        let thread = std::thread::Builder::new()
            .name("hushgate-datapath".into())
            .spawn(move || dp.run())
            .map_err(GatewayError::DataPath)?;

        let health = Arc::new(Mutex::new(FeedHealth {
            server,
            ..Default::default()
        }));
        let (synced_tx, synced) = watch::channel(0u64);
        let feed_metrics = Arc::new(FeedMetrics::default());
        let feed = tokio::spawn(follow_feed(
            FeedIo {
                client: client.with_bearer(&credential),
                commands: commands.clone(),
                filter: filter.clone(),
                direct: direct.clone(),
                health: health.clone(),
                synced: synced_tx,
                metrics: feed_metrics.clone(),
            },
            pinned,
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
            commands,
            health,
            synced,
            filter,
            direct,
            feed,
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
        gw.status = Some(
            crate::status::serve(&gw.status_path, gw.status_sources())
                .map_err(GatewayError::DataPath)?,
        );
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
        crate::status::status_of(&self.status_sources()).await
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
        self.commands.send(Command::Shutdown);
        if let Some(t) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }

    fn status_sources(&self) -> StatusSources {
        StatusSources {
            commands: self.commands.clone(),
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

/// Installs the kernel pre-filter as `cfg.prefilter` says (None: running
/// without one), for the UDP port `port`.
fn prefilter(
    cfg: &GatewayConfig,
    port: u16,
    pinning_window: Duration,
) -> Result<Option<Filter>, GatewayError> {
    let direct_ports: HashMap<String, u16> = cfg
        .direct
        .iter()
        .map(|s| (s.name.clone(), s.port))
        .collect();
    let marker = cfg.state_dir.join("prefilter-table");
    let filter = match cfg.prefilter {
        PrefilterMode::Off => {
            stale_table(&marker, port, None)?;
            None
        }
        mode => match Filter::install(port, direct_ports, pinning_window) {
            Ok(f) => {
                tracing::info!(table = f.table(), "kernel pre-filter in place: datagrams from sources without an admission are dropped before they reach the gateway");
                // Remembered, so that a later run without the
                // pre-filter notices the table it would leave behind.
                if let Err(e) = std::fs::write(&marker, f.table()) {
                    tracing::warn!(error = %e, path = %marker.display(), "cannot note the pre-filter's table in the state folder");
                }
                Some(f)
            }
            Err(e) if mode == PrefilterMode::Required => return Err(GatewayError::Prefilter(e)),
            Err(e) if !cfg.direct.is_empty() => {
                return Err(GatewayError::DirectNeedsPrefilter(e.to_string()))
            }
            Err(e) => {
                stale_table(&marker, port, Some(&e))?;
                tracing::warn!(error = %e, "no kernel pre-filter: running with the user-space filter alone (unknown sources still get no answer, but each datagram wakes the gateway); use --prefilter required to refuse to start instead");
                None
            }
        },
    };
    Ok(filter)
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

/// What the feed follower's actions are carried out with.
#[derive(Debug)]
struct FeedIo {
    client: ControlClient,
    commands: DataPathCommands,
    filter: Option<Arc<Mutex<Filter>>>,
    direct: Option<Arc<DirectProxy>>,
    health: Arc<Mutex<FeedHealth>>,
    synced: watch::Sender<u64>,
    metrics: Arc<FeedMetrics>,
}

/// Follows the control plane's feed for ever: runs the [`Follower`],
/// carrying out each of its actions (as a task that answers with the
/// follower's next input, or at once for the direct proxy and the
/// reports) and handing it the pinnings the data path reports. Ends when
/// the data path stops.
async fn follow_feed(io: FeedIo, mut pinned: mpsc::UnboundedReceiver<(String, IpAddr)>) {
    let mut follower = Follower::new(
        io.filter.is_some(),
        io.direct.is_some(),
        rand::rngs::StdRng::from_entropy(),
        Instant::now(),
    );
    let mut running: tokio::task::JoinSet<Input> = tokio::task::JoinSet::new();
    loop {
        while let Some(action) = follower.poll_action() {
            match action {
                Action::Fetch { after, at } => {
                    let client = io.client.clone();
                    running.spawn(async move {
                        tokio::time::sleep_until(at.into()).await;
                        Input::Fetched(feed::fetch(&client, after, FEED_WAIT).await.map_err(|e| {
                            FetchError {
                                status: e.status(),
                                message: e.to_string(),
                            }
                        }))
                    });
                }
                Action::ApplyFilter { change, received } => {
                    let Some(filter) = io.filter.clone() else {
                        follower.handle(Input::FilterApplied(Ok(Vec::new())), Instant::now());
                        continue;
                    };
                    // The netlink and `nft` calls block: off the async
                    // workers.
                    running.spawn(async move {
                        let result = tokio::task::spawn_blocking(move || {
                            lock(&filter)
                                .apply(change.as_ref(), received)
                                .map_err(|e| e.to_string())
                        })
                        .await
                        .unwrap_or_else(|e| Err(format!("the update panicked: {e}")));
                        Input::FilterApplied(result)
                    });
                }
                Action::ApplyDirect { change, received } => {
                    if let Some(direct) = &io.direct {
                        direct.apply(change.as_ref(), received);
                    }
                    drop(change);
                    follower.handle(Input::DirectApplied, Instant::now());
                }
                Action::ApplyDataPath { change, received } => {
                    let (tx, rx) = oneshot::channel();
                    let sent = io.commands.send(Command::Apply(change, received, tx));
                    running.spawn(async move { Input::DataPathApplied(sent && rx.await.is_ok()) });
                }
                Action::Ack { version } => {
                    let client = io.client.clone();
                    running.spawn(async move {
                        Input::Acked(client.ack(version).await.map_err(|e| e.to_string()))
                    });
                }
                Action::Pin {
                    admission,
                    source,
                    at,
                } => {
                    let Some(filter) = io.filter.clone() else {
                        continue;
                    };
                    running.spawn(async move {
                        tokio::time::sleep_until(at.into()).await;
                        let result = tokio::task::spawn_blocking(move || {
                            lock(&filter)
                                .pin(&admission, source)
                                .map_err(|e| e.to_string())
                        })
                        .await
                        .unwrap_or_else(|e| Err(format!("the pin task failed: {e}")));
                        Input::PinApplied(result)
                    });
                }
                Action::Report(report) => io.report(report),
                Action::Stop => return,
            }
        }
        let input = tokio::select! {
            Some(done) = running.join_next() => match done {
                Ok(input) => input,
                Err(e) => {
                    tracing::error!(error = %e, "a feed task failed; the feed stops");
                    return;
                }
            },
            Some((admission, source)) = pinned.recv() => Input::Pinned { admission, source },
            else => {
                // Nothing in flight and no data path to report pinnings:
                // the follower cannot go on, and ending quietly would
                // leave the gateway unfed with no word why.
                tracing::error!("the feed follower has nothing in flight and the data path's pinnings have ended; the feed stops");
                return;
            }
        };
        follower.handle(input, Instant::now());
    }
}

impl FeedIo {
    /// Takes a report into the status and the metrics.
    fn report(&self, report: Report) {
        match report {
            Report::Took { kind } => {
                self.metrics
                    .updates
                    .get_or_create(&vec![("kind", kind)])
                    .inc();
            }
            Report::Acked {
                version,
                server,
                reachability,
                received,
            } => {
                let mut h = self.health.lock().unwrap_or_else(|p| p.into_inner());
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
                self.metrics
                    .ack_latency
                    .observe(received.elapsed().as_secs_f64());
                self.synced.send_replace(version);
            }
            Report::Lost { error } => {
                self.metrics.errors.inc();
                let mut h = self.health.lock().unwrap_or_else(|p| p.into_inner());
                h.connected = false;
                h.last_error = Some(error);
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
