//! The control plane as the session sees it: access, renew, revoke, with
//! errors already turned into [`ShimError`]s. [`HttpControl`] is the real
//! one (HTTPS through `control-client`, logging in again when a password
//! login's token expires); tests substitute an in-memory one.

use control_client::{ClientError, ControlClient, Trust};
use proto::api::{AccessResponse, LoginRequest, RenewResponse};
use proto::WgKey;
use std::future::Future;
use std::path::{Path, PathBuf};

use crate::error::{Call, ShimError};

/// How long a renewal may take before it counts as failed (and is tried
/// again on a new connection). A renewal is one round trip plus the
/// control plane's wait for the gateway, well under a second when both
/// are well. One that takes longer is most likely stuck on a connection
/// that died with this device's old address (its answer went to the old
/// NAT mapping): waiting for TCP to give up would keep the session from
/// noticing the move for many seconds.
const RENEW_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// How the user proves who they are.
#[derive(Clone)]
pub enum Credentials {
    /// Log in with a user name and password (`POST /v1/login`); the shim
    /// logs in again by itself when the token expires.
    Password { user: String, password: String },
    /// A user token (`hgu_...`) from an earlier login.
    Token(String),
}

impl std::fmt::Debug for Credentials {
    // Secrets never reach logs through `{:?}`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Password { user, .. } => f
                .debug_struct("Password")
                .field("user", user)
                .finish_non_exhaustive(),
            Credentials::Token(_) => f.write_str("Token(..)"),
        }
    }
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

/// Keeps a new device's credential, private from its first byte.
fn write_device_credential(file: &Path, credential: &str) -> Result<(), ShimError> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let fail = |e: std::io::Error| {
        device_error(format!(
            "cannot write the device file {}: {e}",
            file.display()
        ))
    };
    if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(fail)?;
    }
    let mut f = match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)
    {
        Ok(f) => f,
        // Another session of the same account (a second player started at
        // the same moment) registered its device and saved it first: keep
        // that one for later runs; this session's device serves it alone.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            tracing::info!(
                file = %file.display(),
                "another session saved this account's device file first; this session's device is not saved"
            );
            return Ok(());
        }
        Err(e) => return Err(fail(e)),
    };
    f.write_all(format!("{credential}\n").as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(fail)
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
    server: String,
    device: Option<DeviceIdentity>,
}

impl HttpControl {
    /// Connects and logs in (password) or takes the token as it is.
    pub(crate) async fn login(
        url: &str,
        trust: Trust,
        credentials: Credentials,
        server: &str,
        device: Option<DeviceIdentity>,
    ) -> Result<HttpControl, ShimError> {
        let base = ControlClient::new(url, trust).map_err(ShimError::Control)?;
        let authed = match &credentials {
            Credentials::Token(t) => base.with_bearer(t),
            Credentials::Password { .. } => base.clone(),
        };
        let mut c = HttpControl {
            base,
            authed,
            credentials,
            server: server.into(),
            device,
        };
        if let Credentials::Password { .. } = c.credentials {
            c.relogin().await?;
        }
        Ok(c)
    }

    async fn relogin(&mut self) -> Result<(), ShimError> {
        let Credentials::Password { user, password } = &self.credentials else {
            return Ok(());
        };
        let mut req = LoginRequest {
            username: user.clone(),
            password: password.clone(),
            totp: None,
            device_credential: None,
            device_name: None,
        };
        if let Some(d) = &self.device {
            match read_device_credential(&d.file)? {
                Some(c) => req.device_credential = Some(c),
                None => req.device_name = Some(d.name.clone()),
            }
        }
        let r = self
            .base
            .login_with(&req)
            .await
            .map_err(|e| self.map(e, Call::Login))?;
        if let (Some(d), Some(cred)) = (&self.device, &r.device_credential) {
            write_device_credential(&d.file, cred)?;
        }
        self.authed = self.base.with_bearer(&r.token);
        Ok(())
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
        e.status() == Some(401) && matches!(self.credentials, Credentials::Password { .. })
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
        for line in crate::answer::reachability_warnings(&answer) {
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
