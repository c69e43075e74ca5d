//! The whole hushgate on loopback: a real control plane (HTTPS with its
//! private CA, SQLite in a temporary folder), an operator, user `alice`
//! granted server `den`, the stand-in media server, and a real gateway
//! (UDP on 127.0.0.1) enrolled with the control plane and forwarding
//! service `plex` to the media server. [`Options`] says what differs.

use crate::media::Upstream;
use crate::nat::Nat;
use client_shim::{Credentials, Session, ShimConfig, ShimError};
use control_client::{ControlClient, Trust};
use gateway::{Gateway, GatewayConfig, ServiceSpec};
use proto::api::{CreateGrant, CreateServer, CreateUser, ServerPolicy, ServiceInfo, ShareRequest};
use proto::feed::GatewayReport;
use proto::{BindingPolicy, WgKey};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const USER: &str = "alice";
pub const PASSWORD: &str = "password-of-alice";
pub const SERVER: &str = "den";
/// The owner of `den` in worlds with [`Options::owned`].
pub const OWNER: &str = "olga";

/// The password the kit gives account `user`: "password-of-USER" (the
/// owner [`OWNER`] excepted: [`PASSWORD`]).
pub fn password_of(user: &str) -> String {
    format!("password-of-{user}")
}

/// A WireGuard key with every byte `n`.
pub fn key(n: u8) -> WgKey {
    WgKey([n; 32])
}

/// What to build.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The server's admission lifetime (default: the control plane's).
    pub ttl_secs: Option<u64>,
    /// Put the client behind a [`Nat`] whose public address starts as
    /// 127.0.0.1.
    pub nat: bool,
    /// `den` belongs to the account [`OWNER`] (who shares it with alice
    /// and approves each new device) instead of the operator.
    pub owned: bool,
    /// More accounts granted `den` beside alice, each with the password
    /// [`password_of`] its name.
    pub more_users: Vec<&'static str>,
    /// How long the control plane waits for the gateway's acknowledgement
    /// (default: the control plane's).
    pub ack_timeout: Option<Duration>,
    /// The gateway's per-client limits.
    pub peer_limits: gateway::PeerLimits,
    /// Start no gateway: the test enrolls its own with
    /// [`World::enrollment_token`].
    pub no_gateway: bool,
}

/// Control plane + upstream + gateway, with user `alice` granted server
/// `den` (binding `exact`).
#[derive(Debug)]
pub struct World {
    pub dir: tempfile::TempDir,
    /// The control plane as the gateway (and an admin) reach it.
    pub control_url: String,
    pub ca: PathBuf,
    /// The control plane without a bearer.
    pub base: ControlClient,
    /// The operator.
    pub admin: ControlClient,
    pub upstream: Upstream,
    pub gateway: Option<Gateway>,
    pub nat: Option<Nat>,
    /// `den`'s enrollment token (used already when the kit started the
    /// gateway).
    pub enrollment_token: String,
    pub control: Option<control::Serving>,
}

