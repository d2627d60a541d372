//! Queries on `events`: each session's log of agent lines and tether's own lifecycle
//! events, numbered 1, 2, 3… per session. The numbers are the SSE ids.

use std::borrow::Cow;

use sqlx::{FromRow, SqliteExecutor};

/// Longest event type kept; longer ones are cut.
const MAX_KIND_CHARS: usize = 64;

/// An event type that Server-Sent Events can carry: letters, digits and `_ . : -` only
/// (a newline in an SSE `event:` field would end it), at most 64 characters, never empty.
/// Applied when an event is stored and again when it is sent.
pub fn sanitize_kind(kind: &str) -> Cow<'_, str> {
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-');
    if !kind.is_empty() && kind.len() <= MAX_KIND_CHARS && kind.chars().all(ok) {
        return Cow::Borrowed(kind);
    }
    let clean: String = kind
        .chars()
        .take(MAX_KIND_CHARS)
        .map(|c| if ok(c) { c } else { '_' })
        .collect();
    if clean.is_empty() {
        Cow::Borrowed("unknown")
    } else {
        Cow::Owned(clean)
    }
}

#[derive(Debug, Clone, FromRow)]
pub struct EventRow {
    pub session_id: String,
    pub seq: i64,
    #[sqlx(rename = "type")]
    pub kind: String,
    pub data: String,
    pub created_at: i64,
}

/// Rows per INSERT in [`append_all`] (five bound values each, far under SQLite's limit).
const ROWS_PER_INSERT: usize = 500;

/// Appends events in as few statements as can hold them (one for a turn's usual few;
/// none for none).
pub async fn append_all<'a>(
    ex: &mut sqlx::SqliteConnection,
    rows: impl IntoIterator<Item = &'a EventRow>,
) -> sqlx::Result<()> {
    let rows: Vec<&EventRow> = rows.into_iter().collect();
    for chunk in rows.chunks(ROWS_PER_INSERT) {
        let mut insert = sqlx::QueryBuilder::new(
            "INSERT INTO events (session_id, seq, type, data, created_at) ",
        );
        insert.push_values(chunk, |mut row, e| {
            row.push_bind(&e.session_id)
                .push_bind(e.seq)
                .push_bind(&e.kind)
                .push_bind(&e.data)
                .push_bind(e.created_at);
        });
        insert.build().execute(&mut *ex).await?;
    }
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

/// Deletes, at most `batch` at a time, the events of sessions that ended before `cutoff`.
/// Returns how many went.
pub async fn prune_ended(
    ex: impl SqliteExecutor<'_>,
    cutoff: i64,
    batch: i64,
) -> sqlx::Result<u64> {
    let done = sqlx::query(
        "DELETE FROM events WHERE (session_id, seq) IN (SELECT e.session_id, e.seq FROM events e \
         JOIN sessions s ON s.id = e.session_id \
         WHERE s.ended_at IS NOT NULL AND s.ended_at < ? LIMIT ?)",
    )
    .bind(cutoff)
    .bind(batch)
    .execute(ex)
    .await?;
    Ok(done.rows_affected())
}

/// Deletes, at most `batch` at a time, the oldest events of sessions holding more than
/// `keep`, so each keeps its latest `keep`. Returns how many went.
pub async fn prune_over_cap(
    ex: impl SqliteExecutor<'_>,
    keep: i64,
    batch: i64,
) -> sqlx::Result<u64> {
    let done = sqlx::query(
        "DELETE FROM events WHERE (session_id, seq) IN (SELECT e.session_id, e.seq FROM events e \
         JOIN (SELECT session_id, MAX(seq) - ?1 AS below FROM events GROUP BY session_id \
               HAVING COUNT(*) > ?1) o ON o.session_id = e.session_id \
         WHERE e.seq <= o.below LIMIT ?2)",
    )
    .bind(keep)
    .bind(batch)
    .execute(ex)
    .await?;
    Ok(done.rows_affected())
}

/// How many events a session has stored.
pub async fn count(ex: impl SqliteExecutor<'_>, session_id: &str) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT COUNT(*) FROM events WHERE session_id = ?")
        .bind(session_id)
        .fetch_one(ex)
        .await
}

#[cfg(test)]
mod tests {
    use super::sanitize_kind;

    #[test]
    fn event_types_are_made_safe_for_sse() {
        assert_eq!(sanitize_kind("tether.turn_started"), "tether.turn_started");
        assert_eq!(sanitize_kind("a\nb\rc d"), "a_b_c_d");
        assert_eq!(sanitize_kind(""), "unknown");
        assert_eq!(sanitize_kind(&"x".repeat(100)).len(), 64);
    }
}
