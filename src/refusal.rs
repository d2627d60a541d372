//! Why sessions and terminals refuse what a caller asked: one typed refusal both answer with
//! (the HTTP edge gives each its code and status, in `http/refusals.rs`), and the check both
//! make of the caller's session before using it.

use std::time::Duration;

use crate::store::sessions::{STATE_ACTIVE, STATE_EXPIRED};

/// Why a message, a keep-alive or a terminal's start was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// tether is shutting down.
    ShuttingDown,
    EmptyMessage,
    /// Longer than `sessions.max_message_bytes`.
    MessageTooLarge,
    InvalidClientMessageId,
    /// A session id that is not a UUID.
    InvalidSessionId,
    /// No such session, or another owner's (nothing is told of others' sessions).
    SessionNotFound,
    SessionExpired,
    /// Ended by its owner.
    SessionEnded,
    /// `sessions.max_queued_per_session`; try again after the duration.
    QueueFull(Duration),
    /// `sessions.max_active_per_owner`.
    TooManySessions(Duration),
    /// `limits.new_sessions_per_minute`.
    TooManyNewSessions(Duration),
    /// A project folder that is missing or not absolute.
    InvalidProjectPath,
    /// A folder outside `projects.roots` (or one that now leads outside them).
    OutsideProjects,
    ProjectNotFound,
    ProjectNotADirectory,
    /// The project folder's check could not run.
    FolderUnchecked,
    /// A terminal's cols or rows out of range.
    InvalidSize,
    /// A terminal's program that is not `claude` or `shell` (or a shell on a session).
    InvalidProgram,
    /// A turn runs in the session a terminal would take.
    TurnRunning,
    /// The session's conversation is open in another terminal.
    ConversationInTerminal,
    /// `terminals.max` or `terminals.max_per_owner`.
    TooManyTerminals(Duration),
    /// A terminal's program could not be started.
    TerminalStartFailed,
}

impl Refusal {
    /// When a limit's refusal may be tried again (`Retry-After`).
    pub fn retry_after(self) -> Option<Duration> {
        match self {
            Self::QueueFull(after)
            | Self::TooManySessions(after)
            | Self::TooManyNewSessions(after)
            | Self::TooManyTerminals(after) => Some(after),
            _ => None,
        }
    }
}

/// A refusal with its words for a person, or the database's failure.
#[derive(Debug)]
pub enum AcceptError {
    Refused { why: Refusal, message: String },
    Db(sqlx::Error),
}

impl From<sqlx::Error> for AcceptError {
    fn from(e: sqlx::Error) -> Self {
        Self::Db(e)
    }
}

impl AcceptError {
    /// What a person is told of it.
    pub fn message(&self) -> String {
        match self {
            Self::Refused { message, .. } => message.clone(),
            Self::Db(e) => format!("database error: {e}"),
        }
    }
}

pub fn refused(why: Refusal, message: impl Into<String>) -> AcceptError {
    AcceptError::Refused {
        why,
        message: message.into(),
    }
}

/// Who asks for a session: its owner, or an admin (`sees_all`), who may use any owner's.
#[derive(Debug, Clone, Copy)]
pub struct Asker<'a> {
    pub owner: &'a str,
    pub sees_all: bool,
}

/// The caller's active session among what a lookup of session `id` found: refused as not
/// found when there is none or it is another owner's, as expired (its history stays
/// readable) or ended when it is not active. `owner_and_state` reads the found row.
pub fn callers_active<T>(
    id: &str,
    found: Option<T>,
    asker: Asker<'_>,
    owner_and_state: fn(&T) -> (&str, &str),
) -> Result<T, AcceptError> {
    let found = found.filter(|row| asker.sees_all || owner_and_state(row).0 == asker.owner);
    let Some(row) = found else {
        return Err(session_not_found(id));
    };
    match owner_and_state(&row).1 {
        STATE_ACTIVE => Ok(row),
        STATE_EXPIRED => Err(refused(
            Refusal::SessionExpired,
            "this session expired; its history stays readable; start a new one with projectPath",
        )),
        _ => Err(refused(
            Refusal::SessionEnded,
            "this session has ended; start a new one with projectPath",
        )),
    }
}

/// No session `id` that the caller may see.
pub fn session_not_found(id: &str) -> AcceptError {
    refused(Refusal::SessionNotFound, format!("no session {id}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(found: Option<(&'static str, &'static str)>, sees_all: bool) -> Option<Refusal> {
        let asker = Asker {
            owner: "ana",
            sees_all,
        };
        match callers_active("s1", found, asker, |row| (row.0, row.1)) {
            Ok(_) => None,
            Err(AcceptError::Refused { why, .. }) => Some(why),
            Err(AcceptError::Db(e)) => panic!("{e}"),
        }
    }

    #[test]
    fn only_the_callers_active_session_passes() {
        assert_eq!(check(Some(("ana", STATE_ACTIVE)), false), None);
        assert_eq!(check(None, false), Some(Refusal::SessionNotFound));
        // Another owner's is not found, but for an admin.
        assert_eq!(
            check(Some(("bo", STATE_ACTIVE)), false),
            Some(Refusal::SessionNotFound)
        );
        assert_eq!(check(Some(("bo", STATE_ACTIVE)), true), None);
        assert_eq!(
            check(Some(("ana", STATE_EXPIRED)), false),
            Some(Refusal::SessionExpired)
        );
        assert_eq!(
            check(Some(("ana", "ended")), false),
            Some(Refusal::SessionEnded)
        );
        // Another owner's ended session says nothing of its state.
        assert_eq!(
            check(Some(("bo", "ended")), false),
            Some(Refusal::SessionNotFound)
        );
    }
}
