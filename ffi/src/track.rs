//! [`Tracker`]: the session's state as the C ABI shows it, and the event
//! each change produces. A plain struct with no clock, no threads and no
//! C types beyond the enums: the driver (`handle`) feeds it what the shim
//! reports and publishes what comes out.
//!
//! The shim says `Connected` both for a path that came back and for a
//! new admission after a re-admission; the tracker tells the two apart
//! by the admission id (`HG_EVENT_READY` vs `HG_EVENT_READMITTED`). Once a
//! final state is reached (revoked, failed, stopped) nothing changes it
//! until the next start.

use client_shim::{CodePrompt, EndReason, SessionEvent, SessionInfo};
use std::net::SocketAddr;
use time::OffsetDateTime;

use crate::abi::{hg_event_kind, hg_state, hg_status};
use crate::error::code_of;

/// One state change, ready to become an `hg_event`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Update {
    pub(crate) kind: hg_event_kind,
    pub(crate) state: hg_state,
    pub(crate) code: hg_status,
    pub(crate) attempt: u32,
    pub(crate) expires_at: Option<OffsetDateTime>,
    pub(crate) message: String,
    pub(crate) local_addr: Option<SocketAddr>,
    /// Sign-in by code: what to show while waiting for the approval.
    pub(crate) prompt: Option<CodePrompt>,
}

/// Where one session is, across its runs.
#[derive(Debug)]
pub(crate) struct Tracker {
    state: hg_state,
    admission: Option<String>,
    expires_at: Option<OffsetDateTime>,
    local_addr: Option<SocketAddr>,
    /// Why the last run ended, for `hg_session_wait_ready`.
    end: Option<(hg_status, String)>,
}

impl Tracker {
    pub(crate) fn new() -> Tracker {
        Tracker {
            state: hg_state::HG_STATE_IDLE,
            admission: None,
            expires_at: None,
            local_addr: None,
            end: None,
        }
    }

    pub(crate) fn state(&self) -> hg_state {
        self.state
    }

    pub(crate) fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// The code and message of the final state, if the session ended.
    pub(crate) fn end(&self) -> Option<&(hg_status, String)> {
        self.end.as_ref()
    }

    pub(crate) fn is_final(&self) -> bool {
        is_final(self.state)
    }

    /// Between a start and its end.
    pub(crate) fn is_running(&self) -> bool {
        !self.is_final() && self.state != hg_state::HG_STATE_IDLE
    }

    /// The local address works (READY or RENEWING).
    pub(crate) fn is_up(&self) -> bool {
        matches!(
            self.state,
            hg_state::HG_STATE_READY | hg_state::HG_STATE_RENEWING
        )
    }

    fn update(&mut self, kind: hg_event_kind, state: hg_state, message: String) -> Update {
        self.state = state;
        Update {
            kind,
            state,
            code: hg_status::HG_OK,
            attempt: 0,
            expires_at: self.expires_at,
            message,
            local_addr: self.local_addr,
            prompt: None,
        }
    }

    /// A new run begins.
    pub(crate) fn starting(&mut self, control_url: &str, server: &str) -> Update {
        *self = Tracker::new();
        self.update(
            hg_event_kind::HG_EVENT_CONNECTING,
            hg_state::HG_STATE_CONNECTING,
            format!("signing in at {control_url} for server '{server}'"),
        )
    }

    /// Sign-in by code: a code to show, valid until `expires_at`.
    pub(crate) fn waiting_for_code(
        &mut self,
        prompt: &CodePrompt,
        expires_at: OffsetDateTime,
    ) -> Option<Update> {
        if self.state != hg_state::HG_STATE_CONNECTING {
            return None;
        }
        let mut u = self.update(
            hg_event_kind::HG_EVENT_WAITING_FOR_APPROVAL,
            hg_state::HG_STATE_WAITING_FOR_APPROVAL,
            format!(
                "to sign in, open {} on a phone or computer and enter the code {} (valid until {})",
                prompt.verification_uri,
                prompt.user_code,
                rfc3339(expires_at)
            ),
        );
        u.expires_at = Some(expires_at);
        u.prompt = Some(prompt.clone());
        Some(u)
    }

