//! The control plane as the session sees it: how the user signs in
//! ([`Credentials`]: password, token, or a code approved on another
//! device, whose credential the [`DeviceIdentity`] file keeps) and the
//! three calls a session makes after that ([`ControlApi`]: access, renew,
//! revoke), with errors already turned into [`ShimError`]s.
//! [`HttpControl`] is the real one (HTTPS through `control-client`,
//! signing in again when a password or code sign-in's token expires);
//! tests substitute an in-memory one.

use control_client::{ClientError, ControlClient, Trust};
use proto::api::{AccessResponse, LoginRequest, RenewResponse};
use proto::WgKey;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Call, ShimError};

/// What RFC 8628 has a device add to its polling interval when told to
/// slow down.
const SLOW_DOWN_STEP: Duration = Duration::from_secs(5);

/// How long a renewal may take before it counts as failed (and is tried
/// again on a new connection). A renewal is one round trip plus the
/// control plane's wait for the gateway, well under a second when both
/// are well. One that takes longer is most likely stuck on a connection
/// that died with this device's old address (its answer went to the old
/// NAT mapping): waiting for TCP to give up would keep the session from
/// noticing the move for many seconds.
const RENEW_TIMEOUT: Duration = Duration::from_secs(2);

/// How the user proves who they are.
#[derive(Clone)]
pub enum Credentials {
    /// Log in with a user name and password (`POST /v1/login`); the shim
    /// logs in again by itself when the token expires.
    Password { user: String, password: String },
    /// A password login with the current code of the account's second
    /// factor (TOTP, or a recovery code). A code works once, so only the
    /// first login uses it: when that login's token expires, the session
    /// cannot log in again by itself and ends asking for a new code.
    PasswordAndCode {
        user: String,
        password: String,
        code: String,
    },
    /// A user token (`hgu_...`) from an earlier login.
    Token(String),
    /// Sign in by code (RFC 8628), for devices without a keyboard: with
    /// the device's credential from an earlier approval when it has one
    /// (the [`DeviceIdentity`] file, or this session's memory); otherwise
    /// a new code is shown through `notice` and the session waits until a
    /// user approves it on another device. The approval's credential is
    /// kept in the device file (0600), so later sessions sign in alone;
    /// the shim signs in again by itself when the login token expires.
    Code {
        /// The name the approving user sees and the device is registered
        /// as ("living-room TV").
        device_name: String,
        notice: CodeNotice,
    },
}

impl std::fmt::Debug for Credentials {
    // Secrets never reach logs through `{:?}`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Password { user, .. } => f
                .debug_struct("Password")
                .field("user", user)
                .finish_non_exhaustive(),
            Credentials::PasswordAndCode { user, .. } => f
                .debug_struct("PasswordAndCode")
                .field("user", user)
                .finish_non_exhaustive(),
            Credentials::Token(_) => f.write_str("Token(..)"),
            Credentials::Code { device_name, .. } => f
                .debug_struct("Code")
                .field("device_name", device_name)
                .finish_non_exhaustive(),
        }
    }
}

/// Told the code to show and where to approve it, then that it was
/// approved (see [`Credentials::Code`]).
#[derive(Clone)]
pub struct CodeNotice(pub std::sync::Arc<dyn Fn(&CodeStep) + Send + Sync>);

impl std::fmt::Debug for CodeNotice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CodeNotice(..)")
    }
}

/// A step of a sign-in by code, as [`CodeNotice`] hears it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodeStep {
    /// Show this code until the next step.
    Show(CodePrompt),
    /// A user approved it: signed in; access and the tunnel follow.
    Approved,
}

/// What the device shows while it waits for the approval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodePrompt {
    /// The code the user types, `XXXX-XXXX`.
    pub user_code: String,
    /// Where the user types it.
    pub verification_uri: String,
    /// The same with the code filled in, for a QR code.
    pub verification_uri_complete: String,
    /// How long the code works.
    pub expires_in: std::time::Duration,
}

/// Who this device is to the control plane: its long-lived credential,
/// kept in a private file (0600; written at the first login, which
/// registers the device under `name`), so that a server's owner approves
/// it once and every later session is the same device. The WireGuard keys
/// stay ephemeral, one per session.
#[derive(Debug, Clone)]
pub struct DeviceIdentity {
    pub file: PathBuf,
    /// What the owner sees when approving ("alice's laptop").
    pub name: String,
}

fn device_error(msg: String) -> ShimError {
    ShimError::Control(ClientError::Config(msg))
}

