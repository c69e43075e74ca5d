//! The C functions. Each one is a thin shell: check the pointers and
//! strings it was given, run the body inside [`guard`] (no panic crosses
//! into C), and turn errors into a status plus the thread's last error.
//! The header's comments come from the `///` comments here.

use client_shim::Credentials;
use std::ffi::{c_char, c_void, CStr, CString};
use std::time::Duration;

use crate::abi::{hg_credential_kind, hg_event, hg_event_callback, hg_state, hg_status};
use crate::error::{self, guard, guard_value, not_in_callback, Error};
use crate::handle::{c_string, hg_session, OwnedEvent, SignIn};

/// A string argument that must be there.
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string that stays valid and
/// unchanged for `'a`.
unsafe fn str_arg<'a>(p: *const c_char, name: &str) -> Result<&'a str, Error> {
    if p.is_null() {
        return Err(Error::invalid(format!("{name} is NULL")));
    }
    // SAFETY: not NULL, and the caller promises a NUL-terminated string
    // that outlives 'a.
    let s = unsafe { CStr::from_ptr(p) };
    s.to_str()
        .map_err(|_| Error::invalid(format!("{name} is not valid UTF-8")))
}

/// A string argument that may be NULL.
///
/// # Safety
/// As [`str_arg`].
unsafe fn opt_str_arg<'a>(p: *const c_char, name: &str) -> Result<Option<&'a str>, Error> {
    if p.is_null() {
        return Ok(None);
    }
    // SAFETY: as promised by our caller.
    unsafe { str_arg(p, name) }.map(Some)
}

/// The session behind a handle.
///
/// # Safety
/// `p` is NULL or a handle from `hg_session_new` not yet freed.
unsafe fn session_arg<'a>(p: *const hg_session) -> Result<&'a hg_session, Error> {
    if p.is_null() {
        return Err(Error::invalid("the session handle is NULL"));
    }
    // SAFETY: a live handle from `hg_session_new` (a leaked Box), shared
    // by reference: every method takes `&self` and locks what it changes.
    Ok(unsafe { &*p })
}

/// An out-pointer that must be there.
fn out_arg<T>(p: *mut T, name: &str) -> Result<*mut T, Error> {
    if p.is_null() {
        return Err(Error::invalid(format!("{name} is NULL")));
    }
    Ok(p)
}

/// A timeout in milliseconds; negative waits forever.
fn timeout_arg(ms: i32) -> Option<Duration> {
    u64::try_from(ms).ok().map(Duration::from_millis)
}

/// The library's version, e.g. `"0.1.0"`. Static: never free it.
#[no_mangle]
pub extern "C" fn hg_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// The name of a status code as in this header, e.g. `"HG_ERR_REVOKED"`
/// (`"HG_ERR_UNKNOWN"` for a value it does not define). Static: never free
/// it.
#[no_mangle]
pub extern "C" fn hg_status_name(code: i32) -> *const c_char {
    error::status_name(code).as_ptr()
}

/// The code of the last failing call on this thread (`HG_OK` if none
/// failed yet).
#[no_mangle]
pub extern "C" fn hg_last_error_code() -> hg_status {
    error::last_code()
}

/// The message of the last failing call on this thread: what went wrong
/// and what to do, in English (UTF-8; `""` if none failed yet). Owned by
/// the library: do not free it; it stays valid until the next failing
/// call on this thread. A successful call leaves it unchanged.
#[no_mangle]
pub extern "C" fn hg_last_error_message() -> *const c_char {
    error::last_message_ptr()
}

/// Creates a session, not started.
///
/// - `control_url`: the control plane, `"https://host:port"` (required).
/// - `ca_pem`: the control plane's CA certificate(s) as PEM text, to pin
///   (a self-hosted control plane's `ca.pem`); NULL trusts the public web
///   roots instead. Copied: free yours when this returns.
/// - `server`: the media server's name at the control plane (required).
/// - `out`: receives the handle. Free it with `hg_session_free`.
///
/// The library copies every string; the caller keeps ownership of its
/// own. Fails with `HG_ERR_BAD_CA` or `HG_ERR_BAD_CONFIG` (e.g. not
/// `https://`) at once rather than at start.
///
/// # Safety
/// The strings are NULL or NUL-terminated; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn hg_session_new(
    control_url: *const c_char,
    ca_pem: *const c_char,
    server: *const c_char,
    out: *mut *mut hg_session,
) -> hg_status {
    guard("hg_session_new", || {
        let out = out_arg(out, "out")?;
        // SAFETY: the caller passes NUL-terminated strings or NULL.
        let (url, ca, server) = unsafe {
            (
                str_arg(control_url, "control_url")?,
                opt_str_arg(ca_pem, "ca_pem")?,
                str_arg(server, "server")?,
            )
        };
        let session = hg_session::new(url, ca.map(str::as_bytes), server)?;
        // SAFETY: `out` is not NULL and the caller promises it is writable.
        unsafe { *out = Box::into_raw(Box::new(session)) };
        Ok(())
    })
}

