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
    /// Control plane URL, e.g. https://control.example:8443.
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
    /// Show the audit log, oldest first.
    Audit {
        /// How many of the latest entries.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
}

#[derive(Debug, clap::Subcommand)]
enum UserCmd {
    /// Create a user; the password is read from standard input (or HUSHGATE_PASSWORD).
    Add {
        name: String,
        /// May use the admin API with their own login.
        #[arg(long)]
        admin: bool,
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
    },
    List,
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

fn print_json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn ts(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    let c = client(&a)?;
    match &a.what {
        What::User(UserCmd::Add { name, admin }) => {
            let password = super::read_secret("HUSHGATE_PASSWORD", "password")?;
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
        What::Server(ServerCmd::Add { name, binding, ttl }) => {
            let s = c
                .create_server(&CreateServer {
                    name: name.clone(),
                    binding: *binding,
                    admission_ttl_secs: *ttl,
                })
                .await?;
            if a.json {
                return print_json(&s);
            }
            println!("server '{}' created (binding {binding})", s.name);
            println!("enrollment token (one use; give it to the gateway via HUSHGATE_ENROLL_TOKEN or its --enroll-file):");
            println!("{}", s.enrollment_token);
        }
        What::Server(ServerCmd::List) => {
            let servers = c.list_servers().await?;
            if a.json {
                return print_json(&servers);
            }
            println!(
                "{:<20} {:<16} {:<9} {:<10} {:<24} SERVICES",
                "SERVER", "BINDING", "ENROLLED", "GATEWAY", "ENDPOINT"
            );
            for s in servers {
                let services: Vec<String> = s
                    .services
                    .iter()
                    .map(|x| format!("{}:{}", x.name, x.port))
                    .collect();
                println!(
                    "{:<20} {:<16} {:<9} {:<10} {:<24} {}",
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
                    services.join(",")
                );
            }
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
        What::Admission(AdmissionCmd::Revoke { id }) => {
            c.revoke(id).await?;
            println!("admission {id} revoked");
        }
        What::Audit { limit } => {
            let entries = c.audit(*limit).await?;
            if a.json {
                return print_json(&entries);
            }
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
    }
    Ok(())
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
