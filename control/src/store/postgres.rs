//! The PostgreSQL engine, for control plane replicas sharing one
//! database.
//!
//! - A pool of connections (`deadpool-postgres`, each with its own cache
//!   of prepared statements) on a small tokio runtime of this engine's
//!   own. Transactions are the same synchronous closures as on SQLite:
//!   they run on a blocking thread that waits on that runtime for each
//!   statement, so neither the caller's runtime (a test's single thread,
//!   or the server's) nor the closure model matters to the driver.
//! - Every transaction runs at READ COMMITTED; what several replicas race
//!   on takes a row lock first (`queries::lock_server`) or an advisory
//!   lock (the login limiter). A serialization failure or deadlock runs
//!   the transaction again (at most 3 times). A broken connection is
//!   retried once on a fresh one, unless it broke during the commit
//!   (then nobody knows whether it committed: the caller gets 503).
//! - Round trips are the cost (each wakes this engine's runtime and a
//!   server process): `BEGIN` goes out with a transaction's first
//!   statement, its notifications with its `COMMIT`, and a transaction
//!   that changed nothing (or failed) does not wait for its end.
//! - Events ([`Event`]) are sent with `pg_notify` inside the transaction,
//!   so every replica hears of them exactly when (and only if) it
//!   commits; one connection per replica `LISTEN`s and feeds them to its
//!   live feeds (`live_feeds`). When that connection breaks it reconnects
//!   by itself, and after each (re)connection and every [`RESYNC`] it reads every known
//!   server's version and acknowledged version from the database, so a
//!   notification lost in between delays a waiter, never strands it.
//! - PostgreSQL down or restarting: statements fail with
//!   [`StoreError::Unavailable`] (a 503 for the client), the pool drops
//!   closed connections and makes new ones once the server is back.

use super::sql::{check_parameter_order, Cell, Row, Value};
use super::{Durability, Result, StoreError, Tx};
use crate::live_feeds::{Event, LiveFeeds};
use bytes::BytesMut;
use proto::backoff::Backoff;
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{IsNull, ToSql, Type};
use tokio_postgres::NoTls;

/// Connections each replica keeps at most.
pub const POOL_SIZE: usize = 16;
/// How often the listener reads every known server's position anyway.
pub const RESYNC: Duration = Duration::from_secs(2);
/// The notification channel replicas talk on.
const CHANNEL: &str = "hushgate";
/// The advisory lock migrations hold ("hushgate" in ASCII).
const MIGRATION_LOCK: i64 = 0x6875_7368_6761_7465;

/// A PostgreSQL connection string (`postgres://user@host/db`, or
/// `host=/run/postgresql dbname=hushgate user=hushgate`). Its password
/// is never shown: `Debug` and [`DatabaseUrl::describe`] leave it out.
#[derive(Clone)]
pub struct DatabaseUrl {
    config: tokio_postgres::Config,
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl DatabaseUrl {
    /// Parses a URL or a key=value connection string. The error never
    /// repeats the text (it may hold a password).
    pub fn parse(text: &str) -> std::result::Result<DatabaseUrl, String> {
        let mut config: tokio_postgres::Config = text.trim().parse().map_err(|e| {
            format!("the database URL is not a PostgreSQL connection string ({e}); use postgres://USER@HOST:PORT/DATABASE or host=/run/postgresql dbname=NAME user=NAME")
        })?;
        if config.get_hosts().is_empty() {
            return Err(
                "the database URL names no host: add @HOST (or ?host=/SOCKET/FOLDER)".into(),
            );
        }
        if config.get_dbname().is_none() {
            return Err("the database URL names no database: add /DATABASE".into());
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(30));
        if config.get_application_name().is_none() {
            config.application_name("hushgate-control");
        }
        Ok(DatabaseUrl { config })
    }

    /// Sets the password (read from the environment or a file, so that it
    /// never sits in argv).
    pub fn with_password(mut self, password: &str) -> DatabaseUrl {
        self.config
            .password(password.trim_end_matches(['\r', '\n']));
        self
    }

    pub fn has_password(&self) -> bool {
        self.config.get_password().is_some()
    }

    /// "PostgreSQL database 'hushgate' as 'hg' on db.example:5432": what
    /// logs and messages may show.
    pub fn describe(&self) -> String {
        let hosts: Vec<String> = self
            .config
            .get_hosts()
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let port = self
                    .config
                    .get_ports()
                    .get(i)
                    .or(self.config.get_ports().first())
                    .copied()
                    .unwrap_or(5432);
                match h {
                    tokio_postgres::config::Host::Tcp(name) => format!("{name}:{port}"),
                    tokio_postgres::config::Host::Unix(dir) => {
                        format!("{}/.s.PGSQL.{port}", dir.display())
                    }
                }
            })
            .collect();
        format!(
            "PostgreSQL database '{}' as '{}' on {}",
            self.config.get_dbname().unwrap_or("?"),
            self.config.get_user().unwrap_or("?"),
            hosts.join(", ")
        )
    }
}

