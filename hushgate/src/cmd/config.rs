//! One configuration format for every role: `hushgate control`, `gateway`
//! and `connect` each take `--config FILE`, a TOML file whose keys are the
//! role's long flags with `_` for `-`. A flag given on the command line,
//! or its environment variable (`HUSHGATE_CONTROL_LISTEN`, ...), overrides
//! the file; an unknown key is refused with the list of known ones, so a
//! typo is never a silently ignored setting.
//!
//! Each role's keys are listed once here ([`CONTROL_KEYS`],
//! [`GATEWAY_KEYS`], [`CONNECT_KEYS`]), with the example value and
//! comment the shipped example files carry: `deploy/control.toml`,
//! `deploy/gateway.toml` and `deploy/connect.toml` are generated from
//! these tables, and the tests check that the files, the parsers and
//! docs/operating.md agree.

use anyhow::Context;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// What a `hushgate control` config file may say.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlFile {
    pub listen: Option<SocketAddr>,
    pub state: Option<PathBuf>,
    pub database: Option<String>,
    pub database_password_file: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    #[serde(default)]
    pub san: Vec<String>,
    #[serde(default)]
    pub trusted_proxy: Vec<ipnet::IpNet>,
    pub forwarded_header: Option<String>,
    pub ack_timeout: Option<f64>,
    pub admission_ttl: Option<u64>,
    pub token_ttl: Option<u64>,
    pub enrollment_ttl: Option<u64>,
    pub login_rate: Option<u32>,
    pub max_connections: Option<usize>,
    pub max_connections_per_source: Option<usize>,
    pub admin_connections: Option<usize>,
    #[serde(default)]
    pub admin_source: Vec<ipnet::IpNet>,
    pub header_timeout: Option<f64>,
    pub metrics_listen: Option<String>,
    pub metrics_per_server: Option<bool>,
    pub metrics_not_loopback: Option<bool>,
    pub public_url: Option<String>,
    #[serde(default)]
    pub probe_source: Vec<std::net::IpAddr>,
    pub reachability_interval: Option<u64>,
    #[serde(default)]
    pub limit: Vec<String>,
}

/// What a `hushgate connect` config file (or a saved profile) may say.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectFile {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub control: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
}

/// Reads and parses a config file, naming it in every error.
pub fn read<T: serde::de::DeserializeOwned>(path: &Path) -> anyhow::Result<T> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the config file {}", path.display()))?;
    toml::from_str(&text)
        .with_context(|| format!("the config file {} is not valid", path.display()))
}

/// One key of a role's config file, as the example file shows it.
#[derive(Debug)]
pub struct Key {
    pub name: &'static str,
    /// The value in the example: `Set` is written as a setting, `Default`
    /// commented out (the default, or an example of an optional key).
    pub example: Example,
    /// The comment above it in the example file (`#` lines).
    pub doc: &'static str,
}