/// Sets how the user signs in (before `hg_session_start`, or between
/// runs). `kind` is an `hg_credential_kind`:
///
/// - `HG_CREDENTIAL_PASSWORD`: `user` and `secret` (the password).
/// - `HG_CREDENTIAL_TOKEN`: `secret` is a login token; `user` is ignored
///   (may be NULL).
/// - `HG_CREDENTIAL_DEVICE_CODE`: sign-in by code. `user` is the device's
///   name ("living-room TV", 1-64 characters); `secret` is the path of
///   the device file that keeps the device's credential (created 0600 at
///   the first approval, read at every later start), or NULL to keep it
///   for this run only. Each start without a credential shows a code
///   through `HG_EVENT_WAITING_FOR_APPROVAL` and waits for the approval;
///   it fails with `HG_ERR_CODE_EXPIRED` or `HG_ERR_CODE_DENIED`.
///
/// The strings are copied; wipe your copy of the secret when this
/// returns. The library never logs it.
///
/// # Safety
/// `session` is a live handle; the strings are NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn hg_session_set_credential(
    session: *mut hg_session,
    kind: i32,
    user: *const c_char,
    secret: *const c_char,
) -> hg_status {
    guard("hg_session_set_credential", || {
        // SAFETY: the caller passes a live handle.
        let s = unsafe { session_arg(session)? };
        let sign_in = match kind {
            k if k == hg_credential_kind::HG_CREDENTIAL_PASSWORD as i32 => {
                // SAFETY: the caller passes NUL-terminated strings or NULL.
                let (user, secret) =
                    unsafe { (str_arg(user, "user")?, str_arg(secret, "secret")?) };
                if user.is_empty() {
                    return Err(Error::invalid("the user name is empty"));
                }
                SignIn::Shim(Credentials::Password {
                    user: user.to_string(),
                    password: secret.to_string(),
                })
            }
            k if k == hg_credential_kind::HG_CREDENTIAL_TOKEN as i32 => {
                // SAFETY: as above.
                let secret = unsafe { str_arg(secret, "secret")? };
                SignIn::Shim(Credentials::Token(secret.to_string()))
            }
            k if k == hg_credential_kind::HG_CREDENTIAL_DEVICE_CODE as i32 => {
                // SAFETY: as above.
                let (name, file) =
                    unsafe { (str_arg(user, "user")?, opt_str_arg(secret, "secret")?) };
                if name.trim().is_empty() || name.chars().count() > 64 {
                    return Err(Error::invalid(
                        "the device name (user) must be 1-64 characters",
                    ));
                }
                if file.is_some_and(str::is_empty) {
                    return Err(Error::invalid(
                        "the device file path (secret) is empty; pass NULL to keep no file",
                    ));
                }
                SignIn::Code {
                    device_name: name.to_string(),
                    device_file: file.map(std::path::PathBuf::from),
                }
            }
            other => {
                return Err(Error::invalid(format!(
                    "credential kind {other} is not an hg_credential_kind"
                )))
            }
        };
        s.set_credentials(sign_in)
    })
}

/// Sets the service to reach (e.g. `"plex"`); NULL takes the first one
/// the grant offers (the default). Before start or between runs.
///
/// # Safety
/// `session` is a live handle; `service` is NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn hg_session_set_service(
    session: *mut hg_session,
    service: *const c_char,
) -> hg_status {
    guard("hg_session_set_service", || {
        // SAFETY: the caller passes a live handle and a string or NULL.
        let (s, service) = unsafe { (session_arg(session)?, opt_str_arg(service, "service")?) };
        s.set_service(service.map(str::to_string))
    })
}

