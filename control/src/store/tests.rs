//! The store's own tests, on SQLite (the API tests in `control/tests`
//! run on both engines).

use super::*;
use proto::api::AccessMode;
use proto::{BindingPolicy, WgKey};
use std::sync::atomic::{AtomicU64, Ordering};
use time::OffsetDateTime;

fn open() -> (tempfile::TempDir, Db) {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(
        &Database::Sqlite(dir.path().join("control.sqlite")),
        Arc::default(),
    )
    .unwrap();
    (dir, db)
}

fn new_admission(n: u32, user_id: i64, server_id: i64) -> NewAdmission {
    let mut key = [0u8; 32];
    key[..4].copy_from_slice(&n.to_le_bytes());
    let t = OffsetDateTime::now_utc();
    NewAdmission {
        id: format!("adm_{n}"),
        user_id,
        server_id,
        mode: AccessMode::Tunnel,
        client_key: Some(WgKey(key)),
        psk: None,
        source: "192.0.2.1".parse().unwrap(),
        binding: BindingPolicy::Exact,
        services: vec!["plex".into()],
        created_at: t,
        expires_at: t + time::Duration::hours(1),
        pending_until: t + time::Duration::seconds(20),
    }
}

fn world(db: &Db) -> (i64, i64) {
    db.tx_blocking(|tx| {
        let now = OffsetDateTime::now_utc();
        let u = create_user(tx, "alice", "x", false, now)?;
        let s = create_server(tx, "den", BindingPolicy::Exact, 3600, 100_000, now)?;
        Ok((u.id, s.id))
    })
    .unwrap()
}

/// SQLite VM instructions that one admission's insertion runs
/// (allocation of its tunnel address included): a count of work that
/// does not depend on how fast or busy the machine is.
fn steps_of_one_insert(db: &Db, n: u32, user: i64, server: i64) -> (u64, u32) {
    let steps = Arc::new(AtomicU64::new(0));
    let s = steps.clone();
    let sqlite = db.sqlite().unwrap();
    sqlite.with_connection(|c| {
        c.progress_handler(
            1,
            Some(move || {
                s.fetch_add(1, Ordering::Relaxed);
                false
            }),
        )
    });
    let index = db
        .tx_blocking(|tx| {
            insert_admission(tx, &new_admission(n, user, server))
                .map(|(a, _)| a.tunnel_index.unwrap())
        })
        .unwrap();
    sqlite.with_connection(|c| c.progress_handler(0, None::<fn() -> bool>));
    (steps.load(Ordering::Relaxed), index)
}

/// Finding a free tunnel address used to read every admission of the
/// server; now it is two index lookups, so admission number 20,001
/// costs what number 11 did.
#[test]
fn a_tunnel_address_costs_the_same_at_20000_admissions() {
    let (_dir, db) = open();
    let (user, server) = world(&db);
    db.tx_blocking(|tx| {
        for n in 0..10 {
            insert_admission(tx, &new_admission(n, user, server))?;
        }
        Ok(())
    })
    .unwrap();
    let (few, index) = steps_of_one_insert(&db, 10, user, server);
    assert_eq!(index, SERVICE_INDEX + 11);
    db.tx_blocking(|tx| {
        for n in 11..20_000 {
            insert_admission(tx, &new_admission(n, user, server))?;
        }
        Ok(())
    })
    .unwrap();
    let (many, index) = steps_of_one_insert(&db, 20_000, user, server);
    assert_eq!(index, SERVICE_INDEX + 20_001);
    println!("VM steps for one admission: {few} at 10 admissions, {many} at 20,000");
    assert!(
        many < few * 2,
        "one admission took {many} SQLite steps at 20,000 admissions and {few} at 10"
    );

    // Released addresses are reused lowest first, at the same cost.
    db.tx_blocking(|tx| {
        for id in ["adm_15000", "adm_7", "adm_900"] {
            let a = admission(tx, id)?.unwrap();
            delete_admission(tx, &a)?;
        }
        Ok(())
    })
    .unwrap();
    let (reuse, index) = steps_of_one_insert(&db, 30_001, user, server);
    assert_eq!(index, SERVICE_INDEX + 8);
    assert!(reuse < few * 2, "{reuse} steps to reuse an address");
    let (_, index) = steps_of_one_insert(&db, 30_002, user, server);
    assert_eq!(index, SERVICE_INDEX + 901);
}