#[derive(Debug)]
pub enum Example {
    Set(&'static str),
    Commented(&'static str),
}

pub const CONTROL_KEYS: &[Key] = &[
    Key { name: "listen", example: Example::Set("\"0.0.0.0:8443\""), doc: "Address to serve HTTPS on (default 0.0.0.0:8443). Open this TCP port to gateways and clients." },
    Key { name: "state", example: Example::Set("\"/var/lib/hushgate/control\""), doc: "State folder: the SQLite database (unless `database`), the private CA or shared certificate, the admin token." },
    Key { name: "database", example: Example::Commented("\"postgres://hushgate@db.example:5432/hushgate\""), doc: "PostgreSQL database shared by replicas, without its password (default: SQLite in `state`)." },
    Key { name: "database_password_file", example: Example::Commented("\"/etc/hushgate/database-password\""), doc: "File (0600) holding the database password; or the systemd credential 'database-password'." },
    Key { name: "tls_cert", example: Example::Commented("\"/etc/hushgate/tls/fullchain.pem\""), doc: "Operator certificate chain (PEM) instead of the private CA; needs `tls_key`." },
    Key { name: "tls_key", example: Example::Commented("\"/etc/hushgate/tls/privkey.pem\""), doc: "Private key (PEM) of `tls_cert`." },
    Key { name: "san", example: Example::Commented("[\"control.example.net\"]"), doc: "Names (DNS or IP) gateways and clients use to reach this control plane, for the self-issued certificate. Without it: this host's name, FQDN and addresses." },
    Key { name: "trusted_proxy", example: Example::Commented("[\"10.0.0.0/8\"]"), doc: "Proxies whose forwarding header is believed." },
    Key { name: "forwarded_header", example: Example::Commented("\"x-forwarded-for\""), doc: "The header trusted proxies name the client in: x-forwarded-for (default) or forwarded (RFC 7239)." },
    Key { name: "ack_timeout", example: Example::Commented("5.0"), doc: "Seconds an access request waits for the gateway to confirm." },
    Key { name: "admission_ttl", example: Example::Commented("3600"), doc: "Default admission lifetime in seconds for new servers." },
    Key { name: "token_ttl", example: Example::Commented("43200"), doc: "Lifetime of login tokens, in seconds." },
    Key { name: "enrollment_ttl", example: Example::Commented("86400"), doc: "Default validity of enrollment tokens, in seconds." },
    Key { name: "login_rate", example: Example::Commented("10"), doc: "Login attempts per minute per source address, and failed logins per minute per user name." },
    Key { name: "max_connections", example: Example::Commented("4096"), doc: "Connections open at once, all sources together (lowered to fit the open-files limit)." },
    Key { name: "max_connections_per_source", example: Example::Commented("64"), doc: "Connections open at once from one address (IPv6: one /64), except admin sources and trusted proxies." },
    Key { name: "admin_connections", example: Example::Commented("32"), doc: "Connections kept for admin sources, out of `max_connections`." },
    Key { name: "admin_source", example: Example::Commented("[\"127.0.0.0/8\", \"::1/128\"]"), doc: "Where the reserved admin connections may come from (default: loopback)." },
    Key { name: "header_timeout", example: Example::Commented("10.0"), doc: "Seconds a connection has for its TLS handshake and each request head; also the idle timeout." },
    Key { name: "metrics_listen", example: Example::Commented("\"127.0.0.1:9102\""), doc: "Serve Prometheus metrics (plain HTTP, GET /metrics) here: IP:PORT or unix:/PATH, never the HTTPS port. Keep it private. Default: off." },
    Key { name: "metrics_not_loopback", example: Example::Commented("false"), doc: "Allow `metrics_listen` on an address other than loopback (a private network Prometheus scrapes from)." },
    Key { name: "metrics_per_server", example: Example::Commented("false"), doc: "Label the live-admissions metric with each server's name (names can say whose server it is)." },
    Key { name: "public_url", example: Example::Commented("\"https://hushgate.example.net\""), doc: "The control plane's address as users' browsers reach it, for the link a device signing in by code shows ({public_url}/device). Default: the host the device reached." },
    Key { name: "probe_source", example: Example::Commented("[\"203.0.113.2\"]"), doc: "The address the reachability check of gateways sends from, for a control plane behind a NAT of its own: its public address, one per family (default: the control plane's address as each gateway reaches it)." },
    Key { name: "reachability_interval", example: Example::Commented("15"), doc: "Minutes between reachability checks of every connected gateway (besides one after each gateway report); 0: only after reports." },
    Key { name: "limit", example: Example::Commented("[\"servers-per-owner=20\", \"devices-per-user=20\"]"), doc: "What one account may make the control plane keep, NAME=N (docs/operating.md, \"Limits per account\"): servers-per-owner, shares-per-server, invitations-per-server, account-invitations, devices-per-user, sessions-per-user, pending-devices-per-server, enrollment-tokens-per-server." },
];

pub const GATEWAY_KEYS: &[Key] = &[
    Key { name: "control", example: Example::Set("\"https://control.example.net:8443\""), doc: "Control plane URL; for replicas, several URLs separated by commas." },
    Key { name: "ca", example: Example::Set("\"/etc/hushgate/ca.pem\""), doc: "CA certificate of the control plane to pin (its ca.pem); without it the public web PKI is trusted." },
    Key { name: "state", example: Example::Set("\"/var/lib/hushgate/gateway\""), doc: "State folder for the key and credential." },
    Key { name: "enroll_file", example: Example::Commented("\"/etc/hushgate/enroll-token\""), doc: "The enrollment token: the unit passes /etc/hushgate/enroll-token as the\nsystemd credential 'enroll-token' (see hushgate-gateway.service), read\non the first start only. Once the gateway has enrolled (its credential\nis in the state folder) the token is ignored and the file may be\ndeleted. Without systemd, name the file here instead:" },
    Key { name: "listen_udp", example: Example::Set("\"0.0.0.0:51820\""), doc: "UDP address to listen on (default 0.0.0.0:51820): the one port the router forwards." },
    Key { name: "port_mapping", example: Example::Set("\"auto\""), doc: "Port mapping on the home router: auto (default: PCP, NAT-PMP or UPnP,\nrenewed, deleted at a clean stop) or off (the port is forwarded by hand)." },
    Key { name: "router", example: Example::Commented("\"192.168.1.1\""), doc: "The router to ask for the port mapping (default: the IPv4 default router)." },
    Key { name: "port_mapping_check", example: Example::Commented("60"), doc: "How often the port mapping is checked on the router, in seconds (a router that restarted or changed its address without announcing it is noticed then)." },
    Key { name: "public_endpoint", example: Example::Commented("\"198.51.100.10:51820\""), doc: "The address clients send to. Default: the endpoint the router mapped,\nelse the address the control plane sees this host come from. Set it\nonly with a port forwarded by hand to another address:" },
    Key { name: "services", example: Example::Set("[\"plex=32400:127.0.0.1:32400\"]"), doc: "Services inside the tunnel: NAME=PORT:UPSTREAM." },
    Key { name: "direct", example: Example::Commented("[\"plex=32401:127.0.0.1:32400\"]"), doc: "Direct (firewall-only) services for players without a tunnel; forward\nthis TCP port on the router too. Needs the pre-filter." },
    Key { name: "prefilter", example: Example::Set("\"required\""), doc: "Kernel pre-filter: auto (default), required or off." },
    Key { name: "max_connections_per_client", example: Example::Commented("128"), doc: "What one client may hold in the gateway's TCP stack (docs/operating.md,\n\"Per-client limits of the TCP stack\"); these are the defaults." },
    Key { name: "max_pending_per_client", example: Example::Commented("16"), doc: "" },
    Key { name: "buffer_growth_per_client_mib", example: Example::Commented("64"), doc: "" },
    Key { name: "metrics_listen", example: Example::Commented("\"127.0.0.1:9101\""), doc: "Serve Prometheus metrics (GET /metrics) on a loopback address or\nunix:/PATH; never the public UDP port. Default: off." },
];

pub const CONNECT_KEYS: &[Key] = &[
    Key { name: "control", example: Example::Set("\"https://control.example.net:8443\""), doc: "Control plane URL; for replicas, several URLs separated by commas." },
    Key { name: "ca", example: Example::Set("\"/home/me/.config/hushgate/ca.pem\""), doc: "CA certificate to pin (the ca.pem the control plane printed); without it the public web roots are trusted." },
    Key { name: "user", example: Example::Set("\"alice\""), doc: "Your user name at the control plane. The password is never in this file: it is asked for, or read from HUSHGATE_PASSWORD." },
    Key { name: "server", example: Example::Set("\"living-room\""), doc: "The media server's name." },
    Key { name: "service", example: Example::Commented("\"plex\""), doc: "The service to reach (default: the first one offered)." },
    Key { name: "listen", example: Example::Commented("\"127.0.0.1:32400\""), doc: "Local address for the player (default 127.0.0.1:32400)." },
];

/// `hushgate example-config ROLE`: what deploy/ROLE.toml holds.
pub fn example_for(role: &str) -> String {
    match role {
        "control" => example(CONTROL_HEADER, CONTROL_KEYS),
        "gateway" => example(GATEWAY_HEADER, GATEWAY_KEYS),
        _ => example(CONNECT_HEADER, CONNECT_KEYS),
    }
}

/// `# ` comment lines of at most `width` characters of text.
fn wrap(text: &str, width: usize) -> String {
    let mut out = String::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.len() + 1 + word.len() > width {
            out += &format!("# {line}\n");
            line.clear();
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line += word;
    }
    if !line.is_empty() {
        out += &format!("# {line}\n");
    }
    out
}

/// The example file for a role, as shipped in deploy/.
pub fn example(header: &str, keys: &[Key]) -> String {
    let mut out = String::new();
    for line in header.lines() {
        out += &format!("# {line}\n").replace("# \n", "#\n");
    }
    for k in keys {
        for line in k.doc.lines().filter(|l| !l.is_empty()) {
            out += &wrap(line, 74);
        }
        match k.example {
            Example::Set(v) => out += &format!("{} = {v}\n", k.name),
            Example::Commented(v) => out += &format!("# {} = {v}\n", k.name),
        }
    }
    out
}

pub const CONTROL_HEADER: &str = "hushgate control --config /etc/hushgate/control.toml\n\
Generated by `hushgate example-config control` (its tests check this file).\n\
Every key is a long flag of `hushgate control` (`_` for `-`); a flag or its\n\
environment variable (HUSHGATE_CONTROL_LISTEN, ...) overrides the file.\n\
Owned by root, mode 0644: it holds no secret.";

pub const GATEWAY_HEADER: &str = "hushgate gateway --config /etc/hushgate/gateway.toml\n\
Generated by `hushgate example-config gateway` (its tests check this file).\n\
Every key is a long flag of `hushgate gateway` (`_` for `-`); a flag or its\n\
environment variable (HUSHGATE_GATEWAY_CONTROL, ...) overrides the file.\n\
Owned by root, mode 0644: it holds no secret.";

pub const CONNECT_HEADER: &str = "hushgate connect --config ~/.config/hushgate/connect.toml\n\
Generated by `hushgate example-config connect` (its tests check this file).\n\
Every key is a long flag of `hushgate connect` (`_` for `-`); a flag or its\n\
environment variable (HUSHGATE_CONNECT_SERVER, ...) overrides the file.\n\
`hushgate connect NAME` keeps the same keys in a profile of its own.";

#[cfg(test)]
mod tests {
    use super::*;

    /// The keys serde accepts, from its refusal of an unknown one (which
    /// is also what an operator with a typo sees).
    fn known_keys<T: serde::de::DeserializeOwned + std::fmt::Debug>() -> Vec<String> {
        let err = toml::from_str::<T>("no_such_key = 1")
            .unwrap_err()
            .to_string();
        assert!(err.contains("expected one of"), "{err}");
        let list = err.split("expected one of").nth(1).unwrap();
        list.split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect()
    }

    fn names(keys: &[Key]) -> Vec<String> {
        keys.iter().map(|k| k.name.to_string()).collect()
    }

    /// Every key set, the commented ones too.
    fn uncommented(text: &str, keys: &[Key]) -> String {
        let mut t = text.to_string();
        for k in keys {
            t = t.replace(&format!("# {} = ", k.name), &format!("{} = ", k.name));
        }
        t
    }

    fn check_role<T: serde::de::DeserializeOwned + std::fmt::Debug>(
        file: &str,
        header: &str,
        keys: &[Key],
    ) {
        let path = format!("{}/../deploy/{file}", env!("CARGO_MANIFEST_DIR"));
        let generated = example(header, keys);
        if std::env::var_os("HUSHGATE_WRITE_EXAMPLES").is_some() {
            std::fs::write(&path, &generated).unwrap();
        }
        let shipped = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            shipped, generated,
            "deploy/{file} differs from what hushgate/src/cmd/config.rs generates; regenerate it with HUSHGATE_WRITE_EXAMPLES=1 cargo test -p hushgate --bin hushgate config"
        );
        // The table names exactly the keys the parser takes.
        let mut known = known_keys::<T>();
        known.sort();
        let mut listed = names(keys);
        listed.sort();
        assert_eq!(known, listed, "deploy/{file}: keys");
        // Every example value is valid, set or commented.
        toml::from_str::<T>(&uncommented(&shipped, keys))
            .unwrap_or_else(|e| panic!("deploy/{file} with every key set: {e}"));
        // docs/operating.md documents each key.
        let docs = include_str!("../../../docs/operating.md");
        for k in keys {
            assert!(
                docs.contains(&format!("| `{}` |", k.name)),
                "docs/operating.md has no row for {file}'s key `{}`",
                k.name
            );
        }
    }

    #[test]
    fn config_examples_parsers_and_docs_agree() {
        check_role::<ControlFile>("control.toml", CONTROL_HEADER, CONTROL_KEYS);
        check_role::<gateway::GatewayFile>("gateway.toml", GATEWAY_HEADER, GATEWAY_KEYS);
        check_role::<ConnectFile>("connect.toml", CONNECT_HEADER, CONNECT_KEYS);
    }

    #[test]
    fn a_typo_is_refused_with_the_known_keys() {
        let e = toml::from_str::<ControlFile>("listne = \"0.0.0.0:1\"").unwrap_err();
        let e = e.to_string();
        assert!(e.contains("unknown field `listne`"), "{e}");
        assert!(
            e.contains("`listen`") && e.contains("`metrics_listen`"),
            "{e}"
        );
        assert!(toml::from_str::<ConnectFile>("password = \"x\"").is_err());
    }
}
