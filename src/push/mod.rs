//! Pushes to the owner's phones: what the rest of tether hands over (an event about a
//! session), turned into outbox rows in the caller's transaction; the worker that sends them
//! through a [`PushGateway`] (APNs, or the log when no key is configured).

pub mod apns;
/// Test support: a scripted gateway (not in release builds; see the `test-support` feature).
#[cfg(any(test, feature = "test-support"))]
pub mod fake;
pub mod gateway;
mod kind;
pub mod payload;
pub mod worker;

#[cfg(test)]
mod tests;

use sqlx::SqliteConnection;

use crate::store::{self, pushes, sessions::SessionRow};

pub use apns::gateway_from_settings;
pub use gateway::{
    classify, token_prefix, Action, Answer, Delivery, LogGateway, PushGateway, PushRequest,
};
pub use kind::PushKind;
pub use worker::{GatewayStatus, PushService, TickReport, WorkerConfig};

/// Whose phones hear about a session (or a terminal), and the title they show: the
/// session's title, else its project folder's name. A session's actor keeps one, so a
/// turn's end needs no lookup.
#[derive(Debug, Clone)]
pub struct Audience {
    /// The session the push is about; None for a terminal's push.
    pub session_id: Option<String>,
    /// The terminal the push is about; None for a session's push.
    pub terminal_id: Option<String>,
    pub owner: String,
    pub title: String,
}

impl Audience {
    pub fn of(session: &SessionRow) -> Self {
        let title = session
            .title
            .as_deref()
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_string)
            .unwrap_or_else(|| folder_title(&session.project_path));
        Self {
            session_id: Some(session.id.clone()),
            terminal_id: None,
            owner: session.owner.clone(),
            title,
        }
    }

    /// A terminal's owner, with its folder's name as the title.
    pub fn of_terminal(terminal_id: &str, owner: &str, project_path: &str) -> Self {
        Self {
            session_id: None,
            terminal_id: Some(terminal_id.to_string()),
            owner: owner.to_string(),
            title: folder_title(project_path),
        }
    }
}

/// A project folder's name, as a push's title.
fn folder_title(project_path: &str) -> String {
    std::path::Path::new(project_path)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "tether".to_string())
}

/// Something the session's owner should hear about.
pub struct PushEvent<'a> {
    pub kind: PushKind,
    pub audience: &'a Audience,
    /// The reply (or the failed user message) the app opens.
    pub message_id: Option<i64>,
    /// The reply's text or the reason.
    pub text: &'a str,
    /// When the push is worthless (ms): APNs' expiration, and not sent after it.
    pub expires_at: Option<i64>,
    /// The approval it asks for (the `approvalId` custom key).
    pub approval_id: Option<i64>,
}

impl<'a> PushEvent<'a> {
    /// An event with no expiration and no approval.
    pub fn new(
        kind: PushKind,
        audience: &'a Audience,
        message_id: Option<i64>,
        text: &'a str,
    ) -> Self {
        Self {
            kind,
            audience,
            message_id,
            text,
            expires_at: None,
            approval_id: None,
        }
    }
}

/// Adds one outbox row per active device of the session's owner, inside `tx`: the push
/// exists exactly when the event it is about was committed. Enqueueing the same event
/// (kind, session, message) again adds nothing. The row keeps the title and a plain-text
/// form of the text; the worker cuts the preview and builds the payload when it sends.
/// One statement, whether or not the owner has a device. Returns how many pushes it added.
pub async fn enqueue(tx: &mut SqliteConnection, event: &PushEvent<'_>) -> sqlx::Result<u64> {
    let text = stored_text(event);
    let added = pushes::insert_for_owner_devices(&mut *tx, &new_push(event, &text)).await?;
    if added > 0 {
        queued(event, added);
    }
    Ok(added)
}

/// The text a push row keeps: plain, cut at a word, never empty.
fn stored_text(event: &PushEvent<'_>) -> String {
    let text = payload::cut_at_word(&payload::plain_text(event.text), payload::MAX_STORED_CHARS);
    if text.is_empty() {
        event.kind.fallback_text().to_string()
    } else {
        text
    }
}

fn new_push<'a>(event: &'a PushEvent<'_>, text: &'a str) -> pushes::NewPush<'a> {
    let audience = event.audience;
    pushes::NewPush {
        owner: &audience.owner,
        session_id: audience.session_id.as_deref(),
        terminal_id: audience.terminal_id.as_deref(),
        message_id: event.message_id,
        kind: event.kind.as_str(),
        title: &audience.title,
        subtitle: event.kind.subtitle(),
        text,
        expires_at: event.expires_at,
        approval_id: event.approval_id,
        now: store::now_ms(),
    }
}

fn queued(event: &PushEvent<'_>, added: u64) {
    let audience = event.audience;
    tracing::debug!(
        session_id = audience.session_id.as_deref(),
        terminal_id = audience.terminal_id.as_deref(),
        kind = event.kind.as_str(),
        message_id = event.message_id,
        devices = added,
        "push queued"
    );
}
