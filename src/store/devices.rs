//! Queries on `devices`: the owners' phones, one row per APNs token. A token APNs rejects is
//! disabled (kept, with when and why), never deleted; the owner removing it deletes it.

use serde::{Deserialize, Serialize};
use sqlx::{FromRow, SqliteExecutor};

/// Which APNs host a token belongs to: debug builds get sandbox tokens, TestFlight and App
/// Store builds production ones.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
#[sqlx(rename_all = "lowercase")]
pub enum Environment {
    Sandbox,
    Production,
}

impl Environment {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "sandbox" => Some(Self::Sandbox),
            "production" => Some(Self::Production),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sandbox => "sandbox",
            Self::Production => "production",
        }
    }
}

#[derive(Debug, Clone, FromRow)]
pub struct DeviceRow {
    pub id: i64,
    pub owner: String,
    pub token: String,
    pub environment: Environment,
    pub topic: Option<String>,
    pub name: Option<String>,
    pub created_at: i64,
    pub last_seen_at: i64,
    pub disabled_at: Option<i64>,
    pub disabled_reason: Option<String>,
    /// The API token it was registered with (revoking it disables the device).
    pub token_id: Option<String>,
}

impl DeviceRow {
    pub fn is_active(&self) -> bool {
        self.disabled_at.is_none()
    }
}

pub struct NewDevice<'a> {
    pub owner: &'a str,
    /// Lowercase hex, validated by the caller.
    pub token: &'a str,
    pub environment: Environment,
    pub topic: Option<&'a str>,
    pub name: Option<&'a str>,
    /// The id of the API token that registers it.
    pub token_id: Option<&'a str>,
    pub now: i64,
}

/// Registers a token, or re-registers it: the owner, environment and topic become the given
/// ones, the name is kept unless a new one is given, `last_seen_at` moves to now, and a
/// disabled token is enabled again (the app just got it from iOS, so it is current).
pub async fn upsert(ex: impl SqliteExecutor<'_>, d: &NewDevice<'_>) -> sqlx::Result<DeviceRow> {
    sqlx::query_as(
        "INSERT INTO devices (owner, token, environment, topic, name, created_at, last_seen_at, \
         token_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, ?7) \
         ON CONFLICT (token) DO UPDATE SET owner = excluded.owner, token_id = excluded.token_id, \
         environment = excluded.environment, topic = excluded.topic, \
         name = COALESCE(excluded.name, devices.name), last_seen_at = excluded.last_seen_at, \
         disabled_at = NULL, disabled_reason = NULL \
         RETURNING *",
    )
    .bind(d.owner)
    .bind(d.token)
    .bind(d.environment)
    .bind(d.topic)
    .bind(d.name)
    .bind(d.now)
    .bind(d.token_id)
    .fetch_one(ex)
    .await
}

/// Disables the devices registered with an API token (it was revoked). Returns their ids.
pub async fn disable_for_api_token(
    ex: impl SqliteExecutor<'_>,
    token_id: &str,
    now: i64,
) -> sqlx::Result<Vec<i64>> {
    sqlx::query_scalar(
        "UPDATE devices SET disabled_at = ?2, disabled_reason = 'its API token was revoked' \
         WHERE token_id = ?1 AND disabled_at IS NULL RETURNING id",
    )
    .bind(token_id)
    .bind(now)
    .fetch_all(ex)
    .await
}

pub async fn get(ex: impl SqliteExecutor<'_>, id: i64) -> sqlx::Result<Option<DeviceRow>> {
    sqlx::query_as("SELECT * FROM devices WHERE id = ?")
        .bind(id)
        .fetch_optional(ex)
        .await
}

pub async fn get_by_token(
    ex: impl SqliteExecutor<'_>,
    token: &str,
) -> sqlx::Result<Option<DeviceRow>> {
    sqlx::query_as("SELECT * FROM devices WHERE token = ?")
        .bind(token)
        .fetch_optional(ex)
        .await
}

/// Devices oldest first; `owner: None` lists everyone's (admin).
pub async fn list(
    ex: impl SqliteExecutor<'_>,
    owner: Option<&str>,
) -> sqlx::Result<Vec<DeviceRow>> {
    sqlx::query_as("SELECT * FROM devices WHERE (?1 IS NULL OR owner = ?1) ORDER BY id")
        .bind(owner)
        .fetch_all(ex)
        .await
}

