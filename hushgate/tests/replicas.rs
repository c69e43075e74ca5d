//! `hushgate control` on PostgreSQL as real processes: what `--database`
//! refuses, and three replicas sharing one database, with a real gateway
//! following the feed on one replica while clients are answered by the
//! others, replicas killed with SIGKILL, and clients and the gateway
//! moving to another replica by themselves.
//!
//! The PostgreSQL server is the one the control plane's own tests start
//! (initdb in a temporary folder, a Unix socket, stopped when this test
//! binary ends): `control/tests/support/pg.rs`.

// The control plane's test support (its PostgreSQL server, `seed`)
// names the control crate as its own tests do.
pub extern crate control as hushgate_control;

#[path = "../../control/tests/support/mod.rs"]
mod control_support;
mod support;

use control_client::{ControlClient, Trust};
use control_support::{pg, seed};
use proto::WgKey;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use support::{hushgate, run_to_end, write_file_mode as write_private, Running as Proc, PATIENCE};

/// Starts `hushgate control` with `database` and `extra` flags; it must
/// refuse to start. Returns what it said.
fn refused_to_start(state: &Path, database: &str, extra: &[&str]) -> String {
    let out = run_to_end(
        hushgate()
            .args(["control", "--listen", "127.0.0.1:0", "--state"])
            .arg(state)
            .args(["--database", database])
            .args(extra),
    );
    assert!(!out.status.success(), "it should have refused to start");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn the_database_flags_refuse_what_they_cannot_use_with_a_clear_message() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");

    // A password on the command line: refused before anything connects,
    // and the message does not repeat it.
    let e = refused_to_start(
        &state,
        "postgres://hushgate:hunter2-in-argv@127.0.0.1:1/hushgate",
        &[],
    );
    assert!(e.contains("holds a password"), "{e}");
    assert!(e.contains("HUSHGATE_DATABASE"), "{e}");
    assert!(!e.contains("hunter2"), "{e}");

    // A password file others can read.
    let pw = tmp.path().join("pw");
    write_private(&pw, "secret\n", 0o644);
    let e = refused_to_start(
        &state,
        "postgres://hushgate@127.0.0.1:1/hushgate",
        &["--database-password-file", pw.to_str().unwrap()],
    );
    assert!(e.contains("can be read by other users"), "{e}");

    // Nothing listens there: the database is named, the reason given.
    let nowhere = tmp.path().join("no-server-here");
    let e = refused_to_start(
        &state,
        &format!(
            "host={} port=5432 user=hushgate dbname=hushgate",
            nowhere.display()
        ),
        &[],
    );
    assert!(
        e.contains(&format!(
            "cannot open the PostgreSQL database 'hushgate' as 'hushgate' on {}/.s.PGSQL.5432",
            nowhere.display()
        )),
        "{e}"
    );
    assert!(e.contains("No such file or directory"), "{e}");

    // A database a newer hushgate migrated: refused, and left as it was.
    let server = pg::server();
    let db = server.fresh_database_name();
    server.sql(
        &db,
        "CREATE TABLE hushgate_schema (version BIGINT NOT NULL); \
         INSERT INTO hushgate_schema VALUES (999)",
    );
    let e = refused_to_start(&state, &server.url_text(&db), &[]);
    assert!(
        e.contains("schema version 999, newer than this hushgate knows"),
        "{e}"
    );
    // No table of this version's schema was made.
    server.sql(
        &db,
        "DO $$ BEGIN IF EXISTS (SELECT 1 FROM information_schema.tables \
         WHERE table_name = 'users') THEN RAISE EXCEPTION 'migrated'; END IF; END $$",
    );
}

/// One replica: its state folder (a copy of the bundle) and its URL.
struct Replica {
    proc: Proc,
    url: String,
}

/// Copies what `hushgate control init` wrote into a new state folder,
/// as the operating guide says (everything but the CA's key).
fn replica_folder(bundle: &Path, dir: &Path) -> PathBuf {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().mode(0o700).create(dir).unwrap();
    for f in ["ca.pem", "server.pem", "server-key.pem", "admin-token"] {
        std::fs::copy(bundle.join(f), dir.join(f)).unwrap();
    }
    dir.to_path_buf()
}

