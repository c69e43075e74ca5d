use anyhow::{bail, Context};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::metrics::MetricsListen;

/// Stops the metrics listener when the control plane stops.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Run the control plane. It stays in the foreground (under systemd, see
/// deploy/hushgate-control.service); stop it with Ctrl-C or SIGTERM.
///
/// It serves HTTPS only: open TCP 8443 (or your --listen port) to the
/// gateways and clients. Without --tls-cert/--tls-key it makes a private CA
/// in the state folder on first start (ca.pem) and prints its path: copy
/// that file to gateways and clients and pass it with --ca. Its certificate
/// names localhost, the --listen address and every --san; without --san it
/// also names this host's name, its FQDN from /etc/hosts and its
/// non-loopback addresses. The admin token for `hushgate admin` is written
/// to STATE/admin-token (mode 0600).
///
/// The same port serves the web console for owners and their friends:
/// open https://HOST:8443/ in a browser (sign in, sign up from an
/// invitation link, share servers, approve devices, revoke admissions;
/// docs/console.md).
///
/// State lives in a SQLite file in the state folder, unless --database
/// names a PostgreSQL database: then any number of control planes
/// (replicas) share it, each started from a copy of the identity that
/// `hushgate control init` writes (docs/operating.md, "Running several
/// replicas").
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    cmd: Option<Sub>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, clap::Subcommand)]
enum Sub {
    /// Write the identity that replicas share into a folder: the private
    /// CA (ca.pem, ca-key.pem), one server certificate naming every
    /// replica (server.pem, server-key.pem) and the admin token. Run it
    /// again to add names or renew the certificate (the CA and token
    /// stay). Copy the folder to each replica's --state (ca-key.pem may
    /// stay behind). With --database, the CA and admin token are also
    /// recorded there, and a replica started with another identity
    /// refuses to start.
    Init {
        /// The folder to write (made 0700 if missing).
        #[arg(long, value_name = "DIR")]
        state: PathBuf,
        /// A DNS name or IP address by which gateways and clients reach a
        /// replica (repeat for every replica, and for a name in front of
        /// them all).
        #[arg(long, value_name = "NAME", required = true)]
        san: Vec<String>,
        #[command(flatten)]
        db: DatabaseArgs,
    },
    /// Copy the SQLite database of the control plane with --state to OUT,
    /// consistently, while it keeps serving (SQLite's online backup). A
    /// control plane on PostgreSQL is backed up with pg_dump instead
    /// (docs/operating.md).
    Backup {
        /// The control plane's state folder.
        #[arg(long, value_name = "DIR")]
        state: PathBuf,
        /// The file to write (0600; never overwritten).
        #[arg(value_name = "OUT")]
        out: PathBuf,
    },
}

