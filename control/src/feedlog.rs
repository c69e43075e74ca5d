//! The feed's memory of recent changes, so that a gateway that holds
//! version N gets only what changed since N instead of the whole set.
//!
//! Per server it keeps a bounded log of the last changes, each tagged with
//! the feed version that made it: "this admission is now X" (an upsert of
//! the whole `FeedAdmission`) or "this id is gone". The log lives in memory
//! only: a control plane that starts again knows no history and answers
//! every `after` with the whole set until new versions accumulate.
//!
//! Consistency: every change is recorded by the transaction that bumps the
//! version ([`crate::store::Db::tx_feed`] collects the changes of one
//! transaction in [`FeedChanges`]), and it is appended here after the
//! commit but before the database lock is released. So the log holds the
//! versions in commit order, and whoever reads a server's version from the
//! database afterwards finds every change up to that version here. A
//! version whose changes were not all recorded (a gap) makes the log start
//! again after it, so a forgotten path costs a whole answer, never a wrong
//! diff.

use proto::feed::FeedAdmission;
use std::collections::{HashMap, VecDeque};

/// How many changes the log keeps per server. A gateway further behind
/// than this (or one that asks after a restart) gets the whole set.
pub const CAPACITY: usize = 4096;

/// One change to a server's desired set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The admission was added or changed; this is all of it now.
    Upsert(FeedAdmission),
    /// The admission with this id left the set.
    Remove(String),
    /// The set changed in a way the log does not describe (a new gateway
    /// key removed everything): no diff can span this version.
    Reset,
}

/// The changes one transaction made: (server id, version, change).
#[derive(Debug, Default)]
pub struct FeedChanges(Vec<(i64, u64, Change)>);

impl FeedChanges {
    pub fn record(&mut self, server_id: i64, version: u64, change: Change) {
        self.0.push((server_id, version, change));
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// What changed between two versions, with each id named once.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Diff {
    pub upserts: Vec<FeedAdmission>,
    pub removed: Vec<String>,
}

#[derive(Debug, Default)]
struct ServerLog {
    /// The log describes every change of the versions in (floor, head].
    floor: u64,
    head: u64,
    entries: VecDeque<(u64, Change)>,
}

impl ServerLog {
    fn starting_before(version: u64) -> ServerLog {
        let start = version.saturating_sub(1);
        ServerLog {
            floor: start,
            head: start,
            entries: VecDeque::new(),
        }
    }

    fn push(&mut self, version: u64, change: Change, capacity: usize) {
        if version != self.head && version != self.head + 1 {
            // A version was bumped without its change being recorded (or
            // the database went back in time): what came before cannot be
            // diffed any more.
            *self = ServerLog::starting_before(version);
        }
        self.head = version;
        if change == Change::Reset {
            self.entries.clear();
            self.floor = version;
            return;
        }
        self.entries.push_back((version, change));
        while self.entries.len() > capacity {
            // Drop whole versions: a version half remembered is not one.
            let Some(&(oldest, _)) = self.entries.front() else {
                break;
            };
            while self.entries.front().is_some_and(|(v, _)| *v == oldest) {
                self.entries.pop_front();
            }
            self.floor = oldest;
        }
    }

    fn diff(&self, after: u64, current: u64) -> Option<Diff> {
        if after < self.floor || after >= current || self.head < current {
            return None;
        }
        // The latest change of each id wins; keep the order of those
        // latest changes (new admissions come out oldest first).
        let mut last: HashMap<&str, (usize, &Change)> = HashMap::new();
        let start = self.entries.partition_point(|(v, _)| *v <= after);
        for (i, (v, change)) in self.entries.iter().enumerate().skip(start) {
            if *v > current {
                break;
            }
            let id = match change {
                Change::Upsert(a) => a.id.as_str(),
                Change::Remove(id) => id.as_str(),
                Change::Reset => return None,
            };
            last.insert(id, (i, change));
        }
        let mut latest: Vec<(usize, &Change)> = last.into_values().collect();
        latest.sort_unstable_by_key(|&(i, _)| i);
        let mut diff = Diff::default();
        for (_, change) in latest {
            match change {
                Change::Upsert(a) => diff.upserts.push(a.clone()),
                Change::Remove(id) => diff.removed.push(id.clone()),
                Change::Reset => return None,
            }
        }
        Some(diff)
    }
}

/// The change logs of all servers.
#[derive(Debug)]
pub struct FeedLog {
    servers: HashMap<i64, ServerLog>,
    capacity: usize,
}

impl Default for FeedLog {
    fn default() -> Self {
        FeedLog::with_capacity(CAPACITY)
    }
}

impl FeedLog {
    pub fn with_capacity(capacity: usize) -> FeedLog {
        FeedLog {
            servers: HashMap::new(),
            capacity: capacity.max(1),
        }
    }

