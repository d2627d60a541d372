//! Queries on `terminals`: one row per terminal, from its start to its end, with the tail of
//! its output once it ended.

use sqlx::{FromRow, SqliteExecutor};

pub const STATE_STARTING: &str = "starting";
pub const STATE_RUNNING: &str = "running";
pub const STATE_EXITED: &str = "exited";
pub const STATE_KILLED: &str = "killed";

/// A terminal without its saved output (see [`tail`]).
#[derive(Debug, Clone, FromRow)]
pub struct TerminalRow {
    pub id: String,
    pub owner: String,
    /// `claude` or `shell`.
    pub program: String,
    pub project_path: String,
    /// The chat session whose conversation it holds.
    pub session_id: Option<String>,
    pub state: String,
    pub exit_code: Option<i64>,
    pub end_reason: Option<String>,
    pub cols: i64,
    pub rows: i64,
    pub pid: Option<i64>,
    pub process_start_time: Option<i64>,
    pub created_at: i64,
    pub last_input_at: Option<i64>,
    pub last_output_at: Option<i64>,
    pub ended_at: Option<i64>,
    pub expires_at: i64,
    pub warned_at: Option<i64>,
    /// Bytes of output so far (final once it ended).
    pub output_bytes: i64,
}

impl TerminalRow {
    /// Starting or running: its program may be alive.
    pub fn is_live(&self) -> bool {
        self.state == STATE_STARTING || self.state == STATE_RUNNING
    }
}

const COLUMNS: &str = "id, owner, program, project_path, session_id, state, exit_code, \
                       end_reason, cols, rows, pid, process_start_time, created_at, \
                       last_input_at, last_output_at, ended_at, expires_at, warned_at, output_bytes";

const LIVE: &str = "state IN ('starting', 'running')";

pub struct NewTerminal<'a> {
    pub id: &'a str,
    pub owner: &'a str,
    pub program: &'a str,
    pub project_path: &'a str,
    pub session_id: Option<&'a str>,
    pub cols: u16,
    pub rows: u16,
    pub now: i64,
    pub expires_at: i64,
}

/// Adds a terminal in state `starting`. A second live terminal on the same session is a
/// unique violation (`store::is_unique_violation`).
pub async fn insert(ex: impl SqliteExecutor<'_>, t: &NewTerminal<'_>) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO terminals (id, owner, program, project_path, session_id, cols, rows, \
         created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(t.id)
    .bind(t.owner)
    .bind(t.program)
    .bind(t.project_path)
    .bind(t.session_id)
    .bind(i64::from(t.cols))
    .bind(i64::from(t.rows))
    .bind(t.now)
    .bind(t.expires_at)
    .execute(ex)
    .await?;
    Ok(())
}

pub async fn get(ex: impl SqliteExecutor<'_>, id: &str) -> sqlx::Result<Option<TerminalRow>> {
    sqlx::query_as(&format!("SELECT {COLUMNS} FROM terminals WHERE id = ?"))
        .bind(id)
        .fetch_optional(ex)
        .await
}

/// Terminals newest first; `owner: None` lists everyone's (admin).
pub async fn list(
    ex: impl SqliteExecutor<'_>,
    owner: Option<&str>,
    limit: i64,
) -> sqlx::Result<Vec<TerminalRow>> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM terminals WHERE (?1 IS NULL OR owner = ?1) \
         ORDER BY created_at DESC, id LIMIT ?2"
    ))
    .bind(owner)
    .bind(limit)
    .fetch_all(ex)
    .await
}

/// Live terminals on the server, and those of `owner`.
pub async fn count_live(ex: impl SqliteExecutor<'_>, owner: &str) -> sqlx::Result<(i64, i64)> {
    sqlx::query_as(&format!(
        "SELECT COUNT(*), COALESCE(SUM(owner = ?), 0) FROM terminals WHERE {LIVE}"
    ))
    .bind(owner)
    .fetch_one(ex)
    .await
}

/// The program started: `running`, with its process recorded.
pub async fn set_running(
    ex: impl SqliteExecutor<'_>,
    id: &str,
    pid: u32,
    start_time: u64,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE terminals SET state = 'running', pid = ?, process_start_time = ? \
         WHERE id = ? AND state = 'starting'",
    )
    .bind(i64::from(pid))
    .bind(start_time as i64)
    .bind(id)
    .execute(ex)
    .await?;
    Ok(())
}

/// What a live terminal did lately: its last input and output, its output so far, and its
/// end (moved by input and attaches; a moved end clears this period's warning).
pub struct Activity {
    pub last_input_at: Option<i64>,
    pub last_output_at: Option<i64>,
    pub output_bytes: u64,
    pub expires_at: i64,
}

