//! WireGuard key text and binding policy text (`proto::WgKey`,
//! `proto::BindingPolicy`), as they arrive in JSON bodies, admin commands
//! and config files.
//!
//! Input: 1 byte choosing address families, 16 bytes of an observed
//! address, 16 of a candidate address, then the text. Besides "no panic",
//! a key has exactly one text form, a policy prints as text that parses
//! back to it, and the three places that decide whether a candidate source
//! fits an observed one under a policy agree: `BindingPolicy::admits`, the
//! network the kernel pre-filter installs (`BindingPolicy::network`), and
//! the gateway's admission table (`AdmissionTable::source_status`).

use gateway::{AdmissionTable, SourceStatus};
use proto::feed::{FeedAdmission, FeedState};
use proto::{BindingPolicy, WgKey};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};
use testkit::feed;

pub fn run(data: &[u8]) {
    let (head, text) = data.split_at(data.len().min(33));
    let text = String::from_utf8_lossy(text);
    check_key(&text);
    let Ok(policy) = text.parse::<BindingPolicy>() else {
        // The JSON form goes through the same parser.
        let json = serde_json::to_string(&*text).expect("a string serializes");
        assert!(serde_json::from_str::<BindingPolicy>(&json).is_err());
        return;
    };
    let printed = policy.to_string();
    assert_eq!(printed.parse::<BindingPolicy>().ok(), Some(policy));
    let json = serde_json::to_string(&policy).expect("a policy serializes");
    assert_eq!(
        serde_json::from_str::<BindingPolicy>(&json).ok(),
        Some(policy)
    );
    if head.len() == 33 {
        let observed = address(head[0] & 1 != 0, &head[1..17]);
        let candidate = address(head[0] & 2 != 0, &head[17..33]);
        check_sources(policy, observed, candidate);
        // The same address, and a mapped form of it, always fit.
        check_sources(policy, observed, observed);
        if let IpAddr::V4(v4) = observed {
            check_sources(policy, observed, IpAddr::V6(v4.to_ipv6_mapped()));
        }
    }
}

fn check_key(text: &str) {
    let Ok(key) = text.parse::<WgKey>() else {
        return;
    };
    // One key, one text: what parsed is what the key prints (after the
    // whitespace the parser forgives).
    assert_eq!(key.to_string(), text.trim(), "a key has one text form");
    assert_eq!(key.fingerprint().len(), 8);
    let json = serde_json::to_string(&key).expect("a key serializes");
    assert_eq!(serde_json::from_str::<WgKey>(&json).ok(), Some(key));
    // Debug output must not show the key.
    assert!(!format!("{key:?}").contains(&key.to_string()[..8]));
}

fn address(v6: bool, bytes: &[u8]) -> IpAddr {
    if v6 {
        let b: [u8; 16] = bytes.try_into().expect("16 bytes");
        IpAddr::V6(Ipv6Addr::from(b))
    } else {
        IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
    }
}

fn check_sources(policy: BindingPolicy, observed: IpAddr, candidate: IpAddr) {
    let observed = observed.to_canonical();
    let candidate_c = candidate.to_canonical();
    let admits = policy.admits(observed, candidate_c);
    if policy != BindingPolicy::FirstHandshake {
        assert_eq!(
            admits,
            policy.network(observed).contains(&candidate_c),
            "admits and the pre-filter's network disagree: {policy} {observed} {candidate_c}"
        );
    }
    // The data path's table, holding one admission for `observed`.
    let now = Instant::now();
    let server_time = time::macros::datetime!(2026-01-01 00:00 UTC);
    let state = FeedState {
        server: "fuzz".into(),
        version: 1,
        server_time,
        service_address: Ipv4Addr::new(100, 64, 0, 1),
        admissions: vec![FeedAdmission {
            binding: policy,
            expires_at: server_time + time::Duration::hours(1),
            ..feed::tunnel("a", WgKey([1; 32]), observed)
        }],
    };
    let mut table = AdmissionTable::new(Duration::from_secs(30));
    let outcome = table.apply(&state, now);
    assert!(outcome.rejected.is_empty(), "{:?}", outcome.rejected);
    let status = table.source_status(candidate);
    match policy {
        BindingPolicy::FirstHandshake => {
            // Nothing is bound before the first handshake; the window is.
            assert_eq!(status, SourceStatus::PinningWindowOpen);
            let admission = table.by_id("a").expect("installed");
            assert!(admission.admits_handshake(candidate, now));
            assert!(!admission.admits_session_packet(candidate));
        }
        _ => {
            assert_eq!(
                status == SourceStatus::Bound,
                admits,
                "the table and the policy disagree: {policy} {observed} {candidate}"
            );
            let admission = table.by_id("a").expect("installed");
            assert_eq!(admission.admits_handshake(candidate, now), admits);
            assert_eq!(admission.admits_session_packet(candidate), admits);
        }
    }
}
