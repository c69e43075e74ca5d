//! `--metrics-listen`: serves `GET /metrics` in the Prometheus text format
//! on a TCP address or a Unix socket of its own, never on the gateway's
//! public UDP port nor on the control plane's HTTPS API.
//!
//! Plain HTTP, as Prometheus scrapes: the address is meant to be loopback
//! (the gateway refuses anything else) or a Unix socket only the operator's
//! Prometheus can open. The metrics carry counts only, never a user, key or
//! address.

use anyhow::{bail, Context};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;

/// Where the metrics are served: `127.0.0.1:9101`, `[::1]:9101` or
/// `unix:/run/hushgate/metrics.sock`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub enum MetricsListen {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl FromStr for MetricsListen {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(path) = s.strip_prefix("unix:") {
            if !path.starts_with('/') {
                return Err(format!(
                    "'{s}': a Unix socket is given by its absolute path, e.g. unix:/run/hushgate/metrics.sock"
                ));
            }
            return Ok(MetricsListen::Unix(PathBuf::from(path)));
        }
        s.parse().map(MetricsListen::Tcp).map_err(|_| {
            format!(
                "'{s}' is not a metrics address: use IP:PORT (e.g. 127.0.0.1:9101) or unix:/PATH"
            )
        })
    }
}

impl TryFrom<String> for MetricsListen {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl std::fmt::Display for MetricsListen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MetricsListen::Tcp(a) => write!(f, "http://{a}/metrics"),
            MetricsListen::Unix(p) => write!(f, "unix:{} (GET /metrics)", p.display()),
        }
    }
}

impl MetricsListen {
    /// The gateway's metrics stay on the host: a TCP address must be
    /// loopback (a reverse proxy or an SSH tunnel can carry them further).
    pub fn require_local(&self) -> anyhow::Result<()> {
        match self {
            MetricsListen::Tcp(a) if !a.ip().is_loopback() => bail!(
                "--metrics-listen {a}: the gateway serves metrics on a loopback address (127.0.0.1 or ::1) or a Unix socket only, never where the Internet can reach them"
            ),
            _ => Ok(()),
        }
    }
}

/// Produces the text of one scrape (None: not available right now, 503).
pub type Render =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Option<String>> + Send>> + Send + Sync>;

/// Binds `listen` now (so a taken port fails the start) and serves
/// `/metrics` in the background until the task is aborted.
pub async fn serve(
    listen: &MetricsListen,
    render: Render,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    use axum::http::{header, StatusCode};
    use axum::response::IntoResponse;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let render = render.clone();
            async move {
                match render().await {
                    Some(text) => (
                        [(
                            header::CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8",
                        )],
                        text,
                    )
                        .into_response(),
                    None => (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response(),
                }
            }
        }),
    );
    Ok(match listen {
        MetricsListen::Tcp(addr) => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen for metrics on {addr}"))?;
            tokio::spawn(async move {
                if let Err(e) = axum::serve(l, app).await {
                    tracing::error!(error = %e, "the metrics listener stopped");
                }
            })
        }
        MetricsListen::Unix(path) => {
            use std::os::unix::fs::PermissionsExt;
            // A socket left by an earlier run would make bind fail.
            if std::fs::symlink_metadata(path)
                .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
            {
                let _ = std::fs::remove_file(path);
            }
            let l = tokio::net::UnixListener::bind(path)
                .with_context(|| format!("cannot listen for metrics on {}", path.display()))?;
            // Owner and group (e.g. a prometheus user added to the
            // service's group); nobody else.
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
            tokio::spawn(async move {
                if let Err(e) = axum::serve(l, app).await {
                    tracing::error!(error = %e, "the metrics listener stopped");
                }
            })
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_and_the_gateway_keeps_them_local() {
        let tcp: MetricsListen = "127.0.0.1:9101".parse().unwrap();
        assert_eq!(tcp, MetricsListen::Tcp("127.0.0.1:9101".parse().unwrap()));
        tcp.require_local().unwrap();
        let v6: MetricsListen = "[::1]:9101".parse().unwrap();
        v6.require_local().unwrap();
        let unix: MetricsListen = "unix:/run/hushgate/m.sock".parse().unwrap();
        assert_eq!(unix, MetricsListen::Unix("/run/hushgate/m.sock".into()));
        unix.require_local().unwrap();
        let public: MetricsListen = "0.0.0.0:9101".parse().unwrap();
        let e = public.require_local().unwrap_err().to_string();
        assert!(e.contains("loopback"), "{e}");
        assert!("unix:relative.sock".parse::<MetricsListen>().is_err());
        assert!("9101".parse::<MetricsListen>().is_err());
    }
}
