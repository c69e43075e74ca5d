//! The hushgate client shim behind a C ABI, for player apps written in C,
//! C++, or any language that can call C (Kotlin/Swift/C# through their
//! native interfaces, Python through ctypes: `bindings/python`).
//!
//! A player creates an `hg_session` with the control plane's URL, its CA
//! (PEM text, when self-hosted) and the server's name, sets a credential,
//! starts it, and points its HTTP client at the local address the session
//! gives once ready. The session then lives on its own threads: it renews
//! the admission, asks for a new one when the device changes networks,
//! and ends when revoked. The app hears of each change through a callback,
//! a poll function, or both. `docs/embedding.md` is the guide;
//! `include/hushgate.h` is generated from this crate by cbindgen (a test
//! fails when it is out of date).
//!
//! The parts:
//!
//! - `abi`: the C types (statuses, states, events, credential kinds);
//! - `api`: the `extern "C"` functions, thin shells that check pointers
//!   and strings and catch panics;
//! - `error`: the stable codes, the thread-local last error;
//! - `track`: the state machine that turns the shim's events into the
//!   ABI's states and events (no threads, no clock; unit-tested);
//! - `handle`: the session object: its runtime, its events thread, the
//!   locks and condition variable that make a handle usable from any
//!   thread.
//!
//! The one crate of the workspace with `unsafe`: raw pointers from C.
//! Each block says why it is sound (`// SAFETY:`), which clippy enforces.
#![allow(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]

mod abi;
mod api;
mod error;
mod handle;
mod track;

pub use abi::{
    hg_credential_kind, hg_event, hg_event_callback, hg_event_kind, hg_state, hg_status,
};
pub use api::*;
pub use handle::hg_session;
