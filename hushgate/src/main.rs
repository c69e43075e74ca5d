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
plane), `admin` (manage it), `gateway` (beside the media server), `connect` (the client \
shim); `demo` shows them all working together on loopback.",
    after_help = "Passwords and tokens never go on the command line: they are typed when asked \
(not shown), piped on standard input, or set in HUSHGATE_PASSWORD / HUSHGATE_ENROLL_TOKEN. \
Logging: set RUST_LOG (e.g. RUST_LOG=debug). Docs: README.md and docs/ in the repository."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the control plane (HTTPS API; state in SQLite, or in PostgreSQL shared by replicas).
    Control(cmd::control::Args),
    /// Manage a running control plane: users, servers, grants, admissions, audit log.
    Admin(cmd::admin::Args),
    /// Run the gateway beside the media server (or `gateway status`).
    Gateway(cmd::gateway::Args),
    /// See the whole flow work on loopback, narrated and checked.
    Demo(cmd::demo::Args),
    /// Reach a server as a client: log in, get admitted, open a local port for the player.
    Connect(cmd::connect::Args),
}

/// What `hushgate connect` logs unless RUST_LOG says otherwise: a client
/// user needs hushgate's own messages, not the internals of the libraries
/// under it (boringtun's timer warnings, TCP stack traces).
const CLIENT_LOG: &str =
    "warn,hushgate=info,hushgate_client_shim=info,boringtun=off,smoltcp=off,hushgate_netstack=error";

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // The demo narrates on its own; its components' logs would only
    // interleave with the story unless asked for with RUST_LOG.
    let default_filter = match cli.command {
        Command::Demo(_) => "error",
        Command::Connect(_) => CLIENT_LOG,
        _ => "info",
    };
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter)),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, not in journald,
        // files or pipes.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
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
}