/// Deletes a device; `owner: Some` deletes it only if it is theirs. Returns the deleted row.
pub async fn delete(
    ex: impl SqliteExecutor<'_>,
    token: &str,
    owner: Option<&str>,
) -> sqlx::Result<Option<DeviceRow>> {
    sqlx::query_as(
        "DELETE FROM devices WHERE token = ?1 AND (?2 IS NULL OR owner = ?2) RETURNING *",
    )
    .bind(token)
    .bind(owner)
    .fetch_optional(ex)
    .await
}

/// Disables an active device. With `unless_seen_after: Some(t)` (a 410's timestamp) it is
/// left alone if it registered after `t`. Returns whether it was disabled now.
pub async fn disable(
    ex: impl SqliteExecutor<'_>,
    id: i64,
    reason: &str,
    unless_seen_after: Option<i64>,
    now: i64,
) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "UPDATE devices SET disabled_at = ?, disabled_reason = ? \
         WHERE id = ? AND disabled_at IS NULL AND (?4 IS NULL OR last_seen_at <= ?4)",
    )
    .bind(now)
    .bind(reason)
    .bind(id)
    .bind(unless_seen_after)
    .execute(ex)
    .await?;
    Ok(done.rows_affected() == 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    async fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.db"), 2).await.unwrap();
        (dir, store)
    }

    fn new<'a>(owner: &'a str, token: &'a str, now: i64) -> NewDevice<'a> {
        NewDevice {
            owner,
            token,
            environment: Environment::Sandbox,
            topic: None,
            name: Some("phone"),
            token_id: None,
            now,
        }
    }

    #[tokio::test]
    async fn re_registering_updates_the_row_and_enables_it_again() {
        let (_dir, store) = store().await;
        let pool = store.pool();
        let first = upsert(pool, &new("me", "ab", 1_000)).await.unwrap();
        assert!(disable(pool, first.id, "400 BadDeviceToken", None, 2_000)
            .await
            .unwrap());
        let again = upsert(
            pool,
            &NewDevice {
                environment: Environment::Production,
                topic: Some("com.example.app"),
                name: None,
                ..new("you", "ab", 3_000)
            },
        )
        .await
        .unwrap();
        assert_eq!(again.id, first.id, "one row per token");
        assert_eq!(again.owner, "you");
        assert_eq!(again.environment, Environment::Production);
        assert_eq!(again.topic.as_deref(), Some("com.example.app"));
        assert_eq!(
            again.name.as_deref(),
            Some("phone"),
            "name kept when not given"
        );
        assert_eq!((again.created_at, again.last_seen_at), (1_000, 3_000));
        assert!(again.is_active());
        assert_eq!(again.disabled_reason, None);
    }

    #[tokio::test]
    async fn a_410_does_not_disable_a_device_registered_after_its_timestamp() {
        let (_dir, store) = store().await;
        let pool = store.pool();
        let d = upsert(pool, &new("me", "cd", 5_000)).await.unwrap();
        assert!(!disable(pool, d.id, "410 Unregistered", Some(4_999), 6_000)
            .await
            .unwrap());
        assert!(get(pool, d.id).await.unwrap().unwrap().is_active());
        assert!(disable(pool, d.id, "410 Unregistered", Some(5_000), 6_000)
            .await
            .unwrap());
        let d = get(pool, d.id).await.unwrap().unwrap();
        assert_eq!(d.disabled_at, Some(6_000));
        assert_eq!(d.disabled_reason.as_deref(), Some("410 Unregistered"));
        assert!(
            !disable(pool, d.id, "again", None, 7_000).await.unwrap(),
            "disabled once"
        );
    }

    #[tokio::test]
    async fn delete_is_scoped_to_the_owner() {
        let (_dir, store) = store().await;
        let pool = store.pool();
        upsert(pool, &new("me", "ef", 1)).await.unwrap();
        assert!(delete(pool, "ef", Some("you")).await.unwrap().is_none());
        assert!(delete(pool, "ef", Some("me")).await.unwrap().is_some());
        assert!(get_by_token(pool, "ef").await.unwrap().is_none());
    }
}
