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
}

pub struct NewUserMessage<'a> {
    pub session_id: &'a str,
    pub owner: &'a str,
    pub text: &'a str,
    pub client_message_id: Option<&'a str>,
    pub now: i64,
}

/// Queues a user message. A repeated `client_message_id` of the same owner fails with a
/// unique violation (see [`super::is_unique_violation`]).
pub async fn insert_user(ex: impl SqliteExecutor<'_>, m: &NewUserMessage<'_>) -> sqlx::Result<i64> {
    let id = sqlx::query(
        "INSERT INTO messages (session_id, owner, role, status, text, client_message_id, created_at) \
         VALUES (?, ?, 'user', 'queued', ?, ?, ?)",
    )
    .bind(m.session_id)
    .bind(m.owner)
    .bind(m.text)
    .bind(m.client_message_id)
    .bind(m.now)
    .execute(ex)
    .await?
    .last_insert_rowid();
    Ok(id)
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

/// Stores the agent's reply to a user message.
pub async fn insert_reply(ex: impl SqliteExecutor<'_>, r: &Reply<'_>) -> sqlx::Result<i64> {
    let id = sqlx::query(
        "INSERT INTO messages (session_id, owner, role, status, text, reply_to, cost_usd, \
         duration_ms, usage, created_at, started_at, finished_at) \
         VALUES (?, ?, 'assistant', 'completed', ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(r.session_id)
    .bind(r.owner)
    .bind(r.text)
    .bind(r.reply_to)
    .bind(r.cost_usd)
    .bind(r.duration_ms)
    .bind(r.usage)
    .bind(r.now)
    .bind(r.now)
    .bind(r.now)
    .execute(ex)
    .await?
    .last_insert_rowid();
    Ok(id)
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
        "SELECT * FROM messages WHERE id = ?1 OR (reply_to = ?1 AND role = 'assistant') ORDER BY id",
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

/// How a turn ended, for [`finish`].
pub struct Outcome<'a> {
    pub status: Status,
    pub error: Option<&'a str>,
    pub cost_usd: Option<f64>,
    pub duration_ms: Option<i64>,
    pub usage: Option<&'a str>,
    pub now: i64,
}

/// Moves a user message to a terminal state. Returns false (and changes nothing) if it
/// already was in one: every message ends exactly once.
pub async fn finish(ex: impl SqliteExecutor<'_>, id: i64, o: &Outcome<'_>) -> sqlx::Result<bool> {
    debug_assert!(o.status.is_terminal());
    let done = sqlx::query(
        "UPDATE messages SET status = ?, error = ?, cost_usd = ?, duration_ms = ?, usage = ?, \
         finished_at = ? WHERE id = ? AND status IN ('queued', 'running')",
    )
    .bind(o.status)
    .bind(o.error)
    .bind(o.cost_usd)
    .bind(o.duration_ms)
    .bind(o.usage)
    .bind(o.now)
    .bind(id)
    .execute(ex)
    .await?;
    Ok(done.rows_affected() == 1)
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