/// Where the state is, when not in the state folder's SQLite file.
#[derive(Debug, clap::Args)]
struct DatabaseArgs {
    /// PostgreSQL database shared by replicas, e.g.
    /// postgres://hushgate@db.example:5432/hushgate or
    /// host=/run/postgresql dbname=hushgate user=hushgate. Prefer the
    /// environment (HUSHGATE_DATABASE) for a URL holding a password: a
    /// password on the command line is refused. Default: SQLite in
    /// --state.
    #[arg(
        long,
        env = "HUSHGATE_DATABASE",
        hide_env_values = true,
        value_name = "URL"
    )]
    database: Option<String>,
    /// File holding the database password (mode 0600 or stricter; its
    /// first line). Without it the password comes from
    /// HUSHGATE_DATABASE_PASSWORD, else from the systemd credential
    /// `database-password` (LoadCredential=, see
    /// deploy/hushgate-control.service), else from the URL in
    /// HUSHGATE_DATABASE; none is needed for peer or trust
    /// authentication over the Unix socket.
    #[arg(long, value_name = "FILE", requires = "database")]
    database_password_file: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// TOML file with any of these settings (keys: the long flags with `_`
    /// for `-`; deploy/control.toml); flags and their environment
    /// variables override it.
    #[arg(long, value_name = "FILE", env = "HUSHGATE_CONTROL_CONFIG")]
    config: Option<PathBuf>,
    /// Address to serve HTTPS on [default: 0.0.0.0:8443].
    #[arg(long, value_name = "ADDR", env = "HUSHGATE_CONTROL_LISTEN")]
    listen: Option<SocketAddr>,
    /// State folder: SQLite database (unless --database), private CA or
    /// shared certificate, admin token.
    #[arg(long, value_name = "DIR", env = "HUSHGATE_CONTROL_STATE")]
    state: Option<PathBuf>,
    #[command(flatten)]
    db: DatabaseArgs,
    /// Operator certificate chain (PEM) instead of the private CA.
    #[arg(long, value_name = "FILE", env = "HUSHGATE_CONTROL_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// Private key (PEM) for --tls-cert.
    #[arg(long, value_name = "FILE", env = "HUSHGATE_CONTROL_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// DNS name or IP address gateways and clients use to reach this
    /// control plane, for the self-issued certificate (repeatable).
    /// Without it the certificate names this host's name, FQDN and
    /// addresses; with it, only what you list (plus localhost and the
    /// --listen address).
    #[arg(long, value_name = "NAME")]
    san: Vec<String>,
    /// Believe the forwarding header only from proxies in this range (repeatable).
    #[arg(long, value_name = "CIDR")]
    trusted_proxy: Vec<ipnet::IpNet>,
    /// The header trusted proxies name the client in: x-forwarded-for or
    /// forwarded (RFC 7239). Only that one is read [default: x-forwarded-for].
    #[arg(long, value_name = "HEADER", env = "HUSHGATE_CONTROL_FORWARDED_HEADER")]
    forwarded_header: Option<control::app::ForwardedHeader>,
    /// Seconds an access request waits for the gateway to confirm [default: 5].
    #[arg(long, value_name = "SECS", env = "HUSHGATE_CONTROL_ACK_TIMEOUT")]
    ack_timeout: Option<f64>,
    /// Default admission lifetime in seconds for new servers [default: 3600].
    #[arg(long, value_name = "SECS", env = "HUSHGATE_CONTROL_ADMISSION_TTL")]
    admission_ttl: Option<u64>,
    /// Lifetime of login tokens, in seconds [default: 43200].
    #[arg(long, value_name = "SECS", env = "HUSHGATE_CONTROL_TOKEN_TTL")]
    token_ttl: Option<u64>,
    /// Default validity of enrollment tokens, in seconds [default: 86400].
    #[arg(long, value_name = "SECS", env = "HUSHGATE_CONTROL_ENROLLMENT_TTL")]
    enrollment_ttl: Option<u64>,
    /// Login attempts allowed per minute per source address, and failed
    /// logins per minute per user name (a user whose failures are spent is
    /// refused only from the addresses that failed) [default: 10].
    #[arg(long, value_name = "N", env = "HUSHGATE_CONTROL_LOGIN_RATE")]
    login_rate: Option<u32>,
    /// Connections open at once, all sources together (lowered to fit the
    /// open-files limit, which is raised to its hard limit at start)
    /// [default: 4096].
    #[arg(long, value_name = "N", env = "HUSHGATE_CONTROL_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// Connections open at once from one address (IPv6: one /64), except
    /// admin sources and trusted proxies [default: 64].
    #[arg(
        long,
        value_name = "N",
        env = "HUSHGATE_CONTROL_MAX_CONNECTIONS_PER_SOURCE"
    )]
    max_connections_per_source: Option<usize>,
    /// Connections kept for admin sources, out of --max-connections
    /// [default: 32].
    #[arg(long, value_name = "N", env = "HUSHGATE_CONTROL_ADMIN_CONNECTIONS")]
    admin_connections: Option<usize>,
    /// Where the reserved admin connections may come from (repeatable;
    /// default loopback, where `hushgate admin --state DIR` connects from).
    #[arg(long, value_name = "CIDR")]
    admin_source: Vec<ipnet::IpNet>,
    /// Seconds a connection has for its TLS handshake and for each request
    /// head; also how long an idle connection is kept open [default: 10].
    #[arg(long, value_name = "SECS", env = "HUSHGATE_CONTROL_HEADER_TIMEOUT")]
    header_timeout: Option<f64>,
    /// Serve Prometheus metrics (GET /metrics, plain HTTP) on this address
    /// of its own, never the HTTPS port: e.g. 127.0.0.1:9102 or
    /// unix:/run/hushgate-control/metrics.sock. Keep it private (loopback,
    /// or a network only Prometheus reaches). Default: off.
    #[arg(long, value_name = "ADDR", env = "HUSHGATE_CONTROL_METRICS_LISTEN")]
    metrics_listen: Option<MetricsListen>,
    /// Allow --metrics-listen on an address other than loopback (e.g. a
    /// private network Prometheus scrapes from). Without it only 127.0.0.1,
    /// ::1 or a Unix socket is accepted: the metrics are plain HTTP.
    #[arg(long, env = "HUSHGATE_CONTROL_METRICS_NOT_LOOPBACK")]
    metrics_not_loopback: bool,
    /// Label the live-admissions metric with each server's name (names can
    /// say whose server it is; without this, one total).
    #[arg(long, env = "HUSHGATE_CONTROL_METRICS_PER_SERVER")]
    metrics_per_server: bool,
    /// The control plane's address as users' browsers reach it (e.g.
    /// https://hushgate.example.net), for the link a device signing in by
    /// code shows ({URL}/device) [default: the host the device reached].
    #[arg(long, value_name = "URL", env = "HUSHGATE_CONTROL_PUBLIC_URL")]
    public_url: Option<String>,
    /// The address the reachability check of gateways sends from, for a
    /// control plane behind a NAT of its own: its public address
    /// (repeatable, one per family) [default: the control plane's address
    /// as each gateway reaches it].
    #[arg(long, value_name = "ADDR")]
    probe_source: Vec<std::net::IpAddr>,
    /// Minutes between reachability checks of every connected gateway
    /// (besides one after each gateway report); 0: only after reports
    /// [default: 15].
    #[arg(
        long,
        value_name = "MINUTES",
        env = "HUSHGATE_CONTROL_REACHABILITY_INTERVAL"
    )]
    reachability_interval: Option<u64>,
    /// What one account may make the control plane keep, NAME=N
    /// (repeatable): servers-per-owner (20), shares-per-server (200),
    /// invitations-per-server (50), account-invitations (200),
    /// devices-per-user (20), sessions-per-user (20; a new login ends the
    /// oldest), pending-devices-per-server (20),
    /// enrollment-tokens-per-server (10). Over a limit a request gets 409
    /// limit_reached naming it (docs/operating.md, "Limits per account").
    #[arg(long, value_name = "NAME=N")]
    limit: Vec<String>,
}

