//! `hushgate account` and `hushgate servers`: what an account does with
//! its own credentials, through the same API as the web console (see
//! docs/api.md): sign up, two-factor sign-in, devices; and, as an owner,
//! register servers, set their policy, share them, invite, approve
//! devices, see and end admissions, read the audit.
//!
//! Each command logs in with the account's password (typed when asked,
//! piped on standard input, or HUSHGATE_PASSWORD; never an argument) and,
//! for an account with two-factor sign-in, its current code (asked for on
//! the terminal, HUSHGATE_TOTP, or standard input's next line with
//! --totp-stdin). The control plane, its CA and the user name come from
//! flags or from a `hushgate connect` profile (--profile NAME).

use super::admin::{print_admissions, print_audit, print_json, print_servers, ts};
use super::connect::{login, SecondFactor};
use anyhow::{bail, Context};
use control_client::{ControlClient, Method, Trust};
use proto::api::*;
use proto::BindingPolicy;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::path::PathBuf;
use std::time::Duration;

/// Who signs in, where: the flags every account command shares.
#[derive(Debug, clap::Args)]
pub struct Conn {
    /// Take the control plane, CA and user from this `hushgate connect`
    /// profile (flags given now override it).
    #[arg(long, value_name = "PROFILE", global = true, env = "HUSHGATE_PROFILE")]
    profile: Option<String>,
    /// Control plane URL, e.g. https://control.example:8443 (several,
    /// comma-separated, for replicas).
    #[arg(long, value_name = "URL", global = true)]
    control: Option<String>,
    /// CA certificate to pin (the control plane's ca.pem); without it the
    /// public web roots are trusted.
    #[arg(long, value_name = "FILE", global = true)]
    ca: Option<PathBuf>,
    /// Your user name.
    #[arg(long, value_name = "NAME", global = true)]
    user: Option<String>,
    /// Read the two-factor code from the line of standard input after the
    /// password (else HUSHGATE_TOTP, else asked for on the terminal).
    #[arg(long, global = true)]
    totp_stdin: bool,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
}

const SIGN_IN_HELP: &str = "Each command logs in as --user (or the --profile's user): the password is asked for on the terminal (not shown), read from HUSHGATE_PASSWORD, or from the first line of standard input; never an argument. An account with two-factor sign-in also gives its current code: asked for, HUSHGATE_TOTP, or the next line of standard input with --totp-stdin. Answers that refuse say why, e.g. 409 limit_reached names the operator's limit (docs/operating.md, \"Limits per account\"). The API behind each command: docs/api.md.";

/// Your account: sign up, two-factor sign-in, devices, shares.
#[derive(Debug, clap::Args)]
#[command(after_help = SIGN_IN_HELP)]
pub struct AccountArgs {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    what: AccountCmd,
}