#[test]
fn tunnel_addresses_run_out_with_a_clear_error_and_come_back() {
    let (_dir, db) = open();
    let (user, server) = world(&db);
    db.tx_blocking(|tx| {
        tx.exec(
            "UPDATE servers SET next_tunnel_index = $1",
            crate::args![MAX_TUNNEL_INDEX],
        )?;
        Ok(())
    })
    .unwrap();
    let last = db
        .tx_blocking(|tx| insert_admission(tx, &new_admission(1, user, server)))
        .unwrap()
        .0;
    assert_eq!(last.tunnel_index, Some(MAX_TUNNEL_INDEX));
    let e = db
        .tx_blocking(|tx| insert_admission(tx, &new_admission(2, user, server)))
        .unwrap_err();
    assert!(matches!(e, StoreError::Exhausted(_)), "{e}");
    // An expired admission gives its address back.
    db.tx_blocking(|tx| {
        sweep(
            tx,
            OffsetDateTime::now_utc() + time::Duration::hours(2),
            false,
        )
    })
    .unwrap();
    let again = db
        .tx_blocking(|tx| insert_admission(tx, &new_admission(3, user, server)))
        .unwrap()
        .0;
    assert_eq!(again.tunnel_index, Some(MAX_TUNNEL_INDEX));
}

/// A database written by an older control plane (schema version 0: no
/// free list, enrollment hashes on the server row, no feed history) is
/// brought up to date: addresses in use stay, the gaps below them are
/// free, an unused enrollment token still works, and the feed's history
/// starts at the current version.
#[test]
fn an_older_database_is_migrated() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("control.sqlite");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(sqlite::SCHEMA_V1).unwrap();
        conn.execute_batch(
            "INSERT INTO users(id, username, pw_hash, admin, created_at) VALUES (1, 'alice', 'x', 0, 0);
             INSERT INTO servers(id, name, binding, ttl_secs, enroll_hash, created_at, version)
                 VALUES (1, 'den', 'exact', 3600, x'0102', 0, 7);
             INSERT INTO admissions(id, user_id, server_id, mode, source, binding, tunnel_index,
                 services, state, created_at, expires_at)
                 VALUES ('a', 1, 1, 'tunnel', '192.0.2.1', 'exact', 2, '[]', 'active', 0, 99999999999999),
                        ('b', 1, 1, 'tunnel', '192.0.2.1', 'exact', 5, '[]', 'active', 0, 99999999999999);",
        )
        .unwrap();
    }
    let db = Db::open(&Database::Sqlite(path.clone()), Arc::default()).unwrap();
    // No history before the migration: a diff from an older version is
    // the whole set.
    let old = db.tx_blocking(|tx| feed_since(tx, 1, Some(6))).unwrap();
    assert!(
        matches!(old, FeedAnswer::Whole(_, ref a) if a.len() == 2),
        "{old:?}"
    );
    let got: Vec<u32> = (0..4)
        .map(|n| {
            db.tx_blocking(|tx| insert_admission(tx, &new_admission(n, 1, 1)))
                .unwrap()
                .0
                .tunnel_index
                .unwrap()
        })
        .collect();
    assert_eq!(got, vec![3, 4, 6, 7]);
    // From the migrated version on, diffs.
    let new = db.tx_blocking(|tx| feed_since(tx, 1, Some(7))).unwrap();
    assert!(
        matches!(new, FeedAnswer::Diff { ref upserts, .. } if upserts.len() == 4),
        "{new:?}"
    );
    let enrolled = db
        .tx_blocking(|tx| enroll(tx, &[1, 2], b"cred", OffsetDateTime::now_utc()))
        .unwrap();
    assert!(matches!(
        enrolled,
        Enrollment::Enrolled {
            replaced: false,
            ..
        }
    ));
    // Opening it again changes nothing.
    drop(db);
    let db = Db::open(&Database::Sqlite(path.clone()), Arc::default()).unwrap();
    let server = db.tx_blocking(|tx| server_named(tx, "den")).unwrap();
    assert_eq!(
        server.max_admissions_per_user,
        DEFAULT_MAX_ADMISSIONS_PER_USER
    );
    assert!(server.enrolled);
}