/// The flags (and their environment variables) over the config file.
fn merged(mut a: RunArgs) -> anyhow::Result<RunArgs> {
    let Some(path) = a.config.clone() else {
        return Ok(a);
    };
    let f: super::config::ControlFile = super::config::read(&path)?;
    if let Some(url) = &f.database {
        let parsed = control::store::DatabaseUrl::parse(url).map_err(anyhow::Error::msg)?;
        if parsed.has_password() {
            bail!(
                "{}: the database URL holds a password; give it in database_password_file (0600), HUSHGATE_DATABASE_PASSWORD or the systemd credential 'database-password' instead",
                path.display()
            );
        }
    }
    a.listen = a.listen.or(f.listen);
    a.state = a.state.or(f.state);
    a.db.database = a.db.database.or(f.database);
    a.db.database_password_file = a.db.database_password_file.or(f.database_password_file);
    a.tls_cert = a.tls_cert.or(f.tls_cert);
    a.tls_key = a.tls_key.or(f.tls_key);
    if a.san.is_empty() {
        a.san = f.san;
    }
    if a.trusted_proxy.is_empty() {
        a.trusted_proxy = f.trusted_proxy;
    }
    if a.forwarded_header.is_none() {
        a.forwarded_header = f
            .forwarded_header
            .as_deref()
            .map(str::parse)
            .transpose()
            .map_err(anyhow::Error::msg)?;
    }
    a.ack_timeout = a.ack_timeout.or(f.ack_timeout);
    a.admission_ttl = a.admission_ttl.or(f.admission_ttl);
    a.token_ttl = a.token_ttl.or(f.token_ttl);
    a.enrollment_ttl = a.enrollment_ttl.or(f.enrollment_ttl);
    a.login_rate = a.login_rate.or(f.login_rate);
    a.max_connections = a.max_connections.or(f.max_connections);
    a.max_connections_per_source = a
        .max_connections_per_source
        .or(f.max_connections_per_source);
    a.admin_connections = a.admin_connections.or(f.admin_connections);
    if a.admin_source.is_empty() {
        a.admin_source = f.admin_source;
    }
    a.header_timeout = a.header_timeout.or(f.header_timeout);
    if a.metrics_listen.is_none() {
        a.metrics_listen = f
            .metrics_listen
            .as_deref()
            .map(str::parse)
            .transpose()
            .map_err(anyhow::Error::msg)?;
    }
    a.metrics_per_server |= f.metrics_per_server.unwrap_or(false);
    a.metrics_not_loopback |= f.metrics_not_loopback.unwrap_or(false);
    if a.limit.is_empty() {
        a.limit = f.limit;
    }
    a.public_url = a.public_url.or(f.public_url);
    if let Some(u) = &a.public_url {
        if !u.starts_with("https://") || u.len() <= "https://".len() {
            bail!("public_url '{u}' must be an https:// URL, e.g. https://hushgate.example.net");
        }
    }
    if a.probe_source.is_empty() {
        a.probe_source = f.probe_source;
    }
    a.reachability_interval = a.reachability_interval.or(f.reachability_interval);
    if a.tls_cert.is_some() != a.tls_key.is_some() {
        bail!("tls_cert and tls_key go together: give both or neither");
    }
    Ok(a)
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    match a.cmd {
        Some(Sub::Init { state, san, db }) => init(&state, &san, &db),
        Some(Sub::Backup { state, out }) => backup(&state, &out),
        None => serve(a.run).await,
    }
}