#[derive(Debug, clap::Subcommand)]
enum AccountCmd {
    /// Create your account (--user NAME). The invitation link's token
    /// (hgi_...) is read from HUSHGATE_INVITATION or asked for (or the
    /// first line of standard input, before the password); the new
    /// password is asked for twice, or read from HUSHGATE_PASSWORD.
    Signup {
        /// Sign up without an invitation (only where the operator made
        /// sign-up open).
        #[arg(long)]
        no_invitation: bool,
    },
    /// Your account: servers you own, two-factor sign-in, recovery codes left.
    Show,
    /// Take the share an invitation link gives (token from
    /// HUSHGATE_INVITATION, or asked for after the password).
    Accept,
    /// Servers shared with you, and how to connect to each.
    Shares,
    /// Your live admissions.
    Admissions,
    /// What happened to your account (logins, devices, shares).
    Audit {
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Two-factor sign-in (TOTP).
    #[command(subcommand)]
    Totp(TotpCmd),
    /// The devices you signed in from (each `hushgate connect` machine).
    #[command(subcommand)]
    Devices(DevicesCmd),
}

#[derive(Debug, clap::Subcommand)]
enum TotpCmd {
    /// Start enrolling an authenticator app: prints the secret, its
    /// otpauth:// link and a QR code to scan. Nothing changes until
    /// `totp confirm` with a code from the app.
    Enrol,
    /// Turn two-factor sign-in on with the app's current code (asked for,
    /// or the line after the password; HUSHGATE_TOTP_CONFIRM): prints ten
    /// recovery codes, shown once.
    Confirm,
    /// Turn two-factor sign-in off. Needs a code other than the one the
    /// login used (wait for the next one) or a recovery code (asked for,
    /// or the next line of standard input; HUSHGATE_TOTP_CONFIRM).
    Disable,
}

#[derive(Debug, clap::Subcommand)]
enum DevicesCmd {
    /// Your devices: id, name, registered, last used.
    List,
    /// Give a device a name owners recognise when approving it.
    Rename {
        #[arg(value_name = "ID")]
        id: String,
        #[arg(value_name = "NAME")]
        name: String,
    },
    /// Remove a device: its logins and admissions end, and its device file
    /// no longer works (it is not registered again by itself).
    Remove {
        #[arg(value_name = "ID")]
        id: String,
    },
}

/// Servers you own: register, policy, sharing, devices, admissions, audit.
///
/// Any account may register servers (within the operator's limit) and so
/// become their owner; a server named here that is not yours is "no
/// server named ...", exactly like one that does not exist.
#[derive(Debug, clap::Args)]
#[command(after_help = SIGN_IN_HELP)]
pub struct ServersArgs {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    what: ServersCmd,
}

#[derive(Debug, clap::Subcommand)]
enum ServersCmd {
    /// Your servers: gateway online or offline, last seen, endpoint, services.
    List,
    /// Register a server: prints the one-time enrollment token for its
    /// gateway (HUSHGATE_ENROLL_TOKEN of `hushgate gateway`).
    Add {
        #[arg(value_name = "NAME")]
        name: String,
        /// Source binding: exact (default), prefix:V4,V6 or first-handshake.
        #[arg(long, value_name = "POLICY")]
        binding: Option<String>,
        /// Admission lifetime in seconds.
        #[arg(long, value_name = "SECS")]
        admission_ttl: Option<u64>,
    },
    /// One server's status and policy.
    Show {
        #[arg(value_name = "NAME")]
        name: String,
    },
    /// Change a server's policy; only what you give changes.
    Set {
        #[arg(value_name = "NAME")]
        name: String,
        #[arg(long, value_name = "POLICY")]
        binding: Option<String>,
        #[arg(long, value_name = "SECS")]
        admission_ttl: Option<u64>,
        #[arg(long, value_name = "N")]
        max_admissions_per_user: Option<u32>,
        /// Allow direct (firewall-only) access: on or off.
        #[arg(long, value_name = "on|off", value_parser = on_off)]
        direct: Option<bool>,
        /// Require two-factor sign-in for access: on or off.
        #[arg(long, value_name = "on|off", value_parser = on_off)]
        require_2fa: Option<bool>,
        /// Each new device waits for your approval: on or off.
        #[arg(long, value_name = "on|off", value_parser = on_off)]
        approve_devices: Option<bool>,
    },
    /// Remove a server: its admissions end at the gateway first.
    Remove {
        #[arg(value_name = "NAME")]
        name: String,
    },
    /// A new enrollment token (a gateway that lost its state, or a new one).
    Token {
        #[arg(value_name = "NAME")]
        name: String,
        /// Also make the current gateway credential stop working now.
        #[arg(long)]
        revoke_credential: bool,
    },
    /// Who the server is shared with.
    Shares {
        #[arg(value_name = "NAME")]
        name: String,
    },
    /// Share the server with an account by name.
    Share {
        #[arg(value_name = "NAME")]
        name: String,
        #[arg(value_name = "USER")]
        account: String,
        /// Only this service (repeatable; default all).
        #[arg(long, value_name = "SERVICE")]
        service: Vec<String>,
        /// Also allow direct (firewall-only) access.
        #[arg(long)]
        direct: bool,
    },
    /// End a share: the user's admissions there end at once.
    Unshare {
        #[arg(value_name = "NAME")]
        name: String,
        #[arg(value_name = "USER")]
        account: String,
    },
    /// Create an invitation link (its token is shown once).
    Invite {
        #[arg(value_name = "NAME")]
        name: String,
        /// How many accounts may use it [default: 1].
        #[arg(long, value_name = "N")]
        uses: Option<u32>,
        /// How long it works, in seconds [default: 7 days].
        #[arg(long, value_name = "SECS")]
        ttl: Option<u64>,
        /// Only this service (repeatable; default all).
        #[arg(long, value_name = "SERVICE")]
        service: Vec<String>,
        #[arg(long)]
        direct: bool,
    },
    /// The server's live invitation links.
    Invitations {
        #[arg(value_name = "NAME")]
        name: String,
    },
    /// Revoke an invitation link.
    Uninvite {
        #[arg(value_name = "NAME")]
        name: String,
        #[arg(value_name = "ID")]
        id: String,
    },
    /// Devices that asked for the server (pending, approved, denied).
    Devices {
        #[arg(value_name = "NAME")]
        name: String,
    },
    /// Approve a device waiting for the server.
    Approve {
        #[arg(value_name = "NAME")]
        name: String,
        #[arg(value_name = "DEVICE")]
        device: String,
    },
    /// Deny a device: what it holds on the server ends.
    Deny {
        #[arg(value_name = "NAME")]
        name: String,
        #[arg(value_name = "DEVICE")]
        device: String,
    },
    /// Live admissions on the server: user, source, tunnel address, expiry.
    Admissions {
        #[arg(value_name = "NAME")]
        name: String,
    },
    /// End an admission on one of your servers at once.
    Revoke {
        #[arg(value_name = "ADMISSION")]
        id: String,
    },
    /// The server's audit log, oldest first.
    Audit {
        #[arg(value_name = "NAME")]
        name: String,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
}

fn on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" | "true" | "yes" => Ok(true),
        "off" | "false" | "no" => Ok(false),
        _ => Err(format!("'{s}': say on or off")),
    }
}

