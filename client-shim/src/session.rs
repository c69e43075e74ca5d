//! [`Session`]: the async handle a player app holds, and the supervisor
//! task behind it that keeps the admission alive (renewal, re-admission
//! after a path loss, revocation).

use boringtun::x25519::{PublicKey, StaticSecret};
use control_client::Trust;
use proto::WgKey;
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::net::SocketAddr;
use std::time::Duration;
use time::OffsetDateTime;
use tokio::sync::{broadcast, mpsc, watch};
use tokio::time::Instant;

use crate::access_answer::{validate_access, TunnelParams};
use crate::control_api::{ControlApi, Credentials, DeviceIdentity, HttpControl};
use crate::datapath::{
    Command, DataPathCommands, DataPathConfig, DataPathHandle, Install, PathEvent,
};
use crate::error::{ErrorKind, ShimError};
use crate::renewal::{renew_delay, Backoff};

/// Everything a session needs.
#[derive(Debug, Clone)]
pub struct ShimConfig {
    /// The control plane, e.g. `https://control.example:8443`.
    pub control_url: String,
    /// Pinned CA of a self-hosted control plane, or the public roots.
    pub trust: Trust,
    pub credentials: Credentials,
    /// The media server's name at the control plane.
    pub server: String,
    /// The service to reach (e.g. "plex"); `None` takes the first offered.
    pub service: Option<String>,
    /// The local address the player connects to, e.g. `127.0.0.1:32400`.
    /// Port 0 picks a free port ([`Session::local_addr`] tells which).
    pub listen: SocketAddr,
    /// This device's identity (needed for servers whose owner approves
    /// each device); `None` logs in without one.
    pub device: Option<DeviceIdentity>,
    /// Told the control plane's message ("waiting for alice to approve
    /// this device for server 'den'") while `connect` waits for the
    /// owner's decision; `connect` keeps asking until then.
    pub on_waiting: Option<WaitingNotice>,
}

/// A callback for the waiting state (see [`ShimConfig::on_waiting`]).
#[derive(Clone)]
pub struct WaitingNotice(pub std::sync::Arc<dyn Fn(&str) + Send + Sync>);

impl std::fmt::Debug for WaitingNotice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WaitingNotice(..)")
    }
}

/// What happens to a session, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEvent {
    /// The tunnel is up with this admission (again, after a re-admission
    /// or when a lost path came back).
    Connected {
        admission_id: String,
        expires_at: OffsetDateTime,
    },
    /// Renewal of the admission started.
    Renewing,
    /// The admission now lasts until `expires_at`.
    Renewed { expires_at: OffsetDateTime },
    /// The gateway stopped answering (e.g. this device changed networks).
    Lost,
    /// Asking for a fresh admission, attempt `attempt` (1-based).
    Reconnecting { attempt: u32 },
    /// The admission was revoked or the grant removed.
    Revoked { message: String },
    /// The session is over; nothing follows.
    Ended { reason: EndReason },
}

/// Why a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndReason {
    /// Closed by the app (drop or [`Session::close`]).
    Closed,
    /// Revoked at the control plane.
    Revoked { message: String },
    /// Something that retrying cannot fix.
    Failed { message: String, kind: ErrorKind },
}

impl std::fmt::Display for EndReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EndReason::Closed => f.write_str("closed"),
            EndReason::Revoked { message } | EndReason::Failed { message, .. } => {
                f.write_str(message)
            }
        }
    }
}

/// The current admission of a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    pub admission_id: String,
    pub expires_at: OffsetDateTime,
    pub server: String,
    pub service: String,
    /// Where the gateway's WireGuard endpoint is.
    pub gateway: SocketAddr,
}

