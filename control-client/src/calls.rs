//! One typed method per endpoint of the control plane's API (see
//! docs/api.md for the shapes).

use crate::{ClientError, ControlClient};
use proto::api::*;
use proto::feed::*;
use proto::WgKey;
use reqwest::Method;
use std::time::Duration;

/// Ordinary calls answer at once; this bounds a hung connection.
const CALL: Duration = Duration::from_secs(15);
/// An access request waits for the gateway's acknowledgement.
const ACCESS: Duration = Duration::from_secs(30);

type R<T> = Result<T, ClientError>;

impl ControlClient {
    pub async fn login(&self, username: &str, password: &str) -> R<LoginResponse> {
        let body = LoginRequest {
            username: username.into(),
            password: password.into(),
            totp: None,
            device_credential: None,
            device_name: None,
        };
        self.call(Method::POST, "/v1/login", Some(&body), CALL)
            .await
    }

    /// Tunnel access with the client's ephemeral public key.
    pub async fn access(&self, server: &str, public_key: WgKey) -> R<AccessResponse> {
        let body = AccessRequest {
            server: server.into(),
            public_key: Some(public_key),
            mode: AccessMode::Tunnel,
        };
        self.call(Method::POST, "/v1/access", Some(&body), ACCESS)
            .await
    }

    /// Direct (firewall-only) access: the server's TCP port opened to the
    /// address this request comes from.
    pub async fn access_direct(&self, server: &str) -> R<DirectAccessResponse> {
        let body = AccessRequest {
            server: server.into(),
            public_key: None,
            mode: AccessMode::Direct,
        };
        self.call(Method::POST, "/v1/access", Some(&body), ACCESS)
            .await
    }

    pub async fn renew(&self, admission_id: &str) -> R<RenewResponse> {
        let path = format!("/v1/admissions/{admission_id}/renew");
        self.call(Method::POST, &path, None::<&()>, ACCESS).await
    }

    pub async fn revoke(&self, admission_id: &str) -> R<()> {
        let path = format!("/v1/admissions/{admission_id}");
        self.call(Method::DELETE, &path, None::<&()>, CALL).await
    }

    // --- gateway ---

    pub async fn enroll(&self, req: &EnrollRequest) -> R<EnrollResponse> {
        self.call(Method::POST, "/v1/gateway/enroll", Some(req), CALL)
            .await
    }

    /// Tells the control plane the gateway's current key, endpoint and
    /// services (at every start).
    pub async fn report(&self, report: &GatewayReport) -> R<()> {
        self.call(Method::POST, "/v1/gateway/report", Some(report), CALL)
            .await
    }

    /// Long-polls the desired state; answers at once when the version
    /// differs from `after`, otherwise when it changes or after `wait`.
    pub async fn feed(&self, after: Option<u64>, wait: Duration) -> R<FeedState> {
        let path = match after {
            Some(v) => format!("/v1/gateway/feed?after={v}&wait_ms={}", wait.as_millis()),
            None => "/v1/gateway/feed".to_string(),
        };
        self.call(Method::GET, &path, None::<&()>, wait + CALL)
            .await
    }

    pub async fn ack(&self, version: u64) -> R<()> {
        self.call(
            Method::POST,
            "/v1/gateway/ack",
            Some(&FeedAck { version }),
            CALL,
        )
        .await
    }

    // --- admin ---

    pub async fn create_user(&self, req: &CreateUser) -> R<UserInfo> {
        self.call(Method::POST, "/v1/admin/users", Some(req), CALL)
            .await
    }

    pub async fn list_users(&self) -> R<Vec<UserInfo>> {
        self.call(Method::GET, "/v1/admin/users", None::<&()>, CALL)
            .await
    }

    pub async fn delete_user(&self, username: &str) -> R<()> {
        let path = format!("/v1/admin/users/{username}");
        self.call(Method::DELETE, &path, None::<&()>, CALL).await
    }