fn binding(given: &Option<String>) -> anyhow::Result<Option<BindingPolicy>> {
    given
        .as_deref()
        .map(|b| b.parse().map_err(|e| anyhow::anyhow!("--binding: {e}")))
        .transpose()
}

/// A path segment (names and ids are plain, but say so to the URL).
fn seg(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.~".contains(c) {
                c.to_string()
            } else {
                let mut b = [0; 4];
                c.encode_utf8(&mut b)
                    .bytes()
                    .map(|x| format!("%{x:02X}"))
                    .collect()
            }
        })
        .collect()
}

const CALL_TIMEOUT: Duration = Duration::from_secs(30);

struct Api(ControlClient);

impl Api {
    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> anyhow::Result<T> {
        Ok(self.0.call(method, path, body, CALL_TIMEOUT).await?)
    }
    async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.call::<(), T>(Method::GET, path, None).await
    }
    async fn delete(&self, path: &str) -> anyhow::Result<()> {
        self.call::<(), ()>(Method::DELETE, path, None).await
    }
}

/// The control plane and user the flags (over the profile) name.
fn target(c: &Conn) -> anyhow::Result<(ControlClient, String)> {
    let saved = match &c.profile {
        Some(name) => super::profile::load(&super::profile::dir()?, name)?
            .with_context(|| format!("no profile '{name}' (hushgate status lists them)"))?,
        None => Default::default(),
    };
    let Some(url) = c.control.clone().or(saved.control) else {
        bail!("say which control plane: --control URL (with --ca FILE), or --profile NAME");
    };
    let Some(user) = c.user.clone().or(saved.user) else {
        bail!("say who you are: --user NAME, or --profile NAME");
    };
    let trust = match c.ca.clone().or(saved.ca) {
        Some(ca) => Trust::from_ca_file(&ca)?,
        None => Trust::PublicRoots,
    };
    Ok((ControlClient::new(&url, trust)?, user))
}

/// Logs in (password, and the second factor when the account has one).
async fn signed_in(c: &Conn) -> anyhow::Result<(Api, String)> {
    let (client, user) = target(c)?;
    let password =
        super::read_secret("HUSHGATE_PASSWORD", "password").context("reading the password")?;
    let totp = SecondFactor::from_flag(c.totp_stdin)?;
    let r = login(&client, &user, &password, &totp).await?;
    Ok((Api(client.with_bearer(&r.token)), user))
}