/// Timing knobs, shortened by tests.
#[derive(Debug, Clone)]
pub(crate) struct Tuning {
    pub(crate) datapath: DataPathConfig,
    /// How long the first handshake may take before `connect` gives up.
    pub(crate) handshake_timeout: Duration,
    /// Least time between two probes asked for by resets inside the
    /// tunnel (they come with normal use too).
    pub(crate) probe_interval: Duration,
    /// Least time between two probes while the path is silent, and the
    /// wait before asking again when one failed. A silence is what a move
    /// to another network, a revocation or an admission lost while the
    /// control plane was down look like; each probe is one renewal.
    pub(crate) stall_probe_interval: Duration,
    /// Retries of renewals.
    pub(crate) backoff: Backoff,
    /// Retries of a re-admission after a loss: the tunnel is down until
    /// one succeeds, so they are kept close (a gateway that reconnects to
    /// a restarted control plane is answered "offline" until it does).
    pub(crate) reconnect_backoff: Backoff,
    /// How long `connect` waits for an owner to approve this device.
    pub(crate) approval_wait: Duration,
    /// How often it asks meanwhile (the control plane suggests 3 s).
    pub(crate) approval_poll: Duration,
    pub(crate) waiting: Option<WaitingNotice>,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            datapath: DataPathConfig::default(),
            handshake_timeout: Duration::from_secs(15),
            probe_interval: Duration::from_secs(5),
            stall_probe_interval: Duration::from_secs(2),
            backoff: Backoff::default(),
            reconnect_backoff: Backoff::new(Duration::from_millis(500), Duration::from_secs(2)),
            approval_wait: Duration::from_secs(30 * 60),
            approval_poll: Duration::from_secs(3),
            waiting: None,
        }
    }
}

/// A running client session: a local TCP port that behaves like the
/// media server, for as long as the admission lasts.
///
/// Dropping it closes the local port and every connection through it at
/// once and revokes the admission in the background (best effort; use
/// [`close`](Self::close) to wait for the revocation).
#[derive(Debug)]
pub struct Session {
    local_addr: SocketAddr,
    events: broadcast::Sender<SessionEvent>,
    info: watch::Receiver<SessionInfo>,
    ended: watch::Receiver<Option<EndReason>>,
    stop: watch::Sender<bool>,
    supervisor: Option<tokio::task::JoinHandle<()>>,
    datapath: DataPathHandle,
}

impl Session {
    /// Logs in, requests access with a fresh ephemeral key, brings up the
    /// tunnel and opens the local port. Returns once the gateway has
    /// answered the WireGuard handshake, so the port works at once.
    pub async fn connect(config: ShimConfig) -> Result<Session, ShimError> {
        // The local port first: "port in use" should not cost an admission.
        let listener = bind_listener(config.listen)?;
        let control = HttpControl::login(
            &config.control_url,
            config.trust,
            config.credentials,
            &config.server,
            config.device,
        )
        .await?;
        Session::start(
            control,
            listener,
            config.server,
            config.service,
            Tuning {
                waiting: config.on_waiting,
                ..Tuning::default()
            },
        )
        .await
    }

    pub(crate) async fn start<C: ControlApi>(
        mut control: C,
        listener: std::net::TcpListener,
        server: String,
        service: Option<String>,
        tuning: Tuning,
    ) -> Result<Session, ShimError> {
        let (secret, params) =
            admit(&mut control, &server, service.as_deref(), Some(&tuning)).await?;
        let (path_tx, mut path_rx) = mpsc::unbounded_channel();
        let install = Install {
            generation: 1,
            params: params.clone(),
            secret,
        };
        let datapath =
            match DataPathHandle::spawn(listener, install, tuning.datapath.clone(), path_tx) {
                Ok(d) => d,
                Err(e) => {
                    let _ = control.revoke(&params.admission_id).await;
                    return Err(ShimError::DataPath(format!("cannot start the tunnel: {e}")));
                }
            };
        let connected = tokio::time::timeout(tuning.handshake_timeout, async {
            while let Some(ev) = path_rx.recv().await {
                match ev {
                    PathEvent::Connected { .. } => return Ok(()),
                    PathEvent::Failed(m) => return Err(ShimError::DataPath(m)),
                    _ => {}
                }
            }
            Err(ShimError::DataPath("the tunnel thread stopped".into()))
        })
        .await;
        let failure = match connected {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e),
            Err(_) => Some(ShimError::GatewayUnreachable {
                endpoint: params.gateway_endpoint,
                waited: tuning.handshake_timeout,
            }),
        };
        if let Some(e) = failure {
            drop(datapath);
            let _ = control.revoke(&params.admission_id).await;
            return Err(e);
        }