/// The credential in `file`, if the device was registered already. A
/// file others can read is refused: it holds a secret.
fn read_device_credential(file: &Path) -> Result<Option<String>, ShimError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = match std::fs::metadata(file) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(device_error(format!(
                "cannot read the device file {}: {e}",
                file.display()
            )))
        }
    };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(device_error(format!(
            "the device file {} can be read by others (mode {mode:o}) and holds this device's credential; run 'chmod 600 {}'",
            file.display(),
            file.display()
        )));
    }
    let text = std::fs::read_to_string(file).map_err(|e| {
        device_error(format!(
            "cannot read the device file {}: {e}",
            file.display()
        ))
    })?;
    Ok(Some(text.trim().to_string()).filter(|t| !t.is_empty()))
}

fn device_file_error(file: &Path, e: std::io::Error) -> ShimError {
    device_error(format!(
        "cannot write the device file {}: {e}",
        file.display()
    ))
}

fn device_dir(file: &Path) -> Result<(), ShimError> {
    use std::os::unix::fs::DirBuilderExt;
    if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| device_file_error(file, e))?;
    }
    Ok(())
}

/// Replaces a device file whose credential the control plane no longer
/// knows with a new one, whole (see `statelock::write_private`): a crash
/// leaves the old file or the new one, never a torn or readable one.
fn replace_device_credential(file: &Path, credential: &str) -> Result<(), ShimError> {
    device_dir(file)?;
    statelock::write_private(file, format!("{credential}\n").as_bytes())
        .map_err(|e| device_file_error(file, e))
}

/// Keeps a new device's credential, private from its first byte and
/// written whole.
fn write_device_credential(file: &Path, credential: &str) -> Result<(), ShimError> {
    device_dir(file)?;
    match statelock::write_private_new(file, format!("{credential}\n").as_bytes()) {
        Ok(()) => Ok(()),
        // Another session of the same account (a second player started at
        // the same moment) registered its device and saved it first: keep
        // that one for later runs; this session's device serves it alone.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            tracing::info!(
                file = %file.display(),
                "another session saved this account's device file first; this session's device is not saved"
            );
            Ok(())
        }
        Err(e) => Err(device_file_error(file, e)),
    }
}

/// The three calls a session makes after logging in.
pub(crate) trait ControlApi: Send + 'static {
    fn access(
        &mut self,
        server: &str,
        key: WgKey,
    ) -> impl Future<Output = Result<AccessResponse, ShimError>> + Send;
    fn renew(&mut self, id: &str) -> impl Future<Output = Result<RenewResponse, ShimError>> + Send;
    fn revoke(&mut self, id: &str) -> impl Future<Output = Result<(), ShimError>> + Send;
}

/// The control plane over HTTPS.
#[derive(Debug)]
pub(crate) struct HttpControl {
    base: ControlClient,
    authed: ControlClient,
    credentials: Credentials,
    /// The second factor's code for the next login (used once).
    totp: Option<String>,
    server: String,
    device: Option<DeviceIdentity>,
    /// A code sign-in's device credential, once known (read from the
    /// device file or just approved): later sign-ins use it.
    device_credential: Option<String>,
}

impl HttpControl {
    /// Connects and signs in (password, or by code), or takes the token
    /// as it is.
    pub(crate) async fn login(
        url: &str,
        trust: Trust,
        credentials: Credentials,
        server: &str,
        device: Option<DeviceIdentity>,
    ) -> Result<HttpControl, ShimError> {
        let base = ControlClient::new(url, trust).map_err(ShimError::Control)?;
        let (credentials, totp) = match credentials {
            Credentials::PasswordAndCode {
                user,
                password,
                code,
            } => (Credentials::Password { user, password }, Some(code)),
            c => (c, None),
        };
        let authed = match &credentials {
            Credentials::Token(t) => base.with_bearer(t),
            Credentials::Password { .. }
            | Credentials::PasswordAndCode { .. }
            | Credentials::Code { .. } => base.clone(),
        };
        let mut c = HttpControl {
            base,
            authed,
            credentials,
            totp,
            server: server.into(),
            device,
            device_credential: None,
        };
        if !matches!(c.credentials, Credentials::Token(_)) {
            c.relogin().await?;
        }
        Ok(c)
    }

