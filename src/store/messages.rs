//! Queries on `messages`: user messages (the turn queue, in id order) and the replies.
//! A user message moves `queued` → `running` → one terminal state, and only forward.

use serde::{Deserialize, Serialize};
use sqlx::{FromRow, SqliteExecutor};

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, sqlx::Type, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
#[sqlx(rename_all = "lowercase")]
pub enum Status {
    Queued,
    Running,
    Completed,
    Failed,
    Interrupted,
    Cancelled,
}

impl Status {
    pub fn is_terminal(self) -> bool {
        !matches!(self, Status::Queued | Status::Running)
    }

    /// The name stored in the `status` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Running => "running",
            Status::Completed => "completed",
            Status::Failed => "failed",
            Status::Interrupted => "interrupted",
            Status::Cancelled => "cancelled",
        }
    }
}

#[derive(Debug, Clone, FromRow)]
pub struct MessageRow {
    pub id: i64,
    pub session_id: String,
    pub owner: String,
    pub role: String,
    pub status: Status,
    pub text: String,
    pub client_message_id: Option<String>,
    pub reply_to: Option<i64>,
    pub error: Option<String>,
    pub cost_usd: Option<f64>,
    pub duration_ms: Option<i64>,
    pub usage: Option<String>,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    /// When the agent got the message (see `mark_delivered`); None: it never did.
    pub delivered_at: Option<i64>,
}

pub struct NewUserMessage<'a> {
    pub session_id: &'a str,
    pub owner: &'a str,
    pub text: &'a str,
    pub client_message_id: Option<&'a str>,
    pub now: i64,
}

/// Queues a user message. A repeated `client_message_id` of the same owner fails with a
/// unique violation (see [`super::is_unique_violation`]). Returns its id.
pub async fn insert_user(ex: impl SqliteExecutor<'_>, m: &NewUserMessage<'_>) -> sqlx::Result<i64> {
    let done = sqlx::query(
        "INSERT INTO messages (session_id, owner, role, status, text, client_message_id, created_at) \
         VALUES (?, ?, 'user', 'queued', ?, ?, ?)",
    )
    .bind(m.session_id)
    .bind(m.owner)
    .bind(m.text)
    .bind(m.client_message_id)
    .bind(m.now)
    .execute(ex)
    .await?;
    Ok(done.last_insert_rowid())
}

pub struct Reply<'a> {
    pub session_id: &'a str,
    pub owner: &'a str,
    pub reply_to: i64,
    pub text: &'a str,
    pub cost_usd: f64,
    pub duration_ms: Option<i64>,
    pub usage: Option<&'a str>,
    pub now: i64,
}

/// Stores the agent's reply to a user message, returning it as stored.
pub async fn insert_reply(ex: impl SqliteExecutor<'_>, r: &Reply<'_>) -> sqlx::Result<MessageRow> {
    sqlx::query_as(
        "INSERT INTO messages (session_id, owner, role, status, text, reply_to, cost_usd, \
         duration_ms, usage, created_at, started_at, finished_at) \
         VALUES (?1, ?2, 'assistant', 'completed', ?3, ?4, ?5, ?6, ?7, ?8, ?8, ?8) RETURNING *",
    )
    .bind(r.session_id)
    .bind(r.owner)
    .bind(r.text)
    .bind(r.reply_to)
    .bind(r.cost_usd)
    .bind(r.duration_ms)
    .bind(r.usage)
    .bind(r.now)
    .fetch_one(ex)
    .await
}

pub async fn get(ex: impl SqliteExecutor<'_>, id: i64) -> sqlx::Result<Option<MessageRow>> {
    sqlx::query_as("SELECT * FROM messages WHERE id = ?")
        .bind(id)
        .fetch_optional(ex)
        .await
}

pub async fn find_by_client_id(
    ex: impl SqliteExecutor<'_>,
    owner: &str,
    client_message_id: &str,
) -> sqlx::Result<Option<MessageRow>> {
    sqlx::query_as("SELECT * FROM messages WHERE owner = ? AND client_message_id = ?")
        .bind(owner)
        .bind(client_message_id)
        .fetch_optional(ex)
        .await
}