        let info = SessionInfo {
            admission_id: params.admission_id.clone(),
            expires_at: params.expires_at,
            server: server.clone(),
            service: params.service.clone(),
            gateway: params.gateway_endpoint,
        };
        let (events, _) = broadcast::channel(64);
        let (info_tx, info_rx) = watch::channel(info);
        let (ended_tx, ended_rx) = watch::channel(None);
        let (stop_tx, stop_rx) = watch::channel(false);
        let sup = Supervisor {
            renew_at: Instant::now() + renew_delay(OffsetDateTime::now_utc(), params.expires_at),
            control,
            server,
            service,
            datapath: datapath.commands(),
            path: path_rx,
            events: events.clone(),
            info: info_tx,
            ended: ended_tx,
            stop: stop_rx,
            current: params,
            generation: 1,
            renew_backoff: tuning.backoff.clone(),
            reconnect: None,
            stalled: false,
            last_probe: None,
            probe_at: None,
            tuning,
            rng: StdRng::from_entropy(),
        };
        let supervisor = tokio::spawn(sup.run());
        Ok(Session {
            local_addr: datapath.local_addr(),
            events,
            info: info_rx,
            ended: ended_rx,
            stop: stop_tx,
            supervisor: Some(supervisor),
            datapath,
        })
    }

    /// The local address the player connects to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The current admission (it changes on renewal and re-admission).
    pub fn info(&self) -> SessionInfo {
        self.info.borrow().clone()
    }

    /// Events from now on. A receiver that falls more than 64 events
    /// behind loses the oldest ones.
    pub fn events(&self) -> broadcast::Receiver<SessionEvent> {
        self.events.subscribe()
    }

    /// Waits until the session ends by itself (revocation, failure) or is
    /// closed, and says why.
    pub async fn ended(&self) -> EndReason {
        let mut rx = self.ended.clone();
        let r = rx.wait_for(Option::is_some).await;
        match r {
            Ok(v) => v.clone().unwrap_or(EndReason::Closed),
            Err(_) => EndReason::Closed,
        }
    }

    /// Closes the local port and connections, revokes the admission and
    /// waits for that to finish.
    pub async fn close(mut self) {
        let _ = self.stop.send(true);
        self.datapath.shutdown();
        if let Some(s) = self.supervisor.take() {
            let _ = s.await;
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // The supervisor sees this and revokes in the background.
        let _ = self.stop.send(true);
        self.datapath.shutdown();
    }
}

/// Binds the local listener, with a clear error for a taken port.
pub(crate) fn bind_listener(addr: SocketAddr) -> Result<std::net::TcpListener, ShimError> {
    std::net::TcpListener::bind(addr).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            ShimError::ListenInUse { addr }
        } else {
            ShimError::Listen { addr, source: e }
        }
    })
}

/// A fresh ephemeral key pair. The secret stays in this process.
fn ephemeral_key() -> (StaticSecret, WgKey) {
    let secret = StaticSecret::random_from_rng(rand::rngs::OsRng);
    let public = PublicKey::from(&secret);
    (secret, WgKey(public.to_bytes()))
}

/// One access request with a new key, checked. An answer that cannot be
/// used is revoked at once so it does not linger at the gateway. With
/// `approval`, a device waiting for its owner's approval asks again
/// every `approval_poll` (telling `waiting` once per message) until the
/// owner decides or `approval_wait` has passed.
async fn admit<C: ControlApi>(
    control: &mut C,
    server: &str,
    service: Option<&str>,
    approval: Option<&Tuning>,
) -> Result<(StaticSecret, TunnelParams), ShimError> {
    let (secret, public) = ephemeral_key();
    let started = Instant::now();
    let mut told: Option<String> = None;
    let resp = loop {
        match control.access(server, public).await {
            Err(ShimError::WaitingForApproval { message, .. })
                if approval.is_some_and(|t| started.elapsed() < t.approval_wait) =>
            {
                let t = approval.expect("checked above");
                if told.as_deref() != Some(message.as_str()) {
                    tracing::info!(%server, "{message}");
                    if let Some(w) = &t.waiting {
                        (w.0)(&message);
                    }
                    told = Some(message);
                }
                tokio::time::sleep(t.approval_poll).await;
            }
            r => break r?,
        }
    };
    match validate_access(&resp, service) {
        Ok(p) => Ok((secret, p)),
        Err(e) => {
            let id = &resp.admission_id;
            if id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
                && !id.is_empty()
                && id.len() <= 128
            {
                let _ = control.revoke(id).await;
            }
            Err(e.into())
        }
    }
}

