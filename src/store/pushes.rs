//! Queries on `pushes` (the outbox, kept afterwards as the ledger) and `push_attempts` (one
//! row per send tried, with APNs' answer). A push moves
//! `pending` → `sending` → `delivered` | `logged` | `failed` | `pending` (a retry), or
//! `pending` → `cancelled` when its device goes; a row left `sending` by a crash goes back to
//! `pending` at start.

use serde::{Deserialize, Serialize};
use sqlx::{FromRow, SqliteExecutor};

use super::devices::Environment;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, sqlx::Type, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
#[sqlx(rename_all = "lowercase")]
pub enum PushStatus {
    Pending,
    Sending,
    Delivered,
    Logged,
    Failed,
    Cancelled,
}

impl PushStatus {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => Self::Pending,
            "sending" => Self::Sending,
            "delivered" => Self::Delivered,
            "logged" => Self::Logged,
            "failed" => Self::Failed,
            "cancelled" => Self::Cancelled,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, FromRow)]
pub struct PushRow {
    pub id: i64,
    pub device_id: Option<i64>,
    pub owner: String,
    /// The session it is about; None for a terminal's push.
    pub session_id: Option<String>,
    /// The terminal it is about; None for a session's push.
    pub terminal_id: Option<String>,
    pub message_id: Option<i64>,
    pub kind: String,
    pub title: String,
    pub subtitle: Option<String>,
    pub text: String,
    pub status: PushStatus,
    pub attempts: i64,
    pub next_attempt_at: i64,
    pub last_status_code: Option<i64>,
    pub last_reason: Option<String>,
    pub apns_id: Option<String>,
    pub error: Option<String>,
    pub payload: Option<String>,
    /// APNs' expiration (ms): not sent after it.
    pub expires_at: Option<i64>,
    /// The approval it asks for.
    pub approval_id: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A claimed push with what sending it needs from its device.
#[derive(Debug, Clone, FromRow)]
pub struct DuePush {
    #[sqlx(flatten)]
    pub push: PushRow,
    pub token: String,
    pub environment: Environment,
    pub topic: Option<String>,
}

#[derive(Debug, Clone, FromRow)]
pub struct AttemptRow {
    pub id: i64,
    pub push_id: i64,
    pub status_code: Option<i64>,
    pub reason: Option<String>,
    pub apns_id: Option<String>,
    pub timestamp: Option<i64>,
    pub error: Option<String>,
    pub action: String,
    pub at: i64,
}

pub struct NewPush<'a> {
    pub owner: &'a str,
    pub session_id: Option<&'a str>,
    pub terminal_id: Option<&'a str>,
    pub message_id: Option<i64>,
    pub kind: &'a str,
    pub title: &'a str,
    pub subtitle: Option<&'a str>,
    pub text: &'a str,
    pub expires_at: Option<i64>,
    pub approval_id: Option<i64>,
    pub now: i64,
}

/// Adds the push for each active device of its owner, due now. A push already stored for
/// the same event and device is left as it is. Returns the number of rows added.
pub async fn insert_for_owner_devices(
    ex: impl SqliteExecutor<'_>,
    p: &NewPush<'_>,
) -> sqlx::Result<u64> {
    let done = sqlx::query(
        "INSERT INTO pushes (device_id, owner, session_id, message_id, kind, title, subtitle, \
         text, expires_at, approval_id, next_attempt_at, created_at, updated_at, terminal_id) \
         SELECT d.id, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?9, ?10, ?8, ?8, ?8, ?11 FROM devices d \
         WHERE d.owner = ?1 AND d.disabled_at IS NULL ORDER BY d.id \
         ON CONFLICT DO NOTHING",
    )
    .bind(p.owner)
    .bind(p.session_id)
    .bind(p.message_id)
    .bind(p.kind)
    .bind(p.title)
    .bind(p.subtitle)
    .bind(p.text)
    .bind(p.now)
    .bind(p.expires_at)
    .bind(p.approval_id)
    .bind(p.terminal_id)
    .execute(ex)
    .await?;
    Ok(done.rows_affected())
}

/// Cancels one push not sent yet (claimed or pending): what it was about is moot.
pub async fn cancel(ex: impl SqliteExecutor<'_>, id: i64, why: &str, now: i64) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE pushes SET status = 'cancelled', error = ?2, updated_at = ?3 \
         WHERE id = ?1 AND status IN ('pending', 'sending')",
    )
    .bind(id)
    .bind(why)
    .bind(now)
    .execute(ex)
    .await?;
    Ok(())
}