/// The systemd credential holding the database password.
const DATABASE_CREDENTIAL: &str = "database-password";

/// The database the flags and environment name, with its password from
/// a file or the environment. A password on the command line is refused:
/// `ps` and shell history would show it.
fn database(a: &DatabaseArgs) -> anyhow::Result<Option<control::store::DatabaseUrl>> {
    let Some(text) = &a.database else {
        return Ok(None);
    };
    let mut url = control::store::DatabaseUrl::parse(text).map_err(anyhow::Error::msg)?;
    let from_env = std::env::var("HUSHGATE_DATABASE").is_ok_and(|v| &v == text);
    if url.has_password() && !from_env {
        bail!(
            "the --database URL holds a password, which would be visible to every user of this host (ps) and in shell history; put the URL in HUSHGATE_DATABASE, or the password in HUSHGATE_DATABASE_PASSWORD or a 0600 file given with --database-password-file"
        );
    }
    if let Some(file) = &a.database_password_file {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(file).with_context(|| {
            format!("cannot read the database password file {}", file.display())
        })?;
        if meta.permissions().mode() & 0o077 != 0 {
            bail!(
                "the database password file {} can be read by other users; chmod 600 it",
                file.display()
            );
        }
        let pw = std::fs::read_to_string(file).with_context(|| {
            format!("cannot read the database password file {}", file.display())
        })?;
        url = url.with_password(pw.lines().next().unwrap_or_default());
    } else if let Some(pw) = std::env::var("HUSHGATE_DATABASE_PASSWORD")
        .ok()
        .filter(|p| !p.is_empty())
    {
        url = url.with_password(&pw);
    } else if let Some(file) = std::env::var_os("CREDENTIALS_DIRECTORY")
        .map(|d| Path::new(&d).join(DATABASE_CREDENTIAL))
        .filter(|p| p.exists())
    {
        // systemd made this file readable by the service alone.
        let pw = std::fs::read_to_string(&file)
            .with_context(|| format!("cannot read the credential {}", file.display()))?;
        url = url.with_password(pw.lines().next().unwrap_or_default());
    }
    Ok(Some(url))
}

