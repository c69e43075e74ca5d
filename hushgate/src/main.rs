//! `hushgate`: the one binary of hushgate. Each role is a subcommand; the
//! work itself lives in the library crates (`control`, `gateway`,
//! `client-shim`), this file only parses flags and prints.
#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};

mod cmd;

#[derive(Debug, Parser)]
#[command(
    name = "hushgate",
    version,
    about = "Reach your home media server from the Internet without an open TCP port",
    long_about = "hushgate hides a media server (Plex, Jellyfin, Emby, ...) behind a UDP port that \
answers nobody. A control plane authenticates users and pushes each authorized client's \
ephemeral WireGuard key, bound to its source address, to the gateway beside the media server. \
Only then does the client learn how to reach the gateway.\n\nRoles: `control` (the control \
plane), `admin` (the operator manages it), `gateway` (beside the media server), `connect` \
(the client shim); `account` and `servers` are what users and owners do with their own \
credentials; `demo` shows them all working together on loopback.",
    after_help = "Passwords and tokens never go on the command line: they are typed when asked \
(not shown), piped on standard input, or set in HUSHGATE_PASSWORD / HUSHGATE_ENROLL_TOKEN. \
Logging: set RUST_LOG (e.g. RUST_LOG=debug). Docs: README.md and docs/ in the repository."
)]
struct Cli {
    /// Log lines as text (for people and journald) or as JSON objects, one
    /// per line, for log shippers (each field its own key: `admission`,
    /// `user`, `server`, ...).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "HUSHGATE_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the control plane (HTTPS API and web console at https://HOST:8443/; state in SQLite, or in PostgreSQL shared by replicas).
    Control(cmd::control::Args),
    /// Manage a running control plane: users, servers, grants, admissions, audit log.
    Admin(cmd::admin::Args),
    /// Run the gateway beside the media server (or `gateway status`).
    Gateway(cmd::gateway::Args),
    /// See the whole flow work on loopback, narrated and checked.
    Demo(cmd::demo::Args),
    /// Reach a server as a client: log in, get admitted, open a local port for the player.
    Connect(cmd::connect::Args),
    /// Your account with your own credentials: sign up, two-factor sign-in, devices, shares.
    Account(cmd::account::AccountArgs),
    /// Servers you own: register, policy, shares, invitations, device approval, admissions, audit.
    Servers(cmd::account::ServersArgs),
    /// Client side: list the connect profiles and the session each runs now.
    Status {
        /// Only this profile.
        #[arg(value_name = "PROFILE")]
        profile: Option<String>,
    },
    /// Client side: end a profile's running session (its admission is
    /// revoked) and forget the profile.
    Logout {
        #[arg(value_name = "PROFILE")]
        profile: String,
    },
    /// Print the shell completion script for SHELL (bash, zsh, fish, elvish, powershell).
    ///
    /// E.g. `hushgate completions bash > /etc/bash_completion.d/hushgate`;
    /// the Debian package installs them for bash, zsh and fish.
    Completions {
        #[arg(value_name = "SHELL")]
        shell: clap_complete::Shell,
    },
    /// Print an example config file for ROLE (control, gateway, connect),
    /// every key with its comment: what deploy/ROLE.toml holds.
    ExampleConfig {
        #[arg(value_name = "ROLE", value_parser = ["control", "gateway", "connect"])]
        role: String,
    },
    /// Write the man pages (hushgate.1, hushgate-control.1, ...) into DIR.
    ///
    /// Generated from the same definition as --help, so they never
    /// disagree with it; the Debian package installs them.
    Man {
        #[arg(value_name = "DIR")]
        dir: std::path::PathBuf,
    },
}

/// The man pages of `hushgate` and of every subcommand, with the file
/// name each goes in (`hushgate-gateway-status.1`).
fn man_pages() -> Vec<(String, clap::Command)> {
    fn walk(prefix: &str, cmd: clap::Command, out: &mut Vec<(String, clap::Command)>) {
        let name = if prefix.is_empty() {
            cmd.get_name().to_string()
        } else {
            format!("{prefix}-{}", cmd.get_name())
        };
        for sub in cmd.get_subcommands() {
            if sub.get_name() != "help" {
                walk(&name, sub.clone(), out);
            }
        }
        let cmd = cmd.name(name.clone());
        out.push((format!("{name}.1"), cmd));
    }
    let mut out = Vec::new();
    let mut root = <Cli as clap::CommandFactory>::command();
    root.build();
    walk("", root, &mut out);
    out
}

