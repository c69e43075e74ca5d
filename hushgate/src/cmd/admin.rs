use anyhow::{bail, Context};
use control_client::{ControlClient, Trust};
use proto::api::*;
use proto::BindingPolicy;
use std::path::PathBuf;

/// Manage a running control plane. Changes take effect at once.
///
/// On the control plane's host, `--state DIR` is enough: the URL, CA and
/// admin token are read from that folder. From elsewhere give --control,
/// --ca and the token (HUSHGATE_ADMIN_TOKEN or --token-file).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The control plane's state folder (on its own host).
    #[arg(long, value_name = "DIR", global = true)]
    state: Option<PathBuf>,
    /// Control plane URL, e.g. https://control.example:8443. For replicas,
    /// several URLs separated by commas: when one cannot be reached, the
    /// next is used.
    #[arg(long, value_name = "URL", global = true)]
    control: Option<String>,
    /// CA certificate to pin (the ca.pem the control plane printed).
    #[arg(long, value_name = "FILE", global = true)]
    ca: Option<PathBuf>,
    /// File holding the admin token (else HUSHGATE_ADMIN_TOKEN, else STATE/admin-token).
    #[arg(long, value_name = "FILE", global = true)]
    token_file: Option<PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    what: What,
}

#[derive(Debug, clap::Subcommand)]
enum What {
    /// Users who may log in.
    #[command(subcommand)]
    User(UserCmd),
    /// Media servers, each with one gateway.
    #[command(subcommand)]
    Server(ServerCmd),
    /// Which user may reach which server.
    #[command(subcommand)]
    Grant(GrantCmd),
    /// Live admissions (authorized client sessions).
    #[command(subcommand)]
    Admission(AdmissionCmd),
    /// One-time enrollment tokens not used yet.
    #[command(subcommand)]
    Enrollment(EnrollmentCmd),
    /// Show the audit log, oldest first.
    Audit {
        /// How many of the latest entries.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
}

#[derive(Debug, clap::Subcommand)]
enum UserCmd {
    /// Create a user. You choose their password: on a terminal it is asked
    /// for twice and not shown; a script may pipe it on standard input or
    /// set HUSHGATE_PASSWORD. At least 8 characters.
    Add {
        name: String,
        /// May use the admin API with their own login.
        #[arg(long)]
        admin: bool,
    },
    /// Set a new password for a user (asked for like `user add`'s); their
    /// current logins end, their admissions stay.
    Passwd {
        name: String,
    },
    List,
    /// Delete a user, ending all their admissions.
    Remove {
        name: String,
    },
}

#[derive(Debug, clap::Subcommand)]
enum ServerCmd {
    /// Register a server; prints the one-time enrollment token for its gateway.
    Add {
        name: String,
        /// exact | prefix:V4,V6 | first-handshake: how strictly the UDP
        /// source must match the address the control plane saw.
        /// prefix:24,56 admits an IPv4 client's /24 and an IPv6 client's
        /// /56 (IPv4 16-32, IPv6 48-128 bits); prefix:N alone is IPv4's
        /// length with IPv6 /64 (or, for N of 48 or more, IPv6's length
        /// with IPv4 exact).
        #[arg(long, default_value = "exact")]
        binding: BindingPolicy,
        /// Admission lifetime in seconds (default: the control plane's --admission-ttl).
        #[arg(long, value_name = "SECS")]
        ttl: Option<u64>,
        /// Live admissions one user may hold on this server at once
        /// (default 8: every device of a household at once, with room for
        /// sessions that moved network and have not expired yet).
        #[arg(long, value_name = "N")]
        max_admissions_per_user: Option<u32>,
        /// How long the enrollment token is valid, in seconds (default: a day).
        #[arg(long, value_name = "SECS")]
        enrollment_ttl: Option<u64>,
    },
    List,
    /// Change a server's settings (for new admissions and renewals).
    Set {
        name: String,
        /// Admission lifetime in seconds.
        #[arg(long, value_name = "SECS")]
        ttl: Option<u64>,
        /// Live admissions one user may hold on this server at once.
        #[arg(long, value_name = "N")]
        max_admissions_per_user: Option<u32>,
    },
    /// Rename a server; its gateway, grants and admissions stay.
    Rename {
        name: String,
        new_name: String,
    },
    /// Remove a server: its admissions end (the gateway drops them), then
    /// its grants, enrollment tokens and gateway credential are deleted.
    Remove {
        name: String,
    },
    /// Print a new one-time enrollment token for an existing server: for a
    /// gateway that lost its state folder, a new host, or a credential to
    /// replace. The gateway that uses it gets a new credential, and the
    /// old one stops working.
    Reenroll {
        name: String,
        /// Make the current credential stop working now rather than when
        /// the token is used (for a credential that leaked).
        #[arg(long)]
        revoke_now: bool,
        /// How long the token is valid, in seconds (default: a day).
        #[arg(long, value_name = "SECS")]
        enrollment_ttl: Option<u64>,
    },
    /// Check now that the server's gateway is reachable from the Internet
    /// at its endpoint: the control plane admits a one-off key bound to
    /// its own address, performs a WireGuard handshake with the endpoint
    /// through the real path, and removes the admission. Prints the
    /// result and, when something is wrong, what to do.
    Check {
        name: String,
    },
    /// Make the server's gateway credential stop working now. The gateway
    /// keeps its admissions until they expire but gets no changes until it
    /// is enrolled again (`server reenroll`).
    RevokeCredential {
        name: String,
    },
}

#[derive(Debug, clap::Subcommand)]
enum EnrollmentCmd {
    /// Enrollment tokens not used yet, with their expiry.
    List,
    /// Make an enrollment token unusable.
    Revoke { id: String },
}

#[derive(Debug, clap::Subcommand)]
enum GrantCmd {
    /// Let USER reach SERVER (all services unless --service is given).
    Add {
        user: String,
        server: String,
        /// Limit to this service (repeatable).
        #[arg(long = "service", value_name = "NAME")]
        services: Vec<String>,
        /// Also allow direct (firewall-only) admissions.
        #[arg(long)]
        direct: bool,
    },
    List,
    /// Remove a grant and end the user's admissions on that server.
    Remove {
        user: String,
        server: String,
    },
}

#[derive(Debug, clap::Subcommand)]
enum AdmissionCmd {
    List,
    /// End an admission now; the gateway drops the client within a second.
    Revoke {
        id: String,
    },
}

fn client(a: &Args) -> anyhow::Result<ControlClient> {
    let from_state = |f: &str| a.state.as_ref().map(|d| d.join(f));
    let url = match (&a.control, from_state("control-url")) {
        (Some(u), _) => u.clone(),
        (None, Some(f)) => std::fs::read_to_string(&f)
            .with_context(|| {
                format!(
                    "cannot read {}; is the control plane running with this --state?",
                    f.display()
                )
            })?
            .trim()
            .to_string(),
        (None, None) => {
            bail!("say which control plane: --state DIR on its host, or --control URL --ca FILE")
        }
    };
    let trust = match (&a.ca, from_state("ca.pem")) {
        (Some(ca), _) => Trust::from_ca_file(ca)?,
        (None, Some(f)) if f.exists() => Trust::from_ca_file(&f)?,
        _ => Trust::PublicRoots,
    };
    let token = if let Ok(t) = std::env::var("HUSHGATE_ADMIN_TOKEN") {
        t
    } else {
        let f = a
            .token_file
            .clone()
            .or_else(|| from_state("admin-token"))
            .context("no admin token: set HUSHGATE_ADMIN_TOKEN, or pass --token-file or --state")?;
        std::fs::read_to_string(&f)
            .with_context(|| format!("cannot read the admin token from {}", f.display()))?
    };
    Ok(ControlClient::new(&url, trust)?.with_bearer(token.trim()))
}

pub fn print_json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

pub fn print_enrollment_token(token: &str, expires: Option<time::OffsetDateTime>) {
    println!(
        "enrollment token (one use{}; give it to the gateway via HUSHGATE_ENROLL_TOKEN or its --enroll-file):",
        expires
            .map(|t| format!(", valid until {}", ts(t)))
            .unwrap_or_default()
    );
    println!("{token}");
}

pub fn ts(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    let c = client(&a)?;
    match &a.what {
        What::User(UserCmd::Add { name, admin }) => {
            let password = super::read_new_secret("HUSHGATE_PASSWORD", "password")?;
            let u = c
                .create_user(&CreateUser {
                    username: name.clone(),
                    password,
                    admin: *admin,
                })
                .await?;
            if a.json {
                return print_json(&u);
            }
            println!(
                "user '{}' created{}",
                u.username,
                if u.admin { " (admin)" } else { "" }
            );
        }
        What::User(UserCmd::Passwd { name }) => {
            let password = super::read_new_secret("HUSHGATE_PASSWORD", "new password")?;
            c.set_password(name, &password).await?;
            println!("password of '{name}' changed; their current logins have ended");
        }
        What::User(UserCmd::List) => {
            let users = c.list_users().await?;
            if a.json {
                return print_json(&users);
            }
            println!("{:<24} {:<6} CREATED", "USER", "ADMIN");
            for u in users {
                println!("{:<24} {:<6} {}", u.username, u.admin, ts(u.created_at));
            }
        }
        What::User(UserCmd::Remove { name }) => {
            c.delete_user(name).await?;
            println!("user '{name}' removed; their admissions have ended");
        }
        What::Server(ServerCmd::Add {
            name,
            binding,
            ttl,
            max_admissions_per_user,
            enrollment_ttl,
        }) => {
            let s = c
                .create_server_with(
                    &CreateServer {
                        name: name.clone(),
                        binding: *binding,
                        admission_ttl_secs: *ttl,
                    },
                    &ServerOptions {
                        max_admissions_per_user: *max_admissions_per_user,
                        enrollment_ttl_secs: *enrollment_ttl,
                    },
                )
                .await?;
            if a.json {
                return print_json(&s);
            }
            println!("server '{}' created (binding {binding})", s.name);
            print_enrollment_token(&s.enrollment_token, s.enrollment_expires_at);
        }
        What::Server(ServerCmd::Set {
            name,
            ttl,
            max_admissions_per_user,
        }) => {
            if ttl.is_none() && max_admissions_per_user.is_none() {
                bail!("say what to change: --ttl SECS and/or --max-admissions-per-user N");
            }
            let s = c
                .update_server(
                    name,
                    &UpdateServer {
                        admission_ttl_secs: *ttl,
                        max_admissions_per_user: *max_admissions_per_user,
                        ..Default::default()
                    },
                )
                .await?;
            if a.json {
                return print_json(&s);
            }
            println!(
                "server '{}': admissions last {} s, at most {} per user",
                s.name, s.admission_ttl_secs, s.max_admissions_per_user
            );
        }
        What::Server(ServerCmd::Rename { name, new_name }) => {
            let s = c
                .update_server(
                    name,
                    &UpdateServer {
                        name: Some(new_name.clone()),
                        ..Default::default()
                    },
                )
                .await?;
            if a.json {
                return print_json(&s);
            }
            println!(
                "server '{name}' is now '{}'; clients must use the new name",
                s.name
            );
        }
        What::Server(ServerCmd::Remove { name }) => {
            let r = c.remove_server(name).await?;
            if a.json {
                return print_json(&r);
            }
            println!(
                "server '{}' removed; {} admissions ended{}",
                r.name,
                r.admissions_ended,
                if r.gateway_confirmed {
                    ""
                } else {
                    " (its gateway did not confirm: it keeps them at most until they expire)"
                }
            );
        }
        What::Server(ServerCmd::Reenroll {
            name,
            revoke_now,
            enrollment_ttl,
        }) => {
            let t = c
                .create_enrollment_token(
                    name,
                    &NewEnrollmentToken {
                        ttl_secs: *enrollment_ttl,
                        revoke_credential: *revoke_now,
                    },
                )
                .await?;
            if a.json {
                return print_json(&t);
            }
            if *revoke_now {
                println!("the gateway credential of '{name}' no longer works");
            }
            println!(
                "when the gateway enrolls with this token, its new credential replaces the current one"
            );
            print_enrollment_token(&t.token, Some(t.expires_at));
        }
        What::Server(ServerCmd::Check { name }) => {
            let v = c.check_server(name).await?;
            if a.json {
                return print_json(&v);
            }
            print_reachability(&v, "");
            if v.check.as_ref().is_some_and(|c| !c.reachable) {
                std::process::exit(1);
            }
        }
        What::Server(ServerCmd::RevokeCredential { name }) => {
            c.revoke_credential(name).await?;
            println!("the gateway credential of '{name}' no longer works; enroll the gateway again with a token from 'hushgate admin server reenroll {name}'");
        }
        What::Enrollment(EnrollmentCmd::List) => {
            let tokens = c.list_enrollment_tokens().await?;
            if a.json {
                return print_json(&tokens);
            }
            println!("{:<29} {:<20} {:<21} EXPIRES", "ID", "SERVER", "CREATED");
            for t in tokens {
                println!(
                    "{:<29} {:<20} {:<21} {}",
                    t.id,
                    t.server,
                    ts(t.created_at),
                    ts(t.expires_at)
                );
            }
        }
        What::Enrollment(EnrollmentCmd::Revoke { id }) => {
            c.revoke_enrollment_token(id).await?;
            println!("enrollment token {id} revoked");
        }
        What::Server(ServerCmd::List) => {
            let servers = c.list_servers().await?;
            if a.json {
                return print_json(&servers);
            }
            print_servers(&servers);
        }
        What::Grant(GrantCmd::Add {
            user,
            server,
            services,
            direct,
        }) => {
            let g = c
                .create_grant(&CreateGrant {
                    username: user.clone(),
                    server: server.clone(),
                    services: (!services.is_empty()).then(|| services.clone()),
                    direct: *direct,
                })
                .await?;
            if a.json {
                return print_json(&g);
            }
            for w in &g.warnings {
                eprintln!("warning: {w}");
            }
            println!(
                "'{}' may now reach '{}' ({})",
                g.username,
                g.server,
                g.services
                    .map(|s| s.join(","))
                    .unwrap_or_else(|| "all services".into())
            );
        }
        What::Grant(GrantCmd::List) => {
            let grants = c.list_grants().await?;
            if a.json {
                return print_json(&grants);
            }
            println!("{:<24} {:<20} {:<7} SERVICES", "USER", "SERVER", "DIRECT");
            for g in grants {
                println!(
                    "{:<24} {:<20} {:<7} {}",
                    g.username,
                    g.server,
                    g.direct,
                    g.services
                        .map(|s| s.join(","))
                        .unwrap_or_else(|| "all".into())
                );
            }
        }
        What::Grant(GrantCmd::Remove { user, server }) => {
            c.delete_grant(user, server).await?;
            println!("grant removed; '{user}' can no longer reach '{server}' and their admissions there have ended");
        }
        What::Admission(AdmissionCmd::List) => {
            let adms = c.list_admissions().await?;
            if a.json {
                return print_json(&adms);
            }
            print_admissions(&adms);
        }
        What::Admission(AdmissionCmd::Revoke { id }) => {
            c.revoke(id).await?;
            println!("admission {id} revoked");
        }
        What::Audit { limit } => {
            let entries = c.audit(*limit).await?;
            if a.json {
                return print_json(&entries);
            }
            print_audit(&entries);
        }
    }
    Ok(())
}

/// The servers table (`admin server list`, `servers list`).
pub fn print_servers(servers: &[ServerInfo]) {
    println!(
        "{:<20} {:<16} {:<9} {:<10} {:<24} {:<8} SERVICES",
        "SERVER", "BINDING", "ENROLLED", "GATEWAY", "ENDPOINT", "PER USER"
    );
    for s in servers {
        let services: Vec<String> = s
            .services
            .iter()
            .map(|x| format!("{}:{}", x.name, x.port))
            .collect();
        println!(
            "{:<20} {:<16} {:<9} {:<10} {:<24} {:<8} {}",
            s.name,
            s.binding.to_string(),
            s.enrolled,
            if s.gateway_connected {
                "online"
            } else {
                "offline"
            },
            s.gateway_endpoint
                .map(|e| e.to_string())
                .unwrap_or_else(|| "-".into()),
            s.max_admissions_per_user,
            services.join(",")
        );
        if !s.gateway_connected {
            println!(
                "    gateway last seen: {}",
                s.gateway_last_seen
                    .map(ts)
                    .unwrap_or_else(|| "never".into())
            );
        }
        if let Some(m) = &s.port_mapping {
            println!("    port mapping: {}", mapping_words(m));
        }
        print_reachability(&s.reachability, "    ");
    }
}

/// The admissions table.
pub fn print_admissions(adms: &[AdmissionInfo]) {
    println!(
        "{:<29} {:<14} {:<14} {:<8} {:<40} {:<15} EXPIRES",
        "ID", "USER", "SERVER", "STATE", "SOURCE", "TUNNEL ADDR"
    );
    for x in adms {
        println!(
            "{:<29} {:<14} {:<14} {:<8} {:<40} {:<15} {}",
            x.id,
            x.username,
            x.server,
            x.state,
            format!("{} ({})", x.source, x.binding),
            x.client_address
                .map(|c| c.to_string())
                .unwrap_or_else(|| "-".into()),
            ts(x.expires_at)
        );
    }
}

/// Audit entries, one a line.
pub fn print_audit(entries: &[AuditEntry]) {
    for e in entries {
        println!(
            "{} {:<15} user={} server={} source={} {} {}",
            ts(e.at),
            e.event,
            e.username.as_deref().unwrap_or("-"),
            e.server.as_deref().unwrap_or("-"),
            e.source.as_deref().unwrap_or("-"),
            e.admission_id.as_deref().unwrap_or(""),
            e.detail
        );
    }
}

/// The port mapping in one line, as the gateway last reported it.
pub fn mapping_words(m: &proto::reach::MappingReport) -> String {
    use proto::reach::MappingState::*;
    let via = m.protocol.map(|p| format!(" with {p}")).unwrap_or_default();
    let router = m.router.map(|r| format!(" on {r}")).unwrap_or_default();
    match m.state {
        Off => "off (forwarded by hand)".into(),
        Pending => format!("asking the router{router}"),
        Mapped => format!(
            "mapped{router}{via}: {}{}",
            m.external.map(|e| e.to_string()).unwrap_or_default(),
            m.lease_secs
                .map(|s| format!(", lease {s} s"))
                .unwrap_or_default()
        ),
        Refused => format!(
            "refused{router}{via}{}",
            m.error
                .as_ref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        ),
        NoProtocol => format!("no router{router} answered PCP, NAT-PMP or UPnP"),
        NoRouter => "no IPv4 default router to ask".into(),
    }
}

/// The last reachability check and its diagnosis, indented by `pad`.
pub fn print_reachability(v: &proto::reach::ReachabilityView, pad: &str) {
    match &v.check {
        Some(c) => println!(
            "{pad}reachability: {} (checked {}{})",
            c.summary(),
            ts(c.checked_at),
            c.from.map(|f| format!(" from {f}")).unwrap_or_default()
        ),
        None => println!("{pad}reachability: not checked yet"),
    }
    for d in &v.diagnosis {
        println!("{pad}  problem: {}", d.problem);
        println!("{pad}  what to do: {}", d.advice);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        admin: Args,
    }

    fn binding(given: &str) -> Result<BindingPolicy, String> {
        let cli = Cli::try_parse_from(["admin", "server", "add", "den", "--binding", given])
            .map_err(|e| e.to_string())?;
        match cli.admin.what {
            What::Server(ServerCmd::Add { binding, .. }) => Ok(binding),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn server_add_takes_a_binding_length_per_family() {
        assert_eq!(binding("prefix:24,56").unwrap().to_string(), "prefix:24,56");
        assert_eq!(binding("prefix:24").unwrap().to_string(), "prefix:24,64");
        assert_eq!(binding("exact").unwrap(), BindingPolicy::Exact);
        let e = binding("prefix:24,32").unwrap_err();
        assert!(e.contains("IPv6 binding prefix must be 48-128"), "{e}");
        let e = binding("prefix:40").unwrap_err();
        assert!(e.contains("ambiguous") && e.contains("prefix:24,56"), "{e}");
    }
}
