//! The hushgate control plane.
//!
//! It is the source of truth of who may reach which media server. Users
//! log in (`auth`), ask for access to a server, and the control plane
//! records an admission in its database (`store`: SQLite by default, or
//! PostgreSQL shared by several replicas), pushes the server's new desired
//! state to that server's gateway through the gateway feed (a long-poll
//! the gateway keeps open; `live_feeds` wakes it, whichever replica made
//! the change), waits for the gateway's acknowledgement (which may arrive at
//! another replica), and only then answers the client with what it needs
//! to open its tunnel. Revocations and expiries travel the same feed; the
//! database keeps which admission changed at which version, so a gateway
//! gets only what changed since the version it holds. Everything is
//! served over HTTPS only (`tls`); the HTTP API itself lives in `app` and
//! is documented in docs/api.md. `bundle` makes the identity (CA,
//! certificate, admin token) that replicas share. Accounts are tenants:
//! any account may register servers it then owns and shares (by name or
//! invitation link), with its own policy (two factors, device approval,
//! direct mode); the self-service routes live in `tenants`, each scoped to
//! the caller's own things (`sessions`: an account's logins and password),
//! and `totp` holds two-factor sign-in. `console` is the web console on
//! the same port: server-rendered pages that call the API's handlers.
//! `device_code` signs in devices without a keyboard (a TV, a player app)
//! by a short code that a signed-in user approves elsewhere.
//! `metrics` counts requests, logins, access latency and database latency
//! for Prometheus. `limits` bounds what one account may make the control
//! plane keep (servers, shares, links, devices, logins, pending devices).
#![forbid(unsafe_code)]

pub mod app;
pub mod auth;
pub mod bundle;
pub mod console;
pub mod device_code;
mod error;
pub mod limits;
pub mod listener;
pub mod live_feeds;
pub mod metrics;
pub mod reachability;
mod sessions;
pub mod store;
mod tenants;
pub mod tls;
pub mod totp;

use anyhow::Context;
use app::AppState;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;

/// How the control plane runs; the CLI flags of `hushgate control` map
/// onto this one to one.
#[derive(Debug, Clone)]
pub struct Config {
    pub state_dir: PathBuf,
    /// A PostgreSQL database shared with other replicas; without it, the
    /// SQLite file `state_dir/control.sqlite`.
    pub database: Option<store::DatabaseUrl>,
    /// Operator certificate and key (PEM); without them a private CA in
    /// `state_dir` issues the certificate.
    pub tls_cert: Option<(PathBuf, PathBuf)>,
    /// Extra names (DNS or IP) for the self-issued certificate.
    pub sans: Vec<String>,
    pub settings: Settings,
}