/// Sets the local address the player connects to, e.g.
/// `"127.0.0.1:32400"`. The default, `"127.0.0.1:0"`, picks a free port
/// (read it from `hg_session_local_addr` or the ready event). Before
/// start or between runs.
///
/// # Safety
/// `session` is a live handle; `addr` is NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn hg_session_set_listen(
    session: *mut hg_session,
    addr: *const c_char,
) -> hg_status {
    guard("hg_session_set_listen", || {
        // SAFETY: the caller passes a live handle and a string.
        let (s, addr) = unsafe { (session_arg(session)?, str_arg(addr, "addr")?) };
        let addr = addr.parse().map_err(|_| {
            Error::invalid(format!(
                "'{addr}' is not an address and port such as 127.0.0.1:32400"
            ))
        })?;
        s.set_listen(addr)
    })
}

/// Registers `callback` (NULL removes it) to be called with every event
/// from the next start on, with `user_data` passed back unchanged. See
/// `hg_event_callback` for the thread it runs on and what it may call.
/// Before start or between runs. `user_data` must stay valid until the
/// session is stopped or freed: after `hg_session_stop` returns, no
/// callback of that run is running or will run.
///
/// # Safety
/// `session` is a live handle; `callback` is NULL or a function with the
/// `hg_event_callback` signature that may be called from another thread.
#[no_mangle]
pub unsafe extern "C" fn hg_session_set_callback(
    session: *mut hg_session,
    callback: hg_event_callback,
    user_data: *mut c_void,
) -> hg_status {
    guard("hg_session_set_callback", || {
        // SAFETY: the caller passes a live handle.
        let s = unsafe { session_arg(session)? };
        s.set_callback(callback, user_data)
    })
}

/// Starts the session and returns at once: sign-in, access and the
/// tunnel happen on the session's own threads, announced by events
/// (`HG_EVENT_CONNECTING`, then `HG_EVENT_READY` or `HG_EVENT_FAILED`).
/// Wait with `hg_session_wait_ready` or `hg_session_poll_event`, or
/// watch the callback. A session that ended (stopped, failed, revoked)
/// may be started again: a new sign-in and a new admission.
///
/// Fails with `HG_ERR_BAD_STATE` when running already or without a
/// credential.
///
/// # Safety
/// `session` is a live handle.
#[no_mangle]
pub unsafe extern "C" fn hg_session_start(session: *mut hg_session) -> hg_status {
    guard("hg_session_start", || {
        // SAFETY: the caller passes a live handle.
        unsafe { session_arg(session)? }.start()
    })
}

/// Blocks until the local address works (`HG_OK`), the run ends (its
/// code: e.g. `HG_ERR_WRONG_PASSWORD`, `HG_ERR_REVOKED`, or
/// `HG_ERR_BAD_STATE` if stopped or never started), or `timeout_ms`
/// passes (`HG_ERR_TIMEOUT`; negative waits without limit). Does not
/// consume events.
///
/// # Safety
/// `session` is a live handle.
#[no_mangle]
pub unsafe extern "C" fn hg_session_wait_ready(
    session: *mut hg_session,
    timeout_ms: i32,
) -> hg_status {
    guard("hg_session_wait_ready", || {
        // SAFETY: the caller passes a live handle.
        unsafe { session_arg(session)? }.wait_ready(timeout_arg(timeout_ms))
    })
}

/// Writes the session's current state to `*out`. Never blocks; callable
/// from a callback.
///
/// # Safety
/// `session` is a live handle; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn hg_session_state(
    session: *const hg_session,
    out: *mut hg_state,
) -> hg_status {
    guard("hg_session_state", || {
        // SAFETY: the caller passes a live handle.
        let s = unsafe { session_arg(session)? };
        let out = out_arg(out, "out")?;
        // SAFETY: not NULL; the caller promises it is writable.
        unsafe { *out = s.state() };
        Ok(())
    })
}