pub async fn record_activity(
    ex: impl SqliteExecutor<'_>,
    id: &str,
    a: &Activity,
) -> sqlx::Result<()> {
    sqlx::query(&format!(
        "UPDATE terminals SET last_input_at = ?2, last_output_at = ?3, output_bytes = ?4, \
         warned_at = CASE WHEN expires_at = ?5 THEN warned_at ELSE NULL END, expires_at = ?5 \
         WHERE id = ?1 AND {LIVE}"
    ))
    .bind(id)
    .bind(a.last_input_at)
    .bind(a.last_output_at)
    .bind(a.output_bytes as i64)
    .bind(a.expires_at)
    .execute(ex)
    .await?;
    Ok(())
}

/// How a terminal ended.
pub struct End<'a> {
    /// `exited` or `killed`.
    pub state: &'a str,
    pub exit_code: Option<i64>,
    pub reason: &'a str,
    pub now: i64,
    /// The last bytes of its output, and the offset of their first byte.
    pub tail: &'a [u8],
    pub tail_offset: u64,
    pub activity: Activity,
}

/// Ends a live terminal and keeps the tail of its output; its process record is cleared.
/// False when it had already ended.
pub async fn end(ex: impl SqliteExecutor<'_>, id: &str, e: &End<'_>) -> sqlx::Result<bool> {
    let done = sqlx::query(&format!(
        "UPDATE terminals SET state = ?2, exit_code = ?3, end_reason = ?4, ended_at = ?5, \
         tail = ?6, tail_offset = ?7, last_input_at = ?8, last_output_at = ?9, \
         output_bytes = ?10, pid = NULL, process_start_time = NULL WHERE id = ?1 AND {LIVE}"
    ))
    .bind(id)
    .bind(e.state)
    .bind(e.exit_code)
    .bind(e.reason)
    .bind(e.now)
    .bind(e.tail)
    .bind(e.tail_offset as i64)
    .bind(e.activity.last_input_at)
    .bind(e.activity.last_output_at)
    .bind(e.activity.output_bytes as i64)
    .execute(ex)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// The saved end of an ended terminal's output and the offset of its first byte.
pub async fn tail(ex: impl SqliteExecutor<'_>, id: &str) -> sqlx::Result<Option<(Vec<u8>, i64)>> {
    sqlx::query_as(
        "SELECT tail, tail_offset FROM terminals WHERE id = ? AND tail IS NOT NULL \
         AND tail_offset IS NOT NULL",
    )
    .bind(id)
    .fetch_optional(ex)
    .await
}

/// Terminals an earlier run left live (it was killed): their recorded process, if any.
pub async fn left_live(
    ex: impl SqliteExecutor<'_>,
) -> sqlx::Result<Vec<(String, Option<i64>, Option<i64>)>> {
    sqlx::query_as(&format!(
        "SELECT id, pid, process_start_time FROM terminals WHERE {LIVE}"
    ))
    .fetch_all(ex)
    .await
}

/// Ends a terminal an earlier run left live as `killed`, keeping no tail (its output was
/// in that run's memory). False when it was not live.
pub async fn mark_killed(
    ex: impl SqliteExecutor<'_>,
    id: &str,
    reason: &str,
    now: i64,
) -> sqlx::Result<bool> {
    let done = sqlx::query(&format!(
        "UPDATE terminals SET state = 'killed', end_reason = ?2, ended_at = ?3, pid = NULL, \
         process_start_time = NULL WHERE id = ?1 AND {LIVE}"
    ))
    .bind(id)
    .bind(reason)
    .bind(now)
    .execute(ex)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Live terminals whose warning is due at `now` and not yet sent this period, and whose
/// end has not come.
pub async fn due_warnings(
    ex: impl SqliteExecutor<'_>,
    now: i64,
    warn_before_ms: i64,
) -> sqlx::Result<Vec<TerminalRow>> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM terminals WHERE {LIVE} AND warned_at IS NULL \
         AND expires_at - ?2 <= ?1 AND expires_at > ?1 ORDER BY expires_at"
    ))
    .bind(now)
    .bind(warn_before_ms)
    .fetch_all(ex)
    .await
}

/// Marks this period's warning as sent, unless the end moved meanwhile. True when marked.
pub async fn mark_warned(
    ex: impl SqliteExecutor<'_>,
    id: &str,
    expires_at: i64,
    now: i64,
) -> sqlx::Result<bool> {
    let done = sqlx::query(&format!(
        "UPDATE terminals SET warned_at = ?3 WHERE id = ?1 AND expires_at = ?2 \
         AND warned_at IS NULL AND {LIVE}"
    ))
    .bind(id)
    .bind(expires_at)
    .bind(now)
    .execute(ex)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Ids of live terminals whose end has come.
pub async fn due_expiries(ex: impl SqliteExecutor<'_>, now: i64) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar(&format!(
        "SELECT id FROM terminals WHERE {LIVE} AND expires_at <= ? ORDER BY expires_at"
    ))
    .bind(now)
    .fetch_all(ex)
    .await
}