fn init(state: &Path, sans: &[String], db: &DatabaseArgs) -> anyhow::Result<()> {
    let database = database(db)?;
    let b = control::bundle::init(state, sans, database.as_ref())?;
    println!(
        "shared identity in {}: ca.pem, ca-key.pem, server.pem, server-key.pem, admin-token ({})",
        b.dir.display(),
        if b.kept_admin_token {
            "the existing admin token kept"
        } else {
            "a new admin token"
        }
    );
    println!(
        "the certificate names localhost, 127.0.0.1, ::1, {} and is valid until {} (run init again before then, or to add a name)",
        b.sans.join(", "),
        b.certificate_expires.date()
    );
    if let Some(d) = &b.database {
        println!("the CA and admin token are recorded in the {d}");
    }
    println!(
        "copy ca.pem, server.pem, server-key.pem and admin-token into each replica's --state folder (keep the modes; ca-key.pem may stay here), and ca.pem to gateways and clients"
    );
    Ok(())
}

fn backup(state: &Path, out: &Path) -> anyhow::Result<()> {
    let db = state.join("control.sqlite");
    if !db.exists() {
        bail!(
            "{} holds no control.sqlite: this is not the state folder of a control plane on SQLite (one on PostgreSQL is backed up with pg_dump, see docs/operating.md)",
            state.display()
        );
    }
    control::store::sqlite::Sqlite::backup_to(&db, out)
        .with_context(|| format!("cannot back up {}", db.display()))?;
    let size = std::fs::metadata(out).map(|m| m.len()).unwrap_or(0);
    println!(
        "backup of {} written to {} ({size} bytes, integrity checked); to restore it, stop the control plane and copy it to {}",
        db.display(),
        out.display(),
        db.display()
    );
    Ok(())
}

/// The operator's `--limit NAME=N` settings over the defaults.
fn limits(settings: &[String]) -> anyhow::Result<control::limits::Limits> {
    let mut l = control::limits::Limits::default();
    for s in settings {
        l.set(s).map_err(|e| anyhow::anyhow!("--limit: {e}"))?;
    }
    Ok(l)
}

/// The metrics are plain HTTP: loopback or a Unix socket unless the
/// operator says otherwise (`--metrics-not-loopback`).
fn check_metrics_listen(m: &MetricsListen, not_loopback: bool) -> anyhow::Result<()> {
    if let MetricsListen::Tcp(addr) = m {
        if !addr.ip().is_loopback() && !not_loopback {
            bail!(
                "--metrics-listen {addr}: metrics are plain HTTP and stay on loopback (127.0.0.1, ::1) or a Unix socket unless you add --metrics-not-loopback (then keep that address private: a network only Prometheus reaches)"
            );
        }
    }
    Ok(())
}