/// Tunables that request handlers and the listener read.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Proxies whose forwarding header is believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Which header trusted proxies name the client in.
    pub forwarded_header: app::ForwardedHeader,
    /// How long a login token lives.
    pub token_ttl: Duration,
    /// How long an access request waits for the gateway's acknowledgement.
    pub ack_timeout: Duration,
    /// How long past `ack_timeout` a pending admission may stay before any
    /// replica removes it as abandoned (its replica stopped before the
    /// client was answered). Covers clock differences between replicas.
    pub pending_grace: Duration,
    /// The longest a feed long-poll is held open.
    pub max_feed_wait: Duration,
    /// Admission lifetime for servers created without one.
    pub default_admission_ttl: Duration,
    /// Login attempts per minute per source address, and failed logins
    /// per minute per user name (see [`auth::LoginLimiter`]).
    pub login_per_minute: u32,
    /// Connections open at once, all sources together (lowered to what
    /// the open-files limit allows).
    pub max_connections: usize,
    /// Connections open at once from one address (IPv6: one /64), except
    /// admin sources and trusted proxies.
    pub max_connections_per_source: usize,
    /// Connections kept for admin sources only, out of `max_connections`.
    pub admin_connections: usize,
    /// Where the admin reserve may be used from (loopback by default:
    /// `hushgate admin --state DIR` connects from there).
    pub admin_sources: Vec<ipnet::IpNet>,
    /// Time for the TLS handshake, for each request head, and the longest
    /// a kept-alive connection may sit idle between requests.
    pub header_timeout: Duration,
    /// How long an enrollment token lives when none is asked for.
    pub enrollment_ttl: Duration,
    /// Addresses the reachability check sends from, one per family, for a
    /// control plane whose outgoing UDP leaves from another address than
    /// the one gateways connect to (behind a NAT of its own). Default:
    /// the address each gateway reports reaching the control plane at.
    pub probe_sources: Vec<std::net::IpAddr>,
    /// How often every connected gateway's endpoint is checked again
    /// (besides after each report); `None`: only after reports.
    pub reachability_interval: Option<Duration>,
    /// Where rate limits read the time. [`Clock::System`] in production;
    /// tests pass a [`Clock::manual`] and move it themselves, so a limit
    /// holds however slow the machine running them is.
    pub clock: Clock,
    /// Label the metrics' live admissions with each server's name (a name
    /// can say whose server it is, so only when the operator allows it).
    pub metrics_per_server: bool,
    /// How much one account may make the control plane keep.
    pub limits: limits::Limits,
    /// The control plane's address as users' browsers reach it (e.g.
    /// `https://hushgate.example`), for the sign-in by code page's link
    /// (`{public_url}/device`). Default: the host the device itself
    /// reached the control plane at.
    pub public_url: Option<String>,
    /// How long a sign-in code lives (at most [`device_code::MAX_TTL`]).
    pub device_code_ttl: Duration,
    /// The least time between a device's polls for its code's decision.
    pub device_code_interval: Duration,
}

/// The monotonic clock the control plane's rate limits read.
#[derive(Debug, Clone, Default)]
pub enum Clock {
    /// `Instant::now()`.
    #[default]
    System,
    /// A clock that moves only when told to ([`ManualClock::advance`]).
    Manual(Arc<ManualClock>),
}

impl Clock {
    /// A manual clock starting now, and the handle that moves it.
    pub fn manual() -> (Clock, Arc<ManualClock>) {
        let origin = std::time::Instant::now();
        let m = Arc::new(ManualClock {
            now: std::sync::Mutex::new(origin),
            origin,
            origin_ms: store::millis(OffsetDateTime::now_utc()),
        });
        (Clock::Manual(m.clone()), m)
    }

    pub fn now(&self) -> std::time::Instant {
        match self {
            Clock::System => std::time::Instant::now(),
            Clock::Manual(m) => *m.now.lock().unwrap_or_else(|p| p.into_inner()),
        }
    }

    /// Milliseconds since 1970: the wall clock, which replicas on several
    /// hosts share (within NTP's error), or a manual clock's reading.
    pub fn now_millis(&self) -> i64 {
        match self {
            Clock::System => store::millis(OffsetDateTime::now_utc()),
            Clock::Manual(m) => {
                let now = *m.now.lock().unwrap_or_else(|p| p.into_inner());
                m.origin_ms
                    + i64::try_from(now.duration_since(m.origin).as_millis()).unwrap_or(i64::MAX)
            }
        }
    }
}

/// See [`Clock::manual`].
#[derive(Debug)]
pub struct ManualClock {
    now: std::sync::Mutex<std::time::Instant>,
    origin: std::time::Instant,
    origin_ms: i64,
}