fn start_replica(state: &Path, database: &str) -> Replica {
    // The connection string from the environment, as the systemd unit
    // gives it.
    let mut proc = Proc::start(
        hushgate()
            .env("HUSHGATE_DATABASE", database)
            .args(["control", "--listen", "127.0.0.1:0", "--state"])
            .arg(state),
    );
    let line = proc.wait_for("listening on https://");
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("https://"))
        .unwrap()
        .to_string();
    Replica { proc, url }
}

/// The admission ids the gateway running on `state` has as peers.
fn gateway_peers(state: &Path) -> Vec<String> {
    let out = run_to_end(
        hushgate()
            .args(["gateway", "status", "--json", "--state"])
            .arg(state),
    );
    assert!(out.status.success(), "{out:?}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    json["gateway"]["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["admission_id"].as_str().unwrap().to_string())
        .collect()
}

/// Waits until the gateway's peers satisfy `ok`.
async fn wait_for_peers(state: &Path, ok: impl Fn(&[String]) -> bool) -> Vec<String> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let peers = gateway_peers(state);
        if ok(&peers) {
            return peers;
        }
        assert!(Instant::now() < deadline, "the gateway has {peers:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_share_one_database_and_survive_a_kill() {
    let server = pg::server();
    let db_name = server.fresh_database_name();
    let database = server.url_text(&db_name);
    let tmp = tempfile::tempdir().unwrap();

    // The shared identity, recorded in the database.
    let bundle = tmp.path().join("bundle");
    let out = run_to_end(
        hushgate()
            .env("HUSHGATE_DATABASE", &database)
            .args(["control", "init", "--san", "replicas.test", "--state"])
            .arg(&bundle),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ca = bundle.join("ca.pem");
    let admin_token = std::fs::read_to_string(bundle.join("admin-token")).unwrap();
    let trust = || Trust::from_ca_file(&ca).unwrap();

    let mut replicas: Vec<Option<Replica>> = (1..=3)
        .map(|i| {
            let state = replica_folder(&bundle, &tmp.path().join(format!("r{i}")));
            Some(start_replica(&state, &database))
        })
        .collect();
    let url = |r: &[Option<Replica>], i: usize| r[i].as_ref().unwrap().url.clone();

    // Users, servers and grants made on replica 1.
    let admin1 = ControlClient::new(&url(&replicas, 0), trust())
        .unwrap()
        .with_bearer(admin_token.trim());
    let enrollment_token = seed(&admin1, "alice", "den", None).await;

    // A real gateway that enrolls and follows the feed on replica 2; it
    // knows replica 3 too, for when replica 2 is gone.
    let token_file = tmp.path().join("enroll-token");
    write_private(&token_file, &format!("{enrollment_token}\n"), 0o600);
    let gw_state = tmp.path().join("gateway");
    let config = tmp.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "control = \"{},{}\"\nca = \"{}\"\nstate = \"{}\"\nenroll_file = \"{}\"\n\
             listen_udp = \"127.0.0.1:0\"\nservices = [\"plex=32400:127.0.0.1:9\"]\n\
             prefilter = \"off\"\nport_mapping = \"off\"\n",
            url(&replicas, 1),
            url(&replicas, 2),
            ca.display(),
            gw_state.display(),
            token_file.display()
        ),
    )
    .unwrap();
    let mut gw = Proc::start(hushgate().args(["gateway", "--config"]).arg(&config));
    gw.wait_for("in sync with the control plane");

    // Alice's client knows replicas 1 and 3 and starts on 1. She signs
    // in and asks for access there: the answer comes only once the
    // gateway acknowledged, and its acknowledgement went to replica 2.
    let alice = ControlClient::new(
        &format!("{},{}", url(&replicas, 0), url(&replicas, 2)),
        trust(),
    )
    .unwrap();
    let login = alice.login("alice", "password-of-alice").await.unwrap();
    let alice = alice.with_bearer(&login.token);
    let first = alice.access("den", WgKey([1; 32])).await.unwrap();
    assert_eq!(alice.base_url(), url(&replicas, 0));
    let peers = gateway_peers(&gw_state);
    assert_eq!(
        peers,
        vec![first.admission_id.clone()],
        "acknowledged, so installed"
    );

    // A reachability check run by replica 1 while the gateway's feed is
    // on replica 2: its one-off admission is in the database, so the
    // gateway gets it through replica 2, answers the handshake, and
    // loses it when the check ends.
    let view = admin1.check_server("den").await.unwrap();
    let check = view.check.expect("a check result");
    assert!(check.reachable, "{check:?}");
    wait_for_peers(&gw_state, |p| p == [first.admission_id.clone()]).await;

    // Replica 1 is killed; what it acknowledged is kept.
    let r3 = url(&replicas, 2);
    replicas[0].take().unwrap().proc.kill_9();
    let admin3 = ControlClient::new(&r3, trust())
        .unwrap()
        .with_bearer(admin_token.trim());
    let listed = admin3.list_admissions().await.unwrap();
    assert_eq!(
        listed.iter().map(|a| a.id.clone()).collect::<Vec<_>>(),
        vec![first.admission_id.clone()]
    );
    // Alice's client moves to replica 3 by itself, with the token it
    // has: no new login. Renewal and a new access work there.
    alice.renew(&first.admission_id).await.unwrap();
    assert_eq!(alice.base_url(), r3);
    let second = alice.access("den", WgKey([2; 32])).await.unwrap();
    assert_ne!(second.client_address, first.client_address);
    let mut expected = vec![first.admission_id.clone(), second.admission_id.clone()];
    expected.sort();
    wait_for_peers(&gw_state, |p| {
        let mut p = p.to_vec();
        p.sort();
        p == expected
    })
    .await;

    // A revocation made on replica 3 reaches the gateway through
    // replica 2.
    alice.revoke(&first.admission_id).await.unwrap();
    wait_for_peers(&gw_state, |p| p == [second.admission_id.clone()]).await;

    // Login limits hold across replicas: failures on replica 2 and 3
    // count together (the limit is per minute, 10 by default; each
    // replica alone would have seen 6).
    let mut refused_by_limit = 0;
    for i in 0..12 {
        let r = &replicas[1 + i % 2];
        let c = ControlClient::new(&r.as_ref().unwrap().url, trust()).unwrap();
        if let Err(e) = c.login("alice", "wrong").await {
            if e.status() == Some(429) {
                refused_by_limit += 1;
            }
        }
    }
    assert!(
        refused_by_limit > 0,
        "12 failed logins spread over two replicas were never limited"
    );

    // Replica 2, which holds the gateway's feed, is killed: the gateway
    // moves to replica 3 by itself. An access there is answered once the
    // gateway acknowledges it there (until the gateway has moved, the
    // answer is a 503 that leaves nothing, and the client asks again).
    replicas[1].take().unwrap().proc.kill_9();
    let deadline = Instant::now() + PATIENCE;
    let third = loop {
        match alice.access("den", WgKey([3; 32])).await {
            Ok(r) => break r,
            Err(e) if e.status() == Some(503) && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("access after replica 2 died: {e}"),
        }
    };
    wait_for_peers(&gw_state, |p| p.contains(&third.admission_id)).await;
    alice.revoke(&second.admission_id).await.unwrap();
    wait_for_peers(&gw_state, |p| p == [third.admission_id.clone()]).await;

    // The database goes away (every connection cut, no new one allowed):
    // a request is answered 503 saying so, and the gateway keeps what it
    // has.
    server.admin_sql(&format!("ALTER DATABASE {db_name} ALLOW_CONNECTIONS false"));
    server.admin_sql(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db_name}'"
    ));
    let e = alice.renew(&third.admission_id).await.unwrap_err();
    assert_eq!(
        (e.status(), e.code()),
        (Some(503), Some("database_unavailable")),
        "{e}"
    );
    assert_eq!(gateway_peers(&gw_state), vec![third.admission_id.clone()]);
    // It comes back: the replica reconnects by itself, and a replica
    // started now from the same bundle serves a change that reaches the
    // gateway through replica 3.
    server.admin_sql(&format!("ALTER DATABASE {db_name} ALLOW_CONNECTIONS true"));
    let deadline = Instant::now() + PATIENCE;
    while let Err(e) = alice.renew(&third.admission_id).await {
        assert!(Instant::now() < deadline, "no recovery: {e}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r4 = start_replica(&replica_folder(&bundle, &tmp.path().join("r4")), &database);
    let alice4 = ControlClient::new(&r4.url, trust())
        .unwrap()
        .with_bearer(&login.token);
    let fourth = alice4.access("den", WgKey([4; 32])).await.unwrap();
    wait_for_peers(&gw_state, |p| p.contains(&fourth.admission_id)).await;
    drop(gw);
}