    /// Sign-in by code: the code was approved; connecting goes on.
    pub(crate) fn code_approved(&mut self) -> Option<Update> {
        if self.state != hg_state::HG_STATE_WAITING_FOR_APPROVAL {
            return None;
        }
        Some(self.update(
            hg_event_kind::HG_EVENT_CONNECTING,
            hg_state::HG_STATE_CONNECTING,
            "the code was approved; asking for access".into(),
        ))
    }

    /// The shim's session is up (the first handshake was answered).
    pub(crate) fn ready(&mut self, info: &SessionInfo, local: SocketAddr) -> Option<Update> {
        if self.is_final() {
            return None;
        }
        self.admission = Some(info.admission_id.clone());
        self.expires_at = Some(info.expires_at);
        self.local_addr = Some(local);
        Some(self.update(
            hg_event_kind::HG_EVENT_READY,
            hg_state::HG_STATE_READY,
            format!(
                "ready: point the player at http://{local} (server '{}', service '{}', admission {}, expires {})",
                info.server,
                info.service,
                info.admission_id,
                rfc3339(info.expires_at)
            ),
        ))
    }

    /// The run ended with a failure (`code` says which kind).
    pub(crate) fn failed(&mut self, code: hg_status, message: String) -> Option<Update> {
        if self.is_final() {
            return None;
        }
        let (kind, state) = if code == hg_status::HG_ERR_REVOKED {
            (hg_event_kind::HG_EVENT_REVOKED, hg_state::HG_STATE_REVOKED)
        } else {
            (hg_event_kind::HG_EVENT_FAILED, hg_state::HG_STATE_FAILED)
        };
        Some(self.finish(kind, state, code, message))
    }

    /// The app stopped the run.
    pub(crate) fn stopped(&mut self) -> Option<Update> {
        if self.is_final() {
            return None;
        }
        Some(self.finish(
            hg_event_kind::HG_EVENT_STOPPED,
            hg_state::HG_STATE_STOPPED,
            hg_status::HG_OK,
            "stopped: the local address is closed and the admission revoked".into(),
        ))
    }

    fn finish(
        &mut self,
        kind: hg_event_kind,
        state: hg_state,
        code: hg_status,
        message: String,
    ) -> Update {
        self.local_addr = None;
        self.expires_at = None;
        self.end = Some((code, message.clone()));
        let mut u = self.update(kind, state, message);
        u.code = code;
        u
    }

    /// What the shim reported while running.
    pub(crate) fn on_event(&mut self, ev: &SessionEvent) -> Option<Update> {
        use hg_event_kind::*;
        use hg_state::*;
        if self.is_final() {
            return None;
        }
        match ev {
            SessionEvent::Connected {
                admission_id,
                expires_at,
            } => {
                let readmitted = self.admission.as_ref() != Some(admission_id);
                self.admission = Some(admission_id.clone());
                self.expires_at = Some(*expires_at);
                let local = self.local_addr.map(|a| a.to_string()).unwrap_or_default();
                Some(if readmitted {
                    self.update(
                        HG_EVENT_READMITTED,
                        HG_STATE_READY,
                        format!("re-admitted as {admission_id} (expires {}); the player keeps using http://{local}", rfc3339(*expires_at)),
                    )
                } else {
                    self.update(
                        HG_EVENT_READY,
                        HG_STATE_READY,
                        format!("the gateway answers again; http://{local} works"),
                    )
                })
            }
            SessionEvent::Renewing => {
                // A renewal while reconnecting does not make the path good.
                let state = if self.state == HG_STATE_RECONNECTING {
                    HG_STATE_RECONNECTING
                } else {
                    HG_STATE_RENEWING
                };
                Some(self.update(HG_EVENT_RENEWING, state, "renewing the admission".into()))
            }
            SessionEvent::Renewed { expires_at } => {
                self.expires_at = Some(*expires_at);
                let state = if self.state == HG_STATE_RECONNECTING {
                    HG_STATE_RECONNECTING
                } else {
                    HG_STATE_READY
                };
                Some(self.update(
                    HG_EVENT_RENEWED,
                    state,
                    format!("renewed: the admission expires {}", rfc3339(*expires_at)),
                ))
            }
            SessionEvent::Lost => Some(self.update(
                HG_EVENT_LOST,
                HG_STATE_RECONNECTING,
                "the gateway stopped answering; asking for a new admission".into(),
            )),
            SessionEvent::Reconnecting { attempt } => {
                let mut u = self.update(
                    HG_EVENT_RECONNECTING,
                    HG_STATE_RECONNECTING,
                    format!("asking for a new admission (attempt {attempt})"),
                );
                u.attempt = *attempt;
                Some(u)
            }
            SessionEvent::Revoked { message } => {
                self.failed(hg_status::HG_ERR_REVOKED, format!("revoked: {message}"))
            }
            SessionEvent::Ended { reason } => match reason {
                EndReason::Closed => self.stopped(),
                EndReason::Revoked { message } => {
                    self.failed(hg_status::HG_ERR_REVOKED, format!("revoked: {message}"))
                }
                EndReason::Failed { message, kind } => self.failed(code_of(*kind), message.clone()),
            },
        }
    }
}

