//! Pushes to the owner's phones: what the rest of tether hands over (an event about a
//! session), turned into outbox rows in the caller's transaction.

use serde::{Deserialize, Serialize};
use sqlx::SqliteConnection;

use crate::store::sessions::SessionRow;

/// Why a push is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PushKind {
    /// A turn finished with a reply.
    TurnCompleted,
    /// A turn failed (crash, not logged in, API error, timeout).
    TurnFailed,
    /// tether stopped during a turn.
    TurnInterrupted,
    /// The session's process died while idle: the next answer will be slower.
    ProcessExited,
}

/// Something the session's owner should hear about.
pub struct PushEvent<'a> {
    pub kind: PushKind,
    pub session: &'a SessionRow,
    /// The reply (or the failed user message) the app opens.
    pub message_id: Option<i64>,
    /// The reply's text or the reason.
    pub text: &'a str,
}

/// Adds one outbox row per active device of the session's owner, inside `tx`.
pub async fn enqueue(_tx: &mut SqliteConnection, _event: &PushEvent<'_>) -> sqlx::Result<()> {
    Ok(())
}
