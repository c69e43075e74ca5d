//! Errors at the boundary: the thread-local last error, the guard that
//! keeps panics on this side, and the mapping from the shim's error kinds
//! to the stable codes of [`hg_status`].
//!
//! Why a thread-local last error (as `errno` and libgit2 do) rather than
//! an out-parameter: every call keeps one simple shape (`hg_status` back,
//! results through out-pointers), the message needs no buffer sizing and
//! no freeing by the caller, and ctypes/cffi bindings read it with one
//! call. A failing call sets it; a successful call leaves it alone.

use client_shim::ErrorKind;
use std::cell::{Cell, RefCell};
use std::ffi::CString;
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::abi::hg_status;

/// A failure to report to the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Error {
    pub(crate) code: hg_status,
    pub(crate) message: String,
}

impl Error {
    pub(crate) fn new(code: hg_status, message: impl Into<String>) -> Error {
        Error {
            code,
            message: message.into(),
        }
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Error {
        Error::new(hg_status::HG_ERR_INVALID_ARGUMENT, message)
    }

    pub(crate) fn bad_state(message: impl Into<String>) -> Error {
        Error::new(hg_status::HG_ERR_BAD_STATE, message)
    }
}

struct LastError {
    code: hg_status,
    message: CString,
}

thread_local! {
    static LAST: RefCell<LastError> = RefCell::new(LastError {
        code: hg_status::HG_OK,
        message: CString::default(),
    });
    /// Set while this thread runs an event callback: the calls that wait
    /// for callbacks to finish refuse to run there.
    static IN_CALLBACK: Cell<bool> = const { Cell::new(false) };
}

/// Records `e` as this thread's last error and returns its code.
pub(crate) fn set_last(e: Error) -> hg_status {
    // An interior NUL cannot be represented in a C string: cut there.
    let bytes: Vec<u8> = e
        .message
        .into_bytes()
        .into_iter()
        .take_while(|&b| b != 0)
        .collect();
    let message = CString::new(bytes).unwrap_or_default();
    let code = e.code;
    LAST.with(|l| *l.borrow_mut() = LastError { code, message });
    code
}

pub(crate) fn last_code() -> hg_status {
    LAST.with(|l| l.borrow().code)
}

/// The last error's message. The pointer stays valid until the next
/// failing call on this thread replaces it.
pub(crate) fn last_message_ptr() -> *const std::ffi::c_char {
    LAST.with(|l| l.borrow().message.as_ptr())
}

/// Runs an entry point's body: its error (or a panic, which must never
/// unwind into C) becomes the last error and the returned code.
pub(crate) fn guard(name: &str, f: impl FnOnce() -> Result<(), Error>) -> hg_status {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => hg_status::HG_OK,
        Ok(Err(e)) => set_last(e),
        Err(panic) => set_last(panic_error(name, panic)),
    }
}

/// [`guard`] for entry points that return a value instead of a status
/// (`fallback` on panic).
pub(crate) fn guard_value<T>(name: &str, fallback: T, f: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(v) => v,
        Err(panic) => {
            set_last(panic_error(name, panic));
            fallback
        }
    }
}

pub(crate) fn panic_error(name: &str, panic: Box<dyn std::any::Any + Send>) -> Error {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    Error::new(
        hg_status::HG_ERR_INTERNAL,
        format!("internal error in {name}: {what} (please report this)"),
    )
}

/// Whether this thread is running an event callback now.
pub(crate) fn in_callback() -> bool {
    IN_CALLBACK.with(Cell::get)
}

/// Marks this thread as running a callback until the guard drops.
pub(crate) struct CallbackScope;

impl CallbackScope {
    pub(crate) fn enter() -> CallbackScope {
        IN_CALLBACK.with(|c| c.set(true));
        CallbackScope
    }
}

impl Drop for CallbackScope {
    fn drop(&mut self) {
        IN_CALLBACK.with(|c| c.set(false));
    }
}

/// Refuses `what` inside a callback.
pub(crate) fn not_in_callback(what: &str) -> Result<(), Error> {
    if in_callback() {
        return Err(Error::new(
            hg_status::HG_ERR_REENTRANT,
            format!("{what} cannot be called from an event callback (it waits for callbacks to finish); call it from another thread"),
        ));
    }
    Ok(())
}

/// The stable code for a kind of shim error.
pub(crate) fn code_of(kind: ErrorKind) -> hg_status {
    use hg_status::*;
    match kind {
        ErrorKind::WrongPassword => HG_ERR_WRONG_PASSWORD,
        // No codes of their own yet: the message says what to do.
        ErrorKind::SecondFactor => HG_ERR_WRONG_PASSWORD,
        ErrorKind::WaitingForApproval => HG_ERR_NO_ACCESS,
        ErrorKind::TokenRejected => HG_ERR_TOKEN_REJECTED,
        ErrorKind::RateLimited => HG_ERR_RATE_LIMITED,
        ErrorKind::NoAccess => HG_ERR_NO_ACCESS,
        ErrorKind::Revoked => HG_ERR_REVOKED,
        ErrorKind::ControlUnreachable => HG_ERR_CONTROL_UNREACHABLE,
        ErrorKind::CertificateNotTrusted => HG_ERR_CERTIFICATE_NOT_TRUSTED,
        ErrorKind::GatewayOffline => HG_ERR_GATEWAY_OFFLINE,
        ErrorKind::GatewayUnreachable => HG_ERR_GATEWAY_UNREACHABLE,
        ErrorKind::ListenInUse => HG_ERR_LISTEN_IN_USE,
        ErrorKind::Listen => HG_ERR_LISTEN,
        ErrorKind::BadAnswer => HG_ERR_BAD_ANSWER,
        ErrorKind::DataPath => HG_ERR_TUNNEL,
        ErrorKind::Config => HG_ERR_BAD_CONFIG,
        ErrorKind::Control => HG_ERR_CONTROL,
        ErrorKind::CodeExpired => HG_ERR_CODE_EXPIRED,
        ErrorKind::CodeDenied => HG_ERR_CODE_DENIED,
        _ => HG_ERR_OTHER,
    }
}

