//! [`ShimError`]: everything that can stop a session from starting or
//! end it, each with a message that says what to do.

use control_client::ClientError;
use std::net::SocketAddr;
use std::time::Duration;

use crate::access_answer::AnswerError;

/// Why a session could not start, or why it ended.
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    /// The control plane rejected the user name or password (it gives one
    /// answer for both, on purpose).
    #[error("wrong user name or password for the control plane at {url}")]
    WrongPassword { url: String },
    /// A saved user token was rejected (expired, or logged out).
    #[error("{message} (the control plane at {url} no longer accepts this login)")]
    TokenRejected { url: String, message: String },
    /// Too many logins from this address or for this user. The control
    /// plane's message says so and how long to wait; it is shown as is
    /// (each variant that carries a control plane message shows it once,
    /// adding only what it does not say).
    #[error("{message}")]
    RateLimited { message: String },
    /// The account signs in with two factors and the code was missing or
    /// wrong (the control plane's message says which).
    #[error("{message}")]
    SecondFactor { message: String },
    /// The server's owner approves each new device and has not approved
    /// this one yet ("waiting for alice to approve this device for server
    /// 'den'"): ask again later; nothing is wrong.
    #[error("{message}")]
    WaitingForApproval { server: String, message: String },
    /// No grant on that server (or no such server: the control plane does
    /// not tell the two apart).
    #[error("{message}")]
    NoAccess { server: String, message: String },
    /// The server's gateway is not connected to the control plane, or did
    /// not confirm the admission in time.
    #[error("{message}")]
    GatewayOffline { server: String, message: String },
    /// The control plane admitted us but the gateway never answered the
    /// WireGuard handshake.
    #[error("the gateway at {endpoint} did not answer the WireGuard handshake within {} s; check that UDP port {} is forwarded to it and that no firewall or VPN on this side blocks UDP", waited.as_secs(), endpoint.port())]
    GatewayUnreachable {
        endpoint: SocketAddr,
        waited: Duration,
    },
    /// Network trouble reaching the control plane.
    #[error("cannot reach the control plane at {url}: {detail}; check the URL and your network")]
    ControlUnreachable { url: String, detail: String },
    /// The control plane's TLS certificate is not signed by the trusted CA.
    #[error("the control plane at {url} presented a certificate that is not trusted ({detail}); pass the CA file it printed at first start (--ca), or check the URL")]
    CertificateNotTrusted { url: String, detail: String },
    /// The local listen address is taken.
    #[error("cannot listen on {addr}: the port is already in use; pick another port (--listen)")]
    ListenInUse { addr: SocketAddr },
    /// Any other failure to open the local listener.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The control plane's access answer cannot be used as it is.
    #[error("the control plane sent an access answer this client cannot use: {0}")]
    BadAnswer(#[from] AnswerError),
    /// The admission was revoked (or the grant removed) while in use.
    #[error("{message}")]
    Revoked { server: String, message: String },
    /// The tunnel's own socket or thread failed.
    #[error("the tunnel failed: {0}")]
    DataPath(String),
    /// The sign-in code was not approved before it expired.
    #[error("the sign-in code expired before anyone approved it (codes last {minutes} minutes); start again for a new code")]
    CodeExpired { minutes: u64 },
    /// The user the code was shown to denied it.
    #[error("the sign-in code was denied on the approval page; start again if that was a mistake")]
    CodeDenied,
    /// Any other control plane answer (its message says what went wrong).
    #[error(transparent)]
    Control(ClientError),
}

/// The kind of a [`ShimError`], as a plain value: for callers that must
/// hand the reason across a boundary (the C ABI's numeric error codes in
/// `hushgate-ffi`) or keep it after the error itself is gone
/// ([`EndReason::Failed`](crate::EndReason::Failed)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    WrongPassword,
    /// The two-factor code was missing or wrong.
    SecondFactor,
    /// The device waits for the server owner's approval.
    WaitingForApproval,
    TokenRejected,
    RateLimited,
    NoAccess,
    GatewayOffline,
    GatewayUnreachable,
    ControlUnreachable,
    CertificateNotTrusted,
    ListenInUse,
    Listen,
    BadAnswer,
    Revoked,
    /// The tunnel's own socket or thread failed.
    DataPath,
    /// The session's settings cannot work (e.g. a URL that is not https).
    Config,
    /// The sign-in code expired unapproved.
    CodeExpired,
    /// The sign-in code was denied.
    CodeDenied,
    /// Any other control plane answer.
    Control,
}