/// A database a newer hushgate wrote is refused, and left as it was.
#[test]
fn a_newer_database_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("control.sqlite");
    drop(Db::open(&Database::Sqlite(path.clone()), Arc::default()).unwrap());
    let future = sqlite::SCHEMA_VERSION + 1;
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", future).unwrap();
    }
    let before = std::fs::read(&path).unwrap();
    let e = Db::open(&Database::Sqlite(path.clone()), Arc::default()).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains(&format!("schema version {future}")), "{msg}");
    assert!(msg.contains("newer"), "{msg}");
    assert_eq!(std::fs::read(&path).unwrap(), before);
}

#[test]
fn removed_server_ids_are_never_reused() {
    let (_dir, db) = open();
    let (_, first) = world(&db);
    let second = db
        .tx_blocking(|tx| {
            delete_server(tx, first)?;
            let now = OffsetDateTime::now_utc();
            Ok(create_server(tx, "den", BindingPolicy::Exact, 3600, 8, now)?.id)
        })
        .unwrap();
    assert!(second > first);
}

/// A pending admission waits for its client only until its pending time
/// has passed; then any sweep removes it, and only then.
#[test]
fn abandoned_pending_admissions_are_swept_after_their_deadline() {
    let (_dir, db) = open();
    let (user, server) = world(&db);
    let new = new_admission(1, user, server);
    let deadline = new.pending_until;
    db.tx_blocking(|tx| insert_admission(tx, &new)).unwrap();
    let early = db
        .tx_blocking(|tx| sweep(tx, deadline - time::Duration::seconds(1), false))
        .unwrap();
    assert!(early.0.is_empty());
    let next = db.tx_blocking(next_deadline).unwrap().unwrap();
    assert_eq!(millis(next), millis(deadline));
    let (gone, versions) = db.tx_blocking(|tx| sweep(tx, deadline, false)).unwrap();
    assert_eq!(gone.len(), 1);
    assert_eq!(gone[0].1, Swept::Abandoned);
    assert_eq!(versions.len(), 1);
    // An active one stays however late it is (until its expiry).
    let new = new_admission(2, user, server);
    db.tx_blocking(|tx| {
        insert_admission(tx, &new)?;
        activate(tx, &new.id)
    })
    .unwrap();
    let (gone, _) = db
        .tx_blocking(|tx| sweep(tx, deadline + time::Duration::minutes(5), false))
        .unwrap();
    assert!(gone.is_empty());
}

