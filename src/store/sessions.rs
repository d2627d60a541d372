//! Queries on `sessions`: one row per conversation, from creation until it is ended.

use sqlx::{FromRow, SqliteExecutor};

#[derive(Debug, Clone, FromRow)]
pub struct SessionRow {
    pub id: String,
    pub owner: String,
    pub agent: String,
    pub project_path: String,
    pub title: Option<String>,
    pub state: String,
    pub agent_session_id: Option<String>,
    pub transcript_started: bool,
    pub total_cost_usd: f64,
    pub created_at: i64,
    pub last_activity_at: i64,
    pub ended_at: Option<i64>,
    pub end_reason: Option<String>,
    pub process_pid: Option<i64>,
    pub process_start_time: Option<i64>,
    /// Counted by the query, not stored.
    pub message_count: i64,
}

impl SessionRow {
    pub fn is_active(&self) -> bool {
        self.state == STATE_ACTIVE
    }
}

pub const STATE_ACTIVE: &str = "active";

const SELECT: &str = "SELECT s.*, (SELECT COUNT(*) FROM messages m WHERE m.session_id = s.id) \
                      AS message_count FROM sessions s";

pub struct NewSession<'a> {
    pub id: &'a str,
    pub owner: &'a str,
    pub agent: &'a str,
    pub project_path: &'a str,
    pub title: Option<&'a str>,
    pub now: i64,
}

pub async fn insert(ex: impl SqliteExecutor<'_>, s: &NewSession<'_>) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO sessions (id, owner, agent, project_path, title, created_at, last_activity_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(s.id)
    .bind(s.owner)
    .bind(s.agent)
    .bind(s.project_path)
    .bind(s.title)
    .bind(s.now)
    .bind(s.now)
    .execute(ex)
    .await?;
    Ok(())
}

pub async fn get(ex: impl SqliteExecutor<'_>, id: &str) -> sqlx::Result<Option<SessionRow>> {
    sqlx::query_as(&format!("{SELECT} WHERE s.id = ?"))
        .bind(id)
        .fetch_optional(ex)
        .await
}

/// The accept path's one look at a session, which also marks it active now: its owner,
/// state and queue depth. The caller rolls back when it refuses the message.
pub async fn touch_for_accept(
    ex: impl SqliteExecutor<'_>,
    id: &str,
    now: i64,
) -> sqlx::Result<Option<(String, String, i64)>> {
    sqlx::query_as(
        "UPDATE sessions SET last_activity_at = ?2 WHERE id = ?1 RETURNING owner, state, \
         (SELECT COUNT(*) FROM messages WHERE session_id = ?1 AND status = 'queued')",
    )
    .bind(id)
    .bind(now)
    .fetch_optional(ex)
    .await
}

/// Sessions newest activity first; `owner: None` lists everyone's (admin).
pub async fn list(
    ex: impl SqliteExecutor<'_>,
    owner: Option<&str>,
    limit: i64,
) -> sqlx::Result<Vec<SessionRow>> {
    sqlx::query_as(&format!(
        "{SELECT} WHERE (?1 IS NULL OR s.owner = ?1) ORDER BY s.last_activity_at DESC LIMIT ?2"
    ))
    .bind(owner)
    .bind(limit)
    .fetch_all(ex)
    .await
}

/// Records what a turn's `result` said about the conversation. A result with the
/// conversation's id is the CLI's evidence that it holds the conversation: later starts
/// resume it.
pub async fn record_turn(
    ex: impl SqliteExecutor<'_>,
    id: &str,
    agent_session_id: Option<&str>,
    cost_usd: f64,
    now: i64,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE sessions SET agent_session_id = COALESCE(?1, agent_session_id), \
         transcript_started = transcript_started OR ?1 IS NOT NULL, \
         total_cost_usd = total_cost_usd + ?2, last_activity_at = ?3 WHERE id = ?4",
    )
    .bind(agent_session_id)
    .bind(cost_usd)
    .bind(now)
    .bind(id)
    .execute(ex)
    .await?;
    Ok(())
}

/// Records (or clears) the live child process, so a later start can stop it if it survived us.
pub async fn set_process(
    ex: impl SqliteExecutor<'_>,
    id: &str,
    process: Option<(u32, u64)>,
) -> sqlx::Result<()> {
    sqlx::query("UPDATE sessions SET process_pid = ?, process_start_time = ? WHERE id = ?")
        .bind(process.map(|p| p.0 as i64))
        .bind(process.map(|p| p.1 as i64))
        .bind(id)
        .execute(ex)
        .await?;
    Ok(())
}

/// Sessions that still record a child process: after a crash of tether these may be orphans.
pub async fn with_recorded_process(
    ex: impl SqliteExecutor<'_>,
) -> sqlx::Result<Vec<(String, i64, i64)>> {
    sqlx::query_as(
        "SELECT id, process_pid, COALESCE(process_start_time, 0) FROM sessions \
         WHERE process_pid IS NOT NULL",
    )
    .fetch_all(ex)
    .await
}

pub async fn end(
    ex: impl SqliteExecutor<'_>,
    id: &str,
    reason: &str,
    now: i64,
) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "UPDATE sessions SET state = 'ended', ended_at = ?, end_reason = ? \
         WHERE id = ? AND state = 'active'",
    )
    .bind(now)
    .bind(reason)
    .bind(id)
    .execute(ex)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// What one owner holds, for the per-owner limits.
#[derive(Debug, Clone, FromRow)]
pub struct OwnerLoad {
    /// Sessions in state `active`.
    pub active: i64,
    /// Sessions created at or after `since`.
    pub created_since: i64,
    /// When the oldest of those was created.
    pub oldest_since: Option<i64>,
}

/// The owner's active sessions, and the sessions it created at or after `since` (ms).
pub async fn owner_load(
    ex: impl SqliteExecutor<'_>,
    owner: &str,
    since: i64,
) -> sqlx::Result<OwnerLoad> {
    sqlx::query_as(
        "SELECT COALESCE(SUM(state = 'active'), 0) AS active, \
         COALESCE(SUM(created_at >= ?2), 0) AS created_since, \
         MIN(CASE WHEN created_at >= ?2 THEN created_at END) AS oldest_since \
         FROM sessions WHERE owner = ?1",
    )
    .bind(owner)
    .bind(since)
    .fetch_one(ex)
    .await
}
