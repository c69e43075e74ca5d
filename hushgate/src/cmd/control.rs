use anyhow::Context;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Run the control plane.
///
/// It serves HTTPS only. Without --tls-cert/--tls-key it makes a private CA
/// in the state folder on first start (ca.pem) and prints its path: give
/// that file to gateways and clients with --ca. The admin token for
/// `hushgate admin` is written to STATE/admin-token (mode 0600).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Address to serve HTTPS on.
    #[arg(long, default_value = "0.0.0.0:8443")]
    listen: SocketAddr,
    /// State folder: SQLite database, private CA, admin token.
    #[arg(long, value_name = "DIR")]
    state: PathBuf,
    /// Operator certificate chain (PEM) instead of the private CA.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// Private key (PEM) for --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Extra DNS name or IP address for the self-issued certificate
    /// (repeatable; localhost, 127.0.0.1 and ::1 are always included).
    #[arg(long, value_name = "NAME")]
    san: Vec<String>,
    /// Believe X-Forwarded-For only from proxies in this range (repeatable).
    #[arg(long, value_name = "CIDR")]
    trusted_proxy: Vec<ipnet::IpNet>,
    /// Seconds an access request waits for the gateway to confirm.
    #[arg(long, default_value_t = 5.0, value_name = "SECS")]
    ack_timeout: f64,
    /// Default admission lifetime in seconds for new servers.
    #[arg(long, default_value_t = 3600, value_name = "SECS")]
    admission_ttl: u64,
    /// Lifetime of login tokens, in seconds.
    #[arg(long, default_value_t = 12 * 3600, value_name = "SECS")]
    token_ttl: u64,
    /// Login attempts allowed per minute per source address and per user.
    #[arg(long, default_value_t = 10, value_name = "N")]
    login_rate: u32,
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    let cfg = control::Config {
        state_dir: a.state.clone(),
        tls_cert: a.tls_cert.zip(a.tls_key),
        sans: a.san,
        settings: control::Settings {
            trusted_proxies: a.trusted_proxy,
            token_ttl: Duration::from_secs(a.token_ttl),
            ack_timeout: Duration::from_secs_f64(a.ack_timeout.max(0.1)),
            default_admission_ttl: Duration::from_secs(a.admission_ttl),
            login_per_minute: a.login_rate,
            ..Default::default()
        },
    };
    let cp = control::ControlPlane::open(cfg)?;
    let listener = std::net::TcpListener::bind(a.listen)
        .with_context(|| format!("cannot listen on {}; is the port in use?", a.listen))?;
    let local = listener.local_addr()?;
    println!("control plane listening on https://{local}");
    if let Some(ca) = cp.ca_file() {
        println!(
            "CA certificate: {} (give it to gateways and clients with --ca)",
            ca.display()
        );
    }
    println!(
        "admin token: {} (used by 'hushgate admin --state {}')",
        cp.admin_token_file.display(),
        a.state.display()
    );
    cp.serve(listener, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await
}
