//! The control plane as the session sees it: access, renew, revoke, with
//! errors already turned into [`ShimError`]s. [`HttpControl`] is the real
//! one (HTTPS through `control-client`, logging in again when a password
//! login's token expires); tests substitute an in-memory one.

use control_client::{ClientError, ControlClient, Trust};
use proto::api::{AccessResponse, RenewResponse};
use proto::WgKey;
use std::future::Future;

use crate::error::{Call, ShimError};

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
}

impl HttpControl {
    /// Connects and logs in (password) or takes the token as it is.
    pub(crate) async fn login(
        url: &str,
        trust: Trust,
        credentials: Credentials,
        server: &str,
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
        let r = self
            .base
            .login(user, password)
            .await
            .map_err(|e| self.map(e, Call::Login))?;
        self.authed = self.base.with_bearer(&r.token);
        Ok(())
    }

    fn map(&self, e: ClientError, call: Call) -> ShimError {
        ShimError::from_client(e, call, &self.server, self.base.base_url())
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
        match self.authed.renew(id).await {
            Err(e) if self.can_relogin(&e) => {
                self.relogin().await?;
                self.authed
                    .renew(id)
                    .await
                    .map_err(|e| self.map(e, Call::Renew))
            }
            r => r.map_err(|e| self.map(e, Call::Renew)),
        }
    }

    async fn revoke(&mut self, id: &str) -> Result<(), ShimError> {
        self.authed
            .revoke(id)
            .await
            .map_err(|e| self.map(e, Call::Renew))
    }
}
