//! The writer thread: one plain SQLite connection on a thread of its own that runs each
//! write transaction of a turn's hot path whole (`BEGIN IMMEDIATE`, its statements,
//! `COMMIT`), handed over once. Through sqlx each statement of a transaction is a round trip
//! to its connection's worker thread (some 40 to 60 µs each here); here a transaction is one.

use std::{path::Path, sync::mpsc, thread, time::Duration};

use rusqlite::{Connection, ErrorCode, Transaction, TransactionBehavior};
use sqlx::error::{DatabaseError, ErrorKind};
use tokio::sync::{oneshot, OwnedMutexGuard};

/// Statements kept prepared on the writer's connection.
const STATEMENT_CACHE: usize = 64;

type Job = Box<dyn FnOnce(&mut Connection) + Send>;

enum Msg {
    Run(Job),
    /// Close the connection (after the jobs before it) and stop.
    Close(oneshot::Sender<()>),
}

/// The sending end of the writer thread's queue; the thread ends at [`Writer::close`] or
/// when every clone is gone.
#[derive(Clone, Debug)]
pub(super) struct Writer {
    jobs: mpsc::Sender<Msg>,
}

impl Writer {
    /// Opens the connection (the file exists and is migrated) on a new thread.
    pub(super) fn start(path: &Path, busy_timeout: Duration) -> anyhow::Result<Self> {
        let (jobs, queue) = mpsc::channel::<Msg>();
        let (opened_tx, opened) = mpsc::channel();
        let path = path.to_path_buf();
        thread::Builder::new()
            .name("tether-db-writer".into())
            .spawn(move || {
                let mut conn = match open(&path, busy_timeout) {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = opened_tx.send(Err(e));
                        return;
                    }
                };
                let _ = opened_tx.send(Ok(()));
                for msg in queue {
                    match msg {
                        Msg::Run(job) => job(&mut conn),
                        Msg::Close(closed) => {
                            drop(conn);
                            let _ = closed.send(());
                            return; // later jobs find the queue closed
                        }
                    }
                }
            })?;
        opened
            .recv()
            .map_err(|_| anyhow::anyhow!("the database writer thread stopped"))??;
        Ok(Self { jobs })
    }

    /// Runs `f` in one write transaction on the writer thread, committed when it answers
    /// `Ok(Ok(_))` and rolled back otherwise; `turn` (tether's writer turn) is held until
    /// then, even if the caller stops waiting.
    pub(super) async fn run<T, R, F>(
        &self,
        turn: OwnedMutexGuard<()>,
        f: F,
    ) -> sqlx::Result<Result<T, R>>
    where
        T: Send + 'static,
        R: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> rusqlite::Result<Result<T, R>> + Send + 'static,
    {
        let (done, answer) = oneshot::channel();
        let job: Job = Box::new(move |conn| {
            let result = transaction(conn, f);
            drop(turn);
            let _ = done.send(result);
        });
        self.jobs
            .send(Msg::Run(job))
            .map_err(|_| sqlx::Error::PoolClosed)?;
        answer
            .await
            .map_err(|_| sqlx::Error::PoolClosed)?
            .map_err(into_sqlx)
    }

    /// Closes the connection once the transactions queued before have run.
    pub(super) async fn close(&self) {
        let (closed, done) = oneshot::channel();
        if self.jobs.send(Msg::Close(closed)).is_ok() {
            let _ = done.await;
        }
    }
}

fn open(path: &Path, busy_timeout: Duration) -> anyhow::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(busy_timeout)?;
    // As the pool's connections (see `Store::open`): WAL, NORMAL, foreign keys on.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(conn)
}

fn transaction<T, R>(
    conn: &mut Connection,
    f: impl FnOnce(&Transaction<'_>) -> rusqlite::Result<Result<T, R>>,
) -> rusqlite::Result<Result<T, R>> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    // A failure or a refusal rolls back as `tx` drops.
    let value = f(&tx)?;
    if value.is_ok() {
        tx.commit()?;
    }
    Ok(value)
}

/// A rusqlite error as the store's callers see every database error: a `sqlx::Error`,
/// whose kind tells a unique violation (see `store::is_unique_violation`).
fn into_sqlx(e: rusqlite::Error) -> sqlx::Error {
    match e {
        rusqlite::Error::QueryReturnedNoRows => sqlx::Error::RowNotFound,
        e => sqlx::Error::Database(Box::new(WriteError(e))),
    }
}

#[derive(Debug)]
struct WriteError(rusqlite::Error);

impl std::fmt::Display for WriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for WriteError {}

