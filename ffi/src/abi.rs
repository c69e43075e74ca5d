//! The types the C header declares. Names are the C names (`hg_status`,
//! `HG_OK`), so the header, the docs and this file read the same.
//!
//! Every enum is `#[repr(i32)]`: in C it is an `int32_t` typedef with the
//! values as constants, so its size never depends on the compiler. The
//! library only ever *returns* these enums; where C passes one in
//! (`hg_session_set_credential`'s kind), the parameter is a plain
//! `int32_t` that is checked, because a Rust enum holding a value it does
//! not declare would be undefined behaviour.
#![allow(non_camel_case_types)]

use std::ffi::{c_char, c_void};

/// What a call returns: `HG_OK` (0) or why it failed. The same codes say
/// why a session failed (`hg_event.code`). Values are stable: new codes
/// may be added, none is ever renumbered.
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum hg_status {
    /// Success.
    HG_OK = 0,
    /// A required pointer was NULL, a string was not UTF-8, or a value
    /// was out of range (e.g. an unparsable listen address).
    HG_ERR_INVALID_ARGUMENT = 1,
    /// The call does not fit the session's state: a setting changed while
    /// the session runs, `hg_session_start` on a running session, a start
    /// without credentials, waiting on a session never started.
    HG_ERR_BAD_STATE = 2,
    /// Called from inside an event callback, where it would wait for the
    /// callback itself (`hg_session_stop`, `hg_session_free`).
    HG_ERR_REENTRANT = 3,
    /// `hg_session_wait_ready` gave up before the session was ready.
    HG_ERR_TIMEOUT = 4,
    /// Not available in this build or on this platform (reserved; no
    /// function of this version returns it).
    HG_ERR_UNSUPPORTED = 5,
    /// A bug in the library, caught at the boundary (the message says
    /// where). The session may be unusable; free it.
    HG_ERR_INTERNAL = 6,
    /// The CA given to `hg_session_new` holds no PEM certificate.
    HG_ERR_BAD_CA = 10,
    /// The settings cannot work, e.g. a control plane URL that is not
    /// `https://`.
    HG_ERR_BAD_CONFIG = 11,
    /// The control plane refused the user name or password (one answer
    /// for both, on purpose).
    HG_ERR_WRONG_PASSWORD = 20,
    /// The login token was refused (expired or logged out): sign in again.
    HG_ERR_TOKEN_REJECTED = 21,
    /// Too many sign-ins from this address or for this user: wait.
    HG_ERR_RATE_LIMITED = 22,
    /// No grant on that server, or no such server (not told apart).
    HG_ERR_NO_ACCESS = 23,
    /// The admission was revoked or the grant removed.
    HG_ERR_REVOKED = 24,
    /// Sign-in by code: nobody approved the code before it expired
    /// (codes last up to ten minutes). Start again for a new code.
    HG_ERR_CODE_EXPIRED = 25,
    /// Sign-in by code: the user the code was shown to denied it.
    HG_ERR_CODE_DENIED = 26,
    /// The control plane cannot be reached (network, DNS, down).
    HG_ERR_CONTROL_UNREACHABLE = 30,
    /// The control plane's certificate is not signed by the pinned CA (or
    /// by a public root when none is pinned).
    HG_ERR_CERTIFICATE_NOT_TRUSTED = 31,
    /// The server's gateway is not connected to the control plane.
    HG_ERR_GATEWAY_OFFLINE = 32,
    /// The gateway never answered the WireGuard handshake (UDP blocked?).
    HG_ERR_GATEWAY_UNREACHABLE = 33,
    /// The local listen address is taken.
    HG_ERR_LISTEN_IN_USE = 40,
    /// The local listen address cannot be used for another reason.
    HG_ERR_LISTEN = 41,
    /// The control plane's answer cannot be used.
    HG_ERR_BAD_ANSWER = 50,
    /// The tunnel's socket or thread failed.
    HG_ERR_TUNNEL = 51,
    /// Any other control plane error (the message has its text).
    HG_ERR_CONTROL = 52,
    /// Anything else; the message says what.
    HG_ERR_OTHER = 99,
}

/// Where a session is. Changes are announced by events; the current one
/// is always available from `hg_session_state`.
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum hg_state {
    /// Created, not started (or never started again after it ended).
    HG_STATE_IDLE = 0,
    /// Signing in, asking for access, bringing the tunnel up.
    HG_STATE_CONNECTING = 1,
    /// Sign-in by code: showing a code and waiting for the user to
    /// approve it on another device (`HG_EVENT_WAITING_FOR_APPROVAL` has
    /// the code and the link). Back to `HG_STATE_CONNECTING` once approved.
    HG_STATE_WAITING_FOR_APPROVAL = 2,
    /// The local address works: point the player at it.
    HG_STATE_READY = 3,
    /// Renewing the admission; the local address keeps working.
    HG_STATE_RENEWING = 4,
    /// The gateway stopped answering (e.g. the device changed networks):
    /// asking for a new admission. Connections wait or fail meanwhile.
    HG_STATE_RECONNECTING = 5,
    /// Ended: the admission was revoked or the grant removed. Final.
    HG_STATE_REVOKED = 6,
    /// Ended: something retrying cannot fix (`hg_event.code` says what).
    /// Final.
    HG_STATE_FAILED = 7,
    /// Ended: stopped by the app. Final.
    HG_STATE_STOPPED = 8,
}

