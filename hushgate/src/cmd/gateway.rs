use anyhow::{bail, Context};
use control_client::Trust;
use gateway::{Gateway, GatewayConfig, GatewayFile, PrefilterMode, ServiceSpec};
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
/// In front of the port, the gateway keeps a kernel pre-filter: an
/// nftables table of its own (`inet hushgate_PORT`) that drops datagrams
/// from every source without a live admission before they reach the
/// process. The table stays when the gateway stops, so the port stays dark
/// (no ICMP port unreachable) while it is down; `hushgate gateway filter
/// remove --port PORT` deletes it.
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
    /// Show or remove the kernel pre-filter (nftables) a gateway left.
    Filter {
        #[command(subcommand)]
        cmd: FilterCmd,
    },
}

#[derive(Debug, clap::Subcommand)]
enum FilterCmd {
    /// Print the table of the gateway on --port, with its counters, or list
    /// every hushgate table.
    Show {
        /// The gateway's UDP port.
        #[arg(long, value_name = "PORT")]
        port: Option<u16>,
    },
    /// Delete the table of the gateway on --port (or every hushgate table
    /// with --all). Its ports then answer like any closed port again (ICMP
    /// port unreachable, TCP resets) while no gateway runs. Meant for a
    /// stopped gateway: a running one creates its table again at its next
    /// change.
    Remove {
        /// The gateway's UDP port.
        #[arg(long, value_name = "PORT", required_unless_present = "all")]
        port: Option<u16>,
        /// Every hushgate table on this host.
        #[arg(long, conflicts_with = "port")]
        all: bool,
    },
}

#[derive(Debug, clap::Args, Default)]
struct RunArgs {
    /// TOML file with any of these settings; flags override it.
    #[arg(long, value_name = "FILE")]
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
    services: Vec<String>,
    /// A direct (firewall-only) service, for players that cannot run a
    /// tunnel: NAME=PUBLIC_PORT:UPSTREAM, e.g. plex=32401:127.0.0.1:32400
    /// (repeatable). The gateway listens on TCP PUBLIC_PORT and the
    /// pre-filter opens it only to the source address of each direct
    /// admission, until it ends. Address-only admission: anyone behind the
    /// same NAT is admitted too. Needs the pre-filter.
    #[arg(long = "direct", value_name = "SPEC")]
    direct: Vec<String>,
    /// The kernel pre-filter: auto (use it when the gateway may change
    /// nftables, otherwise warn and filter in user space only), required
    /// (refuse to start without it) or off [default: auto].
    #[arg(long, value_name = "MODE")]
    prefilter: Option<String>,
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    match a.cmd {
        Some(Sub::Status { state, json }) => status(&state, json).await,
        Some(Sub::Filter { cmd }) => filter(cmd),
        None => serve(a.run).await,
    }
}

fn merged(cli: RunArgs) -> anyhow::Result<RunArgs> {
    let Some(path) = cli.config.clone() else {
        return Ok(cli);
    };
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read the config file {}", path.display()))?;
    let file = GatewayFile::parse(&text)
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
        direct: if cli.direct.is_empty() {
            file.direct
        } else {
            cli.direct
        },
        prefilter: cli.prefilter.or(file.prefilter),
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
    let direct = a
        .direct
        .iter()
        .map(|s| s.parse::<ServiceSpec>().map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let prefilter: PrefilterMode = a
        .prefilter
        .as_deref()
        .unwrap_or("auto")
        .parse()
        .map_err(anyhow::Error::msg)?;
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
        direct: direct.clone(),
        prefilter,
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
    for s in &direct {
        println!(
            "  direct service {} -> tcp port {} (admitted sources only) -> {}",
            s.name, s.port, s.upstream
        );
    }
    match gw.prefilter_table() {
        Some(t) => println!(
            "kernel pre-filter: nftables table inet {t} (stays after the gateway stops; remove with: hushgate gateway filter remove --port {})",
            gw.udp_addr().port()
        ),
        None => println!("kernel pre-filter: off (user-space filter only)"),
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
    println!("datagrams received: {}", text(&r["gateway"]["datagrams"]));
    println!("drops: {}", r["gateway"]["drops"]);
    match &r["prefilter"] {
        serde_json::Value::Null => println!("pre-filter: off (user-space filter only)"),
        f => println!(
            "pre-filter: table inet {}  elements {}  sets {}  open to all: {}  transactions {}{}",
            text(&f["table"]),
            text(&f["elements"]),
            text(&f["sets"]),
            text(&f["open"]),
            text(&f["transactions"]),
            match &f["last_error"] {
                serde_json::Value::Null => String::new(),
                e => format!("  LAST ERROR: {}", text(e)),
            }
        ),
    }
    if !r["direct"].is_null() {
        let d = &r["direct"];
        println!(
            "direct: services {}  admitted sources {}  connections {}  accepted {}  refused {}  reset {}",
            text(&d["services"]),
            text(&d["admitted_sources"]),
            text(&d["connections"]),
            text(&d["accepted"]),
            text(&d["refused"]),
            text(&d["reset"]),
        );
    }
    Ok(())
}

fn filter(cmd: FilterCmd) -> anyhow::Result<()> {
    use gateway::filter;
    match cmd {
        FilterCmd::Show { port: Some(port) } => {
            let text = filter::show_table(port).with_context(|| {
                format!(
                    "no pre-filter table for UDP port {port} (see: hushgate gateway filter show)"
                )
            })?;
            print!("{text}");
        }
        FilterCmd::Show { port: None } => {
            let tables = filter::tables()?;
            if tables.is_empty() {
                println!("no hushgate pre-filter tables");
            }
            for t in tables {
                println!("table inet {t}");
            }
        }
        FilterCmd::Remove {
            port: Some(port), ..
        } => {
            if filter::remove_table(port)? {
                println!("removed table inet {}", filter::table_name(port));
            } else {
                println!("no table inet {} to remove", filter::table_name(port));
            }
        }
        FilterCmd::Remove { port: None, .. } => {
            let tables = filter::tables()?;
            for t in &tables {
                if let Some(port) = t.strip_prefix("hushgate_").and_then(|p| p.parse().ok()) {
                    filter::remove_table(port)?;
                    println!("removed table inet {t}");
                }
            }
            if tables.is_empty() {
                println!("no hushgate pre-filter tables to remove");
            }
        }
    }
    Ok(())
}
