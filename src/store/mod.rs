//! The SQLite store: the pool (WAL), the writer thread that runs a turn's transactions
//! whole (`writer`), the embedded migrations, and one module of query functions per table.
//! No SQL lives outside this folder. A query used both on the writer and through the pool
//! keeps its SQL in one constant.

pub mod approvals;
pub mod devices;
pub mod events;
pub mod messages;
pub mod pushes;
pub mod sessions;
pub mod spares;
pub mod terminals;
pub mod tokens;
mod writer;

use std::{
    ops::{Deref, DerefMut},
    path::Path,
    str::FromStr,
    sync::{Arc, Mutex as StdMutex},
    time::Duration,
};

use anyhow::Context;
use sqlx::{
    migrate::Migrator,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
    Connection, SqliteConnection, SqlitePool,
};
use tokio::sync::{Mutex, OwnedMutexGuard};

/// The schema, compiled in from `migrations/` and applied at every start.
pub static MIGRATOR: Migrator = sqlx::migrate!();

/// How long a statement waits for another writer before failing with "database is locked".
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// The shared pool; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    pool: SqlitePool,
    /// Writers queue here, in order, instead of in SQLite's busy handler, which polls with
    /// growing sleeps: with many sessions writing at once that cost more than the writes.
    /// Both ways of writing ([`Store::write`], [`Store::begin_write`]) take this turn.
    turn: Arc<Mutex<()>>,
    /// The connection of the turn's hot path (see `writer`).
    writer: writer::Writer,
    /// Why the last write failed for want of storage (disk full, read-only, I/O error),
    /// until a write succeeds again: `/health` reports it.
    fault: Arc<StdMutex<Option<StorageFault>>>,
}

/// A write that failed because the database cannot be written at all, whatever it was:
/// the disk is full (`SQLITE_FULL`), the file or its folder is read-only
/// (`SQLITE_READONLY*`), or the disk fails (`SQLITE_IOERR*`). It passes once the disk does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageFault {
    Full,
    ReadOnly,
    Io,
}

impl StorageFault {
    /// What a person is told.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Full => "the disk holding the database is full",
            Self::ReadOnly => "the database is read-only",
            Self::Io => "the disk holding the database fails (I/O error)",
        }
    }
}

/// The storage fault an error is, if it is one (see [`StorageFault`]).
pub fn storage_fault(err: &sqlx::Error) -> Option<StorageFault> {
    let sqlx::Error::Database(db) = err else {
        return None;
    };
    // The extended result code; its low byte is the primary one.
    let code: i32 = db.code()?.parse().ok()?;
    match code & 0xff {
        rusqlite::ffi::SQLITE_FULL => Some(StorageFault::Full),
        rusqlite::ffi::SQLITE_READONLY => Some(StorageFault::ReadOnly),
        rusqlite::ffi::SQLITE_IOERR => Some(StorageFault::Io),
        _ => None,
    }
}

impl Store {
    /// Opens (creating if needed) the database file and applies pending migrations. Its
    /// folder must exist: `datadir` creates it, private, and the file too.
    pub async fn open(path: &Path, max_connections: u32) -> anyhow::Result<Self> {
        let options = SqliteConnectOptions::from_str("sqlite:")?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // NORMAL in WAL mode: a commit is in the WAL (the OS's page cache) before it is
            // acknowledged, so a crash or SIGKILL of tether loses nothing. The WAL is synced
            // at checkpoints, not at every commit: a power cut or OS crash can lose the last
            // commits before it (never corrupting the file). FULL would sync every commit, a
            // disk flush per step of every turn. See README, "Durability".
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        // Migrations run on their own connection with foreign keys off, so that a table
        // others refer to can be rebuilt (SQLite's way to change a constraint).
        let mut migrating =
            SqliteConnection::connect_with(&options.clone().foreign_keys(false)).await?;
        MIGRATOR.run(&mut migrating).await?;
        migrating.close().await?;
        let pool = SqlitePoolOptions::new()
            .max_connections(max_connections.max(1))
            // The database is a file in this process: a connection cannot have gone away
            // between two uses, so it is not pinged each time it is taken from the pool.
            .test_before_acquire(false)
            .connect_with(options)
            .await?;
        Ok(Self {
            pool,
            turn: Arc::new(Mutex::new(())),
            writer: writer::Writer::start(path, BUSY_TIMEOUT)?,
            fault: Arc::default(),
        })
    }