/// Marks up to `limit` due pushes (pending, `next_attempt_at <= now`, device active) as
/// `sending`, oldest due first, and returns their ids.
pub async fn claim_due(
    ex: impl SqliteExecutor<'_>,
    now: i64,
    limit: i64,
) -> sqlx::Result<Vec<i64>> {
    let mut ids: Vec<i64> = sqlx::query_scalar(
        "UPDATE pushes SET status = 'sending', updated_at = ?1 WHERE id IN ( \
           SELECT p.id FROM pushes p JOIN devices d ON d.id = p.device_id \
           WHERE p.status = 'pending' AND p.next_attempt_at <= ?1 AND d.disabled_at IS NULL \
           ORDER BY p.next_attempt_at, p.id LIMIT ?2) \
         RETURNING id",
    )
    .bind(now)
    .bind(limit)
    .fetch_all(ex)
    .await?;
    ids.sort_unstable();
    Ok(ids)
}

/// Claimed pushes with their device's token, environment and topic, in id order.
pub async fn sending_with_devices(
    ex: impl SqliteExecutor<'_>,
    ids: &[i64],
) -> sqlx::Result<Vec<DuePush>> {
    let ids = serde_json::to_string(ids).unwrap_or_else(|_| "[]".into());
    sqlx::query_as(
        "SELECT p.*, d.token, d.environment, d.topic AS topic FROM pushes p \
         JOIN devices d ON d.id = p.device_id \
         WHERE p.status = 'sending' AND p.id IN (SELECT value FROM json_each(?)) ORDER BY p.id",
    )
    .bind(ids)
    .fetch_all(ex)
    .await
}

/// Puts claimed pushes back to `pending` without counting an attempt (the worker stopped
/// before sending them).
pub async fn release(ex: impl SqliteExecutor<'_>, ids: &[i64], now: i64) -> sqlx::Result<u64> {
    let ids = serde_json::to_string(ids).unwrap_or_else(|_| "[]".into());
    let done = sqlx::query(
        "UPDATE pushes SET status = 'pending', updated_at = ? \
         WHERE status = 'sending' AND id IN (SELECT value FROM json_each(?))",
    )
    .bind(now)
    .bind(ids)
    .execute(ex)
    .await?;
    Ok(done.rows_affected())
}

/// At start: pushes left `sending` by a run that stopped mid-send go back to `pending`.
pub async fn reset_sending(ex: impl SqliteExecutor<'_>, now: i64) -> sqlx::Result<u64> {
    let done = sqlx::query(
        "UPDATE pushes SET status = 'pending', updated_at = ? WHERE status = 'sending'",
    )
    .bind(now)
    .execute(ex)
    .await?;
    Ok(done.rows_affected())
}

/// Cancels the unsent pushes of a device (it was disabled or removed, or changed owner).
pub async fn cancel_pending_for_device(
    ex: impl SqliteExecutor<'_>,
    device_id: i64,
    reason: &str,
    now: i64,
) -> sqlx::Result<u64> {
    let done = sqlx::query(
        "UPDATE pushes SET status = 'cancelled', error = ?, updated_at = ? \
         WHERE device_id = ? AND status IN ('pending', 'sending')",
    )
    .bind(reason)
    .bind(now)
    .bind(device_id)
    .execute(ex)
    .await?;
    Ok(done.rows_affected())
}

/// Cancels pending pushes whose device is gone or disabled (a safety net; both normally
/// cancel their pushes in the same transaction).
pub async fn cancel_orphans(ex: impl SqliteExecutor<'_>, now: i64) -> sqlx::Result<u64> {
    let done = sqlx::query(
        "UPDATE pushes SET status = 'cancelled', error = 'the device was removed or disabled', \
         updated_at = ?1 WHERE status = 'pending' AND (device_id IS NULL OR device_id IN \
         (SELECT id FROM devices WHERE disabled_at IS NOT NULL))",
    )
    .bind(now)
    .execute(ex)
    .await?;
    Ok(done.rows_affected())
}

/// One send and its answer.
pub struct NewAttempt<'a> {
    pub push_id: i64,
    pub status_code: Option<u16>,
    pub reason: Option<&'a str>,
    pub apns_id: Option<&'a str>,
    pub timestamp: Option<i64>,
    pub error: Option<&'a str>,
    pub action: &'a str,
    pub at: i64,
}