/// Re-admission state after a path loss.
#[derive(Debug)]
struct Reconnect {
    backoff: Backoff,
    next_try: Instant,
}

struct Supervisor<C> {
    control: C,
    server: String,
    service: Option<String>,
    datapath: DataPathCommands,
    path: mpsc::UnboundedReceiver<PathEvent>,
    events: broadcast::Sender<SessionEvent>,
    info: watch::Sender<SessionInfo>,
    ended: watch::Sender<Option<EndReason>>,
    stop: watch::Receiver<bool>,
    current: TunnelParams,
    generation: u64,
    renew_at: Instant,
    renew_backoff: Backoff,
    reconnect: Option<Reconnect>,
    /// The path is silent after a send (a `Stalled` not yet followed by
    /// `Recovered`): only then does a probe's "moved" mean anything.
    stalled: bool,
    last_probe: Option<Instant>,
    /// A probe asked for within `probe_interval` of the last one, due
    /// at this time.
    probe_at: Option<Instant>,
    tuning: Tuning,
    rng: StdRng,
}

/// Runs `fut` unless the session is stopped first.
async fn unless_stopped<T>(
    stop: &mut watch::Receiver<bool>,
    fut: impl std::future::Future<Output = T>,
) -> Option<T> {
    tokio::select! {
        r = fut => Some(r),
        _ = stop.wait_for(|s| *s) => None,
    }
}

impl<C: ControlApi> Supervisor<C> {
    fn emit(&self, ev: SessionEvent) {
        let _ = self.events.send(ev);
    }

    async fn run(mut self) {
        let reason = loop {
            let mut wake = match &self.reconnect {
                Some(r) => r.next_try,
                None => self.renew_at,
            };
            if let Some(p) = self.probe_at {
                wake = wake.min(p);
            }
            enum Wake {
                Stop,
                Path(Option<PathEvent>),
                Timer,
            }
            let wake = tokio::select! {
                // A stop first: closing also shuts the data path down, and
                // its end must not be taken for a failure.
                biased;
                _ = self.stop.wait_for(|s| *s) => Wake::Stop,
                ev = self.path.recv() => Wake::Path(ev),
                _ = tokio::time::sleep_until(wake) => Wake::Timer,
            };
            let step = match wake {
                Wake::Stop => Some(EndReason::Closed),
                Wake::Path(Some(ev)) => self.on_path_event(ev).await,
                Wake::Path(None) => Some(EndReason::Failed {
                    message: "the tunnel thread stopped".into(),
                    kind: ErrorKind::DataPath,
                }),
                Wake::Timer if self.probe_at.is_some_and(|p| p <= Instant::now()) => {
                    self.probe_at = None;
                    self.probe().await
                }
                Wake::Timer if self.reconnect.is_some() => self.readmit().await,
                Wake::Timer => self.renew().await,
            };
            if let Some(reason) = step {
                break reason;
            }
        };
        // However the loop ended, a session the app closed ends as closed
        // (and its admission is revoked), unless it was revoked already.
        let reason = match reason {
            EndReason::Failed { .. } if *self.stop.borrow() => EndReason::Closed,
            r => r,
        };
        self.finish(reason).await;
    }

