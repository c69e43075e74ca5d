//! The control plane's durable state: one SQLite file in WAL mode with
//! `synchronous=FULL`, so a commit is on disk before any caller hears
//! about it.
//!
//! Queries are plain functions over a `rusqlite::Connection`; `Db` runs a
//! closure of them inside one transaction on a blocking thread, so a
//! request's change and its audit line commit together or not at all.
//!
//! Every function that bumps a server's feed version records the change
//! it made in a [`FeedChanges`]; `Db::tx_feed` appends those to the
//! in-memory [`FeedLog`] after the commit, before the next transaction can
//! start, so the log always matches the versions in the database.

use crate::feedlog::{Change, FeedChanges, FeedLog};
use proto::api::{AccessMode, AuditEntry, ServiceInfo};
use proto::feed::FeedAdmission;
use proto::{BindingPolicy, WgKey};
use rusqlite::{params, Connection, OptionalExtension, Transaction};
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::{Arc, Mutex};
use time::OffsetDateTime;

/// Inner addresses: the gateway is .0.1 of this /16, clients from .0.2 up.
pub const TUNNEL_BASE: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 0);
pub const SERVICE_INDEX: u32 = 1;
const MAX_TUNNEL_INDEX: u32 = 65_534;
/// How many client tunnel addresses a server has (65,533).
pub const TUNNEL_ADDRESSES: u32 = MAX_TUNNEL_INDEX - SERVICE_INDEX;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotFound(String),
    /// A request that cannot be carried out as asked.
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Exhausted(String),
    /// A user holds as many admissions on a server as it allows.
    #[error("{0}")]
    AdmissionLimit(String),
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("database task failed: {0}")]
    Task(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// A handle on the database, shared by all requests.
#[derive(Clone, Debug)]
pub struct Db {
    // One connection: SQLite serialises writers anyway, and the control
    // plane's reads are point lookups that take microseconds.
    conn: Arc<Mutex<Connection>>,
    /// Recent feed changes; written only while `conn` is locked.
    log: Arc<Mutex<FeedLog>>,
}

impl Db {
    pub fn open(path: &Path) -> Result<Db> {
        let mut conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        migrate(&mut conn)?;
        Ok(Db {
            conn: Arc::new(Mutex::new(conn)),
            log: Arc::default(),
        })
    }

    /// The feed's change log. Read it while holding a transaction (inside
    /// a `tx` closure) so that it is at least as new as what that
    /// transaction reads.
    pub fn feed_log(&self) -> Arc<Mutex<FeedLog>> {
        self.log.clone()
    }

    /// Runs `f` in one transaction on a blocking thread and commits it.
    /// An error rolls everything back.
    pub async fn tx<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction) -> Result<T> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = conn.lock().unwrap_or_else(|p| p.into_inner());
            let tx = guard.transaction()?;
            let out = f(&tx)?;
            tx.commit()?;
            Ok(out)
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
    }

    /// The same, synchronously (start-up and tests).
    pub fn tx_blocking<T>(&self, f: impl FnOnce(&Transaction) -> Result<T>) -> Result<T> {
        let mut guard = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let tx = guard.transaction()?;
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
    }

    /// Runs `f` in one transaction like [`Db::tx`], for changes that bump
    /// feed versions: `f` records them in the `FeedChanges` it is given,
    /// and once the transaction has committed they go into the feed log,
    /// still under the database lock, so the log holds versions in commit
    /// order. A rolled back transaction records nothing.
    pub async fn tx_feed<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction, &mut FeedChanges) -> Result<T> + Send + 'static,
    {
        let db = self.clone();
        tokio::task::spawn_blocking(move || db.tx_feed_blocking(f))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }

    /// The same, synchronously (start-up and tests).
    pub fn tx_feed_blocking<T>(
        &self,
        f: impl FnOnce(&Transaction, &mut FeedChanges) -> Result<T>,
    ) -> Result<T> {
        let mut guard = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let tx = guard.transaction()?;
        let mut changes = FeedChanges::default();
        let out = f(&tx, &mut changes)?;
        tx.commit()?;
        if !changes.is_empty() {
            self.log
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .append(changes);
        }
        drop(guard);
        Ok(out)
    }
}

const SCHEMA: &str = r#"
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

/// The schema version `migrate` brings a database to (`PRAGMA user_version`).
const SCHEMA_VERSION: i64 = 3;

/// Default for `servers.max_admissions_per_user` (see `DEFAULT_MAX_ADMISSIONS_PER_USER`).
pub const DEFAULT_MAX_ADMISSIONS_PER_USER: u32 = 8;