pub async fn account(a: AccountArgs) -> anyhow::Result<()> {
    let json = a.conn.json;
    if let AccountCmd::Signup { no_invitation } = a.what {
        let (client, user) = target(&a.conn)?;
        let invitation = if no_invitation {
            None
        } else {
            Some(super::read_secret(
                "HUSHGATE_INVITATION",
                "invitation token (hgi_...)",
            )?)
        };
        let password = super::read_new_secret("HUSHGATE_PASSWORD", "new password")?;
        let u: UserInfo = Api(client)
            .call(
                Method::POST,
                "/v1/signup",
                Some(&SignupRequest {
                    username: user,
                    password,
                    invitation,
                }),
            )
            .await?;
        println!("account '{}' created", u.username);
        return Ok(());
    }
    let (api, user) = signed_in(&a.conn).await?;
    match a.what {
        AccountCmd::Signup { .. } => unreachable!("handled above"),
        AccountCmd::Show => {
            let me: AccountInfo = api.get("/v1/me").await?;
            if json {
                return print_json(&me);
            }
            println!(
                "account:        {}{}",
                me.username,
                if me.operator { " (operator)" } else { "" }
            );
            println!(
                "owns:           {}",
                if me.owns.is_empty() {
                    "-".into()
                } else {
                    me.owns.join(", ")
                }
            );
            println!(
                "two-factor:     {}",
                if me.totp {
                    format!("on ({} recovery codes left)", me.recovery_codes_left)
                } else {
                    "off (hushgate account totp enrol)".into()
                }
            );
        }
        AccountCmd::Accept => {
            let invitation =
                super::read_secret("HUSHGATE_INVITATION", "invitation token (hgi_...)")?;
            let g: GrantInfo = api
                .call(
                    Method::POST,
                    "/v1/invitations/accept",
                    Some(&AcceptInvitation { invitation }),
                )
                .await?;
            println!(
                "server '{}' is shared with you: hushgate connect --server {} ...",
                g.server, g.server
            );
        }
        AccountCmd::Shares => {
            let shares: Vec<GrantInfo> = api.get("/v1/me/shares").await?;
            if json {
                return print_json(&shares);
            }
            println!("{:<20} {:<7} SERVICES", "SERVER", "DIRECT");
            for g in &shares {
                println!(
                    "{:<20} {:<7} {}",
                    g.server,
                    g.direct,
                    g.services
                        .as_ref()
                        .map(|s| s.join(","))
                        .unwrap_or_else(|| "all".into())
                );
            }
            if let Some(g) = shares.first() {
                println!("connect with: hushgate connect --user {user} --server {} --control URL --ca ca.pem", g.server);
            }
        }
        AccountCmd::Admissions => {
            let adms: Vec<AdmissionInfo> = api.get("/v1/me/admissions").await?;
            if json {
                return print_json(&adms);
            }
            print_admissions(&adms);
        }
        AccountCmd::Audit { limit } => {
            let entries: Vec<AuditEntry> = api.get(&format!("/v1/me/audit?limit={limit}")).await?;
            if json {
                return print_json(&entries);
            }
            print_audit(&entries);
        }
        AccountCmd::Totp(TotpCmd::Enrol) => {
            let e: TotpEnrollment = api.call::<(), _>(Method::POST, "/v1/me/totp", None).await?;
            println!("secret: {}", e.secret);
            println!("link:   {}", e.otpauth_uri);
            use std::io::IsTerminal;
            if std::io::stdout().is_terminal() {
                print!("{}", super::qr::terminal(&e.otpauth_uri)?);
            }
            println!("add it to your authenticator app (scan the code or type the secret), then: hushgate account totp confirm");
        }
        AccountCmd::Totp(TotpCmd::Confirm) => {
            let code =
                super::read_secret("HUSHGATE_TOTP_CONFIRM", "code from the authenticator app")?;
            let r: RecoveryCodes = api
                .call(
                    Method::POST,
                    "/v1/me/totp/confirm",
                    Some(&TotpCode { code }),
                )
                .await?;
            println!("two-factor sign-in is on. Recovery codes (each works once instead of a code; keep them somewhere safe, they are not shown again):");
            for c in r.codes {
                println!("  {c}");
            }
        }
        AccountCmd::Totp(TotpCmd::Disable) => {
            let code = super::read_secret(
                "HUSHGATE_TOTP_CONFIRM",
                "a code not used for this login (the next one), or a recovery code",
            )?;
            api.call::<_, ()>(Method::DELETE, "/v1/me/totp", Some(&TotpCode { code }))
                .await?;
            println!("two-factor sign-in is off; servers that require it refuse your access until you turn it on again");
        }
        AccountCmd::Devices(DevicesCmd::List) => {
            let devices: Vec<DeviceInfo> = api.get("/v1/me/devices").await?;
            if json {
                return print_json(&devices);
            }
            println!("{:<28} {:<32} {:<21} LAST USED", "ID", "NAME", "REGISTERED");
            for d in devices {
                println!(
                    "{:<28} {:<32} {:<21} {}",
                    d.id,
                    d.name,
                    ts(d.created_at),
                    d.last_used.map(ts).unwrap_or_else(|| "-".into())
                );
            }
        }
        AccountCmd::Devices(DevicesCmd::Rename { id, name }) => {
            let d: DeviceInfo = api
                .call(
                    Method::PATCH,
                    &format!("/v1/me/devices/{}", seg(&id)),
                    Some(&RenameDevice { name }),
                )
                .await?;
            println!("device {} is now '{}'", d.id, d.name);
        }
        AccountCmd::Devices(DevicesCmd::Remove { id }) => {
            api.delete(&format!("/v1/me/devices/{}", seg(&id))).await?;
            println!("device {id} removed: its logins and admissions have ended, and its device file no longer works");
        }
    }
    Ok(())
}

