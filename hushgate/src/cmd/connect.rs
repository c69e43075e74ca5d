use super::config::ConnectFile;
use anyhow::Context;
use client_shim::{
    CodeNotice, CodeStep, Credentials, DeviceIdentity, EndReason, Session, SessionEvent,
    ShimConfig, Trust, WaitingNotice,
};
use std::net::SocketAddr;
use std::path::PathBuf;
use tokio::sync::broadcast::error::RecvError;

/// Reach a media server through its hushgate gateway: log in, get
/// admitted with a fresh ephemeral key, and open a local port that
/// behaves like the server. Point the player at the printed address.
///
/// The password is read from HUSHGATE_PASSWORD or standard input, never
/// from the command line. An account with two-factor sign-in is asked
/// for its current code on the terminal (or give it in HUSHGATE_TOTP, or
/// on standard input's next line with --totp-stdin). With --code there is
/// no password: a short code is shown, someone approves it in the console,
/// and this machine keeps its own credential for next time. Runs until
/// Ctrl-C, revocation or failure.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A profile: its saved settings (from an earlier `hushgate connect
    /// NAME ...`) are used, the flags given now override them, and the
    /// result is saved again once connected. `hushgate status` lists
    /// profiles, `hushgate logout NAME` ends one's session and forgets it.
    #[arg(value_name = "PROFILE")]
    profile: Option<String>,
    /// TOML file with any of these settings (keys: the long flags with `_`
    /// for `-`; deploy/connect.toml); a profile, flags and their
    /// environment variables override it.
    #[arg(long, value_name = "FILE", env = "HUSHGATE_CONNECT_CONFIG")]
    config: Option<PathBuf>,
    /// Control plane URL, e.g. https://control.example:8443. For replicas,
    /// several URLs separated by commas: when one cannot be reached, the
    /// next is used.
    #[arg(long, value_name = "URL", env = "HUSHGATE_CONNECT_CONTROL")]
    control: Option<String>,
    /// CA certificate to pin (the ca.pem the control plane printed);
    /// without it the public web roots are trusted.
    #[arg(long, value_name = "FILE", env = "HUSHGATE_CONNECT_CA")]
    ca: Option<PathBuf>,
    /// Your user name at the control plane.
    #[arg(long, value_name = "NAME", env = "HUSHGATE_CONNECT_USER")]
    user: Option<String>,
    /// The media server's name.
    #[arg(long, value_name = "NAME", env = "HUSHGATE_CONNECT_SERVER")]
    server: Option<String>,
    /// The service to reach (default: the first one offered, e.g. plex).
    #[arg(long, value_name = "NAME", env = "HUSHGATE_CONNECT_SERVICE")]
    service: Option<String>,
    /// Local address for the player [default: 127.0.0.1:32400].
    #[arg(long, value_name = "ADDR", env = "HUSHGATE_CONNECT_LISTEN")]
    listen: Option<SocketAddr>,
    /// Do not run the shim: get an admission for a fresh key and write a
    /// configuration for a stock WireGuard client (wg-quick, wireguard-go,
    /// the official apps) to FILE (mode 0600), then exit. The file holds
    /// the private key; the admission is not renewed and ends at its expiry.
    #[arg(long, value_name = "FILE", conflicts_with = "direct")]
    wg_config: Option<PathBuf>,
    /// With --wg-config: also draw the configuration as a QR code on
    /// standard output for a phone's WireGuard app to scan (the default
    /// when standard output is a terminal). The code holds the private key.
    #[arg(long, requires = "wg_config")]
    qr: bool,
    /// With --wg-config: also write the QR code as a PNG image to FILE
    /// (mode 0600: it holds the private key).
    #[arg(long, value_name = "FILE", requires = "wg_config")]
    qr_png: Option<PathBuf>,
    /// Direct (firewall-only) mode, for players that cannot run a tunnel
    /// (smart TVs, consoles): ask the gateway to open the media server's
    /// port to the public address this command runs from, print where the
    /// player connects, and keep the admission renewed until Ctrl-C (which
    /// revokes it). Run it on the same network as the player. This is
    /// address-only admission: every device behind the same NAT is
    /// admitted too, whereas the tunnel admits only this key. The grant
    /// must allow direct mode, and the server must bind 'exact' or
    /// 'prefix:V4,V6'.
    #[arg(long)]
    direct: bool,
    /// Sign in by code instead of a password (for a machine without your
    /// password, e.g. a TV box): prints a short code and a link (and, on a
    /// terminal, the link as a QR code to scan with a phone); open it,
    /// sign in, approve the code, and the connection goes on. The device
    /// becomes the approving account's, and keeps its credential in the
    /// device file (default $XDG_STATE_HOME/hushgate/device-code@HOST), so
    /// the next `hushgate connect --code` signs in without a new code.
    /// Codes expire after at most 10 minutes. --user is not needed.
    #[arg(long, conflicts_with_all = ["wg_config", "direct"])]
    code: bool,
    /// Where this device keeps its credential at the control plane (mode
    /// 0600; made at the first login). Servers whose owner approves each
    /// device know this machine by it. Default:
    /// $XDG_STATE_HOME/hushgate/device-USER@HOST (or ~/.local/state/...).
    #[arg(long, value_name = "FILE")]
    device_file: Option<PathBuf>,
    /// The name the server's owner sees when approving this device (with
    /// --code: also the name its approver sees and registers) (default:
    /// "hushgate connect on HOSTNAME").
    #[arg(long, value_name = "NAME")]
    device_name: Option<String>,
    /// Read the two-factor code (TOTP, or a recovery code) from the next
    /// line of standard input, after the password's line. Without it the
    /// code comes from HUSHGATE_TOTP, or is asked for on the terminal when
    /// the account needs one. Never an argument: a code on the command
    /// line is in `ps` for anyone to replay within its 30 seconds.
    #[arg(long)]
    totp_stdin: bool,
}

