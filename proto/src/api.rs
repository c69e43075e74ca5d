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
    /// The current TOTP code, or one of the account's recovery codes:
    /// needed when the account has TOTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub totp: Option<String>,
    /// The device credential this client keeps (from an earlier login's
    /// `device_credential`), or none: then the login registers a new
    /// device named `device_name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_credential: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_name: Option<String>,
}

impl std::fmt::Debug for LoginRequest {
    // The secret never reaches logs through `{:?}`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginRequest")
            .field("username", &self.username)
            .field("password", &"<hidden>")
            .field("totp", &self.totp.as_ref().map(|_| "<hidden>"))
            .field(
                "device_credential",
                &self.device_credential.as_ref().map(|_| "<hidden>"),
            )
            .field("device_name", &self.device_name)
            .finish()
    }
}

#[derive(Clone, Serialize, Deserialize)]
pub struct LoginResponse {
    /// Bearer token for `Authorization: Bearer ...`.
    pub token: String,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// The device this login counts as (when the client named one or
    /// asked for a new one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// A new device's long-lived credential, shown once: the client keeps
    /// it (0600) and sends it with every later login.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_credential: Option<String>,
}

impl std::fmt::Debug for LoginResponse {
    // The secret never reaches logs through `{:?}`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginResponse")
            .field("expires_at", &self.expires_at)
            .field("token", &"<hidden>")
            .field("device_id", &self.device_id)
            .field(
                "device_credential",
                &self.device_credential.as_ref().map(|_| "<hidden>"),
            )
            .finish()
    }
}

/// `POST /v1/device-codes`: a device without a keyboard asks to be
/// signed in by code (RFC 8628's device authorization request).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceCodeRequest {
    /// What the approving user sees and the device is registered as
    /// ("living-room TV").
    pub device_name: String,
}

/// The answer to [`DeviceCodeRequest`] (RFC 8628, section 3.2).
#[derive(Clone, Serialize, Deserialize)]
pub struct DeviceCodeGrant {
    /// The device's secret for polling; never shown to anyone.
    pub device_code: String,
    /// What the device shows, `XXXX-XXXX`.
    pub user_code: String,
    /// Where the user types the code (`{control plane}/device`).
    pub verification_uri: String,
    /// The same with the code in it, for a QR code.
    pub verification_uri_complete: String,
    /// Seconds until both codes stop working.
    pub expires_in: u64,
    /// Least seconds between two polls.
    pub interval: u64,
}

impl std::fmt::Debug for DeviceCodeGrant {
    // The device code never reaches logs through `{:?}`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceCodeGrant")
            .field("device_code", &"<hidden>")
            .field("user_code", &self.user_code)
            .field("verification_uri", &self.verification_uri)
            .field("expires_in", &self.expires_in)
            .field("interval", &self.interval)
            .finish()
    }
}

/// `POST /v1/device-codes/token`: the device's poll.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceCodePoll {
    pub device_code: String,
}

impl std::fmt::Debug for DeviceCodePoll {
    // The secret never reaches logs through `{:?}`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DeviceCodePoll(..)")
    }
}

/// `POST /v1/device-codes/approve` and `/deny`: a signed-in user's
/// decision on the code a device shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceCodeDecision {
    /// As shown, with or without the dash, any case.
    pub user_code: String,
}

/// What a decision was about.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeviceCodeDecided {
    /// The name the device asked to be registered as.
    pub device_name: String,
    /// The address the device asked from.
    pub source: String,
    pub approved: bool,
}

/// `POST /v1/login/device`: a device registered by a code sign-in signs
/// in again with its credential alone.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceLogin {
    pub device_credential: String,
}

impl std::fmt::Debug for DeviceLogin {
    // The secret never reaches logs through `{:?}`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DeviceLogin(..)")
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
    /// With `limit_reached`: which of the operator's limits, and its value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<LimitDetail>,
}

/// The operator's limit a request ran into (`limit_reached`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitDetail {
    /// The limit's name, as `hushgate control --limit NAME=N` spells it,
    /// e.g. `servers-per-owner`.
    pub name: String,
    /// Its value: how many the control plane keeps at most.
    pub max: u64,
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
    /// The account that owns it (none: the operator's).
    #[serde(default)]
    pub owner: Option<String>,
    /// Direct (firewall-only) admissions are allowed at all.
    #[serde(default = "yes")]
    pub direct_mode: bool,
    /// Access needs a login that used TOTP.
    #[serde(default)]
    pub require_2fa: bool,
    /// Each device's first access waits for the owner's approval.
    #[serde(default)]
    pub approve_devices: bool,
}

fn yes() -> bool {
    true
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

// ---------- self-service: accounts, owners, shares ----------

/// Hides a secret from `{:?}`.
fn hidden<T>(v: &Option<T>) -> Option<&'static str> {
    v.as_ref().map(|_| "<hidden>")
}

/// `POST /v1/signup`: a new account, with an invitation link's secret
/// when sign-up is not open (a server invitation also shares that server).
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignupRequest {
    pub username: String,
    pub password: String,
    #[serde(default)]
    pub invitation: Option<String>,
}