/// This engine's runtime; shut down without waiting when the engine is
/// dropped (which may happen on an async worker, where waiting is not
/// allowed).
struct DbRuntime(Option<tokio::runtime::Runtime>);

impl DbRuntime {
    fn get(&self) -> &tokio::runtime::Runtime {
        self.0
            .as_ref()
            .expect("the runtime lives as long as the engine")
    }
}

impl Drop for DbRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

pub struct Postgres {
    // Dropped in this order: the listener, the pool's connections, then
    // the runtime they ran on.
    listener: Option<tokio::task::JoinHandle<()>>,
    pool: deadpool_postgres::Pool,
    url: DatabaseUrl,
    rt: DbRuntime,
}

impl std::fmt::Debug for Postgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Postgres")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(l) = self.listener.take() {
            l.abort();
        }
    }
}

/// Runs `f` where blocking on another runtime is allowed: on this thread,
/// or, inside an async runtime's worker, on a thread of its own.
pub(super) fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    if tokio::runtime::Handle::try_current().is_ok() {
        std::thread::scope(|s| match s.spawn(f).join() {
            Ok(v) => v,
            Err(p) => std::panic::resume_unwind(p),
        })
    } else {
        f()
    }
}

impl Postgres {
    /// Connects, brings the schema up to date (or refuses a newer one) and
    /// starts listening for the other replicas' events, which go to `live_feeds`.
    pub fn open(url: &DatabaseUrl, live_feeds: Arc<LiveFeeds>) -> Result<Postgres> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("hushgate-db")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Task(format!("cannot start the database runtime: {e}")))?;
        let manager = deadpool_postgres::Manager::from_config(
            url.config.clone(),
            NoTls,
            deadpool_postgres::ManagerConfig {
                recycling_method: deadpool_postgres::RecyclingMethod::Fast,
            },
        );
        let pool = deadpool_postgres::Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(5)))
            .create_timeout(Some(Duration::from_secs(5)))
            .recycle_timeout(Some(Duration::from_secs(5)))
            .build()
            .map_err(|e| StoreError::Task(format!("cannot set up the connection pool: {e}")))?;
        let mut pg = Postgres {
            listener: None,
            pool,
            url: url.clone(),
            rt: DbRuntime(Some(rt)),
        };
        off_runtime(|| pg.rt.get().block_on(migrate(&pg.pool)))?;
        pg.listener = Some(pg.rt.get().spawn(listen(
            url.config.clone(),
            pg.pool.clone(),
            live_feeds,
        )));
        Ok(pg)
    }

    pub fn url(&self) -> &DatabaseUrl {
        &self.url
    }

    pub(super) fn run<T>(
        &self,
        durability: Durability,
        f: &mut dyn FnMut(&mut Tx<'_>) -> Result<T>,
    ) -> Result<(T, Vec<Event>)> {
        let rt = self.rt.get();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut committing = false;
            let result = self.attempt(rt, durability, f, &mut committing);
            match result {
                Err(StoreError::Busy(why)) if attempt < 3 => {
                    tracing::debug!(%why, attempt, "transaction collided; running it again");
                }
                Err(StoreError::Unavailable(why)) if attempt < 2 && !committing => {
                    tracing::debug!(%why, "database connection failed; trying a fresh one");
                }
                Err(StoreError::Unavailable(why)) if committing => {
                    return Err(StoreError::InDoubt(why))
                }
                other => return other,
            }
        }
    }

    fn attempt<T>(
        &self,
        rt: &tokio::runtime::Runtime,
        durability: Durability,
        f: &mut dyn FnMut(&mut Tx<'_>) -> Result<T>,
        committing: &mut bool,
    ) -> Result<(T, Vec<Event>)> {
        let client = rt.block_on(self.pool.get()).map_err(pool_error)?;
        // Round trips are what a transaction costs here (each one a wake
        // of this engine's runtime and of the server process), so:
        // `BEGIN` is not sent on its own but in front of the first
        // statement (pipelined, one round trip); the notifications go
        // with `COMMIT` in one message; and a transaction that changed
        // nothing ends without waiting for its `COMMIT` (or a failed one
        // for its `ROLLBACK`): the connection goes back to the pool once
        // that is done, and a later transaction on it is queued behind.
        let begin = match durability {
            Durability::Durable => "BEGIN",
            // Losing this commit in a database crash costs a retry, not a
            // promise: do not wait for the disk.
            Durability::Relaxed => "BEGIN; SET LOCAL synchronous_commit TO OFF",
        };
        let mut t = Tx::new(super::Conn::Postgres(PgConn {
            rt,
            client: &client,
            begin: Some(begin),
            wrote: false,
        }));
        let out = f(&mut t);
        let events = t.take_events();
        let super::Conn::Postgres(conn) = &t.conn else {
            unreachable!("a PostgreSQL transaction")
        };
        let (pending_begin, wrote) = (conn.begin, conn.wrote);
        drop(t);
        if out.is_err() || (!wrote && events.is_empty()) {
            // Rolled back, or nothing changed: the caller need not wait.
            if pending_begin.is_none() {
                finish_later(rt, client, if out.is_err() { "ROLLBACK" } else { "COMMIT" });
            }
            return out.map(|o| (o, events));
        }
        // The notifications and the commit, in one message: if a
        // notification fails the rest is skipped and the transaction
        // stays open, aborted.
        let mut batch = pending_begin.map(|b| format!("{b}; ")).unwrap_or_default();
        for e in &events {
            // The payload is ours: letters, digits and spaces.
            let payload = e.to_payload().replace('\'', "''");
            batch.push_str(&format!("SELECT pg_notify('{CHANNEL}', '{payload}'); "));
        }
        batch.push_str("COMMIT");
        *committing = true;
        if let Err(e) = rt.block_on(client.batch_execute(&batch)) {
            let e = pg_error(e);
            if !matches!(e, StoreError::Unavailable(_)) {
                finish_later(rt, client, "ROLLBACK");
            }
            return Err(e);
        }
        out.map(|o| (o, events))
    }
}

