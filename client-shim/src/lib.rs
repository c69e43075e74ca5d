//! The hushgate client shim: what a player app embeds (and what
//! `hushgate connect` runs) to reach a media server behind a hushgate
//! gateway.
//!
//! [`Session::connect`] logs in to the control plane, makes an ephemeral
//! X25519 key pair (the private half never leaves the process, is never
//! logged or written), asks for access to one server with the public half
//! ([`access_answer`] checks the answer before anything uses it), brings up a
//! WireGuard tunnel to the gateway and opens a local TCP port that
//! behaves like the media server. The app needs to know nothing about
//! WireGuard: it points the player at [`Session::local_addr`] and may
//! watch [`Session::events`].
//!
//! Two halves, joined by channels:
//!
//! - the **data path** (`datapath`): one dedicated thread owning the mio
//!   poll, the UDP socket, boringtun's `Tunn` (inside `peer`), the
//!   user-space TCP stack (`netstack::Stack` at the client's tunnel
//!   address) and the splice to local connections. Event-driven, batched,
//!   lock-free, with batched UDP I/O (`netstack::UdpIo`: recvmmsg/GRO,
//!   GSO); it reports handshakes, silences of the gateway and
//!   connections the gateway reset.
//! - the **supervisor** (`session`): a tokio task that renews the
//!   admission before it expires ([`renewal`]), asks for a new admission
//!   with a new key when the path is lost (backoff), probes for
//!   revocation when the gateway falls silent or resets connections (as
//!   it does to every connection of a peer it removes), and ends the
//!   session with a clear [`ShimError`]/[`EndReason`] when access is
//!   gone.
#![forbid(unsafe_code)]

pub mod access_answer;
mod control_api;
mod datapath;
mod error;
pub mod path_monitor;
mod peer;
pub mod renewal;
mod session;

#[cfg(test)]
mod tests;

pub use access_answer::{AnswerError, TunnelParams};
pub use control_api::{CodeNotice, CodePrompt, CodeStep, Credentials, DeviceIdentity};
pub use control_client::Trust;
pub use error::{ErrorKind, ShimError};
pub use session::{EndReason, Session, SessionEvent, SessionInfo, ShimConfig, WaitingNotice};