/// What the shim was doing when a control plane call failed, so that an
/// API error turns into the variant a user can act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Call {
    Login,
    Access,
    Renew,
}

impl ShimError {
    /// Maps a control plane error for `call` on `server`.
    pub(crate) fn from_client(e: ClientError, call: Call, server: &str, url: &str) -> ShimError {
        match e {
            ClientError::Unreachable { url, detail } => {
                ShimError::ControlUnreachable { url, detail }
            }
            ClientError::CertificateNotTrusted { url, detail } => {
                ShimError::CertificateNotTrusted { url, detail }
            }
            // The device file's credential is refused: the control plane's
            // words say why and what to do (delete the file).
            e @ ClientError::Api { status: 401, .. }
                if call == Call::Login
                    && matches!(e.code(), Some("device_unknown" | "device_removed")) =>
            {
                ShimError::Control(e)
            }
            ClientError::Api {
                status: 401,
                code,
                message,
            } if call == Call::Login && (code == "totp_required" || code == "totp_wrong") => {
                ShimError::SecondFactor { message }
            }
            ClientError::Api {
                status: 403,
                code,
                message,
            } if code == "waiting_for_approval" => ShimError::WaitingForApproval {
                server: server.into(),
                message,
            },
            ClientError::Api {
                status: 401,
                message,
                ..
            } => match call {
                Call::Login => ShimError::WrongPassword { url: url.into() },
                _ => ShimError::TokenRejected {
                    url: url.into(),
                    message,
                },
            },
            ClientError::Api {
                status: 429,
                message,
                ..
            } => ShimError::RateLimited { message },
            ClientError::Api {
                status, message, ..
            } if status == 403 && call == Call::Renew => ShimError::Revoked {
                server: server.into(),
                message,
            },
            ClientError::Api {
                status: 404,
                message,
                ..
            } if call == Call::Renew => ShimError::Revoked {
                server: server.into(),
                // "no such admission; ...": say which server it was for.
                message: format!("your admission to server '{server}' is gone: {message}"),
            },
            ClientError::Api {
                status: 403,
                message,
                ..
            } => ShimError::NoAccess {
                server: server.into(),
                message,
            },
            ClientError::Api {
                status,
                code,
                message,
            } if status == 503 && (code == "gateway_offline" || code == "gateway_timeout") => {
                ShimError::GatewayOffline {
                    server: server.into(),
                    message,
                }
            }
            other => ShimError::Control(other),
        }
    }