    async fn relogin(&mut self) -> Result<(), ShimError> {
        let (user, password) = match &self.credentials {
            Credentials::Password { user, password } => (user, password),
            Credentials::Code {
                device_name,
                notice,
            } => {
                let (name, notice) = (device_name.clone(), notice.clone());
                return self.code_sign_in(&name, &notice).await;
            }
            // `login` turned a password with a code into `Password` plus
            // the one-time code.
            Credentials::Token(_) | Credentials::PasswordAndCode { .. } => return Ok(()),
        };
        let mut req = LoginRequest {
            username: user.clone(),
            password: password.clone(),
            // A code works once: only the first login of a session has one
            // (a later one, when the token expires, fails asking for it).
            totp: self.totp.take(),
            device_credential: None,
            device_name: None,
        };
        // The name goes with the credential: if the control plane forgot
        // this device (its database was rebuilt, or restored from before
        // the device registered), it registers it anew in the same login
        // and sends a new credential, which replaces the file. A device
        // removed on purpose is refused instead (`device_removed`), which
        // stays an error: registering again would undo the removal.
        let mut had_file = false;
        if let Some(d) = &self.device {
            req.device_name = Some(d.name.clone());
            req.device_credential = read_device_credential(&d.file)?;
            had_file = req.device_credential.is_some();
        }
        let r = self
            .base
            .login_with(&req)
            .await
            .map_err(|e| self.map(e, Call::Login))?;
        if let (Some(d), Some(cred)) = (&self.device, &r.device_credential) {
            if had_file {
                tracing::warn!(
                    file = %d.file.display(),
                    "the control plane did not know this device (its database may have been rebuilt); it is registered again and its file replaced"
                );
                replace_device_credential(&d.file, cred)?;
            } else {
                write_device_credential(&d.file, cred)?;
            }
        }
        self.authed = self.base.with_bearer(&r.token);
        Ok(())
    }

    /// Signs in with the device's credential if it has one, else by a new
    /// code (RFC 8628): shows it, polls no faster than asked, and keeps
    /// the credential the approval brings.
    async fn code_sign_in(
        &mut self,
        device_name: &str,
        notice: &CodeNotice,
    ) -> Result<(), ShimError> {
        if self.device_credential.is_none() {
            if let Some(d) = &self.device {
                self.device_credential = read_device_credential(&d.file)?;
            }
        }
        if let Some(cred) = self.device_credential.clone() {
            match self.base.device_login(&cred).await {
                Ok(r) => {
                    self.authed = self.base.with_bearer(&r.token);
                    return Ok(());
                }
                // Removed from its account: forget it and ask for a code,
                // as a new device would.
                Err(e) if e.code() == Some("device_unknown") => {
                    tracing::warn!("this device's credential is no longer known (removed from its account); signing in by code again");
                    self.device_credential = None;
                    if let Some(d) = &self.device {
                        let _ = std::fs::remove_file(&d.file);
                    }
                }
                Err(e) => return Err(self.map(e, Call::Login)),
            }
        }
        let grant = self
            .base
            .device_code(device_name)
            .await
            .map_err(|e| self.map(e, Call::Login))?;
        (notice.0)(&CodeStep::Show(CodePrompt {
            user_code: grant.user_code.clone(),
            verification_uri: grant.verification_uri.clone(),
            verification_uri_complete: grant.verification_uri_complete.clone(),
            expires_in: Duration::from_secs(grant.expires_in),
        }));
        let mut interval = Duration::from_secs(grant.interval.max(1));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(grant.expires_in);
        loop {
            tokio::time::sleep(interval).await;
            let e = match self.base.poll_device_code(&grant.device_code).await {
                Ok(r) => {
                    let Some(cred) = r.device_credential else {
                        return Err(ShimError::Control(ClientError::BadAnswer(
                            "the approved sign-in code brought no device credential".into(),
                        )));
                    };
                    if let Some(d) = &self.device {
                        write_device_credential(&d.file, &cred)?;
                    }
                    self.device_credential = Some(cred);
                    self.authed = self.base.with_bearer(&r.token);
                    (notice.0)(&CodeStep::Approved);
                    return Ok(());
                }
                Err(e) => e,
            };
            match e.code() {
                Some("authorization_pending") => {}
                Some("slow_down") => interval += SLOW_DOWN_STEP,
                Some("access_denied") => return Err(ShimError::CodeDenied),
                Some("expired_token" | "invalid_grant") => {
                    return Err(ShimError::CodeExpired {
                        minutes: grant.expires_in.div_ceil(60),
                    })
                }
                // The network or the control plane hiccuped: the code is
                // still good until it expires; keep polling until then.
                _ if matches!(e, ClientError::Unreachable { .. })
                    || e.status().is_some_and(|s| s >= 500) =>
                {
                    if tokio::time::Instant::now() >= deadline {
                        return Err(self.map(e, Call::Login));
                    }
                }
                _ => return Err(self.map(e, Call::Login)),
            }
        }
    }

    fn map(&self, e: ClientError, call: Call) -> ShimError {
        ShimError::from_client(e, call, &self.server, self.base.base_url())
    }