/// The code's name as in the header, e.g. `"HG_ERR_REVOKED"`.
pub(crate) fn status_name(code: i32) -> &'static std::ffi::CStr {
    use hg_status::*;
    const ALL: &[(hg_status, &std::ffi::CStr)] = &[
        (HG_OK, c"HG_OK"),
        (HG_ERR_INVALID_ARGUMENT, c"HG_ERR_INVALID_ARGUMENT"),
        (HG_ERR_BAD_STATE, c"HG_ERR_BAD_STATE"),
        (HG_ERR_REENTRANT, c"HG_ERR_REENTRANT"),
        (HG_ERR_TIMEOUT, c"HG_ERR_TIMEOUT"),
        (HG_ERR_UNSUPPORTED, c"HG_ERR_UNSUPPORTED"),
        (HG_ERR_INTERNAL, c"HG_ERR_INTERNAL"),
        (HG_ERR_BAD_CA, c"HG_ERR_BAD_CA"),
        (HG_ERR_BAD_CONFIG, c"HG_ERR_BAD_CONFIG"),
        (HG_ERR_WRONG_PASSWORD, c"HG_ERR_WRONG_PASSWORD"),
        (HG_ERR_TOKEN_REJECTED, c"HG_ERR_TOKEN_REJECTED"),
        (HG_ERR_RATE_LIMITED, c"HG_ERR_RATE_LIMITED"),
        (HG_ERR_NO_ACCESS, c"HG_ERR_NO_ACCESS"),
        (HG_ERR_REVOKED, c"HG_ERR_REVOKED"),
        (HG_ERR_CODE_EXPIRED, c"HG_ERR_CODE_EXPIRED"),
        (HG_ERR_CODE_DENIED, c"HG_ERR_CODE_DENIED"),
        (HG_ERR_CONTROL_UNREACHABLE, c"HG_ERR_CONTROL_UNREACHABLE"),
        (
            HG_ERR_CERTIFICATE_NOT_TRUSTED,
            c"HG_ERR_CERTIFICATE_NOT_TRUSTED",
        ),
        (HG_ERR_GATEWAY_OFFLINE, c"HG_ERR_GATEWAY_OFFLINE"),
        (HG_ERR_GATEWAY_UNREACHABLE, c"HG_ERR_GATEWAY_UNREACHABLE"),
        (HG_ERR_LISTEN_IN_USE, c"HG_ERR_LISTEN_IN_USE"),
        (HG_ERR_LISTEN, c"HG_ERR_LISTEN"),
        (HG_ERR_BAD_ANSWER, c"HG_ERR_BAD_ANSWER"),
        (HG_ERR_TUNNEL, c"HG_ERR_TUNNEL"),
        (HG_ERR_CONTROL, c"HG_ERR_CONTROL"),
        (HG_ERR_OTHER, c"HG_ERR_OTHER"),
    ];
    ALL.iter()
        .find(|(s, _)| *s as i32 == code)
        .map(|(_, n)| *n)
        .unwrap_or(c"HG_ERR_UNKNOWN")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_an_internal_error_with_its_message() {
        let code = guard("hg_test", || panic!("boom"));
        assert_eq!(code, hg_status::HG_ERR_INTERNAL);
        assert_eq!(last_code(), hg_status::HG_ERR_INTERNAL);
        // SAFETY: the pointer is this thread's last message, alive until
        // the next failing call on this thread.
        let msg = unsafe { std::ffi::CStr::from_ptr(last_message_ptr()) };
        let msg = msg.to_str().unwrap();
        assert!(msg.contains("hg_test") && msg.contains("boom"), "{msg}");
    }

    #[test]
    fn success_leaves_the_last_error_alone_and_nul_bytes_are_cut() {
        set_last(Error::invalid("bad\0hidden"));
        assert_eq!(guard("hg_ok", || Ok(())), hg_status::HG_OK);
        assert_eq!(last_code(), hg_status::HG_ERR_INVALID_ARGUMENT);
        // SAFETY: as above.
        let msg = unsafe { std::ffi::CStr::from_ptr(last_message_ptr()) };
        assert_eq!(msg.to_str().unwrap(), "bad");
    }

    #[test]
    fn every_code_has_its_header_name() {
        assert_eq!(status_name(0), c"HG_OK");
        assert_eq!(status_name(24), c"HG_ERR_REVOKED");
        assert_eq!(status_name(12345), c"HG_ERR_UNKNOWN");
        assert_eq!(code_of(ErrorKind::DataPath), hg_status::HG_ERR_TUNNEL);
        assert_eq!(status_name(26), c"HG_ERR_CODE_DENIED");
        assert_eq!(
            code_of(ErrorKind::CodeExpired),
            hg_status::HG_ERR_CODE_EXPIRED
        );
    }
}