impl World {
    pub async fn start(opts: Options) -> World {
        let dir = tempfile::tempdir().unwrap();
        let defaults = control::Settings::default();
        let serving = control::ControlPlane::spawn_on_loopback(
            dir.path().join("control"),
            control::Settings {
                login_per_minute: 1000,
                // Sign-in by code: a device polls once a second, so a
                // test's approval is seen at once.
                device_code_interval: Duration::from_secs(1),
                ack_timeout: opts.ack_timeout.unwrap_or(defaults.ack_timeout),
                ..defaults
            },
        )
        .unwrap();
        let ca = serving.ca_file.clone().unwrap();
        let control_url = serving.url.clone();
        let base = client(&control_url, &ca);
        let admin = base.with_bearer(&serving.admin_token().unwrap());
        add_user(&admin, USER).await;
        let req = CreateServer {
            name: SERVER.into(),
            binding: BindingPolicy::Exact,
            admission_ttl_secs: opts.ttl_secs,
        };
        let server = if opts.owned {
            // The owner has alice's password: tests run the CLI as
            // either with one HUSHGATE_PASSWORD.
            admin
                .create_user(&CreateUser {
                    username: OWNER.into(),
                    password: PASSWORD.into(),
                    admin: false,
                })
                .await
                .unwrap();
            let owner = base.with_bearer(&base.login(OWNER, PASSWORD).await.unwrap().token);
            let server = owner.register_server(&req).await.unwrap();
            owner
                .update_policy(
                    SERVER,
                    &ServerPolicy {
                        approve_devices: Some(true),
                        ..Default::default()
                    },
                )
                .await
                .unwrap();
            owner
                .share(
                    SERVER,
                    &ShareRequest {
                        username: USER.into(),
                        services: None,
                        direct: false,
                    },
                )
                .await
                .unwrap();
            server
        } else {
            let server = admin.create_server(&req).await.unwrap();
            grant(&admin, USER, SERVER).await;
            server
        };
        for user in &opts.more_users {
            add_user_with_grant(&admin, user, SERVER).await;
        }
        let upstream = Upstream::start();

        // The NAT binds first so that the gateway can announce its
        // address; it forwards to the gateway once that runs.
        let nat = if opts.nat {
            Some(Nat::start("127.0.0.1".parse().unwrap(), serving.addr).await)
        } else {
            None
        };
        let gateway = if opts.no_gateway {
            None
        } else {
            // Bound here and handed over: no port to free and bind again.
            let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("a loopback UDP port");
            let listen_udp = udp.local_addr().unwrap();
            let config = GatewayConfig {
                listen_udp,
                public_endpoint: nat.as_ref().map(|n| n.udp),
                peer_limits: opts.peer_limits,
                enroll_token: Some(server.enrollment_token.clone().into()),
                ..gateway_config(
                    &control_url,
                    &ca,
                    &dir.path().join("gateway"),
                    upstream.addr,
                )
            };
            let gateway = Gateway::start_on(config, udp)
                .await
                .expect("the gateway starts and enrolls");
            assert_eq!(gateway.udp_addr(), listen_udp);
            assert!(gateway.wait_synced(Duration::from_secs(10)).await);
            if let Some(n) = &nat {
                n.forward_to(gateway.udp_addr());
            }
            Some(gateway)
        };
        World {
            dir,
            control_url,
            ca,
            base,
            admin,
            upstream,
            gateway,
            nat,
            enrollment_token: server.enrollment_token,
            control: Some(serving),
        }
    }

    pub fn gateway(&self) -> &Gateway {
        self.gateway.as_ref().expect("the world has a gateway")
    }

    /// A client of this control plane without a bearer.
    pub fn client(&self) -> ControlClient {
        client(&self.control_url, &self.ca)
    }

    /// The owner's client (worlds with [`Options::owned`]).
    pub async fn owner(&self) -> ControlClient {
        let t = self.base.login(OWNER, PASSWORD).await.unwrap().token;
        self.base.with_bearer(&t)
    }

    /// `user`'s client, from one password login.
    pub async fn login(&self, user: &str) -> ControlClient {
        let t = self
            .base
            .login(user, &password_of(user))
            .await
            .unwrap()
            .token;
        self.base.with_bearer(&t)
    }

    /// Alice's user token, from one password login.
    pub async fn token(&self) -> String {
        self.base.login(USER, PASSWORD).await.unwrap().token
    }

    /// A shim session for alice (logged in already: a token), through
    /// the NAT if any.
    pub async fn session(&self) -> Result<Session, ShimError> {
        Session::connect(self.shim_config(Credentials::Token(self.token().await))).await
    }