/// The same key asked for again by the same user replaces its earlier
/// admission in one version; by another user it is refused.
#[test]
fn a_retry_with_the_same_key_replaces_the_admission() {
    let (_dir, db) = open();
    let (user, server) = world(&db);
    let first = new_admission(1, user, server);
    let (a, v1) = db.tx_blocking(|tx| insert_admission(tx, &first)).unwrap();
    let again = NewAdmission {
        id: "adm_again".into(),
        ..first.clone()
    };
    let (b, v2) = db.tx_blocking(|tx| insert_admission(tx, &again)).unwrap();
    assert_eq!(v2, v1 + 1);
    assert_eq!(b.tunnel_index, a.tunnel_index);
    let diff = db
        .tx_blocking(|tx| feed_since(tx, server, Some(v1)))
        .unwrap();
    let FeedAnswer::Diff {
        upserts, removed, ..
    } = diff
    else {
        panic!("a diff")
    };
    assert_eq!(
        upserts.iter().map(|a| a.id.as_str()).collect::<Vec<_>>(),
        ["adm_again"]
    );
    assert_eq!(removed, vec![a.id]);
    let other = db
        .tx_blocking(|tx| {
            let u = create_user(tx, "mallory", "x", false, OffsetDateTime::now_utc())?;
            insert_admission(
                tx,
                &NewAdmission {
                    id: "adm_m".into(),
                    user_id: u.id,
                    ..first.clone()
                },
            )
        })
        .unwrap_err();
    assert!(matches!(other, StoreError::Conflict(_)), "{other}");
}

/// The feed's history forgets what lies more than `FEED_HISTORY`
/// versions back: a diff from there is the whole set, from later a diff.
#[test]
fn the_feed_history_is_bounded() {
    let (_dir, db) = open();
    let (user, server) = world(&db);
    let (a, v0) = db
        .tx_blocking(|tx| insert_admission(tx, &new_admission(1, user, server)))
        .unwrap();
    let last = db
        .tx_blocking(|tx| {
            let mut v = v0;
            for _ in 0..FEED_HISTORY + 70 {
                v = set_expiry(tx, &a, OffsetDateTime::now_utc() + time::Duration::hours(1))?;
            }
            Ok(v)
        })
        .unwrap();
    let old = db
        .tx_blocking(|tx| feed_since(tx, server, Some(v0)))
        .unwrap();
    assert!(matches!(old, FeedAnswer::Whole(..)), "{old:?}");
    let recent = db
        .tx_blocking(|tx| feed_since(tx, server, Some(last - 10)))
        .unwrap();
    assert!(matches!(recent, FeedAnswer::Diff { ref upserts, .. } if upserts.len() == 1));
    let rows = db
        .tx_blocking(|tx| tx.query_one("SELECT COUNT(*) FROM feed_touch", crate::args![]))
        .unwrap()
        .i64(0)
        .unwrap();
    assert_eq!(rows, 1, "one row per admission, whatever its history");
}

/// The limiter's logic gives the same answers with its counts in the
/// database as in memory (replicas share the database's).
#[test]
fn the_login_limiter_in_the_database_is_the_one_in_memory() {
    let (_dir, db) = open();
    let l = crate::auth::LoginLimiter::new(3);
    let t = 1_800_000_000_000i64;
    let a: std::net::IpAddr = "192.0.2.1".parse().unwrap();
    let b: std::net::IpAddr = "192.0.2.2".parse().unwrap();
    let check = |src, user: &'static str, at: i64| {
        db.tx_blocking(|tx| l.check_in(tx, src, user, at)).unwrap()
    };
    for _ in 0..3 {
        assert!(check(a, "alice", t).is_ok());
    }
    assert!(check(a, "bob", t).is_err());
    assert!(check(b, "bob", t).is_ok());
    for _ in 0..3 {
        db.tx_blocking(|tx| l.failed_in(tx, b, "Alice", t)).unwrap();
    }
    let home: std::net::IpAddr = "198.51.100.9".parse().unwrap();
    assert!(check(home, "alice", t).is_ok());
    assert!(check(b, "alice", t + 1).is_err(), "b failed for alice");
    assert!(check(a, "alice", t + 60_000).is_ok());
    let gone = db
        .tx_blocking(|tx| sweep_login_limits(tx, t + 3_600_000, 60_000, 900_000))
        .unwrap();
    assert!(gone > 0);
}

/// Queries that select more after the server's columns read them at
/// `SERVER_COLS_COUNT`: it must count every column named.
#[test]
fn the_server_column_count_matches_the_columns() {
    assert_eq!(
        super::queries::SERVER_COLS.split(',').count(),
        super::queries::SERVER_COLS_COUNT
    );
}
