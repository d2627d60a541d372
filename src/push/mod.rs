//! Pushes to the owner's phones: what the rest of tether hands over (an event about a
//! session), turned into outbox rows in the caller's transaction; the worker that sends them
//! through a [`PushGateway`] (APNs, or the log when no key is configured).

pub mod apns;
/// Test support: a scripted gateway (not in release builds; see the `test-support` feature).
#[cfg(any(test, feature = "test-support"))]
pub mod fake;
pub mod gateway;
pub mod payload;
pub mod worker;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use sqlx::SqliteConnection;

use crate::{
    config::PushSettings,
    store::{self, pushes, sessions::SessionRow},
};

pub use gateway::{classify, Action, Answer, Delivery, LogGateway, PushGateway, PushRequest};
pub use worker::{GatewayStatus, PushService, TickReport, WorkerConfig};

/// Why a push is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushKind {
    /// A turn finished with a reply.
    TurnCompleted,
    /// A turn failed (crash, not logged in, API error, timeout).
    TurnFailed,
    /// tether stopped during a turn.
    TurnInterrupted,
    /// The session's process died while idle: the next answer will be slower.
    ProcessExited,
    /// The session ends soon (`sessions.warn_before` ahead): "Keep alive" extends it.
    SessionExpiring,
    /// The session reached its end: its process stopped and it takes no more messages.
    SessionExpired,
    /// The agent waits for the owner to allow or deny a tool.
    ApprovalRequested,
    /// The agent waits for the owner to answer a question.
    QuestionAsked,
    /// A terminal's output went quiet after activity while nobody watched it
    /// (`terminals.quiet_push_after`): it may wait for its person.
    TerminalWaiting,
    /// A terminal ends soon (`sessions.warn_before` ahead): attaching or typing extends it.
    TerminalExpiring,
    /// A terminal reached its end: its program was stopped.
    TerminalExpired,
}

impl PushKind {
    /// The name stored in `pushes.kind` and sent as the `kind` custom key.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TurnCompleted => "turn_completed",
            Self::TurnFailed => "turn_failed",
            Self::TurnInterrupted => "turn_interrupted",
            Self::ProcessExited => "process_exited",
            Self::SessionExpiring => "session_expiring",
            Self::SessionExpired => "session_expired",
            Self::ApprovalRequested => "approval_requested",
            Self::QuestionAsked => "question_asked",
            Self::TerminalWaiting => "terminal_waiting",
            Self::TerminalExpiring => "terminal_expiring",
            Self::TerminalExpired => "terminal_expired",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::TurnCompleted,
            Self::TurnFailed,
            Self::TurnInterrupted,
            Self::ProcessExited,
            Self::SessionExpiring,
            Self::SessionExpired,
            Self::ApprovalRequested,
            Self::QuestionAsked,
            Self::TerminalWaiting,
            Self::TerminalExpiring,
            Self::TerminalExpired,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }

    /// The notification category (`aps.category`): the actions the app offers on it.
    pub fn category(self) -> Option<&'static str> {
        match self {
            Self::SessionExpiring => Some("SESSION_EXPIRING"),
            Self::ApprovalRequested => Some("APPROVAL"),
            Self::QuestionAsked => Some("QUESTION"),
            _ => None,
        }
    }

    /// `aps.interruption-level`: a person is waiting on the answer, so it may break through
    /// Focus modes.
    pub fn interruption_level(self) -> Option<&'static str> {
        matches!(self, Self::ApprovalRequested | Self::QuestionAsked).then_some("time-sensitive")
    }

    /// The `apns-collapse-id` of a push of this kind: a later warning about a session (or
    /// terminal: `subject` is its id) replaces the earlier one on the phone, as does a later
    /// "waiting" of a terminal; other pushes collapse only with their own resends (after a
    /// crash mid-send).
    pub fn collapse_id(self, push_id: i64, subject: &str) -> String {
        match self {
            Self::SessionExpiring | Self::TerminalExpiring => format!("expiring-{subject}"),
            Self::TerminalWaiting => format!("waiting-{subject}"),
            _ => format!("tether-{push_id}"),
        }
    }

    /// The line under the title that says what happened (a reply needs none).
    pub fn subtitle(self) -> Option<&'static str> {
        match self {
            Self::TurnCompleted => None,
            Self::TurnFailed => Some("Turn failed"),
            Self::TurnInterrupted => Some("Turn interrupted"),
            Self::ProcessExited => Some("Agent process exited"),
            Self::SessionExpiring => Some("Session expires soon"),
            Self::SessionExpired => Some("Session expired"),
            Self::ApprovalRequested => Some("Approval needed"),
            Self::QuestionAsked => Some("Question"),
            Self::TerminalWaiting => Some("Terminal waiting"),
            Self::TerminalExpiring => Some("Terminal ends soon"),
            Self::TerminalExpired => Some("Terminal ended"),
        }
    }

    /// The body when the event carries no text.
    fn fallback_text(self) -> &'static str {
        match self {
            Self::TurnCompleted => "(empty reply)",
            Self::TurnFailed => "The turn failed.",
            Self::TurnInterrupted => "tether stopped during this turn; send the message again.",
            Self::ProcessExited => "The agent process exited; the next message starts it again.",
            Self::SessionExpiring => "This session ends soon; keep it alive to continue.",
            Self::SessionExpired => "This session has ended; start a new one to continue.",
            Self::ApprovalRequested => "Claude wants to use a tool.",
            Self::QuestionAsked => "Claude has a question.",
            Self::TerminalWaiting => "The terminal has gone quiet; it may be waiting for you.",
            Self::TerminalExpiring => "This terminal ends soon; open it to keep it.",
            Self::TerminalExpired => "This terminal has ended; its last screen stays readable.",
        }
    }
}

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

/// The gateway the settings ask for: APNs when `push.apns.key_path` is set, else the log.
pub fn gateway_from_settings(settings: &PushSettings) -> Arc<dyn PushGateway> {
    if settings.apns.key_path.trim().is_empty() {
        tracing::info!("no APNs key configured (push.apns.key_path): pushes go to the log");
        Arc::new(LogGateway)
    } else {
        Arc::new(apns::ApnsGateway::from_settings(&settings.apns))
    }
}

/// The first characters of a device token, for logs: a whole token is never logged.
pub fn token_prefix(token: &str) -> String {
    let prefix: String = token.chars().take(8).collect();
    format!("{prefix}…")
}