/// The address the player connects to, as `"127.0.0.1:PORT"`, while the
/// session is up (also while reconnecting: the port stays open).
/// `HG_ERR_BAD_STATE` before ready and after the end. `*out` receives a
/// new string: free it with `hg_string_free`.
///
/// # Safety
/// `session` is a live handle; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn hg_session_local_addr(
    session: *const hg_session,
    out: *mut *mut c_char,
) -> hg_status {
    guard("hg_session_local_addr", || {
        // SAFETY: the caller passes a live handle.
        let s = unsafe { session_arg(session)? };
        let out = out_arg(out, "out")?;
        let addr = s.local_addr()?;
        // SAFETY: not NULL; the caller promises it is writable.
        unsafe { *out = c_string(&addr.to_string()).into_raw() };
        Ok(())
    })
}

/// Takes the next event, waiting up to `timeout_ms` for one (0: do not
/// wait; negative: without limit). `*out` receives the event, or NULL if
/// none came in time (still `HG_OK`). Free the event with
/// `hg_event_free`. Events come here whether or not a callback is set;
/// the queue keeps the latest 256 (see `hg_event.missed`).
///
/// # Safety
/// `session` is a live handle; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn hg_session_poll_event(
    session: *mut hg_session,
    timeout_ms: i32,
    out: *mut *mut hg_event,
) -> hg_status {
    guard("hg_session_poll_event", || {
        // SAFETY: the caller passes a live handle.
        let s = unsafe { session_arg(session)? };
        let out = out_arg(out, "out")?;
        let ev = s.poll_event(timeout_arg(timeout_ms));
        let p = ev.map_or(std::ptr::null_mut(), |e| {
            Box::into_raw(e).cast::<hg_event>()
        });
        // SAFETY: not NULL; the caller promises it is writable.
        unsafe { *out = p };
        Ok(())
    })
}

/// Frees an event from `hg_session_poll_event` (NULL is ignored). Never
/// pass the event a callback received.
///
/// # Safety
/// `event` is NULL or an event from `hg_session_poll_event` not yet freed.
#[no_mangle]
pub unsafe extern "C" fn hg_event_free(event: *mut hg_event) {
    guard_value("hg_event_free", (), || {
        if !event.is_null() {
            // SAFETY: events are handed out as `Box<OwnedEvent>` whose
            // first field (repr(C)) is the `hg_event`; the caller gives
            // it back once.
            drop(unsafe { Box::from_raw(event.cast::<OwnedEvent>()) });
        }
    })
}

/// Stops the session: closes the local address and every connection
/// through it, revokes the admission (bounded: a few seconds if the
/// control plane does not answer), and returns when the run has ended
/// and its last event (`HG_EVENT_STOPPED`) went through the callback.
/// `HG_OK` also when not running. Not from a callback
/// (`HG_ERR_REENTRANT`).
///
/// # Safety
/// `session` is a live handle.
#[no_mangle]
pub unsafe extern "C" fn hg_session_stop(session: *mut hg_session) -> hg_status {
    guard("hg_session_stop", || {
        not_in_callback("hg_session_stop")?;
        // SAFETY: the caller passes a live handle.
        unsafe { session_arg(session)? }.stop()
    })
}

/// Stops the session if it runs (as `hg_session_stop`), ends its threads
/// and frees it. NULL is ignored. The handle must not be used again, nor
/// by another thread at the same time. From a callback it does nothing
/// but set the last error to `HG_ERR_REENTRANT` (the session is not
/// freed).
///
/// # Safety
/// `session` is NULL or a live handle no other thread is using.
#[no_mangle]
pub unsafe extern "C" fn hg_session_free(session: *mut hg_session) {
    guard_value("hg_session_free", (), || {
        if session.is_null() {
            return;
        }
        if let Err(e) = not_in_callback("hg_session_free") {
            error::set_last(e);
            return;
        }
        // SAFETY: a handle from `hg_session_new` (Box::into_raw), given
        // back once, with no other user (the caller's promise).
        drop(unsafe { Box::from_raw(session) });
    })
}

/// Frees a string the library returned for the caller to free
/// (`hg_session_local_addr`). NULL is ignored. Never pass it the static
/// strings of `hg_version`, `hg_status_name` or `hg_last_error_message`.
///
/// # Safety
/// `s` is NULL or a string from `hg_session_local_addr` not yet freed.
#[no_mangle]
pub unsafe extern "C" fn hg_string_free(s: *mut c_char) {
    guard_value("hg_string_free", (), || {
        if !s.is_null() {
            // SAFETY: made by `CString::into_raw` in this library and
            // given back once.
            drop(unsafe { CString::from_raw(s) });
        }
    })
}
