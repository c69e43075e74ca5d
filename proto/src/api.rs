//! JSON bodies of the control plane's HTTP API (documented in
//! `docs/api.md`). Requests reject unknown fields so that a typo in a
//! client is a clear 400, not a silently ignored setting.

use crate::{BindingPolicy, WgKey};
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, SocketAddr};
use time::OffsetDateTime;

/// `POST /v1/login`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for LoginRequest {
    // The secret never reaches logs through `{:?}`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginRequest")
            .field("username", &self.username)
            .field("password", &"<hidden>")
            .finish()
    }
}

#[derive(Clone, Serialize, Deserialize)]
pub struct LoginResponse {
    /// Bearer token for `Authorization: Bearer ...`.
    pub token: String,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

impl std::fmt::Debug for LoginResponse {
    // The secret never reaches logs through `{:?}`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginResponse")
            .field("expires_at", &self.expires_at)
            .field("token", &"<hidden>")
            .finish()
    }
}

/// How a client wants to reach the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AccessMode {
    /// A WireGuard tunnel: admission by key and source address.
    #[default]
    Tunnel,
    /// The media server's TCP port opened to the source address only
    /// (firewall-only mode, for players that cannot run a tunnel).
    Direct,
}

/// `POST /v1/access`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessRequest {
    pub server: String,
    /// The client's ephemeral WireGuard public key (tunnel mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<WgKey>,
    #[serde(default)]
    pub mode: AccessMode,
}

/// One service reachable through the tunnel (a TCP port on the
/// service address).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceInfo {
    pub name: String,
    pub port: u16,
}

/// The answer to a tunnel-mode access request: everything a WireGuard
/// peer needs, and nothing before the gateway has installed the peer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccessResponse {
    pub admission_id: String,
    pub gateway_endpoint: SocketAddr,
    pub gateway_public_key: WgKey,
    /// The client's address inside the tunnel.
    pub client_address: IpAddr,
    /// The gateway's address inside the tunnel; services listen here.
    pub service_address: IpAddr,
    pub services: Vec<ServiceInfo>,
    pub preshared_key: Option<WgKey>,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// Present when the control plane's last check of the gateway's
    /// endpoint got no answer: the tunnel will probably not come up, and
    /// this says why in plain words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_reachability: Option<crate::reach::ReachabilityView>,
}

/// The answer to a direct-mode access request: the media server's port,
/// opened at the gateway to the client's source address only (and, under
/// `prefix:V4,V6`, to its whole prefix), until `expires_at`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DirectAccessResponse {
    pub admission_id: String,
    /// Where the player connects with plain TCP.
    pub direct_endpoint: SocketAddr,
    /// The direct services the grant covers; `direct_endpoint` is the
    /// first one's.
    pub services: Vec<ServiceInfo>,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

/// The error body of every non-2xx answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `no_access`, `gateway_offline`.
    pub code: String,
    /// A sentence a person can act on.
    pub message: String,
}

/// `POST /v1/admin/users`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    pub username: String,
    pub password: String,
    #[serde(default)]
    pub admin: bool,
}

impl std::fmt::Debug for CreateUser {
    // The secret never reaches logs through `{:?}`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreateUser")
            .field("username", &self.username)
            .field("admin", &self.admin)
            .field("password", &"<hidden>")
            .finish()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserInfo {
    pub username: String,
    pub admin: bool,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// `POST /v1/admin/servers`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateServer {
    pub name: String,
    #[serde(default)]
    pub binding: BindingPolicy,
    /// How long an admission lives before it must be renewed, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admission_ttl_secs: Option<u64>,
}

/// More of `POST /v1/admin/servers`, sent in the same JSON object as
/// [`CreateServer`]'s fields (see `ControlClient::create_server_with`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerOptions {
    /// Live admissions one user may hold on the server at once (default 8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_admissions_per_user: Option<u32>,
    /// How long the enrollment token is valid, in seconds (default a day).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrollment_ttl_secs: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreatedServer {
    pub name: String,
    /// One-time token the gateway exchanges for its credential.
    pub enrollment_token: String,
    /// The token's id, to list or revoke it (never the secret).
    #[serde(default)]
    pub enrollment_token_id: String,
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub enrollment_expires_at: Option<OffsetDateTime>,
}

/// `PATCH /v1/admin/servers/{name}`: only the fields present change.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateServer {
    /// A new name (rename); admissions, grants and the gateway stay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admission_ttl_secs: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_admissions_per_user: Option<u32>,
}