async fn serve(a: RunArgs) -> anyhow::Result<()> {
    let a = merged(a)?;
    if let Some(m) = &a.metrics_listen {
        check_metrics_listen(m, a.metrics_not_loopback)?;
    }
    let listen = a.listen.unwrap_or(([0, 0, 0, 0], 8443).into());
    let Some(state) = a.state.clone() else {
        bail!("give the control plane a state folder: --state DIR");
    };
    let database = database(&a.db)?;
    let nofile = control::listener::raise_open_files_limit();
    let mut sans = a.san.clone();
    if !listen.ip().is_unspecified() {
        sans.push(listen.ip().to_string());
    }
    if a.san.is_empty() && a.tls_cert.is_none() {
        sans.extend(host_names(listen.ip()));
    }
    let defaults = control::Settings::default();
    let cfg = control::Config {
        state_dir: state.clone(),
        database,
        tls_cert: a.tls_cert.zip(a.tls_key),
        sans: sans.clone(),
        settings: control::Settings {
            trusted_proxies: a.trusted_proxy,
            forwarded_header: a.forwarded_header.unwrap_or_default(),
            token_ttl: a.token_ttl.map_or(defaults.token_ttl, Duration::from_secs),
            ack_timeout: Duration::from_secs_f64(a.ack_timeout.unwrap_or(5.0).max(0.1)),
            default_admission_ttl: a
                .admission_ttl
                .map_or(defaults.default_admission_ttl, Duration::from_secs),
            enrollment_ttl: a
                .enrollment_ttl
                .map_or(defaults.enrollment_ttl, |t| Duration::from_secs(t.max(1))),
            login_per_minute: a.login_rate.unwrap_or(defaults.login_per_minute),
            max_connections: a
                .max_connections
                .unwrap_or(defaults.max_connections)
                .max(16),
            max_connections_per_source: a
                .max_connections_per_source
                .unwrap_or(defaults.max_connections_per_source)
                .max(1),
            admin_connections: a.admin_connections.unwrap_or(defaults.admin_connections),
            admin_sources: if a.admin_source.is_empty() {
                defaults.admin_sources.clone()
            } else {
                a.admin_source
            },
            header_timeout: a.header_timeout.map_or(defaults.header_timeout, |t| {
                Duration::from_secs_f64(t.max(0.5))
            }),
            metrics_per_server: a.metrics_per_server,
            limits: limits(&a.limit)?,
            public_url: a.public_url,
            probe_sources: a.probe_source,
            reachability_interval: match a.reachability_interval {
                None => defaults.reachability_interval,
                Some(0) => None,
                Some(m) => Some(Duration::from_secs(m * 60)),
            },
            ..defaults
        },
    };
    let own_cert = cfg.tls_cert.is_some();
    let cp = control::ControlPlane::open(cfg)?;
    let listener = std::net::TcpListener::bind(listen)
        .with_context(|| format!("cannot listen on {listen}; is the port in use?"))?;
    let local = listener.local_addr()?;
    println!(
        "control plane listening on https://{local} (open TCP {} to gateways and clients)",
        local.port()
    );
    // A replica started from a bundle (the CA's certificate without its
    // key) serves the bundle's certificate, whatever names this host has.
    let shared_cert = !state.join("ca-key.pem").exists() && state.join("ca.pem").exists();
    if shared_cert && !own_cert {
        println!(
            "certificate: the shared one in {} (its names are those 'hushgate control init' was given; gateways and clients must use one of them in --control)",
            state.join("server.pem").display()
        );
    } else if !own_cert {
        println!(
            "certificate names: localhost, 127.0.0.1, ::1{}{} (gateways and clients must use one of these in --control; add others with --san)",
            if sans.is_empty() { "" } else { ", " },
            sans.join(", ")
        );
    }
    if let Some(ca) = cp.ca_file() {
        println!(
            "CA certificate: {} (copy it to gateways and clients and pass it with --ca)",
            ca.display()
        );
    }
    println!(
        "admin token: {} (used by 'hushgate admin --state {}')",
        cp.admin_token_file.display(),
        state.display()
    );
    tracing::info!(open_files = nofile, "open-files limit");
    let _metrics = match &a.metrics_listen {
        Some(listen) => {
            let st = cp.app_state();
            let render: super::metrics::Render = std::sync::Arc::new(move || {
                let st = st.clone();
                Box::pin(async move { Some(control::metrics::render(&st).await) })
            });
            let task = super::metrics::serve(listen, render).await?;
            println!("metrics: {listen}");
            Some(AbortOnDrop(task))
        }
        None => None,
    };
    cp.serve(listener, async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async {
                match term.as_mut() {
                    Some(t) => { t.recv().await; }
                    None => std::future::pending::<()>().await,
                }
            } => {}
        }
    })
    .await
}