    pub async fn create_server(&self, req: &CreateServer) -> R<CreatedServer> {
        self.call(Method::POST, "/v1/admin/servers", Some(req), CALL)
            .await
    }

    /// `create_server` with the options beyond [`CreateServer`]'s, in the
    /// same request.
    pub async fn create_server_with(
        &self,
        req: &CreateServer,
        options: &ServerOptions,
    ) -> R<CreatedServer> {
        let mut body = serde_json::to_value(req).map_err(|e| ClientError::Config(e.to_string()))?;
        if let (Some(b), serde_json::Value::Object(o)) = (
            body.as_object_mut(),
            serde_json::to_value(options).map_err(|e| ClientError::Config(e.to_string()))?,
        ) {
            b.extend(o);
        }
        self.call(Method::POST, "/v1/admin/servers", Some(&body), CALL)
            .await
    }

    /// Renames a server or changes its settings (only the fields given).
    pub async fn update_server(&self, name: &str, req: &UpdateServer) -> R<ServerInfo> {
        let path = format!("/v1/admin/servers/{name}");
        self.call(Method::PATCH, &path, Some(req), CALL).await
    }

    /// Ends the server's admissions (waiting for its gateway to confirm),
    /// then removes it with its grants and enrollment tokens.
    pub async fn remove_server(&self, name: &str) -> R<RemovedServer> {
        let path = format!("/v1/admin/servers/{name}");
        self.call(Method::DELETE, &path, None::<&()>, ACCESS).await
    }

    /// A new one-time enrollment token for an existing server.
    pub async fn create_enrollment_token(
        &self,
        server: &str,
        req: &NewEnrollmentToken,
    ) -> R<IssuedEnrollmentToken> {
        let path = format!("/v1/admin/servers/{server}/enrollment-tokens");
        self.call(Method::POST, &path, Some(req), CALL).await
    }

    /// Makes the server's gateway credential stop working now.
    pub async fn revoke_credential(&self, server: &str) -> R<()> {
        let path = format!("/v1/admin/servers/{server}/credential");
        self.call(Method::DELETE, &path, None::<&()>, CALL).await
    }

    pub async fn list_enrollment_tokens(&self) -> R<Vec<EnrollmentTokenInfo>> {
        self.call(
            Method::GET,
            "/v1/admin/enrollment-tokens",
            None::<&()>,
            CALL,
        )
        .await
    }

    pub async fn revoke_enrollment_token(&self, id: &str) -> R<()> {
        let path = format!("/v1/admin/enrollment-tokens/{id}");
        self.call(Method::DELETE, &path, None::<&()>, CALL).await
    }

    pub async fn set_password(&self, username: &str, password: &str) -> R<()> {
        let path = format!("/v1/admin/users/{username}/password");
        let body = SetPassword {
            password: password.into(),
        };
        self.call(Method::PUT, &path, Some(&body), CALL).await
    }

    /// Checks the server's gateway endpoint now (issue 17).
    pub async fn check_server(&self, server: &str) -> R<proto::reach::ReachabilityView> {
        let path = format!("/v1/admin/servers/{server}/check");
        self.call(Method::POST, &path, None::<&()>, CALL).await
    }

    pub async fn list_servers(&self) -> R<Vec<ServerInfo>> {
        self.call(Method::GET, "/v1/admin/servers", None::<&()>, CALL)
            .await
    }

    pub async fn create_grant(&self, req: &CreateGrant) -> R<GrantInfo> {
        self.call(Method::POST, "/v1/admin/grants", Some(req), CALL)
            .await
    }

    pub async fn list_grants(&self) -> R<Vec<GrantInfo>> {
        self.call(Method::GET, "/v1/admin/grants", None::<&()>, CALL)
            .await
    }

    pub async fn delete_grant(&self, username: &str, server: &str) -> R<()> {
        let path = format!("/v1/admin/grants/{username}/{server}");
        self.call(Method::DELETE, &path, None::<&()>, CALL).await
    }