/// Where the two-factor code comes from.
#[derive(Debug)]
pub(crate) struct SecondFactor {
    /// A code given before any login (HUSHGATE_TOTP, --totp-stdin).
    given: Option<String>,
}

impl SecondFactor {
    fn read(a: &Args) -> anyhow::Result<SecondFactor> {
        Self::from_flag(a.totp_stdin)
    }

    /// The code of `--totp-stdin` (the next line of standard input) or
    /// HUSHGATE_TOTP, if either gives one.
    pub(crate) fn from_flag(totp_stdin: bool) -> anyhow::Result<SecondFactor> {
        let given = if totp_stdin {
            let mut line = String::new();
            std::io::BufRead::read_line(&mut std::io::stdin().lock(), &mut line)
                .context("reading the two-factor code from standard input")?;
            let code = line.trim().to_string();
            if code.is_empty() {
                anyhow::bail!("--totp-stdin: no two-factor code on standard input (the line after the password)");
            }
            Some(code)
        } else {
            std::env::var("HUSHGATE_TOTP")
                .ok()
                .map(|c| c.trim().to_string())
                .filter(|c| !c.is_empty())
        };
        Ok(SecondFactor { given })
    }

    /// After a login refused for want of a code: the code typed on the
    /// terminal, or an error saying how to give one.
    fn ask(&self, message: &str) -> anyhow::Result<String> {
        use std::io::IsTerminal;
        if self.given.is_some() {
            anyhow::bail!("{message}");
        }
        if !std::io::stdin().is_terminal() {
            anyhow::bail!("{message}; without a terminal, set HUSHGATE_TOTP or pass --totp-stdin with the code on the line after the password");
        }
        let code = rpassword::prompt_password(
            "two-factor code (authenticator app, or a recovery code): ",
        )?;
        let code = code.trim().to_string();
        if code.is_empty() {
            anyhow::bail!("no two-factor code given");
        }
        Ok(code)
    }
}

/// A password login, with the second factor when the account has one.
pub(crate) async fn login(
    client: &control_client::ControlClient,
    user: &str,
    password: &str,
    totp: &SecondFactor,
) -> anyhow::Result<proto::api::LoginResponse> {
    let mut req = proto::api::LoginRequest {
        username: user.into(),
        password: password.into(),
        totp: totp.given.clone(),
        device_credential: None,
        device_name: None,
    };
    match client.login_with(&req).await {
        Err(e) if e.code() == Some("totp_required") => {
            req.totp = Some(totp.ask(&e.to_string())?);
            Ok(client.login_with(&req).await?)
        }
        r => Ok(r?),
    }
}

/// The default device file for `user` at the control plane `control`.
fn default_device_file(user: &str, control: &str) -> Option<PathBuf> {
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))?;
    // The first control plane's host and port: one credential per
    // account and control plane.
    let host: String = control
        .split(',')
        .next()
        .unwrap_or_default()
        .trim()
        .trim_start_matches("https://")
        .split('/')
        .next()
        .unwrap_or_default()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || ".-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    Some(base.join("hushgate").join(format!("device-{user}@{host}")))
}

fn default_device_name() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "this computer".into());
    format!("hushgate connect on {host}")
}

/// What to connect to, once flags, profile and config file are merged.
#[derive(Debug)]
struct Target {
    control: String,
    ca: Option<PathBuf>,
    user: String,
    server: String,
    service: Option<String>,
    listen: SocketAddr,
}