impl std::fmt::Debug for SignupRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignupRequest")
            .field("username", &self.username)
            .field("password", &"<hidden>")
            .field("invitation", &hidden(&self.invitation))
            .finish()
    }
}

/// `GET`/`PUT /v1/admin/signup`: who may create an account.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignupSetting {
    /// "open", "invite-only" (the default) or "closed".
    pub mode: String,
}

/// `GET /v1/me`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccountInfo {
    pub username: String,
    /// The operator (an admin account).
    pub operator: bool,
    /// The servers this account owns.
    pub owns: Vec<String>,
    pub totp: bool,
    pub recovery_codes_left: u64,
    /// Whether this login used TOTP.
    pub session_mfa: bool,
}

/// `PATCH /v1/servers/{name}`: what the owner changes.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerPolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binding: Option<BindingPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admission_ttl_secs: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_admissions_per_user: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct_mode: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require_2fa: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approve_devices: Option<bool>,
}

/// `POST /v1/servers/{name}/shares`: share with an existing account.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShareRequest {
    pub username: String,
    /// None: every service.
    #[serde(default)]
    pub services: Option<Vec<String>>,
    #[serde(default)]
    pub direct: bool,
}

/// `POST /v1/servers/{name}/invitations` (and `/v1/admin/invitations`
/// for an account without a share).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewInvitation {
    #[serde(default)]
    pub services: Option<Vec<String>>,
    #[serde(default)]
    pub direct: bool,
    /// How long the link works (default 7 days, at most 30).
    #[serde(default)]
    pub ttl_secs: Option<u64>,
    /// How many accounts may use it (default 1).
    #[serde(default)]
    pub uses: Option<u32>,
}

/// A new invitation: the secret is shown here once.
#[derive(Clone, Serialize, Deserialize)]
pub struct IssuedInvitation {
    pub id: String,
    pub server: Option<String>,
    pub token: String,
    pub uses: u32,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

impl std::fmt::Debug for IssuedInvitation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedInvitation")
            .field("id", &self.id)
            .field("server", &self.server)
            .field("token", &"<hidden>")
            .field("uses", &self.uses)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InvitationInfo {
    pub id: String,
    pub server: Option<String>,
    pub services: Option<Vec<String>>,
    pub direct: bool,
    pub uses_left: u32,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

/// `POST /v1/invitations/accept`: a signed-in account takes a share.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcceptInvitation {
    pub invitation: String,
}

impl std::fmt::Debug for AcceptInvitation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AcceptInvitation { invitation: <hidden> }")
    }
}

/// `POST /v1/me/totp`: a new secret, in effect only once a code from
/// it is confirmed.
#[derive(Clone, Serialize, Deserialize)]
pub struct TotpEnrollment {
    /// Base32, for typing into an authenticator.
    pub secret: String,
    /// `otpauth://totp/...`, what the QR code holds.
    pub otpauth_uri: String,
    /// The QR code as an SVG image.
    pub qr_svg: String,
}

impl std::fmt::Debug for TotpEnrollment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TotpEnrollment { <hidden> }")
    }
}

/// `POST /v1/me/totp/confirm` and `DELETE /v1/me/totp`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TotpCode {
    pub code: String,
}

impl std::fmt::Debug for TotpCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TotpCode { <hidden> }")
    }
}

/// Recovery codes, shown once; each works once instead of a TOTP code.
#[derive(Clone, Serialize, Deserialize)]
pub struct RecoveryCodes {
    pub codes: Vec<String>,
}

impl std::fmt::Debug for RecoveryCodes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RecoveryCodes {{ {} codes }}", self.codes.len())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceInfo {
    pub id: String,
    pub name: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_used: Option<OffsetDateTime>,
}

/// `PATCH /v1/me/devices/{id}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenameDevice {
    pub name: String,
}

/// A device that asked for a server that approves devices.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceRequestInfo {
    pub device_id: String,
    pub device_name: String,
    pub username: String,
    /// "pending", "approved" or "denied".
    pub state: String,
    #[serde(with = "time::serde::rfc3339")]
    pub requested_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub decided_at: Option<OffsetDateTime>,
}

/// `PUT /v1/servers/{name}/devices/{id}`: the owner's decision.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceDecision {
    pub approve: bool,
}

/// One live login of the caller's account (`GET /v1/me/sessions`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionInfo {
    /// Names the login for `DELETE /v1/me/sessions/{id}` (not a secret).
    pub id: String,
    /// The login this request was made with.
    pub current: bool,
    /// The login used a second factor.
    pub mfa: bool,
    /// The device it came from, if the client named one.
    pub device_id: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

/// `PUT /v1/me/password`: the account changes its own password.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangePassword {
    pub current_password: String,
    pub new_password: String,
}

impl std::fmt::Debug for ChangePassword {
    // The secrets never reach logs through `{:?}`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChangePassword { .. }")
    }
}