/// Sends `sql` (`COMMIT` or `ROLLBACK` of a transaction whose outcome
/// no longer matters to its caller) and returns the connection to the
/// pool once it is done, without making anyone wait. A connection that
/// fails at it is closed, so the pool drops it rather than hand out one
/// still inside a transaction.
fn finish_later(
    rt: &tokio::runtime::Runtime,
    client: deadpool_postgres::Object,
    sql: &'static str,
) {
    rt.spawn(async move {
        if client.batch_execute(sql).await.is_err() {
            drop(deadpool_postgres::Object::take(client));
        }
    });
}

/// A transaction's connection, as queries see it.
pub(crate) struct PgConn<'a> {
    rt: &'a tokio::runtime::Runtime,
    client: &'a deadpool_postgres::Object,
    /// The `BEGIN` still to send, in front of the first statement.
    begin: Option<&'static str>,
    /// Whether a statement may have changed something.
    wrote: bool,
}

impl PgConn<'_> {
    pub(super) fn exec(&mut self, sql: &str, args: &[Value<'_>]) -> Result<u64> {
        check_parameter_order(sql)?;
        let params: Vec<&(dyn ToSql + Sync)> =
            args.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
        self.wrote = true;
        let client = self.client;
        self.rt
            .block_on(after_begin(client, self.begin.take(), async {
                let st = client.prepare_cached(sql).await?;
                client.execute(&st, &params).await
            }))
            .map_err(pg_error)
    }

    pub(super) fn query(&mut self, sql: &str, args: &[Value<'_>]) -> Result<Vec<Row>> {
        check_parameter_order(sql)?;
        let params: Vec<&(dyn ToSql + Sync)> =
            args.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
        // A query may change things too (UPDATE ... RETURNING), or lock.
        if !sql.trim_start().starts_with("SELECT") || sql.contains("FOR UPDATE") {
            self.wrote = true;
        }
        let client = self.client;
        let rows = self
            .rt
            .block_on(after_begin(client, self.begin.take(), async {
                let st = client.prepare_cached(sql).await?;
                client.query(&st, &params).await
            }))
            .map_err(pg_error)?;
        rows.iter().map(decode).collect()
    }
}

/// Runs `statement`, after `begin` when there is one, both sent before
/// either answer is read (one round trip).
async fn after_begin<R>(
    client: &deadpool_postgres::Object,
    begin: Option<&str>,
    statement: impl std::future::Future<Output = std::result::Result<R, tokio_postgres::Error>>,
) -> std::result::Result<R, tokio_postgres::Error> {
    use std::future::Future;
    use std::task::Poll;
    let Some(begin) = begin else {
        return statement.await;
    };
    let mut b = std::pin::pin!(client.batch_execute(begin));
    // Polled once, BEGIN is queued on the connection (which sends in
    // order), so it goes out ahead of the statement. Both are then polled
    // together: an answer is only read off the connection while its
    // receiver is polled.
    match std::future::poll_fn(|cx| Poll::Ready(b.as_mut().poll(cx))).await {
        Poll::Ready(r) => {
            r?;
            statement.await
        }
        Poll::Pending => {
            let (b, r) = tokio::join!(b, statement);
            b?;
            r
        }
    }
}

impl ToSql for Value<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> std::result::Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::I64(v) => match *ty {
                Type::INT4 => i32::try_from(*v)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(*v)?.to_sql(ty, out),
                Type::FLOAT8 => (*v as f64).to_sql(ty, out),
                _ => v.to_sql(ty, out),
            },
            Value::F64(v) => v.to_sql(ty, out),
            Value::Bool(b) => b.to_sql(ty, out),
            Value::Text(s) => s.as_ref().to_sql(ty, out),
            Value::Bytes(b) => b.as_ref().to_sql(ty, out),
        }
    }

    // Every value says yes here; the wrong kind for a column fails in
    // `to_sql` above (or at the server) with a clear error.
    fn accepts(_: &Type) -> bool {
        true
    }

    tokio_postgres::types::to_sql_checked!();
}

