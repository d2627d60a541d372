//! The SQLite store: a pool of connections (WAL) for reads, one connection kept for writes
//! behind tether's writer turn, the embedded migrations, and one module of query functions
//! per table. No SQL lives outside this folder.

pub mod approvals;
pub mod devices;
pub mod events;
pub mod messages;
pub mod pushes;
pub mod sessions;
pub mod spares;
pub mod terminals;
pub mod tokens;

use std::{
    ops::{Deref, DerefMut},
    path::Path,
    str::FromStr,
    sync::{Arc, Mutex as StdMutex},
    time::Duration,
};

use anyhow::Context;
use futures::future::BoxFuture;
use sqlx::{
    migrate::Migrator,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
    Connection, SqliteConnection, SqlitePool,
};
use tokio::sync::{Mutex, OwnedMappedMutexGuard, OwnedMutexGuard};

/// The schema, compiled in from `migrations/` and applied at every start.
pub static MIGRATOR: Migrator = sqlx::migrate!();

/// How long a statement waits for another writer before failing with "database is locked".
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// SQLite's primary result codes of a database that cannot be written (see
/// <https://sqlite.org/rescode.html>); an extended code keeps them in its low byte.
const SQLITE_READONLY: i32 = 8;
const SQLITE_IOERR: i32 = 10;
const SQLITE_FULL: i32 = 13;