    /// One renewal request, bounded by [`RENEW_TIMEOUT`] (`Err(None)`).
    async fn renew_once(&self, id: &str) -> Result<RenewResponse, Option<ClientError>> {
        match tokio::time::timeout(RENEW_TIMEOUT, self.authed.renew(id)).await {
            Ok(r) => r.map_err(Some),
            Err(_) => Err(None),
        }
    }

    fn renew_error(&self, e: Option<ClientError>) -> ShimError {
        match e {
            Some(e) => self.map(e, Call::Renew),
            None => ShimError::ControlUnreachable {
                url: self.base.base_url().to_string(),
                detail: format!(
                    "no answer to the renewal within {} s",
                    RENEW_TIMEOUT.as_secs()
                ),
            },
        }
    }

    fn can_relogin(&self, e: &ClientError) -> bool {
        e.status() == Some(401) && !matches!(self.credentials, Credentials::Token(_))
    }

    async fn access_once(&mut self, server: &str, key: WgKey) -> Result<AccessResponse, ShimError> {
        match self.authed.access(server, key).await {
            Err(e) if self.can_relogin(&e) => {
                self.relogin().await?;
                self.authed
                    .access(server, key)
                    .await
                    .map_err(|e| self.map(e, Call::Access))
            }
            r => r.map_err(|e| self.map(e, Call::Access)),
        }
    }
}

impl ControlApi for HttpControl {
    async fn access(&mut self, server: &str, key: WgKey) -> Result<AccessResponse, ShimError> {
        let answer = self.access_once(server, key).await?;
        // The control plane's last check of the gateway's endpoint failed:
        // the tunnel will probably not come up; say why, once per answer.
        for line in crate::access_answer::reachability_warnings(&answer) {
            tracing::warn!(%server, "{line}");
        }
        Ok(answer)
    }

    async fn renew(&mut self, id: &str) -> Result<RenewResponse, ShimError> {
        match self.renew_once(id).await {
            Err(Some(e)) if self.can_relogin(&e) => {
                self.relogin().await?;
                self.renew_once(id).await.map_err(|e| self.renew_error(e))
            }
            r => r.map_err(|e| self.renew_error(e)),
        }
    }

    async fn revoke(&mut self, id: &str) -> Result<(), ShimError> {
        self.authed
            .revoke(id)
            .await
            .map_err(|e| self.map(e, Call::Renew))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A renewal whose answer never comes (its connection's answers go to
    /// a NAT mapping that is gone; here a TLS server that reads the
    /// request and never answers) fails by itself as "unreachable", which
    /// the session retries on a new connection, long before the 30 s an
    /// access request may take. 20 s of patience for a 2 s bound: a busy
    /// machine does not fail this.
    #[tokio::test]
    async fn a_renewal_that_gets_no_answer_gives_up_as_unreachable() {
        let dir = tempfile::tempdir().unwrap();
        let id = control::tls::private_ca_identity(dir.path(), &[]).unwrap();
        let trust = Trust::from_ca_file(id.ca_file.as_deref().unwrap()).unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(id.server_config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "https://127.0.0.1:{}",
            listener.local_addr().unwrap().port()
        );
        let (read_tx, mut read_rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((tcp, _)) = listener.accept().await {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    continue;
                };
                let mut buf = [0u8; 4096];
                if let Ok(n) = tokio::io::AsyncReadExt::read(&mut tls, &mut buf).await {
                    let _ = read_tx.send(n);
                }
                held.push(tls);
            }
        });
        let mut c = HttpControl::login(
            &url,
            trust,
            Credentials::Token("hgu_test".into()),
            "den",
            None,
        )
        .await
        .unwrap();
        let e = tokio::time::timeout(std::time::Duration::from_secs(20), c.renew("adm_1"))
            .await
            .expect("the renewal gives up by itself")
            .unwrap_err();
        assert!(
            matches!(e, ShimError::ControlUnreachable { .. }) && e.is_transient(),
            "{e}"
        );
        assert!(
            read_rx.try_recv().is_ok_and(|n| n > 0),
            "the request itself reached the server"
        );
    }

    #[test]
    fn a_device_file_saved_first_by_another_session_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("state/device-alice");
        write_device_credential(&file, "hgd_first").unwrap();
        // A second session of the same account, registered at the same
        // moment, finds the file there: not an error, and the first stays.
        write_device_credential(&file, "hgd_second").unwrap();
        assert_eq!(
            read_device_credential(&file).unwrap().as_deref(),
            Some("hgd_first")
        );
    }
}