/// A message and, for a user message, its reply, in one read.
pub async fn with_reply(
    ex: impl SqliteExecutor<'_>,
    id: i64,
) -> sqlx::Result<(Option<MessageRow>, Option<MessageRow>)> {
    let rows: Vec<MessageRow> = sqlx::query_as(
        "SELECT * FROM messages WHERE id = ?1 OR (reply_to = ?1 AND role = 'assistant') \
         ORDER BY id",
    )
    .bind(id)
    .fetch_all(ex)
    .await?;
    let mut rows = rows.into_iter();
    let first = rows.next().filter(|m| m.id == id);
    Ok((first, rows.next()))
}

/// The reply to a user message, if one was stored.
pub async fn reply_to(
    ex: impl SqliteExecutor<'_>,
    user_message_id: i64,
) -> sqlx::Result<Option<MessageRow>> {
    sqlx::query_as("SELECT * FROM messages WHERE reply_to = ? AND role = 'assistant'")
        .bind(user_message_id)
        .fetch_optional(ex)
        .await
}

pub async fn count_queued(ex: impl SqliteExecutor<'_>, session_id: &str) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT COUNT(*) FROM messages WHERE session_id = ? AND status = 'queued'")
        .bind(session_id)
        .fetch_one(ex)
        .await
}

/// The oldest queued message of a session: the next turn.
pub async fn next_queued(
    ex: impl SqliteExecutor<'_>,
    session_id: &str,
) -> sqlx::Result<Option<MessageRow>> {
    sqlx::query_as(
        "SELECT * FROM messages WHERE session_id = ? AND status = 'queued' ORDER BY id LIMIT 1",
    )
    .bind(session_id)
    .fetch_optional(ex)
    .await
}

/// Sessions that have queued messages (to restart their actors after a restart).
pub async fn sessions_with_queued(ex: impl SqliteExecutor<'_>) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar("SELECT DISTINCT session_id FROM messages WHERE status = 'queued'")
        .fetch_all(ex)
        .await
}

/// Marks a queued message running. False when it is no longer queued.
pub async fn mark_running(ex: impl SqliteExecutor<'_>, id: i64, now: i64) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "UPDATE messages SET status = 'running', started_at = ? WHERE id = ? AND status = 'queued'",
    )
    .bind(now)
    .bind(id)
    .execute(ex)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Records that the message's line was written to the agent's stdin; the first time counts.
pub async fn mark_delivered(ex: impl SqliteExecutor<'_>, id: i64, now: i64) -> sqlx::Result<()> {
    sqlx::query("UPDATE messages SET delivered_at = ? WHERE id = ? AND delivered_at IS NULL")
        .bind(now)
        .bind(id)
        .execute(ex)
        .await?;
    Ok(())
}

/// How a turn ended, for [`finish`].
pub struct Outcome<'a> {
    pub status: Status,
    pub error: Option<&'a str>,
    pub cost_usd: Option<f64>,
    pub duration_ms: Option<i64>,
    pub usage: Option<&'a str>,
    pub now: i64,
}

/// Moves a user message to a terminal state, returning it as it ended. None (and nothing
/// changes) if it already was in one: every message ends exactly once.
pub async fn finish(
    ex: impl SqliteExecutor<'_>,
    id: i64,
    o: &Outcome<'_>,
) -> sqlx::Result<Option<MessageRow>> {
    debug_assert!(o.status.is_terminal());
    sqlx::query_as(
        "UPDATE messages SET status = ?, error = ?, cost_usd = ?, duration_ms = ?, usage = ?, \
         finished_at = ? WHERE id = ? AND status IN ('queued', 'running') RETURNING *",
    )
    .bind(o.status)
    .bind(o.error)
    .bind(o.cost_usd)
    .bind(o.duration_ms)
    .bind(o.usage)
    .bind(o.now)
    .bind(id)
    .fetch_optional(ex)
    .await
}

