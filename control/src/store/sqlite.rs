//! The SQLite engine: one file, one connection behind a mutex (SQLite
//! runs one writer at a time anyway, and the control plane's reads are
//! point lookups that take microseconds), WAL mode with
//! `synchronous=FULL`.

use super::sql::{check_parameter_order, Cell, Row, Value};
use super::{Result, StoreError, Tx};
use crate::live_feeds::Event;
use rusqlite::types::{ToSql, ToSqlOutput, ValueRef};
use rusqlite::Connection;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

#[derive(Debug)]
pub struct Sqlite {
    conn: Mutex<Connection>,
    path: PathBuf,
}

impl Sqlite {
    pub fn open(path: &Path) -> Result<Sqlite> {
        let mut conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        migrate(&mut conn, path)?;
        Ok(Sqlite {
            conn: Mutex::new(conn),
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(super) fn run<T>(
        &self,
        f: &mut dyn FnMut(&mut Tx<'_>) -> Result<T>,
    ) -> Result<(T, Vec<Event>)> {
        let mut guard = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let tx = guard.transaction()?;
        let mut t = Tx::sqlite(&tx);
        let out = f(&mut t)?;
        let events = t.take_events();
        tx.commit()?;
        Ok((out, events))
    }

    /// The open connection, for tests that look under the hood (counting
    /// SQLite's work with a progress handler).
    pub fn with_connection<T>(&self, f: impl FnOnce(&Connection) -> T) -> T {
        f(&self.conn.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Copies the database to `out` with SQLite's online backup: a
    /// consistent copy of one moment, taken while the control plane keeps
    /// serving (it pauses writers only for each step of 1,024 pages).
    pub fn backup_to(path: &Path, out: &Path) -> Result<()> {
        if out.exists() {
            return Err(StoreError::Invalid(format!(
                "{} exists already; name a new file, a backup never overwrites one",
                out.display()
            )));
        }
        let src = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        src.busy_timeout(std::time::Duration::from_secs(5))?;
        {
            use std::os::unix::fs::OpenOptionsExt;
            // The copy holds what the database holds (preshared keys):
            // owner only, from its first byte.
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(out)
                .map_err(|e| {
                    StoreError::Invalid(format!("cannot create {}: {e}", out.display()))
                })?;
        }
        let mut dst = Connection::open(out)?;
        {
            let b = rusqlite::backup::Backup::new(&src, &mut dst)?;
            b.run_to_completion(1024, std::time::Duration::from_millis(5), None)?;
        }
        let check: String = dst.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
        if check != "ok" {
            return Err(StoreError::Database(format!(
                "the copy in {} failed its integrity check: {check}",
                out.display()
            )));
        }
        // A copy is a plain database file, not a WAL one.
        dst.pragma_update(None, "journal_mode", "DELETE")?;
        Ok(())
    }
}

impl ToSql for Value<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match self {
            Value::Null => ValueRef::Null,
            Value::I64(v) => ValueRef::Integer(*v),
            Value::F64(v) => ValueRef::Real(*v),
            Value::Bool(b) => ValueRef::Integer(i64::from(*b)),
            Value::Text(s) => ValueRef::Text(s.as_bytes()),
            Value::Bytes(b) => ValueRef::Blob(b),
        }))
    }
}

fn prepare<'c>(
    conn: &'c Connection,
    sql: &str,
    args: &[Value<'_>],
) -> Result<rusqlite::CachedStatement<'c>> {
    check_parameter_order(sql)?;
    let mut st = conn.prepare_cached(sql)?;
    if st.parameter_count() != args.len() {
        return Err(StoreError::Database(format!(
            "the statement takes {} parameters, {} given: {sql}",
            st.parameter_count(),
            args.len()
        )));
    }
    for (i, v) in args.iter().enumerate() {
        st.raw_bind_parameter(i + 1, v)?;
    }
    Ok(st)
}

pub(super) fn exec(conn: &Connection, sql: &str, args: &[Value<'_>]) -> Result<u64> {
    let mut st = prepare(conn, sql, args)?;
    if st.readonly() || st.column_count() > 0 {
        // A statement with RETURNING (or a SELECT) yields rows: step
        // through them.
        let mut rows = st.raw_query();
        let mut n = 0;
        while rows.next()?.is_some() {
            n += 1;
        }
        return Ok(n);
    }
    Ok(st.raw_execute()? as u64)
}

pub(super) fn query(conn: &Connection, sql: &str, args: &[Value<'_>]) -> Result<Vec<Row>> {
    let mut st = prepare(conn, sql, args)?;
    let columns = st.column_count();
    let mut rows = st.raw_query();
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        let mut cells = Vec::with_capacity(columns);
        for i in 0..columns {
            cells.push(match r.get_ref(i)? {
                ValueRef::Null => Cell::Null,
                ValueRef::Integer(v) => Cell::I64(v),
                ValueRef::Real(v) => Cell::F64(v),
                ValueRef::Text(t) => Cell::Text(String::from_utf8_lossy(t).into_owned()),
                ValueRef::Blob(b) => Cell::Bytes(b.to_vec()),
            });
        }
        out.push(Row(cells));
    }
    Ok(out)
}

/// The first schema, as databases made before schema versions were kept
/// have it (they say `user_version` 0).
pub(crate) const SCHEMA_V1: &str = r#"
CREATE TABLE IF NOT EXISTS settings (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS users (
    id INTEGER PRIMARY KEY,
    username TEXT NOT NULL UNIQUE,
    pw_hash TEXT NOT NULL,
    admin INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS tokens (
    token_hash BLOB PRIMARY KEY,
    user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    expires_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS servers (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    binding TEXT NOT NULL,
    ttl_secs INTEGER NOT NULL,
    enroll_hash BLOB UNIQUE,
    cred_hash BLOB UNIQUE,
    gateway_key TEXT,
    endpoint TEXT,
    services TEXT NOT NULL DEFAULT '[]',
    direct_services TEXT NOT NULL DEFAULT '[]',
    version INTEGER NOT NULL DEFAULT 1,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS grants (
    user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    server_id INTEGER NOT NULL REFERENCES servers(id) ON DELETE CASCADE,
    services TEXT,
    direct INTEGER NOT NULL,
    PRIMARY KEY (user_id, server_id)
);
CREATE TABLE IF NOT EXISTS admissions (
    id TEXT PRIMARY KEY,
    user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    server_id INTEGER NOT NULL REFERENCES servers(id) ON DELETE CASCADE,
    mode TEXT NOT NULL,
    client_key TEXT,
    psk TEXT,
    source TEXT NOT NULL,
    binding TEXT NOT NULL,
    tunnel_index INTEGER,
    services TEXT NOT NULL,
    state TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS admissions_tunnel_index
    ON admissions(server_id, tunnel_index) WHERE tunnel_index IS NOT NULL;
CREATE UNIQUE INDEX IF NOT EXISTS admissions_client_key
    ON admissions(server_id, client_key) WHERE client_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS admissions_expiry ON admissions(expires_at);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at INTEGER NOT NULL,
    event TEXT NOT NULL,
    username TEXT,
    server TEXT,
    admission_id TEXT,
    source TEXT,
    detail TEXT NOT NULL
);
"#;

/// Version 3: the feed's history in the database (not in memory), a
/// deadline for pending admissions, the tables replicas share on
/// PostgreSQL (present here too so both engines have one schema).
const SCHEMA_V3: &str = r#"
ALTER TABLE servers ADD COLUMN feed_floor INTEGER NOT NULL DEFAULT 1;
UPDATE servers SET feed_floor = version;
ALTER TABLE admissions ADD COLUMN pending_until INTEGER;
CREATE INDEX admissions_pending ON admissions(pending_until) WHERE state = 'pending';
CREATE TABLE feed_touch (
    server_id INTEGER NOT NULL REFERENCES servers(id) ON DELETE CASCADE,
    admission_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    PRIMARY KEY (server_id, admission_id)
) WITHOUT ROWID;
CREATE INDEX feed_touch_version ON feed_touch(server_id, version);
CREATE TABLE gateway_presence (
    server_id INTEGER PRIMARY KEY REFERENCES servers(id) ON DELETE CASCADE,
    acked_version INTEGER NOT NULL DEFAULT 0,
    last_seen INTEGER,
    held_until INTEGER,
    holder TEXT
);
CREATE TABLE login_buckets (
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    tokens REAL NOT NULL,
    at INTEGER NOT NULL,
    PRIMARY KEY (kind, key)
);
CREATE TABLE login_suspects (
    username TEXT NOT NULL,
    source TEXT NOT NULL,
    at INTEGER NOT NULL,
    PRIMARY KEY (username, source)
);
"#;

/// Version 4 (issue 17): what the gateway reported about its network
/// (port mapping, IPv6, the address it was seen from) and the last
/// reachability check, each as JSON; the one-off admission of a check
/// in progress (JSON) and when it ends (Unix seconds).
const SCHEMA_V4: &str = r#"
ALTER TABLE servers ADD COLUMN network TEXT;
ALTER TABLE servers ADD COLUMN reachability TEXT;
ALTER TABLE servers ADD COLUMN probe TEXT;
ALTER TABLE servers ADD COLUMN probe_id TEXT;
ALTER TABLE servers ADD COLUMN probe_until INTEGER;
"#;

/// Version 5: tenancy. Servers have an owner and a sharing policy
/// (direct mode, two-factor, device approval); accounts have TOTP,
/// recovery codes and devices; invitations; audit lines name the tenant
/// they belong to. PostgreSQL's migration 3 is the same.
const SCHEMA_V5: &str = r#"
ALTER TABLE users ADD COLUMN totp_secret BLOB;
ALTER TABLE users ADD COLUMN totp_pending BLOB;
ALTER TABLE users ADD COLUMN totp_last_step INTEGER;
ALTER TABLE tokens ADD COLUMN mfa INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tokens ADD COLUMN device_id TEXT;
ALTER TABLE servers ADD COLUMN owner_id INTEGER REFERENCES users(id) ON DELETE CASCADE;
ALTER TABLE servers ADD COLUMN direct_mode INTEGER NOT NULL DEFAULT 1;
ALTER TABLE servers ADD COLUMN require_2fa INTEGER NOT NULL DEFAULT 0;
ALTER TABLE servers ADD COLUMN approve_devices INTEGER NOT NULL DEFAULT 0;
CREATE INDEX servers_owner ON servers(owner_id);
ALTER TABLE audit ADD COLUMN owner_id INTEGER;
ALTER TABLE audit ADD COLUMN server_id INTEGER;
ALTER TABLE audit ADD COLUMN user_id INTEGER;
CREATE INDEX audit_owner ON audit(owner_id, id);
CREATE INDEX audit_server ON audit(server_id, id);
CREATE INDEX audit_user ON audit(user_id, id);
CREATE TABLE invitations (
    id TEXT PRIMARY KEY,
    server_id INTEGER REFERENCES servers(id) ON DELETE CASCADE,
    created_by INTEGER REFERENCES users(id) ON DELETE CASCADE,
    token_hash BLOB NOT NULL UNIQUE,
    services TEXT,
    direct INTEGER NOT NULL,
    uses_left INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX invitations_server ON invitations(server_id);
CREATE TABLE recovery_codes (
    user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    code_hash BLOB NOT NULL,
    PRIMARY KEY (user_id, code_hash)
) WITHOUT ROWID;
CREATE TABLE devices (
    id TEXT PRIMARY KEY,
    user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    cred_hash BLOB NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    last_used INTEGER
);
CREATE INDEX devices_user ON devices(user_id);
CREATE TABLE device_approvals (
    device_id TEXT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    server_id INTEGER NOT NULL REFERENCES servers(id) ON DELETE CASCADE,
    state TEXT NOT NULL,
    requested_at INTEGER NOT NULL,
    decided_at INTEGER,
    PRIMARY KEY (device_id, server_id)
);
CREATE INDEX device_approvals_server ON device_approvals(server_id, state);
ALTER TABLE admissions ADD COLUMN device_id TEXT;
"#;

/// Version 6: sign-in by code (RFC 8628's device authorization grant):
/// pending codes, both stored as hashes; devices made by a code sign-in
/// sign in with their credential alone. PostgreSQL's migration 4 is the
/// same.
const SCHEMA_V6: &str = r#"
CREATE TABLE device_codes (
    id TEXT PRIMARY KEY,
    device_hash BLOB NOT NULL UNIQUE,
    user_hash BLOB NOT NULL UNIQUE,
    device_name TEXT NOT NULL,
    source TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    interval_ms INTEGER NOT NULL,
    last_poll INTEGER,
    state TEXT NOT NULL,
    user_id INTEGER REFERENCES users(id) ON DELETE CASCADE,
    mfa INTEGER NOT NULL DEFAULT 0,
    decided_at INTEGER
);
CREATE INDEX device_codes_expiry ON device_codes(expires_at);
ALTER TABLE devices ADD COLUMN sign_in INTEGER NOT NULL DEFAULT 0;
ALTER TABLE devices ADD COLUMN sign_in_mfa INTEGER NOT NULL DEFAULT 0;
"#;

/// The schema version `migrate` brings a database to (`PRAGMA
/// user_version`). Add a step below and raise this to change the schema.
pub const SCHEMA_VERSION: i64 = 6;

/// Brings a database made by an older control plane (or a new, empty
/// one) to [`SCHEMA_VERSION`], in one transaction. A database of a newer
/// version is refused before anything is changed.
fn migrate(conn: &mut Connection, path: &Path) -> Result<()> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::Schema(format!(
            "the database {} has schema version {version}, newer than this hushgate knows ({SCHEMA_VERSION}): it was written by a newer hushgate; run that version or a newer one (nothing was changed)",
            path.display()
        )));
    }
    if version == SCHEMA_VERSION {
        return Ok(());
    }
    let tx = conn.transaction()?;
    if version < 1 {
        tx.execute_batch(SCHEMA_V1)?;
    }
    if version < 2 {
        migrate_to_v2(&tx)?;
    }
    if version < 3 {
        tx.execute_batch(SCHEMA_V3)?;
    }
    if version < 4 {
        tx.execute_batch(SCHEMA_V4)?;
    }
    if version < 5 {
        tx.execute_batch(SCHEMA_V5)?;
    }
    if version < 6 {
        tx.execute_batch(SCHEMA_V6)?;
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.commit()?;
    Ok(())
}

/// Version 2: a limit of admissions per user and server; tunnel
/// addresses from a free list (O(log n) instead of a scan); enrollment
/// tokens that expire, several per server, revocable.
fn migrate_to_v2(conn: &Connection) -> Result<()> {
    use super::queries::{DEFAULT_MAX_ADMISSIONS_PER_USER, SERVICE_INDEX};
    conn.execute_batch(&format!(
        "ALTER TABLE servers ADD COLUMN max_admissions_per_user INTEGER NOT NULL DEFAULT {DEFAULT_MAX_ADMISSIONS_PER_USER};
         ALTER TABLE servers ADD COLUMN next_tunnel_index INTEGER NOT NULL DEFAULT {};
         CREATE TABLE enrollment_tokens (
             id TEXT PRIMARY KEY,
             server_id INTEGER NOT NULL REFERENCES servers(id) ON DELETE CASCADE,
             token_hash BLOB NOT NULL UNIQUE,
             created_at INTEGER NOT NULL,
             expires_at INTEGER NOT NULL
         );
         CREATE INDEX enrollment_tokens_server ON enrollment_tokens(server_id);
         CREATE TABLE tunnel_free (
             server_id INTEGER NOT NULL REFERENCES servers(id) ON DELETE CASCADE,
             tunnel_index INTEGER NOT NULL,
             PRIMARY KEY (server_id, tunnel_index)
         ) WITHOUT ROWID;
         CREATE INDEX admissions_user ON admissions(user_id, server_id);",
        SERVICE_INDEX + 1
    ))?;
    let mut tx = Tx::sqlite(conn);
    // Tunnel addresses already in use: the free list is every gap below
    // the highest one.
    let servers: Vec<i64> = tx
        .query("SELECT id FROM servers", crate::args![])?
        .iter()
        .map(|r| r.i64(0))
        .collect::<Result<_>>()?;
    for id in servers {
        let used: Vec<i64> = tx
            .query(
                "SELECT tunnel_index FROM admissions
                 WHERE server_id = $1 AND tunnel_index IS NOT NULL ORDER BY tunnel_index",
                crate::args![id],
            )?
            .iter()
            .map(|r| r.i64(0))
            .collect::<Result<_>>()?;
        let mut next = i64::from(SERVICE_INDEX + 1);
        for u in used {
            for gap in next..u {
                super::queries::release_tunnel_index(&mut tx, id, gap as u32)?;
            }
            next = u + 1;
        }
        tx.exec(
            "UPDATE servers SET next_tunnel_index = $1 WHERE id = $2",
            crate::args![next, id],
        )?;
    }
    // A token issued before tokens expired gets a day from now.
    let now = time::OffsetDateTime::now_utc();
    let pending: Vec<(i64, Vec<u8>)> = tx
        .query(
            "SELECT id, enroll_hash FROM servers WHERE enroll_hash IS NOT NULL",
            crate::args![],
        )?
        .iter()
        .map(|r| Ok((r.i64(0)?, r.opt_bytes(1)?.unwrap_or_default())))
        .collect::<Result<_>>()?;
    for (id, hash) in pending {
        super::queries::insert_enrollment_token(
            &mut tx,
            &crate::auth::random_id("enr_"),
            id,
            &hash,
            now,
            now + time::Duration::days(1),
        )?;
    }
    tx.exec("UPDATE servers SET enroll_hash = NULL", crate::args![])?;
    Ok(())
}