    pub async fn list_admissions(&self) -> R<Vec<AdmissionInfo>> {
        self.call(Method::GET, "/v1/admin/admissions", None::<&()>, CALL)
            .await
    }

    pub async fn audit(&self, limit: u32) -> R<Vec<AuditEntry>> {
        let path = format!("/v1/admin/audit?limit={limit}");
        self.call(Method::GET, &path, None::<&()>, CALL).await
    }

    // ---------- an account's own ----------

    /// A login with every option (a second factor, a device).
    pub async fn login_with(&self, req: &LoginRequest) -> R<LoginResponse> {
        self.call(Method::POST, "/v1/login", Some(req), CALL).await
    }

    /// Asks for a sign-in code for this device (`POST /v1/device-codes`).
    pub async fn device_code(&self, device_name: &str) -> R<DeviceCodeGrant> {
        let body = DeviceCodeRequest {
            device_name: device_name.into(),
        };
        self.call(Method::POST, "/v1/device-codes", Some(&body), CALL)
            .await
    }

    /// One poll for the code's decision: the sign-in once approved, else
    /// an API error whose code is RFC 8628's (`authorization_pending`,
    /// `slow_down`, `access_denied`, `expired_token`, `invalid_grant`).
    pub async fn poll_device_code(&self, device_code: &str) -> R<LoginResponse> {
        let body = DeviceCodePoll {
            device_code: device_code.into(),
        };
        self.call(Method::POST, "/v1/device-codes/token", Some(&body), CALL)
            .await
    }

    /// Approves (`true`) or denies the code a device shows, as the
    /// signed-in caller: an approved device becomes the caller's.
    pub async fn decide_device_code(&self, user_code: &str, approve: bool) -> R<DeviceCodeDecided> {
        let path = if approve {
            "/v1/device-codes/approve"
        } else {
            "/v1/device-codes/deny"
        };
        let body = DeviceCodeDecision {
            user_code: user_code.into(),
        };
        self.call(Method::POST, path, Some(&body), CALL).await
    }

    /// The caller's devices.
    pub async fn my_devices(&self) -> R<Vec<DeviceInfo>> {
        self.call(Method::GET, "/v1/me/devices", None::<&()>, CALL)
            .await
    }

    /// Signs in with the credential of a device made by a code sign-in.
    pub async fn device_login(&self, device_credential: &str) -> R<LoginResponse> {
        let body = DeviceLogin {
            device_credential: device_credential.into(),
        };
        self.call(Method::POST, "/v1/login/device", Some(&body), CALL)
            .await
    }

    /// Registers a server the caller will own (`POST /v1/servers`).
    pub async fn register_server(&self, req: &CreateServer) -> R<CreatedServer> {
        self.call(Method::POST, "/v1/servers", Some(req), CALL)
            .await
    }

    /// Changes the policy of one of the caller's servers.
    pub async fn update_policy(&self, server: &str, policy: &ServerPolicy) -> R<ServerInfo> {
        let path = format!("/v1/servers/{server}");
        self.call(Method::PATCH, &path, Some(policy), CALL).await
    }

    /// Shares one of the caller's servers with an account.
    pub async fn share(&self, server: &str, req: &ShareRequest) -> R<GrantInfo> {
        let path = format!("/v1/servers/{server}/shares");
        self.call(Method::POST, &path, Some(req), CALL).await
    }

    /// The devices that asked for one of the caller's servers.
    pub async fn device_requests(&self, server: &str) -> R<Vec<DeviceRequestInfo>> {
        let path = format!("/v1/servers/{server}/devices");
        self.call(Method::GET, &path, None::<&()>, CALL).await
    }

    /// Approves or denies a device on one of the caller's servers.
    pub async fn decide_device(
        &self,
        server: &str,
        device: &str,
        approve: bool,
    ) -> R<DeviceRequestInfo> {
        let path = format!("/v1/servers/{server}/devices/{device}");
        self.call(Method::PUT, &path, Some(&DeviceDecision { approve }), CALL)
            .await
    }
}
