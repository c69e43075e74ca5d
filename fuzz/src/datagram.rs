//! Datagram classification and dispatch on raw bytes: a fresh dispatcher
//! holding three admissions (client 0 bound exactly to 203.0.113.7,
//! client 1 to the /64 of 2001:db8::7, client 2 first-handshake with its
//! window open) takes in a few datagrams.
//!
//! Input: frames of one source byte (an index into `world::SOURCES`), a
//! little-endian length (2 bytes) and that many bytes of datagram; a short
//! tail is one more datagram from the first source. Seeds are real
//! datagrams, so real initiations (made with the harness's fixed client
//! keys) are accepted and answered.
//!
//! Checked: a source nothing binds (with no initiation-shaped datagram
//! while a window is open) is dropped as `unknown_source` with nothing
//! sent; every answer goes back to the datagram's own source, which a
//! live admission binds; nothing reaches the inner stack (no session can
//! exist without a client's ephemeral keys).

use crate::world::{self, SERVICE_ADDRESS};
use gateway::{Dispatcher, DispatcherConfig, DropReason, Outbox, Output, Pinning, Verdict};
use netstack::wire::wireguard::looks_like_initiation;
use proto::feed::{FeedAdmission, FeedState};
use proto::{BindingPolicy, WgKey};
use std::net::IpAddr;
use std::time::Instant;
use testkit::feed;

const MAX_DATAGRAMS: usize = 16;

/// The admissions every input meets: (source, binding) for clients 0-2.
fn admissions() -> [(&'static str, BindingPolicy); 3] {
    [
        ("203.0.113.7", BindingPolicy::Exact),
        ("2001:db8::7", BindingPolicy::Prefix { v4: 24, v6: 64 }),
        ("192.0.2.1", BindingPolicy::FirstHandshake),
    ]
}

/// Whether an admission of [`admissions`] binds `ip` (written out again).
fn bound(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4.octets() == [203, 0, 113, 7],
        IpAddr::V6(v6) => v6.segments()[..4] == [0x2001, 0xdb8, 0, 0],
    }
}

/// Whether client 2's first-handshake admission is pinned to `ip`.
fn pinned(d: &Dispatcher, ip: IpAddr) -> bool {
    d.admissions()
        .by_id("c2")
        .is_some_and(|a| a.pinning() == Pinning::Pinned(ip.to_canonical()))
}

pub fn run(data: &[u8]) {
    let now = Instant::now();
    let mut d = Dispatcher::new(
        world::gateway_secret(),
        DispatcherConfig::new(world::SERVICES),
        now,
    );
    let server_time = time::macros::datetime!(2026-01-01 00:00 UTC);
    let state = FeedState {
        server: "fuzz".into(),
        version: 1,
        server_time,
        service_address: SERVICE_ADDRESS,
        admissions: admissions()
            .iter()
            .enumerate()
            .map(|(k, (source, binding))| FeedAdmission {
                preshared_key: Some(WgKey(world::client_psk(k))),
                binding: *binding,
                client_address: Some(world::client_address(k)),
                expires_at: server_time + time::Duration::hours(1),
                ..feed::tunnel(&format!("c{k}"), world::keys().clients[k], feed::ip(source))
            })
            .collect(),
    };
    let outcome = d.apply(&state, now);
    assert!(outcome.rejected.is_empty());
    let mut out = Outbox::new();
    let mut rest = data;
    for _ in 0..MAX_DATAGRAMS {
        if rest.is_empty() {
            break;
        }
        let (src, datagram) = if rest.len() >= 3 {
            let len = usize::from(u16::from_le_bytes([rest[1], rest[2]])).min(rest.len() - 3);
            let frame = (rest[0], &rest[3..3 + len]);
            rest = &rest[3 + len..];
            frame
        } else {
            let frame = (0, rest);
            rest = &[];
            frame
        };
        let src = world::source_socket(src, src);
        let shaped = looks_like_initiation(datagram);
        // Client 2's window is open for the whole input, until a real
        // initiation of client 2 pins a source.
        let pinned_before = pinned(&d, src.ip());
        let verdict = d.handle_datagram(src, datagram, now, &mut out);
        if !bound(src.ip()) && !pinned_before && !shaped {
            assert_eq!(verdict, Verdict::Dropped(DropReason::UnknownSource));
        }
        for o in out.iter() {
            match o {
                Output::Transmit { dst, .. } => {
                    assert_eq!(dst, src, "an answer went elsewhere than the source");
                    assert!(
                        bound(src.ip()) || pinned(&d, src.ip()),
                        "{src}, which nothing binds, got an answer (rule 1)"
                    );
                }
                Output::Deliver { .. } => panic!("a packet reached the stack without a session"),
            }
        }
        out.clear();
        while d.poll_event().is_some() {}
    }
    crate::feed_apply::check_table(d.admissions());
}