impl ManualClock {
    pub fn advance(&self, by: Duration) {
        *self.now.lock().unwrap_or_else(|p| p.into_inner()) += by;
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            trusted_proxies: Vec::new(),
            forwarded_header: app::ForwardedHeader::default(),
            token_ttl: Duration::from_secs(12 * 3600),
            ack_timeout: Duration::from_secs(5),
            pending_grace: Duration::from_secs(10),
            max_feed_wait: Duration::from_secs(60),
            default_admission_ttl: Duration::from_secs(3600),
            login_per_minute: 10,
            max_connections: 4096,
            max_connections_per_source: 64,
            admin_connections: 32,
            admin_sources: vec![
                ipnet::IpNet::V4(ipnet::Ipv4Net::new_assert(std::net::Ipv4Addr::LOCALHOST, 8)),
                ipnet::IpNet::V6(ipnet::Ipv6Net::new_assert(
                    std::net::Ipv6Addr::LOCALHOST,
                    128,
                )),
            ],
            header_timeout: Duration::from_secs(10),
            enrollment_ttl: Duration::from_secs(24 * 3600),
            probe_sources: Vec::new(),
            reachability_interval: Some(Duration::from_secs(15 * 60)),
            clock: Clock::System,
            metrics_per_server: false,
            limits: limits::Limits::default(),
            public_url: None,
            device_code_ttl: device_code::MAX_TTL,
            device_code_interval: Duration::from_secs(5),
        }
    }
}

/// A control plane with its state opened, ready to serve.
#[derive(Debug)]
pub struct ControlPlane {
    state: Arc<AppState>,
    tls: tls::TlsIdentity,
    /// Where the admin token was written (only on the start that made it).
    pub admin_token_file: PathBuf,
    pub state_dir: PathBuf,
    /// Held while this control plane lives: a second one on the same
    /// folder is refused instead of serving the same database beside it.
    _lock: statelock::StateLock,
}

