use anyhow::{bail, Context};
use control_client::Trust;
use gateway::{
    EnrollToken, Gateway, GatewayConfig, GatewayFile, PortMapConfig, PortMappingMode,
    PrefilterMode, ServiceSpec,
};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Run the gateway beside the media server, or inspect a running one.
///
/// The gateway listens on one UDP port (the only port the router forwards)
/// and answers nobody the control plane has not admitted. It needs no
/// inbound TCP port: it keeps an outbound HTTPS connection to the control
/// plane. On the first start it enrolls with the one-time token from
/// 'hushgate admin server add' (HUSHGATE_ENROLL_TOKEN, --enroll-file, or
/// the systemd credential 'enroll-token'); its key and credential then
/// live in --state (mode 0600), and later starts ignore the token. One
/// gateway per state folder: a second one on the same folder is refused.
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
    /// Control plane URL, e.g. https://control.example:8443. For replicas,
    /// several URLs separated by commas: when one cannot be reached, the
    /// next is used.
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
    /// or set HUSHGATE_ENROLL_TOKEN, or pass it as the systemd credential
    /// 'enroll-token' (LoadCredential=). Read on the first start only:
    /// once enrolled (a credential in --state) it is ignored, and the file
    /// may be removed.
    #[arg(long, value_name = "FILE")]
    enroll_file: Option<PathBuf>,
    /// UDP address to listen on [default: 0.0.0.0:51820].
    #[arg(long, value_name = "ADDR")]
    listen_udp: Option<SocketAddr>,
    /// Address clients should send to (the router's public IP and the
    /// forwarded port); default: the external endpoint the router mapped
    /// (see --port-mapping), else the address the control plane sees with
    /// the UDP port.
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
    /// Port mapping on the home router: auto (ask it with PCP, NAT-PMP or
    /// UPnP IGD to forward the UDP port and each direct TCP port, renew
    /// the lease, delete it at a clean stop) or off (the port is forwarded
    /// by hand) [default: auto].
    #[arg(long, value_name = "MODE")]
    port_mapping: Option<String>,
    /// The router to ask for the port mapping [default: the IPv4 default
    /// router, from /proc/net/route].
    #[arg(long, value_name = "ADDR")]
    router: Option<std::net::IpAddr>,
    /// How often the port mapping is checked on the router, in seconds
    /// (a router that restarted or changed its address without
    /// announcing it is noticed then) [default: 60].
    #[arg(long, value_name = "SECS")]
    port_mapping_check: Option<u64>,
    /// Connections one client may hold at once (open, opening or
    /// closing); one more is refused with a TCP reset inside its tunnel
    /// [default: 128].
    #[arg(long, value_name = "N")]
    max_connections_per_client: Option<usize>,
    /// TCP handshakes one client may have in progress; further SYNs are
    /// dropped and its TCP sends them again [default: 16].
    #[arg(long, value_name = "N")]
    max_pending_per_client: Option<usize>,
    /// MiB by which the TCP buffers of one client's connections may grow
    /// together, out of the gateway's 256 MiB [default: 64].
    #[arg(long, value_name = "MIB")]
    buffer_growth_per_client_mib: Option<usize>,
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
        port_mapping: cli.port_mapping.or(file.port_mapping),
        router: cli.router.or(file.router),
        port_mapping_check: cli.port_mapping_check.or(file.port_mapping_check),
        max_connections_per_client: cli
            .max_connections_per_client
            .or(file.max_connections_per_client),
        max_pending_per_client: cli.max_pending_per_client.or(file.max_pending_per_client),
        buffer_growth_per_client_mib: cli
            .buffer_growth_per_client_mib
            .or(file.buffer_growth_per_client_mib),
    })
}

/// The systemd credential the unit passes the token as
/// (`LoadCredential=enroll-token:/etc/hushgate/enroll-token`).
const ENROLL_CREDENTIAL: &str = "enroll-token";