    /// The configured database (`database.*`): its file created private if new, then opened.
    /// Its folder must exist.
    pub async fn open_configured(db: &crate::config::DatabaseSettings) -> anyhow::Result<Self> {
        crate::datadir::create_database_file(&db.path)?;
        Self::open(&db.path, db.max_connections)
            .await
            .with_context(|| format!("opening database {}", db.path.display()))
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// A transaction holding the write lock from its start (`BEGIN IMMEDIATE`), for work
    /// that reads and then writes. A plain (deferred) transaction that read first fails with
    /// "database is locked" if another connection wrote meanwhile (its WAL snapshot is stale
    /// and SQLite cannot wait that out); this one waits its turn (`BUSY_TIMEOUT`) instead.
    /// Writers take their turn in tether first (see `turn`), so SQLite rarely has to wait.
    pub async fn begin_write(&self) -> sqlx::Result<WriteTx> {
        let turn = self.turn.clone().lock_owned().await;
        let tx = self.pool.begin_with("BEGIN IMMEDIATE").await;
        let tx = self.noted(tx)?;
        Ok(WriteTx {
            tx,
            store: self.clone(),
            _turn: turn,
        })
    }

    /// Runs `f` as one write transaction (`BEGIN IMMEDIATE` … `COMMIT`, rolled back when it
    /// fails) on the writer thread: the whole transaction is one hand-over, where each
    /// statement through the pool is one. For the transactions of every turn (accept, start,
    /// end); `f` must not wait on anything but the database.
    pub async fn write<T, F>(&self, f: F) -> sqlx::Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<T> + Send + 'static,
    {
        let done = self
            .write_unless(move |tx| f(tx).map(Ok::<T, std::convert::Infallible>))
            .await?;
        Ok(done.unwrap_or_else(|never| match never {}))
    }

    /// [`Store::write`] for work that may refuse: `f` answering `Ok(Err(_))` rolls back
    /// and hands the refusal back.
    pub async fn write_unless<T, R, F>(&self, f: F) -> sqlx::Result<Result<T, R>>
    where
        T: Send + 'static,
        R: Send + 'static,
        F: FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<Result<T, R>> + Send + 'static,
    {
        let turn = self.turn.clone().lock_owned().await;
        let done = self.writer.run(turn, f).await;
        self.noted(done)
    }

    /// Why the database could not be written the last time a write was tried, while no
    /// write has succeeded since (see [`StorageFault`]).
    pub fn storage_fault(&self) -> Option<StorageFault> {
        *self.fault.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A write that must reach the disk (it rewrites the file's header with the value it
    /// has), to tell whether storage is back when no other write came since it failed.
    pub async fn probe_write(&self) -> sqlx::Result<()> {
        self.write(|tx| {
            let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
            tx.pragma_update(None, "user_version", version)
        })
        .await
    }

    /// Keeps the storage fault up to date with a write's result: set by a storage fault,
    /// cleared by a success, left as it is by any other error.
    fn noted<T>(&self, result: sqlx::Result<T>) -> sqlx::Result<T> {
        let now = match &result {
            Ok(_) => None,
            Err(e) => match storage_fault(e) {
                Some(fault) => Some(fault),
                None => return result,
            },
        };
        let mut fault = self.fault.lock().unwrap_or_else(|e| e.into_inner());
        if *fault != now {
            match now {
                Some(f) => tracing::error!(fault = ?f, "the database cannot be written"),
                None => tracing::info!("the database can be written again"),
            }
            *fault = now;
        }
        drop(fault);
        result
    }

    /// A trivial query, for health checks.
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(|_| ())
    }

    pub async fn close(&self) {
        self.writer.close().await;
        self.pool.close().await;
    }
}

/// A write transaction and tether's writer turn, held until it commits or is dropped
/// (rolled back). Dereferences to the connection, for the query functions.
pub struct WriteTx {
    tx: sqlx::Transaction<'static, sqlx::Sqlite>,
    /// Told how the commit went (see [`Store::storage_fault`]).
    store: Store,
    _turn: OwnedMutexGuard<()>,
}

impl WriteTx {
    pub async fn commit(self) -> sqlx::Result<()> {
        let committed = self.tx.commit().await;
        self.store.noted(committed)
    }
}

impl Deref for WriteTx {
    type Target = SqliteConnection;
    fn deref(&self) -> &SqliteConnection {
        &self.tx
    }
}

impl DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        &mut self.tx
    }
}

/// Milliseconds since the Unix epoch: the unit of every time column.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// True when the error is a violation of a UNIQUE index.
pub fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.is_unique_violation())
}