/// The pool and the writer's connection; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    pool: SqlitePool,
    /// The one connection every write transaction runs on, and tether's writer turn: writers
    /// queue on this lock, in order, instead of in SQLite's busy handler, which polls with
    /// growing sleeps (with many sessions writing at once that cost more than the writes).
    /// None once the store is closed.
    writer: Arc<Mutex<Option<SqliteConnection>>>,
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
        SQLITE_FULL => Some(StorageFault::Full),
        SQLITE_READONLY => Some(StorageFault::ReadOnly),
        SQLITE_IOERR => Some(StorageFault::Io),
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
            // disk flush per step of every turn. See docs/architecture.md, "Durability".
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        // Migrations run on their own connection with foreign keys off, so that a table
        // others refer to can be rebuilt (SQLite's way to change a constraint).
        let mut migrating =
            SqliteConnection::connect_with(&options.clone().foreign_keys(false)).await?;
        MIGRATOR.run(&mut migrating).await?;
        migrating.close().await?;
        let writer = SqliteConnection::connect_with(&options).await?;
        let pool = SqlitePoolOptions::new()
            .max_connections(max_connections.max(1))
            // The database is a file in this process: a connection cannot have gone away
            // between two uses, so it is not pinged each time it is taken from the pool.
            .test_before_acquire(false)
            .connect_with(options)
            .await?;
        Ok(Self {
            pool,
            writer: Arc::new(Mutex::new(Some(writer))),
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

    /// The connections for reads (and the odd write that needs no turn).
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// The writer's connection, once it is this caller's turn.
    async fn writer(&self) -> sqlx::Result<Writer> {
        OwnedMutexGuard::try_map(self.writer.clone().lock_owned().await, Option::as_mut)
            .map_err(|_| sqlx::Error::PoolClosed)
    }

    /// A transaction on the writer's connection holding the write lock from its start
    /// (`BEGIN IMMEDIATE`), with tether's writer turn, until it commits or is dropped (rolled
    /// back). A plain (deferred) transaction that read first fails with "database is locked"
    /// if another connection wrote meanwhile (its WAL snapshot is stale and SQLite cannot
    /// wait that out); this one waits its turn (`BUSY_TIMEOUT`) instead. Dereferences to the
    /// connection, for the query functions.
    pub async fn begin_write(&self) -> sqlx::Result<WriteTx> {
        let mut conn = self.writer().await?;
        // A statement of its own rather than sqlx's `begin_with`, which asks the
        // connection's thread a second time whether the transaction began.
        let begun = sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await;
        self.noted(begun)?;
        Ok(WriteTx {
            conn: Some(conn),
            store: self.clone(),
        })
    }

    /// Runs `f` in one write transaction ([`Store::begin_write`]), committed when it
    /// succeeds; every failure, of a statement or of the commit, is noted (see
    /// [`Store::storage_fault`]). For the transactions of a turn (accept, start, end); `f`
    /// holds the writer's turn, so it must not wait on anything but the database.
    pub async fn write<T, F>(&self, f: F) -> sqlx::Result<T>
    where
        F: for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, sqlx::Result<T>>,
    {
        let mut tx = self.begin_write().await?;
        match f(&mut tx).await {
            Ok(done) => tx.commit().await.map(|()| done),
            Err(e) => self.noted(Err(e)), // rolled back as `tx` drops
        }
    }

    /// [`Store::write`] for work that may refuse: `f` answering `Ok(Err(_))` rolls back
    /// and hands the refusal back.
    pub async fn write_unless<T, R, F>(&self, f: F) -> sqlx::Result<Result<T, R>>
    where
        F: for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, sqlx::Result<Result<T, R>>>,
    {
        let mut tx = self.begin_write().await?;
        match f(&mut tx).await {
            Ok(Ok(done)) => tx.commit().await.map(|()| Ok(done)),
            Ok(Err(refusal)) => Ok(Err(refusal)), // rolled back as `tx` drops
            Err(e) => self.noted(Err(e)),
        }
    }

    /// Runs `f`, one statement and so a transaction of its own, on the writer's connection
    /// in tether's writer turn: no `BEGIN` and `COMMIT` around it.
    pub async fn write_alone<T, F>(&self, f: F) -> sqlx::Result<T>
    where
        F: for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, sqlx::Result<T>>,
    {
        let mut conn = self.writer().await?;
        let done = f(&mut conn).await;
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
            Box::pin(async move {
                let version: i64 = sqlx::query_scalar("PRAGMA user_version")
                    .fetch_one(&mut *tx)
                    .await?;
                sqlx::query(&format!("PRAGMA user_version = {version}"))
                    .execute(&mut *tx)
                    .await
                    .map(drop)
            })
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

    /// Closes the writer's connection (after the transaction holding it, if one does) and
    /// the pool.
    pub async fn close(&self) {
        if let Some(conn) = self.writer.lock().await.take() {
            if let Err(e) = conn.close().await {
                tracing::warn!(error = %e, "closing the database writer's connection");
            }
        }
        self.pool.close().await;
    }
}

/// The writer's connection, in tether's writer turn.
type Writer = OwnedMappedMutexGuard<Option<SqliteConnection>, SqliteConnection>;

/// A write transaction on the writer's connection, in tether's writer turn, until it commits
/// or is dropped (rolled back). Dereferences to the connection, for the query functions.
pub struct WriteTx {
    /// None once committed.
    conn: Option<Writer>,
    /// Told how the commit went (see [`Store::storage_fault`]).
    store: Store,
}

impl WriteTx {
    pub async fn commit(mut self) -> sqlx::Result<()> {
        let committed = sqlx::query("COMMIT").execute(&mut *self).await.map(drop);
        if committed.is_ok() {
            self.conn = None; // the turn passes; nothing to roll back
        }
        // A failed COMMIT may leave the transaction open: rolled back as `self` drops.
        self.store.noted(committed)
    }
}

impl Drop for WriteTx {
    /// Rolls back what did not commit (an error, a refusal, a caller that stopped waiting)
    /// before the next writer's turn: the turn goes with the rollback.
    fn drop(&mut self) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        let rollback = async move {
            // An error SQLite rolled back itself (a full disk) leaves none to roll back.
            if let Err(e) = sqlx::query("ROLLBACK").execute(&mut *conn).await {
                tracing::debug!(error = %e, "rolling back a write transaction");
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn(rollback)),
            Err(_) => tracing::error!("a write transaction dropped outside the runtime"),
        }
    }
}

impl Deref for WriteTx {
    type Target = SqliteConnection;
    fn deref(&self) -> &SqliteConnection {
        self.conn
            .as_deref()
            .expect("held until the transaction ends")
    }
}

impl DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        self.conn
            .as_deref_mut()
            .expect("held until the transaction ends")
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

#[cfg(test)]
mod tests {
    use super::*;

    async fn store_with_table(dir: &tempfile::TempDir) -> Store {
        let store = Store::open(&dir.path().join("w.db"), 2).await.unwrap();
        sqlx::query("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT UNIQUE)")
            .execute(store.pool())
            .await
            .unwrap();
        store
    }

    async fn count(store: &Store) -> i64 {
        sqlx::query_scalar("SELECT COUNT(*) FROM t")
            .fetch_one(store.pool())
            .await
            .unwrap()
    }

    fn insert<'c>(
        tx: &'c mut SqliteConnection,
        v: &'static str,
    ) -> BoxFuture<'c, sqlx::Result<i64>> {
        Box::pin(async move {
            let done = sqlx::query("INSERT INTO t (v) VALUES (?)")
                .bind(v)
                .execute(tx)
                .await?;
            Ok(done.last_insert_rowid())
        })
    }

    #[tokio::test]
    async fn a_transaction_commits_whole_or_not_at_all_and_errors_keep_their_kind() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with_table(&dir).await;
        let id = store.write(|tx| insert(tx, "a")).await.unwrap();
        assert_eq!(id, 1);
        // The second statement fails: the first is rolled back with it.
        let err = store
            .write(|tx| {
                Box::pin(async move {
                    insert(&mut *tx, "b").await?;
                    insert(tx, "a").await
                })
            })
            .await
            .unwrap_err();
        assert!(is_unique_violation(&err), "{err}");
        assert_eq!(count(&store).await, 1);
        // A refusal rolls back too, and is handed back.
        let refused = store
            .write_unless(|tx| {
                Box::pin(async move {
                    insert(tx, "c").await?;
                    Ok(Err::<(), _>("no"))
                })
            })
            .await
            .unwrap();
        assert_eq!(refused, Err("no"));
        assert_eq!(count(&store).await, 1);
        // A caller that stops waiting leaves nothing halfway: what it began is rolled back
        // before the next writer's turn.
        let mut tx = store.begin_write().await.unwrap();
        insert(&mut tx, "d").await.unwrap();
        drop(tx);
        let mut tx = store.begin_write().await.unwrap();
        insert(&mut tx, "e").await.unwrap();
        tx.commit().await.unwrap();
        let values: Vec<String> = sqlx::query_scalar("SELECT v FROM t ORDER BY id")
            .fetch_all(store.pool())
            .await
            .unwrap();
        assert_eq!(values, ["a", "e"]);
        // Alone, a statement is its own transaction, on the writer's connection.
        store.write_alone(|tx| insert(tx, "f")).await.unwrap();
        assert_eq!(count(&store).await, 3);
        store.close().await;
        assert!(store.begin_write().await.is_err(), "closed");
    }

    #[tokio::test]
    async fn a_full_or_read_only_database_is_a_storage_fault_noted_until_a_write_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with_table(&dir).await;
        let path = dir.path().join("w.db");
        let blob = "INSERT INTO t (v) VALUES (zeroblob(100000))";
        let options = SqliteConnectOptions::new().filename(&path).read_only(true);
        let mut read_only = SqliteConnection::connect_with(&options).await.unwrap();
        let e = sqlx::query(blob).execute(&mut read_only).await.unwrap_err();
        assert_eq!(storage_fault(&e), Some(StorageFault::ReadOnly), "{e}");
        // No page more than it has: a full disk, as SQLite sees it, at a statement.
        let e = store
            .write(|tx| {
                Box::pin(async move {
                    let pages: i64 = sqlx::query_scalar("PRAGMA page_count")
                        .fetch_one(&mut *tx)
                        .await?;
                    sqlx::query(&format!("PRAGMA max_page_count = {pages}"))
                        .execute(&mut *tx)
                        .await?;
                    sqlx::query(blob).execute(tx).await.map(drop)
                })
            })
            .await
            .unwrap_err();
        assert_eq!(storage_fault(&e), Some(StorageFault::Full), "{e}");
        assert_eq!(store.storage_fault(), Some(StorageFault::Full));
        // Other errors are not, and leave the note as it is.
        let e = store
            .write_alone(|tx| Box::pin(sqlx::query("INSERT INTO nowhere VALUES (1)").execute(tx)))
            .await
            .unwrap_err();
        assert_eq!(storage_fault(&e), None);
        assert_eq!(store.storage_fault(), Some(StorageFault::Full));
        // Space returns: the next write clears it.
        store
            .write_alone(|tx| Box::pin(sqlx::query("PRAGMA max_page_count = 1000000").execute(tx)))
            .await
            .unwrap();
        store.probe_write().await.unwrap();
        assert_eq!(store.storage_fault(), None);
    }
}
