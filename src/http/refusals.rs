//! How each domain refusal is answered: the one place where a refusal of sessions,
//! terminals or a token check gets its error code (and so its status).

use super::{codes::ErrorCode, error::ApiError};
use crate::{
    auth,
    refusal::{AcceptError, Refusal},
};

impl From<Refusal> for ErrorCode {
    fn from(why: Refusal) -> Self {
        match why {
            Refusal::ShuttingDown => Self::ShuttingDown,
            Refusal::EmptyMessage => Self::EmptyMessage,
            Refusal::MessageTooLarge => Self::MessageTooLarge,
            Refusal::InvalidClientMessageId => Self::InvalidClientMessageId,
            Refusal::InvalidSessionId => Self::InvalidSessionId,
            Refusal::SessionNotFound => Self::SessionNotFound,
            Refusal::SessionExpired => Self::SessionExpired,
            Refusal::SessionEnded => Self::SessionEnded,
            Refusal::QueueFull(_) => Self::QueueFull,
            Refusal::TooManySessions(_) => Self::TooManySessions,
            Refusal::TooManyNewSessions(_) => Self::TooManyNewSessions,
            Refusal::InvalidProjectPath => Self::InvalidProjectPath,
            Refusal::OutsideProjects => Self::Forbidden,
            Refusal::ProjectNotFound => Self::ProjectNotFound,
            Refusal::ProjectNotADirectory => Self::ProjectNotADirectory,
            Refusal::FolderUnchecked => Self::InternalError,
            Refusal::InvalidSize => Self::InvalidSize,
            Refusal::InvalidProgram => Self::InvalidProgram,
            Refusal::TurnRunning => Self::TurnRunning,
            Refusal::ConversationInTerminal => Self::ConversationInTerminal,
            Refusal::TooManyTerminals(_) => Self::TooManyTerminals,
            Refusal::TerminalStartFailed => Self::TerminalStartFailed,
        }
    }
}

impl From<AcceptError> for ApiError {
    fn from(e: AcceptError) -> Self {
        match e {
            AcceptError::Db(e) => e.into(),
            AcceptError::Refused { why, message } => {
                let answer = ApiError::new(why.into(), message);
                match why.retry_after() {
                    Some(after) => answer.retry_after(after),
                    None => answer,
                }
            }
        }
    }
}

impl From<auth::Refusal> for ApiError {
    fn from(e: auth::Refusal) -> Self {
        let message = match e {
            auth::Refusal::Invalid(_) => "the token is invalid or expired",
            auth::Refusal::AdminName => "a user token may not speak for the admin's owner name",
            auth::Refusal::NotIssued => {
                "this server did not issue the token; `tether token` prints one"
            }
            auth::Refusal::Revoked => "the token was revoked",
            auth::Refusal::Store(e) => return e.into(),
        };
        ApiError::new(ErrorCode::Unauthorized, message)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::refusal::refused;

    #[test]
    fn a_limits_refusal_says_when_to_come_back() {
        let after = Duration::from_secs(7);
        let e = ApiError::from(refused(Refusal::QueueFull(after), "full"));
        assert_eq!(e.code, ErrorCode::QueueFull);
        assert_eq!(e.status(), axum::http::StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(e.retry_after, Some(after));
        let e = ApiError::from(refused(Refusal::OutsideProjects, "outside"));
        assert_eq!((e.code, e.retry_after), (ErrorCode::Forbidden, None));
        assert_eq!(e.message, "outside");
    }
}
