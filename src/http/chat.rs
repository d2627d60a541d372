//! `POST /api/chat`: validate, write the user message (queued), wake the session's actor,
//! answer 202 (or, with `wait`, the reply once the turn ends).

use super::codes::ErrorCode;
use axum::{
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::post,
    Json,
};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use utoipa::ToSchema;

use super::{
    error::{ApiError, ApiJson},
    routes::{Access, Routes},
    state::AppState,
    views::MessageView,
};
use crate::{
    auth::Caller,
    sessions::{Accepted, Message, Target},
    store::{messages, messages::Status},
};
use axum::http::Method;

/// The route, also named by the request timeout (it may wait for a reply).
pub(super) const ROUTE: &str = "/api/chat";

pub fn router() -> Routes {
    Routes::default().add(Method::POST, ROUTE, Access::User, post(chat), CHAT_ERRORS)
}

/// A message for a session: an existing one (`sessionId`) or a new one in `projectPath`.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(example = json!({"message": "What does this project do?", "projectPath": "~/code/app"}))]
pub(super) struct ChatRequest {
    /// The text for the agent: not only white space, at most `sessions.max_message_bytes`.
    #[schema(min_length = 1)]
    message: String,
    /// The session to continue; without it, `projectPath` starts a new one.
    #[schema(format = "uuid", example = "0b6c2a52-6f0e-4c7e-9d55-3f7f2f6f1c11")]
    session_id: Option<String>,
    /// For a new session: an existing folder inside `projects.roots` (`~` is the home folder).
    #[schema(example = "~/code/app")]
    project_path: Option<String>,
    /// The client's id for this message (1 to 128 bytes): sending it again answers with the
    /// first message instead of a second one.
    #[schema(min_length = 1, max_length = 128)]
    client_message_id: Option<String>,
    /// Answer once the turn ends (at most `server.wait_timeout`) instead of at once.
    #[serde(default)]
    wait: bool,
}

/// Where an accepted message is: 202 while its turn waits or runs, its end once it ended.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"sessionId": "0b6c2a52-6f0e-4c7e-9d55-3f7f2f6f1c11", "messageId": 12, "status": "queued"}))]
pub(super) struct ChatAnswer {
    session_id: String,
    message_id: i64,
    status: Status,
    /// Why the turn failed, was interrupted or cancelled (once it ended so).
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    /// The agent's reply (once the turn completed).
    #[serde(skip_serializing_if = "Option::is_none")]
    reply: Option<MessageView>,
}

/// What [`chat`] may answer besides the edge's errors (see `openapi`).
const CHAT_ERRORS: &[ErrorCode] = &[
    ErrorCode::Forbidden,
    ErrorCode::SessionNotFound,
    ErrorCode::SessionEnded,
    ErrorCode::SessionExpired,
    ErrorCode::MessageTooLarge,
    ErrorCode::EmptyMessage,
    ErrorCode::ProjectPathRequired,
    ErrorCode::InvalidSessionId,
    ErrorCode::InvalidProjectPath,
    ErrorCode::ProjectNotFound,
    ErrorCode::ProjectNotADirectory,
    ErrorCode::InvalidClientMessageId,
    ErrorCode::QueueFull,
    ErrorCode::TooManySessions,
    ErrorCode::TooManyNewSessions,
    ErrorCode::AgentUnavailable,
];