fn decode(row: &tokio_postgres::Row) -> Result<Row> {
    let mut cells = Vec::with_capacity(row.len());
    for (i, col) in row.columns().iter().enumerate() {
        let bad =
            |e: tokio_postgres::Error| StoreError::Decode(format!("column '{}': {e}", col.name()));
        let cell = match *col.type_() {
            Type::INT8 => row
                .try_get::<_, Option<i64>>(i)
                .map_err(bad)?
                .map_or(Cell::Null, Cell::I64),
            Type::INT4 => row
                .try_get::<_, Option<i32>>(i)
                .map_err(bad)?
                .map_or(Cell::Null, |v| Cell::I64(v.into())),
            Type::INT2 => row
                .try_get::<_, Option<i16>>(i)
                .map_err(bad)?
                .map_or(Cell::Null, |v| Cell::I64(v.into())),
            Type::BOOL => row
                .try_get::<_, Option<bool>>(i)
                .map_err(bad)?
                .map_or(Cell::Null, Cell::Bool),
            Type::FLOAT8 => row
                .try_get::<_, Option<f64>>(i)
                .map_err(bad)?
                .map_or(Cell::Null, Cell::F64),
            Type::FLOAT4 => row
                .try_get::<_, Option<f32>>(i)
                .map_err(bad)?
                .map_or(Cell::Null, |v| Cell::F64(v.into())),
            Type::TEXT | Type::VARCHAR | Type::NAME | Type::BPCHAR => row
                .try_get::<_, Option<String>>(i)
                .map_err(bad)?
                .map_or(Cell::Null, Cell::Text),
            Type::BYTEA => row
                .try_get::<_, Option<Vec<u8>>>(i)
                .map_err(bad)?
                .map_or(Cell::Null, Cell::Bytes),
            Type::VOID => Cell::Null,
            ref other => {
                return Err(StoreError::Decode(format!(
                    "column '{}' has type {other}, which the store does not read",
                    col.name()
                )))
            }
        };
        cells.push(cell);
    }
    Ok(Row(cells))
}