    async fn finish(mut self, reason: EndReason) {
        self.datapath.send(Command::Shutdown);
        // "Ended" promises the local port is closed: wait for the data
        // path to say so (bounded, in case it is already gone).
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Some(ev) = self.path.recv().await {
                if matches!(ev, PathEvent::Stopped) {
                    break;
                }
            }
        })
        .await;
        match &reason {
            EndReason::Closed => {
                // Best effort, bounded: the admission expires anyway.
                let id = self.current.admission_id.clone();
                let _ =
                    tokio::time::timeout(Duration::from_secs(5), self.control.revoke(&id)).await;
            }
            EndReason::Revoked { message } => {
                tracing::warn!(server = %self.server, admission = %self.current.admission_id, %message, "admission revoked");
                self.emit(SessionEvent::Revoked {
                    message: message.clone(),
                });
            }
            EndReason::Failed { message, .. } => {
                tracing::warn!(server = %self.server, admission = %self.current.admission_id, %message, "session failed");
            }
        }
        let _ = self.ended.send(Some(reason.clone()));
        self.emit(SessionEvent::Ended { reason });
    }

    async fn on_path_event(&mut self, ev: PathEvent) -> Option<EndReason> {
        match ev {
            PathEvent::Failed(message) => {
                return Some(EndReason::Failed {
                    message,
                    kind: ErrorKind::DataPath,
                })
            }
            PathEvent::Connected { generation } | PathEvent::Recovered { generation }
                if generation == self.generation =>
            {
                self.reconnect = None;
                self.stalled = false;
                self.emit(SessionEvent::Connected {
                    admission_id: self.current.admission_id.clone(),
                    expires_at: self.current.expires_at,
                });
            }
            PathEvent::Lost { generation }
                if generation == self.generation && self.reconnect.is_none() =>
            {
                self.lost("gateway stopped answering; asking for a new admission");
            }
            // Silence may mean revocation: the gateway dropped us and
            // cannot say so. A reset of a connection by the gateway's side
            // may mean it too: the gateway resets a removed peer's
            // connections inside the tunnel.
            PathEvent::Stalled { generation } if generation == self.generation => {
                self.stalled = true;
                return self.probe().await;
            }
            PathEvent::Reset { generation } if generation == self.generation => {
                return self.probe().await;
            }
            // News about a tunnel already replaced.
            _ => {}
        }
        None
    }

    /// The path is gone: say so and ask for a new admission at once.
    fn lost(&mut self, why: &'static str) {
        tracing::info!(gateway = %self.current.gateway_endpoint, admission = %self.current.admission_id, "{why}");
        self.emit(SessionEvent::Lost);
        self.reconnect = Some(Reconnect {
            backoff: self.tuning.reconnect_backoff.clone(),
            next_try: Instant::now(),
        });
    }

    /// Asks the control plane whether the admission still stands: a
    /// renewal answers that within a round trip (404/403 for a revoked
    /// admission). At most one per `probe_interval` (`stall_probe_interval`
    /// while the path is silent); one asked for sooner is postponed to
    /// then (see `probe_at`), not dropped.
    async fn probe(&mut self) -> Option<EndReason> {
        if self.reconnect.is_some() {
            return None;
        }
        let now = Instant::now();
        let gap = if self.stalled {
            self.tuning.stall_probe_interval
        } else {
            self.tuning.probe_interval
        };
        if let Some(next) = self.last_probe.map(|t| t + gap) {
            if now < next {
                self.probe_at = Some(next);
                return None;
            }
        }
        self.last_probe = Some(now);
        self.probe_at = None;
        let id = self.current.admission_id.clone();
        let mut answer = unless_stopped(&mut self.stop, self.control.renew(&id)).await;
        // A network change also breaks the kept-alive HTTPS connection to
        // the control plane (its NAT mapping is gone): the first call on
        // it fails at once with a reset, and the retry opens a new one
        // from the new address, which is the answer that matters here.
        if matches!(&answer, Some(Err(e)) if e.is_transient()) {
            answer = unless_stopped(&mut self.stop, self.control.renew(&id)).await;
        }
        match answer {
            None => return Some(EndReason::Closed),
            Some(Ok(r)) => {
                self.renewed(r.expires_at);
                // The control plane saw this renewal come from an address
                // the admission does not admit: the network changed under
                // us (Wi-Fi to mobile data, a new NAT address), and the
                // stall will not end by itself. Re-admit now instead of
                // waiting for the silence to count as a loss. (After a
                // reset alone the tunnel answers: that is no move.)
                if r.moved == Some(true) && self.stalled {
                    self.lost("this device's network address changed; asking for a new admission");
                }
            }
            Some(Err(ShimError::Revoked { message, .. })) => return self.gone(message),
            Some(Err(e)) => {
                // Ask again while the path stays silent (the stall is
                // reported once): the control plane may be back by then.
                tracing::debug!(error = %e, "probe failed");
                self.probe_at = Some(now + gap);
            }
        }
        None
    }

    /// The control plane no longer knows the admission. Before its expiry
    /// that is a revocation, and final. After it, the admission simply
    /// ran out while the control plane could not be reached to renew it
    /// (it was down across the expiry): that is no reason to quit, so ask
    /// for a new one, as after a loss; a grant that is really gone ends
    /// the session there.
    fn gone(&mut self, message: String) -> Option<EndReason> {
        if OffsetDateTime::now_utc() < self.current.expires_at {
            return Some(EndReason::Revoked { message });
        }
        if self.reconnect.is_none() {
            self.lost("the admission expired while it could not be renewed; asking for a new one");
        }
        None
    }

    /// Records a new expiry, from a scheduled renewal or from a probe (a
    /// probe is a renewal too): whenever the lifetime moved, the app hears
    /// `Renewed`.
    fn renewed(&mut self, expires_at: OffsetDateTime) {
        let moved = expires_at > self.current.expires_at;
        self.current.expires_at = expires_at;
        self.renew_backoff.reset();
        self.renew_at = Instant::now() + renew_delay(OffsetDateTime::now_utc(), expires_at);
        self.info.send_modify(|i| i.expires_at = expires_at);
        if moved {
            self.emit(SessionEvent::Renewed { expires_at });
        }
    }

    async fn renew(&mut self) -> Option<EndReason> {
        self.emit(SessionEvent::Renewing);
        let id = self.current.admission_id.clone();
        match unless_stopped(&mut self.stop, self.control.renew(&id)).await {
            None => Some(EndReason::Closed),
            Some(Ok(r)) => {
                self.renewed(r.expires_at);
                None
            }
            Some(Err(ShimError::Revoked { message, .. })) => self.gone(message),
            Some(Err(e)) if e.is_transient() => {
                // The admission keeps working until it expires; keep trying
                // until then, after which the path loss takes over.
                let wait = self.renew_backoff.next_delay(&mut self.rng);
                tracing::warn!(admission = %self.current.admission_id, error = %e, retry_in = ?wait, "renewal failed");
                self.renew_at = Instant::now() + wait;
                None
            }
            Some(Err(e)) => Some(EndReason::Failed {
                message: e.to_string(),
                kind: e.kind(),
            }),
        }
    }

    async fn readmit(&mut self) -> Option<EndReason> {
        let attempt = {
            let r = self.reconnect.as_ref()?;
            r.backoff.attempts() + 1
        };
        self.emit(SessionEvent::Reconnecting { attempt });
        let server = self.server.clone();
        let service = self.service.clone();
        let r = unless_stopped(
            &mut self.stop,
            admit(&mut self.control, &server, service.as_deref(), None),
        )
        .await;
        match r {
            None => Some(EndReason::Closed),
            Some(Ok((secret, params))) => {
                let old = std::mem::replace(&mut self.current, params.clone());
                self.generation += 1;
                self.stalled = false;
                let sent = self.datapath.send(Command::Install(Box::new(Install {
                    generation: self.generation,
                    params: params.clone(),
                    secret,
                })));
                if !sent {
                    return Some(EndReason::Failed {
                        message: "the tunnel thread stopped".into(),
                        kind: ErrorKind::DataPath,
                    });
                }
                // Wait for the new tunnel's handshake; a new loss restarts
                // this from a fresh backoff.
                self.reconnect = None;
                // `current` already holds the new admission: no `Renewed`, the
                // new tunnel announces itself with `Connected`.
                self.renewed(params.expires_at);
                self.info.send_modify(|i| {
                    i.admission_id = params.admission_id.clone();
                    i.service = params.service.clone();
                    i.gateway = params.gateway_endpoint;
                });
                // The old admission is useless now; do not leave it
                // installed at the gateway until it expires.
                let _ =
                    unless_stopped(&mut self.stop, self.control.revoke(&old.admission_id)).await;
                None
            }
            Some(Err(ShimError::NoAccess { message, .. }))
            | Some(Err(ShimError::Revoked { message, .. })) => Some(EndReason::Revoked { message }),
            Some(Err(e)) if e.is_transient() || matches!(e, ShimError::BadAnswer(_)) => {
                let rc = self.reconnect.as_mut()?;
                let wait = rc.backoff.next_delay(&mut self.rng);
                tracing::warn!(previous_admission = %self.current.admission_id, error = %e, retry_in = ?wait, "re-admission failed");
                rc.next_try = Instant::now() + wait;
                None
            }
            Some(Err(e)) => Some(EndReason::Failed {
                message: e.to_string(),
                kind: e.kind(),
            }),
        }
    }
}