/// The names a certificate should carry when the operator named none:
/// this host's name, its fully qualified name if /etc/hosts gives one (no
/// network lookup: a control plane must start without DNS), and every
/// address of the host that others could use (no loopback, no link-local:
/// localhost is always in the certificate, and link-local addresses need
/// a zone that URLs rarely carry).
fn host_names(listen: IpAddr) -> Vec<String> {
    let mut names = Vec::new();
    let host = gethostname::gethostname().to_string_lossy().into_owned();
    if !host.is_empty() && host != "localhost" {
        names.push(host.clone());
        if let Some(fqdn) = std::fs::read_to_string("/etc/hosts")
            .ok()
            .and_then(|hosts| fqdn_from_hosts(&hosts, &host))
        {
            names.push(fqdn);
        }
    }
    for iface in if_addrs::get_if_addrs().unwrap_or_default() {
        let ip = iface.ip();
        let link_local = match ip {
            IpAddr::V4(v4) => v4.is_link_local(),
            IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
        };
        // An IPv4 listener is not reachable on the host's IPv6 addresses.
        let family_ok = !(listen.is_ipv4() && !listen.is_unspecified() && ip.is_ipv6());
        if !ip.is_loopback() && !link_local && family_ok {
            names.push(ip.to_string());
        }
    }
    names.sort();
    names.dedup();
    names
}

/// The fully qualified name of `host` in an /etc/hosts text: on a line
/// naming `host` (or a name starting with `host.`), the first name with a
/// dot in it.
fn fqdn_from_hosts(hosts: &str, host: &str) -> Option<String> {
    let short = host.split('.').next().unwrap_or(host);
    hosts
        .lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .filter_map(|l| {
            let mut fields = l.split_whitespace();
            fields.next()?.parse::<IpAddr>().ok()?;
            let names: Vec<&str> = fields.collect();
            names
                .iter()
                .any(|n| *n == host || *n == short || n.starts_with(&format!("{short}.")))
                .then(|| {
                    names
                        .into_iter()
                        .find(|n| n.contains('.') && n.starts_with(short))
                })
                .flatten()
        })
        .next()
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_stay_on_loopback_unless_the_operator_says_otherwise() {
        let public: MetricsListen = "203.0.113.2:9102".parse().unwrap();
        let e = check_metrics_listen(&public, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--metrics-not-loopback"), "{e}");
        check_metrics_listen(&public, true).unwrap();
        check_metrics_listen(&"127.0.0.1:9102".parse().unwrap(), false).unwrap();
        check_metrics_listen(&"[::1]:9102".parse().unwrap(), false).unwrap();
        check_metrics_listen(&"unix:/run/m.sock".parse().unwrap(), false).unwrap();
    }

    #[test]
    fn limits_come_from_the_flags_and_a_wrong_one_is_refused() {
        let l = limits(&["devices-per-user=3".into()]).unwrap();
        assert_eq!(l.devices_per_user, 3);
        assert_eq!(
            l.servers_per_owner,
            control::limits::Limits::default().servers_per_owner
        );
        let e = limits(&["device-per-user=3".into()])
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("--limit: there is no limit") && e.contains("devices-per-user"),
            "{e}"
        );
    }

    #[test]
    fn fqdn_comes_from_the_hosts_file() {
        let hosts = "127.0.0.1 localhost\n# 10.0.0.1 media.wrong.example media\n127.0.1.1 media.home.example media\n::1 localhost ip6-localhost\n";
        assert_eq!(
            fqdn_from_hosts(hosts, "media").as_deref(),
            Some("media.home.example")
        );
        assert_eq!(fqdn_from_hosts(hosts, "other"), None);
        assert_eq!(fqdn_from_hosts("127.0.1.1 media\n", "media"), None);
    }

    #[test]
    fn host_names_leave_out_loopback_and_link_local() {
        for n in host_names("0.0.0.0".parse().unwrap()) {
            if let Ok(ip) = n.parse::<IpAddr>() {
                assert!(!ip.is_loopback(), "{n}");
                assert!(!n.starts_with("fe80") && !n.starts_with("169.254."), "{n}");
            }
        }
    }
}
