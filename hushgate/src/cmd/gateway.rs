use anyhow::{bail, Context};
use control_client::Trust;
use gateway::{Gateway, GatewayConfig, ServiceSpec};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Run the gateway beside the media server, or inspect a running one.
///
/// The gateway listens on one UDP port (the only port the router forwards)
/// and answers nobody the control plane has not admitted. It needs no
/// inbound TCP port: it keeps an outbound HTTPS connection to the control
/// plane. On the first start it enrolls with the one-time token from
/// 'hushgate admin server add' (HUSHGATE_ENROLL_TOKEN or --enroll-file);
/// its key and credential then live in --state (mode 0600).
///
/// Every flag can also come from a TOML file (--config) with the same
/// names, e.g. `control = "https://..."`, `services = ["plex=32400:127.0.0.1:32400"]`.
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
    /// Show peers, traffic and drops of the gateway running with --state.
    Status {
        /// The gateway's state folder.
        #[arg(long, value_name = "DIR")]
        state: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, clap::Args, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RunArgs {
    /// TOML file with any of these settings; flags override it.
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// Control plane URL, e.g. https://control.example:8443.
    #[arg(long, value_name = "URL")]
    control: Option<String>,
    /// CA certificate of the control plane to pin (its ca.pem); without it
    /// the public web PKI is trusted.
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// State folder for the key and credential.
    #[arg(long, value_name = "DIR")]
    state: Option<PathBuf>,
    /// File holding the one-time enrollment token ('-' for standard input);
    /// or set HUSHGATE_ENROLL_TOKEN. Needed on the first start only.
    #[arg(long, value_name = "FILE")]
    enroll_file: Option<PathBuf>,
    /// UDP address to listen on [default: 0.0.0.0:51820].
    #[arg(long, value_name = "ADDR")]
    listen_udp: Option<SocketAddr>,
    /// Address clients should send to (the router's public IP and the
    /// forwarded port); default: the address the control plane sees.
    #[arg(long, value_name = "IP:PORT")]
    public_endpoint: Option<SocketAddr>,
    /// A service: NAME=PORT:UPSTREAM, e.g. plex=32400:127.0.0.1:32400 (repeatable).
    #[arg(long = "service", value_name = "SPEC")]
    #[serde(default)]
    services: Vec<String>,
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    match a.cmd {
        Some(Sub::Status { state, json }) => status(&state, json).await,
        None => serve(a.run).await,
    }
}

fn merged(cli: RunArgs) -> anyhow::Result<RunArgs> {
    let Some(path) = cli.config.clone() else {
        return Ok(cli);
    };
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read the config file {}", path.display()))?;
    let file: RunArgs = toml::from_str(&text)
        .with_context(|| format!("the config file {} is not valid", path.display()))?;
    Ok(RunArgs {
        config: cli.config,
        control: cli.control.or(file.control),
        ca: cli.ca.or(file.ca),
        state: cli.state.or(file.state),
        enroll_file: cli.enroll_file.or(file.enroll_file),
        listen_udp: cli.listen_udp.or(file.listen_udp),
        public_endpoint: cli.public_endpoint.or(file.public_endpoint),
        services: if cli.services.is_empty() {
            file.services
        } else {
            cli.services
        },
    })
}

fn enroll_token(file: Option<&Path>) -> anyhow::Result<Option<String>> {
    if let Ok(t) = std::env::var("HUSHGATE_ENROLL_TOKEN") {
        if !t.trim().is_empty() {
            return Ok(Some(t.trim().to_string()));
        }
    }
    match file {
        None => Ok(None),
        Some(p) if p == Path::new("-") => {
            super::read_secret("HUSHGATE_ENROLL_TOKEN", "enrollment token").map(Some)
        }
        Some(p) => Ok(Some(
            std::fs::read_to_string(p)
                .with_context(|| format!("cannot read the enrollment token from {}", p.display()))?
                .trim()
                .to_string(),
        )),
    }
}

async fn serve(cli: RunArgs) -> anyhow::Result<()> {
    let a = merged(cli)?;
    let Some(control) = a.control.clone() else {
        bail!("say where the control plane is: --control https://HOST:PORT");
    };
    let Some(state) = a.state.clone() else {
        bail!("give the gateway a state folder: --state DIR");
    };
    let services = a
        .services
        .iter()
        .map(|s| s.parse::<ServiceSpec>().map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let trust = match &a.ca {
        Some(ca) => Trust::from_ca_file(ca)?,
        None => Trust::PublicRoots,
    };
    let gw = Gateway::start(GatewayConfig {
        control_url: control.clone(),
        trust,
        state_dir: state.clone(),
        listen_udp: a.listen_udp.unwrap_or(([0, 0, 0, 0], 51820).into()),
        public_endpoint: a.public_endpoint,
        services: services.clone(),
        enroll_token: enroll_token(a.enroll_file.as_deref())?,
    })
    .await?;
    println!(
        "gateway listening on udp {} (key {}), control plane {control}",
        gw.udp_addr(),
        gw.public_key().fingerprint()
    );
    for s in &services {
        println!(
            "  service {} -> tunnel port {} -> {}",
            s.name, s.port, s.upstream
        );
    }
    if gw.wait_synced(std::time::Duration::from_secs(10)).await {
        println!(
            "in sync with the control plane; status: hushgate gateway status --state {}",
            state.display()
        );
    } else {
        println!("not in sync with the control plane yet; retrying in the background");
    }
    wait_for_stop().await;
    println!("stopping");
    gw.shutdown().await;
    Ok(())
}

async fn wait_for_stop() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

async fn status(state: &Path, json: bool) -> anyhow::Result<()> {
    use tokio::io::AsyncReadExt;
    let sock = state.join("status.sock");
    let mut conn = tokio::net::UnixStream::connect(&sock)
        .await
        .with_context(|| {
            format!(
                "no gateway answers at {}; is it running with --state {}?",
                sock.display(),
                state.display()
            )
        })?;
    let mut body = Vec::new();
    conn.read_to_end(&mut body).await?;
    if json {
        println!("{}", String::from_utf8_lossy(&body));
        return Ok(());
    }
    let r: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| anyhow::anyhow!("the gateway's status could not be read: {e}"))?;
    if r.is_null() {
        bail!("the gateway's data path did not answer");
    }
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".into(),
        other => other.to_string(),
    };
    println!(
        "server {}  udp {}  key {}  control {} ({})  feed version {}",
        text(&r["server"]),
        text(&r["udp"]),
        text(&r["public_key"]),
        text(&r["control_url"]),
        if r["control_connected"] == true {
            "connected"
        } else {
            "DISCONNECTED"
        },
        text(&r["acked_version"]),
    );
    if !r["last_control_error"].is_null() {
        println!(
            "  last control plane error: {}",
            text(&r["last_control_error"])
        );
    }
    let peers = r["gateway"]["peers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    println!("peers: {}", peers.len());
    for p in &peers {
        println!(
            "  {} {} from {} ({}) endpoint {}  handshakes {}  rx {} pkts/{} B  tx {} pkts/{} B  expires in {} s",
            text(&p["admission_id"]),
            text(&p["client_address"]),
            text(&p["source"]),
            text(&p["binding"]),
            text(&p["endpoint"]),
            text(&p["handshakes"]),
            text(&p["rx_packets"]),
            text(&p["rx_bytes"]),
            text(&p["tx_packets"]),
            text(&p["tx_bytes"]),
            text(&p["expires_in_secs"]),
        );
    }
    println!("drops: {}", r["gateway"]["drops"]);
    Ok(())
}
