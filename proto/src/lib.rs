//! Shared, inert types of hushgate.
//!
//! Everything that crosses a process boundary is defined here and nowhere
//! else: the JSON bodies of the control plane's HTTP API (`api`), the
//! gateway feed that carries the desired set of admissions (`feed`), the
//! WireGuard key encoding (`WgKey`) and the source binding policy
//! (`BindingPolicy`). This crate has no sockets, no clock and no async
//! runtime, so every other crate (and an app maker writing their own
//! client) can depend on it cheaply.
#![forbid(unsafe_code)]

pub mod api;
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