impl DatabaseError for WriteError {
    /// The extended result code, as sqlx's own SQLite errors give it (see
    /// `store::storage_fault`).
    fn code(&self) -> Option<std::borrow::Cow<'_, str>> {
        match &self.0 {
            rusqlite::Error::SqliteFailure(e, _) => Some(e.extended_code.to_string().into()),
            _ => None,
        }
    }

    fn message(&self) -> &str {
        match &self.0 {
            rusqlite::Error::SqliteFailure(_, Some(m)) => m,
            _ => "database error",
        }
    }

    fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
        self
    }

    fn kind(&self) -> ErrorKind {
        let rusqlite::Error::SqliteFailure(e, _) = &self.0 else {
            return ErrorKind::Other;
        };
        if e.code != ErrorCode::ConstraintViolation {
            return ErrorKind::Other;
        }
        use rusqlite::ffi;
        match e.extended_code {
            ffi::SQLITE_CONSTRAINT_UNIQUE | ffi::SQLITE_CONSTRAINT_PRIMARYKEY => {
                ErrorKind::UniqueViolation
            }
            ffi::SQLITE_CONSTRAINT_FOREIGNKEY => ErrorKind::ForeignKeyViolation,
            ffi::SQLITE_CONSTRAINT_NOTNULL => ErrorKind::NotNullViolation,
            ffi::SQLITE_CONSTRAINT_CHECK => ErrorKind::CheckViolation,
            _ => ErrorKind::Other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_transaction_commits_whole_or_not_at_all_and_errors_keep_their_kind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.db");
        let store = crate::store::Store::open(&path, 2).await.unwrap();
        sqlx::query("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT UNIQUE)")
            .execute(store.pool())
            .await
            .unwrap();
        let id = store
            .write(|tx| {
                tx.execute("INSERT INTO t (v) VALUES ('a')", [])?;
                Ok(tx.last_insert_rowid())
            })
            .await
            .unwrap();
        assert_eq!(id, 1);
        // The second statement fails: the first is rolled back with it.
        let err = store
            .write(|tx| {
                tx.execute("INSERT INTO t (v) VALUES ('b')", [])?;
                tx.execute("INSERT INTO t (v) VALUES ('a')", [])?;
                Ok(())
            })
            .await
            .unwrap_err();
        assert!(crate::store::is_unique_violation(&err), "{err}");
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM t")
            .fetch_one(store.pool())
            .await
            .unwrap();
        assert_eq!(n, 1);
        // A caller that stops waiting does not stop the transaction halfway.
        let write = store.write(|tx| {
            tx.execute("INSERT INTO t (v) VALUES ('c')", [])?;
            std::thread::sleep(Duration::from_millis(50));
            tx.execute("INSERT INTO t (v) VALUES ('d')", [])?;
            Ok(())
        });
        let _ = tokio::time::timeout(Duration::from_millis(5), write).await;
        let mut tx = store.begin_write().await.unwrap(); // waits for the writer's turn
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM t")
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        assert_eq!(n, 3);
    }

    #[tokio::test]
    async fn a_full_or_read_only_database_is_a_storage_fault_through_either_driver() {
        use crate::store::{storage_fault, StorageFault};
        use sqlx::{sqlite::SqliteConnectOptions, Connection as _};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.db");
        let store = crate::store::Store::open(&path, 1).await.unwrap();
        sqlx::query("CREATE TABLE t (v BLOB)")
            .execute(store.pool())
            .await
            .unwrap();
        let insert = "INSERT INTO t (v) VALUES (zeroblob(100000))";
        let read_only = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY;
        let conn = Connection::open_with_flags(&path, read_only).unwrap();
        let e = into_sqlx(conn.execute(insert, []).unwrap_err());
        assert_eq!(storage_fault(&e), Some(StorageFault::ReadOnly), "{e}");
        let options = SqliteConnectOptions::new().filename(&path).read_only(true);
        let mut pooled = sqlx::SqliteConnection::connect_with(&options)
            .await
            .unwrap();
        let e = sqlx::query(insert).execute(&mut pooled).await.unwrap_err();
        assert_eq!(storage_fault(&e), Some(StorageFault::ReadOnly), "{e}");
        // No page more than it has: a full disk, as SQLite sees it.
        let conn = Connection::open(&path).unwrap();
        let pages: i64 = conn
            .query_row("PRAGMA page_count", [], |r| r.get(0))
            .unwrap();
        conn.pragma_update(None, "max_page_count", pages).unwrap();
        let e = into_sqlx(conn.execute(insert, []).unwrap_err());
        assert_eq!(storage_fault(&e), Some(StorageFault::Full), "{e}");
        // Other errors are not.
        let e = into_sqlx(
            conn.execute("INSERT INTO nowhere VALUES (1)", [])
                .unwrap_err(),
        );
        assert_eq!(storage_fault(&e), None);
    }
}