/// Sorts a driver error into what the caller should do about it.
fn pg_error(e: tokio_postgres::Error) -> StoreError {
    if let Some(db) = e.as_db_error() {
        let code = db.code();
        if *code == SqlState::UNIQUE_VIOLATION {
            return StoreError::Conflict(format!(
                "another request changed the same thing at the same moment ({}); try again",
                db.constraint().unwrap_or("a unique key")
            ));
        }
        if *code == SqlState::FOREIGN_KEY_VIOLATION {
            return StoreError::NotFound(
                "something this change refers to was removed meanwhile; try again".into(),
            );
        }
        if *code == SqlState::T_R_SERIALIZATION_FAILURE || *code == SqlState::T_R_DEADLOCK_DETECTED
        {
            return StoreError::Busy(db.message().to_string());
        }
        let class = code.code().get(..2).unwrap_or("");
        if class == "08"
            || class == "57"
            || class == "53"
            || *code == SqlState::READ_ONLY_SQL_TRANSACTION
        {
            // Connection exceptions, shutdowns and restarts, resources
            // running out, a standby: the server, not the request.
            return StoreError::Unavailable(db.message().to_string());
        }
        return StoreError::Database(db.message().to_string());
    }
    // The driver's own text is only the kind ("error connecting to
    // server"); the reason (refused, no such socket) is in its sources.
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    let mut io = e.is_closed();
    while let Some(s) = source {
        io |= s.downcast_ref::<std::io::Error>().is_some();
        let reason = s.to_string();
        if !text.contains(&reason) {
            text = format!("{text}: {reason}");
        }
        source = s.source();
    }
    if io || text.contains("timed out") {
        StoreError::Unavailable(text)
    } else {
        StoreError::Database(text)
    }
}

fn pool_error(e: deadpool_postgres::PoolError) -> StoreError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => match pg_error(e) {
            StoreError::Database(m) => StoreError::Unavailable(m),
            other => other,
        },
        deadpool_postgres::PoolError::Timeout(_) => StoreError::Unavailable(
            "no database connection could be had in time (the database is down, or every connection is busy)".into(),
        ),
        other => StoreError::Unavailable(other.to_string()),
    }
}

