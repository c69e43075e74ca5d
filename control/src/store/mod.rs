//! The control plane's durable state, on one of two engines behind one
//! interface:
//!
//! - **SQLite** (the default, zero setup): one file in the state folder,
//!   WAL mode, `synchronous=FULL`, so a commit is on disk before any
//!   caller hears of it. One process owns it.
//! - **PostgreSQL** (`--database postgres://...`): any number of control
//!   plane replicas share one database. Each replica keeps a pool of
//!   connections, and one more connection that `LISTEN`s for what the
//!   others commit (see [`postgres`]).
//!
//! # One transaction, one closure
//!
//! A request's work is a synchronous closure over a [`Tx`] that
//! [`Db::tx`] runs in one transaction on a blocking thread: its change
//! and its audit line commit together or not at all. The queries are
//! plain functions over `&mut Tx` ([`queries`], re-exported here), each
//! written **once** for both engines. On PostgreSQL a transaction that
//! lost a serialization race or a deadlock is run again (so a closure may
//! run more than once: it must only touch the database).
//!
//! Each engine has its own driver, chosen for what that engine needs:
//! `rusqlite` for SQLite (in-process, the online backup API behind
//! `hushgate control backup`, the progress handler tests count work
//! with), and `tokio-postgres` with the `deadpool-postgres` pool for
//! PostgreSQL (pipelined async protocol, prepared-statement cache per
//! connection, `LISTEN`/`NOTIFY`). The PostgreSQL side runs on a small
//! runtime of its own that the blocking closures wait on, which keeps the
//! closure model (and every query) identical for both engines. sqlx was
//! the alternative: it would have meant async closures over transactions
//! (awkward to borrow across), rewriting every query, and no SQLite
//! backup API.
//!
//! # The SQL both engines accept
//!
//! - Parameters are `$1`, `$2`, ... and must **first appear in that
//!   order** (SQLite numbers them by first appearance, PostgreSQL by
//!   number; [`sql::check_parameter_order`] refuses anything else). Build
//!   them with [`crate::args!`].
//! - Integers are `BIGINT` on PostgreSQL (`INTEGER` on SQLite): pass
//!   `i64` (or `u32`/`u64`, converted); booleans are `BOOLEAN` on
//!   PostgreSQL and 0/1 on SQLite: [`Row::bool`] reads both. Secrets are
//!   `BYTEA`/`BLOB`, times are milliseconds since 1970 ([`millis`]).
//! - Upserts with `ON CONFLICT ... DO UPDATE SET x = excluded.x`,
//!   `ON CONFLICT DO NOTHING` (not `INSERT OR IGNORE`), `RETURNING`,
//!   `COALESCE`, `CASE WHEN` (not `GREATEST`/`MAX(a, b)`), `CAST(x AS
//!   BIGINT)` (not `x::bigint`).
//! - What exists on one engine only (`FOR UPDATE`, advisory locks,
//!   `pg_notify`) goes behind `if tx.engine() == Engine::Postgres`.
//!
//! # How to add a query (or a table)
//!
//! 1. A table: add a migration to **both** engines, as the next entry of
//!    `sqlite::MIGRATIONS` and `postgres::MIGRATIONS` (never edit a
//!    published one; a database at a newer version than the binary is
//!    refused at start without changes). Use the column types above.
//! 2. A query: a `pub fn` in [`queries`] taking `tx: &mut Tx` and calling
//!    `tx.exec` / `tx.query` / `tx.query_opt` / `tx.query_one` with
//!    `$N` SQL and `args![...]`; decode rows with the [`Row`] getters.
//!    A change several replicas race on takes a lock first (see
//!    [`lock_server`]); a change to a server's admissions goes through
//!    [`changed`] (the feed version and history) in the same transaction.
//! 3. Call it from a handler inside `st.db.tx(move |tx| ...)`.
//! 4. Test it: the API tests run against both engines (`control/tests`,
//!    the `both_engines!` macro); a unit test in [`queries`] may too.

mod device_codes;
pub mod postgres;
mod queries;
mod sql;
pub mod sqlite;
mod tenancy;

pub use device_codes::*;
pub use postgres::DatabaseUrl;
pub use queries::*;
pub use sql::{check_parameter_order, Cell, Row, Value};
pub use tenancy::*;

use crate::live_feeds::{Event, LiveFeeds};
use std::path::PathBuf;
use std::sync::Arc;

/// Which engine a database runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

