//! Enrollment: the first start spends the one-time token for a
//! credential; every later start reports the gateway (key, endpoint,
//! services) to the control plane with the credential held, and a refused
//! credential with a new token given enrolls again.

use crate::config::{EnrollToken, GatewayConfig, GatewayError};
use crate::identity::Identity;
use control_client::ControlClient;
use proto::api::ServiceInfo;
use proto::feed::{EnrollRequest, GatewayReport};

/// What the gateway tells the control plane about itself.
pub(crate) fn report(cfg: &GatewayConfig, identity: &Identity, listen_port: u16) -> GatewayReport {
    GatewayReport {
        public_key: identity.public,
        public_endpoint: cfg.public_endpoint,
        listen_port,
        services: cfg
            .services
            .iter()
            .map(|s| ServiceInfo {
                name: s.name.clone(),
                port: s.port,
            })
            .collect(),
        direct_services: cfg
            .direct
            .iter()
            .map(|s| ServiceInfo {
                name: s.name.clone(),
                port: s.port,
            })
            .collect(),
        network: None,
    }
}

/// Reports `report` with the credential held, or enrolls with the token
/// (first start, or a refused credential with a token given). Returns the
/// credential, and the server's name when enrolling told it.
pub(crate) async fn enroll_or_report(
    client: &ControlClient,
    cfg: &GatewayConfig,
    identity: &mut Identity,
    report: &GatewayReport,
) -> Result<(String, Option<String>), GatewayError> {
    let mut server = None;
    let refused = match identity.credential.clone() {
        Some(c) => match client.with_bearer(&c).report(report).await {
            Ok(()) => {
                if cfg.enroll_token.is_some() {
                    // Enrolled on an earlier start: the token was spent
                    // then, and its file may well be gone now.
                    tracing::info!(
                        credential = %identity.credential_path().display(),
                        "already enrolled; the enrollment token setting is ignored (it may be removed)"
                    );
                }
                Ok(c)
            }
            // Revoked or replaced on the control plane. A readable
            // enrollment token given now is the operator's answer to
            // that ('hushgate admin server reenroll'); without one, say
            // so.
            Err(e) if e.status() == Some(401) => {
                match cfg.enroll_token.as_ref().map(EnrollToken::read) {
                    Some(Ok(token)) => {
                        tracing::warn!(error = %e, "the control plane refused this gateway's credential; enrolling again with the enrollment token given");
                        Err(token)
                    }
                    _ => {
                        return Err(GatewayError::CredentialRefused(
                            e,
                            identity.credential_path(),
                        ))
                    }
                }
            }
            Err(e) => return Err(GatewayError::Control(e)),
        },
        None => Err(cfg
            .enroll_token
            .as_ref()
            .ok_or_else(|| {
                GatewayError::Config(format!(
                    "this gateway is not enrolled yet ({} has no credential): give the enrollment token from 'hushgate admin server add' in HUSHGATE_ENROLL_TOKEN, with --enroll-file, or as the systemd credential 'enroll-token'",
                    cfg.state_dir.display()
                ))
            })?
            .read()?),
    };
    let credential = match refused {
        Ok(c) => c,
        Err(token) => {
            let resp = client
                .enroll(&EnrollRequest {
                    enrollment_token: token,
                    report: report.clone(),
                })
                .await
                .map_err(GatewayError::Enroll)?;
            identity.save_credential(&resp.credential)?;
            tracing::info!(server = %resp.server, "enrolled with the control plane");
            server = Some(resp.server);
            resp.credential
        }
    };
    Ok((credential, server))
}