/// The messages left `running` (by a crash, read at the next start), oldest first.
pub async fn list_running(ex: impl SqliteExecutor<'_>) -> sqlx::Result<Vec<MessageRow>> {
    sqlx::query_as("SELECT * FROM messages WHERE status = 'running' ORDER BY id")
        .fetch_all(ex)
        .await
}

/// Ends every message left `running` (tether stopped mid-turn), returning them.
pub async fn interrupt_all_running(
    ex: impl SqliteExecutor<'_>,
    reason: &str,
    now: i64,
) -> sqlx::Result<Vec<MessageRow>> {
    sqlx::query_as(
        "UPDATE messages SET status = 'interrupted', error = ?, finished_at = ? \
         WHERE status = 'running' RETURNING *",
    )
    .bind(reason)
    .bind(now)
    .fetch_all(ex)
    .await
}

/// Fails the message of a session left `running` (its actor died), returning it.
pub async fn fail_running(
    ex: impl SqliteExecutor<'_>,
    session_id: &str,
    reason: &str,
    now: i64,
) -> sqlx::Result<Option<MessageRow>> {
    sqlx::query_as(
        "UPDATE messages SET status = 'failed', error = ?, finished_at = ? \
         WHERE session_id = ? AND status = 'running' RETURNING *",
    )
    .bind(reason)
    .bind(now)
    .bind(session_id)
    .fetch_optional(ex)
    .await
}

/// Cancels the queued messages of a session (it was deleted).
pub async fn cancel_queued(
    ex: impl SqliteExecutor<'_>,
    session_id: &str,
    reason: &str,
    now: i64,
) -> sqlx::Result<u64> {
    let done = sqlx::query(
        "UPDATE messages SET status = 'cancelled', error = ?, finished_at = ? \
         WHERE session_id = ? AND status = 'queued'",
    )
    .bind(reason)
    .bind(now)
    .bind(session_id)
    .execute(ex)
    .await?;
    Ok(done.rows_affected())
}

/// Messages of a session with an id above `after`, oldest first.
pub async fn list_after(
    ex: impl SqliteExecutor<'_>,
    session_id: &str,
    after: i64,
    limit: i64,
) -> sqlx::Result<Vec<MessageRow>> {
    sqlx::query_as("SELECT * FROM messages WHERE session_id = ? AND id > ? ORDER BY id LIMIT ?")
        .bind(session_id)
        .bind(after)
        .bind(limit)
        .fetch_all(ex)
        .await
}

/// Deletes, at most `batch` at a time, the messages of sessions that ended before `cutoff`
/// and the approvals asked in their turns (which refer to them). Newest first, so that a
/// reply goes with (or before) the message it answers. Returns how many messages went.
/// Run it in a write transaction: both statements then pick the same messages.
pub async fn prune_ended(
    ex: &mut sqlx::SqliteConnection,
    cutoff: i64,
    batch: i64,
) -> sqlx::Result<u64> {
    sqlx::query(PRUNE_APPROVALS)
        .bind(cutoff)
        .bind(batch)
        .execute(&mut *ex)
        .await?;
    let done = sqlx::query(PRUNE_MESSAGES)
        .bind(cutoff)
        .bind(batch)
        .execute(&mut *ex)
        .await?;
    Ok(done.rows_affected())
}

const PRUNE_APPROVALS: &str = "DELETE FROM approvals WHERE message_id IN (\
     SELECT m.id FROM messages m JOIN sessions s ON s.id = m.session_id \
     WHERE s.ended_at IS NOT NULL AND s.ended_at < ?1 ORDER BY m.id DESC LIMIT ?2)";
const PRUNE_MESSAGES: &str = "DELETE FROM messages WHERE id IN (\
     SELECT m.id FROM messages m JOIN sessions s ON s.id = m.session_id \
     WHERE s.ended_at IS NOT NULL AND s.ended_at < ?1 ORDER BY m.id DESC LIMIT ?2)";

/// How many messages a session has stored.
pub async fn count(ex: impl SqliteExecutor<'_>, session_id: &str) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT COUNT(*) FROM messages WHERE session_id = ?")
        .bind(session_id)
        .fetch_one(ex)
        .await
}
