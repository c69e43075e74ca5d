//! Every JSON body that crosses a process boundary (`proto::api`,
//! `proto::feed`): requests the control plane reads, answers the shim,
//! the CLI and the gateway read, and the feed.
//!
//! Input: one JSON text, tried as every type. A value that parses must
//! serialize, and what it serializes to must parse back to the same
//! serialization (so nothing the control plane accepts becomes something
//! it cannot store or send on). A feed answer that parses is also taken
//! in the way the gateway takes it in (`DesiredSet`, then the admission
//! table), and the table must stay consistent.

use gateway::feed::DesiredSet;
use gateway::AdmissionTable;
use proto::api::*;
use proto::feed::*;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::time::{Duration, Instant};

pub fn run(data: &[u8]) {
    round_trip::<LoginRequest>(data);
    round_trip::<LoginResponse>(data);
    round_trip::<AccessRequest>(data);
    round_trip::<AccessResponse>(data);
    round_trip::<DirectAccessResponse>(data);
    round_trip::<ErrorBody>(data);
    round_trip::<CreateUser>(data);
    round_trip::<UserInfo>(data);
    round_trip::<CreateServer>(data);
    round_trip::<CreatedServer>(data);
    round_trip::<ServerInfo>(data);
    round_trip::<CreateGrant>(data);
    round_trip::<GrantInfo>(data);
    round_trip::<AdmissionInfo>(data);
    round_trip::<AuditEntry>(data);
    round_trip::<RenewResponse>(data);
    round_trip::<Vec<UserInfo>>(data);
    round_trip::<Vec<AdmissionInfo>>(data);
    round_trip::<GatewayReport>(data);
    round_trip::<EnrollRequest>(data);
    round_trip::<EnrollResponse>(data);
    round_trip::<FeedAck>(data);
    round_trip::<FeedAdmission>(data);
    if let Some(state) = round_trip::<FeedState>(data) {
        let mut table = AdmissionTable::new(Duration::from_secs(30));
        table.apply(&state, Instant::now());
        crate::feed_apply::check_table(&table);
    }
    if let Some(update) = round_trip::<FeedUpdate>(data) {
        take_in(update);
    }
}

/// Parses `data` as `T`; if it parses, checks that it round-trips.
fn round_trip<T: Serialize + DeserializeOwned + std::fmt::Debug>(data: &[u8]) -> Option<T> {
    let value: T = serde_json::from_slice(data).ok()?;
    let _ = format!("{value:?}");
    let first = serde_json::to_vec(&value).unwrap_or_else(|e| {
        panic!(
            "{} parsed but does not serialize: {e}",
            std::any::type_name::<T>()
        )
    });
    let again: T = serde_json::from_slice(&first).unwrap_or_else(|e| {
        panic!(
            "{} serialized to text it cannot parse: {e}",
            std::any::type_name::<T>()
        )
    });
    let second = serde_json::to_vec(&again).expect("serializes again");
    assert_eq!(
        first,
        second,
        "{} does not round-trip",
        std::any::type_name::<T>()
    );
    Some(value)
}

/// What the gateway's feed follower does with an answer.
fn take_in(update: FeedUpdate) {
    let now = Instant::now();
    let mut desired = DesiredSet::new();
    let mut table = AdmissionTable::new(Duration::from_secs(30));
    match desired.absorb_update(update, now) {
        Ok(change) => {
            table.apply(&change, now);
        }
        // A diff on top of nothing: refused, and the whole set is asked for.
        Err(_) => assert_eq!(desired.next_after(now), None),
    }
    crate::feed_apply::check_table(&table);
}