/// Flags (and their environment variables) over the profile over the
/// config file.
fn resolve(a: &Args) -> anyhow::Result<(Target, ConnectFile)> {
    let file: ConnectFile = match &a.config {
        Some(p) => super::config::read(p)?,
        None => ConnectFile::default(),
    };
    let saved = match &a.profile {
        Some(name) => super::profile::load(&super::profile::dir()?, name)?,
        None => None,
    };
    let base = saved.clone().unwrap_or_default();
    let m = ConnectFile {
        control: a.control.clone().or(base.control).or(file.control),
        ca: a.ca.clone().or(base.ca).or(file.ca),
        user: a.user.clone().or(base.user).or(file.user),
        server: a.server.clone().or(base.server).or(file.server),
        service: a.service.clone().or(base.service).or(file.service),
        listen: a.listen.or(base.listen).or(file.listen),
    };
    let missing: Vec<&str> = [
        ("--control URL", m.control.is_none()),
        ("--user NAME", m.user.is_none() && !a.code),
        ("--server NAME", m.server.is_none()),
    ]
    .into_iter()
    .filter_map(|(f, gone)| gone.then_some(f))
    .collect();
    if !missing.is_empty() {
        match (&a.profile, saved) {
            (Some(name), None) => anyhow::bail!(
                "no profile '{name}' yet: give {} once and it is remembered",
                missing.join(", ")
            ),
            _ => anyhow::bail!("say {}", missing.join(", ")),
        }
    }
    let t = Target {
        control: m.control.clone().unwrap_or_default(),
        ca: m.ca.clone(),
        user: m.user.clone().unwrap_or_default(),
        server: m.server.clone().unwrap_or_default(),
        service: m.service.clone(),
        listen: m.listen.unwrap_or(([127, 0, 0, 1], 32400).into()),
    };
    Ok((t, m))
}

/// Saves the profile (when one was named) after the control plane took
/// its settings.
fn remember(a: &Args, settings: ConnectFile) -> anyhow::Result<()> {
    if let Some(name) = &a.profile {
        let path = super::profile::save(&super::profile::dir()?, name, settings)?;
        println!(
            "profile '{name}' saved in {}; next time: hushgate connect {name}",
            path.display()
        );
    }
    Ok(())
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    let (t, settings) = resolve(&a)?;
    let trust = match &t.ca {
        Some(path) => Trust::from_ca_file(path)?,
        None => Trust::PublicRoots,
    };
    if a.code {
        let session = shim(&a, &t, trust, code_credentials(&a)).await?;
        remember(&a, settings)?;
        return run_session(&a, session).await;
    }
    let password =
        super::read_secret("HUSHGATE_PASSWORD", "password").context("reading the password")?;
    let totp = SecondFactor::read(&a)?;
    if let Some(file) = &a.wg_config {
        write_wg_config(&a, &t, trust, &password, &totp, file).await?;
        return remember(&a, settings);
    }
    if a.direct {
        return direct(&a, &t, settings, trust, &password, &totp).await;
    }
    let session = match shim(
        &a,
        &t,
        trust.clone(),
        password_credentials(&t, &password, totp.given.clone()),
    )
    .await
    {
        Err(client_shim::ShimError::SecondFactor { message }) if totp.given.is_none() => {
            let code = totp.ask(&message)?;
            shim(
                &a,
                &t,
                trust,
                password_credentials(&t, &password, Some(code)),
            )
            .await?
        }
        r => r?,
    };
    remember(&a, settings)?;
    run_session(&a, session).await
}

/// A password sign-in (`code`: the second factor's, if known).
fn password_credentials(t: &Target, password: &str, code: Option<String>) -> Credentials {
    match code {
        Some(code) => Credentials::PasswordAndCode {
            user: t.user.clone(),
            password: password.into(),
            code,
        },
        None => Credentials::Password {
            user: t.user.clone(),
            password: password.into(),
        },
    }
}

/// Sign-in by code: the code and link printed (with a QR code of the
/// link on a terminal), then a line when it is approved.
fn code_credentials(a: &Args) -> Credentials {
    use std::io::IsTerminal;
    let on_terminal = std::io::stdout().is_terminal();
    Credentials::Code {
        device_name: a.device_name.clone().unwrap_or_else(default_device_name),
        notice: CodeNotice(std::sync::Arc::new(move |step: &CodeStep| match step {
            CodeStep::Show(p) => {
                println!(
                    "to sign in, open {} on a phone or computer and enter the code {} (valid {} minutes)",
                    p.verification_uri,
                    p.user_code,
                    p.expires_in.as_secs().div_ceil(60)
                );
                if on_terminal {
                    if let Ok(qr) = super::qr::terminal(&p.verification_uri_complete) {
                        print!("{qr}");
                        println!("or scan this with a phone: {}", p.verification_uri_complete);
                    }
                }
                println!("waiting for the approval (Ctrl-C to give up)");
            }
            CodeStep::Approved => println!("approved; connecting"),
        })),
    }
}