/// Where the enrollment token comes from, in order: HUSHGATE_ENROLL_TOKEN,
/// --enroll-file (`-`: standard input), the systemd credential
/// `enroll-token` ($CREDENTIALS_DIRECTORY). A file is read only if the
/// gateway turns out not to be enrolled yet, so it may be gone once it is.
fn enroll_token(file: Option<&Path>) -> anyhow::Result<Option<EnrollToken>> {
    if let Ok(t) = std::env::var("HUSHGATE_ENROLL_TOKEN") {
        if !t.trim().is_empty() {
            return Ok(Some(EnrollToken::Given(t.trim().to_string())));
        }
    }
    match file {
        Some(p) if p == Path::new("-") => {
            super::read_secret("HUSHGATE_ENROLL_TOKEN", "enrollment token")
                .map(|t| Some(EnrollToken::Given(t)))
        }
        Some(p) => Ok(Some(EnrollToken::File(p.to_path_buf()))),
        None => Ok(std::env::var_os("CREDENTIALS_DIRECTORY")
            .map(|d| Path::new(&d).join(ENROLL_CREDENTIAL))
            .filter(|p| p.exists())
            .map(EnrollToken::File)),
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
    let defaults = gateway::PeerLimits::default();
    let peer_limits = gateway::PeerLimits {
        max_connections: a
            .max_connections_per_client
            .unwrap_or(defaults.max_connections),
        max_pending: a.max_pending_per_client.unwrap_or(defaults.max_pending),
        buffer_growth: a
            .buffer_growth_per_client_mib
            .map_or(defaults.buffer_growth, |m| m.saturating_mul(1 << 20)),
    };
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
        peer_limits,
        prefilter,
        enroll_token: enroll_token(a.enroll_file.as_deref())?,
        port_mapping: PortMapConfig {
            mode: a
                .port_mapping
                .as_deref()
                .unwrap_or("auto")
                .parse::<PortMappingMode>()
                .map_err(anyhow::Error::msg)?,
            router: a.router,
            check_interval: std::time::Duration::from_secs(
                a.port_mapping_check.unwrap_or(60).max(1),
            ),
        },
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

/// The TCP stack's use and limits, and each client's share of it, as
/// `hushgate gateway status` prints them (from the status JSON's `gateway`).
fn tcp_lines(g: &serde_json::Value) -> Vec<String> {
    let t = &g["tcp"];
    if t.is_null() {
        return vec!["tcp: no stack yet (no feed)".into()];
    }
    let n = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
    let mib = |v: &serde_json::Value| n(v) >> 20;
    let l = &t["limits_per_client"];
    let mut lines = vec![format!(
        "tcp: sockets {}/{}  connections {}  buffer growth budget {} of {} MiB free  per client: {} connections, {} handshakes, {} MiB growth  refused connections {}  dropped SYNs {}",
        n(&t["sockets"]),
        n(&t["max_sockets"]),
        n(&t["connections"]),
        mib(&t["buffer_budget_available"]),
        mib(&t["buffer_budget"]),
        n(&l["max_connections"]),
        n(&l["max_pending"]),
        mib(&l["buffer_growth"]),
        n(&t["refused_connections"]),
        n(&t["dropped_syns"]),
    )];
    for p in g["peers"].as_array().into_iter().flatten() {
        let c = &p["tcp"];
        if n(&c["connections"]) > 0 {
            lines.push(format!(
                "  {} {}: {} connections, {} handshakes, buffers grown by {} KiB",
                p["admission_id"].as_str().unwrap_or("-"),
                p["client_address"].as_str().unwrap_or("-"),
                n(&c["connections"]),
                n(&c["pending"]),
                n(&c["buffer_growth"]) >> 10,
            ));
        }
    }
    lines
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
    print!("{}", status_table(&r));
    Ok(())
}

/// The status as a person reads it, in the manner of `wg show`: the
/// gateway, its services with their upstreams' health, each peer, the
/// drops by reason. Built from the JSON the gateway's socket answers with
/// (also what `--json` prints), so that an older or newer gateway's
/// status still shows, with "-" for what it does not say.
fn status_table(r: &serde_json::Value) -> String {
    use serde_json::Value;
    use std::fmt::Write;
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    };
    let mut o = String::new();
    let _ = writeln!(o, "gateway: {}", text(&r["server"]));
    let _ = writeln!(o, "  public key: {}", text(&r["public_key"]));
    let _ = writeln!(o, "  listening: udp {}", text(&r["udp"]));
    let _ = writeln!(o, "  version: {}", text(&r["version"]));
    if let Some(up) = r["uptime_secs"].as_u64() {
        let _ = writeln!(o, "  uptime: {}", duration(up));
    }
    let _ = writeln!(
        o,
        "  control plane: {} ({}), feed version {}",
        text(&r["control_url"]),
        if r["control_connected"] == true {
            "connected"
        } else {
            "DISCONNECTED"
        },
        text(&r["acked_version"])
    );
    if !r["last_control_error"].is_null() {
        let _ = writeln!(
            o,
            "  last control plane error: {}",
            text(&r["last_control_error"])
        );
    }
    match &r["prefilter"] {
        Value::Null => {
            let _ = writeln!(o, "  pre-filter: off (user-space filter only)");
        }
        f => {
            let sets: Vec<String> = f["sets"]
                .as_array()
                .map(|a| a.iter().map(text).collect())
                .unwrap_or_default();
            let _ = writeln!(
                o,
                "  pre-filter: table inet {}, {} elements{}{}, {} transactions",
                text(&f["table"]),
                text(&f["elements"]),
                if sets.is_empty() {
                    String::new()
                } else {
                    format!(" in {}", sets.join(" "))
                },
                if f["open"] == true {
                    ", OPEN to all (a first-handshake admission waits)"
                } else {
                    ""
                },
                text(&f["transactions"]),
            );
            if !f["last_error"].is_null() {
                let _ = writeln!(o, "  pre-filter LAST ERROR: {}", text(&f["last_error"]));
            }
        }
    }
    // Port mapping and reachability (issue 17); absent from older gateways.
    if let Ok(m) = serde_json::from_value::<proto::reach::MappingReport>(r["port_mapping"].clone())
    {
        let _ = writeln!(o, "  port mapping: {}", super::admin::mapping_words(&m));
    }
    if let Ok(v) =
        serde_json::from_value::<proto::reach::ReachabilityView>(r["reachability"].clone())
    {
        let mut lines = Vec::new();
        match &v.check {
            Some(c) => lines.push(format!("  reachability: {}", c.summary())),
            None => lines.push("  reachability: not checked yet".into()),
        }
        for d in &v.diagnosis {
            lines.push(format!("    problem: {}", d.problem));
            lines.push(format!("    what to do: {}", d.advice));
        }
        for l in lines {
            let _ = writeln!(o, "{l}");
        }
    }
    let _ = writeln!(
        o,
        "  datagrams received: {}",
        text(&r["gateway"]["datagrams"])
    );

    for svc in r["services"].as_array().into_iter().flatten() {
        let direct = svc["kind"] == "direct";
        let _ = writeln!(
            o,
            "\nservice: {}{}",
            text(&svc["name"]),
            if direct { " (direct)" } else { "" }
        );
        let _ = writeln!(
            o,
            "  port: {}",
            if direct {
                format!("tcp {} (admitted sources only)", text(&svc["port"]))
            } else {
                format!("{} (inside the tunnel)", text(&svc["port"]))
            }
        );
        let _ = writeln!(o, "  upstream: {}", text(&svc["upstream"]));
        let checked = svc["checked_secs_ago"]
            .as_u64()
            .map(|s| format!(" (checked {} ago)", duration(s)))
            .unwrap_or_default();
        let since = svc["since_secs"]
            .as_u64()
            .map(|s| format!(" for {}", duration(s)))
            .unwrap_or_default();
        let health = match svc["health"].as_str() {
            Some("up") => format!("up{since}{checked}"),
            Some("down") => format!("DOWN{since}: {}{checked}", text(&svc["error"])),
            _ => "not checked yet".to_string(),
        };
        let _ = writeln!(o, "  health: {health}");
    }

    for p in r["gateway"]["peers"].as_array().into_iter().flatten() {
        let _ = writeln!(o, "\npeer: {}", text(&p["client_public_key"]));
        let _ = writeln!(
            o,
            "  admission: {} (expires in {})",
            text(&p["admission_id"]),
            p["expires_in_secs"].as_u64().map_or("-".into(), duration)
        );
        let _ = writeln!(o, "  tunnel address: {}", text(&p["client_address"]));
        let pinned = match &p["pinned_source"] {
            Value::Null => String::new(),
            ip => format!(", pinned to {}", text(ip)),
        };
        let _ = writeln!(
            o,
            "  allowed source: {} ({}{pinned})",
            text(&p["source"]),
            text(&p["binding"])
        );
        let _ = writeln!(o, "  endpoint: {}", text(&p["endpoint"]));
        let _ = writeln!(
            o,
            "  latest handshake: {}",
            p["last_handshake_secs_ago"]
                .as_u64()
                .map_or("none yet".into(), |s| format!("{} ago", duration(s)))
        );
        let _ = writeln!(
            o,
            "  transfer: {} received, {} sent ({} handshakes)",
            bytes(p["rx_bytes"].as_u64().unwrap_or(0)),
            bytes(p["tx_bytes"].as_u64().unwrap_or(0)),
            text(&p["handshakes"]),
        );
    }
    if r["gateway"]["peers"]
        .as_array()
        .is_some_and(|a| a.is_empty())
    {
        let _ = writeln!(o, "\npeers: none");
    }

    let drops: Vec<(String, u64)> = r["gateway"]["drops"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_u64().filter(|&n| n > 0).map(|n| (k.clone(), n)))
                .collect()
        })
        .unwrap_or_default();
    if drops.is_empty() {
        let _ = writeln!(o, "\ndrops: none");
    } else {
        let _ = writeln!(o, "\ndrops:");
        let width = drops.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        for (reason, n) in drops {
            let _ = writeln!(o, "  {reason:<width$}  {n}");
        }
    }
    let _ = writeln!(o);
    for line in tcp_lines(&r["gateway"]) {
        let _ = writeln!(o, "{line}");
    }
    if !r["direct"].is_null() {
        let d = &r["direct"];
        let _ = writeln!(
            o,
            "\ndirect: {} admitted sources, {} connections; accepted {}, refused {}, reset {}",
            text(&d["admitted_sources"]),
            text(&d["connections"]),
            text(&d["accepted"]),
            text(&d["refused"]),
            text(&d["reset"]),
        );
    }
    o
}

