//! What a gateway is told, and the checks it runs before touching anything:
//! the services (`NAME=PORT:UPSTREAM`), the [`GatewayConfig`] `hushgate
//! gateway` builds from its flags and file, where the one-time enrollment
//! token comes from, and every error starting a gateway can end in.

use crate::filter::PrefilterMode;
use crate::identity::IdentityError;
use control_client::{ClientError, Trust};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

/// One service the gateway offers inside the tunnel:
/// `NAME=PORT:UPSTREAM`, e.g. `plex=32400:127.0.0.1:32400`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    pub name: String,
    /// The port clients connect to at the service address.
    pub port: u16,
    /// Where the gateway forwards those connections.
    pub upstream: SocketAddr,
}

impl FromStr for ServiceSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let usage = || {
            format!(
                "'{s}' is not a service: use NAME=PORT:UPSTREAM, e.g. plex=32400:127.0.0.1:32400"
            )
        };
        let (name, rest) = s.split_once('=').ok_or_else(usage)?;
        let (port, upstream) = rest.split_once(':').ok_or_else(usage)?;
        let port: u16 = port.parse().map_err(|_| usage())?;
        let upstream: SocketAddr = upstream.parse().map_err(|_| {
            format!("'{upstream}' is not an address: the upstream is IP:PORT, e.g. 127.0.0.1:32400 or [::1]:8096")
        })?;
        if name.is_empty() || name.len() > 64 || port == 0 {
            return Err(usage());
        }
        // What the control plane takes as a name (it reaches clients'
        // configurations and pages).
        if !proto::is_name(name) {
            return Err(format!(
                "service name '{name}' must be letters, digits, '-', '_', '.' or '@'"
            ));
        }
        Ok(ServiceSpec {
            name: name.to_string(),
            port,
            upstream,
        })
    }
}

/// Everything `hushgate gateway` is told.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub control_url: String,
    pub trust: Trust,
    pub state_dir: PathBuf,
    pub listen_udp: SocketAddr,
    /// The address clients use; default: what the control plane sees of
    /// the gateway, with the UDP port.
    pub public_endpoint: Option<SocketAddr>,
    pub services: Vec<ServiceSpec>,
    /// Direct (firewall-only) services: `NAME=PUBLIC_PORT:UPSTREAM`, the
    /// TCP port opened to direct admissions' sources. Needs the pre-filter.
    pub direct: Vec<ServiceSpec>,
    /// What each client may hold in the user-space TCP stack.
    pub peer_limits: crate::limits::PeerLimits,
    /// Whether to keep the kernel pre-filter (nftables).
    pub prefilter: PrefilterMode,
    /// Where the one-time enrollment token comes from. Read on the first
    /// start only: once the state folder holds a credential it is
    /// ignored, so its file may be removed after enrolling.
    pub enroll_token: Option<EnrollToken>,
    /// Automatic port mapping on the home router (issue 17).
    pub port_mapping: crate::portmap::PortMapConfig,
}

/// Where a gateway finds its one-time enrollment token.
#[derive(Clone)]
pub enum EnrollToken {
    /// The token itself (from the environment or standard input).
    Given(String),
    /// A file holding it, read only when the token is needed: e.g.
    /// `$CREDENTIALS_DIRECTORY/enroll-token` under systemd, or a file the
    /// operator deletes once the gateway has enrolled.
    File(PathBuf),
}

impl EnrollToken {
    pub(crate) fn read(&self) -> Result<String, GatewayError> {
        let token = match self {
            EnrollToken::Given(t) => t.trim().to_string(),
            EnrollToken::File(path) => std::fs::read_to_string(path)
                .map_err(|e| {
                    GatewayError::Config(format!(
                        "this gateway is not enrolled yet and its enrollment token cannot be read from {}: {e}",
                        path.display()
                    ))
                })?
                .trim()
                .to_string(),
        };
        if token.is_empty() {
            return Err(GatewayError::Config(format!(
                "the enrollment token {} is empty: give the token 'hushgate admin server add' printed",
                match self {
                    EnrollToken::Given(_) => "given".to_string(),
                    EnrollToken::File(p) => format!("in {}", p.display()),
                }
            )));
        }
        Ok(token)
    }
}

impl From<String> for EnrollToken {
    fn from(token: String) -> Self {
        EnrollToken::Given(token)
    }
}

