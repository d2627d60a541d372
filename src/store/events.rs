//! Queries on `events`: each session's log of agent lines and tether's own lifecycle
//! events, numbered 1, 2, 3… per session. The numbers are the SSE ids.

use sqlx::{FromRow, SqliteExecutor};

#[derive(Debug, Clone, FromRow)]
pub struct EventRow {
    pub session_id: String,
    pub seq: i64,
    #[sqlx(rename = "type")]
    pub kind: String,
    pub data: String,
    pub created_at: i64,
}

pub async fn append(ex: impl SqliteExecutor<'_>, e: &EventRow) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO events (session_id, seq, type, data, created_at) VALUES (?, ?, ?, ?, ?)",
    )
    .bind(&e.session_id)
    .bind(e.seq)
    .bind(&e.kind)
    .bind(&e.data)
    .bind(e.created_at)
    .execute(ex)
    .await?;
    Ok(())
}

/// The highest sequence number of a session's log (0 when empty).
pub async fn last_seq(ex: impl SqliteExecutor<'_>, session_id: &str) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM events WHERE session_id = ?")
        .bind(session_id)
        .fetch_one(ex)
        .await
}

pub async fn list_after(
    ex: impl SqliteExecutor<'_>,
    session_id: &str,
    after: i64,
    limit: i64,
) -> sqlx::Result<Vec<EventRow>> {
    sqlx::query_as("SELECT * FROM events WHERE session_id = ? AND seq > ? ORDER BY seq LIMIT ?")
        .bind(session_id)
        .bind(after)
        .bind(limit)
        .fetch_all(ex)
        .await
}