/// "1 hour, 3 minutes" (two largest units), like `wg show`.
fn duration(secs: u64) -> String {
    let units = [
        ("day", 86_400),
        ("hour", 3600),
        ("minute", 60),
        ("second", 1),
    ];
    let mut parts = Vec::new();
    let mut left = secs;
    for (name, size) in units {
        let n = left / size;
        left %= size;
        if n > 0 && parts.len() < 2 {
            parts.push(format!("{n} {name}{}", if n == 1 { "" } else { "s" }));
        } else if !parts.is_empty() {
            // Only adjacent units: "1 hour, 3 minutes", not "1 hour, 3 seconds".
            break;
        }
    }
    if parts.is_empty() {
        "0 seconds".into()
    } else {
        parts.join(", ")
    }
}

/// Bytes in binary units, like `wg show`.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.2} {}", UNITS[unit])
}

fn filter(cmd: FilterCmd) -> anyhow::Result<()> {
    use gateway::filter;
    match cmd {
        FilterCmd::Show { port: Some(port) } => match filter::show_table(port) {
            Ok(text) => print!("{text}"),
            // Only a table that is not there is "no table"; a refusal to
            // read says so itself.
            Err(filter::NftError::Refused(_)) => bail!(
                "no pre-filter table for UDP port {port} (no table inet {}); list them with: hushgate gateway filter show",
                filter::table_name(port)
            ),
            Err(e) => return Err(e.into()),
        },
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_reads_like_wg_show() {
        let r = serde_json::json!({
            "server": "living-room",
            "public_key": "GATEWAYKEY=",
            "udp": "0.0.0.0:51820",
            "control_url": "https://control.example.net:8443",
            "control_connected": true,
            "last_control_error": null,
            "acked_version": 12,
            "version": "0.1.0",
            "uptime_secs": 7_380,
            "gateway": {
                "feed_version": 12,
                "service_address": "100.64.0.1",
                "datagrams": 4_242,
                "peers": [{
                    "peer": 0,
                    "admission_id": "adm_1",
                    "client_public_key": "CLIENTKEY=",
                    "client_address": "100.64.0.2",
                    "source": "203.0.113.7",
                    "binding": "prefix:24,56",
                    "pinned_source": null,
                    "endpoint": "203.0.113.7:40000",
                    "expires_in_secs": 3_300,
                    "handshakes": 2,
                    "rx_packets": 10,
                    "rx_bytes": 1_258_291,
                    "tx_packets": 20,
                    "tx_bytes": 31_981_568,
                    "last_handshake_secs_ago": 63
                }],
                "drops": {"unknown_source": 1_234, "wrong_key": 2, "replayed": 0}
            },
            "prefilter": {
                "table": "hushgate_51820", "elements": 1, "sets": ["t4_24"],
                "open": false, "transactions": 3, "last_error": null
            },
            "direct": null,
            "services": [
                {"name": "plex", "kind": "tunnel", "port": 32400, "upstream": "127.0.0.1:32400",
                 "health": "up", "error": null, "since_secs": 7_380, "checked_secs_ago": 12},
                {"name": "plex", "kind": "direct", "port": 32401, "upstream": "127.0.0.1:32401",
                 "health": "down", "error": "Connection refused (os error 111)",
                 "since_secs": 200, "checked_secs_ago": 5}
            ]
        });
        let t = status_table(&r);
        for line in [
            "gateway: living-room",
            "  uptime: 2 hours, 3 minutes",
            "  version: 0.1.0",
            "  control plane: https://control.example.net:8443 (connected), feed version 12",
            "  pre-filter: table inet hushgate_51820, 1 elements in t4_24, 3 transactions",
            "service: plex\n  port: 32400 (inside the tunnel)\n  upstream: 127.0.0.1:32400\n  health: up for 2 hours, 3 minutes (checked 12 seconds ago)",
            "service: plex (direct)\n  port: tcp 32401 (admitted sources only)",
            "  health: DOWN for 3 minutes, 20 seconds: Connection refused (os error 111) (checked 5 seconds ago)",
            "peer: CLIENTKEY=\n  admission: adm_1 (expires in 55 minutes)",
            "  allowed source: 203.0.113.7 (prefix:24,56)",
            "  endpoint: 203.0.113.7:40000",
            "  latest handshake: 1 minute, 3 seconds ago",
            "  transfer: 1.20 MiB received, 30.50 MiB sent (2 handshakes)",
            "drops:\n  unknown_source  1234\n  wrong_key       2\n",
        ] {
            assert!(t.contains(line), "{line:?} missing from:\n{t}");
        }
        assert!(!t.contains("replayed"), "zero counters are left out:\n{t}");
        assert!(!t.contains('{'), "no raw JSON:\n{t}");
    }

    #[test]
    fn durations_and_sizes_are_short() {
        assert_eq!(duration(0), "0 seconds");
        assert_eq!(duration(1), "1 second");
        assert_eq!(duration(3_603), "1 hour");
        assert_eq!(duration(90_061), "1 day, 1 hour");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.50 KiB");
    }
}

#[cfg(test)]
mod tcp_limits_tests {
    use super::*;

    #[test]
    fn status_shows_the_tcp_stack_and_each_client_holding_connections() {
        let g = serde_json::json!({
            "tcp": {
                "sockets": 30, "max_sockets": 1024, "connections": 20,
                "buffer_budget": 256 << 20, "buffer_budget_available": 200 << 20,
                "limits_per_client": {"max_connections": 128, "max_pending": 16, "buffer_growth": 64 << 20},
                "refused_connections": 12, "dropped_syns": 196
            },
            "peers": [
                {"admission_id": "adm_a", "client_address": "100.64.0.2",
                 "tcp": {"connections": 20, "pending": 4, "buffer_growth": 2 << 20}},
                {"admission_id": "adm_b", "client_address": "100.64.0.3",
                 "tcp": {"connections": 0, "pending": 0, "buffer_growth": 0}}
            ]
        });
        assert_eq!(
            tcp_lines(&g),
            [
                "tcp: sockets 30/1024  connections 20  buffer growth budget 200 of 256 MiB free  per client: 128 connections, 16 handshakes, 64 MiB growth  refused connections 12  dropped SYNs 196",
                "  adm_a 100.64.0.2: 20 connections, 4 handshakes, buffers grown by 2048 KiB",
            ]
        );
        assert_eq!(
            tcp_lines(&serde_json::json!({"tcp": null})),
            ["tcp: no stack yet (no feed)"]
        );
    }

    #[test]
    fn the_per_client_limits_in_deploy_gateway_toml_are_the_defaults() {
        let text = include_str!("../../../deploy/gateway.toml")
            .replace("# max_", "max_")
            .replace("# buffer_growth", "buffer_growth");
        let a = GatewayFile::parse(&text).unwrap();
        let d = gateway::PeerLimits::default();
        assert_eq!(a.max_connections_per_client, Some(d.max_connections));
        assert_eq!(a.max_pending_per_client, Some(d.max_pending));
        assert_eq!(
            a.buffer_growth_per_client_mib.map(|m| m << 20),
            Some(d.buffer_growth)
        );
    }
}