/// Where the control plane keeps its state.
#[derive(Debug, Clone)]
pub enum Database {
    /// A SQLite file (the default: `STATE/control.sqlite`).
    Sqlite(PathBuf),
    /// A PostgreSQL database that replicas share.
    Postgres(Box<DatabaseUrl>),
}

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
    /// One of the operator's limits (see [`crate::limits`]).
    #[error("{message}")]
    Limit {
        name: &'static str,
        max: u64,
        message: String,
    },
    /// The database cannot be reached right now (PostgreSQL stopped or
    /// restarting, the network to it down): try again shortly.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    /// The connection broke while a commit was under way: the change may
    /// or may not be stored.
    #[error("the database connection broke while committing: {0}")]
    InDoubt(String),
    /// Concurrent transactions collided and retries ran out.
    #[error("the database is busy: {0}")]
    Busy(String),
    /// The schema is not one this binary can use.
    #[error("{0}")]
    Schema(String),
    #[error("database error: {0}")]
    Database(String),
    #[error("a stored value cannot be read: {0}")]
    Decode(String),
    #[error("database task failed: {0}")]
    Task(String),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Database(e.to_string())
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// Whether a transaction's commit must be durable before it returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Durability {
    /// Every change a caller hears of (the default).
    Durable,
    /// Records whose loss in a database crash costs nothing but a retry
    /// (a gateway's acknowledgement, its last poll): on PostgreSQL the
    /// commit does not wait for the disk.
    Relaxed,
}

/// A handle on the database, shared by all requests. Cheap to clone.
#[derive(Clone)]
pub struct Db {
    inner: Arc<DbInner>,
}

struct DbInner {
    engine: EngineImpl,
    /// Hears of every committed event of this process.
    live_feeds: Arc<LiveFeeds>,
    /// Seconds each transaction took, commit included (the metrics'
    /// database latency).
    latency: prometheus_client::metrics::histogram::Histogram,
}

/// Both boxed: which variant is larger depends on the features the
/// drivers are built with, and the engine is reached once per transaction.
enum EngineImpl {
    Sqlite(Box<sqlite::Sqlite>),
    Postgres(Box<postgres::Postgres>),
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("database", &self.describe())
            .finish_non_exhaustive()
    }
}

impl Db {
    /// Opens (creating, migrating) the database; events of committed
    /// transactions go to `live_feeds`.
    pub fn open(database: &Database, live_feeds: Arc<LiveFeeds>) -> Result<Db> {
        let engine = match database {
            Database::Sqlite(path) => EngineImpl::Sqlite(Box::new(sqlite::Sqlite::open(path)?)),
            Database::Postgres(url) => {
                EngineImpl::Postgres(Box::new(postgres::Postgres::open(url, live_feeds.clone())?))
            }
        };
        Ok(Db {
            inner: Arc::new(DbInner {
                engine,
                live_feeds,
                latency: prometheus_client::metrics::histogram::Histogram::new(
                    crate::metrics::LATENCY_BUCKETS,
                ),
            }),
        })
    }

    pub fn engine(&self) -> Engine {
        match &self.inner.engine {
            EngineImpl::Sqlite(_) => Engine::Sqlite,
            EngineImpl::Postgres(_) => Engine::Postgres,
        }
    }

    /// Whether other replicas may share this database (PostgreSQL): live
    /// state that one process could keep in memory (acknowledgements,
    /// which gateway polls where, login limits) must then go through it.
    pub fn shared(&self) -> bool {
        self.engine() == Engine::Postgres
    }

    /// Where the data lives, for logs and messages (never a password).
    pub fn describe(&self) -> String {
        match &self.inner.engine {
            EngineImpl::Sqlite(s) => format!("SQLite database {}", s.path().display()),
            EngineImpl::Postgres(p) => p.url().describe(),
        }
    }

    /// The SQLite engine, for what only it has (the online backup).
    pub fn sqlite(&self) -> Option<&sqlite::Sqlite> {
        match &self.inner.engine {
            EngineImpl::Sqlite(s) => Some(s),
            EngineImpl::Postgres(_) => None,
        }
    }

    /// The PostgreSQL engine, for what only it has (the notification
    /// listener).
    pub fn postgres(&self) -> Option<&postgres::Postgres> {
        match &self.inner.engine {
            EngineImpl::Sqlite(_) => None,
            EngineImpl::Postgres(p) => Some(p),
        }
    }

    pub fn live_feeds(&self) -> &Arc<LiveFeeds> {
        &self.inner.live_feeds
    }

