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

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Exhausted(String),
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
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
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

pub fn delete_user(tx: &Connection, user_id: i64) -> Result<()> {
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

pub fn purge_tokens(tx: &Connection, now: OffsetDateTime) -> Result<usize> {
    Ok(tx.execute("DELETE FROM tokens WHERE expires_at <= ?1", [millis(now)])?)
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
}

const SERVER_COLS: &str =
    "id, name, binding, ttl_secs, cred_hash IS NOT NULL, gateway_key, endpoint, services, direct_services, version";

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
    })
}

pub fn create_server(
    tx: &Connection,
    name: &str,
    binding: BindingPolicy,
    ttl_secs: u64,
    enroll_hash: &[u8],
    now: OffsetDateTime,
) -> Result<()> {
    if server_by_name(tx, name)?.is_some() {
        return Err(StoreError::Conflict(format!(
            "a server named '{name}' already exists"
        )));
    }
    tx.execute(
        "INSERT INTO servers(name, binding, ttl_secs, enroll_hash, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            name,
            binding.to_string(),
            ttl_secs as i64,
            enroll_hash,
            millis(now)
        ],
    )?;
    Ok(())
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

/// Consumes a one-time enrollment token: the server it names gets the
/// gateway's credential and the token can never be used again.
pub fn enroll(tx: &Connection, enroll_hash: &[u8], cred_hash: &[u8]) -> Result<Option<Server>> {
    let id: Option<i64> = tx
        .query_row(
            "SELECT id FROM servers WHERE enroll_hash = ?1",
            [enroll_hash],
            |r| r.get(0),
        )
        .optional()?;
    let Some(id) = id else { return Ok(None) };
    tx.execute(
        "UPDATE servers SET enroll_hash = NULL, cred_hash = ?2 WHERE id = ?1",
        params![id, cred_hash],
    )?;
    Ok(Some(server_by_id(tx, id)?))
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
        let v = bump_version(tx, server_id)?;
        feed.record(server_id, v, Change::Reset);
    }
    Ok(())
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
        AccessMode::Tunnel => Some(free_tunnel_index(tx, new.server_id)?),
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

fn free_tunnel_index(tx: &Connection, server_id: i64) -> Result<u32> {
    let mut st = tx.prepare_cached(
        "SELECT tunnel_index FROM admissions
         WHERE server_id = ?1 AND tunnel_index IS NOT NULL ORDER BY tunnel_index",
    )?;
    let mut want = SERVICE_INDEX + 1;
    let mut rows = st.query([server_id])?;
    while let Some(r) = rows.next()? {
        let used: i64 = r.get(0)?;
        if used as u32 > want {
            break;
        }
        if used as u32 == want {
            want += 1;
        }
    }
    if want > MAX_TUNNEL_INDEX {
        return Err(StoreError::Exhausted(
            "this server has no free tunnel address left (65,533 live admissions)".into(),
        ));
    }
    Ok(want)
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
    tx.execute("DELETE FROM admissions WHERE id = ?1", [&adm.id])?;
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
    Ok(list_admissions(tx)?
        .into_iter()
        .filter(|a| a.user_id == user_id && server_id.is_none_or(|s| s == a.server_id))
        .collect())
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
        tx.execute("DELETE FROM admissions WHERE id = ?1", [&a.id])?;
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