fn write_man_pages(dir: &std::path::Path) -> anyhow::Result<()> {
    use anyhow::Context;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for (file, cmd) in man_pages() {
        let mut page = Vec::new();
        clap_mangen::Man::new(cmd).render(&mut page)?;
        let path = dir.join(&file);
        std::fs::write(&path, page).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// `--log-format json`: one object per line, the event's fields at the top
/// level beside `timestamp`, `level`, `target` and `message`.
fn json_logs() -> tracing_subscriber::fmt::SubscriberBuilder<
    tracing_subscriber::fmt::format::JsonFields,
    tracing_subscriber::fmt::format::Format<tracing_subscriber::fmt::format::Json>,
> {
    tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
}

/// What `hushgate connect` logs unless RUST_LOG says otherwise: a client
/// user needs hushgate's own messages, not the internals of the libraries
/// under it (boringtun's timer warnings, TCP stack traces).
const CLIENT_LOG: &str =
    "warn,hushgate=info,hushgate_client_shim=info,boringtun=off,smoltcp=off,hushgate_netstack=error";

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // Generated from the CLI definition: no runtime, no logging needed.
    match &cli.command {
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(*shell, &mut cmd, "hushgate", &mut std::io::stdout());
            return std::process::ExitCode::SUCCESS;
        }
        Command::ExampleConfig { role } => {
            print!("{}", cmd::config::example_for(role));
            return std::process::ExitCode::SUCCESS;
        }
        Command::Man { dir } => {
            return match write_man_pages(dir) {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("hushgate: {e:#}");
                    std::process::ExitCode::FAILURE
                }
            };
        }
        _ => {}
    }
    // The demo narrates on its own; its components' logs would only
    // interleave with the story unless asked for with RUST_LOG.
    let default_filter = match cli.command {
        Command::Demo(_) => "error",
        Command::Connect(_)
        | Command::Account(_)
        | Command::Servers(_)
        | Command::Status { .. }
        | Command::Logout { .. } => CLIENT_LOG,
        _ => "info",
    };
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    match cli.log_format {
        LogFormat::Text => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            // Colour codes only for a person at a terminal, not in
            // journald, files or pipes.
            .with_ansi(std::io::stderr().is_terminal())
            .init(),
        LogFormat::Json => json_logs()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init(),
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hushgate: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Command::Control(a) => cmd::control::run(a).await,
            Command::Admin(a) => cmd::admin::run(a).await,
            Command::Gateway(a) => cmd::gateway::run(a).await,
            Command::Demo(a) => cmd::demo::run(a).await,
            Command::Connect(a) => cmd::connect::run(a).await,
            Command::Account(a) => cmd::account::account(a).await,
            Command::Servers(a) => cmd::account::servers(a).await,
            Command::Status { profile } => {
                cmd::profile::status(profile.as_deref()).map(|text| print!("{text}"))
            }
            Command::Logout { profile } => cmd::profile::logout(&profile)
                .await
                .map(|text| print!("{text}")),
            Command::Completions { .. } | Command::Man { .. } | Command::ExampleConfig { .. } => {
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hushgate: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_client_log_leaves_library_internals_out() {
        let out = Captured::default();
        let w = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(super::CLIENT_LOG))
            .with_writer(move || w.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::error!(target: "boringtun::noise::timers", "CONNECTION_EXPIRED(REKEY_ATTEMPT_TIME)");
            tracing::warn!(target: "boringtun::noise::timers", "HANDSHAKE(REKEY_TIMEOUT)");
            tracing::warn!(target: "smoltcp::iface", "a stack trace");
            tracing::info!(target: "hushgate_client_shim::session", "renewed the admission");
            tracing::warn!(target: "hushgate_client_shim::session", "admission revoked");
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert!(!text.contains("REKEY"), "{text}");
        assert!(!text.contains("stack trace"), "{text}");
        assert!(text.contains("renewed the admission"), "{text}");
        assert!(text.contains("admission revoked"), "{text}");
    }

    #[test]
    fn json_logs_are_one_object_per_line_with_the_admission_as_a_field() {
        let out = Captured::default();
        let w = out.clone();
        let subscriber = super::json_logs().with_writer(move || w.clone()).finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(
                user = "alice",
                server = "den",
                admission = "adm_1",
                "access granted"
            );
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let line: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(line["admission"], "adm_1");
        assert_eq!(line["message"], "access granted");
        assert_eq!(line["level"], "INFO");
    }

    #[test]
    fn every_command_has_a_man_page_and_completions_name_them() {
        let dir = tempfile::tempdir().unwrap();
        super::write_man_pages(dir.path()).unwrap();
        for page in [
            "hushgate.1",
            "hushgate-control.1",
            "hushgate-gateway.1",
            "hushgate-gateway-status.1",
            "hushgate-gateway-filter-remove.1",
            "hushgate-admin.1",
            "hushgate-connect.1",
            "hushgate-account-totp-enrol.1",
            "hushgate-servers-approve.1",
        ] {
            let text = std::fs::read_to_string(dir.path().join(page))
                .unwrap_or_else(|e| panic!("{page}: {e}"));
            assert!(text.starts_with(".ie") || text.contains(".TH"), "{page}");
        }
        let gw = std::fs::read_to_string(dir.path().join("hushgate-gateway.1")).unwrap();
        assert!(
            gw.contains("metrics\\-listen"),
            "the gateway's page lists its flags"
        );
        let mut out = Vec::new();
        let mut cmd = <super::Cli as clap::CommandFactory>::command();
        clap_complete::generate(clap_complete::Shell::Bash, &mut cmd, "hushgate", &mut out);
        let bash = String::from_utf8(out).unwrap();
        for word in [
            "gateway",
            "--metrics-listen",
            "completions",
            "servers",
            "--totp-stdin",
        ] {
            assert!(
                bash.contains(word),
                "{word} missing from the bash completions"
            );
        }
    }
}
