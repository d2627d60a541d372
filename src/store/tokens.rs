//! Queries on `tokens` (every API token by its id, to list and revoke) and `pairing_codes`
//! (one-time codes a phone trades for a token; only their hashes are stored).

use serde::Serialize;
use sqlx::{FromRow, SqliteExecutor};

#[derive(Debug, Clone, FromRow, Serialize)]
pub struct TokenRow {
    pub id: String,
    pub name: Option<String>,
    pub owner: String,
    pub role: String,
    pub paired: bool,
    pub created_at: i64,
    pub expires_at: i64,
    pub last_used_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

pub struct NewToken<'a> {
    pub id: &'a str,
    pub name: Option<&'a str>,
    pub owner: &'a str,
    pub role: &'a str,
    pub paired: bool,
    pub now: i64,
    pub expires_at: i64,
}

pub async fn insert(ex: impl SqliteExecutor<'_>, t: &NewToken<'_>) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO tokens (id, name, owner, role, paired, created_at, expires_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(t.id)
    .bind(t.name)
    .bind(t.owner)
    .bind(t.role)
    .bind(t.paired)
    .bind(t.now)
    .bind(t.expires_at)
    .execute(ex)
    .await?;
    Ok(())
}

pub async fn get(ex: impl SqliteExecutor<'_>, id: &str) -> sqlx::Result<Option<TokenRow>> {
    sqlx::query_as("SELECT * FROM tokens WHERE id = ?")
        .bind(id)
        .fetch_optional(ex)
        .await
}

/// Every token, newest first; `owner: None` for everyone's.
pub async fn list(ex: impl SqliteExecutor<'_>, owner: Option<&str>) -> sqlx::Result<Vec<TokenRow>> {
    sqlx::query_as(
        "SELECT * FROM tokens WHERE (?1 IS NULL OR owner = ?1) ORDER BY created_at DESC, id",
    )
    .bind(owner)
    .fetch_all(ex)
    .await
}

/// Marks a token revoked. False when it was unknown or already revoked.
pub async fn revoke(ex: impl SqliteExecutor<'_>, id: &str, now: i64) -> sqlx::Result<bool> {
    let done = sqlx::query("UPDATE tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL")
        .bind(now)
        .bind(id)
        .execute(ex)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// Ids of the revoked tokens that have not expired yet (an expired one is refused anyway).
pub async fn revoked_ids(ex: impl SqliteExecutor<'_>, now: i64) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar("SELECT id FROM tokens WHERE revoked_at IS NOT NULL AND expires_at > ?")
        .bind(now)
        .fetch_all(ex)
        .await
}

/// How many tokens have ever been revoked: it only grows (rows are never deleted), so a
/// running server that sees it change knows another process revoked some.
pub async fn revoked_count(ex: impl SqliteExecutor<'_>) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT COUNT(*) FROM tokens WHERE revoked_at IS NOT NULL")
        .fetch_one(ex)
        .await
}

/// Marks revoked every token made at or before `made_by` (ms) and not revoked yet; their ids.
pub async fn revoke_all(
    ex: impl SqliteExecutor<'_>,
    made_by: i64,
    now: i64,
) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar(
        "UPDATE tokens SET revoked_at = ? WHERE revoked_at IS NULL AND created_at <= ? \
         RETURNING id",
    )
    .bind(now)
    .bind(made_by)
    .fetch_all(ex)
    .await
}

pub async fn touch(ex: impl SqliteExecutor<'_>, id: &str, now: i64) -> sqlx::Result<()> {
    sqlx::query("UPDATE tokens SET last_used_at = ? WHERE id = ?")
        .bind(now)
        .bind(id)
        .execute(ex)
        .await?;
    Ok(())
}

pub struct NewPairingCode<'a> {
    pub code_hash: &'a str,
    pub owner: &'a str,
    pub name: Option<&'a str>,
    pub now: i64,
    pub expires_at: i64,
}

pub async fn insert_pairing_code(
    ex: impl SqliteExecutor<'_>,
    p: &NewPairingCode<'_>,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO pairing_codes (code_hash, owner, name, created_at, expires_at) \
         VALUES (?, ?, ?, ?, ?)",
    )
    .bind(p.code_hash)
    .bind(p.owner)
    .bind(p.name)
    .bind(p.now)
    .bind(p.expires_at)
    .execute(ex)
    .await?;
    Ok(())
}

/// A pairing code by its hash, if it is unused and unexpired: its stored hash, owner and
/// name.
#[derive(Debug, Clone, FromRow)]
pub struct PairingCode {
    pub id: i64,
    pub code_hash: String,
    pub owner: String,
    pub name: Option<String>,
}

pub async fn usable_pairing_code(
    ex: impl SqliteExecutor<'_>,
    code_hash: &str,
    now: i64,
) -> sqlx::Result<Option<PairingCode>> {
    sqlx::query_as(
        "SELECT id, code_hash, owner, name FROM pairing_codes \
         WHERE code_hash = ? AND used_at IS NULL AND expires_at > ?",
    )
    .bind(code_hash)
    .bind(now)
    .fetch_optional(ex)
    .await
}

/// Marks a code used by the token it was traded for. False when it was used meanwhile.
pub async fn use_pairing_code(
    ex: impl SqliteExecutor<'_>,
    id: i64,
    token_id: &str,
    now: i64,
) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "UPDATE pairing_codes SET used_at = ?, token_id = ? WHERE id = ? AND used_at IS NULL",
    )
    .bind(now)
    .bind(token_id)
    .bind(id)
    .execute(ex)
    .await?;
    Ok(done.rows_affected() == 1)
}