    /// Which kind of error this is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ShimError::WrongPassword { .. } => ErrorKind::WrongPassword,
            ShimError::SecondFactor { .. } => ErrorKind::SecondFactor,
            ShimError::WaitingForApproval { .. } => ErrorKind::WaitingForApproval,
            ShimError::TokenRejected { .. } => ErrorKind::TokenRejected,
            ShimError::RateLimited { .. } => ErrorKind::RateLimited,
            ShimError::NoAccess { .. } => ErrorKind::NoAccess,
            ShimError::GatewayOffline { .. } => ErrorKind::GatewayOffline,
            ShimError::GatewayUnreachable { .. } => ErrorKind::GatewayUnreachable,
            ShimError::ControlUnreachable { .. } => ErrorKind::ControlUnreachable,
            ShimError::CertificateNotTrusted { .. } => ErrorKind::CertificateNotTrusted,
            ShimError::ListenInUse { .. } => ErrorKind::ListenInUse,
            ShimError::Listen { .. } => ErrorKind::Listen,
            ShimError::BadAnswer(_) | ShimError::Control(ClientError::BadAnswer(_)) => {
                ErrorKind::BadAnswer
            }
            ShimError::Revoked { .. } => ErrorKind::Revoked,
            ShimError::DataPath(_) => ErrorKind::DataPath,
            ShimError::CodeExpired { .. } => ErrorKind::CodeExpired,
            ShimError::CodeDenied => ErrorKind::CodeDenied,
            ShimError::Control(ClientError::Config(_)) => ErrorKind::Config,
            ShimError::Control(_) => ErrorKind::Control,
        }
    }

    /// Whether trying again later may help (network trouble, an offline
    /// gateway), as opposed to a final answer (revoked, no access).
    pub(crate) fn is_transient(&self) -> bool {
        match self {
            ShimError::ControlUnreachable { .. }
            | ShimError::GatewayOffline { .. }
            | ShimError::RateLimited { .. }
            | ShimError::WaitingForApproval { .. }
            | ShimError::GatewayUnreachable { .. } => true,
            ShimError::Control(ClientError::Api { status, .. }) => *status >= 500,
            ShimError::Control(ClientError::BadAnswer(_)) => true,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16, code: &str) -> ClientError {
        ClientError::Api {
            status,
            code: code.into(),
            message: format!("msg {code}"),
        }
    }

    #[test]
    fn api_errors_become_actionable_variants() {
        let m = |e, c| ShimError::from_client(e, c, "den", "https://cp");
        assert!(matches!(
            m(api(401, "unauthorized"), Call::Login),
            ShimError::WrongPassword { .. }
        ));
        assert!(matches!(
            m(api(401, "unauthorized"), Call::Access),
            ShimError::TokenRejected { .. }
        ));
        assert!(matches!(
            m(api(403, "no_access"), Call::Access),
            ShimError::NoAccess { .. }
        ));
        assert!(matches!(
            m(api(503, "gateway_offline"), Call::Access),
            ShimError::GatewayOffline { .. }
        ));
        assert!(matches!(
            m(api(404, "not_found"), Call::Renew),
            ShimError::Revoked { .. }
        ));
        assert!(matches!(
            m(api(403, "no_access"), Call::Renew),
            ShimError::Revoked { .. }
        ));
        assert!(matches!(
            m(api(401, "totp_required"), Call::Login),
            ShimError::SecondFactor { .. }
        ));
        assert!(matches!(
            m(api(401, "totp_wrong"), Call::Login),
            ShimError::SecondFactor { .. }
        ));
        // A refused device file is not a wrong password: the control
        // plane's words (delete the file) reach the user.
        for code in ["device_removed", "device_unknown"] {
            let e = m(api(401, code), Call::Login);
            assert!(matches!(e, ShimError::Control(_)), "{code}: {e:?}");
            assert!(e.to_string().contains(code), "{e}");
        }
        let waiting = m(api(403, "waiting_for_approval"), Call::Access);
        assert_eq!(waiting.kind(), ErrorKind::WaitingForApproval);
        assert_eq!(waiting.to_string(), "msg waiting_for_approval");
        let e = m(api(409, "conflict"), Call::Access);
        assert!(matches!(e, ShimError::Control(_)) && !e.is_transient());
        assert!(m(api(503, "exhausted"), Call::Access).is_transient());
        let text = m(api(403, "no_access"), Call::Access).to_string();
        assert_eq!(text, "msg no_access");
    }

    /// Each message the control plane writes is shown once, with only
    /// what it does not say added: no "too many login attempts: too many
    /// login attempts", no "no access ... (you have no access ...)".
    #[test]
    fn control_plane_messages_are_shown_once() {
        let m = |status, code: &str, message: &str, call| {
            ShimError::from_client(
                ClientError::Api {
                    status,
                    code: code.into(),
                    message: message.into(),
                },
                call,
                "den",
                "https://cp.example:8443",
            )
            .to_string()
        };
        let cases = [
            (
                429,
                "rate_limited",
                "too many login attempts; wait 6 seconds and try again",
                Call::Login,
                "too many login attempts",
            ),
            (
                403,
                "no_access",
                "you have no access to server 'den'; ask its owner for a grant",
                Call::Access,
                "no access",
            ),
            (
                503,
                "gateway_offline",
                "the gateway of server 'den' has not connected to the control plane since 12:03; is it running?",
                Call::Access,
                "gateway of server",
            ),
            (
                403,
                "no_access",
                "your access to server 'den' has ended: its owner removed or narrowed your grant, or the admission expired; ask the owner if this is unexpected",
                Call::Renew,
                "server 'den'",
            ),
            (
                404,
                "not_found",
                "no such admission; it may have expired or been revoked",
                Call::Renew,
                "server 'den'",
            ),
            (
                401,
                "unauthorized",
                "the token is not valid or has expired; log in again",
                Call::Access,
                "log in again",
            ),
        ];
        for (status, code, message, call, once) in cases {
            let text = m(status, code, message, call);
            assert_eq!(text.matches(once).count(), 1, "{once:?} in {text:?}");
            assert!(
                text.contains(message.split(';').next().unwrap()),
                "{text:?} lost the control plane's message {message:?}"
            );
        }
    }
}