/// Never shows the token itself: configurations end up in logs.
impl std::fmt::Debug for EnrollToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EnrollToken::Given(_) => f.write_str("EnrollToken::Given(..)"),
            EnrollToken::File(p) => f.debug_tuple("EnrollToken::File").field(p).finish(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    StateLocked(#[from] statelock::LockError),
    #[error("cannot listen on UDP {addr}: {source}; is another gateway running there?")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("enrollment failed: {0}")]
    Enroll(ClientError),
    #[error("the control plane refused this gateway's credential ({0}); it was revoked or replaced, or the server removed: get a new token with 'hushgate admin server reenroll NAME' on the control plane and start the gateway with it (HUSHGATE_ENROLL_TOKEN or --enroll-file); {1} is replaced when it is used")]
    CredentialRefused(ClientError, PathBuf),
    #[error("cannot reach the control plane: {0}")]
    Control(ClientError),
    #[error("cannot start the data path: {0}")]
    DataPath(std::io::Error),
    #[error("the kernel pre-filter is required but cannot be set up: {0}")]
    Prefilter(crate::filter::NftError),
    #[error("direct services need the kernel pre-filter, which cannot be set up ({0}); without it their port would be open to everyone")]
    DirectNeedsPrefilter(String),
    #[error("cannot start the direct services: {0}")]
    Direct(std::io::Error),
}

impl GatewayConfig {
    /// Checks what can be checked before anything is bound or written:
    /// services, ports, limits, and direct services' needs. Returns each
    /// tunnel service's upstream by port.
    pub fn check(&self) -> Result<HashMap<u16, SocketAddr>, GatewayError> {
        let cfg = self;
        if cfg.services.is_empty() {
            return Err(GatewayError::Config(
                "no services: give at least one --service NAME=PORT:UPSTREAM".into(),
            ));
        }
        cfg.peer_limits
            .check(&netstack::StackConfig::new(
                std::net::Ipv4Addr::UNSPECIFIED.into(),
            ))
            .map_err(GatewayError::Config)?;
        let mut ports = HashMap::new();
        for s in &cfg.services {
            if ports.insert(s.port, s.upstream).is_some() {
                return Err(GatewayError::Config(format!(
                    "two services use port {} inside the tunnel",
                    s.port
                )));
            }
        }
        let mut public_ports = HashMap::new();
        for s in &cfg.direct {
            if public_ports.insert(s.port, &s.name).is_some() {
                return Err(GatewayError::Config(format!(
                    "two direct services use TCP port {}",
                    s.port
                )));
            }
            if cfg.services.iter().all(|t| t.name != s.name)
                && cfg.direct.iter().filter(|d| d.name == s.name).count() > 1
            {
                return Err(GatewayError::Config(format!(
                    "two direct services are named '{}'",
                    s.name
                )));
            }
        }
        for d in &cfg.direct {
            let clash = cfg.services.iter().chain(&cfg.direct).find(|u| {
                u.upstream.port() == d.port
                    && (u.upstream.ip().is_loopback() || u.upstream.ip().is_unspecified())
            });
            if let Some(u) = clash {
                return Err(GatewayError::Config(format!(
                    "direct service '{}' would take TCP port {} on this host, where upstream {} listens; give it another public port (e.g. {}={}:{})",
                    d.name,
                    d.port,
                    u.upstream,
                    d.name,
                    d.port.wrapping_add(1).max(1),
                    d.upstream
                )));
            }
        }
        if !cfg.direct.is_empty() && cfg.prefilter == PrefilterMode::Off {
            return Err(GatewayError::DirectNeedsPrefilter(
                "--prefilter off was given".into(),
            ));
        }
        Ok(ports)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_specs_parse() {
        let s: ServiceSpec = "plex=32400:127.0.0.1:32400".parse().unwrap();
        assert_eq!(s.name, "plex");
        assert_eq!(s.port, 32400);
        assert_eq!(s.upstream, "127.0.0.1:32400".parse().unwrap());
        let s: ServiceSpec = "jf=8096:[::1]:8096".parse().unwrap();
        assert_eq!(s.upstream, "[::1]:8096".parse().unwrap());
        for bad in [
            "plex",
            "plex=x:1.2.3.4:5",
            "=1:127.0.0.1:2",
            "plex=0:127.0.0.1:1",
            "plex=1:localhost",
        ] {
            assert!(bad.parse::<ServiceSpec>().is_err(), "{bad}");
        }
    }
}