pub async fn servers(a: ServersArgs) -> anyhow::Result<()> {
    let json = a.conn.json;
    let (api, _) = signed_in(&a.conn).await?;
    let server = |n: &str| format!("/v1/servers/{}", seg(n));
    match a.what {
        ServersCmd::List => {
            let list: Vec<ServerInfo> = api.get("/v1/servers").await?;
            if json {
                return print_json(&list);
            }
            print_servers(&list);
        }
        ServersCmd::Add {
            name,
            binding: b,
            admission_ttl,
        } => {
            let req = CreateServer {
                name,
                binding: binding(&b)?.unwrap_or_default(),
                admission_ttl_secs: admission_ttl,
            };
            let s: CreatedServer = api.call(Method::POST, "/v1/servers", Some(&req)).await?;
            println!("server '{}' registered", s.name);
            super::admin::print_enrollment_token(&s.enrollment_token, s.enrollment_expires_at);
        }
        ServersCmd::Show { name } => {
            let s: ServerInfo = api.get(&server(&name)).await?;
            if json {
                return print_json(&s);
            }
            print_servers(std::slice::from_ref(&s));
            println!(
                "    policy: binding {}, admissions last {} s, at most {} per user, direct {}, two-factor {}, device approval {}",
                s.binding,
                s.admission_ttl_secs,
                s.max_admissions_per_user,
                words(s.direct_mode),
                words(s.require_2fa),
                words(s.approve_devices)
            );
        }
        ServersCmd::Set {
            name,
            binding: b,
            admission_ttl,
            max_admissions_per_user,
            direct,
            require_2fa,
            approve_devices,
        } => {
            let policy = ServerPolicy {
                binding: binding(&b)?,
                admission_ttl_secs: admission_ttl,
                max_admissions_per_user,
                direct_mode: direct,
                require_2fa,
                approve_devices,
                ..Default::default()
            };
            let s: ServerInfo = api
                .call(Method::PATCH, &server(&name), Some(&policy))
                .await?;
            println!(
                "server '{}': binding {}, direct {}, two-factor {}, device approval {}",
                s.name,
                s.binding,
                words(s.direct_mode),
                words(s.require_2fa),
                words(s.approve_devices)
            );
        }
        ServersCmd::Remove { name } => {
            let r: RemovedServer = api
                .call::<(), _>(Method::DELETE, &server(&name), None)
                .await?;
            println!(
                "server '{name}' removed; {} admission(s) ended",
                r.admissions_ended
            );
        }
        ServersCmd::Token {
            name,
            revoke_credential,
        } => {
            let t: IssuedEnrollmentToken = api
                .call(
                    Method::POST,
                    &format!("{}/enrollment-tokens", server(&name)),
                    Some(&NewEnrollmentToken {
                        ttl_secs: None,
                        revoke_credential,
                    }),
                )
                .await?;
            super::admin::print_enrollment_token(&t.token, Some(t.expires_at));
        }
        ServersCmd::Shares { name } => {
            let shares: Vec<GrantInfo> = api.get(&format!("{}/shares", server(&name))).await?;
            if json {
                return print_json(&shares);
            }
            println!("{:<24} {:<7} SERVICES", "USER", "DIRECT");
            for g in shares {
                println!(
                    "{:<24} {:<7} {}",
                    g.username,
                    g.direct,
                    g.services
                        .map(|s| s.join(","))
                        .unwrap_or_else(|| "all".into())
                );
            }
        }
        ServersCmd::Share {
            name,
            account: user,
            service,
            direct,
        } => {
            let g: GrantInfo = api
                .call(
                    Method::POST,
                    &format!("{}/shares", server(&name)),
                    Some(&ShareRequest {
                        username: user,
                        services: (!service.is_empty()).then_some(service),
                        direct,
                    }),
                )
                .await?;
            for w in &g.warnings {
                eprintln!("warning: {w}");
            }
            println!("server '{}' is shared with '{}'", g.server, g.username);
        }
        ServersCmd::Unshare {
            name,
            account: user,
        } => {
            api.delete(&format!("{}/shares/{}", server(&name), seg(&user)))
                .await?;
            println!("'{user}' can no longer reach '{name}'; their admissions there have ended");
        }
        ServersCmd::Invite {
            name,
            uses,
            ttl,
            service,
            direct,
        } => {
            let i: IssuedInvitation = api
                .call(
                    Method::POST,
                    &format!("{}/invitations", server(&name)),
                    Some(&NewInvitation {
                        services: (!service.is_empty()).then_some(service),
                        direct,
                        ttl_secs: ttl,
                        uses,
                    }),
                )
                .await?;
            println!(
                "invitation {} ({} use(s), valid until {}); send this token to your friend, it is not shown again:",
                i.id,
                i.uses,
                ts(i.expires_at)
            );
            println!("{}", i.token);
        }
        ServersCmd::Invitations { name } => {
            let list: Vec<InvitationInfo> =
                api.get(&format!("{}/invitations", server(&name))).await?;
            if json {
                return print_json(&list);
            }
            println!("{:<28} {:<9} {:<21} EXPIRES", "ID", "USES LEFT", "CREATED");
            for i in list {
                println!(
                    "{:<28} {:<9} {:<21} {}",
                    i.id,
                    i.uses_left,
                    ts(i.created_at),
                    ts(i.expires_at)
                );
            }
        }
        ServersCmd::Uninvite { name, id } => {
            api.delete(&format!("{}/invitations/{}", server(&name), seg(&id)))
                .await?;
            println!("invitation {id} revoked");
        }
        ServersCmd::Devices { name } => {
            let list: Vec<DeviceRequestInfo> =
                api.get(&format!("{}/devices", server(&name))).await?;
            if json {
                return print_json(&list);
            }
            println!(
                "{:<28} {:<16} {:<9} {:<21} NAME",
                "DEVICE", "USER", "STATE", "ASKED"
            );
            for d in list {
                println!(
                    "{:<28} {:<16} {:<9} {:<21} {}",
                    d.device_id,
                    d.username,
                    d.state,
                    ts(d.requested_at),
                    d.device_name
                );
            }
        }
        ServersCmd::Approve { name, device } => decide(&api, &name, &device, true).await?,
        ServersCmd::Deny { name, device } => decide(&api, &name, &device, false).await?,
        ServersCmd::Admissions { name } => {
            let adms: Vec<AdmissionInfo> =
                api.get(&format!("{}/admissions", server(&name))).await?;
            if json {
                return print_json(&adms);
            }
            print_admissions(&adms);
        }
        ServersCmd::Revoke { id } => {
            api.delete(&format!("/v1/admissions/{}", seg(&id))).await?;
            println!("admission {id} revoked");
        }
        ServersCmd::Audit { name, limit } => {
            let entries: Vec<AuditEntry> = api
                .get(&format!("{}/audit?limit={limit}", server(&name)))
                .await?;
            if json {
                return print_json(&entries);
            }
            print_audit(&entries);
        }
    }
    Ok(())
}

/// The owner's decision on a device that asked for server `name`.
async fn decide(api: &Api, name: &str, device: &str, approve: bool) -> anyhow::Result<()> {
    let d: DeviceRequestInfo = api
        .call(
            Method::PUT,
            &format!("/v1/servers/{}/devices/{}", seg(name), seg(device)),
            Some(&DeviceDecision { approve }),
        )
        .await?;
    println!(
        "device {} ('{}' of {}) {} for '{name}'",
        d.device_id, d.device_name, d.username, d.state
    );
    Ok(())
}

fn words(on: bool) -> &'static str {
    if on {
        "on"
    } else {
        "off"
    }
}