/// Starts the shim's session with `credentials`.
async fn shim(
    a: &Args,
    t: &Target,
    trust: Trust,
    credentials: Credentials,
) -> Result<Session, client_shim::ShimError> {
    // Code sign-ins have no user name at start: one device file per
    // control plane for them.
    let file_user = if a.code { "code" } else { t.user.as_str() };
    Session::connect(ShimConfig {
        control_url: t.control.clone(),
        trust,
        credentials,
        server: t.server.clone(),
        service: t.service.clone(),
        listen: t.listen,
        device: a
            .device_file
            .clone()
            .or_else(|| default_device_file(file_user, &t.control))
            .map(|file| DeviceIdentity {
                file,
                name: a.device_name.clone().unwrap_or_else(default_device_name),
            }),
        // The control plane's words: "waiting for alice to approve this
        // device for server 'den'".
        on_waiting: Some(WaitingNotice(std::sync::Arc::new(|m: &str| {
            println!("{m} (this keeps asking until they decide; Ctrl-C to give up)")
        }))),
    })
    .await
}

async fn run_session(a: &Args, session: Session) -> anyhow::Result<()> {
    let mut events = session.events();
    let info = session.info();
    println!(
        "ready: http://{} -> server '{}' service '{}' (admission {}, expires {})",
        session.local_addr(),
        info.server,
        info.service,
        info.admission_id,
        when(info.expires_at),
    );
    let _note = match &a.profile {
        Some(name) => Some(super::profile::SessionFile::write(
            &super::profile::dir()?,
            name,
            &super::profile::SessionNote {
                pid: std::process::id(),
                local: session.local_addr().to_string(),
                admission: info.admission_id.clone(),
                expires: when(info.expires_at),
            },
        )?),
        None => None,
    };
    // One listener for the whole session: a Ctrl-C that arrives between
    // two turns of the loop is kept, not lost.
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let end = loop {
        tokio::select! {
            _ = &mut ctrl_c => break None,
            ev = events.recv() => match ev {
                Ok(SessionEvent::Renewed { expires_at }) => {
                    println!("renewed: admission {} expires {}", session.info().admission_id, when(expires_at));
                }
                Ok(SessionEvent::Lost) => println!("lost: the gateway stopped answering; asking for a new admission"),
                Ok(SessionEvent::Reconnecting { attempt }) if attempt > 1 => {
                    println!("reconnecting: attempt {attempt}");
                }
                Ok(SessionEvent::Connected { admission_id, expires_at }) => {
                    println!("connected: admission {admission_id}, expires {}", when(expires_at));
                }
                Ok(SessionEvent::Ended { reason }) => break Some(reason),
                Ok(_) | Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => break Some(session.ended().await),
            },
        }
    };
    match end {
        None => {
            session.close().await;
            println!("closed");
            Ok(())
        }
        Some(EndReason::Closed) => Ok(()),
        // The message names the server and what happened (and ends in
        // what to do): repeating it here would say it twice.
        Some(EndReason::Revoked { message }) => anyhow::bail!("{message}"),
        Some(EndReason::Failed { message, .. }) => anyhow::bail!("the session ended: {message}"),
    }
}

