//! Shared, inert types of hushgate.
//!
//! Everything that crosses a process boundary is defined here and nowhere
//! else: the JSON bodies of the control plane's HTTP API (`api`), the
//! gateway feed that carries the desired set of admissions (`feed`), the
//! WireGuard key encoding (`WgKey`), the source binding policy
//! (`BindingPolicy`) and the retry schedule every retry loop shares
//! (`backoff`). This crate has no sockets, no clock and no async
//! runtime, so every other crate (and an app maker writing their own
//! client) can depend on it cheaply.
#![forbid(unsafe_code)]

pub mod api;
pub mod backoff;
pub mod feed;
mod key;
mod policy;
pub mod reach;

pub use key::{KeyError, WgKey};
pub use policy::{BindingPolicy, PolicyError, DEFAULT_PREFIX_V6, MIN_PREFIX_V4, MIN_PREFIX_V6};

/// Serde helpers for RFC 3339 timestamps, re-exported so every crate
/// formats time the same way.
pub use time::serde::rfc3339;
pub use time::OffsetDateTime;

/// Whether `c` may appear in a name (user, server, service): letters,
/// digits, `-`, `_`, `.` and `@`. Names reach pages, logs and clients'
/// WireGuard configurations, where anything else (a newline above all)
/// could change their meaning.
pub fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-_.@".contains(c)
}

/// A name: 1-64 characters, each [`is_name_char`].
pub fn is_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.chars().all(is_name_char)
}
