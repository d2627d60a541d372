//! Queries on `messages`: user messages (the turn queue, in id order) and the replies.
//! A user message moves `queued` → `running` → one terminal state, and only forward.

use rusqlite::{params, Connection};
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

    /// The status named `name`, as stored.
    pub fn parse(name: &str) -> Option<Status> {
        [
            Status::Queued,
            Status::Running,
            Status::Completed,
            Status::Failed,
            Status::Interrupted,
            Status::Cancelled,
        ]
        .into_iter()
        .find(|s| s.as_str() == name)
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
/// unique violation (see [`super::is_unique_violation`]).
/// Stores a user message `queued` (on the writer, see `Store::write`).
pub fn insert_user(db: &Connection, m: &NewUserMessage<'_>) -> rusqlite::Result<i64> {
    db.prepare_cached(
        "INSERT INTO messages (session_id, owner, role, status, text, client_message_id, created_at) \
         VALUES (?, ?, 'user', 'queued', ?, ?, ?)",
    )?
    .execute(params![m.session_id, m.owner, m.text, m.client_message_id, m.now])?;
    Ok(db.last_insert_rowid())
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

/// Stores the agent's reply to a user message (on the writer).
pub fn insert_reply(db: &Connection, r: &Reply<'_>) -> rusqlite::Result<i64> {
    db.prepare_cached(
        "INSERT INTO messages (session_id, owner, role, status, text, reply_to, cost_usd, \
         duration_ms, usage, created_at, started_at, finished_at) \
         VALUES (?1, ?2, 'assistant', 'completed', ?3, ?4, ?5, ?6, ?7, ?8, ?8, ?8)",
    )?
    .execute(params![
        r.session_id,
        r.owner,
        r.text,
        r.reply_to,
        r.cost_usd,
        r.duration_ms,
        r.usage,
        r.now
    ])?;
    Ok(db.last_insert_rowid())
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
    let rows: Vec<MessageRow> = sqlx::query_as(WITH_REPLY).bind(id).fetch_all(ex).await?;
    Ok(first_and_reply(rows, id))
}

const WITH_REPLY: &str =
    "SELECT * FROM messages WHERE id = ?1 OR (reply_to = ?1 AND role = 'assistant') ORDER BY id";

fn first_and_reply(rows: Vec<MessageRow>, id: i64) -> (Option<MessageRow>, Option<MessageRow>) {
    let mut rows = rows.into_iter();
    let first = rows.next().filter(|m| m.id == id);
    (first, rows.next())
}

/// [`with_reply`], on the writer (read back in the transaction that wrote them).
pub fn with_reply_sync(
    db: &Connection,
    id: i64,
) -> rusqlite::Result<(Option<MessageRow>, Option<MessageRow>)> {
    let rows = db
        .prepare_cached(WITH_REPLY)?
        .query_map([id], |r| {
            let status: String = r.get("status")?;
            Ok(MessageRow {
                id: r.get("id")?,
                session_id: r.get("session_id")?,
                owner: r.get("owner")?,
                role: r.get("role")?,
                status: Status::parse(&status).ok_or_else(|| {
                    rusqlite::Error::InvalidColumnType(
                        0,
                        format!("status {status}"),
                        rusqlite::types::Type::Text,
                    )
                })?,
                text: r.get("text")?,
                client_message_id: r.get("client_message_id")?,
                reply_to: r.get("reply_to")?,
                error: r.get("error")?,
                cost_usd: r.get("cost_usd")?,
                duration_ms: r.get("duration_ms")?,
                usage: r.get("usage")?,
                created_at: r.get("created_at")?,
                started_at: r.get("started_at")?,
                finished_at: r.get("finished_at")?,
                delivered_at: r.get("delivered_at")?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(first_and_reply(rows, id))
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

/// Marks a queued message running (on the writer). False when it is no longer queued.
pub fn mark_running(db: &Connection, id: i64, now: i64) -> rusqlite::Result<bool> {
    let changed = db
        .prepare_cached(
            "UPDATE messages SET status = 'running', started_at = ? WHERE id = ? AND status = 'queued'",
        )?
        .execute(params![now, id])?;
    Ok(changed == 1)
}

/// Records that the message's line was written to the agent's stdin (on the writer); the
/// first time counts.
pub fn mark_delivered(db: &Connection, id: i64, now: i64) -> rusqlite::Result<()> {
    db.prepare_cached(
        "UPDATE messages SET delivered_at = ? WHERE id = ? AND delivered_at IS NULL",
    )?
    .execute(params![now, id])?;
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

/// Moves a user message to a terminal state (on the writer). Returns false (and changes
/// nothing) if it already was in one: every message ends exactly once.
pub fn finish(db: &Connection, id: i64, o: &Outcome<'_>) -> rusqlite::Result<bool> {
    debug_assert!(o.status.is_terminal());
    let changed = db
        .prepare_cached(
            "UPDATE messages SET status = ?, error = ?, cost_usd = ?, duration_ms = ?, usage = ?, \
             finished_at = ? WHERE id = ? AND status IN ('queued', 'running')",
        )?
        .execute(params![
            o.status.as_str(),
            o.error,
            o.cost_usd,
            o.duration_ms,
            o.usage,
            o.now,
            id
        ])?;
    Ok(changed == 1)
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
