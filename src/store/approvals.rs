//! Queries on `approvals`: a tool the agent wants to use (or a question it asks), from
//! `pending` to exactly one of `allowed`, `denied`, `expired` or `cancelled`.

use serde::{Deserialize, Serialize};
use sqlx::{FromRow, SqliteExecutor};

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, sqlx::Type, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
#[sqlx(rename_all = "lowercase")]
pub enum ApprovalStatus {
    Pending,
    Allowed,
    Denied,
    /// It could no longer be answered: its process died, or tether restarted.
    Expired,
    /// Its turn ended otherwise: interrupted, the session ended or expired.
    Cancelled,
}

impl ApprovalStatus {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => Self::Pending,
            "allowed" => Self::Allowed,
            "denied" => Self::Denied,
            "expired" => Self::Expired,
            "cancelled" => Self::Cancelled,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, FromRow)]
pub struct ApprovalRow {
    pub id: i64,
    pub session_id: String,
    pub message_id: i64,
    pub request_id: String,
    pub kind: String,
    pub tool_name: String,
    pub input: String,
    pub input_cut: bool,
    pub description: Option<String>,
    pub suggestions: Option<String>,
    pub status: ApprovalStatus,
    pub decision: Option<String>,
    pub decided_by: Option<String>,
    pub reason: Option<String>,
    pub created_at: i64,
    pub decided_at: Option<i64>,
}

pub struct NewApproval<'a> {
    pub session_id: &'a str,
    pub message_id: i64,
    pub request_id: &'a str,
    pub kind: &'a str,
    pub tool_name: &'a str,
    pub input: &'a str,
    pub input_cut: bool,
    pub description: Option<&'a str>,
    pub suggestions: Option<&'a str>,
    pub now: i64,
}

pub async fn insert(ex: impl SqliteExecutor<'_>, a: &NewApproval<'_>) -> sqlx::Result<i64> {
    let done = sqlx::query(
        "INSERT INTO approvals (session_id, message_id, request_id, kind, tool_name, input, \
         input_cut, description, suggestions, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(a.session_id)
    .bind(a.message_id)
    .bind(a.request_id)
    .bind(a.kind)
    .bind(a.tool_name)
    .bind(a.input)
    .bind(a.input_cut)
    .bind(a.description)
    .bind(a.suggestions)
    .bind(a.now)
    .execute(ex)
    .await?;
    Ok(done.last_insert_rowid())
}

pub async fn get(ex: impl SqliteExecutor<'_>, id: i64) -> sqlx::Result<Option<ApprovalRow>> {
    sqlx::query_as("SELECT * FROM approvals WHERE id = ?")
        .bind(id)
        .fetch_optional(ex)
        .await
}

/// A session's approvals, oldest first, optionally only those in `status`.
pub async fn list(
    ex: impl SqliteExecutor<'_>,
    session_id: &str,
    status: Option<ApprovalStatus>,
    limit: i64,
) -> sqlx::Result<Vec<ApprovalRow>> {
    sqlx::query_as(
        "SELECT * FROM approvals WHERE session_id = ?1 AND (?2 IS NULL OR status = ?2) \
         ORDER BY id LIMIT ?3",
    )
    .bind(session_id)
    .bind(status)
    .bind(limit)
    .fetch_all(ex)
    .await
}

/// Records a decision on a pending approval. False when it was no longer pending.
pub async fn decide(
    ex: impl SqliteExecutor<'_>,
    id: i64,
    status: ApprovalStatus,
    decision: &str,
    decided_by: &str,
    now: i64,
) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "UPDATE approvals SET status = ?2, decision = ?3, decided_by = ?4, decided_at = ?5 \
         WHERE id = ?1 AND status = 'pending'",
    )
    .bind(id)
    .bind(status)
    .bind(decision)
    .bind(decided_by)
    .bind(now)
    .execute(ex)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Which pending approvals [`close_pending`] ends.
#[derive(Debug, Clone, Copy)]
pub enum Scope<'a> {
    /// One approval.
    One(i64),
    /// Those of one turn (its user message).
    Turn(i64),
    Session(&'a str),
    /// All (after a restart).
    All,
}

impl Scope<'_> {
    /// (approval id, message id, session id) to match; None matches any.
    fn keys(&self) -> (Option<i64>, Option<i64>, Option<&str>) {
        match *self {
            Scope::One(id) => (Some(id), None, None),
            Scope::Turn(id) => (None, Some(id), None),
            Scope::Session(id) => (None, None, Some(id)),
            Scope::All => (None, None, None),
        }
    }
}

/// Ends what is still pending in `scope` as `status` (expired or cancelled) with why.
/// Returns the ids ended.
pub async fn close_pending(
    ex: impl SqliteExecutor<'_>,
    scope: Scope<'_>,
    status: ApprovalStatus,
    reason: &str,
    now: i64,
) -> sqlx::Result<Vec<i64>> {
    let (id, message_id, session_id) = scope.keys();
    sqlx::query_scalar(
        "UPDATE approvals SET status = ?2, reason = ?3, decided_by = 'tether', decided_at = ?4 \
         WHERE status = 'pending' AND (?1 IS NULL OR message_id = ?1) \
         AND (?5 IS NULL OR session_id = ?5) AND (?6 IS NULL OR id = ?6) RETURNING id",
    )
    .bind(message_id)
    .bind(status)
    .bind(reason)
    .bind(now)
    .bind(session_id)
    .bind(id)
    .fetch_all(ex)
    .await
}