/// Send a message
///
/// Validates the message, stores it `queued` (nothing is accepted that is not written first)
/// and answers 202 with its ids; the session's agent takes its messages one at a time, in
/// order. With `wait: true` the answer comes once the turn ended (200, with the reply), or
/// after `server.wait_timeout` as it is then (202). A repeated `clientMessageId` answers with
/// the first message.
#[utoipa::path(
    post,
    path = ROUTE,
    operation_id = "chat",
    tag = "chat",
    request_body = ChatRequest,
    responses(
        (status = 200, description = "`wait: true`: the turn ended", body = ChatAnswer,
            example = json!({"sessionId": "0b6c2a52-6f0e-4c7e-9d55-3f7f2f6f1c11", "messageId": 12, "status": "completed",
                "reply": {"id": 13, "sessionId": "0b6c2a52-6f0e-4c7e-9d55-3f7f2f6f1c11", "role": "assistant", "status": "completed",
                    "text": "It is a web app for…", "clientMessageId": null, "replyTo": 12, "error": null, "costUsd": 0.012,
                    "durationMs": 2300, "usage": null, "createdAt": "2025-05-01T10:00:02Z", "startedAt": null, "finishedAt": null}})),
        (status = 202, description = "Accepted: the turn waits or runs (or, for a repeated `clientMessageId`, how it ended)", body = ChatAnswer),
    ),
)]
pub(super) async fn chat(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<ChatRequest>,
) -> Result<Response, ApiError> {
    let target = match (&req.session_id, &req.project_path) {
        (Some(id), _) => Target::Session(id),
        (None, Some(raw)) => Target::NewIn(raw),
        (None, None) => {
            return Err(ApiError::new(
                ErrorCode::ProjectPathRequired,
                "a new session needs projectPath (or send sessionId)",
            ))
        }
    };
    if !state.sessions.is_closing() {
        state.agent_ready().await?;
    }
    let accepted = state
        .sessions
        .accept(Message {
            owner: &caller.owner,
            sees_all: caller.is_admin(),
            text: &req.message,
            target,
            client_message_id: req.client_message_id.as_deref(),
            watch_until: req.wait.then(|| wait_deadline(&state)),
        })
        .await?;
    match accepted {
        Accepted::Repeat(first) => answer(&state, *first, req.wait).await,
        Accepted::Queued {
            watch: Some(watch), ..
        } => {
            let (row, reply) = watch.end().await?;
            Ok(respond_with(row, reply, true))
        }
        Accepted::Queued {
            session_id,
            message_id,
            ..
        } => {
            let body = ChatAnswer {
                session_id,
                message_id,
                status: Status::Queued,
                error: None,
                reply: None,
            };
            Ok((StatusCode::ACCEPTED, Json(body)).into_response())
        }
    }
}

/// When a caller that waits for a turn's end is answered anyway: `server.wait_timeout`
/// from now.
pub(super) fn wait_deadline(state: &AppState) -> Instant {
    Instant::now() + state.settings.server.wait_timeout
}

/// An already accepted message (a repeated `clientMessageId`): as it is, or with `wait`
/// once its turn ends.
async fn answer(
    state: &AppState,
    msg: messages::MessageRow,
    wait: bool,
) -> Result<Response, ApiError> {
    if wait {
        let watch = state
            .sessions
            .watch(&msg.session_id, msg.id, wait_deadline(state));
        let (msg, reply) = watch.end().await?;
        return Ok(respond_with(msg, reply, true));
    }
    respond(state, msg, false).await
}

/// 202 with the ids while the turn runs; once it ended, its status, error and reply (200
/// when the caller waited for it).
async fn respond(
    state: &AppState,
    msg: messages::MessageRow,
    waited: bool,
) -> Result<Response, ApiError> {
    let reply = if msg.status.is_terminal() {
        messages::reply_to(state.store.pool(), msg.id).await?
    } else {
        None
    };
    Ok(respond_with(msg, reply, waited))
}

fn respond_with(
    msg: messages::MessageRow,
    reply: Option<messages::MessageRow>,
    waited: bool,
) -> Response {
    let ended = msg.status.is_terminal();
    let body = ChatAnswer {
        session_id: msg.session_id,
        message_id: msg.id,
        status: msg.status,
        error: msg.error.filter(|_| ended),
        reply: reply.filter(|_| ended).map(MessageView::from),
    };
    if !ended {
        return (StatusCode::ACCEPTED, Json(body)).into_response();
    }
    let status = if waited {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    (status, Json(body)).into_response()
}