/// Brings a database made by an older control plane (or just made from
/// `SCHEMA`, which is the first version) to `SCHEMA_VERSION`, in one
/// transaction.
fn migrate(conn: &mut Connection) -> Result<()> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version >= SCHEMA_VERSION {
        return Ok(());
    }
    let tx = conn.transaction()?;
    if version < 2 {
        // Version 2: a limit of admissions per user and server; tunnel
        // addresses from a free list (O(log n) instead of a scan);
        // enrollment tokens that expire, several per server, revocable.
        tx.execute_batch(&format!(
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
        // Tunnel addresses already in use: the free list is every gap
        // below the highest one.
        let servers: Vec<i64> = tx
            .prepare("SELECT id FROM servers")?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        for id in servers {
            let used: Vec<i64> = tx
                .prepare(
                    "SELECT tunnel_index FROM admissions
                     WHERE server_id = ?1 AND tunnel_index IS NOT NULL ORDER BY tunnel_index",
                )?
                .query_map([id], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            let mut next = i64::from(SERVICE_INDEX + 1);
            for u in used {
                for gap in next..u {
                    release_tunnel_index(&tx, id, gap as u32)?;
                }
                next = u + 1;
            }
            tx.execute(
                "UPDATE servers SET next_tunnel_index = ?2 WHERE id = ?1",
                params![id, next],
            )?;
        }
        // A token issued before tokens expired gets a day from now.
        let now = OffsetDateTime::now_utc();
        let pending: Vec<(i64, Vec<u8>)> = tx
            .prepare("SELECT id, enroll_hash FROM servers WHERE enroll_hash IS NOT NULL")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        for (id, hash) in pending {
            insert_enrollment_token(
                &tx,
                &crate::auth::random_id("enr_"),
                id,
                &hash,
                now,
                now + time::Duration::days(1),
            )?;
        }
        tx.execute("UPDATE servers SET enroll_hash = NULL", [])?;
    }
    if version < 3 {
        // Version 3 (issue 17): what the gateway reported about its
        // network (port mapping, IPv6, the address it was seen from) and
        // the last reachability check, each as JSON.
        tx.execute_batch(
            "ALTER TABLE servers ADD COLUMN network TEXT;
             ALTER TABLE servers ADD COLUMN reachability TEXT;",
        )?;
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.commit()?;
    Ok(())
}

pub fn millis(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

pub fn from_millis(ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

// ---------- settings ----------

pub fn setting(tx: &Connection, key: &str) -> Result<Option<Vec<u8>>> {
    Ok(tx
        .query_row("SELECT value FROM settings WHERE key = ?1", [key], |r| {
            r.get(0)
        })
        .optional()?)
}

pub fn set_setting(tx: &Connection, key: &str, value: &[u8]) -> Result<()> {
    tx.execute(
        "INSERT INTO settings(key, value) VALUES (?1, ?2)
         ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        params![key, value],
    )?;
    Ok(())
}

// ---------- users and tokens ----------

#[derive(Debug, Clone)]
pub struct User {
    pub id: i64,
    pub username: String,
    pub pw_hash: String,
    pub admin: bool,
    pub created_at: OffsetDateTime,
}

fn user_row(r: &rusqlite::Row) -> rusqlite::Result<User> {
    Ok(User {
        id: r.get(0)?,
        username: r.get(1)?,
        pw_hash: r.get(2)?,
        admin: r.get(3)?,
        created_at: from_millis(r.get(4)?),
    })
}

const USER_COLS: &str = "id, username, pw_hash, admin, created_at";

pub fn create_user(
    tx: &Connection,
    username: &str,
    pw_hash: &str,
    admin: bool,
    now: OffsetDateTime,
) -> Result<User> {
    if user_by_name(tx, username)?.is_some() {
        return Err(StoreError::Conflict(format!(
            "a user named '{username}' already exists"
        )));
    }
    tx.execute(
        "INSERT INTO users(username, pw_hash, admin, created_at) VALUES (?1, ?2, ?3, ?4)",
        params![username, pw_hash, admin, millis(now)],
    )?;
    user_by_name(tx, username)?.ok_or_else(|| StoreError::NotFound("user vanished".into()))
}

pub fn user_by_name(tx: &Connection, username: &str) -> Result<Option<User>> {
    Ok(tx
        .query_row(
            &format!("SELECT {USER_COLS} FROM users WHERE username = ?1"),
            [username],
            user_row,
        )
        .optional()?)
}

pub fn list_users(tx: &Connection) -> Result<Vec<User>> {
    let mut st = tx.prepare(&format!("SELECT {USER_COLS} FROM users ORDER BY username"))?;
    let rows = st
        .query_map([], user_row)?
        .collect::<rusqlite::Result<_>>()?;
    Ok(rows)
}

/// Deletes a user with their tokens and grants. End their admissions
/// first ([`delete_admission`]); any left are removed here too, their
/// tunnel addresses freed.
pub fn delete_user(tx: &Connection, user_id: i64) -> Result<()> {
    for a in user_server_admissions(tx, user_id, None)? {
        remove_admission_row(tx, &a)?;
    }
    tx.execute("DELETE FROM users WHERE id = ?1", [user_id])?;
    Ok(())
}

pub fn insert_token(
    tx: &Connection,
    hash: &[u8],
    user_id: i64,
    expires: OffsetDateTime,
) -> Result<()> {
    tx.execute(
        "INSERT INTO tokens(token_hash, user_id, expires_at) VALUES (?1, ?2, ?3)",
        params![hash, user_id, millis(expires)],
    )?;
    Ok(())
}

/// The user a bearer token belongs to, if the token exists and is live.
pub fn token_user(tx: &Connection, hash: &[u8], now: OffsetDateTime) -> Result<Option<User>> {
    Ok(tx
        .query_row(
            "SELECT u.id, u.username, u.pw_hash, u.admin, u.created_at
             FROM tokens t JOIN users u ON u.id = t.user_id
             WHERE t.token_hash = ?1 AND t.expires_at > ?2",
            params![hash, millis(now)],
            user_row,
        )
        .optional()?)
}

/// Forgets expired login and enrollment tokens.
pub fn purge_tokens(tx: &Connection, now: OffsetDateTime) -> Result<usize> {
    Ok(
        tx.execute("DELETE FROM tokens WHERE expires_at <= ?1", [millis(now)])?
            + tx.execute(
                "DELETE FROM enrollment_tokens WHERE expires_at <= ?1",
                [millis(now)],
            )?,
    )
}

/// Ends every login of a user (after a password change).
pub fn delete_user_tokens(tx: &Connection, user_id: i64) -> Result<usize> {
    Ok(tx.execute("DELETE FROM tokens WHERE user_id = ?1", [user_id])?)
}

pub fn set_password_hash(tx: &Connection, user_id: i64, pw_hash: &str) -> Result<()> {
    tx.execute(
        "UPDATE users SET pw_hash = ?2 WHERE id = ?1",
        params![user_id, pw_hash],
    )?;
    Ok(())
}

// ---------- servers ----------

#[derive(Debug, Clone)]
pub struct Server {
    pub id: i64,
    pub name: String,
    pub binding: BindingPolicy,
    pub ttl_secs: u64,
    pub enrolled: bool,
    pub gateway_key: Option<WgKey>,
    pub endpoint: Option<std::net::SocketAddr>,
    pub services: Vec<ServiceInfo>,
    pub direct_services: Vec<ServiceInfo>,
    pub version: u64,
    /// Live admissions one user may hold on this server at once.
    pub max_admissions_per_user: u32,
    /// The gateway's last network report and where it came from.
    pub network: Option<crate::reachability::StoredNetwork>,
    /// The last reachability check of its endpoint.
    pub reachability: Option<proto::reach::Reachability>,
}

const SERVER_COLS: &str =
    "id, name, binding, ttl_secs, cred_hash IS NOT NULL, gateway_key, endpoint, services, direct_services, version, max_admissions_per_user, network, reachability";

fn server_row(r: &rusqlite::Row) -> rusqlite::Result<Server> {
    let binding: String = r.get(2)?;
    let key: Option<String> = r.get(5)?;
    let endpoint: Option<String> = r.get(6)?;
    let services: String = r.get(7)?;
    let direct: String = r.get(8)?;
    Ok(Server {
        id: r.get(0)?,
        name: r.get(1)?,
        binding: binding.parse().unwrap_or_default(),
        ttl_secs: r.get::<_, i64>(3)? as u64,
        enrolled: r.get(4)?,
        gateway_key: key.and_then(|k| k.parse().ok()),
        endpoint: endpoint.and_then(|e| e.parse().ok()),
        services: serde_json::from_str(&services).unwrap_or_default(),
        direct_services: serde_json::from_str(&direct).unwrap_or_default(),
        version: r.get::<_, i64>(9)? as u64,
        max_admissions_per_user: r.get::<_, i64>(10)?.clamp(0, i64::from(u32::MAX)) as u32,
        network: r
            .get::<_, Option<String>>(11)?
            .and_then(|t| serde_json::from_str(&t).ok()),
        reachability: r
            .get::<_, Option<String>>(12)?
            .and_then(|t| serde_json::from_str(&t).ok()),
    })
}

/// Registers a server; its gateway enrolls with a token from
/// [`insert_enrollment_token`].
pub fn create_server(
    tx: &Connection,
    name: &str,
    binding: BindingPolicy,
    ttl_secs: u64,
    max_admissions_per_user: u32,
    now: OffsetDateTime,
) -> Result<Server> {
    if server_by_name(tx, name)?.is_some() {
        return Err(StoreError::Conflict(format!(
            "a server named '{name}' already exists"
        )));
    }
    // Ids are never reused: the in-memory feed state (hub, feed log) of a
    // removed server must not become a new server's.
    let high = setting(tx, "server_id_high")?
        .and_then(|v| String::from_utf8(v).ok()?.parse::<i64>().ok())
        .unwrap_or(0);
    let max: i64 = tx.query_row("SELECT COALESCE(MAX(id), 0) FROM servers", [], |r| r.get(0))?;
    tx.execute(
        "INSERT INTO servers(id, name, binding, ttl_secs, max_admissions_per_user, created_at)
         VALUES (?6, ?1, ?2, ?3, ?4, ?5)",
        params![
            name,
            binding.to_string(),
            ttl_secs as i64,
            max_admissions_per_user,
            millis(now),
            high.max(max) + 1
        ],
    )?;
    server_by_name(tx, name)?.ok_or_else(|| StoreError::NotFound("server vanished".into()))
}

pub fn server_by_name(tx: &Connection, name: &str) -> Result<Option<Server>> {
    Ok(tx
        .query_row(
            &format!("SELECT {SERVER_COLS} FROM servers WHERE name = ?1"),
            [name],
            server_row,
        )
        .optional()?)
}

/// The server named `name`, or a `NotFound` that says so.
pub fn server_named(tx: &Connection, name: &str) -> Result<Server> {
    server_by_name(tx, name)?
        .ok_or_else(|| StoreError::NotFound(format!("no server named '{name}'")))
}

pub fn server_by_id(tx: &Connection, id: i64) -> Result<Server> {
    Ok(tx.query_row(
        &format!("SELECT {SERVER_COLS} FROM servers WHERE id = ?1"),
        [id],
        server_row,
    )?)
}

pub fn server_by_credential(tx: &Connection, hash: &[u8]) -> Result<Option<Server>> {
    Ok(tx
        .query_row(
            &format!("SELECT {SERVER_COLS} FROM servers WHERE cred_hash = ?1"),
            [hash],
            server_row,
        )
        .optional()?)
}

pub fn list_servers(tx: &Connection) -> Result<Vec<Server>> {
    let mut st = tx.prepare(&format!("SELECT {SERVER_COLS} FROM servers ORDER BY name"))?;
    let rows = st
        .query_map([], server_row)?
        .collect::<rusqlite::Result<_>>()?;
    Ok(rows)
}

/// Changes a server's admission lifetime and per-user admission limit
/// (for new admissions and renewals; live ones keep their expiry).
pub fn update_server_settings(
    tx: &Connection,
    server_id: i64,
    ttl_secs: Option<u64>,
    max_admissions_per_user: Option<u32>,
) -> Result<()> {
    if let Some(ttl) = ttl_secs {
        tx.execute(
            "UPDATE servers SET ttl_secs = ?2 WHERE id = ?1",
            params![server_id, ttl as i64],
        )?;
    }
    if let Some(max) = max_admissions_per_user {
        tx.execute(
            "UPDATE servers SET max_admissions_per_user = ?2 WHERE id = ?1",
            params![server_id, max],
        )?;
    }
    Ok(())
}

pub fn rename_server(tx: &Connection, server_id: i64, new_name: &str) -> Result<()> {
    if server_by_name(tx, new_name)?.is_some() {
        return Err(StoreError::Conflict(format!(
            "a server named '{new_name}' already exists"
        )));
    }
    tx.execute(
        "UPDATE servers SET name = ?2 WHERE id = ?1",
        params![server_id, new_name],
    )?;
    Ok(())
}

/// Deletes a server with its grants, enrollment tokens and tunnel
/// address bookkeeping. End its admissions first ([`delete_admission`]),
/// so that each one is audited and reaches the feed.
pub fn delete_server(tx: &Connection, server_id: i64) -> Result<()> {
    let high = setting(tx, "server_id_high")?
        .and_then(|v| String::from_utf8(v).ok()?.parse::<i64>().ok())
        .unwrap_or(0);
    set_setting(
        tx,
        "server_id_high",
        high.max(server_id).to_string().as_bytes(),
    )?;
    for a in server_admissions(tx, server_id)? {
        remove_admission_row(tx, &a)?;
    }
    tx.execute("DELETE FROM servers WHERE id = ?1", [server_id])?;
    Ok(())
}

/// Makes the server's gateway credential stop working at once. Returns
/// whether there was one.
pub fn revoke_credential(tx: &Connection, server_id: i64) -> Result<bool> {
    Ok(tx.execute(
        "UPDATE servers SET cred_hash = NULL WHERE id = ?1 AND cred_hash IS NOT NULL",
        [server_id],
    )? > 0)
}

// ---------- enrollment tokens ----------

/// A one-time enrollment token as an admin sees it (never the secret).
#[derive(Debug, Clone)]
pub struct EnrollmentToken {
    pub id: String,
    pub server: String,
    pub created_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
}

pub fn insert_enrollment_token(
    tx: &Connection,
    id: &str,
    server_id: i64,
    hash: &[u8],
    now: OffsetDateTime,
    expires_at: OffsetDateTime,
) -> Result<()> {
    tx.execute(
        "INSERT INTO enrollment_tokens(id, server_id, token_hash, created_at, expires_at)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![id, server_id, hash, millis(now), millis(expires_at)],
    )?;
    Ok(())
}

/// Live enrollment tokens, oldest first.
pub fn list_enrollment_tokens(
    tx: &Connection,
    now: OffsetDateTime,
) -> Result<Vec<EnrollmentToken>> {
    let mut st = tx.prepare(
        "SELECT e.id, s.name, e.created_at, e.expires_at FROM enrollment_tokens e
         JOIN servers s ON s.id = e.server_id WHERE e.expires_at > ?1
         ORDER BY e.created_at, e.id",
    )?;
    let rows = st
        .query_map([millis(now)], |r| {
            Ok(EnrollmentToken {
                id: r.get(0)?,
                server: r.get(1)?,
                created_at: from_millis(r.get(2)?),
                expires_at: from_millis(r.get(3)?),
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    Ok(rows)
}

/// Deletes one enrollment token; returns its server's name if it existed.
pub fn delete_enrollment_token(tx: &Connection, id: &str) -> Result<Option<String>> {
    Ok(tx
        .query_row(
            "DELETE FROM enrollment_tokens WHERE id = ?1
             RETURNING (SELECT name FROM servers WHERE servers.id = enrollment_tokens.server_id)",
            [id],
            |r| r.get(0),
        )
        .optional()?)
}

/// What became of an enrollment attempt.
#[derive(Debug)]
pub enum Enrollment {
    /// The gateway holds the server's credential now; `replaced` when it
    /// took the place of an earlier one (re-enrollment).
    Enrolled { server: Box<Server>, replaced: bool },
    /// The token existed but its time was up (it is deleted now).
    Expired {
        server: String,
        expired_at: OffsetDateTime,
    },
    /// No such token: never issued, used, or revoked.
    Unknown,
}

/// Consumes a one-time enrollment token: its server gets the gateway's
/// new credential (replacing any earlier one) and the token can never be
/// used again.
pub fn enroll(
    tx: &Connection,
    enroll_hash: &[u8],
    cred_hash: &[u8],
    now: OffsetDateTime,
) -> Result<Enrollment> {
    let found: Option<(String, i64, i64)> = tx
        .query_row(
            "SELECT id, server_id, expires_at FROM enrollment_tokens WHERE token_hash = ?1",
            [enroll_hash],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    let Some((token_id, server_id, expires_at)) = found else {
        return Ok(Enrollment::Unknown);
    };
    tx.execute("DELETE FROM enrollment_tokens WHERE id = ?1", [&token_id])?;
    let server = server_by_id(tx, server_id)?;
    if expires_at <= millis(now) {
        return Ok(Enrollment::Expired {
            server: server.name,
            expired_at: from_millis(expires_at),
        });
    }
    tx.execute(
        "UPDATE servers SET cred_hash = ?2 WHERE id = ?1",
        params![server_id, cred_hash],
    )?;
    Ok(Enrollment::Enrolled {
        replaced: server.enrolled,
        server: Box::new(server_by_id(tx, server_id)?),
    })
}

/// Records what the gateway reported about itself.
pub fn update_gateway(
    tx: &Connection,
    feed: &mut FeedChanges,
    server_id: i64,
    key: &WgKey,
    endpoint: std::net::SocketAddr,
    services: &[ServiceInfo],
    direct: &[ServiceInfo],
) -> Result<()> {
    let old = server_by_id(tx, server_id)?;
    tx.execute(
        "UPDATE servers SET gateway_key = ?2, endpoint = ?3, services = ?4, direct_services = ?5
         WHERE id = ?1",
        params![
            server_id,
            key.to_string(),
            endpoint.to_string(),
            serde_json::to_string(services).unwrap_or_default(),
            serde_json::to_string(direct).unwrap_or_default(),
        ],
    )?;
    // A new gateway key makes every admission's client config stale: the
    // clients pinned the old key. They must ask again.
    if old.gateway_key.is_some() && old.gateway_key.as_ref() != Some(key) {
        tx.execute("DELETE FROM admissions WHERE server_id = ?1", [server_id])?;
        reset_tunnel_indexes(tx, server_id)?;
        let v = bump_version(tx, server_id)?;
        feed.record(server_id, v, Change::Reset);
    }
    Ok(())
}

/// Records the gateway's network report (issue 17).
pub fn set_network(
    tx: &Connection,
    server_id: i64,
    network: &crate::reachability::StoredNetwork,
) -> Result<()> {
    tx.execute(
        "UPDATE servers SET network = ?2 WHERE id = ?1",
        params![
            server_id,
            serde_json::to_string(network).unwrap_or_default()
        ],
    )?;
    Ok(())
}

/// Records the last reachability check of a server's endpoint (issue 17).
pub fn set_reachability(
    tx: &Connection,
    server_id: i64,
    check: &proto::reach::Reachability,
) -> Result<()> {
    tx.execute(
        "UPDATE servers SET reachability = ?2 WHERE id = ?1",
        params![server_id, serde_json::to_string(check).unwrap_or_default()],
    )?;
    Ok(())
}

/// A feed change that is not a stored admission (a reachability check's
/// one-off admission): bumps the version and logs the change.
pub fn bump_feed(
    tx: &Connection,
    feed: &mut FeedChanges,
    server_id: i64,
    change: Change,
) -> Result<u64> {
    let v = bump_version(tx, server_id)?;
    feed.record(server_id, v, change);
    Ok(v)
}

/// Marks a change to a server's desired state; returns the new version.
/// Every caller records the change under that version in the feed log.
fn bump_version(tx: &Connection, server_id: i64) -> Result<u64> {
    let v: i64 = tx.query_row(
        "UPDATE servers SET version = version + 1 WHERE id = ?1 RETURNING version",
        [server_id],
        |r| r.get(0),
    )?;
    Ok(v as u64)
}

// ---------- grants ----------

#[derive(Debug, Clone)]
pub struct Grant {
    pub username: String,
    pub server: String,
    pub services: Option<Vec<String>>,
    pub direct: bool,
}

pub fn upsert_grant(
    tx: &Connection,
    user_id: i64,
    server_id: i64,
    services: Option<&[String]>,
    direct: bool,
) -> Result<()> {
    let services = services.map(|s| serde_json::to_string(s).unwrap_or_default());
    tx.execute(
        "INSERT INTO grants(user_id, server_id, services, direct) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT(user_id, server_id) DO UPDATE SET services = excluded.services, direct = excluded.direct",
        params![user_id, server_id, services, direct],
    )?;
    Ok(())
}

pub fn grant_for(tx: &Connection, user_id: i64, server_id: i64) -> Result<Option<Grant>> {
    Ok(tx
        .query_row(
            "SELECT u.username, s.name, g.services, g.direct FROM grants g
             JOIN users u ON u.id = g.user_id JOIN servers s ON s.id = g.server_id
             WHERE g.user_id = ?1 AND g.server_id = ?2",
            params![user_id, server_id],
            grant_row,
        )
        .optional()?)
}

fn grant_row(r: &rusqlite::Row) -> rusqlite::Result<Grant> {
    let services: Option<String> = r.get(2)?;
    Ok(Grant {
        username: r.get(0)?,
        server: r.get(1)?,
        services: services.and_then(|s| serde_json::from_str(&s).ok()),
        direct: r.get(3)?,
    })
}

pub fn list_grants(tx: &Connection) -> Result<Vec<Grant>> {
    let mut st = tx.prepare(
        "SELECT u.username, s.name, g.services, g.direct FROM grants g
         JOIN users u ON u.id = g.user_id JOIN servers s ON s.id = g.server_id
         ORDER BY u.username, s.name",
    )?;
    let rows = st
        .query_map([], grant_row)?
        .collect::<rusqlite::Result<_>>()?;
    Ok(rows)
}

pub fn delete_grant(tx: &Connection, user_id: i64, server_id: i64) -> Result<bool> {
    Ok(tx.execute(
        "DELETE FROM grants WHERE user_id = ?1 AND server_id = ?2",
        params![user_id, server_id],
    )? > 0)
}

// ---------- admissions ----------

#[derive(Debug, Clone)]
pub struct Admission {
    pub id: String,
    pub user_id: i64,
    pub username: String,
    pub server_id: i64,
    pub server: String,
    pub mode: AccessMode,
    pub client_key: Option<WgKey>,
    pub psk: Option<WgKey>,
    pub source: IpAddr,
    pub binding: BindingPolicy,
    pub tunnel_index: Option<u32>,
    pub services: Vec<String>,
    pub active: bool,
    pub created_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
}

impl Admission {
    pub fn client_address(&self) -> Option<Ipv4Addr> {
        self.tunnel_index.map(tunnel_address)
    }

    /// The admission as the gateway feed carries it.
    pub fn to_feed(&self) -> FeedAdmission {
        FeedAdmission {
            id: self.id.clone(),
            mode: self.mode,
            client_public_key: self.client_key,
            preshared_key: self.psk,
            source: self.source,
            binding: self.binding,
            client_address: self.client_address(),
            services: self.services.clone(),
            expires_at: self.expires_at,
        }
    }
}

pub fn tunnel_address(index: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(TUNNEL_BASE) + index)
}

const ADMISSION_COLS: &str = "a.id, a.user_id, u.username, a.server_id, s.name, a.mode, a.client_key, a.psk, a.source, a.binding, a.tunnel_index, a.services, a.state, a.created_at, a.expires_at";
const ADMISSION_FROM: &str =
    "FROM admissions a JOIN users u ON u.id = a.user_id JOIN servers s ON s.id = a.server_id";

fn admission_row(r: &rusqlite::Row) -> rusqlite::Result<Admission> {
    let mode: String = r.get(5)?;
    let key: Option<String> = r.get(6)?;
    let psk: Option<String> = r.get(7)?;
    let source: String = r.get(8)?;
    let binding: String = r.get(9)?;
    let services: String = r.get(11)?;
    let state: String = r.get(12)?;
    Ok(Admission {
        id: r.get(0)?,
        user_id: r.get(1)?,
        username: r.get(2)?,
        server_id: r.get(3)?,
        server: r.get(4)?,
        mode: if mode == "direct" {
            AccessMode::Direct
        } else {
            AccessMode::Tunnel
        },
        client_key: key.and_then(|k| k.parse().ok()),
        psk: psk.and_then(|k| k.parse().ok()),
        source: source.parse().unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        binding: binding.parse().unwrap_or_default(),
        tunnel_index: r.get::<_, Option<i64>>(10)?.map(|i| i as u32),
        services: serde_json::from_str(&services).unwrap_or_default(),
        active: state == "active",
        created_at: from_millis(r.get(13)?),
        expires_at: from_millis(r.get(14)?),
    })
}

/// What a new admission is made of; the store adds the tunnel address.
#[derive(Debug, Clone)]
pub struct NewAdmission {
    pub id: String,
    pub user_id: i64,
    pub server_id: i64,
    pub mode: AccessMode,
    pub client_key: Option<WgKey>,
    pub psk: Option<WgKey>,
    pub source: IpAddr,
    pub binding: BindingPolicy,
    pub services: Vec<String>,
    pub created_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
}

/// Inserts a pending admission (allocating the lowest free tunnel address
/// for tunnel mode) and bumps the server's version. Returns the admission
/// and the version whose acknowledgement makes it live.
pub fn insert_admission(
    tx: &Connection,
    feed: &mut FeedChanges,
    new: NewAdmission,
) -> Result<(Admission, u64)> {
    if let Some(key) = &new.client_key {
        let taken: bool = tx.query_row(
            "SELECT EXISTS(SELECT 1 FROM admissions WHERE server_id = ?1 AND client_key = ?2)",
            params![new.server_id, key.to_string()],
            |r| r.get(0),
        )?;
        if taken {
            return Err(StoreError::Conflict(
                "this public key already has an admission on this server; generate a fresh key for each session".into(),
            ));
        }
    }
    let index = match new.mode {
        AccessMode::Tunnel => Some(allocate_tunnel_index(tx, new.server_id)?),
        AccessMode::Direct => None,
    };
    tx.execute(
        "INSERT INTO admissions(id, user_id, server_id, mode, client_key, psk, source, binding,
             tunnel_index, services, state, created_at, expires_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 'pending', ?11, ?12)",
        params![
            new.id,
            new.user_id,
            new.server_id,
            match new.mode {
                AccessMode::Tunnel => "tunnel",
                AccessMode::Direct => "direct",
            },
            new.client_key.map(|k| k.to_string()),
            new.psk.map(|k| k.to_string()),
            new.source.to_string(),
            new.binding.to_string(),
            index.map(i64::from),
            serde_json::to_string(&new.services).unwrap_or_default(),
            millis(new.created_at),
            millis(new.expires_at),
        ],
    )?;
    let version = bump_version(tx, new.server_id)?;
    let adm =
        admission(tx, &new.id)?.ok_or_else(|| StoreError::NotFound("admission vanished".into()))?;
    feed.record(adm.server_id, version, Change::Upsert(adm.to_feed()));
    Ok((adm, version))
}

/// How many admissions (pending or active, not past their expiry) a
/// user holds on a server.
pub fn live_admissions_of(
    tx: &Connection,
    user_id: i64,
    server_id: i64,
    now: OffsetDateTime,
) -> Result<u32> {
    let n: i64 = tx
        .prepare_cached(
            "SELECT COUNT(*) FROM admissions
             WHERE server_id = ?1 AND user_id = ?2 AND expires_at > ?3",
        )?
        .query_row(params![server_id, user_id, millis(now)], |r| r.get(0))?;
    Ok(n as u32)
}

// Tunnel addresses. The free ones of a server are the indexes in
// `tunnel_free` (each released below the high-water mark) and every index
// from `servers.next_tunnel_index` up: the lowest free one is the first
// row of `tunnel_free` or else the mark, each found through an index, so
// taking or returning one costs O(log n) however many admissions exist.
// Every path that deletes an admission row returns its index here.

/// The SQL that finds the lowest released index (see the query-plan test).
const LOWEST_RELEASED: &str =
    "SELECT tunnel_index FROM tunnel_free WHERE server_id = ?1 ORDER BY tunnel_index LIMIT 1";

/// Takes the lowest free tunnel index of a server.
fn allocate_tunnel_index(tx: &Connection, server_id: i64) -> Result<u32> {
    let released: Option<i64> = tx
        .prepare_cached(LOWEST_RELEASED)?
        .query_row([server_id], |r| r.get(0))
        .optional()?;
    if let Some(i) = released {
        tx.prepare_cached("DELETE FROM tunnel_free WHERE server_id = ?1 AND tunnel_index = ?2")?
            .execute(params![server_id, i])?;
        return Ok(i as u32);
    }
    let next: i64 = tx
        .prepare_cached("SELECT next_tunnel_index FROM servers WHERE id = ?1")?
        .query_row([server_id], |r| r.get(0))?;
    if next > i64::from(MAX_TUNNEL_INDEX) {
        return Err(StoreError::Exhausted(
            "this server has no free tunnel address left (65,533 live admissions)".into(),
        ));
    }
    tx.prepare_cached("UPDATE servers SET next_tunnel_index = ?2 WHERE id = ?1")?
        .execute(params![server_id, next + 1])?;
    Ok(next as u32)
}

/// Returns a tunnel index to its server's free list.
fn release_tunnel_index(tx: &Connection, server_id: i64, index: u32) -> Result<()> {
    tx.prepare_cached(
        "INSERT OR IGNORE INTO tunnel_free(server_id, tunnel_index) VALUES (?1, ?2)",
    )?
    .execute(params![server_id, index])?;
    Ok(())
}

/// Every tunnel index of a server is free again (its admissions are gone).
fn reset_tunnel_indexes(tx: &Connection, server_id: i64) -> Result<()> {
    tx.execute("DELETE FROM tunnel_free WHERE server_id = ?1", [server_id])?;
    tx.execute(
        "UPDATE servers SET next_tunnel_index = ?2 WHERE id = ?1",
        params![server_id, SERVICE_INDEX + 1],
    )?;
    Ok(())
}

/// Deletes one admission row and frees its tunnel address.
fn remove_admission_row(tx: &Connection, adm: &Admission) -> Result<()> {
    tx.prepare_cached("DELETE FROM admissions WHERE id = ?1")?
        .execute([&adm.id])?;
    if let Some(i) = adm.tunnel_index {
        release_tunnel_index(tx, adm.server_id, i)?;
    }
    Ok(())
}

pub fn admission(tx: &Connection, id: &str) -> Result<Option<Admission>> {
    Ok(tx
        .query_row(
            &format!("SELECT {ADMISSION_COLS} {ADMISSION_FROM} WHERE a.id = ?1"),
            [id],
            admission_row,
        )
        .optional()?)
}

pub fn activate(tx: &Connection, id: &str) -> Result<()> {
    tx.execute("UPDATE admissions SET state = 'active' WHERE id = ?1", [id])?;
    Ok(())
}

/// Removes an admission; returns the server's new version.
pub fn delete_admission(tx: &Connection, feed: &mut FeedChanges, adm: &Admission) -> Result<u64> {
    remove_admission_row(tx, adm)?;
    let v = bump_version(tx, adm.server_id)?;
    feed.record(adm.server_id, v, Change::Remove(adm.id.clone()));
    Ok(v)
}

/// Moves an admission's expiry; returns the server's new version.
pub fn set_expiry(
    tx: &Connection,
    feed: &mut FeedChanges,
    adm: &Admission,
    expires: OffsetDateTime,
) -> Result<u64> {
    tx.execute(
        "UPDATE admissions SET expires_at = ?2 WHERE id = ?1",
        params![adm.id, millis(expires)],
    )?;
    let v = bump_version(tx, adm.server_id)?;
    let now =
        admission(tx, &adm.id)?.ok_or_else(|| StoreError::NotFound("admission vanished".into()))?;
    feed.record(adm.server_id, v, Change::Upsert(now.to_feed()));
    Ok(v)
}

/// The admissions a gateway must enforce: pending and active alike, since
/// a pending one is exactly what the gateway must install to acknowledge.
pub fn server_admissions(tx: &Connection, server_id: i64) -> Result<Vec<Admission>> {
    let mut st = tx.prepare_cached(&format!(
        "SELECT {ADMISSION_COLS} {ADMISSION_FROM} WHERE a.server_id = ?1 ORDER BY a.created_at"
    ))?;
    let rows = st
        .query_map([server_id], admission_row)?
        .collect::<rusqlite::Result<_>>()?;
    Ok(rows)
}

pub fn list_admissions(tx: &Connection) -> Result<Vec<Admission>> {
    let mut st = tx.prepare(&format!(
        "SELECT {ADMISSION_COLS} {ADMISSION_FROM} ORDER BY a.created_at"
    ))?;
    let rows = st
        .query_map([], admission_row)?
        .collect::<rusqlite::Result<_>>()?;
    Ok(rows)
}

pub fn user_server_admissions(
    tx: &Connection,
    user_id: i64,
    server_id: Option<i64>,
) -> Result<Vec<Admission>> {
    let mut st = tx.prepare_cached(&format!(
        "SELECT {ADMISSION_COLS} {ADMISSION_FROM}
         WHERE a.user_id = ?1 AND (?2 IS NULL OR a.server_id = ?2) ORDER BY a.created_at"
    ))?;
    let rows = st
        .query_map(params![user_id, server_id], admission_row)?
        .collect::<rusqlite::Result<_>>()?;
    Ok(rows)
}

/// (server id, new feed version) of each server a change touched.
pub type ServerVersions = Vec<(i64, u64)>;

/// Removes every admission past its expiry and bumps the versions of the
/// servers concerned (once each). Returns what was removed and the new
/// version of each server concerned.
pub fn expire(
    tx: &Connection,
    feed: &mut FeedChanges,
    now: OffsetDateTime,
) -> Result<(Vec<Admission>, ServerVersions)> {
    let mut st = tx.prepare_cached(&format!(
        "SELECT {ADMISSION_COLS} {ADMISSION_FROM} WHERE a.expires_at <= ?1"
    ))?;
    let gone: Vec<Admission> = st
        .query_map([millis(now)], admission_row)?
        .collect::<rusqlite::Result<_>>()?;
    drop(st);
    let mut servers = std::collections::BTreeSet::new();
    for a in &gone {
        remove_admission_row(tx, a)?;
        servers.insert(a.server_id);
    }
    let mut versions = Vec::with_capacity(servers.len());
    for s in servers {
        let v = bump_version(tx, s)?;
        for a in gone.iter().filter(|a| a.server_id == s) {
            feed.record(s, v, Change::Remove(a.id.clone()));
        }
        versions.push((s, v));
    }
    Ok((gone, versions))
}

pub fn next_expiry(tx: &Connection) -> Result<Option<OffsetDateTime>> {
    let ms: Option<i64> =
        tx.query_row("SELECT MIN(expires_at) FROM admissions", [], |r| r.get(0))?;
    Ok(ms.map(from_millis))
}

/// Pending admissions never reached their client (the control plane
/// stopped before the gateway acknowledged): remove them at start-up.
pub fn purge_pending(tx: &Connection, feed: &mut FeedChanges) -> Result<Vec<Admission>> {
    let mut st = tx.prepare(&format!(
        "SELECT {ADMISSION_COLS} {ADMISSION_FROM} WHERE a.state = 'pending'"
    ))?;
    let gone: Vec<Admission> = st
        .query_map([], admission_row)?
        .collect::<rusqlite::Result<_>>()?;
    drop(st);
    for a in &gone {
        delete_admission(tx, feed, a)?;
    }
    Ok(gone)
}

// ---------- audit ----------

/// One audit line; written in the same transaction as the change it
/// describes.
#[derive(Debug, Default, Clone)]
pub struct Audit<'a> {
    pub event: &'a str,
    pub username: Option<&'a str>,
    pub server: Option<&'a str>,
    pub admission_id: Option<&'a str>,
    pub source: Option<IpAddr>,
    pub detail: String,
}

pub fn audit(tx: &Connection, now: OffsetDateTime, a: Audit<'_>) -> Result<()> {
    tx.prepare_cached(
        "INSERT INTO audit(at, event, username, server, admission_id, source, detail)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        millis(now),
        a.event,
        a.username,
        a.server,
        a.admission_id,
        a.source.map(|s| s.to_string()),
        a.detail
    ])?;
    Ok(())
}

pub fn list_audit(tx: &Connection, limit: u32) -> Result<Vec<AuditEntry>> {
    let mut st = tx.prepare(
        "SELECT id, at, event, username, server, admission_id, source, detail
         FROM audit ORDER BY id DESC LIMIT ?1",
    )?;
    let mut rows: Vec<AuditEntry> = st
        .query_map([limit], |r| {
            Ok(AuditEntry {
                id: r.get(0)?,
                at: from_millis(r.get(1)?),
                event: r.get(2)?,
                username: r.get(3)?,
                server: r.get(4)?,
                admission_id: r.get(5)?,
                source: r.get(6)?,
                detail: r.get(7)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    rows.reverse();
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    fn open() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("control.sqlite")).unwrap();
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
        db.conn.lock().unwrap().progress_handler(
            1,
            Some(move || {
                s.fetch_add(1, Ordering::Relaxed);
                false
            }),
        );
        let index = db
            .tx_feed_blocking(|tx, feed| {
                insert_admission(tx, feed, new_admission(n, user, server))
                    .map(|(a, _)| a.tunnel_index.unwrap())
            })
            .unwrap();
        db.conn
            .lock()
            .unwrap()
            .progress_handler(0, None::<fn() -> bool>);
        (steps.load(Ordering::Relaxed), index)
    }

    /// Finding a free tunnel address used to read every admission of the
    /// server; now it is two index lookups, so admission number 20,001
    /// costs what number 11 did.
    #[test]
    fn a_tunnel_address_costs_the_same_at_20000_admissions() {
        let (_dir, db) = open();
        let (user, server) = world(&db);
        db.tx_feed_blocking(|tx, feed| {
            for n in 0..10 {
                insert_admission(tx, feed, new_admission(n, user, server))?;
            }
            Ok(())
        })
        .unwrap();
        let (few, index) = steps_of_one_insert(&db, 10, user, server);
        assert_eq!(index, SERVICE_INDEX + 11);
        db.tx_feed_blocking(|tx, feed| {
            for n in 11..20_000 {
                insert_admission(tx, feed, new_admission(n, user, server))?;
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
        db.tx_feed_blocking(|tx, feed| {
            for id in ["adm_15000", "adm_7", "adm_900"] {
                let a = admission(tx, id)?.unwrap();
                delete_admission(tx, feed, &a)?;
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
            tx.execute(
                "UPDATE servers SET next_tunnel_index = ?1",
                [MAX_TUNNEL_INDEX],
            )?;
            Ok(())
        })
        .unwrap();
        let last = db
            .tx_feed_blocking(|tx, feed| insert_admission(tx, feed, new_admission(1, user, server)))
            .unwrap()
            .0;
        assert_eq!(last.tunnel_index, Some(MAX_TUNNEL_INDEX));
        let e = db
            .tx_feed_blocking(|tx, feed| insert_admission(tx, feed, new_admission(2, user, server)))
            .unwrap_err();
        assert!(matches!(e, StoreError::Exhausted(_)), "{e}");
        // An expired admission gives its address back.
        db.tx_feed_blocking(|tx, feed| {
            expire(
                tx,
                feed,
                OffsetDateTime::now_utc() + time::Duration::hours(2),
            )
        })
        .unwrap();
        let again = db
            .tx_feed_blocking(|tx, feed| insert_admission(tx, feed, new_admission(3, user, server)))
            .unwrap()
            .0;
        assert_eq!(again.tunnel_index, Some(MAX_TUNNEL_INDEX));
    }

    /// A database written by the previous control plane (schema version
    /// 0: no free list, enrollment hashes on the server row) is brought up
    /// to date: addresses in use stay, the gaps below them are free, and
    /// an unused enrollment token still works.
    #[test]
    fn an_older_database_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sqlite");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(SCHEMA).unwrap();
            conn.execute_batch(
                "INSERT INTO users(id, username, pw_hash, admin, created_at) VALUES (1, 'alice', 'x', 0, 0);
                 INSERT INTO servers(id, name, binding, ttl_secs, enroll_hash, created_at)
                     VALUES (1, 'den', 'exact', 3600, x'0102', 0);
                 INSERT INTO admissions(id, user_id, server_id, mode, source, binding, tunnel_index,
                     services, state, created_at, expires_at)
                     VALUES ('a', 1, 1, 'tunnel', '192.0.2.1', 'exact', 2, '[]', 'active', 0, 99999999999999),
                            ('b', 1, 1, 'tunnel', '192.0.2.1', 'exact', 5, '[]', 'active', 0, 99999999999999);",
            )
            .unwrap();
        }
        let db = Db::open(&path).unwrap();
        let got: Vec<u32> = (0..4)
            .map(|n| {
                db.tx_feed_blocking(|tx, feed| insert_admission(tx, feed, new_admission(n, 1, 1)))
                    .unwrap()
                    .0
                    .tunnel_index
                    .unwrap()
            })
            .collect();
        assert_eq!(got, vec![3, 4, 6, 7]);
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
        let db = Db::open(&path).unwrap();
        let server = db.tx_blocking(|tx| server_named(tx, "den")).unwrap();
        assert_eq!(
            server.max_admissions_per_user,
            DEFAULT_MAX_ADMISSIONS_PER_USER
        );
        assert!(server.enrolled);
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
}