    /// Runs `f` in one transaction on a blocking thread and commits it.
    /// An error rolls everything back. Events the transaction raised go
    /// to the live feeds (and, on PostgreSQL, to every replica) after the commit.
    pub async fn tx<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnMut(&mut Tx<'_>) -> Result<T> + Send + 'static,
    {
        self.spawn_tx(Durability::Durable, f).await
    }

    /// [`Db::tx`] for records whose commit need not wait for the disk
    /// (see [`Durability::Relaxed`]).
    pub async fn tx_relaxed<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnMut(&mut Tx<'_>) -> Result<T> + Send + 'static,
    {
        self.spawn_tx(Durability::Relaxed, f).await
    }

    /// The transaction latency histogram (registered by the metrics).
    pub fn latency(&self) -> prometheus_client::metrics::histogram::Histogram {
        self.inner.latency.clone()
    }

    async fn spawn_tx<T, F>(&self, durability: Durability, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnMut(&mut Tx<'_>) -> Result<T> + Send + 'static,
    {
        let db = self.clone();
        tokio::task::spawn_blocking(move || db.run(durability, f))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }

    /// The same, synchronously (start-up, commands and tests). Safe to
    /// call from inside an async runtime: the PostgreSQL engine then runs
    /// it on a thread of its own.
    pub fn tx_blocking<T, F>(&self, f: F) -> Result<T>
    where
        T: Send,
        F: FnMut(&mut Tx<'_>) -> Result<T> + Send,
    {
        if self.shared() {
            postgres::off_runtime(|| self.run(Durability::Durable, f))
        } else {
            self.run(Durability::Durable, f)
        }
    }

    fn run<T, F>(&self, durability: Durability, mut f: F) -> Result<T>
    where
        F: FnMut(&mut Tx<'_>) -> Result<T>,
    {
        let started = std::time::Instant::now();
        let ran = match &self.inner.engine {
            EngineImpl::Sqlite(s) => s.run(&mut f),
            EngineImpl::Postgres(p) => p.run(durability, &mut f),
        };
        self.inner.latency.observe(started.elapsed().as_secs_f64());
        let (out, events) = ran?;
        for e in events {
            self.inner.live_feeds.apply(e);
        }
        Ok(out)
    }
}

/// One open transaction: the only way queries reach the database.
pub struct Tx<'a> {
    conn: Conn<'a>,
    /// What to announce once this transaction commits.
    events: Vec<Event>,
}

enum Conn<'a> {
    Sqlite(&'a rusqlite::Connection),
    Postgres(postgres::PgConn<'a>),
}

impl std::fmt::Debug for Tx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tx")
            .field("engine", &self.engine())
            .finish_non_exhaustive()
    }
}

impl<'a> Tx<'a> {
    fn new(conn: Conn<'a>) -> Tx<'a> {
        Tx {
            conn,
            events: Vec::new(),
        }
    }

    /// A transaction on a SQLite connection the caller opened (migrations
    /// and tests).
    pub fn sqlite(conn: &'a rusqlite::Connection) -> Tx<'a> {
        Tx::new(Conn::Sqlite(conn))
    }

    pub fn engine(&self) -> Engine {
        match self.conn {
            Conn::Sqlite(_) => Engine::Sqlite,
            Conn::Postgres(_) => Engine::Postgres,
        }
    }

    /// Runs a statement; returns how many rows it changed.
    pub fn exec(&mut self, sql: &str, args: &[Value<'_>]) -> Result<u64> {
        match &mut self.conn {
            Conn::Sqlite(c) => sqlite::exec(c, sql, args),
            Conn::Postgres(c) => c.exec(sql, args),
        }
    }

    /// Runs a query; returns every row.
    pub fn query(&mut self, sql: &str, args: &[Value<'_>]) -> Result<Vec<Row>> {
        match &mut self.conn {
            Conn::Sqlite(c) => sqlite::query(c, sql, args),
            Conn::Postgres(c) => c.query(sql, args),
        }
    }

    /// The first row of a query, if any.
    pub fn query_opt(&mut self, sql: &str, args: &[Value<'_>]) -> Result<Option<Row>> {
        Ok(self.query(sql, args)?.into_iter().next())
    }

    /// The first row of a query that must return one.
    pub fn query_one(&mut self, sql: &str, args: &[Value<'_>]) -> Result<Row> {
        self.query_opt(sql, args)?.ok_or_else(|| {
            tracing::debug!(%sql, "a query that must find a row found none");
            StoreError::NotFound("not found; it may have been removed meanwhile".into())
        })
    }

    /// Announces `e` to this replica's live feeds and every other replica's once
    /// the transaction commits (nothing if it rolls back).
    pub fn notify(&mut self, e: Event) {
        self.events.push(e);
    }

    fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }
}

#[cfg(test)]
mod tests;