pub async fn insert_attempt(ex: impl SqliteExecutor<'_>, a: &NewAttempt<'_>) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO push_attempts (push_id, status_code, reason, apns_id, timestamp, error, \
         action, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(a.push_id)
    .bind(a.status_code)
    .bind(a.reason)
    .bind(a.apns_id)
    .bind(a.timestamp)
    .bind(a.error)
    .bind(a.action)
    .bind(a.at)
    .execute(ex)
    .await?;
    Ok(())
}

/// Where a push goes after an attempt.
pub struct AfterAttempt<'a> {
    pub id: i64,
    pub status: PushStatus,
    pub next_attempt_at: i64,
    pub status_code: Option<u16>,
    pub reason: Option<&'a str>,
    pub apns_id: Option<&'a str>,
    pub error: Option<&'a str>,
    pub payload: Option<&'a str>,
    pub now: i64,
}

/// Counts the attempt and moves a `sending` push on. False if it was not `sending`
/// (cancelled meanwhile: its device was disabled or removed).
pub async fn after_attempt(
    ex: impl SqliteExecutor<'_>,
    a: &AfterAttempt<'_>,
) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "UPDATE pushes SET status = ?, attempts = attempts + 1, next_attempt_at = ?, \
         last_status_code = ?, last_reason = ?, apns_id = COALESCE(?, apns_id), error = ?, \
         payload = COALESCE(?, payload), updated_at = ? WHERE id = ? AND status = 'sending'",
    )
    .bind(a.status)
    .bind(a.next_attempt_at)
    .bind(a.status_code)
    .bind(a.reason)
    .bind(a.apns_id)
    .bind(a.error)
    .bind(a.payload)
    .bind(a.now)
    .bind(a.id)
    .execute(ex)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Whether a claimed push is still `sending` (not cancelled since it was claimed).
/// Of `ids`, those still `sending` (not cancelled meanwhile with their device).
pub async fn still_sending(ex: impl SqliteExecutor<'_>, ids: &[i64]) -> sqlx::Result<Vec<i64>> {
    let ids = serde_json::to_string(ids).unwrap_or_else(|_| "[]".into());
    sqlx::query_scalar(
        "SELECT id FROM pushes WHERE status = 'sending' AND id IN (SELECT value FROM json_each(?))",
    )
    .bind(ids)
    .fetch_all(ex)
    .await
}

pub async fn get(ex: impl SqliteExecutor<'_>, id: i64) -> sqlx::Result<Option<PushRow>> {
    sqlx::query_as("SELECT * FROM pushes WHERE id = ?")
        .bind(id)
        .fetch_optional(ex)
        .await
}

/// A push's attempts, oldest first.
pub async fn attempts(ex: impl SqliteExecutor<'_>, push_id: i64) -> sqlx::Result<Vec<AttemptRow>> {
    sqlx::query_as("SELECT * FROM push_attempts WHERE push_id = ? ORDER BY id")
        .bind(push_id)
        .fetch_all(ex)
        .await
}

/// What the ledger is filtered by; `None` matches everything.
#[derive(Debug, Default)]
pub struct Filter<'a> {
    pub device_id: Option<i64>,
    pub session_id: Option<&'a str>,
    pub status: Option<PushStatus>,
    /// Only ids below this (the next page of a newest-first listing).
    pub before: Option<i64>,
    pub limit: i64,
}

/// The ledger, newest first.
pub async fn list(ex: impl SqliteExecutor<'_>, f: &Filter<'_>) -> sqlx::Result<Vec<PushRow>> {
    sqlx::query_as(
        "SELECT * FROM pushes WHERE (?1 IS NULL OR device_id = ?1) \
         AND (?2 IS NULL OR session_id = ?2) AND (?3 IS NULL OR status = ?3) \
         AND (?4 IS NULL OR id < ?4) ORDER BY id DESC LIMIT ?5",
    )
    .bind(f.device_id)
    .bind(f.session_id)
    .bind(f.status)
    .bind(f.before)
    .bind(f.limit)
    .fetch_all(ex)
    .await
}

/// Pushes waiting to be sent (pending or being sent).
pub async fn count_unsent(ex: impl SqliteExecutor<'_>) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT COUNT(*) FROM pushes WHERE status IN ('pending', 'sending')")
        .fetch_one(ex)
        .await
}

/// When the next pending push to an active device is due (ms), if any.
pub async fn next_due(ex: impl SqliteExecutor<'_>) -> sqlx::Result<Option<i64>> {
    sqlx::query_scalar(
        "SELECT MIN(p.next_attempt_at) FROM pushes p JOIN devices d ON d.id = p.device_id \
         WHERE p.status = 'pending' AND d.disabled_at IS NULL",
    )
    .fetch_one(ex)
    .await
}