impl ControlPlane {
    /// Opens (or creates) the state folder, its database and TLS identity.
    /// Admissions whose client can never be answered are removed here:
    /// with SQLite every pending one (this process owns the database, so
    /// nobody waits for them); with a shared database only those whose
    /// pending time ran out (another replica may be waiting for the rest).
    pub fn open(cfg: Config) -> anyhow::Result<ControlPlane> {
        statelock::ensure_private_dir(&cfg.state_dir).with_context(|| {
            format!("cannot create the state folder {}", cfg.state_dir.display())
        })?;
        // One process per state folder, whatever the engine: replicas on
        // PostgreSQL each have their own folder (a copy of the identity).
        let lock = statelock::StateLock::acquire(&cfg.state_dir, "a hushgate control plane")?;
        let database = match &cfg.database {
            Some(url) => store::Database::Postgres(Box::new(url.clone())),
            None => store::Database::Sqlite(cfg.state_dir.join("control.sqlite")),
        };
        let what = match &database {
            store::Database::Sqlite(p) => format!("the database {}", p.display()),
            store::Database::Postgres(url) => format!("the {}", url.describe()),
        };
        let live_feeds = Arc::new(live_feeds::LiveFeeds::default());
        let db = store::Db::open(&database, live_feeds.clone())
            .with_context(|| format!("cannot open {what}"))?;
        if !db.shared() {
            // The database holds preshared keys: owner only.
            for f in ["control.sqlite", "control.sqlite-wal", "control.sqlite-shm"] {
                let p = cfg.state_dir.join(f);
                if p.exists() {
                    use std::os::unix::fs::PermissionsExt;
                    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))?;
                }
            }
        }
        let tls = match &cfg.tls_cert {
            Some((cert, key)) => tls::operator_identity(cert, key)?,
            None => {
                if db.shared() {
                    bundle::check_shared_ca(&db, &cfg.state_dir)?;
                }
                let id = tls::state_identity(&cfg.state_dir, &cfg.sans)?;
                if db.shared() {
                    bundle::register_ca(&db, &cfg.state_dir)?;
                }
                id
            }
        };
        let admin_token_file = bundle::admin_token(&db, &cfg.state_dir)?;
        let (swept, _) =
            db.tx_blocking(|tx| store::sweep(tx, OffsetDateTime::now_utc(), !db.shared()))?;
        let abandoned = swept
            .iter()
            .filter(|(_, why)| *why == store::Swept::Abandoned)
            .count();
        if abandoned > 0 {
            tracing::info!(
                count = abandoned,
                "removed admissions that were never confirmed to a client before the last stop"
            );
        }
        tracing::info!(database = %db.describe(), "database open");
        let dummy_hash = auth::hash_password(&hex_of(&auth::random_key()));
        let argon_slots = 2 * std::thread::available_parallelism().map_or(2, |n| n.get());
        let metrics = metrics::ControlMetrics::new(db.latency(), cfg.settings.metrics_per_server);
        let state = Arc::new(AppState {
            metrics,
            db,
            live_feeds,
            replica: auth::random_id("replica_"),
            limiter: auth::LoginLimiter::new(cfg.settings.login_per_minute),
            settings: cfg.settings,
            dummy_hash,
            expiry_wake: tokio::sync::Notify::new(),
            argon_slots: tokio::sync::Semaphore::new(argon_slots),
            passwords: auth::PasswordPool::new(argon_slots),
            password_checks: std::sync::atomic::AtomicU64::new(0),
            prober: reachability::Prober::default(),
        });
        Ok(ControlPlane {
            state,
            tls,
            admin_token_file,
            state_dir: cfg.state_dir,
            _lock: lock,
        })
    }

    /// The CA file that clients and gateways should pin, if self-made.
    pub fn ca_file(&self) -> Option<&std::path::Path> {
        self.tls.ca_file.as_deref()
    }

    pub fn app_state(&self) -> Arc<AppState> {
        self.state.clone()
    }

    /// Opens a control plane with its state (and a private CA) in
    /// `state_dir` and serves it in the background on 127.0.0.1, on a free
    /// port: what the demo and the tests run.
    pub fn spawn_on_loopback(state_dir: PathBuf, settings: Settings) -> anyhow::Result<Serving> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .context("cannot listen on a loopback port")?;
        ControlPlane::open(Config {
            state_dir,
            database: None,
            tls_cert: None,
            sans: vec![],
            settings,
        })?
        .spawn(listener)
    }

    /// Serves HTTPS on `listener` in a background task of the current
    /// tokio runtime, until [`Serving::stop`] (or until the `Serving` is
    /// dropped). For running a control plane inside another program: the
    /// demo and tests.
    pub fn spawn(self, listener: std::net::TcpListener) -> anyhow::Result<Serving> {
        let addr = listener.local_addr()?;
        let ca_file = self.tls.ca_file.clone();
        let admin_token_file = self.admin_token_file.clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(self.serve(listener, async {
            let _ = stopped.await;
        }));
        Ok(Serving {
            url: format!("https://{addr}"),
            addr,
            ca_file,
            admin_token_file,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// Serves HTTPS on `listener` until `shutdown` completes. Also runs the
    /// expiry task, which removes admissions the moment they expire.
    pub async fn serve(
        self,
        listener: std::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        listener.set_nonblocking(true)?;
        let local = listener.local_addr()?;
        // Lets `hushgate admin --state DIR` find this control plane.
        let url = format!("https://{}\n", local_url_host(local));
        statelock::write_public(&self.state_dir.join("control-url"), url.as_bytes())?;

        let expiry = AbortOnDrop(tokio::spawn(expiry_task(self.state.clone())));
        let checks = self.state.settings.reachability_interval.map(|every| {
            AbortOnDrop(tokio::spawn(reachability::periodic(
                self.state.clone(),
                every,
            )))
        });
        let st = &self.state.settings;
        let caps = listener::ConnectionCaps {
            total: st.max_connections,
            per_source: st.max_connections_per_source,
            admin_reserve: st.admin_connections,
            admin_sources: st.admin_sources.clone(),
            trusted_proxies: st.trusted_proxies.clone(),
        }
        .fit_open_files(listener::open_files_limit());
        tracing::info!(
            total = caps.total,
            per_source = caps.per_source,
            admin_reserve = caps.admin_reserve,
            header_timeout_secs = st.header_timeout.as_secs_f32(),
            "connection limits"
        );
        let timeouts = listener::Timeouts {
            header: st.header_timeout,
            // The longest legitimate request is a feed long-poll, then an
            // access request waiting for its acknowledgement.
            request: st.max_feed_wait + st.ack_timeout + Duration::from_secs(30),
        };
        let listener = tokio::net::TcpListener::from_std(listener)?;
        listener::serve(
            listener,
            self.tls.server_config.clone(),
            app::router(self.state.clone()),
            listener::ConnectionTable::new(caps),
            timeouts,
            shutdown,
        )
        .await;
        drop(expiry);
        drop(checks);
        Ok(())
    }
}

/// Ends a background task when dropped, so that a server future that is
/// dropped (its task aborted) leaves nothing of itself running.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A control plane serving in a background task (see
/// [`ControlPlane::spawn`]).
#[derive(Debug)]
pub struct Serving {
    pub addr: SocketAddr,
    /// `https://ADDR`.
    pub url: String,
    /// The CA to pin, when the control plane made its own.
    pub ca_file: Option<PathBuf>,
    pub admin_token_file: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Serving {
    /// The admin token (read from its 0600 file).
    pub fn admin_token(&self) -> anyhow::Result<String> {
        let t = std::fs::read_to_string(&self.admin_token_file)
            .with_context(|| format!("cannot read {}", self.admin_token_file.display()))?;
        Ok(t.trim().to_string())
    }

    /// Ends serving at once, as a crash would: open requests are cut off
    /// mid-way (a test's stand-in for `kill -9`).
    pub fn kill(mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }

    /// Stops serving (graceful, at most 2 s) and waits for it.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        match self.task.take() {
            Some(t) => t.await.context("the control plane task failed")?,
            None => Ok(()),
        }
    }
}

/// The address admin tools on this host should use to reach `addr`.
fn local_url_host(addr: SocketAddr) -> String {
    let ip = match addr.ip() {
        std::net::IpAddr::V4(v) if v.is_unspecified() => "127.0.0.1".parse().unwrap_or(addr.ip()),
        std::net::IpAddr::V6(v) if v.is_unspecified() => "::1".parse().unwrap_or(addr.ip()),
        ip => ip,
    };
    SocketAddr::new(ip, addr.port()).to_string()
}

fn hex_of(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Removes admissions the moment they expire (and pending ones whose
/// client can no longer be answered) and pushes the change to their
/// gateways; sleeps until the next deadline, not on a fixed tick. With a
/// shared database another replica may add an earlier deadline without
/// waking this one, so it looks again at least every few seconds; every
/// replica sweeps, and an admission another one removed first is skipped.
async fn expiry_task(st: Arc<AppState>) {
    let longest = if st.db.shared() {
        Duration::from_secs(3)
    } else {
        Duration::from_secs(60)
    };
    loop {
        let next = st.db.tx(store::next_deadline).await.ok().flatten();
        let wait = match next {
            Some(t) => {
                let d = t - OffsetDateTime::now_utc();
                Duration::from_millis(d.whole_milliseconds().clamp(0, 60_000) as u64).min(longest)
            }
            None => longest,
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = st.expiry_wake.notified() => continue,
        }
        let now = OffsetDateTime::now_utc();
        let limits = st.db.shared().then(|| {
            (
                st.settings.clock.now_millis(),
                st.limiter.full_after().as_millis() as i64,
                auth::SUSPECT_FOR.as_millis() as i64,
            )
        });
        let swept = st
            .db
            .tx(move |tx| {
                let (gone, _) = store::sweep(tx, now, false)?;
                for (a, why) in &gone {
                    store::audit(
                        tx,
                        now,
                        store::Audit {
                            event: "expired",
                            username: Some(&a.username),
                            server: Some(&a.server),
                            admission_id: Some(&a.id),
                            source: Some(a.source),
                            detail: match why {
                                store::Swept::Expired => "admission reached its expiry".into(),
                                store::Swept::Abandoned => "the gateway never confirmed it in time and its client was never answered (the replica serving the request stopped)".into(),
                            },
                        },
                    )?;
                }
                store::purge_tokens(tx, now)?;
                store::purge_invitations(tx, now)?;
                if let Some((now_ms, full, suspect)) = limits {
                    store::sweep_login_limits(tx, now_ms, full, suspect)?;
                }
                Ok(())
            })
            .await;
        if let Err(e) = swept {
            tracing::error!(error = %e, "expiry pass failed; retrying in 1 s");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}
