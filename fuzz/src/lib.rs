//! The harnesses behind hushgate's fuzz targets.
//!
//! Each module takes one target's input, drives the real decoder or state
//! machine with it, and judges the outcome: a panic is a crash, and where a
//! rule of the product can be stated independently of the code under test
//! the harness keeps a reference model and panics on a violation (the
//! dispatcher's "an unadmitted source never gets a byte back", the feed's
//! "a diff gives what the whole set gives", the TCP stack's bounds). The
//! thin `fuzz_targets/*.rs` binaries only hand libFuzzer's bytes to
//! `run`; `tests/corpus.rs` replays the committed corpus through the same
//! functions on stable, and `examples/record_seeds.rs` records that
//! corpus from a real control plane and a real tunnel.
//!
//! | module | decoder under test | input |
//! | --- | --- | --- |
//! | [`dispatcher`] | `gateway::Dispatcher` as a whole, against a model of the admission rules | structured ops |
//! | [`datagram`] | datagram classification of the dispatcher | raw datagrams |
//! | [`inner_packet`] | `gateway::tunnel_rule` (over `netstack::wire`) and the netstack's packet filter | raw IP packet |
//! | [`tcp_segments`] | smoltcp's TCP socket through `netstack::Stack` | structured segments |
//! | [`feed_apply`] | `FeedMirror`, `AdmissionTable::apply` (whole and diff) | structured feed answers |
//! | [`api_json`] | every JSON body of the API and the feed | JSON text |
//! | [`access_answer`] | the shim's `validate_access` | JSON text |
//! | [`gateway_config`] | the gateway's TOML config file, service specs | TOML text |
//! | [`netlink_answers`] | the pre-filter's reading of nf_tables answers | netlink bytes |
//! | [`key_policy_text`] | WireGuard key text, binding policy text | text |
#![forbid(unsafe_code)]

pub mod access_answer;
pub mod api_json;
pub mod datagram;
pub mod dispatcher;
pub mod feed_apply;
pub mod gateway_config;
pub mod inner_packet;
pub mod key_policy_text;
pub mod netlink_answers;
pub use testkit::packet;
pub mod tcp_segments;
pub mod world;

/// Whether the structured harnesses print each step they take (set
/// `HUSHGATE_FUZZ_TRACE=1` when reading a crash).
pub fn tracing() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("HUSHGATE_FUZZ_TRACE").is_some())
}

/// What runs one input of a target.
pub type Harness = fn(&[u8]);

/// Every target: its name (the directory of its corpus under
/// `fuzz/corpus/`) and the function that runs one input.
pub const TARGETS: &[(&str, Harness)] = &[
    ("dispatcher", dispatcher::run),
    ("datagram", datagram::run),
    ("inner_packet", inner_packet::run),
    ("tcp_segments", tcp_segments::run),
    ("feed_apply", feed_apply::run),
    ("api_json", api_json::run),
    ("access_answer", access_answer::run),
    ("gateway_config", gateway_config::run),
    ("netlink_answers", netlink_answers::run),
    ("key_policy_text", key_policy_text::run),
];