fn when(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

/// Direct mode: no tunnel, no local port; the player connects straight to
/// the gateway's opened port. Renewed at two thirds of each lifetime.
async fn direct(
    a: &Args,
    t: &Target,
    settings: ConnectFile,
    trust: Trust,
    password: &str,
    totp: &SecondFactor,
) -> anyhow::Result<()> {
    let client = control_client::ControlClient::new(&t.control, trust)?;
    let login = login(&client, &t.user, password, totp).await?;
    let client = client.with_bearer(&login.token);
    let access = client.access_direct(&t.server).await?;
    let endpoint = match &t.service {
        None => access.direct_endpoint,
        Some(name) => {
            let Some(s) = access.services.iter().find(|s| &s.name == name) else {
                anyhow::bail!(
                    "server '{}' offers no direct service '{name}' to you; it offers: {}",
                    t.server,
                    access
                        .services
                        .iter()
                        .map(|s| s.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            };
            std::net::SocketAddr::new(access.direct_endpoint.ip(), s.port)
        }
    };
    println!(
        "ready: point the player at http://{endpoint} (server '{}', admission {}, expires {})",
        t.server,
        access.admission_id,
        when(access.expires_at)
    );
    remember(a, settings)?;
    println!(
        "note: direct mode admits your public address, so every device behind the same NAT can reach the port until the admission ends; Ctrl-C revokes it"
    );
    let mut expires_at = access.expires_at;
    // One listener for the whole run, and the renewal itself inside the
    // select: a Ctrl-C during a renewal still revokes (a listener made
    // anew each turn would miss a signal that came between two turns).
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let left = (expires_at - time::OffsetDateTime::now_utc())
            .try_into()
            .unwrap_or(std::time::Duration::ZERO);
        let wait = left.mul_f64(2.0 / 3.0);
        let renewal = async {
            tokio::time::sleep(wait).await;
            client.renew(&access.admission_id).await
        };
        tokio::select! {
            _ = &mut ctrl_c => {
                client.revoke(&access.admission_id).await?;
                println!("revoked: the port is closed to this address again");
                return Ok(());
            }
            r = renewal => {
                let r = r.with_context(|| {
                    format!("renewing admission {} failed; the port closes at {}", access.admission_id, when(expires_at))
                })?;
                expires_at = r.expires_at;
                println!("renewed: admission {} expires {}", access.admission_id, when(expires_at));
            }
        }
    }
}

/// The stock-WireGuard path: the same admission a shim would get, written
/// as a wg-quick configuration.
async fn write_wg_config(
    a: &Args,
    t: &Target,
    trust: Trust,
    password: &str,
    totp: &SecondFactor,
    file: &std::path::Path,
) -> anyhow::Result<()> {
    let client = control_client::ControlClient::new(&t.control, trust)?;
    let login = login(&client, &t.user, password, totp).await?;
    let secret = x25519_dalek::StaticSecret::random_from_rng(rand::rngs::OsRng);
    let public = proto::WgKey(x25519_dalek::PublicKey::from(&secret).to_bytes());
    let access = client
        .with_bearer(&login.token)
        .access(&t.server, public)
        .await?;
    let params = client_shim::access_answer::validate_access(&access, t.service.as_deref())
        .map_err(|e| anyhow::anyhow!("the control plane's answer is unusable: {e}"))?;
    for line in client_shim::access_answer::reachability_warnings(&access) {
        eprintln!("warning: {line}");
    }
    let mut text = format!(
        "# hushgate admission {} for server '{}', expires {}\n\
         # Services: {}\n\
         [Interface]\nPrivateKey = {}\nAddress = {}/32\n\n\
         [Peer]\nPublicKey = {}\n",
        access.admission_id,
        t.server,
        when(access.expires_at),
        access
            .services
            .iter()
            // A newline in a name would be a configuration line of its own.
            .map(|s| format!(
                "{} at {}:{}",
                comment_safe(&s.name),
                access.service_address,
                s.port
            ))
            .collect::<Vec<_>>()
            .join(", "),
        proto::WgKey(secret.to_bytes()),
        access.client_address,
        access.gateway_public_key,
    );
    if let Some(psk) = access.preshared_key {
        text.push_str(&format!("PresharedKey = {psk}\n"));
    }
    text.push_str(&format!(
        "Endpoint = {}\nAllowedIPs = {}/32\nPersistentKeepalive = 25\n",
        access.gateway_endpoint, access.service_address
    ));
    super::write_private_file(file, text.as_bytes())?;
    show_qr(a, &text)?;
    println!(
        "wrote {}: admission {}, tunnel address {}, service at {}, expires {}",
        file.display(),
        access.admission_id,
        access.client_address,
        params.service_socket(),
        when(access.expires_at)
    );
    Ok(())
}

/// The configuration as a QR code, for the official phone apps: drawn on
/// a terminal (or with --qr), written as a PNG with --qr-png.
fn show_qr(a: &Args, text: &str) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    if let Some(png) = &a.qr_png {
        super::qr::write_png(text, png)?;
        println!(
            "wrote {} (QR code; it holds the private key)",
            png.display()
        );
    }
    if a.qr || std::io::stdout().is_terminal() {
        print!("{}", super::qr::terminal(text)?);
        println!("scan it with the WireGuard app: add a tunnel, scan from QR code");
    }
    Ok(())
}

/// `text` with every character a name does not hold replaced by `?`, for
/// a comment line of a WireGuard configuration.
fn comment_safe(text: &str) -> String {
    text.chars()
        .map(|c| if proto::is_name_char(c) { c } else { '?' })
        .collect()
}
