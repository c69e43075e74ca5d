//! `hushgate gateway --config FILE`: the settings a TOML file may hold.
//!
//! The binary merges them with its flags; the parsing lives here, in a
//! library, so that the fuzz targets (fuzz/) can feed it arbitrary text.

use std::net::SocketAddr;
use std::path::PathBuf;

/// What a gateway config file may say: the same names as the flags of
/// `hushgate gateway`, every one optional (flags override the file). An
/// unknown name is an error, so that a typo is not a silently ignored
/// setting.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayFile {
    pub control: Option<String>,
    pub ca: Option<PathBuf>,
    pub state: Option<PathBuf>,
    pub enroll_file: Option<PathBuf>,
    pub listen_udp: Option<SocketAddr>,
    pub public_endpoint: Option<SocketAddr>,
    #[serde(default)]
    pub services: Vec<String>,
    #[serde(default)]
    pub direct: Vec<String>,
    pub prefilter: Option<String>,
    pub max_connections_per_client: Option<usize>,
    pub max_pending_per_client: Option<usize>,
    pub buffer_growth_per_client_mib: Option<usize>,
    /// Port mapping on the home router: `auto` or `off` (issue 17).
    pub port_mapping: Option<String>,
    /// The router to ask for the port mapping.
    pub router: Option<std::net::IpAddr>,
    /// How often the mapping is checked on the router, in seconds.
    pub port_mapping_check: Option<u64>,
}

impl GatewayFile {
    /// Reads the text of a config file. The values are checked further
    /// where they are used (service specs, pre-filter mode).
    pub fn parse(text: &str) -> Result<GatewayFile, toml::de::Error> {
        toml::from_str(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_example_parses() {
        let text = include_str!("../../deploy/gateway.toml");
        let file = GatewayFile::parse(text).unwrap();
        assert_eq!(
            file.control.as_deref(),
            Some("https://control.example.net:8443")
        );
        assert_eq!(file.services, ["plex=32400:127.0.0.1:32400"]);
        assert_eq!(file.prefilter.as_deref(), Some("required"));
        assert_eq!(file.port_mapping.as_deref(), Some("auto"));
    }

    #[test]
    fn unknown_names_and_bad_values_are_errors() {
        assert!(GatewayFile::parse("controll = \"https://x\"").is_err());
        // `config` is a flag only: a file cannot point at another file.
        assert!(GatewayFile::parse("config = \"other.toml\"").is_err());
        assert!(GatewayFile::parse("listen_udp = \"not an address\"").is_err());
        assert!(GatewayFile::parse("router = \"not an address\"").is_err());
        assert!(GatewayFile::parse("port_mapping_check = -1").is_err());
        assert_eq!(GatewayFile::parse("").unwrap(), GatewayFile::default());
    }
}