/// The next warning or end of a live terminal.
pub async fn next_deadline(
    ex: impl SqliteExecutor<'_>,
    warn_before_ms: i64,
) -> sqlx::Result<Option<i64>> {
    sqlx::query_scalar(&format!(
        "SELECT MIN(CASE WHEN warned_at IS NULL THEN expires_at - ? ELSE expires_at END) \
         FROM terminals WHERE {LIVE}"
    ))
    .bind(warn_before_ms)
    .fetch_one(ex)
    .await
}

/// Drops the saved output of terminals that ended before `before`. Returns how many.
pub async fn drop_tails(ex: impl SqliteExecutor<'_>, before: i64) -> sqlx::Result<u64> {
    let done =
        sqlx::query("UPDATE terminals SET tail = NULL WHERE tail IS NOT NULL AND ended_at < ?")
            .bind(before)
            .execute(ex)
            .await?;
    Ok(done.rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn store() -> (tempfile::TempDir, crate::store::Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(&dir.path().join("t.db"), 2)
            .await
            .unwrap();
        (dir, store)
    }

    fn new<'a>(id: &'a str, owner: &'a str, session: Option<&'a str>) -> NewTerminal<'a> {
        NewTerminal {
            id,
            owner,
            program: "shell",
            project_path: "/tmp",
            session_id: session,
            cols: 80,
            rows: 24,
            now: 1_000,
            expires_at: 100_000,
        }
    }

    #[tokio::test]
    async fn one_live_terminal_per_session_and_the_end_keeps_the_tail() {
        let (_dir, store) = store().await;
        let pool = store.pool();
        sqlx::query(
            "INSERT INTO sessions (id, owner, project_path, created_at, last_activity_at, \
             expires_at) VALUES ('s1', 'me', '/tmp', 0, 0, 1)",
        )
        .execute(pool)
        .await
        .unwrap();
        insert(pool, &new("t1", "me", Some("s1"))).await.unwrap();
        let second = insert(pool, &new("t2", "me", Some("s1")))
            .await
            .unwrap_err();
        assert!(crate::store::is_unique_violation(&second));
        assert_eq!(count_live(pool, "me").await.unwrap(), (1, 1));
        set_running(pool, "t1", 42, 7).await.unwrap();
        let row = get(pool, "t1").await.unwrap().unwrap();
        assert_eq!((row.state.as_str(), row.pid), ("running", Some(42)));
        let end_of = |state| End {
            state,
            exit_code: Some(0),
            reason: "exited",
            now: 2_000,
            tail: b"bye",
            tail_offset: 10,
            activity: Activity {
                last_input_at: Some(1_500),
                last_output_at: Some(1_600),
                output_bytes: 13,
                expires_at: 100_000,
            },
        };
        assert!(end(pool, "t1", &end_of(STATE_EXITED)).await.unwrap());
        assert!(!end(pool, "t1", &end_of(STATE_KILLED)).await.unwrap());
        let row = get(pool, "t1").await.unwrap().unwrap();
        assert_eq!((row.state.as_str(), row.pid), ("exited", None));
        assert_eq!(tail(pool, "t1").await.unwrap(), Some((b"bye".to_vec(), 10)));
        // The session is free again.
        insert(pool, &new("t2", "me", Some("s1"))).await.unwrap();
        assert_eq!(drop_tails(pool, 2_001).await.unwrap(), 1);
        assert_eq!(tail(pool, "t1").await.unwrap(), None);
    }

    #[tokio::test]
    async fn warnings_and_ends_come_due_and_activity_moves_them() {
        let (_dir, store) = store().await;
        let pool = store.pool();
        insert(pool, &new("t1", "me", None)).await.unwrap();
        assert_eq!(next_deadline(pool, 10_000).await.unwrap(), Some(90_000));
        assert!(due_warnings(pool, 89_999, 10_000).await.unwrap().is_empty());
        let due = due_warnings(pool, 90_000, 10_000).await.unwrap();
        assert_eq!(due.len(), 1);
        assert!(mark_warned(pool, "t1", 100_000, 90_000).await.unwrap());
        assert!(due_warnings(pool, 95_000, 10_000).await.unwrap().is_empty());
        assert_eq!(next_deadline(pool, 10_000).await.unwrap(), Some(100_000));
        // Input moves the end and clears the warning.
        let activity = Activity {
            last_input_at: Some(95_000),
            last_output_at: None,
            output_bytes: 0,
            expires_at: 195_000,
        };
        record_activity(pool, "t1", &activity).await.unwrap();
        assert_eq!(get(pool, "t1").await.unwrap().unwrap().warned_at, None);
        assert!(due_expiries(pool, 100_000).await.unwrap().is_empty());
        assert_eq!(due_expiries(pool, 195_000).await.unwrap(), vec!["t1"]);
        assert!(mark_killed(pool, "t1", "tether stopped", 1).await.unwrap());
        assert!(left_live(pool).await.unwrap().is_empty());
    }
}
