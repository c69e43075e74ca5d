use anyhow::Context;
use client_shim::{Credentials, EndReason, Session, SessionEvent, ShimConfig, Trust};
use std::net::SocketAddr;
use std::path::PathBuf;
use tokio::sync::broadcast::error::RecvError;

/// Reach a media server through its hushgate gateway: log in, get
/// admitted with a fresh ephemeral key, and open a local port that
/// behaves like the server. Point the player at the printed address.
///
/// The password is read from HUSHGATE_PASSWORD or standard input, never
/// from the command line. Runs until Ctrl-C, revocation or failure.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Control plane URL, e.g. https://control.example:8443.
    #[arg(long, value_name = "URL")]
    control: String,
    /// CA certificate to pin (the ca.pem the control plane printed);
    /// without it the public web roots are trusted.
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// Your user name at the control plane.
    #[arg(long, value_name = "NAME")]
    user: String,
    /// The media server's name.
    #[arg(long, value_name = "NAME")]
    server: String,
    /// The service to reach (default: the first one offered, e.g. plex).
    #[arg(long, value_name = "NAME")]
    service: Option<String>,
    /// Local address for the player.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:32400")]
    listen: SocketAddr,
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    let trust = match &a.ca {
        Some(path) => Trust::from_ca_file(path)?,
        None => Trust::PublicRoots,
    };
    let password =
        super::read_secret("HUSHGATE_PASSWORD", "password").context("reading the password")?;
    let session = Session::connect(ShimConfig {
        control_url: a.control.clone(),
        trust,
        credentials: Credentials::Password {
            user: a.user.clone(),
            password,
        },
        server: a.server.clone(),
        service: a.service.clone(),
        listen: a.listen,
    })
    .await?;
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
    let end = loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break None,
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
        Some(EndReason::Revoked { message }) => {
            anyhow::bail!("access to server '{}' was revoked: {message}", a.server)
        }
        Some(EndReason::Failed { message }) => anyhow::bail!("the session ended: {message}"),
    }
}

fn when(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}