    /// A shim configuration for server `den`, through the NAT if any.
    pub fn shim_config(&self, credentials: Credentials) -> ShimConfig {
        ShimConfig {
            control_url: match &self.nat {
                Some(n) => n.control_url(),
                None => self.control_url.clone(),
            },
            trust: Trust::from_ca_file(&self.ca).unwrap(),
            credentials,
            server: SERVER.into(),
            service: None,
            listen: "127.0.0.1:0".parse().unwrap(),
            device: None,
            on_waiting: None,
        }
    }

    /// Stops the control plane only (the gateway keeps what it has).
    pub async fn stop_control(&mut self) {
        if let Some(c) = self.control.take() {
            let _ = c.stop().await;
        }
    }

    pub async fn stop(mut self) {
        if let Some(g) = self.gateway.take() {
            g.shutdown().await;
        }
        self.stop_control().await;
    }
}

/// A client of the control plane at `url` that trusts the CA in `ca`.
pub fn client(url: &str, ca: &Path) -> ControlClient {
    ControlClient::new(url, Trust::from_ca_file(ca).unwrap()).unwrap()
}

/// A gateway on 127.0.0.1 (a port of its choosing) with its state in
/// `state_dir`, following the control plane at `control_url`, forwarding
/// service `plex` (port 32400) to `upstream`, with no pre-filter and no
/// port mapping; a test sets `enroll_token` and what else it is about.
pub fn gateway_config(
    control_url: &str,
    ca: &Path,
    state_dir: &Path,
    upstream: SocketAddr,
) -> GatewayConfig {
    GatewayConfig {
        control_url: control_url.into(),
        trust: Trust::from_ca_file(ca).unwrap(),
        state_dir: state_dir.into(),
        listen_udp: "127.0.0.1:0".parse().unwrap(),
        public_endpoint: None,
        services: vec![ServiceSpec {
            name: "plex".into(),
            port: 32400,
            upstream,
        }],
        direct: vec![],
        peer_limits: Default::default(),
        prefilter: gateway::PrefilterMode::Off,
        enroll_token: None,
        // Tests run on loopback: never ask the host's real router.
        port_mapping: gateway::PortMapConfig {
            mode: gateway::PortMappingMode::Off,
            ..Default::default()
        },
    }
}

/// What a gateway with key `k` reports when it enrolls: endpoint
/// 198.51.100.10:51820, service `plex` on port 32400.
pub fn report(k: WgKey) -> GatewayReport {
    GatewayReport {
        public_key: k,
        public_endpoint: Some("198.51.100.10:51820".parse().unwrap()),
        listen_port: 51820,
        services: vec![ServiceInfo {
            name: "plex".into(),
            port: 32400,
        }],
        direct_services: vec![],
        network: None,
    }
}

/// Creates the account `user` with the password [`password_of`] it.
pub async fn add_user(admin: &ControlClient, user: &str) {
    admin
        .create_user(&CreateUser {
            username: user.into(),
            password: password_of(user),
            admin: false,
        })
        .await
        .unwrap();
}

/// Grants `user` every service of `server`, tunnel only.
pub async fn grant(admin: &ControlClient, user: &str, server: &str) {
    admin
        .create_grant(&CreateGrant {
            username: user.into(),
            server: server.into(),
            services: None,
            direct: false,
        })
        .await
        .unwrap();
}

/// Creates user `user` with a grant on the existing server `server`.
pub async fn add_user_with_grant(admin: &ControlClient, user: &str, server: &str) {
    add_user(admin, user).await;
    grant(admin, user, server).await;
}

/// Creates user `user`, server `server` (admission lifetime `ttl`) and a
/// grant between them; returns the enrollment token.
pub async fn seed(admin: &ControlClient, user: &str, server: &str, ttl: Option<u64>) -> String {
    add_user(admin, user).await;
    let s = admin
        .create_server(&CreateServer {
            name: server.into(),
            binding: Default::default(),
            admission_ttl_secs: ttl,
        })
        .await
        .unwrap();
    grant(admin, user, server).await;
    s.enrollment_token
}