/// What happened. Each event also carries the state it led to.
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum hg_event_kind {
    /// `hg_session_start` was called; signing in.
    HG_EVENT_CONNECTING = 1,
    /// Sign-in by code: `user_code`, `verification_uri` and
    /// `verification_uri_complete` are set, `expires_at` is when the code
    /// stops working; show the code and the link (or a QR code of the
    /// complete link) until the next event.
    HG_EVENT_WAITING_FOR_APPROVAL = 2,
    /// The local address works (`local_addr`), first time or again after
    /// the path came back with the same admission.
    HG_EVENT_READY = 3,
    /// Renewal of the admission started.
    HG_EVENT_RENEWING = 4,
    /// The admission now lasts until `expires_at`.
    HG_EVENT_RENEWED = 5,
    /// The gateway stopped answering; a new admission is requested.
    HG_EVENT_LOST = 6,
    /// Asking for a new admission, attempt `attempt` (1-based).
    HG_EVENT_RECONNECTING = 7,
    /// Working again with a new admission (e.g. after the device's public
    /// address changed); `local_addr` is unchanged.
    HG_EVENT_READMITTED = 8,
    /// Revoked; final. `message` has the control plane's reason.
    HG_EVENT_REVOKED = 9,
    /// Failed; final. `code` and `message` say why.
    HG_EVENT_FAILED = 10,
    /// Stopped by the app; final.
    HG_EVENT_STOPPED = 11,
}

/// How the user proves who they are (`hg_session_set_credential`).
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum hg_credential_kind {
    /// `user` and `secret` (the password). The library signs in again by
    /// itself when the login token expires.
    HG_CREDENTIAL_PASSWORD = 1,
    /// `secret` is a login token (`hgu_...`) from an earlier sign-in;
    /// `user` is ignored. When it expires the session fails with
    /// `HG_ERR_TOKEN_REJECTED`.
    HG_CREDENTIAL_TOKEN = 2,
    /// Sign-in by code, for devices without a keyboard: `user` is the
    /// device's name as the approving user sees it ("living-room TV");
    /// `secret` is the path of the device file where the library keeps
    /// the device's credential (mode 0600), or NULL to keep it only for
    /// this run. With a credential in the file the session signs in with
    /// it alone; otherwise each start shows a new code
    /// (`HG_EVENT_WAITING_FOR_APPROVAL`) and waits until a user approves
    /// it, then saves the credential there.
    HG_CREDENTIAL_DEVICE_CODE = 3,
}

/// One event. Everything it points to is owned by the event: valid until
/// `hg_event_free` for an event from `hg_session_poll_event`, and only
/// during the call for the event a callback receives.
#[repr(C)]
#[derive(Debug)]
pub struct hg_event {
    pub kind: hg_event_kind,
    /// The session's state after this event.
    pub state: hg_state,
    /// `HG_OK`, or for `HG_EVENT_FAILED` and `HG_EVENT_REVOKED` why.
    pub code: hg_status,
    /// `HG_EVENT_RECONNECTING`: the attempt, from 1; otherwise 0.
    pub attempt: u32,
    /// When the current admission expires (for
    /// `HG_EVENT_WAITING_FOR_APPROVAL`: when the code does), in seconds
    /// since the Unix epoch (UTC); 0 while there is none.
    pub expires_at: i64,
    /// Only from `hg_session_poll_event`: how many events were dropped
    /// just before this one because nobody polled (the queue keeps the
    /// latest 256). The state is never lost: see `hg_session_state`.
    pub missed: u64,
    /// What happened, in English, for logs and users (UTF-8, never NULL).
    pub message: *const c_char,
    /// The address the player connects to, `"127.0.0.1:PORT"` (or
    /// `"[::1]:PORT"`), while the session is up; NULL otherwise.
    pub local_addr: *const c_char,
    /// `HG_EVENT_WAITING_FOR_APPROVAL`: the code to show, `"XXXX-XXXX"`;
    /// NULL for every other event.
    pub user_code: *const c_char,
    /// `HG_EVENT_WAITING_FOR_APPROVAL`: where the user types the code,
    /// e.g. `"https://control.example/device"`; NULL otherwise.
    pub verification_uri: *const c_char,
    /// `HG_EVENT_WAITING_FOR_APPROVAL`: the same link with the code in
    /// it, to show as a QR code; NULL otherwise.
    pub verification_uri_complete: *const c_char,
}

/// Called for every event of a session, in order, one at a time, on a
/// thread the library owns (one per session, named `hushgate-events`),
/// never on the thread that called into the library. `event` is valid
/// only during the call. The callback may call any `hg_` function except
/// `hg_session_stop` and `hg_session_free` (they wait for callbacks to
/// finish, and return `HG_ERR_REENTRANT` there). Return quickly: a slow
/// callback delays later events (never the tunnel itself).
pub type hg_event_callback =
    Option<unsafe extern "C" fn(event: *const hg_event, user_data: *mut c_void)>;