/// The schema, one entry per version: entry N-1 brings a database from
/// version N-1 to N. Never edit a published entry; add one.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE settings (
    key TEXT PRIMARY KEY,
    value BYTEA NOT NULL
);
CREATE TABLE users (
    id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    username TEXT NOT NULL UNIQUE,
    pw_hash TEXT NOT NULL,
    admin BOOLEAN NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE TABLE tokens (
    token_hash BYTEA PRIMARY KEY,
    user_id BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    expires_at BIGINT NOT NULL
);
CREATE INDEX tokens_user ON tokens(user_id);
CREATE INDEX tokens_expiry ON tokens(expires_at);
CREATE TABLE servers (
    id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    binding TEXT NOT NULL,
    ttl_secs BIGINT NOT NULL,
    cred_hash BYTEA UNIQUE,
    gateway_key TEXT,
    endpoint TEXT,
    services TEXT NOT NULL DEFAULT '[]',
    direct_services TEXT NOT NULL DEFAULT '[]',
    version BIGINT NOT NULL DEFAULT 1,
    created_at BIGINT NOT NULL,
    max_admissions_per_user BIGINT NOT NULL DEFAULT 8,
    next_tunnel_index BIGINT NOT NULL DEFAULT 2,
    feed_floor BIGINT NOT NULL DEFAULT 1
);
CREATE TABLE grants (
    user_id BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    server_id BIGINT NOT NULL REFERENCES servers(id) ON DELETE CASCADE,
    services TEXT,
    direct BOOLEAN NOT NULL,
    PRIMARY KEY (user_id, server_id)
);
CREATE INDEX grants_server ON grants(server_id);
CREATE TABLE admissions (
    id TEXT PRIMARY KEY,
    user_id BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    server_id BIGINT NOT NULL REFERENCES servers(id) ON DELETE CASCADE,
    mode TEXT NOT NULL,
    client_key TEXT,
    psk TEXT,
    source TEXT NOT NULL,
    binding TEXT NOT NULL,
    tunnel_index BIGINT,
    services TEXT NOT NULL,
    state TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    pending_until BIGINT
);
CREATE UNIQUE INDEX admissions_tunnel_index
    ON admissions(server_id, tunnel_index) WHERE tunnel_index IS NOT NULL;
CREATE UNIQUE INDEX admissions_client_key
    ON admissions(server_id, client_key) WHERE client_key IS NOT NULL;
CREATE INDEX admissions_expiry ON admissions(expires_at);
CREATE INDEX admissions_user ON admissions(user_id, server_id);
CREATE INDEX admissions_pending ON admissions(pending_until) WHERE state = 'pending';
CREATE TABLE audit (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at BIGINT NOT NULL,
    event TEXT NOT NULL,
    username TEXT,
    server TEXT,
    admission_id TEXT,
    source TEXT,
    detail TEXT NOT NULL
);
CREATE TABLE enrollment_tokens (
    id TEXT PRIMARY KEY,
    server_id BIGINT NOT NULL REFERENCES servers(id) ON DELETE CASCADE,
    token_hash BYTEA NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX enrollment_tokens_server ON enrollment_tokens(server_id);
CREATE TABLE tunnel_free (
    server_id BIGINT NOT NULL REFERENCES servers(id) ON DELETE CASCADE,
    tunnel_index BIGINT NOT NULL,
    PRIMARY KEY (server_id, tunnel_index)
);
CREATE TABLE feed_touch (
    server_id BIGINT NOT NULL REFERENCES servers(id) ON DELETE CASCADE,
    admission_id TEXT NOT NULL,
    version BIGINT NOT NULL,
    PRIMARY KEY (server_id, admission_id)
);
CREATE INDEX feed_touch_version ON feed_touch(server_id, version);
CREATE TABLE gateway_presence (
    server_id BIGINT PRIMARY KEY REFERENCES servers(id) ON DELETE CASCADE,
    acked_version BIGINT NOT NULL DEFAULT 0,
    last_seen BIGINT,
    held_until BIGINT,
    holder TEXT
);
CREATE TABLE login_buckets (
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    tokens DOUBLE PRECISION NOT NULL,
    at BIGINT NOT NULL,
    PRIMARY KEY (kind, key)
);
CREATE INDEX login_buckets_at ON login_buckets(at);
CREATE TABLE login_suspects (
    username TEXT NOT NULL,
    source TEXT NOT NULL,
    at BIGINT NOT NULL,
    PRIMARY KEY (username, source)
);
CREATE INDEX login_suspects_at ON login_suspects(at);
"#,
    r#"
-- Version 2 (issue 17): what the gateway reported about its network
-- (port mapping, IPv6, the address it was seen from) and the last
-- reachability check, each as JSON; the one-off admission of a check
-- in progress (JSON) and when it ends (Unix seconds).
ALTER TABLE servers ADD COLUMN network TEXT;
ALTER TABLE servers ADD COLUMN reachability TEXT;
ALTER TABLE servers ADD COLUMN probe TEXT;
ALTER TABLE servers ADD COLUMN probe_id TEXT;
ALTER TABLE servers ADD COLUMN probe_until BIGINT;
"#,
    r#"
-- Version 3: tenancy (SQLite's version 5).
ALTER TABLE users ADD COLUMN totp_secret BYTEA;
ALTER TABLE users ADD COLUMN totp_pending BYTEA;
ALTER TABLE users ADD COLUMN totp_last_step BIGINT;
ALTER TABLE tokens ADD COLUMN mfa BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE tokens ADD COLUMN device_id TEXT;
ALTER TABLE servers ADD COLUMN owner_id BIGINT REFERENCES users(id) ON DELETE CASCADE;
ALTER TABLE servers ADD COLUMN direct_mode BOOLEAN NOT NULL DEFAULT TRUE;
ALTER TABLE servers ADD COLUMN require_2fa BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE servers ADD COLUMN approve_devices BOOLEAN NOT NULL DEFAULT FALSE;
CREATE INDEX servers_owner ON servers(owner_id);
ALTER TABLE audit ADD COLUMN owner_id BIGINT;
ALTER TABLE audit ADD COLUMN server_id BIGINT;
ALTER TABLE audit ADD COLUMN user_id BIGINT;
CREATE INDEX audit_owner ON audit(owner_id, id);
CREATE INDEX audit_server ON audit(server_id, id);
CREATE INDEX audit_user ON audit(user_id, id);
CREATE TABLE invitations (
    id TEXT PRIMARY KEY,
    server_id BIGINT REFERENCES servers(id) ON DELETE CASCADE,
    created_by BIGINT REFERENCES users(id) ON DELETE CASCADE,
    token_hash BYTEA NOT NULL UNIQUE,
    services TEXT,
    direct BOOLEAN NOT NULL,
    uses_left BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX invitations_server ON invitations(server_id);
CREATE TABLE recovery_codes (
    user_id BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    code_hash BYTEA NOT NULL,
    PRIMARY KEY (user_id, code_hash)
);
CREATE TABLE devices (
    id TEXT PRIMARY KEY,
    user_id BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    cred_hash BYTEA NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    last_used BIGINT
);
CREATE INDEX devices_user ON devices(user_id);
CREATE TABLE device_approvals (
    device_id TEXT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    server_id BIGINT NOT NULL REFERENCES servers(id) ON DELETE CASCADE,
    state TEXT NOT NULL,
    requested_at BIGINT NOT NULL,
    decided_at BIGINT,
    PRIMARY KEY (device_id, server_id)
);
CREATE INDEX device_approvals_server ON device_approvals(server_id, state);
ALTER TABLE admissions ADD COLUMN device_id TEXT;
"#,
    r#"
-- Version 4: sign-in by code (SQLite's version 6).
CREATE TABLE device_codes (
    id TEXT PRIMARY KEY,
    device_hash BYTEA NOT NULL UNIQUE,
    user_hash BYTEA NOT NULL UNIQUE,
    device_name TEXT NOT NULL,
    source TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    interval_ms BIGINT NOT NULL,
    last_poll BIGINT,
    state TEXT NOT NULL,
    user_id BIGINT REFERENCES users(id) ON DELETE CASCADE,
    mfa BOOLEAN NOT NULL DEFAULT FALSE,
    decided_at BIGINT
);
CREATE INDEX device_codes_expiry ON device_codes(expires_at);
ALTER TABLE devices ADD COLUMN sign_in BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE devices ADD COLUMN sign_in_mfa BOOLEAN NOT NULL DEFAULT FALSE;
"#,
];

/// The schema version this binary brings a database to.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Applies the missing migrations in one transaction, under an advisory
/// lock so that replicas starting together migrate once. A database of a
/// newer version is refused before anything changes.
async fn migrate(pool: &deadpool_postgres::Pool) -> Result<()> {
    let mut client = pool.get().await.map_err(pool_error)?;
    let tx = client.transaction().await.map_err(pg_error)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(pg_error)?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS hushgate_schema (version BIGINT NOT NULL)")
        .await
        .map_err(pg_error)?;
    let version: i64 = tx
        .query_opt("SELECT version FROM hushgate_schema", &[])
        .await
        .map_err(pg_error)?
        .map(|r| r.get(0))
        .unwrap_or(0);
    if version > SCHEMA_VERSION {
        return Err(StoreError::Schema(format!(
            "the database has schema version {version}, newer than this hushgate knows ({SCHEMA_VERSION}): a newer hushgate migrated it; run that version or a newer one on every replica (nothing was changed)"
        )));
    }
    if version == SCHEMA_VERSION {
        return Ok(());
    }
    for m in &MIGRATIONS[version as usize..] {
        tx.batch_execute(m).await.map_err(pg_error)?;
    }
    tx.execute("DELETE FROM hushgate_schema", &[])
        .await
        .map_err(pg_error)?;
    tx.execute(
        "INSERT INTO hushgate_schema(version) VALUES ($1)",
        &[&SCHEMA_VERSION],
    )
    .await
    .map_err(pg_error)?;
    tx.commit().await.map_err(pg_error)?;
    tracing::info!(
        from = version,
        to = SCHEMA_VERSION,
        "database schema migrated"
    );
    Ok(())
}

/// Listens for the other replicas' events for as long as the engine
/// lives, reconnecting by itself (see the module docs).
async fn listen(
    config: tokio_postgres::Config,
    pool: deadpool_postgres::Pool,
    live_feeds: Arc<LiveFeeds>,
) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let mut was_up = true;
    loop {
        let (client, mut connection) = match config.connect(NoTls).await {
            Ok(c) => c,
            Err(e) => {
                if was_up {
                    tracing::warn!(error = %pg_error(e), "cannot listen for other replicas' changes; retrying");
                    was_up = false;
                }
                let wait = backoff.next_exact();
                tokio::time::sleep(wait).await;
                continue;
            }
        };
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        let driver = tokio::spawn(async move {
            while let Some(m) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                match m {
                    Ok(tokio_postgres::AsyncMessage::Notification(n)) => {
                        if tx.send(n.payload().to_string()).is_err() {
                            break;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        });
        if let Err(e) = client.batch_execute(&format!("LISTEN {CHANNEL}")).await {
            tracing::warn!(error = %pg_error(e), "cannot listen for other replicas' changes; retrying");
            driver.abort();
            let wait = backoff.next_exact();
            tokio::time::sleep(wait).await;
            continue;
        }
        backoff.reset();
        if !was_up {
            tracing::info!("listening for other replicas' changes again");
        }
        resync(&pool, &live_feeds).await;
        let mut tick = tokio::time::interval(RESYNC);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                m = rx.recv() => match m {
                    Some(text) => match Event::from_payload(&text) {
                        Some(e) => live_feeds.apply(e),
                        None => tracing::debug!(%text, "an unknown notification"),
                    },
                    None => break,
                },
                _ = tick.tick() => resync(&pool, &live_feeds).await,
            }
        }
        driver.abort();
        tracing::warn!("lost the connection that hears other replicas' changes; reconnecting");
        // The failures to reconnect are not reported again, the
        // recovery is.
        was_up = false;
    }
}

/// Reads the version and acknowledged version of every server this
/// replica knows, and forgets those that are gone: what notifications
/// would have said, for any that were missed.
async fn resync(pool: &deadpool_postgres::Pool, live_feeds: &LiveFeeds) {
    let known = live_feeds.known();
    if known.is_empty() {
        return;
    }
    let rows = async {
        let client = pool.get().await.map_err(pool_error)?;
        client
            .query(
                "SELECT s.id, s.version, COALESCE(p.acked_version, 0)
                 FROM servers s LEFT JOIN gateway_presence p ON p.server_id = s.id
                 WHERE s.id = ANY($1)",
                &[&known],
            )
            .await
            .map_err(pg_error)
    }
    .await;
    let rows = match rows {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(error = %e, "cannot read the servers' positions");
            return;
        }
    };
    let mut present = std::collections::HashSet::new();
    for r in rows {
        let (id, version, acked): (i64, i64, i64) = (r.get(0), r.get(1), r.get(2));
        present.insert(id);
        live_feeds.apply(Event::Version {
            server: id,
            version: version.max(0) as u64,
        });
        live_feeds.apply(Event::Acked {
            server: id,
            version: acked.max(0) as u64,
        });
    }
    for id in known {
        if !present.contains(&id) {
            live_feeds.apply(Event::Removed { server: id });
        }
    }
}
