//! The keep-alive: a session's end moved to now + `sessions.lifetime`, and, when asked
//! for, a recap (a turn that says where the session stands), answered when it ends.

use axum::{
    body::Bytes,
    extract::{rejection::BytesRejection, State},
    http::{Method, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
    Json,
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{
    codes::ErrorCode,
    error::{ApiError, ApiPath},
    params::SessionId,
    routes::{Access, Routes},
    state::AppState,
    views::time,
};
use crate::{
    auth::Caller,
    sessions::{Accepted, Message, Target},
    store::messages::Status,
};

/// The keep-alive's route, also named by the request timeout (a recap waits for its turn).
pub(super) const KEEP_ALIVE_ROUTE: &str = "/api/sessions/{id}/keep-alive";

pub fn router() -> Routes {
    Routes::default().add(
        Method::POST,
        KEEP_ALIVE_ROUTE,
        Access::User,
        post(keep_alive),
        KEEP_ALIVE_ERRORS,
    )
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct KeepAliveRequest {
    /// Also ask the agent for a short recap of the conversation (a turn; answered with its
    /// text once it ends).
    #[serde(default)]
    recap: bool,
}

/// The session's new end, and the recap when one was asked for.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct KeepAliveAnswer {
    session_id: String,
    expires_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    recap: Option<Recap>,
}

/// The recap turn: its message and, once it ended, the reply's text.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct Recap {
    message_id: i64,
    status: Status,
    error: Option<String>,
    reply_id: Option<i64>,
    text: Option<String>,
}

/// What [`keep_alive`] may answer besides the edge's errors (see `openapi`).
const KEEP_ALIVE_ERRORS: &[ErrorCode] = &[
    ErrorCode::SessionNotFound,
    ErrorCode::SessionEnded,
    ErrorCode::SessionExpired,
    ErrorCode::BodyTooLarge,
    ErrorCode::BodyTimeout,
    ErrorCode::UnreadableBody,
    ErrorCode::InvalidBody,
    ErrorCode::QueueFull,
    ErrorCode::AgentUnavailable,
];

/// Keep a session alive
///
/// Moves the session's end to now + `sessions.lifetime` (clearing an "expires soon"
/// warning) and answers the new `expiresAt`. With `{"recap": true}` it also runs a turn
/// asking the agent for a short recap, through the same accept path as a chat message, and
/// answers its text once it ends (202 if it has not ended within `server.wait_timeout`). The
/// body is optional.
#[utoipa::path(
    post,
    path = KEEP_ALIVE_ROUTE,
    operation_id = "keepAlive",
    tag = "sessions",
    params(SessionId),
    request_body(content = Option<KeepAliveRequest>, content_type = "application/json"),
    responses(
        (status = 200, description = "Kept alive (and the recap, when asked for)", body = KeepAliveAnswer,
            example = json!({"sessionId": "0b6c2a52-6f0e-4c7e-9d55-3f7f2f6f1c11", "expiresAt": "2025-05-02T10:00:00Z"})),
        (status = 202, description = "Kept alive; the recap's turn has not ended yet (its reply comes in the session's messages)", body = KeepAliveAnswer),
    ),
)]
pub(super) async fn keep_alive(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body?;
    // The body is optional: none (or `null`) means no recap. (JSON's white space only: a
    // form feed is no JSON.)
    let blank = body
        .iter()
        .all(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
    let req: KeepAliveRequest = if blank {
        KeepAliveRequest::default()
    } else {
        let invalid =
            |e: String| ApiError::new(ErrorCode::InvalidBody, format!("invalid body: {e}"));
        // An object or null: serde would also take a struct from an array.
        match serde_json::from_slice::<serde_json::Value>(&body)
            .map_err(|e| invalid(e.to_string()))?
        {
            serde_json::Value::Null => KeepAliveRequest::default(),
            v @ serde_json::Value::Object(_) => {
                serde_json::from_value(v).map_err(|e| invalid(e.to_string()))?
            }
            _ => return Err(invalid("expected a JSON object (or null)".into())),
        }
    };
    let expires_at = state
        .sessions
        .keep_alive(&id, &caller.owner, caller.is_admin())
        .await?;
    if !req.recap {
        let body = KeepAliveAnswer {
            session_id: id,
            expires_at: time(expires_at),
            recap: None,
        };
        return Ok(Json(body).into_response());
    }
    state.agent_ready().await?;
    let prompt = &state.settings.sessions.recap_prompt;
    let accepted = state
        .sessions
        .accept(Message {
            owner: &caller.owner,
            sees_all: caller.is_admin(),
            text: prompt,
            target: Target::Session(&id),
            client_message_id: None,
            watch_until: Some(super::chat::wait_deadline(&state)),
        })
        .await?;
    let Accepted::Queued {
        expires_at,
        watch: Some(watch),
        ..
    } = accepted
    else {
        unreachable!("a recap has no clientMessageId to repeat, and asked to be watched");
    };
    let (msg, reply) = watch.end().await?;
    let status = if msg.status.is_terminal() {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED // the wait timed out; the reply comes in the session's messages
    };
    let body = KeepAliveAnswer {
        session_id: id,
        expires_at: time(expires_at),
        recap: Some(Recap {
            message_id: msg.id,
            status: msg.status,
            error: msg.error,
            reply_id: reply.as_ref().map(|r| r.id),
            text: reply.map(|r| r.text),
        }),
    };
    Ok((status, Json(body)).into_response())
}
