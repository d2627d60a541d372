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
    /// The end: the last accepted message or keep-alive plus `sessions.lifetime`.
    pub expires_at: i64,
    /// When this period's "expires soon" push went out (cleared by a keep-alive).
    pub warned_at: Option<i64>,
    /// The permission mode it runs with; None: `agent.permission_mode`.
    pub permission_mode: Option<String>,
    /// Counted by the query, not stored.
    pub message_count: i64,
}

impl SessionRow {
    pub fn is_active(&self) -> bool {
        self.state == STATE_ACTIVE
    }
}

pub const STATE_ACTIVE: &str = "active";
pub const STATE_ENDED: &str = "ended";
pub const STATE_EXPIRED: &str = "expired";

const SELECT: &str = "SELECT s.*, (SELECT COUNT(*) FROM messages m WHERE m.session_id = s.id) \
                      AS message_count FROM sessions s";

pub struct NewSession<'a> {
    pub id: &'a str,
    pub owner: &'a str,
    pub agent: &'a str,
    pub project_path: &'a str,
    pub title: Option<&'a str>,
    pub now: i64,
    pub expires_at: i64,
}

/// Stores a new session.
pub async fn insert(ex: impl SqliteExecutor<'_>, s: &NewSession<'_>) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO sessions (id, owner, agent, project_path, title, created_at, \
         last_activity_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, ?7)",
    )
    .bind(s.id)
    .bind(s.owner)
    .bind(s.agent)
    .bind(s.project_path)
    .bind(s.title)
    .bind(s.now)
    .bind(s.expires_at)
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

/// The accept path's one look at a session, which also marks it active now and moves its
/// end to `expires_at` (clearing this period's warning): its owner, state and queue depth.
/// The caller rolls back when it refuses the message.
pub async fn touch_for_accept(
    ex: impl SqliteExecutor<'_>,
    id: &str,
    now: i64,
    expires_at: i64,
) -> sqlx::Result<Option<(String, String, i64)>> {
    sqlx::query_as(
        "UPDATE sessions SET last_activity_at = ?2, expires_at = ?3, warned_at = NULL \
         WHERE id = ?1 RETURNING owner, state, \
         (SELECT COUNT(*) FROM messages WHERE session_id = ?1 AND status = 'queued')",
    )
    .bind(id)
    .bind(now)
    .bind(expires_at)
    .fetch_optional(ex)
    .await
}

/// A keep-alive: moves an active session's end to `expires_at` and clears this period's
/// warning. Returns the owner and state as they were (nothing changes unless active).
pub async fn extend(
    ex: impl SqliteExecutor<'_>,
    id: &str,
    expires_at: i64,
) -> sqlx::Result<Option<(String, String)>> {
    sqlx::query_as(
        "UPDATE sessions SET expires_at = CASE WHEN state = 'active' THEN ?2 ELSE expires_at END, \
         warned_at = CASE WHEN state = 'active' THEN NULL ELSE warned_at END \
         WHERE id = ?1 RETURNING owner, state",
    )
    .bind(id)
    .bind(expires_at)
    .fetch_optional(ex)
    .await
}

/// Active sessions whose warning is due at `now` (`expires_at - warn_before <= now`) and
/// not yet sent this period, and whose end has not come (an end that came first is
/// handled by the expiry alone).
pub async fn due_warnings(
    ex: impl SqliteExecutor<'_>,
    now: i64,
    warn_before_ms: i64,
) -> sqlx::Result<Vec<SessionRow>> {
    sqlx::query_as(&format!(
        "{SELECT} WHERE s.state = 'active' AND s.warned_at IS NULL \
         AND s.expires_at - ?2 <= ?1 AND s.expires_at > ?1 ORDER BY s.expires_at"
    ))
    .bind(now)
    .bind(warn_before_ms)
    .fetch_all(ex)
    .await
}

/// Marks this period's warning as sent, unless the session was extended or ended
/// meanwhile (its end is no longer `expires_at`). True when it was marked.
pub async fn mark_warned(
    ex: impl SqliteExecutor<'_>,
    id: &str,
    expires_at: i64,
    now: i64,
) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "UPDATE sessions SET warned_at = ?3 WHERE id = ?1 AND expires_at = ?2 \
         AND state = 'active' AND warned_at IS NULL",
    )
    .bind(id)
    .bind(expires_at)
    .bind(now)
    .execute(ex)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Ids of active sessions whose end has come.
pub async fn due_expiries(ex: impl SqliteExecutor<'_>, now: i64) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar(
        "SELECT id FROM sessions WHERE state = 'active' AND expires_at <= ? ORDER BY expires_at",
    )
    .bind(now)
    .fetch_all(ex)
    .await
}

/// The next moment the scheduler has something to do: a warning not yet sent, or an end.
pub async fn next_deadline(
    ex: impl SqliteExecutor<'_>,
    warn_before_ms: i64,
) -> sqlx::Result<Option<i64>> {
    sqlx::query_scalar(
        "SELECT MIN(CASE WHEN warned_at IS NULL THEN expires_at - ? ELSE expires_at END) \
         FROM sessions WHERE state = 'active'",
    )
    .bind(warn_before_ms)
    .fetch_one(ex)
    .await
}

/// Every active session with its queue depth, soonest end first (the admin's view).
pub async fn list_active(ex: impl SqliteExecutor<'_>) -> sqlx::Result<Vec<(SessionRow, i64)>> {
    #[derive(FromRow)]
    struct Row {
        #[sqlx(flatten)]
        session: SessionRow,
        queued: i64,
    }
    let rows: Vec<Row> = sqlx::query_as(&format!(
        "SELECT t.*, (SELECT COUNT(*) FROM messages q WHERE q.session_id = t.id \
         AND q.status = 'queued') AS queued FROM ({SELECT} WHERE s.state = 'active') t \
         ORDER BY t.expires_at"
    ))
    .fetch_all(ex)
    .await?;
    Ok(rows.into_iter().map(|r| (r.session, r.queued)).collect())
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

/// Sets the permission mode the session's CLI runs with from now on. False when there
/// is no such session.
pub async fn set_permission_mode(
    ex: impl SqliteExecutor<'_>,
    id: &str,
    mode: &str,
) -> sqlx::Result<bool> {
    let done = sqlx::query("UPDATE sessions SET permission_mode = ? WHERE id = ?")
        .bind(mode)
        .bind(id)
        .execute(ex)
        .await?;
    Ok(done.rows_affected() == 1)
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

/// Ends an active session: `ended` (deleted by its owner) or `expired` (its end came: only
/// when `expires_at <= now`, so a keep-alive committed first wins). True when it changed.
pub async fn end(
    ex: impl SqliteExecutor<'_>,
    id: &str,
    state: &str,
    reason: &str,
    now: i64,
) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "UPDATE sessions SET state = ?1, ended_at = ?2, end_reason = ?3 \
         WHERE id = ?4 AND state = 'active' AND (?1 <> 'expired' OR expires_at <= ?2)",
    )
    .bind(state)
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
/// Read in the transaction that creates a session.
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
