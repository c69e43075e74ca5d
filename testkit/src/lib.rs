//! hushgate's test kit, for its own tests only (a dev-dependency, never
//! published): what many crates' tests need to start the real thing.
//!
//! - [`feed`]: builders of the feed's admissions, whole sets and diffs,
//!   with nothing but `proto` behind them (always built; the gateway's
//!   unit tests and the fuzz harnesses take the kit with
//!   `default-features = false` for only this).
//! - [`packet`]: IPv4/TCP packets built by hand with correct checksums,
//!   and parsed back with both checksums checked (always built).
//! - [`media`]: the stand-in media server (known bytes, `Range`,
//!   pacing, cut connections) and a player-like HTTP client.
//! - [`world`]: control plane + operator + user + server + grant +
//!   enrolled gateway on loopback, as [`World::start`] builds it; the
//!   pieces (accounts, a gateway's configuration, its enrollment report)
//!   for tests that build their own.
//! - [`nat`]: a home router whose public address a test can change.
//!
//! Feature `world` (default) brings all but [`feed`].
#![forbid(unsafe_code)]

pub mod feed;
#[cfg(feature = "world")]
pub mod media;
#[cfg(feature = "world")]
pub mod nat;
pub mod packet;
#[cfg(feature = "world")]
pub mod world;

#[cfg(feature = "world")]
pub use media::{
    get, get_count, get_on, paced_download, sha256, test_file, Reading, Upstream, FILE_LEN,
};
#[cfg(feature = "world")]
pub use nat::Nat;
#[cfg(feature = "world")]
pub use world::{Options, World, OWNER, PASSWORD, SERVER, USER};