/// Whether `state` is one a run ends in.
pub(crate) fn is_final(state: hg_state) -> bool {
    matches!(
        state,
        hg_state::HG_STATE_REVOKED | hg_state::HG_STATE_FAILED | hg_state::HG_STATE_STOPPED
    )
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use client_shim::ErrorKind;
    use hg_event_kind::*;
    use hg_state::*;

    fn info(id: &str) -> SessionInfo {
        SessionInfo {
            admission_id: id.into(),
            expires_at: OffsetDateTime::from_unix_timestamp(2_000_000_000).unwrap(),
            server: "den".into(),
            service: "plex".into(),
            gateway: "192.0.2.1:51820".parse().unwrap(),
        }
    }

    fn connected(id: &str) -> SessionEvent {
        SessionEvent::Connected {
            admission_id: id.into(),
            expires_at: OffsetDateTime::from_unix_timestamp(2_000_000_100).unwrap(),
        }
    }

    fn started() -> Tracker {
        let mut t = Tracker::new();
        assert_eq!(t.state(), HG_STATE_IDLE);
        assert!(!t.is_running());
        let u = t.starting("https://cp", "den");
        assert_eq!(
            (u.kind, u.state),
            (HG_EVENT_CONNECTING, HG_STATE_CONNECTING)
        );
        let u = t
            .ready(&info("adm_1"), "127.0.0.1:4000".parse().unwrap())
            .unwrap();
        assert_eq!((u.kind, u.state), (HG_EVENT_READY, HG_STATE_READY));
        assert_eq!(u.local_addr, Some("127.0.0.1:4000".parse().unwrap()));
        assert!(u.message.contains("http://127.0.0.1:4000"), "{}", u.message);
        assert!(t.is_up() && t.is_running());
        t
    }

    #[test]
    fn renewal_passes_through_renewing_and_back_to_ready() {
        let mut t = started();
        let u = t.on_event(&SessionEvent::Renewing).unwrap();
        assert_eq!((u.kind, u.state), (HG_EVENT_RENEWING, HG_STATE_RENEWING));
        assert!(t.is_up());
        let later = OffsetDateTime::from_unix_timestamp(2_000_003_600).unwrap();
        let u = t
            .on_event(&SessionEvent::Renewed { expires_at: later })
            .unwrap();
        assert_eq!((u.kind, u.state), (HG_EVENT_RENEWED, HG_STATE_READY));
        assert_eq!(u.expires_at, Some(later));
    }

    #[test]
    fn a_new_admission_after_a_loss_is_readmitted_and_the_same_one_is_ready() {
        let mut t = started();
        let u = t.on_event(&SessionEvent::Lost).unwrap();
        assert_eq!((u.kind, u.state), (HG_EVENT_LOST, HG_STATE_RECONNECTING));
        assert!(!t.is_up() && t.is_running());
        let u = t
            .on_event(&SessionEvent::Reconnecting { attempt: 2 })
            .unwrap();
        assert_eq!((u.kind, u.attempt), (HG_EVENT_RECONNECTING, 2));
        // A renewal during the reconnection does not claim the path is up.
        assert_eq!(
            t.on_event(&SessionEvent::Renewing).unwrap().state,
            HG_STATE_RECONNECTING
        );
        let u = t.on_event(&connected("adm_2")).unwrap();
        assert_eq!((u.kind, u.state), (HG_EVENT_READMITTED, HG_STATE_READY));
        assert_eq!(u.local_addr, Some("127.0.0.1:4000".parse().unwrap()));
        t.on_event(&SessionEvent::Lost).unwrap();
        let u = t.on_event(&connected("adm_2")).unwrap();
        assert_eq!((u.kind, u.state), (HG_EVENT_READY, HG_STATE_READY));
    }

    #[test]
    fn revocation_is_final_and_announced_once() {
        let mut t = started();
        let u = t
            .on_event(&SessionEvent::Revoked {
                message: "revoked by admin".into(),
            })
            .unwrap();
        assert_eq!(
            (u.kind, u.state, u.code),
            (
                HG_EVENT_REVOKED,
                HG_STATE_REVOKED,
                hg_status::HG_ERR_REVOKED
            )
        );
        assert_eq!(u.local_addr, None);
        assert!(t.is_final() && !t.is_running());
        // The shim's `Ended` that follows adds nothing, nor does anything later.
        let ended = SessionEvent::Ended {
            reason: EndReason::Revoked {
                message: "revoked by admin".into(),
            },
        };
        assert_eq!(t.on_event(&ended), None);
        assert_eq!(t.on_event(&connected("adm_9")), None);
        assert_eq!(t.stopped(), None);
        assert_eq!(t.end().unwrap().0, hg_status::HG_ERR_REVOKED);
    }

    #[test]
    fn an_end_without_its_announcement_still_reaches_the_final_state() {
        // The app may subscribe after the shim announced a revocation:
        // `Ended` alone must be enough.
        let mut t = started();
        let u = t
            .on_event(&SessionEvent::Ended {
                reason: EndReason::Revoked {
                    message: "grant removed".into(),
                },
            })
            .unwrap();
        assert_eq!((u.kind, u.state), (HG_EVENT_REVOKED, HG_STATE_REVOKED));
        let mut t = started();
        let u = t
            .on_event(&SessionEvent::Ended {
                reason: EndReason::Failed {
                    message: "token expired".into(),
                    kind: ErrorKind::TokenRejected,
                },
            })
            .unwrap();
        assert_eq!(
            (u.kind, u.state, u.code),
            (
                HG_EVENT_FAILED,
                HG_STATE_FAILED,
                hg_status::HG_ERR_TOKEN_REJECTED
            )
        );
        assert_eq!(u.message, "token expired");
    }

    #[test]
    fn a_failed_start_is_final_with_its_code_and_a_new_start_clears_it() {
        let mut t = Tracker::new();
        t.starting("https://cp", "den");
        let u = t
            .failed(hg_status::HG_ERR_WRONG_PASSWORD, "wrong password".into())
            .unwrap();
        assert_eq!((u.kind, u.state), (HG_EVENT_FAILED, HG_STATE_FAILED));
        assert_eq!(
            t.ready(&info("adm_1"), "127.0.0.1:1".parse().unwrap()),
            None
        );
        let u = t.starting("https://cp", "den");
        assert_eq!(u.state, HG_STATE_CONNECTING);
        assert_eq!(t.end(), None);
    }

    #[test]
    fn stopping_closes_the_address() {
        let mut t = started();
        let u = t.stopped().unwrap();
        assert_eq!(
            (u.kind, u.state, u.code),
            (HG_EVENT_STOPPED, HG_STATE_STOPPED, hg_status::HG_OK)
        );
        assert_eq!((u.local_addr, u.expires_at), (None, None));
        assert_eq!(t.local_addr(), None);
    }
}