/// `DELETE /v1/admin/servers/{name}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RemovedServer {
    pub name: String,
    /// Admissions that ended with the server.
    pub admissions_ended: usize,
    /// Whether the gateway confirmed it dropped them (false when it is
    /// offline: it then keeps them at most until they expire).
    pub gateway_confirmed: bool,
}

/// `POST /v1/admin/servers/{name}/enrollment-tokens`: a new one-time
/// token; the gateway that uses it gets a new credential, which replaces
/// the server's current one.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewEnrollmentToken {
    /// Validity in seconds (default a day).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_secs: Option<u64>,
    /// Also make the current gateway credential stop working now, not
    /// only when the token is used (for a credential that leaked).
    #[serde(default)]
    pub revoke_credential: bool,
}

/// A freshly issued enrollment token (the secret is shown only here).
#[derive(Clone, Serialize, Deserialize)]
pub struct IssuedEnrollmentToken {
    pub id: String,
    pub server: String,
    pub token: String,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

impl std::fmt::Debug for IssuedEnrollmentToken {
    // The secret never reaches logs through `{:?}`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedEnrollmentToken")
            .field("id", &self.id)
            .field("server", &self.server)
            .field("expires_at", &self.expires_at)
            .field("token", &"<hidden>")
            .finish()
    }
}

/// A live enrollment token as listed (no secret).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnrollmentTokenInfo {
    pub id: String,
    pub server: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

/// `PUT /v1/admin/users/{name}/password`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetPassword {
    pub password: String,
}

impl std::fmt::Debug for SetPassword {
    // The secret never reaches logs through `{:?}`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SetPassword")
            .field("password", &"<hidden>")
            .finish()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerInfo {
    pub name: String,
    pub binding: BindingPolicy,
    pub admission_ttl_secs: u64,
    pub enrolled: bool,
    pub gateway_public_key: Option<WgKey>,
    pub gateway_endpoint: Option<SocketAddr>,
    pub services: Vec<ServiceInfo>,
    /// Whether the gateway holds its feed open right now.
    pub gateway_connected: bool,
    #[serde(with = "time::serde::rfc3339::option")]
    pub gateway_last_seen: Option<OffsetDateTime>,
    pub feed_version: u64,
    pub acked_version: u64,
    #[serde(default)]
    pub max_admissions_per_user: u32,
    /// The gateway's port mapping as it last reported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_mapping: Option<crate::reach::MappingReport>,
    /// The last reachability check and its diagnosis.
    #[serde(default)]
    pub reachability: crate::reach::ReachabilityView,
}

/// `POST /v1/admin/grants`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateGrant {
    pub username: String,
    pub server: String,
    /// Service names the user may reach; absent means all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub services: Option<Vec<String>>,
    /// Whether the user may ask for direct (firewall-only) admissions.
    #[serde(default)]
    pub direct: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GrantInfo {
    pub username: String,
    pub server: String,
    pub services: Option<Vec<String>>,
    pub direct: bool,
    /// Things the admin should know about the grant (e.g. the gateway has
    /// not reported its services yet, so the names could not be checked).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// One admission as shown to an admin (no preshared key).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdmissionInfo {
    pub id: String,
    pub username: String,
    pub server: String,
    pub mode: AccessMode,
    pub client_public_key: Option<WgKey>,
    pub source: IpAddr,
    pub binding: BindingPolicy,
    pub client_address: Option<IpAddr>,
    pub services: Vec<String>,
    /// `pending` (pushed, not yet acknowledged) or `active`.
    pub state: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

/// One line of the audit log.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditEntry {
    pub id: i64,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// `login`, `login_failed`, `access_granted`, `access_denied`,
    /// `revoked`, `expired`, `enrolled`, ...
    pub event: String,
    pub username: Option<String>,
    pub server: Option<String>,
    pub admission_id: Option<String>,
    pub source: Option<String>,
    pub detail: String,
}

/// `POST /v1/admissions/{id}/renew`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RenewResponse {
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// True when this renewal came from an address the admission's
    /// binding does not admit (the client's network changed: Wi-Fi to
    /// mobile data, a new NAT address): the tunnel cannot work from
    /// there, and the client should ask for a new admission at once
    /// rather than wait for the path to count as lost. Absent from
    /// control planes that predate it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moved: Option<bool>,
}