    /// Appends the changes of one committed transaction, in order.
    pub fn append(&mut self, changes: FeedChanges) {
        for (server, version, change) in changes.0 {
            self.servers
                .entry(server)
                .or_insert_with(|| ServerLog::starting_before(version))
                .push(version, change, self.capacity);
        }
    }

    /// What changed on `server` from version `after` to `current`, if the
    /// log remembers every one of those versions. `None` when `after` is
    /// unknown, too old or not behind `current`: answer with the whole set.
    pub fn diff(&self, server: i64, after: u64, current: u64) -> Option<Diff> {
        self.servers.get(&server)?.diff(after, current)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::api::AccessMode;
    use proto::{BindingPolicy, WgKey};

    fn adm(id: &str, minute: i64) -> FeedAdmission {
        FeedAdmission {
            id: id.into(),
            mode: AccessMode::Tunnel,
            client_public_key: Some(WgKey([1; 32])),
            preshared_key: None,
            source: "203.0.113.7".parse().unwrap(),
            binding: BindingPolicy::Exact,
            client_address: Some("100.64.0.2".parse().unwrap()),
            services: vec!["plex".into()],
            expires_at: time::macros::datetime!(2026-11-25 20:00 UTC)
                + time::Duration::minutes(minute),
        }
    }

    fn one(server: i64, version: u64, change: Change) -> FeedChanges {
        let mut c = FeedChanges::default();
        c.record(server, version, change);
        c
    }

    #[test]
    fn diffs_name_each_id_once_with_its_latest_change() {
        let mut log = FeedLog::default();
        log.append(one(1, 5, Change::Upsert(adm("a", 1))));
        log.append(one(1, 6, Change::Upsert(adm("b", 1))));
        log.append(one(1, 7, Change::Upsert(adm("a", 2))));
        let mut c = FeedChanges::default();
        c.record(1, 8, Change::Remove("b".into()));
        c.record(1, 8, Change::Upsert(adm("c", 1)));
        log.append(c);

        // The log starts just before its first version.
        assert_eq!(log.diff(1, 3, 8), None);
        let d = log.diff(1, 4, 8).unwrap();
        assert_eq!(d.upserts, vec![adm("a", 2), adm("c", 1)]);
        assert_eq!(d.removed, vec!["b".to_string()]);
        let d = log.diff(1, 7, 8).unwrap();
        assert_eq!(d.upserts, vec![adm("c", 1)]);
        assert_eq!(d.removed, vec!["b".to_string()]);
        // Only up to the version the caller read.
        let d = log.diff(1, 5, 6).unwrap();
        assert_eq!(d.upserts, vec![adm("b", 1)]);
        // Not behind, ahead, or a version the log has not seen yet.
        assert_eq!(log.diff(1, 8, 8), None);
        assert_eq!(log.diff(1, 9, 8), None);
        assert_eq!(log.diff(1, 7, 9), None);
        // Another server, never seen.
        assert_eq!(log.diff(2, 7, 8), None);
    }

    #[test]
    fn gaps_resets_and_capacity_forget_the_past() {
        let mut log = FeedLog::with_capacity(3);
        log.append(one(1, 2, Change::Upsert(adm("a", 1))));
        log.append(one(1, 3, Change::Upsert(adm("b", 1))));
        // Version 4 was never recorded.
        log.append(one(1, 5, Change::Remove("a".into())));
        assert_eq!(log.diff(1, 2, 5), None);
        assert_eq!(log.diff(1, 3, 5), None);
        assert_eq!(log.diff(1, 4, 5).unwrap().removed, vec!["a".to_string()]);

        log.append(one(1, 6, Change::Reset));
        assert_eq!(log.diff(1, 5, 6), None);
        log.append(one(1, 7, Change::Upsert(adm("c", 1))));
        assert_eq!(log.diff(1, 6, 7).unwrap().upserts, vec![adm("c", 1)]);

        for v in 8..=10 {
            log.append(one(1, v, Change::Remove(format!("x{v}"))));
        }
        // Capacity 3: versions 8, 9, 10 remain.
        assert_eq!(log.diff(1, 6, 10), None);
        assert_eq!(log.diff(1, 7, 10).unwrap().removed.len(), 3);
    }
}
